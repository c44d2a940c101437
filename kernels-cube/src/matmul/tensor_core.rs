//! The tensor-core path: cubek's tiled matmul with a forced blueprint.
//!
//! cubek 0.2 has no split-K and walks K in increasing tile order with one accumulator per
//! fragment; what Burn's autotuner varies between problem sizes is the tile instruction
//! (cmma, mma, unit or gemv kernels) and, for f32, whether TF32 is used. Forcing the
//! blueprint fixes both. Everything this module lets vary (stage and partition sizes, the
//! loader, the form the instruction is issued in) changes how tiles travel to the tensor
//! cores, not the arithmetic; the suite compares every combination bitwise.

use cubecl::features::MmaConfig;
use cubecl::ir::{ElemType, FloatKind};
use cubecl::prelude::*;
use cubecl::std::tensor::{matrix_batch_layout, MatrixBatchLayout};
use cubek::matmul::components::global::{InputLoadFlow, LoadFlows};
use cubek::matmul::components::stage::PartitionBuffering;
use cubek::matmul::components::tile::TileMatmulKind;
use cubek::matmul::definition::{AvailableVectorSizes, MatmulVectorSizes};
use cubek::matmul::definition::{
    MatmulElems, MatmulGlobalElems, MatmulProblem, MatmulSetupError, TilingBlueprint, TilingScheme,
};
use cubek::matmul::launch::{
    Acc, AccSize, ConcreteInputsFactory, Lhs, LhsSize, Rhs, RhsSize, Strategy, TensorMapInputs,
};
use cubek::matmul::routines::double_buffering::{
    CyclicDoubleBufferingAlgorithm, TmaDoubleBufferingAlgorithm,
};
use cubek::matmul::routines::specialized::SpecializedAlgorithm;
use cubek::matmul::routines::{select_swizzle, BlueprintStrategy, Routine};

use super::bias::{biased_output, plain_inputs, PlainBiasArgs, TmaBiasArgs};
use cubek::std::cube_count::{GlobalOrder, HypercubeBlueprint};
use cubek::std::stage::SwizzleMode;
use cubek::std::{InputBinding, MatrixLayout, PartitionSize, StageSize, SwizzleModes, TileSize};

pub(crate) const F32: StorageType = StorageType::Scalar(ElemType::Float(FloatKind::F32));

/// How operand tiles reach shared memory. Only speed depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Loader {
    /// Tensor Memory Accelerator copies, double buffered (sm_90).
    Tma,
    /// Tensor Memory Accelerator copies issued by warps that only load (producer/consumer).
    SpecializedTma,
    /// Plain cooperative loads, double buffered; accepted for any strides.
    Cyclic,
}

/// The form in which cubek issues the tensor-core instruction. For f16 and bf16 both run the
/// same hardware MMA per 16-deep K step (a WMMA 16x16 fragment is two 16x8 `mma.sync` side
/// by side), so only speed depends on the choice; the suite compares the two bitwise. For
/// TF32 they do not agree (the tests see different bits on an H100), so f32 keeps one form
/// for every tiling ([`form_for`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TileKind {
    /// `nvcuda::wmma` fragments of 16x16 (cubek's `Cmma`), unswizzled shared memory.
    Wmma,
    /// `mma.sync` on 16x8 tiles fed by `ldmatrix` from swizzled shared memory (cubek's `Mma`).
    MmaSync,
}

/// The part of a blueprint that may change with the problem: how many 16x16 output blocks
/// and 16-wide K steps one warp covers (`partition`, in M, N and K), how many warps one cube
/// has (`stage`, along M and N), and the instruction form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorCoreTiling {
    pub name: &'static str,
    pub partition: (u32, u32, u32),
    pub stage: (u32, u32),
    pub kind: TileKind,
}

// The f16/bf16 size classes (`WIDE`, `MEDIUM`, `SKINNY`, `NARROW`) were picked by H100
// sweeps (`bench_matmul --tilings-only`, bf16, 381 candidates, every one giving the router's
// bits; see docs/performance.md). Their times are for the warp-specialized TMA loader with
// `mma.sync`, against the double-buffered TMA loader with WMMA fragments and its own
// tilings on the same card.

/// 256x128 outputs per cube, eight warps of 64x64, four K tiles per stage: M > 256.
/// 4096^3: 0.379 ms against 0.727.
pub const WIDE: TensorCoreTiling = TensorCoreTiling {
    name: "wide",
    partition: (4, 4, 4),
    stage: (4, 2),
    kind: TileKind::MmaSync,
};

/// 128x64 outputs per cube, four warps of 64x32, four K tiles per stage: 64 < M <= 256,
/// where 256-row cubes would leave most multiprocessors idle. M = 256, K = N = 4096: 0.056
/// ms against 0.120.
pub const MEDIUM: TensorCoreTiling = TensorCoreTiling {
    name: "medium",
    partition: (4, 2, 4),
    stage: (2, 2),
    kind: TileKind::MmaSync,
};

/// 32x64 outputs per cube, four warps of 32x16, sixteen K tiles per stage: 16 < M <= 64
/// in f16 and bf16. M = 64, K = 4096, N = 14336: 0.069 ms against 0.225 (0.089 with
/// [`NARROW`], which reads the weight once per 16 rows).
pub const SKINNY: TensorCoreTiling = TensorCoreTiling {
    name: "skinny",
    partition: (2, 1, 16),
    stage: (1, 4),
    kind: TileKind::MmaSync,
};

/// 64x32 outputs per cube, four warps of 32x16, sixteen 8-deep K tiles per stage: 16 < M <=
/// 64 in f32, unless [`SKINNY_TF32_WIDE`] fills the device. On an H200 (direct launch,
/// `bench_matmul --sweep-f32`) at M = 64 and (K, N) = (4096, 4096), (4096, 14336), (14336,
/// 4096): 0.059, 0.187, 0.174 ms, against 0.067, 0.206, 0.205 for a two-warp 64x32 cube
/// (whose 64 x 4096 x 14336 takes 1.05x Burn's time).
pub const SKINNY_TF32: TensorCoreTiling = TensorCoreTiling {
    name: "skinny-tf32",
    partition: (2, 1, 16),
    stage: (2, 2),
    kind: TileKind::MmaSync,
};

/// 64x128 outputs per cube, four warps of 64x32, eight 8-deep K tiles per stage: 16 < M <=
/// 64 in f32 where these cubes alone fill half the multiprocessors ([`tiling_for`]). Each
/// cube reads the rows of the lhs once per 128 columns instead of per 32. On the same H200
/// against [`SKINNY_TF32`]: 64 x 4096 x 14336 (112 cubes on 132 multiprocessors) in 0.124
/// ms against 0.187; 64 x 4096 x 4096 (32 cubes) in 0.085 against 0.059.
pub const SKINNY_TF32_WIDE: TensorCoreTiling = TensorCoreTiling {
    name: "skinny-tf32-wide",
    partition: (4, 2, 8),
    stage: (1, 4),
    kind: TileKind::MmaSync,
};

/// 16x32 outputs per cube, two warps of 16x16, sixteen 8-deep K tiles per stage: M <= 16 in
/// f32. Twice the cubes of [`NARROW`] over the weight: on an H100 (`bench_matmul
/// --sweep-f32`) at M = 16 and the three (K, N) above, 0.045, 0.105, 0.116 ms against
/// 0.054, 0.123, 0.158 for [`NARROW`]'s 16x64 cubes.
pub const NARROW_TF32: TensorCoreTiling = TensorCoreTiling {
    name: "narrow-tf32",
    partition: (1, 1, 16),
    stage: (1, 2),
    kind: TileKind::MmaSync,
};

/// 16x64 outputs per cube, four warps of 16x16, sixteen K tiles per stage: M <= 16 (decode)
/// in f16 and bf16, where the work is reading the weight: deep stages and load-only warps
/// keep its loads in flight. M = 1, K = N = 4096: 0.025 ms against 0.062.
pub const NARROW: TensorCoreTiling = TensorCoreTiling {
    name: "narrow",
    partition: (1, 1, 16),
    stage: (1, 4),
    kind: TileKind::MmaSync,
};

/// 256x112 outputs per cube, eight warps of 32x112, four K tiles per stage: [`WIDE`]'s
/// alternative in f16 and bf16 where it fills the last wave of cubes better
/// ([`tiling_for`]). 1024 x 14336 outputs are 448 cubes of 256x128, 3.39 waves on 132
/// multiprocessors (the last one 39% full), but 512 cubes of 256x112, 3.88 waves. M = 1024,
/// K = 4096, N = 14336 in bf16 on an H100: 0.329 ms against 0.368 for [`WIDE`].
pub const WIDE_N112: TensorCoreTiling = TensorCoreTiling {
    name: "wide-n112",
    partition: (2, 7, 4),
    stage: (8, 1),
    kind: TileKind::MmaSync,
};

/// Every tiling the router may pick, for some dtype.
pub const TILINGS: [TensorCoreTiling; 8] = [
    NARROW,
    NARROW_TF32,
    SKINNY,
    SKINNY_TF32,
    SKINNY_TF32_WIDE,
    MEDIUM,
    WIDE,
    WIDE_N112,
];

/// The tilings the router picks from for `dtype`: the four size classes by increasing M,
/// then the wide alternatives. The tests compare each of them with the routed result
/// bitwise.
pub fn tilings_for(dtype: StorageType) -> &'static [TensorCoreTiling] {
    if dtype == F32 {
        &[NARROW_TF32, SKINNY_TF32, MEDIUM, WIDE, SKINNY_TF32_WIDE]
    } else {
        &[NARROW, SKINNY, MEDIUM, WIDE, WIDE_N112]
    }
}

/// Outputs one cube of `tiling` computes, as (rows, columns).
pub fn cube_outputs(tiling: TensorCoreTiling) -> (usize, usize) {
    let (pm, pn, _) = tiling.partition;
    let (sm, sn) = tiling.stage;
    (16 * (pm * sm) as usize, 16 * (pn * sn) as usize)
}

/// What one cube of [`WIDE_N112`] costs relative to [`WIDE`] per output column: 1.03,
/// measured on an H100 (0.329 ms for 4 waves of 112 columns against 0.368 for 4 waves of
/// 128).
const N112_COST: f64 = 1.03;

/// The tiling for `batches` products of `m x n` outputs of `dtype` on a device with
/// `multiprocessors` (if known). Only speed depends on it: every listed tiling runs the same
/// instruction, K steps and accumulation order per output, which the suite checks bitwise.
///
/// M picks the size class (decode, skinny, medium, wide). Skinny f32 problems take
/// [`SKINNY_TF32_WIDE`] where its cubes number at least half the multiprocessors: a rule
/// from two points measured on an H200, 112 cubes a win and 32 a loss. For wide problems in
/// f16 and bf16, the cubes run in waves of one per multiprocessor, and a last wave that is
/// mostly empty costs a full one: [`WIDE_N112`] is taken where its waves times its width
/// cost less than [`WIDE`]'s.
pub fn tiling_for(
    m: usize,
    n: usize,
    batches: usize,
    dtype: StorageType,
    multiprocessors: Option<u32>,
) -> TensorCoreTiling {
    let &[narrow, skinny, medium, wide, ..] = tilings_for(dtype) else {
        unreachable!("tilings_for lists the four size classes first")
    };
    let sms = multiprocessors.filter(|&s| s > 0).map(|s| s as usize);
    let cubes = |tiling: TensorCoreTiling| {
        let (rows, cols) = cube_outputs(tiling);
        batches.max(1) * m.div_ceil(rows) * n.div_ceil(cols)
    };
    if m <= super::NARROW_MAX_M {
        return narrow;
    } else if m <= super::SKINNY_MAX_M {
        let wide_fills_half = sms.is_some_and(|sms| 2 * cubes(SKINNY_TF32_WIDE) >= sms);
        return if dtype == F32 && wide_fills_half {
            SKINNY_TF32_WIDE
        } else {
            skinny
        };
    } else if m <= super::MEDIUM_MAX_M {
        return medium;
    }
    let Some(sms) = sms.filter(|_| dtype != F32) else {
        return wide;
    };
    let cost = |tiling: TensorCoreTiling, per_column: f64| {
        cubes(tiling).div_ceil(sms) as f64 * cube_outputs(tiling).1 as f64 * per_column
    };
    if cost(WIDE_N112, N112_COST) < cost(wide, 1.0) {
        WIDE_N112
    } else {
        wide
    }
}

/// The order in which cubes take output tiles. Only speed depends on it (which tiles run at
/// the same time, so which operand panels L2 holds for them). 256-row cubes in f16 and bf16
/// go down columns of tiles four at a time, so the cubes in flight share the weight's
/// columns; the rest go along rows four at a time. bf16 on an H100 (milliseconds, rows
/// first / columns first): 1024 x 4096 x 4096 0.117 / 0.098, 1024 x 14336 x 4096 0.330 /
/// 0.297, 1024 x 4096 x 14336 0.332 / 0.331, 4096^3 0.388 / 0.393; at M <= 256 columns
/// first lost as often as it won (M = 16, N = 4096: 0.025 / 0.029). f32 was not measured
/// and keeps rows first.
fn global_order(tiling: TensorCoreTiling, dtype: StorageType) -> GlobalOrder {
    if cube_outputs(tiling).0 >= 256 && dtype != F32 {
        GlobalOrder::SwizzleCol(4)
    } else {
        GlobalOrder::SwizzleRow(4)
    }
}

/// The tensor-core instruction for `dtype` issued as `kind`, in the order `(m, n, k)`, with
/// the stage and register element type it runs in. `None` for dtypes this path does not take.
pub fn instruction(dtype: StorageType, kind: TileKind) -> Option<((u32, u32, u32), StorageType)> {
    let n = match kind {
        TileKind::Wmma => 16,
        TileKind::MmaSync => 8,
    };
    match dtype {
        StorageType::Scalar(ElemType::Float(FloatKind::F32)) => Some((
            (16, n, 8),
            StorageType::Scalar(ElemType::Float(FloatKind::TF32)),
        )),
        StorageType::Scalar(ElemType::Float(FloatKind::F16 | FloatKind::BF16)) => {
            Some(((16, n, 16), dtype))
        }
        _ => None,
    }
}

/// Whether a tensor's batches follow each other in memory in order, as a TMA descriptor
/// describes them: no batch dim stored inside a row, none broadcast, none swapped.
pub fn batches_in_order(strides: &cubecl::zspace::Strides) -> bool {
    !matches!(
        matrix_batch_layout(strides, None),
        MatrixBatchLayout::MildlyPermuted {
            batch_swap: true,
            ..
        } | MatrixBatchLayout::HighlyPermuted
    )
}

/// Whether TMA and plain loads give the same bits for `dtype` (f16, bf16). In f32 they do
/// not: the tensor cores read TF32, and the operands reach them by different conversions
/// (on an H100 every output of a 13 x 7 x 131 product differed, all of them within the
/// TF32 bound). The router therefore keeps M out of the loader choice in
/// f32 ([`super::launch::choose_path`]).
pub fn loaders_agree(dtype: StorageType) -> bool {
    forms_agree(dtype)
}

/// Whether the two instruction forms give the same bits for `dtype` (f16, bf16).
pub fn forms_agree(dtype: StorageType) -> bool {
    matches!(
        dtype,
        StorageType::Scalar(ElemType::Float(FloatKind::F16 | FloatKind::BF16))
    )
}

/// The form `tiling` runs in for `dtype` on this runtime, `None` where the runtime has the
/// instruction in neither form. Where the forms agree, the tiling's own form (the faster one
/// in the sweep) or else the other; where they do not (TF32), `mma.sync` for every tiling,
/// or WMMA for every tiling on a runtime without it.
pub fn form_for<R: Runtime>(
    client: &ComputeClient<R>,
    dtype: StorageType,
    tiling: TensorCoreTiling,
) -> Option<TileKind> {
    let preferred = if forms_agree(dtype) {
        tiling.kind
    } else {
        TileKind::MmaSync
    };
    let other = match preferred {
        TileKind::Wmma => TileKind::MmaSync,
        TileKind::MmaSync => TileKind::Wmma,
    };
    [preferred, other]
        .into_iter()
        .find(|&kind| is_supported(client, dtype, kind))
}

/// Whether the runtime behind `client` has the tensor-core instruction for `dtype` as `kind`.
pub fn is_supported<R: Runtime>(
    client: &ComputeClient<R>,
    dtype: StorageType,
    kind: TileKind,
) -> bool {
    let Some(((m, n, k), register)) = instruction(dtype, kind) else {
        return false;
    };
    let config = MmaConfig {
        a_type: register,
        b_type: register,
        cd_type: F32,
        m,
        n,
        k,
    };
    let matmul = &client.properties().features.matmul;
    let listed = match kind {
        TileKind::Wmma => matmul.cmma.contains(&config),
        TileKind::MmaSync => matmul.mma.contains(&config),
    };
    listed && client.properties().hardware.plane_size_max == 32
}

/// Launches `out = lhs @ rhs` on tensor cores with `tiling` and `loader`, plus `bias[n]`
/// on every row when given (added to the f32 accumulator before the one rounding to
/// `dtype`, see [`super::bias`]). The caller has checked shapes, that [`is_supported`]
/// holds, that `out` is contiguous with K > 0, and that `bias` is a contiguous `[N]` of
/// `dtype`.
#[allow(clippy::too_many_arguments)]
pub fn launch<R: Runtime>(
    client: &ComputeClient<R>,
    lhs: TensorBinding<R>,
    rhs: TensorBinding<R>,
    bias: Option<TensorBinding<R>>,
    out: TensorBinding<R>,
    dtype: StorageType,
    tiling: TensorCoreTiling,
    loader: Loader,
) -> Result<(), MatmulSetupError> {
    let (_, register) = instruction(dtype, tiling.kind)
        .expect("tensor_core::launch called for an unsupported dtype");
    // The blueprint below is fitted to the operands as given. cubek copies batches stored
    // out of order into another layout before it loads them, which the blueprint then no
    // longer fits (TMA boxes overrun the stages). The router
    // (`launch_matmul_on`) copies such operands into aligned rows first.
    if !batches_in_order(&lhs.strides) || !batches_in_order(&rhs.strides) {
        return Err(MatmulSetupError::InvalidConfig(Box::new(
            "operands with batches out of order: copy them into aligned rows first",
        )));
    }
    // A forced blueprint runs its registers in the *global* dtype (cubek's Forced routines
    // skip `adjust_dtypes`), so f32 operands are declared as TF32 globally: same 4-byte
    // storage, and the tensor cores read them as TF32 whichever loader staged them. With a
    // bias the output is declared f32: cubek then hands the bias view the accumulator
    // itself. The accumulator is f32 either way (cubek accumulates f16 and bf16 in f32).
    let globals = MatmulGlobalElems {
        lhs: register,
        rhs: register,
        out: if bias.is_some() { F32 } else { dtype },
    };
    // 32-bit offsets where every buffer allows them, as cubek's `launch_ref` decides (the
    // vLLM's `A_LARGE`/`B_LARGE`/`C_LARGE`); counted in the stored dtypes.
    let address_type = [&lhs, &rhs, &out]
        .into_iter()
        .chain(bias.as_ref())
        .map(|t| t.required_address_type(dtype.size()))
        .max()
        .unwrap_or(AddressType::U64);
    let problem = MatmulProblem::from_shapes_and_strides(
        lhs.shape.clone(),
        rhs.shape.clone(),
        out.shape.clone(),
        lhs.strides.clone(),
        rhs.strides.clone(),
        out.strides.clone(),
        globals.clone(),
        address_type,
        None,
        None,
    )?;
    let blueprint = blueprint(client, &problem, dtype, register, tiling, loader);
    let Some(bias) = bias else {
        let mut elems = MatmulElems::from_globals(&globals);
        use BlueprintStrategy::Forced;
        let strategy = match (loader, tiling.kind) {
            (Loader::Tma, TileKind::Wmma) => Strategy::DoubleTmaCmma(Forced(blueprint)),
            (Loader::Tma, TileKind::MmaSync) => Strategy::DoubleTmaMma(Forced(blueprint)),
            (Loader::SpecializedTma, TileKind::Wmma) => {
                Strategy::SpecializedTmaCmma(Forced(blueprint))
            }
            (Loader::SpecializedTma, TileKind::MmaSync) => {
                Strategy::SpecializedTmaMma(Forced(blueprint))
            }
            (Loader::Cyclic, TileKind::Wmma) => Strategy::DoubleCyclicCmma(Forced(blueprint)),
            (Loader::Cyclic, TileKind::MmaSync) => Strategy::DoubleCyclicMma(Forced(blueprint)),
        };
        return cubek::matmul::launch::launch_ref(
            &strategy,
            client,
            InputBinding::new(lhs, register),
            InputBinding::new(rhs, register),
            out,
            &mut elems,
        );
    };
    let operands = BiasedOperands {
        lhs: InputBinding::new(lhs, register),
        rhs: InputBinding::new(rhs, register),
        bias,
        out,
        problem,
        blueprint,
    };
    // The output and bias tensors are typed with one of the dtypes cubek's kernel defines:
    // the operands' for f16 and bf16, the accumulator's for f32 (whose operands are TF32).
    match (loader, dtype == F32) {
        (Loader::Tma, false) => {
            launch_biased_tma::<R, TmaDoubleBufferingAlgorithm, Lhs>(client, operands)
        }
        (Loader::Tma, true) => {
            launch_biased_tma::<R, TmaDoubleBufferingAlgorithm, Acc>(client, operands)
        }
        (Loader::SpecializedTma, false) => {
            launch_biased_tma::<R, SpecializedAlgorithm, Lhs>(client, operands)
        }
        (Loader::SpecializedTma, true) => {
            launch_biased_tma::<R, SpecializedAlgorithm, Acc>(client, operands)
        }
        (Loader::Cyclic, false) => {
            launch_biased_plain::<R, CyclicDoubleBufferingAlgorithm, Lhs>(client, operands)
        }
        (Loader::Cyclic, true) => {
            launch_biased_plain::<R, CyclicDoubleBufferingAlgorithm, Acc>(client, operands)
        }
    }
}

/// The forced blueprint of `tiling` with `loader` for `problem`.
fn blueprint<R: Runtime>(
    client: &ComputeClient<R>,
    problem: &MatmulProblem,
    dtype: StorageType,
    register: StorageType,
    tiling: TensorCoreTiling,
    loader: Loader,
) -> TilingBlueprint {
    let ((tm, tn, tk), _) = instruction(dtype, tiling.kind)
        .expect("tensor_core::launch called for an unsupported dtype");
    let (pm, pn16, pk) = tiling.partition;
    // The partition counts 16-wide output blocks; an `mma.sync` tile is 8 wide.
    let pn = pn16 * 16 / tn;
    let (sm, sn) = tiling.stage;
    let scheme = TilingScheme::builder()
        .with_tile_size(TileSize::new(tm, tn, tk))
        .with_partition_size(PartitionSize::new(pm, pn, pk))
        .with_stage_size(StageSize::new(sm, sn, 1))
        .build()
        .expect("the tilings in this module are complete");
    // Partition double buffering alternates fragments along N; with one tile along N there
    // is nothing to alternate and cubek refuses it. Either way each accumulator sees the
    // same K chain.
    let buffering = if pn < 2 {
        PartitionBuffering::Single
    } else {
        PartitionBuffering::Double
    };
    let tile_kind = match tiling.kind {
        TileKind::Wmma => TileMatmulKind::Cmma,
        TileKind::MmaSync => TileMatmulKind::Mma,
    };
    let mut builder = TilingBlueprint::builder(tile_kind, scheme, 32, problem)
        .partition_buffering(buffering)
        .hypercube_blueprint(
            HypercubeBlueprint::builder()
                .global_order(global_order(tiling, dtype))
                .build(),
        );
    if tile_kind.should_swizzle(client) {
        builder = builder.shared_swizzle(swizzle(problem, &scheme, register));
    }
    if loader == Loader::SpecializedTma {
        builder = builder.load_specialization_config(LoadFlows {
            lhs: InputLoadFlow::LoadOnly,
            rhs: InputLoadFlow::LoadOnly,
        });
    }
    builder.build()
}

/// What a biased launch needs besides the routine.
struct BiasedOperands<R: Runtime> {
    lhs: InputBinding<R>,
    rhs: InputBinding<R>,
    bias: TensorBinding<R>,
    out: TensorBinding<R>,
    problem: MatmulProblem,
    blueprint: TilingBlueprint,
}

/// Vector sizes as cubek's `launch_ref` and `launch_ref_tma` pick them, for an f32 output.
fn biased_vector_sizes(
    available: AvailableVectorSizes,
    problem: &MatmulProblem,
) -> Result<MatmulVectorSizes, MatmulSetupError> {
    available
        .filter_lhs_with_tensor(&problem.lhs_strides, &problem.lhs_shape, problem.lhs_layout)
        .filter_rhs_with_tensor(&problem.rhs_strides, &problem.rhs_shape, problem.rhs_layout)
        .filter_out_with_tensor(&problem.out_strides, &problem.out_shape)
        .pick_max()
}

/// The biased matmul with TMA-staged operands under routine `A`, output typed as `O`.
fn launch_biased_tma<R, A, O>(
    client: &ComputeClient<R>,
    operands: BiasedOperands<R>,
) -> Result<(), MatmulSetupError>
where
    R: Runtime,
    A: Routine<(), Blueprint = TilingBlueprint>,
    O: Numeric,
{
    let available = AvailableVectorSizes::from_type_size_tma(client, F32.size());
    let vector_sizes = biased_vector_sizes(available, &operands.problem)?;
    let settings = A::device_settings(client, vector_sizes);
    let expand = A::expand_blueprint(
        &operands.problem,
        &settings,
        &BlueprintStrategy::Forced(operands.blueprint),
    )?;
    let info = A::prepare(&operands.problem, &settings, expand)?;
    let input = <TensorMapInputs<Vector<Lhs, LhsSize>, Vector<Rhs, RhsSize>, Vector<Acc, AccSize>> as ConcreteInputsFactory<A>>::create(
        operands.lhs,
        operands.rhs,
        &info.blueprint,
        &operands.problem,
        &info.vector_sizes,
        &info.dtypes,
    );
    let output = biased_output(
        operands.out,
        operands.bias,
        &info.blueprint,
        &operands.problem,
        &info.vector_sizes,
    );
    cubek::matmul::launch::launch_kernel::<TmaBiasArgs<O>, R, A>(client, input, output, (), info)
}

/// The biased matmul with plainly loaded operands under routine `A`, output typed as `O`.
fn launch_biased_plain<R, A, O>(
    client: &ComputeClient<R>,
    operands: BiasedOperands<R>,
) -> Result<(), MatmulSetupError>
where
    R: Runtime,
    A: Routine<(), Blueprint = TilingBlueprint>,
    O: Numeric,
{
    // `launch` has refused batches stored out of order, so the operands are loaded as the
    // problem describes them.
    let register = operands.problem.global_dtypes.lhs;
    let problem = operands.problem;
    let (lhs, rhs) = (operands.lhs.data().clone(), operands.rhs.data().clone());
    let available =
        AvailableVectorSizes::from_type_sizes(client, register.size(), register.size(), F32.size());
    let vector_sizes = biased_vector_sizes(available, &problem)?;
    let settings = A::device_settings(client, vector_sizes);
    let expand = A::expand_blueprint(
        &problem,
        &settings,
        &BlueprintStrategy::Forced(operands.blueprint),
    )?;
    let info = A::prepare(&problem, &settings, expand)?;
    let input = plain_inputs(lhs, rhs, &info.blueprint, &problem, &info.vector_sizes);
    let output = biased_output(
        operands.out,
        operands.bias,
        &info.blueprint,
        &problem,
        &info.vector_sizes,
    );
    cubek::matmul::launch::launch_kernel::<PlainBiasArgs<O>, R, A>(client, input, output, (), info)
}

/// Shared-memory swizzle for `ldmatrix` reads without bank conflicts: 16-byte chunks are
/// permuted within the contiguous extent of a stage row, as cubek's own selector does.
fn swizzle(problem: &MatmulProblem, scheme: &TilingScheme, stage: StorageType) -> SwizzleModes {
    let mode = |layout: MatrixLayout, row_major_dim: u32, col_major_dim: u32| {
        let dim = match layout {
            MatrixLayout::RowMajor => row_major_dim,
            MatrixLayout::ColMajor => col_major_dim,
        };
        select_swizzle(dim as usize, stage, 16 / stage.size())
    };
    SwizzleModes {
        lhs: mode(
            problem.lhs_layout,
            scheme.elements_per_stage_along_k(),
            scheme.elements_per_stage_along_m(),
        ),
        rhs: mode(
            problem.rhs_layout,
            scheme.elements_per_stage_along_n(),
            scheme.elements_per_stage_along_k(),
        ),
        acc: SwizzleMode::None,
        out: SwizzleMode::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HALF: [StorageType; 2] = [
        StorageType::Scalar(ElemType::Float(FloatKind::F16)),
        StorageType::Scalar(ElemType::Float(FloatKind::BF16)),
    ];

    /// The suite compares `tilings_for(dtype)` bitwise; a tiling the router can reach but
    /// that list misses would go untested.
    #[test]
    fn the_router_picks_only_listed_tilings_and_lists_each_one_for_some_dtype() {
        for dtype in HALF.into_iter().chain([F32]) {
            for m in [0, 1, 16, 17, 64, 65, 256, 257, 1024, 1 << 20] {
                for n in [1, 112, 4096, 14336] {
                    for sms in [None, Some(1), Some(132)] {
                        let tiling = tiling_for(m, n, 1, dtype, sms);
                        assert!(
                            tilings_for(dtype).contains(&tiling),
                            "{dtype:?} M = {m} N = {n}"
                        );
                    }
                }
            }
        }
        for tiling in TILINGS {
            let listed = HALF
                .into_iter()
                .chain([F32])
                .any(|dtype| tilings_for(dtype).contains(&tiling));
            assert!(listed, "{} is never routed", tiling.name);
        }
    }

    #[test]
    fn f32_decode_takes_its_own_tilings() {
        let sms = Some(132);
        assert_eq!(tiling_for(64, 4096, 1, F32, sms), SKINNY_TF32);
        assert_eq!(tiling_for(64, 14336, 1, F32, sms), SKINNY_TF32_WIDE);
        assert_eq!(tiling_for(64, 14336, 1, F32, None), SKINNY_TF32);
        assert_eq!(tiling_for(17, 4096, 3, F32, sms), SKINNY_TF32_WIDE); // 96 cubes
        assert_eq!(tiling_for(64, 14336, 1, HALF[1], sms), SKINNY);
        assert_eq!(tiling_for(64, 4096, 1, HALF[1], sms), SKINNY);
        assert_eq!(tiling_for(16, 4096, 1, F32, sms), NARROW_TF32);
        assert_eq!(tiling_for(1, 4096, 1, HALF[0], sms), NARROW);
        assert_eq!(tiling_for(257, 4096, 1, F32, sms), WIDE);
    }

    /// On an H100, columns first helped 256-row cubes in bf16 and was a coin toss for the
    /// smaller ones; f32 was not measured.
    #[test]
    fn only_256_row_half_cubes_go_down_columns() {
        for dtype in HALF {
            assert_eq!(global_order(WIDE, dtype), GlobalOrder::SwizzleCol(4));
            assert_eq!(global_order(WIDE_N112, dtype), GlobalOrder::SwizzleCol(4));
            for tiling in [NARROW, SKINNY, MEDIUM] {
                assert_eq!(global_order(tiling, dtype), GlobalOrder::SwizzleRow(4));
            }
        }
        assert_eq!(global_order(WIDE, F32), GlobalOrder::SwizzleRow(4));
    }

    /// The shapes of the [`WIDE_N112`] measurements (H100, 132 multiprocessors): 112-wide
    /// cubes only where they save a wave.
    #[test]
    fn wide_problems_take_112_columns_only_where_that_saves_a_wave() {
        let bf16 = HALF[1];
        let sms = Some(132);
        assert_eq!(cube_outputs(WIDE), (256, 128));
        assert_eq!(cube_outputs(WIDE_N112), (256, 112));
        assert_eq!(tiling_for(1024, 14336, 1, bf16, sms), WIDE_N112);
        assert_eq!(tiling_for(1024, 14336, 1, HALF[0], sms), WIDE_N112);
        assert_eq!(tiling_for(1024, 4096, 1, bf16, sms), WIDE);
        assert_eq!(tiling_for(4096, 4096, 1, bf16, sms), WIDE);
        assert_eq!(tiling_for(4096, 14336, 1, bf16, sms), WIDE);
        assert_eq!(tiling_for(1024, 14336, 1, F32, sms), WIDE);
        assert_eq!(tiling_for(1024, 14336, 1, bf16, None), WIDE);
    }
}
