//! Collector configuration: the TOML file (`--config`, unknown keys
//! rejected) merged with flags (flags win) and validated into [`Settings`].
//! Every flag has a key of the same name with `-` written as `_`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use hostpulse_agent::config::ConfigError;
use hostpulse_agent::config::{load_toml, parse_toml};
use serde::Deserialize;

/// Default HTTP address (API, status page, /metrics).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9470";
/// Default gRPC ingest address.
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:9471";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./hostpulse-data";
/// Default rule evaluation interval.
pub const DEFAULT_RULE_INTERVAL: Duration = Duration::from_secs(10);

/// The collector's TOML config file. Absent keys fall back to flags, then
/// defaults.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where the store lives.
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address.
    pub http_addr: Option<String>,
    /// gRPC ingest listen address.
    pub grpc_addr: Option<String>,
    /// Webhook URLs alerts are posted to.
    pub webhook_url: Option<Vec<String>>,
    /// How often alert rules are evaluated, e.g. `10s`.
    pub rule_interval: Option<String>,
    /// Also run an agent sampling this machine, in process.
    pub local_agent: Option<bool>,
    /// Sampling interval of the local agent, e.g. `10s`.
    pub local_agent_interval: Option<String>,
    /// sled page cache, in MiB.
    pub cache_capacity_mb: Option<u64>,
    /// Allow listening on non-loopback addresses without TLS.
    pub insecure: Option<bool>,
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

/// Validated settings the collector runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Store directory.
    pub data_dir: PathBuf,
    /// HTTP listen address (port 0 picks a free one).
    pub http_addr: SocketAddr,
    /// gRPC listen address (port 0 picks a free one).
    pub grpc_addr: SocketAddr,
    /// Webhook URLs.
    pub webhook_urls: Vec<String>,
    /// Rule evaluation interval.
    pub rule_interval: Duration,
    /// Run an in-process agent for this machine.
    pub local_agent: bool,
    /// Its sampling interval.
    pub local_agent_interval: Duration,
    /// sled cache in bytes.
    pub cache_capacity_bytes: u64,
}

impl Settings {
    /// Defaults with the given data directory and ephemeral loopback ports;
    /// what tests start from.
    pub fn ephemeral(data_dir: PathBuf) -> Settings {
        Settings {
            data_dir,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            webhook_urls: Vec::new(),
            rule_interval: DEFAULT_RULE_INTERVAL,
            local_agent: false,
            local_agent_interval: Duration::from_secs(10),
            cache_capacity_bytes: 256 << 20,
        }
    }

    /// Merges file (lower priority) and flags (higher) over the defaults.
    pub fn resolve(file: FileConfig, flags: FileConfig) -> Result<Settings, ConfigError> {
        let addr = |key: &'static str, v: Option<String>, default: &str| -> Result<SocketAddr, ConfigError> {
            let text = v.unwrap_or_else(|| default.to_string());
            text.parse().map_err(|_| ConfigError::Invalid {
                key,
                message: format!("{text:?} is not an address like 127.0.0.1:9470 or [::1]:9470"),
            })
        };
        let duration = |key: &'static str, v: Option<String>, default: Duration| -> Result<Duration, ConfigError> {
            match v {
                None => Ok(default),
                Some(t) => hostpulse_agent::config::parse_duration(&t)
                    .map_err(|message| ConfigError::Invalid { key, message })
                    .and_then(|d| {
                        if d < Duration::from_millis(100) {
                            Err(ConfigError::Invalid {
                                key,
                                message: format!("{t:?} is below the 100ms minimum"),
                            })
                        } else {
                            Ok(d)
                        }
                    }),
            }
        };
        let http_addr = addr("http_addr", flags.http_addr.or(file.http_addr), DEFAULT_HTTP_ADDR)?;
        let grpc_addr = addr("grpc_addr", flags.grpc_addr.or(file.grpc_addr), DEFAULT_GRPC_ADDR)?;
        let insecure = flags.insecure.or(file.insecure).unwrap_or(false);
        for (key, a) in [("http_addr", http_addr), ("grpc_addr", grpc_addr)] {
            if !a.ip().is_loopback() && !insecure {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!(
                        "{a} is not a loopback address; without TLS this exposes the collector unencrypted — pass --insecure to do it anyway"
                    ),
                });
            }
        }
        let mut webhook_urls = file.webhook_url.unwrap_or_default();
        webhook_urls.extend(flags.webhook_url.unwrap_or_default());
        for url in &webhook_urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    key: "webhook_url",
                    message: format!("{url:?} is not an http:// or https:// URL"),
                });
            }
        }
        Ok(Settings {
            data_dir: flags
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            http_addr,
            grpc_addr,
            webhook_urls,
            rule_interval: duration(
                "rule_interval",
                flags.rule_interval.or(file.rule_interval),
                DEFAULT_RULE_INTERVAL,
            )?,
            local_agent: flags.local_agent.or(file.local_agent).unwrap_or(false),
            local_agent_interval: duration(
                "local_agent_interval",
                flags.local_agent_interval.or(file.local_agent_interval),
                Duration::from_secs(10),
            )?,
            cache_capacity_bytes: flags.cache_capacity_mb.or(file.cache_capacity_mb).unwrap_or(256) << 20,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn resolve(flags: FileConfig) -> Result<Settings, String> {
        Settings::resolve(FileConfig::default(), flags).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_loopback() {
        let s = resolve(FileConfig::default()).unwrap();
        assert_eq!(s.http_addr.to_string(), DEFAULT_HTTP_ADDR);
        assert_eq!(s.grpc_addr.to_string(), DEFAULT_GRPC_ADDR);
        assert_eq!(s.data_dir, PathBuf::from("./hostpulse-data"));
    }

    #[test]
    fn public_bind_needs_insecure() {
        let flags = FileConfig {
            http_addr: Some("0.0.0.0:9470".into()),
            ..Default::default()
        };
        assert!(
            resolve(flags.clone())
                .unwrap_err()
                .starts_with("http_addr: 0.0.0.0:9470 is not a loopback address")
        );
        assert!(
            resolve(FileConfig {
                insecure: Some(true),
                ..flags
            })
            .is_ok()
        );
    }

    #[test]
    fn bad_values_are_named() {
        let e = resolve(FileConfig {
            grpc_addr: Some("localhost".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            e,
            "grpc_addr: \"localhost\" is not an address like 127.0.0.1:9470 or [::1]:9470"
        );
        let e = resolve(FileConfig {
            webhook_url: Some(vec!["ftp://x".into()]),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e, "webhook_url: \"ftp://x\" is not an http:// or https:// URL");
        let e = FileConfig::parse(Path::new("c.toml"), "data-dir = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config c.toml: ") && e.contains("unknown field `data-dir`"),
            "{e}"
        );
    }
}
