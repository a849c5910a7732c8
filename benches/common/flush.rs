//! Evicting the caches between timed passes, as `../shared/bench/triad.c` does: inside a
//! training step the EMA's arrays come from memory, and some machines have a last-level cache
//! (260 MiB) that holds the ResNet-50 set, where back-to-back passes would time the cache.

use rayon::prelude::*;

/// A buffer of at least twice the last-level cache (64 MiB if the size cannot be read), written
/// once per cache line by every thread before each timed pass.
pub struct Flush {
    buffer: Vec<u8>,
}

impl Flush {
    pub fn new() -> Self {
        let llc = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cache/index3/size")
            .ok()
            .and_then(|s| parse_size(s.trim()));
        let bytes = llc.map_or(64 << 20, |b| (2 * b).max(64 << 20));
        eprintln!(
            "caches flushed before each interleaved pass: {} MiB written (last-level cache: {})",
            bytes >> 20,
            llc.map_or("unknown".to_string(), |b| format!("{} MiB", b >> 20))
        );
        Self {
            buffer: vec![1; bytes],
        }
    }

    /// Writes every cache line of the buffer (not timed by the callers).
    pub fn run(&mut self) {
        self.buffer.par_chunks_mut(1 << 20).for_each(|chunk| {
            chunk
                .iter_mut()
                .step_by(64)
                .for_each(|b| *b = b.wrapping_add(1))
        });
        std::hint::black_box(&self.buffer);
    }
}

/// `32768K`, `32M` or a byte count, as sysfs writes cache sizes.
fn parse_size(s: &str) -> Option<usize> {
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: usize = digits.parse().ok()?;
    match unit {
        "" => Some(n),
        "K" => Some(n << 10),
        "M" => Some(n << 20),
        "G" => Some(n << 30),
        _ => None,
    }
}
