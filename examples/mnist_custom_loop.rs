//! MNIST in a hand-written training loop (no Learner), showing the manual EMA API: update after
//! each optimizer step, swap the shadow weights in for evaluation, swap back.
//!
//! ```text
//! cargo run --release --example mnist_custom_loop -- --ema --artifacts artifacts/mnist-loop
//! ```
//!
//! The loop is in `crates/burn-ema-mnist/src/custom_loop.rs`.

use std::process::ExitCode;

use burn_ema_mnist::cli::TrainArgs;
use burn_ema_mnist::custom_loop::train_custom_loop;
use clap::Parser;

#[derive(Parser)]
#[command(about = "MNIST in a custom training loop, with or without an EMA of the weights")]
struct Cli {
    #[command(flatten)]
    train: TrainArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.train.settings().and_then(|s| train_custom_loop(&s)) {
        Ok(report) => {
            report.print_files();
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
