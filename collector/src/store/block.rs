//! Sealed blocks: every sample of one series group (host) in one time
//! window, as one checksummed sled value. A directory up front lists each
//! series' section (id, count, time bounds, column lengths) so a reader
//! decodes only the series and time ranges it was asked for; each section
//! is a timestamp column and a value column (`codec/`), timestamps stored
//! relative to the window start.
//!
//! Payload (after the CRC-32 of `keys::checksummed`): version byte `1`,
//! window start (zigzag varint), section count, then per section series id,
//! sample count, first timestamp − window (zigzag), last − first, timestamp
//! column length, value column length; then all columns in directory order.
//! An empty timestamp column means the section's samples are evenly spaced
//! from its first to its last timestamp (a regular scrape interval, the
//! common case): nothing to code or decode. A non-empty one is never empty
//! (it holds at least its residual-order byte), so blocks written before
//! this shortcut read the same.

use std::ops::Range;

use super::codec::{
    self, CodecError, MAX_COLUMN_LEN, get_len, get_varint, put_varint, timestamps, unzigzag, values, zigzag,
};
use super::keys;

const VERSION: u8 = 1;

/// Why a block could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BlockError {
    /// The checksum does not match: damaged on disk.
    #[error("checksum mismatch")]
    Checksum,
    /// Checksum fine but the content is not a block we understand.
    #[error("{0}")]
    Codec(#[from] CodecError),
}

/// One series' entry in a block's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SectionMeta {
    pub series: u64,
    pub count: usize,
    pub min_ts: i64,
    pub max_ts: i64,
    ts: Range<usize>,
    values: Range<usize>,
}

/// Encodes a block; each entry's samples must be sorted by timestamp with
/// no duplicates. Returns the checksummed value.
pub(crate) fn encode(window: i64, series: &[(u64, &[(i64, f64)])]) -> Vec<u8> {
    let mut dir = Vec::new();
    let mut data = Vec::new();
    let mut sections = 0u64;
    for &(id, samples) in series {
        for chunk in samples.chunks(MAX_COLUMN_LEN) {
            let (Some(first), Some(last)) = (chunk.first(), chunk.last()) else {
                continue;
            };
            let vs: Vec<f64> = chunk.iter().map(|s| s.1).collect();
            let ts_col = if evenly_spaced(chunk) {
                Vec::new()
            } else {
                let ts: Vec<i64> = chunk.iter().map(|s| s.0.wrapping_sub(window)).collect();
                timestamps::encode(&ts)
            };
            let v_col = values::encode(&vs);
            put_varint(&mut dir, id);
            put_varint(&mut dir, chunk.len() as u64);
            put_varint(&mut dir, zigzag(first.0.wrapping_sub(window)));
            put_varint(&mut dir, last.0.wrapping_sub(first.0) as u64);
            put_varint(&mut dir, ts_col.len() as u64);
            put_varint(&mut dir, v_col.len() as u64);
            data.extend(ts_col);
            data.extend(v_col);
            sections += 1;
        }
    }
    let mut payload = vec![VERSION];
    put_varint(&mut payload, zigzag(window));
    put_varint(&mut payload, sections);
    payload.extend(dir);
    payload.extend(data);
    keys::checksummed(&payload)
}

/// Whether `samples` (sorted, no duplicates) are evenly spaced, so their
/// timestamps follow from the directory's first, last and count alone.
fn evenly_spaced(samples: &[(i64, f64)]) -> bool {
    let (Some(first), Some(second), Some(last)) = (samples.first(), samples.get(1), samples.last()) else {
        return true;
    };
    // The whole span must fit an i64, as the reader computes it.
    let (Some(step), Some(_)) = (second.0.checked_sub(first.0), last.0.checked_sub(first.0)) else {
        return false;
    };
    step > 0 && samples.windows(2).all(|w| w[1].0.checked_sub(w[0].0) == Some(step))
}

/// The timestamps of an evenly spaced section (an empty timestamp column):
/// `count` of them from `min_ts` to `max_ts`.
fn evenly_spaced_timestamps(s: &SectionMeta) -> Result<Vec<i64>, CodecError> {
    let span = s.max_ts.wrapping_sub(s.min_ts);
    let step = match s.count {
        0 | 1 => 0,
        n => {
            let gaps = n as i64 - 1;
            if span < 0 || span % gaps != 0 {
                return Err(CodecError::Invalid(
                    "an evenly spaced section whose span is not a whole number of steps",
                ));
            }
            span / gaps
        }
    };
    Ok((0..s.count as i64)
        .map(|i| s.min_ts.wrapping_add(i.wrapping_mul(step)))
        .collect())
}

/// A block whose checksum and directory were checked; columns are decoded
/// on demand.
#[derive(Debug)]
pub(crate) struct BlockView<'a> {
    pub window: i64,
    pub sections: Vec<SectionMeta>,
    data: &'a [u8],
}

/// Verifies and parses a stored block value.
pub(crate) fn parse(bytes: &[u8]) -> Result<BlockView<'_>, BlockError> {
    let payload = keys::verify_checksum(bytes).ok_or(BlockError::Checksum)?;
    let (&version, mut rest) = payload.split_first().ok_or(CodecError::Truncated)?;
    if version != VERSION {
        return Err(CodecError::Invalid("unknown block version").into());
    }
    let window = unzigzag(get_varint(&mut rest)?);
    let max_sections = rest.len();
    let n = get_len(&mut rest, max_sections)?;
    let mut sections = Vec::with_capacity(n);
    let mut offset = 0usize;
    for _ in 0..n {
        let series = get_varint(&mut rest)?;
        let count = get_len(&mut rest, MAX_COLUMN_LEN)?;
        let min_ts = window.wrapping_add(unzigzag(get_varint(&mut rest)?));
        let max_ts = min_ts.wrapping_add(get_varint(&mut rest)? as i64);
        let ts_len = get_len(&mut rest, usize::MAX)?;
        let v_len = get_len(&mut rest, usize::MAX)?;
        let ts = offset..offset.checked_add(ts_len).ok_or(CodecError::Truncated)?;
        let values = ts.end..ts.end.checked_add(v_len).ok_or(CodecError::Truncated)?;
        offset = values.end;
        sections.push(SectionMeta {
            series,
            count,
            min_ts,
            max_ts,
            ts,
            values,
        });
    }
    if offset != rest.len() {
        return Err(CodecError::Invalid("columns do not fill the block").into());
    }
    Ok(BlockView {
        window,
        sections,
        data: rest,
    })
}

impl BlockView<'_> {
    /// Decodes one section's samples.
    pub(crate) fn decode(&self, s: &SectionMeta) -> Result<Vec<(i64, f64)>, BlockError> {
        let col = |r: &Range<usize>| self.data.get(r.clone()).ok_or(codec::CodecError::Truncated);
        let vs = values::decode(col(&s.values)?, s.count)?;
        if s.ts.is_empty() {
            return Ok(evenly_spaced_timestamps(s)?.into_iter().zip(vs).collect());
        }
        let ts = timestamps::decode(col(&s.ts)?, s.count)?;
        Ok(ts.into_iter().map(|t| t.wrapping_add(self.window)).zip(vs).collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sections_round_trip_and_decode_alone() {
        let w = 1_767_225_600_000;
        let a: Vec<(i64, f64)> = (0..720).map(|i| (w + i * 10_000, 40.0 + (i % 5) as f64)).collect();
        let b: Vec<(i64, f64)> = vec![(w + 5, f64::from_bits(crate::model::STALE_NAN_BITS))];
        let bytes = encode(w, &[(7, &a), (9, &[]), (3, &b)]);
        let view = parse(&bytes).unwrap();
        assert_eq!(view.sections.len(), 2, "empty series left out");
        assert_eq!(view.sections[0].series, 7);
        assert_eq!(view.sections[0].min_ts, w);
        assert_eq!(view.sections[0].max_ts, w + 719 * 10_000);
        assert_eq!(view.decode(&view.sections[0]).unwrap(), a);
        let got = view.decode(&view.sections[1]).unwrap();
        assert!(crate::model::is_stale_marker(got[0].1));
    }

    #[test]
    fn evenly_spaced_sections_store_no_timestamps() {
        let w = 1_767_225_600_000;
        let even: Vec<(i64, f64)> = (0..720).map(|i| (w + 3 + i * 10_000, i as f64)).collect();
        let mut jittered = even.clone();
        jittered[100].0 += 1;
        let one = [(w + 7, 1.5)];
        // Steps that overflow an i64 are coded as a column.
        let extreme = [(i64::MIN, 1.0), (0, 2.0), (i64::MAX - 1, 3.0)];
        let wide = [(i64::MIN + 1, 1.0), (0, 2.0)];
        let bytes = encode(w, &[(1, &even), (2, &jittered), (3, &one), (4, &extreme), (5, &wide)]);
        let view = parse(&bytes).unwrap();
        let ts_len: Vec<usize> = view.sections.iter().map(|s| s.ts.len()).collect();
        assert_eq!(ts_len[0], 0, "regular: no column");
        assert!(ts_len[1] > 0, "jitter needs a column");
        assert_eq!(ts_len[2], 0, "a single sample needs no column");
        assert!(ts_len[3] > 0 && ts_len[4] == 0, "{ts_len:?}");
        let all: [&[(i64, f64)]; 5] = [&even, &jittered, &one, &extreme, &wide];
        for (s, want) in view.sections.iter().zip(all) {
            assert_eq!(view.decode(s).unwrap(), want, "series {}", s.series);
        }
        // A directory whose span is not a whole number of steps is refused.
        let bad = SectionMeta {
            series: 1,
            count: 3,
            min_ts: 0,
            max_ts: 5,
            ts: 0..0,
            values: 0..0,
        };
        assert!(evenly_spaced_timestamps(&bad).is_err());
    }

    #[test]
    fn any_damage_is_an_error_not_a_panic() {
        let w = 0;
        let a: Vec<(i64, f64)> = (0..100).map(|i| (i * 1000, i as f64 / 4.0)).collect();
        let bytes = encode(w, &[(1, &a), (2, &a)]);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(parse(&bad).is_err(), "flip at {i}");
        }
        for cut in 0..bytes.len() {
            assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A valid checksum over nonsense is still an error, not a panic.
        for seed in 0..200u64 {
            let mut rng = super::codec::proptests_rng(seed);
            let junk: Vec<u8> = (0..rng.below(80)).map(|_| rng.next() as u8).collect();
            let framed = keys::checksummed(&junk);
            if let Ok(view) = parse(&framed) {
                for s in &view.sections {
                    let _ = view.decode(s);
                }
            }
        }
    }
}
