//! The reinforcement-learning example driven for a few hundred steps: DQN on CartPole with its
//! target network an `EmaModule`'s shadow (`crates/burn-ema-rl`, `examples/dqn_cartpole.rs`).

use std::sync::{Mutex, MutexGuard};

use burn_ema_rl::dqn::{DqnSettings, TargetUpdate, train};

/// One run at a time: Burn's random generator (the networks' initialisation) is seeded per
/// process, so runs on parallel test threads would draw from each other's streams.
fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn short(target: TargetUpdate) -> DqnSettings {
    let mut s = DqnSettings::new(target);
    s.steps = 400;
    s.learning_starts = 100;
    s.batch_size = 16;
    s.hidden = 16;
    s
}

#[test]
fn a_short_dqn_run_trains_and_repeats_from_its_seed() {
    let _turn = turn();
    for target in [TargetUpdate::Soft(0.005), TargetUpdate::Hard(50)] {
        let first = train(&short(target)).unwrap();
        assert_eq!(
            first.optimizer_steps, 300,
            "one optimizer step per step after the start"
        );
        assert!(
            first.episodes.len() >= 5,
            "{} episodes",
            first.episodes.len()
        );
        assert!(
            first
                .episodes
                .iter()
                .all(|e| e.reward >= 1.0 && e.reward <= 500.0)
        );
        let again = train(&short(target)).unwrap();
        assert_eq!(
            again.episodes,
            first.episodes,
            "{}: the same seed, the same run",
            target.label()
        );
    }
}

/// The target network after a run is Polyak's average of the online weights the run went
/// through, computed here in f64 from the recorded weights (`target ← τ·online + (1 − τ)·target`
/// after each optimizer step, from a copy of the initial network); a hard target is a copy of
/// the online network at the last multiple of its interval, bit for bit.
#[test]
fn the_target_network_is_the_formula_over_the_recorded_online_weights() {
    let _turn = turn();
    let tau = 0.05;
    let mut settings = short(TargetUpdate::Soft(tau));
    settings.record_weights = true;
    let report = train(&settings).unwrap();
    let weights = report.weights.unwrap();
    assert_eq!(weights.online.len() as u64, 1 + report.optimizer_steps);
    let mut target: Vec<f64> = weights.online[0].iter().map(|&v| v as f64).collect();
    for online in &weights.online[1..] {
        for (t, &o) in target.iter_mut().zip(online) {
            *t = tau * o as f64 + (1.0 - tau) * *t;
        }
    }
    let worst = target
        .iter()
        .zip(&weights.target)
        .map(|(want, &got)| (want - got as f64).abs())
        .fold(0.0, f64::max);
    // f32 rounding over 300 updates of values below 1: well under 1e-5.
    assert!(worst < 1e-5, "largest difference {worst}");
    let moved = weights.online[0]
        .iter()
        .zip(&weights.target)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved > 1e-3, "the target moved ({moved})");

    // 300 optimizer steps: copies at 70, 140, 210 and 280, none after.
    let mut settings = short(TargetUpdate::Hard(70));
    settings.record_weights = true;
    let report = train(&settings).unwrap();
    let weights = report.weights.unwrap();
    let last_copy = (report.optimizer_steps / 70 * 70) as usize;
    assert!(last_copy > 0 && last_copy < weights.online.len() - 1);
    assert_eq!(weights.target, weights.online[last_copy]);
    assert_ne!(weights.target, weights.online[last_copy + 1]);
}

#[test]
fn the_target_update_changes_the_run() {
    let _turn = turn();
    // The same seed and exploration: only the target differs, and with it the TD targets.
    let soft = train(&short(TargetUpdate::Soft(0.005))).unwrap();
    let none = train(&short(TargetUpdate::Soft(1.0))).unwrap();
    assert_ne!(soft.episodes, none.episodes);
}

#[test]
fn an_invalid_tau_is_an_error() {
    let _turn = turn();
    assert!(train(&short(TargetUpdate::Soft(1.5))).is_err());
    assert!(train(&short(TargetUpdate::Hard(0))).is_err());
}
