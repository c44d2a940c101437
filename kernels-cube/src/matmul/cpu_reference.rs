//! f64 reference for the matmul and the error bound the tests hold both paths to.

use super::launch::matmul_output_shape;
use crate::reduce::cpu_reference::unit_roundoff;

/// `lhs @ rhs` in f64 for contiguous row-major operands with broadcast batch dims. Returns
/// the values and, per element, `sum_k |lhs[m][k] * rhs[k][n]|`, the scale of the
/// accumulation error.
pub fn matmul(
    lhs: &[f64],
    lhs_shape: &[usize],
    rhs: &[f64],
    rhs_shape: &[usize],
) -> (Vec<f64>, Vec<f64>) {
    let out_shape = matmul_output_shape(lhs_shape, rhs_shape)
        .unwrap_or_else(|e| panic!("matmul reference: {e}"));
    let rank = out_shape.len();
    let (m, n, k) = (
        out_shape[rank - 2],
        out_shape[rank - 1],
        lhs_shape[rank - 1],
    );
    let batches: usize = out_shape[..rank - 2].iter().product();
    let mut values = Vec::with_capacity(batches * m * n);
    let mut scales = Vec::with_capacity(batches * m * n);
    for b in 0..batches {
        let (lhs_off, rhs_off) = batch_offsets(b, &out_shape, lhs_shape, rhs_shape);
        for i in 0..m {
            for j in 0..n {
                let (mut v, mut s) = (0.0f64, 0.0f64);
                for kk in 0..k {
                    let p = lhs[lhs_off + i * k + kk] * rhs[rhs_off + kk * n + j];
                    v += p;
                    s += p.abs();
                }
                values.push(v);
                scales.push(s);
            }
        }
    }
    (values, scales)
}

/// Element offsets of batch `b` (row-major over the output's batch dims) in the two
/// contiguous operands, broadcast dims contributing nothing.
fn batch_offsets(
    b: usize,
    out_shape: &[usize],
    lhs_shape: &[usize],
    rhs_shape: &[usize],
) -> (usize, usize) {
    let rank = out_shape.len();
    let (mut rem, mut lhs_off, mut rhs_off) = (b, 0, 0);
    let (mut lhs_stride, mut rhs_stride) = (
        lhs_shape[rank - 2] * lhs_shape[rank - 1],
        rhs_shape[rank - 2] * rhs_shape[rank - 1],
    );
    for d in (0..rank - 2).rev() {
        let coord = rem % out_shape[d];
        rem /= out_shape[d];
        if lhs_shape[d] != 1 {
            lhs_off += coord * lhs_stride;
        }
        if rhs_shape[d] != 1 {
            rhs_off += coord * rhs_stride;
        }
        lhs_stride *= lhs_shape[d];
        rhs_stride *= rhs_shape[d];
    }
    (lhs_off, rhs_off)
}

/// The documented bound on `|kernel - reference|` for one output element.
///
/// `input_mantissa_bits` is the precision the products are formed in: the operand dtype's
/// own (exact products, f16/bf16 on tensor cores and f32 on the portable path) or TF32's
/// 10 bits for f32 on tensor cores, where each operand loses its low 13 bits once
/// (truncated or rounded: up to one TF32 ulp each, two for the product). The K-long f32
/// accumulation adds at most `k` f32 roundoffs of `scale`, and the cast to the output dtype
/// one roundoff of the result.
pub fn tolerance(
    k: usize,
    scale: f64,
    reference: f64,
    input_mantissa_bits: u32,
    out_mantissa_bits: u32,
) -> f64 {
    let operand_rounding = if input_mantissa_bits >= 23 {
        0.0
    } else {
        4.0 * unit_roundoff(input_mantissa_bits)
    };
    let accumulation = (k as f64 + 1.0) * unit_roundoff(23);
    (operand_rounding + accumulation) * scale
        + unit_roundoff(out_mantissa_bits) * reference.abs()
        + f64::MIN_POSITIVE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_batches() {
        // lhs [2, 1, 2, 2] against rhs [1, 3, 2, 1]: 6 batches.
        let lhs: Vec<f64> = (0..8).map(f64::from).collect();
        let rhs: Vec<f64> = (0..6).map(f64::from).collect();
        let (v, s) = matmul(&lhs, &[2, 1, 2, 2], &rhs, &[1, 3, 2, 1]);
        assert_eq!(v.len(), 2 * 3 * 2);
        // batch (1, 2): lhs[1] = [[4,5],[6,7]], rhs[2] = [[4],[5]].
        assert_eq!(&v[10..12], &[4.0 * 4.0 + 5.0 * 5.0, 6.0 * 4.0 + 7.0 * 5.0]);
        assert_eq!(v, s);
    }
}
