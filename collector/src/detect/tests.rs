//! Rule-loop tests: a fake [`Evaluator`] answers from a table the test
//! changes between evaluations, so the lifecycle (pending, firing,
//! `keep_firing_for`, resolved), persistence across a restart, inhibition,
//! recording rules and reloads are checked without PromQL.

#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use super::*;
use crate::alert::AlertState;
use crate::store::StoreOptions;

const T0: i64 = 1_700_000_000_000;

/// Answers each expression from a table; unknown expressions yield nothing,
/// expressions mapped to `Err` fail.
type Answer = Result<Vec<(Labels, f64)>, String>;

#[derive(Default)]
struct FakeEvaluator {
    answers: Mutex<HashMap<String, Answer>>,
}

impl FakeEvaluator {
    fn set(&self, expr: &str, samples: &[(&[(&str, &str)], f64)]) {
        let v = samples.iter().map(|(l, v)| (Labels::from_pairs(l), *v)).collect();
        self.answers.lock().unwrap().insert(expr.to_string(), Ok(v));
    }

    fn fail(&self, expr: &str) {
        self.answers
            .lock()
            .unwrap()
            .insert(expr.to_string(), Err("store unavailable".into()));
    }
}

impl Evaluator for FakeEvaluator {
    fn instant(&self, expr: &str, _at_ms: i64) -> Result<Vec<(Labels, f64)>, EvalError> {
        match self.answers.lock().unwrap().get(expr) {
            None => Ok(Vec::new()),
            Some(Ok(v)) => Ok(v.clone()),
            Some(Err(e)) => Err(EvalError(e.clone())),
        }
    }
}

/// A detector reporting a fixed set of silent hosts.
struct FakeSilent(Mutex<Vec<String>>);

impl Detector for FakeSilent {
    fn name(&self) -> &'static str {
        host_silent::NAME
    }
    fn inputs(&self) -> &'static [&'static str] {
        &[]
    }
    fn evaluate(&self, _inputs: &Inputs, _now_ms: i64) -> Vec<ActiveAlert> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|h| ActiveAlert {
                labels: Labels::from_pairs(&[(ALERT_NAME, host_silent::NAME), ("instance", h)]),
                annotations: Default::default(),
                value: 1.0,
            })
            .collect()
    }
}

const RULES: &str = r#"
groups:
  - name: disks
    rules:
      - alert: DiskHot
        expr: disk_hot
        for: 1m
        labels:
          severity: "{{ if_hot }}"
        annotations:
          summary: "{{ $labels.device }} on {{ $labels.instance }} at {{ $value }}"
      - alert: LinkFlap
        expr: link_flap
        keep_firing_for: 2m
      - record: instance:disk_hot:max
        expr: disk_hot
        labels:
          source: rule
"#;

/// A webhook receiver recording `(status, alertname)` per alert.
async fn receiver() -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let log = log.clone();
            async move {
                for a in body["alerts"].as_array().cloned().unwrap_or_default() {
                    log.lock().unwrap().push((
                        a["status"].as_str().unwrap_or("?").to_string(),
                        a["labels"]["alertname"].as_str().unwrap_or("?").to_string(),
                    ));
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), seen)
}

struct Harness {
    ctx: RuleContext,
    eval: Arc<FakeEvaluator>,
    silent: Arc<FakeSilent>,
    sent: Arc<Mutex<Vec<(String, String)>>>,
}

async fn harness(data: &std::path::Path, rules: &str) -> Harness {
    let store = Store::open(&data.join("store"), StoreOptions::default()).unwrap();
    let board = Arc::new(AlertBoard::open(&data.join("alerts")).unwrap());
    let (url, sent) = receiver().await;
    let telemetry = Arc::new(Telemetry::default());
    let groups = rulefile::parse_rule_file("t.yml", rules).unwrap();
    let eval = Arc::new(FakeEvaluator::default());
    let silent = Arc::new(FakeSilent(Mutex::new(Vec::new())));
    let ctx = RuleContext {
        store,
        evaluator: eval.clone(),
        rules: Arc::new(Rules::from_groups(RuleSources::default(), groups, telemetry.clone())),
        detectors: vec![silent.clone()],
        board,
        notifier: Arc::new(Notifier::new(vec![url], telemetry.clone())),
        alertmanager: Arc::new(Alertmanager::new(Vec::new(), telemetry.clone(), "http://c")),
        telemetry,
        interval: Duration::from_secs(10),
        history_retention: crate::detect::DEFAULT_HISTORY_RETENTION,
    };
    Harness {
        ctx,
        eval,
        silent,
        sent,
    }
}

fn sent(h: &Harness) -> Vec<(String, String)> {
    h.sent.lock().unwrap().clone()
}

fn pair(status: &str, name: &str) -> (String, String) {
    (status.to_string(), name.to_string())
}

#[tokio::test]
async fn pending_then_firing_then_resolved_with_templates() {
    let dir = tempfile::tempdir().unwrap();
    // `{{ if_hot }}` is not a template function: the file is rejected.
    assert!(rulefile::parse_rule_file("t.yml", RULES).is_err());
    let rules = RULES.replace("\"{{ if_hot }}\"", "warning");
    let h = harness(dir.path(), &rules).await;
    h.eval.set(
        "disk_hot",
        &[(
            &[("__name__", "disk_hot"), ("instance", "db1"), ("device", "sda")],
            61.0,
        )],
    );

    let t = evaluate_once(&h.ctx, T0).await;
    assert!(t.fired.is_empty(), "pending for 1m first");
    let pending = h.ctx.board.alerts();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].state, AlertState::Pending);
    assert_eq!(
        pending[0].labels.to_string(),
        "{alertname=\"DiskHot\",device=\"sda\",instance=\"db1\",severity=\"warning\"}"
    );
    assert_eq!(pending[0].annotations["summary"], "sda on db1 at 61");

    let t = evaluate_once(&h.ctx, T0 + 30_000).await;
    assert!(t.fired.is_empty());
    let t = evaluate_once(&h.ctx, T0 + 60_000).await;
    assert_eq!(t.fired.len(), 1);
    let t = evaluate_once(&h.ctx, T0 + 70_000).await;
    assert_eq!(t, Transitions::default(), "steady firing sends nothing new");

    h.eval.set("disk_hot", &[]);
    let t = evaluate_once(&h.ctx, T0 + 80_000).await;
    assert_eq!(t.resolved.len(), 1);
    assert_eq!(sent(&h), vec![pair("firing", "DiskHot"), pair("resolved", "DiskHot")]);

    let history = h.ctx.board.history(T0, T0 + 100_000, 100).unwrap();
    let states: Vec<(i64, AlertState)> = history.iter().map(|e| (e.at_ms - T0, e.state)).collect();
    assert_eq!(
        states,
        vec![
            (0, AlertState::Pending),
            (60_000, AlertState::Firing),
            (80_000, AlertState::Resolved)
        ]
    );
    assert_eq!(history[1].summary, "sda on db1 at 61");
    assert!(h.ctx.board.history(T0 + 70_000, T0 + 79_999, 100).unwrap().is_empty());
    assert_eq!(
        h.ctx.rules.health("t.yml/disks/DiskHot").last_evaluation_ms,
        T0 + 80_000
    );
}

#[tokio::test]
async fn keep_firing_for_holds_a_flapping_alert() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path(), &RULES.replace("\"{{ if_hot }}\"", "warning")).await;
    h.eval.set("link_flap", &[(&[("instance", "db1")], 5.0)]);
    assert_eq!(evaluate_once(&h.ctx, T0).await.fired.len(), 1);
    h.eval.set("link_flap", &[]);
    assert_eq!(evaluate_once(&h.ctx, T0 + 60_000).await, Transitions::default());
    h.eval.set("link_flap", &[(&[("instance", "db1")], 5.0)]);
    assert_eq!(evaluate_once(&h.ctx, T0 + 90_000).await, Transitions::default());
    h.eval.set("link_flap", &[]);
    assert_eq!(evaluate_once(&h.ctx, T0 + 200_000).await, Transitions::default());
    let t = evaluate_once(&h.ctx, T0 + 210_000).await;
    assert_eq!(t.resolved.len(), 1, "resolves 2m after it last held");
    assert_eq!(sent(&h), vec![pair("firing", "LinkFlap"), pair("resolved", "LinkFlap")]);
}

#[tokio::test]
async fn restart_neither_pages_twice_nor_forgets() {
    let dir = tempfile::tempdir().unwrap();
    let rules = RULES.replace("\"{{ if_hot }}\"", "warning");
    let hot: &[(&[(&str, &str)], f64)] = &[(&[("instance", "db1"), ("device", "sda")], 70.0)];
    {
        let h = harness(dir.path(), &rules).await;
        h.eval.set("disk_hot", hot);
        h.eval.set("link_flap", &[(&[("instance", "db2")], 1.0)]);
        evaluate_once(&h.ctx, T0).await;
        evaluate_once(&h.ctx, T0 + 60_000).await;
        assert_eq!(sent(&h).len(), 2, "DiskHot and LinkFlap fired");
        // A third alert is pending when the collector stops.
        h.eval.set(
            "disk_hot",
            &[
                (&[("instance", "db1"), ("device", "sda")], 70.0),
                (&[("instance", "db1"), ("device", "sdb")], 70.0),
            ],
        );
        evaluate_once(&h.ctx, T0 + 70_000).await;
    }
    let h = harness(dir.path(), &rules).await;
    assert_eq!(h.ctx.board.firing().len(), 2, "firing alerts survive the restart");
    h.eval.set(
        "disk_hot",
        &[
            (&[("instance", "db1"), ("device", "sda")], 70.0),
            (&[("instance", "db1"), ("device", "sdb")], 70.0),
        ],
    );
    h.eval.set("link_flap", &[(&[("instance", "db2")], 1.0)]);
    let t = evaluate_once(&h.ctx, T0 + 100_000).await;
    assert!(t.fired.is_empty(), "nothing pages twice: {t:?}");
    let t = evaluate_once(&h.ctx, T0 + 130_000).await;
    assert_eq!(t.fired.len(), 1, "the pending alert kept its start across the restart");
    assert_eq!(t.fired[0].labels.get("device"), "sdb");
    assert_eq!(t.fired[0].active_since_ms, T0 + 70_000);
    h.eval.set("disk_hot", &[]);
    h.eval.set("link_flap", &[]);
    let t = evaluate_once(&h.ctx, T0 + 400_000).await;
    assert_eq!(t.resolved.len(), 3, "nothing firing is forgotten");
}

#[tokio::test]
async fn failed_evaluation_keeps_alerts_and_reports_health() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path(), &RULES.replace("\"{{ if_hot }}\"", "warning")).await;
    h.eval.set("link_flap", &[(&[("instance", "db1")], 5.0)]);
    evaluate_once(&h.ctx, T0).await;
    h.eval.fail("link_flap");
    let t = evaluate_once(&h.ctx, T0 + 600_000).await;
    assert!(t.resolved.is_empty(), "a failing query must not resolve");
    assert_eq!(h.ctx.board.firing().len(), 1);
    let health = h.ctx.rules.health("t.yml/disks/LinkFlap");
    assert_eq!(health.last_error.as_deref(), Some("store unavailable"));
    assert!(h.ctx.telemetry.get(Counter::RuleEvaluationFailures) >= 1);
}

#[tokio::test]
async fn silent_host_inhibits_its_symptoms() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path(), &RULES.replace("\"{{ if_hot }}\"", "warning")).await;
    h.eval.set("link_flap", &[(&[("instance", "db1")], 5.0)]);
    evaluate_once(&h.ctx, T0).await;
    assert_eq!(sent(&h), vec![pair("firing", "LinkFlap")]);

    // db1 goes silent: its data stops, so the rule no longer holds; db2
    // (also silent) starts matching a rule. Neither resolves nor fires.
    h.silent
        .0
        .lock()
        .unwrap()
        .extend(["db1".to_string(), "db2".to_string()]);
    h.eval.set("link_flap", &[(&[("instance", "db2")], 5.0)]);
    let t = evaluate_once(&h.ctx, T0 + 600_000).await;
    assert_eq!(t.fired.len(), 2, "only the two HostSilent alerts: {t:?}");
    assert!(t.fired.iter().all(|a| a.name() == host_silent::NAME));
    assert!(t.resolved.is_empty());

    // db1 reports again and is healthy: HostSilent and LinkFlap resolve.
    h.silent.0.lock().unwrap().clear();
    h.eval.set("link_flap", &[]);
    let t = evaluate_once(&h.ctx, T0 + 900_000).await;
    let mut resolved: Vec<String> = t
        .resolved
        .iter()
        .map(|a| format!("{}/{}", a.name(), a.labels.get("instance")))
        .collect();
    resolved.sort();
    assert_eq!(
        resolved,
        vec!["HostpulseHostSilent/db1", "HostpulseHostSilent/db2", "LinkFlap/db1"]
    );
}

#[tokio::test]
async fn recording_rules_write_series() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path(), &RULES.replace("\"{{ if_hot }}\"", "warning")).await;
    h.eval
        .set("disk_hot", &[(&[("__name__", "disk_hot"), ("instance", "db1")], 42.0)]);
    evaluate_once(&h.ctx, T0).await;
    let store = h.ctx.store.clone();
    let got = store
        .select(&[Matcher::equal(METRIC_NAME, "instance:disk_hot:max")], T0 - 1, T0 + 1)
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].labels.get("source"), "rule");
    assert_eq!(got[0].labels.get("instance"), "db1");
    assert_eq!(got[0].samples, vec![(T0, 42.0)]);
    assert_eq!(h.ctx.telemetry.get(Counter::RecordedSamples), 1);
}

#[tokio::test]
async fn reload_swaps_rules_and_retires_removed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.yml");
    std::fs::write(&file, RULES.replace("\"{{ if_hot }}\"", "warning")).unwrap();
    let mut h = harness(dir.path(), "groups: []").await;
    let sources = RuleSources {
        files: vec![file.clone()],
        builtin: false,
    };
    h.ctx.rules = Arc::new(Rules::load(sources, h.ctx.telemetry.clone()).unwrap());
    h.eval.set("link_flap", &[(&[("instance", "db1")], 5.0)]);
    assert_eq!(evaluate_once(&h.ctx, T0).await.fired.len(), 1);

    std::fs::write(
        &file,
        "groups:\n  - name: g\n    rules:\n      - alert: X\n        expr: up ==\n",
    )
    .unwrap();
    let e = h.ctx.rules.reload().unwrap_err().to_string();
    assert!(e.contains("r.yml: group \"g\": rule \"X\": expr: "), "{e}");
    assert_eq!(
        h.ctx.rules.groups()[0].rules.len(),
        3,
        "a bad reload keeps the running rules"
    );

    std::fs::write(
        &file,
        "groups:\n  - name: g\n    rules:\n      - alert: X\n        expr: x\n",
    )
    .unwrap();
    assert_eq!(h.ctx.rules.reload().unwrap(), 1);
    let t = evaluate_once(&h.ctx, T0 + 10_000).await;
    assert_eq!(t.resolved.len(), 1, "LinkFlap's rule is gone, so its alert resolves");
    assert_eq!(h.ctx.telemetry.get(Counter::RuleReloads), 1);
    assert_eq!(h.ctx.telemetry.get(Counter::RuleReloadFailures), 1);
}

#[test]
fn builtin_pack_loads_and_every_alert_explains_itself() {
    let groups = rulefile::parse_rule_file(BUILTIN_FILE, BUILTIN_RULES).unwrap();
    let mut names = HashSet::new();
    let mut count = 0;
    for g in &groups {
        for r in &g.rules {
            let RuleKind::Alerting { name, annotations, .. } = &r.kind else {
                continue;
            };
            count += 1;
            assert!(names.insert(name.clone()), "{name} defined twice");
            assert!(name.starts_with("Hostpulse"), "{name}");
            for key in ["summary", "description", "rationale"] {
                assert!(
                    annotations.iter().any(|(k, raw, _)| k == key && raw.len() > 20),
                    "{name} lacks a real {key}"
                );
            }
            let severity = r
                .labels
                .iter()
                .find(|(k, _, _)| k == "severity")
                .map(|(_, v, _)| v.as_str());
            assert!(matches!(severity, Some("critical" | "warning")), "{name}: {severity:?}");
        }
    }
    assert!(count >= 25, "{count} rules");
}

#[tokio::test]
async fn run_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path(), "groups: []").await;
    h.ctx.interval = Duration::ZERO;
    let telemetry = h.ctx.telemetry.clone();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run(h.ctx, rx));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while telemetry.get(Counter::RuleEvaluations) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "loop did not tick");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

/// Issue 6: `generatorURL` opens the collector's own page for the alert,
/// `/alerts#<fingerprint>`; the page is served by the alerting router.
#[tokio::test]
async fn alert_page_has_the_anchor_generator_urls_point_at() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path(), &RULES.replace("\"{{ if_hot }}\"", "warning")).await;
    h.eval.set(
        "link_flap",
        &[(&[("__name__", "link_flap"), ("instance", "db<1>")], 3.0)],
    );
    evaluate_once(&h.ctx, T0).await;
    let firing = h.ctx.board.firing();
    assert_eq!(firing.len(), 1);
    let payload = crate::alert::webhook_payload(&firing, "http://c:9470");
    let url = payload["alerts"][0]["generatorURL"].as_str().unwrap().to_string();
    let fingerprint = firing[0].fingerprint();
    assert_eq!(url, format!("http://c:9470/alerts#{fingerprint}"));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = h.ctx.api_router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let resp = reqwest::get(format!("http://{addr}/alerts")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let page = resp.text().await.unwrap();
    assert!(page.contains(&format!("<section id=\"{fingerprint}\">")), "{page}");
    assert!(page.contains("LinkFlap") && page.contains("db&lt;1&gt;"), "{page}");
}

/// Issue 6: alert history older than the retention is deleted; newer
/// history and the board stay.
#[tokio::test]
async fn history_past_its_retention_is_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path(), &RULES.replace("\"{{ if_hot }}\"", "warning")).await;
    h.ctx.history_retention = Duration::from_secs(3600);
    h.eval
        .set("link_flap", &[(&[("__name__", "link_flap"), ("instance", "db1")], 3.0)]);
    evaluate_once(&h.ctx, T0).await;
    h.eval.set("link_flap", &[]);
    evaluate_once(&h.ctx, T0 + 1_800_000).await;
    evaluate_once(&h.ctx, T0 + 1_800_000 + 120_001).await; // past keep_firing_for: resolved
    let all = |h: &Harness| h.ctx.board.history(0, i64::MAX, 100).unwrap().len();
    assert_eq!(all(&h), 2, "firing and resolved");
    prune_history(&h.ctx, T0 + 3_600_000).await;
    assert_eq!(all(&h), 2, "nothing is older than an hour yet");
    prune_history(&h.ctx, T0 + 3_600_001).await;
    let left = h.ctx.board.history(0, i64::MAX, 100).unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].state, AlertState::Resolved);
}

/// Polls `store` until the record of db1 satisfies `want` (a stream's
/// end is recorded by the server task after the client is gone).
async fn record_when(store: &Store, what: &str, want: impl Fn(&HostRecord) -> bool) -> HostRecord {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(r) = store.hosts().unwrap().into_iter().find(|h| h.host == "db1")
            && want(&r)
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "host record never {what}: {:?}",
            store.hosts().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Host silence over the real ingest service and store: the Hello's
/// interval and the way each stream ends reach the host record, and the
/// detector judges from them (issue 6: two of the host's own intervals on
/// an open stream, time to come back after a goodbye or a drop).
#[tokio::test]
async fn stream_ends_reach_host_silence() {
    use crate::store::StreamState;
    use hostpulse_proto::ingest_client::IngestClient;
    use hostpulse_proto::{AgentMessage, Hello, agent_message};
    use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let svc = crate::ingest::IngestService::new(
        store.clone(),
        Arc::new(Telemetry::default()),
        crate::ingest::IngestLimits::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(crate::ingest::server(svc))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let hello = |interval_ms| AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            host: "db1".into(),
            interval_ms,
            ..Default::default()
        })),
    };
    let open = |to: std::net::SocketAddr| async move {
        let channel = tonic::transport::Channel::from_shared(format!("http://{to}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let replies = IngestClient::new(channel)
            .stream(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        (tx, replies)
    };
    // A TCP relay to the collector whose task, aborted, cuts the
    // connection the way a broken network or a crashed agent does.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let cable = tokio::spawn(async move {
        let (mut agent_side, _) = relay.accept().await.unwrap();
        let mut collector_side = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut agent_side, &mut collector_side).await;
    });

    // A 60 s agent says hello: open stream, its interval kept.
    let (tx, replies) = open(addr).await;
    tx.send(hello(60_000)).await.unwrap();
    let r = record_when(&store, "open", |r| r.stream == StreamState::Open).await;
    assert_eq!(r.interval_ms, 60_000);
    let d = HostSilent::default();
    let j = d.judge_stream(&r);
    assert_eq!((j.since_ms, j.grace_ms), (r.last_report_ms, 120_000));

    // It closes its stream cleanly: a goodbye, with the shutdown grace.
    drop(tx);
    let r = record_when(&store, "said goodbye", |r| r.stream == StreamState::Goodbye).await;
    drop(replies);
    assert_eq!(d.judge_stream(&r).grace_ms, host_silent::DEFAULT_SHUTDOWN_GRACE_MS);

    // It comes back through the relay, then the connection is cut: a drop.
    let (tx, replies) = open(relay_addr).await;
    tx.send(hello(10_000)).await.unwrap();
    let r = record_when(&store, "reopened", |r| {
        r.stream == StreamState::Open && r.interval_ms == 10_000
    })
    .await;
    let opened = r.stream_since_ms;
    cable.abort();
    let r = record_when(&store, "dropped", |r| r.stream != StreamState::Open).await;
    assert_eq!(r.stream, StreamState::Dropped);
    assert!(r.stream_since_ms >= opened);
    drop((tx, replies));

    // An end reported for an older stream does not touch a newer one.
    let (tx, _replies) = open(addr).await;
    tx.send(hello(10_000)).await.unwrap();
    let r = record_when(&store, "reopened again", |r| r.stream == StreamState::Open).await;
    store
        .record_stream_end("db1", r.stream_since_ms - 1, StreamState::Goodbye, r.stream_since_ms)
        .unwrap();
    assert_eq!(record_when(&store, "kept", |_| true).await.stream, StreamState::Open);

    // A second Hello is a protocol error: this collector ends the stream.
    tx.send(hello(10_000)).await.unwrap();
    let r = record_when(&store, "refused", |r| r.stream != StreamState::Open).await;
    assert_eq!(r.stream, StreamState::Refused);
    assert_eq!(d.judge_stream(&r).grace_ms, host_silent::DEFAULT_FAILBACK_GRACE_MS);
}
