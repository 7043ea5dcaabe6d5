//! The `diskstats` source: per-block-device I/O counters from
//! `/proc/diskstats` as node_exporter's `node_disk_*{device}` family, plus
//! the static facts node_exporter attaches from the udev database and sysfs:
//! `node_disk_info{device,major,minor,path,wwn,model,serial,revision,
//! rotational}`, `node_disk_filesystem_info`, `node_disk_device_mapper_info`
//! and the `node_disk_ata_*` write-cache and rotation-rate gauges.
//!
//! Partitions and pseudo devices are left out with node_exporter's default
//! `--collector.diskstats.device-exclude`. I/O time climbing while
//! completions stall is how a dying disk looks from the kernel. The udev
//! properties and the rotational flag are static, so they are read once per
//! device and refreshed every [`STATIC_REFRESH_CYCLES`] cycles instead of
//! every cycle. [`parse_diskstats`], [`parse_udev`] and
//! [`excluded_by_default`] are pure.

use std::collections::HashMap;

use crate::emit::{Emitter, MetricType};
use crate::paths::HostPaths;
use crate::source::{Source, SourceError, read_attr};
use crate::sources::files::Files;

/// Whether node_exporter's default `--collector.diskstats.device-exclude`,
/// `^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$` (with ASCII digits,
/// as device names are), matches `device`: a pseudo-device or partition
/// prefix followed by one or more digits and nothing else.
///
/// Hand-written rather than a compiled regex: the regex engine's code and
/// automaton were about 0.9 MiB of the agent's resident memory, for one
/// fixed pattern (a test checks both agree on every short name built from
/// the pattern's pieces).
pub fn excluded_by_default(device: &str) -> bool {
    /// The rest after one or more leading ASCII digits.
    fn digits(s: &[u8]) -> Option<&[u8]> {
        let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
        (n > 0).then(|| &s[n..])
    }
    /// The rest after `d` and one lowercase letter (the `d[a-z]` of `sda`).
    fn disk_letter(s: &[u8]) -> Option<&[u8]> {
        match s {
            [b'd', letter, rest @ ..] if letter.is_ascii_lowercase() => Some(rest),
            _ => None,
        }
    }
    let b = device.as_bytes();
    let rest = if let Some(r) = b.strip_prefix(b"nvme") {
        digits(r)
            .and_then(|r| r.strip_prefix(b"n"))
            .and_then(digits)
            .and_then(|r| r.strip_prefix(b"p"))
    } else if let Some(r) = b.strip_prefix(b"xv") {
        disk_letter(r)
    } else if let Some(r) = [&b"zram"[..], b"ram", b"loop", b"fd"]
        .iter()
        .find_map(|p| b.strip_prefix(*p))
    {
        Some(r)
    } else {
        match b {
            [b'h' | b's' | b'v', r @ ..] => disk_letter(r),
            _ => None,
        }
    };
    rest.and_then(digits).is_some_and(<[u8]>::is_empty)
}

/// How many cycles static facts (udev data, rotational) are kept before
/// being re-read: 60 cycles, 10 minutes at the default interval.
pub const STATIC_REFRESH_CYCLES: u64 = 60;

/// One line of `/proc/diskstats`.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskStat {
    /// Major device number.
    pub major: u32,
    /// Minor device number.
    pub minor: u32,
    /// Kernel device name (`sda`, `nvme0n1`, `dm-0`).
    pub device: String,
    /// The counters after the name, in file order (11, 15 or 17 of them).
    pub stats: Vec<u64>,
}

/// Parses the text of `/proc/diskstats`.
pub fn parse_diskstats(text: &str) -> Result<Vec<DiskStat>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() < 14 {
            return Err(format!("line {}: {} fields, want at least 14", i + 1, fields.len()));
        }
        let number = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| format!("line {}: {s:?} is not an integer", i + 1))
        };
        let major = fields[0]
            .parse::<u32>()
            .map_err(|_| format!("line {}: bad major {:?}", i + 1, fields[0]))?;
        let minor = fields[1]
            .parse::<u32>()
            .map_err(|_| format!("line {}: bad minor {:?}", i + 1, fields[1]))?;
        let stats = fields[3..].iter().map(|f| number(f)).collect::<Result<Vec<_>, _>>()?;
        out.push(DiskStat {
            major,
            minor,
            device: fields[2].to_string(),
            stats,
        });
    }
    Ok(out)
}

/// The `E:KEY=value` properties of a udev database file.
pub fn parse_udev(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("E:"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// (metric, help, type, scale) per diskstats column, as node_exporter.
const COLUMNS: &[(&str, &str, MetricType, f64)] = &[
    (
        "node_disk_reads_completed_total",
        "The total number of reads completed successfully.",
        MetricType::Counter,
        1.0,
    ),
    (
        "node_disk_reads_merged_total",
        "The total number of reads merged.",
        MetricType::Counter,
        1.0,
    ),
    (
        "node_disk_read_bytes_total",
        "The total number of bytes read successfully.",
        MetricType::Counter,
        512.0,
    ),
    (
        "node_disk_read_time_seconds_total",
        "The total number of seconds spent by all reads.",
        MetricType::Counter,
        0.001,
    ),
    (
        "node_disk_writes_completed_total",
        "The total number of writes completed successfully.",
        MetricType::Counter,
        1.0,
    ),
    (
        "node_disk_writes_merged_total",
        "The number of writes merged.",
        MetricType::Counter,
        1.0,
    ),
    (
        "node_disk_written_bytes_total",
        "The total number of bytes written successfully.",
        MetricType::Counter,
        512.0,
    ),
    (
        "node_disk_write_time_seconds_total",
        "This is the total number of seconds spent by all writes.",
        MetricType::Counter,
        0.001,
    ),
    (
        "node_disk_io_now",
        "The number of I/Os currently in progress.",
        MetricType::Gauge,
        1.0,
    ),
    (
        "node_disk_io_time_seconds_total",
        "Total seconds spent doing I/Os.",
        MetricType::Counter,
        0.001,
    ),
    (
        "node_disk_io_time_weighted_seconds_total",
        "The weighted # of seconds spent doing I/Os.",
        MetricType::Counter,
        0.001,
    ),
    (
        "node_disk_discards_completed_total",
        "The total number of discards completed successfully.",
        MetricType::Counter,
        1.0,
    ),
    (
        "node_disk_discards_merged_total",
        "The total number of discards merged.",
        MetricType::Counter,
        1.0,
    ),
    (
        "node_disk_discarded_sectors_total",
        "The total number of sectors discarded successfully.",
        MetricType::Counter,
        1.0,
    ),
    (
        "node_disk_discard_time_seconds_total",
        "This is the total number of seconds spent by all discards.",
        MetricType::Counter,
        0.001,
    ),
    (
        "node_disk_flush_requests_total",
        "The total number of flush requests completed successfully",
        MetricType::Counter,
        1.0,
    ),
    (
        "node_disk_flush_requests_time_seconds_total",
        "This is the total number of seconds spent by all flush requests.",
        MetricType::Counter,
        0.001,
    ),
];

/// ATA udev properties and their metrics.
const ATA: &[(&str, &str, &str)] = &[
    (
        "ID_ATA_WRITE_CACHE",
        "node_disk_ata_write_cache",
        "ATA disk has a write cache.",
    ),
    (
        "ID_ATA_WRITE_CACHE_ENABLED",
        "node_disk_ata_write_cache_enabled",
        "ATA disk has its write cache enabled.",
    ),
    (
        "ID_ATA_ROTATION_RATE_RPM",
        "node_disk_ata_rotation_rate_rpm",
        "ATA disk rotation rate in RPMs (0 for SSDs).",
    ),
];

/// Static facts of one device, with the label values and numbers its info
/// series take from them worked out once (they were ~15 udev map lookups
/// and two integer formattings per device per cycle).
#[derive(Clone, Debug)]
struct DeviceFacts {
    /// `major`, `minor`, `path`, `wwn`, `model`, `serial`, `revision`,
    /// `rotational` of `node_disk_info`.
    info: [String; 8],
    /// `type`, `usage`, `uuid`, `version` of `node_disk_filesystem_info`,
    /// when udev knows a filesystem type.
    filesystem: Option<[String; 4]>,
    /// `name`, `uuid`, `vg_name`, `lv_name`, `lv_layer` of
    /// `node_disk_device_mapper_info`, when udev knows a mapper name.
    mapper: Option<[String; 5]>,
    /// The ATA series (name, help, value) udev has numbers for.
    ata: Vec<(&'static str, &'static str, f64)>,
}

impl DeviceFacts {
    fn new(major: u32, minor: u32, udev: &HashMap<String, String>, rotational: String) -> Self {
        let get = |k: &str| udev.get(k).cloned().unwrap_or_default();
        // The serial on the label: SCSI ident, else ID_SERIAL_SHORT, else ID_SERIAL (virtio).
        let serial = ["SCSI_IDENT_SERIAL", "ID_SERIAL_SHORT", "ID_SERIAL"]
            .into_iter()
            .map(get)
            .find(|s| !s.is_empty())
            .unwrap_or_default();
        let fs_type = get("ID_FS_TYPE");
        let filesystem = (!fs_type.is_empty()).then(|| {
            [
                fs_type.clone(),
                get("ID_FS_USAGE"),
                get("ID_FS_UUID"),
                get("ID_FS_VERSION"),
            ]
        });
        let dm_name = get("DM_NAME");
        let mapper = (!dm_name.is_empty()).then(|| {
            [
                dm_name.clone(),
                get("DM_UUID"),
                get("DM_VG_NAME"),
                get("DM_LV_NAME"),
                get("DM_LV_LAYER"),
            ]
        });
        let ata = if get("ID_ATA").is_empty() {
            Vec::new()
        } else {
            ATA.iter()
                .filter_map(|(key, name, help)| {
                    let value = udev.get(*key)?.parse::<f64>().ok()?;
                    Some((*name, *help, value))
                })
                .collect()
        };
        DeviceFacts {
            info: [
                major.to_string(),
                minor.to_string(),
                get("ID_PATH"),
                get("ID_WWN"),
                get("ID_MODEL"),
                serial,
                get("ID_REVISION"),
                rotational,
            ],
            filesystem,
            mapper,
            ata,
        }
    }
}

/// Records one device: its info series and counters.
fn emit_device(disk: &DiskStat, facts: &DeviceFacts, out: &mut Emitter) {
    let dev = disk.device.as_str();
    let [major, minor, path, wwn, model, serial, revision, rotational] = &facts.info;
    out.gauge(
        "node_disk_info",
        "Info of /sys/block/<block_device>.",
        &[
            ("device", dev),
            ("major", major),
            ("minor", minor),
            ("path", path),
            ("wwn", wwn),
            ("model", model),
            ("serial", serial),
            ("revision", revision),
            ("rotational", rotational),
        ],
        1.0,
    );
    for ((name, help, kind, scale), value) in COLUMNS.iter().zip(&disk.stats) {
        out.push(name, *kind, help, &[("device", dev)], *value as f64 * scale);
    }
    if let Some([fs_type, usage, uuid, version]) = &facts.filesystem {
        out.gauge(
            "node_disk_filesystem_info",
            "Info about disk filesystem.",
            &[
                ("device", dev),
                ("type", fs_type),
                ("usage", usage),
                ("uuid", uuid),
                ("version", version),
            ],
            1.0,
        );
    }
    if let Some([name, uuid, vg_name, lv_name, lv_layer]) = &facts.mapper {
        out.gauge(
            "node_disk_device_mapper_info",
            "Info about disk device mapper.",
            &[
                ("device", dev),
                ("name", name),
                ("uuid", uuid),
                ("vg_name", vg_name),
                ("lv_name", lv_name),
                ("lv_layer", lv_layer),
            ],
            1.0,
        );
    }
    for (name, help, value) in &facts.ata {
        out.gauge(name, help, &[("device", dev)], *value);
    }
}

/// Reads `/proc/diskstats`, with cached static facts per device.
#[derive(Debug, Default)]
pub struct DiskstatsSource {
    /// The kept descriptor of `/proc/diskstats`.
    files: Files,
    facts: HashMap<(u32, u32, String), DeviceFacts>,
    cycle: u64,
}

impl DiskstatsSource {
    /// Whether node_exporter's default filter leaves `device` out.
    pub fn excluded(&self, device: &str) -> bool {
        excluded_by_default(device)
    }
}

impl Source for DiskstatsSource {
    fn name(&self) -> &'static str {
        "diskstats"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        let path = paths.proc("diskstats");
        let disks = match self.files.read_text(&path) {
            Ok(text) => parse_diskstats(text).map_err(|m| SourceError::parse(&path, m))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&path, e)),
        };
        if self.cycle.is_multiple_of(STATIC_REFRESH_CYCLES) {
            self.facts.clear();
        }
        self.cycle = self.cycle.wrapping_add(1);
        let kept: Vec<&DiskStat> = disks.iter().filter(|d| !self.excluded(&d.device)).collect();
        for disk in kept {
            let key = (disk.major, disk.minor, disk.device.clone());
            let facts = self.facts.entry(key).or_insert_with(|| {
                let udev = std::fs::read_to_string(paths.udev_data.join(format!("b{}:{}", disk.major, disk.minor)))
                    .map(|t| parse_udev(&t))
                    .unwrap_or_default();
                let rotational = read_attr(&paths.sys(format!("block/{}/queue/rotational", disk.device)))
                    .filter(|r| !r.is_empty())
                    .unwrap_or_else(|| "0".to_string());
                DeviceFacts::new(disk.major, disk.minor, &udev, rotational)
            });
            emit_device(disk, facts, out);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_three_line_lengths() {
        let disks = parse_diskstats(
            "   8       0 sda 25354637 34367663 1003346126 18492372 28444756 11134226 505697032 63877960 0 9653880 82621804\n\
             8      16 sdb 326552 841 9657779 84 41822 2895 1972905 5007 0 60730 67070 68851 0 1925173784 11130\n\
             8      32 sdc 126552 141 1657779 14 11822 1895 172905 1007 0 10730 17070 18851 0 125173784 11130 1555 1944\n",
        )
        .unwrap();
        assert_eq!(disks.len(), 3);
        assert_eq!(
            (disks[0].major, disks[0].minor, disks[0].device.as_str()),
            (8, 0, "sda")
        );
        assert_eq!(disks[0].stats.len(), 11);
        assert_eq!(disks[1].stats.len(), 15);
        assert_eq!(disks[2].stats[16], 1944);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_diskstats("8 0 sda 1 2 3\n").is_err());
        assert!(parse_diskstats("8 0 sda 1 2 3 4 5 6 7 8 9 10 x\n").is_err());
        assert!(parse_diskstats("x 0 sda 1 2 3 4 5 6 7 8 9 10 11\n").is_err());
        assert!(parse_diskstats("\n").unwrap().is_empty());
    }

    #[test]
    fn udev_properties() {
        let p = parse_udev("S:disk/by-id/x\nE:ID_MODEL=TOSHIBA_KSDB4U86\nE:DM_LV_LAYER=\nE:BROKEN\nI:1\n");
        assert_eq!(p["ID_MODEL"], "TOSHIBA_KSDB4U86");
        assert_eq!(p["DM_LV_LAYER"], "");
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn default_exclude_drops_partitions_and_pseudo_devices() {
        let s = DiskstatsSource::default();
        for dev in ["sda1", "ram0", "zram1", "loop7", "fd0", "nvme0n1p2", "xvda3", "vda1"] {
            assert!(s.excluded(dev), "{dev}");
        }
        for dev in ["sda", "nvme0n1", "dm-0", "mmcblk0", "mmcblk0p1", "md0", "sr0", "vda"] {
            assert!(!s.excluded(dev), "{dev}");
        }
    }

    /// node_exporter's default `--collector.diskstats.device-exclude`.
    const DEFAULT_DEVICE_EXCLUDE: &str = r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$";

    /// The hand-written filter against the regex it replaces, on every
    /// name of up to four pieces of the pattern (and some strays).
    #[test]
    fn exclude_filter_equals_node_exporters_regex() {
        let re = regex::RegexBuilder::new(DEFAULT_DEVICE_EXCLUDE)
            .unicode(false)
            .build()
            .unwrap();
        let pieces = [
            "", "z", "ram", "loop", "fd", "h", "s", "v", "x", "xv", "d", "a", "q", "nvme", "n", "p", "0", "17", "-",
            "\u{e9}", "D",
        ];
        let mut checked = 0;
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    for d in pieces {
                        let name = format!("{a}{b}{c}{d}");
                        assert_eq!(excluded_by_default(&name), re.is_match(&name), "{name:?}");
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, pieces.len().pow(4));
        for name in [
            "nvme0n1p2",
            "nvme12n3p45",
            "nvme0n1",
            "nvme0p1",
            "nvmen1p1",
            "xvdz9",
            "zram0",
            "sdab1",
        ] {
            assert_eq!(excluded_by_default(name), re.is_match(name), "{name:?}");
        }
    }

    #[test]
    fn scaling_matches_node_exporter() {
        let disk = DiskStat {
            major: 8,
            minor: 0,
            device: "sda".into(),
            stats: vec![1, 2, 3, 9653880, 5, 6, 7, 8, 9, 10, 11],
        };
        let mut out = Emitter::new();
        emit_device(&disk, &DeviceFacts::new(8, 0, &HashMap::new(), "1".into()), &mut out);
        let v = |name: &str| out.samples().iter().find(|s| s.name == name).unwrap().value;
        assert_eq!(v("node_disk_read_bytes_total"), 1536.0);
        assert_eq!(v("node_disk_read_time_seconds_total"), 9653.880000000001);
        assert!(!out.samples().iter().any(|s| s.name.starts_with("node_disk_discard")));
    }
}
