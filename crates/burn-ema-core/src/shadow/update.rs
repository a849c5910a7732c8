//! The update of one or several shadows of a model as of one step, in one batched pass
//! through `burn_ema_kernels::update_multi` (one parallel pass on the CPU backends, shared
//! launches on CubeCL), which reads each parameter once per two shadows when there are several.
//!
//! Every average goes through here: [`EmaModule`](crate::EmaModule) with one shadow,
//! [`MultiEma`](crate::MultiEma) with several, [`TensorEma`](crate::TensorEma) with the shadow
//! of a one-tensor module, and the background update of an offloaded `EmaModule`.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use burn::backend::{DispatchTensor, TensorMetadata};
use burn::module::Module;
use burn::tensor::{DType, Tensor};

use super::Shadow;
use super::rewrite::TakeAveraged;
use crate::config::NonFinite;
use crate::error::EmaError;
use crate::layout::{Layout, Rule};
use crate::placement::any_distributed;
use crate::schedule::StepAction;
use crate::update::{non_finite_counts, one_minus_decay};
use crate::walk::PutFloats;
use crate::walk::{Float, Leaf, RewriteLeaves, Value, collect_leaves, collect_values};

/// The live model's tensors as an update reads them: synced buffers (`valid()`), float tensors
/// at their own rank, in traversal order, without their paths (the layout checks them by id:
/// [`Layout::check_live`]).
pub(crate) fn live_leaves<M: Module>(model: &M) -> Vec<Leaf> {
    // `valid()` syncs buffers that `RunningState` may hold back by one update.
    collect_values(&model.valid())
}

/// Updates every shadow of `model` as of global step `step`; returns the decay each shadow
/// applied (`None` where it did not change: a step that `update_every` skips, a detached
/// replica, an update skipped for a non-finite value).
///
/// Everything is checked first (step order, structure, non-finite values where the policy asks):
/// on error nothing changes. A panic inside the update (a backend fault) leaves every shadow
/// usable: one whose tensors were taken out starts again from the live weights, then the panic
/// goes on.
pub(crate) fn update_shadows<M: Module>(
    model: &M,
    shadows: &mut [Shadow<M>],
    step: u64,
) -> Result<Vec<Option<f64>>, EmaError> {
    update_shadows_from(model, || live_leaves(model), shadows, step, None)
}

/// [`update_shadows`] at `decay` (checked by the caller) for every shadow, whatever its
/// schedule says (an explicit decay: `EmaModule::update_with_decay`).
pub(crate) fn update_shadows_at_decay<M: Module>(
    model: &M,
    shadows: &mut [Shadow<M>],
    step: u64,
    decay: f64,
) -> Result<Vec<Option<f64>>, EmaError> {
    update_shadows_from(model, || live_leaves(model), shadows, step, Some(decay))
}

/// [`update_shadows`] from the live values `leaves` gives (a snapshot taken earlier, for a
/// background update); `model` is the live model they come from (its structure, for recovery
/// after a panic and for telling a distributed replica). `decay`, if given, replaces every
/// shadow's schedule for this update.
pub(crate) fn update_shadows_from<M: Module>(
    model: &M,
    leaves: impl FnOnce() -> Vec<Leaf>,
    shadows: &mut [Shadow<M>],
    step: u64,
    decay: Option<f64>,
) -> Result<Vec<Option<f64>>, EmaError> {
    for shadow in shadows.iter_mut() {
        if shadow.placement.is_away() && any_distributed(model) {
            shadow.detach();
        } else if !shadow.detached {
            shadow.settle();
            shadow.placement.start_update();
        }
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        update_unguarded(model, leaves, shadows, step, decay)
    }));
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
    model: &M,
    leaves: impl FnOnce() -> Vec<Leaf>,
    shadows: &mut [Shadow<M>],
    step: u64,
    decay: Option<f64>,
) -> Result<Vec<Option<f64>>, EmaError> {
    let mut actions = plan(shadows, step, decay)?;
    if actions.iter().all(|a| *a == StepAction::Skip) {
        for shadow in shadows.iter_mut() {
            shadow.counter.set(step);
        }
        return Ok(vec![None; shadows.len()]);
    }
    let leaves = leaves();
    for (shadow, action) in shadows.iter().zip(&actions) {
        if *action != StepAction::Skip {
            shadow
                .layout
                .check_live(&leaves, || collect_leaves(model))?;
        }
    }
    for (shadow, action) in shadows.iter_mut().zip(&actions) {
        if *action != StepAction::Skip {
            shadow.layout.remember_ids(&leaves);
        }
    }
    let live: Vec<Option<Value>> = leaves.into_iter().map(|l| Some(l.value)).collect();
    skip_non_finite(shadows, &mut actions, &live)?;

    // Pass one over every shadow that updates: copies, and the averaged tensors taken out. The
    // modules stay out of their shadows until pass two: a panic in between leaves them
    // missing, which is what `recover` repairs.
    let mut batch = Batch::default();
    let held: Vec<Option<M>> = shadows
        .iter_mut()
        .zip(&actions)
        .enumerate()
        .map(|(k, (shadow, action))| {
            let decay = action.decay()?;
            Some(batch.take_from(k, shadow, &live, decay))
        })
        .collect();
    let updated = batch.run(shadows.len());
    // Pass two: the averaged tensors go back.
    let mut applied = Vec::with_capacity(shadows.len());
    for (((shadow, action), module), updated) in
        shadows.iter_mut().zip(&actions).zip(held).zip(updated)
    {
        shadow.counter.set(step);
        let (Some(decay), Some(module)) = (action.decay(), module) else {
            applied.push(None);
            continue;
        };
        let mut values: Vec<Option<Value>> = vec![None; shadow.layout.slots.len()];
        for (slot, t) in updated {
            values[slot] = Some(Value::Float(Float::from_dispatch(t)));
        }
        shadow.put(module.map(&mut RewriteLeaves::new(&mut PutFloats { values })));
        shadow.last_decay = Some(decay);
        shadow.last_applied = Some(step);
        applied.push(Some(decay));
    }
    Ok(applied)
}

/// What each shadow does at `step` (checked: a power-function EMA refuses an earlier step):
/// its schedule's action, or averaging at `decay` when one is given.
fn plan<M: Module>(
    shadows: &[Shadow<M>],
    step: u64,
    decay: Option<f64>,
) -> Result<Vec<StepAction>, EmaError> {
    shadows
        .iter()
        .map(|shadow| {
            if shadow.detached {
                return Ok(StepAction::Skip);
            }
            shadow.check_step(step)?;
            Ok(match decay {
                Some(decay) => StepAction::Average(decay),
                None => shadow.schedule.action_after(step, shadow.last_applied),
            })
        })
        .collect()
}

/// Looks for non-finite live values where a shadow's policy asks: refuses the update when any
/// such shadow says [`NonFinite::Error`], else turns every checking shadow's action into a
/// skip (counted).
fn skip_non_finite<M: Module>(
    shadows: &mut [Shadow<M>],
    actions: &mut [StepAction],
    live: &[Option<Value>],
) -> Result<(), EmaError> {
    let checked: Vec<bool> = shadows
        .iter()
        .zip(actions.iter())
        .map(|(s, a)| *a != StepAction::Skip && s.config.options.non_finite != NonFinite::Propagate)
        .collect();
    let Some(first) = checked.iter().position(|c| *c) else {
        return Ok(());
    };
    let Some((path, count)) = first_non_finite(&shadows[first].layout, live) else {
        return Ok(());
    };
    let refuse = shadows
        .iter()
        .zip(&checked)
        .any(|(s, c)| *c && s.config.options.non_finite == NonFinite::Error);
    if refuse {
        return Err(EmaError::NonFinite { path, count });
    }
    for ((shadow, action), checked) in shadows.iter_mut().zip(actions).zip(checked) {
        if checked {
            shadow.non_finite_skips += 1;
            *action = StepAction::Skip;
        }
    }
    Ok(())
}

/// The path and count of the first averaged live tensor holding a non-finite value.
fn first_non_finite(layout: &Layout, live: &[Option<Value>]) -> Option<(String, usize)> {
    let averaged: Vec<(usize, Tensor<1>)> = live
        .iter()
        .enumerate()
        .filter(|(i, _)| layout.slots[*i].rule == Rule::Average)
        .filter_map(|(i, v)| match v {
            Some(Value::Float(t)) => Some((i, t.clone().flat())),
            _ => None,
        })
        .collect();
    let counts = non_finite_counts(averaged.iter().map(|(_, t)| t.clone()).collect());
    averaged
        .iter()
        .zip(counts)
        .find(|(_, n)| *n > 0)
        .map(|((slot, _), count)| (layout.slots[*slot].path.clone(), count))
}

/// The averaged tensors of every updating shadow, grouped by parameter (and shadow element
/// type), so the shadows of one parameter share one read of it.
#[derive(Default)]
struct Batch {
    /// Per group: the slot and the shadows (by index) it holds a tensor of.
    owners: Vec<(usize, Vec<usize>)>,
    /// Per group: the shadows' tensors, the live value (any rank, as the engine takes them),
    /// and each shadow's `1 - decay`.
    entries: Vec<(Vec<DispatchTensor>, DispatchTensor, Vec<f64>)>,
    groups: HashMap<(usize, DType), usize>,
}

impl Batch {
    /// Takes shadow `k`'s averaged tensors out of its module (copying what it copies) and
    /// returns the module to put them back into.
    fn take_from<M: Module>(
        &mut self,
        k: usize,
        shadow: &mut Shadow<M>,
        live: &[Option<Value>],
        decay: f64,
    ) -> M {
        let module = shadow.take();
        let mut take = TakeAveraged {
            layout: &shadow.layout,
            placement: &shadow.placement,
            live,
            decay,
            batch: Vec::new(),
        };
        let module = module.map(&mut RewriteLeaves::new(&mut take));
        for (slot, s, value) in take.batch {
            let (s, value) = (s.into_dispatch(), value.into_dispatch());
            let weight = one_minus_decay(decay, s.dtype());
            let group = *self.groups.entry((slot, s.dtype())).or_insert_with(|| {
                self.owners.push((slot, Vec::new()));
                self.entries.push((Vec::new(), value, Vec::new()));
                self.entries.len() - 1
            });
            self.owners[group].1.push(k);
            self.entries[group].0.push(s);
            self.entries[group].2.push(weight);
        }
        module
    }

    /// Runs the batched update; returns each of `n` shadows' new tensors by slot.
    fn run(self, n: usize) -> Vec<Vec<(usize, DispatchTensor)>> {
        let mut updated: Vec<Vec<(usize, DispatchTensor)>> = vec![Vec::new(); n];
        let results = burn_ema_kernels::update_multi_dispatch(self.entries);
        for ((slot, ks), tensors) in self.owners.into_iter().zip(results) {
            for (k, t) in ks.into_iter().zip(tensors) {
                updated[k].push((slot, t));
            }
        }
        updated
    }
}
