//! Host side of layer and RMS normalization: argument checks and the grid.

use core::fmt;

use cubecl::prelude::*;
use cubecl::std::FastDivmod;

use super::kernel::norm_kernel;
use super::{lanes_for_len, NormKind};
use crate::layout::{contiguous_strides, cube_count, max_offset, rows_per_cube};
use crate::reduce::kernel::CUBE_UNITS;

/// Why [`launch_norm`] refused its arguments (programming errors: the Burn layer validates
/// user input first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NormError {
    /// The input has rank 0: there is no last dimension to normalize.
    NoLastDim,
    /// RMS norm has no `beta`.
    RmsWithBeta,
    /// `gamma` or `beta` is not a 1-D tensor of the last dimension's length.
    BadParameter {
        name: &'static str,
        expected: usize,
        shape: Vec<usize>,
    },
    /// The output is not a contiguous tensor of the input's shape.
    BadOutput {
        expected: Vec<usize>,
        shape: Vec<usize>,
        strides: Vec<usize>,
    },
}

impl fmt::Display for NormError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoLastDim => write!(f, "the input has rank 0"),
            Self::RmsWithBeta => write!(f, "RMS norm takes no beta"),
            Self::BadParameter { name, expected, shape } => {
                write!(f, "{name} must have shape [{expected}], got {shape:?}")
            }
            Self::BadOutput { expected, shape, strides } => write!(
                f,
                "output must be contiguous with shape {expected:?}, got shape {shape:?} strides {strides:?}"
            ),
        }
    }
}

impl std::error::Error for NormError {}

/// Layer or RMS normalization (`kind`) of `input` over its last dimension into `output`, a
/// contiguous tensor of the same shape: `(x - mean) / sqrt(var + epsilon) * gamma (+ beta)`,
/// or `x / sqrt(mean(x^2) + epsilon) * gamma`. `gamma` and `beta` are 1-D of the last
/// dimension's length; every operand is read in place through its strides. `dtype` is the
/// element type of all of them.
#[allow(clippy::too_many_arguments)]
pub fn launch_norm<R: Runtime>(
    client: &ComputeClient<R>,
    input: TensorBinding<R>,
    gamma: TensorBinding<R>,
    beta: Option<TensorBinding<R>>,
    output: TensorBinding<R>,
    epsilon: f32,
    kind: NormKind,
    dtype: StorageType,
) -> Result<(), NormError> {
    if kind == NormKind::Rms && beta.is_some() {
        return Err(NormError::RmsWithBeta);
    }
    let shape: Vec<usize> = input.shape.iter().copied().collect();
    let in_strides: Vec<usize> = input.strides.iter().copied().collect();
    let rank = shape.len();
    let Some(&len) = shape.last() else {
        return Err(NormError::NoLastDim);
    };
    for (name, parameter) in [("gamma", Some(&gamma)), ("beta", beta.as_ref())] {
        if let Some(p) = parameter {
            if p.shape.len() != 1 || p.shape[0] != len {
                return Err(NormError::BadParameter {
                    name,
                    expected: len,
                    shape: p.shape.iter().copied().collect(),
                });
            }
        }
    }
    let out_shape: Vec<usize> = output.shape.iter().copied().collect();
    let out_strides: Vec<usize> = output.strides.iter().copied().collect();
    if out_shape != shape || out_strides != contiguous_strides(&shape) {
        return Err(NormError::BadOutput {
            expected: shape,
            shape: out_shape,
            strides: out_strides,
        });
    }
    let num_rows: usize = shape[..rank - 1].iter().product();
    if len == 0 || num_rows == 0 {
        return Ok(());
    }

    let mut row_shape: SequenceArg<R, FastDivmod<usize>> = SequenceArg::new();
    for (d, &n) in shape.iter().enumerate() {
        row_shape.push(if d == rank - 1 { 1 } else { n });
    }
    let in_row_strides: SequenceArg<R, usize> = (0..rank)
        .map(|d| if d == rank - 1 { 0 } else { in_strides[d] })
        .collect();
    let parameter_extent = |p: &TensorBinding<R>| (len - 1) * p.strides[0] + 1;
    let address_type = AddressType::from_len(
        max_offset(&shape, &in_strides)
            .max(num_rows * len)
            .max(parameter_extent(&gamma))
            .max(beta.as_ref().map_or(0, parameter_extent)),
    );

    let lanes = lanes_for_len(len);
    let rows_per_cube = rows_per_cube(lanes, num_rows);
    debug_assert!(lanes * rows_per_cube <= CUBE_UNITS as usize);
    let (gamma_stride, has_beta) = (gamma.strides[0], beta.is_some());
    let beta_stride = beta.as_ref().map_or(0, |b| b.strides[0]);
    // An absent beta binds gamma: the kernel never reads it (`has_beta` is comptime).
    let beta = beta.unwrap_or_else(|| gamma.clone());
    unsafe {
        norm_kernel::launch_unchecked(
            client,
            cube_count(client, num_rows.div_ceil(rows_per_cube)),
            CubeDim::new_2d(lanes as u32, rows_per_cube as u32),
            address_type,
            input.into_tensor_arg(),
            gamma.into_tensor_arg(),
            beta.into_tensor_arg(),
            output.into_tensor_arg(),
            row_shape,
            in_row_strides,
            len,
            in_strides[rank - 1],
            gamma_stride,
            beta_stride,
            epsilon,
            num_rows,
            lanes,
            kind == NormKind::Layer,
            has_beta,
            dtype,
        );
    }
    Ok(())
}
