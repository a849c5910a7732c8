//! Fused in-place EMA updates for burn-ema, as a Burn backend extension.
//!
//! [`EmaBackend::ema_update`] is one operation, `shadow ← shadow − (shadow − value)·w` with
//! `w = 1 − decay`, implemented per backend behind a cargo feature:
//!
//! - `flex`: Burn's Flex CPU backend, an in-place loop over the shadow's buffer
//!   ([`cpu`]: vectorized, split over threads for large tensors);
//! - `ndarray`: the NdArray CPU backend, likewise;
//! - `wgpu`: a CubeCL kernel for `CubeBackend` (one code path for the CubeCL runtimes), recorded
//!   lazily through Burn's fusion like any other operation.
//!
//! The shadow is written in place only when its buffer is uniquely owned and contiguous; a
//! shared shadow (a clone is alive somewhere) is never written through: the result goes to a
//! new buffer. [`update`] picks the fused path when the tensors' backend and element types have
//! one, and the plain tensor-op path otherwise.
#![warn(missing_docs)]
// NdArray is deprecated by Burn 0.22 and still supported here.
#![allow(deprecated)]

pub mod cpu;
#[cfg(feature = "wgpu")]
mod cube;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "ndarray")]
mod ndarray;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, DispatchDevice, backend_extension};
use burn::tensor::{DType, FloatDType, Tensor};

/// The EMA update as one backend operation.
#[backend_extension(
    Cube: cfg(feature = "wgpu"),
    Fusion: cfg(feature = "wgpu"),
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray")
)]
pub trait EmaBackend: Backend {
    /// `shadow − (shadow − value)·weight`, where `weight = 1 − decay` (rounded to the shadow's
    /// type by the caller, as TensorFlow does). In place when `shadow` is uniquely owned and
    /// contiguous. `shadow` and `value` have the same number of elements; `value` may have
    /// a narrower float type (an `f16` parameter of an `f32` shadow) on the CPU backends.
    #[fusion(dtype = shadow, shape = shadow)]
    fn ema_update(
        shadow: FloatTensor<Self>,
        value: FloatTensor<Self>,
        weight: f64,
    ) -> FloatTensor<Self>;
}

/// The (shadow, value) element types the fused loops handle: the shadow's own type, or a
/// narrower parameter type read and widened in the same pass.
pub fn supported_dtypes(shadow: DType, value: DType) -> bool {
    use DType::*;
    matches!(
        (shadow, value),
        (F32, F32 | F16 | BF16) | (F64, F64 | F32) | (F16, F16) | (BF16, BF16)
    )
}

/// Whether a fused update exists for tensors on `device` with these element types.
pub fn has_fused_path(device: &burn::tensor::Device, shadow: DType, value: DType) -> bool {
    match device.as_dispatch() {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => supported_dtypes(shadow, value),
        #[cfg(feature = "ndarray")]
        DispatchDevice::NdArray(_) => matches!(
            (shadow, value),
            (DType::F32, DType::F32) | (DType::F64, DType::F64)
        ),
        #[cfg(feature = "wgpu")]
        DispatchDevice::Cube(_) => {
            shadow == value && matches!(shadow, DType::F32 | DType::F16 | DType::BF16)
        }
        _ => false,
    }
}

/// `shadow − (shadow − value)·weight` for a flattened shadow: the fused kernel when the
/// tensors' backend and element types have one, the plain tensor-op path otherwise. `value` may
/// be an autodiff tensor (its inner tensor is read) and of a narrower float type; `weight` is
/// `1 − decay`.
pub fn update(shadow: Tensor<1>, value: Tensor<1>, weight: f64) -> Tensor<1> {
    let value = value.inner();
    let device = shadow.device();
    if device == value.device()
        && shadow.dims() == value.dims()
        && has_fused_path(&device, shadow.dtype(), value.dtype())
    {
        let out = Dispatch::ema_update(shadow.into_dispatch(), value.into_dispatch(), weight);
        return Tensor::from_dispatch(out);
    }
    let value = if value.dtype() == shadow.dtype() {
        value
    } else {
        value.cast(float_dtype(shadow.dtype()))
    };
    tensor_op_update(shadow, value, weight)
}

/// The device says which backend holds a tensor.
#[cfg(any(feature = "flex", feature = "ndarray"))]
const ON_DEVICE: &str = "a tensor lives on its device's backend";

/// Many updates at once, `(shadow, value, weight)` each as in [`update`]; returns the new
/// shadows in the order given.
///
/// On the CPU backends every in-place update of one element type runs in **one** parallel pass
/// over all the tensors (like PyTorch's `_foreach_lerp_`): a model's hundreds of tensors of very
/// different sizes keep every thread busy, where one pass per tensor leaves threads idle at each
/// tensor's end. Tensors of other backends or types take [`update`] one by one.
pub fn update_many(jobs: Vec<(Tensor<1>, Tensor<1>, f64)>) -> Vec<Tensor<1>> {
    let mut out: Vec<Option<Tensor<1>>> = Vec::with_capacity(jobs.len());
    #[cfg(feature = "flex")]
    let mut flex_jobs = Vec::new();
    #[cfg(feature = "ndarray")]
    let mut ndarray_jobs = Vec::new();
    for (i, (shadow, value, weight)) in jobs.into_iter().enumerate() {
        let value = value.inner();
        let device = shadow.device();
        let fused = device == value.device()
            && shadow.dims() == value.dims()
            && has_fused_path(&device, shadow.dtype(), value.dtype());
        out.push(None);
        match (fused, device.as_dispatch()) {
            #[cfg(feature = "flex")]
            (true, DispatchDevice::Flex(_)) => flex_jobs.push((
                i,
                shadow
                    .try_into_primitive::<burn::backend::Flex>()
                    .expect(ON_DEVICE),
                value
                    .try_into_primitive::<burn::backend::Flex>()
                    .expect(ON_DEVICE),
                weight,
            )),
            #[cfg(feature = "ndarray")]
            (true, DispatchDevice::NdArray(_)) => ndarray_jobs.push((
                i,
                shadow
                    .try_into_primitive::<burn::backend::NdArray>()
                    .expect(ON_DEVICE),
                value
                    .try_into_primitive::<burn::backend::NdArray>()
                    .expect(ON_DEVICE),
                weight,
            )),
            _ => out[i] = Some(update(shadow, value, weight)),
        }
    }
    #[cfg(feature = "flex")]
    for (i, t) in flex::update_many(flex_jobs) {
        out[i] = Some(Tensor::from_primitive::<burn::backend::Flex>(t));
    }
    #[cfg(feature = "ndarray")]
    for (i, t) in ndarray::update_many(ndarray_jobs) {
        out[i] = Some(Tensor::from_primitive::<burn::backend::NdArray>(t));
    }
    out.into_iter()
        .map(|t| t.expect("every job has a result"))
        .collect()
}

/// The plain tensor-op formulation, `shadow − (shadow − value)·weight`, for backends without a
/// fused kernel; also the reference the fused kernels are tested and benchmarked against.
pub fn tensor_op_update(shadow: Tensor<1>, value: Tensor<1>, weight: f64) -> Tensor<1> {
    let delta = shadow.clone().sub(value).mul_scalar(weight);
    shadow.sub(delta)
}

/// The [`FloatDType`] of a float tensor's [`DType`].
pub fn float_dtype(dtype: DType) -> FloatDType {
    match dtype {
        DType::F64 => FloatDType::F64,
        DType::F16 => FloatDType::F16,
        DType::BF16 => FloatDType::BF16,
        DType::Flex32 => FloatDType::Flex32,
        _ => FloatDType::F32,
    }
}
