//! The `#[cube]` code of layer and RMS normalization (order in the module docs).

use cubecl::prelude::*;
use cubecl::std::tensor::index_offset_contiguous_fastdivmod;
use cubecl::std::FastDivmod;

// The reductions' cube size: `layout::rows_per_cube` packs rows against it.
use crate::layout::{load_group, LOADS_IN_FLIGHT};
use crate::reduce::kernel::{fold_shared, CUBE_UNITS};

/// `2^-64`: below it, `mean((x - mean)^2) + eps` may have lost its precision to subnormal
/// squares (it cannot when `eps` is at least this).
const TINY_DENOM_SQ: f32 = 1.0 / (1u64 << 32) as f32 / (1u64 << 32) as f32;

/// `sum_j (s x_j - shift)^2` (`squares`) or `sum_j s x_j` over `j = lane, lane + lanes, ... <
/// end`, as this thread's partial in increasing `j`, then the fold over the row's threads.
/// `s` is `scale`: 1 (exact) unless the row is being summed again (see [`rescale`]). Every
/// thread of the cube must call it (it synchronises the cube).
#[cube]
#[allow(clippy::too_many_arguments)]
fn row_sum<F: Float>(
    input: &Tensor<F>,
    base: usize,
    stride: usize,
    end: usize,
    scale: f32,
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
            partial += term(vals[u] * scale, shift, squares);
        }
        j += comptime!(LOADS_IN_FLIGHT * lanes);
    }
    while j < end {
        partial += term(
            f32::cast_from(input[base + j * stride]) * scale,
            shift,
            squares,
        );
        j += lanes;
    }
    let total = fold_shared(shared, slot, lane, partial, lanes, false);
    // Every thread has read the total before the next pass writes its slot again.
    sync_cube();
    total
}

/// `max_j |x_j|` over `j = lane, lane + lanes, ... < end`, folded over the row's threads. A
/// NaN is passed over: it makes every output of its row NaN, scaled or not. The maximum is
/// the same in any order, so the fold is free.
/// Every thread of the cube must call it.
#[cube]
fn row_max_magnitude<F: Float>(
    input: &Tensor<F>,
    base: usize,
    stride: usize,
    end: usize,
    #[comptime] lanes: usize,
    shared: &mut SharedMemory<f32>,
    slot: usize,
) -> f32 {
    let lane = UNIT_POS_X as usize;
    let mut partial = 0.0f32;
    let mut j = lane;
    while j < end {
        let a = f32::abs(f32::cast_from(input[base + j * stride]));
        partial = select(a > partial, a, partial);
        j += lanes;
    }
    shared[slot + lane] = partial;
    sync_cube();
    let mut step = comptime!(lanes / 2).runtime();
    while step > 0 {
        if lane < step {
            let other = shared[slot + lane + step];
            if other > shared[slot + lane] {
                shared[slot + lane] = other;
            }
        }
        sync_cube();
        step /= 2;
    }
    let largest = shared[slot];
    sync_cube();
    largest
}

/// The power of two `s` that brings a row's largest magnitude `m` (finite) into `[1, 2)`, so
/// that `s x` is exact and neither the sums nor `eps s^2` leave f32's range: `s` is clamped
/// to `[2^-126, 2^63]` (the largest finite `m` lands in `[2, 4)`; rows of magnitude below
/// `2^-63` are raised as far as `2^63` takes them).
#[cube]
fn rescale(m: f32) -> f32 {
    let exponent = (u32::reinterpret(m) >> 23u32) & 0xffu32;
    // The exponent field of `s`: `254 - exponent` gives `m s` in `[1, 2)`.
    let mut field = 1u32;
    if exponent < 254u32 {
        field = 254u32 - exponent;
    }
    if field > 190u32 {
        field = 190u32;
    }
    f32::reinterpret(field << 23u32)
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
    // Whether some row of the cube needs `rescale`; written before the first sync.
    let mut any_rescale = SharedMemory::<u32>::new(1usize);
    if lane == 0usize && local_row == 0usize {
        any_rescale[0usize] = 0u32;
    }
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
            1.0,
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
        1.0,
        mean,
        true,
        lanes,
        &mut shared,
        slot,
    );
    let mut denom_sq = squares / n + epsilon;
    let mut scale = 1.0f32;

    // Out of f32's range: sum the row again scaled by a power of two. Taken by the whole cube
    // or not at all (the passes synchronise it), with an empty range for the rows that keep
    // their sums, so their bits are those of the plain passes.
    let need = in_range && !(denom_sq <= f32::max_value() && denom_sq >= TINY_DENOM_SQ);
    if need && lane == 0usize {
        any_rescale[0usize] = 1u32;
    }
    sync_cube();
    if any_rescale[0usize] == 1u32 {
        let mut need_end = 0usize;
        if need {
            need_end = end;
        }
        let largest = row_max_magnitude(input, base, in_stride, need_end, lanes, &mut shared, slot);
        // An infinity in the row keeps the plain passes' special values.
        let finite = need && largest <= f32::max_value();
        let s = rescale(largest);
        let mut scaled_end = 0usize;
        if finite {
            scaled_end = end;
        }
        let mut scaled_mean = 0.0f32;
        if comptime!(centered) {
            let sum = row_sum(
                input,
                base,
                in_stride,
                scaled_end,
                s,
                0.0,
                false,
                lanes,
                &mut shared,
                slot,
            );
            scaled_mean = sum / n;
        }
        let scaled_squares = row_sum(
            input,
            base,
            in_stride,
            scaled_end,
            s,
            scaled_mean,
            true,
            lanes,
            &mut shared,
            slot,
        );
        if finite {
            mean = scaled_mean;
            scale = s;
            // Scaled down, `eps s^2` can underflow: a row whose scaled spread is also 0
            // would divide 0 by 0, and gets its beta instead. (A NaN stays a NaN.)
            let scaled_sq = scaled_squares / n + epsilon * s * s;
            denom_sq = select(scaled_sq < f32::MIN_POSITIVE, f32::MIN_POSITIVE, scaled_sq);
        }
    }
    let denom = f32::sqrt(denom_sq);

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
                vals[u] * scale,
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
        let x = f32::cast_from(input[base + j * in_stride]) * scale;
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
