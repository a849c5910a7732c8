//! Writes `tests/fixtures/legacy/`: one file of each format, written by burn-ema's API before
//! 1.0 (this file is removed by the 1.0 API change; `git show` it at the commit that added
//! the fixtures). Run: `cargo test --test write_legacy_fixtures -- --ignored`.

mod common;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn_ema::{
    EmaConfig, EmaModule, MovingAverage, PostHocConfig, PostHocEma, SaveOptions, Warmup, Width,
};
use common::{Net, floats};

/// Every float tensor of the net set to multiples of 1/8 from `seed` (exact in f32, and so are
/// the averages at decays 0.5 and 0.75).
struct Fill {
    seed: usize,
    next: usize,
}

impl ModuleMapper for Fill {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (seed, start) = (self.seed, self.next);
        let n = param.shape().num_elements();
        self.next += n;
        param.map(|t| {
            let values: Vec<f32> = (start..start + n)
                .map(|i| ((i * 5 + seed * 3) % 17) as f32 / 8.0 - 1.0)
                .collect();
            let device = t.device();
            let require_grad = t.is_require_grad();
            Tensor::<D>::from_data(TensorData::new(values, t.shape()), &device)
                .set_require_grad(require_grad)
        })
    }
}

fn net(seed: usize) -> Net {
    Net::new(&Device::flex()).map(&mut Fill { seed, next: 0 })
}

fn trained(config: EmaConfig) -> EmaModule<Net> {
    let mut ema = EmaModule::new(net(0), config).unwrap();
    *ema.model_mut() = net(1);
    ema.update_with_decay(0.5).unwrap();
    *ema.model_mut() = net(2);
    ema.update_with_decay(0.75).unwrap();
    ema
}

#[test]
#[ignore = "writes the committed fixtures"]
fn write_legacy_fixtures() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy");
    std::fs::create_dir_all(&dir).unwrap();
    let power = EmaConfig::new(0.999)
        .with_warmup(Warmup::Power {
            inv_gamma: 1.0,
            power: 0.75,
        })
        .with_min_decay(0.25);
    let ema = trained(power);
    ema.save(dir.join("state")).unwrap();
    ema.save_shadow(dir.join("shadow")).unwrap();
    ema.save_shadow_safetensors(dir.join("shadow")).unwrap();
    ema.save_tf_style(dir.join("tf_style")).unwrap();
    let tf = trained(
        EmaConfig::new(0.99)
            .with_warmup(Warmup::NumUpdates)
            .with_update_every(2),
    );
    tf.save_with(
        dir.join("state_with_model"),
        &SaveOptions::new().with_include_model(true),
    )
    .unwrap();
    let constant = trained(EmaConfig::new(0.9));
    constant.save(dir.join("state_constant")).unwrap();
    for (name, config) in [
        ("state_cosine", EmaConfig::dino_teacher(0.996, 100)),
        ("state_half_life", EmaConfig::half_life(0.1)),
        ("state_power_function", EmaConfig::swa(0)),
    ] {
        trained(config).save(dir.join(name)).unwrap();
    }

    // Post-hoc snapshots: two profiles, snapshots at steps 2 and 4, and the synthesized
    // σ_rel 0.07 of the old code.
    let snapshots = dir.join("posthoc");
    let _ = std::fs::remove_dir_all(&snapshots);
    let mut posthoc = PostHocEma::new(
        net(0),
        PostHocConfig::new().with_snapshot_every(2),
        &snapshots,
    )
    .unwrap();
    for seed in 1..=4 {
        *posthoc.model_mut() = net(seed);
        posthoc.update().unwrap();
    }
    let synthesized: Net = posthoc
        .posthoc_snapshots()
        .synthesize(&net(0), Width::SigmaRel(0.07), None)
        .unwrap();
    let bits: Vec<(String, Vec<u32>)> = floats(&synthesized)
        .into_iter()
        .map(|(p, v)| (p, v.into_iter().map(f32::to_bits).collect()))
        .collect();
    std::fs::write(
        dir.join("posthoc_sigma_rel_0.07.json"),
        serde_json::to_string_pretty(&bits).unwrap(),
    )
    .unwrap();
}
