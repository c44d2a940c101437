//! One file per Burn ops trait, as in burn-autodiff.
//!
//! # The forwarding rule
//!
//! Every method of every ops trait is written out, required or defaulted, and
//! `scripts/passthrough.py --check` (run by CI) fails if one is missing. A method is either
//!
//! * **routed**: it calls `crate::routing::<op>`, which runs a batch-invariant kernel
//!   when the [mode](crate::mode) is on and `B`'s method when it is off;
//! * **forwarded**: `B::method(..)`, so `B`'s own kernel runs, including the methods `B`
//!   overrides with a faster kernel than the trait default; or
//! * **left to the trait's default body**, listed in a `// default-body:` line at the top of
//!   the impl. Only composites that reduce through a routed op qualify: a forwarded default
//!   body would run `B`'s primitives (batch-variant), while the default body here runs ours.
//!   The check script also verifies that burn-cubecl does not override these, so with the
//!   mode off they still compute exactly what `B` computes.
//!
//! Composites that reduce through ops that are *not* routed yet (the softmax family,
//! `float_max_dim`, ...) are forwarded, and documented as batch-variant in
//! `docs/contract.md` until their kernels land.

mod activation;
mod bool_tensor;
mod float_tensor;
mod int_tensor;
mod module;
mod qtensor;
mod transaction;
