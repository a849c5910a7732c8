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
//!
//! A model has hundreds of tensors: [`update_many`] updates them all at once — in one parallel
//! pass on the CPU backends, with small tensors sharing kernel launches (eight per launch,
//! [`EmaBackend::ema_update_eight`]) on wgpu — and [`update_multi`] several shadows of each
//! (several EMAs of one model) in that same pass, reading each parameter once per two shadows.
#![warn(missing_docs)]
// docs.rs (`--cfg docsrs`, nightly) marks what each cargo feature adds.
#![cfg_attr(docsrs, feature(doc_cfg))]
// NdArray is deprecated by Burn 0.22 and still supported here.
#![allow(deprecated)]
// With no backend feature there is no fused path: the dispatch and its arguments go unused.
#![cfg_attr(
    not(any(feature = "flex", feature = "ndarray", feature = "cube")),
    allow(unused)
)]

#[cfg(feature = "cube")]
pub mod bound;
pub mod cpu;
#[cfg(feature = "cube")]
mod cube;
mod finite;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "ndarray")]
mod ndarray;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, DispatchDevice, ExtensionType, backend_extension};
use burn::tensor::{DType, FloatDType, Tensor};

pub use finite::count_non_finite;

/// Eight float tensors, for [`EmaBackend::ema_update_eight`].
#[derive(ExtensionType)]
#[cfg_attr(feature = "cube", extension_type(fusion))]
pub struct EightTensors<B: Backend> {
    /// Tensor 0.
    pub t0: FloatTensor<B>,
    /// Tensor 1.
    pub t1: FloatTensor<B>,
    /// Tensor 2.
    pub t2: FloatTensor<B>,
    /// Tensor 3.
    pub t3: FloatTensor<B>,
    /// Tensor 4.
    pub t4: FloatTensor<B>,
    /// Tensor 5.
    pub t5: FloatTensor<B>,
    /// Tensor 6.
    pub t6: FloatTensor<B>,
    /// Tensor 7.
    pub t7: FloatTensor<B>,
}

impl<B: Backend> EightTensors<B> {
    /// The tensors in order.
    pub fn into_array(self) -> [FloatTensor<B>; 8] {
        [
            self.t0, self.t1, self.t2, self.t3, self.t4, self.t5, self.t6, self.t7,
        ]
    }

    /// Eight tensors, in order.
    pub fn from_array(tensors: [FloatTensor<B>; 8]) -> Self {
        let [t0, t1, t2, t3, t4, t5, t6, t7] = tensors;
        Self {
            t0,
            t1,
            t2,
            t3,
            t4,
            t5,
            t6,
            t7,
        }
    }
}

/// Eight shadows and their values, for [`EmaBackend::ema_update_eight`].
#[derive(ExtensionType)]
#[cfg_attr(feature = "cube", extension_type(fusion))]
pub struct EightPairs<B: Backend> {
    /// The shadows.
    #[extension_type]
    pub shadows: EightTensors<B>,
    /// Their values, same shapes and element type.
    #[extension_type]
    pub values: EightTensors<B>,
}

/// The outputs of [`EmaBackend::ema_update_eight`] look like its shadows.
#[cfg(feature = "cube")]
fn eight_shadows_like(pairs: &EightPairsMetadata, _weight: &f64) -> EightTensorsMetadata {
    let s = &pairs.shadows;
    EightTensorsMetadata {
        t0: s.t0.clone(),
        t1: s.t1.clone(),
        t2: s.t2.clone(),
        t3: s.t3.clone(),
        t4: s.t4.clone(),
        t5: s.t5.clone(),
        t6: s.t6.clone(),
        t7: s.t7.clone(),
    }
}

/// The EMA update as one backend operation.
#[backend_extension(
    Cube: cfg(feature = "cube"),
    Fusion: cfg(feature = "cube"),
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray")
)]
pub trait EmaBackend: Backend {
    /// `shadow − (shadow − value)·weight`, where `weight = 1 − decay` (rounded to the shadow's
    /// type by the caller, as TensorFlow does). In place when `shadow` is uniquely owned and
    /// contiguous. `shadow` and `value` have the same number of elements; `value` may have
    /// a narrower float type (an `f16` parameter of an `f32` shadow).
    #[fusion(dtype = shadow, shape = shadow)]
    fn ema_update(
        shadow: FloatTensor<Self>,
        value: FloatTensor<Self>,
        weight: f64,
    ) -> FloatTensor<Self>;

    /// [`ema_update`](Self::ema_update) of eight shadow/value pairs of one element type, with
    /// one weight: on the CubeCL backends one kernel launch instead of eight (a model's many
    /// small tensors cost a launch each). Other backends update the pairs one by one.
    #[fusion(meta = eight_shadows_like)]
    fn ema_update_eight(
        #[extension_type] pairs: EightPairs<Self>,
        weight: f64,
    ) -> EightTensors<Self> {
        let mut values = pairs.values.into_array().into_iter();
        EightTensors::from_array(
            pairs.shadows.into_array().map(|shadow| {
                Self::ema_update(shadow, values.next().expect("eight values"), weight)
            }),
        )
    }
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
        #[cfg(feature = "cube")]
        DispatchDevice::Cube(_) => matches!(
            (shadow, value),
            (DType::F32, DType::F32 | DType::F16 | DType::BF16)
                | (DType::F16, DType::F16)
                | (DType::BF16, DType::BF16)
        ),
        _ => false,
    }
}

/// Panics unless `value` can update `shadow` element for element: the same number of
/// elements on the same device (nothing is broadcast).
fn assert_pair(shadow: &Tensor<1>, value: &Tensor<1>) {
    assert_eq!(
        shadow.dims(),
        value.dims(),
        "burn-ema-kernels: a shadow and its value must have the same number of elements"
    );
    assert_eq!(
        shadow.device(),
        value.device(),
        "burn-ema-kernels: a shadow and its value must be on the same device"
    );
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
    let device = shadow.device();
    if has_fused_path(&device, shadow.dtype(), value.dtype()) {
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
/// `f16` value): what [`tensor_op_update`] computes, at the primitive level.
#[cfg(any(feature = "flex", feature = "ndarray"))]
pub(crate) fn primitive_update<B: Backend>(
    shadow: FloatTensor<B>,
    value: FloatTensor<B>,
    weight: f64,
) -> FloatTensor<B> {
    use burn::backend::TensorMetadata;
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
/// `(1 + 2K)` element accesses per parameter for `K` shadows instead of `3K`. On CubeCL every
/// shadow is its own job in the shared launches of [`update_many`] (eight pairs a launch: on a
/// GPU, launches cost more than reading a value twice). An entry whose shadows differ in
/// element type, device or size from each other or from the value takes [`update`] shadow by
/// shadow.
///
/// # Panics
///
/// If an entry has not one weight per shadow, or a shadow differs from its value in number of
/// elements or device.
pub fn update_multi(jobs: Vec<(Vec<Tensor<1>>, Tensor<1>, Vec<f64>)>) -> Vec<Vec<Tensor<1>>> {
    let mut out: Vec<Vec<Tensor<1>>> = Vec::with_capacity(jobs.len());
    #[cfg(feature = "flex")]
    let mut flex_entries = Vec::new();
    #[cfg(feature = "ndarray")]
    let mut ndarray_entries = Vec::new();
    #[cfg(feature = "cube")]
    let mut small_launches = Vec::new();
    for (index, (shadows, value, weights)) in jobs.into_iter().enumerate() {
        assert_eq!(shadows.len(), weights.len(), "one weight per shadow");
        let value = value.inner();
        for shadow in &shadows {
            assert_pair(shadow, &value);
        }
        let device = value.device();
        let fused = shadows.first().is_some_and(|first| {
            shadows.iter().all(|s| {
                s.device() == device && s.dims() == value.dims() && s.dtype() == first.dtype()
            }) && has_fused_path(&device, first.dtype(), value.dtype())
        });
        out.push(Vec::new());
        match (fused, device.as_dispatch()) {
            #[cfg(feature = "flex")]
            (true, DispatchDevice::Flex(_)) => flex_entries.push(Entry {
                index,
                shadows: shadows
                    .into_iter()
                    .map(|s| {
                        s.try_into_primitive::<burn::backend::Flex>()
                            .expect(ON_DEVICE)
                    })
                    .collect(),
                value: value
                    .try_into_primitive::<burn::backend::Flex>()
                    .expect(ON_DEVICE),
                weights,
            }),
            #[cfg(feature = "ndarray")]
            (true, DispatchDevice::NdArray(_)) => ndarray_entries.push(Entry {
                index,
                shadows: shadows
                    .into_iter()
                    .map(|s| {
                        s.try_into_primitive::<burn::backend::NdArray>()
                            .expect(ON_DEVICE)
                    })
                    .collect(),
                value: value
                    .try_into_primitive::<burn::backend::NdArray>()
                    .expect(ON_DEVICE),
                weights,
            }),
            // Each shadow its own job (a GPU reads the value again per shadow at full bandwidth;
            // what matters there is sharing launches).
            #[cfg(feature = "cube")]
            (true, DispatchDevice::Cube(_)) if shadows[0].dtype() == value.dtype() => {
                for (slot, (shadow, weight)) in shadows.into_iter().zip(weights).enumerate() {
                    small_launches.push(((index, slot), shadow, value.clone(), weight));
                }
            }
            _ => {
                out[index] = shadows
                    .into_iter()
                    .zip(weights)
                    .map(|(shadow, weight)| update(shadow, value.clone(), weight))
                    .collect()
            }
        }
    }
    #[cfg(feature = "cube")]
    {
        let mut updated = update_in_eights(small_launches);
        // Back in each entry's order of shadows.
        updated.sort_by_key(|(key, _)| *key);
        for ((index, _), shadow) in updated {
            out[index].push(shadow);
        }
    }
    #[cfg(feature = "flex")]
    for (index, shadows) in flex::update_many(flex_entries) {
        out[index] = shadows
            .into_iter()
            .map(Tensor::from_primitive::<burn::backend::Flex>)
            .collect();
    }
    #[cfg(feature = "ndarray")]
    for (index, shadows) in ndarray::update_many(ndarray_entries) {
        out[index] = shadows
            .into_iter()
            .map(Tensor::from_primitive::<burn::backend::NdArray>)
            .collect();
    }
    out
}

/// Updates CubeCL tensors `(key, shadow, value, weight)` eight per launch, grouped by element
/// type, weight, and whether their length allows 4-wide vectors (a launch uses the narrowest
/// width of its eight); the few left over go one by one. Returns `(key, new shadow)`.
///
/// Every size shares launches: a launch costs the host a fixed amount through Burn's fusion,
/// CubeCL and wgpu (87 µs on lavapipe; on an H200, ResNet-50's update took 1.31 ms with only
/// tensors under 64 Ki elements sharing, about 24 µs a launch, against 74 µs for the same bytes in
/// one tensor), which dwarfs the work of most tensors on a GPU.
#[cfg(feature = "cube")]
fn update_in_eights<K: Copy>(jobs: Vec<(K, Tensor<1>, Tensor<1>, f64)>) -> Vec<(K, Tensor<1>)> {
    let mut groups: Vec<((DType, u64, bool), Vec<_>)> = Vec::new();
    for job in jobs {
        let key = (
            job.1.dtype(),
            job.3.to_bits(),
            job.1.dims()[0].is_multiple_of(4),
        );
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, group)) => group.push(job),
            None => groups.push((key, vec![job])),
        }
    }
    let mut out = Vec::new();
    for ((_, weight, _), group) in groups {
        let weight = f64::from_bits(weight);
        let mut group = group.into_iter();
        loop {
            let chunk: Vec<_> = group.by_ref().take(8).collect();
            let eight = match <[_; 8]>::try_from(chunk) {
                Ok(eight) => eight,
                Err(rest) => {
                    // Fewer than eight left: one launch each.
                    out.extend(rest.into_iter().map(|(i, s, v, w)| (i, update(s, v, w))));
                    break;
                }
            };
            let indices = eight.each_ref().map(|(i, ..)| *i);
            // Moved, not cloned: a shadow held only here is written in place.
            let (shadows, values): (Vec<_>, Vec<_>) = eight
                .into_iter()
                .map(|(_, s, v, _)| (s.into_dispatch(), v.into_dispatch()))
                .unzip();
            let eight_of = |v: Vec<_>| {
                EightTensors::from_array(v.try_into().unwrap_or_else(|_| unreachable!("eight")))
            };
            let pairs = EightPairs::<Dispatch> {
                shadows: eight_of(shadows),
                values: eight_of(values),
            };
            let updated = Dispatch::ema_update_eight(pairs, weight).into_array();
            out.extend(indices.into_iter().zip(updated.map(Tensor::from_dispatch)));
        }
    }
    out
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
