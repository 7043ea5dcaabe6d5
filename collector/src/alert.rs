//! Alert lifecycle: the board of current alerts (pending → firing →
//! resolved) and, in `alert/webhook.rs`, the notifier that tells on-call.
//!
//! `detect` decides *which* alerts are active at an evaluation and hands
//! that set to [`AlertBoard::update`]; the board alone decides what changed
//! (newly firing, newly resolved) so that a steadily firing alert is
//! announced once, not at every evaluation. The status page and the HTTP
//! API only read the board. State lives in memory for now; persisting it in
//! sled (so a restart neither pages twice nor forgets) is a later step.

mod webhook;

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use crate::model::Labels;

pub use webhook::{Notifier, webhook_payload};

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
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut hash = OFFSET;
        let mut add = |bytes: &[u8]| {
            for b in bytes {
                hash ^= u64::from(*b);
                hash = hash.wrapping_mul(PRIME);
            }
        };
        for (name, value) in self.labels.pairs() {
            add(name.as_bytes());
            add(&[0xff]);
            add(value.as_bytes());
            add(&[0xff]);
        }
        format!("{hash:016x}")
    }
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

/// The current alerts, shared between the rule loop and readers.
#[derive(Debug, Default)]
pub struct AlertBoard {
    alerts: Mutex<BTreeMap<Labels, Alert>>,
}

impl AlertBoard {
    /// An empty board.
    pub fn new() -> AlertBoard {
        AlertBoard::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Labels, Alert>> {
        // A panic while holding the lock cannot leave the map half-updated
        // in a way readers would misinterpret, so keep serving it.
        self.alerts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies one evaluation of rule `rule`: `active` is every alert the
    /// rule found holding at `now_ms`; `hold_ms` is its `for` duration (0:
    /// fire at once). Returns the alerts that started firing and those that
    /// resolved. Alerts of other rules are untouched.
    pub fn update(&self, rule: &str, hold_ms: i64, active: Vec<ActiveAlert>, now_ms: i64) -> Transitions {
        let mut board = self.lock();
        let mut out = Transitions::default();
        let mut seen = std::collections::BTreeSet::new();
        for a in active {
            seen.insert(a.labels.clone());
            let entry = board.get_mut(&a.labels).filter(|e| e.state != AlertState::Resolved);
            match entry {
                Some(existing) => {
                    existing.value = a.value;
                    existing.annotations = a.annotations;
                    if existing.state == AlertState::Pending && now_ms - existing.active_since_ms >= hold_ms {
                        existing.state = AlertState::Firing;
                        out.fired.push(existing.clone());
                    }
                }
                None => {
                    let state = if hold_ms <= 0 {
                        AlertState::Firing
                    } else {
                        AlertState::Pending
                    };
                    let alert = Alert {
                        labels: a.labels.clone(),
                        annotations: a.annotations,
                        state,
                        active_since_ms: now_ms,
                        resolved_at_ms: None,
                        value: a.value,
                    };
                    if state == AlertState::Firing {
                        out.fired.push(alert.clone());
                    }
                    board.insert(a.labels, alert);
                }
            }
        }
        board.retain(|labels, alert| {
            if alert.labels.get(ALERT_NAME) != rule || seen.contains(labels) {
                return true;
            }
            match alert.state {
                // A pending alert that stops holding never reached on-call.
                AlertState::Pending => false,
                AlertState::Firing => {
                    alert.state = AlertState::Resolved;
                    alert.resolved_at_ms = Some(now_ms);
                    out.resolved.push(alert.clone());
                    true
                }
                AlertState::Resolved => alert
                    .resolved_at_ms
                    .is_some_and(|at| now_ms - at < RESOLVED_RETENTION_MS),
            }
        });
        out
    }

    /// Every alert now firing, ordered by labels.
    pub fn firing(&self) -> Vec<Alert> {
        self.lock()
            .values()
            .filter(|a| a.state == AlertState::Firing)
            .cloned()
            .collect()
    }

    /// Every alert on the board (pending, firing and recently resolved).
    pub fn alerts(&self) -> Vec<Alert> {
        self.lock().values().cloned().collect()
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
