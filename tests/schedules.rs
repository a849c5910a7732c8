//! Property tests of every schedule and of the update against an f64 scalar reference.

#![allow(deprecated)] // NdArray is deprecated in Burn 0.22, and still tested.

mod common;

use burn::prelude::*;
use burn_ema::{
    EmaConfig, EmaError, EmaFile, EmaModule, MovingAverage, Schedule, TensorEma,
    gamma_to_sigma_rel, sigma_rel_to_gamma,
};
use common::{Scalar, values, values_f64};
use proptest::prelude::*;

/// Decay values of the published schedules, computed outside this crate by
/// `tests/fixtures/make_schedules.py` (exact rationals for TensorFlow's f32 arithmetic,
/// 50-digit decimals for the power laws).
fn fixture() -> serde_json::Value {
    serde_json::from_str(include_str!("fixtures/schedules.json")).expect("the fixture parses")
}

/// The fixture's cases under `key`: a loop over them must not pass by being empty.
fn cases<'a>(fixture: &'a serde_json::Value, key: &str) -> &'a Vec<serde_json::Value> {
    let cases = fixture[key]
        .as_array()
        .unwrap_or_else(|| panic!("the fixture has `{key}`"));
    assert!(
        cases.len() >= 3,
        "the fixture's `{key}` has {} cases",
        cases.len()
    );
    cases
}

fn f64_of(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("`{key}` in {v}"))
}

fn u64_of(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("`{key}` in {v}"))
}

/// A decimal string of the fixture, as the nearest f64.
fn decimal(v: &serde_json::Value) -> f64 {
    v["value"]
        .as_str()
        .expect("a decimal string")
        .parse()
        .expect("a number")
}

/// TensorFlow's `apply` with `num_updates = n`, bit for bit, for every `n` the fixture has —
/// step 0 (`min(decay, 1/10)`) and the cap (0.999 reached at n = 8990) included.
#[test]
fn tensorflow_num_updates_bit_exact() {
    let fixture = fixture();
    let cases = cases(&fixture, "tensorflow");
    assert!(cases.len() >= 10);
    for case in cases {
        let config = EmaConfig::new(f64_of(case, "decay")).with_schedule(Schedule::TensorFlow);
        let n = u64_of(case, "num_updates");
        let bits = u32::from_str_radix(case["f32_bits"].as_str().unwrap(), 16).unwrap();
        let want = f32::from_bits(bits);
        let got = config.decay_at_step(n).expect("an average");
        assert_eq!(got, want as f64, "num_updates = {n}");
        // And through the module: `update_with_step(n)` applies exactly that decay.
        let device = Device::flex();
        let mut ema = EmaModule::new(Scalar::new(&[1.0], &device), config).unwrap();
        ema.update_with_step(n).unwrap();
        assert_eq!(ema.last_decay(), Some(want as f64), "num_updates = {n}");
    }
}

/// timm's and diffusers' warmup, `1 − (1 + t/inv_gamma)^(−power)` with `t = step − 1`.
#[test]
fn power_warmup_matches_diffusers_and_timm() {
    let fixture = fixture();
    for case in cases(&fixture, "power_warmup") {
        let config = EmaConfig::new(f64_of(case, "decay"))
            .with_min_decay(f64_of(case, "min_decay"))
            .with_schedule(Schedule::Warmup {
                inv_gamma: f64_of(case, "inv_gamma"),
                power: f64_of(case, "power"),
            });
        let step = u64_of(case, "step");
        let got = config.decay_at_step(step).unwrap();
        let want = decimal(case);
        assert!((got - want).abs() <= 1e-15, "step {step}: {got} vs {want}");
    }
}

/// ema-pytorch's `update_after_step`: its k-th update copies for k ≤ 101 (its 0-based step ≤
/// 100), then warms up from `epoch = 1`; an `EmaModule` with the same settings gives the same
/// decay at its k-th `update()`.
#[test]
fn update_after_step_matches_ema_pytorch() {
    let fixture = fixture();
    for case in cases(&fixture, "ema_pytorch") {
        let config = EmaConfig::new(f64_of(case, "decay"))
            .with_update_after_step(u64_of(case, "update_after_step"))
            .with_schedule(Schedule::Warmup {
                inv_gamma: f64_of(case, "inv_gamma"),
                power: f64_of(case, "power"),
            });
        let k = u64_of(case, "step");
        let got = config.decay_at_step(k).unwrap();
        let want = decimal(case);
        assert!((got - want).abs() <= 1e-15, "update {k}: {got} vs {want}");
    }
}

/// EDM2's power-function profile, `β(t) = (1 − 1/t)^(γ+1)`.
#[test]
fn power_function_matches_edm2() {
    let fixture = fixture();
    for case in cases(&fixture, "edm2") {
        let config = EmaConfig::new(1.0).with_schedule(Schedule::PowerFunction {
            gamma: f64_of(case, "gamma"),
        });
        let t = u64_of(case, "step");
        let got = config.decay_at_step(t).unwrap();
        let want = decimal(case);
        assert!((got - want).abs() <= 1e-14, "t = {t}: {got} vs {want}");
    }
}

/// EDM2's profile widths (`exp_to_std`, `std_to_exp`), against 50-digit values, both ways;
/// widths out of range are refused.
#[test]
fn power_profile_widths_match_edm2() {
    let fixture = fixture();
    let cases = cases(&fixture, "edm2_width");
    let parse = |v: &serde_json::Value| v.as_str().unwrap().parse::<f64>().unwrap();
    for case in cases {
        if case["gamma"].is_string() {
            let sigma_rel = f64_of(case, "sigma_rel");
            let want = parse(&case["gamma"]);
            let got = sigma_rel_to_gamma(sigma_rel).unwrap();
            assert!(
                (got - want).abs() <= 1e-12 * want.max(1.0),
                "sigma_rel {sigma_rel}: {got} vs {want}"
            );
            let back = gamma_to_sigma_rel(got);
            assert!((back - sigma_rel).abs() <= 1e-15, "{back} vs {sigma_rel}");
        } else {
            let gamma = f64_of(case, "gamma");
            let want = parse(&case["sigma_rel"]);
            let got = gamma_to_sigma_rel(gamma);
            assert!(
                (got - want).abs() <= 1e-15 * want.max(1e-3),
                "gamma {gamma}: {got} vs {want}"
            );
        }
    }
    for bad in [0.0, -0.1, 0.3, f64::NAN, f64::INFINITY] {
        assert!(
            matches!(
                sigma_rel_to_gamma(bad),
                Err(EmaError::InvalidConfig {
                    field: "sigma_rel",
                    ..
                })
            ),
            "{bad}"
        );
    }
    assert!(sigma_rel_to_gamma(gamma_to_sigma_rel(0.0)).unwrap() < 1e-12);
}

/// DINO's teacher momentum (`cosine_scheduler`, DINO 0.996 and DINOv3 0.992 to 1, and a curve
/// ending below 1): iteration `it` (from 0) is the `(it + 1)`-th `update()`.
#[test]
fn cosine_momentum_matches_dinos_cosine_scheduler() {
    let fixture = fixture();
    let cases = cases(&fixture, "dino");
    assert!(cases.len() >= 40);
    for case in cases {
        let (base, last) = (f64_of(case, "base"), f64_of(case, "final"));
        let steps = u64_of(case, "epochs") * u64_of(case, "niter_per_ep");
        let config = EmaConfig::new(1.0).with_schedule(Schedule::Cosine {
            start: base,
            end: last,
            steps,
        });
        if last == 1.0 {
            assert_eq!(EmaConfig::dino_teacher(base, steps), config);
        }
        let it = u64_of(case, "iteration");
        let got = config.decay_at_step(it + 1).unwrap();
        let want = decimal(case);
        assert!(
            (got - want).abs() <= 4e-16,
            "iteration {it}: {got} vs {want}"
        );
        // Past the schedule's end, the decay stays at `final`.
        assert_eq!(config.decay_at_step(steps + 1 + it), Some(last));
    }
    // Through the module: each `update()` applies the next iteration's momentum.
    let dino: Vec<&serde_json::Value> = cases
        .iter()
        .filter(|c| f64_of(c, "base") == 0.996)
        .collect();
    let mut ema = EmaModule::new(
        Scalar::new(&[1.0], &Device::flex()),
        EmaConfig::dino_teacher(0.996, dino.len() as u64),
    )
    .unwrap();
    for case in dino {
        ema.update().unwrap();
        let got = ema.last_decay().unwrap();
        assert!(
            (got - decimal(case)).abs() <= 4e-16,
            "update {}",
            ema.num_updates()
        );
    }
}

/// BYOL's target decay, `τ_k = 1 − (1 − τ_base)(cos(πk/K) + 1)/2` at training step `k`, after
/// which the `(k + 1)`-th `update()` runs; 1 from `k = K` on.
#[test]
fn byol_target_decay_matches_byol() {
    let fixture = fixture();
    for case in cases(&fixture, "byol") {
        let config = EmaConfig::byol_target(f64_of(case, "tau_base"), u64_of(case, "max_steps"));
        let k = u64_of(case, "step");
        let got = config.decay_at_step(k + 1).unwrap();
        let want = decimal(case);
        assert!((got - want).abs() <= 4e-16, "step {k}: {got} vs {want}");
    }
}

/// A half-life of a fraction of the run so far: `2^(−1/(f·n))` at update `n`.
#[test]
fn half_life_matches_its_formula() {
    let fixture = fixture();
    for case in cases(&fixture, "half_life") {
        let config = EmaConfig::half_life(f64_of(case, "fraction"));
        let n = u64_of(case, "update");
        let got = config.decay_at_step(n).unwrap();
        let want = decimal(case);
        // The exponent `x = 1/(f·n)` is rounded once in f64, which moves `2^−x` by up to
        // `ln 2 · x` ulps: the tolerance grows with it.
        let x = 1.0 / (f64_of(case, "fraction") * n as f64);
        assert!(
            (got - want).abs() <= 2.3e-16 * (2.0 + x) * want,
            "update {n}: {got} vs {want}"
        );
    }
    // At step 0 (TensorFlow-style `update_with_step(0)`) it copies.
    let config = EmaConfig::half_life(0.1);
    assert_eq!(config.decay_at_step(0), Some(0.0));
}

/// A run resumed from its file continues the same momentum schedule: the configuration and
/// the counter are in the file.
/// The explicit schedule: the `n`-th given decay at the `n`-th update, the last one after,
/// clamped like any other; an empty list or a decay outside `[0, 1]` is refused by field.
#[test]
fn an_explicit_schedule_applies_the_decays_given() {
    let config = EmaConfig::new(0.8)
        .with_min_decay(0.1)
        .with_schedule(Schedule::Explicit {
            decays: vec![0.5, 0.9, 0.05, 0.25],
        });
    config.validate().unwrap();
    let decays: Vec<_> = (1..=6).map(|s| config.decay_at_step(s)).collect();
    // 0.9 is cut to decay (0.8), 0.05 raised to min_decay (0.1); 0.25 from then on.
    let want = [0.5, 0.8, 0.1, 0.25, 0.25, 0.25].map(Some);
    assert_eq!(decays, want);
    // Through the module, on a value the arithmetic is exact for: 0 → 1 at decay 0.5 is 0.5.
    let device = Device::flex();
    let mut ema = EmaModule::new(Scalar::new(&[0.0], &device), config).unwrap();
    ema.model_mut().set(&[1.0]);
    ema.update().unwrap();
    assert_eq!(values(&ema.shadow().value.val()), vec![0.5]);
    for (decays, problem) in [(vec![], "is empty"), (vec![0.5, 1.5], "at 1")] {
        let err = EmaConfig::new(1.0)
            .with_schedule(Schedule::Explicit { decays })
            .validate()
            .unwrap_err();
        match err {
            EmaError::InvalidConfig { field, problem: p } => {
                assert_eq!(field, "schedule.decays");
                assert!(p.contains(problem), "{p}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_resumed_run_continues_its_momentum_schedule() {
    let fixture = fixture();
    let dino: Vec<f64> = cases(&fixture, "dino")
        .iter()
        .filter(|c| f64_of(c, "base") == 0.996)
        .map(decimal)
        .collect();
    let device = Device::flex();
    let config = EmaConfig::dino_teacher(0.996, dino.len() as u64);
    let mut ema = EmaModule::new(Scalar::new(&[1.0], &device), config.clone()).unwrap();
    for _ in 0..5 {
        ema.update().unwrap();
    }
    let dir = common::Scratch::new("momentum-resume");
    let file = ema.save(dir.join("teacher"), EmaFile::State).unwrap();
    let mut resumed = EmaModule::from_file(Scalar::new(&[1.0], &device), &file).unwrap();
    assert_eq!(resumed.config(), &config);
    assert_eq!(resumed.num_updates(), 5);
    resumed.update().unwrap();
    let got = resumed.last_decay().unwrap();
    assert!((got - dino[5]).abs() <= 4e-16, "{got} vs {}", dino[5]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An update at an explicit decay, whatever the schedule: `d·s + (1 − d)·p`, counted as the next
/// step; a decay outside `[0, 1]` is refused and changes nothing.
#[test]
fn an_update_at_an_explicit_decay_applies_it() {
    let device = Device::flex();
    let config = EmaConfig::new(0.999).with_update_every(10);
    let mut ema = EmaModule::new(Scalar::new(&[1.0], &device), config).unwrap();
    ema.model_mut().set(&[3.0]);
    ema.update_with_decay(0.25).unwrap();
    // 0.25·1 + 0.75·3 = 2.5, exact in f32 (step 1, which `update_every` would skip, averages).
    assert_eq!(values(&ema.shadow().value.val()), [2.5]);
    assert_eq!((ema.num_updates(), ema.last_decay()), (1, Some(0.25)));
    for bad in [-0.1, 1.5, f64::NAN] {
        let err = ema.update_with_decay(bad).unwrap_err();
        assert!(
            matches!(&err, EmaError::InvalidConfig { field, .. } if *field == "decay"),
            "{err}"
        );
    }
    assert_eq!(values(&ema.shadow().value.val()), [2.5]);
    assert_eq!(ema.num_updates(), 1);
    // 1 keeps the shadow, 0 copies the weights.
    ema.update_with_decay(1.0).unwrap();
    assert_eq!(values(&ema.shadow().value.val()), [2.5]);
    ema.update_with_decay(0.0).unwrap();
    assert_eq!(values(&ema.shadow().value.val()), [3.0]);
}

/// The momentum schedules' settings are checked.
#[test]
fn momentum_schedules_are_validated() {
    let cosine = |start, end, steps| {
        EmaConfig::new(1.0)
            .with_schedule(Schedule::Cosine { start, end, steps })
            .validate()
    };
    assert!(cosine(0.996, 1.0, 10).is_ok());
    for (start, end, steps, field) in [
        (0.996, 1.0, 0, "schedule.steps"),
        (1.5, 1.0, 10, "schedule.start"),
        (0.9, f64::NAN, 10, "schedule.end"),
    ] {
        let err = cosine(start, end, steps).unwrap_err();
        assert!(
            matches!(&err, EmaError::InvalidConfig { field: f, .. } if *f == field),
            "{err}"
        );
    }
    for fraction in [0.0, -1.0, f64::INFINITY, f64::NAN] {
        let err = EmaConfig::half_life(fraction).validate().unwrap_err();
        assert!(
            matches!(&err, EmaError::InvalidConfig { field, .. } if *field == "schedule.fraction"),
            "{err}"
        );
    }
}

/// Any step is taken, as TensorFlow's `apply` takes it: a repeated or earlier step applies the
/// schedule's decay at that step. Only a power-function EMA refuses to go back, changing nothing.
#[test]
fn steps_are_taken_as_given_except_a_power_function_going_back() {
    let device = Device::flex();
    let config = EmaConfig::new(0.9).with_schedule(Schedule::TensorFlow);
    let mut ema = EmaModule::new(Scalar::new(&[1.0], &device), config).unwrap();
    ema.update_with_step(0).unwrap();
    ema.update_with_step(0).unwrap();
    assert_eq!(ema.last_decay(), Some(0.1f32 as f64));
    ema.update_with_step(5).unwrap();
    ema.model_mut().set(&[3.0]);
    // Back to step 4: TensorFlow's decay at 4, min(0.9, 5/14), applied.
    let before = values(&ema.shadow().value.val())[0];
    ema.update_with_step(4).unwrap();
    let d = 0.9f32.min(5.0 / 14.0);
    assert_eq!(
        values(&ema.shadow().value.val())[0],
        before - (before - 3.0) * (1.0 - d)
    );
    assert_eq!(ema.num_updates(), 4);
    // `update()` goes on from the last step.
    ema.update().unwrap();
    assert_eq!(ema.num_updates(), 5);

    let config = EmaConfig::new(1.0).with_schedule(Schedule::PowerFunction { gamma: 1.0 });
    let mut ema = EmaModule::new(Scalar::new(&[1.0], &device), config).unwrap();
    ema.update_with_step(5).unwrap();
    ema.model_mut().set(&[3.0]);
    let before = values(&ema.shadow().value.val());
    assert_eq!(
        ema.update_with_step(4).unwrap_err(),
        burn_ema::EmaError::StepBackwards { step: 4, last: 5 }
    );
    assert_eq!(values(&ema.shadow().value.val()), before);
    assert_eq!(ema.num_updates(), 5);
}

fn schedules() -> impl Strategy<Value = Schedule> {
    prop_oneof![
        Just(Schedule::Constant),
        Just(Schedule::TensorFlow),
        (0.1f64..10.0, 0.1f64..2.0)
            .prop_map(|(inv_gamma, power)| Schedule::Warmup { inv_gamma, power }),
        (0.0f64..20.0).prop_map(|gamma| Schedule::PowerFunction { gamma }),
        (0.0f64..=1.0, 0.0f64..=1.0, 1u64..1000).prop_map(|(start, end, steps)| Schedule::Cosine {
            start,
            end,
            steps
        }),
        (0.001f64..2.0).prop_map(|fraction| Schedule::HalfLife { fraction }),
        prop::collection::vec(0.0f64..=1.0, 1..5).prop_map(|decays| Schedule::Explicit { decays }),
    ]
}

fn configs() -> impl Strategy<Value = EmaConfig> {
    (0.0f64..=1.0, 0.0f64..=1.0, schedules(), 0u64..20, 1u64..5).prop_map(
        |(decay, min_frac, warmup, after, every)| {
            EmaConfig::new(decay)
                .with_min_decay(decay * min_frac * 0.5)
                .with_schedule(warmup)
                .with_update_after_step(after)
                .with_update_every(every)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every schedule stays a decay: in `[0, 1]`, within `[min_decay, decay]` once averaging.
    #[test]
    fn schedule_stays_in_range(config in configs(), step in 0u64..100_000) {
        config.validate().unwrap();
        if let Some(d) = config.decay_at_step(step) {
            prop_assert!((0.0..=1.0).contains(&d));
            // TensorFlow's ramp runs in f32: its cap is the decay rounded to f32.
            prop_assert!(d <= config.decay.max(config.decay as f32 as f64));
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
            if let Some(d) = config.decay_at_step(step) {
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
