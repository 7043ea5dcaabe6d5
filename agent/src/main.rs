//! `hostpulse-agent`: the command line. Parses flags, merges them with the
//! config file, and runs either the streaming agent (`run`) or one sampling
//! cycle printed in Prometheus text format (`sample`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use hostpulse_agent::config::{FileConfig, Settings};
use hostpulse_agent::inventory::Inventory;
use hostpulse_agent::sampler::{DEFAULT_SOURCE_DEADLINE, LatestCycle};
use hostpulse_agent::sources::REGISTRY;
use hostpulse_agent::{Sampler, client, exposition, serve};

/// Where `serve` listens unless told otherwise (loopback, see DESIGN.md).
const DEFAULT_LISTEN: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9472);

/// Samples this server's hardware health (temperatures, power, memory,
/// disks, network) and streams it to a hostpulse collector.
#[derive(Parser, Debug)]
#[command(name = "hostpulse-agent", version, after_help = sources_help())]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at startup; boxing the argument structs would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Sample on a fixed interval and stream to a collector, keeping
    /// unacknowledged batches and resending them after reconnects.
    Run(RunArgs),
    /// Sample once, print the result in Prometheus text format, and exit.
    Sample(SampleArgs),
    /// Serve /metrics over HTTP for pull-based setups (Prometheus scrapes
    /// the agent), sampling once per scrape.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Collector gRPC URL; repeat (or comma-separate) for several, tried in
    /// rendezvous-hash order with failover [default: http://127.0.0.1:9471]
    #[arg(long, env = "HOSTPULSE_COLLECTOR", value_delimiter = ',')]
    collector: Vec<String>,
    /// Host name to report as [default: the kernel's host name]
    #[arg(long, env = "HOSTPULSE_HOST")]
    host: Option<String>,
    /// Sampling interval, e.g. 10s, 500ms, 1m [default: 10s]
    #[arg(long, env = "HOSTPULSE_INTERVAL")]
    interval: Option<String>,
    /// Directory keeping the batch sequence number across restarts
    #[arg(long, env = "HOSTPULSE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Also serve /metrics on this address (e.g. 127.0.0.1:9472), from the streamed cycles
    #[arg(long, env = "HOSTPULSE_LISTEN")]
    listen: Option<String>,
    /// CA certificate (PEM) of the collector, for https:// collectors
    #[arg(long, env = "HOSTPULSE_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS; the collector takes this host's identity from it
    #[arg(long, env = "HOSTPULSE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mTLS
    #[arg(long, env = "HOSTPULSE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// File holding this agent's bearer token
    #[arg(long, env = "HOSTPULSE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Most batches kept while unacknowledged [default: 100000]
    #[arg(long, env = "HOSTPULSE_MAX_PENDING_BATCHES")]
    max_pending_batches: Option<usize>,
    /// Directory of the on-disk spool; in memory when unusable [default: /var/lib/hostpulse-agent]
    #[arg(long, env = "HOSTPULSE_SPOOL_DIR")]
    spool_dir: Option<PathBuf>,
    /// Most bytes the spool takes; the oldest data is dropped beyond it [default: 67108864]
    #[arg(long, env = "HOSTPULSE_SPOOL_MAX_BYTES")]
    spool_max_bytes: Option<u64>,
    /// How sample columns go on the wire: compact (to collectors that announce it) or plain [default: compact]
    #[arg(long, env = "HOSTPULSE_WIRE_ENCODING")]
    wire_encoding: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
struct SampleArgs {
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address to serve /metrics on [default: 127.0.0.1:9472]
    #[arg(long, env = "HOSTPULSE_LISTEN")]
    listen: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
struct CommonArgs {
    /// TOML config file; every flag is also a key (`--udev-data` is `udev_data`)
    #[arg(long, env = "HOSTPULSE_CONFIG")]
    config: Option<PathBuf>,
    /// Only these sources, comma-separated (see the list below)
    #[arg(long, value_delimiter = ',', env = "HOSTPULSE_ONLY")]
    only: Option<Vec<String>>,
    /// Never run these sources, comma-separated
    #[arg(long, value_delimiter = ',', env = "HOSTPULSE_DISABLE")]
    disable: Option<Vec<String>>,
    /// sysfs root [default: /sys]
    #[arg(long, env = "HOSTPULSE_SYSFS")]
    sysfs: Option<PathBuf>,
    /// procfs root [default: /proc]
    #[arg(long, env = "HOSTPULSE_PROCFS")]
    procfs: Option<PathBuf>,
    /// Host root filesystem, for mount points [default: /]
    #[arg(long, env = "HOSTPULSE_ROOTFS")]
    rootfs: Option<PathBuf>,
    /// udev database [default: /run/udev/data]
    #[arg(long, env = "HOSTPULSE_UDEV_DATA")]
    udev_data: Option<PathBuf>,
    /// Kernel log to follow [default: /dev/kmsg]
    #[arg(long, env = "HOSTPULSE_KMSG")]
    kmsg: Option<PathBuf>,
    /// Read smartctl --json files from this directory instead of running smartctl
    #[arg(long, env = "HOSTPULSE_SMARTCTL_JSON_DIR")]
    smartctl_json_dir: Option<PathBuf>,
    /// smartctl binary [default: smartctl]
    #[arg(long, env = "HOSTPULSE_SMARTCTL")]
    smartctl: Option<PathBuf>,
    /// How often SMART data is refreshed [default: 10m]
    #[arg(long, env = "HOSTPULSE_SMART_INTERVAL")]
    smart_interval: Option<String>,
    /// ipmitool binary for the optional ipmi source [default: ipmitool]
    #[arg(long, env = "HOSTPULSE_IPMITOOL")]
    ipmitool: Option<PathBuf>,
    /// Deadline for external commands (smartctl, ipmitool) [default: 10s]
    #[arg(long, env = "HOSTPULSE_COMMAND_TIMEOUT")]
    command_timeout: Option<String>,
}

fn sources_help() -> String {
    let mut s = String::from("Sources:\n");
    for e in REGISTRY {
        let off = if e.default_on {
            ""
        } else {
            " (off unless named by --only)"
        };
        s.push_str(&format!("  {:<14} {}{off}\n", e.name, e.about));
    }
    s
}

fn settings(common: CommonArgs, extra: FileConfig) -> anyhow::Result<Settings> {
    let file = match &common.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let flags = FileConfig {
        only: common.only,
        disable: common.disable,
        kmsg: common.kmsg,
        smartctl_json_dir: common.smartctl_json_dir,
        smartctl: common.smartctl,
        smart_interval: common.smart_interval,
        ipmitool: common.ipmitool,
        command_timeout: common.command_timeout,
        sysfs: common.sysfs,
        procfs: common.procfs,
        rootfs: common.rootfs,
        udev_data: common.udev_data,
        ..extra
    };
    let settings = Settings::resolve(file, flags)?;
    settings.paths.validate().map_err(anyhow::Error::msg)?;
    Ok(settings)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "hostpulse_agent=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostpulse-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Sample(args) => {
            let settings = settings(args.common, FileConfig::default())?;
            let mut sampler = Sampler::build(
                settings.paths.clone(),
                &settings.only,
                &settings.disable,
                &settings.sources,
            )?;
            let cycle = sampler.sample();
            print!("{}", exposition::render(&cycle));
            Ok(())
        }
        Command::Serve(args) => {
            let extra = FileConfig {
                listen: args.listen,
                ..FileConfig::default()
            };
            let settings = settings(args.common, extra)?;
            let addr = settings.listen.unwrap_or(DEFAULT_LISTEN);
            let sampler = Sampler::build(
                settings.paths.clone(),
                &settings.only,
                &settings.disable,
                &settings.sources,
            )?;
            // One thread: the endpoint is the runtime's only work, and each
            // scrape samples on it (see `serve`), so no worker or blocking
            // pool threads are woken per scrape.
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let listener = serve::bind(addr).await?;
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    hostpulse_agent::signal::shutdown_requested().await;
                    let _ = stop_tx.send(true);
                });
                tracing::info!(%addr, sources = ?sampler.source_names(), "serving /metrics");
                serve::serve(listener, serve::Metrics::own(sampler), stop_rx).await;
                anyhow::Ok(())
            })?;
            Ok(())
        }
        Command::Run(args) => {
            let extra = FileConfig {
                collectors: (!args.collector.is_empty()).then_some(args.collector),
                host: args.host,
                interval: args.interval,
                state_dir: args.state_dir,
                listen: args.listen,
                tls_ca: args.tls_ca,
                tls_cert: args.tls_cert,
                tls_key: args.tls_key,
                token_file: args.token_file,
                max_pending_batches: args.max_pending_batches,
                spool_dir: args.spool_dir,
                spool_max_bytes: args.spool_max_bytes,
                wire_encoding: args.wire_encoding,
                ..FileConfig::default()
            };
            let settings = settings(args.common, extra)?;
            let mut sampler = Sampler::build(
                settings.paths.clone(),
                &settings.only,
                &settings.disable,
                &settings.sources,
            )?;
            // A slow source may hold a cycle at most half an interval.
            sampler.set_deadline((settings.interval / 2).min(DEFAULT_SOURCE_DEADLINE));
            let latest = Arc::new(LatestCycle::default());
            if settings.listen.is_some() {
                sampler.publish_to(latest.clone());
            }
            let inventory = Inventory::read(&settings.paths);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            // Bound before anything starts, so a busy address is one clear error.
            let listener = match settings.listen {
                Some(addr) => Some((addr, runtime.block_on(serve::bind(addr))?)),
                None => None,
            };
            runtime.block_on(async move {
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                if let Some((addr, listener)) = listener {
                    tracing::info!(%addr, "serving /metrics from the streamed cycles");
                    tokio::spawn(serve::serve(listener, serve::Metrics::shared(latest), stop_rx.clone()));
                }
                tokio::spawn(async move {
                    hostpulse_agent::signal::shutdown_requested().await;
                    tracing::info!("shutting down");
                    let _ = stop_tx.send(true);
                });
                tracing::info!(collector = %settings.collector, interval = ?settings.interval, sources = ?sampler.source_names(), "agent starting");
                client::run(settings, sampler, inventory, Arc::default(), stop_rx).await
            })?;
            Ok(())
        }
    }
}
