//! The agent's side of the `hostpulse.v1` stream.
//!
//! A sampling task turns each cycle into a numbered batch and puts it in the
//! spool (bounded, in memory; the oldest batch is dropped and counted when
//! full). A connection task keeps one stream to the collector open, sends
//! every spooled batch the stream has not carried yet, and removes batches
//! from the spool only when the collector acknowledges them as durable.
//! After a reconnect everything unacknowledged is sent again; the collector
//! drops what it already stored. Series are interned once per agent; each
//! stream gets its own small references, defined the first time a stream
//! uses them.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hostpulse_proto::ingest_client::IngestClient;
use hostpulse_proto::{
    AgentMessage, Batch, ErrorCode, Hello, KernelEvent, Label, SeriesDefinition, agent_message, collector_message,
};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::transport::Endpoint;

use crate::config::Settings;
use crate::inventory::Inventory;
use crate::sampler::{Cycle, Sampler};

/// Figures about the client, readable while it runs (tests and the
/// collector's local agent use them).
#[derive(Debug, Default)]
pub struct ClientStatus {
    /// Highest sequence number the collector acknowledged.
    pub acked_seq: AtomicU64,
    /// Last sequence number produced.
    pub produced_seq: AtomicU64,
    /// Cycles sampled.
    pub cycles: AtomicU64,
    /// Batches dropped because the spool was full.
    pub dropped_batches: AtomicU64,
    /// Batches the collector rejected as malformed (never resent).
    pub rejected_batches: AtomicU64,
    /// Whether a stream is open right now.
    pub connected: AtomicBool,
}

/// Identity of one series within this agent process.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    name: String,
    labels: Vec<(String, String)>,
}

/// Interned series: a dense id per distinct series.
#[derive(Default)]
struct SeriesTable {
    keys: Vec<Arc<SeriesKey>>,
    index: HashMap<Arc<SeriesKey>, u32>,
}

impl SeriesTable {
    fn intern(&mut self, name: &str, labels: &[(String, String)]) -> u32 {
        let key = SeriesKey {
            name: name.to_string(),
            labels: labels.to_vec(),
        };
        if let Some(id) = self.index.get(&key) {
            return *id;
        }
        let id = self.keys.len() as u32;
        let key = Arc::new(key);
        self.keys.push(key.clone());
        self.index.insert(key, id);
        id
    }
}

/// One cycle waiting for acknowledgement.
#[derive(Clone, Debug)]
struct PendingBatch {
    seq: u64,
    timestamp_ms: i64,
    series: Vec<u32>,
    values: Vec<f64>,
    events: Vec<crate::emit::KernelEvent>,
}

/// Batches not yet acknowledged, oldest first.
struct Spool {
    batches: VecDeque<PendingBatch>,
    max: usize,
}

impl Spool {
    /// Adds a batch; returns how many old batches were dropped to make room.
    fn push(&mut self, batch: PendingBatch) -> u64 {
        let mut dropped = 0;
        while self.batches.len() >= self.max {
            self.batches.pop_front();
            dropped += 1;
        }
        self.batches.push_back(batch);
        dropped
    }

    /// Removes every batch up to and including `seq`.
    fn ack(&mut self, seq: u64) {
        while self.batches.front().is_some_and(|b| b.seq <= seq) {
            self.batches.pop_front();
        }
    }

    fn remove(&mut self, seq: u64) {
        self.batches.retain(|b| b.seq != seq);
    }
}

/// Hands out batch sequence numbers that only grow, also across restarts:
/// they start above both the last one persisted in the state directory and
/// the wall clock in milliseconds (a batch is never made more often than
/// once a millisecond, so a restarted agent without state still starts above
/// anything it sent before, unless the clock went backwards).
struct SeqSource {
    next: u64,
    state_file: Option<PathBuf>,
}

impl SeqSource {
    fn new(state_dir: Option<PathBuf>) -> Self {
        let state_file = state_dir.map(|d| d.join("seq"));
        let persisted = state_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let clock = crate::sampler::now_ms().max(0) as u64;
        SeqSource {
            next: persisted.saturating_add(1).max(clock),
            state_file,
        }
    }

    fn take(&mut self) -> u64 {
        let seq = self.next;
        self.next += 1;
        if let Some(f) = &self.state_file {
            let tmp = f.with_extension("tmp");
            let written = std::fs::write(&tmp, seq.to_string()).and_then(|()| std::fs::rename(&tmp, f));
            if let Err(e) = written {
                tracing::debug!(file = %f.display(), error = %e, "cannot persist sequence number");
            }
        }
        seq
    }
}

struct Shared {
    table: Mutex<SeriesTable>,
    spool: Mutex<Spool>,
    new_batch: Notify,
    status: Arc<ClientStatus>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent (each
    // critical section is a single push/pop), so recover from poisoning.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why the client stopped or a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The collector URL is not usable.
    #[error("collector URL {url:?}: {message}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// Connecting or the stream failed.
    #[error("collector {url}: {message}")]
    Stream {
        /// The URL.
        url: String,
        /// What happened.
        message: String,
    },
}

/// Runs sampling and streaming until `shutdown` becomes true.
pub async fn run(
    settings: Settings,
    sampler: Sampler,
    inventory: Inventory,
    status: Arc<ClientStatus>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ClientError> {
    let endpoint = Endpoint::from_shared(settings.collector.clone())
        .map_err(|e| ClientError::BadUrl {
            url: settings.collector.clone(),
            message: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let shared = Arc::new(Shared {
        table: Mutex::new(SeriesTable::default()),
        spool: Mutex::new(Spool {
            batches: VecDeque::new(),
            max: settings.max_pending_batches,
        }),
        new_batch: Notify::new(),
        status,
    });
    let sampling = tokio::spawn(sample_loop(
        sampler,
        settings.interval,
        SeqSource::new(settings.state_dir.clone()),
        shared.clone(),
        shutdown.clone(),
    ));
    let host = settings.host.clone().unwrap_or_else(|| inventory.hostname.clone());
    let host = if host.is_empty() { "localhost".to_string() } else { host };
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut failures = 0u32;
    while !*shutdown.borrow() {
        let outcome = stream_once(
            &endpoint,
            &settings,
            &host,
            &inventory,
            &shared,
            &mut shutdown,
            &mut backoff,
        )
        .await;
        shared.status.connected.store(false, Ordering::Relaxed);
        match outcome {
            Ok(()) => break,
            Err(e) => {
                failures += 1;
                let wait = backoff.next_delay();
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(error = %e, retry_in = ?wait, failures, "collector unreachable; sampling continues and batches are kept");
                }
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
    let _ = sampling.await;
    Ok(())
}

async fn sample_loop(
    mut sampler: Sampler,
    interval: Duration,
    mut seqs: SeqSource,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        let joined = tokio::task::spawn_blocking(move || {
            let cycle = sampler.sample();
            (sampler, cycle)
        })
        .await;
        let cycle;
        (sampler, cycle) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(error = %e, "sampling task failed; agent stops sampling");
                return;
            }
        };
        let batch = intern_cycle(&shared, seqs.take(), cycle);
        let seq = batch.seq;
        let dropped = lock(&shared.spool).push(batch);
        let status = &shared.status;
        status.cycles.fetch_add(1, Ordering::Relaxed);
        status.produced_seq.store(seq, Ordering::Relaxed);
        if dropped > 0 {
            status.dropped_batches.fetch_add(dropped, Ordering::Relaxed);
            tracing::warn!(dropped, "spool full: oldest unacknowledged batches dropped");
        }
        shared.new_batch.notify_one();
    }
}

fn intern_cycle(shared: &Shared, seq: u64, cycle: Cycle) -> PendingBatch {
    let mut table = lock(&shared.table);
    let mut series = Vec::with_capacity(cycle.samples.len());
    let mut values = Vec::with_capacity(cycle.samples.len());
    for s in &cycle.samples {
        series.push(table.intern(&s.name, &s.labels));
        values.push(s.value);
    }
    PendingBatch {
        seq,
        timestamp_ms: cycle.timestamp_ms,
        series,
        values,
        events: cycle.events,
    }
}

/// Capped exponential backoff with jitter (each delay is drawn between half
/// and all of the current step, so a fleet that lost its collector does not
/// reconnect in lockstep).
struct Backoff {
    base: Duration,
    cap: Duration,
    step: Duration,
}

impl Backoff {
    fn new(base: Duration, cap: Duration) -> Self {
        Backoff { base, cap, step: base }
    }

    fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.cap);
        let half = step / 2;
        half + step.mul_f64(rand::random::<f64>() * 0.5)
    }

    fn reset(&mut self) {
        self.step = self.base;
    }
}

async fn stream_once(
    endpoint: &Endpoint,
    settings: &Settings,
    host: &str,
    inventory: &Inventory,
    shared: &Shared,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Result<(), ClientError> {
    let url = settings.collector.clone();
    let fail = |message: String| ClientError::Stream {
        url: url.clone(),
        message,
    };
    let channel = endpoint.connect().await.map_err(|e| fail(source_chain(&e)))?;
    let mut client = IngestClient::new(channel)
        .send_compressed(CompressionEncoding::Zstd)
        .accept_compressed(CompressionEncoding::Zstd)
        .accept_compressed(CompressionEncoding::Gzip);
    let (tx, rx) = mpsc::channel::<AgentMessage>(16);
    let first_unacked_seq = lock(&shared.spool).batches.front().map_or(0, |b| b.seq);
    let hello = Hello {
        host: host.to_string(),
        machine_id: inventory.machine_id.clone(),
        boot_id: inventory.boot_id.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        inventory: Some(inventory.to_proto()),
        first_unacked_seq,
        interval_ms: settings.interval.as_millis() as u64,
    };
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Hello(hello)),
    })
    .await
    .map_err(|_| fail("stream closed before hello".into()))?;
    let mut inbound = client
        .stream(ReceiverStream::new(rx))
        .await
        .map_err(|s| fail(status_text(&s)))?
        .into_inner();
    shared.status.connected.store(true, Ordering::Relaxed);
    tracing::info!(collector = %url, host, "stream open");

    let mut refs: HashMap<u32, u32> = HashMap::new();
    let mut last_sent = 0u64;
    loop {
        let unsent: Vec<PendingBatch> = lock(&shared.spool)
            .batches
            .iter()
            .filter(|b| b.seq > last_sent)
            .cloned()
            .collect();
        for batch in unsent {
            let msg = encode(&batch, &mut refs, shared);
            tx.send(msg)
                .await
                .map_err(|_| fail("stream closed by collector".into()))?;
            last_sent = batch.seq;
        }
        tokio::select! {
            () = shared.new_batch.notified() => {}
            msg = inbound.message() => match msg {
                Ok(Some(m)) => match m.kind {
                    Some(collector_message::Kind::Ack(ack)) => {
                        lock(&shared.spool).ack(ack.seq);
                        shared.status.acked_seq.fetch_max(ack.seq, Ordering::Relaxed);
                        backoff.reset();
                    }
                    Some(collector_message::Kind::Error(err)) => {
                        let code = ErrorCode::try_from(err.code).unwrap_or(ErrorCode::Unspecified);
                        if code == ErrorCode::BadBatch || code == ErrorCode::Limit {
                            // Resending would be refused forever; drop it.
                            lock(&shared.spool).remove(err.seq);
                            shared.status.rejected_batches.fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::warn!(code = code.as_str_name(), seq = err.seq, fatal = err.fatal, "collector: {}", err.message);
                        if err.fatal {
                            return Err(fail(format!("{}: {}", code.as_str_name(), err.message)));
                        }
                    }
                    Some(collector_message::Kind::Settings(s)) => {
                        tracing::debug!(interval_ms = s.interval_ms, "collector settings received (not applied yet)");
                    }
                    None => {}
                },
                Ok(None) => return Err(fail("stream ended by collector".into())),
                Err(s) => return Err(fail(status_text(&s))),
            },
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return Ok(());
                }
            }
        }
    }
}

fn encode(batch: &PendingBatch, refs: &mut HashMap<u32, u32>, shared: &Shared) -> AgentMessage {
    let table = lock(&shared.table);
    let mut new_series = Vec::new();
    let mut wire_refs = Vec::with_capacity(batch.series.len());
    for id in &batch.series {
        let next = refs.len() as u32 + 1;
        let r = *refs.entry(*id).or_insert_with(|| {
            let key = &table.keys[*id as usize];
            new_series.push(SeriesDefinition {
                r#ref: next,
                name: key.name.clone(),
                labels: key
                    .labels
                    .iter()
                    .map(|(n, v)| Label {
                        name: n.clone(),
                        value: v.clone(),
                    })
                    .collect(),
            });
            next
        });
        wire_refs.push(r);
    }
    AgentMessage {
        kind: Some(agent_message::Kind::Batch(Batch {
            seq: batch.seq,
            new_series,
            base_timestamp_ms: batch.timestamp_ms,
            refs: wire_refs,
            timestamp_deltas_ms: Vec::new(),
            values: batch.values.clone(),
            events: batch
                .events
                .iter()
                .map(|e| KernelEvent {
                    timestamp_ms: e.timestamp_ms,
                    kind: e.kind.clone(),
                    device: e.device.clone(),
                    message: e.message.clone(),
                })
                .collect(),
        })),
    }
}

fn status_text(s: &tonic::Status) -> String {
    if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        format!("{:?}: {}", s.code(), s.message())
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn batch(seq: u64) -> PendingBatch {
        PendingBatch {
            seq,
            timestamp_ms: 0,
            series: vec![],
            values: vec![],
            events: vec![],
        }
    }

    #[test]
    fn spool_drops_oldest_and_acks_cumulatively() {
        let mut spool = Spool {
            batches: VecDeque::new(),
            max: 3,
        };
        for seq in 1..=3 {
            assert_eq!(spool.push(batch(seq)), 0);
        }
        assert_eq!(spool.push(batch(4)), 1);
        spool.ack(3);
        assert_eq!(spool.batches.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn sequence_numbers_resume_above_persisted_state() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("seq"), (u64::MAX / 2).to_string()).unwrap();
        let mut seqs = SeqSource::new(Some(dir.path().to_path_buf()));
        assert_eq!(seqs.take(), u64::MAX / 2 + 1);
        let mut again = SeqSource::new(Some(dir.path().to_path_buf()));
        assert_eq!(again.take(), u64::MAX / 2 + 2);
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[7] >= Duration::from_millis(500) && delays[7] <= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn each_stream_defines_a_series_once() {
        let shared = Shared {
            table: Mutex::new(SeriesTable::default()),
            spool: Mutex::new(Spool {
                batches: VecDeque::new(),
                max: 4,
            }),
            new_batch: Notify::new(),
            status: Arc::default(),
        };
        let id = lock(&shared.table).intern("node_load1", &[]);
        let b = PendingBatch {
            seq: 1,
            timestamp_ms: 5,
            series: vec![id],
            values: vec![0.5],
            events: vec![],
        };
        let mut refs = HashMap::new();
        let Some(agent_message::Kind::Batch(first)) = encode(&b, &mut refs, &shared).kind else {
            panic!()
        };
        let Some(agent_message::Kind::Batch(second)) = encode(&b, &mut refs, &shared).kind else {
            panic!()
        };
        assert_eq!(first.new_series.len(), 1);
        assert!(second.new_series.is_empty());
        assert_eq!(first.refs, second.refs);
    }
}
