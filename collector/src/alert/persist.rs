//! Durable alert state: a sled database of its own under
//! `<data_dir>/alerts` (kept apart from the sample store so the two evolve
//! independently), with one tree holding every alert on the board and one
//! holding the history of transitions, keyed by time, for incident
//! timelines.
//!
//! Records are JSON: small, rare (one write per transition, not per
//! evaluation), and readable with any sled dump when debugging an incident.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Alert, AlertState, Entry};
use crate::model::Labels;

/// Why alert state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AlertStoreError {
    /// sled failed.
    #[error("alert state database: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record does not decode (written by an incompatible version).
    #[error("alert state record: {0}")]
    Decode(#[from] serde_json::Error),
}

/// One transition in an alert's life, as kept in the history.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertEvent {
    /// When it happened, ms since epoch.
    pub at_ms: i64,
    /// The new state.
    pub state: AlertState,
    /// The alert's labels.
    pub labels: Labels,
    /// The value at the transition.
    pub value: f64,
    /// The `summary` annotation at the transition, if any.
    pub summary: String,
}

#[derive(Serialize, Deserialize)]
struct StoredEntry {
    rule: String,
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
    state: String,
    active_since_ms: i64,
    resolved_at_ms: Option<i64>,
    last_held_ms: i64,
    // Text, because JSON has no NaN and a rule value may be one.
    value: String,
}

#[derive(Serialize, Deserialize)]
struct StoredEvent {
    at_ms: i64,
    state: String,
    labels: Vec<(String, String)>,
    value: String,
    summary: String,
}

fn state_from(s: &str) -> AlertState {
    match s {
        "pending" => AlertState::Pending,
        "firing" => AlertState::Firing,
        _ => AlertState::Resolved,
    }
}

/// The open database.
#[derive(Clone)]
pub struct AlertDb {
    db: sled::Db,
    board: sled::Tree,
    history: sled::Tree,
}

impl std::fmt::Debug for AlertDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertDb").finish_non_exhaustive()
    }
}

/// History keys sort by time: the timestamp with its sign bit flipped, big
/// endian, then a unique id so two events in one millisecond both stay.
fn history_key(at_ms: i64, id: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&((at_ms as u64) ^ (1 << 63)).to_be_bytes());
    key[8..].copy_from_slice(&id.to_be_bytes());
    key
}

fn board_key(labels: &Labels) -> Vec<u8> {
    labels.to_string().into_bytes()
}

impl AlertDb {
    /// Opens (creating) the database in `dir`.
    pub fn open(dir: &Path) -> Result<AlertDb, AlertStoreError> {
        let db = sled::Config::new().path(dir).cache_capacity(8 << 20).open()?;
        Ok(AlertDb {
            board: db.open_tree("board")?,
            history: db.open_tree("history")?,
            db,
        })
    }

    /// Every alert that was on the board.
    pub fn load(&self) -> Result<Vec<Entry>, AlertStoreError> {
        let mut out = Vec::new();
        for item in self.board.iter() {
            let (_, bytes) = item?;
            let s: StoredEntry = serde_json::from_slice(&bytes)?;
            out.push(Entry {
                rule: s.rule,
                last_held_ms: s.last_held_ms,
                alert: Alert {
                    labels: Labels::new(s.labels),
                    annotations: s.annotations.into_iter().collect(),
                    state: state_from(&s.state),
                    active_since_ms: s.active_since_ms,
                    resolved_at_ms: s.resolved_at_ms,
                    value: s.value.parse().unwrap_or(f64::NAN),
                },
            });
        }
        Ok(out)
    }

    /// Writes (or replaces) an entry.
    pub fn put(&self, e: &Entry) -> Result<(), AlertStoreError> {
        let s = StoredEntry {
            rule: e.rule.clone(),
            labels: e.alert.labels.pairs().to_vec(),
            annotations: e.alert.annotations.clone().into_iter().collect(),
            state: e.alert.state.as_str().to_string(),
            active_since_ms: e.alert.active_since_ms,
            resolved_at_ms: e.alert.resolved_at_ms,
            last_held_ms: e.last_held_ms,
            value: e.alert.value.to_string(),
        };
        self.board.insert(board_key(&e.alert.labels), serde_json::to_vec(&s)?)?;
        Ok(())
    }

    /// Removes an entry.
    pub fn remove(&self, labels: &Labels) -> Result<(), AlertStoreError> {
        self.board.remove(board_key(labels))?;
        Ok(())
    }

    /// Appends a transition to the history.
    pub fn record(&self, event: &AlertEvent) -> Result<(), AlertStoreError> {
        let s = StoredEvent {
            at_ms: event.at_ms,
            state: event.state.as_str().to_string(),
            labels: event.labels.pairs().to_vec(),
            value: event.value.to_string(),
            summary: event.summary.clone(),
        };
        let id = self.db.generate_id()?;
        self.history
            .insert(history_key(event.at_ms, id), serde_json::to_vec(&s)?)?;
        Ok(())
    }

    /// Transitions in `[from_ms, to_ms]`, oldest first, at most `limit`.
    pub fn history(&self, from_ms: i64, to_ms: i64, limit: usize) -> Result<Vec<AlertEvent>, AlertStoreError> {
        let mut out = Vec::new();
        if from_ms > to_ms {
            return Ok(out);
        }
        let range = history_key(from_ms, 0)..=history_key(to_ms, u64::MAX);
        for item in self.history.range(range).take(limit) {
            let (_, bytes) = item?;
            let s: StoredEvent = serde_json::from_slice(&bytes)?;
            out.push(AlertEvent {
                at_ms: s.at_ms,
                state: state_from(&s.state),
                labels: Labels::new(s.labels),
                value: s.value.parse().unwrap_or(f64::NAN),
                summary: s.summary,
            });
        }
        Ok(out)
    }

    /// Deletes history events older than `before_ms`; returns how many.
    /// Keys sort by time, so this walks only what it deletes.
    pub fn prune_history(&self, before_ms: i64) -> Result<usize, AlertStoreError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.history.range(..history_key(before_ms, 0)) {
            let (key, _) = item?;
            batch.remove(key);
            n += 1;
        }
        self.history.apply_batch(batch)?;
        Ok(n)
    }

    /// Waits until everything written so far is on disk.
    pub async fn flush(&self) -> Result<(), AlertStoreError> {
        self.db.flush_async().await?;
        Ok(())
    }
}
