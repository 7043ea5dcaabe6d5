//! Aggregation operators: `sum avg min max count group stddev stdvar
//! quantile topk bottomk count_values` with `by`/`without`, computed per
//! step as Prometheus 2.42's `aggregation()` does (including its running
//! mean for `avg` and Welford's method for `stddev`/`stdvar`).
//!
//! Grouping keys depend only on labels, so each input series is assigned to
//! its group once; the per-step work is then arithmetic over slices.

use std::collections::HashMap;

use promql_parser::parser::{AggregateExpr, Expr, LabelModifier};

use super::range::quantile;
use super::{DUPLICATE_LABELSET, Evaluator, Grid, VSeries, Val, bad, merge_by_labels, unwrap_parens};
use crate::model::{Labels, METRIC_NAME};
use crate::query::api::format_go_fixed;

/// Evaluates an aggregation over `grid`.
pub(super) fn eval_aggregate(ev: &mut Evaluator<'_>, agg: &AggregateExpr, grid: Grid) -> Result<Val, super::EvalError> {
    let op = agg.op.to_string();
    let n = grid.len();
    let modifier = agg.modifier.as_ref();
    if op == "count_values" {
        let label = match agg.param.as_deref().map(unwrap_parens) {
            Some(Expr::StringLiteral(s)) => s.val.clone(),
            _ => return Err(bad("count_values() needs a string label name")),
        };
        if !super::functions::valid_label_name(&label) {
            return Err(super::exec_err(format!("invalid label name {label:?}")));
        }
        let input = ev.eval_vector(&agg.expr, grid)?;
        return Ok(Val::Vector(count_values(&input, &label, modifier, n)?));
    }
    let param = match (&agg.param, op.as_str()) {
        (Some(p), "topk" | "bottomk" | "quantile") => ev.eval_scalar(p, grid)?,
        (None, "topk" | "bottomk" | "quantile") => return Err(bad(format!("{op}() needs a parameter"))),
        _ => Vec::new(),
    };
    let input = ev.eval_vector(&agg.expr, grid)?;
    match op.as_str() {
        "topk" | "bottomk" => Ok(Val::Vector(top_k(input, &param, op == "topk", modifier, n)?)),
        _ => Ok(Val::Vector(reduce(&op, input, &param, modifier, n)?)),
    }
}

/// The output labels of a group: the `by` labels, or everything but the
/// `without` labels and the metric name; nothing without a modifier.
fn group_labels(labels: &Labels, modifier: Option<&LabelModifier>) -> Labels {
    match modifier {
        None => Labels::default(),
        Some(LabelModifier::Include(by)) => Labels::new(
            labels
                .pairs()
                .iter()
                .filter(|(k, _)| by.labels.iter().any(|b| b == k))
                .cloned()
                .collect(),
        ),
        Some(LabelModifier::Exclude(without)) => Labels::new(
            labels
                .pairs()
                .iter()
                .filter(|(k, _)| k != METRIC_NAME && !without.labels.iter().any(|w| w == k))
                .cloned()
                .collect(),
        ),
    }
}

/// Series indexes per group, groups in order of first appearance.
fn groups(input: &[VSeries], modifier: Option<&LabelModifier>) -> Vec<(Labels, Vec<usize>)> {
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut out: Vec<(Labels, Vec<usize>)> = Vec::new();
    for (i, s) in input.iter().enumerate() {
        let key = group_labels(&s.labels, modifier);
        match index.get(&key) {
            Some(&g) => out[g].1.push(i),
            None => {
                index.insert(key.clone(), out.len());
                out.push((key, vec![i]));
            }
        }
    }
    out
}

fn reduce(
    op: &str,
    input: Vec<VSeries>,
    param: &[f64],
    modifier: Option<&LabelModifier>,
    n: usize,
) -> Result<Vec<VSeries>, super::EvalError> {
    let mut out = Vec::new();
    let mut scratch: Vec<f64> = Vec::new();
    for (labels, members) in groups(&input, modifier) {
        if let Some(vals) = reduce_by_member(op, &input, &members, n) {
            out.push(VSeries { labels, vals });
            continue;
        }
        let mut vals = Vec::with_capacity(n);
        for i in 0..n {
            let mut present = members.iter().filter_map(|&m| input[m].vals[i]);
            let Some(first) = present.next() else {
                vals.push(None);
                continue;
            };
            let v = match op {
                "sum" => present.fold(first, |acc, x| acc + x),
                "min" => present.fold(first, |acc, x| if acc > x || acc.is_nan() { x } else { acc }),
                "max" => present.fold(first, |acc, x| if acc < x || acc.is_nan() { x } else { acc }),
                "count" => 1.0 + present.count() as f64,
                "group" => 1.0,
                "avg" => {
                    let (mut mean, mut count) = (first, 1.0_f64);
                    for x in present {
                        count += 1.0;
                        if mean.is_infinite() {
                            if x.is_infinite() && (mean > 0.0) == (x > 0.0) {
                                continue;
                            }
                            if !x.is_infinite() && !x.is_nan() {
                                continue;
                            }
                        }
                        // Dividing each term keeps large values from
                        // overflowing.
                        mean += x / count - mean / count;
                    }
                    mean
                }
                "stddev" | "stdvar" => {
                    let (mut mean, mut count, mut acc) = (first, 1.0_f64, 0.0_f64);
                    for x in present {
                        count += 1.0;
                        let delta = x - mean;
                        mean += delta / count;
                        acc += delta * (x - mean);
                    }
                    if op == "stddev" {
                        (acc / count).sqrt()
                    } else {
                        acc / count
                    }
                }
                "quantile" => {
                    scratch.clear();
                    scratch.push(first);
                    scratch.extend(present);
                    quantile(param.get(i).copied().unwrap_or(f64::NAN), &mut scratch)
                }
                other => return Err(bad(format!("aggregation {other}() is not supported by hostpulse"))),
            };
            vals.push(Some(v));
        }
        out.push(VSeries { labels, vals });
    }
    out.retain(|s| s.vals.iter().any(Option::is_some));
    Ok(out)
}

/// The common aggregations computed member by member over all steps at
/// once, rather than step by step over the members: each member's values
/// are then read in order instead of one cache line per member per step.
/// Within a step the members are still folded in the same order with the
/// same arithmetic as in `reduce`, so the results are identical bit for
/// bit. `None` for the operators this does not cover.
fn reduce_by_member(op: &str, input: &[VSeries], members: &[usize], n: usize) -> Option<Vec<Option<f64>>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Op {
        Sum,
        Min,
        Max,
        Count,
        Group,
        Avg,
    }
    let op = match op {
        "sum" => Op::Sum,
        "min" => Op::Min,
        "max" => Op::Max,
        "count" => Op::Count,
        "group" => Op::Group,
        "avg" => Op::Avg,
        _ => return None,
    };
    // Per step: the accumulator and how many members had a value.
    let mut acc = vec![0.0_f64; n];
    let mut count = vec![0.0_f64; n];
    for &m in members {
        let vals = input.get(m)?.vals.get(..n)?;
        for ((a, c), v) in acc.iter_mut().zip(count.iter_mut()).zip(vals) {
            let Some(x) = *v else { continue };
            if *c == 0.0 {
                *a = x;
                *c = 1.0;
                continue;
            }
            *c += 1.0;
            match op {
                Op::Sum => *a += x,
                Op::Min => {
                    if *a > x || a.is_nan() {
                        *a = x;
                    }
                }
                Op::Max => {
                    if *a < x || a.is_nan() {
                        *a = x;
                    }
                }
                Op::Count | Op::Group => {}
                Op::Avg => {
                    // As in `reduce`: an infinite mean stays unless a NaN
                    // or an infinity of the other sign arrives.
                    if a.is_infinite() {
                        if x.is_infinite() && (*a > 0.0) == (x > 0.0) {
                            continue;
                        }
                        if !x.is_infinite() && !x.is_nan() {
                            continue;
                        }
                    }
                    *a += x / *c - *a / *c;
                }
            }
        }
    }
    Some(
        acc.into_iter()
            .zip(count)
            .map(|(a, c)| {
                (c > 0.0).then_some(match op {
                    Op::Count => c,
                    Op::Group => 1.0,
                    _ => a,
                })
            })
            .collect(),
    )
}

/// `topk`/`bottomk`: the k largest (smallest) samples of each group at
/// each step, keeping their full labels. NaN ranks below every number for
/// `topk` and above every number for `bottomk`, as in Prometheus.
fn top_k(
    input: Vec<VSeries>,
    param: &[f64],
    top: bool,
    modifier: Option<&LabelModifier>,
    n: usize,
) -> Result<Vec<VSeries>, super::EvalError> {
    let mut keep: Vec<Vec<Option<f64>>> = vec![vec![None; n]; input.len()];
    // `a` ranks below `b` (is evicted first).
    let below = |a: f64, b: f64| {
        if top {
            a < b || (a.is_nan() && !b.is_nan())
        } else {
            a > b || (a.is_nan() && !b.is_nan())
        }
    };
    let mut chosen: Vec<(usize, f64)> = Vec::new();
    for (_, members) in groups(&input, modifier) {
        for (i, &k) in param.iter().enumerate().take(n) {
            if k.is_nan() || k.abs() >= 9.2e18 {
                return Err(super::exec_err(format!(
                    "Scalar value {} overflows int64",
                    format_go_fixed(k)
                )));
            }
            let k = k as i64;
            if k < 1 {
                continue;
            }
            chosen.clear();
            for &m in &members {
                let Some(v) = input[m].vals[i] else { continue };
                if (chosen.len() as i64) < k {
                    chosen.push((m, v));
                    continue;
                }
                // Replace the lowest-ranked kept sample if this one ranks
                // above it.
                let mut lowest = 0;
                for (j, c) in chosen.iter().enumerate().skip(1) {
                    if below(c.1, chosen[lowest].1) {
                        lowest = j;
                    }
                }
                if below(chosen[lowest].1, v) {
                    chosen[lowest] = (m, v);
                }
            }
            for &(m, v) in &chosen {
                keep[m][i] = Some(v);
            }
        }
    }
    Ok(input
        .into_iter()
        .zip(keep)
        .filter(|(_, vals)| vals.iter().any(Option::is_some))
        .map(|(s, vals)| VSeries { labels: s.labels, vals })
        .collect())
}

/// `count_values("label", v)`: per step, how many samples of each group
/// have each value, the value written into `label`.
fn count_values(
    input: &[VSeries],
    label: &str,
    modifier: Option<&LabelModifier>,
    n: usize,
) -> Result<Vec<VSeries>, super::EvalError> {
    let mut out: Vec<VSeries> = Vec::new();
    let mut index: HashMap<Labels, usize> = HashMap::new();
    for s in input {
        for (i, v) in s.vals.iter().enumerate() {
            let Some(v) = v else { continue };
            // The value label joins the series before grouping, so `by`
            // keeps it and `without` drops it only if listed.
            let mut pairs: Vec<(String, String)> =
                s.labels.pairs().iter().filter(|(k, _)| k != label).cloned().collect();
            pairs.push((label.to_string(), format_go_fixed(*v)));
            let with_value = Labels::new(pairs);
            let key = match modifier {
                Some(LabelModifier::Include(by)) => {
                    let mut by = by.clone();
                    by.labels.push(label.to_string());
                    group_labels(&with_value, Some(&LabelModifier::Include(by)))
                }
                other => {
                    let key = group_labels(&with_value, other);
                    if other.is_none() {
                        Labels::new(vec![(label.to_string(), format_go_fixed(*v))])
                    } else {
                        key
                    }
                }
            };
            let g = *index.entry(key.clone()).or_insert_with(|| {
                out.push(VSeries {
                    labels: key,
                    vals: vec![None; n],
                });
                out.len() - 1
            });
            let slot = &mut out[g].vals[i];
            *slot = Some(slot.unwrap_or(0.0) + 1.0);
        }
    }
    merge_by_labels(out, DUPLICATE_LABELSET)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_support::*;

    fn data() -> Vec<crate::model::SeriesSamples> {
        vec![
            series("t{i=\"a\",s=\"1\"}", &[(0, 40.0)]),
            series("t{i=\"a\",s=\"2\"}", &[(0, 50.0)]),
            series("t{i=\"b\",s=\"1\"}", &[(0, 70.0)]),
            series("t{i=\"b\",s=\"2\"}", &[(0, 70.0)]),
            series("t{i=\"c\",s=\"1\"}", &[(0, 10.0)]),
        ]
    }

    #[test]
    fn simple_aggregations_with_by_and_without() {
        let d = data();
        assert_eq!(vector("sum(t)", &d, 0), vec![("{}".into(), 240.0)]);
        assert_eq!(
            vector("avg by (i) (t)", &d, 0),
            vec![
                ("{i=\"a\"}".into(), 45.0),
                ("{i=\"b\"}".into(), 70.0),
                ("{i=\"c\"}".into(), 10.0)
            ]
        );
        assert_eq!(vector("max without (s) (t)", &d, 0)[0], ("{i=\"a\"}".into(), 50.0));
        assert_eq!(
            vector("min by (s) (t)", &d, 0),
            vec![("{s=\"1\"}".into(), 10.0), ("{s=\"2\"}".into(), 50.0)]
        );
        assert_eq!(one("count(t)", &d, 0), 5.0);
        assert_eq!(one("group(t)", &d, 0), 1.0);
        assert_eq!(one("stdvar by (i) (t{i=\"a\"})", &d, 0), 25.0);
        assert_eq!(one("stddev by (i) (t{i=\"a\"})", &d, 0), 5.0);
        assert_eq!(one("quantile(0.5, t)", &d, 0), 50.0);
        assert_eq!(one("quantile(0.25, t)", &d, 0), 40.0);
        assert_eq!(vector("sum by (__name__) (t)", &d, 0), vec![("t{}".into(), 240.0)]);
        assert_eq!(one("sum(nothing) or vector(0)", &d, 0), 0.0);
    }

    #[test]
    fn topk_bottomk_keep_labels() {
        let d = data();
        let mut top = vector("topk(2, t)", &d, 0);
        top.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            top,
            vec![("t{i=\"b\",s=\"1\"}".into(), 70.0), ("t{i=\"b\",s=\"2\"}".into(), 70.0)]
        );
        let bottom = vector("bottomk by (s) (1, t)", &d, 0);
        assert_eq!(
            bottom,
            vec![("t{i=\"a\",s=\"2\"}".into(), 50.0), ("t{i=\"c\",s=\"1\"}".into(), 10.0)]
        );
        assert!(vector("topk(0, t)", &d, 0).is_empty());
    }

    #[test]
    fn count_values_labels_values() {
        let d = data();
        assert_eq!(
            vector("count_values(\"v\", t)", &d, 0),
            vec![
                ("{v=\"10\"}".into(), 1.0),
                ("{v=\"40\"}".into(), 1.0),
                ("{v=\"50\"}".into(), 1.0),
                ("{v=\"70\"}".into(), 2.0)
            ]
        );
        assert_eq!(
            vector("count_values by (i) (\"v\", t{i=\"b\"})", &d, 0),
            vec![("{i=\"b\",v=\"70\"}".into(), 2.0)]
        );
    }
}
