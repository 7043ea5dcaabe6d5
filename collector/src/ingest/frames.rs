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

    #[tokio::test]
    async fn undecodable_frames_are_an_error_not_a_panic() {
        for frame in [vec![0xff; 3], vec![0x0a; BLOCKING_DECODE_BYTES + 1]] {
            let status = decode(Bytes::from(frame)).await.unwrap_err();
            assert!(status.message().contains("decode"), "{status:?}");
        }
    }
}
