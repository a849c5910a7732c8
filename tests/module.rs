//! Semantics of `EmaModule`: buffers, tied and lazy parameters, devices, swap, the optimizer,
//! records and errors.

#![allow(deprecated)] // NdArray is deprecated in Burn 0.22, and still tested.

mod common;
#[cfg(feature = "flex")]
#[path = "module/nn_layers.rs"]
mod nn_layers;

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;
use burn_ema::{
    BufferPolicy, EmaConfig, EmaError, EmaFile, EmaModule, MovingAverage, Schedule, ShadowDType,
};
use common::{Net, Scalar, autodiff_flags, bits, devices, floats, input, sgd_step, values};

/// The live Net: every tensor autodiff, its 6 parameters (not the 2 buffers) trainable.
fn assert_live(net: &Net) {
    let flags = autodiff_flags(net);
    assert!(flags.iter().all(|&(ad, _)| ad), "{flags:?}");
    assert_eq!(flags.iter().filter(|&&(_, rg)| rg).count(), 6, "{flags:?}");
}

#[test]
fn shadow_starts_as_a_plain_copy() {
    for device in devices() {
        let ema =
            EmaModule::new(Net::new(&device.clone().autodiff()), EmaConfig::new(0.9)).unwrap();
        assert_eq!(floats(ema.model()), floats(ema.shadow()));
        assert_live(ema.model());
        assert!(
            autodiff_flags(ema.shadow())
                .iter()
                .all(|&(ad, rg)| !ad && !rg)
        );
        assert_eq!(ema.num_updates(), 0);
        assert_eq!(
            ema.stats().num_averaged,
            8,
            "every float tensor, BatchNorm buffers included"
        );
    }
}

#[test]
fn optimizer_steps_the_live_model_and_leaves_the_shadow() {
    for device in devices() {
        let ema =
            EmaModule::new(Net::new(&device.clone().autodiff()), EmaConfig::new(0.9)).unwrap();
        let before = floats(ema.shadow());
        let live_before = floats(ema.model());
        let mut ema = sgd_step(ema, &device);
        assert_eq!(
            floats(ema.shadow()),
            before,
            "the optimizer must not touch the shadow"
        );
        assert_ne!(
            floats(ema.model())[0],
            live_before[0],
            "the live model was stepped"
        );
        assert_live(ema.model());
        ema.update().unwrap();
        let (live, shadow) = (floats(ema.model()), floats(ema.shadow()));
        for ((path, s), ((_, l), (_, b))) in shadow.iter().zip(live.iter().zip(&before)) {
            for ((s, l), b) in s.iter().zip(l).zip(b) {
                let expected = b - (b - l) * (1.0 - 0.9f32);
                assert!(
                    (s - expected).abs() <= 1e-6 * expected.abs().max(1.0),
                    "{path}: {s} vs {expected}"
                );
            }
        }
    }
}

#[test]
fn nothing_makes_the_shadow_trainable() {
    for device in devices() {
        let ad = device.clone().autodiff();
        let ema = EmaModule::new(Net::new(&ad), EmaConfig::new(0.9)).unwrap();
        let moved = ema.clone().to_device(&ad);
        assert!(
            autodiff_flags(moved.shadow())
                .iter()
                .all(|&(a, r)| !a && !r)
        );
        let ema = ema.train().fork(&ad).set_require_grad(true).unfreeze();
        assert!(autodiff_flags(ema.shadow()).iter().all(|&(a, r)| !a && !r));
        assert_live(ema.model());
        let valid = ema.valid();
        assert!(autodiff_flags(valid.model()).iter().all(|&(a, _)| !a));
        // The shadow stays in evaluation mode: its forward uses running statistics, so it
        // does not depend on the other rows of the batch.
        let x = input(&device);
        let full = values(&ema.shadow().forward(x.clone()));
        let first = values(&ema.shadow().forward(x.slice([0..1, 0..4])));
        assert_eq!(&full[..2], &first[..]);
    }
}

/// BatchNorm running statistics: averaged or copied, read after syncing.
#[test]
fn buffers_follow_the_policy() {
    for device in devices() {
        for policy in [BufferPolicy::Average, BufferPolicy::Copy] {
            let ad = device.clone().autodiff();
            let mut ema =
                EmaModule::new(Net::new(&ad), EmaConfig::new(0.5).with_buffers(policy)).unwrap();
            let before = values(&ema.shadow().bn.running_mean.value());
            // A training forward moves the running mean (held back by RunningState until synced).
            let _ = ema
                .model()
                .forward(input(&ad).mul_scalar(3.0).add_scalar(1.0));
            ema.update().unwrap();
            let live = values(&ema.model().bn.running_mean.value_sync());
            assert_ne!(live, before, "the forward moved the running mean");
            let shadow = values(&ema.shadow().bn.running_mean.value());
            for ((s, l), b) in shadow.iter().zip(&live).zip(&before) {
                let expected = match policy {
                    BufferPolicy::Average => b - (b - l) * 0.5,
                    BufferPolicy::Copy => *l,
                };
                assert!((s - expected).abs() < 1e-6, "{policy:?}: {s} vs {expected}");
            }
        }
    }
}

/// Two layers tied by `clone()` (one `ParamId` at two paths), trained by a real optimizer:
/// Burn's optimizers step each path on its own, so the two live copies drift apart, and each
/// path's shadow must follow its own live weights — through `update`, the swap, a save/load
/// round trip. (It used to keep one shadow fed from the first path: 0.7 away from the second
/// layer's weights after a few AdamW steps.)
#[test]
fn tied_parameters_are_averaged_path_by_path() {
    use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig};
    #[derive(Module, Debug)]
    struct TiedNet {
        a: Linear,
        b: Linear,
    }
    fn run(mut optim: ModuleOptimizer, device: &Device) {
        let ad = device.clone().autodiff();
        let layer: Linear = LinearConfig::new(3, 3).init(&ad);
        let net = TiedNet {
            a: layer.clone(),
            b: layer,
        };
        assert_eq!(net.a.weight.id, net.b.weight.id, "tied by clone()");
        let decay = 0.8f64;
        let mut ema = EmaModule::new(net, EmaConfig::new(decay)).unwrap();
        let start = common::values_f64(&ema.model().a.weight.val());
        let mut reference = [start.clone(), start];
        let x = Tensor::<2>::from_data(
            TensorData::new(vec![0.5f32, -1.0, 2.0, 1.5, 0.25, -0.75], [2, 3]),
            &ad,
        );
        for _ in 0..6 {
            let net = ema.model();
            let loss = net
                .b
                .forward(net.a.forward(x.clone()))
                .powf_scalar(2.0)
                .mean();
            let grads = GradientsParams::from_grads(loss.backward(), &ema);
            ema = optim.step(0.1, ema, grads);
            ema.update().unwrap();
            let live = [
                common::values_f64(&ema.model().a.weight.val()),
                common::values_f64(&ema.model().b.weight.val()),
            ];
            for (r, l) in reference.iter_mut().zip(&live) {
                for (r, l) in r.iter_mut().zip(l) {
                    *r = decay * *r + (1.0 - decay) * l;
                }
            }
        }
        let (a, b) = (
            common::values_f64(&ema.model().a.weight.val()),
            common::values_f64(&ema.model().b.weight.val()),
        );
        let drift = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(drift > 1e-3, "the live copies drift apart ({drift})");
        let close = |got: &[f64], want: &[f64], what: &str| {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-5, "{what}: {g} vs {w}");
            }
        };
        close(
            &common::values_f64(&ema.shadow().a.weight.val()),
            &reference[0],
            "shadow of a",
        );
        close(
            &common::values_f64(&ema.shadow().b.weight.val()),
            &reference[1],
            "shadow of b",
        );
        // Swapped in, each layer holds its own path's shadow.
        {
            let swapped = ema.swap().unwrap();
            close(
                &common::values_f64(&swapped.a.weight.val()),
                &reference[0],
                "swapped a",
            );
            close(
                &common::values_f64(&swapped.b.weight.val()),
                &reference[1],
                "swapped b",
            );
        }
        // A save/load round trip keeps both.
        let dir = crate::common::Scratch::new("tied");
        let file = ema.save(dir.join("tied"), EmaFile::State).unwrap();
        let loaded = EmaModule::from_file(ema.model().clone(), &file).unwrap();
        close(
            &common::values_f64(&loaded.shadow().b.weight.val()),
            &reference[1],
            "loaded b",
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    for device in devices() {
        run(SgdConfig::new().init(), &device);
        run(AdamWConfig::new().init(), &device);
    }
}

#[test]
fn lazily_initialised_parameters_are_shared_with_the_shadow() {
    for device in devices() {
        let model: Linear = LinearConfig::new(3, 5).init(&device);
        assert!(!model.weight.is_initialized());
        let ema = EmaModule::new(model, EmaConfig::new(0.9)).unwrap();
        assert!(ema.model().weight.is_initialized());
        assert_eq!(floats(ema.model()), floats(ema.shadow()));
    }
}

#[derive(Module, Debug)]
struct TwoDevices {
    a: Linear,
    b: Linear,
}

#[test]
fn each_shadow_lives_on_its_parameters_device() {
    let (flex, ndarray) = (Device::flex(), Device::ndarray());
    let model = TwoDevices {
        a: LinearConfig::new(2, 2).init(&flex.clone().autodiff()),
        b: LinearConfig::new(2, 2).init(&ndarray.clone().autodiff()),
    };
    let mut ema = EmaModule::new(model, EmaConfig::new(0.9)).unwrap();
    assert_eq!(ema.shadow().a.weight.val().device(), flex);
    assert_eq!(ema.shadow().b.weight.val().device(), ndarray);
    ema.model_mut().b.weight = ema.model().b.weight.clone().map(|w| w.add_scalar(1.0));
    ema.update().unwrap();
    assert_eq!(ema.shadow().b.weight.val().device(), ndarray);
    assert_eq!(ema.shadow().a.weight.val().device(), flex);
    assert_eq!(ema.devices().len(), 2);
}

#[test]
fn two_swaps_are_the_identity_bit_for_bit() {
    for device in devices() {
        for dtype in [ShadowDType::Auto, ShadowDType::F64] {
            let ad = device.clone().autodiff();
            let ema = EmaModule::new(Net::new(&ad), EmaConfig::new(0.9).with_shadow_dtype(dtype))
                .unwrap();
            let mut ema = sgd_step(ema, &device);
            ema.update().unwrap();
            let ema_shadow_f64 = common::values_f64(&ema.shadow().fc1.weight.val());
            let (live, shadow) = (bits(ema.model()), bits(ema.shadow()));
            assert_ne!(live, shadow);

            {
                let swapped = ema.swap().unwrap();
                if dtype == ShadowDType::Auto {
                    assert_eq!(
                        bits(&*swapped),
                        shadow,
                        "the model holds the shadow weights"
                    );
                }
                assert_live(&swapped);
            }
            assert_eq!(bits(ema.model()), live);
            assert_eq!(bits(ema.shadow()), shadow);
            assert_eq!(
                common::values_f64(&ema.shadow().fc1.weight.val()),
                ema_shadow_f64
            );
            // Training goes on after swapping back.
            let ema = sgd_step(ema, &device);
            assert_live(ema.model());
        }
    }
}

#[test]
fn record_holds_model_shadow_and_counter() {
    for device in devices() {
        let ad = device.clone().autodiff();
        let mut ema = EmaModule::new(
            Net::new(&ad),
            EmaConfig::new(0.99).with_schedule(Schedule::TensorFlow),
        )
        .unwrap();
        for _ in 0..3 {
            ema = sgd_step(ema, &device);
            ema.update().unwrap();
        }
        let record = ema.clone().into_record();
        // 8 float tensors in each of model and shadow, plus the counter.
        assert_eq!(record.len(), 17);
        let fresh = EmaModule::new(
            Net::new(&ad),
            EmaConfig::new(0.99).with_schedule(Schedule::TensorFlow),
        )
        .unwrap();
        let loaded = fresh.load_record(record);
        assert_eq!(loaded.num_updates(), 3);
        assert_eq!(bits(loaded.model()), bits(ema.model()));
        assert_eq!(bits(loaded.shadow()), bits(ema.shadow()));
        assert!(
            autodiff_flags(loaded.shadow())
                .iter()
                .all(|&(a, r)| !a && !r)
        );
        // The shadow's record loads straight into the bare model.
        let bare = Net::new(&device).load_record(ema.shadow().clone().into_record());
        assert_eq!(bits(&bare), bits(ema.shadow()));
    }
}

#[test]
fn invalid_configurations_are_errors() {
    let device = Device::flex();
    let bad = [
        EmaConfig::new(1.5),
        EmaConfig::new(-0.1),
        EmaConfig::new(f64::NAN),
        EmaConfig::new(0.9).with_min_decay(0.95),
        EmaConfig::new(0.9).with_update_every(0),
        EmaConfig::new(0.9).with_schedule(Schedule::Warmup {
            inv_gamma: 0.0,
            power: 1.0,
        }),
        EmaConfig::new(0.9).with_schedule(Schedule::Warmup {
            inv_gamma: 1.0,
            power: -1.0,
        }),
        EmaConfig::new(0.9).with_schedule(Schedule::PowerFunction {
            gamma: f64::INFINITY,
        }),
        EmaConfig::new(0.9).with_exclude(vec!["".into()]),
    ];
    for config in bad {
        let err = EmaModule::new(Scalar::new(&[1.0], &device), config.clone()).unwrap_err();
        assert!(
            matches!(
                err,
                EmaError::InvalidConfig { .. } | EmaError::InvalidPattern { .. }
            ),
            "{config:?}: {err}"
        );
    }
    assert_eq!(
        EmaModule::new(Relu::new(), EmaConfig::new(0.9)).unwrap_err(),
        EmaError::EmptyModel
    );
}

#[test]
fn a_changed_structure_is_an_error_and_changes_nothing() {
    for device in devices() {
        let mut ema = EmaModule::new(Net::new(&device), EmaConfig::new(0.9)).unwrap();
        let shadow = bits(ema.shadow());
        ema.model_mut().fc2 = LinearConfig::new(8, 3).init(&device);
        let err = ema.update().unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, EmaError::StructureMismatch { .. }));
        assert!(
            msg.contains("fc2.weight") && msg.contains("[8, 3]") && msg.contains("[8, 2]"),
            "{msg}"
        );
        assert_eq!(bits(ema.shadow()), shadow);
        assert_eq!(ema.num_updates(), 0);
    }
}

/// An update knows the live model by its parameters' ids and walks no paths while they stay
/// (`Layout::check_live`): a parameter that keeps its id and changes its shape is still
/// refused, by name, before and after the model was rebuilt with new ids.
#[test]
fn a_parameter_that_keeps_its_id_and_changes_its_shape_is_an_error() {
    let transpose = |w: Param<Tensor<2>>| w.map(|t| t.transpose());
    for device in devices() {
        let mut ema = EmaModule::new(Net::new(&device), EmaConfig::new(0.9)).unwrap();
        ema.update().unwrap();
        let id = ema.model().fc2.weight.id;
        ema.model_mut().fc2.weight = transpose(ema.model().fc2.weight.clone());
        assert_eq!(ema.model().fc2.weight.id, id, "the same parameter");
        let shadow = bits(ema.shadow());
        let err = ema.update().unwrap_err();
        assert!(
            matches!(&err, EmaError::StructureMismatch { path, .. } if path == "fc2.weight"),
            "{err}"
        );
        assert!(err.to_string().contains("[2, 8]"), "{err}");
        let err = ema.swap().map(|_| ()).unwrap_err();
        assert!(matches!(err, EmaError::StructureMismatch { .. }), "{err}");
        assert_eq!(bits(ema.shadow()), shadow);
        assert_eq!(ema.num_updates(), 1);

        // A model rebuilt with the same structure and new ids passes, and its ids are the
        // ones checked from then on.
        *ema.model_mut() = Net::new(&device);
        ema.update().unwrap();
        ema.update().unwrap();
        ema.model_mut().fc2.weight = transpose(ema.model().fc2.weight.clone());
        let err = ema.update().unwrap_err();
        assert!(
            matches!(&err, EmaError::StructureMismatch { path, .. } if path == "fc2.weight"),
            "{err}"
        );
        assert_eq!(ema.num_updates(), 3);
    }
}

#[test]
fn excluded_paths_are_copied() {
    for device in devices() {
        let config = EmaConfig::new(0.9).with_exclude(vec!["fc2.*".into(), "*.running_var".into()]);
        let mut ema = EmaModule::new(Net::new(&device), config).unwrap();
        assert_eq!(
            ema.stats().num_averaged,
            5,
            "8 float tensors less fc2.weight, fc2.bias, bn.running_var"
        );
        let shifted = ema.model().clone().map(&mut AddOne);
        *ema.model_mut() = shifted;
        ema.update().unwrap();
        for ((path, s), (_, l)) in floats(ema.shadow()).iter().zip(floats(ema.model()).iter()) {
            let copied = path.starts_with("fc2.") || path.ends_with("running_var");
            assert_eq!(s == l, copied, "{path}");
        }
    }
}

struct AddOne;
impl burn::module::ModuleMapper for AddOne {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| t.add_scalar(1.0))
    }
}

#[test]
fn update_after_step_copies_and_update_every_skips() {
    let device = Device::flex();
    let config = EmaConfig::new(0.5)
        .with_update_after_step(2)
        .with_update_every(2);
    let mut ema = EmaModule::new(Scalar::new(&[0.0], &device), config).unwrap();
    let mut seen = vec![];
    for step in 1..=6 {
        ema.model_mut().set(&[step as f32 * 10.0]);
        ema.update().unwrap();
        seen.push(values(&ema.shadow().value.val())[0]);
    }
    // step 1 skipped, 2 copies (20), 3 skipped, 4 averages towards 40, 5 skipped, 6 towards 60.
    assert_eq!(seen, vec![0.0, 20.0, 20.0, 30.0, 30.0, 45.0]);
    assert_eq!(ema.num_updates(), 6);
}

#[test]
fn last_decay_reports_the_schedule() {
    let device = Device::flex();
    let config = EmaConfig::new(0.999).with_schedule(Schedule::TensorFlow);
    let mut ema = EmaModule::new(Scalar::new(&[0.0], &device), config).unwrap();
    assert_eq!(ema.last_decay(), None);
    assert_eq!(
        ema.config().decay_at_step(ema.num_updates() + 1).unwrap(),
        (2.0f32 / 11.0) as f64
    );
    ema.update().unwrap();
    ema.update().unwrap();
    assert_eq!(ema.last_decay(), Some((3.0f32 / 12.0) as f64));
}

#[test]
fn a_wider_shadow_keeps_moving_where_a_half_one_stalls() {
    let device = Device::flex();
    assert!(
        device.supports_dtype(burn::tensor::DType::F16),
        "Flex computes f16: this test must run"
    );
    let make = |dtype| {
        let t = Tensor::<1>::ones([4], (&device, burn::tensor::DType::F16));
        let model = Scalar {
            value: Param::from_tensor(t),
        };
        EmaModule::new(model, EmaConfig::new(0.9999).with_shadow_dtype(dtype)).unwrap()
    };
    let (mut wide, mut half) = (make(ShadowDType::Auto), make(ShadowDType::Param));
    assert_eq!(wide.shadow().value.val().dtype(), burn::tensor::DType::F32);
    assert_eq!(half.shadow().value.val().dtype(), burn::tensor::DType::F16);
    // Weights near 1 that move by 1%: (1 - decay) * 0.01 = 1e-6 is far below half an f16 ulp
    // at 1 (4.9e-4), so an f16 shadow never moves; an f32 one does.
    for ema in [&mut wide, &mut half] {
        let live = ema
            .model()
            .value
            .clone()
            .map(|t| t.ones_like().mul_scalar(1.01));
        ema.model_mut().value = live;
        for _ in 0..100 {
            ema.update().unwrap();
        }
    }
    let live = values(&wide.model().value.val())[0] as f64;
    let wide_v = values(&wide.shadow().value.val())[0] as f64;
    let half_v = values(&half.shadow().value.val())[0];
    let expected = 1.0 + (live - 1.0) * (1.0 - 0.9999f64.powi(100));
    assert!((wide_v - expected).abs() < 2e-6, "{wide_v} vs {expected}");
    assert!(wide_v - 1.0 > 5e-5);
    assert_eq!(half_v, 1.0, "an f16 shadow stalls");
}

/// The addresses of the shadow's parameter buffers (Flex). BatchNorm's running statistics are
/// left out: Burn's `RunningState` hands mappers a clone of its value, so the update cannot own
/// that buffer and (correctly) writes a new one; they hold a few values per channel.
fn shadow_addresses(net: &Net) -> Vec<usize> {
    let tensors: Vec<Tensor<1>> = vec![
        net.fc1.weight.val().flatten(0, 1),
        net.fc1.bias.as_ref().unwrap().val(),
        net.bn.gamma.val(),
        net.fc2.weight.val().flatten(0, 1),
    ];
    tensors.into_iter().map(common::flex_address).collect()
}

#[test]
fn steady_state_updates_reuse_the_shadow_buffers() {
    let device = Device::flex();
    let mut ema =
        EmaModule::new(Net::new(&device.clone().autodiff()), EmaConfig::new(0.9)).unwrap();
    ema = sgd_step(ema, &device.clone().autodiff());
    ema.update().unwrap();
    let before = shadow_addresses(ema.shadow());
    let shadow_before = floats(ema.shadow());
    // Checked after every update: an allocator alternating two buffers fails at the first.
    for update in 0..5 {
        ema = sgd_step(ema, &device.clone().autodiff());
        ema.update().unwrap();
        assert_eq!(
            shadow_addresses(ema.shadow()),
            before,
            "in place: no new buffers (update {update})"
        );
    }
    assert_ne!(floats(ema.shadow()), shadow_before, "the shadow moved");
}

#[derive(Module, Debug)]
struct TwoNorms {
    a: burn::nn::BatchNorm,
    b: burn::nn::BatchNorm,
}

/// A shadow spread over two devices, read whole after a fork (as the Learner reads it to
/// validate): the copy for the reader is gathered, the shadow itself stays where it lives,
/// running statistics included (they are shared cells in Burn), and a fork to another device
/// gives the reader a copy there, not the one made for the first.
#[test]
fn reading_a_spread_shadow_whole_leaves_it_spread() {
    use burn::nn::BatchNormConfig;
    let (flex, ndarray) = (Device::flex(), Device::ndarray());
    let model = TwoNorms {
        a: BatchNormConfig::new(3).init(&flex.clone().autodiff()),
        b: BatchNormConfig::new(3).init(&ndarray.clone().autodiff()),
    };
    let mut ema = EmaModule::new(model, EmaConfig::new(0.9)).unwrap();
    ema.update().unwrap();
    let spread = ema.stats().shadow_bytes_by_device;
    assert_eq!(spread.len(), 2, "{spread:?}");
    let ema = ema.fork(&flex.clone().autodiff());
    assert_eq!(ema.shadow().devices(), vec![flex.clone()]);
    assert_eq!(ema.shadow().b.running_var.value().device(), flex);
    assert_eq!(
        ema.stats().shadow_bytes_by_device,
        spread,
        "the gather moved the shadow"
    );
    let ema = ema.fork(&ndarray.clone().autodiff());
    assert_eq!(ema.shadow().devices(), vec![ndarray]);
}
