//! The `#[cube]` code of the extremum selections: one group of `lanes` threads per output,
//! or, for long rows, per chunk of a row followed by a combine.

use cubecl::prelude::*;
use cubecl::std::tensor::index_offset_contiguous_fastdivmod;
use cubecl::std::FastDivmod;

// The lanes kernel shares the reduce kernel's cube size and rows per cube
// (`layout::rows_per_cube`).
pub(crate) use crate::reduce::kernel::CUBE_UNITS;

/// Whether candidate `(bv, bi)` beats `(av, ai)` in the module's total order. `ai == len`
/// marks an empty candidate (a lane past the end of a short row), which everything beats.
/// `min` flips the comparison of numbers; NaN beats numbers either way.
#[cube]
fn beats(bv: f32, bi: usize, av: f32, ai: usize, len: usize, #[comptime] min: bool) -> bool {
    let mut better = false;
    if bi < len {
        if ai >= len {
            better = true;
        } else if av.is_nan() {
            better = bv.is_nan() && bi < ai;
        } else if bv.is_nan() {
            better = true;
        } else if bv == av {
            better = bi < ai;
        } else if comptime!(min) {
            better = bv < av;
        } else {
            better = bv > av;
        }
    }
    better
}

/// The entry as compared: `|v|` for max-|x|.
#[cube]
fn value_of(v: f32, #[comptime] abs: bool) -> f32 {
    let mut x = v;
    if comptime!(abs) {
        x = v.abs();
    }
    x
}

/// [`beats`] for the one case a lane's scan meets: indices grow, so a tie keeps the entry
/// already held. Written with selects, so that no load of the group waits behind a branch.
#[cube]
fn scan_takes(
    v: f32,
    best_v: f32,
    empty: bool,
    #[comptime] abs: bool,
    #[comptime] min: bool,
) -> bool {
    let x = value_of(v, abs);
    let mut better = x > best_v;
    if comptime!(min) {
        better = x < best_v;
    }
    empty || (!best_v.is_nan() && (x.is_nan() || better))
}

/// One group of `lanes` threads per candidate: the winner of entries
/// `chunk * chunk_len .. (chunk + 1) * chunk_len` of one row, written to
/// `values[row * chunks + chunk]` and `indices[..]` (contiguous). With `chunks == 1` the
/// candidates are the results: `values` and `indices` are then the outputs, contiguous with
/// the input's shape and `dim` set to 1.
///
/// The row is read as vectors of `width` elements (`N`), thread `t` taking vectors
/// `t, t + lanes, ...`: `width` 4 for contiguous aligned rows (one 16-byte load per f32
/// vector; 64 rows of 4096 took 1.6x Burn's time with one element per load), 1 for any
/// other layout. Each thread issues `unroll` loads before comparing them (the launch sizes
/// it to the thread's share of the chunk). The winner does not depend on the mapping (the
/// module's total order).
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub fn extremum_lanes_kernel<F: Float, I: Int, N: Size>(
    input: &Tensor<Vector<F, N>>,
    values: &mut Tensor<F>,
    indices: &mut Tensor<I>,
    out_shape: Sequence<FastDivmod<usize>>,
    row_strides: Sequence<usize>,
    reduce_len: usize,
    reduce_stride: usize,
    num_candidates: usize,
    chunks: usize,
    chunk_len: usize,
    #[comptime] lanes: usize,
    #[comptime] width: usize,
    #[comptime] unroll: usize,
    #[comptime] min: bool,
    #[comptime] abs: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let lane = UNIT_POS_X as usize;
    let local_row = UNIT_POS_Y as usize;
    // Chosen by the launch (`rows_per_cube`): which cube computes a row, never how.
    let rows_per_cube = CUBE_DIM_Y as usize;
    let candidate = CUBE_POS * rows_per_cube + local_row;
    let in_range = candidate < num_candidates;

    let mut best_v = 0.0f32;
    let mut best_i = reduce_len;
    if in_range {
        let row = candidate / chunks;
        let start = (candidate % chunks) * chunk_len;
        let mut end = start + chunk_len;
        if end > reduce_len {
            end = reduce_len;
        }
        // In vectors: the launch takes `width > 1` only where row starts, `chunk_len` and
        // `reduce_len` are multiples of it.
        let base = index_offset_contiguous_fastdivmod(row, &out_shape, &row_strides, 1usize)
            / comptime!(width);
        let last = end / comptime!(width);
        // `unroll` loads issued before the first is compared, as in the sum (see there);
        // entries are then taken in index order.
        let mut v = start / comptime!(width) + lane;
        let group = comptime!(lanes * unroll);
        while v + group - lanes < last {
            let mut vals = Array::<Vector<F, N>>::new(unroll);
            #[unroll]
            for u in 0..unroll {
                vals[u] = input[base + (v + u * lanes) * reduce_stride];
            }
            #[unroll]
            for u in 0..unroll {
                #[unroll]
                for c in 0..width {
                    let x = f32::cast_from(vals[u][c]);
                    let take = scan_takes(x, best_v, best_i == reduce_len, abs, min);
                    best_v = select(take, value_of(x, abs), best_v);
                    best_i = select(take, (v + u * lanes) * comptime!(width) + c, best_i);
                }
            }
            v += group;
        }
        while v < last {
            let vector = input[base + v * reduce_stride];
            #[unroll]
            for c in 0..width {
                let x = f32::cast_from(vector[c]);
                let take = scan_takes(x, best_v, best_i == reduce_len, abs, min);
                best_v = select(take, value_of(x, abs), best_v);
                best_i = select(take, v * comptime!(width) + c, best_i);
            }
            v += lanes;
        }
    }

    let mut shared_v = SharedMemory::<f32>::new(comptime!(CUBE_UNITS as usize));
    let mut shared_i = SharedMemory::<usize>::new(comptime!(CUBE_UNITS as usize));
    let slot = local_row * lanes;
    shared_v[slot + lane] = best_v;
    shared_i[slot + lane] = best_i;
    sync_cube();

    let mut step = comptime!(lanes / 2).runtime();
    while step > 0 {
        if lane < step {
            let (av, ai) = (shared_v[slot + lane], shared_i[slot + lane]);
            let (bv, bi) = (shared_v[slot + lane + step], shared_i[slot + lane + step]);
            if beats(bv, bi, av, ai, reduce_len, min) {
                shared_v[slot + lane] = bv;
                shared_i[slot + lane] = bi;
            }
        }
        sync_cube();
        step /= 2;
    }

    if in_range && lane == 0 {
        values[candidate] = F::cast_from(shared_v[slot]);
        indices[candidate] = I::cast_from(shared_i[slot]);
    }
}

/// One thread per row: the winner among the row's `chunks` candidates (already `|x|` for
/// max-|x|), into the contiguous outputs. Candidate values are the input's own values in
/// its dtype, so the round trip through `F` is exact.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub fn extremum_combine_kernel<F: Float, I: Int>(
    candidate_values: &Tensor<F>,
    candidate_indices: &Tensor<I>,
    values: &mut Tensor<F>,
    indices: &mut Tensor<I>,
    reduce_len: usize,
    num_rows: usize,
    chunks: usize,
    #[comptime] min: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let row = ABSOLUTE_POS;
    if row >= num_rows {
        terminate!();
    }
    let mut best_v = 0.0f32;
    let mut best_i = reduce_len;
    for c in 0..chunks {
        let v = f32::cast_from(candidate_values[row * chunks + c]);
        let i = usize::cast_from(candidate_indices[row * chunks + c]);
        if beats(v, i, best_v, best_i, reduce_len, min) {
            best_v = v;
            best_i = i;
        }
    }
    values[row] = F::cast_from(best_v);
    indices[row] = I::cast_from(best_i);
}
