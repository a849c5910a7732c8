//! [`update_bn`]: BatchNorm's running statistics recomputed for averaged weights, as PyTorch's
//! `torch.optim.swa_utils.update_bn` does for SWA.
//!
//! Averaged weights come with running statistics averaged too (or copied from the last step),
//! neither of which describes the activations the averaged weights produce; SWA's authors
//! recompute them with one pass over training data. PyTorch resets each BatchNorm's running
//! mean and variance, sets its momentum to `None` (a cumulative average over the batches),
//! runs the model in training mode over a loader, and restores the momenta and the mode.
//!
//! Burn's `BatchNorm` has no cumulative mode, and a model's momenta are not reachable through
//! a module walk. So each running statistic is read instead: for every batch it is set to 0,
//! the forward writes `m·s` (`m` the layer's momentum, `s` the batch's statistic), and `s` is
//! recovered; the first batch runs once more with the statistic at 1 to read `m`
//! (`(1 − m) + m·s`). The result is the mean of the batches' statistics, PyTorch's cumulative
//! average. Any layer that keeps its statistics in Burn's `RunningState` this way is covered.

use burn::module::{Module, ParamId};
use burn::prelude::Tensor;

use crate::error::EmaError;
use crate::walk::PutFloats;
use crate::walk::{Float, LeafRewriter, RewriteLeaves, Value, collect_leaves};

/// Recomputes the running statistics of every BatchNorm (every float `RunningState`) of `model`
/// over `batches`, as PyTorch's `update_bn` does: each becomes the mean over the batches of the
/// batch's statistic (the mean, and for the running variance Burn's batch variance, which is
/// the biased one where PyTorch keeps the unbiased one: a factor `(n − 1)/n` for batches of `n`
/// values per channel). Returns the model for evaluation, `model.valid()` with the new
/// statistics; `model` itself, its weights, statistics and modes, is unchanged.
///
/// `forward(&model, batch)` runs the model on a batch in training mode: the model it is given
/// is `model.valid().train()` (on the autodiff version of `model`'s device, training flags on),
/// so the batch's tensors must be on that autodiff device (`device.autodiff()`). Each batch is
/// cloned once more for the first (tensors clone cheaply).
///
/// Fails with [`EmaError::BatchNorm`] when `batches` is empty, or when no statistic changed
/// over the first batch (the forward did not run a BatchNorm in training mode: inputs not on
/// an autodiff device, or the layers frozen). A model without running statistics comes back
/// as `model.valid()`.
///
/// ```
/// # use burn_ema_core as burn_ema;
/// use burn::nn::{BatchNorm, BatchNormConfig};
/// use burn::prelude::*;
///
/// let device = Device::flex();
/// let bn: BatchNorm = BatchNormConfig::new(2).init(&device);
/// let batches = vec![[[1.0f32, 10.0], [3.0, 30.0]], [[5.0, 50.0], [7.0, 70.0]]];
/// let bn = burn_ema::update_bn(&bn, batches, |bn, batch| {
///     let x = Tensor::<2>::from_floats(batch, &device.clone().autodiff());
///     let _ = bn.forward(x);
/// })?;
/// // The mean of the batch means: (2 + 6) / 2 = 4 and (20 + 60) / 2 = 40.
/// let mean: Vec<f32> = bn.running_mean.value().into_data().try_to_vec().unwrap();
/// assert!((mean[0] - 4.0).abs() < 1e-5 && (mean[1] - 40.0).abs() < 1e-4);
/// # Ok::<(), burn_ema::EmaError>(())
/// ```
pub fn update_bn<M: Module, B: Clone>(
    model: &M,
    batches: impl IntoIterator<Item = B>,
    mut forward: impl FnMut(&M, B),
) -> Result<M, EmaError> {
    let running = running_slots(model);
    if !running.iter().any(|r| *r) {
        return Ok(model.valid());
    }
    let mut batches = batches.into_iter();
    let Some(first) = batches.next() else {
        return Err(EmaError::BatchNorm {
            problem: "no batches were given".into(),
        });
    };
    // A copy with running states of its own (`valid` makes new ones), in training mode.
    let work = model.valid().train();
    // The first batch twice: from 1, then from 0; the difference gives each momentum.
    set_running(&work, &running, 1.0);
    forward(&work, first.clone());
    let from_one = read_running(&work, &running);
    set_running(&work, &running, 0.0);
    forward(&work, first);
    let from_zero = read_running(&work, &running);
    let momenta: Vec<Option<Tensor<1>>> = from_one
        .into_iter()
        .zip(&from_zero)
        .map(|(one, zero)| Some(one?.sub(zero.clone()?).neg().add_scalar(1.0)))
        .collect();
    let moved = |m: &Tensor<1>| m.clone().abs().max().into_scalar::<f64>() > 0.0;
    if !momenta.iter().flatten().any(moved) {
        return Err(EmaError::BatchNorm {
            problem: "the forward changed no running statistic: run the model on inputs on an \
                      autodiff device (`device.autodiff()`), with its BatchNorm layers not frozen"
                .into(),
        });
    }
    // A batch's statistic from what the forward wrote from 0 (`m·s`); where the momentum is 0
    // the layer does not follow batches, and keeps its statistic (see below).
    let statistic = |written: Option<Tensor<1>>, m: &Option<Tensor<1>>| {
        let (written, m) = (written?, m.clone()?);
        let still = m.clone().equal_elem(0.0);
        Some(written.div(m.mask_fill(still, 1.0)))
    };
    let mut sums: Vec<Option<Tensor<1>>> = from_zero
        .into_iter()
        .zip(&momenta)
        .map(|(w, m)| statistic(w, m))
        .collect();
    let mut count = 1usize;
    for batch in batches {
        set_running(&work, &running, 0.0);
        forward(&work, batch);
        let written = read_running(&work, &running);
        for ((sum, written), m) in sums.iter_mut().zip(written).zip(&momenta) {
            if let (Some(total), Some(s)) = (sum.take(), statistic(written, m)) {
                *sum = Some(total.add(s));
            }
        }
        count += 1;
    }
    // The mean over the batches where the momentum moved the statistic, the old value where
    // it did not.
    let old = read_running(model, &running);
    let values = sums
        .into_iter()
        .zip(momenta)
        .zip(old)
        .map(|((sum, m), old)| {
            let mean = sum?.div_scalar(count as f64);
            let still = m?.equal_elem(0.0);
            Some(Value::Float(Float::new(mean.mask_where(still, old?))))
        })
        .collect();
    let fresh = model.valid();
    Ok(fresh.map(&mut RewriteLeaves::new(&mut PutFloats { values })))
}

/// Which leaves of `model` are float running states: the ones whose id a mapper cannot change
/// (Burn's `RunningState` keeps its own id whatever a mapper gives it).
fn running_slots<M: Module>(model: &M) -> Vec<bool> {
    struct NewIds;
    impl LeafRewriter for NewIds {
        fn rewrite(&mut self, _index: usize, _id: ParamId, value: Value) -> (ParamId, Value) {
            (ParamId::new(), value)
        }
    }
    let before = collect_leaves(model);
    // On a copy with running states of its own: mapping one writes into it.
    let after = collect_leaves(&model.valid().map(&mut RewriteLeaves::new(&mut NewIds)));
    before
        .iter()
        .zip(&after)
        .map(|(b, a)| matches!(b.value, Value::Float(_)) && a.id == b.id)
        .collect()
}

/// Sets every running statistic of `model` (in place: running states are shared cells) to
/// `value`.
fn set_running<M: Module>(model: &M, running: &[bool], value: f64) {
    let values = collect_leaves(model)
        .into_iter()
        .zip(running)
        .map(|(leaf, r)| match leaf.value {
            Value::Float(t) if *r => {
                let t = t.flat();
                Some(Value::Float(Float::new(t.zeros_like().add_scalar(value))))
            }
            _ => None,
        })
        .collect();
    let _ = model
        .clone()
        .map(&mut RewriteLeaves::new(&mut PutFloats { values }));
}

/// Every running statistic of `model` (flat, plain), `None` for the other leaves.
fn read_running<M: Module>(model: &M, running: &[bool]) -> Vec<Option<Tensor<1>>> {
    collect_leaves(&model.valid())
        .into_iter()
        .zip(running)
        .map(|(leaf, r)| match leaf.value {
            Value::Float(t) if *r => Some(t.flat()),
            _ => None,
        })
        .collect()
}
