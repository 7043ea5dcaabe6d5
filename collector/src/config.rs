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

/// Default out-of-order window of the store.
pub const DEFAULT_OUT_OF_ORDER_WINDOW: Duration = Duration::from_secs(3600);
/// Default memory bound of unsealed samples, MiB.
pub const DEFAULT_HEAD_MAX_MB: u64 = 512;

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
    /// File whose contents (trailing newline trimmed) sign webhook bodies
    /// (`X-Hostpulse-Signature: sha256=<hex HMAC-SHA256>`).
    pub webhook_secret_file: Option<PathBuf>,
    /// Alertmanager base URLs (`http://am:9093`); each gets every alert.
    pub alertmanager_url: Option<Vec<String>>,
    /// Prometheus rule files evaluated besides the built-in pack.
    pub rule_file: Option<Vec<PathBuf>>,
    /// Whether the built-in hardware rule pack runs (default true).
    pub builtin_rules: Option<bool>,
    /// Least quiet time before `HostpulseHostSilent` fires, e.g. `3m`.
    /// Unset (the default), a host is silent after two of its own sampling
    /// intervals on an open stream; set, no host pages sooner than this.
    pub host_silent_after: Option<String>,
    /// How often alert rules are evaluated, e.g. `10s`.
    pub rule_interval: Option<String>,
    /// Also run an agent sampling this machine, in process.
    pub local_agent: Option<bool>,
    /// Sampling interval of the local agent, e.g. `10s`.
    pub local_agent_interval: Option<String>,
    /// sled page cache, in MiB.
    pub cache_capacity_mb: Option<u64>,
    /// Cache of decoded sealed-block sections shared by queries and rules,
    /// in MiB [default: 128]; 0 turns it off.
    pub decoded_cache_mb: Option<u64>,
    /// The URL people reach the collector's web UI at (behind a proxy or
    /// a DNS name), used in links in alerts [default: from `http_addr`].
    pub external_url: Option<String>,
    /// Allow listening on non-loopback addresses without TLS.
    pub insecure: Option<bool>,
    /// The collector's TLS certificate chain (PEM); with `tls_key`, both
    /// listeners speak TLS.
    pub tls_cert: Option<PathBuf>,
    /// The collector's TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that signs agents' client certificates: agents must then
    /// present one, and it names their host.
    pub client_ca: Option<PathBuf>,
    /// Deadline for a TLS handshake, e.g. `10s`.
    pub tls_handshake_timeout: Option<String>,
    /// Per-agent tokens, stored as SHA-256 hashes: `[[agent_tokens]]` with
    /// `host` and `sha256`. When any is set, agents must present theirs.
    pub agent_tokens: Option<Vec<crate::auth::AgentTokenEntry>>,
    /// File holding the admin token that write and admin HTTP endpoints
    /// require (`Authorization: Bearer <token>`).
    pub admin_token_file: Option<PathBuf>,
    /// How long raw samples are kept, back from the newest stored sample,
    /// e.g. `720h` [default: forever].
    pub retention: Option<String>,
    /// How long 5-minute rollups are kept, e.g. `4320h` [default: forever].
    pub rollup_retention_5m: Option<String>,
    /// How long 1-hour rollups are kept, e.g. `17520h` [default: forever].
    pub rollup_retention_1h: Option<String>,
    /// How far behind its series' newest sample a sample may arrive and
    /// still be stored, e.g. `1h` [default: 1h]; older ones are rejected.
    pub out_of_order_window: Option<String>,
    /// Memory bound of unsealed samples, in MiB [default: 512]; beyond it
    /// they are sealed into blocks early.
    pub head_max_mb: Option<u64>,
    /// Ingest limits (`[ingest]` table; see `crate::ingest::limits_file`).
    pub ingest: Option<crate::ingest::limits_file::IngestLimitsFile>,
    /// How long alert history (the incident timeline behind
    /// `/api/v1/alerts/history`) is kept, e.g. `2160h` [default: 2160h = 90 days].
    pub alert_history_retention: Option<String>,
    /// Detector knobs: `[detectors.peer_outlier]`, `[detectors.baseline]`,
    /// `[detectors.trend]`, `[detectors.smart_verdict]` (see
    /// `detect::knobs`); file only.
    pub detectors: Option<crate::detect::knobs::DetectorConfig>,
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
    /// Secret file signing webhook bodies.
    pub webhook_secret_file: Option<PathBuf>,
    /// Alertmanager base URLs.
    pub alertmanager_urls: Vec<String>,
    /// Rule files besides the built-in pack.
    pub rule_files: Vec<PathBuf>,
    /// Whether the built-in hardware rule pack runs.
    pub builtin_rules: bool,
    /// Floor under every host-silence grace (`None`: two of the host's
    /// own sampling intervals decide).
    pub host_silent_after: Option<Duration>,
    /// Rule evaluation interval.
    pub rule_interval: Duration,
    /// Run an in-process agent for this machine.
    pub local_agent: bool,
    /// Its sampling interval.
    pub local_agent_interval: Duration,
    /// sled cache in bytes.
    pub cache_capacity_bytes: u64,
    /// Decoded-section cache in bytes (0: off).
    pub decoded_cache_bytes: u64,
    /// Base URL for links in alerts, without a trailing slash (`None`:
    /// derived from the HTTP listen address).
    pub external_url: Option<String>,
    /// TLS, agent credentials and the admin token.
    pub security: Security,
    /// Raw sample retention (`None`: forever).
    pub retention: Option<Duration>,
    /// 5-minute and 1-hour rollup retention (`None`: forever).
    pub rollup_retention: [Option<Duration>; 2],
    /// Out-of-order window.
    pub out_of_order_window: Duration,
    /// Memory bound of unsealed samples in bytes.
    pub head_max_bytes: u64,
    /// What one agent stream, one host and all streams together may send.
    pub ingest_limits: crate::ingest::IngestLimits,
    /// How long alert history is kept.
    pub alert_history_retention: Duration,
    /// Detector knobs (validated: [`crate::detect::knobs::DetectorConfig::build`] succeeds).
    pub detectors: crate::detect::knobs::DetectorConfig,
}

/// How the collector proves itself and checks who talks to it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Security {
    /// TLS on both listeners, when configured.
    pub tls: Option<crate::tls::ServerTls>,
    /// Per-agent tokens (empty: none required).
    pub agent_tokens: crate::auth::TokenTable,
    /// File with the admin token for write and admin HTTP endpoints.
    pub admin_token_file: Option<PathBuf>,
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
            webhook_secret_file: None,
            alertmanager_urls: Vec::new(),
            rule_files: Vec::new(),
            builtin_rules: true,
            host_silent_after: None,
            rule_interval: DEFAULT_RULE_INTERVAL,
            local_agent: false,
            local_agent_interval: Duration::from_secs(10),
            cache_capacity_bytes: 256 << 20,
            decoded_cache_bytes: 128 << 20,
            external_url: None,
            security: Security::default(),
            retention: None,
            rollup_retention: [None, None],
            out_of_order_window: DEFAULT_OUT_OF_ORDER_WINDOW,
            head_max_bytes: DEFAULT_HEAD_MAX_MB << 20,
            ingest_limits: crate::ingest::IngestLimits::default(),
            alert_history_retention: crate::detect::DEFAULT_HISTORY_RETENTION,
            detectors: crate::detect::knobs::DetectorConfig::default(),
        }
    }

    /// Merges file (lower priority) and flags (higher) over the defaults.
    pub fn resolve(file: FileConfig, flags: FileConfig) -> Result<Settings, ConfigError> {
        let insecure = flags.insecure.or(file.insecure).unwrap_or(false);
        let security = resolve_security(&file, &flags)?;
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
        let optional = |key: &'static str, v: Option<String>| -> Result<Option<Duration>, ConfigError> {
            v.map(|t| duration(key, Some(t), Duration::ZERO)).transpose()
        };
        let http_addr = addr("http_addr", flags.http_addr.or(file.http_addr), DEFAULT_HTTP_ADDR)?;
        let grpc_addr = addr("grpc_addr", flags.grpc_addr.or(file.grpc_addr), DEFAULT_GRPC_ADDR)?;
        for (key, a) in [("http_addr", http_addr), ("grpc_addr", grpc_addr)] {
            if !a.ip().is_loopback() && !insecure && security.tls.is_none() {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!(
                        "{a} is not a loopback address; without TLS this exposes the collector unencrypted — pass --insecure to do it anyway"
                    ),
                });
            }
        }
        let mut alertmanager_urls = file.alertmanager_url.unwrap_or_default();
        alertmanager_urls.extend(flags.alertmanager_url.unwrap_or_default());
        for url in &alertmanager_urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    key: "alertmanager_url",
                    message: format!("{url:?} is not an http:// or https:// URL"),
                });
            }
        }
        let mut rule_files = file.rule_file.unwrap_or_default();
        rule_files.extend(flags.rule_file.unwrap_or_default());
        let host_silent_after = optional("host_silent_after", flags.host_silent_after.or(file.host_silent_after))?;
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
            webhook_secret_file: flags.webhook_secret_file.or(file.webhook_secret_file),
            alertmanager_urls,
            rule_files,
            builtin_rules: flags.builtin_rules.or(file.builtin_rules).unwrap_or(true),
            host_silent_after,
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
            cache_capacity_bytes: flags
                .cache_capacity_mb
                .or(file.cache_capacity_mb)
                .unwrap_or(256)
                .saturating_mul(1 << 20),
            decoded_cache_bytes: flags
                .decoded_cache_mb
                .or(file.decoded_cache_mb)
                .unwrap_or(128)
                .saturating_mul(1 << 20),
            external_url: external_url(flags.external_url.or(file.external_url))?,
            security,
            retention: optional("retention", flags.retention.or(file.retention))?,
            rollup_retention: [
                optional(
                    "rollup_retention_5m",
                    flags.rollup_retention_5m.or(file.rollup_retention_5m),
                )?,
                optional(
                    "rollup_retention_1h",
                    flags.rollup_retention_1h.or(file.rollup_retention_1h),
                )?,
            ],
            out_of_order_window: duration(
                "out_of_order_window",
                flags.out_of_order_window.or(file.out_of_order_window),
                DEFAULT_OUT_OF_ORDER_WINDOW,
            )?,
            head_max_bytes: flags.head_max_mb.or(file.head_max_mb).unwrap_or(DEFAULT_HEAD_MAX_MB) << 20,
            ingest_limits: flags.ingest.or(file.ingest).unwrap_or_default().resolve()?,
            alert_history_retention: duration(
                "alert_history_retention",
                flags.alert_history_retention.or(file.alert_history_retention),
                crate::detect::DEFAULT_HISTORY_RETENTION,
            )?,
            detectors: {
                let d = flags.detectors.or(file.detectors).unwrap_or_default();
                // Built once here so a bad knob stops the start with its key.
                d.build(None, 0).map_err(|e| ConfigError::Invalid {
                    key: e.key,
                    message: e.message,
                })?;
                d
            },
        })
    }
}

/// The TLS, token and admin keys (flags win; tokens from both are kept).
/// Checks `external_url`: an absolute http(s) URL; a trailing slash is
/// dropped so links join as `<url>/alerts`.
fn external_url(value: Option<String>) -> Result<Option<String>, ConfigError> {
    let Some(text) = value else { return Ok(None) };
    let trimmed = text.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => Ok(Some(trimmed.to_string())),
        _ => Err(ConfigError::Invalid {
            key: "external_url",
            message: format!("{text:?} is not an absolute URL like https://hostpulse.example.com"),
        }),
    }
}

fn resolve_security(file: &FileConfig, flags: &FileConfig) -> Result<Security, ConfigError> {
    let invalid = |key, message: &str| ConfigError::Invalid {
        key,
        message: message.to_string(),
    };
    let pick = |f: &Option<PathBuf>, g: &Option<PathBuf>| f.clone().or_else(|| g.clone());
    let cert = pick(&flags.tls_cert, &file.tls_cert);
    let key = pick(&flags.tls_key, &file.tls_key);
    let client_ca = pick(&flags.client_ca, &file.client_ca);
    let handshake_timeout = match flags
        .tls_handshake_timeout
        .as_ref()
        .or(file.tls_handshake_timeout.as_ref())
    {
        None => crate::tls::DEFAULT_HANDSHAKE_TIMEOUT,
        Some(t) => hostpulse_agent::config::parse_duration(t)
            .map_err(|message| ConfigError::Invalid {
                key: "tls_handshake_timeout",
                message,
            })
            .and_then(|d| {
                if d.is_zero() {
                    Err(invalid("tls_handshake_timeout", "must be more than 0"))
                } else {
                    Ok(d)
                }
            })?,
    };
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(crate::tls::ServerTls {
            cert,
            key,
            client_ca,
            handshake_timeout,
        }),
        (None, None) if client_ca.is_some() => {
            return Err(invalid(
                "client_ca",
                "client certificates are only asked for over TLS; also give tls_cert and tls_key",
            ));
        }
        (None, None) => None,
        _ => return Err(invalid("tls_cert", "tls_cert and tls_key must be given together")),
    };
    let mut entries = file.agent_tokens.clone().unwrap_or_default();
    entries.extend(flags.agent_tokens.clone().unwrap_or_default());
    let tokens = entries
        .iter()
        .map(crate::auth::AgentToken::parse)
        .collect::<Result<Vec<_>, _>>()
        .and_then(crate::auth::TokenTable::new)
        .map_err(|message| ConfigError::Invalid {
            key: "agent_tokens",
            message,
        })?;
    let local_agent = flags.local_agent.or(file.local_agent).unwrap_or(false);
    if local_agent && (tls.is_some() || !tokens.is_empty()) {
        return Err(invalid(
            "local_agent",
            "the in-process agent has no certificate or token; with TLS or agent tokens, run hostpulse-agent as its own service",
        ));
    }
    Ok(Security {
        tls,
        agent_tokens: tokens,
        admin_token_file: pick(&flags.admin_token_file, &file.admin_token_file),
    })
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
    fn tls_tokens_and_their_conflicts() {
        let tls = FileConfig {
            tls_cert: Some("s.pem".into()),
            tls_key: Some("s-key.pem".into()),
            client_ca: Some("ca.pem".into()),
            grpc_addr: Some("0.0.0.0:9471".into()),
            http_addr: Some("0.0.0.0:9470".into()),
            ..Default::default()
        };
        // TLS on both listeners makes --insecure unnecessary.
        let s = resolve(tls.clone()).unwrap();
        let t = s.security.tls.unwrap();
        assert_eq!(t.client_ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(t.handshake_timeout, crate::tls::DEFAULT_HANDSHAKE_TIMEOUT);
        let cases = [
            (
                FileConfig {
                    tls_key: None,
                    ..tls.clone()
                },
                "tls_cert: tls_cert and tls_key must be given together",
            ),
            (
                FileConfig {
                    client_ca: Some("ca.pem".into()),
                    ..Default::default()
                },
                "client_ca: client certificates are only asked for over TLS; also give tls_cert and tls_key",
            ),
            (
                FileConfig {
                    local_agent: Some(true),
                    ..tls.clone()
                },
                "local_agent: the in-process agent has no certificate or token",
            ),
            (
                FileConfig {
                    agent_tokens: Some(vec![crate::auth::AgentTokenEntry {
                        host: "alpha".into(),
                        sha256: "abc".into(),
                    }]),
                    ..Default::default()
                },
                "agent_tokens: token of host \"alpha\": sha256 \"abc\" has 3 characters",
            ),
            (
                FileConfig {
                    tls_handshake_timeout: Some("0s".into()),
                    ..tls
                },
                "tls_handshake_timeout: must be more than 0",
            ),
        ];
        for (flags, expected) in cases {
            let e = resolve(flags).unwrap_err();
            assert!(e.starts_with(expected), "{e}");
        }
        let text = "[[agent_tokens]]\nhost = \"alpha\"\nsha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\n";
        let file = FileConfig::parse(Path::new("c.toml"), text).unwrap();
        let s = Settings::resolve(file, FileConfig::default()).unwrap();
        assert!(!s.security.agent_tokens.is_empty());
        assert_eq!(s.security.agent_tokens.host_for("abc"), Some("alpha"));
    }

    #[test]
    fn store_keys_resolve_and_name_bad_values() {
        let text =
            "retention = \"720h\"\nrollup_retention_1h = \"17520h\"\nout_of_order_window = \"10m\"\nhead_max_mb = 64\n";
        let file = FileConfig::parse(Path::new("c.toml"), text).unwrap();
        let s = Settings::resolve(file, FileConfig::default()).unwrap();
        assert_eq!(s.retention, Some(Duration::from_secs(720 * 3600)));
        assert_eq!(s.rollup_retention, [None, Some(Duration::from_secs(17520 * 3600))]);
        assert_eq!(s.out_of_order_window, Duration::from_secs(600));
        assert_eq!(s.head_max_bytes, 64 << 20);
        let d = resolve(FileConfig::default()).unwrap();
        assert_eq!(
            (d.retention, d.out_of_order_window),
            (None, DEFAULT_OUT_OF_ORDER_WINDOW)
        );
        let e = resolve(FileConfig {
            retention: Some("30d".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.starts_with("retention: "), "{e}");
    }

    #[test]
    fn alerting_keys() {
        let s = resolve(FileConfig::default()).unwrap();
        assert!(s.builtin_rules, "the hardware pack is on by default");
        assert_eq!(s.host_silent_after, None, "host silence follows each host's interval");
        let text = "rule_file = [\"a.yml\"]\nalertmanager_url = [\"http://am1:9093\"]\nbuiltin_rules = false\nhost_silent_after = \"5m\"\nwebhook_secret_file = \"/s\"\n";
        let file = FileConfig::parse(Path::new("c.toml"), text).unwrap();
        let flags = FileConfig {
            rule_file: Some(vec!["b.yml".into()]),
            alertmanager_url: Some(vec!["http://am2:9093".into()]),
            ..Default::default()
        };
        let s = Settings::resolve(file, flags).unwrap();
        assert_eq!(s.rule_files, vec![PathBuf::from("a.yml"), PathBuf::from("b.yml")]);
        assert_eq!(s.alertmanager_urls, vec!["http://am1:9093", "http://am2:9093"]);
        assert!(!s.builtin_rules);
        assert_eq!(s.host_silent_after, Some(Duration::from_secs(300)));
        assert_eq!(s.webhook_secret_file, Some(PathBuf::from("/s")));
        let e = resolve(FileConfig {
            alertmanager_url: Some(vec!["am:9093".into()]),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e, "alertmanager_url: \"am:9093\" is not an http:// or https:// URL");
    }

    #[test]
    fn alert_history_retention_and_detector_knobs() {
        let s = resolve(FileConfig::default()).unwrap();
        assert_eq!(s.alert_history_retention, Duration::from_secs(90 * 86_400));
        let text = "alert_history_retention = \"4320h\"\n[detectors.peer_outlier]\nmin_peers = 6\n";
        let file = FileConfig::parse(Path::new("c.toml"), text).unwrap();
        let s = Settings::resolve(file, FileConfig::default()).unwrap();
        assert_eq!(s.alert_history_retention, Duration::from_secs(4320 * 3600));
        assert_eq!(s.detectors.peer_outlier.min_peers, Some(6));
        let bad = FileConfig::parse(Path::new("c.toml"), "[detectors.trend]\nconfidence = 2.0\n").unwrap();
        let err = Settings::resolve(bad, FileConfig::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "detectors.trend.confidence: 2 is not between 0.5 and 0.999"
        );
        assert!(FileConfig::parse(Path::new("c.toml"), "[detectors.nope]\nx = 1\n").is_err());
    }

    #[test]
    fn decoded_cache_and_external_url() {
        let s = resolve(FileConfig::default()).unwrap();
        assert_eq!(s.decoded_cache_bytes, 128 << 20);
        assert_eq!(s.external_url, None);
        let text = "decoded_cache_mb = 0\nexternal_url = \"https://hp.example.com/\"\n";
        let s = resolve(FileConfig::parse(Path::new("c.toml"), text).unwrap()).unwrap();
        assert_eq!(s.decoded_cache_bytes, 0);
        assert_eq!(s.external_url.as_deref(), Some("https://hp.example.com"));
        let err = resolve(FileConfig {
            external_url: Some("hp.example.com".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("external_url: \"hp.example.com\""), "{err}");
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

    /// Issue 7: the `[ingest]` table sets the ingest limits, and a bad value
    /// stops the start naming its key.
    #[test]
    fn ingest_table_sets_the_limits() {
        let file = FileConfig::parse(
            Path::new("c.toml"),
            "[ingest]\nmax_samples_per_second_per_host = 500\nmax_inflight_mb = 64\n",
        )
        .unwrap();
        let s = Settings::resolve(file, FileConfig::default()).unwrap();
        assert_eq!(s.ingest_limits.max_samples_per_second_per_host, 500.0);
        assert_eq!(s.ingest_limits.max_inflight_bytes, 64 << 20);
        let bad = FileConfig::parse(Path::new("c.toml"), "[ingest]\nmax_inflight_mb = 0\n").unwrap();
        let err = Settings::resolve(bad, FileConfig::default()).unwrap_err();
        assert_eq!(err.to_string(), "ingest.max_inflight_mb: must be more than 0");
    }
}
