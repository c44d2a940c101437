//! The reference for the extremum selections: a plain scan in index order under the
//! module's total order (NaN first, then the extremum, ties to the smallest index).

use super::ExtremumOp;

/// `(value, index)` of the winner along `dim` of a contiguous row-major tensor, one per
/// output (the input's shape with `dim` set to 1). `dim` must have non-zero length.
pub fn extremum_dim(
    data: &[f64],
    shape: &[usize],
    dim: usize,
    op: ExtremumOp,
) -> Vec<(f64, usize)> {
    let len = shape[dim];
    assert!(len > 0, "extremum reference: empty dim {dim} of {shape:?}");
    let inner: usize = shape[dim + 1..].iter().product();
    let outer: usize = shape[..dim].iter().product();
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let mut best: Option<(f64, usize)> = None;
            for j in 0..len {
                let mut v = data[(o * len + j) * inner + i];
                if op == ExtremumOp::MaxAbs {
                    v = v.abs();
                }
                let better = match best {
                    None => true,
                    Some((b, _)) if b.is_nan() => false,
                    Some(_) if v.is_nan() => true,
                    Some((b, _)) => match op {
                        ExtremumOp::Min => v < b,
                        _ => v > b,
                    },
                };
                if better {
                    best = Some((v, j));
                }
            }
            out.push(best.expect("non-empty dim"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_nan_and_signed_zero() {
        let data = [1.0, 3.0, 3.0, -5.0, -0.0, 0.0, f64::NAN, 2.0, f64::NAN];
        // Three rows of three along dim 1.
        let max = extremum_dim(&data, &[3, 3], 1, ExtremumOp::Max);
        assert_eq!(max[0], (3.0, 1));
        assert_eq!(max[1].1, 1);
        assert!(max[1].0 == 0.0 && max[1].0.is_sign_negative());
        assert!(max[2].0.is_nan() && max[2].1 == 0);
        let min = extremum_dim(&data, &[3, 3], 1, ExtremumOp::Min);
        assert_eq!(min[0], (1.0, 0));
        assert_eq!(min[1], (-5.0, 0));
        let abs = extremum_dim(&data, &[3, 3], 1, ExtremumOp::MaxAbs);
        assert_eq!(abs[1], (5.0, 0));
    }
}
