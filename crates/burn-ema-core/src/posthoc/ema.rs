//! [`PostHocEma`]: the training side of post-hoc EMA — power-function averages and their
//! snapshots.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor};
use burn::tensor::Device;

use crate::error::EmaError;
use crate::layout::Rule;
use crate::multi_ema::MultiEma;
use crate::posthoc::config::PostHocConfig;
use crate::posthoc::store::{
    INDEX, Index, ProfileInfo, SUPERSEDED, SnapshotInfo, snapshot_file_name, snapshot_path,
    write_snapshot,
};
use crate::posthoc::synthesize::PostHocSnapshots;

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
/// use burn_ema::{PostHocConfig, PostHocEma, Width};
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
/// let ema_007: Linear = ema.reader().synthesize(&template, Width::SigmaRel(0.07), None)?;
/// # let _ = ema_007;
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), burn_ema::EmaError>(())
/// ```
///
/// It is a Burn [`Module`] (its record is its `MultiEma`'s), so a checkpoint of it resumes the
/// averages; with feature `train` Burn's Learner trains it, updates the averages and saves
/// snapshots after each step, and validates with the first profile.
pub struct PostHocEma<M: Module> {
    pub(crate) emas: MultiEma<M>,
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
        let averaged = emas.averages[0]
            .layout()
            .slots
            .iter()
            .filter(|s| s.rule == Rule::Average)
            .map(|s| s.path.clone())
            .collect();
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

    /// Updates every profile after an optimizer step, at the step after the last one, and
    /// saves their snapshots when the step is a multiple of `snapshot_every`.
    ///
    /// When the update succeeds and the snapshot fails (a full disk), the error says so and the
    /// averages have moved: call [`snapshot`](Self::snapshot) again to retry it.
    pub fn update(&mut self) -> Result<(), EmaError> {
        self.update_with_step(self.emas.averages[0].next_step())
    }

    /// [`update`](Self::update) as of global step `step` (see
    /// [`EmaModule::update_with_step`](crate::EmaModule::update_with_step)).
    pub fn update_with_step(&mut self, step: u64) -> Result<(), EmaError> {
        self.emas.update_with_step(step)?;
        // A secondary worker of a DDP run holds no averages (the main worker's are the only
        // ones, see `placement.rs`): only the main worker saves snapshots.
        let holds_averages = self.emas.averages.iter().all(|a| !a.is_detached());
        if holds_averages && step > 0 && step.is_multiple_of(self.config.snapshot_every) {
            self.snapshot()?;
        }
        Ok(())
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
            let shadow = self.emas.shadow(k).expect("one average per profile");
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

    /// The snapshots saved so far, by step, then profile.
    pub fn snapshots(&self) -> &[SnapshotInfo] {
        &self.index.snapshots
    }

    /// The snapshots saved so far, for a synthesis (e.g. to evaluate widths during training).
    pub fn reader(&self) -> PostHocSnapshots {
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
    pub fn config(&self) -> &PostHocConfig {
        &self.config
    }

    /// The live model.
    pub fn model(&self) -> &M {
        self.emas.model()
    }

    /// The live model, mutably (its structure must stay the same).
    pub fn model_mut(&mut self) -> &mut M {
        self.emas.model_mut()
    }

    /// The average of profile `k` (in the order of `sigma_rels`); `None` when there is none.
    pub fn shadow(&self, k: usize) -> Option<&M> {
        self.emas.shadow(k)
    }

    /// The averages.
    pub fn averages(&self) -> &MultiEma<M> {
        &self.emas
    }

    /// The update counter.
    pub fn num_updates(&self) -> u64 {
        self.emas.num_updates()
    }

    /// The averages, without the snapshot directory.
    pub fn into_averages(self) -> MultiEma<M> {
        self.emas
    }
}

impl<M: Module> Clone for PostHocEma<M> {
    /// A copy that writes into the same directory: let only one of them save snapshots.
    fn clone(&self) -> Self {
        Self {
            emas: self.emas.clone(),
            config: self.config.clone(),
            dir: self.dir.clone(),
            index: self.index.clone(),
        }
    }
}

impl<M: Module> std::fmt::Debug for PostHocEma<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostHocEma")
            .field("sigma_rels", &self.config.sigma_rels)
            .field("dir", &self.dir)
            .field("snapshots", &self.index.snapshots.len())
            .field("averages", &self.emas)
            .finish()
    }
}

impl<M: Module> Module for PostHocEma<M> {
    fn collect_devices(&self, devices: Vec<Device>) -> Vec<Device> {
        self.emas.collect_devices(devices)
    }

    fn fork(mut self, device: &Device) -> Self {
        self.emas = self.emas.fork(device);
        self
    }

    fn to_device(mut self, device: &Device) -> Self {
        self.emas = self.emas.to_device(device);
        self
    }

    fn train(mut self) -> Self {
        self.emas = self.emas.train();
        self
    }

    fn valid(&self) -> Self {
        // Field by field: `..self.clone()` would copy every average a second time.
        Self {
            emas: self.emas.valid(),
            config: self.config.clone(),
            dir: self.dir.clone(),
            index: self.index.clone(),
        }
    }

    fn materialize(mut self) -> Self {
        self.emas = self.emas.materialize();
        self
    }

    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        self.emas.visit(visitor);
    }

    fn map<Mp: ModuleMapper>(mut self, mapper: &mut Mp) -> Self {
        self.emas = self.emas.map(mapper);
        self
    }
}

impl<M: Module + std::fmt::Display> std::fmt::Display for PostHocEma<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "PostHocEma {{ sigma_rels: {:?}, snapshots: {}, dir: {} }}",
            self.config.sigma_rels,
            self.index.snapshots.len(),
            self.dir.display()
        )?;
        write!(f, "{}", self.emas)
    }
}
