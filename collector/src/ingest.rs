//! The gRPC ingest server agents stream to (`hostpulse.v1.Ingest/Stream`).
//!
//! A stream is first authenticated: with mTLS or agent tokens configured,
//! the [`Authenticator`] derives the host from the client certificate or
//! the bearer token, and a stream without a valid credential is refused
//! with `UNAUTHENTICATED` before any message is read.
//!
//! Each stream gets its own task that reads messages in order: a `Hello`
//! first (host name checked against the proved identity, facts recorded in
//! the store), then `Batch`es,
//! each validated by a [`session::Session`] — which owns the stream's series
//! references and the rejection rules — and appended to the [`Store`]. An
//! `Ack` goes back only after the store reports the batch durable, so acks
//! of concurrent streams ride on shared group-commit flushes. Up to
//! [`STREAM_APPENDS_IN_FLIGHT`] batches of a stream are queued for the
//! store at once and acknowledged in seq order as each becomes durable, so
//! a stream is not limited to one batch per round trip; a batch defining
//! series is waited for before the next is prepared (it needs the store's
//! ids), and once one append fails the store refuses the stream's later
//! ones ([`crate::store::AppendFence`]), so nothing is stored past a batch
//! the agent must resend. Generated
//! proto types stop here: the store only sees `crate::model` types.
//!
//! One misbehaving agent must not slow down the others (issue 7): new
//! series are admitted per host at a rate ([`budget::HostRates`], refusing
//! a batch whole), appends take turns at the store's single writer
//! ([`fairness`]), messages arrive as raw frames ([`frames`]) and large
//! ones are decoded — and batches that are expensive to validate are
//! prepared — on the blocking pool, off the workers that serve the other
//! streams, and a host whose batches are refused for good (limits, bad
//! batches) has its streams read no faster than
//! [`IngestLimits::refused_bytes_per_second_per_host`], so sending huge
//! batches that are thrown away costs it time instead of costing everyone
//! the collector's CPU.

pub mod budget;
pub mod fairness;
pub mod frames;
pub mod limits_file;
pub mod session;
pub mod validate;
pub mod wire;

use std::sync::Arc;

use hostpulse_proto::{CollectorMessage, ErrorCode, Hello, agent_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status, Streaming};

use self::budget::{HostRates, InflightBudget};
use self::fairness::WriterFairness;
use self::session::Session;
use crate::auth::{Authenticator, Identity};
use crate::store::{
    AppendFence, AppendOutcome, AppendReport, BatchReport, HostRecord, PendingAppend, SeriesKey, Store, StoreError,
    StreamState,
};
use crate::telemetry::{Counter, Gauge, Telemetry};

/// Limits on what one agent stream may send. Exceeding one is refused with
/// `ERROR_CODE_LIMIT` (or, for message size, a gRPC status) before anything
/// reaches storage.
#[derive(Clone, Debug, PartialEq)]
pub struct IngestLimits {
    /// Largest accepted message after decompression, in bytes.
    pub max_message_bytes: usize,
    /// Series references one stream may define.
    pub max_series_per_stream: usize,
    /// Labels per series definition, not counting the metric name,
    /// `instance` and `job`.
    pub max_labels_per_series: usize,
    /// Longest label value (and metric name), in bytes.
    pub max_label_value_len: usize,
    /// How far ahead of the collector's clock a sample may be, in ms.
    pub max_future_ms: i64,
    /// How far behind the collector's clock a sample may be, in ms. Agents
    /// resend from their spool after an outage, so this is generous.
    pub max_past_ms: i64,
    /// Samples a second one host may store, over all its streams; 0 turns
    /// the limit off. Above it batches are refused with `OVERLOADED` and
    /// the stream ends with `RESOURCE_EXHAUSTED`; the agent resends later.
    pub max_samples_per_second_per_host: f64,
    /// Samples a host may send at once above its rate: an agent replaying
    /// its spool after an outage needs headroom.
    pub sample_burst_per_host: f64,
    /// Series one host may newly define a second (definitions a stream
    /// has not made before), over all its streams; 0 turns the limit off.
    /// Creating a series is the store's most expensive write, done on its
    /// single writer thread, so above it batches are refused with
    /// `OVERLOADED` (nothing of them stored) and the agent resends later.
    pub new_series_per_second_per_host: f64,
    /// New series a host may define at once: a fresh stream redefines all
    /// of its host's series in its first batch. A batch defining more is
    /// refused for good with `LIMIT` (it could never be admitted), so this
    /// is also the most new series one batch may define.
    pub new_series_burst_per_host: f64,
    /// How fast a host's streams are read while it is in debt for batches
    /// refused for good (over a limit, or malformed), in encoded bytes a
    /// second; 0 turns this off. A working agent never gets there (its
    /// refused batches are rare and small, and the burst covers them); an
    /// agent sending one 2 MB batch after another that can never be stored
    /// (issue 7's million-series agent) is read at this pace, so decoding
    /// what is thrown away costs a few percent of a core, not a whole one.
    /// Not in the config file: a safeguard, not a tuning knob.
    pub refused_bytes_per_second_per_host: f64,
    /// Refused bytes a host may send before its streams are slowed down.
    pub refused_bytes_burst_per_host: f64,
    /// Memory that received batches may hold, over all streams, from the
    /// moment their frame arrives until they are durable
    /// (`[ingest] max_inflight_mb`). Three quarters are the in-flight
    /// budget proper: each frame is charged, before it is decoded, what
    /// it will hold decoded and prepared ([`budget::HeapTally`]), an
    /// eighth of it kept for batches that define no series. The last
    /// quarter holds frames waiting, undecoded and in line, for room in
    /// it; a frame that finds both full is refused the same way as a
    /// rate-limited batch, so overload sheds load instead of growing
    /// memory.
    pub max_inflight_bytes: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            max_message_bytes: 16 * 1024 * 1024,
            max_series_per_stream: 100_000,
            max_labels_per_series: 64,
            max_label_value_len: 1024,
            max_future_ms: 10 * 60 * 1000,
            max_past_ms: 7 * 24 * 3600 * 1000,
            // A hardware agent sends ~30 samples/s; this leaves room for
            // large hosts and for replaying a day's spool in minutes.
            max_samples_per_second_per_host: 20_000.0,
            sample_burst_per_host: 200_000.0,
            // A hardware host has a few hundred to a few thousand series;
            // the burst lets its first batch through at once, and the rate
            // lets label churn (a new disk, a renamed interface) pass while
            // a cardinality explosion gets ~500 new series a second.
            new_series_per_second_per_host: 500.0,
            new_series_burst_per_host: 10_000.0,
            refused_bytes_per_second_per_host: 1024.0 * 1024.0,
            refused_bytes_burst_per_host: 4.0 * 1024.0 * 1024.0,
            max_inflight_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The `Ingest` service; cheap to clone (one clone runs each stream).
#[derive(Clone)]
pub struct IngestService {
    store: Store,
    telemetry: Arc<Telemetry>,
    limits: Arc<IngestLimits>,
    auth: Arc<Authenticator>,
    rates: Arc<HostRates>,
    new_series: Arc<HostRates>,
    /// Bytes of batches refused for good, per host (see
    /// [`IngestLimits::refused_bytes_per_second_per_host`]).
    refused: Arc<HostRates>,
    fairness: Arc<WriterFairness>,
    inflight: InflightBudget,
    /// Room for frames waiting for the in-flight budget, in their bytes.
    waiting: InflightBudget,
}

impl IngestService {
    /// A service storing into `store` and counting into `telemetry`, which
    /// trusts each stream's `Hello` to name its host (plaintext on loopback)
    /// until [`IngestService::with_authenticator`] says otherwise.
    pub fn new(store: Store, telemetry: Arc<Telemetry>, limits: IngestLimits) -> Self {
        IngestService {
            inflight: InflightBudget::new(limits.max_inflight_bytes - limits.max_inflight_bytes / WAITING_SHARE)
                .observed(Arc::clone(&telemetry)),
            waiting: InflightBudget::new(limits.max_inflight_bytes / WAITING_SHARE),
            store,
            telemetry,
            rates: Arc::new(HostRates::new(
                limits.max_samples_per_second_per_host,
                limits.sample_burst_per_host,
            )),
            new_series: Arc::new(HostRates::new(
                limits.new_series_per_second_per_host,
                limits.new_series_burst_per_host,
            )),
            refused: Arc::new(HostRates::new(
                limits.refused_bytes_per_second_per_host,
                limits.refused_bytes_burst_per_host,
            )),
            fairness: Arc::new(WriterFairness::default()),
            limits: Arc::new(limits),
            auth: Arc::new(Authenticator::default()),
        }
    }

    /// Requires the credentials `auth` asks for, and takes each stream's
    /// host from them.
    pub fn with_authenticator(mut self, auth: Authenticator) -> Self {
        self.auth = Arc::new(auth);
        self
    }
}

/// The tonic server for `svc`: accepts gzip- and zstd-compressed requests,
/// answers gzip-compressed, and refuses messages over
/// `limits.max_message_bytes`.
pub fn server(svc: IngestService) -> frames::IngestGrpc<IngestService> {
    let max = svc.limits.max_message_bytes;
    frames::IngestGrpc::new(svc)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max)
}

/// The share of `max_inflight_bytes` (one part in this many) for frames
/// waiting for the in-flight budget.
const WAITING_SHARE: usize = 4;

/// Replies queued per stream before the stream task waits for the agent to
/// read them; acks are tiny, so this only bounds a stalled reader.
const REPLY_QUEUE: usize = 64;

type Reply = Result<CollectorMessage, Status>;

#[tonic::async_trait]
impl frames::RawIngest for IngestService {
    type Replies = ReceiverStream<Reply>;

    async fn stream(
        &self,
        request: Request<Streaming<prost::bytes::Bytes>>,
    ) -> Result<Response<Self::Replies>, Status> {
        let peer_certs = request.peer_certs();
        let authorization = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let identity = match self
            .auth
            .identify(peer_certs.as_deref().map(Vec::as_slice), authorization)
        {
            Ok(identity) => identity,
            Err(e) => {
                self.telemetry.inc(Counter::RejectedUnauthenticated);
                // Debug, not info: unauthenticated clients must not be able to
                // flood the log; the counter and the client's status carry it.
                tracing::debug!(peer = ?request.remote_addr(), error = %e, "agent stream refused");
                return Err(Status::unauthenticated(e.to_string()));
            }
        };
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(REPLY_QUEUE);
        self.telemetry.inc(Counter::IngestStreams);
        let active = GaugeGuard::new(Arc::clone(&self.telemetry), Gauge::IngestStreamsActive);
        let svc = self.clone();
        tokio::spawn(async move {
            // Moved in so the gauge drops back however the task ends,
            // including by panic.
            let _active = active;
            svc.run_stream(inbound, identity, tx).await;
        });
        let mut response = Response::new(ReceiverStream::new(rx));
        wire::announce(&mut response);
        Ok(response)
    }
}

/// Whether the stream goes on after a message.
enum Flow {
    Continue,
    End,
}

impl IngestService {
    /// Reads one stream to its end. Returns when the agent closes it, the
    /// transport fails, a fatal error was sent, or the agent stops reading.
    async fn run_stream(
        &self,
        mut inbound: Streaming<prost::bytes::Bytes>,
        identity: Option<Identity>,
        tx: mpsc::Sender<Reply>,
    ) {
        let mut session: Option<Session> = None;
        // When the Hello was recorded (names the stream in the store) and
        // how the stream ended, for host-silence detection.
        let mut opened_ms = 0;
        let mut end = StreamState::Dropped;
        let mut pipeline = Pipeline::default();
        loop {
            if let Some(s) = session.as_mut()
                && pipeline.inflight.len() >= STREAM_APPENDS_IN_FLIGHT
            {
                // Full: the next message waits for the oldest append.
                if let Flow::End = self.complete_front(s, &mut pipeline, &tx).await {
                    end = ended(&tx);
                    break;
                }
                continue;
            }
            // A host in debt for refused batches waits before its next
            // message is even decoded (HTTP/2 flow control then holds the
            // agent back too).
            if let Some(s) = &session {
                let wait = self.refused.wait(s.host(), std::time::Instant::now());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            // While appends are in flight, each is answered as soon as it
            // is durable, whether or not the agent sends more (`message`
            // only polls the stream, so dropping it loses nothing).
            let received = match (session.as_mut(), pipeline.inflight.front_mut()) {
                (Some(s), Some(front)) => tokio::select! {
                    biased;
                    outcome = &mut front.pending => {
                        if let Flow::End = self.completed(s, &mut pipeline, outcome, &tx).await {
                            end = ended(&tx);
                            break;
                        }
                        continue;
                    }
                    received = inbound.message() => received,
                },
                _ => inbound.message().await,
            };
            // Frames arrive undecoded. Before it is decoded, each is
            // charged to the in-flight budget what it will hold decoded
            // and prepared; without room it waits undecoded, and is shed
            // only when the room for waiting frames is full too. A connect
            // storm's first batches (~15 KiB on the wire, ~300 KiB decoded
            // with their labels) would otherwise pile up, decoded, in front
            // of the store's writer. A large frame is parsed on the
            // blocking pool, not on the worker serving other streams.
            let (message, reserved, tally) = match received {
                Ok(Some(frame)) => {
                    let host_bytes = session.as_ref().map_or(0, |s| s.host().len());
                    let (seq, tally) = match frames::measure(&frame, host_bytes, pipeline.compact_refs) {
                        Ok(measured) => (measured.seq, measured.tally),
                        // prost will most likely refuse it too; if not, the
                        // decoded batch is measured before it goes further.
                        Err(_) => (None, budget::HeapTally::frame(frame.len())),
                    };
                    let reserved = match self
                        .admit(&tally, frame.len(), session.as_mut(), &mut pipeline, &tx)
                        .await
                    {
                        Admitted::Reserved(reserved) => reserved,
                        Admitted::Full => {
                            drop(frame);
                            self.overloaded(seq.unwrap_or(0), tally.peak(), &tx).await;
                            end = ended(&tx);
                            break;
                        }
                        Admitted::End => {
                            end = ended(&tx);
                            break;
                        }
                    };
                    match frames::decode(frame).await {
                        Ok(message) => (message, reserved, tally),
                        Err(status) => {
                            self.telemetry.inc(Counter::IngestStreamErrors);
                            tracing::debug!(host = session.as_ref().map(Session::host), %status, "undecodable ingest message");
                            let _ = tx.send(Err(status)).await;
                            break;
                        }
                    }
                }
                Ok(None) => {
                    end = StreamState::Goodbye;
                    break;
                }
                Err(status) => {
                    // Undecodable or oversized frames, resets, disconnects.
                    self.telemetry.inc(Counter::IngestStreamErrors);
                    tracing::debug!(host = session.as_ref().map(Session::host), %status, "ingest stream failed");
                    let _ = tx.send(Err(status)).await;
                    break;
                }
            };
            let flow = match (message.kind, session.as_mut()) {
                (Some(agent_message::Kind::Hello(hello)), None) => {
                    opened_ms = crate::store::now_ms();
                    match self.hello(hello, identity.as_ref(), opened_ms) {
                        Ok(mut s) => {
                            // Tell the agent what is already durable, so it can
                            // drop those batches and resume after them.
                            let resume = match self.store.last_seq(s.host()) {
                                Ok(Some(seq)) => Some(s.ack(seq)),
                                _ => None,
                            };
                            session = Some(s);
                            match resume {
                                Some(ack) => send(&tx, ack, Flow::Continue).await,
                                None => Flow::Continue,
                            }
                        }
                        Err(reply) => send(&tx, reply, Flow::End).await,
                    }
                }
                (Some(agent_message::Kind::Hello(_)), Some(_)) => self.protocol_error(&tx, "a second Hello").await,
                (Some(agent_message::Kind::Batch(_)), None) => {
                    self.protocol_error(&tx, "a Batch before the Hello").await
                }
                (None, _) => self.protocol_error(&tx, "a message with no kind").await,
                (Some(agent_message::Kind::Batch(batch)), Some(s)) => {
                    self.batch(s, batch, Charge { reserved, tally }, &tx, &mut pipeline)
                        .await
                }
            };
            if let Flow::End = flow {
                end = ended(&tx);
                break;
            }
        }
        // Appends still in flight are answered: after a Goodbye the agent
        // waits for their acks, and after a fatal error about a later batch
        // the earlier ones are still durable (a failed one ends this).
        if let Some(s) = session.as_mut() {
            while !pipeline.inflight.is_empty() && !tx.is_closed() {
                if let Flow::End = self.complete_front(s, &mut pipeline, &tx).await {
                    end = ended(&tx);
                    break;
                }
            }
        }
        if let Some(s) = &session
            && let Err(e) = self
                .store
                .record_stream_end(s.host(), opened_ms, end, crate::store::now_ms())
        {
            tracing::warn!(host = s.host(), error = %e, "could not record the stream's end");
        }
    }

    /// Checks and records a Hello; on refusal, the fatal error to send.
    /// With a proved `identity`, the Hello must name that host: an agent
    /// can never write series as another host.
    fn hello(&self, hello: Hello, identity: Option<&Identity>, now_ms: i64) -> Result<Session, CollectorMessage> {
        if let Err(why) = validate::check_host(&hello.host) {
            self.telemetry.inc(Counter::RejectedHello);
            return Err(CollectorMessage::error(ErrorCode::BadHello, why, 0, true));
        }
        if let Some(identity) = identity
            && identity.host != hello.host
        {
            self.telemetry.inc(Counter::RejectedIdentity);
            let message = crate::auth::hello_mismatch_message(&hello.host, identity);
            tracing::warn!(claimed = %hello.host, identity = %identity.host, credential = %identity.credential, "Hello refused: host differs from the credential");
            return Err(CollectorMessage::error(ErrorCode::BadHello, message, 0, true));
        }
        let inventory = hello.inventory.unwrap_or_default();
        let record = HostRecord {
            host: hello.host.clone(),
            agent_version: hello.agent_version,
            cpu_model: inventory.cpu_model,
            kernel_release: inventory.kernel_release,
            last_report_ms: now_ms,
            interval_ms: hello.interval_ms,
            ..Default::default()
        };
        // Host facts are for the status page only; failing to save them must
        // not stop the samples, and appends report real storage trouble.
        if let Err(e) = self.store.record_hello(record) {
            tracing::warn!(host = %hello.host, error = %e, "could not record Hello");
        }
        tracing::debug!(host = %hello.host, first_unacked_seq = hello.first_unacked_seq, "agent stream opened");
        Ok(Session::new(hello.host))
    }

    async fn protocol_error(&self, tx: &mpsc::Sender<Reply>, what: &str) -> Flow {
        self.telemetry.inc(Counter::RejectedProtocol);
        let message = format!("protocol error: received {what}; a stream is one Hello followed by Batches");
        send(
            tx,
            CollectorMessage::error(ErrorCode::Protocol, message, 0, true),
            Flow::End,
        )
        .await
    }

    /// Validates, stores and answers one batch. Errors about what the batch
    /// holds are not fatal: the agent may go on with the next one. Errors
    /// that mean "resend it" (overload, storage) end the stream: acks are
    /// cumulative, so acknowledging a later batch on the same stream would
    /// cover the one that was not stored.
    async fn batch<'s>(
        &'s self,
        session: &mut Session,
        mut batch: hostpulse_proto::Batch,
        charge: Charge,
        tx: &mpsc::Sender<Reply>,
        pipeline: &mut Pipeline<'s>,
    ) -> Flow {
        let seq = batch.seq;
        let Charge { mut reserved, tally } = charge;
        let compact = batch.compact.is_some();
        // Compact columns become plain ones before anything counts them.
        if let Err(reply) = session.wire().decode(&mut batch, &self.limits) {
            self.telemetry.inc(Counter::RejectedBatch);
            return send(tx, reply, Flow::End).await;
        }
        if compact {
            // A later batch flagged `same_refs` decodes to as many.
            pipeline.compact_refs = batch.refs.len();
        }
        // New series first: the check is cheap and takes nothing from a
        // batch it refuses, and it keeps a huge batch from being validated.
        let (batch, new_series, encoded_len, decoded) = match self.measure(session, batch).await {
            Ok(measured) => measured,
            Err(fatal) => return send(tx, fatal, Flow::End).await,
        };
        // The frame's estimate covers the decoded batch unless the walk
        // could not follow the frame; then the decoded batch is charged
        // before validation builds anything from it.
        let held = tally.held.max(decoded.held);
        if !reserved.grow_to(decoded.peak()) {
            dispose(batch);
            drop(reserved);
            return self.overloaded(seq, decoded.peak(), tx).await;
        }
        if let Some(flow) = self
            .admit_new_series(session.host(), seq, encoded_len, new_series, tx)
            .await
        {
            dispose(batch);
            return flow;
        }
        if !self
            .rates
            .admit(session.host(), batch.refs.len(), std::time::Instant::now())
        {
            dispose(batch);
            self.telemetry.inc(Counter::RejectedRateLimited);
            let message = format!(
                "batch {seq}: host {} sends more than {} samples/s; resend it after backing off",
                session.host(),
                self.rates.rate()
            );
            return shed(tx, message, seq).await;
        }
        let prepared = match self.prepare(session, batch).await {
            Ok(Ok(p)) => p,
            Err(fatal) => return send(tx, fatal, Flow::End).await,
            Ok(Err(rejection)) => {
                self.charge_refused(session.host(), encoded_len);
                self.telemetry.inc(if rejection.code == ErrorCode::Limit {
                    Counter::RejectedLimit
                } else {
                    Counter::RejectedBatch
                });
                let reply = CollectorMessage::error(rejection.code, rejection.message, seq, false);
                return send(tx, reply, Flow::Continue).await;
            }
        };
        // The frame and the decoded message are gone; the prepared batch
        // and the stream's pending definitions stay until it is durable.
        reserved.shrink_to(held);
        let dropped = prepared.dropped.total();
        if dropped > 0 {
            self.telemetry.add(Counter::RejectedSample, dropped as u64);
            let reply = CollectorMessage::error(ErrorCode::SampleRejected, prepared.dropped.describe(seq), seq, false);
            if let Flow::End = send(tx, reply, Flow::Continue).await {
                return Flow::End;
            }
        }
        // A turn of the host's; with appends of its own in flight the
        // stream completes those rather than wait for one while holding
        // turns (see `WriterFairness::try_turn`).
        let samples = prepared.batch.sample_count();
        let turn = match self.fairness.try_turn(session.host(), new_series, samples) {
            Some(turn) => turn,
            None => {
                let _waiting = GaugeGuard::new(&*self.telemetry, Gauge::IngestWaitingForWriter);
                loop {
                    if let Some(turn) = self.fairness.try_turn(session.host(), new_series, samples) {
                        break turn;
                    }
                    if pipeline.inflight.is_empty() {
                        break self.fairness.turn(session.host(), new_series, samples).await;
                    }
                    if let Flow::End = self.complete_front(session, pipeline, tx).await {
                        return Flow::End;
                    }
                }
            }
        };
        // A batch naming series by labels learns their ids from its
        // append; later batches must wait for them before being prepared.
        let defines = prepared
            .batch
            .iter()
            .any(|(key, _)| matches!(key, SeriesKey::Labels(_)));
        let pending = match self
            .store
            .submit_batch(session.host(), seq, prepared.batch, &pipeline.fence)
            .await
        {
            Ok(pending) => pending,
            Err(e) => return self.storage_failed(session, seq, &e, tx).await,
        };
        pipeline.inflight.push_back(InFlight {
            seq,
            refs: prepared.refs,
            pending,
            _turn: turn,
            _reserved: reserved,
        });
        if defines {
            while !pipeline.inflight.is_empty() {
                if let Flow::End = self.complete_front(session, pipeline, tx).await {
                    return Flow::End;
                }
            }
        }
        Flow::Continue
    }

    /// Reserves a received frame's share of the in-flight budget: at once
    /// if there is room, else after waiting in line (the frame charged to
    /// the room for waiting frames) while the stream's own appends are
    /// still answered as they become durable — their reservations are
    /// what frees the budget. [`Admitted::Full`] when the frame cannot even
    /// wait. A frame defining no series may also take the share of the
    /// budget kept for those ([`budget::LIGHT_SHARE`]).
    async fn admit<'s>(
        &'s self,
        tally: &budget::HeapTally,
        frame_bytes: usize,
        mut session: Option<&mut Session>,
        pipeline: &mut Pipeline<'s>,
        tx: &mpsc::Sender<Reply>,
    ) -> Admitted {
        let now = if tally.defines() {
            self.inflight.try_reserve(tally.peak())
        } else {
            self.inflight.try_reserve_light(tally.peak())
        };
        if let Some(reserved) = now {
            return Admitted::Reserved(reserved);
        }
        let Some(_waiting) = self.waiting.try_reserve(frame_bytes) else {
            return Admitted::Full;
        };
        let _counted = GaugeGuard::new(&*self.telemetry, Gauge::IngestFramesWaiting);
        loop {
            match (session.as_deref_mut(), pipeline.inflight.front_mut()) {
                (Some(s), Some(front)) => tokio::select! {
                    biased;
                    outcome = &mut front.pending => {
                        if let Flow::End = self.completed(s, pipeline, outcome, tx).await {
                            return Admitted::End;
                        }
                    }
                    reserved = self.inflight.reserve(tally.peak()) => return Admitted::Reserved(reserved),
                    () = tx.closed() => return Admitted::End,
                },
                _ => tokio::select! {
                    reserved = self.inflight.reserve(tally.peak()) => return Admitted::Reserved(reserved),
                    () = tx.closed() => return Admitted::End,
                },
            }
        }
    }

    /// Sheds batch `seq` (or the frame holding it), whose `bytes` the
    /// in-flight budget cannot cover right now.
    async fn overloaded(&self, seq: u64, bytes: usize, tx: &mpsc::Sender<Reply>) -> Flow {
        self.telemetry.inc(Counter::RejectedOverloaded);
        let message = format!(
            "batch {seq}: the collector holds {} of its {} in-flight bytes and this batch needs {bytes}; resend it after backing off",
            self.inflight.in_use(),
            self.inflight.total()
        );
        shed(tx, message, seq).await
    }

    /// Waits for the oldest append in flight and answers it.
    async fn complete_front(
        &self,
        session: &mut Session,
        pipeline: &mut Pipeline<'_>,
        tx: &mpsc::Sender<Reply>,
    ) -> Flow {
        let Some(front) = pipeline.inflight.front_mut() else {
            return Flow::Continue;
        };
        let outcome = (&mut front.pending).await;
        self.completed(session, pipeline, outcome, tx).await
    }

    /// Answers the oldest append in flight, whose outcome is `outcome`:
    /// acks it (acks are cumulative, and appends complete in seq order),
    /// or ends the stream if it failed. Its turn and in-flight bytes are
    /// given back.
    async fn completed(
        &self,
        session: &mut Session,
        pipeline: &mut Pipeline<'_>,
        outcome: Result<Result<BatchReport, StoreError>, tokio::sync::oneshot::error::RecvError>,
        tx: &mpsc::Sender<Reply>,
    ) -> Flow {
        let Some(front) = pipeline.inflight.pop_front() else {
            return Flow::Continue;
        };
        let seq = front.seq;
        let appended = outcome.unwrap_or(Err(StoreError::Closed));
        let reply = match appended {
            Ok(BatchReport {
                report:
                    AppendReport {
                        outcome,
                        rejected_out_of_order,
                    },
                new_ids,
            }) => {
                // Later batches name these series by the store's id.
                session.stored(&front.refs, &new_ids);
                drop(front);
                if rejected_out_of_order > 0 {
                    self.telemetry
                        .add(Counter::RejectedOutOfOrder, rejected_out_of_order as u64);
                    let reply = CollectorMessage::error(
                        ErrorCode::SampleRejected,
                        format!(
                            "batch {seq}: {rejected_out_of_order} samples were older than the out-of-order window allows and were not stored"
                        ),
                        seq,
                        false,
                    );
                    if let Flow::End = send(tx, reply, Flow::Continue).await {
                        return Flow::End;
                    }
                }
                match outcome {
                    AppendOutcome::Stored { samples } => {
                        self.telemetry.inc(Counter::IngestBatches);
                        self.telemetry.add(Counter::IngestSamples, samples as u64);
                    }
                    AppendOutcome::Duplicate { .. } => self.telemetry.inc(Counter::IngestDuplicateBatches),
                }
                session.ack(seq)
            }
            Err(e) => {
                drop(front);
                // Later appends of this stream are refused by the writer
                // (the fence), so none of them can be stored past this one.
                pipeline.fence.fail();
                return self.storage_failed(session, seq, &e, tx).await;
            }
        };
        send(tx, reply, Flow::Continue).await
    }

    /// Ends the stream after batch `seq` could not be stored: nothing after
    /// it on this stream is acknowledged.
    async fn storage_failed(&self, session: &Session, seq: u64, e: &StoreError, tx: &mpsc::Sender<Reply>) -> Flow {
        self.telemetry.inc(Counter::RejectedStorage);
        tracing::warn!(host = session.host(), seq, error = %e, "could not store batch");
        // The detail stays in our log; the agent only needs to resend, from
        // this batch on, on a new stream.
        let reply = CollectorMessage::error(
            ErrorCode::Storage,
            format!("batch {seq} could not be stored; resend it"),
            seq,
            true,
        );
        send(tx, reply, Flow::End).await
    }
}

/// Batches one stream may have queued for the store's writer before their
/// flushes completed. Each waits for its group commit; with one at a time
/// a stream's rate is one batch per round trip (read, validate, queue,
/// flush, ack), and the writer sat idle most of the time (about 28 % busy
/// at 20 streams, perf 2026-11-26). Bounded by the host's turns too.
pub const STREAM_APPENDS_IN_FLIGHT: usize = fairness::HOST_TURNS;

/// A stream's appends queued for the writer, oldest first (in seq order:
/// they were queued in that order, and the writer keeps it).
#[derive(Default)]
struct Pipeline<'a> {
    inflight: std::collections::VecDeque<InFlight<'a>>,
    /// Refuses the stream's later appends once one failed.
    fence: AppendFence,
    /// Refs of the stream's last compact batch (a `same_refs` batch has
    /// as many), for measuring the next frame before decoding it.
    compact_refs: usize,
}

/// A batch's share of the in-flight budget, taken when its frame arrived.
struct Charge {
    reserved: budget::Reservation,
    /// What the frame was estimated to hold.
    tally: budget::HeapTally,
}

/// What [`IngestService::admit`] got a received frame.
enum Admitted {
    /// Its share of the in-flight budget.
    Reserved(budget::Reservation),
    /// Nothing: the budget and the room for waiting frames are full.
    Full,
    /// The stream ended meanwhile (the agent left, or an append failed).
    End,
}

/// Counts one in a gauge for as long as it lives (an open stream, a stream
/// holding a prepared batch without a writer turn, a frame waiting for the
/// budget), however it ends, including by panic.
struct GaugeGuard<T: std::ops::Deref<Target = Telemetry>>(T, Gauge);

impl<T: std::ops::Deref<Target = Telemetry>> GaugeGuard<T> {
    fn new(telemetry: T, gauge: Gauge) -> Self {
        telemetry.adjust(gauge, 1);
        GaugeGuard(telemetry, gauge)
    }
}

impl<T: std::ops::Deref<Target = Telemetry>> Drop for GaugeGuard<T> {
    fn drop(&mut self) {
        self.0.adjust(self.1, -1);
    }
}

/// One append in flight, with what it holds until it is durable.
struct InFlight<'a> {
    seq: u64,
    refs: session::BatchRefs,
    pending: PendingAppend,
    _turn: fairness::Turn<'a>,
    _reserved: budget::Reservation,
}

/// How a stream ended when this collector ended it: a closed reply channel
/// is the agent gone; otherwise it was refused with a fatal error.
fn ended(tx: &mpsc::Sender<Reply>) -> StreamState {
    if tx.is_closed() {
        StreamState::Dropped
    } else {
        StreamState::Refused
    }
}

/// Definitions from which a batch is validated on the blocking pool: with
/// tens of thousands of them validation takes long enough (tens of ms
/// optimised, hundreds in a debug build) to hold up the other streams
/// served by the same worker.
const BLOCKING_DEFINITIONS: usize = fairness::HEAVY_NEW_SERIES;

/// Samples from which a batch is validated on the blocking pool, for the
/// same reason (sorting and grouping them).
const BLOCKING_SAMPLES: usize = 50_000;

impl IngestService {
    /// Applies the per-host limits on new series to a batch defining
    /// `new_series` of them; `Some` is the flow after a refusal.
    async fn admit_new_series(
        &self,
        host: &str,
        seq: u64,
        encoded_len: usize,
        new_series: usize,
        tx: &mpsc::Sender<Reply>,
    ) -> Option<Flow> {
        if new_series == 0 || !self.new_series.enabled() {
            return None;
        }
        let burst = self.new_series.burst();
        if new_series as f64 > burst {
            // Refused for good, like the other limits: no later moment
            // would admit it, so the agent must not resend it.
            self.telemetry.inc(Counter::RejectedLimit);
            self.charge_refused(host, encoded_len);
            let message = format!(
                "batch {seq}: defines {new_series} new series, more than the {burst} a host may define at once; send the definitions over several batches"
            );
            let reply = CollectorMessage::error(ErrorCode::Limit, message, seq, false);
            return Some(send(tx, reply, Flow::Continue).await);
        }
        if self.new_series.admit_whole(host, new_series, std::time::Instant::now()) {
            return None;
        }
        self.telemetry.inc(Counter::RejectedNewSeriesRate);
        let message = format!(
            "batch {seq}: host {host} defines new series faster than {} a second (at most {burst} at once); resend it after backing off",
            self.new_series.rate()
        );
        Some(shed(tx, message, seq).await)
    }

    /// The new series `batch` defines ([`Session::new_definitions`]) and
    /// its encoded size, counted on the blocking pool for a batch with many
    /// definitions (tens of ms for a million-series batch in a debug
    /// build). `Err` is a fatal error to end the stream with.
    async fn measure(
        &self,
        session: &mut Session,
        batch: hostpulse_proto::Batch,
    ) -> Result<(hostpulse_proto::Batch, usize, usize, budget::HeapTally), CollectorMessage> {
        let host_bytes = session.host().len();
        if batch.new_series.len() < BLOCKING_DEFINITIONS {
            let new_series = session.new_definitions(&batch);
            let encoded_len = prost::Message::encoded_len(&batch);
            let decoded = budget::HeapTally::of_batch(&batch, host_bytes);
            return Ok((batch, new_series, encoded_len, decoded));
        }
        let seq = batch.seq;
        let host = session.host().to_owned();
        let owned = std::mem::replace(session, Session::new(host));
        match tokio::task::spawn_blocking(move || {
            let new_series = owned.new_definitions(&batch);
            let encoded_len = prost::Message::encoded_len(&batch);
            let decoded = budget::HeapTally::of_batch(&batch, host_bytes);
            (owned, batch, new_series, encoded_len, decoded)
        })
        .await
        {
            Ok((owned, batch, new_series, encoded_len, decoded)) => {
                *session = owned;
                Ok((batch, new_series, encoded_len, decoded))
            }
            Err(e) => Err(lost_session(session.host(), seq, &e)),
        }
    }

    /// Charges `host` for `bytes` of a batch refused for good (see
    /// [`IngestLimits::refused_bytes_per_second_per_host`]).
    fn charge_refused(&self, host: &str, bytes: usize) {
        self.refused.charge(host, bytes, std::time::Instant::now());
    }

    /// [`Session::prepare`] at the current time; a batch with many
    /// definitions (new or resent: each is validated) or samples is
    /// prepared on the blocking pool. `Err` is a fatal error to end the
    /// stream with.
    async fn prepare(
        &self,
        session: &mut Session,
        batch: hostpulse_proto::Batch,
    ) -> Result<Result<session::Prepared, session::Rejection>, CollectorMessage> {
        let now = crate::store::now_ms();
        if batch.new_series.len() < BLOCKING_DEFINITIONS && batch.refs.len() < BLOCKING_SAMPLES {
            return Ok(session.prepare(batch, &self.limits, now));
        }
        let seq = batch.seq;
        let host = session.host().to_owned();
        let mut owned = std::mem::replace(session, Session::new(host));
        let limits = Arc::clone(&self.limits);
        match tokio::task::spawn_blocking(move || {
            let prepared = owned.prepare(batch, &limits, now);
            (owned, prepared)
        })
        .await
        {
            Ok((owned, prepared)) => {
                *session = owned;
                Ok(prepared)
            }
            Err(e) => Err(lost_session(session.host(), seq, &e)),
        }
    }
}

/// The fatal error for a stream whose session went with a panicked blocking
/// task (validation never panics on any input; this is a last resort). The
/// stream's series refs are gone, so it ends; nothing of batch `seq` was
/// stored and the agent resends from it on a new stream.
fn lost_session(host: &str, seq: u64, e: &tokio::task::JoinError) -> CollectorMessage {
    tracing::error!(host, seq, error = %e, "batch validation failed");
    CollectorMessage::error(
        ErrorCode::Storage,
        format!("batch {seq} could not be processed; resend it"),
        seq,
        true,
    )
}

/// Drops a refused batch; one with many definitions (hundreds of thousands
/// of small allocations for a million-series batch) on the blocking pool.
fn dispose(batch: hostpulse_proto::Batch) {
    if batch.new_series.len() >= BLOCKING_DEFINITIONS {
        drop(tokio::task::spawn_blocking(move || drop(batch)));
    }
}

/// Refuses batch `seq` for overload: a fatal `OVERLOADED` error the agent
/// logs, then the stream ends with `RESOURCE_EXHAUSTED` so any client backs
/// off and resends from its first unacknowledged batch.
async fn shed(tx: &mpsc::Sender<Reply>, message: String, seq: u64) -> Flow {
    let status = Status::resource_exhausted(message.clone());
    let reply = CollectorMessage::error(ErrorCode::Overloaded, message, seq, true);
    if let Flow::Continue = send(tx, reply, Flow::Continue).await {
        let _ = tx.send(Err(status)).await;
    }
    Flow::End
}

/// Sends a reply; a closed channel means the agent is gone, which ends the
/// stream whatever `then` says.
async fn send(tx: &mpsc::Sender<Reply>, reply: CollectorMessage, then: Flow) -> Flow {
    match tx.send(Ok(reply)).await {
        Ok(()) => then,
        Err(_) => Flow::End,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod corpus;
