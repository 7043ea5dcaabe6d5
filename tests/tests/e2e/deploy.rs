//! The example configs shipped in `deploy/config/` parse and validate, so
//! an operator copying them gets a working start.

use std::path::Path;

fn deploy(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(rel)
}

#[test]
fn example_collector_config_is_valid() {
    use hostpulse_collector::config::{FileConfig, Settings};
    let file = FileConfig::load(&deploy("config/collector.toml")).unwrap();
    let settings = Settings::resolve(file, FileConfig::default()).unwrap();
    assert_eq!(settings.data_dir, Path::new("/var/lib/hostpulse"));
    assert_eq!(settings.http_addr.port(), 9470);
    assert_eq!(settings.grpc_addr.port(), 9471);
}

/// Every key the example shows commented out (`# key = value`, `# [table]`)
/// is one the collector accepts, so uncommenting a documented default never
/// stops the start with "unknown key".
#[test]
fn every_documented_collector_key_is_accepted() {
    use hostpulse_collector::config::FileConfig;
    let text = std::fs::read_to_string(deploy("config/collector.toml")).unwrap();
    let mut uncommented = 0;
    let all: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty()
                            && k.chars()
                                .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
                    }) =>
            {
                uncommented += 1;
                format!("{rest}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    assert!(uncommented > 40, "only {uncommented} documented keys found");
    let file = FileConfig::parse(Path::new("collector.toml (uncommented)"), &all).unwrap();
    assert!(file.detectors.is_some() && file.ingest.is_some() && file.agent_tokens.is_some());
}

#[test]
fn example_agent_config_is_valid() {
    use hostpulse_agent::config::{FileConfig, Settings};
    let file = FileConfig::load(&deploy("config/agent.toml")).unwrap();
    let settings = Settings::resolve(file, FileConfig::default()).unwrap();
    assert_eq!(settings.collector, "http://127.0.0.1:9471");
    assert_eq!(
        settings.state_dir.as_deref(),
        Some(Path::new("/var/lib/hostpulse-agent"))
    );
}

#[test]
fn systemd_units_are_hardened() {
    for unit in ["systemd/hostpulse-agent.service", "systemd/hostpulse-collector.service"] {
        let text = std::fs::read_to_string(deploy(unit)).unwrap();
        for key in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "DynamicUser=yes",
            "CapabilityBoundingSet=",
        ] {
            assert!(text.lines().any(|l| l.trim() == key), "{unit} lacks {key}");
        }
    }
}
