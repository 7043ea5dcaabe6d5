//! The gRPC plumbing of `hostpulse.v1.Ingest/Stream` with agent messages
//! received as raw frames, so the ingest loop decides where each one is
//! decoded (issue 7).
//!
//! The generated `IngestServer` decodes every message inside the stream
//! task's read, on a runtime worker thread. An agent sending megabyte
//! frames (a million-series batch is ~2.6 MB) then holds that worker for
//! the whole decode — measured at ~200 ms per frame in a debug build —
//! and every task queued behind it waits, so other agents' acks stall even
//! though the frame is refused right after. Here the codec only copies the
//! frame out (after tonic's size limit and decompression), and
//! [`decode`] parses small frames in place and large ones on the blocking
//! pool.
//!
//! [`IngestGrpc`] is the generated server's routing with this codec; the
//! wire contract (path, messages, compression, size limit) is unchanged.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use hostpulse_proto::{AgentMessage, CollectorMessage};
use prost::Message;
use prost::bytes::{Buf, Bytes};
use tonic::body::Body;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

use super::budget::HeapTally;

/// Frames from this size (bytes, after decompression) are decoded on the
/// blocking pool: below it decoding takes well under a millisecond
/// optimised, less than handing the work to another thread would cost.
pub const BLOCKING_DECODE_BYTES: usize = 64 * 1024;

/// The full gRPC method path this server answers.
const STREAM_PATH: &str = "/hostpulse.v1.Ingest/Stream";

/// What handles each stream: [`super::IngestService`] in the server.
#[tonic::async_trait]
pub trait RawIngest: Send + Sync + 'static {
    /// The stream of replies.
    type Replies: tokio_stream::Stream<Item = Result<CollectorMessage, Status>> + Send + 'static;

    /// Serves one agent stream whose messages arrive as raw frames.
    async fn stream(&self, request: Request<Streaming<Bytes>>) -> Result<Response<Self::Replies>, Status>;
}

/// Parses one frame, on the blocking pool when it is large. `Err` is the
/// status to end the stream with, as tonic would for an undecodable frame.
pub async fn decode(frame: Bytes) -> Result<AgentMessage, Status> {
    if frame.len() < BLOCKING_DECODE_BYTES {
        return parse(frame);
    }
    match tokio::task::spawn_blocking(move || parse(frame)).await {
        Ok(parsed) => parsed,
        Err(e) => Err(Status::internal(format!("decoding the message failed: {e}"))),
    }
}

fn parse(frame: Bytes) -> Result<AgentMessage, Status> {
    AgentMessage::decode(frame).map_err(|e| Status::internal(format!("failed to decode the message: {e}")))
}

/// What [`measure`] learns from a frame without decoding it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Measured {
    /// The batch's sequence number, for a frame holding a batch.
    pub seq: Option<u64>,
    /// The memory the frame, its decoded message and (for a batch) the
    /// prepared batch will hold ([`HeapTally::total`] already applied).
    pub tally: HeapTally,
}

/// Why a frame could not be measured; prost will not decode it either
/// (or, for the rare encoding this walk does not follow, the decoded
/// batch is measured instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// A field runs past the end of its message.
    #[error("a field runs past the end of the message")]
    Truncated,
    /// A varint longer than ten bytes.
    #[error("malformed varint")]
    Varint,
    /// A wire type this walk does not follow (groups, or undefined ones).
    #[error("unsupported wire type {0}")]
    WireType(u8),
}

/// Estimates what an agent message frame will cost once decoded and
/// prepared, by walking its protobuf encoding without allocating:
/// definitions with their name and label lengths, samples (plain or
/// compact columns), events. `host_bytes` is the stream's host name
/// length (every series' labels carry it); `previous_compact_refs` is how
/// many refs the stream's previous compact batch had (a compact batch
/// flagged `same_refs` has as many). Linear in the frame, a few
/// microseconds for a first batch of 300 definitions.
pub fn measure(frame: &[u8], host_bytes: usize, previous_compact_refs: usize) -> Result<Measured, ScanError> {
    let mut tally = HeapTally::frame(frame.len());
    let mut seq = None;
    let mut r = Reader(frame);
    while !r.done() {
        match r.key()? {
            (1, LEN) => hello(r.bytes()?, &mut tally)?,
            (2, LEN) => seq = Some(batch(r.bytes()?, host_bytes, previous_compact_refs, &mut tally)?),
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(Measured {
        seq,
        tally: tally.total(),
    })
}

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

/// Bytes of a decoded message per encoded byte at most, for a Hello's
/// strings (a string of n bytes costs its n bytes rounded up to the
/// allocator's 16, and takes at least 2 bytes on the wire).
const HELLO_EXPANSION: usize = 8;

/// A Hello: its strings, and the inventory's repeated entries, whose
/// structs are far larger than their encoding when their fields are empty.
fn hello(buf: &[u8], tally: &mut HeapTally) -> Result<(), ScanError> {
    use hostpulse_proto::{Dimm, Disk, Nic};
    tally.other(buf.len().saturating_mul(HELLO_EXPANSION));
    let mut r = Reader(buf);
    while !r.done() {
        match r.key()? {
            (5, LEN) => {
                let mut inv = Reader(r.bytes()?);
                while !inv.done() {
                    let (field, wire) = inv.key()?;
                    inv.skip(wire)?;
                    let entry = match (field, wire) {
                        (13, LEN) => 2 * size_of::<Dimm>(),
                        (14, LEN) => 2 * size_of::<Disk>(),
                        (15, LEN) => 2 * size_of::<Nic>(),
                        _ => 0,
                    };
                    tally.other(entry);
                }
            }
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(())
}

/// A Batch; returns its sequence number.
fn batch(buf: &[u8], host_bytes: usize, previous_compact_refs: usize, tally: &mut HeapTally) -> Result<u64, ScanError> {
    let mut seq = 0;
    let (mut refs, mut values) = (0usize, 0usize);
    let mut r = Reader(buf);
    while !r.done() {
        match r.key()? {
            (1, VARINT) => seq = r.varint()?,
            (2, LEN) => definition(r.bytes()?, host_bytes, tally)?,
            (4, LEN) => refs += varints(r.bytes()?),
            (4, VARINT) => {
                r.varint()?;
                refs += 1;
            }
            (5, LEN) => {
                r.bytes()?;
                tally.with_deltas();
            }
            (5, VARINT) => {
                r.varint()?;
                tally.with_deltas();
            }
            (6, LEN) => values += r.bytes()?.len() / size_of::<f64>(),
            (6, I64) => {
                r.skip(I64)?;
                values += 1;
            }
            (7, LEN) => event(r.bytes()?, tally)?,
            (8, LEN) => refs += compact(r.bytes()?, previous_compact_refs, tally)?,
            (_, wire) => r.skip(wire)?,
        }
    }
    tally.samples(refs.max(values));
    Ok(seq)
}

/// A series definition.
fn definition(buf: &[u8], host_bytes: usize, tally: &mut HeapTally) -> Result<(), ScanError> {
    let (mut name, mut labels, mut label_heap) = (0, 0, 0);
    let mut r = Reader(buf);
    while !r.done() {
        match r.key()? {
            (2, LEN) => name = r.bytes()?.len(),
            (3, LEN) => {
                labels += 1;
                let mut label = Reader(r.bytes()?);
                while !label.done() {
                    match label.key()? {
                        (1 | 2, LEN) => label_heap += HeapTally::string(label.bytes()?.len()),
                        (_, wire) => label.skip(wire)?,
                    }
                }
            }
            (_, wire) => r.skip(wire)?,
        }
    }
    tally.definition(host_bytes, name, labels, label_heap);
    Ok(())
}

/// A kernel event.
fn event(buf: &[u8], tally: &mut HeapTally) -> Result<(), ScanError> {
    let mut strings = 0;
    let mut r = Reader(buf);
    while !r.done() {
        match r.key()? {
            (2..=4, LEN) => strings += HeapTally::string(r.bytes()?.len()),
            (_, wire) => r.skip(wire)?,
        }
    }
    tally.event(strings);
    Ok(())
}

/// Compact columns: their bytes, and the samples they decode to (one per
/// ref; the refs are varints, or the previous compact batch's).
fn compact(buf: &[u8], previous_refs: usize, tally: &mut HeapTally) -> Result<usize, ScanError> {
    let (mut same, mut refs) = (false, 0);
    let mut r = Reader(buf);
    while !r.done() {
        match r.key()? {
            (1, VARINT) => same = r.varint()? != 0,
            (2, LEN) => {
                let bytes = r.bytes()?;
                refs += varints(bytes);
                tally.other(HeapTally::string(bytes.len()));
            }
            (3, LEN) => tally.other(HeapTally::string(r.bytes()?.len())),
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(if same { refs.max(previous_refs) } else { refs })
}

/// Varints in a packed field: one per byte without the continuation bit.
fn varints(bytes: &[u8]) -> usize {
    bytes.iter().filter(|b| **b & 0x80 == 0).count()
}

/// A cursor over protobuf-encoded bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.0.is_empty()
    }

    fn varint(&mut self) -> Result<u64, ScanError> {
        let mut value = 0u64;
        for (i, &b) in self.0.iter().enumerate().take(10) {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok(value);
            }
        }
        Err(if self.0.len() < 10 {
            ScanError::Truncated
        } else {
            ScanError::Varint
        })
    }

    /// A field's number and wire type.
    fn key(&mut self) -> Result<(u64, u8), ScanError> {
        let key = self.varint()?;
        Ok((key >> 3, (key & 7) as u8))
    }

    /// A length-delimited field's contents.
    fn bytes(&mut self) -> Result<&'a [u8], ScanError> {
        let len = usize::try_from(self.varint()?).map_err(|_| ScanError::Truncated)?;
        self.take(len)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ScanError> {
        if n > self.0.len() {
            return Err(ScanError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// Skips a field's value of wire type `wire`.
    fn skip(&mut self, wire: u8) -> Result<(), ScanError> {
        match wire {
            VARINT => self.varint().map(drop),
            I64 => self.take(8).map(drop),
            LEN => self.bytes().map(drop),
            I32 => self.take(4).map(drop),
            other => Err(ScanError::WireType(other)),
        }
    }
}

/// Hands each frame over undecoded.
#[derive(Debug, Default)]
struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Encodes replies with prost, as the generated server does.
#[derive(Debug, Default)]
struct ReplyEncoder;

impl Encoder for ReplyEncoder {
    type Item = CollectorMessage;
    type Error = Status;

    fn encode(&mut self, item: CollectorMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("failed to encode a reply: {e}")))
    }
}

/// Raw frames in, prost-encoded [`CollectorMessage`]s out.
#[derive(Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = CollectorMessage;
    type Decode = Bytes;
    type Encoder = ReplyEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ReplyEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

/// The `hostpulse.v1.Ingest` gRPC service over a [`RawIngest`] handler.
#[derive(Debug)]
pub struct IngestGrpc<T> {
    inner: Arc<T>,
    accept: EnabledCompressionEncodings,
    send: EnabledCompressionEncodings,
    max_decoding: Option<usize>,
}

impl<T> Clone for IngestGrpc<T> {
    fn clone(&self) -> Self {
        IngestGrpc {
            inner: Arc::clone(&self.inner),
            accept: self.accept,
            send: self.send,
            max_decoding: self.max_decoding,
        }
    }
}

impl<T: RawIngest> IngestGrpc<T> {
    /// Serves streams with `inner`.
    pub fn new(inner: T) -> Self {
        IngestGrpc {
            inner: Arc::new(inner),
            accept: EnabledCompressionEncodings::default(),
            send: EnabledCompressionEncodings::default(),
            max_decoding: None,
        }
    }

    /// Accepts requests compressed with `encoding`.
    #[must_use]
    pub fn accept_compressed(mut self, encoding: CompressionEncoding) -> Self {
        self.accept.enable(encoding);
        self
    }

    /// Compresses replies with `encoding` when the client accepts it.
    #[must_use]
    pub fn send_compressed(mut self, encoding: CompressionEncoding) -> Self {
        self.send.enable(encoding);
        self
    }

    /// Refuses messages over `limit` bytes (after decompression) before
    /// reading them whole.
    #[must_use]
    pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.max_decoding = Some(limit);
        self
    }
}

impl<T> NamedService for IngestGrpc<T> {
    const NAME: &'static str = "hostpulse.v1.Ingest";
}

/// One call of the stream method.
struct StreamCall<T>(Arc<T>);

impl<T: RawIngest> StreamingService<Bytes> for StreamCall<T> {
    type Response = CollectorMessage;
    type ResponseStream = T::Replies;
    type Future = BoxFuture<Response<T::Replies>, Status>;

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        let inner = Arc::clone(&self.0);
        Box::pin(async move { inner.stream(request).await })
    }
}

impl<T, B> Service<http::Request<B>> for IngestGrpc<T>
where
    T: RawIngest,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != STREAM_PATH {
            return Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let this = self.clone();
        Box::pin(async move {
            let mut grpc = Grpc::new(RawCodec)
                .apply_compression_config(this.accept, this.send)
                .apply_max_message_size_config(this.max_decoding, None);
            Ok(grpc.streaming(StreamCall(this.inner), req).await)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use hostpulse_proto::{Batch, SeriesDefinition, agent_message};

    use super::*;

    fn batch_frame(definitions: u32) -> (AgentMessage, Bytes) {
        let message = AgentMessage {
            kind: Some(agent_message::Kind::Batch(Batch {
                seq: 7,
                new_series: (0..definitions)
                    .map(|r| SeriesDefinition {
                        r#ref: r,
                        name: "m".into(),
                        labels: vec![],
                    })
                    .collect(),
                ..Default::default()
            })),
        };
        let frame = Bytes::from(message.encode_to_vec());
        (message, frame)
    }

    #[tokio::test]
    async fn small_and_large_frames_decode_alike() {
        for n in [1, 20_000] {
            let (message, frame) = batch_frame(n);
            assert_eq!(frame.len() >= BLOCKING_DECODE_BYTES, n > 1, "{} bytes", frame.len());
            assert_eq!(decode(frame).await.unwrap(), message);
        }
    }

    fn labelled(series: u32) -> Batch {
        Batch {
            seq: 3,
            new_series: (1..=series)
                .map(|r| SeriesDefinition {
                    r#ref: r,
                    name: "node_hwmon_temp_celsius".into(),
                    labels: vec![
                        hostpulse_proto::Label {
                            name: "chip".into(),
                            value: "coretemp".into(),
                        },
                        hostpulse_proto::Label {
                            name: "sensor".into(),
                            value: format!("temp{r}"),
                        },
                    ],
                })
                .collect(),
            base_timestamp_ms: 1_700_000_000_000,
            refs: (1..=series).collect(),
            values: (1..=series).map(f64::from).collect(),
            ..Default::default()
        }
    }

    fn frame_of(batch: Batch) -> Vec<u8> {
        AgentMessage {
            kind: Some(agent_message::Kind::Batch(batch)),
        }
        .encode_to_vec()
    }

    #[test]
    fn a_frame_is_measured_as_its_decoded_batch_would_be() {
        for series in [0, 1, 300] {
            let batch = labelled(series);
            let frame = frame_of(batch.clone());
            let measured = measure(&frame, 12, 0).unwrap();
            assert_eq!(measured.seq, Some(3));
            let decoded = HeapTally::of_batch(&batch, 12);
            assert_eq!(measured.tally.held, decoded.held, "{series} series");
            assert_eq!(
                measured.tally.transient,
                decoded.transient + frame.len(),
                "{series} series"
            );
            assert_eq!(measured.tally.defines(), series > 0);
        }
        // Decoded with labels, a first batch holds far more than its frame.
        let frame = frame_of(labelled(300));
        let tally = measure(&frame, 12, 0).unwrap().tally;
        assert!(
            tally.held > 10 * frame.len(),
            "{} held for {} bytes",
            tally.held,
            frame.len()
        );
    }

    #[test]
    fn compact_columns_are_counted_as_the_samples_they_decode_to() {
        let mut encoder = hostpulse_proto::columns::StreamEncoder::new();
        let plain = Batch {
            seq: 1,
            refs: (1..=300).collect(),
            values: (1..=300).map(f64::from).collect(),
            ..Default::default()
        };
        let want = measure(&frame_of(plain.clone()), 12, 0).unwrap().tally;
        let mut first = plain.clone();
        encoder.encode(&mut first);
        assert!(first.refs.is_empty());
        let got = measure(&frame_of(first), 12, 0).unwrap().tally;
        // The same samples, plus the compact columns themselves.
        assert_eq!(got.held, want.held);
        assert!(got.transient >= want.transient - frame_of(plain.clone()).len());
        // The next batch says "same refs as before": counted from the stream.
        let mut second = Batch {
            seq: 2,
            ..plain.clone()
        };
        encoder.encode(&mut second);
        let frame = frame_of(second);
        assert_eq!(measure(&frame, 12, 300).unwrap().tally.held, want.held);
        assert!(measure(&frame, 12, 0).unwrap().tally.held < want.held);
    }

    #[test]
    fn malformed_frames_are_an_error_when_measured() {
        let frame = frame_of(labelled(3));
        for cut in [1, frame.len() / 2, frame.len() - 1] {
            assert_eq!(measure(&frame[..cut], 0, 0), Err(ScanError::Truncated), "cut at {cut}");
        }
        assert_eq!(measure(&[0x0b], 0, 0), Err(ScanError::WireType(3)));
        let mut long = vec![0x08];
        long.extend([0xff; 10]);
        long.push(0x01);
        assert_eq!(measure(&long, 0, 0), Err(ScanError::Varint));
        // A Hello is charged for what its inventory entries decode to.
        let hello = AgentMessage {
            kind: Some(agent_message::Kind::Hello(hostpulse_proto::Hello {
                host: "a".into(),
                inventory: Some(hostpulse_proto::Inventory {
                    dimms: vec![Default::default(); 100],
                    ..Default::default()
                }),
                ..Default::default()
            })),
        }
        .encode_to_vec();
        let tally = measure(&hello, 0, 0).unwrap();
        assert_eq!(tally.seq, None);
        assert!(tally.tally.peak() >= 100 * size_of::<hostpulse_proto::Dimm>());
    }

    #[tokio::test]
    async fn undecodable_frames_are_an_error_not_a_panic() {
        for frame in [vec![0xff; 3], vec![0x0a; BLOCKING_DECODE_BYTES + 1]] {
            let status = decode(Bytes::from(frame)).await.unwrap_err();
            assert!(status.message().contains("decode"), "{status:?}");
        }
    }
}
