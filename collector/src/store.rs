//! The store: durable, compressed time series in sled.
//!
//! Write path: [`Store::append`] queues a batch for the writer thread
//! (`store/writer.rs`), which group-commits every queued batch as one WAL
//! record — plus new series definitions and each host's new highest seq —
//! in one atomic sled batch, flushes once, and only then answers. Accepted
//! samples also go to in-memory heads (`store/head.rs`). Samples further
//! than the out-of-order window behind their series' newest are rejected
//! and counted.
//!
//! Sealing (`store/seal.rs`): once a time window (2 h) is closed, or the
//! heads outgrew half their memory bound, the writer freezes the heads'
//! samples before a cut into a generation (moved, not copied; readers keep
//! seeing it) and a seal thread turns it into one block per series group
//! (the `instance` label) and window — columnar, compressed
//! (`store/codec/`), checksummed (`store/block.rs`) — with 1 h rollups
//! beside it (`store/rollup.rs`; 5 m rollups are computed from the block
//! until retention drops it, and written then), while group commits go on.
//! The seal's atomic batch lists the blocks, deletes the WAL records it
//! covered wholly and stores a seal mark saying which samples of the
//! remaining records are sealed, so replay skips them.
//! Several blocks of one window are compacted into one; retention drops raw
//! blocks and each rollup resolution separately. sled keeps its files at
//! their high-water mark, so [`compact_dir`] rewrites a closed store's
//! directory to its live records (`store/compact.rs`; import does it last).
//!
//! The out-of-order reference of a series is its newest sample seen since
//! open (sealed or not); after a restart a series whose samples were all
//! sealed has none, so one late sample may be accepted into an already
//! sealed window — readers merge it (newest write wins), so this costs
//! strictness, not correctness.
//!
//! Reads copy the matching series' head samples, then decode only the
//! sections of the blocks overlapping the range that belong to those series.
//! A block that fails its checksum is reported once and skipped; the rest
//! keeps serving. On open the WAL is replayed into heads; damaged records
//! are cut and reported. Keys and record layouts are in `store/keys.rs`.

mod backup;
mod block;
pub(crate) mod codec;
mod compact;
// Decoders of on-disk values, public for the fuzz targets and their corpus replay.
pub mod decode;
pub(crate) mod fasthash;
mod files;
mod head;
mod index;
mod keys;
pub mod rollup;
mod seal;
mod writer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

pub use self::backup::{BackupError, Snapshot, SnapshotSummary, restore_from, verify_backup};
use self::codec::decoded_cache::CachedRun;
pub use self::codec::decoded_cache::DecodedCacheStats;
pub use self::compact::{CompactReport, compact_dir, dir_bytes};
use self::head::{Heads, window_start};
use self::index::SeriesIndex;
use self::keys::{BlockId, CatalogEntry, HostEntry};
pub use self::rollup::{Bucket, Resolution};
use self::writer::AppendRequest;
pub(crate) use self::writer::now_ms;

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
    /// An append named a series id the store never gave out.
    #[error("append names unknown series id {0}")]
    UnknownSeries(u64),
    /// An earlier append under the same [`AppendFence`] failed, so this
    /// one was refused without storing anything of it.
    #[error("an earlier append of this stream failed; this one was not stored")]
    EarlierAppendFailed,
}

/// Ties the pipelined appends of one ingest stream together: once one of
/// them fails, the writer refuses every later one unapplied, in the same
/// group commit or a later one. Otherwise a later batch could be stored
/// while an earlier one was not, advancing the host's highest seq past the
/// failed batch, and the agent's resend of it would be dropped as a
/// duplicate — a loss the agent was told was fine.
#[derive(Clone, Debug, Default)]
pub struct AppendFence(Arc<AtomicBool>);

impl AppendFence {
    /// Whether an append under this fence failed.
    pub fn failed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Refuses every later append under this fence.
    pub fn fail(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The outcome of an append [`Store::submit_batch`] queued, to be awaited.
pub type PendingAppend = oneshot::Receiver<Result<BatchReport, StoreError>>;

/// Awaits an append [`Store::submit_batch`] queued.
pub async fn appended(pending: PendingAppend) -> Result<BatchReport, StoreError> {
    pending.await.map_err(|_| StoreError::Closed)?
}

/// Tuning of the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// sled page cache capacity in bytes.
    pub cache_capacity_bytes: u64,
    /// How far behind its series' newest sample a sample may arrive and
    /// still be stored, ms.
    pub out_of_order_ms: i64,
    /// Bound on the heads' memory; beyond it heads are sealed early.
    pub head_max_bytes: usize,
    /// Keep raw samples this long (back from the newest sample), ms; `None`
    /// keeps them forever.
    pub retention_ms: Option<i64>,
    /// Keep 5 m and 1 h rollups this long, ms; `None` forever.
    pub rollup_retention_ms: [Option<i64>; 2],
    /// Width of the time windows blocks cover, ms.
    pub window_ms: i64,
    /// Bound on the cache of decoded block sections readers share
    /// (`store/codec/decoded_cache.rs`), bytes; 0 turns it off.
    pub decoded_cache_bytes: usize,
}

/// Default budget of the decoded-section cache: 128 MiB, about 16 M samples.
pub const DEFAULT_DECODED_CACHE_BYTES: usize = 128 << 20;

/// Default block window: two hours.
pub const DEFAULT_WINDOW_MS: i64 = 2 * 3_600_000;
/// Default out-of-order window: one hour.
pub const DEFAULT_OUT_OF_ORDER_MS: i64 = 3_600_000;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_capacity_bytes: 256 * 1024 * 1024,
            out_of_order_ms: DEFAULT_OUT_OF_ORDER_MS,
            head_max_bytes: 512 * 1024 * 1024,
            retention_ms: None,
            rollup_retention_ms: [None, None],
            window_ms: DEFAULT_WINDOW_MS,
            decoded_cache_bytes: DEFAULT_DECODED_CACHE_BYTES,
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

/// [`AppendOutcome`] plus what was refused, from [`Store::append_detailed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendReport {
    /// Stored or duplicate.
    pub outcome: AppendOutcome,
    /// Samples refused for being older than the out-of-order window allows.
    pub rejected_out_of_order: usize,
}

/// A series an append names: by its labels, or by the id an earlier
/// append returned for them ([`BatchReport::new_ids`]), which spares the
/// store resolving (and the caller copying) the label set on every batch.
#[derive(Clone, Debug, PartialEq)]
pub enum SeriesKey {
    /// A store series id.
    Id(u64),
    /// A full label set.
    Labels(Labels),
}

/// One append's samples grouped by series, kept flat: one vector for every
/// sample rather than one per series, so a batch costs a few allocations
/// however many series it touches.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppendBatch {
    keys: Vec<SeriesKey>,
    /// End of each series' samples in `samples`.
    ends: Vec<usize>,
    samples: Vec<(i64, f64)>,
}

impl AppendBatch {
    /// An empty batch with room for `series` series and `samples` samples.
    pub fn with_capacity(series: usize, samples: usize) -> Self {
        AppendBatch {
            keys: Vec::with_capacity(series),
            ends: Vec::with_capacity(series),
            samples: Vec::with_capacity(samples),
        }
    }

    /// Adds a series with its samples, ascending by timestamp with one
    /// value per timestamp (as in [`SeriesSamples`]).
    pub fn push(&mut self, key: SeriesKey, samples: &[(i64, f64)]) {
        self.begin(key);
        self.samples.extend_from_slice(samples);
        self.close();
    }

    /// Starts a series whose samples follow through [`AppendBatch::sample`].
    pub fn begin(&mut self, key: SeriesKey) {
        self.keys.push(key);
        self.ends.push(self.samples.len());
    }

    /// Adds a sample to the series last begun (ascending timestamps).
    pub fn sample(&mut self, ts: i64, value: f64) {
        self.samples.push((ts, value));
        self.close();
    }

    fn close(&mut self) {
        if let Some(end) = self.ends.last_mut() {
            *end = self.samples.len();
        }
    }

    /// Series in the batch.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it holds no series.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Samples over all series.
    pub fn sample_count(&self) -> usize {
        self.samples.len()
    }

    /// Each series with its samples, in the order pushed.
    pub fn iter(&self) -> impl Iterator<Item = (&SeriesKey, &[(i64, f64)])> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        self.keys
            .iter()
            .zip(starts.zip(self.ends.iter().copied()))
            .map(|(key, (from, to))| (key, self.samples.get(from..to).unwrap_or_default()))
    }
}

impl From<Vec<SeriesSamples>> for AppendBatch {
    fn from(series: Vec<SeriesSamples>) -> Self {
        let total = series.iter().map(|s| s.samples.len()).sum();
        let mut batch = AppendBatch::with_capacity(series.len(), total);
        for s in series {
            batch.push(SeriesKey::Labels(s.labels), &s.samples);
        }
        batch
    }
}

/// What [`Store::append_batch`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchReport {
    /// Stored or duplicate, and what was refused.
    pub report: AppendReport,
    /// For each series the batch named by labels (its position in the
    /// batch), the id it has now; later appends may name it by that id.
    /// Empty for a duplicate; series with no samples get none.
    pub new_ids: Vec<(usize, u64)>,
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
    /// Sampling interval the agent announced in its Hello, ms (0: unknown,
    /// an older record or agent). Host silence is judged against it.
    #[serde(default)]
    pub interval_ms: u64,
    /// How its ingest stream stands, as this collector last saw it.
    #[serde(default)]
    pub stream: StreamState,
    /// When `stream` last changed, ms since epoch: the Hello's time while
    /// the stream is open, the end's time after.
    #[serde(default)]
    pub stream_since_ms: i64,
}

/// The state of a host's ingest stream, for host-silence detection: an
/// open stream that carries nothing is a host gone quiet; a stream that
/// ended is an agent that is expected to reconnect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum StreamState {
    /// No stream seen (a record written before streams were tracked).
    #[default]
    Unknown,
    /// A stream is open.
    Open,
    /// The agent closed it cleanly (agent stop, restart or host shutdown).
    Goodbye,
    /// It broke: transport error, reset, keepalive timeout, agent crash.
    Dropped,
    /// This collector ended it (overload, storage or protocol error); the
    /// agent backs off and may fail over to another collector.
    Refused,
}

/// Counts for `/metrics` and the status page.
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreStats {
    /// Series known.
    pub series: u64,
    /// Bytes on disk: sled's files plus the block files.
    pub disk_bytes: u64,
    /// Series with samples in memory (not yet sealed).
    pub active_series: u64,
    /// Samples in memory (live heads and a generation being sealed).
    pub head_samples: u64,
    /// Bytes of RAM those samples and the head table take: allocated
    /// capacity plus the allocator's overhead, the figure the head memory
    /// bound is enforced against.
    pub head_bytes: u64,
    /// Estimated bytes of RAM the heads and index use per active series.
    pub ram_bytes_per_active_series: u64,
    /// Sealed blocks (raw) in the catalog.
    pub blocks: u64,
    /// Bytes of those blocks.
    pub block_bytes: u64,
    /// Samples refused as too far out of order since open.
    pub rejected_out_of_order: u64,
    /// Blocks found damaged since open (reported and skipped).
    pub corrupt_blocks: u64,
    /// WAL records found damaged and cut at open.
    pub wal_records_cut: u64,
    /// 1 while the heads are over their bound during a seal
    /// ([`Store::head_pressure`]), else 0.
    pub head_over_bound: u64,
    /// Group-commit flushes since open.
    pub flushes: u64,
    /// Seals since open.
    pub seals: u64,
    /// Compactions since open.
    pub compactions: u64,
    /// The decoded-section cache's size and hit/miss/eviction counts.
    pub decoded_cache: DecodedCacheStats,
}

impl StoreStats {
    /// The figures as Prometheus metrics: `(name, type, help, value)`, for
    /// `/metrics` to render.
    pub fn metrics(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
        vec![
            (
                "hostpulse_store_series",
                "gauge",
                "Series known to the store.",
                self.series,
            ),
            (
                "hostpulse_store_disk_bytes",
                "gauge",
                "Bytes the store occupies on disk.",
                self.disk_bytes,
            ),
            (
                "hostpulse_store_active_series",
                "gauge",
                "Series with unsealed samples in memory.",
                self.active_series,
            ),
            (
                "hostpulse_store_head_samples",
                "gauge",
                "Unsealed samples in memory.",
                self.head_samples,
            ),
            (
                "hostpulse_store_head_bytes",
                "gauge",
                "Bytes of RAM the unsealed samples take (allocated, with allocator overhead).",
                self.head_bytes,
            ),
            (
                "hostpulse_store_ram_bytes_per_active_series",
                "gauge",
                "Estimated RAM of heads and index per active series.",
                self.ram_bytes_per_active_series,
            ),
            ("hostpulse_store_blocks", "gauge", "Sealed blocks.", self.blocks),
            (
                "hostpulse_store_block_bytes",
                "gauge",
                "Bytes of sealed blocks.",
                self.block_bytes,
            ),
            (
                "hostpulse_store_rejected_out_of_order_total",
                "counter",
                "Samples rejected as older than the out-of-order window allows.",
                self.rejected_out_of_order,
            ),
            (
                "hostpulse_store_corrupt_blocks_total",
                "counter",
                "Damaged blocks found and skipped.",
                self.corrupt_blocks,
            ),
            (
                "hostpulse_store_wal_records_cut_total",
                "counter",
                "Damaged WAL records cut at open.",
                self.wal_records_cut,
            ),
            (
                "hostpulse_store_head_over_bound",
                "gauge",
                "1 while unsealed samples exceed head_max_mb during a seal (the store is behind).",
                self.head_over_bound,
            ),
            (
                "hostpulse_store_flushes_total",
                "counter",
                "Group-commit flushes of the store.",
                self.flushes,
            ),
            (
                "hostpulse_store_seals_total",
                "counter",
                "Seals of heads into blocks.",
                self.seals,
            ),
            (
                "hostpulse_store_compactions_total",
                "counter",
                "Windows compacted into one block.",
                self.compactions,
            ),
            (
                "hostpulse_store_decoded_cache_bytes",
                "gauge",
                "Bytes held by the cache of decoded block sections.",
                self.decoded_cache.bytes,
            ),
            (
                "hostpulse_store_decoded_cache_hits_total",
                "counter",
                "Block reads served wholly from the decoded-section cache.",
                self.decoded_cache.hits,
            ),
            (
                "hostpulse_store_decoded_cache_misses_total",
                "counter",
                "Block reads that decoded (decoded-section cache on).",
                self.decoded_cache.misses,
            ),
            (
                "hostpulse_store_decoded_cache_evictions_total",
                "counter",
                "Sections evicted from the decoded-section cache.",
                self.decoded_cache.evictions,
            ),
        ]
    }
}

/// One series' rollup buckets, from [`Store::select_rollup`].
#[derive(Clone, Debug, PartialEq)]
pub struct RollupSeries {
    /// The series identity.
    pub labels: Labels,
    /// Buckets ascending by start.
    pub buckets: Vec<Bucket>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    writer: Arc<Writer>,
}

/// Counters kept by the engine.
#[derive(Default)]
pub(crate) struct Counters {
    flushes: AtomicU64,
    rejected_out_of_order: AtomicU64,
    corrupt_blocks: AtomicU64,
    wal_records_cut: AtomicU64,
    seals: AtomicU64,
    compactions: AtomicU64,
}

/// What only the writer (or a caller holding its lock) touches.
#[derive(Debug)]
pub(crate) struct WriterState {
    /// Windows before this were sealed by time already.
    sealed_upto: i64,
}

/// State shared by the handles and the writer thread.
pub(crate) struct Shared {
    db: sled::Db,
    tree: sled::Tree,
    /// Sealed blocks and rollups (`store/files.rs`).
    files: files::Files,
    opts: StoreOptions,
    index: RwLock<SeriesIndex>,
    /// Every host's entry, mirrored from the `h` records. Also the lock that
    /// orders writes of those records (see `writer::commit`).
    hosts: Mutex<BTreeMap<String, HostEntry>>,
    heads: Mutex<Heads>,
    /// Every block, from the `c` records.
    catalog: RwLock<BTreeMap<BlockId, CatalogEntry>>,
    /// Held by the writer per group commit (and while it freezes a
    /// generation to seal), by [`Store::seal_all`] and by backups.
    write_lock: Mutex<WriterState>,
    /// Held by whoever seals, compacts or applies retention (the seal
    /// thread, a small seal on the writer thread, [`Store::seal_all`]) and
    /// by backups (so they see no half-done seal). Taken before
    /// `write_lock` by those that take both.
    seal_lock: Mutex<seal::SealState>,
    /// A frozen generation waiting for the seal thread.
    pending_seal: Mutex<Option<Arc<head::Generation>>>,
    /// Next log sequence number for WAL records and blocks.
    next_lsn: AtomicU64,
    /// `Heads::bytes` as of the last commit or seal, for the cheap
    /// [`Store::head_pressure`].
    head_bytes: AtomicUsize,
    counters: Counters,
    /// Blocks already reported damaged, so each is logged once.
    reported: Mutex<HashSet<BlockId>>,
    /// Decoded sections of sealed blocks, shared by readers.
    decoded: codec::decoded_cache::DecodedCache<BlockId>,
    /// Set when a flush failed; see `writer::commit`.
    poisoned: AtomicBool,
}

impl Shared {
    /// Logs and counts a damaged block once.
    fn report_corrupt(&self, id: BlockId, detail: &str) {
        let mut reported = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
        if reported.insert(id) {
            self.counters.corrupt_blocks.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                group = id.group,
                window_ms = id.window,
                lsn = id.lsn,
                detail,
                "damaged block skipped; the rest of the store keeps serving"
            );
        }
    }
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
    /// Opens (or creates) the store under `dir`, replaying the WAL.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        if opts.window_ms <= 0 || opts.out_of_order_ms < 0 {
            return Err(StoreError::Corrupt {
                tree: keys::TREE,
                detail: "window must be positive and the out-of-order window not negative".into(),
            });
        }
        compact::recover(dir)?;
        // A store closed just before in this process may still have sled's
        // I/O threads holding the lock for a moment; wait for them (bounded).
        let db = compact::open_waiting(sled::Config::new().path(dir).cache_capacity(opts.cache_capacity_bytes))
            .map_err(|e| naming_dir(dir, e))?;
        let tree = db.open_tree(keys::TREE)?;

        let mut index = SeriesIndex::default();
        for item in tree.scan_prefix([keys::SERIES]) {
            let (key, value) = item?;
            let first = keys::parse_series_key(&key)?;
            for (i, labels) in keys::decode_series_page(&value)?.into_iter().enumerate() {
                let id = first.checked_add(i as u64).ok_or_else(|| StoreError::Corrupt {
                    tree: keys::TREE,
                    detail: format!("series page at {first} runs past the last id"),
                })?;
                if !index.insert(id, &labels) {
                    return Err(StoreError::Corrupt {
                        tree: keys::TREE,
                        detail: format!("series {id} defined twice or its labels reused"),
                    });
                }
            }
        }
        let mut hosts = BTreeMap::new();
        for item in tree.scan_prefix([keys::HOST]) {
            let (key, value) = item?;
            let entry = keys::decode_host(&key, &value)?;
            hosts.insert(entry.record.host.clone(), entry);
        }
        let mut max_lsn = match tree.get(keys::META_LSN)? {
            Some(v) if v.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v);
                u64::from_be_bytes(b)
            }
            Some(_) => {
                return Err(StoreError::Corrupt {
                    tree: keys::TREE,
                    detail: "log sequence number record".into(),
                });
            }
            None => 0,
        };
        let mut catalog = BTreeMap::new();
        let mut bad_catalog = 0u64;
        for item in tree.scan_prefix([keys::CATALOG]) {
            let (key, value) = item?;
            // A damaged entry hides its block (reported) rather than
            // keeping the whole store from opening.
            match keys::parse_block_key(&key).and_then(|id| Ok((id, keys::decode_catalog(&value)?))) {
                Ok((id, entry)) => {
                    max_lsn = max_lsn.max(id.lsn);
                    catalog.insert(id, entry);
                }
                Err(e) => {
                    tracing::error!(error = %e, "damaged block catalog entry skipped");
                    bad_catalog += 1;
                }
            }
        }

        let counters = Counters::default();
        counters.corrupt_blocks.store(bad_catalog, Ordering::Relaxed);
        let marks = seal::SealMarks::load(&tree)?;
        let heads = replay_wal(&tree, &index, &counters, &mut max_lsn, &marks)?;
        let files = files::Files::open(dir)?;
        files::reconcile(&tree, &files, &catalog)?;
        backup::remove_leftover_links(dir);

        let decoded_cache_bytes = opts.decoded_cache_bytes;
        let shared = Arc::new(Shared {
            db,
            tree,
            files,
            opts,
            index: RwLock::new(index),
            hosts: Mutex::new(hosts),
            head_bytes: AtomicUsize::new(heads.bytes()),
            heads: Mutex::new(heads),
            catalog: RwLock::new(catalog),
            write_lock: Mutex::new(WriterState { sealed_upto: i64::MIN }),
            seal_lock: Mutex::new(seal::SealState { marks }),
            pending_seal: Mutex::new(None),
            next_lsn: AtomicU64::new(max_lsn + 1),
            counters,
            reported: Mutex::new(HashSet::new()),
            decoded: codec::decoded_cache::DecodedCache::new(decoded_cache_bytes),
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
    /// a replay: nothing is written. Samples too far out of order are left
    /// out (see [`Store::append_detailed`] for how many).
    pub async fn append(&self, host: &str, seq: u64, series: Vec<SeriesSamples>) -> Result<AppendOutcome, StoreError> {
        Ok(self.append_detailed(host, seq, series).await?.outcome)
    }

    /// [`Store::append`], also reporting samples rejected as out of order.
    pub async fn append_detailed(
        &self,
        host: &str,
        seq: u64,
        series: Vec<SeriesSamples>,
    ) -> Result<AppendReport, StoreError> {
        Ok(self.queue(host.to_owned(), Some(seq), series.into()).await?.report)
    }

    /// [`Store::append_detailed`] for a batch whose series may be named by
    /// id (ingest streams resolve each series once, then send ids). An id
    /// the store never gave out fails the append with
    /// [`StoreError::UnknownSeries`] and stores nothing of it.
    pub async fn append_batch(&self, host: &str, seq: u64, batch: AppendBatch) -> Result<BatchReport, StoreError> {
        self.queue(host.to_owned(), Some(seq), batch).await
    }

    /// [`Store::append_batch`] split in two: waits only until the append
    /// is queued for the writer and returns its pending outcome (await it
    /// with [`appended`]). Appends queued one after another reach the
    /// writer in that order, so a stream may have several in flight; under
    /// `fence`, one failing refuses all later ones.
    pub async fn submit_batch(
        &self,
        host: &str,
        seq: u64,
        batch: AppendBatch,
        fence: &AppendFence,
    ) -> Result<PendingAppend, StoreError> {
        let tx = self.writer.tx.as_ref().ok_or(StoreError::Closed)?;
        let (reply, outcome) = oneshot::channel();
        tx.send(AppendRequest {
            host: host.to_owned(),
            seq: Some(seq),
            series: batch,
            reply,
            fence: Some(fence.clone()),
        })
        .await
        .map_err(|_| StoreError::Closed)?;
        Ok(outcome)
    }

    /// Stores samples durably with no per-host seq (bulk import, remote
    /// write): group-committed with every other append, returns the number
    /// of samples stored after the flush covering them. Samples too far out
    /// of order are not stored (and are counted in [`StoreStats`]).
    pub async fn append_unsequenced(&self, series: Vec<SeriesSamples>) -> Result<usize, StoreError> {
        match self.queue(String::new(), None, series.into()).await?.report.outcome {
            AppendOutcome::Stored { samples } => Ok(samples),
            AppendOutcome::Duplicate { .. } => Ok(0),
        }
    }

    async fn queue(&self, host: String, seq: Option<u64>, series: AppendBatch) -> Result<BatchReport, StoreError> {
        let tx = self.writer.tx.as_ref().ok_or(StoreError::Closed)?;
        let (reply, outcome) = oneshot::channel();
        tx.send(AppendRequest {
            host,
            seq,
            series,
            reply,
            fence: None,
        })
        .await
        .map_err(|_| StoreError::Closed)?;
        outcome.await.map_err(|_| StoreError::Closed)?
    }

    /// Seals every head sample into blocks, compacts every window with more
    /// than one block, and flushes, so the data directory holds everything
    /// in its final form (import calls this before exiting). Blocks the
    /// calling thread while it runs.
    pub fn seal_all(&self) -> Result<(), StoreError> {
        let mut seal_state = self.shared.seal_lock.lock().unwrap_or_else(PoisonError::into_inner);
        // A generation queued for the seal thread goes first, in order.
        seal::seal_pending(&self.shared, &mut seal_state)?;
        let _state = self.shared.write_lock.lock().unwrap_or_else(PoisonError::into_inner);
        // One the writer froze in between.
        seal::seal_pending(&self.shared, &mut seal_state)?;
        let through = self.shared.next_lsn.load(Ordering::SeqCst).saturating_sub(1);
        let generation = self
            .shared
            .heads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .freeze(i64::MAX, through);
        if let Some(generation) = generation
            && let Err(e) = seal::seal_generation(&self.shared, &mut seal_state, &generation, seal::SEAL_THREADS)
        {
            // Left for the seal thread to retry, like any failed seal.
            *self.shared.pending_seal.lock().unwrap_or_else(PoisonError::into_inner) = Some(generation);
            return Err(e);
        }
        seal::compact(&self.shared, true)?;
        seal::apply_retention(&self.shared)?;
        self.shared.db.flush()?;
        Ok(())
    }

    /// Whether the store is behind: the heads hold more memory than
    /// `head_max_bytes` allows (live heads plus a generation still sealing)
    /// while a generation is sealing, so waiting would free memory. Heads
    /// over the bound with no seal running do not count: what remains after
    /// a seal (the head table, each series' first vector) is not freed by
    /// waiting. Exported as `hostpulse_store_head_over_bound`; ingest does
    /// not shed on it, because shedding every agent during a seal made a
    /// 10,000-agent fleet back off all at once. One atomic load; the heads'
    /// lock only when over the bound.
    pub fn head_pressure(&self) -> bool {
        if self.shared.head_bytes.load(Ordering::Relaxed) <= self.shared.opts.head_max_bytes {
            return false;
        }
        // One lock at a time, never nested.
        let sealing = self
            .shared
            .heads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sealing
            .is_some();
        sealing
            || self
                .shared
                .pending_seal
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
    }

    /// Waits for a seal the writer queued (tests use it to see its blocks).
    #[cfg(test)]
    pub(crate) fn settle(&self) -> Result<(), StoreError> {
        let mut seal_state = self.shared.seal_lock.lock().unwrap_or_else(PoisonError::into_inner);
        seal::seal_pending(&self.shared, &mut seal_state).map(|_| ())
    }

    /// Writes a consistent snapshot of the whole store to `out` (which must
    /// not exist); returns the number of records. Commits wait only while
    /// the snapshot is taken ([`Store::snapshot`]).
    pub fn backup_to(&self, out: &Path) -> Result<u64, BackupError> {
        if out.exists() {
            return Err(BackupError::Exists(out.display().to_string()));
        }
        Ok(self.snapshot()?.write_file(out)?.records)
    }

    /// A consistent snapshot of the whole store, to write with
    /// [`Snapshot::write_to`] while ingest goes on: commits wait only while
    /// the sled records are collected, not while block files are linked or
    /// anything is written (`store/backup.rs`).
    pub fn snapshot(&self) -> Result<Snapshot, BackupError> {
        // No seal, compaction or retention half done (block files written
        // but not listed, or unlisted but not yet removed), and none until
        // every block file is linked (or open): only they change files and
        // the catalog.
        let _sealing = self.shared.seal_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let trees = {
            // Group commits and Hello records write the rest.
            let _state = self.shared.write_lock.lock().unwrap_or_else(PoisonError::into_inner);
            let _hosts = self.shared.hosts.lock().unwrap_or_else(PoisonError::into_inner);
            Snapshot::copy_trees(&self.shared.db)?
        };
        trees.with_files(&self.shared.files)
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
        // A Hello opens a stream; its time names the stream for
        // `record_stream_end`.
        entry.record.interval_ms = record.interval_ms;
        entry.record.stream = StreamState::Open;
        entry.record.stream_since_ms = record.last_report_ms;
        self.shared
            .tree
            .insert(keys::host_key(&record.host), keys::encode_host(&entry))?;
        hosts.insert(record.host, entry);
        Ok(())
    }

    /// Records how the stream whose Hello was recorded at `opened_ms` ended.
    /// A newer stream of the same host (a reconnect that raced this end)
    /// keeps its state. Not flushed, like `record_hello`.
    pub fn record_stream_end(
        &self,
        host: &str,
        opened_ms: i64,
        end: StreamState,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let mut hosts = self.shared.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = hosts.get_mut(host) else {
            return Ok(());
        };
        if entry.record.stream != StreamState::Open || entry.record.stream_since_ms != opened_ms {
            return Ok(());
        }
        entry.record.stream = end;
        entry.record.stream_since_ms = at_ms;
        self.shared
            .tree
            .insert(keys::host_key(host), keys::encode_host(entry))?;
        Ok(())
    }

    /// Every series matching all `matchers` with its samples in
    /// `[start_ms, end_ms]` (inclusive), samples ascending. Series without
    /// samples in the range are left out.
    pub fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Result<Vec<SeriesSamples>, StoreError> {
        if start_ms > end_ms {
            return Ok(Vec::new());
        }
        let matched = self.matching(matchers);
        let mut samples = self.read_samples(&matched, start_ms, end_ms, &HashSet::new())?;
        Ok(matched
            .into_iter()
            .filter_map(|(id, labels)| {
                let s = samples.remove(&id).unwrap_or_default();
                (!s.is_empty()).then_some(SeriesSamples { labels, samples: s })
            })
            .collect())
    }

    /// [`Store::select`] with the matching series read in up to `parts`
    /// parts on scoped threads, whole hosts per part (a block holds one
    /// host's series, so no block is read twice); same result and order.
    pub fn select_parallel(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        parts: usize,
    ) -> Result<Vec<SeriesSamples>, StoreError> {
        if start_ms > end_ms {
            return Ok(Vec::new());
        }
        let matched = self.matching(matchers);
        let mut by_group: Vec<(u64, usize)> = matched
            .iter()
            .enumerate()
            .map(|(i, (_, labels))| (keys::group_hash(labels.get("instance")), i))
            .collect();
        by_group.sort_unstable();
        // Cut at host boundaries into parts of about equal series counts.
        let per_part = matched.len().div_ceil(parts.max(1)).max(1);
        let mut chunks: Vec<Vec<(u64, Labels)>> = vec![Vec::new()];
        for (k, &(group, i)) in by_group.iter().enumerate() {
            let cut = k > 0 && by_group[k - 1].0 != group;
            if cut && chunks.last().is_some_and(|c| c.len() >= per_part) {
                chunks.push(Vec::new());
            }
            if let Some(c) = chunks.last_mut() {
                c.push(matched[i].clone());
            }
        }
        let mut samples: HashMap<u64, Vec<(i64, f64)>> = HashMap::with_capacity(matched.len());
        if chunks.len() < 2 {
            samples = self.read_samples(&matched, start_ms, end_ms, &HashSet::new())?;
        } else {
            let none = HashSet::new();
            let results = std::thread::scope(|scope| {
                let handles: Vec<_> = chunks
                    .iter()
                    .map(|c| scope.spawn(|| self.read_samples(c, start_ms, end_ms, &none)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                    .collect::<Vec<_>>()
            });
            for r in results {
                samples.extend(r?);
            }
        }
        Ok(matched
            .into_iter()
            .filter_map(|(id, labels)| {
                let s = samples.remove(&id).unwrap_or_default();
                (!s.is_empty()).then_some(SeriesSamples { labels, samples: s })
            })
            .collect())
    }

    /// Label sets of series matching all `matchers` that have samples in
    /// `[start_ms, end_ms]`.
    ///
    /// Answered mostly from block directories: a section lying wholly inside
    /// the range proves the series without decoding anything.
    pub fn series(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Result<Vec<Labels>, StoreError> {
        if start_ms > end_ms {
            return Ok(Vec::new());
        }
        let w = self.shared.opts.window_ms;
        let matched = self.matching(matchers);
        let mut found: HashSet<u64> = {
            let heads = self.shared.heads.lock().unwrap_or_else(PoisonError::into_inner);
            matched
                .iter()
                .filter(|(id, _)| heads.has_sample_in(*id, start_ms, end_ms))
                .map(|(id, _)| *id)
                .collect()
        };
        let mut groups: HashMap<u64, HashSet<u64>> = HashMap::new();
        for (id, labels) in &matched {
            if !found.contains(id) {
                groups
                    .entry(keys::group_hash(labels.get("instance")))
                    .or_default()
                    .insert(*id);
            }
        }
        let catalog = self.shared.catalog.read().unwrap_or_else(PoisonError::into_inner);
        for (group, ids) in &groups {
            let range = BlockId {
                group: *group,
                window: window_start(start_ms, w),
                lsn: 0,
            }..=BlockId {
                group: *group,
                window: window_start(end_ms, w),
                lsn: u64::MAX,
            };
            for (id, _) in catalog.range(range).filter(|(_, e)| e.raw) {
                let Some(bytes) = self.shared.files.get(&keys::block_key(keys::BLOCK, *id))? else {
                    self.shared.report_corrupt(*id, "listed in the catalog but missing");
                    continue;
                };
                let view = match block::parse(&bytes) {
                    Ok(v) => v,
                    Err(e) => {
                        self.shared.report_corrupt(*id, &e.to_string());
                        continue;
                    }
                };
                for s in &view.sections {
                    if !ids.contains(&s.series) || found.contains(&s.series) || s.max_ts < start_ms || s.min_ts > end_ms
                    {
                        continue;
                    }
                    let inside = start_ms <= s.min_ts || s.max_ts <= end_ms;
                    let hit = inside
                        || match view.decode(s) {
                            Ok(samples) => samples.iter().any(|x| (start_ms..=end_ms).contains(&x.0)),
                            Err(e) => {
                                self.shared.report_corrupt(*id, &e.to_string());
                                false
                            }
                        };
                    if hit {
                        found.insert(s.series);
                    }
                }
            }
        }
        Ok(matched
            .into_iter()
            .filter(|(id, _)| found.contains(id))
            .map(|(_, l)| l)
            .collect())
    }

    /// Rollup buckets at `resolution` whose start lies in `[start_ms,
    /// end_ms]`, for every series matching all `matchers` (series without
    /// buckets left out). Sealed windows are read from the stored rollups
    /// (which outlive raw samples under retention); windows with unsealed
    /// samples are computed from the raw samples.
    pub fn select_rollup(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        resolution: Resolution,
    ) -> Result<Vec<RollupSeries>, StoreError> {
        if start_ms > end_ms {
            return Ok(Vec::new());
        }
        let w = self.shared.opts.window_ms;
        let width = resolution.millis();
        let first_bucket = window_start(start_ms, width);
        let last_end = window_start(end_ms, width).saturating_add(width - 1);
        let matched = self.matching(matchers);
        let wanted: HashMap<u64, u64> = matched
            .iter()
            .map(|(id, l)| (*id, keys::group_hash(l.get("instance"))))
            .collect();
        // Windows where some wanted series still has head samples are
        // computed from raw samples, as are windows without rollup records.
        let mut dirty: HashSet<(u64, i64)> = HashSet::new();
        {
            let heads = self.shared.heads.lock().unwrap_or_else(PoisonError::into_inner);
            for (id, group) in &wanted {
                for (ts, _) in heads.range(*id, first_bucket, last_end) {
                    dirty.insert((*group, window_start(ts, w)));
                }
            }
        }
        // Keyed by (bucket start, window): a bucket wider than the window
        // is folded from its windows' pieces in time order below.
        let mut from_rollups: HashMap<u64, BTreeMap<(i64, i64), Bucket>> = HashMap::new();
        let mut clean: HashSet<(u64, i64)> = HashSet::new();
        {
            let catalog = self.shared.catalog.read().unwrap_or_else(PoisonError::into_inner);
            let groups: HashSet<u64> = wanted.values().copied().collect();
            for group in groups {
                let range = BlockId {
                    group,
                    window: window_start(first_bucket, w),
                    lsn: 0,
                }..=BlockId {
                    group,
                    window: window_start(last_end, w),
                    lsn: u64::MAX,
                };
                for (id, entry) in catalog.range(range) {
                    let key = (group, id.window);
                    // A second record for one window (an out-of-order
                    // write sealed later) may repeat timestamps the raw
                    // merge deduplicates, so such windows come from raw.
                    if dirty.contains(&key) || clean.contains(&key) || !entry.rollups[usize::from(resolution.index())] {
                        dirty.insert(key);
                        continue;
                    }
                    let Some(bytes) = self.shared.files.get(&keys::rollup_key(resolution.index(), *id))? else {
                        self.shared.report_corrupt(*id, "rollup record missing");
                        dirty.insert(key);
                        continue;
                    };
                    match rollup::decode(&bytes, |s| wanted.get(&s) == Some(&group)) {
                        Ok(series) => {
                            clean.insert(key);
                            for (s, buckets) in series {
                                let m = from_rollups.entry(s).or_default();
                                for b in buckets {
                                    m.entry((b.start_ms, id.window))
                                        .and_modify(|x| x.merge(&b))
                                        .or_insert(b);
                                }
                            }
                        }
                        Err(e) => {
                            self.shared.report_corrupt(*id, &format!("rollup: {e}"));
                            dirty.insert(key);
                        }
                    }
                }
            }
        }
        // A window is served from rollups only if none of its records was
        // dirty; otherwise its buckets come from raw samples.
        let skip: HashSet<(u64, i64)> = clean.difference(&dirty).copied().collect();
        let raw = self.read_samples(&matched, first_bucket, last_end, &skip)?;
        let mut out = Vec::new();
        for (id, labels) in matched {
            let group = wanted.get(&id).copied().unwrap_or(0);
            let mut pieces: BTreeMap<(i64, i64), Bucket> = from_rollups
                .remove(&id)
                .unwrap_or_default()
                .into_iter()
                .filter(|((_, window), _)| skip.contains(&(group, *window)))
                .collect();
            if let Some(samples) = raw.get(&id) {
                for chunk in samples.chunk_by(|a, b| window_start(a.0, w) == window_start(b.0, w)) {
                    let window = chunk.first().map_or(0, |s| window_start(s.0, w));
                    for b in rollup::buckets(chunk, resolution) {
                        pieces.insert((b.start_ms, window), b);
                    }
                }
            }
            let mut buckets: Vec<Bucket> = Vec::new();
            for ((start, _), b) in pieces {
                match buckets.last_mut() {
                    Some(last) if last.start_ms == start => last.merge(&b),
                    _ => buckets.push(b),
                }
            }
            buckets.retain(|b| b.start_ms >= start_ms && b.start_ms <= end_ms);
            if !buckets.is_empty() {
                out.push(RollupSeries { labels, buckets });
            }
        }
        Ok(out)
    }

    /// Whether no sealed window in `[start_ms, end_ms]` has lost its raw
    /// samples to retention: only then do rollups answer what the raw
    /// samples would (the query planner's check before using them).
    pub fn raw_kept(&self, start_ms: i64, end_ms: i64) -> bool {
        if self.shared.opts.retention_ms.is_none() {
            return true;
        }
        let w = self.shared.opts.window_ms;
        let (first, last) = (window_start(start_ms, w), window_start(end_ms, w));
        let catalog = self.shared.catalog.read().unwrap_or_else(PoisonError::into_inner);
        catalog
            .iter()
            .all(|(id, e)| e.raw || id.window < first || id.window > last)
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

    /// Whether appends are accepted: false after a failed flush (a full
    /// disk, an I/O error) until the collector restarts, so readiness can
    /// say so.
    pub fn accepts_writes(&self) -> bool {
        !self.shared.poisoned.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Counts for self-telemetry.
    pub fn stats(&self) -> StoreStats {
        let (series, index_bytes) = {
            let index = self.index();
            (index.len() as u64, index.heap_bytes() as u64)
        };
        let (active, head_samples, head_bytes) = {
            let heads = self.shared.heads.lock().unwrap_or_else(PoisonError::into_inner);
            let active = heads.active() as u64;
            (active, heads.all_samples() as u64, heads.bytes() as u64)
        };
        let (blocks, block_bytes) = {
            let catalog = self.shared.catalog.read().unwrap_or_else(PoisonError::into_inner);
            catalog
                .values()
                .filter(|e| e.raw)
                .fold((0u64, 0u64), |(n, b), e| (n + 1, b + e.bytes))
        };
        let c = &self.shared.counters;
        StoreStats {
            series,
            // Only used for a gauge; an unreadable size is shown as 0.
            disk_bytes: self.shared.db.size_on_disk().unwrap_or(0) + self.shared.files.bytes(),
            active_series: active,
            head_samples,
            head_bytes,
            // The heads' and the index's own accounting of their heap (not
            // the allocator's overhead; `bench/src/bin/series_ram.rs`
            // measures the process).
            ram_bytes_per_active_series: (head_bytes + index_bytes).checked_div(active).unwrap_or(0),
            blocks,
            block_bytes,
            rejected_out_of_order: c.rejected_out_of_order.load(Ordering::Relaxed),
            corrupt_blocks: c.corrupt_blocks.load(Ordering::Relaxed),
            wal_records_cut: c.wal_records_cut.load(Ordering::Relaxed),
            head_over_bound: u64::from(self.head_pressure()),
            flushes: c.flushes.load(Ordering::Relaxed),
            seals: c.seals.load(Ordering::Relaxed),
            compactions: c.compactions.load(Ordering::Relaxed),
            decoded_cache: self.shared.decoded.stats(),
        }
    }

    /// Group-commit flushes done since open, for `hostpulse_store_flushes_total`
    /// (with N concurrent streams this grows slower than stored batches).
    pub fn flushes(&self) -> u64 {
        self.shared.counters.flushes.load(Ordering::Relaxed)
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, SeriesIndex> {
        self.shared.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Matching series, copied out so no lock is held while reading sled.
    fn matching(&self, matchers: &[Matcher]) -> Vec<(u64, Labels)> {
        self.index().matching(matchers)
    }

    /// Samples in `[start, end]` of each series in `matched`, from heads and
    /// from blocks (except windows in `skip`), merged: on equal timestamps
    /// the newest write wins (head over blocks, later blocks over earlier).
    fn read_samples(
        &self,
        matched: &[(u64, Labels)],
        start: i64,
        end: i64,
        skip: &HashSet<(u64, i64)>,
    ) -> Result<HashMap<u64, Vec<(i64, f64)>>, StoreError> {
        let w = self.shared.opts.window_ms;
        let mut groups: HashMap<u64, HashSet<u64>> = HashMap::new();
        for (id, labels) in matched {
            groups
                .entry(keys::group_hash(labels.get("instance")))
                .or_default()
                .insert(*id);
        }
        // Heads first: a seal running meanwhile adds blocks before it drops
        // head samples, so every sample is seen at least once.
        let mut from_heads: HashMap<u64, Vec<(i64, f64)>> = HashMap::new();
        {
            let heads = self.shared.heads.lock().unwrap_or_else(PoisonError::into_inner);
            for (group, ids) in &groups {
                for id in ids {
                    let s: Vec<(i64, f64)> = heads
                        .range(*id, start, end)
                        .into_iter()
                        .filter(|(ts, _)| !skip.contains(&(*group, window_start(*ts, w))))
                        .collect();
                    if !s.is_empty() {
                        from_heads.insert(*id, s);
                    }
                }
            }
        }
        // Per series, runs in write order (blocks by lsn, then the head).
        let mut runs: HashMap<u64, Vec<CachedRun>> = HashMap::new();
        {
            let catalog = self.shared.catalog.read().unwrap_or_else(PoisonError::into_inner);
            for (group, ids) in &groups {
                let range = BlockId {
                    group: *group,
                    window: window_start(start, w),
                    lsn: 0,
                }..=BlockId {
                    group: *group,
                    window: window_start(end, w),
                    lsn: u64::MAX,
                };
                let mut in_range: Vec<BlockId> = catalog
                    .range(range)
                    .filter(|(id, e)| e.raw && !skip.contains(&(id.group, id.window)))
                    .map(|(id, _)| *id)
                    .collect();
                in_range.sort_by_key(|id| id.lsn);
                for id in in_range {
                    // Cached decoded sections spare the sled read, the
                    // checksum and the decoding (`codec/decoded_cache.rs`).
                    if let Some(parts) = self.shared.decoded.get_runs(id, ids, start, end) {
                        for (series, part) in parts.into_iter().filter(|(_, p)| !p.is_empty()) {
                            runs.entry(series).or_default().push(part);
                        }
                        continue;
                    }
                    let Some(bytes) = self.shared.files.get(&keys::block_key(keys::BLOCK, id))? else {
                        self.shared.report_corrupt(id, "listed in the catalog but missing");
                        continue;
                    };
                    let view = match block::parse(&bytes) {
                        Ok(v) => v,
                        Err(e) => {
                            self.shared.report_corrupt(id, &e.to_string());
                            continue;
                        }
                    };
                    let mut decoded = Vec::new();
                    for (i, s) in view.sections.iter().enumerate() {
                        if !ids.contains(&s.series) || s.max_ts < start || s.min_ts > end {
                            continue;
                        }
                        match view.decode(s) {
                            Ok(samples) => {
                                let from = samples.partition_point(|x| x.0 < start);
                                let to = samples.partition_point(|x| x.0 <= end);
                                if let Some(part) = samples.get(from..to) {
                                    runs.entry(s.series).or_default().push(CachedRun::Owned(part.to_vec()));
                                }
                                if self.shared.decoded.enabled() {
                                    decoded.push((i, codec::decoded_cache::DecodedSection::from_samples(&samples)));
                                }
                            }
                            Err(e) => self.shared.report_corrupt(id, &e.to_string()),
                        }
                    }
                    if !decoded.is_empty() {
                        let dir: Vec<codec::decoded_cache::SectionBounds> = view
                            .sections
                            .iter()
                            .map(|s| codec::decoded_cache::SectionBounds {
                                series: s.series,
                                min_ts: s.min_ts,
                                max_ts: s.max_ts,
                            })
                            .collect();
                        self.shared.decoded.put(id, &dir, decoded);
                    }
                }
            }
        }
        for (id, s) in from_heads {
            runs.entry(id).or_default().push(CachedRun::Owned(s));
        }
        Ok(runs.into_iter().map(|(id, r)| (id, merge_runs(r))).collect())
    }
}

/// Merges sorted runs given oldest write first into one sorted run; on
/// equal timestamps the later run wins.
fn merge_runs(mut runs: Vec<CachedRun>) -> Vec<(i64, f64)> {
    runs.retain(|r| !r.is_empty());
    if runs.len() == 1 {
        return runs.pop().map(CachedRun::into_vec).unwrap_or_default();
    }
    // The usual case, one run per window: runs that do not overlap share no
    // timestamp, so concatenating them in time order is the merge, without
    // the sort below (which was a tenth of a long range query's time).
    // Cached runs are copied out of the cache here, once.
    let mut by_time: Vec<&CachedRun> = runs.iter().collect();
    by_time.sort_by_key(|r| r.first_ts().unwrap_or(i64::MIN));
    if by_time
        .windows(2)
        .all(|w| matches!((w[0].last_ts(), w[1].first_ts()), (Some(a), Some(b)) if a < b))
    {
        let mut out = Vec::with_capacity(by_time.iter().map(|r| r.len()).sum());
        for r in by_time {
            r.append_to(&mut out);
        }
        return out;
    }
    let runs: Vec<Vec<(i64, f64)>> = runs.into_iter().map(CachedRun::into_vec).collect();
    let mut all: Vec<(i64, usize, f64)> = runs
        .into_iter()
        .enumerate()
        .flat_map(|(i, r)| r.into_iter().map(move |(t, v)| (t, i, v)))
        .collect();
    all.sort_by_key(|&(t, i, _)| (t, i));
    let mut out: Vec<(i64, f64)> = Vec::with_capacity(all.len());
    for (t, _, v) in all {
        match out.last_mut() {
            Some(last) if last.0 == t => last.1 = v,
            _ => out.push((t, v)),
        }
    }
    out
}

/// Rebuilds heads from the WAL, leaving out the samples the seal `marks`
/// say are sealed already. A record that fails its checksum or does not
/// decode — a torn or damaged tail — is reported, counted and deleted; the
/// records before it are kept.
fn replay_wal(
    tree: &sled::Tree,
    index: &SeriesIndex,
    counters: &Counters,
    max_lsn: &mut u64,
    marks: &seal::SealMarks,
) -> Result<Heads, StoreError> {
    let mut heads = Heads::default();
    let mut damaged = Vec::new();
    for item in tree.scan_prefix([keys::WAL]) {
        let (key, value) = item?;
        let (lsn, wal_key) = keys::parse_wal_key(&key)?;
        *max_lsn = (*max_lsn).max(lsn);
        let entries = keys::verify_checksum(&value)
            .ok_or_else(|| StoreError::Corrupt {
                tree: keys::TREE,
                detail: "WAL record checksum mismatch".into(),
            })
            .and_then(keys::decode_wal);
        match entries {
            Ok(entries) => {
                let sealed_below = marks.cut_for(lsn);
                let mut max_ts = i64::MIN;
                for (id, samples) in entries {
                    max_ts = samples.iter().fold(max_ts, |m, s| m.max(s.0));
                    let unsealed: Vec<(i64, f64)> = samples.into_iter().filter(|s| s.0 >= sealed_below).collect();
                    if !unsealed.is_empty() {
                        let group = index.value_of(id, "instance").map_or(0, keys::group_hash);
                        heads.insert_run(id, group, &unsealed);
                    }
                }
                heads.wal.push(head::WalPart {
                    key: wal_key,
                    lsn,
                    max_ts,
                    sealed_below,
                });
            }
            Err(e) => {
                tracing::error!(lsn, error = %e, "damaged WAL record cut; its samples are lost");
                damaged.push(key);
            }
        }
    }
    if !damaged.is_empty() {
        counters
            .wal_records_cut
            .fetch_add(damaged.len() as u64, Ordering::Relaxed);
        let mut batch = sled::Batch::default();
        for key in damaged {
            batch.remove(key);
        }
        tree.apply_batch(batch)?;
    }
    Ok(heads)
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
