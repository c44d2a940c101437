//! Our own tensor-core matmul for f16 and bf16: `mma.sync` m16n8k16 fed by `ldmatrix` from
//! shared memory, with a multi-stage pipeline of `cp.async` copies (the rhs, or both
//! operands, optionally by TMA).
//!
//! cubek's tiled routine spends most of its issue slots on other work than the MMA (the
//! profile in docs/performance.md, "What limits the matmul"). This kernel is written for
//! the opposite: each warp owns a large block of accumulators (64x64 outputs in the large
//! tilings: 32 independent MMA chains per 16-deep step against 8 `ldmatrix.x4`), the next
//! step's fragments are loaded before the current step's MMAs are issued, and operand
//! tiles arrive `stages - 1` steps ahead through asynchronous copies that complete on one
//! barrier per stage.
//!
//! # The order of the sum
//!
//! Every output element is one f32 accumulator, zero at first, that takes one `mma.sync`
//! m16n8k16 per 16 entries of K, in increasing K; entries past K are zeros in both operands.
//! That is the chain cubek's routine issues for f16 and bf16 (a WMMA 16x16x16 fragment runs
//! the same instruction), so this kernel and the cubek path give the same bits for every
//! element, which the suite checks on the GPU. The tiling ([`PipelinedTiling`]) only decides
//! which cube and which warp holds an accumulator and how many K entries a stage brings.
//!
//! # Where it stands
//!
//! The router takes this kernel for decode, up to 64 rows ([`routed_tiling`]). Where one
//! weight matrix serves every batch and the device has TMA, a stage's weight block arrives
//! by TMA into swizzled rows, six stages deep while the cubes fit in one wave, and past one
//! wave from 33 rows in 64-row cubes that bring the lhs by TMA too: on an H100 in bf16,
//! 1.00-1.10x cuBLAS's time at M = 1 and 16 and 1.06-1.21x at M = 64 (docs/performance.md,
//! "Decode"). Deeper `cp.async` pipelines and warps that only copy
//! ([`PipelinedTiling::copy_warps`]) were measured beside it and gained little: at M = 1 the
//! `cp.async` kernel is issue-bound on its copies, which TMA removes. Without TMA, single
//! rows take `cp.async` copies that skip the rows a 16-row tile does not have. From M = 65
//! up cubek's routine stays: this kernel's best there, 128x128 cubes with the rhs by TMA
//! ([`PIPE_MEDIUM_TMA`]), took 0.95-1.14x its time at M >= 1024, both near half of
//! cuBLAS's throughput; with `cp.async` copies the same cubes kept L2 84% busy at 4096^3
//! while the tensor pipe was 52% busy. Every listed tiling is compared bitwise with cubek's
//! path on the suite's edge shapes (partial tiles, K tails, batches, a weight shared by
//! batches, bias) on a GPU (`kernel_matmul_pipelined_writes_every_output_in_the_routed_bits`),
//! so the router can move any size class to it without changing a result. The benchmark's
//! sweep (`bench_matmul --tilings-only --pipelined-only`, `--pipe` for other tilings) times
//! it.

use cubecl::cmma::MmaDefinition;
use cubecl::ir::features::Tma;
use cubecl::ir::{ElemType, FloatKind, MatrixIdent};
use cubecl::prelude::barrier::{copy_async_checked, Barrier};
use cubecl::prelude::*;
use cubecl::std::tensor::index_offset_contiguous_fastdivmod;
use cubecl::std::FastDivmod;

type Pair<E> = Vector<E, Const<2>>;

/// Lanes of a warp: the instruction is a warp-wide one.
pub const PLANE: usize = 32;
/// Padding of a staged row (elements): rows of a stage start 16 bytes apart modulo 128, so
/// the eight rows an `ldmatrix` reads fall in distinct banks.
const ROW_PAD: usize = 8;
/// Elements one asynchronous copy moves (16 bytes of f16 or bf16).
const CHUNK: usize = 8;
/// Tile rows per group of the grouped walk over output tiles (as the portable kernel's).
const GROUP_M: usize = 8;
/// The most stages a cube holds.
pub const MAX_STAGES: usize = 8;

/// How the kernel blocks the output and the K walk. Only speed depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PipelinedTiling {
    pub name: &'static str,
    /// Warps of a cube along M and N.
    pub warps: (usize, usize),
    /// `mma` tiles per warp: 16-row tiles along M, 8-column tiles along N (an even count,
    /// loaded two at a time).
    pub warp_tiles: (usize, usize),
    /// K entries a stage brings (a multiple of 16).
    pub stage_k: usize,
    /// Stages in shared memory (2 to [`MAX_STAGES`]): `stages - 1` are in flight while one
    /// is computed on.
    pub stages: usize,
    /// Warps that only copy, beside the `warps` that also multiply: where the copies' address
    /// arithmetic, not the memory, paces a cube with few warps (decode), more threads share
    /// each stage's copies.
    pub copy_warps: usize,
    /// Whether the rhs block of a stage arrives by one TMA copy (one instruction for the
    /// whole block, issued by one thread) instead of 16-byte `cp.async` copies. Its rows are
    /// then stored unpadded and swizzled (TMA's 32, 64 or 128-byte swizzle, one row wide),
    /// so that the eight rows an `ldmatrix` reads still fall in distinct banks. A block wider
    /// than 64 columns arrives as slabs of 64 columns (128 bytes, the widest swizzle), one
    /// TMA copy each.
    pub rhs_tma: bool,
    /// Whether the lhs block of a stage arrives by TMA too (with `rhs_tma` only), in slabs
    /// of up to 64 K entries, swizzled as the rhs's: no thread issues a copy, which leaves
    /// the issue slots to `ldmatrix` and `mma` (it paid for 64-row decode cubes, not for
    /// 128-row ones). Rows past M arrive as zeros from the tensor map.
    pub lhs_tma: bool,
}

impl PipelinedTiling {
    /// Outputs of one cube, as (rows, columns).
    pub const fn cube_outputs(&self) -> (usize, usize) {
        (
            16 * self.warp_tiles.0 * self.warps.0,
            8 * self.warp_tiles.1 * self.warps.1,
        )
    }

    /// Threads of one cube.
    pub const fn units(&self) -> usize {
        PLANE * (self.warps.0 * self.warps.1 + self.copy_warps)
    }

    /// Elements of one stage: the lhs block, then the rhs block, rows padded unless TMA
    /// brings them.
    const fn stage_elems(&self) -> usize {
        let (bm, bn) = self.cube_outputs();
        let a_pitch = if self.lhs_tma {
            self.stage_k
        } else {
            self.stage_k + ROW_PAD
        };
        let b_pitch = if self.rhs_tma { bn } else { bn + ROW_PAD };
        bm * a_pitch + self.stage_k * b_pitch
    }

    /// Columns of one TMA slab of the rhs block (rows of at most 128 bytes).
    pub const fn rhs_slab(&self) -> usize {
        tma_slab(self.cube_outputs().1)
    }

    /// K entries of one TMA slab of the lhs block (rows of at most 128 bytes).
    pub const fn lhs_slab(&self) -> usize {
        tma_slab(self.stage_k)
    }

    /// Shared memory of one cube, in bytes of a 2-byte dtype.
    pub const fn shared_bytes(&self) -> usize {
        2 * self.stages * self.stage_elems()
    }

    /// Whether the kernel can run this tiling at all (shape rules, not device limits).
    pub const fn is_valid(&self) -> bool {
        self.warps.0 > 0
            && self.warps.1 > 0
            && self.warp_tiles.0 > 0
            && self.warp_tiles.1 > 0
            && self.warp_tiles.1.is_multiple_of(2)
            && self.stage_k > 0
            && self.stage_k.is_multiple_of(16)
            && self.stages >= 2
            && self.stages <= MAX_STAGES
            && self.warps.0 * self.warps.1 + self.copy_warps <= 32
            && self.copies_divide()
            && (!self.rhs_tma || tma_slabs_fit(self.stage_k, self.cube_outputs().1))
            && (!self.lhs_tma || self.lhs_tma_fits())
    }

    /// Whether the lhs block can arrive by TMA after the rhs blocks: with the rhs by TMA, in
    /// swizzled slabs, the lhs blocks starting on 1024 bytes as the swizzle wants.
    const fn lhs_tma_fits(&self) -> bool {
        let (bm, bn) = self.cube_outputs();
        self.rhs_tma
            && tma_slabs_fit(bm, self.stage_k)
            && (2 * self.stages * self.stage_k * bn).is_multiple_of(1024)
    }

    /// Whether every thread copies the same number of 16-byte chunks of each operand per
    /// stage, and a whole number of threads covers each staged row: the kernel works out
    /// each thread's copies once, as one row, column and stride.
    const fn copies_divide(&self) -> bool {
        let (bm, bn) = self.cube_outputs();
        let units = self.units();
        let (a_per_row, b_per_row) = (self.stage_k / CHUNK, bn / CHUNK);
        (bm * a_per_row).is_multiple_of(units)
            && units.is_multiple_of(a_per_row)
            && (self.stage_k * b_per_row).is_multiple_of(units)
            && units.is_multiple_of(b_per_row)
    }
}

/// The width of the TMA slabs a block `width` elements wide arrives in: the whole row up to
/// 64 elements (128 bytes, the widest swizzle span), else 64.
const fn tma_slab(width: usize) -> usize {
    if width < 64 {
        width
    } else {
        64
    }
}

/// Whether a block of `rows` x `width` 2-byte elements arrives as swizzled TMA slabs: at
/// most 256 rows a box, and rows of 32, 64 or 128 bytes, or a whole number of 128-byte
/// slabs.
const fn tma_slabs_fit(rows: usize, width: usize) -> bool {
    rows <= 256 && (matches!(width, 16 | 32) || width.is_multiple_of(64))
}

/// Which operands of a problem the kernel may bring by TMA: each one that is one matrix for
/// every batch ([`one_matrix`]), on a device that has TMA ([`has_tma`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TmaReads {
    pub lhs: bool,
    pub rhs: bool,
}

impl TmaReads {
    /// What TMA may read of operands of these shapes, on a device with TMA or without.
    pub fn of(lhs_shape: &[usize], rhs_shape: &[usize], device_has_tma: bool) -> Self {
        Self {
            lhs: device_has_tma && one_matrix(lhs_shape),
            rhs: device_has_tma && one_matrix(rhs_shape),
        }
    }
}

/// The tiling the router runs this kernel with for `batches` products of `m x n` outputs of
/// `dtype` on a device with `multiprocessors` (if known), or `None` where it leaves the
/// problem to cubek's routine. `tma` says which operands may come by TMA. Only speed
/// depends on it: the kernel gives cubek's bits.
///
/// The kernel is taken for decode, where the work is streaming the weight: its copies skip
/// the rows a 16-row tile does not have, and with the rhs brought by TMA into deep stages it
/// keeps more of the weight in flight than cubek's loaders (the figures are on each tiling).
/// Up to 16 rows take [`PIPE_NARROW_TMA`], up to 64 [`PIPE_SKINNY_TMA`], each with six
/// stages where its cubes fit in one wave. Beyond one wave, up to 16 rows take four stages
/// ([`PIPE_NARROW_TMA_WIDE`]); from 33 rows, where the lhs can come by TMA too, the 64-row
/// cubes of [`PIPE_SQUARE_TMA`], which read the weight once, and otherwise four stages of
/// 32-row cubes ([`PIPE_SKINNY_TMA_WIDE`]). Without TMA for the rhs, single rows take
/// [`PIPE_NARROW`] or, past one wave, [`PIPE_NARROW_WIDE`], and more rows cubek's routine.
/// From M = 65 up cubek's routine stays: at M >= 1024 this kernel's best took 0.95-1.14x its
/// time, a gain of at most 5% on some shapes for a loss of 14% on another
/// (docs/performance.md, "What limits the matmul").
pub fn routed_tiling(
    m: usize,
    n: usize,
    batches: usize,
    tma: TmaReads,
    dtype: StorageType,
    multiprocessors: Option<u32>,
) -> Option<PipelinedTiling> {
    if m == 0 || m > super::SKINNY_MAX_M || !is_half(dtype) {
        return None;
    }
    let sms = multiprocessors.filter(|&s| s > 0)? as usize;
    let one_wave = |tiling: PipelinedTiling| {
        let (rows, cols) = tiling.cube_outputs();
        batches.max(1) * m.div_ceil(rows) * n.div_ceil(cols) <= sms
    };
    let deep_or_wide = |deep: PipelinedTiling, wide: PipelinedTiling| {
        Some(if one_wave(deep) { deep } else { wide })
    };
    match (tma.rhs, m) {
        (true, ..=16) => deep_or_wide(PIPE_NARROW_TMA, PIPE_NARROW_TMA_WIDE),
        (true, 33..) if tma.lhs => deep_or_wide(PIPE_SKINNY_TMA, PIPE_SQUARE_TMA),
        (true, _) => deep_or_wide(PIPE_SKINNY_TMA, PIPE_SKINNY_TMA_WIDE),
        (false, 1) => deep_or_wide(PIPE_NARROW, PIPE_NARROW_WIDE),
        (false, _) => None,
    }
}

/// Whether `dtype` runs on this kernel: the 2-byte floats `mma.sync` m16n8k16 takes.
pub fn is_half(dtype: StorageType) -> bool {
    matches!(
        dtype,
        StorageType::Scalar(ElemType::Float(FloatKind::F16 | FloatKind::BF16))
    )
}

/// `lhs: [batch.., M, K]` stored by rows, `rhs: [batch.., K, N]` stored by rows, both with
/// every row and batch starting on 16 bytes; `out` contiguous `[batch.., M, N]`; with
/// `has_bias`, `bias` a contiguous `[N]` added to each f32 accumulator before the one
/// rounding to `F`. `batch_shape` is the output's batch shape (at least one entry) and the
/// batch strides are the operands', 0 where broadcast. One cube per output tile.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub fn matmul_pipelined_kernel<F: Float>(
    lhs: &Tensor<F>,
    rhs: &Tensor<F>,
    bias: &Tensor<F>,
    out: &mut Tensor<F>,
    batch_shape: Sequence<FastDivmod<usize>>,
    lhs_batch_strides: Sequence<usize>,
    rhs_batch_strides: Sequence<usize>,
    m: usize,
    n: usize,
    k: usize,
    #[comptime] warps_m: usize,
    #[comptime] warps_n: usize,
    #[comptime] tiles_m: usize,
    #[comptime] tiles_n: usize,
    #[comptime] stage_k: usize,
    #[comptime] stages: usize,
    lhs_map: ComptimeOption<TensorMap<F, Tiled>>,
    rhs_map: ComptimeOption<TensorMap<F, Tiled>>,
    #[comptime] copy_warps: usize,
    #[comptime] lhs_tma: bool,
    #[comptime] rhs_tma: bool,
    #[comptime] has_bias: bool,
    #[define(F)] _dtype: StorageType,
) {
    let bm = comptime!(16 * tiles_m * warps_m);
    let bn = comptime!(8 * tiles_n * warps_n);
    // With TMA a block is stored as slabs of at most 64 elements a row (`a_slab` K entries of
    // the lhs, `b_slab` columns of the rhs), each slab's rows unpadded and swizzled; the pitch
    // is then the slab's row.
    let a_slab = comptime!(tma_slab(stage_k));
    let b_slab = comptime!(tma_slab(bn));
    let a_pitch = comptime!(if lhs_tma { a_slab } else { stage_k + ROW_PAD });
    let b_pitch = comptime!(if rhs_tma { b_slab } else { bn + ROW_PAD });
    let a_elems = comptime!(if lhs_tma { bm * stage_k } else { bm * a_pitch });
    let b_elems = comptime!(if rhs_tma {
        stage_k * bn
    } else {
        stage_k * b_pitch
    });
    let stage_elems = comptime!(a_elems + b_elems);
    let mma_warps = comptime!(warps_m * warps_n);
    let units = comptime!(PLANE * (mma_warps + copy_warps));
    let k_steps = comptime!(stage_k / 16);

    let rank = lhs.rank();
    let lhs_sm = lhs.stride(rank - 2);
    let rhs_sk = rhs.stride(rank - 2);

    // Which output tile this cube computes: grouped walk, GROUP_M tile rows column by
    // column, so that cubes running together share operand panels in L2.
    let grid_m = m.div_ceil(bm);
    let grid_n = n.div_ceil(bn);
    let per_batch = grid_m * grid_n;
    let batch = CUBE_POS / per_batch;
    let in_batch = CUBE_POS % per_batch;
    let group_len = GROUP_M * grid_n;
    let first_m = (in_batch / group_len) * GROUP_M;
    let rows_in_group = min(grid_m - first_m, GROUP_M);
    let tile_m = first_m + (in_batch % group_len) % rows_in_group;
    let tile_n = (in_batch % group_len) / rows_in_group;
    let row0 = tile_m * bm;
    let col0 = tile_n * bn;
    let lhs_base =
        index_offset_contiguous_fastdivmod(batch, &batch_shape, &lhs_batch_strides, 1usize);
    let rhs_base =
        index_offset_contiguous_fastdivmod(batch, &batch_shape, &rhs_batch_strides, 1usize);

    let lane = UNIT_POS_X as usize;
    let warp = UNIT_POS_Y as usize;
    let tid = warp * PLANE + lane;
    // Warps past `mma_warps` copy and wait with the others but hold no accumulators.
    let multiplies = warp < mma_warps;
    let warp_row = (warp % warps_m) * comptime!(16 * tiles_m);
    let warp_col = (warp / warps_m) * comptime!(8 * tiles_n);

    // Stage `s` keeps its lhs block at `blocks.a(s)` and its rhs block at `blocks.b(s)`. With
    // TMA the rhs blocks come first, then the lhs blocks, each slab on a multiple of 16
    // swizzled rows (of 1024 bytes at most), so that TMA's swizzle, a function of the
    // address, is one of the row within the slab; the memory is aligned on 1024 bytes for it.
    let blocks = comptime!(StageBlocks {
        rhs_first: rhs_tma,
        stages,
        a_elems,
        b_elems,
    });
    let mut smem = SharedMemory::<F>::new_aligned(
        comptime!(stages * stage_elems),
        comptime!(if rhs_tma { 1024usize } else { 128usize }),
    );
    // One barrier per stage: a stage's copies complete on it, and every thread arrives on
    // it before reading the stage, so that its next refill (issued after that wait) never
    // overwrites what a slower warp still reads.
    let mut bars = Sequence::<Shared<Barrier>>::new();
    #[unroll]
    for _ in 0..stages {
        bars.push(Barrier::shared(CUBE_DIM, UNIT_POS == 0));
    }
    if comptime!(rhs_tma) {
        // The barriers' initialization is seen by the TMA unit before its first copy.
        sync_async_proxy_shared();
    }
    sync_cube();

    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    let mut acc = Array::<Pair<f32>>::new(comptime!(tiles_m * tiles_n * 2));
    #[unroll]
    for i in 0..comptime!(tiles_m * tiles_n * 2) {
        acc[i] = Pair::<f32>::new(0.0);
    }

    // The lane's row address inside an `ldmatrix.x4`: lanes 8 i .. 8 i + 7 give the rows of
    // matrix i. For the lhs (stored M x K) matrix i is rows 8 (i % 2) .., K 8 (i / 2) ..:
    // the A fragment's four registers in order. For the rhs (stored K x N, read transposed)
    // matrix i is K 8 (i % 2) .., columns 8 (i / 2) ..: the B fragments of two 8-column
    // tiles.
    let quad = lane / 8;
    let a_lane_row = (warp_row + (quad % 2) * 8 + lane % 8) * a_pitch;
    let a_lane = a_lane_row + (quad / 2) * 8;
    let b_lane_row = ((quad % 2) * 8 + lane % 8) * b_pitch;
    let b_lane = b_lane_row + warp_col + (quad / 2) * 8;
    // In a swizzled slab `w` elements wide (TMA), the 16-byte chunk `c` of row `r` lies at
    // chunk `c ^ x`, `x` taken from the address bits above the 128-byte line:
    // `(r * w / 64) % (w / 8)`. The rows one lane reads differ by multiples of 8, which leave
    // `x` unchanged, so each lane works out where its `ldmatrix` chunks lie once: for the
    // rhs, by pair of 8-column tiles (slab and chunk); for the lhs, by the 16-deep step's
    // place in its slab.
    let b_swizzle = ((lane % 8) * b_slab / 64) % comptime!(b_slab / CHUNK);
    let mut b_cols = Array::<usize>::new(comptime!(tiles_n / 2));
    #[unroll]
    for jp in 0..comptime!(tiles_n / 2) {
        let chunk = warp_col / CHUNK + quad / 2 + comptime!(2 * jp);
        let slab = chunk / comptime!(b_slab / CHUNK);
        let in_slab = chunk % comptime!(b_slab / CHUNK);
        b_cols[jp] = slab * comptime!(stage_k * b_slab) + (in_slab ^ b_swizzle) * CHUNK;
    }
    let a_swizzle = ((lane % 8) * a_slab / 64) % comptime!(a_slab / CHUNK);
    let mut a_cols = Array::<usize>::new(comptime!(a_slab / 16));
    #[unroll]
    for c in 0..comptime!(a_slab / 16) {
        a_cols[c] = ((comptime!(2 * c) + quad / 2) ^ a_swizzle) * CHUNK;
    }

    // The thread's copies, worked out once: chunk `r` of the lhs block is tile row `a_row +
    // r * a_step`, K entries `a_kc ..` of the stage; chunk `r` of the rhs block is stage row
    // `b_row + r * b_step`, columns `b_col ..`. Columns past N copy no bytes (the copy fills
    // its 16 bytes with zeros) from a clamped, valid address. Rows past M are never copied:
    // they are zeroed once below, in every stage, so that a single row (decode) issues one
    // lhs copy per 16 rows' worth. Their outputs are never stored.
    let a_per_row = comptime!(stage_k / CHUNK);
    let a_step = comptime!(units / a_per_row);
    let a_iters = comptime!(bm * stage_k / CHUNK / units);
    let a_row = tid / a_per_row;
    let a_kc = (tid % a_per_row) * comptime!(CHUNK);
    let mut a_off = Array::<usize>::new(a_iters);
    let mut a_in_m = Array::<bool>::new(a_iters);
    #[unroll]
    for r in 0..a_iters {
        let row = row0 + a_row + r * a_step;
        a_off[r] = lhs_base + min(row, m - 1) * lhs_sm + a_kc;
        a_in_m[r] = row < m;
    }
    if comptime!(!lhs_tma) && row0 + bm > m {
        let a_zeros = comptime!(bm * a_pitch);
        #[unroll]
        for s in 0..stages {
            let mut at = tid;
            while at < a_zeros {
                if row0 + at / a_pitch >= m {
                    smem[comptime!(blocks.a(s)) + at] = F::new(0.0);
                }
                at += units;
            }
        }
    }
    let b_per_row = comptime!(bn / CHUNK);
    let b_step = comptime!(units / b_per_row);
    let b_row = tid / b_per_row;
    let b_col = col0 + (tid % b_per_row) * comptime!(CHUNK);
    let b_off = rhs_base + select(b_col < n, b_col, 0usize);
    let b_len = select(b_col < n, comptime!(CHUNK), 0usize);
    let plan = CopyPlan {
        a_kc,
        b_row,
        b_off,
        b_len,
        b_jump: b_step * rhs_sk,
    };

    let k_tiles = k.div_ceil(stage_k);
    // The prologue: the first `stages - 1` stages in flight.
    #[unroll]
    for s in 0..comptime!(stages - 1) {
        if s < k_tiles {
            fill_stage::<F>(
                lhs,
                rhs,
                &lhs_map,
                &rhs_map,
                bars.index(s),
                &mut smem,
                &a_off,
                &a_in_m,
                &plan,
                comptime!(blocks.a(s)),
                comptime!(blocks.b(s)),
                rhs_sk,
                s * stage_k,
                k,
                row0,
                col0,
                tid,
                bm,
                bn,
                stage_k,
                units,
                lhs_tma,
                rhs_tma,
            );
        }
        bars.index(s).commit_copy_async();
    }

    let mut first = 0usize;
    while first < k_tiles {
        // Unrolled over the stages, so each round's buffer and barrier are constants.
        #[unroll]
        for s in 0..stages {
            let t = first + s;
            if t < k_tiles {
                bars.index(s).arrive_and_wait();
                // Every thread has finished the previous round (it arrived above), so the
                // buffer that round read may be refilled.
                let refill = comptime!((s + stages - 1) % stages);
                let next = t + comptime!(stages - 1);
                if next < k_tiles {
                    fill_stage::<F>(
                        lhs,
                        rhs,
                        &lhs_map,
                        &rhs_map,
                        bars.index(refill),
                        &mut smem,
                        &a_off,
                        &a_in_m,
                        &plan,
                        comptime!(blocks.a(refill)),
                        comptime!(blocks.b(refill)),
                        rhs_sk,
                        next * stage_k,
                        k,
                        row0,
                        col0,
                        tid,
                        bm,
                        bn,
                        stage_k,
                        units,
                        lhs_tma,
                        rhs_tma,
                    );
                }
                bars.index(refill).commit_copy_async();

                if multiplies {
                    // The stage's 16-deep steps, in increasing K; the next step's fragments are
                    // loaded before this step's MMAs are issued.
                    let a_block = comptime!(blocks.a(s));
                    let b_lane_at = if comptime!(rhs_tma) {
                        b_lane_row
                    } else {
                        b_lane
                    };
                    let b_base = comptime!(blocks.b(s)) + b_lane_at;
                    let mut frags_a = Array::<Pair<F>>::new(comptime!(2 * tiles_m * 4));
                    let mut frags_b = Array::<Pair<F>>::new(comptime!(2 * tiles_n * 2));
                    load_fragments::<F>(
                        &smem,
                        &mut frags_a,
                        &mut frags_b,
                        a_block
                            + a_step_at(a_lane, a_lane_row, &a_cols, 0usize, bm, a_slab, lhs_tma),
                        b_base,
                        &b_cols,
                        0usize,
                        tiles_m,
                        tiles_n,
                        a_pitch,
                        rhs_tma,
                    );
                    #[unroll]
                    for ks in 0..k_steps {
                        if comptime!(ks + 1 < k_steps) {
                            load_fragments::<F>(
                                &smem,
                                &mut frags_a,
                                &mut frags_b,
                                a_block
                                    + a_step_at(
                                        a_lane,
                                        a_lane_row,
                                        &a_cols,
                                        comptime!(ks + 1),
                                        bm,
                                        a_slab,
                                        lhs_tma,
                                    ),
                                b_base + comptime!((ks + 1) * 16 * b_pitch),
                                &b_cols,
                                comptime!((ks + 1) % 2),
                                tiles_m,
                                tiles_n,
                                a_pitch,
                                rhs_tma,
                            );
                        }
                        let half = comptime!(ks % 2);
                        #[unroll]
                        for i in 0..tiles_m {
                            let mut a = Array::<Pair<F>>::new(4usize);
                            #[unroll]
                            for r in 0..4usize {
                                a[r] = frags_a[comptime!((half * tiles_m + i) * 4 + r)];
                            }
                            #[unroll]
                            for j in 0..tiles_n {
                                let mut b = Array::<Pair<F>>::new(2usize);
                                b[0usize] = frags_b[comptime!((half * tiles_n + j) * 2)];
                                b[1usize] = frags_b[comptime!((half * tiles_n + j) * 2 + 1)];
                                let mut c = Array::<Pair<f32>>::new(2usize);
                                c[0usize] = acc[comptime!((i * tiles_n + j) * 2)];
                                c[1usize] = acc[comptime!((i * tiles_n + j) * 2 + 1)];
                                def.execute_inplace(&a, &b, &mut c);
                                acc[comptime!((i * tiles_n + j) * 2)] = c[0usize];
                                acc[comptime!((i * tiles_n + j) * 2 + 1)] = c[1usize];
                            }
                        }
                    }
                }
            }
        }
        first += stages;
    }

    // The accumulators, each rounded once to F (after the bias, when there is one). The lane
    // holds columns `2 (lane % 4) ..` of rows `lane / 4` and `lane / 4 + 8` of each tile.
    if !multiplies {
        terminate!();
    }
    let out_base = batch * m * n;
    let lane_row = row0 + warp_row + lane / 4;
    let lane_col = col0 + warp_col + (lane % 4) * 2;
    #[unroll]
    for j in 0..tiles_n {
        let col = lane_col + j * 8;
        let mut beta = Pair::<f32>::new(0.0);
        if has_bias {
            #[unroll]
            for e in 0..2usize {
                if col + e < n {
                    beta[e] = f32::cast_from(bias[col + e]);
                }
            }
        }
        #[unroll]
        for i in 0..tiles_m {
            #[unroll]
            for h in 0..2usize {
                let row = lane_row + i * 16 + h * 8;
                let pair = acc[(i * tiles_n + j) * 2 + h];
                #[unroll]
                for e in 0..2usize {
                    let mut v = pair[e];
                    if has_bias {
                        v += beta[e];
                    }
                    if row < m && col + e < n {
                        out[out_base + row * n + col + e] = F::cast_from(v);
                    }
                }
            }
        }
    }
}

/// Where the blocks of each stage lie in shared memory (elements): by stage, the lhs block
/// then the rhs block, or, with `rhs_first`, every stage's rhs block before every lhs block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct StageBlocks {
    rhs_first: bool,
    stages: usize,
    a_elems: usize,
    b_elems: usize,
}

impl StageBlocks {
    /// Start of stage `s`'s lhs block.
    const fn a(&self, s: usize) -> usize {
        if self.rhs_first {
            self.stages * self.b_elems + s * self.a_elems
        } else {
            s * (self.a_elems + self.b_elems)
        }
    }

    /// Start of stage `s`'s rhs block.
    const fn b(&self, s: usize) -> usize {
        if self.rhs_first {
            s * self.b_elems
        } else {
            s * (self.a_elems + self.b_elems) + self.a_elems
        }
    }
}

/// The per-thread part of [`load_stage`] that does not change from stage to stage.
#[derive(CubeType)]
struct CopyPlan {
    /// K entry of the thread's lhs chunks within a stage.
    a_kc: usize,
    /// Stage row of the thread's first rhs chunk.
    b_row: usize,
    /// Offset of the thread's rhs column (clamped to column 0 past N).
    b_off: usize,
    /// Elements the thread's rhs chunks copy: 8, or 0 past N.
    b_len: usize,
    /// Offset between the thread's rhs chunks (`b_step` rows).
    b_jump: usize,
}

/// Issues every copy of one stage, whose blocks lie at `smem[a_block ..]` and
/// `smem[b_block ..]` and hold K entries `k0 ..`: the `cp.async` copies ([`load_stage`]) and
/// the blocks that come by TMA ([`load_tma_slabs`], completing on `bar`). The prologue and
/// each refill of the main loop issue a stage through here, so that both fill it alike.
#[cube]
#[allow(clippy::too_many_arguments)]
fn fill_stage<F: Float>(
    lhs: &Tensor<F>,
    rhs: &Tensor<F>,
    lhs_map: &ComptimeOption<TensorMap<F, Tiled>>,
    rhs_map: &ComptimeOption<TensorMap<F, Tiled>>,
    bar: &Barrier,
    smem: &mut SharedMemory<F>,
    a_off: &Array<usize>,
    a_in_m: &Array<bool>,
    plan: &CopyPlan,
    #[comptime] a_block: usize,
    #[comptime] b_block: usize,
    rhs_sk: usize,
    k0: usize,
    k: usize,
    row0: usize,
    col0: usize,
    tid: usize,
    #[comptime] bm: usize,
    #[comptime] bn: usize,
    #[comptime] stage_k: usize,
    #[comptime] units: usize,
    #[comptime] lhs_tma: bool,
    #[comptime] rhs_tma: bool,
) {
    load_stage::<F>(
        lhs, rhs, smem, a_off, a_in_m, plan, a_block, rhs_sk, k0, k, tid, bm, bn, stage_k, units,
        lhs_tma, rhs_tma,
    );
    #[comptime]
    if let ComptimeOption::Some(map) = rhs_map {
        load_tma_slabs::<F>(map, bar, smem, b_block, k0, col0, tid, stage_k, bn);
    }
    #[comptime]
    if let ComptimeOption::Some(map) = lhs_map {
        load_tma_slabs::<F>(map, bar, smem, a_block, row0, k0, tid, bm, stage_k);
    }
}

/// Issues the asynchronous copies of one stage: the lhs block (`bm` rows of `stage_k` K
/// entries from `k0`) to `smem[base ..]`, rows `stage_k + ROW_PAD` apart, then the rhs
/// block (`stage_k` K rows from `k0`, `bn` columns) after it, rows `bn + ROW_PAD` apart.
/// K entries past `k` arrive as zeros in both operands (a zero-length copy fills its 16
/// bytes with zeros), so the padded steps add exact zeros; so do columns past N (see the
/// plan). Rows past M are not copied: the kernel zeroed them once. K and N are multiples of
/// [`CHUNK`], so a copy is whole or empty.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_stage<F: Float>(
    lhs: &Tensor<F>,
    rhs: &Tensor<F>,
    smem: &mut SharedMemory<F>,
    a_off: &Array<usize>,
    a_in_m: &Array<bool>,
    plan: &CopyPlan,
    #[comptime] base: usize,
    rhs_sk: usize,
    k0: usize,
    k: usize,
    tid: usize,
    #[comptime] bm: usize,
    #[comptime] bn: usize,
    #[comptime] stage_k: usize,
    #[comptime] units: usize,
    #[comptime] lhs_tma: bool,
    #[comptime] rhs_tma: bool,
) {
    let a_pitch = comptime!(stage_k + ROW_PAD);
    let b_pitch = comptime!(bn + ROW_PAD);
    // Unless thread 0 brings the lhs block by TMA (`load_tma_slabs`).
    if comptime!(!lhs_tma) {
        let a_per_row = comptime!(stage_k / CHUNK);
        let a_step = comptime!(units / a_per_row);
        let a_iters = comptime!(bm * stage_k / CHUNK / units);
        let a_in_k = k0 + plan.a_kc < k;
        let a_shift = select(a_in_k, k0, 0usize);
        let a_dst = comptime!(base) + (tid / a_per_row) * a_pitch + plan.a_kc;
        let a_len = select(a_in_k, comptime!(CHUNK), 0usize);
        #[unroll]
        for r in 0..a_iters {
            if a_in_m[r] {
                let src = a_off[r] + a_shift;
                let dst = a_dst + comptime!(r * a_step * a_pitch);
                copy_async_checked(
                    &lhs.slice(src, src + a_len),
                    &mut smem.slice_mut(dst, dst + comptime!(CHUNK)),
                    comptime!(CHUNK as u32),
                );
            }
        }
    }
    // Unless thread 0 brings the rhs block by TMA (`load_tma_slabs`).
    if comptime!(!rhs_tma) {
        let b_per_row = comptime!(bn / CHUNK);
        let b_step = comptime!(units / b_per_row);
        let b_iters = comptime!(stage_k * bn / CHUNK / units);
        let b_src = plan.b_off + (k0 + plan.b_row) * rhs_sk;
        let b_dst = comptime!(base + bm * a_pitch)
            + plan.b_row * b_pitch
            + (tid % b_per_row) * comptime!(CHUNK);
        if k0 + comptime!(stage_k) <= k {
            // A whole stage: every row is in K.
            #[unroll]
            for r in 0..b_iters {
                let src = b_src + r * plan.b_jump;
                let dst = b_dst + comptime!(r * b_step * b_pitch);
                copy_async_checked(
                    &rhs.slice(src, src + plan.b_len),
                    &mut smem.slice_mut(dst, dst + comptime!(CHUNK)),
                    comptime!(CHUNK as u32),
                );
            }
        } else {
            #[unroll]
            for r in 0..b_iters {
                let in_k = k0 + plan.b_row + comptime!(r * b_step) < k;
                let src = select(in_k, b_src + r * plan.b_jump, plan.b_off);
                let len = select(in_k, plan.b_len, 0usize);
                let dst = b_dst + comptime!(r * b_step * b_pitch);
                copy_async_checked(
                    &rhs.slice(src, src + len),
                    &mut smem.slice_mut(dst, dst + comptime!(CHUNK)),
                    comptime!(CHUNK as u32),
                );
            }
        }
    }
}

/// One block of a stage (`rows` rows from `outer`, `width` elements from `inner`) by TMA
/// into `smem[base ..]`, as slabs of [`tma_slab`] elements a row stored one after another,
/// each unpadded and swizzled by the tensor map, completing on `bar`; issued by thread 0,
/// which also tells the barrier the bytes to wait for. TMA fills rows and columns past the
/// matrix with zeros, as the `cp.async` path does.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_tma_slabs<F: Float>(
    map: &TensorMap<F, Tiled>,
    bar: &Barrier,
    smem: &mut SharedMemory<F>,
    #[comptime] base: usize,
    outer: usize,
    inner: usize,
    tid: usize,
    #[comptime] rows: usize,
    #[comptime] width: usize,
) {
    let slab = comptime!(tma_slab(width));
    if tid == 0 {
        bar.expect_tx(comptime!((rows * width * 2) as u32));
        #[unroll]
        for j in 0..comptime!(width / slab) {
            let at = comptime!(base + j * rows * slab);
            bar.tma_load_2d::<F, F>(
                map,
                &mut smem.slice_mut(at, at + comptime!(rows * slab)),
                i32::cast_from(outer),
                i32::cast_from(inner + comptime!(j * slab)),
            );
        }
    }
}

/// Where the lane's `ldmatrix` row address for the lhs lies at 16-deep step `ks` of a stage,
/// from its block's start: `a_lane` and K in a padded block, or in a `swizzled` one (TMA)
/// the slab of the step, the lane's row in it and the swizzled chunk of the step.
#[cube]
fn a_step_at(
    a_lane: usize,
    a_lane_row: usize,
    a_cols: &Array<usize>,
    #[comptime] ks: usize,
    #[comptime] bm: usize,
    #[comptime] a_slab: usize,
    #[comptime] swizzled: bool,
) -> usize {
    if comptime!(swizzled) {
        a_lane_row
            + comptime!(ks * 16 / a_slab * bm * a_slab)
            + a_cols[comptime!(ks * 16 % a_slab / 16)]
    } else {
        a_lane + comptime!(ks * 16)
    }
}

/// The warp's A fragments (`tiles_m` 16-row tiles) and B fragments (`tiles_n` 8-column
/// tiles) of one 16-deep step, into half `half` of the fragment arrays. `a_at` and `b_at`
/// are the lane's `ldmatrix` row addresses for the step's first tiles; in a `swizzled` rhs
/// block `b_at` is the row's start and `b_cols` the lane's columns, by pair of tiles.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_fragments<F: Float>(
    smem: &SharedMemory<F>,
    frags_a: &mut Array<Pair<F>>,
    frags_b: &mut Array<Pair<F>>,
    a_at: usize,
    b_at: usize,
    b_cols: &Array<usize>,
    #[comptime] half: usize,
    #[comptime] tiles_m: usize,
    #[comptime] tiles_n: usize,
    #[comptime] a_pitch: usize,
    #[comptime] swizzled: bool,
) {
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    #[unroll]
    for i in 0..tiles_m {
        let at = a_at + comptime!(i * 16 * a_pitch);
        let regs =
            def.load_matrix::<F, Const<2>>(&smem.slice(at, at + 8), MatrixIdent::A, 4usize, false);
        #[unroll]
        for r in 0..4usize {
            frags_a[comptime!((half * tiles_m + i) * 4 + r)] = regs[r];
        }
    }
    #[unroll]
    for jp in 0..comptime!(tiles_n / 2) {
        let at = if comptime!(swizzled) {
            b_at + b_cols[jp]
        } else {
            b_at + comptime!(jp * 16)
        };
        let regs =
            def.load_matrix::<F, Const<2>>(&smem.slice(at, at + 8), MatrixIdent::B, 4usize, true);
        #[unroll]
        for r in 0..4usize {
            frags_b[comptime!((half * tiles_n + jp * 2) * 2 + r)] = regs[r];
        }
    }
}

/// 128x128 outputs per cube, four warps of 64x64, 64 K entries per stage, three stages, by
/// `cp.async` copies: [`PIPE_MEDIUM_TMA`] without TMA, for devices that lack it.
pub const PIPE_MEDIUM: PipelinedTiling = PipelinedTiling {
    name: "pipe-128x128",
    warps: (2, 2),
    warp_tiles: (4, 8),
    stage_k: 64,
    stages: 3,
    copy_warps: 0,
    rhs_tma: false,
    lhs_tma: false,
};

/// 64x64 outputs per cube, four warps of 64x16, 64 K entries per stage: up to 64 rows.
pub const PIPE_SKINNY: PipelinedTiling = PipelinedTiling {
    name: "pipe-64x64",
    warps: (1, 4),
    warp_tiles: (4, 2),
    stage_k: 64,
    stages: 4,
    copy_warps: 0,
    rhs_tma: false,
    lhs_tma: false,
};

/// 16x32 outputs per cube, two warps of 16x16, 128 K entries per stage: decode, where the
/// work is reading the weight, spread over as many cubes as the columns allow.
pub const PIPE_NARROW: PipelinedTiling = PipelinedTiling {
    name: "pipe-16x32",
    warps: (1, 2),
    warp_tiles: (1, 2),
    stage_k: 128,
    stages: 4,
    copy_warps: 0,
    rhs_tma: false,
    lhs_tma: false,
};

/// 16x64 outputs per cube, four warps of 16x16, 128 K entries per stage: decode on wide
/// weights, where [`PIPE_NARROW`]'s cubes would run in several waves (at M = 1, K = 4096,
/// N = 14336 on an H100: 0.0538 ms, against 0.0639 for [`PIPE_NARROW`] and 0.0547 for two
/// warps of 16x32).
pub const PIPE_NARROW_WIDE: PipelinedTiling = PipelinedTiling {
    name: "pipe-16x64",
    warps: (1, 4),
    warp_tiles: (1, 2),
    stage_k: 128,
    stages: 4,
    copy_warps: 0,
    rhs_tma: false,
    lhs_tma: false,
};

/// [`PIPE_NARROW_WIDE`]'s cubes with the rhs by TMA into six stages: up to 16 rows where the
/// cubes fit in one wave, so that each multiprocessor keeps one cube's deep pipeline in
/// flight. At M = 1 on an H100 in bf16: 0.0225 ms at K = N = 4096 and 0.0566 at K = 14336,
/// N = 4096, against 0.0249 and 0.0671 for cubek's routine and 0.0274 and 0.0612 for
/// [`PIPE_NARROW`].
pub const PIPE_NARROW_TMA: PipelinedTiling = PipelinedTiling {
    name: "pipe-16x64-tma6",
    stages: 6,
    rhs_tma: true,
    ..PIPE_NARROW_WIDE
};

/// [`PIPE_NARROW_TMA`] with four stages: up to 16 rows where the cubes overflow one wave and
/// two fit on a multiprocessor. At M = 1, K = 4096, N = 14336: 0.0553 ms, against 0.0575
/// for six stages, 0.0565 for cubek's routine and 0.0575 for [`PIPE_NARROW_WIDE`].
pub const PIPE_NARROW_TMA_WIDE: PipelinedTiling = PipelinedTiling {
    name: "pipe-16x64-tma4",
    stages: 4,
    ..PIPE_NARROW_TMA
};

/// 32x64 outputs per cube, four warps of 16x32, 128 K entries per stage, the rhs by TMA into
/// six stages: 16 < M <= 64 where the cubes fit in one wave. At M = 64 on an H100 in bf16:
/// 0.0253 ms at K = N = 4096 and 0.0668 at K = 14336, N = 4096, against 0.0279 and 0.0750
/// for cubek's routine.
pub const PIPE_SKINNY_TMA: PipelinedTiling = PipelinedTiling {
    name: "pipe-32x64-tma6",
    warps: (2, 2),
    warp_tiles: (1, 4),
    stage_k: 128,
    stages: 6,
    copy_warps: 0,
    rhs_tma: true,
    lhs_tma: false,
};

/// [`PIPE_SKINNY_TMA`] with four stages, two cubes to a multiprocessor: 16 < M <= 32 where
/// the cubes overflow one wave, and up to 64 rows there where the lhs cannot come by TMA
/// ([`PIPE_SQUARE_TMA`] needs it). At M = 64, K = 4096, N = 14336: 0.0687 ms, against 0.0796
/// for six stages and 0.0762 for cubek's routine.
pub const PIPE_SKINNY_TMA_WIDE: PipelinedTiling = PipelinedTiling {
    name: "pipe-32x64-tma4",
    stages: 4,
    ..PIPE_SKINNY_TMA
};

/// [`PIPE_MEDIUM`]'s cubes with the rhs by TMA, two cubes per multiprocessor: the fastest
/// tiling of this kernel measured at M >= 1024, 0.95-1.14x the time of cubek's routine on an
/// H100 in bf16, so not routed. Both operands by TMA took 0.95-1.08x its time; four stages
/// and eight-warp cubes (128x256, 256x128) were slower.
pub const PIPE_MEDIUM_TMA: PipelinedTiling = PipelinedTiling {
    name: "pipe-128x128-tma",
    rhs_tma: true,
    ..PIPE_MEDIUM
};

/// 64x64 outputs per cube, four warps of 32x32, 64 K entries per stage in four stages, both
/// operands by TMA (64 KB, three cubes per multiprocessor): 32 < M <= 64 where 32-row cubes
/// would overflow one wave, since one 64-row cube reads its weight columns once. At M = 64,
/// K = 4096, N = 14336 on an H100 in bf16: 0.0562 ms, against 0.0680 for
/// [`PIPE_SKINNY_TMA_WIDE`], 0.0652 with the lhs by `cp.async`, and 0.0530 for cuBLAS.
pub const PIPE_SQUARE_TMA: PipelinedTiling = PipelinedTiling {
    name: "pipe-64x64-tma2",
    warps: (2, 2),
    warp_tiles: (2, 4),
    stage_k: 64,
    stages: 4,
    copy_warps: 0,
    rhs_tma: true,
    lhs_tma: true,
};

/// The tilings the benchmark sweeps by default and the suite compares with the routed result
/// bitwise.
pub const PIPELINED_TILINGS: [PipelinedTiling; 10] = [
    PIPE_NARROW,
    PIPE_NARROW_WIDE,
    PIPE_NARROW_TMA,
    PIPE_NARROW_TMA_WIDE,
    PIPE_SKINNY_TMA,
    PIPE_SKINNY_TMA_WIDE,
    PIPE_SQUARE_TMA,
    PIPE_SKINNY,
    PIPE_MEDIUM,
    PIPE_MEDIUM_TMA,
];

/// Whether the runtime behind `client` has the Tensor Memory Accelerator (sm_90 and up),
/// which the `rhs_tma` tilings need.
pub fn has_tma<R: Runtime>(client: &ComputeClient<R>) -> bool {
    client.properties().features.tma.contains(Tma::Base)
}

/// Whether `tiling` reads operands of these shapes: an operand brought by TMA is one matrix
/// for every batch ([`one_matrix`]), the tensor map describing its last two dims.
pub fn reads_operands(tiling: PipelinedTiling, lhs_shape: &[usize], rhs_shape: &[usize]) -> bool {
    (!tiling.lhs_tma || one_matrix(lhs_shape)) && (!tiling.rhs_tma || one_matrix(rhs_shape))
}

/// Whether an operand of this shape is one matrix for every batch: batch dims of extent 1.
pub fn one_matrix(shape: &[usize]) -> bool {
    shape[..shape.len().saturating_sub(2)]
        .iter()
        .all(|&e| e == 1)
}

/// Whether the runtime behind `client` runs this kernel for `dtype` with `tiling`: f16 or
/// bf16, `mma.sync` m16n8k16 with 32-lane warps, and the tiling's shared memory.
pub fn is_supported<R: Runtime>(
    client: &ComputeClient<R>,
    dtype: StorageType,
    tiling: PipelinedTiling,
) -> bool {
    let properties = client.properties();
    is_half(dtype)
        && tiling.is_valid()
        && (!tiling.rhs_tma || has_tma(client))
        && super::tensor_core::is_supported(client, dtype, super::TileKind::MmaSync)
        && properties.hardware.plane_size_min == PLANE as u32
        && tiling.shared_bytes() + 64 <= properties.hardware.max_shared_memory_size
        && tiling.units() <= properties.hardware.max_units_per_cube as usize
}

/// Whether the kernel reads `b` as stored: rows contiguous, and every row and batch starting
/// on 16 bytes (its copies move 16 aligned bytes). `b` has had its extent-1 strides
/// normalised. Depends on the layout and K or N, never on M alone.
pub fn reads_as_stored<R: Runtime>(b: &TensorBinding<R>) -> bool {
    let rank = b.shape.len();
    let offset = b.handle.offset_start.unwrap_or(0);
    b.strides[rank - 1] == 1
        && b.shape[rank - 1].is_multiple_of(CHUNK)
        && b.strides[..rank - 1]
            .iter()
            .all(|s| s.is_multiple_of(CHUNK))
        && offset.is_multiple_of(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every listed tiling runs on a device with 227 KiB of shared memory per cube and at
    /// most 1024 threads.
    #[test]
    fn listed_tilings_are_valid() {
        for tiling in PIPELINED_TILINGS {
            assert!(tiling.is_valid(), "{}", tiling.name);
            assert!(tiling.shared_bytes() <= 227 * 1024, "{}", tiling.name);
            assert!(tiling.units() <= 1024, "{}", tiling.name);
        }
        // An odd number of 8-column tiles per warp is refused (they load in pairs).
        let odd = PipelinedTiling {
            warp_tiles: (4, 3),
            ..PIPE_MEDIUM
        };
        assert!(!odd.is_valid());
        // Three warps cannot split a 32x16 rhs stage (64 chunks) evenly.
        let uneven = PipelinedTiling {
            name: "uneven",
            warps: (3, 1),
            warp_tiles: (1, 2),
            stage_k: 32,
            stages: 2,
            copy_warps: 0,
            rhs_tma: false,
            lhs_tma: false,
        };
        assert!(!uneven.is_valid());
    }

    /// Blocks brought by TMA arrive as slabs of at most 128 bytes a row; the lhs only beside
    /// the rhs, whose blocks come first and must leave the lhs blocks on 1024 bytes.
    #[test]
    fn tma_blocks_arrive_in_slabs() {
        let both = PipelinedTiling {
            name: "both",
            warps: (2, 4),
            warp_tiles: (4, 8),
            stage_k: 64,
            stages: 4,
            copy_warps: 0,
            rhs_tma: true,
            lhs_tma: true,
        };
        assert!(both.is_valid());
        assert_eq!((both.lhs_slab(), both.rhs_slab()), (64, 64));
        // Unpadded blocks: 128x64 and 64x256 per stage.
        assert_eq!(both.shared_bytes(), 2 * 4 * (128 * 64 + 64 * 256));
        assert_eq!(PIPE_NARROW_TMA.rhs_slab(), 64);
        let narrow = PipelinedTiling {
            warps: (1, 2),
            ..PIPE_NARROW_TMA
        };
        assert_eq!(narrow.rhs_slab(), 32);
        assert!(!PipelinedTiling {
            rhs_tma: false,
            ..both
        }
        .is_valid());
        // 48 K entries a row are neither one swizzle span nor whole 128-byte slabs.
        assert!(!PipelinedTiling {
            stage_k: 48,
            ..both
        }
        .is_valid());
        // Three stages of a 16x16 rhs block (512 bytes each) would leave the lhs blocks off
        // 1024 bytes.
        let small = PipelinedTiling {
            name: "small",
            warps: (1, 1),
            warp_tiles: (1, 2),
            stage_k: 16,
            stages: 3,
            copy_warps: 0,
            rhs_tma: true,
            lhs_tma: true,
        };
        assert!(!small.is_valid());
        assert!(PipelinedTiling { stages: 2, ..small }.is_valid());
    }

    #[test]
    fn cube_outputs_follow_warps_and_tiles() {
        assert_eq!(PIPE_MEDIUM.cube_outputs(), (128, 128));
        assert_eq!(PIPE_NARROW.cube_outputs(), (16, 32));
        assert_eq!(PIPE_NARROW_WIDE.cube_outputs(), (16, 64));
        assert_eq!(PIPE_NARROW_WIDE.units(), 128);
        // Three stages of a 128x64 lhs block and a 64x128 rhs block, rows padded by 8.
        assert_eq!(PIPE_MEDIUM.shared_bytes(), 2 * 3 * (128 * 72 + 64 * 136));
    }

    /// Decode only (M <= 64), in f16 and bf16, with a known multiprocessor count: the TMA
    /// tilings for a single rhs matrix, deep while the cubes fit in one wave, 64-row cubes
    /// beyond from 33 rows where the lhs is one matrix too; single rows only, without TMA,
    /// for a batched rhs.
    #[test]
    fn router_takes_decode() {
        let bf16 = StorageType::Scalar(ElemType::Float(FloatKind::BF16));
        let f32 = StorageType::Scalar(ElemType::Float(FloatKind::F32));
        let route = |m, n, batches, matrix: bool| {
            let tma = TmaReads {
                lhs: matrix,
                rhs: matrix,
            };
            routed_tiling(m, n, batches, tma, bf16, Some(132))
        };
        // 64 cubes of 16x64, then 224.
        assert_eq!(route(1, 4096, 1, true), Some(PIPE_NARROW_TMA));
        assert_eq!(route(16, 4096, 1, true), Some(PIPE_NARROW_TMA));
        assert_eq!(route(1, 14336, 1, true), Some(PIPE_NARROW_TMA_WIDE));
        // 128 cubes of 32x64, then 448; three products of 64 narrow cubes overflow.
        assert_eq!(route(64, 4096, 1, true), Some(PIPE_SKINNY_TMA));
        assert_eq!(route(17, 4096, 1, true), Some(PIPE_SKINNY_TMA));
        // Past one wave: 224 cubes of 64 rows from M = 33, or of 32 rows up to 32, or where
        // the lhs cannot come by TMA.
        assert_eq!(route(64, 14336, 1, true), Some(PIPE_SQUARE_TMA));
        assert_eq!(route(33, 14336, 1, true), Some(PIPE_SQUARE_TMA));
        assert_eq!(route(32, 14336, 1, true), Some(PIPE_SKINNY_TMA_WIDE));
        let rhs_only = TmaReads {
            lhs: false,
            rhs: true,
        };
        assert_eq!(
            routed_tiling(64, 14336, 1, rhs_only, bf16, Some(132)),
            Some(PIPE_SKINNY_TMA_WIDE)
        );
        assert_eq!(route(1, 4096, 3, true), Some(PIPE_NARROW_TMA_WIDE));
        // A batched rhs: single rows without TMA, 128 narrow cubes per product.
        assert_eq!(route(1, 4096, 1, false), Some(PIPE_NARROW));
        assert_eq!(route(1, 4096, 2, false), Some(PIPE_NARROW_WIDE));
        assert_eq!(route(2, 4096, 1, false), None);
        assert_eq!(route(65, 4096, 1, true), None);
        assert_eq!(route(0, 4096, 1, true), None);
        let both = TmaReads {
            lhs: true,
            rhs: true,
        };
        assert_eq!(routed_tiling(1, 4096, 1, both, f32, Some(132)), None);
        assert_eq!(routed_tiling(1, 4096, 1, both, bf16, None), None);
    }

    /// A TMA tiling reads one rhs matrix for every batch, the others any rhs.
    #[test]
    fn tma_tilings_read_one_rhs_matrix() {
        let lhs = [2, 5, 64];
        assert!(reads_operands(PIPE_NARROW_TMA, &lhs, &[64, 32]));
        assert!(reads_operands(PIPE_NARROW_TMA, &lhs, &[1, 1, 64, 32]));
        assert!(!reads_operands(PIPE_NARROW_TMA, &lhs, &[2, 64, 32]));
        assert!(reads_operands(PIPE_NARROW, &lhs, &[2, 64, 32]));
        let both = PipelinedTiling {
            lhs_tma: true,
            ..PIPE_NARROW_TMA
        };
        assert!(!reads_operands(both, &lhs, &[64, 32]));
        assert!(reads_operands(both, &[1, 5, 64], &[64, 32]));
    }
}
