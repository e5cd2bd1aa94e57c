//! A small seeded pseudo-random generator (SplitMix64) and weighted sampling.
//!
//! Written here rather than taken from a crate so the generated data stays the same
//! forever: only integer arithmetic and IEEE-exact float operations (`+ - * /`) are
//! used, never `exp`/`ln`/`powf`, whose last bits may differ between platforms.

/// The SplitMix64 increment ("golden gamma").
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function: a strong 64-bit mixer.
pub(crate) const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of a label, to derive named sub-seeds.
const fn fnv1a(label: &str) -> u64 {
    let bytes = label.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
        i += 1;
    }
    hash
}

/// The seed of an independent stream named `label` (a table, a layout part, a client).
pub(crate) fn sub_seed(seed: u64, label: &str) -> u64 {
    mix64(seed ^ mix64(fnv1a(label)))
}

/// A SplitMix64 generator.
#[derive(Debug, Clone)]
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The generator of one row: every row of a table is a pure function of
    /// (table seed, row number), so rows can be recomputed anywhere (a comment looks
    /// up its task's project) and chunk boundaries never change the output.
    pub(crate) fn for_row(table_seed: u64, row: u64) -> Rng {
        Rng::new(mix64(table_seed ^ mix64(row.wrapping_add(GAMMA))))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix64(self.state)
    }

    /// Uniform in `0..n` (0 when `n` is 0), by multiply-shift.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// Uniform in `[0, 1)` with 53 bits.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `per_mille / 1000`.
    pub(crate) fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// An index in `0..n` skewed towards 0 (Zipf-like): `n · u³`, so the first 1% of
    /// the indexes get about a fifth of the picks.
    pub(crate) fn skewed(&mut self, n: usize) -> usize {
        let u = self.unit();
        ((n as f64 * u * u * u) as usize).min(n.saturating_sub(1))
    }

    /// An index in `0..n` mildly skewed towards 0: `n · u²`.
    pub(crate) fn mildly_skewed(&mut self, n: usize) -> usize {
        let u = self.unit();
        ((n as f64 * u * u) as usize).min(n.saturating_sub(1))
    }

    /// A uniformly chosen element; `items` must not be empty.
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// An element chosen with [`Rng::skewed`]; `items` must not be empty.
    pub(crate) fn pick_skewed<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.skewed(items.len())]
    }

    /// An index chosen by integer weights (`(weight, value)` pairs); the weights must
    /// not all be 0.
    pub(crate) fn weighted<'a, T>(&mut self, table: &'a [(u64, T)]) -> &'a T {
        let total: u64 = table.iter().map(|(w, _)| w).sum();
        let mut r = self.below(total);
        for (w, value) in table {
            if r < *w {
                return value;
            }
            r -= w;
        }
        &table[table.len() - 1].1
    }
}

/// Sampling by integer weights through a cumulative table and a binary search.
#[derive(Debug, Clone)]
pub(crate) struct Weighted {
    cumulative: Vec<u64>,
}

impl Weighted {
    /// Weights may be 0 (never chosen) but not all of them; an empty or all-zero
    /// table always answers 0.
    pub(crate) fn new(weights: impl IntoIterator<Item = u64>) -> Weighted {
        let mut total = 0u64;
        let cumulative = weights
            .into_iter()
            .map(|w| {
                total += w;
                total
            })
            .collect();
        Weighted { cumulative }
    }

    /// An index in `0..len` with probability proportional to its weight.
    pub(crate) fn sample(&self, rng: &mut Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0);
        if total == 0 {
            return 0;
        }
        let r = rng.below(total);
        self.cumulative.partition_point(|&c| c <= r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference_output() {
        // Reference values of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = Rng::new(7);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let v = rng.below(10) as usize;
            seen[v] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(rng.below(0), 0);
    }

    #[test]
    fn weighted_never_picks_zero_weights_and_follows_weights() {
        let w = Weighted::new([0, 3, 0, 1]);
        let mut rng = Rng::new(1);
        let mut counts = [0u32; 4];
        for _ in 0..4000 {
            counts[w.sample(&mut rng)] += 1;
        }
        assert_eq!(counts[0], 0);
        assert_eq!(counts[2], 0);
        assert!(counts[1] > 2 * counts[3], "{counts:?}");
    }

    #[test]
    fn skewed_prefers_low_indexes() {
        let mut rng = Rng::new(3);
        let low = (0..10_000).filter(|_| rng.skewed(100) < 10).count();
        // P(n·u³ < 0.1·n) = 0.1^(1/3) ≈ 0.46
        assert!((4000..5200).contains(&low), "{low}");
    }

    #[test]
    fn row_generators_differ_per_row_and_table() {
        let a = Rng::for_row(1, 1).next_u64();
        let b = Rng::for_row(1, 2).next_u64();
        let c = Rng::for_row(2, 1).next_u64();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(sub_seed(1, "tasks"), sub_seed(1, "comments"));
    }
}
