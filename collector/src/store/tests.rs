//! Tests of the store through its public API: round trips, replays,
//! reopening, matcher semantics, concurrent group commit, and surviving a
//! `kill -9` of a process that was appending.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use super::*;
use crate::model::{Matcher, STALE_NAN_BITS, is_stale_marker};
use crate::store::keys::BlockId;
use std::sync::atomic::{AtomicBool, AtomicU64};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs)
}

fn series(pairs: &[(&str, &str)], samples: &[(i64, f64)]) -> SeriesSamples {
    SeriesSamples {
        labels: labels(pairs),
        samples: samples.to_vec(),
    }
}

fn open(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default()).unwrap()
}

/// Opens a store whose database was just dropped in this process. sled's
/// background threads release the directory lock shortly after the last
/// handle goes, so a busy machine needs a few attempts.
fn open_after_drop(dir: &Path) -> Result<Store, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(dir, StoreOptions::default()) {
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn reopen(dir: &Path) -> Store {
    open_after_drop(dir).unwrap()
}

fn temp(host: &str, sensor: &str) -> Vec<(&'static str, String)> {
    vec![
        ("__name__", "node_hwmon_temp_celsius".into()),
        ("instance", host.into()),
        ("sensor", sensor.into()),
    ]
}

fn owned(pairs: &[(&'static str, String)]) -> Labels {
    Labels::new(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
}

#[tokio::test]
async fn round_trip_selects_the_range_ascending() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = series(
        &[("__name__", "up"), ("instance", "a")],
        &[(3000, 3.0), (1000, 1.0), (2000, 2.0)],
    );
    let stale = f64::from_bits(STALE_NAN_BITS);
    let b = series(&[("__name__", "up"), ("instance", "b")], &[(1000, 10.0), (5000, stale)]);
    let out = store.append("a", 1, vec![a.clone(), b.clone()]).await.unwrap();
    assert_eq!(out, AppendOutcome::Stored { samples: 5 });

    let got = store.select(&[Matcher::equal("__name__", "up")], 1000, 2000).unwrap();
    assert_eq!(
        got,
        vec![
            series(&[("__name__", "up"), ("instance", "a")], &[(1000, 1.0), (2000, 2.0)]),
            series(&[("__name__", "up"), ("instance", "b")], &[(1000, 10.0)]),
        ]
    );
    // Inclusive end, and a series without samples in range is left out.
    let got = store.select(&[], 2500, 5000).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].samples, vec![(3000, 3.0)]);
    assert!(is_stale_marker(got[1].samples[0].1));
    assert!(store.select(&[], 6000, 9000).unwrap().is_empty());
    assert!(store.select(&[], 9000, 0).unwrap().is_empty());
    assert_eq!(store.series(&[], 4000, 9000).unwrap(), vec![b.labels.clone()]);

    // Same (series, ts) overwrites: storing is idempotent.
    store
        .append(
            "a",
            2,
            vec![series(&[("__name__", "up"), ("instance", "a")], &[(1000, 7.0)])],
        )
        .await
        .unwrap();
    let got = store.select(&[Matcher::equal("instance", "a")], 0, 1000).unwrap();
    assert_eq!(got[0].samples, vec![(1000, 7.0)]);
    assert_eq!(store.stats().series, 2);
    assert!(store.stats().disk_bytes > 0);
    assert!(store.flushes() >= 2);
    let exported = store
        .stats()
        .metrics()
        .into_iter()
        .find(|m| m.0 == "hostpulse_store_flushes_total")
        .map(|m| m.3);
    assert_eq!(exported, Some(store.flushes()), "flushes reach /metrics");
}

#[tokio::test]
async fn replayed_seq_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.last_seq("h").unwrap(), None);
    let s = |v| vec![series(&[("__name__", "m"), ("instance", "h")], &[(1000, v)])];
    assert_eq!(
        store.append("h", 0, s(1.0)).await.unwrap(),
        AppendOutcome::Stored { samples: 1 }
    );
    assert_eq!(store.last_seq("h").unwrap(), Some(0));
    assert_eq!(
        store.append("h", 0, s(2.0)).await.unwrap(),
        AppendOutcome::Duplicate { last_seq: 0 }
    );
    store.append("h", 5, s(5.0)).await.unwrap();
    assert_eq!(
        store.append("h", 4, s(4.0)).await.unwrap(),
        AppendOutcome::Duplicate { last_seq: 5 }
    );
    let got = store.select(&[], 0, 2000).unwrap();
    assert_eq!(got[0].samples, vec![(1000, 5.0)], "replays wrote nothing");
    // Seqs are per host.
    assert_eq!(
        store.append("other", 1, vec![]).await.unwrap(),
        AppendOutcome::Stored { samples: 0 }
    );
    assert_eq!(store.last_seq("other").unwrap(), Some(1));
}

#[tokio::test]
async fn reopen_keeps_data_seq_and_hosts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .record_hello(HostRecord {
                host: "h".into(),
                agent_version: "0.1.0".into(),
                cpu_model: "Xeon".into(),
                last_report_ms: 10,
                ..Default::default()
            })
            .unwrap();
        store
            .append(
                "h",
                7,
                vec![series(&[("__name__", "m"), ("instance", "h")], &[(1000, 1.5)])],
            )
            .await
            .unwrap();
        // A later Hello merges facts and keeps the write path's fields.
        store
            .record_hello(HostRecord {
                host: "h".into(),
                agent_version: "0.2.0".into(),
                last_seq: 0,
                ..Default::default()
            })
            .unwrap();
        store
            .record_hello(HostRecord {
                host: "idle".into(),
                ..Default::default()
            })
            .unwrap();
        // Opening twice is refused with the directory named.
        let err = Store::open(dir.path(), StoreOptions::default()).err().unwrap();
        assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");
    }
    let store = reopen(dir.path());
    assert_eq!(store.last_seq("h").unwrap(), Some(7));
    assert_eq!(store.last_seq("idle").unwrap(), None);
    let hosts = store.hosts().unwrap();
    assert_eq!(hosts.iter().map(|h| h.host.as_str()).collect::<Vec<_>>(), ["h", "idle"]);
    assert_eq!(hosts[0].agent_version, "0.2.0");
    assert_eq!(hosts[0].last_seq, 7);
    assert_eq!(hosts[0].last_sample_ms, 1000);
    assert!(hosts[0].last_report_ms > 10);
    assert_eq!(store.select(&[], 0, 2000).unwrap()[0].samples, vec![(1000, 1.5)]);
    assert_eq!(
        store.append("h", 7, vec![]).await.unwrap(),
        AppendOutcome::Duplicate { last_seq: 7 }
    );
    // New series after reopen get fresh ids and do not clobber old ones.
    store
        .append(
            "h",
            8,
            vec![series(&[("__name__", "n"), ("instance", "h")], &[(1000, 2.5)])],
        )
        .await
        .unwrap();
    let got = store.select(&[], 0, 2000).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].samples, vec![(1000, 1.5)]);
    assert_eq!(got[1].samples, vec![(1000, 2.5)]);
}

#[tokio::test]
async fn matchers_follow_prometheus_including_absent_labels() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let batch = vec![
        SeriesSamples {
            labels: owned(&temp("a", "cpu")),
            samples: vec![(1, 1.0)],
        },
        SeriesSamples {
            labels: owned(&temp("b", "gpu")),
            samples: vec![(1, 2.0)],
        },
        series(
            &[("__name__", "node_hwmon_temp_celsius"), ("instance", "c")],
            &[(1, 3.0)],
        ),
    ];
    store.append("x", 1, batch).await.unwrap();

    let instances = |ms: &[Matcher]| -> Vec<String> {
        store
            .select(ms, 0, 10)
            .unwrap()
            .iter()
            .map(|s| s.labels.get("instance").to_string())
            .collect()
    };
    let re = |n: &str, p: &str| Matcher::regex(n, p).unwrap();
    let nre = |n: &str, p: &str| Matcher::not_regex(n, p).unwrap();
    assert_eq!(instances(&[Matcher::equal("sensor", "cpu")]), ["a"]);
    assert_eq!(instances(&[Matcher::equal("sensor", "")]), ["c"], "absent is empty");
    assert_eq!(instances(&[Matcher::not_equal("sensor", "cpu")]), ["b", "c"]);
    assert_eq!(instances(&[Matcher::not_equal("sensor", "")]), ["a", "b"]);
    assert_eq!(instances(&[re("sensor", "cpu|gpu")]), ["a", "b"]);
    assert_eq!(instances(&[re("sensor", "pu")]), Vec::<String>::new(), "anchored");
    assert_eq!(instances(&[re("sensor", ".*")]), ["a", "b", "c"]);
    assert_eq!(instances(&[re("sensor", ".+")]), ["a", "b"]);
    assert_eq!(instances(&[nre("sensor", "g.*")]), ["a", "c"]);
    assert_eq!(instances(&[nre("sensor", "")]), ["a", "b"]);
    assert_eq!(
        instances(&[
            Matcher::equal("__name__", "node_hwmon_temp_celsius"),
            nre("instance", "a|b")
        ]),
        ["c"]
    );
}

#[tokio::test]
async fn label_names_and_values_are_sorted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .append(
            "x",
            1,
            vec![
                SeriesSamples {
                    labels: owned(&temp("b", "gpu")),
                    samples: vec![(1, 1.0)],
                },
                SeriesSamples {
                    labels: owned(&temp("a", "cpu")),
                    samples: vec![(1, 1.0)],
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(store.label_names().unwrap(), ["__name__", "instance", "sensor"]);
    assert_eq!(store.label_values("instance").unwrap(), ["a", "b"]);
    assert!(store.label_values("missing").unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_flushes_and_are_all_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let host = format!("host{t}");
            for seq in 1..=20u64 {
                let s = SeriesSamples {
                    labels: owned(&temp(&host, "cpu")),
                    samples: vec![(seq as i64 * 1000, seq as f64)],
                };
                let out = store.append(&host, seq, vec![s]).await.unwrap();
                assert_eq!(out, AppendOutcome::Stored { samples: 1 });
            }
        }));
    }
    // Two racing appends of one host and seq: exactly one stores.
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.append("race", 1, vec![]).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut outcomes = Vec::new();
    for r in racers {
        outcomes.push(r.await.unwrap());
    }
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, AppendOutcome::Stored { .. }))
            .count(),
        1,
        "{outcomes:?}"
    );
    let got = store.select(&[Matcher::equal("sensor", "cpu")], 0, i64::MAX).unwrap();
    assert_eq!(got.len(), 8);
    assert!(got.iter().all(|s| s.samples.len() == 20));
    for t in 0..8 {
        assert_eq!(store.last_seq(&format!("host{t}")).unwrap(), Some(20));
    }
    // 161 appends; group commit should have needed fewer flushes (not a
    // hard bound: on an idle machine every append may find the queue empty).
    assert!(store.flushes() <= 161);
}

#[test]
fn corrupt_series_record_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree(keys::TREE).unwrap();
        tree.insert(keys::series_key(1), b"not json".as_slice()).unwrap();
        db.flush().unwrap();
    }
    let err = open_after_drop(dir.path()).err().unwrap();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

/// Env var telling [`kill_child_appender`] where to write; unset it does nothing.
const CHILD_DIR: &str = "HOSTPULSE_STORE_KILL_TEST_DIR";

/// Series and samples per series of each batch the kill-test child appends.
const KILL_SERIES: u64 = 20;
const KILL_SAMPLES: i64 = 50;

/// Options of the kill test's store: a window every 20 batches (20,000
/// samples, more than a seal on the writer thread takes, so the seal
/// thread seals them while appends go on), and a head bound small enough
/// that seals by size happen in between.
fn kill_options() -> StoreOptions {
    StoreOptions {
        window_ms: 20_000,
        out_of_order_ms: 1_000,
        head_max_bytes: 1 << 20,
        ..StoreOptions::default()
    }
}

/// Runs in a child process of [`acknowledged_appends_survive_kill_9`]: appends
/// forever, printing each seq once `append` returned.
#[test]
#[ignore = "helper process for acknowledged_appends_survive_kill_9"]
fn kill_child_appender() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(Path::new(&dir), kill_options()).unwrap();
        for seq in 1u64.. {
            let batch = (0..KILL_SERIES)
                .map(|s| SeriesSamples {
                    labels: labels(&[("__name__", "m"), ("instance", "k"), ("s", &s.to_string())]),
                    samples: (0..KILL_SAMPLES).map(|i| (seq as i64 * 1000 + i, seq as f64)).collect(),
                })
                .collect();
            store.append("k", seq, batch).await.unwrap();
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            writeln!(out, "acked {seq}").unwrap();
            out.flush().unwrap();
        }
    });
}

#[test]
fn acknowledged_appends_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "store::tests::kill_child_appender",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed at a seq that varies with timing, so over the runs of this
    // test at every point of a seal: frozen, blocks written, recorded.
    let stop_at = 60 + u64::from(std::process::id() % 40);
    let mut acked = 0u64;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(seq) = line.strip_prefix("acked ") {
            acked = seq.parse().unwrap();
            if acked >= stop_at {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(acked >= stop_at, "child stopped early after seq {acked}");

    // Whether the child's seals got as far as blocks depends on timing;
    // what must hold either way is below.
    let store = Store::open(dir.path(), kill_options()).unwrap();
    let last = store.last_seq("k").unwrap().unwrap();
    assert!(last >= acked, "acked {acked} but stored only up to {last}");
    let got = store.select(&[], 0, i64::MAX).unwrap();
    // Every batch that made it is whole: atomic with its seq.
    assert_eq!(got.len() as u64, KILL_SERIES);
    for s in &got {
        assert_eq!(s.samples.len() as u64, last * KILL_SAMPLES as u64, "{}", s.labels);
    }
    // And none is stored twice (in two blocks, or in a block and the heads).
    assert_eq!(stored_samples(&store), last * KILL_SERIES * KILL_SAMPLES as u64);
    assert_eq!(
        store.append("k", last, vec![]).await_blocking(),
        AppendOutcome::Duplicate { last_seq: last }
    );
}

/// Lets the synchronous kill test await one append.
trait AwaitBlocking {
    type Output;
    fn await_blocking(self) -> Self::Output;
}

impl<F: std::future::Future<Output = Result<AppendOutcome, StoreError>>> AwaitBlocking for F {
    type Output = AppendOutcome;
    fn await_blocking(self) -> AppendOutcome {
        tokio::runtime::Runtime::new().unwrap().block_on(self).unwrap()
    }
}

/// Options with tiny windows so tests cross many of them quickly.
fn small(window_ms: i64, out_of_order_ms: i64) -> StoreOptions {
    StoreOptions {
        window_ms,
        out_of_order_ms,
        ..StoreOptions::default()
    }
}

fn host_series(host: &str, name: &str, samples: Vec<(i64, f64)>) -> SeriesSamples {
    SeriesSamples {
        labels: labels(&[("__name__", name), ("instance", host)]),
        samples,
    }
}

fn count_prefix(store: &Store, prefix: u8) -> usize {
    store.shared.tree.scan_prefix([prefix]).count()
}

fn bits(samples: &[(i64, f64)]) -> Vec<(i64, u64)> {
    samples.iter().map(|(t, v)| (*t, v.to_bits())).collect()
}

/// Deterministic test data: per series, irregular timestamps and values of
/// several shapes (decimals, counters, specials).
fn generated(seed: u64, hosts: usize, per_host: usize, n: usize, t0: i64, step: i64) -> Vec<SeriesSamples> {
    let mut rng = codec::proptests_rng(seed);
    let mut out = Vec::new();
    for h in 0..hosts {
        for s in 0..per_host {
            let mut t = t0;
            let mut acc = 0.0f64;
            let samples = (0..n)
                .map(|i| {
                    t += step + rng.below(3) as i64 - 1;
                    acc += (rng.below(100) as f64) / 4.0;
                    let v = match (s + i) % 11 {
                        0 if s % 3 == 0 => f64::from_bits(crate::model::STALE_NAN_BITS),
                        _ if s % 2 == 0 => acc,
                        _ => (rng.below(1000) as f64) / 10.0,
                    };
                    (t, v)
                })
                .collect();
            out.push(host_series(&format!("h{h}"), &format!("m{s}"), samples));
        }
    }
    out
}

async fn append_all(store: &Store, data: &[SeriesSamples], chunk: usize) {
    // In time order, a few samples per series per append, like agents do.
    let n = data.iter().map(|s| s.samples.len()).max().unwrap_or(0);
    for from in (0..n).step_by(chunk) {
        let batch: Vec<SeriesSamples> = data
            .iter()
            .map(|s| SeriesSamples {
                labels: s.labels.clone(),
                samples: s.samples.iter().skip(from).take(chunk).copied().collect(),
            })
            .collect();
        store.append_unsequenced(batch).await.unwrap();
    }
}

fn assert_same(got: &[SeriesSamples], want: &[SeriesSamples]) {
    let mut want = want.to_vec();
    want.sort_by(|a, b| a.labels.cmp(&b.labels));
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.labels, w.labels);
        assert_eq!(bits(&g.samples), bits(&w.samples), "{}", g.labels);
    }
}

#[tokio::test]
async fn sealed_blocks_heads_and_reopen_serve_the_same_samples() {
    let dir = tempfile::tempdir().unwrap();
    let data = generated(1, 3, 4, 400, 1_000_000, 10);
    {
        let store = Store::open(dir.path(), small(1000, 100)).unwrap();
        append_all(&store, &data, 7).await;
        let stats = store.stats();
        assert!(
            stats.blocks > 0 && stats.seals > 0,
            "windows closed while appending: {stats:?}"
        );
        assert!(stats.head_samples > 0, "the newest windows stay in heads");
        assert_same(&store.select(&[], i64::MIN, i64::MAX).unwrap(), &data);
        // A sub-range crossing block and head boundaries.
        let got = store
            .select(&[Matcher::equal("instance", "h1")], 1_002_345, 1_003_456)
            .unwrap();
        assert_eq!(got.len(), 4);
        for g in &got {
            let want: Vec<_> = data
                .iter()
                .find(|d| d.labels == g.labels)
                .unwrap()
                .samples
                .iter()
                .filter(|s| (1_002_345..=1_003_456).contains(&s.0))
                .copied()
                .collect();
            assert_eq!(bits(&g.samples), bits(&want));
        }
        // 58 appends, a seal every ~15: only records since the last seal remain.
        let wal = count_prefix(&store, keys::WAL);
        assert!((1..20).contains(&wal), "sealed WAL records are deleted: {wal} left");
    }
    // Reopen: blocks from the catalog, the rest replayed from the WAL.
    let store = open_after_drop_with(dir.path(), small(1000, 100)).unwrap();
    assert!(store.stats().head_samples > 0, "WAL replayed into heads");
    assert_same(&store.select(&[], i64::MIN, i64::MAX).unwrap(), &data);
    store.seal_all().unwrap();
    assert_eq!(count_prefix(&store, keys::WAL), 0, "seal_all empties the WAL");
    // `series` answers from block directories; it must agree with `select`,
    // including ranges that fall between two samples of a section.
    let sparse = host_series("h9", "sparse", vec![(1_000_100, 1.0), (1_000_900, 2.0)]);
    store.append_unsequenced(vec![sparse]).await.unwrap();
    store.seal_all().unwrap();
    for (a, b) in [
        (0, i64::MAX),
        (1_000_200, 1_000_800),
        (1_000_050, 1_000_100),
        (1_003_000, 1_003_001),
        (5_000_000, 6_000_000),
    ] {
        let want: Vec<Labels> = store.select(&[], a, b).unwrap().into_iter().map(|s| s.labels).collect();
        assert_eq!(store.series(&[], a, b).unwrap(), want, "[{a}, {b}]");
    }
    let data: Vec<SeriesSamples> = data
        .into_iter()
        .chain([host_series("h9", "sparse", vec![(1_000_100, 1.0), (1_000_900, 2.0)])])
        .collect();
    assert_eq!(store.stats().head_samples, 0);
    assert_same(&store.select(&[], i64::MIN, i64::MAX).unwrap(), &data);
    // One block per host and window after compaction.
    let catalog = store.shared.catalog.read().unwrap();
    let mut windows = std::collections::HashSet::new();
    for id in catalog.keys() {
        assert!(windows.insert((id.group, id.window)), "two blocks in {id:?}");
    }
}

fn open_after_drop_with(dir: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(dir, opts.clone()) {
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

#[tokio::test]
async fn later_writes_win_over_sealed_ones_and_compaction_keeps_that() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small(1000, 10_000)).unwrap();
    let s = |v: f64| vec![host_series("a", "m", vec![(100, v), (200, v)])];
    store.append_unsequenced(s(1.0)).await.unwrap();
    store.seal_all().unwrap();
    store
        .append_unsequenced(vec![host_series("a", "m", vec![(200, 2.0)])])
        .await
        .unwrap();
    assert_eq!(
        store.select(&[], 0, 1000).unwrap()[0].samples,
        vec![(100, 1.0), (200, 2.0)]
    );
    store.seal_all().unwrap();
    assert_eq!(store.stats().blocks, 1, "compacted into one block");
    assert_eq!(
        store.select(&[], 0, 1000).unwrap()[0].samples,
        vec![(100, 1.0), (200, 2.0)]
    );
}

#[tokio::test]
async fn samples_too_far_out_of_order_are_rejected_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small(1000, 50)).unwrap();
    let m = |samples: Vec<(i64, f64)>| vec![host_series("a", "m", samples)];
    let r = store
        .append_detailed("a", 1, m(vec![(500, 1.0), (460, 2.0), (449, 3.0)]))
        .await
        .unwrap();
    assert_eq!(r.outcome, AppendOutcome::Stored { samples: 2 });
    assert_eq!(r.rejected_out_of_order, 1);
    let r = store
        .append_detailed("a", 2, m(vec![(451, 4.0), (300, 5.0)]))
        .await
        .unwrap();
    assert_eq!(
        (r.outcome, r.rejected_out_of_order),
        (AppendOutcome::Stored { samples: 1 }, 1)
    );
    assert_eq!(store.append_unsequenced(m(vec![(1, 0.0)])).await.unwrap(), 0);
    assert_eq!(store.stats().rejected_out_of_order, 3);
    assert_eq!(
        store.select(&[], 0, 1000).unwrap()[0].samples,
        vec![(451, 4.0), (460, 2.0), (500, 1.0)]
    );
}

#[tokio::test]
async fn damaged_wal_record_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .append("a", 1, vec![host_series("a", "m", vec![(1, 1.0)])])
            .await
            .unwrap();
        store
            .append("a", 2, vec![host_series("a", "m", vec![(2, 2.0)])])
            .await
            .unwrap();
        // Tear the newest record: a truncated value, as a torn write leaves.
        let (key, value) = store.shared.tree.scan_prefix([keys::WAL]).last().unwrap().unwrap();
        store.shared.tree.insert(key, &value[..value.len() - 3]).unwrap();
        store.shared.db.flush().unwrap();
    }
    let store = reopen(dir.path());
    assert_eq!(store.stats().wal_records_cut, 1);
    assert_eq!(store.select(&[], 0, 10).unwrap()[0].samples, vec![(1, 1.0)]);
    assert_eq!(count_prefix(&store, keys::WAL), 1, "the damaged record is gone");
}

#[tokio::test]
async fn damaged_block_is_skipped_while_the_rest_serves() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let data = vec![
        host_series("a", "m", vec![(1, 1.0), (2, 2.0)]),
        host_series("b", "m", vec![(1, 3.0)]),
    ];
    store.append_unsequenced(data).await.unwrap();
    store.seal_all().unwrap();
    let a = BlockId {
        group: keys::group_hash("a"),
        window: 0,
        lsn: 0,
    };
    let key = store
        .shared
        .files
        .keys()
        .unwrap()
        .into_iter()
        .find(|k| k.as_slice() >= keys::block_key(keys::BLOCK, a).as_slice())
        .unwrap();
    let mut bad = store.shared.files.get(&key).unwrap().unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    store.shared.files.put_all(&[(key, bad)]).unwrap();
    let got = store.select(&[], 0, 10).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].labels.get("instance"), "b");
    assert_eq!(store.stats().corrupt_blocks, 1);
    // Reported once, not per read; rollups of the intact block still serve.
    store.select(&[], 0, 10).unwrap();
    assert_eq!(store.stats().corrupt_blocks, 1);
    assert!(
        !store
            .select_rollup(&[], 0, 10, Resolution::FiveMinutes)
            .unwrap()
            .is_empty()
    );
}

/// Rollups computed from raw samples, for comparison.
fn raw_rollups(store: &Store, start: i64, end: i64, res: Resolution) -> Vec<RollupSeries> {
    let w = res.millis();
    let first = start.div_euclid(w) * w;
    let last = end.div_euclid(w) * w + w - 1;
    store
        .select(&[], first, last)
        .unwrap()
        .into_iter()
        .map(|s| RollupSeries {
            labels: s.labels,
            buckets: rollup::buckets(&s.samples, res)
                .into_iter()
                .filter(|b| (start..=end).contains(&b.start_ms))
                .collect(),
        })
        .filter(|r| !r.buckets.is_empty())
        .collect()
}

fn assert_rollups_equal(got: &[RollupSeries], want: &[RollupSeries]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.labels, w.labels);
        assert_eq!(g.buckets.len(), w.buckets.len(), "{}", g.labels);
        for (a, b) in g.buckets.iter().zip(&w.buckets) {
            assert_eq!(
                (a.start_ms, a.count, a.min.to_bits(), a.max.to_bits(), a.last.to_bits()),
                (b.start_ms, b.count, b.min.to_bits(), b.max.to_bits(), b.last.to_bits()),
                "{}",
                g.labels
            );
            assert!(
                a.sum == b.sum || (a.sum.is_nan() && b.sum.is_nan()),
                "{} {a:?} {b:?}",
                g.labels
            );
        }
    }
}

#[tokio::test]
async fn rollups_equal_the_raw_data_sealed_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let hour = 3_600_000;
    let store = Store::open(dir.path(), small(2 * hour, 60_000)).unwrap();
    // 7 hours of 30 s samples: several sealed windows plus open heads.
    let data = generated(7, 2, 3, 840, 10 * hour, 30_000);
    append_all(&store, &data, 40).await;
    assert!(store.stats().blocks > 0 && store.stats().head_samples > 0);
    for res in [Resolution::FiveMinutes, Resolution::OneHour] {
        for (start, end) in [
            (0, i64::MAX / 2),
            (10 * hour + 1, 14 * hour + 7),
            (13 * hour, 13 * hour),
        ] {
            let got = store.select_rollup(&[], start, end, res).unwrap();
            assert_rollups_equal(&got, &raw_rollups(&store, start, end, res));
        }
    }
    store.seal_all().unwrap();
    let got = store.select_rollup(
        &[Matcher::equal("instance", "h1")],
        0,
        i64::MAX / 2,
        Resolution::OneHour,
    );
    let want: Vec<_> = raw_rollups(&store, 0, i64::MAX / 2, Resolution::OneHour)
        .into_iter()
        .filter(|r| r.labels.get("instance") == "h1")
        .collect();
    assert_rollups_equal(&got.unwrap(), &want);
}

#[tokio::test]
async fn retention_drops_raw_blocks_and_keeps_rollups() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        retention_ms: Some(3000),
        ..small(1000, 100)
    };
    let store = Store::open(dir.path(), opts).unwrap();
    let data = vec![host_series("a", "m", (0..100).map(|i| (i * 100, i as f64)).collect())];
    let rollups_before = {
        append_all(&store, &data, 10).await;
        store.seal_all().unwrap();
        store.select_rollup(&[], 0, 2000, Resolution::FiveMinutes).unwrap()
    };
    // Newest sample 9900: raw windows ending at or before 6900 are gone.
    let got = store.select(&[], 0, 10_000).unwrap();
    assert_eq!(got[0].samples.first().unwrap().0, 6000);
    assert_eq!(got[0].samples.len(), 40);
    // The 5 m rollup bucket [0, 300000) still counts all 100 samples: it
    // was built before the raw data expired and is kept.
    let after = store.select_rollup(&[], 0, 2000, Resolution::FiveMinutes).unwrap();
    assert_eq!(after[0].buckets[0].count, 100);
    assert_eq!(after, rollups_before);
}

#[tokio::test]
async fn backup_while_open_restores_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("live"), small(1000, 100)).unwrap();
    let data = generated(3, 2, 2, 300, 0, 10);
    append_all(&store, &data, 13).await;
    store.append("h0", 9, vec![]).await.unwrap();
    let snap = dir.path().join("snap");
    store.backup_to(&snap).unwrap();
    restore_from(&snap, &dir.path().join("copy")).unwrap();
    let copy = Store::open(&dir.path().join("copy"), small(1000, 100)).unwrap();
    assert_same(&copy.select(&[], i64::MIN, i64::MAX).unwrap(), &data);
    assert_eq!(copy.last_seq("h0").unwrap(), Some(9));
}

/// Prints the statistics of the store in `HOSTPULSE_STORE_STATS_DIR` (a
/// measurement aid, e.g. after `hostpulse-collector import`).
#[test]
#[ignore = "measurement; needs HOSTPULSE_STORE_STATS_DIR"]
fn print_store_stats() {
    let Some(dir) = std::env::var_os("HOSTPULSE_STORE_STATS_DIR") else {
        return;
    };
    let store = open(Path::new(&dir));
    let stats = store.stats();
    let mut by_kind: BTreeMap<u8, (usize, usize)> = BTreeMap::new();
    for item in store.shared.tree.iter() {
        let (k, v) = item.unwrap();
        let e = by_kind.entry(k[0]).or_default();
        e.0 += 1;
        e.1 += v.len();
    }
    for k in store.shared.files.keys().unwrap() {
        let e = by_kind.entry(k[0]).or_default();
        e.0 += 1;
        e.1 += store.shared.files.get(&k).unwrap().unwrap().len();
    }
    println!("directory: {} bytes", dir_bytes(Path::new(&dir)));
    for (kind, (n, bytes)) in by_kind {
        println!("{}: {n} records, {bytes} bytes", kind as char);
    }
    println!("{stats:?}");
}

/// Data appended, sealed and closed in `dir`; returns what was appended.
async fn loaded(dir: &Path) -> Vec<SeriesSamples> {
    let data = generated(11, 4, 10, 3000, 1_000_000, 1000);
    let store = Store::open(dir, small(600_000, 60_000)).unwrap();
    append_all(&store, &data, 60).await;
    store.append("h0", 5, vec![]).await.unwrap();
    store.seal_all().unwrap();
    data
}

fn open_small(dir: &Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(dir, small(600_000, 60_000)) {
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

#[tokio::test]
async fn compaction_shrinks_the_directory_and_keeps_every_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let data = loaded(&dir).await;
    let report = compact_dir(&dir).unwrap();
    assert_eq!(report.bytes_after, dir_bytes(&dir));
    assert!(
        report.bytes_after * 2 < report.bytes_before,
        "the WAL's space is given back: {report:?}"
    );
    assert!(!tmp.path().join("data.compact-new").exists() && !tmp.path().join("data.compact-old").exists());
    let store = open_small(&dir);
    assert_same(&store.select(&[], i64::MIN, i64::MAX).unwrap(), &data);
    assert_eq!(store.last_seq("h0").unwrap(), Some(5));
    // A compacted store keeps taking writes and survives another round.
    store
        .append("h0", 6, vec![host_series("h0", "late", vec![(9_000_000, 1.0)])])
        .await
        .unwrap();
    drop(store);
    compact_dir(&dir).unwrap();
    let store = open_small(&dir);
    assert_eq!(store.last_seq("h0").unwrap(), Some(6));
    assert_eq!(
        store
            .select(&[Matcher::equal("__name__", "late")], 0, i64::MAX)
            .unwrap()
            .len(),
        1
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn a_compaction_interrupted_anywhere_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let data = loaded(&dir).await;
    // Make sure sled released the directory before copying its files.
    drop(open_small(&dir));
    let new = tmp.path().join("data.compact-new");
    let old = tmp.path().join("data.compact-old");

    // Killed while copying: a partial copy beside the intact store.
    std::fs::create_dir_all(new.join("blobs")).unwrap();
    std::fs::write(new.join("db"), b"half a database").unwrap();
    let store = open_small(&dir);
    assert!(!new.exists(), "the partial copy is removed");
    assert_same(&store.select(&[], i64::MIN, i64::MAX).unwrap(), &data);
    drop(store);

    // Killed between the renames: only the old store and the finished copy.
    drop(open_small(&dir));
    copy_dir(&dir, &new);
    std::fs::rename(&dir, &old).unwrap();
    let store = open_small(&dir);
    assert!(!old.exists() && !new.exists());
    assert_same(&store.select(&[], i64::MIN, i64::MAX).unwrap(), &data);
    assert_eq!(store.last_seq("h0").unwrap(), Some(5));
    drop(store);

    // Killed before removing the old directory.
    drop(open_small(&dir));
    copy_dir(&dir, &old);
    let store = open_small(&dir);
    assert!(!old.exists());
    assert_same(&store.select(&[], i64::MIN, i64::MAX).unwrap(), &data);
}

#[tokio::test]
async fn open_moves_blocks_out_of_sled_and_drops_unlisted_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let data = loaded(&dir).await;
    let store = open_small(&dir);
    let listed = store.shared.files.keys().unwrap();
    assert!(listed.len() > 2);
    assert_eq!(
        count_prefix(&store, keys::BLOCK) + count_prefix(&store, keys::ROLLUP),
        0
    );
    // A block as an older store or a restored backup holds it: in sled.
    let moved = listed[0].clone();
    let bytes = store.shared.files.get(&moved).unwrap().unwrap();
    store.shared.tree.insert(&moved, bytes).unwrap();
    store.shared.files.remove_all(std::slice::from_ref(&moved)).unwrap();
    // A file a crashed seal wrote before its catalog entry.
    let orphan = keys::block_key(
        keys::BLOCK,
        BlockId {
            group: 1,
            window: 0,
            lsn: 999_999,
        },
    )
    .to_vec();
    store
        .shared
        .files
        .put_all(&[(orphan.clone(), b"unlisted".to_vec())])
        .unwrap();
    store.shared.db.flush().unwrap();
    drop(store);
    let store = open_small(&dir);
    assert_eq!(store.shared.files.get(&orphan).unwrap(), None, "unlisted file removed");
    assert!(
        store.shared.files.get(&moved).unwrap().is_some(),
        "block moved back out"
    );
    assert_eq!(count_prefix(&store, keys::BLOCK), 0);
    assert_same(&store.select(&[], i64::MIN, i64::MAX).unwrap(), &data);
    assert_eq!(store.stats().corrupt_blocks, 0);
}

/// Issue 4: a series stored once by labels can be appended to by the id the
/// store returned; the samples and the group (host) are the same, they
/// survive a reopen, and an id the store never gave out stores nothing.
#[tokio::test]
async fn appends_by_series_id_match_appends_by_labels() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a, b) = (owned(&temp("h", "t1")), owned(&temp("h", "t2")));
    let mut first = AppendBatch::default();
    first.push(SeriesKey::Labels(a.clone()), &[(1_000, 1.0)]);
    first.push(SeriesKey::Labels(b.clone()), &[]);
    let r = store.append_batch("h", 1, first).await.unwrap();
    assert_eq!(r.report.outcome, AppendOutcome::Stored { samples: 1 });
    assert_eq!(r.new_ids.len(), 1, "a series without samples gets no id");
    let (position, id) = r.new_ids[0];
    assert_eq!(position, 0);

    let mut next = AppendBatch::default();
    next.begin(SeriesKey::Id(id));
    next.sample(2_000, 2.0);
    next.sample(3_000, 3.0);
    next.push(SeriesKey::Labels(b.clone()), &[(2_000, 20.0)]);
    let r = store.append_batch("h", 2, next).await.unwrap();
    assert_eq!(r.report.outcome, AppendOutcome::Stored { samples: 3 });
    assert_eq!(r.new_ids.len(), 1);
    assert_ne!(r.new_ids[0].1, id);

    let mut bad = AppendBatch::default();
    bad.push(SeriesKey::Id(id), &[(4_000, 4.0)]);
    bad.push(SeriesKey::Id(9_999), &[(4_000, 4.0)]);
    assert!(matches!(
        store.append_batch("h", 3, bad).await,
        Err(StoreError::UnknownSeries(9_999))
    ));
    assert_eq!(store.last_seq("h").unwrap(), Some(2), "the failed batch is not stored");

    let check = |store: &Store| {
        let got = store.select(&[Matcher::equal("instance", "h")], 0, 10_000).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].labels, a);
        assert_eq!(got[0].samples, vec![(1_000, 1.0), (2_000, 2.0), (3_000, 3.0)]);
        assert_eq!(got[1].labels, b);
        assert_eq!(got[1].samples, vec![(2_000, 20.0)]);
    };
    check(&store);
    drop(store);
    let store = reopen(dir.path());
    check(&store);
    store.seal_all().unwrap();
    check(&store);
}

/// Samples the store holds, counted where they are kept (heads, live and
/// sealing, plus every raw block's sections) without the deduplication
/// reads do: a sample stored twice counts twice.
fn stored_samples(store: &Store) -> u64 {
    let heads = store.shared.heads.lock().unwrap().all_samples() as u64;
    let catalog = store.shared.catalog.read().unwrap();
    let mut blocks = 0u64;
    for (id, _) in catalog.iter().filter(|(_, e)| e.raw) {
        let bytes = store
            .shared
            .files
            .get(&keys::block_key(keys::BLOCK, *id))
            .unwrap()
            .unwrap();
        let view = block::parse(&bytes).unwrap();
        for s in &view.sections {
            blocks += view.decode(s).unwrap().len() as u64;
        }
    }
    heads + blocks
}

/// Freezes every head sample before `cut` as the writer does before a seal.
fn freeze(store: &Store, cut: i64) -> Arc<head::Generation> {
    let _writer = store.shared.write_lock.lock().unwrap();
    let through = store.shared.next_lsn.load(Ordering::SeqCst) - 1;
    store.shared.heads.lock().unwrap().freeze(cut, through).unwrap()
}

fn block_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join(files::DIR)).unwrap().count()
}

/// Issue 4/7 (a seal held up every ack): a crash after a seal wrote its
/// block files but before it recorded them leaves the WAL as it was; the
/// files are removed at open and every sample is there exactly once.
#[tokio::test]
async fn a_crash_between_blocks_written_and_seal_recorded_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = generated(5, 3, 4, 300, 1_000_000, 10);
    let total: u64 = data.iter().map(|s| s.samples.len() as u64).sum();
    {
        let store = open(dir.path());
        append_all(&store, &data, 7).await;
        // A cut in the middle of records: they are sealed only in part.
        let generation = freeze(&store, 1_001_500);
        let mut seal_state = store.shared.seal_lock.lock().unwrap();
        let prepared = seal::prepare(&store.shared, &seal_state, &generation, 1);
        seal::write_files(&store.shared, &prepared).unwrap();
        assert!(block_files(dir.path()) > 0);
        // The crash: the batch is never applied. (Dropping the store's
        // memory is what a kill does; nothing more reaches the disk.)
        drop(prepared);
        let _ = &mut seal_state;
    }
    let store = reopen(dir.path());
    assert_eq!(block_files(dir.path()), 0, "unlisted block files removed at open");
    assert_eq!(store.stats().blocks, 0);
    assert_same(&store.select(&[], i64::MIN, i64::MAX).unwrap(), &data);
    assert_eq!(stored_samples(&store), total);
    store.seal_all().unwrap();
    assert_eq!(stored_samples(&store), total);
    assert_same(&store.select(&[], i64::MIN, i64::MAX).unwrap(), &data);
}

/// The other side of that crash: once the seal's batch is applied, a
/// reopen replays only the samples its seal mark leaves unsealed, so the
/// records the seal covered only in part are not stored twice, and a later
/// seal deletes them and the mark.
#[tokio::test]
async fn a_partly_sealed_wal_replays_only_unsealed_samples() {
    let dir = tempfile::tempdir().unwrap();
    let data = generated(6, 3, 4, 300, 1_000_000, 10);
    let total: u64 = data.iter().map(|s| s.samples.len() as u64).sum();
    {
        let store = open(dir.path());
        append_all(&store, &data, 7).await;
        let wal_before = count_prefix(&store, keys::WAL);
        let generation = freeze(&store, 1_001_500);
        let mut seal_state = store.shared.seal_lock.lock().unwrap();
        let sealed = seal::seal_generation(&store.shared, &mut seal_state, &generation, 2).unwrap();
        assert!(sealed > 0 && (sealed as u64) < total);
        let wal_after = count_prefix(&store, keys::WAL);
        assert!(
            0 < wal_after && wal_after < wal_before,
            "wholly sealed records deleted, partly sealed kept: {wal_before} -> {wal_after}"
        );
        assert!(store.shared.tree.get(seal::META_SEAL_MARKS).unwrap().is_some());
        assert_eq!(stored_samples(&store), total);
    }
    let store = reopen(dir.path());
    assert!(store.stats().blocks > 0 && store.stats().head_samples > 0);
    assert_eq!(stored_samples(&store), total, "nothing sealed is replayed again");
    assert_same(&store.select(&[], i64::MIN, i64::MAX).unwrap(), &data);
    store.seal_all().unwrap();
    assert_eq!(count_prefix(&store, keys::WAL), 0);
    assert!(
        store.shared.tree.get(seal::META_SEAL_MARKS).unwrap().is_none(),
        "no record left to mark"
    );
    assert_eq!(stored_samples(&store), total);
    drop(store);
    let store = reopen(dir.path());
    assert_eq!(stored_samples(&store), total);
    assert_same(&store.select(&[], i64::MIN, i64::MAX).unwrap(), &data);
}

/// Readers see every sample at every step of a seal: frozen, files
/// written, recorded; and writes that arrive meanwhile (rewrites of frozen
/// timestamps included) win over the generation being sealed.
#[tokio::test]
async fn queries_see_every_sample_while_a_generation_seals() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = generated(7, 2, 3, 200, 1_000_000, 10);
    let store = open(dir.path());
    append_all(&store, &data, 9).await;
    let all = |store: &Store| store.select(&[], i64::MIN, i64::MAX).unwrap();
    let generation = freeze(&store, i64::MAX);
    assert_eq!(store.stats().head_samples as usize, generation.samples);
    assert_same(&all(&store), &data);
    // New samples and a rewrite of a frozen one, appended mid-seal.
    let rewrite = (data[0].samples[10].0, -1.0);
    data[0].samples[10] = rewrite;
    data[0].samples.push((9_000_000, 9.0));
    store
        .append_unsequenced(vec![SeriesSamples {
            labels: data[0].labels.clone(),
            samples: vec![rewrite, (9_000_000, 9.0)],
        }])
        .await
        .unwrap();
    assert_same(&all(&store), &data);
    let mut seal_state = store.shared.seal_lock.lock().unwrap();
    let prepared = seal::prepare(&store.shared, &seal_state, &generation, 1);
    seal::write_files(&store.shared, &prepared).unwrap();
    assert_same(&all(&store), &data);
    seal::record(&store.shared, &mut seal_state, &generation, prepared).unwrap();
    drop(seal_state);
    assert!(store.stats().blocks > 0);
    assert_eq!(store.stats().head_samples, 2, "only the mid-seal writes stay in heads");
    assert_same(&all(&store), &data);
    drop(store);
    let store = reopen(dir.path());
    assert_same(&all(&store), &data);
}

/// The same with the real seal thread: a reader polling while appends go
/// on and generations seal in the background never sees a sample go
/// missing, and the commit path keeps answering while a seal is pending.
#[test]
fn readers_never_miss_samples_while_the_seal_thread_works() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(dir.path(), kill_options()).unwrap();
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (store, acked, done) = (store.clone(), Arc::clone(&acked), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut checks = 0u64;
            while !done.load(Ordering::Acquire) || checks == 0 {
                // Batches acknowledged before the read must all be seen.
                let before = acked.load(Ordering::Acquire);
                let got = store.select(&[], 0, i64::MAX).unwrap();
                for s in &got {
                    let seen = s.samples.len() as u64;
                    assert!(
                        seen >= before * KILL_SAMPLES as u64,
                        "{}: {seen} < {before} batches",
                        s.labels
                    );
                }
                checks += 1;
            }
            checks
        })
    };
    rt.block_on(async {
        for seq in 1..=120u64 {
            let batch = (0..KILL_SERIES)
                .map(|s| SeriesSamples {
                    labels: labels(&[("__name__", "m"), ("instance", "k"), ("s", &s.to_string())]),
                    samples: (0..KILL_SAMPLES).map(|i| (seq as i64 * 1000 + i, seq as f64)).collect(),
                })
                .collect();
            store.append("k", seq, batch).await.unwrap();
            acked.store(seq, Ordering::Release);
        }
    });
    done.store(true, Ordering::Release);
    assert!(reader.join().unwrap() > 0);
    store.settle().unwrap();
    assert!(store.stats().seals >= 2, "{:?}", store.stats());
    assert_eq!(stored_samples(&store), 120 * KILL_SERIES * KILL_SAMPLES as u64);
}

/// Head memory is what the vectors allocated; over the bound (a seal that
/// cannot keep up) the store says so for ingest to shed load, and once the
/// seal is done it no longer does.
#[test]
fn head_pressure_follows_the_bound_and_clears_after_the_seal() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = StoreOptions {
        head_max_bytes: 256 << 10,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), opts).unwrap();
    let batch = |seq: u64| -> Vec<SeriesSamples> {
        (0..50u64)
            .map(|s| {
                host_series(
                    "p",
                    &format!("m{s}"),
                    (0..100).map(|i| (seq as i64 * 1000 + i, 1.0)).collect(),
                )
            })
            .collect()
    };
    // Hold the sealing side: generations queue up but are not written.
    let hold = store.shared.seal_lock.lock().unwrap();
    let mut seq = 0;
    while !store.head_pressure() {
        seq += 1;
        assert!(seq < 1000, "no pressure at {:?}", store.stats());
        rt.block_on(store.append("p", seq, batch(seq))).unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.head_over_bound, 1, "{stats:?}");
    assert!(stats.head_bytes > 256 << 10, "{stats:?}");
    assert!(
        stats.head_bytes >= stats.head_samples * head::SAMPLE_BYTES as u64,
        "at least the samples' own bytes: {stats:?}"
    );
    assert!(store.shared.heads.lock().unwrap().sealing.is_some());
    drop(hold);
    store.settle().unwrap();
    // The next commit freezes and seals the rest.
    rt.block_on(store.append("p", seq + 1, batch(seq + 1))).unwrap();
    store.settle().unwrap();
    assert!(!store.head_pressure(), "{:?}", store.stats());
    assert_eq!(store.stats().head_over_bound, 0);
    assert_eq!(stored_samples(&store), (seq + 1) * 5000);
}

/// Heads over the bound with no seal running are not pressure: what stays
/// after a seal (the head table, each series' first vector) is not freed by
/// waiting, and shedding then would stop ingest for good on a store with
/// more series than the bound fits.
#[test]
fn heads_over_the_bound_after_a_seal_do_not_stop_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = StoreOptions {
        head_max_bytes: 64 << 10,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), opts).unwrap();
    for seq in 1..=3u64 {
        let batch: Vec<SeriesSamples> = (0..20_000u64)
            .map(|s| host_series("p", &format!("m{s}"), vec![(seq as i64 * 1000, 1.0)]))
            .collect();
        rt.block_on(store.append("p", seq, batch)).unwrap();
    }
    // The writer may freeze a generation just after answering an append;
    // each `settle` waits for the sealing side, so a few of them leave no
    // seal running.
    for _ in 0..50 {
        store.settle().unwrap();
        if store.shared.heads.lock().unwrap().sealing.is_none() {
            break;
        }
        std::thread::yield_now();
    }
    let stats = store.stats();
    assert!(
        stats.head_bytes > 64 << 10,
        "the series alone exceed the bound: {stats:?}"
    );
    assert!(store.shared.heads.lock().unwrap().sealing.is_none());
    assert!(!store.head_pressure(), "{stats:?}");
}

/// Measures what a head sample costs the process (RSS) against
/// `Heads::bytes`, filling heads the way ingest does: one sample per series
/// per commit, round robin.
#[test]
#[ignore = "measurement; prints RSS against the heads' accounting"]
fn head_bytes_match_rss() {
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
    // One case per process (memory freed by an earlier case would be
    // reused and hide the next one's cost): HOSTPULSE_HEAD_RSS=SERIES,SAMPLES.
    let case = std::env::var("HOSTPULSE_HEAD_RSS").unwrap_or_else(|_| "1000000,8".into());
    let (series, per_series) = case.split_once(',').unwrap();
    let (series, per_series): (u64, i64) = (series.parse().unwrap(), per_series.parse().unwrap());
    {
        let before = rss_kib();
        let mut heads = head::Heads::default();
        for t in 0..per_series {
            for s in 0..series {
                heads.insert_run(s, 0, &[(t * 10_000, t as f64)]);
            }
        }
        let after = rss_kib();
        let rss = (after - before) * 1024;
        let samples = heads.samples as u64;
        println!(
            "{series} series x {per_series}: {samples} samples, RSS +{rss} B ({:.1} B/sample), accounted {} B ({:.1} B/sample), ratio {:.2}",
            rss as f64 / samples as f64,
            heads.bytes(),
            heads.bytes() as f64 / samples as f64,
            rss as f64 / heads.bytes() as f64
        );
        drop(heads);
    }
}

/// A seal of many hosts writes its files on several threads
/// (`seal::write_files`); every block and rollup file is there and reads
/// back, before and after a reopen.
#[tokio::test]
async fn a_seal_of_many_hosts_writes_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = generated(8, 150, 1, 30, 1_000_000, 1000);
    let store = open(dir.path());
    append_all(&store, &data, 30).await;
    store.seal_all().unwrap();
    let blocks = store.stats().blocks;
    assert_eq!(blocks, 150, "one block per host");
    // Block and 1 h rollup file per block, nothing else.
    assert_eq!(block_files(dir.path()) as u64, 2 * blocks);
    assert_same(&store.select(&[], i64::MIN, i64::MAX).unwrap(), &data);
    drop(store);
    let store = reopen(dir.path());
    assert_eq!(store.stats().corrupt_blocks, 0);
    assert_same(&store.select(&[], i64::MIN, i64::MAX).unwrap(), &data);
}
