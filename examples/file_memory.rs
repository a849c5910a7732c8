//! The memory an EMA file costs: builds a ~270 MB model on Flex with its EMA, then saves or
//! loads the EMA state. Run it under `/usr/bin/time -v` and compare the peak resident sizes of
//! the three modes: `save` and `load` minus `baseline` is what a save or a load adds.
//!
//! ```text
//! cargo run --release --features flex --example file_memory -- save /tmp/ema.bpk
//! /usr/bin/time -v target/release/examples/file_memory baseline /tmp/ema.bpk
//! /usr/bin/time -v target/release/examples/file_memory save /tmp/ema.bpk
//! /usr/bin/time -v target/release/examples/file_memory load /tmp/ema.bpk
//! ```
//!
//! `baseline` ends where the others do: the model and a shadow with buffers of its own (after
//! one update). `load` starts from a fresh `EmaModule` (its shadow still sharing the model's
//! buffers), loads the file over it, as a resumed run does, and updates once.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn_ema::{EmaConfig, EmaFile, EmaModule, MovingAverage};

/// 16 layers of 2048 x 2048 (+ bias): 67.1 M parameters, 268 MB in f32.
#[derive(Module, Debug)]
struct Big {
    layers: Vec<Linear>,
}

fn big(device: &Device) -> Big {
    Big {
        layers: (0..16)
            .map(|_| LinearConfig::new(2048, 2048).init(device))
            .collect(),
    }
}

fn main() -> Result<(), burn_ema::EmaError> {
    let args: Vec<String> = std::env::args().collect();
    let (mode, path) = match args.as_slice() {
        [_, mode, path] => (mode.as_str(), path.as_str()),
        _ => {
            eprintln!("usage: file_memory baseline|save|load FILE");
            std::process::exit(2);
        }
    };
    let device = Device::flex();
    let mut ema = EmaModule::new(big(&device), EmaConfig::new(0.999))?;
    match mode {
        "baseline" => ema.update()?,
        "save" => {
            ema.update()?;
            ema.save(path, EmaFile::State)?;
        }
        "load" => {
            ema.load(path, EmaFile::State)?;
            // Touches every value (a lazy load would otherwise not have read them yet).
            ema.update()?;
        }
        other => {
            eprintln!("unknown mode `{other}`");
            std::process::exit(2);
        }
    }
    let params: usize = ema.shadow().num_params();
    println!("{mode}: {params} parameters, {} updates", ema.num_updates());
    Ok(())
}
