//! The bandwidth bound of the update on the CubeCL backends, for benchmarks: a trivial in-place
//! triad kernel, `a ← a + s·b`, with the same memory traffic as the update (two reads, one
//! write per element), one launch over one tensor pair. Not the update's kernel: nothing here
//! runs in production.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::tensor::Tensor;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, cubecl};

use crate::cube::{vector_size, writable};

mod kernel {
    use super::cubecl;
    use cubecl::prelude::*;

    /// `a ← a + b·s`, one vector of `N` elements per unit.
    #[cube(launch)]
    pub fn triad_kernel<F: Float, N: Size>(
        a: &mut Tensor<Vector<F, N>>,
        b: &Tensor<Vector<F, N>>,
        s: InputScalar,
        #[define(F)] _dtype: ElemType,
    ) {
        if ABSOLUTE_POS >= a.len() {
            terminate!();
        }
        let sum = a[ABSOLUTE_POS] + b[ABSOLUTE_POS] * Vector::new(s.get::<F>());
        a[ABSOLUTE_POS] = sum;
    }
}

/// The triad as one backend operation (CubeCL backends only).
#[backend_extension(Cube: cfg(feature = "cube"), Fusion: cfg(feature = "cube"))]
pub trait TriadBackend: Backend {
    /// `a + s·b`, in place in `a` when it is uniquely owned and contiguous.
    #[fusion(dtype = a, shape = a)]
    fn triad(a: FloatTensor<Self>, b: FloatTensor<Self>, s: f64) -> FloatTensor<Self>;
}

impl TriadBackend for CubeBackend {
    fn triad(a: CubeTensor, b: CubeTensor, s: f64) -> CubeTensor {
        use cubecl::prelude::*;
        a.assert_is_on_same_device(&b);
        let a = writable(a);
        let num_elements = a.meta.num_elements();
        if num_elements == 0 {
            return a;
        }
        let b = into_contiguous(b);
        let client = a.client.clone();
        let vector = vector_size(&a).min(vector_size(&b));
        let units = num_elements / vector;
        let cube_dim = CubeDim::new(&client, units);
        let cube_count = cubecl::calculate_cube_count_elemwise(&client, units, cube_dim);
        let storage = dtype_to_storage_type(a.dtype);
        kernel::triad_kernel::launch(
            &client,
            cube_count,
            cube_dim,
            vector,
            a.clone().into_tensor_arg(),
            b.into_tensor_arg(),
            InputScalar::new(s, storage),
            storage,
        );
        a
    }
}

/// `a + s·b` by the triad kernel, for tensors on a CubeCL device (wgpu, CUDA); `b` of `a`'s
/// element type.
///
/// # Panics
///
/// On other backends: the triad exists to measure the bound of the CubeCL kernel.
pub fn triad(a: Tensor<1>, b: Tensor<1>, s: f64) -> Tensor<1> {
    Tensor::from_dispatch(Dispatch::triad(a.into_dispatch(), b.into_dispatch(), s))
}
