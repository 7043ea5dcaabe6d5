//! One agent stream's state and the validation of its batches, without any
//! I/O: the gRPC loop in [`super`] feeds messages in and sends back what
//! this decides. Keeping it pure lets every rejection rule be tested with
//! literal batches.
//!
//! A session maps the stream-local series references of `new_series` to
//! full label sets. The collector, not the agent, sets `instance` (to the
//! Hello's host) and `job`, so an agent cannot write series for another host.
//!
//! Once a batch naming a series is stored, the store's id for it replaces
//! the label set ([`Session::stored`]): later batches name the series by id,
//! so neither the labels nor a per-batch copy of them are kept, and the
//! store does not resolve them again (issue 4: an owned label set per series
//! per batch cost ~12 % of ingest in allocation and freeing).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use hostpulse_proto::{Batch, CollectorMessage, ErrorCode, SeriesDefinition};

use super::IngestLimits;
use super::validate::{check_label_name, check_metric_name};
use crate::model::{Labels, METRIC_NAME, is_stale_marker};
use crate::store::fasthash::{FastMap, FastState};
use crate::store::{AppendBatch, SeriesKey};

/// The `job` label of every series agents send.
pub const JOB: &str = "hostpulse";

/// Why a whole batch was refused; it is neither stored nor acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// `BadBatch` or `Limit`.
    pub code: ErrorCode,
    /// Names the offending input.
    pub message: String,
}

/// A batch ready for the store.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    /// The batch's sequence number.
    pub seq: u64,
    /// Its samples by series, ascending in time, one value per timestamp;
    /// series the store already gave an id are named by it.
    pub batch: AppendBatch,
    /// The stream refs behind `batch`, for [`Session::stored`].
    pub refs: BatchRefs,
    /// Samples dropped individually, and why; the rest is still stored.
    pub dropped: DroppedSamples,
}

/// The stream refs of a prepared batch's series, by position in the batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchRefs {
    /// The first ref seen for each series.
    first: Vec<u32>,
    /// Further refs naming the same series, as (position, ref).
    aliases: Vec<(usize, u32)>,
}

/// What a stream reference stands for.
#[derive(Clone, Debug)]
enum SeriesRef {
    /// Defined, not yet stored: its labels go with every batch until the
    /// store answers with an id.
    Pending(Labels),
    /// Stored: the store's id, and a keyed hash of the labels so a resent
    /// definition can be told from a redefinition without keeping them.
    Stored { id: u64, labels_hash: u64 },
}

/// Counts of samples dropped from an otherwise good batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DroppedSamples {
    /// Timestamp older than `max_past_ms` or newer than `max_future_ms`.
    pub out_of_range: usize,
    /// NaN or infinite and not the stale marker.
    pub non_finite: usize,
}

impl DroppedSamples {
    /// All dropped samples.
    pub fn total(&self) -> usize {
        self.out_of_range + self.non_finite
    }

    /// For the `SAMPLE_REJECTED` error sent to the agent.
    pub fn describe(&self, seq: u64) -> String {
        format!(
            "batch {seq}: dropped {} samples ({} with a timestamp out of range, {} with a non-finite value)",
            self.total(),
            self.out_of_range,
            self.non_finite
        )
    }
}

/// State of one stream after its Hello.
#[derive(Debug)]
pub struct Session {
    host: String,
    /// Looked up for every sample: the store's keyed fast hash, not SipHash
    /// (SipHash and rehashing were ~8 % of ingest CPU, perf 2026-11-26).
    refs: FastMap<u32, SeriesRef>,
    hasher: RandomState,
    /// Highest seq acknowledged on this stream, so acks never go backwards
    /// (a replayed batch below the host's stored seq is acked with the
    /// higher figure, which is just as true).
    acked: u64,
    /// Decoder of this stream's compact batches (see `super::wire`).
    wire: super::wire::WireDecoder,
    /// How the last plain batch's refs resolved, reused while an agent
    /// sends the same refs in the same order every cycle (see [`Plan`]).
    plan: Option<Plan>,
}

/// The store ids of a batch whose refs were all stored and pairwise
/// distinct (as ids too), one sample each: an agent's steady cycle. A
/// stored ref never changes its id within a session (a redefinition is
/// refused), so a later batch with the very same refs resolves the same
/// way without a lookup per sample.
#[derive(Debug)]
struct Plan {
    refs: Vec<u32>,
    ids: Vec<u64>,
}

impl Session {
    /// A session for a host whose name was already checked.
    pub fn new(host: String) -> Self {
        Session {
            host,
            refs: FastMap::default(),
            hasher: RandomState::new(),
            acked: 0,
            wire: Default::default(),
            plan: None,
        }
    }

    /// The stream's compact-batch decoder, which every batch passes first.
    pub fn wire(&mut self) -> &mut super::wire::WireDecoder {
        &mut self.wire
    }

    /// The ack to send for a durable `seq`: never below an earlier ack.
    pub fn ack(&mut self, seq: u64) -> CollectorMessage {
        self.acked = self.acked.max(seq);
        CollectorMessage::ack(self.acked)
    }

    /// The host this stream writes for.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// How many series `batch` defines that this stream has not defined
    /// yet (distinct refs; a resent definition costs nothing). Cheap: one
    /// lookup per definition and no label is looked at, so the limits on
    /// new series refuse a huge batch before its labels are built.
    pub fn new_definitions(&self, batch: &Batch) -> usize {
        let mut seen: HashSet<u32, FastState> = HashSet::default();
        batch
            .new_series
            .iter()
            .filter(|def| !self.refs.contains_key(&def.r#ref) && seen.insert(def.r#ref))
            .count()
    }

    /// Validates `batch` against the stream's definitions and `limits` at
    /// wall-clock time `now_ms`. Definitions take effect only when the batch
    /// is accepted, so a rejected batch leaves the session unchanged.
    pub fn prepare(&mut self, batch: Batch, limits: &IngestLimits, now_ms: i64) -> Result<Prepared, Rejection> {
        let seq = batch.seq;
        batch.check_columns().map_err(bad_batch)?;
        // The same check as after the definitions are read (the count is
        // exact unless the batch redefines a ref, which is refused anyway),
        // made first so a batch far over the limit costs no label building.
        let total = self.refs.len() + self.new_definitions(&batch);
        if total > limits.max_series_per_stream {
            return Err(limit(format!(
                "batch {seq}: {total} series on this stream, more than the limit of {}",
                limits.max_series_per_stream
            )));
        }
        if batch.new_series.is_empty()
            && batch.timestamp_deltas_ms.is_empty()
            && let Some(plan) = &self.plan
            && plan.refs == batch.refs
        {
            return Ok(prepare_planned(plan, &batch, limits, now_ms));
        }

        let mut defined: HashMap<u32, Labels> = HashMap::new();
        for def in &batch.new_series {
            let labels = self.labels_of(def, limits, seq)?;
            let same = match (self.refs.get(&def.r#ref), defined.get(&def.r#ref)) {
                (Some(SeriesRef::Pending(earlier)), _) | (None, Some(earlier)) => Some(*earlier == labels),
                (Some(SeriesRef::Stored { labels_hash, .. }), _) => Some(*labels_hash == self.hasher.hash_one(&labels)),
                (None, None) => None,
            };
            match same {
                Some(true) => continue,
                Some(false) => {
                    return Err(bad_batch(format!(
                        "batch {seq}: series ref {} redefined as {labels}, unlike its first definition",
                        def.r#ref
                    )));
                }
                None => {
                    defined.insert(def.r#ref, labels);
                }
            }
        }
        let total = self.refs.len() + defined.len();
        if total > limits.max_series_per_stream {
            return Err(limit(format!(
                "batch {seq}: {total} series on this stream, more than the limit of {}",
                limits.max_series_per_stream
            )));
        }

        let oldest = now_ms.saturating_sub(limits.max_past_ms);
        let newest = now_ms.saturating_add(limits.max_future_ms);
        let mut dropped = DroppedSamples::default();
        // Each ref is looked up once per batch; two refs naming one series
        // (same labels, or same stored id) share a slot, so their samples
        // merge and a later value at the same timestamp wins, as a later
        // write would in the store.
        let distinct = batch.refs.len().min(self.refs.len() + defined.len());
        let mut slot_of_ref: FastMap<u32, u32> = FastMap::with_capacity_and_hasher(distinct, Default::default());
        let mut slot_by_id: FastMap<u64, u32> = FastMap::with_capacity_and_hasher(distinct, Default::default());
        let mut slot_by_labels: FastMap<&Labels, u32> = FastMap::default();
        // Per slot: how the store is told the series, and its first ref.
        let mut slots: Vec<(SlotKey<'_>, u32)> = Vec::with_capacity(distinct);
        let mut aliases: Vec<(u32, u32)> = Vec::new();
        let mut entries: Vec<(u32, i64, u32, f64)> = Vec::with_capacity(batch.refs.len());
        for (i, (&r, &value)) in batch.refs.iter().zip(&batch.values).enumerate() {
            let slot = match slot_of_ref.get(&r) {
                Some(&slot) => slot,
                None => {
                    let key = match self.refs.get(&r) {
                        Some(SeriesRef::Stored { id, .. }) => SlotKey::Id(*id),
                        Some(SeriesRef::Pending(labels)) => SlotKey::Labels(labels),
                        None => match defined.get(&r) {
                            Some(labels) => SlotKey::Labels(labels),
                            None => {
                                return Err(bad_batch(format!(
                                    "batch {seq}: sample {i} uses undefined series ref {r}"
                                )));
                            }
                        },
                    };
                    let next = u32::try_from(slots.len()).unwrap_or(u32::MAX);
                    let existing = match key {
                        SlotKey::Id(id) => *slot_by_id.entry(id).or_insert(next),
                        SlotKey::Labels(labels) => *slot_by_labels.entry(labels).or_insert(next),
                    };
                    if existing == next {
                        slots.push((key, r));
                    } else {
                        aliases.push((existing, r));
                    }
                    slot_of_ref.insert(r, existing);
                    existing
                }
            };
            let ts = batch.timestamp_of(i);
            if ts < oldest || ts > newest {
                dropped.out_of_range += 1;
                continue;
            }
            if !value.is_finite() && !is_stale_marker(value) {
                dropped.non_finite += 1;
                continue;
            }
            entries.push((slot, ts, u32::try_from(i).unwrap_or(u32::MAX), value));
        }
        // By series, then time, then arrival, so the last of equal
        // timestamps is the one kept.
        entries.sort_unstable_by_key(|&(slot, ts, i, _)| (slot, ts, i));
        let mut out = AppendBatch::with_capacity(slots.len(), entries.len());
        let mut refs = BatchRefs::default();
        let mut position_of_slot: FastMap<u32, usize> = FastMap::default();
        let mut current: Option<(u32, i64)> = None;
        for (n, &(slot, ts, _, value)) in entries.iter().enumerate() {
            // Only the last entry of a run of equal (slot, ts) is kept.
            if entries.get(n + 1).is_some_and(|next| next.0 == slot && next.1 == ts) {
                continue;
            }
            if current.map(|c| c.0) != Some(slot) {
                let Some((key, first)) = slots.get(slot as usize) else {
                    continue;
                };
                if !aliases.is_empty() {
                    position_of_slot.insert(slot, refs.first.len());
                }
                refs.first.push(*first);
                out.begin(match key {
                    SlotKey::Id(id) => SeriesKey::Id(*id),
                    SlotKey::Labels(labels) => SeriesKey::Labels((*labels).clone()),
                });
            }
            current = Some((slot, ts));
            out.sample(ts, value);
        }
        for (slot, r) in aliases {
            if let Some(&position) = position_of_slot.get(&slot) {
                refs.aliases.push((position, r));
            }
        }
        let plan = (defined.is_empty() && batch.timestamp_deltas_ms.is_empty() && slots.len() == batch.refs.len())
            .then(|| {
                slots
                    .iter()
                    .map(|(key, _)| match key {
                        SlotKey::Id(id) => Some(*id),
                        SlotKey::Labels(_) => None,
                    })
                    .collect::<Option<Vec<u64>>>()
            })
            .flatten();
        self.refs
            .extend(defined.into_iter().map(|(r, labels)| (r, SeriesRef::Pending(labels))));
        if let Some(ids) = plan {
            self.plan = Some(Plan {
                refs: batch.refs.clone(),
                ids,
            });
        }
        Ok(Prepared {
            seq,
            batch: out,
            refs,
            dropped,
        })
    }

    /// Records the ids the store gave a stored batch's series (its
    /// [`crate::store::BatchReport::new_ids`]): from now on those refs are
    /// sent by id and their labels are dropped.
    pub fn stored(&mut self, refs: &BatchRefs, new_ids: &[(usize, u64)]) {
        let ids: HashMap<usize, u64> = new_ids.iter().copied().collect();
        let named = refs
            .first
            .iter()
            .copied()
            .enumerate()
            .chain(refs.aliases.iter().copied());
        for (position, r) in named {
            let Some(&id) = ids.get(&position) else {
                continue;
            };
            if let Some(entry) = self.refs.get_mut(&r)
                && let SeriesRef::Pending(labels) = entry
            {
                let labels_hash = self.hasher.hash_one(&*labels);
                *entry = SeriesRef::Stored { id, labels_hash };
            }
        }
    }

    /// The full label set of a definition, after checking names and limits.
    fn labels_of(&self, def: &SeriesDefinition, limits: &IngestLimits, seq: u64) -> Result<Labels, Rejection> {
        let context = |what: String| format!("batch {seq}: series ref {} ({:?}): {what}", def.r#ref, def.name);
        check_metric_name(&def.name).map_err(|e| bad_batch(context(e)))?;
        if def.labels.len() > limits.max_labels_per_series {
            return Err(limit(context(format!(
                "{} labels, more than the limit of {}",
                def.labels.len(),
                limits.max_labels_per_series
            ))));
        }
        let mut pairs = Vec::with_capacity(def.labels.len() + 3);
        for label in &def.labels {
            check_label_name(&label.name).map_err(|e| bad_batch(context(e)))?;
            if label.value.len() > limits.max_label_value_len {
                return Err(limit(context(format!(
                    "label {:?} value of {} bytes, more than the limit of {}",
                    label.name,
                    label.value.len(),
                    limits.max_label_value_len
                ))));
            }
            if pairs.iter().any(|(n, _): &(String, String)| *n == label.name) {
                return Err(bad_batch(context(format!("label {:?} given twice", label.name))));
            }
            // The collector owns these two; the agent's values are ignored.
            if label.name != "instance" && label.name != "job" {
                pairs.push((label.name.clone(), label.value.clone()));
            }
        }
        if def.name.len() > limits.max_label_value_len {
            return Err(limit(context(format!(
                "metric name of {} bytes, more than the limit of {}",
                def.name.len(),
                limits.max_label_value_len
            ))));
        }
        pairs.push((METRIC_NAME.to_owned(), def.name.clone()));
        pairs.push(("instance".to_owned(), self.host.clone()));
        pairs.push(("job".to_owned(), JOB.to_owned()));
        Ok(Labels::new(pairs))
    }
}

/// How a prepared batch names a series to the store (borrowing the
/// session's labels until the batch is built).
/// [`Session::prepare`] of a plain batch (no definitions, every sample at
/// the base timestamp) whose refs are `plan.refs`: each sample is its own
/// series, named by its stored id, in batch order, which is what the
/// general path yields for such a batch.
fn prepare_planned(plan: &Plan, batch: &Batch, limits: &IngestLimits, now_ms: i64) -> Prepared {
    let oldest = now_ms.saturating_sub(limits.max_past_ms);
    let newest = now_ms.saturating_add(limits.max_future_ms);
    let ts = batch.base_timestamp_ms;
    let mut dropped = DroppedSamples::default();
    let mut out = AppendBatch::with_capacity(plan.ids.len(), plan.ids.len());
    let mut refs = BatchRefs::default();
    refs.first.reserve(plan.ids.len());
    if ts < oldest || ts > newest {
        dropped.out_of_range = batch.values.len();
    } else {
        for ((&id, &r), &value) in plan.ids.iter().zip(&plan.refs).zip(&batch.values) {
            if !value.is_finite() && !is_stale_marker(value) {
                dropped.non_finite += 1;
                continue;
            }
            refs.first.push(r);
            out.begin(SeriesKey::Id(id));
            out.sample(ts, value);
        }
    }
    Prepared {
        seq: batch.seq,
        batch: out,
        refs,
        dropped,
    }
}

#[derive(Clone, Copy)]
enum SlotKey<'a> {
    Id(u64),
    Labels(&'a Labels),
}

fn bad_batch(message: String) -> Rejection {
    Rejection {
        code: ErrorCode::BadBatch,
        message,
    }
}

fn limit(message: String) -> Rejection {
    Rejection {
        code: ErrorCode::Limit,
        message,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use hostpulse_proto::Label;

    use super::*;
    use crate::model::STALE_NAN_BITS;

    const NOW: i64 = 1_700_000_000_000;

    fn def(r: u32, name: &str, labels: &[(&str, &str)]) -> SeriesDefinition {
        SeriesDefinition {
            r#ref: r,
            name: name.into(),
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
        }
    }

    fn batch(seq: u64, defs: Vec<SeriesDefinition>, samples: &[(u32, i64, f64)]) -> Batch {
        Batch {
            seq,
            new_series: defs,
            base_timestamp_ms: NOW,
            refs: samples.iter().map(|s| s.0).collect(),
            timestamp_deltas_ms: samples.iter().map(|s| s.1).collect(),
            values: samples.iter().map(|s| s.2).collect(),
            events: vec![],
            ..Default::default()
        }
    }

    fn check(session: &mut Session, b: Batch) -> Result<Prepared, Rejection> {
        session.prepare(b, &IngestLimits::default(), NOW)
    }

    fn rejected(r: Result<Prepared, Rejection>, code: ErrorCode, needle: &str) {
        let e = r.unwrap_err();
        assert_eq!(e.code, code, "{}", e.message);
        assert!(e.message.contains(needle), "{:?} lacks {needle:?}", e.message);
    }

    #[test]
    fn labels_get_instance_and_job_from_the_collector() {
        let mut s = Session::new("web-1".into());
        let b = batch(
            1,
            vec![def(1, "m", &[("instance", "victim"), ("job", "x"), ("chip", "c0")])],
            &[(1, 5, 2.0), (1, 0, 1.0), (1, 5, 3.0)],
        );
        let p = check(&mut s, b).unwrap();
        assert_eq!(
            series(&p),
            vec![(
                r#"m{chip="c0",instance="web-1",job="hostpulse"}"#.to_string(),
                vec![(NOW, 1.0), (NOW + 5, 3.0)]
            )]
        );
        // The ref stays defined for later batches.
        let p = check(&mut s, batch(2, vec![], &[(1, 0, 4.0)])).unwrap();
        assert_eq!(series(&p)[0].1, vec![(NOW, 4.0)]);
    }

    /// Issue 4: once stored, a series goes by the store's id, its
    /// definition may be resent unchanged, and aliases share its slot.
    #[test]
    fn stored_series_are_sent_by_id() {
        let mut s = Session::new("h".into());
        let p = check(
            &mut s,
            batch(
                1,
                vec![def(1, "m", &[]), def(2, "n", &[]), def(3, "m", &[])],
                &[(1, 0, 1.0), (2, 0, 2.0), (3, 0, 3.0), (3, 5, 4.0)],
            ),
        )
        .unwrap();
        // Refs 1 and 3 name one series: one entry, the later value wins.
        assert_eq!(
            series(&p),
            vec![
                (
                    r#"m{instance="h",job="hostpulse"}"#.to_string(),
                    vec![(NOW, 3.0), (NOW + 5, 4.0)]
                ),
                (r#"n{instance="h",job="hostpulse"}"#.to_string(), vec![(NOW, 2.0)]),
            ]
        );
        s.stored(&p.refs, &[(0, 40), (1, 41)]);
        let p = check(
            &mut s,
            batch(2, vec![def(2, "n", &[])], &[(2, 0, 5.0), (3, 0, 6.0), (1, 1, 7.0)]),
        )
        .unwrap();
        assert_eq!(
            series(&p),
            vec![
                ("#41".to_string(), vec![(NOW, 5.0)]),
                ("#40".to_string(), vec![(NOW, 6.0), (NOW + 1, 7.0)])
            ]
        );
        rejected(
            check(&mut s, batch(3, vec![def(2, "other", &[])], &[])),
            ErrorCode::BadBatch,
            "redefined",
        );
    }

    fn series(p: &Prepared) -> Vec<(String, Vec<(i64, f64)>)> {
        p.batch
            .iter()
            .map(|(key, samples)| {
                let name = match key {
                    SeriesKey::Labels(l) => l.to_string(),
                    SeriesKey::Id(id) => format!("#{id}"),
                };
                (name, samples.to_vec())
            })
            .collect()
    }

    #[test]
    fn bad_batches_are_refused_whole_and_change_nothing() {
        let mut s = Session::new("h".into());
        check(&mut s, batch(1, vec![def(1, "m", &[])], &[(1, 0, 1.0)])).unwrap();
        let mut cols = batch(2, vec![], &[(1, 0, 1.0)]);
        cols.values.push(2.0);
        rejected(check(&mut s, cols), ErrorCode::BadBatch, "2 values for 1 refs");
        rejected(
            check(&mut s, batch(3, vec![def(2, "n", &[])], &[(2, 0, 1.0), (9, 0, 1.0)])),
            ErrorCode::BadBatch,
            "undefined series ref 9",
        );
        rejected(
            check(&mut s, batch(4, vec![], &[(2, 0, 1.0)])),
            ErrorCode::BadBatch,
            "undefined series ref 2",
        );
        rejected(
            check(&mut s, batch(5, vec![def(1, "other", &[])], &[])),
            ErrorCode::BadBatch,
            "redefined",
        );
        // The same definition again (a resent batch) is fine.
        check(&mut s, batch(6, vec![def(1, "m", &[])], &[])).unwrap();
        rejected(
            check(&mut s, batch(7, vec![def(3, "1m", &[])], &[])),
            ErrorCode::BadBatch,
            "metric name",
        );
        rejected(
            check(&mut s, batch(8, vec![def(3, "m", &[("__x", "1")])], &[])),
            ErrorCode::BadBatch,
            "reserved",
        );
        rejected(
            check(&mut s, batch(9, vec![def(3, "m", &[("a-b", "1")])], &[])),
            ErrorCode::BadBatch,
            "label name",
        );
        rejected(
            check(&mut s, batch(10, vec![def(3, "m", &[("a", "1"), ("a", "2")])], &[])),
            ErrorCode::BadBatch,
            "twice",
        );
    }

    #[test]
    fn limits_are_enforced() {
        let limits = IngestLimits {
            max_series_per_stream: 2,
            max_labels_per_series: 1,
            max_label_value_len: 4,
            ..Default::default()
        };
        let mut s = Session::new("h".into());
        let mut run = |b| s.prepare(b, &limits, NOW);
        rejected(
            run(batch(1, vec![def(1, "m", &[("a", "1"), ("b", "2")])], &[])),
            ErrorCode::Limit,
            "2 labels",
        );
        rejected(
            run(batch(2, vec![def(1, "m", &[("a", "12345")])], &[])),
            ErrorCode::Limit,
            "5 bytes",
        );
        run(batch(3, vec![def(1, "m", &[]), def(2, "n", &[])], &[])).unwrap();
        rejected(run(batch(4, vec![def(3, "o", &[])], &[])), ErrorCode::Limit, "3 series");
    }

    #[test]
    fn bad_samples_are_dropped_and_counted() {
        let mut s = Session::new("h".into());
        let stale = f64::from_bits(STALE_NAN_BITS);
        let day = 24 * 3600 * 1000;
        let b = batch(
            1,
            vec![def(1, "m", &[])],
            &[
                (1, 0, 1.0),
                (1, 1, f64::NAN),
                (1, 2, f64::INFINITY),
                (1, 3, stale),
                (1, -8 * day, 1.0),
                (1, 11 * 60 * 1000, 1.0),
            ],
        );
        let p = check(&mut s, b).unwrap();
        assert_eq!(
            p.dropped,
            DroppedSamples {
                out_of_range: 2,
                non_finite: 2
            }
        );
        let samples = &series(&p)[0].1;
        assert_eq!(samples.len(), 2);
        assert!(is_stale_marker(samples[1].1));
        assert!(p.dropped.describe(1).contains("dropped 4 samples"));
    }

    /// A steady cycle (same refs, all stored, one sample each) skips the
    /// per-sample lookups and must prepare exactly what the general path
    /// does, dropped samples included; a change of refs falls back.
    #[test]
    fn a_repeated_cycle_prepares_like_the_general_path() {
        let plain = |seq: u64, ts: i64, samples: &[(u32, f64)]| Batch {
            seq,
            base_timestamp_ms: ts,
            refs: samples.iter().map(|s| s.0).collect(),
            values: samples.iter().map(|s| s.1).collect(),
            ..Default::default()
        };
        let stale = f64::from_bits(STALE_NAN_BITS);
        let defs = vec![def(7, "a", &[]), def(3, "b", &[]), def(9, "c", &[])];
        let setup = |s: &mut Session| {
            let p = check(s, batch(1, defs.clone(), &[(7, 0, 1.0), (3, 0, 2.0), (9, 0, 3.0)])).unwrap();
            s.stored(&p.refs, &[(0, 70), (1, 30), (2, 90)]);
        };
        let (mut planned, mut fresh) = (Session::new("h".into()), Session::new("h".into()));
        setup(&mut planned);
        // The first plain batch takes the general path and leaves a plan.
        check(&mut planned, plain(2, NOW, &[(7, 1.0), (3, 2.0), (9, 3.0)])).unwrap();
        assert!(planned.plan.is_some());
        let cases = [
            plain(3, NOW + 10, &[(7, 4.0), (3, f64::NAN), (9, stale)]),
            plain(4, NOW + 10 * 86_400_000, &[(7, 4.0), (3, 5.0), (9, 6.0)]),
            plain(5, NOW + 20, &[(7, f64::INFINITY), (3, -0.0), (9, 6.5)]),
        ];
        for b in cases {
            setup(&mut fresh);
            fresh.plan = None;
            let want = check(&mut fresh, b.clone()).unwrap();
            let got = check(&mut planned, b).unwrap();
            assert_eq!(format!("{got:?}"), format!("{want:?}"));
        }
        // Other refs (or order) go the general way, and still resolve.
        let p = check(&mut planned, plain(6, NOW + 30, &[(9, 1.0), (7, 2.0)])).unwrap();
        assert_eq!(
            p.batch.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            [SeriesKey::Id(90), SeriesKey::Id(70)]
        );
        assert_eq!(planned.plan.as_ref().unwrap().refs, [9, 7]);
        // Two refs naming one id leave no plan.
        let mut dup = Session::new("h".into());
        let p = check(
            &mut dup,
            batch(1, vec![def(1, "a", &[]), def(2, "a", &[])], &[(1, 0, 1.0)]),
        )
        .unwrap();
        dup.stored(&p.refs, &[(0, 5)]);
        check(&mut dup, plain(2, NOW, &[(1, 1.0), (2, 2.0)])).unwrap();
        assert!(dup.plan.is_none());
    }
}
