//! Fair use of the store's single writer thread by ingest streams (issue 7:
//! one misbehaving agent must not slow down everyone else's acks).
//!
//! Every append goes through one thread that group-commits whatever is
//! queued; a batch that creates many series keeps that thread busy for
//! its whole commit (index inserts, series pages), and every batch queued
//! meanwhile waits for it. Two rules keep that cost with the host that
//! causes it:
//!
//! - **At most [`HOST_TURNS`] turns in flight per host**, an append taking
//!   one turn per [`SAMPLES_PER_TURN`] samples (at least one). A stream
//!   keeps batches queued for the writer so its acks are not one round
//!   trip each, but a host may open several streams; their appends share
//!   the host's turns here, so a host cannot fill the writer's queue with
//!   many batches, or with a few huge ones, at once.
//! - **New series share a budget, and pay back their writer time.** A
//!   batch defining at least [`HEAVY_NEW_SERIES`] new series takes that
//!   many permits of [`NEW_SERIES_IN_FLIGHT`] (first come, first served
//!   over all hosts), so the writer never has more new series queued than
//!   one burst-sized batch, however many hosts create series at once;
//!   many agents connecting together (a few hundred series each) still
//!   share group commits. After its append a batch keeps its permits for
//!   as long as the append took (capped at [`MAX_COOLDOWN`]), so creating
//!   series gets at most about half of the writer's time and the fleet's
//!   small batches are committed in the gaps. Light batches (every batch
//!   of a steady agent) never wait here except behind their own host.
//!
//! Nothing is refused here: waiting is bounded by the rate limits in
//! [`super::budget`], which decide what is admitted at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// New series definitions from which a batch counts as heavy. A steady
/// agent defines none; a fresh stream of a large host a few thousand once.
/// Below this the writer's cost is under a few milliseconds even in a
/// debug build (~11 µs per new series there, 2026-11-26).
pub const HEAVY_NEW_SERIES: usize = 256;

/// New series of heavy batches that may be queued for or inside the
/// writer at once: the default per-host burst, so one burst-sized batch
/// fits alone and a larger one (with the new-series limit off) is charged
/// the whole budget.
pub const NEW_SERIES_IN_FLIGHT: usize = 10_000;

/// Longest time a heavy batch keeps its permits after its append, so a
/// single very slow commit (a stalled disk) cannot hold up series creation
/// for long after the disk recovered.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(1);

/// Turns one host may have queued for or inside the writer at once, over
/// all its streams: enough for a stream's batches to ride on consecutive
/// group commits instead of one round trip each, so a host resending a
/// backlog keeps the writer busy through each flush. Counted in appends,
/// 8 in flight left the machine idle 10-17 % of the time waiting for
/// flushes when 20 hosts replayed their spools (5.7-6.8 M samples/s), 32
/// still left the writer waiting for work a third of the time (6.6-7.1
/// M/s), and 128 turns of up to [`SAMPLES_PER_TURN`] samples each gave
/// 8.2-8.3 M/s (storage bench, quick build, 2026-11-26). The in-flight
/// budget bounds the memory they hold, and a live agent has one batch per
/// interval anyway.
pub const HOST_TURNS: usize = 128;

/// Samples an append may hold per turn it takes: a host has at most
/// `HOST_TURNS × SAMPLES_PER_TURN` (32,768) samples queued for the writer,
/// however it batches them, so one host's huge batches cannot make a
/// group commit, and everyone's acks in it, long.
pub const SAMPLES_PER_TURN: usize = 256;

/// Turns an append of `samples` samples takes.
pub fn turns_for(samples: usize) -> u32 {
    samples.div_ceil(SAMPLES_PER_TURN).clamp(1, HOST_TURNS) as u32
}

/// The turn-taking state, shared by every stream of one ingest service.
#[derive(Debug)]
pub struct WriterFairness {
    heavy: Arc<Semaphore>,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Default for WriterFairness {
    fn default() -> Self {
        WriterFairness {
            heavy: Arc::new(Semaphore::new(NEW_SERIES_IN_FLIGHT)),
            hosts: Mutex::new(HashMap::new()),
        }
    }
}

/// The right to append one batch; held until the append returned.
#[derive(Debug)]
pub struct Turn<'a> {
    fairness: &'a WriterFairness,
    host: String,
    host_turn: Option<OwnedSemaphorePermit>,
    heavy: Option<(OwnedSemaphorePermit, Instant)>,
}

impl WriterFairness {
    /// Waits until `host` may append a batch of `samples` samples defining
    /// `new_series` new series: until the host has the batch's
    /// [`turns_for`] free, and for a heavy batch, until the new-series
    /// budget has room for it.
    pub async fn turn(&self, host: &str, new_series: usize, samples: usize) -> Turn<'_> {
        let turns = self.host_turns(host);
        // Host first, then the budget: always in this order, so two
        // streams can never wait on each other crosswise. The host's
        // semaphore is never closed; if it were, the batch goes without.
        let host_turn = turns.acquire_many_owned(turns_for(samples)).await.ok();
        let heavy = if new_series >= HEAVY_NEW_SERIES {
            let permits = u32::try_from(new_series.min(NEW_SERIES_IN_FLIGHT)).unwrap_or(u32::MAX);
            // The semaphore is never closed, so acquiring only fails if it
            // were; then the batch simply goes without permits.
            Arc::clone(&self.heavy)
                .acquire_many_owned(permits)
                .await
                .ok()
                .map(|permit| (permit, Instant::now()))
        } else {
            None
        };
        Turn {
            fairness: self,
            host: host.to_owned(),
            host_turn,
            heavy,
        }
    }

    /// A turn for a light batch (fewer than [`HEAVY_NEW_SERIES`] new
    /// series) if the host has one free now; `None` for a heavy batch or
    /// when the host has too few turns free. A stream with appends of its
    /// own in flight asks this way and otherwise completes one of them
    /// first, so it never waits for a turn while holding turns a stream of
    /// the same host waits for.
    pub fn try_turn(&self, host: &str, new_series: usize, samples: usize) -> Option<Turn<'_>> {
        if new_series >= HEAVY_NEW_SERIES {
            return None;
        }
        let turns = self.host_turns(host);
        let host_turn = turns.try_acquire_many_owned(turns_for(samples)).ok();
        let turn = Turn {
            fairness: self,
            host: host.to_owned(),
            host_turn,
            heavy: None,
        };
        // Dropped without a permit, the turn forgets an idle host's entry.
        turn.host_turn.is_some().then_some(turn)
    }

    fn host_turns(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            hosts
                .entry(host.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(HOST_TURNS))),
        )
    }

    /// Hosts with a turn-taking entry (for tests: entries of hosts with no
    /// append in flight are removed).
    pub fn tracked_hosts(&self) -> usize {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.host_turn.take());
        {
            let mut hosts = self.fairness.hosts.lock().unwrap_or_else(PoisonError::into_inner);
            // Only the map holds it: no stream of this host waits, so the
            // entry goes (new turns clone it under this same lock).
            if hosts.get(&self.host).is_some_and(|l| Arc::strong_count(l) == 1) {
                hosts.remove(&self.host);
            }
        }
        if let Some((permit, since)) = self.heavy.take() {
            let cooldown = since.elapsed().min(MAX_COOLDOWN);
            // The permits return after the cooldown; without a runtime
            // (never the case in the server) at once.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    tokio::time::sleep(cooldown).await;
                    drop(permit);
                });
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    use super::*;

    /// Whether `fut` is still waiting after one poll (no timers involved).
    async fn waits<F: Future + Unpin>(fut: &mut F) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx).is_pending())).await
    }

    #[tokio::test]
    async fn appends_of_one_host_take_turns_and_others_do_not_wait() {
        let f = WriterFairness::default();
        let first = f.turn("a", 0, 1).await;
        let mut more = Vec::new();
        for _ in 1..HOST_TURNS {
            let next = f.try_turn("a", 0, SAMPLES_PER_TURN);
            assert!(next.is_some(), "host a may have several appends in flight");
            more.push(next);
        }
        assert!(f.try_turn("a", 0, 1).is_none(), "host a's turns are all taken");
        let mut second = Box::pin(f.turn("a", 0, 1));
        assert!(waits(&mut second).await, "host a already has all its appends in flight");
        let mut other = Box::pin(f.turn("b", 0, 1));
        assert!(!waits(&mut other).await, "host b has its own turns");
        drop(other);
        assert!(f.try_turn("b", 0, 1).is_some(), "host b has its own turns");
        assert!(
            f.try_turn("b", HEAVY_NEW_SERIES, 1).is_none(),
            "heavy batches wait in line"
        );
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), second).await;
        assert!(second.is_ok(), "host a's turn came back when the first append ended");
        drop(second);
        drop(more);
        assert_eq!(f.tracked_hosts(), 0, "idle hosts are forgotten");
    }

    #[tokio::test]
    async fn big_batches_take_turns_by_their_samples() {
        assert_eq!(turns_for(0), 1);
        assert_eq!(turns_for(SAMPLES_PER_TURN), 1);
        assert_eq!(turns_for(SAMPLES_PER_TURN + 1), 2);
        assert_eq!(
            turns_for(usize::MAX),
            HOST_TURNS as u32,
            "a huge batch still gets in alone"
        );
        let f = WriterFairness::default();
        // Two batches of half the host's samples fill its turns.
        let half = HOST_TURNS / 2 * SAMPLES_PER_TURN;
        let first = f.try_turn("a", 0, half);
        let second = f.try_turn("a", 0, half);
        assert!(first.is_some() && second.is_some());
        assert!(f.try_turn("a", 0, 1).is_none(), "no turn left for even one sample");
        drop(first);
        assert!(f.try_turn("a", 0, half).is_some(), "the first batch's turns came back");
        let mut huge = Box::pin(f.turn("a", 0, usize::MAX));
        assert!(waits(&mut huge).await, "a huge batch waits for all the host's turns");
        drop(second);
        let huge = tokio::time::timeout(Duration::from_secs(5), huge).await;
        assert!(huge.is_ok(), "and gets them once the host's appends are done");
    }

    #[tokio::test]
    async fn heavy_batches_share_the_budget_and_pay_a_cooldown() {
        let f = WriterFairness::default();
        let heavy = f.turn("a", NEW_SERIES_IN_FLIGHT - HEAVY_NEW_SERIES, 1).await;
        let mut light = Box::pin(f.turn("b", HEAVY_NEW_SERIES - 1, 1));
        assert!(!waits(&mut light).await, "light batches pass heavy ones in flight");
        drop(light);
        let mut fits = Box::pin(f.turn("c", HEAVY_NEW_SERIES, 1));
        assert!(!waits(&mut fits).await, "heavy batches share the budget");
        drop(fits);
        let mut next = Box::pin(f.turn("c", 2 * HEAVY_NEW_SERIES, 1));
        assert!(waits(&mut next).await, "the budget is spent");
        // The heavy append "takes" 100 ms; its permits come back as long after.
        let took = Duration::from_millis(100);
        tokio::time::sleep(took).await;
        drop(heavy);
        let reopened = Instant::now();
        assert!(waits(&mut next).await, "the permits are held during the cooldown");
        let next = tokio::time::timeout(Duration::from_secs(5), next).await;
        assert!(next.is_ok());
        assert!(reopened.elapsed() >= took, "reopened after {:?}", reopened.elapsed());
    }
}
