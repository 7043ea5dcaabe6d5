//! `hostpulse-loadgen`: a fleet simulator that streams to a collector over
//! the real ingest protocol and, with `--verify`, proves that every
//! acknowledged sample is stored exactly once.
//!
//! ```text
//! hostpulse-loadgen --collector http://127.0.0.1:9471 --query-url http://127.0.0.1:9470 \
//!     --agents 100 --series 50 --interval 200ms --duration 40s --verify
//! ```
//!
//! Samples are deterministic (see `fleet.rs`); agents keep unacknowledged
//! batches and resend them after reconnects, so killing or restarting the
//! collector during a run must still end with `lost=0 duplicated=0`. The
//! last line printed is `acked=A stored=S lost=L duplicated=D` (with
//! `--verify`; without it `stored`, `lost` and `duplicated` are not
//! measured and the line is `acked=A`). The exit status is 1 when
//! anything acknowledged was lost or duplicated.
//!
//! With `--count-bytes` the agents connect through a relay inside this
//! process that forwards to the collector and counts the TCP payload each
//! way (HTTP/2 frames with the compressed gRPC messages, connection setup
//! included; no TLS), so the report can say how many bytes a sample costs
//! on the wire. The relay costs a little CPU and two small buffers per
//! connection.

#[path = "loadgen/fleet.rs"]
mod fleet;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use self::fleet::{FleetConfig, FleetStats};

/// Command line.
#[derive(Parser, Debug)]
#[command(
    name = "hostpulse-loadgen",
    about = "Simulated agents streaming to a hostpulse collector"
)]
struct Args {
    /// The collector's gRPC URL
    #[arg(long, default_value = "http://127.0.0.1:9471")]
    collector: String,
    /// The collector's HTTP API, for --verify
    #[arg(long, default_value = "http://127.0.0.1:9470")]
    query_url: String,
    /// Simulated agents, each with its own connection
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Series per agent
    #[arg(long, default_value_t = 50)]
    series: u32,
    /// Time between one agent's batches, e.g. `200ms`, `10s`
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    interval: Duration,
    /// How long agents make batches
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    duration: Duration,
    /// How long to keep trying to get the rest acknowledged afterwards
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain: Duration,
    /// Prefix of the simulated host names (default: `loadgen-` and the start
    /// time, so runs never collide)
    #[arg(long)]
    host_prefix: Option<String>,
    /// Read everything back through the query API and count lost and
    /// duplicated samples
    #[arg(long)]
    verify: bool,
    /// Relay the agents' connections through this process and count the
    /// bytes each way
    #[arg(long)]
    count_bytes: bool,
    /// Process id of the collector (on this machine): its CPU time over the
    /// run (until the fleet ends, before --verify reads back) and its peak
    /// RSS are reported
    #[arg(long)]
    collector_pid: Option<u32>,
    /// Also report the ack latency of batches sent after this long, per
    /// agent (its first `warmup / interval` batches left out), so a
    /// connect storm at the start does not hide what happens later, e.g. a
    /// seal; without it the line is left out
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
}

/// CPU seconds (user + system) a process has used and its peak RSS (KiB),
/// from `/proc/PID/stat` and `/proc/PID/status`.
fn process_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Some((ticks as f64 / 100.0, hwm))
}

/// TCP payload bytes the relay carried, each way.
#[derive(Debug, Default)]
struct WireBytes {
    to_collector: AtomicU64,
    from_collector: AtomicU64,
    /// Connections relayed.
    connections: AtomicU64,
}

/// Per-direction copy buffer of the relay: a compressed batch of a few
/// hundred samples is a few KB, and 10,000 connections x 2 directions must
/// stay small.
const RELAY_BUFFER: usize = 4096;

/// The `host:port` of an `http://host:port` URL, resolved.
async fn resolve(url: &str) -> Result<SocketAddr, String> {
    let authority = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: --count-bytes needs an http:// collector URL"))?
        .trim_end_matches('/');
    tokio::net::lookup_host(authority)
        .await
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))
}

/// Starts the counting relay in front of `target`; returns its address.
async fn start_relay(target: SocketAddr, bytes: Arc<WireBytes>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let client = match listener.accept().await {
                Ok((client, _)) => client,
                Err(e) => {
                    // Out of descriptors: wait for some to be released
                    // instead of spinning on the error.
                    eprintln!("loadgen: relay accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let bytes = Arc::clone(&bytes);
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                bytes.connections.fetch_add(1, Ordering::Relaxed);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let _ = tokio::join!(
                    copy_counting(client_read, server_write, &bytes.to_collector),
                    copy_counting(server_read, client_write, &bytes.from_collector),
                );
            });
        }
    });
    Ok(addr)
}

/// Copies until end of stream or an error, adding every byte to `counter`
/// as it passes (runs that end with connections still open are counted
/// too).
async fn copy_counting(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counter: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; RELAY_BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        to.write_all(&buf[..n]).await?;
    }
}

/// A duration with a unit: `250ms`, `10s`, `2m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit (ms, s, m, h)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m or h")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let t0_ms = now_ms();
    let wire = Arc::new(WireBytes::default());
    let collector_url = if args.count_bytes {
        let relayed = match resolve(&args.collector).await {
            Ok(target) => start_relay(target, Arc::clone(&wire)).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match relayed {
            Ok(addr) => format!("http://{addr}"),
            Err(e) => {
                eprintln!("loadgen: cannot start the byte-counting relay: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        args.collector.clone()
    };
    let cfg = Arc::new(FleetConfig {
        collector: collector_url,
        agents: args.agents,
        series: args.series,
        interval: args.interval,
        duration: args.duration,
        drain: args.drain,
        host_prefix: args
            .host_prefix
            .clone()
            .unwrap_or_else(|| format!("loadgen-{}", t0_ms / 1000)),
        t0_ms,
    });
    println!(
        "loadgen: {} agents x {} series every {:?} for {:?} ({} batches each) to {}",
        cfg.agents,
        cfg.series,
        cfg.interval,
        cfg.duration,
        cfg.batches(),
        args.collector
    );
    let stats = Arc::new(FleetStats::default());
    let cpu_before = args.collector_pid.and_then(process_usage);
    let started = Instant::now();
    let progress = {
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                println!(
                    "loadgen: {:>5.1}s acked_batches={} streams={} failures={}",
                    started.elapsed().as_secs_f64(),
                    stats.acked_batches.load(Ordering::Relaxed),
                    stats.streams.load(Ordering::Relaxed),
                    stats.failures.load(Ordering::Relaxed),
                );
            }
        })
    };
    let reports = fleet::run(Arc::clone(&cfg), Arc::clone(&stats)).await;
    progress.abort();
    let elapsed = started.elapsed();
    let cpu_after = args.collector_pid.and_then(process_usage);

    let mut latencies: Vec<u32> = reports
        .iter()
        .flat_map(|r| r.ack_latencies_ms.iter().copied())
        .collect();
    latencies.sort_unstable();
    let made: u64 = reports.iter().map(|r| r.made).sum();
    let acked_batches: u64 = reports.iter().map(|r| r.acked_seq).sum();
    let refused: u64 = reports.iter().map(|r| r.refused).sum();
    let fmt = |q| fleet::quantile(&latencies, q).map_or("n/a".to_owned(), |ms| format!("{ms}ms"));
    println!(
        "loadgen: {:.1}s: batches made={made} acked={acked_batches} refused={refused}; samples/s acked={:.0}; \
         ack latency p50={} p99={} max={}; streams={} failures={} resent_batches={} collector_errors={} shed={}",
        elapsed.as_secs_f64(),
        (acked_batches * u64::from(cfg.series)) as f64 / elapsed.as_secs_f64().max(1e-9),
        fmt(0.5),
        fmt(0.99),
        fmt(1.0),
        stats.streams.load(Ordering::Relaxed),
        stats.failures.load(Ordering::Relaxed),
        stats.resent_batches.load(Ordering::Relaxed),
        stats.collector_errors.load(Ordering::Relaxed),
        stats.shed.load(Ordering::Relaxed),
    );
    if let Some(warmup) = args.warmup {
        // Acks are recorded in seq order, one entry per batch sent.
        let skip = usize::try_from(warmup.as_nanos().div_ceil(cfg.interval.as_nanos().max(1))).unwrap_or(usize::MAX);
        let mut later: Vec<u32> = reports
            .iter()
            .flat_map(|r| r.ack_latencies_ms.iter().skip(skip).copied())
            .collect();
        later.sort_unstable();
        let fmt = |q| fleet::quantile(&later, q).map_or("n/a".to_owned(), |ms| format!("{ms}ms"));
        println!(
            "loadgen: after {:.0}s warm-up ({} batches): ack latency p50={} p99={} max={}",
            warmup.as_secs_f64(),
            later.len(),
            fmt(0.5),
            fmt(0.99),
            fmt(1.0),
        );
    }
    if let (Some((before, _)), Some((after, hwm_kib))) = (cpu_before, cpu_after) {
        println!(
            "loadgen: collector cpu={:.1}s over {:.1}s = {:.1}% of one core; peak RSS (VmHWM)={:.1} MiB",
            after - before,
            elapsed.as_secs_f64(),
            (after - before) / elapsed.as_secs_f64().max(1e-9) * 100.0,
            hwm_kib as f64 / 1024.0
        );
    }
    if args.count_bytes {
        let up = wire.to_collector.load(Ordering::Relaxed);
        let down = wire.from_collector.load(Ordering::Relaxed);
        let samples = (acked_batches * u64::from(cfg.series)).max(1);
        println!(
            "loadgen: wire bytes agents->collector={up} ({:.2} B/sample acked) collector->agents={down} ({:.2} B/sample); connections={}",
            up as f64 / samples as f64,
            down as f64 / samples as f64,
            wire.connections.load(Ordering::Relaxed),
        );
    }
    if !args.verify {
        println!("acked={}", acked_batches * u64::from(cfg.series));
        return ExitCode::SUCCESS;
    }
    match fleet::verify(&cfg, &args.query_url, &reports).await {
        Ok(verdict) => {
            // Samples stored but never acknowledged (the collector died
            // between flush and ack) are fine; samples no batch had are not.
            println!("loadgen: unexpected={} (samples no batch carried)", verdict.unexpected);
            println!("{verdict}");
            if verdict.lost == 0 && verdict.duplicated == 0 && verdict.unexpected == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("loadgen: verify failed: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("40s").unwrap(), Duration::from_secs(40));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "s", "10", "10x", "0s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn usage_of_this_process_is_read() {
        let (cpu, hwm_kib) = process_usage(std::process::id()).unwrap();
        assert!(cpu >= 0.0);
        assert!(hwm_kib > 0);
        assert!(process_usage(u32::MAX).is_none());
    }

    #[tokio::test]
    async fn the_relay_forwards_and_counts_both_ways() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(b"pong!!").await.unwrap();
        });
        let bytes = Arc::new(WireBytes::default());
        let relay = start_relay(target, Arc::clone(&bytes)).await.unwrap();
        let mut c = TcpStream::connect(relay).await.unwrap();
        c.write_all(b"ping!").await.unwrap();
        let mut got = [0u8; 6];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong!!");
        assert_eq!(bytes.to_collector.load(Ordering::Relaxed), 5);
        assert_eq!(bytes.from_collector.load(Ordering::Relaxed), 6);
        assert_eq!(resolve(&format!("http://{target}")).await.unwrap(), target);
        assert!(resolve("https://x:1").await.is_err());
    }
}
