//! Agreement with TensorFlow's `tf.train.ExponentialMovingAverage`, bit for bit in f32.

mod common;

use burn::prelude::*;
use burn_ema::{EmaConfig, EmaModule, MovingAverage, Schedule, TensorEma};
use common::{Scalar, devices, values};

/// TensorFlow's documented example: a variable that is 0 when the EMA is created, then set to
/// 10, and one update with decay 0.99.
#[test]
fn documented_example() {
    for device in devices() {
        let model = Scalar::new(&[0.0], &device.clone().autodiff());
        let mut ema = EmaModule::new(model, EmaConfig::new(0.99)).unwrap();
        ema.model_mut().set(&[10.0]);
        ema.update().unwrap();
        let shadow = values(&ema.shadow().value.val())[0];
        assert_eq!(shadow, 0.099999905f32, "{device:?}");
        assert_eq!(shadow.to_bits(), 0.099999905f32.to_bits());
        assert_eq!(values(&ema.model().value.val()), vec![10.0]);
    }
}

/// The book example of `tf.train.ExponentialMovingAverage` that this project reproduces (TensorFlow
/// 1.x, "TensorFlow: Practical Google Deep Learning Framework", 4.4.3; also in TensorFlow's own
/// `moving_averages` docs): `ExponentialMovingAverage(0.99, num_updates=step)` on `v1 = 0`,
/// `apply` at step 0 (shadow 0), `v1 = 5` and `apply` again at step 0 (TensorFlow prints 4.5),
/// then `step = 10000`, `v1 = 10`, `apply` (4.5549998) and once more (4.6094499). Two applies at
/// one step, each with that step's decay. The expected values are TensorFlow's printed outputs.
#[test]
fn book_example_applies_twice_at_one_step() {
    // As TensorFlow prints them (more digits than an f32 holds; each parses to its f32).
    #[allow(clippy::excessive_precision)]
    let expected = [0.0f32, 4.5, 4.5549998, 4.6094499];
    let config = EmaConfig::new(0.99).with_schedule(Schedule::TensorFlow);
    for device in devices() {
        // Through a module...
        let model = Scalar::new(&[0.0], &device.clone().autodiff());
        let mut ema = EmaModule::new(model, config.clone()).unwrap();
        let mut got = vec![];
        for (v1, step) in [(0.0, 0), (5.0, 0), (10.0, 10000), (10.0, 10000)] {
            ema.model_mut().set(&[v1]);
            ema.update_with_step(step).unwrap();
            got.push(values(&ema.shadow().value.val())[0]);
        }
        assert_eq!(
            bits_of(&got),
            bits_of(&expected),
            "EmaModule on {device:?}: {got:?}"
        );
        assert_eq!(ema.num_updates(), 10000);

        // ... and through a tensor's average, as the book's `ema.average(v1)`.
        let mut average = TensorEma::new(Tensor::<1>::zeros([1], &device), &config).unwrap();
        let mut got = vec![];
        for (v1, step) in [(0.0, 0), (5.0, 0), (10.0, 10000), (10.0, 10000)] {
            average
                .update_with_step(Tensor::<1>::from_floats([v1], &device), step)
                .unwrap();
            got.push(values(&average.value())[0]);
        }
        assert_eq!(
            bits_of(&got),
            bits_of(&expected),
            "TensorEma on {device:?}: {got:?}"
        );
    }
}

fn bits_of(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// TensorFlow's update in f32: `shadow -= (shadow - value) * (1 - decay)`, with
/// `decay = min(decay, (1 + n) / (10 + n))` computed in f32 when `num_updates` is given.
fn tf_reference(decay: f32, num_updates: bool, start: f32, inputs: &[f32], steps: &[u64]) -> f32 {
    let mut shadow = start;
    for (&x, &n) in inputs.iter().zip(steps) {
        let d = if num_updates {
            let n = n as f32;
            decay.min((1.0 + n) / (10.0 + n))
        } else {
            decay
        };
        shadow -= (shadow - x) * (1.0 - d);
    }
    shadow
}

#[test]
fn num_updates_sequence_matches_bit_for_bit() {
    let inputs: Vec<f32> = (0..200)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.173)
        .collect();
    for device in devices() {
        for (warmup, by_step) in [(Schedule::Constant, false), (Schedule::TensorFlow, true)] {
            let model = Scalar::new(&[1.5], &device);
            let config = EmaConfig::new(0.999).with_schedule(warmup.clone());
            let mut ema = EmaModule::new(model, config).unwrap();
            let mut steps = vec![];
            for (i, &x) in inputs.iter().enumerate() {
                ema.model_mut().set(&[x]);
                // Global steps as TF's num_updates, with gaps, through both entry points.
                if i % 2 == 0 {
                    ema.update().unwrap();
                } else {
                    ema.update_with_step(ema.num_updates() + 3).unwrap();
                }
                steps.push(ema.num_updates());
            }
            let expected = tf_reference(0.999, by_step, 1.5, &inputs, &steps);
            let got = values(&ema.shadow().value.val())[0];
            assert_eq!(
                got.to_bits(),
                expected.to_bits(),
                "{warmup:?} on {device:?}"
            );
        }
    }
}
