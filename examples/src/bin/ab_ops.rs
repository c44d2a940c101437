//! A/B: row 0 of an op computed alone vs inside batches of several sizes, under Burn's
//! default backend and under `BatchInvariant`. Prints the largest |difference| per batch
//! size (for attention, a row is a whole sequence), then the attention decode step against
//! the same query inside a prefill; every BatchInvariant entry must be exactly 0.
//!
//!     cargo run --release -p burn-batch-invariant-examples --bin ab_ops [-- --cuda]
//!     BURN_BATCH_INVARIANT=0 cargo run ...   # the same binary with routing switched off

use burn::module::Param;
use burn::nn::LinearConfig;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
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

const OPS: [Op; 8] = [
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
    Op {
        name: "Linear 256->256",
        routed: true,
        cols: 256,
    },
    Op {
        name: "attention (causal)",
        routed: true,
        cols: ATTN_HEADS * ATTN_SEQ * ATTN_DIM,
    },
];

/// Attention rows: each row of `x` is one sequence, `[heads, seq, head_dim]`.
const ATTN_HEADS: usize = 4;
const ATTN_SEQ: usize = 16;
const ATTN_DIM: usize = 16;

fn causal() -> AttentionModuleOptions {
    AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: true,
    }
}

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
        "Linear 256->256" => {
            let mut linear = LinearConfig::new(256, 256).init(&x.device());
            linear.weight = Param::from_tensor(w.clone());
            linear.bias = Some(Param::from_tensor(w.clone().narrow(0, 0, 1).reshape([256])));
            linear.forward(x)
        }
        "attention (causal)" => {
            let m = x.dims()[0];
            let qkv = x.reshape([m, ATTN_HEADS, ATTN_SEQ, ATTN_DIM]);
            let out = attention(qkv.clone(), qkv.clone() * 0.5, qkv, None, None, causal());
            out.reshape([m, ATTN_HEADS * ATTN_SEQ * ATTN_DIM])
        }
        _ => x.matmul(w.clone()),
    }
}

/// Max |query n-1 of a causal prefill - the decode step of that query against n keys|,
/// over every n of a 600-token sequence (crosses the 512-key chunk of the invariant kernel).
fn decode_drift<X: Backend>(device: &X::Device) -> f64 {
    let len = 600;
    let t = |seed| {
        matrix::<X>(ATTN_HEADS * len, ATTN_DIM, seed, device)
            .reshape([1, ATTN_HEADS, len, ATTN_DIM])
    };
    let (q, k, v) = (t(21), t(22), t(23));
    let prefill = attention(q.clone(), k.clone(), v.clone(), None, None, causal());
    let mut worst = 0.0f64;
    for n in [1, 2, 17, 100, 511, 512, 513, 600] {
        let step = attention(
            q.clone().narrow(2, n - 1, 1),
            k.clone().narrow(2, 0, n),
            v.clone().narrow(2, 0, n),
            None,
            None,
            AttentionModuleOptions {
                is_causal: false,
                ..causal()
            },
        );
        worst = worst.max(max_abs_diff(step, prefill.clone().narrow(2, n - 1, 1)));
    }
    worst
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
                "  (not routed)"
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
    println!();
    println!("attention: max |decode step - same query in a causal prefill|, f32, 600 tokens");
    for (backend, drift) in [
        ("Burn default", decode_drift::<B>(device)),
        ("BatchInvariant", decode_drift::<BatchInvariant<B>>(device)),
    ] {
        let shown = if drift == 0.0 {
            "0".to_string()
        } else {
            format!("{drift:.1e}")
        };
        println!("{:<22} {backend:<16} {shown:>9}", "decode vs prefill");
        if backend == "BatchInvariant" && mode::is_enabled() && drift != 0.0 {
            failures += 1;
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
