//! f64 references for the dim reductions and the error bounds the tests hold the kernels to.

use super::{lanes_for_len, ReduceOp};

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
/// Each partial sum adds at most `ceil(len / P)` terms (`P = lanes_for_len(len)`) and the
/// fold adds `log2(P)` more levels, every f32 addition contributing at most one f32 unit roundoff of the running
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
        _ => len.div_ceil(lanes) as f64 + lanes.trailing_zeros() as f64 + 1.0,
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
    fn tolerance_grows_with_length_and_output_roundoff() {
        let short = tolerance(32, 1.0, 0.0, ReduceOp::Sum, 23);
        let long = tolerance(32 * 100, 1.0, 0.0, ReduceOp::Sum, 23);
        assert!(long > short && short > 0.0);
        assert!(
            tolerance(4, 0.0, 1.0, ReduceOp::Sum, 7) > tolerance(4, 0.0, 1.0, ReduceOp::Sum, 23)
        );
    }
}
