//! The `[ingest]` table of the collector's config file: every ingest limit
//! an operator may tune, validated into [`IngestLimits`]. Absent keys keep
//! the defaults; a bad value fails at start naming the key.
//!
//! ```toml
//! [ingest]
//! max_message_mb = 16
//! max_series_per_stream = 100000
//! max_labels_per_series = 64
//! max_label_value_len = 1024
//! max_future = "10m"
//! max_past = "168h"
//! max_samples_per_second_per_host = 20000
//! sample_burst_per_host = 200000
//! new_series_per_second_per_host = 500
//! new_series_burst_per_host = 10000
//! max_inflight_mb = 256
//! ```

use serde::Deserialize;

use super::IngestLimits;
use crate::config::ConfigError;

/// The `[ingest]` table as written; see the module doc for an example.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IngestLimitsFile {
    /// Largest accepted agent message after decompression, MiB [default: 16].
    pub max_message_mb: Option<u64>,
    /// Series references one stream may define [default: 100000].
    pub max_series_per_stream: Option<usize>,
    /// Labels per series besides name, instance and job [default: 64].
    pub max_labels_per_series: Option<usize>,
    /// Longest label value or metric name, bytes [default: 1024].
    pub max_label_value_len: Option<usize>,
    /// How far ahead of the collector's clock a sample may be [default: 10m].
    pub max_future: Option<String>,
    /// How far behind the collector's clock a sample may be [default: 168h].
    pub max_past: Option<String>,
    /// Samples a second one host may store, 0 for no limit [default: 20000].
    pub max_samples_per_second_per_host: Option<f64>,
    /// Samples a host may send at once above its rate [default: 200000].
    pub sample_burst_per_host: Option<f64>,
    /// Series one host may newly define a second over all its streams, 0
    /// for no limit; above it batches are shed with `OVERLOADED`
    /// [default: 500].
    pub new_series_per_second_per_host: Option<f64>,
    /// New series a host may define at once, and so the most one batch may
    /// define (a batch with more is refused with `LIMIT`) [default: 10000].
    pub new_series_burst_per_host: Option<f64>,
    /// Encoded batch bytes being validated or awaiting their flush over all
    /// streams, MiB; beyond it batches are shed [default: 256].
    pub max_inflight_mb: Option<u64>,
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

fn positive<T: PartialOrd + Default + Copy>(key: &'static str, v: Option<T>, default: T) -> Result<T, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) if v > T::default() => Ok(v),
        Some(_) => Err(invalid(key, "must be more than 0")),
    }
}

fn rate(key: &'static str, v: Option<f64>, default: f64) -> Result<f64, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) if v.is_finite() && v >= 0.0 => Ok(v),
        Some(_) => Err(invalid(key, "must be a finite number, 0 or more")),
    }
}

/// A burst: below one, not even a batch defining a single new series
/// could ever pass.
fn at_least_one(key: &'static str, v: Option<f64>, default: f64) -> Result<f64, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) if v.is_finite() && v >= 1.0 => Ok(v),
        Some(_) => Err(invalid(key, "must be a finite number, 1 or more")),
    }
}

fn millis(key: &'static str, v: Option<&str>, default: i64) -> Result<i64, ConfigError> {
    match v {
        None => Ok(default),
        Some(t) => {
            let d = hostpulse_agent::config::parse_duration(t).map_err(|m| invalid(key, m))?;
            Ok(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        }
    }
}

impl IngestLimitsFile {
    /// The limits, defaults filled in; the error names the key.
    pub fn resolve(&self) -> Result<IngestLimits, ConfigError> {
        let d = IngestLimits::default();
        let mb = |key, v: Option<u64>, default: usize| -> Result<usize, ConfigError> {
            let v = positive(key, v, (default >> 20) as u64)?;
            usize::try_from(v)
                .ok()
                .and_then(|v| v.checked_mul(1 << 20))
                .ok_or_else(|| invalid(key, "too large"))
        };
        Ok(IngestLimits {
            max_message_bytes: mb("ingest.max_message_mb", self.max_message_mb, d.max_message_bytes)?,
            max_series_per_stream: positive(
                "ingest.max_series_per_stream",
                self.max_series_per_stream,
                d.max_series_per_stream,
            )?,
            max_labels_per_series: positive(
                "ingest.max_labels_per_series",
                self.max_labels_per_series,
                d.max_labels_per_series,
            )?,
            max_label_value_len: positive(
                "ingest.max_label_value_len",
                self.max_label_value_len,
                d.max_label_value_len,
            )?,
            max_future_ms: millis("ingest.max_future", self.max_future.as_deref(), d.max_future_ms)?,
            max_past_ms: millis("ingest.max_past", self.max_past.as_deref(), d.max_past_ms)?,
            max_samples_per_second_per_host: rate(
                "ingest.max_samples_per_second_per_host",
                self.max_samples_per_second_per_host,
                d.max_samples_per_second_per_host,
            )?,
            sample_burst_per_host: rate(
                "ingest.sample_burst_per_host",
                self.sample_burst_per_host,
                d.sample_burst_per_host,
            )?,
            new_series_per_second_per_host: rate(
                "ingest.new_series_per_second_per_host",
                self.new_series_per_second_per_host,
                d.new_series_per_second_per_host,
            )?,
            new_series_burst_per_host: at_least_one(
                "ingest.new_series_burst_per_host",
                self.new_series_burst_per_host,
                d.new_series_burst_per_host,
            )?,
            refused_bytes_per_second_per_host: d.refused_bytes_per_second_per_host,
            refused_bytes_burst_per_host: d.refused_bytes_burst_per_host,
            max_inflight_bytes: mb("ingest.max_inflight_mb", self.max_inflight_mb, d.max_inflight_bytes)?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(toml_text: &str, expected: Result<&str, &str>) -> Option<IngestLimits> {
        let file: IngestLimitsFile = match toml::from_str(toml_text) {
            Ok(f) => f,
            Err(e) => {
                let Err(needle) = expected else {
                    panic!("{toml_text}: {e}")
                };
                assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
                return None;
            }
        };
        match (file.resolve(), expected) {
            (Ok(l), Ok(_)) => Some(l),
            (Err(e), Err(message)) => {
                assert!(
                    e.to_string().starts_with(message),
                    "{e} does not start with {message:?}"
                );
                None
            }
            (got, want) => panic!("{toml_text}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn absent_keys_keep_the_defaults() {
        let limits = check("", Ok("")).unwrap();
        let d = IngestLimits::default();
        assert_eq!(limits.max_message_bytes, d.max_message_bytes);
        assert_eq!(limits.max_inflight_bytes, d.max_inflight_bytes);
        assert_eq!(limits.max_past_ms, d.max_past_ms);
    }

    #[test]
    fn keys_set_the_limits() {
        let limits = check(
            "max_message_mb = 4\nmax_future = \"1m\"\nmax_samples_per_second_per_host = 0\nmax_inflight_mb = 32\nmax_labels_per_series = 8\n",
            Ok(""),
        )
        .unwrap();
        assert_eq!(limits.max_message_bytes, 4 << 20);
        assert_eq!(limits.max_future_ms, 60_000);
        assert_eq!(limits.max_samples_per_second_per_host, 0.0);
        assert_eq!(limits.max_inflight_bytes, 32 << 20);
        assert_eq!(limits.max_labels_per_series, 8);
        let limits = check(
            "new_series_per_second_per_host = 0\nnew_series_burst_per_host = 2500\n",
            Ok(""),
        )
        .unwrap();
        assert_eq!(limits.new_series_per_second_per_host, 0.0);
        assert_eq!(limits.new_series_burst_per_host, 2500.0);
    }

    #[test]
    fn bad_values_name_their_key() {
        check(
            "max_inflight_mb = 0",
            Err("ingest.max_inflight_mb: must be more than 0"),
        );
        check(
            "max_samples_per_second_per_host = -1.0",
            Err("ingest.max_samples_per_second_per_host: must be a finite number, 0 or more"),
        );
        check(
            "max_series_per_stream = 0",
            Err("ingest.max_series_per_stream: must be more than 0"),
        );
        check("max_past = \"soon\"", Err("ingest.max_past: "));
        check(
            "new_series_burst_per_host = 0.5",
            Err("ingest.new_series_burst_per_host: must be a finite number, 1 or more"),
        );
        check(
            "new_series_per_second_per_host = inf",
            Err("ingest.new_series_per_second_per_host: must be a finite number, 0 or more"),
        );
        check("max_sample_rate = 5", Err("unknown field"));
    }
}
