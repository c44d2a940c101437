//! The `#[cube]` code of softmax / log-softmax along a dim (order in the module docs).

use cubecl::prelude::*;
use cubecl::std::tensor::index_offset_contiguous_fastdivmod;
use cubecl::std::FastDivmod;

/// Threads per cube: `lanes` per row, `CUBE_UNITS / lanes` rows.
pub const CUBE_UNITS: u32 = 256;

/// Fixed pairwise fold of `lanes` shared-memory partials starting at `slot`, combining with
/// max or add. Every thread of the cube must call it (it synchronises the cube).
#[cube]
fn fold_shared(
    shared: &mut SharedMemory<f32>,
    slot: usize,
    lane: usize,
    #[comptime] lanes: usize,
    #[comptime] take_max: bool,
) {
    let mut step = comptime!(lanes / 2).runtime();
    while step > 0 {
        if lane < step {
            let a = shared[slot + lane];
            let b = shared[slot + lane + step];
            if comptime!(take_max) {
                shared[slot + lane] = f32::max(a, b);
            } else {
                shared[slot + lane] = a + b;
            }
        }
        sync_cube();
        step /= 2;
    }
}

#[cube(launch_unchecked, address_type = "dynamic")]
pub fn softmax_lanes_kernel<F: Float>(
    input: &Tensor<F>,
    output: &mut Tensor<F>,
    row_shape: Sequence<FastDivmod<usize>>,
    in_row_strides: Sequence<usize>,
    out_row_strides: Sequence<usize>,
    len: usize,
    in_stride: usize,
    out_stride: usize,
    num_rows: usize,
    #[comptime] lanes: usize,
    #[comptime] log: bool,
    #[define(F)] _dtype: StorageType,
) {
    let lane = UNIT_POS_X as usize;
    let local_row = UNIT_POS_Y as usize;
    let rows_per_cube = comptime!(CUBE_UNITS as usize / lanes);
    let row = CUBE_POS * rows_per_cube + local_row;
    let in_range = row < num_rows;
    let mut in_base = 0;
    let mut out_base = 0;
    if in_range {
        in_base = index_offset_contiguous_fastdivmod(row, &row_shape, &in_row_strides, 1usize);
        out_base = index_offset_contiguous_fastdivmod(row, &row_shape, &out_row_strides, 1usize);
    }

    let mut shared = SharedMemory::<f32>::new(comptime!(CUBE_UNITS as usize));
    let slot = local_row * lanes;

    // 1. The row maximum.
    // The identity of max: f32::MIN (finite), which gives the same outputs as -inf would.
    let mut partial = f32::min_value();
    if in_range {
        let mut j = lane;
        while j < len {
            partial = f32::max(partial, f32::cast_from(input[in_base + j * in_stride]));
            j += lanes;
        }
    }
    shared[slot + lane] = partial;
    sync_cube();
    fold_shared(&mut shared, slot, lane, lanes, true);
    let m = shared[slot];
    sync_cube();

    // 2. The sum of exponentials, in the fixed order.
    let mut sum = 0.0f32;
    if in_range {
        let mut j = lane;
        while j < len {
            sum += f32::exp(f32::cast_from(input[in_base + j * in_stride]) - m);
            j += lanes;
        }
    }
    shared[slot + lane] = sum;
    sync_cube();
    fold_shared(&mut shared, slot, lane, lanes, false);
    let total = shared[slot];

    // 3. The outputs; each element depends only on its input, m and the total.
    if in_range {
        let log_total = f32::ln(total);
        let mut j = lane;
        while j < len {
            let shifted = f32::cast_from(input[in_base + j * in_stride]) - m;
            let value = if comptime!(log) {
                shifted - log_total
            } else {
                f32::exp(shifted) / total
            };
            output[out_base + j * out_stride] = F::cast_from(value);
            j += lanes;
        }
    }
}
