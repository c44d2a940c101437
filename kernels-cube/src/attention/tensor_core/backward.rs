//! The fused attention backward on `mma.sync`: two kernels that recompute the weights block
//! by block from `q`, `k` and the row statistics, so that nothing of size
//! `seq_q x seq_k` reaches memory. The order they follow is in `attention::backward`.
//!
//! - [`attention_mma_backward_dq_kernel`]: a warp per 16 query rows (four per cube) walks
//!   the keys twice: first for the row's log-sum-exp, then for `dq`; it also writes the
//!   row's log-sum-exp and `delta = rowsum(do * o)` for the second kernel.
//! - [`attention_mma_backward_dkv_kernel`]: a warp per 16 key rows (four per cube) walks
//!   the query blocks that see them, for `dk` and `dv`.
//!
//! Each gradient row is one warp's: it is accumulated in registers by one `mma` chain per
//! 8 columns over the other side's rows in increasing order, and no two cubes write the
//! same element, so there are no atomics and no split whose shape follows the problem.

use super::online::{extremum_tree, weight_exp};
use super::stage::*;
use super::*;

/// Warps per cube of both kernels; a cube covers `TILE_Q * BACKWARD_WARPS` rows, which is
/// also the block of the other side staged at a time.
pub const BACKWARD_WARPS: usize = 4;
/// Rows of a cube, and rows of a staged block.
pub const BACKWARD_BLOCK: usize = TILE_Q * BACKWARD_WARPS;
// A staged block is one `MMA_BLOCK_K` stage of the forward's layout.
const _: () = assert!(BACKWARD_BLOCK == MMA_BLOCK_K);

/// Extents of a backward launch.
#[derive(CubeType, CubeLaunch, Clone, Copy)]
pub struct BackwardExtents {
    /// Queries per (batch, head).
    pub seq_q: usize,
    /// Keys per (batch, head).
    pub seq_k: usize,
    /// Cubes per (batch, head): blocks of [`BACKWARD_BLOCK`] queries (`dq`) or keys (`dk`, `dv`).
    pub blocks: usize,
    /// Cubes of the launch: `batch * heads * blocks`.
    pub cubes: usize,
}

/// Whether query `row` sees key `key`: both in range and, under `causal`, the key not past
/// the row's bottom-right-aligned cut.
#[cube]
fn sees(ext: &BackwardExtents, row: usize, key: usize, causal: u32) -> bool {
    let mut ok = row < ext.seq_q && key < ext.seq_k;
    if causal != 0 {
        ok = ok && key + ext.seq_q <= row + ext.seq_k;
    }
    ok
}

/// Keys `0 .. end` that some query before `rows_end` sees.
#[cube]
fn keys_seen(ext: &BackwardExtents, rows_end: usize, causal: u32) -> usize {
    let mut end = ext.seq_k;
    if causal != 0 {
        let rows = select(rows_end < ext.seq_q, rows_end, ext.seq_q);
        let limit = select(
            rows + ext.seq_k > ext.seq_q,
            rows + ext.seq_k - ext.seq_q,
            0,
        );
        end = select(limit < end, limit, end);
    }
    end
}

/// The first query that sees key `key` (every query without `causal`).
#[cube]
fn first_query(ext: &BackwardExtents, key: usize, causal: u32) -> usize {
    let mut first = 0;
    if causal != 0 && key + ext.seq_q > ext.seq_k {
        first = key + ext.seq_q - ext.seq_k;
    }
    first
}

/// The A fragments of 16 rows `first ..` of a row-major `[.., dim]` tensor whose rows
/// `row0 .. row0 + rows` belong to this (batch, head); zeros past `rows`.
#[cube]
fn row_fragments<F: Float>(
    tensor: &Tensor<F>,
    row0: usize,
    first: usize,
    rows: usize,
    #[comptime] dim: usize,
) -> Array<Pair<F>> {
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    let lane = UNIT_POS_X;
    let mut frag = Array::<Pair<F>>::new(comptime!(dim / 16 * 4));
    #[unroll]
    for ks in 0..comptime!(dim / 16) {
        #[unroll]
        for v in 0..4usize {
            let mut pair = Pair::<F>::empty();
            #[unroll]
            for e in 0..2usize {
                let (r, c) = def.position_of_nth(lane, (v * 2 + e) as u32, MatrixIdent::A);
                let row = first + r as usize;
                // A clamped read, then zero: no load waits behind a branch.
                let x =
                    tensor[(row0 + select(row < rows, row, rows - 1)) * dim + ks * 16 + c as usize];
                pair[e] = select(row < rows, x, F::new(0.0));
            }
            frag[ks * 4 + v] = pair;
        }
    }
    frag
}

/// `c[16 x 64] = a[16 x dim] · stage[64 rows at b_base, x dim]ᵀ`: per 8-column tile one
/// `mma` chain over the dims in increasing order, from zero. `a` is `a_regs` (A fragments)
/// or, with `a_staged`, 16 staged rows at `a_base`, brought in by `ldmatrix` 16 dims at a
/// time.
#[cube]
#[allow(clippy::too_many_arguments)]
fn times_staged_rows<F: Float>(
    a_regs: &Array<Pair<F>>,
    stage: &SharedMemory<F>,
    a_base: usize,
    b_base: usize,
    #[comptime] a_pitch: usize,
    #[comptime] b_pitch: usize,
    #[comptime] dim: usize,
    #[comptime] a_staged: bool,
) -> Array<Pair<f32>> {
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    let lane = UNIT_POS_X as usize;
    let matrix = lane / 8;
    let matrix_row = lane % 8;
    let mut c = Array::<Pair<f32>>::new(comptime!(SCORE_TILES * 2));
    #[unroll]
    for i in 0..comptime!(SCORE_TILES * 2) {
        c[i] = Pair::<f32>::new(0.0);
    }
    // `ldmatrix.x4` of B: matrix `i` is rows `16 tp + 8 (i / 2) ..`, dims `16 ks + 8 (i % 2)`.
    let lane_b = b_base + ((matrix / 2) * 8 + matrix_row) * b_pitch + (matrix % 2) * 8;
    // Of A: matrix `i` is rows `8 (i % 2) ..`, dims `16 ks + 8 (i / 2) ..`.
    let lane_a = a_base + ((matrix % 2) * 8 + matrix_row) * a_pitch + (matrix / 2) * 8;
    #[unroll]
    for ks in 0..comptime!(dim / 16) {
        let mut a = Array::<Pair<F>>::new(4usize);
        if comptime!(a_staged) {
            let at = lane_a + comptime!(ks * 16);
            let regs = def.load_matrix::<F, Const<2>>(
                &stage.slice(at, at + 8),
                MatrixIdent::A,
                4usize,
                false,
            );
            #[unroll]
            for v in 0..4usize {
                a[v] = regs[v];
            }
        } else {
            #[unroll]
            for v in 0..4usize {
                a[v] = a_regs[ks * 4 + v];
            }
        }
        #[unroll]
        for tp in 0..comptime!(SCORE_TILES / 2) {
            let at = lane_b + comptime!(tp * 16 * b_pitch + ks * 16);
            let regs = def.load_matrix::<F, Const<2>>(
                &stage.slice(at, at + 8),
                MatrixIdent::B,
                4usize,
                false,
            );
            #[unroll]
            for half in 0..2usize {
                let nt = tp * 2 + half;
                let mut bf = Array::<Pair<F>>::new(2usize);
                bf[0usize] = regs[half * 2];
                bf[1usize] = regs[half * 2 + 1];
                let mut cc = Array::<Pair<f32>>::new(2usize);
                cc[0usize] = c[nt * 2];
                cc[1usize] = c[nt * 2 + 1];
                def.execute_inplace(&a, &bf, &mut cc);
                c[nt * 2] = cc[0usize];
                c[nt * 2 + 1] = cc[1usize];
            }
        }
    }
    c
}

/// The 16 x 64 tile `x` (element `4 nt + 2 h + e`: row `lane / 4 + 8 h`, column
/// `8 nt + 2 (lane % 4) + e`, the accumulator layout) rounded to `F` as the A fragments of
/// four 16-column steps.
#[cube]
fn to_a_fragments<F: Float>(x: &Array<f32>) -> Array<Pair<F>> {
    let mut a = Array::<Pair<F>>::new(comptime!(PV_STEPS * 4));
    #[unroll]
    for kt in 0..PV_STEPS {
        #[unroll]
        for v in 0..4usize {
            let mut pair = Pair::<F>::empty();
            #[unroll]
            for e in 0..2usize {
                pair[e] = F::cast_from(x[(kt * 2 + v / 2) * 4 + (v % 2) * 2 + e]);
            }
            a[kt * 4 + v] = pair;
        }
    }
    a
}

/// `acc[16 x 8 n_tiles] += a[16 x 64] · stage[64 rows at base, x 8 n_tiles]`, continuing
/// each 8-column tile's one `mma` chain through the block's four 16-row steps in increasing
/// order. B comes transposed out of `ldmatrix`: matrix `i` is rows `16 kt + 8 (i % 2) ..`,
/// columns `8 (ct + i / 2) ..`.
#[cube]
fn accumulate_staged<F: Float>(
    a: &Array<Pair<F>>,
    stage: &SharedMemory<F>,
    base: usize,
    acc: &mut Array<Pair<f32>>,
    #[comptime] pitch: usize,
    #[comptime] n_tiles: usize,
) {
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    let lane = UNIT_POS_X as usize;
    let matrix = lane / 8;
    let matrix_row = lane % 8;
    let lane_b = base + ((matrix % 2) * 8 + matrix_row) * pitch + (matrix / 2) * 8;
    #[unroll]
    for pair_of_tiles in 0..comptime!(n_tiles / 2) {
        let ct = pair_of_tiles * 2;
        #[unroll]
        for kt in 0..PV_STEPS {
            let at = lane_b + comptime!(kt * 16 * pitch + ct * 8);
            let regs = def.load_matrix::<F, Const<2>>(
                &stage.slice(at, at + 8),
                MatrixIdent::B,
                4usize,
                true,
            );
            let mut af = Array::<Pair<F>>::new(4usize);
            #[unroll]
            for v in 0..4usize {
                af[v] = a[kt * 4 + v];
            }
            #[unroll]
            for half in 0..2usize {
                let tile = ct + half;
                let mut bf = Array::<Pair<F>>::new(2usize);
                bf[0usize] = regs[half * 2];
                bf[1usize] = regs[half * 2 + 1];
                let mut cc = Array::<Pair<f32>>::new(2usize);
                cc[0usize] = acc[tile * 2];
                cc[1usize] = acc[tile * 2 + 1];
                def.execute_inplace(&af, &bf, &mut cc);
                acc[tile * 2] = cc[0usize];
                acc[tile * 2 + 1] = cc[1usize];
            }
        }
    }
}

/// Stages rows `first .. first + 64` of one or two row-major `[.., dim]` tensors whose
/// (batch, head) rows end at `rows` (rows past it copy the last), the first at `base` with
/// pitch `k_pitch(dim)`, the second right after it with pitch `v_pitch(dim)`. Every thread
/// takes part; with `copy_async` the caller commits the copies to a barrier and waits, and
/// in either case synchronises the cube before reading.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_block<F: Float>(
    first_tensor: &Tensor<F>,
    second_tensor: &Tensor<F>,
    stage: &mut SharedMemory<F>,
    base: usize,
    first: usize,
    rows: usize,
    #[comptime] dim: usize,
    #[comptime] both: bool,
    #[comptime] copy_async: bool,
) {
    let block = comptime!(BACKWARD_BLOCK);
    let units = comptime!(PLANE * BACKWARD_WARPS);
    let second = base + comptime!(BACKWARD_BLOCK * k_pitch(dim));
    if comptime!(copy_async) {
        stage_rows_async(
            first_tensor,
            stage,
            base,
            first,
            rows,
            dim,
            comptime!(k_pitch(dim)),
            block,
            units,
        );
        if comptime!(both) {
            stage_rows_async(
                second_tensor,
                stage,
                second,
                first,
                rows,
                dim,
                comptime!(v_pitch(dim)),
                block,
                units,
            );
        }
    } else {
        stage_rows(
            first_tensor,
            stage,
            base,
            first,
            rows,
            dim,
            dim,
            comptime!(k_pitch(dim)),
            block,
            units,
        );
        if comptime!(both) {
            stage_rows(
                second_tensor,
                stage,
                second,
                first,
                rows,
                dim,
                dim,
                comptime!(v_pitch(dim)),
                block,
                units,
            );
        }
    }
}

/// `dq`, and each query row's log-sum-exp and `delta`, for one cube of 64 queries of one
/// (batch, head). Pass 1 walks the keys the cube sees in blocks of 64 for the row maximum
/// and sum (online, as the forward's chunk state); pass 2 walks them again:
/// `p = exp(scale s - lse)`, `dp = do vᵀ`, `ds = p (dp - delta)` rounded to `F`,
/// `dq += ds k`, and finally `dq *= scale`.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub fn attention_mma_backward_dq_kernel<F: Float>(
    query: &Tensor<F>,
    key: &Tensor<F>,
    value: &Tensor<F>,
    output: &Tensor<F>,
    grad: &Tensor<F>,
    d_query: &mut Tensor<F>,
    lse: &mut Array<f32>,
    delta: &mut Array<f32>,
    ext: BackwardExtents,
    scale: f32,
    causal: u32,
    #[comptime] dim: usize,
    #[comptime] copy_async: bool,
    #[define(F)] _dtype: StorageType,
) {
    if CUBE_POS >= ext.cubes {
        terminate!(); // a spare cube of a 2-D grid: no thread of it syncs
    }
    let n_tiles = comptime!(dim / 8);
    let lane = UNIT_POS_X as usize;
    let warp = UNIT_POS_Y as usize;
    let g = lane / 4;
    let t = lane % 4;
    let bh = CUBE_POS / ext.blocks;
    let q0 = (CUBE_POS % ext.blocks) * comptime!(BACKWARD_BLOCK);
    let qw = q0 + warp * comptime!(TILE_Q);
    let row0 = bh * ext.seq_q;
    let key0 = bh * ext.seq_k;
    let k_end = keys_seen(&ext, q0 + comptime!(BACKWARD_BLOCK), causal);
    // Blocks past the warp's last seen key are no-ops for its rows: it skips them.
    let warp_end = keys_seen(&ext, qw + comptime!(TILE_Q), causal);
    let active = qw < ext.seq_q;

    let q_frag = row_fragments(query, row0, qw, ext.seq_q, dim);
    let do_frag = row_fragments(grad, row0, qw, ext.seq_q, dim);
    // `delta` of the lane's two rows: its products in fragment order, then `xor 1`, `xor 2`.
    let mut dlt = Array::<f32>::new(2usize);
    {
        let o_frag = row_fragments(output, row0, qw, ext.seq_q, dim);
        #[unroll]
        for h in 0..2usize {
            let mut sum = 0.0f32;
            #[unroll]
            for ks in 0..comptime!(dim / 16) {
                #[unroll]
                for half in 0..2usize {
                    let d = do_frag[ks * 4 + half * 2 + h];
                    let o = o_frag[ks * 4 + half * 2 + h];
                    #[unroll]
                    for e in 0..2usize {
                        sum += f32::cast_from(d[e]) * f32::cast_from(o[e]);
                    }
                }
            }
            sum += plane_shuffle_xor(sum, 1u32);
            sum += plane_shuffle_xor(sum, 2u32);
            dlt[h] = sum;
        }
    }

    let mut stage = SharedMemory::<F>::new_aligned(comptime!(stage_elems(dim, dim)), 16usize);
    let bar = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let v_base = comptime!(BACKWARD_BLOCK * k_pitch(dim));

    // Pass 1: the row maximum and sum, blocks in increasing order.
    let mut m = Array::<f32>::new(2usize);
    let mut l = Array::<f32>::new(2usize);
    #[unroll]
    for h in 0..2usize {
        m[h] = f32::min_value();
        l[h] = 0.0;
    }
    let mut kb = 0usize;
    while kb < k_end {
        sync_cube(); // the previous block has been read
        stage_block(
            key,
            key,
            &mut stage,
            0usize,
            key0 + kb,
            ext.seq_k - kb,
            dim,
            false,
            copy_async,
        );
        if comptime!(copy_async) {
            bar.commit_copy_async();
            bar.arrive_and_wait();
        }
        sync_cube();
        if active && kb < warp_end {
            let s = times_staged_rows(
                &q_frag,
                &stage,
                0usize,
                0usize,
                comptime!(k_pitch(dim)),
                comptime!(k_pitch(dim)),
                dim,
                false,
            );
            #[unroll]
            for h in 0..2usize {
                let row = qw + g + h * 8;
                let mut x = Array::<f32>::new(comptime!(SCORE_TILES * 2));
                let mut live = Array::<u32>::new(comptime!(SCORE_TILES * 2));
                #[unroll]
                for nt in 0..SCORE_TILES {
                    #[unroll]
                    for e in 0..2usize {
                        let pair = s[nt * 2 + h];
                        let ok = sees(&ext, row, kb + nt * 8 + t * 2 + e, causal);
                        live[nt * 2 + e] = select(ok, 1u32, 0u32);
                        x[nt * 2 + e] = select(ok, pair[e] * scale, f32::min_value());
                    }
                }
                let mut top = Array::<f32>::new(comptime!(SCORE_TILES * 2));
                #[unroll]
                for i in 0..comptime!(SCORE_TILES * 2) {
                    top[i] = x[i];
                }
                extremum_tree(&mut top, comptime!(SCORE_TILES * 2), true);
                let mut block_max = top[0usize];
                block_max = f32::max(block_max, plane_shuffle_xor(block_max, 1u32));
                block_max = f32::max(block_max, plane_shuffle_xor(block_max, 2u32));
                let m_new = f32::max(m[h], block_max);
                let mut sum = 0.0f32;
                #[unroll]
                for i in 0..comptime!(SCORE_TILES * 2) {
                    sum += select(live[i] != 0, f32::exp(x[i] - m_new), 0.0f32);
                }
                sum += plane_shuffle_xor(sum, 1u32);
                sum += plane_shuffle_xor(sum, 2u32);
                l[h] = l[h] * f32::exp(m[h] - m_new) + sum;
                m[h] = m_new;
            }
        }
        kb += comptime!(BACKWARD_BLOCK);
    }
    // A row that sees no key has weights 0, as in the forward: its log-sum-exp is the
    // largest float, which sends every `exp(s - lse)` to 0.
    let mut row_lse = Array::<f32>::new(2usize);
    #[unroll]
    for h in 0..2usize {
        row_lse[h] = select(l[h] > 0.0, m[h] + f32::ln(l[h]), f32::max_value());
    }

    // Pass 2: `dq`, one `mma` chain per 8 columns over every key in increasing order.
    let mut acc = Array::<Pair<f32>>::new(comptime!(n_tiles * 2));
    #[unroll]
    for i in 0..comptime!(n_tiles * 2) {
        acc[i] = Pair::<f32>::new(0.0);
    }
    kb = 0;
    while kb < k_end {
        sync_cube();
        stage_block(
            key,
            value,
            &mut stage,
            0usize,
            key0 + kb,
            ext.seq_k - kb,
            dim,
            true,
            copy_async,
        );
        if comptime!(copy_async) {
            bar.commit_copy_async();
            bar.arrive_and_wait();
        }
        sync_cube();
        if active && kb < warp_end {
            let s = times_staged_rows(
                &q_frag,
                &stage,
                0usize,
                0usize,
                comptime!(k_pitch(dim)),
                comptime!(k_pitch(dim)),
                dim,
                false,
            );
            let dp = times_staged_rows(
                &do_frag,
                &stage,
                0usize,
                v_base,
                comptime!(k_pitch(dim)),
                comptime!(v_pitch(dim)),
                dim,
                false,
            );
            let mut ds = Array::<f32>::new(comptime!(SCORE_TILES * 4));
            #[unroll]
            for nt in 0..SCORE_TILES {
                #[unroll]
                for h in 0..2usize {
                    let sp = s[nt * 2 + h];
                    let dpp = dp[nt * 2 + h];
                    #[unroll]
                    for e in 0..2usize {
                        let ok = sees(&ext, qw + g + h * 8, kb + nt * 8 + t * 2 + e, causal);
                        let p = weight_exp(sp[e] * scale - row_lse[h]);
                        ds[nt * 4 + h * 2 + e] = select(ok, p * (dpp[e] - dlt[h]), 0.0f32);
                    }
                }
            }
            let a = to_a_fragments::<F>(&ds);
            accumulate_staged(
                &a,
                &stage,
                0usize,
                &mut acc,
                comptime!(k_pitch(dim)),
                n_tiles,
            );
        }
        kb += comptime!(BACKWARD_BLOCK);
    }

    #[unroll]
    for h in 0..2usize {
        let row = qw + g + h * 8;
        if row < ext.seq_q {
            if t == 0 {
                lse[row0 + row] = row_lse[h];
                delta[row0 + row] = dlt[h];
            }
            #[unroll]
            for ct in 0..n_tiles {
                let pair = acc[ct * 2 + h];
                #[unroll]
                for e in 0..2usize {
                    d_query[(row0 + row) * dim + ct * 8 + t * 2 + e] =
                        F::cast_from(pair[e] * scale);
                }
            }
        }
    }
}

/// `dk` and `dv` for one cube of 64 keys of one (batch, head): the cube stages its keys and
/// values once, then walks the blocks of 64 queries that see them in increasing order:
/// `pᵀ = exp(scale k qᵀ - lse)` (rounded to `F`), `dv += pᵀ do`, `dpᵀ = v doᵀ`,
/// `dsᵀ = pᵀ (dpᵀ - delta)` (rounded to `F`), `dk += dsᵀ q`; finally `dk *= scale`.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub fn attention_mma_backward_dkv_kernel<F: Float>(
    query: &Tensor<F>,
    key: &Tensor<F>,
    value: &Tensor<F>,
    grad: &Tensor<F>,
    lse: &Array<f32>,
    delta: &Array<f32>,
    d_key: &mut Tensor<F>,
    d_value: &mut Tensor<F>,
    ext: BackwardExtents,
    scale: f32,
    causal: u32,
    #[comptime] dim: usize,
    #[comptime] copy_async: bool,
    #[define(F)] _dtype: StorageType,
) {
    if CUBE_POS >= ext.cubes {
        terminate!();
    }
    let block = comptime!(BACKWARD_BLOCK);
    let n_tiles = comptime!(dim / 8);
    let lane = UNIT_POS_X as usize;
    let warp = UNIT_POS_Y as usize;
    let tid = warp * comptime!(PLANE) + lane;
    let g = lane / 4;
    let t = lane % 4;
    let bh = CUBE_POS / ext.blocks;
    let k0 = (CUBE_POS % ext.blocks) * block;
    let kw = k0 + warp * comptime!(TILE_Q);
    let row0 = bh * ext.seq_q;
    let key0 = bh * ext.seq_k;
    let elems = comptime!(stage_elems(dim, dim));
    let kp = comptime!(k_pitch(dim));
    let vp = comptime!(v_pitch(dim));
    let q_base = elems;
    let do_base = elems + comptime!(BACKWARD_BLOCK * k_pitch(dim));

    // Keys and values of the cube at `0`, the current block of queries and their gradients
    // at `elems`, the block's log-sum-exps and deltas in `stats`.
    let mut stage = SharedMemory::<F>::new_aligned(comptime!(2 * elems), 16usize);
    let mut stats = SharedMemory::<f32>::new(comptime!(2 * BACKWARD_BLOCK));
    let bar = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let none = Array::<Pair<F>>::new(1usize);
    let active = kw < ext.seq_k;
    stage_block(
        key,
        value,
        &mut stage,
        0usize,
        key0 + k0,
        ext.seq_k - k0,
        dim,
        true,
        copy_async,
    );
    if comptime!(copy_async) {
        bar.commit_copy_async();
        bar.arrive_and_wait();
    }

    let mut dk = Array::<Pair<f32>>::new(comptime!(n_tiles * 2));
    let mut dv = Array::<Pair<f32>>::new(comptime!(n_tiles * 2));
    #[unroll]
    for i in 0..comptime!(n_tiles * 2) {
        dk[i] = Pair::<f32>::new(0.0);
        dv[i] = Pair::<f32>::new(0.0);
    }
    // Blocks before the one holding the first query that sees the cube's first key are
    // no-ops for every key of the cube; a block holding no query that sees the warp's
    // first key is a no-op for the warp (its weights are all 0), which skips it.
    let mut qb = first_query(&ext, k0, causal) / block * block;
    let warp_first = first_query(&ext, kw, causal);
    while qb < ext.seq_q {
        sync_cube(); // the previous block has been read
        if tid < block {
            let row = qb + tid;
            let inside = row < ext.seq_q;
            let at = row0 + select(inside, row, ext.seq_q - 1);
            stats[tid] = select(inside, lse[at], f32::max_value());
            stats[block + tid] = select(inside, delta[at], 0.0f32);
        }
        stage_block(
            query,
            grad,
            &mut stage,
            q_base,
            row0 + qb,
            ext.seq_q - qb,
            dim,
            true,
            copy_async,
        );
        if comptime!(copy_async) {
            bar.commit_copy_async();
            bar.arrive_and_wait();
        }
        sync_cube();
        if active && warp_first < qb + block {
            let k_row = warp * comptime!(TILE_Q * k_pitch(dim));
            let s = times_staged_rows(&none, &stage, k_row, q_base, kp, kp, dim, true);
            let mut p = Array::<f32>::new(comptime!(SCORE_TILES * 4));
            #[unroll]
            for nt in 0..SCORE_TILES {
                #[unroll]
                for h in 0..2usize {
                    let sp = s[nt * 2 + h];
                    #[unroll]
                    for e in 0..2usize {
                        let col = nt * 8 + t * 2 + e;
                        let ok = sees(&ext, qb + col, kw + g + h * 8, causal);
                        let w = weight_exp(sp[e] * scale - stats[col]);
                        p[nt * 4 + h * 2 + e] = select(ok, w, 0.0f32);
                    }
                }
            }
            let pa = to_a_fragments::<F>(&p);
            accumulate_staged(&pa, &stage, do_base, &mut dv, vp, n_tiles);
            let v_row =
                comptime!(BACKWARD_BLOCK * k_pitch(dim)) + warp * comptime!(TILE_Q * v_pitch(dim));
            let dp = times_staged_rows(&none, &stage, v_row, do_base, vp, vp, dim, true);
            let mut ds = Array::<f32>::new(comptime!(SCORE_TILES * 4));
            #[unroll]
            for nt in 0..SCORE_TILES {
                #[unroll]
                for h in 0..2usize {
                    let dpp = dp[nt * 2 + h];
                    #[unroll]
                    for e in 0..2usize {
                        let col = nt * 8 + t * 2 + e;
                        let i = nt * 4 + h * 2 + e;
                        // `p` is 0 wherever the key is not seen, so is `ds`.
                        ds[i] = p[i] * (dpp[e] - stats[block + col]);
                    }
                }
            }
            let dsa = to_a_fragments::<F>(&ds);
            accumulate_staged(&dsa, &stage, q_base, &mut dk, kp, n_tiles);
        }
        qb += block;
    }

    #[unroll]
    for h in 0..2usize {
        let row = kw + g + h * 8;
        if row < ext.seq_k {
            #[unroll]
            for ct in 0..n_tiles {
                let kp = dk[ct * 2 + h];
                let vp = dv[ct * 2 + h];
                #[unroll]
                for e in 0..2usize {
                    let at = (key0 + row) * dim + ct * 8 + t * 2 + e;
                    d_key[at] = F::cast_from(kp[e] * scale);
                    d_value[at] = F::cast_from(vp[e]);
                }
            }
        }
    }
}
