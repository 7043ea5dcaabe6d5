//! Downsampled rollups: per series, 5-minute and 1-hour buckets holding
//! min, max, sum, count and last, built when a block is sealed (or
//! compacted) and stored beside it, so queries with coarse steps and data
//! older than the raw retention read a few buckets instead of every sample.
//! Stale markers are not samples and are left out; other NaNs take part as
//! Prometheus' `*_over_time` functions would see them (`sum` becomes NaN,
//! `min`/`max` skip them).
//!
//! Record payload (after `keys::checksummed`): window start, series count,
//! per series its id and bucket count, six column lengths, then six columns
//! each holding every series' buckets in directory order — one coded
//! stream per column for the whole block, so the coder's fixed costs are
//! paid once per block rather than once per series: bucket starts relative
//! to the window (`codec::timestamps`), min, max, sum, last
//! (`codec::values`) and count (`codec::ints`).

use super::codec::{self, CodecError, MAX_COLUMN_LEN, get_len, get_varint, ints, put_varint, timestamps, values};
use super::keys;

/// Rollup resolutions: index (stored in keys) and bucket width in ms.
pub const RESOLUTIONS: [Resolution; 2] = [Resolution::FiveMinutes, Resolution::OneHour];

/// A rollup resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// 5-minute buckets.
    FiveMinutes,
    /// 1-hour buckets.
    OneHour,
}

impl Resolution {
    /// Bucket width in ms.
    pub fn millis(self) -> i64 {
        match self {
            Resolution::FiveMinutes => 300_000,
            Resolution::OneHour => 3_600_000,
        }
    }

    /// Index used in keys.
    pub(crate) fn index(self) -> u8 {
        match self {
            Resolution::FiveMinutes => 0,
            Resolution::OneHour => 1,
        }
    }
}

/// One bucket of one series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    /// Start of the bucket, ms (a multiple of the resolution).
    pub start_ms: i64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sum of values.
    pub sum: f64,
    /// Number of samples.
    pub count: u64,
    /// Value of the newest sample.
    pub last: f64,
}

impl Bucket {
    /// Folds a later bucket of the same start into this one.
    pub(crate) fn merge(&mut self, later: &Bucket) {
        self.min = self.min.min(later.min);
        self.max = self.max.max(later.max);
        self.sum += later.sum;
        self.count += later.count;
        self.last = later.last;
    }
}

/// Buckets of sorted samples at `res`.
pub(crate) fn buckets(samples: &[(i64, f64)], res: Resolution) -> Vec<Bucket> {
    let width = res.millis();
    let mut out: Vec<Bucket> = Vec::new();
    for &(ts, v) in samples {
        if crate::model::is_stale_marker(v) {
            continue;
        }
        let start = super::head::window_start(ts, width);
        match out.last_mut() {
            Some(b) if b.start_ms == start => {
                b.merge(&Bucket {
                    start_ms: start,
                    min: v,
                    max: v,
                    sum: v,
                    count: 1,
                    last: v,
                });
            }
            _ => out.push(Bucket {
                start_ms: start,
                min: v,
                max: v,
                sum: v,
                count: 1,
                last: v,
            }),
        }
    }
    out
}

/// Encodes the rollups of one block; returns the checksummed value.
pub(crate) fn encode(window: i64, series: &[(u64, Vec<Bucket>)]) -> Vec<u8> {
    let all: Vec<&Bucket> = series.iter().flat_map(|(_, b)| b.iter()).collect();
    let col = |f: fn(&Bucket) -> f64| values::encode(&all.iter().map(|b| f(b)).collect::<Vec<_>>());
    let starts: Vec<i64> = all.iter().map(|b| b.start_ms.wrapping_sub(window)).collect();
    let counts: Vec<i64> = all.iter().map(|b| b.count as i64).collect();
    let cols = [
        timestamps::encode(&starts),
        col(|b| b.min),
        col(|b| b.max),
        col(|b| b.sum),
        col(|b| b.last),
        ints::encode(&counts, 1),
    ];
    let mut payload = Vec::new();
    put_varint(&mut payload, codec::zigzag(window));
    put_varint(&mut payload, series.len() as u64);
    for (id, b) in series {
        put_varint(&mut payload, *id);
        put_varint(&mut payload, b.len() as u64);
    }
    for c in &cols {
        put_varint(&mut payload, c.len() as u64);
    }
    for c in cols {
        payload.extend(c);
    }
    keys::checksummed(&payload)
}

/// Why a rollup record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RollupError {
    /// Damaged on disk.
    #[error("checksum mismatch")]
    Checksum,
    /// Not a record we understand.
    #[error("{0}")]
    Codec(#[from] CodecError),
}

/// Most buckets a record may claim per byte of its payload. The columns
/// are range coded, so a byte can stand for many buckets and their count
/// cannot be checked against the column sizes; but every series costs at
/// least two directory bytes (its id and its bucket count), and a series
/// has at most one bucket per 5 minutes of its block's window (25 in the
/// default 2 h window). 512 per byte allows over 1,000 buckets per series,
/// 3.5 days of 5-minute buckets, far beyond any window, while a damaged or
/// hostile record claiming millions of buckets in a few bytes (fuzz
/// finding `store_rollup-timeout-7fd8e39e`: 4.2 million in 46 bytes, which
/// took seconds to decode) is refused before any column is decoded.
const MAX_BUCKETS_PER_BYTE: usize = 512;

/// Decodes a rollup record, keeping only series `wanted` accepts.
pub(crate) fn decode(bytes: &[u8], wanted: impl Fn(u64) -> bool) -> Result<Vec<(u64, Vec<Bucket>)>, RollupError> {
    let mut rest = keys::verify_checksum(bytes).ok_or(RollupError::Checksum)?;
    let max_buckets = rest.len().saturating_mul(MAX_BUCKETS_PER_BYTE).min(MAX_COLUMN_LEN);
    let window = codec::unzigzag(get_varint(&mut rest)?);
    let max_series = rest.len();
    let n = get_len(&mut rest, max_series)?;
    let mut dir = Vec::with_capacity(n);
    let mut total = 0usize;
    for _ in 0..n {
        let id = get_varint(&mut rest)?;
        let count = get_len(&mut rest, MAX_COLUMN_LEN)?;
        total = total
            .checked_add(count)
            .filter(|t| *t <= max_buckets)
            .ok_or(CodecError::Invalid("more buckets than the record's size allows"))?;
        dir.push((id, count));
    }
    let mut lens = [0usize; 6];
    for l in &mut lens {
        *l = get_len(&mut rest, usize::MAX)?;
    }
    let mut cols: [&[u8]; 6] = [&[]; 6];
    for (c, len) in cols.iter_mut().zip(lens) {
        *c = codec::take(&mut rest, len)?;
    }
    if !rest.is_empty() {
        return Err(CodecError::Invalid("trailing bytes in rollup record").into());
    }
    let starts = timestamps::decode(cols[0], total)?;
    let min = values::decode(cols[1], total)?;
    let max = values::decode(cols[2], total)?;
    let sum = values::decode(cols[3], total)?;
    let last = values::decode(cols[4], total)?;
    let counts = ints::decode(cols[5], total)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    for (id, count) in dir {
        let range = at..at + count;
        at += count;
        if !wanted(id) {
            continue;
        }
        let b = range
            .filter_map(|i| {
                Some(Bucket {
                    start_ms: starts.get(i)?.wrapping_add(window),
                    min: *min.get(i)?,
                    max: *max.get(i)?,
                    sum: *sum.get(i)?,
                    count: *counts.get(i)? as u64,
                    last: *last.get(i)?,
                })
            })
            .collect();
        out.push((id, b));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_the_samples() {
        let stale = f64::from_bits(crate::model::STALE_NAN_BITS);
        let s = [
            (0, 3.0),
            (100_000, 1.0),
            (299_999, 2.0),
            (300_000, 5.0),
            (310_000, stale),
        ];
        let b = buckets(&s, Resolution::FiveMinutes);
        assert_eq!(b.len(), 2);
        assert_eq!(
            (b[0].min, b[0].max, b[0].sum, b[0].count, b[0].last),
            (1.0, 3.0, 6.0, 3, 2.0)
        );
        assert_eq!((b[1].start_ms, b[1].count, b[1].last), (300_000, 1, 5.0));
        let enc = encode(0, &[(4, b.clone()), (5, vec![])]);
        let got = decode(&enc, |_| true).unwrap();
        assert_eq!(got, vec![(4, b), (5, vec![])]);
        assert!(decode(&enc, |id| id == 5).unwrap()[0].1.is_empty());
        let mut bad = enc.clone();
        bad[5] ^= 1;
        assert!(decode(&bad, |_| true).is_err());
    }

    /// Fuzz finding `fuzz/findings/store_rollup-timeout-7fd8e39e`: 46 bytes
    /// whose directory claims about 4.2 million buckets took seconds to
    /// decode (six range-coded columns read past their end as zeros). The
    /// claim is now refused from the record's size, before any column.
    #[test]
    fn a_short_record_claiming_millions_of_buckets_is_refused_at_once() {
        let finding: [u8; 46] = [
            0x7a, 0xf9, 0x09, 0x07, 0x80, 0x8e, 0xee, 0x66, 0x01, 0x07, 0xee, 0x66, 0x01, 0xa6, 0x0c, 0x30, 0xb8, 0x07,
            0x01, 0x01, 0xff, 0xfb, 0x00, 0x00, 0x00, 0xfe, 0xfe, 0xfe, 0x01, 0x02, 0x01, 0x08, 0x00, 0x00, 0x00, 0x02,
            0x01, 0xfc, 0x56, 0x09, 0x01, 0x04, 0x09, 0x04, 0x7f, 0xf8,
        ];
        // As the fuzz target reads it: a first byte other than 0 means
        // "checksum the rest", so the record gets past the checksum.
        let record = keys::checksummed(&finding[1..]);
        let started = std::time::Instant::now();
        let err = decode(&record, |_| true).unwrap_err();
        assert_eq!(
            err,
            RollupError::Codec(CodecError::Invalid("more buckets than the record's size allows"))
        );
        // Generous for a loaded debug build; the finding took seconds.
        assert!(
            started.elapsed() < std::time::Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
    }

    /// The bound leaves real records alone: many constant series, whose
    /// columns code to almost nothing, still decode.
    #[test]
    fn records_of_many_constant_series_still_decode() {
        let b: Vec<Bucket> = (0..24)
            .map(|i| Bucket {
                start_ms: i * 300_000,
                min: 0.0,
                max: 0.0,
                sum: 0.0,
                count: 30,
                last: 0.0,
            })
            .collect();
        let series: Vec<(u64, Vec<Bucket>)> = (0..2000).map(|id| (id, b.clone())).collect();
        let enc = encode(0, &series);
        // The directory alone keeps such records far below the bound.
        let per_byte = 2000 * 24 / enc.len();
        assert!(per_byte * 16 < MAX_BUCKETS_PER_BYTE, "{per_byte} buckets per byte");
        assert_eq!(decode(&enc, |_| true).unwrap(), series);
    }
}
