//! [`Shadow`]: one moving average of a model — the shadow module, how each of its tensors is
//! averaged, the schedule, the step counter and where it lives. Its state is private to this
//! module; the averages ([`EmaModule`](crate::EmaModule): a model and one `Shadow`,
//! [`MultiEma`](crate::MultiEma): a model and several, [`TensorEma`](crate::TensorEma): a
//! tensor and one) use the methods below.
//!
//! - [`update`]: the update of one or several shadows as of one step (every average's path);
//! - [`record`]: the shadow's part of a Burn record;
//! - [`rewrite`]: the leaf rewriters a shadow is made and updated with.

mod record;
mod rewrite;
mod set;
mod update;

use std::sync::OnceLock;

use burn::module::Module;
use burn::prelude::Device;

use crate::config::EmaConfig;
use crate::error::EmaError;
use crate::layout::Layout;
use crate::placement::Placement;
use crate::schedule::{DecaySchedule, StepAction, StepCounter};
use crate::walk::{RewriteLeaves, collect_leaves};

pub(crate) use rewrite::InitShadow;
pub(crate) use set::{Shadows, impl_average_module};
pub(crate) use update::{
    live_leaves, update_shadows, update_shadows_at_decay, update_shadows_from,
};

const DETACHED: &str = "burn-ema: this replica holds no shadow: it is a secondary worker of a \
     distributed (DDP) run, and the main worker's EmaModule holds the only one";

/// The container type that records name for an average's own entries (`shadow`, `num_updates`):
/// the same for `EmaModule`, `MultiEma` and `PostHocEma`, whose records share one layout, so it
/// names the first of them and is kept as it is for the files written before.
pub(crate) const CONTAINER: &str = "Struct:EmaModule";

/// One moving average of a model.
pub(crate) struct Shadow<M: Module> {
    /// Always `Some` between calls (also after a panic inside an update, see
    /// [`update_shadows`]); taken out while it is rewritten so that its tensors are uniquely
    /// owned and can be updated in place.
    module: Option<M>,
    /// `module` gathered on the home device, made when a reader needs it whole while its
    /// tensors are spread over several devices (shard-local, see `placement.rs`); emptied
    /// whenever `module` changes.
    gathered: OnceLock<M>,
    /// A DDP secondary replica's copy: it holds no shadow (`module` is `None` for good).
    detached: bool,
    config: EmaConfig,
    schedule: DecaySchedule,
    layout: Layout,
    counter: StepCounter,
    last_decay: Option<f64>,
    /// The step of the last update that averaged or copied (not skipped): the power-function
    /// EMA's decay depends on the steps since (`None` after a resume: the regular stride is
    /// assumed).
    last_applied: Option<u64>,
    /// Updates skipped because a live value was not finite
    /// ([`NonFinite::Skip`](crate::NonFinite::Skip)).
    non_finite_skips: u64,
    /// Where the shadow lives (also the counter's tensor in records).
    placement: Placement,
}

impl<M: Module> Shadow<M> {
    /// A new shadow of `model`: a copy of its weights, in the configured element type, on each
    /// tensor's (non-autodiff) device, with its own parameter ids and buffers.
    pub(crate) fn new(model: &M, config: EmaConfig) -> Result<Self, EmaError> {
        Self::from_module(model, model.valid(), config, 0)
    }

    /// A shadow of `model` made of the given weights (`shadow` has `model`'s structure), as of
    /// `num_updates` updates.
    pub(crate) fn from_module(
        model: &M,
        shadow: M,
        config: EmaConfig,
        num_updates: u64,
    ) -> Result<Self, EmaError> {
        config.validate()?;
        let live = collect_leaves(model);
        let given = collect_leaves(&shadow);
        Layout::check_same(&live, &given)?;
        let shadow = shadow
            .valid()
            .map(&mut RewriteLeaves::new(&mut InitShadow { config: &config }));
        let made = collect_leaves(&shadow);
        // `RunningState` keeps its own id whatever a mapper gives it: a float tensor whose id
        // the mapping did not change is a buffer.
        let is_buffer: Vec<bool> = given.iter().zip(&made).map(|(g, m)| g.id == m.id).collect();
        let layout = Layout::new(&live, &is_buffer, &config)?;
        let mut placement = Placement::new(made[0].value_device());
        placement.observe(&shadow.devices());
        Ok(Self {
            module: Some(shadow),
            gathered: OnceLock::new(),
            detached: false,
            schedule: config.decay_schedule(),
            config,
            layout,
            counter: StepCounter::resumed(num_updates),
            last_decay: None,
            last_applied: None,
            non_finite_skips: 0,
            placement,
        })
    }

    /// The shadow module: plain (non-autodiff), in evaluation mode.
    ///
    /// Panics on a detached replica (a DDP secondary worker's copy, which only the Learner holds).
    /// Its tensors are where they live: on their parameters' devices when the shadow is
    /// spread (see [`gathered`](Self::gathered) for what readers get).
    pub(crate) fn module(&self) -> &M {
        assert!(!self.detached, "{DETACHED}");
        self.module
            .as_ref()
            .expect("the shadow is present between calls")
    }

    /// The shadow module as readers get it: [`module`](Self::module) itself, or, when its
    /// tensors are spread over several devices and the model was since forked whole to one
    /// (the Learner's validation), a copy gathered there (made once per change, the bytes
    /// counted as moved; see `placement.rs`).
    pub(crate) fn gathered(&self) -> &M {
        let module = self.module();
        match self.placement.gather_target() {
            None => module,
            // `valid`, not `clone`: a copy with running states of its own (a clone shares
            // BatchNorm's cells, which the move would rewrite in the shadow itself).
            Some(device) => self
                .gathered
                .get_or_init(|| self.placement.gather(module.valid(), device)),
        }
    }

    /// [`gathered`](Self::gathered), or [`EmaError::NotHeld`] on a replica that dropped its
    /// shadow (a DDP secondary worker's): what every public read of the shadow goes through.
    pub(crate) fn held(&self) -> Result<&M, EmaError> {
        if self.detached {
            Err(EmaError::NotHeld)
        } else {
            Ok(self.gathered())
        }
    }

    /// Puts the shadow module back after a change, noting where its tensors are now.
    fn put(&mut self, module: M) {
        self.placement.observe(&module.devices());
        self.gathered = OnceLock::new();
        self.module = Some(module);
    }

    /// Takes the shadow module out for a change ([`put`](Self::put) puts it back).
    fn take(&mut self) -> M {
        self.module
            .take()
            .expect("the shadow is present between calls")
    }

    /// Whether this is a DDP secondary replica's copy, which dropped its shadow (see
    /// `placement.rs`).
    pub(crate) fn is_detached(&self) -> bool {
        self.detached
    }

    pub(crate) fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Drops the shadow: this replica's parameters are distributed and it was forked away
    /// from the shadow's home, so it is a secondary worker of a DDP run and the main worker's
    /// shadow is the only one.
    pub(crate) fn detach(&mut self) {
        self.module = None;
        self.detached = true;
        log::debug!("burn-ema: a distributed replica dropped its shadow copy");
    }

    /// Moves the shadow to the device this replica was forked to, if it was forked away: it is
    /// about to be used as this replica's own.
    pub(crate) fn settle(&mut self) {
        if let Some(device) = self.placement.settle_target() {
            let module = self.take();
            let module = self.placement.relocate(module, &device);
            self.put(module);
        }
    }

    /// Moves the shadow to `device` and keeps it there whatever the model does.
    pub(crate) fn pin_to(&mut self, device: &Device) {
        self.settle();
        if *device != *self.placement.home() || self.placement.is_spread() {
            let module = self.take();
            let module = self.placement.relocate(module, device);
            self.put(module);
        }
        self.placement.pin(device);
    }

    /// The shadow module, by value, as [`gathered`](Self::gathered) reads it.
    pub(crate) fn into_module(mut self) -> M {
        let module = self.take();
        match self.placement.gather_target() {
            None => module,
            Some(device) => self.placement.gather(module, device),
        }
    }

    /// Rewrites the shadow module with `f`.
    pub(crate) fn map_module(&mut self, f: impl FnOnce(M) -> M) {
        let module = self.take();
        self.put(f(module));
    }

    pub(crate) fn config(&self) -> &EmaConfig {
        &self.config
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The last step applied (`0` before the first update).
    pub(crate) fn num_updates(&self) -> u64 {
        self.counter.get()
    }

    /// Sets the counter (a state read from a file or record).
    pub(crate) fn resume_at(&mut self, num_updates: u64) {
        self.counter = StepCounter::resumed(num_updates);
        self.last_decay = None;
        self.last_applied = None;
    }

    /// Whether an update at `step` changes nothing (`update_every` skips it).
    pub(crate) fn skips(&self, step: u64) -> bool {
        self.schedule.action(step) == StepAction::Skip
    }

    /// Fails when an update at `step` cannot follow the last one (a power-function EMA going
    /// back in time; every other schedule takes any step).
    pub(crate) fn check_step(&self, step: u64) -> Result<(), EmaError> {
        self.schedule.check_order(step, self.counter.last())
    }

    pub(crate) fn non_finite_skips(&self) -> u64 {
        self.non_finite_skips
    }

    /// The decay of the most recent update; `None` before the first.
    pub(crate) fn last_decay(&self) -> Option<f64> {
        self.last_decay
    }

    /// After a panic inside an update: a shadow whose module was taken out starts again from
    /// the live weights (its old values may have been half written in place), keeping its
    /// counter.
    pub(crate) fn recover(&mut self, model: &M) {
        if self.module.is_none() && !self.detached {
            let fresh = model
                .valid()
                .map(&mut RewriteLeaves::new(&mut InitShadow {
                    config: &self.config,
                }))
                .to_device(self.placement.home());
            self.put(fresh);
            self.last_decay = None;
        }
    }

    /// A replica's shadow (see `placement.rs`): no data moves.
    pub(crate) fn fork(mut self, device: &Device) -> Self {
        self.placement.fork(device);
        // A copy gathered for readers was made on the previous fork's device.
        self.gathered = OnceLock::new();
        self
    }

    /// The shadow follows a move on purpose, unless pinned.
    pub(crate) fn moved_to(mut self, device: &Device) -> Self {
        if self.detached {
            return self;
        }
        if let Some(target) = self.placement.move_target(device) {
            let module = self.take();
            let module = self.placement.relocate(module, &target);
            self.put(module);
        }
        self
    }

    pub(crate) fn materialize(mut self) -> Self {
        if !self.detached {
            self.map_module(Module::materialize);
        }
        self
    }
}

impl<M: Module> Clone for Shadow<M> {
    /// A shadow with its own buffers, so updating one never changes the other.
    fn clone(&self) -> Self {
        Self {
            module: self.module.as_ref().map(Module::valid),
            gathered: self.gathered.clone(),
            detached: self.detached,
            config: self.config.clone(),
            schedule: self.schedule.clone(),
            layout: self.layout.clone(),
            counter: self.counter,
            last_decay: self.last_decay,
            last_applied: self.last_applied,
            non_finite_skips: self.non_finite_skips,
            placement: self.placement.clone(),
        }
    }
}
