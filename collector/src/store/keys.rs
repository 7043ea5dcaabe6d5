//! Key and value encodings of the simple (uncompressed) store layout: one
//! sled tree whose keys start with a one-byte prefix naming the record kind.
//!
//! | key                                          | value                          |
//! |----------------------------------------------|--------------------------------|
//! | `s` + series id (u64 BE)                     | label pairs, JSON `[[k, v]..]` |
//! | `d` + series id (u64 BE) + timestamp (i64*)  | f64 bits (u64 BE)              |
//! | `h` + host name (UTF-8)                      | [`HostEntry`] as JSON          |
//!
//! `i64*` is the timestamp with its sign bit flipped, big-endian, so that
//! byte order equals numeric order and a range scan over one series returns
//! its samples ascending. Everything here is pure so it is tested without a
//! database; decoding never panics and reports [`StoreError::Corrupt`].

use serde::{Deserialize, Serialize};

use super::{HostRecord, StoreError};
use crate::model::Labels;

/// Name of the one tree this layout lives in. Versioned so that the
/// compressed engine can live beside it in other trees.
pub(crate) const TREE: &str = "simple_v1";

/// Prefix of series definitions.
pub(crate) const SERIES: u8 = b's';
/// Prefix of samples.
pub(crate) const DATA: u8 = b'd';
/// Prefix of host records.
pub(crate) const HOST: u8 = b'h';

/// What is persisted per host. `stored_any` tells "never stored a batch"
/// apart from "stored seq 0", which `HostRecord::last_seq` alone cannot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct HostEntry {
    /// The public record.
    pub record: HostRecord,
    /// Whether any batch was stored, i.e. `record.last_seq` is meaningful.
    pub stored_any: bool,
}

/// Key of a series definition.
pub(crate) fn series_key(id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = SERIES;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// Series id from a series-definition key.
pub(crate) fn parse_series_key(key: &[u8]) -> Result<u64, StoreError> {
    match key {
        [SERIES, rest @ ..] if rest.len() == 8 => Ok(u64_from(rest)),
        _ => Err(corrupt(format!("series key of {} bytes: {key:?}", key.len()))),
    }
}

/// Key of one sample.
pub(crate) fn data_key(id: u64, ts_ms: i64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = DATA;
    k[1..9].copy_from_slice(&id.to_be_bytes());
    k[9..].copy_from_slice(&encode_ts(ts_ms));
    k
}

/// Timestamp from a sample key (whose series the caller already knows).
pub(crate) fn parse_data_key(key: &[u8]) -> Result<i64, StoreError> {
    match key {
        [DATA, rest @ ..] if rest.len() == 16 => Ok(decode_ts(&rest[8..])),
        _ => Err(corrupt(format!("sample key of {} bytes: {key:?}", key.len()))),
    }
}

/// A sample value; the bit pattern is kept exactly so the stale marker's
/// NaN payload survives.
pub(crate) fn encode_value(v: f64) -> [u8; 8] {
    v.to_bits().to_be_bytes()
}

/// Inverse of [`encode_value`].
pub(crate) fn decode_value(bytes: &[u8]) -> Result<f64, StoreError> {
    if bytes.len() != 8 {
        return Err(corrupt(format!("sample value of {} bytes", bytes.len())));
    }
    Ok(f64::from_bits(u64_from(bytes)))
}

/// Key of a host record.
pub(crate) fn host_key(host: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(host.len() + 1);
    k.push(HOST);
    k.extend_from_slice(host.as_bytes());
    k
}

/// Label pairs as stored.
pub(crate) fn encode_labels(labels: &Labels) -> Vec<u8> {
    // Serializing a slice of string pairs cannot fail.
    serde_json::to_vec(labels.pairs()).unwrap_or_default()
}

/// Inverse of [`encode_labels`]; rejects pairs that are not already in the
/// canonical form `Labels::new` produces, since such a record was not
/// written by us.
pub(crate) fn decode_labels(bytes: &[u8]) -> Result<Labels, StoreError> {
    let pairs: Vec<(String, String)> =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("series labels: {e}")))?;
    let labels = Labels::new(pairs.clone());
    if labels.pairs() != pairs.as_slice() || pairs.is_empty() {
        return Err(corrupt(format!("series labels not canonical: {pairs:?}")));
    }
    Ok(labels)
}

/// Host entry as stored.
pub(crate) fn encode_host(entry: &HostEntry) -> Vec<u8> {
    // Plain strings and integers: serialization cannot fail.
    serde_json::to_vec(entry).unwrap_or_default()
}

/// Inverse of [`encode_host`], checking the name matches the key.
pub(crate) fn decode_host(key: &[u8], bytes: &[u8]) -> Result<HostEntry, StoreError> {
    let entry: HostEntry = serde_json::from_slice(bytes).map_err(|e| corrupt(format!("host record: {e}")))?;
    if key.get(1..) != Some(entry.record.host.as_bytes()) {
        return Err(corrupt(format!(
            "host record {:?} under key {:?}",
            entry.record.host,
            String::from_utf8_lossy(key)
        )));
    }
    Ok(entry)
}

fn encode_ts(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

fn decode_ts(bytes: &[u8]) -> i64 {
    (u64_from(bytes) ^ (1 << 63)) as i64
}

/// Big-endian u64 from exactly 8 bytes (callers check the length).
fn u64_from(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

fn corrupt(detail: String) -> StoreError {
    StoreError::Corrupt { tree: TREE, detail }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_their_order_as_bytes() {
        let ts = [i64::MIN, -1_000, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for pair in ts.windows(2) {
            assert!(data_key(7, pair[0]) < data_key(7, pair[1]), "{pair:?}");
        }
        for t in ts {
            assert_eq!(parse_data_key(&data_key(7, t)).unwrap(), t);
        }
    }

    #[test]
    fn stale_marker_bits_survive() {
        let stale = f64::from_bits(crate::model::STALE_NAN_BITS);
        assert!(crate::model::is_stale_marker(
            decode_value(&encode_value(stale)).unwrap()
        ));
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        assert!(matches!(decode_value(b"abc"), Err(StoreError::Corrupt { .. })));
        assert!(matches!(parse_series_key(b"s12"), Err(StoreError::Corrupt { .. })));
        assert!(matches!(parse_data_key(b"d"), Err(StoreError::Corrupt { .. })));
        assert!(matches!(decode_labels(b"{"), Err(StoreError::Corrupt { .. })));
        assert!(matches!(
            decode_labels(br#"[["b","1"],["a","2"]]"#),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(decode_host(b"hx", b"[]"), Err(StoreError::Corrupt { .. })));
    }
}
