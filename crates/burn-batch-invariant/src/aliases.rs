//! Type aliases for the common runtimes, each behind its Cargo feature.
//!
//! The wrapped backends are the plain (unfused) `CubeBackend`s, named explicitly so that
//! Burn's `fusion` feature, if another crate turns it on, cannot change what is wrapped.
//! With this crate's `fusion` feature, the `*Fused*` aliases name the fused forms
//! explicitly; `BatchInvariant<burn::backend::Cuda>` works too, whichever form it is.

#[cfg(feature = "cuda")]
pub use cuda::*;
#[cfg(feature = "wgpu")]
pub use wgpu::*;

#[cfg(feature = "cuda")]
mod cuda {
    use burn_cubecl::CubeBackend;
    use cubecl::cuda::CudaRuntime;

    /// Burn's unfused CUDA backend, the one [`CudaInvariant`] wraps (for A/B comparisons).
    pub type CudaBase<F = f32, I = i32> = CubeBackend<CudaRuntime, F, I, u8>;
    /// Batch-invariant CUDA backend.
    pub type CudaInvariant<F = f32, I = i32> = crate::BatchInvariant<CudaBase<F, I>>;
    pub use cubecl::cuda::CudaDevice;

    /// Burn's fused CUDA backend (what `burn::backend::Cuda` is with Burn's default features).
    #[cfg(feature = "fusion")]
    pub type CudaFused<F = f32, I = i32> = burn_fusion::Fusion<CudaBase<F, I>>;
    /// Batch-invariant fused CUDA backend: routed ops run as custom operations in the
    /// fusion stream, every other op keeps fusing.
    #[cfg(feature = "fusion")]
    pub type CudaFusedInvariant<F = f32, I = i32> = crate::BatchInvariant<CudaFused<F, I>>;
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use burn_cubecl::CubeBackend;
    use cubecl::wgpu::WgpuRuntime;

    /// Burn's unfused wgpu backend, the one [`WgpuInvariant`] wraps (for A/B comparisons).
    pub type WgpuBase<F = f32, I = i32> = CubeBackend<WgpuRuntime, F, I, u32>;
    /// Batch-invariant wgpu backend (Vulkan, Metal, DX12, WebGPU; lavapipe on CPU).
    pub type WgpuInvariant<F = f32, I = i32> = crate::BatchInvariant<WgpuBase<F, I>>;
    pub use cubecl::wgpu::WgpuDevice;

    /// Burn's fused wgpu backend (what `burn::backend::Wgpu` is with Burn's default features).
    #[cfg(feature = "fusion")]
    pub type WgpuFused<F = f32, I = i32> = burn_fusion::Fusion<WgpuBase<F, I>>;
    /// Batch-invariant fused wgpu backend.
    #[cfg(feature = "fusion")]
    pub type WgpuFusedInvariant<F = f32, I = i32> = crate::BatchInvariant<WgpuFused<F, I>>;
}
