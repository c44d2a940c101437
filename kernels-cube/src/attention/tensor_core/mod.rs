//! The tensor-core partials kernel: f16/bf16 attention on CUDA's `mma.sync` (m16n8k16,
//! f32 accumulators), for head dims up to [`MAX_MMA_HEAD_DIM`].
//!
//! It keeps the structure of the fixed order (chunks of [`KEY_SPLIT`] keys at absolute
//! positions, an online softmax per chunk over blocks in order, the chunk states merged in
//! chunk order by the same combine kernel) with blocks of [`MMA_BLOCK_K`] (64) keys, and
//! changes how a block is computed:
//!
//! - a score is one `mma` chain over the head dim, 16 dims per instruction, in increasing
//!   order (zeros pad the head dim to a multiple of 16);
//! - the block's row maximum and row sum are formed across the four lanes that hold a row:
//!   each lane takes its 16 entries of the row (the sum as eight pair sums, then a tree
//!   4-2-1 over them), then one fixed butterfly (`xor 1`, then `xor 2`), the same for every
//!   row;
//! - `exp` is CUDA's `__expf` (`weight_exp`);
//! - the weights are rounded to the input dtype and `p · v` over the block's 64 keys is one
//!   `mma` chain per 8 output columns, four 16-key steps in increasing order from a zero
//!   accumulator; then `acc = acc * alpha + pv`.
//!
//! Every query row is computed by the same instructions whatever its place in the 16-row
//! tile of a warp, and the instruction computes each output row from its own input row, so
//! a decode step, which runs this kernel with one warp and its query in row 0, gives the
//! bits of the same position in a prefill. The suite checks that on the GPU (head dims 16
//! and 72/40, with and without scale, softcap and bias).
//!
//! The reductions across lanes rely on the register layout of `mma.m16n8k16` that the PTX
//! ISA fixes (a lane holds rows `lane / 4` and `lane / 4 + 8`; the four lanes of a quad share
//! them) and on the accumulator layout of two adjacent 8-column tiles being the layout of the
//! next instruction's A operand, as flash-attention kernels use it. [`is_supported`] only
//! accepts runtimes whose manual MMA has that layout (32-lane planes with the instruction).

use cubecl::cmma::MmaDefinition;
use cubecl::features::MmaConfig;
use cubecl::ir::{ElemType, FastMath, FloatKind, MatrixIdent};
use cubecl::prelude::barrier::{copy_async, Barrier};
use cubecl::prelude::*;

use crate::attention::kernel::{
    chunk_end, finish_score, Extents, FLAG_BIAS, FLAG_CAUSAL, FLAG_MASK, FLAG_SOFTCAP,
};
use crate::attention::KEY_SPLIT;

pub mod backward;
mod kernel;
mod online;
mod stage;

pub use kernel::attention_mma_partials_kernel;

/// Lanes of a plane (warp); the instruction's layout is defined for 32.
pub const PLANE: usize = 32;
/// Query rows of one warp's tile: the instruction's M.
pub const TILE_Q: usize = 16;
/// Warps of a prefill cube: 64 queries share every staged key and value. Four rather than
/// eight: at 232 registers per thread a multiprocessor holds eight warps either way, and
/// two independent cubes do not wait on each other's barriers (65-67 TFLOP/s against
/// 60-63 on the H100 prefill benchmark). It changes which cube computes a row, never how.
pub const PREFILL_WARPS: usize = 4;
/// Warps of a decode cube (one query, padded to a tile of 16 rows).
pub const DECODE_WARPS: usize = 1;

/// Warps per cube for `seq_q` queries per (batch, head): one for a decode step, else
/// [`PREFILL_WARPS`]. Only which cube computes a row depends on it.
pub const fn warps_for(seq_q: usize) -> usize {
    if seq_q == 1 {
        DECODE_WARPS
    } else {
        PREFILL_WARPS
    }
}
/// Largest head dim (query/key and value) this kernel takes: its query fragments and
/// accumulators live in registers. Wider heads run the scalar kernels.
pub const MAX_MMA_HEAD_DIM: usize = 128;
/// Padding of a staged row (elements), so that the eight rows an `ldmatrix` reads hit
/// distinct shared-memory banks. A multiple of 8: rows stay 16-byte aligned.
const ROW_PAD: usize = 8;

/// Two elements of one 32-bit fragment register.
type Pair<E> = Vector<E, Const<2>>;

/// Whether attention in `dtype` with head dims `dim` / `dim_v` runs on this kernel on the
/// runtime behind `client`. Depends on the device, the dtype and the head dims only, never
/// on batch, heads or sequence lengths, so one model always runs one arithmetic.
pub fn is_supported<R: Runtime>(
    client: &ComputeClient<R>,
    dtype: StorageType,
    dim: usize,
    dim_v: usize,
) -> bool {
    if !matches!(
        dtype,
        StorageType::Scalar(ElemType::Float(FloatKind::F16 | FloatKind::BF16))
    ) || dim > MAX_MMA_HEAD_DIM
        || dim_v > MAX_MMA_HEAD_DIM
    {
        return false;
    }
    let properties = client.properties();
    let config = MmaConfig {
        a_type: dtype,
        b_type: dtype,
        cd_type: StorageType::Scalar(ElemType::Float(FloatKind::F32)),
        m: 16,
        n: 8,
        k: 16,
    };
    properties.features.matmul.mma.contains(&config)
        && properties.hardware.plane_size_min == PLANE as u32
        && properties.hardware.plane_size_max == PLANE as u32
}

/// Keys per block of the online softmax on this kernel: the unit at which the row maximum,
/// the rescale `acc * alpha` and the row sum are taken. Part of the numerical contract of
/// the tensor-core path (the scalar kernels use [`super::BLOCK_K`]); blocks start at absolute key
/// positions `c * KEY_SPLIT + b * MMA_BLOCK_K`, so it depends on nothing but itself.
///
/// 64 rather than the scalar path's 16: the per-block work (the quad butterflies, one
/// `exp` for `alpha`, the rescale of 64 accumulators per lane) is paid once per 64 keys
/// instead of four times. With 16-key blocks `ncu` counted about 53 issued instructions per
/// `mma` and the prefill stayed at 45 TFLOP/s.
pub const MMA_BLOCK_K: usize = 64;
/// Eight-key score tiles of a block: the `n` of the score instruction.
const SCORE_TILES: usize = MMA_BLOCK_K / 8;
/// Sixteen-key steps of a block's `p · v` chain: the `k` of that instruction.
const PV_STEPS: usize = MMA_BLOCK_K / 16;
// The row sum's tree over the score tiles is spelled out for eight of them, and a chunk
// holds a whole number of blocks (so blocks start at absolute positions in every chunk).
const _: () = assert!(SCORE_TILES == 8 && KEY_SPLIT.is_multiple_of(MMA_BLOCK_K));

/// How a cube stages keys and values in shared memory. Only speed depends on it: all three
/// stage the same values (rows past the chunk's end hold copies of its last row, which the
/// kernel masks exactly as it masks any key that takes no part).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Staging {
    /// 16-byte `cp.async` copies into one of two buffers while the cube computes on the
    /// other: head dims that are multiples of 8 and 16-byte aligned rows, prefill cubes.
    Double,
    /// The same copies into one buffer, waited for before each block: decode cubes, whose
    /// one warp would otherwise hold 70 KiB of shared memory (two 64-key stages at head dim
    /// 128) and leave three warps per multiprocessor; one buffer lets twice as many cubes
    /// overlap each other's loads.
    Single,
    /// Loads and stores through registers into one buffer: any head dim or alignment.
    Plain,
}

impl Staging {
    const fn buffers(self) -> usize {
        match self {
            Self::Double => 2,
            Self::Single | Self::Plain => 1,
        }
    }
}

/// The staging for these head dims and operand offsets (bytes) on this runtime, for a cube
/// of `warps` warps.
pub fn staging_for<R: Runtime>(
    client: &ComputeClient<R>,
    dim: usize,
    dim_v: usize,
    offsets: [u64; 2],
    warps: usize,
) -> Staging {
    let aligned = dim.is_multiple_of(8)
        && dim_v.is_multiple_of(8)
        && offsets.iter().all(|o| o.is_multiple_of(16));
    if !(aligned && client.properties().features.copy_async) {
        Staging::Plain
    } else if warps > 1 {
        Staging::Double
    } else {
        Staging::Single
    }
}

/// Elements of one staging buffer: one block of keys then its values, each row padded to
/// its pitch. Every warp of the cube reads the whole block.
const fn stage_elems(dim: usize, dim_v: usize) -> usize {
    MMA_BLOCK_K * (k_pitch(dim) + v_pitch(dim_v))
}

/// Columns of a staged key row that the score chain reads: the head dim padded to the
/// 16-deep instruction.
const fn k_width(dim: usize) -> usize {
    dim.div_ceil(16) * 16
}

/// Columns of a staged value row that `p · v` reads: the value dim padded to 8-column tiles.
const fn v_width(dim_v: usize) -> usize {
    dim_v.div_ceil(8) * 8
}

/// Row pitch of staged keys: [`k_width`] plus [`ROW_PAD`]. A multiple of 8 elements, so
/// every row starts 16-byte aligned (`ldmatrix`).
const fn k_pitch(dim: usize) -> usize {
    k_width(dim) + ROW_PAD
}

/// Row pitch of staged values: [`v_width`] plus [`ROW_PAD`].
const fn v_pitch(dim_v: usize) -> usize {
    v_width(dim_v) + ROW_PAD
}

/// Shared memory of one cube, in bytes, for 16-bit inputs (the same for any warp count).
pub const fn shared_memory_bytes(dim: usize, dim_v: usize, staging: Staging) -> usize {
    staging.buffers() * stage_elems(dim, dim_v) * 2
}
