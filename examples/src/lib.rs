//! Shared pieces of the examples: runtime selection and deterministic data.

use burn::tensor::{backend::Backend, Tensor, TensorData};

/// `cuda` when `--cuda` is passed or `BI_BACKEND=cuda`, else `wgpu` (lavapipe without a GPU).
pub fn use_cuda() -> bool {
    std::env::args().any(|a| a == "--cuda")
        || std::env::var("BI_BACKEND")
            .map(|v| v == "cuda")
            .unwrap_or(false)
}

/// Runs `$body::<B>(&device)` on the chosen runtime's plain CubeBackend.
#[macro_export]
macro_rules! on_backend {
    ($body:ident) => {
        if $crate::use_cuda() {
            $body::<burn_batch_invariant::CudaBase>(&Default::default())
        } else {
            $body::<burn_batch_invariant::WgpuBase>(&Default::default())
        }
    };
}

/// Deterministic values in [-1, 1).
pub fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn matrix<B: Backend>(rows: usize, cols: usize, seed: u64, device: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new(values(rows * cols, seed), [rows, cols]),
        device,
    )
}

/// Largest absolute difference between two tensors' values.
pub fn max_abs_diff<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
    let a = a.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    let b = b.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
        .fold(0.0, f64::max)
}
