//! The in-memory heads: per series, the samples not yet sealed into a
//! block, sorted by timestamp with one value per timestamp (a later write
//! of the same timestamp replaces the earlier one, as the per-sample layout
//! did). Every sample here is also in a WAL record in sled; `Heads` only
//! tracks which records those are, so a seal can delete them.
//!
//! Only the writer (under the store's write lock) changes heads; readers
//! copy ranges out under the mutex.

use std::collections::HashMap;

use super::fasthash::FastMap;

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

/// All heads plus what a seal needs to know.
#[derive(Debug, Default)]
pub(crate) struct Heads {
    /// Heads by series id. Ids are dense, so a table indexed by id costs
    /// 40 bytes a series where a hash map cost ~100 (measured with
    /// `bench/src/bin/series_ram.rs`).
    dense: Vec<Option<Head>>,
    /// Heads of ids far past the dense table (see [`MAX_DENSE_GAP`]).
    sparse: FastMap<u64, Head>,
    /// Samples held, for the memory bound.
    pub samples: usize,
    /// Highest timestamp accepted for any series.
    pub global_max: i64,
    /// Keys of the WAL record parts holding the samples above.
    pub wal_keys: Vec<super::keys::WalKey>,
}

/// Approximate heap bytes of one head besides its samples (table slot:
/// Vec header, group and max).
pub(crate) const HEAD_OVERHEAD_BYTES: usize = 40;
/// Bytes per held sample.
pub(crate) const SAMPLE_BYTES: usize = 16;

impl Heads {
    fn get(&self, id: u64) -> Option<&Head> {
        match usize::try_from(id) {
            Ok(i) if i < self.dense.len() => self.dense.get(i).and_then(Option::as_ref),
            _ => self.sparse.get(&id),
        }
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Head> {
        match usize::try_from(id) {
            Ok(i) if i < self.dense.len() => self.dense.get_mut(i).and_then(Option::as_mut),
            _ => self.sparse.get_mut(&id),
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

    /// Series with unsealed samples.
    pub(crate) fn active(&self) -> usize {
        self.iter().filter(|(_, h)| !h.samples.is_empty()).count()
    }

    /// Highest timestamp of a series, if it has a head.
    pub(crate) fn max_ts(&self, id: u64) -> Option<i64> {
        self.get(id).map(|h| h.max_ts)
    }

    /// Adds a sample.
    pub(crate) fn insert(&mut self, id: u64, group: u64, ts: i64, v: f64) {
        let head = self.head(id, group);
        if head.insert(ts, v) {
            self.samples += 1;
        }
        self.global_max = self.global_max.max(ts);
    }

    /// Adds one series' samples with one map lookup for all of them (the
    /// writer's per-commit path; `insert` per sample looked the head up
    /// once per sample).
    pub(crate) fn insert_run(&mut self, id: u64, group: u64, samples: &[(i64, f64)]) {
        let mut max = self.global_max;
        let head = self.head(id, group);
        let mut grew = 0;
        for &(ts, v) in samples {
            grew += usize::from(head.insert(ts, v));
            max = max.max(ts);
        }
        self.samples += grew;
        self.global_max = max;
    }

    /// Samples of `id` in `[start, end]`.
    pub(crate) fn range(&self, id: u64, start: i64, end: i64) -> Vec<(i64, f64)> {
        let Some(h) = self.get(id) else {
            return Vec::new();
        };
        let from = h.samples.partition_point(|s| s.0 < start);
        let to = h.samples.partition_point(|s| s.0 <= end);
        h.samples.get(from..to).map(<[_]>::to_vec).unwrap_or_default()
    }

    /// Whether `id` has a sample in `[start, end]`.
    pub(crate) fn has_sample_in(&self, id: u64, start: i64, end: i64) -> bool {
        self.get(id).is_some_and(|h| {
            let from = h.samples.partition_point(|s| s.0 < start);
            h.samples.get(from).is_some_and(|s| s.0 <= end)
        })
    }

    /// Estimated heap bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.samples * SAMPLE_BYTES + (self.dense.capacity() + self.sparse.len()) * HEAD_OVERHEAD_BYTES
    }

    /// Copies out, per series, the samples a seal should move to blocks:
    /// with `all`, everything; otherwise the windows that are closed — the
    /// series has moved past the window's end by the out-of-order window,
    /// or the whole store has by one more window (a series that stopped).
    pub(crate) fn sealable(&self, window_ms: i64, ooo_ms: i64, all: bool) -> Vec<Sealable> {
        let mut out = Vec::new();
        for (id, h) in self.iter() {
            let cut = if all {
                i64::MAX
            } else {
                let own = h.max_ts.saturating_sub(ooo_ms);
                let idle = self.global_max.saturating_sub(ooo_ms).saturating_sub(window_ms);
                // Samples in windows ending at or before this are closed.
                window_start(own.max(idle), window_ms)
            };
            let n = h.samples.partition_point(|s| s.0 < cut);
            if n > 0 {
                out.push(Sealable {
                    series: id,
                    group: h.group,
                    samples: h.samples[..n].to_vec(),
                });
            }
        }
        out
    }

    /// Drops sealed samples: those of `series` at or before `through`.
    pub(crate) fn remove_through(&mut self, series: u64, through: i64) {
        let removed = self.get_mut(series).map_or(0, |h| {
            let n = h.samples.partition_point(|s| s.0 <= through);
            h.samples.drain(..n);
            if h.samples.is_empty() {
                h.samples = Vec::new();
            }
            n
        });
        self.samples -= removed;
    }

    /// Every unsealed sample, for the checkpoint WAL record a seal writes.
    pub(crate) fn checkpoint(&self, except: &HashMap<u64, i64>) -> super::keys::WalEntries {
        let mut out = Vec::new();
        for (id, h) in self.iter() {
            let from = except.get(&id).map_or(0, |&t| h.samples.partition_point(|s| s.0 <= t));
            if from < h.samples.len() {
                out.push((id, h.samples[from..].to_vec()));
            }
        }
        out
    }
}

/// Samples copied out for sealing.
#[derive(Debug)]
pub(crate) struct Sealable {
    pub series: u64,
    pub group: u64,
    pub samples: Vec<(i64, f64)>,
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
        h.remove_through(1, 20);
        assert_eq!(h.range(1, 0, 100), vec![(30, 3.0), (40, 4.0)]);
        assert_eq!(h.samples, 2);
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
    fn only_closed_windows_are_sealable() {
        let mut h = Heads::default();
        // Series 1 reached 250 with windows of 100 and an ooo window of 30:
        // windows [0,100) and [100,200) are closed only once max - 30 >= 200.
        for ts in [50, 150, 210, 250] {
            h.insert(1, 0, ts, 1.0);
        }
        let s = h.sealable(100, 30, false);
        assert_eq!(s[0].samples.iter().map(|s| s.0).collect::<Vec<_>>(), vec![50, 150]);
        let s = h.sealable(100, 60, false);
        assert_eq!(s[0].samples.len(), 1, "190 is inside [100, 200)");
        assert_eq!(h.sealable(100, 30, true)[0].samples.len(), 4);
        // A silent series closes once everything moved on by a window more.
        h.insert(2, 0, 120, 1.0);
        h.insert(3, 0, 500, 1.0);
        let s = h.sealable(100, 30, false);
        assert!(s.iter().any(|x| x.series == 2));
        assert_eq!(window_start(-1, 100), -100);
    }
}
