//! [`TensorEma`]: a moving average of any tensor, as TensorFlow's EMA offers.

use burn::module::{Param, ParamId};
use burn::tensor::Tensor;

use crate::config::EmaConfig;
use crate::error::EmaError;
use crate::shadow::{Shadow, update_shadows};

/// An exponential moving average of a tensor that is not a module parameter, e.g. the batch
/// moments of TensorFlow's batch-norm recipe, a loss, or activation statistics.
///
/// It follows the same schedule as [`EmaModule`](crate::EmaModule) (all of
/// [`EmaConfig`]'s decay fields apply; the module-only ones are ignored).
///
/// ```
/// # use burn_ema_core as burn_ema;
/// use burn::prelude::*;
/// use burn_ema::{EmaConfig, TensorEma};
///
/// let device = Device::flex();
/// let mut mean = TensorEma::new(Tensor::<1>::zeros([3], &device), &EmaConfig::new(0.9))?;
/// mean.update(Tensor::<1>::ones([3], &device))?;
/// let v: Vec<f32> = mean.value().into_data().try_into_vec_as().unwrap();
/// assert!((v[0] - 0.1).abs() < 1e-6);
/// # Ok::<(), burn_ema::EmaError>(())
/// ```
///
/// The average is a [`Shadow`] of a one-parameter "model" (the tensor as a [`Param`]): the same
/// update path, schedule and step rules as `EmaModule`'s.
#[derive(Clone)]
pub struct TensorEma<const D: usize> {
    shadow: Shadow<Param<Tensor<D>>>,
    /// The id the tensor is wrapped with at each update (the shadow's structure check reads
    /// paths, kinds and shapes; the id only names the parameter).
    id: ParamId,
}

impl<const D: usize> std::fmt::Debug for TensorEma<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorEma")
            .field("value", self.shadow.module())
            .field("num_updates", &self.num_updates())
            .finish_non_exhaustive()
    }
}

impl<const D: usize> TensorEma<D> {
    /// Starts the average at `initial` (kept in the configured shadow type, on its device,
    /// without autodiff).
    pub fn new(initial: Tensor<D>, config: &EmaConfig) -> Result<Self, EmaError> {
        // The module-only fields do not apply to a tensor.
        let config = config.clone().with_exclude(Vec::new());
        let id = ParamId::new();
        let shadow = Shadow::new(&Param::initialized(id, initial.inner()), config)?;
        Ok(Self { shadow, id })
    }

    /// Moves the average towards `value`, at the step after the last one (the first update sees
    /// step 1, as in [`EmaModule::update`](crate::EmaModule::update)).
    pub fn update(&mut self, value: Tensor<D>) -> Result<(), EmaError> {
        self.update_with_step(value, self.shadow.next_step())
    }

    /// Moves the average towards `value` as of global step `step`; steps must increase.
    pub fn update_with_step(&mut self, value: Tensor<D>, step: u64) -> Result<(), EmaError> {
        let current = self.shadow.module().val();
        if value.dims() != current.dims() {
            return Err(EmaError::TensorMismatch {
                problem: format!(
                    "shape {:?}, the average has {:?}",
                    value.dims(),
                    current.dims()
                ),
            });
        }
        if value.device().inner() != current.device() {
            return Err(EmaError::TensorMismatch {
                problem: format!(
                    "device {:?}, the average is on {:?}",
                    value.device(),
                    current.device()
                ),
            });
        }
        drop(current);
        let live = Param::initialized(self.id, value.inner());
        update_shadows(&live, std::slice::from_mut(&mut self.shadow), step)
    }

    /// The current average.
    pub fn value(&self) -> Tensor<D> {
        self.shadow.module().val()
    }

    /// The number of updates (or the last step given).
    pub fn num_updates(&self) -> u64 {
        self.shadow.num_updates()
    }

    /// The decay applied by the most recent update; `None` before the first.
    pub fn current_decay(&self) -> Option<f64> {
        self.shadow.last_decay()
    }
}
