//! Batch-invariant sampling: a sequence draws the same tokens alone or in any batch.
//!
//! Invariant logits are half of a reproducible generation; the draw is the other half. A
//! sampler that takes its random numbers from one generator per batch (torch's
//! `multinomial` on a batch of rows) hands a sequence different numbers when the batch
//! changes. Here every draw's random number is a pure function of `(seed, sequence id,
//! position)` ([`uniform`]), and everything else a draw reads is its own row of logits, so a
//! sequence samples the same token whatever shares its batch, provided its logits have the
//! same bits (which is what [`crate::BatchInvariant`] gives). Two sequences with the same
//! seed and different ids draw independent streams; the same id replays the same stream.
//!
//! # The fixed order
//!
//! For one row of logits `x` (read as f32, widened to f64):
//!
//! 1. Temperature 0 is greedy: the largest logit, the lowest index among equals.
//! 2. Otherwise the candidates are the entries that are not NaN, ordered by `x / T`
//!    descending, the lower index first among equals; with `top_k`, the first `k` of them.
//! 3. Weights `w_i = exp(x_i / T - max)` in that order (with a `+inf` logit, weight 1 for
//!    each `+inf` and 0 for the rest); with `top_p`, the shortest prefix whose weights sum
//!    to at least `top_p` times the total (at least one candidate).
//! 4. `r = u * sum(w)` with `u` = [`uniform`]`(seed, sequence id, position)`; the token is
//!    the first candidate whose running sum of weights, added in order, exceeds `r`.
//!
//! The sums are sequential f64 sums in that order, so the token depends on the row's bits,
//! the parameters and `(seed, sequence id, position)` only. The draw runs on the host: the
//! logits of the rows are read back once per call.

use burn_tensor::backend::Backend;
use burn_tensor::Tensor;

/// How one sequence draws its tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// Divides the logits; 0 means greedy (the largest logit). Finite, not negative.
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (`k >= 1`).
    pub top_k: Option<usize>,
    /// Keep only the most likely tokens whose probabilities sum to at least `p`, `0 < p <= 1`.
    pub top_p: Option<f64>,
    /// The generation's seed; the stream of a sequence is `(seed, sequence id)`.
    pub seed: u64,
}

impl SamplingParams {
    /// Greedy decoding: the largest logit, ties to the lowest index.
    pub const fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }

    /// Sampling at `temperature` from the whole distribution.
    pub const fn with_temperature(temperature: f64, seed: u64) -> Self {
        Self {
            temperature,
            top_k: None,
            top_p: None,
            seed,
        }
    }

    /// These parameters with `top_k`.
    pub const fn top_k(self, k: usize) -> Self {
        Self {
            top_k: Some(k),
            ..self
        }
    }

    /// These parameters with `top_p`.
    pub const fn top_p(self, p: f64) -> Self {
        Self {
            top_p: Some(p),
            ..self
        }
    }

    /// Panics, naming the parameter, when the parameters mean nothing.
    fn validate(&self) {
        assert!(
            self.temperature.is_finite() && self.temperature >= 0.0,
            "sample: temperature must be finite and not negative, got {}",
            self.temperature
        );
        if let Some(k) = self.top_k {
            assert!(k >= 1, "sample: top_k must be at least 1, got {k}");
        }
        if let Some(p) = self.top_p {
            assert!(
                p > 0.0 && p <= 1.0,
                "sample: top_p must be in (0, 1], got {p}"
            );
        }
    }
}

/// One row of a batch to sample: the parameters of its sequence, the sequence's id and the
/// position of the token being drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleRequest {
    pub params: SamplingParams,
    pub sequence_id: u64,
    pub position: u64,
}

/// The draw's random number in `[0, 1)`: SplitMix64's finalizer applied to the seed, then
/// to the sequence id and the position mixed in one after the other; the top 53 bits.
pub fn uniform(seed: u64, sequence_id: u64, position: u64) -> f64 {
    let mut h = mix64(seed ^ 0x6A09_E667_F3BC_C909);
    h = mix64(h ^ sequence_id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    h = mix64(h ^ position.wrapping_mul(0xC2B2_AE3D_27D4_EB4F));
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One token per row of `logits` (`[rows, vocab]`, any float dtype), row `r` drawn as
/// `requests[r]` says. Panics when the counts differ, a parameter is out of range, the
/// vocabulary is empty, or a row holds no logit that is not NaN.
pub fn sample<B: Backend>(logits: Tensor<B, 2>, requests: &[SampleRequest]) -> Vec<usize> {
    let [rows, vocab] = logits.dims();
    assert!(
        rows == requests.len(),
        "sample: {rows} rows of logits but {} requests",
        requests.len()
    );
    if rows == 0 {
        return Vec::new();
    }
    assert!(
        vocab > 0,
        "sample: logits of shape [{rows}, 0] have no token to draw"
    );
    let values = logits
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 logits");
    values
        .chunks(vocab)
        .zip(requests)
        .map(|(row, request)| {
            sample_row(row, &request.params, request.sequence_id, request.position)
        })
        .collect()
}

/// The token one row of logits draws (the order of the module docs).
pub fn sample_row(
    logits: &[f32],
    params: &SamplingParams,
    sequence_id: u64,
    position: u64,
) -> usize {
    params.validate();
    let mut candidates: Vec<(f64, usize)> = logits
        .iter()
        .enumerate()
        .filter(|(_, x)| !x.is_nan())
        .map(|(i, &x)| (f64::from(x), i))
        .collect();
    assert!(
        !candidates.is_empty(),
        "sample: a row of {} logits holds no value that is not NaN (sequence {sequence_id}, \
         position {position})",
        logits.len()
    );
    // Descending value, then ascending index: a total order, so the sort's algorithm does
    // not matter.
    let order = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if params.temperature == 0.0 {
        return candidates
            .iter()
            .min_by(|a, b| order(a, b))
            .expect("a candidate")
            .1;
    }
    for c in candidates.iter_mut() {
        c.0 /= params.temperature;
    }
    if let Some(k) = params.top_k.filter(|&k| k < candidates.len()) {
        candidates.select_nth_unstable_by(k - 1, order);
        candidates.truncate(k);
    }
    candidates.sort_unstable_by(order);

    let top = candidates[0].0;
    let weights: Vec<f64> = candidates
        .iter()
        .map(|&(s, _)| {
            if top == f64::INFINITY {
                f64::from(u8::from(s == f64::INFINITY))
            } else {
                (s - top).exp()
            }
        })
        .collect();
    let mut kept = weights.len();
    if let Some(p) = params.top_p {
        let total: f64 = weights.iter().sum();
        let mut running = 0.0;
        for (i, w) in weights.iter().enumerate() {
            running += w;
            if running >= p * total {
                kept = i + 1;
                break;
            }
        }
    }
    let total: f64 = weights[..kept].iter().sum();
    let r = uniform(params.seed, sequence_id, position) * total;
    let mut running = 0.0;
    for (&(_, token), w) in candidates.iter().zip(&weights[..kept]) {
        running += w;
        if running > r {
            return token;
        }
    }
    // Only reached when the running sum never passes r by rounding: the last candidate
    // with weight.
    let last = weights[..kept].iter().rposition(|&w| w > 0.0).unwrap_or(0);
    candidates[last].1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_in_range_and_depends_on_every_input() {
        let u = uniform(7, 1, 0);
        assert!((0.0..1.0).contains(&u));
        assert_ne!(u, uniform(8, 1, 0));
        assert_ne!(u, uniform(7, 2, 0));
        assert_ne!(u, uniform(7, 1, 1));
        assert_eq!(u, uniform(7, 1, 0));
    }

    #[test]
    fn greedy_takes_the_largest_and_the_lowest_index_among_equals() {
        let logits = [0.5, 3.0, f32::NAN, 3.0, -1.0];
        assert_eq!(sample_row(&logits, &SamplingParams::greedy(), 0, 0), 1);
        let one = SamplingParams::with_temperature(1.0, 3).top_k(1);
        assert_eq!(sample_row(&logits, &one, 5, 9), 1);
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        // p = softmax([0, ln 2, ln 3]) = [1/6, 2/6, 3/6].
        let logits = [0.0, 2f32.ln(), 3f32.ln()];
        let params = SamplingParams::with_temperature(1.0, 11);
        let draws = 60_000;
        let mut counts = [0usize; 3];
        for position in 0..draws {
            counts[sample_row(&logits, &params, 4, position)] += 1;
        }
        for (i, c) in counts.iter().enumerate() {
            let expect = (i + 1) as f64 / 6.0 * draws as f64;
            // Five standard deviations of a binomial count.
            let sd = (expect * (1.0 - expect / draws as f64)).sqrt();
            assert!((*c as f64 - expect).abs() < 5.0 * sd, "{counts:?}");
        }
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let logits = [1.0, 4.0, 3.0, 2.0, 0.0];
        let top2 = SamplingParams::with_temperature(1.0, 1).top_k(2);
        let small_p = SamplingParams::with_temperature(1.0, 1).top_p(0.01);
        for position in 0..500 {
            assert!(matches!(sample_row(&logits, &top2, 0, position), 1 | 2));
            assert_eq!(sample_row(&logits, &small_p, 0, position), 1);
        }
    }

    #[test]
    fn an_infinite_logit_takes_every_draw() {
        let logits = [1.0, f32::INFINITY, 2.0];
        let params = SamplingParams::with_temperature(0.7, 2);
        for position in 0..100 {
            assert_eq!(sample_row(&logits, &params, 1, position), 1);
        }
    }

    #[test]
    #[should_panic(expected = "sample: top_p must be in (0, 1], got 1.5")]
    fn a_top_p_out_of_range_is_refused() {
        sample_row(
            &[0.0, 1.0],
            &SamplingParams::with_temperature(1.0, 0).top_p(1.5),
            0,
            0,
        );
    }

    #[test]
    #[should_panic(expected = "holds no value that is not NaN")]
    fn a_row_of_nans_is_refused() {
        sample_row(
            &[f32::NAN; 3],
            &SamplingParams::with_temperature(1.0, 0),
            0,
            0,
        );
    }
}
