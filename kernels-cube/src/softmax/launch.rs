//! Host side of softmax / log-softmax: argument checks and the grid.

use core::fmt;

use cubecl::prelude::*;
use cubecl::std::FastDivmod;

use super::kernel::{
    softmax_chunk_stats_kernel, softmax_chunk_write_kernel, softmax_lanes_kernel, CHUNK_LANES,
    CHUNK_LEN, CUBE_UNITS,
};
use super::SoftmaxKind;
use crate::layout::{contiguous_strides, cube_count, max_offset};
use crate::reduce::lanes_for_len;

/// Why [`launch_softmax_dim`] refused its arguments (programming errors: the Burn layer
/// validates user input first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SoftmaxError {
    /// `dim` is not a dimension of the input.
    DimOutOfRange { dim: usize, rank: usize },
    /// The output is not a contiguous tensor of the input's shape.
    BadOutput {
        expected: Vec<usize>,
        shape: Vec<usize>,
        strides: Vec<usize>,
    },
}

impl fmt::Display for SoftmaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DimOutOfRange { dim, rank } => {
                write!(f, "dim {dim} is out of range for a tensor of rank {rank}")
            }
            Self::BadOutput { expected, shape, strides } => write!(
                f,
                "output must be contiguous with shape {expected:?}, got shape {shape:?} strides {strides:?}"
            ),
        }
    }
}

impl std::error::Error for SoftmaxError {}

/// Softmax or log-softmax of `input` along `dim` into `output`, a contiguous tensor of the
/// same shape. Any input strides are accepted and read in place.
pub fn launch_softmax_dim<R: Runtime>(
    client: &ComputeClient<R>,
    input: TensorBinding<R>,
    output: TensorBinding<R>,
    dim: usize,
    kind: SoftmaxKind,
    dtype: StorageType,
) -> Result<(), SoftmaxError> {
    let shape: Vec<usize> = input.shape.iter().copied().collect();
    let in_strides: Vec<usize> = input.strides.iter().copied().collect();
    let rank = shape.len();
    if dim >= rank {
        return Err(SoftmaxError::DimOutOfRange { dim, rank });
    }
    let out_shape: Vec<usize> = output.shape.iter().copied().collect();
    let out_strides: Vec<usize> = output.strides.iter().copied().collect();
    if out_shape != shape || out_strides != contiguous_strides(&shape) {
        return Err(SoftmaxError::BadOutput {
            expected: shape,
            shape: out_shape,
            strides: out_strides,
        });
    }
    let len = shape[dim];
    let num_rows: usize = shape
        .iter()
        .enumerate()
        .filter(|(d, _)| *d != dim)
        .map(|(_, n)| n)
        .product();
    if len == 0 || num_rows == 0 {
        return Ok(());
    }

    let row_shape = || {
        let mut arg: SequenceArg<R, FastDivmod<usize>> = SequenceArg::new();
        for (d, &n) in shape.iter().enumerate() {
            arg.push(if d == dim { 1 } else { n });
        }
        arg
    };
    let zero_dim = |strides: &[usize]| -> SequenceArg<R, usize> {
        (0..rank)
            .map(|d| if d == dim { 0 } else { strides[d] })
            .collect()
    };
    let address_type =
        AddressType::from_len(max_offset(&shape, &in_strides).max(shape.iter().product()));
    let log = kind == SoftmaxKind::LogSoftmax;
    if len > CHUNK_LEN {
        // Long rows: one cube per (row, chunk), so that even a single row fills the GPU.
        let chunks = len.div_ceil(CHUNK_LEN);
        let cubes = num_rows * chunks;
        let stats = client.empty(cubes * 2 * core::mem::size_of::<f32>());
        unsafe {
            softmax_chunk_stats_kernel::launch_unchecked(
                client,
                cube_count(client, cubes),
                CubeDim::new_1d(CHUNK_LANES as u32),
                address_type,
                input.clone().into_tensor_arg(),
                ArrayArg::from_raw_parts(stats.clone(), cubes * 2),
                row_shape(),
                zero_dim(&in_strides),
                len,
                in_strides[dim],
                chunks,
                num_rows,
                dtype,
            );
            softmax_chunk_write_kernel::launch_unchecked(
                client,
                cube_count(client, cubes),
                CubeDim::new_1d(CHUNK_LANES as u32),
                address_type,
                input.into_tensor_arg(),
                output.into_tensor_arg(),
                ArrayArg::from_raw_parts(stats, cubes * 2),
                row_shape(),
                zero_dim(&in_strides),
                zero_dim(&out_strides),
                len,
                in_strides[dim],
                out_strides[dim],
                chunks,
                num_rows,
                log,
                dtype,
            );
        }
        return Ok(());
    }

    let lanes = lanes_for_len(len);
    let rows_per_cube = CUBE_UNITS as usize / lanes;
    unsafe {
        softmax_lanes_kernel::launch_unchecked(
            client,
            cube_count(client, num_rows.div_ceil(rows_per_cube)),
            CubeDim::new_2d(lanes as u32, rows_per_cube as u32),
            address_type,
            input.into_tensor_arg(),
            output.into_tensor_arg(),
            row_shape(),
            zero_dim(&in_strides),
            zero_dim(&out_strides),
            len,
            in_strides[dim],
            out_strides[dim],
            num_rows,
            lanes,
            log,
            dtype,
        );
    }
    Ok(())
}
