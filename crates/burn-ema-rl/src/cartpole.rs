//! CartPole, as Gymnasium's `CartPole-v1` defines it (Barto, Sutton and Anderson 1983): a pole
//! on a cart, pushed left or right by 10 N each 20 ms step, explicit Euler integration, reward 1
//! per step, the episode ending when the pole leans past 12° or the cart leaves ±2.4, or after
//! 500 steps.

use crate::rng::Rng;

const GRAVITY: f32 = 9.8;
const MASS_CART: f32 = 1.0;
const MASS_POLE: f32 = 0.1;
const TOTAL_MASS: f32 = MASS_CART + MASS_POLE;
/// Half the pole's length.
const LENGTH: f32 = 0.5;
const POLE_MASS_LENGTH: f32 = MASS_POLE * LENGTH;
const FORCE: f32 = 10.0;
/// Seconds between state updates.
const TAU: f32 = 0.02;
/// 12 degrees.
const THETA_LIMIT: f32 = 12.0 * 2.0 * std::f32::consts::PI / 360.0;
const X_LIMIT: f32 = 2.4;
/// `CartPole-v1`'s time limit.
pub const MAX_STEPS: u32 = 500;

/// The observation: cart position and velocity, pole angle and angular velocity.
pub type Observation = [f32; 4];

/// What a step returns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    pub observation: Observation,
    pub reward: f32,
    /// The pole fell or the cart left the track: no future reward (a terminal state).
    pub terminated: bool,
    /// The time limit: the episode ends, but the state is not terminal.
    pub truncated: bool,
}

/// One CartPole environment.
#[derive(Clone, Debug)]
pub struct CartPole {
    state: Observation,
    steps: u32,
}

impl CartPole {
    /// A new episode: every state variable uniform in [-0.05, 0.05].
    pub fn reset(rng: &mut Rng) -> (Self, Observation) {
        let state = [(); 4].map(|_| rng.uniform(-0.05, 0.05));
        (Self { state, steps: 0 }, state)
    }

    /// Pushes the cart left (`action = 0`) or right (`1`).
    pub fn step(&mut self, action: usize) -> Step {
        let [x, x_dot, theta, theta_dot] = self.state;
        let force = if action == 1 { FORCE } else { -FORCE };
        let (sin, cos) = theta.sin_cos();
        let temp = (force + POLE_MASS_LENGTH * theta_dot * theta_dot * sin) / TOTAL_MASS;
        let theta_acc = (GRAVITY * sin - cos * temp)
            / (LENGTH * (4.0 / 3.0 - MASS_POLE * cos * cos / TOTAL_MASS));
        let x_acc = temp - POLE_MASS_LENGTH * theta_acc * cos / TOTAL_MASS;
        self.state = [
            x + TAU * x_dot,
            x_dot + TAU * x_acc,
            theta + TAU * theta_dot,
            theta_dot + TAU * theta_acc,
        ];
        self.steps += 1;
        let [x, _, theta, _] = self.state;
        let terminated =
            !(-X_LIMIT..=X_LIMIT).contains(&x) || !(-THETA_LIMIT..=THETA_LIMIT).contains(&theta);
        Step {
            observation: self.state,
            reward: 1.0,
            terminated,
            truncated: !terminated && self.steps >= MAX_STEPS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gymnasium's `CartPole-v1` from the state at rest, pushed right: the classic first
    /// transition, `[0, 0.19512196, 0, -0.29268292]` (ẋ = τ·ẍ, θ̇ = τ·θ̈ with ẍ = 9.7561 m/s²,
    /// θ̈ = −14.634 rad/s²; the positions move with the old velocities, 0).
    #[test]
    fn a_push_from_rest_gives_gymnasiums_first_transition() {
        let mut env = CartPole {
            state: [0.0; 4],
            steps: 0,
        };
        let step = env.step(1);
        let want = [0.0, 0.195_121_96, 0.0, -0.292_682_92];
        for (got, want) in step.observation.iter().zip(want) {
            assert!((got - want).abs() <= 1e-7, "{:?}", step.observation);
        }
        assert!(!step.terminated && !step.truncated);
        assert_eq!(step.reward, 1.0);
    }

    #[test]
    fn always_pushing_one_way_ends_the_episode_and_the_limit_truncates() {
        let mut rng = Rng::new(1);
        let (mut env, _) = CartPole::reset(&mut rng);
        let steps = (1..).find(|_| env.step(1).terminated).unwrap();
        assert!(steps < 50, "the pole falls within a second: {steps} steps");
        let mut env = CartPole {
            state: [0.0; 4],
            steps: MAX_STEPS - 1,
        };
        assert!(env.step(0).truncated);
    }
}
