//! CubeCL kernels for `burn-batch-invariant`.
//!
//! Every kernel here obeys one rule: the sequence of floating-point operations that produces
//! one output element depends only on the reduced length, the dtype and a configuration fixed
//! at compile time. It never depends on how many rows there are, where the row sits in the
//! batch, the strides of the input or an autotuner. Kernels may map work to threads
//! differently for different layouts (that is where speed comes from), but every mapping
//! performs the same additions in the same order, and the tests compare the mappings bitwise.
//!
//! Each op lives in its own module with the same three parts, named alike:
//! `kernel` (the `#[cube]` code), `launch` (host-side checks, grid and dispatch) and
//! `cpu_reference` (an f64 reference the tests measure accuracy against). What several families
//! share about where elements sit (strides, offsets, the grid, loads in flight) is in
//! [`layout`].
//!
//! This crate depends on cubecl only; the Burn side lives in `burn-batch-invariant`.

pub mod attention;
pub mod extremum;
pub mod layout;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod softmax;
