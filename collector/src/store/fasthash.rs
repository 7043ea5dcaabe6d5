//! A fast keyed hasher for the store's hot maps (series id → head, label
//! set → series id). The standard SipHash-1-3 was 7% of the writer
//! thread's time during gRPC ingest, where every sample costs a label-set
//! lookup and a few id lookups. This hasher mixes eight bytes at a time
//! with a folded 64×64→128-bit multiply keyed by per-process random seeds,
//! so label sets chosen by a remote client cannot be aimed at one bucket
//! without knowing the seeds (the property SipHash was there for), at a
//! fraction of its cost.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

/// A `HashMap` using [`FastState`].
pub(crate) type FastMap<K, V> = HashMap<K, V, FastState>;

/// Odd constants from the fractional digits of pi, used to spread the seeds.
const SPREAD: [u64; 3] = [0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344, 0xa409_3822_299f_31d0];

/// The process-wide seeds, drawn once from the standard library's random
/// source (the same one `RandomState` keys SipHash with).
fn process_seeds() -> [u64; 2] {
    static SEEDS: OnceLock<[u64; 2]> = OnceLock::new();
    *SEEDS.get_or_init(|| {
        let draw = |salt: u64| {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(salt);
            h.finish()
        };
        // `| 1` keeps the multipliers odd, hence never zero.
        [draw(SPREAD[0]) | 1, draw(SPREAD[1]) | 1]
    })
}

/// Builds [`FastHasher`]s; every map in the process shares the seeds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FastState {
    seeds: [u64; 2],
}

impl Default for FastState {
    fn default() -> Self {
        Self { seeds: process_seeds() }
    }
}

impl BuildHasher for FastState {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher {
            acc: self.seeds[0] ^ SPREAD[2],
            key: self.seeds[1],
        }
    }
}

/// The hasher itself: `acc` absorbs each word through a folded multiply
/// by the secret `key`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FastHasher {
    acc: u64,
    key: u64,
}

/// The high and low halves of the full product, xored: every input bit
/// reaches many output bits in both halves.
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a).wrapping_mul(u128::from(b));
    (p as u64) ^ ((p >> 64) as u64)
}

impl FastHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        // Adding a constant keeps a zero word from zeroing the product.
        self.acc = fold_mul(self.acc ^ word, self.key.wrapping_add(SPREAD[0])).rotate_left(23);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            // The length tells "ab" from "ab\0".
            self.mix(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        fold_mul(self.acc, self.key ^ SPREAD[1])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::Labels;

    fn hash<T: std::hash::Hash>(t: &T) -> u64 {
        FastState::default().hash_one(t)
    }

    #[test]
    fn equal_inputs_hash_equal_and_near_inputs_differ() {
        let a = Labels::from_pairs(&[("__name__", "cpu_temp"), ("instance", "h1")]);
        assert_eq!(hash(&a), hash(&a.clone()));
        let b = Labels::from_pairs(&[("__name__", "cpu_temp"), ("instance", "h2")]);
        assert_ne!(hash(&a), hash(&b));
        assert_ne!(hash(&"ab"), hash(&"ab\0"));
        assert_ne!(hash(&0u64), hash(&1u64));
    }

    #[test]
    fn sequential_ids_spread_over_buckets() {
        // hashbrown picks buckets from the low bits and tags from the top
        // seven: both must vary across consecutive ids.
        let mut low = std::collections::HashSet::new();
        let mut top = std::collections::HashSet::new();
        for id in 0u64..4096 {
            let h = hash(&id);
            low.insert(h & 1023);
            top.insert(h >> 57);
        }
        assert!(low.len() > 900, "{} of 1024 low buckets used", low.len());
        assert_eq!(top.len(), 128);
    }

    #[test]
    fn maps_work() {
        let mut m: FastMap<u64, u64> = FastMap::default();
        for i in 0..10_000 {
            m.insert(i, i * 2);
        }
        assert_eq!(m.get(&4321), Some(&8642));
        assert_eq!(m.len(), 10_000);
    }
}
