//! A property test over every routed op: random shapes (ranks 1-6, dims 0-600 and a few
//! long ones), random views (transposed, sliced with steps, narrowed, broadcast), random
//! dtypes and random batch compositions. Each case checks that the op gives a prefix of the
//! batch and a single entry of it the bits they have inside the whole batch, that the values
//! are within the f64 reference's bound (where the op has one here), and that a malformed
//! call is refused by a clean `BatchInvariant::` panic.
//!
//! `BI_PROP_CASES` sets the number of cases (default 64, a few seconds on the CPU path) and
//! `BI_PROP_SEED` the first case's seed (case `i` uses `seed + i`); a failure names the case
//! seed, and `BI_PROP_SEED=<it> BI_PROP_CASES=1` replays exactly that case.

use batch_invariant_kernels::extremum::{cpu_reference as extremum_ref, ExtremumOp};
use batch_invariant_kernels::matmul::cpu_reference as matmul_ref;
use batch_invariant_kernels::norm::cpu_reference as norm_ref;
use batch_invariant_kernels::reduce::{cpu_reference as reduce_ref, ReduceOp};
use batch_invariant_kernels::softmax::{cpu_reference as softmax_ref, SoftmaxKind};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::module::attention;
use burn::tensor::ops::{AttentionModuleOptions, FloatTensorOps, ModuleOps};
use burn::tensor::{FloatDType, Int, Slice, Tensor, TensorPrimitive};
use burn_batch_invariant::rms_norm;
use burn_batch_invariant_tests::*;

type X<B> = BatchInvariant<B>;

/// Elements a case's input may hold (its storage may be up to twice that).
const BUDGET: usize = 1 << 15;
const EPS: f64 = 1e-5;

/// splitmix64: a small, seedable generator, so that a case replays from its seed alone.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Reduce(ReduceOp),
    Max,
    Softmax(SoftmaxKind),
    LayerNorm,
    RmsNorm,
    Matmul,
    Linear,
    Attention,
}

const OPS: [Op; 11] = [
    Op::Reduce(ReduceOp::Sum),
    Op::Reduce(ReduceOp::Mean),
    Op::Reduce(ReduceOp::Prod),
    Op::Max,
    Op::Softmax(SoftmaxKind::Softmax),
    Op::Softmax(SoftmaxKind::LogSoftmax),
    Op::LayerNorm,
    Op::RmsNorm,
    Op::Matmul,
    Op::Linear,
    Op::Attention,
];

/// A dim's length: mostly small, sometimes 0 or 1, sometimes long enough to cross the
/// kernels' row-length thresholds.
fn dim_len(rng: &mut Rng) -> usize {
    match rng.below(20) {
        0 => 0,
        1..=3 => 1,
        4..=11 => 2 + rng.below(15),
        12..=18 => 2 + rng.below(599),
        _ => [1024, 4097, 8193][rng.below(3)],
    }
}

/// A random shape within [`BUDGET`] elements, counting an empty dim as 1 so that the
/// results of empty inputs (a matmul with K = 0 is full of zeros) stay bounded too (the
/// longest dims are halved until it fits).
fn random_shape<const D: usize>(rng: &mut Rng) -> [usize; D] {
    let mut shape = [0; D].map(|_| dim_len(rng));
    while shape.iter().map(|&n| n.max(1)).product::<usize>() > BUDGET {
        let longest = (0..D).max_by_key(|&d| shape[d]).unwrap();
        shape[longest] /= 2;
    }
    shape
}

/// Random values of `shape`, or an empty tensor where it has no element (a conversion of an
/// empty buffer would be a launch of its own).
fn make<B: KernelHost, const D: usize>(
    shape: [usize; D],
    seed: u64,
    dtype: FloatDType,
    device: &B::Device,
) -> Tensor<X<B>, D> {
    let n = shape.iter().product::<usize>();
    if n == 0 {
        Tensor::empty(shape, (device, dtype.into()))
    } else {
        tensor::<X<B>, D>(random_values(n, seed), shape, dtype, device)
    }
}

/// A tensor of logical shape `shape` stored one of five ways, and how.
fn random_view<B: KernelHost, const D: usize>(
    rng: &mut Rng,
    shape: [usize; D],
    dtype: FloatDType,
    device: &B::Device,
) -> (Tensor<X<B>, D>, String) {
    let seed = rng.next();
    let stored = |storage: [usize; D]| make::<B, D>(storage, seed, dtype, device);
    if shape.contains(&0) {
        // Burn rebuilds an empty tensor's views in the default dtype: no view to test.
        return (stored(shape), "empty".to_string());
    }
    let d = rng.below(D);
    match rng.below(5) {
        1 if D >= 2 => {
            let e = (d + 1 + rng.below(D - 1)) % D;
            let mut storage = shape;
            storage.swap(d, e);
            (
                stored(storage).swap_dims(d, e),
                format!("transposed {d}<->{e}"),
            )
        }
        2 if shape[d] > 0 => {
            let mut storage = shape;
            storage[d] = 2 * shape[d];
            let slices: Vec<Slice> = (0..D)
                .map(|i| {
                    let step = if i == d { 2 } else { 1 };
                    Slice::new(0, Some(storage[i] as isize), step)
                })
                .collect();
            (
                stored(storage).slice(&slices),
                format!("every other entry of dim {d}"),
            )
        }
        3 => {
            let offset = 1 + rng.below(3);
            let mut storage = shape;
            storage[d] += offset;
            (
                stored(storage).narrow(d, offset, shape[d]),
                format!("dim {d} narrowed from {offset}"),
            )
        }
        4 if shape[d] > 0 => {
            let mut storage = shape;
            storage[d] = 1;
            (stored(storage).expand(shape), format!("dim {d} broadcast"))
        }
        _ => (stored(shape), "contiguous".to_string()),
    }
}

/// A tensor's values in f64, without a read where it has none (Burn's conversion of some
/// empty reads panics).
fn read<B: KernelHost, const D: usize>(t: Tensor<X<B>, D>) -> Vec<f64> {
    if t.shape().num_elements() == 0 {
        Vec::new()
    } else {
        values(t)
    }
}

/// `what` failed in case `seed`: the message every assertion carries.
struct Case {
    seed: u64,
    what: String,
}

impl Case {
    fn fail(&self, why: impl std::fmt::Display) -> ! {
        panic!(
            "property case {} ({}): {why}\nreplay: BI_PROP_SEED={} BI_PROP_CASES=1",
            self.seed, self.what, self.seed
        )
    }
}

/// The bits of `op(x)` restricted to entries `start..start + len` of dim `batch` must be
/// the bits of `op` on that part alone.
fn check_part<B: KernelHost, const D: usize, const E: usize>(
    case: &Case,
    x: &Tensor<X<B>, D>,
    full: &Tensor<X<B>, E>,
    batch: usize,
    start: usize,
    len: usize,
    op: &impl Fn(Tensor<X<B>, D>) -> Tensor<X<B>, E>,
) {
    let part = op(x.clone().narrow(batch, start, len));
    if bits(part) != bits(full.clone().narrow(batch, start, len)) {
        case.fail(format_args!(
            "entries {start}..{} of dim {batch} differ alone and inside the batch of {}",
            start + len,
            x.dims()[batch]
        ));
    }
}

/// Batch invariance along a random dim of `x` other than `keep` (the op's own dims): a
/// random prefix and a random single entry, each against the whole batch.
fn check_invariance<B: KernelHost, const D: usize, const E: usize>(
    rng: &mut Rng,
    case: &Case,
    x: &Tensor<X<B>, D>,
    keep: &[usize],
    op: impl Fn(Tensor<X<B>, D>) -> Tensor<X<B>, E>,
) -> Tensor<X<B>, E> {
    let full = op(x.clone());
    let dims = x.dims();
    if dims.contains(&0) {
        // Burn's slices of an empty tensor come back in the default dtype (a new empty
        // tensor), so its parts are not the same operands; there is nothing to compare.
        return full;
    }
    let batches: Vec<usize> = (0..D)
        .filter(|d| !keep.contains(d) && dims[*d] >= 2)
        .collect();
    if let Some(&batch) = batches.get(rng.below(batches.len())) {
        let n = dims[batch];
        check_part(case, x, &full, batch, 0, 1 + rng.below(n - 1), &op);
        check_part(case, x, &full, batch, rng.below(n), 1, &op);
    }
    full
}

/// `got` within `tol[i]` of `want[i]` everywhere (NaN where the reference is NaN), plus
/// the absolute slack of results that underflow: f32's smallest normal (the accumulation)
/// and half the output dtype's subnormal step.
fn check_bound(
    case: &Case,
    dtype: FloatDType,
    got: &[f64],
    want: &[f64],
    tol: impl Fn(usize) -> f64,
) {
    let slack = f64::from(f32::MIN_POSITIVE)
        + match dtype {
            FloatDType::F16 => 2.0f64.powi(-25),
            _ => 0.0,
        };
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        // Past the dtype's range the right answer is the infinity of its sign.
        let overflows = w.abs() > max_finite(dtype) && g.is_infinite() && g.signum() == w.signum();
        let ok = overflows || (g.is_nan() && w.is_nan()) || (g - w).abs() <= tol(i) + slack;
        if !ok {
            case.fail(format_args!(
                "output {i}: {g} against the reference {w} (bound {})",
                tol(i)
            ));
        }
    }
}

/// A malformed call through the backend op must be a clean refusal naming the op.
fn check_refusal(case: &Case, call: impl FnOnce()) {
    let msg = panic_message(call);
    if !msg.starts_with("BatchInvariant::") {
        case.fail(format_args!(
            "a malformed call panicked without naming the op: {msg}"
        ));
    }
}

fn run_case<B: KernelHost, const D: usize>(seed: u64, device: &B::Device) {
    let mut rng = Rng(seed);
    let dtypes = float_dtypes::<B>(device);
    let dtype = dtypes[rng.below(dtypes.len())];
    let op = OPS[rng.below(OPS.len())];
    let op = match op {
        Op::Matmul | Op::Linear if D < 2 => Op::Reduce(ReduceOp::Sum),
        Op::Attention if D != 4 => Op::Softmax(SoftmaxKind::Softmax),
        op => op,
    };
    let mut shape = random_shape::<D>(&mut rng);
    if op == Op::Attention {
        // Head dims within the kernel's range, and a bounded score matrix.
        shape[3] = 1 + rng.below(64);
        shape[2] = shape[2].min(300);
    }
    let (x, view) = random_view::<B, D>(&mut rng, shape, dtype, device);
    let case = Case {
        seed,
        what: format!("{op:?} {dtype:?} {shape:?} {view}"),
    };
    let bits_out = mantissa_bits(dtype);
    if std::env::var("BI_PROP_DEBUG").is_ok() {
        eprintln!("case {seed}: {}", case.what);
    }
    let last = D - 1;
    match op {
        Op::Reduce(kind) => {
            let dim = rng.below(D);
            let out = check_invariance(&mut rng, &case, &x, &[dim], |t| match kind {
                ReduceOp::Sum => t.sum_dim(dim),
                ReduceOp::Mean => t.mean_dim(dim),
                ReduceOp::Prod => t.prod_dim(dim),
            });
            let data = read(x.clone());
            let want = reduce_ref::reduce_dim(&data, &shape, dim, kind);
            let scale = match kind {
                ReduceOp::Prod => want.iter().map(|w| w.abs()).collect(),
                _ => reduce_ref::abs_sum_dim(&data, &shape, dim),
            };
            let len = shape[dim];
            if len > 0 {
                check_bound(&case, dtype, &read(out), &want, |i| {
                    reduce_ref::tolerance(len, scale[i], want[i], kind, bits_out)
                });
            }
            check_refusal(&case, || {
                let _ = X::<B>::float_sum_dim(x.into_primitive().tensor(), D + rng.below(3));
            });
        }
        Op::Max => {
            let dim = rng.below(D);
            if shape[dim] == 0 {
                check_refusal(&case, || {
                    let _ = X::<B>::float_max_dim(x.into_primitive().tensor(), dim);
                });
                return;
            }
            let out = check_invariance(&mut rng, &case, &x, &[dim], |t| t.max_dim(dim));
            if shape.contains(&0) {
                // Nothing to compare, and nothing to read: Burn's read of an empty integer
                // tensor launches an empty copy, an invalid launch on CUDA.
                return;
            }
            let idx: Tensor<X<B>, D, Int> = x.clone().argmax(dim);
            let got_idx = idx.into_data().convert::<i64>().to_vec::<i64>().unwrap();
            let want = extremum_ref::extremum_dim(&read(x), &shape, dim, ExtremumOp::Max);
            for (i, ((g, gi), (w, wi))) in read(out).iter().zip(&got_idx).zip(&want).enumerate() {
                if !(*gi as usize == *wi && (g == w || (g.is_nan() && w.is_nan()))) {
                    case.fail(format_args!("output {i}: ({g}, {gi}) against ({w}, {wi})"));
                }
            }
        }
        Op::Softmax(kind) => {
            let dim = rng.below(D);
            let out = check_invariance(&mut rng, &case, &x, &[dim], |t| match kind {
                SoftmaxKind::Softmax => softmax(t, dim),
                SoftmaxKind::LogSoftmax => log_softmax(t, dim),
            });
            let want = softmax_ref::softmax_dim(&read(x), &shape, dim, kind);
            // A loose bound (the suite's softmax tests hold the tight one): the f32 sums'
            // levels, `exp`'s few ulps and the final cast, relative to max(1, |value|).
            let len = shape[dim].max(1) as f64;
            let u = 2.0f64.powi(-24);
            check_bound(&case, dtype, &read(out), &want, |i| {
                (8.0 * (len.log2() + len / 32.0 + 8.0) * u
                    + 2.0 * reduce_ref::unit_roundoff(bits_out))
                    * want[i].abs().max(1.0)
            });
        }
        Op::LayerNorm | Op::RmsNorm => {
            let len = shape[last];
            let gamma = make::<B, 1>([len], seed ^ 1, dtype, device);
            let beta = make::<B, 1>([len], seed ^ 2, dtype, device);
            let layer = op == Op::LayerNorm;
            let run = |t: Tensor<X<B>, D>| {
                if layer {
                    Tensor::from_primitive(TensorPrimitive::Float(X::<B>::layer_norm(
                        t.into_primitive().tensor(),
                        gamma.clone().into_primitive().tensor(),
                        Some(beta.clone().into_primitive().tensor()),
                        EPS,
                    )))
                } else {
                    rms_norm(t, gamma.clone(), EPS)
                }
            };
            let out = check_invariance(&mut rng, &case, &x, &[last], run);
            if len == 0 {
                return; // rows of nothing: the empty output is all there is (checked above)
            }
            let (g, b) = (read(gamma.clone()), read(beta));
            let data = read(x.clone());
            let (want, tol) = if layer {
                norm_ref::layer_norm(&data, len, &g, Some(&b), EPS, bits_out)
            } else {
                norm_ref::rms_norm(&data, len, &g, EPS, bits_out)
            };
            check_bound(&case, dtype, &read(out), &want, |i| tol[i]);
            check_refusal(&case, || {
                let short = make::<B, 1>([len + 1], seed ^ 7, dtype, device);
                let _ = X::<B>::layer_norm(
                    x.into_primitive().tensor(),
                    short.into_primitive().tensor(),
                    None,
                    EPS,
                );
            });
        }
        Op::Matmul | Op::Linear => {
            let k = shape[last];
            let rows: usize = shape[..last].iter().product();
            let n = 1 + rng.below(96).min(4 * BUDGET / rows.max(1));
            let w2 = make::<B, 2>([k, n], seed ^ 3, dtype, device);
            let bias = make::<B, 1>([n], seed ^ 4, dtype, device);
            // The same weight at x's rank for `matmul` (Burn's reshape reads a 0 in its target
            // as "keep this dim", so it is built, not reshaped).
            let mut w_shape = [1; D];
            w_shape[D - 2] = k;
            w_shape[D - 1] = n;
            let w = make::<B, D>(w_shape, seed ^ 3, dtype, device);
            let linear = op == Op::Linear;
            let run = |t: Tensor<X<B>, D>| {
                if linear {
                    Tensor::from_primitive(TensorPrimitive::Float(X::<B>::linear(
                        t.into_primitive().tensor(),
                        w2.clone().into_primitive().tensor(),
                        Some(bias.clone().into_primitive().tensor()),
                    )))
                } else {
                    t.matmul(w.clone())
                }
            };
            let out = check_invariance(&mut rng, &case, &x, &[last], run);
            let (want, scale) =
                matmul_ref::matmul(&read(x.clone()), &[rows, k], &read(w2.clone()), &[k, n]);
            let b = read(bias);
            let shift = |i: usize| if linear { b[i % n] } else { 0.0 };
            let want: Vec<f64> = want.iter().enumerate().map(|(i, w)| w + shift(i)).collect();
            check_bound(&case, dtype, &read(out), &want, |i| {
                matmul_ref::tolerance(
                    k,
                    scale[i] + shift(i).abs(),
                    want[i],
                    product_bits(dtype),
                    bits_out,
                )
            });
            if k != 1 {
                // A weight whose d_input is not x's last dim.
                check_refusal(&case, || {
                    let wrong = make::<B, 2>([1, n], 5, dtype, device);
                    let _ = X::<B>::linear(
                        x.into_primitive().tensor(),
                        wrong.into_primitive().tensor(),
                        None,
                    );
                });
            }
        }
        Op::Attention => {
            // x is the query; key and value share its batch, heads and head dim, and are
            // cut with it along the batch.
            let query = Tensor::<X<B>, 4>::from_primitive(x.into_primitive());
            let [batch, heads, _, dim] = query.dims();
            let kv_len = rng.below(200).min(BUDGET / (batch * heads * dim).max(1));
            let key = make::<B, 4>([batch, heads, kv_len, dim], seed ^ 5, dtype, device);
            let value = make::<B, 4>([batch, heads, kv_len, dim], seed ^ 6, dtype, device);
            let options = AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: rng.below(2) == 1,
            };
            let run = |q: Tensor<X<B>, 4>, k: Tensor<X<B>, 4>, v: Tensor<X<B>, 4>| {
                attention(q, k, v, None, None, options)
            };
            let full = run(query.clone(), key.clone(), value.clone());
            if batch >= 2 {
                let m = 1 + rng.below(batch - 1);
                let part = run(
                    query.narrow(0, 0, m),
                    key.narrow(0, 0, m),
                    value.narrow(0, 0, m),
                );
                if bits(part) != bits(full.clone().narrow(0, 0, m)) {
                    case.fail(format_args!(
                        "the first {m} sequences differ alone and in the batch"
                    ));
                }
            }
            if !read(full).iter().all(|v| v.is_finite()) {
                case.fail("attention of finite inputs gave a non-finite output");
            }
        }
    }
}

fn property<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    let env = |name: &str, default: u64| {
        std::env::var(name).ok().map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?}: expected a number"))
        })
    };
    let (first, cases) = (env("BI_PROP_SEED", 0x5eed), env("BI_PROP_CASES", 64));
    for seed in first..first + cases {
        let case = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            match Rng(seed ^ 0xd1ce).below(6) {
                0 => run_case::<B, 1>(seed, device),
                1 => run_case::<B, 2>(seed, device),
                2 => run_case::<B, 3>(seed, device),
                3 => run_case::<B, 4>(seed, device),
                4 => run_case::<B, 5>(seed, device),
                _ => run_case::<B, 6>(seed, device),
            }
        }));
        if let Err(payload) = case {
            eprintln!("property case {seed} failed; replay: BI_PROP_SEED={seed} BI_PROP_CASES=1");
            std::panic::resume_unwind(payload);
        }
    }
}

#[test]
fn property_routed_ops_on_random_shapes_views_and_batches() {
    on_test_backend!(property);
}
