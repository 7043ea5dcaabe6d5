//! The in-memory series index: label set ↔ series id, plus postings (label
//! pair → ids) so that selecting by `instance="x"` or a metric name does not
//! test every series. It is rebuilt from the `s` records at open and grows
//! only after the writer's batch holding the new definitions was applied, so
//! it never names a series the database does not have.

use std::collections::{BTreeMap, BTreeSet};

use super::fasthash::FastMap;
use crate::model::{Labels, Matcher};

/// Series known to the store.
#[derive(Debug, Default)]
pub(crate) struct SeriesIndex {
    by_labels: FastMap<Labels, u64>,
    by_id: BTreeMap<u64, Labels>,
    /// label name → label value → ids. BTreeMaps so names and values come
    /// out sorted for the label APIs.
    postings: BTreeMap<String, BTreeMap<String, BTreeSet<u64>>>,
    next_id: u64,
}

impl SeriesIndex {
    /// Id of a known label set.
    pub(crate) fn id_of(&self, labels: &Labels) -> Option<u64> {
        self.by_labels.get(labels).copied()
    }

    /// Labels of a known id.
    pub(crate) fn labels_of(&self, id: u64) -> Option<&Labels> {
        self.by_id.get(&id)
    }

    /// The id the next new series gets. Ids are never reused.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Adds a series. Returns false (and changes nothing) when the id or the
    /// label set is already present, which on load means duplicate records.
    pub(crate) fn insert(&mut self, id: u64, labels: Labels) -> bool {
        if self.by_id.contains_key(&id) || self.by_labels.contains_key(&labels) {
            return false;
        }
        for (name, value) in labels.pairs() {
            self.postings
                .entry(name.clone())
                .or_default()
                .entry(value.clone())
                .or_default()
                .insert(id);
        }
        self.by_labels.insert(labels.clone(), id);
        self.by_id.insert(id, labels);
        self.next_id = self.next_id.max(id.saturating_add(1));
        true
    }

    /// Number of series.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every label name in use, sorted.
    pub(crate) fn label_names(&self) -> Vec<String> {
        self.postings.keys().cloned().collect()
    }

    /// Every value of one label, sorted.
    pub(crate) fn label_values(&self, name: &str) -> Vec<String> {
        self.postings
            .get(name)
            .map(|values| values.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Series accepted by every matcher, in label order. Matchers that reject
    /// the empty string can only accept series carrying the label, so their
    /// postings narrow the candidates; the rest are checked per candidate.
    pub(crate) fn matching(&self, matchers: &[Matcher]) -> Vec<(u64, Labels)> {
        let mut candidates: Option<BTreeSet<u64>> = None;
        for m in matchers.iter().filter(|m| !m.matches_empty()) {
            let mut ids = BTreeSet::new();
            if let Some(values) = self.postings.get(&m.name) {
                for (value, posting) in values {
                    if m.matches(value) {
                        ids.extend(posting.iter().copied());
                    }
                }
            }
            candidates = Some(match candidates {
                None => ids,
                Some(prev) => prev.intersection(&ids).copied().collect(),
            });
        }
        let mut out: Vec<(u64, Labels)> = match candidates {
            Some(ids) => ids
                .into_iter()
                .filter_map(|id| self.by_id.get(&id).map(|l| (id, l)))
                .filter(|(_, l)| l.matches(matchers))
                .map(|(id, l)| (id, l.clone()))
                .collect(),
            None => self
                .by_id
                .iter()
                .filter(|(_, l)| l.matches(matchers))
                .map(|(id, l)| (*id, l.clone()))
                .collect(),
        };
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }
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
        assert!(idx.insert(0, labels(&[("__name__", "up"), ("instance", "a")])));
        assert!(idx.insert(5, labels(&[("__name__", "up"), ("instance", "b"), ("x", "1")])));
        assert!(!idx.insert(5, labels(&[("__name__", "other")])), "id reused");
        assert!(
            !idx.insert(9, labels(&[("__name__", "up"), ("instance", "a")])),
            "labels reused"
        );
        assert_eq!(idx.next_id(), 6);

        let ids = |ms: &[Matcher]| idx.matching(ms).into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!(ids(&[Matcher::equal("__name__", "up")]), vec![0, 5]);
        assert_eq!(ids(&[Matcher::equal("x", "")]), vec![0]);
        assert_eq!(
            ids(&[Matcher::regex("instance", "a|b").unwrap(), Matcher::not_equal("x", "1")]),
            vec![0]
        );
        assert_eq!(ids(&[]), vec![0, 5]);
        assert_eq!(idx.label_names(), vec!["__name__", "instance", "x"]);
        assert_eq!(idx.label_values("instance"), vec!["a", "b"]);
        assert!(idx.label_values("nope").is_empty());
    }
}
