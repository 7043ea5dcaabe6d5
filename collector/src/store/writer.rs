//! The single writer behind [`Store::append`](super::Store::append): a
//! dedicated thread that drains every queued append, writes them as one WAL
//! record in one atomic sled batch (together with new series definitions and
//! each host's new highest seq), flushes once and only then answers every
//! waiter. So N streams appending at the same time cost one fsync (group
//! commit), and because exactly one thread checks and advances each host's
//! highest seq, two racing appends of one host can never both pass the
//! duplicate check. After answering, it starts a seal when a window closed
//! or the heads outgrew their share of the memory bound (`seal.rs`): it
//! freezes a generation of head samples and hands it to the seal thread,
//! so encoding and writing blocks never holds up the next group commit.
//!
//! It is a thread rather than a tokio task because the flush is a blocking
//! fsync that must not occupy a runtime worker, and because `Store::open`
//! is synchronous and may run outside a runtime.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use super::fasthash::FastMap;
use super::head::WalPart;
use super::keys::{self, HostEntry};
use super::{AppendBatch, AppendOutcome, AppendReport, BatchReport, SeriesKey, Shared, StoreError};
use crate::model::Labels;

/// Upper bound on appends per group, so one commit's sled batch stays a
/// bounded amount of memory however far the queue fell behind.
const MAX_GROUP: usize = 1024;

/// One queued append and where to send its outcome.
pub(crate) struct AppendRequest {
    pub host: String,
    /// `None` for unsequenced appends (import, remote write): no host
    /// record, no duplicate check.
    pub seq: Option<u64>,
    pub series: AppendBatch,
    pub reply: oneshot::Sender<Result<BatchReport, StoreError>>,
    /// Shared by the pipelined appends of one ingest stream: once one of
    /// them fails, every later one is refused unapplied (see
    /// [`super::AppendFence`]).
    pub fence: Option<super::AppendFence>,
}

/// The writer loop; returns when every sender is gone (the store closed).
pub(crate) fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<AppendRequest>) {
    // Freeing the answered requests' label sets and sample vectors took
    // about a tenth of this thread's time during gRPC ingest (perf,
    // 2026-11-26); this thread is the ingest bottleneck, so a helper frees
    // them. Bounded, and when it is full or missing we free here.
    let (spent_tx, spent_rx) = std::sync::mpsc::sync_channel::<Vec<AppendBatch>>(16);
    let freer = std::thread::Builder::new()
        .name("hostpulse-store-free".into())
        .spawn(move || spent_rx.into_iter().for_each(drop))
        .ok();
    // One wake-up queued is enough: the sealer takes whatever generation
    // is pending when it wakes.
    let (wake_tx, wake_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let sealer = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("hostpulse-seal".into())
            .spawn(move || super::seal::run_sealer(shared, wake_rx))
    };
    if let Err(e) = &sealer {
        // Then every seal runs on this thread (`seal::maybe_start`).
        tracing::error!(error = %e, "cannot start the seal thread; sealing on the writer thread");
    }
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(req) => group.push(req),
                Err(_) => break,
            }
        }
        let mut state = shared.write_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let outcomes = commit(&shared, &group);
        let mut spent = Vec::with_capacity(group.len());
        for (req, outcome) in group.into_iter().zip(outcomes) {
            // The caller may have given up waiting; the data is stored anyway.
            let _ = req.reply.send(outcome);
            spent.push(req.series);
        }
        if freer.is_some() {
            // A full or closed channel hands the value back, dropped here.
            let _ = spent_tx.try_send(spent);
        }
        if !shared.poisoned.load(Ordering::Acquire) {
            super::seal::maybe_start(&shared, &mut state, &wake_tx);
        }
    }
    drop(spent_tx);
    // The sealer finishes the seal it is in and ends.
    drop(wake_tx);
    if let Ok(sealer) = sealer {
        let _ = sealer.join();
    }
    if let Some(freer) = freer {
        let _ = freer.join();
    }
}

/// Applies and flushes one group; one outcome per request, in order.
fn commit(shared: &Shared, group: &[AppendRequest]) -> Vec<Result<BatchReport, StoreError>> {
    if shared.poisoned.load(Ordering::Acquire) {
        // After a failed fsync the kernel may have dropped dirty pages we can
        // no longer tell apart, so nothing more is acknowledged until restart.
        fail_fences(group);
        return group.iter().map(|_| Err(poisoned())).collect();
    }
    let now = now_ms();
    let ooo = shared.opts.out_of_order_ms;
    let mut batch = sled::Batch::default();
    let mut reports: Vec<Result<BatchReport, StoreError>> = Vec::with_capacity(group.len());
    let mut new_series: Vec<(u64, &Labels)> = Vec::new();
    let mut staged_ids: FastMap<&Labels, u64> = FastMap::default();
    let mut staged_hosts: HashMap<&str, HostEntry> = HashMap::new();
    // The WAL record: accepted samples per series, in arrival order, with
    // each series' group (only needed, and only computed, for a series
    // without a head yet). Staged flat, tagged with the series' slot, and
    // put in series order once at the end: a live agent's batch holds one
    // sample per series, and a vector per series was an allocation and a
    // free per sample.
    let mut wal_ids: Vec<u64> = Vec::new();
    let mut wal_group: Vec<u64> = Vec::new();
    let mut flat: Vec<(u32, i64, f64)> = Vec::with_capacity(group.iter().map(|r| r.series.sample_count()).sum());
    // Per series in this group: its slot in `wal` and the highest accepted
    // timestamp so far. One lookup per series and request, none per sample.
    let mut staged: FastMap<u64, (usize, Option<i64>)> = FastMap::default();
    let mut rejected_total = 0u64;

    // Held until the batch is applied so that `record_hello`, which rewrites
    // the same host records, cannot interleave and write back an older seq.
    let mut hosts = shared.hosts.lock().unwrap_or_else(PoisonError::into_inner);
    {
        // Only this thread adds series and changes heads, so neither can
        // change under us; the locks are released before the apply.
        let index = shared.index.read().unwrap_or_else(PoisonError::into_inner);
        let heads = shared.heads.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next_id = index.next_id();
        for req in group {
            // An earlier append of the same stream failed: storing this
            // later one would advance the host's seq past the failed one,
            // and the agent's resend of that one would then be dropped as
            // a duplicate.
            if req.fence.as_ref().is_some_and(super::AppendFence::failed) {
                reports.push(Err(StoreError::EarlierAppendFailed));
                continue;
            }
            let mut entry = None;
            if let Some(seq) = req.seq {
                let e = match staged_hosts.get(req.host.as_str()).or_else(|| hosts.get(&req.host)) {
                    Some(e) => e.clone(),
                    None => HostEntry {
                        record: super::HostRecord {
                            host: req.host.clone(),
                            ..Default::default()
                        },
                        stored_any: false,
                    },
                };
                if e.stored_any && seq <= e.record.last_seq {
                    reports.push(Ok(BatchReport {
                        report: AppendReport {
                            outcome: AppendOutcome::Duplicate {
                                last_seq: e.record.last_seq,
                            },
                            rejected_out_of_order: 0,
                        },
                        new_ids: Vec::new(),
                    }));
                    continue;
                }
                entry = Some(e);
            }
            // Checked before anything of the request is staged, so a bad id
            // fails the request alone.
            let unknown = req.series.iter().find_map(|(key, _)| match key {
                SeriesKey::Id(id) if !index.contains(*id) => Some(*id),
                _ => None,
            });
            if let Some(id) = unknown {
                if let Some(fence) = &req.fence {
                    fence.fail();
                }
                reports.push(Err(StoreError::UnknownSeries(id)));
                continue;
            }
            let mut new_ids = Vec::new();
            let (mut samples, mut rejected) = (0usize, 0usize);
            let mut newest = entry.as_ref().map_or(i64::MIN, |e| e.record.last_sample_ms);
            for (position, (key, series_samples)) in req.series.iter().enumerate() {
                if series_samples.is_empty() {
                    continue;
                }
                let id = match key {
                    SeriesKey::Id(id) => *id,
                    SeriesKey::Labels(labels) => {
                        let id = match index.id_of(labels).or_else(|| staged_ids.get(labels).copied()) {
                            Some(id) => id,
                            None => {
                                let id = next_id;
                                next_id += 1;
                                staged_ids.insert(labels, id);
                                new_series.push((id, labels));
                                id
                            }
                        };
                        new_ids.push((position, id));
                        id
                    }
                };
                let (slot, max) = staged.entry(id).or_insert_with(|| {
                    let head_max = heads.max_ts(id);
                    wal_ids.push(id);
                    wal_group.push(match (head_max, key) {
                        (Some(_), _) => 0,
                        (None, SeriesKey::Labels(labels)) => keys::group_hash(labels.get("instance")),
                        (None, SeriesKey::Id(id)) => index.value_of(*id, "instance").map_or(0, keys::group_hash),
                    });
                    (wal_ids.len() - 1, head_max)
                });
                let slot = u32::try_from(*slot).unwrap_or(u32::MAX);
                for &(ts, v) in series_samples {
                    if let Some(m) = *max
                        && ts < m.saturating_sub(ooo)
                    {
                        rejected += 1;
                        continue;
                    }
                    *max = Some(max.map_or(ts, |m| m.max(ts)));
                    flat.push((slot, ts, v));
                    newest = newest.max(ts);
                    samples += 1;
                }
            }
            rejected_total += rejected as u64;
            if let (Some(mut e), Some(seq)) = (entry, req.seq) {
                e.stored_any = true;
                e.record.last_seq = seq;
                e.record.last_sample_ms = newest.max(e.record.last_sample_ms);
                e.record.last_report_ms = e.record.last_report_ms.max(now);
                staged_hosts.insert(&req.host, e);
            }
            reports.push(Ok(BatchReport {
                report: AppendReport {
                    outcome: AppendOutcome::Stored { samples },
                    rejected_out_of_order: rejected,
                },
                new_ids,
            }));
        }
    }
    // Each host's record once, as its last request in the group left it:
    // a host sending a backlog has dozens of batches in one group, and the
    // record is JSON.
    for (host, e) in &staged_hosts {
        batch.insert(keys::host_key(host), keys::encode_host(e));
    }
    // New series (consecutive ids) as pages: one record per commit, not
    // one per series (`keys::encode_series_page`).
    for page in new_series.chunks(keys::SERIES_PAGE) {
        if let Some((first, _)) = page.first() {
            let labels: Vec<&Labels> = page.iter().map(|(_, l)| *l).collect();
            batch.insert(&keys::series_key(*first), keys::encode_series_page(&labels));
        }
    }
    let by_series = by_series(&flat, wal_ids.len());
    let wal: Vec<WalEntry<'_>> = wal_ids
        .iter()
        .zip(by_series.ends.iter().scan(0, |start, &end| {
            let run = by_series.samples.get(*start..end).unwrap_or_default();
            *start = end;
            Some(run)
        }))
        .map(|(&id, run)| (id, run))
        .collect();
    let mut wal_keys = Vec::new();
    for record in wal_records(&wal) {
        if record.iter().all(|(_, samples)| samples.is_empty()) {
            continue;
        }
        // A seal deletes the record once everything up to its newest
        // timestamp is sealed.
        let max_ts = record
            .iter()
            .flat_map(|(_, samples)| samples.iter().map(|s| s.0))
            .max()
            .unwrap_or(i64::MIN);
        let lsn = shared.next_lsn.fetch_add(1, Ordering::SeqCst);
        for (key, value) in keys::wal_parts(lsn, record) {
            batch.insert(&key, value);
            wal_keys.push(WalPart {
                key,
                lsn,
                max_ts,
                sealed_below: i64::MIN,
            });
        }
    }
    shared
        .counters
        .rejected_out_of_order
        .fetch_add(rejected_total, Ordering::Relaxed);

    let wrote = !wal_keys.is_empty() || !new_series.is_empty() || !staged_hosts.is_empty();
    if wrote {
        if let Err(e) = shared.tree.apply_batch(batch) {
            fail_fences(group);
            return group.iter().map(|_| Err(StoreError::Sled(e.clone()))).collect();
        }
        // Only now that the database holds them may memory mention them.
        let mut index = shared.index.write().unwrap_or_else(PoisonError::into_inner);
        for (id, labels) in new_series {
            index.insert(id, labels);
        }
        drop(index);
        if !wal_keys.is_empty() {
            let mut heads = shared.heads.lock().unwrap_or_else(PoisonError::into_inner);
            for ((id, samples), g) in wal.iter().zip(&wal_group) {
                if !samples.is_empty() {
                    heads.insert_run(*id, *g, samples);
                }
            }
            heads.wal.extend(wal_keys);
            shared.head_bytes.store(heads.bytes(), Ordering::Relaxed);
        }
    }

    // Duplicates are answered after the flush too: the batch they repeat may
    // be in this very group, not yet durable.
    if wrote {
        if let Err(e) = shared.db.flush() {
            shared.poisoned.store(true, Ordering::Release);
            tracing::error!(error = %e, "store flush failed; refusing further appends until restart");
            fail_fences(group);
            return group.iter().map(|_| Err(StoreError::Sled(e.clone()))).collect();
        }
        shared.counters.flushes.fetch_add(1, Ordering::Relaxed);
        // Hosts' seqs change in memory only once durable: `Store::last_seq`
        // answers a Hello with a resume ack, and a seq whose flush failed
        // (disk full) must never be acknowledged that way (issue 7 chaos
        // test `a_full_disk_pauses_ingest_and_loses_nothing` lost a batch
        // so). The lock is held through the flush so `record_hello` cannot
        // write an older seq after this group's.
        for (host, entry) in staged_hosts {
            hosts.insert(host.to_owned(), entry);
        }
    }
    drop(hosts);
    reports
}

/// Estimated encoded size (`keys::wal_parts`' estimate) at which a group
/// commit's samples go on in a further WAL record. sled keeps up to 16
/// values in a leaf and writes a leaf over 128 KiB (a quarter of its
/// segment) as a separate blob file, created, fsynced and later deleted; WAL
/// records appended in lsn order fill one leaf after another, so records
/// of at most 7 KiB keep every leaf inline. With one record per commit
/// (tens of KiB at 20 streams) blob files were a third of this thread's
/// time during gRPC ingest (perf, 2026-11-26).
const WAL_RECORD_BYTES: usize = 7 * 1024;

/// One series' samples in a WAL record.
type WalEntry<'a> = (u64, &'a [(i64, f64)]);

/// A commit's samples put in series order: series `i`'s run ends at
/// `ends[i]` of `samples`.
struct BySeries {
    samples: Vec<(i64, f64)>,
    ends: Vec<usize>,
}

/// Orders `flat` (slot, timestamp, value) samples by slot, keeping arrival
/// order within a slot (a counting sort: two passes, no comparison); slots
/// at or past `slots` are dropped.
fn by_series(flat: &[(u32, i64, f64)], slots: usize) -> BySeries {
    let mut ends = vec![0usize; slots];
    for &(slot, _, _) in flat {
        if let Some(n) = ends.get_mut(slot as usize) {
            *n += 1;
        }
    }
    // Counts become each run's start; filling advances them to its end.
    let mut total = 0;
    for n in &mut ends {
        let count = *n;
        *n = total;
        total += count;
    }
    let mut samples = vec![(0i64, 0f64); total];
    for &(slot, ts, v) in flat {
        if let Some(at) = ends.get_mut(slot as usize) {
            if let Some(dst) = samples.get_mut(*at) {
                *dst = (ts, v);
            }
            *at += 1;
        }
    }
    BySeries { samples, ends }
}

/// Cuts a commit's WAL entries into records of about [`WAL_RECORD_BYTES`]
/// (a series with more samples than fit is a record of its own; its parts
/// are cut by `keys::wal_parts`).
fn wal_records<'w, 'a>(wal: &'w [WalEntry<'a>]) -> Vec<&'w [WalEntry<'a>]> {
    let mut records = Vec::new();
    let (mut from, mut size) = (0, 0);
    for (i, (_, samples)) in wal.iter().enumerate() {
        let entry = 16 + samples.len() * 4;
        if size > 0 && size + entry > WAL_RECORD_BYTES {
            records.extend(wal.get(from..i));
            (from, size) = (i, 0);
        }
        size += entry;
    }
    records.extend(wal.get(from..).filter(|rest| !rest.is_empty()));
    records
}

/// Marks the fence of every request of a group that failed as a whole.
fn fail_fences(group: &[AppendRequest]) {
    for fence in group.iter().filter_map(|req| req.fence.as_ref()) {
        fence.fail();
    }
}

fn poisoned() -> StoreError {
    StoreError::Sled(sled::Error::Io(std::io::Error::other(
        "an earlier flush failed; appends are refused until the collector restarts",
    )))
}

/// Wall-clock time in ms since the epoch (0 if the clock is before 1970).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn samples_go_in_series_order_keeping_arrival_order() {
        let flat = [
            (2, 10, 1.0),
            (0, 5, 2.0),
            (2, 7, 3.0),
            (1, 1, 4.0),
            (0, 6, 5.0),
            (9, 0, 6.0),
        ];
        let b = by_series(&flat, 3);
        assert_eq!(b.ends, [2, 3, 5]);
        assert_eq!(
            b.samples,
            [(5, 2.0), (6, 5.0), (1, 4.0), (10, 1.0), (7, 3.0)],
            "slot 9 is past the slots"
        );
        let empty = by_series(&[], 2);
        assert_eq!((empty.ends, empty.samples.len()), (vec![0, 0], 0));
    }

    #[test]
    fn wal_records_keep_every_entry_in_order_within_the_size() {
        let entry = |id: u64, n: usize| (id, (0..n as i64).map(|t| (t, 1.0)).collect::<Vec<_>>());
        // 133 series of one sample (a 10 s agent cycle) x 20 hosts, then a
        // series bigger than a record on its own, then a few small ones.
        let mut owned: Vec<(u64, Vec<(i64, f64)>)> = (0..2660).map(|id| entry(id, 1)).collect();
        owned.push(entry(9000, 5000));
        owned.extend((9001..9004).map(|id| entry(id, 3)));
        let wal: Vec<WalEntry<'_>> = owned.iter().map(|(id, s)| (*id, s.as_slice())).collect();
        let records = wal_records(&wal);
        let flat: Vec<u64> = records.iter().flat_map(|r| r.iter().map(|(id, _)| *id)).collect();
        assert_eq!(flat, wal.iter().map(|(id, _)| *id).collect::<Vec<_>>());
        for r in &records {
            let size: usize = r.iter().map(|(_, s)| 16 + s.len() * 4).sum();
            assert!(
                size <= WAL_RECORD_BYTES || r.len() == 1,
                "{} entries, {size} bytes",
                r.len()
            );
        }
        assert!(records.len() >= 2660 * 20 / WAL_RECORD_BYTES);
        assert!(wal_records(&[]).is_empty());
    }
}
