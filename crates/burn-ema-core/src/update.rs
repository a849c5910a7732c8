//! The EMA update of bare tensors, for code that keeps its own shadows: [`ema_update`] and
//! [`ema_update_many`], at a decay, checked, through the same fused kernels as the averages
//! (`burn_ema_kernels`). The averages themselves go through `shadow::update`.
//!
//! `shadow ← shadow − (shadow − value) · (1 − decay)`, TensorFlow's `assign_moving_average`
//! form, which equals `decay · shadow + (1 − decay) · value` in exact arithmetic and matches
//! TensorFlow bit for bit in `f32`.

use burn::tensor::{DType, Tensor};
use burn_ema_kernels::{float_dtype, pair_mismatch};

use crate::error::EmaError;

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

/// Checks that `value` can update `shadow`: the same shape on the same device (`value` may
/// have a narrower float type). Nothing is broadcast.
pub(crate) fn check_same_tensor<const D: usize>(
    shadow: &Tensor<D>,
    value: &Tensor<D>,
) -> Result<(), EmaError> {
    match pair_mismatch(shadow, value) {
        Some(problem) => Err(EmaError::TensorMismatch { problem }),
        None => Ok(()),
    }
}

/// One EMA step of a flattened shadow tensor towards `value`, returning the new shadow.
///
/// `value` may be an autodiff tensor (its inner tensor is read) and may have another float type
/// than the shadow (e.g. an `f16` parameter with an `f32` shadow). `decay = 0` copies `value`,
/// `decay = 1` leaves the shadow as it is. A value with another number of elements or on
/// another device is an [`EmaError::TensorMismatch`] (never broadcast).
pub fn ema_update(shadow: Tensor<1>, value: Tensor<1>, decay: f64) -> Result<Tensor<1>, EmaError> {
    Ok(ema_update_many(vec![(shadow, value)], decay)?
        .pop()
        .expect("one pair in, one shadow out"))
}

/// [`ema_update`] of many flattened shadows with one decay, `(shadow, value)` each, as one
/// batched update where the backend has one (one parallel pass on the CPU backends); returns
/// the new shadows in the order given. Every pair is checked first: on error nothing is updated.
pub fn ema_update_many(
    pairs: Vec<(Tensor<1>, Tensor<1>)>,
    decay: f64,
) -> Result<Vec<Tensor<1>>, EmaError> {
    if !(0.0..=1.0).contains(&decay) {
        return Err(EmaError::invalid(
            "decay",
            format!("must lie in [0, 1], got {decay}"),
        ));
    }
    for (shadow, value) in &pairs {
        check_same_tensor(shadow, value)?;
    }
    if decay >= 1.0 {
        return Ok(pairs.into_iter().map(|(shadow, _)| shadow).collect());
    }
    if decay <= 0.0 {
        return Ok(pairs
            .into_iter()
            .map(|(shadow, value)| cast_like(value.inner(), shadow.dtype()))
            .collect());
    }
    let jobs = pairs
        .into_iter()
        .map(|(shadow, value)| {
            let weight = one_minus_decay(decay, shadow.dtype());
            (shadow, value, weight)
        })
        .collect();
    Ok(burn_ema_kernels::update_many(jobs))
}

/// The number of non-finite (NaN or infinite) values in each tensor.
pub(crate) fn non_finite_counts(tensors: Vec<Tensor<1>>) -> Vec<usize> {
    burn_ema_kernels::count_non_finite(&tensors)
}
