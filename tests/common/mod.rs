//! Small models and helpers shared by the integration tests.
#![allow(dead_code)]

pub mod scratch;
#[cfg(feature = "train")]
pub mod toy;

#[allow(unused_imports)] // Not every test file makes a scratch directory.
pub use scratch::Scratch;

/// Whether this machine can run a wgpu or CUDA test (shared with the kernels' tests).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
#[path = "../../crates/burn-ema-kernels/tests/common/gate.rs"]
pub mod gate;

use burn::module::{Module, Param};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn_ema::MovingAverage;

/// The CPU backends every test runs on.
#[allow(deprecated)]
pub fn devices() -> Vec<Device> {
    vec![Device::flex(), Device::ndarray()]
}

/// A one-parameter model, for exact arithmetic checks.
#[derive(Module, Debug)]
pub struct Scalar {
    pub value: Param<Tensor<1>>,
}

impl Scalar {
    pub fn new(values: &[f32], device: &Device) -> Self {
        Self {
            value: Param::from_data(TensorData::new(values.to_vec(), [values.len()]), device),
        }
    }

    /// Replaces the value, keeping the parameter's id and autodiff settings.
    pub fn set(&mut self, values: &[f32]) {
        let device = self.value.device();
        let require_grad = self.value.is_require_grad();
        self.value = self.value.clone().map(|_| {
            Tensor::<1>::from_data(TensorData::new(values.to_vec(), [values.len()]), &device)
                .set_require_grad(require_grad)
        });
    }
}

/// Linear → BatchNorm → ReLU → Linear.
#[derive(Module, Debug)]
pub struct Net {
    pub fc1: Linear,
    pub bn: BatchNorm,
    pub fc2: Linear,
}

impl Net {
    pub fn new(device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(4, 8).init(device),
            bn: BatchNormConfig::new(8).init(device),
            fc2: LinearConfig::new(8, 2).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = self.fc1.forward(x);
        let x = self.bn.forward(x);
        self.fc2.forward(burn::tensor::activation::relu(x))
    }
}

/// A float tensor's values.
pub fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data().try_into_vec_as::<f32>().unwrap()
}

/// A float tensor's values in f64.
pub fn values_f64<const D: usize>(t: &Tensor<D>) -> Vec<f64> {
    t.to_data().try_into_vec_as::<f64>().unwrap()
}

/// Every float tensor of a module, by dotted path, in traversal order.
pub fn floats<M: Module>(module: &M) -> Vec<(String, Vec<f32>)> {
    struct Collect {
        path: Vec<String>,
        out: Vec<(String, Vec<f32>)>,
    }
    impl burn::module::ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.out.push((self.path.join("."), values(&param.val())));
        }
    }
    let mut c = Collect {
        path: vec![],
        out: vec![],
    };
    module.valid().visit(&mut c);
    c.out
}

/// Every float tensor's bit patterns, for bitwise comparisons.
pub fn bits<M: Module>(module: &M) -> Vec<(String, Vec<u32>)> {
    floats(module)
        .into_iter()
        .map(|(p, v)| (p, v.into_iter().map(f32::to_bits).collect()))
        .collect()
}

/// Whether each float parameter (not buffers) is autodiff / requires grad.
pub fn autodiff_flags<M: Module>(module: &M) -> Vec<(bool, bool)> {
    struct Flags(Vec<(bool, bool)>);
    impl burn::module::ModuleVisitor for Flags {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            self.0.push((t.is_autodiff(), t.is_require_grad()));
        }
    }
    let mut f = Flags(vec![]);
    module.visit(&mut f);
    f.0
}

/// Collects the ids of a module's float parameters, in traversal order.
pub struct IdCollector<'a>(pub &'a mut Vec<burn::module::ParamId>);

impl burn::module::ModuleVisitor for IdCollector<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.id);
    }
}

/// A fixed input for `Net`.
pub fn input(device: &Device) -> Tensor<2> {
    Tensor::<2>::from_data(
        TensorData::new(
            (0..24).map(|i| (i as f32 * 0.7).sin()).collect::<Vec<_>>(),
            [6, 4],
        ),
        device,
    )
}

/// One SGD step of the live model inside the EmaModule, through the EmaModule itself
/// (deterministic: plain SGD has no state, the input is fixed).
pub fn sgd_step(ema: burn_ema::EmaModule<Net>, device: &Device) -> burn_ema::EmaModule<Net> {
    use burn::optim::{GradientsParams, SgdConfig};
    let mut optim = SgdConfig::new().init();
    let loss = ema.model().forward(input(device)).powf_scalar(2.0).mean();
    let grads = GradientsParams::from_grads(loss.backward(), &ema);
    optim.step(0.5, ema, grads)
}

/// The address of a Flex tensor's buffer.
pub fn flex_address<const D: usize>(t: Tensor<D>) -> usize {
    let primitive = t.try_into_primitive::<burn::backend::Flex>().unwrap();
    primitive.bytes().as_ptr() as usize
}
