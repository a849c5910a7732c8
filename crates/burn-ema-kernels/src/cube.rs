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
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::EmaBackend;
#[cfg(feature = "bench")]
use crate::bound::TriadBackend;

mod kernel {
    use super::cubecl;
    use cubecl::prelude::*;

    /// Units per tile: a warp on NVIDIA, so that a warp's loads are one contiguous run.
    pub const TILE: usize = 32;

    /// Vector `pos` of pair `i`: `s − (s − v)·w`, and with `two` the same for the value's second
    /// shadow (weight `w2`), the value read once for both.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn update_vector<F: Float, N: Size>(
        shadows: &mut Sequence<OwnedTensor<Vector<F, N>>>,
        seconds: &mut Sequence<OwnedTensor<Vector<F, N>>>,
        values: &Sequence<OwnedTensor<Vector<F, N>>>,
        #[comptime] i: usize,
        pos: usize,
        w: Vector<F, N>,
        w2: Vector<F, N>,
        #[comptime] two: bool,
    ) {
        let v = values.index(i)[pos];
        let shadow = shadows.index_mut(i);
        let s = shadow[pos];
        shadow[pos] = s - (s - v) * w;
        if two {
            let second = seconds.index_mut(i);
            let s2 = second[pos];
            second[pos] = s2 - (s2 - v) * w2;
        }
    }

    /// The update of many shadow/value pairs in one launch, tensors of any sizes. With one
    /// vector a unit (`per_unit` 1), unit `i` updates vector `i` of the pairs laid end to end.
    /// With more, each pair is cut into tiles of `TILE · per_unit` vectors, the tiles of the
    /// pairs laid end to end, and [`TILE`] consecutive units take one tile: unit `lane` of it
    /// updates vectors `lane`, `lane + TILE`, … (`per_unit` of them, fewer at a pair's end), so
    /// that neighbouring units read neighbouring vectors. A unit finds its pair by walking the
    /// pairs' tile counts once, whatever `per_unit`: with more vectors a unit, the walk is paid
    /// over more work. With `two`, each value has a second shadow (`seconds`, weight
    /// `second_weight`: two averages of one model), read once for both. The number of pairs is
    /// part of the compiled kernel (the walk is unrolled), and so is `per_unit`: a model's
    /// update compiles a few kernels once, then reuses them every step.
    #[cube(launch)]
    pub fn ema_many_kernel<F: Float, N: Size>(
        shadows: &mut Sequence<OwnedTensor<Vector<F, N>>>,
        seconds: &mut Sequence<OwnedTensor<Vector<F, N>>>,
        values: &Sequence<OwnedTensor<Vector<F, N>>>,
        weight: InputScalar,
        second_weight: InputScalar,
        #[comptime] two: bool,
        #[comptime] per_unit: usize,
        #[define(F)] _dtype: ElemType,
    ) {
        let w = Vector::new(weight.get::<F>());
        let w2 = Vector::new(second_weight.get::<F>());
        if per_unit == 1 {
            // One vector a unit, the pairs laid end to end without tiles: no loop, no padding.
            let mut pos = ABSOLUTE_POS;
            #[unroll]
            for i in 0..values.len() {
                let value = values.index(i);
                let len = value.len();
                if pos < len {
                    update_vector(shadows, seconds, values, i, pos, w, w2, two);
                    terminate!();
                }
                pos -= len;
            }
            terminate!();
        }
        let span = TILE * per_unit;
        let mut tile = ABSOLUTE_POS / TILE;
        let lane = ABSOLUTE_POS % TILE;
        #[unroll]
        for i in 0..values.len() {
            let value = values.index(i);
            let len = value.len();
            let tiles = len.div_ceil(span);
            if tile < tiles {
                let base = tile * span + lane;
                let mut count = 0;
                if base < len {
                    count = clamp_max((len - base).div_ceil(TILE), per_unit);
                }
                for j in 0..count {
                    update_vector(shadows, seconds, values, i, base + j * TILE, w, w2, two);
                }
                terminate!();
            }
            tile -= tiles;
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

/// The most values one launch updates: [`MAX_PAIRS_PER_LAUNCH`], or fewer where the device
/// binds fewer storage buffers per kernel (one per value and per shadow, and CubeCL's buffer of
/// lengths and scalars): wgpu's OpenGL backend 16 (seven pairs, five with two shadows each),
/// WebGPU's default 8 (three, two). At least one.
fn values_per_launch(t: &CubeTensor, shadows_per_value: usize) -> usize {
    let bindings = t.client.properties().hardware.max_bindings as usize;
    let cap = MAX_PAIRS.load(Ordering::Relaxed);
    (bindings.saturating_sub(1) / (1 + shadows_per_value)).clamp(1, cap.max(1))
}

/// Pairs per launch, chosen by measurement: a unit finds its pair by walking the pairs before
/// it, so more pairs a launch means fewer launches but more work per unit. On lavapipe
/// (ResNet-50/8, 161 tensors, one vector a unit, BENCHMARKS.md) 2, 4, 8 and 15 pairs a launch
/// took 3.3-3.7, 2.7-3.1, 2.7-2.9 and 3.5-3.6 ms per update. Each count compiles its own kernel.
pub(crate) const MAX_PAIRS_PER_LAUNCH: usize = 8;

/// The cap in force: [`MAX_PAIRS_PER_LAUNCH`] unless [`crate::tuning`] sets another.
pub(crate) static MAX_PAIRS: AtomicUsize = AtomicUsize::new(MAX_PAIRS_PER_LAUNCH);

/// Vectors a unit updates, when [`crate::tuning`] fixes it (0: as the autotune chose, [`tuned`]).
pub(crate) static VECTORS_PER_UNIT: AtomicUsize = AtomicUsize::new(0);

/// Shadows of one element type with their values: one shadow per value, or two (`seconds`, one
/// per value too: two averages of one model, each value read once for both).
pub(crate) struct Pairs {
    pub(crate) shadows: Vec<CubeTensor>,
    /// Empty, or each value's second shadow.
    pub(crate) seconds: Vec<CubeTensor>,
    pub(crate) values: Vec<CubeTensor>,
    /// The weight of `shadows`, and of `seconds`.
    pub(crate) weights: [f64; 2],
}

/// Updates pairs in as few launches as the device's bindings allow ([`values_per_launch`]);
/// returns the new shadows and seconds, in order.
pub(crate) fn update_pairs(pairs: Pairs) -> (Vec<CubeTensor>, Vec<CubeTensor>) {
    let Pairs {
        shadows,
        seconds,
        values,
        weights,
    } = pairs;
    let two = !seconds.is_empty();
    let Some(first) = shadows.first() else {
        return (shadows, seconds);
    };
    if shadows.len() == 1 && !two {
        let (shadow, value) = (shadows.into_iter().next(), values.into_iter().next());
        let shadow = launch(shadow.expect("one"), value.expect("one"), weights[0], false);
        return (vec![shadow], seconds);
    }
    let per_launch = values_per_launch(first, if two { 2 } else { 1 });
    let (mut out, mut out_seconds) = (Vec::new(), Vec::new());
    let (mut shadows, mut seconds) = (shadows.into_iter(), seconds.into_iter());
    let mut values = values.into_iter();
    loop {
        let chunk: Vec<_> = values.by_ref().take(per_launch).collect();
        if chunk.is_empty() {
            return (out, out_seconds);
        }
        let launch = Pairs {
            shadows: shadows.by_ref().take(chunk.len()).collect(),
            seconds: seconds
                .by_ref()
                .take(if two { chunk.len() } else { 0 })
                .collect(),
            values: chunk,
            weights,
        };
        let (updated, updated_seconds) = launch_many(launch);
        out.extend(updated);
        out_seconds.extend(updated_seconds);
    }
}

/// One launch of [`kernel::ema_many_kernel`] (as many values as [`values_per_launch`] allows:
/// the caller splits), in place where a shadow may be written.
fn launch_many(pairs: Pairs) -> (Vec<CubeTensor>, Vec<CubeTensor>) {
    let shadows: Vec<_> = pairs.shadows.into_iter().map(writable).collect();
    let seconds: Vec<_> = pairs.seconds.into_iter().map(writable).collect();
    let values: Vec<_> = pairs.values.into_iter().map(into_contiguous).collect();
    let vector = shadows
        .iter()
        .chain(&seconds)
        .chain(&values)
        .filter(|t| t.meta.num_elements() > 0)
        .map(vector_size)
        .min()
        .unwrap_or(1);
    if values.iter().all(|t| t.meta.num_elements() < vector) {
        return (shadows, seconds);
    }
    let launch = Launch {
        shadows,
        seconds,
        values,
        weights: pairs.weights,
        vector,
    };
    match VECTORS_PER_UNIT.load(Ordering::Relaxed) {
        0 => tuned(launch.clone()),
        fixed => launch.run(fixed),
    }
    (launch.shadows, launch.seconds)
}

/// A launch's tensors, ready: shadows that may be written in place, contiguous values, the
/// vector width they share.
#[derive(Clone)]
struct Launch {
    shadows: Vec<CubeTensor>,
    seconds: Vec<CubeTensor>,
    values: Vec<CubeTensor>,
    weights: [f64; 2],
    vector: usize,
}

impl Launch {
    /// Runs the kernel with `per_unit` vectors a unit.
    fn run(&self, per_unit: usize) {
        use cubecl::prelude::*;
        let vector = self.vector;
        let lens = self.values.iter().map(|t| t.meta.num_elements() / vector);
        let units = match per_unit {
            1 => lens.sum(),
            _ => {
                let span = kernel::TILE * per_unit;
                lens.map(|n| n.div_ceil(span)).sum::<usize>() * kernel::TILE
            }
        };
        let client = &self.values[0].client;
        let cube_dim = CubeDim::new(client, units);
        let cube_count = cubecl::calculate_cube_count_elemwise(client, units, cube_dim);
        let storage = dtype_to_storage_type(self.shadows[0].dtype);
        let arg = |t: &CubeTensor| t.clone().into_tensor_arg();
        count_launch();
        kernel::ema_many_kernel::launch(
            client,
            cube_count,
            cube_dim,
            vector,
            self.shadows.iter().map(arg).collect(),
            self.seconds.iter().map(arg).collect(),
            self.values.iter().map(arg).collect(),
            InputScalar::new(self.weights[0], storage),
            InputScalar::new(self.weights[1], storage),
            !self.seconds.is_empty(),
            per_unit,
            storage,
        );
    }

    /// The same launch on copies of its shadows, for the tuner to time: the update is in
    /// place, and the real shadows must be updated once.
    fn with_copied_shadows(&self) -> Self {
        let copy = |t: &CubeTensor| into_contiguous(t.copy());
        Self {
            shadows: self.shadows.iter().map(copy).collect(),
            seconds: self.seconds.iter().map(copy).collect(),
            ..self.clone()
        }
    }

    /// What the tuner keys its choice on: element type, vector width, pairs, one or two
    /// shadows a value, and the launch's vectors to the power of two.
    fn tune_key(&self) -> String {
        let vectors: usize = self
            .values
            .iter()
            .map(|t| t.meta.num_elements() / self.vector)
            .sum();
        format!(
            "{:?} x{} {} pairs {} shadows a value 2^{} vectors",
            self.shadows[0].dtype,
            self.vector,
            self.values.len(),
            if self.seconds.is_empty() { 1 } else { 2 },
            vectors.max(1).ilog2()
        )
    }
}

/// Vectors a unit the tuner chooses among, the GPU's safe choice first (the one a tuner that
/// measures nothing runs).
const TUNED_VECTORS_PER_UNIT: [usize; 3] = [1, 4, 16];

/// Runs `launch` in the shape CubeCL's autotune measured fastest for its key on this device
/// (measured on copies of the shadows the first time a key is seen), as Burn picks its matmul
/// and reduce kernels. On lavapipe, a CPU running units a few at a time, the tuned update runs
/// as fast as with 16 vectors a unit fixed (BENCHMARKS.md); a GPU hides a load's latency with
/// many units in flight, so it may pick fewer in small launches (not yet measured on one).
fn tuned(launch: Launch) {
    use burn_cubecl::CubeTuneId;
    use cubecl::tune::{LocalTuner, Tunable, TunableSet, local_tuner};
    static TUNER: LocalTuner<String, CubeTuneId> = local_tuner!();
    let client = launch.values[0].client.clone();
    let id = CubeTuneId::new(&client, &launch.values[0].device);
    let set = TUNER.init(&id, || {
        let key = |launch: &Launch| launch.tune_key();
        let inputs = |_: &String, launch: &Launch| launch.with_copied_shadows();
        let mut set = TunableSet::new(key, inputs);
        for per_unit in TUNED_VECTORS_PER_UNIT {
            let name = format!("{per_unit} vectors a unit");
            set = set.with(Tunable::new(&name, move |launch: Launch| {
                launch.run(per_unit);
                Ok::<(), String>(())
            }));
        }
        set
    });
    TUNER.execute(&id, &client, set, launch);
}
