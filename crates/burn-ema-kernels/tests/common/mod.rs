//! Inputs and the f64 reference shared by the kernel tests.
#![allow(dead_code)]

use burn::prelude::*;

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
