//! Deterministic random numbers with no outside crate, so that the CPU and CUDA backends can draw
//! the same values: a stateless hash (`hash64`, SplitMix64's finaliser) for per-element draws such
//! as dropout masks, and a small sequential generator for shuffles and weight init.

/// SplitMix64 finaliser of `seed` and `index`: a counter-based draw, identical on every device.
#[inline]
pub fn hash64(seed: u64, index: u64) -> u64 {
    let mut z = seed
        .wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [0, 1) with 24 bits, from `hash64(seed, index)`. The CUDA twin computes the same.
#[inline]
pub fn uniform01(seed: u64, index: u64) -> f32 {
    (hash64(seed, index) >> 40) as f32 * (1.0 / 16_777_216.0)
}

/// Sequential generator (SplitMix64 stream).
#[derive(Clone, Debug)]
pub struct Rng {
    seed: u64,
    counter: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { seed, counter: 0 }
    }

    /// An independent stream derived from this seed and a label (e.g. per epoch, per layer).
    pub fn derive(seed: u64, label: u64) -> Rng {
        Rng::new(hash64(seed, label ^ 0xA5A5_5A5A_D1B5_4A32))
    }

    pub fn next_u64(&mut self) -> u64 {
        let v = hash64(self.seed, self.counter);
        self.counter += 1;
        v
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// Uniform integer in [0, n), n > 0 (Lemire's multiply-shift; bias < n / 2^64).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_in_range_and_roughly_uniform() {
        let n = 100_000;
        let mean: f64 = (0..n).map(|i| uniform01(7, i) as f64).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        assert!((0..n).all(|i| (0.0..1.0).contains(&uniform01(7, i))));
    }

    #[test]
    fn shuffle_is_a_permutation_and_seeded() {
        let mut a: Vec<usize> = (0..1000).collect();
        let mut b = a.clone();
        Rng::new(3).shuffle(&mut a);
        Rng::new(3).shuffle(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, (0..1000).collect::<Vec<_>>());
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn below_respects_bound() {
        let mut r = Rng::new(1);
        assert!((0..10_000).all(|_| r.below(7) < 7));
    }
}
