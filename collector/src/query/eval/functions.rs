//! Functions over instant vectors and scalars, and the dispatch of every
//! function call: math (`abs`, `ceil`, `clamp*`, `exp`, `ln`, ...),
//! `time`, `timestamp`, `vector`, `scalar`, the date functions,
//! `label_replace`, `label_join`, `sort`, `sort_desc`, `absent` and
//! `histogram_quantile`, with Prometheus 2.42's metric-name rules (every
//! function here drops `__name__` except `sort`, `sort_desc` and the label
//! functions). Functions over range vectors are in `range.rs`.

use std::collections::HashMap;

use promql_parser::parser::{Call, Expr};

use super::range::{eval_range_function, is_range_function};
use super::{
    DUPLICATE_LABELSET, Evaluator, Grid, Sample, VSeries, Val, bad, drop_name, exec_err, merge_by_labels,
    selector_matchers, unwrap_parens,
};
use crate::model::{Labels, METRIC_NAME, MatchOp};
use crate::query::params::days_from_civil;

/// Evaluates a function call over `grid`.
pub(super) fn eval_call(ev: &mut Evaluator<'_>, call: &Call, grid: Grid) -> Result<Val, super::EvalError> {
    let name = call.func.name;
    let args: Vec<&Expr> = call.args.args.iter().map(|a| a.as_ref()).collect();
    if is_range_function(name) {
        return eval_range_function(ev, call, grid);
    }
    let n = grid.len();
    match name {
        "time" => Ok(Val::Scalar(grid.times().map(|t| t as f64 / 1000.0).collect())),
        "pi" => Ok(Val::Scalar(vec![std::f64::consts::PI; n])),
        "vector" => {
            let v = ev.eval_scalar(arg(&args, 0, name)?, grid)?;
            Ok(Val::Vector(vec![VSeries {
                labels: Labels::default(),
                vals: v.into_iter().map(Some).collect(),
            }]))
        }
        "scalar" => {
            let v = ev.eval_vector(arg(&args, 0, name)?, grid)?;
            Ok(Val::Scalar(
                (0..n)
                    .map(|i| {
                        let mut present = v.iter().filter_map(|s| s.vals[i]);
                        match (present.next(), present.next()) {
                            (Some(x), None) => x,
                            _ => f64::NAN,
                        }
                    })
                    .collect(),
            ))
        }
        "timestamp" => {
            let inner = unwrap_parens(arg(&args, 0, name)?);
            let series = match inner {
                // A selector's samples keep their own times; anything else
                // is stamped with the evaluation time.
                Expr::VectorSelector(vs) => ev.vector_selector(vs, grid, true)?,
                other => {
                    let mut v = ev.eval_vector(other, grid)?;
                    for s in &mut v {
                        for (i, x) in s.vals.iter_mut().enumerate() {
                            if x.is_some() {
                                *x = Some(grid.time(i) as f64 / 1000.0);
                            }
                        }
                    }
                    v
                }
            };
            map_dropping_name(series, |v, _| Some(v))
        }
        "absent" => {
            let e = arg(&args, 0, name)?;
            let v = ev.eval_vector(e, grid)?;
            let vals: Vec<Option<f64>> = (0..n)
                .map(|i| (!v.iter().any(|s| s.vals[i].is_some())).then_some(1.0))
                .collect();
            if vals.iter().all(Option::is_none) {
                return Ok(Val::Vector(Vec::new()));
            }
            Ok(Val::Vector(vec![VSeries {
                labels: absent_labels(e),
                vals,
            }]))
        }
        "sort" | "sort_desc" => Ok(Val::Vector(ev.eval_vector(arg(&args, 0, name)?, grid)?)),
        "label_replace" => label_replace(ev, &args, grid),
        "label_join" => label_join(ev, &args, grid),
        "histogram_quantile" => {
            let q = ev.eval_scalar(arg(&args, 0, name)?, grid)?;
            let v = ev.eval_vector(arg(&args, 1, name)?, grid)?;
            histogram_quantile(&q, v, n)
        }
        "clamp" => {
            let v = ev.eval_vector(arg(&args, 0, name)?, grid)?;
            let lo = ev.eval_scalar(arg(&args, 1, name)?, grid)?;
            let hi = ev.eval_scalar(arg(&args, 2, name)?, grid)?;
            // An empty range (max < min) yields nothing at that step.
            map_dropping_name(v, |x, i| {
                (hi[i] >= lo[i] || lo[i].is_nan() || hi[i].is_nan()).then(|| go_max(lo[i], go_min(hi[i], x)))
            })
        }
        "clamp_min" | "clamp_max" => {
            let v = ev.eval_vector(arg(&args, 0, name)?, grid)?;
            let bound = ev.eval_scalar(arg(&args, 1, name)?, grid)?;
            let is_min = name == "clamp_min";
            map_dropping_name(v, |x, i| {
                Some(if is_min {
                    go_max(bound[i], x)
                } else {
                    go_min(bound[i], x)
                })
            })
        }
        "round" => {
            let v = ev.eval_vector(arg(&args, 0, name)?, grid)?;
            let to = match args.get(1) {
                Some(e) => ev.eval_scalar(e, grid)?,
                None => vec![1.0; n],
            };
            map_dropping_name(v, |x, i| {
                let inverse = 1.0 / to[i];
                Some((x * inverse + 0.5).floor() / inverse)
            })
        }
        "days_in_month" | "day_of_month" | "day_of_week" | "day_of_year" | "hour" | "minute" | "month" | "year" => {
            let v = match args.first() {
                Some(e) => ev.eval_vector(e, grid)?,
                // No argument: the evaluation time, as `vector(time())`.
                None => vec![VSeries {
                    labels: Labels::default(),
                    vals: grid.times().map(|t| Some(t as f64 / 1000.0)).collect(),
                }],
            };
            let f = date_function(name).ok_or_else(|| bad(format!("unknown function {name}()")))?;
            map_dropping_name(v, |x, _| Some(f(x)))
        }
        _ => match math_function(name) {
            Some(f) => {
                let v = ev.eval_vector(arg(&args, 0, name)?, grid)?;
                map_dropping_name(v, |x, _| Some(f(x)))
            }
            None => Err(bad(format!("function {name}() is not supported by hostpulse"))),
        },
    }
}

fn arg<'e>(args: &[&'e Expr], i: usize, name: &str) -> Result<&'e Expr, super::EvalError> {
    args.get(i)
        .copied()
        .ok_or_else(|| bad(format!("missing argument {} of {name}()", i + 1)))
}

/// Applies `f(value, step)` to every value, dropping `__name__`, then
/// checks for duplicate label sets at each step.
fn map_dropping_name(series: Vec<VSeries>, f: impl Fn(f64, usize) -> Option<f64>) -> Result<Val, super::EvalError> {
    let out: Vec<VSeries> = series
        .into_iter()
        .map(|s| VSeries {
            labels: drop_name(&s.labels),
            vals: s
                .vals
                .into_iter()
                .enumerate()
                .map(|(i, v)| v.and_then(|x| f(x, i)))
                .collect(),
        })
        .collect();
    Ok(Val::Vector(merge_by_labels(out, DUPLICATE_LABELSET)?))
}

/// Go's `math.Max`: NaN wins.
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) }
}

/// Go's `math.Min`: NaN wins.
fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() { f64::NAN } else { a.min(b) }
}

fn math_function(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sqrt" => f64::sqrt,
        "sgn" => |x| {
            if x < 0.0 {
                -1.0
            } else if x > 0.0 {
                1.0
            } else {
                x
            }
        },
        "sin" => f64::sin,
        "cos" => f64::cos,
        "tan" => f64::tan,
        "asin" => f64::asin,
        "acos" => f64::acos,
        "atan" => f64::atan,
        "sinh" => f64::sinh,
        "cosh" => f64::cosh,
        "tanh" => f64::tanh,
        "asinh" => f64::asinh,
        "acosh" => f64::acosh,
        "atanh" => f64::atanh,
        "deg" => f64::to_degrees,
        "rad" => f64::to_radians,
        _ => return None,
    })
}

/// A civil date in UTC from unix seconds.
struct Civil {
    year: i64,
    month: i64,
    day: i64,
    yday: i64,
    wday: i64,
    hour: i64,
    minute: i64,
}

fn civil(secs: f64) -> Civil {
    // Go converts with `int64(v)`, truncating toward zero.
    let secs = secs as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let yday = days - days_from_civil(year, 1, 1) + 1;
    Civil {
        year,
        month,
        day,
        yday,
        wday: (days + 4).rem_euclid(7),
        hour: rem / 3600,
        minute: rem % 3600 / 60,
    }
}

fn date_function(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "day_of_month" => |v| civil(v).day as f64,
        "day_of_week" => |v| civil(v).wday as f64,
        "day_of_year" => |v| civil(v).yday as f64,
        "hour" => |v| civil(v).hour as f64,
        "minute" => |v| civil(v).minute as f64,
        "month" => |v| civil(v).month as f64,
        "year" => |v| civil(v).year as f64,
        "days_in_month" => |v| {
            let c = civil(v);
            let (ny, nm) = if c.month == 12 {
                (c.year + 1, 1)
            } else {
                (c.year, c.month + 1)
            };
            (days_from_civil(ny, nm, 1) - days_from_civil(c.year, c.month, 1)) as f64
        },
        _ => return None,
    })
}

/// Labels of `absent()`'s answer: the selector's equality matchers, except
/// the metric name and any label matched more than once or otherwise.
pub(super) fn absent_labels(expr: &Expr) -> Labels {
    let vs = match unwrap_parens(expr) {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::default(),
    };
    let Ok(matchers) = selector_matchers(vs) else {
        return Labels::default();
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut dropped: Vec<&str> = Vec::new();
    for m in &matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        match &m.op {
            MatchOp::Equal(v) if !pairs.iter().any(|(k, _)| *k == m.name) => pairs.push((m.name.clone(), v.clone())),
            _ => dropped.push(&m.name),
        }
    }
    pairs.retain(|(k, _)| !dropped.contains(&k.as_str()));
    Labels::new(pairs)
}

/// Orders an instant query's answer by value as `sort`/`sort_desc` do
/// (NaN last either way).
pub(super) fn sort_samples(samples: &mut [Sample], desc: bool) {
    samples.sort_by(|a, b| match (a.v.is_nan(), b.v.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ if desc => b.v.partial_cmp(&a.v).unwrap_or(std::cmp::Ordering::Equal),
        _ => a.v.partial_cmp(&b.v).unwrap_or(std::cmp::Ordering::Equal),
    });
}

fn string_arg(e: &Expr, what: &str) -> Result<String, super::EvalError> {
    match unwrap_parens(e) {
        Expr::StringLiteral(s) => Ok(s.val.clone()),
        _ => Err(bad(format!("{what} must be a string literal"))),
    }
}

pub(super) fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Replaces label `name` of `labels` by `value` (removing it when empty).
fn with_label(labels: &Labels, name: &str, value: String) -> Labels {
    let mut pairs: Vec<(String, String)> = labels.pairs().iter().filter(|(k, _)| k != name).cloned().collect();
    pairs.push((name.to_string(), value));
    Labels::new(pairs)
}

fn label_replace(ev: &mut Evaluator<'_>, args: &[&Expr], grid: Grid) -> Result<Val, super::EvalError> {
    let name = "label_replace";
    let dst = string_arg(arg(args, 1, name)?, "label_replace()'s destination label")?;
    let replacement = string_arg(arg(args, 2, name)?, "label_replace()'s replacement")?;
    let src = string_arg(arg(args, 3, name)?, "label_replace()'s source label")?;
    let pattern = string_arg(arg(args, 4, name)?, "label_replace()'s regex")?;
    let re = regex::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| bad(format!("invalid regular expression in label_replace(): {pattern}: {e}")))?;
    if !valid_label_name(&dst) {
        return Err(bad(format!("invalid destination label name in label_replace(): {dst}")));
    }
    let v = ev.eval_vector(arg(args, 0, name)?, grid)?;
    let out: Vec<VSeries> = v
        .into_iter()
        .map(|s| {
            let labels = match re.captures(s.labels.get(&src)) {
                Some(caps) => {
                    let mut value = String::new();
                    caps.expand(&replacement, &mut value);
                    with_label(&s.labels, &dst, value)
                }
                None => s.labels,
            };
            VSeries { labels, vals: s.vals }
        })
        .collect();
    Ok(Val::Vector(merge_by_labels(out, DUPLICATE_LABELSET)?))
}

fn label_join(ev: &mut Evaluator<'_>, args: &[&Expr], grid: Grid) -> Result<Val, super::EvalError> {
    let name = "label_join";
    let dst = string_arg(arg(args, 1, name)?, "label_join()'s destination label")?;
    let sep = string_arg(arg(args, 2, name)?, "label_join()'s separator")?;
    let srcs = args
        .iter()
        .skip(3)
        .map(|e| string_arg(e, "label_join()'s source labels"))
        .collect::<Result<Vec<_>, _>>()?;
    if !valid_label_name(&dst) {
        return Err(bad(format!("invalid destination label name in label_join(): {dst}")));
    }
    let v = ev.eval_vector(arg(args, 0, name)?, grid)?;
    let out: Vec<VSeries> = v
        .into_iter()
        .map(|s| {
            let joined = srcs.iter().map(|k| s.labels.get(k)).collect::<Vec<_>>().join(&sep);
            VSeries {
                labels: with_label(&s.labels, &dst, joined),
                vals: s.vals,
            }
        })
        .collect();
    Ok(Val::Vector(merge_by_labels(out, DUPLICATE_LABELSET)?))
}

/// `histogram_quantile(φ, buckets)` over classic `le` buckets, per step
/// and per label set without `le`, as Prometheus's `bucketQuantile`.
fn histogram_quantile(q: &[f64], input: Vec<VSeries>, n: usize) -> Result<Val, super::EvalError> {
    // Group bucket series once; `le` values that are not numbers are
    // ignored, as in Prometheus.
    let mut groups: HashMap<Labels, Vec<(f64, usize)>> = HashMap::new();
    let mut order: Vec<Labels> = Vec::new();
    for (idx, s) in input.iter().enumerate() {
        let Ok(upper) = s.labels.get("le").parse::<f64>() else {
            continue;
        };
        let key = Labels::new(
            s.labels
                .pairs()
                .iter()
                .filter(|(k, _)| k != "le" && k != METRIC_NAME)
                .cloned()
                .collect(),
        );
        groups
            .entry(key.clone())
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push((upper, idx));
    }
    let mut out = Vec::with_capacity(order.len());
    for key in order {
        let members = groups.remove(&key).unwrap_or_default();
        let vals: Vec<Option<f64>> = (0..n)
            .map(|i| {
                let buckets: Vec<(f64, f64)> = members
                    .iter()
                    .filter_map(|(upper, idx)| Some((*upper, input[*idx].vals[i]?)))
                    .collect();
                (!buckets.is_empty()).then(|| bucket_quantile(q.get(i).copied().unwrap_or(f64::NAN), buckets))
            })
            .collect();
        out.push(VSeries { labels: key, vals });
    }
    if out.is_empty() {
        return Ok(Val::Vector(out));
    }
    merge_by_labels(out, DUPLICATE_LABELSET)
        .map(Val::Vector)
        .map_err(|_| exec_err(DUPLICATE_LABELSET))
}

fn bucket_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    if !buckets.last().is_some_and(|b| b.0 == f64::INFINITY) {
        return f64::NAN;
    }
    // Buckets with the same bound (e.g. `1` and `1.0`) are added up.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for (upper, count) in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == upper => last.1 += count,
            _ => merged.push((upper, count)),
        }
    }
    // Counts must not fall with the bound; scrape races can make them.
    let mut max = f64::NEG_INFINITY;
    for b in &mut merged {
        if b.1 > max {
            max = b.1;
        } else if b.1 < max {
            b.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = merged[..merged.len() - 1].partition_point(|b| b.1 < rank);
    if b == merged.len() - 1 {
        return merged[merged.len() - 2].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let mut start = 0.0;
    let end = merged[b].0;
    let mut count = merged[b].1;
    if b > 0 {
        start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::Value;
    use super::super::test_support::*;
    use super::*;

    fn data() -> Vec<crate::model::SeriesSamples> {
        vec![
            series("temp{chip=\"c0\",sensor=\"temp1\"}", &[(0, -2.5), (60_000, 41.26)]),
            series("temp{chip=\"c1\",sensor=\"temp1\"}", &[(0, 9.0), (60_000, 64.0)]),
        ]
    }

    #[test]
    fn math_functions_drop_the_name() {
        let d = data();
        let t = 60_000;
        assert_eq!(
            vector("abs(temp{chip=\"c0\"})", &d, 0),
            vec![("{chip=\"c0\",sensor=\"temp1\"}".into(), 2.5)]
        );
        assert_eq!(one("ceil(temp{chip=\"c0\"})", &d, t), 42.0);
        assert_eq!(one("floor(temp{chip=\"c0\"})", &d, t), 41.0);
        assert_eq!(one("round(temp{chip=\"c0\"})", &d, t), 41.0);
        assert_eq!(one("round(temp{chip=\"c0\"}, 0.5)", &d, t), 41.5);
        assert_eq!(one("round(temp{chip=\"c0\"}, 10)", &d, 0), 0.0, "-2.5 rounds half up");
        assert_eq!(one("sqrt(temp{chip=\"c1\"})", &d, t), 8.0);
        assert_eq!(one("log2(temp{chip=\"c1\"})", &d, t), 6.0);
        assert!(close(one("log10(temp{chip=\"c1\"})", &d, t), 64_f64.log10()));
        assert!(close(one("ln(temp{chip=\"c1\"})", &d, t), 64_f64.ln()));
        assert!(close(one("exp(temp{chip=\"c0\"})", &d, 0), (-2.5_f64).exp()));
        assert_eq!(one("sgn(temp{chip=\"c0\"})", &d, 0), -1.0);
        assert!(one("sqrt(temp{chip=\"c0\"})", &d, 0).is_nan());
        assert_eq!(one("clamp(temp{chip=\"c1\"}, 10, 50)", &d, t), 50.0);
        assert_eq!(one("clamp(temp{chip=\"c1\"}, 10, 50)", &d, 0), 10.0);
        assert!(
            vector("clamp(temp, 50, 10)", &d, t).is_empty(),
            "max < min yields nothing"
        );
        assert_eq!(one("clamp_min(temp{chip=\"c0\"}, 0)", &d, 0), 0.0);
        assert_eq!(one("clamp_max(temp{chip=\"c1\"}, 60)", &d, t), 60.0);
        assert!(one("clamp_max(temp{chip=\"c1\"}, NaN)", &d, t).is_nan());
    }

    #[test]
    fn time_vector_scalar_timestamp() {
        let d = data();
        assert_eq!(scalar("time()", &d, 90_000), 90.0);
        assert_eq!(vector("vector(3)", &d, 0), vec![("{}".into(), 3.0)]);
        assert_eq!(scalar("scalar(temp{chip=\"c1\"})", &d, 60_000), 64.0);
        assert!(scalar("scalar(temp)", &d, 60_000).is_nan(), "two elements");
        assert!(scalar("scalar(nothing)", &d, 60_000).is_nan());
        assert_eq!(one("timestamp(temp{chip=\"c1\"})", &d, 90_000), 60.0);
        assert_eq!(one("timestamp(abs(temp{chip=\"c1\"}))", &d, 90_000), 90.0);
    }

    #[test]
    fn date_functions_in_utc() {
        let d = data();
        // 2024-02-29T13:45:00Z, a Thursday.
        let t = 1_709_214_300_000;
        let check = |f: &str, want: f64| assert_eq!(scalar(&format!("scalar({f}())"), &d, t), want, "{f}");
        check("year", 2024.0);
        check("month", 2.0);
        check("day_of_month", 29.0);
        check("day_of_year", 60.0);
        check("day_of_week", 4.0);
        check("hour", 13.0);
        check("minute", 45.0);
        check("days_in_month", 29.0);
        assert_eq!(one("days_in_month(vector(0))", &d, 0), 31.0);
        assert_eq!(one("year(vector(-1))", &d, 0), 1969.0);
    }

    #[test]
    fn label_replace_and_join() {
        let d = data();
        let got = vector(
            r#"label_replace(temp{chip="c0"}, "n", "chip-$1", "chip", "c(.*)")"#,
            &d,
            0,
        );
        assert_eq!(
            got[0].0, "temp{chip=\"c0\",n=\"chip-0\",sensor=\"temp1\"}",
            "keeps the name"
        );
        let got = vector(r#"label_replace(temp{chip="c0"}, "n", "$1", "chip", "x(.*)")"#, &d, 0);
        assert_eq!(got[0].0, "temp{chip=\"c0\",sensor=\"temp1\"}", "no match: unchanged");
        let got = vector(r#"label_replace(temp{chip="c0"}, "chip", "", "chip", ".*")"#, &d, 0);
        assert_eq!(got[0].0, "temp{sensor=\"temp1\"}", "empty value removes the label");
        let err = instant(r#"label_replace(temp, "chip", "", "chip", ".*")"#, &d, 0).unwrap_err();
        assert_eq!(err.to_string(), DUPLICATE_LABELSET);
        assert!(instant(r#"label_replace(temp, "1x", "", "chip", ".*")"#, &d, 0).is_err());
        let got = vector(
            r#"label_join(temp{chip="c1"}, "id", "/", "chip", "sensor", "none")"#,
            &d,
            0,
        );
        assert_eq!(got[0].0, "temp{chip=\"c1\",id=\"c1/temp1/\",sensor=\"temp1\"}");
    }

    #[test]
    fn sort_orders_by_value_and_absent_labels() {
        let d = data();
        let asc = vector("sort(temp)", &d, 60_000);
        assert_eq!(asc.iter().map(|s| s.1).collect::<Vec<_>>(), vec![41.26, 64.0]);
        let desc = vector("sort_desc(temp)", &d, 60_000);
        assert_eq!(desc.iter().map(|s| s.1).collect::<Vec<_>>(), vec![64.0, 41.26]);
        assert_eq!(desc[0].0, "temp{chip=\"c1\",sensor=\"temp1\"}", "keeps the name");
        assert!(vector("absent(temp)", &d, 0).is_empty());
        assert_eq!(
            vector(r#"absent(nope{a="1",b=~"x",c="2",c="3"})"#, &d, 0),
            vec![("{a=\"1\"}".into(), 1.0)]
        );
        assert_eq!(vector("absent(sum(nope))", &d, 0), vec![("{}".into(), 1.0)]);
    }

    #[test]
    fn histogram_quantile_interpolates_within_buckets() {
        let b = |le: &str, v: f64| series(&format!("lat_bucket{{i=\"a\",le=\"{le}\"}}"), &[(0, v)]);
        let d = vec![
            b("0.1", 10.0),
            b("0.5", 60.0),
            b("1", 90.0),
            b("+Inf", 100.0),
            b("x", 5.0),
        ];
        assert!(close(
            one("histogram_quantile(0.5, lat_bucket)", &d, 0),
            0.1 + 0.4 * (40.0 / 50.0)
        ));
        assert!(close(one("histogram_quantile(0.05, lat_bucket)", &d, 0), 0.05));
        assert_eq!(
            one("histogram_quantile(0.99, lat_bucket)", &d, 0),
            1.0,
            "in +Inf bucket: highest bound"
        );
        assert_eq!(vector("histogram_quantile(0.5, lat_bucket)", &d, 0)[0].0, "{i=\"a\"}");
        assert_eq!(one("histogram_quantile(2, lat_bucket)", &d, 0), f64::INFINITY);
        let no_inf = vec![b("0.1", 10.0), b("1", 20.0)];
        assert!(one("histogram_quantile(0.5, lat_bucket)", &no_inf, 0).is_nan());
        // Non-monotonic counts are fixed up.
        let d = vec![b("1", 10.0), b("2", 8.0), b("+Inf", 10.0)];
        assert!(close(one("histogram_quantile(0.5, lat_bucket)", &d, 0), 0.5));
        let Value::Matrix(_) = range("histogram_quantile(0.5, lat_bucket)", &d, 0, 60_000, 30_000).unwrap() else {
            panic!()
        };
    }
}
