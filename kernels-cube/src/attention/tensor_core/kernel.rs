//! The tensor-core partials kernel: a warp per 16 query rows walks its chunk's blocks of
//! keys in order through [`super::online`].

use super::online::*;
use super::stage::*;
use super::*;

/// One cube of `warps` warps per (group of `16 * warps` queries of this slab, chunk); warp
/// `w` computes the chunk state of queries `16 w .. 16 w + 16` of the group and writes it
/// to the slots the combine kernel reads (`block_q = 16 * warps`).
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub fn attention_mma_partials_kernel<F: Float>(
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
    #[comptime] warps: usize,
    #[comptime] copy_async: bool,
    #[comptime] double: bool,
    #[define(F)] _dtype: StorageType,
) {
    if CUBE_POS >= ext.groups * ext.chunks {
        terminate!(); // a whole spare cube of a 2-D grid: no thread of it syncs
    }
    let block_q = comptime!(TILE_Q * warps);
    let staged = comptime!(MMA_BLOCK_K);
    let k_steps = comptime!(dim.div_ceil(16));
    let n_tiles = comptime!(dim_v.div_ceil(8));
    let k_pitch = comptime!(k_pitch(dim));
    let v_pitch = comptime!(v_pitch(dim_v));
    let stage_elems = comptime!(stage_elems(dim, dim_v));
    let buffers = comptime!(if double { 2usize } else { 1usize });

    let lane = UNIT_POS_X;
    let warp = UNIT_POS_Y as usize;
    let quad_lane = (lane % 4) as usize;
    let local_group = CUBE_POS / ext.chunks;
    let chunk = CUBE_POS % ext.chunks;
    let group = ext.first_group + local_group;
    let bh = group / ext.q_blocks;
    let q0 = (group % ext.q_blocks) * block_q;
    let qw = q0 + warp * comptime!(TILE_Q);
    let k_start = chunk * comptime!(KEY_SPLIT);
    let k_end = chunk_end(&ext, k_start, q0 + block_q, flags);
    // Where this warp's rows stop seeing keys of the chunk: a block past it is a no-op for
    // every row of the warp, which skips it while the other warps work on it.
    let warp_end = chunk_end(&ext, k_start, qw + comptime!(TILE_Q), flags);
    // Whether the lane's two rows are queries (a decode step has one, in row 0).
    let mut row_real = Array::<u32>::new(2usize);
    #[unroll]
    for h in 0..2usize {
        row_real[h] = select(qw + (lane / 4) as usize + h * 8 < ext.seq_q, 1u32, 0u32);
    }
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);

    // The warp's 16 query rows as A fragments, one per 16 dims (zeros past the head dim and
    // past the last query).
    let mut q_frag = Array::<Pair<F>>::new(comptime!(k_steps * 4));
    #[unroll]
    for ks in 0..k_steps {
        #[unroll]
        for v in 0..4usize {
            let mut pair = Pair::<F>::empty();
            #[unroll]
            for e in 0..2usize {
                let (r, c) = def.position_of_nth(lane, (v * 2 + e) as u32, MatrixIdent::A);
                let row = qw + r as usize;
                let col = ks * 16 + c as usize;
                // Clamped reads, then zeros: no load waits behind a branch.
                let x = query[(bh * ext.seq_q + select(row < ext.seq_q, row, ext.seq_q - 1)) * dim
                    + select(col < dim, col, comptime!(dim - 1))];
                pair[e] = select(row < ext.seq_q && col < dim, x, F::new(0.0));
            }
            q_frag[ks * 4 + v] = pair;
        }
    }

    // Chunk state of the lane's two rows (`h = 0`: tile row `lane / 4`, `h = 1`: 8 below),
    // and the lane's accumulators: tile `ct` holds columns `8 ct ..`, pair `h` row `h`.
    let mut m = Array::<f32>::new(2usize);
    let mut l = Array::<f32>::new(2usize);
    #[unroll]
    for h in 0..2usize {
        m[h] = f32::min_value();
        l[h] = 0.0;
    }
    let mut acc = Array::<Pair<f32>>::new(comptime!(n_tiles * 2));
    #[unroll]
    for i in 0..comptime!(n_tiles * 2) {
        acc[i] = Pair::<f32>::new(0.0);
    }

    let mut stage = SharedMemory::<F>::new_aligned(comptime!(buffers * stage_elems), 16usize);
    zero_key_padding(&mut stage, dim, dim_v, warps, buffers);
    // One barrier per buffer: the copies into a buffer complete on its barrier.
    let bar0 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let bar1 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let row0 = bh * ext.seq_k;
    let mut first = k_start;
    if comptime!(double) {
        sync_cube(); // the zeroed padding is visible to every warp
        if first < k_end {
            stage_async(
                key,
                value,
                &mut stage,
                0usize,
                row0 + first,
                k_end - first,
                dim,
                dim_v,
                warps,
            );
            bar0.commit_copy_async();
        }
    }
    let mut round = 0usize;
    while first < k_end {
        let next = first + staged;
        let buf = round % buffers;
        if comptime!(double) {
            // The next stage's copies go out before this one is computed on; the other
            // buffer was last read in the previous round, which ended with a sync.
            if next < k_end {
                let base = (1 - buf) * stage_elems;
                stage_async(
                    key,
                    value,
                    &mut stage,
                    base,
                    row0 + next,
                    k_end - next,
                    dim,
                    dim_v,
                    warps,
                );
                if buf == 0 {
                    bar1.commit_copy_async();
                } else {
                    bar0.commit_copy_async();
                }
            }
            if buf == 0 {
                bar0.arrive_and_wait();
            } else {
                bar1.arrive_and_wait();
            }
        } else if comptime!(copy_async) {
            sync_cube(); // the previous stage has been read, the padding zeroed
            stage_async(
                key,
                value,
                &mut stage,
                0usize,
                row0 + first,
                k_end - first,
                dim,
                dim_v,
                warps,
            );
            bar0.commit_copy_async();
            bar0.arrive_and_wait();
        } else {
            sync_cube(); // the previous stage has been read
            stage_plain(
                key,
                value,
                &mut stage,
                row0 + first,
                k_end - first,
                dim,
                dim_v,
                warps,
            );
            sync_cube();
        }
        let k_base = buf * stage_elems;
        let v_base = k_base + comptime!(MMA_BLOCK_K * k_pitch);
        // The 8x8 matrix whose row this lane addresses in an `ldmatrix.x4`, and that row.
        let matrix = (lane / 8) as usize;
        let matrix_row = (lane % 8) as usize;
        let kb = first; // absolute position of the block's first key
        if kb < warp_end && qw < ext.seq_q {
            // Scores: eight 8-key tiles, each one mma chain over the head dim in increasing
            // order. One `ldmatrix.x4` per 16 dims and pair of tiles brings both B fragments (B
            // is dims x keys, staged as keys x dims): matrix `i` is keys `16 tp + 8 (i / 2) ..`,
            // dims `16 ks + 8 (i % 2) ..`. Tile `nt`'s accumulator is `c[2 nt]` (row `lane / 4`)
            // and `c[2 nt + 1]` (8 below).
            let mut c = Array::<Pair<f32>>::new(comptime!(SCORE_TILES * 2));
            #[unroll]
            for i in 0..comptime!(SCORE_TILES * 2) {
                c[i] = Pair::<f32>::new(0.0);
            }
            // The lane's row of its matrix once; every `ldmatrix` is then a constant away.
            let lane_k = k_base + ((matrix / 2) * 8 + matrix_row) * k_pitch + (matrix % 2) * 8;
            #[unroll]
            for ks in 0..k_steps {
                let mut a = Array::<Pair<F>>::new(4usize);
                #[unroll]
                for v in 0..4usize {
                    a[v] = q_frag[ks * 4 + v];
                }
                #[unroll]
                for tp in 0..comptime!(SCORE_TILES / 2) {
                    let at = lane_k + comptime!(tp * 16 * k_pitch + ks * 16);
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

            // A block inside the key range and in front of every row's causal cut, with no
            // mask, bias or softcap, and no score at `-inf` (an overflow): every query row
            // takes every key, and `finish_score` reduces to `* scale`. Such a block runs
            // `block_complete`, without the per-key liveness the general path carries; both
            // perform the same operations on every key that takes part, so a row gets the
            // same bits whichever path its warp takes (a decode step takes the complete one
            // where the same row in a prefill shares its block with rows the causal cut
            // reaches).
            let plain = (flags & comptime!(FLAG_MASK | FLAG_BIAS | FLAG_SOFTCAP)) == 0;
            let mut visible = kb + comptime!(MMA_BLOCK_K) <= k_end;
            if (flags & FLAG_CAUSAL) != 0 {
                visible = visible && kb + comptime!(MMA_BLOCK_K - 1) + ext.seq_q <= qw + ext.seq_k;
            }
            let mut s = Array::<f32>::new(comptime!(SCORE_TILES * 4));
            let mut fast = false;
            if plain && visible {
                #[unroll]
                for i in 0..comptime!(SCORE_TILES * 4) {
                    let pair = c[i / 2];
                    s[i] = pair[i % 2] * scale;
                }
                // The smallest score of the lane (NaN never wins a comparison): `-inf`
                // anywhere sends the warp to the general path, which leaves that key out.
                let mut lo = Array::<f32>::new(comptime!(SCORE_TILES * 2));
                #[unroll]
                for i in 0..comptime!(SCORE_TILES * 2) {
                    lo[i] = f32::min(s[2 * i], s[2 * i + 1]);
                }
                extremum_tree(&mut lo, comptime!(SCORE_TILES * 2), false);
                fast = plane_all(lo[0usize] >= f32::min_value());
            }
            if fast {
                block_complete::<F>(
                    &s, &stage, &mut m, &mut l, &mut acc, v_base, matrix, matrix_row, v_pitch,
                    n_tiles,
                );
            } else {
                let mut live = Array::<u32>::new(comptime!(SCORE_TILES * 4));
                if plain && visible {
                    #[unroll]
                    for i in 0..comptime!(SCORE_TILES * 4) {
                        live[i] = select(s[i] < f32::min_value(), 0u32, row_real[(i / 2) % 2]);
                    }
                } else if plain {
                    // `finish_score` without the options' code: `* scale`, the key range,
                    // the causal cut and the `-inf` test (NaN takes part, as there).
                    let causal = (flags & FLAG_CAUSAL) != 0;
                    #[unroll]
                    for nt in 0..SCORE_TILES {
                        #[unroll]
                        for i in 0..4usize {
                            let row = qw + (lane / 4) as usize + comptime!((i / 2) * 8);
                            let key_pos = kb + (quad_lane * 2) + comptime!(nt * 8 + i % 2);
                            let pair = c[nt * 2 + i / 2];
                            let v = pair[i % 2] * scale;
                            let mut ok = row < ext.seq_q && key_pos < k_end;
                            if causal {
                                ok = ok && key_pos + ext.seq_q <= row + ext.seq_k;
                            }
                            s[nt * 4 + i] = v;
                            live[nt * 4 + i] =
                                select(ok, select(v < f32::min_value(), 0u32, 1u32), 0u32);
                        }
                    }
                } else {
                    #[unroll]
                    for nt in 0..SCORE_TILES {
                        #[unroll]
                        for i in 0..4usize {
                            let (r, cc) =
                                def.position_of_nth(lane, i as u32, MatrixIdent::Accumulator);
                            let row = qw + r as usize;
                            let key_pos = kb + nt * 8 + cc as usize;
                            let pair = c[nt * 2 + i / 2];
                            let score = finish_score(
                                pair[i % 2],
                                row < ext.seq_q && key_pos < k_end,
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
                            s[nt * 4 + i] = score.value;
                            live[nt * 4 + i] = select(score.live, 1u32, 0u32);
                        }
                    }
                }
                block_general::<F>(
                    &s, &live, &row_real, &stage, &mut m, &mut l, &mut acc, v_base, matrix,
                    matrix_row, v_pitch, n_tiles,
                );
            }
        }
        if comptime!(double) {
            sync_cube(); // this buffer has been read: the next round may refill it
        }
        first = next;
        round += 1;
    }

    // The chunk state, to the slots of the scalar kernels' layout (with this block size).
    #[unroll]
    for h in 0..2usize {
        let r = (lane / 4) as usize + h * 8;
        if qw + r < ext.seq_q {
            let slot = (local_group * block_q + warp * comptime!(TILE_Q) + r) * ext.chunks + chunk;
            if quad_lane == 0 {
                stats[2 * slot] = m[h];
                stats[2 * slot + 1] = l[h];
            }
            // The combine kernel reads no accumulator of an empty state.
            if l[h] != 0.0 {
                #[unroll]
                for ct in 0..n_tiles {
                    let pair = acc[ct * 2 + h];
                    #[unroll]
                    for e in 0..2usize {
                        let col = ct * 8 + quad_lane * 2 + e;
                        // Only a value dim that is not whole 8-column tiles has columns
                        // past its end.
                        let mut in_range = true;
                        if comptime!(!dim_v.is_multiple_of(8)) {
                            in_range = col < dim_v;
                        }
                        if in_range {
                            accs[slot * dim_v + col] = pair[e];
                        }
                    }
                }
            }
        }
    }
}
