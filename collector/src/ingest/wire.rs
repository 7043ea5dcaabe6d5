//! The batch encodings the ingest stream accepts, and the decoding step
//! that turns a compact batch back into plain columns before anything else
//! (rate limits, validation, storage) looks at it.
//!
//! The codec itself is shared with the agent in
//! [`hostpulse_proto::columns`]; this module only keeps one decoder per
//! stream (inside the [`super::session::Session`]), announces the encoding
//! in the stream's response headers, and maps a decoding failure to the
//! typed error the agent acts on. A compact batch is coded against the
//! previous one of its stream, so a batch that does not decode leaves the
//! two ends disagreeing: the error is fatal, nothing of the batch is stored,
//! and the agent resends it plain on a new stream.

use hostpulse_proto::columns::{COMPACT, ENCODINGS_HEADER, StreamDecoder};
use hostpulse_proto::{Batch, CollectorMessage, ErrorCode};
use tonic::metadata::MetadataValue;

use super::IngestLimits;

/// One stream's compact-batch decoder; created with the first compact
/// batch, so streams of agents that send plain batches carry no state.
#[derive(Debug, Default)]
pub struct WireDecoder {
    decoder: Option<StreamDecoder>,
}

impl WireDecoder {
    /// Turns a compact `batch` into a plain one in place; a plain batch
    /// passes untouched. On failure, the fatal `BAD_ENCODING` error to send
    /// before ending the stream; the batch must then not be stored.
    pub fn decode(&mut self, batch: &mut Batch, limits: &IngestLimits) -> Result<(), CollectorMessage> {
        if batch.compact.is_none() {
            return Ok(());
        }
        let decoder = self
            .decoder
            .get_or_insert_with(|| StreamDecoder::new(limits.max_series_per_stream));
        decoder.decode(batch).map_err(|e| {
            let seq = batch.seq;
            CollectorMessage::error(
                ErrorCode::BadEncoding,
                format!("batch {seq}: compact columns could not be decoded ({e}); it was not stored, resend it plain on a new stream"),
                seq,
                true,
            )
        })
    }
}

/// Adds the response header that tells agents this collector accepts
/// compact batches.
pub fn announce<T>(response: &mut tonic::Response<T>) {
    response
        .metadata_mut()
        .insert(ENCODINGS_HEADER, MetadataValue::from_static(COMPACT));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use hostpulse_proto::columns::StreamEncoder;
    use hostpulse_proto::{CompactColumns, collector_message};

    use super::*;

    #[test]
    fn compact_batches_decode_and_plain_ones_pass() {
        let limits = IngestLimits::default();
        let mut wire = WireDecoder::default();
        let mut plain = Batch {
            seq: 1,
            refs: vec![1],
            values: vec![2.5],
            ..Default::default()
        };
        wire.decode(&mut plain, &limits).unwrap();
        assert!(wire.decoder.is_none(), "plain batches keep no state");
        let mut enc = StreamEncoder::new();
        for (seq, v) in [(2, 2.5), (3, 2.75), (4, f64::from_bits(0x7ff0_0000_0000_0002))] {
            let mut b = Batch {
                seq,
                refs: vec![1, 7],
                values: vec![v, -0.0],
                ..Default::default()
            };
            let want = b.clone();
            enc.encode(&mut b);
            wire.decode(&mut b, &limits).unwrap();
            assert_eq!(b.refs, want.refs);
            assert_eq!(b.values[0].to_bits(), v.to_bits());
            assert_eq!(b.values[1].to_bits(), (-0.0f64).to_bits());
        }
    }

    #[test]
    fn undecodable_batches_get_a_fatal_typed_error() {
        let limits = IngestLimits::default();
        let mut wire = WireDecoder::default();
        let mut b = Batch {
            seq: 9,
            compact: Some(CompactColumns {
                same_refs: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let reply = wire.decode(&mut b, &limits).unwrap_err();
        let Some(collector_message::Kind::Error(e)) = reply.kind else {
            panic!("{reply:?}")
        };
        assert_eq!(e.code, ErrorCode::BadEncoding as i32);
        assert!(e.fatal);
        assert_eq!(e.seq, 9);
        assert!(e.message.contains("first compact batch"), "{}", e.message);
        assert!(b.refs.is_empty() && b.values.is_empty());
    }

    #[test]
    fn the_response_announces_compact_batches() {
        let mut r = tonic::Response::new(());
        announce(&mut r);
        let v = r.metadata().get(ENCODINGS_HEADER).unwrap().to_str().unwrap();
        assert!(hostpulse_proto::columns::announces_compact(v));
    }
}
