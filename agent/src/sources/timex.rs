//! The `timex` source: node_exporter's `timex` collector and the clock
//! source part of its `time` collector.
//!
//! - The kernel's clock discipline state from a read-only `adjtimex(2)`
//!   (`modes = 0`, which changes nothing and needs no privilege), as
//!   `node_timex_*`: offset, frequency adjustment, maximum and estimated
//!   error, status bits, sync status, tick, TAI offset and the PPS
//!   counters. A clock that is not synchronised (`node_timex_sync_status`
//!   0) or whose estimated error grows is a failing RTC, a dead NTP daemon
//!   or a network problem; all three break TLS, logs and distributed locks.
//! - The clock sources from `/sys/devices/system/clocksource/clocksource<N>/`,
//!   as `node_time_clocksource_available_info{clocksource,device}` and
//!   `node_time_clocksource_current_info{clocksource,device}`. The kernel
//!   switching away from `tsc` (to `hpet` or `acpi_pm`) at run time means it
//!   found the TSC unstable, a CPU or firmware problem.
//!
//! `adjtimex(2)` is not wrapped by `std`, `rustix` or `nix`, and the
//! workspace forbids `unsafe`, so the one system call goes through the
//! `rtime-clock` crate's wrapper (Linux only). Like node_exporter, the
//! values are the running kernel's whatever `--procfs` points at: there is
//! no file to redirect. [`timex_series`] (the unit conversions) and
//! [`parse_available`] are pure; `node_time_seconds` comes from the `time`
//! source.

use crate::emit::{Emitter, MetricType};
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// The kernel's clock state, as `adjtimex(2)` fills `struct timex` and
/// returns the clock state, in the kernel's raw units (see the NOTES of
/// adjtimex(2)): `offset` and `jitter` in microseconds, or nanoseconds
/// when [`STA_NANO`] is set in `status`; `maxerror`, `esterror` and `tick`
/// in microseconds; `freq`, `ppsfreq` and `stabil` in ppm with a 16-bit
/// fraction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelTimex {
    /// The return value: `TIME_OK` (0) .. [`TIME_ERROR`] (5).
    pub state: i64,
    /// `STA_*` status bits.
    pub status: i64,
    /// Time offset.
    pub offset: i64,
    /// Frequency offset.
    pub freq: i64,
    /// Maximum error.
    pub maxerror: i64,
    /// Estimated error.
    pub esterror: i64,
    /// PLL time constant.
    pub constant: i64,
    /// Microseconds between clock ticks.
    pub tick: i64,
    /// PPS frequency.
    pub ppsfreq: i64,
    /// PPS jitter.
    pub jitter: i64,
    /// PPS interval duration (log2 seconds).
    pub shift: i64,
    /// PPS stability.
    pub stabil: i64,
    /// PPS jitter limit exceeded events.
    pub jitcnt: i64,
    /// PPS calibration intervals.
    pub calcnt: i64,
    /// PPS calibration errors.
    pub errcnt: i64,
    /// PPS stability limit exceeded events.
    pub stbcnt: i64,
    /// TAI offset in seconds.
    pub tai: i64,
}

/// The clock state `adjtimex` returns when the clock is not synchronised.
pub const TIME_ERROR: i64 = 5;
/// The status bit saying `offset` and `jitter` are in nanoseconds.
pub const STA_NANO: i64 = 0x2000;
/// ppm with a 16-bit binary fraction, as a ratio: 1e6 * 2^16.
const PPM16_FRAC: f64 = 1_000_000.0 * 65_536.0;

/// One `node_timex_*` series: name, help, type and value in base units.
pub type TimexSeries = (&'static str, &'static str, MetricType, f64);

/// Converts the kernel's raw values to node_exporter's series and units.
pub fn timex_series(t: &KernelTimex) -> [TimexSeries; 17] {
    use MetricType::{Counter, Gauge};
    let divisor = if t.status & STA_NANO != 0 { 1e9 } else { 1e6 };
    [
        (
            "node_timex_offset_seconds",
            "Time offset in between local system and reference clock.",
            Gauge,
            t.offset as f64 / divisor,
        ),
        (
            "node_timex_frequency_adjustment_ratio",
            "Local clock frequency adjustment.",
            Gauge,
            1.0 + t.freq as f64 / PPM16_FRAC,
        ),
        (
            "node_timex_maxerror_seconds",
            "Maximum error in seconds.",
            Gauge,
            t.maxerror as f64 / 1e6,
        ),
        (
            "node_timex_estimated_error_seconds",
            "Estimated error in seconds.",
            Gauge,
            t.esterror as f64 / 1e6,
        ),
        (
            "node_timex_status",
            "Value of the status array bits.",
            Gauge,
            t.status as f64,
        ),
        (
            "node_timex_loop_time_constant",
            "Phase-locked loop time constant.",
            Gauge,
            t.constant as f64,
        ),
        (
            "node_timex_tick_seconds",
            "Seconds between clock ticks.",
            Gauge,
            t.tick as f64 / 1e6,
        ),
        (
            "node_timex_pps_frequency_hertz",
            "Pulse per second frequency.",
            Gauge,
            t.ppsfreq as f64 / PPM16_FRAC,
        ),
        (
            "node_timex_pps_jitter_seconds",
            "Pulse per second jitter.",
            Gauge,
            t.jitter as f64 / divisor,
        ),
        (
            "node_timex_pps_shift_seconds",
            "Pulse per second interval duration.",
            Gauge,
            t.shift as f64,
        ),
        (
            "node_timex_pps_stability_hertz",
            "Pulse per second stability, average of recent frequency changes.",
            Gauge,
            t.stabil as f64 / PPM16_FRAC,
        ),
        (
            "node_timex_pps_jitter_total",
            "Pulse per second count of jitter limit exceeded events.",
            Counter,
            t.jitcnt as f64,
        ),
        (
            "node_timex_pps_calibration_total",
            "Pulse per second count of calibration intervals.",
            Counter,
            t.calcnt as f64,
        ),
        (
            "node_timex_pps_error_total",
            "Pulse per second count of calibration errors.",
            Counter,
            t.errcnt as f64,
        ),
        (
            "node_timex_pps_stability_exceeded_total",
            "Pulse per second count of stability limit exceeded events.",
            Counter,
            t.stbcnt as f64,
        ),
        (
            "node_timex_tai_offset_seconds",
            "International Atomic Time (TAI) offset.",
            Gauge,
            t.tai as f64,
        ),
        (
            "node_timex_sync_status",
            "Is clock synchronized to a reliable server (1 = yes, 0 = no).",
            Gauge,
            if t.state == TIME_ERROR { 0.0 } else { 1.0 },
        ),
    ]
}

/// Asks the running kernel for its clock state without changing it.
#[cfg(target_os = "linux")]
// `c_long` is `i64` only on 64-bit targets; the conversions are real on 32-bit ones.
#[allow(clippy::useless_conversion)]
fn read_kernel_timex() -> std::io::Result<KernelTimex> {
    let mut tx = rtime_clock::adjtime::Timex::new();
    // `Timex::new` is all zeroes: `modes = 0` makes this a pure query.
    let state = rtime_clock::adjtime::adjtimex(&mut tx)?;
    let t = &tx.0;
    Ok(KernelTimex {
        state: i64::from(state),
        status: i64::from(t.status),
        offset: i64::from(t.offset),
        freq: i64::from(t.freq),
        maxerror: i64::from(t.maxerror),
        esterror: i64::from(t.esterror),
        constant: i64::from(t.constant),
        tick: i64::from(t.tick),
        ppsfreq: i64::from(t.ppsfreq),
        jitter: i64::from(t.jitter),
        shift: i64::from(t.shift),
        stabil: i64::from(t.stabil),
        jitcnt: i64::from(t.jitcnt),
        calcnt: i64::from(t.calcnt),
        errcnt: i64::from(t.errcnt),
        stbcnt: i64::from(t.stbcnt),
        tai: i64::from(t.tai),
    })
}

/// Other systems have no `adjtimex`; the series are simply absent there.
#[cfg(not(target_os = "linux"))]
fn read_kernel_timex() -> std::io::Result<KernelTimex> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Splits `available_clocksource` (`tsc hpet acpi_pm`) into names.
pub fn parse_available(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

/// Calls adjtimex and reads the clock source directories: the listing and
/// `available_clocksource` are static (re-read on the slow refresh),
/// `current_clocksource` is re-read through a kept descriptor.
#[derive(Debug, Default)]
pub struct TimexSource {
    files: Files,
}

impl Source for TimexSource {
    fn name(&self) -> &'static str {
        "timex"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        match read_kernel_timex() {
            Ok(raw) => {
                for (name, help, kind, value) in timex_series(&raw) {
                    out.push(name, kind, help, &[], value);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {}
            Err(e) => return Err(SourceError::io(std::path::Path::new("adjtimex(2)"), e)),
        }
        self.files.begin_cycle();
        let root = paths.sys("devices/system/clocksource");
        let names = match self.files.list(&root) {
            Ok(names) => names,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&root, e)),
        };
        for name in names.iter() {
            let Some(device) = name
                .strip_prefix("clocksource")
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let dir = root.join(name);
            if let Some(text) = self.files.static_in(&dir, "available_clocksource") {
                for clocksource in parse_available(&text) {
                    out.gauge(
                        "node_time_clocksource_available_info",
                        "Available clocksources read from '/sys/devices/system/clocksource'.",
                        &[("clocksource", clocksource), ("device", device)],
                        1.0,
                    );
                }
            }
            if let Some(current) = self.files.attr_in(&dir, "current_clocksource") {
                let current = current.trim();
                if !current.is_empty() {
                    out.gauge(
                        "node_time_clocksource_current_info",
                        "Current clocksource read from '/sys/devices/system/clocksource'.",
                        &[("clocksource", current), ("device", device)],
                        1.0,
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The state node_exporter 1.5 showed on this VM (no NTP daemon):
    /// unsynchronised, status `STA_UNSYNC`, 16 s error bounds, 10 ms ticks.
    #[test]
    fn unsynchronised_clock_as_node_exporter_reports_it() {
        let raw = KernelTimex {
            state: TIME_ERROR,
            status: 0x40,
            maxerror: 16_000_000,
            esterror: 16_000_000,
            constant: 2,
            tick: 10_000,
            ..KernelTimex::default()
        };
        let series = timex_series(&raw);
        let value = |name: &str| series.iter().find(|s| s.0 == name).map(|s| s.3);
        assert_eq!(value("node_timex_sync_status"), Some(0.0));
        assert_eq!(value("node_timex_status"), Some(64.0));
        assert_eq!(value("node_timex_maxerror_seconds"), Some(16.0));
        assert_eq!(value("node_timex_estimated_error_seconds"), Some(16.0));
        assert_eq!(value("node_timex_tick_seconds"), Some(0.01));
        assert_eq!(value("node_timex_loop_time_constant"), Some(2.0));
        assert_eq!(value("node_timex_frequency_adjustment_ratio"), Some(1.0));
        assert_eq!(value("node_timex_offset_seconds"), Some(0.0));
    }

    #[test]
    fn offset_and_jitter_follow_the_nano_status_bit() {
        let micro = KernelTimex {
            state: 0,
            offset: -1500,
            jitter: 250,
            ..KernelTimex::default()
        };
        let nano = KernelTimex {
            status: STA_NANO,
            ..micro
        };
        let pick = |t: &KernelTimex, name: &str| timex_series(t).iter().find(|s| s.0 == name).map(|s| s.3);
        assert_eq!(pick(&micro, "node_timex_offset_seconds"), Some(-0.0015));
        assert_eq!(pick(&nano, "node_timex_offset_seconds"), Some(-0.0000015));
        assert_eq!(pick(&micro, "node_timex_pps_jitter_seconds"), Some(0.00025));
        assert_eq!(pick(&nano, "node_timex_pps_jitter_seconds"), Some(0.00000025));
        assert_eq!(pick(&micro, "node_timex_sync_status"), Some(1.0));
    }

    #[test]
    fn frequencies_are_ppm_with_a_16_bit_fraction() {
        // +12.5 ppm is 12.5 * 65536 in the kernel's fixed point.
        let raw = KernelTimex {
            freq: 819_200,
            ppsfreq: -65_536,
            stabil: 32_768,
            ..KernelTimex::default()
        };
        let series = timex_series(&raw);
        let value = |name: &str| series.iter().find(|s| s.0 == name).map(|s| s.3);
        assert_eq!(value("node_timex_frequency_adjustment_ratio"), Some(1.0000125));
        assert_eq!(value("node_timex_pps_frequency_hertz"), Some(-0.000001));
        assert_eq!(value("node_timex_pps_stability_hertz"), Some(0.0000005));
    }

    #[test]
    fn counters_are_counters_and_names_are_unique() {
        let series = timex_series(&KernelTimex::default());
        let mut names: Vec<&str> = series.iter().map(|s| s.0).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), series.len());
        for (name, _, kind, _) in series {
            assert_eq!(name.ends_with("_total"), kind == MetricType::Counter, "{name}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_running_kernel_answers_a_read_only_query() {
        let raw = read_kernel_timex().unwrap();
        // Every Linux kernel ticks at HZ between 100 and 1000.
        assert!((1_000..=10_000).contains(&raw.tick), "tick {}", raw.tick);
        assert!((0..=TIME_ERROR).contains(&raw.state), "state {}", raw.state);
    }

    #[test]
    fn clock_sources_from_a_fixture_tree() {
        let dir = tempfile::tempdir().unwrap();
        let cs = dir.path().join("devices/system/clocksource/clocksource0");
        std::fs::create_dir_all(&cs).unwrap();
        std::fs::create_dir_all(dir.path().join("devices/system/clocksource/power")).unwrap();
        std::fs::write(cs.join("available_clocksource"), "tsc hpet acpi_pm \n").unwrap();
        std::fs::write(cs.join("current_clocksource"), "hpet\n").unwrap();
        let paths = HostPaths {
            sysfs: dir.path().to_path_buf(),
            ..HostPaths::default()
        };
        let mut out = Emitter::new();
        TimexSource::default().collect(&paths, &mut out).unwrap();
        let info: Vec<(&str, &str)> = out
            .samples()
            .iter()
            .filter(|s| s.name.starts_with("node_time_clocksource"))
            .map(|s| (s.name.as_str(), s.labels[0].1.as_str()))
            .collect();
        assert_eq!(
            info,
            [
                ("node_time_clocksource_available_info", "tsc"),
                ("node_time_clocksource_available_info", "hpet"),
                ("node_time_clocksource_available_info", "acpi_pm"),
                ("node_time_clocksource_current_info", "hpet"),
            ]
        );
    }

    #[test]
    fn available_names() {
        assert_eq!(parse_available("tsc hpet acpi_pm \n"), vec!["tsc", "hpet", "acpi_pm"]);
        assert!(parse_available("\n").is_empty());
    }
}
