//! Core of [burn-ema](https://crates.io/crates/burn-ema): an exponential moving average of a
//! Burn model's weights. Use it through the `burn-ema` crate.
#![warn(missing_docs)]
// docs.rs (`--cfg docsrs`, nightly) marks what each cargo feature adds.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod background;
mod config;
mod ema_module;
mod error;
mod io;
mod layout;
mod module_impl;
mod multi_ema;
mod path;
mod placement;
mod posthoc;
mod power_profile;
mod schedule;
mod shadow;
mod swap;
mod switch;
mod tensor_ema;
#[cfg(feature = "train")]
mod train;
mod update;
mod walk;

pub use config::{BufferPolicy, EmaConfig, EvalWeights, NonFinite, ShadowDType, Warmup};
pub use ema_module::EmaModule;
pub use error::EmaError;
#[cfg(feature = "pytorch")]
pub use io::{PytorchEma, load_pytorch_ema};
pub use io::{SaveOptions, TF_SHADOW_SUFFIX, load_shadow_into, load_tf_shadow};
pub use multi_ema::MultiEma;
pub use path::{PathPattern, PathSet};
pub use posthoc::{
    PostHocConfig, PostHocEma, PostHocSnapshots, PowerProfile, ProfileInfo, SnapshotDType,
    SnapshotInfo, Width, posthoc_coefficients, power_function_correlation,
};
pub use power_profile::{gamma_to_sigma_rel, sigma_rel_to_gamma};
pub use schedule::{DecaySchedule, StepAction};
pub use swap::Swapped;
pub use switch::SwitchEvery;
pub use tensor_ema::TensorEma;
pub use update::{ema_update, ema_update_many, one_minus_decay, tensor_op_update};
