//! [`MultiEma`]: several moving averages of one model, updated together.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{DType, Device, Tensor};

use crate::config::EmaConfig;
use crate::ema_module::{EmaModule, new_shadow, put_back, take_averaged};
use crate::error::EmaError;
use crate::io::{Format, export_module};
use crate::layout::Layout;
use crate::schedule::{DecaySchedule, StepAction};
use crate::update::one_minus_decay;
use crate::walk::collect_leaves;

/// One of the averages: its shadow and how it is averaged.
struct Track<M> {
    /// Always `Some` between calls; taken out while it is rewritten (see [`EmaModule`]).
    shadow: Option<M>,
    config: EmaConfig,
    schedule: DecaySchedule,
    layout: Layout,
    last_decay: Option<f64>,
    counter_device: Device,
}

/// Several exponential moving averages of one model, each with its own [`EmaConfig`], updated
/// together.
///
/// Post-hoc EMA (Karras et al. 2024) keeps two power-function averages during training and
/// reconstructs any other width afterwards; comparing decays in one run needs several too.
/// Updating them together reads each parameter once per two shadows: `(1 + 2K)` element
/// accesses per parameter for `K` shadows instead of `3K` (20 bytes instead of 24 per `f32`
/// parameter for two), in one parallel pass over the whole model on the CPU backends.
///
/// Each average behaves exactly like an [`EmaModule`] with the same configuration (the results
/// are the same bits); [`into_emas`](Self::into_emas) turns them into `EmaModule`s to swap,
/// save or export, and [`from_emas`](Self::from_emas) resumes from them.
///
/// ```
/// # use burn_ema_core as burn_ema;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::prelude::*;
/// use burn_ema::{EmaConfig, MultiEma, Warmup};
///
/// let device = Device::flex();
/// let model: Linear = LinearConfig::new(4, 2).init(&device);
/// // The two profiles of post-hoc EMA: relative widths 0.05 and 0.10.
/// let profile = |gamma| EmaConfig::new(1.0).with_warmup(Warmup::PowerFunction { gamma });
/// let mut emas = MultiEma::new(model, vec![profile(16.97), profile(6.94)])?;
/// // ... after each optimizer step:
/// emas.update()?;
/// let narrow: &Linear = emas.shadow(0).expect("two averages");
/// # let _ = narrow;
/// // A snapshot of each average, as post-hoc EMA keeps every few thousand steps:
/// # let dir = std::env::temp_dir().join(format!("burn-ema-posthoc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// emas.save_shadow(0, dir.join("ema-0.05-step-1000.bpk"))?;
/// emas.save_shadow(1, dir.join("ema-0.10-step-1000.bpk"))?;
/// # std::fs::remove_dir_all(&dir).unwrap();
/// // Or as EmaModules, to swap, save the full state or keep training one of them:
/// let [narrow, wide] = <[_; 2]>::try_from(emas.into_emas()).ok().expect("two averages");
/// # let _ = (narrow, wide);
/// # Ok::<(), burn_ema::EmaError>(())
/// ```
pub struct MultiEma<M: Module> {
    model: M,
    tracks: Vec<Track<M>>,
    num_updates: u64,
}

impl<M: Module> MultiEma<M> {
    /// Wraps `model` with one average per configuration, each starting as a copy of its weights.
    ///
    /// Fails on an empty list, an invalid configuration or a model without tensors.
    pub fn new(model: M, configs: Vec<EmaConfig>) -> Result<Self, EmaError> {
        if configs.is_empty() {
            return Err(EmaError::invalid(
                "configs",
                "is empty: give one EmaConfig per average",
            ));
        }
        let tracks = configs
            .into_iter()
            .map(|config| {
                let (shadow, layout, counter_device) = new_shadow(&model, &config)?;
                Ok(Track {
                    shadow: Some(shadow),
                    schedule: DecaySchedule::new(&config),
                    config,
                    layout,
                    last_decay: None,
                    counter_device,
                })
            })
            .collect::<Result<_, EmaError>>()?;
        Ok(Self {
            model,
            tracks,
            num_updates: 0,
        })
    }

    /// Updates every average after an optimizer step, advancing the update counter by one (see
    /// [`EmaModule::update`]).
    pub fn update(&mut self) -> Result<(), EmaError> {
        self.update_with_step(self.num_updates + 1)
    }

    /// Updates every average as of global step `step`, and sets the update counter to `step`
    /// (see [`EmaModule::update_with_step`]). On error nothing changes.
    pub fn update_with_step(&mut self, step: u64) -> Result<(), EmaError> {
        let decays: Vec<Option<f64>> = self
            .tracks
            .iter()
            .map(|t| match t.schedule.action(step) {
                StepAction::Skip => None,
                StepAction::Copy => Some(0.0),
                StepAction::Average(decay) => Some(decay),
            })
            .collect();
        if decays.iter().all(Option::is_none) {
            self.num_updates = step;
            return Ok(());
        }
        // `valid()` syncs buffers that `RunningState` may hold back by one update.
        let live = collect_leaves(&self.model.valid());
        for (track, decay) in self.tracks.iter().zip(&decays) {
            if decay.is_some() {
                track.layout.check(&live)?;
            }
        }
        let live: Vec<_> = live.into_iter().map(|l| Some(l.value)).collect();

        // Pass one over every shadow; then the tensors taken out, grouped by parameter (and
        // shadow type), so the shadows of one parameter share one read of it.
        let mut groups: HashMap<(usize, DType), usize> = HashMap::new();
        let mut owners: Vec<(usize, Vec<usize>)> = Vec::new();
        let mut entries: Vec<(Vec<Tensor<1>>, Tensor<1>, Vec<f64>)> = Vec::new();
        for (k, (track, decay)) in self.tracks.iter_mut().zip(&decays).enumerate() {
            let Some(decay) = *decay else { continue };
            let shadow = track.shadow.take().expect("present between calls");
            let (shadow, batch) = take_averaged(shadow, &track.layout, live.clone(), decay);
            track.shadow = Some(shadow);
            for (slot, s, value) in batch {
                let weight = one_minus_decay(decay, s.dtype());
                let group = *groups.entry((slot, s.dtype())).or_insert_with(|| {
                    owners.push((slot, Vec::new()));
                    entries.push((Vec::new(), value, Vec::new()));
                    entries.len() - 1
                });
                owners[group].1.push(k);
                entries[group].0.push(s);
                entries[group].2.push(weight);
            }
        }
        let mut updated: Vec<Vec<(usize, Tensor<1>)>> = vec![Vec::new(); self.tracks.len()];
        let results = burn_ema_kernels::update_multi(entries);
        for ((slot, ks), tensors) in owners.into_iter().zip(results) {
            for (k, t) in ks.into_iter().zip(tensors) {
                updated[k].push((slot, t));
            }
        }
        for ((track, decay), updated) in self.tracks.iter_mut().zip(&decays).zip(updated) {
            if decay.is_none() {
                continue;
            }
            let shadow = track.shadow.take().expect("present between calls");
            track.shadow = Some(put_back(shadow, &track.layout, updated));
            track.last_decay = *decay;
        }
        self.num_updates = step;
        Ok(())
    }

    /// The live (trained) model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The live model, mutably, e.g. to step it with an optimizer. Its structure must stay the
    /// same: the next [`update`](Self::update) checks it.
    pub fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }

    /// The number of averages.
    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    /// Always `false`: a `MultiEma` has at least one average.
    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    /// The shadow weights of average `k` (in the order of the configurations), a plain module
    /// in evaluation mode; `None` when there is no average `k`.
    pub fn shadow(&self, k: usize) -> Option<&M> {
        self.tracks.get(k).and_then(|t| t.shadow.as_ref())
    }

    /// Saves the shadow weights of average `k` as the bare model's burnpack file (`.bpk` added
    /// when `path` has no extension), atomically, as [`EmaModule::save_shadow`] does: Burn's
    /// own `load_file` loads it into the plain model. Post-hoc EMA saves such snapshots of each
    /// average every few thousand steps. Returns the path written.
    pub fn save_shadow(&self, k: usize, path: impl AsRef<Path>) -> Result<PathBuf, EmaError> {
        let shadow = self.shadow(k).ok_or(EmaError::NoSuchAverage {
            index: k,
            len: self.len(),
        })?;
        export_module(shadow, path.as_ref(), Format::Burnpack, "bpk")
    }

    /// The configuration of average `k`.
    pub fn config(&self, k: usize) -> Option<&EmaConfig> {
        self.tracks.get(k).map(|t| &t.config)
    }

    /// The update counter (see [`EmaModule::num_updates`]).
    pub fn num_updates(&self) -> u64 {
        self.num_updates
    }

    /// The decay the most recent update applied to average `k` (see
    /// [`EmaModule::current_decay`]).
    pub fn current_decay(&self, k: usize) -> Option<f64> {
        self.tracks.get(k).map(|t| {
            t.last_decay.unwrap_or_else(|| {
                let step = self.num_updates + 1;
                t.schedule.action(step).decay().unwrap_or(t.config.decay)
            })
        })
    }

    /// One [`EmaModule`] per average, in the order of the configurations, each holding (a
    /// handle to) the live model: to swap, save, export or keep training with one of them.
    pub fn into_emas(self) -> Vec<EmaModule<M>> {
        let model = self.model;
        let num_updates = self.num_updates;
        self.tracks
            .into_iter()
            .map(|t| EmaModule {
                model: model.clone(),
                shadow: t.shadow,
                config: t.config,
                schedule: t.schedule,
                layout: t.layout,
                num_updates,
                last_decay: t.last_decay,
                swapped: None,
                counter_device: t.counter_device,
            })
            .collect()
    }

    /// Gathers `EmaModule`s of one model (e.g. loaded from files) into a `MultiEma`, keeping the
    /// first one's live model; the inverse of [`into_emas`](Self::into_emas).
    ///
    /// Fails on an empty list, a swapped `EmaModule`, update counters that differ, or a shadow
    /// whose structure does not match the first one's model.
    pub fn from_emas(emas: Vec<EmaModule<M>>) -> Result<Self, EmaError> {
        let Some(first) = emas.first() else {
            return Err(EmaError::invalid(
                "emas",
                "is empty: give one EmaModule per average",
            ));
        };
        let num_updates = first.num_updates;
        let live = collect_leaves(&first.model.valid());
        for ema in &emas {
            if ema.is_swapped() {
                return Err(EmaError::Swapped {
                    operation: "MultiEma::from_emas",
                });
            }
            if ema.num_updates != num_updates {
                return Err(EmaError::invalid(
                    "num_updates",
                    format!(
                        "must be the same for every average, got {num_updates} and {}",
                        ema.num_updates
                    ),
                ));
            }
            ema.layout.check(&live)?;
        }
        let mut model = None;
        let tracks = emas
            .into_iter()
            .map(|ema| {
                model.get_or_insert(ema.model);
                Track {
                    shadow: ema.shadow,
                    config: ema.config,
                    schedule: ema.schedule,
                    layout: ema.layout,
                    last_decay: ema.last_decay,
                    counter_device: ema.counter_device,
                }
            })
            .collect();
        Ok(Self {
            model: model.expect("at least one EmaModule"),
            tracks,
            num_updates,
        })
    }
}
