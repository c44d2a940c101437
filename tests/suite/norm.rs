//! Normalization: `layer_norm` (routed to one invariant kernel; burn-nn's `LayerNorm` calls
//! it), our `rms_norm` (the same kernel without the mean pass), and burn-nn's `RmsNorm`
//! (`square().mean_dim()`, through the routed mean). Bitwise invariance, accuracy against
//! the f64 reference, special values, poisoned outputs, bad input, and parity with the
//! training forward, for each of the two kernels.

use batch_invariant_kernels::norm::{cpu_reference, launch_norm, NormError, NormKind};
use burn::backend::Autodiff;
use burn::module::Param;
use burn::nn::{LayerNormConfig, RmsNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::ops::ModuleOps;
use burn::tensor::{FloatDType, Tensor, TensorData, TensorPrimitive};
use burn_batch_invariant::{layer_norm, mode, rms_norm, NormBackend};
use burn_batch_invariant_tests::*;
use burn_cubecl::CubeRuntime;

const EPS: f64 = 1e-5;

/// The two normalizations of the kernel, run through their public entry points.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Norm {
    /// `ModuleOps::layer_norm`.
    Layer,
    /// `burn_batch_invariant::rms_norm` (no beta).
    Rms,
}

const NORMS: [Norm; 2] = [Norm::Layer, Norm::Rms];

impl Norm {
    fn run<X: NormBackend, const D: usize>(
        self,
        x: Tensor<X, D>,
        gamma: Tensor<X, 1>,
        beta: Option<Tensor<X, 1>>,
    ) -> Tensor<X, D> {
        self.run_with(x, gamma, beta, EPS)
    }

    fn run_with<X: NormBackend, const D: usize>(
        self,
        x: Tensor<X, D>,
        gamma: Tensor<X, 1>,
        beta: Option<Tensor<X, 1>>,
        epsilon: f64,
    ) -> Tensor<X, D> {
        match self {
            Norm::Layer => module_layer_norm(x, gamma, beta, epsilon),
            Norm::Rms => {
                assert!(beta.is_none(), "RMS norm takes no beta");
                rms_norm(x, gamma, epsilon)
            }
        }
    }

    /// The `beta` cases each norm has.
    fn betas(self) -> &'static [bool] {
        match self {
            Norm::Layer => &[true, false],
            Norm::Rms => &[false],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Norm::Layer => "layer_norm",
            Norm::Rms => "rms_norm",
        }
    }

    fn reference(
        self,
        input: &[f64],
        len: usize,
        gamma: &[f64],
        beta: Option<&[f64]>,
        bits: u32,
    ) -> (Vec<f64>, Vec<f64>) {
        self.reference_with(input, len, gamma, beta, EPS, bits)
    }

    fn reference_with(
        self,
        input: &[f64],
        len: usize,
        gamma: &[f64],
        beta: Option<&[f64]>,
        epsilon: f64,
        bits: u32,
    ) -> (Vec<f64>, Vec<f64>) {
        match self {
            Norm::Layer => cpu_reference::layer_norm(input, len, gamma, beta, epsilon, bits),
            Norm::Rms => cpu_reference::rms_norm(input, len, gamma, epsilon, bits),
        }
    }
}

/// gamma around 1 and beta around 0, of `len` entries, in `dtype`.
fn affine<X: Backend>(len: usize, dtype: FloatDType, device: &X::Device) -> [Tensor<X, 1>; 2] {
    let gamma: Vec<f32> = random_values(len, 3)
        .iter()
        .map(|v| 1.0 + 0.5 * v)
        .collect();
    [
        tensor::<X, 1>(gamma, [len], dtype, device),
        tensor::<X, 1>(random_values(len, 4), [len], dtype, device),
    ]
}

/// [`check_batches`] for `norm` over rows along dim 0.
fn check_norm<X: NormBackend, const D: usize>(
    norm: Norm,
    x: Tensor<X, D>,
    gamma: Tensor<X, 1>,
    beta: Option<Tensor<X, 1>>,
    what: &str,
) {
    check_batches(x, 0, &format!("{} {what}", norm.name()), |t| {
        norm.run(t, gamma.clone(), beta.clone())
    });
}

fn invariance<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    type X<B> = BatchInvariant<B>;
    for dtype in float_dtypes::<B>(device) {
        // (8200 rows of 33 cross the row count from which cubes hold several rows.)
        for (len, batch) in [(1, 1024), (5, 1024), (33, 8200), (1000, 257), (4097, 64)] {
            let data = random_values(batch * len, len as u64);
            let x = tensor::<X<B>, 2>(data.clone(), [batch, len], dtype, device);
            let [gamma, beta] = affine::<X<B>>(len, dtype, device);
            for norm in NORMS {
                for &with_beta in norm.betas() {
                    let beta = with_beta.then(|| beta.clone());
                    let what = format!("len {len}, {dtype:?}, beta {with_beta}");
                    check_norm(norm, x.clone(), gamma.clone(), beta.clone(), &what);
                    if len <= 1000 && with_beta == norm.betas()[0] {
                        // strided rows: the same matrix stored transposed
                        let t = transposed_values(&data, batch, len);
                        let xt = tensor::<X<B>, 2>(t, [len, batch], dtype, device).transpose();
                        assert!(
                            bits(norm.run(xt.clone(), gamma.clone(), beta.clone()))
                                == bits(norm.run(x.clone(), gamma.clone(), beta.clone())),
                            "{} {what}: strided rows differ from contiguous ones",
                            norm.name()
                        );
                        let what = format!("{what}, strided rows");
                        check_norm(norm, xt, gamma.clone(), beta, &what);
                    }
                }
            }
        }
        // [batch, seq, d] as a norm layer sees it in a transformer: one sequence alone.
        let (batch, seq, d) = (5, 9, 256);
        let x = tensor::<X<B>, 3>(
            random_values(batch * seq * d, 12),
            [batch, seq, d],
            dtype,
            device,
        );
        let [gamma, beta] = affine::<X<B>>(d, dtype, device);
        let what = format!("[5, 9, 256], {dtype:?}");
        check_norm(Norm::Layer, x.clone(), gamma.clone(), Some(beta), &what);
        check_norm(Norm::Rms, x, gamma, None, &what);
    }
}

fn accuracy<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    type X<B> = BatchInvariant<B>;
    for dtype in float_dtypes::<B>(device) {
        for (rows, len, scale, offset) in [
            (16usize, 1000usize, 4.0f32, 0.0f32),
            (3, 4096, 1.0, 100.0),
            (2, 20000, 2.0, -3.0),
            (64, 7, 1.0, 0.0),
            (4, 1, 1.0, 0.0),
        ] {
            let data: Vec<f32> = random_values(rows * len, 900 + len as u64)
                .iter()
                .map(|v| v * scale + offset)
                .collect();
            let x = tensor::<X<B>, 2>(data, [rows, len], dtype, device);
            let [gamma, beta] = affine::<X<B>>(len, dtype, device);
            let (input, g, b) = (
                values(x.clone()),
                values(gamma.clone()),
                values(beta.clone()),
            );
            for norm in NORMS {
                for &with_beta in norm.betas() {
                    let got =
                        values(norm.run(x.clone(), gamma.clone(), with_beta.then(|| beta.clone())));
                    let (want, bounds) = norm.reference(
                        &input,
                        len,
                        &g,
                        with_beta.then_some(&b[..]),
                        mantissa_bits(dtype),
                    );
                    for i in 0..got.len() {
                        assert!(
                            (got[i] - want[i]).abs() <= bounds[i],
                            "{} {rows}x{len} {dtype:?} beta={with_beta} [{}, {}]: got {}, f64 reference {}, bound {}",
                            norm.name(),
                            i / len,
                            i % len,
                            got[i],
                            want[i],
                            bounds[i]
                        );
                    }
                }
            }
        }
    }
}

fn special_values<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let inf = f32::INFINITY;
    let rows: [[f32; 4]; 4] = [
        [1.0, f32::NAN, 0.5, 2.0],
        [inf, 1.0, 0.0, -1.0],
        [3.0, 3.0, 3.0, 3.0],
        [1.0, -2.0, 0.5, 4.0],
    ];
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    let x =
        Tensor::<BatchInvariant<B>, 2>::from_data(TensorData::new(data.clone(), [4, 4]), device);
    let [gamma, beta] = affine::<BatchInvariant<B>>(4, FloatDType::F32, device);
    let (g, b) = (values(gamma.clone()), values(beta.clone()));
    let input: Vec<f64> = data.iter().map(|v| f64::from(*v)).collect();
    for norm in NORMS {
        let beta = norm.betas()[0].then(|| beta.clone());
        let got = values(norm.run(x.clone(), gamma.clone(), beta.clone()));
        let (want, bounds) = norm.reference(&input, 4, &g, beta.is_some().then_some(&b[..]), 23);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // (`g == w` first: a row holding an infinity has no finite bound.)
            let same = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= bounds[i];
            assert!(
                same,
                "{} special values [{}, {}]: got {g}, reference {w}",
                norm.name(),
                i / 4,
                i % 4
            );
        }
        match norm {
            // A constant row normalises to beta exactly: its mean is exact, so x - mean is 0.
            Norm::Layer => assert_eq!(got[8..12], b[..], "layer_norm: constant row"),
            // An infinity: 0 at the finite entries, NaN at the infinite one (`x / inf`).
            Norm::Rms => assert!(
                got[4].is_nan() && got[5..8].iter().all(|&v| v == 0.0),
                "rms_norm: the row holding +inf gave {:?}",
                &got[4..8]
            ),
        }
    }
}

/// Row `r` of the extreme-magnitude tests: ordinary rows between rows whose f32 sums
/// overflow (entries near 1e30, a spread of 1e27, entries up to 3.3e38, a constant 3e38 row,
/// one 3e38 entry among ordinary ones) and, with `epsilon` 0, rows whose squares underflow.
fn extreme_row(r: usize, len: usize, epsilon: f64) -> Vec<f32> {
    // Seeds that are multiples of 7 have no offset: entries in [-1, 1).
    let unit = random_values(len, 7 * (r as u64 + 1));
    let scaled = |k: f32, shift: f32| unit.iter().map(|v| v * k + shift).collect();
    match (r % 7, epsilon == 0.0) {
        (0, _) => unit,
        (1, _) => scaled(1e30, 0.0),
        (2, _) => scaled(1e27, 4e27),
        (3, _) => scaled(3.3e38, 0.0),
        // With epsilon 0 a constant row is 0 / 0 in the f64 reference: a tiny row instead.
        (4, false) => vec![3e38; len],
        (4, true) => scaled(1e-25, 0.0),
        (5, _) => {
            let mut row = unit;
            row[len / 2] = -3e38;
            row
        }
        (_, false) => scaled(1e-25, 0.0),
        (_, true) => scaled(1e-15, 3e-15),
    }
}

fn extreme_magnitudes<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let _serial = serial();
    type X<B> = BatchInvariant<B>;
    // f16 entries cannot take an f32 sum out of range.
    let dtypes = float_dtypes::<B>(device)
        .into_iter()
        .filter(|d| *d != FloatDType::F16);
    for dtype in dtypes {
        // (8200 rows of 33: cubes of 8 rows, ordinary rows sharing cubes with extreme ones.)
        for (rows, len, epsilon) in [(8200, 33, EPS), (21, 4096, EPS), (21, 1000, 0.0)] {
            let data: Vec<f32> = (0..rows)
                .flat_map(|r| extreme_row(r, len, epsilon))
                .collect();
            let x = tensor::<X<B>, 2>(data, [rows, len], dtype, device);
            let [gamma, beta] = affine::<X<B>>(len, dtype, device);
            let (input, g, b) = (
                values(x.clone()),
                values(gamma.clone()),
                values(beta.clone()),
            );
            for norm in NORMS {
                for &with_beta in norm.betas() {
                    let beta = with_beta.then(|| beta.clone());
                    let what = format!(
                        "{} {rows}x{len} {dtype:?} eps {epsilon} beta {with_beta}",
                        norm.name()
                    );
                    let got =
                        values(norm.run_with(x.clone(), gamma.clone(), beta.clone(), epsilon));
                    let b = with_beta.then_some(&b[..]);
                    let bits_out = mantissa_bits(dtype);
                    let (want, bounds) = norm.reference_with(&input, len, &g, b, epsilon, bits_out);
                    for i in 0..got.len() {
                        assert!(
                            got[i].is_finite() && (got[i] - want[i]).abs() <= bounds[i],
                            "{what} [{}, {}] (row kind {}): got {}, f64 reference {}, bound {}",
                            i / len,
                            i % len,
                            (i / len) % 7,
                            got[i],
                            want[i],
                            bounds[i]
                        );
                    }
                    if norm == Norm::Layer && epsilon != 0.0 && len == 33 {
                        // The constant 3e38 row, whose mean is exact at this length: no
                        // spread, so its beta (0 without one).
                        let constant = &got[4 * len..5 * len];
                        let expect = b.map_or(vec![0.0; len], <[f64]>::to_vec);
                        assert_eq!(constant, &expect[..], "{what}: the constant 3e38 row");
                    }
                    check_batches(x.clone(), 0, &what, |t| {
                        norm.run_with(t, gamma.clone(), beta.clone(), epsilon)
                    });
                }
            }
        }
    }
}

fn bad_input<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    type X<B> = BatchInvariant<B>;
    let f32 = FloatDType::F32;
    let x = tensor::<X<B>, 2>(random_values(12, 1), [3, 4], f32, device);
    let [gamma, beta] = affine::<X<B>>(4, f32, device);
    let [short, _] = affine::<X<B>>(5, f32, device);
    let (x2, b2) = (x.clone(), beta.clone());
    let msg = panic_message(move || module_layer_norm(x2, short, Some(b2), EPS));
    assert!(
        msg.contains("layer_norm")
            && msg.contains("gamma")
            && msg.contains("[5]")
            && msg.contains("[3, 4]"),
        "{msg}"
    );
    if float_dtypes::<B>(device).contains(&FloatDType::F16) {
        let (x2, g2) = (x.clone(), gamma.clone());
        let msg =
            panic_message(move || module_layer_norm(x2, g2, Some(beta.cast(FloatDType::F16)), EPS));
        assert!(
            msg.contains("layer_norm") && msg.contains("beta") && msg.contains("F16"),
            "{msg}"
        );
    }
    let (x2, g2) = (
        x.clone().into_primitive().tensor(),
        gamma.into_primitive().tensor(),
    );
    let msg = panic_message(move || X::<B>::layer_norm(x2, g2, None, -1.0));
    assert!(
        msg.contains("layer_norm") && msg.contains("epsilon"),
        "{msg}"
    );
    let [short, _] = affine::<X<B>>(5, f32, device);
    let x2 = x.clone();
    let msg = panic_message(move || rms_norm(x2, short, EPS));
    assert!(
        msg.contains("rms_norm")
            && msg.contains("gamma")
            && msg.contains("[5]")
            && msg.contains("[3, 4]"),
        "{msg}"
    );
    let [gamma, _] = affine::<X<B>>(4, f32, device);
    let (x2, g2) = (x.clone(), gamma.clone());
    let msg = panic_message(move || rms_norm(x2, g2, f64::NAN));
    assert!(msg.contains("rms_norm") && msg.contains("epsilon"), "{msg}");
    // An empty input has nothing to normalise: an empty result, no launch.
    let empty = Tensor::<X<B>, 2>::zeros([0, 4], device);
    assert_eq!(
        module_layer_norm(empty.clone(), gamma.clone(), None, EPS).dims(),
        [0, 4]
    );
    assert_eq!(rms_norm(empty, gamma, EPS).dims(), [0, 4]);
}

/// With parity on, the inference norms are `Autodiff`'s composites: the training forward's
/// bits. Whether the fused kernel happens to agree is printed, not asserted.
fn parity<B: KernelHost>(device: &B::Device) {
    let _mode = mode_exclusive();
    mode::enable();
    type Ad<B> = Autodiff<BatchInvariant<B>>;
    let (rows, len, f32) = (7, 1000, FloatDType::F32);
    let data = random_values(rows * len, 61);
    for norm in NORMS {
        let with_beta = norm.betas()[0];
        let inference = || {
            let x = tensor::<BatchInvariant<B>, 2>(data.clone(), [rows, len], f32, device);
            let [gamma, beta] = affine::<BatchInvariant<B>>(len, f32, device);
            bits(norm.run(x, gamma, with_beta.then_some(beta)))
        };
        let training = || {
            let x = tensor::<Ad<B>, 2>(data.clone(), [rows, len], f32, device).require_grad();
            let [gamma, beta] = affine::<Ad<B>>(len, f32, device).map(|t| t.require_grad());
            bits(norm.run(x, gamma, with_beta.then_some(beta)).inner())
        };
        let fused = {
            let _off = mode::parity::scoped(false);
            inference()
        };
        let _on = mode::parity::scoped(true);
        let with_parity = inference();
        assert!(
            with_parity == training(),
            "{}: the inference forward with parity on differs from the training forward",
            norm.name()
        );
        eprintln!(
            "{}: the fused kernel alone has parity on this runtime: {}",
            norm.name(),
            fused == with_parity
        );
    }
}

/// With the mode off, `rms_norm` and `layer_norm` are burn-nn's `RmsNorm` and `LayerNorm`,
/// bit for bit: their forwards, and under `Autodiff` their training forwards and gradients
/// (the composite differentiated op by op, as the modules train).
///
/// On a fused backend the bits of Burn's own composites depend on the fusion plan, and the
/// plan on which tensors are still alive (an input last used can be written in place, an
/// intermediate a backward step keeps must be stored): another plan is another autotuned
/// kernel. So each side builds its tensors afresh and keeps the same ones alive; the module
/// holds its parameters, the function's caller holds them too.
fn norms_are_the_modules_when_off<B: KernelHost>(device: &B::Device) {
    let _mode = mode_exclusive();
    type X<B> = BatchInvariant<B>;
    type Ad<B> = Autodiff<BatchInvariant<B>>;
    let shape = [3, 3, 1000];
    let len = shape[2];
    let data = random_values(shape.iter().product(), 71);
    let (scale, shift) = (random_values(len, 72), random_values(len, 73));
    let _off = mode::scoped(false);
    for dtype in float_dtypes::<B>(device) {
        for norm in NORMS {
            let what = format!("{}, mode off, {dtype:?}", norm.name());
            let infer = |through_module: bool| {
                let x = tensor::<X<B>, 3>(data.clone(), shape, dtype, device);
                let gamma = tensor::<X<B>, 1>(scale.clone(), [len], dtype, device);
                let beta = tensor::<X<B>, 1>(shift.clone(), [len], dtype, device);
                bits(function_or_module(norm, through_module, x, &gamma, &beta))
            };
            assert!(infer(false) == infer(true), "{what}: not the module's bits");

            // The training forward, then the gradients of x, gamma and beta (the latter for
            // layer_norm only) of the output's sum.
            let train = |through_module: bool| {
                let x = tensor::<Ad<B>, 3>(data.clone(), shape, dtype, device).require_grad();
                let gamma = tensor::<Ad<B>, 1>(scale.clone(), [len], dtype, device).require_grad();
                let beta = tensor::<Ad<B>, 1>(shift.clone(), [len], dtype, device).require_grad();
                let y = function_or_module(norm, through_module, x.clone(), &gamma, &beta);
                let forward = bits(y.clone().inner());
                let grads = y.sum().backward();
                let gradients = [
                    x.grad(&grads).map(bits),
                    gamma.grad(&grads).map(bits),
                    beta.grad(&grads).map(bits),
                ];
                (forward, gradients)
            };
            let what = format!("{what}, under Autodiff");
            let ((function, function_grads), (module, module_grads)) = (train(false), train(true));
            assert!(function == module, "{what}: not the module's forward bits");
            assert!(function_grads[0].is_some(), "{what}: no gradient for x");
            for (part, (f, m)) in ["dx", "dgamma", "dbeta"]
                .into_iter()
                .zip(function_grads.iter().zip(&module_grads))
            {
                assert!(f == m, "{what}: {part} is not the module's");
            }
        }
        // Past rank 8, `rms_norm` reshapes to rows: the module's shape and values (its bits
        // on a plain backend; a fused one may plan the reshape into other kernels).
        let x = tensor::<X<B>, 9>(data.clone(), [1, 1, 1, 1, 1, 1, 3, 3, len], dtype, device);
        let gamma = tensor::<X<B>, 1>(scale.clone(), [len], dtype, device);
        let beta = tensor::<X<B>, 1>(shift.clone(), [len], dtype, device);
        let function = function_or_module(Norm::Rms, false, x.clone(), &gamma, &beta);
        let module = function_or_module(Norm::Rms, true, x, &gamma, &beta);
        assert_eq!(function.dims(), module.dims(), "rms_norm, rank 9: shape");
        let u = 2f64.powi(-(mantissa_bits(dtype) as i32));
        for (i, (f, m)) in values(function).into_iter().zip(values(module)).enumerate() {
            assert!(
                (f - m).abs() <= 4.0 * u * m.abs().max(1.0),
                "rms_norm, rank 9, mode off, {dtype:?}: element {i} is {f}, the module's {m}"
            );
        }
    }
}

/// `norm` of `x` through our function, or through burn-nn's module holding `gamma` (and, for
/// layer_norm, `beta`).
fn function_or_module<Y: NormBackend, const D: usize>(
    norm: Norm,
    through_module: bool,
    x: Tensor<Y, D>,
    gamma: &Tensor<Y, 1>,
    beta: &Tensor<Y, 1>,
) -> Tensor<Y, D> {
    let (len, device) = (x.dims()[D - 1], x.device());
    match (norm, through_module) {
        (Norm::Layer, false) => layer_norm(x, gamma.clone(), Some(beta.clone()), EPS),
        (Norm::Rms, false) => rms_norm(x, gamma.clone(), EPS),
        (Norm::Layer, true) => {
            let mut module = LayerNormConfig::new(len).init(&device);
            module.gamma = Param::from_tensor(gamma.clone());
            module.beta = Some(Param::from_tensor(beta.clone()));
            module.forward(x)
        }
        (Norm::Rms, true) => {
            let mut module = RmsNormConfig::new(len).init(&device);
            module.gamma = Param::from_tensor(gamma.clone());
            module.forward(x)
        }
    }
}

fn modules_are_invariant<B: KernelHost>(device: &B::Device) {
    let _mode = mode_shared();
    let d = 1000;
    let batch = 257;
    let x = tensor::<BatchInvariant<B>, 2>(
        random_values(batch * d, 99),
        [batch, d],
        FloatDType::F32,
        device,
    );
    let ln_module = LayerNormConfig::new(d).init::<BatchInvariant<B>>(device);
    let rms_norm = RmsNormConfig::new(d).init::<BatchInvariant<B>>(device);
    let ln_full = ln_module.forward(x.clone());
    let rms_full = rms_norm.forward(x.clone());
    for m in [1, 2, 3, 7, 64, batch] {
        let ln = ln_module.forward(x.clone().narrow(0, 0, m));
        assert!(
            bits(ln) == bits(ln_full.clone().narrow(0, 0, m)),
            "LayerNorm, batch {m}"
        );
        let rms = rms_norm.forward(x.clone().narrow(0, 0, m));
        assert!(
            bits(rms) == bits(rms_full.clone().narrow(0, 0, m)),
            "RmsNorm, batch {m}"
        );
    }
    for r in [1, 100, batch - 1] {
        let ln = ln_module.forward(x.clone().narrow(0, r, 1));
        assert!(
            bits(ln) == bits(ln_full.clone().narrow(0, r, 1)),
            "LayerNorm, row {r} alone"
        );
    }
    // RmsNorm against an f64 computation (gamma 1 at init).
    let input = values(x);
    let got = values(rms_full);
    for r in [0, 128, batch - 1] {
        let row = &input[r * d..(r + 1) * d];
        let rms = (row.iter().map(|v| v * v).sum::<f64>() / d as f64 + 1e-5).sqrt();
        for c in [0, 1, d / 2, d - 1] {
            let want = row[c] / rms;
            let g = got[r * d + c];
            assert!(
                (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "RmsNorm[{r},{c}]: {g} vs {want}"
            );
        }
    }
}

fn poisoned<R: CubeRuntime>(device: &R::Device) {
    let _mode = mode_shared();
    for (rows, len, strided, with_beta) in [
        (13usize, 1000usize, false, true),
        (7, 9000, false, false),
        (131, 33, true, true),
        (9000, 5, false, true),
    ] {
        let data = random_values(rows * len, 77 + len as u64);
        let x: Tensor<Plain<R>, 2> = if strided {
            let t = transposed_values(&data, rows, len);
            Tensor::from_data(TensorData::new(t, [len, rows]), device).transpose()
        } else {
            Tensor::from_data(TensorData::new(data, [rows, len]), device)
        };
        let [gamma, beta] = affine::<Plain<R>>(len, FloatDType::F32, device);
        for (norm, kind) in [(Norm::Layer, NormKind::Layer), (Norm::Rms, NormKind::Rms)] {
            let beta = (with_beta && norm.betas()[0]).then(|| beta.clone());
            let input = x.clone().into_primitive().tensor();
            let client = input.client.clone();
            let out = nan_poison(&client, device, vec![rows, len], input.dtype);
            let storage = input.dtype.into();
            launch_norm(
                &client,
                input.binding(),
                gamma.clone().into_primitive().tensor().binding(),
                beta.clone().map(|b| b.into_primitive().tensor().binding()),
                out.clone().binding(),
                EPS as f32,
                kind,
                storage,
            )
            .expect("valid launch");
            let got = Tensor::<Plain<R>, 2>::from_primitive(TensorPrimitive::Float(out));
            assert!(
                values(got.clone()).iter().all(|v| v.is_finite()),
                "{} {rows}x{len} strided={strided}: unwritten outputs",
                norm.name()
            );
            type Bi<R> = BatchInvariant<Plain<R>>;
            let routed = norm.run(
                to_backend::<Plain<R>, Bi<R>, 2>(x.clone()),
                to_backend::<Plain<R>, Bi<R>, 1>(gamma.clone()),
                beta.map(to_backend::<Plain<R>, Bi<R>, 1>),
            );
            assert!(
                bits(got) == bits(routed),
                "{}: direct launch and decorator differ",
                norm.name()
            );
        }
    }
    // RMS norm has no beta: the launch refuses one rather than ignore it.
    let (rows, len) = (3, 8);
    let x: Tensor<Plain<R>, 2> = Tensor::from_data(
        TensorData::new(random_values(rows * len, 5), [rows, len]),
        device,
    );
    let [gamma, beta] = affine::<Plain<R>>(len, FloatDType::F32, device);
    let input = x.into_primitive().tensor();
    let client = input.client.clone();
    let out = nan_poison(&client, device, vec![rows, len], input.dtype);
    let storage = input.dtype.into();
    let refused = launch_norm(
        &client,
        input.binding(),
        gamma.into_primitive().tensor().binding(),
        Some(beta.into_primitive().tensor().binding()),
        out.binding(),
        EPS as f32,
        NormKind::Rms,
        storage,
    );
    assert_eq!(refused, Err(NormError::RmsWithBeta));
}

#[test]
fn norm_layer_norm_and_rms_norm_are_batch_invariant() {
    on_test_backend!(invariance);
}

#[test]
fn norm_layer_norm_and_rms_norm_match_f64_reference() {
    on_test_backend!(accuracy);
}

#[test]
fn norm_special_values() {
    on_test_backend!(special_values);
}

#[test]
fn norm_extreme_magnitudes_stay_finite_and_within_bounds() {
    on_test_backend!(extreme_magnitudes);
}

#[test]
fn norm_bad_input_names_the_op() {
    on_test_backend!(bad_input);
}

#[test]
fn norm_parity_with_the_training_forward() {
    on_test_backend!(parity);
}

#[test]
fn norm_functions_are_the_modules_when_off() {
    on_test_backend!(norms_are_the_modules_when_off);
}

#[test]
fn norm_modules_layer_norm_and_rms_norm_are_batch_invariant() {
    on_test_backend!(modules_are_invariant);
}

#[test]
fn kernel_norm_write_every_output() {
    on_test_runtime!(poisoned);
}
