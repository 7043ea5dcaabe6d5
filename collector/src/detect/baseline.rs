//! Per-host learned baseline: each series (one host's sensor) is compared
//! with its own past at the same hour of the day, so a server whose CPU
//! suddenly runs 10 °C hotter than it usually does at 14:00, or whose fan
//! spins a third slower than usual, is caught even while it still looks
//! normal next to a fixed threshold.
//!
//! Learning: the history (default the last 7 days, read as 5-minute
//! rollup means) is split into 24 hour-of-day buckets (UTC; the phase does
//! not matter, only that the cycle repeats daily). Each bucket holds the
//! median and the MAD of its values — robust, so one bad afternoon in the
//! history neither moves the baseline nor widens it much — and is trusted
//! only once it covers [`Baseline::min_days`] different days. The daily
//! load cycle is therefore part of what is normal and never alerts.
//!
//! Judging: over the recent window (default 30 minutes, left out of the
//! learning) every value is scored against its own hour's bucket; the
//! median of those scores must pass [`Baseline::min_score`] and the median
//! deviation must pass the target's absolute and relative floors. Taking the
//! median over the window and a `for` on top make this "sustained": a spike
//! or one noisy sample cannot fire it.

use std::collections::{BTreeMap, BTreeSet};

use super::robust::{mad, median};
use super::{Detector, Inputs, without_name};
use crate::alert::{ALERT_NAME, ActiveAlert};
use crate::model::{Labels, SeriesSamples, is_stale_marker};
use crate::store::Resolution;

/// The alert name.
pub const NAME: &str = "HostpulseBaselineDeviation";

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// Which way a deviation counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Only values above the baseline (temperatures).
    Above,
    /// Only values below it (fan speeds).
    Below,
    /// Either way.
    Both,
}

/// One metric the baseline watches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BaselineTarget {
    /// The metric; every series of it is judged on its own.
    pub metric: &'static str,
    /// Which deviations count.
    pub direction: Direction,
    /// Least absolute deviation, in the metric's unit.
    pub min_deviation: f64,
    /// Least deviation as a fraction of the baseline (0: none).
    pub min_ratio: f64,
    /// Floor of a bucket's spread, so a very steady sensor does not turn a
    /// small change into a huge score.
    pub min_spread: f64,
    /// What the series is, for the text.
    pub what: &'static str,
}

/// The targets of [`Baseline::default`].
pub const TARGETS: &[BaselineTarget] = &[
    BaselineTarget {
        metric: "node_hwmon_temp_celsius",
        direction: Direction::Above,
        min_deviation: 8.0,
        min_ratio: 0.0,
        min_spread: 1.0,
        what: "temperature",
    },
    BaselineTarget {
        metric: "node_hwmon_fan_rpm",
        direction: Direction::Below,
        min_deviation: 300.0,
        min_ratio: 0.25,
        min_spread: 50.0,
        what: "fan speed",
    },
];

/// The metric names of [`TARGETS`], for [`Detector::inputs`].
const INPUTS: &[&str] = &["node_hwmon_temp_celsius", "node_hwmon_fan_rpm"];

/// The detector and its knobs.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// What it watches.
    pub targets: &'static [BaselineTarget],
    /// How much history the baseline is learned from.
    pub history_ms: i64,
    /// The recent window that is judged (and left out of learning).
    pub recent_ms: i64,
    /// Least distinct days an hour bucket must cover before it is trusted.
    pub min_days: usize,
    /// Robust z-score (deviation over the bucket's MAD) at or above which a
    /// series deviates.
    pub min_score: f64,
    /// How long a deviation must hold before it fires.
    pub hold_ms: i64,
}

impl Default for Baseline {
    fn default() -> Self {
        Baseline {
            targets: TARGETS,
            history_ms: 7 * DAY,
            recent_ms: 30 * 60_000,
            min_days: 3,
            min_score: 6.0,
            hold_ms: 30 * 60_000,
        }
    }
}

impl Detector for Baseline {
    fn name(&self) -> &'static str {
        NAME
    }

    fn inputs(&self) -> &'static [&'static str] {
        INPUTS
    }

    fn hold_ms(&self) -> i64 {
        self.hold_ms
    }

    fn window_ms(&self) -> i64 {
        self.history_ms.saturating_add(self.recent_ms)
    }

    fn every_ms(&self) -> i64 {
        // Rereading a week of rollups is the expensive part; a 30-minute
        // window and a 30-minute hold do not need a fresher look.
        15 * 60_000
    }

    fn rollup(&self) -> Option<Resolution> {
        Some(Resolution::FiveMinutes)
    }

    fn evaluate(&self, inputs: &Inputs, now_ms: i64) -> Vec<ActiveAlert> {
        let mut out = Vec::new();
        for t in self.targets {
            for s in inputs.series(t.metric) {
                out.extend(self.judge(t, s, now_ms));
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }
}

/// One hour-of-day bucket of a learned profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HourBaseline {
    /// Median of the bucket's values.
    pub median: f64,
    /// Their MAD (normal-consistent).
    pub spread: f64,
    /// Distinct days the values came from.
    pub days: usize,
}

/// The hour of the day (0–23, UTC) of a timestamp.
fn hour_of_day(t_ms: i64) -> usize {
    // rem_euclid keeps timestamps before 1970 in range too.
    usize::try_from(t_ms.rem_euclid(DAY) / HOUR).unwrap_or(0)
}

/// Learns the 24 hour-of-day buckets from `samples` (pure, for tests).
pub fn learn(samples: &[(i64, f64)]) -> [Option<HourBaseline>; 24] {
    let mut values: [Vec<f64>; 24] = Default::default();
    let mut days: [BTreeSet<i64>; 24] = Default::default();
    for (t, v) in samples {
        if !v.is_finite() {
            continue;
        }
        let h = hour_of_day(*t);
        values[h].push(*v);
        days[h].insert(t.div_euclid(DAY));
    }
    let mut out = [None; 24];
    for (h, slot) in out.iter_mut().enumerate() {
        if let (Some(median), Some(spread)) = (median(&values[h]), mad(&values[h])) {
            *slot = Some(HourBaseline {
                median,
                spread,
                days: days[h].len(),
            });
        }
    }
    out
}

impl Baseline {
    /// The alert for one series, if its recent values sit far from its
    /// learned baseline (pure, for tests).
    pub fn judge(&self, target: &BaselineTarget, series: &SeriesSamples, now_ms: i64) -> Option<ActiveAlert> {
        let recent_from = now_ms.saturating_sub(self.recent_ms);
        let learn_from = recent_from.saturating_sub(self.history_ms);
        let usable = series
            .samples
            .iter()
            .copied()
            .filter(|(t, v)| *t <= now_ms && v.is_finite() && !is_stale_marker(*v));
        let (recent, history): (Vec<_>, Vec<_>) = usable
            .filter(|(t, _)| *t >= learn_from)
            .partition(|(t, _)| *t > recent_from);
        // A window needs several points before its median means "sustained".
        if recent.len() < 3 {
            return None;
        }
        let profile = learn(&history);
        let mut scores = Vec::with_capacity(recent.len());
        let mut deviations = Vec::with_capacity(recent.len());
        let mut baselines = Vec::with_capacity(recent.len());
        for (t, v) in &recent {
            let b = profile[hour_of_day(*t)].filter(|b| b.days >= self.min_days)?;
            let deviation = v - b.median;
            scores.push(deviation / b.spread.max(target.min_spread));
            deviations.push(deviation);
            baselines.push(b.median);
        }
        let (score, deviation, baseline) = (median(&scores)?, median(&deviations)?, median(&baselines)?);
        let counts = match target.direction {
            Direction::Above => score > 0.0,
            Direction::Below => score < 0.0,
            Direction::Both => true,
        };
        if !counts
            || score.abs() < self.min_score
            || deviation.abs() < target.min_deviation
            || deviation.abs() < target.min_ratio * baseline.abs()
        {
            return None;
        }
        let mut pairs = without_name(&series.labels).pairs().to_vec();
        pairs.push(("metric".to_string(), target.metric.to_string()));
        pairs.push((ALERT_NAME.to_string(), NAME.to_string()));
        pairs.push(("severity".to_string(), "warning".to_string()));
        let instance = series.labels.get("instance");
        let place = [series.labels.get("sensor"), series.labels.get("device")]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or(target.metric);
        let way = if deviation > 0.0 { "above" } else { "below" };
        Some(ActiveAlert {
            labels: Labels::new(pairs),
            annotations: BTreeMap::from([
                (
                    "summary".to_string(),
                    format!(
                        "{} {place} on {instance} is {:.1} {way} its usual level for this hour",
                        target.what,
                        deviation.abs()
                    ),
                ),
                (
                    "description".to_string(),
                    format!(
                        "Over the last {} min {} ({place}) on {instance} sat at a median of {:.1} from its learned baseline of {baseline:.1} for this hour of the day (robust score {score:.1}, learned from up to {} days of history).",
                        self.recent_ms / 60_000,
                        target.metric,
                        deviation,
                        self.history_ms / DAY
                    ),
                ),
                (
                    "rationale".to_string(),
                    "A part that starts to fail changes how its own host behaves before it crosses a fixed limit; comparing each sensor with its own history at the same hour of the day keeps the daily load cycle from counting as a change.".to_string(),
                ),
            ]),
            value: deviation,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Midnight UTC, so hours of the day are easy to read.
    const T0: i64 = 1_767_225_600_000;
    const STEP: i64 = 5 * 60_000;

    fn series(samples: Vec<(i64, f64)>) -> SeriesSamples {
        SeriesSamples {
            labels: Labels::from_pairs(&[
                ("__name__", "node_hwmon_temp_celsius"),
                ("instance", "db1"),
                ("chip", "platform_coretemp_0"),
                ("sensor", "temp1"),
            ]),
            samples,
        }
    }

    /// Deterministic jitter in [-1, 1].
    fn jitter(i: i64) -> f64 {
        ((i * 7919) % 201 - 100) as f64 / 100.0
    }

    /// A CPU temperature with a strong daily cycle (45 °C at night, 75 °C
    /// at the afternoon peak) and ±1 °C jitter, every 5 minutes from `T0`
    /// for `days`, plus `step` °C from `step_at` on.
    fn cycle(days: i64, step_at: i64, step: f64) -> Vec<(i64, f64)> {
        (0..days * DAY / STEP)
            .map(|i| {
                let t = T0 + i * STEP;
                let phase = (t - T0).rem_euclid(DAY) as f64 / DAY as f64 * std::f64::consts::TAU;
                let v = 60.0 - 15.0 * phase.cos() + jitter(i) + if t >= step_at { step } else { 0.0 };
                (t, v)
            })
            .collect()
    }

    /// Judges the series at every evaluation time of the last `days_judged`
    /// days the way the loop would, returning the times it deviated.
    fn deviating_times(samples: &[(i64, f64)], from: i64, to: i64) -> Vec<i64> {
        let d = Baseline::default();
        let s = series(samples.to_vec());
        (0..)
            .map(|k| from + k * 15 * 60_000)
            .take_while(|t| *t <= to)
            .filter(|t| d.judge(&TARGETS[0], &s, *t).is_some())
            .collect()
    }

    #[test]
    fn the_daily_cycle_never_alerts() {
        // A 30 °C swing every day, judged at every round of days 4 to 9:
        // the swing is what the baseline learned, so nothing deviates.
        let samples = cycle(9, i64::MAX, 0.0);
        let hits = deviating_times(&samples, T0 + 4 * DAY, T0 + 9 * DAY - STEP);
        assert!(hits.is_empty(), "daily cycle alerted at {hits:?}");
    }

    #[test]
    fn a_step_change_alerts_within_the_hour_and_only_after_it() {
        // The host runs 12 °C hotter from day 6, 13:00 on: well inside the
        // cycle's own range, so no fixed threshold sees it.
        let step_at = T0 + 6 * DAY + 13 * HOUR;
        let samples = cycle(8, step_at, 12.0);
        let hits = deviating_times(&samples, T0 + 4 * DAY, T0 + 8 * DAY - STEP);
        let first = *hits.first().expect("the step is found");
        assert!(first > step_at, "nothing before the step: {first}");
        assert!(
            first - step_at <= HOUR,
            "found {} min after the step",
            (first - step_at) / 60_000
        );
        // And it keeps holding for the rest of that day (the baseline
        // learns the new level only as it becomes the median of the week).
        assert!(
            hits.iter().filter(|t| **t < step_at + 10 * HOUR).count() >= 30,
            "{hits:?}"
        );
        let a = Baseline::default()
            .judge(&TARGETS[0], &series(samples), step_at + HOUR)
            .unwrap();
        assert_eq!(a.labels.get(ALERT_NAME), NAME);
        assert_eq!(a.labels.get("sensor"), "temp1");
        assert_eq!(a.labels.get("metric"), "node_hwmon_temp_celsius");
        assert!((a.value - 12.0).abs() < 1.5, "{}", a.value);
        assert!(a.annotations["summary"].contains("above"), "{:?}", a.annotations);
    }

    #[test]
    fn a_single_spike_or_a_cooler_host_does_not_alert() {
        let mut samples = cycle(6, i64::MAX, 0.0);
        let n = samples.len();
        // One wild sample in the recent window.
        samples[n - 2].1 = 120.0;
        let now = samples[n - 1].0;
        assert!(Baseline::default().judge(&TARGETS[0], &series(samples), now).is_none());
        // 15 °C cooler than usual: temperatures only count upward.
        let cooler = cycle(6, T0 + 5 * DAY + 20 * HOUR, -15.0);
        let now = cooler[cooler.len() - 1].0;
        assert!(Baseline::default().judge(&TARGETS[0], &series(cooler), now).is_none());
    }

    #[test]
    fn too_little_history_is_not_judged() {
        // Two days of history, then a big step: the buckets cover two days,
        // fewer than the three needed.
        let samples = cycle(3, T0 + 2 * DAY + 12 * HOUR, 25.0);
        let now = T0 + 2 * DAY + 14 * HOUR;
        assert!(Baseline::default().judge(&TARGETS[0], &series(samples), now).is_none());
    }

    #[test]
    fn fans_count_downward_with_a_relative_floor() {
        let fan = |slowdown: f64| SeriesSamples {
            labels: Labels::from_pairs(&[
                ("__name__", "node_hwmon_fan_rpm"),
                ("instance", "db2"),
                ("sensor", "fan1"),
            ]),
            samples: (0..5 * DAY / STEP)
                .map(|i| {
                    let t = T0 + i * STEP;
                    let late = t >= T0 + 4 * DAY + 12 * HOUR;
                    (t, 5000.0 + 80.0 * jitter(i) - if late { slowdown } else { 0.0 })
                })
                .collect(),
        };
        let now = T0 + 4 * DAY + 13 * HOUR;
        let inputs = |s: SeriesSamples| Inputs::new(HashMap::from([("node_hwmon_fan_rpm", vec![s])]), Vec::new());
        let d = Baseline::default();
        let alerts = d.evaluate(&inputs(fan(2000.0)), now);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].labels.get("instance"), "db2");
        assert!(alerts[0].annotations["summary"].contains("below"));
        // 10 % slower: many MADs away, but below the 25 % floor.
        assert!(d.evaluate(&inputs(fan(500.0)), now).is_empty());
        // Faster is not a fault.
        assert!(d.evaluate(&inputs(fan(-2000.0)), now).is_empty());
    }

    #[test]
    fn learn_counts_days_per_hour() {
        let p = learn(&[
            (T0, 1.0),
            (T0 + DAY, 3.0),
            (T0 + DAY + 60_000, 2.0),
            (T0 + HOUR, f64::NAN),
        ]);
        let b = p[0].unwrap();
        assert_eq!((b.median, b.days), (2.0, 2));
        assert!(p[1].is_none(), "NaN only");
        assert_eq!(hour_of_day(T0 - 1), 23);
    }
}
