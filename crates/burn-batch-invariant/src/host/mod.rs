//! What `BatchInvariant<B>` needs from the backend it wraps, and its two implementations:
//! the plain `CubeBackend` (here) launches the kernels directly, `Fusion<B>` (`fusion.rs`)
//! registers them in its stream.

#[cfg(feature = "fusion")]
mod fusion;

use batch_invariant_kernels::attention::backward::{self, launch_attention_backward};
use batch_invariant_kernels::attention::{is_broadcast_layout, launch_attention, AttentionOptions};
use batch_invariant_kernels::extremum::{launch_extremum_dim, ExtremumOp};
use batch_invariant_kernels::matmul::launch::{
    launch_matmul, launch_matmul_bias, matmul_output_shape,
};
use batch_invariant_kernels::matmul::F32Precision;
use batch_invariant_kernels::norm::{launch_norm, NormKind};
use batch_invariant_kernels::reduce::{launch_reduce_dim, ReduceOp};
use batch_invariant_kernels::softmax::{launch_softmax_dim, SoftmaxKind};
use burn_backend::backend::Backend;
use burn_backend::ops::FloatTensorOps;
use burn_backend::tensor::{FloatTensor, IntTensor};
use burn_backend::{DType, IntDType, Shape, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
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
    /// Sum, mean or product (`op`) of `tensor` along `dim`, keeping `dim` with length 1,
    /// through `batch_invariant_kernels::reduce`. Inputs: f32, f16 or bf16; `dim` in range
    /// and of non-zero length.
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

    /// `lhs @ rhs`, plus `bias` on every row when given, through
    /// `batch_invariant_kernels::matmul`, into a new contiguous tensor. Inputs: the same dtype
    /// (f32, f16 or bf16), equal ranks of at least 2, matching inner dims, broadcastable
    /// batch dims; `bias` of shape `[N]`. The bias is added to the f32 accumulator, before
    /// the one rounding to the output dtype. `precision` is read when the kernel runs (for
    /// f32), so the fused form carries the value the op was called with.
    fn invariant_matmul(
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        precision: F32Precision,
    ) -> FloatTensor<Self>;

    /// The winning value and its index along `dim` (both keeping `dim` with length 1)
    /// through `batch_invariant_kernels::extremum`. Inputs: f32, f16 or bf16; `dim` in range
    /// and of non-zero length.
    fn invariant_extremum(
        tensor: FloatTensor<Self>,
        dim: usize,
        op: ExtremumOp,
        index_dtype: IntDType,
    ) -> (FloatTensor<Self>, IntTensor<Self>);

    /// Layer or RMS normalization (`kind`) of `tensor` over its last dim through
    /// `batch_invariant_kernels::norm`, into a new contiguous tensor. Inputs: one dtype (f32,
    /// f16 or bf16) for all, rank at least 1, `gamma` and `beta` of shape `[last dim]`, no
    /// `beta` for RMS norm.
    fn invariant_norm(
        tensor: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: Option<FloatTensor<Self>>,
        epsilon: f64,
        kind: NormKind,
    ) -> FloatTensor<Self>;

    /// Attention through `batch_invariant_kernels::attention`, into a new contiguous
    /// `[batch, heads, seq_q, d_v]` tensor. Inputs: rank-4 query, key and value of one
    /// dtype (f32, f16 or bf16) with matching extents and head dims in the kernel's range;
    /// `mask` (non-zero = masked) and `bias` already `[batch, heads, seq_q, seq_k]` in that
    /// dtype (broadcast views welcome: they are read through their strides); a valid softcap.
    fn invariant_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        mask: Option<FloatTensor<Self>>,
        bias: Option<FloatTensor<Self>>,
        options: AttentionOptions,
    ) -> FloatTensor<Self>;

    /// Whether [`KernelHost::invariant_attention_backward`] runs for attention in `dtype`
    /// with head dims `dim` (query/key) and `dim_v` (value) on `device`: a property of the
    /// device, the dtype and the head dims only, so that a model always trains with one
    /// arithmetic.
    fn invariant_attention_backward_supported(
        device: &Self::Device,
        dtype: DType,
        dim: usize,
        dim_v: usize,
    ) -> bool;

    /// `[dq, dk, dv]` of attention through `batch_invariant_kernels::attention::backward`
    /// (the fused kernels), each a new contiguous tensor of its operand's shape and dtype.
    /// Inputs: rank-4 query, key, value, the forward's output and its gradient in one
    /// dtype, with [`KernelHost::invariant_attention_backward_supported`]; no softcap.
    fn invariant_attention_backward(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        output: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: AttentionOptions,
    ) -> [FloatTensor<Self>; 3];
}

impl<R, F, I, BT> KernelHost for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn invariant_reduce_dim(tensor: CubeTensor<R>, dim: usize, op: ReduceOp) -> CubeTensor<R> {
        let shape = reduced_shape(&tensor, dim);
        let dtype: DType = tensor.dtype;
        let output = empty_like(&tensor, shape, dtype);
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
        let output = empty_like(&tensor, tensor.shape(), dtype);
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

    fn invariant_matmul(
        lhs: CubeTensor<R>,
        rhs: CubeTensor<R>,
        bias: Option<CubeTensor<R>>,
        precision: F32Precision,
    ) -> CubeTensor<R> {
        let dtype: DType = lhs.dtype;
        let out_shape = matmul_output_shape(lhs.meta.shape(), rhs.meta.shape())
            .unwrap_or_else(|err| panic!("batch-invariant matmul: {err}"));
        let (lhs, rhs, launch_shape) = canonical_matmul::<R, F, I, BT>(lhs, rhs, &out_shape);
        let output = empty_like(&lhs, launch_shape.into(), dtype);
        let client = lhs.client.clone();
        let launched = match bias {
            None => launch_matmul(
                &client,
                lhs.binding(),
                rhs.binding(),
                output.clone().binding(),
                dtype.into(),
                precision,
            ),
            Some(bias) => launch_matmul_bias(
                &client,
                lhs.binding(),
                rhs.binding(),
                into_contiguous(bias).binding(),
                output.clone().binding(),
                dtype.into(),
                precision,
            ),
        };
        launched.unwrap_or_else(|err| panic!("batch-invariant matmul launch: {err}"));
        Self::float_reshape(output, out_shape.into())
    }

    fn invariant_extremum(
        tensor: CubeTensor<R>,
        dim: usize,
        op: ExtremumOp,
        index_dtype: IntDType,
    ) -> (CubeTensor<R>, CubeTensor<R>) {
        let shape = reduced_shape(&tensor, dim);
        let dtype: DType = tensor.dtype;
        let index_dtype: DType = index_dtype.into();
        let alloc = |dtype: DType| empty_like(&tensor, shape.clone(), dtype);
        let (values, indices) = (alloc(dtype), alloc(index_dtype));
        let client = tensor.client.clone();
        launch_extremum_dim(
            &client,
            tensor.binding(),
            values.clone().binding(),
            indices.clone().binding(),
            dim,
            op,
            dtype.into(),
            index_dtype.into(),
        )
        .unwrap_or_else(|err| panic!("batch-invariant extremum launch: {err}"));
        (values, indices)
    }

    fn invariant_norm(
        tensor: CubeTensor<R>,
        gamma: CubeTensor<R>,
        beta: Option<CubeTensor<R>>,
        epsilon: f64,
        kind: NormKind,
    ) -> CubeTensor<R> {
        let dtype: DType = tensor.dtype;
        let output = empty_like(&tensor, tensor.shape(), dtype);
        let client = tensor.client.clone();
        launch_norm(
            &client,
            tensor.binding(),
            gamma.binding(),
            beta.map(CubeTensor::binding),
            output.clone().binding(),
            epsilon as f32,
            kind,
            dtype.into(),
        )
        .unwrap_or_else(|err| panic!("batch-invariant {kind:?} norm launch: {err}"));
        output
    }

    fn invariant_attention(
        query: CubeTensor<R>,
        key: CubeTensor<R>,
        value: CubeTensor<R>,
        mask: Option<CubeTensor<R>>,
        bias: Option<CubeTensor<R>>,
        options: AttentionOptions,
    ) -> CubeTensor<R> {
        let dtype: DType = query.dtype;
        let mut shape = query.shape();
        shape[3] = value.meta.shape()[3];
        let output = empty_like(&query, shape, dtype);
        let client = query.client.clone();
        // The kernel reads plain row-major operands; a copy does not change any value. A
        // mask or bias that is a broadcast view (a padding mask `[b, 1, 1, k]` expanded) is
        // read as it is: copying it would cost `b x h x q x k` elements.
        let binding = |t: CubeTensor<R>| into_contiguous(t).binding();
        let broadcast_binding = |t: CubeTensor<R>| {
            if is_broadcast_layout(t.meta.shape(), t.meta.strides()) {
                t.binding()
            } else {
                binding(t)
            }
        };
        launch_attention(
            &client,
            binding(query),
            binding(key),
            binding(value),
            mask.map(broadcast_binding),
            bias.map(broadcast_binding),
            output.clone().binding(),
            options,
            dtype.into(),
        )
        .unwrap_or_else(|err| panic!("batch-invariant attention launch: {err}"));
        output
    }

    fn invariant_attention_backward_supported(
        device: &Self::Device,
        dtype: DType,
        dim: usize,
        dim_v: usize,
    ) -> bool {
        backward::is_supported(&R::client(device), dtype.into(), dim, dim_v)
    }

    fn invariant_attention_backward(
        query: CubeTensor<R>,
        key: CubeTensor<R>,
        value: CubeTensor<R>,
        output: CubeTensor<R>,
        grad: CubeTensor<R>,
        options: AttentionOptions,
    ) -> [CubeTensor<R>; 3] {
        let dtype: DType = query.dtype;
        let client = query.client.clone();
        let grads = [&query, &key, &value].map(|t| empty_like(t, t.shape(), dtype));
        let operands = [query, key, value, output, grad].map(|t| into_contiguous(t).binding());
        launch_attention_backward(
            &client,
            operands,
            grads.clone().map(CubeTensor::binding),
            options,
            dtype.into(),
        )
        .unwrap_or_else(|err| panic!("batch-invariant attention backward launch: {err}"));
        grads
    }
}

/// `tensor`'s shape with `dim` reduced to length 1: the outputs of the reductions.
fn reduced_shape(tensor: &impl TensorMetadata, dim: usize) -> Shape {
    let mut shape = tensor.shape();
    shape[dim] = 1;
    shape
}

/// Brings a batched matmul to one of two shapes the tensor-core kernel is launched with,
/// so that a sequence alone and the same sequence inside a batch differ only in M or in the
/// batch count, never in how batch dims are broadcast:
///
/// * the weight has no batch (or only size-1 batch dims, as `Linear` makes it): every
///   leading dim of `lhs` folds into M, `[rows, K] @ [K, N]`;
/// * otherwise both operands are expanded to the output's batch dims and flattened,
///   `[B, M, K] @ [B, K, N]` (a broadcast operand is materialised: memory proportional to
///   the batch, not to M).
///
/// Reshapes copy only when a view cannot be folded. Returns the operands and the shape of
/// the contiguous output to launch into (a view of the final output's memory).
fn canonical_matmul<R, F, I, BT>(
    lhs: CubeTensor<R>,
    rhs: CubeTensor<R>,
    out_shape: &[usize],
) -> (CubeTensor<R>, CubeTensor<R>, Vec<usize>)
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    type B<R, F, I, BT> = CubeBackend<R, F, I, BT>;
    let rank = out_shape.len();
    let (m, n) = (out_shape[rank - 2], out_shape[rank - 1]);
    let k = lhs.meta.shape()[rank - 1];
    let batch: usize = out_shape[..rank - 2].iter().product();
    if rank == 2 {
        return (lhs, rhs, vec![m, n]);
    }
    if rhs.meta.shape()[..rank - 2].iter().all(|&d| d == 1) {
        let lhs = B::<R, F, I, BT>::float_reshape(lhs, [batch * m, k].into());
        let rhs = B::<R, F, I, BT>::float_reshape(rhs, [k, n].into());
        return (lhs, rhs, vec![batch * m, n]);
    }
    let expand = |t: CubeTensor<R>, rows: usize, cols: usize| {
        let mut full: Vec<usize> = out_shape[..rank - 2].to_vec();
        full.extend([rows, cols]);
        let t = if t.meta.shape().as_slice() == full.as_slice() {
            t
        } else {
            B::<R, F, I, BT>::float_expand(t, full.into())
        };
        B::<R, F, I, BT>::float_reshape(t, [batch, rows, cols].into())
    };
    let lhs = expand(lhs, m, k);
    let rhs = expand(rhs, k, n);
    (lhs, rhs, vec![batch, m, n])
}

/// A new contiguous tensor of `shape` and `dtype` on `like`'s client and device: a kernel's
/// output.
fn empty_like<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape, dtype: DType) -> CubeTensor<R> {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, dtype)
}
