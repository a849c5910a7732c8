//! [`Shadow`]: one moving average of a model — the shadow module, how each of its tensors is
//! averaged, the schedule and the step counter — and the update of several shadows of one model
//! in one pass.
//!
//! [`EmaModule`](crate::EmaModule) is a model and one `Shadow`, [`MultiEma`](crate::MultiEma)
//! a model and several, [`TensorEma`](crate::TensorEma) a tensor and one. The update path
//! ([`update_shadows`]) and the shadow's part of a record ([`Shadow::visit_record`],
//! [`Shadow::map_record`]) live here and nowhere else.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use burn::module::{Flag, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::{Device, Int, TensorData};
use burn::tensor::{Bool, DType, Tensor};

use crate::config::{EmaConfig, NonFinite};
use crate::error::EmaError;
use crate::layout::{Layout, Rule};
use crate::placement::{Placement, any_distributed};
use crate::schedule::{DecaySchedule, StepAction, StepCounter};
use crate::update::{cast_like, non_finite_counts, one_minus_decay};
use crate::walk::{Leaf, LeafRewriter, RewriteLeaves, Value, collect_leaves};

const DETACHED: &str = "burn-ema: this replica holds no shadow: it is a secondary worker of a \
     distributed (DDP) run, and the main worker's EmaModule holds the only one";

/// The container type that records name for the EMA's own entries.
pub(crate) const CONTAINER: &str = "Struct:EmaModule";

/// One moving average of a model.
pub(crate) struct Shadow<M: Module> {
    /// Always `Some` between calls (also after a panic inside an update, see
    /// [`update_shadows`]); taken out while it is rewritten so that its tensors are uniquely
    /// owned and can be updated in place.
    module: Option<M>,
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
    /// Updates skipped because a live value was not finite ([`NonFinite::Skip`]).
    non_finite_skips: u64,
    /// Where the shadow lives (also the counter's tensor in records).
    placement: Placement,
}

/// The shadow id of a live parameter id: a fixed bijective mix, so shadow ids never collide
/// with live ones in practice, and a shadow of the same model always gets the same ids.
pub(crate) fn shadow_id(id: ParamId) -> ParamId {
    let mut z = id.val() ^ 0x454d_415f_5348_4144; // "EMA_SHAD"
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ParamId::from(z ^ (z >> 31))
}

/// Gives the shadow's parameters their own ids and element types.
struct InitShadow<'a> {
    config: &'a EmaConfig,
}

impl LeafRewriter for InitShadow<'_> {
    fn rewrite(&mut self, _index: usize, id: ParamId, value: Value) -> (ParamId, Value) {
        match value {
            Value::Float(t) => {
                let dtype = self.config.shadow_dtype.resolve(t.dtype());
                (shadow_id(id), Value::Float(cast_like(t, dtype)))
            }
            other => (id, other),
        }
    }
}

/// Puts given values into a module, slot by slot (a slot given `None` keeps its tensor). A
/// value has its slot's kind.
pub(crate) struct PutFloats {
    pub(crate) values: Vec<Option<Value>>,
}

impl LeafRewriter for PutFloats {
    fn rewrite(&mut self, index: usize, id: ParamId, value: Value) -> (ParamId, Value) {
        match self.values.get_mut(index).and_then(Option::take) {
            Some(new) if new.kind() == value.kind() => (id, new),
            _ => (id, value),
        }
    }
}

/// The first pass of an update over a shadow: copies what is copied, and takes the tensors to
/// average out (leaving the live value in their place for a moment) for one batched update,
/// after which [`PutFloats`] puts them back. Taking them out keeps their buffers uniquely
/// owned, so they are written in place.
struct TakeAveraged<'a> {
    layout: &'a Layout,
    live: &'a [Option<Value>],
    decay: f64,
    /// `(slot index, shadow, value)` of the averaged tensors taken out.
    batch: Vec<(usize, Tensor<1>, Tensor<1>)>,
}

impl LeafRewriter for TakeAveraged<'_> {
    fn rewrite(&mut self, index: usize, id: ParamId, shadow: Value) -> (ParamId, Value) {
        let live = self.live[index]
            .clone()
            .expect("the live model has every slot");
        // A shadow on another device than the model (pinned, offloaded, or a parameter that
        // `OptimSharded` keeps on a secondary device): the live value comes across once.
        let live = live.on_device_of(&shadow);
        let new = match (shadow, live) {
            (Value::Float(s), Value::Float(p)) => match self.layout.slots[index].rule {
                Rule::Average if self.decay >= 1.0 => Value::Float(s),
                Rule::Average if self.decay > 0.0 => {
                    self.batch.push((index, s, p.clone()));
                    Value::Float(p)
                }
                Rule::Average | Rule::Copy => Value::Float(cast_like(p, s.dtype())),
            },
            (_, live) => live,
        };
        (id, new)
    }
}

/// The live model's tensors as an update reads them: synced buffers (`valid()`), flattened,
/// in traversal order.
pub(crate) fn live_leaves<M: Module>(model: &M) -> Vec<Leaf> {
    // `valid()` syncs buffers that `RunningState` may hold back by one update.
    collect_leaves(&model.valid())
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
        let placement = Placement::new(made[0].value_device());
        Ok(Self {
            module: Some(shadow),
            detached: false,
            schedule: DecaySchedule::new(&config),
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
    pub(crate) fn module(&self) -> &M {
        assert!(!self.detached, "{DETACHED}");
        self.module
            .as_ref()
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
            let module = self
                .module
                .take()
                .expect("the shadow is present between calls");
            self.module = Some(self.placement.relocate(module, &device));
        }
    }

    /// Moves the shadow to `device` and keeps it there whatever the model does.
    pub(crate) fn pin_to(&mut self, device: &Device) {
        self.settle();
        if *device != *self.placement.home() {
            let module = self
                .module
                .take()
                .expect("the shadow is present between calls");
            self.module = Some(self.placement.relocate(module, device));
        }
        self.placement.pin(device);
    }

    /// The shadow module, by value.
    pub(crate) fn into_module(self) -> M {
        self.module.expect("the shadow is present between calls")
    }

    /// Rewrites the shadow module with `f`.
    pub(crate) fn map_module(&mut self, f: impl FnOnce(M) -> M) {
        let module = self
            .module
            .take()
            .expect("the shadow is present between calls");
        self.module = Some(f(module));
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

    /// The step [`EmaModule::update`](crate::EmaModule::update) applies next.
    pub(crate) fn next_step(&self) -> u64 {
        self.counter.next()
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

    /// Fails unless `step` comes after the last update's.
    pub(crate) fn check_step(&self, step: u64) -> Result<(), EmaError> {
        self.counter.check(step)
    }

    pub(crate) fn non_finite_skips(&self) -> u64 {
        self.non_finite_skips
    }

    /// The decay an update at `step` would apply (0 for a copy, the configured decay for a
    /// step that `update_every` skips).
    pub(crate) fn decay_at_step(&self, step: u64) -> f64 {
        self.schedule
            .action(step)
            .decay()
            .unwrap_or(self.config.decay)
    }

    /// The step of the last update that averaged or copied.
    pub(crate) fn last_applied(&self) -> Option<u64> {
        self.last_applied
    }

    /// The decay of the most recent update; `None` before the first.
    pub(crate) fn last_decay(&self) -> Option<f64> {
        self.last_decay
    }

    /// The decay of the most recent update; before the first, the next one's.
    pub(crate) fn current_decay(&self) -> f64 {
        self.last_decay
            .unwrap_or_else(|| self.decay_at_step(self.counter.next()))
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
            self.module = Some(fresh);
            self.last_decay = None;
        }
    }

    /// The counter as a fresh parameter: a fresh id, so that a mapper that loads a record
    /// (which gives back the recorded id) can be told from one that leaves it alone.
    fn counter_param(&self) -> Param<Tensor<1, Int>> {
        let data = TensorData::new(vec![self.counter.get() as i64], [1]);
        let tensor = Tensor::<1, Int>::from_data(data, (self.placement.home(), DType::I64));
        Param::initialized(ParamId::new(), tensor)
    }

    /// The shadow's part of a record, in traversal order: `shadow.*`, then `num_updates`.
    pub(crate) fn visit_record<V: ModuleVisitor>(&self, visitor: &mut V) {
        if self.detached {
            return;
        }
        visitor.enter_module("shadow", CONTAINER);
        self.module().visit(visitor);
        visitor.exit_module("shadow", CONTAINER);
        visitor.enter_module("num_updates", CONTAINER);
        visitor.visit_int(&self.counter_param());
        visitor.exit_module("num_updates", CONTAINER);
    }

    /// Passes a mapper over the shadow's part of a record (see [`visit_record`]); the shadow
    /// stays plain whatever the mapper does, and a loaded record's counter is taken.
    ///
    /// [`visit_record`]: Self::visit_record
    pub(crate) fn map_record<Mp: ModuleMapper>(&mut self, mapper: &mut Mp) {
        if self.detached {
            return;
        }
        mapper.enter_module("shadow", CONTAINER);
        self.map_module(|m| m.map(&mut PlainGuard { inner: mapper }));
        mapper.exit_module("shadow", CONTAINER);
        mapper.enter_module("num_updates", CONTAINER);
        let counter = self.counter_param();
        let given = counter.id;
        let counter = mapper.map_int(counter);
        mapper.exit_module("num_updates", CONTAINER);
        if counter.id != given {
            // A record was loaded: take its counter (the only case that reads it back).
            let data = counter.val().into_data();
            if let Ok(values) = data.try_into_vec_as::<i64>()
                && let Some(&n) = values.first()
            {
                self.resume_at(n.max(0) as u64);
            }
        }
    }

    /// A replica's shadow (see `placement.rs`): no data moves.
    pub(crate) fn fork(mut self, device: &Device) -> Self {
        self.placement.fork(device);
        self
    }

    /// The shadow follows a move on purpose, unless pinned.
    pub(crate) fn moved_to(mut self, device: &Device) -> Self {
        if self.detached {
            return self;
        }
        if let Some(target) = self.placement.move_target(device) {
            let module = self
                .module
                .take()
                .expect("the shadow is present between calls");
            self.module = Some(self.placement.relocate(module, &target));
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

/// Passes a mapper over the shadow while keeping the shadow plain: float tensors come back as
/// non-autodiff tensors, and flags (BatchNorm's `training`) are left alone, so `unfreeze`,
/// `set_require_grad(true)` and the like cannot make the shadow trainable.
struct PlainGuard<'a, Mp> {
    inner: &'a mut Mp,
}

impl<Mp: ModuleMapper> ModuleMapper for PlainGuard<'_, Mp> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.inner.enter_module(name, container_type);
    }

    fn exit_module(&mut self, name: &str, container_type: &str) {
        self.inner.exit_module(name, container_type);
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        // Handed over as an autodiff tensor: some mappers only take those (Burn's DDP sharder
        // marks every float tensor distributed, which a plain tensor refuses with a panic).
        let (id, t, mapper) = param.consume();
        let lifted = Param::from_mapped_value(id, Tensor::from_inner(t), mapper);
        let (id, t, mapper) = self.inner.map_float(lifted).consume();
        Param::from_mapped_value(id, t.inner(), mapper)
    }

    fn map_int<const D: usize>(&mut self, param: Param<Tensor<D, Int>>) -> Param<Tensor<D, Int>> {
        self.inner.map_int(param)
    }

    fn map_bool<const D: usize>(
        &mut self,
        param: Param<Tensor<D, Bool>>,
    ) -> Param<Tensor<D, Bool>> {
        self.inner.map_bool(param)
    }

    fn map_flag(&mut self, flag: Param<Flag>) -> Param<Flag> {
        flag
    }
}

/// Updates every shadow of `model` as of global step `step`, all in one batched pass through
/// `burn_ema_kernels::update_multi` (one parallel pass on the CPU backends, shared launches on
/// wgpu), which reads each parameter once per two shadows when there are several.
///
/// Everything is checked first (step order, structure, non-finite values where the policy asks):
/// on error nothing changes. A panic inside the update (a backend fault) leaves every shadow
/// usable: one whose tensors were taken out starts again from the live weights, then the panic
/// goes on.
pub(crate) fn update_shadows<M: Module>(
    model: &M,
    shadows: &mut [Shadow<M>],
    step: u64,
) -> Result<(), EmaError> {
    update_shadows_from(model, || live_leaves(model), shadows, step)
}

/// [`update_shadows`] from the live values `leaves` gives (a snapshot taken earlier, for a
/// background update); `model` is the live model they come from (its structure, for recovery
/// after a panic and for telling a distributed replica).
pub(crate) fn update_shadows_from<M: Module>(
    model: &M,
    leaves: impl FnOnce() -> Vec<Leaf>,
    shadows: &mut [Shadow<M>],
    step: u64,
) -> Result<(), EmaError> {
    for shadow in shadows.iter_mut() {
        if shadow.placement.is_away() && any_distributed(model) {
            shadow.detach();
        } else if !shadow.detached {
            shadow.settle();
        }
    }
    let result = catch_unwind(AssertUnwindSafe(|| update_unguarded(leaves, shadows, step)));
    match result {
        Ok(result) => result,
        Err(panic) => {
            for shadow in shadows.iter_mut() {
                shadow.recover(model);
            }
            resume_unwind(panic)
        }
    }
}

fn update_unguarded<M: Module>(
    leaves: impl FnOnce() -> Vec<Leaf>,
    shadows: &mut [Shadow<M>],
    step: u64,
) -> Result<(), EmaError> {
    let mut actions = Vec::with_capacity(shadows.len());
    for shadow in shadows.iter() {
        if shadow.detached {
            actions.push(StepAction::Skip);
            continue;
        }
        shadow.counter.check(step)?;
        actions.push(shadow.schedule.action_after(step, shadow.last_applied));
    }
    if actions.iter().all(|a| *a == StepAction::Skip) {
        for shadow in shadows.iter_mut() {
            shadow.counter.set(step);
        }
        return Ok(());
    }
    let leaves = leaves();
    for (shadow, action) in shadows.iter().zip(&actions) {
        if *action != StepAction::Skip {
            shadow.layout.check(&leaves)?;
        }
    }
    let live: Vec<Option<Value>> = leaves.into_iter().map(|l| Some(l.value)).collect();

    // Non-finite live values, where a shadow's policy looks for them.
    let checked: Vec<bool> = shadows
        .iter()
        .zip(&actions)
        .map(|(s, a)| *a != StepAction::Skip && s.config.non_finite != NonFinite::Propagate)
        .collect();
    if let Some(first) = checked.iter().position(|c| *c) {
        let layout = &shadows[first].layout;
        let averaged: Vec<(usize, Tensor<1>)> = live
            .iter()
            .enumerate()
            .filter(|(i, _)| layout.slots[*i].rule == Rule::Average)
            .filter_map(|(i, v)| match v {
                Some(Value::Float(t)) => Some((i, t.clone())),
                _ => None,
            })
            .collect();
        let counts = non_finite_counts(averaged.iter().map(|(_, t)| t.clone()).collect());
        let found = averaged
            .iter()
            .zip(counts)
            .find(|(_, n)| *n > 0)
            .map(|((slot, _), count)| (layout.slots[*slot].path.clone(), count));
        if let Some((path, count)) = found {
            let refuse = shadows
                .iter()
                .zip(&checked)
                .any(|(s, c)| *c && s.config.non_finite == NonFinite::Error);
            if refuse {
                return Err(EmaError::NonFinite { path, count });
            }
            for (k, shadow) in shadows.iter_mut().enumerate() {
                if checked[k] {
                    shadow.non_finite_skips += 1;
                    actions[k] = StepAction::Skip;
                }
            }
        }
    }

    // Pass one over every shadow that updates; then the tensors taken out, grouped by
    // parameter (and shadow type), so the shadows of one parameter share one read of it. The
    // modules stay out of their shadows until pass two: a panic in between leaves them missing,
    // which is what `recover` repairs.
    let mut held: Vec<Option<M>> = Vec::with_capacity(shadows.len());
    let mut owners: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut entries: Vec<(Vec<Tensor<1>>, Tensor<1>, Vec<f64>)> = Vec::new();
    let mut groups: HashMap<(usize, DType), usize> = HashMap::new();
    for (k, (shadow, action)) in shadows.iter_mut().zip(&actions).enumerate() {
        let Some(decay) = action.decay() else {
            held.push(None);
            continue;
        };
        let module = shadow
            .module
            .take()
            .expect("the shadow is present between calls");
        let mut take = TakeAveraged {
            layout: &shadow.layout,
            live: &live,
            decay,
            batch: Vec::new(),
        };
        held.push(Some(module.map(&mut RewriteLeaves::new(&mut take))));
        for (slot, s, value) in take.batch {
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
    let mut updated: Vec<Vec<(usize, Tensor<1>)>> = vec![Vec::new(); shadows.len()];
    let results = burn_ema_kernels::update_multi(entries);
    for ((slot, ks), tensors) in owners.into_iter().zip(results) {
        for (k, t) in ks.into_iter().zip(tensors) {
            updated[k].push((slot, t));
        }
    }
    // Pass two: the averaged tensors go back.
    for (((shadow, action), module), updated) in
        shadows.iter_mut().zip(&actions).zip(held).zip(updated)
    {
        shadow.counter.set(step);
        let (Some(decay), Some(module)) = (action.decay(), module) else {
            continue;
        };
        let mut values: Vec<Option<Value>> = vec![None; shadow.layout.slots.len()];
        for (slot, t) in updated {
            values[slot] = Some(Value::Float(t));
        }
        shadow.module = Some(module.map(&mut RewriteLeaves::new(&mut PutFloats { values })));
        shadow.last_decay = Some(decay);
        shadow.last_applied = Some(step);
    }
    Ok(())
}

impl Leaf {
    pub(crate) fn value_device(&self) -> Device {
        self.value.device().inner()
    }
}
