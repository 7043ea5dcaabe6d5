//! The Prometheus remote-write 1.0 receiver, `POST /api/v1/write`, so
//! Prometheus, vmagent, Telegraf or OpenTelemetry collectors can feed the
//! collector.
//!
//! A request passes, in order: the body-size limit (413), the in-flight
//! budget (503 with `Retry-After` when the decompressed bytes of requests
//! being handled would exceed it — senders retry 5xx, so overload delays
//! data instead of losing it), decoding and validation on the blocking pool
//! (`remote_write/decode.rs`, 400 with the reason), and a durable
//! [`Store::append_unsequenced`]. 204 means every sample is on disk.
//! Generated-style proto types (`remote_write/proto.rs`) stop at `decode`.

pub mod decode;
pub mod proto;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::sync::Semaphore;

use self::decode::{DecodeLimits, Decoded, Rejection};
use crate::ingest::IngestLimits;
use crate::store::{Store, StoreError};
use crate::telemetry::{Counter, Telemetry};

/// Limits of the receiver.
#[derive(Clone, Debug)]
pub struct RemoteWriteLimits {
    /// Largest request body as sent (snappy-compressed), in bytes.
    pub max_body_bytes: usize,
    /// What one decoded request may contain.
    pub decode: DecodeLimits,
    /// Decompressed bytes of all requests being handled at once; a request
    /// that would exceed it is answered 503.
    pub max_in_flight_bytes: usize,
}

impl Default for RemoteWriteLimits {
    fn default() -> Self {
        let ingest = IngestLimits::default();
        RemoteWriteLimits {
            // Prometheus sends at most a few thousand samples per request
            // (well under 1 MiB); vmagent's default is 8 MiB.
            max_body_bytes: 16 << 20,
            decode: DecodeLimits {
                max_decompressed_bytes: 64 << 20,
                max_labels_per_series: ingest.max_labels_per_series,
                max_label_len: ingest.max_label_value_len,
                max_future_ms: ingest.max_future_ms,
                max_past_ms: ingest.max_past_ms,
            },
            max_in_flight_bytes: 256 << 20,
        }
    }
}

/// What the handler needs; cheap to clone.
#[derive(Clone)]
struct Receiver {
    store: Store,
    telemetry: Arc<Telemetry>,
    limits: Arc<RemoteWriteLimits>,
    /// One permit per decompressed byte in flight.
    budget: Arc<Semaphore>,
}

/// The receiver's route with default limits, to merge into the HTTP app.
pub fn router(store: Store, telemetry: Arc<Telemetry>) -> Router {
    router_with_limits(store, telemetry, RemoteWriteLimits::default())
}

/// The receiver's route with explicit limits.
pub fn router_with_limits(store: Store, telemetry: Arc<Telemetry>, limits: RemoteWriteLimits) -> Router {
    let receiver = Receiver {
        store,
        telemetry,
        budget: Arc::new(Semaphore::new(limits.max_in_flight_bytes.min(Semaphore::MAX_PERMITS))),
        limits: Arc::new(limits),
    };
    Router::new()
        .route("/api/v1/write", post(write))
        .layer(DefaultBodyLimit::max(receiver.limits.max_body_bytes))
        .with_state(receiver)
}

async fn write(State(rx): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    match handle(&rx, &headers, body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err((status, reason)) => {
            if status.is_server_error() {
                tracing::warn!(%status, %reason, "remote write refused");
            } else {
                tracing::debug!(%status, %reason, "remote write refused");
            }
            let mut resp = (status, format!("{reason}\n")).into_response();
            if status == StatusCode::SERVICE_UNAVAILABLE {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            resp
        }
    }
}

type Refusal = (StatusCode, String);

async fn handle(rx: &Receiver, headers: &HeaderMap, body: Bytes) -> Result<(), Refusal> {
    let bad = |telemetry: &Telemetry, reason: String| {
        telemetry.inc(Counter::RejectedBatch);
        (StatusCode::BAD_REQUEST, reason)
    };
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        let encoding = encoding.to_str().unwrap_or("");
        if !encoding.eq_ignore_ascii_case("snappy") {
            return Err(bad(
                &rx.telemetry,
                format!("Content-Encoding {encoding:?} is not supported; remote write 1.0 uses snappy"),
            ));
        }
    }
    let len = decode::decompressed_len(&body, &rx.limits.decode).map_err(|r| refusal(&rx.telemetry, r))?;
    // Reserve the decompressed size (plus the body itself) before
    // allocating it; the permits return when this request is answered.
    let cost = len.saturating_add(body.len()).max(1);
    let _permit = u32::try_from(cost)
        .ok()
        .and_then(|n| Arc::clone(&rx.budget).try_acquire_many_owned(n).ok())
        .ok_or_else(|| {
            rx.telemetry.inc(Counter::RejectedLimit);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many remote-write requests in flight; retry later".to_string(),
            )
        })?;
    let limits = Arc::clone(&rx.limits);
    let now = crate::store::now_ms();
    let decoded = tokio::task::spawn_blocking(move || decode::decode(&body, &limits.decode, now))
        .await
        .map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "decoding failed".to_string()))?
        .map_err(|r| refusal(&rx.telemetry, r))?;
    let Decoded {
        series,
        samples,
        dropped,
    } = decoded;
    let stored = if series.is_empty() {
        0
    } else {
        rx.store.append_unsequenced(series).await.map_err(|e| {
            rx.telemetry.inc(Counter::RejectedStorage);
            match e {
                StoreError::Closed => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the collector is shutting down; retry later".to_string(),
                ),
                other => {
                    tracing::error!(error = %other, "remote write: storing failed");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "storing failed; see the collector's log".to_string(),
                    )
                }
            }
        })?
    };
    rx.telemetry.add(Counter::IngestSamples, stored as u64);
    let refused_by_store = samples.saturating_sub(stored);
    if dropped.total() > 0 || refused_by_store > 0 {
        let dropped_count = dropped.total() + refused_by_store;
        rx.telemetry.add(Counter::RejectedSample, dropped_count as u64);
        let mut reason = format!("stored {stored} samples; ");
        if dropped.total() > 0 {
            reason.push_str(&dropped.describe(&rx.limits.decode));
        }
        if refused_by_store > 0 {
            if dropped.total() > 0 {
                reason.push_str("; ");
            }
            reason.push_str(&format!(
                "the store refused {refused_by_store} samples (too old or out of order)"
            ));
        }
        return Err((StatusCode::BAD_REQUEST, reason));
    }
    Ok(())
}

fn refusal(telemetry: &Telemetry, r: Rejection) -> Refusal {
    match r {
        Rejection::BadRequest(why) => {
            telemetry.inc(Counter::RejectedBatch);
            (StatusCode::BAD_REQUEST, why)
        }
        Rejection::TooLarge(why) => {
            telemetry.inc(Counter::RejectedLimit);
            (StatusCode::PAYLOAD_TOO_LARGE, why)
        }
    }
}
