//! The bodies of the routed ops: input checks, then the invariant kernel (or, with parity
//! on, `Autodiff`'s composite: see `parity`). The mode switch is read before they are
//! reached, by the `route!` blocks of `crate::ops`; `rms_norm`, which has no ops-trait
//! method, reads it itself. One module per kernel family; the functions are named after the
//! Burn method they implement.

pub(crate) mod attention;
pub(crate) mod checks;
pub(crate) mod empty;
pub(crate) mod extremum;
pub(crate) mod matmul;
pub(crate) mod norm;
pub(crate) mod parity;
pub(crate) mod reduce;
pub(crate) mod softmax;
