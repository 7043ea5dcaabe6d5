//! Keys and small record encodings of the engine's one sled tree. Every
//! record kind has a one-byte key prefix; all kinds share one tree so that a
//! group commit (WAL record + host seqs + new series) and a seal (blocks +
//! catalog entries + WAL deletions) are each one atomic `sled::Batch`, which
//! sled only offers within a tree.
//!
//! | key                                               | value                                   |
//! |---------------------------------------------------|-----------------------------------------|
//! | `s` + first series id (u64 BE)                    | series page: `S` + snappy(JSON `[[[k, v]..]..]`), ids counting up from the key's; or one series' pairs, JSON `[[k, v]..]` |
//! | `h` + host name (UTF-8)                           | [`HostEntry`] as JSON                   |
//! | `w` + log sequence number (u64 BE) + part (u32 BE) | checksummed WAL record part (`encode_wal`) |
//! | `b` + group (u64 BE) + window (i64*) + lsn (u64 BE) | checksummed block (`block.rs`)        |
//! | `c` + same as `b`                                 | catalog entry: the block's byte length  |
//! | `r` + resolution byte + same as `b` after its prefix | checksummed rollups of that block    |
//! | `mlsn`                                            | highest log sequence number used (u64 BE) |
//! | `mseal`                                           | checksummed seal marks (`seal.rs`): pairs (through-lsn u64 BE, cut i64 BE); every sample older than `cut` in a WAL record with lsn ≤ through-lsn is in blocks, so replay skips it |
//!
//! `i64*` is a timestamp with its sign bit flipped, big-endian, so byte
//! order equals numeric order. The catalog duplicates block keys with tiny
//! values so that open can list blocks without reading them. Everything here
//! is pure; decoding never panics and reports [`StoreError::Corrupt`].

use serde::{Deserialize, Serialize};

use super::{HostRecord, StoreError};
use crate::model::Labels;

/// Name of the one tree this layout lives in, versioned.
pub(crate) const TREE: &str = "engine_v1";

/// Prefix of series definitions.
pub(crate) const SERIES: u8 = b's';
/// Prefix of host records.
pub(crate) const HOST: u8 = b'h';
/// Prefix of write-ahead records.
pub(crate) const WAL: u8 = b'w';
/// Prefix of sealed blocks.
pub(crate) const BLOCK: u8 = b'b';
/// Prefix of block catalog entries.
pub(crate) const CATALOG: u8 = b'c';
/// Prefix of rollup records.
pub(crate) const ROLLUP: u8 = b'r';
/// Key of the highest log sequence number used.
pub(crate) const META_LSN: &[u8] = b"mlsn";

/// What is persisted per host. `stored_any` tells "never stored a batch"
/// apart from "stored seq 0", which `HostRecord::last_seq` alone cannot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct HostEntry {
    /// The public record.
    pub record: HostRecord,
    /// Whether any batch was stored, i.e. `record.last_seq` is meaningful.
    pub stored_any: bool,
}

/// Key of a series definition.
pub(crate) fn series_key(id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = SERIES;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// Series id from a series-definition key.
pub(crate) fn parse_series_key(key: &[u8]) -> Result<u64, StoreError> {
    match key {
        [SERIES, rest @ ..] if rest.len() == 8 => Ok(u64_from(rest)),
        _ => Err(corrupt(format!("series key of {} bytes: {key:?}", key.len()))),
    }
}

/// Key of one part of a WAL record.
pub(crate) type WalKey = [u8; 13];

/// Key of part `part` of the WAL record `lsn`.
pub(crate) fn wal_key(lsn: u64, part: u32) -> WalKey {
    let mut k = [0u8; 13];
    k[0] = WAL;
    k[1..9].copy_from_slice(&lsn.to_be_bytes());
    k[9..].copy_from_slice(&part.to_be_bytes());
    k
}

/// Log sequence number and part from a WAL key.
pub(crate) fn parse_wal_key(key: &[u8]) -> Result<(u64, WalKey), StoreError> {
    match key {
        [WAL, rest @ ..] if rest.len() == 12 => {
            let mut k = [0u8; 13];
            k.copy_from_slice(key);
            Ok((u64_from(rest), k))
        }
        _ => Err(corrupt(format!("WAL key of {} bytes", key.len()))),
    }
}

/// Samples per series per WAL part, and the encoded size after which a part
/// is closed: parts stay well under sled's blob threshold (a quarter of its
/// 512 KiB segments), because sled removes blob files of deleted values only
/// lazily, so big WAL values would linger on disk after their seal.
const WAL_PART_SAMPLES: usize = 16_384;
const WAL_PART_BYTES: usize = 48 * 1024;

/// One group commit's samples as checksummed WAL parts, all to be written
/// in the same atomic batch.
pub(crate) fn wal_parts<S: AsRef<[(i64, f64)]>>(lsn: u64, entries: &[(u64, S)]) -> Vec<(WalKey, Vec<u8>)> {
    let mut parts = Vec::new();
    // Borrowed chunks: the samples are encoded once, never copied.
    let mut current: Vec<(u64, &[(i64, f64)])> = Vec::new();
    let mut size = 0usize;
    let close = |current: &mut Vec<(u64, &[(i64, f64)])>, parts: &mut Vec<(WalKey, Vec<u8>)>| {
        if !current.is_empty() {
            let part = u32::try_from(parts.len()).unwrap_or(u32::MAX);
            parts.push((wal_key(lsn, part), checksummed(&encode_wal(current))));
            current.clear();
        }
    };
    for (id, samples) in entries {
        for chunk in samples.as_ref().chunks(WAL_PART_SAMPLES) {
            // An estimate (four bytes per sample, see `encode_wal`) keeps
            // encoding to once.
            size += 16 + chunk.len() * 4;
            current.push((*id, chunk));
            if size >= WAL_PART_BYTES {
                close(&mut current, &mut parts);
                size = 0;
            }
        }
    }
    close(&mut current, &mut parts);
    parts
}

/// Where a block sits: its series group, its window start and the log
/// sequence number of the seal that wrote it (later blocks win on equal
/// timestamps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct BlockId {
    /// Hash of the group's name (the `instance` label).
    pub group: u64,
    /// Start of the window, ms.
    pub window: i64,
    /// Seal order.
    pub lsn: u64,
}

/// Key of a block (`prefix` [`BLOCK`]) or its catalog entry ([`CATALOG`]).
pub(crate) fn block_key(prefix: u8, id: BlockId) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = prefix;
    k[1..9].copy_from_slice(&id.group.to_be_bytes());
    k[9..17].copy_from_slice(&encode_ts(id.window));
    k[17..].copy_from_slice(&id.lsn.to_be_bytes());
    k
}

/// Inverse of [`block_key`] for either prefix.
pub(crate) fn parse_block_key(key: &[u8]) -> Result<BlockId, StoreError> {
    match key {
        [BLOCK | CATALOG, rest @ ..] if rest.len() == 24 => Ok(BlockId {
            group: u64_from(&rest[..8]),
            window: decode_ts(&rest[8..16]),
            lsn: u64_from(&rest[16..]),
        }),
        _ => Err(corrupt(format!("block key of {} bytes", key.len()))),
    }
}

/// What the catalog knows of a block: its size and which of its records
/// (raw samples, rollups per resolution) still exist after retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CatalogEntry {
    /// Bytes of the raw block when written.
    pub bytes: u64,
    /// The raw block still exists.
    pub raw: bool,
    /// The rollups still exist, per resolution.
    pub rollups: [bool; 2],
}

impl CatalogEntry {
    /// Nothing of the block is left.
    pub(crate) fn is_empty(&self) -> bool {
        !self.raw && !self.rollups.iter().any(|r| *r)
    }
}

/// Catalog value: byte length (u64 BE) and a flags byte.
pub(crate) fn encode_catalog(e: CatalogEntry) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[..8].copy_from_slice(&e.bytes.to_be_bytes());
    v[8] = u8::from(e.raw) | u8::from(e.rollups[0]) << 1 | u8::from(e.rollups[1]) << 2;
    v
}

/// Inverse of [`encode_catalog`].
pub(crate) fn decode_catalog(v: &[u8]) -> Result<CatalogEntry, StoreError> {
    match v {
        [len @ .., flags] if len.len() == 8 && *flags < 8 => Ok(CatalogEntry {
            bytes: u64_from(len),
            raw: flags & 1 != 0,
            rollups: [flags & 2 != 0, flags & 4 != 0],
        }),
        _ => Err(corrupt(format!("catalog entry of {} bytes", v.len()))),
    }
}

/// Key of the rollups of block `id` at `resolution` (an index into
/// `rollup::RESOLUTIONS`).
pub(crate) fn rollup_key(resolution: u8, id: BlockId) -> [u8; 26] {
    let b = block_key(ROLLUP, id);
    let mut k = [0u8; 26];
    k[0] = ROLLUP;
    k[1] = resolution;
    k[2..].copy_from_slice(&b[1..]);
    k
}

/// Frames a record with a CRC-32 of its payload in front.
pub(crate) fn checksummed(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a [`checksummed`] record, if the checksum holds.
pub(crate) fn verify_checksum(bytes: &[u8]) -> Option<&[u8]> {
    let (crc, payload) = bytes.split_at_checked(4)?;
    let mut b = [0u8; 4];
    b.copy_from_slice(crc);
    (crc32fast::hash(payload) == u32::from_le_bytes(b)).then_some(payload)
}

/// One WAL record: every accepted sample of one group commit, per series.
pub(crate) type WalEntries = Vec<(u64, Vec<(i64, f64)>)>;

/// WAL record payload: entry count, then per entry series id, sample
/// count, the timestamps (first as a zigzag varint, then zigzag varint
/// deltas of deltas), the length of the value column and the values Gorilla
/// XOR coded (bit-exact, so stale markers survive) — or, for an entry of at
/// most [`WAL_RAW_UP_TO`] samples, a length of 0 and the values' raw bits
/// (8 bytes each, little-endian).
///
/// Not the block codecs: range coding every sample here as well as at seal
/// took about half of the import's CPU (perf, 2026-11-26), while a WAL
/// record lives only until its window is sealed. The cost is a larger WAL
/// (about 2–4 bytes per sample instead of ~1), so a running collector's sled
/// file grows to a higher high-water mark, which `compact_dir` gives back.
pub(crate) fn encode_wal<S: AsRef<[(i64, f64)]>>(entries: &[(u64, S)]) -> Vec<u8> {
    use super::codec::{gorilla, put_varint, zigzag};
    let mut out = Vec::with_capacity(entries.iter().map(|(_, s)| s.as_ref().len() * 4 + 8).sum());
    let mut vs: Vec<f64> = Vec::new();
    put_varint(&mut out, entries.len() as u64);
    for (id, samples) in entries {
        let samples = samples.as_ref();
        put_varint(&mut out, *id);
        put_varint(&mut out, samples.len() as u64);
        let (mut prev, mut delta) = (0i64, 0i64);
        for (i, &(ts, _)) in samples.iter().enumerate() {
            if i == 0 {
                put_varint(&mut out, zigzag(ts));
            } else {
                let d = ts.wrapping_sub(prev);
                put_varint(&mut out, zigzag(d.wrapping_sub(delta)));
                delta = d;
            }
            prev = ts;
        }
        if samples.len() <= WAL_RAW_UP_TO {
            // Raw, flagged by an empty column length (a Gorilla column of
            // one value or more is never empty).
            put_varint(&mut out, 0);
            for &(_, v) in samples {
                out.extend_from_slice(&v.to_bits().to_le_bytes());
            }
            continue;
        }
        vs.clear();
        vs.extend(samples.iter().map(|s| s.1));
        let col = gorilla::encode(&vs);
        put_varint(&mut out, col.len() as u64);
        out.extend(col);
    }
    out
}

/// Series with at most this many samples in a WAL record keep their values
/// raw: a live agent's batch holds one sample per series, which Gorilla
/// codes in 9–10 bytes (the first value carries its whole XOR window)
/// against 8 raw, and encoding it was a tenth of the writer thread's time.
const WAL_RAW_UP_TO: usize = 2;

/// Inverse of [`encode_wal`].
pub(crate) fn decode_wal(mut bytes: &[u8]) -> Result<WalEntries, StoreError> {
    use super::codec::{MAX_COLUMN_LEN, get_len, get_varint, gorilla, take, unzigzag};
    let bad = |e: super::codec::CodecError| corrupt(format!("WAL record: {e}"));
    let count = get_len(&mut bytes, MAX_COLUMN_LEN).map_err(bad)?;
    let mut out = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let id = get_varint(&mut bytes).map_err(bad)?;
        // Every timestamp takes at least a byte, which bounds the count.
        let most = MAX_COLUMN_LEN.min(bytes.len());
        let n = get_len(&mut bytes, most).map_err(bad)?;
        let mut ts = Vec::with_capacity(n);
        let (mut prev, mut delta) = (0i64, 0i64);
        for i in 0..n {
            let z = unzigzag(get_varint(&mut bytes).map_err(bad)?);
            if i == 0 {
                prev = z;
            } else {
                delta = delta.wrapping_add(z);
                prev = prev.wrapping_add(delta);
            }
            ts.push(prev);
        }
        let v_len = get_len(&mut bytes, usize::MAX).map_err(bad)?;
        let vs = if v_len == 0 && n > 0 {
            let raw = take(
                &mut bytes,
                n.checked_mul(8).ok_or_else(|| corrupt("WAL record: count".into()))?,
            )
            .map_err(bad)?;
            raw.chunks_exact(8)
                .map(|b| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    f64::from_bits(u64::from_le_bytes(a))
                })
                .collect()
        } else {
            gorilla::decode(take(&mut bytes, v_len).map_err(bad)?, n).map_err(bad)?
        };
        if vs.len() != n {
            return Err(corrupt("WAL record: value column length".into()));
        }
        out.push((id, ts.into_iter().zip(vs).collect()));
    }
    if !bytes.is_empty() {
        return Err(corrupt("WAL record: trailing bytes".into()));
    }
    Ok(out)
}

/// Stable 64-bit FNV-1a hash naming a series group in block keys.
pub(crate) fn group_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Key of a host record.
pub(crate) fn host_key(host: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(host.len() + 1);
    k.push(HOST);
    k.extend_from_slice(host.as_bytes());
    k
}

/// One series' label pairs, as stores before series pages wrote them.
#[cfg(test)]
pub(crate) fn encode_labels(labels: &Labels) -> Vec<u8> {
    // Serializing a slice of string pairs cannot fail.
    serde_json::to_vec(labels.pairs()).unwrap_or_default()
}

/// Most series definitions in one record; a group commit defining more
/// writes several.
pub(crate) const SERIES_PAGE: usize = 4096;

/// Tag of a series page (a single definition starts with `[`).
const PAGE_TAG: u8 = b'S';

/// Label sets of consecutive series ids as one record: sled's per-key
/// overhead (~130 bytes) would otherwise exceed the labels themselves, and
/// label sets of one commit repeat each other, which snappy removes.
pub(crate) fn encode_series_page(labels: &[&Labels]) -> Vec<u8> {
    let pages: Vec<&[(String, String)]> = labels.iter().map(|l| l.pairs()).collect();
    // Serializing string pairs cannot fail; compressing a buffer cannot either.
    let json = serde_json::to_vec(&pages).unwrap_or_default();
    let mut out = vec![PAGE_TAG];
    out.extend(snap::raw::Encoder::new().compress_vec(&json).unwrap_or_default());
    out
}

/// Inverse of [`encode_series_page`]; also reads a single definition
/// ([`encode_labels`]) as a page of one.
pub(crate) fn decode_series_page(bytes: &[u8]) -> Result<Vec<Labels>, StoreError> {
    let Some((&PAGE_TAG, compressed)) = bytes.split_first() else {
        return Ok(vec![decode_labels(bytes)?]);
    };
    let len = snap::raw::decompress_len(compressed).map_err(|e| corrupt(format!("series page: {e}")))?;
    if len > 1 << 30 {
        return Err(corrupt(format!("series page of {len} bytes")));
    }
    let json = snap::raw::Decoder::new()
        .decompress_vec(compressed)
        .map_err(|e| corrupt(format!("series page: {e}")))?;
    let pages: Vec<Vec<(String, String)>> =
        serde_json::from_slice(&json).map_err(|e| corrupt(format!("series page: {e}")))?;
    pages.into_iter().map(canonical).collect()
}

/// Inverse of [`encode_labels`]; rejects pairs that are not already in the
/// canonical form `Labels::new` produces, since such a record was not
/// written by us.
pub(crate) fn decode_labels(bytes: &[u8]) -> Result<Labels, StoreError> {
    let pairs: Vec<(String, String)> =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("series labels: {e}")))?;
    canonical(pairs)
}

/// The label set of stored pairs, refused unless already canonical.
fn canonical(pairs: Vec<(String, String)>) -> Result<Labels, StoreError> {
    let labels = Labels::new(pairs.clone());
    if labels.pairs() != pairs.as_slice() || pairs.is_empty() {
        return Err(corrupt(format!("series labels not canonical: {pairs:?}")));
    }
    Ok(labels)
}

/// Host entry as stored.
pub(crate) fn encode_host(entry: &HostEntry) -> Vec<u8> {
    // Plain strings and integers: serialization cannot fail.
    serde_json::to_vec(entry).unwrap_or_default()
}

/// Inverse of [`encode_host`], checking the name matches the key.
pub(crate) fn decode_host(key: &[u8], bytes: &[u8]) -> Result<HostEntry, StoreError> {
    let entry: HostEntry = serde_json::from_slice(bytes).map_err(|e| corrupt(format!("host record: {e}")))?;
    if key.get(1..) != Some(entry.record.host.as_bytes()) {
        return Err(corrupt(format!(
            "host record {:?} under key {:?}",
            entry.record.host,
            String::from_utf8_lossy(key)
        )));
    }
    Ok(entry)
}

fn encode_ts(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

fn decode_ts(bytes: &[u8]) -> i64 {
    (u64_from(bytes) ^ (1 << 63)) as i64
}

/// Little-endian u64 from exactly 8 bytes (callers check the length).
/// Big-endian u64 from exactly 8 bytes (callers check the length).
fn u64_from(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

fn corrupt(detail: String) -> StoreError {
    StoreError::Corrupt { tree: TREE, detail }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn block_keys_sort_by_group_window_then_lsn() {
        let ids = [
            BlockId {
                group: 1,
                window: i64::MIN,
                lsn: 9,
            },
            BlockId {
                group: 1,
                window: -7_200_000,
                lsn: 1,
            },
            BlockId {
                group: 1,
                window: 0,
                lsn: 1,
            },
            BlockId {
                group: 1,
                window: 0,
                lsn: 2,
            },
            BlockId {
                group: 1,
                window: 7_200_000,
                lsn: 0,
            },
            BlockId {
                group: 2,
                window: i64::MIN,
                lsn: 0,
            },
        ];
        for pair in ids.windows(2) {
            assert!(block_key(BLOCK, pair[0]) < block_key(BLOCK, pair[1]), "{pair:?}");
        }
        for id in ids {
            assert_eq!(parse_block_key(&block_key(CATALOG, id)).unwrap(), id);
        }
    }

    #[test]
    fn series_pages_round_trip_and_single_definitions_still_read() {
        let a = Labels::new(vec![("__name__".into(), "up".into()), ("instance".into(), "h1".into())]);
        let b = Labels::new(vec![("__name__".into(), "up".into()), ("instance".into(), "h2".into())]);
        assert_eq!(
            decode_series_page(&encode_series_page(&[&a, &b])).unwrap(),
            vec![a.clone(), b]
        );
        assert_eq!(decode_series_page(&encode_labels(&a)).unwrap(), vec![a]);
        for bad in [&b"S"[..], b"S\x05junk", b"[]", b"not json"] {
            assert!(decode_series_page(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn damaged_wal_payloads_are_errors_not_panics() {
        let entries = vec![(7u64, (0..50).map(|i| (1_000 + i * 10_000, (i as f64) * 0.5)).collect())];
        let good = encode_wal(&entries);
        assert_eq!(decode_wal(&good).unwrap(), entries);
        for cut in 0..good.len() {
            assert!(decode_wal(&good[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xA5;
            let _ = decode_wal(&bad);
        }
        for seed in 0..300u64 {
            let mut rng = super::super::codec::proptests_rng(seed);
            let junk: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
            let _ = decode_wal(&junk);
        }
    }

    #[test]
    fn wal_records_round_trip_bit_exactly() {
        let stale = f64::from_bits(crate::model::STALE_NAN_BITS);
        let entries = vec![(3u64, vec![(i64::MIN, -0.0), (5, stale), (i64::MAX, 1.5)]), (0, vec![])];
        let got = decode_wal(&encode_wal(&entries)).unwrap();
        assert_eq!(got.len(), 2);
        assert!(crate::model::is_stale_marker(got[0].1[1].1));
        assert_eq!(got[0].1[0].1.to_bits(), (-0.0f64).to_bits());
        assert_eq!(got[0].1[2].0, i64::MAX);
        // Truncation is caught by the record checksum; decoding a cut record
        // must still not panic.
        let bytes = encode_wal(&entries);
        for cut in 0..bytes.len() {
            let _ = decode_wal(&bytes[..cut]);
        }
    }

    #[test]
    fn short_wal_entries_are_raw_and_older_gorilla_entries_still_read() {
        use super::super::codec::{gorilla, put_varint, zigzag};
        let stale = f64::from_bits(crate::model::STALE_NAN_BITS);
        let entries = vec![
            (1u64, vec![(1_000, stale)]),
            (2, vec![(1_000, -0.0), (11_000, 47.25)]),
            (3, vec![(1_000, 1.0), (2_000, 2.0), (3_000, 3.0)]),
        ];
        let bytes = encode_wal(&entries);
        let got = decode_wal(&bytes).unwrap();
        let bits = |e: &WalEntries| -> Vec<(u64, Vec<(i64, u64)>)> {
            e.iter()
                .map(|(id, s)| (*id, s.iter().map(|&(t, v)| (t, v.to_bits())).collect()))
                .collect()
        };
        assert_eq!(bits(&got), bits(&entries));
        // One sample: id, count, timestamp varint, a zero length, 8 raw bytes.
        let one = encode_wal(&entries[..1]);
        assert_eq!(one.len(), 1 + 1 + 1 + 2 + 1 + 8, "{one:?}");
        // A record written when every entry was Gorilla coded.
        let mut old = Vec::new();
        put_varint(&mut old, 1);
        put_varint(&mut old, 9);
        put_varint(&mut old, 1);
        put_varint(&mut old, zigzag(5_000));
        let col = gorilla::encode(&[stale]);
        put_varint(&mut old, col.len() as u64);
        old.extend(col);
        let got = decode_wal(&old).unwrap();
        assert_eq!(got[0].0, 9);
        assert_eq!(got[0].1[0].0, 5_000);
        assert_eq!(got[0].1[0].1.to_bits(), stale.to_bits());
        // A raw entry cut short is an error.
        assert!(decode_wal(&one[..one.len() - 1]).is_err());
    }

    #[test]
    fn big_commits_split_into_parts_that_hold_everything() {
        let big: Vec<(i64, f64)> = (0..100_000).map(|i| (i, (i % 977) as f64 * 1.5)).collect();
        let entries = vec![(1u64, big.clone()), (2, vec![(5, 1.0)])];
        let parts = wal_parts(9, &entries);
        assert!(parts.len() > 2, "{} parts", parts.len());
        let mut got: Vec<(u64, Vec<(i64, f64)>)> = Vec::new();
        for (i, (key, value)) in parts.iter().enumerate() {
            assert_eq!(key, &wal_key(9, i as u32));
            assert!(value.len() < 128 * 1024);
            got.extend(decode_wal(verify_checksum(value).unwrap()).unwrap());
        }
        let ones: Vec<(i64, f64)> = got.iter().filter(|e| e.0 == 1).flat_map(|e| e.1.clone()).collect();
        assert_eq!(ones, big);
        assert!(wal_parts::<Vec<(i64, f64)>>(1, &[]).is_empty());
    }

    #[test]
    fn checksums_catch_flips() {
        let framed = checksummed(b"hello");
        assert_eq!(verify_checksum(&framed), Some(&b"hello"[..]));
        let mut bad = framed.clone();
        bad[6] ^= 1;
        assert_eq!(verify_checksum(&bad), None);
        assert_eq!(verify_checksum(&framed[..3]), None);
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        assert!(matches!(parse_series_key(b"s12"), Err(StoreError::Corrupt { .. })));
        assert!(matches!(parse_block_key(b"b1"), Err(StoreError::Corrupt { .. })));
        assert!(matches!(parse_wal_key(b"w"), Err(StoreError::Corrupt { .. })));
        assert_eq!(parse_wal_key(&wal_key(7, 2)).unwrap(), (7, wal_key(7, 2)));
        assert!(matches!(decode_labels(b"{"), Err(StoreError::Corrupt { .. })));
        assert!(matches!(
            decode_labels(br#"[["b","1"],["a","2"]]"#),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(decode_host(b"hx", b"[]"), Err(StoreError::Corrupt { .. })));
        assert!(decode_wal(&[0xff; 12]).is_err());
    }
}
