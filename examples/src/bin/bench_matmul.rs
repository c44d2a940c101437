//! Matmul benchmark: BatchInvariant against Burn's default backend on the same tensors,
//! `[M, K] x [K, N]` for bf16, f16 and f32. Prints a table and writes JSON (`--json PATH`).
//!
//!     cargo run --release -p burn-batch-invariant-examples --bin bench_matmul -- --cuda --json m.json
//!
//! Options: `--quick` (fewer shapes, for a smoke run), `--tilings` (CUDA: time each
//! tensor-core tiling by direct launch and check it gives the router's bits),
//! `--tilings-only` (only that), `--sweep-f32` (the sweep in f32, decode tilings), `--dtype
//! bf16|f16|f32` (one dtype), `--m M` (one row count, in the table and the sweep),
//! `--candidate NAME:PM,PN,PK:SM,SN` (one more tiling for the sweep, repeatable),
//! `--pipe NAME:WM,WN:TM,TN:SK,ST[:CW[:tma|tma2]]` (a tiling of the pipelined kernel to
//! sweep in place of the routed ones, repeatable),
//! `--pipelined-only` (the sweep times only the pipelined kernel),
//! `--profile` (only our product, three calls per shape, untimed: what `ncu` profiles),
//! `--linear` (`x @ W + b` through `burn::tensor::module::linear` instead of the plain
//! product: Burn's composite against the bias in our epilogue). With `--json PATH`, also a
//! plot per dtype of TFLOP/s against M (`PATH` with `.bf16.svg` etc.). With
//! `BURN_BATCH_INVARIANT_IEEE_F32=1` the f32 rows time the IEEE f32 path instead of TF32.
//!
//! Timing as in `bench` (`burn_batch_invariant_examples::bench_ms`): device time per call
//! from a cold L2, host overhead hidden, the same for both columns.

use batch_invariant_kernels::matmul::launch::{launch_matmul_on, tensor_core_path, MatmulPath};
use batch_invariant_kernels::matmul::{
    Loader, PipelinedTiling, TensorCoreTiling, TileKind, MEDIUM, NARROW, NARROW_TF32,
    PIPELINED_TILINGS, SKINNY, SKINNY_TF32, SKINNY_TF32_WIDE, WIDE, WIDE_N112,
};
use burn::tensor::{backend::Backend, module, FloatDType, Tensor, TensorPrimitive};
use burn_batch_invariant::{BatchInvariant, KernelHost};
use burn_batch_invariant_examples::{
    bench_ms, matrix, on_backend, svg_plot, timing_mark, timing_since, Series,
};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use serde::Serialize;

#[derive(Serialize)]
struct Row {
    /// "matmul", or "linear" (with a bias of N) under `--linear`.
    op: &'static str,
    dtype: String,
    m: usize,
    k: usize,
    n: usize,
    burn_default_ms: f64,
    batch_invariant_ms: f64,
    /// batch_invariant_ms / burn_default_ms: below 1 means we are faster.
    ratio: f64,
    batch_invariant_tflops: f64,
    burn_default_tflops: f64,
    /// "device" or "wall clock" (fused backend, or a measurement whose blocker could not
    /// hide the host: see `device_ms`).
    timing: &'static str,
}

fn cast<X: Backend>(t: Tensor<X, 2>, dtype: FloatDType) -> Tensor<X, 2> {
    if dtype == FloatDType::F32 {
        t
    } else {
        t.cast(dtype)
    }
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn bench<B: KernelHost>(device: &B::Device) {
    println!("device: {}", B::name(device));
    let quick = flag("--quick");
    let linear = flag("--linear");
    let op = if linear { "linear" } else { "matmul" };
    let only_m: Option<usize> = std::env::args()
        .skip_while(|a| a != "--m")
        .nth(1)
        .map(|m| m.parse().expect("--m needs a row count"));
    let all_ms: &[usize] = if quick {
        &[1, 64, 1024]
    } else {
        &[1, 16, 64, 256, 1024, 4096]
    };
    let ms: Vec<usize> = all_ms
        .iter()
        .copied()
        .filter(|&m| only_m.is_none_or(|only| only == m))
        .collect();
    let kns: &[(usize, usize)] = if quick {
        &[(4096, 4096)]
    } else {
        &[(4096, 4096), (4096, 14336), (14336, 4096)]
    };
    let mut rows = Vec::new();
    println!(
        "{:<6} {:<5} {:>5} {:>6} {:>6} {:>10} {:>13} {:>6} {:>9} {:>9}",
        "op", "dtype", "M", "K", "N", "burn ms", "invariant ms", "ratio", "inv TF/s", "burn TF/s"
    );
    let args: Vec<String> = std::env::args().collect();
    let only_dtype = args.iter().position(|a| a == "--dtype").map(|i| {
        args.get(i + 1)
            .expect("--dtype needs bf16, f16 or f32")
            .as_str()
    });
    let dtypes: Vec<FloatDType> = if flag("--tilings-only") {
        Vec::new()
    } else {
        [FloatDType::BF16, FloatDType::F32, FloatDType::F16]
            .into_iter()
            .filter(|&d| only_dtype.is_none_or(|name| format!("{d:?}").to_lowercase() == name))
            .collect()
    };
    for &dtype in &dtypes {
        for &(k, n) in kns {
            let w = cast(
                matrix::<B>(k, n, 7, device) * (1.0 / (k as f64).sqrt()),
                dtype,
            );
            let x_full = cast(matrix::<B>(*ms.last().unwrap(), k, 8, device), dtype);
            let wi: Tensor<BatchInvariant<B>, 2> =
                cast(Tensor::from_data(w.to_data(), device), dtype);
            let xi_full: Tensor<BatchInvariant<B>, 2> =
                cast(Tensor::from_data(x_full.to_data(), device), dtype);
            let b2 = cast(matrix::<B>(1, n, 9, device), dtype);
            let bi: Tensor<BatchInvariant<B>, 1> =
                cast(Tensor::from_data(b2.to_data(), device), dtype).reshape([n]);
            let b = b2.reshape([n]);
            for &m in &ms {
                eprintln!("{op} {dtype:?} M={m} K={k} N={n}");
                let x = x_full.clone().narrow(0, 0, m);
                let xi = xi_full.clone().narrow(0, 0, m);
                if flag("--profile") {
                    // Our product alone, three calls and nothing else named like a matmul:
                    // a clean target for a profiler (`docs/performance.md`, what limits the
                    // matmul), the second call warm.
                    for _ in 0..3 {
                        let _ = xi.clone().matmul(wi.clone());
                    }
                    BatchInvariant::<B>::sync(device).expect("sync");
                    continue;
                }
                let mark = timing_mark();
                let (burn_default_ms, batch_invariant_ms) = if linear {
                    (
                        bench_ms::<B, _>(device, || {
                            module::linear(x.clone(), w.clone(), Some(b.clone()))
                        }),
                        bench_ms::<BatchInvariant<B>, _>(device, || {
                            module::linear(xi.clone(), wi.clone(), Some(bi.clone()))
                        }),
                    )
                } else {
                    (
                        bench_ms::<B, _>(device, || x.clone().matmul(w.clone())),
                        bench_ms::<BatchInvariant<B>, _>(device, || xi.clone().matmul(wi.clone())),
                    )
                };
                let flops = 2.0 * (m * k * n) as f64;
                let row = Row {
                    op,
                    dtype: format!("{dtype:?}").to_lowercase(),
                    m,
                    k,
                    n,
                    burn_default_ms,
                    batch_invariant_ms,
                    ratio: batch_invariant_ms / burn_default_ms,
                    batch_invariant_tflops: flops / (batch_invariant_ms * 1e-3) / 1e12,
                    burn_default_tflops: flops / (burn_default_ms * 1e-3) / 1e12,
                    timing: timing_since(mark),
                };
                println!(
                    "{:<6} {:<5} {:>5} {:>6} {:>6} {:>10.4} {:>13.4} {:>6.2} {:>9.1} {:>9.1}",
                    op,
                    row.dtype,
                    m,
                    k,
                    n,
                    burn_default_ms,
                    batch_invariant_ms,
                    row.ratio,
                    row.batch_invariant_tflops,
                    row.burn_default_tflops
                );
                rows.push(row);
            }
        }
    }
    let tilings = if (flag("--tilings") || flag("--tilings-only"))
        && burn_batch_invariant_examples::use_cuda()
    {
        tiling_sweep(&Default::default(), only_m)
    } else {
        Vec::new()
    };
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--json") {
        let path = args.get(i + 1).expect("--json needs a path");
        let json =
            serde_json::json!({ "device": B::name(device), "rows": rows, "tilings": tilings });
        std::fs::write(path, serde_json::to_string_pretty(&json).unwrap()).expect("write json");
        println!("wrote {path}");
        for &dtype in &dtypes {
            let name = format!("{dtype:?}").to_lowercase();
            let svg_path = std::path::Path::new(path).with_extension(format!("{name}.svg"));
            let title = format!("{op} [M, K] x [K, N], {name}, {}", B::name(device));
            let plot = svg_plot(
                &title,
                "M (rows)",
                "TFLOP/s",
                &throughput_series(&rows, &name),
            );
            std::fs::write(&svg_path, plot).expect("write svg");
            println!("wrote {}", svg_path.display());
        }
    }
}

/// TFLOP/s against M for Burn's default and BatchInvariant, one line per `K x N`, for one
/// dtype's rows.
fn throughput_series(rows: &[Row], dtype: &str) -> Vec<Series> {
    let mut series = Vec::new();
    let mut kns: Vec<(usize, usize)> = rows
        .iter()
        .filter(|r| r.dtype == dtype)
        .map(|r| (r.k, r.n))
        .collect();
    kns.dedup();
    for (k, n) in kns {
        let of = |pick: fn(&Row) -> f64| -> Vec<(f64, f64)> {
            rows.iter()
                .filter(|r| r.dtype == dtype && (r.k, r.n) == (k, n))
                .map(|r| (r.m as f64, pick(r)))
                .collect()
        };
        series.push(Series {
            name: format!("Burn {k}x{n}"),
            points: of(|r| r.burn_default_tflops),
        });
        series.push(Series {
            name: format!("invariant {k}x{n}"),
            points: of(|r| r.batch_invariant_tflops),
        });
    }
    series
}

#[derive(Serialize)]
struct TilingRow {
    tiling: String,
    /// Loader and instruction form.
    variant: String,
    m: usize,
    k: usize,
    n: usize,
    ms: f64,
    same_bits_as_router: bool,
    /// As in the main table.
    timing: &'static str,
}

/// Candidate tilings of the same instruction with their loaders and instruction forms, timed
/// by direct launch (bf16, or f32 with `--sweep-f32`). Used to pick the router's tilings;
/// `same_bits_as_router` must be true for every one of them.
fn tiling_sweep(device: &burn::backend::cuda::CudaDevice, only_m: Option<usize>) -> Vec<TilingRow> {
    type P = burn_batch_invariant::CudaBase;
    let tiling = |name, partition, stage| TensorCoreTiling {
        name,
        partition,
        stage,
        kind: TileKind::Wmma,
    };
    // A TMA box is at most 256 elements a side, so 16 K tiles per stage is the deepest.
    // Each candidate with the rows it is meant for and the loader/instruction forms to try.
    // The router's tilings were picked from a wider field (231 candidates); this is the
    // neighbourhood of the winners (256x256 per cube, 3.5-51 ms on an H100, is left out).
    use Loader::{SpecializedTma as Spec, Tma};
    use TileKind::{MmaSync, Wmma};
    const DECODE: &[usize] = &[1, 16, 64];
    const MID: &[usize] = &[256];
    const LARGE: &[usize] = &[1024, 4096];
    const ALL3: &[(Loader, TileKind)] = &[(Spec, Wmma), (Spec, MmaSync), (Tma, MmaSync)];
    const SPEC_MMA: &[(Loader, TileKind)] = &[(Spec, MmaSync)];
    type Candidate = (
        TensorCoreTiling,
        &'static [usize],
        &'static [(Loader, TileKind)],
    );
    // f32 (`--sweep-f32`): decode tilings in the one TF32 form. `NARROW_TF32` and
    // `SKINNY_TF32` were picked from half and all of the bf16 stage depth, narrower and
    // wider cubes; these are the winners and runners-up.
    const F32_FORMS: &[(Loader, TileKind)] = &[(Spec, MmaSync), (Tma, MmaSync)];
    // At M = 64, 15 64-row cubes were swept on an H200; the last three are the runners-up
    // (the two-warp 64x32 cube is the one `SKINNY_TF32`'s docs compare it with).
    let f32_candidates: [Candidate; 9] = [
        (NARROW_TF32, DECODE, F32_FORMS),
        (NARROW, &[1, 16], F32_FORMS),
        (tiling("16x128k16", (1, 1, 16), (1, 8)), &[1, 16], F32_FORMS),
        (SKINNY_TF32, &[64], F32_FORMS),
        (SKINNY_TF32_WIDE, &[64], F32_FORMS),
        (SKINNY, &[64], F32_FORMS),
        (tiling("32x32k16", (2, 1, 16), (1, 2)), &[64], F32_FORMS),
        (tiling("64x32w2", (4, 1, 16), (1, 2)), &[64], F32_FORMS),
        (tiling("64x64w4", (2, 2, 16), (2, 2)), &[64], F32_FORMS),
    ];
    let bf16_candidates: [Candidate; 14] = [
        (NARROW, DECODE, ALL3),
        (SKINNY, DECODE, ALL3),
        (tiling("16x128k16", (1, 1, 16), (1, 8)), DECODE, ALL3),
        (tiling("64x64k16", (4, 1, 16), (1, 4)), &[64], ALL3),
        (MEDIUM, MID, SPEC_MMA),
        (tiling("256x64k4", (4, 2, 4), (4, 1)), MID, SPEC_MMA),
        (tiling("128x128k4", (4, 4, 4), (2, 2)), MID, SPEC_MMA),
        (tiling("64x64k8", (2, 2, 8), (2, 2)), MID, SPEC_MMA),
        (WIDE, LARGE, SPEC_MMA),
        (tiling("256x128k2", (4, 4, 2), (4, 2)), LARGE, SPEC_MMA),
        (tiling("256x128k8", (4, 4, 8), (4, 2)), LARGE, SPEC_MMA),
        (tiling("128x256k4", (4, 4, 4), (2, 4)), LARGE, SPEC_MMA),
        (tiling("256x128w16", (2, 4, 4), (8, 2)), LARGE, SPEC_MMA),
        // Wave shaping: 1024 x 14336 outputs are 448 cubes of 256x128 (3.39 waves on 132
        // multiprocessors) but 512 of 256x112 (3.88). On an H100 128x224, the other
        // 512-cube shape, lost everywhere (0.429 ms at 1024 x 4096 x 14336).
        (WIDE_N112, LARGE, SPEC_MMA),
    ];
    let (dtype, listed, forms): (FloatDType, &[Candidate], _) = if flag("--sweep-f32") {
        (FloatDType::F32, &f32_candidates, F32_FORMS)
    } else {
        (FloatDType::BF16, &bf16_candidates, ALL3)
    };
    // `--candidate NAME:PM,PN,PK:SM,SN` (repeatable) adds a tiling to try without a rebuild,
    // at `--m` or at every row count, in the forms of the sweep's dtype.
    let rows_for_extra: &'static [usize] = match only_m {
        Some(m) => Vec::leak(vec![m]),
        None => &[1, 16, 64, 256, 1024, 4096],
    };
    let args: Vec<String> = std::env::args().collect();
    let extra = args
        .windows(2)
        .filter(|w| w[0] == "--candidate")
        .map(|w| (parse_candidate(&w[1]), rows_for_extra, forms));
    let candidates: Vec<Candidate> = listed.iter().copied().chain(extra).collect();
    // Our pipelined kernel: its router tilings and `--pipe NAME:WM,WN:TM,TN:SK,ST`
    // (repeatable) candidates, at every row count of the sweep.
    let pipelined_only = flag("--pipelined-only");
    // (Given `--pipe`, only those.)
    let extra_pipelined: Vec<PipelinedTiling> = args
        .windows(2)
        .filter(|w| w[0] == "--pipe")
        .map(|w| parse_pipelined(&w[1]))
        .collect();
    let pipelined: Vec<PipelinedTiling> = if extra_pipelined.is_empty() {
        PIPELINED_TILINGS.to_vec()
    } else {
        extra_pipelined
    };
    let mut out = Vec::new();
    println!("\ntensor-core tilings, {dtype:?}, direct launch");
    for &(k, n) in &[(4096usize, 4096usize), (4096, 14336), (14336, 4096)] {
        let w = cast(matrix::<P>(k, n, 7, device), dtype);
        for &m in &[1usize, 16, 64, 256, 1024, 4096] {
            if m == 4096 && k != 4096
                || only_m.is_some_and(|only| only != m)
                || (!candidates.iter().any(|c| c.1.contains(&m)) && only_m.is_none())
            {
                continue;
            }
            eprintln!("tilings M={m} K={k} N={n}");
            let x = cast(matrix::<P>(m, k, 8, device), dtype);
            let reference = {
                // `from_data` stores in the backend's default float type: cast back (exact).
                let xi: Tensor<BatchInvariant<P>, 2> = cast(
                    Tensor::<BatchInvariant<P>, 2>::from_data(x.to_data(), device),
                    dtype,
                );
                let wi: Tensor<BatchInvariant<P>, 2> = cast(
                    Tensor::<BatchInvariant<P>, 2>::from_data(w.to_data(), device),
                    dtype,
                );
                xi.matmul(wi).into_data()
            };
            // cubek's tilings (unless `--pipelined-only`), then our pipelined kernel's.
            let cubek_runs = candidates
                .iter()
                .filter(|(_, for_ms, _)| !pipelined_only && for_ms.contains(&m))
                .flat_map(|&(tiling, _, variants)| {
                    variants
                        .iter()
                        .map(move |&(loader, kind)| MatmulPath::TensorCore {
                            tiling: TensorCoreTiling { kind, ..tiling },
                            loader,
                        })
                });
            let pipelined_runs = pipelined
                .iter()
                .filter(|_| dtype != FloatDType::F32)
                .map(|&tiling| MatmulPath::Pipelined { tiling });
            // With `--pipelined-only`, cubek's path for this M (the router's where it does not
            // take the pipelined kernel), for scale.
            let cubek_routed = pipelined_only
                .then(|| {
                    let lhs = x.clone().into_primitive().tensor();
                    let rhs = w.clone().into_primitive().tensor();
                    tensor_core_path(
                        &lhs.client,
                        &lhs.clone().binding(),
                        &rhs.binding(),
                        lhs.dtype.into(),
                    )
                })
                .flatten();
            let runs: Vec<MatmulPath> = cubek_runs
                .chain(cubek_routed)
                .chain(pipelined_runs)
                .collect();
            for path in runs {
                let launch = || {
                    let lhs = x.clone().into_primitive().tensor();
                    let rhs = w.clone().into_primitive().tensor();
                    let client = lhs.client.clone();
                    let out = empty_device_contiguous_dtype(
                        client.clone(),
                        device.clone(),
                        [m, n].into(),
                        lhs.dtype,
                    );
                    let dtype = lhs.dtype.into();
                    launch_matmul_on(
                        &client,
                        lhs.binding(),
                        rhs.binding(),
                        None,
                        out.clone().binding(),
                        dtype,
                        path,
                    )
                    .map(|_| Tensor::<P, 2>::from_primitive(TensorPrimitive::Float(out)))
                };
                let (name, variant) = match path {
                    MatmulPath::TensorCore { tiling, loader } => {
                        (tiling.name, format!("{loader:?}/{:?}", tiling.kind))
                    }
                    MatmulPath::Pipelined { tiling } => (
                        tiling.name,
                        format!(
                            "pipelined/k{}x{}+{}{}",
                            tiling.stage_k,
                            tiling.stages,
                            tiling.copy_warps,
                            match (tiling.lhs_tma, tiling.rhs_tma) {
                                (true, _) => "/tma2",
                                (false, true) => "/tma",
                                _ => "",
                            }
                        ),
                    ),
                    MatmulPath::Portable { tiling } => (tiling.name, "portable".into()),
                };
                let same = match launch() {
                    Ok(t) => t.into_data().as_bytes() == reference.as_bytes(),
                    Err(e) => {
                        println!(
                            "{name:<14} {variant:<18} M={m:<5} K={k:<6} N={n:<6} refused: {e}"
                        );
                        continue;
                    }
                };
                let mark = timing_mark();
                let ms = bench_ms::<P, _>(device, launch);
                let tflops = 2.0 * (m * k * n) as f64 / (ms * 1e-3) / 1e12;
                println!(
                    "{name:<14} {variant:<18} M={m:<5} K={k:<6} N={n:<6} {ms:>9.4} ms {tflops:>6.1} TF/s  same bits: {same}"
                );
                out.push(TilingRow {
                    tiling: name.into(),
                    variant,
                    m,
                    k,
                    n,
                    ms,
                    same_bits_as_router: same,
                    timing: timing_since(mark),
                });
            }
        }
    }
    out
}

/// A pipelined tiling from `NAME:WM,WN:TM,TN:SK,ST[:CW[:tma|tma2]]` (warps along M and N,
/// `mma` tiles per warp along M and N, K entries per stage, stages, warps that only copy, and
/// `tma` for the rhs by TMA, `tma2` for both operands), as the sweep's `--pipe` takes it.
fn parse_pipelined(spec: &str) -> PipelinedTiling {
    let usage =
        || -> ! { panic!("--pipe wants NAME:WM,WN:TM,TN:SK,ST[:CW[:tma|tma2]], got {spec:?}") };
    let numbers = |part: &str| -> Vec<usize> {
        part.split(',')
            .map(|n| n.trim().parse().unwrap_or_else(|_| usage()))
            .collect()
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (name, warps, tiles, stage, copy_warps, tma) = match parts[..] {
        [name, warps, tiles, stage] => (name, warps, tiles, stage, "0", ""),
        [name, warps, tiles, stage, cw] => (name, warps, tiles, stage, cw, ""),
        [name, warps, tiles, stage, cw, tma @ ("tma" | "tma2")] => {
            (name, warps, tiles, stage, cw, tma)
        }
        _ => usage(),
    };
    let copy_warps = copy_warps.trim().parse().unwrap_or_else(|_| usage());
    let (&[wm, wn], &[tm, tn], &[sk, st]) = (
        &numbers(warps)[..],
        &numbers(tiles)[..],
        &numbers(stage)[..],
    ) else {
        usage()
    };
    let tiling = PipelinedTiling {
        name: String::leak(name.to_string()),
        warps: (wm, wn),
        warp_tiles: (tm, tn),
        stage_k: sk,
        stages: st,
        copy_warps,
        rhs_tma: !tma.is_empty(),
        lhs_tma: tma == "tma2",
    };
    assert!(tiling.is_valid(), "--pipe {spec}: not a valid tiling");
    tiling
}

/// A tiling from `NAME:PM,PN,PK:SM,SN` (partition in 16x16 blocks and K steps, warps along M
/// and N), as the sweep's `--candidate` takes it.
fn parse_candidate(spec: &str) -> TensorCoreTiling {
    fn usage(spec: &str) -> ! {
        panic!("--candidate wants NAME:PM,PN,PK:SM,SN, got {spec:?}")
    }
    let numbers = |part: &str| -> Vec<u32> {
        part.split(',')
            .map(|n| n.trim().parse().unwrap_or_else(|_| usage(spec)))
            .collect()
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let [name, partition, stage] = parts[..] else {
        usage(spec)
    };
    let (&[pm, pn, pk], &[sm, sn]) = (&numbers(partition)[..], &numbers(stage)[..]) else {
        usage(spec)
    };
    TensorCoreTiling {
        name: String::leak(name.to_string()),
        partition: (pm, pn, pk),
        stage: (sm, sn),
        kind: TileKind::MmaSync,
    }
}

fn main() {
    on_backend!(bench);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(dtype: &str, m: usize, k: usize, n: usize, tflops: f64) -> Row {
        Row {
            op: "matmul",
            dtype: dtype.into(),
            m,
            k,
            n,
            burn_default_ms: 1.0,
            batch_invariant_ms: 0.5,
            ratio: 0.5,
            batch_invariant_tflops: 2.0 * tflops,
            burn_default_tflops: tflops,
            timing: "device",
        }
    }

    #[test]
    fn throughput_series_has_one_line_per_shape_and_backend() {
        let rows = [
            row("bf16", 1, 64, 32, 1.0),
            row("bf16", 16, 64, 32, 2.0),
            row("bf16", 1, 32, 64, 3.0),
            row("f32", 1, 64, 32, 4.0),
        ];
        let series = throughput_series(&rows, "bf16");
        let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Burn 64x32",
                "invariant 64x32",
                "Burn 32x64",
                "invariant 32x64"
            ]
        );
        assert_eq!(series[0].points, [(1.0, 1.0), (16.0, 2.0)]);
        assert_eq!(series[1].points, [(1.0, 2.0), (16.0, 4.0)]);
        assert_eq!(series[3].points, [(1.0, 6.0)]);
        let svg = svg_plot("t", "M (rows)", "TFLOP/s", &series);
        assert!(svg.contains("invariant 32x64") && svg.ends_with("</svg>\n"));
    }
}
