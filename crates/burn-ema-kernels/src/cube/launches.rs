//! Pairs cut into launches of the kernel, each launch in the shape CubeCL's autotune measured
//! fastest on this device (or the one [`crate::tuning`] fixes).

use std::sync::atomic::{AtomicUsize, Ordering};

use burn::backend::cubecl::dtype_to_storage_type;
use burn_cubecl::cubecl;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;

use super::kernel;
use super::{count_launch, vector_size, writable};

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
        let value_storage = dtype_to_storage_type(self.values[0].dtype);
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
            [storage, value_storage],
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

    /// What the tuner keys its choice on: element types, vector width, pairs, one or two
    /// shadows a value, and the launch's vectors to the power of two.
    fn tune_key(&self) -> String {
        let vectors: usize = self
            .values
            .iter()
            .map(|t| t.meta.num_elements() / self.vector)
            .sum();
        format!(
            "{:?} of {:?} x{} {} pairs {} shadows a value 2^{} vectors",
            self.shadows[0].dtype,
            self.values[0].dtype,
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
