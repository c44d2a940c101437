//! Sum, mean and product along one dimension, in a batch-invariant order.
//!
//! # The fixed order
//!
//! For a reduced length `L`, let `P = lanes_for_len(L)`: 32 partial sums for rows shorter
//! than [`LONG_ROW_MIN_LEN`], 256 from there on (a long row then spreads over a whole cube
//! instead of one warp, which is what keeps a single 128k-entry row from being
//! latency-bound). The row is cut into chunks of [`CHUNK`] = 4 consecutive elements and
//! chunk `k` goes to partial `k % P`: element `j` is added into partial `(j / 4) % P`, each
//! partial in increasing `j`, in f32 whatever the input dtype. The `P` partials are then
//! folded pairwise, `p[i] += p[i + s]` for `s = P/2, P/4, ..., 1`, and the mean divides the
//! total by `L` once, in f32. Nothing in that description mentions the number of rows, the
//! strides or the device (beyond IEEE f32 adds), which is the whole point.
//!
//! Why chunks: a chunk is one 16-byte vector load of an f32 row, so a warp reads 32
//! partials' worth of a row (512 bytes) in one instruction and adds straight from
//! registers. With an elementwise order (element `j` into partial `j % P`) the vector
//! kernel would have to transpose every segment through shared memory to keep it.
//! [`cpu_reference::reduce_in_order`] spells the order out on the CPU; the suite compares it
//! with the kernels bitwise.
//!
//! # Three mappings, one order
//!
//! * [`kernel::reduce_vector_kernel()`]: contiguous rows whose starts and length are multiples
//!   of [`CHUNK`] at aligned addresses: `P` threads per row, thread `t` loads chunk
//!   `t + P s` of segment `s` as one vector. The fold is shuffles where `P` threads are one
//!   plane (CUDA, short rows), else through shared memory.
//! * [`kernel::reduce_lanes_kernel()`]: the same thread mapping for other contiguous rows,
//!   each chunk read one element at a time; the fold goes through shared memory.
//! * [`kernel::reduce_unit_kernel()`]: one thread per output holds all `P` partials (in
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

/// Consecutive elements of a row that go to the same partial (see the module docs). Part of
/// the numerical contract.
pub const CHUNK: usize = 4;

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

/// Which reduction to run. All accumulate in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum of the elements.
    Sum,
    /// Sum divided by the reduced length.
    Mean,
    /// Product of the elements, in the same order with `*` for `+` (partials start at 1).
    Prod,
}
