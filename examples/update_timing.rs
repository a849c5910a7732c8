//! What one `EmaModule::update` costs, timed as a user would time it: a model's EMA updated
//! `--updates` times back to back (queued on the device), then one sync, in `--rounds` rounds.
//! The model is the launch-bound set of the benchmarks (ResNet-50's 161 tensors at their ranks,
//! channels divided by 8: 406,277 values, as an autodiff model), beside one flat parameter of the
//! same values; parameters in f32, f16 or bf16 (`--dtype`; half parameters get f32 shadows, the
//! default). It checks the criterion group `ema-wgpu/launch-bound` (BENCHMARKS.md) with plain
//! code.
//!
//! ```text
//! cargo run --release --features wgpu --example update_timing -- --dtype f16
//! cargo run --release --features wgpu --example update_timing -- --backend flex
//! ```

#[path = "../benches/common/mod.rs"]
mod common;

use std::time::Instant;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;
use burn_ema::{EmaConfig, EmaModule, MovingAverage};
use clap::Parser;
use common::{ResNet50Div8, flat_div8_of};

#[derive(Parser)]
struct Args {
    /// `wgpu` (the default, the CubeCL engine) or `flex`.
    #[arg(long, default_value = "wgpu")]
    backend: String,
    /// The parameters' element type: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Updates queued between two syncs.
    #[arg(long, default_value_t = 50)]
    updates: usize,
    /// Rounds of `--updates` each, for each model.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// CubeCL: at most this many tensor pairs a launch (`burn_ema_kernels::tuning`).
    #[arg(long)]
    max_pairs: Option<usize>,
    /// CubeCL: this many vectors a unit, instead of the autotune's choice.
    #[arg(long)]
    vectors_per_unit: Option<usize>,
}

/// Milliseconds per update over one round of `updates` queued updates and one sync, after one
/// untimed update and sync (kernel compilation and tuning at the first round; the device idle
/// when the round starts).
fn time_round<M: Module>(ema: &mut EmaModule<M>, device: &Device, updates: usize) -> f64 {
    ema.update().expect("the update runs");
    device.sync().expect("the device syncs");
    let start = Instant::now();
    for _ in 0..updates {
        ema.update().expect("the update runs");
    }
    device.sync().expect("the device syncs");
    start.elapsed().as_secs_f64() * 1e3 / updates as f64
}

fn main() {
    let args = Args::parse();
    let device = match args.backend.as_str() {
        "wgpu" => Device::wgpu(Default::default()),
        "flex" => Device::flex(),
        other => {
            eprintln!("backend `{other}`: wgpu or flex");
            std::process::exit(2);
        }
    };
    let dtype = match args.dtype.as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => {
            eprintln!("dtype `{other}`: f32, f16 or bf16");
            std::process::exit(2);
        }
    };
    burn_ema_kernels::tuning::set_max_pairs_per_launch(args.max_pairs);
    burn_ema_kernels::tuning::set_vectors_per_unit(args.vectors_per_unit);
    let config = EmaConfig::new(0.999);
    let mut model = EmaModule::new(ResNet50Div8::with_dtype(&device, dtype), config.clone())
        .expect("a valid EMA");
    let mut flat = EmaModule::new(flat_div8_of(&device, dtype), config).expect("a valid EMA");
    let fmt = |times: &[f64]| {
        times
            .iter()
            .map(|t| format!("{t:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "{} parameters, {:?} shadows, {} updates a sync, ms per update by round:",
        args.dtype,
        model.shadow().kernels[0].val().dtype(),
        args.updates
    );
    let mut medians = [0.0; 2];
    // Interleaved, so that both see the same machine.
    let (mut model_times, mut flat_times) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        model_times.push(time_round(&mut model, &device, args.updates));
        flat_times.push(time_round(&mut flat, &device, args.updates));
    }
    for (k, (name, times)) in [
        ("model, 161 tensors", &model_times),
        ("one flat tensor   ", &flat_times),
    ]
    .into_iter()
    .enumerate()
    {
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        medians[k] = sorted[sorted.len() / 2];
        println!("  {name}: {}  (median {:.3})", fmt(times), medians[k]);
    }
    println!("  model / flat: {:.2} (medians)", medians[0] / medians[1]);
}
