//! End-to-end tests of the ingest server: a real tonic server on an
//! ephemeral loopback port, a real tonic client, a store in a temp dir.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use hostpulse_proto::ingest_client::IngestClient;
use hostpulse_proto::{AgentMessage, Batch, Hello, Inventory, Label, SeriesDefinition, collector_message};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Server};

use super::*;
use crate::model::Matcher;
use crate::store::StoreOptions;

struct Harness {
    store: Store,
    telemetry: Arc<Telemetry>,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start(limits: IngestLimits) -> Harness {
    let (svc, parts) = service(limits);
    serve(svc, parts).await
}

/// What a service runs over, before it serves.
struct Parts {
    store: Store,
    telemetry: Arc<Telemetry>,
    dir: tempfile::TempDir,
}

/// A service over a fresh store, not serving yet: for tests that take part
/// of its budget or its writer's turns first.
fn service(limits: IngestLimits) -> (IngestService, Parts) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let telemetry = Arc::new(Telemetry::default());
    let svc = IngestService::new(store.clone(), Arc::clone(&telemetry), limits);
    (svc, Parts { store, telemetry, dir })
}

/// Serves `svc` on a loopback port.
async fn serve(svc: IngestService, parts: Parts) -> Harness {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(server(svc))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Harness {
        store: parts.store,
        telemetry: parts.telemetry,
        addr,
        _dir: parts.dir,
    }
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// One agent stream: what we send and what comes back.
struct Agent {
    tx: mpsc::Sender<AgentMessage>,
    rx: Streaming<CollectorMessage>,
}

impl Agent {
    async fn connect(h: &Harness) -> Agent {
        let mut client = IngestClient::new(channel(h.addr).await)
            .send_compressed(CompressionEncoding::Zstd)
            .accept_compressed(CompressionEncoding::Gzip);
        let (tx, rx) = mpsc::channel(16);
        let rx = client.stream(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Agent { tx, rx }
    }

    async fn send(&self, kind: agent_message::Kind) {
        self.tx.send(AgentMessage { kind: Some(kind) }).await.unwrap();
    }

    async fn hello(&self, host: &str) {
        self.tx.send(hello_message(host)).await.unwrap();
    }

    async fn batch(&self, b: Batch) {
        self.send(agent_message::Kind::Batch(b)).await;
    }

    /// The next reply, or None when the collector ended the stream.
    async fn next(&mut self) -> Result<Option<collector_message::Kind>, Status> {
        let m = tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("collector answers within 10 s")?;
        Ok(m.map(|m| m.kind.unwrap()))
    }

    async fn expect_ack(&mut self, seq: u64) {
        match self.next().await.unwrap() {
            Some(collector_message::Kind::Ack(a)) => assert_eq!(a.seq, seq),
            other => panic!("expected Ack {seq}, got {other:?}"),
        }
    }

    async fn expect_error(&mut self, code: ErrorCode, seq: u64, fatal: bool) -> String {
        match self.next().await.unwrap() {
            Some(collector_message::Kind::Error(e)) => {
                assert_eq!((e.code(), e.seq, e.fatal), (code, seq, fatal), "{}", e.message);
                e.message
            }
            other => panic!("expected {code:?} error, got {other:?}"),
        }
    }
}

fn hello_message(host: &str) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            host: host.into(),
            agent_version: "0.1.0".into(),
            inventory: Some(Inventory {
                cpu_model: "Xeon".into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

/// What the in-flight budget charges for `message`'s frame on a stream of
/// `host` (before decoding it).
fn charge_of(message: &AgentMessage, host: &str) -> budget::HeapTally {
    let frame = prost::Message::encode_to_vec(message);
    frames::measure(&frame, host.len(), 0).unwrap().tally
}

fn now() -> i64 {
    crate::store::now_ms()
}

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

fn batch(seq: u64, base: i64, defs: Vec<SeriesDefinition>, samples: &[(u32, f64)]) -> Batch {
    Batch {
        seq,
        new_series: defs,
        base_timestamp_ms: base,
        refs: samples.iter().map(|s| s.0).collect(),
        values: samples.iter().map(|s| s.1).collect(),
        ..Default::default()
    }
}

fn temps() -> Vec<SeriesDefinition> {
    vec![
        def(
            1,
            "node_hwmon_temp_celsius",
            &[("chip", "coretemp"), ("sensor", "temp1")],
        ),
        def(
            2,
            "node_hwmon_temp_celsius",
            &[("chip", "coretemp"), ("sensor", "temp2")],
        ),
    ]
}

/// Polls until the stream gauge is back to zero: stream tasks end
/// asynchronously after the client goes away.
async fn no_streams_left(t: &Telemetry) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.gauge(Gauge::IngestStreamsActive) != 0 {
        assert!(
            Instant::now() < deadline,
            "stream gauge stuck at {}",
            t.gauge(Gauge::IngestStreamsActive)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn hello_and_batches_are_acked_and_stored() {
    let h = start(IngestLimits::default()).await;
    let t0 = now();
    let mut agent = Agent::connect(&h).await;
    agent.hello("web-1").await;
    agent.batch(batch(1, t0, temps(), &[(1, 41.0), (2, 42.0)])).await;
    agent.expect_ack(1).await;
    agent
        .batch(batch(2, t0 + 10_000, vec![], &[(1, 43.0), (2, 44.0)]))
        .await;
    agent.expect_ack(2).await;

    let got = h
        .store
        .select(&[Matcher::equal("sensor", "temp1")], t0 - 1, t0 + 20_000)
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].labels.to_string(),
        r#"node_hwmon_temp_celsius{chip="coretemp",instance="web-1",job="hostpulse",sensor="temp1"}"#
    );
    assert_eq!(got[0].samples, vec![(t0, 41.0), (t0 + 10_000, 43.0)]);
    assert_eq!(h.store.last_seq("web-1").unwrap(), Some(2));
    let hosts = h.store.hosts().unwrap();
    assert_eq!(
        (hosts[0].agent_version.as_str(), hosts[0].cpu_model.as_str()),
        ("0.1.0", "Xeon")
    );
    assert_eq!(h.telemetry.get(Counter::IngestBatches), 2);
    assert_eq!(h.telemetry.get(Counter::IngestSamples), 4);
    assert_eq!(h.telemetry.gauge(Gauge::IngestStreamsActive), 1);

    drop(agent);
    no_streams_left(&h.telemetry).await;
}

#[tokio::test]
async fn replayed_batch_is_acked_but_stored_once() {
    let h = start(IngestLimits::default()).await;
    let t0 = now();
    let b = batch(1, t0, temps(), &[(1, 41.0), (2, 42.0)]);
    for round in 0..2 {
        // A reconnecting agent resends unacknowledged batches on a new stream.
        let mut agent = Agent::connect(&h).await;
        agent.hello("web-1").await;
        agent.batch(b.clone()).await;
        if round == 1 {
            // The Hello's resume ack comes first; the counters are checked
            // only after the resent batch's own ack, not racing it.
            agent.expect_ack(1).await;
        }
        agent.expect_ack(1).await;
    }
    assert_eq!(h.telemetry.get(Counter::IngestBatches), 1);
    assert_eq!(h.telemetry.get(Counter::IngestDuplicateBatches), 1);
    assert_eq!(h.telemetry.get(Counter::IngestSamples), 2);
    let got = h.store.select(&[], t0 - 1, t0 + 1).unwrap();
    assert_eq!(got.iter().map(|s| s.samples.len()).sum::<usize>(), 2);
}

#[tokio::test]
async fn a_returning_agent_is_told_what_is_durable_and_acks_never_go_back() {
    let h = start(IngestLimits::default()).await;
    let t0 = now();
    let mut agent = Agent::connect(&h).await;
    agent.hello("web-1").await;
    agent.batch(batch(7, t0, temps(), &[(1, 41.0)])).await;
    agent.expect_ack(7).await;
    drop(agent);

    // On the next stream the collector speaks first: seq 7 is durable.
    let mut agent = Agent::connect(&h).await;
    agent.hello("web-1").await;
    agent.expect_ack(7).await;
    // A replay of an older batch is acknowledged with the higher figure.
    agent.batch(batch(3, t0 - 1000, temps(), &[(1, 40.0)])).await;
    agent.expect_ack(7).await;

    // A host that never stored anything hears nothing before its first batch.
    let mut fresh = Agent::connect(&h).await;
    fresh.hello("web-2").await;
    fresh.batch(batch(1, t0, temps(), &[(1, 39.0)])).await;
    fresh.expect_ack(1).await;
}

#[tokio::test]
async fn protocol_violations_end_the_stream() {
    let h = start(IngestLimits::default()).await;
    let mut agent = Agent::connect(&h).await;
    agent.batch(batch(1, now(), temps(), &[(1, 1.0)])).await;
    agent.expect_error(ErrorCode::Protocol, 0, true).await;
    assert!(
        agent.next().await.unwrap().is_none(),
        "stream closed after a fatal error"
    );

    let mut agent = Agent::connect(&h).await;
    agent.hello("web-1").await;
    agent.hello("web-1").await;
    agent.expect_error(ErrorCode::Protocol, 0, true).await;
    assert!(agent.next().await.unwrap().is_none());

    let mut agent = Agent::connect(&h).await;
    agent.hello("two words").await;
    let msg = agent.expect_error(ErrorCode::BadHello, 0, true).await;
    assert!(msg.contains("two words"), "{msg}");
    assert!(agent.next().await.unwrap().is_none());

    assert_eq!(h.telemetry.get(Counter::RejectedProtocol), 2);
    assert_eq!(h.telemetry.get(Counter::RejectedHello), 1);
    assert!(h.store.select(&[], 0, i64::MAX).unwrap().is_empty());
    no_streams_left(&h.telemetry).await;
}

#[tokio::test]
async fn bad_batch_is_refused_and_not_acked() {
    let h = start(IngestLimits::default()).await;
    let t0 = now();
    let mut agent = Agent::connect(&h).await;
    agent.hello("web-1").await;
    agent
        .batch(batch(1, t0, vec![def(1, "bad-name", &[])], &[(1, 1.0)]))
        .await;
    let msg = agent.expect_error(ErrorCode::BadBatch, 1, false).await;
    assert!(msg.contains("bad-name"), "{msg}");
    agent.batch(batch(2, t0, temps(), &[(1, 1.0), (7, 2.0)])).await;
    agent.expect_error(ErrorCode::BadBatch, 2, false).await;
    // The stream goes on, and the refused definitions did not take effect.
    agent.batch(batch(3, t0, vec![], &[(1, 1.0)])).await;
    agent.expect_error(ErrorCode::BadBatch, 3, false).await;
    agent.batch(batch(4, t0, temps(), &[(1, 1.0)])).await;
    agent.expect_ack(4).await;

    assert_eq!(h.telemetry.get(Counter::RejectedBatch), 3);
    assert_eq!(h.store.select(&[], 0, i64::MAX).unwrap().len(), 1);
    assert_eq!(h.store.last_seq("web-1").unwrap(), Some(4));
}

#[tokio::test]
async fn limits_are_reported_as_limit_errors() {
    let h = start(IngestLimits {
        max_series_per_stream: 1,
        ..Default::default()
    })
    .await;
    let mut agent = Agent::connect(&h).await;
    agent.hello("web-1").await;
    agent.batch(batch(1, now(), temps(), &[(1, 1.0)])).await;
    agent.expect_error(ErrorCode::Limit, 1, false).await;
    assert_eq!(h.telemetry.get(Counter::RejectedLimit), 1);
}

#[tokio::test]
async fn nan_sample_is_rejected_and_the_rest_stored() {
    let h = start(IngestLimits::default()).await;
    let t0 = now();
    let mut agent = Agent::connect(&h).await;
    agent.hello("web-1").await;
    agent.batch(batch(1, t0, temps(), &[(1, f64::NAN), (2, 42.0)])).await;
    let msg = agent.expect_error(ErrorCode::SampleRejected, 1, false).await;
    assert!(msg.contains("1 with a non-finite value"), "{msg}");
    agent.expect_ack(1).await;
    let got = h.store.select(&[], 0, i64::MAX).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].labels.get("sensor"), "temp2");
    assert_eq!(h.telemetry.get(Counter::RejectedSample), 1);
}

#[tokio::test]
async fn oversized_and_undecodable_messages_end_only_their_stream() {
    let h = start(IngestLimits {
        max_message_bytes: 1024,
        ..Default::default()
    })
    .await;
    let mut agent = Agent::connect(&h).await;
    agent.hello("web-1").await;
    let many: Vec<(u32, f64)> = (0..500).map(|i| (1, f64::from(i))).collect();
    agent.batch(batch(1, now(), temps(), &many)).await;
    assert!(
        agent.next().await.is_err(),
        "oversized message ends the stream with a status"
    );

    // Bytes that are not an AgentMessage: a Label whose name is not a valid
    // Hello encoding (0x7f announces field 15 with an invalid wire type).
    let mut grpc = tonic::client::Grpc::new(channel(h.addr).await);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<Label, CollectorMessage>::default();
    let junk = Label {
        name: "\u{7f}\u{7f}\u{7f}".into(),
        value: String::new(),
    };
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/hostpulse.v1.Ingest/Stream");
    let request = Request::new(tokio_stream::iter(vec![junk]));
    let mut replies = grpc.streaming(request, path, codec).await.unwrap().into_inner();
    let outcome = tokio::time::timeout(Duration::from_secs(10), replies.message())
        .await
        .unwrap();
    assert!(
        outcome.is_err(),
        "undecodable message ends the stream with a status: {outcome:?}"
    );

    no_streams_left(&h.telemetry).await;
    assert_eq!(h.telemetry.get(Counter::IngestStreamErrors), 2);

    // The server is still serving.
    let mut agent = Agent::connect(&h).await;
    agent.hello("web-1").await;
    agent.batch(batch(2, now(), temps(), &[(1, 1.0)])).await;
    agent.expect_ack(2).await;
}

/// Reads until the stream ends and returns the status it ended with.
async fn expect_status(agent: &mut Agent, code: tonic::Code) {
    match agent.next().await {
        Err(status) => assert_eq!(status.code(), code, "{status}"),
        Ok(other) => panic!("expected the stream to end with {code:?}, got {other:?}"),
    }
}

/// Issue 7: a host above its sample rate is refused with `OVERLOADED`,
/// the stream ends with `RESOURCE_EXHAUSTED`, and nothing of the refused
/// batch is stored or acknowledged.
#[tokio::test]
async fn a_host_over_its_sample_rate_is_shed() {
    let h = start(IngestLimits {
        max_samples_per_second_per_host: 0.001,
        sample_burst_per_host: 1.0,
        ..Default::default()
    })
    .await;
    let t0 = now();
    let mut agent = Agent::connect(&h).await;
    agent.hello("web-1").await;
    // The full bucket admits one batch (going into debt), not a second.
    agent.batch(batch(1, t0, temps(), &[(1, 1.0), (2, 2.0)])).await;
    agent.expect_ack(1).await;
    agent.batch(batch(2, t0 + 1000, vec![], &[(1, 3.0)])).await;
    let msg = agent.expect_error(ErrorCode::Overloaded, 2, true).await;
    assert!(msg.contains("samples/s"), "{msg}");
    expect_status(&mut agent, tonic::Code::ResourceExhausted).await;
    assert_eq!(h.telemetry.get(Counter::RejectedRateLimited), 1);
    assert_eq!(h.store.last_seq("web-1").unwrap(), Some(1));
    // The bucket is per host, not per stream: reconnecting does not reset it.
    let mut again = Agent::connect(&h).await;
    again.hello("web-1").await;
    again.expect_ack(1).await;
    again.batch(batch(2, t0 + 1000, temps(), &[(1, 3.0)])).await;
    again.expect_error(ErrorCode::Overloaded, 2, true).await;
    // Another host has its own budget.
    let mut other = Agent::connect(&h).await;
    other.hello("web-2").await;
    other.batch(batch(1, t0, temps(), &[(1, 1.0)])).await;
    other.expect_ack(1).await;
}

/// Issue 7: with the global in-flight budget spent, batches are shed with
/// `RESOURCE_EXHAUSTED` instead of queueing, and accepted again once it
/// frees up.
#[tokio::test]
async fn a_spent_inflight_budget_sheds_load_until_it_frees() {
    let (svc, parts) = service(IngestLimits {
        max_inflight_bytes: 4096,
        ..Default::default()
    });
    // Stands for other streams' batches waiting for their flush (what is
    // left takes the Hello, not the batch) and for frames waiting for room.
    let hello = charge_of(&hello_message("web-1"), "").peak();
    let held = svc.inflight.try_reserve(svc.inflight.total() - hello).unwrap();
    let queued = svc.waiting.try_reserve(svc.waiting.total()).unwrap();
    let h = serve(svc, parts).await;
    let t0 = now();
    let mut agent = Agent::connect(&h).await;
    agent.hello("web-1").await;
    agent.batch(batch(1, t0, temps(), &[(1, 1.0)])).await;
    let msg = agent.expect_error(ErrorCode::Overloaded, 1, true).await;
    assert!(msg.contains("in-flight bytes"), "{msg}");
    expect_status(&mut agent, tonic::Code::ResourceExhausted).await;
    assert_eq!(h.telemetry.get(Counter::RejectedOverloaded), 1);
    assert_eq!(h.store.last_seq("web-1").unwrap(), None);

    drop((held, queued));
    let mut agent = Agent::connect(&h).await;
    agent.hello("web-1").await;
    agent.batch(batch(1, t0, temps(), &[(1, 1.0)])).await;
    agent.expect_ack(1).await;
}

/// Issue 7: a frame that finds the in-flight budget spent waits, undecoded
/// and charged to the room for waiting frames, and is stored once the
/// budget frees — no shed, no resend.
#[tokio::test]
async fn a_frame_waits_for_room_in_the_budget_and_is_stored() {
    let (svc, parts) = service(IngestLimits {
        max_inflight_bytes: 64 * 1024,
        ..Default::default()
    });
    let hello = charge_of(&hello_message("web-1"), "").peak();
    let held = svc.inflight.try_reserve(svc.inflight.total() - hello).unwrap();
    let h = serve(svc, parts).await;
    let t0 = now();
    let mut agent = Agent::connect(&h).await;
    agent.hello("web-1").await;
    agent.batch(batch(1, t0, temps(), &[(1, 1.0), (2, 2.0)])).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.telemetry.gauge(Gauge::IngestFramesWaiting) != 1 {
        assert!(Instant::now() < deadline, "the frame never waited");
        tokio::task::yield_now().await;
    }
    assert_eq!(h.store.last_seq("web-1").unwrap(), None);
    drop(held);
    agent.expect_ack(1).await;
    assert_eq!(h.telemetry.gauge(Gauge::IngestFramesWaiting), 0);
    assert_eq!(h.telemetry.get(Counter::RejectedOverloaded), 0);
    assert_eq!(h.store.select(&[], t0 - 1, t0 + 1).unwrap().len(), 2);
}

/// A first batch like an agent's after connecting: `series` definitions
/// with labels, and a sample of each.
fn first_batch(t0: i64, series: u32) -> Batch {
    let defs = (1..=series)
        .map(|r| {
            def(
                r,
                "node_hwmon_temp_celsius",
                &[("chip", "coretemp"), ("sensor", &format!("temp{r}"))],
            )
        })
        .collect();
    let samples: Vec<(u32, f64)> = (1..=series).map(|r| (r, f64::from(r))).collect();
    batch(1, t0, defs, &samples)
}

/// Issue 7, connect storm: thousands of agents connect at once and each
/// sends a first batch of a few hundred definitions (~15 KiB on the wire,
/// many times that decoded with its labels), which waits for the store's
/// writer behind the others. Each frame is charged what it will hold
/// before it is decoded, so the batches waiting never hold more than the
/// in-flight budget; others wait undecoded, within the room for waiting
/// frames, and the rest are shed, resent, and stored exactly once.
/// (Charging the encoded size admitted every one of them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_batches_waiting_for_the_writer_stay_within_the_inflight_budget() {
    const STREAMS: usize = 24;
    const SERIES: u32 = 300;
    const BUDGET: usize = 1 << 20;
    let (svc, parts) = service(IngestLimits {
        max_inflight_bytes: BUDGET,
        ..Default::default()
    });
    // The writer's new-series budget is taken, as by the batches ahead of
    // these in a storm: every first batch (a heavy one) waits for a turn.
    let fairness = Arc::clone(&svc.fairness);
    let (inflight, room) = (svc.inflight.total(), svc.waiting.total());
    let blocker = fairness.turn("ahead", fairness::NEW_SERIES_IN_FLIGHT, 1).await;
    let h = serve(svc, parts).await;
    let t0 = now();
    let host = |i: usize| format!("storm-{i:02}");
    let first = first_batch(t0, SERIES);
    let wire = prost::Message::encoded_len(&first);
    let charge = charge_of(
        &AgentMessage {
            kind: Some(agent_message::Kind::Batch(first.clone())),
        },
        &host(0),
    );
    // The premise: encoded, all of them fit; as they are held, few do.
    assert!(STREAMS * wire < BUDGET, "{wire} bytes on the wire");
    assert!(STREAMS * charge.held > 2 * BUDGET, "{charge:?}");

    // Every agent is connected (its Hello recorded) before the batches
    // come, as in a storm where the writer, not the accept loop, is slow.
    let mut agents = Vec::new();
    for i in 0..STREAMS {
        let agent = Agent::connect(&h).await;
        agent.hello(&host(i)).await;
        agents.push(agent);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.store.hosts().unwrap().len() < STREAMS {
        assert!(Instant::now() < deadline, "Hellos not recorded");
        tokio::task::yield_now().await;
    }
    for agent in &agents {
        agent.batch(first.clone()).await;
    }
    // Every batch is prepared and waiting for the writer, or waiting
    // undecoded for room in the budget, or shed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (waiting, queued, shed) = loop {
        let waiting = h.telemetry.gauge(Gauge::IngestWaitingForWriter) as usize;
        let queued = h.telemetry.gauge(Gauge::IngestFramesWaiting) as usize;
        let shed = h.telemetry.get(Counter::RejectedOverloaded) as usize;
        if waiting + queued + shed == STREAMS {
            break (waiting, queued, shed);
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} waiting, {queued} queued, {shed} shed"
        );
        tokio::task::yield_now().await;
    };
    assert!(
        waiting > 0 && queued > 0 && shed > 0,
        "{waiting} waiting, {queued} queued, {shed} shed"
    );
    // The prepared batches are charged what they hold, within the budget;
    // the queued frames fit the room for them.
    let in_use = h.telemetry.gauge(Gauge::IngestInflightBytes) as usize;
    assert!(
        in_use >= waiting * charge.held,
        "{in_use} in use for {waiting} × {charge:?}"
    );
    assert!(waiting * charge.held <= inflight);
    assert!(queued * wire <= room, "{queued} frames of {wire} bytes");
    assert_eq!(inflight + room, BUDGET);
    let peak = h.telemetry.gauge(Gauge::IngestInflightPeakBytes) as usize;
    assert!(peak <= inflight, "peak {peak}");
    assert_eq!(h.telemetry.gauge(Gauge::IngestInflightLimitBytes) as usize, inflight);

    // The storm passes: the waiting batches are stored, the shed ones are
    // resent on a new stream (one at a time, so each fits) and stored.
    drop(blocker);
    let mut resent = 0;
    for (i, mut agent) in agents.into_iter().enumerate() {
        match agent.next().await {
            Ok(Some(collector_message::Kind::Ack(a))) => assert_eq!(a.seq, 1),
            Ok(Some(collector_message::Kind::Error(e))) => {
                assert_eq!(
                    (e.code(), e.seq, e.fatal),
                    (ErrorCode::Overloaded, 1, true),
                    "{}",
                    e.message
                );
                assert!(e.message.contains("in-flight bytes"), "{}", e.message);
                expect_status(&mut agent, tonic::Code::ResourceExhausted).await;
                let mut again = Agent::connect(&h).await;
                again.hello(&host(i)).await;
                again.batch(first.clone()).await;
                again.expect_ack(1).await;
                resent += 1;
            }
            other => panic!("agent {i}: {other:?}"),
        }
    }
    assert_eq!(resent, shed);
    assert_eq!(h.telemetry.get(Counter::IngestBatches), STREAMS as u64);
    assert_eq!(h.telemetry.get(Counter::IngestDuplicateBatches), 0);
    let got = h.store.select(&[], t0 - 1, t0 + 1).unwrap();
    assert_eq!(got.len(), STREAMS * SERIES as usize);
    assert!(got.iter().all(|s| s.samples.len() == 1), "a sample stored twice");
    // Nothing stays charged once every batch is durable.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.telemetry.gauge(Gauge::IngestInflightBytes) != 0 {
        assert!(Instant::now() < deadline, "budget still in use");
        tokio::task::yield_now().await;
    }
}

/// Issue 7: samples the store refuses as too far out of order are counted
/// and reported to the agent; the batch is still acknowledged.
#[tokio::test]
async fn out_of_order_samples_are_counted_and_reported() {
    let h = start(IngestLimits::default()).await;
    let t0 = now();
    let mut agent = Agent::connect(&h).await;
    agent.hello("web-1").await;
    agent.batch(batch(1, t0, temps(), &[(1, 1.0), (2, 2.0)])).await;
    agent.expect_ack(1).await;
    // Two hours behind the series' newest sample, beyond the 1 h window,
    // but well within max_past_ms, so only the store refuses them.
    let old = t0 - 2 * 3_600_000;
    agent.batch(batch(2, old, vec![], &[(1, 3.0), (2, 4.0)])).await;
    let msg = agent.expect_error(ErrorCode::SampleRejected, 2, false).await;
    assert!(
        msg.contains("2 samples were older than the out-of-order window"),
        "{msg}"
    );
    agent.expect_ack(2).await;
    assert_eq!(h.telemetry.get(Counter::RejectedOutOfOrder), 2);
    let metrics = h.telemetry.render();
    assert!(
        metrics.contains("hostpulse_ingest_rejected_total{reason=\"out_of_order\"} 2"),
        "{metrics}"
    );
}

/// Issue 7: the server's explicit HTTP/2 stream limit holds: one
/// connection multiplexing more agent streams than
/// `GRPC_MAX_CONCURRENT_STREAMS` gets that many served at once, and the
/// rest wait for a slot instead of being opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_holds_at_most_the_stream_limit() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let running = crate::server::start(crate::config::Settings::ephemeral(dir.path().join("data")))
        .await
        .unwrap();
    let limit = crate::server::GRPC_MAX_CONCURRENT_STREAMS as usize;
    let ch = channel(running.grpc_addr).await;
    let acked = Arc::new(AtomicUsize::new(0));
    let (release, _) = tokio::sync::broadcast::channel::<usize>(limit + 2);
    let mut tasks = Vec::new();
    for i in 0..limit + 2 {
        let (ch, acked, mut release) = (ch.clone(), Arc::clone(&acked), release.subscribe());
        tasks.push(tokio::spawn(async move {
            let mut client = IngestClient::new(ch);
            let (tx, rx) = mpsc::channel(4);
            let mut agent = Agent {
                tx,
                rx: client.stream(ReceiverStream::new(rx)).await.unwrap().into_inner(),
            };
            agent.hello(&format!("h{i}")).await;
            agent.batch(batch(1, now(), temps(), &[(1, 1.0)])).await;
            agent.expect_ack(1).await;
            acked.fetch_add(1, Ordering::SeqCst);
            // Hold the stream open until told to end it.
            while release.recv().await.is_ok_and(|n| n != i) {}
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::SeqCst) < limit {
        assert!(
            Instant::now() < deadline,
            "only {} streams acked",
            acked.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Without the limit every stream would have been opened before the
    // 128th ack; with it the server never saw the last two.
    assert_eq!(running.telemetry.get(Counter::IngestStreams), limit as u64);
    assert_eq!(running.telemetry.gauge(Gauge::IngestStreamsActive), limit as i64);
    // Ending two streams lets the waiting two in.
    release.send(0).unwrap();
    release.send(1).unwrap();
    while acked.load(Ordering::SeqCst) < limit + 2 {
        assert!(Instant::now() < deadline, "waiting streams were never served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(running.telemetry.get(Counter::IngestStreams), limit as u64 + 2);
    drop(release);
    for task in tasks {
        task.await.unwrap();
    }
    running.shutdown().await;
}

/// Issue 7: a batch defining more new series than a host may define at
/// once is refused whole with a `LIMIT` error (not fatal, nothing stored),
/// before its labels are validated; the stream goes on.
#[tokio::test]
async fn a_batch_defining_too_many_new_series_is_refused_whole() {
    let h = start(IngestLimits {
        new_series_per_second_per_host: 1.0,
        new_series_burst_per_host: 2.0,
        ..Default::default()
    })
    .await;
    let t0 = now();
    let mut agent = Agent::connect(&h).await;
    agent.hello("web-1").await;
    let mut defs = temps();
    // Invalid, but never looked at: the count alone refuses the batch.
    defs.push(def(3, "9bad name", &[]));
    agent.batch(batch(1, t0, defs, &[(1, 1.0), (2, 2.0), (3, 3.0)])).await;
    let msg = agent.expect_error(ErrorCode::Limit, 1, false).await;
    assert!(msg.contains("defines 3 new series, more than the 2"), "{msg}");
    assert_eq!(h.telemetry.get(Counter::RejectedLimit), 1);
    assert_eq!(h.telemetry.get(Counter::RejectedBatch), 0);
    assert_eq!(h.store.last_seq("web-1").unwrap(), None);
    // Resent definitions of refs the stream knows are not new.
    agent.batch(batch(2, t0, temps(), &[(1, 1.0), (2, 2.0)])).await;
    agent.expect_ack(2).await;
    agent.batch(batch(3, t0 + 1000, temps(), &[(1, 3.0)])).await;
    agent.expect_ack(3).await;
}

/// Issue 7: a host defining new series faster than its rate is shed with
/// `OVERLOADED` and `RESOURCE_EXHAUSTED`; nothing of the refused batch is
/// stored, the reason has its own counter, and other hosts are not held up.
#[tokio::test]
async fn a_host_defining_new_series_too_fast_is_shed() {
    let h = start(IngestLimits {
        new_series_per_second_per_host: 0.001,
        new_series_burst_per_host: 3.0,
        ..Default::default()
    })
    .await;
    let t0 = now();
    let mut agent = Agent::connect(&h).await;
    agent.hello("web-1").await;
    agent.batch(batch(1, t0, temps(), &[(1, 1.0), (2, 2.0)])).await;
    agent.expect_ack(1).await;
    // One token left: a batch defining two more waits for its whole cost.
    let more = vec![def(3, "m", &[]), def(4, "n", &[])];
    agent.batch(batch(2, t0, more, &[(1, 5.0), (3, 3.0), (4, 4.0)])).await;
    let msg = agent.expect_error(ErrorCode::Overloaded, 2, true).await;
    assert!(msg.contains("new series faster than"), "{msg}");
    expect_status(&mut agent, tonic::Code::ResourceExhausted).await;
    assert_eq!(h.telemetry.get(Counter::RejectedNewSeriesRate), 1);
    assert_eq!(h.store.last_seq("web-1").unwrap(), Some(1));
    let stored = h
        .store
        .select(&[Matcher::equal("instance", "web-1")], t0 - 1, t0 + 1)
        .unwrap();
    assert_eq!(
        stored.len(),
        2,
        "the refused batch's samples and series were not stored"
    );
    // Another host has its own budget.
    let mut other = Agent::connect(&h).await;
    other.hello("web-2").await;
    other.batch(batch(1, t0, temps(), &[(1, 1.0), (2, 2.0)])).await;
    other.expect_ack(1).await;
}

/// Issue 7: a batch with many definitions is validated on the blocking
/// pool and its series are stored like any other's.
#[tokio::test]
async fn a_large_first_batch_is_validated_off_the_workers_and_stored() {
    let h = start(IngestLimits::default()).await;
    let t0 = now();
    let mut agent = Agent::connect(&h).await;
    agent.hello("big").await;
    let n = 3 * fairness::HEAVY_NEW_SERIES as u32;
    let defs = (1..=n).map(|r| def(r, "m", &[("i", &r.to_string())])).collect();
    let samples: Vec<(u32, f64)> = (1..=n).map(|r| (r, f64::from(r))).collect();
    agent.batch(batch(1, t0, defs, &samples)).await;
    agent.expect_ack(1).await;
    agent.batch(batch(2, t0 + 1000, vec![], &[(n, 1.0)])).await;
    agent.expect_ack(2).await;
    let stored = h
        .store
        .select(&[Matcher::equal("instance", "big")], t0 - 1, t0 + 2000)
        .unwrap();
    assert_eq!(stored.len(), n as usize);
    assert_eq!(stored.iter().map(|s| s.samples.len()).sum::<usize>(), n as usize + 1);
}

/// Issue 7: a host whose batches are refused for good is read no faster
/// than its refused-bytes rate, so flooding the collector with batches it
/// throws away costs the host time; the refused batch is still answered
/// at once, and other hosts are not slowed.
#[tokio::test]
async fn a_host_sending_refused_batches_is_read_more_slowly() {
    let h = start(IngestLimits {
        new_series_per_second_per_host: 1.0,
        new_series_burst_per_host: 1.0,
        refused_bytes_per_second_per_host: 100.0,
        refused_bytes_burst_per_host: 100.0,
        ..Default::default()
    })
    .await;
    let t0 = now();
    let mut agent = Agent::connect(&h).await;
    agent.hello("noisy").await;
    // Refused for good (two new series, one allowed at once): ~160 bytes,
    // ~60 over the burst, at 100 bytes a second.
    let refused = batch(1, t0, temps(), &[(1, 1.0), (2, 2.0)]);
    let debt = prost::Message::encoded_len(&refused) as f64 - 100.0;
    assert!(debt > 20.0, "{debt}");
    agent.batch(refused).await;
    agent.expect_error(ErrorCode::Limit, 1, false).await;
    let refused_at = Instant::now();
    agent.batch(batch(2, t0, vec![def(1, "m", &[])], &[(1, 1.0)])).await;
    // Meanwhile another host goes through at its own pace.
    let mut other = Agent::connect(&h).await;
    other.hello("quiet").await;
    other.batch(batch(1, t0, vec![def(1, "m", &[])], &[(1, 1.0)])).await;
    other.expect_ack(1).await;
    agent.expect_ack(2).await;
    let waited = refused_at.elapsed().as_secs_f64();
    assert!(
        waited >= debt / 100.0 * 0.9,
        "read after {waited:.3} s, debt {debt} bytes"
    );
}

#[tokio::test]
async fn batches_sent_without_waiting_are_acked_in_order_and_stored_once() {
    let h = start(IngestLimits::default()).await;
    let t0 = now();
    let mut agent = Agent::connect(&h).await;
    agent.hello("web-1").await;
    agent.batch(batch(1, t0, temps(), &[(1, 1.0), (2, 1.0)])).await;
    // Sent back to back, as the agent and the bench do: several are in
    // flight in the collector at once, and one is a resend in between.
    let sender = {
        let tx = agent.tx.clone();
        tokio::spawn(async move {
            for seq in 2..=40u64 {
                let b = batch(seq, t0 + seq as i64 * 1000, vec![], &[(1, seq as f64), (2, seq as f64)]);
                let msg = AgentMessage {
                    kind: Some(agent_message::Kind::Batch(b)),
                };
                tx.send(msg).await.unwrap();
                if seq == 30 {
                    let again = batch(20, t0 + 20_000, vec![], &[(1, 20.0), (2, 20.0)]);
                    let msg = AgentMessage {
                        kind: Some(agent_message::Kind::Batch(again)),
                    };
                    tx.send(msg).await.unwrap();
                }
            }
        })
    };
    // Acks are cumulative: the resend of 20 is answered with the highest
    // seq acknowledged so far, never a lower one.
    for seq in 1..=30 {
        agent.expect_ack(seq).await;
    }
    agent.expect_ack(30).await;
    for seq in 31..=40 {
        agent.expect_ack(seq).await;
    }
    sender.await.unwrap();
    assert_eq!(h.store.last_seq("web-1").unwrap(), Some(40));
    assert_eq!(h.telemetry.get(Counter::IngestBatches), 40);
    assert_eq!(h.telemetry.get(Counter::IngestDuplicateBatches), 1);
    let got = h
        .store
        .select(&[Matcher::equal("sensor", "temp1")], t0 - 1, t0 + 60_000)
        .unwrap();
    let expected: Vec<(i64, f64)> = std::iter::once((t0, 1.0))
        .chain((2..=40).map(|seq| (t0 + seq * 1000, seq as f64)))
        .collect();
    assert_eq!(got[0].samples, expected, "every batch stored once, in order");
    drop(agent);
    no_streams_left(&h.telemetry).await;
}

#[tokio::test]
async fn after_a_failed_append_no_later_append_of_the_stream_is_stored() {
    let h = start(IngestLimits::default()).await;
    let t0 = now();
    let labels = crate::model::Labels::from_pairs(&[("__name__", "up"), ("instance", "web-1")]);
    let good = |ts: i64| {
        let mut b = crate::store::AppendBatch::with_capacity(1, 1);
        b.push(SeriesKey::Labels(labels.clone()), &[(ts, 1.0)]);
        b
    };
    let fence = AppendFence::default();
    let first = h.store.submit_batch("web-1", 1, good(t0), &fence).await.unwrap();
    // Batch 2 names a series id the store never gave out, so it fails on
    // its own; batches 3 and 4, queued behind it (in its group commit or
    // a later one), would advance the host past it if stored.
    let mut bad = crate::store::AppendBatch::with_capacity(1, 1);
    bad.push(SeriesKey::Id(u64::MAX / 2), &[(t0 + 1000, 2.0)]);
    let second = h.store.submit_batch("web-1", 2, bad, &fence).await.unwrap();
    let third = h.store.submit_batch("web-1", 3, good(t0 + 2000), &fence).await.unwrap();
    let fourth = h.store.submit_batch("web-1", 4, good(t0 + 3000), &fence).await.unwrap();
    assert!(crate::store::appended(first).await.is_ok());
    let second = crate::store::appended(second).await;
    assert!(matches!(second, Err(StoreError::UnknownSeries(_))), "{second:?}");
    for later in [third, fourth] {
        let later = crate::store::appended(later).await;
        assert!(matches!(later, Err(StoreError::EarlierAppendFailed)), "{later:?}");
    }
    assert!(fence.failed());
    assert_eq!(
        h.store.last_seq("web-1").unwrap(),
        Some(1),
        "nothing past the failed batch"
    );
    // The agent's resend on a new stream (a new fence) is stored, not
    // taken for a duplicate.
    let resend = h
        .store
        .submit_batch("web-1", 2, good(t0 + 1000), &AppendFence::default())
        .await
        .unwrap();
    let resend = crate::store::appended(resend).await.unwrap();
    assert_eq!(resend.report.outcome, AppendOutcome::Stored { samples: 1 });
}
