//! Host side of the extremum selections: argument checks and the grid.

use core::fmt;

use cubecl::prelude::*;

use super::kernel::{extremum_lanes_kernel, CUBE_UNITS};
use super::ExtremumOp;
use crate::reduce::lanes_for_len;
use crate::reduce::launch::{check_contiguous, cube_count, max_offset, row_args};

/// Why [`launch_extremum_dim`] refused its arguments (programming errors: the Burn layer
/// validates user input first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtremumError {
    DimOutOfRange {
        dim: usize,
        rank: usize,
    },
    /// An empty dim has no extremum.
    EmptyReduction {
        dim: usize,
    },
    /// `values` or `indices` is not contiguous with the input's shape and `dim` set to 1.
    BadOutput {
        expected: Vec<usize>,
        shape: Vec<usize>,
        strides: Vec<usize>,
    },
}

impl fmt::Display for ExtremumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DimOutOfRange { dim, rank } => {
                write!(f, "dim {dim} is out of range for a tensor of rank {rank}")
            }
            Self::EmptyReduction { dim } => write!(f, "dim {dim} has length 0"),
            Self::BadOutput {
                expected,
                shape,
                strides,
            } => write!(
                f,
                "outputs must be contiguous with shape {expected:?}, got shape {shape:?} strides {strides:?}"
            ),
        }
    }
}

impl std::error::Error for ExtremumError {}

/// Writes the winner of `op` along `dim` of `input` (element type `dtype`, any strides) to
/// `values` (same type) and its index along `dim` to `indices` (integer type `index_dtype`),
/// both contiguous with the input's shape and `dim` set to 1.
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
) -> Result<(), ExtremumError> {
    let shape: Vec<usize> = input.shape.iter().copied().collect();
    let strides: Vec<usize> = input.strides.iter().copied().collect();
    let rank = shape.len();
    if dim >= rank {
        return Err(ExtremumError::DimOutOfRange { dim, rank });
    }
    let reduce_len = shape[dim];
    if reduce_len == 0 {
        return Err(ExtremumError::EmptyReduction { dim });
    }
    let expected: Vec<usize> = (0..rank)
        .map(|d| if d == dim { 1 } else { shape[d] })
        .collect();
    for out in [&values, &indices] {
        if let Err((shape, strides)) = check_contiguous(out, &expected) {
            return Err(ExtremumError::BadOutput {
                expected,
                shape,
                strides,
            });
        }
    }
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
