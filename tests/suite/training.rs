//! The one-op training path ([`burn_batch_invariant::ParityOps`]): under
//! `Autodiff<BatchInvariant<B>>`, `layer_norm`, `rms_norm` and `attention` run the inference
//! kernel forward and their own backward passes. Each test checks, per dtype:
//!
//! - the training forward has the bits of the inference kernel (no parity mode);
//! - every gradient is within a bound of an f64 reference computed here, and of the
//!   gradients Burn's composites give (`Autodiff`'s own `layer_norm` and `attention`,
//!   burn-nn's RMS chain);
//! - a sample's input gradients have the same bits alone and inside batches of 2, 3 and 7;
//! - two runs give the same bits, the sums over the batch (gamma, beta, bias) included.
//!
//! The attention cases include ones the fused backward kernels take on CUDA (f16/bf16, no
//! mask, bias or softcap, one head dim that is a multiple of 16) and ones they leave to the
//! composite.
//!
//! And on a whole model: policy-gradient steps whose training log-probabilities are
//! generation's, bit for bit.

use burn::backend::Autodiff;
use burn::optim::AdamConfig;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, FloatDType, Tensor, TensorData};
use burn_batch_invariant::sampling::SamplingParams;
use burn_batch_invariant::{attention, layer_norm, rms_norm, ParityOps};
use burn_batch_invariant_examples::llama::{prompts, Llama, LlamaConfig, Request};
use burn_batch_invariant_examples::policy::{train_step, StepReport};
use burn_batch_invariant_tests::*;

type Ad<B> = Autodiff<BatchInvariant<B>>;

/// The unit roundoff a gradient is bounded with: the dtype's, or TF32's where the backward's
/// f32 matmuls run on tensor cores, whichever is coarser.
fn unit(dtype: FloatDType) -> f64 {
    let bits = mantissa_bits(dtype).min(product_bits(FloatDType::F32));
    (2.0f64).powi(-(bits as i32) - 1)
}

/// Every `got` within `k * u * max|want|` of `want` (a normwise bound: gradients sum many
/// terms of both signs).
fn assert_close(got: &[f64], want: &[f64], k: f64, u: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= k * u * scale,
            "{what}: [{i}] = {g}, reference {w} (bound {})",
            k * u * scale
        );
    }
}

/// The f64 gradients `(dx, dgamma, dbeta)` of `sum(norm(x) * w)` over rows of `len`.
fn norm_reference(
    x: &[f64],
    w: &[f64],
    gamma: &[f64],
    len: usize,
    eps: f64,
    centered: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut dx, mut dgamma, mut dbeta) = (Vec::new(), vec![0.0; len], vec![0.0; len]);
    let n = len as f64;
    for (xs, ws) in x.chunks(len).zip(w.chunks(len)) {
        let mean = if centered {
            xs.iter().sum::<f64>() / n
        } else {
            0.0
        };
        let c: Vec<f64> = xs.iter().map(|v| v - mean).collect();
        let r = 1.0 / (c.iter().map(|v| v * v).sum::<f64>() / n + eps).sqrt();
        let xh: Vec<f64> = c.iter().map(|v| v * r).collect();
        let gh: Vec<f64> = ws.iter().zip(gamma).map(|(g, y)| g * y).collect();
        let mean_gh = if centered {
            gh.iter().sum::<f64>() / n
        } else {
            0.0
        };
        let proj = gh.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / n;
        for j in 0..len {
            dx.push(r * (gh[j] - mean_gh - xh[j] * proj));
            dgamma[j] += ws[j] * xh[j];
            dbeta[j] += ws[j];
        }
    }
    (dx, dgamma, dbeta)
}

fn trained_norms_run_the_inference_kernel<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let (batch, len, eps) = (9, 1000, 1e-5);
    let data = random_values(batch * len, 61);
    let weights = random_values(batch * len, 62);
    let gammas = random_values(len, 63);
    let betas = random_values(len, 64);
    for dtype in float_dtypes::<B>(device) {
        for kind in ["layer_norm", "layer_norm without beta", "rms_norm"] {
            let what = |s: &str| format!("{kind} {dtype:?}: {s}");
            let (centered, with_beta) = (kind != "rms_norm", kind == "layer_norm");
            // Forward and gradients for the first `m` rows, as `[m, 1, len]` (rank 3, so
            // the rows are flattened and restored); `ours` picks the op.
            let run = |m: usize, ours: bool| {
                let t = |v: &[f32], shape: [usize; 3]| {
                    tensor::<Ad<B>, 3>(v.to_vec(), shape, dtype, device).require_grad()
                };
                let x = t(&data[..m * len], [m, 1, len]);
                let w = tensor::<Ad<B>, 3>(weights[..m * len].to_vec(), [m, 1, len], dtype, device);
                let gamma = tensor::<Ad<B>, 1>(gammas.clone(), [len], dtype, device).require_grad();
                let beta = tensor::<Ad<B>, 1>(betas.clone(), [len], dtype, device).require_grad();
                let beta_in = with_beta.then(|| beta.clone());
                let y = match (centered, ours) {
                    (true, true) => layer_norm(x.clone(), gamma.clone(), beta_in, eps),
                    (true, false) => module_layer_norm(x.clone(), gamma.clone(), beta_in, eps),
                    (false, true) => rms_norm(x.clone(), gamma.clone(), eps),
                    (false, false) => {
                        let rms =
                            (x.clone().cast(FloatDType::F32).square().mean_dim(2) + eps).sqrt();
                        (x.clone() / rms.cast(dtype)) * gamma.clone().unsqueeze()
                    }
                };
                let grads = (y.clone() * w).sum().backward();
                let dbeta = with_beta.then(|| beta.grad(&grads).expect("beta gradient"));
                (
                    y.inner(),
                    x.grad(&grads).expect("input gradient"),
                    gamma.grad(&grads).expect("gamma gradient"),
                    dbeta,
                )
            };
            let (y, dx, dgamma, dbeta) = run(batch, true);
            let x = tensor::<BatchInvariant<B>, 3>(data.clone(), [batch, 1, len], dtype, device);
            let gamma = tensor::<BatchInvariant<B>, 1>(gammas.clone(), [len], dtype, device);
            let beta = tensor::<BatchInvariant<B>, 1>(betas.clone(), [len], dtype, device);
            let inference = if centered {
                module_layer_norm(x, gamma, with_beta.then_some(beta), eps)
            } else {
                rms_norm(x, gamma, eps)
            };
            assert!(
                bits(y) == bits(inference),
                "{}",
                what("the training forward differs from the inference kernel")
            );

            let as_f64 = |v: &[f32], shape: usize| {
                values(tensor::<B, 1>(v.to_vec(), [shape], dtype, device))
            };
            let (rdx, rdgamma, rdbeta) = norm_reference(
                &as_f64(&data, batch * len),
                &as_f64(&weights, batch * len),
                &as_f64(&gammas, len),
                len,
                eps,
                centered,
            );
            let u = unit(dtype);
            assert_close(&values(dx.clone()), &rdx, 16.0, u, &what("dx vs f64"));
            assert_close(
                &values(dgamma.clone()),
                &rdgamma,
                16.0,
                u,
                &what("dgamma vs f64"),
            );
            if let Some(dbeta) = &dbeta {
                assert_close(
                    &values(dbeta.clone()),
                    &rdbeta,
                    16.0,
                    u,
                    &what("dbeta vs f64"),
                );
            }
            let (_, cdx, cdgamma, _) = run(batch, false);
            assert_close(
                &values(dx.clone()),
                &values(cdx),
                32.0,
                u,
                &what("dx vs composite"),
            );
            assert_close(
                &values(dgamma.clone()),
                &values(cdgamma),
                32.0,
                u,
                &what("dgamma vs composite"),
            );

            let again = run(batch, true);
            assert!(
                bits(again.1) == bits(dx.clone())
                    && bits(again.2) == bits(dgamma)
                    && again.3.map(bits) == dbeta.map(bits),
                "{}",
                what("two runs differ")
            );
            let alone = bits(run(1, true).1);
            for m in [2, 3, 7] {
                assert!(
                    bits(run(m, true).1.narrow(0, 0, 1)) == alone,
                    "{}",
                    what(&format!("row 0's dx alone differs from a batch of {m}"))
                );
            }
        }
    }
}

#[test]
fn training_norms_run_the_inference_kernel() {
    on_test_backend!(trained_norms_run_the_inference_kernel);
}

/// One attention problem: shapes, options and which of mask and bias it has.
#[derive(Clone, Copy, Debug)]
struct Case {
    heads: usize,
    seq_q: usize,
    seq_k: usize,
    dim: usize,
    dim_v: usize,
    options: AttentionModuleOptions,
    /// A mask `[batch, 1, seq_q, seq_k]`, broadcast over heads.
    mask: bool,
    /// A bias `[1, heads, seq_q, seq_k]`, broadcast over the batch.
    bias: bool,
}

/// Inputs of sample `b` of a case (the same for every batch size).
struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    w: Vec<f32>,
    mask: Vec<bool>,
    bias: Vec<f32>,
}

fn inputs(case: &Case, batch: usize) -> Inputs {
    let Case {
        heads: h,
        seq_q: sq,
        seq_k: sk,
        dim: d,
        dim_v: dv,
        ..
    } = *case;
    Inputs {
        q: random_values(batch * h * sq * d, 71),
        k: random_values(batch * h * sk * d, 72),
        v: random_values(batch * h * sk * dv, 73),
        w: random_values(batch * h * sq * dv, 74),
        mask: random_values(batch * sq * sk, 75)
            .into_iter()
            .map(|v| v.fract().abs() < 0.3)
            .collect(),
        bias: random_values(h * sq * sk, 76),
    }
}

/// The f64 gradients `[dq, dk, dv, dbias]` of `sum(attention(q, k, v) * w)`, from the
/// inputs as the dtype holds them.
fn attention_reference(case: &Case, batch: usize, x: [&[f64]; 5], mask: &[bool]) -> [Vec<f64>; 4] {
    let Case {
        heads: h,
        seq_q: sq,
        seq_k: sk,
        dim: d,
        dim_v: dv,
        options,
        ..
    } = *case;
    let [q, k, v, w, bias] = x;
    let scale = options.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let (mut dq, mut dk, mut dvv) = (
        vec![0.0; batch * h * sq * d],
        vec![0.0; batch * h * sk * d],
        vec![0.0; batch * h * sk * dv],
    );
    let mut dbias = vec![0.0; h * sq * sk];
    for b in 0..batch {
        for hh in 0..h {
            let bh = b * h + hh;
            let (q, k) = (&q[bh * sq * d..][..sq * d], &k[bh * sk * d..][..sk * d]);
            let (v, w) = (&v[bh * sk * dv..][..sk * dv], &w[bh * sq * dv..][..sq * dv]);
            for i in 0..sq {
                let mut s = vec![f64::NEG_INFINITY; sk];
                let mut t = vec![0.0; sk];
                for j in 0..sk {
                    let mut x = scale * (0..d).map(|e| q[i * d + e] * k[j * d + e]).sum::<f64>();
                    if let Some(cap) = options.softcap {
                        t[j] = (x / cap).tanh();
                        x = cap * t[j];
                    }
                    let masked = (case.mask && mask[(b * sq + i) * sk + j])
                        || (options.is_causal && j as i64 > i as i64 + sk as i64 - sq as i64);
                    if !masked {
                        s[j] = x + if case.bias {
                            bias[(hh * sq + i) * sk + j]
                        } else {
                            0.0
                        };
                    }
                }
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if max == f64::NEG_INFINITY {
                    continue;
                }
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let total: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|x| x / total).collect();
                let wi = &w[i * dv..][..dv];
                let dp: Vec<f64> = (0..sk)
                    .map(|j| (0..dv).map(|c| wi[c] * v[j * dv + c]).sum())
                    .collect();
                let delta: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for j in 0..sk {
                    for c in 0..dv {
                        dvv[bh * sk * dv + j * dv + c] += p[j] * wi[c];
                    }
                    let mut ds = p[j] * (dp[j] - delta);
                    dbias[(hh * sq + i) * sk + j] += ds;
                    if options.softcap.is_some() {
                        ds *= 1.0 - t[j] * t[j];
                    }
                    for e in 0..d {
                        dq[bh * sq * d + i * d + e] += scale * ds * k[j * d + e];
                        dk[bh * sk * d + j * d + e] += scale * ds * q[i * d + e];
                    }
                }
            }
        }
    }
    [dq, dk, dvv, dbias]
}

fn trained_attention_runs_the_inference_kernel<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let options = |causal, scale, softcap| AttentionModuleOptions {
        scale,
        softcap,
        is_causal: causal,
    };
    let cases = [
        // Causal with more queries than keys: the first four rows see no key.
        Case {
            heads: 2,
            seq_q: 13,
            seq_k: 9,
            dim: 16,
            dim_v: 8,
            options: options(true, None, None),
            mask: false,
            bias: false,
        },
        // Every option: a mask, a broadcast bias, a softcap and a custom scale.
        Case {
            heads: 3,
            seq_q: 9,
            seq_k: 21,
            dim: 8,
            dim_v: 16,
            options: options(false, Some(0.3), Some(5.0)),
            mask: true,
            bias: true,
        },
        // Self-attention, causal, one head dim past a tensor-core step.
        Case {
            heads: 1,
            seq_q: 33,
            seq_k: 33,
            dim: 24,
            dim_v: 24,
            options: options(true, None, None),
            mask: false,
            bias: false,
        },
        // The fused backward's cases (CUDA, f16/bf16): causal self-attention over two
        // 64-row blocks, cross-attention past two key blocks with a custom scale, and causal
        // with more queries than keys (rows that see no key).
        Case {
            heads: 2,
            seq_q: 77,
            seq_k: 77,
            dim: 32,
            dim_v: 32,
            options: options(true, None, None),
            mask: false,
            bias: false,
        },
        Case {
            heads: 2,
            seq_q: 70,
            seq_k: 130,
            dim: 16,
            dim_v: 16,
            options: options(false, Some(0.3), None),
            mask: false,
            bias: false,
        },
        Case {
            heads: 1,
            seq_q: 80,
            seq_k: 70,
            dim: 16,
            dim_v: 16,
            options: options(true, None, None),
            mask: false,
            bias: false,
        },
    ];
    let batch = 7;
    for case in cases {
        let Case {
            heads: h,
            seq_q: sq,
            seq_k: sk,
            dim: d,
            dim_v: dv,
            options,
            ..
        } = case;
        let data = inputs(&case, batch);
        for dtype in float_dtypes::<B>(device) {
            let what = |s: &str| format!("attention {case:?} {dtype:?}: {s}");
            // On CUDA the half-precision cases without mask, bias or softcap whose head dims
            // are one multiple of 16 take the fused backward kernels: make sure they do.
            let fusable = !case.mask
                && !case.bias
                && options.softcap.is_none()
                && d == dv
                && d % 16 == 0
                && matches!(dtype, FloatDType::F16 | FloatDType::BF16);
            if runtime() == TestRuntime::Cuda && fusable {
                assert!(
                    B::invariant_attention_backward_supported(device, dtype.into(), d, dv),
                    "{}",
                    what("the fused backward does not take this case on CUDA")
                );
            }
            // Output and `[dq, dk, dv, dbias]` of the first `m` samples; `ours` picks the op.
            let run = |m: usize, ours: bool| {
                let t = |v: &[f32], shape: [usize; 4]| {
                    let n = shape.iter().product::<usize>();
                    tensor::<Ad<B>, 4>(v[..n].to_vec(), shape, dtype, device).require_grad()
                };
                let q = t(&data.q, [m, h, sq, d]);
                let k = t(&data.k, [m, h, sk, d]);
                let v = t(&data.v, [m, h, sk, dv]);
                let w = t(&data.w, [m, h, sq, dv]).detach();
                let mask = case.mask.then(|| {
                    let bools = data.mask[..m * sq * sk].to_vec();
                    Tensor::<Ad<B>, 4, Bool>::from_data(
                        TensorData::new(bools, [m, 1, sq, sk]),
                        device,
                    )
                });
                let bias = case.bias.then(|| t(&data.bias, [1, h, sq, sk]));
                let y = if ours {
                    attention(q.clone(), k.clone(), v.clone(), mask, bias.clone(), options)
                } else {
                    burn_attention(q.clone(), k.clone(), v.clone(), mask, bias.clone(), options)
                };
                let grads = (y.clone() * w).sum().backward();
                let grad = |x: &Tensor<Ad<B>, 4>| x.grad(&grads).expect("gradient");
                let dbias = bias.as_ref().map(grad);
                (
                    y.inner(),
                    [Some(grad(&q)), Some(grad(&k)), Some(grad(&v)), dbias],
                )
            };
            let (y, ours) = run(batch, true);
            let inference = {
                let t = |v: &[f32], shape: [usize; 4]| {
                    tensor::<BatchInvariant<B>, 4>(v.to_vec(), shape, dtype, device)
                };
                let mask = case.mask.then(|| {
                    Tensor::<BatchInvariant<B>, 4, Bool>::from_data(
                        TensorData::new(data.mask.clone(), [batch, 1, sq, sk]),
                        device,
                    )
                });
                let bias = case.bias.then(|| t(&data.bias, [1, h, sq, sk]));
                burn_attention(
                    t(&data.q, [batch, h, sq, d]),
                    t(&data.k, [batch, h, sk, d]),
                    t(&data.v, [batch, h, sk, dv]),
                    mask,
                    bias,
                    options,
                )
            };
            assert!(
                bits(y) == bits(inference),
                "{}",
                what("the training forward differs from the inference kernel")
            );

            let as_f64 = |v: &[f32]| values(tensor::<B, 1>(v.to_vec(), [v.len()], dtype, device));
            let reference = attention_reference(
                &case,
                batch,
                [
                    &as_f64(&data.q),
                    &as_f64(&data.k),
                    &as_f64(&data.v),
                    &as_f64(&data.w),
                    &as_f64(&data.bias),
                ],
                &data.mask,
            );
            let (_, composite) = run(batch, false);
            // `ds = p (dp - delta)` cancels: in f32 its rounding errors are amplified past
            // the unit roundoff, so f32 gradients are held to 2^-20 per rounding. And the
            // error of a gradient row grows with the keys its sums run over: the bounds are
            // per 64 keys.
            let u = unit(dtype).max((2.0f64).powi(-20));
            let keys = (sk as f64 / 64.0).max(1.0);
            for (i, name) in ["dq", "dk", "dv", "dbias"].iter().enumerate() {
                let Some(got) = ours[i].clone() else { continue };
                let got = values(got);
                assert_close(
                    &got,
                    &reference[i],
                    32.0 * keys,
                    u,
                    &what(&format!("{name} vs f64")),
                );
                let composite = values(composite[i].clone().expect("composite gradient"));
                assert_close(
                    &got,
                    &composite,
                    64.0 * keys,
                    u,
                    &what(&format!("{name} vs composite")),
                );
            }

            let again = run(batch, true).1;
            for (i, name) in ["dq", "dk", "dv", "dbias"].iter().enumerate() {
                assert!(
                    again[i].clone().map(bits) == ours[i].clone().map(bits),
                    "{}",
                    what(&format!("{name}: two runs differ"))
                );
            }
            let sample0 = |grads: [Option<Tensor<BatchInvariant<B>, 4>>; 4]| {
                grads[..3]
                    .iter()
                    .map(|g| bits(g.clone().expect("gradient").narrow(0, 0, 1)))
                    .collect::<Vec<_>>()
            };
            let alone = sample0(run(1, true).1);
            for m in [2, 3, batch] {
                assert!(
                    sample0(run(m, true).1) == alone,
                    "{}",
                    what(&format!(
                        "sample 0's dq, dk, dv alone differ from a batch of {m}"
                    ))
                );
            }
        }
    }
}

#[test]
fn training_attention_runs_the_inference_kernel() {
    on_test_backend!(trained_attention_runs_the_inference_kernel);
}

/// Two policy-gradient steps on the tiny Llama (`examples/src/policy.rs`): generation with
/// continuous batching and a KV cache draws the tokens, the training forward over whole
/// sequences recomputes their log-probabilities, and under `Autodiff<BatchInvariant<B>>`
/// every one has generation's bits, before and after an optimizer step. Burn's default
/// (`Autodiff<B>`) is printed as the control.
fn policy_logprobs_equal_generation<B: KernelHost + ParityOps>(device: &B::Device) {
    let _mode = mode_shared();
    let config = LlamaConfig::tiny();
    let requests = |step: u64| -> Vec<Request> {
        prompts(10, 20, config.vocab, 7 + step)
            .into_iter()
            .enumerate()
            .map(|(i, prompt)| Request {
                prompt,
                max_new: 1 + i % 4,
                params: SamplingParams::with_temperature(1.0, step),
                id: i as u64,
            })
            .collect()
    };
    let reward = |tokens: &[usize]| tokens.iter().filter(|&&t| t % 2 == 0).count() as f64;
    fn steps<A>(
        config: LlamaConfig,
        requests: &dyn Fn(u64) -> Vec<Request>,
        reward: &dyn Fn(&[usize]) -> f64,
        device: &A::Device,
    ) -> Vec<StepReport>
    where
        A: AutodiffBackend + ParityOps,
        A::InnerBackend: ParityOps,
    {
        let mut model = Llama::<A>::new(config, 3, FloatDType::F32, device);
        let mut optimizer = AdamConfig::new().init::<A, Llama<A>>();
        (0..2)
            .map(|step| {
                let (next, report) = train_step(
                    model.clone(),
                    &mut optimizer,
                    1e-2,
                    &requests(step),
                    4,
                    reward,
                    FloatDType::F32,
                    device,
                );
                model = next;
                report
            })
            .collect()
    }
    for (step, report) in steps::<Ad<B>>(config, &requests, &reward, device)
        .iter()
        .enumerate()
    {
        assert!(report.tokens > 0, "step {step}: nothing was sampled");
        assert!(
            report.differing == 0,
            "step {step}: {} of {} training log-probabilities differ from generation's \
             (largest difference {:e})",
            report.differing,
            report.tokens,
            report.max_diff
        );
    }
    for (step, report) in steps::<Autodiff<B>>(config, &requests, &reward, device)
        .iter()
        .enumerate()
    {
        eprintln!(
            "Burn default, step {step}: {} of {} training log-probabilities differ from \
             generation's (largest difference {:e})",
            report.differing, report.tokens, report.max_diff
        );
    }
}

#[test]
fn training_policy_logprobs_equal_generation() {
    on_test_backend!(policy_logprobs_equal_generation);
}
