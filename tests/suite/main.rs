//! The test suite. Every test runs on the runtime named by `BI_TEST_BACKEND` (`wgpu`, the
//! default, which is Mesa's lavapipe on a machine without a GPU, or `cuda`).

mod attention;
mod autodiff;
mod bad_input;
mod collective;
mod extremum;
mod matmul;
mod mode_switch;
mod norm;
mod passthrough;
mod problem;
mod property;
mod reduce;
mod serving;
mod softmax;
mod training;
mod transformer;
