//! The compact encoding of a batch's sample columns (`Batch.compact`), the
//! one implementation the agent, the collector, the load generator and the
//! wire benchmark share.
//!
//! A plain batch sends every sample's series reference as a varint and its
//! value as 8 raw bytes, every interval again. gRPC compresses each message
//! on its own, so nothing learned from one batch helps the next, and 8
//! bytes of a slowly moving double barely compress. The compact encoding
//! codes each batch against the previous compact batch *of the same
//! stream*, which both ends hold:
//!
//! - **refs**: either "the same list as the previous compact batch" (one
//!   flag; the usual case, one sample per series per cycle) or the list as
//!   zigzag varint deltas from the previous entry (`1, 2, 3, ...` becomes a
//!   run of equal bytes that compresses to almost nothing).
//! - **values**: a bit stream (most significant bit first, the last byte
//!   padded with zeros) of one token per sample, coded against the previous
//!   value of the same series on this stream (0.0, a decimal at scale 0,
//!   before its first). Each series also remembers a bit width `w` (0 at
//!   first):
//!   - `0`: the very same bits as before (any value, NaN payloads included).
//!   - `10`, then `w` bits of `zigzag(d)`: the previous value was the
//!     decimal `r / 10^k`, this one is `(r + d) / 10^k`.
//!   - `110`, 6 bits `n` (1–56), then `n` bits of `zigzag(d)`: the same, and
//!     `w` becomes `n`.
//!   - `1110`, 5 bits `k` (≤ 18), 6 bits `n` (≤ 56), `n` bits of
//!     `zigzag(r)`: the decimal `r / 10^k` (`|r| ≤ 2^53`); the series' scale
//!     becomes `k` for the deltas that follow.
//!   - `1111`, 6 bits `lz`, 6 bits `len − 1`, then `len` bits: the bits XOR
//!     the previous bits, whose `lz` leading and `64 − lz − len` trailing
//!     bits are zero (Gorilla's idea). This carries everything that is not
//!     a short decimal (NaN and its payloads such as the Prometheus stale
//!     marker, ±Inf, -0.0, subnormals, arbitrary doubles), bit-exactly.
//!
//!   The encoder restates the width only when a delta does not fit `w` or
//!   is much narrower, so a series moving by similar steps pays two tag
//!   bits plus its step's width, and one that did not move pays one bit.
//!
//! "Decimal at scale k" is decided by a round trip, as ALP (SIGMOD 2024)
//! does: `r = round(v × 10^k)` must be an integer of at most 2^53 and
//! `r as f64 / 10^k` must give back exactly the bits of `v`. The decoder
//! computes that same IEEE division, so a value the encoder verified decodes
//! bit-exactly on every platform. Temperatures, volts, watts and integer
//! counters are such decimals, so a value moving by a few units of its last
//! digit costs a few bits. The stream is already dense, so the transport's
//! zstd finds little left in it; it still squeezes the series definitions
//! of a stream's first batch.
//!
//! The state is per stream and starts empty, so the first compact batch of
//! a stream is self-contained, and a batch resent from the agent's spool on
//! a new stream (after a reconnect or a collector restart) is re-encoded
//! against that stream's fresh state. Plain batches neither use nor change
//! the state. Encoding is pure and cannot fail; decoding returns a
//! [`ColumnsError`] for anything inconsistent and never panics. After an
//! error the decoder refuses everything, because the two ends' states no
//! longer agree: the collector ends the stream and the agent starts over on
//! a new one.
//!
//! The decoder bounds what a stream can make it hold: at most `max_series`
//! tracked refs (refs below 65536 live in a vector indexed by the ref and
//! count up to the highest one used) and at most [`SAMPLES_PER_SERIES`] ×
//! `max_series` samples per batch.
//!
//! A collector announces that it accepts the encoding in the stream's
//! response headers ([`ENCODINGS_HEADER`]); an agent sends compact batches
//! only then, so an older collector, which would ignore the unknown field
//! and see an empty batch, only ever receives plain ones.

use std::collections::HashMap;

use crate::v1::{Batch, CompactColumns};

/// gRPC response header in which a collector lists the batch encodings it
/// accepts besides plain ones (comma-separated), for example `compact`.
pub const ENCODINGS_HEADER: &str = "hostpulse-batch-encodings";

/// The name of the compact encoding in [`ENCODINGS_HEADER`].
pub const COMPACT: &str = "compact";

/// Whether a value of [`ENCODINGS_HEADER`] lists the compact encoding.
pub fn announces_compact(header: &str) -> bool {
    header.split(',').any(|e| e.trim().eq_ignore_ascii_case(COMPACT))
}

/// Largest decimal scale `k` (values `r / 10^k`).
pub const MAX_SCALE: u8 = 18;

/// Largest magnitude of a scaled integer: every integer up to it is exact
/// in an f64.
const MAX_SCALED: i64 = 1 << 53;

/// `10^k` for `k ≤ MAX_SCALE`; every entry is exact in an f64.
const POW10: [f64; MAX_SCALE as usize + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
];

/// Why a compact batch could not be decoded. Nothing of such a batch may
/// be stored, and the stream's state is then unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ColumnsError {
    /// The batch has `compact` and also plain refs or values.
    #[error("compact columns together with {refs} plain refs and {values} plain values")]
    Mixed {
        /// Plain refs present.
        refs: usize,
        /// Plain values present.
        values: usize,
    },
    /// `same_refs` in the first compact batch of a stream.
    #[error("same_refs set, but this is the first compact batch on the stream")]
    NoPreviousRefs,
    /// A column ended inside a token.
    #[error("{column} column truncated at byte {at}")]
    Truncated {
        /// `refs` or `values`.
        column: &'static str,
        /// Offset where a token was cut off.
        at: usize,
    },
    /// A varint longer than 64 bits.
    #[error("{column} column: varint overflows 64 bits at byte {at}")]
    Overlong {
        /// `refs` or `values`.
        column: &'static str,
        /// Offset of the varint.
        at: usize,
    },
    /// A reference delta leaves the u32 range.
    #[error("refs column: reference {index} is out of range")]
    RefOutOfRange {
        /// Index of the reference.
        index: usize,
    },
    /// Bytes after the last token.
    #[error("{column} column: {extra} bytes after the last token")]
    Trailing {
        /// `refs` or `values`.
        column: &'static str,
        /// How many.
        extra: usize,
    },
    /// A value token that does not fit the series' state.
    #[error("value {index} (series ref {series}): {why}")]
    BadValue {
        /// Index of the sample.
        index: usize,
        /// Its series reference.
        series: u32,
        /// What is wrong.
        why: &'static str,
    },
    /// The stream's state would track more series refs than allowed
    /// (refs below 65536 count up to the highest one used).
    #[error("more than {limit} series refs in the compact state of this stream")]
    TooManySeries {
        /// The limit.
        limit: usize,
    },
    /// More samples in one batch than the decoder allows.
    #[error("more than {limit} samples in one compact batch")]
    TooManySamples {
        /// The limit.
        limit: usize,
    },
    /// An earlier batch on this stream failed to decode.
    #[error("an earlier compact batch on this stream could not be decoded")]
    Poisoned,
}

/// What both ends remember about one series on a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SeriesState {
    /// Bits of the previous value.
    bits: u64,
    /// The previous value as `scaled / 10^scale`, when it was coded as a
    /// decimal.
    scale: Option<u8>,
    scaled: i64,
    /// Bit width of the last explicitly sized decimal delta.
    width: u8,
}

/// Before a series' first value on a stream: 0.0, a decimal at scale 0.
const FRESH: SeriesState = SeriesState {
    bits: 0,
    scale: Some(0),
    scaled: 0,
    width: 0,
};

/// Refs below this are kept in a vector indexed by the ref (agents number
/// their series 1, 2, 3, ... per stream); others in a map.
const DENSE_REFS: u32 = 1 << 16;

/// Per-series states of one stream. A collector holds one per agent
/// stream, so the usual small refs cost 24 bytes each and no hashing; a
/// series never seen is simply [`FRESH`].
#[derive(Debug, Default)]
struct SeriesTable {
    dense: Vec<SeriesState>,
    sparse: HashMap<u32, SeriesState>,
}

impl SeriesTable {
    /// Refs tracked: every dense slot up to the highest ref seen (slot 0
    /// aside), so an upper bound, plus the sparse ones.
    fn tracked(&self) -> usize {
        self.dense.len().saturating_sub(1) + self.sparse.len()
    }

    /// The state of `r`, added as [`FRESH`] if new.
    fn entry(&mut self, r: u32) -> &mut SeriesState {
        if r < DENSE_REFS {
            let i = r as usize;
            if i >= self.dense.len() {
                self.dense.resize(i + 1, FRESH);
            }
            &mut self.dense[i]
        } else {
            self.sparse.entry(r).or_insert(FRESH)
        }
    }

    /// Like [`SeriesTable::entry`], but `None` when adding `r` would track
    /// more than `limit` refs.
    fn entry_within(&mut self, r: u32, limit: usize) -> Option<&mut SeriesState> {
        let added = if r < DENSE_REFS {
            (r as usize + 1).saturating_sub(self.dense.len().max(1))
        } else {
            usize::from(!self.sparse.contains_key(&r))
        };
        if added > 0 && self.tracked() + added > limit {
            return None;
        }
        Some(self.entry(r))
    }
}

/// The state both ends keep per stream.
#[derive(Debug, Default)]
struct StreamState {
    /// Refs of the previous compact batch; `None` before the first.
    refs: Option<Vec<u32>>,
    series: SeriesTable,
}

/// The agent's half: encodes batches against what it sent before on the
/// same stream. Make a new one for every stream.
#[derive(Debug, Default)]
pub struct StreamEncoder {
    state: StreamState,
}

impl StreamEncoder {
    /// An encoder for a new stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves `batch.refs` and `batch.values` into `batch.compact`. A batch
    /// whose columns do not line up is left plain, for the collector to
    /// refuse with its usual message.
    pub fn encode(&mut self, batch: &mut Batch) {
        if batch.compact.is_some() || batch.refs.len() != batch.values.len() {
            return;
        }
        let refs = std::mem::take(&mut batch.refs);
        let values = std::mem::take(&mut batch.values);
        batch.compact = Some(self.encode_columns(refs, &values));
    }

    /// The compact form of parallel `refs` and `values` (equal lengths;
    /// extra entries of the longer one are ignored).
    pub fn encode_columns(&mut self, refs: Vec<u32>, values: &[f64]) -> CompactColumns {
        let n = refs.len().min(values.len());
        let same_refs = self.state.refs.as_deref() == Some(&refs[..n]);
        let mut ref_bytes = Vec::new();
        if !same_refs {
            let mut prev = 0i64;
            for &r in &refs[..n] {
                put_varint(&mut ref_bytes, zigzag(i64::from(r) - prev));
                prev = i64::from(r);
            }
        }
        let mut value_bits = BitWriter::with_capacity(n * 2);
        for (&r, &v) in refs[..n].iter().zip(values) {
            let state = self.state.series.entry(r);
            *state = encode_value(&mut value_bits, *state, v);
        }
        let value_bytes = value_bits.finish();
        let mut refs = refs;
        refs.truncate(n);
        self.state.refs = Some(refs);
        CompactColumns {
            same_refs,
            refs: ref_bytes,
            values: value_bytes,
        }
    }
}

/// The collector's half: decodes compact batches of one stream in the
/// order they arrived. Make a new one for every stream.
#[derive(Debug)]
pub struct StreamDecoder {
    state: StreamState,
    max_series: usize,
    poisoned: bool,
}

impl StreamDecoder {
    /// A decoder for a new stream that refuses to track more than
    /// `max_series` series (so a hostile stream cannot grow it without
    /// bound across batches the collector rejects), and batches of more
    /// than [`SAMPLES_PER_SERIES`] × `max_series` samples (at a byte per
    /// ref and a bit per value, a small message would otherwise decode into
    /// a many times larger one).
    pub fn new(max_series: usize) -> Self {
        StreamDecoder {
            state: StreamState::default(),
            max_series,
            poisoned: false,
        }
    }

    /// Turns a compact batch into a plain one in place (refs and values
    /// filled, `compact` cleared); a plain batch passes unchanged. On error
    /// the batch is unchanged apart from `compact` and the decoder refuses
    /// every later compact batch.
    pub fn decode(&mut self, batch: &mut Batch) -> Result<(), ColumnsError> {
        let Some(compact) = batch.compact.take() else {
            return Ok(());
        };
        if !batch.refs.is_empty() || !batch.values.is_empty() {
            self.poisoned = true;
            return Err(ColumnsError::Mixed {
                refs: batch.refs.len(),
                values: batch.values.len(),
            });
        }
        let (refs, values) = self.decode_columns(&compact)?;
        batch.refs = refs;
        batch.values = values;
        Ok(())
    }

    /// Decodes one compact batch's columns into refs and values.
    pub fn decode_columns(&mut self, compact: &CompactColumns) -> Result<(Vec<u32>, Vec<f64>), ColumnsError> {
        if self.poisoned {
            return Err(ColumnsError::Poisoned);
        }
        let decoded = self.try_decode(compact);
        if decoded.is_err() {
            self.poisoned = true;
        }
        decoded
    }

    fn try_decode(&mut self, compact: &CompactColumns) -> Result<(Vec<u32>, Vec<f64>), ColumnsError> {
        let refs = if compact.same_refs {
            if !compact.refs.is_empty() {
                return Err(ColumnsError::Trailing {
                    column: "refs",
                    extra: compact.refs.len(),
                });
            }
            self.state.refs.clone().ok_or(ColumnsError::NoPreviousRefs)?
        } else {
            decode_refs(&compact.refs, self.max_series.saturating_mul(SAMPLES_PER_SERIES))?
        };
        let mut values = Vec::with_capacity(refs.len());
        let mut reader = BitReader::new(&compact.values);
        for (index, &r) in refs.iter().enumerate() {
            let Some(state) = self.state.series.entry_within(r, self.max_series) else {
                return Err(ColumnsError::TooManySeries { limit: self.max_series });
            };
            let next = decode_value(&mut reader, *state).map_err(|e| match e {
                ValueError::Column(e) => e,
                ValueError::Bad(why) => ColumnsError::BadValue { index, series: r, why },
            })?;
            *state = next;
            values.push(f64::from_bits(next.bits));
        }
        reader.finish()?;
        self.state.refs = Some(refs.clone());
        Ok((refs, values))
    }
}

/// Samples a compact batch may carry per series the stream may track: one
/// per cycle is the usual batch; a little room for batches holding several.
pub const SAMPLES_PER_SERIES: usize = 4;

fn decode_refs(bytes: &[u8], max: usize) -> Result<Vec<u32>, ColumnsError> {
    let mut reader = Reader {
        bytes,
        at: 0,
        column: "refs",
    };
    let mut refs = Vec::with_capacity(bytes.len().min(max));
    let mut prev = 0i64;
    while reader.at < bytes.len() {
        if refs.len() == max {
            return Err(ColumnsError::TooManySamples { limit: max });
        }
        let d = unzigzag(reader.varint()?);
        let r = prev
            .checked_add(d)
            .and_then(|r| u32::try_from(r).ok())
            .ok_or(ColumnsError::RefOutOfRange { index: refs.len() })?;
        refs.push(r);
        prev = i64::from(r);
    }
    Ok(refs)
}

/// `v` as `r / 10^k`, if that gives back exactly its bits.
fn scaled(v: f64, k: u8) -> Option<i64> {
    let p = POW10[usize::from(k)];
    let x = v * p;
    if x.is_nan() || x.abs() > MAX_SCALED as f64 {
        return None;
    }
    let r = x.round() as i64;
    // Checked through the integer, as the decoder computes it: this is what
    // turns -0.0 (whose integer is 0, hence +0.0) away.
    ((r as f64 / p).to_bits() == v.to_bits()).then_some(r)
}

/// Width of a decimal delta that may be sent without restating it: the
/// series' last width, if the delta's own width is at most this much
/// smaller (so one small step does not make every later one restate it).
const WIDTH_SLACK: u8 = 5;

/// Largest bit width of a zigzagged scaled integer or delta (both stay
/// within ±2^54).
const MAX_WIDTH: u8 = 56;

/// Bits of `z` (0 for 0).
fn width_of(z: u64) -> u8 {
    (64 - z.leading_zeros()) as u8
}

/// Appends the token of `v` and returns the series' next state.
fn encode_value(out: &mut BitWriter, state: SeriesState, v: f64) -> SeriesState {
    let bits = v.to_bits();
    if bits == state.bits {
        out.put(0, 1);
        return state;
    }
    if let Some(k) = state.scale
        && let Some(r) = scaled(v, k)
    {
        // r differs from state.scaled, or the bits would be equal; both
        // are within ±2^53.
        let z = zigzag(r - state.scaled);
        let w = width_of(z);
        let width = if w <= state.width && state.width - w <= WIDTH_SLACK {
            out.put(0b10, 2);
            state.width
        } else {
            out.put(0b110, 3);
            out.put(u64::from(w), 6);
            w
        };
        out.put(z, u32::from(width));
        return SeriesState {
            bits,
            scale: Some(k),
            scaled: r,
            width,
        };
    }
    if let Some((k, r)) = (0..=MAX_SCALE).find_map(|k| scaled(v, k).map(|r| (k, r))) {
        let z = zigzag(r);
        let w = width_of(z);
        out.put(0b1110, 4);
        out.put(u64::from(k), 5);
        out.put(u64::from(w), 6);
        out.put(z, u32::from(w));
        return SeriesState {
            bits,
            scale: Some(k),
            scaled: r,
            width: state.width,
        };
    }
    // x != 0 because the bits differ.
    let x = bits ^ state.bits;
    let lz = x.leading_zeros();
    let tz = x.trailing_zeros();
    let len = 64 - lz - tz;
    out.put(0b1111, 4);
    out.put(u64::from(lz), 6);
    out.put(u64::from(len - 1), 6);
    out.put(x >> tz, len);
    SeriesState {
        bits,
        scale: None,
        scaled: 0,
        width: state.width,
    }
}

enum ValueError {
    Column(ColumnsError),
    Bad(&'static str),
}

impl From<ColumnsError> for ValueError {
    fn from(e: ColumnsError) -> Self {
        ValueError::Column(e)
    }
}

/// The decimal `r / 10^k` as a state, if `r` is in the exact range.
fn decimal(r: Option<i64>, k: u8, width: u8) -> Result<SeriesState, ValueError> {
    let r = r
        .filter(|r| r.abs() <= MAX_SCALED)
        .ok_or(ValueError::Bad("decimal outside the exact integer range"))?;
    Ok(SeriesState {
        bits: (r as f64 / POW10[usize::from(k)]).to_bits(),
        scale: Some(k),
        scaled: r,
        width,
    })
}

/// Reads one value token and returns the series' next state (whose bits are
/// the value).
fn decode_value(reader: &mut BitReader<'_>, state: SeriesState) -> Result<SeriesState, ValueError> {
    if reader.read(1)? == 0 {
        return Ok(state);
    }
    if reader.read(1)? == 0 {
        // A delta at the series' last width.
        let k = state
            .scale
            .ok_or(ValueError::Bad("a decimal delta after a value that was not a decimal"))?;
        if state.width == 0 {
            return Err(ValueError::Bad(
                "a decimal delta at the last width before any width was set",
            ));
        }
        let d = unzigzag(reader.read(u32::from(state.width))?);
        return decimal(state.scaled.checked_add(d), k, state.width);
    }
    if reader.read(1)? == 0 {
        // A delta with its width.
        let k = state
            .scale
            .ok_or(ValueError::Bad("a decimal delta after a value that was not a decimal"))?;
        let w = reader.read(6)? as u8;
        if w == 0 || w > MAX_WIDTH {
            return Err(ValueError::Bad("decimal delta width out of range"));
        }
        let d = unzigzag(reader.read(u32::from(w))?);
        return decimal(state.scaled.checked_add(d), k, w);
    }
    if reader.read(1)? == 0 {
        let k = reader.read(5)? as u8;
        if k > MAX_SCALE {
            return Err(ValueError::Bad("decimal scale above 18"));
        }
        let w = reader.read(6)? as u8;
        if w > MAX_WIDTH {
            return Err(ValueError::Bad("decimal width out of range"));
        }
        let r = unzigzag(reader.read(u32::from(w))?);
        return decimal(Some(r), k, state.width);
    }
    let lz = reader.read(6)? as u32;
    let len = reader.read(6)? as u32 + 1;
    if lz + len > 64 {
        return Err(ValueError::Bad("XOR token longer than 64 bits"));
    }
    let x = reader.read(len)? << (64 - lz - len);
    Ok(SeriesState {
        bits: state.bits ^ x,
        scale: None,
        scaled: 0,
        width: state.width,
    })
}

/// Writes bits most significant first, padding the last byte with zeros.
struct BitWriter {
    out: Vec<u8>,
    /// The `used` (< 8) bits not yet written out, in its low end.
    pending: u64,
    used: u32,
}

impl BitWriter {
    fn with_capacity(bytes: usize) -> Self {
        BitWriter {
            out: Vec::with_capacity(bytes),
            pending: 0,
            used: 0,
        }
    }

    /// Appends the low `n` bits of `value` (`n ≤ 64`).
    fn put(&mut self, value: u64, n: u32) {
        if n > 32 {
            self.put(value >> 32, n - 32);
            self.put(value & 0xffff_ffff, 32);
            return;
        }
        // At most 7 pending bits plus 32 new ones: no overflow.
        self.pending = (self.pending << n) | (value & ((1u64 << n) - 1));
        self.used += n;
        while self.used >= 8 {
            self.used -= 8;
            self.out.push((self.pending >> self.used) as u8);
        }
        self.pending &= (1u64 << self.used) - 1;
    }

    fn finish(mut self) -> Vec<u8> {
        if self.used > 0 {
            self.out.push((self.pending << (8 - self.used)) as u8);
        }
        self.out
    }
}

/// Reads what [`BitWriter`] wrote.
struct BitReader<'a> {
    bytes: &'a [u8],
    /// Position in bits.
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        BitReader { bytes, pos: 0 }
    }

    /// The next `n` bits (`n ≤ 64`) as an integer.
    fn read(&mut self, n: u32) -> Result<u64, ColumnsError> {
        let end = self.pos + n as usize;
        if end > self.bytes.len() * 8 {
            return Err(ColumnsError::Truncated {
                column: "values",
                at: self.pos / 8,
            });
        }
        let mut value = 0u64;
        let mut need = n;
        while need > 0 {
            let byte = self.bytes[self.pos / 8];
            let avail = 8 - (self.pos % 8) as u32;
            let take = avail.min(need);
            let chunk = (u32::from(byte) >> (avail - take)) & ((1 << take) - 1);
            value = (value << take) | u64::from(chunk);
            need -= take;
            self.pos += take as usize;
        }
        Ok(value)
    }

    /// Checks that only the zero padding of the last byte is left.
    fn finish(&self) -> Result<(), ColumnsError> {
        let left = self.bytes.len() * 8 - self.pos;
        let padding_is_zero = left < 8
            && self
                .bytes
                .last()
                .is_none_or(|b| left == 0 || b & ((1 << left) - 1) == 0);
        if padding_is_zero {
            Ok(())
        } else {
            Err(ColumnsError::Trailing {
                column: "values",
                extra: left.div_ceil(8),
            })
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    column: &'static str,
}

impl<'a> Reader<'a> {
    /// An unsigned LEB128 varint of at most 64 bits.
    fn varint(&mut self) -> Result<u64, ColumnsError> {
        let start = self.at;
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.bytes.get(self.at) else {
                return Err(ColumnsError::Truncated {
                    column: self.column,
                    at: start,
                });
            };
            self.at += 1;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            value |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ColumnsError::Overlong {
            column: self.column,
            at: start,
        })
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// SplitMix64: a small deterministic generator, so every failure is
    /// reproducible from the printed seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    const STALE: u64 = 0x7ff0_0000_0000_0002;

    /// Values that have broken float codecs before.
    fn adversarial() -> Vec<f64> {
        let mut v = vec![
            0.0,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -f64::NAN,
            f64::from_bits(STALE),
            f64::from_bits(0x7ff8_0000_0000_0001),
            f64::from_bits(0xfff0_0000_0000_0001),
            f64::MIN_POSITIVE,
            f64::from_bits(1),
            -f64::from_bits(1),
            f64::MAX,
            f64::MIN,
            f64::EPSILON,
            (1u64 << 53) as f64,
            -((1u64 << 53) as f64),
            (1u64 << 53) as f64 + 2.0,
            (1u64 << 63) as f64,
            1e18,
            1e-18,
            1e300,
            0.1 + 0.2,
            1.0 / 3.0,
            123.456,
            -0.001,
            9_007_199_254.740_993,
            4_503_599_627_370_495.5,
        ];
        v.extend((0..8).map(|i| f64::from_bits(u64::MAX - i)));
        v
    }

    /// A value for series `s` at step `t` in one of several shapes: a
    /// short decimal moving slowly, a counter, a constant, raw bits, an
    /// adversarial value, or a switch between them.
    fn value(rng: &mut Rng, shape: u64, prev: f64) -> f64 {
        match shape % 7 {
            0 => {
                let k = rng.below(4) as i32;
                ((prev * 10f64.powi(k)).round() + rng.below(7) as f64 - 3.0) / 10f64.powi(k)
            }
            1 => prev + rng.below(1000) as f64,
            2 => prev,
            3 => f64::from_bits(rng.next()),
            4 => {
                let a = adversarial();
                a[rng.below(a.len() as u64) as usize]
            }
            5 => (rng.next() >> 11) as f64 * 1e-3,
            _ => {
                if rng.chance(50) {
                    prev
                } else {
                    (rng.below(1 << 20) as f64 - 5e5) / 10f64.powi(rng.below(19) as i32)
                }
            }
        }
    }

    fn same_bits(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    /// Encodes a stream of batches and decodes it with a fresh decoder.
    fn round_trip(batches: &[(Vec<u32>, Vec<f64>)]) -> Vec<CompactColumns> {
        let mut enc = StreamEncoder::new();
        let mut dec = StreamDecoder::new(usize::MAX);
        let mut out = Vec::new();
        for (i, (refs, values)) in batches.iter().enumerate() {
            let c = enc.encode_columns(refs.clone(), values);
            let (r, v) = dec.decode_columns(&c).unwrap_or_else(|e| panic!("batch {i}: {e}"));
            assert_eq!(&r, refs, "batch {i}");
            assert!(same_bits(&v, values), "batch {i}: {v:?} != {values:?}");
            out.push(c);
        }
        out
    }

    #[test]
    fn random_streams_round_trip_bit_exactly() {
        for seed in 0..300u64 {
            let mut rng = Rng(seed);
            let series = 1 + rng.below(60) as u32;
            let shapes: Vec<u64> = (0..series).map(|_| rng.next()).collect();
            let mut prev: Vec<f64> = (0..series).map(|_| rng.below(100_000) as f64 / 100.0).collect();
            let mut batches = Vec::new();
            for _ in 0..rng.below(40) + 1 {
                let mut refs: Vec<u32> = if rng.chance(70) {
                    (1..=series).collect()
                } else {
                    // Gaps, duplicates and any order, as a plain batch allows.
                    (0..rng.below(2 * u64::from(series)))
                        .map(|_| 1 + rng.below(u64::from(series)) as u32)
                        .collect()
                };
                if rng.chance(3) {
                    refs.push(u32::MAX);
                    refs.push(0);
                }
                let values = refs
                    .iter()
                    .map(|&r| {
                        let i = (r as usize).min(series as usize - 1);
                        let shape = shapes[i] ^ (rng.below(10) / 9);
                        let v = value(&mut rng, shape, prev[i]);
                        prev[i] = v;
                        v
                    })
                    .collect();
                batches.push((refs, values));
            }
            round_trip(&batches);
        }
    }

    #[test]
    fn adversarial_values_round_trip_in_every_order() {
        let a = adversarial();
        let mut batches = Vec::new();
        for shift in 0..a.len() {
            let values: Vec<f64> = (0..a.len()).map(|i| a[(i + shift) % a.len()]).collect();
            batches.push(((1..=a.len() as u32).collect(), values));
            // Each adversarial value after every other one, on one series.
            batches.push((vec![1000], vec![a[shift]]));
        }
        round_trip(&batches);
    }

    #[test]
    fn stale_markers_and_negative_zero_keep_their_bits() {
        let stale = f64::from_bits(STALE);
        let c = round_trip(&[
            (vec![1, 2, 3], vec![21.5, -0.0, stale]),
            (vec![1, 2, 3], vec![stale, 0.0, 21.5]),
            (vec![1, 2, 3], vec![stale, -0.0, 21.5]),
        ]);
        assert!(c[1].same_refs && c[2].same_refs);
    }

    #[test]
    fn steady_batches_cost_under_a_byte_per_sample() {
        // 300 series: a third constant, a third temperatures in tenths,
        // a third integer counters growing by a few hundred.
        let refs: Vec<u32> = (1..=300).collect();
        let values = |t: u64| -> Vec<f64> {
            (0..300u64)
                .map(|i| match i % 3 {
                    0 => 1.0,
                    1 => (400 + (i * 7 + t) % 5) as f64 / 10.0,
                    _ => 1e6 + (t * (100 + i)) as f64,
                })
                .collect()
        };
        let batches: Vec<_> = (0..5).map(|t| (refs.clone(), values(t))).collect();
        let c = round_trip(&batches);
        assert!(
            !c[0].same_refs && c[0].refs.len() == 300,
            "first batch is self-contained"
        );
        for (i, later) in c.iter().enumerate().skip(1) {
            assert!(later.same_refs && later.refs.is_empty());
            // The second batch still states each moving series' step width.
            let limit = if i == 1 { 500 } else { 300 };
            assert!(
                later.values.len() <= limit,
                "batch {i}: {} value bytes",
                later.values.len()
            );
        }
    }

    #[test]
    fn a_new_stream_needs_nothing_from_the_old_one() {
        let batches = [
            (vec![1, 2], vec![1.5, 7.0]),
            (vec![1, 2], vec![1.6, 7.0]),
            (vec![1, 2], vec![1.7, 8.0]),
        ];
        let mut old = StreamEncoder::new();
        old.encode_columns(batches[0].0.clone(), &batches[0].1);
        // The second batch is resent on a new stream: a new encoder and a
        // new decoder, and it decodes alone.
        let mut enc = StreamEncoder::new();
        let mut dec = StreamDecoder::new(10);
        let c = enc.encode_columns(batches[1].0.clone(), &batches[1].1);
        assert!(!c.same_refs);
        assert_eq!(dec.decode_columns(&c).unwrap(), (vec![1, 2], vec![1.6, 7.0]));
        let c = enc.encode_columns(batches[2].0.clone(), &batches[2].1);
        assert_eq!(dec.decode_columns(&c).unwrap(), (vec![1, 2], vec![1.7, 8.0]));
        // A decoder that missed the first batch of its stream cannot go on.
        let mut late = StreamDecoder::new(10);
        let c = StreamEncoder::new().encode_columns(vec![1], &[2.0]);
        let mut enc = StreamEncoder::new();
        enc.encode_columns(vec![1], &[2.0]);
        let second = enc.encode_columns(vec![1], &[2.5]);
        assert_eq!(late.decode_columns(&second), Err(ColumnsError::NoPreviousRefs));
        assert_eq!(late.decode_columns(&c), Err(ColumnsError::Poisoned));
    }

    #[test]
    fn batches_are_converted_in_place_and_plain_ones_pass() {
        let mut enc = StreamEncoder::new();
        let mut dec = StreamDecoder::new(10);
        let plain = Batch {
            seq: 3,
            refs: vec![1, 2],
            values: vec![0.5, 2.0],
            ..Default::default()
        };
        let mut b = plain.clone();
        enc.encode(&mut b);
        assert!(b.refs.is_empty() && b.values.is_empty() && b.compact.is_some());
        dec.decode(&mut b).unwrap();
        assert_eq!(b, plain);
        // A plain batch neither needs nor changes the state.
        let mut p = Batch {
            refs: vec![9],
            values: vec![1.0],
            ..Default::default()
        };
        dec.decode(&mut p).unwrap();
        assert_eq!(p.refs, vec![9]);
        // Misaligned columns stay plain, for the collector to refuse.
        let mut odd = Batch {
            refs: vec![1],
            values: vec![],
            ..Default::default()
        };
        enc.encode(&mut odd);
        assert!(odd.compact.is_none());
    }

    #[test]
    fn malformed_compact_batches_are_named_errors() {
        let check = |c: CompactColumns, want: ColumnsError| {
            let mut dec = StreamDecoder::new(4);
            assert_eq!(dec.decode_columns(&c), Err(want));
        };
        let cols = |same_refs: bool, refs: &[u8], values: &[u8]| CompactColumns {
            same_refs,
            refs: refs.to_vec(),
            values: values.to_vec(),
        };
        check(cols(true, &[], &[]), ColumnsError::NoPreviousRefs);
        check(
            cols(false, &[2], &[]),
            ColumnsError::Truncated {
                column: "values",
                at: 0,
            },
        );
        check(
            cols(false, &[0x80], &[]),
            ColumnsError::Truncated { column: "refs", at: 0 },
        );
        check(cols(false, &[1], &[]), ColumnsError::RefOutOfRange { index: 0 });
        // One '0' token (same value), then a whole byte more.
        check(
            cols(false, &[2], &[0, 0]),
            ColumnsError::Trailing {
                column: "values",
                extra: 2,
            },
        );
        // One '0' token, then padding that is not zero.
        check(
            cols(false, &[2], &[0x01]),
            ColumnsError::Trailing {
                column: "values",
                extra: 1,
            },
        );
        check(
            cols(false, &[0xff; 11], &[]),
            ColumnsError::Overlong { column: "refs", at: 0 },
        );
        let bad = |values: &[u8], index: usize, why: &'static str| {
            check(
                cols(false, &[2, 0], values),
                ColumnsError::BadValue { index, series: 1, why },
            )
        };
        // XOR '1111', 0 leading zeros, 1 bit: -0.0; then a delta '10'.
        bad(
            &[0xf0, 0x00, 0xc0],
            1,
            "a decimal delta after a value that was not a decimal",
        );
        // '10' on a fresh series, which has no width yet.
        bad(&[0x80], 0, "a decimal delta at the last width before any width was set");
        // '110' with width 57.
        bad(&[0xdc, 0x80], 0, "decimal delta width out of range");
        // '1110' with scale 19.
        bad(&[0xe9, 0x80], 0, "decimal scale above 18");
        // '1111' with 63 leading zeros and 2 bits.
        bad(&[0xff, 0xc1], 0, "XOR token longer than 64 bits");
        // '110', width 55, all ones: a delta beyond 2^53.
        bad(
            &[0xdb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            0,
            "decimal outside the exact integer range",
        );
        check(
            cols(false, &[2, 2, 2, 2, 2], &[0; 5]),
            ColumnsError::TooManySeries { limit: 4 },
        );
        // Refs far apart count one each; the limit holds for them too.
        let sparse: Vec<u32> = (0..5).map(|i| u32::MAX - i * 1000).collect();
        check(
            StreamEncoder::new().encode_columns(sparse.clone(), &[1.0; 5]),
            ColumnsError::TooManySeries { limit: 4 },
        );
        let mut dec = StreamDecoder::new(5);
        let c = StreamEncoder::new().encode_columns(sparse.clone(), &[1.0; 5]);
        assert_eq!(dec.decode_columns(&c).unwrap().0, sparse);
        // A byte per ref and a bit per value cannot blow a batch up without bound.
        check(
            StreamEncoder::new().encode_columns(vec![1; 17], &[0.0; 17]),
            ColumnsError::TooManySamples { limit: 16 },
        );
        let mut dec = StreamDecoder::new(4);
        let c = StreamEncoder::new().encode_columns(vec![1; 16], &[0.0; 16]);
        assert_eq!(dec.decode_columns(&c).unwrap().0.len(), 16);
        let mut dec = StreamDecoder::new(4);
        let mut b = Batch {
            refs: vec![1],
            compact: Some(cols(false, &[2], &[0])),
            ..Default::default()
        };
        assert_eq!(dec.decode(&mut b), Err(ColumnsError::Mixed { refs: 1, values: 0 }));
    }

    #[test]
    fn random_bytes_never_panic_the_decoder() {
        let mut rng = Rng(7);
        // Valid encodings with flipped bits or cut short, then pure noise.
        let mut enc = StreamEncoder::new();
        let mut valid = Vec::new();
        let mut prev = 20.0;
        for t in 0..50 {
            let values: Vec<f64> = (0..20).map(|i| value(&mut rng, i + t, prev)).collect();
            prev = values[0];
            valid.push(enc.encode_columns((1..=20).collect(), &values));
        }
        for round in 0..20_000u64 {
            let mut dec = StreamDecoder::new(1000);
            if round % 2 == 0 {
                for c in &valid {
                    let mut c = c.clone();
                    if rng.chance(10) && !c.values.is_empty() {
                        let at = rng.below(c.values.len() as u64) as usize;
                        c.values[at] ^= 1 << rng.below(8);
                    }
                    if rng.chance(5) {
                        let keep = rng.below(c.values.len() as u64 + 1) as usize;
                        c.values.truncate(keep);
                    }
                    if rng.chance(5) && !c.refs.is_empty() {
                        let at = rng.below(c.refs.len() as u64) as usize;
                        c.refs[at] = rng.next() as u8;
                    }
                    let _ = dec.decode_columns(&c);
                }
            } else {
                for _ in 0..rng.below(4) + 1 {
                    let noise = |rng: &mut Rng, n: u64| (0..rng.below(n)).map(|_| rng.next() as u8).collect();
                    let c = CompactColumns {
                        same_refs: rng.chance(30),
                        refs: noise(&mut rng, 40),
                        values: noise(&mut rng, 200),
                    };
                    if let Ok((refs, values)) = dec.decode_columns(&c) {
                        assert_eq!(refs.len(), values.len());
                    }
                }
            }
        }
    }

    #[test]
    fn varints_and_zigzag_cover_the_extremes() {
        for v in [0i64, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
            let mut out = Vec::new();
            put_varint(&mut out, zigzag(v));
            let mut r = Reader {
                bytes: &out,
                at: 0,
                column: "t",
            };
            assert_eq!(r.varint().unwrap(), zigzag(v));
            assert_eq!(r.at, out.len());
        }
        // u64::MAX is 10 bytes with a final 0x01; a final 0x02 overflows.
        let mut max = vec![0xff; 9];
        max.push(0x01);
        let mut r = Reader {
            bytes: &max,
            at: 0,
            column: "t",
        };
        assert_eq!(r.varint().unwrap(), u64::MAX);
        *max.last_mut().unwrap() = 0x02;
        let mut r = Reader {
            bytes: &max,
            at: 0,
            column: "t",
        };
        assert!(matches!(r.varint(), Err(ColumnsError::Overlong { .. })));
    }

    #[test]
    fn the_header_lists_encodings() {
        assert!(announces_compact("compact"));
        assert!(announces_compact("other, Compact"));
        assert!(!announces_compact(""));
        assert!(!announces_compact("compacted"));
    }
}
