//! [`EmaBackend`] for Burn's CubeCL backend (wgpu here; the kernel is the same for CUDA, ROCm and
//! Metal): one vectorized kernel launch per tensor, or one per many tensors of one element type
//! ([`update_pairs`], recorded in Burn's fusion stream by `cube_batch`), in place when a
//! shadow's buffer is uniquely owned. Through Burn's fusion, the recorded operation hands these
//! functions the resolved tensors, moving the shadow's handle when the caller gave up its last
//! reference.

use burn::backend::cubecl::dtype_to_storage_type;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, cubecl};

use crate::EmaBackend;
#[cfg(feature = "bench")]
use crate::bound::TriadBackend;

mod kernel {
    use super::cubecl;
    use cubecl::prelude::*;

    /// One vector of the update, `s − (s − v)·w`.
    #[cube]
    fn step<F: Float, N: Size>(
        shadow: &mut Tensor<Vector<F, N>>,
        value: &Tensor<Vector<F, N>>,
        pos: usize,
        w: Vector<F, N>,
    ) {
        let s = shadow[pos];
        shadow[pos] = s - (s - value[pos]) * w;
    }

    /// The update of many shadow/value pairs in one launch: unit `i` updates vector `i` of the
    /// pairs laid end to end, so tensors of any sizes share one launch. The number of pairs is
    /// part of the compiled kernel (the loop is unrolled): a model's update compiles a few
    /// kernels once, then reuses them every step.
    #[cube(launch)]
    pub fn ema_many_kernel<F: Float, N: Size>(
        shadows: &mut Sequence<OwnedTensor<Vector<F, N>>>,
        values: &Sequence<OwnedTensor<Vector<F, N>>>,
        weight: InputScalar,
        #[define(F)] _dtype: ElemType,
    ) {
        let w = Vector::new(weight.get::<F>());
        let mut pos = ABSOLUTE_POS;
        #[unroll]
        for i in 0..shadows.len() {
            let shadow = shadows.index_mut(i);
            let len = shadow.len();
            if pos < len {
                step(shadow, values.index(i), pos, w);
                terminate!();
            }
            pos -= len;
        }
    }

    /// `shadow ← shadow − (shadow − value)·weight`, one vector of `N` elements per unit. The
    /// value may have a narrower type `P` (an `f16` parameter of an `f32` shadow): it is
    /// widened in registers, so the update stays one pass over both tensors.
    ///
    /// With `triad`, the kernel computes `shadow + value·weight` instead: the same memory
    /// traffic with the simplest arithmetic, the bandwidth bound benchmarks compare against.
    #[cube(launch)]
    pub fn ema_kernel<F: Float, P: Float, N: Size>(
        shadow: &mut Tensor<Vector<F, N>>,
        value: &Tensor<Vector<P, N>>,
        weight: InputScalar,
        #[comptime] triad: bool,
        #[define(F, P)] _dtypes: [ElemType; 2],
    ) {
        if ABSOLUTE_POS >= shadow.len() {
            terminate!();
        }
        let w = Vector::new(weight.get::<F>());
        let s = shadow[ABSOLUTE_POS];
        let v = Vector::<F, N>::cast_from(value[ABSOLUTE_POS]);
        if triad {
            shadow[ABSOLUTE_POS] = s + v * w;
        } else {
            shadow[ABSOLUTE_POS] = s - (s - v) * w;
        }
    }
}

impl EmaBackend for CubeBackend {
    fn ema_update(shadow: CubeTensor, value: CubeTensor, weight: f64) -> CubeTensor {
        launch(shadow, value, weight, false)
    }
}

#[cfg(feature = "bench")]
impl TriadBackend for CubeBackend {
    fn triad(a: CubeTensor, b: CubeTensor, s: f64) -> CubeTensor {
        launch(a, b, s, true)
    }
}

/// The fused kernel launches so far (`bound::ema_launches`).
#[cfg(feature = "bench")]
pub(crate) static LAUNCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts a launch for the benchmarks.
fn count_launch() {
    #[cfg(feature = "bench")]
    LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// One launch of [`kernel::ema_kernel`] over the whole shadow, in place when it may be written.
fn launch(shadow: CubeTensor, value: CubeTensor, weight: f64, triad: bool) -> CubeTensor {
    use cubecl::prelude::*;
    shadow.assert_is_on_same_device(&value);
    let shadow = writable(shadow);
    let num_elements = shadow.meta.num_elements();
    if num_elements == 0 {
        return shadow;
    }
    let value = into_contiguous(value);
    let client = shadow.client.clone();
    let vector = vector_size(&shadow).min(vector_size(&value));
    let units = num_elements / vector;
    let cube_dim = CubeDim::new(&client, units);
    let cube_count = cubecl::calculate_cube_count_elemwise(&client, units, cube_dim);
    let storage = dtype_to_storage_type(shadow.dtype);
    if !triad {
        count_launch();
    }
    let value_storage = dtype_to_storage_type(value.dtype);
    kernel::ema_kernel::launch(
        &client,
        cube_count,
        cube_dim,
        vector,
        shadow.clone().into_tensor_arg(),
        value.into_tensor_arg(),
        InputScalar::new(weight, storage),
        triad,
        [storage, value_storage],
    );
    shadow
}

/// A shadow that may be written in place: itself when uniquely owned and contiguous, else a
/// contiguous copy (a buffer someone else holds is never written).
fn writable(shadow: CubeTensor) -> CubeTensor {
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
fn vector_size(t: &CubeTensor) -> usize {
    let n = t.meta.num_elements();
    t.client
        .io_optimized_vector_sizes(t.dtype.size())
        .filter(|v| n.is_multiple_of(*v))
        .max()
        .unwrap_or(1)
}

/// The most pairs one launch updates: [`MAX_PAIRS_PER_LAUNCH`], or fewer where the device
/// binds fewer storage buffers per kernel (two per pair, and CubeCL's buffer of lengths and
/// scalars): wgpu's OpenGL backend 16 (seven pairs), WebGPU's default 8 (three). At least one.
pub(crate) fn pairs_per_launch(t: &CubeTensor) -> usize {
    let bindings = t.client.properties().hardware.max_bindings as usize;
    (bindings.saturating_sub(1) / 2).clamp(1, MAX_PAIRS_PER_LAUNCH)
}

/// Pairs per launch, chosen by measurement: a unit finds its pair by walking the lengths before
/// it, so more pairs a launch means fewer launches but more work per unit. On lavapipe
/// (ResNet-50/8, 161 tensors, BENCHMARKS.md) 2, 4, 8 and 15 pairs a launch took 3.3-3.7,
/// 2.7-3.1, 2.7-2.9 and 3.5-3.6 ms per update. Each count compiles its own kernel.
pub(crate) const MAX_PAIRS_PER_LAUNCH: usize = 8;

/// Updates pairs of one element type in as few launches as the device's bindings allow
/// ([`pairs_per_launch`]); returns the new shadows in order.
pub(crate) fn update_pairs(
    shadows: Vec<CubeTensor>,
    values: Vec<CubeTensor>,
    weight: f64,
) -> Vec<CubeTensor> {
    let Some(first) = shadows.first() else {
        return shadows;
    };
    if shadows.len() == 1 {
        let (shadow, value) = (shadows.into_iter().next(), values.into_iter().next());
        return vec![launch(
            shadow.expect("one"),
            value.expect("one"),
            weight,
            false,
        )];
    }
    let per_launch = pairs_per_launch(first);
    let mut out = Vec::with_capacity(shadows.len());
    let (mut shadows, mut values) = (shadows.into_iter(), values.into_iter());
    loop {
        let chunk: Vec<_> = shadows.by_ref().take(per_launch).collect();
        if chunk.is_empty() {
            return out;
        }
        let chunk_values = values.by_ref().take(chunk.len()).collect();
        out.extend(launch_many(chunk, chunk_values, weight));
    }
}

/// One launch of [`kernel::ema_many_kernel`] over pairs of one element type (as many as
/// [`pairs_per_launch`] allows: the caller splits), in place where a shadow may be written.
pub(crate) fn launch_many(
    shadows: Vec<CubeTensor>,
    values: Vec<CubeTensor>,
    weight: f64,
) -> Vec<CubeTensor> {
    use cubecl::prelude::*;
    let shadows: Vec<_> = shadows.into_iter().map(writable).collect();
    let values: Vec<_> = values.into_iter().map(into_contiguous).collect();
    let vector = shadows
        .iter()
        .chain(&values)
        .filter(|t| t.meta.num_elements() > 0)
        .map(vector_size)
        .min()
        .unwrap_or(1);
    let units: usize = shadows.iter().map(|t| t.meta.num_elements() / vector).sum();
    if units == 0 {
        return shadows;
    }
    let client = shadows[0].client.clone();
    let cube_dim = CubeDim::new(&client, units);
    let cube_count = cubecl::calculate_cube_count_elemwise(&client, units, cube_dim);
    let storage = dtype_to_storage_type(shadows[0].dtype);
    count_launch();
    kernel::ema_many_kernel::launch(
        &client,
        cube_count,
        cube_dim,
        vector,
        shadows
            .iter()
            .map(|t| t.clone().into_tensor_arg())
            .collect(),
        values.into_iter().map(|t| t.into_tensor_arg()).collect(),
        InputScalar::new(weight, storage),
        storage,
    );
    shadows
}
