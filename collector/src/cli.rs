//! The collector's command line, kept in the library so the end-to-end
//! tests can run the very same entry point as a child process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{FileConfig, Settings};

/// Stores hardware-health samples streamed by hostpulse agents, answers the
/// Prometheus HTTP API (Grafana, promtool), and posts alerts to webhooks.
#[derive(Parser, Debug)]
#[command(name = "hostpulse-collector", version)]
pub struct Cli {
    /// TOML config file; every flag is also a key (`--data-dir` is `data_dir`)
    #[arg(long, env = "HOSTPULSE_CONFIG")]
    config: Option<PathBuf>,
    /// Store directory [default: ./hostpulse-data]
    #[arg(long, env = "HOSTPULSE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP address: Prometheus API, status page, /metrics [default: 127.0.0.1:9470]
    #[arg(long, env = "HOSTPULSE_HTTP_ADDR")]
    http_addr: Option<String>,
    /// gRPC ingest address agents stream to [default: 127.0.0.1:9471]
    #[arg(long, env = "HOSTPULSE_GRPC_ADDR")]
    grpc_addr: Option<String>,
    /// Post alerts as JSON to this URL when they fire and resolve (repeatable)
    #[arg(long = "webhook-url", env = "HOSTPULSE_WEBHOOK_URL", value_delimiter = ',')]
    webhook_url: Vec<String>,
    /// How often alert rules are evaluated [default: 10s]
    #[arg(long, env = "HOSTPULSE_RULE_INTERVAL")]
    rule_interval: Option<String>,
    /// Also sample this machine with an in-process agent
    #[arg(long)]
    local_agent: bool,
    /// Sampling interval of the local agent [default: 10s]
    #[arg(long, env = "HOSTPULSE_LOCAL_AGENT_INTERVAL")]
    local_agent_interval: Option<String>,
    /// sled page cache in MiB [default: 256]
    #[arg(long, env = "HOSTPULSE_CACHE_CAPACITY_MB")]
    cache_capacity_mb: Option<u64>,
    /// Allow non-loopback listen addresses without TLS
    #[arg(long)]
    insecure: bool,
    /// What to do; with none, the collector runs.
    #[command(subcommand)]
    command: Option<Command>,
}

/// Subcommands besides running the collector (the default).
#[derive(Subcommand, Debug)]
enum Command {
    /// Write a consistent snapshot of a store to a file (the collector using
    /// that data directory must be stopped: sled locks it)
    Backup {
        /// Store directory to back up
        #[arg(long)]
        data_dir: PathBuf,
        /// Snapshot file to create (must not exist)
        out: PathBuf,
    },
    /// Load a snapshot made by `backup` into a new, empty data directory
    Restore {
        /// Store directory to create (must be absent or empty)
        #[arg(long)]
        data_dir: PathBuf,
        /// Snapshot file written by `backup`
        input: PathBuf,
    },
    /// Load Prometheus text or OpenMetrics files with timestamps into a store
    /// and exit once everything is durable and sealed (the collector using
    /// that data directory must be stopped: sled locks it)
    Import(crate::import::command::ImportArgs),
}

/// Runs the collector until SIGINT/SIGTERM; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "hostpulse_collector=info,hostpulse_agent=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostpulse-collector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Backup { data_dir, out }) => {
            let store = crate::store::Store::open(&data_dir, crate::store::StoreOptions::default())?;
            let written = store.backup_to(&out)?;
            println!("backed up {} records to {}", written, out.display());
            return Ok(());
        }
        Some(Command::Restore { data_dir, input }) => {
            let loaded = crate::store::restore_from(&input, &data_dir)?;
            println!("restored {} records into {}", loaded, data_dir.display());
            return Ok(());
        }
        Some(Command::Import(args)) => return crate::import::command::run(args),
        None => {}
    }
    let file = match &cli.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let flags = FileConfig {
        data_dir: cli.data_dir,
        http_addr: cli.http_addr,
        grpc_addr: cli.grpc_addr,
        webhook_url: if cli.webhook_url.is_empty() {
            None
        } else {
            Some(cli.webhook_url)
        },
        rule_interval: cli.rule_interval,
        local_agent: cli.local_agent.then_some(true),
        local_agent_interval: cli.local_agent_interval,
        cache_capacity_mb: cli.cache_capacity_mb,
        insecure: cli.insecure.then_some(true),
    };
    let settings = Settings::resolve(file, flags)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let local_agent = settings.local_agent;
        let running = crate::server::start(settings).await?;
        let http = running.http_addr;
        println!("hostpulse collector is running");
        println!("  status page     http://{http}/");
        println!("  Prometheus API  http://{http}/api/v1/  (Grafana: add a Prometheus data source with this URL)");
        println!("  own metrics     http://{http}/metrics");
        println!("  agents connect  http://{}", running.grpc_addr);
        if local_agent {
            println!("  try:            promtool query instant http://{http} node_memory_MemAvailable_bytes");
        }
        println!("Press Ctrl-C to stop.");
        hostpulse_agent::signal::shutdown_requested().await;
        tracing::info!("shutting down");
        running.shutdown().await;
        anyhow::Ok(())
    })
}
