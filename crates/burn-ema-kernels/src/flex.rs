//! [`EmaBackend`] for Burn's Flex CPU backend: the update in place in the shadow's buffer.

use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::{DType, Element, TensorData, bf16, f16};

use crate::EmaBackend;
use crate::cpu::{Acc, Store, Widen, update_in_place, update_into};

/// Runs the loop for one combination of types.
fn run<A, S, V>(mut shadow: FlexTensor, value: FlexTensor, weight: f64) -> FlexTensor
where
    A: Acc,
    S: Store<A> + Element + bytemuck::Pod,
    V: Widen<A> + Element + bytemuck::Pod,
{
    let value = if value.is_contiguous() {
        value
    } else {
        value.to_contiguous()
    };
    let v = value
        .as_slice::<V>()
        .expect("a contiguous tensor has a slice");
    if shadow.is_unique()
        && let Some((start, end)) = shadow.layout().contiguous_offsets()
        && let Some(storage) = shadow.try_storage_mut::<S>()
    {
        update_in_place::<A, S, V>(&mut storage[start..end], v, weight);
        return shadow;
    }
    // Shared (a clone is alive) or strided: never write through it; compute into a new buffer.
    let shape = shadow.layout().shape().clone();
    let contiguous = shadow.to_contiguous();
    let s = contiguous
        .as_slice::<S>()
        .expect("a contiguous tensor has a slice");
    FlexTensor::from_data(TensorData::new(update_into::<A, S, V>(s, v, weight), shape))
}

impl EmaBackend for Flex {
    fn ema_update(shadow: FlexTensor, value: FlexTensor, weight: f64) -> FlexTensor {
        match (shadow.dtype(), value.dtype()) {
            (DType::F32, DType::F32) => run::<f32, f32, f32>(shadow, value, weight),
            (DType::F32, DType::F16) => run::<f32, f32, f16>(shadow, value, weight),
            (DType::F32, DType::BF16) => run::<f32, f32, bf16>(shadow, value, weight),
            (DType::F64, DType::F64) => run::<f64, f64, f64>(shadow, value, weight),
            (DType::F64, DType::F32) => run::<f64, f64, f32>(shadow, value, weight),
            (DType::F16, DType::F16) => run::<f32, f16, f16>(shadow, value, weight),
            (DType::BF16, DType::BF16) => run::<f32, bf16, bf16>(shadow, value, weight),
            (s, v) => unreachable!("`update` checks the types first, got {s:?} and {v:?}"),
        }
    }
}
