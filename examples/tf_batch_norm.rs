//! TensorFlow's batch-norm recipe with [`TensorEma`]: a batch-norm layer whose batch moments
//! are averaged by exponential moving averages during training, and whose averages are used
//! at evaluation — what TensorFlow's tutorials build with `tf.train.ExponentialMovingAverage`
//! and `tf.cond(phase_train, ...)`, next to Burn's own `BatchNorm`, which keeps the same
//! running statistics internally (its `momentum` 0.1 is a decay of 0.9).
//!
//! ```text
//! cargo run --release --example tf_batch_norm --features flex
//! ```
//!
//! Its tests (`cargo test --example tf_batch_norm --features flex`) check the recipe against
//! Burn's `BatchNorm` and the zero-debiased averages against their closed form.

use burn::module::{Module, Param};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::{batch_norm, batch_norm_train};
use burn_ema::{EmaConfig, EmaError, TensorEma};

/// A batch-norm layer's trained scale and shift; its statistics live in [`Moments`].
#[derive(Module, Debug)]
struct MomentsNorm {
    gamma: Param<Tensor<1>>,
    beta: Param<Tensor<1>>,
}

/// The moving averages of the batch moments (TensorFlow's `ema.apply([batch_mean, batch_var])`).
struct Moments {
    mean: TensorEma<1>,
    var: TensorEma<1>,
}

const EPSILON: f64 = 1e-5;

impl Moments {
    /// Averages starting where Burn's `BatchNorm` starts (mean 0, variance 1), with decay 0.9.
    fn like_burn(features: usize, device: &Device) -> Result<Self, EmaError> {
        let config = EmaConfig::new(0.9);
        Ok(Self {
            mean: TensorEma::new(Tensor::zeros([features], device), &config)?,
            var: TensorEma::new(Tensor::ones([features], device), &config)?,
        })
    }

    /// Zero-debiased averages (TensorFlow's `zero_debias=True`): unbiased from the first batch.
    fn zero_debiased(features: usize, device: &Device) -> Result<Self, EmaError> {
        let config = EmaConfig::new(0.9);
        let like = Tensor::zeros([features], device);
        Ok(Self {
            mean: TensorEma::zero_debiased(like.clone(), &config)?,
            var: TensorEma::zero_debiased(like, &config)?,
        })
    }
}

impl MomentsNorm {
    fn new(features: usize, device: &Device) -> Self {
        Self {
            gamma: Param::from_tensor(Tensor::ones([features], device)),
            beta: Param::from_tensor(Tensor::zeros([features], device)),
        }
    }

    /// Training: normalise with the batch's moments, and move their averages (TensorFlow's
    /// `mean_var_with_update`).
    fn forward_train(&self, x: Tensor<2>, moments: &mut Moments) -> Result<Tensor<2>, EmaError> {
        let batch = batch_norm_train(x, self.gamma.val(), self.beta.val(), EPSILON);
        moments.mean.update(batch.mean)?;
        moments.var.update(batch.variance)?;
        Ok(batch.output)
    }

    /// Evaluation: normalise with the averages (TensorFlow's `ema.average(batch_mean)`).
    fn forward_eval(&self, x: Tensor<2>, moments: &Moments) -> Tensor<2> {
        let device = x.device();
        batch_norm(
            x,
            self.gamma.val(),
            self.beta.val(),
            moments.mean.value().to_device(&device),
            moments.var.value().to_device(&device),
            EPSILON,
        )
    }
}

/// Batches of `features` columns with column `j` drawn from N(j + 3, 2²).
fn batches(n: usize, features: usize, device: &Device) -> Vec<Tensor<2>> {
    let shift = Tensor::<1, Int>::arange(0..features as i64, device)
        .float()
        .add_scalar(3.0);
    (0..n)
        .map(|_| {
            Tensor::<2>::random([16, features], Distribution::Normal(0.0, 2.0), device)
                .add(shift.clone().unsqueeze::<2>())
        })
        .collect()
}

/// Runs the recipe and Burn's `BatchNorm` on the same batches; returns both layers' evaluation
/// outputs on `probe` and the recipe's averages.
fn run(
    train: &[Tensor<2>],
    probe: Tensor<2>,
    mut moments: Moments,
) -> Result<(Tensor<2>, Tensor<2>, Moments), EmaError> {
    let device = probe.device();
    let features = probe.dims()[1];
    let ours = MomentsNorm::new(features, &device);
    let burns: BatchNorm = BatchNormConfig::new(features).init(&device.clone().autodiff());
    for x in train {
        ours.forward_train(x.clone(), &mut moments)?;
        burns.forward(Tensor::from_inner(x.clone()).require_grad());
    }
    let ours_eval = ours.forward_eval(probe.clone(), &moments);
    let burns_eval = burns.valid().forward(probe);
    Ok((ours_eval, burns_eval, moments))
}

/// A vector's values, rounded.
fn show(t: Tensor<1>) -> String {
    let v: Vec<f32> = t.into_data().try_into_vec_as().expect("floats");
    let v: Vec<String> = v.iter().map(|x| format!("{x:.3}")).collect();
    format!("[{}]", v.join(", "))
}

fn main() -> Result<(), EmaError> {
    let device = Device::flex();
    device.seed(7);
    let features = 4;
    let train = batches(50, features, &device);
    let probe = batches(1, features, &device).remove(0);
    let (ours, burns, moments) = run(&train, probe, Moments::like_burn(features, &device)?)?;
    let diff: f32 = ours.sub(burns).abs().max().into_scalar();
    println!("TensorFlow's batch-norm recipe with TensorEma (decay 0.9), 50 batches:");
    println!("  averaged batch mean: {}", show(moments.mean.value()));
    println!("  averaged batch var:  {}", show(moments.var.value()));
    println!("  largest difference from Burn's BatchNorm at evaluation: {diff:e}");

    let (_, _, debiased) = run(
        &train[..3],
        train[0].clone(),
        Moments::zero_debiased(features, &device)?,
    )?;
    let (_, _, plain) = run(
        &train[..3],
        train[0].clone(),
        Moments::like_burn(features, &device)?,
    )?;
    println!("after 3 batches (true means 3, 4, 5, 6):");
    println!("  zero-debiased mean: {}", show(debiased.mean.value()));
    println!("  started at 0:       {}", show(plain.mean.value()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_into_vec_as().unwrap()
    }

    /// The recipe with TensorEma is Burn's BatchNorm: same running statistics, same outputs in
    /// evaluation (Burn's layer is an outside reference here: its own code, momentum 0.1).
    #[test]
    fn the_recipe_matches_burns_batch_norm() {
        let device = Device::flex();
        device.seed(11);
        let train = batches(20, 3, &device);
        let probe = batches(1, 3, &device).remove(0);
        let (ours, burns, _) = run(
            &train,
            probe.clone(),
            Moments::like_burn(3, &device).unwrap(),
        )
        .unwrap();
        let (ours, burns) = (values(ours), values(burns));
        for (a, b) in ours.iter().zip(&burns) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
        // Not trivially so: normalising with the probe's own moments (training mode) differs.
        let ones = Tensor::ones([3], &device);
        let own = values(batch_norm_train(probe, ones.clone(), ones.zeros_like(), EPSILON).output);
        let apart = own
            .iter()
            .zip(&ours)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(apart > 0.05, "{apart}");
    }

    /// Zero-debiased averages by hand: decay 0.9, values 1 then 2. TensorFlow's `biased` is
    /// 0.1 then 0.29; the debiased values are 0.1 / 0.1 = 1 and 0.29 / 0.19 = 29/19.
    #[test]
    fn zero_debias_by_hand() {
        let device = Device::flex();
        let like = Tensor::<1>::zeros([1], &device);
        let mut ema = TensorEma::zero_debiased(like, &EmaConfig::new(0.9)).unwrap();
        assert!(ema.is_zero_debiased());
        let v = |t: Tensor<1>| t.into_data().try_into_vec_as::<f32>().unwrap()[0];
        assert_eq!(v(ema.value()), 0.0, "zeros before the first update");
        ema.update(Tensor::from_floats([1.0], &device)).unwrap();
        assert!((v(ema.biased_value()) - 0.1).abs() < 1e-7);
        assert!((v(ema.value()) - 1.0).abs() < 1e-6);
        ema.update(Tensor::from_floats([2.0], &device)).unwrap();
        assert!((v(ema.biased_value()) - 0.29).abs() < 1e-7);
        assert!((v(ema.value()) - 29.0 / 19.0).abs() < 1e-6);
        // A skipped step (update_every) changes neither the average nor the correction.
        let config = EmaConfig::new(0.5).with_update_every(2);
        let like = Tensor::<1>::zeros([1], &device);
        let mut ema = TensorEma::zero_debiased(like, &config).unwrap();
        for x in [10.0, 4.0, 99.0, 8.0] {
            ema.update(Tensor::from_floats([x], &device)).unwrap();
        }
        // Steps 2 and 4 apply 4 and 8: biased 0.5·4 = 2, then 0.5·2 + 0.5·8 = 5; 1 - 0.25.
        assert!((v(ema.value()) - 5.0 / 0.75).abs() < 1e-5);
    }

    /// After a few batches the debiased mean is near the true means; the zero-started one is
    /// pulled towards 0.
    #[test]
    fn zero_debiased_moments_are_unbiased_early() {
        let device = Device::flex();
        device.seed(5);
        let train = batches(3, 4, &device);
        let probe = train[0].clone();
        let (_, _, debiased) = run(
            &train,
            probe.clone(),
            Moments::zero_debiased(4, &device).unwrap(),
        )
        .unwrap();
        let (_, _, plain) = run(&train, probe, Moments::like_burn(4, &device).unwrap()).unwrap();
        let d: Vec<f32> = debiased.mean.value().into_data().try_into_vec_as().unwrap();
        let p: Vec<f32> = plain.mean.value().into_data().try_into_vec_as().unwrap();
        for (j, (d, p)) in d.iter().zip(&p).enumerate() {
            let truth = j as f32 + 3.0;
            assert!((d - truth).abs() < 1.0, "feature {j}: {d}");
            assert!(*p < 0.5 * truth, "feature {j}: {p}");
        }
    }
}
