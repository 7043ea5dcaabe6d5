//! HTTP-level tests of the receiver: a real store in a temp dir, the route
//! on an ephemeral loopback port, bodies encoded as Prometheus sends them.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use super::decode::tests::{body, series};
use super::*;
use crate::model::Matcher;
use crate::store::StoreOptions;

struct Receiving {
    url: String,
    store: Store,
    telemetry: Arc<Telemetry>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start(limits: RemoteWriteLimits) -> Receiving {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let telemetry = Arc::new(Telemetry::default());
    let app = router_with_limits(store.clone(), telemetry.clone(), limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiving {
        url: format!("http://{addr}/api/v1/write"),
        store,
        telemetry,
        client: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Receiving {
    /// POSTs like Prometheus does; returns status, Retry-After and body.
    async fn post(&self, body: Vec<u8>) -> (u16, Option<String>, String) {
        self.post_with(body, "snappy").await
    }

    async fn post_with(&self, body: Vec<u8>, encoding: &str) -> (u16, Option<String>, String) {
        let resp = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/x-protobuf")
            .header("Content-Encoding", encoding)
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (status, retry, resp.text().await.unwrap())
    }

    fn stored(&self, name: &str) -> Vec<(i64, f64)> {
        self.store
            .select(&[Matcher::equal("__name__", name)], i64::MIN, i64::MAX)
            .unwrap()
            .into_iter()
            .flat_map(|s| s.samples)
            .collect()
    }
}

fn now() -> i64 {
    crate::store::now_ms()
}

#[tokio::test]
async fn good_request_is_stored_and_answered_204() {
    let r = start(RemoteWriteLimits::default()).await;
    let t = now() - 5_000;
    let (status, _, text) = r
        .post(body(vec![
            series(
                &[
                    ("__name__", "up"),
                    ("instance", "localhost:9090"),
                    ("job", "prometheus"),
                ],
                &[(t, 1.0), (t + 1000, 1.0)],
            ),
            series(
                &[("__name__", "prometheus_build_info"), ("version", "2.42.0")],
                &[(t, 1.0)],
            ),
        ]))
        .await;
    assert_eq!(status, 204, "{text}");
    assert_eq!(r.stored("up"), vec![(t, 1.0), (t + 1000, 1.0)]);
    assert_eq!(r.stored("prometheus_build_info"), vec![(t, 1.0)]);
    assert_eq!(r.telemetry.get(Counter::IngestSamples), 3);
}

#[tokio::test]
async fn malformed_requests_are_refused_whole_with_a_reason() {
    let r = start(RemoteWriteLimits::default()).await;
    let t = now();
    let unsorted = body(vec![
        series(&[("__name__", "ok")], &[(t, 1.0)]),
        series(&[("__name__", "m"), ("z", "1"), ("a", "1")], &[(t, 1.0)]),
    ]);
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (unsorted, "snappy", "series 1: labels are not sorted by name"),
        (b"not snappy at all".to_vec(), "snappy", "not snappy block format"),
        (
            snap::raw::Encoder::new().compress_vec(b"\x0a\x05\x0a").unwrap(),
            "snappy",
            "not a protobuf WriteRequest",
        ),
        (
            body(vec![series(&[("__name__", "ok")], &[(t, 1.0)])]),
            "gzip",
            "Content-Encoding \"gzip\" is not supported",
        ),
    ];
    for (payload, encoding, needle) in cases {
        let (status, _, text) = r.post_with(payload, encoding).await;
        assert_eq!(status, 400, "{needle}: {text}");
        assert!(text.contains(needle), "{text:?} lacks {needle:?}");
    }
    assert!(r.stored("ok").is_empty(), "nothing of a refused request is stored");
    assert_eq!(r.telemetry.get(Counter::RejectedBatch), 4);
}

#[tokio::test]
async fn bad_samples_are_dropped_the_rest_stored_and_reported() {
    let r = start(RemoteWriteLimits::default()).await;
    let t = now() - 1000;
    let (status, _, text) = r
        .post(body(vec![series(
            &[("__name__", "m")],
            &[(t, f64::NAN), (t + 1, 2.0), (1000, 3.0)],
        )]))
        .await;
    assert_eq!(status, 400);
    assert!(
        text.starts_with("stored 1 samples; dropped 2 samples: 1 with a timestamp"),
        "{text}"
    );
    assert!(text.contains("1 with a NaN or infinite value"), "{text}");
    assert_eq!(r.stored("m"), vec![(t + 1, 2.0)]);
    assert_eq!(r.telemetry.get(Counter::RejectedSample), 2);
}

#[tokio::test]
async fn size_limits_answer_413() {
    let defaults = RemoteWriteLimits::default();
    let r = start(RemoteWriteLimits {
        max_body_bytes: 1024,
        decode: DecodeLimits {
            max_decompressed_bytes: 4096,
            ..defaults.decode
        },
        ..defaults
    })
    .await;
    let (status, _, _) = r.post(vec![0u8; 2048]).await;
    assert_eq!(status, 413, "body over max_body_bytes");
    let bomb = snap::raw::Encoder::new().compress_vec(&[0u8; 8192]).unwrap();
    assert!(bomb.len() < 1024);
    let (status, _, text) = r.post(bomb).await;
    assert_eq!(status, 413);
    assert!(
        text.contains("decompresses to 8192 bytes, more than the limit of 4096"),
        "{text}"
    );
}

#[tokio::test]
async fn an_exhausted_budget_answers_503_with_retry_after() {
    let r = start(RemoteWriteLimits {
        max_in_flight_bytes: 16,
        ..RemoteWriteLimits::default()
    })
    .await;
    let t = now();
    let (status, retry, text) = r
        .post(body(vec![series(&[("__name__", "m"), ("host", "a")], &[(t, 1.0)])]))
        .await;
    assert_eq!(status, 503, "{text}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(r.stored("m").is_empty());
    // A request that fits goes through: the refused one returned its permits.
    let small = body(vec![]);
    assert!(small.len() * 2 <= 16);
    let (status, _, text) = r.post(small).await;
    assert_eq!(status, 204, "{text}");
}
