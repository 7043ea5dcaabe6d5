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

/// Encodes with whichever of orders 1 and 2 gives fewer bytes. (Both are
/// encoded: estimating from residual sizes picked the worse order often
/// enough to cost 2% on the fleet data.)
pub(crate) fn encode_best(ints: &[i64]) -> Vec<u8> {
    let a = encode(ints, 1);
    let b = encode(ints, 2);
    if b.len() < a.len() { b } else { a }
}

/// Decodes `n` integers from `bytes` (all of which belong to the column).
pub(crate) fn decode(bytes: &[u8], n: usize) -> Result<Vec<i64>, CodecError> {
    if n > MAX_COLUMN_LEN {
        return Err(CodecError::Invalid("column longer than the limit"));
    }
    let (&order, stream) = bytes.split_first().ok_or(CodecError::Truncated)?;
    if order > 2 {
        return Err(CodecError::Invalid("unknown residual order"));
    }
    let mut dec = Decoder::new(stream);
    let mut model = IntModel::default();
    let mut out = Vec::with_capacity(n);
    let (mut prev, mut prev_delta) = (0i64, 0i64);
    for _ in 0..n {
        let residual = model.decode(&mut dec);
        let v = match order {
            0 => residual,
            1 => prev.wrapping_add(residual),
            _ => prev.wrapping_add(prev_delta.wrapping_add(residual)),
        };
        prev_delta = v.wrapping_sub(prev);
        prev = v;
        out.push(v);
    }
    Ok(out)
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
