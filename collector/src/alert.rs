//! Alert lifecycle: the board of current alerts (pending → firing →
//! resolved), persisted in `alert/persist.rs`; the routes out to on-call in
//! `alert/webhook.rs` (signed webhooks) and `alert/alertmanager.rs`
//! (Alertmanager API v2); and the HTTP API over both in `alert/api.rs`.
//!
//! `detect` decides *which* alerts are active at an evaluation and hands
//! that set to [`AlertBoard::apply`]; the board alone decides what changed
//! (newly firing, newly resolved) so that a steadily firing alert is
//! announced once, not at every evaluation. Every change is written to a
//! sled database before the notification goes out, and the board is
//! reloaded from it at start, so a restart neither pages twice (a firing
//! alert comes back firing, not new) nor forgets (a pending alert keeps its
//! start, a firing one resolves normally when its condition clears).

mod alertmanager;
pub mod api;
pub mod page;
mod persist;
mod webhook;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use crate::model::Labels;

pub use alertmanager::Alertmanager;
pub use persist::{AlertEvent, AlertStoreError};
pub use webhook::{Notifier, SIGNATURE_HEADER, sign, webhook_payload};

/// The label naming the rule an alert came from.
pub const ALERT_NAME: &str = "alertname";

/// How long a resolved alert stays on the board (for the page), as
/// Prometheus keeps resolved alerts for 15 minutes.
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// Where an alert is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertState {
    /// Active, but not yet for the rule's `for` duration.
    Pending,
    /// Active long enough; on-call has been told.
    Firing,
    /// Was firing, no longer holds.
    Resolved,
}

impl AlertState {
    /// Lower-case name as Prometheus and Alertmanager spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// One alert on the board.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// Identity: `alertname` plus the rule's labels.
    pub labels: Labels,
    /// Human text (`summary`, `description`), refreshed each evaluation.
    pub annotations: BTreeMap<String, String>,
    /// Current state.
    pub state: AlertState,
    /// When the condition was first seen holding, ms since epoch.
    pub active_since_ms: i64,
    /// When it resolved, ms since epoch.
    pub resolved_at_ms: Option<i64>,
    /// The value that made the rule hold at its latest evaluation.
    pub value: f64,
}

impl Alert {
    /// The rule name (`alertname` label).
    pub fn name(&self) -> &str {
        self.labels.get(ALERT_NAME)
    }

    /// Alertmanager's fingerprint of the label set (FNV-1a 64 over sorted
    /// name/value pairs separated by 0xff), so receivers that deduplicate by
    /// fingerprint see the same value Prometheus would send.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.labels)
    }
}

/// Alertmanager's fingerprint of a label set (see [`Alert::fingerprint`]);
/// also what history events are grouped by on the `/alerts` page.
pub fn fingerprint_of(labels: &Labels) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut add = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    for (name, value) in labels.pairs() {
        add(name.as_bytes());
        add(&[0xff]);
        add(value.as_bytes());
        add(&[0xff]);
    }
    format!("{hash:016x}")
}

/// One alert a rule found holding at an evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveAlert {
    /// Identity, `alertname` included.
    pub labels: Labels,
    /// Human text.
    pub annotations: BTreeMap<String, String>,
    /// The value that made the rule hold.
    pub value: f64,
}

/// What one [`AlertBoard::update`] changed, for the notifier.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transitions {
    /// Alerts that started firing.
    pub fired: Vec<Alert>,
    /// Alerts that were firing and resolved.
    pub resolved: Vec<Alert>,
}

/// Most history events kept by a board without a database (tests).
const MEMORY_HISTORY: usize = 10_000;

/// A board entry: the alert plus what the lifecycle needs about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The rule (or detector) that owns it; see [`AlertBoard::apply`].
    pub rule: String,
    /// The alert as readers see it.
    pub alert: Alert,
    /// The last evaluation at which its condition held (`keep_firing_for`).
    pub last_held_ms: i64,
}

/// How long a rule's condition must hold, and how long it keeps firing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    /// `for`, in ms (0: fire at once).
    pub hold_ms: i64,
    /// `keep_firing_for`, in ms.
    pub keep_firing_ms: i64,
}

#[derive(Debug, Default)]
struct BoardState {
    entries: BTreeMap<Labels, Entry>,
    history: Vec<AlertEvent>,
}

/// The current alerts, shared between the rule loop and readers.
#[derive(Debug, Default)]
pub struct AlertBoard {
    state: Mutex<BoardState>,
    db: Option<persist::AlertDb>,
}

impl AlertBoard {
    /// An empty board kept in memory only (tests, tools).
    pub fn new() -> AlertBoard {
        AlertBoard::default()
    }

    /// The board persisted in the sled database at `dir` (created if
    /// absent), loaded with every alert it held when last running.
    pub fn open(dir: &Path) -> Result<AlertBoard, AlertStoreError> {
        let db = persist::AlertDb::open(dir)?;
        let entries = db.load()?.into_iter().map(|e| (e.alert.labels.clone(), e)).collect();
        Ok(AlertBoard {
            state: Mutex::new(BoardState {
                entries,
                history: Vec::new(),
            }),
            db: Some(db),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BoardState> {
        // A panic while holding the lock cannot leave the map half-updated
        // in a way readers would misinterpret, so keep serving it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies one evaluation of rule `rule` with no `keep_firing_for` and
    /// nothing inhibited; see [`AlertBoard::apply`].
    pub fn update(&self, rule: &str, hold_ms: i64, active: Vec<ActiveAlert>, now_ms: i64) -> Transitions {
        let timing = Timing {
            hold_ms,
            keep_firing_ms: 0,
        };
        self.apply(rule, timing, active, now_ms, &HashSet::new())
    }

    /// Applies one evaluation of rule `rule` (a key unique per rule, such
    /// as its file, group and name): `active` is every alert the rule found
    /// holding at `now_ms`. Returns the alerts that started firing and
    /// those that resolved. Alerts of other rules are untouched.
    ///
    /// Alerts whose `instance` is in `inhibited` (hosts known to be silent)
    /// are frozen: no new alert starts for them and none of theirs resolves,
    /// because their data stopped, not their fault.
    pub fn apply(
        &self,
        rule: &str,
        timing: Timing,
        active: Vec<ActiveAlert>,
        now_ms: i64,
        inhibited: &HashSet<String>,
    ) -> Transitions {
        let mut state = self.lock();
        let mut out = Transitions::default();
        let mut events = Vec::new();
        let mut changed: Vec<Labels> = Vec::new();
        let mut removed: Vec<Labels> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let is_inhibited = |l: &Labels| inhibited.contains(l.get("instance"));
        for a in active {
            seen.insert(a.labels.clone());
            let entry = state
                .entries
                .get_mut(&a.labels)
                .filter(|e| e.alert.state != AlertState::Resolved);
            match entry {
                Some(existing) => {
                    existing.alert.value = a.value;
                    existing.alert.annotations = a.annotations;
                    existing.last_held_ms = now_ms;
                    existing.rule = rule.to_string();
                    if existing.alert.state == AlertState::Pending
                        && now_ms - existing.alert.active_since_ms >= timing.hold_ms
                    {
                        existing.alert.state = AlertState::Firing;
                        out.fired.push(existing.alert.clone());
                        events.push(event(&existing.alert, now_ms));
                    }
                    changed.push(a.labels);
                }
                None if is_inhibited(&a.labels) => {}
                None => {
                    let st = if timing.hold_ms <= 0 {
                        AlertState::Firing
                    } else {
                        AlertState::Pending
                    };
                    let alert = Alert {
                        labels: a.labels.clone(),
                        annotations: a.annotations,
                        state: st,
                        active_since_ms: now_ms,
                        resolved_at_ms: None,
                        value: a.value,
                    };
                    if st == AlertState::Firing {
                        out.fired.push(alert.clone());
                    }
                    events.push(event(&alert, now_ms));
                    state.entries.insert(
                        a.labels.clone(),
                        Entry {
                            rule: rule.to_string(),
                            alert,
                            last_held_ms: now_ms,
                        },
                    );
                    changed.push(a.labels);
                }
            }
        }
        state.entries.retain(|labels, entry| {
            if entry.rule != rule || seen.contains(labels) {
                return true;
            }
            let alert = &mut entry.alert;
            if alert.state != AlertState::Resolved && is_inhibited(labels) {
                return true;
            }
            match alert.state {
                // A pending alert that stops holding never reached on-call.
                AlertState::Pending => {
                    removed.push(labels.clone());
                    false
                }
                AlertState::Firing if now_ms - entry.last_held_ms < timing.keep_firing_ms => true,
                AlertState::Firing => {
                    alert.state = AlertState::Resolved;
                    alert.resolved_at_ms = Some(now_ms);
                    out.resolved.push(alert.clone());
                    events.push(event(alert, now_ms));
                    changed.push(labels.clone());
                    true
                }
                AlertState::Resolved => {
                    let keep = alert
                        .resolved_at_ms
                        .is_some_and(|at| now_ms - at < RESOLVED_RETENTION_MS);
                    if !keep {
                        removed.push(labels.clone());
                    }
                    keep
                }
            }
        });
        if let Some(db) = &self.db {
            let written = changed
                .iter()
                .filter_map(|l| state.entries.get(l))
                .try_for_each(|e| db.put(e))
                .and_then(|()| removed.iter().try_for_each(|l| db.remove(l)))
                .and_then(|()| events.iter().try_for_each(|e| db.record(e)));
            if let Err(e) = written {
                // The board in memory stays right; only a restart would
                // lose this change, which is logged for the operator.
                tracing::error!(error = %e, "cannot persist alert state");
            }
        } else {
            state.history.extend(events);
            let excess = state.history.len().saturating_sub(MEMORY_HISTORY);
            state.history.drain(..excess);
        }
        out
    }

    /// Resolves (or drops, if pending) every alert whose rule is not in
    /// `rules`: after a reload removed a rule, its alerts must not fire on.
    pub fn retire_rules(&self, rules: &HashSet<String>, now_ms: i64) -> Transitions {
        let gone: Vec<String> = {
            let state = self.lock();
            let mut names: Vec<String> = state
                .entries
                .values()
                .filter(|e| !rules.contains(&e.rule) && e.alert.state != AlertState::Resolved)
                .map(|e| e.rule.clone())
                .collect();
            names.dedup();
            names
        };
        let mut out = Transitions::default();
        for rule in gone {
            let t = self.apply(&rule, Timing::default(), Vec::new(), now_ms, &HashSet::new());
            out.fired.extend(t.fired);
            out.resolved.extend(t.resolved);
        }
        out
    }

    /// Waits until every change so far is durable (before notifying, so a
    /// crash after a page cannot page again).
    pub async fn persist(&self) -> Result<(), AlertStoreError> {
        match &self.db {
            Some(db) => db.flush().await,
            None => Ok(()),
        }
    }

    /// Every alert now firing, ordered by labels.
    pub fn firing(&self) -> Vec<Alert> {
        self.lock()
            .entries
            .values()
            .filter(|e| e.alert.state == AlertState::Firing)
            .map(|e| e.alert.clone())
            .collect()
    }

    /// Every alert on the board (pending, firing and recently resolved).
    pub fn alerts(&self) -> Vec<Alert> {
        self.lock().entries.values().map(|e| e.alert.clone()).collect()
    }

    /// Every entry on the board, with its rule.
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().entries.values().cloned().collect()
    }

    /// The `instance` labels of alerts of `rule` now firing.
    pub fn firing_instances(&self, rule: &str) -> HashSet<String> {
        self.lock()
            .entries
            .values()
            .filter(|e| e.rule == rule && e.alert.state == AlertState::Firing)
            .map(|e| e.alert.labels.get("instance").to_string())
            .collect()
    }

    /// Forgets history events older than `before_ms` (the retention
    /// limit); returns how many went. Alerts on the board are untouched:
    /// retention bounds the incident timeline, not what is firing.
    pub fn prune_history(&self, before_ms: i64) -> Result<usize, AlertStoreError> {
        match &self.db {
            Some(db) => db.prune_history(before_ms),
            None => {
                let mut state = self.lock();
                let before = state.history.len();
                state.history.retain(|e| e.at_ms >= before_ms);
                Ok(before - state.history.len())
            }
        }
    }

    /// Transitions in `[from_ms, to_ms]`, oldest first, at most `limit`.
    pub fn history(&self, from_ms: i64, to_ms: i64, limit: usize) -> Result<Vec<AlertEvent>, AlertStoreError> {
        match &self.db {
            Some(db) => db.history(from_ms, to_ms, limit),
            None => Ok(self
                .lock()
                .history
                .iter()
                .filter(|e| (from_ms..=to_ms).contains(&e.at_ms))
                .take(limit)
                .cloned()
                .collect()),
        }
    }
}

fn event(alert: &Alert, at_ms: i64) -> AlertEvent {
    AlertEvent {
        at_ms,
        state: alert.state,
        labels: alert.labels.clone(),
        value: alert.value,
        summary: alert.annotations.get("summary").cloned().unwrap_or_default(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn active(sensor: &str, value: f64) -> ActiveAlert {
        ActiveAlert {
            labels: Labels::new(vec![
                (ALERT_NAME.into(), "Hot".into()),
                ("sensor".into(), sensor.into()),
            ]),
            annotations: BTreeMap::from([("summary".into(), format!("{sensor} hot"))]),
            value,
        }
    }

    #[test]
    fn fires_once_then_resolves_once() {
        let board = AlertBoard::new();
        let t = board.update("Hot", 0, vec![active("temp1", 99.0)], 1_000);
        assert_eq!(t.fired.len(), 1);
        assert_eq!(t.fired[0].state, AlertState::Firing);
        assert!(t.resolved.is_empty());

        let t = board.update("Hot", 0, vec![active("temp1", 100.0)], 2_000);
        assert_eq!(t, Transitions::default(), "steady firing announces nothing");
        assert_eq!(board.firing()[0].value, 100.0);
        assert_eq!(board.firing()[0].active_since_ms, 1_000);

        let t = board.update("Hot", 0, vec![], 3_000);
        assert!(t.fired.is_empty());
        assert_eq!(t.resolved.len(), 1);
        assert_eq!(t.resolved[0].resolved_at_ms, Some(3_000));
        assert!(board.firing().is_empty());
        assert_eq!(board.alerts().len(), 1, "resolved alert stays for the page");

        let t = board.update("Hot", 0, vec![], 4_000);
        assert_eq!(t, Transitions::default(), "resolved is announced once");
        board.update("Hot", 0, vec![], 3_000 + RESOLVED_RETENTION_MS);
        assert!(board.alerts().is_empty(), "resolved alerts expire");
    }

    #[test]
    fn refiring_after_resolve_is_a_new_alert() {
        let board = AlertBoard::new();
        board.update("Hot", 0, vec![active("temp1", 99.0)], 1_000);
        board.update("Hot", 0, vec![], 2_000);
        let t = board.update("Hot", 0, vec![active("temp1", 99.0)], 3_000);
        assert_eq!(t.fired.len(), 1);
        assert_eq!(t.fired[0].active_since_ms, 3_000);
    }

    #[test]
    fn pending_waits_for_hold_and_vanishes_silently() {
        let board = AlertBoard::new();
        let t = board.update("Hot", 60_000, vec![active("temp1", 99.0)], 0);
        assert!(t.fired.is_empty());
        assert_eq!(board.alerts()[0].state, AlertState::Pending);
        let t = board.update("Hot", 60_000, vec![active("temp1", 99.0)], 60_000);
        assert_eq!(t.fired.len(), 1);

        board.update("Hot", 60_000, vec![active("temp2", 99.0)], 70_000);
        let t = board.update("Hot", 60_000, vec![active("temp1", 99.0)], 80_000);
        assert!(t.resolved.is_empty(), "temp2 was only pending");
        assert_eq!(board.alerts().len(), 1);
    }

    #[test]
    fn other_rules_are_untouched() {
        let board = AlertBoard::new();
        board.update("Hot", 0, vec![active("temp1", 99.0)], 0);
        let t = board.update("Cold", 0, vec![], 1);
        assert!(t.resolved.is_empty());
        assert_eq!(board.firing().len(), 1);
    }

    #[test]
    fn keep_firing_for_and_inhibition() {
        let board = AlertBoard::new();
        let timing = Timing {
            hold_ms: 0,
            keep_firing_ms: 30_000,
        };
        let none = HashSet::new();
        board.apply("Hot", timing, vec![active("temp1", 99.0)], 0, &none);
        let t = board.apply("Hot", timing, vec![], 20_000, &none);
        assert_eq!(t, Transitions::default(), "kept firing");
        let t = board.apply("Hot", timing, vec![], 30_000, &none);
        assert_eq!(t.resolved.len(), 1);

        // Alerts without an instance label are inhibited when "" is silent;
        // use a labelled one to show freezing both ways.
        let with_instance = |i: &str| ActiveAlert {
            labels: Labels::from_pairs(&[(ALERT_NAME, "Hot"), ("instance", i)]),
            annotations: BTreeMap::new(),
            value: 1.0,
        };
        let silent = HashSet::from(["db1".to_string(), "db2".to_string()]);
        board.apply("Hot", Timing::default(), vec![with_instance("db1")], 40_000, &none);
        let t = board.apply("Hot", Timing::default(), vec![with_instance("db2")], 50_000, &silent);
        assert_eq!(t, Transitions::default(), "db1 stays firing, db2 does not start");
        assert_eq!(board.firing().len(), 1);
        let t = board.apply("Hot", Timing::default(), vec![], 60_000, &none);
        assert_eq!(t.resolved.len(), 1);
    }

    #[tokio::test]
    async fn state_and_history_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let board = AlertBoard::open(dir.path()).unwrap();
            board.update("Hot", 60_000, vec![active("temp1", 99.0)], 1_000);
            board.update("Hot2", 0, vec![active("temp2", 98.0)], 2_000);
            board.persist().await.unwrap();
        }
        let board = AlertBoard::open(dir.path()).unwrap();
        let alerts = board.alerts();
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0].state, AlertState::Pending);
        assert_eq!(alerts[0].active_since_ms, 1_000);
        assert_eq!(alerts[1].state, AlertState::Firing);
        assert_eq!(alerts[1].value, 98.0);
        assert_eq!(alerts[1].annotations["summary"], "temp2 hot");
        let history = board.history(0, 10_000, 10).unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!((history[0].at_ms, history[0].state), (1_000, AlertState::Pending));
        assert_eq!((history[1].at_ms, history[1].state), (2_000, AlertState::Firing));
        assert_eq!(board.history(1_500, 10_000, 10).unwrap().len(), 1);
        assert_eq!(board.history(0, 10_000, 1).unwrap().len(), 1, "limit");
        // Negative times (before 1970) sort before positive ones.
        assert!(board.history(-5_000, -1, 10).unwrap().is_empty());
    }

    #[tokio::test]
    async fn history_retention_drops_only_old_events_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let board = AlertBoard::open(dir.path()).unwrap();
            board.update("Hot", 0, vec![active("temp1", 99.0)], 1_000);
            board.update("Hot", 0, vec![], 2_000);
            board.update("Hot", 0, vec![active("temp1", 99.0)], 5_000);
            assert_eq!(board.history(0, 10_000, 10).unwrap().len(), 3);
            assert_eq!(board.prune_history(2_001).unwrap(), 2);
            assert_eq!(board.prune_history(2_001).unwrap(), 0, "nothing left to prune");
            board.persist().await.unwrap();
        }
        let board = AlertBoard::open(dir.path()).unwrap();
        let history = board.history(0, 10_000, 10).unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!((history[0].at_ms, history[0].state), (5_000, AlertState::Firing));
        assert_eq!(board.firing().len(), 1, "the board itself is not pruned");
        // The in-memory board prunes the same way.
        let mem = AlertBoard::new();
        mem.update("Hot", 0, vec![active("temp1", 99.0)], 1_000);
        mem.update("Hot", 0, vec![], 3_000);
        assert_eq!(mem.prune_history(2_000).unwrap(), 1);
        assert_eq!(mem.history(0, 10_000, 10).unwrap()[0].at_ms, 3_000);
    }

    #[test]
    fn fingerprint_is_alertmanagers() {
        // Empty label set: FNV-1a 64 offset basis, as `model.LabelSet{}.Fingerprint()`.
        let empty = Alert {
            labels: Labels::default(),
            annotations: BTreeMap::new(),
            state: AlertState::Firing,
            active_since_ms: 0,
            resolved_at_ms: None,
            value: 0.0,
        };
        assert_eq!(empty.fingerprint(), "cbf29ce484222325");
        let a = Alert {
            labels: active("temp1", 1.0).labels,
            ..empty.clone()
        };
        let b = Alert {
            labels: active("temp2", 1.0).labels,
            ..empty
        };
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
    }
}
