//! HTTP-level tests of the API: a real store in a temp dir, the router on an
//! ephemeral loopback port, and requests shaped like Grafana's and
//! promtool's (GET query strings and form POSTs).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use serde_json::{Value as Json, json};

use super::{ApiContext, router};
use crate::alert::AlertBoard;
use crate::model::{Labels, STALE_NAN_BITS, SeriesSamples};
use crate::store::{HostRecord, Store, StoreOptions};
use crate::telemetry::{Counter, Telemetry};

/// Data time base: 2023-11-14T22:13:20Z.
const T0: i64 = 1_700_000_000_000;

fn series(pairs: &[(&str, &str)], samples: &[(i64, f64)]) -> SeriesSamples {
    SeriesSamples {
        labels: Labels::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        samples: samples.to_vec(),
    }
}

struct Server {
    base: String,
    telemetry: Arc<Telemetry>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let stale = f64::from_bits(STALE_NAN_BITS);
        store
            .append(
                "db1",
                1,
                vec![
                    series(
                        &[("__name__", "node_load1"), ("instance", "db1"), ("job", "hostpulse")],
                        &[(T0, 0.5), (T0 + 15_000, 1.5), (T0 + 30_000, 1e21)],
                    ),
                    series(
                        &[
                            ("__name__", "node_hwmon_temp_celsius"),
                            ("instance", "db1"),
                            ("job", "hostpulse"),
                            ("chip", "platform_coretemp_0"),
                            ("sensor", "temp1"),
                        ],
                        &[(T0, 55.0), (T0 + 15_000, stale)],
                    ),
                ],
            )
            .await
            .unwrap();
        store
            .append(
                "db2",
                1,
                vec![series(
                    &[("__name__", "node_load1"), ("instance", "db2"), ("job", "hostpulse")],
                    &[(T0, 2.0)],
                )],
            )
            .await
            .unwrap();
        store
            .record_hello(HostRecord {
                host: "db1".into(),
                agent_version: "0.1.0".into(),
                cpu_model: "Test CPU".into(),
                last_report_ms: T0,
                ..HostRecord::default()
            })
            .unwrap();
        let telemetry = Arc::new(Telemetry::default());
        let ctx = ApiContext {
            store,
            telemetry: telemetry.clone(),
            alerts: Arc::new(AlertBoard::new()),
            started_ms: T0,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(ctx)).await });
        Server {
            base: format!("http://{addr}"),
            telemetry,
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// GET `path?k=v&...`; returns status and body as JSON (or a string).
    async fn get(&self, path: &str, params: &[(&str, &str)]) -> (u16, Json) {
        let url = format!("{}{path}?{}", self.base, encode(params));
        let resp = self.client.get(url).send().await.unwrap();
        Self::read(resp).await
    }

    /// POST a form, as promtool's client does.
    async fn post(&self, path: &str, params: &[(&str, &str)]) -> (u16, Json) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode(params))
            .send()
            .await
            .unwrap();
        Self::read(resp).await
    }

    async fn read(resp: reqwest::Response) -> (u16, Json) {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Json::String(text)))
    }
}

fn encode(params: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

fn assert_error(got: &(u16, Json), status: u16, kind: &str, text: &str) {
    assert_eq!(got.0, status, "{got:?}");
    assert_eq!(got.1["status"], "error", "{got:?}");
    assert_eq!(got.1["errorType"], kind, "{got:?}");
    let msg = got.1["error"].as_str().unwrap();
    assert!(msg.contains(text), "{msg:?} should contain {text:?}");
}

#[tokio::test]
async fn instant_queries_over_get_and_post() {
    let s = Server::start().await;
    let t = secs(T0 + 20_000);
    let (status, body) = s.get("/api/v1/query", &[("query", "node_load1"), ("time", &t)]).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"__name__": "node_load1", "instance": "db1", "job": "hostpulse"}, "value": [1_700_000_020, "1.5"]},
            {"metric": {"__name__": "node_load1", "instance": "db2", "job": "hostpulse"}, "value": [1_700_000_020, "2"]},
        ]}})
    );

    // promtool: POST form, RFC 3339 time, regex matcher, large value.
    let (status, body) = s
        .post(
            "/api/v1/query",
            &[
                ("query", r#"{__name__="node_load1",instance=~"db1|x"}"#),
                ("time", "2023-11-14T22:13:50.5Z"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["result"][0]["value"], json!([1_700_000_030.5, "1e+21"]));

    // The stale marker ends the temperature series.
    let (_, body) = s
        .get(
            "/api/v1/query",
            &[("query", "node_hwmon_temp_celsius"), ("time", &secs(T0 + 20_000))],
        )
        .await;
    assert_eq!(body["data"]["result"], json!([]));
    let (_, body) = s
        .get(
            "/api/v1/query",
            &[
                ("query", "node_hwmon_temp_celsius offset 10s"),
                ("time", &secs(T0 + 20_000)),
            ],
        )
        .await;
    assert_eq!(body["data"]["result"][0]["value"][1], "55");

    let (_, body) = s.get("/api/v1/query", &[("query", "1.5"), ("time", "100")]).await;
    assert_eq!(body["data"], json!({"resultType": "scalar", "result": [100, "1.5"]}));
    let (_, body) = s.get("/api/v1/query", &[("query", "\"hi\""), ("time", "100")]).await;
    assert_eq!(body["data"], json!({"resultType": "string", "result": [100, "hi"]}));
}

#[tokio::test]
async fn range_queries_step_through_time() {
    let s = Server::start().await;
    let (status, body) = s
        .get(
            "/api/v1/query_range",
            &[
                ("query", r#"node_load1{instance!="db2"}"#),
                ("start", &secs(T0)),
                ("end", &secs(T0 + 30_000)),
                ("step", "15s"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!({"resultType": "matrix", "result": [
            {"metric": {"__name__": "node_load1", "instance": "db1", "job": "hostpulse"},
             "values": [[1_700_000_000, "0.5"], [1_700_000_015, "1.5"], [1_700_000_030, "1e+21"]]},
        ]})
    );
    let (_, body) = s
        .post(
            "/api/v1/query_range",
            &[("query", "2"), ("start", "0"), ("end", "1"), ("step", "0.5")],
        )
        .await;
    assert_eq!(
        body["data"]["result"][0]["values"],
        json!([[0, "2"], [0.5, "2"], [1, "2"]])
    );
    assert_eq!(body["data"]["result"][0]["metric"], json!({}));
}

#[tokio::test]
async fn bad_requests_get_prometheus_errors() {
    let s = Server::start().await;
    let q = "/api/v1/query";
    let r = "/api/v1/query_range";
    assert_error(
        &s.get(q, &[("query", "node_load1{")]).await,
        400,
        "bad_data",
        "invalid parameter \"query\"",
    );
    assert_error(&s.get(q, &[]).await, 400, "bad_data", "invalid parameter \"query\"");
    // Evaluation errors are 422 `execution` with Prometheus's wording.
    assert_error(
        &s.get(q, &[("query", "node_load1 * on() node_load1"), ("time", &secs(T0))])
            .await,
        422,
        "execution",
        "found duplicate series for the match group {} on the right hand-side of the operation",
    );
    assert_error(
        &s.get(
            q,
            &[
                (
                    "query",
                    "label_replace(node_load1, \"instance\", \"\", \"instance\", \".*\")",
                ),
                ("time", &secs(T0)),
            ],
        )
        .await,
        422,
        "execution",
        "vector cannot contain metrics with the same labelset",
    );
    // A timeout that has passed before evaluation starts: 503 `timeout`.
    assert_error(
        &s.get(q, &[("query", "node_load1"), ("timeout", "0.000000001")]).await,
        503,
        "timeout",
        "query timed out",
    );
    assert_error(
        &s.get(q, &[("query", "up"), ("time", "soon")]).await,
        400,
        "bad_data",
        "invalid parameter \"time\": cannot parse \"soon\" to a valid timestamp",
    );
    assert_error(
        &s.get(q, &[("query", "up"), ("timeout", "fast")]).await,
        400,
        "bad_data",
        "invalid parameter \"timeout\"",
    );
    assert_error(
        &s.get(r, &[("query", "up"), ("end", "1"), ("step", "1")]).await,
        400,
        "bad_data",
        "invalid parameter \"start\": cannot parse \"\" to a valid timestamp",
    );
    assert_error(
        &s.get(r, &[("query", "up"), ("start", "10"), ("end", "1"), ("step", "1")])
            .await,
        400,
        "bad_data",
        "end timestamp must not be before start time",
    );
    assert_error(
        &s.get(r, &[("query", "up"), ("start", "0"), ("end", "1"), ("step", "0")])
            .await,
        400,
        "bad_data",
        "zero or negative query resolution step widths are not accepted",
    );
    assert_error(
        &s.get(r, &[("query", "up"), ("start", "0"), ("end", "11001"), ("step", "1")])
            .await,
        400,
        "bad_data",
        "exceeded maximum resolution of 11,000 points per timeseries",
    );
    assert_error(
        &s.get(r, &[("query", "\"s\""), ("start", "0"), ("end", "1"), ("step", "1")])
            .await,
        400,
        "bad_data",
        "invalid expression type \"string\" for range query",
    );
    assert_error(
        &s.get("/api/v1/series", &[]).await,
        400,
        "bad_data",
        "no match[] parameter provided",
    );
    assert_error(
        &s.get("/api/v1/series", &[("match[]", "up + 1")]).await,
        400,
        "bad_data",
        "invalid parameter \"match[]\"",
    );
    // A malformed escape in the query string is rejected, not a panic.
    let resp = s.client.get(format!("{}{q}?query=%zz", s.base)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // Unsupported methods: 405 (promtool then falls back to GET).
    let resp = s.client.put(format!("{}{q}", s.base)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert!(s.telemetry.get(Counter::HttpErrors) >= 15);
    assert_eq!(s.telemetry.get(Counter::PromqlTimeouts), 1);
    assert_eq!(s.telemetry.get(Counter::PromqlExecutionErrors), 2);
    assert!(s.telemetry.get(Counter::PromqlQueries) >= 6);
}

#[tokio::test]
async fn series_and_label_endpoints() {
    let s = Server::start().await;
    let (status, body) = s
        .get(
            "/api/v1/series",
            &[
                ("match[]", r#"node_load1{instance="db2"}"#),
                ("match[]", "node_hwmon_temp_celsius"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!([
            {"__name__": "node_hwmon_temp_celsius", "chip": "platform_coretemp_0", "instance": "db1", "job": "hostpulse", "sensor": "temp1"},
            {"__name__": "node_load1", "instance": "db2", "job": "hostpulse"},
        ])
    );
    let (_, body) = s.post("/api/v1/labels", &[]).await;
    let names = body["data"].as_array().unwrap();
    for n in ["__name__", "chip", "instance", "job", "sensor"] {
        assert!(names.contains(&json!(n)), "{body}");
    }
    let (_, body) = s.get("/api/v1/labels", &[("match[]", "node_load1")]).await;
    assert_eq!(body["data"], json!(["__name__", "instance", "job"]));
    let (_, body) = s.get("/api/v1/label/instance/values", &[]).await;
    assert_eq!(body["data"], json!(["db1", "db2"]));
    let (_, body) = s
        .get(
            "/api/v1/label/instance/values",
            &[("match[]", "node_hwmon_temp_celsius")],
        )
        .await;
    assert_eq!(body["data"], json!(["db1"]));
    let (_, body) = s.get("/api/v1/label/nonexistent/values", &[]).await;
    assert_eq!(body, json!({"status": "success", "data": []}));
}

#[tokio::test]
async fn promql_evaluates_functions_aggregations_and_operators() {
    let s = Server::start().await;
    let (status, body) = s
        .get(
            "/api/v1/query",
            &[("query", "sum by (job) (node_load1) * 2"), ("time", &secs(T0 + 20_000))],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["result"],
        json!([{"metric": {"job": "hostpulse"}, "value": [1_700_000_020, "7"]}])
    );
    let (status, body) = s
        .post(
            "/api/v1/query_range",
            &[
                ("query", "max_over_time(node_load1{instance=\"db1\"}[20s])"),
                ("start", &secs(T0 + 15_000)),
                ("end", &secs(T0 + 30_000)),
                ("step", "15"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["result"][0]["values"],
        json!([[1_700_000_015, "1.5"], [1_700_000_030, "1e+21"]])
    );
    assert_eq!(
        body["data"]["result"][0]["metric"],
        json!({"instance": "db1", "job": "hostpulse"})
    );
}

#[tokio::test]
async fn format_query_and_metadata() {
    let s = Server::start().await;
    let (status, body) = s
        .get("/api/v1/format_query", &[("query", "sum  by(job)(rate(x[5m]))")])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], "sum by (job) (rate(x[5m]))");
    let (status, body) = s.post("/api/v1/format_query", &[("query", "x{")]).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = s.get("/api/v1/metadata", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["node_load1"],
        json!([{"type": "gauge", "help": "", "unit": ""}])
    );
    let (_, body) = s
        .get("/api/v1/metadata", &[("metric", "node_hwmon_temp_celsius")])
        .await;
    assert_eq!(body["data"].as_object().unwrap().len(), 1);
    let (_, body) = s.get("/api/v1/metadata", &[("limit", "1")]).await;
    assert_eq!(body["data"].as_object().unwrap().len(), 1);
}

#[tokio::test]
async fn status_metrics_and_health_pages() {
    let s = Server::start().await;
    let (status, body) = s.get("/api/v1/status/buildinfo", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["version"], env!("CARGO_PKG_VERSION"));
    for field in ["revision", "branch", "buildUser", "buildDate", "goVersion"] {
        assert!(body["data"].get(field).is_some(), "{field}");
    }
    let (status, body) = s.get("/metrics", &[]).await;
    assert_eq!(status, 200);
    let text = body.as_str().unwrap();
    assert!(text.contains("hostpulse_http_requests_total 2\n"), "{text}");
    assert!(text.contains("hostpulse_store_series 3\n"), "{text}");
    // The decoded-section cache is counted (issue 5).
    assert!(
        text.contains("# TYPE hostpulse_store_decoded_cache_hits_total counter\n"),
        "{text}"
    );
    assert!(text.contains("process_start_time_seconds 1700000000\n"), "{text}");
    let (status, body) = s.get("/-/healthy", &[]).await;
    assert_eq!(
        (status, body.as_str().unwrap()),
        (200, "hostpulse collector is Healthy.\n")
    );
    let (status, _) = s.get("/-/ready", &[]).await;
    assert_eq!(status, 200);
    let (status, body) = s.get("/", &[]).await;
    assert_eq!(status, 200);
    let html = body.as_str().unwrap();
    assert!(html.contains("<td>db1</td>") && html.contains("Test CPU"), "{html}");
}

/// Interop with the real Go client: `promtool query instant|range` against
/// the router. Needs `promtool` (Debian package `prometheus`).
#[tokio::test]
#[ignore = "needs promtool from the Debian prometheus package"]
async fn promtool_queries_work() {
    let s = Server::start().await;
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("promtool").args(&args).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            (out.status.success(), text)
        })
    };
    let (ok, text) = run(vec![
        "query".into(),
        "instant".into(),
        format!("--time={}", secs(T0 + 20_000)),
        s.base.clone(),
        "node_load1".into(),
    ])
    .await
    .unwrap();
    assert!(ok, "{text}");
    assert!(
        text.contains(r#"node_load1{instance="db1", job="hostpulse"} => 1.5 @[1700000020]"#),
        "{text}"
    );
    let (ok, text) = run(vec![
        "query".into(),
        "range".into(),
        format!("--start={}", secs(T0)),
        format!("--end={}", secs(T0 + 30_000)),
        "--step=15s".into(),
        s.base.clone(),
        r#"node_load1{instance="db2"}"#.into(),
    ])
    .await
    .unwrap();
    assert!(ok, "{text}");
    assert!(text.contains("2 @[1700000000]"), "{text}");
    let (ok, text) = run(vec![
        "query".into(),
        "instant".into(),
        format!("--time={}", secs(T0 + 20_000)),
        s.base.clone(),
        "sum(node_load1)".into(),
    ])
    .await
    .unwrap();
    assert!(ok && text.contains("{} => 3.5 @[1700000020]"), "{text}");
}

/// Long ranges are read in parallel, whole hosts per thread; the answer
/// must equal one sequential read, from heads, from sealed blocks and from
/// the decoded-section cache.
#[tokio::test]
async fn parallel_slices_read_the_same_as_one_select() {
    use crate::model::Matcher;
    use crate::query::eval::Source;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let hour = 3_600_000;
    let data: Vec<SeriesSamples> = (0..3)
        .map(|i| {
            let instance = format!("h{i}");
            // Series 2 only has samples late in the range.
            let from = if i == 2 { 3 * hour } else { 0 };
            series(
                &[("__name__", "m"), ("instance", &instance)],
                &(from / 10_000..(4 * hour) / 10_000)
                    .map(|k| (T0 + k * 10_000, k as f64))
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    store.append_unsequenced(data).await.unwrap();
    let matchers = [Matcher::equal("__name__", "m")];
    let (from, to) = (T0 + 1, T0 + 4 * hour - 5_000);
    let mut sequential = store.select(&matchers, from, to).unwrap();
    let mut parallel = Source::select(&store, &matchers, from, to).unwrap();
    sequential.sort_by(|a, b| a.labels.cmp(&b.labels));
    parallel.sort_by(|a, b| a.labels.cmp(&b.labels));
    assert_eq!(parallel.len(), 3);
    assert_eq!(parallel, sequential);
    store.seal_all().unwrap();
    for _ in 0..2 {
        let mut sealed = Source::select(&store, &matchers, from, to).unwrap();
        sealed.sort_by(|a, b| a.labels.cmp(&b.labels));
        assert_eq!(sealed, sequential);
    }
    assert!(store.stats().decoded_cache.hits > 0);
}

/// Issue 5: reads served from the decoded-section cache equal reads that
/// decode, for every range (inside one window, across windows, partly
/// outside), and the cache is counted.
#[tokio::test]
async fn cached_block_reads_equal_decoded_ones() {
    let open = |dir: &std::path::Path, cache: usize| {
        Store::open(
            dir,
            StoreOptions {
                window_ms: 10_000,
                decoded_cache_bytes: cache,
                ..StoreOptions::default()
            },
        )
        .unwrap()
    };
    let data: Vec<SeriesSamples> = (0..4)
        .map(|k| {
            let host = format!("h{}", k % 2);
            let sensor = format!("t{k}");
            // Irregular timestamps for one series, regular for the rest.
            let samples: Vec<(i64, f64)> = (0..100)
                .map(|i| (i * 1000 + if k == 3 { i % 7 } else { 0 }, (i * (k + 1)) as f64 / 4.0))
                .collect();
            series(
                &[("__name__", "temp"), ("instance", &host), ("sensor", &sensor)],
                &samples,
            )
        })
        .collect();
    let (cached_dir, plain_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cached = open(cached_dir.path(), 1 << 20);
    let plain = open(plain_dir.path(), 0);
    for store in [&cached, &plain] {
        store.append_unsequenced(data.clone()).await.unwrap();
        store.seal_all().unwrap();
    }
    let all = [crate::model::Matcher::equal("__name__", "temp")];
    let one = [
        crate::model::Matcher::equal("__name__", "temp"),
        crate::model::Matcher::equal("sensor", "t3"),
    ];
    for matchers in [&all[..], &one[..]] {
        for (start, end) in [
            (0, 200_000),
            (12_345, 12_999),
            (5_500, 47_000),
            (-5_000, 3_000),
            (99_000, 99_999),
        ] {
            let want = plain.select(matchers, start, end).unwrap();
            // First read fills the cache, the second is served from it.
            assert_eq!(cached.select(matchers, start, end).unwrap(), want, "[{start}, {end}]");
            assert_eq!(
                cached.select(matchers, start, end).unwrap(),
                want,
                "[{start}, {end}] cached"
            );
        }
    }
    let stats = cached.stats().decoded_cache;
    assert!(stats.hits > 0 && stats.misses > 0 && stats.bytes > 0, "{stats:?}");
    assert_eq!(plain.stats().decoded_cache.hits, 0);
}
