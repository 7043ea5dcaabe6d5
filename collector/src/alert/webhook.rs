//! Webhook notifier: POSTs alerts in Alertmanager's webhook format (version
//! 4) so that receivers written for Alertmanager (chat bridges, paging
//! gateways) accept hostpulse's notifications unchanged.
//!
//! One message per (rule, status): firing alerts of a rule go together, and
//! resolved ones in a separate message, as Alertmanager groups by
//! `alertname`. Delivery retries transient failures with exponential backoff
//! and counts every outcome; it never panics and never blocks the caller
//! longer than the retries take.
//!
//! With a secret configured (`--webhook-secret-file`), every body is signed:
//! `X-Hostpulse-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes>`,
//! the scheme GitHub's webhooks use, so a receiver can reject forged pages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;

use super::{ALERT_NAME, Alert, AlertState};
use crate::telemetry::{Counter, Telemetry};

/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per message and URL (first try plus retries).
const ATTEMPTS: u32 = 4;
/// Wait before the first retry; doubled for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Receiver name in payloads.
const RECEIVER: &str = "hostpulse";
/// Go's zero `time.Time`, which Alertmanager sends as `endsAt` of an alert
/// that has not ended.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "X-Hostpulse-Signature";

/// The signature header's value for `body`: `sha256=` and the lower-case
/// hex HMAC-SHA256 of the body under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Sends alert notifications to webhooks.
pub struct Notifier {
    client: Option<reqwest::Client>,
    urls: Vec<String>,
    secret: Option<Vec<u8>>,
    telemetry: Arc<Telemetry>,
    external_url: String,
    first_backoff: Duration,
}

impl Notifier {
    /// A notifier posting to every URL in `webhook_urls` (none: it only
    /// counts nothing and returns).
    pub fn new(webhook_urls: Vec<String>, telemetry: Arc<Telemetry>) -> Notifier {
        let client = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() {
            Ok(c) => Some(c),
            Err(e) => {
                // Without a client every delivery fails and is counted;
                // the collector keeps running and serving data.
                tracing::error!(error = %e, "cannot build webhook HTTP client; notifications will fail");
                None
            }
        };
        Notifier {
            client,
            urls: webhook_urls,
            secret: None,
            telemetry,
            external_url: "http://127.0.0.1:9470".to_string(),
            first_backoff: FIRST_BACKOFF,
        }
    }

    /// Sets the collector's own URL as receivers should link to it
    /// (`externalURL`, `generatorURL`).
    pub fn with_external_url(mut self, url: impl Into<String>) -> Notifier {
        self.external_url = url.into().trim_end_matches('/').to_string();
        self
    }

    /// Signs every body with `secret` (see [`sign`]).
    pub fn with_secret(mut self, secret: Option<Vec<u8>>) -> Notifier {
        self.secret = secret;
        self
    }

    /// Sets the wait before the first retry (tests shorten it).
    pub fn with_retry_backoff(mut self, first: Duration) -> Notifier {
        self.first_backoff = first;
        self
    }

    /// Sends `alerts` (firing or resolved) to every webhook, one message per
    /// rule and status, and waits for delivery or the last retry.
    pub async fn notify(&self, alerts: &[Alert]) {
        if alerts.is_empty() || self.urls.is_empty() {
            return;
        }
        let mut groups: BTreeMap<(&str, bool), Vec<Alert>> = BTreeMap::new();
        for a in alerts {
            let resolved = a.state == AlertState::Resolved;
            groups.entry((a.name(), resolved)).or_default().push(a.clone());
        }
        for group in groups.values() {
            let payload = webhook_payload(group, &self.external_url);
            let sends = self.urls.iter().map(|url| self.deliver(url, &payload));
            futures_util::future::join_all(sends).await;
        }
    }

    async fn deliver(&self, url: &str, payload: &serde_json::Value) {
        let Some(client) = &self.client else {
            self.telemetry.inc(Counter::NotificationsFailed);
            return;
        };
        let body = serde_json::to_vec(payload).unwrap_or_default();
        let signature = self.secret.as_deref().map(|s| sign(s, &body));
        let mut backoff = self.first_backoff;
        for attempt in 1..=ATTEMPTS {
            let mut request = client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(sig) = &signature {
                request = request.header(SIGNATURE_HEADER, sig);
            }
            let outcome = request.send().await;
            let retryable = match outcome {
                Ok(resp) if resp.status().is_success() => {
                    self.telemetry.inc(Counter::NotificationsSent);
                    return;
                }
                Ok(resp) => {
                    let status = resp.status();
                    tracing::warn!(%url, %status, attempt, "webhook refused notification");
                    status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408
                }
                Err(e) => {
                    tracing::warn!(%url, error = %e, attempt, "webhook unreachable");
                    !e.is_builder()
                }
            };
            if !retryable || attempt == ATTEMPTS {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
        self.telemetry.inc(Counter::NotificationsFailed);
    }
}

/// One webhook message in Alertmanager's format (version 4).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Message<'a> {
    version: &'static str,
    group_key: String,
    truncated_alerts: u32,
    status: &'static str,
    receiver: &'static str,
    group_labels: BTreeMap<&'a str, &'a str>,
    common_labels: BTreeMap<&'a str, &'a str>,
    common_annotations: BTreeMap<&'a str, &'a str>,
    #[serde(rename = "externalURL")]
    external_url: &'a str,
    alerts: Vec<MessageAlert<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MessageAlert<'a> {
    status: &'static str,
    labels: BTreeMap<&'a str, &'a str>,
    annotations: BTreeMap<&'a str, &'a str>,
    starts_at: String,
    ends_at: String,
    #[serde(rename = "generatorURL")]
    generator_url: String,
    fingerprint: String,
}

/// Builds the Alertmanager-style webhook body for alerts of one rule. The
/// message is "firing" if any alert in it still fires, as in Alertmanager.
pub fn webhook_payload(alerts: &[Alert], external_url: &str) -> serde_json::Value {
    let firing = alerts.iter().any(|a| a.state != AlertState::Resolved);
    let name = alerts.first().map(Alert::name).unwrap_or_default();
    let label_maps: Vec<BTreeMap<&str, &str>> = alerts
        .iter()
        .map(|a| a.labels.pairs().iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
        .collect();
    let annotation_maps: Vec<BTreeMap<&str, &str>> = alerts
        .iter()
        .map(|a| a.annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
        .collect();
    let message = Message {
        version: "4",
        group_key: format!("{{}}:{{{ALERT_NAME}={name:?}}}"),
        truncated_alerts: 0,
        status: if firing { "firing" } else { "resolved" },
        receiver: RECEIVER,
        group_labels: BTreeMap::from([(ALERT_NAME, name)]),
        common_labels: common(&label_maps),
        common_annotations: common(&annotation_maps),
        external_url,
        alerts: alerts
            .iter()
            .zip(label_maps.iter().zip(&annotation_maps))
            .map(|(a, (labels, annotations))| MessageAlert {
                status: if a.state == AlertState::Resolved {
                    "resolved"
                } else {
                    "firing"
                },
                labels: labels.clone(),
                annotations: annotations.clone(),
                starts_at: format_rfc3339(a.active_since_ms),
                ends_at: a.resolved_at_ms.map_or_else(|| ZERO_TIME.to_string(), format_rfc3339),
                generator_url: generator_url(external_url, a),
                fingerprint: a.fingerprint(),
            })
            .collect(),
    };
    serde_json::to_value(&message).unwrap_or(serde_json::Value::Null)
}

/// Pairs present with the same value in every map.
fn common<'a>(maps: &[BTreeMap<&'a str, &'a str>]) -> BTreeMap<&'a str, &'a str> {
    let Some((first, rest)) = maps.split_first() else {
        return BTreeMap::new();
    };
    first
        .iter()
        .filter(|(k, v)| rest.iter().all(|m| m.get(*k) == Some(*v)))
        .map(|(k, v)| (*k, *v))
        .collect()
}

/// The collector's own page for the alert, linked as `generatorURL`: the
/// alert list at `/alerts`, anchored at the alert's fingerprint (the same
/// one Alertmanager computes), where its labels, annotations and history
/// are shown. A link to the page rather than to a query keeps working
/// after the series are gone and shows what the rule saw.
pub(super) fn generator_url(external_url: &str, a: &Alert) -> String {
    format!("{external_url}/alerts#{}", a.fingerprint())
}

/// Formats ms since the epoch like Go's `time.Time` JSON (RFC 3339 in UTC,
/// fraction without trailing zeros), as Alertmanager does.
pub(super) fn format_rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if millis != 0 {
        let frac = format!("{millis:03}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::Labels;
    use std::sync::Mutex;

    fn alert(sensor: &str, state: AlertState) -> Alert {
        Alert {
            labels: Labels::new(vec![
                ("alertname".into(), "HostpulseTemperatureCritical".into()),
                ("instance".into(), "db1".into()),
                ("sensor".into(), sensor.into()),
                ("severity".into(), "critical".into()),
            ]),
            annotations: BTreeMap::from([("summary".into(), "hot".into())]),
            state,
            active_since_ms: 1_435_781_451_781,
            resolved_at_ms: (state == AlertState::Resolved).then_some(1_435_781_511_000),
            value: 99.0,
        }
    }

    #[test]
    fn times_format_like_go() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_435_781_451_781), "2015-07-01T20:10:51.781Z");
        assert_eq!(format_rfc3339(1_709_164_800_500), "2024-02-29T00:00:00.5Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn payload_is_alertmanager_v4() {
        let p = webhook_payload(
            &[alert("temp1", AlertState::Firing), alert("temp2", AlertState::Firing)],
            "http://c:9470",
        );
        assert_eq!(p["version"], "4");
        assert_eq!(p["status"], "firing");
        assert_eq!(p["receiver"], "hostpulse");
        assert_eq!(p["externalURL"], "http://c:9470");
        assert_eq!(
            p["groupLabels"],
            serde_json::json!({"alertname": "HostpulseTemperatureCritical"})
        );
        assert_eq!(p["groupKey"], "{}:{alertname=\"HostpulseTemperatureCritical\"}");
        assert!(p["commonLabels"].get("sensor").is_none());
        assert_eq!(p["commonLabels"]["instance"], "db1");
        assert_eq!(p["commonAnnotations"]["summary"], "hot");
        let a = &p["alerts"][0];
        assert_eq!(a["status"], "firing");
        assert_eq!(a["labels"]["sensor"], "temp1");
        assert_eq!(a["startsAt"], "2015-07-01T20:10:51.781Z");
        assert_eq!(a["endsAt"], ZERO_TIME);
        assert_eq!(a["fingerprint"].as_str().unwrap().len(), 16);
        assert_eq!(
            a["generatorURL"],
            format!("http://c:9470/alerts#{}", a["fingerprint"].as_str().unwrap())
        );

        let p = webhook_payload(&[alert("temp1", AlertState::Resolved)], "http://c:9470");
        assert_eq!(p["status"], "resolved");
        assert_eq!(p["alerts"][0]["endsAt"], "2015-07-01T20:11:51Z");
    }

    /// A webhook receiver on an ephemeral port that answers with the given
    /// statuses in turn (200 once they run out) and records bodies.
    async fn receiver(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let statuses = Arc::new(Mutex::new(statuses.into_iter()));
        let seen = bodies.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let seen = seen.clone();
                let statuses = statuses.clone();
                async move {
                    seen.lock().unwrap().push(body);
                    let code = statuses.lock().unwrap().next().unwrap_or(200);
                    axum::http::StatusCode::from_u16(code).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/hook"), bodies)
    }

    #[tokio::test]
    async fn delivers_one_message_per_status_and_retries_transient_errors() {
        let (url, bodies) = receiver(vec![503]).await;
        let telemetry = Arc::new(Telemetry::default());
        let notifier = Notifier::new(vec![url], telemetry.clone()).with_retry_backoff(Duration::from_millis(1));
        notifier
            .notify(&[alert("temp1", AlertState::Firing), alert("temp2", AlertState::Resolved)])
            .await;
        let bodies = bodies.lock().unwrap();
        assert_eq!(bodies.len(), 3, "one retry after 503, then both messages");
        let statuses: Vec<&str> = bodies.iter().map(|b| b["status"].as_str().unwrap()).collect();
        assert!(statuses.contains(&"firing") && statuses.contains(&"resolved"));
        assert_eq!(telemetry.get(Counter::NotificationsSent), 2);
        assert_eq!(telemetry.get(Counter::NotificationsFailed), 0);
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[tokio::test]
    async fn signed_bodies_verify() {
        type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
        let seen: Seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let log = log.clone();
                async move {
                    let sig = headers
                        .get(SIGNATURE_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    log.lock().unwrap().push((sig, body.to_vec()));
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let telemetry = Arc::new(Telemetry::default());
        let notifier =
            Notifier::new(vec![format!("http://{addr}/hook")], telemetry.clone()).with_secret(Some(b"s3cret".to_vec()));
        notifier.notify(&[alert("temp1", AlertState::Firing)]).await;
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let (sig, body) = &seen[0];
        assert_eq!(sig, &sign(b"s3cret", body));
        assert_ne!(sig, &sign(b"other", body));
        let parsed: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(parsed["status"], "firing");
    }

    #[tokio::test]
    async fn failures_are_counted_not_fatal() {
        let (url, bodies) = receiver(vec![400]).await;
        let telemetry = Arc::new(Telemetry::default());
        // Port 9 on loopback is (almost certainly) closed: connection refused.
        let notifier = Notifier::new(vec![url, "http://127.0.0.1:9/hook".into()], telemetry.clone())
            .with_retry_backoff(Duration::from_millis(1));
        notifier.notify(&[alert("temp1", AlertState::Firing)]).await;
        assert_eq!(bodies.lock().unwrap().len(), 1, "400 is not retried");
        assert_eq!(telemetry.get(Counter::NotificationsFailed), 2);
        assert_eq!(telemetry.get(Counter::NotificationsSent), 0);
    }
}
