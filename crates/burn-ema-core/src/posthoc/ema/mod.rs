//! [`PostHocEma`]: the training side of post-hoc EMA — power-function averages and their
//! snapshots.

use std::path::{Path, PathBuf};

use burn::module::Module;

use crate::average::MovingAverage;
use crate::config::EmaConfig;
use crate::error::EmaError;
use crate::io::{EmaFile, save_weights};
use crate::multi_ema::MultiEma;
use crate::posthoc::config::PostHocConfig;
use crate::posthoc::store::{
    INDEX, Index, ProfileInfo, SUPERSEDED, SnapshotInfo, remove_stale_scratch, snapshot_file_name,
    snapshot_path, write_snapshot,
};
use crate::posthoc::synthesize::PostHocSnapshots;

mod module_impl;

/// Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
/// Models"; NVlabs/edm2): during training, power-function EMAs of a few relative widths (EDM2:
/// 0.05 and 0.10), and a snapshot of each every few thousand steps; after training, the EMA of
/// *any* width, synthesized from the snapshots ([`PostHocSnapshots`]) — so the EMA length is
/// chosen by evaluation, not guessed before training.
///
/// The averages are a [`MultiEma`] (one pass over the model per update); the power-function
/// decay is EDM2's exact `(1 - Δt/t)^(gamma + 1)`. Snapshots go into a directory, with an
/// `index.json` listing them; every file is written atomically, and a run resumed from a
/// checkpoint carries on in the same directory without losing or duplicating a snapshot (see
/// [`new`](Self::new)).
///
/// ```
/// # use burn_ema_core as burn_ema;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::prelude::*;
/// use burn_ema::{MovingAverage, PostHocConfig, PostHocEma, Width};
///
/// let device = Device::flex();
/// let model: Linear = LinearConfig::new(4, 2).init(&device);
/// # let dir = std::env::temp_dir().join(format!("burn-ema-doc-posthoc-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// let mut ema = PostHocEma::new(model, PostHocConfig::new().with_snapshot_every(10), &dir)?;
/// for _ in 0..30 {
///     // ... an optimizer step on ema.model_mut(), then:
///     ema.update()?; // a snapshot of each profile at steps 10, 20, 30
/// }
/// assert_eq!(ema.snapshots().len(), 6);
/// // Any width, from the snapshots:
/// let template: Linear = LinearConfig::new(4, 2).init(&device);
/// let ema_007: Linear =
///     ema.posthoc_snapshots().synthesize(&template, Width::SigmaRel(0.07), None)?;
/// # let _ = ema_007;
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), burn_ema::EmaError>(())
/// ```
///
/// It is a Burn [`Module`] (its record is its `MultiEma`'s), so a checkpoint of it resumes the
/// averages; with feature `train` Burn's Learner trains it, updates the averages and saves
/// snapshots after each step, and validates with the first profile.
pub struct PostHocEma<M: Module> {
    emas: MultiEma<M>,
    config: PostHocConfig,
    dir: PathBuf,
    index: Index,
}

impl<M: Module> PostHocEma<M> {
    /// Tracks `config`'s profiles of `model`, saving snapshots into `dir` (created if needed).
    ///
    /// A directory that already holds snapshots of the same setup (profiles, tensors averaged,
    /// element type) is carried on: after a crash, build the `PostHocEma` again, load the
    /// checkpoint (its record), and keep training. Snapshot files that the crash left out of
    /// the index are adopted; the first snapshot written replaces any at its step, and those
    /// after it leave the index for `superseded/` (the resumed run writes them again; nothing
    /// is deleted, in case the directory held an earlier run). A directory holding another
    /// setup's snapshots is refused.
    pub fn new(model: M, config: PostHocConfig, dir: impl AsRef<Path>) -> Result<Self, EmaError> {
        let gammas = config.gammas()?;
        let emas = MultiEma::new(model, config.ema_configs()?)?;
        let averaged = emas.averaged_paths();
        let profiles = config
            .sigma_rels
            .iter()
            .zip(gammas)
            .map(|(&sigma_rel, gamma)| ProfileInfo { sigma_rel, gamma })
            .collect();
        let fresh = Index::new(profiles, config.snapshot_dtype, averaged);
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| EmaError::io(&dir, "write", &e))?;
        let index = match Index::read(&dir)? {
            Some(mut found) => {
                let same = found.profiles == fresh.profiles
                    && found.averaged == fresh.averaged
                    && found.dtype == fresh.dtype;
                if !same {
                    return Err(EmaError::invalid(
                        "dir",
                        format!(
                            "{} holds snapshots of another setup (profiles {:?}, {:?}, {} \
                             averaged tensors); use a new directory",
                            dir.display(),
                            found
                                .profiles
                                .iter()
                                .map(|p| p.sigma_rel)
                                .collect::<Vec<_>>(),
                            found.dtype,
                            found.averaged.len()
                        ),
                    ));
                }
                remove_stale_scratch(&dir);
                if found.adopt_unlisted(&dir)? > 0 {
                    found.write(&dir)?;
                }
                found
            }
            None => {
                fresh.write(&dir)?;
                fresh
            }
        };
        Ok(Self {
            emas,
            config,
            dir,
            index,
        })
    }

    /// Saves a snapshot of every profile as of the last update (e.g. at the end of training,
    /// between two regular snapshots). Replaces snapshots at that step; those after it leave
    /// the index for `superseded/`.
    pub fn snapshot(&mut self) -> Result<(), EmaError> {
        let step = self.emas.num_updates();
        if step == 0 {
            return Err(EmaError::invalid(
                "snapshot",
                "comes before the first update: a profile at step 0 has no width",
            ));
        }
        let infos: Vec<SnapshotInfo> = self
            .index
            .profiles
            .iter()
            .enumerate()
            .map(|(profile, p)| SnapshotInfo {
                step,
                profile,
                sigma_rel: p.sigma_rel,
                gamma: p.gamma,
                file: snapshot_file_name(step, profile),
            })
            .collect();
        for (k, info) in infos.iter().enumerate() {
            let shadow = self.emas.shadow_of(k)?;
            write_snapshot(&self.dir, shadow, info, self.index.dtype)?;
        }
        let mut index = self.index.clone();
        let dropped: Vec<SnapshotInfo> = index
            .snapshots
            .iter()
            .filter(|s| s.step > step)
            .cloned()
            .collect();
        index.snapshots.retain(|s| s.step < step);
        for info in infos {
            index.insert(info);
        }
        index.write(&self.dir)?;
        self.index = index;
        if !dropped.is_empty() {
            self.set_aside(&dropped, step);
        }
        Ok(())
    }

    /// Moves snapshots that the index no longer lists into `superseded/` (a directory reused
    /// for a new run must not lose the old run's files), and says so.
    fn set_aside(&self, dropped: &[SnapshotInfo], step: u64) {
        let aside = self.dir.join(SUPERSEDED);
        log::warn!(
            "burn-ema: post-hoc EMA: snapshot at step {step}: {} snapshots after it (steps {} to \
             {}) belong to a run resumed from an earlier checkpoint, or to an earlier run in \
             this directory; moved to {} (the resumed run writes them again)",
            dropped.len(),
            dropped[0].step,
            dropped[dropped.len() - 1].step,
            aside.display()
        );
        for info in dropped {
            // Listed nowhere any more: a file that cannot be moved is only clutter.
            let moved = std::fs::create_dir_all(&aside).and_then(|()| {
                std::fs::rename(snapshot_path(&self.dir, info), aside.join(&info.file))
            });
            if let Err(e) = moved {
                log::warn!("burn-ema: post-hoc EMA: could not move {}: {e}", info.file);
            }
        }
    }

    /// Saves profile `k`'s average as of the last update in `format`, as
    /// [`MultiEma::save`](crate::MultiEma::save) does: [`EmaFile::Shadow`] (the bare model's
    /// burnpack file, `.bpk` added when `path` has no extension) or
    /// [`EmaFile::ShadowSafetensors`], atomically. Returns the path written. Snapshots for a
    /// synthesis are [`snapshot`](Self::snapshot)'s; other formats are refused with
    /// [`EmaError::InvalidConfig`] (field `format`).
    pub fn save(
        &self,
        k: usize,
        path: impl AsRef<Path>,
        format: EmaFile,
    ) -> Result<PathBuf, EmaError> {
        let why = "a PostHocEma's state is its Burn record and its snapshot directory";
        save_weights(self.shadow_of(k)?, path.as_ref(), format, why)
    }

    /// The snapshots saved so far, by step, then profile.
    pub fn snapshots(&self) -> &[SnapshotInfo] {
        &self.index.snapshots
    }

    /// The snapshots saved so far, opened for a synthesis (e.g. to evaluate widths during
    /// training).
    pub fn posthoc_snapshots(&self) -> PostHocSnapshots {
        PostHocSnapshots::from_index(self.dir.clone(), self.index.clone())
    }

    /// The snapshot directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The index file of the snapshot directory.
    pub fn index_file(&self) -> PathBuf {
        self.dir.join(INDEX)
    }

    /// The configuration.
    pub fn posthoc_config(&self) -> &PostHocConfig {
        &self.config
    }

    /// The averages.
    pub fn averages(&self) -> &MultiEma<M> {
        &self.emas
    }

    /// The averages, without the snapshot directory.
    pub fn into_averages(self) -> MultiEma<M> {
        self.emas
    }

    /// The live model rewritten by `f` (see `EmaModule::map_model`).
    #[cfg_attr(not(feature = "train"), allow(dead_code))]
    pub(crate) fn map_model(mut self, f: impl FnOnce(M) -> M) -> Self {
        self.emas = self.emas.map_model(f);
        self
    }
}

impl<M: Module> MovingAverage for PostHocEma<M> {
    type Model = M;

    /// Updates every profile as of global step `step` (see
    /// [`MovingAverage::update_with_step`]) and saves their snapshots when the step is a
    /// multiple of `snapshot_every`.
    ///
    /// All or nothing: when the snapshot fails (a full disk), the averages are put back as
    /// they were before the update and the error says why; the same update can be retried.
    /// (On a snapshot step the update therefore writes new tensors instead of updating in
    /// place: the averages before it are kept until the snapshot is written.)
    fn update_with_step(&mut self, step: u64) -> Result<(), EmaError> {
        // A secondary worker of a DDP run holds no averages (the main worker's are the only
        // ones, see `placement.rs`): only the main worker saves snapshots.
        let snapshot_due = self.emas.holds_averages()
            && step > 0
            && step.is_multiple_of(self.config.snapshot_every);
        if !snapshot_due {
            return self.emas.update_with_step(step);
        }
        let before = self.emas.averages.clone();
        self.emas.update_with_step(step)?;
        if let Err(e) = self.snapshot() {
            self.emas.averages = before;
            return Err(e);
        }
        Ok(())
    }

    fn num_updates(&self) -> u64 {
        self.emas.num_updates()
    }

    fn model(&self) -> &M {
        self.emas.model()
    }

    fn model_mut(&mut self) -> &mut M {
        self.emas.model_mut()
    }

    fn num_averages(&self) -> usize {
        self.emas.num_averages()
    }

    /// The average of profile `k` (in the order of `sigma_rels`).
    fn shadow_of(&self, k: usize) -> Result<&M, EmaError> {
        self.emas.shadow_of(k)
    }

    fn config_of(&self, k: usize) -> Result<&EmaConfig, EmaError> {
        self.emas.config_of(k)
    }

    fn last_decay_of(&self, k: usize) -> Result<Option<f64>, EmaError> {
        self.emas.last_decay_of(k)
    }

    fn eval_model(&self) -> &M {
        self.emas.eval_model()
    }
}
