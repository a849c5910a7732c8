//! Property tests of every schedule and of the update against an f64 scalar reference.

#![allow(deprecated)] // NdArray is deprecated in Burn 0.22, and still tested.

mod common;

use burn::prelude::*;
use burn_ema::{DecaySchedule, EmaConfig, EmaModule, StepAction, TensorEma, Warmup};
use common::{Scalar, values, values_f64};
use proptest::prelude::*;

/// The reference schedule, written independently from the library in f64 (f32 for TF's ramp,
/// which TensorFlow computes in f32).
fn reference_decay(config: &EmaConfig, step: u64) -> Option<f64> {
    if !step.is_multiple_of(config.update_every) {
        return None;
    }
    if step <= config.update_after_step {
        return Some(0.0);
    }
    let n = (step - config.update_after_step) as f64;
    let clamp = |d: f64| d.min(config.decay).max(config.min_decay);
    Some(match config.warmup {
        Warmup::None => config.decay,
        Warmup::NumUpdates => {
            let r = ((1.0f32 + n as f32) / (10.0f32 + n as f32)).min(config.decay as f32);
            (r as f64).max(config.min_decay)
        }
        Warmup::Power { inv_gamma, power } => {
            let t = n - 1.0;
            if t <= 0.0 {
                0.0
            } else {
                clamp(1.0 - (1.0 + t / inv_gamma).powf(-power))
            }
        }
        Warmup::PowerFunction { gamma } => clamp((1.0 - 1.0 / n).powf(gamma + 1.0)),
    })
}

fn warmups() -> impl Strategy<Value = Warmup> {
    prop_oneof![
        Just(Warmup::None),
        Just(Warmup::NumUpdates),
        (0.1f64..10.0, 0.1f64..2.0)
            .prop_map(|(inv_gamma, power)| Warmup::Power { inv_gamma, power }),
        (0.0f64..20.0).prop_map(|gamma| Warmup::PowerFunction { gamma }),
    ]
}

fn configs() -> impl Strategy<Value = EmaConfig> {
    (0.0f64..=1.0, 0.0f64..=1.0, warmups(), 0u64..20, 1u64..5).prop_map(
        |(decay, min_frac, warmup, after, every)| {
            EmaConfig::new(decay)
                .with_min_decay(decay * min_frac * 0.5)
                .with_warmup(warmup)
                .with_update_after_step(after)
                .with_update_every(every)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn schedule_matches_reference(config in configs(), step in 0u64..100_000) {
        config.validate().unwrap();
        let schedule = DecaySchedule::new(&config);
        let expected = reference_decay(&config, step);
        let got = schedule.action(step);
        match (expected, got) {
            (None, StepAction::Skip) => {}
            (Some(e), action) => {
                let d = action.decay().expect("not a skip");
                prop_assert!((d - e).abs() <= 1e-12 * e.abs().max(1.0), "{d} vs {e}");
                prop_assert!((0.0..=1.0).contains(&d));
            }
            (None, other) => prop_assert!(false, "expected a skip, got {other:?}"),
        }
    }

    /// The module update in f64 against the f64 scalar reference, over a run of steps.
    #[test]
    fn module_update_matches_reference(
        config in configs(),
        start in prop::collection::vec(-100.0f64..100.0, 1..6),
        steps in 1usize..30,
    ) {
        let device = Device::flex();
        let n = start.len();
        let to32: Vec<f32> = start.iter().map(|&x| x as f32).collect();
        let model = Scalar::new(&to32, &device);
        let mut ema = EmaModule::new(model, config.clone().with_shadow_dtype(burn_ema::ShadowDType::F64)).unwrap();
        let mut reference: Vec<f64> = to32.iter().map(|&x| x as f64).collect();
        for step in 1..=steps as u64 {
            let live: Vec<f32> = (0..n).map(|i| ((step as f32) * 0.37 + i as f32).sin() * 10.0).collect();
            ema.model_mut().set(&live);
            ema.update().unwrap();
            if let Some(d) = reference_decay(&config, step) {
                for (r, &x) in reference.iter_mut().zip(&live) {
                    *r -= (*r - x as f64) * (1.0 - d);
                }
            }
        }
        let got = values_f64(&ema.shadow().value.val());
        for (g, r) in got.iter().zip(&reference) {
            prop_assert!((g - r).abs() <= 1e-9 * r.abs().max(1.0), "{g} vs {r}");
        }
    }

    /// The f32 update is within f32 rounding of the f64 reference.
    #[test]
    fn f32_update_is_close_to_reference(
        decay in 0.5f64..0.99999,
        shadow in prop::collection::vec(-1e3f32..1e3, 1..40),
        live_seed in any::<u32>(),
    ) {
        let device = Device::ndarray();
        let live: Vec<f32> = shadow.iter().enumerate()
            .map(|(i, s)| s + (((live_seed as usize + i * 7919) % 1000) as f32 - 500.0) * 0.01)
            .collect();
        let mut ema = TensorEma::new(
            Tensor::<1>::from_data(TensorData::new(shadow.clone(), [shadow.len()]), &device),
            &EmaConfig::new(decay),
        ).unwrap();
        ema.update(Tensor::<1>::from_data(TensorData::new(live.clone(), [live.len()]), &device)).unwrap();
        let got = values(&ema.value());
        for ((g, s), p) in got.iter().zip(&shadow).zip(&live) {
            let r = decay * *s as f64 + (1.0 - decay) * *p as f64;
            let tol = 4.0 * f32::EPSILON as f64 * (s.abs().max(p.abs()) as f64).max(1e-30);
            prop_assert!((*g as f64 - r).abs() <= tol, "{g} vs {r}");
        }
    }
}
