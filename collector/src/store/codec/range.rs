//! An adaptive binary range coder (the LZMA construction: probabilities
//! nudged toward each coded bit, carry-propagating byte output) and
//! [`IntModel`], which codes signed integers through it.
//!
//! An integer is coded as the bit length `k` of its magnitude (a 6-bit
//! binary tree whose probabilities depend on whether the previous integer
//! was zero, so runs of unchanged values get their own statistics), its
//! sign, and then the `k-1` bits below the magnitude's top bit: the two
//! highest with probabilities per `k` (the shape of the distribution), the
//! rest per absolute bit position. That last part is what learns structure
//! such as "the low 9 bits are always zero" (counters in 512-byte units)
//! without being told.
//!
//! The decoder reads zeros past the end of its input rather than failing:
//! a column's length is known from its header, so a short stream can only
//! yield wrong values, which the block checksum already guards against.

const PROB_BITS: u32 = 12;
const PROB_ONE: i32 = 1 << PROB_BITS;
/// Probabilities stay this far from 0 and 1 so no bit ever costs more than
/// about 9 bits and the coder's range never collapses.
const PROB_MARGIN: i32 = 8;
/// After this many observations a probability stops averaging and starts
/// forgetting: each bit then moves it 1/(RATE_LIMIT+2) of the way, so it
/// follows a series whose behaviour drifts within a block.
const RATE_LIMIT: u8 = 40;
const TOP: u32 = 1 << 24;

/// An adaptive probability that the next bit is 0. While young it is the
/// running frequency (so a context seen a dozen times already predicts
/// well, which matters with hundreds of contexts and short columns); later
/// an exponential average.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Prob {
    p: u16,
    seen: u8,
}

impl Default for Prob {
    fn default() -> Self {
        Prob {
            p: (PROB_ONE / 2) as u16,
            seen: 0,
        }
    }
}

/// `RECIPROCAL[d]` is `floor(2^32 / d) + 1`: multiplying by it and
/// shifting right by 32 divides any numerator below 2^16 by `d` exactly
/// (the error `x·(RECIPROCAL[d]·d − 2^32)/2^32` stays below `1/d` while
/// `x·d < 2^32`). The update below runs once per coded bit, and a hardware
/// division there was most of the decoder's time.
const RECIPROCAL: [u64; 64] = {
    let mut t = [0u64; 64];
    let mut d = 1;
    while d < RATE_LIMIT as usize + 3 {
        t[d] = (1u64 << 32) / d as u64 + 1;
        d += 1;
    }
    t
};

impl Prob {
    /// Moves the probability toward the coded bit by `1/(seen + 2)` of the
    /// distance, rounding the step toward zero (as `i32` division did when
    /// the format was defined; the decoder must reproduce it exactly).
    #[inline(always)]
    fn update(&mut self, bit: bool) {
        let p = u32::from(self.p);
        // seen <= RATE_LIMIT, so the mask never changes the index; it
        // lets the compiler drop the bounds check.
        let recip = RECIPROCAL[(usize::from(self.seen) + 2) & 63];
        // Both directions computed and one chosen, so no branch on the bit.
        let down = p - ((u64::from(p) * recip) >> 32) as u32;
        let up = p + ((u64::from(PROB_ONE as u32 - p) * recip) >> 32) as u32;
        let next = if bit { down } else { up };
        self.p = next.clamp(PROB_MARGIN as u32, (PROB_ONE - PROB_MARGIN) as u32) as u16;
        self.seen = (self.seen + 1).min(RATE_LIMIT);
    }
}

/// Range encoder writing to a byte vector.
pub(crate) struct Encoder {
    low: u64,
    range: u32,
    cache: u8,
    cache_size: u64,
    out: Vec<u8>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            low: 0,
            range: u32::MAX,
            cache: 0,
            cache_size: 1,
            out: Vec::new(),
        }
    }
}

impl Encoder {
    /// Codes one bit with an adaptive probability.
    #[inline(always)]
    pub(crate) fn bit(&mut self, p: &mut Prob, bit: bool) {
        let bound = (self.range >> PROB_BITS) * u32::from(p.p);
        // Without branches on the bit: mantissa bits are close to random,
        // and a mispredicted branch per bit was most of the encoder's time.
        let mask = u32::from(bit).wrapping_neg();
        self.low += u64::from(bound & mask);
        self.range = (bound & !mask) | (self.range.wrapping_sub(bound) & mask);
        p.update(bit);
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
    }

    /// Codes the low `k` bits of `v` (`k <= 16`) as equally likely, with
    /// no probability: one multiply instead of `k` adaptive bits. For
    /// bits the model cannot predict (the low bits of a magnitude).
    #[inline(always)]
    pub(crate) fn direct(&mut self, v: u32, k: u32) {
        debug_assert!(k <= 16 && u64::from(v) < 1u64 << k);
        // range >= 2^24 here, so r >= 2^8; v·r < range keeps `low` within
        // the carry bit, as in `bit`.
        let r = self.range >> k;
        self.low += u64::from(v & ((1u32 << k) - 1)) * u64::from(r);
        self.range = r;
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
    }

    /// Codes the low `depth` bits of `symbol`, highest first, through a
    /// binary tree of probabilities: node 1 is the root and node `n`'s
    /// children are `2n` and `2n + 1`, so each bit is conditioned on the
    /// ones above it. `N` (a power of two) must exceed `2^depth − 1`.
    #[inline(always)]
    pub(crate) fn tree<const N: usize>(&mut self, probs: &mut [Prob; N], depth: u32, symbol: usize) {
        let mut node = 1usize;
        for i in (0..depth).rev() {
            let bit = (symbol >> i) & 1 == 1;
            // node < N throughout; the mask lets the compiler drop the bounds check.
            self.bit(&mut probs[node & (N - 1)], bit);
            node = (node << 1) | usize::from(bit);
        }
    }

    fn shift_low(&mut self) {
        if (self.low as u32) < 0xFF00_0000 || (self.low >> 32) != 0 {
            let carry = (self.low >> 32) as u8;
            let mut byte = self.cache;
            loop {
                self.out.push(byte.wrapping_add(carry));
                byte = 0xFF;
                self.cache_size -= 1;
                if self.cache_size == 0 {
                    break;
                }
            }
            self.cache = ((self.low >> 24) & 0xFF) as u8;
        }
        self.cache_size += 1;
        self.low = (self.low & 0x00FF_FFFF) << 8;
    }

    /// Ends the stream and returns its bytes.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        for _ in 0..5 {
            self.shift_low();
        }
        // The first byte is always the initial zero cache; leave it out.
        if !self.out.is_empty() {
            self.out.remove(0);
        }
        // Trailing zero bytes are implied: the decoder reads zeros past the end.
        while self.out.last() == Some(&0) {
            self.out.pop();
        }
        self.out
    }
}

/// Range decoder over a byte slice.
pub(crate) struct Decoder<'a> {
    code: u32,
    range: u32,
    input: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    /// Starts decoding `input` (as produced by [`Encoder::finish`]).
    pub(crate) fn new(input: &'a [u8]) -> Self {
        let mut d = Decoder {
            code: 0,
            range: u32::MAX,
            input,
            pos: 0,
        };
        for _ in 0..4 {
            d.code = (d.code << 8) | u32::from(d.next_byte());
        }
        d
    }

    #[inline(always)]
    fn next_byte(&mut self) -> u8 {
        let b = self.input.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// Decodes one bit coded with the mirrored probability.
    #[inline(always)]
    pub(crate) fn bit(&mut self, p: &mut Prob) -> bool {
        let bound = (self.range >> PROB_BITS) * u32::from(p.p);
        let bit = self.code >= bound;
        // Branch-free, as in the encoder.
        let mask = u32::from(bit).wrapping_neg();
        self.code = self.code.wrapping_sub(bound & mask);
        self.range = (bound & !mask) | (self.range.wrapping_sub(bound) & mask);
        p.update(bit);
        // Probabilities stay >= PROB_MARGIN/PROB_ONE, so at most two bytes
        // are ever needed; the loop runs zero times for most bits.
        while self.range < TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | u32::from(self.next_byte());
        }
        bit
    }
}

impl Decoder<'_> {
    /// Decodes a `depth`-bit symbol coded by [`Encoder::tree`].
    #[inline(always)]
    pub(crate) fn tree<const N: usize>(&mut self, probs: &mut [Prob; N], depth: u32) -> usize {
        let mut node = 1usize;
        for _ in 0..depth {
            let bit = self.bit(&mut probs[node & (N - 1)]);
            node = (node << 1) | usize::from(bit);
        }
        node - (1 << depth)
    }

    /// Decodes `k` bits (`k <= 16`) coded by [`Encoder::direct`]. On
    /// damaged input the result is clamped to `k` bits, never a panic.
    #[inline(always)]
    pub(crate) fn direct(&mut self, k: u32) -> u32 {
        let r = (self.range >> k).max(1);
        let v = (self.code / r).min((1u32 << k) - 1);
        self.code = self.code.wrapping_sub(v * r);
        self.range = r;
        while self.range < TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | u32::from(self.next_byte());
        }
        v
    }
}

/// The length tree is conditioned on whether the previous integer was zero
/// (runs of unchanged values have their own statistics). Finer classes of
/// the previous length were measured on the fleet data and cost more in
/// learning than they gained: 1.2% more bytes with eight classes.
const CONTEXTS: usize = 2;

/// Adaptive model of a stream of unsigned 64-bit integers.
pub(crate) struct IntModel {
    /// Per context: a 64-leaf binary tree over the bit length (0..=63 codes
    /// lengths 0..=63; length 64 shares leaf 63 plus one escape bit).
    length: Vec<[Prob; 64]>,
    /// Escape between bit length 63 and 64.
    length64: Prob,
    /// Sign of a nonzero integer, by the previous integer's sign.
    sign: [Prob; 3],
    prev_sign: usize,
    /// The two bits right below the top bit, per bit length: the shape of
    /// the magnitude distribution.
    shape: Vec<[Prob; 2]>,
    /// Every lower bit, per absolute position: learns fixed low bits (units
    /// of 512 bytes, even numbers) once for all lengths.
    low: [Prob; 64],
    prev_len: usize,
}

impl Default for IntModel {
    fn default() -> Self {
        IntModel {
            length: vec![[Prob::default(); 64]; CONTEXTS],
            length64: Prob::default(),
            sign: [Prob::default(); 3],
            prev_sign: 1,
            shape: vec![[Prob::default(); 2]; 65],
            low: [Prob::default(); 64],
            prev_len: 0,
        }
    }
}

impl IntModel {
    /// Codes `v`: magnitude length, sign, then the magnitude's lower bits.
    /// (Sign apart from magnitude rather than zigzag, so that a column
    /// moving by ±k·2^n keeps its n zero low bits whatever the sign.)
    pub(crate) fn encode(&mut self, enc: &mut Encoder, v: i64) {
        let u = v.unsigned_abs();
        let len = 64 - u.leading_zeros() as usize;
        let tree = &mut self.length[usize::from(self.prev_len > 0).min(CONTEXTS - 1)];
        let leaf = len.min(63);
        enc.tree(tree, 6, leaf);
        if leaf == 63 {
            enc.bit(&mut self.length64, len == 64);
        }
        if len > 0 {
            enc.bit(&mut self.sign[self.prev_sign], v < 0);
            // The two bits below the top one with the per-length shape
            // probabilities, the rest with per-position ones.
            let shape = &mut self.shape[len];
            if len >= 2 {
                enc.bit(&mut shape[0], (u >> (len - 2)) & 1 == 1);
            }
            if len >= 3 {
                enc.bit(&mut shape[1], (u >> (len - 3)) & 1 == 1);
            }
            for pos in (0..len.saturating_sub(3)).rev() {
                enc.bit(&mut self.low[pos & 63], (u >> pos) & 1 == 1);
            }
        }
        self.prev_sign = usize::from(v >= 0) + usize::from(v > 0);
        self.prev_len = len;
    }

    /// Decodes one integer.
    #[inline(always)]
    pub(crate) fn decode(&mut self, dec: &mut Decoder<'_>) -> i64 {
        let tree = &mut self.length[usize::from(self.prev_len > 0).min(CONTEXTS - 1)];
        let mut len = dec.tree(tree, 6);
        if len == 63 && dec.bit(&mut self.length64) {
            len = 64;
        }
        let mut u = 0u64;
        let mut negative = false;
        if len > 0 {
            negative = dec.bit(&mut self.sign[self.prev_sign]);
            u = 1u64 << (len - 1);
            // The two bits below the top one are coded with the per-length
            // shape probabilities, the rest with per-position ones;
            // unrolled so the loop below has no branch on the position.
            let shape = &mut self.shape[len];
            if len >= 2 && dec.bit(&mut shape[0]) {
                u |= 1 << (len - 2);
            }
            if len >= 3 && dec.bit(&mut shape[1]) {
                u |= 1 << (len - 3);
            }
            for pos in (0..len.saturating_sub(3)).rev() {
                if dec.bit(&mut self.low[pos & 63]) {
                    u |= 1 << pos;
                }
            }
        }
        self.prev_len = len;
        // Magnitude 2^63 with the sign set is i64::MIN; wrapping keeps it.
        let v = if negative { (u as i64).wrapping_neg() } else { u as i64 };
        self.prev_sign = usize::from(v >= 0) + usize::from(v > 0);
        v
    }
}

/// Bits right below a magnitude's top bit that [`SplitModel`] codes with
/// probabilities (per bit length); the bits under them are direct. One
/// bit measured best on the fleet data: 0.8812 B/sample against 0.8824
/// with two, 0.8856 with none and 0.8867 with three, whose contexts take
/// longer to learn than a 2 h column lasts.
const SHAPE_BITS: usize = 1;

/// Signs of a column's nonzero residuals, from the column header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signs {
    /// Both occur: one adaptive bit per nonzero residual.
    Mixed,
    /// All positive: no bit.
    Positive,
    /// All negative: no bit.
    Negative,
}

/// What a split column's header says about its residual magnitudes: the
/// bit lengths that occur lie in `min_len..=max_len`, plus zero when
/// `zero` is set. The length tree is only as deep as that span needs, so a
/// column whose lengths span 8 values codes 3 binary decisions per length
/// rather than 6, and a constant column codes none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lengths {
    pub(crate) zero: bool,
    pub(crate) min_len: u8,
    pub(crate) max_len: u8,
    pub(crate) signs: Signs,
}

impl Lengths {
    /// Scans magnitudes `(negative, u)`.
    pub(crate) fn of(items: impl Iterator<Item = (bool, u64)>) -> Lengths {
        let (mut zero, mut min_len, mut max_len) = (false, 64u8, 0u8);
        let (mut pos, mut neg) = (false, false);
        for (negative, u) in items {
            let len = (64 - u.leading_zeros()) as u8;
            if len == 0 {
                zero = true;
                continue;
            }
            min_len = min_len.min(len);
            max_len = max_len.max(len);
            neg |= negative;
            pos |= !negative;
        }
        let signs = match (pos, neg) {
            (true, true) => Signs::Mixed,
            (false, true) => Signs::Negative,
            _ => Signs::Positive,
        };
        if max_len == 0 {
            min_len = 0;
        }
        Lengths {
            zero,
            min_len,
            max_len,
            signs,
        }
    }

    /// Number of distinct length symbols.
    fn symbols(&self) -> usize {
        let nonzero = if self.max_len == 0 {
            0
        } else {
            usize::from(self.max_len - self.min_len) + 1
        };
        nonzero + usize::from(self.zero)
    }
}

/// Adaptive model of signed magnitudes for the split integer format: the
/// bit length through a binary tree over the lengths the column's header
/// names (its probabilities depending on whether the previous magnitude
/// was zero), the sign (only when the column has both), [`SHAPE_BITS`]
/// bits below the top one per length, and every lower bit direct
/// (uncoded, one multiply per 16 bits). Low bits of residuals are close to
/// random once the column's common divisor is taken out (see `ints.rs`),
/// and coding them one adaptive bit at a time was most of a seal's CPU.
pub(crate) struct SplitModel {
    lengths: Lengths,
    depth: u32,
    length: [[Prob; 128]; CONTEXTS],
    sign: [Prob; 3],
    prev_sign: usize,
    shape: [[Prob; 1 << SHAPE_BITS]; 65],
    prev_len: usize,
}

impl SplitModel {
    pub(crate) fn new(lengths: Lengths) -> Self {
        let symbols = lengths.symbols();
        SplitModel {
            lengths,
            depth: usize::BITS - symbols.saturating_sub(1).leading_zeros(),
            length: [[Prob::default(); 128]; CONTEXTS],
            sign: [Prob::default(); 3],
            prev_sign: 1,
            shape: [[Prob::default(); 1 << SHAPE_BITS]; 65],
            prev_len: 0,
        }
    }

    /// Codes a magnitude `u` and, when the column's signs are mixed and
    /// `u` is not zero, its sign. `u`'s length must be one the header names.
    #[inline(always)]
    pub(crate) fn encode(&mut self, enc: &mut Encoder, negative: bool, u: u64) {
        let len = 64 - u.leading_zeros() as usize;
        let l = &self.lengths;
        let symbol = if len == 0 {
            0
        } else {
            len - usize::from(l.min_len) + usize::from(l.zero)
        };
        enc.tree(&mut self.length[usize::from(self.prev_len > 0)], self.depth, symbol);
        if len > 0 {
            if l.signs == Signs::Mixed {
                enc.bit(&mut self.sign[self.prev_sign], negative);
            }
            let below = len - 1;
            let shaped = below.min(SHAPE_BITS);
            let mut rest = below - shaped;
            enc.tree(&mut self.shape[len], shaped as u32, (u >> rest) as usize);
            while rest > 0 {
                let k = rest.min(16);
                rest -= k;
                enc.direct(((u >> rest) & ((1 << k) - 1)) as u32, k as u32);
            }
        }
        self.prev_sign = if len == 0 {
            1
        } else if negative {
            0
        } else {
            2
        };
        self.prev_len = len;
    }

    /// Decodes one (negative, magnitude) pair. Damaged input yields some
    /// pair, never a panic.
    #[inline(always)]
    pub(crate) fn decode(&mut self, dec: &mut Decoder<'_>) -> (bool, u64) {
        let l = self.lengths;
        let symbol = dec.tree(&mut self.length[usize::from(self.prev_len > 0)], self.depth);
        let len = if l.zero && symbol == 0 {
            0
        } else {
            (symbol - usize::from(l.zero) + usize::from(l.min_len)).min(64)
        };
        let mut u = 0u64;
        let mut negative = false;
        if len > 0 {
            negative = match l.signs {
                Signs::Mixed => dec.bit(&mut self.sign[self.prev_sign]),
                Signs::Positive => false,
                Signs::Negative => true,
            };
            let below = len - 1;
            let shaped = below.min(SHAPE_BITS);
            // The top bit, then the shaped bits.
            u = (1 << shaped) | dec.tree(&mut self.shape[len], shaped as u32) as u64;
            let mut rest = below - shaped;
            while rest > 0 {
                let k = rest.min(16);
                rest -= k;
                u = (u << k) | u64::from(dec.direct(k as u32));
            }
        }
        self.prev_sign = if len == 0 {
            1
        } else if negative {
            0
        } else {
            2
        };
        self.prev_len = len;
        (negative, u)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn round_trip(values: &[i64]) -> usize {
        let mut enc = Encoder::default();
        let mut m = IntModel::default();
        for &v in values {
            m.encode(&mut enc, v);
        }
        let bytes = enc.finish();
        let mut dec = Decoder::new(&bytes);
        let mut m = IntModel::default();
        let got: Vec<i64> = values.iter().map(|_| m.decode(&mut dec)).collect();
        assert_eq!(got, values);
        bytes.len()
    }

    #[test]
    fn extremes_round_trip() {
        round_trip(&[]);
        round_trip(&[0]);
        round_trip(&[i64::MAX, 0, 1, i64::MIN, -1, i64::MIN + 1, i64::MAX - 1, 2, -3]);
        let all_lengths: Vec<i64> = (0..64)
            .map(|i| (1u64 << i) as i64)
            .chain((0..64).map(|i| ((1u64 << i) - 1) as i64))
            .chain((0..64).map(|i| ((1u64 << i) as i64).wrapping_neg()))
            .collect();
        round_trip(&all_lengths);
    }

    #[test]
    fn constant_streams_cost_almost_nothing() {
        assert!(round_trip(&[0; 10_000]) < 16);
        // Structure in low bits is learned: multiples of 512.
        let mut x = 12345u64;
        let v: Vec<i64> = (0..4000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x % 4096) * 512) as i64 * if x & (1 << 40) == 0 { 1 } else { -1 }
            })
            .collect();
        assert!(round_trip(&v) < 4000 * 15 / 8, "about 13 bits each, not 22");
    }

    #[test]
    fn reciprocal_division_is_exact_for_every_update() {
        for d in 2..=i32::from(RATE_LIMIT) + 2 {
            for x in 0..=PROB_ONE {
                let q = (u64::from(x as u32) * RECIPROCAL[d as usize]) >> 32;
                assert_eq!(q, u64::from((x / d) as u32), "{x} / {d}");
            }
        }
        // And the update equals the signed-division definition of the format.
        for seen in 0..=RATE_LIMIT {
            for p0 in PROB_MARGIN..=PROB_ONE - PROB_MARGIN {
                for bit in [false, true] {
                    let mut p = Prob { p: p0 as u16, seen };
                    p.update(bit);
                    let target = if bit { 0 } else { PROB_ONE };
                    let want = (p0 + (target - p0) / (i32::from(seen) + 2)).clamp(PROB_MARGIN, PROB_ONE - PROB_MARGIN);
                    assert_eq!(i32::from(p.p), want, "p {p0} seen {seen} bit {bit}");
                }
            }
        }
    }

    #[test]
    fn garbage_decodes_without_panicking() {
        for seed in 0..50u8 {
            let bytes: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(seed).wrapping_add(seed)).collect();
            let mut dec = Decoder::new(&bytes);
            let mut m = IntModel::default();
            for _ in 0..500 {
                m.decode(&mut dec);
            }
        }
    }
}
