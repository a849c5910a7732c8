//! burn-ema's reinforcement-learning example: DQN on CartPole with its target network kept by an
//! `EmaModule` (`examples/dqn_cartpole.rs` is the command line).

pub mod cartpole;
pub mod dqn;
pub mod plot;
pub mod rng;
