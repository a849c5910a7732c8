//! A checksum of a file's tensors that depends only on what they hold — names, element types,
//! shapes and values — so that a flipped bit is an error, not silently wrong weights.
//!
//! Not on how they are stored: `Flex32` and `F32` are one element type, a bool is 0 or 1
//! whatever its storage (`Bool(U8)` in Burn, `BOOL` in safetensors), and the order of the
//! tensors in the file does not count. The same tensors give the same checksum in burnpack and
//! safetensors, from any backend.

use burn::tensor::DType;
use burn_store::burn_pack::{Error as PackError, Tensor as PackTensor};
use rayon::prelude::*;

/// Metadata key of the checksum. (Files of burn-ema before 0.1 stored another checksum, of the
/// element types' debug names, under `burn_ema.checksum`; it is not read.)
pub(crate) const KEY: &str = "burn_ema.tensor_checksum";

/// Bytes hashed independently (on all threads), then combined in order.
const CHUNK: usize = 1 << 20;

/// FNV-1a's constants, mixed a word at a time.
const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

fn mix(mut h: u64, bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(PRIME).rotate_left(29);
    }
    for &b in words.remainder() {
        h = (h ^ b as u64).wrapping_mul(PRIME);
    }
    (h ^ bytes.len() as u64).wrapping_mul(PRIME)
}

/// The element type's name, one per meaning.
fn canonical(dtype: DType) -> String {
    match dtype {
        DType::F32 | DType::Flex32 => "f32".into(),
        DType::Bool(_) => "bool".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// One tensor's hash: its name, element type, shape, and values (bools as 0/1, one byte each).
fn tensor_hash(tensor: &PackTensor) -> Result<u64, PackError> {
    let bytes = tensor.to_bytes()?;
    let bools: Vec<u8>;
    let values: &[u8] = match tensor.dtype {
        DType::Bool(_) => {
            let width = bytes.len() / tensor.shape.num_elements().max(1);
            bools = bytes
                .chunks(width.max(1))
                .map(|c| c.iter().any(|&b| b != 0) as u8)
                .collect();
            &bools
        }
        _ => &bytes,
    };
    let chunks: Vec<u64> = values
        .par_chunks(CHUNK)
        .map(|chunk| mix(OFFSET, chunk))
        .collect();
    let mut h = mix(OFFSET, tensor.name.as_bytes());
    h = mix(h, canonical(tensor.dtype).as_bytes());
    for &dim in tensor.shape.iter() {
        h = mix(h, &(dim as u64).to_le_bytes());
    }
    for c in chunks {
        h = mix(h, &c.to_le_bytes());
    }
    Ok(h)
}

/// The checksum of `tensors`, reading each one's bytes once, one tensor at a time (a deferred
/// tensor is read back from its device and dropped before the next).
pub(crate) fn checksum(tensors: &[PackTensor]) -> Result<String, PackError> {
    let mut order: Vec<&PackTensor> = tensors.iter().collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = OFFSET;
    for tensor in order {
        h = mix(h, &tensor_hash(tensor)?.to_le_bytes());
    }
    Ok(format!("{h:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{BoolStore, TensorData};
    use burn_store::bridge::from_data;

    fn t(name: &str, data: TensorData) -> PackTensor {
        from_data(data, name.into(), None)
    }

    #[test]
    fn storage_does_not_count_values_do() {
        let a = t("w", TensorData::new(vec![1.0f32, 2.0], [2]));
        // Flex's own f32 type, as a file written from Flex may carry it.
        let flex32 = burn::tensor::Bytes::from_elems(vec![1.0f32, 2.0]);
        let b = PackTensor::new("w".into(), DType::Flex32, [2], None, flex32);
        let c = t("w", TensorData::new(vec![1.0f32, 2.5], [2]));
        let d = t("v", TensorData::new(vec![1.0f32, 2.0], [2]));
        let e = t("w", TensorData::new(vec![1.0f32, 2.0], [1, 2]));
        let sum = |x: &PackTensor| checksum(std::slice::from_ref(x)).unwrap();
        assert_eq!(sum(&a), sum(&b), "Flex32 and F32 are one type");
        assert_ne!(sum(&a), sum(&c), "a value");
        assert_ne!(sum(&a), sum(&d), "a name");
        assert_ne!(sum(&a), sum(&e), "a shape");
        // Order in the file does not count.
        assert_eq!(
            checksum(&[a.clone(), d.clone()]).unwrap(),
            checksum(&[d, a]).unwrap()
        );
    }

    #[test]
    fn bools_are_bools_whatever_their_storage() {
        let native = TensorData::new(vec![true, false, true], [3]);
        let u8s = native.clone().convert_dtype(DType::Bool(BoolStore::U8));
        let u32s = native.clone().convert_dtype(DType::Bool(BoolStore::U32));
        assert_eq!(u8s.dtype(), DType::Bool(BoolStore::U8));
        assert_eq!(u32s.dtype(), DType::Bool(BoolStore::U32));
        let sums: Vec<String> = [native, u8s, u32s]
            .into_iter()
            .map(|d| checksum(&[t("mask", d)]).unwrap())
            .collect();
        assert_eq!(sums[0], sums[1]);
        assert_eq!(sums[0], sums[2]);
    }
}
