//! The PromQL differential suite (issue 5): the same deterministic dataset
//! in hostpulse and in a real Prometheus 2.42, the same queries against
//! both, answers compared (result type, label sets exactly, values within
//! 1e-9 relative, NaN where NaN), each query as instant queries at several
//! times and as a range query.
//!
//! Prometheus is fed through its remote-write receiver rather than
//! `promtool tsdb create-blocks-from openmetrics`, because only remote
//! write carries the stale markers this dataset needs where a series ends
//! (OpenMetrics text has no way to write one). The request is encoded here
//! by hand (protobuf fields and an uncompressed snappy block) so the test
//! needs no extra crates. hostpulse gets the same series through
//! `Store::append_unsequenced`.
//!
//! Needs `/usr/bin/prometheus` (Debian package `prometheus`); skipped with
//! a message when absent. Run with `cargo test -p hostpulse-tests --test
//! e2e promql_diff -- --ignored --nocapture`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hostpulse_collector::config::Settings;
use hostpulse_collector::model::{Labels, STALE_NAN_BITS, SeriesSamples};
use hostpulse_collector::server;
use serde_json::Value;

use crate::support::poll;

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Data start: 2023-11-14T22:13:20Z, aligned to the minute.
const T0: i64 = 1_700_000_040_000;
/// Scrape interval of the dataset.
const STEP: i64 = 15_000;
/// Two hours of data.
const SPAN: i64 = 2 * 3_600_000;
const MIN: i64 = 60_000;

/// A small deterministic generator (64-bit LCG), so the dataset is the
/// same on every run without a dependency.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn labels(name: &str, pairs: &[(&str, &str)]) -> Labels {
    let mut all: Vec<(&str, &str)> = vec![("__name__", name)];
    all.extend_from_slice(pairs);
    Labels::from_pairs(&all)
}

/// The dataset: three hosts with temperatures and their limits, fans,
/// counters with resets, memory, filesystems, a histogram, a series that
/// ends with a stale marker and one with a gap.
fn dataset() -> Vec<SeriesSamples> {
    let mut rng = Lcg(42);
    let times: Vec<i64> = (0..=SPAN / STEP).map(|i| T0 + i * STEP).collect();
    let mut out = Vec::new();
    let hosts = ["host-a", "host-b", "host-c"];
    for (h, host) in hosts.iter().enumerate() {
        let base = [("instance", *host), ("job", "hostpulse")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut l: Vec<(&str, &str)> = base.to_vec();
            l.extend_from_slice(extra);
            l
        };
        for (s, sensor) in ["temp1", "temp2", "temp3"].iter().enumerate() {
            let l = with(&[("chip", "platform_coretemp_0"), ("sensor", sensor)]);
            let offset = 40.0 + 8.0 * h as f64 + 3.0 * s as f64;
            let samples = times
                .iter()
                .enumerate()
                .map(|(i, t)| (*t, offset + 10.0 * (i as f64 / 40.0).sin() + rng.next()))
                .collect();
            out.push(SeriesSamples {
                labels: labels("node_hwmon_temp_celsius", &l),
                samples,
            });
            let crit = 95.0 + 5.0 * h as f64;
            out.push(SeriesSamples {
                labels: labels("node_hwmon_temp_crit_celsius", &l),
                samples: times.iter().map(|t| (*t, crit)).collect(),
            });
        }
        let fan = with(&[("chip", "platform_nct6775_656"), ("sensor", "fan1")]);
        out.push(SeriesSamples {
            labels: labels("node_hwmon_fan_rpm", &fan),
            samples: times
                .iter()
                .map(|t| (*t, 1200.0 + (rng.next() * 300.0).floor()))
                .collect(),
        });
        for dev in ["eth0", "eth1"] {
            let l = with(&[("device", dev)]);
            let mut v = 1e6 * (h + 1) as f64;
            let samples = times
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    // host-b's eth0 counter resets twice.
                    if h == 1 && dev == "eth0" && (i == 150 || i == 400) {
                        v = 1000.0 * rng.next();
                    } else {
                        v += 5e4 * rng.next() + 1000.0;
                    }
                    (*t, v)
                })
                .collect();
            out.push(SeriesSamples {
                labels: labels("node_network_receive_bytes_total", &l),
                samples,
            });
        }
        for cpu in ["0", "1"] {
            for mode in ["idle", "user"] {
                let l = with(&[("cpu", cpu), ("mode", mode)]);
                let mut v = 100.0;
                let samples = times
                    .iter()
                    .map(|t| {
                        v += if mode == "idle" { 12.0 } else { 3.0 } * rng.next();
                        (*t, v)
                    })
                    .collect();
                out.push(SeriesSamples {
                    labels: labels("node_cpu_seconds_total", &l),
                    samples,
                });
            }
        }
        let total = 64e9 * (h + 1) as f64;
        out.push(SeriesSamples {
            labels: labels("node_memory_MemTotal_bytes", &with(&[])),
            samples: times.iter().map(|t| (*t, total)).collect(),
        });
        out.push(SeriesSamples {
            labels: labels("node_memory_MemAvailable_bytes", &with(&[])),
            samples: times
                .iter()
                .map(|t| (*t, (total * (0.3 + 0.4 * rng.next())).round()))
                .collect(),
        });
        for mp in ["/", "/data"] {
            let l = with(&[("mountpoint", mp), ("fstype", "ext4")]);
            out.push(SeriesSamples {
                labels: labels("node_filesystem_avail_bytes", &l),
                samples: times
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (*t, 5e11 - i as f64 * 1e8 * (h + 1) as f64))
                    .collect(),
            });
        }
        // node_load1; host-c has a 20-minute gap in the middle.
        out.push(SeriesSamples {
            labels: labels("node_load1", &with(&[])),
            samples: times
                .iter()
                .filter(|t| h != 2 || !(T0 + 50 * MIN..T0 + 70 * MIN).contains(*t))
                .map(|t| (*t, (rng.next() * 4.0 * 1000.0).round() / 1000.0))
                .collect(),
        });
        out.push(SeriesSamples {
            labels: labels("up", &with(&[])),
            samples: times.iter().map(|t| (*t, 1.0)).collect(),
        });
    }
    // A sensor of host-c that disappears at T0 + 1h: a stale marker ends it.
    let stale = f64::from_bits(STALE_NAN_BITS);
    let l = [
        ("instance", "host-c"),
        ("job", "hostpulse"),
        ("chip", "platform_coretemp_0"),
        ("sensor", "temp9"),
    ];
    out.push(SeriesSamples {
        labels: labels("node_hwmon_temp_celsius", &l),
        samples: times
            .iter()
            .filter(|t| **t <= T0 + 60 * MIN)
            .map(|t| (*t, if *t == T0 + 60 * MIN { stale } else { 70.0 + rng.next() }))
            .collect(),
    });
    // A classic histogram on one job.
    let bounds = ["0.1", "0.5", "1", "+Inf"];
    let mut counts = [0.0_f64; 4];
    let mut series: Vec<Vec<(i64, f64)>> = vec![Vec::new(); 4];
    for t in &times {
        let obs = (rng.next() * 20.0).floor();
        for _ in 0..obs as usize {
            let x = rng.next() * 1.5;
            for (b, bound) in [0.1, 0.5, 1.0, f64::INFINITY].iter().enumerate() {
                if x <= *bound {
                    counts[b] += 1.0;
                }
            }
        }
        for b in 0..4 {
            series[b].push((*t, counts[b]));
        }
    }
    for (b, samples) in series.into_iter().enumerate() {
        out.push(SeriesSamples {
            labels: labels(
                "http_request_duration_seconds_bucket",
                &[("instance", "api-1"), ("job", "api"), ("le", bounds[b])],
            ),
            samples,
        });
    }
    out
}

// ---------------------------------------------------------------------------
// Remote write to Prometheus, encoded by hand.

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, field << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `prometheus.WriteRequest` with the samples of `series` in `[from, to)`.
fn write_request(series: &[SeriesSamples], from: i64, to: i64) -> Vec<u8> {
    let mut req = Vec::new();
    for s in series {
        let samples: Vec<&(i64, f64)> = s.samples.iter().filter(|(t, _)| (from..to).contains(t)).collect();
        if samples.is_empty() {
            continue;
        }
        let mut ts = Vec::new();
        for (k, v) in s.labels.pairs() {
            let mut label = Vec::new();
            put_bytes(&mut label, 1, k.as_bytes());
            put_bytes(&mut label, 2, v.as_bytes());
            put_bytes(&mut ts, 1, &label);
        }
        for (t, v) in samples {
            let mut sample = Vec::new();
            put_varint(&mut sample, 1 << 3 | 1);
            sample.extend_from_slice(&v.to_bits().to_le_bytes());
            put_varint(&mut sample, 2 << 3);
            put_varint(&mut sample, *t as u64);
            put_bytes(&mut ts, 2, &sample);
        }
        put_bytes(&mut req, 1, &ts);
    }
    req
}

/// A snappy block holding `data` as literals only (valid, uncompressed).
fn snappy_literal(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    put_varint(&mut out, data.len() as u64);
    for chunk in data.chunks(65_536) {
        let n = chunk.len() - 1;
        if n < 60 {
            out.push((n as u8) << 2);
        } else if n < 256 {
            out.push(60 << 2);
            out.push(n as u8);
        } else {
            out.push(61 << 2);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        out.extend_from_slice(chunk);
    }
    out
}

struct Prometheus {
    child: Child,
    base: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn start_prometheus(dir: &Path) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 15s\n  evaluation_interval: 1m\n").unwrap();
    let port = free_port();
    let child = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg("--storage.tsdb.retention.time=100y")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-remote-write-receiver")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    let p = Prometheus {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    let ready = format!("{}/-/ready", p.base);
    poll("prometheus to be ready", Duration::from_secs(60), || {
        let client = client.clone();
        let ready = ready.clone();
        async move {
            let r = client.get(&ready).send().await.ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
    p
}

async fn load_prometheus(p: &Prometheus, data: &[SeriesSamples]) {
    let client = reqwest::Client::new();
    // In time order, in slices well inside the head's 1 h out-of-bounds
    // window, so Prometheus accepts every sample.
    let mut from = T0;
    while from <= T0 + SPAN {
        let to = from + 10 * MIN;
        let body = snappy_literal(&write_request(data, from, to));
        let resp = client
            .post(format!("{}/api/v1/write", p.base))
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert!(
            status.is_success(),
            "remote write: {status}: {}",
            resp.text().await.unwrap_or_default()
        );
        from = to;
    }
}

// ---------------------------------------------------------------------------
// Queries and comparison.

/// The queries, each run as instant queries and as a range query.
fn queries() -> Vec<String> {
    let mut q: Vec<String> = Vec::new();
    let mut add = |s: &str| q.push(s.to_string());
    // Selectors, matchers, offset, @.
    for s in [
        "node_hwmon_temp_celsius",
        "node_hwmon_temp_celsius{sensor=\"temp1\"}",
        "node_hwmon_temp_celsius{sensor!=\"temp1\",instance=~\"host-(a|c)\"}",
        "node_hwmon_temp_celsius{sensor!~\"temp[12]\"}",
        "{__name__=~\"node_memory_.*\",instance=\"host-b\"}",
        "node_load1",
        "node_load1 offset 5m",
        "node_load1 offset -2m",
        "node_load1 @ 1700003640",
        "node_load1 @ 1700003640 offset 1m",
        "node_load1 @ start()",
        "node_load1 @ end()",
        "up",
        "node_hwmon_temp_celsius{sensor=\"temp9\"}",
        "nonexistent_metric",
    ] {
        add(s);
    }
    // Range functions over counters and gauges.
    for f in [
        "rate", "irate", "increase", "delta", "idelta", "resets", "changes", "deriv",
    ] {
        for (m, r) in [
            ("node_network_receive_bytes_total", "1m"),
            ("node_network_receive_bytes_total", "5m"),
            ("node_cpu_seconds_total{mode=\"user\"}", "2m"),
            ("node_hwmon_temp_celsius", "3m"),
        ] {
            add(&format!("{f}({m}[{r}])"));
        }
    }
    add("rate(node_network_receive_bytes_total[5m] offset 10m)");
    add("rate(node_network_receive_bytes_total[5m] @ 1700003640)");
    add("increase(node_network_receive_bytes_total{instance=\"host-b\"}[10m])");
    add("predict_linear(node_filesystem_avail_bytes[30m], 3600)");
    add("predict_linear(node_hwmon_temp_celsius[10m], 600)");
    add("deriv(node_filesystem_avail_bytes[10m])");
    for f in [
        "avg_over_time",
        "min_over_time",
        "max_over_time",
        "sum_over_time",
        "count_over_time",
        "stddev_over_time",
        "stdvar_over_time",
        "last_over_time",
        "present_over_time",
    ] {
        add(&format!("{f}(node_hwmon_temp_celsius[5m])"));
        add(&format!("{f}(node_load1[10m])"));
    }
    add("quantile_over_time(0.9, node_hwmon_temp_celsius[10m])");
    add("quantile_over_time(0.5, node_load1[5m])");
    add("quantile_over_time(0, node_load1[5m])");
    add("quantile_over_time(1.5, node_load1[5m])");
    add("absent_over_time(node_load1{instance=\"host-c\"}[5m])");
    add("absent_over_time(nonexistent_metric{job=\"x\"}[5m])");
    add("absent_over_time(node_hwmon_temp_celsius{sensor=\"temp9\"}[10m])");
    // Subqueries.
    add("max_over_time(rate(node_network_receive_bytes_total[5m])[30m:1m])");
    add("avg_over_time(node_hwmon_temp_celsius[15m:30s])");
    add("min_over_time(node_load1[10m:])");
    add("sum_over_time(deriv(node_hwmon_temp_celsius[5m])[10m:2m] offset 3m)");
    // absent.
    add("absent(nonexistent_metric{job=\"x\",instance=~\"a\"})");
    add("absent(node_load1)");
    add("absent(node_load1{instance=\"host-c\"})");
    // Math.
    for f in [
        "abs", "ceil", "floor", "exp", "ln", "log2", "log10", "sqrt", "sgn", "round",
    ] {
        add(&format!("{f}(node_hwmon_temp_celsius - 60)"));
    }
    add("round(node_hwmon_temp_celsius, 0.5)");
    add("clamp(node_hwmon_temp_celsius, 45, 60)");
    add("clamp_min(node_hwmon_temp_celsius, 50)");
    add("clamp_max(node_hwmon_temp_celsius, 50)");
    add("exp(node_hwmon_temp_celsius)");
    // time, timestamp, vector, scalar, dates.
    add("time()");
    add("timestamp(node_load1)");
    add("timestamp(node_load1 offset 1m)");
    add("node_load1 - timestamp(node_load1)");
    add("vector(1)");
    add("vector(time())");
    add("scalar(node_load1{instance=\"host-a\"})");
    add("scalar(node_load1)");
    add("node_load1 * scalar(up{instance=\"host-a\"})");
    for f in [
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "hour",
        "minute",
        "month",
        "year",
    ] {
        add(&format!("{f}()"));
        add(&format!("{f}(timestamp(node_load1))"));
    }
    // Labels and sorting.
    add("label_replace(node_load1, \"host\", \"$1\", \"instance\", \"host-(.*)\")");
    add("label_replace(node_load1, \"instance\", \"x\", \"instance\", \"nomatch\")");
    add("label_replace(node_hwmon_temp_celsius, \"sensor\", \"\", \"sensor\", \"temp.*\")");
    add("label_join(node_hwmon_temp_celsius, \"id\", \"/\", \"instance\", \"chip\", \"sensor\")");
    add("sort(node_hwmon_temp_celsius)");
    add("sort_desc(node_hwmon_temp_celsius)");
    add("sort_desc(sum by (instance) (rate(node_network_receive_bytes_total[5m])))");
    // Histograms.
    add("histogram_quantile(0.9, rate(http_request_duration_seconds_bucket[5m]))");
    add("histogram_quantile(0.5, sum by (le) (rate(http_request_duration_seconds_bucket[10m])))");
    add("histogram_quantile(0.99, http_request_duration_seconds_bucket)");
    add("histogram_quantile(0, http_request_duration_seconds_bucket)");
    // Aggregations.
    for a in ["sum", "avg", "min", "max", "count", "group", "stddev", "stdvar"] {
        add(&format!("{a}(node_hwmon_temp_celsius)"));
        add(&format!("{a} by (instance) (node_hwmon_temp_celsius)"));
        add(&format!("{a} without (sensor) (node_hwmon_temp_celsius)"));
    }
    add("sum by (instance) (rate(node_network_receive_bytes_total[5m]))");
    add("sum by (__name__) (node_hwmon_temp_celsius)");
    add("quantile(0.5, node_hwmon_temp_celsius)");
    add("quantile by (instance) (0.9, node_hwmon_temp_celsius)");
    add("topk(3, node_hwmon_temp_celsius)");
    add("topk by (instance) (1, node_hwmon_temp_celsius)");
    add("bottomk(2, node_load1)");
    add("bottomk without (sensor) (1, node_hwmon_temp_celsius)");
    add("count_values(\"crit\", node_hwmon_temp_crit_celsius)");
    add("count_values by (instance) (\"v\", node_hwmon_temp_crit_celsius)");
    add("count(count by (instance) (up))");
    // Arithmetic, comparison, set operators and matching.
    add("node_hwmon_temp_celsius / node_hwmon_temp_crit_celsius");
    add("node_hwmon_temp_crit_celsius - node_hwmon_temp_celsius");
    add("node_hwmon_temp_celsius > 55");
    add("node_hwmon_temp_celsius > bool 55");
    add("55 < node_hwmon_temp_celsius");
    add("55 < bool node_hwmon_temp_celsius");
    add("node_hwmon_temp_celsius >= node_hwmon_temp_crit_celsius - 45");
    add("node_hwmon_temp_celsius > bool node_hwmon_temp_crit_celsius");
    add("node_hwmon_temp_celsius == node_hwmon_temp_celsius");
    add("node_hwmon_temp_celsius != bool 0");
    add("node_load1 <= 1");
    add("node_load1 < bool 2");
    add("1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes");
    add("node_memory_MemAvailable_bytes / on(instance) node_memory_MemTotal_bytes");
    add("node_memory_MemAvailable_bytes / ignoring(job) node_memory_MemTotal_bytes");
    add("node_hwmon_temp_celsius / on(instance) group_left max by (instance) (node_hwmon_temp_celsius)");
    add("node_hwmon_temp_celsius / ignoring(sensor, chip) group_left node_load1");
    add("node_load1 * on(instance) group_right node_hwmon_temp_celsius");
    add("node_hwmon_temp_celsius * on(instance) group_left(mountpoint) node_filesystem_avail_bytes{mountpoint=\"/\"}");
    add("node_load1 % 1");
    add("node_load1 ^ 2");
    add("2 ^ node_load1");
    add("node_load1 atan2 up");
    add("-node_load1");
    add("(node_load1 + 1) * 2 - up / 4");
    add("node_load1 and node_load1 > 2");
    add("node_load1 or node_hwmon_temp_celsius{sensor=\"temp1\"}");
    add("node_load1 unless node_load1 < 1");
    add("node_hwmon_temp_celsius and on(instance) node_load1 > 3");
    add("node_hwmon_temp_celsius unless ignoring(sensor, chip) node_load1 < 2");
    add("node_load1{instance=\"host-c\"} or vector(0)");
    add("sum(node_load1{instance=\"nope\"}) or vector(0)");
    add("1 + 2 * 3");
    add("2 > bool 1");
    add("(1 + 2) / 0");
    add("-1 ^ 0.5");
    add("time() - 1700000000");
    // Expected errors: Prometheus must fail too.
    add("node_hwmon_temp_celsius * on(instance) node_load1");
    add("node_load1 * on() node_hwmon_temp_celsius");
    add("-{__name__=~\"node_hwmon_temp_celsius|node_hwmon_temp_crit_celsius\"}");
    add("rate({__name__=~\"node_hwmon_temp_celsius|node_hwmon_temp_crit_celsius\"}[5m])");
    q
}

fn parse_value(v: &Value) -> f64 {
    let s = v.as_str().unwrap_or("NaN");
    match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => s.parse().unwrap_or(f64::NAN),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

fn metric_key(m: &Value) -> String {
    let map: BTreeMap<String, String> = m
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    format!("{map:?}")
}

/// `Ok(())` when the answers agree, else what differs.
fn compare(query: &str, ours: &Value, theirs: &Value) -> Result<(), String> {
    let (os, ts) = (ours["status"].as_str(), theirs["status"].as_str());
    if os != ts {
        return Err(format!(
            "status {os:?} vs prometheus {ts:?}: ours {ours} theirs {theirs}"
        ));
    }
    if os == Some("error") {
        return if ours["errorType"] == theirs["errorType"] {
            Ok(())
        } else {
            Err(format!("errorType {} vs {}", ours["errorType"], theirs["errorType"]))
        };
    }
    let (od, td) = (&ours["data"], &theirs["data"]);
    if od["resultType"] != td["resultType"] {
        return Err(format!("resultType {} vs {}", od["resultType"], td["resultType"]));
    }
    match od["resultType"].as_str() {
        Some("scalar") | Some("string") => {
            let (o, t) = (&od["result"], &td["result"]);
            if o[0] != t[0] || !close(parse_value(&o[1]), parse_value(&t[1])) {
                return Err(format!("{o} vs {t}"));
            }
            Ok(())
        }
        Some("vector") => {
            let rows = |d: &Value| -> Vec<(String, f64, Value)> {
                d["result"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|s| {
                                (
                                    metric_key(&s["metric"]),
                                    parse_value(&s["value"][1]),
                                    s["value"][0].clone(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let (mut o, mut t) = (rows(od), rows(td));
            // Only sort() and sort_desc() promise an order.
            if !(query.starts_with("sort(") || query.starts_with("sort_desc(")) {
                o.sort_by(|a, b| a.0.cmp(&b.0));
                t.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if o.len() != t.len() {
                return Err(format!("{} samples vs {}: ours {o:?} theirs {t:?}", o.len(), t.len()));
            }
            for (a, b) in o.iter().zip(&t) {
                if a.0 != b.0 || !close(a.1, b.1) || a.2 != b.2 {
                    return Err(format!("{a:?} vs {b:?}"));
                }
            }
            Ok(())
        }
        Some("matrix") => {
            let rows = |d: &Value| -> BTreeMap<String, Vec<(f64, f64)>> {
                d["result"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|s| {
                                let pts = s["values"]
                                    .as_array()
                                    .map(|p| {
                                        p.iter()
                                            .map(|p| (p[0].as_f64().unwrap_or(f64::NAN), parse_value(&p[1])))
                                            .collect()
                                    })
                                    .unwrap_or_default();
                                (metric_key(&s["metric"]), pts)
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let (o, t) = (rows(od), rows(td));
            let (ok, tk): (Vec<_>, Vec<_>) = (o.keys().collect(), t.keys().collect());
            if ok != tk {
                return Err(format!("series {ok:?} vs {tk:?}"));
            }
            for (k, op) in &o {
                let tp = &t[k];
                if op.len() != tp.len() {
                    return Err(format!("{k}: {} points vs {}", op.len(), tp.len()));
                }
                for (a, b) in op.iter().zip(tp) {
                    if a.0 != b.0 || !close(a.1, b.1) {
                        return Err(format!("{k}: point {a:?} vs {b:?}"));
                    }
                }
            }
            Ok(())
        }
        other => Err(format!("unexpected result type {other:?}")),
    }
}

/// `k=v&...` with every byte outside the unreserved set percent-encoded.
fn encode_params(params: &[(&str, String)]) -> String {
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

async fn get(client: &reqwest::Client, url: &str, params: &[(&str, String)]) -> Value {
    let resp = client
        .get(format!("{url}?{}", encode_params(params)))
        .send()
        .await
        .unwrap();
    resp.json().await.unwrap_or(Value::Null)
}

/// Whether an answer is a success with at least one value.
fn has_data(v: &Value) -> bool {
    v["status"] == "success"
        && match &v["data"]["result"] {
            Value::Array(a) => !a.is_empty(),
            _ => true,
        }
}

fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

#[tokio::test]
#[ignore = "needs /usr/bin/prometheus (Debian package prometheus 2.42); run with -- --ignored"]
async fn promql_answers_equal_prometheus() {
    if !Path::new(PROMETHEUS).exists() {
        eprintln!(
            "SKIPPED: {PROMETHEUS} is absent; install the Debian package `prometheus` to run the differential suite"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset();

    let prometheus = start_prometheus(tmp.path()).await;
    load_prometheus(&prometheus, &data).await;

    let collector = server::start(Settings::ephemeral(tmp.path().join("hostpulse")))
        .await
        .unwrap();
    collector.store.append_unsequenced(data.clone()).await.unwrap();
    let ours_base = format!("http://{}", collector.http_addr);

    let client = reqwest::Client::new();
    let queries = queries();
    assert!(queries.len() >= 150, "{} queries", queries.len());
    let instants = [
        T0 + 30 * MIN,
        T0 + 60 * MIN,
        T0 + 62 * MIN + 7_000,
        T0 + 66 * MIN,
        T0 + SPAN + 2 * MIN,
    ];
    let ranges = [
        (T0 + 10 * MIN, T0 + SPAN + 10 * MIN, "60"),
        (T0 + 55 * MIN, T0 + 75 * MIN, "37"),
    ];
    let mut failures: Vec<(String, String, String)> = Vec::new();
    let mut compared = 0;
    let mut with_data = 0;
    for q in &queries {
        for t in instants {
            let params = [("query", q.clone()), ("time", secs(t))];
            let ours = get(&client, &format!("{ours_base}/api/v1/query"), &params).await;
            let theirs = get(&client, &format!("{}/api/v1/query", prometheus.base), &params).await;
            compared += 1;
            with_data += usize::from(has_data(&theirs));
            if let Err(e) = compare(q, &ours, &theirs) {
                failures.push((q.clone(), format!("instant @{}", secs(t)), e));
            }
        }
        for (start, end, step) in ranges {
            let params = [
                ("query", q.clone()),
                ("start", secs(start)),
                ("end", secs(end)),
                ("step", step.to_string()),
            ];
            let ours = get(&client, &format!("{ours_base}/api/v1/query_range"), &params).await;
            let theirs = get(&client, &format!("{}/api/v1/query_range", prometheus.base), &params).await;
            compared += 1;
            with_data += usize::from(has_data(&theirs));
            if let Err(e) = compare(q, &ours, &theirs) {
                failures.push((q.clone(), format!("range step {step}"), e));
            }
        }
    }
    collector.shutdown().await;
    if !failures.is_empty() {
        eprintln!("{:<70} | {:<24} | difference", "query", "mode");
        for (q, mode, e) in &failures {
            let e: String = e.chars().take(400).collect();
            eprintln!("{q:<70} | {mode:<24} | {e}");
        }
    }
    eprintln!(
        "{} queries, {compared} comparisons ({with_data} with data, the rest empty or errors on both sides), {} differences",
        queries.len(),
        failures.len()
    );
    // Guards against a broken load making everything trivially equal.
    assert!(
        with_data * 10 >= compared * 8,
        "only {with_data} of {compared} answers hold data"
    );
    assert!(
        failures.is_empty(),
        "{} of {compared} comparisons differ (table above)",
        failures.len()
    );
}
