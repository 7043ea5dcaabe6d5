//! A column of integers as residuals of order 0 (the values), 1 (deltas)
//! or 2 (deltas of deltas), range coded (sign apart from magnitude) with one adaptive
//! [`IntModel`]. Arithmetic wraps, so every `i64` column round-trips
//! whatever its jumps.
//!
//! Layout: one byte naming the order, then the range-coded stream. The
//! column length is not stored: the caller's header holds it.

use super::range::{Decoder, Encoder, IntModel, Lengths, Signs, SplitModel};
use super::{CodecError, MAX_COLUMN_LEN, get_varint, put_varint, unzigzag, zigzag};

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

/// Encodes with whichever of orders 1 and 2 gives fewer bytes, in the
/// split format. When the residuals' bit lengths put one order clearly
/// ahead, that one is used; a close call is settled by encoding the first
/// [`PROBE`] integers both ways. (Estimating from bit lengths alone picked
/// the worse order often enough to cost 2% on the fleet data; encoding the
/// whole column both ways cost half of a seal's CPU.)
pub(crate) fn encode_best(ints: &[i64]) -> Vec<u8> {
    let (first, second) = residual_bits(ints);
    // Clearly ahead: fewer than 7/8 of the other's bits.
    let order = if first * 8 < second * 7 {
        1
    } else if second * 8 < first * 7 {
        2
    } else if ints.len() > 2 * PROBE {
        let probe = &ints[..PROBE];
        if encode_split(probe, 2).len() < encode_split(probe, 1).len() {
            2
        } else {
            1
        }
    } else {
        let a = encode_split(ints, 1);
        let b = encode_split(ints, 2);
        return if b.len() < a.len() { b } else { a };
    };
    encode_split(ints, order)
}

/// Header bytes of the split format start here: `SPLIT + (order − 1) +
/// 2·(a divisor follows) + 4·signs` (signs 0 mixed, 1 all positive, 2 all
/// negative), so 3..=14. Bytes 0..=2 are the older adaptive format.
const SPLIT: u8 = 3;
const SPLIT_LAST: u8 = SPLIT + 11;

/// Residuals of the split format: the first integer is kept in the
/// header; then deltas (order 1), or the first delta and then deltas of
/// deltas (order 2).
fn split_residuals(ints: &[i64], order: u8) -> Vec<i64> {
    let mut out = Vec::with_capacity(ints.len().saturating_sub(1));
    let mut prev_delta = None;
    for w in ints.windows(2) {
        let delta = w[1].wrapping_sub(w[0]);
        out.push(match (order, prev_delta) {
            (2, Some(p)) => delta.wrapping_sub(p),
            _ => delta,
        });
        prev_delta = Some(delta);
    }
    out
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Encodes `ints` in the split format: the header byte (order, whether a
/// divisor follows, the residuals' signs), the divisor (varint, when over
/// 1), the first integer (zigzag varint), and then, when there are
/// residuals, two bytes bounding their bit lengths ([`Lengths`]) and the
/// range-coded residuals, each divided by the greatest common divisor of
/// all of them, with a [`SplitModel`] whose low magnitude bits are direct.
/// Counters in 512-byte units, timestamps in whole seconds and
/// half-degree readings at one decimal place (multiples of 5) lose their
/// common factor entirely.
pub(crate) fn encode_split(ints: &[i64], order: u8) -> Vec<u8> {
    let order = order.clamp(1, 2);
    let residuals = split_residuals(ints, order);
    let mut divisor = 0u64;
    for &r in &residuals {
        let m = r.unsigned_abs();
        if m != 0 && (divisor == 0 || m % divisor != 0) {
            divisor = gcd(divisor, m);
            if divisor == 1 {
                break;
            }
        }
    }
    let divisor = divisor.max(1);
    let magnitudes: Vec<u64> = if divisor == 1 {
        residuals.iter().map(|r| r.unsigned_abs()).collect()
    } else if divisor.is_power_of_two() {
        let shift = divisor.trailing_zeros();
        residuals.iter().map(|r| r.unsigned_abs() >> shift).collect()
    } else {
        residuals.iter().map(|r| r.unsigned_abs() / divisor).collect()
    };
    let signed = || residuals.iter().zip(&magnitudes).map(|(&r, &m)| (r < 0, m));
    let lengths = Lengths::of(signed());
    let signs = match lengths.signs {
        Signs::Mixed => 0,
        Signs::Positive => 1,
        Signs::Negative => 2,
    };
    let mut out = Vec::with_capacity(ints.len() + 16);
    out.push(SPLIT + (order - 1) + 2 * u8::from(divisor > 1) + 4 * signs);
    if divisor > 1 {
        put_varint(&mut out, divisor);
    }
    let Some(&first) = ints.first() else {
        return out;
    };
    put_varint(&mut out, zigzag(first));
    if residuals.is_empty() {
        return out;
    }
    out.push(lengths.min_len | u8::from(lengths.zero) << 7);
    out.push(lengths.max_len);
    let mut enc = Encoder::default();
    let mut model = SplitModel::new(lengths);
    for (negative, m) in signed() {
        model.encode(&mut enc, negative, m);
    }
    out.extend(enc.finish());
    out
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
    if order >= SPLIT {
        return decode_split(order, stream, n, out, f);
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

/// Decodes the split format (header byte `tag` already read).
fn decode_split<T>(
    tag: u8,
    mut stream: &[u8],
    n: usize,
    out: &mut Vec<T>,
    mut f: impl FnMut(i64) -> T,
) -> Result<(), CodecError> {
    if tag > SPLIT_LAST {
        return Err(CodecError::Invalid("unknown residual order"));
    }
    let t = tag - SPLIT;
    let second_order = t & 1 == 1;
    let divisor = if t & 2 != 0 {
        let d = get_varint(&mut stream)?;
        if d < 2 {
            return Err(CodecError::Invalid("split column divisor below 2"));
        }
        d
    } else {
        1
    };
    let signs = match t >> 2 {
        0 => Signs::Mixed,
        1 => Signs::Positive,
        _ => Signs::Negative,
    };
    if n == 0 {
        return Ok(());
    }
    let mut prev = unzigzag(get_varint(&mut stream)?);
    out.reserve(n);
    out.push(f(prev));
    if n == 1 {
        return Ok(());
    }
    let (&b1, rest) = stream.split_first().ok_or(CodecError::Truncated)?;
    let (&max_len, rest) = rest.split_first().ok_or(CodecError::Truncated)?;
    let lengths = Lengths {
        zero: b1 & 0x80 != 0,
        min_len: b1 & 0x7f,
        max_len,
        signs,
    };
    if max_len > 64 || (max_len > 0 && (lengths.min_len == 0 || lengths.min_len > max_len)) {
        return Err(CodecError::Invalid("split column length bounds"));
    }
    let mut dec = Decoder::new(rest);
    let mut model = SplitModel::new(lengths);
    let mut residual = move || {
        let (negative, q) = model.decode(&mut dec);
        let m = q.wrapping_mul(divisor) as i64;
        if negative { m.wrapping_neg() } else { m }
    };
    if second_order {
        let mut delta = residual();
        prev = prev.wrapping_add(delta);
        out.push(f(prev));
        for _ in 2..n {
            delta = delta.wrapping_add(residual());
            prev = prev.wrapping_add(delta);
            out.push(f(prev));
        }
    } else {
        for _ in 1..n {
            prev = prev.wrapping_add(residual());
            out.push(f(prev));
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

    /// Columns the split format has special cases for: empty, one
    /// integer, constant, all-zero residuals, extremes that wrap, common
    /// divisors (power of two and not), one sign only.
    fn split_columns() -> Vec<Vec<i64>> {
        let mut x = 99u64;
        let mut noise = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        vec![
            vec![],
            vec![-7],
            vec![5; 100],
            vec![i64::MIN, i64::MAX, 0, -1, 1, i64::MIN, i64::MIN, i64::MAX],
            (0..64).map(|i| (1u64 << i) as i64).collect(),
            (0..500).map(|_| (noise() % 4096) as i64 * 512).collect(),
            (0..500)
                .scan(1000i64, |c, _| {
                    *c += (noise() % 30) as i64 * 5;
                    Some(*c)
                })
                .collect(),
            (0..500)
                .scan(0i64, |c, _| {
                    *c -= (noise() % 9) as i64 + 1;
                    Some(*c)
                })
                .collect(),
            (0..300).map(|_| noise() as i64).collect(),
            (0..300)
                .map(|i| 1_767_225_600_000 + i * 10_000 + (noise() % 7) as i64 * 1000)
                .collect(),
        ]
    }

    #[test]
    fn split_format_round_trips_and_prefixes() {
        for (c, col) in split_columns().iter().enumerate() {
            for order in 1..=2 {
                let bytes = encode_split(col, order);
                assert!((SPLIT..=SPLIT_LAST).contains(&bytes[0]), "column {c}");
                assert_eq!(decode(&bytes, col.len()).unwrap(), *col, "column {c} order {order}");
                for n in [1, 2, col.len() / 2] {
                    let n = n.min(col.len());
                    let mut prefix = Vec::new();
                    decode_map(&bytes, n, &mut prefix, |v| v).unwrap();
                    assert_eq!(prefix, col[..n], "column {c} order {order} prefix {n}");
                }
            }
            let best = encode_best(col);
            assert_eq!(decode(&best, col.len()).unwrap(), *col, "column {c} best");
        }
    }

    #[test]
    fn split_format_takes_out_common_factors() {
        // Multiples of 512 with random multipliers: 12 bits each, not 21.
        let cols = split_columns();
        assert!(
            encode_split(&cols[5], 1).len() < 500 * 13 / 8,
            "{}",
            encode_split(&cols[5], 1).len()
        );
        // Whole seconds of jitter on 10 s steps: under 6 bits each, less
        // than half of what the adaptive format spends without the divisor.
        let split = encode_split(&cols[9], 2).len();
        assert!(split < 300 * 6 / 8, "{split}");
        assert!(split * 2 < encode(&cols[9], 2).len(), "{split}");
        // A constant column is its header.
        assert!(encode_split(&cols[2], 1).len() <= 5);
    }

    #[test]
    fn damaged_split_columns_decode_without_panicking() {
        for col in split_columns() {
            let bytes = encode_split(&col, 2);
            for cut in 0..bytes.len().min(40) {
                let _ = decode(&bytes[..cut], col.len());
                let mut flipped = bytes.clone();
                flipped[cut] ^= 0x5a;
                let _ = decode(&flipped, col.len());
            }
        }
    }

    #[test]
    fn bad_headers_are_errors() {
        assert_eq!(decode(&[], 1), Err(CodecError::Truncated));
        assert!(decode(&[SPLIT_LAST + 1, 0], 1).is_err());
        // A divisor below 2, and length bounds out of order or past 64.
        assert!(decode(&[SPLIT + 2, 1, 0], 1).is_err());
        assert!(decode(&[SPLIT, 0, 9, 3, 0], 2).is_err());
        assert!(decode(&[SPLIT, 0, 1, 65, 0], 2).is_err());
        assert!(decode(&[SPLIT, 0], 2).is_err(), "length bounds missing");
        assert!(decode(&[1], MAX_COLUMN_LEN + 1).is_err());
    }
}
