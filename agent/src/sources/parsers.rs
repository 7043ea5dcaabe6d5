//! Every pure parser of the sources, listed by name, so that untrusted text
//! (what a sysfs/procfs file, `smartctl --json` or `/dev/kmsg` may hold) can
//! be thrown at all of them from outside the crate: the cargo-fuzz targets in
//! `fuzz/` and the corpus replay that CI runs on stable
//! (`tests/tests/fuzz_corpora.rs`) use this list and nothing else.
//!
//! Each entry runs one parser (and, where a parser's output feeds an
//! emitter, the emitting step too) and returns how many things it produced,
//! so the result is used and the fuzzer sees different paths. Inputs whose
//! parser takes two strings are split at the first newline. Adding a parser
//! to a source means adding it here; the list is the fuzzing surface.

use std::collections::{BTreeMap, HashMap};

use crate::Emitter;

/// A parser run over one text: the number of items it produced.
pub type TextParser = fn(&str) -> usize;

/// `(name, parser)` for every pure parser of the sources, in a fixed
/// order (fuzz inputs select an entry by index).
pub const TEXT_PARSERS: &[(&str, TextParser)] = &[
    ("arp", |t| super::arp::parse_arp(t).map_or(0, |m| m.len())),
    ("conntrack", |t| super::conntrack::parse_stat(t).map_or(0, |v| v.len())),
    ("cpu_stat", |t| usize::from(super::cpu::parse_stat(t).is_ok())),
    ("cpufreq_khz", |t| usize::from(super::cpufreq::parse_khz(t).is_some())),
    ("cpufreq_governors", |t| {
        let (available, current) = two(t);
        super::cpufreq::governor_states(available, current).len()
    }),
    ("diskstats", |t| {
        super::diskstats::parse_diskstats(t).map_or(0, |v| v.len())
    }),
    ("udev_data", |t| super::diskstats::parse_udev(t).len()),
    ("edac_count", |t| usize::from(super::edac::parse_count(t).is_some())),
    ("edac_channel_label", |t| {
        super::edac::clean_channel_label(Some(t)).len()
    }),
    ("entropy", |t| usize::from(super::entropy::parse_bits(t).is_ok())),
    ("file_nr", |t| usize::from(super::filefd::parse_file_nr(t).is_ok())),
    ("mounts", |t| {
        super::filesystem::parse_mounts(t)
            .map_or(0, |m| m.iter().filter(|m| !super::filesystem::is_excluded(m)).count())
    }),
    ("hwmon_name", |t| super::hwmon::clean_name(t).len()),
    ("hwmon_sensor_file", |t| {
        usize::from(super::hwmon::explode_sensor_filename(t).is_some())
    }),
    ("hwmon_sensor", |t| {
        let (sensor, rest) = two(t);
        super::hwmon::sensor_series(sensor, &pairs(rest)).len()
    }),
    ("interrupts", |t| {
        super::interrupts::parse_interrupts(t).map_or(0, |m| m.len())
    }),
    ("ipmi_sdr", |t| {
        let sensors = super::ipmi::parse_sdr_elist(t);
        let mut out = Emitter::new();
        super::ipmi::emit_sensors(&sensors, &mut out);
        sensors.len()
    }),
    ("ipmi_dcmi_power", |t| {
        usize::from(super::ipmi::parse_dcmi_power(t).is_some())
    }),
    ("kmsg", |t| super::kmsg::parse_record(t).message.len()),
    ("loadavg", |t| usize::from(super::loadavg::parse_loadavg(t).is_ok())),
    ("mdstat", |t| match super::mdraid::parse_mdstat(t) {
        Ok(arrays) => {
            let mut out = Emitter::new();
            super::mdraid::emit_mdstat(&arrays, &mut out);
            arrays.len()
        }
        Err(_) => 0,
    }),
    ("md_sync_completed", |t| {
        usize::from(super::mdraid::parse_sync_completed(t).is_some())
    }),
    ("md_member_flags", |t| super::mdraid::member_flags(t).len()),
    ("meminfo", |t| super::meminfo::parse_meminfo(t).map_or(0, |v| v.len())),
    ("netclass_number", |t| {
        usize::from(super::netclass::parse_number(t).is_some())
    }),
    ("netclass_aer", |t| super::netclass::parse_aer(t).map_or(0, |v| v.len())),
    ("net_dev", |t| super::netdev::parse_net_dev(t).map_or(0, |v| v.len())),
    ("netstat", |t| {
        let pairs = super::netstat::parse_pairs(t).unwrap_or_default();
        let snmp6 = super::netstat::parse_snmp6(t).unwrap_or_default();
        super::netstat::select(pairs.clone(), pairs, snmp6).len()
    }),
    ("nvme_namespace", |t| {
        let (controller, entry) = two(t);
        usize::from(super::nvme::namespace_id(controller, entry).is_some())
    }),
    ("os_release", |t| {
        let fields = super::os_release::parse_os_release(t);
        let version = fields.get("VERSION_ID").and_then(|v| super::os_release::major_minor(v));
        let date = super::os_release::date_to_epoch_seconds(t);
        fields.len() + usize::from(version.is_some()) + usize::from(date.is_some())
    }),
    ("power_supply", |t| {
        // Only the parse matters; the series type has no length to report.
        let _ = super::power_supply::supply_series(&pairs(t));
        1
    }),
    ("pressure", |t| usize::from(super::pressure::parse_psi(t).is_ok())),
    ("process_stat", |t| {
        usize::from(super::process::parse_self_stat(t).is_ok())
    }),
    ("process_status", |t| {
        let (key, text) = two(t);
        usize::from(super::process::parse_status_kib(text, key).is_some())
    }),
    ("process_limits", |t| {
        let (row, text) = two(t);
        usize::from(super::process::parse_soft_limit(text, row).is_some())
    }),
    ("btime", |t| usize::from(super::process::parse_btime(t).is_some())),
    ("pid_stat", |t| usize::from(super::processes::parse_pid_stat(t).is_ok())),
    ("rapl_energy", |t| usize::from(super::rapl::parse_energy_uj(t).is_ok())),
    ("rapl_zone", |t| {
        let mut seen = HashMap::new();
        t.lines()
            .map(|line| super::rapl::zone_index_and_name(line, &mut seen).1.len())
            .sum()
    }),
    ("schedstat", |t| {
        super::schedstat::parse_schedstat(t).map_or(0, |v| v.len())
    }),
    ("smart_scan", |t| super::smart::parse_scan(t).map_or(0, |v| v.len())),
    ("smartctl_json", |t| {
        usize::from(super::smart::parse_smartctl_json(t).is_ok())
    }),
    ("smart_leading_number", |t| {
        usize::from(super::smart::leading_number(t).is_some())
    }),
    ("sockstat", |t| usize::from(super::sockstat::parse_sockstat(t).is_ok())),
    ("auxv", |t| {
        usize::from(super::sockstat::parse_auxv_page_size(t.as_bytes()).is_some())
    }),
    ("softnet", |t| super::softnet::parse_softnet(t).map_or(0, |v| v.len())),
    ("systemd_units", |t| super::systemd::parse_list_units(t).len()),
    ("systemd_show", |t| super::systemd::parse_show(t).len()),
    ("thermal_throttle", |t| {
        usize::from(super::thermal_throttle::parse_count(t).is_some())
    }),
    ("thermal_zone", |t| {
        usize::from(super::thermal_zone::parse_millicelsius(t).is_ok())
            + usize::from(super::thermal_zone::parse_state(t).is_ok())
    }),
    ("thermal_zone_entry", |t| {
        let (prefix, entry) = two(t);
        usize::from(super::thermal_zone::entry_number(entry, prefix).is_some())
    }),
    ("clocksources", |t| super::timex::parse_available(t).len()),
    ("vmstat", |t| super::vmstat::parse_vmstat(t).map_or(0, |v| v.len())),
];

/// The parser named `name`.
pub fn text_parser(name: &str) -> Option<TextParser> {
    TEXT_PARSERS.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

/// Splits at the first newline (the whole text and "" without one).
fn two(t: &str) -> (&str, &str) {
    t.split_once('\n').unwrap_or((t, ""))
}

/// `key=value` lines as the attribute map the sysfs readers build.
fn pairs(t: &str) -> BTreeMap<String, String> {
    t.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_parser_takes_garbage() {
        let mut names: Vec<&str> = TEXT_PARSERS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "duplicate parser names");
        for (name, parser) in TEXT_PARSERS {
            for input in ["", "\n", "x y z\n1 2 3", "\u{0}\u{ffff}=;,{}[]\"", "nvme0\nnvme0n1"] {
                let _ = parser(input);
            }
            assert!(text_parser(name).is_some());
        }
    }

    #[test]
    fn a_well_formed_input_is_parsed() {
        let loadavg = text_parser("loadavg").map(|p| p("0.10 0.20 0.30 1/100 42\n"));
        assert_eq!(loadavg, Some(1));
        let kmsg = text_parser("kmsg").map(|p| p("3,100,5000,-;EDAC MC0: 1 CE error\n"));
        assert_eq!(kmsg, Some("EDAC MC0: 1 CE error".len()));
    }
}
