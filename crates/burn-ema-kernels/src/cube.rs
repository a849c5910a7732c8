//! [`EmaBackend`] for Burn's CubeCL backend (wgpu here; the kernel is the same for CUDA, ROCm and
//! Metal): one vectorized kernel launch per tensor, or per eight tensors of one element type
//! ([`EmaBackend::ema_update_eight`]), in place when a shadow's buffer is uniquely owned.
//! Through Burn's fusion, the generated `Fusion<CubeBackend>` implementation records the
//! operation and hands this one the resolved tensors, moving the shadow's handle when the
//! caller gave up its last reference.

use burn::backend::cubecl::dtype_to_storage_type;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, cubecl};

#[cfg(feature = "bench")]
use crate::bound::TriadBackend;
use crate::{EightPairs, EightTensors, EmaBackend};

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

    /// The update of eight shadow/value pairs in one launch: unit `i` updates vector `i` of the
    /// pairs laid end to end, so eight tensors of any sizes share one launch.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub fn ema_eight_kernel<F: Float, N: Size>(
        s0: &mut Tensor<Vector<F, N>>,
        v0: &Tensor<Vector<F, N>>,
        s1: &mut Tensor<Vector<F, N>>,
        v1: &Tensor<Vector<F, N>>,
        s2: &mut Tensor<Vector<F, N>>,
        v2: &Tensor<Vector<F, N>>,
        s3: &mut Tensor<Vector<F, N>>,
        v3: &Tensor<Vector<F, N>>,
        s4: &mut Tensor<Vector<F, N>>,
        v4: &Tensor<Vector<F, N>>,
        s5: &mut Tensor<Vector<F, N>>,
        v5: &Tensor<Vector<F, N>>,
        s6: &mut Tensor<Vector<F, N>>,
        v6: &Tensor<Vector<F, N>>,
        s7: &mut Tensor<Vector<F, N>>,
        v7: &Tensor<Vector<F, N>>,
        weight: InputScalar,
        #[define(F)] _dtype: ElemType,
    ) {
        let w = Vector::new(weight.get::<F>());
        let mut pos = ABSOLUTE_POS;
        if pos < s0.len() {
            step(s0, v0, pos, w);
            terminate!();
        }
        pos -= s0.len();
        if pos < s1.len() {
            step(s1, v1, pos, w);
            terminate!();
        }
        pos -= s1.len();
        if pos < s2.len() {
            step(s2, v2, pos, w);
            terminate!();
        }
        pos -= s2.len();
        if pos < s3.len() {
            step(s3, v3, pos, w);
            terminate!();
        }
        pos -= s3.len();
        if pos < s4.len() {
            step(s4, v4, pos, w);
            terminate!();
        }
        pos -= s4.len();
        if pos < s5.len() {
            step(s5, v5, pos, w);
            terminate!();
        }
        pos -= s5.len();
        if pos < s6.len() {
            step(s6, v6, pos, w);
            terminate!();
        }
        pos -= s6.len();
        if pos < s7.len() {
            step(s7, v7, pos, w);
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

    fn ema_update_eight(pairs: EightPairs<Self>, weight: f64) -> EightTensors<Self> {
        let (shadows, values) = (pairs.shadows.into_array(), pairs.values.into_array());
        let updated = if eight_fit(&shadows[0]) {
            launch_eight(shadows, values, weight)
        } else {
            let mut values = values.into_iter();
            shadows.map(|shadow| {
                let value = values.next().expect("eight values");
                launch(shadow, value, weight, false)
            })
        };
        EightTensors::from_array(updated)
    }
}

#[cfg(feature = "bench")]
impl TriadBackend for CubeBackend {
    fn triad(a: CubeTensor, b: CubeTensor, s: f64) -> CubeTensor {
        launch(a, b, s, true)
    }
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

/// The widest vector width that divides a rank-1 tensor's length and suits its element type.
fn vector_size(t: &CubeTensor) -> usize {
    cubecl::tensor_vector_size_parallel(
        t.client.io_optimized_vector_sizes(t.dtype.size()),
        t.meta.shape(),
        t.meta.strides(),
        t.meta.num_dims() - 1,
    ) as usize
}

/// Storage buffers one launch of [`kernel::ema_eight_kernel`] binds: sixteen tensors and
/// CubeCL's buffer of lengths and scalars.
const EIGHT_BINDINGS: u32 = 17;

/// Whether the device lets one kernel bind eight pairs. Vulkan, Metal and CUDA allow far more;
/// wgpu's OpenGL backend allows 16 storage buffers per stage and WebGPU's default is 8, where
/// eight pairs go one launch each instead (CubeCL's `max_bindings` already keeps back the
/// buffer wgpu may add of its own).
fn eight_fit(t: &CubeTensor) -> bool {
    t.client.properties().hardware.max_bindings >= EIGHT_BINDINGS
}

/// One launch of [`kernel::ema_eight_kernel`] over eight pairs of one element type.
fn launch_eight(shadows: [CubeTensor; 8], values: [CubeTensor; 8], weight: f64) -> [CubeTensor; 8] {
    use cubecl::prelude::*;
    let shadows = shadows.map(writable);
    let values = values.map(into_contiguous);
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
    let arg = |t: &CubeTensor| t.clone().into_tensor_arg();
    let [s0, s1, s2, s3, s4, s5, s6, s7] = &shadows;
    let [v0, v1, v2, v3, v4, v5, v6, v7] = values;
    kernel::ema_eight_kernel::launch(
        &client,
        cube_count,
        cube_dim,
        vector,
        arg(s0),
        v0.into_tensor_arg(),
        arg(s1),
        v1.into_tensor_arg(),
        arg(s2),
        v2.into_tensor_arg(),
        arg(s3),
        v3.into_tensor_arg(),
        arg(s4),
        v4.into_tensor_arg(),
        arg(s5),
        v5.into_tensor_arg(),
        arg(s6),
        v6.into_tensor_arg(),
        arg(s7),
        v7.into_tensor_arg(),
        InputScalar::new(weight, storage),
        storage,
    );
    shadows
}
