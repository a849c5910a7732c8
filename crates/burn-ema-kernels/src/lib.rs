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
//! pass on the CPU backends, with tensors of one element type sharing kernel launches (eight
//! per launch, [`EmaBackend::ema_update_eight`]) on CubeCL — and [`update_multi`] several
//! shadows of each (several EMAs of one model) in that same pass, reading each parameter once
//! per two shadows.
//!
//! Every function here takes the update's **weight** `w = 1 − decay`, already rounded to the
//! shadow's element type (TensorFlow computes `1 − decay` in the variable's type): this crate is
//! the engine under burn-ema, whose public API speaks only of decays
//! (`burn_ema::ema_update(shadow, value, decay)`).
//!
//! Files: [`cpu`] (the slice loops), `flex`/`ndarray` (the CPU backends' in-place updates),
//! `cube` (the CubeCL kernels), `batch` (the dispatch over backends and the batched updates),
//! `cube_batch` (eight pairs a launch), `dtypes` (which element types have a fused path),
//! `finite` (non-finite counts); `bound` (feature `bench`: the triad kernel, benchmarks' bound).
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

mod batch;
#[cfg(all(feature = "cube", feature = "bench"))]
pub mod bound;
pub mod cpu;
#[cfg(feature = "cube")]
mod cube;
#[cfg(feature = "cube")]
mod cube_batch;
mod dtypes;
mod finite;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "ndarray")]
mod ndarray;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, ExtensionType, backend_extension};

#[cfg(any(feature = "flex", feature = "ndarray"))]
pub(crate) use batch::{Entry, Results, primitive_update};
pub use batch::{pair_mismatch, tensor_op_update, update, update_many, update_multi};
pub use dtypes::{float_dtype, has_fused_path, supported_dtypes};
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
    /// one weight: on the CubeCL backends one kernel launch instead of eight (a launch's host
    /// cost outweighs most tensors' work on a GPU). Other backends update the pairs one by one.
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
