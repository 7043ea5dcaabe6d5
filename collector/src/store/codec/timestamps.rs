//! Timestamp columns: delta-of-delta residuals, range coded, so a regular
//! scrape interval costs a fraction of a bit per sample and jitter costs
//! only its own size.

use super::{CodecError, ints};

/// Encodes millisecond timestamps (any order, any values).
pub(crate) fn encode(ts: &[i64]) -> Vec<u8> {
    ints::encode(ts, 2)
}

/// Decodes `n` timestamps.
pub(crate) fn decode(bytes: &[u8], n: usize) -> Result<Vec<i64>, CodecError> {
    ints::decode(bytes, n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn regular_timestamps_are_nearly_free() {
        let ts: Vec<i64> = (0..720).map(|i| 1_767_225_600_000 + i * 10_000).collect();
        let bytes = encode(&ts);
        assert!(bytes.len() < 24, "{} bytes", bytes.len());
        assert_eq!(decode(&bytes, ts.len()).unwrap(), ts);
    }
}
