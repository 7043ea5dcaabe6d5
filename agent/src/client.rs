//! The agent's side of the `hostpulse.v1` stream.
//!
//! A sampling task turns each cycle into a numbered batch and writes it to
//! the [`Spool`] (on disk in `spool_dir`, or in memory when that directory
//! cannot be used) before anything is sent. A connection task keeps one
//! stream to a collector open and sends what the spool holds, reading it in
//! order through a [`Cursor`] a few batches at a time, so a backlog stays on
//! disk rather than in memory. Batches leave the spool only when the
//! collector acknowledges them as durable; an `Ack` that arrives right
//! after the `Hello` (the collector's last stored sequence number for this
//! host) drops everything it covers before it is resent.
//!
//! Series are interned per process; each stream gets its own small
//! references, defined the first time a stream uses them.
//!
//! The spool keeps plain batches; the sample columns are put into the
//! compact encoding ([`hostpulse_proto::columns`]) only as they are sent,
//! with a [`StreamEncoder`] that lives as long as the stream, so a batch
//! resent on a new stream is coded against that stream alone. Compact
//! batches go only to a collector that announced the encoding in its
//! response headers (older collectors get plain ones), and never again in
//! this process once a collector answered `BAD_ENCODING`.
//!
//! With several collectors the agent orders them by rendezvous hashing of
//! its host id (so a fleet spreads evenly and each host sticks to one), uses
//! the first, moves to the next after [`Settings::failover_after`]
//! consecutive failures, and while on a fallback probes the preferred one
//! every [`Settings::failback_interval`], switching back (after the
//! fallback acknowledged what it was sent) once it answers. Reconnects wait
//! with capped exponential backoff and full jitter.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hostpulse_proto::columns::{self, StreamEncoder};
use hostpulse_proto::ingest_client::IngestClient;
use hostpulse_proto::{AgentMessage, Batch, ErrorCode, Hello, agent_message, collector_message};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::config::{Settings, TlsSettings};
use crate::emit::{MetricMeta, MetricType, Sample, no_labels};
use crate::inventory::Inventory;
use crate::sampler::{Cycle, Sampler};
use crate::spool::{Cursor, Limits, Spool, SpoolError, SpoolStats, SpooledBatch, event_to_wire};

/// Batches read from the spool at once for sending.
const READ_AHEAD: usize = 16;
/// Most rejected sequence numbers remembered (they are skipped on resend).
const MAX_REJECTED: usize = 4096;
/// How long a stream that is being left for the preferred collector waits
/// for the acknowledgement of what it already sent.
const FAILBACK_DRAIN: Duration = Duration::from_secs(5);

/// How batches' sample columns go on the wire (`--wire-encoding`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WireEncoding {
    /// Refs and values as plain protobuf columns; every collector reads them.
    Plain,
    /// The compact encoding, to collectors that announce it; plain to others.
    #[default]
    Compact,
}

impl WireEncoding {
    /// Parses `plain` or `compact`.
    pub fn parse(text: &str) -> Result<WireEncoding, String> {
        match text.trim() {
            "plain" => Ok(WireEncoding::Plain),
            "compact" => Ok(WireEncoding::Compact),
            other => Err(format!("{other:?} is not a wire encoding (plain or compact)")),
        }
    }
}

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
    /// Unacknowledged batches dropped because the spool was full (or a
    /// batch could not be written).
    pub dropped_batches: AtomicU64,
    /// Samples in those batches.
    pub dropped_samples: AtomicU64,
    /// Bytes cut from the spool because they were torn or corrupt.
    pub spool_corrupt_bytes: AtomicU64,
    /// Bytes the spool takes now.
    pub spool_bytes: AtomicU64,
    /// Batches in the spool waiting for acknowledgement now.
    pub spool_batches: AtomicU64,
    /// Whether the spool is on disk (false: in memory, lost on restart).
    pub spool_on_disk: AtomicBool,
    /// Batches the collector rejected as malformed (never resent).
    pub rejected_batches: AtomicU64,
    /// Batches sent with compact sample columns.
    pub compact_batches: AtomicU64,
    /// Whether compact batches were turned off because a collector could
    /// not decode one (plain from then on, until the agent restarts).
    pub compact_refused: AtomicBool,
    /// Whether a stream is open right now.
    pub connected: AtomicBool,
    /// Times the agent moved on to the next collector after failures.
    pub failovers: AtomicU64,
    /// URL of the collector streamed to (or being tried) now.
    pub collector: Mutex<String>,
}

impl ClientStatus {
    fn publish(&self, stats: &SpoolStats) {
        self.dropped_batches.store(stats.dropped_batches, Ordering::Relaxed);
        self.dropped_samples.store(stats.dropped_samples, Ordering::Relaxed);
        self.spool_corrupt_bytes.store(stats.corrupt_bytes, Ordering::Relaxed);
        self.spool_bytes.store(stats.bytes, Ordering::Relaxed);
        self.spool_batches.store(stats.batches, Ordering::Relaxed);
    }
}

/// The client's own series, added to every cycle's batch. The one place
/// that names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SpoolMetric {
    DroppedSamples,
    DroppedBatches,
    CorruptBytes,
    Bytes,
    Batches,
}

impl SpoolMetric {
    const ALL: [SpoolMetric; 5] = [
        SpoolMetric::DroppedSamples,
        SpoolMetric::DroppedBatches,
        SpoolMetric::CorruptBytes,
        SpoolMetric::Bytes,
        SpoolMetric::Batches,
    ];

    fn name(self) -> &'static str {
        match self {
            SpoolMetric::DroppedSamples => "hostpulse_agent_spool_dropped_samples_total",
            SpoolMetric::DroppedBatches => "hostpulse_agent_spool_dropped_batches_total",
            SpoolMetric::CorruptBytes => "hostpulse_agent_spool_corrupt_bytes_total",
            SpoolMetric::Bytes => "hostpulse_agent_spool_bytes",
            SpoolMetric::Batches => "hostpulse_agent_spool_batches",
        }
    }

    fn meta(self) -> MetricMeta {
        let (kind, help) = match self {
            SpoolMetric::DroppedSamples => (
                MetricType::Counter,
                "Unacknowledged samples dropped because the spool was full or could not be written.",
            ),
            SpoolMetric::DroppedBatches => (MetricType::Counter, "Unacknowledged batches dropped from the spool."),
            SpoolMetric::CorruptBytes => (MetricType::Counter, "Bytes cut from the spool as torn or corrupt."),
            SpoolMetric::Bytes => (MetricType::Gauge, "Bytes the spool takes."),
            SpoolMetric::Batches => (MetricType::Gauge, "Batches in the spool waiting for acknowledgement."),
        };
        MetricMeta {
            kind,
            help: help.into(),
        }
    }

    fn value(self, stats: &SpoolStats) -> f64 {
        (match self {
            SpoolMetric::DroppedSamples => stats.dropped_samples,
            SpoolMetric::DroppedBatches => stats.dropped_batches,
            SpoolMetric::CorruptBytes => stats.corrupt_bytes,
            SpoolMetric::Bytes => stats.bytes,
            SpoolMetric::Batches => stats.batches,
        }) as f64
    }
}

/// Adds the spool's figures to a cycle.
fn add_spool_metrics(cycle: &mut Cycle, stats: &SpoolStats) {
    for m in SpoolMetric::ALL {
        cycle.samples.push(Sample {
            name: m.name().into(),
            labels: no_labels(),
            value: m.value(stats),
        });
        cycle.meta.insert(m.name().into(), m.meta());
    }
}

/// Hands out batch sequence numbers that only grow, also across restarts
/// and reboots: each is above the last one persisted in the state file,
/// above everything the spool holds or the collector acknowledged, and
/// above the wall clock in milliseconds at start (a batch is never made
/// more often than once a millisecond, so even an agent that lost its state
/// and spool starts above anything it sent before, unless the clock went
/// backwards).
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

    /// The next number, above `floor` too.
    fn take(&mut self, floor: u64) -> u64 {
        let seq = self.next.max(floor.saturating_add(1));
        self.next = seq.saturating_add(1);
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
    spool: Mutex<Spool>,
    new_batch: Notify,
    status: Arc<ClientStatus>,
    /// Batches the collector refused as malformed: never sent again.
    rejected: Mutex<HashSet<u64>>,
    /// Collector error codes already logged at warn level: each kind is
    /// logged once, later ones at debug, so a sensor that keeps producing
    /// rejected samples does not flood the log every interval.
    logged_codes: Mutex<HashSet<i32>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent in a
    // way that matters more than stopping the agent would, so recover.
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
    /// The spool directory belongs to another running agent.
    #[error("{0}")]
    SpoolLocked(SpoolError),
    /// Connecting or the stream failed.
    #[error("collector {url}: {message}")]
    Stream {
        /// The URL.
        url: String,
        /// What happened.
        message: String,
    },
}

/// The id rendezvous hashing uses: the machine id, else the host name.
pub fn host_id(inventory: &Inventory, host: &str) -> String {
    let machine = inventory.machine_id.trim();
    if machine.is_empty() {
        host.to_string()
    } else {
        machine.to_string()
    }
}

/// Collectors in the order this host uses them: highest rendezvous weight
/// (a hash of host id and URL) first. Every host gets a stable order, hosts
/// spread evenly over the collectors, and removing one collector moves only
/// the hosts that preferred it.
pub fn rendezvous_order(host_id: &str, urls: &[String]) -> Vec<String> {
    let mut scored: Vec<(u64, &String)> = urls.iter().map(|u| (rendezvous_weight(host_id, u), u)).collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().map(|(_, u)| u.clone()).collect()
}

/// FNV-1a over `host_id`, a separator and `url`, then the SplitMix64
/// finaliser to spread the bits (FNV alone is weak in its high bits). Both
/// are fixed algorithms, so the order is the same on every build.
fn rendezvous_weight(host_id: &str, url: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host_id.bytes().chain([0xff]).chain(url.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The gRPC endpoint of one collector: TLS from [`crate::tls`] for
/// `https://` URLs, a connect timeout, and HTTP/2 keepalives (so a dead
/// peer or a silently dropped NAT entry is noticed within ~40 s even while
/// no batch is due).
fn endpoint(url: &str, tls: &TlsSettings) -> Result<Endpoint, ClientError> {
    let bad = |message: String| ClientError::BadUrl {
        url: url.to_string(),
        message,
    };
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if let Some(config) = crate::tls::client_tls(tls, url).map_err(|e| bad(e.to_string()))? {
        endpoint = endpoint.tls_config(config).map_err(|e| bad(source_chain(&e)))?;
    }
    Ok(endpoint)
}

/// Opens the configured spool, or an in-memory one (with one warning) when
/// the directory cannot be used. A directory another agent holds is an
/// error instead: both agents would run, but under one host's sequence
/// numbers, so the collector would drop one's batches as replays.
fn open_spool(dir: Option<PathBuf>, limits: Limits) -> Result<Spool, ClientError> {
    let Some(dir) = dir else {
        return Ok(Spool::in_memory(limits));
    };
    match Spool::open(&dir, limits) {
        Ok(spool) => {
            let stats = spool.stats();
            tracing::info!(dir = %dir.display(), batches = stats.batches, bytes = stats.bytes, "spool opened");
            Ok(spool)
        }
        Err(e @ SpoolError::Locked { .. }) => Err(ClientError::SpoolLocked(e)),
        Err(e) => {
            tracing::warn!(error = %e, "spool directory unusable; unacknowledged batches are kept in memory and lost on restart");
            Ok(Spool::in_memory(limits))
        }
    }
}

/// Runs sampling and streaming until `shutdown` becomes true.
pub async fn run(
    settings: Settings,
    sampler: Sampler,
    inventory: Inventory,
    status: Arc<ClientStatus>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ClientError> {
    let host = settings.host.clone().unwrap_or_else(|| inventory.hostname.clone());
    let host = if host.is_empty() { "localhost".to_string() } else { host };
    let order = rendezvous_order(&host_id(&inventory, &host), &settings.collector_urls());
    let endpoints = order
        .iter()
        .map(|u| endpoint(u, &settings.tls))
        .collect::<Result<Vec<_>, _>>()?;
    let token = crate::tls::load_token(&settings.tls).map_err(|e| ClientError::BadUrl {
        url: settings.collector.clone(),
        message: e.to_string(),
    })?;

    let limits = Limits::new(settings.spool_max_bytes, settings.max_pending_batches);
    let spool_dir = settings.spool_dir.clone();
    let spool = tokio::task::spawn_blocking(move || open_spool(spool_dir, limits))
        .await
        .unwrap_or_else(|_| Ok(Spool::in_memory(limits)))?;
    status.spool_on_disk.store(spool.is_on_disk(), Ordering::Relaxed);
    status.publish(&spool.stats());
    let state_dir = match (&settings.state_dir, spool.is_on_disk()) {
        (Some(d), _) => Some(d.clone()),
        (None, true) => settings.spool_dir.clone(),
        (None, false) => None,
    };
    let shared = Arc::new(Shared {
        spool: Mutex::new(spool),
        new_batch: Notify::new(),
        status,
        rejected: Mutex::new(HashSet::new()),
        logged_codes: Mutex::new(HashSet::new()),
    });
    let sampling = tokio::spawn(sample_loop(
        sampler,
        settings.interval,
        SeqSource::new(state_dir),
        shared.clone(),
        shutdown.clone(),
    ));

    let mut backoff = Backoff::new(
        Duration::from_millis(200),
        settings.reconnect_max_delay.max(Duration::from_millis(200)),
    );
    let mut current = 0usize;
    let mut failures = 0u32;
    let mut unreachable_for = 0u32;
    while !*shutdown.borrow() {
        *lock(&shared.status.collector) = order[current].clone();
        let mut acked = false;
        let outcome = stream_once(
            &endpoints,
            current,
            &settings,
            &host,
            &inventory,
            token.as_ref(),
            &shared,
            &mut shutdown,
            &mut backoff,
            &mut acked,
        )
        .await;
        shared.status.connected.store(false, Ordering::Relaxed);
        let e = match outcome {
            Ok(StreamEnd::Shutdown) => break,
            Ok(StreamEnd::FailBack) => {
                tracing::info!(collector = %order[0], "preferred collector reachable again; switching back");
                current = 0;
                failures = 0;
                backoff.reset();
                continue;
            }
            Err(e) => e,
        };
        failures = if acked { 1 } else { failures + 1 };
        unreachable_for = if acked { 1 } else { unreachable_for + 1 };
        if failures >= settings.failover_after.max(1) && endpoints.len() > 1 {
            let next = (current + 1) % endpoints.len();
            tracing::warn!(from = %order[current], to = %order[next], failures, "failing over to the next collector");
            current = next;
            failures = 0;
            shared.status.failovers.fetch_add(1, Ordering::Relaxed);
            backoff.reset();
        }
        let wait = backoff.next_delay();
        if unreachable_for == 1 || unreachable_for.is_power_of_two() {
            tracing::warn!(error = %e, retry_in = ?wait, failures = unreachable_for, "collector unreachable; sampling continues and batches are kept");
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
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
        let sh = shared.clone();
        // Sampling reads files and spooling fsyncs: both off the runtime.
        let joined = tokio::task::spawn_blocking(move || {
            let cycle = sampler.sample();
            spool_cycle(&sh, &mut seqs, cycle);
            (sampler, seqs)
        })
        .await;
        (sampler, seqs) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(error = %e, "sampling task failed; agent stops sampling");
                return;
            }
        };
        shared.new_batch.notify_one();
    }
}

/// Numbers a cycle and writes it to the spool, with the spool's own figures.
fn spool_cycle(shared: &Shared, seqs: &mut SeqSource, mut cycle: Cycle) {
    let mut spool = lock(&shared.spool);
    let before = spool.stats();
    add_spool_metrics(&mut cycle, &before);
    // Numbered under the spool lock, so an acknowledgement from a
    // collector that knows higher numbers can never slip in between.
    let seq = seqs.take(spool.last_seq());
    let written = spool.append(seq, cycle.timestamp_ms, &cycle.samples, &cycle.events);
    let after = spool.stats();
    drop(spool);
    let status = &shared.status;
    status.cycles.fetch_add(1, Ordering::Relaxed);
    status.produced_seq.store(seq, Ordering::Relaxed);
    status.publish(&after);
    if let Err(e) = written {
        tracing::warn!(seq, error = %e, "batch not spooled; counted as dropped");
    } else if after.dropped_batches > before.dropped_batches {
        // Log the first drop and then at powers of two, not every cycle.
        let total = after.dropped_batches;
        if before.dropped_batches == 0 || (total.is_power_of_two() || before.dropped_batches.ilog2() != total.ilog2()) {
            tracing::warn!(
                dropped_batches = total,
                dropped_samples = after.dropped_samples,
                "spool full: oldest unacknowledged batches dropped"
            );
        }
    }
}

/// Capped exponential backoff with full jitter: each delay is drawn
/// uniformly from [0, step] and the step doubles up to the cap, so a fleet
/// that lost its collector spreads its reconnects over the whole window
/// instead of arriving in waves.
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
        step.mul_f64(rand::random::<f64>())
    }

    fn reset(&mut self) {
        self.step = self.base;
    }
}

/// How a stream ended without an error.
enum StreamEnd {
    /// The agent is shutting down.
    Shutdown,
    /// The preferred collector answers again; reconnect to it.
    FailBack,
}

#[allow(clippy::too_many_arguments)]
async fn stream_once(
    endpoints: &[Endpoint],
    current: usize,
    settings: &Settings,
    host: &str,
    inventory: &Inventory,
    token: Option<&MetadataValue<Ascii>>,
    shared: &Arc<Shared>,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
    acked: &mut bool,
) -> Result<StreamEnd, ClientError> {
    let endpoint = &endpoints[current];
    let url = endpoint.uri().to_string();
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
    let first_unacked_seq = lock(&shared.spool).first_live_seq();
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
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", token.clone());
    }
    let response = client.stream(request).await.map_err(|s| fail(status_text(&s)))?;
    // Compact batches only to a collector that says it reads them, and
    // coded against this stream alone.
    let announced = response
        .metadata()
        .get(columns::ENCODINGS_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(columns::announces_compact);
    let mut encoder = (settings.wire_encoding == WireEncoding::Compact
        && announced
        && !shared.status.compact_refused.load(Ordering::Relaxed))
    .then(StreamEncoder::new);
    let mut inbound = response.into_inner();
    shared.status.connected.store(true, Ordering::Relaxed);
    tracing::info!(collector = %url, host, first_unacked_seq, compact = encoder.is_some(), "stream open");

    // Series id → this stream's reference.
    let mut refs: HashMap<u32, u32> = HashMap::new();
    let mut cursor = Cursor::new();
    let mut outbox: VecDeque<SpooledBatch> = VecDeque::new();
    let mut caught_up = false;
    let mut last_sent = 0u64;
    let mut stream_acked = 0u64;
    let mut failback = (current != 0)
        .then(|| tokio::time::interval_at(Instant::now() + settings.failback_interval, settings.failback_interval));
    let mut probe: Option<tokio::task::JoinHandle<Result<Channel, tonic::transport::Error>>> = None;
    let mut draining_until: Option<Instant> = None;
    loop {
        if outbox.is_empty() && !caught_up && draining_until.is_none() {
            let chunk;
            (cursor, chunk) = read_ahead(shared, cursor).await;
            caught_up = chunk.len() < READ_AHEAD;
            let rejected = lock(&shared.rejected);
            outbox.extend(chunk.into_iter().filter(|b| !rejected.contains(&b.seq)));
        }
        // An acknowledgement (the resume point after the Hello, say) may
        // already cover what was read ahead.
        let floor = lock(&shared.spool).floor();
        while outbox.front().is_some_and(|b| b.seq <= floor) {
            outbox.pop_front();
        }
        let probe_due = probe.is_none() && draining_until.is_none();
        let failback_tick = async {
            match failback.as_mut() {
                Some(tick) if probe_due => {
                    tick.tick().await;
                }
                _ => std::future::pending::<()>().await,
            }
        };
        let probed = async {
            match probe.as_mut() {
                Some(handle) => matches!(handle.await, Ok(Ok(_))),
                None => std::future::pending().await,
            }
        };
        let drained = async {
            match draining_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let mut stopping = false;
        tokio::select! {
            permit = tx.reserve(), if !outbox.is_empty() && draining_until.is_none() => {
                let permit = permit.map_err(|_| fail("stream closed by collector".into()))?;
                if let Some(batch) = outbox.pop_front() {
                    let msg = encode(&batch, &mut refs, &lock(&shared.spool), encoder.as_mut());
                    if encoder.is_some() {
                        shared.status.compact_batches.fetch_add(1, Ordering::Relaxed);
                    }
                    permit.send(msg);
                    last_sent = batch.seq;
                }
            }
            () = shared.new_batch.notified(), if caught_up && outbox.is_empty() => {
                caught_up = false;
            }
            () = failback_tick => {
                let preferred = endpoints[0].clone();
                probe = Some(tokio::spawn(async move { preferred.connect().await }));
            }
            ok = probed => {
                probe = None;
                if ok {
                    if stream_acked >= last_sent {
                        return Ok(StreamEnd::FailBack);
                    }
                    // Let this collector acknowledge what it was sent, so the
                    // preferred one does not store it a second time.
                    draining_until = Some(Instant::now() + FAILBACK_DRAIN);
                }
            }
            () = drained => return Ok(StreamEnd::FailBack),
            msg = inbound.message() => match msg {
                Ok(Some(m)) => match m.kind {
                    Some(collector_message::Kind::Ack(ack)) => {
                        let stats = {
                            let mut spool = lock(&shared.spool);
                            spool.ack(ack.seq);
                            spool.stats()
                        };
                        shared.status.publish(&stats);
                        let before = shared.status.acked_seq.fetch_max(ack.seq, Ordering::Relaxed);
                        stream_acked = stream_acked.max(ack.seq);
                        *acked = true;
                        // Only progress resets the backoff: a new stream's
                        // first ack repeats what is already durable, and a
                        // collector shedding load answers every Hello so,
                        // which would otherwise bring a shed agent back at
                        // the base delay every time.
                        if ack.seq > before {
                            backoff.reset();
                        }
                        if draining_until.is_some() && stream_acked >= last_sent {
                            return Ok(StreamEnd::FailBack);
                        }
                    }
                    Some(collector_message::Kind::Error(err)) => {
                        let code = ErrorCode::try_from(err.code).unwrap_or(ErrorCode::Unspecified);
                        if code == ErrorCode::BadBatch || code == ErrorCode::Limit {
                            // Resending would be refused forever; skip it.
                            let mut rejected = lock(&shared.rejected);
                            if rejected.len() < MAX_REJECTED {
                                rejected.insert(err.seq);
                            }
                            shared.status.rejected_batches.fetch_add(1, Ordering::Relaxed);
                        }
                        if code == ErrorCode::BadEncoding {
                            // The batch was not stored; the next stream
                            // resends it, plain, like everything after it.
                            shared.status.compact_refused.store(true, Ordering::Relaxed);
                        }
                        if lock(&shared.logged_codes).insert(err.code) {
                            tracing::warn!(code = code.as_str_name(), seq = err.seq, fatal = err.fatal, "collector: {} (later errors of this kind are logged at debug level)", err.message);
                        } else {
                            tracing::debug!(code = code.as_str_name(), seq = err.seq, fatal = err.fatal, "collector: {}", err.message);
                        }
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
                stopping = *shutdown.borrow();
            }
        }
        if stopping {
            close_cleanly(tx, &mut inbound).await;
            return Ok(StreamEnd::Shutdown);
        }
    }
}

/// How long a stopping agent waits for the collector to see its stream end.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Ends the request stream and waits (bounded) until the collector has
/// ended its side too. Without this the process can exit before the
/// end-of-stream frame leaves, and the collector sees a dropped connection
/// instead of a goodbye, which it treats as a host that may have died (a
/// planned stop or reboot would then page as a silent host much sooner).
/// Acknowledgements still arriving are left for the next start: anything
/// they cover is resent and dropped by the collector as a replay.
async fn close_cleanly(
    tx: mpsc::Sender<AgentMessage>,
    inbound: &mut tonic::Streaming<hostpulse_proto::CollectorMessage>,
) {
    drop(tx);
    let closed = tokio::time::timeout(CLOSE_GRACE, async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
    if closed.is_err() {
        tracing::debug!("collector did not close the stream in time; exiting anyway");
    }
}

/// Reads the next few batches after `cursor` (file reads, so off the
/// runtime).
async fn read_ahead(shared: &Arc<Shared>, mut cursor: Cursor) -> (Cursor, Vec<SpooledBatch>) {
    let sh = shared.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let mut spool = lock(&sh.spool);
        let mut chunk = Vec::with_capacity(READ_AHEAD);
        while chunk.len() < READ_AHEAD {
            match spool.read_next(&mut cursor) {
                Some(b) => chunk.push(b),
                None => break,
            }
        }
        (cursor, chunk)
    })
    .await;
    // The closure cannot panic short of a bug; starting over from the
    // oldest batch is then the safe way on.
    joined.unwrap_or_else(|_| (Cursor::new(), Vec::new()))
}

/// The wire message for a spooled batch, defining on this stream every
/// series it has not used yet, with compact columns when the stream has an
/// `encoder`.
fn encode(
    batch: &SpooledBatch,
    refs: &mut HashMap<u32, u32>,
    spool: &Spool,
    encoder: Option<&mut StreamEncoder>,
) -> AgentMessage {
    let mut new_series = Vec::new();
    let mut wire_refs = Vec::with_capacity(batch.series.len());
    let mut values = Vec::with_capacity(batch.series.len());
    for (id, value) in batch.series.iter().zip(&batch.values) {
        let r = match refs.get(id) {
            Some(r) => *r,
            None => {
                let Some(key) = spool.series(*id) else {
                    continue;
                };
                let r = refs.len() as u32 + 1;
                refs.insert(*id, r);
                new_series.push(crate::spool::definition(r, key));
                r
            }
        };
        wire_refs.push(r);
        values.push(*value);
    }
    let mut wire = Batch {
        seq: batch.seq,
        new_series,
        base_timestamp_ms: batch.timestamp_ms,
        refs: wire_refs,
        timestamp_deltas_ms: Vec::new(),
        values,
        events: batch.events.iter().map(event_to_wire).collect(),
        compact: None,
    };
    if let Some(encoder) = encoder {
        encoder.encode(&mut wire);
    }
    AgentMessage {
        kind: Some(agent_message::Kind::Batch(wire)),
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

    fn sample(name: &str, value: f64) -> Sample {
        Sample {
            name: name.into(),
            labels: no_labels(),
            value,
        }
    }

    #[test]
    fn sequence_numbers_resume_above_persisted_state() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("seq"), (u64::MAX / 2).to_string()).unwrap();
        let mut seqs = SeqSource::new(Some(dir.path().to_path_buf()));
        assert_eq!(seqs.take(0), u64::MAX / 2 + 1);
        let mut again = SeqSource::new(Some(dir.path().to_path_buf()));
        assert_eq!(again.take(0), u64::MAX / 2 + 2);
        // Above a floor the spool or the collector knows, too.
        assert_eq!(again.take(u64::MAX / 2 + 100), u64::MAX / 2 + 101);
        assert_eq!(again.take(0), u64::MAX / 2 + 102);
    }

    #[test]
    fn full_jitter_backoff_stays_within_zero_and_the_capped_step() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut steps = Vec::new();
        for _ in 0..200 {
            steps.push(b.step);
            let d = b.next_delay();
            assert!(d <= *steps.last().unwrap(), "{d:?} above its step");
        }
        assert_eq!(&steps[..5], &[100, 200, 400, 800, 1000].map(Duration::from_millis));
        assert!(steps.iter().all(|s| *s <= Duration::from_secs(1)));
        // Full jitter: delays use the whole range, not just its upper half.
        let capped: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
        assert!(capped.iter().any(|d| *d < Duration::from_millis(250)), "{capped:?}");
        assert!(capped.iter().any(|d| *d > Duration::from_millis(750)), "{capped:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn rendezvous_order_is_stable_and_differs_per_host() {
        let urls: Vec<String> = (1..=4).map(|i| format!("http://collector-{i}:9471")).collect();
        let a = rendezvous_order("host-a", &urls);
        assert_eq!(a, rendezvous_order("host-a", &urls), "same host, same order");
        let mut reversed = urls.clone();
        reversed.reverse();
        assert_eq!(
            a,
            rendezvous_order("host-a", &reversed),
            "configuration order does not matter"
        );
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, urls, "a permutation of the list");
        // Over many hosts every collector is preferred by some, roughly evenly.
        let mut first = HashMap::new();
        for h in 0..4000 {
            *first
                .entry(rendezvous_order(&format!("host-{h}"), &urls)[0].clone())
                .or_insert(0u32) += 1;
        }
        assert_eq!(first.len(), 4);
        assert!(first.values().all(|n| (800..1200).contains(n)), "{first:?}");
        // Removing a collector only moves the hosts that preferred it.
        let without: Vec<String> = urls[1..].to_vec();
        for h in 0..500 {
            let host = format!("host-{h}");
            let before = rendezvous_order(&host, &urls);
            if before[0] != urls[0] {
                assert_eq!(rendezvous_order(&host, &without)[0], before[0]);
            }
        }
        // The weight is pinned, so the order is the same on every build.
        assert_eq!(rendezvous_weight("", ""), rendezvous_weight("", ""));
        assert_ne!(rendezvous_weight("a", "b"), rendezvous_weight("ab", ""));
    }

    #[test]
    fn host_id_prefers_the_machine_id() {
        let mut inv = Inventory::default();
        assert_eq!(host_id(&inv, "alpha"), "alpha");
        inv.machine_id = "0123abcd\n".into();
        assert_eq!(host_id(&inv, "alpha"), "0123abcd");
    }

    #[test]
    fn each_stream_defines_a_series_once() {
        let mut spool = Spool::in_memory(Limits::new(1 << 20, 10));
        spool.append(1, 5, &[sample("node_load1", 0.5)], &[]).unwrap();
        let mut cursor = Cursor::new();
        let b = spool.read_next(&mut cursor).unwrap();
        let mut refs = HashMap::new();
        let Some(agent_message::Kind::Batch(first)) = encode(&b, &mut refs, &spool, None).kind else {
            panic!()
        };
        let Some(agent_message::Kind::Batch(second)) = encode(&b, &mut refs, &spool, None).kind else {
            panic!()
        };
        assert_eq!(first.new_series.len(), 1);
        assert_eq!(first.new_series[0].name, "node_load1");
        assert!(second.new_series.is_empty());
        assert_eq!(first.refs, second.refs);
        assert_eq!(first.values, vec![0.5]);
    }

    #[test]
    fn compact_batches_decode_to_the_plain_ones() {
        let mut spool = Spool::in_memory(Limits::new(1 << 20, 10));
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        spool
            .append(1, 5, &[sample("node_load1", 0.5), sample("up", 1.0)], &[])
            .unwrap();
        spool
            .append(2, 6, &[sample("node_load1", 0.75), sample("up", stale)], &[])
            .unwrap();
        let mut cursor = Cursor::new();
        let batches = [
            spool.read_next(&mut cursor).unwrap(),
            spool.read_next(&mut cursor).unwrap(),
        ];
        let (mut plain_refs, mut compact_refs) = (HashMap::new(), HashMap::new());
        let mut encoder = StreamEncoder::new();
        let mut decoder = columns::StreamDecoder::new(100);
        for b in &batches {
            let Some(agent_message::Kind::Batch(plain)) = encode(b, &mut plain_refs, &spool, None).kind else {
                panic!()
            };
            let Some(agent_message::Kind::Batch(mut compact)) =
                encode(b, &mut compact_refs, &spool, Some(&mut encoder)).kind
            else {
                panic!()
            };
            assert!(compact.compact.is_some() && compact.values.is_empty());
            decoder.decode(&mut compact).unwrap();
            assert_eq!(compact.refs, plain.refs);
            assert_eq!(compact.new_series, plain.new_series);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&compact.values), bits(&plain.values));
        }
    }

    #[test]
    fn the_wire_encoding_is_a_checked_setting() {
        use crate::config::{FileConfig, Settings};
        let resolve = |v: &str| {
            Settings::resolve(
                FileConfig {
                    wire_encoding: Some(v.into()),
                    ..FileConfig::default()
                },
                FileConfig::default(),
            )
        };
        assert_eq!(Settings::default().wire_encoding, WireEncoding::Compact);
        assert_eq!(resolve("plain").unwrap().wire_encoding, WireEncoding::Plain);
        assert_eq!(resolve("compact").unwrap().wire_encoding, WireEncoding::Compact);
        assert_eq!(
            resolve("zstd").unwrap_err().to_string(),
            "wire_encoding: \"zstd\" is not a wire encoding (plain or compact)"
        );
    }

    #[test]
    fn cycles_carry_the_spool_figures() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared {
            spool: Mutex::new(Spool::in_memory(Limits::new(1 << 20, 2))),
            new_batch: Notify::new(),
            status: Arc::default(),
            rejected: Mutex::default(),
            logged_codes: Mutex::default(),
        };
        let mut seqs = SeqSource::new(Some(dir.path().to_path_buf()));
        for _ in 0..4 {
            let cycle = Cycle {
                timestamp_ms: 1,
                samples: vec![sample("node_load1", 1.0)],
                meta: Default::default(),
                events: vec![],
            };
            spool_cycle(&shared, &mut seqs, cycle);
        }
        // Two batches of 1 + 5 samples were dropped to keep two.
        assert_eq!(shared.status.dropped_batches.load(Ordering::Relaxed), 2);
        assert_eq!(shared.status.dropped_samples.load(Ordering::Relaxed), 12);
        let mut spool = lock(&shared.spool);
        let mut cursor = Cursor::new();
        spool.read_next(&mut cursor).unwrap();
        let last = spool.read_next(&mut cursor).unwrap();
        let dropped = last
            .series
            .iter()
            .zip(&last.values)
            .find(|(id, _)| spool.series(**id).unwrap().name == "hostpulse_agent_spool_dropped_samples_total")
            .map(|(_, v)| *v);
        // The fourth cycle reports the drops made before it was written.
        assert_eq!(dropped, Some(6.0));
    }
}
