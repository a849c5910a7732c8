//! Random numbers as a function of (seed, step, stream): every draw of a training step —
//! its batch, noise levels and noise — is fixed by the step's number, so a run resumed from a
//! checkpoint draws exactly what the uninterrupted run drew, with no generator state to save.
//! SplitMix64 (Steele, Lea and Flood 2014) and Box–Muller: stable across crate versions.

/// One random stream.
#[derive(Clone, Debug)]
pub struct StepRng {
    state: u64,
    spare: Option<f64>,
}

impl StepRng {
    /// The stream `stream` of step `step` of a run with seed `seed`.
    pub fn new(seed: u64, step: u64, stream: u64) -> Self {
        let mut rng = Self {
            state: seed ^ 0x5851_f42d_4c95_7f2d,
            spare: None,
        };
        rng.state ^= rng
            .next_u64()
            .wrapping_add(step.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        rng.state ^= rng
            .next_u64()
            .wrapping_add(stream.wrapping_mul(0xd1b5_4a32_d192_ed03));
        rng
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// A standard normal draw (Box–Muller, both values used).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln is finite
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `n` standard normal draws as `f32`.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal() as f32).collect()
    }
}
