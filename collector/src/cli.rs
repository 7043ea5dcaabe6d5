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
    /// File holding the secret that signs webhook bodies (X-Hostpulse-Signature: sha256=HMAC)
    #[arg(long, env = "HOSTPULSE_WEBHOOK_SECRET_FILE")]
    webhook_secret_file: Option<PathBuf>,
    /// Send alerts to this Alertmanager (base URL, e.g. http://127.0.0.1:9093; repeatable)
    #[arg(long = "alertmanager-url", env = "HOSTPULSE_ALERTMANAGER_URL", value_delimiter = ',')]
    alertmanager_url: Vec<String>,
    /// Prometheus rule file to evaluate besides the built-in hardware pack (repeatable; reloaded on SIGHUP and POST /-/reload)
    #[arg(long = "rule-file")]
    rule_file: Vec<PathBuf>,
    /// Do not run the built-in hardware rule pack
    #[arg(long)]
    no_builtin_rules: bool,
    /// Least quiet time before a host counts as silent [default: two of the host's own sampling intervals]
    #[arg(long, env = "HOSTPULSE_HOST_SILENT_AFTER")]
    host_silent_after: Option<String>,
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
    /// Cache of decoded sealed-block sections shared by queries and rules, in MiB; 0 turns it off [default: 128]
    #[arg(long, env = "HOSTPULSE_DECODED_CACHE_MB")]
    decoded_cache_mb: Option<u64>,
    /// URL people reach the collector at (proxy, DNS name), for links in alerts [default: from --http-addr]
    #[arg(long, env = "HOSTPULSE_EXTERNAL_URL")]
    external_url: Option<String>,
    /// Allow non-loopback listen addresses without TLS
    #[arg(long)]
    insecure: bool,
    /// TLS certificate chain (PEM) for the gRPC and HTTP listeners
    #[arg(long, env = "HOSTPULSE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long, env = "HOSTPULSE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) signing agents' client certificates; agents must then present one, and it names their host
    #[arg(long, env = "HOSTPULSE_CLIENT_CA")]
    client_ca: Option<PathBuf>,
    /// Deadline for a TLS handshake [default: 10s]
    #[arg(long, env = "HOSTPULSE_TLS_HANDSHAKE_TIMEOUT")]
    tls_handshake_timeout: Option<String>,
    /// Per-agent token as HOST=SHA256 (see `hash-token`); repeatable
    #[arg(long = "agent-token", value_parser = crate::auth::AgentTokenEntry::from_flag)]
    agent_token: Vec<crate::auth::AgentTokenEntry>,
    /// File with the admin token write and admin HTTP endpoints require
    #[arg(long, env = "HOSTPULSE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// What to do; with none, the collector runs.
    #[command(subcommand)]
    command: Option<Command>,
}

/// Subcommands besides running the collector (the default).
#[derive(Subcommand, Debug)]
enum Command {
    /// Write a consistent snapshot of a store to a file: from a running
    /// collector over HTTP (--url), or from the data directory of a stopped
    /// one (--data-dir; sled locks a running collector's)
    Backup {
        /// Collector to back up while it runs, e.g. http://127.0.0.1:9470 (POST /api/v1/admin/backup)
        #[arg(long, conflicts_with = "data_dir", required_unless_present = "data_dir")]
        url: Option<String>,
        /// File holding the collector's admin token (with --url)
        #[arg(long, env = "HOSTPULSE_ADMIN_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// Store directory of a stopped collector to back up
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Snapshot file to create (must not exist); written beside it as OUT.partial, checked, then renamed
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
    /// Create a private CA, a server certificate and agent certificates for
    /// mTLS: ca.pem, ca-key.pem, server.pem, server-key.pem, HOST.pem and
    /// HOST-key.pem (keys mode 0600)
    Certs {
        /// Directory to write into
        #[arg(long)]
        out: PathBuf,
        /// Name or IP address agents use to reach the collector (repeatable)
        #[arg(long = "server-name", required = true)]
        server_name: Vec<String>,
        /// Agent host name to make a client certificate for (repeatable)
        #[arg(long = "agent")]
        agent: Vec<String>,
        /// Replace existing files
        #[arg(long)]
        force: bool,
    },
    /// Check Prometheus rule files (or, with none, the built-in pack) and
    /// exit non-zero naming file, group, rule and problem for each error
    CheckRules {
        /// Rule files to check
        files: Vec<PathBuf>,
    },
    /// Read an agent token on stdin and print the hashed config entry for it
    HashToken {
        /// The agent's host name, to print a whole `[[agent_tokens]]` entry
        #[arg(long)]
        host: Option<String>,
    },
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
        Some(Command::Backup {
            url,
            token_file,
            data_dir,
            out,
        }) => return backup(url, token_file, data_dir, &out),
        Some(Command::Restore { data_dir, input }) => {
            let loaded = crate::store::restore_from(&input, &data_dir)?;
            println!("restored {} records into {}", loaded, data_dir.display());
            return Ok(());
        }
        Some(Command::Import(args)) => return crate::import::command::run(args),
        Some(Command::Certs {
            out,
            server_name,
            agent,
            force,
        }) => {
            let request = crate::certs::CertsRequest {
                out,
                server_names: server_name,
                agents: agent,
                force,
            };
            for path in crate::certs::generate(&request)? {
                println!("wrote {}", path.display());
            }
            return Ok(());
        }
        Some(Command::CheckRules { files }) => return check_rules(&files),
        Some(Command::HashToken { host }) => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
            let snippet = crate::auth::hash_token_snippet(&text, host.as_deref())
                .map_err(|e| anyhow::anyhow!("token on stdin: {e}"))?;
            print!("{snippet}");
            return Ok(());
        }
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
        webhook_secret_file: cli.webhook_secret_file,
        alertmanager_url: (!cli.alertmanager_url.is_empty()).then_some(cli.alertmanager_url),
        rule_file: (!cli.rule_file.is_empty()).then_some(cli.rule_file),
        builtin_rules: cli.no_builtin_rules.then_some(false),
        host_silent_after: cli.host_silent_after,
        local_agent: cli.local_agent.then_some(true),
        local_agent_interval: cli.local_agent_interval,
        cache_capacity_mb: cli.cache_capacity_mb,
        decoded_cache_mb: cli.decoded_cache_mb,
        external_url: cli.external_url,
        insecure: cli.insecure.then_some(true),
        tls_cert: cli.tls_cert,
        tls_key: cli.tls_key,
        client_ca: cli.client_ca,
        tls_handshake_timeout: cli.tls_handshake_timeout,
        agent_tokens: (!cli.agent_token.is_empty()).then_some(cli.agent_token),
        admin_token_file: cli.admin_token_file,
        // Store tuning keys are config-file only.
        ..FileConfig::default()
    };
    let settings = Settings::resolve(file, flags)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let local_agent = settings.local_agent;
        let running = crate::server::start(settings).await?;
        let http = running.http_addr;
        let scheme = if running.tls { "https" } else { "http" };
        println!("hostpulse collector is running");
        println!("  status page     {scheme}://{http}/");
        println!("  Prometheus API  {scheme}://{http}/api/v1/  (Grafana: add a Prometheus data source with this URL)");
        println!("  own metrics     {scheme}://{http}/metrics");
        println!("  agents connect  {scheme}://{}", running.grpc_addr);
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

/// `backup`: over HTTP from a running collector, or from a stopped one's
/// data directory.
fn backup(
    url: Option<String>,
    token_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let (records, bytes) = match (url, data_dir) {
        (Some(url), _) => {
            let token = token_file.as_deref().map(crate::admin::read_token).transpose()?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let fetched = runtime.block_on(crate::admin::fetch_backup(&url, token.as_deref(), out))?;
            (fetched.records, fetched.bytes)
        }
        (None, Some(data_dir)) => {
            let store = crate::store::Store::open(&data_dir, crate::store::StoreOptions::default())?;
            let records = store.backup_to(out)?;
            (records, std::fs::metadata(out).map(|m| m.len()).unwrap_or(0))
        }
        (None, None) => anyhow::bail!("backup needs --url (a running collector) or --data-dir (a stopped one)"),
    };
    println!(
        "backed up {records} records ({bytes} bytes) to {} in {:.2}s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `check-rules`: validates each file (the built-in pack when none is
/// given) and prints what `promtool check rules` would: a count per good
/// file, every problem of a bad one.
fn check_rules(files: &[PathBuf]) -> anyhow::Result<()> {
    use crate::detect::{BUILTIN_FILE, BUILTIN_RULES, rulefile};
    let mut texts = Vec::new();
    if files.is_empty() {
        texts.push((BUILTIN_FILE.to_string(), Ok(BUILTIN_RULES.to_string())));
    }
    for f in files {
        texts.push((f.display().to_string(), std::fs::read_to_string(f)));
    }
    let mut failed = 0;
    for (name, text) in texts {
        println!("Checking {name}");
        let outcome = text.map_err(|e| vec![format!("{name}: {e}")]).and_then(|t| {
            rulefile::parse_rule_file(&name, &t).map_err(|es| es.iter().map(ToString::to_string).collect())
        });
        match outcome {
            Ok(groups) => {
                let n: usize = groups.iter().map(|g| g.rules.len()).sum();
                println!("  SUCCESS: {n} rules found");
            }
            Err(errors) => {
                failed += 1;
                println!("  FAILED:");
                for e in errors {
                    println!("{e}");
                }
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} rule file(s) have errors");
    }
    Ok(())
}
