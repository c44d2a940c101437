//! Staging of key and value blocks into shared memory: each thread's loads issued before
//! any is used, plainly or through asynchronous copies. Which path stages a block changes
//! when its values arrive, never which values.

use super::*;

/// Copies rows `first_row .. first_row + block_rows` (zeros for rows `>= rows`, which must be
/// at least 1), columns `0 .. width` (zeros for columns `>= row_len`) of a row-major tensor
/// to `smem[base + j * pitch + c]`, through registers. Every thread of the cube takes part;
/// the caller synchronises. Out-of-range elements are read at a clamped, valid address and
/// then replaced: no load sits behind a branch, so each thread has all its loads in flight
/// at once instead of waiting for them one by one.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn stage_rows<F: Float>(
    tensor: &Tensor<F>,
    smem: &mut SharedMemory<F>,
    base: usize,
    first_row: usize,
    rows: usize,
    #[comptime] row_len: usize,
    #[comptime] width: usize,
    #[comptime] pitch: usize,
    #[comptime] block_rows: usize,
    #[comptime] units: usize,
) {
    // 16 rows per warp, 32 lanes and an even width: every thread copies width / 2 elements.
    comptime!(assert!((block_rows * width).is_multiple_of(units)));
    let tid = UNIT_POS_Y as usize * comptime!(PLANE) + UNIT_POS_X as usize;
    let last = rows - 1;
    #[unroll]
    for r in 0..comptime!(block_rows * width / units) {
        let i = tid + r * units;
        let j = i / width;
        let c = i % width;
        let row = (first_row + select(j < rows, j, last)) * row_len;
        let mut col = c;
        if comptime!(width > row_len) {
            col = select(c < row_len, c, comptime!(row_len - 1));
        }
        let x = tensor[row + col];
        smem[base + j * pitch + c] = select(j < rows && c < row_len, x, F::new(0.0));
    }
}

/// Issues the `cp.async` copies of rows `first_row .. first_row + block_rows` of a row-major
/// tensor with rows of `row_len` (a multiple of 8) to `smem[base + j * pitch ..]`, 16 bytes
/// each. Rows `>= rows` (at least 1) copy row `rows - 1` instead. The caller commits them to
/// a barrier.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn stage_rows_async<F: Float>(
    tensor: &Tensor<F>,
    smem: &mut SharedMemory<F>,
    base: usize,
    first_row: usize,
    rows: usize,
    #[comptime] row_len: usize,
    #[comptime] pitch: usize,
    #[comptime] block_rows: usize,
    #[comptime] units: usize,
) {
    let per_row = comptime!(row_len / 8);
    let total = comptime!(block_rows * per_row);
    let tid = UNIT_POS_Y as usize * comptime!(PLANE) + UNIT_POS_X as usize;
    let last = rows - 1;
    if comptime!(units.is_multiple_of(per_row) && total.is_multiple_of(units)) {
        // Every round copies `units / per_row` whole rows, the thread the same 16 bytes of
        // each: its row and column are worked out once, and a full block needs no clamp.
        let step = comptime!(units / per_row);
        let j0 = tid / per_row;
        let col = (tid % per_row) * 8;
        let src0 = first_row * row_len + col;
        let dst0 = base + j0 * pitch + col;
        if rows >= block_rows {
            #[unroll]
            for r in 0..comptime!(total / units) {
                let src = src0 + (j0 + r * step) * row_len;
                let dst = dst0 + comptime!(r * step * pitch);
                copy_async(
                    &tensor.slice(src, src + 8),
                    &mut smem.slice_mut(dst, dst + 8),
                    8u32,
                );
            }
        } else {
            #[unroll]
            for r in 0..comptime!(total / units) {
                let j = j0 + r * step;
                let src = src0 + select(j < rows, j, last) * row_len;
                let dst = dst0 + comptime!(r * step * pitch);
                copy_async(
                    &tensor.slice(src, src + 8),
                    &mut smem.slice_mut(dst, dst + 8),
                    8u32,
                );
            }
        }
    } else {
        #[unroll]
        for r in 0..comptime!(total.div_ceil(units)) {
            let i = tid + r * units;
            if i < total {
                let j = i / per_row;
                let c = (i % per_row) * 8;
                let src = (first_row + select(j < rows, j, last)) * row_len + c;
                let dst = base + j * pitch + c;
                copy_async(
                    &tensor.slice(src, src + 8),
                    &mut smem.slice_mut(dst, dst + 8),
                    8u32,
                );
            }
        }
    }
}

/// Issues the `cp.async` copies of one stage, keys then values, into the buffer at `base`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn stage_async<F: Float>(
    key: &Tensor<F>,
    value: &Tensor<F>,
    smem: &mut SharedMemory<F>,
    base: usize,
    first_row: usize,
    rows: usize,
    #[comptime] dim: usize,
    #[comptime] dim_v: usize,
    #[comptime] warps: usize,
) {
    let staged = comptime!(MMA_BLOCK_K);
    let units = comptime!(PLANE * warps);
    let k_pitch = comptime!(k_pitch(dim));
    stage_rows_async(
        key, smem, base, first_row, rows, dim, k_pitch, staged, units,
    );
    let v_base = base + comptime!(staged * k_pitch);
    stage_rows_async(
        value,
        smem,
        v_base,
        first_row,
        rows,
        dim_v,
        comptime!(v_pitch(dim_v)),
        staged,
        units,
    );
}

/// Stages keys then values through registers into the one buffer, padded with zeros to the
/// instruction's shape.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn stage_plain<F: Float>(
    key: &Tensor<F>,
    value: &Tensor<F>,
    smem: &mut SharedMemory<F>,
    first_row: usize,
    rows: usize,
    #[comptime] dim: usize,
    #[comptime] dim_v: usize,
    #[comptime] warps: usize,
) {
    let staged = comptime!(MMA_BLOCK_K);
    let units = comptime!(PLANE * warps);
    let k_pitch = comptime!(k_pitch(dim));
    let k_width = comptime!(k_width(dim));
    stage_rows(
        key, smem, 0usize, first_row, rows, dim, k_width, k_pitch, staged, units,
    );
    let v_width = comptime!(v_width(dim_v));
    let v_base = comptime!(staged * k_pitch);
    stage_rows(
        value,
        smem,
        v_base,
        first_row,
        rows,
        dim_v,
        v_width,
        comptime!(v_pitch(dim_v)),
        staged,
        units,
    );
}

/// Zeros the key columns `dim .. k_pitch` of every staged row of every buffer: with a head
/// dim that is not a multiple of 16, the score's last instruction reads them (times zero
/// query elements, so they must not hold NaN). The copies never write them.
#[cube]
pub(super) fn zero_key_padding<F: Float>(
    smem: &mut SharedMemory<F>,
    #[comptime] dim: usize,
    #[comptime] dim_v: usize,
    #[comptime] warps: usize,
    #[comptime] buffers: usize,
) {
    let pad = comptime!(k_width(dim) - dim);
    if comptime!(pad > 0) {
        let staged = comptime!(MMA_BLOCK_K);
        let total = comptime!(buffers * staged * pad);
        let units = comptime!(PLANE * warps);
        let tid = UNIT_POS_Y as usize * comptime!(PLANE) + UNIT_POS_X as usize;
        #[unroll]
        for r in 0..comptime!(total.div_ceil(units)) {
            let i = tid + r * units;
            if i < total {
                let b = i / comptime!(staged * pad);
                let j = (i / pad) % staged;
                let c = dim + i % pad;
                smem[b * comptime!(stage_elems(dim, dim_v)) + j * comptime!(k_pitch(dim)) + c] =
                    F::new(0.0);
            }
        }
    }
}
