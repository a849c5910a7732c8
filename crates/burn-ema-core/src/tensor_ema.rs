//! [`TensorEma`]: a moving average of any tensor, as TensorFlow's EMA offers.

use burn::tensor::Tensor;

use crate::config::EmaConfig;
use crate::error::EmaError;
use crate::schedule::{DecaySchedule, StepAction};
use crate::update::{cast_like, ema_update};

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
#[derive(Clone, Debug)]
pub struct TensorEma<const D: usize> {
    value: Tensor<D>,
    schedule: DecaySchedule,
    num_updates: u64,
    last_decay: Option<f64>,
}

impl<const D: usize> TensorEma<D> {
    /// Starts the average at `initial` (kept in the configured shadow type, on its device,
    /// without autodiff).
    pub fn new(initial: Tensor<D>, config: &EmaConfig) -> Result<Self, EmaError> {
        config.validate()?;
        let initial = initial.inner();
        let dtype = config.shadow_dtype.resolve(initial.dtype());
        let shape = initial.shape();
        let n = shape.num_elements();
        let value = cast_like(initial.reshape([n]), dtype).reshape(shape);
        Ok(Self {
            value,
            schedule: DecaySchedule::new(config),
            num_updates: 0,
            last_decay: None,
        })
    }

    /// Moves the average towards `value`, advancing the counter by one (the first update sees
    /// `n = 1`, as in [`EmaModule::update`](crate::EmaModule::update)).
    pub fn update(&mut self, value: Tensor<D>) -> Result<(), EmaError> {
        self.update_with_step(value, self.num_updates + 1)
    }

    /// Moves the average towards `value` as of global step `step`.
    pub fn update_with_step(&mut self, value: Tensor<D>, step: u64) -> Result<(), EmaError> {
        if value.dims() != self.value.dims() {
            return Err(EmaError::TensorMismatch {
                problem: format!(
                    "shape {:?}, the average has {:?}",
                    value.dims(),
                    self.value.dims()
                ),
            });
        }
        if value.device() != self.value.device() {
            return Err(EmaError::TensorMismatch {
                problem: format!(
                    "device {:?}, the average is on {:?}",
                    value.device(),
                    self.value.device()
                ),
            });
        }
        let decay = match self.schedule.action(step) {
            StepAction::Skip => {
                self.num_updates = step;
                return Ok(());
            }
            StepAction::Copy => 0.0,
            StepAction::Average(d) => d,
        };
        let shape = self.value.shape();
        let n = shape.num_elements();
        let current = std::mem::replace(&mut self.value, value.clone().inner());
        let updated = ema_update(current.reshape([n]), value.reshape([n]), decay);
        self.value = updated.reshape(shape);
        self.num_updates = step;
        self.last_decay = Some(decay);
        Ok(())
    }

    /// The current average.
    pub fn value(&self) -> Tensor<D> {
        self.value.clone()
    }

    /// The number of updates (or the last step given).
    pub fn num_updates(&self) -> u64 {
        self.num_updates
    }

    /// The decay applied by the most recent update.
    pub fn current_decay(&self) -> Option<f64> {
        self.last_decay
    }
}
