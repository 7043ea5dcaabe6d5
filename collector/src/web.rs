//! The status page at `/`: which hosts report, how fresh their data is, a
//! few key readings per host, and the alerts firing now. Server-rendered
//! HTML with a little inline CSS and no JavaScript, so it works from any
//! browser (or `curl`) on the collector's loopback address.
//!
//! Data is gathered from the store on the blocking pool ([`gather`]) and
//! rendered by a pure function ([`render`]) that tests call with literal
//! data. Every value from outside (host names, labels, annotations) is
//! HTML-escaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::response::Html;

use crate::alert::Alert;
use crate::model::{METRIC_NAME, Matcher};
use crate::query::eval::{LOOKBACK_MS, instant_value};
use crate::query::{ApiContext, QueryError, blocking};
use crate::store::{HostRecord, Store};

/// Hottest sensor of a host.
const TEMPERATURE: &str = "node_hwmon_temp_celsius";
/// Memory available to new work.
const MEMORY_AVAILABLE: &str = "node_memory_MemAvailable_bytes";
/// One-minute load average.
const LOAD1: &str = "node_load1";

/// A host row of the page.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostRow {
    /// What the store knows of the host.
    pub record: HostRecord,
    /// Highest current temperature over its sensors, °C.
    pub max_temp_celsius: Option<f64>,
    /// `node_memory_MemAvailable_bytes`.
    pub mem_available_bytes: Option<f64>,
    /// `node_load1`.
    pub load1: Option<f64>,
}

/// Everything the page shows.
#[derive(Clone, Debug, PartialEq)]
pub struct PageData {
    /// When the page is rendered, ms since epoch.
    pub now_ms: i64,
    /// When the collector started, ms since epoch.
    pub started_ms: i64,
    /// Hosts, or why they could not be read.
    pub hosts: Result<Vec<HostRow>, String>,
    /// Alerts firing now.
    pub firing: Vec<Alert>,
}

impl Default for PageData {
    fn default() -> Self {
        PageData {
            now_ms: 0,
            started_ms: 0,
            hosts: Ok(Vec::new()),
            firing: Vec::new(),
        }
    }
}

/// `GET /`.
pub async fn status_page(State(ctx): State<ApiContext>) -> Html<String> {
    let now_ms = now_ms();
    let store = ctx.store.clone();
    let hosts = blocking(Duration::from_secs(10), move || gather(&store, now_ms))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "status page could not read the store");
            "host data is unavailable right now (see the collector log)".to_string()
        });
    Html(render(&PageData {
        now_ms,
        started_ms: ctx.started_ms,
        hosts,
        firing: ctx.alerts.firing(),
    }))
}

/// Reads hosts and their key readings at `now_ms`.
pub fn gather(store: &Store, now_ms: i64) -> Result<Vec<HostRow>, QueryError> {
    let temps = latest_by_instance(store, TEMPERATURE, now_ms, f64::max)?;
    let mem = latest_by_instance(store, MEMORY_AVAILABLE, now_ms, |a, _| a)?;
    let load = latest_by_instance(store, LOAD1, now_ms, |a, _| a)?;
    Ok(store
        .hosts()?
        .into_iter()
        .map(|record| HostRow {
            max_temp_celsius: temps.get(&record.host).copied(),
            mem_available_bytes: mem.get(&record.host).copied(),
            load1: load.get(&record.host).copied(),
            record,
        })
        .collect())
}

/// Current value of `metric` per `instance`, folding several series of one
/// host with `combine`.
fn latest_by_instance(
    store: &Store,
    metric: &str,
    now_ms: i64,
    combine: fn(f64, f64) -> f64,
) -> Result<BTreeMap<String, f64>, QueryError> {
    let series = store.select(
        &[Matcher::equal(METRIC_NAME, metric)],
        now_ms.saturating_sub(LOOKBACK_MS).saturating_add(1),
        now_ms,
    )?;
    let mut out = BTreeMap::new();
    for s in series {
        let Some(v) = instant_value(&s.samples, now_ms).filter(|v| !v.is_nan()) else {
            continue;
        };
        out.entry(s.labels.get("instance").to_string())
            .and_modify(|cur| *cur = combine(*cur, v))
            .or_insert(v);
    }
    Ok(out)
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#222;background:#fafafa}\
h1{font-size:1.4rem;margin-bottom:.2rem}h2{font-size:1.1rem;margin-top:2rem}\
.sub{color:#666;font-size:.9rem}table{border-collapse:collapse;min-width:60%;background:#fff}\
th,td{padding:.35rem .8rem;border-bottom:1px solid #ddd;text-align:left;font-size:.9rem}\
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.stale{color:#b35c00}.none{color:#888}ul.alerts{padding-left:1.2rem}\
ul.alerts li{margin:.4rem 0}.crit{color:#b00020;font-weight:600}a{color:#0b57d0}";

/// A host whose last report is older than this is marked stale.
const STALE_AFTER_MS: i64 = 60_000;

/// Renders the page.
pub fn render(page: &PageData) -> String {
    let mut h = String::with_capacity(4096);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>hostpulse collector</title><style>{STYLE}</style></head><body>\n\
         <h1>hostpulse collector</h1>\n<p class=\"sub\">version {} · up {} · \
         <a href=\"/alerts\">alerts</a> · \
         <a href=\"/metrics\">/metrics</a> · \
         <a href=\"/api/v1/query?query=node_hwmon_temp_celsius\">example query: node_hwmon_temp_celsius</a></p>\n",
        escape(env!("CARGO_PKG_VERSION")),
        human_duration(page.now_ms.saturating_sub(page.started_ms)),
    );

    h.push_str("<h2>Firing alerts</h2>\n");
    if page.firing.is_empty() {
        h.push_str("<p class=\"none\">No alerts are firing.</p>\n");
    } else {
        h.push_str("<ul class=\"alerts\">\n");
        for a in &page.firing {
            let summary = a.annotations.get("summary").map(String::as_str).unwrap_or_default();
            let _ = writeln!(
                h,
                "<li><span class=\"crit\">{}</span> {} — {} <span class=\"sub\">(value {}, since {} ago)</span></li>",
                escape(a.name()),
                escape(&a.labels.to_string()),
                escape(summary),
                escape(&a.value.to_string()),
                human_duration(page.now_ms.saturating_sub(a.active_since_ms)),
            );
        }
        h.push_str("</ul>\n");
    }

    h.push_str("<h2>Hosts</h2>\n");
    match &page.hosts {
        Err(msg) => {
            let _ = writeln!(h, "<p class=\"stale\">{}</p>", escape(msg));
        }
        Ok(hosts) if hosts.is_empty() => {
            h.push_str("<p class=\"none\">No agent has reported yet.</p>\n");
        }
        Ok(hosts) => {
            h.push_str(
                "<table><thead><tr><th>host</th><th>agent</th><th>CPU model</th><th>last report</th>\
                 <th>max temp</th><th>mem available</th><th>load1</th></tr></thead><tbody>\n",
            );
            for row in hosts {
                let r = &row.record;
                let age_ms = page.now_ms.saturating_sub(r.last_report_ms);
                let last = if r.last_report_ms <= 0 {
                    "<span class=\"none\">never</span>".to_string()
                } else if age_ms > STALE_AFTER_MS {
                    format!("<span class=\"stale\">{} s ago</span>", age_ms / 1000)
                } else {
                    format!("{} s ago", age_ms.max(0) / 1000)
                };
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{last}</td><td class=\"num\">{}</td>\
                     <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                    escape(&r.host),
                    escape(&r.agent_version),
                    escape(&r.cpu_model),
                    reading(row.max_temp_celsius, |v| format!("{v:.1} °C")),
                    reading(row.mem_available_bytes, human_bytes),
                    reading(row.load1, |v| format!("{v:.2}")),
                );
            }
            h.push_str("</tbody></table>\n");
        }
    }
    h.push_str("</body></html>\n");
    h
}

fn reading(v: Option<f64>, format: impl Fn(f64) -> String) -> String {
    match v {
        Some(v) => escape(&format(v)),
        None => "<span class=\"none\">–</span>".to_string(),
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn human_bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn human_duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::AlertState;
    use crate::model::Labels;

    const NOW: i64 = 1_700_000_000_000;

    fn host(name: &str, last_report_ms: i64) -> HostRow {
        HostRow {
            record: HostRecord {
                host: name.into(),
                last_report_ms,
                agent_version: "0.1.0".into(),
                cpu_model: "AMD EPYC 7302 <16-Core>".into(),
                ..HostRecord::default()
            },
            max_temp_celsius: Some(61.3),
            mem_available_bytes: Some(8.0 * 1024.0 * 1024.0 * 1024.0),
            load1: None,
        }
    }

    #[test]
    fn page_shows_hosts_readings_and_alerts_escaped() {
        let page = PageData {
            now_ms: NOW,
            started_ms: NOW - 3_600_000,
            hosts: Ok(vec![host("db<1>", NOW - 12_000), host("old", NOW - 600_000)]),
            firing: vec![Alert {
                labels: Labels::new(vec![
                    ("alertname".into(), "HostpulseTemperatureCritical".into()),
                    ("instance".into(), "db<1>".into()),
                ]),
                annotations: BTreeMap::from([("summary".into(), "Sensor & chip hot".into())]),
                state: AlertState::Firing,
                active_since_ms: NOW - 120_000,
                resolved_at_ms: None,
                value: 101.0,
            }],
        };
        let html = render(&page);
        assert!(html.contains("<td>db&lt;1&gt;</td>"), "{html}");
        assert!(!html.contains("db<1>"));
        assert!(html.contains("AMD EPYC 7302 &lt;16-Core&gt;"));
        assert!(html.contains("12 s ago"));
        assert!(html.contains("class=\"stale\">600 s ago"));
        assert!(html.contains("61.3 °C"));
        assert!(html.contains("8.0 GiB"));
        assert!(html.contains("HostpulseTemperatureCritical"));
        assert!(html.contains("Sensor &amp; chip hot"));
        assert!(html.contains("since 2 min ago"));
        assert!(html.contains("href=\"/metrics\""));
        assert!(html.contains("href=\"/alerts\""));
        assert!(html.contains("up 1 h 0 min"));
    }

    #[test]
    fn empty_and_failed_states_render() {
        let html = render(&PageData {
            now_ms: NOW,
            hosts: Ok(vec![]),
            ..PageData::default()
        });
        assert!(html.contains("No agent has reported yet."));
        assert!(html.contains("No alerts are firing."));
        let html = render(&PageData {
            hosts: Err("store <down>".into()),
            ..PageData::default()
        });
        assert!(html.contains("store &lt;down&gt;"));
    }
}
