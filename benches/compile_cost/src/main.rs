//! A user's training loop: a small MLP, SGD, with an EMA of its weights under `--features ema`.
use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{GradientsParams, SgdConfig};
use burn::prelude::*;
#[cfg(feature = "ema")]
use burn_ema::MovingAverage;

#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    relu: Relu,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(16, 32).init(device),
            fc2: LinearConfig::new(32, 1).init(device),
            relu: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(self.relu.forward(self.fc1.forward(x)))
    }
}

fn main() {
    let device = Device::flex().autodiff();
    let mut model = Mlp::new(&device);
    let mut optim = SgdConfig::new().init();
    #[cfg(feature = "ema")]
    let mut ema = burn_ema::EmaModule::new(model.clone(), burn_ema::EmaConfig::new(0.99)).unwrap();
    for _ in 0..10 {
        let x = Tensor::<2>::random([8, 16], burn::tensor::Distribution::Default, &device);
        let loss = model.forward(x).powf_scalar(2.0).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(0.01, model, grads);
        #[cfg(feature = "ema")]
        {
            *ema.model_mut() = model.clone();
            ema.update().unwrap();
        }
    }
    #[cfg(feature = "ema")]
    println!("ema updates: {}", ema.num_updates());
    println!("done");
}
