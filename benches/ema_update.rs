//! One EMA update over a whole parameter set, per backend, side by side in one run:
//!
//! - `triad`: the bandwidth bound, a plain in-place `a += s·b` slice loop over the same bytes
//!   (two reads and one write per element), all tensors in one parallel pass like the batch;
//! - `fused-batch`: burn-ema's batched update (`burn_ema_kernels::update_many`), every tensor in
//!   one parallel pass, in place — what `EmaModule::update` runs;
//! - `fused-per-tensor`: the backend-extension op (`burn_ema_kernels::update`), one call and one
//!   parallel pass per tensor;
//! - `tensor-op`: the same formula as plain Burn tensor ops (`s − (s − p)·w`);
//! - `naive`: `s·d + p·(1 − d)`, what one writes without thinking about memory;
//! - `EmaModule::update`: the batched update plus the walks over the module, and `EmaModule
//!   walks only` (decay 1: no tensor changes) for what the walks cost;
//! - `interleaved: ...`: the triad, the batch and `EmaModule::update` alternating within each
//!   sample, with the C triad of `../shared/bench/triad.c` (`benches/c/triad_pass.c`) as a
//!   fourth when `BURN_EMA_C_TRIAD` names it built (`scripts/c-triad` builds and runs it); the
//!   caches flushed before each pass (twice the last-level cache written, untimed), as
//!   `triad.c` does: every pass reads its arrays from memory, as inside a training step.
//!
//! And two EMAs of the ResNet-50 set (post-hoc EMA keeps two): `MultiEma::update`, which reads
//! each parameter once for both, against two `EmaModule::update`s.
//!
//! With feature `wgpu`, the same sets on wgpu (`ema-wgpu/...`: the triad kernel, the fused
//! kernel, the naive tensor ops, `EmaModule::update` on an autodiff model), the cost of a
//! launch (`ema-wgpu/launches`), and a launch-bound set through the public API
//! (`ema-wgpu/launch-bound`: ResNet-50's tensors at their ranks, channels divided by 8, against
//! one flat tensor of the same values; it prints the fused-kernel launches per update).
//!
//! Sets: the float parameters of ResNet-50 (161 tensors, 25.6M values), one flat tensor of the
//! same size, and an MLP of 1.0M parameters. Run: `cargo bench --bench ema_update --features
//! flex,ndarray` (add `wgpu` for the wgpu groups); `RAYON_NUM_THREADS` sets the thread count.
//! See BENCHMARKS.md.
#![allow(deprecated)] // NdArray is deprecated by Burn 0.22, and still benchmarked.

mod common;

use std::hint::black_box;
use std::time::Duration;

use burn::module::Param;
use burn::prelude::*;
use burn_ema::{EmaConfig, EmaModule, MovingAverage, MultiEma, NonFinite};
use burn_ema_kernels::{cpu, tensor_op_update, update, update_many};
use common::{ParamSet, group, resnet50, tensors, values};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const DECAY: f64 = 0.999;

fn sets() -> Vec<(&'static str, Vec<usize>)> {
    let resnet = resnet50();
    assert_eq!(resnet.len(), 161);
    assert_eq!(resnet.iter().sum::<usize>(), 25_557_032);
    vec![
        ("resnet50-161x", resnet),
        ("flat-25.6M", vec![25_557_032]),
        (
            "mlp-1.0M",
            vec![784 * 1024, 1024, 1024 * 192, 192, 192 * 10, 10],
        ),
    ]
}

/// The bound: `a += −w·b` over every slice pair in one parallel pass (same traffic as the
/// update: two reads and one write per element).
fn triad_pass(a: &mut [Vec<f32>], b: &[Vec<f32>], w: f64) {
    let jobs = a
        .iter_mut()
        .zip(b)
        .map(|(a, b)| cpu::Job::new(a, b, -w))
        .collect();
    cpu::triad_batch(jobs);
}

fn bench_set(c: &mut Criterion, name: &str, sizes: &[usize]) {
    let total: usize = sizes.iter().sum();
    let mut group = group(c, format!("ema/{name}"));
    group.throughput(Throughput::Bytes(12 * total as u64));
    let w = (1.0f32 - DECAY as f32) as f64;

    // The bound: slices, no Burn.
    let mut a: Vec<Vec<f32>> = sizes.iter().map(|&n| values(n, 1.0)).collect();
    let b: Vec<Vec<f32>> = sizes.iter().map(|&n| values(n, 2.0)).collect();
    group.bench_function("triad", |bench| {
        bench.iter(|| {
            triad_pass(&mut a, &b, w);
            black_box(&a);
        })
    });
    drop((a, b));

    // The fast paths of both backends first, close in time to the bound (a shared machine's
    // bandwidth drifts over minutes); the slow tensor-op paths after.
    let backends = [("flex", Device::flex()), ("ndarray", Device::ndarray())];
    for (backend, device) in &backends {
        let params = tensors(sizes, 2.0, device);
        let mut shadows = Some(tensors(sizes, 1.0, device));
        group.bench_function(BenchmarkId::new("fused-batch", backend), |bench| {
            bench.iter(|| {
                let s = shadows.take().unwrap();
                let jobs = s.into_iter().zip(&params).map(|(s, p)| (s, p.clone(), w));
                shadows = Some(update_many(jobs.collect()));
            })
        });
        drop(shadows);
        let model = ParamSet {
            tensors: params.iter().cloned().map(Param::from_tensor).collect(),
        };
        let mut ema = EmaModule::new(model, EmaConfig::new(DECAY)).unwrap();
        group.bench_function(BenchmarkId::new("EmaModule::update", backend), |bench| {
            bench.iter(|| ema.update().unwrap())
        });
        drop(ema);
        // What users wrap: an autodiff model whose parameters require gradients.
        let autodiff_model = || ParamSet {
            tensors: params
                .iter()
                .map(|p| Param::from_tensor(Tensor::from_inner(p.clone()).require_grad()))
                .collect(),
        };
        let mut ema = EmaModule::new(autodiff_model(), EmaConfig::new(DECAY)).unwrap();
        group.bench_function(
            BenchmarkId::new("EmaModule::update, autodiff model", backend),
            |bench| bench.iter(|| ema.update().unwrap()),
        );
        drop(ema);
        // The triad, the batch and `EmaModule::update` alternating inside each sample, so the
        // VM's drift (20% between rows minutes apart) hits all three alike: each row reports
        // its own share of the same samples.
        let mut shadows = Some(tensors(sizes, 1.0, device));
        let mut ema = EmaModule::new(autodiff_model(), EmaConfig::new(DECAY)).unwrap();
        let mut a: Vec<Vec<f32>> = sizes.iter().map(|&n| values(n, 1.0)).collect();
        let b: Vec<Vec<f32>> = sizes.iter().map(|&n| values(n, 2.0)).collect();
        let mut c_triad = common::c_triad::CTriad::load(total);
        let mut flush = common::flush::Flush::new();
        let mut rows = vec![
            ("interleaved: triad", 0),
            ("interleaved: fused-batch", 1),
            ("interleaved: EmaModule::update, autodiff model", 2),
        ];
        if c_triad.is_some() {
            rows.push(("interleaved: C triad (OpenMP, one flat array)", 3));
        }
        for (id, pick) in rows {
            // Every sample's four times per update, for the same-sample figures printed below.
            let mut samples: Vec<[f64; 4]> = Vec::new();
            group.bench_function(BenchmarkId::new(id, backend), |bench| {
                bench.iter_custom(|iters| {
                    let mut spent = [Duration::ZERO; 4];
                    for _ in 0..iters {
                        if let Some(c_triad) = c_triad.as_mut() {
                            flush.run();
                            let start = std::time::Instant::now();
                            c_triad.pass(DECAY as f32);
                            spent[3] += start.elapsed();
                        }
                        flush.run();
                        let start = std::time::Instant::now();
                        triad_pass(&mut a, &b, w);
                        spent[0] += start.elapsed();
                        flush.run();
                        let start = std::time::Instant::now();
                        let s = shadows.take().unwrap();
                        let jobs = s.into_iter().zip(&params).map(|(s, p)| (s, p.clone(), w));
                        shadows = Some(update_many(jobs.collect()));
                        spent[1] += start.elapsed();
                        flush.run();
                        let start = std::time::Instant::now();
                        ema.update().unwrap();
                        spent[2] += start.elapsed();
                    }
                    black_box(&a);
                    samples.push(spent.map(|d| d.as_secs_f64() / iters as f64));
                    spent[pick]
                })
            });
            print_same_samples(&samples, c_triad.is_some());
        }
        drop((shadows, ema, a, b, c_triad, flush));
        group.bench_function(BenchmarkId::new("count_non_finite", backend), |bench| {
            bench.iter(|| black_box(burn_ema_kernels::count_non_finite(&params)))
        });
        // The cost of looking for NaN and infinities first (`NonFinite::Error` or `Skip`).
        let config = EmaConfig::new(DECAY).with_non_finite(NonFinite::Error);
        let mut ema = EmaModule::new(autodiff_model(), config).unwrap();
        group.bench_function(
            BenchmarkId::new("EmaModule::update, autodiff, NonFinite::Error", backend),
            |bench| bench.iter(|| ema.update().unwrap()),
        );
        drop(ema);
        let model = ParamSet {
            tensors: params.iter().cloned().map(Param::from_tensor).collect(),
        };
        // Decay 1 leaves every tensor as it is: what remains is the walks over the module.
        let mut ema = EmaModule::new(model, EmaConfig::new(1.0)).unwrap();
        group.bench_function(BenchmarkId::new("EmaModule walks only", backend), |bench| {
            bench.iter(|| ema.update().unwrap())
        });
        drop(ema);
        let mut shadows = Some(tensors(sizes, 1.0, device));
        group.bench_function(BenchmarkId::new("fused-per-tensor", backend), |bench| {
            bench.iter(|| {
                let s = shadows.take().unwrap();
                shadows = Some(
                    s.into_iter()
                        .zip(&params)
                        .map(|(s, p)| update(s, p.clone(), w))
                        .collect(),
                );
            })
        });
    }
    for (backend, device) in &backends {
        let params = tensors(sizes, 2.0, device);
        let mut shadows = Some(tensors(sizes, 1.0, device));
        group.bench_function(BenchmarkId::new("tensor-op", backend), |bench| {
            bench.iter(|| {
                let s = shadows.take().unwrap();
                shadows = Some(
                    s.into_iter()
                        .zip(&params)
                        .map(|(s, p)| tensor_op_update(s, p.clone(), w))
                        .collect(),
                );
            })
        });
        group.bench_function(BenchmarkId::new("naive", backend), |bench| {
            bench.iter(|| {
                let s = shadows.take().unwrap();
                shadows = Some(
                    s.into_iter()
                        .zip(&params)
                        .map(|(s, p)| s.mul_scalar(DECAY).add(p.clone().mul_scalar(1.0 - DECAY)))
                        .collect(),
                );
            })
        });
    }
    group.finish();
}

/// The interleaved rows' medians over the same samples (criterion's warm-up included), and the
/// median of each sample's ratio of the bounds to `EmaModule::update`: the four paths ran in
/// turn inside each sample, so these ratios see the same moment of a drifting machine.
fn print_same_samples(samples: &[[f64; 4]], with_c: bool) {
    if samples.is_empty() {
        return; // The row was filtered out of this run.
    }
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
    let ms = |k: usize| median(samples.iter().map(|s| s[k] * 1e3).collect());
    let ratio = |k: usize| median(samples.iter().map(|s| s[k] / s[2]).collect());
    let mut line = format!(
        "same {} samples, ms per update: triad {:.2}, fused-batch {:.2}, EmaModule::update {:.2}",
        samples.len(),
        ms(0),
        ms(1),
        ms(2)
    );
    if with_c {
        line += &format!(", C triad {:.2}", ms(3));
    }
    line += &format!("; EmaModule::update at {:.3} of the triad", ratio(0));
    if with_c {
        line += &format!(", {:.3} of the C triad", ratio(3));
    }
    eprintln!("{line} (medians of per-sample ratios)");
}

/// Two EMAs of one model (what post-hoc EMA keeps), ResNet-50 set on Flex: `MultiEma` reads
/// each parameter once for both shadows (20 bytes per parameter), two `EmaModule`s read it
/// twice (24 bytes).
fn bench_two_emas(c: &mut Criterion) {
    let mut group = group(c, "two-emas/resnet50-161x".into());
    let device = Device::flex();
    let model = || common::resnet50_model(&device);
    let configs = vec![EmaConfig::new(DECAY), EmaConfig::new(0.9999)];
    let mut multi = MultiEma::new(model(), configs.clone()).unwrap();
    group.bench_function("MultiEma::update (one pass, 20 B/param)", |bench| {
        bench.iter(|| multi.update().unwrap())
    });
    drop(multi);
    let live = model();
    let mut emas: Vec<_> = configs
        .into_iter()
        .map(|c| EmaModule::new(live.clone(), c).unwrap())
        .collect();
    group.bench_function("2 × EmaModule::update (24 B/param)", |bench| {
        bench.iter(|| {
            for ema in &mut emas {
                ema.update().unwrap();
            }
        })
    });
    group.finish();
}

/// The same parameter set on a CubeCL device (wgpu, CUDA): the triad kernel (the
/// bound, one launch per tensor), the fused kernel per tensor, the naive tensor ops, the batched
/// update (small tensors eight per launch), and `EmaModule::update` on an autodiff model.
///
/// Timed as training runs them: updates queued back to back and the device waited for once at
/// the end of each sample (`iter_custom`), so a sample's time per update is the pipelined cost,
/// not the submit-and-wait latency; `EmaModule::update, synced each` waits after every update.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn bench_cube(c: &mut Criterion, prefix: &str, device: &Device, name: &str, sizes: &[usize]) {
    use burn_ema_kernels::bound::triad;
    use burn_ema_kernels::tuning::set_vectors_per_unit;
    use std::time::Instant;
    let device = device.clone();
    let total: usize = sizes.iter().sum();
    let mut group = group(c, format!("{prefix}/{name}"));
    group.throughput(Throughput::Bytes(12 * total as u64));
    let w = (1.0f32 - DECAY as f32) as f64;
    let params = tensors(sizes, 2.0, &device);
    let mut shadows = Some(tensors(sizes, 1.0, &device));
    let mut run = |id: &str, step: &dyn Fn(Vec<Tensor<1>>) -> Vec<Tensor<1>>| {
        group.bench_function(id, |bench| {
            bench.iter_custom(|iters| {
                device.sync().unwrap();
                let start = Instant::now();
                for _ in 0..iters {
                    shadows = Some(step(shadows.take().unwrap()));
                }
                device.sync().unwrap();
                start.elapsed()
            })
        });
    };
    let each = |f: &dyn Fn(Tensor<1>, Tensor<1>) -> Tensor<1>, s: Vec<Tensor<1>>| {
        s.into_iter()
            .zip(&params)
            .map(|(s, p)| f(s, p.clone()))
            .collect::<Vec<_>>()
    };
    run("triad-kernel", &|s| each(&|s, p| triad(s, p, -w), s));
    run("fused-per-tensor", &|s| each(&|s, p| update(s, p, w), s));
    run("naive", &|s| {
        each(
            &|s, p| s.mul_scalar(DECAY).add(p.mul_scalar(1.0 - DECAY)),
            s,
        )
    });
    // What `EmaModule::update` runs: small tensors share launches, eight per kernel.
    run("fused-batch", &|s| {
        let jobs = s.into_iter().zip(&params).map(|(s, p)| (s, p.clone(), w));
        update_many(jobs.collect())
    });
    // The same with one vector a unit in every launch, against the tuner's choice above: the
    // setting is read when a launch runs, and each sample ends with the device waited for, so
    // it holds for this row only.
    set_vectors_per_unit(Some(1));
    run("fused-batch, one vector a unit", &|s| {
        let jobs = s.into_iter().zip(&params).map(|(s, p)| (s, p.clone(), w));
        update_many(jobs.collect())
    });
    set_vectors_per_unit(None);
    drop(shadows);
    let model = ParamSet {
        tensors: params
            .iter()
            .map(|p| Param::from_tensor(Tensor::from_inner(p.clone()).require_grad()))
            .collect(),
    };
    let mut ema = EmaModule::new(model, EmaConfig::new(DECAY)).unwrap();
    group.bench_function("EmaModule::update, autodiff model", |bench| {
        bench.iter_custom(|iters| {
            device.sync().unwrap();
            let start = Instant::now();
            for _ in 0..iters {
                ema.update().unwrap();
            }
            device.sync().unwrap();
            start.elapsed()
        })
    });
    group.bench_function("EmaModule::update, autodiff model, synced each", |bench| {
        bench.iter(|| {
            ema.update().unwrap();
            device.sync().unwrap();
        })
    });
    group.finish();
}

/// What launches cost on wgpu: 161 tiny tensors through `update_many` (eight per launch: 21
/// launches) and through `update` (one launch each), against one tensor of the same total size
/// (one launch). Host side (Burn's fusion, CubeCL, wgpu's encoding) plus the device's.
#[cfg(feature = "wgpu")]
fn bench_wgpu_launches(c: &mut Criterion) {
    let device = Device::wgpu(Default::default());
    let mut group = group(c, "ema-wgpu/launches".into());
    for (id, sizes) in [("161 x 64", vec![64; 161]), ("1 x 10304", vec![64 * 161])] {
        let params = tensors(&sizes, 2.0, &device);
        let mut shadows = Some(tensors(&sizes, 1.0, &device));
        group.bench_function(format!("{id}, update_many"), |bench| {
            bench.iter(|| {
                let s = shadows.take().unwrap();
                let jobs = s
                    .into_iter()
                    .zip(&params)
                    .map(|(s, p)| (s, p.clone(), 1e-3));
                let s = update_many(jobs.collect());
                device.sync().unwrap();
                shadows = Some(s);
            })
        });
        group.bench_function(format!("{id}, one launch per tensor"), |bench| {
            bench.iter(|| {
                let s = shadows.take().unwrap();
                let s: Vec<_> = s
                    .into_iter()
                    .zip(&params)
                    .map(|(s, p)| update(s, p.clone(), 1e-3))
                    .collect();
                device.sync().unwrap();
                shadows = Some(s);
            })
        });
    }
    group.finish();
}

/// The launch-bound set (ResNet-50's 161 tensors at their ranks, channels divided by 8:
/// 406,277 values) through `EmaModule::update` on an autodiff model, against one flat tensor
/// of the same values, and the engine alone (`update_many` on the same tensors at rank 1).
/// Updates queued back to back, the device waited for at the end of each sample. Prints the
/// fused-kernel launches per update.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn bench_launch_bound(c: &mut Criterion, prefix: &str, device: &Device) {
    use burn::tensor::DType;
    use burn_ema_kernels::tuning::launches as ema_launches;
    use burn_ema_kernels::tuning::{set_max_pairs_per_launch, set_vectors_per_unit};
    use common::{ResNet50Div8, flat_div8, flat_div8_of};
    use std::time::Instant;
    let device = device.clone();
    let mut group = group(c, format!("{prefix}/launch-bound"));
    group.throughput(Throughput::Bytes(12 * ResNet50Div8::TOTAL as u64));
    let mut queued = |id: &str, update: &mut dyn FnMut()| {
        // The first update tunes the launch shape (its timing launches are not the update's).
        update();
        device.sync().unwrap();
        let before = ema_launches();
        update();
        device.sync().unwrap();
        println!(
            "{id}: {} fused-kernel launches per update",
            ema_launches() - before
        );
        group.bench_function(id, |bench| {
            bench.iter_custom(|iters| {
                device.sync().unwrap();
                let start = Instant::now();
                for _ in 0..iters {
                    update();
                }
                device.sync().unwrap();
                start.elapsed()
            })
        });
    };
    let mut ema = EmaModule::new(ResNet50Div8::new(&device), EmaConfig::new(DECAY)).unwrap();
    queued("EmaModule::update, 161 tensors", &mut || {
        ema.update().unwrap();
    });
    drop(ema);
    let configs = vec![EmaConfig::new(DECAY), EmaConfig::new(0.9999)];
    let mut multi = MultiEma::new(ResNet50Div8::new(&device), configs).unwrap();
    queued("MultiEma::update, two EMAs, 161 tensors", &mut || {
        multi.update().unwrap();
    });
    drop(multi);
    let mut ema = EmaModule::new(flat_div8(&device), EmaConfig::new(DECAY)).unwrap();
    queued("EmaModule::update, one flat tensor", &mut || {
        ema.update().unwrap();
    });
    drop(ema);
    // Half-precision parameters with the default f32 shadows: the same launches as f32.
    if device.supports_dtype(DType::F16) {
        let model = ResNet50Div8::with_dtype(&device, DType::F16);
        let mut ema = EmaModule::new(model, EmaConfig::new(DECAY)).unwrap();
        queued(
            "EmaModule::update, 161 f16 tensors, f32 shadows",
            &mut || {
                ema.update().unwrap();
            },
        );
        drop(ema);
        let mut ema =
            EmaModule::new(flat_div8_of(&device, DType::F16), EmaConfig::new(DECAY)).unwrap();
        queued(
            "EmaModule::update, one flat f16 tensor, f32 shadow",
            &mut || {
                ema.update().unwrap();
            },
        );
        drop(ema);
    } else {
        eprintln!("NOT RUN: {prefix}/launch-bound's f16 rows: the device does not compute in f16");
    }
    // Where the model's extra time goes: the same values in 15 equal tensors (one launch of
    // 15 pairs on a device that binds 31 buffers, as lavapipe does), and in one launch each.
    let equal = vec![ResNet50Div8::TOTAL / 15; 15];
    let params = tensors(&equal, 2.0, &device);
    let mut shadows = Some(tensors(&equal, 1.0, &device));
    let w = (1.0f32 - DECAY as f32) as f64;
    for (id, pairs) in [
        (
            "update_many, 15 equal tensors, at most 15 pairs a launch",
            15,
        ),
        ("update_many, 15 equal tensors, one launch each", 1),
    ] {
        set_max_pairs_per_launch(Some(pairs));
        queued(id, &mut || {
            let s = shadows.take().unwrap();
            let jobs = s.into_iter().zip(&params).map(|(s, p)| (s, p.clone(), w));
            shadows = Some(update_many(jobs.collect()));
        });
    }
    set_max_pairs_per_launch(None);
    drop((params, shadows));
    let model = ResNet50Div8::new(&device);
    let sizes: Vec<usize> = model
        .kernels
        .iter()
        .map(|p| p.val().shape().num_elements())
        .chain(model.vectors.iter().map(|p| p.val().dims()[0]))
        .chain([model.classifier.val().shape().num_elements(), 125])
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), ResNet50Div8::TOTAL);
    let params = tensors(&sizes, 2.0, &device);
    let mut shadows = Some(tensors(&sizes, 1.0, &device));
    queued("update_many, 161 rank-1 tensors", &mut || {
        let s = shadows.take().unwrap();
        let jobs = s.into_iter().zip(&params).map(|(s, p)| (s, p.clone(), w));
        shadows = Some(update_many(jobs.collect()));
    });
    drop((params, shadows));
    // The launch shape (at most 8 pairs a launch, vectors a unit as tuned: the defaults),
    // measured on this device: the same update in other shapes; a shape the device's
    // bindings make equal to one already timed (the same launches per update) is said and skipped.
    let mut ema = EmaModule::new(ResNet50Div8::new(&device), EmaConfig::new(DECAY)).unwrap();
    let mut timed = Vec::new();
    let shapes = [
        (8, None),
        (2, None),
        (4, None),
        (16, None),
        (32, None),
        (64, None),
        (161, None),
        (8, Some(4)),
        (8, Some(16)),
        (161, Some(4)),
        (161, Some(16)),
    ];
    for (pairs, vectors) in shapes {
        set_max_pairs_per_launch(Some(pairs));
        set_vectors_per_unit(vectors);
        ema.update().unwrap();
        device.sync().unwrap();
        let before = ema_launches();
        ema.update().unwrap();
        device.sync().unwrap();
        let launches = ema_launches() - before;
        let id = format!(
            "EmaModule::update, 161 tensors, at most {pairs} pairs a launch, {} vectors a unit",
            vectors.map_or("tuned".to_string(), |v| v.to_string())
        );
        if timed.is_empty() || timed.contains(&(launches, vectors)) {
            println!("{id}: {launches} launches per update, timed above");
        } else {
            queued(&id, &mut || {
                ema.update().unwrap();
            });
        }
        timed.push((launches, vectors));
    }
    set_max_pairs_per_launch(None);
    set_vectors_per_unit(None);
    group.finish();
}

fn benches(c: &mut Criterion) {
    for (name, sizes) in sets() {
        bench_set(c, name, &sizes);
    }
    bench_two_emas(c);
    #[cfg(feature = "wgpu")]
    {
        let device = Device::wgpu(Default::default());
        for (name, sizes) in sets() {
            bench_cube(c, "ema-wgpu", &device, name, &sizes);
        }
        bench_wgpu_launches(c);
        bench_launch_bound(c, "ema-wgpu", &device);
    }
    #[cfg(feature = "cuda")]
    match cuda_device() {
        Ok(device) => {
            for (name, sizes) in sets() {
                bench_cube(c, "ema-cuda", &device, name, &sizes);
            }
            bench_launch_bound(c, "ema-cuda", &device);
        }
        Err(why) => eprintln!("NOT RUN: the ema-cuda groups: {why}"),
    }
}

/// CUDA device 0, if it computes (a machine without an NVIDIA GPU runs the other groups).
#[cfg(feature = "cuda")]
fn cuda_device() -> Result<Device, String> {
    std::panic::catch_unwind(|| {
        let device = Device::cuda(0);
        let _ = Tensor::<1>::from_floats([1.0], &device).into_data();
        device
    })
    .map_err(|_| "no usable CUDA device 0 (bringing it up panicked)".to_string())
}

criterion_group!(ema, benches);
criterion_main!(ema);
