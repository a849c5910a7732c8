//! The per-tensor EMA update: the one function every average of a tensor goes through.
//!
//! `shadow ← shadow − (shadow − value) · (1 − decay)`, TensorFlow's `assign_moving_average`
//! form, which equals `decay · shadow + (1 − decay) · value` in exact arithmetic and matches
//! TensorFlow bit for bit in `f32`. Backends with a fused in-place kernel take it from here;
//! the others use the plain tensor-op formulation below.

use burn::tensor::{DType, Int, Tensor};
use burn_ema_kernels::float_dtype;

pub use burn_ema_kernels::tensor_op_update;

/// `1 - decay` rounded the way the shadow's element type computes it (TensorFlow computes it in
/// the variable's type: for `f32`, `1.0f32 - decay as f32`).
pub fn one_minus_decay(decay: f64, shadow: DType) -> f64 {
    match shadow {
        DType::F64 => 1.0 - decay,
        _ => (1.0f32 - decay as f32) as f64,
    }
}

/// `value` in the element type of `like` (no work when they already agree).
pub(crate) fn cast_like(value: Tensor<1>, like: DType) -> Tensor<1> {
    if value.dtype() == like {
        value
    } else {
        value.cast(float_dtype(like))
    }
}

/// One EMA step of a flattened shadow tensor towards `value`, returning the new shadow.
///
/// `value` may be an autodiff tensor (its inner tensor is read) and may have another float type
/// than the shadow (e.g. an `f16` parameter with an `f32` shadow). `decay = 0` copies `value`,
/// `decay = 1` leaves the shadow as it is.
pub fn ema_update(shadow: Tensor<1>, value: Tensor<1>, decay: f64) -> Tensor<1> {
    let dtype = shadow.dtype();
    if decay >= 1.0 {
        return shadow;
    }
    let value = value.inner();
    if decay <= 0.0 {
        return cast_like(value, dtype);
    }
    burn_ema_kernels::update(shadow, value, one_minus_decay(decay, dtype))
}

/// [`ema_update`] of many flattened shadows with one decay, `(shadow, value)` each, as one
/// batched update where the backend has one (one parallel pass on the CPU backends); returns
/// the new shadows in the order given.
pub fn ema_update_many(pairs: Vec<(Tensor<1>, Tensor<1>)>, decay: f64) -> Vec<Tensor<1>> {
    if decay >= 1.0 {
        return pairs.into_iter().map(|(shadow, _)| shadow).collect();
    }
    if decay <= 0.0 {
        return pairs
            .into_iter()
            .map(|(shadow, value)| cast_like(value.inner(), shadow.dtype()))
            .collect();
    }
    let jobs = pairs
        .into_iter()
        .map(|(shadow, value)| {
            let weight = one_minus_decay(decay, shadow.dtype());
            (shadow, value, weight)
        })
        .collect();
    burn_ema_kernels::update_many(jobs)
}

/// The number of non-finite (NaN or infinite) values in each tensor, read back in one go.
pub(crate) fn non_finite_counts(tensors: Vec<Tensor<1>>) -> Vec<usize> {
    if tensors.is_empty() {
        return Vec::new();
    }
    let counts: Vec<Tensor<1, Int>> = tensors
        .into_iter()
        .map(|t| t.inner().is_finite().bool_not().int().sum())
        .collect();
    let data = Tensor::cat(counts, 0).into_data();
    data.iter::<i64>().map(|n| n as usize).collect()
}
