//! [`EmaBackend`] for Burn's Flex CPU backend: the update in place in the shadow's buffer.

use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::{DType, Element, TensorData, bf16, f16};

use crate::cpu::{Acc, Job, Store, Widen, update_batch, update_into};
use crate::{EmaBackend, Entry, Results, primitive_update};

/// The update into a new buffer, for a shadow that must not be written (shared) or cannot be
/// (strided). `value` is contiguous.
fn out_of_place<A, S, V>(shadow: FlexTensor, value: &FlexTensor, weight: f64) -> FlexTensor
where
    A: Acc,
    S: Store<A> + Element + bytemuck::Pod,
    V: Widen<A> + Element + bytemuck::Pod,
{
    let v = value
        .as_slice::<V>()
        .expect("a contiguous tensor has a slice");
    let shape = shadow.layout().shape().clone();
    let contiguous = shadow.to_contiguous();
    let s = contiguous
        .as_slice::<S>()
        .expect("a contiguous tensor has a slice");
    FlexTensor::from_data(TensorData::new(update_into::<A, S, V>(s, v, weight), shape))
}

/// Whether `shadow` can be written in place as an `S` slice: uniquely owned, contiguous, of
/// that type.
fn writable<S: Element + bytemuck::Pod>(shadow: &mut FlexTensor) -> bool {
    shadow.is_unique()
        && shadow.layout().contiguous_offsets().is_some()
        && shadow.try_storage_mut::<S>().is_some()
}

/// One group of jobs with the same types: every writable shadow in one parallel pass, the
/// others (shared or strided) out of place, one by one.
fn run_batch<A, S, V>(jobs: Vec<Entry<FlexTensor>>) -> Results<FlexTensor>
where
    A: Acc,
    S: Store<A> + Element + bytemuck::Pod,
    V: Widen<A> + Element + bytemuck::Pod,
{
    // Per job: the contiguous value, the shadows, and which of them are written in place.
    let mut prepared = Vec::with_capacity(jobs.len());
    for job in jobs {
        let value = if job.value.is_contiguous() {
            job.value
        } else {
            job.value.to_contiguous()
        };
        let mut in_place = Vec::with_capacity(job.shadows.len());
        let mut shadows = Vec::with_capacity(job.shadows.len());
        for (mut shadow, &weight) in job.shadows.into_iter().zip(&job.weights) {
            let writable = writable::<S>(&mut shadow);
            in_place.push(writable);
            shadows.push(if writable {
                shadow
            } else {
                out_of_place::<A, S, V>(shadow, &value, weight)
            });
        }
        prepared.push((job.index, shadows, value, in_place, job.weights));
    }
    let slices = prepared
        .iter_mut()
        .map(|(_, shadows, value, in_place, weights)| {
            let v = value
                .as_slice::<V>()
                .expect("a contiguous tensor has a slice");
            let (slices, weights) = shadows
                .iter_mut()
                .zip(in_place.iter())
                .zip(weights.iter())
                .filter(|((_, in_place), _)| **in_place)
                .map(|((shadow, _), &weight)| {
                    let (start, end) = shadow.layout().contiguous_offsets().expect("checked");
                    let s = shadow.try_storage_mut::<S>().expect("checked");
                    (&mut s[start..end], weight)
                })
                .unzip();
            Job::multi(slices, v, weights)
        })
        .collect();
    update_batch::<A, S, V>(slices);
    prepared
        .into_iter()
        .map(|(index, shadows, ..)| (index, shadows))
        .collect()
}

/// Many updates at once: returns `(index, new shadows)` in any order. Jobs are grouped by
/// element types (all shadows of a job have one type), and each group runs as one parallel
/// pass.
pub(crate) fn update_many(jobs: Vec<Entry<FlexTensor>>) -> Results<FlexTensor> {
    let mut groups: Vec<((DType, DType), Vec<_>)> = Vec::new();
    for job in jobs {
        let Some(first) = job.shadows.first() else {
            continue;
        };
        let key = (first.dtype(), job.value.dtype());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, group)) => group.push(job),
            None => groups.push((key, vec![job])),
        }
    }
    let mut out = Vec::new();
    for (key, group) in groups {
        out.extend(match key {
            (DType::F32, DType::F32) => run_batch::<f32, f32, f32>(group),
            (DType::F32, DType::F16) => run_batch::<f32, f32, f16>(group),
            (DType::F32, DType::BF16) => run_batch::<f32, f32, bf16>(group),
            (DType::F64, DType::F64) => run_batch::<f64, f64, f64>(group),
            (DType::F64, DType::F32) => run_batch::<f64, f64, f32>(group),
            (DType::F16, DType::F16) => run_batch::<f32, f16, f16>(group),
            (DType::BF16, DType::BF16) => run_batch::<f32, bf16, bf16>(group),
            // Pairs without a fused loop (reachable through a direct `EmaBackend` call).
            _ => group
                .into_iter()
                .map(|job| {
                    let value = job.value;
                    let shadows = job.shadows.into_iter().zip(job.weights);
                    let shadows = shadows
                        .map(|(s, w)| primitive_update::<Flex>(s, value.clone(), w))
                        .collect();
                    (job.index, shadows)
                })
                .collect(),
        });
    }
    out
}

impl EmaBackend for Flex {
    fn ema_update(shadow: FlexTensor, value: FlexTensor, weight: f64) -> FlexTensor {
        Entry::single(shadow, value, weight).run(update_many)
    }
}
