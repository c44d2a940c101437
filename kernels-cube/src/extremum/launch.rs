//! Host side of the extremum selections: argument checks and the grid.

use cubecl::prelude::*;

use super::kernel::{extremum_combine_kernel, extremum_lanes_kernel, CUBE_UNITS};
use super::ExtremumOp;
use super::CHUNK_LEN;
use crate::layout::{cube_count, max_offset, row_args, rows_per_cube, FULL_CUBES_FROM_ROWS};
use crate::reduce::kernel::SCAN_UNROLL;
use crate::reduce::launch::{check_reduction, vector_aligned, ReduceDimError};
use crate::reduce::{lanes_for_len, CHUNK, LONG_ROW_LANES, LONG_ROW_MIN_LEN};

/// Candidate length from which few candidates get a whole cube each (one vector per thread
/// at 256 threads and vectors of 4).
const WHOLE_CUBE_FROM_LEN: usize = 1024;

/// Writes the winner of `op` along `dim` of `input` (element type `dtype`, any strides) to
/// `values` (same type) and its index along `dim` to `indices` (integer type `index_dtype`),
/// both contiguous with the input's shape and `dim` set to 1. It refuses what the
/// reductions along a dim refuse, with the same error.
#[allow(clippy::too_many_arguments)]
pub fn launch_extremum_dim<R: Runtime>(
    client: &ComputeClient<R>,
    input: TensorBinding<R>,
    values: TensorBinding<R>,
    indices: TensorBinding<R>,
    dim: usize,
    op: ExtremumOp,
    dtype: StorageType,
    index_dtype: StorageType,
) -> Result<(), ReduceDimError> {
    let shape: Vec<usize> = input.shape.iter().copied().collect();
    let strides: Vec<usize> = input.strides.iter().copied().collect();
    let expected = check_reduction(&shape, dim, &[&values, &indices])?;
    let reduce_len = shape[dim];
    let num_rows: usize = expected.iter().product();
    if num_rows == 0 {
        return Ok(());
    }
    let address_type = AddressType::from_len(max_offset(&shape, &strides).max(num_rows));
    let (shape_arg, row_strides) = row_args::<R>(&expected, &strides, dim);
    let lanes = lanes_for_len(reduce_len);
    let (min, abs) = (op == ExtremumOp::Min, op == ExtremumOp::MaxAbs);
    // Long rows are split into chunks so that a few rows still fill the GPU. The winner is
    // the same whatever the split (the module's total order), so the rule is free; it
    // depends on the row length alone all the same.
    let chunks = if reduce_len >= LONG_ROW_MIN_LEN {
        reduce_len.div_ceil(CHUNK_LEN)
    } else {
        1
    };
    let chunk_len = if chunks == 1 { reduce_len } else { CHUNK_LEN };
    let candidates = num_rows * chunks;
    // Where the candidates are too few to fill the GPU with one warp each, a whole cube
    // scans each of them: 64 rows of 4096 on one warp a row took 1.4x Burn's time. Unlike
    // the sums', this choice may follow the row count: the winner is the same for any
    // mapping (the module's total order).
    let lanes = if candidates < FULL_CUBES_FROM_ROWS && chunk_len >= WHOLE_CUBE_FROM_LEN {
        LONG_ROW_LANES
    } else {
        lanes
    };
    // Vector loads where every chunk of the split starts on a vector boundary; only how the
    // row is read depends on it.
    let width = if vector_aligned(&input, dim, dtype) && chunk_len.is_multiple_of(CHUNK) {
        CHUNK
    } else {
        1
    };
    // Loads in flight per thread: up to the sums' `SCAN_UNROLL`, but no more than a
    // thread's share of a chunk, so that a whole cube on a row of 4096 issues its four loads
    // at once; with a group of 16 it read them one after the other in the remainder loop.
    // Speed only: any mapping finds the same winner.
    let per_lane = (chunk_len / width / lanes).clamp(1, SCAN_UNROLL);
    let unroll = 1 << per_lane.ilog2();
    let rows_per_cube = rows_per_cube(lanes, candidates);
    let scratch = |elem: StorageType| {
        let handle = client.empty(candidates * elem.size());
        // SAFETY: a contiguous 1-D tensor of `candidates` elements of `elem` over a buffer
        // of exactly that size.
        unsafe { TensorBinding::from_raw_parts(handle, [1].into(), [candidates].into()) }
    };
    let (lane_values, lane_indices) = if chunks == 1 {
        (values.clone(), indices.clone())
    } else {
        (scratch(dtype), scratch(index_dtype))
    };
    unsafe {
        extremum_lanes_kernel::launch_unchecked(
            client,
            cube_count(client, candidates.div_ceil(rows_per_cube)),
            CubeDim::new_2d(lanes as u32, rows_per_cube as u32),
            address_type,
            width,
            input.into_tensor_arg(),
            lane_values.clone().into_tensor_arg(),
            lane_indices.clone().into_tensor_arg(),
            shape_arg,
            row_strides,
            reduce_len,
            strides[dim],
            candidates,
            chunks,
            chunk_len,
            lanes,
            width,
            unroll,
            min,
            abs,
            [dtype, index_dtype],
        );
        if chunks > 1 {
            extremum_combine_kernel::launch_unchecked(
                client,
                cube_count(client, num_rows.div_ceil(CUBE_UNITS as usize)),
                CubeDim::new_1d(CUBE_UNITS),
                address_type,
                lane_values.into_tensor_arg(),
                lane_indices.into_tensor_arg(),
                values.into_tensor_arg(),
                indices.into_tensor_arg(),
                reduce_len,
                num_rows,
                chunks,
                min,
                [dtype, index_dtype],
            );
        }
    }
    Ok(())
}
