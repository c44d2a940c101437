//! The tensor-core partials kernel: f16/bf16 attention on CUDA's `mma.sync` (m16n8k16,
//! f32 accumulators), for head dims up to [`MAX_MMA_HEAD_DIM`].
//!
//! It keeps the structure of the fixed order (chunks of [`KEY_SPLIT`] keys at absolute
//! positions, blocks of [`BLOCK_K`] keys, an online softmax per chunk, the chunk states merged
//! in chunk order by the same combine kernel) and changes how a block is computed:
//!
//! - a score is one `mma` chain over the head dim, 16 dims per instruction, in increasing
//!   order (zeros pad the head dim to a multiple of 16);
//! - the block's row maximum and row sum are formed across the four lanes that hold a row,
//!   in one fixed butterfly (`xor 1`, then `xor 2`), the same for every row;
//! - the weights are rounded to the input dtype and `p · v` over the block's 16 keys is one
//!   `mma` per 8 output columns, from a zero accumulator; then `acc = acc * alpha + pv`.
//!
//! Every query row is computed by the same instructions whatever its place in the 16-row
//! tile of a warp, and the instruction computes each output row from its own input row, so
//! a decode step, which runs this kernel with one warp and its query in row 0, gives the
//! bits of the same position in a prefill. The suite checks that on the GPU (head dims 16
//! and 72/40, with and without scale, softcap and bias).
//!
//! The reductions across lanes rely on the register layout of `mma.m16n8k16` that the PTX
//! ISA fixes (a lane holds rows `lane / 4` and `lane / 4 + 8`; the four lanes of a quad share
//! them) and on the accumulator layout of two adjacent 8-column tiles being the layout of the
//! next instruction's A operand, as flash-attention kernels use it. [`is_supported`] only
//! accepts runtimes whose manual MMA has that layout (32-lane planes with the instruction).

use cubecl::cmma::MmaDefinition;
use cubecl::features::MmaConfig;
use cubecl::ir::{ElemType, FloatKind, MatrixIdent};
use cubecl::prelude::*;

use super::kernel::{chunk_end, finish_score, Extents};
use super::{BLOCK_K, KEY_SPLIT};

/// Lanes of a plane (warp); the instruction's layout is defined for 32.
pub const PLANE: usize = 32;
/// Query rows of one warp's tile: the instruction's M.
pub const TILE_Q: usize = 16;
/// Warps of a prefill cube: 128 queries share every staged key and value.
pub const PREFILL_WARPS: usize = 8;
/// Warps of a decode cube (one query, padded to a tile of 16 rows).
pub const DECODE_WARPS: usize = 1;
/// Largest head dim (query/key and value) this kernel takes: its query fragments and
/// accumulators live in registers. Wider heads run the scalar kernels.
pub const MAX_MMA_HEAD_DIM: usize = 128;
/// Padding of a staged row (elements), so that the fragment loads of the eight lane
/// groups hit distinct shared-memory banks.
const ROW_PAD: usize = 8;

/// Two elements of one 32-bit fragment register.
type Pair<E> = Vector<E, Const<2>>;

/// Whether attention in `dtype` with head dims `dim` / `dim_v` runs on this kernel on the
/// runtime behind `client`. Depends on the device, the dtype and the head dims only, never
/// on batch, heads or sequence lengths, so one model always runs one arithmetic.
pub fn is_supported<R: Runtime>(
    client: &ComputeClient<R>,
    dtype: StorageType,
    dim: usize,
    dim_v: usize,
) -> bool {
    if !matches!(
        dtype,
        StorageType::Scalar(ElemType::Float(FloatKind::F16 | FloatKind::BF16))
    ) || dim > MAX_MMA_HEAD_DIM
        || dim_v > MAX_MMA_HEAD_DIM
    {
        return false;
    }
    let properties = client.properties();
    let config = MmaConfig {
        a_type: dtype,
        b_type: dtype,
        cd_type: StorageType::Scalar(ElemType::Float(FloatKind::F32)),
        m: 16,
        n: 8,
        k: 16,
    };
    properties.features.matmul.mma.contains(&config)
        && properties.hardware.plane_size_min == PLANE as u32
        && properties.hardware.plane_size_max == PLANE as u32
}

/// Keys staged per round: one block per warp of the cube.
pub const fn stage_keys(warps: usize) -> usize {
    BLOCK_K * warps
}

/// Shared memory of one cube with `warps` warps, in bytes, for 16-bit inputs.
pub const fn shared_memory_bytes(dim: usize, dim_v: usize, warps: usize) -> usize {
    let k_pitch = dim.div_ceil(16) * 16 + ROW_PAD;
    let v_pitch = dim_v.div_ceil(8) * 8 + ROW_PAD;
    stage_keys(warps) * (k_pitch + v_pitch) * 2
}

/// Copies rows `first_row .. first_row + block_rows` (zeros for rows `>= rows`, which must be
/// at least 1), columns `0 .. width` (zeros for columns `>= row_len`) of a row-major tensor
/// to shared memory as pairs of adjacent columns, `smem[(j * pitch + c) / 2]`, in the input
/// dtype, so that a fragment reads two elements with one 32-bit load. Every thread of the
/// cube takes part; the caller synchronises. Out-of-range elements are read at a clamped,
/// valid address and then replaced: no load sits behind a branch, so each thread has all
/// its loads in flight at once instead of waiting for them one by one.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_rows<F: Float>(
    tensor: &Tensor<F>,
    smem: &mut SharedMemory<Pair<F>>,
    first_row: usize,
    rows: usize,
    #[comptime] row_len: usize,
    #[comptime] width: usize,
    #[comptime] pitch: usize,
    #[comptime] block_rows: usize,
    #[comptime] units: usize,
) {
    let half = comptime!(width / 2);
    // 16 rows per warp, 32 lanes and a width that is a multiple of 8: every thread copies
    // width / 4 pairs.
    comptime!(assert!(width.is_multiple_of(2) && pitch.is_multiple_of(2)));
    comptime!(assert!((block_rows * half).is_multiple_of(units)));
    let tid = UNIT_POS_Y as usize * comptime!(PLANE) + UNIT_POS_X as usize;
    let last = rows - 1;
    #[unroll]
    for r in 0..comptime!(block_rows * half / units) {
        let i = tid + r * units;
        let j = i / half;
        let c = (i % half) * 2;
        let row = (first_row + select(j < rows, j, last)) * row_len;
        let mut pair = Pair::<F>::empty();
        #[unroll]
        for e in 0..2usize {
            let mut col = c + e;
            if comptime!(width > row_len) {
                col = select(c + e < row_len, c + e, comptime!(row_len - 1));
            }
            let x = tensor[row + col];
            pair[e] = select(j < rows && c + e < row_len, x, F::new(0.0));
        }
        smem[j * comptime!(pitch / 2) + c / 2] = pair;
    }
}

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
    #[define(F)] _dtype: StorageType,
) {
    if CUBE_POS >= ext.groups * ext.chunks {
        terminate!(); // a whole spare cube of a 2-D grid: no thread of it syncs
    }
    let block_q = comptime!(TILE_Q * warps);
    let staged = comptime!(stage_keys(warps));
    let units = comptime!(PLANE * warps);
    let k_steps = comptime!(dim.div_ceil(16));
    let n_tiles = comptime!(dim_v.div_ceil(8));
    let k_pitch = comptime!(dim.div_ceil(16) * 16 + ROW_PAD);
    let v_pitch = comptime!(dim_v.div_ceil(8) * 8 + ROW_PAD);

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

    let mut k_s = SharedMemory::<Pair<F>>::new(comptime!(staged * k_pitch / 2));
    let mut v_s = SharedMemory::<Pair<F>>::new(comptime!(staged * v_pitch / 2));
    let row0 = bh * ext.seq_k;
    let mut first = k_start;
    while first < k_end {
        sync_cube(); // the previous stage has been read
        stage_rows(
            key,
            &mut k_s,
            row0 + first,
            k_end - first,
            dim,
            comptime!(k_steps * 16),
            k_pitch,
            staged,
            units,
        );
        stage_rows(
            value,
            &mut v_s,
            row0 + first,
            k_end - first,
            dim_v,
            comptime!(n_tiles * 8),
            v_pitch,
            staged,
            units,
        );
        sync_cube();

        for b in 0..warps {
            let kb = first + b * comptime!(BLOCK_K);
            if kb < k_end {
                let key0 = b * comptime!(BLOCK_K); // first staged row of the block

                // Scores: two 8-key tiles, each one mma chain over the head dim.
                let mut s = Array::<f32>::new(8usize);
                #[unroll]
                for nt in 0..2usize {
                    let mut c = Array::<Pair<f32>>::new(2usize);
                    c[0usize] = Pair::<f32>::new(0.0);
                    c[1usize] = Pair::<f32>::new(0.0);
                    #[unroll]
                    for ks in 0..k_steps {
                        let mut a = Array::<Pair<F>>::new(4usize);
                        #[unroll]
                        for v in 0..4usize {
                            a[v] = q_frag[ks * 4 + v];
                        }
                        let mut bf = Array::<Pair<F>>::new(2usize);
                        #[unroll]
                        for v in 0..2usize {
                            // B is (dims x keys): row = dim, column = key. Elements `2 v`
                            // and `2 v + 1` are adjacent dims of one key: one staged pair.
                            let (r, cc) = def.position_of_nth(lane, (v * 2) as u32, MatrixIdent::B);
                            bf[v] = k_s[((key0 + nt * 8 + cc as usize) * k_pitch
                                + ks * 16
                                + r as usize)
                                / 2];
                        }
                        def.execute_inplace(&a, &bf, &mut c);
                    }
                    #[unroll]
                    for i in 0..4usize {
                        let pair = c[i / 2];
                        s[nt * 4 + i] = pair[i % 2];
                    }
                }

                // Options, and which keys take part, element by element.
                let mut live = Array::<u32>::new(8usize);
                #[unroll]
                for nt in 0..2usize {
                    #[unroll]
                    for i in 0..4usize {
                        let (r, cc) = def.position_of_nth(lane, i as u32, MatrixIdent::Accumulator);
                        let row = qw + r as usize;
                        let key_pos = kb + nt * 8 + cc as usize;
                        let score = finish_score(
                            s[nt * 4 + i],
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
                        let mut flag = 0u32;
                        if score.live {
                            flag = 1u32;
                        }
                        live[nt * 4 + i] = flag;
                    }
                }

                // Keys that no row of the warp takes (index `2 nt + e`: key `8 nt + 2 (lane
                // % 4) + e`, the keys of this lane's B elements in `p · v`): their values
                // enter the product as zeros, so that a masked key's value (padding may
                // hold NaN) never reaches a sum as `0 * NaN`.
                let mut key_live = Array::<u32>::new(4usize);
                #[unroll]
                for nt in 0..2usize {
                    #[unroll]
                    for e in 0..2usize {
                        let mut flag = live[nt * 4 + e] | live[nt * 4 + 2 + e];
                        flag |= plane_shuffle_xor(flag, 4u32);
                        flag |= plane_shuffle_xor(flag, 8u32);
                        flag |= plane_shuffle_xor(flag, 16u32);
                        key_live[nt * 2 + e] = flag;
                    }
                }

                // Row statistics across the quad, weights, and the chunk state's `m`, `l`.
                let mut p = Array::<f32>::new(8usize);
                let mut alpha = Array::<f32>::new(2usize);
                let mut any = Array::<u32>::new(2usize);
                #[unroll]
                for h in 0..2usize {
                    let mut row_any = 0u32;
                    let mut block_max = f32::min_value();
                    #[unroll]
                    for nt in 0..2usize {
                        #[unroll]
                        for e in 0..2usize {
                            let i = nt * 4 + h * 2 + e;
                            if live[i] != 0 {
                                row_any = 1u32;
                                block_max = f32::max(block_max, s[i]);
                            }
                        }
                    }
                    row_any |= plane_shuffle_xor(row_any, 1u32);
                    row_any |= plane_shuffle_xor(row_any, 2u32);
                    block_max = f32::max(block_max, plane_shuffle_xor(block_max, 1u32));
                    block_max = f32::max(block_max, plane_shuffle_xor(block_max, 2u32));
                    let m_new = f32::max(m[h], block_max);
                    #[unroll]
                    for nt in 0..2usize {
                        #[unroll]
                        for e in 0..2usize {
                            let i = nt * 4 + h * 2 + e;
                            let mut w = 0.0f32;
                            if live[i] != 0 {
                                w = f32::exp(s[i] - m_new);
                            }
                            p[i] = w;
                        }
                    }
                    let part = (p[h * 2] + p[h * 2 + 1]) + (p[4 + h * 2] + p[4 + h * 2 + 1]);
                    let mut row_sum = part + plane_shuffle_xor(part, 1u32);
                    row_sum += plane_shuffle_xor(row_sum, 2u32);
                    let mut a = 1.0f32;
                    if row_any != 0 {
                        a = f32::exp(m[h] - m_new);
                        l[h] = l[h] * a + row_sum;
                        m[h] = m_new;
                    }
                    alpha[h] = a;
                    any[h] = row_any;
                }

                // The weights as the A operand of `p · v`: A element `2 v + e` is score
                // tile `v / 2`, element `2 (v % 2) + e`.
                let mut pa = Array::<Pair<F>>::new(4usize);
                #[unroll]
                for v in 0..4usize {
                    let mut pair = Pair::<F>::empty();
                    #[unroll]
                    for e in 0..2usize {
                        pair[e] = F::cast_from(p[(v / 2) * 4 + (v % 2) * 2 + e]);
                    }
                    pa[v] = pair;
                }

                // `acc = acc * alpha + p · v`, 8 columns per instruction.
                #[unroll]
                for ct in 0..n_tiles {
                    let mut bf = Array::<Pair<F>>::new(2usize);
                    #[unroll]
                    for v in 0..2usize {
                        let mut pair = Pair::<F>::empty();
                        #[unroll]
                        for e in 0..2usize {
                            // B is (keys x columns): row = key, column = value column.
                            let (r, cc) =
                                def.position_of_nth(lane, (v * 2 + e) as u32, MatrixIdent::B);
                            let at = (key0 + r as usize) * v_pitch + ct * 8 + cc as usize;
                            let staged_pair = v_s[at / 2];
                            // (`is_multiple_of` has no cube expansion.)
                            #[allow(clippy::manual_is_multiple_of)]
                            let even = at % 2 == 0;
                            let x = select(even, staged_pair[0usize], staged_pair[1usize]);
                            pair[e] = select(key_live[v * 2 + e] != 0, x, F::new(0.0));
                        }
                        bf[v] = pair;
                    }
                    let mut pv = Array::<Pair<f32>>::new(2usize);
                    pv[0usize] = Pair::<f32>::new(0.0);
                    pv[1usize] = Pair::<f32>::new(0.0);
                    def.execute_inplace(&pa, &bf, &mut pv);
                    #[unroll]
                    for h in 0..2usize {
                        if any[h] != 0 {
                            let mut cur = acc[ct * 2 + h];
                            let add = pv[h];
                            #[unroll]
                            for e in 0..2usize {
                                cur[e] = cur[e] * alpha[h] + add[e];
                            }
                            acc[ct * 2 + h] = cur;
                        }
                    }
                }
            }
        }
        first += staged;
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
                        if col < dim_v {
                            accs[slot * dim_v + col] = pair[e];
                        }
                    }
                }
            }
        }
    }
}
