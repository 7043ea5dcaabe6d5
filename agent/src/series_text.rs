//! Pre-rendered series for the exposition path (`serve`'s `/metrics`): each
//! series' `name{labels} ` text is rendered once, when the series first
//! appears, and a scrape only formats values into one reused buffer.
//!
//! Sources emit the same series in the same order every cycle, so each
//! source gets a [`SourceSeries`]: the keys it emitted last cycle, position
//! by position, packed into one byte arena. A steady-state `push` compares
//! the incoming name and labels with the key at the same position (a
//! sequential read the hardware prefetches, instead of a hash-table probe
//! and a pointer chase per label after a second of idling with cold caches)
//! and records only the value. A key that differs (a new device, a changed
//! order) truncates the source's cache at that position; the rest of the
//! cycle is recorded as new series, which the sampler resolves against the
//! one [`SeriesTexts`] table on its own thread after the collection.
//!
//! [`SeriesTexts`] keeps every series' text in exposition order (names
//! sorted, then label sets, as `exposition::render` sorts them), re-sorted
//! only when a series was added, plus one `# HELP`/`# TYPE` header per name.
//! Output is the same text `exposition::render` prints for the same samples:
//! duplicates within a cycle keep the first value in registry order, and a
//! name's help and type come from the first series that defined it.
//!
//! The streaming path (`Sampler::sample`, batches to a collector) does not
//! use this module; it keeps [`crate::emit::Sample`]s.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault};

use crate::emit::MetricType;
use crate::exposition::{push_escaped_help, push_escaped_label_value, write_float};
use crate::sources::files::Fnv;

/// Ends a metric name in a packed key; never part of a `str`.
const NAME_END: u8 = 0xFF;
/// Separates a label's name from its value in a packed key.
const LABEL_EQ: u8 = 0xFE;
/// Marks a position whose series the sampler has not resolved yet.
const UNRESOLVED: u32 = u32::MAX;

/// A position of a source's emission whose key was not cached, waiting for
/// [`SeriesTexts::absorb`] to give it an id.
#[derive(Debug)]
struct NewSeries {
    pos: usize,
    kind: MetricType,
    /// The help text's range in [`SourceSeries::help`].
    help: std::ops::Range<usize>,
}

/// One source's series in emission order, and this cycle's values.
#[derive(Debug, Default)]
pub struct SourceSeries {
    /// Packed keys (`name 0xFF (label 0xFE value 0xFF)*`, labels as the
    /// source passed them), one after another in emission order.
    keys: Vec<u8>,
    /// End of each position's key in `keys`.
    ends: Vec<usize>,
    /// Series id of each position in [`SeriesTexts`], or [`UNRESOLVED`].
    ids: Vec<u32>,
    /// Values of this cycle, one per position emitted so far.
    values: Vec<f64>,
    /// Positions emitted this cycle whose key was not cached.
    fresh: Vec<NewSeries>,
    /// Help texts of `fresh`, one after another.
    help: String,
}

impl SourceSeries {
    /// Positions emitted this cycle.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether nothing was emitted this cycle.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Forgets every cached key (after the table's ids were renumbered).
    fn forget(&mut self) {
        self.keys.clear();
        self.ends.clear();
        self.ids.clear();
    }

    /// Starts a new cycle, keeping the cached keys.
    fn begin(&mut self) {
        self.values.clear();
        self.fresh.clear();
        self.help.clear();
    }

    /// The packed key of position `pos`.
    fn key(&self, pos: usize) -> &[u8] {
        let start = if pos == 0 { 0 } else { self.ends[pos - 1] };
        &self.keys[start..self.ends[pos]]
    }

    /// Records one sample; `labels` in any order.
    pub fn push(&mut self, name: &str, kind: MetricType, help: &str, labels: &[(&str, &str)], value: f64) {
        let pos = self.values.len();
        let start = if pos == 0 { 0 } else { self.ends[pos - 1] };
        if let Some(&end) = self.ends.get(pos)
            && key_matches(&self.keys[start..end], name, labels)
        {
            self.values.push(value);
            return;
        }
        // Not what this position held last cycle: everything cached from
        // here on is stale for this cycle's order.
        self.keys.truncate(start);
        self.ends.truncate(pos);
        self.ids.truncate(pos);
        self.keys.extend_from_slice(name.as_bytes());
        self.keys.push(NAME_END);
        for (k, v) in labels {
            self.keys.extend_from_slice(k.as_bytes());
            self.keys.push(LABEL_EQ);
            self.keys.extend_from_slice(v.as_bytes());
            self.keys.push(NAME_END);
        }
        self.ends.push(self.keys.len());
        self.ids.push(UNRESOLVED);
        let help_start = self.help.len();
        self.help.push_str(help);
        self.fresh.push(NewSeries {
            pos,
            kind,
            help: help_start..self.help.len(),
        });
        self.values.push(value);
    }
}

/// Whether `key` is the packed form of `name` and `labels` (in this order).
fn key_matches(key: &[u8], name: &str, labels: &[(&str, &str)]) -> bool {
    let expected = name.len() + 1 + labels.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>();
    if key.len() != expected {
        return false;
    }
    let (head, mut rest) = key.split_at(name.len());
    if !same_bytes(head, name.as_bytes()) || rest[0] != NAME_END {
        return false;
    }
    rest = &rest[1..];
    for (k, v) in labels {
        let (lk, r) = rest.split_at(k.len());
        if !same_bytes(lk, k.as_bytes()) || r[0] != LABEL_EQ {
            return false;
        }
        let (lv, r) = r[1..].split_at(v.len());
        if !same_bytes(lv, v.as_bytes()) || r[0] != NAME_END {
            return false;
        }
        rest = &r[1..];
    }
    true
}

/// Slice equality eight bytes at a time, inline: names and label values
/// are short, and a library `memcmp` call per piece (four or five per
/// sample) cost more than the comparison.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |bytes: &[u8]| {
        let mut w = [0u8; 8];
        w[..bytes.len()].copy_from_slice(bytes);
        u64::from_le_bytes(w)
    };
    let (mut a_words, mut b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut a_words).zip(&mut b_words) {
        if word(x) != word(y) {
            return false;
        }
    }
    word(a_words.remainder()) == word(b_words.remainder())
}

/// The name of a packed key and its label pairs, in key order.
fn unpack(key: &[u8]) -> (&[u8], impl Iterator<Item = (&[u8], &[u8])>) {
    let name_end = key.iter().position(|&b| b == NAME_END).unwrap_or(key.len());
    let mut rest = key.get(name_end + 1..).unwrap_or_default();
    let pairs = std::iter::from_fn(move || {
        let eq = rest.iter().position(|&b| b == LABEL_EQ)?;
        let end = rest.iter().position(|&b| b == NAME_END)?;
        let pair = (rest.get(..eq)?, rest.get(eq + 1..end)?);
        rest = rest.get(end + 1..).unwrap_or_default();
        Some(pair)
    });
    (&key[..name_end], pairs)
}

/// Text of bytes that came from a `&str` (cut only next to separator bytes
/// that never occur in UTF-8, so still UTF-8).
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// Table entries past which series absent from the last cycle are dropped
/// (series whose label values change would otherwise grow it forever).
const SWEEP_FLOOR: usize = 4096;

type FnvMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

/// Every series the sampler has seen on the exposition path, with its text
/// pre-rendered in exposition order, and the values of the current cycle.
#[derive(Debug, Default)]
pub struct SeriesTexts {
    /// Canonical keys (name and labels sorted by name, packed) by series id,
    /// one after another, and the end of each.
    keys: Vec<u8>,
    key_ends: Vec<usize>,
    /// Name id of each series.
    series_name: Vec<u32>,
    /// Hash of a canonical key to the newest series with that hash, and
    /// from each series to the previous one with the same hash.
    index: FnvMap<u64, u32>,
    chain: Vec<u32>,
    /// `# HELP ...\n# TYPE ...\n` of each name id.
    headers: Vec<String>,
    name_index: FnvMap<String, u32>,
    /// Exposition order, rebuilt when `dirty`: series ids, and for each the
    /// end of its `name{labels} ` text in `arena`.
    order: Vec<u32>,
    text_ends: Vec<usize>,
    arena: String,
    /// Runs of `order` with one name: (name id, end of the run in `order`).
    runs: Vec<(u32, u32)>,
    dirty: bool,
    /// This cycle's value of each series id, valid where `stamp == cycle`.
    values: Vec<f64>,
    stamp: Vec<u32>,
    cycle: u32,
    present: usize,
    /// Length of the last rendered text, to size the buffer once.
    last_len: usize,
}

impl SeriesTexts {
    /// Starts a cycle: no series is present until set.
    pub fn begin(&mut self) {
        self.cycle = self.cycle.wrapping_add(1);
        if self.cycle == 0 {
            // After 4 billion cycles the stamps wrap; start them over.
            self.stamp.iter_mut().for_each(|s| *s = 0);
            self.cycle = 1;
        }
        self.present = 0;
    }

    /// Starts a source's cycle.
    pub fn begin_source(series: &mut SourceSeries) {
        series.begin();
    }

    /// Gives ids to the source's new series and records its values.
    pub fn absorb(&mut self, series: &mut SourceSeries) {
        let fresh = std::mem::take(&mut series.fresh);
        for new in &fresh {
            if let Some(id) = self.intern(series, new) {
                series.ids[new.pos] = id;
            }
        }
        if !fresh.is_empty() {
            // New series are rare after a source's first cycle: give back
            // what growing by doubling reserved, and the help texts.
            series.keys.shrink_to_fit();
            series.ends.shrink_to_fit();
            series.ids.shrink_to_fit();
            series.help = String::new();
        }
        series.fresh = fresh;
        series.fresh.clear();
        for (&id, &value) in series.ids.iter().zip(&series.values) {
            let Some(stamp) = self.stamp.get_mut(id as usize) else {
                continue;
            };
            // The first value of a series in a cycle wins, as in `render`.
            if *stamp != self.cycle {
                *stamp = self.cycle;
                self.values[id as usize] = value;
                self.present += 1;
            }
        }
    }

    /// The canonical key of series `id`.
    fn canonical(&self, id: u32) -> &[u8] {
        let id = id as usize;
        let start = if id == 0 { 0 } else { self.key_ends[id - 1] };
        &self.keys[start..self.key_ends[id]]
    }

    /// The id of a source's new series, added to the table if unknown.
    fn intern(&mut self, source: &SourceSeries, new: &NewSeries) -> Option<u32> {
        let (name, pairs) = unpack(source.key(new.pos));
        let mut pairs: Vec<(&[u8], &[u8])> = pairs.collect();
        pairs.sort_unstable();
        let start = self.keys.len();
        self.keys.extend_from_slice(name);
        self.keys.push(NAME_END);
        for (k, v) in &pairs {
            self.keys.extend_from_slice(k);
            self.keys.push(LABEL_EQ);
            self.keys.extend_from_slice(v);
            self.keys.push(NAME_END);
        }
        let hash = BuildHasherDefault::<Fnv>::default().hash_one(&self.keys[start..]);
        let mut at = self.index.get(&hash).copied().unwrap_or(UNRESOLVED);
        while at != UNRESOLVED {
            if self.canonical(at) == &self.keys[start..] {
                self.keys.truncate(start);
                return Some(at);
            }
            at = self.chain[at as usize];
        }
        let Some(id) = u32::try_from(self.key_ends.len()).ok().filter(|&id| id != UNRESOLVED) else {
            self.keys.truncate(start);
            return None;
        };
        let name = text(name);
        let name_id = match self.name_index.get(name) {
            Some(&n) => n,
            None => {
                let n = self.headers.len() as u32;
                let help = source.help.get(new.help.clone()).unwrap_or_default();
                let mut header = String::with_capacity(name.len() * 2 + help.len() + 24);
                header.push_str("# HELP ");
                header.push_str(name);
                header.push(' ');
                push_escaped_help(&mut header, help);
                header.push_str("\n# TYPE ");
                header.push_str(name);
                header.push(' ');
                header.push_str(new.kind.as_str());
                header.push('\n');
                self.name_index.insert(name.to_string(), n);
                self.headers.push(header);
                n
            }
        };
        self.key_ends.push(self.keys.len());
        self.series_name.push(name_id);
        self.chain.push(self.index.insert(hash, id).unwrap_or(UNRESOLVED));
        self.values.push(0.0);
        self.stamp.push(0);
        self.dirty = true;
        Some(id)
    }

    /// Whether the table holds many more series than the last cycle had;
    /// then [`sweep`](Self::sweep) should run and every source's cache be
    /// forgotten.
    pub fn needs_sweep(&self) -> bool {
        self.key_ends.len() >= SWEEP_FLOOR && self.key_ends.len() > self.present.saturating_mul(2)
    }

    /// Drops every series absent from the current cycle and renumbers the
    /// rest; every [`SourceSeries`] must then be passed to
    /// [`forget`](Self::forget). Names stay (there are few, and they do not
    /// churn).
    pub fn sweep(&mut self) {
        let mut keys = Vec::new();
        let mut key_ends = Vec::new();
        let mut series_name = Vec::new();
        let mut values = Vec::new();
        self.index.clear();
        self.chain.clear();
        for id in 0..self.key_ends.len() {
            if self.stamp[id] != self.cycle {
                continue;
            }
            let key = self.canonical(id as u32);
            let hash = BuildHasherDefault::<Fnv>::default().hash_one(key);
            keys.extend_from_slice(key);
            let new_id = key_ends.len() as u32;
            key_ends.push(keys.len());
            series_name.push(self.series_name[id]);
            values.push(self.values[id]);
            self.chain.push(self.index.insert(hash, new_id).unwrap_or(UNRESOLVED));
        }
        self.stamp = vec![self.cycle; key_ends.len()];
        self.keys = keys;
        self.key_ends = key_ends;
        self.series_name = series_name;
        self.values = values;
        self.dirty = true;
    }

    /// Forgets a source's cached keys after a [`sweep`](Self::sweep).
    pub fn forget(series: &mut SourceSeries) {
        series.forget();
    }

    /// Series in the table.
    pub fn len(&self) -> usize {
        self.key_ends.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.key_ends.is_empty()
    }

    /// Re-sorts the series and re-renders their text in exposition order
    /// (names, then label pairs, compared as `exposition::render` does).
    fn rebuild(&mut self) {
        let mut order: Vec<u32> = (0..self.key_ends.len() as u32).collect();
        order.sort_by(|&a, &b| {
            let (name_a, pairs_a) = unpack(self.canonical(a));
            let (name_b, pairs_b) = unpack(self.canonical(b));
            name_a.cmp(name_b).then_with(|| pairs_a.cmp(pairs_b))
        });
        let mut arena = String::with_capacity(self.arena.len());
        let mut ends = Vec::with_capacity(order.len());
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for (i, &id) in order.iter().enumerate() {
            let (name, pairs) = unpack(self.canonical(id));
            arena.push_str(text(name));
            let mut first = true;
            for (label, value) in pairs {
                arena.push(if first { '{' } else { ',' });
                first = false;
                arena.push_str(text(label));
                arena.push_str("=\"");
                push_escaped_label_value(&mut arena, text(value));
                arena.push('"');
            }
            if !first {
                arena.push('}');
            }
            arena.push(' ');
            ends.push(arena.len());
            let name_id = self.series_name[id as usize];
            match runs.last_mut() {
                Some((n, end)) if *n == name_id => *end = i as u32 + 1,
                _ => runs.push((name_id, i as u32 + 1)),
            }
        }
        arena.shrink_to_fit();
        self.order = order;
        self.text_ends = ends;
        self.arena = arena;
        self.runs = runs;
        self.dirty = false;
        // Series were added since the last rebuild; the table grew by
        // doubling and now stays this size until the next new series.
        self.keys.shrink_to_fit();
        self.key_ends.shrink_to_fit();
        self.series_name.shrink_to_fit();
        self.chain.shrink_to_fit();
        self.values.shrink_to_fit();
        self.stamp.shrink_to_fit();
        self.headers.shrink_to_fit();
    }

    /// Appends the current cycle in Prometheus text format 0.0.4 to `out`.
    pub fn render(&mut self, out: &mut String) {
        if self.dirty {
            self.rebuild();
        }
        // Values take at most 24 bytes each.
        out.reserve(self.last_len.max(self.arena.len() + self.order.len() * 24) + 4096);
        let start_len = out.len();
        let mut from = 0usize;
        for &(name, end) in &self.runs {
            let mut header = false;
            for i in from..end as usize {
                let id = self.order[i] as usize;
                if self.stamp[id] != self.cycle {
                    continue;
                }
                if !header {
                    header = true;
                    out.push_str(&self.headers[name as usize]);
                }
                let text_start = if i == 0 { 0 } else { self.text_ends[i - 1] };
                out.push_str(&self.arena[text_start..self.text_ends[i]]);
                write_float(out, self.values[id]);
                out.push('\n');
            }
            from = end as usize;
        }
        self.last_len = out.len() - start_len;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// One sample as a source emits it: name, labels, value.
    type Emitted<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

    fn cycle(table: &mut SeriesTexts, sources: &mut [SourceSeries], emit: &[&[Emitted]]) -> String {
        table.begin();
        for (series, samples) in sources.iter_mut().zip(emit) {
            SeriesTexts::begin_source(series);
            for (name, labels, value) in *samples {
                series.push(name, MetricType::Gauge, &format!("{name} help."), labels, *value);
            }
            table.absorb(series);
        }
        let mut out = String::new();
        table.render(&mut out);
        out
    }

    #[test]
    fn steady_cycles_reuse_positions_and_print_sorted() {
        let mut table = SeriesTexts::default();
        let mut sources = [SourceSeries::default(), SourceSeries::default()];
        let a: &[Emitted] = &[("m_b", &[("z", "1"), ("a", "q\"")], 2.0), ("m_a", &[], 1e7)];
        let b: &[Emitted] = &[("m_b", &[("a", "0")], 0.5)];
        let expected = "\
# HELP m_a m_a help.
# TYPE m_a gauge
m_a 1e+07
# HELP m_b m_b help.
# TYPE m_b gauge
m_b{a=\"0\"} 0.5
m_b{a=\"q\\\"\",z=\"1\"} 2
";
        assert_eq!(cycle(&mut table, &mut sources, &[a, b]), expected);
        assert_eq!(table.len(), 3);
        // The second cycle finds every key at its position.
        table.begin();
        SeriesTexts::begin_source(&mut sources[0]);
        sources[0].push("m_b", MetricType::Gauge, "ignored", &[("z", "1"), ("a", "q\"")], 3.0);
        assert!(sources[0].fresh.is_empty());
        sources[0].push("m_a", MetricType::Gauge, "ignored", &[], 4.0);
        assert!(sources[0].fresh.is_empty());
        table.absorb(&mut sources[0]);
        let mut out = String::new();
        table.render(&mut out);
        assert_eq!(
            out,
            "# HELP m_a m_a help.\n# TYPE m_a gauge\nm_a 4\n# HELP m_b m_b help.\n# TYPE m_b gauge\nm_b{a=\"q\\\"\",z=\"1\"} 3\n"
        );
    }

    #[test]
    fn a_changed_position_truncates_and_resolves_again() {
        let mut table = SeriesTexts::default();
        let mut sources = [SourceSeries::default()];
        let first: &[Emitted] = &[("m", &[("d", "a")], 1.0), ("m", &[("d", "c")], 3.0)];
        cycle(&mut table, &mut sources, &[first]);
        let second: &[Emitted] = &[
            ("m", &[("d", "a")], 1.0),
            ("m", &[("d", "b")], 2.0),
            ("m", &[("d", "c")], 3.0),
        ];
        let out = cycle(&mut table, &mut sources, &[second]);
        assert_eq!(
            out,
            "# HELP m m help.\n# TYPE m gauge\nm{d=\"a\"} 1\nm{d=\"b\"} 2\nm{d=\"c\"} 3\n"
        );
        // `c` moved to another position but kept its id.
        assert_eq!(table.len(), 3);
        assert_eq!(sources[0].ids.len(), 3);
        // A series that stops is not printed, nor its name's header.
        let third: &[Emitted] = &[("n", &[], 5.0)];
        assert_eq!(
            cycle(&mut table, &mut sources, &[third]),
            "# HELP n n help.\n# TYPE n gauge\nn 5\n"
        );
    }

    #[test]
    fn duplicates_keep_the_first_value_and_keys_do_not_alias() {
        let mut table = SeriesTexts::default();
        let mut sources = [SourceSeries::default(), SourceSeries::default()];
        let a: &[Emitted] = &[("m", &[("k", "v")], 1.0), ("m", &[("k", "v")], 9.0)];
        let b: &[Emitted] = &[("m", &[("k", "v")], 7.0), ("m", &[("kv", "")], 2.0)];
        let out = cycle(&mut table, &mut sources, &[a, b]);
        assert_eq!(out, "# HELP m m help.\n# TYPE m gauge\nm{k=\"v\"} 1\nm{kv=\"\"} 2\n");
        assert!(!key_matches(b"m\xffk\xfev\xff", "m", &[("kv", "")]));
        assert!(!key_matches(b"m\xffk\xfev\xff", "m\u{ff}k", &[]));
        assert!(key_matches(b"m\xffk\xfev\xff", "m", &[("k", "v")]));
        for (a, b, same) in [
            ("", "", true),
            ("abcdefgh", "abcdefgh", true),
            ("abcdefghi", "abcdefghj", false),
            ("abcdefghij", "abcdefghi", false),
            ("node_hwmon_temp_celsius", "node_hwmon_temp_celsiuz", false),
            ("xbcdefgh12", "abcdefgh12", false),
        ] {
            assert_eq!(same_bytes(a.as_bytes(), b.as_bytes()), same, "{a} {b}");
        }
    }

    #[test]
    fn sweep_drops_absent_series_and_sources_resolve_again() {
        let mut table = SeriesTexts::default();
        let mut sources = [SourceSeries::default()];
        let names: Vec<String> = (0..SWEEP_FLOOR).map(|i| format!("d{i}")).collect();
        let labels: Vec<[(&str, &str); 1]> = names.iter().map(|n| [("dev", n.as_str())]).collect();
        let churn: Vec<Emitted> = labels.iter().map(|l| ("m", l.as_slice(), 1.0)).collect();
        cycle(&mut table, &mut sources, &[&churn]);
        assert!(!table.needs_sweep());
        let small: &[Emitted] = &[("m", &[("dev", "d7")], 2.0), ("x", &[], 3.0)];
        cycle(&mut table, &mut sources, &[small]);
        assert!(table.needs_sweep());
        table.sweep();
        SeriesTexts::forget(&mut sources[0]);
        assert_eq!(table.len(), 2);
        let out = cycle(&mut table, &mut sources, &[small]);
        assert_eq!(
            out,
            "# HELP m m help.\n# TYPE m gauge\nm{dev=\"d7\"} 2\n# HELP x x help.\n# TYPE x gauge\nx 3\n"
        );
        assert_eq!(table.len(), 2);
    }
}
