//! What the benchmarks (and `examples/posthoc_memory.rs`) share: the ResNet-50 parameter set,
//! deterministic values, a module holding a parameter set, criterion's sampling.
#![allow(dead_code)]

pub mod c_triad;
pub mod flush;

use std::time::Duration;

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
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

/// ResNet-50's parameters with every channel count (and the classifier's outputs) divided by
/// 8: its 161 tensors at their real ranks (53 convolution kernels of rank 4, 106 batch-norm
/// vectors, the classifier's matrix and bias), 406,277 values. Small enough that an update
/// on a GPU is launch-bound, as most of a real model's tensors are.
#[derive(Module, Debug)]
pub struct ResNet50Div8 {
    pub kernels: Vec<Param<Tensor<4>>>,
    pub vectors: Vec<Param<Tensor<1>>>,
    pub classifier: Param<Tensor<2>>,
    pub classifier_bias: Param<Tensor<1>>,
}

/// Values of `shape` from [`values`] in element type `dtype`, as an autodiff parameter that
/// requires gradients.
fn parameter<const D: usize>(
    shape: [usize; D],
    seed: f32,
    dtype: DType,
    device: &Device,
) -> Param<Tensor<D>> {
    let n = shape.iter().product();
    let t = Tensor::<D>::from_data(TensorData::new(values(n, seed), shape), device)
        .cast(FloatDType::from(dtype));
    Param::from_tensor(Tensor::from_inner(t).require_grad())
}

impl ResNet50Div8 {
    pub const TOTAL: usize = 406_277;

    /// The model on `device` (the autodiff form of it: what a training loop's EMA wraps).
    pub fn new(device: &Device) -> Self {
        Self::with_dtype(device, DType::F32)
    }

    /// The model with parameters of element type `dtype` (f16 or bf16: a half-precision model,
    /// whose EMA keeps f32 shadows by default).
    pub fn with_dtype(device: &Device, dtype: DType) -> Self {
        let (mut kernels, mut vectors) = (Vec::new(), Vec::new());
        let mut conv = |out: usize, inp: usize, k: usize| {
            kernels.push(parameter([out, inp, k, k], 2.0, dtype, device));
            vectors.push(parameter([out], 1.0, dtype, device));
            vectors.push(parameter([out], 0.5, dtype, device));
        };
        conv(8, 3, 7);
        let mut inp = 8;
        for (width, blocks) in [(8, 3), (16, 4), (32, 6), (64, 3)] {
            for b in 0..blocks {
                let out = width * 4;
                conv(width, inp, 1);
                conv(width, width, 3);
                conv(out, width, 1);
                if b == 0 {
                    conv(out, inp, 1);
                }
                inp = out;
            }
        }
        Self {
            kernels,
            vectors,
            classifier: parameter([125, inp], 2.0, dtype, device),
            classifier_bias: parameter([125], 1.0, dtype, device),
        }
    }
}

/// One flat tensor of [`ResNet50Div8::TOTAL`] values, the same bytes in one tensor: what the
/// update costs when launches do not count.
pub fn flat_div8(device: &Device) -> ParamSet {
    flat_div8_of(device, DType::F32)
}

/// [`flat_div8`] with parameters of element type `dtype`.
pub fn flat_div8_of(device: &Device, dtype: DType) -> ParamSet {
    ParamSet {
        tensors: vec![parameter([ResNet50Div8::TOTAL], 2.0, dtype, device)],
    }
}
