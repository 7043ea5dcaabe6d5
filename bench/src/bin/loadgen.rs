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

#[path = "loadgen/fleet.rs"]
mod fleet;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;

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
    let cfg = Arc::new(FleetConfig {
        collector: args.collector.clone(),
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
        cfg.collector
    );
    let stats = Arc::new(FleetStats::default());
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
}
