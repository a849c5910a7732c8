//! Post-hoc EMA after training: synthesizes the EMA of a sweep of relative widths from the
//! snapshots an MNIST run saved with `--post-hoc-ema`, evaluates each on the validation split,
//! prints the table and draws accuracy against width (SVG), marking the widths that were
//! tracked during training.
//!
//! ```text
//! cargo run --release --example mnist_custom_loop -- --post-hoc-ema --artifacts artifacts/mnist-posthoc
//! cargo run --release --example posthoc -- --snapshots artifacts/mnist-posthoc/posthoc
//! ```
//!
//! The sweep is in `crates/burn-ema-mnist/src/posthoc.rs`.

use std::path::PathBuf;
use std::process::ExitCode;

use burn_ema::PostHocSnapshots;
use burn_ema_mnist::MnistError;
use burn_ema_mnist::cli::DeviceArg;
use burn_ema_mnist::data::{default_data_dir, load_split};
use burn_ema_mnist::posthoc::{plot_sweep, sweep, table};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Synthesize and evaluate EMAs of any width from post-hoc EMA snapshots")]
struct Cli {
    /// The snapshot directory of a `--post-hoc-ema` run.
    #[arg(long, default_value = "artifacts/mnist-posthoc/posthoc")]
    snapshots: PathBuf,
    /// The relative widths to synthesize (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = default_widths())]
    sigma_rels: Vec<f64>,
    /// Synthesize as of this snapshot step (default: the last one).
    #[arg(long)]
    step: Option<u64>,
    /// The seed of the training run (it picks the validation split).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The MNIST IDX files.
    #[arg(long, default_value_os_t = default_data_dir())]
    data: PathBuf,
    /// The backend.
    #[arg(long, value_enum, default_value_t = DeviceArg::Flex)]
    device: DeviceArg,
    /// Where the plot goes (default: `posthoc.svg` beside the snapshot directory).
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// 0.02 to 0.25 in steps of 0.01, and EDM2's two tracked widths.
fn default_widths() -> Vec<f64> {
    (2..=25).map(|k| k as f64 / 100.0).collect()
}

fn run(cli: &Cli) -> Result<(), MnistError> {
    let device = cli.device.device()?;
    let snapshots = PostHocSnapshots::open(&cli.snapshots)?;
    let steps = snapshots.steps();
    let (_, valid) = load_split(&cli.data, cli.seed)?;
    let mut widths = cli.sigma_rels.clone();
    widths.extend(snapshots.tracked_sigma_rels());
    widths.sort_by(f64::total_cmp);
    widths.dedup_by(|a, b| (*a - *b).abs() < 1e-12);
    let step = cli.step.or(steps.last().copied());
    println!(
        "{} snapshots at {} steps ({} to {}); synthesizing {} widths as of step {}:",
        snapshots.snapshots().len(),
        steps.len(),
        steps.first().copied().unwrap_or(0),
        steps.last().copied().unwrap_or(0),
        widths.len(),
        step.unwrap_or(0)
    );
    let rows = sweep(&snapshots, &widths, cli.step, &valid, &device)?;
    print!("{}", table(&rows));
    // The most accurate; among equally accurate widths, the lowest loss.
    let best = rows
        .iter()
        .max_by(|a, b| {
            (a.evaluation.accuracy, -a.evaluation.loss)
                .partial_cmp(&(b.evaluation.accuracy, -b.evaluation.loss))
                .expect("finite metrics")
        })
        .expect("at least one width");
    println!(
        "best: sigma_rel {:.3} at {:.2}% (loss {:.4})",
        best.sigma_rel,
        100.0 * best.evaluation.accuracy,
        best.evaluation.loss
    );
    let plot = cli.plot.clone().unwrap_or_else(|| {
        cli.snapshots
            .parent()
            .unwrap_or(&cli.snapshots)
            .join("posthoc.svg")
    });
    let title = format!(
        "MNIST, post-hoc EMA at step {} ({} validation digits)",
        step.unwrap_or(0),
        valid.len()
    );
    plot_sweep(&plot, &rows, &title)?;
    println!("plot: {}", plot.display());
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
