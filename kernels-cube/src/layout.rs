//! Where the kernels' elements sit, shared by every op family: strides and offsets of
//! strided views, the arguments that locate a row, the grid (rows per cube, cube counts)
//! and groups of loads in flight. None of it reaches the order of the arithmetic: these
//! decide which thread reads which address, never which values are combined or how.

use cubecl::prelude::*;
use cubecl::std::FastDivmod;

use crate::reduce::kernel::CUBE_UNITS;

/// The kernel arguments that locate the first input element of each output row of a
/// reduction along `dim`: the output shape (`dim` set to 1) and the input strides with
/// `dim`'s zeroed (see `reduce::kernel::row_offset`).
pub(crate) fn row_args<R: Runtime>(
    out_shape: &[usize],
    in_strides: &[usize],
    dim: usize,
) -> (SequenceArg<R, FastDivmod<usize>>, SequenceArg<R, usize>) {
    let mut shape_arg: SequenceArg<R, FastDivmod<usize>> = SequenceArg::new();
    for &d in out_shape {
        shape_arg.push(d);
    }
    let row_strides: SequenceArg<R, usize> = (0..out_shape.len())
        .map(|d| if d == dim { 0 } else { in_strides[d] })
        .collect();
    (shape_arg, row_strides)
}

/// Row-major strides of a contiguous tensor.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// One past the largest element offset a strided view can touch.
pub(crate) fn max_offset(shape: &[usize], strides: &[usize]) -> usize {
    if shape.contains(&0) {
        return 0;
    }
    1 + shape
        .iter()
        .zip(strides)
        .map(|(&n, &s)| (n - 1) * s)
        .sum::<usize>()
}

/// Row count from which a lanes kernel packs `CUBE_UNITS / lanes` rows into a cube.
pub const FULL_CUBES_FROM_ROWS: usize = 8192;

/// Rows per cube of a lanes kernel (reduce, extremum): full cubes of `CUBE_UNITS` threads
/// once there are enough rows to fill the device with them, else one row per cube, so that
/// a few rows still spread over many multiprocessors (64 rows of 4096 ran on 8 cubes and
/// took twice Burn's time). It changes which cube computes a row, never how; the
/// invariance tests cover both sides of the threshold.
pub(crate) fn rows_per_cube(lanes: usize, num_rows: usize) -> usize {
    if num_rows >= FULL_CUBES_FROM_ROWS {
        CUBE_UNITS as usize / lanes
    } else {
        1
    }
}

/// A 1-D cube count spread over x and y so that large launches stay within the per-axis
/// limits; kernels read the linear `CUBE_POS`, so the split never reaches the arithmetic.
pub(crate) fn cube_count<R: Runtime>(client: &ComputeClient<R>, cubes: usize) -> CubeCount {
    let max_x = client.properties().hardware.max_cube_count.0 as usize;
    if cubes <= max_x {
        CubeCount::Static(cubes as u32, 1, 1)
    } else {
        let y = cubes.div_ceil(max_x);
        let x = cubes.div_ceil(y);
        CubeCount::Static(x as u32, y as u32, 1)
    }
}

/// Loads per thread issued together by the passes over a row. Only speed depends on it:
/// each pass still combines its entries one by one in increasing `j`. With one load in
/// flight per thread the passes waited on memory: log-softmax over 256 rows of 128256 took
/// 0.157 ms on an H200 (1.14x torch's time), with eight 0.126 ms (0.91x).
pub const LOADS_IN_FLIGHT: usize = 8;

/// The entries `j, j + step, ..., j + (LOADS_IN_FLIGHT - 1) step` of a row, in f32, all
/// loads issued before any is used.
#[cube]
pub(crate) fn load_group<F: Float>(
    input: &Tensor<F>,
    base: usize,
    stride: usize,
    j: usize,
    #[comptime] step: usize,
) -> Array<f32> {
    let mut vals = Array::<f32>::new(LOADS_IN_FLIGHT);
    #[unroll]
    for u in 0..LOADS_IN_FLIGHT {
        vals[u] = f32::cast_from(input[base + (j + u * step) * stride]);
    }
    vals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_and_extent() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(contiguous_strides(&[]), Vec::<usize>::new());
        assert_eq!(max_offset(&[3, 4], &[1, 3]), 12);
        assert_eq!(max_offset(&[3, 0], &[1, 3]), 0);
        assert_eq!(max_offset(&[5, 2], &[0, 1]), 2); // broadcast dim reads the same row
    }
}
