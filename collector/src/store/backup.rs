//! Backup and restore of a whole store as one snapshot file.
//!
//! The snapshot is every sled tree's key/value pairs, framed and closed by a
//! CRC-32 over everything before it, so a truncated or damaged file is
//! refused before anything is written. It is layout-agnostic: whatever trees
//! the engine keeps come back byte for byte. [`Store::backup_to`] holds the
//! store's commit lock while it reads, so no group commit or seal lands
//! half inside the snapshot; the file is written beside its final name and
//! renamed only once complete.
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
//! pairs of the engine tree under the keys they are named by; opening a
//! restored store moves them out to files again.
//!
//! [`Store::backup_to`]: super::Store::backup_to

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

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

/// Problems specific to snapshot files.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing the snapshot file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
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
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes every tree of `db` to `out`; returns the number of pairs. The
/// caller holds whatever lock keeps writers out.
pub(crate) fn write_snapshot(db: &sled::Db, files: &Files, out: &Path) -> Result<u64, BackupError> {
    if out.exists() {
        return Err(BackupError::Exists(out.display().to_string()));
    }
    let tmp = out.with_extension("partial");
    let io = |source| BackupError::Io {
        path: tmp.display().to_string(),
        source,
    };
    let file = File::create(&tmp).map_err(io)?;
    let mut w = CrcWriter {
        inner: BufWriter::new(file),
        crc: crc32fast::Hasher::new(),
    };
    w.write_all(MAGIC).map_err(io)?;
    let mut pairs = 0u64;
    for name in db.tree_names() {
        let tree = db.open_tree(&name).map_err(StoreError::from)?;
        w.write_all(&[TAG_TREE]).map_err(io)?;
        write_chunk(&mut w, &name).map_err(io)?;
        for item in tree.iter() {
            let (k, v) = item.map_err(StoreError::from)?;
            w.write_all(&[TAG_PAIR]).map_err(io)?;
            write_chunk(&mut w, &k).map_err(io)?;
            write_chunk(&mut w, &v).map_err(io)?;
            pairs += 1;
        }
        // Block files go in as the records they replace; opening the
        // restored store moves them back out to files.
        if name == keys::TREE.as_bytes() {
            for key in files.keys()? {
                let Some(v) = files.get(&key)? else { continue };
                w.write_all(&[TAG_PAIR]).map_err(io)?;
                write_chunk(&mut w, &key).map_err(io)?;
                write_chunk(&mut w, &v).map_err(io)?;
                pairs += 1;
            }
        }
    }
    w.write_all(&[TAG_END]).map_err(io)?;
    w.write_all(&pairs.to_le_bytes()).map_err(io)?;
    let crc = w.crc.clone().finalize();
    w.inner.write_all(&crc.to_le_bytes()).map_err(io)?;
    let file = w.inner.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, out).map_err(|source| BackupError::Io {
        path: out.display().to_string(),
        source,
    })?;
    Ok(pairs)
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
    let expected = read_snapshot(input, |_| Ok(()))?;
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
fn read_snapshot(
    input: &Path,
    mut each: impl FnMut(Record<'_>) -> Result<(), sled::Error>,
) -> Result<u64, BackupError> {
    let path = input.display().to_string();
    let invalid = |detail: &str| BackupError::Invalid {
        path: path.clone(),
        detail: detail.to_owned(),
    };
    let io = |source| BackupError::Io {
        path: path.clone(),
        source,
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
                each(Record::Tree(&key)).map_err(StoreError::from)?;
                have_tree = true;
            }
            TAG_PAIR if have_tree => {
                read_chunk(&mut r, &mut key).map_err(|_| invalid("truncated key"))?;
                read_chunk(&mut r, &mut value).map_err(|_| invalid("truncated value"))?;
                each(Record::Pair(&key, &value)).map_err(StoreError::from)?;
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

struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
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
        self.crc.update(&buf[..n]);
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
        let n = write_snapshot(&db, &no_files(tmp.path()), &out).unwrap();
        assert_eq!(n, 101);
        assert!(matches!(
            write_snapshot(&db, &no_files(tmp.path()), &out),
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

    #[test]
    fn damaged_snapshot_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let db = sample_db(&tmp.path().join("src"));
        let out = tmp.path().join("snap");
        write_snapshot(&db, &no_files(tmp.path()), &out).unwrap();
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
}
