//! The `systemd` source: unit states from `systemctl`, as node_exporter's
//! systemd collector names them — `node_systemd_unit_state{name,state,type}`
//! (1 for the unit's current active state, 0 for the other four),
//! `node_systemd_units{state}` (units per state) and the socket unit
//! counters `node_systemd_socket_{accepted,refused}_connections_total` and
//! `node_systemd_socket_current_connections{name}`. A failed
//! `smartd.service`, `mdmonitor.service` or `edac` unit means a hardware
//! watcher is down; a service that keeps failing often sits on a bad disk.
//!
//! Why a command: node_exporter asks systemd over D-Bus, which would bring a
//! D-Bus client into the agent for one family. `systemctl list-units` and one
//! `systemctl show` for the services and sockets cost tens of milliseconds,
//! so they run every [`REFRESH`] (not every cycle) on the source's own
//! worker (`may_block`), with the shared command deadline; between runs
//! the last snapshot is re-emitted so the series stay continuous.
//!
//! Like node_exporter, units that are not loaded and `automount`, `device`,
//! `mount`, `scope` and `slice` units are left out. On a host not booted
//! with systemd (no `<rootfs>/run/systemd/system`, e.g. a container) or
//! without `systemctl`, the source emits nothing and reports no error.
//! [`parse_list_units`] and [`parse_show`] are pure.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError, SourceOptions};
use crate::sources::command::{CommandError, run_with_timeout};

/// How often systemctl is asked again.
pub const REFRESH: Duration = Duration::from_secs(60);

/// The active states node_exporter reports for every unit.
pub const STATES: [&str; 5] = ["activating", "active", "deactivating", "inactive", "failed"];

/// Unit types node_exporter's default exclude pattern leaves out: there are
/// many of them and their state says nothing about the machine's health.
const EXCLUDED_TYPES: [&str; 5] = ["automount", "device", "mount", "scope", "slice"];

/// One line of `systemctl list-units`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// Unit name (`sshd.service`).
    pub name: String,
    /// Load state (`loaded`, `not-found`, `masked`, ...).
    pub load: String,
    /// Active state (`active`, `failed`, ...).
    pub active: String,
}

impl Unit {
    /// The unit type: the part of the name after the last dot.
    pub fn kind(&self) -> &str {
        self.name.rsplit_once('.').map_or("", |(_, kind)| kind)
    }

    /// Whether node_exporter's default filter keeps the unit.
    pub fn reported(&self) -> bool {
        self.load == "loaded" && !EXCLUDED_TYPES.contains(&self.kind())
    }
}

/// Parses `systemctl list-units --all --plain --no-legend --full` output:
/// `UNIT LOAD ACTIVE SUB DESCRIPTION...`, one unit a line. systemctl marks a
/// failed or missing unit with a leading `●` (or `*` without UTF-8); it is
/// dropped. Lines with fewer than four columns or a first column without
/// a unit type suffix (a summary line) are skipped.
pub fn parse_list_units(text: &str) -> Vec<Unit> {
    text.lines()
        .filter_map(|line| {
            let mut columns = line.split_whitespace().peekable();
            if columns.peek().is_some_and(|c| *c == "●" || *c == "*") {
                columns.next();
            }
            // Every unit name has a type suffix; a summary line has none.
            let name = columns.next().filter(|n| n.contains('.'))?;
            let load = columns.next()?;
            let active = columns.next()?;
            let _sub = columns.next()?;
            Some(Unit {
                name: name.to_string(),
                load: load.to_string(),
                active: active.to_string(),
            })
        })
        .collect()
}

/// Parses `systemctl show -p A,B ... UNIT...`: blocks of `Key=Value` lines
/// separated by blank lines, one block per unit, keyed by the block's `Id`.
pub fn parse_show(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut units = BTreeMap::new();
    for block in text.split("\n\n") {
        let properties: BTreeMap<String, String> = block
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        if let Some(id) = properties.get("Id").cloned() {
            units.insert(id, properties);
        }
    }
    units
}

/// What one systemctl round produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// The reported units.
    pub units: Vec<Unit>,
    /// `systemctl show` properties of the reported services and sockets.
    pub properties: BTreeMap<String, BTreeMap<String, String>>,
}

impl Snapshot {
    /// Builds a snapshot from both commands' outputs.
    pub fn parse(list_units: &str, show: &str) -> Self {
        let units = parse_list_units(list_units)
            .into_iter()
            .filter(Unit::reported)
            .collect();
        Snapshot {
            units,
            properties: parse_show(show),
        }
    }

    /// Units `systemctl show` is asked about: services (for `Type`) and
    /// sockets (for the connection counters).
    pub fn detail_names(units: &[Unit]) -> Vec<&str> {
        units
            .iter()
            .filter(|u| matches!(u.kind(), "service" | "socket"))
            .map(|u| u.name.as_str())
            .collect()
    }

    /// Records the series.
    pub fn emit(&self, out: &mut Emitter) {
        let mut per_state: BTreeMap<&str, u64> = STATES.iter().map(|s| (*s, 0)).collect();
        for unit in &self.units {
            let props = self.properties.get(&unit.name);
            // node_exporter labels services with their Type= (simple,
            // forking, ...) and every other unit with an empty type.
            let service_type = match unit.kind() {
                "service" => props.and_then(|p| p.get("Type")).map_or("", String::as_str),
                _ => "",
            };
            for state in STATES {
                out.gauge(
                    "node_systemd_unit_state",
                    "Systemd unit",
                    &[("name", &unit.name), ("state", state), ("type", service_type)],
                    if unit.active == state { 1.0 } else { 0.0 },
                );
            }
            if let Some(count) = per_state.get_mut(unit.active.as_str()) {
                *count += 1;
            }
            if unit.kind() == "socket"
                && let Some(props) = props
            {
                let number = |key: &str| props.get(key).and_then(|v| v.parse::<f64>().ok());
                if let Some(v) = number("NAccepted") {
                    out.counter(
                        "node_systemd_socket_accepted_connections_total",
                        "Total number of accepted socket connections",
                        &[("name", &unit.name)],
                        v,
                    );
                }
                if let Some(v) = number("NConnections") {
                    out.gauge(
                        "node_systemd_socket_current_connections",
                        "Current number of socket connections",
                        &[("name", &unit.name)],
                        v,
                    );
                }
                if let Some(v) = number("NRefused") {
                    out.counter(
                        "node_systemd_socket_refused_connections_total",
                        "Total number of refused socket connections",
                        &[("name", &unit.name)],
                        v,
                    );
                }
            }
        }
        for (state, count) in per_state {
            out.gauge(
                "node_systemd_units",
                "Summary of systemd unit states",
                &[("state", state)],
                count as f64,
            );
        }
    }
}

/// Runs `systemctl` on a slow interval and re-emits its last snapshot.
#[derive(Debug)]
pub struct SystemdSource {
    systemctl: PathBuf,
    timeout: Duration,
    last_run: Option<Instant>,
    snapshot: Option<Snapshot>,
    /// Set once systemctl was found missing or failing, so that is logged once.
    warned: bool,
}

impl SystemdSource {
    /// A source running `systemctl` from `PATH` with the command deadline.
    pub fn new(options: &SourceOptions) -> Self {
        SystemdSource {
            systemctl: PathBuf::from("systemctl"),
            timeout: options.command_timeout,
            last_run: None,
            snapshot: None,
            warned: false,
        }
    }

    /// Runs one systemctl command; `Ok(None)` when it is missing or fails.
    fn run(&mut self, args: &[&str]) -> Result<Option<String>, SourceError> {
        match run_with_timeout(&self.systemctl, args, self.timeout) {
            Ok(out) if out.status.success() => Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned())),
            Ok(out) => {
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(command = ?args, status = ?out.status.code(), "systemctl failed; no systemd unit data");
                }
                Ok(None)
            }
            Err(CommandError::NotFound { program }) => {
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(systemctl = %program, "systemctl not found; no systemd unit data");
                }
                Ok(None)
            }
            Err(CommandError::PermissionDenied { program }) => {
                Err(SourceError::PermissionDenied { path: program.into() })
            }
            Err(e) => Err(SourceError::Io {
                path: self.systemctl.clone(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// Asks systemctl for a fresh snapshot.
    fn refresh(&mut self) -> Result<Option<Snapshot>, SourceError> {
        let Some(list) = self.run(&["list-units", "--all", "--plain", "--no-legend", "--no-pager", "--full"])? else {
            return Ok(None);
        };
        let units: Vec<Unit> = parse_list_units(&list).into_iter().filter(Unit::reported).collect();
        let names = Snapshot::detail_names(&units);
        let show = if names.is_empty() {
            String::new()
        } else {
            let mut args = vec!["show", "--property=Id,Type,NAccepted,NConnections,NRefused", "--"];
            args.extend(names);
            // Without the details the unit states are still worth sending.
            self.run(&args)?.unwrap_or_default()
        };
        Ok(Some(Snapshot::parse(&list, &show)))
    }
}

impl Source for SystemdSource {
    fn name(&self) -> &'static str {
        "systemd"
    }

    /// Runs systemctl, which waits on PID 1.
    fn may_block(&self) -> bool {
        true
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        // sd_booted(3): systemd is PID 1 exactly when this directory exists.
        if !paths.root("run/systemd/system").is_dir() {
            return Ok(());
        }
        if self.last_run.is_none_or(|t| t.elapsed() >= REFRESH) {
            self.last_run = Some(Instant::now());
            match self.refresh() {
                Ok(Some(snapshot)) => self.snapshot = Some(snapshot),
                Ok(None) => self.snapshot = None,
                Err(e) => {
                    self.snapshot = None;
                    return Err(e);
                }
            }
        }
        if let Some(snapshot) = &self.snapshot {
            snapshot.emit(out);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `systemctl list-units --all --plain --no-legend --no-pager --full`
    /// on a Debian 12 server, trimmed (written for this test).
    const LIST_UNITS: &str = "\
proc-sys-fs-binfmt_misc.automount      loaded    active   waiting   Arbitrary Executable File Formats File System Automount Point
sys-devices-virtual-net-eth0.device    loaded    active   plugged   /sys/devices/virtual/net/eth0
-.mount                                loaded    active   mounted   Root Mount
cron.service                           loaded    active   running   Regular background program processing daemon
● smartmontools.service                loaded    failed   failed    Self Monitoring and Reporting Technology (SMART) Daemon
● nfs-server.service                   not-found inactive dead      nfs-server.service
ssh.service                            loaded    activating start   OpenBSD Secure Shell server
ssh.socket                             loaded    active   listening OpenBSD Secure Shell server socket
system.slice                           loaded    active   active    System Slice
timers.target                          loaded    active   active    Timers
";

    /// `systemctl show --property=Id,Type,NAccepted,NConnections,NRefused --
    /// cron.service smartmontools.service ssh.service ssh.socket`.
    const SHOW: &str = "\
Type=simple
Id=cron.service

Type=forking
Id=smartmontools.service

Type=notify
Id=ssh.service

NAccepted=12
NConnections=1
NRefused=0
Id=ssh.socket
";

    fn values(out: &Emitter, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
        out.samples()
            .iter()
            .filter(|s| s.name == name)
            .map(|s| {
                let labels = s.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                (labels, s.value)
            })
            .collect()
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn list_units_drops_markers_and_keeps_states() {
        let units = parse_list_units(LIST_UNITS);
        assert_eq!(units.len(), 10);
        let smart = units.iter().find(|u| u.name == "smartmontools.service").unwrap();
        assert_eq!((smart.load.as_str(), smart.active.as_str()), ("loaded", "failed"));
        let nfs = units.iter().find(|u| u.name == "nfs-server.service").unwrap();
        assert!(!nfs.reported(), "not-found units are left out");
        let kept: Vec<&str> = units.iter().filter(|u| u.reported()).map(|u| u.name.as_str()).collect();
        assert_eq!(
            kept,
            [
                "cron.service",
                "smartmontools.service",
                "ssh.service",
                "ssh.socket",
                "timers.target"
            ]
        );
    }

    #[test]
    fn garbage_and_summary_lines_are_skipped() {
        assert!(
            parse_list_units("\n0 loaded units listed.\n")
                .iter()
                .all(|u| u.name != "0")
        );
        assert!(parse_list_units("").is_empty());
        assert!(parse_show("no equals sign\n\n=\n").is_empty());
    }

    #[test]
    fn unit_state_is_one_hot_with_the_service_type() {
        let mut out = Emitter::new();
        Snapshot::parse(LIST_UNITS, SHOW).emit(&mut out);
        let states = values(&out, "node_systemd_unit_state");
        // Five reported units, five states each.
        assert_eq!(states.len(), 25);
        let failed = labels(&[
            ("name", "smartmontools.service"),
            ("state", "failed"),
            ("type", "forking"),
        ]);
        assert!(states.contains(&(failed, 1.0)));
        let active = labels(&[
            ("name", "smartmontools.service"),
            ("state", "active"),
            ("type", "forking"),
        ]);
        assert!(states.contains(&(active, 0.0)));
        let target = labels(&[("name", "timers.target"), ("state", "active"), ("type", "")]);
        assert!(states.contains(&(target, 1.0)));
        // Exactly one state is 1 per unit.
        let ones = states.iter().filter(|(_, v)| *v == 1.0).count();
        assert_eq!(ones, 5);
    }

    #[test]
    fn summary_counts_every_state() {
        let mut out = Emitter::new();
        Snapshot::parse(LIST_UNITS, SHOW).emit(&mut out);
        let units = values(&out, "node_systemd_units");
        let count = |state: &str| {
            units
                .iter()
                .find(|(l, _)| l == &labels(&[("state", state)]))
                .map(|(_, v)| *v)
        };
        assert_eq!(count("active"), Some(3.0));
        assert_eq!(count("failed"), Some(1.0));
        assert_eq!(count("activating"), Some(1.0));
        assert_eq!(count("inactive"), Some(0.0));
        assert_eq!(count("deactivating"), Some(0.0));
    }

    #[test]
    fn socket_counters() {
        let mut out = Emitter::new();
        Snapshot::parse(LIST_UNITS, SHOW).emit(&mut out);
        let name = labels(&[("name", "ssh.socket")]);
        assert_eq!(
            values(&out, "node_systemd_socket_accepted_connections_total"),
            vec![(name.clone(), 12.0)]
        );
        assert_eq!(
            values(&out, "node_systemd_socket_current_connections"),
            vec![(name.clone(), 1.0)]
        );
        assert_eq!(
            values(&out, "node_systemd_socket_refused_connections_total"),
            vec![(name, 0.0)]
        );
    }

    #[test]
    fn details_are_asked_for_services_and_sockets_only() {
        let units: Vec<Unit> = parse_list_units(LIST_UNITS)
            .into_iter()
            .filter(Unit::reported)
            .collect();
        assert_eq!(
            Snapshot::detail_names(&units),
            ["cron.service", "smartmontools.service", "ssh.service", "ssh.socket"]
        );
    }

    #[test]
    fn a_host_without_systemd_emits_nothing_and_runs_nothing() {
        let root = tempfile::tempdir().unwrap();
        let paths = HostPaths {
            rootfs: root.path().to_path_buf(),
            ..HostPaths::default()
        };
        let mut source = SystemdSource::new(&SourceOptions::default());
        // A systemctl that cannot exist: running it would be an error path.
        source.systemctl = root.path().join("no-systemctl");
        let mut out = Emitter::new();
        source.collect(&paths, &mut out).unwrap();
        assert!(out.samples().is_empty());
        assert!(source.last_run.is_none(), "systemctl must not run without systemd");
    }

    #[test]
    fn a_missing_systemctl_is_no_data_not_an_error() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("run/systemd/system")).unwrap();
        let paths = HostPaths {
            rootfs: root.path().to_path_buf(),
            ..HostPaths::default()
        };
        let mut source = SystemdSource::new(&SourceOptions::default());
        source.systemctl = root.path().join("no-systemctl");
        let mut out = Emitter::new();
        source.collect(&paths, &mut out).unwrap();
        assert!(out.samples().is_empty());
        assert!(source.warned);
    }
}
