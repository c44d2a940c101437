//! What `BatchInvariant<B>` needs from the backend it wraps.

use batch_invariant_kernels::matmul::launch::{launch_matmul, matmul_output_shape};
use batch_invariant_kernels::reduce::{launch_reduce_dim, ReduceOp};
use batch_invariant_kernels::softmax::{launch_softmax_dim, SoftmaxKind};
use burn_backend::backend::Backend;
use burn_backend::tensor::FloatTensor;
use burn_backend::{DType, TensorMetadata};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

/// A backend that can run the batch-invariant kernels on its own tensors.
///
/// One method per routed kernel, taking and returning the backend's own primitives. The
/// routing layer (`crate::routing`) has already validated shapes, dims and dtypes, so an
/// implementation only launches. Keeping the surface at the level of whole ops (rather than
/// "give me a `CubeTensor`") is what lets a backend such as `Fusion<CubeBackend>` implement
/// it by registering the op in its stream.
pub trait KernelHost: Backend {
    /// Sum or mean of `tensor` along `dim`, keeping `dim` with length 1, through
    /// `batch_invariant_kernels::reduce`. Inputs: f32, f16 or bf16; `dim` in range and of
    /// non-zero length.
    fn invariant_reduce_dim(
        tensor: FloatTensor<Self>,
        dim: usize,
        op: ReduceOp,
    ) -> FloatTensor<Self>;

    /// Softmax or log-softmax of `tensor` along `dim` through
    /// `batch_invariant_kernels::softmax`, into a new contiguous tensor. Inputs: f32, f16 or
    /// bf16; `dim` in range.
    fn invariant_softmax(
        tensor: FloatTensor<Self>,
        dim: usize,
        kind: SoftmaxKind,
    ) -> FloatTensor<Self>;

    /// `lhs @ rhs` through `batch_invariant_kernels::matmul`, into a new contiguous tensor.
    /// Inputs: the same dtype (f32, f16 or bf16), equal ranks of at least 2, matching inner
    /// dims, broadcastable batch dims.
    fn invariant_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl<R, F, I, BT> KernelHost for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn invariant_reduce_dim(tensor: CubeTensor<R>, dim: usize, op: ReduceOp) -> CubeTensor<R> {
        let mut shape = tensor.shape();
        shape[dim] = 1;
        let dtype: DType = tensor.dtype;
        let output = empty_device_contiguous_dtype(
            tensor.client.clone(),
            tensor.device.clone(),
            shape,
            dtype,
        );
        let client = tensor.client.clone();
        launch_reduce_dim(
            &client,
            tensor.binding(),
            output.clone().binding(),
            dim,
            op,
            dtype.into(),
        )
        .unwrap_or_else(|err| panic!("batch-invariant reduce_dim launch: {err}"));
        output
    }

    fn invariant_softmax(tensor: CubeTensor<R>, dim: usize, kind: SoftmaxKind) -> CubeTensor<R> {
        let dtype: DType = tensor.dtype;
        let output = empty_device_contiguous_dtype(
            tensor.client.clone(),
            tensor.device.clone(),
            tensor.shape(),
            dtype,
        );
        let client = tensor.client.clone();
        launch_softmax_dim(
            &client,
            tensor.binding(),
            output.clone().binding(),
            dim,
            kind,
            dtype.into(),
        )
        .unwrap_or_else(|err| panic!("batch-invariant softmax launch: {err}"));
        output
    }

    fn invariant_matmul(lhs: CubeTensor<R>, rhs: CubeTensor<R>) -> CubeTensor<R> {
        let dtype: DType = lhs.dtype;
        let shape = matmul_output_shape(lhs.meta.shape(), rhs.meta.shape())
            .unwrap_or_else(|err| panic!("batch-invariant matmul: {err}"));
        let output = empty_device_contiguous_dtype(
            lhs.client.clone(),
            lhs.device.clone(),
            shape.into(),
            dtype,
        );
        let client = lhs.client.clone();
        launch_matmul(
            &client,
            lhs.binding(),
            rhs.binding(),
            output.clone().binding(),
            dtype.into(),
        )
        .unwrap_or_else(|err| panic!("batch-invariant matmul launch: {err}"));
        output
    }
}
