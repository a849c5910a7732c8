//! `MultiEma`: several averages of one model updated together, each the same bits as an
//! `EmaModule` with its configuration.

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::prelude::*;
use burn_ema::{
    BufferPolicy, EmaConfig, EmaError, EmaFile, EmaModule, MovingAverage, MultiEma, Schedule,
    ShadowDType,
};

mod common;
use common::{Net, bits, devices, floats, input};

/// One deterministic SGD step of a bare model.
fn sgd(net: Net, device: &Device) -> Net {
    let mut optim = SgdConfig::new().init();
    let loss = net.forward(input(device)).powf_scalar(2.0).mean();
    let grads = GradientsParams::from_grads(loss.backward(), &net);
    optim.step(0.5, net, grads)
}

/// Averages that exercise every path: batched pairs, a lone third shadow, warmups, copy and
/// skip steps, copied buffers, an excluded path and a wider shadow type.
fn configs() -> Vec<EmaConfig> {
    vec![
        EmaConfig::new(1.0).with_schedule(Schedule::PowerFunction { gamma: 16.97 }),
        EmaConfig::new(1.0).with_schedule(Schedule::PowerFunction { gamma: 6.94 }),
        EmaConfig::new(0.99)
            .with_schedule(Schedule::TensorFlow)
            .with_update_after_step(2)
            .with_buffers(BufferPolicy::Copy),
        EmaConfig::new(0.9)
            .with_update_every(2)
            .with_exclude(vec!["fc2.*".into()]),
        EmaConfig::new(0.95).with_shadow_dtype(ShadowDType::F64),
    ]
}

#[test]
fn each_average_is_the_same_bits_as_its_own_ema_module() {
    for device in devices() {
        let ad = device.clone().autodiff();
        let net = Net::new(&ad);
        let mut multi = MultiEma::new(net.clone(), configs()).unwrap();
        let mut singles: Vec<EmaModule<Net>> = configs()
            .into_iter()
            .map(|c| EmaModule::new(net.clone(), c).unwrap())
            .collect();
        for _ in 0..7 {
            let stepped = sgd(multi.model().clone(), &ad);
            *multi.model_mut() = stepped.clone();
            multi.update().unwrap();
            for single in &mut singles {
                *single.model_mut() = stepped.clone();
                single.update().unwrap();
            }
        }
        assert_eq!(multi.num_averages(), singles.len());
        for (k, single) in singles.iter().enumerate() {
            let shadow = multi.shadow_of(k).unwrap();
            assert_eq!(bits(shadow), bits(single.shadow()), "average {k}");
            assert_eq!(multi.last_decay_of(k).unwrap(), single.last_decay());
        }
        // The averages differ from each other and from the live model.
        assert_ne!(
            floats(multi.shadow_of(0).unwrap()),
            floats(multi.shadow_of(1).unwrap())
        );
        assert_ne!(floats(multi.shadow_of(0).unwrap()), floats(multi.model()));
        assert_eq!(multi.num_updates(), 7);
    }
}

#[test]
fn into_emas_and_back_resumes_exactly() {
    for device in devices() {
        let ad = device.clone().autodiff();
        let start = Net::new(&ad);
        // Independent copies: clones of a model share BatchNorm's running state.
        let copy = Net::new(&ad).load_record(start.clone().into_record());
        let mut straight = MultiEma::new(start, configs()).unwrap();
        let mut resumed = MultiEma::new(copy, configs()).unwrap();
        for step in 0..6 {
            for multi in [&mut straight, &mut resumed] {
                let stepped = sgd(multi.model().clone(), &ad);
                *multi.model_mut() = stepped;
                multi.update().unwrap();
            }
            if step == 2 {
                let emas = resumed.into_emas();
                assert!(emas.iter().all(|e| e.num_updates() == 3));
                resumed = MultiEma::from_emas(emas).unwrap();
            }
        }
        for k in 0..straight.num_averages() {
            assert_eq!(
                bits(resumed.shadow_of(k).unwrap()),
                bits(straight.shadow_of(k).unwrap())
            );
        }
    }
}

#[test]
fn bad_input_is_an_error_and_changes_nothing() {
    let device = Device::flex();
    let err = MultiEma::new(Net::new(&device), vec![])
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(
            err,
            EmaError::InvalidConfig {
                field: "configs",
                ..
            }
        ),
        "{err}"
    );
    let err = MultiEma::new(
        Net::new(&device),
        vec![EmaConfig::new(0.9), EmaConfig::new(2.0)],
    )
    .map(|_| ())
    .unwrap_err();
    assert!(
        matches!(err, EmaError::InvalidConfig { field: "decay", .. }),
        "{err}"
    );

    let mut multi = MultiEma::new(Net::new(&device), configs()).unwrap();
    let before: Vec<_> = (0..multi.num_averages())
        .map(|k| bits(multi.shadow_of(k).unwrap()))
        .collect();
    multi.model_mut().fc2 = LinearConfig::new(8, 3).init(&device);
    let err = multi.update().unwrap_err();
    assert!(matches!(err, EmaError::StructureMismatch { .. }), "{err}");
    let after: Vec<_> = (0..multi.num_averages())
        .map(|k| bits(multi.shadow_of(k).unwrap()))
        .collect();
    assert_eq!(after, before);
    assert_eq!(multi.num_updates(), 0);
    let n = multi.num_averages();
    assert_eq!(
        multi.shadow_of(n).unwrap_err(),
        EmaError::NoSuchAverage { index: n, len: n }
    );
    assert!(multi.config_of(n).is_err());
    assert!(multi.last_decay_of(n).is_err());

    // Averages at different steps cannot be gathered; one whose swap guard leaked can (the
    // swap never changes the EmaModule), with its true shadow.
    let net = Net::new(&device);
    let mut a = EmaModule::new(net.clone(), EmaConfig::new(0.9)).unwrap();
    let b = EmaModule::new(net.clone(), EmaConfig::new(0.8)).unwrap();
    a.update().unwrap();
    let err = MultiEma::from_emas(vec![a, b]).map(|_| ()).unwrap_err();
    assert!(
        matches!(
            err,
            EmaError::InvalidConfig {
                field: "num_updates",
                ..
            }
        ),
        "{err}"
    );
    let mut c = EmaModule::new(net, EmaConfig::new(0.9)).unwrap();
    *c.model_mut() = Net::new(&device); // other weights
    c.update().unwrap();
    let (live, shadow) = (bits(c.model()), bits(c.shadow()));
    assert_ne!(live, shadow);
    std::mem::forget(c.swap().unwrap());
    let gathered = MultiEma::from_emas(vec![c]).unwrap();
    assert_eq!(bits(gathered.shadow()), shadow);
    assert_eq!(bits(gathered.model()), live);
    let err = MultiEma::<Net>::from_emas(vec![]).map(|_| ()).unwrap_err();
    assert!(
        matches!(err, EmaError::InvalidConfig { field: "emas", .. }),
        "{err}"
    );
}

/// The addresses of the shadow's weight buffers (Flex).
fn weight_addresses(net: &Net) -> Vec<usize> {
    [
        net.fc1.weight.val().flatten::<1>(0, 1),
        net.fc2.weight.val().flatten(0, 1),
    ]
    .into_iter()
    .map(common::flex_address)
    .collect()
}

#[test]
fn steady_state_updates_reuse_every_average_s_buffers() {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let configs = vec![EmaConfig::new(0.9), EmaConfig::new(0.99)];
    let mut multi = MultiEma::new(Net::new(&ad), configs).unwrap();
    let step = |multi: &mut MultiEma<Net>| {
        let stepped = sgd(multi.model().clone(), &ad);
        *multi.model_mut() = stepped;
        multi.update().unwrap();
    };
    step(&mut multi);
    let before: Vec<_> = (0..2)
        .map(|k| weight_addresses(multi.shadow_of(k).unwrap()))
        .collect();
    let values_before = floats(multi.shadow_of(0).unwrap());
    for _ in 0..5 {
        step(&mut multi);
    }
    assert_ne!(
        floats(multi.shadow_of(0).unwrap()),
        values_before,
        "the shadow moved"
    );
    let after: Vec<_> = (0..2)
        .map(|k| weight_addresses(multi.shadow_of(k).unwrap()))
        .collect();
    assert_eq!(after, before, "in place: no new buffers");
}

#[test]
fn each_average_saves_a_file_the_bare_model_loads() {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let mut multi = MultiEma::new(Net::new(&ad), configs()).unwrap();
    for _ in 0..3 {
        let stepped = sgd(multi.model().clone(), &ad);
        *multi.model_mut() = stepped;
        multi.update().unwrap();
    }
    let dir = common::Scratch::new("multi");
    for k in 0..multi.num_averages() {
        let file = multi
            .save(k, dir.join(format!("ema-{k}")), EmaFile::Shadow)
            .unwrap();
        assert_eq!(file, dir.join(format!("ema-{k}.bpk")));
        let bare = Net::new(&device).try_load_file(&file).unwrap();
        assert_eq!(
            floats(&bare),
            floats(multi.shadow_of(k).unwrap()),
            "average {k}"
        );
    }
    let err = multi
        .save(multi.num_averages(), dir.join("none"), EmaFile::Shadow)
        .unwrap_err();
    assert_eq!(err, EmaError::NoSuchAverage { index: 5, len: 5 });
    assert!(!dir.join("none.bpk").exists());
    // Safetensors too; an EMA state format is refused by name (the record holds the state).
    let file = multi
        .save(1, dir.join("ema-1"), EmaFile::ShadowSafetensors)
        .unwrap();
    assert_eq!(file, dir.join("ema-1.safetensors"));
    let err = multi
        .save(0, dir.join("state"), EmaFile::State)
        .unwrap_err();
    assert!(
        matches!(
            err,
            EmaError::InvalidConfig {
                field: "format",
                ..
            }
        ),
        "{err}"
    );
    assert!(!dir.join("state.bpk").exists());
    std::fs::remove_dir_all(dir).unwrap();
}
