//! The combine kernel: the chunk states of one query merged in chunk order, shared by
//! every partials kernel.

use cubecl::prelude::*;

use super::kernel::*;

/// Output columns one thread of the combine kernel merges: up to four adjacent ones, so that
/// the row's index arithmetic and its chunk weights `exp(m - m')` are worked out once for
/// all of them (the same values for every column: the bits do not depend on it).
pub const fn combine_cols(dim_v: usize) -> usize {
    if dim_v.is_multiple_of(4) {
        4
    } else if dim_v.is_multiple_of(2) {
        2
    } else {
        1
    }
}

/// One thread per (query, [`combine_cols`] output columns) of the slab: merges the query's
/// chunk states in chunk order and writes `acc / l` (0 when no key took part).
#[cube(launch_unchecked, address_type = "dynamic")]
pub fn attention_combine_kernel<F: Float>(
    stats: &Array<f32>,
    accs: &Array<f32>,
    output: &mut Tensor<F>,
    ext: Extents,
    #[comptime] dim_v: usize,
    #[comptime] block_q: usize,
    #[define(F)] _dtype: StorageType,
) {
    let cols = comptime!(combine_cols(dim_v));
    let per_row = comptime!(dim_v / cols);
    let idx = CUBE_POS * comptime!(COMBINE_UNITS) + UNIT_POS as usize;
    if idx >= ext.groups * comptime!(block_q * per_row) {
        terminate!();
    }
    let c0 = (idx % per_row) * cols;
    let local_row = idx / per_row; // local_group * block_q + query_in_block
    let group = ext.first_group + local_row / block_q;
    let bh = group / ext.q_blocks;
    let row = (group % ext.q_blocks) * block_q + local_row % block_q;
    if row >= ext.seq_q {
        terminate!();
    }

    let mut have = false;
    let mut m = f32::min_value();
    let mut l = 0.0f32;
    let mut acc = Array::<f32>::new(cols);
    #[unroll]
    for j in 0..cols {
        acc[j] = 0.0;
    }
    for chunk in 0..ext.chunks {
        let slot = local_row * ext.chunks + chunk;
        let l_c = stats[2 * slot + 1];
        if l_c != 0.0 {
            let m_c = stats[2 * slot];
            let at = slot * dim_v + c0;
            if have {
                let m_new = f32::max(m, m_c);
                let a = f32::exp(m - m_new);
                let b = f32::exp(m_c - m_new);
                l = l * a + l_c * b;
                #[unroll]
                for j in 0..cols {
                    acc[j] = acc[j] * a + accs[at + j] * b;
                }
                m = m_new;
            } else {
                m = m_c;
                l = l_c;
                #[unroll]
                for j in 0..cols {
                    acc[j] = accs[at + j];
                }
                have = true;
            }
        }
    }
    let out_at = (bh * ext.seq_q + row) * dim_v + c0;
    #[unroll]
    for j in 0..cols {
        let mut out = 0.0f32;
        if have {
            out = acc[j] / l;
        }
        output[out_at + j] = F::cast_from(out);
    }
}
