//! Where the shadow lives: a home device, `fork`/`to_device`, Burn's MultiDevice strategy, the
//! pieces Burn's DDP strategy relies on, and host offload with a background update.
//!
//! DDP itself cannot run here: Burn 0.22.1's collectives exist only for CUDA and Remote (on
//! Flex, marking a parameter distributed panics "Distributed operations are not supported"; on
//! wgpu the backward pass panics inside cubecl's `all_reduce`). The DDP tests below run every
//! step of a DDP worker except the all-reduce, on wgpu (lavapipe in CI): fork to the worker's
//! device, Burn's own `ModuleSharder`, `optimize` with the (already reduced) gradients.
#![cfg(all(feature = "flex", feature = "ndarray"))]

mod common;

use burn::module::Module;
use burn::optim::{GradientsParams, SgdConfig};
use burn::prelude::*;
use burn_ema::{
    EmaConfig, EmaError, EmaFile, EmaModule, MovingAverage, NonFinite, ShadowPlacement,
};
use common::{Net, Scalar, bits, floats, input, sgd_step};

/// The wgpu tests take turns: Burn 0.22.1's reads from a wgpu device share a staging buffer
/// that one thread's read can overwrite under another's (see README), and these tests read.
#[cfg(feature = "wgpu")]
fn wgpu_turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[allow(deprecated)]
fn ndarray() -> Device {
    Device::ndarray()
}

/// One SGD step of the live model only (`model_mut`), as the Learner does: the EmaModule itself
/// is not mapped by the optimizer, so a background update keeps running meanwhile.
fn live_step(ema: &mut EmaModule<Net>, device: &Device) {
    let mut optim = SgdConfig::new().init();
    let model = ema.model().clone();
    let loss = model.forward(input(device)).powf_scalar(2.0).mean();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    *ema.model_mut() = optim.step(0.5, model, grads);
}

fn shadow_bytes(ema: &EmaModule<Net>) -> u64 {
    floats(ema.shadow())
        .iter()
        .map(|(_, v)| 4 * v.len() as u64)
        .sum()
}

#[test]
fn a_fork_to_another_device_moves_no_shadow_data() {
    let device = Device::flex().autodiff();
    let ema = EmaModule::new(Net::new(&device), EmaConfig::new(0.9)).unwrap();
    let replica = ema.clone().fork(&ndarray().autodiff());
    // The replica's model is on NdArray; its shadow stayed on Flex, and nothing moved.
    assert_eq!(replica.model().devices()[0], ndarray());
    assert_eq!(replica.stats().shadow_device, Device::flex());
    assert_eq!(replica.stats().shadow_bytes_moved, 0);
    assert_eq!(bits(replica.shadow()), bits(ema.shadow()));
}

#[test]
fn a_replica_updated_as_the_main_one_moves_its_shadow_once() {
    // A single-device Learner forks the model to its device once: the shadow follows at the
    // first update, once, and stays.
    let net = Net::new(&ndarray().autodiff());
    let ema = EmaModule::new(net.clone(), EmaConfig::new(0.9)).unwrap();
    let size = shadow_bytes(&ema);
    let device = Device::flex().autodiff();
    let mut ema = ema.fork(&device);
    assert_eq!(ema.stats().shadow_bytes_moved, 0);
    // The same run with the model on Flex from the start.
    // (A copy through a record: clones would share BatchNorm's running statistics.)
    let copy = Net::new(&device).load_record(net.into_record());
    let mut same = EmaModule::new(copy, EmaConfig::new(0.9)).unwrap();
    for _ in 0..3 {
        ema = sgd_step(ema, &device);
        ema.update().unwrap();
        same = sgd_step(same, &device);
        same.update().unwrap();
    }
    assert_eq!(ema.stats().shadow_device, Device::flex());
    assert_eq!(ema.stats().shadow_bytes_moved, size);
    assert_eq!(same.stats().shadow_bytes_moved, 0);
    assert_eq!(bits(same.shadow()), bits(ema.shadow()));
}

#[test]
fn to_device_moves_the_shadow_unless_it_is_pinned() {
    let ema = EmaModule::new(Net::new(&Device::flex()), EmaConfig::new(0.9)).unwrap();
    let size = shadow_bytes(&ema);
    let moved = ema.clone().to_device(&ndarray());
    assert_eq!(moved.stats().shadow_device, ndarray());
    assert_eq!(moved.stats().shadow_bytes_moved, size);

    let pinned = EmaModule::new(Net::new(&Device::flex()), EmaConfig::new(0.9))
        .unwrap()
        .with_placement(ShadowPlacement::Device(Device::flex()))
        .unwrap();
    let pinned = pinned.to_device(&ndarray()).fork(&ndarray());
    assert_eq!(pinned.model().devices()[0], ndarray());
    assert_eq!(pinned.stats().shadow_device, Device::flex());
    assert_eq!(pinned.stats().shadow_bytes_moved, 0);
}

#[test]
fn a_shadow_on_another_device_averages_swaps_and_saves_like_one_at_home() {
    // Model on NdArray, shadow pinned on Flex, against both on NdArray: the same arithmetic
    // (the fused CPU passes of both backends compute the same expression), so bit for bit.
    let device = ndarray().autodiff();
    let mut home = EmaModule::new(Net::new(&device), EmaConfig::new(0.8)).unwrap();
    let mut away = EmaModule::new(home.model().clone(), EmaConfig::new(0.8))
        .unwrap()
        .with_placement(ShadowPlacement::Device(Device::flex()))
        .unwrap();
    for _ in 0..4 {
        live_step(&mut home, &device);
        *away.model_mut() = home.model().clone();
        home.update().unwrap();
        away.update().unwrap();
    }
    assert_eq!(away.stats().shadow_device, Device::flex());
    assert_eq!(away.shadow().devices()[0], Device::flex());
    assert_eq!(bits(away.shadow()), bits(home.shadow()));
    // Each update copied the live weights across (and the shadow itself moved once, pinned).
    assert_eq!(away.stats().live_bytes_copied, 4 * shadow_bytes(&home));
    assert_eq!(away.stats().shadow_bytes_moved, shadow_bytes(&home));
    assert_eq!(home.stats().live_bytes_copied, 0);

    let live = bits(away.model());
    {
        let swapped = away.swap().unwrap();
        // The model holds the shadow weights, on the model's device.
        assert_eq!(swapped.devices()[0], ndarray());
        assert_eq!(bits(&*swapped), bits(home.shadow()));
    }
    assert_eq!(bits(away.model()), live);
    assert_eq!(away.shadow().devices()[0], Device::flex());

    let dir = crate::common::Scratch::new("scale");
    let file = away.save(dir.join("ema"), EmaFile::State).unwrap();
    let mut loaded = EmaModule::new(Net::new(&device), EmaConfig::new(0.8))
        .unwrap()
        .with_placement(ShadowPlacement::Device(Device::flex()))
        .unwrap();
    loaded.load(&file, EmaFile::State).unwrap();
    assert_eq!(loaded.num_updates(), 4);
    assert_eq!(bits(loaded.shadow()), bits(home.shadow()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn offload_updates_in_the_background_bit_for_bit() {
    // The background update does what the inline one does: same devices, same pass; and
    // with `update_every`, the skipped steps (which run inline, copying nothing) too.
    for config in [
        EmaConfig::new(0.8),
        EmaConfig::new(0.8).with_update_every(3),
    ] {
        offload_matches_inline(config);
    }
}

fn offload_matches_inline(config: EmaConfig) {
    let device = ndarray().autodiff();
    let mut inline = EmaModule::new(Net::new(&device), config.clone())
        .unwrap()
        .with_placement(ShadowPlacement::Device(Device::flex()))
        .unwrap();
    let mut offloaded = EmaModule::new(inline.model().clone(), config)
        .unwrap()
        .with_placement(ShadowPlacement::Offload(Device::flex()))
        .unwrap();
    assert!(offloaded.stats().offloaded);
    for step in 1..=6 {
        live_step(&mut inline, &device);
        *offloaded.model_mut() = inline.model().clone();
        inline.update().unwrap();
        offloaded.update().unwrap();
        if step % 2 == 0 {
            // A read waits for the update in flight: never a half-updated shadow.
            assert_eq!(bits(offloaded.shadow()), bits(inline.shadow()));
            assert_eq!(offloaded.num_updates(), step);
        }
    }
    offloaded.sync().unwrap();
    assert_eq!(bits(offloaded.shadow()), bits(inline.shadow()));
    // Both copied the live weights to the host at the updates that averaged, none at a skip.
    assert!(inline.stats().live_bytes_copied > 0);
    assert_eq!(
        offloaded.stats().live_bytes_copied,
        inline.stats().live_bytes_copied
    );
    // A clone taken while an update is in flight gets the finished shadow too.
    live_step(&mut inline, &device);
    *offloaded.model_mut() = inline.model().clone();
    offloaded.update().unwrap();
    let clone = offloaded.clone();
    inline.update().unwrap();
    assert_eq!(bits(clone.shadow()), bits(inline.shadow()));
    assert_eq!(bits(offloaded.shadow()), bits(inline.shadow()));
    assert_eq!(
        bits(&offloaded.into_shadow()),
        bits(&inline.clone().into_shadow())
    );
}

/// A model large enough (4 × 1024², 16 MB) that an offloaded update is still running when
/// `update()` returns and a save starts.
#[derive(Module, Debug)]
struct Wide {
    layers: Vec<burn::nn::Linear>,
}

fn wide(device: &Device) -> Wide {
    Wide {
        layers: (0..4)
            .map(|_| burn::nn::LinearConfig::new(1024, 1024).init(device))
            .collect(),
    }
}

/// Saves from a clone on another thread while the update it follows runs on the worker and the
/// training thread moves on to the next step and update: every file holds the state of one
/// whole update (the shadow, the counter and, in TensorFlow's file, the live weights of that
/// step), checked bit for bit against an EMA updated inline.
#[test]
fn a_save_during_an_offloaded_update_holds_a_whole_update() {
    let device = ndarray().autodiff();
    let models: Vec<Wide> = (0..5).map(|_| wide(&device)).collect();
    let config = EmaConfig::new(0.9);
    let mut inline = EmaModule::new(models[0].clone(), config.clone()).unwrap();
    let mut offloaded = EmaModule::new(models[0].clone(), config.clone())
        .unwrap()
        .with_placement(ShadowPlacement::Offload(Device::flex()))
        .unwrap();
    let dir = common::Scratch::new("offload-save");
    let formats = [EmaFile::State, EmaFile::Shadow, EmaFile::TensorFlow];
    let mut expected = Vec::new();
    let mut saves = Vec::new();
    for (k, model) in models[1..].iter().enumerate() {
        *inline.model_mut() = model.clone();
        *offloaded.model_mut() = model.clone();
        inline.update().unwrap();
        expected.push(bits(inline.shadow()));
        let started = std::time::Instant::now();
        offloaded.update().unwrap();
        let returned = started.elapsed();
        let saver = offloaded.clone();
        let path = dir.join(format!("during-{k}"));
        let format = formats[k % formats.len()];
        saves.push(std::thread::spawn(move || {
            let file = saver.save(&path, format).unwrap();
            (file, format, returned, started.elapsed())
        }));
    }
    for (k, save) in saves.into_iter().enumerate() {
        let (file, format, returned, saved) = save.join().unwrap();
        println!(
            "update {}: update() returned after {returned:?}, the {format:?} save finished {saved:?} after it began",
            k + 1
        );
        let shadow = match format {
            EmaFile::Shadow => burn_ema::shadow_from_file(&models[0], &file).unwrap(),
            _ => {
                let mut loaded = EmaModule::new(models[0].clone(), config.clone()).unwrap();
                loaded.load(&file, format).unwrap();
                assert_eq!(loaded.num_updates(), k as u64 + 1, "{format:?}");
                if format == EmaFile::TensorFlow {
                    assert_eq!(bits(loaded.model()), bits(&models[k + 1]), "{format:?}");
                }
                loaded.into_shadow()
            }
        };
        assert_eq!(
            bits(&shadow),
            expected[k],
            "{format:?}: the file saved during update {} is not that update's state",
            k + 1
        );
    }
}

#[test]
fn offload_reports_errors_clearly() {
    let device = ndarray().autodiff();

    // A power-function step going back: refused at once, before anything runs in the
    // background.
    let power =
        EmaConfig::new(1.0).with_schedule(burn_ema::Schedule::PowerFunction { gamma: 6.94 });
    let mut offloaded = EmaModule::new(Net::new(&device), power)
        .unwrap()
        .with_placement(ShadowPlacement::Offload(Device::flex()))
        .unwrap();
    offloaded.update_with_step(5).unwrap();
    assert!(matches!(
        offloaded.update_with_step(3),
        Err(EmaError::StepBackwards { step: 3, last: 5 })
    ));

    // A non-finite weight under NonFinite::Error: found by the worker, reported by the next
    // call that waits for it, and the shadow is unchanged.
    let config = EmaConfig::new(0.8).with_non_finite(NonFinite::Error);
    let mut offloaded = EmaModule::new(Scalar::new(&[1.0, 2.0], &device), config)
        .unwrap()
        .with_placement(ShadowPlacement::Offload(Device::flex()))
        .unwrap();
    offloaded.update().unwrap();
    offloaded.sync().unwrap();
    let before = bits(offloaded.shadow());
    offloaded.model_mut().set(&[f32::NAN, 2.0]);
    offloaded.update().unwrap();
    assert!(matches!(
        offloaded.sync(),
        Err(EmaError::NonFinite { count: 1, .. })
    ));
    assert_eq!(offloaded.sync(), Ok(()), "an error is reported once");
    assert_eq!(bits(offloaded.shadow()), before);
    assert_eq!(offloaded.num_updates(), 1);
}

#[test]
fn offload_needs_a_host_device() {
    let ema = EmaModule::new(Net::new(&Device::flex()), EmaConfig::new(0.8)).unwrap();
    #[cfg(feature = "wgpu")]
    {
        let err = ema
            .clone()
            .with_placement(ShadowPlacement::Offload(Device::wgpu(Default::default())))
            .unwrap_err();
        assert!(
            matches!(&err, EmaError::Device { problem, .. } if problem.contains("host")),
            "{err}"
        );
    }
    #[cfg(not(feature = "wgpu"))]
    eprintln!("offload_needs_a_host_device: wgpu is not built in; only the host case runs");
    // NdArray is a host device too.
    assert!(
        ema.with_placement(ShadowPlacement::Offload(ndarray()))
            .is_ok()
    );
}

#[cfg(feature = "train")]
mod learner {
    //! Burn's Learner with the MultiDevice strategy on two CPU devices (Flex and NdArray).
    use burn::prelude::*;
    use burn::train::{ExecutionStrategy, MultiDeviceOptim};
    use burn_ema::{EmaConfig, EmaFile, EmaModule, MovingAverage, Schedule};

    use super::ndarray;
    use crate::common::toy::{Pair, Toy, ToyModel};

    fn weights(m: &Toy) -> Vec<u32> {
        let values: Vec<f32> = m.weight.val().into_data().try_into_vec_as().unwrap();
        values.into_iter().map(f32::to_bits).collect()
    }

    pub(super) fn config() -> EmaConfig {
        EmaConfig::new(0.5).with_schedule(Schedule::TensorFlow)
    }

    /// Trains for 2 epochs; `devices` empty: single device (Flex).
    fn run(
        name: &str,
        model_device: &Device,
        devices: Vec<Device>,
        optim: MultiDeviceOptim,
        lr: f64,
    ) -> EmaModule<Toy> {
        let ema = EmaModule::new(Toy::new(model_device), config()).unwrap();
        train(name, ema, devices, optim, lr, 2, 2)
    }

    /// Trains `ema` for `epochs` epochs of `steps` optimizer steps; `devices` empty: single
    /// device (its model's).
    pub(super) fn train<T: ToyModel>(
        name: &str,
        ema: EmaModule<T>,
        devices: Vec<Device>,
        optim: MultiDeviceOptim,
        lr: f64,
        epochs: usize,
        steps: usize,
    ) -> EmaModule<T> {
        // Batches of 2 items: one batch per step on one device, or one from each device.
        let items = 2 * steps * devices.len().max(1);
        let strategy =
            (!devices.is_empty()).then(|| ExecutionStrategy::MultiDevice(devices, optim));
        crate::common::toy::train(name, ema, strategy, lr, epochs, items)
    }

    fn multi_device_equals_single_device(optim: MultiDeviceOptim, name: &str) {
        let flex = Device::flex().autodiff();
        let single = run(
            &format!("{name}-single"),
            &flex,
            vec![],
            MultiDeviceOptim::OptimMainDevice,
            0.1,
        );
        // Two devices each contribute the same gradient and the Learner sums them: half the
        // learning rate gives the single-device steps exactly (0.05 * 2g == 0.1 * g in f32).
        let devices = vec![flex.clone(), ndarray().autodiff()];
        let multi = run(name, &flex, devices.clone(), optim, 0.05);
        assert_eq!(multi.num_updates(), 4, "one update per optimizer step");
        assert_eq!(single.num_updates(), 4);
        assert_eq!(weights(multi.model()), weights(single.model()));
        assert_eq!(weights(multi.shadow()), weights(single.shadow()));
        // The Learner forked the model to NdArray on every step: no shadow data went along.
        assert_eq!(multi.stats().shadow_bytes_moved, 0);
        assert_eq!(multi.stats().shadow_device, Device::flex());

        // Built on NdArray, trained with Flex as the main device: the shadow moves once.
        let moved = run(
            &format!("{name}-moved"),
            &ndarray().autodiff(),
            devices,
            optim,
            0.05,
        );
        assert_eq!(moved.stats().shadow_bytes_moved, 8, "two f32 values, once");
        assert_eq!(weights(moved.shadow()), weights(single.shadow()));
    }

    #[test]
    fn multi_device_main_optimizer_averages_once_per_step_and_moves_no_shadow() {
        multi_device_equals_single_device(MultiDeviceOptim::OptimMainDevice, "multi-main");
        // (`OptimSharded`: the tests below, with a model whose parameters it spreads.)
    }

    /// `Pair` trained on Flex alone, or sharded over Flex and NdArray (`a` stepped on Flex,
    /// `b` on NdArray), for `epochs` epochs of `steps` steps.
    fn pair(name: &str, sharded: bool, epochs: usize, steps: usize) -> EmaModule<Pair> {
        let flex = Device::flex().autodiff();
        let ema = EmaModule::new(Pair::new(&flex), config()).unwrap();
        resume_pair(name, ema, sharded, epochs, steps)
    }

    fn resume_pair(
        name: &str,
        ema: EmaModule<Pair>,
        sharded: bool,
        epochs: usize,
        steps: usize,
    ) -> EmaModule<Pair> {
        if sharded {
            let devices = vec![Device::flex().autodiff(), ndarray().autodiff()];
            // Each parameter's gradient is the sum of both devices' (see above): half the rate.
            train(
                name,
                ema,
                devices,
                MultiDeviceOptim::OptimSharded,
                0.05,
                epochs,
                steps,
            )
        } else {
            train(
                name,
                ema,
                vec![],
                MultiDeviceOptim::OptimMainDevice,
                0.1,
                epochs,
                steps,
            )
        }
    }

    fn pair_bits(m: &Pair) -> Vec<u32> {
        [&m.a, &m.b]
            .into_iter()
            .flat_map(|p| p.val().into_data().try_to_vec::<f32>().unwrap())
            .map(f32::to_bits)
            .collect()
    }

    #[test]
    fn multi_device_sharded_optimizer_keeps_each_shadow_tensor_with_its_parameter() {
        let single = pair("sharded-single", false, 2, 2);
        let sharded = pair("sharded", true, 2, 2);
        let longer = pair("sharded-longer", true, 2, 4);
        // Read before anything reads the shadow whole (which gathers it, counted).
        let moved = sharded.stats().shadow_bytes_moved;

        // Where the shadow lives: `a`'s 8 bytes on Flex, `b`'s on NdArray, like the steps.
        assert_eq!(
            sharded.stats().shadow_bytes_by_device,
            vec![(Device::flex(), 8), (ndarray(), 8)]
        );
        // What crossed devices: `b`'s shadow tensor went to NdArray once, at the first update,
        // and the Learner's validation gathered it on Flex once per epoch: 8 + 2 * 8 bytes,
        // however many steps an epoch has. No live weight was copied to the shadow.
        assert_eq!(moved, 24);
        assert_eq!(
            longer.stats().shadow_bytes_moved,
            moved,
            "nothing moves per step"
        );
        assert_eq!(sharded.stats().live_bytes_copied, 0);
        assert_eq!(longer.stats().live_bytes_copied, 0);

        // The same EMA as one device's, bit for bit (Flex's and NdArray's fused passes compute
        // the same expression), read whole on the home device.
        assert_eq!(sharded.num_updates(), 4, "one update per optimizer step");
        assert_eq!(pair_bits(sharded.model()), pair_bits(single.model()));
        assert_eq!(pair_bits(sharded.shadow()), pair_bits(single.shadow()));
        assert_eq!(sharded.shadow().devices(), vec![Device::flex()]);
        assert_eq!(sharded.stats().shadow_device, Device::flex());
    }

    #[test]
    fn a_sharded_shadow_saves_loads_and_resumes_like_a_one_device_one() {
        let full = pair("resume-full", true, 4, 2);
        let half = pair("resume-half", true, 2, 2);
        assert_eq!(
            half.stats().shadow_bytes_by_device.len(),
            2,
            "spread when saved"
        );

        // A Burn record (what the Learner's checkpoints hold), into a fresh EmaModule.
        let flex = Device::flex().autodiff();
        let fresh = EmaModule::new(Pair::new(&flex), config()).unwrap();
        let loaded = fresh.load_record(half.clone().into_record());
        assert_eq!(loaded.num_updates(), 4);
        assert_eq!(pair_bits(loaded.shadow()), pair_bits(half.shadow()));
        let resumed = resume_pair("resume-rest", loaded, true, 2, 2);
        assert_eq!(resumed.num_updates(), 8);
        assert_eq!(pair_bits(resumed.shadow()), pair_bits(full.shadow()));
        assert_eq!(pair_bits(resumed.model()), pair_bits(full.model()));

        // The shadow's own file, into the bare model; and `into_shadow`, whole on Flex.
        let dir = crate::common::Scratch::new("sharded-files");
        let file = half.save(dir.join("shadow"), EmaFile::Shadow).unwrap();
        let bare = Pair::new(&Device::flex()).try_load_file(&file).unwrap();
        assert_eq!(pair_bits(&bare), pair_bits(half.shadow()));
        let shadow = half.clone().into_shadow();
        assert_eq!(shadow.devices(), vec![Device::flex()]);
        assert_eq!(pair_bits(&shadow), pair_bits(half.shadow()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_sharded_shadow_swaps_in_place_with_its_parameters() {
        let mut ema = pair("sharded-swap", true, 1, 2);
        // After the epoch the Learner forked the model back to Flex for validation: step once
        // more by hand, sharded, as the next epoch would (`b` on NdArray, `a` on Flex).
        let model = ema.model().clone();
        let b = model.b.clone().map(|t| t.to_device(&ndarray().autodiff()));
        *ema.model_mut() = Pair { a: model.a, b };
        ema.update().unwrap();
        assert_eq!(ema.stats().live_bytes_copied, 0);
        let (live, shadow) = (pair_bits(ema.model()), pair_bits(ema.shadow()));
        let moved = ema.stats().shadow_bytes_moved;
        {
            let swapped = ema.swap().unwrap();
            assert_eq!(pair_bits(&swapped), shadow);
            assert_eq!(swapped.b.val().device(), ndarray());
        }
        // Each shadow tensor was on its parameter's device: the swap exchanged handles.
        assert_eq!(
            ema.stats().shadow_bytes_moved,
            moved,
            "a swap moves nothing"
        );
        assert_eq!(
            ema.stats().shadow_bytes_by_device.len(),
            2,
            "still shard-local"
        );
        assert_eq!(pair_bits(ema.model()), live);
        assert_eq!(pair_bits(ema.shadow()), shadow);
    }
}

#[cfg(all(feature = "train", feature = "wgpu"))]
mod ddp {
    //! A DDP worker's steps, without the all-reduce (see the file's doc).
    use burn::module::Module;
    use burn::optim::{GradientsParams, SgdConfig};
    use burn::prelude::*;
    use burn::tensor::DeviceKind;
    use burn::train::{ModuleSharder, TrainStep};
    use burn_ema::{EmaModule, MovingAverage};

    use super::learner::config;
    use crate::common::gate::wgpu_device;
    use crate::common::toy::{Batch, Toy};

    /// Two wgpu devices for two workers, autodiff: the default adapter and a CPU one (lavapipe
    /// in CI), or `None` where the machine lacks one (said by the gate).
    fn two_devices(test: &str) -> Option<(Device, Device)> {
        let main = wgpu_device(test, DeviceKind::DefaultDevice)?;
        let second = wgpu_device(test, DeviceKind::Cpu)?;
        Some((main.autodiff(), second.autodiff()))
    }

    fn distributed(m: &Toy) -> bool {
        m.weight.val().is_distributed()
    }

    fn values(m: &Toy) -> Vec<u32> {
        let v: Vec<f32> = m.weight.val().into_data().try_into_vec_as().unwrap();
        v.into_iter().map(f32::to_bits).collect()
    }

    /// One optimizer step of every worker with the same (reduced) gradient, computed on a
    /// plain copy of the main worker's live model.
    fn step_all(workers: Vec<EmaModule<Toy>>, device: &Device) -> Vec<EmaModule<Toy>> {
        let record = workers[0].model().clone().into_record();
        workers
            .into_iter()
            .map(|w| {
                let plain = Toy::new(device).load_record(record.clone());
                let target = Tensor::ones([1, 2], device);
                let grads = plain.step(Batch { target }).grads;
                let worker_device = w.model().devices()[0].clone();
                let grads: GradientsParams = grads.to_device(&worker_device, w.model());
                w.optimize(&mut SgdConfig::new().init(), 0.1.into(), grads)
            })
            .collect()
    }

    #[test]
    fn ddp_workers_keep_one_shadow_on_the_main_device() {
        let _turn = super::wgpu_turn();
        let Some((main_device, second_device)) =
            two_devices("ddp_workers_keep_one_shadow_on_the_main_device")
        else {
            return;
        };
        assert_ne!(main_device, second_device, "two distinct wgpu devices");
        let ema = EmaModule::new(Toy::new(&main_device), config()).unwrap();
        let mut single = ema.clone();

        // What each DdpWorker does before training: fork to its device, mark distributed.
        let mut workers: Vec<EmaModule<Toy>> = [&main_device, &second_device]
            .into_iter()
            .map(|d| ema.clone().fork(d).map(&mut ModuleSharder))
            .collect();
        assert!(distributed(workers[0].model()) && distributed(workers[1].model()));

        for _ in 0..3 {
            workers = step_all(workers, &main_device);
            single = step_all(vec![single], &main_device).pop().unwrap();
        }
        let (main, secondary) = (&workers[0], &workers[1]);
        // One shadow, on the main worker, updated once per step, equal to a one-device run.
        assert_eq!(main.num_updates(), 3);
        assert!(main.stats().holds_shadow);
        assert!(
            !secondary.stats().holds_shadow,
            "the secondary dropped its copy"
        );
        // Reading, saving or swapping it there is an error that says why, not a panic.
        assert!(matches!(
            secondary.shadow_of(0),
            Err(burn_ema::EmaError::NotHeld)
        ));
        assert!(matches!(secondary.swap(), Err(burn_ema::EmaError::NotHeld)));
        let nowhere =
            std::env::temp_dir().join(format!("burn-ema-not-held-{}", std::process::id()));
        for format in [burn_ema::EmaFile::State, burn_ema::EmaFile::Shadow] {
            assert!(matches!(
                secondary.save(&nowhere, format),
                Err(burn_ema::EmaError::NotHeld)
            ));
        }
        assert!(!nowhere.with_extension("bpk").exists());
        assert_eq!(values(main.shadow()), values(single.shadow()));
        assert_eq!(values(main.model()), values(secondary.model()));
        assert_eq!(main.stats().shadow_bytes_moved, 0);
        assert_eq!(main.stats().shadow_device, main_device.clone().inner());
        // Its parameters still all-reduce: swapping in and out kept the distributed mark.
        let main = workers.swap_remove(0);
        {
            let swapped = main.swap().unwrap();
            assert!(distributed(&swapped));
        }
        assert!(distributed(main.model()));

        // The main worker's checkpoint carries the EMA; a run resumed from it continues.
        let record = main.clone().into_record();
        let resumed = EmaModule::new(Toy::new(&main_device), config())
            .unwrap()
            .load_record(record);
        assert_eq!(resumed.num_updates(), 3);
        assert_eq!(values(resumed.shadow()), values(single.shadow()));
    }

    /// Post-hoc EMA under DDP: the secondary worker drops its averages and saves no snapshot
    /// (it has none to save); the main worker's snapshots are the only ones.
    #[test]
    fn ddp_post_hoc_snapshots_come_from_the_main_worker_only() {
        use burn_ema::{PostHocConfig, PostHocEma, PostHocSnapshots};
        let _turn = super::wgpu_turn();
        let Some((main_device, second_device)) =
            two_devices("ddp_post_hoc_snapshots_come_from_the_main_worker_only")
        else {
            return;
        };
        let dir = crate::common::Scratch::new("ddp-posthoc");
        let config = PostHocConfig::new().with_snapshot_every(2);
        let posthoc = PostHocEma::new(Toy::new(&main_device), config, &dir).unwrap();
        let mut workers: Vec<PostHocEma<Toy>> = [&main_device, &second_device]
            .into_iter()
            .map(|d| posthoc.clone().fork(d).map(&mut ModuleSharder))
            .collect();
        for _ in 0..4 {
            for worker in &mut workers {
                worker.update().unwrap();
            }
        }
        let snapshots = PostHocSnapshots::open(&dir).unwrap();
        assert_eq!(snapshots.steps(), vec![2, 4]);
        assert_eq!(
            snapshots.snapshots().len(),
            4,
            "one file per profile and step"
        );
        assert!(workers[0].shadow_of(0).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(feature = "wgpu")]
mod wgpu_offload {
    //! A model training on wgpu (lavapipe in CI) with its shadow on the host.
    use burn::module::Module;
    use burn::prelude::*;
    use burn_ema::{EmaConfig, EmaFile, EmaModule, MovingAverage, ShadowPlacement};

    use burn::tensor::DeviceKind;

    use super::{live_step, shadow_bytes};
    use crate::common::gate::wgpu_device;
    use crate::common::{Net, bits, floats};

    fn close(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) {
        for ((pa, va), (pb, vb)) in a.iter().zip(b) {
            assert_eq!(pa, pb);
            for (x, y) in va.iter().zip(vb) {
                assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{pa}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn a_wgpu_model_with_a_host_shadow_trains_swaps_saves_and_resumes() {
        let _turn = super::wgpu_turn();
        let test = "a_wgpu_model_with_a_host_shadow_trains_swaps_saves_and_resumes";
        let Some(device) = wgpu_device(test, DeviceKind::DefaultDevice) else {
            return;
        };
        let device = device.autodiff();
        let config = EmaConfig::new(0.8);
        let mut on_gpu = EmaModule::new(Net::new(&device), config.clone()).unwrap();
        let mut offloaded = EmaModule::new(on_gpu.model().clone(), config.clone())
            .unwrap()
            .with_placement(ShadowPlacement::Offload(Device::flex()))
            .unwrap();
        assert_eq!(offloaded.stats().shadow_bytes_moved, shadow_bytes(&on_gpu));
        // Reads from the GPU after the shadow went to the host leave it alone (Burn 0.22.1's
        // own wgpu-to-host `to_device` keeps pointing into a staging buffer that the next read
        // overwrites; burn-ema copies the bytes out).
        let initial = floats(on_gpu.model());
        let _ = on_gpu
            .model()
            .valid()
            .fc1
            .weight
            .val()
            .mul_scalar(3.0)
            .into_data();
        assert_eq!(floats(offloaded.shadow()), initial);
        for _ in 0..4 {
            live_step(&mut on_gpu, &device);
            *offloaded.model_mut() = on_gpu.model().clone();
            on_gpu.update().unwrap();
            offloaded.update().unwrap();
        }
        offloaded.sync().unwrap();
        assert_eq!(offloaded.shadow().devices()[0], Device::flex());
        // The GPU kernel and the CPU pass round alike up to an ulp or so.
        close(&floats(offloaded.shadow()), &floats(on_gpu.shadow()));

        let live = floats(offloaded.model());
        let eval = offloaded.with_shadow_weights(floats).unwrap();
        close(&eval, &floats(offloaded.shadow()));
        assert_eq!(floats(offloaded.model()), live, "swapped back bit for bit");

        let dir = crate::common::Scratch::new("offload");
        let file = offloaded.save(dir.join("ema"), EmaFile::State).unwrap();
        let mut resumed = EmaModule::new(Net::new(&device), config)
            .unwrap()
            .with_placement(ShadowPlacement::Offload(Device::flex()))
            .unwrap();
        resumed.load(&file, EmaFile::State).unwrap();
        assert_eq!(resumed.num_updates(), 4);
        assert_eq!(floats(resumed.shadow()), floats(offloaded.shadow()));
        live_step(&mut resumed, &device);
        resumed.update().unwrap();
        resumed.sync().unwrap();
        assert_eq!(resumed.num_updates(), 5);
        assert_eq!(resumed.model().devices()[0], device.clone().inner());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The worker reads the weights from the GPU while the training thread goes on reading
    /// from it (its loss, a layer's output) and stepping: after every update the offloaded
    /// shadow equals, bit for bit, a host shadow updated inline from the same weights (the same
    /// copy, the same CPU pass), and the copied bytes agree.
    #[test]
    fn a_background_copy_from_the_gpu_races_no_read_of_the_training_thread() {
        let _turn = super::wgpu_turn();
        let test = "a_background_copy_from_the_gpu_races_no_read_of_the_training_thread";
        let Some(device) = wgpu_device(test, DeviceKind::DefaultDevice) else {
            return;
        };
        let device = device.autodiff();
        let config = EmaConfig::new(0.7);
        let mut inline = EmaModule::new(Net::new(&device), config.clone())
            .unwrap()
            .with_placement(ShadowPlacement::Device(Device::flex()))
            .unwrap();
        let mut offloaded = EmaModule::new(inline.model().clone(), config)
            .unwrap()
            .with_placement(ShadowPlacement::Offload(Device::flex()))
            .unwrap();
        for step in 1..=12 {
            live_step(&mut inline, &device);
            *offloaded.model_mut() = inline.model().clone();
            offloaded.update().unwrap();
            // The training thread reads from the GPU while the worker copies (in evaluation
            // mode: a training-mode forward would move BatchNorm's running statistics, which
            // the two EMAs read at different moments).
            let eval = inline.model().valid();
            for _ in 0..3 {
                let out = eval.forward(crate::common::input(&device.clone().inner()));
                let _ = out.sum().into_scalar::<f32>();
            }
            inline.update().unwrap();
            if step % 3 == 0 {
                assert_eq!(
                    bits(offloaded.shadow()),
                    bits(inline.shadow()),
                    "step {step}"
                );
            }
        }
        offloaded.sync().unwrap();
        assert_eq!(bits(offloaded.shadow()), bits(inline.shadow()));
        assert_eq!(
            offloaded.stats().live_bytes_copied,
            inline.stats().live_bytes_copied
        );
    }
}
