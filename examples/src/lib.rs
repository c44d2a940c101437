//! Shared pieces of the examples: runtime selection, deterministic data, a small SVG plot,
//! the transformer of `ab_generate`, the Llama-style model and its policy-gradient step.

pub mod llama;
pub mod policy;
pub mod transformer;

use burn::tensor::{backend::Backend, Tensor, TensorData};

/// `cuda` when `--cuda` is passed or `BI_BACKEND=cuda`, else `wgpu` (lavapipe without a GPU).
pub fn use_cuda() -> bool {
    std::env::args().any(|a| a == "--cuda")
        || std::env::var("BI_BACKEND")
            .map(|v| v == "cuda")
            .unwrap_or(false)
}

/// `--fused`: wrap Burn's fused backend (`Fusion<CubeBackend>`, what `burn::backend::Cuda`
/// and `Wgpu` are with Burn's default features) instead of the plain `CubeBackend`.
pub fn use_fused() -> bool {
    std::env::args().any(|a| a == "--fused")
}

/// Runs `$body::<B>(&device)` on the chosen runtime's plain CubeBackend, or on its fused
/// form with `--fused`.
#[macro_export]
macro_rules! on_backend {
    ($body:ident) => {
        match ($crate::use_cuda(), $crate::use_fused()) {
            (true, false) => $body::<burn_batch_invariant::CudaBase>(&Default::default()),
            (true, true) => $body::<burn_batch_invariant::CudaFused>(&Default::default()),
            (false, false) => $body::<burn_batch_invariant::WgpuBase>(&Default::default()),
            (false, true) => $body::<burn_batch_invariant::WgpuFused>(&Default::default()),
        }
    };
}

/// The value after `name` on the command line, parsed, or `default` when `name` is absent.
///
/// # Panics
///
/// When `name` is given without a value that parses.
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} needs a value")),
        None => default,
    }
}

/// Deterministic values in [-1, 1).
pub fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Deterministic weights for the example models: the same values on every backend, in
/// `dtype`, each matrix from the next seed.
pub(crate) struct Init<'a, B: Backend> {
    pub seed: u64,
    pub dtype: burn::tensor::FloatDType,
    pub device: &'a B::Device,
}

impl<B: Backend> Init<'_, B> {
    /// `rows x cols` values in `[-scale, scale)`.
    pub fn matrix(
        &mut self,
        rows: usize,
        cols: usize,
        scale: f32,
    ) -> burn::module::Param<Tensor<B, 2>> {
        self.seed += 1;
        let data: Vec<f32> = values(rows * cols, self.seed)
            .into_iter()
            .map(|v| v * scale)
            .collect();
        let t = Tensor::<B, 2>::from_data(TensorData::new(data, [rows, cols]), self.device);
        burn::module::Param::from_tensor(t.cast(self.dtype))
    }

    /// A bias-free `Linear` with weights scaled by `1 / sqrt(d_in)`.
    pub fn linear(&mut self, d_in: usize, d_out: usize) -> burn::nn::Linear<B> {
        let mut linear = burn::nn::LinearConfig::new(d_in, d_out)
            .with_bias(false)
            .init(self.device);
        linear.weight = self.matrix(d_in, d_out, 1.0 / (d_in as f32).sqrt());
        linear
    }
}

pub fn matrix<B: Backend>(rows: usize, cols: usize, seed: u64, device: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new(values(rows * cols, seed), [rows, cols]),
        device,
    )
}

/// Median wall-clock milliseconds per call of `f` over `samples` samples of
/// `sync; calls x f; sync`. Warm up first: Burn autotunes a shape on its first calls.
pub fn median_ms<X: Backend, T>(
    device: &X::Device,
    calls: usize,
    samples: usize,
    mut f: impl FnMut() -> T,
) -> f64 {
    let mut times: Vec<f64> = (0..samples)
        .map(|_| {
            X::sync(device).unwrap();
            let start = std::time::Instant::now();
            for _ in 0..calls {
                let _ = f();
            }
            X::sync(device).unwrap();
            start.elapsed().as_secs_f64() * 1e3 / calls as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// How many [`device_ms`] measurements so far fell back to wall clock.
static WALL_CLOCK_FALLBACKS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// A mark to pass to [`timing_since`] after the measurements of one benchmark row.
pub fn timing_mark() -> usize {
    WALL_CLOCK_FALLBACKS.load(std::sync::atomic::Ordering::Relaxed)
}

/// What the measurements since `mark` were, for a row's JSON: `"device"` where every one of
/// them was device time, `"wall clock"` where one fell back or the backend is fused.
pub fn timing_since(mark: usize) -> &'static str {
    if use_fused() || timing_mark() != mark {
        "wall clock"
    } else {
        "device"
    }
}

/// Milliseconds per call of `f` as the benchmarks report them: [`device_ms`] on a plain
/// backend, wall clock ([`median_ms`]) on a fused one (see `device_ms` for why).
/// Includes the warm-up, which also absorbs Burn's autotuning of a new shape.
pub fn bench_ms<X: Backend, T>(device: &X::Device, mut f: impl FnMut() -> T) -> f64 {
    let first = median_ms::<X, _>(device, 1, 1, &mut f);
    let once = median_ms::<X, _>(device, 1, 3, &mut f).min(first);
    if use_fused() {
        // A shape slower than 20 ms per call (Burn's fused softmax has taken 0.3-0.7 s)
        // gets fewer calls, so that a sweep ends.
        let (calls, samples) = if once > 20.0 { (1, 3) } else { (20, 15) };
        median_ms::<X, _>(device, calls, samples, f)
    } else {
        device_ms::<X, _>(device, once, Flush::Dirty, f)
    }
}

/// How [`device_ms`] evicts the timed call's data from L2 between two calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// Write 64 MiB, as triton's `do_bench` (and so `scripts/reference_torch.py`) does. The
    /// L2 is then full of dirty lines, which the timed call pays to write back as it evicts
    /// them (Burn's mean over 16384 x 4096 f32 on an H100: 0.102 ms against 0.094 with
    /// [`Flush::Clean`]).
    Dirty,
    /// Read 64 MiB: the L2 holds clean lines of another tensor, so the timed call pays only
    /// for its own traffic.
    Clean,
}

/// f32 elements written (read, for [`Flush::Clean`]) between two timed calls: 64 MiB, more
/// than the H100's 50 MiB of L2, so that every call starts from a cold cache as in triton's
/// `do_bench`, which the torch reference timings (`scripts/reference_torch.py`) use.
const FLUSH_LEN: usize = 16 << 20;
/// f32 elements of the tensor one blocker pass rewrites: 128 MiB (about 0.09 ms on an H100;
/// wgpu refuses buffers of 256 MiB).
const BLOCKER_LEN: usize = 32 << 20;
/// Most blocker passes (about 12 ms on an H100) before `device_ms` gives up.
const MAX_BLOCKER_PASSES: usize = 128;

/// Device milliseconds per call of `f` (`wall_ms`: a wall-clock estimate of one call).
///
/// Why not wall clock: at small shapes a Burn call costs more host time (dispatch, launch
/// arguments) than device time, so a wall-clock loop measures the host, while the torch
/// reference timings time device work with CUDA events. cubecl 0.10 profiles CUDA with the system
/// clock, so this uses a blocker instead: a chain of passes over a large tensor is queued
/// first, and the timed calls are queued behind it while it runs. The device then runs them
/// back to back, and `(T(blocker, n x (flush, f)) - T(blocker, n x flush)) / n` is their
/// device time (launch gaps on the device included, host overhead not). The blocker is
/// doubled until queueing the calls takes less than 80% of its own time; where it cannot
/// get there, the result is wall clock.
///
/// Only for plain backends: a fused backend may defer or drop the blocker's unread writes.
pub fn device_ms<X: Backend, T>(
    device: &X::Device,
    wall_ms: f64,
    flush: Flush,
    mut f: impl FnMut() -> T,
) -> f64 {
    use std::time::Instant;
    // About 3 ms of timed work per sample, within 2..=50 calls.
    let calls = ((3.0 / wall_ms.max(1e-3)) as usize).clamp(2, 50);
    let blocker = Tensor::<X, 1>::zeros([BLOCKER_LEN], device);
    let flush_source = (flush == Flush::Clean).then(|| Tensor::<X, 1>::ones([FLUSH_LEN], device));
    let mut passes = 8;
    // (seconds until everything was queued, seconds until the device finished)
    let mut run = |passes: usize, calls: usize, timed: bool| {
        X::sync(device).unwrap();
        let start = Instant::now();
        let mut b = blocker.clone();
        for _ in 0..passes {
            b = b + 1.0;
        }
        for _ in 0..calls {
            let _flush = match &flush_source {
                Some(source) => source.clone().sum(),
                None => Tensor::<X, 1>::zeros([FLUSH_LEN], device),
            };
            if timed {
                let _ = f();
            }
        }
        let queued = start.elapsed().as_secs_f64();
        drop(b);
        X::sync(device).unwrap();
        (queued, start.elapsed().as_secs_f64())
    };
    let mut samples = Vec::new();
    while samples.len() < 9 {
        let (_, blocker_s) = run(passes, 0, false);
        let (_, base_s) = run(passes, calls, false);
        let (queued_s, timed_s) = run(passes, calls, true);
        if queued_s > 0.8 * blocker_s {
            if passes >= MAX_BLOCKER_PASSES {
                // The device does not run ahead of the host (lavapipe runs on the host's
                // cores): only wall clock means anything there.
                eprintln!("device_ms: the blocker does not hide queueing; wall clock instead");
                WALL_CLOCK_FALLBACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return median_ms::<X, _>(device, calls, 9, f);
            }
            passes *= 2;
            samples.clear();
            continue;
        }
        samples.push((timed_s - base_s) * 1e3 / calls as f64);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2].max(0.0)
}

/// Largest absolute difference between two tensors' values.
pub fn max_abs_diff<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
    let a = a.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    let b = b.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
        .fold(0.0, f64::max)
}

/// One line of a plot: a name and its (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A small SVG line plot (log2 x axis, linear y axis from 0), written next to a benchmark's
/// JSON so that the comparison the user wants (throughput against batch size, default vs
/// invariant) can be looked at rather than read.
pub fn svg_plot(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    const W: f64 = 640.0;
    const H: f64 = 400.0;
    const L: f64 = 70.0; // left margin
    const B: f64 = 50.0; // bottom margin
    const T: f64 = 40.0; // top margin
    const R: f64 = 170.0; // right margin (legend)
    const COLORS: [&str; 6] = [
        "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let all = || series.iter().flat_map(|s| s.points.iter().copied());
    let (x_min, x_max) = all().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| (a.min(x), b.max(x)));
    let y_max = all()
        .fold(0.0f64, |m, (_, y)| m.max(y))
        .max(f64::MIN_POSITIVE)
        * 1.1;
    let (lx0, lx1) = (x_min.max(1e-9).log2(), x_max.max(1e-9).log2());
    let px = |x: f64| {
        let span = (lx1 - lx0).max(1e-9);
        L + (x.max(1e-9).log2() - lx0) / span * (W - L - R)
    };
    let py = |y: f64| H - B - y / y_max * (H - B - T);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" font-size=\"15\">{}</text>\n\
         <line x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n\
         <text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">{}</text>\n",
        L,
        escape(title),
        H - B,
        W - R,
        H - B,
        H - B,
        (L + W - R) / 2.0,
        H - 12.0,
        escape(x_label),
        (H - B + T) / 2.0,
        (H - B + T) / 2.0,
        escape(y_label),
    );
    for i in 0..=4 {
        let y = y_max * f64::from(i) / 4.0;
        svg += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n<line x1=\"{L}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n",
            L - 6.0,
            py(y) + 4.0,
            short(y),
            py(y),
            W - R,
            py(y)
        );
    }
    let mut xs: Vec<f64> = all().map(|(x, _)| x).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for x in xs {
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            px(x),
            H - B + 16.0,
            short(x)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            path.join(" ")
        );
        for &(x, y) in &s.points {
            svg += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>\n",
                px(x),
                py(y)
            );
        }
        let ly = T + 18.0 * i as f64;
        svg += &format!(
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/>\n<text x=\"{}\" y=\"{}\">{}</text>\n",
            W - R + 10.0,
            W - R + 30.0,
            W - R + 36.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    svg + "</svg>\n"
}

fn short(v: f64) -> String {
    if v == 0.0 || (v.abs() >= 0.01 && v.abs() < 10000.0) {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.1e}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `[i/n] what` on stderr: progress for sweeps that take minutes.
pub fn progress(i: usize, n: usize, what: &str) {
    eprintln!("[{i}/{n}] {what}");
}
