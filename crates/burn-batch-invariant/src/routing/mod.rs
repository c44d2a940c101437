//! Where routed ops decide between the invariant kernel and the inner backend, and check
//! their input. One module per kernel family; the functions are named after the Burn method
//! they implement.

pub(crate) mod attention;
pub(crate) mod checks;
pub(crate) mod extremum;
pub(crate) mod matmul;
pub(crate) mod norm;
pub(crate) mod parity;
pub(crate) mod reduce_dim;
pub(crate) mod softmax;
