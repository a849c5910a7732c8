//! [`EmaModule`]: a model and its shadow weights.
//!
//! Its state lives in this module and its children, each a part of what an `EmaModule` does:
//!
//! - [`placement`]: where the shadow lives (a device of its own, offloaded to the host);
//! - [`background`]: the shadow's slot, which an offloaded update fills on a worker thread;
//! - [`swap`]: the shadow weights in the model for evaluation, behind a guard;
//! - [`switch`]: Switch EMA, the EMA written into the live weights;
//! - [`files`]: the EMA state, the shadow as the bare model's file, TensorFlow's names;
//! - `pytorch` (feature `pytorch`): resuming from PyTorch libraries' checkpoints;
//! - [`module_impl`]: `EmaModule` as a Burn [`Module`] (records, devices, optimizers).
//!
//! The swap rule (nothing reads or changes the shadow as the shadow while the shadow weights
//! are swapped into the model) is enforced in one place: the shadow is reached through
//! [`EmaModule::unswapped`] and [`EmaModule::unswapped_mut`], which refuse while swapped and
//! wait for a background update.

mod background;
mod files;
mod module_impl;
mod placement;
#[cfg(feature = "pytorch")]
mod pytorch;
mod swap;
mod switch;

use burn::module::Module;

use crate::average::MovingAverage;
use crate::config::{EmaConfig, EvalWeights};
use crate::error::EmaError;
use crate::shadow::{Shadow, update_shadows, update_shadows_at_decay};

use background::ShadowSlot;
use swap::SwapState;

pub use swap::Swapped;
pub use switch::SwitchEvery;

/// Starts a background update of the shadow (see [`EmaModule::offload`]); a function pointer so
/// that only `offload` needs `M: 'static`.
type Spawn<M> = fn(&mut ShadowSlot<M>, M, u64);

/// A model with an exponential moving average of its weights (its "shadow").
///
/// Call [`update`](crate::MovingAverage::update) after every optimizer step (the
/// [`MovingAverage`] trait: import it). Evaluate or export with the shadow weights through
/// [`shadow`](Self::shadow), [`into_shadow`](Self::into_shadow),
/// [`with_shadow_weights`](Self::with_shadow_weights) or [`swap`](Self::swap).
///
/// Where the shadow lives: on the model's device unless pinned elsewhere
/// ([`with_shadow_device`](Self::with_shadow_device)) or offloaded to the host
/// ([`offload`](Self::offload)); `fork` (a replica) leaves it home, `to_device` moves it.
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
    /// Reached through [`unswapped`](Self::unswapped) / [`unswapped_mut`](Self::unswapped_mut)
    /// by every operation that reads or changes the shadow as the shadow.
    shadow: ShadowSlot<M>,
    /// Set by [`offload`](Self::offload): updates run on a worker thread.
    offload: Option<Spawn<M>>,
    /// `Some` while the shadow weights are swapped into the model (a [`Swapped`] guard is
    /// alive, or was leaked).
    swapped: Option<SwapState>,
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
            swapped: None,
            switch: None,
        }
    }

    /// The shadow, for an operation that reads it as the shadow: refused while the shadow
    /// weights are swapped into the model (a leaked [`Swapped`] guard); waits for a background
    /// update. One of the two gates of the swap rule.
    fn unswapped(&self, operation: &'static str) -> Result<&Shadow<M>, EmaError> {
        if self.is_swapped() {
            return Err(EmaError::Swapped { operation });
        }
        Ok(&self.shadow)
    }

    /// The model and the shadow's slot, for an operation that changes them: refused while
    /// swapped; waits for a background update and reports its error first. The other gate of
    /// the swap rule.
    fn unswapped_mut(
        &mut self,
        operation: &'static str,
    ) -> Result<(&mut M, &mut ShadowSlot<M>), EmaError> {
        if self.is_swapped() {
            return Err(EmaError::Swapped { operation });
        }
        self.shadow.sync()?;
        Ok((&mut self.model, &mut self.shadow))
    }

    /// Waits for a background update (see [`offload`](Self::offload)) and returns its outcome;
    /// `Ok` at once when none is in flight. Reads of the shadow wait too, but only this (and
    /// the next `update`) reports the update's error.
    pub fn sync(&mut self) -> Result<(), EmaError> {
        self.shadow.sync()
    }

    /// The shadow weights as a plain (non-autodiff) module in evaluation mode, whole on
    /// [`shadow_device`](Self::shadow_device) (a shard-local shadow, spread over the devices that
    /// step its parameters, is gathered there for the reader: see
    /// [`shadow_bytes_by_device`](Self::shadow_bytes_by_device)).
    pub fn shadow(&self) -> &M {
        self.shadow.gathered()
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
        if !(decay.is_finite() && (0.0..=1.0).contains(&decay)) {
            return Err(EmaError::invalid(
                "decay",
                format!("must lie in [0, 1], got {decay}"),
            ));
        }
        let step = self.num_updates() + 1;
        let (model, slot) = self.unswapped_mut("update")?;
        update_shadows_at_decay(model, std::slice::from_mut(&mut **slot), step, decay)?;
        self.switch_after(step)
    }

    /// The configuration.
    pub fn config(&self) -> &EmaConfig {
        self.shadow.config()
    }

    /// The decay the most recent update applied (0 for a copy); `None` before the first. (The
    /// decay of the next update is [`decay_at_step`](Self::decay_at_step)`(num_updates() + 1)`.)
    pub fn last_decay(&self) -> Option<f64> {
        self.shadow.last_decay()
    }

    /// The decay an update at global step `step` would apply (0 for a copy, the configured
    /// decay for a step that `update_every` skips).
    pub fn decay_at_step(&self, step: u64) -> f64 {
        self.shadow.decay_at_step(step)
    }

    /// The number of tensors that are averaged (the others are copied).
    pub fn num_averaged(&self) -> usize {
        self.shadow.layout().num_averaged()
    }

    /// How many updates were skipped because a live value was NaN or infinite
    /// ([`NonFinite::Skip`](crate::NonFinite::Skip)).
    pub fn num_non_finite_skips(&self) -> u64 {
        self.shadow.non_finite_skips()
    }

    /// Whether the shadow weights are swapped into the model: only while a [`Swapped`] guard is
    /// alive, or after one was leaked with `std::mem::forget`.
    pub fn is_swapped(&self) -> bool {
        self.swapped.is_some()
    }

    /// The live model (swapped back first if needed).
    pub fn into_model(self) -> M {
        self.into_parts().0
    }

    /// The shadow model (swapped back first if needed): a plain module in evaluation mode that
    /// runs, saves and exports like the bare model.
    pub fn into_shadow(self) -> M {
        self.into_parts().1
    }

    /// Both models, live first (swapped back first if needed).
    pub fn into_parts(mut self) -> (M, M) {
        self.swap_out();
        (self.model, self.shadow.into_shadow().into_module())
    }

    /// The shadow, by value, for [`MultiEma::from_emas`](crate::MultiEma::from_emas): refused
    /// while swapped.
    pub(crate) fn into_model_and_shadow(self) -> Result<(M, Shadow<M>), EmaError> {
        self.unswapped("MultiEma::from_emas")?;
        Ok((self.model, self.shadow.into_shadow()))
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
    /// power-function step going back, a non-finite value under
    /// [`NonFinite::Error`](crate::NonFinite::Error), or the weights are swapped (a leaked
    /// [`Swapped`] guard).
    ///
    /// A panic inside the update (a backend fault) does not leave the `EmaModule` broken: the
    /// shadow starts again from the live weights (its old values may have been half written in
    /// place), the counter is kept, and the panic goes on.
    ///
    /// When [offloaded](EmaModule::offload), the update runs on a worker thread and this returns
    /// at once; what the previous background update returned comes out here (or from
    /// [`sync`](EmaModule::sync)) first, and then this step is not started.
    fn update_with_step(&mut self, step: u64) -> Result<(), EmaError> {
        let offload = self.offload;
        let (model, slot) = self.unswapped_mut("update")?;
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

    fn shadow_of(&self, k: usize) -> Result<&M, EmaError> {
        check_index(k, 1)?;
        Ok(self.shadow())
    }

    fn config_of(&self, k: usize) -> Result<&EmaConfig, EmaError> {
        check_index(k, 1)?;
        Ok(self.config())
    }

    fn last_decay_of(&self, k: usize) -> Result<Option<f64>, EmaError> {
        check_index(k, 1)?;
        Ok(self.last_decay())
    }

    fn eval_model(&self) -> &M {
        match self.config().eval_weights {
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
