//! Time-to-failure trend: fits a robust line (Theil–Sen) through each
//! series of a failure-bound quantity — filesystem free space falling to
//! zero, SSD wear (`percentage_used`) rising to 100, a voltage rail
//! drifting toward its sensor's min or max — and alerts when even the slow
//! end of the slope's 90 % confidence interval crosses the threshold within
//! the horizon.
//!
//! Rationale: a fixed threshold fires either too late (a fast fill) or on
//! full-but-static volumes; a trend predicts. Theil–Sen ignores the odd
//! spike (a log rotation, a cleanup), and using the conservative slope
//! bound means noise around a flat line never predicts a failure, which
//! keeps a healthy fleet silent.

use std::collections::{BTreeMap, HashMap};

use super::robust::theil_sen;
use super::{Detector, Inputs};
use crate::alert::{ALERT_NAME, ActiveAlert};
use crate::model::{Labels, SeriesSamples, is_stale_marker};
use crate::query::eval::instant_value;

/// One quantity whose trend predicts a failure.
#[derive(Debug, Clone, Copy)]
pub struct TrendTarget {
    /// The metric.
    pub metric: &'static str,
    /// The value at which the part fails.
    pub threshold: f64,
    /// A series holding the threshold per part instead (a sensor's own
    /// limit), matched on the `keep` labels; parts without one are skipped.
    pub threshold_metric: Option<&'static str>,
    /// Whether failure is the value rising to the threshold (else falling).
    pub rising: bool,
    /// How far ahead a predicted crossing raises the alert.
    pub horizon_ms: i64,
    /// Label names that identify the part (kept on the alert).
    pub keep: &'static [&'static str],
    /// Series with one of these `fstype`s are skipped (virtual filesystems).
    pub skip_fstypes: &'static [&'static str],
    /// What the part is, for the text.
    pub what: &'static str,
    /// The history each fit uses.
    pub window_ms: i64,
    /// Least history (span of samples) before a series is judged.
    pub min_span_ms: i64,
}

/// The targets of [`TimeToFailure::default`].
pub const TARGETS: &[TrendTarget] = &[
    TrendTarget {
        metric: "node_filesystem_avail_bytes",
        threshold: 0.0,
        rising: false,
        horizon_ms: 4 * 86_400_000,
        threshold_metric: None,
        keep: &["instance", "device", "mountpoint", "fstype"],
        skip_fstypes: &["tmpfs", "ramfs", "squashfs", "overlay", "devtmpfs", "iso9660"],
        what: "filesystem",
        window_ms: 12 * HOUR,
        min_span_ms: 3 * HOUR,
    },
    TrendTarget {
        metric: "smartctl_device_percentage_used",
        threshold: 100.0,
        rising: true,
        horizon_ms: 30 * 86_400_000,
        threshold_metric: None,
        keep: &["instance", "device"],
        skip_fstypes: &[],
        what: "SSD endurance",
        // Wear moves in whole percent, hours apart: a fit needs days.
        window_ms: 7 * 24 * HOUR,
        min_span_ms: 24 * HOUR,
    },
    TrendTarget {
        metric: "node_hwmon_in_volts",
        threshold: 0.0,
        threshold_metric: Some("node_hwmon_in_min_volts"),
        rising: false,
        horizon_ms: 2 * 86_400_000,
        keep: &["instance", "chip", "sensor"],
        skip_fstypes: &[],
        what: "voltage rail (toward min)",
        window_ms: VOLTAGE_WINDOW_MS,
        min_span_ms: VOLTAGE_WINDOW_MS / 2,
    },
    TrendTarget {
        metric: "node_hwmon_in_volts",
        threshold: 0.0,
        threshold_metric: Some("node_hwmon_in_max_volts"),
        rising: true,
        horizon_ms: 2 * 86_400_000,
        keep: &["instance", "chip", "sensor"],
        skip_fstypes: &[],
        what: "voltage rail (toward max)",
        window_ms: VOLTAGE_WINDOW_MS,
        min_span_ms: VOLTAGE_WINDOW_MS / 2,
    },
];

const HOUR: i64 = 3_600_000;

/// History a voltage fit uses. A drift starts from a flat line, and a fit
/// over a window still mostly flat underestimates it (Theil–Sen is a median
/// of slopes); 6 hours finds a 0.02 V/h drift about 4 hours in, over a day
/// before a 0.65 V margin is gone, while the slope's confidence interval
/// over 6 hours of samples is still far too narrow for sensor noise to
/// predict a crossing within the horizon.
const VOLTAGE_WINDOW_MS: i64 = 6 * HOUR;

/// Normal quantile of the two-sided 90 % interval.
pub const Z90: f64 = 1.645;

/// The detector.
#[derive(Debug, Clone)]
pub struct TimeToFailure {
    /// What it watches.
    pub targets: Vec<TrendTarget>,
    /// Normal quantile of the slope's two-sided confidence interval
    /// ([`Z90`] for 90 %); larger means more conservative.
    pub z: f64,
}

impl Default for TimeToFailure {
    fn default() -> Self {
        TimeToFailure {
            targets: TARGETS.to_vec(),
            z: Z90,
        }
    }
}

/// The alert name.
pub const NAME: &str = "HostpulseTimeToFailure";

impl Detector for TimeToFailure {
    fn name(&self) -> &'static str {
        NAME
    }

    fn inputs(&self) -> &'static [&'static str] {
        &[
            "node_filesystem_avail_bytes",
            "smartctl_device_percentage_used",
            "node_hwmon_in_volts",
            "node_hwmon_in_min_volts",
            "node_hwmon_in_max_volts",
        ]
    }

    fn evaluate(&self, inputs: &Inputs, now_ms: i64) -> Vec<ActiveAlert> {
        let mut out = Vec::new();
        for t in &self.targets {
            let limits: HashMap<Vec<String>, f64> = match t.threshold_metric {
                None => HashMap::new(),
                Some(m) => inputs
                    .series(m)
                    .iter()
                    .filter_map(|s| {
                        let v = instant_value(&s.samples, now_ms)?;
                        Some((key(t, &s.labels), v))
                    })
                    .collect(),
            };
            for s in inputs.series(t.metric) {
                let threshold = match t.threshold_metric {
                    None => t.threshold,
                    // No limit, or a zero limit (unset in the chip): nothing to reach.
                    Some(_) => match limits.get(&key(t, &s.labels)) {
                        Some(v) if *v != 0.0 && v.is_finite() => *v,
                        _ => continue,
                    },
                };
                out.extend(judge_against(t, threshold, s, now_ms, self.z));
            }
        }
        out
    }

    fn window_ms(&self) -> i64 {
        self.targets.iter().map(|t| t.window_ms).max().unwrap_or(0)
    }

    fn every_ms(&self) -> i64 {
        5 * 60_000
    }
}

fn key(t: &TrendTarget, l: &Labels) -> Vec<String> {
    t.keep.iter().map(|k| l.get(k).to_string()).collect()
}

impl TimeToFailure {
    /// The alert for one series against the target's fixed threshold.
    pub fn judge(&self, target: &TrendTarget, series: &SeriesSamples, now_ms: i64) -> Option<ActiveAlert> {
        judge_against(target, target.threshold, series, now_ms, self.z)
    }
}

/// The alert for one series, if its conservative trend crosses `threshold`
/// within the target's horizon.
fn judge_against(
    target: &TrendTarget,
    threshold: f64,
    series: &SeriesSamples,
    now_ms: i64,
    z: f64,
) -> Option<ActiveAlert> {
    if target.skip_fstypes.contains(&series.labels.get("fstype")) {
        return None;
    }
    let samples: Vec<&(i64, f64)> = series
        .samples
        .iter()
        .filter(|(t, v)| *t <= now_ms && now_ms - t <= target.window_ms && !is_stale_marker(*v))
        .collect();
    let (first, last) = (samples.first()?, samples.last()?);
    if last.0 - first.0 < target.min_span_ms || now_ms - last.0 > 15 * 60_000 {
        return None;
    }
    // Seconds relative to now keep the numbers small and exact.
    let points: Vec<(f64, f64)> = samples
        .iter()
        .map(|(t, v)| ((t - now_ms) as f64 / 1000.0, *v))
        .collect();
    let fit = theil_sen(&points, z)?;
    let current = fit.intercept;
    // The failure-ward rate at the slow end of the interval.
    let (rate, distance) = if target.rising {
        (fit.slope_low, threshold - current)
    } else {
        (-fit.slope_high, current - threshold)
    };
    if rate <= 0.0 || distance <= 0.0 {
        return None;
    }
    let eta_s = distance / rate;
    if eta_s * 1000.0 > target.horizon_ms as f64 {
        return None;
    }
    let mut pairs: Vec<(String, String)> = target
        .keep
        .iter()
        .map(|k| ((*k).to_string(), series.labels.get(k).to_string()))
        .collect();
    pairs.push((ALERT_NAME.to_string(), NAME.to_string()));
    pairs.push(("severity".to_string(), "warning".to_string()));
    pairs.push(("part".to_string(), target.what.to_string()));
    let labels = Labels::new(pairs);
    let place = [series.labels.get("mountpoint"), series.labels.get("device")]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or("?")
        .to_string();
    let hours = eta_s / 3600.0;
    Some(ActiveAlert {
            annotations: BTreeMap::from([
                (
                    "summary".to_string(),
                    format!(
                        "{} {place} on {} predicted to fail within {hours:.0} h",
                        target.what,
                        series.labels.get("instance")
                    ),
                ),
                (
                    "description".to_string(),
                    format!(
                        "{} of {place} is {current:.4} and moving toward {} at {:.3e}/s (confidence interval {:.3e} to {:.3e}); at the slow end of that interval it gets there in {hours:.1} hours.",
                        target.metric, threshold, fit.slope, fit.slope_low, fit.slope_high
                    ),
                ),
                (
                    "rationale".to_string(),
                    "A robust trend (Theil-Sen, insensitive to spikes) whose slowest plausible rate still reaches the failure point within the horizon gives lead time a threshold cannot.".to_string(),
                ),
            ]),
            labels,
            value: eta_s,
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn fs(samples: Vec<(i64, f64)>) -> SeriesSamples {
        SeriesSamples {
            labels: Labels::from_pairs(&[
                ("__name__", "node_filesystem_avail_bytes"),
                ("instance", "db1"),
                ("device", "/dev/sda1"),
                ("mountpoint", "/var"),
                ("fstype", "ext4"),
            ]),
            samples,
        }
    }

    /// 12 h of samples every 5 min from `f(hours_before_now)`.
    fn history(f: impl Fn(f64) -> f64) -> Vec<(i64, f64)> {
        (0..=144)
            .rev()
            .map(|i| {
                let t = NOW - i64::from(i) * 300_000;
                (t, f(f64::from(i) * 300.0 / 3600.0))
            })
            .collect()
    }

    fn judge(s: &SeriesSamples) -> Option<ActiveAlert> {
        TimeToFailure::default().judge(&TARGETS[0], s, NOW)
    }

    #[test]
    fn filling_disk_is_predicted_days_ahead() {
        // 80 GB free, losing 1 GB/h with a ±0.3 GB wobble: ~80 h left,
        // a little more at the slow end of the interval.
        let gb = 1e9;
        let s = fs(history(|h| 80.0 * gb + h * gb + 0.3 * gb * (h * 0.7).sin()));
        let a = judge(&s).unwrap();
        let hours = a.value / 3600.0;
        assert!((75.0..=90.0).contains(&hours), "{hours}");
        assert_eq!(a.labels.get("mountpoint"), "/var");
        assert_eq!(a.labels.get(ALERT_NAME), NAME);
        assert!(a.annotations["summary"].contains("/var on db1"));
    }

    #[test]
    fn flat_noisy_full_or_slow_disks_stay_quiet() {
        let gb = 1e9;
        // Noise around a constant level.
        assert!(judge(&fs(history(|h| 50.0 * gb + gb * (h * 3.1).sin()))).is_none());
        // Filling, but 400 h away: beyond the 4-day horizon.
        assert!(judge(&fs(history(|h| 400.0 * gb + h * gb))).is_none());
        // Freeing space.
        assert!(judge(&fs(history(|h| 100.0 * gb - h * gb))).is_none());
        // Too little history (1 h).
        let short: Vec<(i64, f64)> = history(|h| 10.0 * gb + h * 5.0 * gb)
            .into_iter()
            .filter(|(t, _)| NOW - t <= 3_600_000)
            .collect();
        assert!(judge(&fs(short)).is_none());
        // tmpfs is skipped whatever it does.
        let mut tmp = fs(history(|h| gb + h * gb));
        tmp.labels = Labels::from_pairs(&[("instance", "db1"), ("fstype", "tmpfs")]);
        assert!(judge(&tmp).is_none());
    }

    #[test]
    fn one_spike_does_not_predict_a_failure() {
        let gb = 1e9;
        let mut samples = history(|_| 80.0 * gb);
        let n = samples.len();
        for s in &mut samples[n - 3..] {
            s.1 = 1.0 * gb;
        }
        assert!(judge(&fs(samples)).is_none());
    }

    #[test]
    fn voltage_drifting_toward_its_own_min() {
        let rail = |name: &str, samples: Vec<(i64, f64)>| SeriesSamples {
            labels: Labels::from_pairs(&[
                ("__name__", name),
                ("instance", "db3"),
                ("chip", "nct"),
                ("sensor", "in1"),
            ]),
            samples,
        };
        let limit = |v: f64| rail("node_hwmon_in_min_volts", vec![(NOW - 60_000, v)]);
        let detect = |volts: Vec<(i64, f64)>, min: f64| {
            let inputs = Inputs::new(
                HashMap::from([
                    ("node_hwmon_in_volts", vec![rail("node_hwmon_in_volts", volts)]),
                    ("node_hwmon_in_min_volts", vec![limit(min)]),
                ]),
                Vec::new(),
            );
            TimeToFailure::default().evaluate(&inputs, NOW)
        };
        // 12.05 V falling 0.02 V/h with ±0.02 V noise: 11.4 V in ~30 h.
        let drifting = history(|h| 12.05 - 0.02 * (12.0 - h) + 0.02 * (h * 5.3).sin());
        let alerts = detect(drifting.clone(), 11.4);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].labels.get("sensor"), "in1");
        assert!(alerts[0].value < 2.0 * 86_400.0);
        // The same rail with no min set (0) is not judged; a steady rail is quiet.
        assert!(detect(drifting, 0.0).is_empty());
        assert!(detect(history(|h| 12.05 + 0.02 * (h * 5.3).sin()), 11.4).is_empty());
    }

    #[test]
    fn ssd_wear_rising_toward_100() {
        let s = SeriesSamples {
            labels: Labels::from_pairs(&[("instance", "db2"), ("device", "nvme0")]),
            // 97 % used, +1 % every 2 hours: ~6 h left (a day of history).
            samples: (0..=288)
                .rev()
                .map(|i| (NOW - i64::from(i) * 300_000, (97.0 - f64::from(i) / 24.0).round()))
                .collect(),
        };
        let a = TimeToFailure::default().judge(&TARGETS[1], &s, NOW).unwrap();
        assert_eq!(a.labels.get("part"), "SSD endurance");
        assert!(a.value < 86_400.0, "{}", a.value);
    }
}
