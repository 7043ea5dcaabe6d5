//! Starts a whole collector: opens the store, binds the HTTP and gRPC
//! listeners, and runs ingest, the HTTP API, the rule loop and (optionally)
//! an in-process agent for this machine. `main.rs` and the end-to-end tests
//! both start collectors through [`start`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::alert::{AlertBoard, Notifier};
use crate::config::Settings;
use crate::detect::{self, RuleContext};
use crate::ingest::{self, IngestLimits, IngestService};
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
}

/// Starts every part of the collector and returns once they listen.
pub async fn start(settings: Settings) -> Result<RunningCollector, StartError> {
    let store = Store::open(
        &settings.data_dir,
        StoreOptions {
            cache_capacity_bytes: settings.cache_capacity_bytes,
        },
    )
    .map_err(|source| StartError::Store {
        dir: settings.data_dir.clone(),
        source,
    })?;
    let telemetry = Arc::new(Telemetry::default());
    let bind = |what: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { what, addr, source })
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
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let svc = IngestService::new(store.clone(), telemetry.clone(), IngestLimits::default());
    let mut grpc_stop = stop_rx.clone();
    tasks.push((
        "grpc",
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = grpc_stop.wait_for(|s| *s).await;
            };
            let served = tonic::transport::Server::builder()
                .add_service(ingest::server(svc))
                .serve_with_incoming_shutdown(TcpListenerStream::new(grpc_listener), shutdown)
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "gRPC server stopped");
            }
        }),
    ));

    let board = Arc::new(AlertBoard::default());
    let notifier = Arc::new(
        Notifier::new(settings.webhook_urls.clone(), telemetry.clone())
            .with_external_url(format!("http://{http_addr}")),
    );
    let api = ApiContext {
        store: store.clone(),
        telemetry: telemetry.clone(),
        alerts: board.clone(),
        started_ms: hostpulse_agent::sampler::now_ms(),
    };
    let remote_write = crate::remote_write::router(store.clone(), telemetry.clone());
    let mut http_stop = stop_rx.clone();
    tasks.push((
        "http",
        tokio::spawn(async move {
            let served = axum::serve(http_listener, query::router(api).merge(remote_write))
                .with_graceful_shutdown(async move {
                    let _ = http_stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        }),
    ));

    let rules = RuleContext {
        store: store.clone(),
        board,
        notifier,
        telemetry: telemetry.clone(),
        interval: settings.rule_interval,
    };
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
