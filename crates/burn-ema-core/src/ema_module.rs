//! [`EmaModule`]: a model and its shadow weights.

use burn::module::Module;

use burn::prelude::{Device, Tensor};

use crate::background::ShadowSlot;
use crate::config::EmaConfig;
use crate::error::{EmaError, panic_message};
use crate::shadow::{Shadow, update_shadows};
use crate::swap::SwapState;
use crate::switch::SwitchEvery;

/// Starts a background update of the shadow (see [`EmaModule::offload`]); a function pointer so
/// that only `offload` needs `M: 'static`.
pub(crate) type Spawn<M> = fn(&mut ShadowSlot<M>, M, u64);

/// A model with an exponential moving average of its weights (its "shadow").
///
/// Call [`update`](Self::update) after every optimizer step. Evaluate or export with the shadow
/// weights through [`shadow`](Self::shadow), [`into_shadow`](Self::into_shadow),
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
/// use burn_ema::{EmaConfig, EmaModule};
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
    pub(crate) model: M,
    pub(crate) shadow: ShadowSlot<M>,
    /// Set by [`offload`](Self::offload): updates run on a worker thread.
    pub(crate) offload: Option<Spawn<M>>,
    /// `Some` while the shadow weights are swapped into the model (a [`Swapped`] guard is
    /// alive, or was leaked).
    ///
    /// [`Swapped`]: crate::Swapped
    pub(crate) swapped: Option<SwapState>,
    /// Switch EMA: the EMA written into the live weights every so many steps.
    pub(crate) switch: Option<SwitchEvery>,
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
    /// start: the next [`update`](Self::update) is step 1).
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

    /// Updates the shadow after an optimizer step, at the step after the last one.
    ///
    /// The counter plays the role of TensorFlow's `num_updates` in its usual recipe, where the
    /// optimizer increments the global step before the EMA applies: the first `update()` sees
    /// step 1. Use [`update_with_step`](Self::update_with_step) to pass a global step instead.
    pub fn update(&mut self) -> Result<(), EmaError> {
        self.update_with_step(self.shadow.next_step())
    }

    /// Updates the shadow as of global step `step` (TensorFlow's `num_updates`, which may start
    /// at 0), and sets the update counter to `step`.
    ///
    /// On error nothing changes: the model's structure no longer matches the shadow, `step`
    /// does not come after the last update's ([`EmaError::StepNotIncreasing`]), a non-finite
    /// value under [`NonFinite::Error`](crate::NonFinite::Error), or the weights are swapped
    /// (a leaked [`Swapped`](crate::Swapped) guard).
    ///
    /// A panic inside the update (a backend fault) does not leave the `EmaModule` broken: the
    /// shadow starts again from the live weights (its old values may have been half written in
    /// place), the counter is kept, and the panic goes on.
    ///
    /// When [offloaded](Self::offload), the update runs on a worker thread and this returns at
    /// once; what the previous background update returned comes out here (or from
    /// [`sync`](Self::sync)) first, and then this step is not started.
    pub fn update_with_step(&mut self, step: u64) -> Result<(), EmaError> {
        self.refuse_swapped("update")?;
        self.shadow.sync()?;
        // A step that `update_every` skips copies nothing: it runs inline, at no cost.
        if let Some(spawn) = self.offload.filter(|_| !self.shadow.skips(step)) {
            self.shadow.check_step(step)?;
            spawn(&mut self.shadow, self.model.valid(), step);
            return self.switch_after(step);
        }
        update_shadows(&self.model, std::slice::from_mut(&mut *self.shadow), step)?;
        self.switch_after(step)
    }

    /// Waits for a background update (see [`offload`](Self::offload)) and returns its outcome;
    /// `Ok` at once when none is in flight. Reads of the shadow wait too, but only this (and
    /// the next `update`) reports the update's error.
    pub fn sync(&mut self) -> Result<(), EmaError> {
        self.shadow.sync()
    }

    /// Keeps the shadow on `device` from now on, whatever the model does: `to_device` and
    /// `fork` move the model only, and each update copies the live weights across (4 bytes per
    /// `f32` parameter). Use it to keep the shadow off a busy GPU (timm's `device='cpu'`,
    /// ema-pytorch's `allow_different_devices`), or on the main device of a multi-device run.
    ///
    /// Fails with [`EmaError::Device`] when a tensor cannot go from the model's device to
    /// `device` and back (the device does not exist, or its backend cannot reach the model's).
    ///
    /// ```
    /// # use burn_ema_core as burn_ema;
    /// use burn::nn::{Linear, LinearConfig};
    /// use burn::prelude::*;
    /// use burn_ema::{EmaConfig, EmaModule};
    ///
    /// let gpu = Device::flex(); // e.g. Device::wgpu(Default::default())
    /// let model: Linear = LinearConfig::new(4, 2).init(&gpu.clone().autodiff());
    /// let ema = EmaModule::new(model, EmaConfig::new(0.999))?.with_shadow_device(&Device::flex())?;
    /// assert_eq!(ema.shadow_device(), Device::flex());
    /// # Ok::<(), burn_ema::EmaError>(())
    /// ```
    pub fn with_shadow_device(mut self, device: &Device) -> Result<Self, EmaError> {
        self.refuse_swapped("with_shadow_device")?;
        self.shadow.sync()?;
        let device = device.clone().inner();
        check_reachable(&self.model, &device)?;
        self.shadow.pin_to(&device);
        Ok(self)
    }

    /// Keeps the shadow on the host (`host`: a Flex or NdArray device) and runs every update on
    /// a worker thread, overlapping the next training step: the live weights are copied to the
    /// host once per update (4 bytes per `f32` parameter, 2 per `f16`) and averaged there with
    /// the fused CPU pass. The shadow then costs no accelerator memory (diffusers'
    /// `offload_ema`, NeMo's `cpu_offload`).
    ///
    /// Anything that reads the shadow — [`shadow`](Self::shadow), a swap, a save, a record, the
    /// next update — first waits for the update in flight: nothing ever sees a half-updated
    /// shadow. An update's error comes out of the next [`update`](Self::update) or
    /// [`sync`](Self::sync). While the worker copies the weights it holds their buffers, so the
    /// next optimizer step may write new buffers instead of updating in place.
    ///
    /// Fails with [`EmaError::Device`] when `host` is not a CPU backend's device or cannot
    /// be reached from the model's.
    pub fn offload(self, host: &Device) -> Result<Self, EmaError>
    where
        M: 'static,
    {
        if !is_host(host) {
            return Err(EmaError::Device {
                device: format!("{host:?}"),
                problem: "offload keeps the shadow in host memory: give a Flex or NdArray \
                          device (use `with_shadow_device` for any other device)"
                    .into(),
            });
        }
        let mut ema = self.with_shadow_device(host)?;
        ema.offload = Some(ShadowSlot::spawn_update);
        Ok(ema)
    }

    /// Whether updates run on a worker thread ([`offload`](Self::offload)).
    pub fn is_offloaded(&self) -> bool {
        self.offload.is_some()
    }

    /// The device the shadow is on.
    pub fn shadow_device(&self) -> Device {
        self.shadow.placement().home().clone()
    }

    /// Bytes of shadow data moved between devices since this `EmaModule` was made (shared by its
    /// clones and forks): `to_device`, [`with_shadow_device`](Self::with_shadow_device), and a
    /// replica that became the main one. Replicas that Burn's `MultiDevice` strategy forks to
    /// other devices every step move none.
    pub fn shadow_bytes_moved(&self) -> u64 {
        self.shadow.placement().bytes_moved()
    }

    /// Whether this `EmaModule` holds a shadow. Only a secondary worker's replica in a
    /// distributed (DDP) run does not: it dropped its copy at its first update, leaving the main
    /// worker's as the only one (see the README, "Multi-device, distributed and offloaded EMA").
    pub fn holds_shadow(&self) -> bool {
        !self.shadow.is_detached()
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

    /// The shadow weights as a plain (non-autodiff) module in evaluation mode.
    pub fn shadow(&self) -> &M {
        self.shadow.module()
    }

    /// The configuration.
    pub fn config(&self) -> &EmaConfig {
        self.shadow.config()
    }

    /// The update counter: the number of `update()` calls, or the last step given to
    /// [`update_with_step`](Self::update_with_step).
    pub fn num_updates(&self) -> u64 {
        self.shadow.num_updates()
    }

    /// The decay applied by the most recent update (0 for a copy); before the first update, the
    /// one the next [`update`](Self::update) would apply.
    pub fn current_decay(&self) -> f64 {
        self.shadow.current_decay()
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

    /// Whether the shadow weights are swapped into the model: only while a
    /// [`Swapped`](crate::Swapped) guard is alive, or after one was leaked with
    /// `std::mem::forget`.
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

    pub(crate) fn refuse_swapped(&self, operation: &'static str) -> Result<(), EmaError> {
        if self.is_swapped() {
            Err(EmaError::Swapped { operation })
        } else {
            Ok(())
        }
    }
}

/// Whether `device` keeps tensors in host memory.
fn is_host(device: &Device) -> bool {
    let name = format!("{:?}", device.clone().inner());
    name.contains("Flex") || name.contains("NdArray")
}

/// Fails unless a tensor goes from the model's device to `device` and back.
fn check_reachable<M: Module>(model: &M, device: &Device) -> Result<(), EmaError> {
    let Some(model_device) = model.devices().into_iter().next() else {
        return Ok(());
    };
    let model_device = model_device.inner();
    let probe = std::panic::catch_unwind(|| {
        let t = Tensor::<1>::from_floats([1.0], &model_device).to_device(device);
        let back = t.to_device(&model_device);
        back.into_data().try_to_vec::<f32>().ok() == Some(vec![1.0])
    });
    match probe {
        Ok(true) => Ok(()),
        Ok(false) => Err(EmaError::Device {
            device: format!("{device:?}"),
            problem: format!("a value sent from {model_device:?} and back came back changed"),
        }),
        Err(panic) => Err(EmaError::Device {
            device: format!("{device:?}"),
            problem: format!(
                "cannot reach it from the model's device {model_device:?}: {}",
                panic_message(panic.as_ref())
            ),
        }),
    }
}
