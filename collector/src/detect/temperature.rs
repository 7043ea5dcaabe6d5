//! `HostpulseTemperatureCritical`: a hardware temperature sensor at or
//! above the critical limit its own chip reports. Equivalent PromQL:
//! `node_hwmon_temp_celsius >= on(instance, chip, sensor) node_hwmon_temp_crit_celsius`.
//!
//! Rationale: the critical limit is where the hardware itself starts
//! protective action (throttling hard, then shutting down), so reaching it
//! needs a human now; no `for` delay because waiting risks the shutdown.
//! Using the chip's own limit instead of a fixed threshold keeps the rule
//! right for CPUs, NVMe drives and boards alike.

use std::collections::{BTreeMap, HashMap};

use super::{Inputs, Rule};
use crate::alert::{ALERT_NAME, ActiveAlert};
use crate::model::{Labels, SeriesSamples};
use crate::query::eval::instant_value;

/// The reading.
pub const TEMPERATURE: &str = "node_hwmon_temp_celsius";
/// The chip's critical limit for the same sensor.
pub const CRITICAL_LIMIT: &str = "node_hwmon_temp_crit_celsius";

/// The rule; stateless, listed in [`super::RULES`].
#[derive(Debug)]
pub struct TemperatureCritical;

impl Rule for TemperatureCritical {
    fn name(&self) -> &'static str {
        "HostpulseTemperatureCritical"
    }

    fn inputs(&self) -> &'static [&'static str] {
        &[TEMPERATURE, CRITICAL_LIMIT]
    }

    fn evaluate(&self, inputs: &Inputs, now_ms: i64) -> Vec<ActiveAlert> {
        evaluate(
            self.name(),
            inputs.series(TEMPERATURE),
            inputs.series(CRITICAL_LIMIT),
            now_ms,
        )
    }
}

/// Every temperature series whose latest value (5-minute lookback) is at or
/// above the latest critical limit of the same (instance, chip, sensor).
pub fn evaluate(
    alertname: &str,
    temperatures: &[SeriesSamples],
    limits: &[SeriesSamples],
    now_ms: i64,
) -> Vec<ActiveAlert> {
    let key = |l: &Labels| {
        (
            l.get("instance").to_string(),
            l.get("chip").to_string(),
            l.get("sensor").to_string(),
        )
    };
    let mut limit_of: HashMap<(String, String, String), f64> = HashMap::new();
    for s in limits {
        let Some(limit) = instant_value(&s.samples, now_ms).filter(|v| !v.is_nan()) else {
            continue;
        };
        // Two limits for one sensor (say, from two jobs) should not happen;
        // if it does, the lower one is the conservative choice.
        limit_of
            .entry(key(&s.labels))
            .and_modify(|l| *l = l.min(limit))
            .or_insert(limit);
    }
    let mut out = Vec::new();
    for s in temperatures {
        let Some(value) = instant_value(&s.samples, now_ms) else {
            continue;
        };
        let k = key(&s.labels);
        let Some(&limit) = limit_of.get(&k) else {
            continue;
        };
        // A NaN reading (broken sensor) never fires; limits are never NaN.
        if value.is_nan() || value < limit {
            continue;
        }
        let (instance, chip, sensor) = k;
        out.push(ActiveAlert {
            labels: Labels::new(vec![
                (ALERT_NAME.to_string(), alertname.to_string()),
                ("severity".to_string(), "critical".to_string()),
                ("instance".to_string(), instance.clone()),
                ("chip".to_string(), chip.clone()),
                ("sensor".to_string(), sensor.clone()),
            ]),
            annotations: BTreeMap::from([
                (
                    "summary".to_string(),
                    format!("Sensor {sensor} of {chip} on {instance} is at its critical temperature"),
                ),
                (
                    "description".to_string(),
                    format!(
                        "Host {instance}: sensor {sensor} of chip {chip} reads {value} °C, at or above its \
                         critical limit of {limit} °C. The hardware throttles or shuts down at this point; \
                         check cooling (fans, airflow, heatsink) now."
                    ),
                ),
            ]),
            value,
        });
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::alert::{AlertBoard, AlertState};

    const NOW: i64 = 1_700_000_000_000;

    fn series(metric: &str, instance: &str, sensor: &str, samples: &[(i64, f64)]) -> SeriesSamples {
        SeriesSamples {
            labels: Labels::new(vec![
                ("__name__".into(), metric.into()),
                ("instance".into(), instance.into()),
                ("job".into(), "hostpulse".into()),
                ("chip".into(), "platform_coretemp_0".into()),
                ("sensor".into(), sensor.into()),
            ]),
            samples: samples.to_vec(),
        }
    }

    fn temp(instance: &str, sensor: &str, v: f64) -> SeriesSamples {
        series(TEMPERATURE, instance, sensor, &[(NOW - 10_000, v)])
    }

    fn crit(instance: &str, sensor: &str, v: f64) -> SeriesSamples {
        series(
            CRITICAL_LIMIT,
            instance,
            sensor,
            &[(NOW - 3_600_000, 0.0), (NOW - 20_000, v)],
        )
    }

    fn fired(temps: &[SeriesSamples], crits: &[SeriesSamples]) -> Vec<String> {
        evaluate("HostpulseTemperatureCritical", temps, crits, NOW)
            .iter()
            .map(|a| format!("{}/{}", a.labels.get("instance"), a.labels.get("sensor")))
            .collect()
    }

    #[test]
    fn hot_sensor_fires_with_labels_and_text() {
        let alerts = evaluate(
            "HostpulseTemperatureCritical",
            &[temp("db1", "temp1", 100.0)],
            &[crit("db1", "temp1", 100.0)],
            NOW,
        );
        assert_eq!(alerts.len(), 1);
        let a = &alerts[0];
        assert_eq!(
            a.labels.to_string(),
            "{alertname=\"HostpulseTemperatureCritical\",chip=\"platform_coretemp_0\",instance=\"db1\",\
             sensor=\"temp1\",severity=\"critical\"}"
        );
        assert_eq!(a.value, 100.0);
        let description = &a.annotations["description"];
        for part in ["db1", "temp1", "platform_coretemp_0", "100 °C", "limit of 100 °C"] {
            assert!(description.contains(part), "{description}");
        }
        assert!(a.annotations["summary"].contains("db1"));
    }

    #[test]
    fn only_sensors_at_or_above_their_own_limit_fire() {
        let temps = [
            temp("db1", "temp1", 101.0),
            temp("db1", "temp2", 99.5),
            temp("db2", "temp1", 120.0),
            temp("db3", "temp1", f64::NAN),
            // Too old: outside the 5-minute lookback.
            series(TEMPERATURE, "db4", "temp1", &[(NOW - 300_000, 150.0)]),
        ];
        let crits = [
            crit("db1", "temp1", 100.0),
            crit("db1", "temp2", 100.0),
            crit("db3", "temp1", 100.0),
            crit("db4", "temp1", 100.0),
            // db2 has no limit for temp1; a limit for another host does not apply.
            crit("db9", "temp1", 50.0),
        ];
        assert_eq!(fired(&temps, &crits), vec!["db1/temp1"]);
    }

    #[test]
    fn stale_limit_means_no_limit() {
        let stale = f64::from_bits(crate::model::STALE_NAN_BITS);
        let crits = [series(
            CRITICAL_LIMIT,
            "db1",
            "temp1",
            &[(NOW - 20_000, 90.0), (NOW - 10_000, stale)],
        )];
        assert!(fired(&[temp("db1", "temp1", 95.0)], &crits).is_empty());
    }

    #[test]
    fn fire_then_resolve_through_the_board() {
        let board = AlertBoard::new();
        let name = TemperatureCritical.name();
        let hot = evaluate(
            name,
            &[temp("db1", "temp1", 101.0)],
            &[crit("db1", "temp1", 100.0)],
            NOW,
        );
        let t = board.update(name, 0, hot.clone(), NOW);
        assert_eq!(t.fired.len(), 1);
        assert!(t.resolved.is_empty());

        let t = board.update(name, 0, hot, NOW + 15_000);
        assert!(
            t.fired.is_empty() && t.resolved.is_empty(),
            "steady firing sends nothing new"
        );

        let cool = evaluate(name, &[temp("db1", "temp1", 80.0)], &[crit("db1", "temp1", 100.0)], NOW);
        assert!(cool.is_empty());
        let t = board.update(name, 0, cool, NOW + 30_000);
        assert!(t.fired.is_empty());
        assert_eq!(t.resolved.len(), 1, "exactly one resolved notification");
        assert_eq!(t.resolved[0].state, AlertState::Resolved);
        assert!(board.firing().is_empty());
    }
}
