//! Softmax and log-softmax along one dimension, in a batch-invariant order.
//!
//! # The fixed order
//!
//! For a row of length `L`, with `P = reduce::lanes_for_len(L)` (the same partial count as
//! the dim reductions), in f32 whatever the input dtype:
//!
//! 1. `m = max_j x_j`: partial `t` takes the max over `j ≡ t (mod P)`, then a pairwise fold.
//!    Max is exact, so this order matters only for which zero survives a `-0.0`/`+0.0` tie,
//!    and no output depends on the sign of a zero `m`.
//! 2. `s = sum_j exp(x_j - m)`: partial `t` adds `exp(x_j - m)` for `j ≡ t (mod P)` in
//!    increasing `j`, then the pairwise fold `p[i] += p[i + s]`, `s = P/2, ..., 1`.
//! 3. `softmax_j = exp(x_j - m) / s`, `log_softmax_j = (x_j - m) - ln(s)`, then a cast to
//!    the output dtype.
//!
//! Special values follow from those formulas (the f64 reference in [`cpu_reference`] uses
//! the same ones): a row containing NaN, or `+inf`, or made only of `-inf` gives NaN
//! everywhere; `-inf` entries in an otherwise finite row give 0 (softmax) and `-inf`
//! (log-softmax).
//!
//! Rows longer than [`kernel::CHUNK_LEN`] (8192) are split, by their length alone, into
//! chunks of 8192 entries (the last one shorter). Steps 1 and 2 run per chunk `c` in the
//! order above with 256 partials, giving `m_c` and `s_c`; then, in chunk order,
//! `m = max_c m_c` and `s = sum_c s_c * exp(m_c - m)` (c = 0, 1, ...), and step 3 as above.
//! The special values come out as listed (a chunk of only `-inf` has `s_c = 0`).
//!
//! # Mapping
//!
//! Rows up to 8192: one group of `P` threads per row, `256 / P` rows per cube; thread `t`
//! owns partial `t` and the folds go through shared memory. Longer rows: one cube of 256
//! threads per (row, chunk), a statistics kernel then a write kernel, so that one
//! 128k-entry row occupies 16 cubes instead of one. Rows along any dim are read and written
//! in place through their strides (coalesced when the dim is the innermost one). Each pass
//! over a row has a thread issue [`crate::layout::LOADS_IN_FLIGHT`] loads before it combines them,
//! still one by one in increasing `j`: that changes the speed, not the bits.

pub mod cpu_reference;
pub mod kernel;
pub mod launch;

pub use launch::{launch_softmax_dim, SoftmaxError};

/// Which function to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SoftmaxKind {
    /// `exp(x - m) / sum(exp(x - m))`.
    Softmax,
    /// `(x - m) - ln(sum(exp(x - m)))`.
    LogSoftmax,
}
