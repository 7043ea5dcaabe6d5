//! A simulated fleet of agents speaking the real ingest protocol
//! (`hostpulse.v1.Ingest/Stream`), and the read-back that proves what the
//! collector acknowledged is stored exactly once.
//!
//! Each simulated agent is one task with its own connection. It makes one
//! batch per interval whose samples are a pure function of (series, seq) and
//! whose timestamps are a pure function of seq, keeps every batch until an
//! `Ack` covers it, and after any failure (refused connection, reset stream,
//! `STORAGE`/`OVERLOADED` error, collector killed) reconnects with capped
//! exponential backoff and full jitter and resends everything unacknowledged,
//! as the real agent's spool does. Because the content is deterministic,
//! [`verify`] can read everything back through the Prometheus query API and
//! say, per sample, whether it is present, missing or stored twice.
//!
//! Like the real agent, a simulated agent sends compact sample columns
//! (`hostpulse_proto::columns`, one encoder per stream) to a collector that
//! announces them, and plain ones otherwise.
//!
//! This file is the `fleet` module of the `hostpulse-loadgen` binary and is
//! also compiled into the chaos end-to-end test (`tests/tests/e2e/chaos.rs`)
//! by path, so the benchmark and the CI chaos suite drive the collector with
//! the same code.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hostpulse_proto::columns::{self, StreamEncoder};
use hostpulse_proto::ingest_client::IngestClient;
use hostpulse_proto::{
    AgentMessage, Batch, CollectorMessage, ErrorCode, Hello, Label, SeriesDefinition, agent_message, collector_message,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::transport::Endpoint;

/// Metric name of every simulated series.
pub const METRIC: &str = "loadgen_sample";

/// Messages queued on one request stream before the agent waits for the
/// transport; small, so a dead connection holds little.
const REQUEST_QUEUE: usize = 16;
/// First reconnect delay; doubles up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(50);
/// Longest reconnect delay. Short, because the chaos suite restarts
/// collectors within seconds and measures how fast agents come back.
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// What the fleet sends and where.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// The collector's gRPC URL (`http://127.0.0.1:9471`).
    pub collector: String,
    /// Simulated agents, each with its own connection and host name.
    pub agents: usize,
    /// Series per agent; every batch carries one sample of each.
    pub series: u32,
    /// Time between batches of one agent (and between their timestamps).
    pub interval: Duration,
    /// How long agents make batches; `duration / interval` batches each.
    pub duration: Duration,
    /// How long after `duration` agents keep trying to get the rest
    /// acknowledged before giving up.
    pub drain: Duration,
    /// Host names are `{host_prefix}-{index:05}`; unique per run, so a
    /// collector that already stored a run's hosts is never confused.
    pub host_prefix: String,
    /// Timestamp of seq 0, ms since the epoch; seq `n` is at
    /// `t0_ms + n * interval`.
    pub t0_ms: i64,
}

impl FleetConfig {
    /// Host name of agent `index`.
    pub fn host(&self, index: usize) -> String {
        format!("{}-{index:05}", self.host_prefix)
    }

    /// Batches each agent makes.
    pub fn batches(&self) -> u64 {
        let interval = self.interval.as_millis().max(1);
        u64::try_from(self.duration.as_millis() / interval).unwrap_or(u64::MAX)
    }

    fn interval_ms(&self) -> i64 {
        i64::try_from(self.interval.as_millis()).unwrap_or(i64::MAX).max(1)
    }

    /// Timestamp of every sample of batch `seq`.
    pub fn timestamp(&self, seq: u64) -> i64 {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        self.t0_ms.saturating_add(seq.saturating_mul(self.interval_ms()))
    }

    /// The batch `seq` would carry the sample of, for a timestamp; `None`
    /// when no batch has that timestamp.
    fn seq_of(&self, ts_ms: i64) -> Option<u64> {
        let offset = ts_ms.checked_sub(self.t0_ms)?;
        if offset % self.interval_ms() != 0 {
            return None;
        }
        u64::try_from(offset / self.interval_ms()).ok()
    }
}

/// Value of series `series` in batch `seq`: distinct for every pair and
/// exact in an f64, so a sample read back names the batch it came from.
pub fn value(series: u32, seq: u64) -> f64 {
    seq as f64 * 1000.0 + f64::from(series)
}

/// Counters the agents update while they run, for progress and reports.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// Batches acknowledged (summed over agents; an ack covering several
    /// batches counts each).
    pub acked_batches: AtomicU64,
    /// Streams opened (one per successful connect + Hello).
    pub streams: AtomicU64,
    /// Connects that failed and streams that ended with an error.
    pub failures: AtomicU64,
    /// Batches sent again on a new stream after a failure.
    pub resent_batches: AtomicU64,
    /// Typed errors the collector sent, any code.
    pub collector_errors: AtomicU64,
    /// Streams the collector shed (an `OVERLOADED` error, then
    /// `RESOURCE_EXHAUSTED`), counted once per stream.
    pub shed: AtomicU64,
}

/// How one agent ended.
#[derive(Clone, Debug, Default)]
pub struct AgentReport {
    /// Its host name.
    pub host: String,
    /// Highest seq the collector acknowledged: every batch up to it is
    /// durable.
    pub acked_seq: u64,
    /// Batches made.
    pub made: u64,
    /// Batches the collector refused outright (bad batch, limit); never
    /// acknowledged, so not counted as lost.
    pub refused: u64,
    /// Milliseconds from sending a batch to the ack covering it, for batches
    /// acked on the stream they were sent on.
    pub ack_latencies_ms: Vec<u32>,
}

/// Runs the whole fleet to its end and returns one report per agent.
pub async fn run(cfg: Arc<FleetConfig>, stats: Arc<FleetStats>) -> Vec<AgentReport> {
    let mut tasks = Vec::with_capacity(cfg.agents);
    for index in 0..cfg.agents {
        let (cfg, stats) = (Arc::clone(&cfg), Arc::clone(&stats));
        tasks.push(tokio::spawn(async move { run_agent(&cfg, index, &stats).await }));
    }
    let mut reports = Vec::with_capacity(tasks.len());
    for task in tasks {
        // A panicking agent task is a bug in this file; report it as an
        // agent that acknowledged nothing rather than hide it.
        reports.push(task.await.unwrap_or_default());
    }
    reports
}

/// One batch an agent still holds.
struct Pending {
    seq: u64,
    /// When it was sent on the current stream; `None` while unsent there.
    sent: Option<Instant>,
}

/// What the reader task of a stream reports to its agent.
enum Event {
    Message(CollectorMessage),
    Ended(Option<tonic::Status>),
}

/// An open stream.
struct Conn {
    /// Distinguishes this stream's events from a previous one's.
    id: u64,
    tx: mpsc::Sender<AgentMessage>,
    /// Whether the series definitions went out on this stream yet.
    defined: bool,
    /// This stream's compact-column encoder, when the collector takes them.
    encoder: Option<StreamEncoder>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn run_agent(cfg: &FleetConfig, index: usize, stats: &FleetStats) -> AgentReport {
    let host = cfg.host(index);
    let total = cfg.batches();
    let start = Instant::now();
    let give_up = start + cfg.duration + cfg.drain;
    let mut report = AgentReport {
        host: host.clone(),
        ..Default::default()
    };
    let mut backoff = Backoff::new(index as u64);
    // Agents start spread over one interval, as real ones do.
    let phase = cfg.interval.mul_f64(index as f64 / cfg.agents.max(1) as f64);
    let mut ticker = tokio::time::interval_at(start + phase, cfg.interval);
    // A late tick still makes its batch: the count stays exact.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (events_tx, mut events) = mpsc::channel::<(u64, Event)>(64);
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut next_seq = 1u64;
    let mut conn: Option<Conn> = None;
    let mut conn_ids = 0u64;
    let mut retry_at = start;
    let mut logged: Vec<i32> = Vec::new();

    loop {
        if next_seq > total && pending.is_empty() {
            break;
        }
        if conn.is_none() && Instant::now() >= retry_at {
            conn_ids += 1;
            let first_unacked = pending.front().map_or(0, |p| p.seq);
            match open(cfg, &host, first_unacked, conn_ids, events_tx.clone()).await {
                Ok(c) => {
                    stats.streams.fetch_add(1, Ordering::Relaxed);
                    let resent = pending.iter().filter(|p| p.sent.is_some()).count();
                    stats.resent_batches.fetch_add(resent as u64, Ordering::Relaxed);
                    for p in &mut pending {
                        p.sent = None;
                    }
                    conn = Some(c);
                }
                Err(_) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    retry_at = Instant::now() + backoff.next_delay();
                }
            }
        }
        let unsent = pending.iter().position(|p| p.sent.is_none());
        let sender = conn.as_ref().filter(|_| unsent.is_some()).map(|c| c.tx.clone());
        tokio::select! {
            _ = ticker.tick(), if next_seq <= total => {
                pending.push_back(Pending { seq: next_seq, sent: None });
                report.made = next_seq;
                next_seq += 1;
            }
            permit = reserve(sender) => {
                let (Some(permit), Some(i), Some(c)) = (permit, unsent, conn.as_mut()) else {
                    // The stream's request side closed (the collector ended
                    // the stream). Waiting here for the reader to say why
                    // spun this loop — the closed side is ready at once —
                    // which, across a shed fleet, starved the runtime
                    // (190% CPU, nothing sent); the stream is over, so
                    // reconnect after backing off like any broken stream.
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                    retry_at = Instant::now() + backoff.next_delay();
                    continue;
                };
                let seq = pending[i].seq;
                let mut msg = batch(cfg, seq, !c.defined);
                if let (Some(encoder), Some(agent_message::Kind::Batch(b))) = (c.encoder.as_mut(), msg.kind.as_mut()) {
                    encoder.encode(b);
                }
                permit.send(msg);
                c.defined = true;
                pending[i].sent = Some(Instant::now());
            }
            Some((id, event)) = events.recv() => {
                if conn.as_ref().map(|c| c.id) != Some(id) {
                    continue;
                }
                let broken = match event {
                    Event::Message(m) => match m.kind {
                        Some(collector_message::Kind::Ack(ack)) => {
                            if ack.seq > report.acked_seq {
                                // Only progress resets the backoff: a new
                                // stream's first ack (what was already
                                // durable) says nothing about room at the
                                // collector, and resetting on it had a shed
                                // fleet reconnecting every few tens of ms.
                                backoff.reset();
                                stats.acked_batches.fetch_add(ack.seq - report.acked_seq, Ordering::Relaxed);
                                report.acked_seq = ack.seq;
                            }
                            let now = Instant::now();
                            while pending.front().is_some_and(|p| p.seq <= ack.seq) {
                                if let Some(Pending { sent: Some(at), .. }) = pending.pop_front() {
                                    let ms = now.saturating_duration_since(at).as_millis();
                                    report.ack_latencies_ms.push(u32::try_from(ms).unwrap_or(u32::MAX));
                                }
                            }
                            false
                        }
                        Some(collector_message::Kind::Error(e)) => {
                            stats.collector_errors.fetch_add(1, Ordering::Relaxed);
                            if !logged.contains(&e.code) {
                                logged.push(e.code);
                                eprintln!("loadgen: {host}: collector error {:?}: {}", ErrorCode::try_from(e.code), e.message);
                            }
                            match ErrorCode::try_from(e.code) {
                                Ok(ErrorCode::BadBatch | ErrorCode::Limit) => {
                                    // Resending cannot help; the batch is dropped, not lost.
                                    let before = pending.len();
                                    pending.retain(|p| p.seq != e.seq);
                                    report.refused += (before - pending.len()) as u64;
                                    e.fatal
                                }
                                Ok(ErrorCode::SampleRejected) => e.fatal,
                                Ok(ErrorCode::Overloaded) => {
                                    // The stream ends next with RESOURCE_EXHAUSTED,
                                    // which this agent no longer reads.
                                    stats.shed.fetch_add(1, Ordering::Relaxed);
                                    true
                                }
                                _ => true,
                            }
                        }
                        Some(collector_message::Kind::Settings(_)) | None => false,
                    },
                    Event::Ended(status) => {
                        if status.is_some_and(|s| s.code() == tonic::Code::ResourceExhausted) {
                            stats.shed.fetch_add(1, Ordering::Relaxed);
                        }
                        true
                    }
                };
                if broken {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                    retry_at = Instant::now() + backoff.next_delay();
                }
            }
            _ = tokio::time::sleep_until(retry_at), if conn.is_none() => {}
            _ = tokio::time::sleep_until(give_up) => break,
        }
    }
    report
}

/// A send slot on `sender`'s stream, or never when there is nothing to send.
async fn reserve(sender: Option<mpsc::Sender<AgentMessage>>) -> Option<mpsc::OwnedPermit<AgentMessage>> {
    match sender {
        Some(tx) => tx.reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}

/// Connects, opens a stream and sends the Hello; a reader task forwards
/// what the collector answers as events tagged with `id`.
async fn open(
    cfg: &FleetConfig,
    host: &str,
    first_unacked_seq: u64,
    id: u64,
    events: mpsc::Sender<(u64, Event)>,
) -> Result<Conn, tonic::Status> {
    let endpoint = Endpoint::from_shared(cfg.collector.clone())
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    let channel = tokio::time::timeout(Duration::from_secs(5), endpoint.connect())
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("connect timed out"))?
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    // The same compression the real agent uses, so the bytes are comparable.
    let mut client = IngestClient::new(channel)
        .send_compressed(CompressionEncoding::Zstd)
        .accept_compressed(CompressionEncoding::Zstd)
        .accept_compressed(CompressionEncoding::Gzip);
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
    let hello = AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            host: host.to_owned(),
            machine_id: format!("loadgen-{host}"),
            agent_version: "loadgen".into(),
            first_unacked_seq,
            interval_ms: u64::try_from(cfg.interval.as_millis()).unwrap_or(u64::MAX),
            ..Default::default()
        })),
    };
    tx.send(hello)
        .await
        .map_err(|_| tonic::Status::internal("request stream closed"))?;
    let response = tokio::time::timeout(Duration::from_secs(5), client.stream(ReceiverStream::new(rx)))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("stream open timed out"))??;
    let compact = response
        .metadata()
        .get(columns::ENCODINGS_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(columns::announces_compact);
    let mut inbound = response.into_inner();
    let reader = tokio::spawn(async move {
        loop {
            let event = match inbound.message().await {
                Ok(Some(m)) => Event::Message(m),
                Ok(None) => Event::Ended(None),
                Err(status) => Event::Ended(Some(status)),
            };
            let ended = matches!(event, Event::Ended(_));
            if events.send((id, event)).await.is_err() || ended {
                return;
            }
        }
    });
    Ok(Conn {
        id,
        tx,
        defined: false,
        encoder: compact.then(StreamEncoder::new),
        reader,
    })
}

/// Batch `seq`: one sample of every series at the batch's timestamp,
/// carrying the series definitions when it is the first on its stream.
pub fn batch(cfg: &FleetConfig, seq: u64, define: bool) -> AgentMessage {
    let new_series = if define {
        (0..cfg.series)
            .map(|s| SeriesDefinition {
                r#ref: s + 1,
                name: METRIC.into(),
                labels: vec![Label {
                    name: "s".into(),
                    value: s.to_string(),
                }],
            })
            .collect()
    } else {
        Vec::new()
    };
    AgentMessage {
        kind: Some(agent_message::Kind::Batch(Batch {
            seq,
            new_series,
            base_timestamp_ms: cfg.timestamp(seq),
            refs: (1..=cfg.series).collect(),
            timestamp_deltas_ms: Vec::new(),
            values: (0..cfg.series).map(|s| value(s, seq)).collect(),
            events: Vec::new(),
            ..Default::default()
        })),
    }
}

/// Capped exponential backoff with full jitter (a delay drawn uniformly from
/// zero to the current step), so a fleet cut off at once does not reconnect
/// at once.
struct Backoff {
    step: Duration,
    rng: u64,
}

impl Backoff {
    fn new(seed: u64) -> Backoff {
        Backoff {
            step: BACKOFF_BASE,
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    fn next_delay(&mut self) -> Duration {
        // xorshift64: enough randomness to spread reconnects.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let fraction = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        let delay = self.step.mul_f64(fraction);
        self.step = (self.step * 2).min(BACKOFF_CAP);
        delay
    }

    fn reset(&mut self) {
        self.step = BACKOFF_BASE;
    }
}

/// What the read-back found, over all agents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Samples in acknowledged batches.
    pub acked: u64,
    /// Samples of the fleet's series the query API returned.
    pub stored: u64,
    /// Acknowledged samples missing or with a wrong value.
    pub lost: u64,
    /// Samples returned more than once for one series and timestamp.
    pub duplicated: u64,
    /// Returned samples that no batch had (wrong timestamp or value).
    pub unexpected: u64,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acked={} stored={} lost={} duplicated={}",
            self.acked, self.stored, self.lost, self.duplicated
        )
    }
}

/// Why the read-back failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The query API could not be reached or answered with an error.
    #[error("query {query}: {reason}")]
    Query {
        /// The PromQL sent.
        query: String,
        /// What went wrong.
        reason: String,
    },
}

/// Reads every agent's series back through `query_url` (the collector's
/// HTTP API) and compares them with what was acknowledged.
pub async fn verify(cfg: &FleetConfig, query_url: &str, reports: &[AgentReport]) -> Result<Verdict, VerifyError> {
    let client = reqwest::Client::new();
    let total = cfg.batches();
    // Evaluate just after the last batch, over a range covering the first.
    let end_ms = cfg.timestamp(total) + 1;
    let range_s = (end_ms - cfg.t0_ms) / 1000 + 2;
    let mut verdict = Verdict::default();
    for report in reports {
        verdict.acked += report.acked_seq * u64::from(cfg.series);
        let query = format!("{METRIC}{{instance=\"{}\"}}[{range_s}s]", report.host);
        let url = format!(
            "{}/api/v1/query?query={}&time={}.{:03}",
            query_url.trim_end_matches('/'),
            percent_encode(&query),
            end_ms / 1000,
            end_ms % 1000
        );
        let fail = |reason: String| VerifyError::Query {
            query: query.clone(),
            reason,
        };
        let response = client.get(&url).send().await.map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| fail(e.to_string()))?;
        if !status.is_success() {
            return Err(fail(format!("HTTP {status}: {body}")));
        }
        let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| fail(e.to_string()))?;
        let samples = parse_matrix(&json).map_err(fail)?;
        check_agent(cfg, report.acked_seq, &samples, &mut verdict);
    }
    Ok(verdict)
}

/// Samples by series index, from a Prometheus `matrix` answer.
type SeriesSamples = BTreeMap<u32, Vec<(i64, f64)>>;

fn parse_matrix(json: &serde_json::Value) -> Result<SeriesSamples, String> {
    let result = json
        .pointer("/data/result")
        .and_then(|r| r.as_array())
        .ok_or_else(|| format!("no data.result in {json}"))?;
    let mut out = SeriesSamples::new();
    for series in result {
        let index = series
            .pointer("/metric/s")
            .and_then(|s| s.as_str())
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| format!("series without an `s` label: {series}"))?;
        let values = series
            .get("values")
            .and_then(|v| v.as_array())
            .ok_or_else(|| format!("series without values: {series}"))?;
        let samples = out.entry(index).or_default();
        for pair in values {
            let ts = pair.get(0).and_then(|t| t.as_f64());
            let v = pair.get(1).and_then(|v| v.as_str()).and_then(|v| v.parse::<f64>().ok());
            let (Some(ts), Some(v)) = (ts, v) else {
                return Err(format!("malformed sample {pair}"));
            };
            samples.push(((ts * 1000.0).round() as i64, v));
        }
    }
    Ok(out)
}

/// Adds one agent's figures to `verdict`.
fn check_agent(cfg: &FleetConfig, acked_seq: u64, samples: &SeriesSamples, verdict: &mut Verdict) {
    for series in 0..cfg.series {
        let mut seen: HashMap<u64, u32> = HashMap::new();
        for &(ts, v) in samples.get(&series).map(Vec::as_slice).unwrap_or_default() {
            verdict.stored += 1;
            match cfg.seq_of(ts) {
                Some(seq) if value(series, seq) == v => *seen.entry(seq).or_default() += 1,
                _ => verdict.unexpected += 1,
            }
        }
        verdict.duplicated += seen.values().map(|&n| u64::from(n.saturating_sub(1))).sum::<u64>();
        verdict.lost += (1..=acked_seq).filter(|seq| !seen.contains_key(seq)).count() as u64;
    }
}

/// Percent-encodes a query parameter (everything but unreserved bytes).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `q`-quantile (0..=1) of latencies in ms, `None` when there are none.
pub fn quantile(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(i).copied()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg() -> FleetConfig {
        FleetConfig {
            collector: "http://127.0.0.1:1".into(),
            agents: 1,
            series: 2,
            interval: Duration::from_millis(200),
            duration: Duration::from_secs(1),
            drain: Duration::from_secs(1),
            host_prefix: "t".into(),
            t0_ms: 1_000_000,
        }
    }

    #[test]
    fn read_back_counts_lost_duplicated_and_unexpected() {
        let c = cfg();
        assert_eq!(c.batches(), 5);
        let mut samples = SeriesSamples::new();
        // Series 0: seqs 1, 2, 2 again, 3; a sample at an odd timestamp.
        samples.insert(
            0,
            vec![
                (c.timestamp(1), value(0, 1)),
                (c.timestamp(2), value(0, 2)),
                (c.timestamp(2), value(0, 2)),
                (c.timestamp(3), value(0, 3)),
                (c.timestamp(3) + 1, 7.0),
            ],
        );
        // Series 1: seq 1 with a wrong value, seq 3.
        samples.insert(1, vec![(c.timestamp(1), 5.0), (c.timestamp(3), value(1, 3))]);
        let mut v = Verdict::default();
        check_agent(&c, 3, &samples, &mut v);
        assert_eq!(v.stored, 7);
        assert_eq!(v.duplicated, 1);
        assert_eq!(v.unexpected, 2);
        // Series 1 lacks seqs 1 (wrong value) and 2.
        assert_eq!(v.lost, 2);
    }

    #[test]
    fn matrix_answers_are_parsed() {
        let json: serde_json::Value = serde_json::from_str(
            r#"{"status":"success","data":{"resultType":"matrix","result":[
                {"metric":{"__name__":"loadgen_sample","s":"1"},"values":[[1000.2,"1001"],[1000.4,"2001"]]}]}}"#,
        )
        .unwrap();
        let m = parse_matrix(&json).unwrap();
        assert_eq!(m[&1], vec![(1_000_200, 1001.0), (1_000_400, 2001.0)]);
        assert!(parse_matrix(&serde_json::json!({"data": {}})).is_err());
    }

    #[test]
    fn backoff_has_full_jitter_and_a_cap() {
        let mut b = Backoff::new(3);
        let delays: Vec<Duration> = (0..40).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= BACKOFF_CAP));
        assert!(delays.iter().any(|d| *d < BACKOFF_CAP / 4), "{delays:?}");
        assert!(delays.iter().any(|d| *d > BACKOFF_CAP / 2), "{delays:?}");
    }

    #[test]
    fn percent_encoding_keeps_promql_intact() {
        assert_eq!(percent_encode("a{b=\"c\"}[5s]"), "a%7Bb%3D%22c%22%7D%5B5s%5D");
    }
}
