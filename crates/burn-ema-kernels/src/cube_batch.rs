//! CubeCL tensors updated many pairs a launch: one operation in Burn's fusion stream per group
//! of pairs (element type, weight, vector width), split at execution into as few kernel
//! launches as the device's bindings allow (`cube::pairs_per_launch`).
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

use crate::batch::{from_backend, to_backend};
use crate::cube::update_pairs;

/// Fusion's handles of CubeCL tensors.
type Handles =
    HandleContainer<<<CubeBackend as FusionBackend>::FusionRuntime as FusionRuntime>::FusionHandle>;

/// Updates CubeCL tensors `(key, shadow, value, weight)`, grouped by element type, weight, and
/// whether their length allows 4-wide vectors (a launch uses the narrowest width of its pairs):
/// one fusion operation per group. Returns `(key, new shadow)`.
///
/// Every size shares launches: a launch costs the host a fixed amount through Burn's fusion,
/// CubeCL and wgpu, which dwarfs the work of most tensors on a GPU (the figures:
/// BENCHMARKS.md, "wgpu").
pub(crate) fn update_in_launches<K: Copy>(
    jobs: Vec<(K, DispatchTensor, DispatchTensor, f64)>,
) -> Vec<(K, DispatchTensor)> {
    let mut groups: Vec<((DType, u64, bool), Vec<_>)> = Vec::new();
    for job in jobs {
        let key = (
            job.1.dtype(),
            job.3.to_bits(),
            job.1.shape().num_elements().is_multiple_of(4),
        );
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, group)) => group.push(job),
            None => groups.push((key, vec![job])),
        }
    }
    let mut out = Vec::new();
    for ((_, weight, _), group) in groups {
        let mut keys = Vec::with_capacity(group.len());
        let mut shadows = Vec::with_capacity(group.len());
        let mut values = Vec::with_capacity(group.len());
        // Moved, not cloned: a shadow held only here is written in place.
        for (key, shadow, value, _) in group {
            keys.push(key);
            shadows.push(shadow);
            values.push(value);
        }
        let updated = register(shadows, values, f64::from_bits(weight));
        out.extend(keys.into_iter().zip(updated));
    }
    out
}

/// Records the update of `shadows` (one element type) by `values` as one operation in the
/// fusion stream; returns the new shadows, lazily.
fn register(
    shadows: Vec<DispatchTensor>,
    values: Vec<DispatchTensor>,
    weight: f64,
) -> Vec<DispatchTensor> {
    let shadows: Vec<FusionTensor<_>> = shadows.into_iter().map(to_backend::<Cube>).collect();
    let client = shadows[0].client.clone();
    let n = shadows.len();
    let outputs: Vec<TensorIr> = shadows
        .iter()
        .map(|s| TensorIr::uninit(client.create_empty_handle(), s.shape.clone(), s.dtype))
        .collect();
    let inputs: Vec<TensorIr> = shadows
        .into_iter()
        .chain(values.into_iter().map(to_backend::<Cube>))
        .map(FusionTensor::into_ir)
        .collect();
    let desc = CustomOpIr {
        id: "burn_ema_update_pairs".into(),
        inputs: inputs.clone(),
        outputs: outputs.clone(),
        scalars: vec![ScalarIr::Float(weight)],
    };
    let operation = OperationFn(move |handles: &mut Handles| {
        let mut shadows: Vec<_> = inputs
            .iter()
            .map(|t| handles.get_float_tensor::<CubeBackend>(t))
            .collect();
        let values = shadows.split_off(n);
        let updated = update_pairs(shadows, values, weight);
        for (out, tensor) in outputs.iter().zip(updated) {
            handles.register_float_tensor::<CubeBackend>(&out.id, tensor);
        }
        Ok(())
    });
    client
        .register(StreamId::current(), OperationIr::Custom(desc), operation)
        .into_iter()
        .map(from_backend::<Cube>)
        .collect()
}
