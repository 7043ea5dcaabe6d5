//! Public, pure entry points to the decoders of everything the store reads
//! back from disk: WAL record parts, sealed blocks, rollup records, series
//! pages, host records, catalog entries and the column codecs underneath.
//! They exist so that untrusted bytes can be thrown at the same code
//! `Store::open` and the readers run, from outside the crate: the cargo-fuzz
//! targets in `fuzz/` and the corpus replay CI runs on stable
//! (`tests/tests/fuzz_corpora.rs`).
//!
//! Each returns how many things it decoded (samples, label sets, buckets) or
//! the [`StoreError::Corrupt`] a reader would see, and never panics. The
//! record types themselves stay private to the store.

use super::codec::{self, CodecError, MAX_COLUMN_LEN};
use super::{StoreError, block, keys, rollup};

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        tree: keys::TREE,
        detail: format!("{what}: {e}"),
    }
}

/// Frames `payload` with the CRC-32 every checksummed value starts with, so
/// a fuzzer's bytes reach the decoders behind the checksum.
pub fn checksum_frame(payload: &[u8]) -> Vec<u8> {
    keys::checksummed(payload)
}

/// Decodes one stored WAL record part (checksum, then the samples) as
/// `Store::open` replays it; the number of samples.
pub fn decode_wal_part(value: &[u8]) -> Result<usize, StoreError> {
    let payload = keys::verify_checksum(value).ok_or_else(|| corrupt("WAL record", "checksum mismatch"))?;
    let entries = keys::decode_wal(payload)?;
    Ok(entries.iter().map(|(_, s)| s.len()).sum())
}

/// Verifies and parses one sealed block file and decodes every section, as
/// a query over all of it would; the number of samples.
pub fn decode_block(value: &[u8]) -> Result<usize, StoreError> {
    let view = block::parse(value).map_err(|e| corrupt("block", e))?;
    let mut samples = 0;
    for s in &view.sections {
        samples += view.decode(s).map_err(|e| corrupt("block", e))?.len();
    }
    Ok(samples)
}

/// Decodes one rollup record, every series; the number of buckets.
pub fn decode_rollup(value: &[u8]) -> Result<usize, StoreError> {
    let series = rollup::decode(value, |_| true).map_err(|e| corrupt("rollup", e))?;
    Ok(series.iter().map(|(_, b)| b.len()).sum())
}

/// Decodes one series record (a page or a single definition); the number
/// of label sets.
pub fn decode_series_page(value: &[u8]) -> Result<usize, StoreError> {
    Ok(keys::decode_series_page(value)?.len())
}

/// Decodes one host record stored under `key`; 1 when it decodes.
pub fn decode_host(key: &[u8], value: &[u8]) -> Result<usize, StoreError> {
    keys::decode_host(key, value).map(|_| 1)
}

/// Decodes one catalog entry; 1 when it decodes.
pub fn decode_catalog(value: &[u8]) -> Result<usize, StoreError> {
    keys::decode_catalog(value).map(|_| 1)
}

/// Which column codec [`decode_column`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    /// Delta-of-delta timestamps.
    Timestamps,
    /// Scaled-decimal or Gorilla values.
    Values,
    /// Range-coded integers.
    Ints,
    /// Gorilla XOR values.
    Gorilla,
}

/// Decodes one column of `n` entries (capped at the largest column a block
/// may declare); the number decoded.
pub fn decode_column(column: Column, bytes: &[u8], n: usize) -> Result<usize, CodecError> {
    let n = n.min(MAX_COLUMN_LEN);
    match column {
        Column::Timestamps => codec::timestamps::decode(bytes, n).map(|v| v.len()),
        Column::Values => codec::values::decode(bytes, n).map(|v| v.len()),
        Column::Ints => codec::ints::decode(bytes, n).map(|v| v.len()),
        Column::Gorilla => codec::gorilla::decode(bytes, n).map(|v| v.len()),
    }
}

/// One well-formed value of each kind `(decoder name, bytes)`, as the
/// writer produces them: seeds for the fuzz corpora, which cannot build
/// them from outside the store. Column seeds are prefixed with the codec
/// byte and the u16 LE count the `store_columns` fuzz harness expects.
pub fn example_values() -> Vec<(&'static str, Vec<u8>)> {
    let samples: Vec<(i64, f64)> = (0..20)
        .map(|i| (1_767_225_600_000 + i * 10_000, 40.0 + (i % 3) as f64 * 0.5))
        .collect();
    let odd = [
        (1_000i64, f64::from_bits(0x7ff0_0000_0000_0002)),
        (1_500, -0.0),
        (9_000, 1e300),
    ];
    let labels = crate::model::Labels::new(vec![
        ("__name__".into(), "node_hwmon_temp_celsius".into()),
        ("instance".into(), "web-1".into()),
    ]);
    let buckets = rollup::buckets(&samples, rollup::Resolution::FiveMinutes);
    let host = keys::HostEntry::default();
    let column = |kind: u8, bytes: Vec<u8>| {
        let mut out = vec![kind];
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend(bytes);
        out
    };
    let ts: Vec<i64> = samples.iter().map(|s| s.0).collect();
    let vs: Vec<f64> = samples.iter().map(|s| s.1).collect();
    vec![
        (
            "store_wal",
            keys::checksummed(&keys::encode_wal(&[(7u64, &samples[..]), (8, &odd[..])])),
        ),
        (
            "store_block",
            block::encode(samples[0].0, &[(7, &samples[..]), (8, &odd[..])]),
        ),
        ("store_rollup", rollup::encode(samples[0].0, &[(7, buckets)])),
        ("store_series_page", keys::encode_series_page(&[&labels, &labels])),
        ("store_series_page", keys::encode_host(&host)),
        (
            "store_series_page",
            keys::encode_catalog(keys::CatalogEntry {
                bytes: 4096,
                raw: true,
                rollups: [true, false],
            })
            .to_vec(),
        ),
        ("store_columns", column(0, codec::timestamps::encode(&ts))),
        ("store_columns", column(1, codec::values::encode(&vs))),
        ("store_columns", column(2, codec::ints::encode_best(&ts))),
        ("store_columns", column(3, codec::gorilla::encode(&vs))),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn written_records_decode_and_damaged_ones_are_corrupt() {
        let samples = [(1_000i64, 1.5f64), (2_000, 2.5), (3_000, f64::NAN)];
        let wal = keys::checksummed(&keys::encode_wal(&[(7u64, &samples[..])]));
        assert_eq!(decode_wal_part(&wal).unwrap(), 3);
        let blk = block::encode(0, &[(7, &samples[..])]);
        assert_eq!(decode_block(&blk).unwrap(), 3);
        for bad in [&wal[..wal.len() - 1], &blk[..blk.len() - 1], &[][..]] {
            assert!(matches!(decode_wal_part(bad), Err(StoreError::Corrupt { .. })));
            assert!(matches!(decode_block(bad), Err(StoreError::Corrupt { .. })));
            assert!(matches!(decode_rollup(bad), Err(StoreError::Corrupt { .. })));
        }
        assert_eq!(
            decode_column(Column::Timestamps, &codec::timestamps::encode(&[]), 0).unwrap(),
            0
        );
        assert!(decode_column(Column::Values, &[], 5).is_err());
    }

    #[test]
    fn example_values_decode() {
        for (name, v) in example_values() {
            let got = match name {
                "store_wal" => decode_wal_part(&v).unwrap(),
                "store_block" => decode_block(&v).unwrap(),
                "store_rollup" => decode_rollup(&v).unwrap(),
                "store_series_page" => [decode_series_page(&v), decode_host(b"h", &v), decode_catalog(&v)]
                    .into_iter()
                    .flatten()
                    .sum(),
                _ => {
                    let column = [Column::Timestamps, Column::Values, Column::Ints, Column::Gorilla][usize::from(v[0])];
                    decode_column(column, &v[3..], 20).unwrap()
                }
            };
            assert!(got > 0, "{name}");
        }
    }
}
