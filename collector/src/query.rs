//! The Prometheus HTTP API of the collector, plus the other HTTP pages
//! (`/metrics`, health, the status page from `web`), as one axum router.
//!
//! Layout: `query/params.rs` parses request parameters, `query/eval.rs`
//! (with one file per function family under `query/eval/`) evaluates
//! PromQL as pure functions over a `Source` of series, and `query/api.rs`
//! is the only place that knows HTTP and JSON (handlers, response shapes,
//! the error-to-status mapping). This file holds the shared context, the
//! routes, the store as an evaluation `Source` (long ranges read in
//! parallel, whole hosts per thread), and the glue that runs an evaluation on the
//! blocking pool with a deadline.

mod api;
pub mod eval;
pub mod params;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_grafana;
#[cfg(test)]
mod tests_rollup;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;

use crate::alert::AlertBoard;
use crate::model::{Matcher, SeriesSamples};
use crate::store::{Resolution, RollupSeries, Store, StoreError};
use crate::telemetry::{Counter, Telemetry};
use eval::{EvalError, Limits, Value};
use promql_parser::parser::Expr;

/// Everything the HTTP handlers read; cheap to clone.
#[derive(Clone)]
pub struct ApiContext {
    /// Series storage.
    pub store: Store,
    /// Self-telemetry, rendered on `/metrics`.
    pub telemetry: Arc<Telemetry>,
    /// Current alerts, shown on the status page.
    pub alerts: Arc<AlertBoard>,
    /// When the collector started, ms since epoch.
    pub started_ms: i64,
}

/// The collector's HTTP routes.
pub fn router(ctx: ApiContext) -> Router {
    let telemetry = ctx.telemetry.clone();
    Router::new()
        .route("/", get(crate::web::status_page))
        .route("/api/v1/query", get(api::query).post(api::query))
        .route("/api/v1/query_range", get(api::query_range).post(api::query_range))
        .route("/api/v1/series", get(api::series).post(api::series))
        .route("/api/v1/labels", get(api::labels).post(api::labels))
        .route("/api/v1/label/{name}/values", get(api::label_values))
        .route("/api/v1/metadata", get(api::metadata))
        .route("/api/v1/format_query", get(api::format_query).post(api::format_query))
        .route("/api/v1/status/buildinfo", get(api::buildinfo))
        .route("/metrics", get(api::metrics))
        .route("/-/healthy", get(api::healthy))
        .route("/-/ready", get(api::ready))
        .layer(middleware::from_fn_with_state(telemetry, count_requests))
        .with_state(ctx)
}

/// Counts every request and every error answer in one place.
async fn count_requests(State(telemetry): State<Arc<Telemetry>>, req: Request, next: Next) -> Response {
    telemetry.inc(Counter::HttpRequests);
    let resp = next.run(req).await;
    if resp.status().is_client_error() || resp.status().is_server_error() {
        telemetry.inc(Counter::HttpErrors);
    }
    resp
}

/// Longest a query may run (Prometheus's `--query.timeout` default); a
/// request's `timeout` parameter can only shorten it.
pub const MAX_QUERY_TIME: Duration = Duration::from_secs(120);

/// Why a query failed, before it is mapped to an HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The expression cannot be evaluated as asked.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The deadline passed.
    #[error("query timed out")]
    Timeout,
    /// The worker running the query failed (panicked).
    #[error("query worker failed: {0}")]
    Worker(String),
}

/// Runs `work` on the blocking pool (store reads are synchronous sled
/// calls) within `deadline`. A panic in `work` becomes an error answer, not
/// a dropped connection.
pub(crate) async fn blocking<T, F>(deadline: Duration, work: F) -> Result<T, QueryError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, QueryError> + Send + 'static,
{
    match tokio::time::timeout(deadline, tokio::task::spawn_blocking(work)).await {
        Err(_) => Err(QueryError::Timeout),
        Ok(Err(join)) => Err(QueryError::Worker(join.to_string())),
        Ok(Ok(result)) => result,
    }
}

/// Ranges at least this long are read in parallel (whole hosts per thread).
const PARALLEL_SELECT_MIN_MS: i64 = 2 * 3_600_000;

impl eval::Source for Store {
    /// Long ranges over several hosts are read on one scoped thread per
    /// core, whole hosts per thread: decoding (or copying out of the
    /// decoded-section cache) is most of a long range query's cost, hosts
    /// are independent, and every series comes back in one piece, so
    /// nothing is stitched together afterwards.
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Result<Vec<SeriesSamples>, StoreError> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from).min(8);
        let span = end_ms.saturating_sub(start_ms);
        if cores < 2 || span < PARALLEL_SELECT_MIN_MS {
            return Store::select(self, matchers, start_ms, end_ms);
        }
        Store::select_parallel(self, matchers, start_ms, end_ms, cores)
    }

    /// Stored buckets, unless raw retention dropped samples in the range
    /// (rollups outlive raw samples; the raw answer would then be empty).
    fn select_rollup(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        resolution: Resolution,
    ) -> Result<Option<Vec<RollupSeries>>, StoreError> {
        let end = end_ms.saturating_add(resolution.millis());
        if !self.raw_kept(start_ms, end) {
            return Ok(None);
        }
        Ok(Some(Store::select_rollup(
            self, matchers, start_ms, end_ms, resolution,
        )?))
    }

    /// None for now: measured on the 20-host, 12-hour fleet dataset at a
    /// 1 h step, reading 1 h rollups (every record holds a whole host's
    /// series, decoded in full) plus the raw sample at each window end cost
    /// as much as or more than the raw read the decoded-section cache
    /// serves (`count_over_time` of 40 series: 1-2 ms raw, 28 ms planned).
    /// 5-minute buckets are not stored at seal at all. The planner
    /// (`eval/rollup.rs`) and [`Source::select_rollup`] below are exact and
    /// tested; offering `Resolution::OneHour` here turns them on once
    /// rollup reads are cheaper than raw ones.
    fn rollup_resolutions(&self) -> &'static [Resolution] {
        &[]
    }

    /// Long ranges only, split by the hosts the index knows: a fresh
    /// process faults in every page a query first touches (half of a cold
    /// `sum(rate(node_cpu_seconds_total[5m])) by (instance)` went to
    /// zeroing pages for the copied-out samples of every host at once).
    fn hosts(&self, start_ms: i64, end_ms: i64) -> Option<Vec<String>> {
        if end_ms.saturating_sub(start_ms) < PARALLEL_SELECT_MIN_MS {
            return None;
        }
        self.label_values("instance").ok()
    }

    fn as_sync(&self) -> Option<&(dyn eval::Source + Sync)> {
        Some(self)
    }
}

/// Evaluates `expr` as an instant query at `t`, reading what it needs from
/// the store; evaluation stops cooperatively at the deadline.
pub async fn instant_query(store: Store, expr: Expr, t: i64, deadline: Duration) -> Result<Value, QueryError> {
    let until = Instant::now() + deadline;
    blocking(deadline, move || {
        Ok(eval::eval_instant(&expr, &store, t, Limits::default(), Some(until))?)
    })
    .await
}

/// Evaluates `expr` at `start, start + step, ... <= end`.
pub async fn range_query(
    store: Store,
    expr: Expr,
    start: i64,
    end: i64,
    step_ms: i64,
    deadline: Duration,
) -> Result<Value, QueryError> {
    let until = Instant::now() + deadline;
    blocking(deadline, move || {
        Ok(eval::eval_range(
            &expr,
            &store,
            start,
            end,
            step_ms,
            Limits::default(),
            Some(until),
        )?)
    })
    .await
}
