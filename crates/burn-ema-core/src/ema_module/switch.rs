//! Switch EMA (Li et al. 2024, "Switch EMA: A Free Lunch for Better Flatness and Sharpness";
//! Keras's `ema_overwrite_frequency`, ema-pytorch's `update_model_with_ema_every`): the EMA
//! written back into the live weights from time to time, so training goes on from the flatter
//! averaged point.

use burn::module::Module;
use serde::{Deserialize, Serialize};

use super::EmaModule;
use crate::error::EmaError;
use crate::layout::Rule;
use crate::schedule::check_unit;
use crate::shadow::live_leaves;
use crate::walk::PutFloats;
use crate::walk::{Float, Value, collect_leaves};

/// When an [`EmaModule`]'s [`update`](crate::MovingAverage::update) writes the EMA into the
/// live weights (see [`EmaModule::with_switch`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwitchEvery {
    /// After the update of every step that is a multiple of this (`>= 1`). For Switch EMA's
    /// "at each epoch end" with Burn's Learner, the number of steps per epoch.
    pub steps: u64,
    /// `live = (1 - blend) · live + blend · ema`: 1 copies (Switch EMA, Keras, ema-pytorch).
    pub blend: f64,
}

impl SwitchEvery {
    /// Copies the EMA into the live weights every `steps` steps.
    pub fn steps(steps: u64) -> Self {
        Self { steps, blend: 1.0 }
    }

    /// Blends instead of copying: `live = (1 - blend) · live + blend · ema`.
    pub fn with_blend(self, blend: f64) -> Self {
        Self { blend, ..self }
    }

    fn validate(&self) -> Result<(), EmaError> {
        if self.steps == 0 {
            return Err(EmaError::invalid("switch.steps", "must be at least 1"));
        }
        check_blend(self.blend)
    }
}

fn check_blend(blend: f64) -> Result<(), EmaError> {
    check_unit("blend", blend)
}

impl<M: Module> EmaModule<M> {
    /// Switch EMA on a schedule: after the update of every `switch.steps`-th step,
    /// [`switch_to_model`](Self::switch_to_model) runs with `switch.blend`. Works the same in
    /// a custom loop and under Burn's Learner (which calls `update`).
    ///
    /// ```
    /// # use burn_ema_core as burn_ema;
    /// use burn::nn::{Linear, LinearConfig};
    /// use burn::prelude::*;
    /// use burn_ema::{EmaConfig, EmaModule, SwitchEvery};
    ///
    /// let device = Device::flex().autodiff();
    /// let model: Linear = LinearConfig::new(4, 2).init(&device);
    /// // Switch EMA with an epoch of 500 steps: the EMA replaces the live weights at each
    /// // epoch's end.
    /// let mut ema = EmaModule::new(model, EmaConfig::new(0.999))?
    ///     .with_switch(SwitchEvery::steps(500))?;
    /// # Ok::<(), burn_ema::EmaError>(())
    /// ```
    pub fn with_switch(mut self, switch: SwitchEvery) -> Result<Self, EmaError> {
        switch.validate()?;
        self.switch = Some(switch);
        Ok(self)
    }

    /// Writes the EMA into the live weights: `live = (1 - blend) · live + blend · shadow` for
    /// every averaged tensor (`blend = 1` copies), in the live tensors' element types and on
    /// their devices. Each live parameter keeps its id and its autodiff markers
    /// (`require_grad`), so the optimizer's state (momenta) stays attached and training goes on.
    /// Tensors the EMA copies (excluded paths, copied buffers, integers) are left alone.
    ///
    /// Call it at an epoch's end for Switch EMA's per-epoch schedule, or let
    /// [`with_switch`](Self::with_switch) call it every few steps. Fails (changing nothing) on a
    /// `blend` outside `[0, 1]` or on a structure mismatch.
    pub fn switch_to_model(&mut self, blend: f64) -> Result<(), EmaError> {
        check_blend(blend)?;
        let (model, slot) = self.settled_mut()?;
        let live = live_leaves(model);
        slot.layout().check_live(&live, || collect_leaves(model))?;
        let shadow = collect_leaves(slot.module());
        let values = live
            .into_iter()
            .zip(shadow)
            .zip(&slot.layout().slots)
            .map(|((live, shadow), slot)| match (live.value, shadow.value) {
                (Value::Float(l), Value::Float(s)) if slot.rule == Rule::Average => {
                    let s = Value::Float(s.cast_like(l.dtype())).moved_to(&l.device());
                    let Value::Float(s) = s else { unreachable!() };
                    Some(Value::Float(if blend == 1.0 {
                        s
                    } else {
                        let (l, s) = (l.flat(), s.flat());
                        Float::new(l.mul_scalar(1.0 - blend).add(s.mul_scalar(blend)))
                    }))
                }
                _ => None,
            })
            .collect();
        *model = model
            .clone()
            .map(&mut crate::walk::RewriteLeaves::new(&mut PutFloats {
                values,
            }));
        Ok(())
    }

    /// Runs the Switch EMA schedule after the update of `step`.
    pub(crate) fn switch_after(&mut self, step: u64) -> Result<(), EmaError> {
        match self.switch {
            Some(s) if step > 0 && step.is_multiple_of(s.steps) => self.switch_to_model(s.blend),
            _ => Ok(()),
        }
    }
}
