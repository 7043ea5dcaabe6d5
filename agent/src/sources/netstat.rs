//! The `netstat` source: kernel network protocol counters from
//! `/proc/net/netstat`, `/proc/net/snmp` and `/proc/net/snmp6`, as
//! node_exporter's untyped `node_netstat_<Protocol>_<Field>`, filtered by its
//! default `--collector.netstat.fields` pattern. Among them are TCP
//! retransmits (`node_netstat_Tcp_RetransSegs`), listen queue overflows and
//! UDP buffer errors — a NIC or cable going bad shows up here as
//! retransmits and input errors before the link drops.
//!
//! [`parse_pairs`] (the header/value line pairs of `netstat` and `snmp`) and
//! [`parse_snmp6`] (one `Ip6InReceives 7` per line) are pure;
//! [`NetstatSource`] reads the three files each cycle. A missing `snmp6`
//! (IPv6 disabled) is not an error.

use std::collections::BTreeMap;

use crate::emit::{Emitter, MetricType};
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// Counters by protocol (`Tcp`, `TcpExt`, `Ip6`, ...) then field name.
pub type ProtocolStats = BTreeMap<String, BTreeMap<String, f64>>;

/// Whether node_exporter's default netstat field pattern keeps `key`
/// (`<Protocol>_<Field>`). The pattern is
/// `^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)|TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts|TCPOFOQueue|TCPRcvQDrop)|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)|Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$`,
/// written out here so the agent needs no regex engine.
pub fn default_field(key: &str) -> bool {
    if key.ends_with("_InErrors") || key.ends_with("_InErrs") || key == "Ip_Forwarding" {
        return true;
    }
    let Some((protocol, field)) = key.split_once('_') else {
        return false;
    };
    match protocol {
        "Ip6" | "IpExt" => matches!(field, "InOctets" | "OutOctets"),
        "Icmp" | "Icmp6" => matches!(field, "InMsgs" | "OutMsgs"),
        "TcpExt" => {
            field.starts_with("Listen")
                || field.starts_with("Syncookies")
                || matches!(field, "TCPSynRetrans" | "TCPTimeouts" | "TCPOFOQueue" | "TCPRcvQDrop")
        }
        "Tcp" => matches!(
            field,
            "ActiveOpens" | "InSegs" | "OutSegs" | "OutRsts" | "PassiveOpens" | "RetransSegs" | "CurrEstab"
        ),
        "Udp" | "Udp6" => matches!(
            field,
            "InDatagrams" | "OutDatagrams" | "NoPorts" | "RcvbufErrors" | "SndbufErrors"
        ),
        _ => false,
    }
}

/// Parses the `Proto: Name Name ...` / `Proto: 1 2 ...` line pairs of
/// `/proc/net/netstat` and `/proc/net/snmp`.
pub fn parse_pairs(text: &str) -> Result<ProtocolStats, String> {
    let mut stats = ProtocolStats::new();
    visit_pairs(text, |protocol, name, value| {
        field_map(&mut stats, protocol).insert(name.to_string(), value);
    })?;
    Ok(stats)
}

/// The fields of `protocol` in `stats`, added empty if absent (looked up
/// first, so a present protocol costs no allocation).
fn field_map<'a>(stats: &'a mut ProtocolStats, protocol: &str) -> &'a mut BTreeMap<String, f64> {
    if !stats.contains_key(protocol) {
        stats.insert(protocol.to_string(), BTreeMap::new());
    }
    stats
        .get_mut(protocol)
        .expect("the protocol was inserted above when absent")
}

/// Calls `each(protocol, name, value)` for every counter of a
/// `/proc/net/netstat` or `/proc/net/snmp` text, in order, without
/// building maps; a protocol whose lines do not match is an error before
/// any of its counters is visited.
pub fn visit_pairs(text: &str, mut each: impl FnMut(&str, &str, f64)) -> Result<(), String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    while let Some(header) = lines.next() {
        let values = lines
            .next()
            .ok_or_else(|| format!("header {header:?} has no value line"))?;
        let mut names = header.split_whitespace();
        let mut numbers = values.split_whitespace();
        let protocol = names
            .next()
            .and_then(|p| p.strip_suffix(':'))
            .ok_or_else(|| format!("header {header:?} does not start with \"Proto:\""))?;
        if numbers.next().and_then(|n| n.strip_suffix(':')) != Some(protocol) {
            return Err(format!("value line {values:?} does not belong to {protocol}"));
        }
        let (name_count, number_count) = (names.clone().count(), numbers.clone().count());
        if name_count != number_count {
            return Err(format!("{protocol}: {name_count} names but {number_count} values"));
        }
        for (name, raw) in names.zip(numbers) {
            let value = raw
                .parse::<f64>()
                .map_err(|_| format!("{protocol} {name}: {raw:?} is not a number"))?;
            each(protocol, name, value);
        }
    }
    Ok(())
}

/// Parses `/proc/net/snmp6`: `Ip6InReceives 7` per line; the protocol is
/// the name up to and including its first `6` (`Ip6`, `Icmp6`,
/// `UdpLite6`). Lines without a `6` are skipped, as node_exporter does.
pub fn parse_snmp6(text: &str) -> Result<ProtocolStats, String> {
    let mut stats = ProtocolStats::new();
    visit_snmp6(text, |protocol, name, value| {
        field_map(&mut stats, protocol).insert(name.to_string(), value);
    })?;
    Ok(stats)
}

/// Calls `each(protocol, name, value)` for every counter of a
/// `/proc/net/snmp6` text, as [`parse_snmp6`] splits them.
pub fn visit_snmp6(text: &str, mut each: impl FnMut(&str, &str, f64)) -> Result<(), String> {
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(raw)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some(six) = key.find('6') else { continue };
        let (protocol, name) = key.split_at(six + 1);
        let value = raw
            .parse::<f64>()
            .map_err(|_| format!("{key}: {raw:?} is not a number"))?;
        each(protocol, name, value);
    }
    Ok(())
}

/// Merges the three files' counters the way node_exporter does (a protocol
/// of a later file replaces the same protocol of an earlier one) and keeps
/// the default fields, as `(Protocol, Field, value)`.
pub fn select(netstat: ProtocolStats, snmp: ProtocolStats, snmp6: ProtocolStats) -> Vec<(String, String, f64)> {
    let mut all = netstat;
    all.extend(snmp);
    all.extend(snmp6);
    let mut out = Vec::new();
    for (protocol, fields) in all {
        for (field, value) in fields {
            if default_field(&format!("{protocol}_{field}")) {
                out.push((protocol.clone(), field, value));
            }
        }
    }
    out
}

/// Reads the three protocol counter files.
#[derive(Debug, Default)]
pub struct NetstatSource {
    /// Kept descriptors of the files read every cycle.
    files: Files,
}

/// [`visit_pairs`] or [`visit_snmp6`], called with one counter callback.
type Visitor = fn(&str, &mut dyn FnMut(&str, &str, f64)) -> Result<(), String>;

/// Keeps the default fields of one file's counters, by protocol; every
/// protocol of the file is present, even with no field kept, because it
/// replaces the same protocol of an earlier file (see [`select`]).
/// `Ok(None)` when the file does not exist.
fn read_selected(
    files: &mut Files,
    path: &std::path::Path,
    visit: Visitor,
) -> Result<Option<ProtocolStats>, SourceError> {
    let text = match files.read_text(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SourceError::io(path, e)),
    };
    let mut stats = ProtocolStats::new();
    let mut key = String::new();
    visit(text, &mut |protocol, field, value| {
        let fields = field_map(&mut stats, protocol);
        key.clear();
        key.push_str(protocol);
        key.push('_');
        key.push_str(field);
        if default_field(&key) {
            fields.insert(field.to_string(), value);
        }
    })
    .map_err(|m| SourceError::parse(path, m))?;
    Ok(Some(stats))
}

impl Source for NetstatSource {
    fn name(&self) -> &'static str {
        "netstat"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        self.files.begin_cycle();
        // Only the few default fields are kept as strings: the files have
        // hundreds of counters, and maps of all of them were most of this
        // source's cost.
        let netstat = read_selected(&mut self.files, &paths.proc("net/netstat"), |t, f| visit_pairs(t, f))?;
        let snmp = read_selected(&mut self.files, &paths.proc("net/snmp"), |t, f| visit_pairs(t, f))?;
        let snmp6 = read_selected(&mut self.files, &paths.proc("net/snmp6"), |t, f| visit_snmp6(t, f))?;
        if netstat.is_none() && snmp.is_none() && snmp6.is_none() {
            return Ok(());
        }
        let selected = select(
            netstat.unwrap_or_default(),
            snmp.unwrap_or_default(),
            snmp6.unwrap_or_default(),
        );
        let mut name = String::new();
        let mut help = String::new();
        for (protocol, field, value) in selected {
            name.clear();
            name.push_str("node_netstat_");
            name.push_str(&protocol);
            name.push('_');
            name.push_str(&field);
            help.clear();
            help.push_str("Statistic ");
            help.push_str(&protocol);
            help.push_str(&field);
            help.push('.');
            out.push(&name, MetricType::Untyped, &help, &[], value);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SNMP: &str = "\
Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 57740232
Tcp: RtoAlgorithm MaxConn ActiveOpens CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 -1 3556 0 57252008 54915039 227 5 1003 0
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors
Udp: 88542 120 0 53028 9 8 0
";

    #[test]
    fn pairs_are_parsed_per_protocol() {
        let stats = parse_pairs(SNMP).unwrap();
        assert_eq!(stats["Tcp"]["RetransSegs"], 227.0);
        assert_eq!(stats["Tcp"]["MaxConn"], -1.0);
        assert_eq!(stats["Ip"]["Forwarding"], 1.0);
        assert_eq!(stats["Udp"].len(), 7);
    }

    #[test]
    fn snmp6_protocol_ends_at_the_first_six() {
        let stats = parse_snmp6("Ip6InOctets   460\nIcmp6OutMsgs\t8\nUdpLite6InErrors 0\nNoSix 3\n\n").unwrap();
        assert_eq!(stats["Ip6"]["InOctets"], 460.0);
        assert_eq!(stats["Icmp6"]["OutMsgs"], 8.0);
        assert_eq!(stats["UdpLite6"]["InErrors"], 0.0);
        assert_eq!(stats.len(), 3);
    }

    #[test]
    fn default_filter_keeps_retransmits_and_drops_the_rest() {
        let selected = select(parse_pairs(SNMP).unwrap(), ProtocolStats::new(), ProtocolStats::new());
        let keys: Vec<String> = selected.iter().map(|(p, f, _)| format!("{p}_{f}")).collect();
        assert_eq!(
            keys,
            [
                "Ip_Forwarding",
                "Tcp_ActiveOpens",
                "Tcp_CurrEstab",
                "Tcp_InErrs",
                "Tcp_InSegs",
                "Tcp_OutRsts",
                "Tcp_OutSegs",
                "Tcp_RetransSegs",
                "Udp_InDatagrams",
                "Udp_InErrors",
                "Udp_NoPorts",
                "Udp_OutDatagrams",
                "Udp_RcvbufErrors",
                "Udp_SndbufErrors",
            ]
        );
    }

    #[test]
    fn filter_cases() {
        for kept in [
            "TcpExt_ListenDrops",
            "TcpExt_SyncookiesFailed",
            "TcpExt_TCPTimeouts",
            "IpExt_InOctets",
            "Ip6_OutOctets",
            "Icmp6_InMsgs",
            "UdpLite6_InErrors",
            "Udp6_SndbufErrors",
        ] {
            assert!(default_field(kept), "{kept}");
        }
        for dropped in [
            "Ip_InReceives",
            "Icmp_InCsumErrors",
            "TcpExt_TW",
            "UdpLite_InDatagrams",
            "Tcp",
        ] {
            assert!(!default_field(dropped), "{dropped}");
        }
    }

    #[test]
    fn malformed_files_are_errors() {
        assert!(parse_pairs("Tcp: A B\nTcp: 1\n").is_err());
        assert!(parse_pairs("Tcp: A B\n").is_err());
        assert!(parse_pairs("Tcp: A\nUdp: 1\n").is_err());
        assert!(parse_pairs("Tcp A\nTcp 1\n").is_err());
        assert!(parse_pairs("Tcp: A\nTcp: x\n").is_err());
        assert!(parse_snmp6("Ip6InOctets x\n").is_err());
        assert!(parse_pairs("").unwrap().is_empty());
    }
}
