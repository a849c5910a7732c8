//! A small U-Net for 28×28 digits: residual blocks with group norm and SiLU at 28×28, 14×14 and
//! 7×7, skip connections from the encoder to the decoder, the noise level (and optionally the
//! class) as an embedding added inside every block — the shape of EDM's networks (DDPM++ and
//! its relatives), shrunk to train on two CPU cores.

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, GroupNorm, GroupNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

/// The U-Net's widths.
#[derive(Config, Debug)]
pub struct UNetConfig {
    /// Channels at 28×28 (twice this at 14×14 and 7×7).
    #[config(default = 32)]
    pub channels: usize,
    /// Width of the noise-level embedding.
    #[config(default = 128)]
    pub embedding: usize,
    /// Conditioned on the digit's class (10 classes) when set.
    #[config(default = true)]
    pub class_conditional: bool,
}

fn conv3(channels: [usize; 2], stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new(channels, [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

fn norm(channels: usize, device: &Device) -> GroupNorm {
    GroupNormConfig::new(8.min(channels), channels).init(device)
}

/// GN → SiLU → conv → + embedding → GN → SiLU → conv, plus the input (1×1 conv when the width
/// changes).
#[derive(Module, Debug)]
pub struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    emb: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    skip: Option<Conv2d>,
}

impl ResBlock {
    fn new(channels: [usize; 2], embedding: usize, device: &Device) -> Self {
        let [cin, cout] = channels;
        Self {
            norm1: norm(cin, device),
            conv1: conv3([cin, cout], 1, device),
            emb: LinearConfig::new(embedding, cout).init(device),
            norm2: norm(cout, device),
            conv2: conv3([cout, cout], 1, device),
            skip: (cin != cout).then(|| Conv2dConfig::new([cin, cout], [1, 1]).init(device)),
        }
    }

    fn forward(&self, x: Tensor<4>, emb: Tensor<2>) -> Tensor<4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let [b, c] = [h.dims()[0], h.dims()[1]];
        let h = h + self.emb.forward(emb).reshape([b, c, 1, 1]);
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let skip = match &self.skip {
            Some(conv) => conv.forward(x),
            None => x,
        };
        h + skip
    }
}

/// The network `F` of EDM's `D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise)`.
#[derive(Module, Debug)]
pub struct UNet {
    freqs: usize,
    emb1: Linear,
    emb2: Linear,
    class: Option<Embedding>,
    input: Conv2d,
    enc28: ResBlock,
    down14: Conv2d,
    enc14: ResBlock,
    down7: Conv2d,
    enc7: ResBlock,
    mid: ResBlock,
    dec7: ResBlock,
    dec14: ResBlock,
    dec28: ResBlock,
    out_norm: GroupNorm,
    output: Conv2d,
}

impl UNetConfig {
    /// A freshly initialised U-Net on `device`.
    pub fn init(&self, device: &Device) -> UNet {
        let (c, e) = (self.channels, self.embedding);
        let freqs = 16;
        UNet {
            freqs,
            emb1: LinearConfig::new(2 * freqs, e).init(device),
            emb2: LinearConfig::new(e, e).init(device),
            class: self
                .class_conditional
                .then(|| EmbeddingConfig::new(10, e).init(device)),
            input: conv3([1, c], 1, device),
            enc28: ResBlock::new([c, c], e, device),
            down14: conv3([c, 2 * c], 2, device),
            enc14: ResBlock::new([2 * c, 2 * c], e, device),
            down7: conv3([2 * c, 2 * c], 2, device),
            enc7: ResBlock::new([2 * c, 2 * c], e, device),
            mid: ResBlock::new([2 * c, 2 * c], e, device),
            dec7: ResBlock::new([4 * c, 2 * c], e, device),
            dec14: ResBlock::new([4 * c, 2 * c], e, device),
            dec28: ResBlock::new([3 * c, c], e, device),
            out_norm: norm(c, device),
            output: conv3([c, 1], 1, device),
        }
    }
}

fn upsample(x: Tensor<4>, side: usize) -> Tensor<4> {
    interpolate(
        x,
        InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([side, side]),
    )
}

impl UNet {
    /// Whether the network takes a class label.
    pub fn is_class_conditional(&self) -> bool {
        self.class.is_some()
    }

    /// The sinusoidal embedding of the noise levels `c_noise` `[batch]`: `[batch, 2·freqs]`,
    /// with frequencies from 1 to 1000 (DDPM++'s positional embedding, on EDM's `ln(σ)/4`).
    fn noise_features(&self, c_noise: Tensor<1>) -> Tensor<2> {
        let device = c_noise.device();
        let n = self.freqs;
        let freqs: Vec<f32> = (0..n)
            .map(|i| (1000f64.powf(i as f64 / (n - 1) as f64)) as f32)
            .collect();
        let freqs = Tensor::<1>::from_floats(freqs.as_slice(), &device).unsqueeze_dim::<2>(0);
        let angles = c_noise.unsqueeze_dim::<2>(1).matmul(freqs);
        Tensor::cat(vec![angles.clone().cos(), angles.sin()], 1)
    }

    /// `F(x, c_noise, class)`: images `[batch, 1, 28, 28]`, noise levels `[batch]`, classes
    /// `[batch]` (ignored by an unconditional network).
    pub fn forward(
        &self,
        x: Tensor<4>,
        c_noise: Tensor<1>,
        class: Option<Tensor<1, Int>>,
    ) -> Tensor<4> {
        let mut emb = self.emb1.forward(self.noise_features(c_noise));
        if let (Some(table), Some(class)) = (&self.class, class) {
            emb = emb
                + table
                    .forward(class.unsqueeze_dim::<2>(1))
                    .squeeze_dim::<2>(1);
        }
        let emb = self.emb2.forward(silu(emb));
        let emb = silu(emb);

        let h28 = self.enc28.forward(self.input.forward(x), emb.clone());
        let h14 = self
            .enc14
            .forward(self.down14.forward(h28.clone()), emb.clone());
        let h7 = self
            .enc7
            .forward(self.down7.forward(h14.clone()), emb.clone());
        let m = self.mid.forward(h7.clone(), emb.clone());
        let d7 = self.dec7.forward(Tensor::cat(vec![m, h7], 1), emb.clone());
        let d14 = self
            .dec14
            .forward(Tensor::cat(vec![upsample(d7, 14), h14], 1), emb.clone());
        let d28 = self
            .dec28
            .forward(Tensor::cat(vec![upsample(d14, 28), h28], 1), emb);
        self.output.forward(silu(self.out_norm.forward(d28)))
    }
}
