//! f64 references for softmax / log-softmax and the bounds the tests hold the kernel to.

use super::kernel::CHUNK_LEN;
use super::SoftmaxKind;
use crate::reduce::lanes_for_len;

/// Softmax or log-softmax of a contiguous row-major tensor along `dim`, in f64, with the
/// formulas of the module docs (so special values behave alike).
pub fn softmax_dim(data: &[f64], shape: &[usize], dim: usize, kind: SoftmaxKind) -> Vec<f64> {
    assert!(
        dim < shape.len(),
        "softmax reference: dim {dim} out of range for {shape:?}"
    );
    let len = shape[dim];
    let inner: usize = shape[dim + 1..].iter().product();
    let outer: usize = shape[..dim].iter().product();
    let mut out = vec![0.0; data.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            let m = (0..len)
                .map(|j| data[at(j)])
                .fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = (0..len).map(|j| (data[at(j)] - m).exp()).sum();
            for j in 0..len {
                let shifted = data[at(j)] - m;
                out[at(j)] = match kind {
                    SoftmaxKind::Softmax => shifted.exp() / s,
                    SoftmaxKind::LogSoftmax => shifted - s.ln(),
                };
            }
        }
    }
    out
}

/// The documented bound on `|kernel - reference|` for one element.
///
/// f32 arithmetic contributes, per element, the summation error of `s`
/// (`ceil(L/P) + log2(P) + 1` roundoffs of `s`, hence relative) plus a few roundoffs for
/// `exp` (which on GPUs may be an approximation good to about 2 ulp after range
/// reduction, growing with `|x - m|`), the division or subtraction, and the final cast
/// (relative, plus half a subnormal step of the output dtype).
pub fn tolerance(
    len: usize,
    shifted: f64,
    log_s: f64,
    reference: f64,
    kind: SoftmaxKind,
    out_mantissa_bits: u32,
) -> f64 {
    let u = (2.0f64).powi(-24);
    let lanes = lanes_for_len(len);
    let chunk = len.min(CHUNK_LEN);
    // Chunked rows add, per chunk, one rescaling exp and one addition to the total.
    let chunk_terms = if len > CHUNK_LEN {
        10.0 * len.div_ceil(CHUNK_LEN) as f64
    } else {
        0.0
    };
    let sum_levels =
        chunk.div_ceil(lanes) as f64 + lanes.trailing_zeros() as f64 + 1.0 + chunk_terms;
    let exp_err = 8.0 * (1.0 + shifted.abs());
    let out_u = (2.0f64).powi(-(out_mantissa_bits as i32) - 1);
    // Half the spacing of the output dtype's subnormals: tiny probabilities round to them.
    let out_tiny = match out_mantissa_bits {
        10 => (2.0f64).powi(-25),
        7 => (2.0f64).powi(-134),
        _ => (2.0f64).powi(-150),
    };
    let arithmetic = match kind {
        SoftmaxKind::Softmax => (sum_levels + exp_err + 2.0) * u * reference.abs(),
        SoftmaxKind::LogSoftmax => {
            (sum_levels + exp_err + 2.0) * u + 4.0 * u * (shifted.abs() + log_s.abs())
        }
    };
    arithmetic + out_u * reference.abs() + out_tiny
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_rows_normalise() {
        let data = [1.0, 2.0, 3.0, 0.0, 0.0, f64::NEG_INFINITY];
        let sm = softmax_dim(&data, &[2, 3], 1, SoftmaxKind::Softmax);
        assert!((sm[..3].iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(sm[5], 0.0);
        let lsm = softmax_dim(&data, &[2, 3], 1, SoftmaxKind::LogSoftmax);
        assert!((lsm[3] - (0.5f64).ln()).abs() < 1e-12);
        let nan = softmax_dim(&[f64::NAN, 1.0], &[1, 2], 1, SoftmaxKind::Softmax);
        assert!(nan.iter().all(|v| v.is_nan()));
        let col = softmax_dim(&[1.0, 5.0, 1.0, 5.0], &[2, 2], 0, SoftmaxKind::Softmax);
        assert_eq!(col, vec![0.5, 0.5, 0.5, 0.5]);
    }
}
