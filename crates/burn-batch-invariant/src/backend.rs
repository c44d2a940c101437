use core::marker::PhantomData;

use burn_backend::backend::{Backend, BackendTypes, DTypeUsageSet, ExecutionError};
use burn_backend::{DType, TensorData};

use crate::host::KernelHost;

/// A backend decorator that makes every result for one sequence independent of what else
/// shares its batch.
///
/// `BatchInvariant<B>` reuses `B`'s device and tensor primitives unchanged, so wrapping costs
/// nothing for the ops it passes through. The ops whose reduction order can depend on the
/// batch are routed to kernels whose order depends only on the reduced length, the dtype
/// and a fixed configuration (see `docs/contract.md`); everything else runs `B`'s own code.
/// The process-wide [`mode`](crate::mode) switch turns routing off for A/B comparisons.
///
/// ```text
/// type MyBackend = burn_batch_invariant::CudaInvariant; // was: CubeBackend<CudaRuntime, f32, i32, u8>
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchInvariant<B> {
    _inner: PhantomData<B>,
}

impl<B: KernelHost> BackendTypes for BatchInvariant<B> {
    type Device = B::Device;

    type FloatTensorPrimitive = B::FloatTensorPrimitive;
    type FloatElem = B::FloatElem;

    type IntTensorPrimitive = B::IntTensorPrimitive;
    type IntElem = B::IntElem;

    type BoolTensorPrimitive = B::BoolTensorPrimitive;
    type BoolElem = B::BoolElem;

    type QuantizedTensorPrimitive = B::QuantizedTensorPrimitive;
}

impl<B: KernelHost> Backend for BatchInvariant<B> {
    fn ad_enabled(device: &Self::Device) -> bool {
        B::ad_enabled(device)
    }

    fn memory_persistent_allocations<
        Output: Send,
        Input: Send,
        Func: Fn(Input) -> Output + Send,
    >(
        device: &Self::Device,
        input: Input,
        func: Func,
    ) -> Output {
        B::memory_persistent_allocations(device, input, func)
    }

    fn memory_cleanup(device: &Self::Device) {
        B::memory_cleanup(device)
    }

    fn name(device: &Self::Device) -> String {
        format!("batch_invariant<{}>", B::name(device))
    }

    fn seed(device: &Self::Device, seed: u64) {
        B::seed(device, seed)
    }

    fn sync(device: &Self::Device) -> Result<(), ExecutionError> {
        B::sync(device)
    }

    fn staging<'a, Iter>(data: Iter, device: &Self::Device)
    where
        Iter: Iterator<Item = &'a mut TensorData>,
    {
        B::staging(data, device)
    }

    fn supports_dtype(device: &Self::Device, dtype: DType) -> bool {
        B::supports_dtype(device, dtype)
    }

    fn dtype_usage(device: &Self::Device, dtype: DType) -> DTypeUsageSet {
        B::dtype_usage(device, dtype)
    }

    fn device_count(type_id: u16) -> usize {
        B::device_count(type_id)
    }
}
