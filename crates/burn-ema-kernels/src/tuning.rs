//! The shape of the CubeCL update's launches, fixed by hand: for benchmarks that measure the
//! defaults on a given device, tests that run the kernel in shapes the defaults reach only on
//! large models, and a device the defaults do not suit (a CPU's Vulkan driver such as Mesa's
//! lavapipe runs a many-tensor update about 1.4× faster with 16 vectors a unit; a GPU would
//! run short of units in flight). Process-wide, read when a launch runs (Burn's fusion may run
//! it after the call that recorded it); every shape gives the same values, bit for bit. Each
//! new shape compiles its own kernel once.
//!
//! ```no_run
//! // On lavapipe: a unit takes 16 vectors of its tensor, in launches of any size.
//! burn_ema_kernels::tuning::set_vectors_per_unit(Some(16));
//! ```
//!
//! The defaults, and what chose them, are in BENCHMARKS.md ("The GPU engine"): at most 8 tensor
//! pairs a launch, fewer where the device binds fewer buffers; one vector of each tensor a unit,
//! more when a launch has far more units than a GPU runs at once.

use std::sync::atomic::Ordering;

use crate::cube::{MAX_PAIRS, MAX_PAIRS_PER_LAUNCH, VECTORS_PER_UNIT};

/// Sets the most shadow/value pairs one launch updates (`None`: the default, 8) and returns the
/// cap that was in force. The device's binding limit still applies.
pub fn set_max_pairs_per_launch(pairs: Option<usize>) -> usize {
    let pairs = pairs.unwrap_or(MAX_PAIRS_PER_LAUNCH).max(1);
    MAX_PAIRS.swap(pairs, Ordering::Relaxed)
}

/// Fixes the vectors each unit updates (`None`: by the launch's size, the default) and returns
/// the setting that was in force.
pub fn set_vectors_per_unit(vectors: Option<usize>) -> Option<usize> {
    let old = VECTORS_PER_UNIT.swap(vectors.map_or(0, |v| v.max(1)), Ordering::Relaxed);
    (old != 0).then_some(old)
}
