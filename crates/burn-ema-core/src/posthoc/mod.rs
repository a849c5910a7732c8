//! Post-hoc EMA (Karras et al. 2024, EDM2): track a few power-function EMAs during training,
//! save their snapshots, and synthesize the EMA of any width afterwards.
//!
//! - [`config`]: what is tracked and saved ([`PostHocConfig`](crate::PostHocConfig));
//! - [`ema`]: the training side ([`PostHocEma`](crate::PostHocEma));
//! - [`store`]: the snapshot directory and its index (atomic, crash-safe);
//! - [`solve`]: EDM2's least-squares coefficients;
//! - [`synthesize`]: the streamed weighted sum ([`PostHocSnapshots`](crate::PostHocSnapshots)).

mod config;
mod ema;
mod solve;
mod store;
mod synthesize;

pub use config::{PostHocConfig, SnapshotDType};
pub use ema::PostHocEma;
pub use solve::{PowerProfile, posthoc_coefficients, power_function_correlation};
pub use store::{ProfileInfo, SnapshotInfo};
pub use synthesize::{PostHocSnapshots, Width};
