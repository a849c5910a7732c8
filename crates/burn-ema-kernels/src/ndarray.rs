//! [`EmaBackend`] for the NdArray CPU backend (deprecated by Burn 0.22, still supported).
//!
//! NdArray's arrays are copy-on-write: writing a uniquely owned one is in place, writing a
//! shared one copies it first, so a clone's values are never changed.

use burn::backend::ndarray::{NdArray, NdArrayElement, NdArrayTensor, SharedArray};
use ndarray::ArrayViewD;

use crate::EmaBackend;
use crate::cpu::{Acc, Store, update_in_place};

fn run<E>(shadow: SharedArray<E>, value: ArrayViewD<'_, E>, weight: f64) -> SharedArray<E>
where
    E: Acc + Store<E> + NdArrayElement,
{
    let mut shadow = shadow;
    // Borrowed when the parameter is already in standard layout: no copy of the parameter.
    let value = value.as_standard_layout();
    let v = value.as_slice().expect("standard layout has a slice");
    match shadow.as_slice_mut() {
        // `as_slice_mut` makes the array unique (copying a shared one) and checks the layout.
        Some(s) => update_in_place::<E, E, E>(s, v, weight),
        None => {
            let w = E::weight(weight);
            let v = ArrayViewD::from_shape(shadow.raw_dim(), v).expect("same number of elements");
            shadow.zip_mut_with(&v, |s, &v| *s = *s - (*s - v) * w);
        }
    }
    shadow
}

impl EmaBackend for NdArray {
    fn ema_update(shadow: NdArrayTensor, value: NdArrayTensor, weight: f64) -> NdArrayTensor {
        match (shadow, value) {
            (NdArrayTensor::F32(s), NdArrayTensor::F32(v)) => {
                NdArrayTensor::from(run(s.into_owned(), v.view(), weight))
            }
            (NdArrayTensor::F64(s), NdArrayTensor::F64(v)) => {
                NdArrayTensor::from(run(s.into_owned(), v.view(), weight))
            }
            _ => unreachable!("`update` checks the types first"),
        }
    }
}
