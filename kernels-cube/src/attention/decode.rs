//! The decode kernel: one query row against its chunk of keys, every thread of the cube
//! carrying one key, in the order of the prefill kernel (module docs).

use cubecl::prelude::*;

use super::kernel::*;
use super::{BLOCK_K, BLOCK_Q, KEY_SPLIT};

/// Head-dim elements of every key staged at a time by the decode kernel: one piece of
/// [`CUBE_UNITS`] keys, so that each thread's dot product reads its key from shared memory
/// while the loads of the piece are coalesced across the cube.
pub const DECODE_PIECE: usize = 16;

/// Shared-memory words of the decode kernel's staging buffer (keys, then values).
pub const DECODE_STAGE_WORDS: usize = CUBE_UNITS * (DECODE_PIECE + 1);

/// Blocks of [`BLOCK_K`] keys in one chunk.
const CHUNK_BLOCKS: usize = KEY_SPLIT / BLOCK_K;

/// Keys of values staged at a time by the decode kernel: the largest power-of-two multiple
/// of [`BLOCK_K`] whose rows fit the staging buffer (so a chunk holds a whole number).
pub const fn decode_value_rows(dim_v: usize) -> usize {
    let mut rows = BLOCK_K;
    while rows * 2 * dim_v <= DECODE_STAGE_WORDS && rows * 2 <= KEY_SPLIT {
        rows *= 2;
    }
    rows
}

/// Shared-memory words of the decode kernel for head dim `dim`.
pub const fn decode_shared_words(dim: usize) -> usize {
    dim + DECODE_STAGE_WORDS + 2 * KEY_SPLIT + 5 * CHUNK_BLOCKS
}

/// Stages dims `d0..d0 + width` of [`CUBE_UNITS`] keys from `first_row` (zeros past `rows`)
/// and adds `q_d * k_d` for those dims to the thread's dot product (its own key), in
/// increasing `d`. Every thread of the cube must call it (it synchronises the cube).
#[cube]
#[allow(clippy::too_many_arguments)]
fn decode_score_piece<F: Float>(
    key: &Tensor<F>,
    stage_s: &mut SharedMemory<f32>,
    q_s: &SharedMemory<f32>,
    first_row: usize,
    rows: usize,
    dot: f32,
    #[comptime] dim: usize,
    d0: usize,
    #[comptime] width: usize,
) -> f32 {
    let tid = UNIT_POS as usize;
    let pitch = comptime!(DECODE_PIECE + 1);
    sync_cube(); // the previous piece has been read
    stage_block(
        key,
        stage_s,
        first_row,
        rows,
        dim,
        d0,
        width,
        pitch,
        comptime!(CUBE_UNITS),
    );
    let mut dot = dot;
    #[unroll]
    for d in 0..width {
        dot += q_s[d0 + d] * stage_s[tid * pitch + d];
    }
    dot
}

/// The partials kernel for one query per (batch, head), a decode step: one cube of
/// [`CUBE_UNITS`] threads per (batch x head of this slab, chunk). It performs, for its one
/// query, exactly the operations of [`attention_partials_kernel()`] in the same order (each
/// score a sequential dot product over `d`, `finish_score`, then per block of
/// [`BLOCK_K`] keys the same statistics, weights and accumulator updates), so a decode step
/// gives the bits of the same position in a prefill; the suite checks it. What changes is
/// who computes what, so that every load is coalesced and none waits on a branch:
///
/// 1. scores, one key per thread, keys staged [`DECODE_PIECE`] dims at a time;
/// 2. per block (one thread each): its maximum, then the running maximum `m'` before it,
///    folded block by block as the prefill folds it, and `alpha`;
/// 3. weights `p = exp(s - m')`, one key per thread; block sums, one block per thread;
/// 4. values staged [`decode_value_rows`] keys at a time, thread `c` carrying column `c`
///    through the blocks in order; thread 0 folds `l` over the blocks.
///
/// Writes the chunk state to the same slots as the prefill kernel (query 0 of each group).
#[cube(launch_unchecked, address_type = "dynamic")]
// `!(p < 0.0)` is deliberate: a NaN weight (from a NaN score) takes part, as in the prefill.
#[allow(clippy::too_many_arguments, clippy::neg_cmp_op_on_partial_ord)]
pub fn attention_decode_partials_kernel<F: Float>(
    query: &Tensor<F>,
    key: &Tensor<F>,
    value: &Tensor<F>,
    mask: &Tensor<F>,
    bias: &Tensor<F>,
    stats: &mut Array<f32>,
    accs: &mut Array<f32>,
    ext: Extents,
    scale: f32,
    softcap: f32,
    flags: u32,
    #[comptime] dim: usize,
    #[comptime] dim_v: usize,
    #[define(F)] _dtype: StorageType,
) {
    if CUBE_POS >= ext.groups * ext.chunks {
        terminate!();
    }
    let bk = comptime!(BLOCK_K);
    let units = comptime!(CUBE_UNITS);
    let blocks = comptime!(CHUNK_BLOCKS);
    let piece = comptime!(DECODE_PIECE);
    let tail = comptime!(dim % DECODE_PIECE);
    let v_rows = comptime!(decode_value_rows(dim_v));
    let tid = UNIT_POS as usize;
    let local_group = CUBE_POS / ext.chunks;
    let chunk = CUBE_POS % ext.chunks;
    let bh = ext.first_group + local_group; // one query block per (batch, head)
    let k_start = chunk * comptime!(KEY_SPLIT);
    let k_end = chunk_end(&ext, k_start, 1usize, flags);
    let row0 = bh * ext.seq_k;

    let mut q_s = SharedMemory::<f32>::new(comptime!(dim));
    let mut stage_s = SharedMemory::<f32>::new(comptime!(DECODE_STAGE_WORDS));
    // Scores, then (step 3) the weights in place, -1 where the key does not take part.
    let mut score_s = SharedMemory::<f32>::new(comptime!(KEY_SPLIT));
    let mut live_s = SharedMemory::<u32>::new(comptime!(KEY_SPLIT));
    let mut any_s = SharedMemory::<u32>::new(comptime!(CHUNK_BLOCKS));
    let mut max_s = SharedMemory::<f32>::new(comptime!(CHUNK_BLOCKS));
    let mut m_new_s = SharedMemory::<f32>::new(comptime!(CHUNK_BLOCKS));
    let mut alpha_s = SharedMemory::<f32>::new(comptime!(CHUNK_BLOCKS));
    let mut sum_s = SharedMemory::<f32>::new(comptime!(CHUNK_BLOCKS));
    #[unroll]
    for r in 0..comptime!(dim.div_ceil(CUBE_UNITS)) {
        let i = tid + r * units;
        if i < dim {
            q_s[i] = f32::cast_from(query[bh * dim + i]);
        }
    }

    // 1. Scores: `sum_d q_d k_d` in increasing d, piece after piece.
    #[unroll]
    for r in 0..comptime!(KEY_SPLIT / CUBE_UNITS) {
        let first = k_start + r * units;
        if first < k_end {
            let rows = k_end - first;
            let mut dot = 0.0f32;
            for p in 0..comptime!(dim / DECODE_PIECE) {
                dot = decode_score_piece(
                    key,
                    &mut stage_s,
                    &q_s,
                    row0 + first,
                    rows,
                    dot,
                    dim,
                    p * piece,
                    piece,
                );
            }
            if comptime!(tail > 0) {
                dot = decode_score_piece(
                    key,
                    &mut stage_s,
                    &q_s,
                    row0 + first,
                    rows,
                    dot,
                    dim,
                    comptime!(dim - tail),
                    tail,
                );
            }
            let key_pos = first + tid;
            let score = finish_score(
                dot,
                key_pos < k_end,
                mask,
                bias,
                &ext,
                bh,
                0usize,
                key_pos,
                scale,
                softcap,
                flags,
            );
            score_s[tid + r * units] = score.value;
            let mut live_flag = 0u32;
            if score.live {
                live_flag = 1u32;
            }
            live_s[tid + r * units] = live_flag;
        }
    }
    sync_cube();

    // 2. Block statistics, one block per thread, in the prefill's order.
    if tid < blocks {
        let mut any = 0u32;
        let mut block_max = f32::min_value();
        if k_start + tid * bk < k_end {
            #[unroll]
            for j in 0..bk {
                if live_s[tid * bk + j] != 0 {
                    any = 1u32;
                    block_max = f32::max(block_max, score_s[tid * bk + j]);
                }
            }
        }
        any_s[tid] = any;
        max_s[tid] = block_max;
    }
    sync_cube();
    if tid < blocks {
        // The running maximum before this block, folded exactly as the prefill folds it.
        let mut m = f32::min_value();
        for b in 0..tid {
            if any_s[b] != 0 {
                m = f32::max(m, max_s[b]);
            }
        }
        let m_new = f32::max(m, max_s[tid]);
        let mut alpha = 1.0f32;
        if any_s[tid] != 0 {
            alpha = f32::exp(m - m_new);
        }
        m_new_s[tid] = m_new;
        alpha_s[tid] = alpha;
    }
    sync_cube();

    // 3. Weights, one key per thread, then block sums, one block per thread.
    #[unroll]
    for r in 0..comptime!(KEY_SPLIT / CUBE_UNITS) {
        let j = tid + r * units;
        if k_start + j < k_end {
            // -1 marks a key that does not take part (a weight is never negative), so that
            // step 4 reads one word per key instead of two.
            let mut p = f32::new(-1.0);
            if live_s[j] != 0 {
                p = f32::exp(score_s[j] - m_new_s[j / bk]);
            }
            score_s[j] = p;
        }
    }
    sync_cube();
    if tid < blocks {
        let mut row_sum = 0.0f32;
        if any_s[tid] != 0 {
            #[unroll]
            for j in 0..bk {
                if live_s[tid * bk + j] != 0 {
                    row_sum += score_s[tid * bk + j];
                }
            }
        }
        sum_s[tid] = row_sum;
    }

    // 4. Values: thread c carries column c through the blocks in order.
    let c = tid;
    let mut acc = 0.0f32;
    let mut ks = k_start;
    while ks < k_end {
        let b0 = (ks - k_start) / bk;
        let mut stage_any = false;
        #[unroll]
        for bb in 0..comptime!(v_rows / BLOCK_K) {
            if any_s[b0 + bb] != 0 {
                stage_any = true;
            }
        }
        if stage_any {
            sync_cube(); // the previous stage has been read (and step 3's sums written)
            stage_block(
                value,
                &mut stage_s,
                row0 + ks,
                k_end - ks,
                dim_v,
                0usize,
                dim_v,
                dim_v,
                v_rows,
            );
            if c < dim_v {
                #[unroll]
                for bb in 0..comptime!(v_rows / BLOCK_K) {
                    let b = b0 + bb;
                    if any_s[b] != 0 {
                        let mut a = acc * alpha_s[b];
                        #[unroll]
                        for j in 0..bk {
                            let p = score_s[b * bk + j];
                            if !(p < 0.0) {
                                a += p * stage_s[(bb * bk + j) * dim_v + c];
                            }
                        }
                        acc = a;
                    }
                }
            }
        }
        ks += v_rows;
    }
    sync_cube(); // step 3's sums are visible

    let slot = local_group * comptime!(BLOCK_Q) * ext.chunks + chunk;
    if tid == 0 {
        let mut m = f32::min_value();
        let mut l = 0.0f32;
        for b in 0..blocks {
            if any_s[b] != 0 {
                l = l * alpha_s[b] + sum_s[b];
                m = m_new_s[b];
            }
        }
        stats[2 * slot] = m;
        stats[2 * slot + 1] = l;
    }
    if c < dim_v {
        accs[slot * dim_v + c] = acc;
    }
}
