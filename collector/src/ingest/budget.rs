//! Load shedding for ingest: a per-host sample rate and a per-host rate of
//! new series definitions (token buckets keyed by host, shared by every
//! stream of that host), and a global budget of bytes held by batches that
//! are being validated or wait for their flush.
//!
//! They refuse rather than queue: a refused batch is not stored and not
//! acknowledged, its stream is ended, and the agent resends it from its
//! spool after backing off. Queueing instead would turn overload into
//! unbounded memory, which is what the budget exists to prevent. (The same
//! buckets also meter bytes of batches refused for good, whose debt
//! delays reading a host's next message: [`HostRates::charge`] and
//! [`HostRates::wait`].)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// The global in-flight budget, in bytes of encoded batches.
#[derive(Clone, Debug)]
pub struct InflightBudget {
    permits: Arc<Semaphore>,
    total: usize,
}

impl InflightBudget {
    /// A budget of `bytes` (clamped to what a semaphore can count).
    pub fn new(bytes: usize) -> InflightBudget {
        // Permits are taken as a u32 at a time, so that bounds the budget too.
        let total = bytes.clamp(1, u32::MAX as usize);
        InflightBudget {
            permits: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Reserves `bytes` for as long as the returned permit lives, or `None`
    /// when the budget cannot cover them right now. A batch larger than the
    /// whole budget is charged the whole budget, so it can pass when
    /// nothing else is in flight.
    pub fn try_reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(bytes.clamp(1, self.total)).unwrap_or(u32::MAX);
        Arc::clone(&self.permits).try_acquire_many_owned(n).ok()
    }

    /// Bytes reserved at the moment.
    pub fn in_use(&self) -> usize {
        self.total - self.permits.available_permits()
    }

    /// The whole budget.
    pub fn total(&self) -> usize {
        self.total
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
        let budget = InflightBudget::new(1000);
        let a = budget.try_reserve(600).unwrap();
        assert_eq!(budget.in_use(), 600);
        assert!(budget.try_reserve(600).is_none());
        let b = budget.try_reserve(400).unwrap();
        assert!(budget.try_reserve(1).is_none());
        drop(a);
        drop(b);
        assert_eq!(budget.in_use(), 0);
        // Larger than the budget: charged the whole of it.
        let big = budget.try_reserve(5000).unwrap();
        assert_eq!(budget.in_use(), 1000);
        drop(big);
    }
}
