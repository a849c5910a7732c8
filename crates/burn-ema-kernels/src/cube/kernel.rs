//! The CubeCL kernel of the update: many shadow/value pairs a launch, tensors of any sizes, the
//! value of any float type the shadow's type can widen it from.

use burn_cubecl::cubecl;
use cubecl::prelude::*;

/// Units per tile: a warp on NVIDIA, so that a warp's loads are one contiguous run.
pub const TILE: usize = 32;

/// Vector `pos` of pair `i`: `s − (s − v)·w`, and with `two` the same for the value's second
/// shadow (weight `w2`), the value read once for both. The value is widened to the shadow's
/// type `F` in registers (an `f16` or `bf16` parameter of an `f32` shadow; no work when `P` is
/// `F`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn update_vector<F: Float, P: Float, N: Size>(
    shadows: &mut Sequence<OwnedTensor<Vector<F, N>>>,
    seconds: &mut Sequence<OwnedTensor<Vector<F, N>>>,
    values: &Sequence<OwnedTensor<Vector<P, N>>>,
    #[comptime] i: usize,
    pos: usize,
    w: Vector<F, N>,
    w2: Vector<F, N>,
    #[comptime] two: bool,
) {
    let v = Vector::<F, N>::cast_from(values.index(i)[pos]);
    let shadow = shadows.index_mut(i);
    let s = shadow[pos];
    shadow[pos] = s - (s - v) * w;
    if two {
        let second = seconds.index_mut(i);
        let s2 = second[pos];
        second[pos] = s2 - (s2 - v) * w2;
    }
}

/// The update of many shadow/value pairs in one launch, tensors of any sizes: shadows of type
/// `F`, values of type `P` (the same, or narrower: widened in registers, so the update stays
/// one pass over both tensors). With one vector a unit (`per_unit` 1), unit `i` updates vector
/// `i` of the pairs laid end to end. With more, each pair is cut into tiles of
/// `TILE · per_unit` vectors, the tiles of the pairs laid end to end, and [`TILE`] consecutive
/// units take one tile: unit `lane` of it updates vectors `lane`, `lane + TILE`, … (`per_unit`
/// of them, fewer at a pair's end), so that neighbouring units read neighbouring vectors. A unit
/// finds its pair by walking the pairs' tile counts once, whatever `per_unit`: with more vectors
/// a unit, the walk is paid over more work. With `two`, each value has a second shadow
/// (`seconds`, weight `second_weight`: two averages of one model), read once for both. The
/// number of pairs is part of the compiled kernel (the walk is unrolled), and so is `per_unit`:
/// a model's update compiles a few kernels once, then reuses them every step.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn ema_many_kernel<F: Float, P: Float, N: Size>(
    shadows: &mut Sequence<OwnedTensor<Vector<F, N>>>,
    seconds: &mut Sequence<OwnedTensor<Vector<F, N>>>,
    values: &Sequence<OwnedTensor<Vector<P, N>>>,
    weight: InputScalar,
    second_weight: InputScalar,
    #[comptime] two: bool,
    #[comptime] per_unit: usize,
    #[define(F, P)] _dtypes: [ElemType; 2],
) {
    let w = Vector::new(weight.get::<F>());
    let w2 = Vector::new(second_weight.get::<F>());
    if per_unit == 1 {
        // One vector a unit, the pairs laid end to end without tiles: no loop, no padding.
        let mut pos = ABSOLUTE_POS;
        #[unroll]
        for i in 0..values.len() {
            let value = values.index(i);
            let len = value.len();
            if pos < len {
                update_vector::<F, P, N>(shadows, seconds, values, i, pos, w, w2, two);
                terminate!();
            }
            pos -= len;
        }
        terminate!();
    }
    let span = TILE * per_unit;
    let mut tile = ABSOLUTE_POS / TILE;
    let lane = ABSOLUTE_POS % TILE;
    #[unroll]
    for i in 0..values.len() {
        let value = values.index(i);
        let len = value.len();
        let tiles = len.div_ceil(span);
        if tile < tiles {
            let base = tile * span + lane;
            let mut count = 0;
            if base < len {
                count = clamp_max((len - base).div_ceil(TILE), per_unit);
            }
            for j in 0..count {
                update_vector::<F, P, N>(shadows, seconds, values, i, base + j * TILE, w, w2, two);
            }
            terminate!();
        }
        tile -= tiles;
    }
}
