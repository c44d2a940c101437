//! f64 references for the dim reductions and the error bounds the tests hold the kernels to.

use super::{lanes_for_len, ReduceOp, CHUNK};

/// Reduces a contiguous row-major tensor along `dim` in f64, keeping the dim with length 1.
pub fn reduce_dim(data: &[f64], shape: &[usize], dim: usize, op: ReduceOp) -> Vec<f64> {
    assert!(
        dim < shape.len(),
        "reduce_dim reference: dim {dim} out of range for {shape:?}"
    );
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "reduce_dim reference: data/shape"
    );
    let len = shape[dim];
    let inner: usize = shape[dim + 1..].iter().product();
    let outer: usize = shape[..dim].iter().product();
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let row = (0..len).map(|j| data[(o * len + j) * inner + i]);
            out.push(match op {
                ReduceOp::Sum => row.sum(),
                ReduceOp::Mean => row.sum::<f64>() / len as f64,
                ReduceOp::Prod => row.product(),
            });
        }
    }
    out
}

/// One row reduced in f32 in the kernels' order (the module docs): element `j` into partial
/// `(j / CHUNK) % P`, the partials folded pairwise, the mean one division. The GPU kernels
/// must give these bits exactly (the suite checks sums and products; a mean's division is
/// as exact as the runtime's f32 division).
pub fn reduce_in_order(row: &[f32], op: ReduceOp) -> f32 {
    let lanes = lanes_for_len(row.len());
    let combine = |a: f32, b: f32| if op == ReduceOp::Prod { a * b } else { a + b };
    let identity = if op == ReduceOp::Prod { 1.0 } else { 0.0 };
    let mut partials = vec![identity; lanes];
    for (j, &x) in row.iter().enumerate() {
        let p = (j / CHUNK) % lanes;
        partials[p] = combine(partials[p], x);
    }
    let mut step = lanes / 2;
    while step > 0 {
        for i in 0..step {
            partials[i] = combine(partials[i], partials[i + step]);
        }
        step /= 2;
    }
    match op {
        ReduceOp::Mean => partials[0] / row.len() as f32,
        _ => partials[0],
    }
}

/// Sum of `|x|` along `dim`, the scale the accumulation error is proportional to.
pub fn abs_sum_dim(data: &[f64], shape: &[usize], dim: usize) -> Vec<f64> {
    let abs: Vec<f64> = data.iter().map(|x| x.abs()).collect();
    reduce_dim(&abs, shape, dim, ReduceOp::Sum)
}

/// Unit roundoff of an output dtype, by its number of explicit mantissa bits
/// (f32: 23, f16: 10, bf16: 7).
pub fn unit_roundoff(mantissa_bits: u32) -> f64 {
    (2.0f64).powi(-(mantissa_bits as i32) - 1)
}

/// The documented bound on `|kernel - reference|` for one output element.
///
/// Each partial sum adds at most `CHUNK * ceil(len / (CHUNK * P))` terms
/// (`P = lanes_for_len(len)`) and the fold adds `log2(P)` more levels, every f32 addition contributing at most one f32 unit roundoff of the running
/// magnitude, itself at most `abs_sum`. The mean's division adds one more roundoff, and the
/// final cast to the output dtype one roundoff of that dtype.
pub fn tolerance(
    len: usize,
    abs_sum: f64,
    reference: f64,
    op: ReduceOp,
    out_mantissa_bits: u32,
) -> f64 {
    let u32_ = unit_roundoff(23);
    let lanes = lanes_for_len(len);
    let levels = match op {
        // A sum's error is bounded along the chain that builds it; a product's relative
        // errors multiply, so every one of its `len - 1` multiplies counts.
        ReduceOp::Prod => (len + lanes) as f64,
        _ => (CHUNK * len.div_ceil(CHUNK * lanes)) as f64 + lanes.trailing_zeros() as f64 + 1.0,
    };
    let scale = match op {
        ReduceOp::Sum => abs_sum,
        ReduceOp::Mean => abs_sum / len as f64,
        // Products: every multiply is one relative roundoff of the running product, so the
        // scale is the result itself (pass `|reference|` as `abs_sum`).
        ReduceOp::Prod => abs_sum,
    };
    levels * u32_ * scale + unit_roundoff(out_mantissa_bits) * reference.abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_reduces_the_named_dim() {
        // [[1, 2, 3], [4, 5, 6]]
        let data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(
            reduce_dim(&data, &[2, 3], 1, ReduceOp::Sum),
            vec![6.0, 15.0]
        );
        assert_eq!(
            reduce_dim(&data, &[2, 3], 0, ReduceOp::Mean),
            vec![2.5, 3.5, 4.5]
        );
        assert_eq!(abs_sum_dim(&[-1.0, 2.0], &[1, 2], 1), vec![3.0]);
    }

    #[test]
    fn order_takes_chunks_of_four() {
        // 32 partials: elements 0..4 go to partial 0, 4..8 to partial 1, ...; with one
        // element per chunk position the fold sees partials 0 and 1 only.
        let mut row = vec![0.0f32; 8];
        row[0] = 1.0;
        row[3] = 2.0;
        row[4] = 4.0;
        assert_eq!(reduce_in_order(&row, ReduceOp::Sum), 7.0);
        assert_eq!(reduce_in_order(&row, ReduceOp::Mean), 7.0 / 8.0);
        // A product's partials start at 1; an all-ones row with one 3 is 3.
        let mut ones = vec![1.0f32; 300];
        ones[299] = 3.0;
        assert_eq!(reduce_in_order(&ones, ReduceOp::Prod), 3.0);
        // The order is observable: 1e8 and -1e8 share chunk 0 and cancel before the 1 of
        // chunk 1 meets them, so the 1 survives. Elementwise partials (`j % 32`) would put
        // the three in partials 0, 1 and 4 and lose the 1 in `1e8 + 1`.
        assert_eq!(
            reduce_in_order(&[1e8, -1e8, 0.0, 0.0, 1.0], ReduceOp::Sum),
            1.0
        );
    }

    #[test]
    fn tolerance_grows_with_length_and_output_roundoff() {
        let short = tolerance(32, 1.0, 0.0, ReduceOp::Sum, 23);
        let long = tolerance(32 * 100, 1.0, 0.0, ReduceOp::Sum, 23);
        assert!(long > short && short > 0.0);
        assert!(
            tolerance(4, 0.0, 1.0, ReduceOp::Sum, 7) > tolerance(4, 0.0, 1.0, ReduceOp::Sum, 23)
        );
    }
}
