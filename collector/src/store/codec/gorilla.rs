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

/// Most-significant-first bit packing.
#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    used: u32,
}

impl BitWriter {
    /// Writes the low `n` (0..=64) bits of `v`, up to a byte at a time.
    fn put(&mut self, v: u64, n: u32) {
        let mut remaining = n;
        while remaining > 0 {
            let used_in_byte = self.used % 8;
            if used_in_byte == 0 {
                self.out.push(0);
            }
            let free = 8 - used_in_byte;
            let take = free.min(remaining);
            let bits = (v >> (remaining - take)) & ((1u64 << take) - 1);
            if let Some(last) = self.out.last_mut() {
                *last |= (bits << (free - take)) as u8;
            }
            self.used += take;
            remaining -= take;
        }
    }

    fn finish(self) -> Vec<u8> {
        self.out
    }
}

struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    /// Reads `n` (0..=64) bits.
    fn get(&mut self, n: u32) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for _ in 0..n {
            let byte = self.bytes.get(self.pos / 8).ok_or(CodecError::Truncated)?;
            v = (v << 1) | u64::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        Ok(v)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
