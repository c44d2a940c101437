//! Max, min and max-|x| along one dimension, with the index of the winner.
//!
//! # Why the order does not matter here, and what does
//!
//! Selecting an extremum rounds nothing, so any order of comparisons finds the same value;
//! what can differ between strategies is *which* entry wins a tie, and what a NaN does.
//! Both are fixed by one total order on `(value, index)` pairs, which every thread and every
//! step of the fold uses:
//!
//! * a NaN beats every number (max and min alike: NaN propagates), the first NaN beats
//!   later ones;
//! * otherwise the larger value wins for max and max-|x| (the smaller for min);
//! * equal values (including `-0.0` against `+0.0`) go to the **smallest index**.
//!
//! With a total order the winner is the same whichever pairs are compared first, so the
//! result cannot depend on the batch, the grid or the mapping. For the values this also
//! means `-0.0` vs `+0.0` ties return the first one's sign.
//!
//! The kernel uses the reduce module's lane count (`lanes_for_len`), or a whole cube of 256
//! lanes per candidate where candidates are few and long: lane `t` scans vectors
//! `t, t + P, ...` of the row (vectors of 4 entries where the row is contiguous and
//! aligned, of one entry otherwise) and the `P` candidates are folded pairwise in shared
//! memory. Rows of `LONG_ROW_MIN_LEN` (8192) entries or more are cut into chunks of
//! [`CHUNK_LEN`], one group of lanes per chunk, and a second kernel folds each row's chunk winners in chunk order: a
//! 128256-entry argmax then runs on 32 cubes instead of one.

pub mod cpu_reference;
pub mod kernel;
pub mod launch;

pub use launch::launch_extremum_dim;

/// Entries per chunk of a long row (rows of `LONG_ROW_MIN_LEN` entries or more).
pub const CHUNK_LEN: usize = 4096;

/// Which extremum to select.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExtremumOp {
    Max,
    Min,
    /// The largest `|x|`; the value written is `|x|`.
    MaxAbs,
}
