//! HTTP handlers and JSON shapes of the Prometheus API. This is the only
//! module that knows JSON: it reads parameters (via `params`), runs the
//! query (via the parent module), and writes Prometheus's envelope
//! `{"status":"success","data":...}` or
//! `{"status":"error","errorType":...,"error":...}`.
//!
//! Number formatting follows Prometheus exactly: sample values as strings
//! in Go's shortest form (`'f'`, switching to `'e'` below 1e-6 and from
//! 1e21 for vector and matrix samples, like `jsonutil.MarshalValue`;
//! always `'f'` for scalars, like `promql.Scalar.MarshalJSON`), `NaN`,
//! `+Inf`, `-Inf`; timestamps as seconds with millisecond fractions.
//! Every error kind maps to its status code in [`ErrorKind::status`] and
//! nowhere else; storage details are logged, not sent.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::eval::{EvalError, Value, parse, selector_matchers};
use super::params::{MAX_TIME_MS, MIN_TIME_MS, Params, parse_duration, parse_time};
use super::{ApiContext, MAX_QUERY_TIME, QueryError, blocking};
use crate::model::{Labels, Matcher};
use crate::store::StoreError;

/// Largest form body accepted; PromQL queries are small, so this only
/// stops abuse.
const MAX_FORM_BYTES: usize = 1 << 20;

/// Most points per series a range query may return, as Prometheus.
const MAX_POINTS_PER_SERIES: i128 = 11_000;

// ---------------------------------------------------------------------------
// Errors

/// Prometheus's error types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong.
    BadData,
    /// The query is valid but cannot be executed.
    Execution,
    /// The query ran out of time.
    Timeout,
    /// The collector cannot answer now (shutting down).
    Unavailable,
    /// Something failed inside the collector.
    Internal,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadData => "bad_data",
            ErrorKind::Execution => "execution",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }

    /// The one mapping from error kind to HTTP status.
    fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadData => StatusCode::BAD_REQUEST,
            ErrorKind::Execution => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Timeout | ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    kind: ErrorKind,
    message: String,
}

impl ApiError {
    fn bad_data(message: impl Into<String>) -> ApiError {
        ApiError {
            kind: ErrorKind::BadData,
            message: message.into(),
        }
    }

    fn invalid_param(name: &str, err: impl std::fmt::Display) -> ApiError {
        ApiError::bad_data(format!("invalid parameter {name:?}: {err}"))
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        let (kind, message) = match e {
            QueryError::Eval(e @ EvalError::BadQuery(_)) => (ErrorKind::BadData, e.to_string()),
            QueryError::Eval(
                e @ (EvalError::Execution(_) | EvalError::TooManySamples | EvalError::TooManySeries { .. }),
            ) => (ErrorKind::Execution, e.to_string()),
            QueryError::Timeout | QueryError::Eval(EvalError::Timeout) => (
                ErrorKind::Timeout,
                "query timed out in expression evaluation".to_string(),
            ),
            QueryError::Store(StoreError::Closed) | QueryError::Eval(EvalError::Storage(StoreError::Closed)) => {
                (ErrorKind::Unavailable, "collector is shutting down".to_string())
            }
            QueryError::Store(e) | QueryError::Eval(EvalError::Storage(e)) => {
                tracing::error!(error = %e, "storage error while answering an API request");
                (ErrorKind::Internal, "internal storage error".to_string())
            }
            QueryError::Worker(e) => {
                tracing::error!(error = %e, "API worker failed");
                (ErrorKind::Internal, "internal error".to_string())
            }
        };
        ApiError { kind, message }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    status: &'static str,
    #[serde(rename = "errorType")]
    error_type: &'static str,
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            status: "error",
            error_type: self.kind.as_str(),
            error: &self.message,
        };
        json_response(self.kind.status(), &body)
    }
}

#[derive(Serialize)]
struct SuccessBody<T> {
    status: &'static str,
    data: T,
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut resp = (status, bytes).into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode API response");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

fn respond<T: Serialize>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(data) => json_response(
            StatusCode::OK,
            &SuccessBody {
                status: "success",
                data,
            },
        ),
        Err(e) => e.into_response(),
    }
}

// ---------------------------------------------------------------------------
// Number and time formatting

/// A sample value as Prometheus writes vector and matrix samples.
pub fn format_sample_value(v: f64) -> String {
    let abs = v.abs();
    if abs != 0.0 && abs.is_finite() && !(1e-6..1e21).contains(&abs) {
        format_go_exponent(v)
    } else {
        format_go_fixed(v)
    }
}

/// Go's `strconv.FormatFloat(v, 'f', -1, 64)`: shortest digits that round
/// trip, never an exponent. Rust's `Display` for `f64` is the same except
/// for infinities.
///
/// One difference: on an exact tie between two shortest digit strings
/// Rust rounds up and Go to even, so values in the range ryu writes as
/// plain decimals go through ryu, which rounds as Go does.
pub fn format_go_fixed(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    let mut buf = Vec::with_capacity(24);
    if write_ryu_plain(&mut buf, v) {
        return String::from_utf8_lossy(&buf).into_owned();
    }
    v.to_string()
}

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)`: `d.ddde±XX` with at least
/// two exponent digits.
fn format_go_exponent(v: f64) -> String {
    let s = format!("{v:e}");
    match s.split_once('e') {
        Some((mantissa, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

// ---------------------------------------------------------------------------
// Query results
//
// Results are written by hand into one buffer: a range query can return
// hundreds of thousands of points, and building a `String` per value and a
// serde tree around it was a fifth of such a query's time. The numbers
// come out exactly as `format_sample_value`/`format_go_fixed` write them
// (the tests below compare the two over many values).

/// Writes `v` as [`format_sample_value`] does.
fn write_sample_value(out: &mut Vec<u8>, v: f64) {
    // Inside this range ryu (via serde_json) writes plain decimals with the
    // same shortest round-trip digits as Go; a whole number gets a ".0"
    // that Go does not write. Outside it ryu switches to an exponent where
    // Go does not, so those values take the general path.
    if !write_ryu_plain(out, v) {
        out.extend_from_slice(format_sample_value(v).as_bytes());
    }
}

/// Writes `v` as Go's `'f'` shortest form does when ryu writes it as a
/// plain decimal (zero and magnitudes in `[1e-5, 1e15)`); false, writing
/// nothing, otherwise. Ryu is reached through serde_json's formatter, so
/// no extra dependency is needed.
fn write_ryu_plain(out: &mut Vec<u8>, v: f64) -> bool {
    use serde_json::ser::Formatter;
    let abs = v.abs();
    if !(v.is_finite() && (abs == 0.0 || (1e-5..1e15).contains(&abs))) {
        return false;
    }
    // Writing into a Vec cannot fail.
    let _ = serde_json::ser::CompactFormatter.write_f64(out, v);
    if out.ends_with(b".0") {
        out.truncate(out.len() - 2);
    }
    true
}

/// A timestamp in ms, written as seconds: an integer when whole (as Go
/// writes `float64` seconds), a decimal with the milliseconds otherwise.
fn write_timestamp(out: &mut Vec<u8>, ms: i64) {
    use serde_json::ser::Formatter;
    // Writing into a Vec cannot fail.
    if ms % 1000 == 0 {
        let _ = serde_json::ser::CompactFormatter.write_i64(out, ms / 1000);
    } else {
        let _ = serde_json::ser::CompactFormatter.write_f64(out, ms as f64 / 1000.0);
    }
}

/// A JSON string.
fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `[timestamp,"value"]` with the value already formatted by `value`.
fn write_point(out: &mut Vec<u8>, t: i64, value: impl FnOnce(&mut Vec<u8>)) {
    out.push(b'[');
    write_timestamp(out, t);
    out.extend_from_slice(b",\"");
    value(out);
    out.extend_from_slice(b"\"]");
}

/// A label set as a JSON object, in label order.
fn write_labels(out: &mut Vec<u8>, labels: &Labels) {
    out.push(b'{');
    for (i, (k, v)) in labels.pairs().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        write_str(out, v);
    }
    out.push(b'}');
}

/// The `data` object of a query answer:
/// `{"resultType":...,"result":...}`.
fn write_query_data(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Scalar { t, v } => {
            out.extend_from_slice(br#"{"resultType":"scalar","result":"#);
            write_point(out, *t, |o| o.extend_from_slice(format_go_fixed(*v).as_bytes()));
        }
        Value::String { t, v } => {
            out.extend_from_slice(br#"{"resultType":"string","result":["#);
            write_timestamp(out, *t);
            out.push(b',');
            write_str(out, v);
            out.push(b']');
        }
        Value::Vector(samples) => {
            out.extend_from_slice(br#"{"resultType":"vector","result":["#);
            for (i, s) in samples.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(br#"{"metric":"#);
                write_labels(out, &s.labels);
                out.extend_from_slice(br#","value":"#);
                write_point(out, s.t, |o| write_sample_value(o, s.v));
                out.push(b'}');
            }
            out.push(b']');
        }
        Value::Matrix(series) => {
            out.extend_from_slice(br#"{"resultType":"matrix","result":["#);
            for (i, s) in series.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(br#"{"metric":"#);
                write_labels(out, &s.labels);
                out.extend_from_slice(br#","values":["#);
                for (j, (t, v)) in s.points.iter().enumerate() {
                    if j > 0 {
                        out.push(b',');
                    }
                    write_point(out, *t, |o| write_sample_value(o, *v));
                }
                out.extend_from_slice(b"]}");
            }
            out.push(b']');
        }
    }
    out.push(b'}');
}

/// A label set as a JSON object through serde (the `/api/v1/series`
/// answer), in label order.
struct LabelMap<'a>(&'a Labels);

impl Serialize for LabelMap<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let pairs = self.0.pairs();
        let mut m = s.serialize_map(Some(pairs.len()))?;
        for (k, v) in pairs {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Rough bytes of a query answer, to size the buffer once.
fn answer_size_hint(v: &Value) -> usize {
    match v {
        Value::Matrix(series) => series.iter().map(|s| 64 + 32 * s.points.len()).sum::<usize>() + 64,
        Value::Vector(samples) => samples.len() * 96 + 64,
        _ => 128,
    }
}

/// A successful query answer, written by hand (see above).
fn query_answer(v: &Value) -> Response {
    let mut out = Vec::with_capacity(answer_size_hint(v));
    out.extend_from_slice(br#"{"status":"success","data":"#);
    write_query_data(&mut out, v);
    out.push(b'}');
    let mut resp = (StatusCode::OK, out).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

// ---------------------------------------------------------------------------
// Parameters

/// Reads the URL query and, for form POSTs, the body (Go's `r.Form`).
async fn read_params(req: Request) -> Result<Params, ApiError> {
    let (parts, body) = req.into_parts();
    let is_form = parts.method == Method::POST
        && parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|ct| ct.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    let body = if is_form {
        Some(
            axum::body::to_bytes(body, MAX_FORM_BYTES)
                .await
                .map_err(|e| ApiError::bad_data(format!("error reading form body: {e}")))?,
        )
    } else {
        None
    };
    Params::parse(parts.uri.query(), body.as_deref())
        .map_err(|e| ApiError::bad_data(format!("error parsing form values: {e}")))
}

fn time_param(p: &Params, name: &str, default: i64) -> Result<i64, ApiError> {
    match p.get(name) {
        None => Ok(default),
        Some(s) => parse_time(s).map_err(|e| ApiError::invalid_param(name, e)),
    }
}

/// The query deadline: the `timeout` parameter, capped by
/// [`MAX_QUERY_TIME`]. A non-positive timeout has already expired.
fn deadline_param(p: &Params) -> Result<Duration, ApiError> {
    match p.get("timeout") {
        None => Ok(MAX_QUERY_TIME),
        Some(s) => {
            let ns = parse_duration(s).map_err(|e| ApiError::invalid_param("timeout", e))?;
            Ok(Duration::from_nanos(u64::try_from(ns).unwrap_or(0)).min(MAX_QUERY_TIME))
        }
    }
}

fn expr_param(p: &Params) -> Result<promql_parser::parser::Expr, ApiError> {
    let text = p.get("query").unwrap_or_default();
    parse(text).map_err(|e| ApiError::invalid_param("query", e))
}

/// `match[]` values as selectors (a bare series selector each, no offset or
/// `@`, as Prometheus's `ParseMetricSelector` accepts).
fn match_params(p: &Params) -> Result<Vec<Vec<Matcher>>, ApiError> {
    p.all("match[]")
        .into_iter()
        .map(|text| {
            let expr = parse(text).map_err(|e| ApiError::invalid_param("match[]", e))?;
            match expr {
                promql_parser::parser::Expr::VectorSelector(vs) if vs.offset.is_none() && vs.at.is_none() => {
                    selector_matchers(&vs).map_err(|e| ApiError::invalid_param("match[]", e))
                }
                _ => Err(ApiError::invalid_param(
                    "match[]",
                    format!("{text:?} is not a series selector such as up{{job=\"hostpulse\"}}"),
                )),
            }
        })
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// ---------------------------------------------------------------------------
// Handlers

/// `/api/v1/query`.
pub async fn query(State(ctx): State<ApiContext>, req: Request) -> Response {
    let result = async {
        let p = read_params(req).await?;
        let t = time_param(&p, "time", now_ms())?;
        let deadline = deadline_param(&p)?;
        let expr = expr_param(&p)?;
        Ok(super::instant_query(ctx.store.clone(), expr, t, deadline).await?)
    }
    .await;
    respond_counted(&ctx.telemetry, result)
}

/// `/api/v1/query_range`.
pub async fn query_range(State(ctx): State<ApiContext>, req: Request) -> Response {
    let result = async {
        let p = read_params(req).await?;
        let start = parse_time(p.get("start").unwrap_or_default()).map_err(|e| ApiError::invalid_param("start", e))?;
        let end = parse_time(p.get("end").unwrap_or_default()).map_err(|e| ApiError::invalid_param("end", e))?;
        if end < start {
            return Err(ApiError::bad_data("end timestamp must not be before start time"));
        }
        let step_ns = parse_duration(p.get("step").unwrap_or_default()).map_err(|e| ApiError::invalid_param("step", e))?;
        if step_ns <= 0 {
            return Err(ApiError::bad_data(
                "zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        // Same arithmetic as Prometheus: the duration in ns divided by the step.
        if (i128::from(end) - i128::from(start)) * 1_000_000 / i128::from(step_ns) > MAX_POINTS_PER_SERIES {
            return Err(ApiError::bad_data(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
            ));
        }
        let step_ms = step_ns / 1_000_000;
        if step_ms == 0 {
            return Err(ApiError::bad_data("query resolution step widths below 1ms are not supported"));
        }
        let deadline = deadline_param(&p)?;
        let expr = expr_param(&p)?;
        Ok(super::range_query(ctx.store.clone(), expr, start, end, step_ms, deadline).await?)
    }
    .await;
    respond_counted(&ctx.telemetry, result)
}

/// Counts an evaluated query by outcome, then answers it.
fn respond_counted(telemetry: &crate::telemetry::Telemetry, result: Result<Value, ApiError>) -> Response {
    use crate::telemetry::Counter;
    telemetry.inc(Counter::PromqlQueries);
    match &result {
        Err(e) if e.kind == ErrorKind::Timeout => telemetry.inc(Counter::PromqlTimeouts),
        Err(e) if e.kind == ErrorKind::Execution => telemetry.inc(Counter::PromqlExecutionErrors),
        _ => {}
    }
    respond_value(result)
}

fn respond_value(result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(v) => query_answer(&v),
        Err(e) => e.into_response(),
    }
}

/// `/api/v1/series`.
pub async fn series(State(ctx): State<ApiContext>, req: Request) -> Response {
    let result: Result<Vec<Labels>, ApiError> = async {
        let p = read_params(req).await?;
        if p.all("match[]").is_empty() {
            return Err(ApiError::bad_data("no match[] parameter provided"));
        }
        let start = time_param(&p, "start", MIN_TIME_MS)?;
        let end = time_param(&p, "end", MAX_TIME_MS)?;
        let sets = match_params(&p)?;
        let store = ctx.store.clone();
        Ok(blocking(MAX_QUERY_TIME, move || {
            let mut all = BTreeSet::new();
            for matchers in &sets {
                all.extend(store.series(matchers, start, end)?);
            }
            Ok(all.into_iter().collect())
        })
        .await?)
    }
    .await;
    match result {
        Ok(list) => respond::<Vec<LabelMap>>(Ok(list.iter().map(LabelMap).collect())),
        Err(e) => e.into_response(),
    }
}

/// `/api/v1/labels`.
pub async fn labels(State(ctx): State<ApiContext>, req: Request) -> Response {
    let result = async {
        let p = read_params(req).await?;
        let start = time_param(&p, "start", MIN_TIME_MS)?;
        let end = time_param(&p, "end", MAX_TIME_MS)?;
        let sets = match_params(&p)?;
        let store = ctx.store.clone();
        Ok(blocking(MAX_QUERY_TIME, move || {
            if sets.is_empty() {
                return Ok(store.label_names()?);
            }
            let mut names = BTreeSet::new();
            for matchers in &sets {
                for labels in store.series(matchers, start, end)? {
                    names.extend(labels.pairs().iter().map(|(k, _)| k.clone()));
                }
            }
            Ok(names.into_iter().collect::<Vec<String>>())
        })
        .await?)
    }
    .await;
    respond(result)
}

/// `/api/v1/label/{name}/values`.
pub async fn label_values(State(ctx): State<ApiContext>, Path(name): Path<String>, req: Request) -> Response {
    let result = async {
        // Prometheus 3 accepts any UTF-8 label name; only the empty name is
        // invalid (and axum already guarantees UTF-8).
        if name.is_empty() {
            return Err(ApiError::bad_data(format!("invalid label name: {name:?}")));
        }
        let p = read_params(req).await?;
        let start = time_param(&p, "start", MIN_TIME_MS)?;
        let end = time_param(&p, "end", MAX_TIME_MS)?;
        let sets = match_params(&p)?;
        let store = ctx.store.clone();
        Ok(blocking(MAX_QUERY_TIME, move || {
            if sets.is_empty() {
                return Ok(store.label_values(&name)?);
            }
            let mut values = BTreeSet::new();
            for matchers in &sets {
                for labels in store.series(matchers, start, end)? {
                    let v = labels.get(&name);
                    if !v.is_empty() {
                        values.insert(v.to_string());
                    }
                }
            }
            Ok(values.into_iter().collect::<Vec<String>>())
        })
        .await?)
    }
    .await;
    respond(result)
}

#[derive(Serialize)]
struct MetricMetadata {
    #[serde(rename = "type")]
    kind: &'static str,
    help: &'static str,
    unit: &'static str,
}

/// The metric type the naming conventions imply: agents send no type or
/// help text, and Grafana only uses the type for hints (e.g. "wrap this
/// counter in rate()"), so a name-based guess is enough and never claims
/// more than it knows (`unknown` for histogram parts).
fn metric_kind(name: &str) -> &'static str {
    if name.ends_with("_total") {
        "counter"
    } else if name.ends_with("_bucket") || name.ends_with("_sum") || name.ends_with("_count") {
        "unknown"
    } else {
        "gauge"
    }
}

/// `/api/v1/metadata`: one entry per stored metric name, optionally only
/// `metric` and at most `limit` names.
pub async fn metadata(State(ctx): State<ApiContext>, req: Request) -> Response {
    let result = async {
        let p = read_params(req).await?;
        let limit = match p.get("limit") {
            None => usize::MAX,
            Some(s) => match s.parse::<i64>() {
                Ok(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
                Ok(_) => usize::MAX,
                Err(_) => return Err(ApiError::bad_data("limit must be a number")),
            },
        };
        let metric = p.get("metric").map(str::to_string);
        let store = ctx.store.clone();
        let names = blocking(MAX_QUERY_TIME, move || {
            Ok(store.label_values(crate::model::METRIC_NAME)?)
        })
        .await?;
        let mut out = serde_json::Map::new();
        for name in names
            .into_iter()
            .filter(|n| metric.as_deref().is_none_or(|m| m == n))
            .take(limit)
        {
            let entry = MetricMetadata {
                kind: metric_kind(&name),
                help: "",
                unit: "",
            };
            let value = serde_json::to_value(vec![entry])
                .map_err(|e| ApiError::bad_data(format!("cannot encode metadata: {e}")))?;
            out.insert(name, value);
        }
        Ok(out)
    }
    .await;
    respond(result)
}

/// `/api/v1/format_query`: the query pretty-printed, as Prometheus's
/// formatter (and Grafana's "format query" button) expects.
pub async fn format_query(req: Request) -> Response {
    let result = async {
        let p = read_params(req).await?;
        Ok(expr_param(&p)?.prettify())
    }
    .await;
    respond(result)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BuildInfo {
    version: &'static str,
    revision: &'static str,
    branch: &'static str,
    build_user: &'static str,
    build_date: &'static str,
    go_version: &'static str,
}

/// `/api/v1/status/buildinfo`, with Prometheus's field names; fields that
/// mean nothing for a Rust build are empty.
pub async fn buildinfo() -> Response {
    respond::<BuildInfo>(Ok(BuildInfo {
        version: env!("CARGO_PKG_VERSION"),
        revision: "",
        branch: "",
        build_user: "",
        build_date: "",
        go_version: "",
    }))
}

/// `/metrics`: the collector's own counters plus store figures.
pub async fn metrics(State(ctx): State<ApiContext>) -> Response {
    let mut text = ctx.telemetry.render();
    let store = ctx.store.clone();
    match blocking(Duration::from_secs(10), move || Ok(store.stats())).await {
        Ok(stats) => {
            // Every store figure, the decoded-section cache's included.
            for (name, kind, help, value) in stats.metrics() {
                text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
            }
        }
        Err(e) => tracing::warn!(error = %e, "store statistics unavailable for /metrics"),
    }
    text.push_str(&format!(
        "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n\
         # TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {}\n\
         # HELP hostpulse_build_info The collector's version.\n\
         # TYPE hostpulse_build_info gauge\nhostpulse_build_info{{version=\"{}\"}} 1\n",
        format_go_fixed(ctx.started_ms as f64 / 1000.0),
        env!("CARGO_PKG_VERSION"),
    ));
    let mut resp = Response::new(Body::from(text));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// `/-/healthy`: the process answers.
pub async fn healthy() -> &'static str {
    "hostpulse collector is Healthy.\n"
}

/// `/-/ready`: the router only exists once the store is open; after a
/// failed flush the store refuses every append until a restart, so the
/// collector is not ready (503) and a service manager or load balancer can
/// act on it.
pub async fn ready(State(ctx): State<ApiContext>) -> Response {
    if ctx.store.accepts_writes() {
        (StatusCode::OK, "hostpulse collector is Ready.\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "hostpulse collector is not ready: a flush failed (disk full or I/O error); appends are refused until it restarts.\n",
        )
            .into_response()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::query::eval::{Sample, Series};

    #[test]
    fn values_format_like_prometheus() {
        let cases: &[(f64, &str)] = &[
            (42.0, "42"),
            (0.5, "0.5"),
            (-0.0, "-0"),
            (1e21, "1e+21"),
            (1.5e21, "1.5e+21"),
            (1e20, "100000000000000000000"),
            (1e-6, "0.000001"),
            (1.5e-7, "1.5e-07"),
            (1e-100, "1e-100"),
            (123456.789, "123456.789"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
        ];
        for (v, want) in cases {
            assert_eq!(format_sample_value(*v), *want, "{v}");
        }
        assert_eq!(format_go_fixed(1e21), "1000000000000000000000");
    }

    fn json(v: &Value) -> String {
        let mut out = Vec::new();
        write_query_data(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_fast_value_writer_matches_the_reference_formatting() {
        // Integers, decimals with few digits (what sensors report), powers
        // of ten around every switch-over, and random bit patterns.
        let mut values: Vec<f64> = vec![0.0, -0.0, 1e-5, 9.99e-6, 1e-6, 1e15, 9.99e14, 1e16, 1e21, 5e-324];
        for e in -330..330 {
            for m in [1.0, 1.5, 9.999_999, 2.5, 7.0 / 3.0] {
                values.push(m * 10f64.powi(e));
                values.push(-m * 10f64.powi(e));
            }
        }
        for i in 0..20_000_i64 {
            values.push(i as f64);
            values.push(i as f64 / 100.0);
            values.push((i * 7919) as f64 / 1000.0 - 50.0);
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(f64::from_bits(x));
            values.push(f64::from_bits(x >> 12 | 0x4000_0000_0000_0000));
        }
        values.extend([f64::NAN, f64::INFINITY, f64::NEG_INFINITY]);
        let mut ties = 0;
        for v in values {
            let mut out = Vec::new();
            write_sample_value(&mut out, v);
            let ours = String::from_utf8(out).unwrap();
            // Rust's own formatting, as both functions wrote it before.
            let abs = v.abs();
            let reference = if abs != 0.0 && abs.is_finite() && !(1e-6..1e21).contains(&abs) {
                format_go_exponent(v)
            } else if v.is_infinite() {
                format_sample_value(v)
            } else {
                v.to_string()
            };
            if ours == reference {
                continue;
            }
            // Rust's formatter breaks an exact tie between two shortest
            // digit strings upwards; Go (and ryu) round half to even. Any
            // other difference is a bug.
            let (a, b) = (ours.as_bytes(), reference.as_bytes());
            assert_eq!(a.len(), b.len(), "{v:e}: {ours} vs {reference}");
            assert_eq!(
                ours.parse::<f64>().unwrap().to_bits(),
                v.to_bits(),
                "{ours} round trips"
            );
            assert_eq!(a[..a.len() - 1], b[..b.len() - 1], "{v:e}: {ours} vs {reference}");
            assert_eq!(a[a.len() - 1] % 2, 0, "{v:e}: {ours} ends even");
            assert_eq!(a[a.len() - 1] + 1, b[b.len() - 1], "{v:e}: {ours} vs {reference}");
            ties += 1;
        }
        assert!(
            (1..100).contains(&ties),
            "ties are rare but the sample has some: {ties}"
        );
        assert_eq!(
            format_go_fixed("662936471232937.25".parse().unwrap()),
            "662936471232937.2",
            "half to even, as Go"
        );
    }

    #[test]
    fn results_have_prometheus_shapes() {
        let labels = Labels::new(vec![("__name__".into(), "up".into()), ("job".into(), "x".into())]);
        assert_eq!(
            json(&Value::Vector(vec![Sample {
                labels: labels.clone(),
                t: 1_435_781_451_781,
                v: 1.0
            }])),
            r#"{"resultType":"vector","result":[{"metric":{"__name__":"up","job":"x"},"value":[1435781451.781,"1"]}]}"#
        );
        assert_eq!(
            json(&Value::Matrix(vec![Series {
                labels,
                points: vec![(1_000, 1.0), (16_000, 2.5)]
            }])),
            r#"{"resultType":"matrix","result":[{"metric":{"__name__":"up","job":"x"},"values":[[1,"1"],[16,"2.5"]]}]}"#
        );
        assert_eq!(
            json(&Value::Scalar { t: 1_500, v: 1e21 }),
            r#"{"resultType":"scalar","result":[1.5,"1000000000000000000000"]}"#
        );
        assert_eq!(
            json(&Value::String { t: 0, v: "a\"b".into() }),
            r#"{"resultType":"string","result":[0,"a\"b"]}"#
        );
        assert_eq!(json(&Value::Vector(vec![])), r#"{"resultType":"vector","result":[]}"#);
    }

    #[test]
    fn errors_map_to_status_codes_in_one_place() {
        let cases = [
            (QueryError::Eval(EvalError::BadQuery("x".into())), 400, "bad_data"),
            (QueryError::Eval(EvalError::Execution("x".into())), 422, "execution"),
            (
                QueryError::Eval(EvalError::TooManySeries { limit: 1 }),
                422,
                "execution",
            ),
            (QueryError::Eval(EvalError::Timeout), 503, "timeout"),
            (QueryError::Eval(EvalError::TooManySamples), 422, "execution"),
            (QueryError::Timeout, 503, "timeout"),
            (QueryError::Store(StoreError::Closed), 503, "unavailable"),
            (
                QueryError::Store(StoreError::Corrupt {
                    tree: "blocks",
                    detail: "secret detail".into(),
                }),
                500,
                "internal",
            ),
            (QueryError::Worker("panic".into()), 500, "internal"),
        ];
        for (err, status, kind) in cases {
            let api = ApiError::from(err);
            assert_eq!(api.kind.status().as_u16(), status);
            assert_eq!(api.kind.as_str(), kind);
            assert!(!api.message.contains("secret"), "internals hidden");
        }
    }
}
