//! Load shedding for ingest: a per-host sample rate (token buckets keyed by
//! host, shared by every stream of that host) and a global budget of bytes
//! held by batches that are being validated or wait for their flush.
//!
//! Both refuse rather than queue: a refused batch is not stored and not
//! acknowledged, its stream is ended, and the agent resends it from its
//! spool after backing off. Queueing instead would turn overload into
//! unbounded memory, which is what the budget exists to prevent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
}

/// Most hosts whose buckets are remembered; beyond it idle (full) buckets
/// are forgotten, which changes nothing for them since a new bucket is full.
const MAX_TRACKED_HOSTS: usize = 100_000;

/// Per-host sample rate limits, shared by all streams.
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

    /// Whether `host` may store `samples` more samples at `now`.
    pub fn admit(&self, host: &str, samples: usize, now: Instant) -> bool {
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
        bucket.take(samples as f64, self.rate, self.burst, now)
    }

    /// The configured rate, for error messages.
    pub fn rate(&self) -> f64 {
        self.rate
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
    use std::time::Duration;

    use super::*;

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
