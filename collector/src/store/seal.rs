//! Moving data out of the heads: sealing generations of head samples into
//! blocks (with their rollups), compacting a window's several small blocks
//! into one, and dropping data past its retention.
//!
//! The commit path never waits for a seal. After a group commit the writer
//! decides whether one is due ([`maybe_start`]): by time (the newest sample
//! has closed a window) or by size (the live heads outgrew half their
//! memory bound). It then freezes a generation (`Heads::freeze`: every
//! live sample before a cut moves, uncopied, into an immutable generation
//! readers keep seeing) and hands it to the seal thread ([`run_sealer`]),
//! which encodes and writes the blocks and records them while group commits
//! go on. Small generations are sealed on the writer thread at once (a
//! handoff would cost more than the seal), which also keeps small stores'
//! behaviour deterministic. At most one generation seals at a time; the
//! seal thread also compacts and applies retention, so all block writes
//! and block-lsn allocations happen in seal order under `Shared::seal_lock`.
//!
//! Crash safety without copying the heads. A seal records, in one atomic
//! sled batch: the blocks' catalog entries (the block files were written
//! and fsynced before), the deletion of every WAL record part all of whose
//! samples are now sealed, and a *seal mark* `(through_lsn, cut)`: every
//! sample older than `cut` in a WAL record up to `through_lsn` is in
//! blocks. Replay skips exactly those samples ([`SealMarks::cut_for`]), so
//! a record that is only partly sealed stays and is not stored twice. A
//! crash before the batch leaves the WAL as it was (the unlisted block
//! files are removed at open); after it, blocks plus the marks — the same
//! samples either way. Memory is updated only after the batch is applied,
//! catalog before heads, and readers copy heads (live and sealing) before
//! they look at the catalog, so a concurrent reader sees each sample at
//! least once (it merges duplicates) and never zero times.
//!
//! Block lsns order writes for readers (a later block wins on equal
//! timestamps, the heads over every block): generations are frozen and
//! sealed in order and take their block lsn when they are written, after
//! every earlier seal and compaction, so that order holds.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, PoisonError, TryLockError};
use std::time::Duration;

use super::head::{Generation, window_start};
use super::keys::{self, BlockId, CatalogEntry};
use super::rollup::{self, RESOLUTIONS};
use super::{Shared, StoreError, WriterState, block};

/// Windows with at least this many blocks are compacted after a seal
/// (`Store::seal_all` compacts every window with more than one).
const COMPACT_AT_BLOCKS: usize = 4;

/// Generations of at most this many samples are sealed on the writer
/// thread right away: encoding them takes about a millisecond.
pub(crate) const INLINE_SEAL_MAX_SAMPLES: usize = 16_384;

/// A seal by size starts once the live heads' sample vectors take more
/// than this fraction of what the bound leaves beside the head table, so
/// the live heads, one sealing generation and the table together stay near
/// the bound.
const SIZE_SEAL_DIVISOR: usize = 2;

/// ... but never below this fraction of the bound: with more series than
/// the bound has room for (their table and first vectors alone fill it), a
/// seal after every sample or two would write blocks of one sample per
/// series. The heads then go over the bound and ingest sheds load
/// (`Store::head_pressure`) instead.
const MIN_SEAL_DIVISOR: usize = 8;

/// Whether the live heads are due for a seal by size.
fn due_by_size(vector_bytes: usize, table_bytes: usize, bound: usize) -> bool {
    let room = bound.saturating_sub(table_bytes) / SIZE_SEAL_DIVISOR;
    vector_bytes > room.max(bound / MIN_SEAL_DIVISOR)
}

/// How long the seal thread waits before retrying a seal that failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Key of the seal marks record (beside `keys::META_LSN`): checksummed
/// pairs of through-lsn (u64 BE) and cut (i64 BE), see [`SealMarks`].
pub(crate) const META_SEAL_MARKS: &[u8] = b"mseal";

/// The seal marks in force: per seal whose WAL records are not all deleted
/// yet, `(through_lsn, cut)`. Ascending by lsn; pruned so that cuts
/// descend (a mark with a newer lsn and a later cut covers an older one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SealMarks(Vec<(u64, i64)>);

impl SealMarks {
    /// Samples of WAL record `lsn` older than this are sealed.
    pub(crate) fn cut_for(&self, lsn: u64) -> i64 {
        self.0
            .iter()
            .filter(|(through, _)| *through >= lsn)
            .map(|(_, cut)| *cut)
            .max()
            .unwrap_or(i64::MIN)
    }

    /// These marks plus `(through, cut)`, without marks that no longer
    /// matter: those covering only records below `oldest_kept` (the lowest
    /// lsn of a WAL part still kept; `None` if none is), and those another
    /// mark with a newer lsn and a cut at least as late covers.
    fn with(&self, through: u64, cut: i64, oldest_kept: Option<u64>) -> SealMarks {
        let Some(oldest) = oldest_kept else {
            return SealMarks::default();
        };
        let mut all = self.0.clone();
        all.push((through, cut));
        all.retain(|(t, _)| *t >= oldest);
        let mut kept: Vec<(u64, i64)> = Vec::with_capacity(all.len());
        for &(t, c) in all.iter().rev() {
            if kept.last().is_none_or(|&(_, newer)| c > newer) {
                kept.push((t, c));
            }
        }
        kept.reverse();
        SealMarks(kept)
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() * 16);
        for (t, c) in &self.0 {
            out.extend_from_slice(&t.to_be_bytes());
            out.extend_from_slice(&c.to_be_bytes());
        }
        keys::checksummed(&out)
    }

    /// Inverse of `encode`.
    pub(crate) fn decode(bytes: &[u8]) -> Result<SealMarks, StoreError> {
        let corrupt = |detail: &str| StoreError::Corrupt {
            tree: keys::TREE,
            detail: format!("seal marks: {detail}"),
        };
        let payload = keys::verify_checksum(bytes).ok_or_else(|| corrupt("checksum mismatch"))?;
        if !payload.len().is_multiple_of(16) {
            return Err(corrupt("length"));
        }
        let mut marks = Vec::with_capacity(payload.len() / 16);
        for chunk in payload.chunks_exact(16) {
            let (t, c) = chunk.split_at(8);
            let mut tb = [0u8; 8];
            let mut cb = [0u8; 8];
            tb.copy_from_slice(t);
            cb.copy_from_slice(c);
            marks.push((u64::from_be_bytes(tb), i64::from_be_bytes(cb)));
        }
        Ok(SealMarks(marks))
    }

    /// The marks stored in `tree` (none if never written).
    pub(crate) fn load(tree: &sled::Tree) -> Result<SealMarks, StoreError> {
        match tree.get(META_SEAL_MARKS)? {
            Some(v) => SealMarks::decode(&v),
            None => Ok(SealMarks::default()),
        }
    }
}

/// What only the sealing side touches, under `Shared::seal_lock`.
#[derive(Debug, Default)]
pub(crate) struct SealState {
    /// The marks as stored.
    pub marks: SealMarks,
}

/// After a commit, on the writer thread under its lock: starts a seal if
/// one is due and none is running (see the module comment). Cheap when
/// nothing is due.
pub(crate) fn maybe_start(shared: &Shared, state: &mut WriterState, wake: &SyncSender<()>) {
    let w = shared.opts.window_ms;
    let generation = {
        let mut heads = shared.heads.lock().unwrap_or_else(PoisonError::into_inner);
        shared.head_bytes.store(heads.bytes(), Ordering::Relaxed);
        if heads.sealing.is_some() {
            // A seal that failed waits in `pending` for its retry.
            if shared
                .pending_seal
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
            {
                let _ = wake.try_send(());
            }
            return;
        }
        let closed = window_start(heads.global_max.saturating_sub(shared.opts.out_of_order_ms), w);
        let by_size = due_by_size(heads.vector_bytes(), heads.table_bytes(), shared.opts.head_max_bytes);
        let by_time = closed > state.sealed_upto;
        if !by_size && !by_time {
            return;
        }
        state.sealed_upto = state.sealed_upto.max(closed);
        let cut = if by_size { i64::MAX } else { closed };
        // Every WAL record allocated so far is in the heads: the writer
        // allocates and applies them under the lock this runs under.
        let through = shared.next_lsn.load(Ordering::SeqCst).saturating_sub(1);
        heads.freeze(cut, through)
    };
    let Some(generation) = generation else { return };
    let small = generation.samples <= INLINE_SEAL_MAX_SAMPLES;
    *shared.pending_seal.lock().unwrap_or_else(PoisonError::into_inner) = Some(generation);
    if !small && !matches!(wake.try_send(()), Err(TrySendError::Disconnected(()))) {
        return;
    }
    // Small, or there is no seal thread: seal here, unless the sealing side
    // is busy (compacting), which then takes it.
    let seal_state = match shared.seal_lock.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    };
    match seal_state {
        Some(mut seal_state) => {
            if let Err(e) = seal_pending(shared, &mut seal_state) {
                tracing::error!(error = %e, "sealing heads into blocks failed; will retry");
            }
        }
        None => {
            let _ = wake.try_send(());
        }
    }
}

/// The seal thread: seals each generation the writer queued, then compacts
/// and applies retention. Returns when the writer is gone.
pub(crate) fn run_sealer(shared: Arc<Shared>, wake: Receiver<()>) {
    while wake.recv().is_ok() {
        let mut state = shared.seal_lock.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = seal_pending(&shared, &mut state) {
            drop(state);
            tracing::error!(error = %e, "sealing heads into blocks failed; will retry");
            std::thread::sleep(RETRY_AFTER);
        }
    }
}

/// Seals the queued generation, if any, and compacts and applies
/// retention after it. On failure the generation stays queued.
pub(crate) fn seal_pending(shared: &Shared, state: &mut SealState) -> Result<bool, StoreError> {
    let Some(generation) = shared
        .pending_seal
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    else {
        return Ok(false);
    };
    if let Err(e) = seal_generation(shared, state, &generation, BACKGROUND_ENCODERS) {
        *shared.pending_seal.lock().unwrap_or_else(PoisonError::into_inner) = Some(generation);
        return Err(e);
    }
    after_seal(shared)?;
    Ok(true)
}

/// Compaction and retention, due after any seal.
fn after_seal(shared: &Shared) -> Result<(), StoreError> {
    compact(shared, false)?;
    apply_retention(shared)?;
    Ok(())
}

/// A generation's blocks, encoded, with what recording them takes.
pub(crate) struct Prepared {
    /// Block and rollup files to write before the batch.
    files: NewFiles,
    /// Catalog entries to add after it.
    entries: Vec<(BlockId, CatalogEntry)>,
    /// Catalog entries, WAL deletions, seal marks.
    batch: sled::Batch,
    /// WAL parts the batch deletes.
    deleted: Vec<keys::WalKey>,
    /// The marks the batch stores.
    marks: SealMarks,
}

/// Encodes a generation's blocks (one per group and window) and builds
/// the batch that records them. Writes nothing.
pub(crate) fn prepare(shared: &Shared, state: &SealState, generation: &Generation, encoders: usize) -> Prepared {
    let w = shared.opts.window_ms;
    let lsn = shared.next_lsn.fetch_add(1, Ordering::SeqCst);
    let mut blocks: BTreeMap<(u64, i64), Vec<SeriesRun<'_>>> = BTreeMap::new();
    for s in &generation.series {
        for chunk in s.samples.chunk_by(|a, b| window_start(a.0, w) == window_start(b.0, w)) {
            if let Some(first) = chunk.first() {
                blocks
                    .entry((s.group, window_start(first.0, w)))
                    .or_default()
                    .push((s.series, chunk));
            }
        }
    }
    let jobs: Vec<BlockJob<'_>> = blocks
        .iter()
        .map(|(&(group, window), series)| (BlockId { group, window, lsn }, series.as_slice()))
        .collect();
    let mut batch = sled::Batch::default();
    let mut files = Vec::new();
    let mut entries = Vec::with_capacity(jobs.len());
    for ((id, _), (entry, mut new)) in jobs.iter().zip(encode_blocks(&jobs, encoders)) {
        files.append(&mut new);
        batch.insert(&keys::block_key(keys::CATALOG, *id), &keys::encode_catalog(entry));
        entries.push((*id, entry));
    }
    // WAL parts of records up to the generation's lsn whose every sample
    // is now sealed go; only this side removes parts at or below it, so
    // the snapshot stays true until the batch is applied.
    let (through, cut) = (generation.through_lsn, generation.cut);
    let (mut deleted, mut oldest_kept) = (Vec::new(), None::<u64>);
    {
        let heads = shared.heads.lock().unwrap_or_else(PoisonError::into_inner);
        for part in heads.wal.iter().filter(|p| p.lsn <= through) {
            if part.max_ts < part.sealed_below.max(cut) {
                deleted.push(part.key);
            } else {
                oldest_kept = Some(oldest_kept.map_or(part.lsn, |o| o.min(part.lsn)));
            }
        }
    }
    for key in &deleted {
        batch.remove(key);
    }
    let marks = state.marks.with(through, cut, oldest_kept);
    if marks.0.is_empty() {
        batch.remove(META_SEAL_MARKS);
    } else {
        batch.insert(META_SEAL_MARKS, marks.encode());
    }
    batch.insert(
        keys::META_LSN,
        &shared.next_lsn.load(Ordering::SeqCst).saturating_sub(1).to_be_bytes(),
    );
    Prepared {
        files,
        entries,
        batch,
        deleted,
        marks,
    }
}

/// Most threads a seal writes files on.
const WRITE_THREADS: usize = 8;

/// Files per writing thread below which one thread writes them all.
const FILES_PER_THREAD: usize = 64;

/// Writes a prepared generation's block files (fsynced), the first half
/// of a seal: a crash after it leaves files no catalog entry lists.
///
/// A seal writes two files per host (block and rollups), each fsynced: at
/// 10,000 hosts that is 20,000 fsyncs, which one after another took tens
/// of seconds. fsyncs issued from several threads at once share the file
/// system's journal commits, so the files are written on up to
/// [`WRITE_THREADS`] threads (I/O waits, not CPU).
pub(crate) fn write_files(shared: &Shared, prepared: &Prepared) -> Result<(), StoreError> {
    let files = &prepared.files;
    let threads = (files.len() / FILES_PER_THREAD).clamp(1, WRITE_THREADS);
    if threads == 1 {
        return shared.files.put_all(files);
    }
    let per = files.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(per)
            .map(|chunk| {
                let spawned = std::thread::Builder::new()
                    .name("hostpulse-seal-io".into())
                    .spawn_scoped(scope, move || shared.files.put_all(chunk));
                (chunk, spawned)
            })
            .collect();
        let mut result = Ok(());
        for (chunk, spawned) in handles {
            let written = match spawned {
                Ok(handle) => handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(_) => shared.files.put_all(chunk),
            };
            if result.is_ok() {
                result = written;
            }
        }
        result
    })
}

/// The second half: applies the batch (the seal's atomic point), then
/// updates memory — catalog first, then the heads drop the generation.
pub(crate) fn record(
    shared: &Shared,
    state: &mut SealState,
    generation: &Arc<Generation>,
    prepared: Prepared,
) -> Result<(), StoreError> {
    shared.tree.apply_batch(prepared.batch)?;
    {
        let mut catalog = shared.catalog.write().unwrap_or_else(PoisonError::into_inner);
        catalog.extend(prepared.entries);
    }
    let mut heads = shared.heads.lock().unwrap_or_else(PoisonError::into_inner);
    if heads.sealing.as_ref().is_some_and(|g| Arc::ptr_eq(g, generation)) {
        heads.sealing = None;
    }
    let deleted: std::collections::HashSet<keys::WalKey> = prepared.deleted.into_iter().collect();
    heads.wal.retain(|p| !deleted.contains(&p.key));
    for part in heads.wal.iter_mut().filter(|p| p.lsn <= generation.through_lsn) {
        part.sealed_below = part.sealed_below.max(generation.cut);
    }
    shared.head_bytes.store(heads.bytes(), Ordering::Relaxed);
    drop(heads);
    state.marks = prepared.marks;
    shared.counters.seals.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Seals one generation: [`prepare`], [`write_files`], [`record`].
/// Returns the number of samples sealed. On failure nothing changed in
/// memory (the generation is still the sealing one) and a retry is safe.
pub(crate) fn seal_generation(
    shared: &Shared,
    state: &mut SealState,
    generation: &Arc<Generation>,
    encoders: usize,
) -> Result<usize, StoreError> {
    let started = std::time::Instant::now();
    let prepared = prepare(shared, state, generation, encoders);
    let blocks = prepared.entries.len();
    write_files(shared, &prepared)?;
    record(shared, state, generation, prepared)?;
    tracing::debug!(
        samples = generation.samples,
        blocks,
        cut = generation.cut,
        ms = started.elapsed().as_millis() as u64,
        "sealed a generation of head samples"
    );
    Ok(generation.samples)
}

/// Which rollup resolutions a seal writes beside the raw block. The 5 m
/// rollups are not: while the raw block exists they are computed from it on
/// demand (a window's raw block decodes in well under a millisecond), and
/// storing them would cost ~0.4 bytes per raw sample — 40% on top of the
/// block. They are written when retention drops the raw block
/// ([`apply_retention`]), so they still outlive it. The 1 h rollups are
/// small (one bucket per 360 samples at 10 s) and serve long ranges.
const SEALED_ROLLUPS: [bool; RESOLUTIONS.len()] = [false, true];

/// Files to write before a sled batch, as (key, bytes).
type NewFiles = Vec<(Vec<u8>, Vec<u8>)>;

/// Adds a block and its rollups (those in [`SEALED_ROLLUPS`]) to `files`
/// and its catalog entry to `batch`. Samples per series must be sorted with
/// unique timestamps.
fn write_block<S: AsRef<[(i64, f64)]>>(
    batch: &mut sled::Batch,
    files: &mut NewFiles,
    id: BlockId,
    series: &[(u64, S)],
) -> CatalogEntry {
    let (entry, mut new) = encode_block(id, series);
    files.append(&mut new);
    batch.insert(&keys::block_key(keys::CATALOG, id), &keys::encode_catalog(entry));
    entry
}

/// The files of a block and its sealed rollups, and its catalog entry.
fn encode_block<S: AsRef<[(i64, f64)]>>(id: BlockId, series: &[(u64, S)]) -> (CatalogEntry, NewFiles) {
    let refs: Vec<(u64, &[(i64, f64)])> = series.iter().map(|(s, v)| (*s, v.as_ref())).collect();
    let bytes = block::encode(id.window, &refs);
    let entry = CatalogEntry {
        bytes: bytes.len() as u64,
        raw: true,
        rollups: SEALED_ROLLUPS,
    };
    let mut files = vec![(keys::block_key(keys::BLOCK, id).to_vec(), bytes)];
    for res in RESOLUTIONS {
        if SEALED_ROLLUPS[usize::from(res.index())] {
            write_rollup(&mut files, id, res, series);
        }
    }
    (entry, files)
}

/// One series' samples in a block, borrowed.
type SeriesRun<'a> = (u64, &'a [(i64, f64)]);

/// A block to encode: its id and its series' samples.
type BlockJob<'a> = (BlockId, &'a [SeriesRun<'a>]);

/// Most threads a seal encodes blocks on.
pub(crate) const SEAL_THREADS: usize = 4;

/// Threads a seal in the background encodes on: the seal thread alone.
/// Ingest goes on meanwhile and needs the other cores (on two cores, two
/// encoders took half the machine from the commit path); a seal that
/// waits (`Store::seal_all`) uses [`SEAL_THREADS`].
const BACKGROUND_ENCODERS: usize = 1;

/// [`encode_block`] of every job, in order, spread over up to `encoders`
/// threads (at most [`SEAL_THREADS`] and the cores there are): a seal that
/// something waits for (`Store::seal_all`, import) uses the idle cores.
/// Blocks are independent, so the output is the same as in sequence. Where
/// a thread cannot be started, its share is encoded here.
fn encode_blocks(jobs: &[BlockJob<'_>], encoders: usize) -> Vec<(CatalogEntry, NewFiles)> {
    let encode_all = |chunk: &[BlockJob<'_>]| chunk.iter().map(|(id, s)| encode_block(*id, s)).collect::<Vec<_>>();
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(SEAL_THREADS)
        .min(encoders)
        .min(jobs.len());
    if threads <= 1 {
        return encode_all(jobs);
    }
    let per = jobs.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(per)
            .map(|chunk| {
                let spawned = std::thread::Builder::new()
                    .name("hostpulse-seal".into())
                    .spawn_scoped(scope, move || encode_all(chunk));
                (chunk, spawned)
            })
            .collect();
        let mut out = Vec::with_capacity(jobs.len());
        for (chunk, spawned) in handles {
            match spawned {
                Ok(handle) => match handle.join() {
                    Ok(encoded) => out.extend(encoded),
                    // Encoding panicked: the same panic as if it had run
                    // on this thread, as before.
                    Err(panic) => std::panic::resume_unwind(panic),
                },
                Err(_) => out.extend(encode_all(chunk)),
            }
        }
        out
    })
}

fn write_rollup<S: AsRef<[(i64, f64)]>>(
    files: &mut NewFiles,
    id: BlockId,
    res: rollup::Resolution,
    series: &[(u64, S)],
) {
    let buckets: Vec<(u64, Vec<rollup::Bucket>)> = series
        .iter()
        .map(|(s, v)| (*s, rollup::buckets(v.as_ref(), res)))
        .collect();
    files.push((
        keys::rollup_key(res.index(), id).to_vec(),
        rollup::encode(id.window, &buckets),
    ));
}

/// Every series' samples of a stored raw block, or `None` (reported) if it
/// is missing or damaged.
fn read_block(shared: &Shared, id: BlockId) -> Result<Option<keys::WalEntries>, StoreError> {
    let Some(bytes) = shared.files.get(&keys::block_key(keys::BLOCK, id))? else {
        shared.report_corrupt(id, "listed in the catalog but missing");
        return Ok(None);
    };
    let view = match block::parse(&bytes) {
        Ok(v) => v,
        Err(e) => {
            shared.report_corrupt(id, &e.to_string());
            return Ok(None);
        }
    };
    let mut out = Vec::with_capacity(view.sections.len());
    for s in &view.sections {
        match view.decode(s) {
            Ok(samples) => out.push((s.series, samples)),
            Err(e) => {
                shared.report_corrupt(id, &e.to_string());
                return Ok(None);
            }
        }
    }
    Ok(Some(out))
}

/// Merges the blocks of each window that has several (with `all`, more than
/// one; otherwise [`COMPACT_AT_BLOCKS`], and only windows closed for good)
/// into a single block with fresh rollups.
/// Windows with a damaged block are left alone. Returns windows compacted.
pub(crate) fn compact(shared: &Shared, all: bool) -> Result<usize, StoreError> {
    let w = shared.opts.window_ms;
    let global_max = shared.heads.lock().unwrap_or_else(PoisonError::into_inner).global_max;
    let settled = global_max
        .saturating_sub(shared.opts.out_of_order_ms)
        .saturating_sub(w.saturating_mul(2));
    let targets: Vec<Vec<BlockId>> = {
        let catalog = shared.catalog.read().unwrap_or_else(PoisonError::into_inner);
        let mut by_window: BTreeMap<(u64, i64), Vec<BlockId>> = BTreeMap::new();
        for (id, e) in catalog.iter() {
            if e.raw && (all || id.window <= settled) {
                by_window.entry((id.group, id.window)).or_default().push(*id);
            }
        }
        let at = if all { 2 } else { COMPACT_AT_BLOCKS };
        by_window.into_values().filter(|ids| ids.len() >= at).collect()
    };
    let mut done = 0;
    'windows: for ids in targets {
        let mut merged: BTreeMap<u64, BTreeMap<i64, f64>> = BTreeMap::new();
        for id in &ids {
            let Some(bytes) = shared.files.get(&keys::block_key(keys::BLOCK, *id))? else {
                shared.report_corrupt(*id, "listed in the catalog but missing");
                continue 'windows;
            };
            let view = match block::parse(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    shared.report_corrupt(*id, &e.to_string());
                    continue 'windows;
                }
            };
            for s in &view.sections {
                match view.decode(s) {
                    Ok(samples) => merged.entry(s.series).or_default().extend(samples),
                    Err(e) => {
                        shared.report_corrupt(*id, &e.to_string());
                        continue 'windows;
                    }
                }
            }
        }
        let Some(first) = ids.first() else { continue };
        let id = BlockId {
            group: first.group,
            window: first.window,
            lsn: shared.next_lsn.fetch_add(1, Ordering::SeqCst),
        };
        let series: Vec<(u64, Vec<(i64, f64)>)> =
            merged.into_iter().map(|(s, m)| (s, m.into_iter().collect())).collect();
        let mut batch = sled::Batch::default();
        let mut files = Vec::new();
        let mut gone = Vec::new();
        let entry = write_block(&mut batch, &mut files, id, &series);
        for old in &ids {
            remove_all(&mut batch, &mut gone, *old);
        }
        batch.insert(
            keys::META_LSN,
            &shared.next_lsn.load(Ordering::SeqCst).saturating_sub(1).to_be_bytes(),
        );
        shared.files.put_all(&files)?;
        // Readers hold the catalog's read lock while they fetch blocks, so
        // none can see an entry whose block this batch deletes. The old
        // files go only once the batch that unlists them is durable.
        let mut catalog = shared.catalog.write().unwrap_or_else(PoisonError::into_inner);
        shared.tree.apply_batch(batch)?;
        shared.db.flush()?;
        shared.files.remove_all(&gone)?;
        for old in &ids {
            catalog.remove(old);
        }
        catalog.insert(id, entry);
        drop(catalog);
        shared.counters.compactions.fetch_add(1, Ordering::Relaxed);
        done += 1;
    }
    Ok(done)
}

/// Unlists block `id` in `batch` and adds its files to `gone`.
fn remove_all(batch: &mut sled::Batch, gone: &mut Vec<Vec<u8>>, id: BlockId) {
    gone.push(keys::block_key(keys::BLOCK, id).to_vec());
    batch.remove(&keys::block_key(keys::CATALOG, id));
    for res in RESOLUTIONS {
        gone.push(keys::rollup_key(res.index(), id).to_vec());
    }
}

/// Deletes raw blocks and rollups older than their retention, measured back
/// from the newest sample stored (not the wall clock, so importing old data
/// does not delete it on arrival, and a collector that receives nothing
/// keeps what it has). Returns the number of records deleted.
pub(crate) fn apply_retention(shared: &Shared) -> Result<usize, StoreError> {
    let opts = &shared.opts;
    let global_max = shared.heads.lock().unwrap_or_else(PoisonError::into_inner).global_max;
    if global_max == i64::MIN {
        return Ok(0);
    }
    let expired = |retention: Option<i64>, window: i64| {
        retention.is_some_and(|r| window.saturating_add(opts.window_ms) <= global_max.saturating_sub(r))
    };
    let mut catalog = shared.catalog.write().unwrap_or_else(PoisonError::into_inner);
    let mut batch = sled::Batch::default();
    let mut files = Vec::new();
    let mut gone = Vec::new();
    let mut changed: Vec<(BlockId, CatalogEntry)> = Vec::new();
    let mut deleted = 0;
    for (id, e) in catalog.iter() {
        let mut next = *e;
        if next.raw && expired(opts.retention_ms, id.window) {
            // Rollups not written at seal are built now, from the raw block
            // about to go, unless they would expire at once too. A damaged
            // block (reported) leaves them missing rather than wrong.
            let missing: Vec<usize> = (0..RESOLUTIONS.len())
                .filter(|&i| !next.rollups[i] && !expired(opts.rollup_retention_ms[i], id.window))
                .collect();
            if !missing.is_empty()
                && let Some(series) = read_block(shared, *id)?
            {
                for i in missing {
                    write_rollup(&mut files, *id, RESOLUTIONS[i], &series);
                    next.rollups[i] = true;
                }
            }
            gone.push(keys::block_key(keys::BLOCK, *id).to_vec());
            next.raw = false;
            deleted += 1;
        }
        for (i, res) in RESOLUTIONS.iter().enumerate() {
            if next.rollups[i] && expired(opts.rollup_retention_ms[i], id.window) {
                gone.push(keys::rollup_key(res.index(), *id).to_vec());
                next.rollups[i] = false;
                deleted += 1;
            }
        }
        if next != *e {
            changed.push((*id, next));
        }
    }
    if changed.is_empty() {
        return Ok(0);
    }
    for (id, e) in &changed {
        if e.is_empty() {
            batch.remove(&keys::block_key(keys::CATALOG, *id));
        } else {
            batch.insert(&keys::block_key(keys::CATALOG, *id), &keys::encode_catalog(*e));
        }
    }
    shared.files.put_all(&files)?;
    shared.tree.apply_batch(batch)?;
    if !gone.is_empty() {
        // Removed only once the batch that unlists them is durable.
        shared.db.flush()?;
        shared.files.remove_all(&gone)?;
    }
    for (id, e) in changed {
        if e.is_empty() {
            catalog.remove(&id);
        } else {
            catalog.insert(id, e);
        }
    }
    Ok(deleted)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn seals_by_size_leave_room_for_the_table_but_not_below_a_floor() {
        let mib = 1 << 20;
        // 512 MiB, small table: half of what the table leaves.
        assert!(!due_by_size(250 * mib, 10 * mib, 512 * mib));
        assert!(due_by_size(252 * mib, 10 * mib, 512 * mib));
        // Three million series' table (120 MB) takes its share first.
        assert!(!due_by_size(190 * mib, 120 * mib, 512 * mib));
        assert!(due_by_size(200 * mib, 120 * mib, 512 * mib));
        // A table over the bound: seals still gather an eighth of it.
        assert!(!due_by_size(63 * mib, 600 * mib, 512 * mib));
        assert!(due_by_size(65 * mib, 600 * mib, 512 * mib));
    }

    #[test]
    fn seal_marks_keep_the_latest_cut_per_record_and_prune() {
        let marks = SealMarks::default().with(10, 1000, Some(3));
        assert_eq!(marks.cut_for(3), 1000);
        assert_eq!(marks.cut_for(10), 1000);
        assert_eq!(marks.cut_for(11), i64::MIN, "records after the seal are not covered");
        // A size seal (cut at the end of time) after it, then a time seal.
        let marks = marks.with(20, i64::MAX, Some(15));
        assert_eq!(marks, SealMarks(vec![(20, i64::MAX)]), "the older mark is covered");
        let marks = marks.with(30, 5000, Some(15));
        assert_eq!(marks.cut_for(15), i64::MAX);
        assert_eq!(marks.cut_for(25), 5000);
        assert_eq!(marks.0.len(), 2);
        // No record left at or below the newest seal: no mark needed.
        assert_eq!(marks.with(40, 6000, None), SealMarks::default());
        // Marks only for records still kept.
        assert_eq!(marks.with(40, 6000, Some(31)), SealMarks(vec![(40, 6000)]));
        let decoded = SealMarks::decode(&marks.encode()).unwrap();
        assert_eq!(decoded, marks);
        let mut bad = marks.encode();
        bad[0] ^= 1;
        assert!(SealMarks::decode(&bad).is_err());
        assert!(SealMarks::decode(&[1, 2, 3]).is_err());
    }

    #[test]
    fn parallel_block_encoding_equals_sequential() {
        let series = |n: u64| -> Vec<(u64, Vec<(i64, f64)>)> {
            (0..n)
                .map(|s| (s, (0..50).map(|i| (i * 10_000, (i as f64 + s as f64).sin())).collect()))
                .collect()
        };
        let owned: Vec<_> = (1..=7).map(series).collect();
        let data: Vec<Vec<SeriesRun<'_>>> = owned
            .iter()
            .map(|g| g.iter().map(|(s, v)| (*s, v.as_slice())).collect())
            .collect();
        let jobs: Vec<BlockJob<'_>> = data
            .iter()
            .enumerate()
            .map(|(g, s)| {
                let id = BlockId {
                    group: g as u64,
                    window: 7_200_000,
                    lsn: 3,
                };
                (id, s.as_slice())
            })
            .collect();
        let sequential: Vec<_> = jobs.iter().map(|(id, s)| encode_block(*id, s)).collect();
        let parallel = encode_blocks(&jobs, SEAL_THREADS);
        assert_eq!(parallel.len(), 7);
        for ((a, fa), (b, fb)) in sequential.iter().zip(&parallel) {
            assert_eq!((a.bytes, a.raw, a.rollups), (b.bytes, b.raw, b.rollups));
            assert_eq!(fa, fb);
        }
        assert!(encode_blocks(&[], SEAL_THREADS).is_empty());
        assert_eq!(encode_blocks(&jobs, 1).len(), 7);
    }
}
