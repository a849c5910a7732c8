//! DQN (Mnih et al. 2015) on CartPole, its target network kept by an [`EmaModule`]: the
//! online Q-network is the live model, the target its shadow, updated after every optimizer
//! step softly (Polyak, `EmaConfig::soft_target(τ)`) or by a copy every N steps
//! (`EmaConfig::hard_target(N)`). The TD target `r + γ·max_a Q_target(s', a)` is computed with
//! the shadow's plain weights inside the training step: a constant for autodiff, no gradient
//! reaches the target, and no weights are copied for it.
//!
//! Settings follow CleanRL's `dqn.py` for CartPole (MSE loss, Adam, ε-greedy annealed linearly,
//! a replay buffer of 10,000 transitions), shortened so a run takes about 10 s on two cores
//! (release build).

use std::time::Instant;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn_ema_core::{EmaConfig, EmaError, EmaModule, MovingAverage};

use crate::cartpole::{CartPole, Observation};
use crate::rng::Rng;

/// How the target network follows the online one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TargetUpdate {
    /// Polyak: `target ← τ·online + (1 − τ)·target` after every optimizer step (τ = 1: the
    /// target is the online network, i.e. no target network).
    Soft(f64),
    /// A copy of the online network every N optimizer steps.
    Hard(u64),
}

impl TargetUpdate {
    /// The EMA configuration that keeps such a target.
    pub fn config(self) -> EmaConfig {
        match self {
            Self::Soft(tau) => EmaConfig::soft_target(tau),
            Self::Hard(every) => EmaConfig::hard_target(every),
        }
    }

    /// A short name for tables and plots.
    pub fn label(self) -> String {
        match self {
            Self::Soft(1.0) => "no target (τ = 1)".into(),
            Self::Soft(tau) => format!("soft, τ = {tau}"),
            Self::Hard(every) => format!("hard, every {every} steps"),
        }
    }
}

/// A DQN run's settings.
#[derive(Clone, Debug)]
pub struct DqnSettings {
    /// Environment steps in all.
    pub steps: u64,
    pub target: TargetUpdate,
    pub seed: u64,
    /// Steps of random actions before training starts.
    pub learning_starts: u64,
    pub batch_size: usize,
    pub buffer_size: usize,
    pub gamma: f32,
    pub lr: f64,
    /// ε falls linearly from 1 to `final_epsilon` over this many steps.
    pub exploration_steps: u64,
    pub final_epsilon: f32,
    pub hidden: usize,
    /// Keep the online network's weights after every optimizer step and the final target's
    /// (for tests that check the target against Polyak's formula; off by default).
    pub record_weights: bool,
}

impl DqnSettings {
    /// The defaults for `target`: 100,000 steps, training from step 1,000, batch 64, γ 0.99,
    /// Adam at 1e-3, ε to 0.05 over 10,000 steps, two hidden layers of 64.
    pub fn new(target: TargetUpdate) -> Self {
        Self {
            steps: 100_000,
            target,
            seed: 1,
            learning_starts: 1_000,
            batch_size: 64,
            buffer_size: 10_000,
            gamma: 0.99,
            lr: 1e-3,
            exploration_steps: 10_000,
            final_epsilon: 0.05,
            hidden: 64,
            record_weights: false,
        }
    }

    fn epsilon(&self, step: u64) -> f32 {
        let progress = (step as f32 / self.exploration_steps.max(1) as f32).min(1.0);
        1.0 + (self.final_epsilon - 1.0) * progress
    }
}

/// The Q-network: two hidden ReLU layers, one output per action.
#[derive(Module, Debug)]
pub struct QNet {
    l1: Linear,
    l2: Linear,
    l3: Linear,
}

impl QNet {
    pub fn new(hidden: usize, device: &Device) -> Self {
        Self {
            l1: LinearConfig::new(4, hidden).init(device),
            l2: LinearConfig::new(hidden, hidden).init(device),
            l3: LinearConfig::new(hidden, 2).init(device),
        }
    }

    pub fn forward(&self, obs: Tensor<2>) -> Tensor<2> {
        let x = relu(self.l1.forward(obs));
        let x = relu(self.l2.forward(x));
        self.l3.forward(x)
    }
}

/// An episode's end: the environment step it ended at and its return.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Episode {
    pub step: u64,
    pub reward: f32,
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct DqnReport {
    pub target: TargetUpdate,
    pub episodes: Vec<Episode>,
    /// Optimizer steps, and target updates that changed the target (all of them for soft
    /// updates, one in N for hard ones).
    pub optimizer_steps: u64,
    pub seconds: f64,
    /// With `record_weights`: the online network's floats at the start and after each
    /// optimizer step (in traversal order), and the target's at the end.
    pub weights: Option<RecordedWeights>,
}

/// What `record_weights` keeps.
#[derive(Clone, Debug, Default)]
pub struct RecordedWeights {
    pub online: Vec<Vec<f32>>,
    pub target: Vec<f32>,
}

/// A module's float values, in traversal order.
fn flat_floats<M: Module>(module: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let data = param.val().into_data();
            self.0.extend(data.iter::<f32>());
        }
    }
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}

impl DqnReport {
    /// The mean return of the last `n` episodes (fewer if the run had fewer).
    pub fn mean_last(&self, n: usize) -> f32 {
        let last = &self.episodes[self.episodes.len().saturating_sub(n)..];
        last.iter().map(|e| e.reward).sum::<f32>() / last.len().max(1) as f32
    }
}

/// A transition in the replay buffer.
#[derive(Clone, Copy)]
struct Transition {
    obs: Observation,
    action: usize,
    reward: f32,
    next: Observation,
    /// `terminated` (not a time limit): no bootstrap from `next`.
    terminal: bool,
}

/// Trains a DQN agent on CartPole on Burn's Flex backend.
pub fn train(s: &DqnSettings) -> Result<DqnReport, EmaError> {
    let started = Instant::now();
    let device = Device::flex();
    device.seed(s.seed);
    let autodiff = device.clone().autodiff();
    // The online network is the live model; the target network is its shadow.
    let mut agent = EmaModule::new(QNet::new(s.hidden, &autodiff), s.target.config())?;
    let mut optim = AdamConfig::new().init();
    let mut rng = Rng::new(s.seed);
    let mut buffer: Vec<Transition> = Vec::with_capacity(s.buffer_size);
    let (mut env, mut obs) = CartPole::reset(&mut rng);
    let (mut episode_reward, mut episodes, mut optimizer_steps) = (0.0, Vec::new(), 0);
    let mut recorded = s.record_weights.then(|| RecordedWeights {
        online: vec![flat_floats(agent.model())],
        target: Vec::new(),
    });
    for step in 1..=s.steps {
        let action = if rng.unit() < s.epsilon(step) {
            rng.below(2)
        } else {
            greedy(agent.model(), obs, &device)
        };
        let out = env.step(action);
        let transition = Transition {
            obs,
            action,
            reward: out.reward,
            next: out.observation,
            terminal: out.terminated,
        };
        if buffer.len() < s.buffer_size {
            buffer.push(transition);
        } else {
            buffer[(step as usize - 1) % s.buffer_size] = transition;
        }
        episode_reward += out.reward;
        obs = out.observation;
        if out.terminated || out.truncated {
            episodes.push(Episode {
                step,
                reward: episode_reward,
            });
            episode_reward = 0.0;
            (env, obs) = CartPole::reset(&mut rng);
        }
        if step > s.learning_starts && buffer.len() >= s.batch_size {
            let batch: Vec<Transition> = (0..s.batch_size)
                .map(|_| buffer[rng.below(buffer.len())])
                .collect();
            let loss = td_loss(&agent, &batch, s.gamma, &autodiff);
            let grads = GradientsParams::from_grads(loss.backward(), agent.model());
            let online = optim.step(s.lr, agent.model().clone(), grads);
            *agent.model_mut() = online;
            agent.update()?;
            optimizer_steps += 1;
            if let Some(r) = &mut recorded {
                r.online.push(flat_floats(agent.model()));
            }
        }
    }
    if let Some(r) = &mut recorded {
        r.target = flat_floats(agent.shadow());
    }
    Ok(DqnReport {
        weights: recorded,
        target: s.target,
        episodes,
        optimizer_steps,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The action with the highest Q value (plain weights: no graph is built).
fn greedy(online: &QNet, obs: Observation, device: &Device) -> usize {
    let q = online
        .valid()
        .forward(Tensor::<1>::from_floats(obs, device).reshape([1, 4]));
    let q: Vec<f32> = q.into_data().try_to_vec().expect("f32 Q values");
    usize::from(q[1] > q[0])
}

/// The mean squared TD error of the online network against the target's
/// `r + γ·max_a Q_target(s', a)` (0 bootstrap at a terminal state).
fn td_loss(
    agent: &EmaModule<QNet>,
    batch: &[Transition],
    gamma: f32,
    device: &Device,
) -> Tensor<1> {
    let n = batch.len();
    let obs: Vec<f32> = batch.iter().flat_map(|t| t.obs).collect();
    let next: Vec<f32> = batch.iter().flat_map(|t| t.next).collect();
    let actions: Vec<i64> = batch.iter().map(|t| t.action as i64).collect();
    let bootstrap: Vec<f32> = batch
        .iter()
        .map(|t| if t.terminal { 0.0 } else { gamma })
        .collect();
    let rewards: Vec<f32> = batch.iter().map(|t| t.reward).collect();
    let inner = device.clone().inner();
    // The target network: the shadow's plain weights on the inner device; its values come back
    // into the graph as a constant.
    let next = Tensor::<2>::from_data(TensorData::new(next, [n, 4]), &inner);
    let next_q = agent.shadow().forward(next).max_dim(1).reshape([n]);
    let target = Tensor::<1>::from_data(TensorData::new(rewards, [n]), &inner)
        + Tensor::<1>::from_data(TensorData::new(bootstrap, [n]), &inner) * next_q;
    let target = Tensor::<1>::from_inner(target);
    let obs = Tensor::<2>::from_data(TensorData::new(obs, [n, 4]), device);
    let actions = Tensor::<2, Int>::from_data(TensorData::new(actions, [n, 1]), device);
    let q = agent.model().forward(obs).gather(1, actions).reshape([n]);
    (q - target).powi_scalar(2).mean()
}
