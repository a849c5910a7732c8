//! Which (shadow, value) element types have a fused update, per backend.

use burn::backend::DispatchDevice;
use burn::tensor::{DType, FloatDType};

/// The (shadow, value) element types the fused loops handle: the shadow's own type, or a
/// narrower parameter type read and widened in the same pass.
pub fn supported_dtypes(shadow: DType, value: DType) -> bool {
    use DType::*;
    matches!(
        (shadow, value),
        (F32, F32 | F16 | BF16) | (F64, F64 | F32) | (F16, F16) | (BF16, BF16)
    )
}

/// Whether a fused update exists for tensors on `device` with these element types.
pub fn has_fused_path(device: &burn::tensor::Device, shadow: DType, value: DType) -> bool {
    fused_on(device.as_dispatch(), shadow, value)
}

/// [`has_fused_path`] for a rank-erased tensor's device.
pub(crate) fn fused_on(device: &DispatchDevice, shadow: DType, value: DType) -> bool {
    match device {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => supported_dtypes(shadow, value),
        #[cfg(feature = "ndarray")]
        DispatchDevice::NdArray(_) => matches!(
            (shadow, value),
            (DType::F32, DType::F32) | (DType::F64, DType::F64)
        ),
        #[cfg(feature = "cube")]
        DispatchDevice::Cube(_) => matches!(
            (shadow, value),
            (DType::F32, DType::F32 | DType::F16 | DType::BF16)
                | (DType::F16, DType::F16)
                | (DType::BF16, DType::BF16)
        ),
        _ => false,
    }
}

/// The [`FloatDType`] of a float tensor's [`DType`].
pub fn float_dtype(dtype: DType) -> FloatDType {
    match dtype {
        DType::F64 => FloatDType::F64,
        DType::F16 => FloatDType::F16,
        DType::BF16 => FloatDType::BF16,
        DType::Flex32 => FloatDType::Flex32,
        _ => FloatDType::F32,
    }
}
