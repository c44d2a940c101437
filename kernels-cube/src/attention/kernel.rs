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
pub(super) fn broadcast_offset<F: Float>(
    t: &Tensor<F>,
    b: usize,
    h: usize,
    row: usize,
    key: usize,
) -> usize {
    b * t.stride(0) + h * t.stride(1) + row * t.stride(2) + key * t.stride(3)
}

/// Copies rows `first_row .. first_row + block_rows` of a row-major tensor with rows of
/// `row_len`, columns `col0 .. col0 + width`, to `smem[j * pitch + c]` as f32, with zeros for
/// rows `j >= rows` (past the key range), then synchronises the cube. Unrolled at compile
/// time so that every thread has its loads in flight at once.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn stage_block<F: Float>(
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
pub(super) fn score_piece<F: Float>(
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
pub(super) fn value_piece<F: Float>(
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
