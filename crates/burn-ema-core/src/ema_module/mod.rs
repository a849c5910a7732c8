//! [`EmaModule`]: a model and its shadow weights.
//!
//! Its state lives in this module and its children, each a part of what an `EmaModule` does:
//!
//! - [`placement`]: where the shadow lives (a device of its own, offloaded to the host);
//! - [`background`]: the shadow's slot, which an offloaded update fills on a worker thread;
//! - [`swap`]: the model with the shadow weights for evaluation, as a guard;
//! - [`switch`]: Switch EMA, the EMA written into the live weights;
//! - [`files`]: saving and loading, every format through one pair of calls;
//! - [`stats`]: the counters a user monitors, in one value;
//! - [`module_impl`]: `EmaModule` as a Burn [`Module`] (records, devices, optimizers).
//!
//! Everything that changes the shadow reaches it through [`EmaModule::settled_mut`], which
//! waits for a background update and reports its error first.

mod background;
mod files;
mod module_impl;
mod placement;
mod stats;
mod swap;
mod switch;

use burn::module::Module;

use crate::average::MovingAverage;
use crate::config::{EmaConfig, EvalWeights};
use crate::error::EmaError;
use crate::schedule::check_unit;
use crate::shadow::{Shadow, update_shadows, update_shadows_at_decay};

use background::ShadowSlot;

pub use placement::ShadowPlacement;
pub use stats::EmaStats;
pub use swap::Swapped;
pub use switch::SwitchEvery;

/// Starts a background update of the shadow (see [`ShadowPlacement::Offload`]); a function pointer so
/// that only `with_placement` needs `M: 'static`.
type Spawn<M> = fn(&mut ShadowSlot<M>, M, u64);

/// A model with an exponential moving average of its weights (its "shadow").
///
/// Call [`update`](crate::MovingAverage::update) after every optimizer step (the
/// [`MovingAverage`] trait: import it; it also has the accessors, [`shadow`](MovingAverage::shadow),
/// [`config`](MovingAverage::config), [`last_decay`](MovingAverage::last_decay)). Evaluate or
/// export with the shadow weights through `shadow()`, [`into_shadow`](Self::into_shadow),
/// [`with_shadow_weights`](Self::with_shadow_weights) or [`swap`](Self::swap); save and load
/// every format with [`save`](Self::save) and [`load`](Self::load); monitor it with
/// [`stats`](Self::stats).
///
/// Where the shadow lives: on the model's device unless placed elsewhere
/// ([`with_placement`](Self::with_placement): a device of its own, or offloaded to the host);
/// `fork` (a replica) leaves it home, `to_device` moves it.
///
/// The shadow is built from `model.valid()`: it lives on each parameter's (non-autodiff) device,
/// has its own BatchNorm buffers, and its BatchNorm layers are in evaluation mode. Its
/// parameters carry their own [`ParamId`](burn::module::ParamId)s, derived from the model's, so
/// an optimizer stepping an `EmaModule` (it is itself a [`Module`]) finds gradients for the live
/// model only, and never touches the shadow. Nothing (`train()`, `fork`, `set_require_grad`, an
/// optimizer) turns the shadow into an autodiff or trainable module.
///
/// ```
/// # use burn_ema_core as burn_ema;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::prelude::*;
/// use burn_ema::{EmaConfig, EmaModule, MovingAverage};
///
/// let device = Device::flex();
/// let model: Linear = LinearConfig::new(4, 2).init(&device);
/// let mut ema = EmaModule::new(model, EmaConfig::new(0.999))?;
/// // ... after each optimizer step:
/// ema.update()?;
/// assert_eq!(ema.num_updates(), 1);
/// let eval_model: &Linear = ema.shadow();
/// # let _ = eval_model;
/// # Ok::<(), burn_ema::EmaError>(())
/// ```
pub struct EmaModule<M: Module> {
    model: M,
    /// Changed only through [`settled_mut`](Self::settled_mut).
    shadow: ShadowSlot<M>,
    /// Set by [`ShadowPlacement::Offload`]: updates run on a worker thread.
    offload: Option<Spawn<M>>,
    /// Switch EMA: the EMA written into the live weights every so many steps.
    switch: Option<SwitchEvery>,
}

impl<M: Module> EmaModule<M> {
    /// Wraps `model`, starting the shadow as a copy of its weights.
    ///
    /// Fails on an invalid configuration, a model without float tensors, or an exclusion
    /// pattern that matches none of its tensors.
    pub fn new(model: M, config: EmaConfig) -> Result<Self, EmaError> {
        let shadow = Shadow::new(&model, config)?;
        Ok(Self::assemble(model, shadow))
    }

    /// Wraps `model` with shadow weights you bring (e.g. an EMA trained elsewhere, or weights
    /// loaded from another library's checkpoint), as of `num_updates` updates (`0` for a fresh
    /// start: the next [`update`](crate::MovingAverage::update) is step 1).
    ///
    /// `shadow` must have `model`'s structure (same paths, kinds and shapes): otherwise an
    /// [`EmaError::StructureMismatch`] names the first difference. It is stored like any shadow:
    /// plain, in evaluation mode, in the configured element type, with its own ids.
    pub fn from_parts(
        model: M,
        shadow: M,
        config: EmaConfig,
        num_updates: u64,
    ) -> Result<Self, EmaError> {
        let shadow = Shadow::from_module(&model, shadow, config, num_updates)?;
        Ok(Self::assemble(model, shadow))
    }

    pub(crate) fn assemble(model: M, shadow: Shadow<M>) -> Self {
        Self {
            model,
            shadow: ShadowSlot::new(shadow),
            offload: None,
            switch: None,
        }
    }

    /// The shadow, once a background update in flight is done.
    fn settled(&self) -> &Shadow<M> {
        &self.shadow
    }

    /// The model and the shadow's slot, for an operation that changes them: waits for a
    /// background update and reports its error first.
    fn settled_mut(&mut self) -> Result<(&mut M, &mut ShadowSlot<M>), EmaError> {
        self.shadow.sync()?;
        Ok((&mut self.model, &mut self.shadow))
    }

    /// Waits for a background update (see [`ShadowPlacement::Offload`]) and returns its outcome;
    /// `Ok` at once when none is in flight. Reads of the shadow wait too, but only this (and
    /// the next `update`) reports the update's error.
    pub fn sync(&mut self) -> Result<(), EmaError> {
        self.shadow.sync()
    }

    /// Updates the shadow as of the next step (`num_updates() + 1`) at `decay`, whatever the
    /// schedule says: for a schedule burn-ema does not have, driven by the training loop
    /// (`shadow = decay·shadow + (1 − decay)·param`; 0 copies, 1 keeps the shadow). Otherwise
    /// like [`update`](MovingAverage::update), `update_every` aside (this step averages); an
    /// offloaded `EmaModule` waits for the update in flight and runs this one on the caller's
    /// thread.
    ///
    /// Fails with [`EmaError::InvalidConfig`] unless `decay` lies in `[0, 1]`.
    ///
    /// ```
    /// # use burn_ema_core as burn_ema;
    /// use burn::nn::{Linear, LinearConfig};
    /// use burn::prelude::*;
    /// use burn_ema::{EmaConfig, EmaModule, MovingAverage};
    ///
    /// let model: Linear = LinearConfig::new(4, 2).init(&Device::flex());
    /// let mut ema = EmaModule::new(model, EmaConfig::new(0.999))?;
    /// ema.update_with_decay(0.5)?;
    /// assert_eq!((ema.num_updates(), ema.last_decay()), (1, Some(0.5)));
    /// assert!(ema.update_with_decay(1.5).is_err());
    /// # Ok::<(), burn_ema::EmaError>(())
    /// ```
    pub fn update_with_decay(&mut self, decay: f64) -> Result<(), EmaError> {
        check_unit("decay", decay)?;
        let step = self.num_updates() + 1;
        let (model, slot) = self.settled_mut()?;
        update_shadows_at_decay(model, std::slice::from_mut(&mut **slot), step, decay)?;
        self.switch_after(step)
    }

    /// The shadow model: a plain module in evaluation mode that runs, saves and exports like
    /// the bare model.
    pub fn into_shadow(self) -> M {
        self.into_parts().1
    }

    /// Both models, live first.
    pub fn into_parts(self) -> (M, M) {
        (self.model, self.shadow.into_shadow().into_module())
    }

    /// The shadow, by value, for [`MultiEma::from_emas`](crate::MultiEma::from_emas).
    pub(crate) fn into_model_and_shadow(self) -> (M, Shadow<M>) {
        (self.model, self.shadow.into_shadow())
    }

    /// The live model rewritten by `f` (Burn's Learner moves it through the optimizer, so that
    /// uniquely held parameters are updated in place). The next update checks its structure.
    #[cfg_attr(not(feature = "train"), allow(dead_code))]
    pub(crate) fn map_model(mut self, f: impl FnOnce(M) -> M) -> Self {
        self.model = f(self.model);
        self
    }
}

impl<M: Module> MovingAverage for EmaModule<M> {
    type Model = M;

    /// Updates the shadow as of global step `step` (TensorFlow's `num_updates`, which may start
    /// at 0), and sets the update counter to `step`. Any step is taken, as TensorFlow takes it:
    /// a repeated step applies that step's decay again (the weights may have changed since); only
    /// a power-function EMA refuses a step before the last ([`EmaError::StepBackwards`]).
    ///
    /// On error nothing changes: the model's structure no longer matches the shadow, a
    /// power-function step going back, or a non-finite value under
    /// [`NonFinite::Error`](crate::NonFinite::Error).
    ///
    /// A panic inside the update (a backend fault) does not leave the `EmaModule` broken: the
    /// shadow starts again from the live weights (its old values may have been half written in
    /// place), the counter is kept, and the panic goes on.
    ///
    /// When [offloaded](ShadowPlacement::Offload), the update runs on a worker thread and this returns
    /// at once; what the previous background update returned comes out here (or from
    /// [`sync`](EmaModule::sync)) first, and then this step is not started.
    fn update_with_step(&mut self, step: u64) -> Result<(), EmaError> {
        let offload = self.offload;
        let (model, slot) = self.settled_mut()?;
        // A step that `update_every` skips copies nothing: it runs inline, at no cost.
        if let Some(spawn) = offload.filter(|_| !slot.skips(step)) {
            slot.check_step(step)?;
            spawn(slot, model.valid(), step);
        } else {
            update_shadows(model, std::slice::from_mut(&mut **slot), step)?;
        }
        self.switch_after(step)
    }

    fn num_updates(&self) -> u64 {
        self.shadow.num_updates()
    }

    fn model(&self) -> &M {
        &self.model
    }

    fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }

    fn num_averages(&self) -> usize {
        1
    }

    /// The shadow weights as a plain (non-autodiff) module in evaluation mode, whole on the
    /// shadow's home device ([`EmaStats::shadow_device`]; a shard-local shadow, spread over the
    /// devices that step its parameters, is gathered there for the reader).
    fn shadow_of(&self, k: usize) -> Result<&M, EmaError> {
        check_index(k, 1)?;
        self.settled().held()
    }

    fn config_of(&self, k: usize) -> Result<&EmaConfig, EmaError> {
        check_index(k, 1)?;
        Ok(self.shadow.config())
    }

    fn last_decay_of(&self, k: usize) -> Result<Option<f64>, EmaError> {
        check_index(k, 1)?;
        Ok(self.shadow.last_decay())
    }

    fn eval_model(&self) -> &M {
        match self.config().options.eval_weights {
            EvalWeights::Shadow => self.shadow(),
            EvalWeights::Live => &self.model,
        }
    }
}

/// [`EmaError::NoSuchAverage`] unless `k < len`: the one answer to a bad average index.
pub(crate) fn check_index(k: usize, len: usize) -> Result<(), EmaError> {
    if k < len {
        Ok(())
    } else {
        Err(EmaError::NoSuchAverage { index: k, len })
    }
}
