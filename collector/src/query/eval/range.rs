//! Functions over range vectors: `rate`, `irate`, `increase`, `delta`,
//! `idelta`, `deriv`, `predict_linear`, `resets`, `changes` and every
//! `*_over_time`, as Prometheus 2.42's `promql/functions.go` computes them
//! (extrapolation of `rate`/`increase`/`delta` included).
//!
//! Each function sees the samples of one series inside one step's window
//! (`[t - range, t]`, closed, stale markers removed) and returns at most
//! one value. The driver [`eval_range_function`] slides every series'
//! window over the step grid with binary searches on data read once.
//! `predict_linear`, `max_over_time` and `min_over_time` keep state as the
//! window slides (sliding least-squares sums, a monotonic queue) instead of
//! rescanning each window.

use promql_parser::parser::{Call, Expr};

use super::{Evaluator, Grid, RangeArg, VSeries, Val, bad, check_unique_labels, drop_name, unwrap_parens};
use crate::model::{Matcher, SeriesSamples};

/// The range functions, by PromQL name.
const NAMES: &[&str] = &[
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "predict_linear",
    "resets",
    "changes",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "last_over_time",
    "present_over_time",
    "absent_over_time",
];

/// Whether `name` is a function over a range vector handled here.
pub(super) fn is_range_function(name: &str) -> bool {
    NAMES.contains(&name)
}

/// What a range function sees besides the samples of one window.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Start of the window (ms): `t - offset - range`.
    lo: i64,
    /// End of the window (ms): the step's reference time.
    hi: i64,
    /// The range, ms.
    range: i64,
    /// The evaluation time the function is called at (Prometheus's
    /// `enh.Ts`): the step, or the query start for an `@`-pinned range,
    /// which Prometheus evaluates once as a step-invariant expression.
    eval_t: i64,
    /// For `rate`/`increase`: the sum of the values before each counter
    /// reset inside the window (what the resets took away), added in
    /// sample order as Prometheus adds it. For `resets`/`changes`: how
    /// many resets/changes the window holds.
    events: f64,
    /// The scalar argument at this step (`quantile_over_time`'s φ,
    /// `predict_linear`'s horizon).
    param: f64,
}

/// Evaluates a call of a range function over `grid`.
pub(super) fn eval_range_function(ev: &mut Evaluator<'_>, call: &Call, grid: Grid) -> Result<Val, super::EvalError> {
    let p = match prepare(ev, call, grid)? {
        Prepared::Done(out) => return Ok(Val::Vector(out)),
        Prepared::PerSeries(p) => p,
    };
    Ok(Val::Vector(run_per_series(&p, ev.deadline)?))
}

/// Every series' values of a range function call, as an instant vector.
pub(super) fn run_per_series(
    p: &RangeCall,
    deadline: Option<std::time::Instant>,
) -> Result<Vec<VSeries>, super::EvalError> {
    let out = map_series_parallel(&p.arg.series, deadline, p.grid.len(), |s| {
        let mut vals = Vec::new();
        p.values(s, &mut vals).then(|| VSeries {
            labels: p.labels(s),
            vals,
        })
    })?;
    check_unique_labels(&out)?;
    Ok(out)
}

/// A range function call ready to run series by series, or its whole
/// answer when it is not computed per series.
pub(super) enum Prepared {
    /// The answer (rollups, `absent_over_time`).
    Done(Vec<VSeries>),
    /// Run [`RangeCall::values`] on every series of `arg`.
    PerSeries(RangeCall),
}

/// A range function applied to one series at a time.
pub(super) struct RangeCall {
    /// The range vector: series and window placement.
    pub(super) arg: RangeArg,
    name: &'static str,
    grid: Grid,
    params: Vec<f64>,
    events_kind: Events,
    query_start: i64,
}

/// Reads the arguments of a range function call over `grid`.
pub(super) fn prepare(ev: &mut Evaluator<'_>, call: &Call, grid: Grid) -> Result<Prepared, super::EvalError> {
    let name = call.func.name;
    let args = &call.args.args;
    // The range vector is the first argument except for quantile_over_time.
    let (range_expr, param_expr) = match name {
        "quantile_over_time" => (args.get(1), args.first()),
        "predict_linear" => (args.first(), args.get(1)),
        _ => (args.first(), None),
    };
    let range_expr = range_expr.ok_or_else(|| bad(format!("{name}() needs a range vector argument")))?;
    let n = grid.len();
    let params = match param_expr {
        Some(e) => ev.eval_scalar(e, grid)?,
        None => vec![f64::NAN; n],
    };
    // Coarse aligned steps over a plain selector: rollup buckets, when
    // they provably give what the samples give.
    if let Some(out) = super::rollup::try_rollup(ev, name, range_expr, grid)? {
        return Ok(Prepared::Done(out));
    }
    let arg = ev.range_arg(range_expr, grid)?;
    if name == "absent_over_time" {
        return Ok(Prepared::Done(absent_over_time(&arg, range_expr, grid)));
    }
    if function(name).is_none() {
        return Err(bad(format!("unknown range function {name}()")));
    }
    Ok(Prepared::PerSeries(RangeCall {
        arg,
        name,
        grid,
        params,
        events_kind: events_kind(name),
        query_start: ev.query_start,
    }))
}

/// A call of a range function over a plain matrix selector, split from
/// its data so that the series can be read apart (aggregations read them
/// host by host): the call with no series yet, the selector's matchers,
/// and the time range to read. `None` for calls not covered this way
/// (subqueries, calls rollups may answer, `absent_over_time`, a selector
/// without a metric name, whose dropped names could make series collide).
pub(super) fn template(ev: &mut Evaluator<'_>, call: &Call, grid: Grid) -> Result<Option<Template>, super::EvalError> {
    let name = call.func.name;
    let args = &call.args.args;
    if name == "absent_over_time" || function(name).is_none() {
        return Ok(None);
    }
    if !ev.src.rollup_resolutions().is_empty() && super::rollup::may_use_rollups(name) {
        return Ok(None);
    }
    let (range_expr, param_expr) = match name {
        "quantile_over_time" => (args.get(1), args.first()),
        "predict_linear" => (args.first(), args.get(1)),
        _ => (args.first(), None),
    };
    let Some(Expr::MatrixSelector(ms)) = range_expr.map(|e| unwrap_parens(e)) else {
        return Ok(None);
    };
    let matchers = super::selector_matchers(&ms.vs)?;
    let named = matchers
        .iter()
        .any(|m| m.name == crate::model::METRIC_NAME && matches!(m.op, crate::model::MatchOp::Equal(_)));
    let n = grid.len();
    if n == 0 || (!named && name != "last_over_time") {
        return Ok(None);
    }
    let params = match param_expr {
        Some(e) => ev.eval_scalar(e, grid)?,
        None => vec![f64::NAN; n],
    };
    let arg = RangeArg {
        series: Vec::new(),
        range: super::duration_ms(&ms.range),
        offset: super::offset_ms(&ms.vs.offset),
        at: ev.at_ms(&ms.vs.at),
    };
    let (from, _) = arg.window(grid.start);
    let (_, to) = arg.window(grid.time(n - 1));
    let call = RangeCall {
        arg,
        name,
        grid,
        params,
        events_kind: events_kind(name),
        query_start: ev.query_start,
    };
    Ok(Some(Template {
        call,
        matchers,
        from,
        to,
    }))
}

/// What [`template`] gives: a range function call without its series and
/// where to read them.
pub(super) struct Template {
    /// The call, with no series.
    pub(super) call: RangeCall,
    /// The selector's matchers.
    pub(super) matchers: Vec<Matcher>,
    /// First time to read, ms.
    pub(super) from: i64,
    /// Last time to read, ms.
    pub(super) to: i64,
}

/// Which events [`Window::events`] counts for function `name`.
fn events_kind(name: &str) -> Events {
    match name {
        "rate" | "increase" => Events::ResetSums,
        "resets" => Events::ResetCount,
        "changes" => Events::ChangeCount,
        _ => Events::None,
    }
}

impl RangeCall {
    /// The output labels of series `s`: its own without the metric name
    /// (which `last_over_time` keeps).
    pub(super) fn labels(&self, s: &SeriesSamples) -> crate::model::Labels {
        if self.name == "last_over_time" {
            s.labels.clone()
        } else {
            drop_name(&s.labels)
        }
    }

    /// Whether the output labels may repeat across series (only when the
    /// metric name is dropped and the series have different names).
    pub(super) fn may_repeat_labels(&self) -> bool {
        self.name != "last_over_time"
            && self
                .arg
                .series
                .windows(2)
                .any(|w| w[0].labels.get(crate::model::METRIC_NAME) != w[1].labels.get(crate::model::METRIC_NAME))
    }

    /// The function's value at every step for series `s` into `vals`
    /// (cleared first); whether any step has one.
    pub(super) fn values(&self, s: &SeriesSamples, vals: &mut Vec<Option<f64>>) -> bool {
        // The common functions get their own copy of the loop, so the
        // function is inlined into it rather than called through a pointer
        // at every step.
        match self.name {
            "rate" => self.walk(s, vals, |s, w| extrapolated_rate(s, w, true, true)),
            "increase" => self.walk(s, vals, |s, w| extrapolated_rate(s, w, true, false)),
            "delta" => self.walk(s, vals, |s, w| extrapolated_rate(s, w, false, false)),
            "predict_linear" if self.arg.at.is_none() => self.regression_walk(s, vals),
            "max_over_time" if self.arg.at.is_none() => self.extremum_walk(s, vals, true),
            "min_over_time" if self.arg.at.is_none() => self.extremum_walk(s, vals, false),
            name => match function(name) {
                Some(f) => self.walk(s, vals, f),
                None => {
                    vals.clear();
                    vals.resize(self.grid.len(), None);
                    false
                }
            },
        }
    }

    /// Slides the window over the grid for one series.
    #[inline(always)]
    fn walk(
        &self,
        s: &SeriesSamples,
        vals: &mut Vec<Option<f64>>,
        f: impl Fn(&[(i64, f64)], Window) -> Option<f64>,
    ) -> bool {
        let arg = &self.arg;
        let samples = &s.samples[..];
        vals.clear();
        vals.reserve(self.grid.len());
        let mut any = false;
        // Indexes `i` of the samples that differ from sample `i - 1` in the
        // way the function counts, so each window looks up only its own
        // events instead of rescanning every sample.
        let events: Vec<usize> = match self.events_kind {
            Events::None => Vec::new(),
            Events::ResetSums | Events::ResetCount => (1..samples.len())
                .filter(|&i| samples[i].1 < samples[i - 1].1)
                .collect(),
            Events::ChangeCount => (1..samples.len())
                .filter(|&i| {
                    let (a, b) = (samples[i - 1].1, samples[i].1);
                    a != b && !(a.is_nan() && b.is_nan())
                })
                .collect(),
        };
        // Windows only move forward (or stay put under `@`), so two
        // cursors find each window's samples.
        let (mut from, mut to) = (0_usize, 0_usize);
        for (i, t) in self.grid.times().enumerate() {
            let (lo, hi) = arg.window(t);
            if arg.at.is_some() || i == 0 {
                from = samples.partition_point(|(ts, _)| *ts < lo);
                to = samples.partition_point(|(ts, _)| *ts <= hi);
            } else {
                while from < samples.len() && samples[from].0 < lo {
                    from += 1;
                }
                to = to.max(from);
                while to < samples.len() && samples[to].0 <= hi {
                    to += 1;
                }
            }
            let window = &samples[from..to.max(from)];
            let v = if window.is_empty() {
                None
            } else {
                let events = if window.len() < 2 || events.is_empty() {
                    0.0
                } else {
                    // Events between consecutive samples of the window.
                    let a = events.partition_point(|&e| e <= from);
                    let b = events.partition_point(|&e| e < to);
                    match self.events_kind {
                        Events::ResetSums => events[a..b].iter().fold(0.0, |acc, &e| acc + samples[e - 1].1),
                        _ => (b - a) as f64,
                    }
                };
                f(
                    window,
                    Window {
                        lo,
                        hi,
                        range: arg.range,
                        eval_t: if arg.at.is_some() { self.query_start } else { t },
                        events,
                        param: self.params.get(i).copied().unwrap_or(f64::NAN),
                    },
                )
            };
            any |= v.is_some();
            vals.push(v);
        }
        any
    }
}

impl RangeCall {
    /// `predict_linear` over every step for series `s`, with the
    /// least-squares sums slid along the series ([`SlidingFit`]) instead of
    /// summed afresh over every window: each sample enters and leaves the
    /// sums once, so a 1 h window at a 10 s step costs a few operations per
    /// step instead of 360. Windows holding a NaN or an infinity are fitted
    /// from scratch as Prometheus fits them.
    ///
    /// Only `predict_linear`: its answer is dominated by the intercept (a
    /// value of the series), which both ways of summing give to ~1e-15
    /// relative. `deriv` answers the slope alone, and Prometheus's slope of
    /// a large, slowly moving gauge carries its own cancellation error (sums
    /// of raw values × seconds) at the 1e-9 level, which the centred sums
    /// here do not reproduce, so `deriv` keeps Prometheus's arithmetic.
    fn regression_walk(&self, s: &SeriesSamples, vals: &mut Vec<Option<f64>>) -> bool {
        let arg = &self.arg;
        let samples = &s.samples[..];
        vals.clear();
        vals.reserve(self.grid.len());
        let mut fit = SlidingFit::default();
        let mut any = false;
        for (i, t) in self.grid.times().enumerate() {
            let (lo, hi) = arg.window(t);
            // Windows only move forward: the cursors never go back.
            let mut from = fit.from;
            while from < samples.len() && samples[from].0 < lo {
                from += 1;
            }
            let mut to = fit.to.max(from);
            while to < samples.len() && samples[to].0 <= hi {
                to += 1;
            }
            if i == 0 {
                fit.rebuild(samples, from, to);
            } else {
                fit.slide(samples, from, to);
            }
            let window = &samples[from..to];
            let v = if window.len() < 2 {
                None
            } else {
                let (slope, intercept) = if fit.nonfinite > 0 {
                    linear_regression(window, t)
                } else {
                    fit.fit(samples, t)
                };
                Some(slope * self.params.get(i).copied().unwrap_or(f64::NAN) + intercept)
            };
            any |= v.is_some();
            vals.push(v);
        }
        any
    }
}

impl RangeCall {
    /// `max_over_time` (`max`) or `min_over_time` over every step for
    /// series `s`, with the window's candidates kept in a monotonic queue
    /// instead of rescanning every window: each sample enters and leaves
    /// the queue once. The answer is Prometheus's: the first sample of the
    /// window holding the extreme value (NaNs skipped), NaN when every
    /// sample is NaN.
    fn extremum_walk(&self, s: &SeriesSamples, vals: &mut Vec<Option<f64>>, max: bool) -> bool {
        let samples = &s.samples[..];
        let beats = |a: f64, b: f64| if max { a > b } else { a < b };
        vals.clear();
        vals.reserve(self.grid.len());
        // Indexes of non-NaN samples in the window that no later sample
        // beats, oldest first: the front is the window's answer.
        let mut queue: std::collections::VecDeque<usize> = std::collections::VecDeque::new();
        let (mut from, mut to) = (0_usize, 0_usize);
        let mut any = false;
        for t in self.grid.times() {
            let (lo, hi) = self.arg.window(t);
            while to < samples.len() && samples[to].0 <= hi {
                let v = samples[to].1;
                if !v.is_nan() {
                    while queue.back().is_some_and(|&b| beats(v, samples[b].1)) {
                        queue.pop_back();
                    }
                    queue.push_back(to);
                }
                to += 1;
            }
            while from < to && samples[from].0 < lo {
                if queue.front() == Some(&from) {
                    queue.pop_front();
                }
                from += 1;
            }
            let v = (from < to).then(|| queue.front().map_or(f64::NAN, |&f| samples[f].1));
            any |= v.is_some();
            vals.push(v);
        }
        any
    }
}

/// A Kahan-compensated running sum that terms also leave.
#[derive(Debug, Default, Clone, Copy)]
struct RunningSum {
    sum: f64,
    c: f64,
}

impl RunningSum {
    fn add(&mut self, x: f64) {
        (self.sum, self.c) = kahan_inc(x, self.sum, self.c);
    }

    fn value(&self) -> f64 {
        self.sum + self.c
    }
}

/// The least-squares sums of the finite samples `from..to` of one series,
/// in coordinates centred on an anchor sample (seconds after its time,
/// value minus its value), updated as the window slides. Centring keeps
/// the terms small, so the covariance and variance do not cancel away
/// digits the way sums of raw timestamps × values would; the anchor moves
/// (and the sums are rebuilt from scratch) each time as many samples have
/// left as the window holds, so rounding from removals cannot pile up.
/// Mathematically the fit is Prometheus's `linearRegression`; in floating
/// point it agrees to far better than 1e-9 relative on real data.
#[derive(Debug, Default)]
struct SlidingFit {
    from: usize,
    to: usize,
    anchor_t: i64,
    anchor_v: f64,
    /// Samples removed since the last rebuild.
    removed: usize,
    x: RunningSum,
    y: RunningSum,
    xy: RunningSum,
    x2: RunningSum,
    /// NaNs and infinities in the window (left out of the sums).
    nonfinite: usize,
    /// Samples in the window that differ from the one before them: none
    /// means a constant window, which Prometheus answers specially.
    changes: usize,
}

impl SlidingFit {
    /// Sums afresh over `from..to`, anchored at its first finite sample.
    fn rebuild(&mut self, samples: &[(i64, f64)], from: usize, to: usize) {
        let anchor = samples[from..to].iter().find(|(_, v)| v.is_finite());
        *self = SlidingFit {
            from,
            to: from,
            anchor_t: anchor.map_or(0, |a| a.0),
            anchor_v: anchor.map_or(0.0, |a| a.1),
            ..SlidingFit::default()
        };
        for j in from..to {
            self.push(samples, j);
        }
    }

    /// Moves the window to `from..to` (both at or after the current ends).
    fn slide(&mut self, samples: &[(i64, f64)], from: usize, to: usize) {
        let held = self.to - self.from;
        if from >= self.to || self.removed + (from - self.from) > held.max(64) {
            self.rebuild(samples, from, to);
            return;
        }
        for j in self.to..to {
            self.push(samples, j);
        }
        for j in self.from..from {
            self.pop(samples, j);
        }
    }

    /// The terms sample `(t, v)` adds to the sums.
    fn terms(&self, (t, v): (i64, f64)) -> (f64, f64) {
        ((t - self.anchor_t) as f64 / 1e3, v - self.anchor_v)
    }

    /// Adds sample `j == self.to`.
    fn push(&mut self, samples: &[(i64, f64)], j: usize) {
        let s = samples[j];
        if j > self.from && differs(samples[j - 1].1, s.1) {
            self.changes += 1;
        }
        if s.1.is_finite() {
            let (x, y) = self.terms(s);
            self.x.add(x);
            self.y.add(y);
            self.xy.add(x * y);
            self.x2.add(x * x);
        } else {
            self.nonfinite += 1;
        }
        self.to = j + 1;
    }

    /// Removes sample `j == self.from`.
    fn pop(&mut self, samples: &[(i64, f64)], j: usize) {
        let s = samples[j];
        if j + 1 < self.to && differs(s.1, samples[j + 1].1) {
            self.changes -= 1;
        }
        if s.1.is_finite() {
            let (x, y) = self.terms(s);
            self.x.add(-x);
            self.y.add(-y);
            self.xy.add(-(x * y));
            self.x2.add(-(x * x));
        } else {
            self.nonfinite -= 1;
        }
        self.from = j + 1;
        self.removed += 1;
    }

    /// `(slope, intercept at eval_t)` of a window of two or more finite
    /// samples.
    fn fit(&self, samples: &[(i64, f64)], eval_t: i64) -> (f64, f64) {
        if self.changes == 0 {
            return (0.0, samples[self.from].1);
        }
        let n = (self.to - self.from) as f64;
        let (sx, sy, sxy, sx2) = (self.x.value(), self.y.value(), self.xy.value(), self.x2.value());
        let cov = sxy - sx * sy / n;
        let var = sx2 - sx * sx / n;
        let slope = cov / var;
        let mean_x = sx / n + (self.anchor_t - eval_t) as f64 / 1e3;
        let intercept = (self.anchor_v + sy / n) - slope * mean_x;
        (slope, intercept)
    }
}

/// Whether `b` differs from `a` as Prometheus's constant-window check
/// compares them (NaN differs from everything).
fn differs(a: f64, b: f64) -> bool {
    a != b
}

/// Below this many (series × steps) a range function runs on one thread:
/// spawning costs more than it saves.
pub(super) const PARALLEL_MIN_WORK: usize = 200_000;

/// Applies `f` to every series, in order, on up to two threads (the
/// machine class has two cores) when the work is large enough; each
/// thread checks the deadline between series. The output keeps the input
/// order, so results do not depend on the split.
fn map_series_parallel(
    series: &[SeriesSamples],
    deadline: Option<std::time::Instant>,
    steps: usize,
    f: impl Fn(&SeriesSamples) -> Option<VSeries> + Sync,
) -> Result<Vec<VSeries>, super::EvalError> {
    let run = |part: &[SeriesSamples]| -> Result<Vec<VSeries>, super::EvalError> {
        let mut out = Vec::with_capacity(part.len());
        for s in part {
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Err(super::EvalError::Timeout);
            }
            out.extend(f(s));
        }
        Ok(out)
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from).min(2);
    if threads < 2 || series.len() < 2 || series.len().saturating_mul(steps) < PARALLEL_MIN_WORK {
        return run(series);
    }
    let (a, b) = series.split_at(series.len() / 2);
    let (first, second) = std::thread::scope(|scope| {
        let other = scope.spawn(|| run(b));
        let mine = run(a);
        (mine, other.join())
    });
    let mut out = first?;
    match second {
        Ok(rest) => out.extend(rest?),
        Err(panic) => std::panic::resume_unwind(panic),
    }
    Ok(out)
}

/// What [`Window::events`] holds for a function.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Events {
    None,
    ResetSums,
    ResetCount,
    ChangeCount,
}

type RangeFn = fn(&[(i64, f64)], Window) -> Option<f64>;

fn function(name: &str) -> Option<RangeFn> {
    Some(match name {
        "rate" => |s, w| extrapolated_rate(s, w, true, true),
        "increase" => |s, w| extrapolated_rate(s, w, true, false),
        "delta" => |s, w| extrapolated_rate(s, w, false, false),
        "irate" => |s, _| instant_delta(s, true),
        "idelta" => |s, _| instant_delta(s, false),
        "deriv" => |s, _| {
            if s.len() < 2 {
                return None;
            }
            Some(linear_regression(s, s[0].0).0)
        },
        "predict_linear" => |s, w| {
            if s.len() < 2 {
                return None;
            }
            // Prometheus anchors the regression at the evaluation time,
            // not at the end of an offset window.
            let (slope, intercept) = linear_regression(s, w.eval_t);
            Some(slope * w.param + intercept)
        },
        "resets" | "changes" => |_, w| Some(w.events),
        "avg_over_time" => |s, _| Some(avg_over_time(s)),
        "min_over_time" => |s, _| {
            Some(
                s.iter()
                    .skip(1)
                    .fold(s[0].1, |m, (_, v)| if *v < m || m.is_nan() { *v } else { m }),
            )
        },
        "max_over_time" => |s, _| {
            Some(
                s.iter()
                    .skip(1)
                    .fold(s[0].1, |m, (_, v)| if *v > m || m.is_nan() { *v } else { m }),
            )
        },
        "sum_over_time" => |s, _| Some(kahan_sum(s.iter().map(|(_, v)| *v))),
        "count_over_time" => |s, _| Some(s.len() as f64),
        "quantile_over_time" => |s, w| {
            let mut vals: Vec<f64> = s.iter().map(|(_, v)| *v).collect();
            Some(quantile(w.param, &mut vals))
        },
        "stddev_over_time" => |s, _| Some(variance(s).sqrt()),
        "stdvar_over_time" => |s, _| Some(variance(s)),
        "last_over_time" => |s, _| s.last().map(|(_, v)| *v),
        "present_over_time" => |_, _| Some(1.0),
        _ => return None,
    })
}

/// `absent_over_time`: 1 at the steps where no series had a sample in the
/// window, labelled from the selector's equality matchers.
fn absent_over_time(arg: &RangeArg, expr: &promql_parser::parser::Expr, grid: Grid) -> Vec<VSeries> {
    let vals: Vec<Option<f64>> = grid
        .times()
        .map(|t| {
            let (lo, hi) = arg.window(t);
            let present = arg.series.iter().any(|s| {
                let from = s.samples.partition_point(|(ts, _)| *ts < lo);
                s.samples.get(from).is_some_and(|(ts, _)| *ts <= hi)
            });
            (!present).then_some(1.0)
        })
        .collect();
    if vals.iter().all(Option::is_none) {
        return Vec::new();
    }
    vec![VSeries {
        labels: super::functions::absent_labels(expr),
        vals,
    }]
}

/// Prometheus's `extrapolatedRate`: the increase between the first and
/// last sample (adding back counter resets), extrapolated towards the
/// window's edges when the samples come close to them, never below zero
/// for counters.
fn extrapolated_rate(s: &[(i64, f64)], w: Window, is_counter: bool, is_rate: bool) -> Option<f64> {
    if s.len() < 2 {
        return None;
    }
    let (first_t, first_v) = s[0];
    let (last_t, last_v) = s[s.len() - 1];
    let mut result = last_v - first_v;
    if is_counter {
        result += w.events;
    }
    let mut duration_to_start = (first_t - w.lo) as f64 / 1000.0;
    let duration_to_end = (w.hi - last_t) as f64 / 1000.0;
    let sampled_interval = (last_t - first_t) as f64 / 1000.0;
    let average_between = sampled_interval / (s.len() - 1) as f64;
    if is_counter && result > 0.0 && first_v >= 0.0 {
        // A counter cannot go below zero: do not extrapolate past the
        // point where it would have been zero.
        let duration_to_zero = sampled_interval * (first_v / result);
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }
    let threshold = average_between * 1.1;
    let mut extrapolate_to = sampled_interval;
    extrapolate_to += if duration_to_start < threshold {
        duration_to_start
    } else {
        average_between / 2.0
    };
    extrapolate_to += if duration_to_end < threshold {
        duration_to_end
    } else {
        average_between / 2.0
    };
    let mut factor = extrapolate_to / sampled_interval;
    if is_rate {
        factor /= w.range as f64 / 1000.0;
    }
    Some(result * factor)
}

/// `irate`/`idelta`: from the last two samples of the window.
fn instant_delta(s: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    if s.len() < 2 {
        return None;
    }
    let (prev_t, prev_v) = s[s.len() - 2];
    let (last_t, last_v) = s[s.len() - 1];
    let mut result = if is_rate && last_v < prev_v {
        // A counter reset: the last value is the increase since it.
        last_v
    } else {
        last_v - prev_v
    };
    let interval = last_t - prev_t;
    if interval == 0 {
        return None;
    }
    if is_rate {
        result /= interval as f64 / 1000.0;
    }
    Some(result)
}

/// Adds `inc` to a Kahan-compensated sum `(sum, c)`.
pub(super) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

fn kahan_sum(values: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut c) = (0.0, 0.0);
    for v in values {
        (sum, c) = kahan_inc(v, sum, c);
    }
    if sum.is_infinite() { sum } else { sum + c }
}

fn avg_over_time(s: &[(i64, f64)]) -> f64 {
    let (mut mean, mut count, mut c) = (0.0_f64, 0.0_f64, 0.0_f64);
    for (_, v) in s {
        count += 1.0;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (*v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        (mean, c) = kahan_inc(v / count - mean / count, mean, c);
    }
    if mean.is_infinite() { mean } else { mean + c }
}

/// Population variance by Welford's method with compensated sums, as
/// `stdvar_over_time` computes it.
fn variance(s: &[(i64, f64)]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0_f64, 0.0_f64, 0.0_f64, 0.0_f64, 0.0_f64);
    for (_, v) in s {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// Least-squares fit of the samples against time in seconds relative to
/// `intercept_time`; `(slope, intercept)`.
fn linear_regression(s: &[(i64, f64)], intercept_time: i64) -> (f64, f64) {
    let n = s.len() as f64;
    let (mut sum_x, mut c_x, mut sum_y, mut c_y) = (0.0, 0.0, 0.0, 0.0);
    let (mut sum_xy, mut c_xy, mut sum_x2, mut c_x2) = (0.0, 0.0, 0.0, 0.0);
    let init_y = s[0].1;
    let mut const_y = true;
    for (i, (t, v)) in s.iter().enumerate() {
        if const_y && i > 0 && *v != init_y {
            const_y = false;
        }
        let x = (t - intercept_time) as f64 / 1e3;
        (sum_x, c_x) = kahan_inc(x, sum_x, c_x);
        (sum_y, c_y) = kahan_inc(*v, sum_y, c_y);
        (sum_xy, c_xy) = kahan_inc(x * v, sum_xy, c_xy);
        (sum_x2, c_x2) = kahan_inc(x * x, sum_x2, c_x2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (sum_x, sum_y, sum_xy, sum_x2) = (sum_x + c_x, sum_y + c_y, sum_xy + c_xy, sum_x2 + c_x2);
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

/// The φ-quantile of `values` by linear interpolation between the closest
/// ranks (Prometheus's `quantile`, shared with the aggregation).
pub(super) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    // Go sorts NaN first (`a < b || isNaN(a)`).
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::Value;
    use super::super::test_support::*;
    use crate::model::{STALE_NAN_BITS, SeriesSamples};

    #[test]
    fn the_parallel_split_gives_what_each_series_gives_alone() {
        // 80 series × 3000 steps is over PARALLEL_MIN_WORK, so the whole
        // query runs on two threads; each series alone runs on one.
        let data: Vec<SeriesSamples> = (0..80)
            .map(|k| {
                let samples: Vec<(i64, f64)> = (0..3000)
                    .map(|i| (i * 10_000, ((i * (k + 1)) % 977) as f64 + (i * 7) as f64))
                    .collect();
                series(&format!("c_total{{k=\"{k:02}\"}}"), &samples)
            })
            .collect();
        assert!(data.len() * 3000 >= super::PARALLEL_MIN_WORK);
        let end = 2999 * 10_000;
        let Value::Matrix(all) = range("rate(c_total[1m])", &data, 0, end, 10_000).unwrap() else {
            panic!("not a matrix");
        };
        let alone: Vec<_> = data
            .iter()
            .flat_map(
                |s| match range("rate(c_total[1m])", std::slice::from_ref(s), 0, end, 10_000).unwrap() {
                    Value::Matrix(m) => m,
                    _ => panic!("not a matrix"),
                },
            )
            .collect();
        assert_eq!(all.len(), 80);
        assert_eq!(all, alone);
    }

    /// A counter scraped every 15 s: 0, 10, 20, ... with a reset to 5 at
    /// 120 s.
    fn counter() -> Vec<SeriesSamples> {
        let mut samples: Vec<(i64, f64)> = (0..8).map(|i| (i * 15_000, i as f64 * 10.0)).collect();
        samples.extend((8..20).map(|i| (i * 15_000, 5.0 + (i - 8) as f64 * 10.0)));
        vec![series("c_total{i=\"a\"}", &samples)]
    }

    #[test]
    fn rate_and_increase_extrapolate_like_prometheus() {
        let d = counter();
        // Window [0, 60s]: samples at 0..60 s, 0..40; touches both edges,
        // so no extrapolation: 40 / 60 s.
        assert!(close(one("rate(c_total[1m])", &d, 60_000), 40.0 / 60.0));
        assert!(close(one("increase(c_total[1m])", &d, 60_000), 40.0));
        // Window [30s, 90s] at 90 s: 20..60, touching both edges.
        assert!(close(one("increase(c_total[1m])", &d, 90_000), 40.0));
        // Window [7s, 67s]: samples 15..60 s (10..40): start gap 8 s <
        // 16.5 s threshold, end gap 7 s: extrapolated 30 * 60/45 = 40; the
        // zero point (15 s before the first sample) is further than 8 s.
        assert!(close(
            one("increase(c_total[1m])", &d, 67_000),
            30.0 * (45.0 + 8.0 + 7.0) / 45.0
        ));
        // Across the reset at 120 s: [90s, 150s] holds 60,70,5,15,25: the
        // reset adds back 70, increase = 25 - 60 + 70 = 35.
        assert!(close(one("increase(c_total[1m])", &d, 150_000), 35.0));
        assert!(close(one("resets(c_total[1m])", &d, 150_000), 1.0));
        assert!(close(one("changes(c_total[1m])", &d, 150_000), 4.0));
        // irate across the reset: last value 25 minus 15 over 15 s.
        assert!(close(one("irate(c_total[1m])", &d, 150_000), 10.0 / 15.0));
        assert!(
            close(one("irate(c_total[1m])", &d, 120_000), 5.0 / 15.0),
            "reset: last value / interval"
        );
        assert!(close(one("idelta(c_total[1m])", &d, 120_000), -65.0));
        // One sample is not enough for a rate.
        assert!(vector("rate(c_total[10s])", &d, 60_000).is_empty());
    }

    #[test]
    fn counter_extrapolation_stops_at_zero() {
        // 10 at 20s, 20 at 30s, 30 at 40s in window [0, 40s]: the zero
        // point lies 10 s before the first sample, nearer than the 20 s
        // gap, and within the 11 s threshold, so 10 s are added.
        let d = vec![series("c_total", &[(20_000, 10.0), (30_000, 20.0), (40_000, 30.0)])];
        assert!(close(one("increase(c_total[40s])", &d, 40_000), 30.0));
        // delta is not a counter: the 20 s gap exceeds the threshold, so
        // half an interval (5 s) is added.
        assert!(close(one("delta(c_total[40s])", &d, 40_000), 25.0));
        let d = vec![series("c_total", &[(5_000, 10.0), (15_000, 20.0), (25_000, 30.0)])];
        // Start gap 5 s, zero point 10 s away: extrapolate the 5 s.
        assert!(close(one("increase(c_total[25s])", &d, 25_000), 20.0 * 25.0 / 20.0));
        let d = vec![series("g", &[(5_000, 1.0), (15_000, 1.5), (25_000, 3.0)])];
        assert!(close(one("increase(g[25s])", &d, 25_000), 2.0 * 25.0 / 20.0));
    }

    #[test]
    fn regression_functions() {
        let d = vec![series("g", &[(0, 1.0), (10_000, 3.0), (20_000, 5.0)])];
        assert!(close(one("deriv(g[1m])", &d, 20_000), 0.2));
        // At 20 s the fit is 5; 100 s later 5 + 20.
        assert!(close(one("predict_linear(g[1m], 100)", &d, 20_000), 25.0));
        let flat = vec![series("g", &[(0, 4.0), (10_000, 4.0)])];
        assert_eq!(one("deriv(g[1m])", &flat, 10_000), 0.0);
    }

    #[test]
    fn sliding_predict_linear_equals_fitting_each_window_afresh() {
        // Irregular scrapes of a large, drifting, noisy gauge with a flat
        // stretch, a NaN, an infinity and a gap longer than the window.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut t, mut v) = (0_i64, 8.6e11);
        let mut samples = Vec::new();
        for i in 0..2500 {
            v -= (next() % 200_000) as f64 + 0.25;
            let value = match i {
                300..=420 => 7.5e11,
                700 => f64::NAN,
                1200 => f64::INFINITY,
                _ => v,
            };
            if !(1500..1700).contains(&i) {
                samples.push((t, value));
            }
            t += 10_000 + (next() % 10_001) as i64;
        }
        let d = vec![series("g", &samples)];
        let end = t - 1;
        for (q, at_q) in [
            ("predict_linear(g[5m], 600)", "predict_linear(g[5m] @ {t}, 600)"),
            (
                "predict_linear(g[1m] offset 2m, -30)",
                "predict_linear(g[1m] @ {t} offset 2m, -30)",
            ),
        ] {
            let Value::Matrix(m) = range(q, &d, 0, end, 10_000).unwrap() else {
                panic!("{q}")
            };
            let got: std::collections::HashMap<i64, f64> = m[0].points.iter().copied().collect();
            let mut checked = 0;
            for step in (0..=end).step_by(10_000) {
                let secs = format!("{}.{:03}", step / 1000, step % 1000);
                let afresh = vector(&at_q.replace("{t}", &secs), &d, step);
                match (got.get(&step), afresh.first()) {
                    (Some(a), Some((_, b))) => {
                        assert!(close(*a, *b), "{q} at {step}: {a} vs {b}");
                        checked += 1;
                    }
                    (None, None) => {}
                    other => panic!("{q} at {step}: {other:?}"),
                }
            }
            assert!(checked > 3000, "{q}: {checked}");
        }
    }

    #[test]
    fn sliding_max_and_min_over_time_equal_scanning_each_window() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut t = 0_i64;
        let mut samples = Vec::new();
        for i in 0..3000 {
            let value = match next() % 23 {
                0 => f64::NAN,
                1 => 0.0,
                2 => -0.0,
                3 => f64::INFINITY,
                4 => f64::NEG_INFINITY,
                _ => (next() % 50) as f64,
            };
            // A run of NaNs longer than the window, and a gap.
            let value = if (900..960).contains(&i) { f64::NAN } else { value };
            if !(2000..2100).contains(&i) {
                samples.push((t, value));
            }
            t += 5_000 + (next() % 10_001) as i64;
        }
        let d = vec![series("g", &samples)];
        let end = t - 1;
        for f in ["max_over_time", "min_over_time"] {
            let q = format!("{f}(g[2m])");
            let Value::Matrix(m) = range(&q, &d, 0, end, 10_000).unwrap() else {
                panic!("{q}")
            };
            let got: std::collections::HashMap<i64, f64> = m[0].points.iter().copied().collect();
            let mut checked = 0;
            for step in (0..=end).step_by(10_000) {
                let secs = format!("{}.{:03}", step / 1000, step % 1000);
                let afresh = vector(&format!("{f}(g[2m] @ {secs})"), &d, step);
                match (got.get(&step), afresh.first()) {
                    (Some(a), Some((_, b))) => {
                        assert!(
                            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                            "{q} at {step}: {a} vs {b}"
                        );
                        checked += 1;
                    }
                    (None, None) => {}
                    other => panic!("{q} at {step}: {other:?}"),
                }
            }
            assert!(checked > 2500, "{q}: {checked}");
        }
    }

    #[test]
    fn over_time_aggregations() {
        let d = vec![series(
            "g{i=\"a\"}",
            &[(0, 1.0), (10_000, 4.0), (20_000, 2.0), (30_000, 8.0)],
        )];
        let at = 30_000;
        let check = |q: &str, want: f64| {
            let got = one(q, &d, at);
            assert!(close(got, want), "{q}: {got} != {want}");
        };
        check("avg_over_time(g[1m])", 3.75);
        check("min_over_time(g[1m])", 1.0);
        check("max_over_time(g[1m])", 8.0);
        check("sum_over_time(g[1m])", 15.0);
        check("count_over_time(g[1m])", 4.0);
        check("last_over_time(g[1m])", 8.0);
        check("present_over_time(g[1m])", 1.0);
        check("quantile_over_time(0.5, g[1m])", 3.0);
        check("quantile_over_time(0, g[1m])", 1.0);
        check("stdvar_over_time(g[1m])", 7.1875);
        check("stddev_over_time(g[1m])", 7.1875_f64.sqrt());
        assert_eq!(one("quantile_over_time(2, g[1m])", &d, at), f64::INFINITY);
        // Window closed at the start: [10s, 30s] holds three samples.
        check("count_over_time(g[20s])", 3.0);
        // Only last_over_time keeps the metric name.
        assert_eq!(vector("last_over_time(g[1m])", &d, at)[0].0, "g{i=\"a\"}");
        assert_eq!(vector("max_over_time(g[1m])", &d, at)[0].0, "{i=\"a\"}");
    }

    #[test]
    fn stale_markers_are_not_samples_in_ranges() {
        let stale = f64::from_bits(STALE_NAN_BITS);
        let d = vec![series("g", &[(0, 1.0), (10_000, stale), (20_000, 3.0)])];
        assert_eq!(one("count_over_time(g[1m])", &d, 20_000), 2.0);
        assert_eq!(one("sum_over_time(g[1m])", &d, 20_000), 4.0);
    }

    #[test]
    fn absent_over_time_labels_from_equality_matchers() {
        let d = vec![series("g{i=\"a\"}", &[(0, 1.0)])];
        assert!(vector("absent_over_time(g[1m])", &d, 30_000).is_empty());
        assert_eq!(
            vector("absent_over_time(nope{i=\"x\",j=~\"y\"}[1m])", &d, 30_000),
            vec![("{i=\"x\"}".into(), 1.0)]
        );
        let Value::Matrix(m) = range("absent_over_time(g[1m])", &d, 0, 120_000, 30_000).unwrap() else {
            panic!()
        };
        assert_eq!(m[0].points, vec![(90_000, 1.0), (120_000, 1.0)]);
    }

    #[test]
    fn subqueries_feed_range_functions() {
        let d = counter();
        // rate over 1m of a 15 s subquery equals the plain rate when the
        // subquery lands on the raw samples.
        let a = one("max_over_time(c_total[1m:15s])", &d, 105_000);
        assert_eq!(a, 70.0);
        let b = one("sum_over_time(rate(c_total[30s])[1m:30s])", &d, 60_000);
        // Points at 0 (no rate: one sample), 30 s and 60 s.
        assert!(close(b, 2.0 * 20.0 / 30.0), "{b}");
        let c = one("count_over_time(c_total[1m:])", &d, 60_000);
        assert_eq!(c, 2.0, "default step 1m: points at 0 and 60 s");
    }

    #[test]
    fn duplicate_series_after_dropping_names_fail() {
        let d = vec![series("a{i=\"x\"}", &[(0, 1.0)]), series("b{i=\"x\"}", &[(0, 2.0)])];
        let err = instant("rate({i=\"x\"}[1m])", &d, 0);
        assert!(err.is_ok(), "single samples produce no rate, so no duplicate");
        let err = instant("sum_over_time({i=\"x\"}[1m])", &d, 0).unwrap_err();
        assert_eq!(err.to_string(), "vector cannot contain metrics with the same labelset");
    }
}
