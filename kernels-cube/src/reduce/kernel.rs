//! The `#[cube]` code of the dim reductions. Both kernels implement the order documented in
//! the module above, for a partial count `lanes` fixed by [`super::lanes_for_len`]; keep them
//! in step.

use cubecl::prelude::*;
use cubecl::std::tensor::index_offset_contiguous_fastdivmod;
use cubecl::std::FastDivmod;

/// Most threads in one cube of [`reduce_lanes_kernel`]: `lanes` per row, at most
/// `CUBE_UNITS / lanes` rows per cube (`launch::rows_per_cube`). A launch parameter only: it
/// changes which cube computes a row, not how.
pub const CUBE_UNITS: u32 = 256;

/// Loads one thread of a lanes kernel issues before it folds them in (in index order).
pub const SCAN_UNROLL: usize = 16;

/// Outputs handled by one cube of [`reduce_unit_kernel`].
pub const UNITS_PER_CUBE: u32 = 128;

/// Offset of the first element of output row `row` in the input.
///
/// `out_shape` is the input shape with the reduced dim set to 1 and `row_strides` the input
/// strides with the reduced dim's stride zeroed, so decomposing the row index over the
/// output shape lands on the row's first element whatever the input layout.
#[cube]
fn row_offset(
    row: usize,
    out_shape: &Sequence<FastDivmod<usize>>,
    row_strides: &Sequence<usize>,
) -> usize {
    index_offset_contiguous_fastdivmod(row, out_shape, row_strides, 1usize)
}

/// `lanes` threads (`UNIT_POS_X`) per output row (`UNIT_POS_Y` within the cube); thread `t`
/// owns partial `t`, and the fold goes through shared memory.
///
/// Every thread takes part in every `sync_cube`, including those of rows past the end, so
/// out-of-range rows are masked rather than terminated.
#[cube(launch_unchecked, address_type = "dynamic")]
pub fn reduce_lanes_kernel<F: Float>(
    input: &Tensor<F>,
    output: &mut Tensor<F>,
    out_shape: Sequence<FastDivmod<usize>>,
    row_strides: Sequence<usize>,
    reduce_len: usize,
    reduce_stride: usize,
    num_rows: usize,
    #[comptime] lanes: usize,
    #[comptime] mean: bool,
    #[comptime] prod: bool,
    #[define(F)] _dtype: StorageType,
) {
    let lane = UNIT_POS_X as usize;
    let local_row = UNIT_POS_Y as usize;
    // Chosen by the launch (`rows_per_cube`): which cube computes a row, never how.
    let rows_per_cube = CUBE_DIM_Y as usize;
    let row = CUBE_POS * rows_per_cube + local_row;
    let in_range = row < num_rows;

    let mut partial = identity(prod);
    if in_range {
        let base = row_offset(row, &out_shape, &row_strides);
        // `SCAN_UNROLL` loads are issued before the first of their adds waits: a plain loop
        // has one load in flight per thread, so a few rows were latency-bound (64 rows of
        // 4096: 18 us where Burn took 6). The adds stay in increasing `j`.
        let mut j = lane;
        let group = lanes * SCAN_UNROLL;
        while j + group - lanes < reduce_len {
            let vals = load_group(input, base + j * reduce_stride, lanes * reduce_stride);
            #[unroll]
            for u in 0..SCAN_UNROLL {
                partial = combine(partial, vals[u], prod);
            }
            j += group;
        }
        while j < reduce_len {
            partial = combine(
                partial,
                f32::cast_from(input[base + j * reduce_stride]),
                prod,
            );
            j += lanes;
        }
    }

    let mut shared = SharedMemory::<f32>::new(comptime!(CUBE_UNITS as usize));
    let total = fold_shared(&mut shared, local_row * lanes, lane, partial, lanes, prod);

    if in_range && lane == 0 {
        if comptime!(mean) {
            output[row] = F::cast_from(total / f32::cast_from(reduce_len));
        } else {
            output[row] = F::cast_from(total);
        }
    }
}

/// Elements of one vector load of [`reduce_vector_kernel`].
pub const VECTOR: usize = 4;
/// Elements of a row one warp-wide vector load of [`reduce_vector_kernel`] covers.
const SEGMENT: usize = crate::reduce::SHORT_ROW_LANES * VECTOR;

/// The order of [`reduce_lanes_kernel`] for short contiguous rows (32 partials, one warp per
/// row, thread `t` owning partial `t`), with the row read by vector loads: each load covers
/// a segment of 128 consecutive elements (512 bytes in f32), several segments in flight per
/// warp, staged through shared memory, from which thread `t` takes elements
/// `t, t + 32, t + 64, t + 96` of each segment in order. The adds are those of the lanes
/// kernel, in the same order (`group` segments in flight, at most `SCAN_UNROLL`, fewer where
/// shared memory is small); the fold `p[i] += p[i + s]` for `s = 16, ..., 1` runs as
/// shuffles where the runtime's planes are 32 lanes (CUDA), else through shared memory as
/// in the lanes kernel (lavapipe's planes are narrower).
///
/// Why: the lanes kernel's loads cover 128 bytes of a row each, and a full device then
/// reads some 16000 rows at once in small pieces; 16 row pieces of 512 bytes per warp are
/// the pattern DRAM streams best (Burn's own reduction reads rows that way) and need a
/// quarter of the round trips for a few rows.
///
/// The launch takes this mapping only for rows whose starts and length are multiples of
/// [`VECTOR`] elements, at aligned addresses.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub fn reduce_vector_kernel<F: Float, N: Size>(
    input: &Tensor<Vector<F, N>>,
    output: &mut Tensor<F>,
    out_shape: Sequence<FastDivmod<usize>>,
    row_strides: Sequence<usize>,
    reduce_len: usize,
    num_rows: usize,
    #[comptime] rows_per_cube: usize,
    #[comptime] group: usize,
    #[comptime] shuffle_fold: bool,
    #[comptime] mean: bool,
    #[comptime] prod: bool,
    #[define(F)] _dtype: StorageType,
) {
    let lane = UNIT_POS_X as usize;
    let warp = UNIT_POS_Y as usize;
    let row = CUBE_POS * rows_per_cube + warp;
    // A warp past the last row reduces the last row again and writes nothing: every warp
    // takes part in every `sync_cube` (WGSL has no warp-level barrier).
    let in_range = row < num_rows;
    let row_read = select(in_range, row, num_rows - 1);
    let lanes = comptime!(crate::reduce::SHORT_ROW_LANES);
    let staged = comptime!(group * SEGMENT);
    let mut stage = SharedMemory::<f32>::new(comptime!(group * SEGMENT * rows_per_cube));
    let at = warp * staged;

    let mut partial = identity(prod);
    {
        let base = row_offset(row_read, &out_shape, &row_strides) / comptime!(VECTOR);
        let segments = reduce_len / comptime!(SEGMENT);
        let mut first = 0usize;
        while first < segments {
            let count = select(segments - first < group, segments - first, group);
            // Every load is issued before any is used; a load past `count` re-reads the
            // group's first segment (a valid address) and is never added.
            let mut vals = Array::<Vector<F, N>>::new(group);
            #[unroll]
            for u in 0..group {
                let seg = first + select(u < count, u, 0usize);
                vals[u] = input[base + seg * lanes + lane];
            }
            sync_cube(); // the previous group has been read
            #[unroll]
            for u in 0..group {
                let x = vals[u];
                #[unroll]
                for q in 0..VECTOR {
                    stage[at + u * comptime!(SEGMENT) + lane * comptime!(VECTOR) + q] =
                        f32::cast_from(x[q]);
                }
            }
            sync_cube();
            #[unroll]
            for u in 0..group {
                if u < count {
                    #[unroll]
                    for k in 0..VECTOR {
                        let x = stage[at + u * comptime!(SEGMENT) + k * lanes + lane];
                        partial = combine(partial, x, prod);
                    }
                }
            }
            first += count;
        }
        // The last, partial segment: `tail` elements, a multiple of `VECTOR`.
        let tail = reduce_len - segments * comptime!(SEGMENT);
        if tail > 0 {
            let live = lane * comptime!(VECTOR) < tail;
            let x = input[base + segments * lanes + select(live, lane, 0usize)];
            sync_cube();
            #[unroll]
            for q in 0..VECTOR {
                stage[at + lane * comptime!(VECTOR) + q] = f32::cast_from(x[q]);
            }
            sync_cube();
            #[unroll]
            for k in 0..VECTOR {
                if k * lanes + lane < tail {
                    partial = combine(partial, stage[at + k * lanes + lane], prod);
                }
            }
        }
    }

    // `p[i] += p[i + s]` for s = 16, 8, 4, 2, 1: lane `i < s` takes lane `i + s`'s value,
    // by shuffles where a plane is the row's 32 threads, else through shared memory.
    if comptime!(shuffle_fold) {
        partial = combine(partial, plane_shuffle_xor(partial, 16u32), prod);
        partial = combine(partial, plane_shuffle_xor(partial, 8u32), prod);
        partial = combine(partial, plane_shuffle_xor(partial, 4u32), prod);
        partial = combine(partial, plane_shuffle_xor(partial, 2u32), prod);
        partial = combine(partial, plane_shuffle_xor(partial, 1u32), prod);
    } else {
        sync_cube(); // the stage has been read
        partial = fold_shared(&mut stage, at, lane, partial, lanes, prod);
    }

    if in_range && lane == 0 {
        if comptime!(mean) {
            output[row] = F::cast_from(partial / f32::cast_from(reduce_len));
        } else {
            output[row] = F::cast_from(partial);
        }
    }
}

/// One thread per output row holding all `lanes` partials (the inner loops are unrolled, so
/// every partial index is a compile-time constant).
#[cube(launch_unchecked, address_type = "dynamic")]
pub fn reduce_unit_kernel<F: Float>(
    input: &Tensor<F>,
    output: &mut Tensor<F>,
    out_shape: Sequence<FastDivmod<usize>>,
    row_strides: Sequence<usize>,
    reduce_len: usize,
    reduce_stride: usize,
    num_rows: usize,
    #[comptime] lanes: usize,
    #[comptime] mean: bool,
    #[comptime] prod: bool,
    #[define(F)] _dtype: StorageType,
) {
    let row = ABSOLUTE_POS;
    if row >= num_rows {
        terminate!();
    }
    let base = row_offset(row, &out_shape, &row_strides);

    let mut partials = Array::<f32>::new(lanes);
    #[unroll]
    for t in 0..lanes {
        partials[t] = identity(prod);
    }

    let full_chunks = reduce_len / lanes;
    for chunk in 0..full_chunks {
        let start = base + chunk * lanes * reduce_stride;
        #[unroll]
        for t in 0..lanes {
            partials[t] = combine(
                partials[t],
                f32::cast_from(input[start + t * reduce_stride]),
                prod,
            );
        }
    }
    let done = full_chunks * lanes;
    let start = base + done * reduce_stride;
    #[unroll]
    for t in 0..lanes {
        if done + t < reduce_len {
            partials[t] = combine(
                partials[t],
                f32::cast_from(input[start + t * reduce_stride]),
                prod,
            );
        }
    }

    // The same fold as `reduce_lanes_kernel`: partial `i` gains `i + s`, `s` = lanes/2, ..., 1.
    if comptime!(lanes == 256) {
        fold_registers(&mut partials, 128usize, prod);
        fold_registers(&mut partials, 64usize, prod);
        fold_registers(&mut partials, 32usize, prod);
    }
    fold_registers(&mut partials, 16usize, prod);
    fold_registers(&mut partials, 8usize, prod);
    fold_registers(&mut partials, 4usize, prod);
    fold_registers(&mut partials, 2usize, prod);
    fold_registers(&mut partials, 1usize, prod);

    let total = partials[0];
    if comptime!(mean) {
        output[row] = F::cast_from(total / f32::cast_from(reduce_len));
    } else {
        output[row] = F::cast_from(total);
    }
}

/// The `SCAN_UNROLL` entries `first, first + step, ...` of `input`, as f32: one group of a
/// lanes kernel's scan, every load issued before any of them is used.
#[cube]
pub(crate) fn load_group<F: Float>(input: &Tensor<F>, first: usize, step: usize) -> Array<f32> {
    let mut vals = Array::<f32>::new(SCAN_UNROLL);
    #[unroll]
    for u in 0..SCAN_UNROLL {
        vals[u] = f32::cast_from(input[first + u * step]);
    }
    vals
}

/// The fixed pairwise fold of a row's `lanes` partials through shared memory, thread `lane`
/// holding partial `lane`: after step `s`, partial `i < s` holds `p[i] + p[i + s]`. Every
/// thread of the cube takes part in every `sync_cube`; the total is returned to all.
#[cube]
fn fold_shared(
    shared: &mut SharedMemory<f32>,
    slot: usize,
    lane: usize,
    partial: f32,
    #[comptime] lanes: usize,
    #[comptime] prod: bool,
) -> f32 {
    shared[slot + lane] = partial;
    sync_cube();
    let mut step = comptime!(lanes / 2).runtime();
    while step > 0 {
        if lane < step {
            shared[slot + lane] = combine(shared[slot + lane], shared[slot + lane + step], prod);
        }
        sync_cube();
        step /= 2;
    }
    shared[slot]
}

/// One step of the fold of [`reduce_unit_kernel`], unrolled so the partials stay in registers.
#[cube]
fn fold_registers(partials: &mut Array<f32>, #[comptime] step: usize, #[comptime] prod: bool) {
    #[unroll]
    for t in 0..step {
        partials[t] = combine(partials[t], partials[t + step], prod);
    }
}

/// The partials' starting value: 0 for sums, 1 for products.
#[cube]
fn identity(#[comptime] prod: bool) -> f32 {
    let mut v = 0.0f32;
    if comptime!(prod) {
        v = 1.0f32;
    }
    v
}

/// The one operation of the order: `a + b`, or `a * b` for products.
#[cube]
fn combine(a: f32, b: f32, #[comptime] prod: bool) -> f32 {
    let mut v = a + b;
    if comptime!(prod) {
        v = a * b;
    }
    v
}

// `reduce_unit_kernel` spells out the fold steps for these two partial counts.
const _: () = assert!(super::SHORT_ROW_LANES == 32 && super::LONG_ROW_LANES == 256);
// `reduce_vector_kernel`'s shuffles (16 ... 1) are spelled out for 32 partials.
const _: () = assert!(super::SHORT_ROW_LANES == 32);
