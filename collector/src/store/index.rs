//! The in-memory series index: label set ↔ series id, plus postings (label
//! pair → ids) so that selecting by `instance="x"` or a metric name does not
//! test every series. It is rebuilt from the `s` records at open and grows
//! only after the writer's batch holding the new definitions was applied, so
//! it never names a series the database does not have.
//!
//! It is laid out for memory, because it holds every series the store ever
//! saw: label names and values are interned once as symbols, a series is a
//! run of (name, value) symbol pairs in one shared arena, the label-set →
//! id map keeps only a 64-bit keyed hash per series (candidates are checked
//! against the arena), and postings are sorted id vectors. Labels are
//! materialized as [`Labels`] only for what a query returns. Measured with
//! `bench/src/bin/series_ram.rs`; the previous layout (two owned copies of
//! every label set and `BTreeSet` postings) held about 1.5 KiB per series.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use super::fasthash::{FastMap, FastState};
use crate::model::{Labels, Matcher};

/// Ids may run at most this far past the highest known one: ids are
/// allocated consecutively, so a larger gap means a damaged record, and
/// honouring it would allocate the gap.
const MAX_ID_GAP: u64 = 1 << 24;

/// Marks an id without a series in [`SeriesIndex::lens`].
const ABSENT: u16 = u16::MAX;

/// Interned label names and values.
#[derive(Debug, Default)]
struct Symbols {
    ids: FastMap<Arc<str>, u32>,
    strs: Vec<Arc<str>>,
}

impl Symbols {
    fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    /// The symbol of `s`, adding it if new; `None` only past 2^32 symbols.
    fn intern(&mut self, s: &str) -> Option<u32> {
        if let Some(&sym) = self.ids.get(s) {
            return Some(sym);
        }
        let sym = u32::try_from(self.strs.len()).ok()?;
        let s: Arc<str> = Arc::from(s);
        self.strs.push(Arc::clone(&s));
        self.ids.insert(s, sym);
        Some(sym)
    }

    fn str(&self, sym: u32) -> &str {
        self.strs.get(sym as usize).map_or("", |s| s)
    }
}

/// Series known to the store.
#[derive(Debug, Default)]
pub(crate) struct SeriesIndex {
    symbols: Symbols,
    /// Every series' (name, value) symbol pairs in label order, series
    /// after series.
    arena: Vec<[u32; 2]>,
    /// Per id: where its pairs start in `arena`.
    starts: Vec<u64>,
    /// Per id: how many pairs it has, or [`ABSENT`].
    lens: Vec<u16>,
    /// Keyed hash of a label set → its id; label sets whose hash is taken
    /// already go to `collisions`.
    by_hash: FastMap<u64, u64>,
    collisions: FastMap<u64, Vec<u64>>,
    /// name symbol → value symbol → ids, ascending.
    postings: FastMap<u32, FastMap<u32, Vec<u64>>>,
    hasher: FastState,
    len: usize,
    next_id: u64,
}

impl SeriesIndex {
    fn hash(&self, labels: &Labels) -> u64 {
        let mut h = self.hasher.build_hasher();
        for (name, value) in labels.pairs() {
            h.write(name.as_bytes());
            h.write_u8(0xff);
            h.write(value.as_bytes());
            h.write_u8(0xff);
        }
        h.finish()
    }

    /// The symbol pairs of `id`, if it is known.
    fn pairs(&self, id: u64) -> Option<&[[u32; 2]]> {
        let i = usize::try_from(id).ok()?;
        let len = *self.lens.get(i)?;
        if len == ABSENT {
            return None;
        }
        let start = usize::try_from(*self.starts.get(i)?).ok()?;
        self.arena.get(start..start + usize::from(len))
    }

    fn same(&self, id: u64, labels: &Labels) -> bool {
        self.pairs(id).is_some_and(|pairs| {
            pairs.len() == labels.pairs().len()
                && pairs
                    .iter()
                    .zip(labels.pairs())
                    .all(|([n, v], (name, value))| self.symbols.str(*n) == name && self.symbols.str(*v) == value)
        })
    }

    /// Id of a known label set.
    pub(crate) fn id_of(&self, labels: &Labels) -> Option<u64> {
        let h = self.hash(labels);
        let first = self.by_hash.get(&h).copied().filter(|&id| self.same(id, labels));
        first.or_else(|| {
            self.collisions
                .get(&h)
                .and_then(|ids| ids.iter().copied().find(|&id| self.same(id, labels)))
        })
    }

    /// Whether `id` names a known series.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.pairs(id).is_some()
    }

    /// Labels of a known id (built on each call).
    pub(crate) fn labels_of(&self, id: u64) -> Option<Labels> {
        let pairs = self.pairs(id)?;
        Some(Labels::new(
            pairs
                .iter()
                .map(|[n, v]| (self.symbols.str(*n).to_owned(), self.symbols.str(*v).to_owned()))
                .collect(),
        ))
    }

    /// Value of label `name` of a known id ("" when the series lacks it).
    pub(crate) fn value_of(&self, id: u64, name: &str) -> Option<&str> {
        let pairs = self.pairs(id)?;
        let Some(sym) = self.symbols.get(name) else {
            return Some("");
        };
        Some(
            pairs
                .iter()
                .find(|p| p[0] == sym)
                .map_or("", |p| self.symbols.str(p[1])),
        )
    }

    /// The id the next new series gets. Ids are never reused.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Adds a series. Returns false (and changes nothing) when the id or the
    /// label set is already present, or the id is implausibly far past the
    /// known ones — on load, damaged or duplicate records.
    pub(crate) fn insert(&mut self, id: u64, labels: &Labels) -> bool {
        if self.contains(id) || id > self.next_id.saturating_add(MAX_ID_GAP) || self.id_of(labels).is_some() {
            return false;
        }
        let (Ok(i), Ok(len)) = (usize::try_from(id), u16::try_from(labels.pairs().len())) else {
            return false;
        };
        if len == ABSENT {
            return false;
        }
        let mut pairs = Vec::with_capacity(labels.pairs().len());
        for (name, value) in labels.pairs() {
            let (Some(n), Some(v)) = (self.symbols.intern(name), self.symbols.intern(value)) else {
                return false;
            };
            pairs.push([n, v]);
        }
        let h = self.hash(labels);
        if self.lens.len() <= i {
            self.lens.resize(i + 1, ABSENT);
            self.starts.resize(i + 1, 0);
        }
        self.lens[i] = len;
        self.starts[i] = self.arena.len() as u64;
        self.arena.extend_from_slice(&pairs);
        for [n, v] in pairs {
            let ids = self.postings.entry(n).or_default().entry(v).or_default();
            // Ids arrive ascending (allocation order, and the load scans by
            // id); anything else is placed in order.
            match ids.last() {
                Some(&last) if last > id => {
                    let at = ids.partition_point(|&x| x < id);
                    ids.insert(at, id);
                }
                _ => ids.push(id),
            }
        }
        match self.by_hash.entry(h) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(id);
            }
            std::collections::hash_map::Entry::Occupied(_) => self.collisions.entry(h).or_default().push(id),
        }
        self.len += 1;
        self.next_id = self.next_id.max(id.saturating_add(1));
        true
    }

    /// Number of series.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Approximate heap bytes held, for the RAM-per-series gauge.
    pub(crate) fn heap_bytes(&self) -> usize {
        let symbols: usize = self.symbols.strs.iter().map(|s| s.len() + 16 + 8 + 4 + 8).sum();
        let postings: usize = self
            .postings
            .values()
            .map(|values| {
                values
                    .values()
                    .map(|ids| ids.capacity() * 8 + 24 + 4 + 8)
                    .sum::<usize>()
                    + 48
            })
            .sum();
        symbols
            + self.arena.capacity() * 8
            + self.starts.capacity() * 8
            + self.lens.capacity() * 2
            + self.by_hash.capacity() * 17
            + self
                .collisions
                .values()
                .map(|ids| ids.capacity() * 8 + 41)
                .sum::<usize>()
            + postings
    }

    /// Every label name in use, sorted.
    pub(crate) fn label_names(&self) -> Vec<String> {
        let mut out: Vec<String> = self.postings.keys().map(|n| self.symbols.str(*n).to_owned()).collect();
        out.sort_unstable();
        out
    }

    /// Every value of one label, sorted.
    pub(crate) fn label_values(&self, name: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .symbols
            .get(name)
            .and_then(|n| self.postings.get(&n))
            .map(|values| values.keys().map(|v| self.symbols.str(*v).to_owned()).collect())
            .unwrap_or_default();
        out.sort_unstable();
        out
    }

    /// Whether series `pairs` passes every matcher; `names` holds each
    /// matcher's name symbol (`None`: no series has that label).
    fn passes(&self, pairs: &[[u32; 2]], matchers: &[Matcher], names: &[Option<u32>]) -> bool {
        matchers.iter().zip(names).all(|(m, name)| {
            let value = name
                .and_then(|n| pairs.iter().find(|p| p[0] == n))
                .map_or("", |p| self.symbols.str(p[1]));
            m.matches(value)
        })
    }

    /// Series accepted by every matcher, in label order. Matchers that reject
    /// the empty string can only accept series carrying the label, so their
    /// postings narrow the candidates; the rest are checked per candidate.
    pub(crate) fn matching(&self, matchers: &[Matcher]) -> Vec<(u64, Labels)> {
        let names: Vec<Option<u32>> = matchers.iter().map(|m| self.symbols.get(&m.name)).collect();
        let mut candidates: Option<Vec<u64>> = None;
        for (m, name) in matchers.iter().zip(&names).filter(|(m, _)| !m.matches_empty()) {
            let mut ids = Vec::new();
            if let Some(values) = name.and_then(|n| self.postings.get(&n)) {
                let mut lists = 0;
                for (value, posting) in values {
                    if m.matches(self.symbols.str(*value)) {
                        ids.extend_from_slice(posting);
                        lists += 1;
                    }
                }
                if lists > 1 {
                    ids.sort_unstable();
                }
            }
            candidates = Some(match candidates {
                None => ids,
                Some(prev) => intersect(&prev, &ids),
            });
            if candidates.as_ref().is_some_and(Vec::is_empty) {
                return Vec::new();
            }
        }
        let keep = |id: u64| {
            self.pairs(id)
                .filter(|pairs| self.passes(pairs, matchers, &names))
                .and_then(|_| self.labels_of(id))
                .map(|l| (id, l))
        };
        let mut out: Vec<(u64, Labels)> = match candidates {
            Some(ids) => ids.into_iter().filter_map(keep).collect(),
            None => (0..self.lens.len() as u64).filter_map(keep).collect(),
        };
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }
}

/// Ids in both ascending lists.
fn intersect(a: &[u64], b: &[u64]) -> Vec<u64> {
    let (mut i, mut j, mut out) = (0, 0, Vec::with_capacity(a.len().min(b.len())));
    while let (Some(&x), Some(&y)) = (a.get(i), b.get(j)) {
        match x.cmp(&y) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(x);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs)
    }

    #[test]
    fn postings_narrow_and_matchers_decide() {
        let mut idx = SeriesIndex::default();
        assert!(idx.insert(0, &labels(&[("__name__", "up"), ("instance", "a")])));
        assert!(idx.insert(5, &labels(&[("__name__", "up"), ("instance", "b"), ("x", "1")])));
        assert!(!idx.insert(5, &labels(&[("__name__", "other")])), "id reused");
        assert!(
            !idx.insert(9, &labels(&[("__name__", "up"), ("instance", "a")])),
            "labels reused"
        );
        assert_eq!(idx.next_id(), 6);
        assert_eq!(idx.len(), 2);

        let ids = |ms: &[Matcher]| idx.matching(ms).into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!(ids(&[Matcher::equal("__name__", "up")]), vec![0, 5]);
        assert_eq!(ids(&[Matcher::equal("x", "")]), vec![0]);
        assert_eq!(
            ids(&[Matcher::regex("instance", "a|b").unwrap(), Matcher::not_equal("x", "1")]),
            vec![0]
        );
        assert_eq!(ids(&[Matcher::equal("nope", "1")]), Vec::<u64>::new());
        assert_eq!(ids(&[]), vec![0, 5]);
        assert_eq!(idx.label_names(), vec!["__name__", "instance", "x"]);
        assert_eq!(idx.label_values("instance"), vec!["a", "b"]);
        assert!(idx.label_values("nope").is_empty());
    }

    #[test]
    fn labels_round_trip_through_symbols() {
        let mut idx = SeriesIndex::default();
        let a = labels(&[("__name__", "m"), ("instance", "h1"), ("sensor", "temp1")]);
        let b = labels(&[("__name__", "m"), ("instance", "h1"), ("sensor", "temp2")]);
        assert!(idx.insert(0, &a));
        assert!(idx.insert(1, &b));
        assert_eq!(idx.labels_of(0), Some(a.clone()));
        assert_eq!(idx.labels_of(1), Some(b.clone()));
        assert_eq!(idx.labels_of(2), None);
        assert_eq!(idx.id_of(&a), Some(0));
        assert_eq!(idx.id_of(&b), Some(1));
        assert_eq!(idx.id_of(&labels(&[("__name__", "m")])), None);
        assert_eq!(idx.value_of(1, "sensor"), Some("temp2"));
        assert_eq!(idx.value_of(1, "chip"), Some(""));
        assert_eq!(idx.value_of(7, "sensor"), None);
        assert!(idx.contains(1) && !idx.contains(2));
        // The matched series come out sorted by labels whatever their ids.
        assert!(idx.insert(2, &labels(&[("__name__", "a")])));
        let got: Vec<u64> = idx.matching(&[]).into_iter().map(|(id, _)| id).collect();
        assert_eq!(got, vec![2, 0, 1]);
        assert!(idx.heap_bytes() > 0);
    }

    #[test]
    fn damaged_ids_are_refused_not_allocated() {
        let mut idx = SeriesIndex::default();
        assert!(!idx.insert(u64::MAX / 2, &labels(&[("__name__", "m")])));
        assert!(idx.insert(3, &labels(&[("__name__", "m")])), "small gaps are fine");
        assert!(!idx.contains(0));
        assert_eq!(idx.matching(&[]).len(), 1);
        // Out-of-order ids still leave the postings sorted.
        assert!(idx.insert(1, &labels(&[("__name__", "m"), ("x", "1")])));
        let ids: Vec<u64> = idx
            .matching(&[Matcher::equal("__name__", "m"), Matcher::not_equal("y", "2")])
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, vec![3, 1]);
        assert_eq!(intersect(&[1, 3, 5, 7], &[3, 4, 7, 9]), vec![3, 7]);
    }

    #[test]
    fn hash_collisions_are_told_apart() {
        let mut idx = SeriesIndex::default();
        let a = labels(&[("__name__", "a")]);
        let b = labels(&[("__name__", "b")]);
        assert!(idx.insert(0, &a));
        // b's hash slot is taken by a, as it would be after a collision.
        let hb = idx.hash(&b);
        idx.by_hash.insert(hb, 0);
        assert_eq!(idx.id_of(&b), None);
        assert!(idx.insert(1, &b));
        assert_eq!(idx.id_of(&a), Some(0));
        assert_eq!(idx.id_of(&b), Some(1));
        assert!(!idx.insert(2, &b), "a colliding label set is still found");
    }
}
