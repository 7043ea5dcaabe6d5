//! TLS for the collector's two listeners, with rustls and its `ring`
//! provider.
//!
//! The same certificate and key serve gRPC ingest (through tonic's own
//! acceptor, which also asks for client certificates when a client CA is
//! configured) and the HTTP API (through [`TlsListener`], which performs
//! handshakes for `axum::serve` and never asks for a client certificate, so
//! Grafana and promtool connect with a CA only). Every handshake has a
//! deadline ([`ServerTls::handshake_timeout`]) so a client that opens a
//! connection and says nothing holds no task for long.
//!
//! Reading files is kept apart from parsing them: [`parse_certificates`]
//! and [`parse_private_key`] are pure, and every error names the file.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Default deadline for a TLS handshake to complete.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes the HTTP listener runs at once; connections beyond this are
/// closed at once rather than queued, so a flood of silent clients cannot
/// grow memory without bound.
const MAX_CONCURRENT_HTTP_HANDSHAKES: usize = 256;

/// Finished handshakes waiting for `axum::serve` to pick them up.
const ACCEPTED_QUEUE: usize = 64;

/// TLS settings of the collector, as configured (`--tls-cert`, `--tls-key`,
/// `--client-ca`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    /// The server's certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates that sign agents' client certificates. When set,
    /// gRPC clients must present a certificate signed by one of them, and
    /// the certificate names the host.
    pub client_ca: Option<PathBuf>,
    /// Deadline for a TLS handshake, on both listeners.
    pub handshake_timeout: Duration,
}

/// Why TLS could not be set up; every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not valid PEM, or holds none of what was expected.
    #[error("{}: {message}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the certificates or key (for example a key that does
    /// not belong to the certificate).
    #[error("{}: {source}", path.display())]
    Rejected {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::Error,
    },
    /// The client CA could not be turned into a verifier.
    #[error("{}: {message}", path.display())]
    ClientCa {
        /// The CA file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// TLS configuration ready for both listeners.
#[derive(Clone)]
pub struct LoadedTls {
    /// For `tonic::transport::Server::tls_config`.
    pub grpc: tonic::transport::ServerTlsConfig,
    /// For [`TlsListener`] (HTTP/1.1, no client certificates).
    pub http: Arc<ServerConfig>,
    /// Whether gRPC clients must present a certificate.
    pub client_certs_required: bool,
    /// The handshake deadline.
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedTls")
            .field("client_certs_required", &self.client_certs_required)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Makes `ring` the process's rustls provider. tonic's acceptor builds its
/// rustls configuration with the process default, which rustls can only
/// pick by itself while exactly one provider is compiled in; installing it
/// explicitly keeps that true if another crate ever enables a second one.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads and checks the certificate, key and client CA files.
pub fn load(settings: &ServerTls) -> Result<LoadedTls, TlsError> {
    install_crypto_provider();
    let cert_pem = read(&settings.cert)?;
    let key_pem = read(&settings.key)?;
    let chain = parse_certificates(&settings.cert, &cert_pem)?;
    let key = parse_private_key(&settings.key, &key_pem)?;
    let mut http = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rejected {
            path: settings.key.clone(),
            source,
        })?;
    http.alpn_protocols = vec![b"http/1.1".to_vec()];

    let identity = tonic::transport::Identity::from_pem(&cert_pem, &key_pem);
    let mut grpc = tonic::transport::ServerTlsConfig::new()
        .identity(identity)
        .timeout(settings.handshake_timeout);
    if let Some(ca_path) = &settings.client_ca {
        let ca_pem = read(ca_path)?;
        // Checked here so a bad CA file fails at start with its name, not
        // inside tonic with a generic message.
        client_verifier(ca_path, &ca_pem)?;
        grpc = grpc.client_ca_root(tonic::transport::Certificate::from_pem(ca_pem));
    }
    Ok(LoadedTls {
        grpc,
        http: Arc::new(http),
        client_certs_required: settings.client_ca.is_some(),
        handshake_timeout: settings.handshake_timeout,
    })
}

/// A client certificate verifier for the CA certificates in `pem`.
pub fn client_verifier(
    path: &Path,
    pem: &[u8],
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    install_crypto_provider();
    let mut roots = RootCertStore::empty();
    for cert in parse_certificates(path, pem)? {
        roots.add(cert).map_err(|source| TlsError::Rejected {
            path: path.to_path_buf(),
            source,
        })?;
    }
    WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| TlsError::ClientCa {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in PEM text, in order; at least one. `path` only
/// names the file in errors.
pub fn parse_certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            message: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            message: "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(certs)
}

/// The first private key in PEM text. `path` only names the file in errors.
pub fn parse_private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        message: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no PEM private key (-----BEGIN PRIVATE KEY-----)".to_string()
            }
            e => format!("not a PEM private key file: {e}"),
        },
    })
}

/// A TLS listener for `axum::serve`. A background task accepts TCP
/// connections and runs each handshake in its own task under the deadline,
/// so one slow client never delays the next; finished connections queue
/// for [`axum::serve::Listener::accept`]. The task ends when the listener is
/// dropped (which `axum::serve` does on graceful shutdown).
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsListener {
    /// Serves TLS with `config` on an already bound listener.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>, handshake_timeout: Duration) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (tx, accepted) = mpsc::channel(ACCEPTED_QUEUE);
        tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), handshake_timeout, tx));
        Ok(TlsListener { accepted, local_addr })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_CONCURRENT_HTTP_HANDSHAKES));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and similar: back off briefly so
                    // the loop does not spin, then try again.
                    tracing::debug!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
            tracing::debug!(%peer, "too many TLS handshakes in progress; connection closed");
            continue;
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTP TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "HTTP TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(conn) => conn,
            // The accept task only ends once this listener is dropped, so
            // this is unreachable in practice; waiting forever is what an
            // idle listener does anyway.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pem_errors_name_the_file() {
        let p = Path::new("/etc/x/server.pem");
        let e = parse_certificates(p, b"").unwrap_err().to_string();
        assert_eq!(
            e,
            "/etc/x/server.pem: holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        );
        let e = parse_private_key(
            Path::new("k.pem"),
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "k.pem: holds no PEM private key (-----BEGIN PRIVATE KEY-----)");
        let e = parse_certificates(p, b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/x/server.pem: not a PEM certificate file"), "{e}");
        let e = read(Path::new("/nonexistent/ca.pem")).unwrap_err().to_string();
        assert!(e.starts_with("cannot read /nonexistent/ca.pem: "), "{e}");
    }
}
