//! User mistakes and faults: clear errors that change nothing, no poisoned state after a panic,
//! the scoped evaluation helper, weights brought by the user, non-finite values, thread safety.

#![allow(deprecated)] // NdArray is deprecated in Burn 0.22, and still tested.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn_ema::{
    BufferPolicy, EmaConfig, EmaError, EmaModule, MovingAverage, MultiEma, NonFinite,
    ShadowPlacement, Swapped, TensorEma,
};
use common::{Net, Scalar, bits, devices, floats, sgd_step, values};

static ARMED: AtomicBool = AtomicBool::new(false);
/// Like `ARMED`, for a fault on the thread that runs an offloaded update: `n + 1` arms it for
/// the worker's `n + 1`-th map of a `Bomb` (its first maps the live weights copied to the host
/// into the model's structure, its second takes the shadow's tensors out to average them).
static ARMED_IN_WORKER: AtomicUsize = AtomicUsize::new(0);
/// A fault in `valid()`: where an offloaded update reads the live weights on the caller's
/// thread, before anything leaves it.
static ARMED_IN_VALID: AtomicBool = AtomicBool::new(false);

/// The faults are process-wide: the tests that arm them take turns.
fn fault_turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A parameter whose `map` panics once when armed: a backend fault in the middle of an update,
/// while the shadow's tensors are taken out.
#[derive(Clone, Debug)]
struct Bomb {
    inner: Param<Tensor<1>>,
}

impl Module for Bomb {
    fn collect_devices(&self, devices: Vec<Device>) -> Vec<Device> {
        self.inner.collect_devices(devices)
    }
    fn fork(self, device: &Device) -> Self {
        Self {
            inner: self.inner.fork(device),
        }
    }
    fn to_device(self, device: &Device) -> Self {
        Self {
            inner: self.inner.to_device(device),
        }
    }
    fn train(self) -> Self {
        Self {
            inner: self.inner.train(),
        }
    }
    fn valid(&self) -> Self {
        if ARMED_IN_VALID.swap(false, Ordering::SeqCst) {
            panic!("injected backend fault");
        }
        Self {
            inner: self.inner.valid(),
        }
    }
    fn materialize(self) -> Self {
        Self {
            inner: self.inner.materialize(),
        }
    }
    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        self.inner.visit(visitor)
    }
    fn map<Mp: ModuleMapper>(self, mapper: &mut Mp) -> Self {
        if ARMED.swap(false, Ordering::SeqCst) {
            panic!("injected backend fault");
        }
        let worker = std::thread::current().name() == Some("burn-ema-update");
        if worker {
            let armed = ARMED_IN_WORKER.load(Ordering::SeqCst);
            if armed > 0 {
                ARMED_IN_WORKER.store(armed - 1, Ordering::SeqCst);
                if armed == 1 {
                    panic!("injected backend fault in the background");
                }
            }
        }
        Self {
            inner: Module::map(self.inner, mapper),
        }
    }
}

impl burn::module::ModuleDisplayDefault for Bomb {
    fn content(&self, content: burn::module::Content) -> Option<burn::module::Content> {
        Some(content)
    }
}
impl burn::module::ModuleDisplay for Bomb {}

#[derive(Module, Debug)]
struct Fragile {
    fc: Linear,
    bomb: Bomb,
}

#[test]
fn a_panic_inside_an_update_leaves_the_ema_usable() {
    let _turn = fault_turn();
    let device = Device::flex();
    let model = Fragile {
        fc: LinearConfig::new(2, 2).init(&device),
        bomb: Bomb {
            inner: Param::from_data(TensorData::new(vec![1.0f32, 2.0], [2]), &device),
        },
    };
    let mut ema = EmaModule::new(model, EmaConfig::new(0.5)).unwrap();
    ema.update().unwrap();
    ema.model_mut().bomb.inner = ema.model().bomb.inner.clone().map(|t| t.add_scalar(10.0));
    ARMED.store(true, Ordering::SeqCst);
    let outcome = catch_unwind(AssertUnwindSafe(|| ema.update()));
    assert!(outcome.is_err(), "the panic goes on to the caller");
    assert!(!ARMED.load(Ordering::SeqCst), "the fault fired");
    // Every accessor works; the shadow started again from the live weights, the counter kept.
    assert_eq!(ema.num_updates(), 1);
    assert_eq!(floats(ema.shadow()), floats(ema.model()));
    assert_eq!(values(&ema.shadow().bomb.inner.val()), vec![11.0, 12.0]);
    // And the EMA goes on.
    ema.model_mut().bomb.inner = ema.model().bomb.inner.clone().map(|t| t.add_scalar(2.0));
    ema.update().unwrap();
    assert_eq!(values(&ema.shadow().bomb.inner.val()), vec![12.0, 13.0]);
    assert_eq!(ema.num_updates(), 2);
    // A clone, a save and a swap work too.
    let _ = ema.clone();
    drop(ema.swap().unwrap());
}

fn fragile(device: &Device) -> Fragile {
    Fragile {
        fc: LinearConfig::new(2, 2).init(device),
        bomb: Bomb {
            inner: Param::from_data(TensorData::new(vec![1.0f32, 2.0], [2]), device),
        },
    }
}

#[test]
fn a_panic_inside_a_background_update_is_an_error_and_leaves_the_ema_usable() {
    let _turn = fault_turn();
    let device = Device::flex();
    let mut ema = EmaModule::new(fragile(&device), EmaConfig::new(0.5))
        .unwrap()
        .with_placement(ShadowPlacement::Offload(Device::flex()))
        .unwrap();
    ema.update().unwrap();
    ema.sync().unwrap();
    ema.model_mut().bomb.inner = ema.model().bomb.inner.clone().map(|t| t.add_scalar(10.0));
    // A fault while the shadow's tensors are out (the worker's second map): the shadow starts
    // again from the live weights the update was given; the counter is kept.
    ARMED_IN_WORKER.store(2, Ordering::SeqCst);
    ema.update().unwrap();
    let err = ema.sync().unwrap_err();
    assert!(
        matches!(&err, EmaError::BackgroundUpdate { step: 2, message } if message.contains("injected")),
        "{err}"
    );
    assert_eq!(ARMED_IN_WORKER.load(Ordering::SeqCst), 0, "the fault fired");
    assert_eq!(ema.num_updates(), 1);
    assert_eq!(values(&ema.shadow().bomb.inner.val()), vec![11.0, 12.0]);
    ema.model_mut().bomb.inner = ema.model().bomb.inner.clone().map(|t| t.add_scalar(2.0));
    ema.update().unwrap();
    ema.sync().unwrap();
    assert_eq!(values(&ema.shadow().bomb.inner.val()), vec![12.0, 13.0]);

    // A fault before the shadow is touched (the worker's first map, after the copy): an error,
    // and the shadow is as it was.
    ema.model_mut().bomb.inner = ema.model().bomb.inner.clone().map(|t| t.add_scalar(4.0));
    ARMED_IN_WORKER.store(1, Ordering::SeqCst);
    ema.update().unwrap();
    let err = ema.sync().unwrap_err();
    assert!(
        matches!(&err, EmaError::BackgroundUpdate { step: 3, message } if message.contains("injected")),
        "{err}"
    );
    assert_eq!(ARMED_IN_WORKER.load(Ordering::SeqCst), 0, "the fault fired");
    assert_eq!(ema.num_updates(), 2);
    assert_eq!(values(&ema.shadow().bomb.inner.val()), vec![12.0, 13.0]);

    // A fault on the caller's thread, before the update leaves it: the panic goes on, and
    // nothing is lost.
    ARMED_IN_VALID.store(true, Ordering::SeqCst);
    let outcome = catch_unwind(AssertUnwindSafe(|| ema.update()));
    assert!(outcome.is_err());
    assert!(!ARMED_IN_VALID.load(Ordering::SeqCst), "the fault fired");
    assert_eq!(values(&ema.shadow().bomb.inner.val()), vec![12.0, 13.0]);
    ema.update().unwrap();
    ema.sync().unwrap();
    assert_eq!(ema.num_updates(), 3, "the failed updates applied nothing");
    // 12 + (17 − 12)/2: the live weights moved by 4 since the shadow's last update.
    assert_eq!(values(&ema.shadow().bomb.inner.val()), vec![14.5, 15.5]);
}

/// A wgpu device that does not exist (feature `wgpu`: the README's test command has it; a build
/// without it has no such device to ask for, and no such test).
#[cfg(feature = "wgpu")]
#[test]
fn a_shadow_device_that_cannot_be_reached_is_an_error() {
    use burn::tensor::DeviceKind;
    let ema = EmaModule::new(Net::new(&Device::flex()), EmaConfig::new(0.9)).unwrap();
    let err = ema
        .with_placement(ShadowPlacement::Device(Device::wgpu(
            DeviceKind::DiscreteGpu(7),
        )))
        .unwrap_err();
    assert!(matches!(&err, EmaError::Device { .. }), "{err}");
}

#[test]
fn swapping_a_changed_model_is_an_error_and_changes_nothing() {
    for device in devices() {
        let mut ema = EmaModule::new(Net::new(&device), EmaConfig::new(0.9)).unwrap();
        // Same number of elements, another shape: this used to swap weights into the wrong shape.
        ema.model_mut().fc2 = LinearConfig::new(2, 8).init(&device);
        let (live, shadow) = (bits(ema.model()), bits(ema.shadow()));
        let err = ema.swap().map(|_| ()).unwrap_err();
        assert!(
            matches!(err, EmaError::StructureMismatch { ref path, .. } if path == "fc2.weight"),
            "{err}"
        );
        assert_eq!(bits(ema.model()), live);
        assert_eq!(bits(ema.shadow()), shadow);
        let err = ema.with_shadow_weights(|_| ()).unwrap_err();
        assert!(matches!(err, EmaError::StructureMismatch { .. }), "{err}");
    }
}

#[derive(Module, Debug)]
struct WithDropout {
    fc: Linear,
    dropout: Dropout,
}

#[test]
fn with_shadow_weights_evaluates_in_eval_mode_and_always_swaps_back() {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let model = WithDropout {
        fc: LinearConfig::new(16, 16).init(&ad),
        dropout: DropoutConfig::new(0.5).init(),
    };
    let mut ema = EmaModule::new(model, EmaConfig::new(0.5)).unwrap();
    ema.model_mut().fc.weight = ema.model().fc.weight.clone().map(|w| w.add_scalar(1.0));
    ema.update().unwrap();
    let (live, shadow) = (bits(ema.model()), bits(ema.shadow()));
    assert_ne!(live, shadow);
    let x = Tensor::<2>::ones([4, 16], &device);
    let (a, b, w) = ema
        .with_shadow_weights(|m| {
            assert!(
                !m.fc.weight.val().is_autodiff(),
                "evaluation needs no autodiff"
            );
            let a = values(&m.dropout.forward(m.fc.forward(x.clone())));
            let b = values(&m.dropout.forward(m.fc.forward(x.clone())));
            (a, b, bits(m))
        })
        .unwrap();
    assert_eq!(a, b, "Dropout is off: two passes agree");
    assert_eq!(w, shadow, "the closure sees the shadow weights");
    assert_eq!(bits(ema.model()), live, "swapped back");
    // A panic inside the closure swaps back too.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        ema.with_shadow_weights(|_| panic!("evaluation failed"))
    }));
    assert!(outcome.is_err());
    assert_eq!(bits(ema.model()), live);
    assert_eq!(bits(ema.shadow()), shadow);
    ema.update().unwrap();
}

#[test]
fn from_parts_takes_the_users_shadow() {
    for device in devices() {
        let live = Net::new(&device.clone().autodiff());
        let mine = Net::new(&device);
        let mine_bits = bits(&mine);
        let config = EmaConfig::new(0.9).with_buffers(BufferPolicy::Copy);
        let mut ema = EmaModule::from_parts(live, mine, config.clone(), 7).unwrap();
        assert_eq!(ema.num_updates(), 7);
        assert_eq!(bits(ema.shadow()), mine_bits);
        assert!(!ema.shadow().fc1.weight.val().is_autodiff());
        assert_ne!(ema.shadow().fc1.weight.id, ema.model().fc1.weight.id);
        // Buffers are recognised in a shadow the user brought: copied, by the policy.
        assert_eq!(ema.stats().num_averaged, 6);
        ema = sgd_step(ema, &device.clone().autodiff());
        ema.update().unwrap();
        assert_eq!(ema.num_updates(), 8);
        assert_eq!(
            values(&ema.shadow().bn.running_mean.value()),
            values(&ema.model().valid().bn.running_mean.value())
        );
        // Another architecture is refused.
        let other = Net {
            fc2: LinearConfig::new(8, 3).init(&device),
            ..Net::new(&device)
        };
        let err = EmaModule::from_parts(Net::new(&device), other, config, 0)
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, EmaError::StructureMismatch { .. }), "{err}");
    }
}

#[test]
fn non_finite_values_follow_the_policy() {
    let device = Device::flex();
    let run = |policy| {
        let config = EmaConfig::new(0.5).with_non_finite(policy);
        let mut ema = EmaModule::new(Scalar::new(&[0.0, 0.0], &device), config).unwrap();
        ema.model_mut().set(&[2.0, 2.0]);
        ema.update().unwrap();
        ema.model_mut().set(&[4.0, f32::NAN]);
        let result = ema.update();
        (ema, result)
    };
    let (ema, result) = run(NonFinite::Propagate);
    result.unwrap();
    let v = values(&ema.shadow().value.val());
    assert_eq!(v[0], 2.5);
    assert!(v[1].is_nan(), "propagated: {v:?}");

    let (mut ema, result) = run(NonFinite::Skip);
    result.unwrap();
    assert_eq!(
        values(&ema.shadow().value.val()),
        vec![1.0, 1.0],
        "skipped whole"
    );
    assert_eq!(ema.num_updates(), 2, "the step counts");
    assert_eq!(ema.stats().non_finite_skips, 1);
    ema.model_mut().set(&[3.0, 3.0]);
    ema.update().unwrap();
    assert_eq!(values(&ema.shadow().value.val()), vec![2.0, 2.0]);

    let (ema, result) = run(NonFinite::Error);
    assert_eq!(
        result.unwrap_err(),
        EmaError::NonFinite {
            path: "value".into(),
            count: 1
        }
    );
    assert_eq!(values(&ema.shadow().value.val()), vec![1.0, 1.0]);
    assert_eq!(ema.num_updates(), 1, "nothing changed");

    // Infinities count too, and MultiEma applies each average's policy.
    let configs = vec![
        EmaConfig::new(0.5).with_non_finite(NonFinite::Skip),
        EmaConfig::new(0.5),
    ];
    let mut multi = MultiEma::new(Scalar::new(&[0.0], &device), configs).unwrap();
    multi.model_mut().set(&[f32::INFINITY]);
    multi.update().unwrap();
    assert_eq!(values(&multi.shadow_of(0).unwrap().value.val()), vec![0.0]);
    assert_eq!(
        values(&multi.shadow_of(1).unwrap().value.val()),
        vec![f32::INFINITY]
    );
}

#[test]
fn an_exclusion_pattern_that_matches_nothing_is_an_error() {
    let device = Device::flex();
    let config = EmaConfig::new(0.9).with_exclude(vec!["fc3.*".into()]);
    let err = EmaModule::new(Net::new(&device), config).unwrap_err();
    assert!(
        matches!(err, EmaError::InvalidPattern { ref pattern, .. } if pattern == "fc3.*"),
        "{err}"
    );
}

#[derive(Module, Debug)]
struct Counts {
    counts: Param<Tensor<1, Int>>,
}

#[test]
fn a_model_without_float_tensors_is_an_error() {
    let device = Device::flex();
    let model = Counts {
        counts: Param::initialized(
            burn::module::ParamId::new(),
            Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 2], [2]), &device),
        ),
    };
    let err = EmaModule::new(model, EmaConfig::new(0.9)).unwrap_err();
    assert_eq!(err, EmaError::EmptyModel);
}

#[test]
fn tensor_ema_takes_step_zero_twice_and_a_power_function_refuses_going_back() {
    let device = Device::flex();
    let config = EmaConfig::new(0.999).with_schedule(burn_ema::Schedule::TensorFlow);
    let mut mean = TensorEma::new(Tensor::<1>::zeros([2], &device), &config).unwrap();
    mean.update_with_step(Tensor::<1>::ones([2], &device), 0)
        .unwrap();
    // TensorFlow's decay at num_updates = 0 is min(0.999, 1/10): the average keeps 0.1.
    let v = values(&mean.value());
    assert_eq!(v, vec![0.9f32, 0.9], "1 - 0.1 in f32");
    assert_eq!(mean.last_decay(), Some(0.1f32 as f64));
    // Step 0 again applies step 0's decay again (TensorFlow's `apply` does): 0.9 - (0.9 - 1)·0.9.
    mean.update_with_step(Tensor::<1>::ones([2], &device), 0)
        .unwrap();
    let again = 0.9f32 - (0.9f32 - 1.0) * (1.0f32 - 0.1f32);
    assert_eq!(values(&mean.value()), vec![again, again]);
    assert_eq!(mean.num_updates(), 0);

    // A power-function average cannot go back in time; a repeated step adds no time (decay 1).
    let config =
        EmaConfig::new(1.0).with_schedule(burn_ema::Schedule::PowerFunction { gamma: 1.0 });
    let mut mean = TensorEma::new(Tensor::<1>::zeros([2], &device), &config).unwrap();
    for step in 1..=4 {
        mean.update_with_step(Tensor::<1>::full([2], step as f32, &device), step)
            .unwrap();
    }
    let before = values(&mean.value());
    mean.update_with_step(Tensor::<1>::full([2], 100.0, &device), 4)
        .unwrap();
    assert_eq!(mean.last_decay(), Some(1.0));
    assert_eq!(
        values(&mean.value()),
        before,
        "a repeated power-function step changes nothing"
    );
    assert_eq!(
        mean.update_with_step(Tensor::<1>::ones([2], &device), 3)
            .unwrap_err(),
        EmaError::StepBackwards { step: 3, last: 4 }
    );
    assert_eq!(values(&mean.value()), before);
}

#[test]
fn public_types_can_cross_threads() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<EmaModule<Net>>();
    send::<MultiEma<Net>>();
    send::<TensorEma<2>>();
    send::<EmaConfig>();
    sync::<EmaConfig>();
    send::<EmaError>();
    sync::<EmaError>();
    send::<Swapped<'static, Net>>();
}

#[test]
fn public_update_functions_refuse_mismatched_tensors() {
    let device = Device::flex();
    let err = burn_ema::ema_update(
        Tensor::<1>::zeros([3], &device),
        Tensor::<1>::ones([1], &device),
        0.5,
    )
    .unwrap_err();
    assert!(matches!(err, EmaError::TensorMismatch { .. }), "{err}");
    let err = burn_ema::ema_update(
        Tensor::<1>::zeros([3], &device),
        Tensor::<1>::ones([3], &Device::ndarray()),
        0.5,
    )
    .unwrap_err();
    assert!(err.to_string().contains("device"), "{err}");
    // One bad pair: nothing is updated.
    let good = Tensor::<1>::zeros([2], &device);
    let err = burn_ema::ema_update_many(
        vec![
            (good.clone(), Tensor::<1>::ones([2], &device)),
            (
                Tensor::<1>::zeros([2], &device),
                Tensor::<1>::ones([5], &device),
            ),
        ],
        0.5,
    )
    .unwrap_err();
    assert!(matches!(err, EmaError::TensorMismatch { .. }), "{err}");
    assert_eq!(values(&good), vec![0.0, 0.0]);
    let err = burn_ema::ema_update(good.clone(), good, 1.5).unwrap_err();
    assert!(
        matches!(err, EmaError::InvalidConfig { field: "decay", .. }),
        "{err}"
    );
}
