//! The `#[cube]` code of layer and RMS normalization (order in the module docs).

use cubecl::prelude::*;
use cubecl::std::tensor::index_offset_contiguous_fastdivmod;
use cubecl::std::FastDivmod;

// The reductions' cube size: `layout::rows_per_cube` packs rows against it.
use crate::layout::{load_group, LOADS_IN_FLIGHT};
use crate::reduce::kernel::{fold_shared, CUBE_UNITS};

/// `sum_j (x_j - shift)^2` (`squares`) or `sum_j x_j` over `j = lane, lane + lanes, ... <
/// end`, as this thread's partial in increasing `j`, then the fold over the row's threads.
/// Every thread of the cube must call it (it synchronises the cube).
#[cube]
#[allow(clippy::too_many_arguments)]
fn row_sum<F: Float>(
    input: &Tensor<F>,
    base: usize,
    stride: usize,
    end: usize,
    shift: f32,
    #[comptime] squares: bool,
    #[comptime] lanes: usize,
    shared: &mut SharedMemory<f32>,
    slot: usize,
) -> f32 {
    let lane = UNIT_POS_X as usize;
    // `LOADS_IN_FLIGHT` loads are issued before the first of their adds waits; the adds
    // stay in increasing `j`.
    let span = comptime!((LOADS_IN_FLIGHT - 1) * lanes);
    let mut partial = 0.0f32;
    let mut j = lane;
    while j + span < end {
        let vals = load_group(input, base, stride, j, lanes);
        #[unroll]
        for u in 0..LOADS_IN_FLIGHT {
            partial += term(vals[u], shift, squares);
        }
        j += comptime!(LOADS_IN_FLIGHT * lanes);
    }
    while j < end {
        partial += term(f32::cast_from(input[base + j * stride]), shift, squares);
        j += lanes;
    }
    let total = fold_shared(shared, slot, lane, partial, lanes, false);
    // Every thread has read the total before the next pass writes its slot again.
    sync_cube();
    total
}

/// What [`row_sum`] adds for one entry.
#[cube]
fn term(x: f32, shift: f32, #[comptime] squares: bool) -> f32 {
    let mut v = x;
    if comptime!(squares) {
        let d = x - shift;
        v = d * d;
    }
    v
}

/// One row of `len` entries per `lanes` threads (`UNIT_POS_X`), `CUBE_DIM_Y` rows per cube.
/// `centered` is layer norm (subtract the mean first), otherwise RMS norm (the mean pass is
/// skipped and the shift is 0). `beta` is read only when `has_beta` (the launch binds `gamma`
/// in its place otherwise). Rows past the end take part in the cube's syncs with an empty
/// range.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub fn norm_kernel<F: Float>(
    input: &Tensor<F>,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    output: &mut Tensor<F>,
    row_shape: Sequence<FastDivmod<usize>>,
    in_row_strides: Sequence<usize>,
    len: usize,
    in_stride: usize,
    gamma_stride: usize,
    beta_stride: usize,
    epsilon: f32,
    num_rows: usize,
    #[comptime] lanes: usize,
    #[comptime] centered: bool,
    #[comptime] has_beta: bool,
    #[define(F)] _dtype: StorageType,
) {
    let lane = UNIT_POS_X as usize;
    let local_row = UNIT_POS_Y as usize;
    // Chosen by the launch: which cube computes a row, never how.
    let row = CUBE_POS * (CUBE_DIM_Y as usize) + local_row;
    let in_range = row < num_rows;
    let mut base = 0;
    let mut end = 0;
    if in_range {
        base = index_offset_contiguous_fastdivmod(row, &row_shape, &in_row_strides, 1usize);
        end = len;
    }

    let mut shared = SharedMemory::<f32>::new(comptime!(CUBE_UNITS as usize));
    let slot = local_row * lanes;
    let n = f32::cast_from(len);
    // RMS norm: `x - 0.0` is `x` for every input, so the later passes need no other form.
    let mut mean = 0.0f32;
    if comptime!(centered) {
        let sum = row_sum(
            input,
            base,
            in_stride,
            end,
            0.0,
            false,
            lanes,
            &mut shared,
            slot,
        );
        mean = sum / n;
    }
    let squares = row_sum(
        input,
        base,
        in_stride,
        end,
        mean,
        true,
        lanes,
        &mut shared,
        slot,
    );
    let denom = f32::sqrt(squares / n + epsilon);

    // 3. Each output depends only on its input, mean, denom and its gamma/beta entries.
    let out_base = row * len;
    let group = comptime!((LOADS_IN_FLIGHT - 1) * lanes);
    let mut j = lane;
    while j + group < end {
        let vals = load_group(input, base, in_stride, j, lanes);
        #[unroll]
        for u in 0..LOADS_IN_FLIGHT {
            let at = j + u * lanes;
            let y = normalized(
                vals[u],
                mean,
                denom,
                gamma,
                beta,
                at,
                gamma_stride,
                beta_stride,
                has_beta,
            );
            output[out_base + at] = F::cast_from(y);
        }
        j += comptime!(LOADS_IN_FLIGHT * lanes);
    }
    while j < end {
        let x = f32::cast_from(input[base + j * in_stride]);
        let y = normalized(
            x,
            mean,
            denom,
            gamma,
            beta,
            j,
            gamma_stride,
            beta_stride,
            has_beta,
        );
        output[out_base + j] = F::cast_from(y);
        j += lanes;
    }
}

/// Step 3 for entry `j`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn normalized<F: Float>(
    x: f32,
    mean: f32,
    denom: f32,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    j: usize,
    gamma_stride: usize,
    beta_stride: usize,
    #[comptime] has_beta: bool,
) -> f32 {
    let mut y = (x - mean) / denom * f32::cast_from(gamma[j * gamma_stride]);
    if comptime!(has_beta) {
        y += f32::cast_from(beta[j * beta_stride]);
    }
    y
}
