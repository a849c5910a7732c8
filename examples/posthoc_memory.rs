//! The memory a post-hoc EMA synthesis costs on the ResNet-50 parameter set (25.6M values,
//! 102 MB in f32), Flex. `prepare` writes 2 profiles × 4 snapshots into DIR; `baseline` builds
//! the template model and opens the snapshot directory; `synthesize` also synthesizes width
//! 0.07 from the 8 snapshots (818 MB of files). Run each under a peak-memory meter: the
//! difference is what a synthesis adds (streamed: the result plus an f32 accumulator, one
//! snapshot tensor at a time, not the 8 snapshots).
//!
//! ```text
//! cargo run --release --features flex --example posthoc_memory -- prepare /tmp/snapshots
//! /usr/bin/time -v target/release/examples/posthoc_memory baseline /tmp/snapshots
//! /usr/bin/time -v target/release/examples/posthoc_memory synthesize /tmp/snapshots
//! ```

#[path = "../benches/common/mod.rs"]
mod common;

use burn::module::Module;
use burn::prelude::*;
use burn_ema::{MovingAverage, PostHocConfig, PostHocEma, PostHocSnapshots, Width};

fn main() -> Result<(), burn_ema::EmaError> {
    let args: Vec<String> = std::env::args().collect();
    let (mode, dir) = match args.as_slice() {
        [_, mode, dir] => (mode.as_str(), dir.as_str()),
        _ => {
            eprintln!("usage: posthoc_memory prepare|baseline|synthesize DIR");
            std::process::exit(2);
        }
    };
    let device = Device::flex();
    let template = common::resnet50_model(&device);
    match mode {
        "prepare" => {
            let _ = std::fs::remove_dir_all(dir);
            let config = PostHocConfig::new().with_snapshot_every(10);
            let mut ema = PostHocEma::new(template, config, dir)?;
            for _ in 0..40 {
                ema.update()?;
            }
            println!("{} snapshots in {dir}", ema.snapshots().len());
        }
        "baseline" => {
            let snapshots = PostHocSnapshots::open(dir)?;
            println!(
                "baseline: {} parameters, {} snapshots",
                template.num_params(),
                snapshots.snapshots().len()
            );
        }
        "synthesize" => {
            let snapshots = PostHocSnapshots::open(dir)?;
            let model = snapshots.synthesize(&template, Width::SigmaRel(0.07), None)?;
            println!(
                "synthesize: {} parameters from {} snapshots",
                model.num_params(),
                snapshots.snapshots().len()
            );
        }
        other => {
            eprintln!("unknown mode `{other}`");
            std::process::exit(2);
        }
    }
    Ok(())
}
