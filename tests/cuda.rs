//! burn-ema on Burn's CUDA backend: the EMA of a model trained on `Device::cuda(0)` against the
//! same average computed on the CPU, swaps, files, a host-offloaded shadow, Burn's Learner, and
//! Burn's DDP strategy over two GPUs.
//!
//! CI builds and links these (`.ci/run`, with the LLVM of `scripts/install-cuda-llvm`) but has no
//! GPU: each test says so on stderr and does not run, unless `BURN_EMA_REQUIRE_CUDA=1` makes that
//! a failure (set it on a GPU machine; README, "CUDA").
#![cfg(feature = "cuda")]

mod common;

use burn::module::Module;
use burn::prelude::*;
use burn_ema::{EmaConfig, EmaFile, EmaModule, MovingAverage, ShadowPlacement};
use common::gate::cuda_device;
use common::{Net, Scratch, bits, floats, sgd_step};

/// The CUDA tests take turns on the device.
fn turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `a` and `b` path by path, within `rel` of each value's magnitude.
fn close(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)], rel: f32) {
    assert_eq!(a.len(), b.len());
    for ((pa, va), (pb, vb)) in a.iter().zip(b) {
        assert_eq!(pa, pb);
        assert_eq!(va.len(), vb.len(), "{pa}");
        for (x, y) in va.iter().zip(vb) {
            assert!((x - y).abs() <= rel * (1.0 + y.abs()), "{pa}: {x} vs {y}");
        }
    }
}

/// A copy of `model` on the CPU (Flex, autodiff), through a record.
fn on_flex(model: &Net) -> Net {
    Net::new(&Device::flex().autodiff()).load_record(model.clone().into_record())
}

#[test]
fn cuda_averages_swaps_saves_and_resumes_like_the_cpu() {
    let _turn = turn();
    let Some(cuda) = cuda_device("cuda_averages_swaps_saves_and_resumes_like_the_cpu", 0) else {
        return;
    };
    let ad = cuda.clone().autodiff();
    let config = EmaConfig::new(0.8);
    let mut ema = EmaModule::new(Net::new(&ad), config.clone()).unwrap();
    // The reference: the same live weights, copied to the CPU after every step, averaged there.
    let mut reference = EmaModule::new(on_flex(ema.model()), config.clone()).unwrap();
    for _ in 0..3 {
        ema = sgd_step(ema, &cuda);
        ema.update().unwrap();
        *reference.model_mut() = on_flex(ema.model());
        reference.update().unwrap();
    }
    assert_eq!(ema.stats().shadow_device, cuda);
    assert_eq!(ema.num_updates(), 3);
    close(&floats(ema.shadow()), &floats(reference.shadow()), 1e-6);
    assert_eq!(ema.stats().shadow_bytes_moved, 0);
    assert_eq!(ema.stats().live_bytes_copied, 0);

    // Swap in and out: the shadow's weights, then the live ones, bit for bit.
    let (live, shadow) = (bits(ema.model()), bits(ema.shadow()));
    {
        let swapped = ema.swap().unwrap();
        assert_eq!(bits(&*swapped), shadow);
    }
    assert_eq!(bits(ema.model()), live);

    // The shadow's file into the bare model on the CPU; the EMA's state into a resumed run.
    let dir = Scratch::new("cuda-files");
    let file = ema.save(dir.join("shadow"), EmaFile::Shadow).unwrap();
    let bare = Net::new(&Device::flex()).try_load_file(&file).unwrap();
    assert_eq!(bits(&bare), shadow);
    let state = ema.save(dir.join("state"), EmaFile::State).unwrap();
    let mut resumed = EmaModule::new(Net::new(&ad), config).unwrap();
    resumed.load(&state, EmaFile::State).unwrap();
    assert_eq!(resumed.num_updates(), 3);
    assert_eq!(bits(resumed.shadow()), shadow);
    resumed.update().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cuda_model_with_a_host_shadow_averages_like_one_on_the_gpu() {
    let _turn = turn();
    let test = "a_cuda_model_with_a_host_shadow_averages_like_one_on_the_gpu";
    let Some(cuda) = cuda_device(test, 0) else {
        return;
    };
    let ad = cuda.clone().autodiff();
    let config = EmaConfig::new(0.8);
    let mut on_gpu = EmaModule::new(Net::new(&ad), config.clone()).unwrap();
    let mut offloaded = EmaModule::new(on_gpu.model().clone(), config)
        .unwrap()
        .with_placement(ShadowPlacement::Offload(Device::flex()))
        .unwrap();
    for _ in 0..3 {
        on_gpu = sgd_step(on_gpu, &cuda);
        on_gpu.update().unwrap();
        *offloaded.model_mut() = on_gpu.model().clone();
        offloaded.update().unwrap();
    }
    offloaded.sync().unwrap();
    assert_eq!(offloaded.stats().shadow_device, Device::flex());
    close(&floats(offloaded.shadow()), &floats(on_gpu.shadow()), 1e-6);
    // Every update copied the live weights and buffers to the host (f32: 4 bytes a value).
    let live: u64 = floats(on_gpu.model())
        .iter()
        .map(|(_, v)| 4 * v.len() as u64)
        .sum();
    assert_eq!(offloaded.stats().live_bytes_copied, 3 * live);
    assert_eq!(on_gpu.stats().live_bytes_copied, 0);
}

/// Burn's Learner on CUDA (feature `train`).
#[cfg(feature = "train")]
mod learner {
    use burn::prelude::*;
    use burn_ema::{EmaConfig, EmaModule, MovingAverage, Schedule};

    use crate::common::floats;
    use crate::common::gate::cuda_device;
    use crate::common::toy::{Toy, train};

    #[test]
    fn burns_learner_trains_on_cuda_with_the_ema_of_a_cpu_run() {
        let _turn = super::turn();
        let Some(cuda) = cuda_device("burns_learner_trains_on_cuda_with_the_ema_of_a_cpu_run", 0)
        else {
            return;
        };
        let config = EmaConfig::new(0.5).with_schedule(Schedule::TensorFlow);
        let on_cuda = EmaModule::new(Toy::new(&cuda.clone().autodiff()), config.clone()).unwrap();
        let on_cuda = train("cuda-learner", on_cuda, None, 0.1, 2, 4);
        let on_cpu = EmaModule::new(Toy::new(&Device::flex().autodiff()), config).unwrap();
        let on_cpu = train("cuda-learner-cpu", on_cpu, None, 0.1, 2, 4);
        assert_eq!(on_cuda.num_updates(), 4);
        super::close(&floats(on_cuda.shadow()), &floats(on_cpu.shadow()), 1e-6);
        assert_eq!(on_cuda.stats().shadow_device, cuda);
    }

    /// Burn's DDP strategy (NCCL all-reduce on CUDA) with an `EmaModule`: one shadow, on the main
    /// worker, equal to a one-device run of the same steps. It needs two GPUs: NCCL takes one rank
    /// per GPU, so two workers cannot share one (said, not run, on a one-GPU machine).
    #[test]
    fn ddp_on_two_gpus_keeps_one_shadow_equal_to_a_one_device_run() {
        use burn::tensor::distributed::{DistributedConfig, ReduceOperation};
        use burn::train::ExecutionStrategy;
        let _turn = super::turn();
        let test = "ddp_on_two_gpus_keeps_one_shadow_equal_to_a_one_device_run";
        let (Some(first), Some(second)) = (cuda_device(test, 0), cuda_device(test, 1)) else {
            return;
        };
        let config = EmaConfig::new(0.5).with_schedule(Schedule::TensorFlow);
        // The targets are all ones: every batch gives the same gradient, so the mean over two
        // workers, each on half the items, is a one-device step on a batch.
        let single = EmaModule::new(Toy::new(&first.clone().autodiff()), config.clone()).unwrap();
        let single = train("ddp-single", single, None, 0.1, 2, 4);
        let devices = vec![first.clone().autodiff(), second.autodiff()];
        let strategy = ExecutionStrategy::ddp(
            devices,
            DistributedConfig {
                all_reduce_op: ReduceOperation::Mean,
            },
        );
        let ema = EmaModule::new(Toy::new(&first.clone().autodiff()), config).unwrap();
        let ddp = train("ddp", ema, Some(strategy), 0.1, 2, 8);
        assert!(
            ddp.stats().holds_shadow,
            "the main worker's model holds the shadow"
        );
        assert_eq!(ddp.num_updates(), 4, "one update per optimizer step");
        super::close(&floats(ddp.shadow()), &floats(single.shadow()), 1e-6);
        super::close(&floats(ddp.model()), &floats(single.model()), 1e-6);
        assert_eq!(ddp.stats().shadow_device, first);
        // The shadow never left the main GPU, and no live weight was copied to it.
        assert_eq!(ddp.stats().shadow_bytes_moved, 0);
        assert_eq!(ddp.stats().live_bytes_copied, 0);
    }
}
