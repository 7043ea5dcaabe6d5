//! What one agent connection costs the collector in memory (issue 7): a
//! real collector process takes hundreds of loopback connections, each
//! with a Hello and a small batch, and its resident set may grow by only a
//! bounded amount per connection. The HTTP/2 windows, frame size and
//! listen backlog this bounds are set in `collector/src/server.rs`.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hostpulse_proto::ingest_client::IngestClient;
use hostpulse_proto::{AgentMessage, Batch, CollectorMessage, Hello, Label, SeriesDefinition, agent_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Connections measured (after [`WARM`] that are left out, so one-time
/// allocations — runtime threads, store caches, mimalloc's per-thread
/// heaps — do not count as per-connection cost).
const CONNECTIONS: usize = 500;
/// Connections opened before the first measurement.
const WARM: usize = 50;
/// Connections being opened at once, like a connect storm but bounded.
const PARALLEL: usize = 50;
/// Series in each connection's batch: definitions with labels, like an
/// agent's first batch.
const SERIES: u32 = 50;
/// Allowed resident growth per held connection. Measured on the quick
/// build (/tmp/bench-G.md): the transport alone (h2 read/write buffers,
/// HPACK tables, tonic's decode/encode buffers, connection and stream
/// tasks, ingest's per-stream state) costs 73–81 KiB with one series, and
/// each series the agent defines adds ~0.7 KiB of index and label state,
/// so 50 series measured 90–106 KiB. 160 KiB leaves allocator slack but
/// fails if a connection starts buffering a flow-control window (128 KiB
/// per stream, `GRPC_STREAM_WINDOW_BYTES`) or if per-series state grows
/// several-fold (300 series measured 282–303 KiB).
const MAX_BYTES_PER_CONNECTION: u64 = 160 * 1024;

/// The collector child, killed when the test ends however it ends.
struct Collector {
    child: Child,
    grpc: SocketAddr,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_collector(data: &std::path::Path) -> Collector {
    // A built collector binary may stand in, to measure another version
    // (the figures in /tmp/bench-G.md compare two builds this way).
    let program = std::env::var_os("HOSTPULSE_CONNECTION_MEMORY_COLLECTOR")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_e2e-collector").into());
    let mut child = Command::new(program)
        .args(["--data-dir", data.to_str().unwrap()])
        .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Read the banner for the gRPC address, then keep draining stdout so
    // the child never writes into a closed pipe.
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("agents connect")
                && let Some(addr) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("http://"))
                    .and_then(|a| a.trim_end_matches('/').parse::<SocketAddr>().ok())
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr);
            }
        }
    });
    let grpc = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("collector did not start in 60s");
    Collector { child, grpc }
}

/// `VmRSS` of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// An open agent stream, held so its connection stays up.
struct Held {
    _tx: mpsc::Sender<AgentMessage>,
    _inbound: tonic::Streaming<CollectorMessage>,
}

/// One connection of its own: Hello, a batch of [`SERIES`] definitions and
/// values, and its ack.
async fn connect(grpc: SocketAddr, i: usize) -> Held {
    let mut client = IngestClient::connect(format!("http://{grpc}")).await.unwrap();
    let (tx, rx) = mpsc::channel(4);
    let hello = Hello {
        host: format!("conn-{i}"),
        agent_version: "test".into(),
        ..Default::default()
    };
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Hello(hello)),
    })
    .await
    .unwrap();
    let mut inbound = client.stream(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let batch = Batch {
        seq: 1,
        new_series: (1..=SERIES)
            .map(|r| SeriesDefinition {
                r#ref: r,
                name: "hostpulse_conn_probe".into(),
                labels: vec![Label {
                    name: "sensor".into(),
                    value: format!("s{r}"),
                }],
            })
            .collect(),
        base_timestamp_ms: hostpulse_agent::sampler::now_ms(),
        refs: (1..=SERIES).collect(),
        values: (1..=SERIES).map(f64::from).collect(),
        ..Default::default()
    };
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Batch(batch)),
    })
    .await
    .unwrap();
    loop {
        let m = inbound.message().await.unwrap().expect("stream ended before the ack");
        match m.kind {
            Some(hostpulse_proto::collector_message::Kind::Ack(a)) if a.seq == 1 => break,
            Some(hostpulse_proto::collector_message::Kind::Error(e)) => panic!("collector error: {e:?}"),
            _ => {}
        }
    }
    Held {
        _tx: tx,
        _inbound: inbound,
    }
}

/// Opens `count` acknowledged connections, [`PARALLEL`] at a time.
async fn open(grpc: SocketAddr, first: usize, count: usize, held: &mut Vec<Held>) {
    let mut set = tokio::task::JoinSet::new();
    for i in first..first + count {
        if set.len() >= PARALLEL {
            held.push(set.join_next().await.unwrap().unwrap());
        }
        set.spawn(connect(grpc, i));
    }
    while let Some(h) = set.join_next().await {
        held.push(h.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_agent_connection_costs_the_collector_a_bounded_amount_of_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = start_collector(&tmp.path().join("data"));
    let pid = collector.child.id();
    let mut held = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        open(collector.grpc, 0, WARM, &mut held).await;
        let before = rss_bytes(pid);
        open(collector.grpc, WARM, CONNECTIONS, &mut held).await;
        let after = rss_bytes(pid);
        let per = after.saturating_sub(before) / CONNECTIONS as u64;
        eprintln!(
            "collector RSS {} KiB -> {} KiB over {CONNECTIONS} connections: {} KiB each",
            before / 1024,
            after / 1024,
            per / 1024
        );
        assert_eq!(held.len(), WARM + CONNECTIONS, "every connection acknowledged");
        assert!(
            per <= MAX_BYTES_PER_CONNECTION,
            "{per} bytes per connection, over {MAX_BYTES_PER_CONNECTION}"
        );
    })
    .await
    .expect("connections not acknowledged within 120s");
}
