//! The sampler: runs every enabled source once per cycle, isolates their
//! failures, and records per-source success, duration and timeouts plus the
//! agent's own cost. One timestamp per cycle.
//!
//! Sources run in one of two ways, chosen by [`Source::may_block`]:
//!
//! - **Inline** (every source that reads procfs, sysfs or `/dev/kmsg`
//!   without blocking): one after another on the thread that calls
//!   [`Sampler::sample`]. Waking a thread per source per cycle cost more
//!   than the reads themselves (35 threads for ~1 ms of reads), and each
//!   thread kept a stack and a malloc arena resident. Each inline source has
//!   a time budget ([`INLINE_BUDGET`]); one that takes longer (a hwmon
//!   driver stuck on a slow bus) is moved to its own worker thread for the
//!   rest of the process's life, so it can delay at most one cycle.
//! - **Isolated** (sources that can block for long: external commands,
//!   `statvfs` on possibly hung mounts): each on its own worker thread,
//!   reused across cycles, started before the inline sources run so both
//!   proceed together. A source still busy at the cycle deadline cannot hold
//!   the cycle: it is reported `hostpulse_source_success=0` for the cycle,
//!   counted once in `hostpulse_source_timeouts_total`, and not started
//!   again until it has returned. Whatever it returns late is used in the
//!   next cycle.
//!
//! Either way a source that panics is reported as failed, not fatal, and
//! outputs are assembled in registry order.

use std::collections::{BTreeMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::emit::{Atom, Emitter, KernelEvent, MetricMeta, MetricType, Sample};
use crate::paths::HostPaths;
use crate::series_text::{SeriesTexts, SourceSeries};
use crate::source::{Source, SourceError, SourceOptions};
use crate::sources::files::Files;
use crate::sources::{REGISTRY, find};

/// How long a cycle waits for each source unless the sampler is told
/// otherwise (`run` uses the smaller of this and half the interval).
pub const DEFAULT_SOURCE_DEADLINE: Duration = Duration::from_secs(5);

/// How long one collection of an inline source may take before the source
/// is moved to a worker thread of its own. Reads of procfs and sysfs take
/// microseconds; a source this slow is waiting on hardware.
pub const INLINE_BUDGET: Duration = Duration::from_millis(250);

/// The agent's own metrics, defined in one place.
mod self_metrics {
    pub const SOURCE_SUCCESS: (&str, &str) = (
        "hostpulse_source_success",
        "Whether the source's last collection succeeded (1) or failed or overran its deadline (0).",
    );
    pub const SOURCE_DURATION: (&str, &str) = (
        "hostpulse_source_duration_seconds",
        "How long the source's last collection took (for a source past its deadline: how long it has been running).",
    );
    pub const SOURCE_TIMEOUTS: (&str, &str) = (
        "hostpulse_source_timeouts_total",
        "Collections of the source that ran past the cycle deadline.",
    );
    /// node_exporter's names for the two above (label `collector`, the
    /// source's name), which the "Node Exporter Full" dashboard reads.
    pub const SCRAPE_COLLECTOR_SUCCESS: (&str, &str) = (
        "node_scrape_collector_success",
        "node_exporter: Whether a collector succeeded.",
    );
    pub const SCRAPE_COLLECTOR_DURATION: (&str, &str) = (
        "node_scrape_collector_duration_seconds",
        "node_exporter: Duration of a collector scrape.",
    );
    pub const CYCLE_DURATION: (&str, &str) = (
        "hostpulse_agent_cycle_duration_seconds",
        "How long this sampling cycle took, waiting for sources included.",
    );
    pub const RESIDENT_MEMORY: (&str, &str) = (
        "hostpulse_agent_resident_memory_bytes",
        "Resident memory of the agent process.",
    );
    pub const CPU_SECONDS: (&str, &str) = (
        "hostpulse_agent_cpu_seconds_total",
        "User and system CPU time the agent process has used.",
    );
}

/// One sampling cycle's output.
#[derive(Clone, Debug)]
pub struct Cycle {
    /// When the cycle started, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Every sample of the cycle.
    pub samples: Vec<Sample>,
    /// Type and help of every metric name in `samples`.
    pub meta: BTreeMap<Atom, MetricMeta>,
    /// Kernel events seen during the cycle.
    pub events: Vec<KernelEvent>,
}

/// The most recent cycle, shared with readers that must not sample again
/// (the local `/metrics` endpoint of `run --listen`).
#[derive(Debug, Default)]
pub struct LatestCycle {
    slot: Mutex<Option<(Instant, Arc<Cycle>)>>,
}

impl LatestCycle {
    /// The last published cycle and when it was published.
    pub fn get(&self) -> Option<(Instant, Arc<Cycle>)> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, cycle: Arc<Cycle>) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), cycle));
    }
}

/// What one collection produced.
struct Done {
    index: usize,
    output: Emitter,
    result: Result<(), SourceError>,
    elapsed: Duration,
}

/// How a source is run.
enum Runner {
    /// On the sampler's thread; `None` only while being moved to a worker.
    Inline(Option<Box<dyn Source>>),
    /// On its own thread: sends "collect now"; `None` when the thread could
    /// not be started or has exited.
    Isolated(Option<mpsc::Sender<()>>),
}

/// The sampler's state for one source.
struct Slot {
    name: &'static str,
    runner: Runner,
    /// Set while an isolated collection is running.
    busy_since: Option<Instant>,
    /// The running collection already counted as a timeout.
    counted_timeout: bool,
    timeouts: u64,
    /// A result received but not yet put into a cycle.
    pending: Option<Done>,
    /// Samples the source emitted in its last inline collection.
    last_len: usize,
    /// The source's pre-rendered series (exposition path).
    series: SourceSeries,
}

/// Runs a fixed set of sources against one `HostPaths`.
pub struct Sampler {
    slots: Vec<Slot>,
    paths: Arc<HostPaths>,
    results: mpsc::Receiver<Done>,
    /// Handed to workers, including ones started for demoted inline sources.
    done_tx: mpsc::Sender<Done>,
    deadline: Duration,
    inline_budget: Duration,
    /// Sources that already reported a missing permission or a timeout; not
    /// logged again.
    reported_denied: HashSet<&'static str>,
    reported_timeout: HashSet<&'static str>,
    procfs_self: PathBuf,
    /// Kept descriptors of the agent's own `status` and `stat`, read every
    /// cycle for the self metrics.
    self_files: Files,
    /// Samples in the last cycle, to size the next one's vector.
    last_cycle_len: usize,
    publish: Option<Arc<LatestCycle>>,
    /// Every series of the exposition path, pre-rendered
    /// ([`Sampler::render_text`]).
    texts: SeriesTexts,
    /// The pre-rendered series of the sampler's own metrics.
    self_series: SourceSeries,
}

/// `--only` named a source that does not exist.
#[derive(Debug, thiserror::Error)]
#[error("unknown source {name:?}; known sources: {known}")]
pub struct UnknownSource {
    /// The name given.
    pub name: String,
    /// Comma-separated list of valid names.
    pub known: String,
}

impl Sampler {
    /// A sampler running `only` (or every default source when empty) with
    /// default source options.
    pub fn new(paths: HostPaths, only: &[String]) -> Result<Self, UnknownSource> {
        Self::build(paths, only, &[], &SourceOptions::default())
    }

    /// A sampler running `only` (or every default-on source when empty),
    /// minus `disable`, with the given source options.
    pub fn build(
        paths: HostPaths,
        only: &[String],
        disable: &[String],
        options: &SourceOptions,
    ) -> Result<Self, UnknownSource> {
        let unknown = |name: &String| UnknownSource {
            name: name.clone(),
            known: REGISTRY.iter().map(|e| e.name).collect::<Vec<_>>().join(","),
        };
        for name in only.iter().chain(disable) {
            find(name).ok_or_else(|| unknown(name))?;
        }
        let sources = REGISTRY
            .iter()
            .filter(|e| {
                if only.is_empty() {
                    e.default_on
                } else {
                    only.iter().any(|n| n == e.name)
                }
            })
            .filter(|e| !disable.iter().any(|n| n == e.name))
            .map(|e| (e.make)(options))
            .collect();
        Ok(Self::with_sources(paths, sources))
    }

    /// A sampler over explicitly built sources (tests use this). Starts one
    /// worker thread per source that [may block](Source::may_block); the
    /// others run on the caller's thread.
    pub fn with_sources(paths: HostPaths, sources: Vec<Box<dyn Source>>) -> Self {
        let paths = Arc::new(paths);
        let (done_tx, results) = mpsc::channel();
        let slots = sources
            .into_iter()
            .enumerate()
            .map(|(index, source)| {
                let name = source.name();
                let runner = if source.may_block() {
                    Runner::Isolated(spawn_worker(index, source, paths.clone(), done_tx.clone()))
                } else {
                    Runner::Inline(Some(source))
                };
                Slot {
                    name,
                    runner,
                    busy_since: None,
                    counted_timeout: false,
                    timeouts: 0,
                    pending: None,
                    last_len: 0,
                    series: SourceSeries::default(),
                }
            })
            .collect();
        Sampler {
            slots,
            paths,
            results,
            done_tx,
            deadline: DEFAULT_SOURCE_DEADLINE,
            inline_budget: INLINE_BUDGET,
            reported_denied: HashSet::new(),
            reported_timeout: HashSet::new(),
            // The agent's own usage is read from its own process, never from
            // the (possibly fixture) procfs it samples.
            procfs_self: PathBuf::from("/proc/self"),
            self_files: Files::default(),
            last_cycle_len: 0,
            publish: None,
            texts: SeriesTexts::default(),
            self_series: SourceSeries::default(),
        }
    }

    /// Sets how long a cycle waits for its isolated sources.
    pub fn set_deadline(&mut self, deadline: Duration) {
        self.deadline = deadline;
    }

    /// The deadline a cycle waits for its isolated sources.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Sets how long one inline collection may take before its source is
    /// moved to a worker thread of its own.
    pub fn set_inline_budget(&mut self, budget: Duration) {
        self.inline_budget = budget;
    }

    /// After every cycle, also store it in `latest` (for the local
    /// `/metrics` endpoint, so it never samples a second time).
    pub fn publish_to(&mut self, latest: Arc<LatestCycle>) {
        self.publish = Some(latest);
    }

    /// Names of the sources this sampler runs.
    pub fn source_names(&self) -> Vec<&'static str> {
        self.slots.iter().map(|w| w.name).collect()
    }

    /// Names of the sources that run on worker threads of their own (those
    /// that may block, and inline sources that overran their budget).
    pub fn isolated_source_names(&self) -> Vec<&'static str> {
        self.slots
            .iter()
            .filter(|w| matches!(w.runner, Runner::Isolated(_)))
            .map(|w| w.name)
            .collect()
    }

    fn accept(&mut self, done: Done) {
        if let Some(w) = self.slots.get_mut(done.index) {
            w.busy_since = None;
            w.counted_timeout = false;
            w.pending = Some(done);
        }
    }

    /// Runs one cycle: starts every idle isolated source, runs the inline
    /// ones in turn, waits for the isolated ones up to the deadline, and
    /// assembles their output in registry order.
    pub fn sample(&mut self) -> Cycle {
        let started = Instant::now();
        let timestamp_ms = now_ms();
        self.run_sources(started, false);
        let mut out = Emitter::with_capacity(self.last_cycle_len);
        for i in 0..self.slots.len() {
            let (name, ok, elapsed, output) = self.finish_source(i);
            if let Some(output) = output {
                // A failed source may have emitted part of its series; keep
                // them, they are correct values.
                out.extend(output);
            }
            self.emit_source_status(&mut out, i, name, ok, elapsed);
        }
        self.emit_self(&mut out);
        out.gauge(
            self_metrics::CYCLE_DURATION.0,
            self_metrics::CYCLE_DURATION.1,
            &[],
            started.elapsed().as_secs_f64(),
        );
        let events = out.take_events();
        let (samples, meta) = out.take();
        self.last_cycle_len = samples.len();
        let cycle = Cycle {
            timestamp_ms,
            samples,
            meta,
            events,
        };
        if let Some(latest) = &self.publish {
            latest.set(Arc::new(cycle.clone()));
        }
        cycle
    }

    /// Runs one cycle like [`sample`](Self::sample) and appends it to `text`
    /// in Prometheus text format, the same text `exposition::render` prints
    /// for that cycle, from series pre-rendered when they first appeared
    /// ([`crate::series_text`]): what `serve` does per scrape. The cycle is
    /// not published to [`LatestCycle`] and its kernel events are dropped
    /// (the text format has no place for them).
    pub fn render_text(&mut self, text: &mut String) {
        let started = Instant::now();
        self.texts.begin();
        self.run_sources(started, true);
        let mut series = std::mem::take(&mut self.self_series);
        SeriesTexts::begin_source(&mut series);
        let mut out = Emitter::with_series(series);
        for i in 0..self.slots.len() {
            let (name, ok, elapsed, output) = self.finish_source(i);
            if let Some(mut output) = output {
                let mut series = match output.take_series() {
                    Some(series) => series,
                    // Collected on a worker thread into ordinary samples.
                    None => replay(&output, std::mem::take(&mut self.slots[i].series)),
                };
                self.texts.absorb(&mut series);
                self.slots[i].series = series;
            }
            self.emit_source_status(&mut out, i, name, ok, elapsed);
        }
        self.emit_self(&mut out);
        out.gauge(
            self_metrics::CYCLE_DURATION.0,
            self_metrics::CYCLE_DURATION.1,
            &[],
            started.elapsed().as_secs_f64(),
        );
        let mut series = out.take_series().unwrap_or_default();
        self.texts.absorb(&mut series);
        self.self_series = series;
        if self.texts.needs_sweep() {
            self.texts.sweep();
            for slot in &mut self.slots {
                SeriesTexts::forget(&mut slot.series);
            }
            SeriesTexts::forget(&mut self.self_series);
        }
        self.texts.render(text);
    }

    /// The collection part of a cycle: starts every idle isolated source,
    /// runs the inline ones (into pre-rendered series when `dense`), and
    /// waits for the isolated ones up to the deadline.
    fn run_sources(&mut self, started: Instant, dense: bool) {
        // Results of sources that overran an earlier cycle and have since
        // returned belong to this cycle.
        while let Ok(done) = self.results.try_recv() {
            self.accept(done);
        }
        for w in &mut self.slots {
            let Runner::Isolated(jobs) = &mut w.runner else {
                continue;
            };
            if w.busy_since.is_some() || w.pending.is_some() {
                continue;
            }
            if jobs.as_ref().is_some_and(|jobs| jobs.send(()).is_ok()) {
                w.busy_since = Some(Instant::now());
            } else {
                *jobs = None;
            }
        }
        for index in 0..self.slots.len() {
            self.run_inline(index, dense);
        }
        let until = started + self.deadline;
        while self.slots.iter().any(|w| w.busy_since.is_some()) {
            let left = until.saturating_duration_since(Instant::now());
            match self.results.recv_timeout(left) {
                Ok(done) => self.accept(done),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    /// The per-source self metrics of slot `i`.
    fn emit_source_status(&self, out: &mut Emitter, i: usize, name: &str, ok: bool, elapsed: Duration) {
        let labels = [("source", name)];
        out.gauge(
            self_metrics::SOURCE_SUCCESS.0,
            self_metrics::SOURCE_SUCCESS.1,
            &labels,
            if ok { 1.0 } else { 0.0 },
        );
        out.gauge(
            self_metrics::SOURCE_DURATION.0,
            self_metrics::SOURCE_DURATION.1,
            &labels,
            elapsed.as_secs_f64(),
        );
        out.counter(
            self_metrics::SOURCE_TIMEOUTS.0,
            self_metrics::SOURCE_TIMEOUTS.1,
            &labels,
            self.slots[i].timeouts as f64,
        );
        let collector = [("collector", name)];
        out.gauge(
            self_metrics::SCRAPE_COLLECTOR_SUCCESS.0,
            self_metrics::SCRAPE_COLLECTOR_SUCCESS.1,
            &collector,
            if ok { 1.0 } else { 0.0 },
        );
        out.gauge(
            self_metrics::SCRAPE_COLLECTOR_DURATION.0,
            self_metrics::SCRAPE_COLLECTOR_DURATION.1,
            &collector,
            elapsed.as_secs_f64(),
        );
    }

    /// Runs slot `index` on this thread if it is inline; moves it to a
    /// worker of its own when it took longer than the inline budget.
    fn run_inline(&mut self, index: usize, dense: bool) {
        let budget = self.inline_budget;
        let slot = &mut self.slots[index];
        let Runner::Inline(Some(source)) = &mut slot.runner else {
            return;
        };
        let series = dense.then(|| std::mem::take(&mut slot.series));
        let done = collect_once(index, source.as_mut(), &self.paths, slot.last_len, series);
        if !dense {
            slot.last_len = done.output.samples().len();
        }
        let overran = done.elapsed > budget;
        slot.pending = Some(done);
        if !overran {
            return;
        }
        let name = slot.name;
        tracing::warn!(source = name, budget = ?budget, took = ?slot.pending.as_ref().map(|d| d.elapsed), "source took longer than an inline source may; it runs on a worker thread of its own from now on");
        if let Runner::Inline(source) = &mut slot.runner
            && let Some(source) = source.take()
        {
            slot.runner = Runner::Isolated(spawn_worker(index, source, self.paths.clone(), self.done_tx.clone()));
        }
    }

    /// Source `i`'s name, whether it succeeded, its duration, and its
    /// output if it returned one for this cycle.
    fn finish_source(&mut self, i: usize) -> (&'static str, bool, Duration, Option<Emitter>) {
        let w = &mut self.slots[i];
        let name = w.name;
        if let Some(done) = w.pending.take() {
            let ok = match done.result {
                Ok(()) => true,
                Err(SourceError::PermissionDenied { path }) => {
                    if self.reported_denied.insert(name) {
                        tracing::warn!(source = name, path = %path.display(), "missing permission; this source's series are skipped until the agent has it");
                    }
                    false
                }
                Err(e) => {
                    tracing::debug!(source = name, error = %e, "source failed");
                    false
                }
            };
            return (name, ok, done.elapsed, Some(done.output));
        }
        match w.busy_since {
            Some(since) => {
                if !w.counted_timeout {
                    w.counted_timeout = true;
                    w.timeouts += 1;
                    if self.reported_timeout.insert(name) {
                        tracing::warn!(source = name, deadline = ?self.deadline, "source ran past its deadline; skipped until it returns");
                    } else {
                        tracing::debug!(source = name, "source ran past its deadline again");
                    }
                }
                (name, false, since.elapsed(), None)
            }
            None => {
                // The worker thread is gone (could not start, or exited).
                if self.reported_timeout.insert(name) {
                    tracing::warn!(source = name, "source worker is not running; its series are missing");
                }
                (name, false, Duration::ZERO, None)
            }
        }
    }

    fn emit_self(&mut self, out: &mut Emitter) {
        // `statm` rather than `status`: the same resident count (VmRSS), but
        // the kernel prints seven numbers instead of some fifty lines, which
        // took a few percent of a scrape.
        if let Some(rss) = self
            .self_files
            .read_text(&self.procfs_self.join("statm"))
            .ok()
            .and_then(|statm| parse_statm_rss_bytes(statm, page_size()))
        {
            out.gauge(
                self_metrics::RESIDENT_MEMORY.0,
                self_metrics::RESIDENT_MEMORY.1,
                &[],
                rss as f64,
            );
        }
        if let Some(cpu) = self
            .self_files
            .read_text(&self.procfs_self.join("stat"))
            .ok()
            .and_then(parse_stat_cpu_seconds)
        {
            out.counter(self_metrics::CPU_SECONDS.0, self_metrics::CPU_SECONDS.1, &[], cpu);
        }
    }
}

/// Runs one collection of `source`, turning a panic into a failure.
/// `capacity` is how many samples it emitted last time, so the output
/// vector is allocated once rather than grown.
/// With `series`, the source records into its pre-rendered series instead.
fn collect_once(
    index: usize,
    source: &mut dyn Source,
    paths: &HostPaths,
    capacity: usize,
    series: Option<SourceSeries>,
) -> Done {
    let mut output = match series {
        Some(mut series) => {
            SeriesTexts::begin_source(&mut series);
            Emitter::with_series(series)
        }
        None => Emitter::with_capacity(capacity),
    };
    let started = Instant::now();
    let name = source.name();
    let result =
        std::panic::catch_unwind(AssertUnwindSafe(|| source.collect(paths, &mut output))).unwrap_or_else(|_| {
            Err(SourceError::Io {
                path: PathBuf::from(name),
                source: std::io::Error::other("source panicked"),
            })
        });
    Done {
        index,
        output,
        result,
        elapsed: started.elapsed(),
    }
}

/// Stack of a worker thread: sources keep their buffers on the heap, so the
/// default 2 MiB is never needed; a smaller reservation keeps the address
/// space and the touched pages of parked threads small.
const WORKER_STACK_BYTES: usize = 256 * 1024;

/// Starts the worker thread of an isolated source; `None` (logged) when the
/// thread could not be started.
fn spawn_worker(
    index: usize,
    mut source: Box<dyn Source>,
    paths: Arc<HostPaths>,
    done: mpsc::Sender<Done>,
) -> Option<mpsc::Sender<()>> {
    let name = source.name();
    let (jobs_tx, jobs) = mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name(format!("hp-src-{name}"))
        .stack_size(WORKER_STACK_BYTES)
        .spawn(move || {
            // Ends when the sampler (the job sender) is dropped.
            let mut last_len = 0;
            while jobs.recv().is_ok() {
                let collected = collect_once(index, source.as_mut(), &paths, last_len, None);
                last_len = collected.output.samples().len();
                if done.send(collected).is_err() {
                    return;
                }
            }
        });
    match spawned {
        Ok(_) => Some(jobs_tx),
        Err(e) => {
            tracing::warn!(source = name, error = %e, "could not start the source's worker thread");
            None
        }
    }
}

/// Records the ordinary samples of a worker's `output` into `series`, the
/// source's pre-rendered series, as if the source had emitted them there.
fn replay(output: &Emitter, mut series: SourceSeries) -> SourceSeries {
    SeriesTexts::begin_source(&mut series);
    let mut labels: Vec<(&str, &str)> = Vec::new();
    for sample in output.samples() {
        labels.clear();
        labels.extend(sample.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let (kind, help) = match output.meta().get(sample.name.as_str()) {
            Some(meta) => (meta.kind, meta.help.as_str()),
            None => (MetricType::Untyped, ""),
        };
        series.push(&sample.name, kind, help, &labels, sample.value);
    }
    series
}

/// Resident memory from `/proc/<pid>/status` (`VmRSS:  1234 kB`), in bytes.
pub fn parse_status_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

/// Resident memory from `/proc/<pid>/statm` (`size resident shared ...`, in
/// pages), in bytes; the count `VmRSS` of `status` shows.
pub fn parse_statm_rss_bytes(statm: &str, page_size: u64) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(page_size)
}

/// The size of a memory page, for `statm`'s counts.
#[cfg(unix)]
fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// The size of a memory page, for `statm`'s counts.
#[cfg(not(unix))]
fn page_size() -> u64 {
    4096
}

/// User plus system CPU seconds from `/proc/<pid>/stat`. The command name
/// (field 2) may contain spaces and parentheses, so fields are counted from
/// the last `)`. Times are in USER_HZ ticks, which Linux fixes at 100 for
/// user space on every architecture that matters (Prometheus' procfs
/// library makes the same assumption), so no `sysconf` call is needed.
pub fn parse_stat_cpu_seconds(stat: &str) -> Option<f64> {
    const USER_HZ: f64 = 100.0;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// Milliseconds since the Unix epoch on the wall clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Fails;
    impl Source for Fails {
        fn name(&self) -> &'static str {
            "fails"
        }
        fn collect(&mut self, _: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
            out.gauge("partial", "h", &[], 1.0);
            Err(SourceError::parse(std::path::Path::new("/x"), "bad"))
        }
    }
    struct Works;
    impl Source for Works {
        fn name(&self) -> &'static str {
            "works"
        }
        fn collect(&mut self, _: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
            out.gauge("whole", "h", &[], 2.0);
            Ok(())
        }
    }
    struct Panics;
    impl Source for Panics {
        fn name(&self) -> &'static str {
            "panics"
        }
        fn collect(&mut self, _: &HostPaths, _: &mut Emitter) -> Result<(), SourceError> {
            panic!("a source bug")
        }
    }

    /// Blocks in `collect` until the test sends on `release`; tells the test
    /// each time it starts.
    struct Slow {
        starts: Arc<AtomicUsize>,
        started: mpsc::Sender<()>,
        release: mpsc::Receiver<()>,
    }
    impl Source for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn may_block(&self) -> bool {
            true
        }
        fn collect(&mut self, _: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
            self.starts.fetch_add(1, Ordering::SeqCst);
            let _ = self.started.send(());
            let _ = self.release.recv();
            out.gauge("slow_value", "h", &[], 7.0);
            Ok(())
        }
    }

    fn get(cycle: &Cycle, name: &str, source: &str) -> Option<f64> {
        cycle
            .samples
            .iter()
            .find(|x| x.name == name && x.labels.iter().any(|(k, v)| k == "source" && v == source))
            .map(|x| x.value)
    }

    /// The value of `name{collector=source}` (node_exporter's label).
    fn get_collector(cycle: &Cycle, name: &str, source: &str) -> Option<f64> {
        cycle
            .samples
            .iter()
            .find(|x| x.name == name && x.labels.iter().any(|(k, v)| k == "collector" && v == source))
            .map(|x| x.value)
    }

    #[test]
    fn node_exporter_scrape_series_mirror_the_source_series() {
        let mut s = Sampler::with_sources(HostPaths::default(), vec![Box::new(Fails), Box::new(Works)]);
        let cycle = s.sample();
        for source in ["fails", "works"] {
            assert_eq!(
                get_collector(&cycle, "node_scrape_collector_success", source),
                get(&cycle, "hostpulse_source_success", source),
                "{source}"
            );
            assert_eq!(
                get_collector(&cycle, "node_scrape_collector_duration_seconds", source),
                get(&cycle, "hostpulse_source_duration_seconds", source),
                "{source}"
            );
        }
        assert_eq!(
            get_collector(&cycle, "node_scrape_collector_success", "fails"),
            Some(0.0)
        );
        assert_eq!(
            get_collector(&cycle, "node_scrape_collector_success", "works"),
            Some(1.0)
        );
        assert_eq!(
            cycle.meta["node_scrape_collector_success"].help,
            "node_exporter: Whether a collector succeeded."
        );
    }

    #[test]
    fn a_failing_source_does_not_stop_the_others() {
        let mut s = Sampler::with_sources(
            HostPaths::default(),
            vec![Box::new(Fails), Box::new(Panics), Box::new(Works)],
        );
        let cycle = s.sample();
        assert_eq!(get(&cycle, "hostpulse_source_success", "fails"), Some(0.0));
        assert_eq!(get(&cycle, "hostpulse_source_success", "panics"), Some(0.0));
        assert_eq!(get(&cycle, "hostpulse_source_success", "works"), Some(1.0));
        assert_eq!(get(&cycle, "hostpulse_source_timeouts_total", "works"), Some(0.0));
        assert!(cycle.samples.iter().any(|x| x.name == "whole" && x.value == 2.0));
        assert!(cycle.samples.iter().any(|x| x.name == "partial" && x.value == 1.0));
        // The panicking source's worker survives and runs again.
        let again = s.sample();
        assert_eq!(get(&again, "hostpulse_source_success", "panics"), Some(0.0));
        assert_eq!(get(&again, "hostpulse_source_success", "works"), Some(1.0));
    }

    #[test]
    fn outputs_keep_source_order() {
        let mut s = Sampler::with_sources(HostPaths::default(), vec![Box::new(Works), Box::new(Fails)]);
        let cycle = s.sample();
        let names: Vec<&str> = cycle
            .samples
            .iter()
            .map(|x| x.name.as_str())
            .filter(|n| *n == "whole" || *n == "partial")
            .collect();
        assert_eq!(names, vec!["whole", "partial"]);
    }

    #[test]
    fn a_slow_source_times_out_and_is_not_started_twice() {
        let starts = Arc::new(AtomicUsize::new(0));
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let slow = Slow {
            starts: starts.clone(),
            started: started_tx,
            release: release_rx,
        };
        let mut s = Sampler::with_sources(HostPaths::default(), vec![Box::new(slow), Box::new(Works)]);
        let deadline = Duration::from_millis(200);
        s.set_deadline(deadline);

        let t = Instant::now();
        let first = s.sample();
        let took = t.elapsed();
        // The source is still blocked, so only the deadline can have ended the cycle.
        assert!(took >= deadline, "{took:?}");
        assert!(took < deadline * 10, "cycle waited for the slow source: {took:?}");
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(get(&first, "hostpulse_source_success", "slow"), Some(0.0));
        assert_eq!(get(&first, "hostpulse_source_timeouts_total", "slow"), Some(1.0));
        assert_eq!(get(&first, "hostpulse_source_success", "works"), Some(1.0));
        assert!(!first.samples.iter().any(|x| x.name == "slow_value"));

        // Still blocked: skipped again, not started a second time, and the
        // same overrun is not counted twice.
        let second = s.sample();
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        assert_eq!(get(&second, "hostpulse_source_success", "slow"), Some(0.0));
        assert_eq!(get(&second, "hostpulse_source_timeouts_total", "slow"), Some(1.0));

        // Released: its late result is used by the next cycle, and the cycle
        // after that starts it again.
        s.set_deadline(Duration::from_secs(30));
        release.send(()).unwrap();
        let third = s.sample();
        assert_eq!(get(&third, "hostpulse_source_success", "slow"), Some(1.0));
        assert!(third.samples.iter().any(|x| x.name == "slow_value" && x.value == 7.0));
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        release.send(()).unwrap();
        let fourth = s.sample();
        assert_eq!(starts.load(Ordering::SeqCst), 2);
        assert_eq!(get(&fourth, "hostpulse_source_success", "slow"), Some(1.0));
        assert_eq!(get(&fourth, "hostpulse_source_timeouts_total", "slow"), Some(1.0));
    }

    /// Records the thread each collection ran on; works for `work` (a
    /// measured workload, not synchronisation) and, once `block` is set,
    /// waits on `release` like a source stuck on hardware.
    struct Probe {
        threads: Arc<Mutex<Vec<std::thread::ThreadId>>>,
        work: Duration,
        block: Arc<std::sync::atomic::AtomicBool>,
        release: Mutex<mpsc::Receiver<()>>,
    }
    impl Source for Probe {
        fn name(&self) -> &'static str {
            "probe"
        }
        fn collect(&mut self, _: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
            self.threads.lock().unwrap().push(std::thread::current().id());
            let until = Instant::now() + self.work;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            if self.block.load(Ordering::SeqCst) {
                let _ = self.release.lock().unwrap().recv();
            }
            out.gauge("probe_value", "h", &[], 3.0);
            Ok(())
        }
    }

    /// The test's side of a [`Probe`].
    struct ProbeControl {
        threads: Arc<Mutex<Vec<std::thread::ThreadId>>>,
        block: Arc<std::sync::atomic::AtomicBool>,
        release: mpsc::Sender<()>,
    }

    fn probe(work: Duration) -> (Probe, ProbeControl) {
        let threads = Arc::new(Mutex::new(Vec::new()));
        let block = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (release, release_rx) = mpsc::channel();
        let p = Probe {
            threads: threads.clone(),
            work,
            block: block.clone(),
            release: Mutex::new(release_rx),
        };
        (
            p,
            ProbeControl {
                threads,
                block,
                release,
            },
        )
    }

    #[test]
    fn inline_sources_run_on_the_sampler_thread_and_report_success_and_duration() {
        let (p, control) = probe(Duration::from_millis(20));
        let mut s = Sampler::with_sources(HostPaths::default(), vec![Box::new(p), Box::new(Fails)]);
        // However slow this machine is, the source stays inline here.
        s.set_inline_budget(Duration::from_secs(3600));
        assert!(s.isolated_source_names().is_empty());
        for _ in 0..2 {
            let cycle = s.sample();
            assert_eq!(get(&cycle, "hostpulse_source_success", "probe"), Some(1.0));
            assert_eq!(get(&cycle, "hostpulse_source_success", "fails"), Some(0.0));
            let took = get(&cycle, "hostpulse_source_duration_seconds", "probe").unwrap();
            assert!((0.02..5.0).contains(&took), "{took}");
            assert!(get(&cycle, "hostpulse_source_duration_seconds", "fails").is_some());
            assert_eq!(get(&cycle, "hostpulse_source_timeouts_total", "probe"), Some(0.0));
            assert!(cycle.samples.iter().any(|x| x.name == "probe_value"));
        }
        let me = std::thread::current().id();
        assert_eq!(*control.threads.lock().unwrap(), vec![me, me]);
    }

    #[test]
    fn only_sources_that_may_block_get_a_worker() {
        let opts = SourceOptions {
            smartctl_json_dir: Some(PathBuf::from("/nonexistent")),
            ..SourceOptions::default()
        };
        let only: Vec<String> = ["cpu", "hwmon", "kmsg", "filesystem", "smart", "ipmi"]
            .iter()
            .map(|n| n.to_string())
            .collect();
        let s = Sampler::build(HostPaths::default(), &only, &[], &opts).unwrap();
        assert_eq!(s.isolated_source_names(), vec!["filesystem", "ipmi"]);
        // Running smartctl waits on drives; reading the helper's files does not.
        let s = Sampler::build(
            HostPaths::default(),
            &["smart".to_string()],
            &[],
            &SourceOptions::default(),
        )
        .unwrap();
        assert_eq!(s.isolated_source_names(), vec!["smart"]);
    }

    #[test]
    fn an_inline_source_over_its_budget_moves_to_a_worker_and_then_cannot_hold_the_cycle() {
        let (p, control) = probe(Duration::from_millis(30));
        let mut s = Sampler::with_sources(HostPaths::default(), vec![Box::new(p), Box::new(Works)]);
        s.set_inline_budget(Duration::from_millis(10));
        let deadline = Duration::from_millis(200);
        s.set_deadline(deadline);

        // Over budget: its result still counts, and it is moved.
        let first = s.sample();
        assert_eq!(get(&first, "hostpulse_source_success", "probe"), Some(1.0));
        assert!(first.samples.iter().any(|x| x.name == "probe_value"));
        assert_eq!(s.isolated_source_names(), vec!["probe"]);

        // Now stuck: the cycle ends at the deadline without it.
        control.block.store(true, Ordering::SeqCst);
        let t = Instant::now();
        let second = s.sample();
        let took = t.elapsed();
        assert!(took >= deadline, "{took:?}");
        assert!(took < deadline * 10, "cycle waited for the stuck source: {took:?}");
        assert_eq!(get(&second, "hostpulse_source_success", "probe"), Some(0.0));
        assert_eq!(get(&second, "hostpulse_source_timeouts_total", "probe"), Some(1.0));
        assert_eq!(get(&second, "hostpulse_source_success", "works"), Some(1.0));

        // Released: its late result arrives; it ran on another thread.
        control.block.store(false, Ordering::SeqCst);
        control.release.send(()).unwrap();
        s.set_deadline(Duration::from_secs(30));
        let third = s.sample();
        assert_eq!(get(&third, "hostpulse_source_success", "probe"), Some(1.0));
        let threads = control.threads.lock().unwrap();
        assert_eq!(threads[0], std::thread::current().id());
        assert!(threads[1..].iter().all(|t| *t != threads[0]), "{threads:?}");
    }

    #[test]
    fn self_metrics_describe_this_process() {
        let mut s = Sampler::with_sources(HostPaths::default(), vec![Box::new(Works)]);
        let cycle = s.sample();
        let value = |name: &str| cycle.samples.iter().find(|x| x.name == name).map(|x| x.value);
        assert!(value("hostpulse_agent_cycle_duration_seconds").is_some_and(|v| v >= 0.0));
        if cfg!(target_os = "linux") {
            // A test process has at least a megabyte resident.
            assert!(value("hostpulse_agent_resident_memory_bytes").is_some_and(|v| v > 1e6));
            assert!(value("hostpulse_agent_cpu_seconds_total").is_some_and(|v| v >= 0.0));
        }
    }

    #[test]
    fn published_cycle_is_the_last_one() {
        let latest = Arc::new(LatestCycle::default());
        let mut s = Sampler::with_sources(HostPaths::default(), vec![Box::new(Works)]);
        s.publish_to(latest.clone());
        assert!(latest.get().is_none());
        let cycle = s.sample();
        let (_, published) = latest.get().unwrap();
        assert_eq!(published.timestamp_ms, cycle.timestamp_ms);
        assert_eq!(published.samples, cycle.samples);
    }

    #[test]
    fn proc_self_parsers() {
        let status = "Name:\thostpulse-agent\nVmPeak:\t   20000 kB\nVmRSS:\t    6144 kB\nThreads:\t4\n";
        assert_eq!(parse_status_rss_bytes(status), Some(6144 * 1024));
        assert_eq!(parse_status_rss_bytes("Name:\tx\n"), None);
        assert_eq!(parse_status_rss_bytes("VmRSS:\t12 MB\n"), None);
        assert_eq!(
            parse_statm_rss_bytes("5000 1536 800 200 0 900 0\n", 4096),
            Some(6144 * 1024)
        );
        assert_eq!(parse_statm_rss_bytes("5000\n", 4096), None);
        assert_eq!(parse_statm_rss_bytes("5000 x 1\n", 4096), None);
        assert_eq!(parse_statm_rss_bytes("1 18446744073709551615 1\n", 4096), None);
        let stat = "4242 (hp (agent) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 4 0 100 1000000 1500";
        assert_eq!(parse_stat_cpu_seconds(stat), Some(3.0));
        assert_eq!(parse_stat_cpu_seconds("4242 (short) S 1 2"), None);
        assert_eq!(parse_stat_cpu_seconds("garbage"), None);
    }

    #[test]
    fn disable_removes_a_source_and_is_checked() {
        let opts = SourceOptions::default();
        let all = Sampler::build(HostPaths::default(), &[], &[], &opts)
            .unwrap()
            .source_names();
        let without = Sampler::build(HostPaths::default(), &[], &["hwmon".to_string()], &opts)
            .unwrap()
            .source_names();
        assert!(all.contains(&"hwmon"));
        assert!(!without.contains(&"hwmon"));
        assert_eq!(without.len(), all.len() - 1);
        let err = Sampler::build(HostPaths::default(), &[], &["hwmonn".to_string()], &opts)
            .err()
            .map(|e| e.name);
        assert_eq!(err.as_deref(), Some("hwmonn"));
    }

    #[test]
    fn unknown_only_names_the_source() {
        let err = Sampler::new(HostPaths::default(), &["nope".to_string()])
            .err()
            .map(|e| e.name);
        assert_eq!(err.as_deref(), Some("nope"));
    }
}
