//! SWA: the uniform average from a chosen update on (`EmaConfig::swa`), and BatchNorm statistics
//! recomputed for averaged weights (`update_bn`) against PyTorch's own `update_bn`.

mod common;

use burn::module::{Module, Param, RunningState};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn_ema::{EmaConfig, EmaError, EmaModule, MovingAverage, ShadowDType, update_bn};
use common::{Scalar, values_f64};

/// Statistics written by PyTorch's `torch.optim.swa_utils.update_bn`
/// (`tests/fixtures/make_update_bn.py`).
fn fixture() -> serde_json::Value {
    serde_json::from_str(include_str!("fixtures/update_bn.json")).expect("the fixture parses")
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

/// The fixture's model: Linear(4, 6) → BatchNorm(6) → ReLU → Linear(6, 3) → BatchNorm(3).
#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    bn1: BatchNorm,
    fc2: Linear,
    bn2: BatchNorm,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = relu(self.bn1.forward(self.fc1.forward(x)));
        self.bn2.forward(self.fc2.forward(x))
    }

    /// PyTorch's weights (`[out, in]`, transposed into Burn's `[in, out]`) and the statistics
    /// `update_bn` must discard.
    fn from_fixture(f: &serde_json::Value, device: &Device) -> Self {
        let p = &f["params"];
        let tensor1 = |name: &str| {
            let v = floats(&p[name]);
            Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), device)
        };
        let linear = |prefix: &str, d_in: usize, d_out: usize| {
            let mut l = LinearConfig::new(d_in, d_out).init(device);
            let w = floats(&p[format!("{prefix}.weight")]);
            let w = Tensor::<2>::from_data(TensorData::new(w, [d_out, d_in]), device);
            l.weight = Param::from_tensor(w.transpose());
            l.bias = Some(Param::from_tensor(tensor1(&format!("{prefix}.bias"))));
            l
        };
        let bn = |prefix: &str, n: usize, k: f32| {
            let mut b: BatchNorm = BatchNormConfig::new(n).init(device);
            b.gamma = Param::from_tensor(tensor1(&format!("{prefix}.weight")));
            b.beta = Param::from_tensor(tensor1(&format!("{prefix}.bias")));
            b.running_mean = RunningState::new(Tensor::full([n], 7.0 + k, device));
            b.running_var = RunningState::new(Tensor::full([n], 3.0 + k, device));
            b
        };
        Self {
            fc1: linear("0", 4, 6),
            bn1: bn("1", 6, 0.0),
            fc2: linear("3", 6, 3),
            bn2: bn("4", 3, 1.0),
        }
    }

    fn statistics(&self) -> Vec<Vec<f32>> {
        [&self.bn1, &self.bn2]
            .iter()
            .flat_map(|b| [b.running_mean.value(), b.running_var.value()])
            .map(|t| t.into_data().try_to_vec().unwrap())
            .collect()
    }
}

fn batches(f: &serde_json::Value, device: &Device) -> Vec<Tensor<2>> {
    f["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| Tensor::from_data(TensorData::new(floats(b), [5, 4]), device))
        .collect()
}

#[test]
fn update_bn_gives_pytorchs_statistics() {
    let f = fixture();
    let device = Device::flex();
    let model = Mlp::from_fixture(&f, &device);
    let before = model.statistics();
    let autodiff = device.clone().autodiff();
    let recalibrated = update_bn(&model, batches(&f, &autodiff), |m: &Mlp, x| {
        let _ = m.forward(x);
    })
    .unwrap();
    // The model given is unchanged; the copy has the batches' statistics.
    assert_eq!(model.statistics(), before);
    let got = recalibrated.statistics();
    // PyTorch keeps the unbiased batch variance, Burn the biased one: n/(n − 1) apart.
    let n = f["rows"].as_f64().unwrap() as f32;
    for (k, name) in ["bn1", "bn2"].into_iter().enumerate() {
        let after = &f["after"][name];
        let mean = floats(&after["running_mean"]);
        let var: Vec<f32> = floats(&after["running_var"])
            .into_iter()
            .map(|v| v * (n - 1.0) / n)
            .collect();
        for (what, got, want) in [("mean", &got[2 * k], mean), ("var", &got[2 * k + 1], var)] {
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 2e-5 * (1.0 + w.abs()),
                    "{name} running {what}: {got:?} vs PyTorch's {want:?}"
                );
            }
        }
    }
    // An evaluation model: plain tensors.
    assert!(!recalibrated.fc1.weight.val().device().is_autodiff());
}

#[test]
fn update_bn_refuses_what_it_cannot_do_and_changes_nothing() {
    let f = fixture();
    let device = Device::flex();
    let model = Mlp::from_fixture(&f, &device);
    let before = model.statistics();
    let forward = |m: &Mlp, x: Tensor<2>| {
        let _ = m.forward(x);
    };
    let err = update_bn(&model, Vec::<Tensor<2>>::new(), forward).unwrap_err();
    assert!(matches!(&err, EmaError::BatchNorm { problem } if problem.contains("no batches")));
    // A forward that does not run the BatchNorm layers in training mode (here: none at all).
    let err = update_bn(&model, batches(&f, &device), |_, _| {}).unwrap_err();
    assert!(
        matches!(&err, EmaError::BatchNorm { problem } if problem.contains("changed no running statistic")),
        "{err}"
    );
    assert_eq!(model.statistics(), before);
    // A model without running statistics comes back as it is.
    let linear: Linear = LinearConfig::new(2, 2).init(&device);
    let same = update_bn(&linear, [()], |_, _| {}).unwrap();
    assert_eq!(
        same.weight.val().into_data(),
        linear.weight.val().into_data()
    );
}

/// SWA from update 4 on: the shadow copies the weights until update 5, then is the running
/// mean of the weights after updates 5, 6, …: after update 10, the mean of 5..=10, 7.5.
#[test]
fn swa_is_the_uniform_average_after_its_start() {
    let device = Device::flex();
    let config = EmaConfig::swa(4).with_shadow_dtype(ShadowDType::F64);
    let mut swa = EmaModule::new(Scalar::new(&[0.0], &device), config).unwrap();
    for step in 1..=10 {
        swa.model_mut().set(&[step as f32]);
        swa.update().unwrap();
        let want = if step <= 5 {
            step as f64
        } else {
            (5..=step).sum::<u64>() as f64 / (step - 4) as f64
        };
        let got = values_f64(&swa.shadow().value.val())[0];
        assert!(
            (got - want).abs() <= 1e-12,
            "update {step}: {got} vs {want}"
        );
    }
}
