//! Fleet peer outlier: a host running much hotter than its twins — hosts
//! with the same CPU model (from the inventory each agent sends at stream
//! start) at a similar load. Catches the one server with dried thermal
//! paste, a clogged filter or a missing blank panel that no fixed
//! threshold sees, because it is still within the chip's limits.
//!
//! For each host: its hottest CPU sensor (`coretemp`, `k10temp`, `zenpower`,
//! `cpu` chips; any chip if none matches) and `node_load1`. Within a model
//! group, temperature is fitted against load with a robust line
//! (Theil–Sen, slope clamped to [0, [`PeerOutlier::max_slope`]]), which is
//! what "at similar load" means without needing peers at exactly the same
//! load; each host's residual is then compared with its peers' residuals:
//! distance from their median in units of their MAD (floored at
//! [`PeerOutlier::min_spread_celsius`]), so one other odd host cannot hide
//! or fake an outlier.

use std::collections::{BTreeMap, HashMap};

use super::robust::{mad, median, theil_sen};
use super::{Detector, Inputs};
use crate::alert::{ALERT_NAME, ActiveAlert};
use crate::model::Labels;
use crate::query::eval::instant_value;

/// The alert name.
pub const NAME: &str = "HostpulseHotterThanPeers";

/// The detector and its knobs.
#[derive(Debug, Clone)]
pub struct PeerOutlier {
    /// Least peers (other hosts) a comparison needs.
    pub min_peers: usize,
    /// Robust z-score at or above which a host is an outlier.
    pub min_score: f64,
    /// Least absolute excess over the peers' median, °C.
    pub min_excess_celsius: f64,
    /// Floor of the peers' spread, °C, so a very uniform fleet does not
    /// turn a 2 °C difference into a huge score.
    pub min_spread_celsius: f64,
    /// Largest temperature rise per unit of load the fit may use, °C.
    pub max_slope: f64,
    /// How long a host must stay an outlier.
    pub hold_ms: i64,
}

impl Default for PeerOutlier {
    fn default() -> Self {
        PeerOutlier {
            min_peers: 4,
            min_score: 4.0,
            min_excess_celsius: 8.0,
            min_spread_celsius: 1.5,
            max_slope: 5.0,
            hold_ms: 15 * 60_000,
        }
    }
}

const CPU_CHIPS: &[&str] = &["coretemp", "k10temp", "zenpower", "cpu"];

/// One host's reading.
#[derive(Debug, Clone, PartialEq)]
pub struct HostReading {
    /// Host.
    pub instance: String,
    /// Peer group (CPU model).
    pub model: String,
    /// Hottest CPU sensor, °C.
    pub celsius: f64,
    /// 1-minute load average.
    pub load: f64,
}

impl Detector for PeerOutlier {
    fn name(&self) -> &'static str {
        NAME
    }

    fn inputs(&self) -> &'static [&'static str] {
        &["node_hwmon_temp_celsius", "node_load1"]
    }

    fn hold_ms(&self) -> i64 {
        self.hold_ms
    }

    fn evaluate(&self, inputs: &Inputs, now_ms: i64) -> Vec<ActiveAlert> {
        let models: HashMap<&str, &str> = inputs
            .hosts()
            .iter()
            .filter(|h| !h.cpu_model.is_empty())
            .map(|h| (h.host.as_str(), h.cpu_model.as_str()))
            .collect();
        let mut loads: HashMap<&str, f64> = HashMap::new();
        for s in inputs.series("node_load1") {
            if let Some(v) = instant_value(&s.samples, now_ms) {
                loads.insert(s.labels.get("instance"), v);
            }
        }
        // Hottest sensor per host, CPU chips preferred.
        let mut hottest: HashMap<&str, (bool, f64)> = HashMap::new();
        for s in inputs.series("node_hwmon_temp_celsius") {
            let Some(v) = instant_value(&s.samples, now_ms).filter(|v| v.is_finite()) else {
                continue;
            };
            let cpu = CPU_CHIPS.iter().any(|c| s.labels.get("chip").contains(c));
            let e = hottest.entry(s.labels.get("instance")).or_insert((cpu, v));
            if (cpu, v) > *e && (cpu || !e.0) {
                *e = (cpu, v);
            }
        }
        let readings: Vec<HostReading> = hottest
            .into_iter()
            .filter_map(|(instance, (_, celsius))| {
                Some(HostReading {
                    instance: instance.to_string(),
                    model: (*models.get(instance)?).to_string(),
                    celsius,
                    load: *loads.get(instance)?,
                })
            })
            .collect();
        self.outliers(&readings)
    }
}

impl PeerOutlier {
    /// The alerts for readings of one moment (pure, for tests).
    pub fn outliers(&self, readings: &[HostReading]) -> Vec<ActiveAlert> {
        let mut out = Vec::new();
        let mut groups: BTreeMap<&str, Vec<&HostReading>> = BTreeMap::new();
        for r in readings {
            groups.entry(r.model.as_str()).or_default().push(r);
        }
        for group in groups.values() {
            if group.len() <= self.min_peers {
                continue;
            }
            let points: Vec<(f64, f64)> = group.iter().map(|r| (r.load, r.celsius)).collect();
            // All at one load (or too few distinct loads): a flat line.
            let slope = theil_sen(&points, 1.0)
                .map_or(0.0, |f| f.slope)
                .clamp(0.0, self.max_slope);
            let residuals: Vec<f64> = group.iter().map(|r| r.celsius - slope * r.load).collect();
            for (i, h) in group.iter().enumerate() {
                let peers: Vec<f64> = residuals
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, r)| *r)
                    .collect();
                self.judge(h, residuals[i], &peers, &mut out);
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }

    /// Adds the alert for host `h` (load-adjusted temperature `own`) if it
    /// stands out from its peers' load-adjusted temperatures.
    fn judge(&self, h: &HostReading, own: f64, peers: &[f64], out: &mut Vec<ActiveAlert>) {
        let (Some(med), Some(spread)) = (median(peers), mad(peers)) else {
            return;
        };
        let excess = own - med;
        let score = excess / spread.max(self.min_spread_celsius);
        if score < self.min_score || excess < self.min_excess_celsius {
            return;
        }
        out.push(ActiveAlert {
                labels: Labels::from_pairs(&[
                    (ALERT_NAME, NAME),
                    ("instance", &h.instance),
                    ("cpu_model", &h.model),
                    ("severity", "warning"),
                ]),
                annotations: BTreeMap::from([
                    (
                        "summary".to_string(),
                        format!("{} runs {excess:.1} °C hotter than its peers", h.instance),
                    ),
                    (
                        "description".to_string(),
                        format!(
                            "{} reads {:.1} °C at load {:.2}, {excess:.1} °C above what {} hosts with the same CPU ({}) read at that load (robust score {score:.1}). Check its fans, filters, airflow and thermal paste.",
                            h.instance,
                            h.celsius,
                            h.load,
                            peers.len(),
                            h.model
                        ),
                    ),
                    (
                        "rationale".to_string(),
                        "Identical servers at the same load run at the same temperature; one far hotter than its twins has a cooling fault long before it reaches the chip's limits.".to_string(),
                    ),
                ]),
                value: excess,
            });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::SeriesSamples;
    use crate::store::HostRecord;

    fn reading(instance: &str, model: &str, celsius: f64, load: f64) -> HostReading {
        HostReading {
            instance: instance.into(),
            model: model.into(),
            celsius,
            load,
        }
    }

    fn fleet(extra: Vec<HostReading>) -> Vec<HostReading> {
        let mut v: Vec<HostReading> = (0..10)
            .map(|i| reading(&format!("web{i}"), "EPYC 7313", 55.0 + f64::from(i % 3), 8.0))
            .collect();
        v.extend(extra);
        v
    }

    fn flagged(readings: &[HostReading]) -> Vec<String> {
        PeerOutlier::default()
            .outliers(readings)
            .iter()
            .map(|a| a.labels.get("instance").to_string())
            .collect()
    }

    #[test]
    fn the_hot_twin_is_flagged_and_nobody_else() {
        assert!(flagged(&fleet(vec![])).is_empty(), "a healthy fleet is quiet");
        let hot = fleet(vec![reading("web-hot", "EPYC 7313", 71.0, 8.0)]);
        assert_eq!(flagged(&hot), vec!["web-hot"]);
        let a = &PeerOutlier::default().outliers(&hot)[0];
        assert!((a.value - 15.0).abs() < 1.01, "{}", a.value);
        assert_eq!(a.labels.get("cpu_model"), "EPYC 7313");
    }

    #[test]
    fn load_and_model_define_peers() {
        // Hot because it works hard: the load fit explains it.
        assert!(flagged(&fleet(vec![reading("busy", "EPYC 7313", 75.0, 32.0)])).is_empty());
        // A different model runs hotter by design: no peers.
        assert!(flagged(&fleet(vec![reading("xeon", "Xeon 8380", 80.0, 8.0)])).is_empty());
        // Slightly warmer but within the excess floor.
        assert!(flagged(&fleet(vec![reading("warm", "EPYC 7313", 62.0, 8.0)])).is_empty());
    }

    #[test]
    fn reads_hosts_and_series_from_inputs() {
        const NOW: i64 = 1_700_000_000_000;
        let series = |name: &str, instance: &str, chip: &str, v: f64| SeriesSamples {
            labels: Labels::from_pairs(&[("__name__", name), ("instance", instance), ("chip", chip)]),
            samples: vec![(NOW - 5_000, v)],
        };
        let mut temps = Vec::new();
        let mut loads = Vec::new();
        let mut hosts = Vec::new();
        for i in 0..6 {
            let name = format!("h{i}");
            let t = if i == 5 { 80.0 } else { 60.0 };
            temps.push(series("node_hwmon_temp_celsius", &name, "platform_coretemp_0", t));
            // A hotter non-CPU sensor (an NVMe drive) must not count.
            temps.push(series("node_hwmon_temp_celsius", &name, "nvme_nvme0", 90.0));
            loads.push(series("node_load1", &name, "", 4.0));
            hosts.push(HostRecord {
                host: name,
                cpu_model: "Xeon".into(),
                ..HostRecord::default()
            });
        }
        let inputs = Inputs::new(
            HashMap::from([("node_hwmon_temp_celsius", temps), ("node_load1", loads)]),
            hosts,
        );
        let alerts = PeerOutlier::default().evaluate(&inputs, NOW);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].labels.get("instance"), "h5");
    }
}
