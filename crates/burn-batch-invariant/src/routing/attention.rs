//! Routing of `ModuleOps::attention` to `batch_invariant_kernels::attention`.
//!
//! Burn's CUDA attention autotunes a flash kernel whose blocking follows the problem, and
//! its fallback materialises the scores with the autotuned matmul; either way one sequence's
//! output depends on its batch, and a decode step differs from the same position in a
//! prefill. The invariant kernel fixes the key blocks by absolute position, so it gives the
//! same bits alone, in any batch, and at decode. The block size is exposed as
//! [`crate::attention_block_size`].

use batch_invariant_kernels::attention::{AttentionOptions, MAX_HEAD_DIM};
use burn_backend::ops::AttentionModuleOptions;
use burn_backend::tensor::{BoolTensor, FloatTensor};
use burn_backend::{DType, FloatDType, Shape, TensorMetadata};

use super::checks::{check_devices, check_float_dtype};
use super::empty;
use super::parity;
use crate::{mode, KernelHost};

const OP: &str = "attention";

pub(crate) fn attention<B: KernelHost>(
    query: FloatTensor<B>,
    key: FloatTensor<B>,
    value: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    attn_bias: Option<FloatTensor<B>>,
    options: AttentionModuleOptions,
) -> FloatTensor<B> {
    if mode::parity::is_enabled() {
        return parity::attention::<B>(query, key, value, mask, attn_bias, options);
    }
    let dtype = query.dtype();
    let (q, k, v) = (query.shape(), key.shape(), value.shape());
    let shapes = || format!("query {q:?}, key {k:?}, value {v:?}, dtype {dtype:?}");
    check_float_dtype(OP, &q, dtype);
    for (name, other) in [("key", key.dtype()), ("value", value.dtype())] {
        if other != dtype {
            panic!(
                "BatchInvariant::{OP}: {name} has dtype {other:?} but query has {dtype:?} \
                 ({}); cast them to one dtype first",
                shapes()
            );
        }
    }
    if q.num_dims() != 4 || k.num_dims() != 4 || v.num_dims() != 4 {
        panic!(
            "BatchInvariant::{OP}: query, key and value must be rank 4 \
             [batch, heads, seq, head_dim] ({})",
            shapes()
        );
    }
    let [batch, heads, seq_q, dim] = [q[0], q[1], q[2], q[3]];
    let [seq_k, dim_v] = [k[2], v[3]];
    if k[0] != batch || k[1] != heads || k[3] != dim {
        panic!(
            "BatchInvariant::{OP}: key must be [{batch}, {heads}, seq_k, {dim}] to match the \
             query ({})",
            shapes()
        );
    }
    if v[0] != batch || v[1] != heads || v[2] != seq_k {
        panic!(
            "BatchInvariant::{OP}: value must be [{batch}, {heads}, {seq_k}, d_v] to match \
             the key ({})",
            shapes()
        );
    }
    if dim == 0 || dim_v == 0 || dim > MAX_HEAD_DIM || dim_v > MAX_HEAD_DIM {
        panic!(
            "BatchInvariant::{OP}: head dims must be between 1 and {MAX_HEAD_DIM} for the \
             invariant kernel, got {dim} (query/key) and {dim_v} (value) ({})",
            shapes()
        );
    }
    let softcap = options.softcap.map(|cap| {
        if !(cap > 0.0 && cap.is_finite()) {
            panic!(
                "BatchInvariant::{OP}: softcap must be positive and finite, got {cap} ({})",
                shapes()
            );
        }
        cap as f32
    });
    let scale = options.scale.unwrap_or(1.0 / (dim as f64).sqrt());
    if !scale.is_finite() {
        panic!(
            "BatchInvariant::{OP}: scale must be finite, got {scale} ({})",
            shapes()
        );
    }
    let scores = Shape::new([batch, heads, seq_q, seq_k]);
    if let Some(mask) = &mask {
        check_broadcast(OP, "mask", &mask.shape(), &scores);
    }
    if let Some(bias) = &attn_bias {
        check_broadcast(OP, "attn_bias", &bias.shape(), &scores);
        if bias.dtype() != dtype {
            panic!(
                "BatchInvariant::{OP}: attn_bias has dtype {:?} but query has {dtype:?} ({})",
                bias.dtype(),
                shapes()
            );
        }
    }
    let device = B::float_device(&query);
    let mut devices = vec![
        ("query", device.clone()),
        ("key", B::float_device(&key)),
        ("value", B::float_device(&value)),
    ];
    devices.extend(mask.as_ref().map(|mask| ("mask", B::bool_device(mask))));
    devices.extend(
        attn_bias
            .as_ref()
            .map(|bias| ("attn_bias", B::float_device(bias))),
    );
    check_devices(OP, &devices);
    // Nothing to compute: an empty output, or no key, where every query row has no weight
    // to share out and gets 0, as a fully masked row does.
    let out_shape = Shape::new([batch, heads, seq_q, dim_v]);
    if out_shape.num_elements() == 0 || seq_k == 0 {
        return empty::filled::<B>(out_shape, 0.0, &device, dtype);
    }
    // Convert the mask at its own size, then broadcast as a view (no copy).
    let mask = mask
        .map(|mask| B::float_expand(B::bool_into_float(mask, float_dtype(dtype)), scores.clone()));
    let bias = attn_bias.map(|bias| B::float_expand(bias, scores.clone()));
    let options = AttentionOptions {
        scale: scale as f32,
        softcap,
        causal: options.is_causal,
    };
    B::invariant_attention(query, key, value, mask, bias, options)
}

/// `[dq, dk, dv]` from the fused backward kernels when they take the op: no mask, bias or
/// softcap, f16 or bf16, and head dims the device's kernel takes (see
/// `batch_invariant_kernels::attention::backward`). `None` leaves the gradients to the
/// composite backward of `crate::attention`. The forward that produced `output` has already
/// validated the operands.
pub(crate) fn attention_backward<B: KernelHost>(
    query: FloatTensor<B>,
    key: FloatTensor<B>,
    value: FloatTensor<B>,
    output: FloatTensor<B>,
    grad: FloatTensor<B>,
    options: AttentionModuleOptions,
) -> Option<[FloatTensor<B>; 3]> {
    let dtype = query.dtype();
    let (q, k, v) = (query.shape(), key.shape(), value.shape());
    let fusable = options.softcap.is_none()
        && matches!(dtype, DType::F16 | DType::BF16)
        && [key.dtype(), value.dtype(), output.dtype(), grad.dtype()]
            .iter()
            .all(|&other| other == dtype)
        && q.num_elements() > 0
        && k.num_elements() > 0
        && B::invariant_attention_backward_supported(&B::float_device(&query), dtype, q[3], v[3]);
    if !fusable {
        return None;
    }
    let options = AttentionOptions {
        scale: options.scale.unwrap_or(1.0 / (q[3] as f64).sqrt()) as f32,
        softcap: None,
        causal: options.is_causal,
    };
    Some(B::invariant_attention_backward(
        query, key, value, output, grad, options,
    ))
}

/// A mask or bias must broadcast to the scores `[batch, heads, seq_q, seq_k]`.
fn check_broadcast(op: &str, name: &str, shape: &Shape, scores: &Shape) {
    let fits = shape.num_dims() == 4
        && shape
            .as_slice()
            .iter()
            .zip(scores.as_slice())
            .all(|(&n, &want)| n == want || n == 1);
    if !fits {
        panic!(
            "BatchInvariant::{op}: {name} of shape {shape:?} does not broadcast to the scores \
             {scores:?} [batch, heads, seq_q, seq_k]"
        );
    }
}

fn float_dtype(dtype: DType) -> FloatDType {
    match dtype {
        DType::F16 => FloatDType::F16,
        DType::BF16 => FloatDType::BF16,
        _ => FloatDType::F32,
    }
}
