//! EDM (Karras et al. 2022) on the shipped digits, with the live weights, an EMA and post-hoc
//! EMA scored by FID: where weight averaging matters most.
//!
//! ```text
//! cargo run --release --example edm -- --post-hoc-ema          # ≈ 14 min of training on 2 cores, then scoring
//! cargo run --release --example edm -- --ema --steps 500      # shorter, EMA only
//! cargo run --release --example edm -- --quick --post-hoc-ema # seconds: a smoke test
//! ```
//!
//! Writes `samples.png` (live / EMA / best post-hoc, the same noise), `fid_vs_sigma_rel.svg`
//! and `results.json` into `--out` (`runs/edm`); a run in the same folder resumes from its
//! checkpoint.

use clap::Parser;

fn main() {
    let cli = burn_ema_edm::cli::Cli::parse();
    match burn_ema_edm::cli::run(&cli) {
        Ok(report) => {
            if let Some(eval) = &report.evaluation {
                println!(
                    "FID (lower is better), {} samples against held-out digits:",
                    cli.fid_samples
                );
                println!("  live weights   {:.3}", eval.live.fid);
                if let Some(ema) = &eval.ema {
                    println!("  EMA            {:.3}", ema.fid);
                }
                if let Some(best) = eval.best_post_hoc() {
                    println!(
                        "  best post-hoc  {:.3} (σ_rel {:.3})",
                        best.fid,
                        best.sigma_rel.unwrap_or(0.0)
                    );
                }
                println!(
                    "  real digits    {:.3} (training vs held-out)",
                    eval.fid_train_vs_held_out
                );
            }
            println!(
                "trained {} steps in {:.0} s, the average's update {:.1}% of it; results in {}",
                report.steps_run,
                report.train_seconds,
                100.0 * report.average_share,
                cli.out.display()
            );
        }
        Err(err) => {
            eprintln!("edm: {err}");
            std::process::exit(1);
        }
    }
}
