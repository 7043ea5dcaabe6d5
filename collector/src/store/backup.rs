//! Backup and restore of a whole store as one snapshot file.
//!
//! The snapshot is every sled tree's key/value pairs, framed and closed by a
//! CRC-32 over everything before it, so a truncated or damaged file is
//! refused before anything is written. It is layout-agnostic: whatever trees
//! the engine keeps come back byte for byte.
//!
//! Taking one from a running store ([`Store::snapshot`]) holds off seals,
//! compaction and retention — the only writers of block files and the
//! catalog — for the whole of it, and group commits only while it collects
//! every sled tree's pairs ([`Snapshot::copy_trees`]); it then hard-links
//! every block file into a directory of its own ([`TreesCopy::with_files`]).
//! Writing it ([`Snapshot::write_to`]) holds nothing. That is a
//! point-in-time view because, under those locks, the sled state is exactly
//! what group commits and seals made durable (each flushes before it lets
//! go); the pairs are sled's reference-counted, immutable `IVec`s (shared
//! with its cache, not copied); and block files never change once written —
//! one that a compaction or retention removes later stays readable through
//! the link made before, which keeps its inode alive.
//!
//! Links rather than open handles because a fleet's store has far more
//! block files than a process may hold descriptors (10,000 hosts keep some
//! 1.8 million over 15 days; the unit allows 65,536): writing opens one link
//! at a time and removes it once streamed. The directory,
//! `<data-dir>/.snapshot-<pid>-<n>/`, sits beside `blocks/`, so nothing that
//! lists, sizes or reconciles the block files sees it; it is removed when
//! the snapshot is dropped, written or not, and one a crash left is removed
//! by the next [`Store::open`](super::Store::open). Where the filesystem
//! cannot link (another filesystem, no hard links, no room for the
//! directory), the snapshot holds each file open instead, as it always
//! could, and is then bounded by the descriptor limit.
//!
//! The WAL, the host seq table, the seal marks and the catalog are
//! collected in one critical section, so a restored store holds exactly
//! what was acknowledged before the snapshot, and its seqs drop every
//! replay of it. Ingest waits for the collection only: about 2 ms on
//! average for some 10,000 records on a 2-core machine (measured while a
//! reference-sized store took 100 agents' appends); linking the block
//! files and writing cost it nothing.
//!
//! File format (integers little-endian):
//!
//! | record | layout                                              |
//! |--------|-----------------------------------------------------|
//! | header | `HPBACKUP1\n`                                       |
//! | tree   | `0x01`, u32 name length, name                       |
//! | pair   | `0x02`, u32 key length, key, u32 value length, value |
//! | end    | `0xFF`, u64 pair count, u32 CRC-32 of all bytes before the CRC |
//!
//! Sealed blocks and rollups, kept as files (`files.rs`), are written as
//! pairs of the engine tree under the keys they are named by; restore
//! writes them back as files (a store opened on records still in sled, as
//! older snapshots may hold, moves them out itself). The byte length of a
//! snapshot is known before it is written ([`Snapshot::bytes`]), so the
//! admin endpoint (`crate::admin`) can announce it.
//!
//! [`Store::snapshot`]: super::Store::snapshot

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::StoreError;
use super::files::Files;
use super::keys;

const MAGIC: &[u8] = b"HPBACKUP1\n";
const TAG_TREE: u8 = 0x01;
const TAG_PAIR: u8 = 0x02;
const TAG_END: u8 = 0xFF;
/// Keys and values larger than this are not ours; refusing them keeps a
/// corrupt length from allocating gigabytes.
const MAX_LEN: u32 = 1 << 30;
/// Bytes of the end record: tag, pair count, CRC.
const END_BYTES: u64 = 1 + 8 + 4;

/// Problems specific to snapshot files.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing the snapshot file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        error: std::io::Error,
    },
    /// The file is not a complete, undamaged snapshot.
    #[error("{path} is not a valid hostpulse backup: {detail}")]
    Invalid {
        /// The file.
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// The target of a restore or backup already holds something.
    #[error("{0} already exists and is not empty; refusing to overwrite it")]
    Exists(String),
    /// The filesystem could not hard-link the block files, and not every
    /// one could be held open instead.
    #[error(
        "the data directory's filesystem cannot hard-link block files, so a consistent snapshot holds every one \
         open ({files} files), and opening them failed: {error}; raise the collector's open-file limit \
         (LimitNOFILE) or stop it and use `backup --data-dir`"
    )]
    TooManyFiles {
        /// Block files the store has.
        files: usize,
        /// The error opening one.
        error: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How much a written snapshot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// Key/value records (sled pairs plus block files).
    pub records: u64,
    /// Bytes of the snapshot, header to CRC.
    pub bytes: u64,
}

/// One sled tree as it was under the lock, with the block files that are
/// written as its pairs (only the engine tree has any).
struct TreeCopy {
    name: sled::IVec,
    pairs: Vec<(sled::IVec, sled::IVec)>,
    files: Vec<BlockFile>,
}

/// A block or rollup file the snapshot holds: its key, how it is held
/// and its length then.
struct BlockFile {
    key: Vec<u8>,
    held: Held,
    len: u64,
}

/// How a snapshot keeps a block file readable after retention or a
/// compaction removes it.
enum Held {
    /// A hard link in the snapshot's [`LinkDir`], named as in `blocks/`:
    /// no descriptor until it is written. Its path is derived from the key
    /// rather than kept, which saves some 100 bytes per file.
    Linked,
    /// An open handle, where the filesystem cannot link.
    Open(File),
}

/// Start of the name of a snapshot's directory of links in the data
/// directory; the rest is the process id and a number.
const LINKS_PREFIX: &str = ".snapshot-";

/// Numbers the link directories of this process.
static NEXT_LINKS: AtomicU64 = AtomicU64::new(0);

/// Names of this process's link directories that belong to a live
/// snapshot, so that a store reopened while one exists (tests, an
/// in-process restart) does not take it for a crash's leftover.
static LIVE_LINKS: Mutex<BTreeSet<OsString>> = Mutex::new(BTreeSet::new());

fn live_links() -> std::sync::MutexGuard<'static, BTreeSet<OsString>> {
    LIVE_LINKS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A snapshot's directory of hard links to block files, removed with
/// everything in it when dropped.
struct LinkDir {
    path: PathBuf,
    name: OsString,
}

impl LinkDir {
    /// Creates a new, empty one in `data_dir`.
    fn create(data_dir: &Path) -> std::io::Result<LinkDir> {
        // A name taken by a crashed process of the same id (containers reuse
        // them) is skipped; the next open removes it.
        let mut last = None;
        for _ in 0..64 {
            let n = NEXT_LINKS.fetch_add(1, Ordering::Relaxed);
            let name = OsString::from(format!("{LINKS_PREFIX}{}-{n}", std::process::id()));
            // Registered before it exists, so that no open in this process
            // can take it for a leftover in between.
            live_links().insert(name.clone());
            let path = data_dir.join(&name);
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(LinkDir { path, name }),
                Err(e) => {
                    live_links().remove(&name);
                    if e.kind() != std::io::ErrorKind::AlreadyExists {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::ErrorKind::AlreadyExists.into()))
    }

    fn link_path(&self, key: &[u8]) -> PathBuf {
        self.path.join(hex(key))
    }
}

impl Drop for LinkDir {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                dir = %self.path.display(),
                error = %e,
                "backup: could not remove the snapshot's directory of block-file links; the next start removes it"
            ),
        }
        live_links().remove(&self.name);
    }
}

/// Removes the link directories of snapshots a crashed or killed process
/// left in `data_dir` (they hold the inodes of block files retention has
/// since removed). Called when the store opens, under sled's lock, so no
/// other process is using them; never fails the open.
pub(crate) fn remove_leftover_links(data_dir: &Path) {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %data_dir.display(), error = %e, "listing the data directory for leftover backup links");
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let ours = name.to_str().is_some_and(|n| n.starts_with(LINKS_PREFIX));
        if !ours || !entry.file_type().is_ok_and(|t| t.is_dir()) || live_links().contains(&name) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!(dir = %path.display(), "removed the block-file links of an interrupted backup"),
            Err(e) => tracing::warn!(
                dir = %path.display(),
                error = %e,
                "could not remove the block-file links of an interrupted backup"
            ),
        }
    }
}

/// Whether hard-linking failed because this filesystem or directory cannot
/// hold the links (rather than because the block file is missing or
/// unreadable), so that holding the file open is worth trying.
fn cannot_link(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::CrossesDevices
            | K::PermissionDenied
            | K::Unsupported
            | K::TooManyLinks
            | K::StorageFull
            | K::QuotaExceeded
            | K::ReadOnlyFilesystem
    )
}

/// Whether [`TreesCopy::with_files`] may link; tests also hold every file
/// open, the fallback a filesystem without links gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    LinkWherePossible,
    #[cfg(test)]
    OpenFiles,
}

/// Holds the block files of one snapshot: links them while it can, opens
/// them once it cannot.
struct Holder<'a> {
    files: &'a Files,
    total: usize,
    links: Option<LinkDir>,
    linking: bool,
}

impl Holder<'_> {
    /// Holds the file of `key`; returns how, and its length.
    fn hold(&mut self, key: &[u8]) -> Result<(Held, u64), BackupError> {
        let path = self.files.record_path(key);
        let io = |path: &Path, error| BackupError::Io {
            path: path.display().to_string(),
            error,
        };
        if self.linking && self.links.is_none() {
            match LinkDir::create(self.files.data_dir()) {
                Ok(dir) => self.links = Some(dir),
                Err(e) => {
                    tracing::warn!(
                        dir = %self.files.data_dir().display(),
                        error = %e,
                        files = self.total,
                        "backup: cannot create a directory of block-file links; holding the files open instead"
                    );
                    self.linking = false;
                }
            }
        }
        if let Some(dir) = self.links.as_ref().filter(|_| self.linking) {
            let link = dir.link_path(key);
            match std::fs::hard_link(&path, &link) {
                Ok(()) => {
                    let len = std::fs::metadata(&link).map_err(|e| io(&link, e))?.len();
                    return Ok((Held::Linked, len));
                }
                Err(e) if cannot_link(&e) => {
                    tracing::warn!(
                        dir = %dir.path.display(),
                        error = %e,
                        files = self.total,
                        "backup: cannot hard-link block files here; holding the rest open instead"
                    );
                    self.linking = false;
                }
                Err(e) => return Err(io(&path, e)),
            }
        }
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if is_fd_exhaustion(&e) => {
                return Err(BackupError::TooManyFiles {
                    files: self.total,
                    error: e,
                });
            }
            Err(e) => return Err(io(&path, e)),
        };
        let len = file.metadata().map_err(|e| io(&path, e))?.len();
        Ok((Held::Open(file), len))
    }
}

/// A consistent view of a whole store, taken under its commit lock and
/// written later without it (see the module comment). Dropping it releases
/// everything it holds: nothing is left on disk.
pub struct Snapshot {
    trees: Vec<TreeCopy>,
    summary: SnapshotSummary,
    /// How long phase one ran: the time commits waited for it.
    took: std::time::Duration,
    /// Where the [`Held::Linked`] files are; `None` if none is.
    links: Option<LinkDir>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("trees", &self.trees.len())
            .field("summary", &self.summary)
            .field("took", &self.took)
            .finish()
    }
}

/// The framing bytes of a chunk (its u32 length) plus the chunk; errors
/// for one too large for the format.
fn chunk_bytes(len: u64) -> Result<u64, BackupError> {
    if len > u64::from(MAX_LEN) {
        return Err(BackupError::Store(StoreError::Corrupt {
            tree: keys::TREE,
            detail: format!("a record of {len} bytes is larger than a backup can hold (1 GiB)"),
        }));
    }
    Ok(4 + len)
}

/// Phase one of a snapshot: every sled tree's pairs, collected while
/// commits are held off ([`Snapshot::copy_trees`]).
pub(crate) struct TreesCopy {
    trees: Vec<TreeCopy>,
    took: std::time::Duration,
}

impl Snapshot {
    /// Phase one: every tree's pairs. The caller holds off every writer of
    /// `db` for this call only.
    pub(crate) fn copy_trees(db: &sled::Db) -> Result<TreesCopy, BackupError> {
        let started = std::time::Instant::now();
        let mut trees = Vec::new();
        for name in db.tree_names() {
            let tree = db.open_tree(&name).map_err(StoreError::from)?;
            let pairs = tree.iter().collect::<Result<Vec<_>, _>>().map_err(StoreError::from)?;
            trees.push(TreeCopy {
                name,
                pairs,
                files: Vec::new(),
            });
        }
        Ok(TreesCopy {
            trees,
            took: started.elapsed(),
        })
    }
}

impl TreesCopy {
    /// Phase two: hard-links (or, where that cannot be done, opens) every
    /// file of `files`, to be written as pairs of the engine tree. The
    /// caller holds off whatever writes or removes block files and catalog
    /// entries (seals, compaction, retention) from before phase one until
    /// this returns; commits, which touch neither, may run.
    pub(crate) fn with_files(self, files: &Files) -> Result<Snapshot, BackupError> {
        self.holding(files, Hold::LinkWherePossible)
    }

    fn holding(self, files: &Files, how: Hold) -> Result<Snapshot, BackupError> {
        let TreesCopy { mut trees, took } = self;
        let mut holder = Holder {
            files,
            total: 0,
            links: None,
            linking: how == Hold::LinkWherePossible,
        };
        let mut bytes = MAGIC.len() as u64 + END_BYTES;
        let mut records = 0u64;
        for tree in &mut trees {
            bytes += 1 + chunk_bytes(tree.name.len() as u64)?;
            for (k, v) in &tree.pairs {
                bytes += 1 + chunk_bytes(k.len() as u64)? + chunk_bytes(v.len() as u64)?;
            }
            records += tree.pairs.len() as u64;
            // Block files go in as the records they stand for; restore
            // writes them back out as files.
            if tree.name != keys::TREE.as_bytes() {
                continue;
            }
            let keys = files.keys()?;
            let total = keys.len();
            holder.total = total;
            tree.files.reserve(total);
            for key in keys {
                // On an error the links made so far go with `holder`.
                let (held, len) = holder.hold(&key)?;
                bytes += 1 + chunk_bytes(key.len() as u64)? + chunk_bytes(len)?;
                tree.files.push(BlockFile { key, held, len });
            }
            records += total as u64;
        }
        Ok(Snapshot {
            trees,
            summary: SnapshotSummary { records, bytes },
            took,
            links: holder.links,
        })
    }
}

impl Snapshot {
    /// Records and bytes [`Snapshot::write_to`] will write.
    pub fn summary(&self) -> SnapshotSummary {
        self.summary
    }

    /// How long taking it held off commits (they waited that long).
    pub fn lock_held(&self) -> std::time::Duration {
        self.took
    }

    /// Bytes the snapshot will take, header to CRC.
    pub fn bytes(&self) -> u64 {
        self.summary.bytes
    }

    /// Writes the snapshot to `w` (and flushes it). A write error stops it
    /// at once; a block file that does not hold the length it had when the
    /// snapshot was taken fails it rather than write a wrong record. Block
    /// files are opened one at a time, and each link removed once written;
    /// the links' directory goes when this returns, whatever it returns.
    pub fn write_to(self, w: impl Write) -> std::io::Result<SnapshotSummary> {
        let Snapshot {
            trees,
            summary: announced,
            took: _,
            links,
        } = self;
        let mut w = CrcWriter {
            inner: w,
            crc: crc32fast::Hasher::new(),
            written: 0,
        };
        w.write_all(MAGIC)?;
        let mut pairs = 0u64;
        for tree in trees {
            w.write_all(&[TAG_TREE])?;
            write_chunk(&mut w, &tree.name)?;
            for (k, v) in &tree.pairs {
                w.write_all(&[TAG_PAIR])?;
                write_chunk(&mut w, k)?;
                write_chunk(&mut w, v)?;
                pairs += 1;
            }
            drop(tree.pairs);
            for block in tree.files {
                w.write_all(&[TAG_PAIR])?;
                write_chunk(&mut w, &block.key)?;
                let len = u32::try_from(block.len)
                    .ok()
                    .filter(|l| *l <= MAX_LEN)
                    .ok_or_else(|| std::io::Error::other("block file larger than 1 GiB"))?;
                w.write_all(&len.to_le_bytes())?;
                let copied = match &block.held {
                    Held::Open(file) => std::io::copy(&mut file.take(block.len), &mut w)?,
                    Held::Linked => {
                        let dir = links
                            .as_ref()
                            .ok_or_else(|| std::io::Error::other("a linked block file without a link directory"))?;
                        let path = dir.link_path(&block.key);
                        let file = File::open(&path)
                            .map_err(|e| std::io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
                        let copied = std::io::copy(&mut (&file).take(block.len), &mut w)?;
                        drop(file);
                        // The last name of a block retention removed meanwhile:
                        // its space comes back now rather than at the end.
                        let _ = std::fs::remove_file(&path);
                        copied
                    }
                };
                if copied != block.len {
                    return Err(std::io::Error::other(format!(
                        "block file {} shrank from {} to {copied} bytes during the backup",
                        hex(&block.key),
                        block.len
                    )));
                }
                pairs += 1;
            }
        }
        w.write_all(&[TAG_END])?;
        w.write_all(&pairs.to_le_bytes())?;
        let crc = w.crc.clone().finalize();
        w.inner.write_all(&crc.to_le_bytes())?;
        w.written += 4;
        w.inner.flush()?;
        let summary = SnapshotSummary {
            records: pairs,
            bytes: w.written,
        };
        if summary != announced {
            return Err(std::io::Error::other(format!(
                "wrote {summary:?}, announced {announced:?}"
            )));
        }
        Ok(summary)
    }

    /// Writes the snapshot to a new file `out`: beside it first
    /// ([`partial_path`]), fsynced, then renamed, so `out` only ever
    /// appears complete.
    pub fn write_file(self, out: &Path) -> Result<SnapshotSummary, BackupError> {
        if out.exists() {
            return Err(BackupError::Exists(out.display().to_string()));
        }
        let tmp = partial_path(out);
        let io = |error| BackupError::Io {
            path: tmp.display().to_string(),
            error,
        };
        let file = File::create(&tmp).map_err(io)?;
        let written = self
            .write_to(BufWriter::new(&file))
            .and_then(|s| file.sync_all().map(|()| s));
        let summary = match written {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io(e));
            }
        };
        drop(file);
        std::fs::rename(&tmp, out).map_err(|error| BackupError::Io {
            path: out.display().to_string(),
            error,
        })?;
        sync_parent(out);
        Ok(summary)
    }
}

/// Whether opening a file failed for want of descriptors (EMFILE, ENFILE).
fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// The name a snapshot is written under before it is renamed to `out`.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Makes a rename into `path`'s directory durable. Best effort: some
/// filesystems cannot fsync a directory, and the file itself is synced.
fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
}

/// Checks that `input` is a complete, undamaged snapshot; returns its
/// record count.
pub fn verify_backup(input: &Path) -> Result<u64, BackupError> {
    read_snapshot(input, |_| Ok(()))
}

/// Loads a snapshot into a new store directory; returns the number of pairs.
/// The whole file is verified first, so a damaged one writes nothing.
pub fn restore_from(input: &Path, data_dir: &Path) -> Result<u64, BackupError> {
    if data_dir.exists()
        && std::fs::read_dir(data_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(BackupError::Exists(data_dir.display().to_string()));
    }
    let expected = verify_backup(input)?;
    // Block and rollup records go straight to files, where the store keeps
    // them: through sled they would leave its files at their high-water
    // mark, about 2.5 times the data.
    let files = Files::open(data_dir)?;
    let mut in_engine = false;
    let mut pending: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut pending_bytes = 0usize;
    // No background flusher: restore flushes itself at the end, and without
    // that thread the database (and its file lock) is closed when `db` is
    // dropped, so the directory can be opened again as soon as this returns.
    let db = sled::Config::new()
        .path(data_dir)
        .flush_every_ms(None)
        .open()
        .map_err(StoreError::from)?;
    let mut tree: Option<sled::Tree> = None;
    let mut batch = sled::Batch::default();
    let mut in_batch = 0usize;
    let count = read_snapshot(input, |rec| {
        match rec {
            Record::Tree(name) => {
                if let Some(t) = tree.take() {
                    t.apply_batch(std::mem::take(&mut batch))?;
                    in_batch = 0;
                }
                tree = Some(db.open_tree(name)?);
                in_engine = name == keys::TREE.as_bytes();
            }
            Record::Pair(k, v) if in_engine && matches!(k.first(), Some(&(keys::BLOCK | keys::ROLLUP))) => {
                pending_bytes += v.len();
                pending.push((k.to_vec(), v.to_vec()));
                if pending_bytes >= 16 << 20 {
                    files.put_all(&pending)?;
                    pending.clear();
                    pending_bytes = 0;
                }
            }
            Record::Pair(k, v) => {
                batch.insert(k, v);
                in_batch += 1;
                if in_batch >= 10_000 {
                    if let Some(t) = &tree {
                        t.apply_batch(std::mem::take(&mut batch))?;
                    }
                    in_batch = 0;
                }
            }
        }
        Ok(())
    })?;
    if let Some(t) = tree.take() {
        t.apply_batch(batch).map_err(StoreError::from)?;
    }
    // Files first, as a seal writes them: the catalog may name only files
    // complete on disk.
    files.put_all(&pending)?;
    db.flush().map_err(StoreError::from)?;
    debug_assert_eq!(expected, count);
    Ok(count)
}

/// One record of a snapshot as it is read.
enum Record<'a> {
    Tree(&'a [u8]),
    Pair(&'a [u8], &'a [u8]),
}

/// Reads and checks a snapshot, handing each record to `each`; returns the
/// pair count. `each` sees records before the CRC is checked, so restore
/// calls this once with a no-op to verify before writing.
fn read_snapshot(input: &Path, mut each: impl FnMut(Record<'_>) -> Result<(), StoreError>) -> Result<u64, BackupError> {
    let path = input.display().to_string();
    let invalid = |detail: &str| BackupError::Invalid {
        path: path.clone(),
        detail: detail.to_owned(),
    };
    let io = |error| BackupError::Io {
        path: path.clone(),
        error,
    };
    let file = File::open(input).map_err(io)?;
    let mut r = CrcReader {
        inner: BufReader::new(file),
        crc: crc32fast::Hasher::new(),
    };
    let mut magic = [0u8; MAGIC.len()];
    r.read_exact(&mut magic).map_err(|_| invalid("no header"))?;
    if magic != MAGIC {
        return Err(invalid("wrong header"));
    }
    let mut pairs = 0u64;
    let mut have_tree = false;
    let (mut key, mut value) = (Vec::new(), Vec::new());
    loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag)
            .map_err(|_| invalid("truncated (no end record)"))?;
        match tag[0] {
            TAG_TREE => {
                read_chunk(&mut r, &mut key).map_err(|_| invalid("truncated tree name"))?;
                each(Record::Tree(&key))?;
                have_tree = true;
            }
            TAG_PAIR if have_tree => {
                read_chunk(&mut r, &mut key).map_err(|_| invalid("truncated key"))?;
                read_chunk(&mut r, &mut value).map_err(|_| invalid("truncated value"))?;
                each(Record::Pair(&key, &value))?;
                pairs += 1;
            }
            TAG_END => {
                let mut count = [0u8; 8];
                r.read_exact(&mut count).map_err(|_| invalid("truncated end record"))?;
                let crc = r.crc.clone().finalize();
                let mut stored = [0u8; 4];
                r.inner
                    .read_exact(&mut stored)
                    .map_err(|_| invalid("truncated checksum"))?;
                if u32::from_le_bytes(stored) != crc {
                    return Err(invalid("checksum mismatch"));
                }
                if u64::from_le_bytes(count) != pairs {
                    return Err(invalid("pair count mismatch"));
                }
                let mut rest = [0u8; 1];
                if r.inner.read(&mut rest).map_err(io)? != 0 {
                    return Err(invalid("bytes after the end record"));
                }
                return Ok(pairs);
            }
            other => return Err(invalid(&format!("unknown record tag {other:#04x}"))),
        }
    }
}

fn write_chunk(w: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|l| *l <= MAX_LEN)
        .ok_or_else(|| std::io::Error::other("record larger than 1 GiB"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(bytes)
}

fn read_chunk(r: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_LEN {
        return Err(std::io::Error::other("length over limit"));
    }
    buf.clear();
    r.by_ref().take(u64::from(len)).read_to_end(buf)?;
    if buf.len() != len as usize {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Counts and checksums what passes through to `inner`.
struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
    written: u64,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let done = buf.get(..n).unwrap_or(buf);
        self.crc.update(done);
        self.written += done.len() as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct CrcReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(buf.get(..n).unwrap_or(buf));
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An empty block-file directory: these tests are about sled trees.
    fn no_files(tmp: &Path) -> Files {
        Files::open(&tmp.join("files")).unwrap()
    }

    fn sample_db(dir: &Path) -> sled::Db {
        let db = sled::Config::new().path(dir).open().unwrap();
        db.insert(b"meta", b"1").unwrap();
        let t = db.open_tree("blocks").unwrap();
        for i in 0u32..100 {
            t.insert(i.to_be_bytes(), vec![i as u8; i as usize]).unwrap();
        }
        db
    }

    #[test]
    fn round_trip_restores_every_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let db = sample_db(&tmp.path().join("src"));
        let out = tmp.path().join("snap");
        let n = Snapshot::copy_trees(&db)
            .unwrap()
            .with_files(&no_files(tmp.path()))
            .unwrap()
            .write_file(&out)
            .unwrap();
        assert_eq!(n.records, 101);
        assert_eq!(n.bytes, std::fs::metadata(&out).unwrap().len());
        assert!(matches!(
            Snapshot::copy_trees(&db)
                .unwrap()
                .with_files(&no_files(tmp.path()))
                .unwrap()
                .write_file(&out),
            Err(BackupError::Exists(_))
        ));
        drop(db);
        let dst = tmp.path().join("dst");
        assert_eq!(restore_from(&out, &dst).unwrap(), 101);
        // sled's I/O threads may hold the lock a moment after the restore's
        // database is dropped (a process that runs `restore` has exited).
        let db = super::super::compact::open_waiting(sled::Config::new().path(&dst)).unwrap();
        assert_eq!(db.get(b"meta").unwrap().unwrap().as_ref(), b"1");
        let t = db.open_tree("blocks").unwrap();
        assert_eq!(t.len(), 100);
        assert_eq!(t.get(7u32.to_be_bytes()).unwrap().unwrap().as_ref(), &[7u8; 7]);
    }

    use std::collections::HashSet;
    use std::time::Duration;

    use crate::model::{Labels, Matcher, SeriesSamples};
    use crate::store::{AppendOutcome, Store, StoreOptions};

    /// A block-window boundary, so every probe batch lands in one window.
    const T0: i64 = 1_700_006_400_000;

    fn value(seq: u64, n: u32) -> f64 {
        seq as f64 * 10.0 + f64::from(n) + 0.5
    }

    /// Batch `seq` of host "h": one sample for each of three series.
    fn batch(seq: u64) -> Vec<SeriesSamples> {
        (0..3u32)
            .map(|n| SeriesSamples {
                labels: Labels::from_pairs(&[("__name__", "probe"), ("instance", "h"), ("n", &n.to_string())]),
                samples: vec![(T0 + seq as i64 * 1000, value(seq, n))],
            })
            .collect()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Appends batch `seq`; the deadline turns a commit lock left held
    /// into a failure instead of a hang.
    fn append(rt: &tokio::runtime::Runtime, store: &Store, seq: u64) -> AppendOutcome {
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), store.append("h", seq, batch(seq))).await })
            .expect("append acknowledged while a snapshot is held or written")
            .unwrap()
    }

    /// Each probe series' samples.
    fn probes(store: &Store) -> Vec<Vec<(i64, f64)>> {
        let mut series = store
            .select(&[Matcher::equal("__name__", "probe")], 0, i64::MAX)
            .unwrap();
        series.sort_by(|a, b| a.labels.get("n").cmp(b.labels.get("n")));
        series.into_iter().map(|s| s.samples).collect()
    }

    fn expected(seqs: std::ops::RangeInclusive<u64>) -> Vec<Vec<(i64, f64)>> {
        (0..3u32)
            .map(|n| {
                seqs.clone()
                    .map(|seq| (T0 + seq as i64 * 1000, value(seq, n)))
                    .collect()
            })
            .collect()
    }

    /// Passes bytes through to a buffer and runs `during` once, after the
    /// first bytes: what a slow HTTP client reading the stream looks like.
    struct Midway<'a> {
        out: Vec<u8>,
        during: Option<Box<dyn FnOnce() + 'a>>,
    }

    impl Write for Midway<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.out.extend_from_slice(buf);
            if let Some(f) = self.during.take() {
                f();
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Issue 4, backup of a running collector: the snapshot is the store as
    /// of the moment it was taken — a sealed block that a compaction removes
    /// afterwards is still in it, appends acknowledged after it are not —
    /// and ingest is acknowledged both while the snapshot is held and while
    /// it is written. After a restore the host's seq matches the samples, so
    /// the agent's replay stores each batch exactly once.
    #[test]
    fn snapshot_is_point_in_time_while_ingest_and_compaction_go_on() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let store = Store::open(&tmp.path().join("live"), StoreOptions::default()).unwrap();
        for seq in 1..=5 {
            append(&rt, &store, seq);
        }
        // Batches 1-5 become a block; batch 6 stays in the WAL.
        store.seal_all().unwrap();
        append(&rt, &store, 6);

        let snapshot = store.snapshot().unwrap();
        let held: HashSet<Vec<u8>> = store.shared.files.keys().unwrap().into_iter().collect();
        assert!(!held.is_empty(), "the test needs a block file in the snapshot");
        // Ingest goes on while the snapshot exists, and a second seal of the
        // window compacts its two blocks into one, removing the files the
        // snapshot holds open.
        assert!(matches!(append(&rt, &store, 7), AppendOutcome::Stored { .. }));
        store.seal_all().unwrap();
        let now: HashSet<Vec<u8>> = store.shared.files.keys().unwrap().into_iter().collect();
        assert!(
            !held.is_subset(&now),
            "compaction removed none of the snapshot's block files"
        );

        let announced = snapshot.summary();
        let mut sink = Midway {
            out: Vec::new(),
            during: Some(Box::new(|| {
                assert!(matches!(append(&rt, &store, 8), AppendOutcome::Stored { .. }));
            })),
        };
        let written = snapshot.write_to(&mut sink).unwrap();
        assert!(sink.during.is_none(), "the append ran while the snapshot was written");
        assert_eq!(written, announced);
        assert_eq!(written.bytes, sink.out.len() as u64);
        let file = tmp.path().join("snap.hpb");
        std::fs::write(&file, &sink.out).unwrap();
        assert_eq!(verify_backup(&file).unwrap(), written.records);

        let copy_dir = tmp.path().join("copy");
        assert_eq!(restore_from(&file, &copy_dir).unwrap(), written.records);
        let restored: HashSet<Vec<u8>> = Files::open(&copy_dir).unwrap().keys().unwrap().into_iter().collect();
        assert_eq!(restored, held, "the block files restored as files, as they were");
        let copy = Store::open(&copy_dir, StoreOptions::default()).unwrap();
        assert_eq!(copy.last_seq("h").unwrap(), Some(6));
        assert_eq!(
            probes(&copy),
            expected(1..=6),
            "exactly what was acknowledged before the snapshot"
        );
        // The agent resends from the start: what the snapshot had is a
        // duplicate, the rest is stored, each sample once.
        for seq in 1..=8 {
            let outcome = append(&rt, &copy, seq);
            assert_eq!(
                matches!(outcome, AppendOutcome::Duplicate { .. }),
                seq <= 6,
                "seq {seq}: {outcome:?}"
            );
        }
        assert_eq!(probes(&copy), expected(1..=8));
        // The live store lost nothing to the backup either.
        assert_eq!(probes(&store), expected(1..=8));
    }

    /// A reader that goes away mid-stream (a disconnected client) ends the
    /// write with its error and leaves nothing held: ingest and the next
    /// backup proceed, and no file is left beside the store.
    #[test]
    fn an_abandoned_snapshot_leaves_nothing_behind() {
        struct Gone(usize);
        impl Write for Gone {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if self.0 < buf.len() {
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
                self.0 -= buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let live = tmp.path().join("live");
        let store = Store::open(&live, StoreOptions::default()).unwrap();
        for seq in 1..=3 {
            append(&rt, &store, seq);
        }
        store.seal_all().unwrap();
        let listing = |dir: &Path| -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let before = (listing(tmp.path()), listing(&live.join(super::super::files::DIR)));
        let e = store.snapshot().unwrap().write_to(Gone(20)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
        assert_eq!(
            link_dirs(&live),
            Vec::<String>::new(),
            "the failed write removed its links"
        );
        append(&rt, &store, 4);
        let out = tmp.path().join("again.hpb");
        store.backup_to(&out).unwrap();
        verify_backup(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert_eq!(
            (listing(tmp.path()), listing(&live.join(super::super::files::DIR))),
            before
        );
    }

    #[test]
    fn damaged_snapshot_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let db = sample_db(&tmp.path().join("src"));
        let out = tmp.path().join("snap");
        Snapshot::copy_trees(&db)
            .unwrap()
            .with_files(&no_files(tmp.path()))
            .unwrap()
            .write_file(&out)
            .unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let mut flipped = bytes.clone();
        flipped[200] ^= 0x40;
        let bad = tmp.path().join("flipped");
        std::fs::write(&bad, &flipped).unwrap();
        let e = restore_from(&bad, &tmp.path().join("d1")).unwrap_err();
        assert!(matches!(e, BackupError::Invalid { .. }), "{e}");
        assert!(!tmp.path().join("d1").exists());
        for cut in [0, 5, bytes.len() / 2, bytes.len() - 1] {
            let bad = tmp.path().join(format!("cut{cut}"));
            std::fs::write(&bad, &bytes[..cut]).unwrap();
            let e = restore_from(&bad, &tmp.path().join(format!("d{cut}"))).unwrap_err();
            assert!(matches!(e, BackupError::Invalid { .. }), "cut at {cut}: {e}");
        }
    }

    /// The snapshot link directories in `data_dir`.
    fn link_dirs(data_dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(data_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(LINKS_PREFIX))
            .collect();
        names.sort();
        names
    }

    /// Descriptors this process holds on files under `dir`. Counting only
    /// those, rather than every entry of /proc/self/fd, keeps the tests
    /// running beside this one (each opening its own files) out of it.
    fn fds_under(dir: &Path) -> usize {
        let dir = dir.canonicalize().unwrap();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.starts_with(&dir))
            .count()
    }

    /// What [`Store::snapshot`] does, holding the block files as `how` says.
    fn snapshot_holding(store: &Store, how: Hold) -> Snapshot {
        let _sealing = store.shared.seal_lock.lock().unwrap();
        let trees = {
            let _state = store.shared.write_lock.lock().unwrap();
            Snapshot::copy_trees(&store.shared.db).unwrap()
        };
        trees.holding(&store.shared.files, how).unwrap()
    }

    /// A store of one host with batches 1-5 sealed into block files and
    /// batch 6 in the WAL.
    fn sealed_store(rt: &tokio::runtime::Runtime, dir: &Path) -> Store {
        let store = Store::open(dir, StoreOptions::default()).unwrap();
        for seq in 1..=5 {
            append(rt, &store, seq);
        }
        store.seal_all().unwrap();
        append(rt, &store, 6);
        assert!(
            !store.shared.files.keys().unwrap().is_empty(),
            "the test needs block files"
        );
        store
    }

    /// Retention removing every block file after the snapshot was taken
    /// (and before it is written) costs the backup nothing, whether the
    /// snapshot linked the files or, where it cannot, held them open.
    #[test]
    fn a_snapshot_restores_every_sample_after_its_block_files_are_removed() {
        for how in [Hold::LinkWherePossible, Hold::OpenFiles] {
            let tmp = tempfile::tempdir().unwrap();
            let rt = runtime();
            let live = tmp.path().join("live");
            let store = sealed_store(&rt, &live);
            let snapshot = snapshot_holding(&store, how);
            assert_eq!(snapshot.links.is_some(), how == Hold::LinkWherePossible, "{how:?}");
            let blocks = store.shared.files.keys().unwrap();
            store.shared.files.remove_all(&blocks).unwrap();
            assert!(store.shared.files.keys().unwrap().is_empty());

            let file = tmp.path().join("snap.hpb");
            let written = snapshot.write_file(&file).unwrap();
            assert_eq!(link_dirs(&live), Vec::<String>::new(), "{how:?}");
            let copy_dir = tmp.path().join("copy");
            assert_eq!(restore_from(&file, &copy_dir).unwrap(), written.records);
            assert_eq!(Files::open(&copy_dir).unwrap().keys().unwrap(), blocks, "{how:?}");
            let copy = Store::open(&copy_dir, StoreOptions::default()).unwrap();
            assert_eq!(probes(&copy), expected(1..=6), "{how:?}");
            assert_eq!(copy.last_seq("h").unwrap(), Some(6));
        }
    }

    /// A snapshot of a store with many block files holds none of them open
    /// (the fallback, measured the same way, holds every one), and writes
    /// each file's bytes as they were.
    #[test]
    fn a_snapshot_holds_no_descriptor_per_block_file() {
        const BLOCKS: usize = 300;
        let tmp = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(tmp.path().join("sled")).open().unwrap();
        db.open_tree(keys::TREE).unwrap().insert(b"m", b"1").unwrap();
        let data = tmp.path().join("data");
        let files = Files::open(&data).unwrap();
        let records: Vec<(Vec<u8>, Vec<u8>)> = (0..BLOCKS as u32)
            .map(|i| {
                let mut key = vec![keys::BLOCK];
                key.extend_from_slice(&i.to_be_bytes());
                (key, vec![i as u8; 100 + i as usize])
            })
            .collect();
        files.put_all(&records).unwrap();

        let before = fds_under(&data);
        let linked = Snapshot::copy_trees(&db).unwrap().with_files(&files).unwrap();
        assert_eq!(fds_under(&data), before, "the linked snapshot holds a block file open");
        let held = Snapshot::copy_trees(&db)
            .unwrap()
            .holding(&files, Hold::OpenFiles)
            .unwrap();
        assert!(
            fds_under(&data) >= before + BLOCKS,
            "the count sees open block files: {} then {}",
            before,
            fds_under(&data)
        );
        drop(held);
        assert_eq!(fds_under(&data), before);

        // Sizes count the block files once, and the store lists the same
        // blocks, while the links exist.
        assert_eq!(link_dirs(&data).len(), 1);
        let block_bytes: u64 = records.iter().map(|(_, v)| v.len() as u64).sum();
        assert_eq!(files.bytes(), block_bytes);
        let keys: Vec<Vec<u8>> = records.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(files.keys().unwrap(), keys);

        let out = tmp.path().join("snap.hpb");
        let written = linked.write_file(&out).unwrap();
        assert_eq!(written.records, 1 + BLOCKS as u64);
        assert_eq!(link_dirs(&data), Vec::<String>::new());
        let copy = tmp.path().join("copy");
        restore_from(&out, &copy).unwrap();
        let restored = Files::open(&copy).unwrap();
        assert_eq!(restored.keys().unwrap(), keys);
        for (k, v) in &records {
            assert_eq!(restored.get(k).unwrap().as_ref(), Some(v));
        }
    }

    /// The links' directory exists while a snapshot is held and is gone
    /// once it is written, and once it is dropped unwritten; a store with no
    /// block files makes none.
    #[test]
    fn the_links_directory_lives_exactly_as_long_as_the_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let empty = tmp.path().join("empty");
        let store = Store::open(&empty, StoreOptions::default()).unwrap();
        let snapshot = store.snapshot().unwrap();
        assert_eq!(link_dirs(&empty), Vec::<String>::new());
        snapshot.write_to(std::io::sink()).unwrap();
        drop(store);

        let live = tmp.path().join("live");
        let store = sealed_store(&rt, &live);
        let blocks = store.shared.files.keys().unwrap();
        let bytes = store.shared.files.bytes();
        let snapshot = store.snapshot().unwrap();
        let dirs = link_dirs(&live);
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        assert_eq!(
            std::fs::read_dir(live.join(&dirs[0])).unwrap().count(),
            blocks.len(),
            "one link per block file"
        );
        assert_eq!(store.shared.files.bytes(), bytes, "the links are not counted");
        assert_eq!(store.shared.files.keys().unwrap(), blocks, "nor listed");
        snapshot.write_to(std::io::sink()).unwrap();
        assert_eq!(link_dirs(&live), Vec::<String>::new(), "gone after writing");

        let snapshot = store.snapshot().unwrap();
        assert_eq!(link_dirs(&live).len(), 1);
        drop(snapshot);
        assert_eq!(link_dirs(&live), Vec::<String>::new(), "gone after dropping unwritten");
    }

    /// A links directory a crash left behind is removed by the next open
    /// and never taken for a block; one of a snapshot still held in this
    /// process survives a reopen of its store, and that snapshot still
    /// writes.
    #[test]
    fn an_open_removes_leftover_links_but_not_live_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime();
        let live = tmp.path().join("live");
        let store = sealed_store(&rt, &live);
        let blocks = store.shared.files.keys().unwrap();
        let crashed = live.join(format!("{LINKS_PREFIX}4194305-0"));
        std::fs::create_dir(&crashed).unwrap();
        for key in &blocks {
            std::fs::hard_link(store.shared.files.record_path(key), crashed.join(hex(key))).unwrap();
        }
        let held = store.snapshot().unwrap();
        let held_dir = link_dirs(&live).into_iter().find(|n| live.join(n) != crashed).unwrap();
        drop(store);

        let store = Store::open(&live, StoreOptions::default()).unwrap();
        assert!(!crashed.exists(), "the leftover links were removed at open");
        assert_eq!(link_dirs(&live), vec![held_dir]);
        assert_eq!(store.shared.files.keys().unwrap(), blocks);
        assert_eq!(probes(&store), expected(1..=6));
        let out = tmp.path().join("snap.hpb");
        held.write_file(&out).unwrap();
        assert_eq!(link_dirs(&live), Vec::<String>::new());
        let copy_dir = tmp.path().join("copy");
        restore_from(&out, &copy_dir).unwrap();
        assert_eq!(
            probes(&Store::open(&copy_dir, StoreOptions::default()).unwrap()),
            expected(1..=6)
        );
    }
}
