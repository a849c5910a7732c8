//! The update as callers use it: one pair ([`update`]), a model's tensors ([`update_many`]),
//! several shadows per tensor ([`update_multi`]) — each tensor to its backend's fused path
//! where its element types have one, the plain tensor-op formulation otherwise.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, DispatchDevice, DispatchTensor, TensorMetadata};
use burn::tensor::Tensor;

use crate::EmaBackend;
#[cfg(any(feature = "flex", feature = "ndarray"))]
use crate::dispatch::{from_backend, to_backend};
use crate::dtypes::{float_dtype, fused_on};

/// Why `value` cannot update `shadow` element for element, if it cannot: another shape or
/// another (non-autodiff) device. Nothing is broadcast. burn-ema turns the answer into its
/// `EmaError::TensorMismatch`; the functions here panic with it.
pub fn pair_mismatch<const D: usize>(shadow: &Tensor<D>, value: &Tensor<D>) -> Option<String> {
    if shadow.dims() != value.dims() {
        return Some(format!(
            "a shadow and its value must have the same shape, hence the same number of \
             elements (the value's is {:?}, the shadow's {:?})",
            value.dims(),
            shadow.dims()
        ));
    }
    let (shadow_device, value_device) = (shadow.device().inner(), value.device().inner());
    if shadow_device != value_device {
        return Some(format!(
            "a shadow and its value must be on the same device (the value is on \
             {value_device:?}, the shadow on {shadow_device:?})"
        ));
    }
    None
}

/// Panics unless `value` can update `shadow` (see [`pair_mismatch`]).
fn assert_pair(shadow: &Tensor<1>, value: &Tensor<1>) {
    if let Some(problem) = pair_mismatch(shadow, value) {
        panic!("burn-ema-kernels: {problem}");
    }
}

/// `shadow − (shadow − value)·weight` for a flattened shadow: the fused kernel when the
/// tensors' backend and element types have one, the plain tensor-op path otherwise. `value` may
/// be an autodiff tensor (its inner tensor is read) and of another float type; `weight` is
/// `1 − decay`.
///
/// # Panics
///
/// If `shadow` and `value` differ in their number of elements or device (burn-ema's own
/// `ema_update` checks this and returns an error instead).
pub fn update(shadow: Tensor<1>, value: Tensor<1>, weight: f64) -> Tensor<1> {
    let value = value.inner();
    assert_pair(&shadow, &value);
    let out = update_dispatch(shadow.into_dispatch(), value.into_dispatch(), weight);
    Tensor::from_dispatch(out)
}

/// One entry of a batch at the backend-primitive level: a value and its shadows (all of one
/// element type), one weight each, and where the entry sits in the caller's list.
#[cfg(any(feature = "flex", feature = "ndarray"))]
pub(crate) struct Entry<T> {
    pub(crate) index: usize,
    pub(crate) shadows: Vec<T>,
    pub(crate) value: T,
    pub(crate) weights: Vec<f64>,
}

/// What a batch of [`Entry`]s gives back: each entry's index and new shadows.
#[cfg(any(feature = "flex", feature = "ndarray"))]
pub(crate) type Results<T> = Vec<(usize, Vec<T>)>;

#[cfg(any(feature = "flex", feature = "ndarray"))]
impl<T> Entry<T> {
    /// The entry of a single update.
    pub(crate) fn single(shadow: T, value: T, weight: f64) -> Self {
        Self {
            index: 0,
            shadows: vec![shadow],
            value,
            weights: vec![weight],
        }
    }

    /// Runs a batch of this one entry, returning its single shadow.
    pub(crate) fn run(self, batch: fn(Vec<Self>) -> Results<T>) -> T {
        let mut out = batch(vec![self]);
        let (_, mut shadows) = out.pop().expect("one entry, one result");
        shadows.pop().expect("one shadow")
    }
}

/// The update with the backend's own tensor operations, for element-type pairs the fused loops
/// do not handle (a direct call of [`EmaBackend::ema_update`] with, say, an `f64` shadow of an
/// `f16` value): what [`tensor_op_update`] computes, at the primitive level, of any rank.
pub(crate) fn primitive_update<B: Backend>(
    shadow: FloatTensor<B>,
    value: FloatTensor<B>,
    weight: f64,
) -> FloatTensor<B> {
    let dtype = shadow.dtype();
    let value = if value.dtype() == dtype {
        value
    } else {
        B::float_cast(value, float_dtype(dtype))
    };
    let delta = B::float_mul_scalar(
        B::float_sub(shadow.clone(), value),
        burn::backend::Scalar::Float(weight),
    );
    B::float_sub(shadow, delta)
}

/// An [`Entry`] of backend `$backend`'s primitives.
#[cfg(any(feature = "flex", feature = "ndarray"))]
macro_rules! entry_of {
    ($backend:ty, $index:expr, $shadows:expr, $value:expr, $weights:expr) => {
        Entry {
            index: $index,
            shadows: $shadows.into_iter().map(to_backend::<$backend>).collect(),
            value: to_backend::<$backend>($value),
            weights: $weights,
        }
    };
}

/// Many updates at once, `(shadow, value, weight)` each as in [`update`]; returns the new
/// shadows in the order given.
///
/// On the CPU backends every in-place update of one element type runs in **one** parallel pass
/// over all the tensors (like PyTorch's `_foreach_lerp_`): a model's hundreds of tensors of very
/// different sizes keep every thread busy, where one pass per tensor leaves threads idle at each
/// tensor's end. On CubeCL, tensors of one element type share kernel launches. Tensors of other
/// backends or types take [`update`] one by one.
pub fn update_many(jobs: Vec<(Tensor<1>, Tensor<1>, f64)>) -> Vec<Tensor<1>> {
    let jobs = jobs
        .into_iter()
        .map(|(shadow, value, weight)| (vec![shadow], value, vec![weight]))
        .collect();
    update_multi(jobs)
        .into_iter()
        .map(|mut shadows| shadows.pop().expect("one shadow in, one out"))
        .collect()
}

/// Several shadows per value, `(shadows, value, weights)` with one weight per shadow (several
/// EMAs of one model, e.g. the two that post-hoc EMA keeps); returns each entry's new shadows in
/// the order given.
///
/// Like [`update_many`], with one more saving on the CPU backends: the shadows of one value are
/// updated in the same pass, pairwise, so each value is read once per two shadows —
/// `(1 + 2K)` element accesses per parameter for `K` shadows instead of `3K`; on CubeCL likewise,
/// two shadows of a value to a kernel's read of it, in the shared launches of [`update_many`].
/// An entry whose shadows differ in element type, device or size
/// from each other or from the value takes [`update`] shadow by shadow.
///
/// # Panics
///
/// If an entry has not one weight per shadow, or a shadow differs from its value in number of
/// elements or device.
pub fn update_multi(jobs: Vec<(Vec<Tensor<1>>, Tensor<1>, Vec<f64>)>) -> Vec<Vec<Tensor<1>>> {
    let jobs = jobs
        .into_iter()
        .map(|(shadows, value, weights)| {
            // Checked by `update_multi_dispatch`.
            let value = value.inner();
            let shadows = shadows.into_iter().map(Tensor::into_dispatch).collect();
            (shadows, value.into_dispatch(), weights)
        })
        .collect();
    update_multi_dispatch(jobs)
        .into_iter()
        .map(|shadows| shadows.into_iter().map(Tensor::from_dispatch).collect())
        .collect()
}

/// [`update_multi`] on Burn's rank-erased tensors ([`Tensor::into_dispatch`]; not autodiff):
/// tensors of any ranks in one call, none reshaped. What burn-ema's update runs: a reshape is
/// an operation of its own in Burn's fusion stream, and a model has hundreds of tensors.
///
/// # Panics
///
/// As [`update_multi`], and if a tensor is an autodiff one or not a float tensor.
pub fn update_multi_dispatch(
    jobs: Vec<(Vec<DispatchTensor>, DispatchTensor, Vec<f64>)>,
) -> Vec<Vec<DispatchTensor>> {
    let mut out: Vec<Vec<DispatchTensor>> = Vec::with_capacity(jobs.len());
    #[cfg(feature = "flex")]
    let mut flex_entries = Vec::new();
    #[cfg(feature = "ndarray")]
    let mut ndarray_entries = Vec::new();
    #[cfg(feature = "cube")]
    let mut shared_launches = Vec::new();
    for (index, (shadows, value, weights)) in jobs.into_iter().enumerate() {
        assert_eq!(shadows.len(), weights.len(), "one weight per shadow");
        for shadow in &shadows {
            assert_dispatch_pair(shadow, &value);
        }
        let device = value.device();
        let fused = shadows.first().is_some_and(|first| {
            shadows.iter().all(|s| s.dtype() == first.dtype())
                && fused_on(&device, first.dtype(), value.dtype())
        });
        out.push(Vec::new());
        match (fused, &device) {
            #[cfg(feature = "flex")]
            (true, DispatchDevice::Flex(_)) => flex_entries.push(entry_of!(
                burn::backend::Flex,
                index,
                shadows,
                value,
                weights
            )),
            #[cfg(feature = "ndarray")]
            (true, DispatchDevice::NdArray(_)) => ndarray_entries.push(entry_of!(
                burn::backend::NdArray,
                index,
                shadows,
                value,
                weights
            )),
            // The shadows two by two, each two reading the value once (as the CPU loops do).
            #[cfg(feature = "cube")]
            (true, DispatchDevice::Cube(_)) => {
                let mut shadows = shadows.into_iter();
                let mut weights = weights.into_iter();
                for part in 0.. {
                    let two: Vec<_> = shadows.by_ref().take(2).collect();
                    if two.is_empty() {
                        break;
                    }
                    let two_weights = weights.by_ref().take(two.len()).collect();
                    shared_launches.push(((index, part), two, value.clone(), two_weights));
                }
            }
            _ => {
                out[index] = shadows
                    .into_iter()
                    .zip(weights)
                    .map(|(shadow, weight)| update_dispatch(shadow, value.clone(), weight))
                    .collect()
            }
        }
    }
    #[cfg(feature = "cube")]
    {
        let mut updated = crate::cube::update_in_launches(shared_launches);
        // Back in each entry's order of shadows.
        updated.sort_by_key(|(key, _)| *key);
        for ((index, _), shadows) in updated {
            out[index].extend(shadows);
        }
    }
    #[cfg(feature = "flex")]
    for (index, shadows) in crate::flex::update_many(flex_entries) {
        out[index] = shadows
            .into_iter()
            .map(from_backend::<burn::backend::Flex>)
            .collect();
    }
    #[cfg(feature = "ndarray")]
    for (index, shadows) in crate::ndarray::update_many(ndarray_entries) {
        out[index] = shadows
            .into_iter()
            .map(from_backend::<burn::backend::NdArray>)
            .collect();
    }
    out
}

/// One update of rank-erased tensors: the fused operation where the backend and element types
/// have one, the backend's tensor operations otherwise.
fn update_dispatch(shadow: DispatchTensor, value: DispatchTensor, weight: f64) -> DispatchTensor {
    if fused_on(&shadow.device(), shadow.dtype(), value.dtype()) {
        Dispatch::ema_update(shadow, value, weight)
    } else {
        primitive_update::<Dispatch>(shadow, value, weight)
    }
}

/// Panics unless `value` can update `shadow` element for element: the same shape on the same
/// device.
fn assert_dispatch_pair(shadow: &DispatchTensor, value: &DispatchTensor) {
    if shadow.shape() != value.shape() {
        panic!(
            "burn-ema-kernels: a shadow and its value must have the same shape, hence the same \
             number of elements (the value's is {:?}, the shadow's {:?})",
            value.shape(),
            shadow.shape()
        );
    }
    if shadow.device() != value.device() {
        panic!(
            "burn-ema-kernels: a shadow and its value must be on the same device (the value is \
             on {:?}, the shadow on {:?})",
            value.device(),
            shadow.device()
        );
    }
}

/// The plain tensor-op formulation, `shadow − (shadow − value)·weight`, for backends without a
/// fused kernel; also the reference the fused kernels are tested and benchmarked against.
/// `value` has the shadow's element type.
///
/// # Panics
///
/// If `shadow` and `value` differ in their number of elements or device.
pub fn tensor_op_update(shadow: Tensor<1>, value: Tensor<1>, weight: f64) -> Tensor<1> {
    assert_pair(&shadow, &value);
    let delta = shadow.clone().sub(value).mul_scalar(weight);
    shadow.sub(delta)
}
