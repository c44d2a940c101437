//! One file per Burn ops trait, as in burn-autodiff.
//!
//! Every method of every ops trait, required or defaulted, appears in its file in one of
//! three forms, and `scripts/passthrough.py --check` (run by the test command) fails if one
//! is missing:
//!
//! * **routed**, in a [`route!`] block: with the [mode](crate::mode) on it runs
//!   `crate::routing::<family>::<method>` (checks, then a batch-invariant kernel); off, `B`'s
//!   method;
//! * **forwarded**, in a [`forward!`] block: `B`'s method with the same arguments, so `B`'s
//!   own kernel runs, including the methods `B` overrides with a faster kernel than the trait
//!   default (a handful whose types differ between `Self` and `B` are written out beside it);
//! * **left to the trait's default body**, named on a `// default-body:` line at the top of
//!   the impl. Only composites that reduce through a routed op qualify: forwarded, their
//!   default body would run `B`'s batch-variant primitives; here it runs the routed ones. The
//!   check script also verifies that neither burn-cubecl nor burn-fusion overrides them, so
//!   with the mode off they still compute exactly what `B` computes.

#[macro_use]
mod forward;

mod activation;
mod bool_tensor;
mod float_tensor;
mod int_tensor;
mod module;
mod qtensor;
mod transaction;
