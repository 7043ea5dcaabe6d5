//! The agent's spool: every batch is written here before it is sent and
//! leaves only when the collector acknowledges it (or when the spool is full
//! and it is the oldest data, which is then counted as dropped).
//!
//! # Layout
//!
//! The spool is a directory of segment files named by a growing 16-digit hex
//! id (`0000000000000003.seg`) plus `spool-floor`, a text file with the
//! highest sequence number known to be acknowledged or dropped. A segment
//! starts with the magic `HPSPOOL1` and holds records, each
//! `[payload length: u32 LE][CRC-32 (IEEE) of the payload: u32 LE][payload]`,
//! where the payload is a protobuf `hostpulse.v1.Batch`. Series identity in
//! the agent is process-local, so records are self-describing per segment:
//! the first record of a segment that uses a series carries its definition
//! (`new_series`) with a segment-local reference numbered 1, 2, 3, ... in
//! order of first use. Reading a segment from its start rebuilds the map, and
//! every segment can be read without the others.
//!
//! # Durability and fsync policy
//!
//! A record is written with one `write` and then `fdatasync`ed before the
//! batch counts as spooled, so a batch survives a crash or power loss as soon
//! as sampling has produced it. At the default 10 s interval that is one
//! small synchronous write every 10 s, which costs nothing measurable. A new
//! segment file is `fsync`ed together with its directory, so its name
//! survives a reboot too. Deleting segments and rewriting `spool-floor` are
//! not synced: losing either only makes the agent resend batches the
//! collector already stored, and the collector drops such replays.
//!
//! # Recovery
//!
//! On open every segment is scanned. A record that is cut short, fails its
//! checksum, does not decode, goes back in sequence or uses an undefined
//! reference ends the segment: the file is truncated to the last good
//! record, the cut bytes are added to [`SpoolStats::corrupt_bytes`] and a
//! warning names the file and offset. Records at or below the floor are
//! skipped; segments with nothing left to send are deleted.
//!
//! # Bounds
//!
//! The spool is bounded in bytes (whole segments, including acknowledged
//! records not yet deleted) and in unacknowledged batches. Making room
//! drops the oldest segment (or, for the batch bound, the oldest batch) and
//! adds its unacknowledged samples and batches to the drop counters, so the
//! count is exact. Memory stays small whatever the backlog: per unsent batch
//! the spool keeps 16 bytes of bookkeeping, and readers ([`Cursor`]) read one
//! record at a time from the file.
//!
//! When the directory cannot be used the client falls back to
//! [`Spool::in_memory`], the same structure with segments held in memory.
//!
//! # One agent per directory
//!
//! An open spool holds an exclusive `flock` on the file `lock` in its
//! directory for as long as it lives. Two agents sharing a directory would
//! delete each other's acknowledged segments and resend each other's
//! batches under one host's sequence numbers, which the collector would
//! then drop as replays; so a second open fails with [`SpoolError::Locked`]
//! and the agent refuses to start. The lock dies with the process, so a
//! crashed agent never leaves a stale one behind.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hostpulse_proto::{Batch, Label, SeriesDefinition};
use prost::Message;

use crate::emit::{KernelEvent, Sample};

/// First bytes of every segment file (format version 1).
const MAGIC: &[u8; 8] = b"HPSPOOL1";
/// Length and checksum in front of every payload.
const FRAME_HEADER: usize = 8;
/// Largest payload a record may claim; a longer length is corruption (and
/// must not make the reader allocate it).
pub const MAX_PAYLOAD: usize = 64 << 20;
/// Name of the file holding the acknowledged-or-dropped floor.
const FLOOR_FILE: &str = "spool-floor";
/// Extension of segment files.
const SEGMENT_EXT: &str = "seg";
/// Name of the file an open spool holds locked.
const LOCK_FILE: &str = "lock";

/// Bounds of one spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes the segments may take together.
    pub max_bytes: u64,
    /// Most unacknowledged batches kept.
    pub max_batches: usize,
    /// A segment is closed and a new one started beyond this size.
    pub segment_bytes: u64,
}

impl Limits {
    /// Limits with the segment size derived from the byte bound: an eighth
    /// of it (so a full spool frees at most 1/8 of its data at once),
    /// between 4 KiB and 8 MiB.
    pub fn new(max_bytes: u64, max_batches: usize) -> Limits {
        Limits {
            max_bytes,
            max_batches: max_batches.max(1),
            segment_bytes: (max_bytes / 8).clamp(4 << 10, 8 << 20),
        }
    }
}

/// Counters and levels of a spool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Unacknowledged samples dropped to respect the bounds (or because a
    /// batch could not be written).
    pub dropped_samples: u64,
    /// Unacknowledged batches dropped.
    pub dropped_batches: u64,
    /// Bytes cut from segments because they were torn or corrupt.
    pub corrupt_bytes: u64,
    /// Bytes the segments take now.
    pub bytes: u64,
    /// Batches waiting for acknowledgement now.
    pub batches: u64,
}

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file or directory operation failed.
    #[error("spool {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// One batch is larger than the whole spool; it was dropped and counted.
    #[error("a batch of {samples} samples needs {bytes} bytes, more than the whole spool ({max} bytes); dropped")]
    TooLarge {
        /// Samples in the batch.
        samples: u64,
        /// Bytes its record needs.
        bytes: u64,
        /// The spool's bound.
        max: u64,
    },
    /// Another process (or another spool in this one) has the directory.
    #[error(
        "spool directory {} is in use by another hostpulse-agent (it holds {}); give each agent its own --spool-dir",
        dir.display(),
        dir.join(LOCK_FILE).display()
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// A batch did not have a sequence number above every spooled one.
    #[error("sequence number {seq} is not above the last spooled {last}")]
    OutOfOrder {
        /// The batch's number.
        seq: u64,
        /// The highest spooled number.
        last: u64,
    },
}

/// Takes the exclusive lock of `dir` without waiting.
fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error(&path))?;
    #[cfg(unix)]
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => return Err(SpoolError::Locked { dir: dir.to_path_buf() }),
        Err(e) => return Err(io_error(&path)(e.into())),
    }
    Ok(file)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Why a record is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Fewer than 8 bytes left for the header.
    #[error("record header cut short")]
    ShortHeader,
    /// The length field is beyond [`MAX_PAYLOAD`].
    #[error("record claims {0} bytes, beyond the limit")]
    TooLong(usize),
    /// Fewer payload bytes than the header claims.
    #[error("record payload cut short")]
    ShortPayload,
    /// The payload does not match its checksum.
    #[error("record checksum mismatch")]
    Checksum,
    /// The payload is not a valid batch.
    #[error("record payload is not a batch: {0}")]
    Decode(String),
    /// The batch's columns differ in length.
    #[error("record columns differ in length")]
    Columns,
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) lookup table.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 as zlib, gzip and PNG compute it.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in bytes {
        c = CRC_TABLE[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Frames a batch as one record.
pub fn encode_record(batch: &Batch) -> Vec<u8> {
    let payload = batch.encode_to_vec();
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Payload length from a record header.
fn frame_len(header: &[u8]) -> Result<usize, RecordError> {
    let len_bytes: [u8; 4] = header
        .get(0..4)
        .and_then(|s| s.try_into().ok())
        .ok_or(RecordError::ShortHeader)?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > MAX_PAYLOAD {
        return Err(RecordError::TooLong(len));
    }
    Ok(len)
}

/// Parses the record at the start of `bytes`: the batch and the record's
/// whole length (header included).
pub fn parse_record(bytes: &[u8]) -> Result<(Batch, usize), RecordError> {
    if bytes.len() < FRAME_HEADER {
        return Err(RecordError::ShortHeader);
    }
    let len = frame_len(bytes)?;
    let crc_bytes: [u8; 4] = bytes[4..8].try_into().map_err(|_| RecordError::ShortHeader)?;
    let payload = bytes
        .get(FRAME_HEADER..FRAME_HEADER + len)
        .ok_or(RecordError::ShortPayload)?;
    if crc32(payload) != u32::from_le_bytes(crc_bytes) {
        return Err(RecordError::Checksum);
    }
    let batch = Batch::decode(payload).map_err(|e| RecordError::Decode(e.to_string()))?;
    if batch.values.len() != batch.refs.len()
        || !(batch.timestamp_deltas_ms.is_empty() || batch.timestamp_deltas_ms.len() == batch.refs.len())
    {
        return Err(RecordError::Columns);
    }
    Ok((batch, FRAME_HEADER + len))
}

/// Identity of one series within this agent process.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    /// Metric name.
    pub name: String,
    /// Labels, sorted by name.
    pub labels: Vec<(String, String)>,
}

/// Interned series: a dense id per distinct series, for the life of the
/// process (never written to disk as such).
#[derive(Default)]
pub struct SeriesTable {
    keys: Vec<Arc<SeriesKey>>,
    index: HashMap<Arc<SeriesKey>, u32>,
}

impl SeriesTable {
    /// The id of a series, assigning one the first time.
    pub fn intern<K: AsRef<str>, V: AsRef<str>>(&mut self, name: &str, labels: &[(K, V)]) -> u32 {
        self.intern_key(SeriesKey {
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
                .collect(),
        })
    }

    fn intern_key(&mut self, key: SeriesKey) -> u32 {
        if let Some(id) = self.index.get(&key) {
            return *id;
        }
        let id = self.keys.len() as u32;
        let key = Arc::new(key);
        self.keys.push(key.clone());
        self.index.insert(key, id);
        id
    }

    /// The series behind an id.
    pub fn get(&self, id: u32) -> Option<&Arc<SeriesKey>> {
        self.keys.get(id as usize)
    }
}

/// A batch as it leaves the spool: series as [`SeriesTable`] ids.
#[derive(Clone, Debug, PartialEq)]
pub struct SpooledBatch {
    /// Sequence number.
    pub seq: u64,
    /// The cycle's timestamp, ms since the epoch.
    pub timestamp_ms: i64,
    /// Series ids, parallel to `values`.
    pub series: Vec<u32>,
    /// Sample values.
    pub values: Vec<f64>,
    /// Kernel events of the cycle.
    pub events: Vec<KernelEvent>,
}

/// Bookkeeping for one unacknowledged record.
#[derive(Clone, Copy, Debug)]
struct RecordMeta {
    seq: u64,
    samples: u64,
}

enum SegmentData {
    File(PathBuf),
    Memory(Vec<u8>),
}

struct Segment {
    id: u64,
    data: SegmentData,
    /// Committed length (magic included); readers never go beyond it.
    bytes: u64,
    /// Highest sequence number written to it (acknowledged or not).
    last_seq: u64,
    /// Its unacknowledged records, oldest first.
    live: VecDeque<RecordMeta>,
}

/// The segment being appended to.
struct Writer {
    segment: u64,
    file: Option<File>,
    /// Series id → segment-local reference.
    refs: HashMap<u32, u32>,
}

/// A bounded queue of batches, on disk or in memory; see the module doc.
pub struct Spool {
    dir: Option<PathBuf>,
    limits: Limits,
    segments: VecDeque<Segment>,
    writer: Option<Writer>,
    next_segment: u64,
    /// Every sequence number at or below it is acknowledged or dropped.
    floor: u64,
    /// Highest sequence number ever spooled (or acknowledged).
    last_seq: u64,
    live: u64,
    total_bytes: u64,
    table: SeriesTable,
    stats: SpoolStats,
    /// The locked `lock` file of an on-disk spool; the lock lasts as long
    /// as this handle.
    _lock: Option<File>,
}

/// A reader's position: which segment, where in it, and that segment's
/// references. Each stream uses its own cursor, starting at the oldest
/// segment.
#[derive(Default)]
pub struct Cursor {
    segment: Option<u64>,
    offset: u64,
    file: Option<File>,
    /// Segment-local reference − 1 → series id.
    local: Vec<u32>,
}

impl Cursor {
    /// A cursor before the oldest spooled batch.
    pub fn new() -> Cursor {
        Cursor::default()
    }

    fn enter(&mut self, segment: u64) {
        self.segment = Some(segment);
        self.offset = MAGIC.len() as u64;
        self.file = None;
        self.local.clear();
    }
}

impl Spool {
    /// A spool that keeps its segments in memory (lost on restart).
    pub fn in_memory(limits: Limits) -> Spool {
        Spool {
            dir: None,
            limits,
            segments: VecDeque::new(),
            writer: None,
            next_segment: 0,
            floor: 0,
            last_seq: 0,
            live: 0,
            total_bytes: 0,
            table: SeriesTable::default(),
            stats: SpoolStats::default(),
            _lock: None,
        }
    }

    /// Opens (creating if needed) the spool in `dir`, cuts torn or corrupt
    /// tails, and starts a fresh segment, which also proves the directory
    /// writable.
    pub fn open(dir: &Path, limits: Limits) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let lock = lock_dir(dir)?;
        let mut spool = Spool::in_memory(limits);
        spool.dir = Some(dir.to_path_buf());
        spool._lock = Some(lock);
        spool.floor = std::fs::read_to_string(dir.join(FLOOR_FILE))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        spool.last_seq = spool.floor;
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
            let entry = entry.map_err(io_error(dir))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXT) {
                continue;
            }
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|s| s.len() == 16)
                .and_then(|s| u64::from_str_radix(s, 16).ok());
            match id {
                Some(id) => ids.push(id),
                None => {
                    tracing::warn!(file = %path.display(), "spool: ignoring a file with a segment extension but no segment name")
                }
            }
        }
        ids.sort_unstable();
        for id in ids {
            spool.next_segment = id + 1;
            let path = segment_path(dir, id);
            let segment = spool.scan_segment(id, &path)?;
            match segment {
                Some(s) if !s.live.is_empty() => {
                    spool.live += s.live.len() as u64;
                    spool.total_bytes += s.bytes;
                    spool.segments.push_back(s);
                }
                _ => remove_file(&path),
            }
        }
        spool.start_segment()?;
        Ok(spool)
    }

    /// Reads one segment file, truncating it after its last good record.
    /// `None` when the file is not a segment at all (it is then counted and
    /// removed by the caller).
    fn scan_segment(&mut self, id: u64, path: &Path) -> Result<Option<Segment>, SpoolError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error(path))?;
        let len = file.metadata().map_err(io_error(path))?.len();
        let mut reader = std::io::BufReader::new(&mut file);
        let mut magic = [0u8; 8];
        if reader.read_exact(&mut magic).is_err() || &magic != MAGIC {
            tracing::warn!(file = %path.display(), bytes = len, "spool: segment without a valid header removed");
            self.stats.corrupt_bytes += len;
            return Ok(None);
        }
        let mut segment = Segment {
            id,
            data: SegmentData::File(path.to_path_buf()),
            bytes: MAGIC.len() as u64,
            last_seq: 0,
            live: VecDeque::new(),
        };
        let mut defined = 0usize;
        let mut buf = Vec::new();
        let problem = loop {
            if segment.bytes == len {
                break None;
            }
            match read_frame(&mut reader, &mut buf) {
                Ok(()) => {}
                Err(e) => break Some(e),
            }
            let (batch, n) = match parse_record(&buf) {
                Ok(ok) => ok,
                Err(e) => break Some(e.to_string()),
            };
            if batch.seq <= self.last_seq && batch.seq > self.floor {
                break Some(format!("sequence {} does not follow {}", batch.seq, self.last_seq));
            }
            if let Err(e) = check_refs(&batch, &mut defined) {
                break Some(e);
            }
            segment.bytes += n as u64;
            segment.last_seq = batch.seq;
            self.last_seq = self.last_seq.max(batch.seq);
            if batch.seq > self.floor {
                segment.live.push_back(RecordMeta {
                    seq: batch.seq,
                    samples: batch.refs.len() as u64,
                });
            }
        };
        drop(reader);
        if let Some(why) = problem {
            let cut = len - segment.bytes;
            tracing::warn!(file = %path.display(), offset = segment.bytes, cut_bytes = cut, reason = %why, "spool: torn or corrupt tail cut");
            self.stats.corrupt_bytes += cut;
            file.set_len(segment.bytes)
                .and_then(|()| file.sync_all())
                .map_err(io_error(path))?;
        }
        Ok(Some(segment))
    }

    /// Closes the current segment (if any) and starts a new one.
    fn start_segment(&mut self) -> Result<(), SpoolError> {
        let id = self.next_segment;
        let (data, file) = match &self.dir {
            None => (SegmentData::Memory(MAGIC.to_vec()), None),
            Some(dir) => {
                let path = segment_path(dir, id);
                let mut file = OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(io_error(&path))?;
                file.write_all(MAGIC)
                    .and_then(|()| file.sync_all())
                    .map_err(io_error(&path))?;
                sync_dir(dir).map_err(io_error(dir))?;
                (SegmentData::File(path), Some(file))
            }
        };
        self.next_segment += 1;
        self.segments.push_back(Segment {
            id,
            data,
            bytes: MAGIC.len() as u64,
            last_seq: 0,
            live: VecDeque::new(),
        });
        self.total_bytes += MAGIC.len() as u64;
        self.writer = Some(Writer {
            segment: id,
            file,
            refs: HashMap::new(),
        });
        Ok(())
    }

    /// Whether the spool keeps its data on disk.
    pub fn is_on_disk(&self) -> bool {
        self.dir.is_some()
    }

    /// Counters and levels.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            bytes: self.total_bytes,
            batches: self.live,
            ..self.stats
        }
    }

    /// Every sequence number at or below this is acknowledged or dropped.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Highest sequence number spooled or acknowledged so far (including
    /// before a restart); new batches must be numbered above it.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.max(self.floor)
    }

    /// Sequence number of the oldest unacknowledged batch, 0 if none.
    pub fn first_live_seq(&self) -> u64 {
        self.segments.iter().find_map(|s| s.live.front()).map_or(0, |r| r.seq)
    }

    /// The series behind an id in this spool's table.
    pub fn series(&self, id: u32) -> Option<&Arc<SeriesKey>> {
        self.table.get(id)
    }

    fn active_id(&self) -> Option<u64> {
        self.writer.as_ref().map(|w| w.segment)
    }

    /// Writes one cycle as batch `seq` (which must be above
    /// [`Spool::last_seq`]), dropping the oldest data first if the bounds
    /// require it. On an error the batch is counted as dropped.
    pub fn append(
        &mut self,
        seq: u64,
        timestamp_ms: i64,
        samples: &[Sample],
        events: &[KernelEvent],
    ) -> Result<(), SpoolError> {
        let count = samples.len() as u64;
        if seq <= self.last_seq() {
            self.count_dropped(1, count);
            return Err(SpoolError::OutOfOrder {
                seq,
                last: self.last_seq(),
            });
        }
        let ids: Vec<u32> = samples.iter().map(|s| self.table.intern(&s.name, &s.labels)).collect();
        while self.live >= self.limits.max_batches as u64 && self.drop_oldest_batch() {}
        let (frame, assigned) = loop {
            if (self.writer.is_none() || self.active_is_full())
                && let Err(e) = self.start_segment()
            {
                self.count_dropped(1, count);
                return Err(e);
            }
            let (frame, assigned) = self.build_record(seq, timestamp_ms, &ids, samples, events);
            if self.total_bytes + frame.len() as u64 <= self.limits.max_bytes {
                break (frame, assigned);
            }
            let active = self.active_id();
            if self.segments.front().is_some_and(|s| Some(s.id) != active) {
                self.drop_oldest_segment();
            } else if self.segments.back().is_some_and(|s| s.bytes > MAGIC.len() as u64) {
                // Only the active segment is left and it holds data: close
                // it so that it can be dropped like any other.
                self.writer = None;
            } else {
                self.count_dropped(1, count);
                return Err(SpoolError::TooLarge {
                    samples: count,
                    bytes: frame.len() as u64,
                    max: self.limits.max_bytes,
                });
            }
        };
        if let Err(e) = self.write_frame(&frame) {
            self.count_dropped(1, count);
            return Err(e);
        }
        if let Some(w) = &mut self.writer {
            w.refs.extend(assigned);
        }
        if let Some(segment) = self.segments.back_mut() {
            segment.bytes += frame.len() as u64;
            segment.last_seq = seq;
            segment.live.push_back(RecordMeta { seq, samples: count });
        }
        self.total_bytes += frame.len() as u64;
        self.live += 1;
        self.last_seq = seq;
        Ok(())
    }

    fn active_is_full(&self) -> bool {
        self.segments
            .back()
            .is_some_and(|s| s.bytes > MAGIC.len() as u64 && s.bytes >= self.limits.segment_bytes)
    }

    /// The record for a batch in the active segment, and the references it
    /// defines (committed to the writer only once the write succeeded).
    fn build_record(
        &self,
        seq: u64,
        timestamp_ms: i64,
        ids: &[u32],
        samples: &[Sample],
        events: &[KernelEvent],
    ) -> (Vec<u8>, Vec<(u32, u32)>) {
        let empty = HashMap::new();
        let refs = self.writer.as_ref().map_or(&empty, |w| &w.refs);
        let mut assigned: HashMap<u32, u32> = HashMap::new();
        let mut new_series = Vec::new();
        let mut local = Vec::with_capacity(ids.len());
        for id in ids {
            let r = match refs.get(id).or_else(|| assigned.get(id)) {
                Some(r) => *r,
                None => {
                    let r = (refs.len() + assigned.len() + 1) as u32;
                    assigned.insert(*id, r);
                    if let Some(key) = self.table.get(*id) {
                        new_series.push(definition(r, key));
                    }
                    r
                }
            };
            local.push(r);
        }
        let batch = Batch {
            seq,
            new_series,
            base_timestamp_ms: timestamp_ms,
            refs: local,
            timestamp_deltas_ms: Vec::new(),
            values: samples.iter().map(|s| s.value).collect(),
            events: events.iter().map(event_to_wire).collect(),
            ..Default::default()
        };
        (encode_record(&batch), assigned.into_iter().collect())
    }

    fn write_frame(&mut self, frame: &[u8]) -> Result<(), SpoolError> {
        let Some(segment) = self.segments.back_mut() else {
            return Ok(());
        };
        let committed = segment.bytes;
        match (&mut segment.data, self.writer.as_mut().and_then(|w| w.file.as_mut())) {
            (SegmentData::Memory(buf), _) => {
                buf.extend_from_slice(frame);
                Ok(())
            }
            (SegmentData::File(path), Some(file)) => {
                let written = file.write_all(frame).and_then(|()| file.sync_data());
                if let Err(source) = written {
                    // Leave no partial record behind; the next batch starts
                    // a new segment.
                    let _ = file.set_len(committed);
                    let path = path.clone();
                    self.writer = None;
                    return Err(SpoolError::Io { path, source });
                }
                Ok(())
            }
            (SegmentData::File(path), None) => Err(SpoolError::Io {
                path: path.clone(),
                source: std::io::Error::other("segment is not open for writing"),
            }),
        }
    }

    fn count_dropped(&mut self, batches: u64, samples: u64) {
        self.stats.dropped_batches += batches;
        self.stats.dropped_samples += samples;
    }

    /// Drops the oldest segment, counting its unacknowledged batches.
    fn drop_oldest_segment(&mut self) {
        let Some(segment) = self.segments.pop_front() else {
            return;
        };
        let samples = segment.live.iter().map(|r| r.samples).sum();
        self.count_dropped(segment.live.len() as u64, samples);
        self.live -= segment.live.len() as u64;
        self.total_bytes -= segment.bytes;
        self.floor = self.floor.max(segment.last_seq);
        if Some(segment.id) == self.active_id() {
            self.writer = None;
        }
        if let SegmentData::File(path) = &segment.data {
            remove_file(path);
        }
        self.persist_floor();
    }

    /// Drops the oldest unacknowledged batch, counting it; false if there
    /// is none.
    fn drop_oldest_batch(&mut self) -> bool {
        let Some(record) = self.segments.iter_mut().find_map(|s| s.live.pop_front()) else {
            return false;
        };
        self.count_dropped(1, record.samples);
        self.live -= 1;
        self.floor = self.floor.max(record.seq);
        self.remove_finished_segments();
        self.persist_floor();
        true
    }

    /// Marks every batch up to `seq` acknowledged and deletes segments with
    /// nothing left to send.
    pub fn ack(&mut self, seq: u64) {
        if seq <= self.floor {
            return;
        }
        self.floor = seq;
        for segment in &mut self.segments {
            while segment.live.front().is_some_and(|r| r.seq <= seq) {
                segment.live.pop_front();
                self.live -= 1;
            }
        }
        self.remove_finished_segments();
        self.persist_floor();
    }

    fn remove_finished_segments(&mut self) {
        let active = self.active_id();
        while self
            .segments
            .front()
            .is_some_and(|s| s.live.is_empty() && Some(s.id) != active)
        {
            if let Some(segment) = self.segments.pop_front() {
                self.total_bytes -= segment.bytes;
                if let SegmentData::File(path) = &segment.data {
                    remove_file(path);
                }
            }
        }
    }

    fn persist_floor(&self) {
        let Some(dir) = &self.dir else { return };
        let path = dir.join(FLOOR_FILE);
        let tmp = dir.join(format!("{FLOOR_FILE}.tmp"));
        let written = std::fs::write(&tmp, self.floor.to_string()).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::debug!(file = %path.display(), error = %e, "spool: cannot record the acknowledged floor");
        }
    }

    /// The next unacknowledged batch after `cursor`, or `None` when the
    /// cursor has reached the newest one. A record that cannot be read ends
    /// its segment for this reader (counted in `corrupt_bytes`).
    pub fn read_next(&mut self, cursor: &mut Cursor) -> Option<SpooledBatch> {
        loop {
            let index = match cursor.segment {
                None => 0,
                Some(id) => self.segments.iter().position(|s| s.id >= id)?,
            };
            let segment = self.segments.get(index)?;
            if cursor.segment != Some(segment.id) {
                // Either the first read or the segment was dropped under us.
                cursor.enter(segment.id);
            }
            if cursor.offset >= segment.bytes {
                let next = self.segments.get(index + 1)?;
                cursor.enter(next.id);
                continue;
            }
            let (batch, n) = match parse_at(segment, cursor) {
                Ok(ok) => ok,
                Err(why) => {
                    self.skip_rest(cursor, &why);
                    continue;
                }
            };
            for def in &batch.new_series {
                if def.r#ref as usize != cursor.local.len() + 1 {
                    break;
                }
                let key = SeriesKey {
                    name: def.name.clone(),
                    labels: def.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect(),
                };
                cursor.local.push(self.table.intern_key(key));
            }
            let series: Option<Vec<u32>> = batch
                .refs
                .iter()
                .map(|r| (*r as usize).checked_sub(1).and_then(|i| cursor.local.get(i)).copied())
                .collect();
            let Some(series) = series else {
                self.skip_rest(cursor, "record uses an undefined reference");
                continue;
            };
            cursor.offset += n as u64;
            if batch.seq <= self.floor {
                continue;
            }
            return Some(SpooledBatch {
                seq: batch.seq,
                timestamp_ms: batch.base_timestamp_ms,
                series,
                values: batch.values,
                events: batch.events.into_iter().map(event_from_wire).collect(),
            });
        }
    }

    fn skip_rest(&mut self, cursor: &mut Cursor, why: &str) {
        let Some(segment) = self.segments.iter().find(|s| Some(s.id) == cursor.segment) else {
            return;
        };
        let (id, end) = (segment.id, segment.bytes);
        let cut = end.saturating_sub(cursor.offset);
        tracing::warn!(segment = id, offset = cursor.offset, skipped_bytes = cut, reason = %why, "spool: unreadable record; rest of segment skipped");
        self.stats.corrupt_bytes += cut;
        cursor.offset = end;
    }
}

/// Checks a record's definitions and references against the segment's
/// references so far (`defined`), extending them.
fn check_refs(batch: &Batch, defined: &mut usize) -> Result<(), String> {
    for def in &batch.new_series {
        if def.r#ref as usize != *defined + 1 {
            return Err(format!("definition of reference {} out of order", def.r#ref));
        }
        *defined += 1;
    }
    match batch.refs.iter().find(|r| **r == 0 || **r as usize > *defined) {
        Some(r) => Err(format!("undefined reference {r}")),
        None => Ok(()),
    }
}

/// Reads one whole record (header and payload) into `buf`.
fn read_frame(reader: &mut impl Read, buf: &mut Vec<u8>) -> Result<(), String> {
    buf.clear();
    buf.resize(FRAME_HEADER, 0);
    reader
        .read_exact(buf)
        .map_err(|_| RecordError::ShortHeader.to_string())?;
    let len = frame_len(buf).map_err(|e| e.to_string())?;
    buf.resize(FRAME_HEADER + len, 0);
    reader
        .read_exact(&mut buf[FRAME_HEADER..])
        .map_err(|_| RecordError::ShortPayload.to_string())
}

/// Parses the record at the cursor, never reading beyond the committed
/// length.
fn parse_at(segment: &Segment, cursor: &mut Cursor) -> Result<(Batch, usize), String> {
    let committed = segment.bytes;
    let start = cursor.offset;
    match &segment.data {
        SegmentData::Memory(buf) => {
            let end = (committed as usize).min(buf.len());
            let bytes = buf.get(start as usize..end).unwrap_or_default();
            parse_record(bytes).map_err(|e| e.to_string())
        }
        SegmentData::File(path) => {
            if cursor.file.is_none() {
                cursor.file = Some(File::open(path).map_err(|e| format!("{}: {e}", path.display()))?);
            }
            let Some(file) = cursor.file.as_mut() else {
                return Err("segment not open".into());
            };
            file.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
            let mut limited = file.take(committed.saturating_sub(start));
            let mut buf = Vec::new();
            read_frame(&mut limited, &mut buf)?;
            parse_record(&buf).map_err(|e| e.to_string())
        }
    }
}

/// The wire definition of a series under the stream or segment reference `r`.
pub(crate) fn definition(r: u32, key: &SeriesKey) -> SeriesDefinition {
    SeriesDefinition {
        r#ref: r,
        name: key.name.clone(),
        labels: key
            .labels
            .iter()
            .map(|(n, v)| Label {
                name: n.clone(),
                value: v.clone(),
            })
            .collect(),
    }
}

/// The wire form of a kernel event.
pub fn event_to_wire(e: &KernelEvent) -> hostpulse_proto::KernelEvent {
    hostpulse_proto::KernelEvent {
        timestamp_ms: e.timestamp_ms,
        kind: e.kind.clone(),
        device: e.device.clone(),
        message: e.message.clone(),
    }
}

fn event_from_wire(e: hostpulse_proto::KernelEvent) -> KernelEvent {
    KernelEvent {
        timestamp_ms: e.timestamp_ms,
        kind: e.kind,
        device: e.device,
        message: e.message,
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.{SEGMENT_EXT}"))
}

fn remove_file(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %path.display(), error = %e, "spool: cannot delete segment"),
    }
}

/// Makes a new directory entry durable (Unix; elsewhere a no-op).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn samples(n: usize, value: f64) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                name: format!("m{}", i % 3).into(),
                labels: crate::emit::labels_from(vec![("i", i.to_string())]),
                value,
            })
            .collect()
    }

    fn append(spool: &mut Spool, seq: u64, n: usize) {
        spool
            .append(seq, seq as i64 * 1000, &samples(n, seq as f64), &[])
            .unwrap();
    }

    fn drain(spool: &mut Spool) -> Vec<SpooledBatch> {
        let mut cursor = Cursor::new();
        std::iter::from_fn(|| spool.read_next(&mut cursor)).collect()
    }

    fn seqs(batches: &[SpooledBatch]) -> Vec<u64> {
        batches.iter().map(|b| b.seq).collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == SEGMENT_EXT))
            .collect();
        files.sort();
        files
    }

    /// Issue 7: two agents cannot share a spool directory; the lock goes
    /// with the spool that held it.
    #[test]
    fn a_second_spool_on_one_directory_is_refused_until_the_first_closes() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits::new(1 << 20, 100);
        let first = Spool::open(dir.path(), limits).unwrap();
        match Spool::open(dir.path(), limits) {
            Err(e @ SpoolError::Locked { .. }) => {
                assert!(e.to_string().contains("own --spool-dir"), "{e}")
            }
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("a second spool opened a locked directory"),
        }
        drop(first);
        Spool::open(dir.path(), limits).unwrap();
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn every_single_byte_flip_in_a_record_is_detected() {
        let record = encode_record(&Batch {
            seq: 7,
            refs: vec![1, 2],
            values: vec![1.5, 2.5],
            ..Batch::default()
        });
        assert_eq!(parse_record(&record).unwrap().1, record.len());
        for i in 0..record.len() {
            for bit in 0..8 {
                let mut bad = record.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    parse_record(&bad).is_err(),
                    "flip of bit {bit} in byte {i} went unnoticed"
                );
            }
        }
        for cut in 0..record.len() {
            assert!(parse_record(&record[..cut]).is_err(), "cut at {cut} went unnoticed");
        }
    }

    #[test]
    fn append_ack_and_reopen_resend_only_the_unacknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits::new(1 << 20, 1000);
        {
            let mut spool = Spool::open(dir.path(), limits).unwrap();
            for seq in 1..=5 {
                append(&mut spool, seq, 4);
            }
            assert_eq!(spool.first_live_seq(), 1);
            spool.ack(2);
            assert_eq!(seqs(&drain(&mut spool)), vec![3, 4, 5]);
        }
        let mut spool = Spool::open(dir.path(), limits).unwrap();
        assert_eq!(spool.first_live_seq(), 3);
        assert_eq!(spool.last_seq(), 5);
        assert_eq!(spool.stats().batches, 3);
        let batches = drain(&mut spool);
        assert_eq!(seqs(&batches), vec![3, 4, 5]);
        // The series come back with their names and labels.
        let b = &batches[0];
        assert_eq!(b.values, vec![3.0; 4]);
        assert_eq!(b.timestamp_ms, 3000);
        let names: Vec<String> = b
            .series
            .iter()
            .map(|id| {
                let k = spool.series(*id).unwrap();
                format!("{}{{i={}}}", k.name, k.labels[0].1)
            })
            .collect();
        assert_eq!(names, vec!["m0{i=0}", "m1{i=1}", "m2{i=2}", "m0{i=3}"]);
        // New batches go to a new segment and continue the sequence.
        assert!(
            spool.append(5, 0, &samples(1, 0.0), &[]).is_err(),
            "a reused number is refused"
        );
        append(&mut spool, 6, 2);
        spool.ack(5);
        assert_eq!(seqs(&drain(&mut spool)), vec![6]);
        spool.ack(6);
        assert_eq!(spool.stats().batches, 0);
        assert_eq!(spool.stats().dropped_samples, 1, "the refused batch counts as dropped");
        drop(spool);
        let spool = Spool::open(dir.path(), limits).unwrap();
        assert_eq!(spool.first_live_seq(), 0);
        assert_eq!(segment_files(dir.path()).len(), 1, "only the fresh segment is left");
    }

    #[test]
    fn a_cursor_sees_batches_appended_after_it_reached_the_end() {
        let mut spool = Spool::in_memory(Limits::new(1 << 20, 1000));
        let mut cursor = Cursor::new();
        assert!(spool.read_next(&mut cursor).is_none());
        append(&mut spool, 10, 3);
        assert_eq!(spool.read_next(&mut cursor).unwrap().seq, 10);
        assert!(spool.read_next(&mut cursor).is_none());
        append(&mut spool, 11, 3);
        // An acknowledgement that arrives while reading skips what it covers.
        append(&mut spool, 12, 3);
        spool.ack(11);
        assert_eq!(spool.read_next(&mut cursor).unwrap().seq, 12);
    }

    #[test]
    fn torn_tail_is_cut_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits::new(1 << 20, 1000);
        let mut spool = Spool::open(dir.path(), limits).unwrap();
        for seq in 1..=3 {
            append(&mut spool, seq, 5);
        }
        drop(spool);
        let file = segment_files(dir.path()).pop().unwrap();
        let len = std::fs::metadata(&file).unwrap().len();
        // Power lost in the middle of writing the third record.
        let f = OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(len - 5).unwrap();
        drop(f);
        let mut spool = Spool::open(dir.path(), limits).unwrap();
        let third = (len - 5) - std::fs::metadata(&file).unwrap().len();
        assert!(third > 0, "the file was cut back");
        assert_eq!(spool.stats().corrupt_bytes, third);
        assert_eq!(seqs(&drain(&mut spool)), vec![1, 2]);
        assert_eq!(spool.last_seq(), 2);
    }

    #[test]
    fn flipped_byte_cuts_the_segment_from_the_bad_record() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits::new(1 << 20, 1000);
        let mut spool = Spool::open(dir.path(), limits).unwrap();
        for seq in 1..=3 {
            append(&mut spool, seq, 5);
        }
        drop(spool);
        let file = segment_files(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        let first = MAGIC.len() + parse_record(&bytes[MAGIC.len()..]).unwrap().1;
        let len = bytes.len();
        bytes[first + 12] ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();
        let mut spool = Spool::open(dir.path(), limits).unwrap();
        assert_eq!(spool.stats().corrupt_bytes, (len - first) as u64);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), first as u64);
        assert_eq!(seqs(&drain(&mut spool)), vec![1]);
    }

    /// Issue 7 corpus replay (the stand-in for a fuzz target): a segment
    /// file cut at every length, and hit by seeded runs of random bytes
    /// anywhere, always opens, and what it yields is a prefix of what was
    /// written, with the values intact.
    #[test]
    fn mangled_segment_files_open_and_yield_only_good_batches() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits::new(1 << 20, 1000);
        let mut spool = Spool::open(dir.path(), limits).unwrap();
        for seq in 1..=4 {
            append(&mut spool, seq, 3);
        }
        drop(spool);
        let file = segment_files(dir.path()).pop().unwrap();
        let good = std::fs::read(&file).unwrap();
        let mut inputs: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..120 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut v = good.clone();
            let at = (rng as usize) % v.len();
            let run = 1 + (rng >> 32) as usize % 16;
            for (k, b) in v.iter_mut().skip(at).take(run).enumerate() {
                *b ^= (rng >> (k % 8 * 8)) as u8 | 1;
            }
            inputs.push(v);
        }
        for (i, bytes) in inputs.iter().enumerate() {
            for f in segment_files(dir.path()) {
                std::fs::remove_file(f).unwrap();
            }
            let _ = std::fs::remove_file(dir.path().join(FLOOR_FILE));
            std::fs::write(&file, bytes).unwrap();
            let mut spool = Spool::open(dir.path(), limits).unwrap();
            let got = drain(&mut spool);
            let n = got.len() as u64;
            assert_eq!(seqs(&got), (1..=n).collect::<Vec<_>>(), "input {i}");
            for b in &got {
                assert!(b.values.iter().all(|v| *v == b.seq as f64), "input {i}: seq {}", b.seq);
            }
        }
    }

    #[test]
    fn garbage_file_is_removed_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0000000000000000.seg"), b"not a spool").unwrap();
        let spool = Spool::open(dir.path(), Limits::new(1 << 20, 10)).unwrap();
        assert_eq!(spool.stats().corrupt_bytes, 11);
        assert_eq!(segment_files(dir.path()).len(), 1);
    }

    #[test]
    fn full_spool_drops_the_oldest_segments_and_counts_exact_samples() {
        let dir = tempfile::tempdir().unwrap();
        // Small segments so that dropping is fine-grained.
        let limits = Limits {
            max_bytes: 6000,
            max_batches: 10_000,
            segment_bytes: 1000,
        };
        let mut spool = Spool::open(dir.path(), limits).unwrap();
        let mut total = 0u64;
        for seq in 1..=200u64 {
            let n = (seq % 7 + 1) as usize;
            total += n as u64;
            append(&mut spool, seq, n);
            assert!(spool.stats().bytes <= limits.max_bytes);
        }
        let stats = spool.stats();
        assert!(stats.dropped_batches > 0);
        let left = drain(&mut spool);
        let left_samples: u64 = left.iter().map(|b| b.series.len() as u64).sum();
        assert_eq!(
            stats.dropped_samples + left_samples,
            total,
            "every sample is either kept or counted"
        );
        assert_eq!(stats.dropped_batches + left.len() as u64, 200);
        // What is kept is the newest data, contiguous up to the last batch.
        let kept = seqs(&left);
        assert_eq!(*kept.last().unwrap(), 200);
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1));
        // Acknowledged data is not counted as dropped when it goes.
        spool.ack(200);
        let before = spool.stats().dropped_samples;
        for seq in 201..=300 {
            append(&mut spool, seq, 1);
        }
        let after = spool.stats();
        let left: u64 = drain(&mut spool).iter().map(|b| b.series.len() as u64).sum();
        assert_eq!(after.dropped_samples - before + left, 100);
        // And the counts survive as data: a reopen keeps only the kept part.
        drop(spool);
        let mut spool = Spool::open(dir.path(), limits).unwrap();
        let reopened: u64 = drain(&mut spool).iter().map(|b| b.series.len() as u64).sum();
        assert_eq!(reopened, left);
    }

    #[test]
    fn batch_bound_drops_single_batches_exactly() {
        let mut spool = Spool::in_memory(Limits::new(1 << 20, 3));
        for seq in 1..=5 {
            append(&mut spool, seq, seq as usize);
        }
        let stats = spool.stats();
        assert_eq!(stats.dropped_batches, 2);
        assert_eq!(stats.dropped_samples, 1 + 2);
        assert_eq!(seqs(&drain(&mut spool)), vec![3, 4, 5]);
        assert_eq!(spool.first_live_seq(), 3);
    }

    #[test]
    fn batch_larger_than_the_spool_is_dropped_and_counted() {
        let mut spool = Spool::in_memory(Limits {
            max_bytes: 200,
            max_batches: 10,
            segment_bytes: 100,
        });
        append(&mut spool, 1, 1);
        let err = spool.append(2, 0, &samples(100, 1.0), &[]).unwrap_err();
        assert!(matches!(err, SpoolError::TooLarge { samples: 100, .. }), "{err}");
        assert_eq!(spool.stats().dropped_samples, 1 + 100);
        assert!(drain(&mut spool).is_empty());
    }

    #[test]
    fn reader_survives_its_segment_being_dropped() {
        let mut spool = Spool::in_memory(Limits {
            max_bytes: 3000,
            max_batches: 10_000,
            segment_bytes: 500,
        });
        let mut cursor = Cursor::new();
        append(&mut spool, 1, 3);
        assert_eq!(spool.read_next(&mut cursor).unwrap().seq, 1);
        for seq in 2..=100 {
            append(&mut spool, seq, 3);
        }
        let next = spool.read_next(&mut cursor).unwrap();
        assert_eq!(next.seq, spool.first_live_seq(), "resumes at the oldest kept batch");
        assert_eq!(next.series.len(), 3, "references rebuilt from the segment's start");
    }

    #[test]
    fn unwritable_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        assert!(Spool::open(&file.join("spool"), Limits::new(1 << 20, 10)).is_err());
    }
}
