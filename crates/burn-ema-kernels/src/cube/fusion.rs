//! CubeCL tensors updated many pairs a launch: one operation in Burn's fusion stream per group
//! of pairs (element types, weights, vector width), split at execution into as few kernel
//! launches as the device's bindings allow (`launches::update_pairs`).
//!
//! The operation is written by hand, as Burn's fusion writes `float_cat`: the backend-extension
//! macro takes a fixed number of tensors, and a model's group has any number.

use burn::backend::fusion::custom::{
    CustomOpIr, HandleContainer, OperationFn, OperationIr, ScalarIr, StreamId, TensorIr,
};
use burn::backend::fusion::{FusionBackend, FusionRuntime, FusionTensor};
use burn::backend::{DispatchTensor, TensorMetadata};
use burn::tensor::DType;
use burn_cubecl::{Cube, CubeBackend};

use super::launches::{Pairs, update_pairs};
use crate::dispatch::{from_backend, to_backend};

/// Fusion's handles of CubeCL tensors.
type Handles =
    HandleContainer<<<CubeBackend as FusionBackend>::FusionRuntime as FusionRuntime>::FusionHandle>;

/// Updates CubeCL tensors `(key, shadows, value, weights)` — one shadow per value, or two (two
/// averages of one model: the value is read once for both; both of one element type) —
/// grouped by the shadows' and the value's element types (an `f16` parameter of an `f32`
/// shadow shares the launches of its kind), weights, shadows per value, and whether their
/// length allows 4-wide vectors (a launch uses the narrowest width of its tensors): one fusion
/// operation per group. Returns `(key, new shadows)`.
///
/// Every size shares launches: a launch costs the host a fixed amount through Burn's fusion,
/// CubeCL and wgpu, which dwarfs the work of most tensors on a GPU (the figures:
/// BENCHMARKS.md, "wgpu").
///
/// # Panics
///
/// If a job has no shadow or more than two, or not one weight per shadow.
pub(crate) fn update_in_launches<K: Copy>(
    jobs: Vec<(K, Vec<DispatchTensor>, DispatchTensor, Vec<f64>)>,
) -> Vec<(K, Vec<DispatchTensor>)> {
    type Key = (DType, DType, Vec<u64>, bool);
    let mut groups: Vec<(Key, Vec<_>)> = Vec::new();
    for job in jobs {
        assert!(matches!(job.1.len(), 1 | 2), "one or two shadows a value");
        assert_eq!(job.1.len(), job.3.len(), "one weight per shadow");
        let key = (
            job.1[0].dtype(),
            job.2.dtype(),
            job.3.iter().map(|w| w.to_bits()).collect(),
            job.2.shape().num_elements().is_multiple_of(4),
        );
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, group)) => group.push(job),
            None => groups.push((key, vec![job])),
        }
    }
    let mut out = Vec::new();
    for ((_, _, weights, _), group) in groups {
        let weights: Vec<f64> = weights.into_iter().map(f64::from_bits).collect();
        let mut keys = Vec::with_capacity(group.len());
        let (mut shadows, mut seconds) = (Vec::new(), Vec::new());
        let mut values = Vec::with_capacity(group.len());
        // Moved, not cloned: a shadow held only here is written in place.
        for (key, job_shadows, value, _) in group {
            keys.push(key);
            let mut job_shadows = job_shadows.into_iter();
            shadows.extend(job_shadows.next());
            seconds.extend(job_shadows.next());
            values.push(value);
        }
        let (updated, updated_seconds) = register(shadows, seconds, values, &weights);
        let mut updated_seconds = updated_seconds.into_iter();
        for (key, shadow) in keys.into_iter().zip(updated) {
            let second = if weights.len() == 2 {
                updated_seconds.next()
            } else {
                None
            };
            out.push((key, std::iter::once(shadow).chain(second).collect()));
        }
    }
    out
}

/// Records the update of `shadows` (and `seconds`, empty or one per value; one element type)
/// by `values` (one element type) as one operation in the fusion stream; returns the new shadows and seconds,
/// lazily.
fn register(
    shadows: Vec<DispatchTensor>,
    seconds: Vec<DispatchTensor>,
    values: Vec<DispatchTensor>,
    weights: &[f64],
) -> (Vec<DispatchTensor>, Vec<DispatchTensor>) {
    let fused = |v: Vec<DispatchTensor>| -> Vec<FusionTensor<_>> {
        v.into_iter().map(to_backend::<Cube>).collect()
    };
    let (shadows, seconds, values) = (fused(shadows), fused(seconds), fused(values));
    let client = values[0].client.clone();
    let (n, n_seconds) = (shadows.len(), seconds.len());
    let outputs: Vec<TensorIr> = shadows
        .iter()
        .chain(&seconds)
        .map(|s| TensorIr::uninit(client.create_empty_handle(), s.shape.clone(), s.dtype))
        .collect();
    let inputs: Vec<TensorIr> = shadows
        .into_iter()
        .chain(seconds)
        .chain(values)
        .map(FusionTensor::into_ir)
        .collect();
    let pair_weights = [weights[0], weights.get(1).copied().unwrap_or(0.0)];
    let desc = CustomOpIr {
        id: "burn_ema_update_pairs".into(),
        inputs: inputs.clone(),
        outputs: outputs.clone(),
        scalars: weights.iter().map(|w| ScalarIr::Float(*w)).collect(),
    };
    let operation = OperationFn(move |handles: &mut Handles| {
        let mut shadows: Vec<_> = inputs
            .iter()
            .map(|t| handles.get_float_tensor::<CubeBackend>(t))
            .collect();
        let values = shadows.split_off(n + n_seconds);
        let seconds = shadows.split_off(n);
        let (updated, updated_seconds) = update_pairs(Pairs {
            shadows,
            seconds,
            values,
            weights: pair_weights,
        });
        for (out, tensor) in outputs
            .iter()
            .zip(updated.into_iter().chain(updated_seconds))
        {
            handles.register_float_tensor::<CubeBackend>(&out.id, tensor);
        }
        Ok(())
    });
    let mut updated: Vec<DispatchTensor> = client
        .register(StreamId::current(), OperationIr::Custom(desc), operation)
        .into_iter()
        .map(from_backend::<Cube>)
        .collect();
    let updated_seconds = updated.split_off(n);
    (updated, updated_seconds)
}
