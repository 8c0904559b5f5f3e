//! A small seeded random generator (SplitMix64 → xoshiro256**), used for sampling, synthetic
//! weights and tests. Own code so that `--seed` gives the same tokens across dependency updates.

#![warn(missing_docs)]

/// xoshiro256** state.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator seeded through SplitMix64 (any seed, 0 included, is fine).
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f32()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = (self.f32() as f64).max(1e-12);
        let u2 = self.f32() as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    /// `n` values uniform in [-scale, scale).
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(-scale, scale)).collect()
    }

    /// Uniform in `0..n` (`n` ≥ 1).
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * n as u64) >> 32) as u32
    }
}

/// One round of the PCG-RXS-M-XS hash (Jarzynski & Olano, "Hash Functions for GPU Rendering",
/// JCGT 2020): a bijection of u32 with good avalanche, in wrapping u32 arithmetic so that
/// `shaders/sample.wgsl` computes the same bits.
pub fn hash32(x: u32) -> u32 {
    let s = x.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let w = ((s >> ((s >> 28) + 4)) ^ s).wrapping_mul(277_803_737);
    (w >> 22) ^ w
}

/// The sampler's random number for the token at sequence `position`: uniform in [0, 1), a
/// stateless hash of (seed, position), so a draw depends on nothing else (not on how many
/// came before) and the GPU sampler (`shaders/sample.wgsl`, which has no u64) computes it
/// bit for bit: `h = hash32(hash32(hash32(hash32(seed_lo) ^ seed_hi) ^ position))`, then the
/// top 24 bits of `h` over 2^24, exact in f32.
pub fn uniform_at(seed: u64, position: u32) -> f32 {
    let s = hash32(hash32(seed as u32) ^ (seed >> 32) as u32);
    let h = hash32(hash32(s ^ position));
    (h >> 8) as f32 / (1u32 << 24) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_at_is_stateless_in_range_and_spread() {
        assert_eq!(uniform_at(7, 3), uniform_at(7, 3));
        assert_ne!(uniform_at(7, 3), uniform_at(8, 3));
        assert_ne!(uniform_at(7, 3), uniform_at(7 | (1 << 32), 3));
        let n = 100_000u32;
        let xs: Vec<f32> = (0..n).map(|p| uniform_at(42, p)).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        // Mean and the lag-1 correlation of consecutive positions: 1/2 and 0 within ~5σ.
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        assert!(
            (mean - 0.5).abs() < 5.0 * (1.0 / 12.0 / n as f64).sqrt(),
            "{mean}"
        );
        let cov = xs
            .windows(2)
            .map(|w| (w[0] as f64 - 0.5) * (w[1] as f64 - 0.5))
            .sum::<f64>()
            / (n - 1) as f64;
        assert!(cov.abs() * 12.0 < 5.0 / (n as f64).sqrt(), "{cov}");
    }

    #[test]
    fn hash32_matches_an_independent_computation() {
        // The paper's pcg_hash formula evaluated with Python integers mod 2^32.
        assert_eq!(hash32(0), 129_708_002);
        assert_eq!(hash32(1), 2_831_084_092);
    }
}
