//! Interop with a real Prometheus (2.42, Debian package `prometheus`): it
//! scrapes the collector's own `/metrics` every second and remote-writes
//! what it scraped to the collector's `/api/v1/write`; the scraped `up`
//! series must come back through the collector's query API, and the
//! receiver must have refused nothing. Ignored by default (CI runs it with
//! `--ignored`); skipped with a message where Prometheus is not installed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hostpulse_collector::config::Settings;
use hostpulse_collector::server;
use hostpulse_collector::telemetry::Counter;

use crate::support::{get_json, poll};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Kills Prometheus however the test ends.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_prometheus(dir: &Path, collector_http: std::net::SocketAddr) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: hostpulse-collector\n    static_configs:\n      - targets: ['{collector_http}']\n\
             remote_write:\n  - url: http://{collector_http}/api/v1/write\n    queue_config:\n      \
             batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 1s\n"
        ),
    )
    .unwrap();
    let child = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        // Port 0: nothing here talks to Prometheus' own HTTP API.
        .arg("--web.listen-address=127.0.0.1:0")
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {PROMETHEUS}: {e}"));
    Prometheus(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs /usr/bin/prometheus (Debian package prometheus); CI runs it"]
async fn prometheus_remote_writes_what_it_scrapes_into_the_collector() {
    if !Path::new(PROMETHEUS).exists() {
        eprintln!("skipping: {PROMETHEUS} is not installed (apt-get install prometheus)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let collector = server::start(Settings::ephemeral(tmp.path().join("data")))
        .await
        .unwrap();
    let http = collector.http_addr;
    let _prometheus = start_prometheus(tmp.path(), http);

    let url = format!("http://{http}/api/v1/query?query=up%7Bjob%3D%22hostpulse-collector%22%7D");
    let result = poll("`up` remote-written by Prometheus", Duration::from_secs(90), || {
        let url = url.clone();
        async move {
            let body = get_json(&url).await;
            let result = body["data"]["result"].as_array()?.first()?.clone();
            Some(result)
        }
    })
    .await;
    assert_eq!(result["metric"]["instance"], http.to_string(), "{result}");
    assert_eq!(result["value"][1], "1", "Prometheus scraped the collector: {result}");

    // Its scrape bookkeeping arrives too, and nothing was refused.
    let body = get_json(&format!("http://{http}/api/v1/query?query=scrape_samples_scraped")).await;
    assert_eq!(body["data"]["result"].as_array().map(Vec::len), Some(1), "{body}");
    for refused in [Counter::RejectedBatch, Counter::RejectedSample, Counter::RejectedLimit] {
        assert_eq!(collector.telemetry.get(refused), 0, "{refused:?}");
    }
    collector.shutdown().await;
}
