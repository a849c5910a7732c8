//! Fused in-place EMA updates for burn-ema, as a Burn backend extension.
//!
//! [`EmaBackend::ema_update`] is one operation, `shadow ← shadow − (shadow − value)·w` with
//! `w = 1 − decay`, implemented per backend behind a cargo feature:
//!
//! - `flex`: Burn's Flex CPU backend, an in-place loop over the shadow's buffer
//!   (vectorized, split over threads for large tensors);
//! - `ndarray`: the NdArray CPU backend, likewise;
//! - `wgpu` and `cuda`: a CubeCL kernel for `CubeBackend` (one code path for the CubeCL
//!   runtimes), recorded lazily through Burn's fusion like any other operation.
//!
//! The shadow is written in place only when its buffer is uniquely owned and contiguous; a
//! shared shadow (a clone is alive somewhere) is never written through: the result goes to a
//! new buffer. [`update`] picks the fused path when the tensors' backend and element types have
//! one, and the plain tensor-op path otherwise.
//!
//! A model has hundreds of tensors: [`update_many`] updates them all at once — in one parallel
//! pass on the CPU backends, sharing kernel launches on CubeCL (up to eight pairs a launch, fewer
//! where the device binds fewer buffers, through one operation in Burn's fusion stream per group
//! of element types: `f16` and `bf16` parameters of `f32` shadows are widened in the same
//! launches) — and [`update_multi`] several shadows of each (several EMAs of one model) in that
//! same pass, reading each parameter once per two shadows.
//!
//! Every function here takes the update's **weight** `w = 1 − decay`, already rounded to the
//! shadow's element type (TensorFlow computes `1 − decay` in the variable's type): this crate is
//! the engine under burn-ema, whose public API speaks only of decays
//! (`burn_ema::ema_update(shadow, value, decay)`).
//!
//! **Public surface**: the backend extension ([`EmaBackend`]), the update entry points
//! ([`update`], [`update_many`], [`update_multi`], and [`tensor_op_update`], the plain
//! tensor-op reference), which element types have a fused path ([`has_fused_path`],
//! [`supported_dtypes`], [`float_dtype`]), [`count_non_finite`], and [`tuning`] (feature
//! `cube`: the launch shape fixed by hand, launches counted). Everything else is the engine's
//! own: the CPU loops (`cpu`) and the benchmarks' bound (`bound`, feature `bench`) stay
//! reachable for the repository's benchmarks but are `#[doc(hidden)]` and not part of the API,
//! as are `update_multi_dispatch` and `pair_mismatch`, which burn-ema-core calls.
//!
//! Files: `cpu` (the slice loops), `flex`/`ndarray` (the CPU backends' in-place updates),
//! `cube/` (the CubeCL kernel, its launches and their fusion operation), `batch` (the dispatch
//! over backends and the batched updates), `dispatch` (rank-erased tensors to a backend's
//! primitives), `dtypes` (which element types have a fused path), `finite` (non-finite
//! counts), [`tuning`] (the CubeCL launch shape fixed by hand, and the launches counted);
//! `bound` (feature `bench`: a triad kernel of its own, the benchmarks' bound).
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
#[doc(hidden)]
pub mod bound;
#[doc(hidden)]
pub mod cpu;
#[cfg(feature = "cube")]
mod cube;
#[cfg(any(feature = "flex", feature = "ndarray", feature = "cube"))]
mod dispatch;
mod dtypes;
mod finite;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "ndarray")]
mod ndarray;
#[cfg(feature = "cube")]
pub mod tuning;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, backend_extension};

#[cfg(any(feature = "flex", feature = "ndarray"))]
pub(crate) use batch::{Entry, Results, primitive_update};
#[doc(hidden)]
pub use batch::{pair_mismatch, update_multi_dispatch};
pub use batch::{tensor_op_update, update, update_many, update_multi};
pub use dtypes::{float_dtype, has_fused_path, supported_dtypes};
pub use finite::count_non_finite;

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
}
