//! Layer and RMS normalization over the last dimension, in one kernel and a batch-invariant
//! order.
//!
//! Burn's `layer_norm` is a composite of seven kernels (two means, a subtraction, a square,
//! a square root, a division, the affine step): over 16384 rows of 4096 f32 it read 0.25
//! TB/s on an H200, with either backend. burn-nn's `RmsNorm` is six (a square, a mean, an
//! addition, a square root, a division, the scale). This kernel reads each row from
//! memory once (its later passes hit the cache) and writes it once.
//!
//! # The fixed order
//!
//! For a row `x` of `L` entries, with `P = lanes_for_len(L)` (32 below [`WIDE_ROW_MIN_LEN`]
//! entries, 256 from there on), all in f32 whatever the input dtype:
//!
//! 1. `mean = (sum_j x_j) / L`: partial `t` adds `x_j` for `j ≡ t (mod P)` in increasing
//!    `j`, then the pairwise fold `p[i] += p[i + s]`, `s = P/2, ..., 1`.
//! 2. `var = (sum_j (x_j - mean)^2) / L`, the same order over `(x_j - mean)^2`.
//! 3. `y_j = (x_j - mean) / sqrt(var + eps) * gamma_j (+ beta_j)`, then one cast to the
//!    output dtype.
//!
//! RMS norm ([`NormKind::Rms`]) is the same without step 1: `mean` is 0, so step 2 sums
//! `x_j^2` in that order and step 3 is `x_j / sqrt(mean(x^2) + eps) * gamma_j`, rounded once.
//! burn-nn's module rounds `rms` to the input dtype and then divides and scales in it, so
//! in f16/bf16 its bits differ from ours (ours are the closer to the f64 value).
//!
//! The order depends on `L` and the dtype alone; never on the number of rows, the row's
//! position or the strides. It is not the
//! composite's order (whose first mean reads chunks of four, see `reduce`), so the bits
//! differ from `mean_dim`-based layer norms; the error bound is in [`cpu_reference`].
//!
//! # Rows out of f32's range
//!
//! The sums are f32, so a row of finite entries can overflow them (an RMS row of entries
//! near 1e30, a layer-norm row with a spread of 1e27, entries near f32's maximum), and with
//! a tiny `eps` a row of tiny entries can lose them to subnormals. Burn's composite and
//! torch then return 0 or beta. Here a row whose `mean((x - mean)^2) + eps` is not finite or
//! is below `2^-64` is summed again (steps 1 and 2, same order) over `s x_j`, where `s` is
//! the power of two that brings `max_j |x_j|` into `[1, 2)` (clamped to `[2^-126, 2^63]`),
//! with `eps s^2` in place of `eps`, and step 3 uses `s x_j`. Scaling by a power of two is
//! exact, so the result is the formula's, not an approximation of it; only entries that `s`
//! pushes below f32's normal range lose bits, which the bound of [`cpu_reference`] carries.
//! Whether a row is summed again depends on that row alone: the rows of its cube that are
//! not take part in the passes with an empty range and keep their bits. Scaled down, `eps
//! s^2` can underflow to 0; a row whose scaled spread is then exactly 0 too (a constant row
//! whose mean comes out exact, or a row of zeros with `eps` 0, which the formula makes
//! 0 / 0) is given the denominator `2^-63`, so it normalizes to beta. What stays outside the bound:
//! rows whose largest entry is below `2^-63` when `eps` is below `2^-64` (finite, but `s`
//! stops at `2^63`).
//!
//! Special values follow the formulas, as the f64 reference does: a layer-norm row holding
//! a NaN or an infinity gives NaN everywhere; an RMS-norm row holding a NaN gives NaN
//! everywhere, one holding an infinity gives 0 at its finite entries and NaN at the
//! infinite ones (`x / inf`, `inf / inf`).
//!
//! # Mapping
//!
//! `P` threads per row, thread `t` owning partial `t`; folds through shared memory. With 32
//! partials a cube holds one row while rows are few (so that 64 rows spread over 64
//! multiprocessors) and 8 rows from `layout::FULL_CUBES_FROM_ROWS` rows on: which
//! cube computes a row, never how. Rows are read in place through their strides.

pub mod cpu_reference;
pub mod kernel;
pub mod launch;

pub use launch::{launch_norm, NormError};

/// Which normalization [`launch_norm`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormKind {
    /// `(x - mean) / sqrt(var + eps) * gamma (+ beta)`.
    Layer,
    /// `x / sqrt(mean(x^2) + eps) * gamma`, without beta.
    Rms,
}

/// The row length from which a row has 256 partials (a whole cube) rather than 32 (a warp).
///
/// Why not the reductions' 8192 (`reduce::LONG_ROW_MIN_LEN`): a layer norm makes three
/// passes over its row, so a warp per row is three times as latency-bound. With 32 partials,
/// 64 rows of 4096 took 0.060 ms on an H200 against Burn's composite's 0.029. Part of the
/// numerical contract: changing it changes the bits of the rows of the lengths it moves,
/// never their invariance.
pub const WIDE_ROW_MIN_LEN: usize = 1024;

/// Number of partials of each of a row's sums, from the row length alone.
pub const fn lanes_for_len(len: usize) -> usize {
    if len >= WIDE_ROW_MIN_LEN {
        crate::reduce::LONG_ROW_LANES
    } else {
        crate::reduce::SHORT_ROW_LANES
    }
}
