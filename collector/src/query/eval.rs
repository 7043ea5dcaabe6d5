//! PromQL evaluation over `promql_parser` ASTs, written as pure functions
//! over a [`Source`] of series so that it is tested with literal data and
//! never needs a store.
//!
//! Semantics follow Prometheus 2.42's `promql/engine.go`: an instant vector
//! selector at reference time `t` takes the newest sample in `[t - 5m, t]`
//! (a stale marker there means "no value"), range selectors take every
//! non-stale sample in `[t - range, t]`, and every output sample is stamped
//! with the evaluation time.
//!
//! Every expression is evaluated once over the whole step grid of the query
//! (an instant query is a grid of one step), like Prometheus's `rangeEval`:
//! each selector reads its data once for `[start - range - lookback -
//! offset, end]` and the evaluator slides over it. An instant vector is
//! kept as series × steps (`VSeries`), so label work (grouping keys, match
//! signatures, label rewrites) happens once per series, not once per step.
//!
//! Function families live one per file: `eval/range.rs` (functions over
//! range vectors), `eval/functions.rs` (functions over instant vectors and
//! scalars), `eval/aggregate.rs` (aggregation operators) and
//! `eval/binary.rs` (arithmetic, comparison and set operators).

mod aggregate;
mod binary;
mod functions;
mod range;
mod rollup;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use promql_parser::label::MatchOp as ParserMatchOp;
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{AtModifier, Expr, Offset, SubqueryExpr, VectorSelector};

use crate::model::{Labels, METRIC_NAME, MatchOp, Matcher, SeriesSamples, is_stale_marker};
use crate::store::{Resolution, RollupSeries, StoreError};

/// How far back an instant vector selector looks for a sample (Prometheus's
/// default `--query.lookback-delta`).
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// Step of a subquery written without one (`x[1h:]`): Prometheus's default
/// `global.evaluation_interval`.
pub const DEFAULT_SUBQUERY_STEP_MS: i64 = 60_000;

/// Most steps one (sub)query grid may have; far beyond the API's 11,000
/// points per series, it only stops `x[10y:1ms]`-style subqueries from
/// allocating without bound.
const MAX_GRID_STEPS: usize = 1_000_000;

/// Message of Prometheus's duplicate-series error.
const DUPLICATE_LABELSET: &str = "vector cannot contain metrics with the same labelset";

/// Bounds on the work one query may do.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most samples held at once: loaded plus produced (Prometheus's
    /// `--query.max-samples` default).
    pub max_samples: usize,
    /// Most series all selectors of one query may select together.
    pub max_series: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_samples: 50_000_000,
            max_series: 500_000,
        }
    }
}

/// Why an expression cannot be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The query does not fit the request or uses something unsupported
    /// (a client error: the same query will keep failing).
    #[error("{0}")]
    BadQuery(String),
    /// Evaluation failed on this data, e.g. many-to-many matching; worded as
    /// Prometheus words it.
    #[error("{0}")]
    Execution(String),
    /// The query would hold more than [`Limits::max_samples`] samples.
    #[error("query processing would load too many samples into memory in query execution")]
    TooManySamples,
    /// The selectors select more than [`Limits::max_series`] series.
    #[error("query selects more than {limit} series (the per-query series limit); narrow its selectors")]
    TooManySeries {
        /// The limit that was hit.
        limit: usize,
    },
    /// The deadline passed while evaluating.
    #[error("query timed out in expression evaluation")]
    Timeout,
    /// Reading series failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
}

fn exec_err(msg: impl Into<String>) -> EvalError {
    EvalError::Execution(msg.into())
}

fn bad(msg: impl Into<String>) -> EvalError {
    EvalError::BadQuery(msg.into())
}

/// Where the evaluator reads series from: the store, or literal data in
/// tests.
pub trait Source {
    /// Every series matching all `matchers` with its samples in
    /// `[start_ms, end_ms]` (inclusive), samples ascending; series without
    /// samples in the range may be left out.
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Result<Vec<SeriesSamples>, StoreError>;

    /// Rollup buckets at `resolution` starting in `[start_ms, end_ms]` of
    /// every series matching all `matchers`, or `None` when the source
    /// cannot promise they summarise exactly the non-stale samples
    /// [`Source::select`] returns for those buckets (the planner then reads
    /// raw samples). Only asked for resolutions [`Source::rollup_resolutions`]
    /// offers.
    fn select_rollup(
        &self,
        _matchers: &[Matcher],
        _start_ms: i64,
        _end_ms: i64,
        _resolution: Resolution,
    ) -> Result<Option<Vec<RollupSeries>>, StoreError> {
        Ok(None)
    }

    /// Resolutions whose buckets are worth reading instead of raw samples.
    fn rollup_resolutions(&self) -> &'static [Resolution] {
        &[]
    }

    /// The hosts (`instance` values) series in `[start_ms, end_ms]` may
    /// belong to, for aggregations that read and fold one host at a time
    /// ([`split_by_instance`]): they then hold one host's samples at once
    /// rather than every host's, and the memory one host used is reused by
    /// the next. `None` when not worth it (short ranges): the caller then
    /// reads everything at once.
    fn hosts(&self, _start_ms: i64, _end_ms: i64) -> Option<Vec<String>> {
        None
    }

    /// This source, when it may be read from several threads at once.
    fn as_sync(&self) -> Option<&(dyn Source + Sync)> {
        None
    }
}

/// Hosts beyond which [`split_by_instance`] does not split: each part costs
/// an index lookup, and that many parts would cost more than they save.
const MAX_HOST_PARTS: usize = 512;

/// The parts a selection with `matchers` is read in, one host at a time:
/// each value of `instances` (the hosts the source knows) that the
/// matchers' own `instance` matchers accept, then `""` for series without
/// the label when they accept the empty value. Selecting with
/// `instance="<part>"` added gives disjoint sets of series that together
/// are exactly what `matchers` selects. `None` when that gives fewer than
/// two parts, when the matchers already pin one `instance`, or when there
/// are more than [`MAX_HOST_PARTS`] hosts.
pub fn split_by_instance(matchers: &[Matcher], instances: &[String]) -> Option<Vec<String>> {
    let own: Vec<&Matcher> = matchers.iter().filter(|m| m.name == INSTANCE).collect();
    if own.iter().any(|m| matches!(m.op, MatchOp::Equal(_))) || instances.len() > MAX_HOST_PARTS {
        return None;
    }
    let mut parts: Vec<String> = instances
        .iter()
        .filter(|v| !v.is_empty() && own.iter().all(|m| m.matches(v)))
        .cloned()
        .collect();
    if own.iter().all(|m| m.matches_empty()) {
        parts.push(String::new());
    }
    (parts.len() >= 2).then_some(parts)
}

/// `matchers` narrowed to the series of one part of [`split_by_instance`].
fn part_matchers(matchers: &[Matcher], part: &str) -> Vec<Matcher> {
    let mut out = matchers.to_vec();
    out.push(Matcher::equal(INSTANCE, part));
    out
}

/// The label that names a series' host.
const INSTANCE: &str = "instance";

/// Literal series as a [`Source`] (tests, benchmarks, fixtures).
#[derive(Debug, Clone, Copy)]
pub struct Literal<'a>(pub &'a [SeriesSamples]);

impl Source for Literal<'_> {
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Result<Vec<SeriesSamples>, StoreError> {
        Ok(self
            .0
            .iter()
            .filter(|s| s.labels.matches(matchers))
            .filter_map(|s| {
                let samples: Vec<(i64, f64)> = s
                    .samples
                    .iter()
                    .copied()
                    .filter(|(t, _)| (start_ms..=end_ms).contains(t))
                    .collect();
                (!samples.is_empty()).then(|| SeriesSamples {
                    labels: s.labels.clone(),
                    samples,
                })
            })
            .collect())
    }

    /// Buckets computed from the literal samples; series whose samples are
    /// not strictly ascending make the planner read raw samples instead.
    fn select_rollup(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        resolution: Resolution,
    ) -> Result<Option<Vec<RollupSeries>>, StoreError> {
        let mut out = Vec::new();
        for s in self.0.iter().filter(|s| s.labels.matches(matchers)) {
            if s.samples.windows(2).any(|p| p[0].0 >= p[1].0) {
                return Ok(None);
            }
            let buckets: Vec<_> = crate::store::rollup::buckets(&s.samples, resolution)
                .into_iter()
                .filter(|b| (start_ms..=end_ms).contains(&b.start_ms))
                .collect();
            if !buckets.is_empty() {
                out.push(RollupSeries {
                    labels: s.labels.clone(),
                    buckets,
                });
            }
        }
        Ok(Some(out))
    }

    fn rollup_resolutions(&self) -> &'static [Resolution] {
        &[Resolution::FiveMinutes, Resolution::OneHour]
    }

    /// Whatever the range, so that the unit tests run the host-by-host
    /// aggregations.
    fn hosts(&self, _start_ms: i64, _end_ms: i64) -> Option<Vec<String>> {
        let mut instances: Vec<String> = self.0.iter().map(|s| s.labels.get(INSTANCE).to_string()).collect();
        instances.sort_unstable();
        instances.dedup();
        Some(instances)
    }

    fn as_sync(&self) -> Option<&(dyn Source + Sync)> {
        Some(self)
    }
}

/// One sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Series labels.
    pub labels: Labels,
    /// Evaluation time, ms.
    pub t: i64,
    /// Value.
    pub v: f64,
}

/// One series of a range result (or of a range vector).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Series labels (empty for a scalar evaluated over a range).
    pub labels: Labels,
    /// `(time ms, value)`, ascending.
    pub points: Vec<(i64, f64)>,
}

/// The result of a query, in Prometheus's four result types.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A number at a time.
    Scalar {
        /// Evaluation time, ms.
        t: i64,
        /// The number.
        v: f64,
    },
    /// A string at a time.
    String {
        /// Evaluation time, ms.
        t: i64,
        /// The string.
        v: String,
    },
    /// An instant vector: sorted by labels, or by value for `sort()` and
    /// `sort_desc()`.
    Vector(Vec<Sample>),
    /// A range result (or a range vector of an instant query), sorted by
    /// labels.
    Matrix(Vec<Series>),
}

/// The value of a series at reference time `t`: its newest sample in
/// `[t - 5m, t]`, unless that sample is a stale marker.
pub fn instant_value(samples: &[(i64, f64)], t: i64) -> Option<f64> {
    instant_sample(samples, t).map(|(_, v)| v)
}

/// Like [`instant_value`], with the sample's own timestamp.
fn instant_sample(samples: &[(i64, f64)], t: i64) -> Option<(i64, f64)> {
    let after = samples.partition_point(|(ts, _)| *ts <= t);
    let (ts, v) = *samples.get(after.checked_sub(1)?)?;
    if ts < t.saturating_sub(LOOKBACK_MS) || is_stale_marker(v) {
        return None;
    }
    Some((ts, v))
}

/// Parses PromQL, turning a panic inside the third-party parser into an
/// error so that no query text can take a request task down.
pub fn parse(text: &str) -> Result<Expr, String> {
    std::panic::catch_unwind(|| promql_parser::parser::parse(text))
        .unwrap_or_else(|_| Err("the query could not be parsed".to_string()))
}

/// Store matchers of a parsed vector selector (the metric name becomes a
/// `__name__` matcher).
pub fn selector_matchers(vs: &VectorSelector) -> Result<Vec<Matcher>, EvalError> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(bad(
            "`or` between label matchers is not supported (Prometheus 2.42 has no such syntax)",
        ));
    }
    let mut matchers = Vec::with_capacity(vs.matchers.matchers.len() + 1);
    if let Some(name) = &vs.name {
        matchers.push(Matcher::equal(METRIC_NAME, name.as_str()));
    }
    for m in &vs.matchers.matchers {
        // The parser already compiled regexes anchored (`^(?:..)$`) with
        // Go-compatible escaping, so reuse them rather than recompiling.
        let op = match &m.op {
            ParserMatchOp::Equal => MatchOp::Equal(m.value.clone()),
            ParserMatchOp::NotEqual => MatchOp::NotEqual(m.value.clone()),
            ParserMatchOp::Re(re) => MatchOp::Regex(re.clone()),
            ParserMatchOp::NotRe(re) => MatchOp::NotRegex(re.clone()),
        };
        matchers.push(Matcher {
            name: m.name.clone(),
            op,
        });
    }
    Ok(matchers)
}

fn duration_ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(d),
        Some(Offset::Neg(d)) => -duration_ms(d),
    }
}

fn system_time_ms(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => duration_ms(&d),
        Err(before) => -duration_ms(&before.duration()),
    }
}

/// The evaluation times of one (sub)query: `start, start + step, ... <= end`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Grid {
    start: i64,
    end: i64,
    step: i64,
}

impl Grid {
    fn len(&self) -> usize {
        if self.end < self.start {
            return 0;
        }
        // In i128: the extreme times the API accepts would overflow i64.
        let n = (i128::from(self.end) - i128::from(self.start)) / i128::from(self.step.max(1)) + 1;
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    fn time(&self, i: usize) -> i64 {
        self.start
            .saturating_add(i64::try_from(i).unwrap_or(i64::MAX).saturating_mul(self.step.max(1)))
    }

    fn times(&self) -> impl Iterator<Item = i64> + '_ {
        (0..self.len()).map(|i| self.time(i))
    }
}

/// An instant vector over a grid: one value slot per step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VSeries {
    labels: Labels,
    vals: Vec<Option<f64>>,
}

/// What an expression evaluates to over a grid.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Scalar(Vec<f64>),
    Vector(Vec<VSeries>),
    String(String),
}

/// How an instant vector selector picks each step's sample: the newest
/// in the lookback window before the step's reference time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InstantWalk {
    grid: Grid,
    offset: i64,
    at: Option<i64>,
}

impl InstantWalk {
    /// The reference time of the step at `t`.
    fn reference(&self, t: i64) -> i64 {
        self.at.unwrap_or(t).saturating_sub(self.offset)
    }

    /// One series' values at every step into `vals` (cleared first); with
    /// `timestamps`, the chosen samples' times in seconds. Whether any
    /// step has a value.
    fn values(&self, samples: &[(i64, f64)], timestamps: bool, vals: &mut Vec<Option<f64>>) -> bool {
        let n = self.grid.len();
        vals.clear();
        vals.reserve(n);
        let pick = |(ts, v): (i64, f64)| if timestamps { ts as f64 / 1000.0 } else { v };
        if self.at.is_some() {
            let v = instant_sample(samples, self.reference(self.grid.start)).map(pick);
            vals.resize(n, v);
            return v.is_some();
        }
        // Reference times ascend, so one cursor walks the samples.
        let mut any = false;
        let mut idx = 0;
        let mut r = self.grid.start.saturating_sub(self.offset);
        for _ in 0..n {
            while idx < samples.len() && samples[idx].0 <= r {
                idx += 1;
            }
            let v = idx.checked_sub(1).and_then(|i| {
                let (ts, v) = samples[i];
                (ts >= r.saturating_sub(LOOKBACK_MS) && !is_stale_marker(v)).then(|| pick((ts, v)))
            });
            any |= v.is_some();
            vals.push(v);
            r = r.saturating_add(self.grid.step.max(1));
        }
        any
    }
}

/// A range vector argument: series with their samples (stale markers
/// removed) and how each step's window is placed.
#[derive(Debug)]
pub(crate) struct RangeArg {
    series: Vec<SeriesSamples>,
    range: i64,
    offset: i64,
    at: Option<i64>,
}

impl RangeArg {
    /// The inclusive window `[lo, hi]` of the step at `t`.
    fn window(&self, t: i64) -> (i64, i64) {
        let hi = self.at.unwrap_or(t).saturating_sub(self.offset);
        (hi.saturating_sub(self.range), hi)
    }
}

/// Evaluates `expr` as an instant query at `t`.
pub fn eval_instant(
    expr: &Expr,
    src: &dyn Source,
    t: i64,
    limits: Limits,
    deadline: Option<Instant>,
) -> Result<Value, EvalError> {
    let mut ev = Evaluator::new(src, t, t, limits, deadline);
    let grid = Grid {
        start: t,
        end: t,
        step: 1,
    };
    let inner = unwrap_parens(expr);
    match inner {
        Expr::MatrixSelector(ms) => {
            let arg = ev.matrix_selector(&ms.vs, duration_ms(&ms.range), grid)?;
            return Ok(Value::Matrix(raw_range(arg, t)));
        }
        Expr::Subquery(sq) => {
            let arg = ev.subquery(sq, grid)?;
            return Ok(Value::Matrix(raw_range(arg, t)));
        }
        _ => {}
    }
    match ev.eval(expr, grid)? {
        Val::Scalar(v) => Ok(Value::Scalar {
            t,
            v: v.first().copied().unwrap_or(f64::NAN),
        }),
        Val::String(s) => Ok(Value::String { t, v: s }),
        Val::Vector(series) => {
            let mut out: Vec<Sample> = series
                .into_iter()
                .filter_map(|s| {
                    let v = s.vals.first().copied().flatten()?;
                    Some(Sample { labels: s.labels, t, v })
                })
                .collect();
            match sort_order(expr) {
                Some(desc) => functions::sort_samples(&mut out, desc),
                None => out.sort_by(|a, b| a.labels.cmp(&b.labels)),
            }
            Ok(Value::Vector(out))
        }
    }
}

/// Evaluates `expr` as a range query at `start, start + step, ... <= end`.
/// The caller has validated `step_ms > 0` and `end >= start`.
pub fn eval_range(
    expr: &Expr,
    src: &dyn Source,
    start: i64,
    end: i64,
    step_ms: i64,
    limits: Limits,
    deadline: Option<Instant>,
) -> Result<Value, EvalError> {
    match expr.value_type() {
        ValueType::Scalar | ValueType::Vector => {}
        other => {
            let name = match other {
                ValueType::Matrix => "range vector",
                _ => "string",
            };
            return Err(bad(format!(
                "invalid expression type \"{name}\" for range query, must be Scalar or instant Vector"
            )));
        }
    }
    let grid = Grid {
        start,
        end,
        step: step_ms.max(1),
    };
    let mut ev = Evaluator::new(src, start, end, limits, deadline);
    let out = match ev.eval(expr, grid)? {
        Val::Scalar(v) => vec![Series {
            labels: Labels::default(),
            points: grid.times().zip(v).collect(),
        }],
        Val::String(_) => return Err(bad("string results cannot be evaluated over a range")),
        Val::Vector(series) => {
            let mut out: Vec<Series> = series
                .into_iter()
                .filter_map(|s| {
                    let points: Vec<(i64, f64)> = grid.times().zip(s.vals).filter_map(|(t, v)| Some((t, v?))).collect();
                    (!points.is_empty()).then_some(Series {
                        labels: s.labels,
                        points,
                    })
                })
                .collect();
            out.sort_by(|a, b| a.labels.cmp(&b.labels));
            out
        }
    };
    let total: usize = out.iter().map(|s| s.points.len()).sum();
    if total > limits.max_samples {
        return Err(EvalError::TooManySamples);
    }
    Ok(Value::Matrix(out))
}

/// The samples of a range vector as an instant query returns them: the
/// window ending at `t`, with the samples' own timestamps.
fn raw_range(arg: RangeArg, t: i64) -> Vec<Series> {
    let (lo, hi) = arg.window(t);
    let mut out: Vec<Series> = arg
        .series
        .into_iter()
        .filter_map(|s| {
            let points: Vec<(i64, f64)> = s.samples.into_iter().filter(|(ts, _)| (lo..=hi).contains(ts)).collect();
            (!points.is_empty()).then_some(Series {
                labels: s.labels,
                points,
            })
        })
        .collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    out
}

fn unwrap_parens(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

/// `Some(descending)` when the top of `expr` is `sort()`/`sort_desc()`,
/// whose order an instant query keeps.
fn sort_order(expr: &Expr) -> Option<bool> {
    match unwrap_parens(expr) {
        Expr::Call(c) if c.func.name == "sort" => Some(false),
        Expr::Call(c) if c.func.name == "sort_desc" => Some(true),
        _ => None,
    }
}

/// Per-query evaluation state.
pub(crate) struct Evaluator<'a> {
    src: &'a dyn Source,
    query_start: i64,
    query_end: i64,
    limits: Limits,
    deadline: Option<Instant>,
    series_selected: usize,
    samples_loaded: usize,
}

impl<'a> Evaluator<'a> {
    fn new(src: &'a dyn Source, start: i64, end: i64, limits: Limits, deadline: Option<Instant>) -> Self {
        Evaluator {
            src,
            query_start: start,
            query_end: end,
            limits,
            deadline,
            series_selected: 0,
            samples_loaded: 0,
        }
    }

    fn check_deadline(&self) -> Result<(), EvalError> {
        match self.deadline {
            Some(d) if Instant::now() >= d => Err(EvalError::Timeout),
            _ => Ok(()),
        }
    }

    fn at_ms(&self, at: &Option<AtModifier>) -> Option<i64> {
        at.as_ref().map(|at| match at {
            AtModifier::Start => self.query_start,
            AtModifier::End => self.query_end,
            AtModifier::At(t) => system_time_ms(*t),
        })
    }

    /// Reads series for `[from, to]`, enforcing the limits and deadline.
    fn select(&mut self, matchers: &[Matcher], from: i64, to: i64) -> Result<Vec<SeriesSamples>, EvalError> {
        self.check_deadline()?;
        if matchers.iter().all(Matcher::matches_empty) {
            return Err(bad("vector selector must contain at least one non-empty matcher"));
        }
        let data = self.src.select(matchers, from, to)?;
        self.series_selected = self.series_selected.saturating_add(data.len());
        if self.series_selected > self.limits.max_series {
            return Err(EvalError::TooManySeries {
                limit: self.limits.max_series,
            });
        }
        let samples: usize = data.iter().map(|s| s.samples.len()).sum();
        self.samples_loaded = self.samples_loaded.saturating_add(samples);
        if self.samples_loaded > self.limits.max_samples {
            return Err(EvalError::TooManySamples);
        }
        self.check_deadline()?;
        Ok(data)
    }

    fn eval(&mut self, expr: &Expr, grid: Grid) -> Result<Val, EvalError> {
        self.check_deadline()?;
        match expr {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(vec![n.val; grid.len()])),
            Expr::StringLiteral(s) => Ok(Val::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, grid),
            Expr::VectorSelector(vs) => Ok(Val::Vector(self.vector_selector(vs, grid, false)?)),
            Expr::MatrixSelector(_) | Expr::Subquery(_) => Err(bad(
                "a range vector cannot be evaluated here; wrap it in a function such as rate()",
            )),
            Expr::Unary(u) => match self.eval(&u.expr, grid)? {
                Val::Scalar(v) => Ok(Val::Scalar(v.into_iter().map(|x| -x).collect())),
                Val::Vector(series) => {
                    let out: Vec<VSeries> = series
                        .into_iter()
                        .map(|s| VSeries {
                            labels: drop_name(&s.labels),
                            vals: s.vals.into_iter().map(|v| v.map(|x| -x)).collect(),
                        })
                        .collect();
                    check_unique_labels(&out)?;
                    Ok(Val::Vector(out))
                }
                Val::String(_) => Err(bad("unary minus cannot apply to a string")),
            },
            Expr::Binary(b) => binary::eval_binary(self, b, grid),
            Expr::Aggregate(a) => aggregate::eval_aggregate(self, a, grid),
            Expr::Call(c) => functions::eval_call(self, c, grid),
            Expr::Extension(_) => Err(bad("extension expressions are not supported")),
        }
    }

    fn eval_scalar(&mut self, expr: &Expr, grid: Grid) -> Result<Vec<f64>, EvalError> {
        match self.eval(expr, grid)? {
            Val::Scalar(v) => Ok(v),
            _ => Err(bad(format!("expected a scalar, got {expr}"))),
        }
    }

    fn eval_vector(&mut self, expr: &Expr, grid: Grid) -> Result<Vec<VSeries>, EvalError> {
        match self.eval(expr, grid)? {
            Val::Vector(v) => Ok(v),
            _ => Err(bad(format!("expected an instant vector, got {expr}"))),
        }
    }

    /// An instant vector selector over `grid`; with `timestamps`, each
    /// value is the chosen sample's own time in seconds (`timestamp()`).
    fn vector_selector(
        &mut self,
        vs: &VectorSelector,
        grid: Grid,
        timestamps: bool,
    ) -> Result<Vec<VSeries>, EvalError> {
        let (data, walk) = self.selector_data(vs, grid)?;
        let mut out = Vec::with_capacity(data.len());
        for s in data {
            let mut vals = Vec::new();
            if walk.values(&s.samples, timestamps, &mut vals) {
                out.push(VSeries { labels: s.labels, vals });
            }
        }
        Ok(out)
    }

    /// The series an instant vector selector reads over `grid`, and how
    /// to turn each into values per step.
    fn selector_data(
        &mut self,
        vs: &VectorSelector,
        grid: Grid,
    ) -> Result<(Vec<SeriesSamples>, InstantWalk), EvalError> {
        let matchers = selector_matchers(vs)?;
        let walk = InstantWalk {
            grid,
            offset: offset_ms(&vs.offset),
            at: self.at_ms(&vs.at),
        };
        let n = grid.len();
        if n == 0 {
            return Ok((Vec::new(), walk));
        }
        let first = walk.reference(grid.start);
        let last = walk.reference(grid.time(n - 1));
        let data = self.select(&matchers, first.saturating_sub(LOOKBACK_MS), last)?;
        Ok((data, walk))
    }

    /// A range vector selector whose windows end at each step of `grid`.
    fn matrix_selector(&mut self, vs: &VectorSelector, range: i64, grid: Grid) -> Result<RangeArg, EvalError> {
        let matchers = selector_matchers(vs)?;
        let arg = RangeArg {
            series: Vec::new(),
            range,
            offset: offset_ms(&vs.offset),
            at: self.at_ms(&vs.at),
        };
        let n = grid.len();
        if n == 0 {
            return Ok(arg);
        }
        let (from, _) = arg.window(grid.start);
        let (_, to) = arg.window(grid.time(n - 1));
        let mut series = self.select(&matchers, from, to)?;
        clean_range_series(&mut series);
        Ok(RangeArg { series, ..arg })
    }

    /// A subquery: its expression evaluated on the subquery's own grid,
    /// aligned to multiples of its step, covering every window of `grid`.
    fn subquery(&mut self, sq: &SubqueryExpr, grid: Grid) -> Result<RangeArg, EvalError> {
        let range = duration_ms(&sq.range);
        let offset = offset_ms(&sq.offset);
        let at = self.at_ms(&sq.at);
        let step = sq.step.as_ref().map_or(DEFAULT_SUBQUERY_STEP_MS, duration_ms).max(1);
        let mut arg = RangeArg {
            series: Vec::new(),
            range,
            offset,
            at,
        };
        let n = grid.len();
        if n == 0 {
            return Ok(arg);
        }
        let (first_hi, last_hi) = match at {
            Some(a) => (a.saturating_sub(offset), a.saturating_sub(offset)),
            None => (
                grid.start.saturating_sub(offset),
                grid.time(n - 1).saturating_sub(offset),
            ),
        };
        let lo = first_hi.saturating_sub(range);
        // First multiple of the step at or after the earliest window start
        // (Go's truncating division, as Prometheus computes it).
        let mut start = step * (lo / step);
        if start < lo {
            start = start.saturating_add(step);
        }
        let inner = Grid {
            start,
            end: last_hi,
            step,
        };
        // Each step of the inner grid costs memory per series; a grid this
        // long could never fit the sample limit anyway.
        if inner.len() > MAX_GRID_STEPS {
            return Err(EvalError::TooManySamples);
        }
        let series = self.eval_vector(&sq.expr, inner)?;
        arg.series = series
            .into_iter()
            .filter_map(|s| {
                let samples: Vec<(i64, f64)> = inner.times().zip(s.vals).filter_map(|(t, v)| Some((t, v?))).collect();
                (!samples.is_empty()).then_some(SeriesSamples {
                    labels: s.labels,
                    samples,
                })
            })
            .collect();
        Ok(arg)
    }

    /// The range vector argument of a function: a matrix selector or a
    /// subquery, possibly in parentheses.
    fn range_arg(&mut self, expr: &Expr, grid: Grid) -> Result<RangeArg, EvalError> {
        match unwrap_parens(expr) {
            Expr::MatrixSelector(ms) => self.matrix_selector(&ms.vs, duration_ms(&ms.range), grid),
            Expr::Subquery(sq) => self.subquery(sq, grid),
            other => Err(bad(format!("expected a range vector, got {other}"))),
        }
    }
}

/// Series read for a range vector as range functions see them: stale
/// markers removed, series left without samples dropped, in label order,
/// as Prometheus's series sets come: results (and float sums over them)
/// then do not depend on how the source listed the series, and the rollup
/// planner (`eval/rollup.rs`) matches it.
fn clean_range_series(series: &mut Vec<SeriesSamples>) {
    for s in series.iter_mut() {
        s.samples.retain(|(_, v)| !is_stale_marker(*v));
    }
    series.retain(|s| !s.samples.is_empty());
    series.sort_by(|a, b| a.labels.cmp(&b.labels));
}

/// `labels` without `__name__`.
fn drop_name(labels: &Labels) -> Labels {
    if labels.get(METRIC_NAME).is_empty() {
        return labels.clone();
    }
    Labels::new(
        labels
            .pairs()
            .iter()
            .filter(|(k, _)| k != METRIC_NAME)
            .cloned()
            .collect(),
    )
}

/// Fails when two series with values share a label set (Prometheus's
/// whole-result check after dropping metric names).
fn check_unique_labels(series: &[VSeries]) -> Result<(), EvalError> {
    let mut seen = std::collections::HashSet::with_capacity(series.len());
    for s in series {
        if s.vals.iter().any(Option::is_some) && !seen.insert(&s.labels) {
            return Err(exec_err(DUPLICATE_LABELSET));
        }
    }
    Ok(())
}

/// Merges series with equal label sets; two values at one step is
/// Prometheus's per-step duplicate error, reported with `msg`.
fn merge_by_labels(series: Vec<VSeries>, msg: &str) -> Result<Vec<VSeries>, EvalError> {
    let mut index: HashMap<Labels, usize> = HashMap::with_capacity(series.len());
    let mut out: Vec<VSeries> = Vec::with_capacity(series.len());
    for s in series {
        match index.get(&s.labels) {
            Some(&i) => {
                for (a, b) in out[i].vals.iter_mut().zip(s.vals) {
                    if b.is_some() {
                        if a.is_some() {
                            return Err(exec_err(msg));
                        }
                        *a = b;
                    }
                }
            }
            None => {
                index.insert(s.labels.clone(), out.len());
                out.push(s);
            }
        }
    }
    out.retain(|s| s.vals.iter().any(Option::is_some));
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod test_support {
    //! Helpers shared by the unit tests of every function family.

    use super::*;

    /// Minute in ms.
    pub const MIN: i64 = 60_000;

    /// A series from `name{k="v",...}` text and samples.
    pub fn series(spec: &str, samples: &[(i64, f64)]) -> SeriesSamples {
        SeriesSamples {
            labels: labels(spec),
            samples: samples.to_vec(),
        }
    }

    /// Labels from `name{k="v",...}` text.
    pub fn labels(spec: &str) -> Labels {
        let (name, rest) = spec.split_once('{').unwrap_or((spec, "}"));
        let mut pairs = vec![("__name__".to_string(), name.to_string())];
        for kv in rest.trim_end_matches('}').split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap();
            pairs.push((k.to_string(), v.trim_matches('"').to_string()));
        }
        Labels::new(pairs)
    }

    /// Evaluates `q` as an instant query at `t` over `data`.
    pub fn instant(q: &str, data: &[SeriesSamples], t: i64) -> Result<Value, EvalError> {
        let expr = parse(q).map_err(EvalError::BadQuery)?;
        eval_instant(&expr, &Literal(data), t, Limits::default(), None)
    }

    /// Evaluates `q` at `t` and returns `(labels text, value)` pairs in
    /// result order.
    pub fn vector(q: &str, data: &[SeriesSamples], t: i64) -> Vec<(String, f64)> {
        match instant(q, data, t).unwrap() {
            Value::Vector(v) => v.into_iter().map(|s| (s.labels.to_string(), s.v)).collect(),
            other => panic!("{q}: not a vector: {other:?}"),
        }
    }

    /// Evaluates `q` at `t` expecting a single-sample vector; its value.
    pub fn one(q: &str, data: &[SeriesSamples], t: i64) -> f64 {
        let v = vector(q, data, t);
        assert_eq!(v.len(), 1, "{q}: {v:?}");
        v[0].1
    }

    /// Evaluates a scalar query at `t`.
    pub fn scalar(q: &str, data: &[SeriesSamples], t: i64) -> f64 {
        match instant(q, data, t).unwrap() {
            Value::Scalar { v, .. } => v,
            other => panic!("{q}: not a scalar: {other:?}"),
        }
    }

    /// Evaluates `q` as a range query.
    pub fn range(q: &str, data: &[SeriesSamples], start: i64, end: i64, step: i64) -> Result<Value, EvalError> {
        let expr = parse(q).map_err(EvalError::BadQuery)?;
        eval_range(&expr, &Literal(data), start, end, step, Limits::default(), None)
    }

    /// Whether `a` and `b` agree to 1e-9 relative (NaN equal to NaN).
    pub fn close(a: f64, b: f64) -> bool {
        (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::test_support::*;
    use super::*;
    use crate::model::STALE_NAN_BITS;

    #[test]
    fn lookback_is_closed_on_both_ends_as_in_prometheus_2() {
        let s = [(10 * MIN, 1.0), (12 * MIN, 2.0)];
        let check = |t: i64, want: Option<f64>| assert_eq!(instant_value(&s, t), want, "t={t}");
        check(10 * MIN - 1, None);
        check(10 * MIN, Some(1.0));
        check(12 * MIN - 1, Some(1.0));
        check(12 * MIN, Some(2.0));
        check(17 * MIN, Some(2.0));
        check(17 * MIN + 1, None);
        assert_eq!(instant_value(&[], 0), None);
    }

    #[test]
    fn stale_marker_hides_the_series_but_other_nans_do_not() {
        let stale = f64::from_bits(STALE_NAN_BITS);
        let s = [(MIN, 1.0), (2 * MIN, stale), (3 * MIN, f64::NAN)];
        assert_eq!(instant_value(&s, 2 * MIN), None);
        assert!(instant_value(&s, 3 * MIN).unwrap().is_nan());
        assert_eq!(instant_value(&s, 2 * MIN - 1), Some(1.0));
    }

    fn data() -> Vec<SeriesSamples> {
        vec![
            series("m{i=\"b\"}", &[(0, 2.0), (MIN, 3.0)]),
            series("m{i=\"a\"}", &[(0, 1.0), (MIN, 5.0), (2 * MIN, 7.0)]),
            series("other{i=\"a\"}", &[(0, 10.0)]),
        ]
    }

    #[test]
    fn selectors_offset_and_at() {
        let d = data();
        assert_eq!(
            vector("m", &d, MIN),
            vec![("m{i=\"a\"}".into(), 5.0), ("m{i=\"b\"}".into(), 3.0)]
        );
        assert_eq!(one("m{i=\"a\"} offset 1m", &d, 2 * MIN), 5.0);
        assert_eq!(one("m{i=\"a\"} offset -1m", &d, MIN), 7.0);
        assert_eq!(one("m{i=\"a\"} @ 0", &d, 2 * MIN), 1.0);
        assert_eq!(one("m{i=\"a\"} @ 60 offset 1m", &d, 2 * MIN), 1.0);
        assert_eq!(one("{__name__=~\"oth.*\",i!~\"b\"}", &d, 0), 10.0);
        assert_eq!(one("timestamp(m{i=\"b\"})", &d, 3 * MIN), 60.0);
        let err = instant("{i=~\".*\"}", &d, 0).unwrap_err();
        assert!(err.to_string().contains("non-empty matcher"), "{err}");
    }

    #[test]
    fn at_start_and_end_in_range_queries() {
        let d = data();
        let Value::Matrix(m) = range("m{i=\"a\"} @ end()", &d, 0, 2 * MIN, MIN).unwrap() else {
            panic!()
        };
        assert_eq!(m[0].points, vec![(0, 7.0), (MIN, 7.0), (2 * MIN, 7.0)]);
        let Value::Matrix(m) = range("m{i=\"a\"} @ start()", &d, MIN, 2 * MIN, MIN).unwrap() else {
            panic!()
        };
        assert_eq!(m[0].points, vec![(MIN, 5.0), (2 * MIN, 5.0)]);
    }

    #[test]
    fn instant_matrix_and_subquery_results() {
        let d = data();
        let Value::Matrix(m) = instant("m{i=\"a\"}[1m]", &d, 2 * MIN).unwrap() else {
            panic!()
        };
        assert_eq!(
            m[0].points,
            vec![(MIN, 5.0), (2 * MIN, 7.0)],
            "window closed at both ends"
        );
        let Value::Matrix(m) = instant("m{i=\"a\"}[2m:1m]", &d, 2 * MIN + 1).unwrap() else {
            panic!()
        };
        assert_eq!(m[0].points, vec![(MIN, 5.0), (2 * MIN, 7.0)], "aligned to the step");
        let err = range("m[1m]", &d, 0, MIN, MIN).unwrap_err();
        assert!(err.to_string().contains("\"range vector\" for range query"));
        assert!(range("\"s\"", &d, 0, MIN, MIN).is_err());
    }

    #[test]
    fn literals_and_scalars() {
        let d = data();
        assert_eq!(scalar("-2.5", &d, 7), -2.5);
        assert_eq!(scalar("2 * 3 + 1", &d, 7), 7.0);
        assert_eq!(
            instant("\"hi\"", &d, 7).unwrap(),
            Value::String { t: 7, v: "hi".into() }
        );
        let Value::Matrix(m) = range("4", &d, 0, 30_000, 15_000).unwrap() else {
            panic!()
        };
        assert_eq!(m[0].points, vec![(0, 4.0), (15_000, 4.0), (30_000, 4.0)]);
    }

    #[test]
    fn unary_minus_drops_the_name_and_rejects_duplicates() {
        let d = data();
        assert_eq!(vector("-m{i=\"b\"}", &d, MIN), vec![("{i=\"b\"}".into(), -3.0)]);
        let err = instant("-{i=\"a\"}", &d, 0).unwrap_err();
        assert_eq!(err.to_string(), DUPLICATE_LABELSET);
    }

    #[test]
    fn range_query_steps_and_stale_markers() {
        let stale = f64::from_bits(STALE_NAN_BITS);
        let d = vec![
            series("m{i=\"b\"}", &[(0, 1.0), (MIN, 2.0)]),
            series("m{i=\"a\"}", &[(30 * MIN, 3.0)]),
            series("m{i=\"c\"}", &[(0, 9.0), (MIN, stale)]),
        ];
        let Value::Matrix(m) = range("m", &d, 0, 2 * MIN + 1, MIN).unwrap() else {
            panic!()
        };
        assert_eq!(m.len(), 2, "series a has no point in range and is dropped");
        assert_eq!(m[0].labels.get("i"), "b");
        assert_eq!(m[0].points, vec![(0, 1.0), (MIN, 2.0), (2 * MIN, 2.0)]);
        assert_eq!(m[1].points, vec![(0, 9.0)]);
    }

    #[test]
    fn limits_are_enforced() {
        let d = data();
        let expr = parse("m").unwrap();
        let limits = Limits {
            max_series: 1,
            ..Limits::default()
        };
        assert!(matches!(
            eval_instant(&expr, &Literal(&d), MIN, limits, None),
            Err(EvalError::TooManySeries { limit: 1 })
        ));
        let limits = Limits {
            max_samples: 2,
            ..Limits::default()
        };
        assert!(matches!(
            eval_instant(&expr, &Literal(&d), MIN, limits, None),
            Err(EvalError::TooManySamples)
        ));
        let err = instant("max_over_time(m[10y:1ms])", &d, MIN).unwrap_err();
        assert!(matches!(err, EvalError::TooManySamples), "{err}");
        let past = Instant::now();
        assert!(matches!(
            eval_instant(&expr, &Literal(&d), MIN, Limits::default(), Some(past)),
            Err(EvalError::Timeout)
        ));
    }
}
