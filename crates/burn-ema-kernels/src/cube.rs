//! [`EmaBackend`] for Burn's CubeCL backend (wgpu here; the kernel is the same for CUDA, ROCm and
//! Metal): one vectorized kernel launch per tensor, in place when the shadow's buffer is
//! uniquely owned. Through Burn's fusion, the generated `Fusion<CubeBackend>` implementation
//! records the operation and hands this one the resolved tensors, moving the shadow's handle
//! when the caller gave up its last reference.

use burn::backend::cubecl::dtype_to_storage_type;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, cubecl};

use crate::EmaBackend;
use crate::bound::TriadBackend;

mod kernel {
    use super::cubecl;
    use cubecl::prelude::*;

    /// `shadow ← shadow − (shadow − value)·weight`, one vector of `N` elements per unit. The
    /// value may have a narrower type `P` (an `f16` parameter of an `f32` shadow): it is
    /// widened in registers, so the update stays one pass over both tensors.
    ///
    /// With `triad`, the kernel computes `shadow + value·weight` instead: the same memory
    /// traffic with the simplest arithmetic, the bandwidth bound benchmarks compare against.
    #[cube(launch)]
    pub fn ema_kernel<F: Float, P: Float, N: Size>(
        shadow: &mut Tensor<Vector<F, N>>,
        value: &Tensor<Vector<P, N>>,
        weight: InputScalar,
        #[comptime] triad: bool,
        #[define(F, P)] _dtypes: [ElemType; 2],
    ) {
        if ABSOLUTE_POS >= shadow.len() {
            terminate!();
        }
        let w = Vector::new(weight.get::<F>());
        let s = shadow[ABSOLUTE_POS];
        let v = Vector::<F, N>::cast_from(value[ABSOLUTE_POS]);
        if triad {
            shadow[ABSOLUTE_POS] = s + v * w;
        } else {
            shadow[ABSOLUTE_POS] = s - (s - v) * w;
        }
    }
}

impl EmaBackend for CubeBackend {
    fn ema_update(shadow: CubeTensor, value: CubeTensor, weight: f64) -> CubeTensor {
        launch(shadow, value, weight, false)
    }
}

impl TriadBackend for CubeBackend {
    fn triad(a: CubeTensor, b: CubeTensor, s: f64) -> CubeTensor {
        launch(a, b, s, true)
    }
}

/// One launch of [`kernel::ema_kernel`] over the whole shadow, in place when it may be written.
fn launch(shadow: CubeTensor, value: CubeTensor, weight: f64, triad: bool) -> CubeTensor {
    use cubecl::prelude::*;
    shadow.assert_is_on_same_device(&value);
    // Never write a buffer someone else holds: a shared or strided shadow is copied first.
    let shadow = if shadow.can_mut() && shadow.is_contiguous() && shadow.is_nonoverlapping() {
        shadow
    } else {
        into_contiguous(shadow.copy())
    };
    let num_elements = shadow.meta.num_elements();
    if num_elements == 0 {
        return shadow;
    }
    let value = into_contiguous(value);
    let client = shadow.client.clone();
    let rank = shadow.meta.num_dims();
    let vector_size = |t: &CubeTensor| {
        cubecl::tensor_vector_size_parallel(
            t.client.io_optimized_vector_sizes(t.dtype.size()),
            t.meta.shape(),
            t.meta.strides(),
            rank - 1,
        )
    };
    let vector_size = vector_size(&shadow).min(vector_size(&value));
    let units = num_elements / vector_size as usize;
    let cube_dim = CubeDim::new(&client, units);
    let cube_count = cubecl::calculate_cube_count_elemwise(&client, units, cube_dim);
    let storage = dtype_to_storage_type(shadow.dtype);
    let value_storage = dtype_to_storage_type(value.dtype);
    kernel::ema_kernel::launch(
        &client,
        cube_count,
        cube_dim,
        vector_size,
        shadow.clone().into_tensor_arg(),
        value.into_tensor_arg(),
        InputScalar::new(weight, storage),
        triad,
        [storage, value_storage],
    );
    shadow
}
