//! The CubeCL kernel's tests, one suite for every CubeCL runtime: `wgpu.rs` runs it on wgpu
//! (Vulkan, Metal, DX12; lavapipe and Mesa's OpenGL in CI), `cuda.rs` on CUDA. Each checks the
//! kernel against an f64 reference or the host's own f32 arithmetic, through Burn's fusion.
#![allow(dead_code)]

use std::sync::{Mutex, MutexGuard};

use burn::prelude::*;

/// A device held by one test at a time: the tests share it, and the memory tests read its
/// device-wide pool usage, which another test's tensors would change.
pub struct Held {
    device: Device,
    _turn: MutexGuard<'static, ()>,
}

impl std::ops::Deref for Held {
    type Target = Device;
    fn deref(&self) -> &Device {
        &self.device
    }
}

/// `device` (from the gate: `None` where the machine lacks it), held for one test.
pub fn hold(device: impl FnOnce() -> Option<Device>) -> Option<Held> {
    static TURN: Mutex<()> = Mutex::new(());
    // A test that failed while holding its turn leaves nothing behind to protect.
    let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    Some(Held {
        device: device()?,
        _turn: turn,
    })
}

/// Device memory in use did not grow by a buffer: a few bytes of launch metadata may appear.
pub fn assert_in_use_did_not_grow(before: u64, after: u64) {
    assert!(
        after < before + 4096,
        "in use grew from {before} to {after} bytes"
    );
}

/// The values as f64, read as f32 (f64 is not a given on every wgpu adapter).
pub fn read(t: Tensor<1>) -> Vec<f64> {
    let values: Vec<f32> = t.into_data().try_to_vec().unwrap();
    values.into_iter().map(f64::from).collect()
}

/// 150 pairs of one element type and vector width (4 to 388 values each), updated with one
/// shadow a value and with two: each pair exactly once, bit for bit what `s − (s − v)·w` gives in
/// f32 on the host (`w = 1/8` and `1/4` are exact, so the device's rounding is the host's).
pub fn check_each_pair_once(device: &Device) {
    use super::{data, tensor};
    let w = 0.125f32;
    let lengths: Vec<usize> = (1..=150).map(|k| 4 * (1 + (k * 37) % 97)).collect();
    let mut jobs = Vec::new();
    let mut expected = Vec::new();
    for (k, &n) in lengths.iter().enumerate() {
        let (s, v) = (data(n, k as f32), data(n, 500.0 + k as f32));
        expected.push(
            s.iter()
                .zip(&v)
                .map(|(s, v)| f64::from(s - (s - v) * w))
                .collect::<Vec<_>>(),
        );
        jobs.push((tensor(&s, device), tensor(&v, device), f64::from(w)));
    }
    let out = burn_ema_kernels::update_many(jobs);
    assert_eq!(out.len(), lengths.len());
    for (k, (out, want)) in out.into_iter().zip(&expected).enumerate() {
        assert_eq!(&read(out), want, "pair {k} of {}", lengths.len());
    }
    // Two shadows a value (two averages, the value read once for both; weights 1/8 and 1/4).
    let w2 = 0.25f32;
    let mut entries = Vec::new();
    let mut expected = Vec::new();
    for (k, &n) in lengths.iter().enumerate() {
        let (s, s2) = (data(n, k as f32), data(n, 900.0 + k as f32));
        let v = data(n, 500.0 + k as f32);
        let want = |s: &[f32], w: f32| -> Vec<f64> {
            s.iter()
                .zip(&v)
                .map(|(s, v)| f64::from(s - (s - v) * w))
                .collect()
        };
        expected.push([want(&s, w), want(&s2, w2)]);
        let shadows = vec![tensor(&s, device), tensor(&s2, device)];
        entries.push((
            shadows,
            tensor(&v, device),
            vec![f64::from(w), f64::from(w2)],
        ));
    }
    let out = burn_ema_kernels::update_multi(entries);
    for (k, (out, want)) in out.into_iter().zip(&expected).enumerate() {
        let out: Vec<Vec<f64>> = out.into_iter().map(read).collect();
        assert_eq!(out, want.to_vec(), "value {k} of {}", lengths.len());
    }
}

/// Puts the launch shape back to the defaults when dropped (a failed test included).
pub struct DefaultShapeAfter;

impl Drop for DefaultShapeAfter {
    fn drop(&mut self) {
        burn_ema_kernels::tuning::set_max_pairs_per_launch(None);
        burn_ema_kernels::tuning::set_vectors_per_unit(None);
    }
}

/// The suite, for a test file with `fn device(test: &str) -> Option<Held>` (the other test
/// files share this module without it).
#[allow(unused_macros)]
macro_rules! cube_tests {
    ($device:ident) => {
        use burn::prelude::*;
        use burn::tensor::{DType, FloatDType, s};
        use burn_ema_kernels::{has_fused_path, update};

        use $crate::common::cube_suite::{assert_in_use_did_not_grow, check_each_pair_once, read};
        use $crate::common::gate::supports;
        use $crate::common::{check, check_awkward_lengths, data, tensor};

        #[test]
        fn agrees_with_f64_on_awkward_lengths() {
            let Some(device) = $device("agrees_with_f64_on_awkward_lengths") else {
                return;
            };
            assert!(has_fused_path(&device, DType::F32, DType::F32));
            check_awkward_lengths(&device, read, false);
        }

        #[test]
        fn reads_views_and_never_writes_a_shared_shadow() {
            let Some(device) = $device("reads_views_and_never_writes_a_shared_shadow") else {
                return;
            };
            let (s, v) = (data(64, 3.0), data(64, 4.0));
            let out = read(update(
                tensor(&s, &device).slice(s![8..40]),
                tensor(&v, &device).slice(s![0..64;2]),
                0.5,
            ));
            let every_other: Vec<f32> = v.iter().step_by(2).copied().collect();
            check(&out, &s[8..40], &every_other, 0.5, 1e-6);

            let shadow = tensor(&s, &device);
            let kept = shadow.clone();
            let out = read(update(shadow, tensor(&v, &device), 0.25));
            check(&out, &s, &v, 0.75, 1e-6);
            let s64: Vec<f64> = s.iter().map(|&x| f64::from(x)).collect();
            assert_eq!(read(kept), s64, "the clone kept its values");
        }

        #[test]
        fn reads_an_autodiff_value_and_half_types() {
            let Some(device) = $device("reads_an_autodiff_value_and_half_types") else {
                return;
            };
            let (s, v) = (data(100, 5.0), data(100, 6.0));
            let value = tensor(&v, &device.clone().autodiff()).require_grad();
            check(
                &read(update(tensor(&s, &device), value, 0.5)),
                &s,
                &v,
                0.5,
                1e-6,
            );
            if supports(
                "reads_an_autodiff_value_and_half_types: f16",
                &device,
                DType::F16,
            ) {
                let half = |x: &[f32]| tensor(x, &device).cast(FloatDType::F16);
                let out = update(half(&s), half(&v), 0.5);
                assert_eq!(out.dtype(), DType::F16);
                check(&read(out.cast(FloatDType::F32)), &s, &v, 0.5, 2e-3);
            }
        }

        #[test]
        fn steady_state_allocates_no_device_memory() {
            let Some(device) = $device("steady_state_allocates_no_device_memory") else {
                return;
            };
            let n = 1 << 20;
            let value = tensor(&data(n, 7.0), &device);
            let mut shadow = tensor(&data(n, 8.0), &device);
            for _ in 0..3 {
                shadow = update(shadow, value.clone(), 0.01);
            }
            device.sync().unwrap();
            let Some(before) = device.memory_pool_usage() else {
                panic!("the device reports its memory pools");
            };
            for _ in 0..20 {
                shadow = update(shadow, value.clone(), 0.01);
            }
            device.sync().unwrap();
            let after = device.memory_pool_usage().unwrap();
            // No tensor-sized buffer appears (a 4 MiB shadow).
            assert_in_use_did_not_grow(before.bytes_in_use, after.bytes_in_use);
            // The pools may take a small page for launch metadata, never room for another shadow.
            assert!(
                after.bytes_reserved < before.bytes_reserved + (n as u64 * 4) / 4,
                "reserved grew from {} to {} bytes",
                before.bytes_reserved,
                after.bytes_reserved
            );
            assert!(read(shadow).iter().all(|x| x.is_finite()));
        }

        #[test]
        fn updates_an_f32_shadow_from_half_parameters_in_one_kernel() {
            let Some(device) = $device("updates_an_f32_shadow_from_half_parameters_in_one_kernel")
            else {
                return;
            };
            for (half, bound) in [(DType::F16, 1e-3), (DType::BF16, 8e-3)] {
                let test = "updates_an_f32_shadow_from_half_parameters_in_one_kernel";
                if supports(&format!("{test}: {half:?}"), &device, half) {
                    assert!(has_fused_path(&device, DType::F32, half));
                    $crate::common::check_half_parameters(&device, read, half, bound);
                }
            }
        }

        /// Every (shadow, value) element-type pair the engine batches — half parameters of
        /// `f32` shadows included — in shared launches: a batch of 48 tensors of one pair, one
        /// and two shadows each, against the f64 reference, in far fewer launches than tensors
        /// (one launch per tensor, as half parameters once took, fails it). Counted after a
        /// first batch, whose launches the tuner times.
        #[test]
        fn every_dtype_pair_shares_launches_and_agrees_with_f64() {
            let test = "every_dtype_pair_shares_launches_and_agrees_with_f64";
            let Some(device) = $device(test) else {
                return;
            };
            for (shadow, value) in $crate::common::DTYPE_PAIRS {
                let part = format!("{test}: {shadow:?} shadows of {value:?} values");
                // `supports` says why a part does not run (a failure where CI requires it).
                if !(supports(&part, &device, shadow) && supports(&part, &device, value)) {
                    continue;
                }
                assert!(has_fused_path(&device, shadow, value), "{part}: a fused path");
                $crate::common::check_dtype_pairs(&device, &[(shadow, value)]);
                let before = burn_ema_kernels::tuning::launches();
                let updated = $crate::common::check_dtype_pairs(&device, &[(shadow, value)]);
                let launches = burn_ema_kernels::tuning::launches() - before;
                println!("{part}: {updated} shadow tensors in {launches} launches");
                assert!(
                    launches > 0 && launches * 4 <= updated,
                    "{part}: {updated} shadow tensors took {launches} launches"
                );
            }
        }

        #[test]
        fn batches_give_what_single_updates_give() {
            let Some(device) = $device("batches_give_what_single_updates_give") else {
                return;
            };
            let sizes = [1usize, 33, 4096, 70_001];
            let jobs = || {
                sizes
                    .iter()
                    .map(|&n| {
                        (
                            tensor(&data(n, 1.0), &device),
                            tensor(&data(n, 2.0), &device),
                        )
                    })
                    .collect::<Vec<_>>()
            };
            let single: Vec<Vec<f64>> = jobs()
                .into_iter()
                .map(|(s, v)| read(update(s, v, 0.3)))
                .collect();
            let many =
                burn_ema_kernels::update_many(jobs().into_iter().map(|(s, v)| (s, v, 0.3)).collect());
            let many: Vec<Vec<f64>> = many.into_iter().map(read).collect();
            assert_eq!(many, single);
            // Three shadows per value, each its own start and weight, come back in their order (on
            // CubeCL the first two share a read of the value, the third is a pair of its own).
            let weights = vec![0.3, 0.6, 0.05];
            let starts = [1.0, 5.0, 9.0];
            let shadows = |n: usize| starts.map(|seed| tensor(&data(n, seed), &device)).to_vec();
            let multi = burn_ema_kernels::update_multi(
                sizes
                    .iter()
                    .map(|&n| (shadows(n), tensor(&data(n, 2.0), &device), weights.clone()))
                    .collect(),
            );
            for (&n, out) in sizes.iter().zip(multi) {
                assert_eq!(out.len(), 3);
                for ((shadow, start), weight) in out.into_iter().zip(shadows(n)).zip(&weights) {
                    let want = read(update(start, tensor(&data(n, 2.0), &device), *weight));
                    assert_eq!(read(shadow), want, "n = {n}, weight {weight}");
                }
            }
        }

        /// Tensors of any sizes share launches: every awkward length, a few more, one
        /// shared shadow and a group of f16 tensors, against one launch per tensor.
        #[test]
        fn small_tensors_in_shared_launches_give_what_single_updates_give() {
            let test = "small_tensors_in_shared_launches_give_what_single_updates_give";
            let Some(device) = $device(test) else {
                return;
            };
            let mut lengths = $crate::common::AWKWARD_LENGTHS.to_vec();
            // Large tensors share launches too, with small ones of the same vector width.
            lengths.extend([100, 200, 300, 5000, 65_535, 65_536, 262_144, 300_001]);
            let mut jobs = Vec::new();
            for (k, &n) in lengths.iter().enumerate() {
                let (s, v) = (data(n, k as f32), data(n, 50.0 + k as f32));
                jobs.push((tensor(&s, &device), tensor(&v, &device), 0.125));
            }
            let f16_group = if supports(&format!("{test}: its f16 group"), &device, DType::F16) {
                0..9
            } else {
                0..0
            };
            for k in f16_group {
                let half = |x: Vec<f32>| tensor(&x, &device).cast(FloatDType::F16);
                jobs.push((
                    half(data(64, k as f32)),
                    half(data(64, 9.0 + k as f32)),
                    0.25,
                ));
            }
            let expected: Vec<Vec<f64>> = jobs
                .iter()
                .map(|(s, v, w)| read(update(s.clone(), v.clone(), *w).cast(FloatDType::F32)))
                .collect();
            let shared = jobs[5].0.clone();
            let shared_before = read(shared.clone());
            let out = burn_ema_kernels::update_many(jobs);
            for (k, (out, want)) in out.into_iter().zip(&expected).enumerate() {
                assert_eq!(&read(out.cast(FloatDType::F32)), want, "job {k}");
            }
            assert_eq!(
                read(shared),
                shared_before,
                "the shared shadow kept its values"
            );
        }

        /// A model-sized group (150 pairs of one element type and vector width) spans several launches
        /// (8 pairs a launch on Vulkan, 7 on OpenGL's 16 bindings): each pair is updated exactly once,
        /// bit for bit what `s − (s − v)·w` gives in f32 on the host (`w = 1/8` is exact, so the GPU's
        /// rounding is the host's): no pair at a launch boundary is lost or updated twice.
        #[test]
        fn a_model_sized_group_spans_launches_and_updates_each_pair_once() {
            let Some(device) = $device("a_model_sized_group_spans_launches_and_updates_each_pair_once")
            else {
                return;
            };
            check_each_pair_once(&device);
        }

        /// Launch shapes fixed by hand, whatever the tuner would choose on this device: a unit
        /// taking 2, 3 or 16 vectors of a pair (a pair's last tile partly empty, or a unit with
        /// nothing to do), 3 or 161 pairs a launch. Bit for bit the host's arithmetic, each pair
        /// once, as with the defaults (the test above, where the tuner times its candidates on
        /// copies of the shadows: on the real ones, pairs would be updated several times).
        #[test]
        fn every_launch_shape_updates_each_pair_once() {
            let Some(device) = $device("every_launch_shape_updates_each_pair_once") else {
                return;
            };
            let _defaults = $crate::common::cube_suite::DefaultShapeAfter;
            for (pairs, vectors) in [(3, 3), (8, 16), (161, 2), (161, 16)] {
                println!("at most {pairs} pairs a launch, {vectors} vectors a unit");
                burn_ema_kernels::tuning::set_max_pairs_per_launch(Some(pairs));
                burn_ema_kernels::tuning::set_vectors_per_unit(Some(vectors));
                check_each_pair_once(&device);
            }
        }

        #[test]
        fn tensors_of_any_rank_update_in_one_call_and_keep_their_shapes() {
            let test = "tensors_of_any_rank_update_in_one_call_and_keep_their_shapes";
            let Some(device) = $device(test) else {
                return;
            };
            $crate::common::check_ranks_in_one_call(&device);
        }

        #[test]
        fn small_tensors_in_shared_launches_allocate_nothing_in_steady_state() {
            let Some(device) =
                $device("small_tensors_in_shared_launches_allocate_nothing_in_steady_state")
            else {
                return;
            };
            let sizes = [4096usize; 16];
            let values: Vec<Tensor<1>> = sizes
                .iter()
                .map(|&n| tensor(&data(n, 1.0), &device))
                .collect();
            let mut shadows: Vec<Tensor<1>> = sizes
                .iter()
                .map(|&n| tensor(&data(n, 2.0), &device))
                .collect();
            let step = |shadows: Vec<Tensor<1>>| {
                let jobs = shadows
                    .into_iter()
                    .zip(&values)
                    .map(|(s, v)| (s, v.clone(), 0.01));
                burn_ema_kernels::update_many(jobs.collect())
            };
            for _ in 0..3 {
                shadows = step(shadows);
            }
            device.sync().unwrap();
            let before = device
                .memory_pool_usage()
                .expect("the device reports its memory pools");
            for _ in 0..20 {
                shadows = step(shadows);
            }
            device.sync().unwrap();
            let after = device.memory_pool_usage().unwrap();
            // No shadow-sized buffer (16 KiB) appears.
            assert_in_use_did_not_grow(before.bytes_in_use, after.bytes_in_use);
            assert!(read(shadows.pop().unwrap()).iter().all(|x| x.is_finite()));
        }

        #[test]
        fn non_finite_values_are_counted_through_tensor_ops() {
            let Some(device) = $device("non_finite_values_are_counted_through_tensor_ops") else {
                return;
            };
            let mut values = vec![0.5f32; 4096];
            values[7] = f32::NAN;
            values[4000] = f32::INFINITY;
            let tensors = [tensor(&values, &device), tensor(&[1.0, 2.0], &device)];
            assert_eq!(burn_ema_kernels::count_non_finite(&tensors), vec![2, 0]);
        }
    };
}

#[allow(unused_imports)]
pub(crate) use cube_tests;
