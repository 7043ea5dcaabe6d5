//! Bulk import of Prometheus text and OpenMetrics files into the store
//! (`hostpulse-collector import --data-dir D FILE...`), for migrations and
//! benchmarks.
//!
//! Files are streamed, never loaded whole: a blocking worker reads lines,
//! parses them with the pure parsers of `import/parse.rs`, and groups them
//! into batches of a bounded number of samples, which it hands through a
//! short bounded channel to the async side, which appends each batch with
//! [`Store::append_unsequenced`] (durable, group-committed). So parsing
//! overlaps storing, and memory stays at a few batches however large the
//! files are. Any bad line stops the import with `file:line: reason`;
//! batches appended before it stay stored.

pub mod command;
pub mod parse;

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

pub use self::parse::Dialect;
use self::parse::{Line, RawSample, parse_line, parse_series, sniff_dialect};
use crate::model::{Labels, SeriesSamples};
use crate::store::{Store, StoreError};

/// How an import runs.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The files' format; `None` sniffs each file's first lines
    /// (see [`parse::sniff_dialect`]).
    pub dialect: Option<Dialect>,
    /// Samples per append. Larger batches amortize the store's flush;
    /// memory in flight is about three batches.
    pub batch_samples: usize,
    /// Timestamp given to samples written without one, ms since the epoch.
    pub default_timestamp_ms: i64,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            dialect: None,
            batch_samples: 200_000,
            default_timestamp_ms: crate::store::now_ms(),
        }
    }
}

/// What an import did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Samples the store reports stored.
    pub samples: u64,
    /// Distinct series among them.
    pub series: u64,
    /// Samples left out because their value was NaN or ±Inf, which the
    /// collector does not store (see DESIGN.md, "Reliability").
    pub non_finite: u64,
    /// Samples the store refused (for example, older than it accepts).
    pub refused_by_store: u64,
}

/// Progress of a running import, reported after every stored batch.
#[derive(Clone, Copy, Debug)]
pub struct ImportProgress {
    /// Samples stored so far.
    pub samples: u64,
    /// Time since the import started.
    pub elapsed: Duration,
}

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file could not be opened or read.
    #[error("{}: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line could not be parsed.
    #[error("{}:{line}: {detail}", file.display())]
    Parse {
        /// The file.
        file: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// An OpenMetrics file without its closing `# EOF`.
    #[error("{}: ends after line {lines} without `# EOF`; the file may be truncated", file.display())]
    MissingEof {
        /// The file.
        file: PathBuf,
        /// Lines read.
        lines: u64,
    },
    /// The store failed.
    #[error("storing samples: {0}")]
    Store(#[from] StoreError),
    /// The parsing worker died (a bug).
    #[error("import worker failed: {0}")]
    Worker(String),
}

/// Longest line accepted; a longer one is an error rather than an
/// unbounded allocation.
const MAX_LINE_BYTES: u64 = 1 << 20;

/// Bytes read from the start of a file to guess its dialect.
const SNIFF_BYTES: u64 = 64 * 1024;

/// Batches parsed ahead of the store.
const PIPELINE_DEPTH: usize = 2;

/// Imports `files` in order into `store`, calling `on_progress` after every
/// stored batch. Returns once every batch is durable; the caller seals.
pub async fn import_files(
    store: &Store,
    files: &[PathBuf],
    opts: &ImportOptions,
    mut on_progress: impl FnMut(ImportProgress),
) -> Result<ImportSummary, ImportError> {
    let started = Instant::now();
    let (tx, mut rx) = mpsc::channel(PIPELINE_DEPTH);
    let worker = {
        let files = files.to_vec();
        let opts = opts.clone();
        tokio::task::spawn_blocking(move || parse_files(&files, &opts, &tx))
    };
    let mut sent = 0u64;
    let mut stored = 0u64;
    while let Some(batch) = rx.recv().await {
        let Batch { series, samples } = batch;
        sent += samples as u64;
        // On a store error `rx` is dropped on return, which stops the worker.
        stored += store.append_unsequenced(series).await? as u64;
        on_progress(ImportProgress {
            samples: stored,
            elapsed: started.elapsed(),
        });
    }
    let totals = worker.await.map_err(|e| ImportError::Worker(e.to_string()))??;
    Ok(ImportSummary {
        samples: stored,
        series: totals.series,
        non_finite: totals.non_finite,
        refused_by_store: sent.saturating_sub(stored),
    })
}

/// One append's worth of samples.
struct Batch {
    series: Vec<SeriesSamples>,
    samples: usize,
}

/// What the worker counted besides the batches.
#[derive(Default)]
struct ParseTotals {
    series: u64,
    non_finite: u64,
}

/// The worker: parses every file in order, sending full batches.
fn parse_files(files: &[PathBuf], opts: &ImportOptions, tx: &mpsc::Sender<Batch>) -> Result<ParseTotals, ImportError> {
    let mut builder = BatchBuilder::new(opts.batch_samples.max(1));
    for file in files {
        parse_file(file, opts, &mut builder, tx)?;
    }
    builder.send(tx);
    Ok(ParseTotals {
        series: builder.distinct.len() as u64,
        non_finite: builder.non_finite,
    })
}

fn parse_file(
    path: &Path,
    opts: &ImportOptions,
    builder: &mut BatchBuilder,
    tx: &mpsc::Sender<Batch>,
) -> Result<(), ImportError> {
    let io = |source| ImportError::Io {
        file: path.to_path_buf(),
        source,
    };
    let parse_error = |line, detail| ImportError::Parse {
        file: path.to_path_buf(),
        line,
        detail,
    };
    let mut file = File::open(path).map_err(io)?;
    let dialect = match opts.dialect {
        Some(d) => d,
        None => {
            let mut head = Vec::new();
            (&mut file).take(SNIFF_BYTES).read_to_end(&mut head).map_err(io)?;
            file.rewind().map_err(io)?;
            sniff_dialect(&String::from_utf8_lossy(&head))
        }
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut buf = Vec::with_capacity(256);
    let mut line_no = 0u64;
    let mut eof_line = None;
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut buf)
            .map_err(io)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let bytes = match buf.strip_suffix(b"\n") {
            Some(b) => b,
            None if n as u64 > MAX_LINE_BYTES => {
                return Err(parse_error(line_no, format!("line longer than {MAX_LINE_BYTES} bytes")));
            }
            None => &buf,
        };
        let line = std::str::from_utf8(bytes)
            .map_err(|e| parse_error(line_no, format!("not valid UTF-8 after byte {}", e.valid_up_to())))?;
        if let Some(eof) = eof_line {
            if line.trim().is_empty() {
                continue;
            }
            return Err(parse_error(line_no, format!("content after `# EOF` on line {eof}")));
        }
        match parse_line(line, dialect) {
            Ok(Line::Sample(raw)) => {
                builder
                    .push(&raw, dialect, opts.default_timestamp_ms)
                    .map_err(|e| parse_error(line_no, e.0))?;
                if builder.samples >= builder.limit && !builder.send(tx) {
                    // The receiver is gone: the import already failed there.
                    return Ok(());
                }
            }
            Ok(Line::Eof) => eof_line = Some(line_no),
            Ok(Line::Metadata | Line::Comment) => {}
            Err(e) => return Err(parse_error(line_no, e.0)),
        }
    }
    if dialect == Dialect::OpenMetrics && eof_line.is_none() {
        return Err(ImportError::MissingEof {
            file: path.to_path_buf(),
            lines: line_no,
        });
    }
    Ok(())
}

/// Groups parsed samples by series into one batch. Labels are parsed once
/// per distinct series text in a batch; the common case, a run of lines of
/// one series, costs one string comparison per line.
struct BatchBuilder {
    limit: usize,
    series: Vec<SeriesSamples>,
    /// Whether `series[i]` received a sample older than its last one.
    unsorted: Vec<bool>,
    by_text: HashMap<String, usize>,
    by_labels: HashMap<Labels, usize>,
    last_text: String,
    last_index: Option<usize>,
    samples: usize,
    /// Hashes of every series seen in the import, for the series count.
    distinct: HashSet<u64>,
    non_finite: u64,
}

impl BatchBuilder {
    fn new(limit: usize) -> Self {
        BatchBuilder {
            limit,
            series: Vec::new(),
            unsorted: Vec::new(),
            by_text: HashMap::new(),
            by_labels: HashMap::new(),
            last_text: String::new(),
            last_index: None,
            samples: 0,
            distinct: HashSet::new(),
            non_finite: 0,
        }
    }

    fn push(&mut self, raw: &RawSample<'_>, dialect: Dialect, default_ts: i64) -> Result<(), parse::ParseError> {
        let index = match self.last_index {
            Some(i) if self.last_text == raw.series => i,
            _ => {
                let i = self.index_of(raw.series, dialect)?;
                self.last_text.clear();
                self.last_text.push_str(raw.series);
                self.last_index = Some(i);
                i
            }
        };
        if !raw.value.is_finite() {
            self.non_finite += 1;
            return Ok(());
        }
        let ts = raw.timestamp_ms.unwrap_or(default_ts);
        let samples = &mut self.series[index].samples;
        if samples.last().is_some_and(|&(last, _)| ts < last) {
            self.unsorted[index] = true;
        }
        samples.push((ts, raw.value));
        self.samples += 1;
        Ok(())
    }

    fn index_of(&mut self, text: &str, dialect: Dialect) -> Result<usize, parse::ParseError> {
        if let Some(&i) = self.by_text.get(text) {
            return Ok(i);
        }
        let labels = parse_series(text, dialect)?;
        let i = match self.by_labels.get(&labels) {
            Some(&i) => i,
            None => {
                let mut h = DefaultHasher::new();
                labels.hash(&mut h);
                self.distinct.insert(h.finish());
                let i = self.series.len();
                self.by_labels.insert(labels.clone(), i);
                self.series.push(SeriesSamples {
                    labels,
                    samples: Vec::new(),
                });
                self.unsorted.push(false);
                i
            }
        };
        self.by_text.insert(text.to_string(), i);
        Ok(i)
    }

    /// Sends the batch (if any) and starts a new one; false when the
    /// receiver is gone.
    fn send(&mut self, tx: &mpsc::Sender<Batch>) -> bool {
        let mut series = std::mem::take(&mut self.series);
        for (s, unsorted) in series.iter_mut().zip(self.unsorted.drain(..)) {
            if unsorted {
                s.samples.sort_by_key(|&(ts, _)| ts);
            }
        }
        series.retain(|s| !s.samples.is_empty());
        let samples = std::mem::take(&mut self.samples);
        self.by_text.clear();
        self.by_labels.clear();
        self.last_index = None;
        series.is_empty() || tx.blocking_send(Batch { series, samples }).is_ok()
    }
}

#[cfg(test)]
mod tests;
