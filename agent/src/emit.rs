//! `Emitter`: where sources put the samples of one cycle. Sources name the
//! metric, its type and help once per call; the sampler stamps the cycle's
//! single timestamp and hands the result to the exposition printer or the
//! stream.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasherDefault;
use std::ops::Deref;
use std::sync::Arc;

use crate::series_text::SourceSeries;
use crate::sources::files::Fnv;

/// Prometheus metric type, as printed on `# TYPE` lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    /// A monotonically increasing value (resets only on restart).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// An untyped value (node_exporter uses it for a few metrics).
    Untyped,
}

impl MetricType {
    /// The word on a `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Untyped => "untyped",
        }
    }
}

/// An immutable, cheaply cloned string: a metric name, label name, label
/// value or help text. The emitter hands out the same `Atom` for the same
/// text cycle after cycle, so a steady-state cycle allocates no strings.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Atom(Arc<str>);

impl Atom {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether both are the same allocation (equal text, compared without
    /// looking at the bytes).
    pub(crate) fn same(&self, other: &Atom) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The address of the text: an identity while this `Atom` lives.
    pub(crate) fn addr(&self) -> usize {
        self.0.as_ptr() as usize
    }
}

impl Deref for Atom {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Atom {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Atom {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Atom {
    fn from(s: &str) -> Self {
        Atom(Arc::from(s))
    }
}

impl From<String> for Atom {
    fn from(s: String) -> Self {
        Atom(Arc::from(s))
    }
}

impl PartialEq<str> for Atom {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Atom {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for Atom {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

/// The labels of one series, sorted by name; shared between cycles.
pub type Labels = Arc<[(Atom, Atom)]>;

/// Labels of a series without labels.
pub fn no_labels() -> Labels {
    Arc::from(Vec::new())
}

/// Builds a label set from owned pairs (tests, and the few series built
/// outside an [`Emitter`]); the caller keeps them sorted by name.
pub fn labels_from<K: Into<Atom>, V: Into<Atom>>(pairs: Vec<(K, V)>) -> Labels {
    pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect()
}

/// Help text and type of one metric name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricMeta {
    /// Type of the metric.
    pub kind: MetricType,
    /// One-line help text.
    pub help: Atom,
}

/// One sampled value of one series (the cycle's timestamp is kept apart).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: Atom,
    /// Labels other than `instance`/`job`, sorted by name.
    pub labels: Labels,
    /// The value.
    pub value: f64,
}

/// Table entries past which a thread's intern table is swept of entries no
/// live sample uses (series whose label values change, e.g. kernel log
/// devices, would otherwise grow it forever).
const SWEEP_FLOOR: usize = 4096;

type FnvMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

/// Per-thread intern table: strings, and whole series (name plus sorted
/// labels) keyed by a hash of their text. Per thread because sources run
/// on the sampler's thread (plus a few workers), so lookups take no lock.
#[derive(Default)]
struct Interner {
    strings: HashSet<Atom, BuildHasherDefault<Fnv>>,
    series: FnvMap<u64, Bucket>,
    series_count: usize,
    sweep_at: usize,
}

impl Interner {
    fn atom(&mut self, text: &str) -> Atom {
        if let Some(atom) = self.strings.get(text) {
            return atom.clone();
        }
        let atom = Atom::from(text);
        self.strings.insert(atom.clone());
        atom
    }

    /// The shared name and label set of a series; `labels` sorted by name.
    fn series(&mut self, name: &str, labels: &[(&str, &str)]) -> (Atom, Labels) {
        let mut key = mix(0, name.as_bytes());
        for (k, v) in labels {
            key = mix(key, k.as_bytes());
            key = mix(key, v.as_bytes());
        }
        if let Some(bucket) = self.series.get(&key) {
            for (n, l) in bucket.entries() {
                if *n == *name
                    && l.len() == labels.len()
                    && l.iter().zip(labels).all(|((lk, lv), (k, v))| *lk == **k && *lv == **v)
                {
                    return (n.clone(), l.clone());
                }
            }
        }
        if self.series_count >= self.sweep_at.max(SWEEP_FLOOR) {
            self.sweep();
        }
        let n = self.atom(name);
        let l: Labels = labels.iter().map(|(k, v)| (self.atom(k), self.atom(v))).collect();
        match self.series.entry(key) {
            Entry::Occupied(mut bucket) => bucket.get_mut().push((n.clone(), l.clone())),
            Entry::Vacant(slot) => {
                slot.insert(Bucket::One((n.clone(), l.clone())));
            }
        }
        self.series_count += 1;
        (n, l)
    }

    /// Drops entries that only this table still holds, and sets the next
    /// sweep at twice what is left.
    fn sweep(&mut self) {
        self.series.retain(|_, bucket| bucket.retain_used());
        self.series_count = self.series.values().map(|b| b.entries().len()).sum();
        self.strings.retain(|a| Arc::strong_count(&a.0) > 1);
        self.sweep_at = self.series_count * 2;
    }
}

/// The series whose text hashes to one key: almost always one, kept in the
/// table's slot itself. A cycle looks up every series once, after a second
/// or more of idling with cold caches, and a separate allocation per slot
/// was one more cache miss per sample.
enum Bucket {
    One((Atom, Labels)),
    Many(Vec<(Atom, Labels)>),
}

impl Bucket {
    fn entries(&self) -> &[(Atom, Labels)] {
        match self {
            Bucket::One(entry) => std::slice::from_ref(entry),
            Bucket::Many(entries) => entries,
        }
    }

    fn push(&mut self, entry: (Atom, Labels)) {
        match self {
            Bucket::One(first) => *self = Bucket::Many(vec![first.clone(), entry]),
            Bucket::Many(entries) => entries.push(entry),
        }
    }

    /// Keeps the entries a live sample still uses; whether any is left.
    fn retain_used(&mut self) -> bool {
        match self {
            Bucket::One((_, l)) => Arc::strong_count(l) > 1,
            Bucket::Many(entries) => {
                entries.retain(|(_, l)| Arc::strong_count(l) > 1);
                !entries.is_empty()
            }
        }
    }
}

/// Hashes `bytes` into `h` eight bytes at a time (the series key hash runs
/// for every sample; FNV's byte loop showed up in profiles). The length is
/// mixed in so `("ab", "c")` and `("a", "bc")` differ.
fn mix(mut h: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut step = |word: u64| h = (h.rotate_left(5) ^ word).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        step(u64::from_le_bytes(word));
    }
    let rest = chunks.remainder();
    let mut word = [0u8; 8];
    word[..rest.len()].copy_from_slice(rest);
    step(u64::from_le_bytes(word));
    step(bytes.len() as u64);
    h
}

thread_local! {
    static INTERNER: RefCell<Interner> = RefCell::new(Interner::default());
}

/// Label pairs up to this many are sorted on the stack.
const INLINE_LABELS: usize = 8;

/// A hardware-related kernel log line, sent with the cycle's batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelEvent {
    /// When the kernel logged it, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Classification, e.g. `mce`, `nvme_timeout`, `medium_error`.
    pub kind: String,
    /// Device the line names (`nvme0`, `sda`), empty if none.
    pub device: String,
    /// The line as the kernel wrote it.
    pub message: String,
}

/// Collects the samples (and kernel events) of one cycle.
#[derive(Debug, Default)]
pub struct Emitter {
    samples: Vec<Sample>,
    meta: BTreeMap<Atom, MetricMeta>,
    events: Vec<KernelEvent>,
    /// Addresses of interned names already in `meta` (kept alive by it), so
    /// the per-sample check is one integer lookup, not a map of strings.
    meta_seen: HashSet<usize, BuildHasherDefault<Fnv>>,
    /// Set on the exposition path (`serve`): samples go to the source's
    /// pre-rendered series instead of `samples` (see [`crate::series_text`]).
    series: Option<SourceSeries>,
}

impl Emitter {
    /// An empty emitter.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty emitter with room for `samples` samples without growing
    /// (the sampler passes what the source emitted last cycle).
    pub fn with_capacity(samples: usize) -> Self {
        Emitter {
            samples: Vec::with_capacity(samples),
            ..Self::default()
        }
    }

    /// An emitter that records into a source's pre-rendered series (the
    /// exposition path); [`samples`](Self::samples) then stays empty.
    pub fn with_series(series: SourceSeries) -> Self {
        Emitter {
            series: Some(series),
            ..Self::default()
        }
    }

    /// Takes the pre-rendered series back out (`None` for an ordinary
    /// emitter).
    pub fn take_series(&mut self) -> Option<SourceSeries> {
        self.series.take()
    }

    /// Records a gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.push(name, MetricType::Gauge, help, labels, value);
    }

    /// Records a counter sample.
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.push(name, MetricType::Counter, help, labels, value);
    }

    /// Records a sample of the given type. Labels are sorted by name here, so
    /// sources may pass them in any order.
    pub fn push(&mut self, name: &str, kind: MetricType, help: &str, labels: &[(&str, &str)], value: f64) {
        if let Some(series) = &mut self.series {
            series.push(name, kind, help, labels, value);
            return;
        }
        let mut inline = [("", ""); INLINE_LABELS];
        let mut spill = Vec::new();
        let sorted: &mut [(&str, &str)] = if labels.len() <= INLINE_LABELS {
            inline[..labels.len()].copy_from_slice(labels);
            &mut inline[..labels.len()]
        } else {
            spill.extend_from_slice(labels);
            &mut spill
        };
        sorted.sort_unstable();
        let (name_atom, labels) = INTERNER.with(|t| {
            let mut t = t.borrow_mut();
            let (n, l) = t.series(name, sorted);
            if self.meta_seen.insert(n.addr()) && !self.meta.contains_key(name) {
                let help = t.atom(help);
                self.meta.insert(n.clone(), MetricMeta { kind, help });
            }
            (n, l)
        });
        self.samples.push(Sample {
            name: name_atom,
            labels,
            value,
        });
    }

    /// Records a kernel event to send with this cycle.
    pub fn event(&mut self, event: KernelEvent) {
        self.events.push(event);
    }

    /// Kernel events recorded so far.
    pub fn events(&self) -> &[KernelEvent] {
        &self.events
    }

    /// Moves the kernel events out.
    pub fn take_events(&mut self) -> Vec<KernelEvent> {
        std::mem::take(&mut self.events)
    }

    /// Samples recorded so far, in emission order.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Type and help of every metric name recorded so far.
    pub fn meta(&self) -> &BTreeMap<Atom, MetricMeta> {
        &self.meta
    }

    /// Moves everything out, leaving the emitter empty.
    pub fn take(&mut self) -> (Vec<Sample>, BTreeMap<Atom, MetricMeta>) {
        self.meta_seen.clear();
        (std::mem::take(&mut self.samples), std::mem::take(&mut self.meta))
    }

    /// Appends everything from `other`.
    pub fn extend(&mut self, other: Emitter) {
        for (name, meta) in other.meta {
            self.meta.entry(name).or_insert(meta);
        }
        self.samples.extend(other.samples);
        self.events.extend(other.events);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sorted_and_meta_kept_once() {
        let mut out = Emitter::new();
        out.gauge("node_x", "first help", &[("z", "1"), ("a", "2")], 1.0);
        out.counter("node_x", "ignored help", &[], 2.0);
        assert_eq!(
            &*out.samples()[0].labels,
            &[("a".into(), "2".into()), ("z".into(), "1".into())]
        );
        assert_eq!(
            out.meta()["node_x"],
            MetricMeta {
                kind: MetricType::Gauge,
                help: "first help".into()
            }
        );
    }

    #[test]
    fn series_are_shared_across_cycles_and_orders() {
        let mut first = Emitter::new();
        first.gauge("node_y", "h", &[("b", "2"), ("a", "1")], 1.0);
        let mut second = Emitter::new();
        second.gauge("node_y", "h", &[("a", "1"), ("b", "2")], 2.0);
        second.gauge("node_y", "h", &[("a", "1"), ("b", "3")], 3.0);
        let (a, b, c) = (&first.samples()[0], &second.samples()[0], &second.samples()[1]);
        assert!(Arc::ptr_eq(&a.labels, &b.labels));
        assert!(a.name.same(&b.name));
        assert!(!Arc::ptr_eq(&b.labels, &c.labels));
        assert_eq!(&*c.labels, &[("a".into(), "1".into()), ("b".into(), "3".into())]);
    }

    #[test]
    fn meta_is_recorded_again_after_take() {
        let mut out = Emitter::new();
        out.gauge("node_w", "w help", &[], 1.0);
        let (_, meta) = out.take();
        assert!(meta.contains_key("node_w"));
        out.gauge("node_w", "w help", &[], 2.0);
        assert_eq!(out.meta()["node_w"].help, "w help");
    }

    #[test]
    fn hash_separates_label_boundaries() {
        let a = mix(mix(0, b"ab"), b"c");
        let b = mix(mix(0, b"a"), b"bc");
        assert_ne!(a, b);
        assert_ne!(mix(0, b""), mix(0, b"\0"));
    }

    #[test]
    fn sweep_drops_only_unused_series() {
        let mut table = Interner::default();
        let kept = table.series("m", &[("k", "kept")]);
        drop(table.series("m", &[("k", "gone")]));
        table.sweep();
        assert_eq!(table.series_count, 1);
        let again = table.series("m", &[("k", "kept")]);
        assert!(Arc::ptr_eq(&kept.1, &again.1));
        assert_eq!(table.series_count, 1);
        assert!(!table.strings.contains("gone"));
    }

    #[test]
    fn a_shared_bucket_keeps_both_series_and_sweeps_each() {
        let mut bucket = Bucket::One(("a".into(), labels_from(vec![("k", "1")])));
        let kept = labels_from(vec![("k", "2")]);
        bucket.push(("b".into(), kept.clone()));
        assert_eq!(bucket.entries().len(), 2);
        assert_eq!(bucket.entries()[0].0, "a");
        assert!(bucket.retain_used());
        assert_eq!(bucket.entries().len(), 1);
        assert!(Arc::ptr_eq(&bucket.entries()[0].1, &kept));
        drop(kept);
        assert!(!bucket.retain_used());
        assert!(!Bucket::One(("c".into(), no_labels())).retain_used());
    }

    #[test]
    fn many_labels_are_sorted_too() {
        let pairs: Vec<(String, String)> = (0..12).rev().map(|i| (format!("l{i:02}"), i.to_string())).collect();
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut out = Emitter::new();
        out.gauge("node_z", "h", &refs, 0.0);
        let names: Vec<&str> = out.samples()[0].labels.iter().map(|(k, _)| k.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        assert_eq!(names.len(), 12);
    }
}
