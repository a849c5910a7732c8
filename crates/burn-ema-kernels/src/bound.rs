//! The bandwidth bound of the update on the CubeCL backends, for benchmarks: a trivial in-place
//! triad kernel, `a ← a + s·b`, with the same memory traffic as the update (two reads, one
//! write per element) and the same launch code.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::tensor::Tensor;

/// The triad as one backend operation (CubeCL backends only).
#[backend_extension(Cube: cfg(feature = "cube"), Fusion: cfg(feature = "cube"))]
pub trait TriadBackend: Backend {
    /// `a + s·b`, in place in `a` when it is uniquely owned and contiguous.
    #[fusion(dtype = a, shape = a)]
    fn triad(a: FloatTensor<Self>, b: FloatTensor<Self>, s: f64) -> FloatTensor<Self>;
}

/// `a + s·b` by the triad kernel, for tensors on a CubeCL device (wgpu).
///
/// # Panics
///
/// On other backends: the triad exists to measure the bound of the CubeCL kernel.
pub fn triad(a: Tensor<1>, b: Tensor<1>, s: f64) -> Tensor<1> {
    Tensor::from_dispatch(Dispatch::triad(a.into_dispatch(), b.into_dispatch(), s))
}

/// EMA kernel launches so far in this process (the fused kernels, not the triad): benchmarks
/// report launches per update from the difference across updates.
pub fn ema_launches() -> usize {
    crate::cube::LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}
