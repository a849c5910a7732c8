//! DQN on CartPole with a target network kept by an `EmaModule`: soft (Polyak) or hard updates.
//!
//! ```text
//! cargo run --release --example dqn_cartpole                          # soft, τ = 0.005
//! cargo run --release --example dqn_cartpole -- --target-hard-every 500
//! cargo run --release --example dqn_cartpole -- --compare --seeds 5   # soft, hard, no target
//! ```
//!
//! Writes `returns.csv` (every episode's return) and `returns.svg` (the curves, averaged over
//! the seeds) to `--artifacts`. The agent is in `crates/burn-ema-rl/src/dqn.rs`.

use std::path::PathBuf;
use std::process::ExitCode;

use burn_ema_rl::dqn::{DqnReport, DqnSettings, TargetUpdate, train};
use burn_ema_rl::plot::{WINDOW, plot, recent_return};
use clap::Parser;

#[derive(Parser)]
#[command(about = "DQN on CartPole, its target network an EMA of the online one")]
struct Cli {
    /// Polyak coefficient of the soft target update (`target ← τ·online + (1 − τ)·target` after
    /// every optimizer step), in (0, 1]; 1 means no target network.
    #[arg(long, default_value_t = 0.005, conflicts_with = "target_hard_every")]
    target_tau: f64,
    /// Copy the online network into the target every N optimizer steps instead.
    #[arg(long)]
    target_hard_every: Option<u64>,
    /// Runs soft (τ = 0.005), hard (every 500) and no target (τ = 1), and plots them together.
    #[arg(long, conflicts_with_all = ["target_tau", "target_hard_every"])]
    compare: bool,
    /// Environment steps per run.
    #[arg(long, default_value_t = 100_000)]
    steps: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Runs per target update, with seeds `seed`, `seed + 1`, …
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Where the CSV and the plot go.
    #[arg(long, default_value = "artifacts/dqn")]
    artifacts: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !(cli.target_tau > 0.0 && cli.target_tau <= 1.0) {
        eprintln!(
            "error: --target-tau must lie in (0, 1], got {}",
            cli.target_tau
        );
        return ExitCode::from(2);
    }
    if cli.seeds == 0 || cli.steps == 0 {
        eprintln!("error: --seeds and --steps must be at least 1");
        return ExitCode::from(2);
    }
    if cli.target_hard_every == Some(0) {
        eprintln!("error: --target-hard-every must be at least 1");
        return ExitCode::from(2);
    }
    let targets = if cli.compare {
        vec![
            TargetUpdate::Soft(0.005),
            TargetUpdate::Hard(500),
            TargetUpdate::Soft(1.0),
        ]
    } else if let Some(every) = cli.target_hard_every {
        vec![TargetUpdate::Hard(every)]
    } else {
        vec![TargetUpdate::Soft(cli.target_tau)]
    };
    let mut groups: Vec<(TargetUpdate, Vec<DqnReport>)> = Vec::new();
    for target in targets {
        let mut runs = Vec::new();
        for seed in cli.seed..cli.seed + cli.seeds {
            let mut settings = DqnSettings::new(target);
            settings.steps = cli.steps;
            settings.seed = seed;
            match train(&settings) {
                Ok(report) => {
                    println!(
                        "{:<24} seed {seed}: {:>4} episodes, return of the last {WINDOW}: \
                         {:>6.1} ({:.0} s)",
                        target.label(),
                        report.episodes.len(),
                        recent_return(&report, cli.steps),
                        report.seconds
                    );
                    runs.push(report);
                }
                Err(err) => {
                    eprintln!("error: {err}");
                    return ExitCode::FAILURE;
                }
            }
        }
        groups.push((target, runs));
    }
    println!(
        "\nreturn of the last {WINDOW} episodes, mean over seeds (min–max), at 50% and 100% of the steps:"
    );
    for (target, runs) in &groups {
        let at = |step: u64| {
            let r: Vec<f32> = runs.iter().map(|r| recent_return(r, step)).collect();
            let mean = r.iter().sum::<f32>() / r.len() as f32;
            let (lo, hi) = r
                .iter()
                .fold((f32::MAX, f32::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            format!("{mean:>6.1} ({lo:.0}–{hi:.0})")
        };
        println!(
            "{:<24} {}   {}",
            target.label(),
            at(cli.steps / 2),
            at(cli.steps)
        );
    }
    if let Err(err) = write(&cli.artifacts, &groups, cli.steps) {
        eprintln!("error: writing to {}: {err}", cli.artifacts.display());
        return ExitCode::FAILURE;
    }
    println!(
        "wrote {0}/returns.csv and {0}/returns.svg",
        cli.artifacts.display()
    );
    ExitCode::SUCCESS
}

fn write(
    dir: &std::path::Path,
    groups: &[(TargetUpdate, Vec<DqnReport>)],
    steps: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let mut csv = String::from("target,seed_run,episode,step,return\n");
    for (target, runs) in groups {
        for (k, run) in runs.iter().enumerate() {
            for (i, e) in run.episodes.iter().enumerate() {
                csv += &format!(
                    "{},{},{},{},{}\n",
                    target.label(),
                    k,
                    i + 1,
                    e.step,
                    e.reward
                );
            }
        }
    }
    std::fs::write(dir.join("returns.csv"), csv)?;
    plot(&dir.join("returns.svg"), groups, steps)
}
