//! Trains a small CNN with BatchNorm on 8,000 real MNIST digits with Burn's Learner, and with
//! `--ema` keeps an exponential moving average of its weights, validates with it, and reports
//! live against EMA accuracy and loss per epoch.
//!
//! ```text
//! cargo run --release --example mnist -- --ema
//! ```
//!
//! The training code is in `crates/burn-ema-mnist/src/train.rs`.

use std::process::ExitCode;

use burn_ema_mnist::cli::TrainArgs;
use burn_ema_mnist::train::train_with_learner;
use clap::Parser;

#[derive(Parser)]
#[command(about = "MNIST with Burn's Learner, with or without an EMA of the weights")]
struct Cli {
    #[command(flatten)]
    train: TrainArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = cli
        .train
        .settings()
        .and_then(|settings| train_with_learner(&settings));
    match result {
        Ok(report) => {
            println!(
                "\nValidation (2,000 held-out digits), read back from each epoch's checkpoint:"
            );
            for epoch in &report.epochs {
                println!("{}", epoch.summary());
            }
            report.print_files();
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
