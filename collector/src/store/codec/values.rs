//! Value columns. Hardware-health values are mostly short decimals — whole
//! degrees, whole watts, integer counters, seconds with two decimals — so,
//! as in ALP (Afroozeh et al., SIGMOD 2024), the column looks for the
//! fewest decimal places `e` at which every value `v` equals
//! `round(v·10^e) / 10^e` bit for bit, and then codes those integers with
//! delta or delta-of-delta residuals through the range coder (`ints.rs`).
//! Values that do not fit (NaN payloads such as the stale marker, ±Inf,
//! -0.0, too many digits) are kept raw as exceptions. Whichever of that and
//! Gorilla XOR (`gorilla.rs`) is smaller is stored.
//!
//! A third candidate codes the raw bit patterns as integers, delta coded:
//! within one binade a float's bits grow linearly with its value, so large
//! values with fractional noise (bytes free, computed from a float ratio)
//! that moved by whole multiples of 4096 become deltas whose low bits the
//! range coder learns are zero.
//!
//! Layout: tag `2` (bits): the integer column. Tag `0` (decimal): `e`, exception count, then per exception the
//! gap to the previous exception's position and the raw bits (u64 LE), then
//! the integer column. Tag `1`: the Gorilla stream.

use super::{CodecError, MAX_COLUMN_LEN, get_len, get_varint, gorilla, ints, put_varint, take};

const TAG_DECIMAL: u8 = 0;
const TAG_GORILLA: u8 = 1;
const TAG_BITS: u8 = 2;
/// Most decimal places tried; beyond this the integers outgrow f64's exact
/// range for ordinary magnitudes anyway.
const MAX_EXP: usize = 15;
const POW10: [f64; MAX_EXP + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];
/// Decimal places above which a column without exceptions also tries the
/// bit-pattern candidate.
/// Decimal places up to which a column without exceptions does not also
/// try the bit-pattern candidate: on the fleet data it never won there,
/// and skipping it halves a seal's coding work (0.2% more bytes).
const BITS_AFTER_PLACES: usize = 2;
/// Integers past 2^53 are not all exact in f64.
const EXACT_LIMIT: f64 = 9_007_199_254_740_992.0;

/// `v` as an integer at `e` decimal places, if that is exact.
fn scaled(v: f64, e: usize) -> Option<i64> {
    let s = (v * POW10[e]).round();
    // Written so that NaN (from NaN or ±Inf inputs) also fails the test.
    if s.is_nan() || s.abs() >= EXACT_LIMIT {
        return None;
    }
    let i = s as i64;
    (unscaled(i, e).to_bits() == v.to_bits()).then_some(i)
}

/// Inverse of [`scaled`]: dividing by an exact power of ten rounds the
/// quotient once, to the double nearest the decimal.
fn unscaled(i: i64, e: usize) -> f64 {
    i as f64 / POW10[e]
}

/// Fewest decimal places representing `v`, if any up to [`MAX_EXP`].
fn places(v: f64) -> Option<usize> {
    (0..=MAX_EXP).find(|&e| scaled(v, e).is_some())
}

/// Encodes a value column.
pub(crate) fn encode(values: &[f64]) -> Vec<u8> {
    let e = values.iter().filter_map(|&v| places(v)).max().unwrap_or(0);
    let mut ints = Vec::with_capacity(values.len());
    let mut exceptions: Vec<(usize, u64)> = Vec::new();
    for (pos, &v) in values.iter().enumerate() {
        match scaled(v, e) {
            Some(i) => ints.push(i),
            None => {
                exceptions.push((pos, v.to_bits()));
                // Repeat the previous integer so the residual is zero.
                ints.push(ints.last().copied().unwrap_or(0));
            }
        }
    }
    let decimal = (exceptions.len() * 2 <= values.len()).then(|| {
        let mut out = vec![TAG_DECIMAL, e as u8];
        put_varint(&mut out, exceptions.len() as u64);
        let mut last = 0usize;
        for &(pos, bits) in &exceptions {
            put_varint(&mut out, (pos - last) as u64);
            out.extend_from_slice(&bits.to_le_bytes());
            last = pos;
        }
        out.extend(ints::encode_best(&ints));
        out
    });
    // Bit patterns only pay for values with many digits or no decimal
    // form; a clean short decimal column is not worth coding twice.
    let raw_bits = (!exceptions.is_empty() || e > BITS_AFTER_PLACES).then(|| {
        let ints: Vec<i64> = values.iter().map(|v| v.to_bits() as i64).collect();
        let mut out = vec![TAG_BITS];
        out.extend(ints::encode_best(&ints));
        out
    });
    // Gorilla XOR pays for values with many digits; likewise not tried
    // for short clean decimals.
    let gorilla = raw_bits.is_some().then(|| {
        let mut out = vec![TAG_GORILLA];
        out.extend(gorilla::encode(values));
        out
    });
    [decimal, raw_bits, gorilla]
        .into_iter()
        .flatten()
        .min_by_key(Vec::len)
        .unwrap_or_default()
}

/// Decodes `n` values.
pub(crate) fn decode(bytes: &[u8], n: usize) -> Result<Vec<f64>, CodecError> {
    if n > MAX_COLUMN_LEN {
        return Err(CodecError::Invalid("column longer than the limit"));
    }
    let (&tag, mut rest) = bytes.split_first().ok_or(CodecError::Truncated)?;
    match tag {
        TAG_GORILLA => gorilla::decode(rest, n),
        TAG_BITS => {
            let mut out = Vec::new();
            ints::decode_map(rest, n, &mut out, |i| f64::from_bits(i as u64))?;
            Ok(out)
        }
        TAG_DECIMAL => {
            let (&e, r) = rest.split_first().ok_or(CodecError::Truncated)?;
            rest = r;
            let e = usize::from(e);
            if e > MAX_EXP {
                return Err(CodecError::Invalid("decimal places over the limit"));
            }
            let count = get_len(&mut rest, n)?;
            let mut exceptions = Vec::with_capacity(count);
            let mut pos = 0usize;
            for i in 0..count {
                let gap = get_varint(&mut rest)?;
                pos = usize::try_from(gap)
                    .ok()
                    .and_then(|g| pos.checked_add(g))
                    .filter(|&p| p < n && (i == 0 || p > exceptions.last().map_or(0, |&(q, _)| q)))
                    .ok_or(CodecError::Invalid("exception position out of order or range"))?;
                let raw = take(&mut rest, 8)?;
                let mut b = [0u8; 8];
                b.copy_from_slice(raw);
                exceptions.push((pos, u64::from_le_bytes(b)));
            }
            let mut out = Vec::new();
            ints::decode_map(rest, n, &mut out, |i| unscaled(i, e))?;
            for (pos, bits) in exceptions {
                if let Some(slot) = out.get_mut(pos) {
                    *slot = f64::from_bits(bits);
                }
            }
            Ok(out)
        }
        _ => Err(CodecError::Invalid("unknown value encoding")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn bits(v: &[f64]) -> Vec<u64> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    #[test]
    fn decimals_are_detected_and_exceptions_kept() {
        assert_eq!(places(45.0), Some(0));
        assert_eq!(places(12.94), Some(2));
        assert_eq!(places(0.1 + 0.2), None, "17 significant digits");
        assert_eq!(places(f64::NAN), None);
        assert_eq!(places(-0.0), None);
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let v = [12.5, 12.75, -0.0, 13.0, stale, 13.25, f64::INFINITY, 13.5];
        let bytes = encode(&v);
        assert_eq!(bits(&decode(&bytes, v.len()).unwrap()), bits(&v));
        let long: Vec<f64> = (0..500)
            .map(|i| if i == 7 { stale } else { f64::from(i % 7) * 0.25 })
            .collect();
        let bytes = encode(&long);
        assert_eq!(bytes[0], TAG_DECIMAL);
        assert_eq!(bits(&decode(&bytes, long.len()).unwrap()), bits(&long));
    }

    #[test]
    fn whole_numbers_compress_well() {
        let v: Vec<f64> = (0..720).map(|i| 45.0 + f64::from((i / 37) % 3)).collect();
        let bytes = encode(&v);
        assert!(bytes.len() < 720 / 8, "{} bytes", bytes.len());
        assert_eq!(bits(&decode(&bytes, v.len()).unwrap()), bits(&v));
    }

    #[test]
    fn corrupt_columns_are_errors() {
        assert!(decode(&[], 1).is_err());
        assert!(decode(&[9], 1).is_err());
        assert!(decode(&[TAG_DECIMAL, 99], 1).is_err());
        // Exception positions past the column.
        let mut b = vec![TAG_DECIMAL, 0];
        put_varint(&mut b, 1);
        put_varint(&mut b, 5);
        b.extend_from_slice(&[0; 8]);
        assert!(decode(&b, 2).is_err());
    }
}
