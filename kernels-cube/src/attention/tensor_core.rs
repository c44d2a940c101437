//! The tensor-core partials kernel: f16/bf16 attention on CUDA's `mma.sync` (m16n8k16,
//! f32 accumulators), for head dims up to [`MAX_MMA_HEAD_DIM`].
//!
//! It keeps the structure of the fixed order (chunks of [`KEY_SPLIT`] keys at absolute
//! positions, an online softmax per chunk over blocks in order, the chunk states merged in
//! chunk order by the same combine kernel) with blocks of [`MMA_BLOCK_K`] (64) keys, and
//! changes how a block is computed:
//!
//! - a score is one `mma` chain over the head dim, 16 dims per instruction, in increasing
//!   order (zeros pad the head dim to a multiple of 16);
//! - the block's row maximum and row sum are formed across the four lanes that hold a row:
//!   each lane takes its 16 entries of the row (the sum as eight pair sums, then a tree
//!   4-2-1 over them), then one fixed butterfly (`xor 1`, then `xor 2`), the same for every
//!   row;
//! - `exp` is CUDA's `__expf` (`weight_exp`);
//! - the weights are rounded to the input dtype and `p · v` over the block's 64 keys is one
//!   `mma` chain per 8 output columns, four 16-key steps in increasing order from a zero
//!   accumulator; then `acc = acc * alpha + pv`.
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
use cubecl::ir::{ElemType, FastMath, FloatKind, MatrixIdent};
use cubecl::prelude::barrier::{copy_async, Barrier};
use cubecl::prelude::*;

use super::kernel::{
    chunk_end, finish_score, Extents, FLAG_BIAS, FLAG_CAUSAL, FLAG_MASK, FLAG_SOFTCAP,
};
use super::KEY_SPLIT;

/// Lanes of a plane (warp); the instruction's layout is defined for 32.
pub const PLANE: usize = 32;
/// Query rows of one warp's tile: the instruction's M.
pub const TILE_Q: usize = 16;
/// Warps of a prefill cube: 64 queries share every staged key and value. Four rather than
/// eight: at 232 registers per thread a multiprocessor holds eight warps either way, and
/// two independent cubes do not wait on each other's barriers (65-67 TFLOP/s against
/// 60-63 on the H100 prefill benchmark). It changes which cube computes a row, never how.
pub const PREFILL_WARPS: usize = 4;
/// Warps of a decode cube (one query, padded to a tile of 16 rows).
pub const DECODE_WARPS: usize = 1;

/// Warps per cube for `seq_q` queries per (batch, head): one for a decode step, else
/// [`PREFILL_WARPS`]. Only which cube computes a row depends on it.
pub const fn warps_for(seq_q: usize) -> usize {
    if seq_q == 1 {
        DECODE_WARPS
    } else {
        PREFILL_WARPS
    }
}
/// Largest head dim (query/key and value) this kernel takes: its query fragments and
/// accumulators live in registers. Wider heads run the scalar kernels.
pub const MAX_MMA_HEAD_DIM: usize = 128;
/// Padding of a staged row (elements), so that the eight rows an `ldmatrix` reads hit
/// distinct shared-memory banks. A multiple of 8: rows stay 16-byte aligned.
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

/// Keys per block of the online softmax on this kernel: the unit at which the row maximum,
/// the rescale `acc * alpha` and the row sum are taken. Part of the numerical contract of
/// the tensor-core path (the scalar kernels use [`super::BLOCK_K`]); blocks start at absolute key
/// positions `c * KEY_SPLIT + b * MMA_BLOCK_K`, so it depends on nothing but itself.
///
/// 64 rather than the scalar path's 16: the per-block work (the quad butterflies, one
/// `exp` for `alpha`, the rescale of 64 accumulators per lane) is paid once per 64 keys
/// instead of four times. With 16-key blocks `ncu` counted about 53 issued instructions per
/// `mma` and the prefill stayed at 45 TFLOP/s.
pub const MMA_BLOCK_K: usize = 64;
/// Eight-key score tiles of a block: the `n` of the score instruction.
const SCORE_TILES: usize = MMA_BLOCK_K / 8;
/// Sixteen-key steps of a block's `p · v` chain: the `k` of that instruction.
const PV_STEPS: usize = MMA_BLOCK_K / 16;
// The row sum's tree over the score tiles is spelled out for eight of them, and a chunk
// holds a whole number of blocks (so blocks start at absolute positions in every chunk).
const _: () = assert!(SCORE_TILES == 8 && KEY_SPLIT.is_multiple_of(MMA_BLOCK_K));

/// How a cube stages keys and values in shared memory. Only speed depends on it: all three
/// stage the same values (rows past the chunk's end hold copies of its last row, which the
/// kernel masks exactly as it masks any key that takes no part).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Staging {
    /// 16-byte `cp.async` copies into one of two buffers while the cube computes on the
    /// other: head dims that are multiples of 8 and 16-byte aligned rows, prefill cubes.
    Double,
    /// The same copies into one buffer, waited for before each block: decode cubes, whose
    /// one warp would otherwise hold 70 KiB of shared memory (two 64-key stages at head dim
    /// 128) and leave three warps per multiprocessor; one buffer lets twice as many cubes
    /// overlap each other's loads.
    Single,
    /// Loads and stores through registers into one buffer: any head dim or alignment.
    Plain,
}

impl Staging {
    const fn buffers(self) -> usize {
        match self {
            Self::Double => 2,
            Self::Single | Self::Plain => 1,
        }
    }
}

/// The staging for these head dims and operand offsets (bytes) on this runtime, for a cube
/// of `warps` warps.
pub fn staging_for<R: Runtime>(
    client: &ComputeClient<R>,
    dim: usize,
    dim_v: usize,
    offsets: [u64; 2],
    warps: usize,
) -> Staging {
    let aligned = dim.is_multiple_of(8)
        && dim_v.is_multiple_of(8)
        && offsets.iter().all(|o| o.is_multiple_of(16));
    if !(aligned && client.properties().features.copy_async) {
        Staging::Plain
    } else if warps > 1 {
        Staging::Double
    } else {
        Staging::Single
    }
}

/// Elements of one staging buffer: one block of keys then its values, each row padded to
/// its pitch. Every warp of the cube reads the whole block.
const fn stage_elems(dim: usize, dim_v: usize) -> usize {
    MMA_BLOCK_K * (k_pitch(dim) + v_pitch(dim_v))
}

/// Columns of a staged key row that the score chain reads: the head dim padded to the
/// 16-deep instruction.
const fn k_width(dim: usize) -> usize {
    dim.div_ceil(16) * 16
}

/// Columns of a staged value row that `p · v` reads: the value dim padded to 8-column tiles.
const fn v_width(dim_v: usize) -> usize {
    dim_v.div_ceil(8) * 8
}

/// Row pitch of staged keys: [`k_width`] plus [`ROW_PAD`]. A multiple of 8 elements, so
/// every row starts 16-byte aligned (`ldmatrix`).
const fn k_pitch(dim: usize) -> usize {
    k_width(dim) + ROW_PAD
}

/// Row pitch of staged values: [`v_width`] plus [`ROW_PAD`].
const fn v_pitch(dim_v: usize) -> usize {
    v_width(dim_v) + ROW_PAD
}

/// Shared memory of one cube, in bytes, for 16-bit inputs (the same for any warp count).
pub const fn shared_memory_bytes(dim: usize, dim_v: usize, staging: Staging) -> usize {
    staging.buffers() * stage_elems(dim, dim_v) * 2
}

/// Copies rows `first_row .. first_row + block_rows` (zeros for rows `>= rows`, which must be
/// at least 1), columns `0 .. width` (zeros for columns `>= row_len`) of a row-major tensor
/// to `smem[base + j * pitch + c]`, through registers. Every thread of the cube takes part;
/// the caller synchronises. Out-of-range elements are read at a clamped, valid address and
/// then replaced: no load sits behind a branch, so each thread has all its loads in flight
/// at once instead of waiting for them one by one.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_rows<F: Float>(
    tensor: &Tensor<F>,
    smem: &mut SharedMemory<F>,
    base: usize,
    first_row: usize,
    rows: usize,
    #[comptime] row_len: usize,
    #[comptime] width: usize,
    #[comptime] pitch: usize,
    #[comptime] block_rows: usize,
    #[comptime] units: usize,
) {
    // 16 rows per warp, 32 lanes and an even width: every thread copies width / 2 elements.
    comptime!(assert!((block_rows * width).is_multiple_of(units)));
    let tid = UNIT_POS_Y as usize * comptime!(PLANE) + UNIT_POS_X as usize;
    let last = rows - 1;
    #[unroll]
    for r in 0..comptime!(block_rows * width / units) {
        let i = tid + r * units;
        let j = i / width;
        let c = i % width;
        let row = (first_row + select(j < rows, j, last)) * row_len;
        let mut col = c;
        if comptime!(width > row_len) {
            col = select(c < row_len, c, comptime!(row_len - 1));
        }
        let x = tensor[row + col];
        smem[base + j * pitch + c] = select(j < rows && c < row_len, x, F::new(0.0));
    }
}

/// Issues the `cp.async` copies of rows `first_row .. first_row + block_rows` of a row-major
/// tensor with rows of `row_len` (a multiple of 8) to `smem[base + j * pitch ..]`, 16 bytes
/// each. Rows `>= rows` (at least 1) copy row `rows - 1` instead. The caller commits them to
/// a barrier.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_rows_async<F: Float>(
    tensor: &Tensor<F>,
    smem: &mut SharedMemory<F>,
    base: usize,
    first_row: usize,
    rows: usize,
    #[comptime] row_len: usize,
    #[comptime] pitch: usize,
    #[comptime] block_rows: usize,
    #[comptime] units: usize,
) {
    let per_row = comptime!(row_len / 8);
    let total = comptime!(block_rows * per_row);
    let tid = UNIT_POS_Y as usize * comptime!(PLANE) + UNIT_POS_X as usize;
    let last = rows - 1;
    if comptime!(units.is_multiple_of(per_row) && total.is_multiple_of(units)) {
        // Every round copies `units / per_row` whole rows, the thread the same 16 bytes of
        // each: its row and column are worked out once, and a full block needs no clamp.
        let step = comptime!(units / per_row);
        let j0 = tid / per_row;
        let col = (tid % per_row) * 8;
        let src0 = first_row * row_len + col;
        let dst0 = base + j0 * pitch + col;
        if rows >= block_rows {
            #[unroll]
            for r in 0..comptime!(total / units) {
                let src = src0 + (j0 + r * step) * row_len;
                let dst = dst0 + comptime!(r * step * pitch);
                copy_async(
                    &tensor.slice(src, src + 8),
                    &mut smem.slice_mut(dst, dst + 8),
                    8u32,
                );
            }
        } else {
            #[unroll]
            for r in 0..comptime!(total / units) {
                let j = j0 + r * step;
                let src = src0 + select(j < rows, j, last) * row_len;
                let dst = dst0 + comptime!(r * step * pitch);
                copy_async(
                    &tensor.slice(src, src + 8),
                    &mut smem.slice_mut(dst, dst + 8),
                    8u32,
                );
            }
        }
    } else {
        #[unroll]
        for r in 0..comptime!(total.div_ceil(units)) {
            let i = tid + r * units;
            if i < total {
                let j = i / per_row;
                let c = (i % per_row) * 8;
                let src = (first_row + select(j < rows, j, last)) * row_len + c;
                let dst = base + j * pitch + c;
                copy_async(
                    &tensor.slice(src, src + 8),
                    &mut smem.slice_mut(dst, dst + 8),
                    8u32,
                );
            }
        }
    }
}

/// Issues the `cp.async` copies of one stage, keys then values, into the buffer at `base`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_async<F: Float>(
    key: &Tensor<F>,
    value: &Tensor<F>,
    smem: &mut SharedMemory<F>,
    base: usize,
    first_row: usize,
    rows: usize,
    #[comptime] dim: usize,
    #[comptime] dim_v: usize,
    #[comptime] warps: usize,
) {
    let staged = comptime!(MMA_BLOCK_K);
    let units = comptime!(PLANE * warps);
    let k_pitch = comptime!(k_pitch(dim));
    stage_rows_async(
        key, smem, base, first_row, rows, dim, k_pitch, staged, units,
    );
    let v_base = base + comptime!(staged * k_pitch);
    stage_rows_async(
        value,
        smem,
        v_base,
        first_row,
        rows,
        dim_v,
        comptime!(v_pitch(dim_v)),
        staged,
        units,
    );
}

/// Stages keys then values through registers into the one buffer, padded with zeros to the
/// instruction's shape.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_plain<F: Float>(
    key: &Tensor<F>,
    value: &Tensor<F>,
    smem: &mut SharedMemory<F>,
    first_row: usize,
    rows: usize,
    #[comptime] dim: usize,
    #[comptime] dim_v: usize,
    #[comptime] warps: usize,
) {
    let staged = comptime!(MMA_BLOCK_K);
    let units = comptime!(PLANE * warps);
    let k_pitch = comptime!(k_pitch(dim));
    let k_width = comptime!(k_width(dim));
    stage_rows(
        key, smem, 0usize, first_row, rows, dim, k_width, k_pitch, staged, units,
    );
    let v_width = comptime!(v_width(dim_v));
    let v_base = comptime!(staged * k_pitch);
    stage_rows(
        value,
        smem,
        v_base,
        first_row,
        rows,
        dim_v,
        v_width,
        comptime!(v_pitch(dim_v)),
        staged,
        units,
    );
}

/// Zeros the key columns `dim .. k_pitch` of every staged row of every buffer: with a head
/// dim that is not a multiple of 16, the score's last instruction reads them (times zero
/// query elements, so they must not hold NaN). The copies never write them.
#[cube]
fn zero_key_padding<F: Float>(
    smem: &mut SharedMemory<F>,
    #[comptime] dim: usize,
    #[comptime] dim_v: usize,
    #[comptime] warps: usize,
    #[comptime] buffers: usize,
) {
    let pad = comptime!(k_width(dim) - dim);
    if comptime!(pad > 0) {
        let staged = comptime!(MMA_BLOCK_K);
        let total = comptime!(buffers * staged * pad);
        let units = comptime!(PLANE * warps);
        let tid = UNIT_POS_Y as usize * comptime!(PLANE) + UNIT_POS_X as usize;
        #[unroll]
        for r in 0..comptime!(total.div_ceil(units)) {
            let i = tid + r * units;
            if i < total {
                let b = i / comptime!(staged * pad);
                let j = (i / pad) % staged;
                let c = dim + i % pad;
                smem[b * comptime!(stage_elems(dim, dim_v)) + j * comptime!(k_pitch(dim)) + c] =
                    F::new(0.0);
            }
        }
    }
}

/// `e^x` for the weights and `alpha`: CUDA's `__expf` (`ex2.approx` of `x * log2 e`), two
/// instructions where `expf` takes about ten, 34 times per lane and block. Its relative error
/// (a few units of 2^-22 over the range a weight can take) is far below the rounding of the
/// weights to the input dtype that follows. Part of this kernel's arithmetic, the same in
/// every cube.
#[cube(fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
fn weight_exp(x: f32) -> f32 {
    f32::exp(x)
}

/// The B fragment of a `p · v` step for one 8-column value tile: `regs[first]`,
/// `regs[first + 1]`, which hold keys `8 v + 2 (lane % 4) + e` of the step's 16 (score tile
/// `tile + v`). Values of keys that no row of the warp takes (`key_live`, indexed
/// `2 * score tile + e`) enter as zeros, so that a masked key's value (padding may hold NaN,
/// a row past the chunk is a copy) never reaches a sum as `0 * NaN`; a block that every
/// query row takes whole (`complete`, the same in every lane) skips the selects.
#[cube]
fn value_fragment<F: Float>(
    regs: &Array<Pair<F>>,
    #[comptime] first: usize,
    key_live: &Array<u32>,
    complete: bool,
    tile: usize,
) -> Array<Pair<F>> {
    let mut bf = Array::<Pair<F>>::new(2usize);
    #[unroll]
    for v in 0..2usize {
        bf[v] = regs[first + v];
    }
    if !complete {
        #[unroll]
        for v in 0..2usize {
            let mut pair = bf[v];
            #[unroll]
            for e in 0..2usize {
                pair[e] = select(key_live[(tile + v) * 2 + e] != 0, pair[e], F::new(0.0));
            }
            bf[v] = pair;
        }
    }
    bf
}

/// `acc = acc * alpha + pv` for value tile `ct`, in each of the lane's two rows; with
/// `masked`, only in rows that took part in the block (`any`).
#[cube]
fn rescale_add(
    acc: &mut Array<Pair<f32>>,
    pv: &Array<Pair<f32>>,
    alpha: &Array<f32>,
    any: &Array<u32>,
    ct: usize,
    #[comptime] masked: bool,
) {
    #[unroll]
    for h in 0..2usize {
        let mut cur = acc[ct * 2 + h];
        let add = pv[h];
        #[unroll]
        for e in 0..2usize {
            cur[e] = cur[e] * alpha[h] + add[e];
        }
        if comptime!(masked) {
            if any[h] != 0 {
                acc[ct * 2 + h] = cur;
            }
        } else {
            acc[ct * 2 + h] = cur;
        }
    }
}

/// `x[0] = max(x[0 .. n])` (or the minimum) by a tree (`n` a power of two); the rest of `x`
/// is clobbered. Neither depends on the order: CUDA's `max` and `min` return the other
/// operand of a NaN, and the sign of a zero maximum changes no weight (`s - m`, `m - m'` are
/// the same either way).
#[cube]
fn extremum_tree(x: &mut Array<f32>, #[comptime] n: usize, #[comptime] max: bool) {
    let mut width = comptime!(n / 2);
    #[unroll]
    for _ in 0..comptime!(n.trailing_zeros()) {
        #[unroll]
        for i in 0..width {
            if comptime!(max) {
                x[i] = f32::max(x[i], x[i + width]);
            } else {
                x[i] = f32::min(x[i], x[i + width]);
            }
        }
        width = comptime!(width / 2);
    }
}

/// The block's softmax step for the lane's two rows: the row maximum and sum across the
/// quad, the weights `p` (as the A operands of `p · v`, rounded to the input dtype) and
/// `alpha`, and the chunk state's `m`, `l`. With `masked`, keys that are not `live` and rows
/// that are not `any` take no part; without, every key and row does.
#[cube]
#[allow(clippy::too_many_arguments)]
fn block_weights<F: Float>(
    s: &Array<f32>,
    live: &Array<u32>,
    any: &Array<u32>,
    m: &mut Array<f32>,
    l: &mut Array<f32>,
    pa: &mut Array<Pair<F>>,
    alpha: &mut Array<f32>,
    #[comptime] masked: bool,
) {
    let mut p = Array::<f32>::new(comptime!(SCORE_TILES * 4));
    #[unroll]
    for h in 0..2usize {
        // The lane's 16 entries of the row, then `xor 1`, `xor 2`.
        let mut x = Array::<f32>::new(comptime!(SCORE_TILES * 2));
        #[unroll]
        for nt in 0..SCORE_TILES {
            #[unroll]
            for e in 0..2usize {
                let i = nt * 4 + h * 2 + e;
                if comptime!(masked) {
                    x[nt * 2 + e] = select(live[i] != 0, s[i], f32::min_value());
                } else {
                    x[nt * 2 + e] = s[i];
                }
            }
        }
        extremum_tree(&mut x, comptime!(SCORE_TILES * 2), true);
        let mut block_max = x[0usize];
        block_max = f32::max(block_max, plane_shuffle_xor(block_max, 1u32));
        block_max = f32::max(block_max, plane_shuffle_xor(block_max, 2u32));
        let m_new = f32::max(m[h], block_max);
        #[unroll]
        for nt in 0..SCORE_TILES {
            #[unroll]
            for e in 0..2usize {
                let i = nt * 4 + h * 2 + e;
                if comptime!(masked) {
                    p[i] = select(live[i] != 0, weight_exp(s[i] - m_new), 0.0f32);
                } else {
                    p[i] = weight_exp(s[i] - m_new);
                }
            }
        }
        // The lane's part of the row sum: pairs of keys, then a tree over the tiles.
        let mut part = Array::<f32>::new(SCORE_TILES);
        #[unroll]
        for nt in 0..SCORE_TILES {
            part[nt] = p[nt * 4 + h * 2] + p[nt * 4 + h * 2 + 1];
        }
        #[unroll]
        for t in 0..4usize {
            part[t] = part[t] + part[t + 4];
        }
        #[unroll]
        for t in 0..2usize {
            part[t] = part[t] + part[t + 2];
        }
        part[0usize] = part[0usize] + part[1usize];
        let mut row_sum = part[0usize] + plane_shuffle_xor(part[0usize], 1u32);
        row_sum += plane_shuffle_xor(row_sum, 2u32);
        if comptime!(masked) {
            let mut a = 1.0f32;
            if any[h] != 0 {
                a = weight_exp(m[h] - m_new);
                l[h] = l[h] * a + row_sum;
                m[h] = m_new;
            }
            alpha[h] = a;
        } else {
            let a = weight_exp(m[h] - m_new);
            l[h] = l[h] * a + row_sum;
            m[h] = m_new;
            alpha[h] = a;
        }
    }

    // A element `2 v + e` of step `kt` is score tile `2 kt + v / 2`, element `2 (v % 2) + e`.
    #[unroll]
    for kt in 0..PV_STEPS {
        #[unroll]
        for v in 0..4usize {
            let mut pair = Pair::<F>::empty();
            #[unroll]
            for e in 0..2usize {
                pair[e] = F::cast_from(p[(kt * 2 + v / 2) * 4 + (v % 2) * 2 + e]);
            }
            pa[kt * 4 + v] = pair;
        }
    }
}

/// `acc = acc * alpha + p · v`, 8 columns per instruction chain: the chain runs over the
/// block's 16-key steps in increasing order from a zero accumulator. The B fragments (keys
/// x columns, staged as keys x columns) come transposed out of `ldmatrix`: matrix `i` is
/// keys `16 kt + 8 (i % 2) ..`, columns `8 (ct + i / 2) ..`, so one `.x4` feeds two tiles (an
/// `.x2` the last of an odd count). With `masked`, values of keys no row takes enter as
/// zeros (unless `complete`) and rows that take no part keep their accumulators.
#[cube]
#[allow(clippy::too_many_arguments)]
fn accumulate_pv<F: Float>(
    stage: &SharedMemory<F>,
    pa: &Array<Pair<F>>,
    alpha: &Array<f32>,
    any: &Array<u32>,
    key_live: &Array<u32>,
    complete: bool,
    acc: &mut Array<Pair<f32>>,
    v_base: usize,
    matrix: usize,
    matrix_row: usize,
    #[comptime] v_pitch: usize,
    #[comptime] n_tiles: usize,
    #[comptime] masked: bool,
) {
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    // Unmasked blocks take every key's value as loaded.
    let whole = complete || comptime!(!masked);
    // The lane's row of its matrix once; every `ldmatrix` is then a constant away.
    let lane_v = v_base + ((matrix % 2) * 8 + matrix_row) * v_pitch + (matrix / 2) * 8;
    #[unroll]
    for pair_of_tiles in 0..comptime!(n_tiles / 2) {
        let ct = pair_of_tiles * 2;
        let mut pv0 = Array::<Pair<f32>>::new(2usize);
        let mut pv1 = Array::<Pair<f32>>::new(2usize);
        #[unroll]
        for h in 0..2usize {
            pv0[h] = Pair::<f32>::new(0.0);
            pv1[h] = Pair::<f32>::new(0.0);
        }
        #[unroll]
        for kt in 0..PV_STEPS {
            let at = lane_v + comptime!(kt * 16 * v_pitch + ct * 8);
            let regs = def.load_matrix::<F, Const<2>>(
                &stage.slice(at, at + 8),
                MatrixIdent::B,
                4usize,
                true,
            );
            let mut a = Array::<Pair<F>>::new(4usize);
            #[unroll]
            for v in 0..4usize {
                a[v] = pa[kt * 4 + v];
            }
            let b0 = value_fragment(&regs, 0usize, key_live, whole, kt * 2);
            let b1 = value_fragment(&regs, 2usize, key_live, whole, kt * 2);
            def.execute_inplace(&a, &b0, &mut pv0);
            def.execute_inplace(&a, &b1, &mut pv1);
        }
        rescale_add(acc, &pv0, alpha, any, ct, masked);
        rescale_add(acc, &pv1, alpha, any, ct + 1, masked);
    }
    if comptime!(n_tiles % 2 == 1) {
        let ct = comptime!(n_tiles - 1);
        let mut pv = Array::<Pair<f32>>::new(2usize);
        #[unroll]
        for h in 0..2usize {
            pv[h] = Pair::<f32>::new(0.0);
        }
        #[unroll]
        for kt in 0..PV_STEPS {
            let at = v_base + (kt * 16 + (matrix % 2) * 8 + matrix_row) * v_pitch + ct * 8;
            let regs = def.load_matrix::<F, Const<2>>(
                &stage.slice(at, at + 8),
                MatrixIdent::B,
                2usize,
                true,
            );
            let mut a = Array::<Pair<F>>::new(4usize);
            #[unroll]
            for v in 0..4usize {
                a[v] = pa[kt * 4 + v];
            }
            let b = value_fragment(&regs, 0usize, key_live, whole, kt * 2);
            def.execute_inplace(&a, &b, &mut pv);
        }
        rescale_add(acc, &pv, alpha, any, ct, masked);
    }
}

/// A block that every query row of the warp takes whole (see the kernel): the weights and
/// `p · v` without liveness. Rows past the last query take part too; their state is never
/// written, and no row's arithmetic reads another row's.
#[cube]
#[allow(clippy::too_many_arguments)]
fn block_complete<F: Float>(
    s: &Array<f32>,
    stage: &SharedMemory<F>,
    m: &mut Array<f32>,
    l: &mut Array<f32>,
    acc: &mut Array<Pair<f32>>,
    v_base: usize,
    matrix: usize,
    matrix_row: usize,
    #[comptime] v_pitch: usize,
    #[comptime] n_tiles: usize,
) {
    // Placeholders for the liveness the masked helpers read; the unmasked ones never do.
    let none = Array::<u32>::new(1usize);
    let mut pa = Array::<Pair<F>>::new(comptime!(PV_STEPS * 4));
    let mut alpha = Array::<f32>::new(2usize);
    block_weights::<F>(s, &none, &none, m, l, &mut pa, &mut alpha, false);
    accumulate_pv::<F>(
        stage, &pa, &alpha, &none, &none, true, acc, v_base, matrix, matrix_row, v_pitch, n_tiles,
        false,
    );
}

/// Any other block: the keys that take part (`live`, per score) and the rows that are
/// queries (`row_real`) decide what enters the row statistics and `p · v`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn block_general<F: Float>(
    s: &Array<f32>,
    live: &Array<u32>,
    row_real: &Array<u32>,
    stage: &SharedMemory<F>,
    m: &mut Array<f32>,
    l: &mut Array<f32>,
    acc: &mut Array<Pair<f32>>,
    v_base: usize,
    matrix: usize,
    matrix_row: usize,
    #[comptime] v_pitch: usize,
    #[comptime] n_tiles: usize,
) {
    // `complete`: every query row of the warp takes every key of the block. Then every key
    // is taken by some row and exactly the query rows take part, which is what the shuffles
    // below would find; they run only when some score is out.
    let mut lane_complete = 1u32;
    #[unroll]
    for i in 0..comptime!(SCORE_TILES * 4) {
        lane_complete &= live[i] | (1u32 - row_real[(i / 2) % 2]);
    }
    let complete = plane_all(lane_complete != 0);

    // Which rows take part at all, and which keys no row takes (index `2 nt + e`: key
    // `8 nt + 2 (lane % 4) + e`, the keys of this lane's B elements in `p · v`).
    let mut any = Array::<u32>::new(2usize);
    any[0usize] = row_real[0usize];
    any[1usize] = row_real[1usize];
    let mut key_live = Array::<u32>::new(comptime!(SCORE_TILES * 2));
    if !complete {
        #[unroll]
        for nt in 0..SCORE_TILES {
            #[unroll]
            for e in 0..2usize {
                let mut flag = live[nt * 4 + e] | live[nt * 4 + 2 + e];
                flag |= plane_shuffle_xor(flag, 4u32);
                flag |= plane_shuffle_xor(flag, 8u32);
                flag |= plane_shuffle_xor(flag, 16u32);
                key_live[nt * 2 + e] = flag;
            }
        }
        #[unroll]
        for h in 0..2usize {
            let mut row_any = 0u32;
            #[unroll]
            for nt in 0..SCORE_TILES {
                row_any |= live[nt * 4 + h * 2] | live[nt * 4 + h * 2 + 1];
            }
            row_any |= plane_shuffle_xor(row_any, 1u32);
            row_any |= plane_shuffle_xor(row_any, 2u32);
            any[h] = row_any;
        }
    }
    let mut pa = Array::<Pair<F>>::new(comptime!(PV_STEPS * 4));
    let mut alpha = Array::<f32>::new(2usize);
    block_weights::<F>(s, live, &any, m, l, &mut pa, &mut alpha, true);
    accumulate_pv::<F>(
        stage, &pa, &alpha, &any, &key_live, complete, acc, v_base, matrix, matrix_row, v_pitch,
        n_tiles, true,
    );
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
