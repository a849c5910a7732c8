//! Post-hoc EMA on the ResNet-50 parameter set (161 tensors, 25.6M values, 102 MB in f32), Flex,
//! through the public API:
//!
//! - `posthoc/resnet50-161x`: one training step's cost — `EmaModule::update` (one EMA) against
//!   `PostHocEma::update` (EDM2's two profiles, no snapshot due), and one snapshot of both
//!   profiles (`PostHocEma::snapshot`, two atomic burnpack files, f32 and f16);
//! - `posthoc-synthesis/resnet50-161x`: `PostHocSnapshots::synthesize` of a width between the
//!   tracked ones from 2 profiles × 4 snapshots (8 files, 818 MB), streamed;
//! - with feature `wgpu`, `posthoc-wgpu/resnet50-161x`: the three updates on wgpu, each waited
//!   for.
//!
//! Run: `cargo bench --bench posthoc --features flex,ndarray` (add `wgpu` for the wgpu group). Snapshot files go under the
//! system's temporary directory. The memory of a synthesis is measured as a whole process by
//! `examples/posthoc_memory.rs`. See BENCHMARKS.md.

mod common;

use std::time::Duration;

use burn::prelude::*;
use burn_ema::{
    EmaConfig, EmaModule, MovingAverage, MultiEma, PostHocConfig, PostHocEma, PostHocSnapshots,
    SnapshotDType, Width,
};
use common::{group, resnet50_model};
use criterion::{Criterion, criterion_group, criterion_main};

/// No snapshot falls due while the update is timed.
const NEVER: u64 = 1 << 40;

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("burn-ema-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// One training step's averaging on `device` (`backend` names the group): one EMA, the two
/// profiles as a bare `MultiEma`, and `PostHocEma`, each waited for.
fn bench_updates<'a>(
    c: &'a mut Criterion,
    backend: &str,
    device: &Device,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = group(c, format!("posthoc{backend}/resnet50-161x"));
    let wait = || device.sync().unwrap();
    let mut one = EmaModule::new(resnet50_model(device), EmaConfig::new(0.999)).unwrap();
    group.bench_function("EmaModule::update (one EMA)", |b| {
        b.iter(|| {
            one.update().unwrap();
            wait()
        })
    });
    drop(one);
    // The same two profiles as a bare MultiEma: what the post-hoc type adds per step.
    let mut multi = MultiEma::new(
        resnet50_model(device),
        PostHocConfig::new().ema_configs().unwrap(),
    )
    .unwrap();
    group.bench_function("MultiEma::update (the same two profiles)", |b| {
        b.iter(|| {
            multi.update().unwrap();
            wait()
        })
    });
    drop(multi);
    let dir = scratch(&format!("step{backend}"));
    let config = PostHocConfig::new().with_snapshot_every(NEVER);
    let mut two = PostHocEma::new(resnet50_model(device), config, &dir).unwrap();
    group.bench_function("PostHocEma::update (two profiles)", |b| {
        b.iter(|| {
            two.update().unwrap();
            wait()
        })
    });
    drop(two);
    let _ = std::fs::remove_dir_all(&dir);
    group
}

fn bench_step(c: &mut Criterion) {
    let device = Device::flex();
    let mut group = bench_updates(c, "", &device);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for (name, dtype) in [("f32", SnapshotDType::F32), ("f16", SnapshotDType::F16)] {
        let dir = scratch(name);
        let config = PostHocConfig::new()
            .with_snapshot_every(NEVER)
            .with_snapshot_dtype(dtype);
        let mut ema = PostHocEma::new(resnet50_model(&device), config, &dir).unwrap();
        ema.update().unwrap();
        // Each iteration rewrites the step's two files (a snapshot replaces its step's).
        group.bench_function(
            format!("PostHocEma::snapshot (two profiles, {name})"),
            |b| b.iter(|| ema.snapshot().unwrap()),
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    group.finish();
}

/// Writes `snapshots` snapshots of both profiles of the ResNet-50 set into `dir`.
fn write_snapshots(dir: &std::path::Path, snapshots: u64, device: &Device) {
    let every = 10;
    let config = PostHocConfig::new().with_snapshot_every(every);
    let mut ema = PostHocEma::new(resnet50_model(device), config, dir).unwrap();
    for _ in 0..snapshots * every {
        ema.update().unwrap();
    }
}

fn bench_synthesis(c: &mut Criterion) {
    let device = Device::flex();
    let dir = scratch("synthesis");
    write_snapshots(&dir, 4, &device);
    let snapshots = PostHocSnapshots::open(&dir).unwrap();
    assert_eq!(snapshots.snapshots().len(), 8);
    let template = resnet50_model(&device);
    let mut group = group(c, "posthoc-synthesis/resnet50-161x".into());
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("synthesize sigma_rel 0.07 from 8 snapshots", |b| {
        b.iter(|| {
            snapshots
                .synthesize(&template, Width::SigmaRel(0.07), None)
                .unwrap()
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

fn benches(c: &mut Criterion) {
    bench_step(c);
    bench_synthesis(c);
    #[cfg(feature = "wgpu")]
    bench_updates(c, "-wgpu", &Device::wgpu(Default::default())).finish();
}

criterion_group!(posthoc, benches);
criterion_main!(posthoc);
