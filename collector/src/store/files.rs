//! Sealed blocks and their rollups as plain files in `DIR/blocks/`, one
//! file per record, named by the hex of the sled key the record would have
//! (`keys::block_key` / `keys::rollup_key`).
//!
//! Why not sled values: sled keeps up to 16 values in a leaf node and
//! rewrites the whole node on every change, so large values cost 2–2.5×
//! their size on disk even in a freshly written database (measured: 120
//! values of 87 KB took 21–25 MB for 10.8 MB of data, whatever the value
//! chunking or segment size), on top of the space freed WAL records leave.
//! A sealed block is written once and never changed, which a file does at
//! exactly its size.
//!
//! Atomicity with sled (which holds the catalog that says which files are
//! live): new files are written and fsynced *before* the sled batch that
//! lists them, and old files are removed only *after* the flush of the batch
//! that unlisted them. A crash in between leaves files no catalog entry
//! lists; `Store::open` removes them ([`Files::keys`] plus the catalog). So
//! the catalog never names a file that was not complete on disk.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use super::StoreError;
use super::keys::{self, BlockId, CatalogEntry};

/// Name of the subdirectory of the data directory.
pub(crate) const DIR: &str = "blocks";
const TMP: &str = ".tmp";

/// The block files of one store.
#[derive(Debug)]
pub(crate) struct Files {
    dir: PathBuf,
    /// The data directory `dir` is in, where a backup puts its directory of
    /// hard links (`backup.rs`), outside `dir` so nothing here lists it.
    data_dir: PathBuf,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Sled(sled::Error::Io(std::io::Error::new(
        e.kind(),
        format!("{what} {}: {e}", path.display()),
    )))
}

fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Inverse of [`hex`]; `None` for names we did not write.
fn unhex(name: &str) -> Option<Vec<u8>> {
    if !name.len().is_multiple_of(2) {
        return None;
    }
    (0..name.len())
        .step_by(2)
        .map(|i| name.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok()))
        .collect()
}

impl Files {
    /// The files under `data_dir`, creating the subdirectory if needed.
    pub(crate) fn open(data_dir: &Path) -> Result<Files, StoreError> {
        let dir = data_dir.join(DIR);
        std::fs::create_dir_all(&dir).map_err(|e| io_error("creating", &dir, e))?;
        Ok(Files {
            dir,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// The data directory the block files are in.
    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn path(&self, key: &[u8]) -> PathBuf {
        self.dir.join(hex(key))
    }

    /// Where the record under `key` lives, for a backup that hard-links (or
    /// opens) every file while seals are held off and reads them after (a
    /// link or a handle outlives a later removal).
    pub(crate) fn record_path(&self, key: &[u8]) -> PathBuf {
        self.path(key)
    }

    /// The record stored under `key`, if its file exists.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(key);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("reading", &path, e)),
        }
    }

    /// Writes every record durably: each to a temporary name, fsynced,
    /// renamed into place, then the directory fsynced once.
    pub(crate) fn put_all(&self, records: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        for (key, value) in records {
            let path = self.path(key);
            let mut tmp = path.clone().into_os_string();
            tmp.push(TMP);
            let tmp = PathBuf::from(tmp);
            let mut f = File::create(&tmp).map_err(|e| io_error("creating", &tmp, e))?;
            f.write_all(value).map_err(|e| io_error("writing", &tmp, e))?;
            f.sync_all().map_err(|e| io_error("syncing", &tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| io_error("renaming", &tmp, e))?;
        }
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("syncing", &self.dir, e))
    }

    /// Removes the records' files (missing ones are fine).
    pub(crate) fn remove_all(&self, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        for key in keys {
            let path = self.path(key);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("removing", &path, e)),
            }
        }
        Ok(())
    }

    /// Bytes of every file (0 for any that cannot be read).
    pub(crate) fn bytes(&self) -> u64 {
        super::compact::dir_bytes(&self.dir)
    }

    /// Keys of every complete file; leftovers of interrupted writes
    /// (temporary names) and names we did not write are removed or skipped.
    pub(crate) fn keys(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io_error("listing", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error("listing", &self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(TMP) {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(|e| io_error("removing", &path, e))?;
            } else if let Some(key) = unhex(name) {
                out.push(key);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Brings files and sled into agreement at open: block and rollup records
/// still in sled (a store written before blocks moved to files, or a
/// restored backup) become files, and files no catalog entry lists
/// (written by a seal or compaction that crashed before its sled batch, or
/// left by one that crashed before removing them) are removed.
pub(crate) fn reconcile(
    tree: &sled::Tree,
    files: &Files,
    catalog: &BTreeMap<BlockId, CatalogEntry>,
) -> Result<(), StoreError> {
    for prefix in [keys::BLOCK, keys::ROLLUP] {
        let mut chunk: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut size = 0usize;
        let flush = |chunk: &mut Vec<(Vec<u8>, Vec<u8>)>| -> Result<(), StoreError> {
            files.put_all(chunk)?;
            let mut batch = sled::Batch::default();
            for (k, _) in chunk.drain(..) {
                batch.remove(k);
            }
            tree.apply_batch(batch)?;
            Ok(())
        };
        for item in tree.scan_prefix([prefix]) {
            let (k, v) = item?;
            size += v.len();
            chunk.push((k.to_vec(), v.to_vec()));
            if size >= 16 << 20 {
                flush(&mut chunk)?;
                size = 0;
            }
        }
        flush(&mut chunk)?;
    }
    let mut orphans = Vec::new();
    for key in files.keys()? {
        let live = match key.split_first() {
            Some((&keys::BLOCK, _)) => keys::parse_block_key(&key)
                .ok()
                .and_then(|id| catalog.get(&id))
                .is_some_and(|e| e.raw),
            Some((&keys::ROLLUP, [res, rest @ ..])) => {
                let mut block = vec![keys::BLOCK];
                block.extend_from_slice(rest);
                keys::parse_block_key(&block)
                    .ok()
                    .and_then(|id| catalog.get(&id))
                    .is_some_and(|e| e.rollups.get(usize::from(*res)).copied().unwrap_or(false))
            }
            _ => true,
        };
        if !live {
            orphans.push(key);
        }
    }
    if !orphans.is_empty() {
        tracing::warn!(
            files = orphans.len(),
            "removing block files no catalog entry lists (an interrupted seal)"
        );
        files.remove_all(&orphans)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_leftovers_are_cleared() {
        let tmp = tempfile::tempdir().unwrap();
        let files = Files::open(tmp.path()).unwrap();
        let a = (vec![b'b', 0, 255, 7], b"block".to_vec());
        let r = (vec![b'r', 1, 2], b"rollup".to_vec());
        files.put_all(&[a.clone(), r.clone()]).unwrap();
        assert_eq!(files.get(&a.0).unwrap(), Some(a.1.clone()));
        assert_eq!(files.get(b"missing").unwrap(), None);
        std::fs::write(tmp.path().join(DIR).join("6200.tmp"), b"torn").unwrap();
        std::fs::write(tmp.path().join(DIR).join("not-ours"), b"x").unwrap();
        assert_eq!(files.keys().unwrap(), vec![a.0.clone(), r.0.clone()]);
        assert!(!tmp.path().join(DIR).join("6200.tmp").exists());
        files.remove_all(&[a.0.clone(), b"missing".to_vec()]).unwrap();
        assert_eq!(files.keys().unwrap(), vec![r.0]);
    }
}
