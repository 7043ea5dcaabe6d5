//! The alerting HTTP API, merged into the collector's router by `server`:
//! Prometheus-compatible `GET /api/v1/alerts` and `GET /api/v1/rules` (so
//! Grafana's alerting views and `promtool`-style tooling read them), the
//! incident timeline `GET /api/v1/alerts/history`, the HTML alert page
//! `GET /alerts` (`alert/page.rs`, where `generatorURL` points), and `POST /-/reload`,
//! which re-reads the rule files (guarded by the admin token when one is
//! configured).
//!
//! History parameters: `start` and `end` (RFC 3339 or Unix seconds; default
//! the last 24 hours), `limit` (default 10 000), and any other parameter is
//! a label that must equal its value (`?alertname=HostpulseFanStopped&instance=db1`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::webhook::format_rfc3339;
use super::{AlertBoard, AlertState};
use crate::detect::rulefile::RuleKind;
use crate::detect::{self, Rules};

/// What the alerting routes read.
#[derive(Clone)]
pub struct AlertApi {
    /// The board.
    pub board: Arc<AlertBoard>,
    /// The loaded rules.
    pub rules: Arc<Rules>,
    /// Names of the code detectors, listed as a pseudo-group.
    pub detectors: Vec<&'static str>,
}

/// Default history window.
const DEFAULT_HISTORY_MS: i64 = 24 * 3600 * 1000;
/// Default most events per history answer.
const DEFAULT_HISTORY_LIMIT: usize = 10_000;

/// The read routes (`/api/v1/alerts`, `/api/v1/rules`, history).
pub fn router(api: AlertApi) -> Router {
    Router::new()
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/alerts/history", get(history))
        .route("/alerts", get(alerts_page))
        .with_state(api)
}

/// `POST /-/reload`, separate so `server` can put the admin guard on it.
pub fn reload_router(rules: Arc<Rules>) -> Router {
    Router::new().route("/-/reload", post(reload)).with_state(rules)
}

fn success(data: Value) -> Response {
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

fn error(status: StatusCode, kind: &str, message: String) -> Response {
    (
        status,
        axum::Json(json!({"status": "error", "errorType": kind, "error": message})),
    )
        .into_response()
}

fn labels_json(l: &crate::model::Labels) -> Value {
    Value::Object(
        l.pairs()
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

fn alert_json(a: &super::Alert) -> Value {
    json!({
        "labels": labels_json(&a.labels),
        "annotations": a.annotations,
        "state": a.state.as_str(),
        "activeAt": format_rfc3339(a.active_since_ms),
        "value": crate::detect::template::format_value(a.value),
    })
}

async fn alerts(State(api): State<AlertApi>) -> Response {
    let alerts: Vec<Value> = api
        .board
        .alerts()
        .iter()
        .filter(|a| a.state != AlertState::Resolved)
        .map(alert_json)
        .collect();
    success(json!({ "alerts": alerts }))
}

async fn rules(State(api): State<AlertApi>, Query(params): Query<BTreeMap<String, String>>) -> Response {
    let want = params.get("type").map(String::as_str);
    let entries = api.board.entries();
    let alerts_of = |key: &str| -> (Vec<Value>, &'static str) {
        let mut state = "inactive";
        let alerts: Vec<Value> = entries
            .iter()
            .filter(|e| e.rule == key && e.alert.state != AlertState::Resolved)
            .map(|e| {
                if e.alert.state == AlertState::Firing {
                    state = "firing";
                } else if state == "inactive" {
                    state = "pending";
                }
                alert_json(&e.alert)
            })
            .collect();
        (alerts, state)
    };
    let health_json = |key: &str| {
        let h = api.rules.health(key);
        let health = match (&h.last_error, h.last_evaluation_ms) {
            (Some(_), _) => "err",
            (None, 0) => "unknown",
            (None, _) => "ok",
        };
        (
            health,
            h.last_error.unwrap_or_default(),
            h.duration.as_secs_f64(),
            if h.last_evaluation_ms == 0 {
                "0001-01-01T00:00:00Z".to_string()
            } else {
                format_rfc3339(h.last_evaluation_ms)
            },
        )
    };
    let mut groups = Vec::new();
    if want != Some("record") && !api.detectors.is_empty() {
        let rules: Vec<Value> = api
            .detectors
            .iter()
            .map(|name| {
                let key = detect::detector_key(name);
                let (alerts, state) = alerts_of(&key);
                let (health, last_error, took, last) = health_json(&key);
                json!({
                    "type": "alerting", "name": name, "query": format!("<detector {name}>"),
                    "duration": 0, "keepFiringFor": 0, "labels": {}, "annotations": {},
                    "alerts": alerts, "state": state, "health": health, "lastError": last_error,
                    "evaluationTime": took, "lastEvaluation": last,
                })
            })
            .collect();
        groups.push(json!({
            "name": "hostpulse-detectors", "file": detect::DETECTORS_FILE, "interval": 0, "limit": 0,
            "rules": rules,
        }));
    }
    for g in api.rules.groups().iter() {
        let mut rules = Vec::new();
        for (i, r) in g.rules.iter().enumerate() {
            let key = detect::rule_key(g, i);
            let (health, last_error, took, last) = health_json(&key);
            let labels: BTreeMap<&str, &str> = r.labels.iter().map(|(k, v, _)| (k.as_str(), v.as_str())).collect();
            match &r.kind {
                RuleKind::Alerting {
                    name,
                    hold,
                    keep_firing_for,
                    annotations,
                } if want != Some("record") => {
                    let (alerts, state) = alerts_of(&key);
                    let annotations: BTreeMap<&str, &str> =
                        annotations.iter().map(|(k, v, _)| (k.as_str(), v.as_str())).collect();
                    rules.push(json!({
                        "type": "alerting", "name": name, "query": r.expr,
                        "duration": hold.as_secs_f64(), "keepFiringFor": keep_firing_for.as_secs_f64(),
                        "labels": labels, "annotations": annotations, "alerts": alerts, "state": state,
                        "health": health, "lastError": last_error, "evaluationTime": took, "lastEvaluation": last,
                    }));
                }
                RuleKind::Recording { record } if want != Some("alert") => {
                    rules.push(json!({
                        "type": "recording", "name": record, "query": r.expr, "labels": labels,
                        "health": health, "lastError": last_error, "evaluationTime": took, "lastEvaluation": last,
                    }));
                }
                _ => {}
            }
        }
        groups.push(json!({
            "name": g.name, "file": g.file,
            "interval": g.interval.map_or(0.0, |d| d.as_secs_f64()), "limit": g.limit, "rules": rules,
        }));
    }
    success(json!({ "groups": groups }))
}

async fn history(State(api): State<AlertApi>, Query(mut params): Query<BTreeMap<String, String>>) -> Response {
    let now = hostpulse_agent::sampler::now_ms();
    let time = |key: &str, default: i64, params: &mut BTreeMap<String, String>| match params.remove(key) {
        None => Ok(default),
        Some(t) => crate::query::params::parse_time(&t).map_err(|e| format!("invalid parameter \"{key}\": {e}")),
    };
    let bad = |m: String| error(StatusCode::BAD_REQUEST, "bad_data", m);
    let end = match time("end", now, &mut params) {
        Ok(t) => t,
        Err(e) => return bad(e),
    };
    let start = match time("start", end.saturating_sub(DEFAULT_HISTORY_MS), &mut params) {
        Ok(t) => t,
        Err(e) => return bad(e),
    };
    let limit = match params.remove("limit").map(|l| l.parse::<usize>()) {
        None => DEFAULT_HISTORY_LIMIT,
        Some(Ok(l)) => l,
        Some(Err(_)) => return bad("invalid parameter \"limit\": not a count".into()),
    };
    let api_board = api.board.clone();
    // Filtering by labels happens after the range read; the range read
    // takes the limit generously so filters still find matches.
    let read = tokio::task::spawn_blocking(move || api_board.history(start, end, usize::MAX)).await;
    let events = match read {
        Ok(Ok(events)) => events,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    };
    let events: Vec<Value> = events
        .iter()
        .filter(|e| params.iter().all(|(k, v)| e.labels.get(k) == v))
        .take(limit)
        .map(|e| {
            json!({
                "time": format_rfc3339(e.at_ms),
                "state": e.state.as_str(),
                "labels": labels_json(&e.labels),
                "value": crate::detect::template::format_value(e.value),
                "summary": e.summary,
            })
        })
        .collect();
    success(json!({ "events": events }))
}

async fn alerts_page(State(api): State<AlertApi>) -> Response {
    let now = hostpulse_agent::sampler::now_ms();
    let board = api.board.clone();
    let from = now.saturating_sub(super::page::PAGE_HISTORY_MS);
    let read = tokio::task::spawn_blocking(move || board.history(from, now, super::page::PAGE_HISTORY_LIMIT)).await;
    // A history that cannot be read still leaves the board worth showing.
    let events = match read {
        Ok(Ok(events)) => events,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "alert page cannot read the history");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "alert page history task failed");
            Vec::new()
        }
    };
    axum::response::Html(super::page::render(&api.board.alerts(), &events, now)).into_response()
}

async fn reload(State(rules): State<Arc<Rules>>) -> Response {
    let reloaded = tokio::task::spawn_blocking(move || rules.reload()).await;
    match reloaded {
        Ok(Ok(n)) => (StatusCode::OK, format!("reloaded {n} rules\n")).into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to reload rules: {e}\n"),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to reload rules: {e}\n"),
        )
            .into_response(),
    }
}
