//! Agent configuration: the TOML file (`--config`, unknown keys rejected),
//! merged with command-line flags (flags win), validated into [`Settings`].
//! Every flag has a key of the same name with `-` written as `_`.
//!
//! Settings built by hand (tests, the collector's in-process agent) start
//! from [`Settings::default`], which keeps the spool in memory; only
//! [`Settings::resolve`] (the command line) defaults to the on-disk spool in
//! [`DEFAULT_SPOOL_DIR`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::paths::HostPaths;
use crate::source::SourceOptions;

/// Default collector address (the collector's gRPC ingest port).
pub const DEFAULT_COLLECTOR: &str = "http://127.0.0.1:9471";
/// Default sampling interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Default bound on batches kept while unacknowledged (11.5 days at 10 s):
/// high enough that the byte bound of the spool is the one that binds.
pub const DEFAULT_MAX_PENDING_BATCHES: usize = 100_000;
/// Default spool directory of the `run` command.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/hostpulse-agent";
/// Default bound on the spool's size (64 MiB: about 2.5 days of a
/// 300-series host at 10 s; a spooled sample takes ~10 bytes).
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 << 20;
/// Smallest accepted spool bound.
pub const MIN_SPOOL_MAX_BYTES: u64 = 64 << 10;
/// Consecutive failed attempts on one collector before the next in order is
/// tried.
pub const DEFAULT_FAILOVER_AFTER: u32 = 3;
/// How often an agent streaming to a fallback collector checks whether its
/// preferred one is back.
pub const DEFAULT_FAILBACK_INTERVAL: Duration = Duration::from_secs(300);
/// Cap of the reconnect backoff step.
pub const DEFAULT_RECONNECT_MAX_DELAY: Duration = Duration::from_secs(30);

/// The agent's TOML config file. Every field is optional; absent means the
/// flag or the default decides.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Collector gRPC URL, e.g. `http://collector.example:9471`; with
    /// `collectors` it is the first of the list.
    pub collector: Option<String>,
    /// Several collectors; each agent orders them by rendezvous hashing of
    /// its host id and fails over in that order.
    pub collectors: Option<Vec<String>>,
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
    /// CA certificate (PEM) that signed the collector's certificate, for `https://` collectors.
    pub tls_ca: Option<PathBuf>,
    /// This agent's client certificate (PEM), for mTLS.
    pub tls_cert: Option<PathBuf>,
    /// This agent's client key (PEM), for mTLS.
    pub tls_key: Option<PathBuf>,
    /// File holding this agent's bearer token, when the collector uses tokens.
    pub token_file: Option<PathBuf>,
    /// Directory for the agent's state (the batch sequence number).
    pub state_dir: Option<PathBuf>,
    /// Most batches kept unacknowledged; the oldest are dropped beyond it.
    pub max_pending_batches: Option<usize>,
    /// Directory of the on-disk spool (default `/var/lib/hostpulse-agent`;
    /// when it cannot be used the spool is kept in memory).
    pub spool_dir: Option<PathBuf>,
    /// Most bytes the spool takes; the oldest data is dropped beyond it.
    pub spool_max_bytes: Option<u64>,
    /// How sample columns go on the wire: `compact` (default; used only
    /// with collectors that announce it) or `plain`.
    pub wire_encoding: Option<String>,
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

/// How the agent proves itself to the collector and checks the collector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// CA that signed the collector's certificate (None: system roots).
    pub ca: Option<PathBuf>,
    /// Client certificate for mTLS.
    pub cert: Option<PathBuf>,
    /// Client key for mTLS.
    pub key: Option<PathBuf>,
    /// File with the bearer token.
    pub token_file: Option<PathBuf>,
}

/// Validated settings the agent runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Collector gRPC URL (the first of `collectors` when that is set).
    pub collector: String,
    /// Every collector, in configuration order; empty means just
    /// `collector`. Use [`Settings::collector_urls`].
    pub collectors: Vec<String>,
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
    /// TLS and token settings of the stream.
    pub tls: TlsSettings,
    /// Where the sequence number is kept across restarts (None: not kept;
    /// sequence numbers then start from the wall clock).
    pub state_dir: Option<PathBuf>,
    /// Bound on unacknowledged batches.
    pub max_pending_batches: usize,
    /// Directory of the on-disk spool (None: in memory). The sequence number
    /// is kept here too when `state_dir` is not set.
    pub spool_dir: Option<PathBuf>,
    /// Bound on the spool's size in bytes.
    pub spool_max_bytes: u64,
    /// Consecutive failures on a collector before the next one is tried.
    pub failover_after: u32,
    /// How often a fallback stream checks whether the preferred collector
    /// is reachable again.
    pub failback_interval: Duration,
    /// Cap of the reconnect backoff (each wait is uniform in [0, step], the
    /// step doubling from 200 ms up to this).
    pub reconnect_max_delay: Duration,
    /// How sample columns go on the wire.
    pub wire_encoding: crate::client::WireEncoding,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            collector: DEFAULT_COLLECTOR.to_string(),
            collectors: Vec::new(),
            host: None,
            interval: DEFAULT_INTERVAL,
            only: Vec::new(),
            disable: Vec::new(),
            paths: HostPaths::default(),
            sources: SourceOptions::default(),
            listen: None,
            tls: TlsSettings::default(),
            state_dir: None,
            max_pending_batches: DEFAULT_MAX_PENDING_BATCHES,
            spool_dir: None,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            failover_after: DEFAULT_FAILOVER_AFTER,
            failback_interval: DEFAULT_FAILBACK_INTERVAL,
            reconnect_max_delay: DEFAULT_RECONNECT_MAX_DELAY,
            wire_encoding: crate::client::WireEncoding::default(),
        }
    }
}

impl Settings {
    /// Every collector URL in configuration order (at least one).
    pub fn collector_urls(&self) -> Vec<String> {
        if self.collectors.is_empty() {
            vec![self.collector.clone()]
        } else {
            self.collectors.clone()
        }
    }

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
        let flag_list = collector_list(flags.collector, flags.collectors);
        let collectors = if flag_list.is_empty() {
            collector_list(file.collector, file.collectors)
        } else {
            flag_list
        };
        let collectors = if collectors.is_empty() {
            vec![d.collector]
        } else {
            collectors
        };
        for url in &collectors {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    key: "collector",
                    message: format!("{url:?} is not an http:// or https:// URL"),
                });
            }
        }
        let collector = collectors[0].clone();
        let spool_max_bytes = flags
            .spool_max_bytes
            .or(file.spool_max_bytes)
            .unwrap_or(d.spool_max_bytes);
        if spool_max_bytes < MIN_SPOOL_MAX_BYTES {
            return Err(ConfigError::Invalid {
                key: "spool_max_bytes",
                message: format!("{spool_max_bytes} is below the minimum of {MIN_SPOOL_MAX_BYTES} bytes"),
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
        let tls = TlsSettings {
            ca: flags.tls_ca.or(file.tls_ca),
            cert: flags.tls_cert.or(file.tls_cert),
            key: flags.tls_key.or(file.tls_key),
            token_file: flags.token_file.or(file.token_file),
        };
        let wire_encoding = match flags.wire_encoding.or(file.wire_encoding) {
            None => d.wire_encoding,
            Some(t) => crate::client::WireEncoding::parse(&t).map_err(|message| ConfigError::Invalid {
                key: "wire_encoding",
                message,
            })?,
        };
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(ConfigError::Invalid {
                key: "tls_cert",
                message: "tls_cert and tls_key must be given together".into(),
            });
        }
        Ok(Settings {
            tls,
            collector,
            collectors,
            spool_dir: Some(
                flags
                    .spool_dir
                    .or(file.spool_dir)
                    .unwrap_or_else(|| DEFAULT_SPOOL_DIR.into()),
            ),
            spool_max_bytes,
            failover_after: d.failover_after,
            failback_interval: d.failback_interval,
            reconnect_max_delay: d.reconnect_max_delay,
            wire_encoding,
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

/// One configuration layer's collectors: `collector` first, then
/// `collectors`, each URL once.
fn collector_list(one: Option<String>, many: Option<Vec<String>>) -> Vec<String> {
    let mut list: Vec<String> = Vec::new();
    for url in one.into_iter().chain(many.unwrap_or_default()) {
        let url = url.trim().to_string();
        if !url.is_empty() && !list.contains(&url) {
            list.push(url);
        }
    }
    list
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
    fn collector_lists_merge_with_the_single_key() {
        let file = FileConfig::parse(
            Path::new("a.toml"),
            "collector = \"http://a:9471\"\ncollectors = [\"http://b:9471\", \"http://a:9471\"]\n",
        )
        .unwrap();
        let s = Settings::resolve(file.clone(), FileConfig::default()).unwrap();
        assert_eq!(s.collector_urls(), vec!["http://a:9471", "http://b:9471"]);
        assert_eq!(s.collector, "http://a:9471");
        // Flags replace the file's list as a whole.
        let flags = FileConfig {
            collectors: Some(vec!["http://c:9471".into()]),
            ..Default::default()
        };
        let s = Settings::resolve(file, flags).unwrap();
        assert_eq!(s.collector_urls(), vec!["http://c:9471"]);
        // Settings built by hand name one collector.
        let s = Settings {
            collector: "http://x:1".into(),
            ..Settings::default()
        };
        assert_eq!(s.collector_urls(), vec!["http://x:1"]);
    }

    #[test]
    fn spool_defaults_to_disk_only_from_the_command_line() {
        assert_eq!(Settings::default().spool_dir, None);
        let s = Settings::resolve(FileConfig::default(), FileConfig::default()).unwrap();
        assert_eq!(s.spool_dir.as_deref(), Some(Path::new(DEFAULT_SPOOL_DIR)));
        assert_eq!(s.spool_max_bytes, DEFAULT_SPOOL_MAX_BYTES);
        let file = FileConfig::parse(
            Path::new("a.toml"),
            "spool_dir = \"/tmp/s\"\nspool_max_bytes = 1048576\n",
        )
        .unwrap();
        let s = Settings::resolve(file, FileConfig::default()).unwrap();
        assert_eq!(s.spool_dir.as_deref(), Some(Path::new("/tmp/s")));
        assert_eq!(s.spool_max_bytes, 1 << 20);
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
        assert_eq!(
            bad(FileConfig {
                collectors: Some(vec!["http://ok:1".into(), "grpc://x".into()]),
                ..Default::default()
            }),
            "collector: \"grpc://x\" is not an http:// or https:// URL"
        );
        assert_eq!(
            bad(FileConfig {
                spool_max_bytes: Some(1000),
                ..Default::default()
            }),
            "spool_max_bytes: 1000 is below the minimum of 65536 bytes"
        );
    }
}
