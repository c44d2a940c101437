//! Sum and mean along one dimension, in a batch-invariant order.
//!
//! # The fixed order
//!
//! For a reduced length `L`, let `P = lanes_for_len(L)`: 32 partial sums for rows shorter
//! than [`LONG_ROW_MIN_LEN`], 256 from there on (a long row then spreads over a whole cube
//! instead of one warp, which is what keeps a single 128k-entry row from being
//! latency-bound). Element `j` of a row is added into partial `j % P`, each partial in
//! increasing `j`, in f32 whatever the input dtype. The `P` partials are then folded
//! pairwise, `p[i] += p[i + s]` for `s = P/2, P/4, ..., 1`, and the mean divides the total by `L` once, in f32. Nothing in that description mentions the number of rows, the strides or the device
//! (beyond IEEE f32 adds), which is the whole point.
//!
//! # Three mappings, one order
//!
//! * [`kernel::reduce_lanes_kernel`]: one group of `P` threads per output, thread `t`
//!   owns partial `t`; the fold goes through shared memory. Consecutive threads read
//!   consecutive elements, the right mapping when the reduced dim is the innermost one.
//! * [`kernel::reduce_vector_kernel`]: the same for many short rows (32 partials) whose
//!   starts and length are multiples of 4 elements: 8 threads per row, each reading 4
//!   consecutive elements per load and owning 4 partials, the fold in registers and
//!   shuffles. It is the lanes mapping with 16-byte loads (f32) and no cube barrier.
//! * [`kernel::reduce_unit_kernel`]: one thread per output holds all `P` partials (in
//!   registers for 32; the 256 of long rows spill to local memory, a cost only strided long
//!   rows pay). Neighbouring threads handle neighbouring outputs, the right mapping when the
//!   reduced dim is strided (reducing over rows, a transposed view).
//!
//! The launch picks the mapping from the input's strides, alignment and row count. All
//! produce the same bits; the tests check it.

pub mod cpu_reference;
pub mod kernel;
pub mod launch;

pub use launch::{launch_reduce_dim, ReduceDimError};

/// Partial sums per output element for rows shorter than [`LONG_ROW_MIN_LEN`].
pub const SHORT_ROW_LANES: usize = 32;
/// Partial sums per output element for rows of [`LONG_ROW_MIN_LEN`] or more.
pub const LONG_ROW_LANES: usize = 256;
/// The row length from which [`LONG_ROW_LANES`] partials are used.
pub const LONG_ROW_MIN_LEN: usize = 8192;

/// Number of partial sums for a reduced length. Part of the numerical contract: it depends on
/// the length alone, and changing these constants changes the bits every reduction of the
/// affected lengths produces (never whether they are batch invariant).
pub const fn lanes_for_len(len: usize) -> usize {
    if len >= LONG_ROW_MIN_LEN {
        LONG_ROW_LANES
    } else {
        SHORT_ROW_LANES
    }
}

/// Which reduction to run. Both accumulate in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum of the elements.
    Sum,
    /// Sum divided by the reduced length.
    Mean,
    /// Product of the elements, in the same order with `*` for `+` (partials start at 1).
    Prod,
}
