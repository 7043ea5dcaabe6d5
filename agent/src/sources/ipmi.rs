//! IPMI sensors and DCMI power from the board's BMC, through `ipmitool`.
//! Off by default: it runs an external tool and needs `/dev/ipmi0`. Both
//! commands run with the command timeout; the parsers below are pure
//! functions over ipmitool's text output.
//!
//! `ipmitool sdr elist` prints one sensor per line,
//! `name | number | status | entity | reading`, where the reading is a number
//! and unit (`45 degrees C`, `4200 RPM`) for threshold sensors and text for
//! discrete ones. `ipmitool dcmi power reading` prints the board's power
//! draw. A missing ipmitool or BMC is reported once, then nothing is emitted.

use std::time::Duration;

use super::command::{CommandError, run_with_timeout};
use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError, SourceOptions};

/// One line of `ipmitool sdr elist`.
#[derive(Clone, Debug, PartialEq)]
pub struct SdrSensor {
    /// Sensor name as the BMC reports it (`CPU1 Temp`).
    pub name: String,
    /// Normalized status: `ok`, `non_critical`, `critical`,
    /// `non_recoverable`, `no_reading`, or the raw code if unknown.
    pub state: String,
    /// The numeric reading, for threshold sensors that have one.
    pub value: Option<SensorReading>,
}

/// A numeric sensor reading.
#[derive(Clone, Debug, PartialEq)]
pub struct SensorReading {
    /// Sensor kind derived from the unit: `temperature`, `fan`, `voltage`,
    /// `current`, `power`, or `other`.
    pub kind: &'static str,
    /// Unit in base-unit spelling (`celsius`, `rpm`, `volts`, `amperes`,
    /// `watts`, `percent`) or ipmitool's own text when unknown.
    pub unit: String,
    /// The value.
    pub value: f64,
}

/// Parses `ipmitool sdr elist`. Lines that do not have five `|`-separated
/// fields are skipped (ipmitool prints warnings on the same stream).
pub fn parse_sdr_elist(text: &str) -> Vec<SdrSensor> {
    let mut sensors = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        if fields.len() != 5 || fields[0].is_empty() {
            continue;
        }
        let state = match fields[2] {
            "ok" => "ok",
            "nc" | "lnc" | "unc" => "non_critical",
            "cr" | "lcr" | "ucr" => "critical",
            "nr" | "lnr" | "unr" => "non_recoverable",
            "ns" => "no_reading",
            other => other,
        }
        .to_string();
        sensors.push(SdrSensor {
            name: fields[0].to_string(),
            state,
            value: parse_reading(fields[4]),
        });
    }
    sensors
}

fn parse_reading(text: &str) -> Option<SensorReading> {
    let (number, unit) = text.split_once(' ')?;
    let value: f64 = number.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    let (kind, unit) = match unit.trim() {
        "degrees C" => ("temperature", "celsius"),
        "RPM" => ("fan", "rpm"),
        "Volts" => ("voltage", "volts"),
        "Amps" => ("current", "amperes"),
        "Watts" => ("power", "watts"),
        "percent" => ("other", "percent"),
        other => ("other", other),
    };
    Some(SensorReading {
        kind,
        unit: unit.to_string(),
        value,
    })
}

/// Parses `ipmitool dcmi power reading`: the instantaneous power in watts,
/// or `None` when the output has none or says power reading is deactivated.
pub fn parse_dcmi_power(text: &str) -> Option<f64> {
    let mut watts = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        if key.eq_ignore_ascii_case("Instantaneous power reading") {
            watts = value
                .strip_suffix("Watts")
                .and_then(|n| n.trim().parse::<f64>().ok())
                .filter(|w| w.is_finite());
        } else if key.eq_ignore_ascii_case("Power reading state is") && value.eq_ignore_ascii_case("deactivated") {
            return None;
        }
    }
    watts
}

/// The `ipmi` source.
pub struct IpmiSource {
    ipmitool: std::path::PathBuf,
    timeout: Duration,
    /// ipmitool or the BMC is missing; already reported.
    unavailable: bool,
}

impl IpmiSource {
    /// Builds the source from its options.
    pub fn new(options: &SourceOptions) -> Self {
        IpmiSource {
            ipmitool: options.ipmitool.clone(),
            timeout: options.command_timeout,
            unavailable: false,
        }
    }

    /// Runs one ipmitool command; `Ok(None)` when ipmitool or the BMC is
    /// absent (reported once).
    fn run(&mut self, args: &[&str]) -> Result<Option<String>, SourceError> {
        match run_with_timeout(&self.ipmitool, args, self.timeout) {
            Ok(out) if out.status.success() => Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned())),
            Ok(out) => {
                // ipmitool exits 1 when there is no BMC device; no hardware.
                if !self.unavailable {
                    self.unavailable = true;
                    tracing::warn!(command = ?args, status = ?out.status.code(), "ipmitool failed (no BMC or no access to /dev/ipmi0?); no IPMI data");
                }
                Ok(None)
            }
            Err(CommandError::NotFound { program }) => {
                if !self.unavailable {
                    self.unavailable = true;
                    tracing::warn!(ipmitool = %program, "ipmitool not found; no IPMI data");
                }
                Ok(None)
            }
            Err(CommandError::PermissionDenied { program }) => {
                Err(SourceError::PermissionDenied { path: program.into() })
            }
            Err(e) => Err(SourceError::Io {
                path: self.ipmitool.clone(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }
}

impl Source for IpmiSource {
    fn name(&self) -> &'static str {
        "ipmi"
    }

    /// Runs ipmitool, which waits on the BMC.
    fn may_block(&self) -> bool {
        true
    }

    fn collect(&mut self, _paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        let Some(sdr) = self.run(&["sdr", "elist"])? else {
            return Ok(());
        };
        emit_sensors(&parse_sdr_elist(&sdr), out);
        // Not every BMC implements DCMI; its absence is not an error.
        if let Ok(out_text) = run_with_timeout(&self.ipmitool, &["dcmi", "power", "reading"], self.timeout)
            && out_text.status.success()
            && let Some(watts) = parse_dcmi_power(&String::from_utf8_lossy(&out_text.stdout))
        {
            out.gauge(
                "hostpulse_ipmi_power_watts",
                "Whole-system power draw reported by the BMC (DCMI instantaneous reading).",
                &[],
                watts,
            );
        }
        Ok(())
    }
}

/// Records the series of parsed SDR sensors.
pub fn emit_sensors(sensors: &[SdrSensor], out: &mut Emitter) {
    for s in sensors {
        out.gauge(
            "hostpulse_ipmi_sensor_state",
            "BMC sensor status; 1 for the current state (ok, non_critical, critical, non_recoverable, no_reading).",
            &[("sensor", &s.name), ("state", &s.state)],
            1.0,
        );
        if let Some(r) = &s.value {
            out.gauge(
                "hostpulse_ipmi_sensor_value",
                "BMC sensor reading in the unit named by the unit label.",
                &[("sensor", &s.name), ("type", r.kind), ("unit", &r.unit)],
                r.value,
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SDR: &str = "\
Inlet Temp       | 04h | ok  |  7.1 | 23 degrees C
CPU1 Temp        | 0Eh | ok  |  3.1 | 54 degrees C
CPU2 Temp        | 0Fh | cr  |  3.2 | 96 degrees C
Fan1A            | 30h | ok  |  7.1 | 5880 RPM
Fan2A            | 32h | ns  |  7.1 | No Reading
Voltage 1        | 6Ch | ok  | 10.1 | 230 Volts
Current 1        | 6Ah | lnc | 10.1 | 0.60 Amps
Pwr Consumption  | 77h | ok  |  7.1 | 168 Watts
PS1 Status       | 63h | ok  | 10.1 | Presence detected
PS2 Status       | 64h | cr  | 10.2 | Presence detected, Failure detected
Intrusion        | 73h | ok  |  7.1 |
Get HPM.x Capabilities request failed, compcode = c1
";

    #[test]
    fn sdr_elist_lines() {
        let sensors = parse_sdr_elist(SDR);
        assert_eq!(sensors.len(), 11);
        assert_eq!(
            sensors[2],
            SdrSensor {
                name: "CPU2 Temp".into(),
                state: "critical".into(),
                value: Some(SensorReading {
                    kind: "temperature",
                    unit: "celsius".into(),
                    value: 96.0
                })
            }
        );
        assert_eq!(sensors[4].state, "no_reading");
        assert_eq!(sensors[4].value, None);
        assert_eq!(sensors[6].state, "non_critical");
        assert_eq!(
            sensors[6].value.as_ref().map(|r| (r.kind, r.value)),
            Some(("current", 0.6))
        );
        assert_eq!(sensors[9].value, None, "discrete sensors have no value");
        assert_eq!(sensors[10].name, "Intrusion");
    }

    #[test]
    fn sdr_series() {
        let mut out = Emitter::new();
        emit_sensors(&parse_sdr_elist(SDR), &mut out);
        let fan = out
            .samples()
            .iter()
            .find(|s| s.name == "hostpulse_ipmi_sensor_value" && s.labels.contains(&("sensor".into(), "Fan1A".into())))
            .unwrap();
        assert_eq!(fan.value, 5880.0);
        assert!(fan.labels.contains(&("unit".into(), "rpm".into())));
        assert!(fan.labels.contains(&("type".into(), "fan".into())));
        let ps2 = out
            .samples()
            .iter()
            .find(|s| {
                s.name == "hostpulse_ipmi_sensor_state" && s.labels.contains(&("sensor".into(), "PS2 Status".into()))
            })
            .unwrap();
        assert!(ps2.labels.contains(&("state".into(), "critical".into())));
    }

    #[test]
    fn dcmi_power() {
        let text = "
    Instantaneous power reading:                   220 Watts
    Minimum during sampling period:                 38 Watts
    Maximum during sampling period:                512 Watts
    Average power reading over sample period:      221 Watts
    IPMI timestamp:                           Thu Mar  5 10:11:12 2026
    Sampling period:                          00000001 Seconds.
    Power reading state is:                   activated
";
        assert_eq!(parse_dcmi_power(text), Some(220.0));
        assert_eq!(parse_dcmi_power(&text.replace("activated", "deactivated")), None);
        assert_eq!(
            parse_dcmi_power("DCMI request failed because: Invalid command (c1)"),
            None
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_missing_ipmitool_emits_nothing_and_is_not_a_failure() {
        let options = SourceOptions {
            ipmitool: "/nonexistent/ipmitool".into(),
            ..SourceOptions::default()
        };
        let mut source = IpmiSource::new(&options);
        for _ in 0..2 {
            let mut out = Emitter::new();
            assert!(source.collect(&HostPaths::default(), &mut out).is_ok());
            assert!(out.samples().is_empty());
        }
    }
}
