//! Aggregation operators: `sum avg min max count group stddev stdvar
//! quantile topk bottomk count_values` with `by`/`without`, computed per
//! step as Prometheus 2.42's `aggregation()` does (including its running
//! mean for `avg` and Welford's method for `stddev`/`stdvar`).
//!
//! Grouping keys depend only on labels, so each input series is assigned to
//! its group once; the per-step work is then arithmetic over slices.
//!
//! The common operators never materialise their input vector: over a
//! selector, a range function or plain arithmetic between two of those,
//! long queries read, fold and drop one host at a time (`try_by_host`),
//! and other inputs are folded series by series (`try_streamed`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use promql_parser::parser::{AggregateExpr, Expr, LabelModifier};

use super::range::{Prepared, RangeCall, quantile};
use super::{DUPLICATE_LABELSET, Evaluator, Grid, InstantWalk, VSeries, Val, bad, merge_by_labels, unwrap_parens};
use crate::model::{Labels, METRIC_NAME, SeriesSamples};
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
    if let Some(out) = try_streamed(ev, agg, &op, grid)? {
        return Ok(Val::Vector(out));
    }
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
    let mut acc = Acc::new(FoldOp::parse(op)?, n);
    for &m in members {
        acc.add(input.get(m)?.vals.get(..n)?);
    }
    Some(acc.finish())
}

/// The operators [`Acc`] folds.
#[derive(Clone, Copy, PartialEq)]
enum FoldOp {
    Sum,
    Min,
    Max,
    Count,
    Group,
    Avg,
}

impl FoldOp {
    fn parse(op: &str) -> Option<FoldOp> {
        Some(match op {
            "sum" => FoldOp::Sum,
            "min" => FoldOp::Min,
            "max" => FoldOp::Max,
            "count" => FoldOp::Count,
            "group" => FoldOp::Group,
            "avg" => FoldOp::Avg,
            _ => return None,
        })
    }
}

/// One group's running aggregate at every step: members are added one
/// at a time, in order.
struct Acc {
    op: FoldOp,
    /// Per step: the accumulator and how many members had a value.
    acc: Vec<f64>,
    count: Vec<f64>,
}

impl Acc {
    fn new(op: FoldOp, n: usize) -> Acc {
        Acc {
            op,
            acc: vec![0.0; n],
            count: vec![0.0; n],
        }
    }

    /// Folds one member's values (one slot per step) in.
    fn add(&mut self, vals: &[Option<f64>]) {
        // One loop per operator, so the operator is not matched again at
        // every step.
        match self.op {
            FoldOp::Sum => self.add_with(vals, |a, x, _| *a += x),
            FoldOp::Min => self.add_with(vals, |a, x, _| {
                if *a > x || a.is_nan() {
                    *a = x;
                }
            }),
            FoldOp::Max => self.add_with(vals, |a, x, _| {
                if *a < x || a.is_nan() {
                    *a = x;
                }
            }),
            FoldOp::Count | FoldOp::Group => self.add_with(vals, |_, _, _| {}),
            FoldOp::Avg => self.add_with(vals, |a, x, c| {
                // As in `reduce`: an infinite mean stays unless a NaN or an
                // infinity of the other sign arrives.
                if a.is_infinite() {
                    if x.is_infinite() && (*a > 0.0) == (x > 0.0) {
                        return;
                    }
                    if !x.is_infinite() && !x.is_nan() {
                        return;
                    }
                }
                *a += x / c - *a / c;
            }),
        }
    }

    /// Folds `vals` in with `f(accumulator, value, count including it)`
    /// for every step after a group's first value.
    #[inline(always)]
    fn add_with(&mut self, vals: &[Option<f64>], f: impl Fn(&mut f64, f64, f64)) {
        for ((a, c), v) in self.acc.iter_mut().zip(self.count.iter_mut()).zip(vals) {
            let Some(x) = *v else { continue };
            if *c == 0.0 {
                *a = x;
                *c = 1.0;
                continue;
            }
            *c += 1.0;
            f(a, x, *c);
        }
    }

    /// Folds in another accumulator of the same group over the same grid,
    /// holding the members that come after this one's. `min`, `max`,
    /// `count` and `group` come out exactly as if every member had been
    /// added to one accumulator; `sum` adds the two partial sums and `avg`
    /// weighs the two means by their counts, which may differ from one
    /// running sum in the last bits.
    fn merge(&mut self, other: &Acc) {
        let op = self.op;
        let steps = self.acc.iter_mut().zip(self.count.iter_mut());
        for ((a, c), (&b, &cb)) in steps.zip(other.acc.iter().zip(&other.count)) {
            if cb == 0.0 {
                continue;
            }
            if *c == 0.0 {
                *a = b;
                *c = cb;
                continue;
            }
            match op {
                FoldOp::Sum => *a += b,
                FoldOp::Min => {
                    if *a > b || a.is_nan() {
                        *a = b;
                    }
                }
                FoldOp::Max => {
                    if *a < b || a.is_nan() {
                        *a = b;
                    }
                }
                FoldOp::Count | FoldOp::Group => {}
                FoldOp::Avg => *a = merge_means(*a, *c, b, cb),
            }
            *c += cb;
        }
    }

    /// The aggregate at every step (`None` where no member had a value).
    fn finish(self) -> Vec<Option<f64>> {
        let op = self.op;
        self.acc
            .into_iter()
            .zip(self.count)
            .map(|(a, c)| {
                (c > 0.0).then_some(match op {
                    FoldOp::Count => c,
                    FoldOp::Group => 1.0,
                    _ => a,
                })
            })
            .collect()
    }
}

/// The mean of two groups of values with means `a`, `b` and counts `ca`,
/// `cb`, with the running mean's rules for infinities: an infinity stays
/// unless a NaN or the other infinity joins it.
fn merge_means(a: f64, ca: f64, b: f64, cb: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        return f64::NAN;
    }
    match (a.is_infinite(), b.is_infinite()) {
        (true, true) if (a > 0.0) != (b > 0.0) => f64::NAN,
        (true, _) => a,
        (false, true) => b,
        (false, false) => a + (b - a) * (cb / (ca + cb)),
    }
}

/// How one operand read host by host turns series into values.
enum SideKind {
    /// An instant vector selector.
    Selector(InstantWalk),
    /// A range function over a matrix selector (the call without series).
    Range(RangeCall),
}

/// One operand of an aggregation read host by host: what to select over
/// which time range, and how to evaluate what was selected.
struct Side {
    kind: SideKind,
    matchers: Vec<crate::model::Matcher>,
    from: i64,
    to: i64,
}

impl Side {
    /// The operand `expr` when it is an instant vector selector or a range
    /// function over a matrix selector; `None` for other shapes.
    fn of(ev: &mut Evaluator<'_>, expr: &Expr, grid: Grid) -> Result<Option<Side>, super::EvalError> {
        let n = grid.len();
        Ok(match unwrap_parens(expr) {
            Expr::VectorSelector(vs) if n > 0 => {
                let walk = InstantWalk {
                    grid,
                    offset: super::offset_ms(&vs.offset),
                    at: ev.at_ms(&vs.at),
                };
                let from = walk.reference(grid.start).saturating_sub(super::LOOKBACK_MS);
                let to = walk.reference(grid.time(n - 1));
                Some(Side {
                    kind: SideKind::Selector(walk),
                    matchers: super::selector_matchers(vs)?,
                    from,
                    to,
                })
            }
            Expr::Call(c) if super::range::is_range_function(c.func.name) => {
                super::range::template(ev, c, grid)?.map(|t| Side {
                    kind: SideKind::Range(t.call),
                    matchers: t.matchers,
                    from: t.from,
                    to: t.to,
                })
            }
            _ => None,
        })
    }

    /// The series of host `part` ([`super::split_by_instance`]), counted
    /// against the query's limits, as the operand's evaluation sees them.
    fn read(
        &self,
        src: &dyn super::Source,
        part: &str,
        budget: &Budget,
    ) -> Result<Vec<SeriesSamples>, super::EvalError> {
        let mut series = src.select(&super::part_matchers(&self.matchers, part), self.from, self.to)?;
        budget.take(&series)?;
        if let SideKind::Range(_) = self.kind {
            super::clean_range_series(&mut series);
        }
        Ok(series)
    }

    /// Series `s`'s values into `vals`; whether it has any.
    fn values(&self, s: &SeriesSamples, vals: &mut Vec<Option<f64>>) -> bool {
        match &self.kind {
            SideKind::Selector(walk) => walk.values(&s.samples, false, vals),
            SideKind::Range(call) => call.values(s, vals),
        }
    }

    /// The labels series `s` has as an element of the operand's vector.
    fn labels(&self, s: &SeriesSamples) -> Labels {
        match &self.kind {
            SideKind::Selector(_) => s.labels.clone(),
            SideKind::Range(call) => call.labels(s),
        }
    }

    /// The operand's instant vector over host `part` (series with values
    /// only), for a binary operator.
    fn vector(
        &self,
        src: &dyn super::Source,
        part: &str,
        budget: &Budget,
        n: usize,
    ) -> Result<Vec<VSeries>, super::EvalError> {
        let series = self.read(src, part, budget)?;
        let mut out = Vec::with_capacity(series.len());
        for s in &series {
            let mut vals = Vec::with_capacity(n);
            if self.values(s, &mut vals) {
                out.push(VSeries {
                    labels: self.labels(s),
                    vals,
                });
            }
        }
        Ok(out)
    }
}

/// The input of an aggregation read host by host.
enum ByHost {
    /// One operand.
    One(Side),
    /// Arithmetic between two operands matched one-to-one on all labels
    /// but the name: matching series share their `instance`, so each
    /// host's pairs are found within that host's part.
    Binary {
        op: super::binary::PlainArithmetic,
        lhs: Side,
        rhs: Side,
    },
}

/// The limits of one query shared by threads reading parts of it.
struct Budget {
    series: AtomicUsize,
    samples: AtomicUsize,
    limits: super::Limits,
}

impl Budget {
    /// Counts what one part read against the limits.
    fn take(&self, read: &[SeriesSamples]) -> Result<(), super::EvalError> {
        let samples: usize = read.iter().map(|s| s.samples.len()).sum();
        let series = self
            .series
            .fetch_add(read.len(), Ordering::Relaxed)
            .saturating_add(read.len());
        if series > self.limits.max_series {
            return Err(super::EvalError::TooManySeries {
                limit: self.limits.max_series,
            });
        }
        if self
            .samples
            .fetch_add(samples, Ordering::Relaxed)
            .saturating_add(samples)
            > self.limits.max_samples
        {
            return Err(super::EvalError::TooManySamples);
        }
        Ok(())
    }
}

/// Groups and their accumulators, in order of first appearance.
type PartGroups = Vec<(Labels, Acc)>;

/// Adds `vals` to the accumulator of group `key`, creating it if new.
fn fold_into(
    groups: &mut PartGroups,
    index: &mut HashMap<Labels, usize>,
    key: Labels,
    fold: FoldOp,
    vals: &[Option<f64>],
) {
    let g = match index.get(&key) {
        Some(&g) => g,
        None => {
            index.insert(key.clone(), groups.len());
            groups.push((key, Acc::new(fold, vals.len())));
            groups.len() - 1
        }
    };
    groups[g].1.add(vals);
}

/// `sum avg min max count group` of a selector, of a range function over
/// a matrix selector, or of plain arithmetic between two of those
/// (`rate(a[5m]) + rate(b[5m])`), read host by host (`Source::hosts`) on
/// up to two threads: each host's series are read, evaluated, folded into
/// their groups' accumulators and dropped before the next host is read,
/// so one query holds a host's samples at a time instead of every host's,
/// and a host reuses the memory the one before it freed instead of
/// faulting in fresh pages. Partial accumulators of a group that spans
/// hosts are merged in host order (`Acc::merge`). `None` when the source
/// does not split or the expression has another shape.
fn try_by_host(
    ev: &mut Evaluator<'_>,
    expr: &Expr,
    fold: FoldOp,
    modifier: Option<&LabelModifier>,
    grid: Grid,
) -> Result<Option<Vec<VSeries>>, super::EvalError> {
    let n = grid.len();
    let Some(hosts) = ev.src.hosts(grid.start, grid.time(n.saturating_sub(1))) else {
        return Ok(None);
    };
    let input = match unwrap_parens(expr) {
        Expr::Binary(b) => {
            let Some(op) = super::binary::PlainArithmetic::of(b) else {
                return Ok(None);
            };
            // Prometheus evaluates the left operand first.
            let Some(lhs) = Side::of(ev, &b.lhs, grid)? else {
                return Ok(None);
            };
            let Some(rhs) = Side::of(ev, &b.rhs, grid)? else {
                return Ok(None);
            };
            ByHost::Binary { op, lhs, rhs }
        }
        other => match Side::of(ev, other, grid)? {
            Some(side) => ByHost::One(side),
            None => return Ok(None),
        },
    };
    let sides: Vec<&Side> = match &input {
        ByHost::One(side) => vec![side],
        ByHost::Binary { lhs, rhs, .. } => vec![lhs, rhs],
    };
    if sides
        .iter()
        .any(|s| s.matchers.iter().all(crate::model::Matcher::matches_empty))
    {
        // The one-piece path reports the error.
        return Ok(None);
    }
    // A host is read when every operand may have series there (an operand
    // without series of a host gives that host no arithmetic results).
    let all: Vec<crate::model::Matcher> = sides.iter().flat_map(|s| s.matchers.iter().cloned()).collect();
    let Some(parts) = super::split_by_instance(&all, &hosts) else {
        return Ok(None);
    };
    ev.check_deadline()?;
    let budget = Budget {
        series: AtomicUsize::new(ev.series_selected),
        samples: AtomicUsize::new(ev.samples_loaded),
        limits: ev.limits,
    };
    let deadline = ev.deadline;
    let timed_out = || deadline.is_some_and(|d| std::time::Instant::now() >= d);
    let work = |src: &dyn super::Source, part: &str| -> Result<PartGroups, super::EvalError> {
        let mut index: HashMap<Labels, usize> = HashMap::new();
        let mut groups: PartGroups = Vec::new();
        match &input {
            ByHost::One(side) => {
                let series = side.read(src, part, &budget)?;
                let mut scratch: Vec<Option<f64>> = Vec::with_capacity(n);
                for s in &series {
                    if timed_out() {
                        return Err(super::EvalError::Timeout);
                    }
                    if side.values(s, &mut scratch) {
                        let key = group_labels(&side.labels(s), modifier);
                        fold_into(&mut groups, &mut index, key, fold, &scratch);
                    }
                }
            }
            ByHost::Binary { op, lhs, rhs } => {
                let l = lhs.vector(src, part, &budget, n)?;
                let r = rhs.vector(src, part, &budget, n)?;
                if timed_out() {
                    return Err(super::EvalError::Timeout);
                }
                for s in op.apply(l, r, n)? {
                    let key = group_labels(&s.labels, modifier);
                    fold_into(&mut groups, &mut index, key, fold, &s.vals);
                }
            }
        }
        Ok(groups)
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from).min(2);
    let mut results: Vec<(usize, Result<PartGroups, super::EvalError>)> = match ev.src.as_sync() {
        Some(src) if threads >= 2 => {
            let next = AtomicUsize::new(0);
            // Parts are taken in turn; each result keeps its part's index.
            let worker = || {
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(part) = parts.get(i) else { break };
                    let r = work(src, part);
                    let failed = r.is_err();
                    mine.push((i, r));
                    if failed {
                        // The other thread stops at its next part.
                        next.store(parts.len(), Ordering::Relaxed);
                        break;
                    }
                }
                mine
            };
            std::thread::scope(|scope| {
                let other = scope.spawn(worker);
                let mut all = worker();
                match other.join() {
                    Ok(theirs) => all.extend(theirs),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
                all
            })
        }
        _ => parts.iter().enumerate().map(|(i, p)| (i, work(ev.src, p))).collect(),
    };
    ev.series_selected = budget.series.load(Ordering::Relaxed);
    ev.samples_loaded = budget.samples.load(Ordering::Relaxed);
    // The first failure in part order, as a one-piece read would meet it.
    results.sort_by_key(|(i, _)| *i);
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut groups: PartGroups = Vec::new();
    for (_, r) in results {
        for (key, acc) in r? {
            match index.get(&key) {
                Some(&g) => groups[g].1.merge(&acc),
                None => {
                    index.insert(key.clone(), groups.len());
                    groups.push((key, acc));
                }
            }
        }
    }
    Ok(Some(
        groups
            .into_iter()
            .filter_map(|(labels, acc)| {
                let vals = acc.finish();
                vals.iter().any(Option::is_some).then_some(VSeries { labels, vals })
            })
            .collect(),
    ))
}

/// An aggregation's input that can be computed one series at a time.
enum Streamed {
    /// A plain instant vector selector.
    Selector(Vec<SeriesSamples>, InstantWalk),
    /// A range function over a selector or subquery.
    Range(RangeCall),
}

impl Streamed {
    fn series(&self) -> &[SeriesSamples] {
        match self {
            Streamed::Selector(series, _) => series,
            Streamed::Range(call) => &call.arg.series,
        }
    }

    /// The labels series `s` has as an element of the input vector.
    fn labels(&self, s: &SeriesSamples) -> Labels {
        match self {
            Streamed::Selector(..) => s.labels.clone(),
            Streamed::Range(call) => call.labels(s),
        }
    }

    /// Series `s`'s values into `vals`; whether it has any.
    fn values(&self, s: &SeriesSamples, vals: &mut Vec<Option<f64>>) -> bool {
        match self {
            Streamed::Selector(_, walk) => walk.values(&s.samples, false, vals),
            Streamed::Range(call) => call.values(s, vals),
        }
    }
}

/// `sum avg min max count group` of a selector or of a range function
/// (`sum by (instance) (rate(x[5m]))`), computed without materialising
/// the input vector: each group's members are evaluated one after another
/// into one reused buffer and folded into the group's accumulator, groups
/// split over two threads when the work is large. Members are folded in
/// the same order with the same arithmetic as `reduce`, so the answer is
/// the same bit for bit. `None` when the expression has another shape.
fn try_streamed(
    ev: &mut Evaluator<'_>,
    agg: &AggregateExpr,
    op: &str,
    grid: Grid,
) -> Result<Option<Vec<VSeries>>, super::EvalError> {
    let Some(fold) = FoldOp::parse(op) else {
        return Ok(None);
    };
    let modifier = agg.modifier.as_ref();
    let n = grid.len();
    if let Some(out) = try_by_host(ev, &agg.expr, fold, modifier, grid)? {
        return Ok(Some(out));
    }
    let input = match unwrap_parens(&agg.expr) {
        Expr::VectorSelector(vs) => {
            let (series, walk) = ev.selector_data(vs, grid)?;
            Streamed::Selector(series, walk)
        }
        Expr::Call(c) if super::range::is_range_function(c.func.name) => match super::range::prepare(ev, c, grid)? {
            Prepared::Done(out) => return Ok(Some(reduce(op, out, &[], modifier, n)?)),
            Prepared::PerSeries(call) if call.may_repeat_labels() => {
                // The duplicate-labels check needs every series' values.
                let out = super::range::run_per_series(&call, ev.deadline)?;
                return Ok(Some(reduce(op, out, &[], modifier, n)?));
            }
            Prepared::PerSeries(call) => Streamed::Range(call),
        },
        _ => return Ok(None),
    };
    let series = input.series();
    // Group keys once per series, groups in order of first appearance.
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut groups: Vec<(Labels, Vec<usize>)> = Vec::new();
    for (i, s) in series.iter().enumerate() {
        let key = group_labels(&input.labels(s), modifier);
        match index.get(&key) {
            Some(&g) => groups[g].1.push(i),
            None => {
                index.insert(key.clone(), groups.len());
                groups.push((key, vec![i]));
            }
        }
    }
    let deadline = ev.deadline;
    let run = |part: &[(Labels, Vec<usize>)]| -> Result<Vec<VSeries>, super::EvalError> {
        let mut scratch: Vec<Option<f64>> = Vec::with_capacity(n);
        let mut out = Vec::with_capacity(part.len());
        for (labels, members) in part {
            let mut acc = Acc::new(fold, n);
            for &m in members {
                if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                    return Err(super::EvalError::Timeout);
                }
                if input.values(&series[m], &mut scratch) {
                    acc.add(&scratch);
                }
            }
            let vals = acc.finish();
            if vals.iter().any(Option::is_some) {
                out.push(VSeries {
                    labels: labels.clone(),
                    vals,
                });
            }
        }
        Ok(out)
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from).min(2);
    if threads < 2 || groups.len() < 2 || series.len().saturating_mul(n) < super::range::PARALLEL_MIN_WORK {
        return run(&groups).map(Some);
    }
    // Two contiguous halves of about equal member counts.
    let half = series.len() / 2;
    let mut seen = 0;
    let split = groups
        .iter()
        .position(|(_, m)| {
            seen += m.len();
            seen >= half
        })
        .map_or(groups.len() / 2, |i| i + 1)
        .clamp(1, groups.len() - 1);
    let (a, b) = groups.split_at(split);
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
    Ok(Some(out))
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

    /// Counters and gauges over 40 minutes at irregular 10-20 s intervals,
    /// with resets, NaNs, a stale marker and a gap, on three hosts.
    fn streamed_data() -> Vec<crate::model::SeriesSamples> {
        let stale = f64::from_bits(crate::model::STALE_NAN_BITS);
        let mut out = Vec::new();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for host in ["a", "b", "c"] {
            for dev in 0..4 {
                let (mut t, mut counter) = (0_i64, 0.0_f64);
                let (mut c, mut g) = (Vec::new(), Vec::new());
                while t < 40 * MIN {
                    counter += (next() % 1000) as f64 / 7.0;
                    if next() % 50 == 0 {
                        counter = 0.0;
                    }
                    let gauge = match next() % 97 {
                        0 => f64::NAN,
                        1 => stale,
                        _ => (next() % 10_000) as f64 / 100.0 - 20.0,
                    };
                    // A gap in host b's series 0 wider than the lookback.
                    if !(host == "b" && dev == 0 && (10 * MIN..17 * MIN).contains(&t)) {
                        c.push((t, counter));
                        g.push((t, gauge));
                    }
                    t += 10_000 + (next() % 10_001) as i64;
                }
                out.push(series(&format!("c{{i=\"{host}\",d=\"{dev}\"}}"), &c));
                out.push(series(&format!("g{{i=\"{host}\",d=\"{dev}\"}}"), &g));
            }
        }
        out
    }

    #[test]
    fn streamed_aggregations_equal_the_materialised_ones_bit_for_bit() {
        use crate::query::eval::Value;
        let d = streamed_data();
        let bits = |q: &str| -> Vec<(String, Vec<(i64, u64)>)> {
            let Value::Matrix(m) = range(q, &d, 0, 40 * MIN, 15_000).unwrap() else {
                panic!("{q}")
            };
            m.into_iter()
                .map(|s| {
                    (
                        s.labels.to_string(),
                        s.points.iter().map(|(t, v)| (*t, v.to_bits())).collect(),
                    )
                })
                .collect()
        };
        for op in ["sum", "avg", "min", "max", "count", "group"] {
            for modifier in ["", "by (i)", "without (d)", "by (d, i)"] {
                for inner in [
                    "g",
                    "rate(c[5m])",
                    "increase(c[3m])",
                    "max_over_time(g[2m])",
                    "deriv(g[4m])",
                ] {
                    // `* 1` changes no value but takes the materialised path.
                    let streamed = format!("{op} {modifier} ({inner})");
                    let materialised = format!("{op} {modifier} ({inner} * 1)");
                    let want = bits(&materialised);
                    assert!(!want.is_empty(), "{materialised}");
                    assert_eq!(bits(&streamed), want, "{streamed}");
                }
            }
        }
    }

    /// A source that never splits by host: the one-piece reference.
    struct Whole<'a>(&'a [crate::model::SeriesSamples]);

    impl crate::query::eval::Source for Whole<'_> {
        fn select(
            &self,
            m: &[crate::model::Matcher],
            start: i64,
            end: i64,
        ) -> Result<Vec<crate::model::SeriesSamples>, crate::store::StoreError> {
            crate::query::eval::Literal(self.0).select(m, start, end)
        }
    }

    /// A splitting source that counts its selects.
    struct Counted<'a>(&'a [crate::model::SeriesSamples], std::sync::atomic::AtomicUsize);

    impl crate::query::eval::Source for Counted<'_> {
        fn select(
            &self,
            m: &[crate::model::Matcher],
            start: i64,
            end: i64,
        ) -> Result<Vec<crate::model::SeriesSamples>, crate::store::StoreError> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::query::eval::Literal(self.0).select(m, start, end)
        }

        fn hosts(&self, start: i64, end: i64) -> Option<Vec<String>> {
            crate::query::eval::Literal(self.0).hosts(start, end)
        }
    }

    #[test]
    fn binary_and_range_operands_are_read_one_host_at_a_time() {
        let d = vec![
            series("a{instance=\"x\"}", &[(0, 1.0), (MIN, 2.0)]),
            series("a{instance=\"y\"}", &[(0, 3.0), (MIN, 5.0)]),
            series("b{instance=\"x\"}", &[(0, 10.0), (MIN, 20.0)]),
            series("b{instance=\"y\"}", &[(0, 30.0), (MIN, 50.0)]),
        ];
        let selects = |q: &str| {
            let src = Counted(&d, std::sync::atomic::AtomicUsize::new(0));
            let expr = crate::query::eval::parse(q).unwrap();
            crate::query::eval::eval_range(&expr, &src, 0, MIN, MIN, crate::query::eval::Limits::default(), None)
                .unwrap();
            src.1.into_inner()
        };
        // Two hosts and "no instance": three parts per operand.
        assert_eq!(selects("sum by (instance) (a + b)"), 6);
        assert_eq!(selects("sum(rate(a[5m]) - rate(b[5m]))"), 6);
        assert_eq!(selects("max(a)"), 3);
        // Matching on chosen labels may pair series of different hosts.
        assert_eq!(selects("sum(a + on() group_left b{instance=\"x\"})"), 2);
        assert_eq!(one("sum(a + b)", &d, MIN), 77.0);
    }

    #[test]
    fn aggregations_read_host_by_host_equal_the_one_piece_answer() {
        use crate::model::{Labels, SeriesSamples};
        use crate::query::eval::{Limits, Literal, Source, Value, eval_range, parse};
        // The streamed data with `i` renamed `instance` (what hosts are split
        // by), plus infinities of both signs on two more hosts and a series
        // without an `instance`, for the merged means.
        let mut d: Vec<SeriesSamples> = streamed_data()
            .into_iter()
            .map(|s| {
                let pairs = s
                    .labels
                    .pairs()
                    .iter()
                    .map(|(k, v)| (if k == "i" { "instance".to_string() } else { k.clone() }, v.clone()))
                    .collect();
                SeriesSamples {
                    labels: Labels::new(pairs),
                    samples: s.samples,
                }
            })
            .collect();
        d.push(series(
            "g{instance=\"d\",d=\"0\"}",
            &[(0, f64::INFINITY), (20 * MIN, 5.0)],
        ));
        d.push(series(
            "g{instance=\"e\",d=\"0\"}",
            &[(5 * MIN, f64::NEG_INFINITY), (25 * MIN, 7.0)],
        ));
        d.push(series("g{d=\"0\"}", &[(0, 1.5), (30 * MIN, 2.5)]));
        let split = Literal(&d);
        let hosts = split.hosts(0, 0).unwrap();
        assert_eq!(
            crate::query::eval::split_by_instance(&[], &hosts).map(|p| p.len()),
            Some(6),
            "5 hosts and none"
        );
        let run = |q: &str, src: &dyn Source| {
            let expr = parse(q).unwrap();
            let Value::Matrix(m) = eval_range(&expr, src, 0, 40 * MIN, 15_000, Limits::default(), None).unwrap() else {
                panic!("{q}")
            };
            m
        };
        for op in ["sum", "avg", "min", "max", "count", "group"] {
            for modifier in ["", "by (instance)", "without (d)", "by (d)"] {
                for inner in [
                    "g",
                    "rate(c[5m])",
                    "max_over_time(g[2m])",
                    "predict_linear(g[4m], 60)",
                    "rate(c[5m]) + max_over_time(g[2m])",
                    "g / g offset 1m",
                ] {
                    let q = format!("{op} {modifier} ({inner})");
                    let (got, want) = (run(&q, &split), run(&q, &Whole(&d)));
                    assert!(!want.is_empty(), "{q}");
                    assert_eq!(got.len(), want.len(), "{q}");
                    for (g, w) in got.iter().zip(&want) {
                        assert_eq!(g.labels, w.labels, "{q}");
                        assert_eq!(g.points.len(), w.points.len(), "{q} {}", w.labels);
                        for ((tg, vg), (tw, vw)) in g.points.iter().zip(&w.points) {
                            assert_eq!(tg, tw, "{q}");
                            assert!(close(*vg, *vw), "{q} {} at {tw}: {vg} vs {vw}", w.labels);
                            if modifier == "by (instance)" {
                                assert_eq!(vg.to_bits(), vw.to_bits(), "{q}: one host per group is exact");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn streamed_range_aggregation_keeps_the_duplicate_labelset_error() {
        let d = vec![
            series("a{i=\"x\"}", &[(0, 1.0), (MIN, 2.0)]),
            series("b{i=\"x\"}", &[(0, 1.0), (MIN, 3.0)]),
        ];
        let err = range("sum(rate({__name__=~\"a|b\"}[5m]))", &d, MIN, MIN, MIN).unwrap_err();
        assert_eq!(err.to_string(), super::DUPLICATE_LABELSET);
        assert_eq!(one("sum(last_over_time({__name__=~\"a|b\"}[5m]))", &d, MIN), 5.0);
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
