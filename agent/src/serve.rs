//! The agent's optional local HTTP endpoint: `/metrics` in Prometheus text
//! format (for pull-based setups, a drop-in for node_exporter's hardware
//! collectors) and `/` with a link to it.
//!
//! Two ways to get the cycle it prints:
//! - [`Metrics::own`] (`hostpulse-agent serve`): samples a fresh cycle per
//!   scrape straight into text ([`Sampler::render_text`], from series
//!   pre-rendered when they first appeared), or reuses the last text if it
//!   is less than a second old, so several scrapers at once cost one cycle;
//! - [`Metrics::shared`] (`hostpulse-agent run --listen`): prints the last
//!   cycle the streaming sampler published, never sampling a second time.
//!
//! A small HTTP/1 server on hyper, which the agent already links through
//! tonic; it binds loopback unless told otherwise.
//!
//! The cycle is sampled (or rendered) on the task that answers the scrape,
//! not handed to a blocking thread: `serve` runs a single-threaded runtime
//! whose only work is this endpoint, sampling takes about a millisecond
//! (sources that may block run on their own workers, bounded by the
//! sampler's deadline), and a hand-off per scrape cost a thread wake-up and
//! that thread's resident stack and malloc arena. The rendered text is kept
//! as [`Bytes`] over a buffer the next scrape renders into again, so a
//! reused cycle is sent without a copy and no scrape allocates its text.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::exposition;
use crate::sampler::{LatestCycle, Sampler};

/// A scrape within this long of the last cycle gets that cycle again.
pub const REUSE_WITHIN: Duration = Duration::from_secs(1);

/// Content type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The local endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("listen {addr}: {source}")]
pub struct ServeError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why binding failed.
    pub source: std::io::Error,
}

/// Where `/metrics` gets its cycle from.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

enum Inner {
    Own(Box<Mutex<OwnSampler>>),
    Shared(Arc<LatestCycle>),
}

struct OwnSampler {
    sampler: Sampler,
    last: Option<(Instant, Bytes)>,
    /// The text buffer of the last scrape, reused by the next one once the
    /// response holding it is gone: a fresh 100 KB buffer per scrape made
    /// malloc grow and trim the heap (a `brk` and page faults) every time.
    buffer: Option<Arc<String>>,
}

/// A rendered text shared between [`OwnSampler::buffer`] and the response
/// body.
struct SharedText(Arc<String>);

impl AsRef<[u8]> for SharedText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Metrics {
    /// Samples with `sampler` on demand (the `serve` subcommand).
    pub fn own(sampler: Sampler) -> Self {
        Metrics {
            inner: Arc::new(Inner::Own(Box::new(Mutex::new(OwnSampler {
                sampler,
                last: None,
                buffer: None,
            })))),
        }
    }

    /// Prints whatever the streaming sampler last published (`run --listen`).
    pub fn shared(latest: Arc<LatestCycle>) -> Self {
        Metrics {
            inner: Arc::new(Inner::Shared(latest)),
        }
    }

    /// The exposition text for one scrape; `None` when no cycle exists yet.
    /// Blocks while sampling (see the module documentation for why the
    /// endpoint calls it on its runtime thread).
    pub fn render_blocking(&self) -> Option<Bytes> {
        match &*self.inner {
            Inner::Shared(latest) => latest.get().map(|(_, cycle)| Bytes::from(exposition::render(&cycle))),
            Inner::Own(own) => {
                // Concurrent scrapes queue here; the ones behind the first
                // find its fresh result and do not sample again.
                let mut own = own.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((at, text)) = &own.last
                    && at.elapsed() < REUSE_WITHIN
                {
                    return Some(text.clone());
                }
                // The old text goes first, so it and the new cycle are never
                // resident together (the peak RSS is what counts).
                own.last = None;
                let mut buffer = match own.buffer.take() {
                    Some(buffer) if Arc::strong_count(&buffer) == 1 => buffer,
                    // Still held by a slow client's response: leave it to them.
                    _ => Arc::new(String::new()),
                };
                // Unique here, so this neither clones nor allocates.
                let text = Arc::make_mut(&mut buffer);
                text.clear();
                own.sampler.render_text(text);
                let text = Bytes::from_owner(SharedText(buffer.clone()));
                own.buffer = Some(buffer);
                own.last = Some((Instant::now(), text.clone()));
                Some(text)
            }
        }
    }
}

/// Binds `addr` (before anything else starts, so a bad or busy address is
/// one clear error at startup).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError { addr, source })
}

/// Serves `/metrics` and `/` on `listener` until `shutdown` becomes true.
pub async fn serve(listener: TcpListener, metrics: Metrics, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        if *shutdown.borrow() {
            return;
        }
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Typically EMFILE; the listener stays usable.
                tracing::warn!(error = %e, "accepting a /metrics connection failed");
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, metrics.clone()));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "/metrics connection ended with an error");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, metrics: Metrics) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text_response(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        resp.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(resp);
    }
    let resp = match req.uri().path() {
        "/metrics" => match metrics.render_blocking() {
            Some(text) => {
                let mut resp = Response::new(Full::new(text));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
                resp
            }
            None => text_response(StatusCode::SERVICE_UNAVAILABLE, "no sampling cycle has finished yet\n"),
        },
        "/" => {
            let mut resp = Response::new(Full::new(Bytes::from_static(
                b"<!doctype html>\n<html><head><title>hostpulse agent</title></head>\n<body><h1>hostpulse agent</h1>\n<p><a href=\"/metrics\">Metrics</a></p>\n</body></html>\n",
            )));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            resp
        }
        _ => text_response(StatusCode::NOT_FOUND, "not found; try /metrics\n"),
    };
    Ok(resp)
}

fn text_response(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::emit::Emitter;
    use crate::paths::HostPaths;
    use crate::source::{Source, SourceError};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Counting(Arc<AtomicUsize>);
    impl Source for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn collect(&mut self, _: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            out.gauge("test_collections", "Collections so far.", &[], n as f64);
            Ok(())
        }
    }

    /// Sends one HTTP/1.1 request and returns the whole response text.
    async fn get(addr: SocketAddr, method: &str, path: &str) -> String {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        conn.read_to_string(&mut resp).await.unwrap();
        resp
    }

    // The single-threaded runtime `hostpulse-agent serve` uses: server and
    // client share the thread, so sampling on it must not stall the scrape.
    #[tokio::test(flavor = "current_thread")]
    async fn metrics_index_and_errors() {
        let count = Arc::new(AtomicUsize::new(0));
        let sampler = Sampler::with_sources(HostPaths::default(), vec![Box::new(Counting(count.clone()))]);
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(listener, Metrics::own(sampler), stopped));

        let metrics = get(addr, "GET", "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(metrics.contains("content-type: text/plain; version=0.0.4"), "{metrics}");
        assert!(metrics.contains("\ntest_collections 1\n"), "{metrics}");
        assert!(
            metrics.contains("hostpulse_source_success{source=\"counting\"} 1\n"),
            "{metrics}"
        );
        // A second scrape within a second reuses the cycle.
        let again = get(addr, "GET", "/metrics").await;
        assert!(again.contains("\ntest_collections 1\n"), "{again}");
        assert_eq!(count.load(Ordering::SeqCst), 1);

        let index = get(addr, "GET", "/").await;
        assert!(index.starts_with("HTTP/1.1 200 OK\r\n"), "{index}");
        assert!(index.contains("<a href=\"/metrics\">"), "{index}");
        assert!(get(addr, "GET", "/nope").await.starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST", "/metrics").await.starts_with("HTTP/1.1 405"));

        stop.send(true).unwrap();
        server.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_mode_prints_the_published_cycle() {
        let latest = Arc::new(LatestCycle::default());
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(listener, Metrics::shared(latest.clone()), stopped));
        assert!(get(addr, "GET", "/metrics").await.starts_with("HTTP/1.1 503"));

        let count = Arc::new(AtomicUsize::new(0));
        let mut sampler = Sampler::with_sources(HostPaths::default(), vec![Box::new(Counting(count.clone()))]);
        sampler.publish_to(latest);
        sampler.sample();
        sampler.sample();
        let metrics = get(addr, "GET", "/metrics").await;
        assert!(metrics.contains("\ntest_collections 2\n"), "{metrics}");
        // Scraping never samples.
        assert_eq!(count.load(Ordering::SeqCst), 2);
        stop.send(true).unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_busy_address_is_one_clear_error() {
        let first = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err().to_string();
        assert!(err.starts_with(&format!("listen {addr}: ")), "{err}");
        assert!(!err.contains('\n'));
    }
}
