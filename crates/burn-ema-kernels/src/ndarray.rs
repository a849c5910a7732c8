//! [`EmaBackend`] for the NdArray CPU backend (deprecated by Burn 0.22, still supported).
//!
//! NdArray's arrays are copy-on-write: writing a uniquely owned one is in place, writing a
//! shared one copies it first, so a clone's values are never changed.

use burn::backend::ndarray::{NdArray, NdArrayElement, NdArrayTensor, SharedArray};
use ndarray::{ArrayViewD, CowArray, IxDyn};

use crate::cpu::{Acc, Job, Store, update_batch};
use crate::{EmaBackend, Entry, Results, primitive_update};

/// One entry with NdArray's own types: the index, the shadows, a view of the value, weights.
type NdEntry<'a, E> = (usize, Vec<SharedArray<E>>, ArrayViewD<'a, E>, Vec<f64>);

/// Updates every entry's shadows (one element type) in one parallel pass; returns each entry's
/// shadows.
fn run_batch<E>(entries: Vec<NdEntry<'_, E>>) -> Results<NdArrayTensor>
where
    E: Acc + Store<E> + NdArrayElement,
    NdArrayTensor: From<SharedArray<E>>,
{
    let mut indices = Vec::with_capacity(entries.len());
    let mut shadows = Vec::with_capacity(entries.len());
    let mut views = Vec::with_capacity(entries.len());
    let mut weights = Vec::with_capacity(entries.len());
    for (index, s, v, w) in entries {
        indices.push(index);
        shadows.push(s);
        views.push(v);
        weights.push(w);
    }
    // Borrowed when the parameter is already in standard layout: no copy of the parameter.
    let values: Vec<CowArray<'_, E, IxDyn>> =
        views.iter().map(|v| v.as_standard_layout()).collect();
    let mut batch = Vec::with_capacity(shadows.len());
    for ((shadows, value), weights) in shadows.iter_mut().zip(&values).zip(&weights) {
        let v = value.as_slice().expect("standard layout has a slice");
        let (mut slices, mut slice_weights) = (Vec::new(), Vec::new());
        for (shadow, &weight) in shadows.iter_mut().zip(weights) {
            if shadow.is_standard_layout() {
                // `as_slice_mut` makes the array unique, copying a shared one.
                slices.push(shadow.as_slice_mut().expect("standard layout has a slice"));
                slice_weights.push(weight);
            } else {
                let w = E::weight(weight);
                let v = ArrayViewD::from_shape(shadow.raw_dim(), v).expect("same element count");
                shadow.zip_mut_with(&v, |s, &v| *s = *s - (*s - v) * w);
            }
        }
        batch.push(Job::multi(slices, v, slice_weights));
    }
    update_batch::<E, E, E>(batch);
    indices
        .into_iter()
        .zip(shadows)
        .map(|(i, shadows)| (i, shadows.into_iter().map(NdArrayTensor::from).collect()))
        .collect()
}

/// Many updates at once, `f32` or `f64` tensors, one type per entry: returns `(index, new
/// shadows)` in any order. Each element type runs as one parallel pass.
pub(crate) fn update_many(entries: Vec<Entry<NdArrayTensor>>) -> Results<NdArrayTensor> {
    // The values' storages stay here while the batches read views of them.
    let (mut f32_jobs, mut f32_values) = (Vec::new(), Vec::new());
    let (mut f64_jobs, mut f64_values) = (Vec::new(), Vec::new());
    let mut out = Vec::new();
    for entry in entries {
        let same = |a: &NdArrayTensor, b: &NdArrayTensor| {
            matches!(
                (a, b),
                (NdArrayTensor::F32(_), NdArrayTensor::F32(_))
                    | (NdArrayTensor::F64(_), NdArrayTensor::F64(_))
            )
        };
        if !entry.shadows.iter().all(|s| same(s, &entry.value)) {
            // Pairs without a fused loop (reachable through a direct `EmaBackend` call).
            let value = entry.value;
            let shadows = entry.shadows.into_iter().zip(entry.weights);
            let shadows = shadows
                .map(|(s, w)| primitive_update::<NdArray>(s, value.clone(), w))
                .collect();
            out.push((entry.index, shadows));
            continue;
        }
        let shadows = entry.shadows.into_iter();
        match entry.value {
            NdArrayTensor::F32(value) => {
                let shadows = shadows.map(|s| match s {
                    NdArrayTensor::F32(s) => s.into_owned(),
                    _ => unreachable!("checked above: every shadow is f32"),
                });
                f32_jobs.push((entry.index, shadows.collect::<Vec<_>>(), entry.weights));
                f32_values.push(value);
            }
            NdArrayTensor::F64(value) => {
                let shadows = shadows.map(|s| match s {
                    NdArrayTensor::F64(s) => s.into_owned(),
                    _ => unreachable!("checked above: every shadow is f64"),
                });
                f64_jobs.push((entry.index, shadows.collect::<Vec<_>>(), entry.weights));
                f64_values.push(value);
            }
            _ => unreachable!("checked above: f32 or f64"),
        }
    }
    let f32_entries = f32_jobs
        .into_iter()
        .zip(&f32_values)
        .map(|((i, s, w), v)| (i, s, v.view(), w))
        .collect();
    let f64_entries = f64_jobs
        .into_iter()
        .zip(&f64_values)
        .map(|((i, s, w), v)| (i, s, v.view(), w))
        .collect();
    out.extend(run_batch(f32_entries));
    out.extend(run_batch(f64_entries));
    out
}

impl EmaBackend for NdArray {
    fn ema_update(shadow: NdArrayTensor, value: NdArrayTensor, weight: f64) -> NdArrayTensor {
        Entry::single(shadow, value, weight).run(update_many)
    }
}
