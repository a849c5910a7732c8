//! Values copied to another device through host memory of their own, many at once.
//!
//! Not `Tensor::to_device`: in Burn 0.22.1 a tensor read back from wgpu to a CPU backend keeps
//! pointing into wgpu's staging buffer (`tests/scale.rs` checks burn-ema's side). The bytes are
//! copied out into typed buffers of their own, by every thread.
//!
//! The values are read in one Burn [`Transaction`]: one copy submitted for all of them, where
//! reading them one by one syncs the device once per tensor. On an accelerator the read is set
//! going when [`HostCopies::start`] is called (its future polled once), so that it is queued
//! ahead of whatever the caller submits next — the next training step, for an offloaded
//! update — and [`HostCopies::finish`] waits for it, on any thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use burn::prelude::{Device, Shape, TensorData};
use burn::tensor::{DType, Tensor, Transaction};

use super::{Float, Value};

/// The read of a transaction, movable to another thread.
type Read =
    Pin<Box<dyn Future<Output = Result<Vec<TensorData>, burn::tensor::ExecutionError>> + Send>>;

/// What a value read to the host was, to make it again on the target device.
enum Made {
    Float { dtype: DType, shape: Shape },
    Int { dtype: DType },
    Bool,
}

/// Values on their way to `device`: those already there are kept as they are.
pub(crate) struct HostCopies {
    device: Device,
    /// Each value, or `None` where it is being read.
    values: Vec<Option<Value>>,
    /// The values being read, by position, in the transaction's order.
    made: Vec<(usize, Made)>,
    read: Option<Read>,
}

impl HostCopies {
    /// Starts copying `values` to `device` (those elsewhere, in one transaction).
    pub(crate) fn start(values: Vec<Value>, device: &Device) -> Self {
        let mut transaction = Transaction::default();
        let mut made = Vec::new();
        let mut source = None;
        let values = values
            .into_iter()
            .enumerate()
            .map(|(k, value)| {
                if value.device() == *device {
                    return Some(value);
                }
                source.get_or_insert_with(|| value.device());
                transaction = match value {
                    Value::Float(t) => {
                        made.push((
                            k,
                            Made::Float {
                                dtype: t.dtype(),
                                shape: t.shape(),
                            },
                        ));
                        std::mem::take(&mut transaction).register(t.flat())
                    }
                    Value::Int(t) => {
                        made.push((k, Made::Int { dtype: t.dtype() }));
                        std::mem::take(&mut transaction).register(t)
                    }
                    Value::Bool(t) => {
                        made.push((k, Made::Bool));
                        std::mem::take(&mut transaction).register(t)
                    }
                };
                None
            })
            .collect();
        let read = source.map(|source| {
            let mut read: Read = Box::pin(transaction.execute_async());
            // On an accelerator, set the copy going now (the first poll submits it). A CPU
            // backend's read is the copy itself: it runs where `finish` is called.
            if !is_host(&source) {
                let mut cx = Context::from_waker(Waker::noop());
                if let Poll::Ready(result) = read.as_mut().poll(&mut cx) {
                    read = Box::pin(std::future::ready(result));
                }
            }
            read
        });
        Self {
            device: device.clone(),
            values,
            made,
            read,
        }
    }

    /// The values on the device, in the order given: waits for the read.
    ///
    /// # Panics
    ///
    /// If the device fails the read (a backend fault, reported as such by the callers).
    pub(crate) fn finish(self) -> Vec<Value> {
        let Self {
            device,
            mut values,
            made,
            read,
        } = self;
        let Some(read) = read else {
            return values.into_iter().map(|v| v.expect("kept")).collect();
        };
        let data = block_on(read).unwrap_or_else(|err| panic!("reading tensors failed: {err}"));
        for ((k, made), data) in made.into_iter().zip(data) {
            let data = owned(data);
            values[k] = Some(match made {
                Made::Float { dtype, shape } => {
                    let t = Tensor::<1>::from_data(data, (&device, dtype));
                    Value::Float(Float::new(t).reshaped(shape))
                }
                Made::Int { dtype } => Value::Int(Tensor::from_data(data, (&device, dtype))),
                Made::Bool => Value::Bool(Tensor::from_data(data, &device)),
            });
        }
        values.into_iter().map(|v| v.expect("read")).collect()
    }
}

/// Whether `device` keeps tensors in host memory (a CPU backend's).
pub(crate) fn is_host(device: &Device) -> bool {
    let name = format!("{:?}", device.clone().inner());
    name.contains("Flex") || name.contains("NdArray")
}

/// Waits for `future` on this thread.
fn block_on<T>(mut future: Pin<Box<dyn Future<Output = T> + Send>>) -> T {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(value) => return value,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// `data` in a buffer of its own, typed where the CPU backends take it without another copy.
fn owned(data: TensorData) -> TensorData {
    let (shape, bytes) = (data.shape().clone(), data.as_bytes());
    match data.dtype() {
        DType::F32 => TensorData::new(copy_out::<f32>(bytes), shape),
        DType::F64 => TensorData::new(copy_out::<f64>(bytes), shape),
        DType::I64 => TensorData::new(copy_out::<i64>(bytes), shape),
        DType::I32 => TensorData::new(copy_out::<i32>(bytes), shape),
        dtype => TensorData::from_bytes_vec(copy_out::<u8>(bytes), shape, dtype),
    }
}

/// A copy of `bytes` as values of `E`, made by all threads in 1 MiB chunks: bytes read back
/// from a GPU sit in a mapped staging buffer that one thread reads slowly (BENCHMARKS.md,
/// "offload").
fn copy_out<E: bytemuck::Pod>(bytes: &[u8]) -> Vec<E> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 20;
    let mut out = vec![E::zeroed(); bytes.len() / std::mem::size_of::<E>()];
    let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
    if bytes.len() <= CHUNK {
        dst.copy_from_slice(bytes);
    } else {
        dst.par_chunks_mut(CHUNK)
            .zip(bytes.par_chunks(CHUNK))
            .for_each(|(dst, src)| dst.copy_from_slice(src));
    }
    out
}
