//! f64 reference of attention with Burn's semantics, and the error bound the tests use.

use super::launch::AttentionOptions;

/// Extents of an attention problem: `[batch, heads, seq_q, seq_k, dim, dim_v]`.
pub type AttentionShape = [usize; 6];

/// `softmax(q k^T * scale (softcapped, masked, causal, biased)) v` in f64, for row-major
/// `query [b, h, seq_q, d]`, `key [b, h, seq_k, d]`, `value [b, h, seq_k, d_v]`, `mask`
/// (true = masked) and `bias` `[b, h, seq_q, seq_k]`. A row in which every key is masked
/// gives 0, as Burn's `attention_fallback` does.
pub fn attention(
    query: &[f64],
    key: &[f64],
    value: &[f64],
    mask: Option<&[bool]>,
    bias: Option<&[f64]>,
    shape: AttentionShape,
    options: AttentionOptions,
) -> Vec<f64> {
    let [batch, heads, seq_q, seq_k, dim, dim_v] = shape;
    let mut out = vec![0.0; batch * heads * seq_q * dim_v];
    let mut scores = vec![f64::NEG_INFINITY; seq_k];
    for bh in 0..batch * heads {
        for row in 0..seq_q {
            let q = &query[(bh * seq_q + row) * dim..][..dim];
            for (j, score) in scores.iter_mut().enumerate() {
                let k = &key[(bh * seq_k + j) * dim..][..dim];
                let mut s = q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>();
                s *= f64::from(options.scale);
                if let Some(cap) = options.softcap {
                    let cap = f64::from(cap);
                    s = cap * (s / cap).tanh();
                }
                let at = (bh * seq_q + row) * seq_k + j;
                let masked =
                    mask.is_some_and(|m| m[at]) || (options.causal && j + seq_q > row + seq_k);
                if let Some(bias) = bias {
                    s += bias[at];
                }
                *score = if masked { f64::NEG_INFINITY } else { s };
            }
            let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                continue; // no key takes part: the row stays 0
            }
            let weights: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let total: f64 = weights.iter().sum();
            let o = &mut out[(bh * seq_q + row) * dim_v..][..dim_v];
            for (j, w) in weights.iter().enumerate() {
                if *w == 0.0 {
                    continue;
                }
                let v = &value[(bh * seq_k + j) * dim_v..][..dim_v];
                for (o, v) in o.iter_mut().zip(v) {
                    *o += w / total * v;
                }
            }
        }
    }
    out
}

/// Absolute error bound for one output of the kernel against [`attention`] with the same
/// (dtype-rounded) inputs: rounding to the output dtype (unit roundoff `out_unit`), plus the
/// rounding of the weights before `p · v` (unit roundoff `weight_unit`: the input dtype's on
/// the tensor-core kernel, which multiplies in it, 0 where weights stay f32; the normaliser
/// `l` sums unrounded weights, hence twice), plus the f32 error of the scores (a dot product
/// of `dim` terms, largest score `max_score`), which reaches the output through the softmax
/// weights, plus the f32 error of the weighted sums over at most `seq_k` keys. All of it
/// scales with the largest `|v|`.
pub fn tolerance(
    out_unit: f64,
    weight_unit: f64,
    dim: usize,
    seq_k: usize,
    max_score: f64,
    max_abs_value: f64,
) -> f64 {
    let u32 = f64::from(f32::EPSILON) / 2.0;
    let score_err = 2.0 * (dim as f64 + 4.0) * u32 * (1.0 + max_score.abs());
    let sum_err = 2.0 * (seq_k as f64 + 8.0) * u32;
    (out_unit + 2.0 * weight_unit + 2.0 * score_err + sum_err)
        * max_abs_value.max(f64::MIN_POSITIVE)
        + 1e-30
}
