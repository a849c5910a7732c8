//! The command line of `examples/edm.rs`, and the run it starts.

use std::path::PathBuf;

use burn::prelude::*;
use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::data;
use crate::error::EdmError;
use crate::evaluate::{EvalSettings, Evaluation, evaluate};
use crate::features::{FeatureExtractor, default_classifier_path};
use crate::pictures::{plot_sweep, write_grid};
use crate::sampler::HeunConfig;
use crate::train::{Averaging, TrainSettings, train};
use crate::unet::UNetConfig;

/// Where the run computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
pub enum Backend {
    /// Burn's CPU backend.
    Flex,
    /// wgpu (Vulkan, Metal, DX12): build with `--features burn-ema-edm/wgpu`.
    Wgpu,
}

/// Trains EDM (Karras et al. 2022) on the shipped digits and scores live, EMA and post-hoc EMA
/// weights by FID.
#[derive(Parser, Debug, Clone)]
#[command(name = "edm", about)]
pub struct Cli {
    /// Keep EDM2's power-function EMA (σ_rel 0.10, or `--ema-sigma-rel`).
    #[arg(long)]
    pub ema: bool,
    /// The EMA's relative width.
    #[arg(long, default_value_t = 0.10)]
    pub ema_sigma_rel: f64,
    /// A classic EMA of this constant decay instead of the power function.
    #[arg(long, conflicts_with = "post_hoc_ema")]
    pub ema_decay: Option<f64>,
    /// Post-hoc EMA: snapshots of σ_rel 0.05 and 0.10, then a sweep of synthesized widths,
    /// each scored (its σ_rel 0.10 profile is the run's EMA).
    #[arg(long)]
    pub post_hoc_ema: bool,
    /// The synthesized widths of the sweep.
    #[arg(long, value_delimiter = ',', default_values_t = [0.02, 0.05, 0.08, 0.12, 0.17, 0.25])]
    pub sweep: Vec<f64>,
    /// Score only the live weights and the EMA (no sweep; snapshots are still written, for
    /// `--sweep` in a later run of the same folder).
    #[arg(long)]
    pub no_sweep: bool,
    /// Optimizer steps.
    #[arg(long, default_value_t = 3000)]
    pub steps: u64,
    /// Digits per step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// The run's seed (weights, batches, noise); the sampling noise is the same for every run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Channels of the U-Net at 28×28.
    #[arg(long, default_value_t = 16)]
    pub channels: usize,
    /// An unconditional model (by default it is told the digit's class).
    #[arg(long)]
    pub unconditional: bool,
    /// Samples per FID (and held-out digits they are compared with, at most 2,000).
    #[arg(long, default_value_t = 2000)]
    pub fid_samples: usize,
    /// Heun steps of the sampler (2N − 1 network evaluations).
    #[arg(long, default_value_t = 18)]
    pub heun_steps: usize,
    /// Steps between post-hoc snapshots (default: an eighth of the run).
    #[arg(long)]
    pub snapshot_every: Option<u64>,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 250)]
    pub checkpoint_every: u64,
    /// Where checkpoints, snapshots, pictures and results go; a run there resumes.
    #[arg(long, default_value = "runs/edm")]
    pub out: PathBuf,
    /// The digits.
    #[arg(long, default_value_os_t = burn_ema_mnist::data::default_data_dir())]
    pub data: PathBuf,
    /// FID's classifier (trained and written there when missing).
    #[arg(long, default_value_os_t = default_classifier_path())]
    pub classifier: PathBuf,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = Backend::Flex)]
    pub backend: Backend,
    /// A tiny run, for tests: 8 steps of a narrow net, 20 samples, 2 Heun steps.
    #[arg(long)]
    pub quick: bool,
    /// Stop after this many steps (checkpointing there), as an interrupted run would.
    #[arg(long, hide = true)]
    pub stop_after: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// What a run wrote into `results.json`.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// The command line's settings.
    pub steps: u64,
    /// Digits per step.
    pub batch_size: usize,
    /// The seed.
    pub seed: u64,
    /// The averaging: `live`, `ema`, `post-hoc`.
    pub averaging: String,
    /// Seconds of training in this invocation (steps run: `steps_run`).
    pub train_seconds: f64,
    /// Steps run in this invocation.
    pub steps_run: u64,
    /// Of the training time, the share spent in the average's update.
    pub average_share: f64,
    /// The mean loss of the last 100 steps.
    pub final_loss: f64,
    /// The scores (none for an interrupted run).
    pub evaluation: Option<Evaluation>,
}

impl Cli {
    fn train_settings(&self) -> TrainSettings {
        let quick = self.quick;
        let steps = if quick { 8 } else { self.steps };
        let averaging = match (self.ema || self.post_hoc_ema, self.ema_decay) {
            (_, Some(decay)) => Averaging::Decay(decay),
            (true, None) => Averaging::Power {
                sigma_rel: self.ema_sigma_rel,
            },
            (false, None) => Averaging::Live,
        };
        TrainSettings {
            steps,
            batch_size: if quick { 8 } else { self.batch_size },
            lr: self.lr,
            seed: self.seed,
            unet: UNetConfig::new()
                .with_channels(if quick { 8 } else { self.channels })
                .with_embedding(if quick { 32 } else { 128 })
                .with_class_conditional(!self.unconditional),
            averaging,
            post_hoc: self.post_hoc_ema,
            snapshot_every: self.snapshot_every.unwrap_or(if quick {
                4
            } else {
                (steps / 8).max(1)
            }),
            checkpoint_every: if quick { 4 } else { self.checkpoint_every },
            out: self.out.clone(),
            progress: !self.no_progress,
            stop_after: self.stop_after,
        }
    }

    fn eval_settings(&self) -> EvalSettings {
        EvalSettings {
            fid_samples: if self.quick { 20 } else { self.fid_samples },
            heun: HeunConfig {
                steps: if self.quick { 2 } else { self.heun_steps },
                ..HeunConfig::default()
            },
            sweep: match (self.no_sweep, self.quick) {
                (true, _) => Vec::new(),
                (false, true) => vec![0.05, 0.15],
                (false, false) => self.sweep.clone(),
            },
            seed: 1_000_003,
        }
    }

    fn device(&self) -> Result<Device, EdmError> {
        match self.backend {
            Backend::Flex => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Ok(Device::wgpu(Default::default())),
            #[cfg(not(feature = "wgpu"))]
            Backend::Wgpu => Err(EdmError::Settings(
                "this build has no wgpu: build with `--features burn-ema-edm/wgpu`".into(),
            )),
        }
    }
}

/// Runs the command line: trains (or resumes), then samples, scores and draws, writing
/// `results.json`, `samples.png` and (with post-hoc EMA) `fid_vs_sigma_rel.svg` into `--out`.
pub fn run(cli: &Cli) -> Result<RunReport, EdmError> {
    let device = cli.device()?;
    let s = cli.train_settings();
    let (train_digits, held_out) = data::load(&cli.data)?;
    let trained = train(&s, &train_digits, &device.clone().autodiff())?;
    let averaging = if s.post_hoc {
        "post-hoc"
    } else {
        match s.averaging {
            Averaging::Live => "live",
            _ => "ema",
        }
    };
    let mut report = RunReport {
        steps: s.steps,
        batch_size: s.batch_size,
        seed: s.seed,
        averaging: averaging.into(),
        train_seconds: trained.train_time.as_secs_f64(),
        steps_run: trained.steps_run,
        average_share: trained.average_time.as_secs_f64()
            / trained.train_time.as_secs_f64().max(1e-9),
        final_loss: trained.final_loss,
        evaluation: None,
    };
    let finished = trained.resumed_from + trained.steps_run >= s.steps;
    if finished {
        let extractor = FeatureExtractor::load_or_train(&cli.classifier, &train_digits, &device)?;
        let eval = evaluate(
            &trained.averager,
            &extractor,
            &train_digits,
            &held_out,
            &cli.eval_settings(),
            &device,
            |scored| {
                let width = scored
                    .sigma_rel
                    .map(|s| format!(" σ_rel {s:.3}"))
                    .unwrap_or_default();
                eprintln!(
                    "FID {:>8}{width}: {:.3} ({:.0} s)",
                    scored.weights, scored.fid, scored.seconds
                );
            },
        )?;
        let mut bands = vec![eval.live.grid.as_slice()];
        bands.extend(eval.ema.as_ref().map(|e| e.grid.as_slice()));
        bands.extend(eval.best_post_hoc().map(|e| e.grid.as_slice()));
        write_grid(&cli.out.join("samples.png"), &bands)?;
        if !eval.sweep.is_empty() {
            plot_sweep(&cli.out.join("fid_vs_sigma_rel.svg"), &eval)?;
        }
        report.evaluation = Some(eval);
    }
    let path = cli.out.join("results.json");
    let json = serde_json::to_string_pretty(&report).expect("a report serializes");
    std::fs::write(&path, json).map_err(|e| EdmError::io(&path, e))?;
    Ok(report)
}
