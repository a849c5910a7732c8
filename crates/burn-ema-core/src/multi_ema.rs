//! [`MultiEma`]: several moving averages of one model, updated together.

use std::fmt;
use std::path::{Path, PathBuf};

use burn::module::Module;

use crate::average::MovingAverage;
use crate::config::{EmaConfig, EvalWeights};
use crate::ema_module::{EmaModule, check_index};
use crate::error::EmaError;
use crate::io::{EmaFile, save_weights};
use crate::shadow::{Shadow, impl_average_module, update_shadows};
use crate::walk::collect_leaves;

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
/// use burn_ema::{EmaConfig, EmaFile, MovingAverage, MultiEma, Schedule};
///
/// let device = Device::flex();
/// let model: Linear = LinearConfig::new(4, 2).init(&device);
/// // The two profiles of post-hoc EMA: relative widths 0.05 and 0.10.
/// let profile = |gamma| EmaConfig::new(1.0).with_schedule(Schedule::PowerFunction { gamma });
/// let mut emas = MultiEma::new(model, vec![profile(16.97), profile(6.94)])?;
/// // ... after each optimizer step:
/// emas.update()?;
/// let narrow: &Linear = emas.shadow_of(0)?;
/// # let _ = narrow;
/// // A snapshot of each average, as post-hoc EMA keeps every few thousand steps:
/// # let dir = std::env::temp_dir().join(format!("burn-ema-posthoc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// emas.save(0, dir.join("ema-0.05-step-1000.bpk"), EmaFile::Shadow)?;
/// emas.save(1, dir.join("ema-0.10-step-1000.bpk"), EmaFile::Shadow)?;
/// # std::fs::remove_dir_all(&dir).unwrap();
/// // Or as EmaModules, to swap, save the full state or keep training one of them:
/// let [narrow, wide] = <[_; 2]>::try_from(emas.into_emas()).ok().expect("two averages");
/// # let _ = (narrow, wide);
/// # Ok::<(), burn_ema::EmaError>(())
/// ```
/// It is a Burn [`Module`] like [`EmaModule`]: its record holds `model.*` and, per average,
/// `averages.{k}.shadow.*` and `averages.{k}.num_updates`; with feature `train` Burn's Learner
/// trains it, updates every average after each step and validates with the first average.
pub struct MultiEma<M: Module> {
    pub(crate) model: M,
    pub(crate) averages: Vec<Shadow<M>>,
}

impl<M: Module> MultiEma<M> {
    /// Wraps `model` with one average per configuration, each starting as a copy of its weights.
    ///
    /// Fails on an empty list, an invalid configuration or a model without float tensors.
    pub fn new(model: M, configs: Vec<EmaConfig>) -> Result<Self, EmaError> {
        if configs.is_empty() {
            return Err(EmaError::invalid(
                "configs",
                "is empty: give one EmaConfig per average",
            ));
        }
        let averages = configs
            .into_iter()
            .map(|config| Shadow::new(&model, config))
            .collect::<Result<_, EmaError>>()?;
        Ok(Self { model, averages })
    }

    /// Saves the shadow weights of average `k` in `format`, as
    /// [`EmaModule::save`](crate::EmaModule::save) does: [`EmaFile::Shadow`] (the bare model's
    /// burnpack file, `.bpk` added when `path` has no extension: Burn's own `load_file` loads
    /// it into the plain model) or [`EmaFile::ShadowSafetensors`]; atomically. Post-hoc EMA
    /// saves such snapshots of each average every few thousand steps. Returns the path written.
    ///
    /// The state of every average together is the `MultiEma`'s Burn record; for one average's
    /// EMA state file, [`into_emas`](Self::into_emas). Other formats are refused with
    /// [`EmaError::InvalidConfig`] (field `format`).
    pub fn save(
        &self,
        k: usize,
        path: impl AsRef<Path>,
        format: EmaFile,
    ) -> Result<PathBuf, EmaError> {
        let why = "a MultiEma's whole state is its Burn record, and `into_emas()` gives \
                   EmaModules for the other formats";
        save_weights(self.shadow_of(k)?, path.as_ref(), format, why)
    }

    /// The paths of the tensors that are averaged (the others are copied).
    pub(crate) fn averaged_paths(&self) -> Vec<String> {
        self.averages[0].layout().averaged_paths()
    }

    /// Whether this replica holds its averages (a DDP secondary worker's dropped them).
    pub(crate) fn holds_averages(&self) -> bool {
        self.averages.iter().all(|a| !a.is_detached())
    }

    /// The live model rewritten by `f` (see `EmaModule::map_model`).
    #[cfg_attr(not(feature = "train"), allow(dead_code))]
    pub(crate) fn map_model(mut self, f: impl FnOnce(M) -> M) -> Self {
        self.model = f(self.model);
        self
    }

    /// One [`EmaModule`] per average, in the order of the configurations, each holding (a
    /// handle to) the live model: to swap, save, export or keep training with one of them.
    pub fn into_emas(self) -> Vec<EmaModule<M>> {
        let model = self.model;
        self.averages
            .into_iter()
            .map(|shadow| EmaModule::assemble(model.clone(), shadow))
            .collect()
    }

    /// Gathers `EmaModule`s of one model (e.g. loaded from files) into a `MultiEma`, keeping the
    /// first one's live model; the inverse of [`into_emas`](Self::into_emas).
    ///
    /// Fails on an empty list, update counters that differ, or a shadow
    /// whose structure does not match the first one's model.
    pub fn from_emas(emas: Vec<EmaModule<M>>) -> Result<Self, EmaError> {
        let Some(first) = emas.first() else {
            return Err(EmaError::invalid(
                "emas",
                "is empty: give one EmaModule per average",
            ));
        };
        let num_updates = first.num_updates();
        let live = collect_leaves(first.model());
        let mut model = None;
        let mut averages = Vec::with_capacity(emas.len());
        for ema in emas {
            if ema.num_updates() != num_updates {
                return Err(EmaError::invalid(
                    "num_updates",
                    format!(
                        "must be the same for every average, got {num_updates} and {}",
                        ema.num_updates()
                    ),
                ));
            }
            let (live_model, shadow) = ema.into_model_and_shadow();
            shadow.layout().check(&live)?;
            model.get_or_insert(live_model);
            averages.push(shadow);
        }
        Ok(Self {
            model: model.expect("at least one EmaModule"),
            averages,
        })
    }
}

impl<M: Module> MovingAverage for MultiEma<M> {
    type Model = M;

    /// Updates every average as of global step `step` in one pass over the model (see
    /// [`MovingAverage::update_with_step`]). On error nothing changes.
    fn update_with_step(&mut self, step: u64) -> Result<(), EmaError> {
        update_shadows(&self.model, &mut self.averages, step).map(drop)
    }

    fn num_updates(&self) -> u64 {
        self.averages[0].num_updates()
    }

    fn model(&self) -> &M {
        &self.model
    }

    fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }

    fn num_averages(&self) -> usize {
        self.averages.len()
    }

    fn shadow_of(&self, k: usize) -> Result<&M, EmaError> {
        check_index(k, self.averages.len())?;
        self.averages[k].held()
    }

    fn config_of(&self, k: usize) -> Result<&EmaConfig, EmaError> {
        check_index(k, self.averages.len())?;
        Ok(self.averages[k].config())
    }

    fn last_decay_of(&self, k: usize) -> Result<Option<f64>, EmaError> {
        check_index(k, self.averages.len())?;
        Ok(self.averages[k].last_decay())
    }

    fn eval_model(&self) -> &M {
        match self.averages[0].config().options.eval_weights {
            EvalWeights::Shadow => self.averages[0].gathered(),
            EvalWeights::Live => &self.model,
        }
    }
}

impl_average_module!(MultiEma, model: model, shadows: averages);

impl<M: Module> Clone for MultiEma<M> {
    /// Clones the live model as Burn does and every shadow with its own buffers.
    fn clone(&self) -> Self {
        Self {
            model: self.model.clone(),
            averages: self.averages.clone(),
        }
    }
}

impl<M: Module> fmt::Debug for MultiEma<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiEma")
            .field(
                "configs",
                &self.averages.iter().map(Shadow::config).collect::<Vec<_>>(),
            )
            .field("num_updates", &self.num_updates())
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl<M: Module + fmt::Display> fmt::Display for MultiEma<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "MultiEma {{ averages: {}, updates: {} }}",
            self.averages.len(),
            self.num_updates()
        )?;
        write!(f, "{}", self.model)
    }
}
