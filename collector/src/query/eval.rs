//! PromQL evaluation, written as pure functions over already selected
//! series so that it is tested with literal data and never needs a store.
//!
//! A parsed expression is first turned into a [`Plan`] (rejecting what is
//! not supported yet with a message naming the construct); the caller asks
//! the plan which samples it needs ([`Selector::window`]), fetches them, and
//! evaluates with [`eval_instant`] or [`eval_range`]. Semantics follow
//! Prometheus 3: an instant vector selector at time `t` takes the newest
//! sample in `(t - 5m, t]`, a stale marker as that sample means "no value",
//! and every output sample is stamped with the evaluation time.

use std::time::{Duration, SystemTime};

use promql_parser::label::MatchOp as ParserMatchOp;
use promql_parser::parser::{AtModifier, Expr, Offset, VectorSelector};

use crate::model::{Labels, METRIC_NAME, MatchOp, Matcher, SeriesSamples, is_stale_marker};

/// How far back an instant vector selector looks for a sample (Prometheus's
/// default `--query.lookback-delta`).
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// Most points one query may produce, Prometheus's `--query.max-samples`
/// default; bounds the memory one request can take.
pub const MAX_SAMPLES: usize = 50_000_000;

/// Why an expression cannot be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// Valid PromQL that hostpulse does not evaluate yet (a client error:
    /// the same query will keep failing).
    #[error(
        "{0} not supported yet by hostpulse (supported: vector selectors with offset/@, number and string literals)"
    )]
    Unsupported(String),
    /// The query does not fit the request, e.g. a string in a range query.
    #[error("{0}")]
    BadQuery(String),
    /// The result would exceed [`MAX_SAMPLES`].
    #[error("query processing would load too many samples into memory in query execution")]
    TooManySamples,
}

/// What a supported expression evaluates.
#[derive(Debug, Clone)]
pub enum Plan {
    /// A number literal.
    Number(f64),
    /// A string literal.
    String(String),
    /// An instant vector selector.
    Selector(Selector),
}

/// A vector selector ready to run: store matchers plus time shifts.
#[derive(Debug, Clone)]
pub struct Selector {
    /// Label matchers, the metric name included as a `__name__` matcher.
    pub matchers: Vec<Matcher>,
    /// `offset`, in ms; negative offsets look forward.
    pub offset_ms: i64,
    /// `@` modifier, if any.
    pub at: Option<At>,
}

/// The `@` modifier of a selector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum At {
    /// `@ start()`: the query's start time.
    Start,
    /// `@ end()`: the query's end time.
    End,
    /// `@ <unix seconds>`, in ms.
    Ms(i64),
}

impl Plan {
    /// Turns a parsed expression into a plan, or names the unsupported
    /// construct.
    pub fn from_expr(expr: &Expr) -> Result<Plan, EvalError> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Plan::Number(n.val)),
            Expr::StringLiteral(s) => Ok(Plan::String(s.val.clone())),
            // Parentheses change nothing for a single operand.
            Expr::Paren(p) => Plan::from_expr(&p.expr),
            Expr::VectorSelector(vs) => Selector::from_parsed(vs).map(Plan::Selector),
            Expr::MatrixSelector(_) => Err(unsupported("range vector selectors (`metric[5m]`) are")),
            Expr::Aggregate(a) => Err(unsupported(&format!("aggregation `{}` is", a.op))),
            Expr::Binary(b) => Err(unsupported(&format!("binary operator `{}` is", b.op))),
            Expr::Unary(_) => Err(unsupported("unary minus on a vector is")),
            Expr::Subquery(_) => Err(unsupported("subqueries are")),
            Expr::Call(c) => Err(unsupported(&format!("function `{}()` is", c.func.name))),
            Expr::Extension(_) => Err(unsupported("extension expressions are")),
        }
    }
}

fn unsupported(what: &str) -> EvalError {
    EvalError::Unsupported(what.to_string())
}

impl Selector {
    /// Converts the parser's selector into store matchers and time shifts.
    pub fn from_parsed(vs: &VectorSelector) -> Result<Selector, EvalError> {
        if !vs.matchers.or_matchers.is_empty() {
            return Err(unsupported("`or` between label matchers is"));
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
        let offset_ms = match &vs.offset {
            None => 0,
            Some(Offset::Pos(d)) => duration_ms(d),
            Some(Offset::Neg(d)) => -duration_ms(d),
        };
        let at = vs.at.as_ref().map(|at| match at {
            AtModifier::Start => At::Start,
            AtModifier::End => At::End,
            AtModifier::At(t) => At::Ms(system_time_ms(*t)),
        });
        Ok(Selector {
            matchers,
            offset_ms,
            at,
        })
    }

    /// The time whose newest sample answers an evaluation at `t` of a query
    /// spanning `[start, end]`.
    pub fn reference_time(&self, t: i64, start: i64, end: i64) -> i64 {
        let base = match self.at {
            None => t,
            Some(At::Start) => start,
            Some(At::End) => end,
            Some(At::Ms(ms)) => ms,
        };
        base.saturating_sub(self.offset_ms)
    }

    /// The inclusive sample window `[from, to]` that evaluating this
    /// selector over `[start, end]` reads.
    pub fn window(&self, start: i64, end: i64) -> (i64, i64) {
        let first = self.reference_time(start, start, end);
        let last = self.reference_time(end, start, end);
        (first.saturating_sub(LOOKBACK_MS).saturating_add(1), last)
    }
}

fn duration_ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn system_time_ms(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => duration_ms(&d),
        Err(before) => -duration_ms(&before.duration()),
    }
}

/// One sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Series labels, `__name__` included.
    pub labels: Labels,
    /// Evaluation time, ms.
    pub t: i64,
    /// Value.
    pub v: f64,
}

/// One series of a range result.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Series labels (empty for a scalar evaluated over a range).
    pub labels: Labels,
    /// `(evaluation time ms, value)`, ascending.
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
    /// An instant vector, sorted by labels.
    Vector(Vec<Sample>),
    /// A range result, sorted by labels.
    Matrix(Vec<Series>),
}

/// The value of a series at reference time `t`: its newest sample in
/// `(t - 5m, t]`, unless that sample is a stale marker.
pub fn instant_value(samples: &[(i64, f64)], t: i64) -> Option<f64> {
    // Index of the first sample after `t`; the one before it is the newest
    // at or before `t`.
    let after = samples.partition_point(|(ts, _)| *ts <= t);
    let (ts, v) = *samples.get(after.checked_sub(1)?)?;
    if ts <= t.saturating_sub(LOOKBACK_MS) || is_stale_marker(v) {
        return None;
    }
    Some(v)
}

/// Evaluates an instant query at `t`. `data` must hold what the plan's
/// [`Selector::window`] for `[t, t]` covers (ignored for literals).
pub fn eval_instant(plan: &Plan, data: Vec<SeriesSamples>, t: i64) -> Result<Value, EvalError> {
    match plan {
        Plan::Number(v) => Ok(Value::Scalar { t, v: *v }),
        Plan::String(s) => Ok(Value::String { t, v: s.clone() }),
        Plan::Selector(sel) => {
            let reference = sel.reference_time(t, t, t);
            let mut out: Vec<Sample> = data
                .into_iter()
                .filter_map(|s| {
                    let v = instant_value(&s.samples, reference)?;
                    Some(Sample { labels: s.labels, t, v })
                })
                .collect();
            if out.len() > MAX_SAMPLES {
                return Err(EvalError::TooManySamples);
            }
            out.sort_by(|a, b| a.labels.cmp(&b.labels));
            Ok(Value::Vector(out))
        }
    }
}

/// Evaluates a range query at `start, start + step, ... <= end`. The caller
/// has validated `step_ms > 0` and `end >= start`.
pub fn eval_range(
    plan: &Plan,
    data: Vec<SeriesSamples>,
    start: i64,
    end: i64,
    step_ms: i64,
) -> Result<Value, EvalError> {
    let step_ms = step_ms.max(1);
    let steps = usize::try_from((end.saturating_sub(start)) / step_ms).unwrap_or(usize::MAX);
    let times = || (0..=steps).map_while(move |i| start.checked_add(i64::try_from(i).ok()?.checked_mul(step_ms)?));
    match plan {
        Plan::Number(v) => {
            if steps >= MAX_SAMPLES {
                return Err(EvalError::TooManySamples);
            }
            Ok(Value::Matrix(vec![Series {
                labels: Labels::default(),
                points: times().map(|t| (t, *v)).collect(),
            }]))
        }
        Plan::String(_) => Err(EvalError::BadQuery(
            "invalid expression type \"string\" for range query, must be Scalar or instant Vector".to_string(),
        )),
        Plan::Selector(sel) => {
            let mut total = 0_usize;
            let mut out = Vec::new();
            for s in data {
                let points: Vec<(i64, f64)> = times()
                    .filter_map(|t| Some((t, instant_value(&s.samples, sel.reference_time(t, start, end))?)))
                    .collect();
                if points.is_empty() {
                    continue;
                }
                total = total.saturating_add(points.len());
                if total > MAX_SAMPLES {
                    return Err(EvalError::TooManySamples);
                }
                out.push(Series {
                    labels: s.labels,
                    points,
                });
            }
            out.sort_by(|a, b| a.labels.cmp(&b.labels));
            Ok(Value::Matrix(out))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::STALE_NAN_BITS;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs)
    }

    fn series(instance: &str, samples: &[(i64, f64)]) -> SeriesSamples {
        SeriesSamples {
            labels: labels(&[("__name__", "node_load1"), ("instance", instance), ("job", "hostpulse")]),
            samples: samples.to_vec(),
        }
    }

    fn plan(q: &str) -> Result<Plan, EvalError> {
        Plan::from_expr(&promql_parser::parser::parse(q).unwrap())
    }

    fn selector(q: &str) -> Selector {
        match plan(q).unwrap() {
            Plan::Selector(s) => s,
            other => panic!("not a selector: {other:?}"),
        }
    }

    const MIN: i64 = 60_000;

    #[test]
    fn lookback_is_left_open_and_right_closed() {
        let s = [(10 * MIN, 1.0), (12 * MIN, 2.0)];
        let check = |t: i64, want: Option<f64>| assert_eq!(instant_value(&s, t), want, "t={t}");
        check(10 * MIN - 1, None);
        check(10 * MIN, Some(1.0));
        check(12 * MIN - 1, Some(1.0));
        check(12 * MIN, Some(2.0));
        check(17 * MIN - 1, Some(2.0));
        check(17 * MIN, None);
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

    #[test]
    fn instant_query_stamps_eval_time_and_sorts() {
        let data = vec![series("b", &[(MIN, 2.0)]), series("a", &[(MIN, 1.0)]), series("c", &[])];
        let v = eval_instant(&plan("node_load1").unwrap(), data, 2 * MIN).unwrap();
        let Value::Vector(samples) = v else { panic!("{v:?}") };
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].labels.get("instance"), "a");
        assert_eq!(samples[0].labels.metric_name(), "node_load1", "__name__ kept");
        assert_eq!((samples[0].t, samples[0].v), (2 * MIN, 1.0));
    }

    #[test]
    fn offset_and_at_shift_the_reference_time() {
        let sel = selector("node_load1 offset 5m");
        assert_eq!(sel.reference_time(10 * MIN, 0, 0), 5 * MIN);
        assert_eq!(sel.window(10 * MIN, 20 * MIN), (1, 15 * MIN));
        let sel = selector("node_load1 offset -1m");
        assert_eq!(sel.reference_time(10 * MIN, 0, 0), 11 * MIN);
        let sel = selector("node_load1 @ 120");
        assert_eq!(sel.at, Some(At::Ms(120_000)));
        assert_eq!(sel.reference_time(10 * MIN, 0, 0), 2 * MIN);
        assert_eq!(sel.window(0, 100 * MIN), (2 * MIN - LOOKBACK_MS + 1, 2 * MIN));
        let sel = selector("node_load1 @ end() offset 1m");
        assert_eq!(sel.reference_time(1, 0, 10 * MIN), 9 * MIN);
        let sel = selector("node_load1 @ start()");
        assert_eq!(sel.reference_time(5 * MIN, 1, 10 * MIN), 1);

        let data = vec![series("a", &[(MIN, 1.0), (6 * MIN, 6.0)])];
        let v = eval_instant(&plan("node_load1 offset 5m").unwrap(), data, 6 * MIN).unwrap();
        assert_eq!(
            v,
            Value::Vector(vec![Sample {
                labels: series("a", &[]).labels,
                t: 6 * MIN,
                v: 1.0
            }])
        );
    }

    #[test]
    fn selectors_translate_all_matcher_kinds() {
        let sel = selector(r#"{__name__="node_hwmon_temp_celsius",chip!="x",sensor=~"temp[0-9]+",instance!~"b.*"}"#);
        let l = labels(&[
            ("__name__", "node_hwmon_temp_celsius"),
            ("chip", "coretemp"),
            ("sensor", "temp1"),
            ("instance", "a"),
        ]);
        assert!(l.matches(&sel.matchers));
        let other = labels(&[("__name__", "node_hwmon_temp_celsius"), ("sensor", "temp1x")]);
        assert!(!other.matches(&sel.matchers), "regex is anchored");
        let named = selector(r#"node_load1{instance="a"}"#);
        assert_eq!(named.matchers.len(), 2);
        assert!(labels(&[("__name__", "node_load1"), ("instance", "a")]).matches(&named.matchers));
    }

    #[test]
    fn literals_and_unsupported_constructs() {
        assert_eq!(
            eval_instant(&plan("-2.5").unwrap(), vec![], 7).unwrap(),
            Value::Scalar { t: 7, v: -2.5 }
        );
        assert_eq!(
            eval_instant(&plan("(\"hi\")").unwrap(), vec![], 7).unwrap(),
            Value::String { t: 7, v: "hi".into() }
        );
        for (q, named) in [
            ("rate(x[5m])", "`rate()`"),
            ("sum(x)", "`sum`"),
            ("x + 1", "`+`"),
            ("x[5m]", "range vector"),
            ("-x", "unary"),
            ("x[5m:1m]", "subqueries"),
        ] {
            let err = plan(q).unwrap_err();
            assert!(matches!(err, EvalError::Unsupported(_)), "{q}");
            assert!(err.to_string().contains(named), "{q}: {err}");
        }
    }

    #[test]
    fn range_query_steps_from_start_to_end() {
        let data = vec![
            series("b", &[(0, 1.0), (MIN, 2.0)]),
            series("a", &[(30 * MIN, 3.0)]),
            series("c", &[(0, 9.0), (MIN, f64::from_bits(STALE_NAN_BITS))]),
        ];
        let v = eval_range(&plan("node_load1").unwrap(), data, 0, 2 * MIN + 1, MIN).unwrap();
        let Value::Matrix(m) = v else { panic!("{v:?}") };
        assert_eq!(m.len(), 2, "series a has no point in range and is dropped");
        assert_eq!(m[0].labels.get("instance"), "b");
        assert_eq!(m[0].points, vec![(0, 1.0), (MIN, 2.0), (2 * MIN, 2.0)]);
        assert_eq!(m[1].labels.get("instance"), "c");
        assert_eq!(m[1].points, vec![(0, 9.0)]);

        let v = eval_range(&plan("4").unwrap(), vec![], 0, 30_000, 15_000).unwrap();
        assert_eq!(
            v,
            Value::Matrix(vec![Series {
                labels: Labels::default(),
                points: vec![(0, 4.0), (15_000, 4.0), (30_000, 4.0)]
            }])
        );
        assert!(matches!(
            eval_range(&plan("\"s\"").unwrap(), vec![], 0, 1, 1),
            Err(EvalError::BadQuery(_))
        ));
    }
}
