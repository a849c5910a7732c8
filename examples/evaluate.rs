//! Loads a saved model file (live or EMA) into the bare `Cnn` and reports its accuracy and
//! confusion matrix on the validation split: shadow weights need no EMA code at inference.
//!
//! ```text
//! cargo run --release --example evaluate -- --model artifacts/mnist/model-ema.bpk
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use burn::module::Module;
use burn_ema_mnist::MnistError;
use burn_ema_mnist::cli::DeviceArg;
use burn_ema_mnist::data::{default_data_dir, load_split};
use burn_ema_mnist::eval::evaluate;
use burn_ema_mnist::model::Cnn;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Evaluate a saved MNIST model file on the validation split")]
struct Cli {
    /// The model file (`model.bpk` or `model-ema.bpk`).
    #[arg(long)]
    model: PathBuf,
    /// The seed the model was trained with (it fixes the validation split).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The backend.
    #[arg(long, value_enum, default_value_t = DeviceArg::Flex)]
    device: DeviceArg,
    /// The MNIST IDX files.
    #[arg(long, default_value_os_t = default_data_dir())]
    data: PathBuf,
}

fn run(cli: &Cli) -> Result<(), MnistError> {
    let device = cli.device.device()?;
    let (_, valid) = load_split(&cli.data, cli.seed)?;
    let model = Cnn::new(&device)
        .try_load_file(&cli.model)
        .map_err(|e| MnistError::Model {
            path: cli.model.clone(),
            problem: e.to_string(),
        })?;
    let result = evaluate(&model, &valid, &device);
    println!(
        "{}: accuracy {:.2}%, loss {:.4} on {} digits",
        cli.model.display(),
        100.0 * result.accuracy,
        result.loss,
        valid.len()
    );
    println!("\nconfusion matrix:\n{}", result.confusion_table());
    Ok(())
}

fn main() -> ExitCode {
    match run(&Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
