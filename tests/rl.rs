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
