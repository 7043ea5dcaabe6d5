//! The in-memory heads: per series, the samples not yet sealed into a
//! block, sorted by timestamp with one value per timestamp (a later write
//! of the same timestamp replaces the earlier one, as the per-sample layout
//! did). Every sample here is also in a WAL record in sled; `Heads` tracks
//! those records ([`WalPart`]) so a seal can delete the ones it covered.
//!
//! Sealing works on generations: [`Heads::freeze`] moves every sample
//! before a cut out of the live heads into an immutable [`Generation`]
//! (moving vectors, not copying samples), which readers keep seeing until
//! the seal thread has written its blocks and put them in the catalog
//! (`seal.rs`). Meanwhile the writer keeps appending to the live heads.
//! At most one generation is sealing at a time.
//!
//! Memory is accounted from what is allocated, not what is held: sample
//! vectors grow by doubling, so their capacity (up to twice their length)
//! plus the allocator's per-allocation overhead and the head table is what
//! the process pays; [`Heads::bytes`] reports that, and the store's bound
//! on head memory is enforced against it.
//!
//! Only the writer (under the store's write lock) adds samples and freezes
//! generations, only the sealing side (under the seal lock) drops a sealed
//! generation; readers copy ranges out under the mutex.

use std::sync::Arc;

use super::fasthash::FastMap;
use super::keys::WalKey;

/// Unsealed samples of one series.
#[derive(Debug, Default)]
pub(crate) struct Head {
    /// Group (hash of the `instance` label) the series' blocks belong to.
    pub group: u64,
    /// Sorted by timestamp, unique timestamps.
    pub samples: Vec<(i64, f64)>,
    /// Highest timestamp ever accepted for the series since open, sealed
    /// or not: the reference point of the out-of-order window.
    pub max_ts: i64,
}

impl Head {
    /// Inserts or replaces; returns whether the sample count grew.
    fn insert(&mut self, ts: i64, v: f64) -> bool {
        self.max_ts = self.max_ts.max(ts);
        match self.samples.last() {
            Some(&(last, _)) if last < ts => {
                self.samples.push((ts, v));
                true
            }
            None => {
                self.samples.push((ts, v));
                true
            }
            _ => match self.samples.binary_search_by(|s| s.0.cmp(&ts)) {
                Ok(i) => {
                    self.samples[i].1 = v;
                    false
                }
                Err(i) => {
                    self.samples.insert(i, (ts, v));
                    true
                }
            },
        }
    }
}

/// Ids may run at most this far past the dense table before their heads
/// go to the sparse map: ids are allocated consecutively, so only damaged
/// records name ids far beyond, and those must not allocate the gap.
const MAX_DENSE_GAP: u64 = 1 << 24;

/// One part of a WAL record whose samples are (partly) in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WalPart {
    /// Its sled key.
    pub key: WalKey,
    /// The record's log sequence number.
    pub lsn: u64,
    /// Highest timestamp among its samples (or its record's): once every
    /// sample below `sealed_below` is in blocks and this is below it, the
    /// part holds nothing unsealed and a seal deletes it.
    pub max_ts: i64,
    /// Its samples older than this are sealed (see `seal.rs`, seal marks).
    pub sealed_below: i64,
}

/// One series' samples in a [`Generation`].
#[derive(Debug)]
pub(crate) struct FrozenSeries {
    pub series: u64,
    pub group: u64,
    /// Sorted by timestamp, unique timestamps.
    pub samples: Vec<(i64, f64)>,
}

/// Samples moved out of the live heads for one seal: every sample, older
/// than `cut`, of the WAL records up to `through_lsn`.
#[derive(Debug)]
pub(crate) struct Generation {
    /// Ascending by series id.
    pub series: Vec<FrozenSeries>,
    /// Samples held.
    pub samples: usize,
    /// Heap bytes held (see [`Heads::bytes`]).
    pub bytes: usize,
    /// Samples at or after this stayed in the live heads.
    pub cut: i64,
    /// The highest WAL record whose samples the live heads held when this
    /// was frozen.
    pub through_lsn: u64,
}

impl Generation {
    fn get(&self, id: u64) -> Option<&FrozenSeries> {
        self.series
            .binary_search_by_key(&id, |s| s.series)
            .ok()
            .and_then(|i| self.series.get(i))
    }
}

/// All heads plus what a seal needs to know.
#[derive(Debug, Default)]
pub(crate) struct Heads {
    /// Heads by series id. Ids are dense, so a table indexed by id costs
    /// 40 bytes a series where a hash map cost ~100 (measured with
    /// `bench/src/bin/series_ram.rs`).
    dense: Vec<Option<Head>>,
    /// Heads of ids far past the dense table (see [`MAX_DENSE_GAP`]).
    sparse: FastMap<u64, Head>,
    /// Samples held in the live heads.
    pub samples: usize,
    /// Sample slots allocated by the live heads' vectors (their capacity).
    slots: usize,
    /// Live heads whose vector holds an allocation.
    allocations: usize,
    /// Highest timestamp accepted for any series.
    pub global_max: i64,
    /// Parts of the WAL records holding the samples of the live heads and
    /// of the sealing generation, ascending by lsn.
    pub wal: Vec<WalPart>,
    /// The generation being sealed, if any.
    pub sealing: Option<Arc<Generation>>,
}

/// Bytes of one dense table slot (`Option<Head>`: vector header, group, max).
pub(crate) const HEAD_OVERHEAD_BYTES: usize = std::mem::size_of::<Option<Head>>();
/// Bytes per allocated sample slot.
pub(crate) const SAMPLE_BYTES: usize = std::mem::size_of::<(i64, f64)>();
/// What glibc's malloc adds to each allocation (header and rounding to 16
/// bytes), on average.
pub(crate) const ALLOCATION_OVERHEAD_BYTES: usize = 16;

impl Heads {
    fn get(&self, id: u64) -> Option<&Head> {
        match usize::try_from(id) {
            Ok(i) if i < self.dense.len() => self.dense.get(i).and_then(Option::as_ref),
            _ => self.sparse.get(&id),
        }
    }

    /// The head of `id`, created (in `group`) if missing.
    fn head(&mut self, id: u64, group: u64) -> &mut Head {
        let fresh = || Head {
            group,
            samples: Vec::new(),
            max_ts: i64::MIN,
        };
        let len = self.dense.len() as u64;
        match usize::try_from(id) {
            Ok(i) if id < len.saturating_add(MAX_DENSE_GAP) && !self.sparse.contains_key(&id) => {
                if i >= self.dense.len() {
                    self.dense.resize_with(i + 1, || None);
                }
                self.dense[i].get_or_insert_with(fresh)
            }
            _ => self.sparse.entry(id).or_insert_with(fresh),
        }
    }

    /// Every head with its series id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &Head)> + '_ {
        let dense = self
            .dense
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().map(|h| (i as u64, h)));
        dense.chain(self.sparse.iter().map(|(&id, h)| (id, h)))
    }

    /// Series with unsealed samples (live or sealing).
    pub(crate) fn active(&self) -> usize {
        let live = self.iter().filter(|(_, h)| !h.samples.is_empty()).count();
        let only_sealing = self.sealing.as_ref().map_or(0, |g| {
            g.series
                .iter()
                .filter(|s| self.get(s.series).is_none_or(|h| h.samples.is_empty()))
                .count()
        });
        live + only_sealing
    }

    /// Highest timestamp of a series, if it has a head.
    pub(crate) fn max_ts(&self, id: u64) -> Option<i64> {
        self.get(id).map(|h| h.max_ts)
    }

    /// Adds a sample.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, id: u64, group: u64, ts: i64, v: f64) {
        self.insert_run(id, group, &[(ts, v)]);
    }

    /// Adds one series' samples with one map lookup for all of them (the
    /// writer's per-commit path; `insert` per sample looked the head up
    /// once per sample).
    pub(crate) fn insert_run(&mut self, id: u64, group: u64, samples: &[(i64, f64)]) {
        let mut max = self.global_max;
        let head = self.head(id, group);
        let before = head.samples.capacity();
        let mut grew = 0;
        for &(ts, v) in samples {
            grew += usize::from(head.insert(ts, v));
            max = max.max(ts);
        }
        let after = head.samples.capacity();
        self.samples += grew;
        self.slots = self.slots + after - before;
        if before == 0 && after > 0 {
            self.allocations += 1;
        }
        self.global_max = max;
    }

    /// Samples of `id` in `[start, end]`, from the sealing generation and
    /// the live head merged (the live head holds the newer writes, so it
    /// wins on equal timestamps).
    pub(crate) fn range(&self, id: u64, start: i64, end: i64) -> Vec<(i64, f64)> {
        let slice = |s: &[(i64, f64)]| -> (usize, usize) {
            (s.partition_point(|x| x.0 < start), s.partition_point(|x| x.0 <= end))
        };
        let live: &[(i64, f64)] = self.get(id).map_or(&[], |h| {
            let (from, to) = slice(&h.samples);
            h.samples.get(from..to).unwrap_or_default()
        });
        let frozen: &[(i64, f64)] = self.sealing.as_ref().and_then(|g| g.get(id)).map_or(&[], |s| {
            let (from, to) = slice(&s.samples);
            s.samples.get(from..to).unwrap_or_default()
        });
        match (frozen.last(), live.first()) {
            (None, _) => live.to_vec(),
            (_, None) => frozen.to_vec(),
            (Some(a), Some(b)) if a.0 < b.0 => [frozen, live].concat(),
            _ => merge_newer_wins(frozen, live),
        }
    }

    /// Whether `id` has a sample in `[start, end]`.
    pub(crate) fn has_sample_in(&self, id: u64, start: i64, end: i64) -> bool {
        let any = |s: &[(i64, f64)]| {
            let from = s.partition_point(|x| x.0 < start);
            s.get(from).is_some_and(|x| x.0 <= end)
        };
        self.get(id).is_some_and(|h| any(&h.samples))
            || self
                .sealing
                .as_ref()
                .and_then(|g| g.get(id))
                .is_some_and(|s| any(&s.samples))
    }

    /// Heap bytes of the live heads: their sample vectors
    /// ([`Heads::vector_bytes`]) and the head table.
    pub(crate) fn live_bytes(&self) -> usize {
        self.vector_bytes() + self.table_bytes()
    }

    /// Heap bytes of the live heads' sample vectors: allocated slots plus
    /// the allocator's overhead per vector. This is what a seal frees.
    pub(crate) fn vector_bytes(&self) -> usize {
        self.slots * SAMPLE_BYTES + self.allocations * ALLOCATION_OVERHEAD_BYTES
    }

    /// Heap bytes of the head table, one slot per series whatever it holds;
    /// a seal does not free it.
    pub(crate) fn table_bytes(&self) -> usize {
        self.dense.capacity() * HEAD_OVERHEAD_BYTES + self.sparse.capacity() * (HEAD_OVERHEAD_BYTES + 16)
    }

    /// Heap bytes of the live heads and the sealing generation.
    pub(crate) fn bytes(&self) -> usize {
        self.live_bytes() + self.sealing.as_ref().map_or(0, |g| g.bytes)
    }

    /// Samples held, live and sealing.
    pub(crate) fn all_samples(&self) -> usize {
        self.samples + self.sealing.as_ref().map_or(0, |g| g.samples)
    }

    /// Moves every live sample older than `cut` into a new sealing
    /// generation and returns it, or `None` if there is none (or a
    /// generation is still sealing). `through_lsn` is the highest WAL
    /// record the live heads hold samples of. Vectors are moved, not
    /// copied: a head wholly before the cut gives up its vector, one cut in
    /// the middle keeps a fresh vector of its newer samples.
    pub(crate) fn freeze(&mut self, cut: i64, through_lsn: u64) -> Option<Arc<Generation>> {
        if self.sealing.is_some() {
            return None;
        }
        // Per head: its frozen samples, and its vector's capacity before
        // and after.
        let take = |id: u64, h: &mut Head| -> Option<(FrozenSeries, usize, usize)> {
            let n = h.samples.partition_point(|s| s.0 < cut);
            if n == 0 {
                return None;
            }
            let old = h.samples.capacity();
            let frozen = if n == h.samples.len() {
                std::mem::take(&mut h.samples)
            } else {
                let newer = h.samples.split_off(n);
                std::mem::replace(&mut h.samples, newer)
            };
            let series = FrozenSeries {
                series: id,
                group: h.group,
                samples: frozen,
            };
            Some((series, old, h.samples.capacity()))
        };
        let mut series = Vec::new();
        let (mut samples, mut moved_slots, mut kept_slots, mut kept_allocations) = (0, 0, 0, 0);
        let mut account = |(s, old, new): (FrozenSeries, usize, usize)| {
            samples += s.samples.len();
            moved_slots += old;
            kept_slots += new;
            kept_allocations += usize::from(new > 0);
            s
        };
        for (i, h) in self.dense.iter_mut().enumerate() {
            if let Some(frozen) = h.as_mut().and_then(|h| take(i as u64, h)) {
                series.push(account(frozen));
            }
        }
        let mut sparse: Vec<FrozenSeries> = self
            .sparse
            .iter_mut()
            .filter_map(|(&id, h)| take(id, h))
            .map(&mut account)
            .collect();
        sparse.sort_unstable_by_key(|s| s.series);
        series.append(&mut sparse);
        let moved_allocations = series.len();
        if series.is_empty() {
            return None;
        }
        self.samples -= samples;
        self.slots = self.slots + kept_slots - moved_slots;
        self.allocations = self.allocations + kept_allocations - moved_allocations;
        let bytes = moved_slots * SAMPLE_BYTES
            + moved_allocations * ALLOCATION_OVERHEAD_BYTES
            + series.capacity() * std::mem::size_of::<FrozenSeries>();
        let generation = Arc::new(Generation {
            series,
            samples,
            bytes,
            cut,
            through_lsn,
        });
        self.sealing = Some(Arc::clone(&generation));
        Some(generation)
    }
}

/// Merges two sorted runs with unique timestamps; on equal timestamps the
/// value of `newer` wins.
fn merge_newer_wins(older: &[(i64, f64)], newer: &[(i64, f64)]) -> Vec<(i64, f64)> {
    let mut out = Vec::with_capacity(older.len() + newer.len());
    let (mut i, mut j) = (0, 0);
    while let (Some(a), Some(b)) = (older.get(i), newer.get(j)) {
        if a.0 < b.0 {
            out.push(*a);
            i += 1;
        } else {
            if a.0 == b.0 {
                i += 1;
            }
            out.push(*b);
            j += 1;
        }
    }
    out.extend_from_slice(older.get(i..).unwrap_or_default());
    out.extend_from_slice(newer.get(j..).unwrap_or_default());
    out
}

/// Start of the window holding `ts`.
pub(crate) fn window_start(ts: i64, window_ms: i64) -> i64 {
    ts.div_euclid(window_ms).saturating_mul(window_ms)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn inserts_sort_and_replace() {
        let mut h = Heads::default();
        for (ts, v) in [(30, 3.0), (10, 1.0), (20, 2.0), (20, 2.5), (40, 4.0)] {
            h.insert(1, 0, ts, v);
        }
        assert_eq!(h.range(1, 0, 100), vec![(10, 1.0), (20, 2.5), (30, 3.0), (40, 4.0)]);
        assert_eq!(h.samples, 4);
        assert_eq!(h.max_ts(1), Some(40));
        assert_eq!(h.max_ts(2), None);
        assert_eq!(h.range(1, 15, 30), vec![(20, 2.5), (30, 3.0)]);
    }

    #[test]
    fn insert_run_matches_per_sample_inserts() {
        let run = [(30, 3.0), (10, 1.0), (20, 2.0), (20, 2.5), (40, 4.0)];
        let (mut one, mut many) = (Heads::default(), Heads::default());
        for &(ts, v) in &run {
            one.insert(7, 3, ts, v);
        }
        many.insert_run(7, 3, &run);
        assert_eq!(many.range(7, 0, 100), one.range(7, 0, 100));
        assert_eq!((many.samples, many.global_max), (one.samples, one.global_max));
        assert_eq!(many.max_ts(7), Some(40));
        assert_eq!(many.get(7).map(|h| h.group), Some(3));
        // An id far past the dense table is kept aside, not allocated for.
        many.insert(u64::MAX - 1, 5, 10, 1.0);
        assert_eq!(many.range(u64::MAX - 1, 0, 100), vec![(10, 1.0)]);
        assert_eq!(many.iter().map(|(id, _)| id).collect::<Vec<_>>(), vec![7, u64::MAX - 1]);
        assert_eq!(many.active(), 2);
    }

    #[test]
    fn freeze_moves_samples_before_the_cut_and_readers_still_see_them() {
        let mut h = Heads::default();
        for ts in [50, 150, 210, 250] {
            h.insert(1, 9, ts, ts as f64);
        }
        h.insert(2, 9, 120, 1.0);
        h.insert(u64::MAX - 1, 4, 90, 7.0);
        let bytes = h.bytes();
        let g = h.freeze(200, 17).unwrap();
        assert_eq!((g.cut, g.through_lsn, g.samples), (200, 17, 4));
        let ids: Vec<u64> = g.series.iter().map(|s| s.series).collect();
        assert_eq!(ids, vec![1, 2, u64::MAX - 1]);
        assert_eq!(g.series[0].samples, vec![(50, 50.0), (150, 150.0)]);
        assert_eq!(g.series[0].group, 9);
        assert_eq!(h.samples, 2, "210 and 250 stay live");
        assert_eq!(h.all_samples(), 6);
        assert!(h.freeze(1000, 18).is_none(), "one generation at a time");
        // Readers see both; a rewrite of a frozen timestamp wins.
        h.insert(1, 9, 150, -1.0);
        assert_eq!(
            h.range(1, 0, 1000),
            vec![(50, 50.0), (150, -1.0), (210, 210.0), (250, 250.0)]
        );
        assert_eq!(h.range(1, 100, 220), vec![(150, -1.0), (210, 210.0)]);
        assert!(h.has_sample_in(2, 100, 130) && !h.has_sample_in(2, 121, 130));
        assert_eq!(h.active(), 3);
        assert_eq!(h.max_ts(2), Some(120), "the out-of-order reference stays");
        // The bytes moved with the samples; dropping the generation frees them.
        assert!(h.bytes() >= bytes, "{} < {bytes}", h.bytes());
        h.sealing = None;
        assert!(h.bytes() < bytes);
        assert_eq!(h.range(1, 0, 1000), vec![(150, -1.0), (210, 210.0), (250, 250.0)]);
        assert!(h.freeze(i64::MIN, 19).is_none(), "nothing before the cut");
    }

    #[test]
    fn bytes_follow_allocated_capacity() {
        let mut h = Heads::default();
        for i in 0..1000 {
            h.insert_run(i % 10, 0, &[(i as i64, 1.0)]);
        }
        let slots: usize = h.iter().map(|(_, x)| x.samples.capacity()).sum();
        assert_eq!(h.slots, slots);
        assert_eq!(h.allocations, 10);
        assert!(h.live_bytes() >= slots * SAMPLE_BYTES + 10 * ALLOCATION_OVERHEAD_BYTES);
        let g = h.freeze(i64::MAX, 1).unwrap();
        assert_eq!((h.slots, h.allocations, h.samples), (0, 0, 0));
        assert!(g.bytes >= slots * SAMPLE_BYTES);
    }

    #[test]
    fn merge_prefers_the_newer_run() {
        let older = [(1, 1.0), (3, 3.0), (5, 5.0)];
        let newer = [(2, -2.0), (3, -3.0), (6, -6.0)];
        assert_eq!(
            merge_newer_wins(&older, &newer),
            vec![(1, 1.0), (2, -2.0), (3, -3.0), (5, 5.0), (6, -6.0)]
        );
        assert_eq!(window_start(-1, 100), -100);
    }
}
