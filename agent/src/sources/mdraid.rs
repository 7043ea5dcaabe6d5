//! The `mdraid` source: Linux software RAID health from two places.
//!
//! - `/proc/mdstat` gives node_exporter's `node_md_state{device,state}`,
//!   `node_md_disks{device,state}` (active/failed/spare),
//!   `node_md_disks_required`, `node_md_blocks` and `node_md_blocks_synced`,
//!   computed exactly as node_exporter (procfs) does — including its quirks:
//!   raid0/linear arrays count every listed member as active and required,
//!   inactive arrays report 0 active and 0 required, and a pending or delayed
//!   resync counts 0 blocks synced.
//! - `/sys/block/md*/md` gives node_exporter's `node_md_degraded` and
//!   `node_md_raid_disks`, plus what mdstat hides:
//!   `hostpulse_md_array_state{device,state}` (state set),
//!   `hostpulse_md_sync_action{device,action}` (state set),
//!   `hostpulse_md_sync_completed_ratio{device}` while a sync runs, and per
//!   member `hostpulse_md_member_state{device,member,state}` (one series per
//!   flag: `in_sync`, `faulty`, `spare`, `write_mostly`, `blocked`, ...) and
//!   `hostpulse_md_member_read_errors{device,member}` (corrected read errors,
//!   the kernel's `errors` file — a member accumulating them is failing).
//!
//! Parsers ([`parse_mdstat`], [`parse_sync_completed`], [`member_flags`]) are
//! pure.

use std::path::Path;

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// One array as `/proc/mdstat` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct MdStat {
    /// `md0`.
    pub name: String,
    /// `active`, `inactive`, `recovering`, `resyncing` or `checking`.
    pub activity: String,
    /// Members marked `(F)`.
    pub failed: u64,
    /// Members marked `(S)`.
    pub spare: u64,
    /// Active members (`[n/m]`'s `m`).
    pub active: u64,
    /// Members the array needs (`[n/m]`'s `n`).
    pub total: u64,
    /// Size in blocks.
    pub blocks: u64,
    /// Blocks synced (`blocks` when no sync runs).
    pub blocks_synced: u64,
}

/// Parses the text of `/proc/mdstat`.
pub fn parse_mdstat(text: &str) -> Result<Vec<MdStat>, String> {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut arrays = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty()
            || line.starts_with(' ')
            || line.starts_with('\t')
            || line.starts_with("Personalities")
            || line.starts_with("unused")
        {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 {
            return Err(format!("line {}: too few fields in {line:?}", i + 1));
        }
        let name = fields[0].to_string();
        let mut activity = fields[2].to_string();
        let status = lines.get(i + 1).ok_or_else(|| format!("{name}: no status line"))?;
        let failed = line.matches("(F)").count() as u64;
        let spare = line.matches("(S)").count() as u64;
        let (active, total, blocks) = status_line(line, status).map_err(|m| format!("{name}: {m}"))?;
        let mut sync_line = lines.get(i + 2).copied().unwrap_or_default();
        if sync_line.contains("bitmap") {
            sync_line = lines.get(i + 3).copied().unwrap_or_default();
        }
        let recovering = sync_line.contains("recovery");
        let resyncing = sync_line.contains("resync");
        let checking = sync_line.contains("check");
        let mut blocks_synced = blocks;
        if recovering || resyncing || checking {
            activity = if recovering {
                "recovering"
            } else if checking {
                "checking"
            } else {
                "resyncing"
            }
            .to_string();
            if sync_line.contains("PENDING") || sync_line.contains("DELAYED") {
                blocks_synced = 0;
            } else {
                blocks_synced =
                    recovery_synced(sync_line).ok_or_else(|| format!("{name}: bad sync line {sync_line:?}"))?;
            }
        }
        arrays.push(MdStat {
            name,
            activity,
            failed,
            spare,
            active,
            total,
            blocks,
            blocks_synced,
        });
    }
    Ok(arrays)
}

/// `(active, total, blocks)` from an array's device line and status line.
fn status_line(device_line: &str, status: &str) -> Result<(u64, u64, u64), String> {
    let size = status.split_whitespace().next().ok_or("empty status line")?;
    let blocks = size
        .parse::<u64>()
        .map_err(|_| format!("size {size:?} is not an integer"))?;
    if device_line.contains("raid0") || device_line.contains("linear") {
        // Only members carry a `[n]` on the device line.
        let members = device_line.matches('[').count() as u64;
        return Ok((members, members, blocks));
    }
    if device_line.contains("inactive") {
        return Ok((0, 0, blocks));
    }
    // `... blocks ... [total/active] [UU_]`
    let (total, active) = status
        .split_whitespace()
        .filter_map(|f| f.strip_prefix('[')?.strip_suffix(']'))
        .find_map(|f| {
            let (t, a) = f.split_once('/')?;
            Some((t.parse::<u64>().ok()?, a.parse::<u64>().ok()?))
        })
        .ok_or_else(|| format!("no [total/active] in {status:?}"))?;
    Ok((active, total, blocks))
}

/// Blocks done from a progress line (`... recovery =  8.5% (16775552/195310144) ...`).
fn recovery_synced(line: &str) -> Option<u64> {
    let start = line.find('(')?;
    let rest = &line[start + 1..];
    let (done, _) = rest.split_once('/')?;
    done.trim().parse().ok()
}

/// Parses `sync_completed`: `Some(done / total)` while a sync runs
/// (`"1569888 / 2093056"`, in sectors), `None` for `none` or garbage.
pub fn parse_sync_completed(text: &str) -> Option<f64> {
    let (done, total) = text.trim().split_once('/')?;
    let done = done.trim().parse::<u64>().ok()?;
    let total = total.trim().parse::<u64>().ok()?;
    if total == 0 {
        return None;
    }
    Some(done as f64 / total as f64)
}

/// The flags of a member's `state` file (`faulty,write_mostly` → two).
pub fn member_flags(text: &str) -> Vec<&str> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|f| !f.is_empty())
        .collect()
}

/// Values of `array_state` the kernel documents (md.rst).
const ARRAY_STATES: &[&str] = &[
    "clear",
    "inactive",
    "suspended",
    "readonly",
    "read-auto",
    "clean",
    "active",
    "write-pending",
    "active-idle",
    "broken",
];

/// Values of `sync_action`.
const SYNC_ACTIONS: &[&str] = &["idle", "resync", "recover", "check", "repair", "reshape", "frozen"];

/// node_exporter's `node_md_state` labels and the activity each stands for.
const MD_STATES: &[(&str, &str)] = &[
    ("active", "active"),
    ("inactive", "inactive"),
    ("recovering", "recovering"),
    ("resync", "resyncing"),
    ("check", "checking"),
];

/// Records the mdstat families.
pub fn emit_mdstat(arrays: &[MdStat], out: &mut Emitter) {
    for md in arrays {
        let device = md.name.as_str();
        for (label, activity) in MD_STATES {
            let value = if md.activity == *activity { 1.0 } else { 0.0 };
            out.gauge(
                "node_md_state",
                "Indicates the state of md-device.",
                &[("device", device), ("state", label)],
                value,
            );
        }
        for (state, value) in [("active", md.active), ("failed", md.failed), ("spare", md.spare)] {
            out.gauge(
                "node_md_disks",
                "Number of active/failed/spare disks of device.",
                &[("device", device), ("state", state)],
                value as f64,
            );
        }
        let single = [
            ("node_md_disks_required", "Total number of disks of device.", md.total),
            ("node_md_blocks", "Total number of blocks on device.", md.blocks),
            (
                "node_md_blocks_synced",
                "Number of blocks synced on device.",
                md.blocks_synced,
            ),
        ];
        for (name, help, value) in single {
            out.gauge(name, help, &[("device", device)], value as f64);
        }
    }
}

/// Emits a state set: one series per known value, 1 for `current` (which
/// is added when the kernel reports a value this agent does not know).
fn state_set(out: &mut Emitter, name: &str, help: &str, device: &str, label: &str, known: &[&str], current: &str) {
    for state in known {
        let value = if *state == current { 1.0 } else { 0.0 };
        out.gauge(name, help, &[("device", device), (label, state)], value);
    }
    if !known.contains(&current) {
        out.gauge(name, help, &[("device", device), (label, current)], 1.0);
    }
}

/// Reads one `sys/block/mdN/md` directory.
fn collect_sysfs_array(files: &mut Files, device: &str, dir: &Path, out: &mut Emitter) {
    let mut number = |file: &str| files.attr_in(dir, file).and_then(|t| t.trim().parse::<u64>().ok());
    out.gauge(
        "node_md_degraded",
        "Number of degraded disks on device.",
        &[("device", device)],
        number("degraded").unwrap_or(0) as f64,
    );
    if let Some(n) = number("raid_disks") {
        out.gauge(
            "node_md_raid_disks",
            "Number of raid disks on device.",
            &[("device", device)],
            n as f64,
        );
    }
    if let Some(state) = files.attr_in(dir, "array_state") {
        state_set(
            out,
            "hostpulse_md_array_state",
            "State of the md array from sysfs array_state (1 for the current state).",
            device,
            "state",
            ARRAY_STATES,
            state.trim(),
        );
    }
    if let Some(action) = files.attr_in(dir, "sync_action") {
        state_set(
            out,
            "hostpulse_md_sync_action",
            "Current sync action of the md array from sysfs sync_action (1 for the current action).",
            device,
            "action",
            SYNC_ACTIONS,
            action.trim(),
        );
    }
    if let Some(ratio) = files
        .attr_in(dir, "sync_completed")
        .and_then(|t| parse_sync_completed(&t))
    {
        out.gauge(
            "hostpulse_md_sync_completed_ratio",
            "Progress of the running resync/recovery/check of the md array, 0 to 1; absent when none runs.",
            &[("device", device)],
            ratio,
        );
    }
    // Membership changes (a disk added or ejected) are seen at the next
    // refresh of the listing; the member states are read every cycle.
    let Ok(entries) = files.list(dir) else { return };
    let members: Vec<&str> = entries.iter().filter_map(|e| e.strip_prefix("dev-")).collect();
    for member in members {
        let member_dir = dir.join(format!("dev-{member}"));
        if let Some(state) = files.attr_in(&member_dir, "state") {
            for flag in member_flags(&state) {
                out.gauge(
                    "hostpulse_md_member_state",
                    "Flags of an md array member from sysfs (in_sync, faulty, spare, write_mostly, blocked, ...), value 1.",
                    &[("device", device), ("member", member), ("state", flag)],
                    1.0,
                );
            }
        }
        if let Some(errors) = files
            .attr_in(&member_dir, "errors")
            .and_then(|t| t.trim().parse::<u64>().ok())
        {
            out.gauge(
                "hostpulse_md_member_read_errors",
                "Read errors on an md array member that were corrected and not (yet) ejected the member, from sysfs.",
                &[("device", device), ("member", member)],
                errors as f64,
            );
        }
    }
}

/// Reads `/proc/mdstat` and `/sys/block/md*/md`; listings come from the
/// refreshed cache, states through kept descriptors.
#[derive(Debug, Default)]
pub struct MdraidSource {
    files: Files,
}

impl Source for MdraidSource {
    fn name(&self) -> &'static str {
        "mdraid"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        let files = &mut self.files;
        files.begin_cycle();
        let path = paths.proc("mdstat");
        match files.read_bytes(&path) {
            Ok(bytes) => {
                let text = std::str::from_utf8(bytes).map_err(|_| SourceError::parse(&path, "not UTF-8"))?;
                let arrays = parse_mdstat(text).map_err(|m| SourceError::parse(&path, m))?;
                emit_mdstat(&arrays, out);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SourceError::io(&path, e)),
        }
        let block = paths.sys("block");
        let entries = match files.list(&block) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&block, e)),
        };
        for device in entries.iter().filter(|n| n.starts_with("md")) {
            let dir = block.join(device).join("md");
            if files.is_dir(&dir) {
                collect_sysfs_array(files, device, &dir, out);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MDSTAT: &str = "Personalities : [raid1] [raid6] [raid0]

md6 : active raid1 sdb2[2](F) sdc[1](S) sda2[0]
      195310144 blocks [2/1] [U_]
      [=>...................]  recovery =  8.5% (16775552/195310144) finish=17.0min speed=259783K/sec

md7 : active raid6 sdb1[0] sde1[3] sdd1[2] sdc1[1](F)
      7813735424 blocks super 1.2 level 6, 512k chunk, algorithm 2 [4/3] [U_UU]
      bitmap: 0/30 pages [0KB], 65536KB chunk

md9 : active raid1 sdc2[2] sdd2[3] sdb2[1] sda2[0] sde[4](F) sdf[5](F) sdg[6](S)
      523968 blocks super 1.2 [4/4] [UUUU]
      resync=DELAYED

md10 : active raid0 sda1[0] sdb1[1]
       314159265 blocks 64k chunks

md4 : inactive raid1 sda3[0](F) sdb3[1](S)
      4883648 blocks [2/2] [UU]

md201 : active raid1 sda3[0] sdb3[1]
      1993728 blocks super 1.2 [2/2] [UU]
      [=>...................]  check =  5.7% (114176/1993728) finish=0.2min speed=114176K/sec

unused devices: <none>
";

    fn md<'a>(arrays: &'a [MdStat], name: &str) -> &'a MdStat {
        arrays.iter().find(|m| m.name == name).unwrap()
    }

    #[test]
    fn recovering_array_with_failed_member() {
        let arrays = parse_mdstat(MDSTAT).unwrap();
        assert_eq!(arrays.len(), 6);
        let md6 = md(&arrays, "md6");
        assert_eq!(md6.activity, "recovering");
        assert_eq!((md6.active, md6.total, md6.failed, md6.spare), (1, 2, 1, 1));
        assert_eq!((md6.blocks, md6.blocks_synced), (195310144, 16775552));
    }

    #[test]
    fn bitmap_line_is_not_a_sync() {
        let arrays = parse_mdstat(MDSTAT).unwrap();
        let md7 = md(&arrays, "md7");
        assert_eq!(md7.activity, "active");
        assert_eq!((md7.active, md7.total, md7.failed), (3, 4, 1));
        assert_eq!(md7.blocks_synced, md7.blocks);
    }

    #[test]
    fn node_exporter_quirks() {
        let arrays = parse_mdstat(MDSTAT).unwrap();
        let md9 = md(&arrays, "md9");
        assert_eq!((md9.activity.as_str(), md9.blocks_synced), ("resyncing", 0));
        let md10 = md(&arrays, "md10");
        assert_eq!((md10.active, md10.total), (2, 2));
        let md4 = md(&arrays, "md4");
        assert_eq!(
            (md4.activity.as_str(), md4.active, md4.total, md4.failed, md4.spare),
            ("inactive", 0, 0, 1, 1)
        );
        let md201 = md(&arrays, "md201");
        assert_eq!((md201.activity.as_str(), md201.blocks_synced), ("checking", 114176));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_mdstat("md0 : active\n").is_err());
        assert!(parse_mdstat("md0 : active raid1 sda[0]\n      x blocks\n").is_err());
        assert!(parse_mdstat("md0 : active raid1 sda[0]\n      10 blocks [x/2] [U_]\n").is_err());
        assert!(parse_mdstat("md0 : active raid1 sda[0]").is_err());
        assert!(parse_mdstat("").unwrap().is_empty());
    }

    #[test]
    fn sync_completed_and_member_flags() {
        assert_eq!(parse_sync_completed("1569888 / 2093056\n"), Some(1569888.0 / 2093056.0));
        assert_eq!(parse_sync_completed("none"), None);
        assert_eq!(parse_sync_completed("1 / 0"), None);
        assert_eq!(member_flags("faulty,write_mostly\n"), vec!["faulty", "write_mostly"]);
        assert_eq!(member_flags("in_sync"), vec!["in_sync"]);
    }

    #[test]
    fn emits_node_exporter_families() {
        let mut out = Emitter::new();
        emit_mdstat(&parse_mdstat(MDSTAT).unwrap(), &mut out);
        let get = |name: &str, state: Option<&str>| {
            out.samples()
                .iter()
                .find(|s| {
                    s.name == name
                        && s.labels.iter().any(|(k, v)| k == "device" && v == "md6")
                        && state.is_none_or(|st| s.labels.iter().any(|(k, v)| k == "state" && v == st))
                })
                .map(|s| s.value)
        };
        assert_eq!(get("node_md_state", Some("recovering")), Some(1.0));
        assert_eq!(get("node_md_state", Some("active")), Some(0.0));
        assert_eq!(get("node_md_disks", Some("failed")), Some(1.0));
        assert_eq!(get("node_md_disks_required", None), Some(2.0));
    }
}
