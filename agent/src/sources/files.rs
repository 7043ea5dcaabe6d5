//! Cheap repeated reads of sysfs and procfs for sources that run every cycle.
//!
//! Opening, reading and closing one sysfs file costs ~5 µs; a node with a few
//! hundred sensor, link and RAID attributes pays milliseconds per cycle for
//! names and limits that never change. [`Files`] splits the work:
//!
//! - **changing values** ([`Files::read_bytes`], [`Files::read_attr`]) keep
//!   their descriptor open across cycles and are re-read from offset 0 with
//!   `pread` into a reused buffer; sysfs attributes and seq_file procfs files
//!   regenerate their content on a read at offset 0, so this sees fresh
//!   values at a fifth of the cost;
//! - **static facts** ([`Files::read_static`], [`Files::list`],
//!   [`Files::canonicalize`], [`Files::is_dir`]: labels, limits, chip and
//!   device names, directory listings, device links) are cached and thrown
//!   away every [`REFRESH_CYCLES`] cycles, so a hot-plugged device or a new
//!   hwmon chip appears within one refresh period.
//!
//! A descriptor whose read fails is closed and the file opened afresh once
//! in the same call (a device that went away and came back has a new
//! inode); a descriptor not used during a whole refresh period is closed, so
//! a vanished device neither errors forever nor leaks descriptors. All
//! caches of the process together keep at most [`MAX_KEPT`] descriptors.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Cycles between refreshes of the static caches (listings, names, limits):
/// 10 minutes at the default 10 s interval.
pub const REFRESH_CYCLES: u64 = 60;

/// Largest file read through a kept descriptor; procfs tables past this are
/// cut (none of the files the sources read comes near it).
const MAX_LEN: usize = 16 << 20;

/// A fast non-cryptographic hasher for the caches, which are keyed by paths
/// the agent builds itself (no untrusted keys): hashing long sysfs paths
/// with SipHash for every attribute of every cycle showed up in profiles,
/// and so did FNV-1a's byte loop after it. Bytes are mixed eight at a time
/// (FNV's multiply with a rotation, so high bytes reach the low bits too),
/// and `finish` avalanches the state (MurmurHash3's finalizer), because the
/// table picks buckets by the low bits.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn step(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(23) ^ word).wrapping_mul(0x0100_0000_01b3);
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.step(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        // The length keeps "a" and "a\0" apart.
        self.step(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
    }

    fn write_usize(&mut self, n: usize) {
        self.step(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.step(n);
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// A path-keyed map with the [`Fnv`] hasher. Keys are the paths' raw
/// bytes: `Path`'s own `Hash` walks the path component by component, which
/// cost more than the FNV pass itself on every lookup.
type PathMap<V> = HashMap<OsString, V, BuildHasherDefault<Fnv>>;

/// One kept descriptor and the cycle it was last used in.
#[derive(Debug)]
struct Kept {
    file: File,
    used: u64,
    /// A read that returns less than asked for has the whole file (see
    /// [`whole_in_one_read`]), so no second `pread` looks for the end.
    one_read: bool,
}

/// Whether one `pread` from offset 0 that comes back short has read the
/// whole file: true on sysfs, whose attribute files are produced by one
/// `show()` into a single page and handed out whole, and on the ordinary
/// disk and memory filesystems fixtures live on, where a short read of a
/// regular file means end of file. Not on procfs (a seq_file table stops a
/// read where its next record does not fit its buffer, well before the end)
/// nor anything unknown (cgroupfs, debugfs): those are read until `pread`
/// returns 0. Half of a cycle's reads were that final empty `pread`.
#[cfg(target_os = "linux")]
// `f_type`'s integer type differs between architectures.
#[allow(clippy::unnecessary_cast)]
fn whole_in_one_read(file: &File) -> bool {
    /// `f_type` of filesystems with the property, from `statfs(2)`.
    const SINGLE_READ_FILESYSTEMS: [i64; 7] = [
        0x6265_6572, // sysfs
        0xef53,      // ext2, ext3, ext4
        0x0102_1994, // tmpfs
        0x5846_5342, // xfs
        0x9123_683e, // btrfs
        0x794c_7630, // overlayfs
        0x2fc1_2fc1, // zfs
    ];
    rustix::fs::fstatfs(file).is_ok_and(|s| SINGLE_READ_FILESYSTEMS.contains(&(s.f_type as i64)))
}

#[cfg(not(target_os = "linux"))]
fn whole_in_one_read(_file: &File) -> bool {
    false
}

/// Per-source cache of descriptors and static file contents; see the
/// module documentation.
#[derive(Debug, Default)]
pub struct Files {
    cycle: u64,
    kept: PathMap<Kept>,
    statics: PathMap<Option<Arc<str>>>,
    listings: PathMap<Result<Arc<[String]>, io::ErrorKind>>,
    links: PathMap<Option<PathBuf>>,
    dirs: PathMap<bool>,
    buf: Vec<u8>,
}

impl Drop for Files {
    fn drop(&mut self) {
        release_slots(self.kept.len());
    }
}

/// Descriptors all [`Files`] of the process keep open together. A host with
/// thousands of interfaces or sensors would otherwise hold more descriptors
/// than a service's usual 1024 soft limit and starve the agent's sockets;
/// past the budget, files are opened per read as before.
pub const MAX_KEPT: usize = 512;

static KEPT: AtomicUsize = AtomicUsize::new(0);

/// Takes one slot of the [`MAX_KEPT`] budget, if one is free.
fn reserve_slot() -> bool {
    KEPT.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_KEPT).then_some(n + 1))
        .is_ok()
}

/// Returns `n` slots to the budget.
fn release_slots(n: usize) {
    if n > 0 {
        KEPT.fetch_sub(n, Ordering::AcqRel);
    }
}

impl Files {
    /// Starts a cycle: every [`REFRESH_CYCLES`] cycles the static caches are
    /// dropped and descriptors unused since the last refresh are closed.
    pub fn begin_cycle(&mut self) {
        self.cycle += 1;
        if self.cycle.is_multiple_of(REFRESH_CYCLES) {
            self.refresh();
        }
    }

    /// Drops every static cache now (a source that notices a change, such
    /// as a new entry in a directory it lists every cycle, calls this).
    pub fn refresh(&mut self) {
        self.statics.clear();
        self.listings.clear();
        self.links.clear();
        self.dirs.clear();
        let horizon = self.cycle.saturating_sub(REFRESH_CYCLES);
        let before = self.kept.len();
        self.kept.retain(|_, k| k.used > horizon);
        release_slots(before - self.kept.len());
    }

    /// Reads a changing file's content from offset 0 through a kept
    /// descriptor, as raw bytes. Past the process-wide [`MAX_KEPT`] budget
    /// the file is opened, read and closed as usual.
    pub fn read_bytes(&mut self, path: &Path) -> io::Result<&[u8]> {
        let cycle = self.cycle;
        if let Some(kept) = self.kept.get_mut(path.as_os_str()) {
            kept.used = cycle;
            if read_at_zero(&kept.file, &mut self.buf, kept.one_read).is_ok() {
                return Ok(&self.buf);
            }
            // The file may have been replaced (device re-added): forget the
            // descriptor and open afresh once before giving up.
            self.kept.remove(path.as_os_str());
            release_slots(1);
        }
        let file = File::open(path)?;
        read_at_zero(&file, &mut self.buf, false)?;
        if reserve_slot() {
            let one_read = whole_in_one_read(&file);
            self.kept.insert(
                path.as_os_str().to_os_string(),
                Kept {
                    file,
                    used: cycle,
                    one_read,
                },
            );
        }
        Ok(&self.buf)
    }

    /// A changing text file (a procfs table) through a kept descriptor, as
    /// [`Files::read_bytes`]; invalid UTF-8 is an `InvalidData` error, as
    /// with `std::fs::read_to_string`.
    pub fn read_text(&mut self, path: &Path) -> io::Result<&str> {
        let bytes = self.read_bytes(path)?;
        std::str::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// A changing sysfs attribute with trailing whitespace removed; `None`
    /// when it cannot be read or is not UTF-8 (as [`crate::source::read_attr`]).
    pub fn read_attr(&mut self, path: &Path) -> Option<String> {
        let bytes = self.read_bytes(path).ok()?;
        std::str::from_utf8(bytes).ok().map(|s| s.trim_end().to_string())
    }

    /// The raw content of a file that does not change between refreshes
    /// (label, limit, name), invalid UTF-8 replaced; `None` when unreadable.
    pub fn read_static(&mut self, path: &Path) -> Option<Arc<str>> {
        if let Some(cached) = self.statics.get(path.as_os_str()) {
            return cached.clone();
        }
        let value = std::fs::read(path)
            .ok()
            .map(|bytes| Arc::from(String::from_utf8_lossy(&bytes).as_ref()));
        self.statics.insert(path.as_os_str().to_os_string(), value.clone());
        value
    }

    /// A static attribute with trailing whitespace removed.
    pub fn static_attr(&mut self, path: &Path) -> Option<String> {
        self.read_static(path).map(|s| s.trim_end().to_string())
    }

    /// The sorted names in a directory, cached until the next refresh;
    /// `Err` when the directory cannot be listed.
    pub fn list(&mut self, dir: &Path) -> io::Result<Arc<[String]>> {
        if let Some(cached) = self.listings.get(dir.as_os_str()) {
            return cached.clone().map_err(io::Error::from);
        }
        // Failures are cached too: absent hardware costs nothing until the
        // next refresh.
        let names = std::fs::read_dir(dir).map_err(|e| e.kind()).map(|entries| {
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            names.sort();
            Arc::<[String]>::from(names)
        });
        self.listings.insert(dir.as_os_str().to_os_string(), names.clone());
        names.map_err(io::Error::from)
    }

    /// Whether the cached listing of `dir` has `name`.
    pub fn has(&mut self, dir: &Path, name: &str) -> bool {
        let found = |names: &[String]| names.binary_search_by(|n| n.as_str().cmp(name)).is_ok();
        // The cached listing is searched in place (no `Arc` clone and drop
        // per optional attribute).
        if let Some(cached) = self.listings.get(dir.as_os_str()) {
            return cached.as_ref().is_ok_and(|names| found(names));
        }
        self.list(dir).is_ok_and(|names| found(&names))
    }

    /// The changing attribute `dir/name` (trailing whitespace removed), read
    /// only when the cached listing of `dir` has it: optional attributes
    /// that a device lacks cost no failed open every cycle.
    pub fn attr_in(&mut self, dir: &Path, name: &str) -> Option<String> {
        if !self.has(dir, name) {
            return None;
        }
        self.read_attr(&dir.join(name))
    }

    /// The static attribute `dir/name` (trailing whitespace removed), when
    /// the cached listing of `dir` has it.
    pub fn static_in(&mut self, dir: &Path, name: &str) -> Option<String> {
        if !self.has(dir, name) {
            return None;
        }
        self.static_attr(&dir.join(name))
    }

    /// `std::fs::canonicalize`, cached until the next refresh.
    pub fn canonicalize(&mut self, path: &Path) -> Option<PathBuf> {
        if let Some(cached) = self.links.get(path.as_os_str()) {
            return cached.clone();
        }
        let value = std::fs::canonicalize(path).ok();
        self.links.insert(path.as_os_str().to_os_string(), value.clone());
        value
    }

    /// Whether `path` is (or links to) a directory, cached until the next
    /// refresh.
    pub fn is_dir(&mut self, path: &Path) -> bool {
        if let Some(&cached) = self.dirs.get(path.as_os_str()) {
            return cached;
        }
        let value = std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false);
        self.dirs.insert(path.as_os_str().to_os_string(), value);
        value
    }
}

/// Reads a whole file from offset 0 into `buf` (cleared first), with as few
/// `pread` calls as its size allows: until one returns 0, or, when
/// `one_read` (see [`whole_in_one_read`]), until one returns less than asked.
fn read_at_zero(file: &File, buf: &mut Vec<u8>, one_read: bool) -> io::Result<()> {
    buf.clear();
    if buf.capacity() < 4096 {
        buf.reserve(4096);
    }
    loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= MAX_LEN {
                return Ok(());
            }
            buf.reserve(buf.len());
        }
        let start = buf.len();
        let spare = buf.capacity() - start;
        buf.resize(start + spare, 0);
        let n = match file.read_at(&mut buf[start..], start as u64) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                buf.truncate(start);
                continue;
            }
            Err(e) => {
                buf.truncate(start);
                return Err(e);
            }
        };
        buf.truncate(start + n);
        if n == 0 || (one_read && n < spare) {
            return Ok(());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Paths that differ in one byte anywhere (high bytes of a word
    /// included) land in different buckets of a small table.
    #[test]
    fn hash_spreads_single_byte_differences_over_the_low_bits() {
        let hash = |bytes: &[u8]| {
            let mut h = Fnv::default();
            h.write(bytes);
            h.finish()
        };
        let base = b"/sys/class/hwmon/hwmon1/temp1_input".to_vec();
        let mut buckets = std::collections::HashSet::new();
        for at in 0..base.len() {
            let mut changed = base.clone();
            changed[at] ^= 0x04;
            buckets.insert(hash(&changed) & 0xff);
        }
        // 35 variants over 256 buckets: nearly all distinct if the low
        // bits depend on every byte.
        assert!(buckets.len() >= 30, "{}", buckets.len());
        assert_ne!(hash(b"a"), hash(b"a\0"));
        assert_ne!(hash(b""), hash(b"\0"));
    }

    #[test]
    fn changing_file_is_reread_through_the_kept_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("temp1_input");
        std::fs::write(&path, "42000\n").unwrap();
        let mut files = Files::default();
        files.begin_cycle();
        assert_eq!(files.read_attr(&path).as_deref(), Some("42000"));
        // Same inode, new (shorter) content: pread from 0 sees it whole.
        std::fs::write(&path, "7\n").unwrap();
        files.begin_cycle();
        assert_eq!(files.read_attr(&path).as_deref(), Some("7"));
        // One descriptor at most (none if a parallel test holds the whole
        // budget): the path was not opened twice.
        assert!(files.kept.len() <= 1);
    }

    #[test]
    fn large_file_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let text: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let mut files = Files::default();
        assert_eq!(files.read_bytes(&path).unwrap(), text.as_bytes());
        assert_eq!(files.read_bytes(&path).unwrap(), text.as_bytes());
    }

    #[test]
    fn one_read_files_are_read_whole_at_every_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table");
        let mut files = Files::default();
        // Sizes around the buffer's first and later capacities.
        for len in [0, 1, 4095, 4096, 4097, 8191, 8192, 8193, 70_000, 5] {
            let text: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            std::fs::write(&path, &text).unwrap();
            assert_eq!(files.read_bytes(&path).unwrap(), &text[..], "{len}");
        }
        if let Some(kept) = files.kept.get(path.as_os_str()) {
            // The temp dir is on one of the listed filesystems on Linux CI.
            assert_eq!(kept.one_read, whole_in_one_read(&kept.file));
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn procfs_is_read_to_the_end_and_sysfs_in_one_read() {
        // A seq_file table may stop a read short of its end.
        assert!(!whole_in_one_read(&File::open("/proc/self/mountinfo").unwrap()));
        if let Ok(file) = File::open("/sys/kernel/mm/transparent_hugepage/enabled") {
            assert!(whole_in_one_read(&file));
        }
    }

    #[test]
    fn missing_file_is_an_error_and_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Files::default();
        assert!(files.read_attr(&dir.path().join("nope")).is_none());
        assert!(files.read_bytes(&dir.path().join("nope")).is_err());
        assert!(files.kept.is_empty());
        // A directory opens but does not read: not kept either.
        assert!(files.read_attr(dir.path()).is_none());
        assert!(files.kept.is_empty());
    }

    #[test]
    fn static_caches_refresh_after_the_refresh_period() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("label"), "Core 0\n").unwrap();
        let mut files = Files::default();
        files.begin_cycle();
        assert_eq!(files.list(dir.path()).unwrap().len(), 1);
        assert_eq!(files.static_attr(&dir.path().join("label")).as_deref(), Some("Core 0"));
        std::fs::write(dir.path().join("label"), "Core 1\n").unwrap();
        std::fs::write(dir.path().join("new"), "1\n").unwrap();
        files.begin_cycle();
        // Cached until the refresh ...
        assert_eq!(files.list(dir.path()).unwrap().len(), 1);
        assert_eq!(files.static_attr(&dir.path().join("label")).as_deref(), Some("Core 0"));
        while !files.cycle.is_multiple_of(REFRESH_CYCLES) {
            files.begin_cycle();
        }
        // ... and seen after it.
        assert_eq!(files.list(dir.path()).unwrap().len(), 2);
        assert_eq!(files.static_attr(&dir.path().join("label")).as_deref(), Some("Core 1"));
    }

    #[test]
    fn descriptors_beyond_the_budget_are_not_kept_but_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Files::default();
        files.begin_cycle();
        for i in 0..MAX_KEPT + 10 {
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, format!("{i}\n")).unwrap();
            assert_eq!(files.read_attr(&path), Some(i.to_string()));
        }
        assert!(files.kept.len() <= MAX_KEPT);
        // Reads past the budget still see new content.
        let last = dir.path().join(format!("f{}", MAX_KEPT + 9));
        std::fs::write(&last, "new\n").unwrap();
        assert_eq!(files.read_attr(&last).as_deref(), Some("new"));
    }

    #[test]
    fn unused_descriptors_are_closed_at_a_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("carrier");
        std::fs::write(&path, "1\n").unwrap();
        let mut files = Files::default();
        files.begin_cycle();
        assert!(files.read_attr(&path).is_some());
        for _ in 0..2 * REFRESH_CYCLES {
            files.begin_cycle();
        }
        assert!(files.kept.is_empty());
    }
}
