//! What the benchmarks (and `examples/posthoc_memory.rs`) share: the ResNet-50 parameter set,
//! deterministic values, a module holding a parameter set, criterion's sampling.
#![allow(dead_code)]

use std::time::Duration;

use burn::module::{Module, Param};
use burn::prelude::*;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};

/// Float parameter sizes of torchvision/timm ResNet-50: 161 tensors, 25,557,032 values.
pub fn resnet50() -> Vec<usize> {
    let mut sizes = vec![64 * 3 * 7 * 7, 64, 64];
    let mut inp = 64;
    for (width, blocks) in [(64, 3), (128, 4), (256, 6), (512, 3)] {
        for b in 0..blocks {
            let out = width * 4;
            sizes.extend([width * inp, width, width, width * width * 9, width, width]);
            sizes.extend([out * width, out, out]);
            if b == 0 {
                sizes.extend([out * inp, out, out]);
            }
            inp = out;
        }
    }
    sizes.extend([1000 * 2048, 1000]);
    sizes
}

pub fn values(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| ((i % 977) as f32 + seed) * 1e-3).collect()
}

pub fn tensors(sizes: &[usize], seed: f32, device: &Device) -> Vec<Tensor<1>> {
    sizes
        .iter()
        .map(|&n| Tensor::from_data(TensorData::new(values(n, seed), [n]), device))
        .collect()
}

/// A module holding the parameter set, for `EmaModule::update`.
#[derive(Module, Debug)]
pub struct ParamSet {
    pub tensors: Vec<Param<Tensor<1>>>,
}

/// A benchmark group with the common sampling: 20 samples over 3 s after 0.5 s of warm-up.
pub fn group(c: &mut Criterion, name: String) -> BenchmarkGroup<'_, WallTime> {
    let mut group = c.benchmark_group(name);
    group.sample_size(20);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group
}

/// The ResNet-50 parameter set as a module (each tensor a parameter) on `device`.
pub fn resnet50_model(device: &Device) -> ParamSet {
    ParamSet {
        tensors: tensors(&resnet50(), 2.0, device)
            .into_iter()
            .map(Param::from_tensor)
            .collect(),
    }
}
