//! The whole path on one machine: an agent reads a fixture tree with one
//! chip over its critical temperature, streams to a collector, the series
//! come back through the Prometheus API with the right names and labels,
//! the temperature rule fires a webhook, and resolves it when the fixture
//! cools down. Also: an agent whose collector is down keeps sampling and
//! catches up once it appears.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hostpulse_agent::client::{self, ClientStatus};
use hostpulse_agent::config::Settings as AgentSettings;
use hostpulse_agent::inventory::Inventory;
use hostpulse_agent::{HostPaths, Sampler};
use hostpulse_collector::config::Settings;
use hostpulse_collector::server;
use serde_json::Value;
use tokio::sync::watch;

use crate::support::{WebhookSink, copy_fixture, get_json, poll};

fn agent_settings(collector: String, tree: &std::path::Path, host: &str) -> AgentSettings {
    AgentSettings {
        collector,
        host: Some(host.to_string()),
        interval: Duration::from_millis(200),
        only: vec!["hwmon".into(), "meminfo".into(), "loadavg".into()],
        paths: HostPaths {
            sysfs: tree.join("sys"),
            procfs: tree.join("proc"),
            rootfs: tree.to_path_buf(),
            udev_data: tree.join("udev"),
            dev: tree.join("dev"),
        },
        ..AgentSettings::default()
    }
}

fn start_agent(settings: AgentSettings) -> (Arc<ClientStatus>, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let sampler = Sampler::new(settings.paths.clone(), &settings.only).unwrap();
    let inventory = Inventory::read(&settings.paths);
    let status = Arc::new(ClientStatus::default());
    let (stop, stop_rx) = watch::channel(false);
    let s = status.clone();
    let task = tokio::spawn(async move {
        client::run(settings, sampler, inventory, s, stop_rx).await.unwrap();
    });
    (status, stop, task)
}

fn query_range_url(http: std::net::SocketAddr, query: &str, start: f64, end: f64) -> String {
    let q: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("http://{http}/api/v1/query_range?query={q}&start={start}&end={end}&step=1")
}

fn now_s() -> f64 {
    hostpulse_agent::sampler::now_ms() as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_sensor_is_stored_queried_alerted_and_resolved() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = copy_fixture("hot", &tmp.path().join("tree"));
    let sink = WebhookSink::start().await;
    let mut settings = Settings::ephemeral(tmp.path().join("data"));
    settings.webhook_urls = vec![sink.url.clone()];
    settings.rule_interval = Duration::from_millis(200);
    let collector = server::start(settings).await.unwrap();
    let started = now_s() - 1.0;
    let (status, stop, agent) = start_agent(agent_settings(
        format!("http://{}", collector.grpc_addr),
        &tree,
        "alpha",
    ));

    // (a) The series comes back through query_range with node_exporter's
    // names and the collector's instance/job labels.
    let http = collector.http_addr;
    let query = r#"node_hwmon_temp_celsius{chip="platform_coretemp_0",sensor="temp1"}"#;
    let result: Vec<Value> = poll("hot sensor in query_range", Duration::from_secs(30), || async {
        let body = get_json(&query_range_url(http, query, started, now_s() + 1.0)).await;
        assert_eq!(body["status"], "success", "{body}");
        assert_eq!(body["data"]["resultType"], "matrix");
        let result = body["data"]["result"].as_array().cloned().unwrap_or_default();
        (!result.is_empty()).then_some(result)
    })
    .await;
    assert_eq!(result.len(), 1, "{result:?}");
    let metric = &result[0]["metric"];
    assert_eq!(metric["__name__"], "node_hwmon_temp_celsius");
    assert_eq!(metric["instance"], "alpha");
    assert_eq!(metric["job"], "hostpulse");
    assert_eq!(metric["chip"], "platform_coretemp_0");
    assert_eq!(metric["sensor"], "temp1");
    let values = result[0]["values"].as_array().unwrap();
    assert!(!values.is_empty());
    assert!(
        values.iter().all(|v| v[1] == "95"),
        "every point reads 95 °C: {values:?}"
    );

    // The normal chip is there too, and below its limit.
    let body = get_json(&format!(
        "http://{http}/api/v1/query?query=node_hwmon_temp_crit_celsius"
    ))
    .await;
    assert_eq!(body["status"], "success", "{body}");
    assert!(body["data"]["result"].as_array().unwrap().len() >= 2, "{body}");

    // (b) The temperature rule fires once for the hot sensor only.
    let is_hot = |a: &Value| a["labels"]["chip"] == "platform_coretemp_0" && a["labels"]["sensor"] == "temp1";
    let fired = sink
        .wait_for("firing alert", Duration::from_secs(30), |a| {
            is_hot(a) && a["status"] == "firing"
        })
        .await;
    assert_eq!(fired["labels"]["instance"], "alpha");
    assert!(
        sink.alerts()
            .iter()
            .all(|a| a["labels"]["chip"] == "platform_coretemp_0"),
        "only the hot chip alerts: {:?}",
        sink.alerts()
    );

    // The fixture cools below the limit: the alert resolves.
    std::fs::write(tree.join("sys/class/hwmon/hwmon0/temp1_input"), "70000\n").unwrap();
    sink.wait_for("resolved alert", Duration::from_secs(30), |a| {
        is_hot(a) && a["status"] == "resolved"
    })
    .await;
    let firing_count = sink
        .alerts()
        .iter()
        .filter(|a| is_hot(a) && a["status"] == "firing")
        .count();
    assert_eq!(firing_count, 1, "a steady alert is sent once, not every evaluation");

    assert!(status.acked_seq.load(Ordering::Relaxed) > 0);
    stop.send(true).unwrap();
    agent.await.unwrap();
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_keeps_sampling_while_collector_is_down_and_catches_up() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = copy_fixture("hot", &tmp.path().join("tree"));
    // Reserve a port, then free it: nothing listens there yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = now_s() - 1.0;
    let (status, stop, agent) = start_agent(agent_settings(format!("http://127.0.0.1:{port}"), &tree, "gamma"));
    poll(
        "cycles while the collector is down",
        Duration::from_secs(30),
        || async { (status.cycles.load(Ordering::Relaxed) >= 5).then_some(()) },
    )
    .await;
    assert_eq!(
        status.acked_seq.load(Ordering::Relaxed),
        0,
        "nothing can be acknowledged yet"
    );
    let first_seq = status.produced_seq.load(Ordering::Relaxed) - 4;

    let mut settings = Settings::ephemeral(tmp.path().join("data"));
    settings.grpc_addr = format!("127.0.0.1:{port}").parse().unwrap();
    let collector = server::start(settings).await.unwrap();
    poll("agent catches up", Duration::from_secs(60), || async {
        (status.acked_seq.load(Ordering::Relaxed) > first_seq + 4).then_some(())
    })
    .await;
    // Every cycle sampled while the collector was away is stored: one
    // distinct timestamp per cycle for node_load1.
    let samples = collector
        .store
        .select(
            &[hostpulse_collector::model::Matcher::equal("__name__", "node_load1")],
            (started * 1000.0) as i64,
            i64::MAX,
        )
        .unwrap();
    assert_eq!(samples.len(), 1);
    assert!(samples[0].samples.len() >= 5, "{} samples", samples[0].samples.len());
    assert_eq!(status.dropped_batches.load(Ordering::Relaxed), 0);
    stop.send(true).unwrap();
    agent.await.unwrap();
    collector.shutdown().await;
}

/// A stopping agent says goodbye: the collector records a clean end of the
/// stream (not a dropped connection), which host-silence detection treats
/// as a planned stop rather than a host that may have died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_agent_ends_its_stream_cleanly() {
    use hostpulse_collector::store::StreamState;

    let tmp = tempfile::tempdir().unwrap();
    let tree = copy_fixture("hot", &tmp.path().join("tree"));
    let collector = server::start(Settings::ephemeral(tmp.path().join("data")))
        .await
        .unwrap();
    let (status, stop, agent) = start_agent(agent_settings(
        format!("http://{}", collector.grpc_addr),
        &tree,
        "delta",
    ));
    poll("first acknowledgement", Duration::from_secs(30), || async {
        (status.acked_seq.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    let open = collector.store.hosts().unwrap();
    let open = open.iter().find(|h| h.host == "delta").unwrap();
    assert_eq!(open.stream, StreamState::Open);

    stop.send(true).unwrap();
    agent.await.unwrap();
    let ended = poll("the stream's end recorded", Duration::from_secs(10), || async {
        let hosts = collector.store.hosts().unwrap();
        let h = hosts.into_iter().find(|h| h.host == "delta").unwrap();
        (h.stream != StreamState::Open).then_some(h.stream)
    })
    .await;
    assert_eq!(ended, StreamState::Goodbye);
    collector.shutdown().await;
}
