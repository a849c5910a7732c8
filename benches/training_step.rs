//! What a training step pays for its EMA, by where the shadow lives: one SGD step of an
//! autodiff MLP (forward, backward, optimizer, the loss read back as a training loop does for its
//! metrics), then the EMA update, through the public API.
//!
//! Rows, side by side in one run:
//! - `no EMA`: the step alone;
//! - `EMA on the model's device`: `EmaModule::update` after each step;
//! - `shadow on the host, inline`: `ShadowPlacement::Device(Flex)`: each update copies the weights to
//!   the host and averages there, before the next step;
//! - `shadow on the host, offload`: `offload(Flex)`: the copy, then the averaging on a worker
//!   thread that overlaps the next step.
//!
//! Groups: `step-flex/<model>` (CPU) and, with feature `wgpu`, `step-wgpu/<model>`. Models:
//! `mlp-1.0M` (784-1024-192-10, batch 128) and, with `EMA_BENCH_LARGE=1`, `mlp-25.2M`
//! (1024-4096-4096-1024, the size of ResNet-50). Run: `cargo bench --bench training_step
//! --features flex,ndarray` (add `wgpu` for the wgpu groups). See BENCHMARKS.md.
//!
//! With `EMA_BENCH_FOLD=1`, groups `fold-flex/resnet50-div8` (and `fold-wgpu/…`): an Adam step
//! on the launch-bound set, alone, then `EmaModule::update`, and with the EMA folded into Adam's
//! per-parameter step (a prototype optimizer, [`fold`]): what folding the EMA into the optimizer
//! could save, before building it.

use std::hint::black_box;
use std::time::Duration;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn_ema::{EmaConfig, EmaModule, MovingAverage, ShadowPlacement};
use criterion::{Criterion, criterion_group, criterion_main};

mod common;

const BATCH: usize = 128;

#[derive(Module, Debug)]
struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    fn new(widths: &[usize], device: &Device) -> Self {
        let layers = widths
            .windows(2)
            .map(|w| LinearConfig::new(w[0], w[1]).init(device))
            .collect();
        Self { layers }
    }

    fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = relu(x);
            }
        }
        x
    }
}

/// One SGD step of `model` on a fixed batch; returns the loss, read back.
fn sgd_step(model: Mlp, optim: &mut ModuleOptimizer, input: &Tensor<2>) -> (Mlp, f32) {
    let loss = model.forward(input.clone()).powf_scalar(2.0).mean();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = optim.step(1e-4, model, grads);
    (model, loss.into_scalar::<f32>())
}

fn models() -> Vec<(&'static str, Vec<usize>)> {
    let mut models = vec![("mlp-1.0M", vec![784, 1024, 192, 10])];
    if std::env::var("EMA_BENCH_LARGE").is_ok_and(|v| v == "1") {
        models.push(("mlp-25.2M", vec![1024, 4096, 4096, 1024]));
    } else {
        eprintln!("training_step: mlp-25.2M skipped (set EMA_BENCH_LARGE=1 to run it)");
    }
    models
}

/// One configuration of the training loop: the bare model, or an `EmaModule`.
enum Run {
    Bare(Option<Mlp>, ModuleOptimizer),
    Ema(Box<EmaModule<Mlp>>, ModuleOptimizer),
}

impl Run {
    fn step(&mut self, input: &Tensor<2>) -> f32 {
        match self {
            Run::Bare(model, optim) => {
                let (m, loss) = sgd_step(model.take().unwrap(), optim, input);
                *model = Some(m);
                loss
            }
            Run::Ema(ema, optim) => {
                let (m, loss) = sgd_step(ema.model().clone(), optim, input);
                *ema.model_mut() = m;
                ema.update().unwrap();
                loss
            }
        }
    }
}

fn bench_steps(c: &mut Criterion, backend: &str, device: &Device, host_rows: bool) {
    let ad = device.clone().autodiff();
    for (name, widths) in models() {
        let input = Tensor::<2>::ones([BATCH, widths[0]], &ad).mul_scalar(0.01);
        let config = EmaConfig::new(0.999);
        let optim = || SgdConfig::new().init();
        let ema = || EmaModule::new(Mlp::new(&widths, &ad), config.clone()).unwrap();
        let mut runs = vec![
            ("no EMA", Run::Bare(Some(Mlp::new(&widths, &ad)), optim())),
            (
                "EMA on the model's device",
                Run::Ema(Box::new(ema()), optim()),
            ),
        ];
        if host_rows {
            let inline = ema()
                .with_placement(ShadowPlacement::Device(Device::flex()))
                .unwrap();
            runs.push((
                "shadow on the host, inline",
                Run::Ema(Box::new(inline), optim()),
            ));
        }
        let offload = ema()
            .with_placement(ShadowPlacement::Offload(Device::flex()))
            .unwrap();
        runs.push((
            "shadow on the host, offload",
            Run::Ema(Box::new(offload), optim()),
        ));
        // Every configuration warmed up (kernels compiled, pools filled) before any is timed,
        // and the bare step timed again last, to show the drift over the run.
        for (_, run) in &mut runs {
            for _ in 0..3 {
                run.step(&input);
            }
        }
        let mut group = c.benchmark_group(format!("step-{backend}/{name}"));
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(5));
        for (id, run) in &mut runs {
            group.bench_function(*id, |b| b.iter(|| black_box(run.step(&input))));
        }
        let (_, bare) = &mut runs[0];
        group.bench_function("no EMA, again", |b| b.iter(|| black_box(bare.step(&input))));
        group.finish();
        if let Some((_, Run::Ema(ema, optim))) = runs.last_mut() {
            caller_share(&format!("step-{backend}/{name}"), ema, optim, &input);
        }
    }
}

/// What an offloaded update costs the training thread: 20 steps (warmed up), each timed whole
/// (the step, its loss read back, then `update()`) and its `update()` call alone, which
/// hands the copy and the averaging to the worker but first waits for the previous update if
/// it is still running. Printed, not a criterion row: criterion sizes its iterations by the
/// measured time, and a call of microseconds timed inside a step of hundreds of milliseconds
/// would make it run for hours.
fn caller_share(
    group: &str,
    ema: &mut EmaModule<Mlp>,
    optim: &mut ModuleOptimizer,
    input: &Tensor<2>,
) {
    use std::time::Instant;
    assert!(ema.stats().offloaded);
    let (mut steps, mut calls, mut shares) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..20 {
        let start = Instant::now();
        let (model, loss) = sgd_step(ema.model().clone(), optim, input);
        black_box(loss);
        *ema.model_mut() = model;
        let call = Instant::now();
        ema.update().unwrap();
        let end = Instant::now();
        let (step, call) = ((end - start).as_secs_f64(), (end - call).as_secs_f64());
        steps.push(step * 1e3);
        calls.push(call * 1e3);
        shares.push(call / step * 100.0);
    }
    ema.sync().unwrap();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    let ((step, _), (call, call_max), (share, share_max)) =
        (median(&mut steps), median(&mut calls), median(&mut shares));
    println!(
        "{group}: offload, the update() call on the training thread: median {call:.3} ms of a \
         {step:.1} ms step, {share:.2}% (max {call_max:.3} ms, {share_max:.2}%; 20 steps)"
    );
}

/// What moving 25.2M parameters (100 MB) from the GPU to the host costs through Burn 0.22.1:
/// the read alone, and the read plus the copy out of wgpu's staging buffer that burn-ema makes
/// (the read's bytes stay in that buffer, which the next read overwrites).
#[cfg(feature = "wgpu")]
fn bench_readback(c: &mut Criterion) {
    let device = Device::wgpu(Default::default());
    let n = 25_165_824;
    let t = Tensor::<1>::ones([n], &device);
    let mut group = c.benchmark_group("transfer-wgpu/25.2M f32");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(criterion::Throughput::Bytes(4 * n as u64));
    group.bench_function("into_data", |b| {
        b.iter(|| black_box(t.clone().into_data().as_bytes().len()))
    });
    group.bench_function("into_data, bytes copied out", |b| {
        b.iter(|| black_box(t.clone().into_data().as_bytes().to_vec().len()))
    });
    group.bench_function("into_data, bytes copied out by all threads", |b| {
        use rayon::prelude::*;
        b.iter(|| {
            let data = t.clone().into_data();
            let src = data.as_bytes();
            let mut out = vec![0u8; src.len()];
            out.par_chunks_mut(1 << 20)
                .zip(src.par_chunks(1 << 20))
                .for_each(|(d, s)| d.copy_from_slice(s));
            black_box(out.len())
        })
    });
    group.finish();
}

/// The optimizer fold, measured before deciding whether to build it (issue 21's fourth
/// candidate): Adam whose per-parameter step also moves that parameter's shadow, as tensor
/// operations recorded right after Adam's, so that Burn's fusion may run both in one kernel.
/// The shadow lives in the optimizer's per-parameter state; constant decay; a prototype, not API.
mod fold {
    use burn::optim::{LearningRate, Optimizer, RecordState, StateSink, StateSource};
    use burn::prelude::*;

    #[derive(Clone)]
    pub struct EmaFold<O> {
        pub inner: O,
        pub decay: f32,
    }

    #[derive(Clone)]
    pub struct FoldState<S, const D: usize> {
        inner: Option<S>,
        shadow: Tensor<D>,
    }

    impl<S: RecordState, const D: usize> RecordState for FoldState<S, D> {
        fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
            if let Some(inner) = &self.inner {
                inner.state_flatten(&format!("{prefix}.inner"), out);
            }
            out.push_tensor(prefix, "shadow", self.shadow.to_data());
        }
        fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
            let inner = S::state_unflatten(&format!("{prefix}.inner"), src, device);
            let shadow = Tensor::from_data(src.take_tensor(prefix, "shadow")?, device);
            Some(Self { inner, shadow })
        }
    }

    impl<O: Optimizer> Optimizer for EmaFold<O> {
        type State<const D: usize> = FoldState<O::State<D>, D>;

        fn step<const D: usize>(
            &self,
            lr: LearningRate,
            tensor: Tensor<D>,
            grad: Tensor<D>,
            state: Option<Self::State<D>>,
        ) -> (Tensor<D>, Option<Self::State<D>>) {
            let (shadow, inner) = match state {
                Some(s) => (Some(s.shadow), s.inner),
                None => (None, None),
            };
            let (tensor, inner) = self.inner.step(lr, tensor, grad, inner);
            let shadow = match shadow {
                Some(shadow) => {
                    shadow.clone() + (tensor.clone() - shadow).mul_scalar(1.0 - self.decay)
                }
                None => tensor.clone(),
            };
            (tensor, Some(FoldState { inner, shadow }))
        }

        fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
            FoldState {
                inner: state.inner.map(|s| O::to_device(s, device)),
                shadow: state.shadow.to_device(device),
            }
        }
    }
}

/// One Adam step on the launch-bound set (`ResNet50Div8`: 161 tensors at ResNet-50's ranks),
/// loss `Σ mean(p²)`; then nothing, `EmaModule::update`, or the EMA folded into Adam's step.
/// The step's result is waited for (a training loop reads its loss).
fn bench_fold(c: &mut Criterion, backend: &str, device: &Device) {
    use burn::optim::AdamConfig;
    use common::ResNet50Div8;
    let ad = device.clone().autodiff();
    fn loss(m: &ResNet50Div8) -> Tensor<1> {
        let mut loss = m.classifier.val().powf_scalar(2.0).mean()
            + m.classifier_bias.val().powf_scalar(2.0).mean();
        for k in &m.kernels {
            loss = loss + k.val().powf_scalar(2.0).mean();
        }
        for v in &m.vectors {
            loss = loss + v.val().powf_scalar(2.0).mean();
        }
        loss
    }
    fn step(model: ResNet50Div8, optim: &mut ModuleOptimizer) -> (ResNet50Div8, f32) {
        let loss = loss(&model);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = optim.step(1e-4, model, grads);
        (model, loss.into_scalar::<f32>())
    }
    let adam = || AdamConfig::new().init();
    let folded = || {
        ModuleOptimizer::from(fold::EmaFold {
            inner: AdamConfig::new().build(),
            decay: 0.999,
        })
    };
    enum Row {
        Bare(Option<ResNet50Div8>, ModuleOptimizer),
        Ema(Box<EmaModule<ResNet50Div8>>, ModuleOptimizer),
    }
    impl Row {
        fn run(&mut self) -> f32 {
            match self {
                Row::Bare(model, optim) => {
                    let (m, loss) = step(model.take().unwrap(), optim);
                    *model = Some(m);
                    loss
                }
                Row::Ema(ema, optim) => {
                    let (m, loss) = step(ema.model().clone(), optim);
                    *ema.model_mut() = m;
                    ema.update().unwrap();
                    loss
                }
            }
        }
    }
    let ema = EmaModule::new(ResNet50Div8::new(&ad), EmaConfig::new(0.999)).unwrap();
    let mut rows = vec![
        ("Adam", Row::Bare(Some(ResNet50Div8::new(&ad)), adam())),
        (
            "Adam, then EmaModule::update",
            Row::Ema(Box::new(ema), adam()),
        ),
        (
            "Adam with the EMA folded in (prototype)",
            Row::Bare(Some(ResNet50Div8::new(&ad)), folded()),
        ),
    ];
    for (_, row) in &mut rows {
        for _ in 0..3 {
            row.run();
        }
    }
    let mut group = c.benchmark_group(format!("fold-{backend}/resnet50-div8"));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for (id, row) in &mut rows {
        group.bench_function(*id, |b| b.iter(|| black_box(row.run())));
    }
    let (_, bare) = &mut rows[0];
    group.bench_function("Adam, again", |b| b.iter(|| black_box(bare.run())));
    group.finish();
}

fn benches(c: &mut Criterion) {
    if std::env::var("EMA_BENCH_FOLD").is_ok_and(|v| v == "1") {
        bench_fold(c, "flex", &Device::flex());
        #[cfg(feature = "wgpu")]
        bench_fold(c, "wgpu", &Device::wgpu(Default::default()));
    }
    // On the CPU the host is the model's device: no inline row (it would be the first one);
    // the offload row runs the averaging on another thread, competing with the step for cores.
    bench_steps(c, "flex", &Device::flex(), false);
    #[cfg(feature = "wgpu")]
    {
        bench_steps(c, "wgpu", &Device::wgpu(Default::default()), true);
        bench_readback(c);
    }
}

criterion_group!(steps, benches);
criterion_main!(steps);
