//! Batch-invariant inference and training for Burn.
//!
//! GPU kernels choose tile sizes, split factors and reduction strategies from the problem
//! shape, so the same sequence gives different bits depending on what else shares its
//! batch. [`BatchInvariant<B>`] wraps a Burn CubeCL backend and routes the ops whose
//! reduction order can depend on the batch to kernels whose order depends only on the
//! reduced length, the dtype and a fixed configuration; every other op runs `B`'s own code.
//!
//! Adopt it with a type alias ([`CudaInvariant`], [`WgpuInvariant`], or
//! `BatchInvariant<YourCubeBackend>`), switch it off for A/B runs with the
//! `BURN_BATCH_INVARIANT=0` environment variable or the [`mode`] API. `docs/contract.md`
//! lists what is routed and what each routed op guarantees.

mod aliases;
mod attention;
mod backend;
#[cfg(feature = "collective")]
pub mod collective;
mod host;
pub mod mode;
mod norm;
mod ops;
mod record;
mod routing;
pub mod sampling;
mod softmax;

// The aliases exist per runtime feature; without one there is nothing to export.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub use aliases::*;
pub use attention::{attention, AttentionBackend};
pub use backend::BatchInvariant;
pub use host::KernelHost;
pub use norm::{layer_norm, rms_norm, NormBackend};
pub use softmax::{log_softmax, softmax, SoftmaxBackend};

/// The ops whose training forward is the inference forward: a model generic over
/// `B: ParityOps` that calls [`softmax`], [`log_softmax`], [`rms_norm`], [`layer_norm`] and
/// [`attention`] (instead of Burn's functions and burn-nn's norm modules) runs the invariant
/// kernels on `BatchInvariant<B>`, the same kernels forward under
/// `Autodiff<BatchInvariant<B>>` with fixed-order backward passes, and Burn's own ops on
/// Burn's backends. Implemented for every backend that implements the three traits.
pub trait ParityOps: SoftmaxBackend + NormBackend + AttentionBackend {}

impl<B: SoftmaxBackend + NormBackend + AttentionBackend> ParityOps for B {}

/// The kernels crate, re-exported for its `cpu_reference` modules and constants.
pub use batch_invariant_kernels as kernels;

/// The fixed `(queries, keys)` block size of the invariant attention, the counterpart of
/// vLLM's `get_batch_invariant_attention_block_size()`: `(16, 16)` on the portable kernels.
/// Keys are also split into chunks of [`kernels::attention::KEY_SPLIT`] by absolute
/// position; `docs/contract.md` gives the whole order.
pub fn attention_block_size() -> (usize, usize) {
    kernels::attention::attention_block_size()
}

/// The block size on the tensor-core kernel, which CUDA runs for f16/bf16 with head dims up
/// to 128: `(16, 64)`. Which of the two applies depends on the device, the dtype and the
/// head dims only.
pub fn tensor_core_attention_block_size() -> (usize, usize) {
    kernels::attention::tensor_core_attention_block_size()
}
