//! Rollup planning: `min_over_time`, `max_over_time` and `count_over_time`
//! of a plain range selector answered from the store's rollup buckets
//! when that provably gives the answer raw samples give.
//!
//! A step's window is `[t - offset - range, t - offset]`, closed at both
//! ends (Prometheus 2.42); a bucket at resolution `w` covers `[s, s + w)`.
//! When the window start is a multiple of `w` and the range a whole
//! multiple of it, the window is exactly the buckets starting in `[lo, hi -
//! w]` plus the single instant `hi`, which is read raw. The grid must keep
//! every step aligned, so the step is a multiple of `w` too. Anything else
//! (`@`, subqueries, other functions, unaligned grids, sources that cannot
//! vouch for their buckets) goes the raw way.
//!
//! Why the answers are identical:
//! - `count`: buckets count exactly the non-stale samples, as windows do.
//! - `min`/`max`: Prometheus folds with `v < m || m is NaN`, which yields
//!   NaN only when every value is NaN and otherwise the smallest non-NaN
//!   value; a bucket's `f64::min` has the same property, and so does the
//!   same fold over bucket minima. The only freedom left is the sign of a
//!   zero result (`-0` vs `0` tie), so a zero anywhere in the answer sends
//!   the whole query back to raw samples.
//! - `sum`/`avg` are not planned: bucket sums are plain additions in a
//!   different order than the evaluator's Kahan sum, so the last bits may
//!   differ.
//!
//! The planner only runs for resolutions the source offers
//! (`Source::rollup_resolutions`); the store offers none for now, because
//! on the fleet benchmark the rollup reads plus the raw window-end reads
//! cost more than the raw read (see `query.rs`).
//!
//! The store's side of the bargain (`Store::select_rollup`): windows still
//! in the head, or holding more than one block record (out-of-order writes
//! sealed later), are bucketed from merged raw samples; the query side
//! checks that raw retention has dropped nothing in the range.

use std::collections::BTreeMap;

use promql_parser::parser::Expr;

use super::{EvalError, Evaluator, Grid, VSeries, drop_name, duration_ms, offset_ms, selector_matchers, unwrap_parens};
use crate::model::{Labels, Matcher, is_stale_marker};
use crate::store::{Bucket, Resolution};

/// The functions the planner answers from buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Min,
    Max,
    Count,
}

/// One series' data for the rollup path: buckets ascending by start, and
/// its raw value at each step's window end (if it has a sample there).
#[derive(Default)]
struct Parts {
    buckets: Vec<Bucket>,
    edges: Vec<Option<f64>>,
}

/// The window placement the planner checked: every window is `[lo_i,
/// lo_i + range]` with `lo_i = lo0 + i * step`, all multiples of `width`.
#[derive(Debug, Clone, Copy)]
struct Plan {
    resolution: Resolution,
    lo0: i64,
    range: i64,
    step: i64,
    steps: usize,
}

impl Plan {
    fn lo(&self, i: usize) -> i64 {
        self.lo0 + i as i64 * self.step
    }

    fn hi(&self, i: usize) -> i64 {
        self.lo(i) + self.range
    }
}

/// Whether range function `name` may be answered from rollups
/// ([`try_rollup`] covers it).
pub(super) fn may_use_rollups(name: &str) -> bool {
    matches!(name, "min_over_time" | "max_over_time" | "count_over_time")
}

/// Answers `name(expr)` over `grid` from rollups, or `None` when the raw
/// path must (not provably identical, or not cheaper).
pub(super) fn try_rollup(
    ev: &mut Evaluator<'_>,
    name: &str,
    expr: &Expr,
    grid: Grid,
) -> Result<Option<Vec<VSeries>>, EvalError> {
    let kind = match name {
        "min_over_time" => Kind::Min,
        "max_over_time" => Kind::Max,
        "count_over_time" => Kind::Count,
        _ => return Ok(None),
    };
    let Expr::MatrixSelector(ms) = unwrap_parens(expr) else {
        return Ok(None);
    };
    if ms.vs.at.is_some() {
        return Ok(None);
    }
    let Some(plan) = plan(
        ev.src.rollup_resolutions(),
        grid,
        duration_ms(&ms.range),
        offset_ms(&ms.vs.offset),
    ) else {
        return Ok(None);
    };
    let matchers = selector_matchers(&ms.vs)?;
    if matchers.iter().all(Matcher::matches_empty) {
        // The raw path reports the error.
        return Ok(None);
    }
    let width = plan.resolution.millis();
    let last_hi = plan.hi(plan.steps - 1);
    ev.check_deadline()?;
    let Some(rollups) = ev
        .src
        .select_rollup(&matchers, plan.lo0, last_hi - width, plan.resolution)?
    else {
        return Ok(None);
    };
    let mut by_series: BTreeMap<Labels, Parts> = BTreeMap::new();
    let mut loaded = 0usize;
    for r in rollups {
        loaded = loaded.saturating_add(r.buckets.iter().map(|b| b.count as usize).sum());
        by_series.entry(r.labels).or_default().buckets = r.buckets;
    }
    // The window ends, read raw: one instant each.
    for i in 0..plan.steps {
        ev.check_deadline()?;
        for s in ev.src.select(&matchers, plan.hi(i), plan.hi(i))? {
            let Some(&(_, v)) = s
                .samples
                .iter()
                .rev()
                .find(|(t, v)| *t == plan.hi(i) && !is_stale_marker(*v))
            else {
                continue;
            };
            let parts = by_series.entry(s.labels).or_default();
            parts.edges.resize(plan.steps, None);
            parts.edges[i] = Some(v);
            loaded = loaded.saturating_add(1);
        }
    }
    // Charge the limits as the raw read would have been charged.
    ev.series_selected = ev.series_selected.saturating_add(by_series.len());
    if ev.series_selected > ev.limits.max_series {
        return Err(EvalError::TooManySeries {
            limit: ev.limits.max_series,
        });
    }
    ev.samples_loaded = ev.samples_loaded.saturating_add(loaded);
    if ev.samples_loaded > ev.limits.max_samples {
        return Err(EvalError::TooManySamples);
    }
    let mut out = Vec::with_capacity(by_series.len());
    for (labels, parts) in &by_series {
        ev.check_deadline()?;
        let Some(vals) = series_values(kind, &plan, parts) else {
            // A zero whose sign the buckets cannot tell.
            return Ok(None);
        };
        if vals.iter().any(Option::is_some) {
            out.push(VSeries {
                labels: drop_name(labels),
                vals,
            });
        }
    }
    super::check_unique_labels(&out)?;
    Ok(Some(out))
}

/// The widest resolution of `offered` every window of the grid is aligned
/// to, if any.
fn plan(offered: &[Resolution], grid: Grid, range: i64, offset: i64) -> Option<Plan> {
    let steps = grid.len();
    if steps == 0 {
        return None;
    }
    let lo0 = grid.start.checked_sub(offset)?.checked_sub(range)?;
    // The last window end must not overflow either.
    let span = i64::try_from(steps - 1).ok()?.checked_mul(grid.step.max(1))?;
    lo0.checked_add(span)?.checked_add(range)?;
    let mut best: Option<Resolution> = None;
    for &res in offered {
        let w = res.millis();
        let aligned =
            range > 0 && range % w == 0 && lo0.rem_euclid(w) == 0 && (steps == 1 || grid.step.max(1) % w == 0);
        if aligned && best.is_none_or(|b| b.millis() < w) {
            best = Some(res);
        }
    }
    Some(Plan {
        resolution: best?,
        lo0,
        range,
        step: grid.step.max(1),
        steps,
    })
}

/// One series' value at every step, or `None` when a result is a zero
/// (whose sign only the raw fold determines).
fn series_values(kind: Kind, plan: &Plan, parts: &Parts) -> Option<Vec<Option<f64>>> {
    let width = plan.resolution.millis();
    let b = &parts.buckets;
    let mut vals = Vec::with_capacity(plan.steps);
    for i in 0..plan.steps {
        let (lo, hi) = (plan.lo(i), plan.hi(i));
        let from = b.partition_point(|x| x.start_ms < lo);
        let to = b.partition_point(|x| x.start_ms <= hi - width);
        let inner = b.get(from..to).unwrap_or_default();
        let edge = parts.edges.get(i).copied().flatten();
        let v = match kind {
            Kind::Count => {
                let n = inner.iter().map(|x| x.count).sum::<u64>() + u64::from(edge.is_some());
                (n > 0).then_some(n as f64)
            }
            Kind::Min | Kind::Max => {
                let values = inner
                    .iter()
                    .map(|x| if kind == Kind::Min { x.min } else { x.max })
                    .chain(edge);
                let folded = values.reduce(|m, v| {
                    let better = if kind == Kind::Min { v < m } else { v > m };
                    if better || m.is_nan() { v } else { m }
                });
                if folded == Some(0.0) {
                    return None;
                }
                folded
            }
        };
        vals.push(v);
    }
    Some(vals)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn grid(start: i64, end: i64, step: i64) -> Grid {
        Grid { start, end, step }
    }

    const H: i64 = 3_600_000;
    const BOTH: [Resolution; 2] = [Resolution::FiveMinutes, Resolution::OneHour];

    #[test]
    fn plans_only_aligned_grids() {
        let p = plan(&BOTH, grid(2 * H, 10 * H, H), H, 0).unwrap();
        assert_eq!((p.resolution, p.lo0, p.steps), (Resolution::OneHour, H, 9));
        assert_eq!(p.hi(8), 10 * H);
        // A 5-minute step only fits 5-minute buckets.
        let p = plan(&BOTH, grid(2 * H, 3 * H, 300_000), H, 0).unwrap();
        assert_eq!(p.resolution, Resolution::FiveMinutes);
        // Offsets shift the windows.
        assert_eq!(
            plan(&BOTH, grid(2 * H, 3 * H, H), H, 600_000).unwrap().resolution,
            Resolution::FiveMinutes
        );
        assert!(plan(&BOTH, grid(2 * H, 3 * H, H), H, 1).is_none());
        assert!(plan(&BOTH, grid(2 * H + 1, 3 * H, H), H, 0).is_none());
        assert!(plan(&BOTH, grid(2 * H, 3 * H, H), 90_000, 0).is_none());
        assert!(plan(&BOTH, grid(2 * H, 3 * H, H), 0, 0).is_none());
        assert!(plan(&[], grid(2 * H, 3 * H, H), H, 0).is_none());
        assert!(plan(&BOTH, grid(i64::MIN, i64::MIN, H), H, 0).is_none());
        assert!(plan(&BOTH, grid(i64::MAX - 10, i64::MAX, 1), H, 0).is_none());
    }

    #[test]
    fn zero_results_are_left_to_the_raw_path() {
        let p = plan(&BOTH, grid(H, H, H), H, 0).unwrap();
        let bucket = |min: f64, max: f64| Bucket {
            start_ms: 0,
            min,
            max,
            sum: 0.0,
            count: 2,
            last: max,
        };
        let parts = Parts {
            buckets: vec![bucket(-0.0, 1.0)],
            edges: vec![None],
        };
        assert!(series_values(Kind::Min, &p, &parts).is_none());
        assert_eq!(series_values(Kind::Max, &p, &parts), Some(vec![Some(1.0)]));
        assert_eq!(series_values(Kind::Count, &p, &parts), Some(vec![Some(2.0)]));
        let nan = Parts {
            buckets: vec![bucket(f64::NAN, f64::NAN)],
            edges: vec![Some(3.0)],
        };
        assert_eq!(series_values(Kind::Min, &p, &nan), Some(vec![Some(3.0)]));
        assert_eq!(series_values(Kind::Count, &p, &nan), Some(vec![Some(3.0)]));
    }
}
