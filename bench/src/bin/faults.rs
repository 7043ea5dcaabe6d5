//! Fault-scenario benchmark for hostpulse's detection: a simulated fleet
//! (several hardware models, noise, daily load cycles) with injected
//! hardware faults, evaluated by the real built-in rule pack and the real
//! detectors through the collector's own PromQL engine and alert board.
//!
//! For each fault it reports whether an alert fired for the faulty host,
//! which one, the time to detect and the lead time before the hard failure;
//! then it runs the same fleet with no faults (a week by default) and lists
//! every alert that fired, which should be none. The peer named in the
//! comparison is the ideal (the targets of issue 6): every fault detected,
//! hard faults within two sampling intervals, trend faults at least 24 h
//! before the threshold, zero alerts on the healthy fleet.
//!
//! Samples live in an in-memory source (not the sled store) so a simulated
//! week takes seconds; everything else is the collector's code.
//!
//! `cargo run --release -p hostpulse-bench --bin faults -- [--hosts 200] [--healthy-days 7]`

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use hostpulse_collector::alert::{AlertBoard, AlertState, Timing};
use hostpulse_collector::detect::HostSilent;
use hostpulse_collector::detect::knobs::DetectorConfig;
use hostpulse_collector::detect::rulefile::{RuleGroup, RuleKind, parse_rule_file};
use hostpulse_collector::detect::{
    BUILTIN_FILE, BUILTIN_RULES, Detector, Inputs, alerts_for, default_detectors, detector_key, rule_key,
};
use hostpulse_collector::model::{Labels, METRIC_NAME, MatchOp, Matcher, SeriesSamples};
use hostpulse_collector::query::eval::{self, Limits, Source, Value};
use hostpulse_collector::store::{HostRecord, StoreError, StreamState};

/// Command line.
#[derive(Parser, Debug)]
struct Args {
    /// Hosts in the healthy-fleet run
    #[arg(long, default_value_t = 200)]
    hosts: usize,
    /// Length of the healthy-fleet run, days
    #[arg(long, default_value_t = 7.0)]
    healthy_days: f64,
    /// Hosts in each fault scenario (3 hardware models)
    #[arg(long, default_value_t = 15)]
    scenario_hosts: usize,
    /// Seed of the noise generator
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Run only the fault scenarios whose name contains this (case-insensitive,
    /// e.g. `voltage`); for quick runs while tuning a detector
    #[arg(long)]
    only: Option<String>,
}

const STEP_MS: i64 = 60_000;
const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
/// Samples older than this are dropped: the longest window any rule or
/// detector reads is 24 h, except SSD wear (see [`Sim::prune`]).
const KEEP_MS: i64 = 25 * HOUR;
const MODELS: [(&str, f64); 3] = [("EPYC 7313", 48.0), ("Xeon 6338", 52.0), ("Xeon 4314", 45.0)];

/// Samples in memory, indexed by metric name, as an evaluator source.
#[derive(Default)]
struct Sim {
    series: Vec<SeriesSamples>,
    index: HashMap<Labels, usize>,
    by_name: HashMap<String, Vec<usize>>,
    /// 5-minute (start, sum, count) buckets of the metrics that detectors
    /// read as rollups, kept incrementally (like the store's rollups) so a
    /// week of history is not re-read from raw samples every round.
    rollups: HashMap<usize, Vec<(i64, f64, u64)>>,
    rollup_metrics: HashSet<&'static str>,
}

/// Width of the simulated rollup buckets (the store's 5-minute resolution).
const ROLLUP_MS: i64 = 5 * MIN;
/// How long rollups are kept: the baseline detector's week plus slack.
const ROLLUP_KEEP_MS: i64 = 8 * DAY;

impl Sim {
    fn push(&mut self, labels: Labels, t: i64, v: f64) {
        let i = match self.index.get(&labels) {
            Some(i) => *i,
            None => {
                let i = self.series.len();
                self.by_name
                    .entry(labels.metric_name().to_string())
                    .or_default()
                    .push(i);
                self.index.insert(labels.clone(), i);
                self.series.push(SeriesSamples {
                    labels,
                    samples: Vec::new(),
                });
                i
            }
        };
        self.series[i].samples.push((t, v));
        if self.rollup_metrics.contains(self.series[i].labels.metric_name()) {
            let start = t - t.rem_euclid(ROLLUP_MS);
            let buckets = self.rollups.entry(i).or_default();
            match buckets.last_mut() {
                Some(b) if b.0 == start => {
                    b.1 += v;
                    b.2 += 1;
                }
                _ => buckets.push((start, v, 1)),
            }
        }
    }

    /// Rollup means of the series named `name` whose buckets start in
    /// `[start_ms, end_ms]`, one sample per bucket at its start.
    fn select_rollup(&self, name: &str, start_ms: i64, end_ms: i64) -> Vec<SeriesSamples> {
        let ids = self.by_name.get(name).cloned().unwrap_or_default();
        ids.into_iter()
            .filter_map(|i| {
                let b = self.rollups.get(&i)?;
                let a = b.partition_point(|(t, _, _)| *t < start_ms);
                let z = b.partition_point(|(t, _, _)| *t <= end_ms);
                (a < z).then(|| SeriesSamples {
                    labels: self.series[i].labels.clone(),
                    samples: b[a..z].iter().map(|(t, sum, n)| (*t, sum / *n as f64)).collect(),
                })
            })
            .collect()
    }

    /// Drops samples older than any reader needs: a week for SSD wear
    /// (the trend detector's window), 25 h for the rest.
    fn prune(&mut self, now: i64) {
        for s in &mut self.series {
            let keep = if s.labels.metric_name() == "smartctl_device_percentage_used" {
                8 * DAY
            } else {
                KEEP_MS
            };
            let before = now - keep;
            let cut = s.samples.partition_point(|(t, _)| *t < before);
            s.samples.drain(..cut);
        }
        for b in self.rollups.values_mut() {
            let cut = b.partition_point(|(t, _, _)| *t < now - ROLLUP_KEEP_MS);
            b.drain(..cut);
        }
    }
}

impl Source for Sim {
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Result<Vec<SeriesSamples>, StoreError> {
        let name = matchers.iter().find_map(|m| match &m.op {
            MatchOp::Equal(v) if m.name == METRIC_NAME => Some(v.as_str()),
            _ => None,
        });
        let candidates: Vec<usize> = match name {
            Some(n) => self.by_name.get(n).cloned().unwrap_or_default(),
            None => (0..self.series.len()).collect(),
        };
        Ok(candidates
            .into_iter()
            .filter_map(|i| {
                let s = &self.series[i];
                if !s.labels.matches(matchers) {
                    return None;
                }
                let a = s.samples.partition_point(|(t, _)| *t < start_ms);
                let b = s.samples.partition_point(|(t, _)| *t <= end_ms);
                (a < b).then(|| SeriesSamples {
                    labels: s.labels.clone(),
                    samples: s.samples[a..b].to_vec(),
                })
            })
            .collect())
    }
}

/// xorshift64*: deterministic noise.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly normal (sum of uniforms), mean 0, sd `sd`.
    fn noise(&mut self, sd: f64) -> f64 {
        (self.next() + self.next() + self.next() + self.next() - 2.0) * sd * 1.732
    }

    /// A Poisson count of mean `mean` (Knuth's method; means here are small).
    fn poisson(&mut self, mean: f64) -> f64 {
        let limit = (-mean).exp();
        let (mut k, mut p) = (0.0, self.next());
        while p > limit {
            k += 1.0;
            p *= self.next();
        }
        k
    }
}

/// The faults the benchmark injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    FanFailure,
    ThermalPaste,
    EccStorm,
    SmartRealloc,
    NvmeWearOut,
    CrcErrors,
    LinkFlaps,
    SpeedDowngrade,
    PsuLoss,
    VoltageDrift,
    DiskFilling,
    RaidMember,
    HostSilent,
    MachineCheck,
    TempCreep,
}

const FAULTS: &[(Fault, &str, bool)] = &[
    (Fault::FanFailure, "fan failure -> temperature climb", true),
    (Fault::ThermalPaste, "degraded thermal paste (hotter than twins)", false),
    (Fault::EccStorm, "ECC correctable rising 3 days, then UE", false),
    (Fault::SmartRealloc, "SMART reallocated sectors growing", false),
    (Fault::NvmeWearOut, "NVMe wear-out", false),
    (Fault::CrcErrors, "SATA CRC errors (cabling)", false),
    (Fault::LinkFlaps, "link flapping", true),
    (Fault::SpeedDowngrade, "link speed downgrade", true),
    (Fault::PsuLoss, "PSU input lost", true),
    (Fault::VoltageDrift, "12 V rail drifting low", false),
    (Fault::DiskFilling, "filesystem filling", false),
    (Fault::RaidMember, "RAID member failure", true),
    (Fault::HostSilent, "host silent", true),
    (Fault::MachineCheck, "machine check event", true),
    (Fault::TempCreep, "temp creep above own baseline, within peers", false),
];

/// The simulated sampling interval the agents announce in their Hello.
const INTERVAL_MS: u64 = STEP_MS as u64;
/// The collector's HTTP/2 keepalive (30 s ping + 10 s timeout): how long
/// after a host dies its stream is dropped.
const KEEPALIVE_MS: i64 = 40_000;
/// Hours after the start of the DIMM's degradation at which it throws the
/// uncorrectable error.
const ECC_UE_AFTER: i64 = 72 * HOUR;
/// Correctable errors per hour at the start of the degradation; the rate
/// doubles every [`ECC_DOUBLING`].
const ECC_START_PER_HOUR: f64 = 0.5;
const ECC_DOUBLING: f64 = 12.0 * HOUR as f64;
/// How far the creeping host's temperature rises over its own baseline,
/// and over how long.
const CREEP_CELSIUS: f64 = 10.0;
const CREEP_OVER: i64 = 10 * HOUR;

/// What happens to a host's stream to this collector (healthy-week
/// disruptions, and a dead host's keepalive timeout).
#[derive(Clone, Copy, Debug)]
enum LinkEvent {
    /// The stream ends this way; `delivering` says whether the host's
    /// samples still reach this collector later (spooled and replayed on
    /// reconnect) or go to another collector it failed over to.
    End { how: StreamState, delivering: bool },
    /// The agent (re)connects and sends its Hello.
    Hello,
}

/// One simulated host.
struct Host {
    name: String,
    model: usize,
    phase: f64,
    fault: Option<Fault>,
    /// Counters and drifting state.
    ce: f64,
    ue: f64,
    realloc: f64,
    crc: f64,
    carrier: f64,
    rx_errs: f64,
    packets: f64,
    wear: f64,
    extra_heat: f64,
    mce: Option<f64>,
    silent: bool,
    last_report_ms: i64,
    /// Background correctable errors per minute (a weak but stable cell on
    /// a few hosts, rare cosmic-ray hits on the rest).
    ce_background: f64,
    /// Inlet temperature offset of its rack position, °C.
    inlet: f64,
    /// Its stream as this collector sees it.
    stream: StreamState,
    stream_since_ms: i64,
    /// Whether its samples reach this collector (false while it is down or
    /// sending to another collector).
    delivering: bool,
    /// Pending link events, in time order.
    events: Vec<(i64, LinkEvent)>,
}

fn labels(name: &str, host: &str, extra: &[(&str, &str)]) -> Labels {
    let mut pairs = vec![(METRIC_NAME, name), ("instance", host), ("job", "hostpulse")];
    pairs.extend_from_slice(extra);
    Labels::from_pairs(&pairs)
}

impl Host {
    fn new(i: usize, rng: &mut Rng) -> Host {
        Host {
            name: format!("node{i:03}"),
            model: i % MODELS.len(),
            // One site: load peaks within about an hour of each other.
            phase: rng.next() * 0.05,
            fault: None,
            ce: (rng.next() * 5.0).floor(),
            ue: 0.0,
            // A few drives carry old, constant damage.
            realloc: if i.is_multiple_of(17) { 8.0 } else { 0.0 },
            crc: if i.is_multiple_of(23) { 2.0 } else { 0.0 },
            carrier: 2.0,
            rx_errs: 0.0,
            packets: 0.0,
            wear: 3.0 + (i % 40) as f64,
            extra_heat: 0.0,
            mce: None,
            silent: false,
            last_report_ms: 0,
            // One host in 25 has a weak cell correcting about two errors a
            // day; the rest see one every three days or so.
            ce_background: if i % 25 == 7 {
                2.0 / (24.0 * 60.0)
            } else {
                1.0 / (3.0 * 24.0 * 60.0)
            },
            // Rack positions spread hosts of one model over 7 °C.
            inlet: ((i * 37) % 15) as f64 * 0.5 - 3.5,
            stream: StreamState::Open,
            stream_since_ms: T0,
            delivering: true,
            events: Vec::new(),
        }
    }

    /// Applies the link events due by `t`.
    fn apply_events(&mut self, t: i64) {
        while let Some(&(at, ev)) = self.events.first() {
            if at > t {
                break;
            }
            self.events.remove(0);
            match ev {
                LinkEvent::End { how, delivering } => {
                    self.stream = how;
                    self.stream_since_ms = at;
                    self.delivering = delivering;
                }
                LinkEvent::Hello => {
                    self.stream = StreamState::Open;
                    self.stream_since_ms = at;
                    self.last_report_ms = self.last_report_ms.max(at);
                    self.delivering = true;
                }
            }
        }
        // A dead host's open stream is dropped by the keepalive.
        if self.silent && self.stream == StreamState::Open && t >= self.last_report_ms + KEEPALIVE_MS {
            self.stream = StreamState::Dropped;
            self.stream_since_ms = self.last_report_ms + KEEPALIVE_MS;
        }
    }

    /// The host record the collector's store would hold.
    fn record(&self) -> HostRecord {
        HostRecord {
            host: self.name.clone(),
            last_report_ms: self.last_report_ms,
            cpu_model: MODELS[self.model].0.to_string(),
            interval_ms: INTERVAL_MS,
            stream: self.stream,
            stream_since_ms: self.stream_since_ms,
            ..HostRecord::default()
        }
    }

    /// Emits one sampling cycle at `t`; `since` is the time since the
    /// fault (negative before it). Returns the hard-failure flag.
    fn sample(&mut self, sim: &mut Sim, rng: &mut Rng, t: i64, since: i64) -> bool {
        let f = if since >= 0 { self.fault } else { None };
        let h = self.name.clone();
        let h = h.as_str();
        let day = ((t % DAY) as f64 / DAY as f64 + self.phase) * std::f64::consts::TAU;
        let load = (6.0 + 4.0 * day.sin() + rng.noise(0.6)).max(0.1);
        let mut hard = false;
        if f == Some(Fault::HostSilent) {
            self.silent = true;
            return true;
        }
        if self.delivering && self.stream == StreamState::Open {
            self.last_report_ms = t;
        }
        // A host that is down samples nothing; one sending elsewhere keeps
        // its state (counters) but its samples never reach this collector.
        let deliver = self.delivering;
        let put = |sim: &mut Sim, name: &str, extra: &[(&str, &str)], v: f64| {
            if deliver {
                sim.push(labels(name, h, extra), t, v);
            }
        };

        // Thermal: fans, temperatures.
        let fan_dead = f == Some(Fault::FanFailure);
        if fan_dead {
            self.extra_heat += 0.8;
        }
        if f == Some(Fault::ThermalPaste) {
            self.extra_heat = (self.extra_heat + 0.5).min(16.0);
        }
        if f == Some(Fault::TempCreep) {
            self.extra_heat = CREEP_CELSIUS * (since as f64 / CREEP_OVER as f64).min(1.0);
        }
        let temp = MODELS[self.model].1 + self.inlet + 2.0 * load + self.extra_heat + rng.noise(0.7);
        let chip = [("chip", "platform_coretemp_0"), ("sensor", "temp1")];
        put(sim, "node_hwmon_temp_celsius", &chip, temp);
        put(sim, "node_hwmon_temp_crit_celsius", &chip, 100.0);
        put(sim, "node_hwmon_temp_max_celsius", &chip, 90.0);
        if temp >= 100.0 {
            hard = true;
        }
        for (i, fan) in ["fan1", "fan2", "fan3"].iter().enumerate() {
            let l = [("chip", "platform_nct6775_656"), ("sensor", fan)];
            let rpm = if fan_dead && i == 0 {
                0.0
            } else {
                4800.0 + 60.0 * load + 100.0 * i as f64 + rng.noise(40.0)
            };
            put(sim, "node_hwmon_fan_rpm", &l, rpm.round());
            put(sim, "node_hwmon_fan_min_rpm", &l, 600.0);
        }
        let rail = [("chip", "platform_nct6775_656"), ("sensor", "in1")];
        let drift = if f == Some(Fault::VoltageDrift) {
            -0.02 * since as f64 / HOUR as f64
        } else {
            0.0
        };
        let volts = 12.05 + drift + rng.noise(0.02);
        if volts < 11.4 {
            hard = true;
        }
        put(sim, "node_hwmon_in_volts", &rail, volts);
        put(sim, "node_hwmon_in_min_volts", &rail, 11.4);
        put(sim, "node_hwmon_in_max_volts", &rail, 12.6);
        put(sim, "node_load1", &[], load);
        put(sim, "node_cpu_package_throttles_total", &[("package", "0")], 0.0);

        // Power.
        for psu in ["PSU1", "PSU2"] {
            let lost = f == Some(Fault::PsuLoss) && psu == "PSU2";
            hard |= lost;
            put(
                sim,
                "node_power_supply_online",
                &[("power_supply", psu)],
                if lost { 0.0 } else { 1.0 },
            );
        }

        // Memory: background corrections; a degrading DIMM whose
        // correctable-error rate doubles every 12 h, then the UE.
        if rng.next() < self.ce_background {
            self.ce += 1.0;
        }
        if f == Some(Fault::EccStorm) {
            let per_hour = ECC_START_PER_HOUR * (since as f64 / ECC_DOUBLING).exp2();
            self.ce += rng.poisson(per_hour / 60.0);
            if since >= ECC_UE_AFTER && self.ue == 0.0 {
                self.ue = 1.0;
            }
            hard |= self.ue > 0.0;
        }
        put(
            sim,
            "node_edac_correctable_errors_total",
            &[("controller", "0")],
            self.ce,
        );
        put(
            sim,
            "node_edac_uncorrectable_errors_total",
            &[("controller", "0")],
            self.ue,
        );
        put(sim, "node_memory_HardwareCorrupted_bytes", &[], 0.0);

        // SMART, every 5 minutes like the agent's slow sources.
        if t % (5 * MIN) == 0 {
            let mut status = 1.0;
            if f == Some(Fault::SmartRealloc) {
                self.realloc += 1.0;
                if since >= 48 * HOUR {
                    status = 0.0;
                    hard = true;
                }
            }
            if f == Some(Fault::CrcErrors) && since % (10 * MIN) == 0 {
                self.crc += 3.0;
            }
            if f == Some(Fault::NvmeWearOut) {
                // 80 % at the fault, +1 % every 8 h: 100 % after 160 h.
                self.wear = 80.0 + (since as f64 / (8.0 * HOUR as f64)).floor();
                hard |= self.wear >= 100.0;
            }
            let sda = [("device", "sda")];
            put(sim, "smartctl_device_smart_status", &sda, status);
            for (name, v) in [
                ("Reallocated_Sector_Ct", self.realloc),
                ("Current_Pending_Sector", 0.0),
                ("UDMA_CRC_Error_Count", self.crc),
            ] {
                let l = [
                    ("device", "sda"),
                    ("attribute_name", name),
                    ("attribute_value_type", "raw"),
                ];
                put(sim, "smartctl_device_attribute", &l, v);
            }
            let nvme = [("device", "nvme0")];
            put(sim, "smartctl_device_percentage_used", &nvme, self.wear.min(100.0));
            put(sim, "smartctl_device_available_spare", &nvme, 100.0);
            put(sim, "smartctl_device_available_spare_threshold", &nvme, 10.0);
            put(sim, "smartctl_device_critical_warning", &nvme, 0.0);
            put(sim, "smartctl_device_media_errors", &nvme, 0.0);
        }

        // RAID.
        let raid_failed = f == Some(Fault::RaidMember);
        hard |= raid_failed;
        let md = [("device", "md0")];
        put(sim, "node_md_disks_required", &md, 2.0);
        put(
            sim,
            "node_md_disks",
            &[("device", "md0"), ("state", "active")],
            if raid_failed { 1.0 } else { 2.0 },
        );
        put(
            sim,
            "node_md_disks",
            &[("device", "md0"), ("state", "failed")],
            if raid_failed { 1.0 } else { 0.0 },
        );

        // Network.
        if f == Some(Fault::LinkFlaps) && since < 20 * MIN {
            self.carrier += 2.0;
        }
        self.packets += 2000.0 * 60.0;
        if rng.next() < 0.01 {
            self.rx_errs += 1.0;
        }
        let eth = [("device", "eth0")];
        put(sim, "node_network_carrier_changes_total", &eth, self.carrier);
        let speed = if f == Some(Fault::SpeedDowngrade) {
            1.25e8
        } else {
            1.25e9
        };
        put(sim, "node_network_speed_bytes", &eth, speed);
        put(sim, "node_network_up", &eth, 1.0);
        put(sim, "node_network_receive_errs_total", &eth, self.rx_errs);
        put(sim, "node_network_transmit_errs_total", &eth, 0.0);
        put(sim, "node_network_receive_packets_total", &eth, self.packets);
        put(sim, "node_network_transmit_packets_total", &eth, self.packets);

        // Filesystem: a daily cycle of log growth and cleanup.
        let fs = [("device", "/dev/sda1"), ("mountpoint", "/var"), ("fstype", "ext4")];
        let gb = 1e9;
        let mut avail = 200.0 * gb - 2.0 * gb * day.sin() + rng.noise(0.05 * gb);
        if f == Some(Fault::DiskFilling) {
            avail -= 2.0 * gb * since as f64 / HOUR as f64;
        }
        hard |= avail <= 0.0;
        put(sim, "node_filesystem_avail_bytes", &fs, avail.max(0.0));
        put(sim, "node_filesystem_size_bytes", &fs, 500.0 * gb);
        put(sim, "node_filesystem_readonly", &fs, 0.0);

        // Kernel events: the counter appears with the first event.
        if f == Some(Fault::MachineCheck) {
            self.mce = Some(self.mce.unwrap_or(0.0) + if since == 0 { 1.0 } else { 0.0 });
            hard = true;
        }
        if let Some(n) = self.mce {
            put(
                sim,
                "hostpulse_kernel_events_total",
                &[("kind", "mce"), ("device", "")],
                n,
            );
        }
        put(sim, "hostpulse_source_success", &[("source", "hwmon")], 1.0);
        hard
    }
}

/// Schedules the disruptions a healthy fleet sees in a week, none of them
/// a fault, and returns the collector's outage (down, up). Times are in
/// the simulated agents' terms: reconnect backoff capped at 30 s, failback
/// probe every 5 min, a 5 s drain before switching back.
fn schedule_disruptions(hosts: &mut [Host], rng: &mut Rng) -> (i64, i64) {
    let sec = |s: f64| (s * 1000.0) as i64;
    let down = T0 + DAY + 10 * HOUR;
    let up = down + 10 * MIN;
    for (i, h) in hosts.iter_mut().enumerate() {
        let i64i = i as i64;
        // Collector restart: its stop drops every stream. Odd hosts have
        // only this collector and reconnect within their backoff, then
        // replay their spool; even ones fail over to a second collector
        // and come back at their next failback probe.
        let odd = i % 2 == 1;
        h.events.push((
            down,
            LinkEvent::End {
                how: StreamState::Dropped,
                delivering: odd,
            },
        ));
        let back = if odd {
            up + sec(30.0 * rng.next())
        } else {
            up + sec(300.0 * rng.next() + 5.0)
        };
        h.events.push((back, LinkEvent::Hello));
        // Rolling agent upgrade: goodbye, a new process says hello.
        let at = T0 + 2 * DAY + 9 * HOUR + i64i * sec(20.0);
        h.events.push((
            at,
            LinkEvent::End {
                how: StreamState::Goodbye,
                delivering: true,
            },
        ));
        h.events.push((at + sec(3.0 + 5.0 * rng.next()), LinkEvent::Hello));
        // Planned reboots: goodbye, host down 4-12 minutes.
        if i % 20 == 3 {
            let at = T0 + 3 * DAY + 11 * HOUR + i64i * 5 * MIN + sec(7.0);
            h.events.push((
                at,
                LinkEvent::End {
                    how: StreamState::Goodbye,
                    delivering: false,
                },
            ));
            h.events
                .push((at + 4 * MIN + sec(480.0 * rng.next()), LinkEvent::Hello));
        }
        // Network drops: the agent reconnects within its backoff and
        // replays what it spooled.
        if i % 10 == 4 {
            let at = T0 + 4 * DAY + 14 * HOUR + i64i * 2 * MIN + sec(20.0);
            h.events.push((
                at,
                LinkEvent::End {
                    how: StreamState::Dropped,
                    delivering: true,
                },
            ));
            h.events.push((at + sec(0.2 + 30.0 * rng.next()), LinkEvent::Hello));
        }
        // Overload: this collector sheds the stream, the agent fails over
        // and comes back at its failback probe.
        if i % 20 == 5 {
            let at = T0 + 5 * DAY + 16 * HOUR + i64i * MIN + sec(11.0);
            h.events.push((
                at,
                LinkEvent::End {
                    how: StreamState::Refused,
                    delivering: false,
                },
            ));
            h.events.push((at + sec(305.0 + 5.0 * rng.next()), LinkEvent::Hello));
        }
        h.events.sort_by_key(|(at, _)| *at);
    }
    (down, up)
}

/// A rule's parsed expression, evaluated at a time over the simulation.
type Query = Box<dyn Fn(&Sim, i64) -> Result<Value, eval::EvalError>>;

/// The rule pack and detectors, evaluated like the collector's loop.
struct Engine {
    groups: Vec<RuleGroup>,
    parsed: Vec<Vec<Query>>,
    detectors: Vec<Arc<dyn Detector>>,
    board: AlertBoard,
    last_run: HashMap<String, i64>,
}

impl Engine {
    fn new() -> anyhow::Result<Engine> {
        let groups = parse_rule_file(BUILTIN_FILE, BUILTIN_RULES).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let parsed = groups
            .iter()
            .map(|g| {
                g.rules
                    .iter()
                    .map(|r| {
                        let expr = eval::parse(&r.expr).map_err(|e| anyhow::anyhow!("{}: {e}", r.expr))?;
                        let query: Query = Box::new(move |sim: &Sim, t: i64| {
                            eval::eval_instant(&expr, sim, t, Limits::default(), None)
                        });
                        Ok(query)
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Engine {
            groups,
            parsed,
            detectors: default_detectors(None),
            board: AlertBoard::new(),
            last_run: HashMap::new(),
        })
    }

    /// The collector restarted at `started_ms`: its detectors start afresh
    /// (host silence learns the start); the alert board is persisted and
    /// stays.
    fn restart(&mut self, started_ms: i64) -> anyhow::Result<()> {
        self.detectors = DetectorConfig::default()
            .build(None, started_ms)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.last_run.clear();
        Ok(())
    }

    /// An empty simulation keeping rollups of what rollup detectors read.
    fn new_sim(&self) -> Sim {
        Sim {
            rollup_metrics: self
                .detectors
                .iter()
                .filter(|d| d.rollup().is_some())
                .flat_map(|d| d.inputs().iter().copied())
                .collect(),
            ..Sim::default()
        }
    }

    fn due(&mut self, key: &str, every: i64, now: i64) -> bool {
        let last = self.last_run.get(key).copied().unwrap_or(i64::MIN);
        if now.saturating_sub(last) < every {
            return false;
        }
        self.last_run.insert(key.to_string(), now);
        true
    }

    /// One evaluation round; returns the alerts that started firing.
    fn step(&mut self, sim: &mut Sim, hosts: &[HostRecord], now: i64) -> Vec<Labels> {
        let mut fired = Vec::new();
        let mut silent = HashSet::new();
        for (i, d) in self.detectors.clone().iter().enumerate() {
            let key = detector_key(d.name());
            if !self.due(&key, d.every_ms(), now) {
                continue;
            }
            let from = now - d.window_ms() + 1;
            let by_metric = d
                .inputs()
                .iter()
                .map(|m| {
                    let sel = match d.rollup() {
                        Some(_) => sim.select_rollup(m, from, now),
                        None => sim
                            .select(&[Matcher::equal(METRIC_NAME, *m)], from, now)
                            .unwrap_or_default(),
                    };
                    (*m, sel)
                })
                .collect();
            let active = d.evaluate(&Inputs::new(by_metric, hosts.to_vec()), now);
            let timing = Timing {
                hold_ms: d.hold_ms(),
                keep_firing_ms: 0,
            };
            let t = self.board.apply(&key, timing, active, now, &silent);
            fired.extend(t.fired.into_iter().map(|a| a.labels));
            if i == 0 {
                silent = self.board.firing_instances(&key);
            }
        }
        for gi in 0..self.groups.len() {
            let g = &self.groups[gi];
            let every = g.interval.map_or(STEP_MS, |d| d.as_millis() as i64);
            let group_key = format!("{}/{}", g.file, g.name);
            if !self.due(&group_key, every, now) {
                continue;
            }
            let g = &self.groups[gi];
            for (ri, rule) in g.rules.iter().enumerate() {
                if let RuleKind::Recording { record } = &rule.kind {
                    // Stored like the collector stores them, so alerts of
                    // later evaluations can read them.
                    if let Ok(Value::Vector(v)) = (self.parsed[gi][ri])(sim, now) {
                        for s in v {
                            let mut pairs: Vec<(String, String)> = s
                                .labels
                                .pairs()
                                .iter()
                                .filter(|(k, _)| k != METRIC_NAME)
                                .cloned()
                                .collect();
                            pairs.extend(rule.labels.iter().map(|(k, raw, _)| (k.clone(), raw.clone())));
                            pairs.push((METRIC_NAME.to_string(), record.clone()));
                            sim.push(Labels::new(pairs), now, s.v);
                        }
                    }
                    continue;
                }
                let RuleKind::Alerting {
                    name,
                    hold,
                    keep_firing_for,
                    annotations,
                } = &rule.kind
                else {
                    continue;
                };
                let samples = match (self.parsed[gi][ri])(sim, now) {
                    Ok(Value::Vector(v)) => v.into_iter().map(|s| (s.labels, s.v)).collect(),
                    Ok(Value::Scalar { v, .. }) => vec![(Labels::default(), v)],
                    Ok(_) => Vec::new(),
                    Err(e) => {
                        eprintln!("rule {name}: {e}");
                        continue;
                    }
                };
                let Ok(active) = alerts_for(name, &rule.labels, annotations, samples) else {
                    continue;
                };
                let timing = Timing {
                    hold_ms: hold.as_millis() as i64,
                    keep_firing_ms: keep_firing_for.as_millis() as i64,
                };
                let t = self.board.apply(&rule_key(g, ri), timing, active, now, &silent);
                fired.extend(t.fired.into_iter().map(|a| a.labels));
            }
        }
        fired
    }
}

/// What one scenario found.
struct Outcome {
    detected: Option<(String, i64)>,
    hard_at: Option<i64>,
    /// Every alert that fired for the faulty host after the fault, with
    /// the time since the fault it first fired at.
    all: Vec<(String, i64)>,
}

fn run_scenario(fault: Fault, hard_fault: bool, hosts_n: usize, seed: u64) -> anyhow::Result<Outcome> {
    let mut rng = Rng(seed ^ (fault as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut hosts: Vec<Host> = (0..hosts_n).map(|i| Host::new(i, &mut rng)).collect();
    hosts[0].fault = Some(fault);
    let mut engine = Engine::new()?;
    let mut sim = engine.new_sim();
    // Warm up long enough for every window (trend: 12 h), then watch. The
    // learned baseline needs every hour of the day on 3 days (min_days), so
    // the scenario made for it warms up 4 days.
    let fault_at = T0
        + match fault {
            Fault::TempCreep => 4 * DAY,
            _ => 13 * HOUR,
        };
    let limit = fault_at
        + match fault {
            Fault::NvmeWearOut => 170 * HOUR,
            Fault::DiskFilling => 110 * HOUR,
            Fault::EccStorm => ECC_UE_AFTER + 2 * HOUR,
            Fault::SmartRealloc => 50 * HOUR,
            Fault::VoltageDrift => 36 * HOUR,
            Fault::TempCreep => 16 * HOUR,
            _ => 8 * HOUR,
        };
    let mut all: Vec<(String, i64)> = Vec::new();
    let mut detected = None;
    let mut hard_at = None;
    let mut t = T0;
    while t <= limit {
        for h in hosts.iter_mut() {
            h.apply_events(t);
            let hard = h.sample(&mut sim, &mut rng, t, t - fault_at);
            if hard && h.fault.is_some() && t >= fault_at && hard_at.is_none() {
                hard_at = Some(t);
            }
        }
        if (t - T0) % HOUR == 0 {
            sim.prune(t);
        }
        let records: Vec<HostRecord> = hosts.iter().map(Host::record).collect();
        for l in engine.step(&mut sim, &records, t) {
            let name = l.get("alertname");
            if l.get("instance") == hosts[0].name && t >= fault_at && !all.iter().any(|(a, _)| a == name) {
                all.push((name.to_string(), t - fault_at));
            }
            if l.get("instance") == hosts[0].name && t >= fault_at && detected.is_none() {
                detected = Some((name.to_string(), t - fault_at));
            } else if l.get("instance") != hosts[0].name || t < fault_at {
                eprintln!("  false alarm during {fault:?}: {l} at +{} min", (t - fault_at) / MIN);
            }
        }
        let done_after = if hard_fault { 2 * HOUR } else { HOUR };
        if detected.is_some() && hard_at.is_some_and(|h| t > h + done_after) {
            break;
        }
        if detected.is_some() && !hard_fault && matches!(fault, Fault::ThermalPaste | Fault::CrcErrors) {
            break;
        }
        // The creep has no hard failure: watch it to its plateau, to see
        // whether the peer comparison ever catches it too.
        if fault == Fault::TempCreep && detected.is_some() && t > fault_at + CREEP_OVER + 2 * HOUR {
            break;
        }
        t += STEP_MS;
    }
    Ok(Outcome {
        detected,
        hard_at: hard_at.map(|h| h - fault_at),
        all,
    })
}

fn human(ms: i64) -> String {
    let s = ms / 1000;
    if s.abs() < 3600 {
        format!("{}m{:02}s", s / 60, (s % 60).abs())
    } else {
        format!("{:.1}h", ms as f64 / HOUR as f64)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "hostpulse fault-scenario benchmark: built-in rule pack + detectors, {STEP_MS} ms sampling and evaluation"
    );
    println!(
        "peer: the ideal of issue 6 (all detected; hard faults <= 2 intervals = 2m00s; trend lead >= 24h; 0 healthy alerts)\n"
    );
    println!(
        "{:<45} {:<10} {:<34} {:>10} {:>12} {:>10}",
        "fault", "kind", "first alert", "detect", "hard fail", "lead"
    );
    let started = Instant::now();
    let mut all_detected = true;
    let only = args.only.as_deref().map(str::to_lowercase);
    for (fault, text, hard) in FAULTS {
        if only
            .as_deref()
            .is_some_and(|o| !format!("{fault:?} {text}").to_lowercase().contains(o))
        {
            continue;
        }
        let o = run_scenario(*fault, *hard, args.scenario_hosts, args.seed)?;
        let (alert, detect) = match &o.detected {
            Some((a, d)) => (a.clone(), human(*d)),
            None => {
                all_detected = false;
                ("NOT DETECTED".to_string(), "-".to_string())
            }
        };
        let hard_s = o.hard_at.map_or("-".to_string(), human);
        let lead = match (&o.detected, o.hard_at) {
            (Some((_, d)), Some(h)) if !*hard => human(h - d),
            _ => "-".to_string(),
        };
        println!(
            "{text:<45} {:<10} {alert:<34} {detect:>10} {hard_s:>12} {lead:>10}",
            if *hard { "hard" } else { "trend/soft" }
        );
        let also: Vec<String> = o
            .all
            .iter()
            .skip(1)
            .map(|(a, d)| format!("{a} +{}", human(*d)))
            .collect();
        if !also.is_empty() {
            println!("    then: {}", also.join(", "));
        }
    }
    println!(
        "\nall faults detected: {all_detected}  ({:.1} s)",
        started.elapsed().as_secs_f64()
    );

    // The healthy fleet.
    let started = Instant::now();
    let mut rng = Rng(args.seed);
    let mut hosts: Vec<Host> = (0..args.hosts).map(|i| Host::new(i, &mut rng)).collect();
    let mut engine = Engine::new()?;
    let mut sim = engine.new_sim();
    let end = T0 + (args.healthy_days * DAY as f64) as i64;
    let (down, up) = schedule_disruptions(&mut hosts, &mut Rng(args.seed ^ 0x5eed));
    let mut alerts: BTreeMap<String, usize> = BTreeMap::new();
    let (mut naive_pages, mut naive_silent) = (0usize, HashSet::new());
    let mut t = T0;
    while t <= end {
        for h in hosts.iter_mut() {
            h.apply_events(t);
            h.sample(&mut sim, &mut rng, t, -1);
        }
        if (t - T0) % HOUR == 0 {
            sim.prune(t);
        }
        // The collector is down: nothing is evaluated. It comes back with
        // a fresh start time and its persisted alert board.
        if (down..up).contains(&t) {
            t += STEP_MS;
            continue;
        }
        if t - STEP_MS < up && t >= up {
            engine.restart(up)?;
        }
        let records: Vec<HostRecord> = hosts.iter().map(Host::record).collect();
        // The control: the same records judged by two intervals from the
        // last report alone, as if every stream were open.
        let naive: Vec<HostRecord> = records
            .iter()
            .map(|r| HostRecord {
                stream: StreamState::Open,
                ..r.clone()
            })
            .collect();
        let now_silent: HashSet<String> = HostSilent::default()
            .silent_hosts(&naive, t)
            .iter()
            .map(|a| a.labels.get("instance").to_string())
            .collect();
        naive_pages += now_silent.difference(&naive_silent).count();
        naive_silent = now_silent;
        for l in engine.step(&mut sim, &records, t) {
            *alerts
                .entry(format!("{}{{instance={}}}", l.get("alertname"), l.get("instance")))
                .or_default() += 1;
        }
        t += STEP_MS;
    }
    let firing = engine
        .board
        .alerts()
        .iter()
        .filter(|a| a.state == AlertState::Firing)
        .count();
    println!(
        "\nhealthy fleet disruptions (none is a fault): collector restart (10 min down, half the agents fail over \
         and come back at their 5-min failback probe) on day 2, rolling agent restart on day 3, reboots of 1 host \
         in 20 (4-12 min, clean goodbye) on day 4, stream drops of 1 host in 10 on day 5, overload shedding of 1 \
         host in 20 (fail over, back after 5 min) on day 6"
    );
    println!(
        "healthy fleet: {} hosts x {:.1} days, {} series: {} alerts fired ({} firing at the end)  ({:.1} s)",
        args.hosts,
        args.healthy_days,
        sim.series.len(),
        alerts.values().sum::<usize>(),
        firing,
        started.elapsed().as_secs_f64()
    );
    for (a, n) in &alerts {
        println!("  {a} x{n}");
    }
    println!(
        "control: judged by two intervals from the last report alone (stream state and collector start ignored), \
         the same week would have paged HostpulseHostSilent {naive_pages} times"
    );
    Ok(())
}
