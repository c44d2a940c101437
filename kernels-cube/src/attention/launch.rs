//! Host side of the invariant attention: argument checks, scratch, slabs and the grid.

use core::fmt;

use cubecl::prelude::*;

use super::combine::{attention_combine_kernel, combine_cols};
use super::decode::{
    attention_decode_partials_kernel, decode_shared_words, decode_value_rows, DECODE_STAGE_WORDS,
};
use super::kernel::{
    attention_partials_kernel, ExtentsLaunch, COMBINE_UNITS, CUBE_UNITS, FLAG_BIAS, FLAG_CAUSAL,
    FLAG_MASK, FLAG_SOFTCAP, PIECE,
};
use super::tensor_core::{self, attention_mma_partials_kernel, Staging, TILE_Q};
use super::{BLOCK_K, BLOCK_Q, KEY_SPLIT};
use crate::layout::{contiguous_strides, cube_count};

/// The launch signature both partials kernels share (prefill and decode mappings).
type PartialsLaunch<R> = unsafe fn(
    &ComputeClient<R>,
    CubeCount,
    CubeDim,
    AddressType,
    TensorArg<R>,
    TensorArg<R>,
    TensorArg<R>,
    TensorArg<R>,
    TensorArg<R>,
    ArrayArg<R>,
    ArrayArg<R>,
    ExtentsLaunch<R>,
    f32,
    f32,
    u32,
    usize,
    usize,
    StorageType,
);

/// Largest head dim (of queries/keys and of values): a thread keeps `d_v / 16` accumulators
/// and a cube a block of queries in f32 shared memory (16 KiB at 256).
pub const MAX_HEAD_DIM: usize = 256;
// The decode kernel gives each output column one thread of its cube.
const _: () = assert!(MAX_HEAD_DIM <= CUBE_UNITS);
// And each key of a chunk one score slot, `KEY_SPLIT / CUBE_UNITS` keys per thread.
const _: () = assert!(KEY_SPLIT.is_multiple_of(CUBE_UNITS));
// Its value stages hold whole blocks, even at the widest head.
const _: () = assert!(decode_value_rows(MAX_HEAD_DIM) * MAX_HEAD_DIM <= DECODE_STAGE_WORDS);

/// Upper bound on the chunk-state scratch of one launch; larger problems run in slabs of
/// query blocks.
pub const SCRATCH_BYTES: usize = 256 << 20;

/// The options that change the arithmetic (Burn's `AttentionModuleOptions`, resolved).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionOptions {
    /// Factor applied to `q . k` (Burn's default is `1 / sqrt(head_dim)`).
    pub scale: f32,
    /// `softcap * tanh(s / softcap)` when set; must be positive.
    pub softcap: Option<f32>,
    /// Causal masking aligned to the bottom-right corner (`key + seq_q <= query + seq_k`).
    pub causal: bool,
}

/// Why [`launch_attention`] refused its arguments (programming errors: the Burn layer
/// validates user input first, with messages that name the op).
#[derive(Debug, Clone, PartialEq)]
pub enum AttentionError {
    /// An operand is not a contiguous rank-4 tensor of the expected shape.
    BadOperand {
        name: &'static str,
        expected: Vec<usize>,
        shape: Vec<usize>,
        strides: Vec<usize>,
    },
    /// A head dim is 0 or larger than [`MAX_HEAD_DIM`].
    HeadDim { dim: usize, dim_v: usize },
    /// The softcap is not a positive finite number.
    Softcap(f32),
    /// The device offers less shared memory per cube than the kernel needs for this head
    /// dim (a launch would otherwise fail without an error).
    SharedMemory {
        dim: usize,
        needed: usize,
        available: usize,
    },
}

impl fmt::Display for AttentionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadOperand { name, expected, shape, strides } => write!(
                f,
                "{name} must be contiguous{} with shape {expected:?}, got shape {shape:?} strides {strides:?}",
                if matches!(*name, "mask" | "bias") { " (or a broadcast view of a contiguous tensor)" } else { "" }
            ),
            Self::HeadDim { dim, dim_v } => write!(
                f,
                "head dims must be between 1 and {MAX_HEAD_DIM}, got {dim} (query/key) and {dim_v} (value)"
            ),
            Self::Softcap(cap) => write!(f, "softcap must be positive and finite, got {cap}"),
            Self::SharedMemory { dim, needed, available } => write!(
                f,
                "head dim {dim} needs {needed} bytes of shared memory per cube, the device offers {available}"
            ),
        }
    }
}

impl std::error::Error for AttentionError {}

/// Shared memory of one partials cube of the scalar kernels, the larger of the two
/// mappings: the prefill's block of queries, piece of keys or values, scores, weights and
/// flags, and the decode's query, staging buffer and chunk of scores and flags.
pub fn shared_memory_bytes(dim: usize) -> usize {
    let prefill = BLOCK_Q * dim + BLOCK_K * (PIECE + 1) + 3 * CUBE_UNITS;
    prefill.max(decode_shared_words(dim)) * core::mem::size_of::<f32>()
}

/// Which partials kernel computes a launch, and with how many queries per group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Partials {
    /// The scalar kernels, [`BLOCK_Q`] queries per group.
    Scalar,
    /// The tensor-core kernel with this many warps (16 queries each) per group.
    TensorCore { warps: usize, staging: Staging },
}

impl Partials {
    fn block_q(self) -> usize {
        match self {
            Self::Scalar => BLOCK_Q,
            Self::TensorCore { warps, .. } => TILE_Q * warps,
        }
    }
}

pub(super) fn check_operand<R: Runtime>(
    name: &'static str,
    binding: &TensorBinding<R>,
    expected: [usize; 4],
) -> Result<(), AttentionError> {
    let shape: Vec<usize> = binding.shape.iter().copied().collect();
    let strides: Vec<usize> = binding.strides.iter().copied().collect();
    if shape != expected || strides != contiguous_strides(&expected) {
        return Err(AttentionError::BadOperand {
            name,
            expected: expected.to_vec(),
            shape,
            strides,
        });
    }
    Ok(())
}

/// A mask or bias of shape `expected` may broadcast: it must be a contiguous tensor of a
/// shape with extents 1 or `expected`'s, viewed with stride 0 along the broadcast dims
/// (what `expand` makes). The kernel then reads at most that tensor's own elements.
pub fn is_broadcast_layout(expected: &[usize], strides: &[usize]) -> bool {
    let mut contiguous = 1;
    for (&extent, &stride) in expected.iter().zip(strides).rev() {
        if extent == 1 || stride == 0 {
            continue;
        }
        if stride != contiguous {
            return false;
        }
        contiguous *= extent;
    }
    expected.len() == strides.len()
}

fn check_broadcast_operand<R: Runtime>(
    name: &'static str,
    binding: &TensorBinding<R>,
    expected: [usize; 4],
) -> Result<(), AttentionError> {
    let shape: Vec<usize> = binding.shape.iter().copied().collect();
    let strides: Vec<usize> = binding.strides.iter().copied().collect();
    if shape != expected || !is_broadcast_layout(&expected, &strides) {
        return Err(AttentionError::BadOperand {
            name,
            expected: expected.to_vec(),
            shape,
            strides,
        });
    }
    Ok(())
}

/// `softmax(q k^T * scale (softcapped, masked, biased)) v` for contiguous
/// `query [b, h, seq_q, d]`, `key [b, h, seq_k, d]`, `value [b, h, seq_k, d_v]`, optional
/// `mask` (non-zero = masked) and `bias`, both `[b, h, seq_q, seq_k]` in the operands'
/// float dtype, contiguous or broadcast views of contiguous tensors
/// ([`is_broadcast_layout`]), into the contiguous `output [b, h, seq_q, d_v]`.
#[allow(clippy::too_many_arguments)]
pub fn launch_attention<R: Runtime>(
    client: &ComputeClient<R>,
    query: TensorBinding<R>,
    key: TensorBinding<R>,
    value: TensorBinding<R>,
    mask: Option<TensorBinding<R>>,
    bias: Option<TensorBinding<R>>,
    output: TensorBinding<R>,
    options: AttentionOptions,
    dtype: StorageType,
) -> Result<(), AttentionError> {
    launch_attention_with_scratch(
        client,
        [query, key, value],
        [mask, bias],
        output,
        options,
        dtype,
        SCRATCH_BYTES,
    )
}

/// [`launch_attention`] with a chosen scratch bound, so that tests can force many slabs
/// (and show that the slab count does not change a bit).
pub fn launch_attention_with_scratch<R: Runtime>(
    client: &ComputeClient<R>,
    [query, key, value]: [TensorBinding<R>; 3],
    [mask, bias]: [Option<TensorBinding<R>>; 2],
    output: TensorBinding<R>,
    options: AttentionOptions,
    dtype: StorageType,
    scratch_bytes: usize,
) -> Result<(), AttentionError> {
    let q_shape: Vec<usize> = query.shape.iter().copied().collect();
    let k_shape: Vec<usize> = key.shape.iter().copied().collect();
    let v_shape: Vec<usize> = value.shape.iter().copied().collect();
    if q_shape.len() != 4 || k_shape.len() != 4 || v_shape.len() != 4 {
        let (name, binding, expected) = match (q_shape.len(), k_shape.len()) {
            (4, 4) => ("value", &value, [0; 4]),
            (4, _) => ("key", &key, [0; 4]),
            _ => ("query", &query, [0; 4]),
        };
        return Err(AttentionError::BadOperand {
            name,
            expected: expected.to_vec(),
            shape: binding.shape.iter().copied().collect(),
            strides: binding.strides.iter().copied().collect(),
        });
    }
    let [batch, heads, seq_q, dim] = [q_shape[0], q_shape[1], q_shape[2], q_shape[3]];
    let (seq_k, dim_v) = (k_shape[2], v_shape[3]);
    check_operand("query", &query, [batch, heads, seq_q, dim])?;
    check_operand("key", &key, [batch, heads, seq_k, dim])?;
    check_operand("value", &value, [batch, heads, seq_k, dim_v])?;
    check_operand("output", &output, [batch, heads, seq_q, dim_v])?;
    if let Some(mask) = &mask {
        check_broadcast_operand("mask", mask, [batch, heads, seq_q, seq_k])?;
    }
    if let Some(bias) = &bias {
        check_broadcast_operand("bias", bias, [batch, heads, seq_q, seq_k])?;
    }
    if dim == 0 || dim_v == 0 || dim > MAX_HEAD_DIM || dim_v > MAX_HEAD_DIM {
        return Err(AttentionError::HeadDim { dim, dim_v });
    }
    // The arithmetic is chosen by device, dtype and head dims alone (the two kernels round
    // differently); the warps of a tensor-core cube only change which cube computes a row.
    let partials = if tensor_core::is_supported(client, dtype, dim, dim_v) {
        let warps = tensor_core::warps_for(seq_q);
        let offsets = [&key, &value].map(|t| t.handle.offset_start.unwrap_or(0));
        let staging = tensor_core::staging_for(client, dim, dim_v, offsets, warps);
        Partials::TensorCore { warps, staging }
    } else {
        Partials::Scalar
    };
    let needed = match partials {
        Partials::Scalar => shared_memory_bytes(dim),
        Partials::TensorCore { staging, .. } => {
            tensor_core::shared_memory_bytes(dim, dim_v, staging)
        }
    };
    let available = client.properties().hardware.max_shared_memory_size;
    if needed > available {
        return Err(AttentionError::SharedMemory {
            dim,
            needed,
            available,
        });
    }
    let mut flags = 0;
    let mut softcap = 1.0f32;
    if let Some(cap) = options.softcap {
        if !(cap > 0.0 && cap.is_finite()) {
            return Err(AttentionError::Softcap(cap));
        }
        flags |= FLAG_SOFTCAP;
        softcap = cap;
    }
    if options.causal {
        flags |= FLAG_CAUSAL;
    }
    flags |= if mask.is_some() { FLAG_MASK } else { 0 };
    flags |= if bias.is_some() { FLAG_BIAS } else { 0 };
    if batch * heads * seq_q == 0 {
        return Ok(());
    }

    let block_q = partials.block_q();
    let q_blocks = seq_q.div_ceil(block_q);
    let chunks = seq_k.div_ceil(KEY_SPLIT);
    let total_groups = batch * heads * q_blocks;
    // Chunk states of one group: block_q queries x chunks x (m, l, acc[dim_v]).
    let group_bytes = block_q * chunks.max(1) * (dim_v + 2) * core::mem::size_of::<f32>();
    let slab_groups = (scratch_bytes / group_bytes).clamp(1, total_groups);
    let states = slab_groups * block_q * chunks.max(1);
    let stats = client.empty(states * 2 * core::mem::size_of::<f32>());
    let accs = client.empty(states * dim_v * core::mem::size_of::<f32>());

    let _span = tracing::debug_span!(
        "batch_invariant_attention",
        batch,
        heads,
        seq_q,
        seq_k,
        dim,
        dim_v,
        chunks,
        slabs = total_groups.div_ceil(slab_groups),
        flags,
        tensor_cores = partials != Partials::Scalar
    )
    .entered();

    let largest = [
        batch * heads * seq_q * dim,
        batch * heads * seq_k * dim.max(dim_v),
        batch * heads * seq_q * seq_k,
        states * dim_v,
    ];
    let address_type = AddressType::from_len(largest.into_iter().max().unwrap_or(0));
    // Absent mask and bias bind the query: the kernel never reads them (runtime flags).
    let mask = mask.unwrap_or_else(|| query.clone());
    let bias = bias.unwrap_or_else(|| query.clone());
    let mut first_group = 0;
    while first_group < total_groups {
        let groups = slab_groups.min(total_groups - first_group);
        let extents =
            || ExtentsLaunch::new(seq_q, seq_k, heads, q_blocks, chunks, first_group, groups);
        unsafe {
            if chunks > 0 {
                let operands =
                    || [&query, &key, &value, &mask, &bias].map(|t| t.clone().into_tensor_arg());
                let scratch = || {
                    [(&stats, 2), (&accs, dim_v)]
                        .map(|(handle, per)| ArrayArg::from_raw_parts(handle.clone(), states * per))
                };
                match partials {
                    Partials::TensorCore { warps, staging } => {
                        let [q, k, v, mask, bias] = operands();
                        let [stats, accs] = scratch();
                        attention_mma_partials_kernel::launch_unchecked::<R>(
                            client,
                            cube_count(client, groups * chunks),
                            CubeDim::new_2d(tensor_core::PLANE as u32, warps as u32),
                            address_type,
                            q,
                            k,
                            v,
                            mask,
                            bias,
                            stats,
                            accs,
                            extents(),
                            options.scale,
                            softcap,
                            flags,
                            dim,
                            dim_v,
                            warps,
                            staging != Staging::Plain,
                            staging == Staging::Double,
                            dtype,
                        );
                    }
                    Partials::Scalar => {
                        // A decode step runs the same operations in another thread mapping.
                        let (scalar, cube_dim) = if seq_q == 1 {
                            (
                                attention_decode_partials_kernel::launch_unchecked::<R>
                                    as PartialsLaunch<R>,
                                CubeDim::new_1d(CUBE_UNITS as u32),
                            )
                        } else {
                            (
                                attention_partials_kernel::launch_unchecked::<R>
                                    as PartialsLaunch<R>,
                                CubeDim::new_2d(BLOCK_K as u32, (CUBE_UNITS / BLOCK_K) as u32),
                            )
                        };
                        let [q, k, v, mask, bias] = operands();
                        let [stats, accs] = scratch();
                        scalar(
                            client,
                            cube_count(client, groups * chunks),
                            cube_dim,
                            address_type,
                            q,
                            k,
                            v,
                            mask,
                            bias,
                            stats,
                            accs,
                            extents(),
                            options.scale,
                            softcap,
                            flags,
                            dim,
                            dim_v,
                            dtype,
                        );
                    }
                }
            }
            attention_combine_kernel::launch_unchecked(
                client,
                cube_count(
                    client,
                    (groups * block_q * (dim_v / combine_cols(dim_v))).div_ceil(COMBINE_UNITS),
                ),
                CubeDim::new_1d(COMBINE_UNITS as u32),
                address_type,
                ArrayArg::from_raw_parts(stats.clone(), states * 2),
                ArrayArg::from_raw_parts(accs.clone(), states * dim_v),
                output.clone().into_tensor_arg(),
                extents(),
                dim_v,
                block_q,
                dtype,
            );
        }
        first_group += groups;
    }
    Ok(())
}
