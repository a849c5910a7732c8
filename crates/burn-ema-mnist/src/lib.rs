//! The MNIST example trainers of burn-ema.
//!
//! The examples under `examples/` are thin command-line wrappers around this crate, so that
//! integration tests can drive the same trainer code for a few steps.
#![warn(missing_docs)]

extern crate burn_ema_core as burn_ema;

pub mod cli;
pub mod custom_loop;
pub mod data;
pub mod error;
pub mod eval;
pub mod mean_teacher;
pub mod metrics;
pub mod model;
pub mod posthoc;
pub mod progress;
pub mod train;

pub use error::MnistError;

/// Whether this build has the wgpu device (`--features burn-ema-mnist/wgpu`).
pub const WGPU_COMPILED: bool = cfg!(feature = "wgpu");
