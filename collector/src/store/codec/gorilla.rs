//! Gorilla XOR coding of float columns (Pelkonen et al., VLDB 2015), the
//! fallback for values that are not short decimals: each value is XORed
//! with the previous one and only the meaningful bits are written, reusing
//! the previous leading/trailing-zero window when the new bits fit in it.
//! Works on raw bit patterns, so every NaN payload, ±Inf and -0.0 survives.

use super::{CodecError, MAX_COLUMN_LEN};

/// Encodes `values`' bit patterns.
pub(crate) fn encode(values: &[f64]) -> Vec<u8> {
    let mut w = BitWriter::default();
    let mut prev = 0u64;
    let (mut lead, mut trail) = (u32::MAX, 0u32);
    for v in values {
        let bits = v.to_bits();
        let x = bits ^ prev;
        prev = bits;
        if x == 0 {
            w.put(0, 1);
            continue;
        }
        w.put(1, 1);
        let (l, t) = (x.leading_zeros().min(63), x.trailing_zeros());
        if lead != u32::MAX && l >= lead && t >= trail {
            w.put(0, 1);
            w.put(x >> trail, 64 - lead - trail);
        } else {
            w.put(1, 1);
            let len = 64 - l - t;
            w.put(u64::from(l), 6);
            // len is 1..=64; stored as len-1 in 6 bits.
            w.put(u64::from(len - 1), 6);
            w.put(x >> t, len);
            (lead, trail) = (l, t);
        }
    }
    w.finish()
}

/// Decodes `n` values.
pub(crate) fn decode(bytes: &[u8], n: usize) -> Result<Vec<f64>, CodecError> {
    if n > MAX_COLUMN_LEN {
        return Err(CodecError::Invalid("column longer than the limit"));
    }
    let mut r = BitReader { bytes, pos: 0 };
    let mut out = Vec::with_capacity(n);
    let mut prev = 0u64;
    let (mut lead, mut trail) = (u32::MAX, 0u32);
    for _ in 0..n {
        if r.get(1)? == 1 {
            if r.get(1)? == 0 {
                if lead == u32::MAX {
                    return Err(CodecError::Invalid("window reused before one was set"));
                }
                prev ^= r.get(64 - lead - trail)? << trail;
            } else {
                let l = r.get(6)? as u32;
                let len = r.get(6)? as u32 + 1;
                if l + len > 64 {
                    return Err(CodecError::Invalid("xor window wider than 64 bits"));
                }
                let t = 64 - l - len;
                prev ^= r.get(len)? << t;
                (lead, trail) = (l, t);
            }
        }
        out.push(f64::from_bits(prev));
    }
    Ok(out)
}

/// Most-significant-first bit packing through a 64-bit accumulator.
#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    /// The low `pending` bits are written but not yet in `out` (< 8).
    acc: u64,
    pending: u32,
}

impl BitWriter {
    /// Writes the low `n` (0..=64) bits of `v`.
    #[inline]
    fn put(&mut self, v: u64, n: u32) {
        if n > 32 {
            self.put(v >> 32, n - 32);
            self.put(v & 0xFFFF_FFFF, 32);
            return;
        }
        if n == 0 {
            return;
        }
        // At most 7 + 32 bits are pending after this, so nothing valid is
        // shifted out of the accumulator.
        self.acc = (self.acc << n) | (v & ((1u64 << n) - 1));
        self.pending += n;
        while self.pending >= 8 {
            self.pending -= 8;
            self.out.push((self.acc >> self.pending) as u8);
        }
    }

    /// The bytes, the last one padded with zero bits.
    fn finish(mut self) -> Vec<u8> {
        if self.pending > 0 {
            self.out.push((self.acc << (8 - self.pending)) as u8);
        }
        self.out
    }
}

struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    /// Reads `n` (0..=64) bits, up to a byte at a time.
    fn get(&mut self, n: u32) -> Result<u64, CodecError> {
        let mut v = 0u64;
        let mut remaining = n;
        while remaining > 0 {
            let byte = self.bytes.get(self.pos / 8).ok_or(CodecError::Truncated)?;
            let left_in_byte = 8 - (self.pos % 8) as u32;
            let take = left_in_byte.min(remaining);
            let bits = (u64::from(*byte) >> (left_in_byte - take)) & ((1u64 << take) - 1);
            // take <= 8, so for a 64-bit read the first shift is of zero bits.
            v = (v << take) | bits;
            self.pos += take as usize;
            remaining -= take;
        }
        Ok(v)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The bit layout is on disk: the accumulator writer and the bytewise
    /// reader must match a bit-at-a-time reference exactly.
    #[test]
    fn packing_matches_a_bit_at_a_time_reference() {
        let mut rng = super::super::proptests_rng(7);
        for _ in 0..200 {
            let fields: Vec<(u64, u32)> = (0..rng.below(40))
                .map(|_| {
                    let n = rng.below(65) as u32;
                    (rng.next(), n)
                })
                .collect();
            let mut w = BitWriter::default();
            let mut reference: Vec<bool> = Vec::new();
            for &(v, n) in &fields {
                w.put(v, n);
                reference.extend((0..n).rev().map(|i| (v >> i) & 1 == 1));
            }
            let bytes = w.finish();
            let mut want = vec![0u8; reference.len().div_ceil(8)];
            for (i, &bit) in reference.iter().enumerate() {
                if bit {
                    want[i / 8] |= 0x80 >> (i % 8);
                }
            }
            assert_eq!(bytes, want);
            let mut r = BitReader { bytes: &bytes, pos: 0 };
            for &(v, n) in &fields {
                let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
                assert_eq!(r.get(n).unwrap(), v & mask, "{n} bits");
            }
        }
    }

    #[test]
    fn bit_patterns_survive() {
        let v = [
            0.0,
            -0.0,
            f64::NAN,
            f64::from_bits(0x7ff0_0000_0000_0002),
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            f64::from_bits(1),
            f64::MAX,
            1.5,
            1.5,
            -2.25,
        ];
        let bytes = encode(&v);
        let got = decode(&bytes, v.len()).unwrap();
        assert_eq!(
            got.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
            v.iter().map(|f| f.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(decode(&bytes[..1], v.len()), Err(CodecError::Truncated));
    }
}
