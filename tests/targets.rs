//! Reinforcement-learning target networks: soft (Polyak) and hard updates on any module, and the
//! target's forward inside the training step, as a constant for autodiff.

mod common;

use burn::module::{Module, ParamId};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, SgdConfig};
use burn::prelude::*;
use burn_ema::{EmaConfig, EmaModule, MovingAverage};
use common::{bits, flex_address, floats};

fn q_net(device: &Device) -> Linear {
    LinearConfig::new(4, 2).init(device)
}

fn batch(device: &Device, seed: f32) -> Tensor<2> {
    let values: Vec<f32> = (0..12).map(|i| ((i as f32 + seed) * 0.77).sin()).collect();
    Tensor::from_data(TensorData::new(values, [3, 4]), device)
}

/// One TD step, DQN-style: the online network's Q values against `r + γ·max Q_target(s')`,
/// the target's forward run on its plain weights (a constant for autodiff), then the optimizer
/// step and the target's update. Returns whether each of `ids` (a weight's, then a bias's: a
/// Linear's ranks) had a gradient.
fn td_step(
    target: &mut EmaModule<Linear>,
    device: &Device,
    seed: f32,
    ids: &[(ParamId, ParamId)],
) -> Vec<bool> {
    let (obs, next) = (batch(device, seed), batch(device, seed + 10.0));
    // The target's weights are plain tensors on the inner device: its input goes there, and its
    // output comes back as a constant (no graph, no gradient).
    let next_q = Tensor::<2>::from_inner(target.shadow().forward(next.inner()));
    let td_target = next_q.max_dim(1).mul_scalar(0.99).add_scalar(1.0);
    let q = target.model().forward(obs).max_dim(1);
    let loss = (q - td_target).powi_scalar(2).mean();
    let grads = GradientsParams::from_grads(loss.backward(), target.model());
    let has_grad = ids
        .iter()
        .flat_map(|(weight, bias)| {
            [
                grads.get::<2>(*weight).is_some(),
                grads.get::<1>(*bias).is_some(),
            ]
        })
        .collect();
    let stepped = SgdConfig::new()
        .init()
        .step(0.1, target.model().clone(), grads);
    *target.model_mut() = stepped;
    target.update().unwrap();
    has_grad
}

#[test]
fn a_soft_target_moves_by_tau_toward_the_online_network() {
    let device = Device::flex().autodiff();
    let tau = 0.25; // exact in binary: the update is exact to f32 rounding of one fma-free expression
    let mut target = EmaModule::new(q_net(&device), EmaConfig::soft_target(tau)).unwrap();
    for step in 0..3 {
        let before = floats(target.shadow());
        td_step(&mut target, &device, step as f32, &[]);
        let online = floats(&target.model().valid());
        for (((path, t), (_, b)), (_, o)) in
            floats(target.shadow()).iter().zip(&before).zip(&online)
        {
            for ((t, b), o) in t.iter().zip(b).zip(o) {
                // `b − (b − o)·τ`, the kernel's expression, in f32.
                assert_eq!(*t, b - (b - o) * tau as f32, "{path}");
            }
        }
    }
    assert_eq!(target.num_updates(), 3);
}

#[test]
fn the_targets_forward_is_a_constant_that_no_gradient_reaches() {
    let device = Device::flex().autodiff();
    let mut target = EmaModule::new(q_net(&device), EmaConfig::soft_target(0.5)).unwrap();
    let ids = |m: &Linear| (m.weight.id, m.bias.as_ref().unwrap().id);
    let ids = [ids(target.model()), ids(target.shadow())];
    let address = flex_address(target.shadow().weight.val());
    for step in 0..3 {
        let has_grad = td_step(&mut target, &device, step as f32, &ids);
        // The online parameters have gradients; the target's have none, and its weights are
        // plain tensors, updated in place: no copy per step.
        assert_eq!(has_grad, [true, true, false, false]);
        assert!(!target.shadow().weight.val().is_require_grad());
        assert_eq!(flex_address(target.shadow().weight.val()), address);
    }
}

#[test]
fn a_hard_target_copies_every_n_updates_and_holds_in_between() {
    let device = Device::flex().autodiff();
    let mut target = EmaModule::new(q_net(&device), EmaConfig::hard_target(3)).unwrap();
    let start = bits(target.shadow());
    for step in 1..=7u64 {
        td_step(&mut target, &device, step as f32, &[]);
        let online = bits(&target.model().valid());
        if step % 3 == 0 {
            assert_eq!(bits(target.shadow()), online, "step {step}: a copy");
        } else if step < 3 {
            assert_eq!(bits(target.shadow()), start, "step {step}: held");
        } else {
            assert_ne!(
                bits(target.shadow()),
                online,
                "step {step}: held, online moved on"
            );
        }
    }
}

/// An agent holding its online and target networks as one field of a derived module: the
/// average displays and counts parameters as Burn modules do.
#[derive(Module, Debug)]
struct Agent {
    q: EmaModule<Linear>,
}

#[test]
fn an_average_is_a_field_of_a_derived_module() {
    let device = Device::flex().autodiff();
    let agent = Agent {
        q: EmaModule::new(q_net(&device), EmaConfig::soft_target(0.01)).unwrap(),
    };
    let shown = format!("{agent}");
    assert!(shown.contains("EmaModule"), "{shown}");
    assert!(shown.contains("Linear"), "{shown}");
    // The live network's 4·2 + 2 values and its target's: both are in the record.
    assert_eq!(agent.num_params(), 2 * (4 * 2 + 2));
}
