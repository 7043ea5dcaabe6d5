//! The single writer behind [`Store::append`](super::Store::append): a
//! dedicated thread that drains every queued append, applies them as one
//! atomic sled batch, flushes once and only then answers every waiter. So N
//! streams appending at the same time cost one fsync (group commit), and
//! because exactly one thread checks and advances each host's highest seq,
//! two racing appends of one host can never both pass the duplicate check.
//!
//! It is a thread rather than a tokio task because the flush is a blocking
//! fsync that must not occupy a runtime worker, and because `Store::open`
//! is synchronous and may run outside a runtime.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use super::keys::{self, HostEntry};
use super::{AppendOutcome, Shared, StoreError};
use crate::model::{Labels, SeriesSamples};

/// Upper bound on appends per group, so one commit's sled batch stays a
/// bounded amount of memory however far the queue fell behind.
const MAX_GROUP: usize = 1024;

/// One queued append and where to send its outcome.
pub(crate) struct AppendRequest {
    pub host: String,
    /// `None` for unsequenced appends (import, remote write): no host
    /// record, no duplicate check.
    pub seq: Option<u64>,
    pub series: Vec<SeriesSamples>,
    pub reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// The writer loop; returns when every sender is gone (the store closed).
pub(crate) fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<AppendRequest>) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(req) => group.push(req),
                Err(_) => break,
            }
        }
        let outcomes = commit(&shared, &group);
        for (req, outcome) in group.into_iter().zip(outcomes) {
            // The caller may have given up waiting; the data is stored anyway.
            let _ = req.reply.send(outcome);
        }
    }
}

/// Applies and flushes one group; one outcome per request, in order.
fn commit(shared: &Shared, group: &[AppendRequest]) -> Vec<Result<AppendOutcome, StoreError>> {
    if shared.poisoned.load(Ordering::Acquire) {
        // After a failed fsync the kernel may have dropped dirty pages we can
        // no longer tell apart, so nothing more is acknowledged until restart.
        return group.iter().map(|_| Err(poisoned())).collect();
    }
    let now = now_ms();
    let mut batch = sled::Batch::default();
    let mut outcomes: Vec<AppendOutcome> = Vec::with_capacity(group.len());
    let mut new_series: Vec<(u64, Labels)> = Vec::new();
    let mut staged_ids: HashMap<&Labels, u64> = HashMap::new();
    let mut staged_hosts: HashMap<&str, HostEntry> = HashMap::new();

    // Held until the batch is applied so that `record_hello`, which rewrites
    // the same host records, cannot interleave and write back an older seq.
    let mut hosts = shared.hosts.lock().unwrap_or_else(PoisonError::into_inner);
    {
        // Only this thread adds series, so the index cannot change under us;
        // the read lock is released before the (slower) apply.
        let index = shared.index.read().unwrap_or_else(PoisonError::into_inner);
        let mut next_id = index.next_id();
        for req in group {
            let Some(seq) = req.seq else {
                let mut samples = 0;
                for s in &req.series {
                    let id = match index.id_of(&s.labels).or_else(|| staged_ids.get(&s.labels).copied()) {
                        Some(id) => id,
                        None => {
                            let id = next_id;
                            next_id += 1;
                            batch.insert(&keys::series_key(id), keys::encode_labels(&s.labels));
                            staged_ids.insert(&s.labels, id);
                            new_series.push((id, s.labels.clone()));
                            id
                        }
                    };
                    for &(ts, v) in &s.samples {
                        batch.insert(&keys::data_key(id, ts), &keys::encode_value(v));
                    }
                    samples += s.samples.len();
                }
                outcomes.push(AppendOutcome::Stored { samples });
                continue;
            };
            let mut entry = match staged_hosts.get(req.host.as_str()).or_else(|| hosts.get(&req.host)) {
                Some(e) => e.clone(),
                None => HostEntry {
                    record: super::HostRecord {
                        host: req.host.clone(),
                        ..Default::default()
                    },
                    stored_any: false,
                },
            };
            if entry.stored_any && seq <= entry.record.last_seq {
                outcomes.push(AppendOutcome::Duplicate {
                    last_seq: entry.record.last_seq,
                });
                continue;
            }
            let mut samples = 0;
            let mut newest = entry.record.last_sample_ms;
            for s in &req.series {
                let id = match index.id_of(&s.labels).or_else(|| staged_ids.get(&s.labels).copied()) {
                    Some(id) => id,
                    None => {
                        let id = next_id;
                        next_id += 1;
                        batch.insert(&keys::series_key(id), keys::encode_labels(&s.labels));
                        staged_ids.insert(&s.labels, id);
                        new_series.push((id, s.labels.clone()));
                        id
                    }
                };
                for &(ts, v) in &s.samples {
                    batch.insert(&keys::data_key(id, ts), &keys::encode_value(v));
                    newest = newest.max(ts);
                }
                samples += s.samples.len();
            }
            entry.stored_any = true;
            entry.record.last_seq = seq;
            entry.record.last_sample_ms = newest;
            entry.record.last_report_ms = entry.record.last_report_ms.max(now);
            batch.insert(keys::host_key(&req.host), keys::encode_host(&entry));
            staged_hosts.insert(&req.host, entry);
            outcomes.push(AppendOutcome::Stored { samples });
        }
    }

    let wrote = outcomes.iter().any(|o| matches!(o, AppendOutcome::Stored { .. }));
    if wrote {
        if let Err(e) = shared.tree.apply_batch(batch) {
            return group.iter().map(|_| Err(StoreError::Sled(e.clone()))).collect();
        }
        // Only now that the database holds them may memory mention them.
        let mut index = shared.index.write().unwrap_or_else(PoisonError::into_inner);
        for (id, labels) in new_series {
            index.insert(id, labels);
        }
        drop(index);
        for (host, entry) in staged_hosts {
            hosts.insert(host.to_owned(), entry);
        }
    }
    drop(hosts);

    // Duplicates are answered after the flush too: the batch they repeat may
    // be in this very group, not yet durable.
    if wrote {
        if let Err(e) = shared.db.flush() {
            shared.poisoned.store(true, Ordering::Release);
            tracing::error!(error = %e, "store flush failed; refusing further appends until restart");
            return group.iter().map(|_| Err(StoreError::Sled(e.clone()))).collect();
        }
        shared.flushes.fetch_add(1, Ordering::Relaxed);
    }
    outcomes.into_iter().map(Ok).collect()
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
