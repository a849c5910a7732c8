//! Switch EMA: the EMA written into the live weights, against hand-computed sequences, with
//! the live parameters' ids and autodiff markers kept.

use burn::module::Module;
use burn::prelude::*;
use burn_ema::{EmaConfig, EmaError, EmaModule, MovingAverage, SwitchEvery};

mod common;
use common::{Net, Scalar, autodiff_flags, floats, values};

fn live(ema: &EmaModule<Scalar>) -> f32 {
    values(&ema.model().value.val())[0]
}

fn shadow(ema: &EmaModule<Scalar>) -> f32 {
    values(&ema.shadow().value.val())[0]
}

/// Decay 0.5, a switch every 2 steps, by hand (every value exact in binary).
///
/// Copy (blend 1). Step 1: live 4, ema 2. Step 2: live 8, ema 5, switch: live 5. Step 3: live 6,
/// ema 5.5. Step 4: live 7, ema 6.25, switch: live 6.25.
///
/// Blend 0.5. Step 1: live 4, ema 2. Step 2: live 8, ema 5, switch: live 0.5·8 + 0.5·5 = 6.5.
/// Step 3: live 7.5, ema 6.25. Step 4: live 8.5, ema 7.375, switch: live 0.5·8.5 + 0.5·7.375 =
/// 7.9375.
///
/// Blend 0.25 (not symmetric: a blend that weighted the two sides the wrong way round fails it).
/// Step 2: switch: live 0.75·8 + 0.25·5 = 7.25. Step 3: live 8.25, ema 6.625. Step 4: live 9.25,
/// ema 7.9375, switch: live 0.75·9.25 + 0.25·7.9375 = 8.921875.
#[test]
fn switching_every_two_steps_by_hand() {
    // (blend, live after step 2's switch, ema after step 4, live after step 4's switch)
    for (blend, switched, ema_4, last) in [
        (1.0, 5.0, 6.25, 6.25),
        (0.5, 6.5, 7.375, 7.9375),
        (0.25, 7.25, 7.9375, 8.921875),
    ] {
        let device = Device::flex().autodiff();
        let model = Scalar::new(&[0.0], &device);
        let mut ema = EmaModule::new(model, EmaConfig::new(0.5))
            .unwrap()
            .with_switch(SwitchEvery::steps(2).with_blend(blend))
            .unwrap();
        ema.model_mut().set(&[4.0]);
        ema.update().unwrap();
        assert_eq!((live(&ema), shadow(&ema)), (4.0, 2.0));
        ema.model_mut().set(&[8.0]);
        ema.update().unwrap();
        assert_eq!((live(&ema), shadow(&ema)), (switched, 5.0), "blend {blend}");
        // The next two steps move the live weight by +1 from wherever it is.
        ema.model_mut().set(&[switched + 1.0]);
        ema.update().unwrap();
        assert_eq!(live(&ema), switched + 1.0, "no switch at step 3");
        ema.model_mut().set(&[switched + 2.0]);
        ema.update().unwrap();
        assert_eq!((live(&ema), shadow(&ema)), (last, ema_4), "blend {blend}");
    }
}

/// After a switch, the live model is still the optimizer's: same parameter ids, still
/// requiring gradients on the autodiff device, and an SGD step moves it.
#[test]
fn a_switch_keeps_the_live_parameters_trainable() {
    let device = Device::flex().autodiff();
    device.seed(1);
    let mut ema = EmaModule::new(Net::new(&device), EmaConfig::new(0.9)).unwrap();
    for _ in 0..3 {
        ema = common::sgd_step(ema, &device);
        ema.update().unwrap();
    }
    let ids_before: Vec<_> = {
        let mut ids = Vec::new();
        ema.model().visit(&mut common::IdCollector(&mut ids));
        ids
    };
    let flags_before = autodiff_flags(ema.model());
    ema.switch_to_model(1.0).unwrap();
    let mut ids_after = Vec::new();
    ema.model().visit(&mut common::IdCollector(&mut ids_after));
    assert_eq!(ids_after, ids_before);
    assert_eq!(autodiff_flags(ema.model()), flags_before);
    // The live weights are the shadow's now (BatchNorm's running statistics too: averaged).
    assert_eq!(floats(&ema.model().valid()), floats(ema.shadow()));
    let before = floats(&ema.model().valid());
    ema = common::sgd_step(ema, &device);
    assert_ne!(
        floats(&ema.model().valid()),
        before,
        "the optimizer still steps it"
    );
}

#[test]
fn bad_switches_are_refused() {
    let device = Device::flex();
    let ema = EmaModule::new(Scalar::new(&[0.0], &device), EmaConfig::new(0.5)).unwrap();
    assert!(matches!(
        ema.clone().with_switch(SwitchEvery::steps(0)),
        Err(EmaError::InvalidConfig { .. })
    ));
    assert!(matches!(
        ema.clone()
            .with_switch(SwitchEvery::steps(2).with_blend(1.5)),
        Err(EmaError::InvalidConfig { .. })
    ));
    let mut ema = ema;
    assert!(matches!(
        ema.switch_to_model(-0.1),
        Err(EmaError::InvalidConfig { .. })
    ));
}
