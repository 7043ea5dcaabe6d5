//! The compact batch encoding end to end (issue 7, bytes on the wire): an
//! agent streams compact columns to a collector that restarts mid-stream,
//! resends its spooled backlog on the new stream, and every acknowledged
//! sample is stored exactly once with bit-exact values; adversarial values
//! (the stale marker, -0.0, subnormals) survive the real collector; an
//! undecodable compact batch is refused with a typed fatal error and stores
//! nothing; and mixed versions work: a plain-encoding agent against a new
//! collector, and a new agent against a collector that does not announce
//! the encoding (which then only gets plain batches).
//!
//! As in `spool.rs`, "the collector restarts" is a [`Proxy`] on a fixed
//! port cutting every connection, then a new collector on the same data
//! directory behind a new proxy on that port.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hostpulse_agent::Sampler;
use hostpulse_agent::client::{self, ClientStatus, WireEncoding};
use hostpulse_agent::config::Settings as AgentSettings;
use hostpulse_agent::inventory::Inventory;
use hostpulse_collector::model::Matcher;
use hostpulse_collector::server::RunningCollector;
use hostpulse_collector::telemetry::Counter;
use hostpulse_proto::columns::{self, StreamEncoder};
use hostpulse_proto::ingest_client::IngestClient;
use hostpulse_proto::{
    AgentMessage, Batch, CollectorMessage, CompactColumns, ErrorCode, Hello, Label, SeriesDefinition, agent_message,
    collector_message,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::support::{Proxy, collector_on, copy_fixture, free_port, loadavg_agent, poll};

struct Agent {
    status: Arc<ClientStatus>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Agent {
    fn start(settings: AgentSettings) -> Agent {
        let sampler = Sampler::new(settings.paths.clone(), &settings.only).unwrap();
        let inventory = Inventory::read(&settings.paths);
        let status = Arc::new(ClientStatus::default());
        let (stop, stop_rx) = watch::channel(false);
        let s = status.clone();
        let task = tokio::spawn(async move {
            client::run(settings, sampler, inventory, s, stop_rx).await.unwrap();
        });
        Agent { status, stop, task }
    }

    async fn stop(self) -> Arc<ClientStatus> {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
        self.status
    }

    fn get(&self, f: impl Fn(&ClientStatus) -> u64) -> u64 {
        f(&self.status)
    }
}

fn cycles(s: &ClientStatus) -> u64 {
    s.cycles.load(Ordering::Relaxed)
}

fn acked(s: &ClientStatus) -> u64 {
    s.acked_seq.load(Ordering::Relaxed)
}

fn compact(s: &ClientStatus) -> u64 {
    s.compact_batches.load(Ordering::Relaxed)
}

fn agent_settings(collector: String, tree: &Path, host: &str) -> AgentSettings {
    loadavg_agent(vec![collector], tree, host)
}

/// Samples of one metric of one host: (timestamp, value bits).
fn stored(collector: &RunningCollector, metric: &str, host: &str) -> Vec<(i64, u64)> {
    collector
        .store
        .select(
            &[Matcher::equal("__name__", metric), Matcher::equal("instance", host)],
            0,
            i64::MAX,
        )
        .unwrap()
        .iter()
        .flat_map(|s| s.samples.iter().map(|(t, v)| (*t, v.to_bits())))
        .collect()
}

/// Rewrites the fixture's /proc/loadavg in place (the agent keeps its
/// descriptor open and re-reads it from offset 0).
fn set_loadavg(tree: &Path, text: &str) {
    std::fs::write(tree.join("proc/loadavg"), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_stream_survives_a_collector_restart_exactly_once_and_bit_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = copy_fixture("hot", &tmp.path().join("tree"));
    let data = tmp.path().join("data");
    let port = free_port();
    let mut settings = agent_settings(format!("http://127.0.0.1:{port}"), &tree, "wire-compact");
    settings.spool_dir = Some(tmp.path().join("spool"));
    assert_eq!(settings.wire_encoding, WireEncoding::Compact, "compact is the default");
    // Loads the agent will read, one set per phase; every value it sends
    // must come back with exactly the bits `str::parse` gives.
    let phases = [
        "0.10 0.20 0.30 1/100 10\n",
        "0.33 1.07 12.5 2/100 11\n",
        "3.14 0.07 0.01 1/101 12\n",
        "0 100.99 7.25 1/102 13\n",
    ];
    let written: BTreeSet<u64> = phases
        .iter()
        .flat_map(|p| {
            p.split_whitespace()
                .take(3)
                .map(|v| v.parse::<f64>().unwrap().to_bits())
        })
        .collect();

    set_loadavg(&tree, phases[0]);
    let collector = collector_on(0, &data).await;
    let proxy = Proxy::start(port, collector.grpc_addr).await;
    let agent = Agent::start(settings);
    poll("compact batches acknowledged", Duration::from_secs(30), || async {
        (agent.get(acked) > 0 && agent.get(compact) >= 2).then_some(())
    })
    .await;
    set_loadavg(&tree, phases[1]);
    let at = agent.get(cycles);
    poll("cycles of the second phase", Duration::from_secs(30), || async {
        (agent.get(cycles) >= at + 3).then_some(())
    })
    .await;

    // The collector goes away mid-stream; the agent keeps sampling into its
    // spool.
    proxy.cut().await;
    collector.shutdown().await;
    set_loadavg(&tree, phases[2]);
    let down_at = agent.get(cycles);
    poll(
        "cycles while the collector is down",
        Duration::from_secs(30),
        || async { (agent.get(cycles) >= down_at + 4).then_some(()) },
    )
    .await;
    assert!(agent.status.spool_batches.load(Ordering::Relaxed) >= 4);
    let compact_before = agent.get(compact);

    // It comes back on the same data: the backlog is resent, compact, on a
    // new stream whose encoder starts empty.
    let collector = collector_on(0, &data).await;
    let proxy = Proxy::start(port, collector.grpc_addr).await;
    set_loadavg(&tree, phases[3]);
    let back_at = agent.get(cycles);
    poll(
        "backlog and new cycles acknowledged",
        Duration::from_secs(60),
        || async {
            let s = &agent.status;
            (agent.get(cycles) >= back_at + 3
                && s.spool_batches.load(Ordering::Relaxed) == 0
                && acked(s) == s.produced_seq.load(Ordering::Relaxed))
            .then_some(())
        },
    )
    .await;
    assert!(agent.get(compact) >= compact_before + 4, "the backlog went out compact");
    let status = agent.stop().await;
    assert!(!status.compact_refused.load(Ordering::Relaxed));
    assert_eq!(status.rejected_batches.load(Ordering::Relaxed), 0);
    assert_eq!(status.dropped_samples.load(Ordering::Relaxed), 0);

    let sampled = cycles(&status);
    let unacked = status.spool_batches.load(Ordering::Relaxed);
    let mut seen_values = BTreeSet::new();
    for metric in ["node_load1", "node_load5", "node_load15"] {
        let samples = stored(&collector, metric, "wire-compact");
        let stamps: BTreeSet<i64> = samples.iter().map(|(t, _)| *t).collect();
        assert_eq!(stamps.len(), samples.len(), "{metric}: a cycle was stored twice");
        let n = samples.len() as u64;
        assert!(
            n <= sampled && n + unacked >= sampled,
            "{metric}: stored {n}, unacknowledged {unacked}, sampled {sampled}"
        );
        for (t, bits) in &samples {
            assert!(
                written.contains(bits),
                "{metric} at {t}: {} ({bits:#x}) is not a value the agent read",
                f64::from_bits(*bits)
            );
            seen_values.insert(*bits);
        }
    }
    assert!(seen_values.len() >= 9, "values of at least three phases stored");
    proxy.cut().await;
    collector.shutdown().await;
}

/// A raw stream: the response's announcement, a sender and the replies.
struct RawStream {
    announced: bool,
    tx: mpsc::Sender<AgentMessage>,
    inbound: tonic::Streaming<CollectorMessage>,
}

async fn open_raw(addr: std::net::SocketAddr, host: &str) -> RawStream {
    let mut client = IngestClient::connect(format!("http://{addr}")).await.unwrap();
    let (tx, rx) = mpsc::channel(16);
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            host: host.into(),
            agent_version: "test".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let response = client.stream(ReceiverStream::new(rx)).await.unwrap();
    let announced = response
        .metadata()
        .get(columns::ENCODINGS_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(columns::announces_compact);
    RawStream {
        announced,
        tx,
        inbound: response.into_inner(),
    }
}

async fn send(stream: &RawStream, batch: Batch) {
    stream
        .tx
        .send(AgentMessage {
            kind: Some(agent_message::Kind::Batch(batch)),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_batches_keep_every_bit_and_undecodable_ones_store_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = collector_on(0, &tmp.path().join("data")).await;
    let mut stream = open_raw(collector.grpc_addr, "wire-raw").await;
    assert!(stream.announced, "the collector announces compact batches");

    let stale = f64::from_bits(0x7ff0_0000_0000_0002);
    let columns: [[f64; 3]; 6] = [
        [0.1 + 0.2, -0.0, 21.5],
        [stale, 0.0, 21.625],
        [f64::MIN_POSITIVE / 4.0, -0.0, 1e300],
        [123_456.789, stale, -1e-300],
        [(1u64 << 53) as f64 + 2.0, f64::MAX, 21.5],
        [-0.0, 1.0 / 3.0, 4.2],
    ];
    let now = hostpulse_agent::sampler::now_ms();
    let t0 = now - 60_000;
    let mut encoder = StreamEncoder::new();
    for (i, values) in columns.iter().enumerate() {
        let mut batch = Batch {
            seq: i as u64 + 1,
            new_series: if i == 0 {
                (0..3)
                    .map(|s| SeriesDefinition {
                        r#ref: s + 1,
                        name: "wire_probe".into(),
                        labels: vec![Label {
                            name: "s".into(),
                            value: s.to_string(),
                        }],
                    })
                    .collect()
            } else {
                Vec::new()
            },
            base_timestamp_ms: t0 + i as i64 * 1000,
            refs: vec![1, 2, 3],
            values: values.to_vec(),
            ..Default::default()
        };
        encoder.encode(&mut batch);
        assert!(batch.compact.is_some());
        send(&stream, batch).await;
    }
    // Acks are cumulative: wait for the last one.
    loop {
        let m = stream.inbound.message().await.unwrap().unwrap();
        match m.kind {
            Some(collector_message::Kind::Ack(a)) if a.seq == columns.len() as u64 => break,
            Some(collector_message::Kind::Error(e)) => panic!("collector error: {e:?}"),
            _ => {}
        }
    }
    // Then a compact batch whose values column is cut short.
    let rejected_before = collector.telemetry.get(Counter::RejectedBatch);
    send(
        &stream,
        Batch {
            seq: 100,
            base_timestamp_ms: now,
            compact: Some(CompactColumns {
                same_refs: true,
                refs: Vec::new(),
                values: vec![0xf0],
            }),
            ..Default::default()
        },
    )
    .await;
    let reply = stream.inbound.message().await.unwrap().unwrap();
    let Some(collector_message::Kind::Error(e)) = reply.kind else {
        panic!("expected an error, got {reply:?}")
    };
    assert_eq!(e.code, ErrorCode::BadEncoding as i32, "{}", e.message);
    assert!(e.fatal && e.seq == 100, "{e:?}");
    assert!(e.message.contains("truncated"), "{}", e.message);
    // The collector ended the stream.
    let end = stream.inbound.message().await;
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    assert_eq!(collector.telemetry.get(Counter::RejectedBatch), rejected_before + 1);

    for s in 0..3usize {
        let samples = collector
            .store
            .select(
                &[
                    Matcher::equal("__name__", "wire_probe"),
                    Matcher::equal("s", s.to_string()),
                ],
                0,
                i64::MAX,
            )
            .unwrap();
        let got: Vec<(i64, u64)> = samples
            .iter()
            .flat_map(|x| x.samples.iter().map(|(t, v)| (*t, v.to_bits())))
            .collect();
        let want: Vec<(i64, u64)> = columns
            .iter()
            .enumerate()
            // The collector drops non-finite values other than the stale
            // marker; f64::MAX and friends are finite.
            .filter(|(_, c)| c[s].is_finite() || c[s].to_bits() == stale.to_bits())
            .map(|(i, c)| (t0 + i as i64 * 1000, c[s].to_bits()))
            .collect();
        assert_eq!(got, want, "series {s}");
        assert!(got.iter().all(|(t, _)| *t != now), "nothing of the refused batch");
    }
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_encoding_agent_still_works() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = copy_fixture("hot", &tmp.path().join("tree"));
    let collector = collector_on(0, &tmp.path().join("data")).await;
    let mut settings = agent_settings(format!("http://{}", collector.grpc_addr), &tree, "wire-plain");
    settings.wire_encoding = WireEncoding::Plain;
    let agent = Agent::start(settings);
    poll("plain batches stored", Duration::from_secs(30), || async {
        (stored(&collector, "node_load1", "wire-plain").len() >= 3).then_some(())
    })
    .await;
    let status = agent.stop().await;
    assert_eq!(compact(&status), 0);
    let want = 1.5f64.to_bits();
    assert!(
        stored(&collector, "node_load1", "wire-plain")
            .iter()
            .all(|(_, b)| *b == want)
    );
    collector.shutdown().await;
}

/// A collector of an older version: it does not announce the encoding, and
/// records whether each batch came with compact columns.
#[derive(Clone, Default)]
struct OldCollector {
    batches: Arc<Mutex<Vec<bool>>>,
}

#[tonic::async_trait]
impl hostpulse_proto::ingest_server::Ingest for OldCollector {
    type StreamStream = ReceiverStream<Result<CollectorMessage, tonic::Status>>;

    async fn stream(
        &self,
        request: tonic::Request<tonic::Streaming<AgentMessage>>,
    ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let batches = self.batches.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                if let Some(agent_message::Kind::Batch(b)) = msg.kind {
                    batches.lock().unwrap().push(b.compact.is_some());
                    if tx.send(Ok(CollectorMessage::ack(b.seq))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_does_not_announce_compact_gets_plain_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = copy_fixture("hot", &tmp.path().join("tree"));
    let old = OldCollector::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                hostpulse_proto::ingest_server::IngestServer::new(old.clone())
                    .accept_compressed(tonic::codec::CompressionEncoding::Zstd),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let agent = Agent::start(agent_settings(format!("http://{addr}"), &tree, "wire-old"));
    poll("batches at the old collector", Duration::from_secs(30), || async {
        (old.batches.lock().unwrap().len() >= 3).then_some(())
    })
    .await;
    let status = agent.stop().await;
    assert_eq!(compact(&status), 0);
    assert!(old.batches.lock().unwrap().iter().all(|c| !c), "only plain batches");
    server.abort();
}

/// A collector that announces compact batches but refuses each one as
/// undecodable, and records every batch as (seq, compact).
#[derive(Clone, Default)]
struct PickyCollector {
    batches: Arc<Mutex<Vec<(u64, bool)>>>,
}

#[tonic::async_trait]
impl hostpulse_proto::ingest_server::Ingest for PickyCollector {
    type StreamStream = ReceiverStream<Result<CollectorMessage, tonic::Status>>;

    async fn stream(
        &self,
        request: tonic::Request<tonic::Streaming<AgentMessage>>,
    ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let batches = self.batches.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                let Some(agent_message::Kind::Batch(b)) = msg.kind else {
                    continue;
                };
                batches.lock().unwrap().push((b.seq, b.compact.is_some()));
                let reply = if b.compact.is_some() {
                    CollectorMessage::error(ErrorCode::BadEncoding, "cannot decode", b.seq, true)
                } else {
                    CollectorMessage::ack(b.seq)
                };
                if tx.send(Ok(reply)).await.is_err() || b.compact.is_some() {
                    return;
                }
            }
        });
        let mut response = tonic::Response::new(ReceiverStream::new(rx));
        response.metadata_mut().insert(
            columns::ENCODINGS_HEADER,
            tonic::metadata::MetadataValue::from_static(columns::COMPACT),
        );
        Ok(response)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_compact_batch_is_resent_plain_not_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = copy_fixture("hot", &tmp.path().join("tree"));
    let picky = PickyCollector::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                hostpulse_proto::ingest_server::IngestServer::new(picky.clone())
                    .accept_compressed(tonic::codec::CompressionEncoding::Zstd),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let agent = Agent::start(agent_settings(format!("http://{addr}"), &tree, "wire-picky"));
    poll("plain batches after the refusal", Duration::from_secs(30), || async {
        (picky.batches.lock().unwrap().iter().filter(|(_, c)| !c).count() >= 3).then_some(())
    })
    .await;
    let status = agent.stop().await;
    let batches = picky.batches.lock().unwrap().clone();
    let (refused, _) = *batches.iter().find(|(_, c)| *c).expect("one compact batch was sent");
    assert!(status.compact_refused.load(Ordering::Relaxed));
    assert_eq!(status.rejected_batches.load(Ordering::Relaxed), 0, "nothing skipped");
    assert!(
        batches.contains(&(refused, false)),
        "batch {refused} was resent plain: {batches:?}"
    );
    assert_eq!(
        batches.iter().filter(|(_, c)| *c).count(),
        1,
        "compact stays off after a refusal: {batches:?}"
    );
    server.abort();
}
