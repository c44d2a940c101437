//! Scaled dot-product attention in a batch-invariant order.
//!
//! # The fixed order
//!
//! Every output row (one query of one batch entry and head) is computed by the same
//! sequence of f32 operations, which depends only on the head dims, the dtype, the options
//! and the **absolute positions** of the keys the query may see. It never depends on the
//! batch, the number of heads, the number of queries, or where the query sits among them.
//!
//! 1. Keys are cut, by absolute position, into chunks of [`KEY_SPLIT`] (512) keys, and each
//!    chunk into blocks of [`BLOCK_K`] (16) keys. A chunk starts at `c * 512` and a block at
//!    `c * 512 + b * 16`, whatever the key length.
//! 2. Score of a (query, key) pair: `s = sum_d q_d * k_d` in increasing `d` (f32), then
//!    `s *= scale`, then `s = softcap * tanh(s / softcap)` if set, then `s += bias`.
//!    The key *takes part* when it is inside the key length, allowed by the causal rule
//!    (`key + seq_q <= query + seq_k`, aligned to the bottom-right like Burn's), not set in
//!    the mask, and `s` is not `-inf`.
//! 3. Per chunk, an online softmax over its blocks in order, starting from the empty state
//!    (`m = f32::MIN`, `l = 0`, `acc = 0`). A block in which no key takes part leaves the
//!    state untouched. Otherwise, with `m' = max(m, max of the block's scores)` and
//!    `alpha = exp(m - m')`: `p_j = exp(s_j - m')`; `l = l * alpha + (p_0 + p_1 + ...)`;
//!    `acc = acc * alpha + p_0 v_0 + p_1 v_1 + ...`, keys in increasing order, only those
//!    that take part; `m = m'`.
//! 4. The chunk states are merged in chunk order. An empty chunk (`l = 0`) is skipped; the
//!    first non-empty one is copied; the next ones are merged with
//!    `m' = max(m, m_c)`, `l = l * exp(m - m') + l_c * exp(m_c - m')` and the same for `acc`.
//! 5. `out = acc / l`, or 0 for a row in which no key took part (as Burn's fallback gives),
//!    then a cast to the output dtype.
//!
//! On CUDA, f16/bf16 inputs with head dims up to 128 take the tensor-core kernel
//! ([`tensor_core`]), which keeps steps 1, 3, 4 and 5 with blocks of
//! [`tensor_core::MMA_BLOCK_K`] (64) keys instead of 16, and computes a block with
//! `mma.sync`: the score's dot product is one instruction chain over 16 dims at a time, the
//! block's row maximum and sum are taken per lane and then folded across the four lanes of
//! a row in a fixed butterfly, and `p_0 v_0 + p_1 v_1 + ...` is one instruction chain per 8
//! columns, with the weights rounded to the input dtype, added to `acc * alpha`. Which
//! arithmetic runs depends on the device, the dtype and the head dims, never on the batch or
//! the sequence lengths.
//!
//! A key that does not take part changes nothing, bit for bit, and an empty chunk is
//! skipped, so a decode step (one query against a cache of `n` keys) performs exactly the
//! operations of query `n - 1` inside a causal prefill of any longer length, and a sequence
//! padded on the right with masked keys performs those of the same sequence alone. (Padding
//! on the left moves the absolute positions, and with them the block boundaries.)
//!
//! # Mapping
//!
//! Two kernels per launch: a partials kernel writes each query's chunk state to a scratch
//! buffer, [`combine::attention_combine_kernel()`] merges them and writes the output. The
//! partials kernel is [`kernel::attention_partials_kernel()`], one cube of 16 x 16 threads per
//! (batch x head, block of [`BLOCK_Q`] queries, chunk), or, when there is one query per
//! (batch, head) (a decode step), [`decode::attention_decode_partials_kernel()`], one cube of
//! 256 threads per (batch x head, chunk) that computes the chunk's scores one key per thread
//! and then carries one output column per thread. Both perform the operations above in the
//! same order through the same helpers (`finish_score`, `chunk_end`); the suite compares a
//! decode step with the prefill bitwise. The tensor-core kernel gives a cube 4 warps of 16
//! queries each for a prefill and one warp (its query in row 0 of the tile) for a decode
//! step. Queries and chunks that the causal rule rules out entirely are not launched work
//! (their state is written empty). The options that select arithmetic (mask, bias, causal,
//! softcap) are runtime flags, not compile-time ones, so that every option set runs the
//! same compiled code. Large problems are launched in slabs of queries so that the scratch
//! stays under [`launch::SCRATCH_BYTES`]; a slab changes which cube computes a row, not how.

pub mod backward;
pub mod combine;
pub mod cpu_reference;
pub mod decode;
pub mod kernel;
pub mod launch;
pub mod tensor_core;

pub use launch::{
    is_broadcast_layout, launch_attention, launch_attention_with_scratch, AttentionError,
    AttentionOptions, MAX_HEAD_DIM,
};

/// Queries per cube (vLLM's `BLOCK_M`).
pub const BLOCK_Q: usize = 16;
/// Keys per block of the online softmax (vLLM's `BLOCK_N`).
pub const BLOCK_K: usize = 16;
/// Keys per chunk: the unit of the key split, aligned to absolute key positions.
pub const KEY_SPLIT: usize = 512;

/// The fixed block size of the invariant attention's portable kernels, `(queries, keys)`,
/// as vLLM's `get_batch_invariant_attention_block_size()` exposes it.
pub const fn attention_block_size() -> (usize, usize) {
    (BLOCK_Q, BLOCK_K)
}

/// The fixed block size of the tensor-core kernel (CUDA, f16/bf16, head dims up to 128),
/// `(queries, keys)`: 16-query tiles, online-softmax blocks of 64 keys.
pub const fn tensor_core_attention_block_size() -> (usize, usize) {
    (tensor_core::TILE_Q, tensor_core::MMA_BLOCK_K)
}
