//! Batched matmul `out[b] = lhs[b] @ rhs[b]` in a batch-invariant order.
//!
//! # The fixed order
//!
//! Every output element is one accumulator in f32 (f32 accumulation for f16/bf16 inputs too)
//! that walks K from 0 upwards in fixed steps, one step after the other; there is no split-K,
//! no second accumulator and no combine. What a "step" is depends on the runtime and the
//! dtype only, never on M, N, the batch or the layout:
//!
//! * **Tensor cores** ([`MatmulPath::TensorCore`], runtimes whose `cmma` or `mma` feature
//!   lists the instruction): one 16-deep hardware MMA per step for f16 and bf16, and one
//!   8-deep MMA in TF32 for f32 (the precision class of Burn's own f32 matmul on the same
//!   GPU, see docs/contract.md). The step's internal summation is the hardware's,
//!   identical for every row and column of the fragment. The kernel is cubek's tiled matmul
//!   driven by a *forced* blueprint ([`tensor_core`]), so no heuristic and no autotuner
//!   picks anything: the tile instruction, the dtypes and the K walk are constants here.
//!   [`MatmulPath::Pipelined`] is our own `mma.sync` kernel for f16 and bf16
//!   ([`pipelined`]) with the same K walk and instruction, hence the same bits; the router
//!   takes it for decode (M <= 64), where it is faster (see that module's "Where it
//!   stands"), when it can read both operands as stored.
//! * **Portable** ([`MatmulPath::Portable`], everything else, e.g. lavapipe; K = 0
//!   everywhere; f32 with [`F32Precision::Ieee`]): our own persistent kernel
//!   ([`kernel::matmul_portable_kernel()`], or for up to [`PORTABLE_ROWS_MAX_M`] rows
//!   [`kernel::matmul_portable_rows_kernel()`]), one f32 multiply-add per k, in increasing
//!   k, on the operands as stored: IEEE f32 products and sums, no TF32 rounding of the
//!   operands. Its tilings decide only which thread computes an output.
//!
//! # What may change with the shape, and why it is harmless
//!
//! The tensor-core path has four or five tilings of the *same* instruction per dtype
//! ([`tilings_for`]), chosen by M: 16x64 outputs per cube for at most [`NARROW_MAX_M`] rows
//! (decode), 32x64 up to [`SKINNY_MAX_M`] (16x32 and 64x32 in f32, whose stages hold twice
//! the bytes, or 64x128 where such cubes fill half the device), 128x64 up to
//! [`MEDIUM_MAX_M`], 256x128 above, or 256x112 in f16 and bf16 where that leaves a less
//! empty last wave of cubes ([`tiling_for`]); the smaller ones spread a small problem over
//! more cubes, the deep-K ones keep the weight's loads in flight. They differ only in which
//! cube and which warp computes a fragment and how tiles are staged through shared memory; the instruction, the K steps and the accumulation order are the
//! same, and the tests compare them all bitwise. The same holds for the loader in f16 and
//! bf16 (TMA, with or without load-only warps, or plain loads: cubek refuses TMA for some
//! strides) and for the form the instruction is issued in ([`TileKind`]: WMMA fragments or
//! `mma.sync`, the same hardware MMA), and for the kernel itself: decode in f16 or bf16
//! runs the pipelined kernel where it reads both operands as stored, other rows cubek's
//! routine, both one m16n8k16 MMA per 16 K entries in increasing K into one f32
//! accumulator (the suite compares them bitwise on the GPU). In f32 the loaders give
//! different TF32 bits ([`tensor_core::loaders_agree`]), so the loader is chosen by what
//! does not change with M ([`launch::choose_path`]).

pub mod bias;
pub mod cpu_reference;
pub mod kernel;
pub mod launch;
pub mod pipelined;
pub mod tensor_core;

pub use kernel::{
    PortableLayout, PortableTiling, PORTABLE_NARROW, PORTABLE_ROWS, PORTABLE_ROWS_32,
    PORTABLE_TILINGS, PORTABLE_WIDE,
};
pub use launch::{
    launch_matmul, portable_tiling_for, MatmulError, MatmulLaunch, MatmulPath, PORTABLE_ROWS_MAX_M,
};
pub use pipelined::{
    PipelinedTiling, TmaReads, PIPELINED_TILINGS, PIPE_MEDIUM, PIPE_MEDIUM_TMA, PIPE_NARROW,
    PIPE_NARROW_TMA, PIPE_NARROW_TMA_WIDE, PIPE_NARROW_WIDE, PIPE_SKINNY, PIPE_SKINNY_TMA,
    PIPE_SKINNY_TMA_WIDE, PIPE_SQUARE_TMA,
};
pub use tensor_core::{
    tiling_for, tilings_for, Loader, TensorCoreTiling, TileKind, MEDIUM, NARROW, NARROW_TF32,
    SKINNY, SKINNY_TF32, SKINNY_TF32_WIDE, TILINGS, WIDE, WIDE_N112,
};

/// How an f32 matmul multiplies on a runtime with tensor cores.
///
/// TF32 is the default: Burn's own f32 matmul and vLLM's Triton matmul (`tl.dot`'s default)
/// are in that class, and it runs on the tensor cores. `Ieee` runs the portable kernel: the
/// operands as stored, one IEEE f32 multiply-add per k (what torch's `mm` gives with TF32
/// off), at the speed of the CUDA cores. Both are batch invariant; their bits differ from
/// each other. Other dtypes, and runtimes without tensor cores, ignore the choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum F32Precision {
    #[default]
    Tf32,
    Ieee,
}

/// Problems with at most this many rows (M, per batch) use the [`NARROW`] tiling
/// ([`NARROW_TF32`] in f32).
pub const NARROW_MAX_M: usize = 16;
/// Problems with at most this many rows (and more than [`NARROW_MAX_M`]) use [`SKINNY`]
/// ([`SKINNY_TF32`] or [`SKINNY_TF32_WIDE`] in f32).
pub const SKINNY_MAX_M: usize = 64;
/// Problems with at most this many rows (and more than [`SKINNY_MAX_M`]) use [`MEDIUM`].
pub const MEDIUM_MAX_M: usize = 256;
