//! Moving data out of the heads: sealing closed windows into blocks (with
//! their rollups), compacting a window's several small blocks into one, and
//! dropping data past its retention. All run on the writer thread (or under
//! its lock, for [`Store::seal_all`](super::Store::seal_all)), so they never
//! race a group commit.
//!
//! A seal is one atomic sled batch: the new blocks, their rollups and
//! catalog entries, the deletion of every WAL record the heads were built
//! from, and one checkpoint WAL record holding whatever stays in the heads.
//! A crash before it leaves the old WAL records; after it, blocks plus the
//! checkpoint — the same samples either way. Memory is updated only after
//! the batch is applied, catalog before heads, and readers copy heads before
//! they look at the catalog, so a concurrent reader sees each sample at
//! least once (it merges duplicates) and never zero times.

use std::collections::{BTreeMap, HashMap};
use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use super::head::window_start;
use super::keys::{self, BlockId, CatalogEntry};
use super::rollup::{self, RESOLUTIONS};
use super::{Shared, StoreError, WriterState, block};

/// Windows with at least this many blocks are compacted after a seal
/// (`Store::seal_all` compacts every window with more than one).
const COMPACT_AT_BLOCKS: usize = 4;

/// Seals what is due after a commit: closed windows once the data moved
/// past a window boundary or the heads grew by an eighth of their memory
/// bound since the last seal, or — when the heads outgrew that bound —
/// closed windows first and then everything. Compacts and applies
/// retention after any seal.
pub(crate) fn maintain(shared: &Shared, state: &mut WriterState) -> Result<(), StoreError> {
    let w = shared.opts.window_ms;
    let (bytes, samples, global_max) = {
        let heads = shared.heads.lock().unwrap_or_else(PoisonError::into_inner);
        (heads.bytes(), heads.samples, heads.global_max)
    };
    let grown =
        samples.saturating_sub(state.samples_after_seal) * super::head::SAMPLE_BYTES > shared.opts.head_max_bytes / 8;
    let closed = window_start(global_max.saturating_sub(shared.opts.out_of_order_ms), w);
    let mut sealed = false;
    if bytes > shared.opts.head_max_bytes {
        seal(shared, state, false)?;
        let still = shared.heads.lock().unwrap_or_else(PoisonError::into_inner).bytes();
        if still > shared.opts.head_max_bytes / 4 * 3 {
            seal(shared, state, true)?;
        }
        sealed = true;
    } else if closed > state.sealed_upto || grown {
        seal(shared, state, false)?;
        state.sealed_upto = state.sealed_upto.max(closed);
        sealed = true;
    }
    if sealed {
        state.samples_after_seal = shared.heads.lock().unwrap_or_else(PoisonError::into_inner).samples;
        compact(shared, state, false)?;
        apply_retention(shared)?;
    }
    Ok(())
}

/// Seals closed windows (or, with `all`, every head sample) into blocks.
/// Returns the number of samples sealed.
pub(crate) fn seal(shared: &Shared, state: &mut WriterState, all: bool) -> Result<usize, StoreError> {
    let w = shared.opts.window_ms;
    let (sealable, old_wal, checkpoint, through) = {
        let heads = shared.heads.lock().unwrap_or_else(PoisonError::into_inner);
        let sealable = heads.sealable(w, shared.opts.out_of_order_ms, all);
        if sealable.is_empty() {
            return Ok(0);
        }
        let through: HashMap<u64, i64> = sealable
            .iter()
            .filter_map(|s| s.samples.last().map(|l| (s.series, l.0)))
            .collect();
        let checkpoint = heads.checkpoint(&through);
        (sealable, heads.wal_keys.clone(), checkpoint, through)
    };
    let lsn = state.next_lsn;
    state.next_lsn += 1;
    let mut blocks: BTreeMap<(u64, i64), keys::WalEntries> = BTreeMap::new();
    let mut samples = 0;
    for s in &sealable {
        samples += s.samples.len();
        for chunk in s.samples.chunk_by(|a, b| window_start(a.0, w) == window_start(b.0, w)) {
            if let Some(first) = chunk.first() {
                blocks
                    .entry((s.group, window_start(first.0, w)))
                    .or_default()
                    .push((s.series, chunk.to_vec()));
            }
        }
    }
    let mut batch = sled::Batch::default();
    let mut files = Vec::new();
    let mut entries = Vec::with_capacity(blocks.len());
    let jobs: Vec<BlockJob<'_>> = blocks
        .iter()
        .map(|(&(group, window), series)| (BlockId { group, window, lsn }, series.as_slice()))
        .collect();
    for ((id, _), (entry, mut new)) in jobs.iter().zip(encode_blocks(&jobs)) {
        files.append(&mut new);
        batch.insert(&keys::block_key(keys::CATALOG, *id), &keys::encode_catalog(entry));
        entries.push((*id, entry));
    }
    for key in old_wal {
        batch.remove(&key);
    }
    let mut checkpoint_keys = Vec::new();
    if !checkpoint.is_empty() {
        let l = state.next_lsn;
        state.next_lsn += 1;
        for (key, value) in keys::wal_parts(l, &checkpoint) {
            batch.insert(&key, value);
            checkpoint_keys.push(key);
        }
    }
    batch.insert(keys::META_LSN, &(state.next_lsn - 1).to_be_bytes());
    // Files first: the batch's catalog entries must never name a file that
    // is not complete on disk (`files.rs`).
    shared.files.put_all(&files)?;
    shared.tree.apply_batch(batch)?;
    {
        let mut catalog = shared.catalog.write().unwrap_or_else(PoisonError::into_inner);
        catalog.extend(entries);
    }
    let mut heads = shared.heads.lock().unwrap_or_else(PoisonError::into_inner);
    for (series, t) in through {
        heads.remove_through(series, t);
    }
    heads.wal_keys = checkpoint_keys;
    drop(heads);
    shared.counters.seals.fetch_add(1, Ordering::Relaxed);
    Ok(samples)
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
fn write_block(
    batch: &mut sled::Batch,
    files: &mut NewFiles,
    id: BlockId,
    series: &[(u64, Vec<(i64, f64)>)],
) -> CatalogEntry {
    let (entry, mut new) = encode_block(id, series);
    files.append(&mut new);
    batch.insert(&keys::block_key(keys::CATALOG, id), &keys::encode_catalog(entry));
    entry
}

/// The files of a block and its sealed rollups, and its catalog entry.
fn encode_block(id: BlockId, series: &[(u64, Vec<(i64, f64)>)]) -> (CatalogEntry, NewFiles) {
    let refs: Vec<(u64, &[(i64, f64)])> = series.iter().map(|(s, v)| (*s, v.as_slice())).collect();
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

/// A block to encode: its id and its series' samples.
type BlockJob<'a> = (BlockId, &'a [(u64, Vec<(i64, f64)>)]);

/// Most threads a seal encodes blocks on.
const SEAL_THREADS: usize = 4;

/// [`encode_block`] of every job, in order, spread over up to
/// [`SEAL_THREADS`] threads. Block encoding was a third of the writer
/// thread's time during gRPC ingest (perf, 2026-11-26), and while the
/// writer seals no batch is acknowledged, so the agents' streams — and the
/// cores serving them — sit idle: encoding in parallel gives those cores
/// the work. Blocks are independent, so the output is the same as in
/// sequence. Where a thread cannot be started, its share is encoded here.
fn encode_blocks(jobs: &[BlockJob<'_>]) -> Vec<(CatalogEntry, NewFiles)> {
    let encode_all = |chunk: &[BlockJob<'_>]| chunk.iter().map(|(id, s)| encode_block(*id, s)).collect::<Vec<_>>();
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(SEAL_THREADS)
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

fn write_rollup(files: &mut NewFiles, id: BlockId, res: rollup::Resolution, series: &[(u64, Vec<(i64, f64)>)]) {
    let buckets: Vec<(u64, Vec<rollup::Bucket>)> = series.iter().map(|(s, v)| (*s, rollup::buckets(v, res))).collect();
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
pub(crate) fn compact(shared: &Shared, state: &mut WriterState, all: bool) -> Result<usize, StoreError> {
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
            lsn: state.next_lsn,
        };
        state.next_lsn += 1;
        let series: Vec<(u64, Vec<(i64, f64)>)> =
            merged.into_iter().map(|(s, m)| (s, m.into_iter().collect())).collect();
        let mut batch = sled::Batch::default();
        let mut files = Vec::new();
        let mut gone = Vec::new();
        let entry = write_block(&mut batch, &mut files, id, &series);
        for old in &ids {
            remove_all(&mut batch, &mut gone, *old);
        }
        batch.insert(keys::META_LSN, &(state.next_lsn - 1).to_be_bytes());
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
    fn parallel_block_encoding_equals_sequential() {
        let series = |n: u64| -> Vec<(u64, Vec<(i64, f64)>)> {
            (0..n)
                .map(|s| (s, (0..50).map(|i| (i * 10_000, (i as f64 + s as f64).sin())).collect()))
                .collect()
        };
        let data: Vec<_> = (1..=7).map(series).collect();
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
        let parallel = encode_blocks(&jobs);
        assert_eq!(parallel.len(), 7);
        for ((a, fa), (b, fb)) in sequential.iter().zip(&parallel) {
            assert_eq!((a.bytes, a.raw, a.rollups), (b.bytes, b.raw, b.rollups));
            assert_eq!(fa, fb);
        }
        assert!(encode_blocks(&[]).is_empty());
    }
}
