//! The tensor-core path: cubek's tiled matmul with a forced blueprint.
//!
//! cubek 0.2 has no split-K and walks K in increasing tile order with one accumulator per
//! fragment; what Burn's autotuner varies between problem sizes is the tile instruction
//! (cmma, mma, unit or gemv kernels) and, for f32, whether TF32 is used. Forcing the
//! blueprint fixes both. Everything this module lets vary (stage and partition sizes, the
//! loader) changes how tiles travel to the tensor cores, not the arithmetic.

use cubecl::features::MmaConfig;
use cubecl::ir::{ElemType, FloatKind};
use cubecl::prelude::*;
use cubek::matmul::components::stage::PartitionBuffering;
use cubek::matmul::components::tile::TileMatmulKind;
use cubek::matmul::definition::{
    MatmulElems, MatmulGlobalElems, MatmulProblem, MatmulSetupError, TilingBlueprint, TilingScheme,
};
use cubek::matmul::launch::Strategy;
use cubek::matmul::routines::BlueprintStrategy;
use cubek::std::cube_count::{GlobalOrder, HypercubeBlueprint};
use cubek::std::{InputBinding, PartitionSize, StageSize, TileSize};

const F32: StorageType = StorageType::Scalar(ElemType::Float(FloatKind::F32));

/// How operand tiles reach shared memory. Only speed depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Loader {
    /// Tensor Memory Accelerator copies, double buffered (sm_90).
    Tma,
    /// Plain cooperative loads, double buffered; accepted for any strides.
    Cyclic,
}

/// The part of a blueprint that may change with the problem: how many instruction tiles
/// one warp (`partition`, in M, N and K tiles) and one cube (`stage`, in partitions along M
/// and N) cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorCoreTiling {
    pub name: &'static str,
    pub partition: (u32, u32, u32),
    pub stage: (u32, u32),
}

/// 128x128 outputs per cube, four warps of 64x64, four K tiles per stage: the throughput
/// tiling, M > 256 (0.69 ms at 4096^3 in bf16 against 0.87 ms with two K tiles per stage,
/// H100 sweep of 2026-11-26 20:43 UTC).
pub const WIDE: TensorCoreTiling = TensorCoreTiling {
    name: "wide",
    partition: (4, 4, 4),
    stage: (2, 2),
};

/// 64x64 outputs per cube, four warps of 32x32, four K tiles per stage: 64 < M <= 256,
/// where the wide tiling leaves most multiprocessors idle (N/128 cubes per 128 rows).
pub const MEDIUM: TensorCoreTiling = TensorCoreTiling {
    name: "medium",
    partition: (2, 2, 4),
    stage: (2, 2),
};

/// 16x32 outputs per cube, two warps of 16x16 each taking 8 K tiles per stage: M <= 64
/// (decode), where the work is reading the weight and more, smaller cubes keep more of it
/// in flight.
pub const NARROW: TensorCoreTiling = TensorCoreTiling {
    name: "narrow",
    partition: (1, 1, 8),
    stage: (1, 2),
};

/// Every tiling the router may pick. The tests compare all of them bitwise.
pub const TILINGS: [TensorCoreTiling; 3] = [NARROW, MEDIUM, WIDE];

/// The tiling for `m` rows (per batch). Only speed depends on it.
pub fn tiling_for_m(m: usize) -> TensorCoreTiling {
    if m <= super::NARROW_MAX_M {
        NARROW
    } else if m <= super::MEDIUM_MAX_M {
        MEDIUM
    } else {
        WIDE
    }
}

/// The tensor-core instruction for `dtype`, in the order `(m, n, k)`, with the stage and
/// register element type it runs in. `None` for dtypes this path does not take.
pub fn instruction(dtype: StorageType) -> Option<((u32, u32, u32), StorageType)> {
    match dtype {
        StorageType::Scalar(ElemType::Float(FloatKind::F32)) => Some((
            (16, 16, 8),
            StorageType::Scalar(ElemType::Float(FloatKind::TF32)),
        )),
        StorageType::Scalar(ElemType::Float(FloatKind::F16 | FloatKind::BF16)) => {
            Some(((16, 16, 16), dtype))
        }
        _ => None,
    }
}

/// Whether the runtime behind `client` has the tensor-core instruction for `dtype`.
pub fn is_supported<R: Runtime>(client: &ComputeClient<R>, dtype: StorageType) -> bool {
    let Some(((m, n, k), register)) = instruction(dtype) else {
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
    client.properties().features.matmul.cmma.contains(&config)
        && client.properties().hardware.plane_size_max == 32
}

/// Launches `out = lhs @ rhs` on tensor cores with `tiling` and `loader`. The caller has
/// checked shapes, that [`is_supported`] holds, and that `out` is contiguous with K > 0.
pub fn launch<R: Runtime>(
    client: &ComputeClient<R>,
    lhs: TensorBinding<R>,
    rhs: TensorBinding<R>,
    out: TensorBinding<R>,
    dtype: StorageType,
    tiling: TensorCoreTiling,
    loader: Loader,
) -> Result<(), MatmulSetupError> {
    let ((tm, tn, tk), register) =
        instruction(dtype).expect("tensor_core::launch called for an unsupported dtype");
    // A forced blueprint runs its registers in the *global* dtype (cubek's Forced routines
    // skip `adjust_dtypes`), so f32 operands are declared as TF32 globally: same 4-byte
    // storage, and the tensor cores read them as TF32 whichever loader staged them.
    let globals = MatmulGlobalElems {
        lhs: register,
        rhs: register,
        out: dtype,
    };
    let mut elems = MatmulElems::from_globals(&globals);

    let problem = MatmulProblem::from_shapes_and_strides(
        lhs.shape.clone(),
        rhs.shape.clone(),
        out.shape.clone(),
        lhs.strides.clone(),
        rhs.strides.clone(),
        out.strides.clone(),
        globals,
        AddressType::U64,
        None,
        None,
    )?;
    let (pm, pn, pk) = tiling.partition;
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
    let blueprint = TilingBlueprint::builder(TileMatmulKind::Cmma, scheme, 32, &problem)
        .partition_buffering(buffering)
        .hypercube_blueprint(
            HypercubeBlueprint::builder()
                .global_order(GlobalOrder::SwizzleRow(4))
                .build(),
        )
        .build();
    let strategy = match loader {
        Loader::Tma => Strategy::DoubleTmaCmma(BlueprintStrategy::Forced(blueprint)),
        Loader::Cyclic => Strategy::DoubleCyclicCmma(BlueprintStrategy::Forced(blueprint)),
    };
    cubek::matmul::launch::launch_ref(
        &strategy,
        client,
        InputBinding::new(lhs, register),
        InputBinding::new(rhs, register),
        out,
        &mut elems,
    )
}
