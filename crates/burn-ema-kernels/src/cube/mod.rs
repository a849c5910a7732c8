//! [`EmaBackend`] for Burn's CubeCL backend (wgpu and CUDA; the kernel is the same for ROCm and
//! Metal): one kernel for every update, a single pair or a model's tensors many pairs a launch,
//! in place when a shadow's buffer is uniquely owned. Through Burn's fusion, the recorded
//! operation hands these functions the resolved tensors, moving the shadow's handle when the
//! caller gave up its last reference.
//!
//! Files: `kernel` (the CubeCL kernel), `launches` (pairs cut into launches, the launch shape
//! chosen by CubeCL's autotune), `fusion` (a model's groups of pairs as operations in Burn's
//! fusion stream).

mod fusion;
mod kernel;
pub(crate) mod launches;

use std::sync::atomic::{AtomicUsize, Ordering};

use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;

use crate::EmaBackend;
pub(crate) use fusion::update_in_launches;
use launches::{Pairs, update_pairs};

impl EmaBackend for CubeBackend {
    fn ema_update(shadow: CubeTensor, value: CubeTensor, weight: f64) -> CubeTensor {
        shadow.assert_is_on_same_device(&value);
        let (mut updated, _) = update_pairs(Pairs {
            shadows: vec![shadow],
            seconds: Vec::new(),
            values: vec![value],
            weights: [weight, 0.0],
        });
        updated.pop().expect("one pair in, one shadow out")
    }
}

/// The EMA kernel's launches so far in this process ([`crate::tuning::launches`]).
static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// Counts one launch of the EMA kernel.
fn count_launch() {
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
}

/// [`LAUNCHES`], read.
pub(crate) fn launches_so_far() -> usize {
    LAUNCHES.load(Ordering::Relaxed)
}

/// A shadow that may be written in place: itself when uniquely owned and contiguous, else a
/// contiguous copy (a buffer someone else holds is never written).
pub(crate) fn writable(shadow: CubeTensor) -> CubeTensor {
    if shadow.can_mut() && shadow.is_contiguous() && shadow.is_nonoverlapping() {
        shadow
    } else {
        into_contiguous(shadow.copy())
    }
}

/// The widest vector width that divides a contiguous tensor's number of elements and suits its
/// element type. The kernels read tensors of any rank as flat arrays: the width follows the
/// length, not the last axis (a 1×1 convolution's kernel, `[out, in, 1, 1]`, still reads four
/// values a vector; by its last axis it read one, and the update of the launch-bound set took
/// 8.9 ms instead of 3.5).
pub(crate) fn vector_size(t: &CubeTensor) -> usize {
    let n = t.meta.num_elements();
    t.client
        .io_optimized_vector_sizes(t.dtype.size())
        .filter(|v| n.is_multiple_of(*v))
        .max()
        .unwrap_or(1)
}
