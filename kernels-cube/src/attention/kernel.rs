//! The `#[cube]` code of the invariant attention (order in the module docs).

use cubecl::prelude::*;

use super::{BLOCK_K, BLOCK_Q, KEY_SPLIT};

/// Threads per cube of the partials kernel: one per (query, key) pair of a block.
pub const CUBE_UNITS: usize = BLOCK_Q * BLOCK_K;

/// Head-dim elements staged in shared memory at a time (keys and values).
pub const PIECE: usize = 128;

/// Threads per cube of the combine kernel.
pub const COMBINE_UNITS: usize = 256;

/// Runtime option flags (bits of `flags`). Runtime, not comptime, so that every option set
/// runs the same compiled arithmetic.
pub const FLAG_CAUSAL: u32 = 1;
pub const FLAG_MASK: u32 = 2;
pub const FLAG_BIAS: u32 = 4;
pub const FLAG_SOFTCAP: u32 = 8;

/// Problem extents shared by both kernels.
#[derive(CubeType, CubeLaunch, Clone, Copy)]
pub struct Extents {
    /// Queries per (batch, head).
    pub seq_q: usize,
    /// Keys per (batch, head).
    pub seq_k: usize,
    /// Heads per batch entry (to split `batch x head` for the mask's and bias's strides).
    pub heads: usize,
    /// Blocks of `BLOCK_Q` queries per (batch, head).
    pub q_blocks: usize,
    /// Chunks of `KEY_SPLIT` keys.
    pub chunks: usize,
    /// First (batch x head, query block) group of this slab.
    pub first_group: usize,
    /// Groups in this slab.
    pub groups: usize,
}

/// A score after the options, and whether its key takes part.
#[derive(CubeType)]
pub(super) struct Score {
    pub value: f32,
    pub live: bool,
}

/// What every kernel does to a raw dot product `dot` of query `row` and key `key_pos`:
/// causal cut, `* scale`, softcap, mask, bias, and `-inf` as masked (as Burn's fallback
/// treats it). `live` says whether the key is in range to begin with. One function, so that
/// the prefill and decode kernels cannot drift apart.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn finish_score<F: Float>(
    dot: f32,
    live: bool,
    mask: &Tensor<F>,
    bias: &Tensor<F>,
    ext: &Extents,
    bh: usize,
    row: usize,
    key_pos: usize,
    scale: f32,
    softcap: f32,
    flags: u32,
) -> Score {
    let mut live = live;
    if (flags & FLAG_CAUSAL) != 0 {
        live = live && key_pos + ext.seq_q <= row + ext.seq_k;
    }
    let mut s = dot * scale;
    if (flags & FLAG_SOFTCAP) != 0 {
        s = softcap * f32::tanh(s / softcap);
    }
    let has_mask = (flags & FLAG_MASK) != 0;
    let has_bias = (flags & FLAG_BIAS) != 0;
    if live && (has_mask || has_bias) {
        // Mask and bias are read through their strides: a padding mask `[b, 1, 1, k]`
        // broadcast to the scores costs its own size, not `b x h x q x k`.
        let (b, h) = (bh / ext.heads, bh % ext.heads);
        if has_mask && f32::cast_from(mask[broadcast_offset(mask, b, h, row, key_pos)]) != 0.0 {
            live = false;
        }
        if has_bias {
            s += f32::cast_from(bias[broadcast_offset(bias, b, h, row, key_pos)]);
        }
    }
    if s < f32::min_value() {
        live = false;
    }
    Score { value: s, live }
}

/// End of the keys chunk `k_start..` holds for queries before `rows_end`: the chunk's end,
/// cut under causal masking where the last of those queries stops seeing keys (every block
/// past it would be a no-op).
#[cube]
pub(super) fn chunk_end(ext: &Extents, k_start: usize, rows_end: usize, flags: u32) -> usize {
    let mut k_end = k_start + comptime!(KEY_SPLIT);
    if k_end > ext.seq_k {
        k_end = ext.seq_k;
    }
    if (flags & FLAG_CAUSAL) != 0 {
        let mut rows_end = rows_end;
        if rows_end > ext.seq_q {
            rows_end = ext.seq_q;
        }
        let mut limit = 0;
        if rows_end + ext.seq_k > ext.seq_q {
            limit = rows_end + ext.seq_k - ext.seq_q;
        }
        if limit < k_end {
            k_end = limit;
        }
    }
    k_end
}

/// Offset of score `(b, h, row, key)` in a mask or bias laid out by its strides (zero
/// along broadcast dims).
#[cube]
fn broadcast_offset<F: Float>(t: &Tensor<F>, b: usize, h: usize, row: usize, key: usize) -> usize {
    b * t.stride(0) + h * t.stride(1) + row * t.stride(2) + key * t.stride(3)
}

/// Copies rows `first_row .. first_row + block_rows` of a row-major tensor with rows of
/// `row_len`, columns `col0 .. col0 + width`, to `smem[j * pitch + c]` as f32, with zeros for
/// rows `j >= rows` (past the key range), then synchronises the cube. Unrolled at compile
/// time so that every thread has its loads in flight at once.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_block<F: Float>(
    tensor: &Tensor<F>,
    smem: &mut SharedMemory<f32>,
    first_row: usize,
    rows: usize,
    #[comptime] row_len: usize,
    col0: usize,
    #[comptime] width: usize,
    #[comptime] pitch: usize,
    #[comptime] block_rows: usize,
) {
    // Both mappings number their threads 0..CUBE_UNITS this way (the decode cube is 1-D).
    let tid = UNIT_POS_Y as usize * comptime!(BLOCK_K) + UNIT_POS_X as usize;
    #[unroll]
    for r in 0..comptime!((block_rows * width).div_ceil(CUBE_UNITS)) {
        let i = tid + r * comptime!(CUBE_UNITS);
        if i < comptime!(block_rows * width) {
            let j = i / width;
            let mut x = 0.0f32;
            if j < rows {
                x = f32::cast_from(tensor[(first_row + j) * row_len + col0 + i % width]);
            }
            smem[j * pitch + i % width] = x;
        }
    }
    sync_cube();
}

/// Stages keys `kb..kb + BLOCK_K`, dims `d0..d0 + width`, in shared memory (zeros past
/// `k_end`), then adds `q_d * k_d` for those dims to the thread's score in increasing `d`.
/// Every thread of the cube must call it (it synchronises the cube). Loops are unrolled at
/// compile time so that loads overlap; the additions stay in order.
#[cube]
#[allow(clippy::too_many_arguments)]
fn score_piece<F: Float>(
    key: &Tensor<F>,
    kv_s: &mut SharedMemory<f32>,
    q_s: &SharedMemory<f32>,
    key_row0: usize,
    kb: usize,
    k_end: usize,
    score: f32,
    #[comptime] dim: usize,
    #[comptime] d0: usize,
    #[comptime] width: usize,
) -> f32 {
    let kj = UNIT_POS_X as usize;
    let qi = UNIT_POS_Y as usize;
    let pitch = comptime!(PIECE + 1);
    let bk = comptime!(BLOCK_K);
    stage_block(
        key,
        kv_s,
        key_row0 + kb,
        k_end - kb,
        dim,
        d0,
        width,
        pitch,
        bk,
    );
    let mut s = score;
    #[unroll]
    for d in 0..width {
        s += q_s[qi * dim + d0 + d] * kv_s[kj * pitch + d];
    }
    s
}

/// Stages values `kb..kb + BLOCK_K`, columns `c0..c0 + width`, in shared memory, then
/// updates the thread's accumulators of those columns: `acc = acc * alpha + p_0 v_0 + ...`
/// over the keys that take part, in increasing key order. Every thread of the cube must
/// call it.
#[cube]
#[allow(clippy::too_many_arguments)]
fn value_piece<F: Float>(
    value: &Tensor<F>,
    kv_s: &mut SharedMemory<f32>,
    p_s: &SharedMemory<f32>,
    live_s: &SharedMemory<u32>,
    acc: &mut Array<f32>,
    value_row0: usize,
    kb: usize,
    k_end: usize,
    alpha: f32,
    any: bool,
    #[comptime] dim_v: usize,
    #[comptime] c0: usize,
    #[comptime] width: usize,
) {
    let kj = UNIT_POS_X as usize;
    let qi = UNIT_POS_Y as usize;
    let bk = comptime!(BLOCK_K);
    stage_block(
        value,
        kv_s,
        value_row0 + kb,
        k_end - kb,
        dim_v,
        c0,
        width,
        width,
        bk,
    );
    if any {
        #[unroll]
        for t in 0..comptime!(dim_v.div_ceil(BLOCK_K)) {
            let c = kj + t * bk;
            if c >= c0 && c < c0 + width {
                let mut a = acc[t] * alpha;
                #[unroll]
                for j in 0..bk {
                    if live_s[qi * bk + j] != 0 {
                        a += p_s[qi * bk + j] * kv_s[j * width + c - c0];
                    }
                }
                acc[t] = a;
            }
        }
    }
    sync_cube();
}

/// One cube per (group of this slab, chunk): the chunk state of each of the group's queries.
/// `stats[2 * s] = m`, `stats[2 * s + 1] = l`, `accs[s * dim_v + c] = acc_c` with
/// `s = (local_group * BLOCK_Q + query_in_block) * chunks + chunk`.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub fn attention_partials_kernel<F: Float>(
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
        terminate!(); // a whole spare cube of a 2-D grid: no thread of it syncs
    }
    let bq = comptime!(BLOCK_Q);
    let bk = comptime!(BLOCK_K);
    let units = comptime!(CUBE_UNITS);
    let acc_len = comptime!(dim_v.div_ceil(BLOCK_K));
    // Head dims are walked in pieces of PIECE through shared memory (one piece for heads up
    // to 128); the dot product still runs over d in increasing order, piece after piece.
    let k_width0 = comptime!(dim.min(PIECE));
    let k_width1 = comptime!(dim - dim.min(PIECE));
    let v_width0 = comptime!(dim_v.min(PIECE));
    let v_width1 = comptime!(dim_v - dim_v.min(PIECE));

    let kj = UNIT_POS_X as usize;
    let qi = UNIT_POS_Y as usize;
    let tid = qi * bk + kj;
    let local_group = CUBE_POS / ext.chunks;
    let chunk = CUBE_POS % ext.chunks;
    let group = ext.first_group + local_group;
    let bh = group / ext.q_blocks;
    let q0 = (group % ext.q_blocks) * bq;
    let row = q0 + qi;
    let row_ok = row < ext.seq_q;
    let k_start = chunk * comptime!(KEY_SPLIT);
    let k_end = chunk_end(&ext, k_start, q0 + bq, flags);

    let mut q_s = SharedMemory::<f32>::new(comptime!(BLOCK_Q * dim));
    let mut kv_s = SharedMemory::<f32>::new(comptime!(BLOCK_K * (PIECE + 1)));
    let mut score_s = SharedMemory::<f32>::new(comptime!(CUBE_UNITS));
    let mut p_s = SharedMemory::<f32>::new(comptime!(CUBE_UNITS));
    let mut live_s = SharedMemory::<u32>::new(comptime!(CUBE_UNITS));

    let q_base = (bh * ext.seq_q + q0) * dim;
    #[unroll]
    for r in 0..comptime!((BLOCK_Q * dim).div_ceil(CUBE_UNITS)) {
        let i = tid + r * units;
        if i < comptime!(BLOCK_Q * dim) {
            let mut x = 0.0f32;
            if q0 + i / dim < ext.seq_q {
                x = f32::cast_from(query[q_base + i]);
            }
            q_s[i] = x;
        }
    }

    let mut m = f32::min_value();
    let mut l = 0.0f32;
    let mut acc = Array::<f32>::new(acc_len);
    #[unroll]
    for t in 0..acc_len {
        acc[t] = 0.0;
    }

    let mut kb = k_start;
    while kb < k_end {
        // Scores of the block, one (query, key) pair per thread, keys through shared memory
        // in at most two pieces of the head dim (MAX_HEAD_DIM = 2 * PIECE).
        let key_pos = kb + kj;
        let key_row0 = bh * ext.seq_k;
        let mut s = score_piece(
            key, &mut kv_s, &q_s, key_row0, kb, k_end, 0.0f32, dim, 0usize, k_width0,
        );
        if comptime!(k_width1 > 0) {
            sync_cube();
            s = score_piece(
                key, &mut kv_s, &q_s, key_row0, kb, k_end, s, dim, k_width0, k_width1,
            );
        }
        let score = finish_score(
            s,
            row_ok && key_pos < k_end,
            mask,
            bias,
            &ext,
            bh,
            row,
            key_pos,
            scale,
            softcap,
            flags,
        );
        let live = score.live;
        s = score.value;
        score_s[tid] = s;
        let mut live_flag = 0u32;
        if live {
            live_flag = 1u32;
        }
        live_s[tid] = live_flag;
        sync_cube();

        // Block statistics (every thread of a query row forms the same ones) and weights.
        let mut any = false;
        let mut block_max = f32::min_value();
        #[unroll]
        for j in 0..bk {
            if live_s[qi * bk + j] != 0 {
                any = true;
                block_max = f32::max(block_max, score_s[qi * bk + j]);
            }
        }
        let m_new = f32::max(m, block_max);
        let mut p = 0.0f32;
        if live {
            p = f32::exp(s - m_new);
        }
        p_s[tid] = p;
        let mut alpha = 1.0f32;
        if any {
            alpha = f32::exp(m - m_new);
        }

        // Weighted values, piece by piece of the value dim.
        let value_row0 = bh * ext.seq_k;
        value_piece(
            value, &mut kv_s, &p_s, &live_s, &mut acc, value_row0, kb, k_end, alpha, any, dim_v,
            0usize, v_width0,
        );
        if comptime!(v_width1 > 0) {
            value_piece(
                value, &mut kv_s, &p_s, &live_s, &mut acc, value_row0, kb, k_end, alpha, any,
                dim_v, v_width0, v_width1,
            );
        }
        // After the value pieces' syncs every weight of the block is visible.
        if any {
            let mut row_sum = 0.0f32;
            #[unroll]
            for j in 0..bk {
                if live_s[qi * bk + j] != 0 {
                    row_sum += p_s[qi * bk + j];
                }
            }
            l = l * alpha + row_sum;
        }
        if any {
            m = m_new;
        }
        kb += bk;
    }

    if row_ok {
        let slot = (local_group * bq + qi) * ext.chunks + chunk;
        if kj == 0 {
            stats[2 * slot] = m;
            stats[2 * slot + 1] = l;
        }
        for t in 0..acc_len {
            let c = kj + t * bk;
            if c < dim_v {
                accs[slot * dim_v + c] = acc[t];
            }
        }
    }
}

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
/// query, exactly the operations of [`attention_partials_kernel`] in the same order (each
/// score a sequential dot product over `d`, [`finish_score`], then per block of
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

/// Output columns one thread of the combine kernel merges: up to four adjacent ones, so that
/// the row's index arithmetic and its chunk weights `exp(m - m')` are worked out once for
/// all of them (the same values for every column: the bits do not depend on it).
pub const fn combine_cols(dim_v: usize) -> usize {
    if dim_v.is_multiple_of(4) {
        4
    } else if dim_v.is_multiple_of(2) {
        2
    } else {
        1
    }
}

/// One thread per (query, [`combine_cols`] output columns) of the slab: merges the query's
/// chunk states in chunk order and writes `acc / l` (0 when no key took part).
#[cube(launch_unchecked, address_type = "dynamic")]
pub fn attention_combine_kernel<F: Float>(
    stats: &Array<f32>,
    accs: &Array<f32>,
    output: &mut Tensor<F>,
    ext: Extents,
    #[comptime] dim_v: usize,
    #[comptime] block_q: usize,
    #[define(F)] _dtype: StorageType,
) {
    let cols = comptime!(combine_cols(dim_v));
    let per_row = comptime!(dim_v / cols);
    let idx = CUBE_POS * comptime!(COMBINE_UNITS) + UNIT_POS as usize;
    if idx >= ext.groups * comptime!(block_q * per_row) {
        terminate!();
    }
    let c0 = (idx % per_row) * cols;
    let local_row = idx / per_row; // local_group * block_q + query_in_block
    let group = ext.first_group + local_row / block_q;
    let bh = group / ext.q_blocks;
    let row = (group % ext.q_blocks) * block_q + local_row % block_q;
    if row >= ext.seq_q {
        terminate!();
    }

    let mut have = false;
    let mut m = f32::min_value();
    let mut l = 0.0f32;
    let mut acc = Array::<f32>::new(cols);
    #[unroll]
    for j in 0..cols {
        acc[j] = 0.0;
    }
    for chunk in 0..ext.chunks {
        let slot = local_row * ext.chunks + chunk;
        let l_c = stats[2 * slot + 1];
        if l_c != 0.0 {
            let m_c = stats[2 * slot];
            let at = slot * dim_v + c0;
            if have {
                let m_new = f32::max(m, m_c);
                let a = f32::exp(m - m_new);
                let b = f32::exp(m_c - m_new);
                l = l * a + l_c * b;
                #[unroll]
                for j in 0..cols {
                    acc[j] = acc[j] * a + accs[at + j] * b;
                }
                m = m_new;
            } else {
                m = m_c;
                l = l_c;
                #[unroll]
                for j in 0..cols {
                    acc[j] = accs[at + j];
                }
                have = true;
            }
        }
    }
    let out_at = (bh * ext.seq_q + row) * dim_v + c0;
    #[unroll]
    for j in 0..cols {
        let mut out = 0.0f32;
        if have {
            out = acc[j] / l;
        }
        output[out_at + j] = F::cast_from(out);
    }
}
