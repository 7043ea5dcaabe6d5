//! SMART verdict: one judgement per drive from everything SMART says
//! together — the overall self-assessment, smartctl's exit-status bits and
//! the growth of the attributes that predict failure — instead of one
//! alert per symptom.
//!
//! Verdicts, worst first: `failed` (self-assessment failed, or smartctl's
//! "disk failing" bit), `failing` (a pre-failure attribute at its
//! threshold now), `degrading` (reallocated, pending, offline-uncorrectable
//! or reported-uncorrectable counts grew within the window). Old damage
//! that stopped growing, and the "was at threshold in the past" bit alone,
//! are history, not a verdict, so a healthy fleet with scarred drives stays
//! quiet.

use std::collections::{BTreeMap, HashMap};

use super::{Detector, Inputs};
use crate::alert::{ALERT_NAME, ActiveAlert};
use crate::model::{Labels, is_stale_marker};
use crate::query::eval::instant_value;

/// The alert name.
pub const NAME: &str = "HostpulseSmartVerdict";

/// Attributes whose growth means the media is degrading.
pub const GROWTH_ATTRIBUTES: &[&str] = &[
    "Reallocated_Sector_Ct",
    "Current_Pending_Sector",
    "Offline_Uncorrectable",
    "Reported_Uncorrect",
];

/// The verdict on one drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Attributes growing.
    Degrading,
    /// A pre-failure attribute at its threshold.
    Failing,
    /// The drive says it failed.
    Failed,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Degrading => "degrading",
            Verdict::Failing => "failing",
            Verdict::Failed => "failed",
        }
    }
}

/// The detector.
#[derive(Debug, Clone)]
pub struct SmartVerdict {
    /// How far back attribute growth is measured.
    pub window_ms: i64,
}

impl Default for SmartVerdict {
    fn default() -> Self {
        SmartVerdict {
            window_ms: 24 * 3_600_000,
        }
    }
}

impl Detector for SmartVerdict {
    fn name(&self) -> &'static str {
        NAME
    }

    fn inputs(&self) -> &'static [&'static str] {
        &[
            "smartctl_device_smart_status",
            "hostpulse_smart_exit_status_bit",
            "smartctl_device_attribute",
        ]
    }

    fn window_ms(&self) -> i64 {
        self.window_ms
    }

    fn every_ms(&self) -> i64 {
        // SMART is sampled every 5-30 minutes; rereading 24 h of attributes
        // more often finds nothing new.
        5 * 60_000
    }

    fn evaluate(&self, inputs: &Inputs, now_ms: i64) -> Vec<ActiveAlert> {
        // (instance, device) → (verdict, reasons)
        let mut drives: HashMap<(String, String), (Verdict, Vec<String>)> = HashMap::new();
        let mut note = |l: &Labels, v: Verdict, reason: String| {
            let key = (l.get("instance").to_string(), l.get("device").to_string());
            let e = drives.entry(key).or_insert((v, Vec::new()));
            e.0 = e.0.max(v);
            e.1.push(reason);
        };
        for s in inputs.series("smartctl_device_smart_status") {
            if instant_value(&s.samples, now_ms) == Some(0.0) {
                note(
                    &s.labels,
                    Verdict::Failed,
                    "SMART overall self-assessment: FAILED".into(),
                );
            }
        }
        for s in inputs.series("hostpulse_smart_exit_status_bit") {
            if instant_value(&s.samples, now_ms) != Some(1.0) {
                continue;
            }
            match s.labels.get("bit") {
                "disk_failing" => note(&s.labels, Verdict::Failed, "smartctl: disk failing".into()),
                "prefail_attribute_at_threshold" => note(
                    &s.labels,
                    Verdict::Failing,
                    "smartctl: a pre-failure attribute is at its threshold".into(),
                ),
                _ => {}
            }
        }
        for s in inputs.series("smartctl_device_attribute") {
            let name = s.labels.get("attribute_name");
            if s.labels.get("attribute_value_type") != "raw" || !GROWTH_ATTRIBUTES.contains(&name) {
                continue;
            }
            let in_window: Vec<f64> = s
                .samples
                .iter()
                .filter(|(t, v)| *t <= now_ms && now_ms - t <= self.window_ms && !is_stale_marker(*v))
                .map(|(_, v)| *v)
                .collect();
            let (Some(first), Some(last)) = (in_window.first(), in_window.last()) else {
                continue;
            };
            // A counter reset (drive swapped) is not growth.
            let growth = last - first;
            if growth > 0.0 && in_window.windows(2).all(|w| w[1] >= w[0]) {
                note(
                    &s.labels,
                    Verdict::Degrading,
                    format!("{name} grew by {growth} (now {last})"),
                );
            }
        }
        let mut out: Vec<ActiveAlert> = drives
            .into_iter()
            .map(|((instance, device), (verdict, reasons))| {
                let severity = if verdict == Verdict::Degrading {
                    "warning"
                } else {
                    "critical"
                };
                ActiveAlert {
                    labels: Labels::from_pairs(&[
                        (ALERT_NAME, NAME),
                        ("instance", &instance),
                        ("device", &device),
                        ("verdict", verdict.as_str()),
                        ("severity", severity),
                    ]),
                    annotations: BTreeMap::from([
                        (
                            "summary".to_string(),
                            format!("Drive {device} on {instance}: SMART verdict {}", verdict.as_str()),
                        ),
                        ("description".to_string(), reasons.join("; ")),
                        (
                            "rationale".to_string(),
                            "SMART's verdict, smartctl's exit bits and growing defect counts each miss failures the others catch; judged together they give one actionable verdict per drive.".to_string(),
                        ),
                    ]),
                    value: match verdict {
                        Verdict::Degrading => 1.0,
                        Verdict::Failing => 2.0,
                        Verdict::Failed => 3.0,
                    },
                }
            })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::SeriesSamples;

    const NOW: i64 = 1_700_000_000_000;
    const H: i64 = 3_600_000;

    fn series(name: &str, device: &str, extra: &[(&str, &str)], samples: Vec<(i64, f64)>) -> SeriesSamples {
        let mut pairs = vec![("__name__", name), ("instance", "db1"), ("device", device)];
        pairs.extend_from_slice(extra);
        SeriesSamples {
            labels: Labels::from_pairs(&pairs),
            samples,
        }
    }

    fn attr(device: &str, name: &str, samples: Vec<(i64, f64)>) -> SeriesSamples {
        series(
            "smartctl_device_attribute",
            device,
            &[("attribute_name", name), ("attribute_value_type", "raw")],
            samples,
        )
    }

    fn verdicts(status: Vec<SeriesSamples>, bits: Vec<SeriesSamples>, attrs: Vec<SeriesSamples>) -> Vec<String> {
        let inputs = Inputs::new(
            HashMap::from([
                ("smartctl_device_smart_status", status),
                ("hostpulse_smart_exit_status_bit", bits),
                ("smartctl_device_attribute", attrs),
            ]),
            Vec::new(),
        );
        SmartVerdict::default()
            .evaluate(&inputs, NOW)
            .iter()
            .map(|a| format!("{}={}", a.labels.get("device"), a.labels.get("verdict")))
            .collect()
    }

    #[test]
    fn verdicts_combine_status_bits_and_growth() {
        let status = vec![
            series("smartctl_device_smart_status", "sda", &[], vec![(NOW - 60_000, 0.0)]),
            series("smartctl_device_smart_status", "sdb", &[], vec![(NOW - 60_000, 1.0)]),
            series("smartctl_device_smart_status", "sdc", &[], vec![(NOW - 60_000, 1.0)]),
        ];
        let bits = vec![
            series(
                "hostpulse_smart_exit_status_bit",
                "sdb",
                &[("bit", "prefail_attribute_at_threshold")],
                vec![(NOW - 60_000, 1.0)],
            ),
            // History only: not a verdict.
            series(
                "hostpulse_smart_exit_status_bit",
                "sdc",
                &[("bit", "attribute_was_at_threshold")],
                vec![(NOW - 60_000, 1.0)],
            ),
        ];
        let attrs = vec![
            // sda also grows: still one alert, the worst verdict.
            attr(
                "sda",
                "Reallocated_Sector_Ct",
                vec![(NOW - 10 * H, 8.0), (NOW - H, 16.0)],
            ),
            attr(
                "sdd",
                "Current_Pending_Sector",
                vec![(NOW - 10 * H, 0.0), (NOW - H, 3.0)],
            ),
            // Old, constant damage.
            attr(
                "sde",
                "Reallocated_Sector_Ct",
                vec![(NOW - 10 * H, 120.0), (NOW - H, 120.0)],
            ),
            // Growth outside the window.
            attr(
                "sdf",
                "Reallocated_Sector_Ct",
                vec![(NOW - 30 * H, 1.0), (NOW - 20 * H, 9.0)],
            ),
            // A replaced drive: the counter went down.
            attr(
                "sdg",
                "Reallocated_Sector_Ct",
                vec![(NOW - 10 * H, 50.0), (NOW - 5 * H, 0.0), (NOW - H, 1.0)],
            ),
        ];
        assert_eq!(
            verdicts(status, bits, attrs),
            vec!["sda=failed", "sdb=failing", "sdd=degrading"]
        );
    }
}
