//! `hostpulse-agent`: the command line. Parses flags, merges them with the
//! config file, and runs either the streaming agent (`run`) or one sampling
//! cycle printed in Prometheus text format (`sample`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use hostpulse_agent::config::{FileConfig, Settings};
use hostpulse_agent::inventory::Inventory;
use hostpulse_agent::sources::REGISTRY;
use hostpulse_agent::{Sampler, client, exposition};

/// Samples this server's hardware health (temperatures, power, memory,
/// disks, network) and streams it to a hostpulse collector.
#[derive(Parser, Debug)]
#[command(name = "hostpulse-agent", version, after_help = sources_help())]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sample on a fixed interval and stream to a collector, keeping
    /// unacknowledged batches and resending them after reconnects.
    Run(RunArgs),
    /// Sample once, print the result in Prometheus text format, and exit.
    Sample(SampleArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Collector gRPC URL [default: http://127.0.0.1:9471]
    #[arg(long, env = "HOSTPULSE_COLLECTOR")]
    collector: Option<String>,
    /// Host name to report as [default: the kernel's host name]
    #[arg(long, env = "HOSTPULSE_HOST")]
    host: Option<String>,
    /// Sampling interval, e.g. 10s, 500ms, 1m [default: 10s]
    #[arg(long, env = "HOSTPULSE_INTERVAL")]
    interval: Option<String>,
    /// Directory keeping the batch sequence number across restarts
    #[arg(long, env = "HOSTPULSE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Most batches kept while unacknowledged [default: 2160]
    #[arg(long, env = "HOSTPULSE_MAX_PENDING_BATCHES")]
    max_pending_batches: Option<usize>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
struct SampleArgs {
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
        Command::Run(args) => {
            let extra = FileConfig {
                collector: args.collector,
                host: args.host,
                interval: args.interval,
                state_dir: args.state_dir,
                max_pending_batches: args.max_pending_batches,
                ..FileConfig::default()
            };
            let settings = settings(args.common, extra)?;
            let sampler = Sampler::build(
                settings.paths.clone(),
                &settings.only,
                &settings.disable,
                &settings.sources,
            )?;
            let inventory = Inventory::read(&settings.paths);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
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
