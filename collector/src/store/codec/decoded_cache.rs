//! A bounded cache of decoded sealed-block sections, so a query repeated
//! over the same range (a dashboard refreshing, a range query's evaluator
//! re-reading, a rule group) does not run the range decoder again.
//!
//! Sealed blocks are immutable: a compaction writes a new block under a new
//! key and deletes the old one, so an entry keyed by the block's key can
//! never be stale. Readers only reach keys the catalog lists, so entries of
//! deleted blocks are simply never asked for again and age out. Nothing
//! here needs invalidation.
//!
//! Per block the cache holds its directory (series and time bounds of each
//! section, so a hit needs neither the sled read nor the checksum) and the
//! decoded sections a reader asked for. A block counts as a hit only when
//! every section the reader wants is present; otherwise the caller reads
//! and decodes the block as usual and offers the sections it decoded.
//! Regular timestamps (one fixed step, the common case) are kept as
//! first/step, so a section costs about 8 bytes per sample.
//!
//! Eviction is CLOCK (second chance) over sections in insertion order,
//! within a byte budget; a budget of zero turns the cache off. This file is
//! generic over the block key so it knows nothing of sled or the catalog.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// One series' samples from one block: `(series id, samples)`.
#[cfg(test)]
pub(crate) type SeriesPart = (u64, Vec<(i64, f64)>);

/// One section's place in its block: series, first and last timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SectionBounds {
    /// Series id.
    pub series: u64,
    /// First timestamp, ms.
    pub min_ts: i64,
    /// Last timestamp, ms.
    pub max_ts: i64,
}

/// A decoded section's timestamps.
#[derive(Debug, PartialEq)]
enum Times {
    /// `first + i * step` for every sample `i`.
    Regular { first: i64, step: i64 },
    /// Anything else, as stored.
    List(Vec<i64>),
}

/// One decoded section.
#[derive(Debug, PartialEq)]
pub(crate) struct DecodedSection {
    times: Times,
    values: Vec<f64>,
}

impl DecodedSection {
    /// Keeps `samples` (ascending by time), compactly when regular.
    pub(crate) fn from_samples(samples: &[(i64, f64)]) -> Self {
        let values: Vec<f64> = samples.iter().map(|s| s.1).collect();
        let regular = match samples {
            [] | [_] => samples.first().map(|s| (s.0, 0)),
            [a, b, ..] => {
                let step = b.0.wrapping_sub(a.0);
                samples
                    .windows(2)
                    .all(|w| w[1].0.wrapping_sub(w[0].0) == step)
                    .then_some((a.0, step))
            }
        };
        let times = match regular {
            Some((first, step)) => Times::Regular { first, step },
            None => Times::List(samples.iter().map(|s| s.0).collect()),
        };
        DecodedSection { times, values }
    }

    fn time(&self, i: usize) -> i64 {
        match &self.times {
            Times::Regular { first, step } => first.wrapping_add(step.wrapping_mul(i as i64)),
            Times::List(ts) => ts.get(i).copied().unwrap_or(i64::MAX),
        }
    }

    /// The samples with timestamps in `[start, end]`.
    pub(crate) fn range(&self, start: i64, end: i64) -> Vec<(i64, f64)> {
        let n = self.values.len();
        let (from, to) = match &self.times {
            // Regular steps are ascending only with a positive step; any
            // other shape falls back to a scan, which is always right.
            Times::Regular { step, .. } if *step > 0 || n <= 1 => (
                partition(n, |i| self.time(i) < start),
                partition(n, |i| self.time(i) <= end),
            ),
            Times::List(ts) => (ts.partition_point(|t| *t < start), ts.partition_point(|t| *t <= end)),
            Times::Regular { .. } => {
                return (0..n)
                    .map(|i| (self.time(i), self.values[i]))
                    .filter(|(t, _)| (start..=end).contains(t))
                    .collect();
            }
        };
        let Some(values) = self.values.get(from..to.max(from)) else {
            return Vec::new();
        };
        values
            .iter()
            .enumerate()
            .map(|(k, v)| (self.time(from + k), *v))
            .collect()
    }

    /// Index range of the samples with timestamps in `[start, end]`.
    fn index_range(&self, start: i64, end: i64) -> Option<(usize, usize)> {
        let n = self.values.len();
        match &self.times {
            Times::Regular { step, .. } if *step > 0 || n <= 1 => Some((
                partition(n, |i| self.time(i) < start),
                partition(n, |i| self.time(i) <= end),
            )),
            Times::List(ts) => Some((ts.partition_point(|t| *t < start), ts.partition_point(|t| *t <= end))),
            // Not ascending: only a scan is right (see `range`).
            Times::Regular { .. } => None,
        }
    }

    /// Bytes this section holds, for the budget.
    fn bytes(&self) -> usize {
        let times = match &self.times {
            Times::Regular { .. } => 0,
            Times::List(ts) => ts.len() * 8,
        };
        SECTION_OVERHEAD + times + self.values.len() * 8
    }
}

/// The samples of one cached section inside a range, shared with the
/// cache instead of copied out: the reader appends them straight into the
/// series' result, so a warm read copies each sample once.
#[derive(Debug, Clone)]
pub(crate) enum CachedRun {
    /// Samples `from..to` of a cached section.
    Shared {
        /// The section.
        section: Arc<DecodedSection>,
        /// First sample index.
        from: usize,
        /// One past the last sample index.
        to: usize,
    },
    /// Samples copied out (sections whose times do not ascend).
    Owned(Vec<(i64, f64)>),
}

impl CachedRun {
    fn new(section: Arc<DecodedSection>, start: i64, end: i64) -> CachedRun {
        match section.index_range(start, end) {
            Some((from, to)) => CachedRun::Shared {
                section,
                from,
                to: to.max(from),
            },
            None => CachedRun::Owned(section.range(start, end)),
        }
    }

    /// How many samples.
    pub(crate) fn len(&self) -> usize {
        match self {
            CachedRun::Shared { from, to, .. } => to - from,
            CachedRun::Owned(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Timestamp of sample `i` of the run.
    fn ts(&self, i: usize) -> Option<i64> {
        match self {
            CachedRun::Shared { section, from, to } => (from + i < *to).then(|| section.time(from + i)),
            CachedRun::Owned(v) => v.get(i).map(|s| s.0),
        }
    }

    /// First timestamp.
    pub(crate) fn first_ts(&self) -> Option<i64> {
        self.ts(0)
    }

    /// Last timestamp.
    pub(crate) fn last_ts(&self) -> Option<i64> {
        self.ts(self.len().checked_sub(1)?)
    }

    /// Appends the samples to `out`.
    pub(crate) fn append_to(&self, out: &mut Vec<(i64, f64)>) {
        match self {
            CachedRun::Shared { section, from, to } => {
                let Some(values) = section.values.get(*from..*to) else {
                    return;
                };
                match &section.times {
                    Times::Regular { first, step } => {
                        let mut t = first.wrapping_add(step.wrapping_mul(*from as i64));
                        out.extend(values.iter().map(|v| {
                            let s = (t, *v);
                            t = t.wrapping_add(*step);
                            s
                        }));
                    }
                    Times::List(ts) => {
                        if let Some(ts) = ts.get(*from..*to) {
                            out.extend(ts.iter().copied().zip(values.iter().copied()));
                        }
                    }
                }
            }
            CachedRun::Owned(v) => out.extend_from_slice(v),
        }
    }

    /// The samples as a vector.
    pub(crate) fn into_vec(self) -> Vec<(i64, f64)> {
        match self {
            CachedRun::Owned(v) => v,
            shared => {
                let mut out = Vec::with_capacity(shared.len());
                shared.append_to(&mut out);
                out
            }
        }
    }
}

/// First index in `0..n` where `before` turns false (it must be monotone).
fn partition(n: usize, before: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if before(mid) { lo = mid + 1 } else { hi = mid }
    }
    lo
}

/// Bookkeeping bytes per cached section and per directory entry, a rough
/// figure so that many tiny sections still count against the budget.
const SECTION_OVERHEAD: usize = 96;
const DIR_ENTRY_BYTES: usize = 24;

struct BlockEntry {
    dir: Arc<[SectionBounds]>,
    sections: HashMap<usize, Arc<DecodedSection>>,
}

struct Inner<K> {
    blocks: HashMap<K, BlockEntry>,
    /// Sections in insertion order (the clock).
    clock: VecDeque<(K, usize)>,
    /// Sections hit since the hand last passed them: their second chance.
    referenced: HashSet<(K, usize)>,
    bytes: usize,
}

/// Figures for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodedCacheStats {
    /// Bytes held now.
    pub bytes: u64,
    /// Block reads served wholly from the cache.
    pub hits: u64,
    /// Block reads that had to decode.
    pub misses: u64,
    /// Sections evicted to stay within the budget.
    pub evictions: u64,
}

/// The cache; shared by every reader of one store.
pub(crate) struct DecodedCache<K> {
    capacity: usize,
    inner: Mutex<Inner<K>>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl<K: Hash + Eq + Copy> DecodedCache<K> {
    /// A cache holding at most `capacity` bytes (0: off).
    pub(crate) fn new(capacity: usize) -> Self {
        DecodedCache {
            capacity,
            inner: Mutex::new(Inner {
                blocks: HashMap::new(),
                clock: VecDeque::new(),
                referenced: HashSet::new(),
                bytes: 0,
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// Whether the cache is in use at all.
    pub(crate) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The samples in `[start, end]` of every section of block `key` whose
    /// series is in `wanted` and whose bounds overlap the range, as
    /// `(series, samples)` in directory order — or `None` when the block's
    /// directory or any such section is not cached.
    #[cfg(test)]
    pub(crate) fn get(&self, key: K, wanted: &HashSet<u64>, start: i64, end: i64) -> Option<Vec<SeriesPart>> {
        Some(
            self.get_runs(key, wanted, start, end)?
                .into_iter()
                .map(|(s, r)| (s, r.into_vec()))
                .collect(),
        )
    }

    /// Like `get`, the samples shared with the cache rather than copied.
    pub(crate) fn get_runs(
        &self,
        key: K,
        wanted: &HashSet<u64>,
        start: i64,
        end: i64,
    ) -> Option<Vec<(u64, CachedRun)>> {
        if !self.enabled() {
            return None;
        }
        let found: Option<Vec<(u64, Arc<DecodedSection>)>> = {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            let inner = &mut *inner;
            inner.blocks.get(&key).and_then(|block| {
                let mut found = Vec::new();
                for (i, b) in block.dir.iter().enumerate() {
                    if !wanted.contains(&b.series) || b.max_ts < start || b.min_ts > end {
                        continue;
                    }
                    found.push((b.series, block.sections.get(&i)?.clone()));
                    inner.referenced.insert((key, i));
                }
                Some(found)
            })
        };
        match found {
            Some(found) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                // Materialized outside the lock: parallel readers only
                // contend for the lookup.
                Some(
                    found
                        .into_iter()
                        .map(|(s, d)| (s, CachedRun::new(d, start, end)))
                        .collect(),
                )
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Offers the decoded sections (by directory index) of block `key`,
    /// whose directory is `dir`; evicts what it must to stay in budget.
    pub(crate) fn put(&self, key: K, dir: &[SectionBounds], sections: Vec<(usize, DecodedSection)>) {
        if !self.enabled() || sections.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let inner = &mut *inner;
        if !inner.blocks.contains_key(&key) {
            inner.bytes += dir.len() * DIR_ENTRY_BYTES;
            inner.blocks.insert(
                key,
                BlockEntry {
                    dir: dir.into(),
                    sections: HashMap::new(),
                },
            );
        }
        for (i, section) in sections {
            let size = section.bytes();
            // A section larger than the whole budget is not kept.
            if size > self.capacity || i >= dir.len() {
                continue;
            }
            let Some(block) = inner.blocks.get_mut(&key) else {
                break;
            };
            if block.sections.insert(i, Arc::new(section)).is_none() {
                inner.bytes += size;
                inner.clock.push_back((key, i));
            } else {
                // Two readers decoded it at once; the sizes are equal.
            }
        }
        self.evict(inner);
    }

    /// Runs the clock hand until the budget holds.
    fn evict(&self, inner: &mut Inner<K>) {
        // Each section gets at most one second chance per pass, so this ends.
        let mut budget_steps = inner.clock.len() * 2 + 1;
        while inner.bytes > self.capacity && budget_steps > 0 {
            budget_steps -= 1;
            let Some((key, i)) = inner.clock.pop_front() else {
                break;
            };
            if inner.referenced.remove(&(key, i)) {
                inner.clock.push_back((key, i));
                continue;
            }
            let Some(block) = inner.blocks.get_mut(&key) else {
                continue;
            };
            if let Some(section) = block.sections.remove(&i) {
                inner.bytes = inner.bytes.saturating_sub(section.bytes());
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
            if block.sections.is_empty() {
                inner.bytes = inner.bytes.saturating_sub(block.dir.len() * DIR_ENTRY_BYTES);
                inner.blocks.remove(&key);
            }
        }
    }

    /// Current figures.
    pub(crate) fn stats(&self) -> DecodedCacheStats {
        let bytes = self.inner.lock().unwrap_or_else(PoisonError::into_inner).bytes as u64;
        DecodedCacheStats {
            bytes,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn regular(first: i64, n: i64) -> Vec<(i64, f64)> {
        (0..n).map(|i| (first + i * 10, i as f64)).collect()
    }

    fn bounds(series: u64, s: &[(i64, f64)]) -> SectionBounds {
        SectionBounds {
            series,
            min_ts: s.first().unwrap().0,
            max_ts: s.last().unwrap().0,
        }
    }

    #[test]
    fn sections_give_back_exactly_the_range() {
        let irregular = vec![(1, 1.0), (5, 2.0), (6, f64::NAN), (20, 4.0)];
        let descending = vec![(30, 1.0), (20, 2.0)];
        for samples in [regular(100, 50), irregular, descending, vec![(7, 7.0)], vec![]] {
            let d = DecodedSection::from_samples(&samples);
            for (start, end) in [(i64::MIN, i64::MAX), (0, 4), (5, 6), (101, 139), (140, 140), (500, 400)] {
                let want: Vec<(i64, f64)> = samples
                    .iter()
                    .copied()
                    .filter(|(t, _)| (start..=end).contains(t))
                    .collect();
                let got = d.range(start, end);
                assert_eq!(
                    got.iter().map(|s| (s.0, s.1.to_bits())).collect::<Vec<_>>(),
                    want.iter().map(|s| (s.0, s.1.to_bits())).collect::<Vec<_>>(),
                    "{samples:?} [{start}, {end}]"
                );
                // The shared form gives the same samples without copying
                // the section.
                let run = CachedRun::new(Arc::new(DecodedSection::from_samples(&samples)), start, end);
                assert_eq!(run.len(), want.len());
                assert_eq!(run.first_ts(), want.first().map(|s| s.0));
                assert_eq!(run.last_ts(), want.last().map(|s| s.0));
                let mut appended = vec![(-1, 0.0)];
                run.append_to(&mut appended);
                assert_eq!(
                    appended[1..].iter().map(|s| (s.0, s.1.to_bits())).collect::<Vec<_>>(),
                    want.iter().map(|s| (s.0, s.1.to_bits())).collect::<Vec<_>>(),
                    "{samples:?} [{start}, {end}]"
                );
            }
        }
        assert_eq!(
            DecodedSection::from_samples(&regular(0, 720)).bytes(),
            SECTION_OVERHEAD + 720 * 8
        );
    }

    #[test]
    fn a_block_hits_only_when_every_wanted_section_is_cached() {
        let cache = DecodedCache::new(1 << 20);
        let (a, b) = (regular(0, 100), regular(0, 100));
        let dir = [bounds(1, &a), bounds(2, &b)];
        let both: HashSet<u64> = [1, 2].into();
        let one: HashSet<u64> = [1].into();
        assert_eq!(cache.get(7u32, &both, 0, 1000), None);
        cache.put(7, &dir, vec![(0, DecodedSection::from_samples(&a))]);
        assert_eq!(cache.get(7, &both, 0, 1000), None, "series 2 missing");
        assert_eq!(cache.get(7, &one, 0, 1000), Some(vec![(1, a.clone())]));
        // Out of range sections are not needed for a hit.
        assert_eq!(cache.get(7, &both, 5000, 6000), Some(vec![]));
        cache.put(7, &dir, vec![(1, DecodedSection::from_samples(&b))]);
        assert_eq!(
            cache.get(7, &both, 0, 15),
            Some(vec![(1, a[..2].to_vec()), (2, b[..2].to_vec())])
        );
        let s = cache.stats();
        assert_eq!((s.hits, s.misses), (3, 2));
    }

    #[test]
    fn the_budget_holds_and_recently_used_sections_survive() {
        let section = regular(0, 100);
        let size = DecodedSection::from_samples(&section).bytes();
        // Room for three sections and the directories.
        let cache = DecodedCache::new(3 * size + 10 * DIR_ENTRY_BYTES);
        let wanted: HashSet<u64> = [1].into();
        for key in 0..3u32 {
            cache.put(
                key,
                &[bounds(1, &section)],
                vec![(0, DecodedSection::from_samples(&section))],
            );
        }
        assert!(cache.get(0, &wanted, 0, 1000).is_some());
        cache.put(
            3,
            &[bounds(1, &section)],
            vec![(0, DecodedSection::from_samples(&section))],
        );
        assert!(cache.stats().bytes <= (3 * size + 10 * DIR_ENTRY_BYTES) as u64);
        assert!(
            cache.get(0, &wanted, 0, 1000).is_some(),
            "block 0 was used: second chance"
        );
        assert!(
            cache.get(1, &wanted, 0, 1000).is_none(),
            "block 1 was the oldest unused"
        );
        assert!(cache.get(3, &wanted, 0, 1000).is_some());
        assert_eq!(cache.stats().evictions, 1);
    }

    #[test]
    fn zero_budget_is_off() {
        let cache = DecodedCache::new(0);
        let s = regular(0, 10);
        cache.put(1u8, &[bounds(1, &s)], vec![(0, DecodedSection::from_samples(&s))]);
        assert_eq!(cache.get(1, &[1].into(), 0, 100), None);
        assert_eq!(cache.stats(), DecodedCacheStats::default());
    }
}
