//! Helpers shared by the end-to-end tests: fixture trees, a webhook sink,
//! polling with deadlines, HTTP queries, and running the collector binary
//! as a child process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hostpulse_agent::HostPaths;
use hostpulse_agent::config::Settings as AgentSettings;
use hostpulse_collector::config::Settings;
use hostpulse_collector::server::{self, RunningCollector};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A fixture tree of the agent's own tests, copied into `dst` so a test can
/// change sensor values (symlinks are kept as symlinks).
pub fn copy_fixture(name: &str, dst: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../agent/tests/fixtures")
        .join(name);
    assert!(src.is_dir(), "fixture {} is missing", src.display());
    copy_tree(&src, dst);
    dst.to_path_buf()
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        let to = dst.join(entry.file_name());
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &to).unwrap();
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some` or `limit` passes.
pub async fn poll<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GETs a URL and parses the JSON body (any status).
pub async fn get_json(url: &str) -> Value {
    let resp = reqwest::get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    resp.json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: body is not JSON: {e}"))
}

/// A webhook receiver recording every JSON body posted to it.
pub struct WebhookSink {
    /// URL to give the collector.
    pub url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    arrived: Arc<Notify>,
}

impl WebhookSink {
    /// Starts the receiver on an ephemeral loopback port.
    pub async fn start() -> WebhookSink {
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let arrived = Arc::new(Notify::new());
        let (b, n) = (bodies.clone(), arrived.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let (b, n) = (b.clone(), n.clone());
                async move {
                    b.lock().unwrap().push(body);
                    n.notify_waiters();
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        WebhookSink {
            url: format!("http://{addr}/hook"),
            bodies,
            arrived,
        }
    }

    /// Every alert object received so far, with the payload's status copied
    /// in when the alert has none.
    pub fn alerts(&self) -> Vec<Value> {
        let bodies = self.bodies.lock().unwrap();
        bodies
            .iter()
            .flat_map(|b| b["alerts"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits until an alert satisfying `pred` has arrived.
    pub async fn wait_for(&self, what: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.arrived.notified();
            if let Some(a) = self.alerts().into_iter().find(|a| pred(a)) {
                return a;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "timed out after {limit:?} waiting for webhook: {what}; got {:?}",
                self.alerts()
            );
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

/// The collector binary running as a child process.
pub struct CollectorProcess {
    /// The child.
    pub child: Child,
    /// Its HTTP address.
    pub http: SocketAddr,
    /// Its gRPC address.
    pub grpc: SocketAddr,
}

impl CollectorProcess {
    /// Starts `e2e-collector` (the collector's real command line) on
    /// ephemeral ports and waits until it prints where it listens. A store
    /// this test process opened and just dropped can hold sled's directory
    /// lock for a moment (its background thread ends on its next tick), so a
    /// child that exits early is started again until a deadline.
    pub async fn start(data_dir: &Path) -> CollectorProcess {
        Self::start_with(data_dir, &[]).await
    }

    /// [`CollectorProcess::start`] with more command-line arguments (a
    /// `--config` file, cache sizes).
    pub async fn start_with(data_dir: &Path, extra: &[&str]) -> CollectorProcess {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match Self::try_start(data_dir, extra).await {
                Some(p) => return p,
                None => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "collector did not start within 30s"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn try_start(data_dir: &Path, extra: &[&str]) -> Option<CollectorProcess> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_e2e-collector"))
            .args([
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--http-addr",
                "127.0.0.1:0",
                "--grpc-addr",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Read the banner for the addresses, then keep draining stdout so the
        // child never writes into a closed pipe.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let addr = |l: &str| -> Option<SocketAddr> {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("http://"))?
                    .trim_end_matches('/')
                    .parse()
                    .ok()
            };
            let mut tx = Some(tx);
            let mut http = None;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("status page") {
                    http = addr(&line);
                } else if line.contains("agents connect")
                    && let (Some(h), Some(g), Some(tx)) = (http, addr(&line), tx.take())
                {
                    let _ = tx.send((h, g));
                }
            }
        });
        let started = tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .expect("collector did not start in 60s");
        match started {
            Ok((http, grpc)) => Some(CollectorProcess { child, http, grpc }),
            Err(_) => {
                // It exited before printing its addresses.
                let _ = child.wait();
                None
            }
        }
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// An agent sampling only `loadavg` every 200 ms from a fixture tree,
/// reconnecting quickly once a collector is back.
pub fn loadavg_agent(collectors: Vec<String>, tree: &Path, host: &str) -> AgentSettings {
    AgentSettings {
        collector: collectors[0].clone(),
        collectors,
        host: Some(host.to_string()),
        interval: Duration::from_millis(200),
        // Reconnect quickly once a collector is back.
        reconnect_max_delay: Duration::from_millis(500),
        only: vec!["loadavg".into()],
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

/// A TCP forwarder on a fixed loopback port, so the collector behind it can
/// be replaced while the agent keeps one URL.
pub struct Proxy {
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(port: u16, target: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy { task }
    }

    /// Stops listening and drops every forwarded connection.
    pub async fn cut(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A loopback port nothing listens on (yet).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn collector_on(port: u16, data: &Path) -> RunningCollector {
    let mut settings = Settings::ephemeral(data.to_path_buf());
    settings.grpc_addr = format!("127.0.0.1:{port}").parse().unwrap();
    server::start(settings).await.unwrap()
}
