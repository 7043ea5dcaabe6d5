//! The store: durable time series in sled.
//!
//! SKELETON — the public API below is the contract other modules code
//! against; the bodies are being written.

use std::path::Path;

use crate::model::{Labels, Matcher, SeriesSamples};

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    /// On-disk content that cannot be decoded.
    #[error("corrupt record in {tree}: {detail}")]
    Corrupt {
        /// Which tree.
        tree: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The writer task is gone (store shutting down).
    #[error("store is shutting down")]
    Closed,
}

/// Tuning of the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// sled page cache capacity in bytes.
    pub cache_capacity_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_capacity_bytes: 256 * 1024 * 1024,
        }
    }
}

/// What happened to an appended batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored durably, with this many samples.
    Stored {
        /// Samples written.
        samples: usize,
    },
    /// Already stored earlier (seq <= the host's highest stored seq); nothing written.
    Duplicate {
        /// The host's highest stored seq.
        last_seq: u64,
    },
}

/// Facts about a host that reported, for the status page.
#[derive(Clone, Debug, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct HostRecord {
    /// Host name (the `instance` label).
    pub host: String,
    /// Highest stored batch seq.
    pub last_seq: u64,
    /// Timestamp of the newest stored sample, ms since epoch.
    pub last_sample_ms: i64,
    /// When the collector last received data from it, ms since epoch.
    pub last_report_ms: i64,
    /// Agent version from its Hello.
    pub agent_version: String,
    /// CPU model from its inventory.
    pub cpu_model: String,
    /// Kernel release from its inventory.
    pub kernel_release: String,
}

/// Counts for `/metrics` and the status page.
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreStats {
    /// Series known.
    pub series: u64,
    /// Bytes sled reports on disk.
    pub disk_bytes: u64,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {}

impl Store {
    /// Opens (or creates) the store under `dir`, replaying anything needed.
    pub fn open(_dir: &Path, _opts: StoreOptions) -> Result<Store, StoreError> {
        todo!()
    }

    /// Stores one batch of `host` durably and atomically together with
    /// `seq` as the host's highest stored seq. Returns only after the flush
    /// that covers it (group commit). A `seq` at or below the stored one is
    /// a replay: nothing is written.
    pub async fn append(
        &self,
        _host: &str,
        _seq: u64,
        _series: Vec<SeriesSamples>,
    ) -> Result<AppendOutcome, StoreError> {
        todo!()
    }

    /// Highest stored seq of `host`, if it ever stored anything.
    pub fn last_seq(&self, _host: &str) -> Result<Option<u64>, StoreError> {
        todo!()
    }

    /// Records a host's Hello facts (agent version, inventory) and report time.
    pub fn record_hello(&self, _record: HostRecord) -> Result<(), StoreError> {
        todo!()
    }

    /// Every series matching all `matchers` with its samples in
    /// `[start_ms, end_ms]` (inclusive), samples ascending. Series without
    /// samples in the range are left out.
    pub fn select(
        &self,
        _matchers: &[Matcher],
        _start_ms: i64,
        _end_ms: i64,
    ) -> Result<Vec<SeriesSamples>, StoreError> {
        todo!()
    }

    /// Label sets of series matching all `matchers` that have samples in
    /// `[start_ms, end_ms]`.
    pub fn series(&self, _matchers: &[Matcher], _start_ms: i64, _end_ms: i64) -> Result<Vec<Labels>, StoreError> {
        todo!()
    }

    /// Every label name in use, sorted.
    pub fn label_names(&self) -> Result<Vec<String>, StoreError> {
        todo!()
    }

    /// Every value of label `name`, sorted.
    pub fn label_values(&self, _name: &str) -> Result<Vec<String>, StoreError> {
        todo!()
    }

    /// Every host that ever reported, sorted by name.
    pub fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        todo!()
    }

    /// Counts for self-telemetry.
    pub fn stats(&self) -> StoreStats {
        todo!()
    }
}
