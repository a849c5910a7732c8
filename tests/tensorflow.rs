//! Agreement with TensorFlow's `tf.train.ExponentialMovingAverage`, bit for bit in f32.

mod common;

use burn_ema::{EmaConfig, EmaModule, Warmup};
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
        for (warmup, by_step) in [(Warmup::None, false), (Warmup::NumUpdates, true)] {
            let model = Scalar::new(&[1.5], &device);
            let config = EmaConfig::new(0.999).with_warmup(warmup.clone());
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
