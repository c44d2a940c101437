//! Attention whose training forward is the inference kernel.
//!
//! `Autodiff` in Burn 0.21 runs `attention` as Burn's fallback composite (scores
//! materialised by `matmul`, a softmax of primitives, a second `matmul`), so a model trained
//! under `Autodiff<BatchInvariant<B>>` attends with other operations than the invariant
//! kernel it serves with. [`attention`] goes through [`AttentionBackend`] instead: under
//! `Autodiff<B>` the forward is `B`'s own attention (on `BatchInvariant` the invariant
//! kernel, which never materialises the scores) and the backward is recorded as one step.
//!
//! The backward is [`AttentionBackend::attention_backward_op`] where the inner backend has
//! one: on `BatchInvariant` with f16/bf16 operands, one head dim (a multiple of 16, at most
//! 128) and no mask, bias or softcap, the fused kernels of
//! `batch_invariant_kernels::attention::backward` on CUDA's tensor cores, which recompute the
//! weights block by block and never hold the scores in memory. Everywhere else it is a
//! composite that recomputes the weights from the saved inputs, in f32 whatever the input
//! dtype, with the inner backend's ops: on `BatchInvariant` every `matmul` is the invariant
//! one (batched over `[batch, heads]`, one fixed K walk), the softmax the invariant kernel
//! and every reduction along one row of the scores fixed-order. Either way nothing reduces
//! across `batch`, so a sequence's gradients have the same bits alone and in any batch. With
//! `s = scale * q kᵀ` (then softcap `c tanh(s / c)`, masks as `-inf`, `+ bias`),
//! `p = softmax(s)` (0 on a fully masked row, as the forward) and output `o`:
//!
//! - `dv = pᵀ do`, `dp = do vᵀ`, `ds = p * (dp - rowsum(do * o))`;
//! - the bias gradient is `ds`, summed over the dims the bias broadcasts along;
//! - softcap multiplies `ds` by `1 - tanh²`;
//! - `dq = scale * ds k`, `dk = scale * dsᵀ q`.
//!
//! The composite's matmuls are f32 ones (TF32 on tensor cores, as every f32 matmul of the
//! crate unless `mode::ieee_f32` is on; bf16 and f16 inputs are exact in TF32), and its
//! scores take `[batch, heads, seq_q, seq_k]` f32 elements. The fused kernels round `p` and
//! `ds` to the input dtype before their products, as flash-attention kernels do.

use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{broadcast_shape, Backward, Ops};
use burn_autodiff::Autodiff;
use burn_backend::ops::AttentionModuleOptions;
use burn_backend::tensor::{BoolTensor, FloatTensor};
use burn_backend::{Backend, TensorMetadata};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_tensor::activation::softmax;
use burn_tensor::{Bool, FloatDType, Int, Tensor, TensorPrimitive};

use crate::record::record;
use crate::{BatchInvariant, KernelHost};

/// A backend whose attention is one op, in training too.
///
/// The default is the backend's own `ModuleOps::attention` (the invariant kernel on
/// `BatchInvariant<B>`); `Autodiff<B>` overrides it to run `B`'s op forward and record the
/// backward (module docs).
pub trait AttentionBackend: Backend {
    /// `softmax(scale * q kᵀ (softcap, mask, causal, + bias)) v`, as
    /// `ModuleOps::attention`.
    fn attention_op(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        mask: Option<BoolTensor<Self>>,
        attn_bias: Option<FloatTensor<Self>>,
        options: AttentionModuleOptions,
    ) -> FloatTensor<Self> {
        Self::attention(query, key, value, mask, attn_bias, options)
    }

    /// `[dq, dk, dv]` of [`AttentionBackend::attention_op`] without mask or bias, from its
    /// inputs, its `output` and the output's gradient `grad`, in the inputs' dtype, when the
    /// backend has its own backward kernels for them; `None` (the default) leaves the
    /// gradients to the composite of the module docs.
    fn attention_backward_op(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        output: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: AttentionModuleOptions,
    ) -> Option<[FloatTensor<Self>; 3]> {
        let _ = (query, key, value, output, grad, options);
        None
    }
}

/// `burn::tensor::module::attention` through [`AttentionBackend::attention_op`]: the same
/// arguments and result, and under `Autodiff` the inner backend's kernel forward.
///
/// # Panics
///
/// On `BatchInvariant<B>` with the mode on, as its routed `attention` does (shapes, dtypes,
/// head dims, devices, options); the backward pass asks the same of its inputs.
pub fn attention<B: AttentionBackend>(
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    attn_bias: Option<Tensor<B, 4>>,
    options: AttentionModuleOptions,
) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(B::attention_op(
        query.into_primitive().tensor(),
        key.into_primitive().tensor(),
        value.into_primitive().tensor(),
        mask.map(|mask| mask.into_primitive()),
        attn_bias.map(|bias| bias.into_primitive().tensor()),
        options,
    )))
}

/// The fused backward kernels where they apply (`routing::attention::attention_backward`).
impl<B: KernelHost> AttentionBackend for BatchInvariant<B> {
    fn attention_backward_op(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        output: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: AttentionModuleOptions,
    ) -> Option<[FloatTensor<Self>; 3]> {
        crate::routing::attention::attention_backward::<B>(query, key, value, output, grad, options)
    }
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> AttentionBackend
    for CubeBackend<R, F, I, BT>
{
}

/// Burn's fused backend (`burn::backend::Cuda` with its default features): its own op.
#[cfg(feature = "fusion")]
impl<B: burn_fusion::FusionBackend> AttentionBackend for burn_fusion::Fusion<B> {}

/// Training: `B`'s attention forward (its output kept for the backward), one backward step.
impl<B: AttentionBackend, C: CheckpointStrategy> AttentionBackend for Autodiff<B, C> {
    fn attention_op(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        mask: Option<BoolTensor<Self>>,
        attn_bias: Option<FloatTensor<Self>>,
        options: AttentionModuleOptions,
    ) -> FloatTensor<Self> {
        let forward = || {
            B::attention_op(
                query.primitive.clone(),
                key.primitive.clone(),
                value.primitive.clone(),
                mask.clone(),
                attn_bias.as_ref().map(|bias| bias.primitive.clone()),
                options,
            )
        };
        let state = |output: &FloatTensor<B>| AttentionState {
            query: query.primitive.clone(),
            key: key.primitive.clone(),
            value: value.primitive.clone(),
            mask: mask.clone(),
            bias: attn_bias.as_ref().map(|bias| bias.primitive.clone()),
            output: output.clone(),
            options,
        };
        match &attn_bias {
            Some(bias) => record::<B, C, _, _>(
                AttentionBackward,
                [&query, &key, &value, bias],
                forward,
                state,
            ),
            None => record::<B, C, _, _>(AttentionBackward, [&query, &key, &value], forward, state),
        }
    }
}

/// The forward's inputs and output.
#[derive(Debug, Clone)]
struct AttentionState<B: Backend> {
    query: FloatTensor<B>,
    key: FloatTensor<B>,
    value: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    bias: Option<FloatTensor<B>>,
    output: FloatTensor<B>,
    options: AttentionModuleOptions,
}

/// The backward step; parents `[query, key, value]` or `[query, key, value, bias]`.
#[derive(Debug)]
struct AttentionBackward;

impl<B: AttentionBackend, const N: usize> Backward<B, N> for AttentionBackward {
    type State = AttentionState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let dtype = ops.state.query.dtype();
        let state = ops.state;
        let fused = match (&state.mask, &state.bias) {
            (None, None) => B::attention_backward_op(
                state.query.clone(),
                state.key.clone(),
                state.value.clone(),
                state.output.clone(),
                grad.clone(),
                state.options,
            ),
            _ => None,
        };
        let gradients: [Option<FloatTensor<B>>; 4] = match fused {
            Some([dq, dk, dv]) => [Some(dq), Some(dk), Some(dv), None],
            None => gradients::<B>(state, grad)
                .map(|g| g.map(|t| t.cast(dtype).into_primitive().tensor())),
        };
        for (parent, gradient) in ops.parents.into_iter().zip(gradients) {
            if let (Some(node), Some(gradient)) = (parent, gradient) {
                grads.register::<B>(node.id, gradient);
            }
        }
    }
}

/// `[dq, dk, dv, dbias]` in f32 (module docs), `dbias` summed to the bias's shape.
fn gradients<B: Backend>(
    state: AttentionState<B>,
    grad: FloatTensor<B>,
) -> [Option<Tensor<B, 4>>; 4] {
    let AttentionState {
        query,
        key,
        value,
        mask,
        bias,
        output,
        options,
    } = state;
    let float = |t: FloatTensor<B>| {
        Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t)).cast(FloatDType::F32)
    };
    let bias_shape = bias.as_ref().map(|bias| bias.shape());
    let [q, k, v, o, d_o] = [query, key, value, output, grad].map(float);
    let [batch, heads, seq_q, dim] = q.dims();
    let seq_k = k.dims()[2];
    let scores = [batch, heads, seq_q, seq_k];
    let device = q.device();
    let scale = options.scale.unwrap_or(1.0 / (dim as f64).sqrt());
    // The scale is folded into q: `scale * q` serves the scores and `dk` alike.
    let q = q * scale;
    let mut s = q.clone().matmul(k.clone().swap_dims(2, 3));
    let tanh = options.softcap.map(|cap| {
        let t = (s.clone() / cap).tanh();
        s = t.clone() * cap;
        t
    });
    // A row whose every score is `-inf` gets weights 0, as in the forward; only a mask, a
    // bias or a causal mask over more queries than keys can make one.
    let may_empty_rows = mask.is_some() || bias.is_some() || (options.is_causal && seq_q > seq_k);
    if let Some(mask) = mask {
        let mask = Tensor::<B, 4, Bool>::from_primitive(mask).expand(scores);
        s = s.mask_fill(mask, f32::NEG_INFINITY);
    }
    if options.is_causal {
        // Bottom-right aligned, as Burn's fallback: key `j` is masked for query `i` when
        // `j > i + seq_k - seq_q`.
        let offset = seq_k as i64 - seq_q as i64;
        let rows = Tensor::<B, 1, Int>::arange(0..seq_q as i64, &device).reshape([seq_q, 1]);
        let cols = Tensor::<B, 1, Int>::arange(0..seq_k as i64, &device).reshape([1, seq_k]);
        let future = cols
            .expand([seq_q, seq_k])
            .greater((rows + offset).expand([seq_q, seq_k]));
        s = s.mask_fill(
            future.reshape([1, 1, seq_q, seq_k]).expand(scores),
            f32::NEG_INFINITY,
        );
    }
    if let Some(bias) = bias {
        s = s + float(bias);
    }
    let mut p = softmax(s.clone(), 3);
    if may_empty_rows {
        let empty = s.max_dim(3).equal_elem(f32::NEG_INFINITY);
        p = p.mask_fill(empty.expand(scores), 0.0);
    }
    let dv = p.clone().swap_dims(2, 3).matmul(d_o.clone());
    let dp = d_o.clone().matmul(v.swap_dims(2, 3));
    let delta = (d_o * o).sum_dim(3);
    let mut ds = p * (dp - delta);
    let dbias = bias_shape.map(|shape| {
        let summed = broadcast_shape::<B>(ds.clone().into_primitive().tensor(), &shape);
        Tensor::from_primitive(TensorPrimitive::Float(summed))
    });
    if let Some(t) = tanh {
        ds = ds * (t.square().neg() + 1.0);
    }
    let dq = ds.clone().matmul(k) * scale;
    let dk = ds.swap_dims(2, 3).matmul(q);
    [Some(dq), Some(dk), Some(dv), dbias]
}
