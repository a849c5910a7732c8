//! Swap mode: the model with the shadow weights, for evaluation, as a guard.
//!
//! The guard ([`Swapped`]) owns its own copy of the model structure holding the shadow's
//! tensors; the `EmaModule` itself never changes. So the swap is a boundary, not a convention:
//! the shadow weights are seen as the model only through the guard, and nothing else —
//! [`shadow`](crate::MovingAverage::shadow), a save, a record, the next update, the
//! [`model`](crate::MovingAverage::model) — can see or write them in the wrong place, whether the
//! guard is dropped, alive or leaked with `std::mem::forget`. (Before 1.0 the weights were
//! exchanged in place, and a leaked guard left them there.)
//!
//! No tensor data is copied where the shadow has the model's element type and device: the
//! guard's model shares the shadow's parameter buffers (BatchNorm's running statistics are
//! Burn's shared cells: the guard gets cells of its own, so a forward pass in training mode
//! through the guard changes neither the live model's statistics nor the shadow's).

use std::ops::Deref;

use burn::module::Module;

use super::EmaModule;
use crate::error::EmaError;
use crate::shadow::live_leaves;
use crate::walk::{Value, collect_leaves, independent_copy};

/// The model holding an [`EmaModule`]'s shadow weights, for as long as this guard lives.
///
/// It dereferences to a model that holds the shadow weights as autodiff leaves with the live
/// model's `require_grad` settings, on the live model's device, in the live model's mode: it
/// runs exactly like the live model — **in training mode**, so Dropout is active and BatchNorm
/// uses batch statistics. For evaluation, run `swapped.valid()` (evaluation mode, no
/// autodiff), or use [`EmaModule::with_shadow_weights`], which does that for you.
///
/// The guard borrows the `EmaModule`, so it cannot be trained or updated while the guard
/// lives; the `EmaModule` itself is never changed by a swap.
pub struct Swapped<'a, M: Module> {
    model: M,
    _ema: &'a EmaModule<M>,
}

impl<M: Module> Deref for Swapped<'_, M> {
    type Target = M;

    fn deref(&self) -> &M {
        &self.model
    }
}

impl<M: Module> EmaModule<M> {
    /// The model with the shadow weights until the returned guard is dropped, without copying
    /// tensor data where both have the same element type and device. Where the shadow has a
    /// wider type than the model (an `f32` shadow of `f16` weights), the guard's model holds a
    /// rounded copy; the shadow is untouched.
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
    /// }
    /// ema.update()?;
    /// # Ok::<(), burn_ema::EmaError>(())
    /// ```
    ///
    /// Fails when the model's structure no longer matches the shadow.
    pub fn swap(&self) -> Result<Swapped<'_, M>, EmaError> {
        let live = live_leaves(&self.model);
        let shadow = self.settled();
        shadow.held()?;
        shadow
            .layout()
            .check_live(&live, || collect_leaves(&self.model))?;
        let values = collect_leaves(shadow.module())
            .into_iter()
            .zip(live)
            .map(|(s, l)| match (s.value, l.value) {
                (Value::Float(s), Value::Float(l)) => {
                    Some(Value::Float(s.cast_like(l.dtype())).moved_to(&l.device()))
                }
                _ => None,
            })
            .collect();
        let model = independent_copy(&self.model, values);
        Ok(Swapped { model, _ema: self })
    }

    /// Runs `f` with the model holding the shadow weights in evaluation mode (`valid()`: no
    /// autodiff, Dropout off, BatchNorm on its running statistics — the shadow's). Like
    /// torch_ema's `average_parameters()`.
    ///
    /// ```
    /// # use burn_ema_core as burn_ema;
    /// use burn::nn::{Linear, LinearConfig};
    /// use burn::prelude::*;
    /// use burn_ema::{EmaConfig, EmaModule};
    ///
    /// let device = Device::flex().autodiff();
    /// let ema = EmaModule::new(LinearConfig::new(4, 2).init(&device), EmaConfig::new(0.99))?;
    /// let x = Tensor::<2>::ones([1, 4], &device.clone().inner());
    /// let y = ema.with_shadow_weights(|model| model.forward(x))?;
    /// assert_eq!(y.dims(), [1, 2]);
    /// # Ok::<(), burn_ema::EmaError>(())
    /// ```
    pub fn with_shadow_weights<R>(&self, f: impl FnOnce(&M) -> R) -> Result<R, EmaError> {
        let swapped = self.swap()?;
        let eval = swapped.valid();
        Ok(f(&eval))
    }
}
