//! Backups of a running collector over HTTP: the admin endpoint
//! `POST /api/v1/admin/backup`, which streams a snapshot of the store as the
//! response body, and its client, `hostpulse-collector backup --url`, which
//! writes that stream to a file atomically.
//!
//! The endpoint takes the snapshot on a blocking thread (it waits for the
//! commit lock, which a group commit or a seal may hold for a while, and
//! hard-links every block file), then answers 200 with the snapshot's exact
//! length and streams it from another blocking thread through a small
//! bounded channel, so at most a few chunks are in memory whatever the
//! store's size (`store/backup.rs` explains why writing needs no lock).
//! A client that disconnects ends the stream at its next chunk; one that
//! stops reading is cut after [`STALL_LIMIT`]. Either way the snapshot's
//! handles are dropped and nothing is left on disk. The path lies under
//! `/api/v1/admin`, which `auth::guard_admin_paths` guards with the admin
//! token when one is configured.
//!
//! The client writes `OUT.partial`, fsyncs it, checks the whole file (CRC,
//! record count) and only then renames it to `OUT`; any failure removes the
//! partial file and says which input was bad.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::store::{BackupError, Snapshot, Store, verify_backup};

/// Path of the backup endpoint.
pub const BACKUP_PATH: &str = "/api/v1/admin/backup";
/// Response header with the snapshot's record count.
pub const RECORDS_HEADER: &str = "x-hostpulse-backup-records";
/// How long the endpoint waits for a client that stopped reading before it
/// gives up on it.
pub const STALL_LIMIT: Duration = Duration::from_secs(120);
/// Bytes per streamed chunk.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the writing thread and the connection.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The admin routes: `POST /api/v1/admin/backup`.
pub fn router(store: Store) -> Router {
    Router::new()
        .route(BACKUP_PATH, axum::routing::post(backup))
        .with_state(store)
}

async fn backup(State(store): State<Store>) -> Response {
    let taken = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        store.snapshot().map(|s| (s, started.elapsed()))
    })
    .await;
    let (snapshot, took) = match taken {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "backup: taking the snapshot failed");
            let status = match e {
                BackupError::TooManyFiles { .. } => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return (status, format!("backup failed: {e}\n")).into_response();
        }
        Err(e) => {
            tracing::error!(error = %e, "backup: the snapshot task ended abnormally");
            return (StatusCode::INTERNAL_SERVER_ERROR, "backup failed: internal error\n").into_response();
        }
    };
    let summary = snapshot.summary();
    tracing::info!(
        records = summary.records,
        bytes = summary.bytes,
        waited_ms = took.as_millis() as u64,
        commits_held_us = snapshot.lock_held().as_micros() as u64,
        "backup: snapshot taken, streaming it"
    );
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_IN_FLIGHT);
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || stream_snapshot(snapshot, tx, handle));
    let mut response = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(summary.bytes));
    headers.insert(RECORDS_HEADER, HeaderValue::from(summary.records));
    let name = format!("attachment; filename=\"hostpulse-{}.hpb\"", crate::store::now_ms());
    if let Ok(v) = HeaderValue::from_str(&name) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

/// Writes the snapshot into the response's channel. On failure the stream
/// ends with an error, so the connection is cut rather than closed as if the
/// body were complete.
fn stream_snapshot(
    snapshot: Snapshot,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    handle: tokio::runtime::Handle,
) {
    let started = Instant::now();
    let sink = ChunkSender {
        tx: tx.clone(),
        buf: Vec::with_capacity(CHUNK),
        handle: handle.clone(),
    };
    match snapshot.write_to(sink) {
        Ok(s) => tracing::info!(
            records = s.records,
            bytes = s.bytes,
            ms = started.elapsed().as_millis() as u64,
            "backup: streamed"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "backup: stream ended early; nothing is kept");
            let _ = handle.block_on(tx.send_timeout(Err(e), Duration::from_secs(1)));
        }
    }
}

/// `Write` into the response's channel, a chunk at a time.
struct ChunkSender {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
    handle: tokio::runtime::Handle,
}

impl ChunkSender {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        match self.handle.block_on(self.tx.send_timeout(Ok(chunk), STALL_LIMIT)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client went away",
            )),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing for {}s", STALL_LIMIT.as_secs()),
            )),
        }
    }
}

impl Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = buf.len().min(room);
        self.buf.extend_from_slice(buf.get(..n).unwrap_or(buf));
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Why `backup --url` failed; each names the input that was bad.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The output file exists already.
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    /// The URL is not one this client can use.
    #[error("--url {url}: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token file could not be used.
    #[error("--token-file {path}: {reason}")]
    Token {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// No connection, or no answer.
    #[error("cannot reach the collector at {url}: {reason}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// 401: the admin token is missing or wrong.
    #[error("the collector at {url} refused the request (401): {hint}")]
    Unauthorized {
        /// The endpoint.
        url: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// Any other refusal.
    #[error("the collector at {url} answered {status}: {body}")]
    Refused {
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: StatusCode,
        /// Its explanation.
        body: String,
    },
    /// The stream broke off.
    #[error("the backup stream from {url} broke after {bytes} bytes: {reason}; nothing was written to {out}")]
    Broken {
        /// The endpoint.
        url: String,
        /// Bytes received.
        bytes: u64,
        /// The transport error.
        reason: String,
        /// The output file.
        out: PathBuf,
    },
    /// Writing the local file failed (a full disk, permissions).
    #[error("writing {path}: {error}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What failed (in the message, not chained, so it is said once).
        error: std::io::Error,
    },
    /// What arrived is not a complete, undamaged snapshot.
    #[error("the backup stream from {url} is damaged ({problem}); nothing was written to {out}")]
    Damaged {
        /// The endpoint.
        url: String,
        /// What the check found.
        problem: BackupError,
        /// The output file.
        out: PathBuf,
    },
}

/// What `backup --url` wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// Records in the snapshot.
    pub records: u64,
    /// Bytes of the file.
    pub bytes: u64,
}

/// The endpoint's URL for a collector at `base` (`http://HOST:PORT`, with
/// or without a trailing slash or a path prefix, as behind a proxy).
pub fn backup_url(base: &str) -> Result<String, FetchError> {
    let bad = |reason: &str| FetchError::BadUrl {
        url: base.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = if let Some(rest) = base.strip_prefix("http://") {
        rest
    } else if base.starts_with("https://") {
        return Err(bad(
            "this client speaks plain HTTP only; over TLS, fetch the endpoint with curl \
             (`curl --fail -H 'Authorization: Bearer TOKEN' -X POST URL/api/v1/admin/backup -o OUT`) \
             and check the file with `restore`",
        ));
    } else {
        return Err(bad("expected http://HOST:PORT"));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("no host"));
    }
    Ok(format!("{}{BACKUP_PATH}", base.trim_end_matches('/')))
}

/// Reads the admin token from `path`.
pub fn read_token(path: &Path) -> Result<String, FetchError> {
    let text = std::fs::read_to_string(path).map_err(|e| FetchError::Token {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    hostpulse_agent::tls::parse_token(&text)
        .map(str::to_owned)
        .map_err(|reason| FetchError::Token {
            path: path.to_path_buf(),
            reason,
        })
}

/// An error and its causes on one line (reqwest's own message alone says
/// little: "error sending request").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Fetches a snapshot from the collector at `base` into `out`, atomically.
pub async fn fetch_backup(base: &str, token: Option<&str>, out: &Path) -> Result<Fetched, FetchError> {
    if out.exists() {
        return Err(FetchError::Exists(out.to_path_buf()));
    }
    let url = backup_url(base)?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(STALL_LIMIT)
        .build()
        .map_err(|e| FetchError::Unreachable {
            url: url.clone(),
            reason: chain(&e),
        })?;
    let mut request = client.post(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let mut response = request.send().await.map_err(|e| FetchError::Unreachable {
        url: url.clone(),
        reason: chain(&e),
    })?;
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        return Err(FetchError::Unauthorized {
            url,
            hint: if token.is_some() {
                "the token in --token-file is not the collector's admin token"
            } else {
                "it requires the admin token; pass --token-file FILE"
            },
        });
    }
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(FetchError::Refused {
            url,
            status,
            body: body.trim().to_owned(),
        });
    }
    let announced = response
        .headers()
        .get(RECORDS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());

    let tmp = partial_path(out);
    let write_error = |error| FetchError::Write {
        path: tmp.clone(),
        error,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(write_error)?;
    // From here on every failure removes the partial file.
    let result = async {
        let mut bytes = 0u64;
        loop {
            let chunk = response.chunk().await.map_err(|e| FetchError::Broken {
                url: url.clone(),
                bytes,
                reason: chain(&e),
                out: out.to_path_buf(),
            })?;
            let Some(chunk) = chunk else { break };
            file.write_all(&chunk).map_err(write_error)?;
            bytes += chunk.len() as u64;
        }
        file.sync_all().map_err(write_error)?;
        let records = verify_backup(&tmp).map_err(|problem| FetchError::Damaged {
            url: url.clone(),
            problem,
            out: out.to_path_buf(),
        })?;
        if announced.is_some_and(|a| a != records) {
            return Err(FetchError::Damaged {
                url: url.clone(),
                problem: BackupError::Invalid {
                    path: tmp.display().to_string(),
                    detail: format!("{records} records, the collector announced {announced:?}"),
                },
                out: out.to_path_buf(),
            });
        }
        std::fs::rename(&tmp, out).map_err(|error| FetchError::Write {
            path: out.to_path_buf(),
            error,
        })?;
        sync_parent(out);
        Ok(Fetched { records, bytes })
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The name a backup is written under before it is renamed to `out`.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Makes a rename into `path`'s directory durable; best effort (the file
/// itself is synced).
fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(dir) = std::fs::File::open(parent) {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Serves `answer` for every request on an ephemeral port; returns the
    /// base URL.
    async fn fake_collector(answer: fn() -> Response) -> String {
        let app = Router::new().route(BACKUP_PATH, axum::routing::post(move || async move { answer() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// A valid snapshot of an empty store, and its record count.
    fn snapshot_bytes() -> (Vec<u8>, u64) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), crate::store::StoreOptions::default()).unwrap();
        let mut out = Vec::new();
        let written = store.snapshot().unwrap().write_to(&mut out).unwrap();
        (out, written.records)
    }

    /// `backup --url` leaves `OUT` only when the stream is complete and
    /// checks out, says which input was bad otherwise, and never leaves the
    /// partial file behind.
    #[tokio::test]
    async fn backup_fetch_writes_only_complete_snapshots() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("snap.hpb");
        let leftovers = || std::fs::read_dir(tmp.path()).unwrap().count();

        let good = fake_collector(|| {
            let (body, records) = snapshot_bytes();
            let mut r = Response::new(Body::from(body));
            r.headers_mut().insert(RECORDS_HEADER, HeaderValue::from(records));
            r
        })
        .await;
        let fetched = fetch_backup(&good, None, &out).await.unwrap();
        assert_eq!(fetched.records, snapshot_bytes().1);
        assert_eq!(fetched.bytes, std::fs::metadata(&out).unwrap().len());
        assert!(matches!(
            fetch_backup(&good, None, &out).await,
            Err(FetchError::Exists(_))
        ));
        std::fs::remove_file(&out).unwrap();

        let cut = fake_collector(|| {
            let (body, _) = snapshot_bytes();
            Response::new(Body::from(body[..body.len() - 3].to_vec()))
        })
        .await;
        let e = fetch_backup(&cut, None, &out).await.unwrap_err();
        assert!(matches!(e, FetchError::Damaged { .. }), "{e}");
        assert!(e.to_string().contains("nothing was written"), "{e}");
        assert_eq!(leftovers(), 0);

        let refused = fake_collector(|| (StatusCode::UNAUTHORIZED, "token!").into_response()).await;
        let e = fetch_backup(&refused, None, &out).await.unwrap_err();
        assert!(e.to_string().contains("--token-file"), "{e}");
        let e = fetch_backup(&refused, Some("t"), &out).await.unwrap_err();
        assert!(e.to_string().contains("not the collector's admin token"), "{e}");

        let busy =
            fake_collector(|| (StatusCode::SERVICE_UNAVAILABLE, "backup failed: raise LimitNOFILE\n").into_response())
                .await;
        let e = fetch_backup(&busy, None, &out).await.unwrap_err();
        assert!(
            e.to_string().contains("503") && e.to_string().contains("LimitNOFILE"),
            "{e}"
        );
        assert_eq!(leftovers(), 0);
    }

    #[test]
    fn backup_urls() {
        for (base, want) in [
            (
                "http://127.0.0.1:9470",
                Some("http://127.0.0.1:9470/api/v1/admin/backup"),
            ),
            ("http://c1:9470/", Some("http://c1:9470/api/v1/admin/backup")),
            ("http://proxy/hp/", Some("http://proxy/hp/api/v1/admin/backup")),
            ("https://c1:9470", None),
            ("c1:9470", None),
            ("http://", None),
        ] {
            assert_eq!(backup_url(base).ok().as_deref(), want, "{base}");
        }
        let e = backup_url("https://c1:9470").unwrap_err().to_string();
        assert!(e.contains("--url https://c1:9470") && e.contains("curl"), "{e}");
    }
}
