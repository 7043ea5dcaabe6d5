//! Alertmanager API v2 client: `POST /api/v2/alerts` to every configured
//! Alertmanager (every member of a cluster gets every alert; the cluster
//! deduplicates), the way Prometheus's notifier does it.
//!
//! A firing alert is sent with `endsAt` a few resend intervals ahead and
//! re-sent while it fires, so an Alertmanager that lost its state (restart)
//! learns it again, and one that stops hearing from the collector resolves
//! it on its own. A resolved alert is sent with `endsAt` = its resolve time,
//! and re-sent while it stays on the board, so a resolution lost in transit
//! still arrives.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::webhook::{format_rfc3339, generator_url};
use super::{Alert, AlertState};
use crate::telemetry::{Counter, Telemetry};

/// How often firing alerts are re-sent (Prometheus's `resendDelay`).
pub const RESEND_INTERVAL_MS: i64 = 60_000;
/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per batch and Alertmanager.
const ATTEMPTS: u32 = 3;
/// Wait before the first retry; doubled for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// One alert in Alertmanager's `postableAlert` shape.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostableAlert {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    starts_at: String,
    ends_at: String,
    #[serde(rename = "generatorURL")]
    generator_url: String,
}

/// The body for `alerts` sent at `now_ms`: firing ones end `ends_ahead_ms`
/// from now unless re-sent, resolved ones at their resolve time. Pending
/// alerts are not sent (they have not fired).
pub fn postable(alerts: &[Alert], now_ms: i64, ends_ahead_ms: i64, external_url: &str) -> Vec<PostableAlert> {
    alerts
        .iter()
        .filter(|a| a.state != AlertState::Pending)
        .map(|a| PostableAlert {
            labels: a.labels.pairs().iter().cloned().collect(),
            annotations: a.annotations.clone(),
            starts_at: format_rfc3339(a.active_since_ms),
            ends_at: format_rfc3339(match (a.state, a.resolved_at_ms) {
                (AlertState::Resolved, Some(at)) => at,
                _ => now_ms.saturating_add(ends_ahead_ms),
            }),
            generator_url: generator_url(external_url, a),
        })
        .collect()
}

/// Sends alerts to Alertmanagers.
pub struct Alertmanager {
    client: Option<reqwest::Client>,
    urls: Vec<String>,
    telemetry: Arc<Telemetry>,
    external_url: String,
    first_backoff: Duration,
    last_sent_ms: AtomicI64,
}

impl Alertmanager {
    /// A client for the Alertmanagers at `urls` (base URLs such as
    /// `http://am:9093`; none: sending does nothing).
    pub fn new(urls: Vec<String>, telemetry: Arc<Telemetry>, external_url: &str) -> Alertmanager {
        let client = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "cannot build Alertmanager HTTP client; alerts will not be sent");
                None
            }
        };
        Alertmanager {
            client,
            urls: urls.into_iter().map(|u| u.trim_end_matches('/').to_string()).collect(),
            telemetry,
            external_url: external_url.trim_end_matches('/').to_string(),
            first_backoff: FIRST_BACKOFF,
            last_sent_ms: AtomicI64::new(i64::MIN),
        }
    }

    /// Sets the wait before the first retry (tests shorten it).
    pub fn with_retry_backoff(mut self, first: Duration) -> Alertmanager {
        self.first_backoff = first;
        self
    }

    /// Whether any Alertmanager is configured.
    pub fn is_enabled(&self) -> bool {
        !self.urls.is_empty()
    }

    /// Sends the board's alerts if something changed (`changed`) or the
    /// resend interval has passed since the last send. `eval_interval_ms`
    /// sets how far ahead `endsAt` is: four times the longer of it and the
    /// resend interval, as Prometheus does.
    pub async fn sync(&self, board: &[Alert], changed: bool, now_ms: i64, eval_interval_ms: i64) {
        if self.urls.is_empty() {
            return;
        }
        let last = self.last_sent_ms.load(Ordering::Relaxed);
        if !changed && now_ms.saturating_sub(last) < RESEND_INTERVAL_MS {
            return;
        }
        let body = postable(
            board,
            now_ms,
            4 * RESEND_INTERVAL_MS.max(eval_interval_ms),
            &self.external_url,
        );
        if body.is_empty() {
            return;
        }
        self.last_sent_ms.store(now_ms, Ordering::Relaxed);
        let sends = self.urls.iter().map(|url| self.deliver(url, &body));
        futures_util::future::join_all(sends).await;
    }

    async fn deliver(&self, base: &str, body: &[PostableAlert]) {
        let Some(client) = &self.client else {
            self.telemetry.inc(Counter::AlertmanagerFailed);
            return;
        };
        let url = format!("{base}/api/v2/alerts");
        let mut backoff = self.first_backoff;
        for attempt in 1..=ATTEMPTS {
            let retryable = match client.post(&url).json(body).send().await {
                Ok(resp) if resp.status().is_success() => {
                    self.telemetry.inc(Counter::AlertmanagerSent);
                    return;
                }
                Ok(resp) => {
                    let status = resp.status();
                    tracing::warn!(%url, %status, attempt, "Alertmanager refused alerts");
                    status.is_server_error() || status.as_u16() == 429
                }
                Err(e) => {
                    tracing::warn!(%url, error = %e, attempt, "Alertmanager unreachable");
                    !e.is_builder()
                }
            };
            if !retryable || attempt == ATTEMPTS {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
        self.telemetry.inc(Counter::AlertmanagerFailed);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::model::Labels;

    fn alert(state: AlertState) -> Alert {
        Alert {
            labels: Labels::from_pairs(&[("alertname", "Hot"), ("instance", "db1")]),
            annotations: BTreeMap::from([("summary".into(), "hot".into())]),
            state,
            active_since_ms: 1_435_781_451_781,
            resolved_at_ms: (state == AlertState::Resolved).then_some(1_435_781_511_000),
            value: 1.0,
        }
    }

    #[test]
    fn firing_ends_ahead_resolved_ends_at_resolve_pending_is_not_sent() {
        let now = 1_435_781_500_000;
        let body = postable(
            &[
                alert(AlertState::Firing),
                alert(AlertState::Resolved),
                alert(AlertState::Pending),
            ],
            now,
            240_000,
            "http://c:9470",
        );
        assert_eq!(body.len(), 2);
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json[0]["startsAt"], "2015-07-01T20:10:51.781Z");
        assert_eq!(json[0]["endsAt"], format_rfc3339(now + 240_000));
        assert_eq!(json[1]["endsAt"], "2015-07-01T20:11:51Z");
        assert_eq!(json[0]["labels"]["alertname"], "Hot");
        assert_eq!(json[0]["annotations"]["summary"], "hot");
        let url = json[0]["generatorURL"].as_str().unwrap();
        let fingerprint = url.strip_prefix("http://c:9470/alerts#").unwrap();
        assert_eq!(fingerprint.len(), 16, "{url}");
        assert!(fingerprint.bytes().all(|b| b.is_ascii_hexdigit()), "{url}");
    }

    #[tokio::test]
    async fn resends_on_change_or_after_the_interval_to_every_alertmanager() {
        let hits: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::new(Mutex::new(Vec::new()));
        let mut urls = Vec::new();
        for name in ["a", "b"] {
            let log = hits.clone();
            let app = axum::Router::new().route(
                "/api/v2/alerts",
                axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                    let log = log.clone();
                    async move {
                        log.lock().unwrap().push((name.to_string(), body));
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await });
            urls.push(format!("http://{addr}/"));
        }
        let telemetry = Arc::new(Telemetry::default());
        let am = Alertmanager::new(urls, telemetry.clone(), "http://c");
        let board = [alert(AlertState::Firing)];
        let t0 = 1_700_000_000_000;
        am.sync(&board, true, t0, 10_000).await;
        am.sync(&board, false, t0 + 10_000, 10_000).await;
        assert_eq!(
            hits.lock().unwrap().len(),
            2,
            "sent once to each, not again within the interval"
        );
        am.sync(&board, false, t0 + RESEND_INTERVAL_MS, 10_000).await;
        assert_eq!(hits.lock().unwrap().len(), 4, "re-sent after the interval");
        am.sync(&board, true, t0 + RESEND_INTERVAL_MS + 1, 10_000).await;
        let hits = hits.lock().unwrap();
        assert_eq!(hits.len(), 6, "a change is sent at once");
        assert_eq!(hits.iter().filter(|(n, _)| n == "a").count(), 3);
        assert_eq!(hits[0].1[0]["endsAt"], format_rfc3339(t0 + 4 * RESEND_INTERVAL_MS));
        assert_eq!(telemetry.get(Counter::AlertmanagerSent), 6);
    }
}
