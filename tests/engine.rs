//! The update engine as `EmaModule::update` reaches it: half-precision parameters with their
//! default `f32` shadows take the same batched path as `f32` ones — one parallel pass on Flex,
//! shared kernel launches on wgpu (lavapipe in CI), counted — and give the average an f64
//! reference computes from the parameters' own values.
#![cfg(feature = "flex")]

mod common;

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
use burn_ema::{EmaConfig, EmaModule, MovingAverage};

/// 40 parameters of awkward sizes (1 to 1,600 values, every vector width), as a model of
/// `dtype` on `device`, autodiff: what a training loop's EMA wraps.
#[derive(Module, Debug)]
struct Many {
    tensors: Vec<Param<Tensor<1>>>,
}

const DECAY: f64 = 0.9;

fn sizes() -> Vec<usize> {
    (0..40).map(|k| 1 + (k * 41) % 1600).collect()
}

fn data(n: usize, seed: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 + seed) * 0.37).sin() * 2.0)
        .collect()
}

fn many(seed: f32, dtype: DType, device: &Device) -> Many {
    let device = device.clone().autodiff();
    let tensors = sizes()
        .into_iter()
        .enumerate()
        .map(|(k, n)| {
            let t = Tensor::<1>::from_data(TensorData::new(data(n, seed + k as f32), [n]), &device)
                .cast(FloatDType::from(dtype));
            Param::from_tensor(t.require_grad())
        })
        .collect();
    Many { tensors }
}

/// The values of a tensor of any float type, as f64 (read through f32: wgpu may lack f64).
fn read(t: Tensor<1>) -> Vec<f64> {
    let v: Vec<f32> = t.cast(FloatDType::F32).into_data().try_to_vec().unwrap();
    v.into_iter().map(f64::from).collect()
}

/// An EMA of a `dtype` model on `device`, updated once from other weights: its shadow has `f32`
/// values `s − (s − v)·w` for the parameters' values `s` (the start) and `v` (after the step),
/// as their type holds them, and `w = 1 − decay` rounded to f32, within f32 rounding. Returns
/// the kernel launches the second update took (counted on CubeCL devices, after a first update
/// whose launches the autotune times; `None` elsewhere).
fn check_one_update(device: &Device, dtype: DType) -> Option<usize> {
    let mut ema = EmaModule::new(many(0.0, dtype, device), EmaConfig::new(DECAY)).unwrap();
    assert!(
        ema.shadow()
            .tensors
            .iter()
            .all(|p| p.val().dtype() == DType::F32),
        "{dtype:?} parameters get f32 shadows by default"
    );
    let start: Vec<Vec<f64>> = ema.model().tensors.iter().map(|p| read(p.val())).collect();
    ema.update().unwrap();
    *ema.model_mut() = many(100.0, dtype, device);
    let live: Vec<Vec<f64>> = ema.model().tensors.iter().map(|p| read(p.val())).collect();
    device.sync().unwrap();
    let on_cube = format!("{device:?}").contains("Wgpu") || format!("{device:?}").contains("Cuda");
    let before = burn_ema_kernels::tuning::launches();
    ema.update().unwrap();
    device.sync().unwrap();
    let launches = burn_ema_kernels::tuning::launches() - before;
    let w = f64::from(1.0f32 - DECAY as f32);
    // The first update started from the parameters: the shadow equals them (decay applied to
    // equal values), so the second gives s − (s − v)·w.
    for (k, (shadow, (s, v))) in ema
        .shadow()
        .tensors
        .iter()
        .zip(start.iter().zip(&live))
        .enumerate()
    {
        let got = read(shadow.val());
        for i in 0..got.len() {
            let want = s[i] - (s[i] - v[i]) * w;
            let bound = 3.0 * f64::from(f32::EPSILON) * s[i].abs().max(v[i].abs()).max(1e-30);
            assert!(
                (got[i] - want).abs() <= bound,
                "{dtype:?} on {device:?}: tensor {k}, element {i}: {} instead of {want}",
                got[i]
            );
        }
    }
    on_cube.then_some(launches)
}

#[test]
fn half_precision_parameters_average_into_f32_shadows_on_the_cpu() {
    let device = Device::flex();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        assert!(device.supports_dtype(dtype), "Flex computes in {dtype:?}");
        check_one_update(&device, dtype);
    }
}

/// A half-precision model's update shares launches as an `f32` one does: 40 tensors in a few
/// launches (one per tensor, as f16 and bf16 parameters once took, fails it).
#[cfg(feature = "wgpu")]
#[test]
fn a_half_precision_model_updates_in_shared_launches_on_wgpu() {
    use burn::tensor::DeviceKind;
    use common::gate::{supports, wgpu_device};
    let test = "a_half_precision_model_updates_in_shared_launches_on_wgpu";
    let Some(device) = wgpu_device(test, DeviceKind::DefaultDevice) else {
        return;
    };
    let tensors = sizes().len();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // `supports` says why a type does not run here (a failure for f16 where CI requires it).
        if !supports(&format!("{test}: {dtype:?}"), &device, dtype) {
            continue;
        }
        let launches = check_one_update(&device, dtype).expect("wgpu counts its launches");
        println!("{dtype:?} parameters: {tensors} tensors in {launches} launches");
        assert!(
            launches > 0 && launches * 4 <= tensors,
            "{dtype:?}: {tensors} tensors took {launches} launches"
        );
    }
}
