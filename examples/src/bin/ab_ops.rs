//! A/B: row 0 of an op computed alone vs inside batches of several sizes, under Burn's
//! default backend and under `BatchInvariant`. Prints the largest |difference| per batch
//! size; every BatchInvariant entry of a routed op must be exactly 0.
//!
//!     cargo run --release -p burn-batch-invariant-examples --bin ab_ops [-- --cuda]
//!     BURN_BATCH_INVARIANT=0 cargo run ...   # the same binary with routing switched off

use burn::tensor::{backend::Backend, Tensor, TensorPrimitive};
use burn_batch_invariant::{mode, BatchInvariant, KernelHost};
use burn_batch_invariant_examples::{matrix, max_abs_diff, on_backend};

const BATCHES: [usize; 8] = [1, 2, 3, 7, 16, 64, 257, 1024];

/// One op under test: a name, whether it is routed, and how to run it on a batch.
struct Op {
    name: &'static str,
    routed: bool,
    cols: usize,
}

const OPS: [Op; 6] = [
    Op {
        name: "mean_dim (last)",
        routed: true,
        cols: 4096,
    },
    Op {
        name: "sum_dim (last)",
        routed: true,
        cols: 4096,
    },
    Op {
        name: "softmax (last)",
        routed: true,
        cols: 4096,
    },
    Op {
        name: "log_softmax (first)",
        routed: true,
        cols: 1000,
    },
    Op {
        name: "layer_norm (last)",
        routed: true,
        cols: 1000,
    },
    Op {
        name: "matmul x[M,256] @ w",
        routed: true,
        cols: 256,
    },
];

fn run<X: Backend>(op: &Op, x: Tensor<X, 2>, w: &Tensor<X, 2>) -> Tensor<X, 2> {
    match op.name {
        "mean_dim (last)" => x.mean_dim(1),
        "sum_dim (last)" => x.sum_dim(1),
        "softmax (last)" => burn::tensor::activation::softmax(x, 1),
        // The batch runs along dim 1 here, so row 0 of the batch is column 0.
        "log_softmax (first)" => {
            burn::tensor::activation::log_softmax(x.transpose(), 0).transpose()
        }
        "layer_norm (last)" => {
            let d = x.dims()[1];
            let gamma = Tensor::<X, 1>::ones([d], &x.device())
                .into_primitive()
                .tensor();
            let beta = Tensor::<X, 1>::zeros([d], &x.device())
                .into_primitive()
                .tensor();
            let out = X::layer_norm(x.into_primitive().tensor(), gamma, Some(beta), 1e-5);
            Tensor::from_primitive(TensorPrimitive::Float(out))
        }
        _ => x.matmul(w.clone()),
    }
}

/// Max |row 0 alone - row 0 inside a batch of M| for every M.
fn row0_drift<X: Backend>(op: &Op, device: &X::Device) -> Vec<f64> {
    let x = matrix::<X>(1024, op.cols, 7, device);
    let w = matrix::<X>(256, 256, 8, device);
    let alone = run(op, x.clone().narrow(0, 0, 1), &w);
    BATCHES
        .iter()
        .map(|&m| {
            max_abs_diff(
                run(op, x.clone().narrow(0, 0, m), &w).narrow(0, 0, 1),
                alone.clone(),
            )
        })
        .collect()
}

fn report<B: KernelHost>(device: &B::Device) {
    println!("runtime: {}", B::name(device));
    println!(
        "batch-invariant mode: {} ({}={})",
        if mode::is_enabled() { "on" } else { "off" },
        mode::ENV_VAR,
        std::env::var(mode::ENV_VAR).unwrap_or_else(|_| "unset".into())
    );
    println!("max |row 0 alone - row 0 in a batch of M|, f32");
    print!("{:<22} {:<16}", "op", "backend");
    for m in BATCHES {
        print!(" {:>9}", format!("M={m}"));
    }
    println!();
    let mut failures = 0;
    for op in &OPS {
        let rows = [
            ("Burn default", row0_drift::<B>(op, device)),
            (
                "BatchInvariant",
                row0_drift::<BatchInvariant<B>>(op, device),
            ),
        ];
        for (backend, drift) in rows {
            print!("{:<22} {:<16}", op.name, backend);
            for d in &drift {
                print!(
                    " {:>9}",
                    if *d == 0.0 {
                        "0".to_string()
                    } else {
                        format!("{d:.1e}")
                    }
                );
            }
            let note = if !op.routed && backend == "BatchInvariant" {
                "  (not routed yet)"
            } else {
                ""
            };
            println!("{note}");
            if op.routed
                && backend == "BatchInvariant"
                && mode::is_enabled()
                && drift.iter().any(|d| *d != 0.0)
            {
                failures += 1;
            }
        }
    }
    if failures > 0 {
        eprintln!("FAILED: {failures} routed op(s) drifted with the batch size");
        std::process::exit(1);
    }
    if mode::is_enabled() {
        println!("every routed op gave row 0 the same bits at every batch size");
    } else {
        println!("routing is off: the BatchInvariant rows show the inner backend's behaviour");
    }
}

fn main() {
    on_backend!(report);
}
