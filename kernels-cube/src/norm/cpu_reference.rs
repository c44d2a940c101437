//! f64 references for layer and RMS normalization and the bounds the tests hold the kernel
//! to.

use super::{lanes_for_len, NormKind};

/// Layer normalization of a contiguous row-major tensor over its last dimension (`len`
/// entries a row), in f64 with the formulas of the module docs, and for each element the
/// documented bound on `|kernel - reference|` for an output with `out_mantissa_bits`
/// explicit mantissa bits (23 for f32, 10 for f16, 7 for bf16).
///
/// The bound follows the kernel's f32 arithmetic: the two sums of `ceil(L/P) + log2(P)`
/// levels of additions (absolute error `levels * u * sum|term|`), the division by `L`, the
/// mean's error carried into the centred value and the variance, the square root and the
/// division (half the variance's relative error, plus roundoffs), the affine step, then the
/// cast to the output dtype (relative, plus half a subnormal step). Twice that, for slack.
/// Rows out of f32's range, which the kernel sums again scaled, add the scaling's loss to the
/// entries (half a subnormal step of the scaled entry, `2^-150 max|x|`).
pub fn layer_norm(
    data: &[f64],
    len: usize,
    gamma: &[f64],
    beta: Option<&[f64]>,
    epsilon: f64,
    out_mantissa_bits: u32,
) -> (Vec<f64>, Vec<f64>) {
    normalize(
        data,
        len,
        gamma,
        beta,
        epsilon,
        NormKind::Layer,
        out_mantissa_bits,
    )
}

/// RMS normalization, `x / sqrt(mean(x^2) + epsilon) * gamma`, with its bound: that of
/// [`layer_norm`] with an exact mean of 0 (the kernel skips the mean pass).
pub fn rms_norm(
    data: &[f64],
    len: usize,
    gamma: &[f64],
    epsilon: f64,
    out_mantissa_bits: u32,
) -> (Vec<f64>, Vec<f64>) {
    normalize(
        data,
        len,
        gamma,
        None,
        epsilon,
        NormKind::Rms,
        out_mantissa_bits,
    )
}

fn normalize(
    data: &[f64],
    len: usize,
    gamma: &[f64],
    beta: Option<&[f64]>,
    epsilon: f64,
    kind: NormKind,
    out_mantissa_bits: u32,
) -> (Vec<f64>, Vec<f64>) {
    assert!(
        len > 0 && data.len().is_multiple_of(len) && gamma.len() == len,
        "{kind:?} norm reference: {} values, rows of {len}, gamma of {}",
        data.len(),
        gamma.len()
    );
    let u = (2.0f64).powi(-24);
    let lanes = lanes_for_len(len);
    let levels = len.div_ceil(lanes) as f64 + lanes.trailing_zeros() as f64 + 2.0;
    let out_u = (2.0f64).powi(-(out_mantissa_bits as i32) - 1);
    let out_tiny = match out_mantissa_bits {
        10 => (2.0f64).powi(-25),
        7 => (2.0f64).powi(-134),
        _ => (2.0f64).powi(-150),
    };
    let n = len as f64;
    let centered = kind == NormKind::Layer;
    let mut out = Vec::with_capacity(data.len());
    let mut bounds = Vec::with_capacity(data.len());
    for row in data.chunks(len) {
        // A row summed again scaled by `s <= 1 / max|x|` (out of f32's range) loses up to half a
        // subnormal step of `s x` per entry: `2^-150 max|x|` in `x`'s units, nothing otherwise.
        let d_x = (2.0f64).powi(-150) * row.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let (mean, d_mean) = if centered {
            let mean = row.iter().sum::<f64>() / n;
            let mean_abs = row.iter().map(|x| x.abs()).sum::<f64>() / n;
            (mean, levels * u * mean_abs + u * mean.abs() + 2.0 * d_x)
        } else {
            (0.0, 2.0 * d_x)
        };
        let var = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        let denom = (var + epsilon).sqrt();
        let mean_dev = row.iter().map(|x| (x - mean).abs()).sum::<f64>() / n;
        let d_var = (levels + 3.0) * u * var + 2.0 * d_mean * mean_dev + d_mean * d_mean;
        let d_denom_rel = 0.5 * d_var / (var + epsilon) + 2.0 * u;
        for (j, &x) in row.iter().enumerate() {
            let centred = x - mean;
            let scaled = centred / denom;
            let y = scaled * gamma[j] + beta.map_or(0.0, |b| b[j]);
            let d_centred = d_mean + u * centred.abs();
            let d_scaled = (d_centred + centred.abs() * (d_denom_rel + u)) / denom;
            let d_y = gamma[j].abs() * (d_scaled + u * scaled.abs()) + u * y.abs();
            out.push(y);
            bounds.push(2.0 * (d_y + out_u * y.abs()) + out_tiny);
        }
    }
    (out, bounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_applies_the_affine_step() {
        let (y, bounds) = layer_norm(&[1.0, 3.0], 2, &[2.0, 1.0], Some(&[0.5, 0.0]), 0.0, 23);
        assert_eq!(y, vec![-1.5, 1.0]);
        // A few dozen f32 roundoffs of outputs of order 1, doubled.
        assert!(bounds.iter().all(|&b| b > 1e-6 && b < 1e-4), "{bounds:?}");
    }

    #[test]
    fn rms_divides_by_the_root_mean_square() {
        let (y, bounds) = rms_norm(&[3.0, 4.0], 2, &[1.0, 2.0], 0.0, 23);
        // mean(x^2) = 12.5: y = x / sqrt(12.5) * gamma.
        let rms = 12.5f64.sqrt();
        assert_eq!(y, vec![3.0 / rms, 4.0 / rms * 2.0]);
        assert!(bounds.iter().all(|&b| b > 1e-7 && b < 1e-4), "{bounds:?}");
    }

    #[test]
    fn a_nan_poisons_its_row_only() {
        let (y, _) = layer_norm(&[f64::NAN, 1.0, 2.0, 4.0], 2, &[1.0, 1.0], None, 1e-5, 23);
        assert!(y[0].is_nan() && y[1].is_nan());
        assert!(y[2].is_finite() && y[3].is_finite());
    }
}
