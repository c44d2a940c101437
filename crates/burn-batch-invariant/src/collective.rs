//! Collectives whose order of additions depends only on the number of ranks (feature
//! `collective`), built on burn-collective's broadcast.
//!
//! burn-collective 0.21 reduces in an order that follows other things than the ranks: its
//! ring all-reduce cuts the message into one slice per rank, so the rank an element's sum
//! starts from follows the element's position in the message, and the message grows with the
//! batch; its tree and centralized strategies take peers in the order of a hash map (sorted
//! by device id, which ties when peers share a device). Tensor-parallel layers then give a
//! sequence other bits in another batch, and a data-parallel step is not reproducible.
//!
//! Here every element is summed as `((t_0 + t_1) + t_2) + ...` in rank order, on every rank:
//! rank `r`'s tensor reaches every peer by burn-collective's `broadcast` (its transport, for
//! local devices and across nodes alike), and each peer adds the tensors in rank order on its
//! own device. The order depends on the number of ranks only, never on the message size or on
//! which peer holds which device, and every rank computes the same sum with the same kernel,
//! so all ranks hold the same bits. The price is bandwidth: each peer receives every other
//! peer's whole tensor (`ranks - 1` messages instead of a ring's two), which is what a fixed
//! order costs without a reduction kernel inside the transport (`docs/performance.md`,
//! "All-reduce", measures it against burn-collective's strategies).
//!
//! Every peer must call the same collectives in the same order with tensors of the same
//! shape, as with burn-collective itself: a peer that skips one leaves the others waiting.

use burn_collective::broadcast;
/// burn-collective's types that appear in this module's signatures.
pub use burn_collective::{CollectiveError, PeerId, ReduceOperation};
use burn_core::module::{AutodiffModule, ModuleVisitor, Param};
use burn_optim::GradientsParams;
use burn_tensor::backend::{AutodiffBackend, Backend};
use burn_tensor::{Tensor, TensorPrimitive};

/// One peer of a fixed-order collective: its burn-collective id and its rank, the place of
/// its tensor in every sum. Every peer builds it from the same list of ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rank {
    peer: PeerId,
    rank: usize,
    ranks: usize,
}

impl Rank {
    /// The rank of `me` among `peers`, the collective's registered ids in rank order (the
    /// same list on every peer).
    ///
    /// # Panics
    ///
    /// When `me` is not in `peers` or appears more than once.
    pub fn new(peers: &[PeerId], me: PeerId) -> Self {
        let mut at = peers.iter().enumerate().filter(|(_, p)| **p == me);
        let (rank, _) = at.next().unwrap_or_else(|| {
            panic!("collective::Rank: peer {me} is not among the peers {peers:?}")
        });
        if at.next().is_some() {
            panic!("collective::Rank: peer {me} appears more than once in {peers:?}");
        }
        Self {
            peer: me,
            rank,
            ranks: peers.len(),
        }
    }

    /// The burn-collective id.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The place of this peer's tensor in every sum, `0 .. ranks()`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn ranks(&self) -> usize {
        self.ranks
    }
}

/// Every rank's `tensor`, in rank order, on this peer's device (one broadcast per rank),
/// handed to `combine`; its result once every peer is done reading.
///
/// The peers share buffers: what rank `r` broadcasts is rank `r`'s own buffer, read by the
/// other peers' streams. So a rank finishes the work that produces its tensor before sending
/// it (`sync`), keeps its own reference until every peer has synchronised after combining (a
/// last one-element broadcast is the barrier), and no buffer that another stream may still
/// read is ever free to be written in place.
///
/// No op that touches a shared tensor stays queued once a peer moves on: the tensor is
/// produced before it is sent, the sum and the barrier's token before the barrier, and the
/// release of the shared tensors before returning. On a lazy backend (Burn's fusion) another
/// thread that touches a tensor still queued on this peer's stream makes Burn run this
/// peer's whole queue at that moment, which cuts the peer's next fused kernels at a point
/// set by thread timing; a cut can change which ops share a kernel and so their roundings.
fn gathered<B: Backend, const D: usize, const E: usize>(
    rank: &Rank,
    tensor: Tensor<B, D>,
    combine: impl FnOnce(Vec<Tensor<B, D>>) -> Tensor<B, E>,
) -> Result<Tensor<B, E>, CollectiveError> {
    let device = tensor.device();
    let sync =
        || B::sync(&device).map_err(|err| CollectiveError::Other(format!("device sync: {err:?}")));
    sync()?;
    let keep = tensor.clone();
    let mut mine = Some(tensor.into_primitive().tensor());
    let parts = (0..rank.ranks)
        .map(|r| {
            let sent = if r == rank.rank { mine.take() } else { None };
            let part = broadcast::<B>(rank.peer, sent)?;
            let part = Tensor::<B, D>::from_primitive(TensorPrimitive::Float(part));
            Ok(part.to_device(&device))
        })
        .collect::<Result<Vec<_>, CollectiveError>>()?;
    let out = combine(parts);
    let token = (rank.rank == 0).then(|| Tensor::<B, 1>::zeros([1], &device));
    sync()?;
    let released = broadcast::<B>(rank.peer, token.map(|t| t.into_primitive().tensor()))?;
    drop(released);
    drop(keep);
    // Releasing a shared tensor is queued like any op: run it before this peer queues more.
    sync()?;
    Ok(out)
}

/// The sum (or mean) of every rank's `tensor`, the same bits on every rank: element by
/// element `((t_0 + t_1) + t_2) + ...` in rank order (then `/ ranks` for the mean), in the
/// tensor's dtype.
pub fn all_reduce<B: Backend, const D: usize>(
    rank: &Rank,
    tensor: Tensor<B, D>,
    op: ReduceOperation,
) -> Result<Tensor<B, D>, CollectiveError> {
    gathered(rank, tensor, |parts| {
        let mut parts = parts.into_iter();
        let first = parts.next().expect("a collective has at least one rank");
        let sum = parts.fold(first, |acc, part| acc + part);
        match op {
            ReduceOperation::Sum => sum,
            ReduceOperation::Mean => sum / rank.ranks as f64,
        }
    })
}

/// Every rank's `tensor` concatenated along `dim` in rank order, on every rank (a copy: no
/// arithmetic).
pub fn all_gather<B: Backend, const D: usize>(
    rank: &Rank,
    tensor: Tensor<B, D>,
    dim: usize,
) -> Result<Tensor<B, D>, CollectiveError> {
    gathered(rank, tensor, |parts| Tensor::cat(parts, dim))
}

/// `x W + b` with the weight's rows split across ranks (Megatron's row-parallel linear):
/// this rank holds `x`'s features and `W`'s rows of its shard, computes `x_r W_r`, and the
/// partial products are summed in rank order by [`all_reduce`]; the bias is added once,
/// after the sum. With the invariant matmul on every rank, a row's output has the same bits
/// alone and in any batch, on every rank (not the bits of the unsharded matmul: the K walk
/// is cut in `ranks` pieces).
pub fn row_parallel_linear<B: Backend, const D: usize>(
    rank: &Rank,
    x_shard: Tensor<B, D>,
    weight_shard: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Result<Tensor<B, D>, CollectiveError> {
    let partial = x_shard.matmul(weight_shard.unsqueeze());
    let sum = all_reduce(rank, partial, ReduceOperation::Sum)?;
    Ok(match bias {
        Some(bias) => sum + bias.unsqueeze(),
        None => sum,
    })
}

/// `x W + b` with the weight's columns split across ranks (Megatron's column-parallel
/// linear): this rank computes its columns `x W_r + b_r`; with `gather`, every rank's
/// columns are concatenated in rank order ([`all_gather`]), which gives the bits of the
/// unsharded matmul (a column's K walk is whole on one rank). Without, the output stays
/// sharded, as the input of a row-parallel layer expects it.
pub fn column_parallel_linear<B: Backend, const D: usize>(
    rank: &Rank,
    x: Tensor<B, D>,
    weight_shard: Tensor<B, 2>,
    bias_shard: Option<Tensor<B, 1>>,
    gather: bool,
) -> Result<Tensor<B, D>, CollectiveError> {
    let mut y = x.matmul(weight_shard.unsqueeze());
    if let Some(bias) = bias_shard {
        y = y + bias.unsqueeze();
    }
    if gather {
        all_gather(rank, y, D - 1)
    } else {
        Ok(y)
    }
}

/// Data parallelism: `grads` of `module` all-reduced across ranks ([`all_reduce`], `op` sum
/// or mean) parameter by parameter in the module's visiting order, which is the same on
/// every rank for the same module. Each gradient is summed in rank order, so a step gives
/// the same bits run after run and on every rank. Every rank must hold a gradient for the
/// same parameters.
pub fn all_reduce_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    rank: &Rank,
    module: &M,
    grads: GradientsParams,
    op: ReduceOperation,
) -> Result<GradientsParams, CollectiveError> {
    let mut visitor = GradientSync {
        rank: *rank,
        op,
        grads,
        error: None,
    };
    module.visit(&mut visitor);
    match visitor.error {
        Some(error) => Err(error),
        None => Ok(visitor.grads),
    }
}

/// Visits the parameters in order and all-reduces each one's gradient.
struct GradientSync {
    rank: Rank,
    op: ReduceOperation,
    grads: GradientsParams,
    error: Option<CollectiveError>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradientSync {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.error.is_some() {
            return;
        }
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
            return;
        };
        match all_reduce(&self.rank, grad, self.op) {
            Ok(grad) => self.grads.register::<B::InnerBackend, D>(param.id, grad),
            Err(error) => self.error = Some(error),
        }
    }
}
