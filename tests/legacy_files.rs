//! Files written by burn-ema before 1.0 load with the 1.0 API, bit for bit (the fixtures and
//! how they were written: `tests/fixtures/legacy/README.md`).

mod common;

use std::path::PathBuf;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn_ema::{
    EmaConfig, EmaFile, EmaModule, MovingAverage, PostHocSnapshots, Schedule, Width,
    shadow_from_file, shadow_from_tf_style,
};
use common::{Net, bits, floats};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/legacy")
        .join(name)
}

/// The fixtures' weights: every float of the net, in traversal order, a multiple of 1/8 from
/// `seed` (the writer's rule, restated here from its source at commit 2dc8074).
fn value(seed: usize, i: usize) -> f32 {
    ((i * 5 + seed * 3) % 17) as f32 / 8.0 - 1.0
}

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
            let values: Vec<f32> = (start..start + n).map(|i| value(seed, i)).collect();
            Tensor::<D>::from_data(TensorData::new(values, t.shape()), &t.device())
        })
    }
}

fn net(seed: usize) -> Net {
    Net::new(&Device::flex()).map(&mut Fill { seed, next: 0 })
}

/// The shadow every fixture holds: the weights of seed 0, averaged with seed 1's at decay 0.5,
/// then with seed 2's at decay 0.75 — exact in f32 (multiples of 1/64).
fn expected_shadow() -> Vec<(String, Vec<u32>)> {
    floats(&net(0))
        .into_iter()
        .scan(0usize, |next, (path, v)| {
            let start = *next;
            *next += v.len();
            let bits = (start..start + v.len())
                .map(|i| {
                    let s1 = 0.5 * value(0, i) + 0.5 * value(1, i);
                    (0.75 * s1 + 0.25 * value(2, i)).to_bits()
                })
                .collect();
            Some((path, bits))
        })
        .collect()
}

#[test]
fn the_arithmetic_is_exact() {
    // Every expected value is a multiple of 1/64 in [-1, 1.125]: exact in f32, whatever the
    // update's rounding (so the loads below are checked bit for bit against it).
    for (_, v) in expected_shadow() {
        for b in v {
            let x = f32::from_bits(b) * 64.0;
            assert_eq!(x, x.round());
        }
    }
}

#[test]
fn state_files_of_every_schedule_load_with_their_configuration() {
    let cases = [
        (
            "state.bpk",
            EmaConfig::new(0.999)
                .with_schedule(Schedule::Warmup {
                    inv_gamma: 1.0,
                    power: 0.75,
                })
                .with_min_decay(0.25),
        ),
        (
            "state_with_model.bpk",
            EmaConfig::new(0.99)
                .with_schedule(Schedule::TensorFlow)
                .with_update_every(2),
        ),
        ("state_constant.bpk", EmaConfig::new(0.9)),
        ("state_cosine.bpk", EmaConfig::dino_teacher(0.996, 100)),
        ("state_half_life.bpk", EmaConfig::half_life(0.1)),
        ("state_power_function.bpk", EmaConfig::swa(0)),
    ];
    for (name, config) in cases {
        let ema = EmaModule::from_file(net(9), fixture(name)).unwrap();
        assert_eq!(ema.config(), &config, "{name}");
        assert_eq!(ema.num_updates(), 2, "{name}");
        assert_eq!(bits(ema.shadow()), expected_shadow(), "{name}");
        let live = if name == "state_with_model.bpk" { 2 } else { 9 };
        assert_eq!(
            bits(ema.model()),
            bits(&net(live)),
            "{name}: the live model"
        );
        // And into an existing EmaModule, whose configuration the file's replaces.
        let mut other = EmaModule::new(net(9), EmaConfig::new(0.5)).unwrap();
        other.load(fixture(name), EmaFile::State).unwrap();
        assert_eq!(other.config(), &config, "{name}");
        assert_eq!(bits(other.shadow()), expected_shadow(), "{name}");
        // What 1.0 writes from it loads back the same.
        let dir = common::Scratch::new(&format!("legacy-{name}"));
        let again = other.save(dir.join("again"), EmaFile::State).unwrap();
        let back = EmaModule::from_file(net(9), again).unwrap();
        assert_eq!(back.config(), &config);
        assert_eq!(bits(back.shadow()), expected_shadow());
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn shadow_and_tensorflow_files_load() {
    let bare = net(9);
    let from_bpk = shadow_from_file(&bare, fixture("shadow.bpk")).unwrap();
    assert_eq!(bits(&from_bpk), expected_shadow());
    let from_tf = shadow_from_tf_style(&bare, fixture("tf_style.safetensors")).unwrap();
    assert_eq!(bits(&from_tf), expected_shadow());
    for (name, format) in [
        ("shadow.bpk", EmaFile::Shadow),
        ("shadow.safetensors", EmaFile::ShadowSafetensors),
    ] {
        let mut ema = EmaModule::new(net(9), EmaConfig::new(0.9)).unwrap();
        ema.load(fixture(name), format).unwrap();
        assert_eq!(bits(ema.shadow()), expected_shadow(), "{name}");
        assert_eq!(ema.num_updates(), 0, "{name}: a shadow file has no counter");
    }
    let mut ema = EmaModule::new(net(9), EmaConfig::new(0.9)).unwrap();
    ema.load(fixture("tf_style.safetensors"), EmaFile::TensorFlow)
        .unwrap();
    assert_eq!(bits(ema.shadow()), expected_shadow());
    assert_eq!(bits(ema.model()), bits(&net(2)));
    assert_eq!(ema.num_updates(), 2);
}

#[test]
fn post_hoc_snapshots_synthesize_what_the_old_code_did() {
    let snapshots = PostHocSnapshots::open(fixture("posthoc")).unwrap();
    assert_eq!(snapshots.steps(), vec![2, 4]);
    let synthesized: Net = snapshots
        .synthesize(&net(9), Width::SigmaRel(0.07), None)
        .unwrap();
    let text = std::fs::read_to_string(fixture("posthoc_sigma_rel_0.07.json")).unwrap();
    let old: Vec<(String, Vec<u32>)> = serde_json::from_str(&text).unwrap();
    assert_eq!(bits(&synthesized), old);
}
