//! The portable persistent matmul: the path for runtimes without tensor cores (lavapipe in
//! CI), for K = 0 and for IEEE f32 (`F32Precision::Ieee`).
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

/// Threads per cube along each side.
pub const CUBE_SIDE: u32 = 16;
/// K entries staged through shared memory per step.
pub const STEP_K: usize = 16;
/// Tile rows per group of the grouped walk.
pub const GROUP_M: usize = 8;

/// How the portable kernel blocks its tile: each thread owns `per_thread x per_thread`
/// outputs, rows `ty + 16 i` and columns `tx + 16 j`, so a tile is `16 per_thread` square.
/// It decides which thread computes an output, never how: every tiling gives the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortableTiling {
    pub name: &'static str,
    pub per_thread: usize,
}

impl PortableTiling {
    /// Output rows and columns of one tile.
    pub const fn tile(&self) -> usize {
        self.per_thread * CUBE_SIDE as usize
    }
}

/// 32x32 tiles, 2x2 outputs a thread: small problems spread over many cubes.
pub const PORTABLE_NARROW: PortableTiling = PortableTiling {
    name: "narrow",
    per_thread: 2,
};
/// 128x128 tiles, 8x8 outputs a thread: 64 multiply-adds for 16 shared-memory reads per K
/// entry, the register blocking large problems need to approach the arithmetic peak.
pub const PORTABLE_WIDE: PortableTiling = PortableTiling {
    name: "wide",
    per_thread: 8,
};

/// `lhs: [batch.., M, K]`, `rhs: [batch.., K, N]` with any strides; `out` contiguous
/// `[batch.., M, N]`; with `has_bias`, `bias` contiguous `[N]` added to every row.
/// `batch_shape` is the output's batch shape (at least one entry) and
/// `lhs_batch_strides`/`rhs_batch_strides` the operands' batch strides with broadcast dims
/// set to 0. `per_thread` is [`PortableTiling::per_thread`].
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
