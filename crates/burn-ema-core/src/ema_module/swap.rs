//! Swap mode: the shadow weights in the model for evaluation, for as long as a guard lives.
//!
//! The swap is a guard ([`Swapped`]) rather than a pair of calls so that training while swapped
//! cannot happen: the guard borrows the `EmaModule` mutably, so nothing can step, update, save or
//! hand it to the Learner until the guard is dropped — and dropping it (also by a panic) swaps
//! back. A checkpoint taken while swapped, which would resume from EMA weights as live ones (a
//! bug other libraries shipped), cannot be written.

use std::collections::HashMap;
use std::ops::Deref;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use burn::module::Module;

use super::EmaModule;
use crate::error::EmaError;
use crate::shadow::{PutFloats, live_leaves};
use crate::walk::{Leaf, RewriteLeaves, Value, collect_leaves};

/// What a swap keeps aside: the shadow tensors of the slots whose shadow type or device
/// differs from the model's (an `f32` shadow of `f16` weights, a shadow on the host), keyed by
/// slot, to be put back bit for bit; the model receives a copy in its own type, on its device.
#[derive(Clone, Debug, Default)]
pub(crate) struct SwapState {
    kept: HashMap<usize, Value>,
}

/// The shadow weights swapped into an [`EmaModule`]'s model, until this guard is dropped.
///
/// It dereferences to the model, which now holds the shadow weights as autodiff leaves with the
/// live model's `require_grad` settings, on the live model's device, in the live model's mode:
/// it runs exactly like the live model — **in training mode**, so Dropout is active and
/// BatchNorm uses batch statistics. For evaluation, run `swapped.valid()` (evaluation mode, no
/// autodiff), or use [`EmaModule::with_shadow_weights`], which does that for you.
///
/// Dropping the guard swaps back, bit for bit. While it lives, the `EmaModule` is borrowed:
/// it cannot be trained, updated or saved with the wrong weights in place.
pub struct Swapped<'a, M: Module> {
    ema: &'a mut EmaModule<M>,
}

impl<M: Module> Deref for Swapped<'_, M> {
    type Target = M;

    fn deref(&self) -> &M {
        &self.ema.model
    }
}

impl<M: Module> Drop for Swapped<'_, M> {
    fn drop(&mut self) {
        self.ema.swap_out();
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
    /// Swaps the shadow weights into the model until the returned guard is dropped, without
    /// copying tensor data where both have the same element type. Where the shadow has a wider
    /// type than the model (an `f32` shadow of `f16` weights), the model receives a rounded copy
    /// and the full-precision shadow is kept aside; dropping the guard restores both bit for
    /// bit.
    ///
    /// ```
    /// # use burn_ema_core as burn_ema;
    /// use burn::nn::{Linear, LinearConfig};
    /// use burn::prelude::*;
    /// use burn_ema::{EmaConfig, EmaModule, MovingAverage};
    ///
    /// let device = Device::flex().autodiff();
    /// let mut ema = EmaModule::new(LinearConfig::new(4, 2).init(&device), EmaConfig::new(0.99))?;
    /// {
    ///     let model = ema.swap()?; // the shadow weights, until `model` is dropped
    ///     let eval = model.valid(); // evaluation mode, no autodiff
    ///     let _y = eval.forward(Tensor::<2>::ones([1, 4], &device.clone().inner()));
    /// } // swapped back here
    /// ema.update()?;
    /// # Ok::<(), burn_ema::EmaError>(())
    /// ```
    ///
    /// Fails (changing nothing) when the model's structure no longer matches the shadow, or when
    /// the weights are already swapped (a guard leaked with `std::mem::forget`; the
    /// `into_*` methods swap back).
    pub fn swap(&mut self) -> Result<Swapped<'_, M>, EmaError> {
        let live = live_leaves(&self.model);
        self.unswapped("swap")?
            .layout()
            .check_live(&live, || collect_leaves(&self.model))?;
        let result = catch_unwind(AssertUnwindSafe(|| self.swap_in(live)));
        if let Err(panic) = result {
            self.shadow.recover(&self.model);
            resume_unwind(panic);
        }
        Ok(Swapped { ema: self })
    }

    /// Runs `f` with the model holding the shadow weights in evaluation mode (`valid()`: no
    /// autodiff, Dropout off, BatchNorm on its running statistics — the shadow's), and swaps
    /// back however `f` ends, a panic included. Like torch_ema's `average_parameters()`.
    ///
    /// ```
    /// # use burn_ema_core as burn_ema;
    /// use burn::nn::{Linear, LinearConfig};
    /// use burn::prelude::*;
    /// use burn_ema::{EmaConfig, EmaModule};
    ///
    /// let device = Device::flex().autodiff();
    /// let mut ema = EmaModule::new(LinearConfig::new(4, 2).init(&device), EmaConfig::new(0.99))?;
    /// let x = Tensor::<2>::ones([1, 4], &device.clone().inner());
    /// let y = ema.with_shadow_weights(|model| model.forward(x))?;
    /// assert_eq!(y.dims(), [1, 2]);
    /// # Ok::<(), burn_ema::EmaError>(())
    /// ```
    pub fn with_shadow_weights<R>(&mut self, f: impl FnOnce(&M) -> R) -> Result<R, EmaError> {
        let swapped = self.swap()?;
        let eval = swapped.valid();
        Ok(f(&eval))
    }

    /// The model takes the shadow (in the model's element types), the shadow takes the live
    /// weights, with synced buffers.
    fn swap_in(&mut self, live: Vec<Leaf>) {
        let live = float_values(live);
        let mut state = SwapState::default();
        let mut to_model = Vec::with_capacity(live.len());
        let shadow_values = float_values(collect_leaves(self.shadow.module()));
        for (i, (s, l)) in shadow_values.into_iter().zip(&live).enumerate() {
            to_model.push(match (s, l) {
                (Some(Value::Float(s)), Some(Value::Float(l)))
                    if s.dtype() != l.dtype() || s.device() != l.device() =>
                {
                    let rounded =
                        Value::Float(s.clone().cast_like(l.dtype())).moved_to(&l.device());
                    state.kept.insert(i, Value::Float(s));
                    Some(rounded)
                }
                (s, _) => s,
            });
        }
        self.exchange(to_model, live);
        self.swapped = Some(state);
    }

    /// The model takes back the live weights held by the shadow; the shadow takes back its
    /// own, from the model or from the full-precision copies. Nothing when not swapped.
    pub(crate) fn swap_out(&mut self) {
        let Some(mut state) = self.swapped.take() else {
            return;
        };
        let to_shadow = float_values(collect_leaves(&self.model))
            .into_iter()
            .enumerate()
            .map(|(i, v)| state.kept.remove(&i).or(v))
            .collect();
        let to_model = float_values(collect_leaves(self.shadow.module()));
        self.exchange(to_model, to_shadow);
    }

    /// Writes float values into the model (keeping each parameter's autodiff markers:
    /// `require_grad`, distributed, gradient checkpointing) and into the shadow (kept plain).
    fn exchange(&mut self, to_model: Vec<Option<Value>>, to_shadow: Vec<Option<Value>>) {
        let model = self
            .model
            .clone()
            .map(&mut RewriteLeaves::new(&mut PutFloats { values: to_model }));
        self.shadow.map_module(|m| {
            m.map(&mut RewriteLeaves::new(&mut PutFloats {
                values: to_shadow,
            }))
        });
        self.model = model;
    }
}
