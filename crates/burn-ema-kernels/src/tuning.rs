//! The shape of the CubeCL update's launches, fixed by hand: for benchmarks that measure the
//! choices on a given device, and tests that run the kernel in shapes a device would not choose.
//! [`launches`] counts what the shapes give. Process-wide, read when a launch runs (Burn's fusion
//! may run it after the call that recorded it); every shape gives the same values, bit for bit.
//! Each new shape compiles its own kernel once.
//!
//! By default a launch takes at most 8 tensor pairs (fewer where the device binds fewer
//! buffers), and the vectors each unit updates are chosen by CubeCL's autotune, per device and
//! launch size, among 1, 4 and 16 (BENCHMARKS.md, "The GPU engine").
//!
//! ```no_run
//! // Every unit takes 16 vectors of its tensor, whatever the tuner would choose.
//! burn_ema_kernels::tuning::set_vectors_per_unit(Some(16));
//! ```

use std::sync::atomic::Ordering;

use crate::cube::launches::{MAX_PAIRS, MAX_PAIRS_PER_LAUNCH, VECTORS_PER_UNIT};

/// Sets the most shadow/value pairs one launch updates (`None`: the default, 8) and returns the
/// cap that was in force. The device's binding limit still applies.
pub fn set_max_pairs_per_launch(pairs: Option<usize>) -> usize {
    let pairs = pairs.unwrap_or(MAX_PAIRS_PER_LAUNCH).max(1);
    MAX_PAIRS.swap(pairs, Ordering::Relaxed)
}

/// Fixes the vectors each unit updates (`None`: as the autotune chooses, the default) and
/// returns the setting that was in force.
pub fn set_vectors_per_unit(vectors: Option<usize>) -> Option<usize> {
    let old = VECTORS_PER_UNIT.swap(vectors.map_or(0, |v| v.max(1)), Ordering::Relaxed);
    (old != 0).then_some(old)
}

/// The EMA kernel's launches this process has run so far, on every CubeCL device (the tuner's
/// timing launches included): the difference across a synced update is what the update costs
/// in launches (`tests/wgpu.rs` checks that a half-precision model shares them).
pub fn launches() -> usize {
    crate::cube::launches_so_far()
}
