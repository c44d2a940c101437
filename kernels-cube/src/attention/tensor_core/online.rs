//! The fixed-order online softmax of one block of keys: scores to weights, the row maximum
//! and sum across the four lanes of a row, `p · v` as one `mma` chain per 8 output columns,
//! and the rescaled accumulation. These functions are the order the module docs describe.

use super::*;

/// `e^x` for the weights and `alpha`: CUDA's `__expf` (`ex2.approx` of `x * log2 e`), two
/// instructions where `expf` takes about ten, 34 times per lane and block. Its relative error
/// (a few units of 2^-22 over the range a weight can take) is far below the rounding of the
/// weights to the input dtype that follows. Part of this kernel's arithmetic, the same in
/// every cube.
#[cube(fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
pub(super) fn weight_exp(x: f32) -> f32 {
    f32::exp(x)
}

/// The B fragment of a `p · v` step for one 8-column value tile: `regs[first]`,
/// `regs[first + 1]`, which hold keys `8 v + 2 (lane % 4) + e` of the step's 16 (score tile
/// `tile + v`). Values of keys that no row of the warp takes (`key_live`, indexed
/// `2 * score tile + e`) enter as zeros, so that a masked key's value (padding may hold NaN,
/// a row past the chunk is a copy) never reaches a sum as `0 * NaN`; a block that every
/// query row takes whole (`complete`, the same in every lane) skips the selects.
#[cube]
pub(super) fn value_fragment<F: Float>(
    regs: &Array<Pair<F>>,
    #[comptime] first: usize,
    key_live: &Array<u32>,
    complete: bool,
    tile: usize,
) -> Array<Pair<F>> {
    let mut bf = Array::<Pair<F>>::new(2usize);
    #[unroll]
    for v in 0..2usize {
        bf[v] = regs[first + v];
    }
    if !complete {
        #[unroll]
        for v in 0..2usize {
            let mut pair = bf[v];
            #[unroll]
            for e in 0..2usize {
                pair[e] = select(key_live[(tile + v) * 2 + e] != 0, pair[e], F::new(0.0));
            }
            bf[v] = pair;
        }
    }
    bf
}

/// `acc = acc * alpha + pv` for value tile `ct`, in each of the lane's two rows; with
/// `masked`, only in rows that took part in the block (`any`).
#[cube]
pub(super) fn rescale_add(
    acc: &mut Array<Pair<f32>>,
    pv: &Array<Pair<f32>>,
    alpha: &Array<f32>,
    any: &Array<u32>,
    ct: usize,
    #[comptime] masked: bool,
) {
    #[unroll]
    for h in 0..2usize {
        let mut cur = acc[ct * 2 + h];
        let add = pv[h];
        #[unroll]
        for e in 0..2usize {
            cur[e] = cur[e] * alpha[h] + add[e];
        }
        if comptime!(masked) {
            if any[h] != 0 {
                acc[ct * 2 + h] = cur;
            }
        } else {
            acc[ct * 2 + h] = cur;
        }
    }
}

/// `x[0] = max(x[0 .. n])` (or the minimum) by a tree (`n` a power of two); the rest of `x`
/// is clobbered. Neither depends on the order: CUDA's `max` and `min` return the other
/// operand of a NaN, and the sign of a zero maximum changes no weight (`s - m`, `m - m'` are
/// the same either way).
#[cube]
pub(super) fn extremum_tree(x: &mut Array<f32>, #[comptime] n: usize, #[comptime] max: bool) {
    let mut width = comptime!(n / 2);
    #[unroll]
    for _ in 0..comptime!(n.trailing_zeros()) {
        #[unroll]
        for i in 0..width {
            if comptime!(max) {
                x[i] = f32::max(x[i], x[i + width]);
            } else {
                x[i] = f32::min(x[i], x[i + width]);
            }
        }
        width = comptime!(width / 2);
    }
}

/// The block's softmax step for the lane's two rows: the row maximum and sum across the
/// quad, the weights `p` (as the A operands of `p · v`, rounded to the input dtype) and
/// `alpha`, and the chunk state's `m`, `l`. With `masked`, keys that are not `live` and rows
/// that are not `any` take no part; without, every key and row does.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn block_weights<F: Float>(
    s: &Array<f32>,
    live: &Array<u32>,
    any: &Array<u32>,
    m: &mut Array<f32>,
    l: &mut Array<f32>,
    pa: &mut Array<Pair<F>>,
    alpha: &mut Array<f32>,
    #[comptime] masked: bool,
) {
    let mut p = Array::<f32>::new(comptime!(SCORE_TILES * 4));
    #[unroll]
    for h in 0..2usize {
        // The lane's 16 entries of the row, then `xor 1`, `xor 2`.
        let mut x = Array::<f32>::new(comptime!(SCORE_TILES * 2));
        #[unroll]
        for nt in 0..SCORE_TILES {
            #[unroll]
            for e in 0..2usize {
                let i = nt * 4 + h * 2 + e;
                if comptime!(masked) {
                    x[nt * 2 + e] = select(live[i] != 0, s[i], f32::min_value());
                } else {
                    x[nt * 2 + e] = s[i];
                }
            }
        }
        extremum_tree(&mut x, comptime!(SCORE_TILES * 2), true);
        let mut block_max = x[0usize];
        block_max = f32::max(block_max, plane_shuffle_xor(block_max, 1u32));
        block_max = f32::max(block_max, plane_shuffle_xor(block_max, 2u32));
        let m_new = f32::max(m[h], block_max);
        #[unroll]
        for nt in 0..SCORE_TILES {
            #[unroll]
            for e in 0..2usize {
                let i = nt * 4 + h * 2 + e;
                if comptime!(masked) {
                    p[i] = select(live[i] != 0, weight_exp(s[i] - m_new), 0.0f32);
                } else {
                    p[i] = weight_exp(s[i] - m_new);
                }
            }
        }
        // The lane's part of the row sum: pairs of keys, then a tree over the tiles.
        let mut part = Array::<f32>::new(SCORE_TILES);
        #[unroll]
        for nt in 0..SCORE_TILES {
            part[nt] = p[nt * 4 + h * 2] + p[nt * 4 + h * 2 + 1];
        }
        #[unroll]
        for t in 0..4usize {
            part[t] = part[t] + part[t + 4];
        }
        #[unroll]
        for t in 0..2usize {
            part[t] = part[t] + part[t + 2];
        }
        part[0usize] = part[0usize] + part[1usize];
        let mut row_sum = part[0usize] + plane_shuffle_xor(part[0usize], 1u32);
        row_sum += plane_shuffle_xor(row_sum, 2u32);
        if comptime!(masked) {
            let mut a = 1.0f32;
            if any[h] != 0 {
                a = weight_exp(m[h] - m_new);
                l[h] = l[h] * a + row_sum;
                m[h] = m_new;
            }
            alpha[h] = a;
        } else {
            let a = weight_exp(m[h] - m_new);
            l[h] = l[h] * a + row_sum;
            m[h] = m_new;
            alpha[h] = a;
        }
    }

    // A element `2 v + e` of step `kt` is score tile `2 kt + v / 2`, element `2 (v % 2) + e`.
    #[unroll]
    for kt in 0..PV_STEPS {
        #[unroll]
        for v in 0..4usize {
            let mut pair = Pair::<F>::empty();
            #[unroll]
            for e in 0..2usize {
                pair[e] = F::cast_from(p[(kt * 2 + v / 2) * 4 + (v % 2) * 2 + e]);
            }
            pa[kt * 4 + v] = pair;
        }
    }
}

/// `acc = acc * alpha + p · v`, 8 columns per instruction chain: the chain runs over the
/// block's 16-key steps in increasing order from a zero accumulator. The B fragments (keys
/// x columns, staged as keys x columns) come transposed out of `ldmatrix`: matrix `i` is
/// keys `16 kt + 8 (i % 2) ..`, columns `8 (ct + i / 2) ..`, so one `.x4` feeds two tiles (an
/// `.x2` the last of an odd count). With `masked`, values of keys no row takes enter as
/// zeros (unless `complete`) and rows that take no part keep their accumulators.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn accumulate_pv<F: Float>(
    stage: &SharedMemory<F>,
    pa: &Array<Pair<F>>,
    alpha: &Array<f32>,
    any: &Array<u32>,
    key_live: &Array<u32>,
    complete: bool,
    acc: &mut Array<Pair<f32>>,
    v_base: usize,
    matrix: usize,
    matrix_row: usize,
    #[comptime] v_pitch: usize,
    #[comptime] n_tiles: usize,
    #[comptime] masked: bool,
) {
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    // Unmasked blocks take every key's value as loaded.
    let whole = complete || comptime!(!masked);
    // The lane's row of its matrix once; every `ldmatrix` is then a constant away.
    let lane_v = v_base + ((matrix % 2) * 8 + matrix_row) * v_pitch + (matrix / 2) * 8;
    #[unroll]
    for pair_of_tiles in 0..comptime!(n_tiles / 2) {
        let ct = pair_of_tiles * 2;
        let mut pv0 = Array::<Pair<f32>>::new(2usize);
        let mut pv1 = Array::<Pair<f32>>::new(2usize);
        #[unroll]
        for h in 0..2usize {
            pv0[h] = Pair::<f32>::new(0.0);
            pv1[h] = Pair::<f32>::new(0.0);
        }
        #[unroll]
        for kt in 0..PV_STEPS {
            let at = lane_v + comptime!(kt * 16 * v_pitch + ct * 8);
            let regs = def.load_matrix::<F, Const<2>>(
                &stage.slice(at, at + 8),
                MatrixIdent::B,
                4usize,
                true,
            );
            let mut a = Array::<Pair<F>>::new(4usize);
            #[unroll]
            for v in 0..4usize {
                a[v] = pa[kt * 4 + v];
            }
            let b0 = value_fragment(&regs, 0usize, key_live, whole, kt * 2);
            let b1 = value_fragment(&regs, 2usize, key_live, whole, kt * 2);
            def.execute_inplace(&a, &b0, &mut pv0);
            def.execute_inplace(&a, &b1, &mut pv1);
        }
        rescale_add(acc, &pv0, alpha, any, ct, masked);
        rescale_add(acc, &pv1, alpha, any, ct + 1, masked);
    }
    if comptime!(n_tiles % 2 == 1) {
        let ct = comptime!(n_tiles - 1);
        let mut pv = Array::<Pair<f32>>::new(2usize);
        #[unroll]
        for h in 0..2usize {
            pv[h] = Pair::<f32>::new(0.0);
        }
        #[unroll]
        for kt in 0..PV_STEPS {
            let at = v_base + (kt * 16 + (matrix % 2) * 8 + matrix_row) * v_pitch + ct * 8;
            let regs = def.load_matrix::<F, Const<2>>(
                &stage.slice(at, at + 8),
                MatrixIdent::B,
                2usize,
                true,
            );
            let mut a = Array::<Pair<F>>::new(4usize);
            #[unroll]
            for v in 0..4usize {
                a[v] = pa[kt * 4 + v];
            }
            let b = value_fragment(&regs, 0usize, key_live, whole, kt * 2);
            def.execute_inplace(&a, &b, &mut pv);
        }
        rescale_add(acc, &pv, alpha, any, ct, masked);
    }
}

/// A block that every query row of the warp takes whole (see the kernel): the weights and
/// `p · v` without liveness. Rows past the last query take part too; their state is never
/// written, and no row's arithmetic reads another row's.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn block_complete<F: Float>(
    s: &Array<f32>,
    stage: &SharedMemory<F>,
    m: &mut Array<f32>,
    l: &mut Array<f32>,
    acc: &mut Array<Pair<f32>>,
    v_base: usize,
    matrix: usize,
    matrix_row: usize,
    #[comptime] v_pitch: usize,
    #[comptime] n_tiles: usize,
) {
    // Placeholders for the liveness the masked helpers read; the unmasked ones never do.
    let none = Array::<u32>::new(1usize);
    let mut pa = Array::<Pair<F>>::new(comptime!(PV_STEPS * 4));
    let mut alpha = Array::<f32>::new(2usize);
    block_weights::<F>(s, &none, &none, m, l, &mut pa, &mut alpha, false);
    accumulate_pv::<F>(
        stage, &pa, &alpha, &none, &none, true, acc, v_base, matrix, matrix_row, v_pitch, n_tiles,
        false,
    );
}

/// Any other block: the keys that take part (`live`, per score) and the rows that are
/// queries (`row_real`) decide what enters the row statistics and `p · v`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn block_general<F: Float>(
    s: &Array<f32>,
    live: &Array<u32>,
    row_real: &Array<u32>,
    stage: &SharedMemory<F>,
    m: &mut Array<f32>,
    l: &mut Array<f32>,
    acc: &mut Array<Pair<f32>>,
    v_base: usize,
    matrix: usize,
    matrix_row: usize,
    #[comptime] v_pitch: usize,
    #[comptime] n_tiles: usize,
) {
    // `complete`: every query row of the warp takes every key of the block. Then every key
    // is taken by some row and exactly the query rows take part, which is what the shuffles
    // below would find; they run only when some score is out.
    let mut lane_complete = 1u32;
    #[unroll]
    for i in 0..comptime!(SCORE_TILES * 4) {
        lane_complete &= live[i] | (1u32 - row_real[(i / 2) % 2]);
    }
    let complete = plane_all(lane_complete != 0);

    // Which rows take part at all, and which keys no row takes (index `2 nt + e`: key
    // `8 nt + 2 (lane % 4) + e`, the keys of this lane's B elements in `p · v`).
    let mut any = Array::<u32>::new(2usize);
    any[0usize] = row_real[0usize];
    any[1usize] = row_real[1usize];
    let mut key_live = Array::<u32>::new(comptime!(SCORE_TILES * 2));
    if !complete {
        #[unroll]
        for nt in 0..SCORE_TILES {
            #[unroll]
            for e in 0..2usize {
                let mut flag = live[nt * 4 + e] | live[nt * 4 + 2 + e];
                flag |= plane_shuffle_xor(flag, 4u32);
                flag |= plane_shuffle_xor(flag, 8u32);
                flag |= plane_shuffle_xor(flag, 16u32);
                key_live[nt * 2 + e] = flag;
            }
        }
        #[unroll]
        for h in 0..2usize {
            let mut row_any = 0u32;
            #[unroll]
            for nt in 0..SCORE_TILES {
                row_any |= live[nt * 4 + h * 2] | live[nt * 4 + h * 2 + 1];
            }
            row_any |= plane_shuffle_xor(row_any, 1u32);
            row_any |= plane_shuffle_xor(row_any, 2u32);
            any[h] = row_any;
        }
    }
    let mut pa = Array::<Pair<F>>::new(comptime!(PV_STEPS * 4));
    let mut alpha = Array::<f32>::new(2usize);
    block_weights::<F>(s, live, &any, m, l, &mut pa, &mut alpha, true);
    accumulate_pv::<F>(
        stage, &pa, &alpha, &any, &key_live, complete, acc, v_base, matrix, matrix_row, v_pitch,
        n_tiles, true,
    );
}
