//! Starts a whole collector: opens the store, binds the HTTP and gRPC
//! listeners, and runs ingest, the HTTP API, the rule loop and (optionally)
//! an in-process agent for this machine. `main.rs` and the end-to-end tests
//! both start collectors through [`start`].
//!
//! With TLS configured both listeners speak it (the gRPC one also asks for
//! client certificates when a client CA is set); the HTTP/2 limits of the
//! gRPC listener are set here explicitly rather than left to library
//! defaults, and the admin token guards write and admin HTTP paths.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::auth::{AdminGuard, Authenticator};
use crate::config::Settings;
use crate::detect::{self, RuleContext};
use crate::ingest::{self, IngestService};
use crate::query::{self, ApiContext};
use crate::store::{Store, StoreOptions};
use crate::telemetry::Telemetry;

/// A collector that is running; dropping it does not stop it, call
/// [`RunningCollector::shutdown`].
pub struct RunningCollector {
    /// Where the HTTP API listens (the real port when 0 was asked for).
    pub http_addr: SocketAddr,
    /// Where gRPC ingest listens.
    pub grpc_addr: SocketAddr,
    /// The store.
    pub store: Store,
    /// Self-telemetry.
    pub telemetry: Arc<Telemetry>,
    /// The local agent's status, when one runs.
    pub local_agent: Option<Arc<hostpulse_agent::client::ClientStatus>>,
    /// Whether both listeners speak TLS (URLs are then `https://`).
    pub tls: bool,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error("data dir {}: {source}", dir.display())]
    Store {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        source: crate::store::StoreError,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The local agent could not be set up.
    #[error("local agent: {0}")]
    LocalAgent(String),
    /// The TLS files are unusable.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The admin token file is unusable.
    #[error("admin token: {0}")]
    AdminToken(#[from] crate::auth::TokenFileError),
    /// tonic refused the TLS configuration.
    #[error("gRPC TLS: {0}")]
    GrpcTls(String),
    /// Rules, alert state or the webhook secret are unusable.
    #[error("alerting: {0}")]
    Alerting(#[from] detect::SetupError),
}

/// Streams one HTTP/2 connection to the gRPC listener may open. An agent
/// needs one; the bound stops a single connection from opening thousands.
/// A client multiplexing many simulated agents over one connection must
/// stay under it (further streams wait for a free slot).
pub const GRPC_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Largest header block accepted from a gRPC client. Agents send a few
/// short headers (content type, encodings, a bearer token).
pub const GRPC_MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// How often the collector pings an idle agent connection, so a vanished
/// agent (host powered off, network cut) frees its stream.
pub const GRPC_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
pub const GRPC_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams a client may reset before the server has accepted them; the
/// bound against HTTP/2 "rapid reset" floods.
pub const GRPC_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the server may reset for protocol errors on one connection
/// before it closes the connection.
pub const GRPC_MAX_LOCAL_ERROR_RESETS: usize = 256;

/// HTTP/2 flow-control window the collector grants each agent stream.
/// hyper's default is 1 MiB: an agent may send that much before the
/// collector reads any of it, and while the in-flight budget holds reads
/// back during a connect storm h2 buffers it, outside that budget, for
/// every connection at once. A steady-state batch (300 series) is a few
/// KiB, a first batch with series definitions tens of KiB; 128 KiB lets
/// those through in one window while large batches (up to the message
/// size limit) still flow, a window per round trip.
pub const GRPC_STREAM_WINDOW_BYTES: u32 = 128 * 1024;
/// HTTP/2 connection window: an agent opens one stream, so twice the
/// stream window leaves room for a reconnecting stream while bounding what
/// one connection can make the collector buffer.
pub const GRPC_CONNECTION_WINDOW_BYTES: u32 = 2 * GRPC_STREAM_WINDOW_BYTES;
/// Largest HTTP/2 frame payload accepted; the protocol's minimum and
/// hyper's default, stated so the read buffer per connection is bounded.
pub const GRPC_MAX_FRAME_BYTES: u32 = 16 * 1024;
/// Pending-connection queue of both listeners. tokio's `bind` asks for
/// 1024, which 10,000 agents connecting at once overflow (connects then
/// fail or retry after seconds). The kernel caps it at
/// `net.core.somaxconn` (and SYNs at `net.ipv4.tcp_max_syn_backlog`).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener with [`LISTEN_BACKLOG`] and `SO_REUSEADDR`, so a
/// restarted collector can take its port back while old connections sit
/// in TIME_WAIT.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The gRPC server with every transport limit set, and TLS when given.
fn grpc_server(tls: Option<&crate::tls::LoadedTls>) -> Result<tonic::transport::Server, StartError> {
    let builder = tonic::transport::Server::builder()
        .max_concurrent_streams(GRPC_MAX_CONCURRENT_STREAMS)
        // Fixed windows, not hyper's adaptive ones, which grow towards
        // megabytes per connection under a fast sender.
        .http2_adaptive_window(Some(false))
        .initial_stream_window_size(GRPC_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(GRPC_CONNECTION_WINDOW_BYTES)
        .max_frame_size(GRPC_MAX_FRAME_BYTES)
        .http2_max_header_list_size(GRPC_MAX_HEADER_LIST_BYTES)
        .http2_keepalive_interval(Some(GRPC_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(GRPC_KEEPALIVE_TIMEOUT))
        .http2_max_pending_accept_reset_streams(Some(GRPC_MAX_PENDING_ACCEPT_RESETS))
        .http2_max_local_error_reset_streams(Some(GRPC_MAX_LOCAL_ERROR_RESETS));
    match tls {
        Some(tls) => builder
            .tls_config(tls.grpc.clone())
            .map_err(|e| StartError::GrpcTls(e.to_string())),
        None => Ok(builder),
    }
}

/// Serves the HTTP app on any listener until `stop` turns true.
async fn serve_http<L>(listener: L, app: axum::Router, mut stop: watch::Receiver<bool>)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}

/// A config duration as the store's milliseconds.
fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Starts every part of the collector and returns once they listen.
pub async fn start(settings: Settings) -> Result<RunningCollector, StartError> {
    let store = Store::open(
        &settings.data_dir,
        StoreOptions {
            cache_capacity_bytes: settings.cache_capacity_bytes,
            decoded_cache_bytes: usize::try_from(settings.decoded_cache_bytes).unwrap_or(usize::MAX),
            out_of_order_ms: millis(settings.out_of_order_window),
            head_max_bytes: usize::try_from(settings.head_max_bytes).unwrap_or(usize::MAX),
            retention_ms: settings.retention.map(millis),
            rollup_retention_ms: settings.rollup_retention.map(|r| r.map(millis)),
            ..StoreOptions::default()
        },
    )
    .map_err(|source| StartError::Store {
        dir: settings.data_dir.clone(),
        source,
    })?;
    let telemetry = Arc::new(Telemetry::default());
    let security = &settings.security;
    let tls = security.tls.as_ref().map(crate::tls::load).transpose()?;
    let admin = AdminGuard::load(security.admin_token_file.as_deref(), telemetry.clone())?;
    let authenticator = Authenticator::new(
        tls.as_ref().is_some_and(|t| t.client_certs_required),
        security.agent_tokens.clone(),
    );
    let grpc = grpc_server(tls.as_ref())?;
    let bind = |what: &'static str, addr: SocketAddr| async move {
        listen(addr).map_err(|source| StartError::Bind { what, addr, source })
    };
    let http_listener = bind("HTTP", settings.http_addr).await?;
    let grpc_listener = bind("gRPC", settings.grpc_addr).await?;
    let local = |l: &TcpListener, addr| {
        l.local_addr().map_err(|source| StartError::Bind {
            what: "local",
            addr,
            source,
        })
    };
    let http_addr = local(&http_listener, settings.http_addr)?;
    let grpc_addr = local(&grpc_listener, settings.grpc_addr)?;
    if tls.is_none() {
        for (what, addr) in [("HTTP", http_addr), ("gRPC", grpc_addr)] {
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, listener = what, "--insecure: listening on a non-loopback address without TLS; traffic, tokens and host names travel unencrypted");
            }
        }
    }
    if !authenticator.is_required() && !grpc_addr.ip().is_loopback() {
        tracing::warn!(%grpc_addr, "agents are not authenticated (no --client-ca, no agent tokens): any client can write as any host");
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let svc = IngestService::new(store.clone(), telemetry.clone(), settings.ingest_limits.clone())
        .with_authenticator(authenticator);
    let mut grpc_stop = stop_rx.clone();
    tasks.push((
        "grpc",
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = grpc_stop.wait_for(|s| *s).await;
            };
            let mut grpc = grpc;
            let served = grpc
                .add_service(ingest::server(svc))
                .serve_with_incoming_shutdown(TcpListenerStream::new(grpc_listener), shutdown)
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "gRPC server stopped");
            }
        }),
    ));

    let rules = RuleContext::from_settings(
        &settings,
        store.clone(),
        telemetry.clone(),
        &settings
            .external_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{http_addr}")),
    )?;
    let board = rules.board.clone();
    let api = ApiContext {
        store: store.clone(),
        telemetry: telemetry.clone(),
        alerts: board.clone(),
        started_ms: hostpulse_agent::sampler::now_ms(),
    };
    let remote_write = crate::remote_write::router(store.clone(), telemetry.clone());
    // The admin guard wraps the whole app so any write or admin route,
    // including ones merged in later, needs the token.
    let app = query::router(api)
        .merge(remote_write)
        // `POST /api/v1/admin/backup`; the path guard below requires the token.
        .merge(crate::admin::router(store.clone()))
        .merge(rules.api_router())
        .merge(crate::auth::require_admin_token(rules.reload_router(), admin.clone()))
        .layer(axum::middleware::from_fn_with_state(
            admin,
            crate::auth::guard_admin_paths,
        ));
    let http_stop = stop_rx.clone();
    let http_task = match &tls {
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(http_listener, tls.http.clone(), tls.handshake_timeout)
                .map_err(|source| StartError::Bind {
                    what: "HTTP",
                    addr: http_addr,
                    source,
                })?;
            tokio::spawn(serve_http(listener, app, http_stop))
        }
        None => tokio::spawn(serve_http(http_listener, app, http_stop)),
    };
    tasks.push(("http", http_task));

    tasks.push((
        "rule-reload",
        tokio::spawn(detect::reload_on_sighup(rules.rules.clone(), stop_rx.clone())),
    ));
    tasks.push(("rules", tokio::spawn(detect::run(rules, stop_rx.clone()))));

    let mut local_agent = None;
    if settings.local_agent {
        let agent_settings = hostpulse_agent::config::Settings {
            collector: format!("http://{grpc_addr}"),
            interval: settings.local_agent_interval,
            ..Default::default()
        };
        let sampler = hostpulse_agent::Sampler::new(agent_settings.paths.clone(), &agent_settings.only)
            .map_err(|e| StartError::LocalAgent(e.to_string()))?;
        let inventory = hostpulse_agent::inventory::Inventory::read(&agent_settings.paths);
        let status = Arc::new(hostpulse_agent::client::ClientStatus::default());
        local_agent = Some(status.clone());
        let agent_stop = stop_rx.clone();
        tasks.push((
            "local-agent",
            tokio::spawn(async move {
                if let Err(e) =
                    hostpulse_agent::client::run(agent_settings, sampler, inventory, status, agent_stop).await
                {
                    tracing::error!(error = %e, "local agent stopped");
                }
            }),
        ));
    }

    tracing::info!(%http_addr, %grpc_addr, data_dir = %settings.data_dir.display(), "collector listening");
    Ok(RunningCollector {
        http_addr,
        grpc_addr,
        store,
        telemetry,
        local_agent,
        tls: tls.is_some(),
        stop,
        tasks,
    })
}

impl RunningCollector {
    /// Stops every part and waits for them, so the store is closed cleanly.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for (name, task) in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(task = name, error = %e, "task ended abnormally");
            }
        }
    }
}
