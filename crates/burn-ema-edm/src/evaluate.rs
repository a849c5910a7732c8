//! Scoring a trained run: samples of the live weights, the EMA and post-hoc EMA's sweep of
//! synthesized widths, from the same noise, each scored by FID against the held-out digits.

use std::time::Instant;

use burn::module::Module;
use burn::prelude::*;
use burn_ema::{MovingAverage, PostHocEma, Width};
use burn_ema_mnist::data::PIXELS;
use serde::Serialize;

use crate::data::Digits;
use crate::error::EdmError;
use crate::features::FeatureExtractor;
use crate::fid::frechet_distance;
use crate::sample::generate;
use crate::sampler::HeunConfig;
use crate::train::Averager;
use crate::unet::UNet;

/// How a run is scored.
#[derive(Clone, Debug)]
pub struct EvalSettings {
    /// Samples per set of weights (and held-out digits they are compared with).
    pub fid_samples: usize,
    /// The sampler.
    pub heun: HeunConfig,
    /// The σ_rel values post-hoc EMA synthesizes and scores.
    pub sweep: Vec<f64>,
    /// The seed of the sampling noise (the same for every set of weights).
    pub seed: u64,
}

/// One set of weights, scored.
#[derive(Clone, Debug, Serialize)]
pub struct Scored {
    /// `live`, `ema` or `post-hoc`.
    pub weights: String,
    /// The relative width of the average, if it is one with a known width.
    pub sigma_rel: Option<f64>,
    /// FID against the held-out digits.
    pub fid: f64,
    /// Seconds to sample and score.
    pub seconds: f64,
    /// The first 20 samples (two of each digit for a class-conditional net), for the grid.
    #[serde(skip)]
    pub grid: Vec<f32>,
}

/// Every score of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    /// The live weights.
    pub live: Scored,
    /// The EMA kept during training (post-hoc EMA's tracked σ_rel 0.10 profile).
    pub ema: Option<Scored>,
    /// Post-hoc EMA's sweep, by σ_rel.
    pub sweep: Vec<Scored>,
    /// The classifier's accuracy on the held-out digits.
    pub classifier_accuracy: f64,
    /// FID of held-out digits against training digits: the floor a perfect model reaches.
    pub fid_train_vs_held_out: f64,
}

impl Evaluation {
    /// The sweep's best σ_rel.
    pub fn best_post_hoc(&self) -> Option<&Scored> {
        self.sweep.iter().min_by(|a, b| a.fid.total_cmp(&b.fid))
    }
}

/// The classes sampled: 0 to 9 in turn.
fn labels(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 10) as u8).collect()
}

struct Scorer<'a> {
    extractor: &'a FeatureExtractor,
    reference: crate::fid::Gaussian,
    settings: &'a EvalSettings,
    device: Device,
}

impl Scorer<'_> {
    fn score(&self, weights: &str, sigma_rel: Option<f64>, net: &UNet) -> Scored {
        let started = Instant::now();
        let samples = generate(
            net,
            &labels(self.settings.fid_samples),
            self.settings.seed,
            &self.settings.heun,
            &self.device,
        );
        let stats = self.extractor.statistics(&samples, &self.device);
        Scored {
            weights: weights.into(),
            sigma_rel,
            fid: frechet_distance(&stats, &self.reference),
            seconds: started.elapsed().as_secs_f64(),
            grid: samples[..20.min(samples.len() / PIXELS) * PIXELS].to_vec(),
        }
    }
}

/// Scores the live weights, the average and the post-hoc sweep of a run; `report` is told each
/// score as it comes.
pub fn evaluate(
    averager: &Averager,
    extractor: &FeatureExtractor,
    train: &Digits,
    held_out: &Digits,
    s: &EvalSettings,
    device: &Device,
    mut report: impl FnMut(&Scored),
) -> Result<Evaluation, EdmError> {
    let n = s.fid_samples.min(held_out.len());
    if n < 2 {
        return Err(EdmError::Settings("FID needs at least 2 samples".into()));
    }
    let held = &held_out.images[..n * PIXELS];
    let reference = extractor.statistics(held, device);
    let scorer = Scorer {
        extractor,
        reference: reference.clone(),
        settings: &EvalSettings {
            fid_samples: n,
            ..s.clone()
        },
        device: device.clone(),
    };
    let floor = frechet_distance(
        &extractor.statistics(&train.images[..n * PIXELS], device),
        &reference,
    );
    let live = scorer.score("live", None, &averager.model().valid());
    report(&live);
    let ema = averager.averaged()?.map(|net| {
        let sigma_rel = averager
            .post_hoc()
            .map(|_| crate::train::TRACKED_SIGMA_RELS[1]);
        let scored = scorer.score("ema", sigma_rel, &net);
        report(&scored);
        scored
    });
    let mut sweep = Vec::new();
    if let Some(post_hoc) = averager.post_hoc() {
        for &sigma_rel in &s.sweep {
            let net = synthesize(post_hoc, sigma_rel)?;
            let scored = scorer.score("post-hoc", Some(sigma_rel), &net);
            report(&scored);
            sweep.push(scored);
        }
    }
    Ok(Evaluation {
        live,
        ema,
        sweep,
        classifier_accuracy: extractor.accuracy(held_out, device),
        fid_train_vs_held_out: floor,
    })
}

/// Post-hoc EMA's average of width `sigma_rel` at the last snapshot.
fn synthesize(post_hoc: &PostHocEma<UNet>, sigma_rel: f64) -> Result<UNet, EdmError> {
    let template = post_hoc.model().valid();
    Ok(post_hoc
        .posthoc_snapshots()
        .synthesize(&template, Width::SigmaRel(sigma_rel), None)?)
}
