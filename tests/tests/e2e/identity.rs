//! Identity on the ingest path (issue 7): an agent can only write its own
//! host's series. A collector runs in process with TLS and client
//! certificates, or with per-agent tokens; raw tonic clients built with the
//! agent's own credential loaders (`hostpulse_agent::tls`) stream to it.
//! Certificates come from the collector's `certs` module, or its command
//! line where that is what is tested.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hostpulse_agent::config::TlsSettings;
use hostpulse_collector::auth::{AgentToken, TokenTable, hash_token};
use hostpulse_collector::certs::{self, CertsRequest};
use hostpulse_collector::config::Settings;
use hostpulse_collector::model::Matcher;
use hostpulse_collector::server::{self, RunningCollector};
use hostpulse_collector::telemetry::Counter;
use hostpulse_collector::tls::ServerTls;
use hostpulse_proto::ingest_client::IngestClient;
use hostpulse_proto::{
    AgentMessage, Batch, ErrorCode, Hello, Label, SeriesDefinition, agent_message, collector_message,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

const PROBE: &str = "identity_probe";

/// Writes a CA, a server certificate for 127.0.0.1 and one certificate per
/// agent into `dir`.
fn pki(dir: &Path, agents: &[&str]) -> PathBuf {
    certs::generate(&CertsRequest {
        out: dir.to_path_buf(),
        server_names: vec!["127.0.0.1".into(), "localhost".into()],
        agents: agents.iter().map(|a| a.to_string()).collect(),
        force: false,
    })
    .unwrap();
    dir.to_path_buf()
}

fn server_tls(pki: &Path, client_ca: bool, handshake_timeout: Duration) -> ServerTls {
    ServerTls {
        cert: pki.join("server.pem"),
        key: pki.join("server-key.pem"),
        client_ca: client_ca.then(|| pki.join("ca.pem")),
        handshake_timeout,
    }
}

async fn start(data: &Path, configure: impl FnOnce(&mut Settings)) -> RunningCollector {
    let mut settings = Settings::ephemeral(data.to_path_buf());
    configure(&mut settings);
    server::start(settings).await.unwrap()
}

/// An endpoint the way the agent builds one: `client_tls` from its TLS
/// settings for the collector URL.
fn endpoint(collector: &RunningCollector, tls: &TlsSettings) -> Endpoint {
    let scheme = if collector.tls { "https" } else { "http" };
    let url = format!("{scheme}://{}", collector.grpc_addr);
    let endpoint = Channel::from_shared(url.clone()).unwrap();
    match hostpulse_agent::tls::client_tls(tls, &url).unwrap() {
        Some(config) => endpoint.tls_config(config).unwrap(),
        None => endpoint,
    }
}

fn agent_tls(pki: &Path, agent: Option<&str>) -> TlsSettings {
    TlsSettings {
        ca: Some(pki.join("ca.pem")),
        cert: agent.map(|a| pki.join(format!("{a}.pem"))),
        key: agent.map(|a| pki.join(format!("{a}-key.pem"))),
        token_file: None,
    }
}

/// What one stream got back.
#[derive(Debug, Default)]
struct Outcome {
    acked: bool,
    errors: Vec<hostpulse_proto::Error>,
}

/// Opens a stream, says Hello as `host` and sends one batch defining the
/// probe series (with a forged `instance` label the collector must
/// ignore). Reads replies until the ack, a fatal error or the end.
/// `Err` describes a connection or status failure.
async fn exchange(
    endpoint: Endpoint,
    authorization: Option<MetadataValue<Ascii>>,
    host: &str,
) -> Result<Outcome, String> {
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let mut client = IngestClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    let hello = Hello {
        host: host.into(),
        agent_version: "test".into(),
        ..Default::default()
    };
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Hello(hello)),
    })
    .await
    .unwrap();
    let batch = Batch {
        seq: 1,
        new_series: vec![SeriesDefinition {
            r#ref: 1,
            name: PROBE.into(),
            labels: vec![Label {
                name: "instance".into(),
                value: "forged".into(),
            }],
        }],
        base_timestamp_ms: hostpulse_agent::sampler::now_ms(),
        refs: vec![1],
        timestamp_deltas_ms: vec![],
        values: vec![1.5],
        events: vec![],
        ..Default::default()
    };
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Batch(batch)),
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(value) = authorization {
        request.metadata_mut().insert("authorization", value);
    }
    let status = |s: tonic::Status| format!("status {:?}: {}", s.code(), s.message());
    let mut inbound = client.stream(request).await.map_err(status)?.into_inner();
    let mut outcome = Outcome::default();
    loop {
        match inbound.message().await.map_err(status)? {
            None => break,
            Some(message) => match message.kind {
                Some(collector_message::Kind::Ack(_)) => {
                    outcome.acked = true;
                    break;
                }
                Some(collector_message::Kind::Error(e)) => {
                    let fatal = e.fatal;
                    outcome.errors.push(e);
                    if fatal {
                        break;
                    }
                }
                _ => {}
            },
        }
    }
    // Held until here so the request side stays open while we read.
    drop(tx);
    Ok(outcome)
}

/// The `instance` label of every stored probe series.
fn stored_instances(collector: &RunningCollector) -> Vec<String> {
    collector
        .store
        .select(&[Matcher::equal("__name__", PROBE)], 0, i64::MAX)
        .unwrap()
        .into_iter()
        .map(|s| s.labels.get("instance").to_string())
        .collect()
}

fn assert_identity_refusal(outcome: &Outcome, claimed: &str, real: &str) {
    assert!(!outcome.acked, "{outcome:?}");
    let [e] = outcome.errors.as_slice() else {
        panic!("expected exactly one error, got {outcome:?}");
    };
    assert_eq!(e.code, ErrorCode::BadHello as i32, "{e:?}");
    assert!(e.fatal, "{e:?}");
    assert!(
        e.message.contains(&format!("{claimed:?}")) && e.message.contains(&format!("{real:?}")),
        "the message names both hosts: {:?}",
        e.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_host_identity_comes_from_the_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(&tmp.path().join("pki"), &["alpha"]);
    // A second CA whose "alpha" certificate the collector must not trust.
    let rogue = self::pki(&tmp.path().join("rogue"), &["alpha"]);
    let collector = start(&tmp.path().join("data"), |s| {
        s.security.tls = Some(server_tls(&pki, true, Duration::from_secs(10)));
    })
    .await;

    let ok = exchange(endpoint(&collector, &agent_tls(&pki, Some("alpha"))), None, "alpha")
        .await
        .unwrap();
    assert!(ok.acked && ok.errors.is_empty(), "{ok:?}");
    assert_eq!(stored_instances(&collector), ["alpha"]);

    let forged = exchange(endpoint(&collector, &agent_tls(&pki, Some("alpha"))), None, "beta")
        .await
        .unwrap();
    assert_identity_refusal(&forged, "beta", "alpha");
    assert!(forged.errors[0].message.contains("client certificate"), "{forged:?}");
    assert_eq!(collector.telemetry.get(Counter::RejectedIdentity), 1);
    assert_eq!(collector.store.last_seq("beta").unwrap(), None);

    let no_cert = exchange(endpoint(&collector, &agent_tls(&pki, None)), None, "alpha").await;
    assert!(no_cert.is_err(), "a client without a certificate got {no_cert:?}");
    let rogue_cert = exchange(endpoint(&collector, &agent_tls(&rogue, Some("alpha"))), None, "alpha").await;
    assert!(rogue_cert.is_err(), "a certificate from another CA got {rogue_cert:?}");
    // A plaintext client cannot talk to the TLS listener either.
    let plain = Channel::from_shared(format!("http://{}", collector.grpc_addr)).unwrap();
    assert!(exchange(plain, None, "alpha").await.is_err());

    assert_eq!(stored_instances(&collector), ["alpha"], "nothing else was stored");
    assert_eq!(collector.telemetry.get(Counter::IngestBatches), 1);
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_agent_tokens_identify_the_host() {
    let tmp = tempfile::tempdir().unwrap();
    let alpha_token = "alpha-token-0123456789abcdef";
    let tokens = TokenTable::new(vec![
        AgentToken {
            host: "alpha".into(),
            sha256: hash_token(alpha_token),
        },
        AgentToken {
            host: "gamma".into(),
            sha256: hash_token("gamma-token-0123456789abcdef"),
        },
    ])
    .unwrap();
    let collector = start(&tmp.path().join("data"), |s| s.security.agent_tokens = tokens).await;
    // The header value comes from a token file, the way the agent reads it.
    let token_for = |name: &str, token: &str| {
        let path = tmp.path().join(name);
        std::fs::write(&path, format!("{token}\n")).unwrap();
        hostpulse_agent::tls::load_token(&TlsSettings {
            token_file: Some(path),
            ..Default::default()
        })
        .unwrap()
    };
    let plain = || endpoint(&collector, &TlsSettings::default());

    let ok = exchange(plain(), token_for("alpha.token", alpha_token), "alpha")
        .await
        .unwrap();
    assert!(ok.acked && ok.errors.is_empty(), "{ok:?}");
    assert_eq!(stored_instances(&collector), ["alpha"]);

    let wrong = exchange(plain(), token_for("wrong.token", "not-a-known-token-0123"), "alpha").await;
    let e = wrong.unwrap_err();
    assert!(e.starts_with("status Unauthenticated: "), "{e}");
    assert!(e.contains("not one this collector knows"), "{e}");
    let missing = exchange(plain(), None, "alpha").await.unwrap_err();
    assert!(
        missing.starts_with("status Unauthenticated: ") && missing.contains("bearer token is required"),
        "{missing}"
    );
    assert_eq!(collector.telemetry.get(Counter::RejectedUnauthenticated), 2);

    let forged = exchange(plain(), token_for("alpha2.token", alpha_token), "beta")
        .await
        .unwrap();
    assert_identity_refusal(&forged, "beta", "alpha");
    assert!(forged.errors[0].message.contains("token"), "{forged:?}");
    assert_eq!(collector.store.last_seq("beta").unwrap(), None);
    assert_eq!(stored_instances(&collector), ["alpha"]);
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_command_refuses_to_overwrite_and_its_files_load() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pki");
    let certs = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_e2e-collector"))
            .args(["certs", "--out", out.to_str().unwrap(), "--server-name", "127.0.0.1"])
            .args(["--agent", "alpha", "--agent", "web-2.example"])
            .output()
            .unwrap()
    };
    let first = certs();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    for name in [
        "ca.pem",
        "ca-key.pem",
        "server.pem",
        "server-key.pem",
        "alpha.pem",
        "alpha-key.pem",
        "web-2.example.pem",
    ] {
        assert!(out.join(name).is_file(), "{name} missing");
    }
    let ca_before = std::fs::read(out.join("ca.pem")).unwrap();
    let second = certs();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("refusing to overwrite") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(out.join("ca.pem")).unwrap(),
        ca_before,
        "the CA is untouched"
    );

    // The files load on both sides and work together.
    let collector = start(&tmp.path().join("data"), |s| {
        s.security.tls = Some(server_tls(&out, true, Duration::from_secs(10)));
    })
    .await;
    let ok = exchange(
        endpoint(&collector, &agent_tls(&out, Some("web-2.example"))),
        None,
        "web-2.example",
    )
    .await
    .unwrap();
    assert!(ok.acked, "{ok:?}");
    assert_eq!(stored_instances(&collector), ["web-2.example"]);
    collector.shutdown().await;
}

/// GETs `path` over HTTPS trusting `ca`, returning the status line.
async fn https_status_line(addr: std::net::SocketAddr, ca: &Path, path: &str) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in hostpulse_collector::tls::parse_certificates(ca, &pem).unwrap() {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !response.windows(2).any(|w| w == b"\r\n") {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before a status line");
        response.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&response);
    text.lines().next().unwrap_or_default().to_string()
}

/// Waits for the server to close a connection on which the client never
/// starts a TLS handshake; fails if it stays open for 10 s.
async fn closed_by_server(addr: std::net::SocketAddr) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await;
    match read {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("server sent {n} bytes to a silent client"),
        Err(_) => panic!("{addr}: a silent client was not cut off by the handshake timeout"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_speaks_tls_and_silent_handshakes_time_out() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(&tmp.path().join("pki"), &[]);
    let collector = start(&tmp.path().join("data"), |s| {
        s.security.tls = Some(server_tls(&pki, false, Duration::from_millis(300)));
    })
    .await;
    assert_eq!(
        https_status_line(collector.http_addr, &pki.join("ca.pem"), "/-/healthy").await,
        "HTTP/1.1 200 OK"
    );
    closed_by_server(collector.http_addr).await;
    closed_by_server(collector.grpc_addr).await;
    // Both listeners still serve after cutting off the silent clients.
    assert_eq!(
        https_status_line(collector.http_addr, &pki.join("ca.pem"), "/-/healthy").await,
        "HTTP/1.1 200 OK"
    );
    let ok = exchange(endpoint(&collector, &agent_tls(&pki, None)), None, "alpha")
        .await
        .unwrap();
    assert!(ok.acked, "TLS without client certificates trusts the Hello: {ok:?}");
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_and_admin_endpoints_need_the_admin_token() {
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("admin.token");
    std::fs::write(&token_file, "admin-token-0123456789abcdef\n").unwrap();
    let collector = start(&tmp.path().join("data"), |s| {
        s.security.admin_token_file = Some(token_file.clone());
    })
    .await;
    let base = format!("http://{}", collector.http_addr);
    let http = reqwest::Client::new();
    let post = |path: &str, auth: Option<&str>| {
        let mut request = http.post(format!("{base}{path}")).body(Vec::<u8>::new());
        if let Some(a) = auth {
            request = request.header("authorization", a);
        }
        request.send()
    };
    for (path, auth) in [
        ("/api/v1/write", None),
        ("/api/v1/write", Some("Bearer wrong-token-0123456789")),
        ("/api/v1/write", Some("Basic admin-token-0123456789abcdef")),
        ("/api/v1/admin/anything", None),
        ("/-/reload", Some("Bearer wrong-token-0123456789")),
    ] {
        let resp = post(path, auth).await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{path} with {auth:?}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"hostpulse\"");
    }
    assert_eq!(collector.telemetry.get(Counter::HttpUnauthorized), 5);
    // With the token the request reaches the receiver, which judges the
    // (empty) body on its own.
    let resp = post("/api/v1/write", Some("Bearer admin-token-0123456789abcdef"))
        .await
        .unwrap();
    assert_ne!(resp.status().as_u16(), 401);
    let resp = post("/-/reload", Some("Bearer admin-token-0123456789abcdef"))
        .await
        .unwrap();
    assert_ne!(resp.status().as_u16(), 401);
    assert_eq!(collector.telemetry.get(Counter::HttpUnauthorized), 5);
    // Reads need no token.
    let resp = http.get(format!("{base}/api/v1/query?query=up")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    collector.shutdown().await;
}
