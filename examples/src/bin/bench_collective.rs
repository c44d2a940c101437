//! All-reduce benchmark: `burn_batch_invariant::collective::all_reduce` (a fixed rank order,
//! on burn-collective's broadcast) against burn-collective's own all-reduce (tree, ring,
//! centralized), on 2 and 4 peers, one thread each, that share one device.
//!
//!     cargo run --release -p burn-batch-invariant-examples --bin bench_collective -- --cuda [--json PATH]
//!
//! Messages are `[tokens, 4096]`, a tensor-parallel layer's output, in bf16 and f32 (`--dtype
//! bf16|f32` for one), for 1 to 4096 tokens. Each figure is rank 0's wall clock per
//! all-reduce, median of 9 samples of 8 calls, each call followed by reading one element of
//! the sum back: peers share the device but not its streams, and a strategy may add on
//! another peer's stream, so a figure counts an all-reduce once its sum can be read, as the
//! next layer needs it. The peers run in lock step, so it is the collective's time, host work
//! included. "row 0" says whether row 0's sum has the same bits reduced alone as inside the
//! message.
//!
//! Peers that share a device move no data over a link: this measures what a collective costs
//! on top of the transport (synchronisation, the adds, the strategy's bookkeeping), which is
//! what a tensor-parallel decode step's small messages pay. Across GPUs, the transport's
//! bandwidth adds to both columns: ours sends every rank's whole tensor to every peer.

use std::sync::{Arc, Barrier};

use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor, TensorPrimitive};
use burn_batch_invariant::collective::{all_reduce, PeerId, Rank, ReduceOperation};
use burn_batch_invariant::{BatchInvariant, KernelHost};
use burn_batch_invariant_examples::{arg, matrix, median_ms, on_backend};
use burn_collective::{
    finish_collective, register, reset_collective, AllReduceStrategy, CollectiveConfig,
};
use serde::Serialize;

#[derive(Clone, Copy, Debug)]
enum Method {
    /// `burn_batch_invariant::collective::all_reduce`.
    RankOrder,
    /// burn-collective's `all_reduce` with this local strategy.
    Burn(AllReduceStrategy),
}

impl Method {
    fn name(&self) -> String {
        match self {
            Method::RankOrder => "rank order (ours)".into(),
            Method::Burn(AllReduceStrategy::Tree(arity)) => format!("burn tree({arity})"),
            Method::Burn(AllReduceStrategy::Ring) => "burn ring".into(),
            Method::Burn(AllReduceStrategy::Centralized) => "burn centralized".into(),
        }
    }

    fn reduce<X: Backend>(&self, rank: &Rank, x: Tensor<X, 2>) -> Tensor<X, 2> {
        match self {
            Method::RankOrder => all_reduce(rank, x, ReduceOperation::Sum).expect("all-reduce"),
            Method::Burn(_) => {
                let sum = burn_collective::all_reduce::<X>(
                    rank.peer(),
                    x.into_primitive().tensor(),
                    ReduceOperation::Sum,
                )
                .expect("burn-collective all-reduce");
                Tensor::from_primitive(TensorPrimitive::Float(sum))
            }
        }
    }
}

#[derive(Serialize, Clone)]
struct Row {
    ranks: usize,
    method: String,
    dtype: String,
    tokens: usize,
    hidden: usize,
    ms: f64,
    row_0_invariant: bool,
}

const HIDDEN: usize = 4096;
const TOKENS: [usize; 6] = [1, 8, 64, 256, 1024, 4096];

/// Every row of `method` on `ranks` peers; rank 0's figures.
fn run<X: Backend>(
    ranks: usize,
    method: Method,
    dtypes: &[FloatDType],
    device: &X::Device,
) -> Vec<Row> {
    reset_collective::<X>();
    let peers: Vec<PeerId> = (0..ranks as u32).map(PeerId::from).collect();
    let strategy = match method {
        Method::Burn(strategy) => strategy,
        Method::RankOrder => AllReduceStrategy::Tree(2),
    };
    let start = Arc::new(Barrier::new(ranks));
    let threads: Vec<_> = peers
        .iter()
        .map(|&id| {
            let (peers, device, dtypes, start) = (
                peers.clone(),
                device.clone(),
                dtypes.to_vec(),
                start.clone(),
            );
            std::thread::spawn(move || {
                let config = CollectiveConfig::default()
                    .with_num_devices(ranks)
                    .with_local_all_reduce_strategy(strategy);
                register::<X>(id, device.clone(), config).expect("register the peer");
                let rank = Rank::new(&peers, id);
                start.wait();
                let mut rows = Vec::new();
                for &dtype in &dtypes {
                    for tokens in TOKENS {
                        let x = matrix::<X>(tokens, HIDDEN, 40 + rank.rank() as u64, &device)
                            .cast(dtype);
                        for _ in 0..3 {
                            let _ = method.reduce(&rank, x.clone());
                        }
                        let ms = median_ms::<X, _>(&device, 8, 9, || {
                            let sum = method.reduce(&rank, x.clone());
                            sum.slice([0..1, 0..1]).into_data()
                        });
                        let whole = method.reduce(&rank, x.clone()).narrow(0, 0, 1);
                        let alone = method.reduce(&rank, x.narrow(0, 0, 1));
                        let same = whole.into_data().as_bytes() == alone.into_data().as_bytes();
                        rows.push(Row {
                            ranks,
                            method: method.name(),
                            dtype: format!("{dtype:?}").to_lowercase(),
                            tokens,
                            hidden: HIDDEN,
                            ms,
                            row_0_invariant: same,
                        });
                    }
                }
                finish_collective::<X>(id).expect("finish the collective");
                rows
            })
        })
        .collect();
    let mut per_rank: Vec<Vec<Row>> = threads
        .into_iter()
        .map(|t| t.join().expect("a peer thread panicked"))
        .collect();
    per_rank.swap_remove(0)
}

fn bench<B: KernelHost>(device: &B::Device) {
    type X<B> = BatchInvariant<B>;
    println!("device: {}", <X<B> as Backend>::name(device));
    let dtypes: Vec<FloatDType> = match arg::<String>("--dtype", "all".into()).as_str() {
        "all" => vec![FloatDType::BF16, FloatDType::F32],
        "bf16" => vec![FloatDType::BF16],
        "f32" => vec![FloatDType::F32],
        other => panic!("--dtype {other}: expected bf16 or f32"),
    };
    let methods = [
        Method::RankOrder,
        Method::Burn(AllReduceStrategy::Tree(2)),
        Method::Burn(AllReduceStrategy::Ring),
        Method::Burn(AllReduceStrategy::Centralized),
    ];
    println!("| ranks | method | dtype | tokens x hidden | ms | row 0 alone = in message |");
    println!("|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for ranks in [2, 4] {
        for method in methods {
            for row in run::<X<B>>(ranks, method, &dtypes, device) {
                println!(
                    "| {} | {} | {} | {} x {} | {:.4} | {} |",
                    row.ranks,
                    row.method,
                    row.dtype,
                    row.tokens,
                    row.hidden,
                    row.ms,
                    if row.row_0_invariant { "yes" } else { "no" }
                );
                rows.push(row);
            }
        }
    }
    if let Some(path) = std::env::args().skip_while(|a| a != "--json").nth(1) {
        let json = serde_json::to_string_pretty(&rows).expect("serialize");
        std::fs::write(&path, json).expect("write the JSON");
        println!("wrote {path}");
    }
}

fn main() {
    on_backend!(bench);
}
