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
    // what it did not have and acknowledges all of it. Every batch gets its
    // own ack, after the resume ack the Hello gets (which may already say
    // BATCHES if the collector stored everything before the kill), so the
    // stream ends after BATCHES + 1 acks, not at the first ack of BATCHES.
    let collector = CollectorProcess::start(&data).await;
    let mut acks = 0;
    let acked_all = stream(t0, collector.grpc, 1..=BATCHES, |_| {
        acks += 1;
        acks <= BATCHES
    })
    .await;
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

/// Issue 4, backup of a running collector: while an agent keeps streaming,
/// `POST /api/v1/admin/backup` (401 without the admin token) streams a
/// snapshot, and `hostpulse-collector backup --url` writes one atomically.
/// Acks keep coming while a slow client holds the stream open. Each
/// snapshot, restored, holds every batch acknowledged before it was asked
/// for, its host seq matches its samples exactly (no batch above the seq,
/// none missing below it), and an agent's full replay then stores each
/// sample exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_over_http_while_ingesting_restores_every_acknowledged_batch() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    use hostpulse_collector::model::{Labels, SeriesSamples};
    use hostpulse_collector::store::{AppendOutcome, verify_backup};

    use crate::support::poll;

    const HOST: &str = "gamma";
    const SERIES: u32 = 20;
    const STEP_MS: i64 = 10_000;
    const TOKEN: &str = "backup-admin-token-0123456789abcdef";

    fn value(seq: u64, n: u32) -> f64 {
        seq as f64 * 100.0 + f64::from(n) + 0.125
    }
    fn ts(t0: i64, seq: u64) -> i64 {
        t0 + seq as i64 * STEP_MS
    }
    fn message(t0: i64, seq: u64) -> AgentMessage {
        let new_series = if seq == 1 {
            (0..SERIES)
                .map(|n| SeriesDefinition {
                    r#ref: n + 1,
                    name: "backup_probe".into(),
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
                base_timestamp_ms: ts(t0, seq),
                refs: (1..=SERIES).collect(),
                timestamp_deltas_ms: Vec::new(),
                values: (0..SERIES).map(|n| value(seq, n)).collect(),
                events: Vec::new(),
                ..Default::default()
            })),
        }
    }
    /// Every probe series of a restored snapshot holds exactly batches
    /// 1..=its host seq; returns that seq.
    fn check_snapshot(file: &std::path::Path, restored: &std::path::Path, t0: i64) -> u64 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_e2e-collector"))
            .args([
                "restore",
                "--data-dir",
                restored.to_str().unwrap(),
                file.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let store = Store::open(restored, StoreOptions::default()).unwrap();
        let seq = store
            .last_seq(HOST)
            .unwrap()
            .expect("the snapshot holds the host's seq");
        let series = store
            .select(&[Matcher::equal("__name__", "backup_probe")], 0, i64::MAX)
            .unwrap();
        assert_eq!(series.len(), SERIES as usize);
        for s in &series {
            let n: u32 = s.labels.get("n").parse().unwrap();
            let want: Vec<(i64, f64)> = (1..=seq).map(|q| (ts(t0, q), value(q, n))).collect();
            assert_eq!(
                s.samples, want,
                "series {n}: exactly batches 1..={seq} (the snapshot's seq)"
            );
        }
        seq
    }

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let token_file = tmp.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    // Two days back in 10 s steps: 2 h windows close as the batches go, so
    // the snapshots hold sealed block files as well as WAL records.
    let t0 = (hostpulse_agent::sampler::now_ms() / 1000 - 2 * 86_400) * 1000;
    /// Kills the collector if the test fails before it does.
    struct Reap(Option<CollectorProcess>);
    impl Drop for Reap {
        fn drop(&mut self) {
            if let Some(mut c) = self.0.take() {
                let _ = c.child.kill();
                let _ = c.child.wait();
            }
        }
    }
    let mut collector = Reap(Some(
        CollectorProcess::start_with(&data, &["--admin-token-file", token_file.to_str().unwrap()]).await,
    ));
    let (http, grpc) = collector.0.as_ref().map(|c| (c.http, c.grpc)).unwrap();

    // The agent streams until told to stop; `highest` is its latest ack,
    // `sent` the last batch it sent.
    let highest = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ended: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let streamer = {
        let (highest, sent, stop, ended) = (highest.clone(), sent.clone(), stop.clone(), ended.clone());
        tokio::spawn(async move {
            let mut client = IngestClient::connect(format!("http://{grpc}")).await.unwrap();
            let (tx, rx) = mpsc::channel(8);
            tx.send(AgentMessage {
                kind: Some(agent_message::Kind::Hello(Hello {
                    host: HOST.into(),
                    agent_version: "test".into(),
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
            let sender_stop = stop.clone();
            tokio::spawn(async move {
                // 500 batches a second, half the collector's per-host rate
                // limit (20,000 samples/s), so the stream is never refused.
                let mut pace = tokio::time::interval(Duration::from_millis(2));
                // Up to about now; the test stops it long before.
                for seq in 1..=17_000u64 {
                    pace.tick().await;
                    if sender_stop.load(Ordering::Relaxed) || tx.send(message(t0, seq)).await.is_err() {
                        return;
                    }
                    sent.store(seq, Ordering::SeqCst);
                }
                tx.closed().await;
            });
            let mut inbound = client.stream(ReceiverStream::new(rx)).await.unwrap().into_inner();
            let why = loop {
                match inbound.message().await {
                    Ok(Some(msg)) => {
                        if let Some(collector_message::Kind::Ack(ack)) = msg.kind {
                            highest.fetch_max(ack.seq, Ordering::SeqCst);
                        }
                        if stop.load(Ordering::Relaxed) {
                            break "stopped by the test".to_string();
                        }
                    }
                    Ok(None) => break "closed by the collector".to_string(),
                    Err(status) => break format!("{status:?}"),
                }
            };
            *ended.lock().unwrap() = Some(why);
        })
    };
    let acked = |at_least: u64| {
        let (highest, ended) = (highest.clone(), ended.clone());
        poll("acks", Duration::from_secs(120), move || {
            let h = highest.load(Ordering::SeqCst);
            if h < at_least
                && let Some(why) = ended.lock().unwrap().as_ref()
            {
                panic!("the agent's stream ended at ack {h}: {why}");
            }
            std::future::ready((h >= at_least).then_some(h))
        })
    };
    acked(2_000).await;

    let url = format!("http://{http}/api/v1/admin/backup");
    let client = reqwest::Client::new();
    let refused = client.post(&url).send().await.unwrap();
    assert_eq!(refused.status(), 401, "the admin token is required");
    let refused = client
        .post(&url)
        .bearer_auth("wrong-token-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "a wrong token is refused");

    // A slow client: it reads the first chunk, then waits for more acks
    // before reading the rest. Ingest must not wait for it.
    let before_first = highest.load(Ordering::SeqCst);
    let mut response = client.post(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let length = response.content_length().expect("the snapshot's length is announced");
    let mut body = response.chunk().await.unwrap().expect("a first chunk").to_vec();
    let during = highest.load(Ordering::SeqCst);
    let later = acked(during + 50).await;
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    assert_eq!(body.len() as u64, length);
    assert!(later > during, "acks went on while the backup stream was open");
    let first = tmp.path().join("first.hpb");
    std::fs::write(&first, &body).unwrap();
    verify_backup(&first).unwrap();

    // The command line, while the agent keeps streaming.
    let cli = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_e2e-collector"))
                .args(args)
                .env_remove("HOSTPULSE_ADMIN_TOKEN_FILE")
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let second = tmp.path().join("second.hpb");
    let base = format!("http://{http}");
    let out = cli(vec![
        "backup".into(),
        "--url".into(),
        base.clone(),
        second.display().to_string(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("401") && stderr.contains("--token-file"), "{stderr}");
    assert!(!second.exists() && !tmp.path().join("second.hpb.partial").exists());
    let dead = format!("http://127.0.0.1:{}", crate::support::free_port());
    let out = cli(vec![
        "backup".into(),
        "--url".into(),
        dead.clone(),
        second.display().to_string(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot reach the collector") && stderr.contains(&dead),
        "{stderr}"
    );
    let before_second = highest.load(Ordering::SeqCst);
    let out = cli(vec![
        "backup".into(),
        "--url".into(),
        base,
        "--token-file".into(),
        token_file.display().to_string(),
        second.display().to_string(),
    ])
    .await;
    assert!(
        out.status.success(),
        "backup --url: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!tmp.path().join("second.hpb.partial").exists());
    let after_second = highest.load(Ordering::SeqCst);
    assert!(
        after_second > before_second,
        "acks went on during `backup --url` (stream: {:?})",
        ended.lock().unwrap()
    );

    stop.store(true, Ordering::Relaxed);
    streamer.await.unwrap();
    let last_sent = sent.load(Ordering::SeqCst);
    collector.0.take().unwrap().kill_9();

    for (file, asked_after, name) in [(&first, before_first, "first"), (&second, before_second, "second")] {
        let restored = tmp.path().join(format!("restored-{name}"));
        let seq = check_snapshot(file, &restored, t0);
        assert!(
            seq >= asked_after,
            "{name}: snapshot seq {seq} misses batches acknowledged before the backup ({asked_after})"
        );
        // Batches it holds may be durable with their acks still on the way,
        // so the bound is what the agent sent.
        assert!(seq <= last_sent, "{name}: seq {seq} beyond anything sent ({last_sent})");
        // The agent replays everything it ever sent after a restore: only
        // what the snapshot lacked is stored, each sample once.
        let store = Store::open(&restored, StoreOptions::default()).unwrap();
        for q in 1..=seq + 20 {
            let batch: Vec<SeriesSamples> = (0..SERIES)
                .map(|n| SeriesSamples {
                    labels: Labels::from_pairs(&[
                        ("__name__", "backup_probe"),
                        ("instance", HOST),
                        ("job", "hostpulse"),
                        ("n", &n.to_string()),
                    ]),
                    samples: vec![(ts(t0, q), value(q, n))],
                })
                .collect();
            let outcome = store.append(HOST, q, batch).await.unwrap();
            assert_eq!(
                matches!(outcome, AppendOutcome::Duplicate { .. }),
                q <= seq,
                "{name} seq {q}: {outcome:?}"
            );
        }
        let series = store
            .select(&[Matcher::equal("__name__", "backup_probe")], 0, i64::MAX)
            .unwrap();
        assert_eq!(series.len(), SERIES as usize, "{name}: the replay made no new series");
        for s in &series {
            let n: u32 = s.labels.get("n").parse().unwrap();
            let want: Vec<(i64, f64)> = (1..=seq + 20).map(|q| (ts(t0, q), value(q, n))).collect();
            assert_eq!(
                s.samples, want,
                "{name} series {n}: every batch exactly once after the replay"
            );
        }
    }
}
