//! Shared helpers of the benchmark programs in `src/bin/`: each program
//! measures hostpulse next to a named peer in the same run and prints both
//! figures. See BENCHMARKS.md for the commands and results.

use std::net::SocketAddr;

use anyhow::bail;
use hostpulse_proto::ingest_client::IngestClient;
use hostpulse_proto::{AgentMessage, Batch, Hello, SeriesDefinition, agent_message, collector_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// One batch's columns: base timestamp, refs, timestamp deltas (empty: every
/// sample at the base) and values.
pub type BatchColumns = (i64, Vec<u32>, Vec<i64>, Vec<f64>);

/// One simulated agent over the real `hostpulse.v1` protocol: a Hello
/// (`agent_version` names the benchmark), then `batches` in order, the
/// first carrying `defs`; returns once the last batch is acknowledged
/// (acks are durable).
pub async fn stream_host(
    grpc: SocketAddr,
    host: String,
    agent_version: &str,
    defs: Vec<SeriesDefinition>,
    batches: Vec<BatchColumns>,
) -> anyhow::Result<()> {
    let last_seq = batches.len() as u64;
    let mut client = IngestClient::connect(format!("http://{grpc}"))
        .await?
        .max_encoding_message_size(256 << 20);
    let (tx, rx) = mpsc::channel(256);
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            host: host.clone(),
            agent_version: agent_version.into(),
            ..Default::default()
        })),
    })
    .await?;
    // Dropped when this function returns, however it returns.
    let (_done, done_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut defs = Some(defs);
        for (i, (ts, refs, timestamp_deltas_ms, values)) in batches.into_iter().enumerate() {
            let batch = Batch {
                seq: i as u64 + 1,
                new_series: defs.take().unwrap_or_default(),
                base_timestamp_ms: ts,
                refs,
                timestamp_deltas_ms,
                values,
                events: Vec::new(),
                ..Default::default()
            };
            let msg = AgentMessage {
                kind: Some(agent_message::Kind::Batch(batch)),
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
        // Keep the request side open until the last ack arrived (or the
        // stream failed), then end it so the collector can stop cleanly.
        tokio::select! {
            _ = tx.closed() => {}
            _ = done_rx => {}
        }
    });
    let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    if last_seq == 0 {
        return Ok(());
    }
    while let Some(msg) = inbound.message().await? {
        match msg.kind {
            Some(collector_message::Kind::Ack(ack)) if ack.seq >= last_seq => return Ok(()),
            Some(collector_message::Kind::Error(e)) => bail!("{host}: collector error: {e:?}"),
            _ => {}
        }
    }
    bail!("{host}: stream ended before the last ack")
}
