//! Shared helpers of the test suite: which runtime to test, deterministic data, bitwise
//! and f64 comparisons, and the lock that keeps mode-switching tests apart from the rest.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use burn::tensor::{backend::Backend, BasicOps, DType, FloatDType, Tensor, TensorData};

pub use burn_batch_invariant::{BatchInvariant, KernelHost};

/// Environment variable choosing the runtime: `wgpu` (default, lavapipe in CI) or `cuda`.
pub const BACKEND_VAR: &str = "BI_TEST_BACKEND";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestRuntime {
    Wgpu,
    Cuda,
}

pub fn runtime() -> TestRuntime {
    match std::env::var(BACKEND_VAR).as_deref() {
        Err(_) | Ok("wgpu") => TestRuntime::Wgpu,
        Ok("cuda") => TestRuntime::Cuda,
        Ok(other) => panic!("{BACKEND_VAR}={other:?}: expected `wgpu` or `cuda`"),
    }
}

/// Environment variable choosing which form of the runtime's backend the backend-level tests
/// wrap: `both` (default: the plain `CubeBackend`, then Burn's fused `Fusion<CubeBackend>`),
/// `plain` or `fused`.
pub const FUSION_VAR: &str = "BI_TEST_FUSION";

/// Whether the backend-level tests run on the plain backend and on the fused one.
pub fn backend_forms() -> (bool, bool) {
    match std::env::var(FUSION_VAR).as_deref() {
        Err(_) | Ok("both") => (true, true),
        Ok("plain") => (true, false),
        Ok("fused") => (false, true),
        Ok(other) => panic!("{FUSION_VAR}={other:?}: expected `both`, `plain` or `fused`"),
    }
}

/// Runs a test body `fn case<B: KernelHost>(device: &B::Device)` on the selected runtime's
/// plain `CubeBackend` and on its fused form (`BI_TEST_FUSION` narrows that); the body
/// builds `BatchInvariant<B>` itself where it needs it. Every backend-level test thereby
/// runs on both inner backends a user can wrap.
#[macro_export]
macro_rules! on_test_backend {
    ($case:ident) => {{
        let (plain, fused) = $crate::backend_forms();
        match $crate::runtime() {
            $crate::TestRuntime::Wgpu => {
                if plain {
                    $case::<burn_batch_invariant::WgpuBase>(&Default::default());
                }
                if fused {
                    $case::<burn_batch_invariant::WgpuFused>(&Default::default());
                }
            }
            $crate::TestRuntime::Cuda => {
                if plain {
                    $case::<burn_batch_invariant::CudaBase>(&Default::default());
                }
                if fused {
                    $case::<burn_batch_invariant::CudaFused>(&Default::default());
                }
            }
        }
    }};
}

/// Runs a kernel-level test body `fn case<R: CubeRuntime>(device: &R::Device)` on the
/// selected runtime.
#[macro_export]
macro_rules! on_test_runtime {
    ($case:ident) => {
        match $crate::runtime() {
            $crate::TestRuntime::Wgpu => $case::<cubecl::wgpu::WgpuRuntime>(&Default::default()),
            $crate::TestRuntime::Cuda => $case::<cubecl::cuda::CudaRuntime>(&Default::default()),
        }
    };
}

static MODE_LOCK: RwLock<()> = RwLock::new(());

/// Taken by every test that relies on the mode being on (the default).
pub fn mode_shared() -> RwLockReadGuard<'static, ()> {
    MODE_LOCK.read().unwrap_or_else(|e| e.into_inner())
}

/// Taken by the tests that flip the process-wide mode switch.
pub fn mode_exclusive() -> RwLockWriteGuard<'static, ()> {
    MODE_LOCK.write().unwrap_or_else(|e| e.into_inner())
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Large GPU sweeps run one at a time so that parallel tests do not exhaust memory.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The float dtypes to test on this device: f32 everywhere, f16 and bf16 where supported.
pub fn float_dtypes<B: Backend>(device: &B::Device) -> Vec<FloatDType> {
    [FloatDType::F32, FloatDType::F16, FloatDType::BF16]
        .into_iter()
        .filter(|d| B::supports_dtype(device, DType::from(*d)))
        .collect()
}

/// Mantissa bits of a float dtype (for error bounds).
pub fn mantissa_bits(dtype: FloatDType) -> u32 {
    match dtype {
        FloatDType::F16 => 10,
        FloatDType::BF16 => 7,
        _ => 23,
    }
}

/// Mantissa bits the products are formed in: TF32 for f32 on CUDA's tensor cores, the
/// operands' own (exact products) everywhere else.
pub fn product_bits(dtype: FloatDType) -> u32 {
    if runtime() == TestRuntime::Cuda && dtype == FloatDType::F32 {
        10
    } else {
        23
    }
}

/// Largest finite value of a float dtype.
pub fn max_finite(dtype: FloatDType) -> f64 {
    match dtype {
        FloatDType::F16 => 65504.0,
        FloatDType::BF16 => 3.389_531_389_251_535_5e38,
        _ => f64::from(f32::MAX),
    }
}

/// Deterministic pseudo-random values in [-1, 1) plus a per-seed offset, so sums do not
/// cancel to nothing and rows differ from each other.
pub fn random_values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let offset = (seed % 7) as f32 * 0.25;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 + offset
        })
        .collect()
}

/// The `[rows, cols]` row-major values of `data` stored column-major (as `[cols, rows]`):
/// reading that back through `.transpose()` gives the same matrix with strided rows.
pub fn transposed_values(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// A float tensor of `shape` from f32 values, cast to `dtype` on the device.
pub fn tensor<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    dtype: FloatDType,
    device: &B::Device,
) -> Tensor<B, D> {
    let t = Tensor::<B, D>::from_data(TensorData::new(values, shape), device);
    if dtype == FloatDType::F32 {
        t
    } else {
        t.cast(dtype)
    }
}

/// The raw bytes of a tensor: what "bitwise equal" compares.
pub fn bits<B: Backend, const D: usize, K: BasicOps<B>>(t: Tensor<B, D, K>) -> Vec<u8> {
    t.into_data().as_bytes().to_vec()
}

/// The batch sizes every invariance test cuts a batch to: one row, small odd sizes, a power
/// of two, sizes past the row counts at which kernels change their cube layout. Sizes above
/// the tested batch are skipped.
pub const BATCH_SIZES: [usize; 8] = [1, 2, 3, 7, 64, 257, 1024, 8200];

/// The invariance check of every row-wise op: `op` applied to the first `m` entries of `x`
/// along dim `batch` (for every `m` of [`BATCH_SIZES`] that fits), and to single entries
/// (the first, the second, the middle and the last) taken alone, must give the bits of the
/// same entries of `op(x)`; and `op(x)` twice must agree. `op` keeps dim `batch` and its
/// length, as every row-wise op does.
pub fn check_batches<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    batch: usize,
    what: &str,
    op: impl Fn(Tensor<B, D>) -> Tensor<B, D>,
) {
    let max = x.dims()[batch];
    let full = op(x.clone());
    for &m in BATCH_SIZES.iter().filter(|&&m| m <= max) {
        assert!(
            bits(op(x.clone().narrow(batch, 0, m))) == bits(full.clone().narrow(batch, 0, m)),
            "{what}: the first {m} rows differ from the same rows in a batch of {max}"
        );
    }
    let mut alone = vec![0, 1, max / 2, max - 1];
    alone.dedup();
    for r in alone.into_iter().filter(|&r| r < max) {
        assert!(
            bits(op(x.clone().narrow(batch, r, 1))) == bits(full.clone().narrow(batch, r, 1)),
            "{what}: row {r} alone differs from row {r} in a batch of {max}"
        );
    }
    assert!(bits(op(x)) == bits(full), "{what}: run to run");
}

/// `X::layer_norm` (Burn's `ModuleOps`, what burn-nn's `LayerNorm` calls) over the last
/// dim of `x`, on Burn tensors.
pub fn module_layer_norm<X: Backend, const D: usize>(
    x: Tensor<X, D>,
    gamma: Tensor<X, 1>,
    beta: Option<Tensor<X, 1>>,
    epsilon: f64,
) -> Tensor<X, D> {
    Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(X::layer_norm(
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta.map(|b| b.into_primitive().tensor()),
        epsilon,
    )))
}

/// Values widened to f64 (through f32, exact for f16/bf16).
pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.cast(FloatDType::F32)
        .into_data()
        .to_vec::<f32>()
        .expect("f32 data")
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Moves a tensor's data between two backends sharing a device type.
pub fn to_backend<B1: Backend, B2: Backend<Device = B1::Device>, const D: usize>(
    t: Tensor<B1, D>,
) -> Tensor<B2, D> {
    let device = t.device();
    Tensor::from_data(t.into_data(), &device)
}

/// Runs `f` and returns its panic message, failing the test if it did not panic.
pub fn panic_message<R>(f: impl FnOnce() -> R) -> String {
    let payload = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(_) => panic!("expected a panic"),
        Err(payload) => payload,
    };
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else {
        String::from("<non-string panic>")
    }
}

/// The plain CubeCL backend the kernel-level tests launch on (f32 by default; each test
/// casts to the dtype it needs).
pub type Plain<R> = burn_cubecl::CubeBackend<R, f32, i32, u32>;

/// The `CubeTensor` behind a plain-backend tensor, as it is stored (Burn may pitch rows).
pub fn primitive<R: burn_cubecl::CubeRuntime, const D: usize>(
    t: Tensor<Plain<R>, D>,
) -> burn_cubecl::tensor::CubeTensor<R> {
    t.into_primitive().tensor()
}

/// A contiguous float tensor of `shape` filled with NaN, for poisoned-output tests. Built
/// from raw bytes because Burn's own constructors may pad rows (pitched strides), which
/// the kernels' output contract (contiguous) rightly refuses.
pub fn nan_poison<R: burn_cubecl::CubeRuntime>(
    client: &cubecl::client::ComputeClient<R>,
    device: &R::Device,
    shape: Vec<usize>,
    dtype: DType,
) -> burn_cubecl::tensor::CubeTensor<R> {
    let n: usize = shape.iter().product();
    let bytes: Vec<u8> = match dtype {
        DType::F16 => (0..n).flat_map(|_| 0x7e00u16.to_le_bytes()).collect(),
        DType::BF16 => (0..n).flat_map(|_| 0x7fc0u16.to_le_bytes()).collect(),
        _ => (0..n).flat_map(|_| f32::NAN.to_le_bytes()).collect(),
    };
    let handle = client.create_from_slice(&bytes);
    burn_cubecl::tensor::CubeTensor::new_contiguous(
        client.clone(),
        device.clone(),
        shape.into(),
        handle,
        dtype,
    )
}
