//! [`TensorEma`]: a moving average of any tensor, as TensorFlow's EMA offers.

use burn::module::{Param, ParamId};
use burn::tensor::Tensor;

use crate::config::EmaConfig;
use crate::error::EmaError;
use crate::shadow::{Shadow, update_shadows};
use crate::update::check_same_tensor;

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
/// The average is the shadow of a one-parameter "model" (the tensor as a [`Param`]): the same
/// update path, schedule and step rules as `EmaModule`'s.
#[derive(Clone)]
pub struct TensorEma<const D: usize> {
    shadow: Shadow<Param<Tensor<D>>>,
    /// The id the tensor is wrapped with at each update (the shadow's structure check reads
    /// paths, kinds and shapes; the id only names the parameter).
    id: ParamId,
    /// Zero-debiasing: `Some(Π decay)` over the updates applied so far.
    decay_product: Option<f64>,
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
        Ok(Self {
            shadow,
            id,
            decay_product: None,
        })
    }

    /// A zero-debiased average (TensorFlow's `ExponentialMovingAverage(zero_debias=True)` and
    /// `assign_moving_average(..., zero_debias=True)`, optax's `ema(debias=True)`, Adam's bias
    /// correction): it starts at zero, and [`value`](Self::value) is the zero-started average
    /// divided by `1 - Π decay` over the updates so far, so it is an unbiased weighted mean of
    /// the values seen from the first update on, not pulled towards the starting point.
    ///
    /// With a constant decay `d` this is TensorFlow's and optax's `biased / (1 - d^t)`; with a
    /// warmup the product of the decays actually applied is used, which keeps the weights
    /// summing to one. `like` gives the shape, element type and device.
    ///
    /// ```
    /// # use burn_ema_core as burn_ema;
    /// use burn::prelude::*;
    /// use burn_ema::{EmaConfig, TensorEma};
    ///
    /// let device = Device::flex();
    /// let like = Tensor::<1>::zeros([1], &device);
    /// let mut mean = TensorEma::zero_debiased(like, &EmaConfig::new(0.9))?;
    /// mean.update(Tensor::<1>::from_floats([5.0], &device))?;
    /// // A plain EMA from zero would say 0.5; the debiased one says 5.
    /// let v: Vec<f32> = mean.value().into_data().try_into_vec_as().unwrap();
    /// assert!((v[0] - 5.0).abs() < 1e-6);
    /// # Ok::<(), burn_ema::EmaError>(())
    /// ```
    pub fn zero_debiased(like: Tensor<D>, config: &EmaConfig) -> Result<Self, EmaError> {
        let mut ema = Self::new(like.zeros_like(), config)?;
        ema.decay_product = Some(1.0);
        Ok(ema)
    }

    /// Whether [`value`](Self::value) is zero-debiased.
    pub fn is_zero_debiased(&self) -> bool {
        self.decay_product.is_some()
    }

    /// Moves the average towards `value`, at the step after the last one (the first update sees
    /// step 1, as in [`MovingAverage::update`](crate::MovingAverage::update)).
    pub fn update(&mut self, value: Tensor<D>) -> Result<(), EmaError> {
        self.update_with_step(value, self.num_updates() + 1)
    }

    /// Moves the average towards `value` as of global step `step` (any step, as TensorFlow's
    /// `apply` takes it: a repeated step applies that step's decay again; a power-function
    /// average refuses a step before the last).
    pub fn update_with_step(&mut self, value: Tensor<D>, step: u64) -> Result<(), EmaError> {
        let current = self.shadow.module().val();
        check_same_tensor(&current, &value)?;
        drop(current);
        let live = Param::initialized(self.id, value.inner());
        let applied = update_shadows(&live, std::slice::from_mut(&mut self.shadow), step)?;
        if let (Some(product), Some(decay)) = (&mut self.decay_product, applied[0]) {
            *product *= decay;
        }
        Ok(())
    }

    /// The current average (zero-debiased if made by [`zero_debiased`](Self::zero_debiased);
    /// zeros before its first update).
    pub fn value(&self) -> Tensor<D> {
        let biased = self.biased_value();
        match self.decay_product {
            Some(product) if product < 1.0 => biased.div_scalar(1.0 - product),
            _ => biased,
        }
    }

    /// The average as stored: for a zero-debiased average, before the division by
    /// `1 - Π decay` (TensorFlow's `biased` variable).
    pub fn biased_value(&self) -> Tensor<D> {
        self.shadow.module().val()
    }

    /// The number of updates (or the last step given).
    pub fn num_updates(&self) -> u64 {
        self.shadow.num_updates()
    }

    /// The decay the most recent update applied; `None` before the first.
    pub fn last_decay(&self) -> Option<f64> {
        self.shadow.last_decay()
    }
}
