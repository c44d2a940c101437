//! The portable persistent matmul: the path for runtimes without tensor cores (lavapipe in
//! CI), for K = 0 and for IEEE f32 (`F32Precision::Ieee`).
//!
//! A fixed grid of cubes walks the output tiles (in grouped order for square tiles: a group
//! of [`GROUP_M`] tile rows is finished column by column before the next, so neighbouring
//! cubes share operand tiles in cache, as vLLM's `GROUP_SIZE_M` swizzle does). For each
//! tile, K is consumed in steps staged through shared memory, and each thread adds
//! `a[m][k] * b[k][n]` into its f32 accumulators for k = 0, 1, 2, ... in order. The layout,
//! the tile walk and the grid size only decide *who* computes an element; the sum is always
//! the same chain of K multiply-adds, so every tiling gives the same bits.
//!
//! Two layouts share that chain. Square tiles ([`matmul_portable_kernel`]) reuse each staged
//! operand across many outputs, which is what large problems need. A few rows
//! ([`matmul_portable_rows_kernel`]) leave square tiles mostly empty and every step waiting
//! on its loads, so there a warp's lanes take 32 neighbouring columns, the warps take the
//! rows, and the next step's operands are loaded into registers while the current one is
//! multiplied: a row's weight stream stays in flight.

use cubecl::prelude::*;
use cubecl::std::tensor::index_offset_contiguous_fastdivmod;
use cubecl::std::FastDivmod;

/// Threads per cube along each side.
pub const CUBE_SIDE: u32 = 16;
/// K entries staged through shared memory per step.
pub const STEP_K: usize = 16;
/// Tile rows per group of the grouped walk.
pub const GROUP_M: usize = 8;

/// How a portable tiling lays out its tile; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortableLayout {
    /// 16x16 threads, each owning `per_thread x per_thread` outputs, rows `ty + 16 i` and
    /// columns `tx + 16 j`: a tile `16 per_thread` square ([`matmul_portable_kernel`]).
    Square,
    /// [`ROWS_WARPS`] warps of [`ROWS_COLS`] lanes, lane `tx` owning column `tx` and warp
    /// `ty` rows `ty + ROWS_WARPS i` for `i < per_thread`: a tile `ROWS_WARPS per_thread`
    /// rows by [`ROWS_COLS`] columns ([`matmul_portable_rows_kernel`]).
    Rows,
}

/// How the portable kernel blocks its tile. It decides which thread computes an output,
/// never how: every tiling gives the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortableTiling {
    pub name: &'static str,
    pub per_thread: usize,
    pub layout: PortableLayout,
}

impl PortableTiling {
    /// Output rows of one tile.
    pub const fn tile_rows(&self) -> usize {
        match self.layout {
            PortableLayout::Square => self.per_thread * CUBE_SIDE as usize,
            PortableLayout::Rows => self.per_thread * ROWS_WARPS,
        }
    }

    /// Output columns of one tile.
    pub const fn tile_cols(&self) -> usize {
        match self.layout {
            PortableLayout::Square => self.per_thread * CUBE_SIDE as usize,
            PortableLayout::Rows => ROWS_COLS,
        }
    }
}

/// 32x32 tiles, 2x2 outputs a thread: small problems spread over many cubes.
pub const PORTABLE_NARROW: PortableTiling = PortableTiling {
    name: "narrow",
    per_thread: 2,
    layout: PortableLayout::Square,
};
/// 128x128 tiles, 8x8 outputs a thread: 64 multiply-adds for 16 shared-memory reads per K
/// entry, the register blocking large problems need to approach the arithmetic peak.
pub const PORTABLE_WIDE: PortableTiling = PortableTiling {
    name: "wide",
    per_thread: 8,
    layout: PortableLayout::Square,
};
/// 8x32 tiles, one row a warp: decode, where each output row is one token.
pub const PORTABLE_ROWS: PortableTiling = PortableTiling {
    name: "rows",
    per_thread: 1,
    layout: PortableLayout::Rows,
};
/// 32x32 tiles, four rows a warp: a few dozen rows, each staged weight entry used four
/// times per thread.
pub const PORTABLE_ROWS_32: PortableTiling = PortableTiling {
    name: "rows-32",
    per_thread: 4,
    layout: PortableLayout::Rows,
};
/// Every portable tiling; the tests compare them bitwise.
pub const PORTABLE_TILINGS: [PortableTiling; 4] = [
    PORTABLE_NARROW,
    PORTABLE_WIDE,
    PORTABLE_ROWS,
    PORTABLE_ROWS_32,
];

/// Lanes of a rows tile, one output column each, so that a warp reads a weight row's
/// neighbouring entries together.
pub const ROWS_COLS: usize = 32;
/// Warps of a rows tile.
pub const ROWS_WARPS: usize = 8;
/// K entries a rows tile stages per step: 16 KB of f32 weight in flight per cube.
pub const ROWS_STEP_K: usize = 128;

/// `lhs: [batch.., M, K]`, `rhs: [batch.., K, N]` with any strides; `out` contiguous
/// `[batch.., M, N]`; with `has_bias`, `bias` contiguous `[N]` added to every row.
/// `batch_shape` is the output's batch shape (at least one entry) and
/// `lhs_batch_strides`/`rhs_batch_strides` the operands' batch strides with broadcast dims
/// set to 0. `per_thread` is [`PortableTiling::per_thread`] of a [`PortableLayout::Square`]
/// tiling.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub fn matmul_portable_kernel<F: Float>(
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
    num_batches: usize,
    #[comptime] per_thread: usize,
    #[comptime] has_bias: bool,
    #[define(F)] _dtype: StorageType,
) {
    let side = comptime!(CUBE_SIDE as usize);
    let tile_len = comptime!(per_thread * CUBE_SIDE as usize);
    let rank = lhs.rank();
    let lhs_sm = lhs.stride(rank - 2);
    let lhs_sk = lhs.stride(rank - 1);
    let rhs_sk = rhs.stride(rank - 2);
    let rhs_sn = rhs.stride(rank - 1);

    let tiles_m = m.div_ceil(tile_len);
    let tiles_n = n.div_ceil(tile_len);
    let tiles_per_batch = tiles_m * tiles_n;
    let num_tiles = tiles_per_batch * num_batches;

    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let flat = ty * side + tx;

    let mut lhs_tile = SharedMemory::<f32>::new(comptime!(tile_len * STEP_K));
    let mut rhs_tile = SharedMemory::<f32>::new(comptime!(STEP_K * tile_len));
    let mut acc = Array::<f32>::new(comptime!(per_thread * per_thread));
    let mut a = Array::<f32>::new(per_thread);
    let mut b = Array::<f32>::new(per_thread);

    let mut tile = CUBE_POS;
    while tile < num_tiles {
        let batch = tile / tiles_per_batch;
        let in_batch = tile % tiles_per_batch;
        // Grouped walk: GROUP_M tile rows, column by column.
        let group_len = GROUP_M * tiles_n;
        let group = in_batch / group_len;
        let first_m = group * GROUP_M;
        let rows_in_group = min(tiles_m - first_m, GROUP_M);
        let tile_m = first_m + (in_batch % group_len) % rows_in_group;
        let tile_n = (in_batch % group_len) / rows_in_group;

        let lhs_base =
            index_offset_contiguous_fastdivmod(batch, &batch_shape, &lhs_batch_strides, 1usize);
        let rhs_base =
            index_offset_contiguous_fastdivmod(batch, &batch_shape, &rhs_batch_strides, 1usize);
        let row0 = tile_m * tile_len + ty;
        let col0 = tile_n * tile_len + tx;

        #[unroll]
        for i in 0..per_thread * per_thread {
            acc[i] = 0.0f32;
        }

        let mut k0 = 0;
        while k0 < k {
            // The cube stages a `tile x STEP_K` lhs block and a `STEP_K x tile` rhs block,
            // `per_thread` entries of each per thread; entries past M, N or K are zeros and
            // only ever meet zeros or unwritten outputs.
            #[unroll]
            for part in 0..per_thread {
                let e = flat + part * comptime!(CUBE_SIDE as usize * CUBE_SIDE as usize);
                let r = e / STEP_K;
                let c = e % STEP_K;
                let gm = tile_m * tile_len + r;
                let gk = k0 + c;
                let mut x = 0.0f32;
                if gm < m && gk < k {
                    x = f32::cast_from(lhs[lhs_base + gm * lhs_sm + gk * lhs_sk]);
                }
                lhs_tile[e] = x;

                let rk = e / tile_len;
                let rc = e % tile_len;
                let bk = k0 + rk;
                let bn = tile_n * tile_len + rc;
                let mut y = 0.0f32;
                if bk < k && bn < n {
                    y = f32::cast_from(rhs[rhs_base + bk * rhs_sk + bn * rhs_sn]);
                }
                rhs_tile[e] = y;
            }
            sync_cube();

            // One multiply-add per output and k, in increasing k.
            #[unroll]
            for kk in 0..STEP_K {
                #[unroll]
                for i in 0..per_thread {
                    a[i] = lhs_tile[(ty + i * side) * STEP_K + kk];
                }
                #[unroll]
                for j in 0..per_thread {
                    b[j] = rhs_tile[kk * tile_len + tx + j * side];
                }
                #[unroll]
                for i in 0..per_thread {
                    #[unroll]
                    for j in 0..per_thread {
                        acc[i * per_thread + j] += a[i] * b[j];
                    }
                }
            }
            sync_cube();
            k0 += STEP_K;
        }

        // The bias joins the f32 sums after the last K step; one rounding to F follows.
        let out_base = batch * m * n;
        #[unroll]
        for j in 0..per_thread {
            let col = col0 + j * side;
            let mut beta = 0.0f32;
            if has_bias && col < n {
                beta = f32::cast_from(bias[col]);
            }
            #[unroll]
            for i in 0..per_thread {
                let row = row0 + i * side;
                let mut v = acc[i * per_thread + j];
                if has_bias {
                    v += beta;
                }
                if row < m && col < n {
                    out[out_base + row * n + col] = F::cast_from(v);
                }
            }
        }
        tile += CUBE_COUNT;
    }
}

/// The [`PortableLayout::Rows`] kernel; arguments as [`matmul_portable_kernel`]'s. Each step
/// stages a `tile_rows x ROWS_STEP_K` lhs block and a `ROWS_STEP_K x ROWS_COLS` rhs block;
/// the threads load the next step's blocks into registers before multiplying the current
/// one, and store them once every warp is done with it. Entries past M, N or K are zeros
/// and only ever meet zeros or unwritten outputs, as in the square kernel.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub fn matmul_portable_rows_kernel<F: Float>(
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
    num_batches: usize,
    #[comptime] per_thread: usize,
    #[comptime] has_bias: bool,
    #[define(F)] _dtype: StorageType,
) {
    let tile_rows = comptime!(ROWS_WARPS * per_thread);
    let units = comptime!(ROWS_WARPS * ROWS_COLS);
    let a_per = comptime!(tile_rows * ROWS_STEP_K / units);
    let b_per = comptime!(ROWS_STEP_K * ROWS_COLS / units);
    let rank = lhs.rank();
    let lhs_sm = lhs.stride(rank - 2);
    let lhs_sk = lhs.stride(rank - 1);
    let rhs_sk = rhs.stride(rank - 2);
    let rhs_sn = rhs.stride(rank - 1);

    let tiles_m = m.div_ceil(tile_rows);
    let tiles_n = n.div_ceil(ROWS_COLS);
    let tiles_per_batch = tiles_m * tiles_n;
    let num_tiles = tiles_per_batch * num_batches;

    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let flat = ty * ROWS_COLS + tx;

    // Which block entries the thread copies: entry `p` is row `a_row + p * a_row_step`, K
    // `a_k + p * a_k_step` of the lhs block, and K `b_k + p * b_k_step`, column `b_col + p *
    // b_col_step` of the rhs block. Neighbouring threads walk an operand's unit-stride dim,
    // so that their loads coalesce; the walk decides only who copies an entry.
    let lhs_by_k = lhs_sk == 1 || lhs_sm != 1;
    let a_row = select(lhs_by_k, flat / ROWS_STEP_K, flat % tile_rows);
    let a_k = select(lhs_by_k, flat % ROWS_STEP_K, flat / tile_rows);
    let a_row_step = select(lhs_by_k, comptime!(units / ROWS_STEP_K), 0usize);
    let a_k_step = select(lhs_by_k, 0usize, comptime!(units / tile_rows));
    let rhs_by_n = rhs_sn == 1 || rhs_sk != 1;
    let b_k = select(rhs_by_n, flat / ROWS_COLS, flat % ROWS_STEP_K);
    let b_col = select(rhs_by_n, flat % ROWS_COLS, flat / ROWS_STEP_K);
    let b_k_step = select(rhs_by_n, comptime!(units / ROWS_COLS), 0usize);
    let b_col_step = select(rhs_by_n, 0usize, comptime!(units / ROWS_STEP_K));

    let mut lhs_tile = SharedMemory::<f32>::new(comptime!(tile_rows * ROWS_STEP_K));
    let mut rhs_tile = SharedMemory::<f32>::new(comptime!(ROWS_STEP_K * ROWS_COLS));
    let mut a_next = Array::<f32>::new(a_per);
    let mut b_next = Array::<f32>::new(b_per);
    let mut acc = Array::<f32>::new(per_thread);

    let mut tile = CUBE_POS;
    while tile < num_tiles {
        let batch = tile / tiles_per_batch;
        let in_batch = tile % tiles_per_batch;
        let row0 = (in_batch / tiles_n) * tile_rows;
        let col0 = (in_batch % tiles_n) * ROWS_COLS;
        let lhs_base =
            index_offset_contiguous_fastdivmod(batch, &batch_shape, &lhs_batch_strides, 1usize);
        let rhs_base =
            index_offset_contiguous_fastdivmod(batch, &batch_shape, &rhs_batch_strides, 1usize);
        // A warp whose first row is past M multiplies nothing (its rows are never stored).
        let multiplies = row0 + ty < m;

        #[unroll]
        for i in 0..per_thread {
            acc[i] = 0.0f32;
        }
        load_rows_step::<F>(
            lhs,
            rhs,
            &mut a_next,
            &mut b_next,
            lhs_base,
            rhs_base,
            lhs_sm,
            lhs_sk,
            rhs_sk,
            rhs_sn,
            row0,
            col0,
            0usize,
            m,
            n,
            k,
            a_row,
            a_k,
            a_row_step,
            a_k_step,
            b_k,
            b_col,
            b_k_step,
            b_col_step,
            a_per,
            b_per,
        );

        let mut k0 = 0;
        while k0 < k {
            #[unroll]
            for p in 0..a_per {
                lhs_tile[(a_row + p * a_row_step) * ROWS_STEP_K + a_k + p * a_k_step] = a_next[p];
            }
            #[unroll]
            for p in 0..b_per {
                rhs_tile[(b_k + p * b_k_step) * ROWS_COLS + b_col + p * b_col_step] = b_next[p];
            }
            sync_cube();
            if k0 + ROWS_STEP_K < k {
                load_rows_step::<F>(
                    lhs,
                    rhs,
                    &mut a_next,
                    &mut b_next,
                    lhs_base,
                    rhs_base,
                    lhs_sm,
                    lhs_sk,
                    rhs_sk,
                    rhs_sn,
                    row0,
                    col0,
                    k0 + ROWS_STEP_K,
                    m,
                    n,
                    k,
                    a_row,
                    a_k,
                    a_row_step,
                    a_k_step,
                    b_k,
                    b_col,
                    b_k_step,
                    b_col_step,
                    a_per,
                    b_per,
                );
            }
            if multiplies {
                // One multiply-add per output and k, in increasing k.
                #[unroll]
                for kk in 0..ROWS_STEP_K {
                    let b = rhs_tile[kk * ROWS_COLS + tx];
                    #[unroll]
                    for i in 0..per_thread {
                        acc[i] += lhs_tile[(ty + i * ROWS_WARPS) * ROWS_STEP_K + kk] * b;
                    }
                }
            }
            sync_cube();
            k0 += ROWS_STEP_K;
        }

        // The bias joins the f32 sums after the last K step; one rounding to F follows.
        let col = col0 + tx;
        let mut beta = 0.0f32;
        if has_bias && col < n {
            beta = f32::cast_from(bias[col]);
        }
        let out_base = batch * m * n;
        #[unroll]
        for i in 0..per_thread {
            let row = row0 + ty + i * ROWS_WARPS;
            let mut v = acc[i];
            if has_bias {
                v += beta;
            }
            if row < m && col < n {
                out[out_base + row * n + col] = F::cast_from(v);
            }
        }
        tile += CUBE_COUNT;
    }
}

/// The thread's entries of one step of the rows kernel, K from `k0`, into registers (see
/// the kernel for the entry walk); entries past M, N or K are zeros.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_rows_step<F: Float>(
    lhs: &Tensor<F>,
    rhs: &Tensor<F>,
    a_next: &mut Array<f32>,
    b_next: &mut Array<f32>,
    lhs_base: usize,
    rhs_base: usize,
    lhs_sm: usize,
    lhs_sk: usize,
    rhs_sk: usize,
    rhs_sn: usize,
    row0: usize,
    col0: usize,
    k0: usize,
    m: usize,
    n: usize,
    k: usize,
    a_row: usize,
    a_k: usize,
    a_row_step: usize,
    a_k_step: usize,
    b_k: usize,
    b_col: usize,
    b_k_step: usize,
    b_col_step: usize,
    #[comptime] a_per: usize,
    #[comptime] b_per: usize,
) {
    #[unroll]
    for p in 0..a_per {
        let gm = row0 + a_row + p * a_row_step;
        let gk = k0 + a_k + p * a_k_step;
        let mut x = 0.0f32;
        if gm < m && gk < k {
            x = f32::cast_from(lhs[lhs_base + gm * lhs_sm + gk * lhs_sk]);
        }
        a_next[p] = x;
    }
    #[unroll]
    for p in 0..b_per {
        let gk = k0 + b_k + p * b_k_step;
        let gn = col0 + b_col + p * b_col_step;
        let mut y = 0.0f32;
        if gk < k && gn < n {
            y = f32::cast_from(rhs[rhs_base + gk * rhs_sk + gn * rhs_sn]);
        }
        b_next[p] = y;
    }
}
