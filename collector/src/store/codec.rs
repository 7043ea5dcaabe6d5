//! Column codecs of sealed blocks: pure functions from a column of
//! timestamps or values to bytes and back, bit-exact, never panicking on
//! any input bytes.
//!
//! - `range.rs`: an adaptive binary range coder and the integer model every
//!   column goes through (the entropy coding that takes the residuals below
//!   what varint + zstd reaches).
//! - `ints.rs`: a column of integers as raw, delta or delta-of-delta
//!   residuals, range coded.
//! - `timestamps.rs`: timestamps, delta-of-delta.
//! - `values.rs`: values detected as decimals with few digits become scaled
//!   integers (ALP-style), with exceptions for what does not fit (NaN
//!   payloads such as the stale marker, ±Inf, -0.0); otherwise `gorilla.rs`.
//!
//! - `decoded_cache.rs`: the bounded cache of decoded block sections that
//!   readers share (not a codec, but it holds what the codecs produce).
//!
//! Block framing, checksums and the choice of what goes in a block belong to
//! `block.rs`; nothing here knows about sled.

pub(crate) mod decoded_cache;
pub(crate) mod gorilla;
pub(crate) mod ints;
pub(crate) mod range;
pub(crate) mod timestamps;
pub(crate) mod values;

#[cfg(test)]
mod proptests;

/// The test generator, for other modules' tests.
#[cfg(test)]
pub(crate) fn proptests_rng(seed: u64) -> proptests::Rng {
    proptests::Rng::new(seed)
}

/// Why a column could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The bytes end before the column does.
    #[error("column truncated")]
    Truncated,
    /// The bytes are not a column we wrote.
    #[error("invalid column: {0}")]
    Invalid(&'static str),
}

/// Largest number of samples one column may declare; a corrupt count must
/// not make the decoder allocate without bound.
pub(crate) const MAX_COLUMN_LEN: usize = 1 << 22;

/// Appends `v` as an LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads an LEB128 varint from the front of `*input`, advancing it.
pub(crate) fn get_varint(input: &mut &[u8]) -> Result<u64, CodecError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input.split_first().ok_or(CodecError::Truncated)?;
        *input = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            if shift == 63 && b > 1 {
                return Err(CodecError::Invalid("varint overflows 64 bits"));
            }
            return Ok(v);
        }
    }
    Err(CodecError::Invalid("varint longer than 10 bytes"))
}

/// Reads a varint that is a length or count, bounded by `max`.
pub(crate) fn get_len(input: &mut &[u8], max: usize) -> Result<usize, CodecError> {
    let v = get_varint(input)?;
    usize::try_from(v)
        .ok()
        .filter(|l| *l <= max)
        .ok_or(CodecError::Invalid("length over limit"))
}

/// Takes `n` bytes from the front of `*input`.
pub(crate) fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], CodecError> {
    if input.len() < n {
        return Err(CodecError::Truncated);
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

/// Signed to unsigned so small magnitudes of either sign are small.
pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zigzag`].
pub(crate) fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}
