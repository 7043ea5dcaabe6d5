//! Offline compaction of a whole data directory: every record of every sled
//! tree is copied, in key order, into a fresh database beside it (block
//! files are hard-linked, not copied), which then replaces the old one.
//!
//! Why: sled reuses the space of deleted values but does not give it back
//! to the file system, so after a bulk load (every sample passes through a
//! write-ahead record before its block is sealed) the directory stays at
//! its high-water mark — three or more times what the live records take. A
//! fresh copy holds only the live records.
//!
//! It runs with the store closed (no `Store` open on `dir`), because sled
//! offers no way to rewrite its file under an open handle. The switch is
//! two directory renames, and every state a crash can leave is repaired by
//! [`recover`], which `Store::open` calls before it opens sled:
//!
//! 1. the copy is built in `DIR.compact-new`, flushed and closed;
//! 2. `DIR` is renamed to `DIR.compact-old`;
//! 3. `DIR.compact-new` is renamed to `DIR`;
//! 4. `DIR.compact-old` is removed.
//!
//! A crash in 1 leaves `DIR` whole and a partial copy (removed); in 2–3
//! `DIR` is missing while the finished copy exists (step 2 happens only
//! after the copy was flushed), so the copy is moved into place; in 4 only
//! the old directory is left to remove. Nothing acknowledged is lost at any
//! point: `DIR` or a complete copy of it always exists.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::StoreError;

/// Sizes before and after a compaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactReport {
    /// Bytes of every file in the directory before.
    pub bytes_before: u64,
    /// Bytes of every file in the directory after.
    pub bytes_after: u64,
    /// Records copied.
    pub records: u64,
}

/// Records per sled batch while copying, so the copy's memory stays bounded
/// however large the store.
const COPY_BATCH_BYTES: usize = 8 << 20;

/// How long [`compact_dir`] waits for sled's background threads of a store
/// closed just before to release the directory lock.
const LOCK_WAIT: Duration = Duration::from_secs(10);

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    dir.with_file_name(name)
}

fn io(detail: String, e: std::io::Error) -> StoreError {
    StoreError::Sled(sled::Error::Io(std::io::Error::new(e.kind(), format!("{detail}: {e}"))))
}

/// Sum of the sizes of every file under `dir` (0 if it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Repairs what an interrupted [`compact_dir`] left behind (see the module
/// comment); a no-op when there is nothing to repair.
pub(crate) fn recover(dir: &Path) -> Result<(), StoreError> {
    let new = sibling(dir, ".compact-new");
    let old = sibling(dir, ".compact-old");
    if !dir.exists() && old.exists() && new.exists() {
        // Crashed between the two renames: the copy is complete.
        std::fs::rename(&new, dir).map_err(|e| io(format!("moving {} into place", new.display()), e))?;
        tracing::warn!(dir = %dir.display(), "finished an interrupted compaction of the data directory");
    }
    if dir.exists() {
        for leftover in [&new, &old] {
            if leftover.exists() {
                std::fs::remove_dir_all(leftover).map_err(|e| io(format!("removing {}", leftover.display()), e))?;
            }
        }
    }
    Ok(())
}

/// Opens sled at `dir`, waiting a bounded time for a lock still held by the
/// background threads of a database closed just before in this process.
pub(super) fn open_waiting(config: sled::Config) -> Result<sled::Db, sled::Error> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e)) if Instant::now() < deadline && e.to_string().contains("acquire lock") => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Rewrites the store in `dir` into a fresh database holding only its live
/// records, then puts the copy in its place. The store must not be open.
pub fn compact_dir(dir: &Path) -> Result<CompactReport, StoreError> {
    recover(dir)?;
    let bytes_before = dir_bytes(dir);
    let new = sibling(dir, ".compact-new");
    let old = sibling(dir, ".compact-old");
    let records = {
        let src = open_waiting(sled::Config::new().path(dir))?;
        let dst = sled::Config::new().path(&new).open()?;
        let mut records = 0u64;
        for name in src.tree_names() {
            let from = src.open_tree(&name)?;
            let to = dst.open_tree(&name)?;
            let mut batch = sled::Batch::default();
            let mut size = 0usize;
            for item in from.iter() {
                let (k, v) = item?;
                size += k.len() + v.len();
                batch.insert(k, v);
                records += 1;
                if size >= COPY_BATCH_BYTES {
                    to.apply_batch(std::mem::take(&mut batch))?;
                    size = 0;
                }
            }
            to.apply_batch(batch)?;
        }
        dst.flush()?;
        // Block files never change, so the copy shares them (hard links):
        // both directories stay complete until the switch.
        let (from, to) = (dir.join(super::files::DIR), new.join(super::files::DIR));
        std::fs::create_dir_all(&to).map_err(|e| io(format!("creating {}", to.display()), e))?;
        if from.exists() {
            let entries = std::fs::read_dir(&from).map_err(|e| io(format!("listing {}", from.display()), e))?;
            for entry in entries {
                let entry = entry.map_err(|e| io(format!("listing {}", from.display()), e))?;
                let target = to.join(entry.file_name());
                std::fs::hard_link(entry.path(), &target)
                    .map_err(|e| io(format!("linking {}", target.display()), e))?;
            }
        }
        records
    };
    // Both databases are closed here; sled's threads may hold the lock of
    // the copy a moment longer, which renames do not mind.
    std::fs::rename(dir, &old).map_err(|e| io(format!("renaming {}", dir.display()), e))?;
    std::fs::rename(&new, dir).map_err(|e| io(format!("renaming {}", new.display()), e))?;
    std::fs::remove_dir_all(&old).map_err(|e| io(format!("removing {}", old.display()), e))?;
    Ok(CompactReport {
        bytes_before,
        bytes_after: dir_bytes(dir),
        records,
    })
}
