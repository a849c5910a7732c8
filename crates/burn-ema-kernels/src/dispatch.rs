//! Between Burn's rank-erased dispatch tensors and a backend's own float primitives, which the
//! fused paths work on.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, BackendTensor, DispatchKindConversion, DispatchTensor};

/// A float tensor's primitive on backend `B`, from Burn's rank-erased dispatch tensor (the
/// device says which backend holds it).
pub(crate) fn to_backend<B: Backend>(tensor: DispatchTensor) -> FloatTensor<B>
where
    DispatchTensor: DispatchKindConversion<B>,
{
    match <DispatchTensor as DispatchKindConversion<B>>::try_into_backend(tensor) {
        Ok(BackendTensor::Float(primitive)) => primitive,
        Ok(_) => unreachable!("the engine is given float tensors"),
        Err(problem) => panic!("a tensor lives on its device's backend: {problem}"),
    }
}

/// The dispatch tensor of a float primitive of backend `B`.
pub(crate) fn from_backend<B: Backend>(primitive: FloatTensor<B>) -> DispatchTensor
where
    DispatchTensor: DispatchKindConversion<B>,
{
    <DispatchTensor as DispatchKindConversion<B>>::from_backend(BackendTensor::Float(primitive))
}
