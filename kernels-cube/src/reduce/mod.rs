//! Sum and mean along one dimension, in a batch-invariant order.
//!
//! # The fixed order
//!
//! For a reduced length `L`, element `j` of a row is added into partial sum `j % LANES`
//! (`LANES` = [`LANES`]), each partial in increasing `j`, in f32 whatever the input dtype.
//! The `LANES` partials are then folded pairwise, `p[i] += p[i + s]` for
//! `s = LANES/2, LANES/4, ..., 1`, and the mean divides the total by `L` once, in f32. Nothing in that description mentions the number of rows, the strides or the device
//! (beyond IEEE f32 adds), which is the whole point.
//!
//! # Two mappings, one order
//!
//! * [`kernel::reduce_lanes_kernel`]: one group of `LANES` threads per output, thread `t`
//!   owns partial `t`; the fold goes through shared memory. Consecutive threads read
//!   consecutive elements, the right mapping when the reduced dim is the innermost one.
//! * [`kernel::reduce_unit_kernel`]: one thread per output holds all `LANES` partials in
//!   registers. Neighbouring threads handle neighbouring outputs, the right mapping when the
//!   reduced dim is strided (reducing over rows, a transposed view).
//!
//! The launch picks the mapping from the input's strides. Both produce the same bits; the
//! tests check it.

pub mod cpu_reference;
pub mod kernel;
pub mod launch;

pub use launch::{launch_reduce_dim, ReduceDimError};

/// Number of partial sums per output element. Part of the numerical contract: changing it
/// changes the bits every reduction produces (never whether they are batch invariant).
pub const LANES: usize = 32;

/// Which reduction to run. Both accumulate in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum of the elements.
    Sum,
    /// Sum divided by the reduced length.
    Mean,
}
