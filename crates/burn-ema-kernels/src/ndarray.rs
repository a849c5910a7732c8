//! [`EmaBackend`] for the NdArray CPU backend (deprecated by Burn 0.22, still supported).
//!
//! NdArray's arrays are copy-on-write: writing a uniquely owned one is in place, writing a
//! shared one copies it first, so a clone's values are never changed.

use burn::backend::ndarray::{NdArray, NdArrayElement, NdArrayTensor, SharedArray};
use ndarray::{ArrayViewD, CowArray, IxDyn};

use crate::EmaBackend;
use crate::cpu::{Acc, Job, Store, update_batch};

/// Updates every shadow towards its value (same element type) in one parallel pass; returns
/// the shadows in the order given.
fn run_batch<E>(jobs: Vec<(SharedArray<E>, ArrayViewD<'_, E>, f64)>) -> Vec<SharedArray<E>>
where
    E: Acc + Store<E> + NdArrayElement,
{
    let mut shadows = Vec::with_capacity(jobs.len());
    let mut views = Vec::with_capacity(jobs.len());
    let mut weights = Vec::with_capacity(jobs.len());
    for (shadow, value, weight) in jobs {
        shadows.push(shadow);
        views.push(value);
        weights.push(weight);
    }
    // Borrowed when the parameter is already in standard layout: no copy of the parameter.
    let values: Vec<CowArray<'_, E, IxDyn>> =
        views.iter().map(|v| v.as_standard_layout()).collect();
    let mut batch = Vec::with_capacity(shadows.len());
    for ((shadow, value), &weight) in shadows.iter_mut().zip(&values).zip(&weights) {
        let v = value.as_slice().expect("standard layout has a slice");
        if shadow.is_standard_layout() {
            // `as_slice_mut` makes the array unique, copying a shared one.
            let s = shadow.as_slice_mut().expect("standard layout has a slice");
            batch.push(Job::new(s, v, weight));
        } else {
            let w = E::weight(weight);
            let v = ArrayViewD::from_shape(shadow.raw_dim(), v).expect("same number of elements");
            shadow.zip_mut_with(&v, |s, &v| *s = *s - (*s - v) * w);
        }
    }
    update_batch::<E, E, E>(batch);
    shadows
}

/// Many updates at once, `(index, shadow, value, weight)` with `f32` or `f64` tensors of one
/// type per job: returns `(index, new shadow)` in any order. Each element type runs as one
/// parallel pass.
pub(crate) fn update_many(
    jobs: Vec<(usize, NdArrayTensor, NdArrayTensor, f64)>,
) -> Vec<(usize, NdArrayTensor)> {
    let (mut f32_ids, mut f32_shadows, mut f32_values) = (vec![], vec![], vec![]);
    let (mut f64_ids, mut f64_shadows, mut f64_values) = (vec![], vec![], vec![]);
    for (i, shadow, value, weight) in jobs {
        match (shadow, value) {
            (NdArrayTensor::F32(s), NdArrayTensor::F32(v)) => {
                f32_ids.push(i);
                f32_shadows.push((s.into_owned(), weight));
                f32_values.push(v);
            }
            (NdArrayTensor::F64(s), NdArrayTensor::F64(v)) => {
                f64_ids.push(i);
                f64_shadows.push((s.into_owned(), weight));
                f64_values.push(v);
            }
            _ => unreachable!("`update_many` checks the types first"),
        }
    }
    let f32_jobs = f32_shadows
        .into_iter()
        .zip(&f32_values)
        .map(|((s, w), v)| (s, v.view(), w))
        .collect();
    let f64_jobs = f64_shadows
        .into_iter()
        .zip(&f64_values)
        .map(|((s, w), v)| (s, v.view(), w))
        .collect();
    let f32_out = run_batch(f32_jobs).into_iter().map(NdArrayTensor::from);
    let f64_out = run_batch(f64_jobs).into_iter().map(NdArrayTensor::from);
    f32_ids
        .into_iter()
        .zip(f32_out)
        .chain(f64_ids.into_iter().zip(f64_out))
        .collect()
}

impl EmaBackend for NdArray {
    fn ema_update(shadow: NdArrayTensor, value: NdArrayTensor, weight: f64) -> NdArrayTensor {
        let (_, shadow) = update_many(vec![(0, shadow, value, weight)])
            .pop()
            .expect("one job, one result");
        shadow
    }
}
