//! The `#[cube]` code of the dim reductions. The three kernels implement the order documented
//! in the module above, for a partial count `lanes` fixed by [`super::lanes_for_len`] and
//! chunks of [`CHUNK`] elements; keep them in step.

use cubecl::prelude::*;
use cubecl::std::tensor::index_offset_contiguous_fastdivmod;
use cubecl::std::FastDivmod;

pub use super::CHUNK;

/// Most threads in one cube of [`reduce_lanes_kernel()`]: `lanes` per row, at most
/// `CUBE_UNITS / lanes` rows per cube (`crate::layout::rows_per_cube`). A launch parameter only: it
/// changes which cube computes a row, not how.
pub const CUBE_UNITS: u32 = 256;

/// Loads one thread of a lanes kernel issues before it folds them in (in index order).
pub const SCAN_UNROLL: usize = 16;

/// Segments whose chunks one thread of [`reduce_lanes_kernel()`] loads per group.
const GROUP_SEGMENTS: usize = SCAN_UNROLL / CHUNK;

/// Outputs handled by one cube of [`reduce_unit_kernel()`].
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
/// owns partial `t`, reading its chunk of [`CHUNK`] elements of every segment one element at
/// a time (rows of any alignment); the fold goes through shared memory.
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
        let segment = comptime!(lanes * CHUNK);
        // `SCAN_UNROLL` loads (`GROUP_SEGMENTS` chunks) are issued before the first of their
        // adds waits: a plain loop has one load in flight per thread, so a few rows are
        // latency-bound (64 rows of 4096: 18 us where Burn takes 6). The adds stay in
        // increasing `j`.
        let mut j = lane * comptime!(CHUNK);
        let span = comptime!((GROUP_SEGMENTS - 1) * lanes * CHUNK + CHUNK);
        while j + span <= reduce_len {
            let mut vals = Array::<f32>::new(SCAN_UNROLL);
            #[unroll]
            for g in 0..GROUP_SEGMENTS {
                #[unroll]
                for c in 0..CHUNK {
                    vals[g * CHUNK + c] =
                        f32::cast_from(input[base + (j + g * segment + c) * reduce_stride]);
                }
            }
            #[unroll]
            for u in 0..SCAN_UNROLL {
                partial = combine(partial, vals[u], prod);
            }
            j += comptime!(GROUP_SEGMENTS * lanes * CHUNK);
        }
        while j < reduce_len {
            #[unroll]
            for c in 0..CHUNK {
                if j + c < reduce_len {
                    partial = combine(
                        partial,
                        f32::cast_from(input[base + (j + c) * reduce_stride]),
                        prod,
                    );
                }
            }
            j += segment;
        }
    }

    let mut shared = SharedMemory::<f32>::new(comptime!(CUBE_UNITS as usize));
    let total = fold_shared(&mut shared, local_row * lanes, lane, partial, lanes, prod);

    if in_range && lane == 0 {
        write_total(output, row, total, reduce_len, mean);
    }
}

/// The order of [`reduce_lanes_kernel()`] for contiguous rows whose starts and length are
/// multiples of [`CHUNK`] elements: thread `t`'s chunk of a segment is one vector load, so
/// a warp reads a 32-partial segment (512 bytes in f32) in one instruction and the adds
/// need nothing but the loaded registers. `SCAN_UNROLL` vectors are in flight per thread.
///
/// Why: a version of this kernel that keeps the elementwise order (`j % 32`) has to
/// transpose each segment through shared memory, with two cube barriers per group: it
/// reads 16384 rows of 4096 at 2.3-2.7 TB/s depending on the run, where Burn's
/// register-only reduction holds 2.86. The chunked order (see the module docs) makes the
/// vector load the unit of the order.
///
/// The fold is shuffles where a row's threads are exactly one plane (CUDA, 32 partials),
/// else the shared-memory fold of the lanes kernel (256 partials, or lavapipe's narrower
/// planes).
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub fn reduce_vector_kernel<F: Float, N: Size>(
    input: &Tensor<Vector<F, N>>,
    output: &mut Tensor<F>,
    out_shape: Sequence<FastDivmod<usize>>,
    row_strides: Sequence<usize>,
    reduce_len: usize,
    num_rows: usize,
    #[comptime] lanes: usize,
    #[comptime] shuffle_fold: bool,
    #[comptime] mean: bool,
    #[comptime] prod: bool,
    #[define(F)] _dtype: StorageType,
) {
    let lane = UNIT_POS_X as usize;
    let local_row = UNIT_POS_Y as usize;
    let row = CUBE_POS * (CUBE_DIM_Y as usize) + local_row;
    let in_range = row < num_rows;

    let mut partial = identity(prod);
    if in_range {
        let base = row_offset(row, &out_shape, &row_strides) / comptime!(CHUNK);
        let vectors = reduce_len / comptime!(CHUNK);
        let mut v = lane;
        let span = comptime!((SCAN_UNROLL - 1) * lanes + 1);
        while v + span <= vectors {
            let mut vals = Array::<Vector<F, N>>::new(SCAN_UNROLL);
            #[unroll]
            for u in 0..SCAN_UNROLL {
                vals[u] = input[base + v + u * lanes];
            }
            #[unroll]
            for u in 0..SCAN_UNROLL {
                partial = combine_chunk(partial, vals[u], prod);
            }
            v += comptime!(SCAN_UNROLL * lanes);
        }
        while v < vectors {
            partial = combine_chunk(partial, input[base + v], prod);
            v += lanes;
        }
    }

    let mut total = partial;
    if comptime!(shuffle_fold) {
        // `p[i] += p[i + s]` for s = 16, 8, 4, 2, 1, lane `i < s` taking lane `i + s`'s
        // value (the other lanes compute values nobody reads).
        total = combine(total, plane_shuffle_xor(total, 16u32), prod);
        total = combine(total, plane_shuffle_xor(total, 8u32), prod);
        total = combine(total, plane_shuffle_xor(total, 4u32), prod);
        total = combine(total, plane_shuffle_xor(total, 2u32), prod);
        total = combine(total, plane_shuffle_xor(total, 1u32), prod);
    } else {
        let mut shared = SharedMemory::<f32>::new(comptime!(CUBE_UNITS as usize));
        total = fold_shared(&mut shared, local_row * lanes, lane, partial, lanes, prod);
    }

    if in_range && lane == 0 {
        write_total(output, row, total, reduce_len, mean);
    }
}

/// Adds one chunk (a vector of [`CHUNK`] elements) into a partial, in element order.
#[cube]
fn combine_chunk<F: Float, N: Size>(partial: f32, x: Vector<F, N>, #[comptime] prod: bool) -> f32 {
    let mut p = partial;
    #[unroll]
    for c in 0..CHUNK {
        p = combine(p, f32::cast_from(x[c]), prod);
    }
    p
}

/// Writes a row's folded total: the sum or product, or the mean (one f32 division by the
/// reduced length).
#[cube]
fn write_total<F: Float>(
    output: &mut Tensor<F>,
    row: usize,
    total: f32,
    reduce_len: usize,
    #[comptime] mean: bool,
) {
    if comptime!(mean) {
        output[row] = F::cast_from(total / f32::cast_from(reduce_len));
    } else {
        output[row] = F::cast_from(total);
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

    // Partial `t` takes elements `4t .. 4t + 3` of each segment of `4 * lanes`, in order.
    let segment = comptime!(lanes * CHUNK);
    let full_segments = reduce_len / segment;
    for s in 0..full_segments {
        let start = base + s * segment * reduce_stride;
        for c in 0..CHUNK {
            #[unroll]
            for t in 0..lanes {
                partials[t] = combine(
                    partials[t],
                    f32::cast_from(input[start + (t * CHUNK + c) * reduce_stride]),
                    prod,
                );
            }
        }
    }
    let done = full_segments * segment;
    let start = base + done * reduce_stride;
    for c in 0..CHUNK {
        #[unroll]
        for t in 0..lanes {
            if done + t * CHUNK + c < reduce_len {
                partials[t] = combine(
                    partials[t],
                    f32::cast_from(input[start + (t * CHUNK + c) * reduce_stride]),
                    prod,
                );
            }
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

    write_total(output, row, partials[0], reduce_len, mean);
}

/// The fixed pairwise fold of a row's `lanes` partials through shared memory, thread `lane`
/// holding partial `lane`: after step `s`, partial `i < s` holds `p[i] + p[i + s]`. Every
/// thread of the cube takes part in every `sync_cube`; the total is returned to all.
#[cube]
pub(crate) fn fold_shared(
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

/// One step of the fold of [`reduce_unit_kernel()`], unrolled so the partials stay in registers.
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
// `reduce_vector_kernel`'s shuffles (16 ... 1) are spelled out for 32 partials, and a
// lanes-kernel group is whole chunks.
const _: () = assert!(super::SHORT_ROW_LANES == 32 && SCAN_UNROLL.is_multiple_of(CHUNK));
