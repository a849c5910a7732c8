//! The fused paths against an f64 reference, on awkward shapes, and their memory behaviour:
//! in place when the shadow is uniquely owned, never through a shared one.
#![allow(deprecated)] // NdArray is deprecated by Burn 0.22, and still supported.

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::{DType, FloatDType, s};
use burn_ema_kernels::{has_fused_path, update};

mod common;
use common::{check, check_awkward_lengths, data, tensor};

fn devices() -> Vec<Device> {
    vec![Device::flex(), Device::ndarray()]
}

/// Whether this build compiles `device`'s fused loop (features `flex`, `ndarray`): without it
/// the update runs on tensor ops, which every test below but the in-place ones checks too.
fn fused_loop(device: &Device) -> bool {
    let built = [
        (Device::flex(), cfg!(feature = "flex")),
        (Device::ndarray(), cfg!(feature = "ndarray")),
    ];
    built.into_iter().any(|(d, built)| d == *device && built)
}

fn read(t: Tensor<1>) -> Vec<f64> {
    t.cast(FloatDType::F64)
        .into_data()
        .try_to_vec::<f64>()
        .unwrap()
}

#[test]
fn f32_agrees_with_f64_on_awkward_lengths() {
    for device in devices() {
        assert_eq!(
            has_fused_path(&device, DType::F32, DType::F32),
            fused_loop(&device)
        );
        check_awkward_lengths(&device, read, true);
    }
}

/// Every (shadow, value) element-type pair the engine batches, and f64 shadows, in one batch per
/// backend: against the f64 reference (Flex's fused loops widen half and f32 values; NdArray's
/// tensor-op fallback handles what its loop does not). A type the backend lacks is said.
#[test]
fn every_dtype_pair_in_one_batch_agrees_with_f64() {
    for device in devices() {
        let mut pairs = common::DTYPE_PAIRS.to_vec();
        pairs.extend([(DType::F64, DType::F64), (DType::F64, DType::F32)]);
        let (run, missing): (Vec<_>, Vec<_>) = pairs
            .into_iter()
            .partition(|(s, v)| device.supports_dtype(*s) && device.supports_dtype(*v));
        for (s, v) in &missing {
            eprintln!("NOT RUN on {device:?}: {s:?} shadows of {v:?} values: it lacks the type");
        }
        if device == Device::flex() {
            assert!(missing.is_empty(), "Flex computes in every float type");
        }
        let updated = common::check_dtype_pairs(&device, &run);
        assert_eq!(updated, run.len() * (common::pair_lengths().len() * 3 / 2));
    }
}

#[test]
fn a_zero_dim_tensor_flattened_has_one_element() {
    for device in devices() {
        let s = Tensor::<1>::from_data(TensorData::new(vec![4.0f32], [1]), &device);
        let v = Tensor::<1>::from_data(TensorData::new(vec![2.0f32], [1]), &device);
        assert_eq!(read(update(s, v, 0.25)), vec![3.5]);
    }
}

#[test]
fn views_with_offsets_and_strides_are_read_correctly() {
    for device in devices() {
        let (s, v) = (data(40, 3.0), data(40, 4.0));
        // A slice starting at an offset.
        let out = read(update(
            tensor(&s, &device).slice(s![5..29]),
            tensor(&v, &device).slice(s![11..35]),
            0.5,
        ));
        check(&out, &s[5..29], &v[11..35], 0.5, 1e-6);
        // A strided view (every other element), and a transposed matrix flattened.
        let strided = tensor(&v, &device).slice(s![0..40;2]);
        let out = read(update(tensor(&s[..20], &device), strided, 0.5));
        let every_other: Vec<f32> = v.iter().step_by(2).copied().collect();
        check(&out, &s[..20], &every_other, 0.5, 1e-6);
        let m = Tensor::<2>::from_data(TensorData::new(v.clone(), [5, 8]), &device);
        let transposed = m.transpose().reshape([40]);
        let mut t_values = Vec::new();
        for c in 0..8 {
            for r in 0..5 {
                t_values.push(v[r * 8 + c]);
            }
        }
        let out = read(update(tensor(&s, &device), transposed, 0.1));
        check(&out, &s, &t_values, 0.9, 1e-6);
    }
}

#[test]
fn a_shared_shadow_is_never_written_through() {
    for device in devices() {
        let (s, v) = (data(100_000, 5.0), data(100_000, 6.0));
        let shadow = tensor(&s, &device);
        let kept = shadow.clone();
        let out = read(update(shadow, tensor(&v, &device), 0.5));
        check(&out, &s, &v, 0.5, 1e-6);
        let untouched: Vec<f32> = kept.into_data().try_to_vec().unwrap();
        assert_eq!(untouched, s, "the clone kept its values");
    }
}

#[test]
fn an_autodiff_value_is_read_through_its_inner_tensor() {
    let device = Device::flex();
    let (s, v) = (data(64, 7.0), data(64, 8.0));
    let value = tensor(&v, &device.clone().autodiff()).require_grad();
    let out = read(update(tensor(&s, &device), value, 0.3));
    check(&out, &s, &v, 0.7, 1e-6);
}

#[test]
fn half_parameters_update_a_single_precision_shadow_in_one_pass() {
    let device = Device::flex();
    for (half, bound) in [(DType::F16, 1e-3), (DType::BF16, 8e-3)] {
        assert!(device.supports_dtype(half), "Flex computes in {half:?}");
        assert_eq!(
            has_fused_path(&device, DType::F32, half),
            fused_loop(&device)
        );
        let (s, v) = common::check_half_parameters(&device, read, half, bound);
        // A half shadow of half parameters: one rounding, within the half type's precision.
        let shadow = tensor(&s, &device).cast(burn_ema_kernels::float_dtype(half));
        let value = tensor(&v, &device).cast(burn_ema_kernels::float_dtype(half));
        let out = update(shadow, value, 0.1);
        assert_eq!(out.dtype(), half);
        check(&read(out), &s, &v, 0.9, 2.0 * bound);
    }
}

/// The address of a Flex tensor's buffer, without keeping a second handle to it.
fn address(t: Tensor<1>) -> (Tensor<1>, usize) {
    let primitive = t.try_into_primitive::<Flex>().unwrap();
    let addr = primitive.bytes().as_ptr() as usize;
    (Tensor::from_primitive::<Flex>(primitive), addr)
}

/// The address of an NdArray tensor's buffer, without keeping a second handle to it.
fn ndarray_address(t: Tensor<1>) -> (Tensor<1>, usize) {
    use burn::backend::NdArray;
    use burn::backend::ndarray::NdArrayTensor;
    let primitive = t.try_into_primitive::<NdArray>().unwrap();
    let addr = match &primitive {
        NdArrayTensor::F32(storage) => storage.view().as_ptr() as usize,
        _ => unreachable!("an f32 tensor"),
    };
    (Tensor::from_primitive::<NdArray>(primitive), addr)
}

#[test]
fn ndarray_updates_a_uniquely_owned_shadow_in_place() {
    let device = Device::ndarray();
    let n = 100_000;
    let value = tensor(&data(n, 13.0), &device);
    // The first update may copy (a tensor built from data can borrow it); then none does.
    let shadow = update(tensor(&data(n, 14.0), &device), value.clone(), 0.5);
    let (mut shadow, before) = ndarray_address(shadow);
    for _ in 0..10 {
        shadow = update(shadow, value.clone(), 0.5);
    }
    assert_eq!(ndarray_address(shadow).1, before);
}

#[test]
fn a_uniquely_owned_shadow_is_updated_in_place() {
    let device = Device::flex();
    for n in [5usize, 200_000] {
        let (s, v) = (data(n, 11.0), data(n, 12.0));
        let (shadow, before) = address(tensor(&s, &device));
        let value = tensor(&v, &device);
        let out = update(shadow, value.clone(), 0.5);
        let (out, after) = address(out);
        assert_eq!(before, after, "n = {n}: no new buffer");
        // Steady state: many updates, still the same buffer.
        let mut shadow = out;
        for _ in 0..10 {
            shadow = update(shadow, value.clone(), 0.5);
        }
        assert_eq!(address(shadow).1, before);
    }
}

/// A batch as `EmaModule` hands it over: tensors of every awkward length and some spanning
/// several parallel pieces, mixed element types, a shared shadow, a strided shadow and an
/// autodiff value, with a weight each.
fn batch(device: &Device) -> Vec<(Tensor<1>, Tensor<1>, f64)> {
    let mut jobs = Vec::new();
    let mut lengths = common::AWKWARD_LENGTHS.to_vec();
    lengths.extend([300_001, 65_536, 1 << 18]);
    for (k, &n) in lengths.iter().enumerate() {
        let (s, v) = (data(n, k as f32), data(n, 100.0 + k as f32));
        jobs.push((
            tensor(&s, device),
            tensor(&v, device),
            0.001 * (k + 1) as f64,
        ));
    }
    let (s, v) = (data(5000, 1.5), data(5000, 2.5));
    jobs.push((
        tensor(&s, device).cast(FloatDType::F64),
        tensor(&v, device).cast(FloatDType::F64),
        0.25,
    ));
    let strided = tensor(&data(2000, 3.5), device).slice(s![0..;2]);
    jobs.push((strided, tensor(&data(1000, 4.5), device), 0.5));
    let value = tensor(&data(700, 5.5), &device.clone().autodiff()).require_grad();
    jobs.push((tensor(&data(700, 6.5), device), value, 0.125));
    if device.supports_dtype(DType::F16) && has_fused_path(device, DType::F32, DType::F16) {
        let value = tensor(&data(3000, 7.5), device).cast(FloatDType::F16);
        jobs.push((tensor(&data(3000, 8.5), device), value, 0.0625));
    }
    jobs
}

#[test]
fn a_batch_gives_what_one_update_per_tensor_gives_bit_for_bit() {
    for device in devices() {
        let jobs = batch(&device);
        let expected: Vec<Vec<f64>> = jobs
            .iter()
            .map(|(s, v, w)| read(update(s.clone(), v.clone(), *w)))
            .collect();
        // A shadow held elsewhere too must come out right and leave the other holder alone.
        let shared = jobs[17].0.clone();
        let shared_before = read(shared.clone());
        let out = burn_ema_kernels::update_many(jobs);
        assert_eq!(out.len(), expected.len());
        for (k, (out, want)) in out.into_iter().zip(&expected).enumerate() {
            assert_eq!(&read(out), want, "job {k}");
        }
        assert_eq!(read(shared), shared_before);
    }
}

#[test]
fn tensors_of_any_rank_update_in_one_call_and_keep_their_shapes() {
    for device in devices() {
        common::check_ranks_in_one_call(&device);
    }
}

#[test]
fn a_batch_agrees_with_f64() {
    for device in devices() {
        let jobs = batch(&device);
        let inputs: Vec<(Vec<f64>, Vec<f64>, f64)> = jobs
            .iter()
            .map(|(s, v, w)| (read(s.clone()), read(v.clone()), *w))
            .collect();
        for ((out, (s, v, w)), k) in burn_ema_kernels::update_many(jobs)
            .into_iter()
            .zip(inputs)
            .zip(0..)
        {
            let s: Vec<f32> = s.iter().map(|&x| x as f32).collect();
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            let out = read(out);
            assert_eq!(out.len(), s.len(), "job {k}");
            check(&out, &s, &v, 1.0 - w, 1e-6);
        }
    }
}

/// Ten batched updates of `shadows` towards `values`.
fn ten_batched_updates(mut shadows: Vec<Tensor<1>>, values: &[Tensor<1>]) -> Vec<Tensor<1>> {
    for _ in 0..10 {
        let jobs = shadows
            .into_iter()
            .zip(values)
            .map(|(s, v)| (s, v.clone(), 0.1));
        shadows = burn_ema_kernels::update_many(jobs.collect());
    }
    shadows
}

#[test]
fn a_batch_updates_uniquely_owned_shadows_in_place() {
    let device = Device::flex();
    let sizes = [3usize, 70_001, 300_000, 17];
    let values: Vec<Tensor<1>> = sizes
        .iter()
        .map(|&n| tensor(&data(n, 1.0), &device))
        .collect();
    let (shadows, addresses): (Vec<Tensor<1>>, Vec<usize>) = sizes
        .iter()
        .map(|&n| address(tensor(&data(n, 2.0), &device)))
        .unzip();
    let shadows = ten_batched_updates(shadows, &values);
    let after: Vec<usize> = shadows.into_iter().map(|s| address(s).1).collect();
    assert_eq!(after, addresses);

    let device = Device::ndarray();
    let values: Vec<Tensor<1>> = sizes
        .iter()
        .map(|&n| tensor(&data(n, 1.0), &device))
        .collect();
    let first = sizes
        .iter()
        .zip(&values)
        .map(|(&n, v)| (tensor(&data(n, 2.0), &device), v.clone(), 0.1));
    // The first update may copy (a tensor built from data can borrow it); then none does.
    let (shadows, addresses): (Vec<Tensor<1>>, Vec<usize>) =
        burn_ema_kernels::update_many(first.collect())
            .into_iter()
            .map(ndarray_address)
            .unzip();
    let shadows = ten_batched_updates(shadows, &values);
    let after: Vec<usize> = shadows.into_iter().map(|s| ndarray_address(s).1).collect();
    assert_eq!(after, addresses);
}

/// Entries of one, two and three shadows of one value, built from [`batch`]'s jobs: shadow
/// `k` of an entry starts from the job's shadow plus `k` and has its own weight.
fn multi_batch(device: &Device) -> Vec<(Vec<Tensor<1>>, Tensor<1>, Vec<f64>)> {
    batch(device)
        .into_iter()
        .enumerate()
        .map(|(j, (shadow, value, weight))| {
            let k = 1 + j % 3;
            let shadows = (0..k)
                .map(|i| shadow.clone().add_scalar(i as f64))
                .collect();
            let weights = (0..k).map(|i| weight / (1 + i) as f64).collect();
            (shadows, value, weights)
        })
        .collect()
}

#[test]
fn several_shadows_in_one_pass_equal_one_update_each_bit_for_bit() {
    for device in devices() {
        let entries = multi_batch(&device);
        let expected: Vec<Vec<Vec<f64>>> = entries
            .iter()
            .map(|(shadows, value, weights)| {
                shadows
                    .iter()
                    .zip(weights)
                    .map(|(s, &w)| read(update(s.clone(), value.clone(), w)))
                    .collect()
            })
            .collect();
        // One shadow of a pair held elsewhere: it is computed aside, its partner in place.
        let shared = entries[16].0[1].clone();
        let shared_before = read(shared.clone());
        let out = burn_ema_kernels::update_multi(entries);
        for (j, (out, want)) in out.into_iter().zip(&expected).enumerate() {
            let out: Vec<Vec<f64>> = out.into_iter().map(read).collect();
            assert_eq!(&out, want, "entry {j}");
        }
        assert_eq!(read(shared), shared_before);
    }
}

#[test]
fn shadows_of_different_types_fall_back_to_one_update_each() {
    for device in devices() {
        let (s, v) = (data(1000, 1.0), data(1000, 2.0));
        let shadows = vec![
            tensor(&s, &device),
            tensor(&s, &device).cast(FloatDType::F64),
        ];
        let out =
            burn_ema_kernels::update_multi(vec![(shadows, tensor(&v, &device), vec![0.5, 0.25])]);
        assert_eq!(out[0][1].dtype(), DType::F64);
        check(&read(out[0][0].clone()), &s, &v, 0.5, 1e-6);
        check(&read(out[0][1].clone()), &s, &v, 0.75, 1e-6);
    }
}

#[test]
fn two_shadows_of_one_value_are_updated_in_place() {
    let device = Device::flex();
    let n = 200_000;
    let value = tensor(&data(n, 1.0), &device);
    let (a, a_addr) = address(tensor(&data(n, 2.0), &device));
    let (b, b_addr) = address(tensor(&data(n, 3.0), &device));
    let mut shadows = vec![a, b];
    for _ in 0..10 {
        let mut out =
            burn_ema_kernels::update_multi(vec![(shadows, value.clone(), vec![0.1, 0.01])]);
        shadows = out.pop().unwrap();
    }
    let addresses: Vec<usize> = shadows.into_iter().map(|s| address(s).1).collect();
    assert_eq!(addresses, [a_addr, b_addr]);
}

/// A direct call of the backend operation with an element-type pair the fused loops do not
/// handle falls back to the backend's tensor ops (it used to reach an `unreachable!`). (The
/// operation exists for a CPU backend only where its loop is built.)
#[cfg(all(feature = "flex", feature = "ndarray"))]
#[test]
fn pairs_without_a_fused_loop_fall_back_to_tensor_ops() {
    use burn::backend::Dispatch;
    use burn_ema_kernels::EmaBackend;
    let cases = [
        (Device::flex(), DType::F64, DType::F16),
        (Device::flex(), DType::F16, DType::F32),
        (Device::ndarray(), DType::F32, DType::F64),
    ];
    for (device, shadow_dtype, value_dtype) in cases {
        assert!(
            device.supports_dtype(shadow_dtype) && device.supports_dtype(value_dtype),
            "{device:?} must support {shadow_dtype:?} and {value_dtype:?} for this test"
        );
        let shadow = Tensor::<1>::from_data(
            TensorData::new(vec![0.0f64, 4.0, 8.0], [3]),
            (&device, shadow_dtype),
        );
        let value = Tensor::<1>::from_data(
            TensorData::new(vec![4.0f64, 4.0, 0.0], [3]),
            (&device, value_dtype),
        );
        let out = Dispatch::ema_update(shadow.into_dispatch(), value.into_dispatch(), 0.25);
        let out = Tensor::<1>::from_dispatch(out);
        assert_eq!(out.dtype(), shadow_dtype);
        assert_eq!(
            read(out),
            vec![1.0, 4.0, 6.0],
            "{device:?} {shadow_dtype:?} {value_dtype:?}"
        );
    }
}

#[test]
#[should_panic(expected = "same number of elements")]
fn a_value_of_another_length_is_refused_not_broadcast() {
    let device = Device::flex();
    let _ = update(
        Tensor::<1>::zeros([3], &device),
        Tensor::<1>::ones([1], &device),
        0.5,
    );
}

/// NaN and infinities are counted per tensor, on every CPU backend and type, also in a strided
/// view and in an autodiff tensor.
#[test]
fn non_finite_values_are_counted_per_tensor() {
    use burn_ema_kernels::count_non_finite;
    for device in devices() {
        let mut values = vec![1.0f32; 100_000];
        values[3] = f32::NAN;
        values[99_999] = f32::INFINITY;
        values[50_000] = f32::NEG_INFINITY;
        let big = tensor(&values, &device);
        let clean = tensor(&[1.0, 2.0, 3.0], &device);
        let strided = tensor(&values, &device).slice(s![0..100;3]);
        let wide = big.clone().cast(FloatDType::F64);
        let autodiff = Tensor::<1>::from_inner(big.clone()).require_grad();
        let mut tensors = vec![big, clean, strided, wide, autodiff];
        if device.supports_dtype(DType::F16) {
            tensors.push(tensor(&values, &device).cast(FloatDType::F16));
        }
        let expected = [3, 0, 1, 3, 3, 3];
        assert_eq!(
            count_non_finite(&tensors),
            expected[..tensors.len()].to_vec(),
            "{device:?}"
        );
    }
}
