//! Agent configuration: the TOML file (`--config`, unknown keys rejected),
//! merged with command-line flags (flags win), validated into [`Settings`].
//! Every flag has a key of the same name with `-` written as `_`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::paths::HostPaths;
use crate::source::SourceOptions;

/// Default collector address (the collector's gRPC ingest port).
pub const DEFAULT_COLLECTOR: &str = "http://127.0.0.1:9471";
/// Default sampling interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Default bound on batches kept while unacknowledged (six hours at 10 s).
pub const DEFAULT_MAX_PENDING_BATCHES: usize = 2160;

/// The agent's TOML config file. Every field is optional; absent means the
/// flag or the default decides.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Collector gRPC URL, e.g. `http://collector.example:9471`.
    pub collector: Option<String>,
    /// Host name to report as (default: the kernel's host name).
    pub host: Option<String>,
    /// Sampling interval, e.g. `10s`, `500ms`, `1m`.
    pub interval: Option<String>,
    /// Only these sources (default: all default-on sources).
    pub only: Option<Vec<String>>,
    /// Never run these sources.
    pub disable: Option<Vec<String>>,
    /// sysfs root (default `/sys`).
    pub sysfs: Option<PathBuf>,
    /// procfs root (default `/proc`).
    pub procfs: Option<PathBuf>,
    /// Host root filesystem (default `/`).
    pub rootfs: Option<PathBuf>,
    /// udev database (default `/run/udev/data`).
    pub udev_data: Option<PathBuf>,
    /// Kernel log to follow (default `/dev/kmsg`).
    pub kmsg: Option<PathBuf>,
    /// Read smartctl JSON files from this directory instead of running smartctl.
    pub smartctl_json_dir: Option<PathBuf>,
    /// smartctl binary (default `smartctl` on PATH).
    pub smartctl: Option<PathBuf>,
    /// How often SMART data is refreshed, e.g. `10m`.
    pub smart_interval: Option<String>,
    /// ipmitool binary for the optional `ipmi` source.
    pub ipmitool: Option<PathBuf>,
    /// Deadline for external commands (smartctl, ipmitool), e.g. `10s`.
    pub command_timeout: Option<String>,
    /// Serve `/metrics` on this address (e.g. `127.0.0.1:9472`).
    pub listen: Option<String>,
    /// Directory for the agent's state (the batch sequence number).
    pub state_dir: Option<PathBuf>,
    /// Most batches kept unacknowledged; the oldest are dropped beyond it.
    pub max_pending_batches: Option<usize>,
}

/// A configuration problem, naming the file, key or value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or wrong types.
    #[error("config {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("{key}: {message}")]
    Invalid {
        /// Key or flag name.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        load_toml(path)
    }

    /// Parses config text; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
        parse_toml(path, text)
    }
}

/// Reads and parses a TOML config file into `T` (the collector uses this
/// too, so both binaries report config problems alike).
pub fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    parse_toml(path, &text)
}

/// Parses TOML text into `T`; `path` only names the file in errors, which
/// carry the parser's key and line on one line.
pub fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: e
            .to_string()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    })
}

/// Validated settings the agent runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Collector gRPC URL.
    pub collector: String,
    /// Host name override (None: the kernel's host name).
    pub host: Option<String>,
    /// Sampling interval.
    pub interval: Duration,
    /// Only these sources (empty: all default-on sources).
    pub only: Vec<String>,
    /// Never these sources.
    pub disable: Vec<String>,
    /// Filesystem roots.
    pub paths: HostPaths,
    /// Options of individual sources.
    pub sources: SourceOptions,
    /// Address to serve `/metrics` on, if any.
    pub listen: Option<std::net::SocketAddr>,
    /// Where the sequence number is kept across restarts (None: not kept;
    /// sequence numbers then start from the wall clock).
    pub state_dir: Option<PathBuf>,
    /// Bound on unacknowledged batches.
    pub max_pending_batches: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            collector: DEFAULT_COLLECTOR.to_string(),
            host: None,
            interval: DEFAULT_INTERVAL,
            only: Vec::new(),
            disable: Vec::new(),
            paths: HostPaths::default(),
            sources: SourceOptions::default(),
            listen: None,
            state_dir: None,
            max_pending_batches: DEFAULT_MAX_PENDING_BATCHES,
        }
    }
}

impl Settings {
    /// Merges a file config (lower priority) with flag values (higher
    /// priority, given as another `FileConfig`) over the defaults.
    pub fn resolve(file: FileConfig, flags: FileConfig) -> Result<Settings, ConfigError> {
        let d = Settings::default();
        let interval = match flags.interval.or(file.interval) {
            Some(s) => parse_duration(&s).map_err(|message| ConfigError::Invalid {
                key: "interval",
                message,
            })?,
            None => d.interval,
        };
        if interval < Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                key: "interval",
                message: format!("{interval:?} is below the 100ms minimum"),
            });
        }
        let collector = flags.collector.or(file.collector).unwrap_or(d.collector);
        if !(collector.starts_with("http://") || collector.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                key: "collector",
                message: format!("{collector:?} is not an http:// or https:// URL"),
            });
        }
        let host = flags.host.or(file.host);
        if let Some(h) = &host
            && (h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(ConfigError::Invalid {
                key: "host",
                message: format!("{h:?} is not a valid host name"),
            });
        }
        let max_pending_batches = flags
            .max_pending_batches
            .or(file.max_pending_batches)
            .unwrap_or(d.max_pending_batches);
        if max_pending_batches == 0 {
            return Err(ConfigError::Invalid {
                key: "max_pending_batches",
                message: "must be at least 1".into(),
            });
        }
        let dp = d.paths;
        let ds = d.sources;
        let duration = |key: &'static str, v: Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(t) => parse_duration(&t).map_err(|message| ConfigError::Invalid { key, message }),
        };
        let listen = match flags.listen.or(file.listen) {
            None => None,
            Some(t) => Some(t.parse().map_err(|_| ConfigError::Invalid {
                key: "listen",
                message: format!("{t:?} is not an address like 127.0.0.1:9472"),
            })?),
        };
        let sources = SourceOptions {
            kmsg: flags.kmsg.or(file.kmsg),
            smartctl_json_dir: flags.smartctl_json_dir.or(file.smartctl_json_dir),
            smartctl: flags.smartctl.or(file.smartctl).unwrap_or(ds.smartctl),
            smart_interval: duration(
                "smart_interval",
                flags.smart_interval.or(file.smart_interval),
                ds.smart_interval,
            )?,
            ipmitool: flags.ipmitool.or(file.ipmitool).unwrap_or(ds.ipmitool),
            command_timeout: duration(
                "command_timeout",
                flags.command_timeout.or(file.command_timeout),
                ds.command_timeout,
            )?,
        };
        Ok(Settings {
            collector,
            host,
            interval,
            disable: flags.disable.or(file.disable).unwrap_or_default(),
            sources,
            listen,
            only: flags.only.or(file.only).unwrap_or_default(),
            paths: HostPaths {
                sysfs: flags.sysfs.or(file.sysfs).unwrap_or(dp.sysfs),
                procfs: flags.procfs.or(file.procfs).unwrap_or(dp.procfs),
                rootfs: flags.rootfs.or(file.rootfs).unwrap_or(dp.rootfs),
                udev_data: flags.udev_data.or(file.udev_data).unwrap_or(dp.udev_data),
                dev: dp.dev,
            },
            state_dir: flags.state_dir.or(file.state_dir),
            max_pending_batches,
        })
    }
}

/// Parses `10s`, `500ms`, `1m`, `2h`, `1.5s` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 10s, 500ms or 1m"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?} has unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !(0.0..=1e9).contains(&secs) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(
            parse_duration("10 parsecs"),
            Err("\"10 parsecs\" has unknown unit \" parsecs\" (use ms, s, m or h)".into())
        );
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = FileConfig::parse(Path::new("agent.toml"), "colector = \"http://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config agent.toml: "), "{err}");
        assert!(err.contains("unknown field `colector`"), "{err}");
    }

    #[test]
    fn flags_override_file() {
        let file = FileConfig::parse(
            Path::new("a.toml"),
            "interval = \"30s\"\nhost = \"alpha\"\nsysfs = \"/fixture/sys\"\n",
        )
        .unwrap();
        let flags = FileConfig {
            interval: Some("5s".into()),
            ..Default::default()
        };
        let s = Settings::resolve(file, flags).unwrap();
        assert_eq!(s.interval, Duration::from_secs(5));
        assert_eq!(s.host.as_deref(), Some("alpha"));
        assert_eq!(s.paths.sysfs, PathBuf::from("/fixture/sys"));
        assert_eq!(s.collector, DEFAULT_COLLECTOR);
    }

    #[test]
    fn bad_values_are_named() {
        let bad = |f: FileConfig| Settings::resolve(FileConfig::default(), f).unwrap_err().to_string();
        assert_eq!(
            bad(FileConfig {
                collector: Some("127.0.0.1:9471".into()),
                ..Default::default()
            }),
            "collector: \"127.0.0.1:9471\" is not an http:// or https:// URL"
        );
        assert_eq!(
            bad(FileConfig {
                interval: Some("1ms".into()),
                ..Default::default()
            }),
            "interval: 1ms is below the 100ms minimum"
        );
    }
}
