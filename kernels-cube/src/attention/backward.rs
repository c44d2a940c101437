//! The fused backward of attention: `dq`, `dk` and `dv` without materialising the scores,
//! in a batch-invariant order. CUDA's tensor cores only (f16/bf16, `q`, `k` and `v` of one
//! head dim that is a multiple of 16 and at most [`tensor_core::MAX_MMA_HEAD_DIM`], no mask,
//! bias or softcap, causal or not); [`is_supported`] says when, from the device, the dtype
//! and the head dims alone. Everything else takes the composite backward of the Burn layer.
//!
//! # The fixed order
//!
//! With `s = q · k` (one `mma` chain over the head dim, 16 dims per instruction in
//! increasing order), a key *seen* by a query when it is in range and, with `causal`, not
//! past the query's bottom-right-aligned cut:
//!
//! 1. Per query row, `lse = m + ln(l)`: the keys it sees in blocks of 64 at absolute
//!    positions `64 b`, each block's maximum of `scale * s` and its sum of
//!    `exp(scale * s - m')` taken across the four lanes of the row as the forward's chunk
//!    state (`l = l * exp(m - m') + sum`). A row that sees no key gets the largest float,
//!    so all its weights are 0. `delta = rowsum(do * o)`, each lane's products in fragment
//!    order, then `xor 1`, `xor 2`.
//! 2. `p = exp(scale * s - lse)` (`__expf`), 0 where the key is not seen;
//!    `dp = do · v` (one `mma` chain as `s`); `ds = p * (dp - delta)`.
//! 3. `dq = scale * sum_j ds_j k_j`: `ds` rounded to the input dtype, one `mma` chain per 8
//!    columns over the keys in increasing order (16 per instruction), from 0.
//! 4. `dv = sum_i p_i do_i` and `dk = scale * sum_i ds_i q_i`: `p` and `ds` rounded to the
//!    input dtype, one `mma` chain per 8 columns over the queries in increasing order.
//!
//! Every chain runs over absolute positions from 0, so a row's gradient depends on its own
//! (batch, head) only: nothing reduces across the batch or the heads, and no two cubes
//! write one element. Skipped work (blocks no row of a warp sees) would only add zeros.
//! Rounding `p` and `ds` to the input dtype before their products is what flash-attention
//! kernels do; the bounds in the contract cover it.

use cubecl::prelude::*;

use super::launch::{check_operand, AttentionError, AttentionOptions};
use super::tensor_core::{self, backward::*, PLANE};
use crate::layout::cube_count;

/// Whether [`launch_attention_backward`] takes `q`, `k` (head dim `dim`) and `v` (head dim
/// `dim_v`) in `dtype` on the runtime behind `client`. Depends on the device, the dtype and
/// the head dims only.
pub fn is_supported<R: Runtime>(
    client: &ComputeClient<R>,
    dtype: StorageType,
    dim: usize,
    dim_v: usize,
) -> bool {
    dim > 0
        && dim == dim_v
        && dim.is_multiple_of(16)
        && tensor_core::is_supported(client, dtype, dim, dim_v)
        && shared_memory_bytes(dim) <= client.properties().hardware.max_shared_memory_size
}

/// Shared memory of the larger kernel (`dk`/`dv`): the cube's keys and values, a block of
/// queries and their output gradients, and the block's row statistics.
pub const fn shared_memory_bytes(dim: usize) -> usize {
    2 * tensor_core::shared_memory_bytes(dim, dim, tensor_core::Staging::Single)
        + 2 * BACKWARD_BLOCK * 4
}

/// Gradients of `softmax(scale * q kᵀ (causal)) v` for contiguous `query [b, h, seq_q, d]`,
/// `key`, `value [b, h, seq_k, d]`, the forward's `output` and its gradient `grad`
/// (`[b, h, seq_q, d]`), into contiguous `d_query`, `d_key`, `d_value` of the operands'
/// shapes. The options must have no softcap ([`is_supported`] must hold).
#[allow(clippy::too_many_arguments)]
pub fn launch_attention_backward<R: Runtime>(
    client: &ComputeClient<R>,
    [query, key, value, output, grad]: [TensorBinding<R>; 5],
    [d_query, d_key, d_value]: [TensorBinding<R>; 3],
    options: AttentionOptions,
    dtype: StorageType,
) -> Result<(), AttentionError> {
    let q_shape: Vec<usize> = query.shape.iter().copied().collect();
    let k_shape: Vec<usize> = key.shape.iter().copied().collect();
    if q_shape.len() != 4 || k_shape.len() != 4 {
        let (name, binding) = if q_shape.len() != 4 {
            ("query", &query)
        } else {
            ("key", &key)
        };
        return Err(AttentionError::BadOperand {
            name,
            expected: vec![0; 4],
            shape: binding.shape.iter().copied().collect(),
            strides: binding.strides.iter().copied().collect(),
        });
    }
    let [batch, heads, seq_q, dim] = [q_shape[0], q_shape[1], q_shape[2], q_shape[3]];
    let seq_k = k_shape[2];
    let rows_q = [batch, heads, seq_q, dim];
    let rows_k = [batch, heads, seq_k, dim];
    for (name, binding, expected) in [
        ("query", &query, rows_q),
        ("key", &key, rows_k),
        ("value", &value, rows_k),
        ("output", &output, rows_q),
        ("grad", &grad, rows_q),
        ("d_query", &d_query, rows_q),
        ("d_key", &d_key, rows_k),
        ("d_value", &d_value, rows_k),
    ] {
        check_operand(name, binding, expected)?;
    }
    if !is_supported(client, dtype, dim, dim) {
        return Err(AttentionError::HeadDim { dim, dim_v: dim });
    }
    if let Some(cap) = options.softcap {
        return Err(AttentionError::Softcap(cap));
    }
    if batch * heads == 0 || seq_q == 0 || seq_k == 0 {
        return Ok(());
    }
    let bh = batch * heads;
    let lse = client.empty(bh * seq_q * core::mem::size_of::<f32>());
    let delta = client.empty(bh * seq_q * core::mem::size_of::<f32>());
    // 16-byte copies need every operand's rows 16-byte aligned (they are, at a head dim
    // that is a multiple of 16, when the buffers start aligned).
    let copy_async = client.properties().features.copy_async
        && [&query, &key, &value, &grad]
            .iter()
            .all(|t| t.handle.offset_start.unwrap_or(0).is_multiple_of(16));
    let largest = bh * seq_q.max(seq_k) * dim;
    let address_type = AddressType::from_len(largest);
    let causal = u32::from(options.causal);
    let cube_dim = CubeDim::new_2d(PLANE as u32, BACKWARD_WARPS as u32);
    let extents = |seq: usize| {
        let blocks = seq.div_ceil(BACKWARD_BLOCK);
        (
            bh * blocks,
            BackwardExtentsLaunch::new(seq_q, seq_k, blocks, bh * blocks),
        )
    };

    let _span = tracing::debug_span!(
        "batch_invariant_attention_backward",
        batch,
        heads,
        seq_q,
        seq_k,
        dim,
        causal = options.causal
    )
    .entered();
    let arg = |t: &TensorBinding<R>| t.clone().into_tensor_arg();
    // Both scratch buffers hold one f32 per query row of the launch.
    let scratch =
        |h: &cubecl::server::Handle| unsafe { ArrayArg::from_raw_parts(h.clone(), bh * seq_q) };
    unsafe {
        let (cubes, ext) = extents(seq_q);
        attention_mma_backward_dq_kernel::launch_unchecked::<R>(
            client,
            cube_count(client, cubes),
            cube_dim,
            address_type,
            arg(&query),
            arg(&key),
            arg(&value),
            arg(&output),
            arg(&grad),
            arg(&d_query),
            scratch(&lse),
            scratch(&delta),
            ext,
            options.scale,
            causal,
            dim,
            copy_async,
            dtype,
        );
        let (cubes, ext) = extents(seq_k);
        attention_mma_backward_dkv_kernel::launch_unchecked::<R>(
            client,
            cube_count(client, cubes),
            cube_dim,
            address_type,
            arg(&query),
            arg(&key),
            arg(&value),
            arg(&grad),
            scratch(&lse),
            scratch(&delta),
            arg(&d_key),
            arg(&d_value),
            ext,
            options.scale,
            causal,
            dim,
            copy_async,
            dtype,
        );
    }
    Ok(())
}
