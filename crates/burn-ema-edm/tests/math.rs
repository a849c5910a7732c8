//! The pieces of EDM against outside references: table 1's formulas evaluated by hand, the
//! sampler against the probability-flow ODE's closed form for Gaussian data, FID against
//! scipy (`fixtures/make_fid_reference.py`) and against the closed form for two Gaussians.

use burn::prelude::*;
use burn_ema_edm::fid::{Gaussian, frechet_distance};
use burn_ema_edm::precond::{Precond, denoise, edm_loss, training_sigma};
use burn_ema_edm::rng::StepRng;
use burn_ema_edm::sampler::{HeunConfig, euler_sample, heun_sample};
use nalgebra::{DMatrix, DVector};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

/// Table 1 at σ = 0.5 = σ_data and at σ = 2, worked by hand:
/// σ = 0.5: σ² + σd² = 0.5 → c_skip = 0.25/0.5, c_out = 0.25/√0.5, c_in = 1/√0.5,
/// c_noise = ln(0.5)/4, λ = 0.5/0.0625;
/// σ = 2: σ² + σd² = 4.25 → c_skip = 0.25/4.25, c_out = 1/√4.25, c_in = 1/√4.25,
/// c_noise = ln(2)/4, λ = 4.25/1.
#[test]
fn the_preconditioning_is_table_1s() {
    let half = Precond::at(0.5);
    let expected = [
        0.5,
        0.353_553_390_593_273_8,
        std::f64::consts::SQRT_2,
        -0.173_286_795_139_986_3,
        8.0,
    ];
    let got = [
        half.c_skip,
        half.c_out,
        half.c_in,
        half.c_noise,
        half.loss_weight,
    ];
    for (g, e) in got.iter().zip(expected) {
        assert!(close(*g, e, 1e-12), "σ = 0.5: {got:?}");
    }
    let two = Precond::at(2.0);
    let expected = [
        0.058_823_529_411_764_705,
        0.485_071_250_072_665_9,
        0.485_071_250_072_665_9,
        0.173_286_795_139_986_3,
        4.25,
    ];
    let got = [
        two.c_skip,
        two.c_out,
        two.c_in,
        two.c_noise,
        two.loss_weight,
    ];
    for (g, e) in got.iter().zip(expected) {
        assert!(close(*g, e, 1e-12), "σ = 2: {got:?}");
    }
    // P_mean = −1.2, P_std = 1.2: the median training σ is e^−1.2, one std above e^0.
    assert!(close(training_sigma(0.0), (-1.2f64).exp(), 1e-15));
    assert!(close(training_sigma(1.0), 1.0, 1e-15));
}

/// The tensor form used in training gives the same scalings: with a network that returns
/// ones, `D = c_skip·x + c_out`; the network sees `c_in·x` and `c_noise`.
#[test]
fn the_denoiser_and_loss_apply_the_scalings() {
    let device = Device::flex();
    let sigmas = [0.5f32, 2.0];
    let x = Tensor::<4>::from_data(TensorData::new(vec![0.3f32, -0.7], [2, 1, 1, 1]), &device);
    let sigma = Tensor::<1>::from_data(TensorData::new(sigmas.to_vec(), [2]), &device);
    let mut seen = None;
    let d = denoise(x.clone(), sigma.clone(), |input, c_noise| {
        seen = Some((
            input.clone().into_data().try_to_vec::<f32>().unwrap(),
            c_noise.into_data().try_to_vec::<f32>().unwrap(),
        ));
        input.ones_like()
    });
    let d = d.into_data().try_to_vec::<f32>().unwrap();
    let (input, c_noise) = seen.unwrap();
    for (i, (&s, &xv)) in sigmas.iter().zip(&[0.3f32, -0.7]).enumerate() {
        let p = Precond::at(s as f64);
        assert!(
            close(d[i] as f64, p.c_skip * xv as f64 + p.c_out, 1e-6),
            "{d:?}"
        );
        assert!(close(input[i] as f64, p.c_in * xv as f64, 1e-6));
        assert!(close(c_noise[i] as f64, p.c_noise, 1e-6));
    }
    // The loss with a zero network and zero noise: λ·(c_skip·x − x)², averaged.
    let loss: f32 = edm_loss(x, sigma, Tensor::zeros([2, 1, 1, 1], &device), |i, _| {
        i.zeros_like()
    })
    .into_scalar();
    let expected: f64 = sigmas
        .iter()
        .zip([0.3f64, -0.7])
        .map(|(&s, xv)| {
            let p = Precond::at(s as f64);
            p.loss_weight * ((p.c_skip - 1.0) * xv).powi(2)
        })
        .sum::<f64>()
        / 2.0;
    assert!(close(loss as f64, expected, 1e-5), "{loss} vs {expected}");
}

/// Data `N(μ, s²)` per pixel has the optimal denoiser `D(x; σ) = μ + s²/(s² + σ²)·(x − μ)`, and
/// the probability-flow ODE then maps a start `x_T` at σ_max to `μ + (x_T − μ)·s/√(s² + σ_max²)`.
/// Heun's method is second order: doubling the steps divides its error by about 4 (Euler's,
/// first order, by about 2), so a sampler without the correction, or with it wrong, fails here;
/// its samples have the data's mean and variance.
#[test]
fn heun_reproduces_a_gaussians_mean_and_variance() {
    let device = Device::flex();
    let (mu, s) = (0.3f64, 0.5f64);
    let n = 20_000;
    let start = StepRng::new(7, 0, 0).normals(n);
    let noise = Tensor::<2>::from_data(TensorData::new(start.clone(), [n, 1]), &device);
    let optimal = |x: Tensor<2>, sigma: f64| {
        x.sub_scalar(mu)
            .mul_scalar(s * s / (s * s + sigma * sigma))
            .add_scalar(mu)
    };
    let sample = |steps: usize, heun: bool| -> Vec<f32> {
        let config = HeunConfig {
            steps,
            ..HeunConfig::default()
        };
        let out = if heun {
            heun_sample(&config, noise.clone(), optimal)
        } else {
            euler_sample(&config, noise.clone(), optimal)
        };
        out.into_data().try_to_vec::<f32>().unwrap()
    };
    let sigma_max = HeunConfig::default().sigma_max;
    let scale = s / (s * s + sigma_max * sigma_max).sqrt();
    let exact: Vec<f64> = start
        .iter()
        .map(|&z| mu + (z as f64 * sigma_max - mu) * scale)
        .collect();
    // The error relative to the exact map's spread.
    let error = |xs: &[f32]| {
        xs.iter()
            .zip(&exact)
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0.0, f64::max)
            / (s * 4.0)
    };
    let heun: Vec<f64> = [18, 36, 72]
        .iter()
        .map(|&k| error(&sample(k, true)))
        .collect();
    let euler: Vec<f64> = [18, 36, 72]
        .iter()
        .map(|&k| error(&sample(k, false)))
        .collect();
    println!("relative error at 18, 36, 72 steps: Heun {heun:?}, Euler {euler:?}");
    for k in 0..2 {
        let (h, e) = (heun[k] / heun[k + 1], euler[k] / euler[k + 1]);
        assert!(
            h > 3.0,
            "Heun's error fell by {h} when the steps doubled: not second order"
        );
        assert!(e < 2.8, "Euler's fell by {e}: the reference itself is off");
    }
    assert!(heun[0] < euler[0] / 2.0, "Heun {heun:?} vs Euler {euler:?}");
    // The moments: at 18 steps the variance is 10% high on this narrow Gaussian (σ_data = s:
    // the solution bends where the ρ = 7 schedule takes its widest low-noise steps), at 72
    // within 2%; the mean is right at both.
    let exact_mean = exact.iter().sum::<f64>() / n as f64;
    for (steps, tolerance) in [(18, 0.12), (72, 0.02)] {
        let samples = sample(steps, true);
        let mean = samples.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = samples
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / (n - 1) as f64;
        println!(
            "{steps} Heun steps: mean {mean:.4} (data {mu}), variance {var:.4} (data {})",
            s * s
        );
        assert!(
            (mean - exact_mean).abs() < 0.01,
            "{steps} steps: mean {mean} vs {exact_mean}"
        );
        assert!(
            (var / (s * s) - 1.0).abs() < tolerance,
            "{steps} steps: variance {var}"
        );
    }
    let config = HeunConfig::default();
    assert_eq!((config.sigmas().len(), config.evaluations()), (19, 35));
    assert!(close(config.sigmas()[0], 80.0, 1e-12) && close(config.sigmas()[17], 0.002, 1e-9));
}

#[test]
fn fid_matches_scipy_on_fixed_features() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fid_reference.json"),
    )
    .unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    let d = fixture["dim"].as_u64().unwrap() as usize;
    let floats = |key: &str| -> Vec<f32> {
        fixture[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect()
    };
    let a = Gaussian::of(&floats("a"), d).unwrap();
    let b = Gaussian::of(&floats("b"), d).unwrap();
    let expected = fixture["fid"].as_f64().unwrap();
    let got = frechet_distance(&a, &b);
    assert!(close(got, expected, 1e-9), "FID {got}, scipy {expected}");
    assert!(frechet_distance(&a, &a).abs() < 1e-9);
    assert!(close(frechet_distance(&b, &a), expected, 1e-9), "symmetric");
}

/// Two Gaussians with commuting (diagonal) covariances: FID = ‖μ₁ − μ₂‖² + Σ(σ₁ᵢ − σ₂ᵢ)².
#[test]
fn fid_is_the_closed_form_for_known_gaussians() {
    let g = |mean: [f64; 3], var: [f64; 3]| Gaussian {
        mean: DVector::from_row_slice(&mean),
        cov: DMatrix::from_diagonal(&DVector::from_row_slice(&var)),
    };
    let a = g([0.0, 1.0, -2.0], [1.0, 4.0, 9.0]);
    let b = g([1.0, 1.0, 0.0], [4.0, 1.0, 0.25]);
    // ‖μ‖² = 1 + 0 + 4; (1 − 2)² + (2 − 1)² + (3 − 0.5)² = 1 + 1 + 6.25.
    assert!(close(frechet_distance(&a, &b), 13.25, 1e-12));
    // A rotated pair (non-diagonal, same spectrum): the distance is rotation-invariant.
    let (c, s) = (0.6f64, 0.8f64);
    let r = DMatrix::from_row_slice(3, 3, &[c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0]);
    let rotate = |x: &Gaussian| Gaussian {
        mean: &r * &x.mean,
        cov: &r * &x.cov * r.transpose(),
    };
    assert!(close(
        frechet_distance(&rotate(&a), &rotate(&b)),
        13.25,
        1e-9
    ));
}
