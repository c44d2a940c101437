//! The `#[cube]` code of softmax / log-softmax along a dim (order in the module docs).

use cubecl::prelude::*;
use cubecl::std::tensor::index_offset_contiguous_fastdivmod;
use cubecl::std::FastDivmod;

use crate::layout::{load_group, LOADS_IN_FLIGHT};

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

/// Steps 1 and 2 for the entries `first, first + step, ... < end` of one row (a whole row,
/// or one chunk): the maximum `m`, then `sum exp(x - m)`, each as per-thread partials folded
/// pairwise through `shared[slot..slot + step]`. Both kernels call it, so a chunk and an
/// unchunked row reduce in the same order. Every thread of the cube must call it.
#[cube]
#[allow(clippy::too_many_arguments)]
fn max_and_sum_exp<F: Float>(
    input: &Tensor<F>,
    base: usize,
    stride: usize,
    first: usize,
    end: usize,
    #[comptime] step: usize,
    shared: &mut SharedMemory<f32>,
    slot: usize,
) -> (f32, f32) {
    let lane = UNIT_POS_X as usize;
    // Each pass issues `LOADS_IN_FLIGHT` loads before the first of their combines waits,
    // then combines them in increasing `j`: the order above, with the loads of a thread
    // overlapped.
    let span = comptime!((LOADS_IN_FLIGHT - 1) * step);
    let mut partial = f32::min_value();
    let mut j = first;
    while j + span < end {
        let vals = load_group(input, base, stride, j, step);
        #[unroll]
        for u in 0..LOADS_IN_FLIGHT {
            partial = f32::max(partial, vals[u]);
        }
        j += comptime!(LOADS_IN_FLIGHT * step);
    }
    while j < end {
        partial = f32::max(partial, f32::cast_from(input[base + j * stride]));
        j += step;
    }
    shared[slot + lane] = partial;
    sync_cube();
    fold_shared(shared, slot, lane, step, true);
    let m = shared[slot];
    sync_cube();

    let mut sum = 0.0f32;
    let mut j = first;
    while j + span < end {
        let vals = load_group(input, base, stride, j, step);
        #[unroll]
        for u in 0..LOADS_IN_FLIGHT {
            sum += f32::exp(vals[u] - m);
        }
        j += comptime!(LOADS_IN_FLIGHT * step);
    }
    while j < end {
        sum += f32::exp(f32::cast_from(input[base + j * stride]) - m);
        j += step;
    }
    shared[slot + lane] = sum;
    sync_cube();
    fold_shared(shared, slot, lane, step, false);
    (m, shared[slot])
}

/// The entries `[start, end)` of chunk `chunk` of a row of `len` entries.
#[cube]
fn chunk_range(chunk: usize, len: usize) -> (usize, usize) {
    let start = chunk * comptime!(CHUNK_LEN);
    let mut end = start + comptime!(CHUNK_LEN);
    if end > len {
        end = len;
    }
    (start, end)
}

/// Step 3 for the entries `first, first + step, ... < end` of one row: each output depends
/// only on its input, the row maximum `m` and the total `s`. `span` is
/// `(in_base, out_base, in_stride, out_stride)`. Shared by both kernels so that chunked and
/// unchunked rows write with the same arithmetic.
#[cube]
#[allow(clippy::too_many_arguments)]
fn write_outputs<F: Float>(
    input: &Tensor<F>,
    output: &mut Tensor<F>,
    span: (usize, usize, usize, usize),
    first: usize,
    end: usize,
    #[comptime] step: usize,
    m: f32,
    total: f32,
    #[comptime] log: bool,
) {
    let (in_base, out_base, in_stride, out_stride) = span;
    let log_total = f32::ln(total);
    let group = comptime!((LOADS_IN_FLIGHT - 1) * step);
    let mut j = first;
    while j + group < end {
        let vals = load_group(input, in_base, in_stride, j, step);
        #[unroll]
        for u in 0..LOADS_IN_FLIGHT {
            let value = softmax_value(vals[u] - m, total, log_total, log);
            output[out_base + (j + u * step) * out_stride] = F::cast_from(value);
        }
        j += comptime!(LOADS_IN_FLIGHT * step);
    }
    while j < end {
        let shifted = f32::cast_from(input[in_base + j * in_stride]) - m;
        let value = softmax_value(shifted, total, log_total, log);
        output[out_base + j * out_stride] = F::cast_from(value);
        j += step;
    }
}

/// Step 3 for one entry, from `x - m`.
#[cube]
fn softmax_value(shifted: f32, total: f32, log_total: f32, #[comptime] log: bool) -> f32 {
    if comptime!(log) {
        shifted - log_total
    } else {
        f32::exp(shifted) / total
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
    // Rows past the end take part in the cube's syncs with an empty range.
    let mut end = 0;
    if in_range {
        end = len;
    }
    let (m, total) = max_and_sum_exp(
        input,
        in_base,
        in_stride,
        lane,
        end,
        lanes,
        &mut shared,
        slot,
    );

    // 3. The outputs; each element depends only on its input, m and the total.
    if in_range {
        let span = (in_base, out_base, in_stride, out_stride);
        write_outputs(input, output, span, lane, len, lanes, m, total, log);
    }
}

/// Rows of more than [`CHUNK_LEN`] entries are split into chunks of `CHUNK_LEN` (the last one
/// shorter), one cube per (row, chunk). The split depends on the row length alone.
pub const CHUNK_LEN: usize = 8192;

/// Threads per cube of the chunked kernels; each owns partial `t` of its chunk.
pub const CHUNK_LANES: usize = 256;

/// Pass 1 of a chunked row: the chunk's maximum `m_c` and `s_c = sum exp(x - m_c)` over the
/// chunk, each in the order of the unchunked kernel (partial `t` takes chunk-relative
/// `j ≡ t (mod 256)`, then the pairwise fold). Written to `stats[2 * (row * chunks + c)]`.
#[cube(launch_unchecked, address_type = "dynamic")]
pub fn softmax_chunk_stats_kernel<F: Float>(
    input: &Tensor<F>,
    stats: &mut Array<f32>,
    row_shape: Sequence<FastDivmod<usize>>,
    in_row_strides: Sequence<usize>,
    len: usize,
    in_stride: usize,
    chunks: usize,
    num_rows: usize,
    #[define(F)] _dtype: StorageType,
) {
    if CUBE_POS >= num_rows * chunks {
        terminate!(); // a whole spare cube of a 2-D grid: no thread of it syncs
    }
    let lane = UNIT_POS_X as usize;
    let lanes = comptime!(CHUNK_LANES);
    let row = CUBE_POS / chunks;
    let chunk = CUBE_POS % chunks;
    let base = index_offset_contiguous_fastdivmod(row, &row_shape, &in_row_strides, 1usize);
    let (start, end) = chunk_range(chunk, len);

    let mut shared = SharedMemory::<f32>::new(comptime!(CHUNK_LANES));
    let (m, total) = max_and_sum_exp(
        input,
        base,
        in_stride,
        start + lane,
        end,
        lanes,
        &mut shared,
        0,
    );
    if lane == 0 {
        stats[2 * CUBE_POS] = m;
        stats[2 * CUBE_POS + 1] = total;
    }
}

/// Pass 2 of a chunked row: every thread combines the row's chunk statistics in chunk
/// order (`m = max_c m_c`, then `s = sum_c s_c * exp(m_c - m)` for c = 0, 1, ...), the same
/// computation in every cube of the row, and writes its chunk's outputs.
#[cube(launch_unchecked, address_type = "dynamic")]
pub fn softmax_chunk_write_kernel<F: Float>(
    input: &Tensor<F>,
    output: &mut Tensor<F>,
    stats: &Array<f32>,
    row_shape: Sequence<FastDivmod<usize>>,
    in_row_strides: Sequence<usize>,
    out_row_strides: Sequence<usize>,
    len: usize,
    in_stride: usize,
    out_stride: usize,
    chunks: usize,
    num_rows: usize,
    #[comptime] log: bool,
    #[define(F)] _dtype: StorageType,
) {
    if CUBE_POS >= num_rows * chunks {
        terminate!(); // a whole spare cube of a 2-D grid: no thread of it syncs
    }
    let lane = UNIT_POS_X as usize;
    let lanes = comptime!(CHUNK_LANES);
    let row = CUBE_POS / chunks;
    let chunk = CUBE_POS % chunks;
    let first = row * chunks;

    let mut m = f32::min_value();
    for c in 0..chunks {
        m = f32::max(m, stats[2 * (first + c)]);
    }
    let mut total = 0.0f32;
    for c in 0..chunks {
        total += stats[2 * (first + c) + 1] * f32::exp(stats[2 * (first + c)] - m);
    }
    let in_base = index_offset_contiguous_fastdivmod(row, &row_shape, &in_row_strides, 1usize);
    let out_base = index_offset_contiguous_fastdivmod(row, &row_shape, &out_row_strides, 1usize);
    let (start, end) = chunk_range(chunk, len);
    let span = (in_base, out_base, in_stride, out_stride);
    write_outputs(input, output, span, start + lane, end, lanes, m, total, log);
}
