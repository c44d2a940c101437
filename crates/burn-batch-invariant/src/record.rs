//! The one way this crate records an op under `Autodiff`: run the inner backend's op and,
//! when a parent requires gradients, record one backward step whose state may keep the
//! op's output. `softmax.rs`, `norm.rs` and `attention.rs` differ only in the step and its
//! state.

use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::ops::{Backward, OpsKind};
use burn_autodiff::Autodiff;
use burn_backend::tensor::FloatTensor;
use burn_backend::Backend;

/// `forward()` as the result of an op with `parents`; `state` builds `step`'s state from the
/// output, and only runs when the step is recorded.
pub(crate) fn record<B, C, S, const N: usize>(
    step: S,
    parents: [&FloatTensor<Autodiff<B, C>>; N],
    forward: impl FnOnce() -> FloatTensor<B>,
    state: impl FnOnce(&FloatTensor<B>) -> S::State,
) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend,
    C: CheckpointStrategy,
    S: Backward<B, N>,
{
    let nodes = parents.map(|parent| parent.node.clone());
    match step.prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let output = forward();
            prep.finish(state(&output), output)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward()),
    }
}
