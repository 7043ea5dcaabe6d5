//! Binary operators: arithmetic (`+ - * / % ^ atan2`), comparison
//! (`==`, `!=`, `>`, `<`, `>=`, `<=`, filtering or with `bool`) and set
//! operators (`and or unless`), between scalars and vectors, with `on`/`ignoring` and
//! `group_left`/`group_right` vector matching, as Prometheus 2.42's
//! `VectorBinop`, `VectorAnd/Or/Unless` and `VectorscalarBinop`.
//!
//! Metric names: arithmetic drops `__name__` (except `atan2`), a comparison without `bool`
//! keeps it, a comparison with `bool` drops it, set operators keep the
//! operand's labels untouched. Matching signatures are computed once per
//! series; cardinality errors are raised for the first step where they
//! occur, with Prometheus's messages.

use std::collections::HashMap;

use promql_parser::parser::value::ValueType;
use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};

use super::{Evaluator, Grid, VSeries, Val, bad, drop_name, exec_err, merge_by_labels};
use crate::model::{Labels, METRIC_NAME};

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    And,
    Or,
    Unless,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "+" => Op::Add,
            "-" => Op::Sub,
            "*" => Op::Mul,
            "/" => Op::Div,
            "%" => Op::Mod,
            "^" => Op::Pow,
            "atan2" => Op::Atan2,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            ">" => Op::Gt,
            "<" => Op::Lt,
            ">=" => Op::Ge,
            "<=" => Op::Le,
            "and" => Op::And,
            "or" => Op::Or,
            "unless" => Op::Unless,
            _ => return None,
        })
    }

    fn is_comparison(self) -> bool {
        matches!(self, Op::Eq | Op::Ne | Op::Gt | Op::Lt | Op::Ge | Op::Le)
    }

    /// Whether the result loses `__name__` (Prometheus's
    /// `shouldDropMetricName`: arithmetic except `atan2`).
    fn drops_name(self) -> bool {
        matches!(self, Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Mod | Op::Pow)
    }

    fn is_set(self) -> bool {
        matches!(self, Op::And | Op::Or | Op::Unless)
    }

    /// `(value, keep)` of `l op r` for one pair of elements (Prometheus's
    /// `vectorElemBinop`): comparisons keep the left value when true.
    fn apply(self, l: f64, r: f64) -> (f64, bool) {
        match self {
            Op::Add => (l + r, true),
            Op::Sub => (l - r, true),
            Op::Mul => (l * r, true),
            Op::Div => (l / r, true),
            Op::Mod => (l % r, true),
            Op::Pow => (l.powf(r), true),
            Op::Atan2 => (l.atan2(r), true),
            Op::Eq => (l, l == r),
            Op::Ne => (l, l != r),
            Op::Gt => (l, l > r),
            Op::Lt => (l, l < r),
            Op::Ge => (l, l >= r),
            Op::Le => (l, l <= r),
            Op::And | Op::Or | Op::Unless => (f64::NAN, false),
        }
    }
}

/// An arithmetic operator (`+ - * / % ^`) between two instant vectors
/// matched one-to-one on every label but the metric name: the shape an
/// aggregation may read host by host (`eval/aggregate.rs`), since series
/// that match then share their `instance`.
#[derive(Debug, Clone, Copy)]
pub(super) struct PlainArithmetic(Op);

impl PlainArithmetic {
    /// `Some` when `b` has that shape.
    pub(super) fn of(b: &BinaryExpr) -> Option<PlainArithmetic> {
        let op = Op::parse(&b.op.to_string())?;
        if !op.drops_name() || b.return_bool() {
            return None;
        }
        if b.lhs.value_type() != ValueType::Vector || b.rhs.value_type() != ValueType::Vector {
            return None;
        }
        match &b.modifier {
            None => {}
            Some(m) if m.matching.is_none() && matches!(m.card, VectorMatchCardinality::OneToOne) => {}
            Some(_) => return None,
        }
        Some(PlainArithmetic(op))
    }

    /// The operator over one part's operands, as [`eval_binary`] applies it
    /// to whole vectors.
    pub(super) fn apply(self, l: Vec<VSeries>, r: Vec<VSeries>, n: usize) -> Result<Vec<VSeries>, super::EvalError> {
        vector_vector(self.0, l, r, None, &VectorMatchCardinality::OneToOne, false, n)
    }
}

/// Evaluates a binary expression over `grid`.
pub(super) fn eval_binary(ev: &mut Evaluator<'_>, b: &BinaryExpr, grid: Grid) -> Result<Val, super::EvalError> {
    let op_text = b.op.to_string();
    let op = Op::parse(&op_text).ok_or_else(|| bad(format!("binary operator {op_text} is not supported")))?;
    let return_bool = b.return_bool();
    let (lt, rt) = (b.lhs.value_type(), b.rhs.value_type());
    match (lt, rt) {
        (ValueType::Scalar, ValueType::Scalar) => {
            let l = ev.eval_scalar(&b.lhs, grid)?;
            let r = ev.eval_scalar(&b.rhs, grid)?;
            Ok(Val::Scalar(
                l.into_iter()
                    .zip(r)
                    .map(|(l, r)| {
                        let (v, keep) = op.apply(l, r);
                        if op.is_comparison() {
                            f64::from(u8::from(keep))
                        } else {
                            v
                        }
                    })
                    .collect(),
            ))
        }
        (ValueType::Vector, ValueType::Scalar) | (ValueType::Scalar, ValueType::Vector) => {
            let swap = lt == ValueType::Scalar;
            let (vec_expr, scalar_expr) = if swap { (&b.rhs, &b.lhs) } else { (&b.lhs, &b.rhs) };
            // Prometheus evaluates the left operand first.
            let (v, s) = if swap {
                let s = ev.eval_scalar(scalar_expr, grid)?;
                (ev.eval_vector(vec_expr, grid)?, s)
            } else {
                let v = ev.eval_vector(vec_expr, grid)?;
                (v, ev.eval_scalar(scalar_expr, grid)?)
            };
            if op.is_set() {
                return Err(bad(format!(
                    "set operator {op_text} not allowed in binary scalar expression"
                )));
            }
            vector_scalar(op, v, &s, swap, return_bool)
        }
        (ValueType::Vector, ValueType::Vector) => {
            let l = ev.eval_vector(&b.lhs, grid)?;
            let r = ev.eval_vector(&b.rhs, grid)?;
            let matching = b.modifier.as_ref().and_then(|m| m.matching.clone());
            let card = b
                .modifier
                .as_ref()
                .map_or(VectorMatchCardinality::OneToOne, |m| m.card.clone());
            let n = grid.len();
            if op.is_set() {
                return Ok(Val::Vector(set_op(op, l, r, matching.as_ref(), n)?));
            }
            Ok(Val::Vector(vector_vector(
                op,
                l,
                r,
                matching.as_ref(),
                &card,
                return_bool,
                n,
            )?))
        }
        _ => Err(bad(format!(
            "binary operator {op_text} needs scalar or instant vector operands"
        ))),
    }
}

fn vector_scalar(op: Op, v: Vec<VSeries>, s: &[f64], swap: bool, return_bool: bool) -> Result<Val, super::EvalError> {
    let drop = op.drops_name() || return_bool;
    let out: Vec<VSeries> = v
        .into_iter()
        .map(|series| {
            let vals = series
                .vals
                .into_iter()
                .zip(s)
                .map(|(x, &sv)| {
                    let x = x?;
                    let (l, r) = if swap { (sv, x) } else { (x, sv) };
                    let (mut value, keep) = op.apply(l, r);
                    // A comparison keeps the vector's value even when the
                    // scalar is on the left.
                    if op.is_comparison() && swap {
                        value = r;
                    }
                    if return_bool {
                        Some(f64::from(u8::from(keep)))
                    } else {
                        keep.then_some(value)
                    }
                })
                .collect();
            VSeries {
                labels: if drop { drop_name(&series.labels) } else { series.labels },
                vals,
            }
        })
        .collect();
    Ok(Val::Vector(merge_by_labels(out, super::DUPLICATE_LABELSET)?))
}

/// The matching signature of a series: the `on` labels, or every label
/// but the `ignoring` ones and the metric name.
fn signature(labels: &Labels, matching: Option<&LabelModifier>) -> Labels {
    match matching {
        Some(LabelModifier::Include(on)) => Labels::new(
            labels
                .pairs()
                .iter()
                .filter(|(k, _)| on.labels.iter().any(|o| o == k))
                .cloned()
                .collect(),
        ),
        Some(LabelModifier::Exclude(ign)) => Labels::new(
            labels
                .pairs()
                .iter()
                .filter(|(k, _)| k != METRIC_NAME && !ign.labels.iter().any(|o| o == k))
                .cloned()
                .collect(),
        ),
        None => drop_name(labels),
    }
}

fn set_op(
    op: Op,
    l: Vec<VSeries>,
    r: Vec<VSeries>,
    matching: Option<&LabelModifier>,
    n: usize,
) -> Result<Vec<VSeries>, super::EvalError> {
    // Per signature, the steps at which the other side has a sample.
    let presence = |side: &[VSeries]| {
        let mut m: HashMap<Labels, Vec<bool>> = HashMap::new();
        for s in side {
            let p = m
                .entry(signature(&s.labels, matching))
                .or_insert_with(|| vec![false; n]);
            for (slot, v) in p.iter_mut().zip(&s.vals) {
                *slot |= v.is_some();
            }
        }
        m
    };
    match op {
        Op::And | Op::Unless => {
            let right = presence(&r);
            let want = op == Op::And;
            Ok(l.into_iter()
                .map(|s| {
                    let p = right.get(&signature(&s.labels, matching));
                    let vals = s
                        .vals
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| {
                            let matched = p.is_some_and(|p| p[i]);
                            if matched == want { v } else { None }
                        })
                        .collect();
                    VSeries { labels: s.labels, vals }
                })
                .filter(|s| s.vals.iter().any(Option::is_some))
                .collect())
        }
        _ => {
            let left = presence(&l);
            let mut out = l;
            for s in r {
                let p = left.get(&signature(&s.labels, matching));
                let vals = s
                    .vals
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| if p.is_some_and(|p| p[i]) { None } else { v })
                    .collect();
                out.push(VSeries { labels: s.labels, vals });
            }
            merge_by_labels(out, super::DUPLICATE_LABELSET)
        }
    }
}

/// Labels of a result element (Prometheus's `resultMetric`): `many` is the
/// "many" side (the left one unless `group_right`), `one` the other.
fn result_labels(
    op: Op,
    many: &Labels,
    one: &Labels,
    matching: Option<&LabelModifier>,
    card: &VectorMatchCardinality,
) -> Labels {
    let mut pairs: Vec<(String, String)> = many.pairs().to_vec();
    if op.drops_name() {
        pairs.retain(|(k, _)| k != METRIC_NAME);
    }
    let include = match card {
        VectorMatchCardinality::OneToOne => {
            match matching {
                Some(LabelModifier::Include(on)) => pairs.retain(|(k, _)| on.labels.iter().any(|o| o == k)),
                Some(LabelModifier::Exclude(ign)) => pairs.retain(|(k, _)| !ign.labels.iter().any(|o| o == k)),
                None => {}
            }
            None
        }
        VectorMatchCardinality::ManyToOne(l) | VectorMatchCardinality::OneToMany(l) => Some(l),
        VectorMatchCardinality::ManyToMany => None,
    };
    if let Some(include) = include {
        for name in &include.labels {
            pairs.retain(|(k, _)| k != name);
            let v = one.get(name);
            if !v.is_empty() {
                pairs.push((name.clone(), v.to_string()));
            }
        }
    }
    Labels::new(pairs)
}

fn vector_vector(
    op: Op,
    l: Vec<VSeries>,
    r: Vec<VSeries>,
    matching: Option<&LabelModifier>,
    card: &VectorMatchCardinality,
    return_bool: bool,
    n: usize,
) -> Result<Vec<VSeries>, super::EvalError> {
    if matches!(card, VectorMatchCardinality::ManyToMany) {
        return Err(bad("many-to-many matching is only allowed for set operators"));
    }
    let one_to_many = matches!(card, VectorMatchCardinality::OneToMany(_));
    // The "many" side is iterated, the "one" side looked up.
    let (many, one) = if one_to_many { (r, l) } else { (l, r) };
    let one_side = if one_to_many { "left" } else { "right" };
    let many_sigs: Vec<Labels> = many.iter().map(|s| signature(&s.labels, matching)).collect();
    let mut one_by_sig: HashMap<Labels, Vec<usize>> = HashMap::new();
    for (i, s) in one.iter().enumerate() {
        one_by_sig.entry(signature(&s.labels, matching)).or_default().push(i);
    }
    // The "one" side must be unique per signature at every step.
    for members in one_by_sig.values().filter(|m| m.len() > 1) {
        for i in 0..n {
            let present: Vec<usize> = members.iter().copied().filter(|&m| one[m].vals[i].is_some()).collect();
            if present.len() > 1 {
                let matched = signature(&one[present[0]].labels, matching);
                return Err(exec_err(format!(
                    "found duplicate series for the match group {} on the {one_side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                    label_set_text(&matched),
                    label_set_text(&one[present[1]].labels),
                    label_set_text(&one[present[0]].labels),
                )));
            }
        }
    }
    // In one-to-one matching each signature may match once per step.
    let mut matched_per_sig: HashMap<&Labels, Vec<bool>> = HashMap::new();
    let mut out: Vec<VSeries> = Vec::new();
    let mut out_index: HashMap<Labels, usize> = HashMap::new();
    let one_to_one = matches!(card, VectorMatchCardinality::OneToOne);
    for (mi, ms) in many.iter().enumerate() {
        let sig = &many_sigs[mi];
        let Some(candidates) = one_by_sig.get(sig) else {
            continue;
        };
        let mut seen = one_to_one.then(|| matched_per_sig.entry(sig).or_insert_with(|| vec![false; n]));
        // The output slot of this series paired with `one[oi]`: the result
        // labels are built once per pair, not once per step.
        let mut pair: Option<(usize, usize)> = None;
        for i in 0..n {
            let Some(mv) = ms.vals[i] else { continue };
            let Some(oi) = candidates.iter().copied().find(|&c| one[c].vals[i].is_some()) else {
                continue;
            };
            let ov = one[oi].vals[i].unwrap_or(f64::NAN);
            let (vl, vr) = if one_to_many { (ov, mv) } else { (mv, ov) };
            let (value, keep) = op.apply(vl, vr);
            let value = if return_bool {
                f64::from(u8::from(keep))
            } else if keep {
                value
            } else {
                continue;
            };
            if let Some(seen) = seen.as_deref_mut() {
                if seen[i] {
                    return Err(exec_err(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)",
                    ));
                }
                seen[i] = true;
            }
            let slot = match pair {
                Some((o, slot)) if o == oi => slot,
                _ => {
                    let mut labels = result_labels(op, &ms.labels, &one[oi].labels, matching, card);
                    if return_bool {
                        labels = drop_name(&labels);
                    }
                    let slot = match out_index.get(&labels) {
                        Some(&o) => o,
                        None => {
                            out_index.insert(labels.clone(), out.len());
                            out.push(VSeries {
                                labels,
                                vals: vec![None; n],
                            });
                            out.len() - 1
                        }
                    };
                    pair = Some((oi, slot));
                    slot
                }
            };
            if out[slot].vals[i].is_some() {
                return Err(exec_err(if one_to_one {
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
                } else {
                    "multiple matches for matching labels: grouping labels must ensure unique combinations"
                }));
            }
            out[slot].vals[i] = Some(value);
        }
    }
    Ok(out)
}

/// A label set written as Prometheus writes `labels.Labels` (`{a="1"}`).
fn label_set_text(l: &Labels) -> String {
    let body: Vec<String> = l.pairs().iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", body.join(", "))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_support::*;

    fn data() -> Vec<crate::model::SeriesSamples> {
        vec![
            series("temp{i=\"a\",s=\"1\"}", &[(0, 60.0)]),
            series("temp{i=\"a\",s=\"2\"}", &[(0, 90.0)]),
            series("temp{i=\"b\",s=\"1\"}", &[(0, 50.0)]),
            series("crit{i=\"a\",s=\"1\"}", &[(0, 80.0)]),
            series("crit{i=\"a\",s=\"2\"}", &[(0, 80.0)]),
            series("crit{i=\"b\",s=\"1\"}", &[(0, 100.0)]),
            series("up{i=\"a\"}", &[(0, 1.0)]),
            series("info{i=\"a\",model=\"X\"}", &[(0, 1.0)]),
        ]
    }

    #[test]
    fn arithmetic_drops_the_name_and_matches_labels() {
        let d = data();
        assert_eq!(
            vector("temp / crit", &d, 0),
            vec![
                ("{i=\"a\",s=\"1\"}".into(), 0.75),
                ("{i=\"a\",s=\"2\"}".into(), 1.125),
                ("{i=\"b\",s=\"1\"}".into(), 0.5)
            ]
        );
        assert_eq!(
            vector("temp{i=\"b\"} - 10", &d, 0),
            vec![("{i=\"b\",s=\"1\"}".into(), 40.0)]
        );
        assert_eq!(vector("2 ^ up", &d, 0), vec![("{i=\"a\"}".into(), 2.0)]);
        assert_eq!(one("temp{i=\"b\"} % 7", &d, 0), 1.0);
        assert_eq!(
            vector("up atan2 up", &d, 0),
            vec![("up{i=\"a\"}".into(), 1_f64.atan2(1.0))],
            "keeps the name"
        );
        assert_eq!(vector("temp * on(i) group_left up", &d, 0).len(), 2);
        assert_eq!(
            vector("temp * on(i) group_left(model) info", &d, 0)[0].0,
            "{i=\"a\",model=\"X\",s=\"1\"}"
        );
        assert_eq!(
            vector("info * on(i) group_right(model) temp", &d, 0)[1].0,
            "{i=\"a\",model=\"X\",s=\"2\"}"
        );
        assert_eq!(
            vector("temp{s=\"1\"} + ignoring(s) up", &d, 0),
            vec![("{i=\"a\"}".into(), 61.0)]
        );
        assert_eq!(
            vector("temp{s=\"1\"} + on(i) up", &d, 0),
            vec![("{i=\"a\"}".into(), 61.0)]
        );
    }

    #[test]
    fn comparisons_filter_or_return_bool() {
        let d = data();
        assert_eq!(
            vector("temp > crit", &d, 0),
            vec![("temp{i=\"a\",s=\"2\"}".into(), 90.0)]
        );
        assert_eq!(
            vector("temp > bool crit", &d, 0)
                .iter()
                .map(|s| s.1)
                .collect::<Vec<_>>(),
            vec![0.0, 1.0, 0.0]
        );
        assert_eq!(vector("temp > bool crit", &d, 0)[0].0, "{i=\"a\",s=\"1\"}");
        assert_eq!(vector("temp > 55", &d, 0).len(), 2);
        assert_eq!(
            vector("55 < temp", &d, 0)[0],
            ("temp{i=\"a\",s=\"1\"}".into(), 60.0),
            "vector value kept"
        );
        assert_eq!(vector("temp == bool 50", &d, 0)[2], ("{i=\"b\",s=\"1\"}".into(), 1.0));
        assert_eq!(scalar("1 < bool 2", &d, 0), 1.0);
    }

    #[test]
    fn set_operators() {
        let d = data();
        assert_eq!(vector("temp and on(i) up", &d, 0).len(), 2);
        assert_eq!(
            vector("temp unless on(i) up", &d, 0),
            vec![("temp{i=\"b\",s=\"1\"}".into(), 50.0)]
        );
        let or = vector("up or temp", &d, 0);
        assert_eq!(or.len(), 4);
        assert_eq!(vector("up or on(i) temp", &d, 0).len(), 2, "i=b only from the right");
        assert!(vector("temp and crit{i=\"zzz\"}", &d, 0).is_empty());
    }

    #[test]
    fn cardinality_errors_use_prometheus_messages() {
        let d = data();
        let err = instant("up * on(i) temp", &d, 0).unwrap_err().to_string();
        assert!(
            err.starts_with("found duplicate series for the match group {i=\"a\"} on the right hand-side"),
            "{err}"
        );
        assert!(err.ends_with("many-to-many matching not allowed: matching labels must be unique on one side"));
        let err = instant("temp * on(i) up", &d, 0).unwrap_err().to_string();
        assert_eq!(
            err,
            "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
        );
        let err = instant("temp * on(i) group_left(s) crit", &d, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("found duplicate series"), "{err}");
        // `s` comes from the "one" side, which lacks it: both a-series
        // would become {i="a"}.
        let err = instant("temp + on(i) group_left(s) up", &d, 0).unwrap_err().to_string();
        assert_eq!(
            err,
            "multiple matches for matching labels: grouping labels must ensure unique combinations"
        );
        let err = instant("{__name__=~\"temp|crit\"} + 1", &d, 0).unwrap_err().to_string();
        assert_eq!(err, "vector cannot contain metrics with the same labelset");
    }
}
