//! MNIST in IDX format (gzip-compressed), a seeded train/validation split, and the batcher.

use std::io::Read;
use std::path::{Path, PathBuf};

use burn::data::dataloader::batcher::Batcher;
use burn::prelude::*;
use flate2::read::GzDecoder;

use crate::error::MnistError;

/// Side of an MNIST image.
pub const SIDE: usize = 28;
/// Pixels per image.
pub const PIXELS: usize = SIDE * SIDE;
/// Images in the training split (the rest of the 10,000 are for validation).
pub const TRAIN_SIZE: usize = 8_000;

/// The data shipped with the repository.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist-10k")
}

/// One digit.
#[derive(Clone, Debug)]
pub struct MnistItem {
    /// 784 grayscale bytes, row by row.
    pub pixels: Vec<u8>,
    /// The digit, 0 to 9.
    pub label: u8,
}

fn read_gz(path: &Path) -> Result<Vec<u8>, MnistError> {
    let file = std::fs::File::open(path).map_err(|source| MnistError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut bytes = Vec::new();
    GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .map_err(|e| MnistError::BadData {
            path: path.to_path_buf(),
            problem: format!("not a readable gzip stream ({e})"),
        })?;
    Ok(bytes)
}

fn header(bytes: &[u8], path: &Path, magic: u32, dims: usize) -> Result<Vec<usize>, MnistError> {
    let bad = |problem: String| MnistError::BadData {
        path: path.to_path_buf(),
        problem,
    };
    let word = |i: usize| -> Result<u32, MnistError> {
        bytes
            .get(4 * i..4 * i + 4)
            .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
            .ok_or_else(|| bad("the header is truncated".into()))
    };
    let found = word(0)?;
    if found != magic {
        return Err(bad(format!(
            "magic number {found:#010x}, expected {magic:#010x}"
        )));
    }
    (1..=dims).map(|i| word(i).map(|w| w as usize)).collect()
}

/// Reads an IDX image file and its label file.
pub fn read_idx(images: &Path, labels: &Path) -> Result<Vec<MnistItem>, MnistError> {
    let image_bytes = read_gz(images)?;
    let label_bytes = read_gz(labels)?;
    let dims = header(&image_bytes, images, 0x0000_0803, 3)?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    if rows != SIDE || cols != SIDE {
        return Err(MnistError::BadData {
            path: images.to_path_buf(),
            problem: format!("images are {rows}x{cols}, expected {SIDE}x{SIDE}"),
        });
    }
    let label_count = header(&label_bytes, labels, 0x0000_0801, 1)?[0];
    if label_count != count {
        return Err(MnistError::BadData {
            path: labels.to_path_buf(),
            problem: format!("{label_count} labels for {count} images"),
        });
    }
    let pixels = image_bytes
        .get(16..16 + count * PIXELS)
        .ok_or_else(|| MnistError::BadData {
            path: images.to_path_buf(),
            problem: format!("truncated: {count} images announced"),
        })?;
    let label_values = label_bytes
        .get(8..8 + count)
        .ok_or_else(|| MnistError::BadData {
            path: labels.to_path_buf(),
            problem: format!("truncated: {count} labels announced"),
        })?;
    if let Some(bad) = label_values.iter().find(|&&l| l > 9) {
        return Err(MnistError::BadData {
            path: labels.to_path_buf(),
            problem: format!("label {bad} is not a digit"),
        });
    }
    Ok(pixels
        .chunks_exact(PIXELS)
        .zip(label_values)
        .map(|(p, &label)| MnistItem {
            pixels: p.to_vec(),
            label,
        })
        .collect())
}

/// A deterministic shuffle (SplitMix64-driven Fisher-Yates): the split must not depend on a
/// random-number crate's version.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    for i in (1..items.len()).rev() {
        let j = (splitmix(&mut state) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// The next number of a SplitMix64 stream (Steele, Lea and Flood 2014) kept in `state`.
pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 8,000 / 2,000 split of the data in `dir`, shuffled with `seed`.
pub fn load_split(dir: &Path, seed: u64) -> Result<(Vec<MnistItem>, Vec<MnistItem>), MnistError> {
    let mut items = read_idx(
        &dir.join("images-idx3-ubyte.gz"),
        &dir.join("labels-idx1-ubyte.gz"),
    )?;
    if items.len() <= TRAIN_SIZE {
        return Err(MnistError::BadData {
            path: dir.to_path_buf(),
            problem: format!("{} images, need more than {TRAIN_SIZE}", items.len()),
        });
    }
    shuffle(&mut items, seed);
    let valid = items.split_off(TRAIN_SIZE);
    Ok((items, valid))
}

/// A batch of digits.
#[derive(Clone, Debug)]
pub struct MnistBatch {
    /// `[batch, 1, 28, 28]`, normalised with MNIST's mean and standard deviation.
    pub images: Tensor<4>,
    /// `[batch]` digits.
    pub targets: Tensor<1, Int>,
}

/// Turns digits into normalised image tensors.
#[derive(Clone, Debug, Default)]
pub struct MnistBatcher;

impl Batcher<MnistItem, MnistBatch> for MnistBatcher {
    fn batch(&self, items: Vec<MnistItem>, device: &Device) -> MnistBatch {
        let n = items.len();
        let pixels: Vec<f32> = items
            .iter()
            .flat_map(|item| {
                item.pixels
                    .iter()
                    .map(|&p| (p as f32 / 255.0 - 0.1307) / 0.3081)
            })
            .collect();
        let labels: Vec<i64> = items.iter().map(|item| item.label as i64).collect();
        MnistBatch {
            images: Tensor::from_data(TensorData::new(pixels, [n, 1, SIDE, SIDE]), device),
            targets: Tensor::from_data(TensorData::new(labels, [n]), device),
        }
    }
}
