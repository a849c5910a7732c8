//! [`EmaModule`]: a model and its shadow weights.

use std::collections::HashMap;

use burn::module::{Module, ParamId};
use burn::tensor::{Device, Tensor};

use crate::config::EmaConfig;
use crate::error::EmaError;
use crate::layout::{Layout, Rule};
use crate::schedule::{DecaySchedule, StepAction};
use crate::update::{cast_like, ema_update, ema_update_many};
use crate::walk::{Leaf, LeafKind, LeafRewriter, RewriteLeaves, Value, collect_leaves};

/// A model with an exponential moving average of its weights (its "shadow").
///
/// Call [`update`](Self::update) after every optimizer step. Evaluate or export with the shadow
/// weights through [`shadow`](Self::shadow), [`into_shadow`](Self::into_shadow) or
/// [`swap`](Self::swap).
///
/// The shadow is built from `model.valid()`: it lives on each parameter's (non-autodiff) device,
/// has its own BatchNorm buffers, and its BatchNorm layers are in evaluation mode. Its
/// parameters carry their own [`ParamId`]s, derived from the model's, so an optimizer stepping an
/// `EmaModule` (it is itself a [`Module`]) finds gradients for the live model only, and never
/// touches the shadow. Nothing (`train()`, `fork`, `set_require_grad`, an optimizer) turns the
/// shadow into an autodiff or trainable module.
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
    /// Always `Some` between calls; taken out while it is rewritten so that its tensors are
    /// uniquely owned and can be updated in place.
    pub(crate) shadow: Option<M>,
    pub(crate) config: EmaConfig,
    pub(crate) schedule: DecaySchedule,
    pub(crate) layout: Layout,
    pub(crate) num_updates: u64,
    pub(crate) last_decay: Option<f64>,
    /// `Some` while swapped: the full-precision shadow tensors of the slots whose shadow type
    /// differs from the model's, keyed by slot, to be put back bit for bit.
    pub(crate) swapped: Option<HashMap<usize, Value>>,
    /// Where the update counter's tensor lives in records.
    pub(crate) counter_device: Device,
}

/// The shadow id of a live parameter id: a fixed bijective mix, so tied parameters (one id at
/// several paths) keep one shadow id, and shadow ids never collide with live ones in practice.
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

/// The first pass of an update over a shadow: copies what is copied, updates tied tensors, and
/// takes the tensors to average out (leaving the live value in their place for a moment) for
/// one batched update, after which [`put_back`] puts them back. Batching lets the CPU backends
/// run the whole update as one parallel pass; taking the tensors out keeps their buffers
/// uniquely owned, so they are written in place.
struct ApplyUpdate<'a> {
    layout: &'a Layout,
    live: Vec<Option<Value>>,
    decay: f64,
    tied: HashMap<ParamId, Value>,
    /// `(slot index, shadow, value)` of the averaged tensors taken out.
    batch: Vec<(usize, Tensor<1>, Tensor<1>)>,
}

impl LeafRewriter for ApplyUpdate<'_> {
    fn rewrite(&mut self, index: usize, id: ParamId, shadow: Value) -> (ParamId, Value) {
        let slot = &self.layout.slots[index];
        if slot.tied
            && let Some(done) = self.tied.get(&id)
        {
            return (id, done.clone());
        }
        let live = self.live[index]
            .take()
            .expect("each live tensor is used once");
        let new = match (shadow, live) {
            (Value::Float(s), Value::Float(p)) => match slot.rule {
                // A tied tensor is held twice, so never in place: no gain in batching it. Decays
                // 0 and 1 are exact copies and no-ops, which `ema_update` handles.
                Rule::Average if slot.tied || self.decay <= 0.0 || self.decay >= 1.0 => {
                    Value::Float(ema_update(s, p, self.decay))
                }
                Rule::Average => {
                    self.batch.push((index, s, p.clone()));
                    Value::Float(p)
                }
                Rule::Copy => Value::Float(cast_like(p, s.dtype())),
            },
            (_, live) => live,
        };
        if slot.tied {
            self.tied.insert(id, new.clone());
        }
        (id, new)
    }
}

/// Pass one of an update ([`ApplyUpdate`]): returns the shadow and the tensors taken out to be
/// averaged, as `(slot, shadow, value)`.
pub(crate) fn take_averaged<M: Module>(
    shadow: M,
    layout: &Layout,
    live: Vec<Option<Value>>,
    decay: f64,
) -> (M, Vec<(usize, Tensor<1>, Tensor<1>)>) {
    let mut apply = ApplyUpdate {
        layout,
        live,
        decay,
        tied: HashMap::new(),
        batch: Vec::new(),
    };
    let shadow = shadow.map(&mut RewriteLeaves::new(&mut apply));
    (shadow, apply.batch)
}

/// Pass two of an update: puts the averaged tensors, `(slot, tensor)`, back into the shadow.
pub(crate) fn put_back<M: Module>(
    shadow: M,
    layout: &Layout,
    updated: Vec<(usize, Tensor<1>)>,
) -> M {
    if updated.is_empty() {
        return shadow;
    }
    let mut values: Vec<Option<Value>> = vec![None; layout.slots.len()];
    for (slot, t) in updated {
        values[slot] = Some(Value::Float(t));
    }
    shadow.map(&mut RewriteLeaves::new(&mut PutFloats { values }))
}

/// A new shadow of `model` for `config`: the shadow, the layout, and the device of the update
/// counter's tensor.
pub(crate) fn new_shadow<M: Module>(
    model: &M,
    config: &EmaConfig,
) -> Result<(M, Layout, Device), EmaError> {
    config.validate()?;
    let snapshot = model.valid();
    let live = collect_leaves(&snapshot);
    if live.is_empty() {
        return Err(EmaError::EmptyModel);
    }
    let shadow = snapshot.map(&mut RewriteLeaves::new(&mut InitShadow { config }));
    let shadow_leaves = collect_leaves(&shadow);
    let layout = Layout::new(&live, &shadow_leaves, config)?;
    let counter_device = shadow_leaves[0].value_device();
    Ok((shadow, layout, counter_device))
}

/// Puts given float values into a module, slot by slot (int and bool tensors are kept).
struct PutFloats {
    values: Vec<Option<Value>>,
}

impl LeafRewriter for PutFloats {
    fn rewrite(&mut self, index: usize, id: ParamId, value: Value) -> (ParamId, Value) {
        match (
            value.kind(),
            self.values.get_mut(index).and_then(Option::take),
        ) {
            (LeafKind::Float, Some(new)) => (id, new),
            _ => (id, value),
        }
    }
}

fn float_values(leaves: Vec<Leaf>) -> Vec<Option<Value>> {
    leaves
        .into_iter()
        .map(|l| match l.value {
            v @ Value::Float(_) => Some(v),
            _ => None,
        })
        .collect()
}

impl<M: Module> EmaModule<M> {
    /// Wraps `model`, starting the shadow as a copy of its weights.
    ///
    /// Fails on an invalid configuration or a model without tensors.
    pub fn new(model: M, config: EmaConfig) -> Result<Self, EmaError> {
        let (shadow, layout, counter_device) = new_shadow(&model, &config)?;
        Ok(Self {
            model,
            shadow: Some(shadow),
            schedule: DecaySchedule::new(&config),
            config,
            layout,
            num_updates: 0,
            last_decay: None,
            swapped: None,
            counter_device,
        })
    }

    /// Updates the shadow after an optimizer step, advancing the update counter by one.
    ///
    /// The counter plays the role of TensorFlow's `num_updates` in its usual recipe, where the
    /// optimizer increments the global step before the EMA applies: the first `update()` sees
    /// `n = 1`. Use [`update_with_step`](Self::update_with_step) to pass a global step instead.
    pub fn update(&mut self) -> Result<(), EmaError> {
        self.update_with_step(self.num_updates + 1)
    }

    /// Updates the shadow as of global step `step` (TensorFlow's `num_updates`), and sets the
    /// update counter to `step`.
    ///
    /// On error (the model's structure no longer matches the shadow, or the weights are
    /// swapped), nothing changes.
    pub fn update_with_step(&mut self, step: u64) -> Result<(), EmaError> {
        if self.swapped.is_some() {
            return Err(EmaError::Swapped {
                operation: "update",
            });
        }
        let decay = match self.schedule.action(step) {
            StepAction::Skip => {
                self.num_updates = step;
                return Ok(());
            }
            StepAction::Copy => 0.0,
            StepAction::Average(decay) => decay,
        };
        // `valid()` syncs buffers that `RunningState` may hold back by one update.
        let live = collect_leaves(&self.model.valid());
        self.layout.check(&live)?;
        let live = live.into_iter().map(|l| Some(l.value)).collect();
        let shadow = self
            .shadow
            .take()
            .expect("the shadow is present between calls");
        let (shadow, batch) = take_averaged(shadow, &self.layout, live, decay);
        let (slots, pairs): (Vec<usize>, Vec<_>) =
            batch.into_iter().map(|(i, s, p)| (i, (s, p))).unzip();
        let updated = slots
            .into_iter()
            .zip(ema_update_many(pairs, decay))
            .collect();
        self.shadow = Some(put_back(shadow, &self.layout, updated));
        self.num_updates = step;
        self.last_decay = Some(decay);
        Ok(())
    }

    /// The live (trained) model; the shadow weights while [swapped](Self::swap).
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The live model, mutably, e.g. to step it with an optimizer. Its structure must stay the
    /// same: the next [`update`](Self::update) checks it.
    pub fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }

    /// The shadow weights as a plain (non-autodiff) module in evaluation mode; the live weights
    /// while [swapped](Self::swap).
    pub fn shadow(&self) -> &M {
        self.shadow
            .as_ref()
            .expect("the shadow is present between calls")
    }

    /// The configuration.
    pub fn config(&self) -> &EmaConfig {
        &self.config
    }

    /// The update counter: the number of `update()` calls, or the last step given to
    /// [`update_with_step`](Self::update_with_step).
    pub fn num_updates(&self) -> u64 {
        self.num_updates
    }

    /// The decay applied by the most recent update (0 for a copy); before the first update, the
    /// one the next [`update`](Self::update) would apply.
    pub fn current_decay(&self) -> f64 {
        self.last_decay
            .unwrap_or_else(|| self.decay_at_step(self.num_updates + 1))
    }

    /// The decay an update at global step `step` would apply (0 for a copy, the configured
    /// decay for a step that `update_every` skips).
    pub fn decay_at_step(&self, step: u64) -> f64 {
        self.schedule
            .action(step)
            .decay()
            .unwrap_or(self.config.decay)
    }

    /// The number of tensors that are averaged (the others are copied).
    pub fn num_averaged(&self) -> usize {
        self.layout.num_averaged()
    }

    /// Exchanges the live and shadow weights, without copying tensor data where both have the
    /// same element type.
    ///
    /// While swapped, [`model`](Self::model) holds the shadow weights (as autodiff leaves with
    /// the live model's `require_grad` settings, so it runs like the live model) and
    /// [`shadow`](Self::shadow) holds the live weights (plain). A second `swap` restores both
    /// bit for bit. Where the shadow has a wider type than the model (an `f32` shadow of `f16`
    /// weights), the model receives a rounded copy and the full-precision shadow is kept aside.
    ///
    /// Swap back before training, updating (refused while swapped) or saving.
    pub fn swap(&mut self) {
        let shadow = self
            .shadow
            .take()
            .expect("the shadow is present between calls");
        let mut shadow_values = float_values(collect_leaves(&shadow));
        let (to_model, to_shadow) = match self.swapped.take() {
            None => {
                // Swap in: the model takes the shadow (in the model's type), the shadow takes
                // the live weights, with synced buffers.
                let live = float_values(collect_leaves(&self.model.valid()));
                let mut kept = HashMap::new();
                let mut to_model = Vec::with_capacity(live.len());
                for (i, (s, l)) in shadow_values.iter_mut().zip(&live).enumerate() {
                    let new = match (s.take(), l) {
                        (Some(Value::Float(s)), Some(Value::Float(l)))
                            if s.dtype() != l.dtype() =>
                        {
                            let rounded = cast_like(s.clone(), l.dtype());
                            kept.insert(i, Value::Float(s));
                            Some(Value::Float(rounded))
                        }
                        (s, _) => s,
                    };
                    to_model.push(new);
                }
                self.swapped = Some(kept);
                (to_model, live)
            }
            Some(mut kept) => {
                // Swap out: the model takes back the live weights held by the shadow; the shadow
                // takes back its own, from the model or from the full-precision copies.
                let model_values = float_values(collect_leaves(&self.model));
                let to_shadow = model_values
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| kept.remove(&i).or(v))
                    .collect();
                (shadow_values, to_shadow)
            }
        };
        self.model = self
            .model
            .clone()
            .map(&mut RewriteLeaves::new(&mut PutFloats { values: to_model }));
        self.shadow = Some(shadow.map(&mut RewriteLeaves::new(&mut PutFloats {
            values: to_shadow,
        })));
    }

    /// Whether the shadow weights are swapped into the model.
    pub fn is_swapped(&self) -> bool {
        self.swapped.is_some()
    }

    /// The live model (swapped back first if needed).
    pub fn into_model(mut self) -> M {
        if self.is_swapped() {
            self.swap();
        }
        self.model
    }

    /// The shadow model (swapped back first if needed): a plain module in evaluation mode that
    /// runs, saves and exports like the bare model.
    pub fn into_shadow(mut self) -> M {
        if self.is_swapped() {
            self.swap();
        }
        self.shadow.expect("the shadow is present between calls")
    }

    /// Both models, live first (swapped back first if needed).
    pub fn into_parts(mut self) -> (M, M) {
        if self.is_swapped() {
            self.swap();
        }
        let shadow = self.shadow.expect("the shadow is present between calls");
        (self.model, shadow)
    }
}

impl Leaf {
    pub(crate) fn value_device(&self) -> Device {
        match &self.value {
            Value::Float(t) => t.device(),
            Value::Int(t) => t.device(),
            Value::Bool(t) => t.device(),
        }
        .inner()
    }
}
