//! The pure half of the SMART source: `smartctl --json` output → a
//! [`SmartReport`], and a report → series. No I/O here; the readers in
//! `smart.rs` (a directory of JSON files, or smartctl run by the agent) feed
//! text in, so the whole public corpus of real drives can be replayed in
//! tests.
//!
//! Series names and labels follow prometheus-community/smartctl_exporter so
//! its dashboards and alerts work unchanged. Two deliberate differences:
//! attribute raw values are decoded the way smartctl's own `raw.string`
//! shows them (a packed temperature `26 (Min/Max 13/41)` is 26, not the
//! 48-bit integer 176094511130), and NVMe byte counters use the NVMe data
//! unit of 512,000 bytes. Everything the exporter lacks is `hostpulse_smart_*`.

use serde_json::Value;

use crate::emit::Emitter;

/// Why a text is not smartctl JSON at all. Missing fields are not errors:
/// smartctl omits whatever a device does not report.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SmartParseError {
    /// The text is not valid JSON.
    #[error("not JSON: {0}")]
    Json(String),
    /// Valid JSON, but not an object with a `smartctl` section.
    #[error("not smartctl output: {0}")]
    NotSmartctl(&'static str),
}

/// Identity of a drive, the labels of `smartctl_device`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceInfo {
    /// smartctl's device type (`sat`, `nvme`, `scsi`, ...), the exporter's `interface`.
    pub interface: String,
    /// `ATA`, `NVMe` or `SCSI`.
    pub protocol: String,
    /// Drive family from smartctl's database, empty if unknown.
    pub model_family: String,
    /// Model name (SCSI drives: vendor and product).
    pub model_name: String,
    /// Serial number.
    pub serial_number: String,
    /// ATA additional product id, `unknown` when absent (as the exporter prints it).
    pub ata_additional_product_id: String,
    /// Firmware revision.
    pub firmware_version: String,
    /// ATA standard version string.
    pub ata_version: String,
    /// SATA version string.
    pub sata_version: String,
    /// Form factor name (`3.5 inches`).
    pub form_factor: String,
}

/// One row of the ATA SMART attribute table.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    /// Attribute id (5, 194, ...).
    pub id: u32,
    /// Name as smartctl prints it (`Reallocated_Sector_Ct`).
    pub name: String,
    /// Short flags string (`PO--CK`).
    pub flags_short: String,
    /// Set flags spelled out, comma-separated (`prefailure,updated_online`).
    pub flags_long: String,
    /// Normalized current value.
    pub value: Option<f64>,
    /// Worst normalized value seen.
    pub worst: Option<f64>,
    /// Failure threshold.
    pub thresh: Option<f64>,
    /// Raw value decoded as smartctl's `raw.string` shows it.
    pub raw: Option<f64>,
}

/// The NVMe SMART / health information log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NvmeHealth {
    /// Critical warning bit field; any bit set means trouble.
    pub critical_warning: Option<f64>,
    /// Vendor estimate of life used, percent (may exceed 100).
    pub percentage_used: Option<f64>,
    /// Remaining spare capacity, percent.
    pub available_spare: Option<f64>,
    /// Spare level below which the drive warns, percent.
    pub available_spare_threshold: Option<f64>,
    /// Unrecovered data integrity errors.
    pub media_errors: Option<f64>,
    /// Error information log entries over the controller's life.
    pub num_err_log_entries: Option<f64>,
    /// Power losses without a shutdown notification.
    pub unsafe_shutdowns: Option<f64>,
    /// Data units (512,000 bytes each) read.
    pub data_units_read: Option<f64>,
    /// Data units (512,000 bytes each) written.
    pub data_units_written: Option<f64>,
}

/// Error counters of one direction of the SCSI error counter log.
#[derive(Clone, Debug, PartialEq)]
pub struct ScsiErrorCounters {
    /// `read`, `write` or `verify`.
    pub direction: &'static str,
    /// Errors corrected by rereads or rewrites.
    pub corrected_by_rereads_rewrites: Option<f64>,
    /// Errors that could not be corrected.
    pub total_uncorrected: Option<f64>,
}

/// One message smartctl attached to its output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `information`, `warning` or `error`.
    pub severity: String,
    /// The text.
    pub text: String,
}

/// Everything the agent uses from one `smartctl --json` run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SmartReport {
    /// Device name without `/dev/` (`sda`, `nvme0`); empty if smartctl gave none.
    pub device: String,
    /// Identity labels.
    pub info: DeviceInfo,
    /// smartctl's exit status (a bit field, see [`EXIT_STATUS_BITS`]).
    pub exit_status: Option<u32>,
    /// Messages smartctl printed.
    pub messages: Vec<Message>,
    /// The overall SMART verdict, if the device gave one.
    pub smart_passed: Option<bool>,
    /// ATA attribute table.
    pub attributes: Vec<Attribute>,
    /// `temperature.*` entries (`current`, `drive_trip`, ...), degrees Celsius.
    pub temperatures: Vec<(String, f64)>,
    /// Power-on time in seconds.
    pub power_on_seconds: Option<f64>,
    /// Power cycles.
    pub power_cycle_count: Option<f64>,
    /// Rotation rate in rpm (0 or absent for solid state).
    pub rotation_rate: Option<f64>,
    /// User capacity in bytes.
    pub capacity_bytes: Option<f64>,
    /// NVMe health log, for NVMe drives.
    pub nvme: Option<NvmeHealth>,
    /// SCSI grown defect list length (sectors reallocated since manufacture).
    pub scsi_grown_defects: Option<f64>,
    /// SCSI error counter log, one entry per direction present.
    pub scsi_errors: Vec<ScsiErrorCounters>,
}

/// Names of smartctl's exit status bits, bit 0 first (smartctl(8), "RETURN VALUES").
pub const EXIT_STATUS_BITS: [&str; 8] = [
    "command_line_error",
    "device_open_failed",
    "command_failed",
    "disk_failing",
    "prefail_attribute_at_threshold",
    "attribute_was_at_threshold",
    "error_log_has_errors",
    "self_test_log_has_errors",
];

/// A drive's readability, the `state` label of `hostpulse_smart_device_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceState {
    /// smartctl read the drive and its SMART verdict is not "failing".
    Ok,
    /// smartctl could not read the drive (open failed, timeout, bad output).
    Unreadable,
    /// The drive was spun down and smartctl left it asleep (`--nocheck=standby`).
    Standby,
    /// The drive's own SMART verdict is "failing".
    Failed,
}

impl DeviceState {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Ok => "ok",
            DeviceState::Unreadable => "unreadable",
            DeviceState::Standby => "standby",
            DeviceState::Failed => "failed",
        }
    }
}

/// Attribute ids whose raw value counts bad sectors: reallocated (5),
/// current pending (197) and offline uncorrectable (198).
const BAD_SECTOR_ATTRIBUTES: [u32; 3] = [5, 197, 198];

/// Longest `reason` label kept; smartctl messages can be long.
const MAX_REASON_LEN: usize = 160;

/// Parses the output of `smartctl --json` (any of `--all`, `--info`,
/// `--health`, `--attributes`). Fields the device does not report stay
/// `None`/empty; only text that is not a smartctl JSON object is an error.
pub fn parse_smartctl_json(text: &str) -> Result<SmartReport, SmartParseError> {
    let root: Value = serde_json::from_str(text).map_err(|e| SmartParseError::Json(e.to_string()))?;
    if !root.is_object() {
        return Err(SmartParseError::NotSmartctl("top level is not an object"));
    }
    let smartctl = root
        .get("smartctl")
        .ok_or(SmartParseError::NotSmartctl("no \"smartctl\" section"))?;
    let s = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .map(|t| t.trim().to_string())
            .unwrap_or_default()
    };
    let device = s(root.pointer("/device/name"));
    let device = device.strip_prefix("/dev/").unwrap_or(&device).to_string();
    // Drives behind a RAID controller share one device node and differ only
    // in the type (`/dev/bus/0 -d megaraid,5`); keep them apart.
    let kind = s(root.pointer("/device/type"));
    let device = match kind.split_once(',') {
        Some((controller, disk)) if !device.is_empty() => format!("{device}_{controller}_{disk}"),
        _ => device,
    };
    let info = DeviceInfo {
        interface: kind,
        protocol: s(root.pointer("/device/protocol")),
        model_family: s(root.get("model_family")),
        model_name: s(root.get("model_name")),
        serial_number: s(root.get("serial_number")),
        ata_additional_product_id: root
            .get("ata_additional_product_id")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string(),
        firmware_version: s(root.get("firmware_version")),
        ata_version: s(root.pointer("/ata_version/string")),
        sata_version: s(root.pointer("/sata_version/string")),
        form_factor: s(root.pointer("/form_factor/name")),
    };
    let messages = smartctl
        .get("messages")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|m| Message {
                    severity: s(m.get("severity")),
                    text: s(m.get("string")),
                })
                .collect()
        })
        .unwrap_or_default();
    let attributes = root
        .pointer("/ata_smart_attributes/table")
        .and_then(Value::as_array)
        .map(|rows| rows.iter().filter_map(parse_attribute).collect())
        .unwrap_or_default();
    let temperatures = root
        .get("temperature")
        .and_then(Value::as_object)
        .map(|t| {
            t.iter()
                .filter_map(|(k, v)| v.as_f64().map(|v| (k.clone(), v)))
                .collect()
        })
        .unwrap_or_default();
    let power_on_seconds = root.get("power_on_time").and_then(|p| {
        let hours = p.get("hours").and_then(Value::as_f64);
        let minutes = p.get("minutes").and_then(Value::as_f64);
        (hours.is_some() || minutes.is_some()).then(|| hours.unwrap_or(0.0) * 3600.0 + minutes.unwrap_or(0.0) * 60.0)
    });
    let nvme = root.get("nvme_smart_health_information_log").map(|log| {
        let f = |key: &str| log.get(key).and_then(Value::as_f64);
        NvmeHealth {
            critical_warning: f("critical_warning"),
            percentage_used: f("percentage_used"),
            available_spare: f("available_spare"),
            available_spare_threshold: f("available_spare_threshold"),
            media_errors: f("media_errors"),
            num_err_log_entries: f("num_err_log_entries"),
            unsafe_shutdowns: f("unsafe_shutdowns"),
            data_units_read: f("data_units_read"),
            data_units_written: f("data_units_written"),
        }
    });
    let scsi_errors = match root.get("scsi_error_counter_log") {
        Some(log) => ["read", "write", "verify"]
            .into_iter()
            .filter_map(|direction| {
                let d = log.get(direction)?;
                Some(ScsiErrorCounters {
                    direction,
                    corrected_by_rereads_rewrites: d
                        .get("errors_corrected_by_rereads_rewrites")
                        .and_then(Value::as_f64),
                    total_uncorrected: d.get("total_uncorrected_errors").and_then(Value::as_f64),
                })
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(SmartReport {
        device,
        info,
        exit_status: smartctl
            .get("exit_status")
            .and_then(Value::as_u64)
            .map(|v| v.min(u64::from(u32::MAX)) as u32),
        messages,
        smart_passed: root.pointer("/smart_status/passed").and_then(Value::as_bool),
        attributes,
        temperatures,
        power_on_seconds,
        power_cycle_count: root.get("power_cycle_count").and_then(Value::as_f64),
        rotation_rate: root.get("rotation_rate").and_then(Value::as_f64),
        capacity_bytes: root.pointer("/user_capacity/bytes").and_then(Value::as_f64),
        nvme,
        scsi_grown_defects: root.get("scsi_grown_defect_list").and_then(Value::as_f64),
        scsi_errors,
    })
}

fn parse_attribute(row: &Value) -> Option<Attribute> {
    let id = row.get("id").and_then(Value::as_u64)?;
    let flags = row.get("flags");
    let flags_long = [
        "prefailure",
        "updated_online",
        "performance",
        "error_rate",
        "event_count",
        "auto_keep",
    ]
    .into_iter()
    .filter(|f| flags.and_then(|fl| fl.get(*f)).and_then(Value::as_bool) == Some(true))
    .collect::<Vec<_>>()
    .join(",");
    let raw = row.get("raw").and_then(|raw| {
        raw.get("string")
            .and_then(Value::as_str)
            .and_then(leading_number)
            .or_else(|| raw.get("value").and_then(Value::as_f64))
    });
    Some(Attribute {
        id: u32::try_from(id).ok()?,
        name: row.get("name").and_then(Value::as_str).unwrap_or("").trim().to_string(),
        flags_short: flags
            .and_then(|f| f.get("string"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_string(),
        flags_long,
        value: row.get("value").and_then(Value::as_f64),
        worst: row.get("worst").and_then(Value::as_f64),
        thresh: row.get("thresh").and_then(Value::as_f64),
        raw,
    })
}

/// The decimal integer a raw string starts with: `26 (Min/Max 13/41)` → 26,
/// `2 2 2` (attribute 188's three timeout counters) → 2, `34013h+05m` →
/// 34013. smartctl prints the packed fields this way, so the first number
/// is the one its users read. `None` when the string does not start with a
/// digit (then the plain raw value is used).
pub fn leading_number(raw: &str) -> Option<f64> {
    let t = raw.trim_start();
    let end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if end == 0 {
        return None;
    }
    // A hexadecimal string (`0x0000...`) is not a decimal number.
    if t[end..].starts_with(['x', 'X']) {
        return None;
    }
    t[..end].parse::<f64>().ok()
}

impl SmartReport {
    /// Whether smartctl set exit status bit `bit`.
    pub fn exit_bit(&self, bit: u32) -> bool {
        self.exit_status.is_some_and(|s| s & (1 << bit) != 0)
    }

    /// The first error message smartctl printed, if any.
    pub fn first_error(&self) -> Option<&str> {
        self.messages
            .iter()
            .find(|m| m.severity == "error")
            .map(|m| m.text.as_str())
    }

    /// Whether smartctl read any SMART data at all from the device.
    fn has_data(&self) -> bool {
        self.smart_passed.is_some()
            || !self.attributes.is_empty()
            || self.nvme.is_some()
            || !self.scsi_errors.is_empty()
    }

    /// The device's state and, unless it is `ok`, why.
    pub fn state(&self) -> (DeviceState, String) {
        let asleep = self.messages.iter().any(|m| {
            let t = m.text.to_ascii_uppercase();
            t.contains("STANDBY MODE") || t.contains("SLEEP MODE")
        });
        if asleep && !self.has_data() {
            return (DeviceState::Standby, "device is spun down; not woken".into());
        }
        if self.exit_bit(0) || self.exit_bit(1) || (!self.has_data() && self.first_error().is_some()) {
            let reason = match self.first_error() {
                Some(text) => text.to_string(),
                None if self.exit_bit(0) => "smartctl rejected its command line".into(),
                None => "device open failed".into(),
            };
            return (DeviceState::Unreadable, truncate(&reason));
        }
        if self.smart_passed == Some(false) || self.exit_bit(3) {
            return (
                DeviceState::Failed,
                "SMART overall health self-assessment failed".into(),
            );
        }
        (DeviceState::Ok, String::new())
    }

    /// Why the drive looks unhealthy; empty when it looks healthy. `None`
    /// when smartctl could not read it (health unknown, see [`Self::state`]).
    ///
    /// Unhealthy means: the SMART verdict failed, an NVMe critical warning
    /// bit is set, or the drive has remapped or pending bad sectors
    /// (ATA attributes 5, 197, 198, or a SCSI grown defect list, which is
    /// the SCSI form of the reallocated sector count).
    pub fn unhealthy_reasons(&self) -> Option<Vec<String>> {
        if !self.has_data() {
            return None;
        }
        let mut reasons = Vec::new();
        if self.smart_passed == Some(false) {
            reasons.push("smart_status failed".to_string());
        }
        if let Some(cw) = self.nvme.as_ref().and_then(|n| n.critical_warning)
            && cw != 0.0
        {
            reasons.push(format!("nvme critical_warning {cw}"));
        }
        for a in &self.attributes {
            if BAD_SECTOR_ATTRIBUTES.contains(&a.id)
                && let Some(raw) = a.raw
                && raw > 0.0
            {
                reasons.push(format!("attribute {} {} = {raw}", a.id, a.name));
            }
        }
        if let Some(defects) = self.scsi_grown_defects
            && defects > 0.0
        {
            reasons.push(format!("scsi grown defect list {defects}"));
        }
        Some(reasons)
    }
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_REASON_LEN) {
        Some((i, _)) => text[..i].to_string(),
        None => text.to_string(),
    }
}

/// Records the state series of a device that produced no usable report.
pub fn emit_unreadable(device: &str, state: DeviceState, reason: &str, out: &mut Emitter) {
    emit_state(device, state, &truncate(reason), out);
}

fn emit_state(device: &str, state: DeviceState, reason: &str, out: &mut Emitter) {
    out.gauge(
        "hostpulse_smart_device_state",
        "Whether hostpulse could read the drive's SMART data: 1 for the current state (ok, unreadable, standby, failed), with the reason when not ok.",
        &[("device", device), ("state", state.as_str()), ("reason", reason)],
        1.0,
    );
}

/// Records every series of one report. `device` overrides the report's own
/// name when that is empty (the reader knows the file or scan name).
pub fn emit_report(report: &SmartReport, fallback_device: &str, out: &mut Emitter) {
    let device = if report.device.is_empty() {
        fallback_device
    } else {
        report.device.as_str()
    };
    let dev = [("device", device)];
    let (state, reason) = report.state();
    emit_state(device, state, &reason, out);
    if let Some(status) = report.exit_status {
        out.gauge(
            "smartctl_device_smartctl_exit_status",
            "Exit status of smartctl for the device (a bit field).",
            &dev,
            f64::from(status),
        );
        for (bit, name) in EXIT_STATUS_BITS.iter().enumerate() {
            out.gauge(
                "hostpulse_smart_exit_status_bit",
                "smartctl's exit status decoded: 1 when the named bit is set.",
                &[("device", device), ("bit", name)],
                if status & (1 << bit) != 0 { 1.0 } else { 0.0 },
            );
        }
    }
    if state == DeviceState::Unreadable || state == DeviceState::Standby {
        return;
    }
    let i = &report.info;
    out.gauge(
        "smartctl_device",
        "Drive identity; the value is always 1.",
        &[
            ("device", device),
            ("interface", &i.interface),
            ("protocol", &i.protocol),
            ("model_family", &i.model_family),
            ("model_name", &i.model_name),
            ("serial_number", &i.serial_number),
            ("ata_additional_product_id", &i.ata_additional_product_id),
            ("firmware_version", &i.firmware_version),
            ("ata_version", &i.ata_version),
            ("sata_version", &i.sata_version),
            ("form_factor", &i.form_factor),
        ],
        1.0,
    );
    if let Some(passed) = report.smart_passed {
        out.gauge(
            "smartctl_device_smart_status",
            "The drive's overall SMART health self-assessment: 1 passed, 0 failed.",
            &dev,
            if passed { 1.0 } else { 0.0 },
        );
    }
    if let Some(reasons) = report.unhealthy_reasons() {
        out.gauge(
            "hostpulse_smart_healthy",
            "0 when the drive's SMART data shows failure (failed verdict, NVMe critical warning, or remapped/pending bad sectors), else 1.",
            &dev,
            if reasons.is_empty() { 1.0 } else { 0.0 },
        );
    }
    if let Some(v) = report.capacity_bytes {
        out.gauge("smartctl_device_capacity_bytes", "Drive capacity in bytes.", &dev, v);
    }
    if let Some(v) = report.rotation_rate
        && v > 0.0
    {
        out.gauge("smartctl_device_rotation_rate", "Spindle speed in rpm.", &dev, v);
    }
    for a in &report.attributes {
        let id = a.id.to_string();
        for (kind, value) in [
            ("value", a.value),
            ("worst", a.worst),
            ("thresh", a.thresh),
            ("raw", a.raw),
        ] {
            if let Some(value) = value {
                out.gauge(
                    "smartctl_device_attribute",
                    "ATA SMART attribute; raw values decoded as smartctl prints them.",
                    &[
                        ("device", device),
                        ("attribute_name", &a.name),
                        ("attribute_flags_short", &a.flags_short),
                        ("attribute_flags_long", &a.flags_long),
                        ("attribute_value_type", kind),
                        ("attribute_id", &id),
                    ],
                    value,
                );
            }
        }
    }
    for (kind, celsius) in &report.temperatures {
        out.gauge(
            "smartctl_device_temperature",
            "Drive temperature in degrees Celsius, by smartctl's temperature kind.",
            &[("device", device), ("temperature_type", kind)],
            *celsius,
        );
    }
    if let Some(v) = report.power_on_seconds {
        out.counter("smartctl_device_power_on_seconds", "Drive power-on time.", &dev, v);
    }
    if let Some(v) = report.power_cycle_count {
        out.counter("smartctl_device_power_cycle_count", "Drive power cycles.", &dev, v);
    }
    if let Some(n) = &report.nvme {
        let nvme: [(&str, &str, Option<f64>); 6] = [
            (
                "smartctl_device_critical_warning",
                "NVMe critical warning bit field; non-zero means the controller reports a critical condition.",
                n.critical_warning,
            ),
            (
                "smartctl_device_percentage_used",
                "NVMe estimate of the drive's life used, percent.",
                n.percentage_used,
            ),
            (
                "smartctl_device_available_spare",
                "NVMe remaining spare capacity, percent.",
                n.available_spare,
            ),
            (
                "smartctl_device_available_spare_threshold",
                "NVMe spare capacity below which the drive warns, percent.",
                n.available_spare_threshold,
            ),
            (
                "smartctl_device_media_errors",
                "NVMe unrecovered data integrity errors.",
                n.media_errors,
            ),
            (
                "smartctl_device_num_err_log_entries",
                "NVMe error information log entries over the controller's life.",
                n.num_err_log_entries,
            ),
        ];
        for (name, help, value) in nvme {
            if let Some(v) = value {
                out.gauge(name, help, &dev, v);
            }
        }
        if let Some(v) = n.unsafe_shutdowns {
            out.counter(
                "hostpulse_smart_unsafe_shutdowns_total",
                "NVMe power losses without a shutdown notification.",
                &dev,
                v,
            );
        }
        // NVMe counts data in units of 1000 512-byte blocks.
        if let Some(v) = n.data_units_read {
            out.counter(
                "smartctl_device_bytes_read",
                "Bytes read, from NVMe data units.",
                &dev,
                v * 512_000.0,
            );
        }
        if let Some(v) = n.data_units_written {
            out.counter(
                "smartctl_device_bytes_written",
                "Bytes written, from NVMe data units.",
                &dev,
                v * 512_000.0,
            );
        }
    }
    let scsi_labels = [
        ("device", device),
        ("model_family", i.model_family.as_str()),
        ("model_name", i.model_name.as_str()),
        ("serial_number", i.serial_number.as_str()),
    ];
    if let Some(v) = report.scsi_grown_defects {
        out.counter(
            "smartctl_scsi_grown_defect_list",
            "SCSI grown defect list length: sectors remapped since manufacture.",
            &scsi_labels,
            v,
        );
    }
    for e in &report.scsi_errors {
        let (corrected, uncorrected) = match e.direction {
            "read" => (
                Some("smartctl_read_errors_corrected_by_rereads_rewrites"),
                "smartctl_read_total_uncorrected_errors",
            ),
            "write" => (
                Some("smartctl_write_errors_corrected_by_rereads_rewrites"),
                "smartctl_write_total_uncorrected_errors",
            ),
            _ => (None, "hostpulse_smart_verify_total_uncorrected_errors"),
        };
        if let (Some(name), Some(v)) = (corrected, e.corrected_by_rereads_rewrites) {
            out.counter(name, "SCSI errors corrected by rereads or rewrites.", &scsi_labels, v);
        }
        if let Some(v) = e.total_uncorrected {
            out.counter(uncorrected, "SCSI errors that could not be corrected.", &scsi_labels, v);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn value(out: &Emitter, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        out.samples()
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| s.value)
    }

    const ATA: &str = r#"{
      "smartctl": {"version": [7, 3], "exit_status": 64},
      "device": {"name": "/dev/sdb", "info_name": "/dev/sdb [SAT]", "type": "sat", "protocol": "ATA"},
      "model_family": "Seagate Exos", "model_name": "ST8000NM000A", "serial_number": "ZA1", "firmware_version": "SN02",
      "user_capacity": {"blocks": 100, "bytes": 8001563222016},
      "smart_status": {"passed": true},
      "ata_smart_attributes": {"table": [
        {"id": 5, "name": "Reallocated_Sector_Ct", "value": 100, "worst": 100, "thresh": 10,
         "flags": {"value": 51, "string": "PO--CK ", "prefailure": true, "updated_online": true, "performance": false,
                   "error_rate": false, "event_count": true, "auto_keep": true},
         "raw": {"value": 0, "string": "0"}},
        {"id": 188, "name": "Command_Timeout", "value": 100, "worst": 99, "thresh": 0,
         "flags": {"string": "-O--CK "}, "raw": {"value": 8590065666, "string": "2 2 2"}},
        {"id": 194, "name": "Temperature_Celsius", "value": 26, "worst": 40, "thresh": 0,
         "flags": {"string": "-O---K "}, "raw": {"value": 176094511130, "string": "26 (Min/Max 13/41)"}},
        {"id": 9, "name": "Power_On_Hours", "value": 62, "worst": 62, "thresh": 0,
         "flags": {"string": "-O--CK "}, "raw": {"value": 115594749838557, "string": "34013 (105 34 0)"}},
        {"id": 241, "name": "Total_LBAs_Written", "value": 100, "worst": 100, "thresh": 0,
         "flags": {"string": "-O--CK "}, "raw": {"value": 77}}
      ]},
      "power_on_time": {"hours": 34013, "minutes": 30},
      "power_cycle_count": 12,
      "temperature": {"current": 26, "drive_trip": 60}
    }"#;

    #[test]
    fn ata_report_decodes_packed_raw_values() {
        let r = parse_smartctl_json(ATA).unwrap();
        assert_eq!(r.device, "sdb");
        assert_eq!(r.info.interface, "sat");
        assert_eq!(r.info.ata_additional_product_id, "unknown");
        let raw = |id: u32| r.attributes.iter().find(|a| a.id == id).and_then(|a| a.raw);
        assert_eq!(raw(194), Some(26.0));
        assert_eq!(raw(188), Some(2.0));
        assert_eq!(raw(9), Some(34013.0));
        assert_eq!(raw(241), Some(77.0), "no string: the plain raw value");
        assert_eq!(
            r.attributes[0].flags_long,
            "prefailure,updated_online,event_count,auto_keep"
        );
        assert_eq!(r.attributes[0].flags_short, "PO--CK");
        assert_eq!(r.power_on_seconds, Some(34013.0 * 3600.0 + 30.0 * 60.0));
        assert_eq!(r.state(), (DeviceState::Ok, String::new()));
        assert_eq!(r.unhealthy_reasons(), Some(vec![]));
    }

    #[test]
    fn ata_report_series() {
        let mut out = Emitter::new();
        emit_report(&parse_smartctl_json(ATA).unwrap(), "ignored", &mut out);
        let temp = [
            ("device", "sdb"),
            ("attribute_id", "194"),
            ("attribute_value_type", "raw"),
        ];
        assert_eq!(value(&out, "smartctl_device_attribute", &temp), Some(26.0));
        let worst = [("attribute_id", "194"), ("attribute_value_type", "worst")];
        assert_eq!(value(&out, "smartctl_device_attribute", &worst), Some(40.0));
        assert_eq!(
            value(&out, "smartctl_device_smart_status", &[("device", "sdb")]),
            Some(1.0)
        );
        assert_eq!(value(&out, "hostpulse_smart_healthy", &[("device", "sdb")]), Some(1.0));
        assert_eq!(value(&out, "smartctl_device_smartctl_exit_status", &[]), Some(64.0));
        let bit = |b| value(&out, "hostpulse_smart_exit_status_bit", &[("bit", b)]);
        assert_eq!(bit("error_log_has_errors"), Some(1.0));
        assert_eq!(bit("disk_failing"), Some(0.0));
        assert_eq!(
            value(
                &out,
                "smartctl_device_temperature",
                &[("temperature_type", "drive_trip")]
            ),
            Some(60.0)
        );
        assert_eq!(
            value(&out, "hostpulse_smart_device_state", &[("state", "ok"), ("reason", "")]),
            Some(1.0)
        );
        assert_eq!(
            value(&out, "smartctl_device", &[("model_family", "Seagate Exos")]),
            Some(1.0)
        );
    }

    #[test]
    fn pending_sectors_make_a_passing_drive_unhealthy() {
        let text = ATA.replace(
            r#""raw": {"value": 0, "string": "0"}"#,
            r#""raw": {"value": 8, "string": "8"}"#,
        );
        let r = parse_smartctl_json(&text).unwrap();
        assert_eq!(r.state().0, DeviceState::Ok);
        assert_eq!(
            r.unhealthy_reasons(),
            Some(vec!["attribute 5 Reallocated_Sector_Ct = 8".to_string()])
        );
    }

    #[test]
    fn nvme_critical_warning_is_unhealthy_and_failed_verdict_is_a_state() {
        let text = r#"{"smartctl": {"exit_status": 8}, "device": {"name": "/dev/nvme0", "type": "nvme", "protocol": "NVMe"},
          "smart_status": {"passed": false, "nvme": {"value": 16}},
          "nvme_smart_health_information_log": {"critical_warning": 16, "percentage_used": 3, "available_spare": 100,
             "available_spare_threshold": 10, "media_errors": 0, "num_err_log_entries": 7, "unsafe_shutdowns": 5,
             "data_units_read": 2, "data_units_written": 1}}"#;
        let r = parse_smartctl_json(text).unwrap();
        assert_eq!(r.state().0, DeviceState::Failed);
        let reasons = r.unhealthy_reasons().unwrap();
        assert!(reasons.contains(&"nvme critical_warning 16".to_string()), "{reasons:?}");
        let mut out = Emitter::new();
        emit_report(&r, "", &mut out);
        let dev = [("device", "nvme0")];
        assert_eq!(value(&out, "hostpulse_smart_healthy", &dev), Some(0.0));
        assert_eq!(value(&out, "smartctl_device_critical_warning", &dev), Some(16.0));
        assert_eq!(value(&out, "smartctl_device_bytes_read", &dev), Some(1_024_000.0));
        assert_eq!(value(&out, "hostpulse_smart_unsafe_shutdowns_total", &dev), Some(5.0));
        assert_eq!(
            value(&out, "hostpulse_smart_device_state", &[("state", "failed")]),
            Some(1.0)
        );
    }

    #[test]
    fn unreadable_device_is_a_state_with_its_reason() {
        let text = r#"{"json_format_version": [1, 0],
          "smartctl": {"version": [7, 3], "exit_status": 2,
            "messages": [{"string": "Smartctl open device: /dev/sdc failed: Permission denied", "severity": "error"}]},
          "device": {"name": "/dev/sdc", "info_name": "/dev/sdc", "type": "sat", "protocol": "ATA"},
          "local_time": {"time_t": 1700000000}}"#;
        let r = parse_smartctl_json(text).unwrap();
        assert_eq!(r.unhealthy_reasons(), None);
        let mut out = Emitter::new();
        emit_report(&r, "", &mut out);
        let reason = "Smartctl open device: /dev/sdc failed: Permission denied";
        let st = [("device", "sdc"), ("state", "unreadable"), ("reason", reason)];
        assert_eq!(value(&out, "hostpulse_smart_device_state", &st), Some(1.0));
        assert_eq!(value(&out, "smartctl_device_smartctl_exit_status", &[]), Some(2.0));
        assert_eq!(value(&out, "hostpulse_smart_healthy", &[]), None);
        assert_eq!(value(&out, "smartctl_device", &[]), None);
    }

    #[test]
    fn standby_device_is_not_woken_and_not_unreadable() {
        let text = r#"{"smartctl": {"exit_status": 2,
            "messages": [{"string": "Device is in STANDBY mode, exit(2)", "severity": "information"}]},
          "device": {"name": "/dev/sdd", "type": "sat", "protocol": "ATA"}}"#;
        let r = parse_smartctl_json(text).unwrap();
        assert_eq!(r.state().0, DeviceState::Standby);
    }

    #[test]
    fn scsi_counters_and_grown_defects() {
        let text = r#"{"smartctl": {"exit_status": 0}, "device": {"name": "/dev/sde", "type": "scsi", "protocol": "SCSI"},
          "model_name": "SEAGATE ST373453LC", "serial_number": "3HW", "smart_status": {"passed": true},
          "scsi_grown_defect_list": 260,
          "scsi_error_counter_log": {"read": {"errors_corrected_by_rereads_rewrites": 41, "total_uncorrected_errors": 1},
             "write": {"errors_corrected_by_rereads_rewrites": 1973, "total_uncorrected_errors": 535},
             "verify": {"total_uncorrected_errors": 4}}}"#;
        let r = parse_smartctl_json(text).unwrap();
        assert_eq!(
            r.unhealthy_reasons(),
            Some(vec!["scsi grown defect list 260".to_string()])
        );
        let mut out = Emitter::new();
        emit_report(&r, "", &mut out);
        let model = [("model_name", "SEAGATE ST373453LC"), ("device", "sde")];
        assert_eq!(value(&out, "smartctl_scsi_grown_defect_list", &model), Some(260.0));
        assert_eq!(
            value(&out, "smartctl_write_total_uncorrected_errors", &model),
            Some(535.0)
        );
        assert_eq!(
            value(&out, "smartctl_read_errors_corrected_by_rereads_rewrites", &model),
            Some(41.0)
        );
        assert_eq!(
            value(&out, "hostpulse_smart_verify_total_uncorrected_errors", &model),
            Some(4.0)
        );
    }

    #[test]
    fn drives_behind_a_raid_controller_get_distinct_names() {
        let text = r#"{"smartctl": {"exit_status": 0},
          "device": {"name": "/dev/bus/0", "info_name": "/dev/bus/0 [megaraid_disk_05]", "type": "megaraid,5", "protocol": "SCSI"}}"#;
        assert_eq!(parse_smartctl_json(text).unwrap().device, "bus/0_megaraid_5");
    }

    #[test]
    fn leading_numbers() {
        assert_eq!(leading_number("26 (Min/Max 13/41)"), Some(26.0));
        assert_eq!(leading_number("  7"), Some(7.0));
        assert_eq!(leading_number("12345h+07m+13.123s"), Some(12345.0));
        assert_eq!(leading_number("0/0"), Some(0.0));
        assert_eq!(leading_number("0x000100000000"), None);
        assert_eq!(leading_number("-"), None);
        assert_eq!(leading_number(""), None);
    }

    #[test]
    fn not_smartctl_output_is_an_error() {
        assert!(matches!(parse_smartctl_json("{"), Err(SmartParseError::Json(_))));
        assert_eq!(
            parse_smartctl_json("[1]"),
            Err(SmartParseError::NotSmartctl("top level is not an object"))
        );
        assert_eq!(
            parse_smartctl_json("{}"),
            Err(SmartParseError::NotSmartctl("no \"smartctl\" section"))
        );
    }
}
