//! No acknowledged sample is lost and none is stored twice: a raw agent
//! streams numbered batches to the collector binary, the collector is
//! killed with SIGKILL mid-stream, and after restarts every acknowledged
//! batch is on disk, replays are recognised, and each sample exists once.

use hostpulse_collector::model::Matcher;
use hostpulse_collector::store::{Store, StoreOptions};
use hostpulse_proto::ingest_client::IngestClient;
use hostpulse_proto::{AgentMessage, Batch, Hello, Label, SeriesDefinition, agent_message, collector_message};
use std::collections::BTreeMap;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::{CollectorProcess, get_json};

const BATCHES: u64 = 300;
const SERIES: u32 = 3;

fn batch(t0: i64, seq: u64, define: bool) -> AgentMessage {
    let new_series = if define {
        (0..SERIES)
            .map(|n| SeriesDefinition {
                r#ref: n + 1,
                name: "durability_probe".into(),
                labels: vec![Label {
                    name: "n".into(),
                    value: n.to_string(),
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
            base_timestamp_ms: t0 + seq as i64 * 1000,
            refs: (1..=SERIES).collect(),
            timestamp_deltas_ms: Vec::new(),
            values: (0..SERIES).map(|n| value(seq, n)).collect(),
            events: Vec::new(),
            ..Default::default()
        })),
    }
}

fn value(seq: u64, n: u32) -> f64 {
    seq as f64 * 10.0 + f64::from(n) + 0.25
}

/// Streams batches `seqs` as host "beta"; calls `on_ack` for every ack and
/// stops when it returns false or the stream ends. Returns the highest ack.
async fn stream(
    t0: i64,
    grpc: std::net::SocketAddr,
    seqs: std::ops::RangeInclusive<u64>,
    mut on_ack: impl FnMut(u64) -> bool,
) -> u64 {
    let mut client = IngestClient::connect(format!("http://{grpc}")).await.unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            host: "beta".into(),
            agent_version: "test".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let first = *seqs.start();
    tokio::spawn(async move {
        for seq in seqs {
            if tx.send(batch(t0, seq, seq == first)).await.is_err() {
                return;
            }
        }
        // Keep the request side open until the collector has answered.
        tx.closed().await;
    });
    let mut inbound = client.stream(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut highest = 0;
    while let Ok(Some(msg)) = inbound.message().await {
        if let Some(collector_message::Kind::Ack(ack)) = msg.kind {
            assert!(ack.seq >= highest, "acks never go backwards");
            highest = ack.seq;
            if !on_ack(ack.seq) {
                break;
            }
        }
    }
    highest
}

/// Opens the store directly (the collector must not be running) and returns
/// each probe series' samples.
/// Samples per probe series (keyed by its `n` label).
type ProbeSamples = BTreeMap<String, Vec<(i64, f64)>>;

fn stored(data: &std::path::Path) -> (ProbeSamples, Option<u64>) {
    let store = Store::open(data, StoreOptions::default()).unwrap();
    let series = store
        .select(&[Matcher::equal("__name__", "durability_probe")], 0, i64::MAX)
        .unwrap();
    let map = series
        .into_iter()
        .map(|s| (s.labels.get("n").to_string(), s.samples))
        .collect();
    (map, store.last_seq("beta").unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_batches_survive_kill_9_and_are_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Recent enough to pass the collector's timestamp limits: an hour ago,
    // on a whole second.
    let t0 = (hostpulse_agent::sampler::now_ms() / 1000 - 3600) * 1000;

    // Stream until a third of the batches are acknowledged, then SIGKILL the
    // collector while batches are still in flight.
    let collector = CollectorProcess::start(&data).await;
    let acked = stream(t0, collector.grpc, 1..=BATCHES, |seq| seq < BATCHES / 3).await;
    assert!(acked >= BATCHES / 3, "acked {acked}");
    collector.kill_9();

    // Everything acknowledged is on disk, and the highest stored seq covers it.
    let (after_kill, last_seq) = stored(&data);
    let last_seq = last_seq.expect("the host's stored seq survives");
    assert!(last_seq >= acked, "stored seq {last_seq} < acked {acked}");
    for n in 0..SERIES {
        let samples = &after_kill[&n.to_string()];
        for seq in 1..=acked {
            let ts = t0 + seq as i64 * 1000;
            assert!(
                samples.contains(&(ts, value(seq, n))),
                "acknowledged batch {seq} of series {n} lost after kill -9"
            );
        }
    }

    // The agent resends everything from the start; the collector stores only
    // what it did not have and acknowledges all of it.
    let collector = CollectorProcess::start(&data).await;
    let acked_all = stream(t0, collector.grpc, 1..=BATCHES, |seq| seq < BATCHES).await;
    assert_eq!(acked_all, BATCHES);
    let metrics = reqwest::get(format!("http://{}/metrics", collector.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let duplicates: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hostpulse_ingest_duplicate_batches_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("/metrics reports duplicate batches");
    assert!(
        duplicates >= last_seq,
        "replays of {last_seq} stored batches recognised, saw {duplicates}"
    );
    let body = get_json(&format!(
        "http://{}/api/v1/query?query=durability_probe&time={}",
        collector.http,
        (t0 as f64 / 1000.0) + BATCHES as f64
    ))
    .await;
    assert_eq!(
        body["data"]["result"].as_array().map(Vec::len),
        Some(SERIES as usize),
        "{body}"
    );
    collector.kill_9();

    let (final_state, last_seq) = stored(&data);
    assert_eq!(last_seq, Some(BATCHES));
    for n in 0..SERIES {
        let samples = &final_state[&n.to_string()];
        let expected: Vec<(i64, f64)> = (1..=BATCHES)
            .map(|seq| (t0 + seq as i64 * 1000, value(seq, n)))
            .collect();
        assert_eq!(samples, &expected, "series {n}: every batch exactly once");
    }
}
