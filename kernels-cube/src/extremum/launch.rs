//! Host side of the extremum selections: argument checks and the grid.

use cubecl::prelude::*;

use super::kernel::{extremum_lanes_kernel, CUBE_UNITS};
use super::ExtremumOp;
use crate::reduce::lanes_for_len;
use crate::reduce::launch::{check_reduction, cube_count, max_offset, row_args, ReduceDimError};

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
    let rows_per_cube = CUBE_UNITS as usize / lanes;
    let cubes = num_rows.div_ceil(rows_per_cube);
    unsafe {
        extremum_lanes_kernel::launch_unchecked(
            client,
            cube_count(client, cubes),
            CubeDim::new_2d(lanes as u32, rows_per_cube as u32),
            address_type,
            input.into_tensor_arg(),
            values.into_tensor_arg(),
            indices.into_tensor_arg(),
            shape_arg,
            row_strides,
            reduce_len,
            strides[dim],
            num_rows,
            lanes,
            op == ExtremumOp::Min,
            op == ExtremumOp::MaxAbs,
            [dtype, index_dtype],
        );
    }
    Ok(())
}
