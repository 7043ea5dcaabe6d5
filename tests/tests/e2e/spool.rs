//! The agent's disk spool and collector failover, end to end (issue 7):
//! batches sampled while the collector is down survive an agent restart and
//! are stored exactly once when it returns; with two collectors an agent
//! whose preferred collector is down streams to the other, and moves back
//! once the preferred one answers.
//!
//! A collector's graceful shutdown waits for its open streams, so "the
//! collector goes down" is staged as a [`Proxy`] in front of it cutting
//! every connection first; the agent only ever knows the proxy's address.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hostpulse_agent::Sampler;
use hostpulse_agent::client::{self, ClientStatus};
use hostpulse_agent::config::Settings as AgentSettings;
use hostpulse_agent::inventory::Inventory;
use hostpulse_collector::model::Matcher;
use hostpulse_collector::server::RunningCollector;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::support::{Proxy, collector_on, copy_fixture, free_port, loadavg_agent as agent_settings, poll};

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

    /// Stops the agent and waits until it has let go of its spool.
    async fn stop(self) -> Arc<ClientStatus> {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
        self.status
    }

    fn cycles(&self) -> u64 {
        self.status.cycles.load(Ordering::Relaxed)
    }
}

/// Timestamps of the host's `node_load1` samples in a collector's store.
fn load1_timestamps(collector: &RunningCollector, host: &str) -> Vec<i64> {
    let series = collector
        .store
        .select(
            &[
                Matcher::equal("__name__", "node_load1"),
                Matcher::equal("instance", host),
            ],
            0,
            i64::MAX,
        )
        .unwrap();
    series.iter().flat_map(|s| s.samples.iter().map(|(t, _)| *t)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_cycles_survive_an_agent_restart_and_are_stored_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = copy_fixture("hot", &tmp.path().join("tree"));
    let data = tmp.path().join("data");
    let spool = tmp.path().join("spool");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut settings = agent_settings(vec![url], &tree, "delta");
    settings.spool_dir = Some(spool.clone());

    // First run: part of the data reaches the collector...
    let collector = collector_on(0, &data).await;
    let proxy = Proxy::start(port, collector.grpc_addr).await;
    let first = Agent::start(settings.clone());
    poll("first acknowledgements", Duration::from_secs(30), || async {
        (first.status.acked_seq.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    assert!(first.status.spool_on_disk.load(Ordering::Relaxed));
    // ...then the collector goes away while the agent keeps sampling.
    proxy.cut().await;
    collector.shutdown().await;
    let down_at = first.cycles();
    poll(
        "cycles while the collector is down",
        Duration::from_secs(30),
        || async { (first.cycles() >= down_at + 5).then_some(()) },
    )
    .await;
    let first = first.stop().await;
    let first_cycles = first.cycles.load(Ordering::Relaxed);
    let backlog = first.spool_batches.load(Ordering::Relaxed);
    assert!(backlog >= 5, "{backlog} batches spooled");

    // Second run, same spool, collector still down. A long interval makes
    // it sample exactly once (at start), so the total is known.
    settings.interval = Duration::from_secs(3600);
    let second = Agent::start(settings.clone());
    poll("second run sampled", Duration::from_secs(30), || async {
        (second.cycles() == 1).then_some(())
    })
    .await;
    assert!(
        second.status.spool_batches.load(Ordering::Relaxed) > backlog,
        "the backlog came back from disk"
    );

    // The collector returns with its data: everything is resent and stored.
    let collector = collector_on(0, &data).await;
    let proxy = Proxy::start(port, collector.grpc_addr).await;
    poll("backlog acknowledged", Duration::from_secs(60), || async {
        let s = &second.status;
        (s.spool_batches.load(Ordering::Relaxed) == 0
            && s.acked_seq.load(Ordering::Relaxed) == s.produced_seq.load(Ordering::Relaxed))
        .then_some(())
    })
    .await;
    let second = second.stop().await;
    let sampled = first_cycles + second.cycles.load(Ordering::Relaxed);
    let stamps = load1_timestamps(&collector, "delta");
    let distinct: BTreeSet<i64> = stamps.iter().copied().collect();
    assert_eq!(distinct.len(), stamps.len(), "a cycle was stored twice");
    assert_eq!(stamps.len() as u64, sampled, "every sampled cycle is stored once");
    assert_eq!(first.dropped_samples.load(Ordering::Relaxed), 0);
    assert_eq!(second.dropped_samples.load(Ordering::Relaxed), 0);
    // The spool's own figures travel as series too.
    let dropped = collector
        .store
        .select(
            &[Matcher::equal(
                "__name__",
                "hostpulse_agent_spool_dropped_samples_total",
            )],
            0,
            i64::MAX,
        )
        .unwrap();
    assert_eq!(dropped.len(), 1);
    assert!(dropped[0].samples.iter().all(|(_, v)| *v == 0.0));
    proxy.cut().await;
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_fails_over_to_the_next_collector_and_back() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = copy_fixture("hot", &tmp.path().join("tree"));
    let ports = [free_port(), free_port()];
    let urls: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let mut settings = agent_settings(urls.clone(), &tree, "epsilon");
    settings.failover_after = 2;
    settings.failback_interval = Duration::from_millis(300);
    let inventory = Inventory::read(&settings.paths);
    let order = client::rendezvous_order(&client::host_id(&inventory, "epsilon"), &urls);
    let port_of = |url: &str| ports[urls.iter().position(|u| u == url).unwrap()];

    // The preferred collector is down; the other one is up.
    let fallback = collector_on(port_of(&order[1]), &tmp.path().join("fallback")).await;
    let agent = Agent::start(settings);
    poll("data at the fallback collector", Duration::from_secs(60), || async {
        (load1_timestamps(&fallback, "epsilon").len() >= 3).then_some(())
    })
    .await;
    assert!(agent.status.failovers.load(Ordering::Relaxed) >= 1);
    assert_eq!(*agent.status.collector.lock().unwrap(), order[1]);

    // The preferred collector comes up: the agent moves back to it.
    let preferred = collector_on(port_of(&order[0]), &tmp.path().join("preferred")).await;
    poll("data at the preferred collector", Duration::from_secs(60), || async {
        (load1_timestamps(&preferred, "epsilon").len() >= 3).then_some(())
    })
    .await;
    assert_eq!(*agent.status.collector.lock().unwrap(), order[0]);
    let status = agent.stop().await;

    // Nothing was stored at both, and nothing acknowledged went missing.
    let at_fallback: BTreeSet<i64> = load1_timestamps(&fallback, "epsilon").into_iter().collect();
    let at_preferred: BTreeSet<i64> = load1_timestamps(&preferred, "epsilon").into_iter().collect();
    assert!(
        at_fallback.is_disjoint(&at_preferred),
        "stored twice: {:?}",
        at_fallback.intersection(&at_preferred).collect::<Vec<_>>()
    );
    // (A batch can be stored and still counted unacknowledged if the agent
    // stopped before its Ack arrived, hence the range.)
    let stored = (at_fallback.len() + at_preferred.len()) as u64;
    let cycles = status.cycles.load(Ordering::Relaxed);
    let unacked = status.spool_batches.load(Ordering::Relaxed);
    assert!(
        stored <= cycles && stored + unacked >= cycles,
        "stored {stored}, unacknowledged {unacked}, sampled {cycles}"
    );
    assert_eq!(status.dropped_samples.load(Ordering::Relaxed), 0);
    fallback.shutdown().await;
    preferred.shutdown().await;
}

/// What the fake collector saw, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Hello { first_unacked_seq: u64, resume: u64 },
    Batch(u64),
}

/// A collector that answers each Hello with `Ack{resume}` at once, as a
/// collector that already stored part of the backlog does. On the first
/// stream it claims the first ten batches and hangs up after the first
/// batch above them; on later streams it claims a million numbers beyond
/// anything the agent made, so the agent must number new batches above.
#[derive(Clone, Default)]
struct ResumingCollector {
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
}

impl ResumingCollector {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl hostpulse_proto::ingest_server::Ingest for ResumingCollector {
    type StreamStream =
        tokio_stream::wrappers::ReceiverStream<Result<hostpulse_proto::CollectorMessage, tonic::Status>>;

    async fn stream(
        &self,
        request: tonic::Request<tonic::Streaming<hostpulse_proto::AgentMessage>>,
    ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
        use hostpulse_proto::{Ack, CollectorMessage, agent_message::Kind, collector_message};
        let ack = |seq| {
            Ok(CollectorMessage {
                kind: Some(collector_message::Kind::Ack(Ack { seq })),
            })
        };
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let seen = self.seen.clone();
        tokio::spawn(async move {
            let mut resume = 0;
            let mut first_stream = false;
            while let Ok(Some(msg)) = inbound.message().await {
                match msg.kind {
                    Some(Kind::Hello(h)) => {
                        {
                            let mut log = seen.lock().unwrap();
                            first_stream = log.is_empty();
                            resume = if first_stream {
                                h.first_unacked_seq + 9
                            } else {
                                h.first_unacked_seq + 1_000_000
                            };
                            log.push(Seen::Hello {
                                first_unacked_seq: h.first_unacked_seq,
                                resume,
                            });
                        }
                        let _ = tx.send(ack(resume)).await;
                    }
                    Some(Kind::Batch(b)) => {
                        seen.lock().unwrap().push(Seen::Batch(b.seq));
                        let _ = tx.send(ack(b.seq)).await;
                        if first_stream && b.seq > resume {
                            return;
                        }
                    }
                    None => {}
                }
            }
        });
        Ok(tonic::Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_resumes_from_the_collectors_ack_after_hello() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = copy_fixture("hot", &tmp.path().join("tree"));
    let port = free_port();
    let mut settings = agent_settings(vec![format!("http://127.0.0.1:{port}")], &tree, "zeta");
    settings.spool_dir = Some(tmp.path().join("spool"));
    let agent = Agent::start(settings);
    poll("a backlog", Duration::from_secs(30), || async {
        (agent.status.spool_batches.load(Ordering::Relaxed) >= 20).then_some(())
    })
    .await;

    let fake = ResumingCollector::default();
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let service = hostpulse_proto::ingest_server::IngestServer::new(fake.clone())
        .accept_compressed(tonic::codec::CompressionEncoding::Zstd);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let hellos = |seen: &[Seen]| -> Vec<(u64, u64)> {
        seen.iter()
            .filter_map(|s| match s {
                Seen::Hello {
                    first_unacked_seq,
                    resume,
                } => Some((*first_unacked_seq, *resume)),
                Seen::Batch(_) => None,
            })
            .collect()
    };
    let second_resume = poll(
        "batches numbered above the second resume point",
        Duration::from_secs(30),
        || {
            let seen = fake.seen();
            async move {
                let h = hellos(&seen);
                let resume = h.get(1)?.1;
                seen.iter()
                    .any(|s| matches!(s, Seen::Batch(q) if *q > resume))
                    .then_some(resume)
            }
        },
    )
    .await;
    let seen = fake.seen();
    let h = hellos(&seen);
    // The first Ack dropped what it covered: the reconnect starts above it
    // and nothing it covered was sent again.
    assert!(h[1].0 > h[0].1, "second Hello {:?} after resume {}", h[1], h[0].1);
    let second_at = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Seen::Hello { .. }))
        .nth(1)
        .map(|(i, _)| i)
        .unwrap();
    assert!(
        seen[second_at..]
            .iter()
            .all(|s| !matches!(s, Seen::Batch(q) if *q <= h[0].1)),
        "{seen:?}"
    );
    // New batches are numbered above everything the collector claims.
    poll("spool drained", Duration::from_secs(30), || async {
        let s = &agent.status;
        (s.acked_seq.load(Ordering::Relaxed) > second_resume && s.spool_batches.load(Ordering::Relaxed) <= 1)
            .then_some(())
    })
    .await;
    assert!(agent.status.produced_seq.load(Ordering::Relaxed) > second_resume);
    agent.stop().await;
    server.abort();
}
