//! Core of [burn-ema](https://crates.io/crates/burn-ema): an exponential moving average of a
//! Burn model's weights. Use it through the `burn-ema` crate.
//!
//! # Layers
//!
//! Each module uses only modules listed before it (the order below; `tests/layers.rs` in the
//! repository checks it, so there is no import cycle):
//!
//! 1. foundation — `error` ([`EmaError`]), `path` (exclusion globs), `walk` (a module's tensors
//!    in traversal order);
//! 2. config — `schedule` ([`Schedule`], the decay law, and what an update at a step does),
//!    [`EmaConfig`] and its enums, EDM2's profile widths (`power_profile`);
//! 3. update — the update of bare tensors at a decay ([`ema_update`]);
//! 4. files — `io`: file formats on burn-store, with typed errors; it knows no average;
//! 5. shadow — `layout` (what an update does to each tensor), `placement` (where a shadow
//!    lives), `shadow` (one average's state, private to it, and the batched update of several);
//! 6. averages — the [`MovingAverage`] trait, then [`EmaModule`] (its swap, Switch EMA, files
//!    and offload in `ema_module/`), [`MultiEma`], [`TensorEma`], [`PostHocEma`] and the
//!    post-hoc synthesis (`posthoc/`), and BatchNorm statistics recomputed for averaged
//!    weights (`batch_norm`: [`update_bn`]);
//! 7. learner — Burn's Learner integration for every [`MovingAverage`] (`train`, feature
//!    `train`).
#![warn(missing_docs)]
// docs.rs (`--cfg docsrs`, nightly) marks what each cargo feature adds.
#![cfg_attr(docsrs, feature(doc_cfg))]

// 1. foundation
mod error;
mod path;
mod walk;
// 2. the decay law, then the configuration (a comment between them keeps rustfmt's order)
mod schedule;
// (uses `schedule`)
mod config;
mod power_profile;
// 3. the update of bare tensors
mod update;
// 4. files
mod io;
// 5. shadow
mod layout;
mod placement;
mod shadow;
// 6. averages
mod average;
mod batch_norm;
mod ema_module;
mod multi_ema;
mod posthoc;
mod tensor_ema;
// 7. learner
#[cfg(feature = "train")]
mod train;

pub use average::MovingAverage;
pub use batch_norm::update_bn;
pub use config::{AverageOptions, BufferPolicy, EmaConfig, EvalWeights, NonFinite, ShadowDType};
pub use ema_module::{EmaModule, EmaStats, ShadowPlacement, Swapped, SwitchEvery};
pub use error::EmaError;
pub use io::{EmaFile, TF_SHADOW_SUFFIX, shadow_from_file, shadow_from_tf_style};
#[cfg(feature = "pytorch")]
pub use io::{PytorchEma, load_pytorch_ema};
pub use multi_ema::MultiEma;
pub use posthoc::{
    PostHocConfig, PostHocEma, PostHocSnapshots, PowerProfile, ProfileInfo, SnapshotDType,
    SnapshotInfo, Width, posthoc_coefficients, power_function_correlation,
};
pub use power_profile::{gamma_to_sigma_rel, sigma_rel_to_gamma};
#[allow(deprecated)]
pub use schedule::{Schedule, Warmup};
pub use tensor_ema::TensorEma;
pub use update::{ema_update, ema_update_many, one_minus_decay};
