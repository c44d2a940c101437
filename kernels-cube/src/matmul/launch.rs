//! Host side of the matmul: shape checks, the choice of path, launch metadata.

use core::fmt;

use cubecl::prelude::*;
use cubecl::std::tensor::{copy_into, TensorHandle};
use cubecl::std::FastDivmod;

use super::kernel::{
    matmul_portable_kernel, matmul_portable_rows_kernel, PortableLayout, PortableTiling, CUBE_SIDE,
    PORTABLE_NARROW, PORTABLE_ROWS, PORTABLE_ROWS_32, PORTABLE_WIDE, ROWS_COLS, ROWS_WARPS,
};
use super::pipelined::{self, matmul_pipelined_kernel, PipelinedTiling};
use super::tensor_core::{self, tiling_for, Loader, TensorCoreTiling};
use super::F32Precision;
use crate::layout::{contiguous_strides, max_offset};

/// Which kernel computed a matmul. Recorded in [`MatmulLaunch`] and in the tracing span.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulPath {
    /// cubek's tiled matmul on tensor cores with a forced blueprint.
    TensorCore {
        tiling: TensorCoreTiling,
        loader: Loader,
    },
    /// [`super::pipelined::matmul_pipelined_kernel()`]: our own `mma.sync` kernel for f16
    /// and bf16, with the tensor-core path's bits. The router takes it for single rows
    /// ([`super::pipelined::routed_tiling`]).
    Pipelined { tiling: PipelinedTiling },
    /// [`super::kernel::matmul_portable_kernel()`], one multiply-add per k in f32.
    Portable { tiling: PortableTiling },
}

impl MatmulPath {
    /// A short label for logs and benchmark tables.
    pub fn label(&self) -> String {
        match self {
            Self::TensorCore { tiling, loader } => {
                format!("tensor-core/{}/{:?}/{loader:?}", tiling.name, tiling.kind)
            }
            Self::Pipelined { tiling } => format!("pipelined/{}", tiling.name),
            Self::Portable { tiling } => format!("portable/{}", tiling.name),
        }
    }
}

/// What one launch did, the numbers a profiler user wants next to its time: what vLLM's
/// `_matmul_launch_metadata` reports (name, M/N/K, flops, bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatmulLaunch {
    pub name: &'static str,
    pub path: MatmulPath,
    pub batches: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `2 * batches * m * n * k`.
    pub flops: u64,
    /// Bytes of both operands and the output, each counted once.
    pub bytes: u64,
}

/// Why [`launch_matmul`] refused its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatmulError {
    /// Operands must have the same rank, at least 2.
    Rank { lhs: Vec<usize>, rhs: Vec<usize> },
    /// `lhs[.., K]` and `rhs[.., K, _]` disagree.
    InnerDims { lhs: Vec<usize>, rhs: Vec<usize> },
    /// A batch dim differs and neither side is 1.
    BatchDims { lhs: Vec<usize>, rhs: Vec<usize> },
    /// The output is not contiguous with the broadcast shape.
    BadOutput {
        expected: Vec<usize>,
        shape: Vec<usize>,
        strides: Vec<usize>,
    },
    /// The bias is not a contiguous `[N]`.
    BadBias {
        n: usize,
        shape: Vec<usize>,
        strides: Vec<usize>,
    },
    /// cubek refused the forced blueprint with every loader.
    Setup(String),
}

impl fmt::Display for MatmulError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rank { lhs, rhs } => write!(
                f,
                "operands must have the same rank, at least 2: lhs {lhs:?}, rhs {rhs:?}"
            ),
            Self::InnerDims { lhs, rhs } => write!(
                f,
                "inner dims differ: lhs {lhs:?} has K = {}, rhs {rhs:?} has K = {}",
                lhs[lhs.len() - 1],
                rhs[rhs.len() - 2]
            ),
            Self::BatchDims { lhs, rhs } => write!(
                f,
                "batch dims cannot be broadcast together: lhs {lhs:?}, rhs {rhs:?}"
            ),
            Self::BadOutput {
                expected,
                shape,
                strides,
            } => write!(
                f,
                "output must be contiguous with shape {expected:?}, got shape {shape:?} strides {strides:?}"
            ),
            Self::BadBias { n, shape, strides } => write!(
                f,
                "bias must be contiguous with shape [{n}] (N of the output), got shape {shape:?} strides {strides:?}"
            ),
            Self::Setup(reason) => write!(f, "the tensor-core kernel refused the problem: {reason}"),
        }
    }
}

impl std::error::Error for MatmulError {}

/// The output shape of `lhs @ rhs`: batch dims broadcast, then `[M, N]`.
pub fn matmul_output_shape(lhs: &[usize], rhs: &[usize]) -> Result<Vec<usize>, MatmulError> {
    let err_rank = || MatmulError::Rank {
        lhs: lhs.to_vec(),
        rhs: rhs.to_vec(),
    };
    if lhs.len() != rhs.len() || lhs.len() < 2 {
        return Err(err_rank());
    }
    let rank = lhs.len();
    if lhs[rank - 1] != rhs[rank - 2] {
        return Err(MatmulError::InnerDims {
            lhs: lhs.to_vec(),
            rhs: rhs.to_vec(),
        });
    }
    let mut shape = Vec::with_capacity(rank);
    for d in 0..rank - 2 {
        let (l, r) = (lhs[d], rhs[d]);
        if l != r && l != 1 && r != 1 {
            return Err(MatmulError::BatchDims {
                lhs: lhs.to_vec(),
                rhs: rhs.to_vec(),
            });
        }
        shape.push(if l == 1 { r } else { l });
    }
    shape.push(lhs[rank - 2]);
    shape.push(rhs[rank - 1]);
    Ok(shape)
}

/// The path [`launch_matmul`] takes on this runtime for this problem. It depends on the
/// runtime, the dtype and, in f32, `precision`, K = 0, the output's size and the
/// multiprocessor count (the tilings, [`tiling_for`] and [`portable_tiling_for`]) and, for
/// the loader and for the pipelined kernel of single rows ([`pipelined::routed_tiling`]), on
/// how the operands are stored (the strides TMA can read once the launch has made its
/// copies; rows the pipelined kernel reads as stored). Every choice gives the same bits per
/// element (see the module docs) except the loader in f32 TF32
/// ([`tensor_core::loaders_agree`]), where the launch brings every problem it can to TMA so
/// that the loader does not follow M.
pub fn choose_path<R: Runtime>(
    client: &ComputeClient<R>,
    lhs: &TensorBinding<R>,
    rhs: &TensorBinding<R>,
    dtype: StorageType,
    precision: F32Precision,
) -> MatmulPath {
    let (m, k, n, batches) = problem_dims(lhs, rhs);
    let portable = MatmulPath::Portable {
        tiling: portable_tiling_for(client, m, n, batches),
    };
    let ieee = precision == F32Precision::Ieee && dtype == tensor_core::F32;
    if k == 0 || ieee {
        return portable;
    }
    let sms = client.properties().hardware.num_streaming_multiprocessors;
    let tma = pipelined::TmaReads::of(&lhs.shape, &rhs.shape, pipelined::has_tma(client));
    if let Some(tiling) = pipelined::routed_tiling(m, n, batches, tma, dtype, sms)
        .filter(|&tiling| pipelined::is_supported(client, dtype, tiling))
    {
        let reads = |b: &TensorBinding<R>| {
            pipelined::reads_as_stored(&unit_strides_normalized(b.clone(), dtype))
        };
        if reads(lhs) && reads(rhs) {
            return MatmulPath::Pipelined { tiling };
        }
    }
    tensor_core_path(client, lhs, rhs, dtype).unwrap_or(portable)
}

/// cubek's tensor-core path for this problem, or `None` where the runtime has no tensor-core
/// instruction for `dtype`: what [`choose_path`] takes (TF32 in f32) unless the pipelined
/// kernel or the portable one does. The tests compare the pipelined kernel's bits with it.
pub fn tensor_core_path<R: Runtime>(
    client: &ComputeClient<R>,
    lhs: &TensorBinding<R>,
    rhs: &TensorBinding<R>,
    dtype: StorageType,
) -> Option<MatmulPath> {
    let (m, _, n, batches) = problem_dims(lhs, rhs);
    let sms = client.properties().hardware.num_streaming_multiprocessors;
    let tiling = tiling_for(m, n, batches, dtype, sms);
    let kind = tensor_core::form_for(client, dtype, tiling)?;
    let tiling = TensorCoreTiling { kind, ..tiling };
    let loader = if tma_reads_both(lhs, rhs, dtype) {
        Loader::SpecializedTma
    } else {
        Loader::Cyclic
    };
    Some(MatmulPath::TensorCore { tiling, loader })
}

/// M, K, N and the output's batch count (1 where the batch dims do not broadcast: the launch
/// reports that error).
fn problem_dims<R: Runtime>(
    lhs: &TensorBinding<R>,
    rhs: &TensorBinding<R>,
) -> (usize, usize, usize, usize) {
    let rank = lhs.shape.len();
    let batches = matmul_output_shape(&lhs.shape, &rhs.shape)
        .map(|shape| shape[..rank - 2].iter().product())
        .unwrap_or(1);
    (
        lhs.shape[rank - 2],
        lhs.shape[rank - 1],
        rhs.shape[rank - 1],
        batches,
    )
}

/// The portable kernel's tiling on this runtime: [`portable_tiling`] with its
/// multiprocessors (or CPU cores).
pub fn portable_tiling_for<R: Runtime>(
    client: &ComputeClient<R>,
    m: usize,
    n: usize,
    batches: usize,
) -> PortableTiling {
    portable_tiling(m, n, batches, compute_units(client))
}

/// The portable kernel's tiling: for a few rows the rows layout ([`PORTABLE_ROWS`] up to 8,
/// [`PORTABLE_ROWS_32`] up to [`PORTABLE_ROWS_MAX_M`]), else [`PORTABLE_WIDE`] where its
/// 128x128 tiles are at least as many as `units`, and [`PORTABLE_NARROW`] otherwise. Every
/// choice gives the same bits.
pub fn portable_tiling(m: usize, n: usize, batches: usize, units: usize) -> PortableTiling {
    let tile = PORTABLE_WIDE.tile_rows();
    let wide_tiles = batches * m.div_ceil(tile) * n.div_ceil(tile);
    if m <= PORTABLE_ROWS.tile_rows() {
        PORTABLE_ROWS
    } else if m <= PORTABLE_ROWS_MAX_M {
        PORTABLE_ROWS_32
    } else if m >= tile && n >= tile && wide_tiles >= units {
        PORTABLE_WIDE
    } else {
        PORTABLE_NARROW
    }
}

/// Rows (M, per batch) up to which the portable path takes the rows layout.
pub const PORTABLE_ROWS_MAX_M: usize = 64;

/// Multiprocessors, or CPU cores on a CPU runtime.
fn compute_units<R: Runtime>(client: &ComputeClient<R>) -> usize {
    let hardware = &client.properties().hardware;
    hardware
        .num_streaming_multiprocessors
        .or(hardware.num_cpu_cores)
        .unwrap_or(16) as usize
}

/// Whether TMA reads both operands once [`prepare_operands`] has copied what it copies.
///
/// TMA descriptors need every stride but the contiguous dim's 16-byte aligned, and batches
/// in order; batches out of order are always copied into [`aligned_rows`]. In f16 and bf16
/// the loaders agree, so an operand with other unaligned strides simply takes plain loads.
/// In f32 they do not, and the choice must not follow M: an lhs read down its columns has a
/// K stride that is usually M (the transposed view of an `[K, M]` buffer), so TMA would take
/// it at some M and not at others. There every operand TMA cannot read as stored is copied
/// into aligned rows, and every f32 problem reaches TMA, except batches broadcast on one
/// side only (TMA cannot pair them; such a problem takes plain loads whatever its M).
fn tma_reads_both<R: Runtime>(
    lhs: &TensorBinding<R>,
    rhs: &TensorBinding<R>,
    dtype: StorageType,
) -> bool {
    let lhs = unit_strides_normalized(lhs.clone(), dtype);
    let rhs = unit_strides_normalized(rhs.clone(), dtype);
    if !tensor_core::loaders_agree(dtype) {
        return batches_paired(&lhs, &rhs);
    }
    [&lhs, &rhs]
        .iter()
        .all(|b| !tensor_core::batches_in_order(&b.strides) || tma_aligned(&b.strides, dtype))
}

/// Whether TMA can pair the operands' batches: as many on each side, or one side unbatched.
fn batches_paired<R: Runtime>(lhs: &TensorBinding<R>, rhs: &TensorBinding<R>) -> bool {
    let batches = |b: &TensorBinding<R>| -> usize { b.shape[..b.shape.len() - 2].iter().product() };
    let (lhs_batches, rhs_batches) = (batches(lhs), batches(rhs));
    lhs_batches == rhs_batches || lhs_batches == 1 || rhs_batches == 1
}

/// The operands as the kernel of `path` reads them: strides of extent-1 dims normalised
/// ([`unit_strides_normalized`]) and, on the tensor cores, a copy into [`aligned_rows`] of
/// every operand whose batches are out of order, and in f32 under TMA of every operand TMA
/// cannot read as stored ([`tma_reads_both`] says why). Copies change no value; the one
/// decision they serve is which loader reads the operands.
fn prepare_operands<R: Runtime>(
    client: &ComputeClient<R>,
    lhs: TensorBinding<R>,
    rhs: TensorBinding<R>,
    dtype: StorageType,
    path: MatmulPath,
) -> (TensorBinding<R>, TensorBinding<R>) {
    let lhs = unit_strides_normalized(lhs, dtype);
    let rhs = unit_strides_normalized(rhs, dtype);
    let MatmulPath::TensorCore { loader, .. } = path else {
        return (lhs, rhs);
    };
    let tma_f32 = loader != Loader::Cyclic && !tensor_core::loaders_agree(dtype);
    let prepare = |b: TensorBinding<R>, by_rows: bool| {
        let copy = !tensor_core::batches_in_order(&b.strides)
            || (tma_f32 && !(by_rows && tma_aligned(&b.strides, dtype)));
        if copy {
            unit_strides_normalized(aligned_rows(client, b, dtype).binding(), dtype)
        } else {
            b
        }
    };
    // cubek's own copy of operands with batches out of order would come after the forced
    // blueprint was fitted to their original layout (TMA boxes overrunning the stages);
    // copied here, the blueprint sees what the kernel reads.
    let lhs_by_rows = lhs.strides[lhs.strides.len() - 1] == 1;
    (prepare(lhs, lhs_by_rows), prepare(rhs, true))
}

/// A copy of `b` stored by rows, each row starting on a 16-byte boundary, batches in order:
/// what TMA accepts at every width. (cubecl's pitched allocation pads rows of two or more
/// elements only, and a single column is a common f32 matrix-vector product.)
pub fn aligned_rows<R: Runtime>(
    client: &ComputeClient<R>,
    b: TensorBinding<R>,
    dtype: StorageType,
) -> TensorHandle<R> {
    let shape = b.shape.clone();
    let rank = shape.len();
    let mut strides = vec![1; rank];
    strides[rank - 2] = shape[rank - 1].next_multiple_of(tma_alignment(dtype));
    for d in (0..rank - 2).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    let len = (strides[0] * shape[0]).max(1);
    let out = TensorHandle::new(client.empty(len * dtype.size()), shape, strides, dtype);
    if b.shape.iter().product::<usize>() > 0 {
        copy_into(client, b, out.clone().binding(), dtype);
    }
    out
}

/// Elements in 16 bytes of `dtype`: the alignment TMA asks of strides.
fn tma_alignment(dtype: StorageType) -> usize {
    (16 / dtype.size()).max(1)
}

/// Whether TMA can describe a matrix of these strides, by cubek's rule: every stride but the
/// contiguous dim's a multiple of 16 bytes. The contiguous dim is the columns unless the row
/// stride is the smaller (cubek's column-major).
fn tma_aligned(strides: &[usize], dtype: StorageType) -> bool {
    let rank = strides.len();
    let contiguous = if strides[rank - 2] < strides[rank - 1] {
        rank - 2
    } else {
        rank - 1
    };
    strides
        .iter()
        .enumerate()
        .all(|(d, &s)| d == contiguous || s.is_multiple_of(tma_alignment(dtype)))
}

/// `b` with the stride of every dim of extent 1 set to what an ordered, aligned tensor would
/// have there. Such a stride never moves an address, but it decides how cubek classifies the
/// layout and whether TMA accepts it: `[1, K]` read as the transpose of `[K, 1]` has strides
/// `[1, 1]`, the same row stored by rows `[K, 1]`; one batch of a batch-major view keeps the
/// stride of its parent's batch dim, which may lie inside a row.
fn unit_strides_normalized<R: Runtime>(
    mut b: TensorBinding<R>,
    dtype: StorageType,
) -> TensorBinding<R> {
    normalize_unit_strides(&b.shape, &mut b.strides, tma_alignment(dtype));
    b
}

/// [`unit_strides_normalized`] on plain slices, `align` the elements in 16 bytes. An
/// extent-1 column gets stride 1. A single row gets an aligned row stride past its columns
/// where they are contiguous (row-major), else 1 (column-major). An extent-1 batch dim gets
/// the aligned span of the dims inside it, as if stored outside them.
///
/// A single column stays row-major (with its real row stride) on purpose: its siblings with
/// more batches or rows have the same strides, and a contiguous column (row stride 1) is
/// then refused by TMA at every size alike.
fn normalize_unit_strides(shape: &[usize], strides: &mut [usize], align: usize) {
    let rank = shape.len();
    let (row, col) = (rank - 2, rank - 1);
    let aligned = |x: usize| x.max(1).next_multiple_of(align);
    if shape[col] == 1 {
        strides[col] = 1;
    }
    if shape[row] == 1 {
        strides[row] = if strides[col] == 1 {
            aligned(shape[col])
        } else {
            1
        };
    }
    let mut span = (strides[row] * shape[row]).max(strides[col] * shape[col]);
    for d in (0..row).rev() {
        if shape[d] == 1 {
            strides[d] = aligned(span);
        }
        span = span.max(strides[d] * shape[d]);
    }
}

/// `out = lhs @ rhs` for `lhs: [batch.., M, K]` and `rhs: [batch.., K, N]` of element type
/// `dtype`, any strides, batch dims broadcast; `out` contiguous with the broadcast shape.
/// `precision` matters for f32 only.
pub fn launch_matmul<R: Runtime>(
    client: &ComputeClient<R>,
    lhs: TensorBinding<R>,
    rhs: TensorBinding<R>,
    out: TensorBinding<R>,
    dtype: StorageType,
    precision: F32Precision,
) -> Result<MatmulLaunch, MatmulError> {
    let path = choose_path(client, &lhs, &rhs, dtype, precision);
    launch_matmul_on(client, lhs, rhs, None, out, dtype, path)
}

/// `out = lhs @ rhs + bias` as [`launch_matmul`], `bias` a contiguous `[N]` of `dtype` added
/// to every row, as vLLM's batch-invariant `addmm`. The bias joins each element's f32
/// accumulator after the last K step, and the sum is rounded to `dtype` once (a matmul
/// followed by an add rounds twice in f16 and bf16).
pub fn launch_matmul_bias<R: Runtime>(
    client: &ComputeClient<R>,
    lhs: TensorBinding<R>,
    rhs: TensorBinding<R>,
    bias: TensorBinding<R>,
    out: TensorBinding<R>,
    dtype: StorageType,
    precision: F32Precision,
) -> Result<MatmulLaunch, MatmulError> {
    let path = choose_path(client, &lhs, &rhs, dtype, precision);
    launch_matmul_on(client, lhs, rhs, Some(bias), out, dtype, path)
}

/// [`launch_matmul`] or [`launch_matmul_bias`] on a given path, for the tests that compare
/// paths bitwise and for the benchmark. A tensor-core path on a runtime without the
/// instruction is an error.
pub fn launch_matmul_on<R: Runtime>(
    client: &ComputeClient<R>,
    lhs: TensorBinding<R>,
    rhs: TensorBinding<R>,
    bias: Option<TensorBinding<R>>,
    out: TensorBinding<R>,
    dtype: StorageType,
    path: MatmulPath,
) -> Result<MatmulLaunch, MatmulError> {
    let lhs_shape: Vec<usize> = lhs.shape.iter().copied().collect();
    let rhs_shape: Vec<usize> = rhs.shape.iter().copied().collect();
    let expected = matmul_output_shape(&lhs_shape, &rhs_shape)?;
    let out_shape: Vec<usize> = out.shape.iter().copied().collect();
    let out_strides: Vec<usize> = out.strides.iter().copied().collect();
    if out_shape != expected || out_strides != contiguous_strides(&expected) {
        return Err(MatmulError::BadOutput {
            expected,
            shape: out_shape,
            strides: out_strides,
        });
    }
    let rank = expected.len();
    if let Some(bias) = &bias {
        let shape: Vec<usize> = bias.shape.iter().copied().collect();
        let strides: Vec<usize> = bias.strides.iter().copied().collect();
        let n = expected[rank - 1];
        if shape != [n] || strides != [1] {
            return Err(MatmulError::BadBias { n, shape, strides });
        }
    }
    let (m, n, k) = (
        lhs_shape[rank - 2],
        rhs_shape[rank - 1],
        lhs_shape[rank - 1],
    );
    let batches: usize = expected[..rank - 2].iter().product();
    let elem = dtype.size() as u64;
    let numel = |s: &[usize]| s.iter().product::<usize>() as u64;
    let launch = MatmulLaunch {
        name: "batch_invariant_matmul",
        path,
        batches,
        m,
        n,
        k,
        flops: 2 * (batches * m * n) as u64 * k as u64,
        bytes: (numel(&lhs_shape)
            + numel(&rhs_shape)
            + numel(&expected)
            + bias.as_ref().map_or(0, |_| n as u64))
            * elem,
    };
    let _span = tracing::debug_span!(
        "batch_invariant_matmul",
        path = %path.label(),
        batches,
        m,
        n,
        k,
        bias = bias.is_some(),
        flops = launch.flops,
        bytes = launch.bytes,
    )
    .entered();
    if batches * m * n == 0 {
        return Ok(launch);
    }
    let (lhs, rhs) = prepare_operands(client, lhs, rhs, dtype, path);
    match path {
        MatmulPath::Portable { tiling } => {
            launch_portable(client, lhs, rhs, bias, out, dtype, &expected, tiling)
        }
        MatmulPath::Pipelined { tiling } => {
            if !pipelined::is_supported(client, dtype, tiling) {
                return Err(MatmulError::Setup(format!(
                    "the pipelined kernel does not run {dtype:?} with {} on this runtime",
                    tiling.name
                )));
            }
            if !pipelined::reads_as_stored(&lhs) || !pipelined::reads_as_stored(&rhs) {
                return Err(MatmulError::Setup(format!(
                    "the pipelined kernel reads rows of a multiple of 8 elements stored \
                     contiguously on 16-byte boundaries: lhs {:?} strides {:?}, rhs {:?} \
                     strides {:?}",
                    lhs.shape, lhs.strides, rhs.shape, rhs.strides
                )));
            }
            if !pipelined::reads_operands(tiling, &lhs.shape, &rhs.shape) {
                return Err(MatmulError::Setup(format!(
                    "the pipelined kernel reads an operand by TMA only where it is one matrix \
                     for every batch: {} with lhs {:?}, rhs {:?}",
                    tiling.name, lhs.shape, rhs.shape
                )));
            }
            launch_pipelined(client, lhs, rhs, bias, out, dtype, &expected, tiling)
        }
        MatmulPath::TensorCore { tiling, loader } => {
            if k == 0 || !tensor_core::is_supported(client, dtype, tiling.kind) {
                return Err(MatmulError::Setup(format!(
                    "no tensor-core instruction for {dtype:?} with K = {k} on this runtime"
                )));
            }
            let first = tensor_core::launch(
                client,
                lhs.clone(),
                rhs.clone(),
                bias.clone(),
                out.clone(),
                dtype,
                tiling,
                loader,
            );
            match first {
                Ok(()) => {}
                // Plain loads accept what TMA refuses (odd strides, permuted batches), with
                // the same bits where the loaders agree. In f32 they would give other bits
                // than the TMA launches of the same rows, so the refusal is reported instead.
                Err(e) if loader != Loader::Cyclic && !tensor_core::loaders_agree(dtype) => {
                    return Err(MatmulError::Setup(format!(
                        "TMA refused this f32 problem in aligned rows, and plain loads \
                         would round its operands differently: {e:?}"
                    )));
                }
                Err(_) if loader != Loader::Cyclic => {
                    tensor_core::launch(client, lhs, rhs, bias, out, dtype, tiling, Loader::Cyclic)
                        .map_err(|e| MatmulError::Setup(format!("{e:?}")))?;
                    return Ok(MatmulLaunch {
                        path: MatmulPath::TensorCore {
                            tiling,
                            loader: Loader::Cyclic,
                        },
                        ..launch
                    });
                }
                Err(e) => return Err(MatmulError::Setup(format!("{e:?}"))),
            }
        }
    }
    Ok(launch)
}

#[allow(clippy::too_many_arguments)]
fn launch_portable<R: Runtime>(
    client: &ComputeClient<R>,
    lhs: TensorBinding<R>,
    rhs: TensorBinding<R>,
    bias: Option<TensorBinding<R>>,
    out: TensorBinding<R>,
    dtype: StorageType,
    out_shape: &[usize],
    tiling: PortableTiling,
) {
    let rank = out_shape.len();
    let (m, n, k) = (
        out_shape[rank - 2],
        out_shape[rank - 1],
        lhs.shape[rank - 1],
    );
    let batches: usize = out_shape[..rank - 2].iter().product();
    let (batch_shape, lhs_batch, rhs_batch) = batch_walk(&lhs, &rhs, out_shape);
    let address_type = address_type(&lhs, &rhs, batches * m * n);

    let tiles = batches * m.div_ceil(tiling.tile_rows()) * n.div_ceil(tiling.tile_cols());
    let cubes = tiles.min(4 * compute_units(client)).max(1) as u32;
    // An absent bias binds the lhs: the kernel never reads it (comptime flag).
    let has_bias = bias.is_some();
    let bias = bias.unwrap_or_else(|| lhs.clone());
    match tiling.layout {
        PortableLayout::Square => unsafe {
            matmul_portable_kernel::launch_unchecked(
                client,
                CubeCount::Static(cubes, 1, 1),
                CubeDim::new_2d(CUBE_SIDE, CUBE_SIDE),
                address_type,
                lhs.into_tensor_arg(),
                rhs.into_tensor_arg(),
                bias.into_tensor_arg(),
                out.into_tensor_arg(),
                batch_shape,
                lhs_batch,
                rhs_batch,
                m,
                n,
                k,
                batches,
                tiling.per_thread,
                has_bias,
                dtype,
            );
        },
        PortableLayout::Rows => unsafe {
            matmul_portable_rows_kernel::launch_unchecked(
                client,
                CubeCount::Static(cubes, 1, 1),
                CubeDim::new_2d(ROWS_COLS as u32, ROWS_WARPS as u32),
                address_type,
                lhs.into_tensor_arg(),
                rhs.into_tensor_arg(),
                bias.into_tensor_arg(),
                out.into_tensor_arg(),
                batch_shape,
                lhs_batch,
                rhs_batch,
                m,
                n,
                k,
                batches,
                tiling.per_thread,
                has_bias,
                dtype,
            );
        },
    }
}

/// The batch walk both own kernels take: the output's batch shape (at least one entry; a
/// rank-2 problem is one batch of stride 0) and each operand's batch strides, 0 where it is
/// broadcast.
#[allow(clippy::type_complexity)]
fn batch_walk<R: Runtime>(
    lhs: &TensorBinding<R>,
    rhs: &TensorBinding<R>,
    out_shape: &[usize],
) -> (
    SequenceArg<R, FastDivmod<usize>>,
    SequenceArg<R, usize>,
    SequenceArg<R, usize>,
) {
    let rank = out_shape.len();
    let mut batch_shape: SequenceArg<R, FastDivmod<usize>> = SequenceArg::new();
    let mut lhs_batch: SequenceArg<R, usize> = SequenceArg::new();
    let mut rhs_batch: SequenceArg<R, usize> = SequenceArg::new();
    if rank == 2 {
        batch_shape.push(1);
        lhs_batch.push(0);
        rhs_batch.push(0);
    }
    for (d, &extent) in out_shape[..rank - 2].iter().enumerate() {
        batch_shape.push(extent);
        lhs_batch.push(if lhs.shape[d] == 1 { 0 } else { lhs.strides[d] });
        rhs_batch.push(if rhs.shape[d] == 1 { 0 } else { rhs.strides[d] });
    }
    (batch_shape, lhs_batch, rhs_batch)
}

/// 32-bit offsets where every buffer the kernel indexes allows them.
fn address_type<R: Runtime>(
    lhs: &TensorBinding<R>,
    rhs: &TensorBinding<R>,
    out_len: usize,
) -> AddressType {
    let extent = |b: &TensorBinding<R>| {
        max_offset(
            &b.shape.iter().copied().collect::<Vec<_>>(),
            &b.strides.iter().copied().collect::<Vec<_>>(),
        )
    };
    AddressType::from_len(extent(lhs).max(extent(rhs)).max(out_len))
}

/// Launches [`matmul_pipelined_kernel`] with `tiling`, one cube per output tile. The caller
/// has checked shapes, support and that the kernel reads both operands as stored.
#[allow(clippy::too_many_arguments)]
fn launch_pipelined<R: Runtime>(
    client: &ComputeClient<R>,
    lhs: TensorBinding<R>,
    rhs: TensorBinding<R>,
    bias: Option<TensorBinding<R>>,
    out: TensorBinding<R>,
    dtype: StorageType,
    out_shape: &[usize],
    tiling: PipelinedTiling,
) {
    let rank = out_shape.len();
    let (m, n, k) = (
        out_shape[rank - 2],
        out_shape[rank - 1],
        lhs.shape[rank - 1],
    );
    let batches: usize = out_shape[..rank - 2].iter().product();
    let (batch_shape, lhs_batch, rhs_batch) = batch_walk(&lhs, &rhs, out_shape);
    let address_type = address_type(&lhs, &rhs, batches * m * n);
    let (bm, bn) = tiling.cube_outputs();
    let cubes = batches * m.div_ceil(bm) * n.div_ceil(bn);
    let (warps_m, warps_n) = tiling.warps;
    let (tiles_m, tiles_n) = tiling.warp_tiles;
    // An absent bias binds the lhs: the kernel never reads it (comptime flag).
    let has_bias = bias.is_some();
    let bias = bias.unwrap_or_else(|| lhs.clone());
    // A stage's block of each operand brought by TMA as slabs (`rows` x `slab` boxes,
    // swizzled one slab row wide) over the operand's last two dims (one matrix for every
    // batch: the caller refuses others).
    let tma_map = |b: &TensorBinding<R>, brought: bool, rows: usize, slab: usize| {
        if !brought {
            return ComptimeOptionArgs::None;
        }
        let rank = b.shape.len();
        let matrix = TensorBinding {
            shape: vec![b.shape[rank - 2], b.shape[rank - 1]].into(),
            strides: vec![b.strides[rank - 2], b.strides[rank - 1]].into(),
            ..b.clone()
        };
        ComptimeOptionArgs::Some(
            TensorMapArg::new(
                TiledArgs {
                    tile_size: cubecl::zspace::Shape::from(vec![rows, slab]),
                },
                matrix.into_tensor_arg(),
                dtype,
            )
            .with_swizzle(match 2 * slab {
                32 => TensorMapSwizzle::B32,
                64 => TensorMapSwizzle::B64,
                _ => TensorMapSwizzle::B128,
            }),
        )
    };
    let lhs_map = tma_map(&lhs, tiling.lhs_tma, bm, tiling.lhs_slab());
    let rhs_map = tma_map(&rhs, tiling.rhs_tma, tiling.stage_k, tiling.rhs_slab());
    unsafe {
        matmul_pipelined_kernel::launch_unchecked(
            client,
            CubeCount::Static(cubes as u32, 1, 1),
            CubeDim::new_2d(
                pipelined::PLANE as u32,
                (warps_m * warps_n + tiling.copy_warps) as u32,
            ),
            address_type,
            lhs.into_tensor_arg(),
            rhs.into_tensor_arg(),
            bias.into_tensor_arg(),
            out.into_tensor_arg(),
            batch_shape,
            lhs_batch,
            rhs_batch,
            m,
            n,
            k,
            warps_m,
            warps_n,
            tiles_m,
            tiles_n,
            tiling.stage_k,
            tiling.stages,
            lhs_map,
            rhs_map,
            tiling.copy_warps,
            tiling.lhs_tma,
            tiling.rhs_tma,
            has_bias,
            dtype,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{
        normalize_unit_strides, portable_tiling, PortableLayout, PORTABLE_NARROW, PORTABLE_ROWS,
        PORTABLE_ROWS_32, PORTABLE_ROWS_MAX_M, PORTABLE_WIDE,
    };
    use crate::matmul::kernel::{PORTABLE_TILINGS, ROWS_COLS, ROWS_STEP_K, ROWS_WARPS};

    /// Decode rows take the rows layout whatever the width and batch; more rows the square
    /// tiles, wide ones where they fill the device.
    #[test]
    fn portable_rows_take_the_rows_layout() {
        for (m, want) in [
            (0, PORTABLE_ROWS),
            (1, PORTABLE_ROWS),
            (8, PORTABLE_ROWS),
            (9, PORTABLE_ROWS_32),
            (PORTABLE_ROWS_MAX_M, PORTABLE_ROWS_32),
        ] {
            assert_eq!(portable_tiling(m, 4096, 1, 132), want, "M = {m}");
            assert_eq!(portable_tiling(m, 7, 300, 2), want, "M = {m}, batched");
        }
        assert_eq!(portable_tiling(65, 4096, 1, 132), PORTABLE_NARROW);
        assert_eq!(portable_tiling(1024, 4096, 1, 132), PORTABLE_WIDE);
    }

    /// The rows kernel's copy walks (as `matmul_portable_rows_kernel` works them out) cover
    /// each step's blocks exactly once, in both orders of each operand.
    #[test]
    fn rows_copy_walks_cover_each_block_once() {
        let units = ROWS_WARPS * ROWS_COLS;
        for tiling in PORTABLE_TILINGS {
            if tiling.layout != PortableLayout::Rows {
                continue;
            }
            let rows = tiling.tile_rows();
            let a_per = rows * ROWS_STEP_K / units;
            let b_per = ROWS_STEP_K * ROWS_COLS / units;
            assert_eq!(a_per * units, rows * ROWS_STEP_K, "{}", tiling.name);
            assert_eq!(b_per * units, ROWS_STEP_K * ROWS_COLS, "{}", tiling.name);
            for by_first in [true, false] {
                let mut a_seen = vec![0; rows * ROWS_STEP_K];
                let mut b_seen = vec![0; ROWS_STEP_K * ROWS_COLS];
                for flat in 0..units {
                    for p in 0..a_per {
                        let (row, k) = if by_first {
                            (
                                flat / ROWS_STEP_K + p * (units / ROWS_STEP_K),
                                flat % ROWS_STEP_K,
                            )
                        } else {
                            (flat % rows, flat / rows + p * (units / rows))
                        };
                        a_seen[row * ROWS_STEP_K + k] += 1;
                    }
                    for p in 0..b_per {
                        let (k, col) = if by_first {
                            (flat / ROWS_COLS + p * (units / ROWS_COLS), flat % ROWS_COLS)
                        } else {
                            (
                                flat % ROWS_STEP_K,
                                flat / ROWS_STEP_K + p * (units / ROWS_STEP_K),
                            )
                        };
                        b_seen[k * ROWS_COLS + col] += 1;
                    }
                }
                let name = tiling.name;
                assert!(
                    a_seen.iter().all(|&c| c == 1),
                    "{name}: lhs walk ({by_first})"
                );
                assert!(
                    b_seen.iter().all(|&c| c == 1),
                    "{name}: rhs walk ({by_first})"
                );
            }
            assert!(rows <= PORTABLE_ROWS_MAX_M, "{}", tiling.name);
        }
    }

    fn normalized(shape: &[usize], strides: &[usize]) -> Vec<usize> {
        let mut strides = strides.to_vec();
        // f32: four elements to 16 bytes.
        normalize_unit_strides(shape, &mut strides, 4);
        strides
    }

    /// The transposed view of a `[K, 1]` buffer is the row `[1, K]` stored by rows, with a
    /// row stride TMA accepts.
    #[test]
    fn a_one_row_transpose_reads_as_a_row() {
        assert_eq!(normalized(&[1, 12], &[1, 1]), [12, 1]);
        assert_eq!(normalized(&[1, 12], &[12, 1]), [12, 1]);
        assert_eq!(normalized(&[1, 7], &[1, 1]), [8, 1]);
        assert_eq!(normalized(&[1, 1], &[1, 1]), [4, 1]);
        // A row read across columns (a column of a matrix, transposed) is column-major.
        assert_eq!(normalized(&[1, 7], &[9, 12]), [1, 12]);
    }

    /// A single column keeps its row stride, so that a contiguous one is refused by TMA
    /// alone and inside more rows or batches alike.
    #[test]
    fn a_one_column_matrix_keeps_its_row_stride() {
        assert_eq!(normalized(&[7, 1], &[1, 1]), [1, 1]);
        assert_eq!(normalized(&[2, 7, 1], &[7, 1, 1]), [7, 1, 1]);
        assert_eq!(normalized(&[1, 7, 1], &[7, 1, 1]), [8, 1, 1]);
    }

    #[test]
    fn strides_that_move_addresses_are_kept() {
        assert_eq!(normalized(&[3, 12], &[1, 3]), [1, 3]);
        assert_eq!(normalized(&[2, 5, 7], &[40, 8, 1]), [40, 8, 1]);
        // A broadcast batch keeps its zero stride; an extent-1 batch gets the matrix size.
        assert_eq!(normalized(&[4, 5, 7], &[0, 7, 1]), [0, 7, 1]);
        assert_eq!(normalized(&[1, 5, 7], &[0, 8, 1]), [40, 8, 1]);
        // An extent-1 column of a pitched buffer.
        assert_eq!(normalized(&[5, 1], &[8, 3]), [8, 1]);
    }

    /// One batch of a transposed, batch-inside-the-row view (`[n, batches, k]` permuted to
    /// `[batches, k, n]`) reads as a single matrix, whatever its parent's batch count.
    #[test]
    fn a_lone_batch_lies_outside_its_matrix() {
        let (k, n) = (8, 5);
        assert_eq!(
            normalized(&[1, k, n], &[k, 1, 3 * k]),
            [3 * k * n, 1, 3 * k]
        );
        assert_eq!(
            normalized(&[1, 1, k, n], &[k, k, 1, 2 * k]),
            [2 * k * n, 2 * k * n, 1, 2 * k]
        );
    }
}
