//! The store: durable time series in sled.
//!
//! This is the simple layout (one sled key per sample; `store/keys.rs` has
//! the table); the compressed block engine described in DESIGN.md replaces
//! it later behind the same API. What it already guarantees is the ingest
//! contract: an append of one batch — its new series definitions, all its
//! samples and the host's new highest seq — is one atomic sled batch, and
//! [`Store::append`] returns only after a flush covering it. Appends go
//! through a single writer thread (`store/writer.rs`) that group-commits
//! whatever is queued, so concurrent agent streams share one fsync and a
//! host's seq check is serialized. Reads go straight to sled through the
//! in-memory series index (`store/index.rs`), loaded at open.

mod backup;
pub(crate) mod codec;
mod index;
mod keys;
mod writer;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use self::index::SeriesIndex;
use self::keys::HostEntry;
use self::writer::AppendRequest;
pub(crate) use self::writer::now_ms;
pub use self::backup::{BackupError, restore_from};
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
pub struct Store {
    shared: Arc<Shared>,
    writer: Arc<Writer>,
}

/// State shared by the handles and the writer thread.
pub(crate) struct Shared {
    db: sled::Db,
    tree: sled::Tree,
    index: RwLock<SeriesIndex>,
    /// Every host's entry, mirrored from the `h` records. Also the lock that
    /// orders writes of those records (see `writer::commit`).
    hosts: Mutex<BTreeMap<String, HostEntry>>,
    flushes: AtomicU64,
    /// Set when a flush failed; see `writer::commit`.
    poisoned: AtomicBool,
}

/// Owns the writer thread. Dropped with the last `Store` clone: closing the
/// queue ends the thread, and joining it means every append that returned
/// was answered and our last database handle is gone when the drop returns.
/// (sled's own background threads may hold its file lock a moment longer.)
struct Writer {
    tx: Option<mpsc::Sender<AppendRequest>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Appends waiting for the writer before `append` callers queue up behind
/// them; large enough that one group commit serves every open stream.
const QUEUE_DEPTH: usize = 4096;

impl Store {
    /// Opens (or creates) the store under `dir`, replaying anything needed.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(opts.cache_capacity_bytes)
            .open()
            .map_err(|e| naming_dir(dir, e))?;
        let tree = db.open_tree(keys::TREE)?;

        let mut index = SeriesIndex::default();
        for item in tree.scan_prefix([keys::SERIES]) {
            let (key, value) = item?;
            let id = keys::parse_series_key(&key)?;
            let labels = keys::decode_labels(&value)?;
            if !index.insert(id, labels) {
                return Err(StoreError::Corrupt {
                    tree: keys::TREE,
                    detail: format!("series {id} defined twice or its labels reused"),
                });
            }
        }
        let mut hosts = BTreeMap::new();
        for item in tree.scan_prefix([keys::HOST]) {
            let (key, value) = item?;
            let entry = keys::decode_host(&key, &value)?;
            hosts.insert(entry.record.host.clone(), entry);
        }

        let shared = Arc::new(Shared {
            db,
            tree,
            index: RwLock::new(index),
            hosts: Mutex::new(hosts),
            flushes: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("hostpulse-store-writer".into())
                .spawn(move || writer::run(shared, rx))
                .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?
        };
        Ok(Store {
            shared,
            writer: Arc::new(Writer {
                tx: Some(tx),
                thread: Some(thread),
            }),
        })
    }

    /// Stores one batch of `host` durably and atomically together with
    /// `seq` as the host's highest stored seq. Returns only after the flush
    /// that covers it (group commit). A `seq` at or below the stored one is
    /// a replay: nothing is written.
    pub async fn append(&self, host: &str, seq: u64, series: Vec<SeriesSamples>) -> Result<AppendOutcome, StoreError> {
        let tx = self.writer.tx.as_ref().ok_or(StoreError::Closed)?;
        let (reply, outcome) = oneshot::channel();
        tx.send(AppendRequest {
            host: host.to_owned(),
            seq: Some(seq),
            series,
            reply,
        })
        .await
        .map_err(|_| StoreError::Closed)?;
        outcome.await.map_err(|_| StoreError::Closed)?
    }

    /// Stores samples durably with no per-host seq (bulk import, remote
    /// write): group-committed with every other append, returns the number
    /// of samples stored after the flush covering them.
    pub async fn append_unsequenced(&self, series: Vec<SeriesSamples>) -> Result<usize, StoreError> {
        let tx = self.writer.tx.as_ref().ok_or(StoreError::Closed)?;
        let (reply, outcome) = oneshot::channel();
        tx.send(AppendRequest {
            host: String::new(),
            seq: None,
            series,
            reply,
        })
        .await
        .map_err(|_| StoreError::Closed)?;
        match outcome.await.map_err(|_| StoreError::Closed)?? {
            AppendOutcome::Stored { samples } => Ok(samples),
            AppendOutcome::Duplicate { .. } => Ok(0),
        }
    }

    /// Seals every in-memory head into blocks and flushes, so that the data
    /// directory holds everything in its final form (import calls this
    /// before exiting).
    pub fn seal_all(&self) -> Result<(), StoreError> {
        self.shared.db.flush()?;
        Ok(())
    }

    /// Writes a consistent snapshot of the whole store to `out` (which must
    /// not exist); returns the number of records. Commits wait meanwhile.
    pub fn backup_to(&self, out: &Path) -> Result<u64, BackupError> {
        let _hosts = self.shared.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        backup::write_snapshot(&self.shared.db, out)
    }

    /// Highest stored seq of `host`, if it ever stored anything.
    pub fn last_seq(&self, host: &str) -> Result<Option<u64>, StoreError> {
        let hosts = self.shared.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(hosts.get(host).filter(|e| e.stored_any).map(|e| e.record.last_seq))
    }

    /// Records a host's Hello facts (agent version, inventory) and report time.
    ///
    /// The stored seq and newest sample time are kept; they belong to the
    /// write path. Not flushed: losing a Hello in a crash costs nothing, the
    /// agent sends another on reconnect.
    pub fn record_hello(&self, record: HostRecord) -> Result<(), StoreError> {
        // The lock is held across the insert so this cannot overwrite a seq
        // the writer advanced in between (see `writer::commit`).
        let mut hosts = self.shared.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        let mut entry = hosts.get(&record.host).cloned().unwrap_or_else(|| HostEntry {
            record: HostRecord {
                host: record.host.clone(),
                ..Default::default()
            },
            stored_any: false,
        });
        entry.record.agent_version = record.agent_version;
        entry.record.cpu_model = record.cpu_model;
        entry.record.kernel_release = record.kernel_release;
        entry.record.last_report_ms = entry.record.last_report_ms.max(record.last_report_ms);
        self.shared
            .tree
            .insert(keys::host_key(&record.host), keys::encode_host(&entry))?;
        hosts.insert(record.host, entry);
        Ok(())
    }

    /// Every series matching all `matchers` with its samples in
    /// `[start_ms, end_ms]` (inclusive), samples ascending. Series without
    /// samples in the range are left out.
    pub fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Result<Vec<SeriesSamples>, StoreError> {
        let mut out = Vec::new();
        if start_ms > end_ms {
            return Ok(out);
        }
        for (id, labels) in self.matching(matchers) {
            let mut samples = Vec::new();
            for item in self.sample_range(id, start_ms, end_ms) {
                let (key, value) = item?;
                samples.push((keys::parse_data_key(&key)?, keys::decode_value(&value)?));
            }
            if !samples.is_empty() {
                out.push(SeriesSamples { labels, samples });
            }
        }
        Ok(out)
    }

    /// Label sets of series matching all `matchers` that have samples in
    /// `[start_ms, end_ms]`.
    pub fn series(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Result<Vec<Labels>, StoreError> {
        let mut out = Vec::new();
        if start_ms > end_ms {
            return Ok(out);
        }
        for (id, labels) in self.matching(matchers) {
            if self.sample_range(id, start_ms, end_ms).next().transpose()?.is_some() {
                out.push(labels);
            }
        }
        Ok(out)
    }

    /// Every label name in use, sorted.
    pub fn label_names(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.index().label_names())
    }

    /// Every value of label `name`, sorted.
    pub fn label_values(&self, name: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.index().label_values(name))
    }

    /// Every host that ever reported, sorted by name.
    pub fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let hosts = self.shared.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(hosts.values().map(|e| e.record.clone()).collect())
    }

    /// Counts for self-telemetry.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            series: self.index().len() as u64,
            // Only used for a gauge; an unreadable size is shown as 0.
            disk_bytes: self.shared.db.size_on_disk().unwrap_or(0),
        }
    }

    /// Group-commit flushes done since open, for `hostpulse_store_flushes_total`
    /// (with N concurrent streams this grows slower than stored batches).
    pub fn flushes(&self) -> u64 {
        self.shared.flushes.load(Ordering::Relaxed)
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, SeriesIndex> {
        self.shared.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Matching series, copied out so no lock is held while reading sled.
    fn matching(&self, matchers: &[Matcher]) -> Vec<(u64, Labels)> {
        self.index().matching(matchers)
    }

    fn sample_range(&self, id: u64, start_ms: i64, end_ms: i64) -> sled::Iter {
        self.shared
            .tree
            .range(keys::data_key(id, start_ms)..=keys::data_key(id, end_ms))
    }
}

/// sled's open error, prefixed with the directory so "locked by another
/// process" says which store.
fn naming_dir(dir: &Path, e: sled::Error) -> StoreError {
    let detail = format!("cannot open store in {}: {e}", dir.display());
    StoreError::Sled(match e {
        sled::Error::Io(io) => sled::Error::Io(std::io::Error::new(io.kind(), detail)),
        _ => sled::Error::Io(std::io::Error::other(detail)),
    })
}

#[cfg(test)]
mod tests;
