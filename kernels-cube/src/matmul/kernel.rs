//! The portable persistent matmul: the path for runtimes without tensor cores (lavapipe in
//! CI) and for K = 0.
//!
//! A fixed grid of cubes walks the output tiles in grouped order (a group of
//! [`GROUP_M`] tile rows is finished column by column before the next, so neighbouring
//! cubes share operand tiles in cache, as vLLM's `GROUP_SIZE_M` swizzle does). For each tile,
//! K is consumed in steps of [`STEP_K`] staged through shared memory, and each thread adds
//! `a[m][k] * b[k][n]` into its f32 accumulators for k = 0, 1, 2, ... in order. The tile
//! walk and the grid size only decide *who* computes an element; the sum is always the same
//! chain of K multiply-adds.

use cubecl::prelude::*;
use cubecl::std::tensor::index_offset_contiguous_fastdivmod;
use cubecl::std::FastDivmod;

/// Output rows and columns of one tile.
pub const TILE: usize = 32;
/// Threads per cube along each side; each thread owns a 2x2 block of the tile.
pub const CUBE_SIDE: u32 = 16;
/// K entries staged through shared memory per step.
pub const STEP_K: usize = 16;
/// Tile rows per group of the grouped walk.
pub const GROUP_M: usize = 8;

/// `lhs: [batch.., M, K]`, `rhs: [batch.., K, N]` with any strides; `out` contiguous
/// `[batch.., M, N]`; with `has_bias`, `bias` contiguous `[N]` added to every row. `batch_shape` is the output's batch shape (at least one entry) and
/// `lhs_batch_strides`/`rhs_batch_strides` the operands' batch strides with broadcast dims
/// set to 0.
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
    #[comptime] has_bias: bool,
    #[define(F)] _dtype: StorageType,
) {
    let rank = lhs.rank();
    let lhs_sm = lhs.stride(rank - 2);
    let lhs_sk = lhs.stride(rank - 1);
    let rhs_sk = rhs.stride(rank - 2);
    let rhs_sn = rhs.stride(rank - 1);

    let tiles_m = m.div_ceil(TILE);
    let tiles_n = n.div_ceil(TILE);
    let tiles_per_batch = tiles_m * tiles_n;
    let num_tiles = tiles_per_batch * num_batches;

    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let flat = ty * CUBE_SIDE as usize + tx;

    let mut lhs_tile = SharedMemory::<f32>::new(comptime!(TILE * STEP_K));
    let mut rhs_tile = SharedMemory::<f32>::new(comptime!(STEP_K * TILE));

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
        let row0 = tile_m * TILE + ty * 2;
        let col0 = tile_n * TILE + tx * 2;

        let mut acc00 = 0.0f32;
        let mut acc01 = 0.0f32;
        let mut acc10 = 0.0f32;
        let mut acc11 = 0.0f32;

        let mut k0 = 0;
        while k0 < k {
            // 256 threads stage a 32x16 lhs block and a 16x32 rhs block, two entries each;
            // entries past M, N or K are zeros and only ever meet zeros or unwritten outputs.
            #[unroll]
            for part in 0..2usize {
                let e = flat + part * 256;
                let r = e / STEP_K;
                let c = e % STEP_K;
                let gm = tile_m * TILE + r;
                let gk = k0 + c;
                let mut a = 0.0f32;
                if gm < m && gk < k {
                    a = f32::cast_from(lhs[lhs_base + gm * lhs_sm + gk * lhs_sk]);
                }
                lhs_tile[e] = a;

                let rk = e / TILE;
                let rc = e % TILE;
                let bk = k0 + rk;
                let bn = tile_n * TILE + rc;
                let mut b = 0.0f32;
                if bk < k && bn < n {
                    b = f32::cast_from(rhs[rhs_base + bk * rhs_sk + bn * rhs_sn]);
                }
                rhs_tile[e] = b;
            }
            sync_cube();

            #[unroll]
            for kk in 0..STEP_K {
                let a0 = lhs_tile[(ty * 2) * STEP_K + kk];
                let a1 = lhs_tile[(ty * 2 + 1) * STEP_K + kk];
                let b0 = rhs_tile[kk * TILE + tx * 2];
                let b1 = rhs_tile[kk * TILE + tx * 2 + 1];
                acc00 += a0 * b0;
                acc01 += a0 * b1;
                acc10 += a1 * b0;
                acc11 += a1 * b1;
            }
            sync_cube();
            k0 += STEP_K;
        }

        // The bias joins the f32 sums after the last K step; one rounding to F follows.
        if has_bias {
            let mut b0 = 0.0f32;
            let mut b1 = 0.0f32;
            if col0 < n {
                b0 = f32::cast_from(bias[col0]);
            }
            if col0 + 1 < n {
                b1 = f32::cast_from(bias[col0 + 1]);
            }
            acc00 += b0;
            acc01 += b1;
            acc10 += b0;
            acc11 += b1;
        }

        let out_base = batch * m * n;
        if row0 < m {
            if col0 < n {
                out[out_base + row0 * n + col0] = F::cast_from(acc00);
            }
            if col0 + 1 < n {
                out[out_base + row0 * n + col0 + 1] = F::cast_from(acc01);
            }
        }
        if row0 + 1 < m {
            if col0 < n {
                out[out_base + (row0 + 1) * n + col0] = F::cast_from(acc10);
            }
            if col0 + 1 < n {
                out[out_base + (row0 + 1) * n + col0 + 1] = F::cast_from(acc11);
            }
        }
        tile += CUBE_COUNT;
    }
}

// The staging loop above hands two entries of each block to each of the 256 threads.
const _: () = assert!(TILE * STEP_K == 2 * (CUBE_SIDE * CUBE_SIDE) as usize);
const _: () = assert!(TILE == 2 * CUBE_SIDE as usize);
