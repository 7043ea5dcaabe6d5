//! The detectors' knobs as collector configuration: the `[detectors.*]`
//! tables of `collector.toml`, parsed by serde (unknown keys rejected),
//! validated with errors that name the key, and built into the detector
//! list the rule loop runs ([`DetectorConfig::build`]). Every key is
//! optional; an absent one keeps the detector's default, so an empty table
//! (or none) runs exactly what [`super::default_detectors`] runs.
//!
//! Durations are written like every other duration in the config
//! (`15m`, `168h`).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::Detector;
use super::baseline::Baseline;
use super::host_silent::HostSilent;
use super::peer_outlier::PeerOutlier;
use super::smart_verdict::SmartVerdict;
use super::trend::TimeToFailure;

/// A knob with a bad value: the full key and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct KnobError {
    /// The key, such as `detectors.peer_outlier.min_peers`.
    pub key: &'static str,
    /// What is wrong with its value.
    pub message: String,
}

/// `[detectors]`: one table per detector.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// `[detectors.host_silent]`.
    pub host_silent: HostSilentConfig,
    /// `[detectors.peer_outlier]`.
    pub peer_outlier: PeerOutlierConfig,
    /// `[detectors.baseline]`.
    pub baseline: BaselineConfig,
    /// `[detectors.trend]`.
    pub trend: TrendConfig,
    /// `[detectors.smart_verdict]`.
    pub smart_verdict: SmartVerdictConfig,
}

/// `[detectors.host_silent]`: how long a host that disconnected may stay
/// away. A host whose stream stays open is silent after two of its own
/// sampling intervals (never below the top-level `host_silent_after` when
/// that is set); these graces cover agents that are expected back.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostSilentConfig {
    /// After a stream dropped while the host was reporting (the agent
    /// reconnects with backoff, capped at 30 s by default) [default: 1m].
    pub reconnect_grace: Option<String>,
    /// After this collector ended a stream itself (overload, storage error)
    /// and after it starts: agents may have failed over to another
    /// collector and come back at their next failback probe (5 min by
    /// default) [default: 6m].
    pub failback_grace: Option<String>,
    /// After an agent closed its stream cleanly (agent stop or restart,
    /// host reboot) [default: 15m].
    pub shutdown_grace: Option<String>,
}

/// `[detectors.peer_outlier]`: a host far hotter than its same-model peers.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerOutlierConfig {
    /// Whether it runs [default: true].
    pub enabled: Option<bool>,
    /// Least other hosts of the same CPU model a comparison needs [default: 4].
    pub min_peers: Option<usize>,
    /// Robust z-score at or above which a host is an outlier [default: 4.0].
    pub min_score: Option<f64>,
    /// Least excess over the peers' median, °C [default: 8.0].
    pub min_excess_celsius: Option<f64>,
    /// How long a host must stay an outlier before it fires [default: 15m].
    pub hold: Option<String>,
}

/// `[detectors.baseline]`: a series far from its own history at this hour.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BaselineConfig {
    /// Whether it runs [default: true].
    pub enabled: Option<bool>,
    /// History the baseline is learned from [default: 168h].
    pub history: Option<String>,
    /// Recent window judged against it [default: 30m].
    pub recent: Option<String>,
    /// Least distinct days an hour-of-day bucket must cover [default: 3].
    pub min_days: Option<usize>,
    /// Robust z-score at or above which a series deviates [default: 6.0].
    pub min_score: Option<f64>,
    /// How long a deviation must hold before it fires [default: 30m].
    pub hold: Option<String>,
}

/// `[detectors.trend]`: time to failure from a robust trend.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrendConfig {
    /// Whether it runs [default: true].
    pub enabled: Option<bool>,
    /// Confidence of the slope interval whose slow end must reach the
    /// failure point, between 0.5 and 0.999 [default: 0.9].
    pub confidence: Option<f64>,
    /// Alert when a filesystem is predicted full within this [default: 96h].
    pub filesystem_horizon: Option<String>,
    /// Alert when SSD wear is predicted at 100 % within this [default: 720h].
    pub wear_horizon: Option<String>,
    /// Alert when a voltage rail is predicted past its limit within this
    /// [default: 48h].
    pub voltage_horizon: Option<String>,
    /// History a voltage fit uses; its half is the least history judged
    /// [default: 6h].
    pub voltage_window: Option<String>,
}

/// `[detectors.smart_verdict]`: one verdict per drive.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SmartVerdictConfig {
    /// Whether it runs [default: true].
    pub enabled: Option<bool>,
    /// How far back attribute growth is measured [default: 24h].
    pub window: Option<String>,
}

fn millis(key: &'static str, text: &Option<String>, default: i64) -> Result<i64, KnobError> {
    let Some(t) = text else {
        return Ok(default);
    };
    let d = hostpulse_agent::config::parse_duration(t).map_err(|message| KnobError { key, message })?;
    if d < Duration::from_secs(1) {
        return Err(KnobError {
            key,
            message: format!("{t:?} is below the 1s minimum"),
        });
    }
    Ok(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn positive(key: &'static str, v: Option<f64>, default: f64) -> Result<f64, KnobError> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() && x > 0.0 => Ok(x),
        Some(x) => Err(KnobError {
            key,
            message: format!("{x} is not a positive number"),
        }),
    }
}

fn at_least_one(key: &'static str, v: Option<usize>, default: usize) -> Result<usize, KnobError> {
    match v {
        None => Ok(default),
        Some(0) => Err(KnobError {
            key,
            message: "must be at least 1".into(),
        }),
        Some(n) => Ok(n),
    }
}

/// The normal quantile for a two-sided interval of confidence `c`
/// (Φ⁻¹((1 + c) / 2)), by Abramowitz & Stegun 26.2.23 (error < 4.5e-4,
/// far below what a confidence setting means).
pub fn two_sided_z(c: f64) -> f64 {
    let p = (1.0 - c) / 2.0; // upper tail
    let t = (-2.0 * p.ln()).sqrt();
    t - (2.515_517 + 0.802_853 * t + 0.010_328 * t * t)
        / (1.0 + 1.432_788 * t + 0.189_269 * t * t + 0.001_308 * t * t * t)
}

impl DetectorConfig {
    /// The detectors to run, host silence first (it inhibits the others),
    /// or the first knob with a bad value. `host_silent_after` is the
    /// floor under every host-silence grace (`None`: none); `started_ms` is
    /// when the collector started watching (see [`HostSilent::started_ms`]).
    pub fn build(
        &self,
        host_silent_after: Option<Duration>,
        started_ms: i64,
    ) -> Result<Vec<Arc<dyn Detector>>, KnobError> {
        let h = &self.host_silent;
        let d = HostSilent::default();
        let mut out: Vec<Arc<dyn Detector>> = vec![Arc::new(HostSilent {
            min_grace_ms: host_silent_after.map_or(0, |a| i64::try_from(a.as_millis()).unwrap_or(i64::MAX)),
            reconnect_grace_ms: millis(
                "detectors.host_silent.reconnect_grace",
                &h.reconnect_grace,
                d.reconnect_grace_ms,
            )?,
            failback_grace_ms: millis(
                "detectors.host_silent.failback_grace",
                &h.failback_grace,
                d.failback_grace_ms,
            )?,
            shutdown_grace_ms: millis(
                "detectors.host_silent.shutdown_grace",
                &h.shutdown_grace,
                d.shutdown_grace_ms,
            )?,
            started_ms,
        })];

        let p = &self.peer_outlier;
        let d = PeerOutlier::default();
        let peer = PeerOutlier {
            min_peers: at_least_one("detectors.peer_outlier.min_peers", p.min_peers, d.min_peers)?,
            min_score: positive("detectors.peer_outlier.min_score", p.min_score, d.min_score)?,
            min_excess_celsius: positive(
                "detectors.peer_outlier.min_excess_celsius",
                p.min_excess_celsius,
                d.min_excess_celsius,
            )?,
            hold_ms: millis("detectors.peer_outlier.hold", &p.hold, d.hold_ms)?,
            ..d
        };
        if p.enabled.unwrap_or(true) {
            out.push(Arc::new(peer));
        }

        let t = &self.trend;
        let mut trend = TimeToFailure::default();
        if let Some(c) = t.confidence {
            if !(0.5..=0.999).contains(&c) {
                return Err(KnobError {
                    key: "detectors.trend.confidence",
                    message: format!("{c} is not between 0.5 and 0.999"),
                });
            }
            trend.z = two_sided_z(c);
        }
        for target in &mut trend.targets {
            match target.metric {
                "node_filesystem_avail_bytes" => {
                    target.horizon_ms = millis(
                        "detectors.trend.filesystem_horizon",
                        &t.filesystem_horizon,
                        target.horizon_ms,
                    )?;
                }
                "smartctl_device_percentage_used" => {
                    target.horizon_ms = millis("detectors.trend.wear_horizon", &t.wear_horizon, target.horizon_ms)?;
                }
                "node_hwmon_in_volts" => {
                    target.horizon_ms =
                        millis("detectors.trend.voltage_horizon", &t.voltage_horizon, target.horizon_ms)?;
                    target.window_ms = millis("detectors.trend.voltage_window", &t.voltage_window, target.window_ms)?;
                    target.min_span_ms = target.window_ms / 2;
                }
                _ => {}
            }
        }
        if t.enabled.unwrap_or(true) {
            out.push(Arc::new(trend));
        }

        let s = &self.smart_verdict;
        let smart = SmartVerdict {
            window_ms: millis(
                "detectors.smart_verdict.window",
                &s.window,
                SmartVerdict::default().window_ms,
            )?,
        };
        if s.enabled.unwrap_or(true) {
            out.push(Arc::new(smart));
        }

        let b = &self.baseline;
        let d = Baseline::default();
        let baseline = Baseline {
            history_ms: millis("detectors.baseline.history", &b.history, d.history_ms)?,
            recent_ms: millis("detectors.baseline.recent", &b.recent, d.recent_ms)?,
            min_days: at_least_one("detectors.baseline.min_days", b.min_days, d.min_days)?,
            min_score: positive("detectors.baseline.min_score", b.min_score, d.min_score)?,
            hold_ms: millis("detectors.baseline.hold", &b.hold, d.hold_ms)?,
            ..d
        };
        if b.enabled.unwrap_or(true) {
            out.push(Arc::new(baseline));
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DetectorConfig, toml::de::Error> {
        toml::from_str(text)
    }

    fn names(c: &DetectorConfig) -> Vec<&'static str> {
        c.build(None, 0).unwrap().iter().map(|d| d.name()).collect()
    }

    #[test]
    fn empty_config_runs_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, DetectorConfig::default());
        let built = names(&c);
        let defaults: Vec<&str> = super::super::default_detectors(None).iter().map(|d| d.name()).collect();
        assert_eq!(built, defaults);
        assert_eq!(built[0], super::super::host_silent::NAME, "host silence first");
    }

    #[test]
    fn knobs_reach_the_detectors_and_can_disable_them() {
        let c = parse(
            "[peer_outlier]\nmin_peers = 7\nhold = \"5m\"\n\
             [baseline]\nenabled = false\n\
             [trend]\nconfidence = 0.95\nvoltage_window = \"8h\"\n",
        )
        .unwrap();
        assert_eq!(c.peer_outlier.min_peers, Some(7));
        let built = names(&c);
        assert!(!built.contains(&super::super::baseline::NAME), "{built:?}");
        let detectors = c.build(Some(Duration::from_secs(180)), 0).unwrap();
        let peer = detectors
            .iter()
            .find(|d| d.name() == super::super::peer_outlier::NAME)
            .unwrap();
        assert_eq!(peer.hold_ms(), 300_000);
        let trend = detectors
            .iter()
            .find(|d| d.name() == super::super::trend::NAME)
            .unwrap();
        // The voltage window is now the longest but the week of SSD wear.
        assert_eq!(trend.window_ms(), 7 * 24 * 3_600_000);
        assert!((two_sided_z(0.95) - 1.96).abs() < 1e-3);
        assert!((two_sided_z(0.9) - super::super::trend::Z90).abs() < 1e-3);
    }

    #[test]
    fn bad_values_name_their_key() {
        let check = |text: &str, key: &str, says: &str| {
            let e = parse(text).unwrap().build(None, 0).err().unwrap();
            assert_eq!(e.key, key);
            assert!(e.message.contains(says), "{e}");
        };
        check(
            "[peer_outlier]\nmin_peers = 0",
            "detectors.peer_outlier.min_peers",
            "at least 1",
        );
        check(
            "[baseline]\nmin_score = -1.0",
            "detectors.baseline.min_score",
            "positive",
        );
        check(
            "[baseline]\nhistory = \"7d\"",
            "detectors.baseline.history",
            "unknown unit",
        );
        check("[trend]\nconfidence = 1.5", "detectors.trend.confidence", "between");
        check(
            "[host_silent]\nshutdown_grace = \"0s\"",
            "detectors.host_silent.shutdown_grace",
            "minimum",
        );
        check(
            "[smart_verdict]\nwindow = \"0s\"",
            "detectors.smart_verdict.window",
            "minimum",
        );
        assert!(
            parse("[baseline]\nwindow = \"1h\"").is_err(),
            "unknown keys are rejected"
        );
    }
}
