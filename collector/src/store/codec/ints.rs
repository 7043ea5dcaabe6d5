//! A column of integers as residuals of order 0 (the values), 1 (deltas)
//! or 2 (deltas of deltas), range coded (sign apart from magnitude) with one adaptive
//! [`IntModel`]. Arithmetic wraps, so every `i64` column round-trips
//! whatever its jumps.
//!
//! Layout: one byte naming the order, then the range-coded stream. The
//! column length is not stored: the caller's header holds it.

use super::range::{Decoder, Encoder, IntModel};
use super::{CodecError, MAX_COLUMN_LEN};

/// Encodes `ints` with residuals of the given order (0, 1 or 2).
pub(crate) fn encode(ints: &[i64], order: u8) -> Vec<u8> {
    let mut enc = Encoder::default();
    let mut model = IntModel::default();
    let (mut prev, mut prev_delta) = (0i64, 0i64);
    for &v in ints {
        let delta = v.wrapping_sub(prev);
        let residual = match order {
            0 => v,
            1 => delta,
            _ => delta.wrapping_sub(prev_delta),
        };
        model.encode(&mut enc, residual);
        prev = v;
        prev_delta = delta;
    }
    let mut out = vec![order.min(2)];
    out.extend(enc.finish());
    out
}

/// Encodes with whichever of orders 1 and 2 gives fewer bytes. When the
/// residuals' bit lengths put one order clearly ahead, that one is used;
/// a close call is settled by encoding the first [`PROBE`] integers both
/// ways. (Estimating from bit lengths alone picked the worse order often
/// enough to cost 2% on the fleet data; encoding the whole column both
/// ways cost half of a seal's CPU, and a 32-integer probe costs under 0.1% in bytes on the fleet data.)
pub(crate) fn encode_best(ints: &[i64]) -> Vec<u8> {
    let (first, second) = residual_bits(ints);
    // Clearly ahead: fewer than 7/8 of the other's bits.
    let order = if first * 8 < second * 7 {
        1
    } else if second * 8 < first * 7 {
        2
    } else if ints.len() > 2 * PROBE {
        let probe = &ints[..PROBE];
        if encode(probe, 2).len() < encode(probe, 1).len() {
            2
        } else {
            1
        }
    } else {
        let a = encode(ints, 1);
        let b = encode(ints, 2);
        return if b.len() < a.len() { b } else { a };
    };
    encode(ints, order)
}

/// Integers of a column's start that settle a close call between orders.
const PROBE: usize = 32;

/// Total bit lengths of the order-1 and order-2 residual magnitudes, plus
/// one per residual: a rough cost of each order.
fn residual_bits(ints: &[i64]) -> (u64, u64) {
    let bits = |r: i64| u64::from(65 - r.unsigned_abs().leading_zeros());
    let (mut prev, mut prev_delta) = (0i64, 0i64);
    let (mut first, mut second) = (0u64, 0u64);
    for &v in ints {
        let delta = v.wrapping_sub(prev);
        first += bits(delta);
        second += bits(delta.wrapping_sub(prev_delta));
        prev = v;
        prev_delta = delta;
    }
    (first, second)
}

/// Decodes `n` integers from `bytes` (all of which belong to the column).
pub(crate) fn decode(bytes: &[u8], n: usize) -> Result<Vec<i64>, CodecError> {
    let mut out = Vec::new();
    decode_map(bytes, n, &mut out, |v| v)?;
    Ok(out)
}

/// Decodes the first `n` integers of the column in `bytes` (a prefix is
/// fine: the stream is sequential, so a reader that needs only the samples
/// up to some time stops there) and appends `f` of each to `out`, so a
/// caller converting to another type (scaled decimals, float bits) needs no
/// intermediate vector. The residual order is matched once, outside the
/// per-integer loop.
pub(crate) fn decode_map<T>(
    bytes: &[u8],
    n: usize,
    out: &mut Vec<T>,
    mut f: impl FnMut(i64) -> T,
) -> Result<(), CodecError> {
    if n > MAX_COLUMN_LEN {
        return Err(CodecError::Invalid("column longer than the limit"));
    }
    let (&order, stream) = bytes.split_first().ok_or(CodecError::Truncated)?;
    if order > 2 {
        return Err(CodecError::Invalid("unknown residual order"));
    }
    let mut dec = Decoder::new(stream);
    let mut model = IntModel::default();
    out.reserve(n);
    match order {
        0 => {
            for _ in 0..n {
                out.push(f(model.decode(&mut dec)));
            }
        }
        1 => {
            let mut prev = 0i64;
            for _ in 0..n {
                prev = prev.wrapping_add(model.decode(&mut dec));
                out.push(f(prev));
            }
        }
        _ => {
            let (mut prev, mut delta) = (0i64, 0i64);
            for _ in 0..n {
                delta = delta.wrapping_add(model.decode(&mut dec));
                prev = prev.wrapping_add(delta);
                out.push(f(prev));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_order_round_trips_extremes() {
        let cols: [&[i64]; 4] = [
            &[],
            &[i64::MIN, i64::MAX, 0, -1, 1, i64::MIN, i64::MIN],
            &[5; 100],
            &[1, 2, 4, 8, 16, -32, 1 << 62, -(1 << 62)],
        ];
        for col in cols {
            for order in 0..=2 {
                let bytes = encode(col, order);
                assert_eq!(decode(&bytes, col.len()).unwrap(), col, "order {order}");
                // Any prefix decodes to the same leading integers.
                let mut prefix = Vec::new();
                decode_map(&bytes, col.len() / 2, &mut prefix, |v| v).unwrap();
                assert_eq!(prefix, col[..col.len() / 2], "order {order} prefix");
            }
        }
    }

    #[test]
    fn bad_headers_are_errors() {
        assert_eq!(decode(&[], 1), Err(CodecError::Truncated));
        assert!(decode(&[3, 0], 1).is_err());
        assert!(decode(&[1], MAX_COLUMN_LEN + 1).is_err());
    }
}
