//! Host side of the dim reductions: shape checks, the choice of mapping, the grid.

use core::fmt;

use cubecl::features::Plane;
use cubecl::prelude::*;

use super::kernel::{
    reduce_lanes_kernel, reduce_unit_kernel, reduce_vector_kernel, UNITS_PER_CUBE,
};
use super::{lanes_for_len, ReduceOp, CHUNK};
use crate::layout::{contiguous_strides, cube_count, max_offset, row_args, rows_per_cube};

/// Why [`launch_reduce_dim`] refused its arguments. The Burn layer validates user input
/// before it gets here, so these are programming errors rather than user errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReduceDimError {
    /// `dim` is not a dimension of the input.
    DimOutOfRange { dim: usize, rank: usize },
    /// The reduced dimension has length 0: a mean would be 0/0.
    EmptyReduction { dim: usize },
    /// The output is not the input shape with `dim` set to 1, or is not contiguous.
    BadOutput {
        expected: Vec<usize>,
        shape: Vec<usize>,
        strides: Vec<usize>,
    },
}

impl fmt::Display for ReduceDimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DimOutOfRange { dim, rank } => {
                write!(f, "dim {dim} is out of range for a tensor of rank {rank}")
            }
            Self::EmptyReduction { dim } => write!(f, "dim {dim} has length 0"),
            Self::BadOutput { expected, shape, strides } => write!(
                f,
                "output must be contiguous with shape {expected:?}, got shape {shape:?} strides {strides:?}"
            ),
        }
    }
}

impl std::error::Error for ReduceDimError {}

/// Reduces `input` along `dim` into `output`, which must be contiguous with the input's shape
/// and `dim` set to 1 (Burn's keep-dim convention). `dtype` is the element type of both.
///
/// Any input strides are accepted, including broadcast (zero) strides and transposed views;
/// the input is read in place, never copied.
pub fn launch_reduce_dim<R: Runtime>(
    client: &ComputeClient<R>,
    input: TensorBinding<R>,
    output: TensorBinding<R>,
    dim: usize,
    op: ReduceOp,
    dtype: StorageType,
) -> Result<(), ReduceDimError> {
    let shape: Vec<usize> = input.shape.iter().copied().collect();
    let expected = check_reduction(&shape, dim, &[&output])?;
    let reduce_len = shape[dim];
    let num_rows: usize = expected.iter().product();
    if num_rows == 0 {
        return Ok(());
    }
    let reduce_stride = input.strides[dim];

    let strides: Vec<usize> = input.strides.iter().copied().collect();
    let address_type = AddressType::from_len(max_offset(&shape, &strides).max(num_rows));

    let (shape_arg, row_strides) = row_args::<R>(&expected, &input.strides, dim);
    let mean = op == ReduceOp::Mean;
    let prod = op == ReduceOp::Prod;

    // The lanes mapping wants consecutive threads on consecutive elements; anything else
    // (strided rows, rows shorter than the lane count) is served better by one thread per row.
    let lanes = lanes_for_len(reduce_len);
    let lanes_mapping = reduce_stride == 1 && reduce_len >= lanes;
    let vector_mapping = lanes_mapping && vector_aligned(&input, dim, dtype);
    unsafe {
        if vector_mapping {
            let rows_per_cube = rows_per_cube(lanes, num_rows);
            reduce_vector_kernel::launch_unchecked(
                client,
                cube_count(client, num_rows.div_ceil(rows_per_cube)),
                CubeDim::new_2d(lanes as u32, rows_per_cube as u32),
                address_type,
                CHUNK,
                input.into_tensor_arg(),
                output.into_tensor_arg(),
                shape_arg,
                row_strides,
                reduce_len,
                num_rows,
                lanes,
                shuffle_fold(client, lanes),
                mean,
                prod,
                dtype,
            );
        } else if lanes_mapping {
            let rows_per_cube = rows_per_cube(lanes, num_rows);
            let cubes = num_rows.div_ceil(rows_per_cube);
            reduce_lanes_kernel::launch_unchecked(
                client,
                cube_count(client, cubes),
                CubeDim::new_2d(lanes as u32, rows_per_cube as u32),
                address_type,
                input.into_tensor_arg(),
                output.into_tensor_arg(),
                shape_arg,
                row_strides,
                reduce_len,
                reduce_stride,
                num_rows,
                lanes,
                mean,
                prod,
                dtype,
            );
        } else {
            let cubes = num_rows.div_ceil(UNITS_PER_CUBE as usize);
            reduce_unit_kernel::launch_unchecked(
                client,
                cube_count(client, cubes),
                CubeDim::new_1d(UNITS_PER_CUBE),
                address_type,
                input.into_tensor_arg(),
                output.into_tensor_arg(),
                shape_arg,
                row_strides,
                reduce_len,
                reduce_stride,
                num_rows,
                lanes,
                mean,
                prod,
                dtype,
            );
        }
    }
    Ok(())
}

/// Whether [`reduce_vector_kernel`] can read `input`'s rows along `dim`: contiguous rows, a
/// length and every row start a multiple of [`CHUNK`] elements, and an aligned first
/// element, so that every chunk is one aligned vector. It changes how the rows are read, never the order of the adds.
pub(crate) fn vector_aligned<R: Runtime>(
    input: &TensorBinding<R>,
    dim: usize,
    dtype: StorageType,
) -> bool {
    let offset = input.handle.offset_start.unwrap_or(0) as usize;
    let rows_aligned = (0..input.shape.len())
        .all(|d| d == dim || input.shape[d] == 1 || input.strides[d].is_multiple_of(CHUNK));
    input.strides[dim] == 1
        && input.shape[dim].is_multiple_of(CHUNK)
        && rows_aligned
        && offset.is_multiple_of(CHUNK * dtype.size())
}

/// Whether a row's `lanes` threads are exactly one plane of the runtime, so that the fold
/// can shuffle. Only the speed of the fold depends on it.
fn shuffle_fold<R: Runtime>(client: &ComputeClient<R>, lanes: usize) -> bool {
    let hardware = &client.properties().hardware;
    hardware.plane_size_min as usize == lanes
        && hardware.plane_size_max as usize == lanes
        && client.properties().features.plane.contains(Plane::Ops)
}

/// `Err((shape, strides))` unless `output` is contiguous with shape `expected`.
/// The checks every reduction along `dim` makes: `dim` in range and of non-zero length,
/// and each output contiguous with the input's shape and `dim` set to 1 (returned).
pub(crate) fn check_reduction<R: Runtime>(
    shape: &[usize],
    dim: usize,
    outputs: &[&TensorBinding<R>],
) -> Result<Vec<usize>, ReduceDimError> {
    let rank = shape.len();
    if dim >= rank {
        return Err(ReduceDimError::DimOutOfRange { dim, rank });
    }
    if shape[dim] == 0 {
        return Err(ReduceDimError::EmptyReduction { dim });
    }
    let expected: Vec<usize> = (0..rank)
        .map(|d| if d == dim { 1 } else { shape[d] })
        .collect();
    for output in outputs {
        if let Err((shape, strides)) = check_contiguous(output, &expected) {
            return Err(ReduceDimError::BadOutput {
                expected,
                shape,
                strides,
            });
        }
    }
    Ok(expected)
}

fn check_contiguous<R: Runtime>(
    output: &TensorBinding<R>,
    expected: &[usize],
) -> Result<(), (Vec<usize>, Vec<usize>)> {
    let shape: Vec<usize> = output.shape.iter().copied().collect();
    let strides: Vec<usize> = output.strides.iter().copied().collect();
    if shape == expected && strides == contiguous_strides(expected) {
        Ok(())
    } else {
        Err((shape, strides))
    }
}
