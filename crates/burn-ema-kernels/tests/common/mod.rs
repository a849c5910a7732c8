//! Inputs and the f64 reference shared by the kernel tests.
#![allow(dead_code)]

#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cube_suite;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod gate;

use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
use burn_ema_kernels::{tensor_op_update, update};

/// `n` deterministic values in [-3, 3].
pub fn data(n: usize, seed: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 + seed) * 0.731).sin() * 3.0)
        .collect()
}

/// A rank-1 tensor of `values` on `device`.
pub fn tensor(values: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

/// Checks `out` against `d·s + (1 − d)·v` in f64, within `rel` of the magnitudes involved.
pub fn check(out: &[f64], s: &[f32], v: &[f32], decay: f64, rel: f64) {
    assert_eq!(out.len(), s.len());
    for i in 0..s.len() {
        let (si, vi) = (s[i] as f64, v[i] as f64);
        let want = decay * si + (1.0 - decay) * vi;
        let scale = si.abs().max(vi.abs()).max(1e-30);
        assert!(
            (out[i] - want).abs() <= rel * scale,
            "element {i}: {} vs {want} (s {si}, v {vi})",
            out[i]
        );
    }
}

/// Lengths that are and are not multiples of every vector width, empty and one included.
pub const AWKWARD_LENGTHS: [usize; 15] = [0, 1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 1023, 70_001];

/// The fused update on `device` against the f64 reference for every awkward length and a range
/// of decays; with `bit_exact`, also equal bit for bit to the tensor-op path, otherwise within
/// f32 rounding of it.
pub fn check_awkward_lengths(device: &Device, read: fn(Tensor<1>) -> Vec<f64>, bit_exact: bool) {
    for n in AWKWARD_LENGTHS {
        for decay in [0.0f64, 0.5, 0.9, 0.9999] {
            let (s, v) = (data(n, 1.0), data(n, 2.0));
            let w = (1.0f32 - decay as f32) as f64;
            let out = read(update(tensor(&s, device), tensor(&v, device), w));
            check(&out, &s, &v, decay, 1e-6);
            let reference = read(tensor_op_update(tensor(&s, device), tensor(&v, device), w));
            if bit_exact {
                assert_eq!(out, reference, "n = {n}, decay = {decay}");
            } else {
                // Decay 0 makes `check` compare `out` to the reference itself.
                let reference: Vec<f32> = reference.iter().map(|&x| x as f32).collect();
                check(&out, &reference, &reference, 0.0, 1e-6);
            }
        }
    }
}

/// An `f32` shadow updated from `half` parameters on `device`: an `f32` result, exact against
/// the rounded parameter and within `bound` of the `f32` one (callers check which path ran).
/// Returns the inputs `(s, v)`.
pub fn check_half_parameters(
    device: &Device,
    read: fn(Tensor<1>) -> Vec<f64>,
    half: DType,
    bound: f64,
) -> (Vec<f32>, Vec<f32>) {
    let (s, v) = (data(1001, 9.0), data(1001, 10.0));
    let value = tensor(&v, device).cast(burn_ema_kernels::float_dtype(half));
    // The parameter's values as the half type holds them, rounded on the host (round to
    // nearest even, as the device's cast): reading the cast back through the device could give
    // the unrounded values, where Burn's fusion folds an f32 → half → f32 round trip away (seen
    // on an NVIDIA GPU).
    let rounded: Vec<f32> = v
        .iter()
        .map(|&x| match half {
            DType::F16 => burn::tensor::f16::from_f32(x).to_f32(),
            DType::BF16 => burn::tensor::bf16::from_f32(x).to_f32(),
            other => panic!("not a half type: {other:?}"),
        })
        .collect();
    let out = update(tensor(&s, device), value, 0.1);
    assert_eq!(out.dtype(), DType::F32);
    check(&read(out.clone()), &s, &rounded, 0.9, 1e-6);
    check(&read(out), &s, &v, 0.9, bound);
    (s, v)
}

/// `update_multi_dispatch` takes tensors of ranks 1, 2 and 4 in one call and gives each back
/// with its own shape, bit for bit what `s − (s − v)·w` gives in f32 on the host (`w = 1/8`
/// is exact, so no backend rounds differently): no tensor is flattened on the way.
pub fn check_ranks_in_one_call(device: &Device) {
    use burn::backend::TensorMetadata;
    let w = 0.125f32;
    let shapes: [&[usize]; 5] = [&[37], &[6, 7], &[4, 3, 1, 1], &[8, 4, 3, 3], &[1000]];
    let mut jobs = Vec::new();
    let mut expected = Vec::new();
    for (k, shape) in shapes.iter().enumerate() {
        let n = shape.iter().product();
        let (s, v) = (data(n, k as f32), data(n, 100.0 + k as f32));
        expected.push(
            s.iter()
                .zip(&v)
                .map(|(s, v)| s - (s - v) * w)
                .collect::<Vec<f32>>(),
        );
        let make = |x: Vec<f32>| {
            let t = tensor(&x, device);
            match shape.len() {
                1 => t.into_dispatch(),
                2 => t.reshape([shape[0], shape[1]]).into_dispatch(),
                _ => t
                    .reshape([shape[0], shape[1], shape[2], shape[3]])
                    .into_dispatch(),
            }
        };
        jobs.push((vec![make(s)], make(v), vec![f64::from(w)]));
    }
    let out = burn_ema_kernels::update_multi_dispatch(jobs);
    for (k, (mut shadows, want)) in out.into_iter().zip(expected).enumerate() {
        let shadow = shadows.pop().expect("one shadow");
        assert_eq!(
            shadow.shape().to_vec(),
            shapes[k].to_vec(),
            "job {k}'s shape"
        );
        let values: Vec<f32> = match shapes[k].len() {
            1 => Tensor::<1>::from_dispatch(shadow).into_data(),
            2 => Tensor::<2>::from_dispatch(shadow).into_data(),
            _ => Tensor::<4>::from_dispatch(shadow).into_data(),
        }
        .try_to_vec()
        .unwrap();
        assert_eq!(values, want, "job {k}");
    }
}

/// The (shadow, value) element types the engine batches: each shadow's own type, and half
/// parameters of an `f32` shadow.
pub const DTYPE_PAIRS: [(DType, DType); 5] = [
    (DType::F32, DType::F32),
    (DType::F32, DType::F16),
    (DType::F32, DType::BF16),
    (DType::F16, DType::F16),
    (DType::BF16, DType::BF16),
];

/// `x` as element type `dtype` holds it, rounded on the host (round to nearest even, as the
/// devices' casts). From `f32`, as the tests' tensors are made: `half`'s `bf16::from_f64`
/// rounds twice (f64 → f32 → bf16 gives another bf16 for 2 of the 70,001 values of
/// `data(70_001, 347.0)`).
pub fn round_to(x: f32, dtype: DType) -> f64 {
    match dtype {
        DType::F64 | DType::F32 => f64::from(x),
        DType::F16 => f64::from(burn::tensor::f16::from_f32(x).to_f32()),
        DType::BF16 => f64::from(burn::tensor::bf16::from_f32(x).to_f32()),
        other => panic!("not a float type: {other:?}"),
    }
}

/// The unit roundoff of `dtype` (half its epsilon).
fn unit_roundoff(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => f64::EPSILON / 2.0,
        DType::F32 => f64::from(f32::EPSILON) / 2.0,
        DType::F16 => 2f64.powi(-11),
        DType::BF16 => 2f64.powi(-8),
        other => panic!("not a float type: {other:?}"),
    }
}

/// Lengths of [`check_dtype_pairs`]' batch: model-like, of every vector width, enough to span
/// several launches on CubeCL.
pub fn pair_lengths() -> Vec<usize> {
    let mut lengths: Vec<usize> = (1..=40).map(|k| 4 * (1 + (k * 37) % 61)).collect();
    lengths.extend([1, 3, 7, 9, 33, 1023, 5000, 70_001]);
    lengths
}

/// One batch holding every pair of `pairs` ([`pair_lengths`] tensors each; the first half of each
/// pair's tensors with one shadow, the rest with two shadows of one value, weights 1/8 and 1/16,
/// exact in every type), updated by one `update_multi` call and checked against the update in
/// f64 of the inputs as their types hold them: `s − (s − v)·w` with `s` and `v` rounded to their
/// types on the host, within three roundings of the shadow's type (the kernel's subtraction,
/// multiplication and subtraction) of the magnitudes involved. Returns the number of shadow
/// tensors updated.
pub fn check_dtype_pairs(device: &Device, pairs: &[(DType, DType)]) -> usize {
    use burn_ema_kernels::float_dtype;
    let lengths = pair_lengths();
    let weights = [0.125f64, 0.0625];
    // Per entry: the shadows' type, their starts and the value as their types hold them, the
    // weights.
    type Expected = (DType, Vec<Vec<f64>>, Vec<f64>, Vec<f64>);
    let mut entries = Vec::new();
    let mut expected: Vec<Expected> = Vec::new();
    for &(shadow_type, value_type) in pairs {
        for (k, &n) in lengths.iter().enumerate() {
            let count = if k < lengths.len() / 2 { 1 } else { 2 };
            let raw_v = data(n, 300.0 + k as f32);
            let raw_s: Vec<Vec<f32>> = (0..count).map(|j| data(n, (k + 60 * j) as f32)).collect();
            let make = |x: &[f32], dtype| tensor(x, device).cast(float_dtype(dtype));
            let shadows = raw_s.iter().map(|s| make(s, shadow_type)).collect();
            let w = weights[..count].to_vec();
            entries.push((shadows, make(&raw_v, value_type), w.clone()));
            let round = |x: &[f32], dtype| x.iter().map(|&x| round_to(x, dtype)).collect();
            let s = raw_s.iter().map(|s| round(s, shadow_type)).collect();
            expected.push((shadow_type, s, round(&raw_v, value_type), w));
        }
    }
    let out = burn_ema_kernels::update_multi(entries);
    let mut updated = 0;
    for (k, (shadows, (dtype, s, v, w))) in out.into_iter().zip(expected).enumerate() {
        assert_eq!(
            shadows.len(),
            s.len(),
            "entry {k}: one shadow out per shadow in"
        );
        for (j, (shadow, (s, w))) in shadows.into_iter().zip(s.iter().zip(&w)).enumerate() {
            assert_eq!(
                shadow.dtype(),
                dtype,
                "entry {k}, shadow {j} keeps its type"
            );
            // Read as f32 (f64 is not a given on every wgpu adapter) unless it is f64.
            let got: Vec<f64> = match dtype {
                DType::F64 => shadow.into_data().try_to_vec().unwrap(),
                _ => {
                    let got: Vec<f32> = shadow
                        .cast(FloatDType::F32)
                        .into_data()
                        .try_to_vec()
                        .unwrap();
                    got.into_iter().map(f64::from).collect()
                }
            };
            assert_eq!(got.len(), s.len());
            for i in 0..s.len() {
                let want = s[i] - (s[i] - v[i]) * w;
                let bound = 3.0 * unit_roundoff(dtype) * s[i].abs().max(v[i].abs()).max(1e-30);
                assert!(
                    (got[i] - want).abs() <= bound,
                    "{dtype:?} shadow of a {:?} value, entry {k}, shadow {j}, element {i}: {} \
                     instead of {want}",
                    pairs[k / lengths.len()].1,
                    got[i]
                );
            }
            updated += 1;
        }
    }
    updated
}
