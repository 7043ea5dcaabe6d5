//! Load shedding for ingest: a per-host sample rate and a per-host rate of
//! new series definitions (token buckets keyed by host, shared by every
//! stream of that host), and a global budget of the memory batches hold
//! from the moment their frame arrives (before it is decoded) until their
//! flush, with the estimate of that memory ([`HeapTally`]).
//!
//! They refuse rather than queue: a refused batch is not stored and not
//! acknowledged, its stream is ended, and the agent resends it from its
//! spool after backing off. Queueing instead would turn overload into
//! unbounded memory, which is what the budget exists to prevent. (The same
//! buckets also meter bytes of batches refused for good, whose debt
//! delays reading a host's next message: [`HostRates::charge`] and
//! [`HostRates::wait`].)

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry::{Gauge, Telemetry};

/// A token bucket: `rate` tokens a second up to `burst`. A take is allowed
/// while the bucket is positive and may drive it negative, so a batch
/// larger than the burst still passes once the bucket is full instead of
/// never; the debt then delays the next one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn full(burst: f64, now: Instant) -> TokenBucket {
        TokenBucket { tokens: burst, at: now }
    }

    /// Takes `n` tokens at `now` if the bucket is positive after refilling;
    /// returns whether it did.
    pub fn take(&mut self, n: f64, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
        if self.tokens <= 0.0 {
            return false;
        }
        self.tokens -= n;
        true
    }

    /// Takes `n` tokens at `now` only if the bucket holds all of them after
    /// refilling; returns whether it did. Never goes into debt, so one large
    /// take cannot hide behind a single positive token: what it costs the
    /// store must have been earned first. `n` above `burst` never passes.
    pub fn take_whole(&mut self, n: f64, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
        if self.tokens < n {
            return false;
        }
        self.tokens -= n;
        true
    }

    /// Charges `n` tokens at `now` whatever the bucket holds; the debt this
    /// may leave is what [`TokenBucket::wait`] reports.
    pub fn charge(&mut self, n: f64, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst) - n;
        self.at = now;
    }

    /// How long after `now` the bucket is out of debt at `rate`.
    pub fn wait(&self, rate: f64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let debt = -(self.tokens + elapsed * rate);
        if debt <= 0.0 || rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::try_from_secs_f64(debt / rate).unwrap_or(Duration::MAX)
    }
}

/// Most hosts whose buckets are remembered; beyond it idle (full) buckets
/// are forgotten, which changes nothing for them since a new bucket is full.
const MAX_TRACKED_HOSTS: usize = 100_000;

/// Per-host rate limits (samples, or new series definitions), shared by all
/// streams.
#[derive(Debug)]
pub struct HostRates {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl HostRates {
    /// `rate` samples a second per host, bursts up to `burst`; a rate of 0
    /// (or less) turns the limit off.
    pub fn new(rate: f64, burst: f64) -> HostRates {
        HostRates {
            rate,
            burst: burst.max(rate),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `host` may store `samples` more samples at `now` (a full
    /// bucket admits any amount, going into debt; see [`TokenBucket::take`]).
    pub fn admit(&self, host: &str, samples: usize, now: Instant) -> bool {
        let (rate, burst) = (self.rate, self.burst);
        self.with_bucket(host, now, |b| b.take(samples as f64, rate, burst, now))
    }

    /// Whether `host` may spend `n` tokens at `now`, all of them earned
    /// already ([`TokenBucket::take_whole`]): an amount above the burst
    /// never passes, so callers refuse it for good first.
    pub fn admit_whole(&self, host: &str, n: usize, now: Instant) -> bool {
        let (rate, burst) = (self.rate, self.burst);
        self.with_bucket(host, now, |b| b.take_whole(n as f64, rate, burst, now))
    }

    /// Charges `host` `n` tokens at `now`, going into debt if need be.
    pub fn charge(&self, host: &str, n: usize, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.with_bucket(host, now, |b| {
            b.charge(n as f64, rate, burst, now);
            true
        });
    }

    /// How long `host` must wait at `now` until its bucket is out of debt;
    /// zero for a host without a bucket or with the limit off.
    pub fn wait(&self, host: &str, now: Instant) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets.get(host).map_or(Duration::ZERO, |b| b.wait(self.rate, now))
    }

    /// Runs `take` on `host`'s bucket; with the limit off, admits.
    fn with_bucket(&self, host: &str, now: Instant, take: impl FnOnce(&mut TokenBucket) -> bool) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        // A poisoned lock only means another stream panicked mid-update;
        // the buckets are still plain numbers.
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_TRACKED_HOSTS && !buckets.contains_key(host) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                let mut probe = *b;
                probe.take(0.0, rate, burst, now);
                probe.tokens < burst
            });
        }
        let bucket = buckets
            .entry(host.to_owned())
            .or_insert_with(|| TokenBucket::full(self.burst, now));
        take(bucket)
    }

    /// The configured rate, for error messages.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The configured burst (at least the rate), for error messages.
    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// Whether the limit is on (a positive rate).
    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }
}

/// The global in-flight budget, in bytes of memory that received batches
/// hold: the frame as it arrived, the decoded message, and the prepared
/// batch with its series' labels until the store reports it durable
/// ([`HeapTally`] estimates them before anything is decoded). A connect
/// storm of thousands of agents each sending a first batch of series
/// definitions thus cannot hold more decoded batches than
/// `[ingest] max_inflight_mb` allows.
///
/// One part in [`LIGHT_SHARE`] is kept for batches that define no series
/// (every batch of an agent past its first): during a storm the rest
/// fills with first batches, and established agents' batches must not
/// queue behind them (their acks would stall for the whole storm) nor be
/// shed (a shed agent reconnects and sends its definitions again — one
/// more first batch: measured, a 10,000-agent storm fed itself for over
/// 40 s that way).
#[derive(Clone, Debug)]
pub struct InflightBudget {
    main: Pool,
    light: Pool,
    peak: Arc<AtomicUsize>,
    telemetry: Option<Arc<Telemetry>>,
}

/// One semaphore of the budget and its size.
#[derive(Clone, Debug)]
struct Pool {
    permits: Arc<Semaphore>,
    total: usize,
}

impl Pool {
    fn new(bytes: usize) -> Pool {
        // Permits are taken as a u32 at a time, so that bounds a pool too.
        let total = bytes.clamp(1, u32::MAX as usize);
        Pool {
            permits: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Permits standing for `bytes`: at least one, at most the pool.
    fn permits_for(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.clamp(1, self.total)).unwrap_or(u32::MAX)
    }

    fn try_take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits)
            .try_acquire_many_owned(self.permits_for(bytes))
            .ok()
    }

    fn in_use(&self) -> usize {
        self.total - self.permits.available_permits()
    }
}

/// The share of the budget (one part in this many) kept for batches that
/// define no series.
pub const LIGHT_SHARE: usize = 8;

impl InflightBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> InflightBudget {
        let light = bytes / LIGHT_SHARE;
        InflightBudget {
            main: Pool::new(bytes - light),
            light: Pool::new(light),
            peak: Arc::new(AtomicUsize::new(0)),
            telemetry: None,
        }
    }

    /// Publishes the bytes in use, their peak and the limit as gauges of
    /// `telemetry`.
    #[must_use]
    pub fn observed(mut self, telemetry: Arc<Telemetry>) -> InflightBudget {
        telemetry.set(Gauge::IngestInflightLimitBytes, gauge_value(self.total()));
        self.telemetry = Some(telemetry);
        self.publish();
        self
    }

    /// Reserves `bytes` for as long as the returned reservation lives, or
    /// `None` when the budget cannot cover them right now. A batch larger
    /// than the whole budget is charged the whole of it (less the share
    /// for light batches), so it can pass when nothing else is in flight.
    pub fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        let permit = self.main.try_take(bytes)?;
        Some(self.reservation(Some(permit), &self.main))
    }

    /// Like [`InflightBudget::try_reserve`] for a batch that defines no
    /// series: from the share kept for those first, then from the rest.
    pub fn try_reserve_light(&self, bytes: usize) -> Option<Reservation> {
        if let Some(permit) = self.light.try_take(bytes) {
            return Some(self.reservation(Some(permit), &self.light));
        }
        self.try_reserve(bytes)
    }

    /// Reserves `bytes` once the budget has room, waiting in line (first
    /// come, first served) until it does. Cancel-safe: dropped while
    /// waiting, it takes nothing.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let n = self.main.permits_for(bytes);
        // The semaphore is never closed, so this only fails if it were;
        // then nothing is reserved and the batch goes uncharged.
        let permit = Arc::clone(&self.main.permits).acquire_many_owned(n).await.ok();
        self.reservation(permit, &self.main)
    }

    fn reservation(&self, permit: Option<OwnedSemaphorePermit>, pool: &Pool) -> Reservation {
        self.publish();
        Reservation {
            permit,
            pool: pool.clone(),
            budget: self.clone(),
        }
    }

    /// Bytes reserved at the moment.
    pub fn in_use(&self) -> usize {
        self.main.in_use() + self.light.in_use()
    }

    /// Most bytes reserved at once so far.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// The whole budget.
    pub fn total(&self) -> usize {
        self.main.total + self.light.total
    }

    /// Records the peak and updates the gauges after a change.
    fn publish(&self) {
        let in_use = self.in_use();
        self.peak.fetch_max(in_use, Ordering::Relaxed);
        if let Some(t) = &self.telemetry {
            t.set(Gauge::IngestInflightBytes, gauge_value(in_use));
            t.set(Gauge::IngestInflightPeakBytes, gauge_value(self.peak()));
        }
    }
}

fn gauge_value(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Bytes of an [`InflightBudget`] held by one batch; given back when
/// dropped. It grows when a decoded batch turns out larger than estimated
/// and shrinks once the frame and the decoded message are gone.
#[derive(Debug)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    /// Where the permits came from (and more must come from).
    pool: Pool,
    budget: InflightBudget,
}

impl Reservation {
    /// Bytes reserved (at most the whole budget).
    pub fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Makes the reservation cover `bytes` (capped at its pool) if the
    /// budget has room; returns whether it now does. Never waits.
    pub fn grow_to(&mut self, bytes: usize) -> bool {
        let want = self.pool.permits_for(bytes) as usize;
        let have = self.bytes();
        if want <= have {
            return true;
        }
        let Some(extra) = self.pool.try_take(want - have) else {
            return false;
        };
        match self.permit.as_mut() {
            Some(permit) => permit.merge(extra),
            None => self.permit = Some(extra),
        }
        self.budget.publish();
        true
    }

    /// Gives back what is reserved above `bytes` (at least one byte stays
    /// reserved, so the reservation still counts as in flight).
    pub fn shrink_to(&mut self, bytes: usize) {
        let keep = self.pool.permits_for(bytes) as usize;
        let have = self.bytes();
        if keep < have
            && let Some(permit) = self.permit.as_mut()
        {
            drop(permit.split(have - keep));
            self.budget.publish();
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.budget.publish();
    }
}

/// Heap bytes of one allocation of `n` bytes: allocators hand out size
/// classes, 16-byte steps being a fair average for the small strings a
/// batch holds.
const fn alloc(n: usize) -> usize {
    if n == 0 { 0 } else { (n + 15) & !15 }
}

/// Capacity of a vector of `n` elements built by pushing (as prost
/// decodes repeated fields): doubling from 4, so up to twice `n`.
fn pushed(n: usize) -> usize {
    if n == 0 { 0 } else { n.max(4).next_power_of_two() }
}

/// Bytes a prepared batch holds per series besides its labels: the
/// session's ref entry (hash map slot with growth), the batch's series key,
/// end index and ref.
const PER_SERIES_BYTES: usize = 128;
/// Bytes a sample costs while a batch is prepared: its entry to sort
/// (24 bytes), slot lookups, and the column it came from.
const PER_SAMPLE_TRANSIENT_BYTES: usize = 48;
/// Bytes a sample costs in a prepared batch until it is durable.
const PER_SAMPLE_HELD_BYTES: usize = 16;

/// An estimate of the heap one received batch makes the collector hold,
/// built from its definitions, samples and events as they are counted —
/// from the frame's bytes before decoding ([`super::frames::measure`]) or
/// from a decoded batch ([`HeapTally::of_batch`]), with the same figures.
///
/// Two parts: `transient` (the frame, the decoded message, what
/// validation builds) is freed once the batch is prepared; `held` (each
/// defined series' labels twice — the stream's pending definition and
/// the store-bound batch's copy — and the samples) stays until the batch
/// is durable. A first batch of 300 definitions is ~15 KiB on the wire
/// and ~300 KiB here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapTally {
    /// Bytes freed once the batch is prepared.
    pub transient: usize,
    /// Bytes held until the batch is durable.
    pub held: usize,
    definitions: usize,
    events: usize,
    samples: usize,
    /// Whether samples carry their own timestamp deltas.
    deltas: bool,
}

impl HeapTally {
    /// The tally of a frame of `frame_bytes` (held until it is decoded).
    pub fn frame(frame_bytes: usize) -> HeapTally {
        HeapTally {
            transient: frame_bytes,
            ..HeapTally::default()
        }
    }

    /// Counts one series definition of a stream whose host name is
    /// `host_bytes` long: its metric name of `name_bytes` and `labels`
    /// labels whose names and values take `label_heap` bytes (the sum of
    /// [`HeapTally::string`] over them).
    pub fn definition(&mut self, host_bytes: usize, name_bytes: usize, labels: usize, label_heap: usize) {
        use hostpulse_proto::{Label, SeriesDefinition};
        self.definitions += 1;
        self.transient += size_of::<SeriesDefinition>() + alloc(name_bytes) + pushed(labels) * size_of::<Label>();
        self.transient += label_heap;
        // The collector's label set: the agent's labels, `__name__`,
        // `instance` and `job`, each pair two strings.
        let label_set = (labels + 3) * size_of::<(String, String)>()
            + label_heap
            + alloc(name_bytes)
            + alloc("__name__".len())
            + alloc("instance".len())
            + alloc(host_bytes)
            + alloc("job".len())
            + alloc(super::session::JOB.len());
        self.held += 2 * label_set + PER_SERIES_BYTES;
    }

    /// Heap bytes of one string (or bytes field) of `n` bytes.
    pub fn string(n: usize) -> usize {
        alloc(n)
    }

    /// Counts `n` samples.
    pub fn samples(&mut self, n: usize) {
        self.samples += n;
    }

    /// Notes that samples carry timestamp deltas.
    pub fn with_deltas(&mut self) {
        self.deltas = true;
    }

    /// Counts one kernel event whose strings take `string_heap` bytes.
    pub fn event(&mut self, string_heap: usize) {
        self.events += 1;
        self.transient += size_of::<hostpulse_proto::KernelEvent>() + string_heap;
    }

    /// Counts `n` heap bytes freed once the batch is prepared (a compact
    /// column, a Hello's contents).
    pub fn other(&mut self, n: usize) {
        self.transient += n;
    }

    /// The whole estimate: what is counted plus the vectors holding it.
    pub fn total(&self) -> HeapTally {
        let mut out = *self;
        let sample = size_of::<u32>() + size_of::<f64>() + if self.deltas { size_of::<i64>() } else { 0 };
        out.transient += pushed(self.definitions) * size_of::<hostpulse_proto::SeriesDefinition>()
            - self.definitions * size_of::<hostpulse_proto::SeriesDefinition>()
            + pushed(self.samples) * sample
            + self.samples * PER_SAMPLE_TRANSIENT_BYTES
            + pushed(self.events) * size_of::<hostpulse_proto::KernelEvent>()
            - self.events * size_of::<hostpulse_proto::KernelEvent>();
        out.held += self.samples * PER_SAMPLE_HELD_BYTES;
        out
    }

    /// Whether the batch defines series (a stream's first batch does).
    pub fn defines(&self) -> bool {
        self.definitions > 0
    }

    /// Bytes to reserve while the batch is received and prepared.
    pub fn peak(&self) -> usize {
        self.transient.saturating_add(self.held)
    }

    /// The tally of a decoded `batch` (plain columns) of a stream whose
    /// host name is `host_bytes` long.
    pub fn of_batch(batch: &hostpulse_proto::Batch, host_bytes: usize) -> HeapTally {
        let mut t = HeapTally::default();
        for def in &batch.new_series {
            let label_heap = def
                .labels
                .iter()
                .map(|l| alloc(l.name.len()) + alloc(l.value.len()))
                .sum();
            t.definition(host_bytes, def.name.len(), def.labels.len(), label_heap);
        }
        t.samples(batch.refs.len().max(batch.values.len()));
        if !batch.timestamp_deltas_ms.is_empty() {
            t.with_deltas();
        }
        for e in &batch.events {
            t.event(alloc(e.kind.len()) + alloc(e.device.len()) + alloc(e.message.len()));
        }
        t.total()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn charges_leave_a_debt_that_is_waited_off() {
        let rates = HostRates::new(1000.0, 2000.0);
        let t = Instant::now();
        assert_eq!(rates.wait("a", t), Duration::ZERO, "no bucket yet");
        rates.charge("a", 1500, t);
        assert_eq!(rates.wait("a", t), Duration::ZERO, "within the burst");
        rates.charge("a", 1500, t);
        // 1000 in debt at 1000/s: one second, less what passed since.
        let near = |d: Duration, ms: u64| d.abs_diff(Duration::from_millis(ms)) < Duration::from_micros(10);
        assert!(near(rates.wait("a", t), 1000));
        assert!(near(rates.wait("a", t + Duration::from_millis(400)), 600));
        assert_eq!(rates.wait("a", t + Duration::from_secs(2)), Duration::ZERO);
        assert_eq!(rates.wait("b", t), Duration::ZERO, "per host");
    }

    #[test]
    fn a_host_over_its_rate_is_refused_until_the_bucket_refills() {
        let rates = HostRates::new(100.0, 200.0);
        let t = Instant::now();
        assert!(rates.admit("a", 150, t));
        assert!(rates.admit("a", 150, t), "positive bucket admits, going into debt");
        assert!(!rates.admit("a", 1, t), "bucket at -100");
        // Other hosts have their own bucket.
        assert!(rates.admit("b", 150, t));
        // 1 s refills 100: back to 0, still refused; 1.5 s: positive.
        assert!(!rates.admit("a", 1, t + Duration::from_secs(1)));
        assert!(rates.admit("a", 1, t + Duration::from_millis(1500)));
    }

    #[test]
    fn whole_takes_never_go_into_debt() {
        let rates = HostRates::new(100.0, 1000.0);
        let t = Instant::now();
        assert!(!rates.admit_whole("a", 1001, t), "above the burst never passes");
        assert!(rates.admit_whole("a", 1000, t), "a full bucket admits the burst");
        assert!(!rates.admit_whole("a", 1, t));
        // 1 s refills 100: 150 does not fit yet, 100 does; then 0 is left.
        assert!(!rates.admit_whole("a", 150, t + Duration::from_secs(1)));
        assert!(rates.admit_whole("a", 100, t + Duration::from_secs(1)));
        assert!(!rates.admit_whole("a", 1, t + Duration::from_secs(1)));
        assert!(rates.admit_whole("b", 1000, t), "other hosts have their own bucket");
        let off = HostRates::new(0.0, 0.0);
        assert!(off.admit_whole("a", 1_000_000, t));
    }

    #[test]
    fn a_zero_rate_turns_the_limit_off() {
        let rates = HostRates::new(0.0, 0.0);
        let t = Instant::now();
        for _ in 0..10 {
            assert!(rates.admit("a", 1_000_000, t));
        }
    }

    #[test]
    fn the_budget_refuses_while_it_is_spent_and_frees_on_drop() {
        // 875 for any batch, 125 kept for batches defining no series.
        let budget = InflightBudget::new(1000);
        let a = budget.try_reserve(600).unwrap();
        assert_eq!(budget.in_use(), 600);
        assert!(budget.try_reserve(600).is_none());
        let b = budget.try_reserve(275).unwrap();
        assert!(budget.try_reserve(1).is_none());
        drop(a);
        drop(b);
        assert_eq!(budget.in_use(), 0);
        // Larger than the budget: charged all it may take.
        let big = budget.try_reserve(5000).unwrap();
        assert_eq!(budget.in_use(), 875);
        drop(big);
    }

    #[test]
    fn batches_defining_no_series_have_a_share_of_their_own() {
        let budget = InflightBudget::new(1000);
        let first = budget.try_reserve(875).unwrap();
        assert!(budget.try_reserve(1).is_none(), "first batches are out of room");
        let light = budget.try_reserve_light(100).unwrap();
        assert!(budget.try_reserve_light(100).is_none(), "25 left of the share");
        assert_eq!(budget.in_use(), 975);
        drop(first);
        // With the share spent, light batches take from the rest.
        let more = budget.try_reserve_light(100).unwrap();
        assert_eq!(budget.in_use(), 200);
        drop((light, more));
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_reservation_waits_in_line_for_room() {
        let budget = InflightBudget::new(1000);
        let held = budget.try_reserve(800).unwrap();
        let mut waiting = Box::pin(budget.reserve(500));
        let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(waiting.as_mut().poll(cx).is_pending())).await;
        assert!(polled, "no room yet");
        drop(held);
        let got = waiting.await;
        assert_eq!((got.bytes(), budget.in_use()), (500, 500));
    }

    #[test]
    fn a_reservation_grows_and_shrinks_within_the_budget() {
        let budget = InflightBudget::new(1000);
        let mut r = budget.try_reserve(100).unwrap();
        assert!(r.grow_to(600));
        assert_eq!((r.bytes(), budget.in_use()), (600, 600));
        let other = budget.try_reserve(200).unwrap();
        assert!(!r.grow_to(800), "only 75 left");
        assert_eq!(r.bytes(), 600);
        r.shrink_to(200);
        assert_eq!((r.bytes(), budget.in_use()), (200, 400));
        assert!(r.grow_to(675));
        drop(other);
        drop(r);
        assert_eq!(budget.in_use(), 0);
        assert_eq!(budget.peak(), 875);
    }
}
