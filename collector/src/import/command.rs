//! The `hostpulse-collector import` subcommand: its arguments and the thin
//! driver that opens the store, runs [`import_files`](super::import_files)
//! with progress on stderr, seals the store, and prints the summary line
//! that scripts and the storage benchmark read.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{Dialect, ImportOptions, ImportProgress, import_files};
use crate::store::{Store, StoreOptions};

/// Arguments of `import`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// Store directory to load into (created if absent)
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Format of the files [default: guessed from each file's first lines]
    #[arg(long, value_enum)]
    pub format: Option<ImportFormat>,
    /// Samples per durable append
    #[arg(long, default_value_t = 200_000)]
    pub batch_samples: usize,
    /// Files to load, in order
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// `--format` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ImportFormat {
    /// OpenMetrics 1.0 text: timestamps in seconds, ends with `# EOF`
    Openmetrics,
    /// Prometheus text format 0.0.4: timestamps in milliseconds
    Prometheus,
}

/// How often progress goes to stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Runs the import; the summary goes to stdout, progress to stderr.
pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let store = Store::open(&args.data_dir, StoreOptions::default())
        .with_context(|| format!("opening the store in {}", args.data_dir.display()))?;
    let opts = ImportOptions {
        dialect: args.format.map(|f| match f {
            ImportFormat::Openmetrics => Dialect::OpenMetrics,
            ImportFormat::Prometheus => Dialect::Prometheus,
        }),
        batch_samples: args.batch_samples,
        ..ImportOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let summary = runtime.block_on(async {
        let mut last_report = Instant::now();
        let report = |p: ImportProgress| {
            if last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                eprintln!(
                    "import: {} samples stored, {:.0} samples/s",
                    p.samples,
                    rate(p.samples, p.elapsed)
                );
            }
        };
        let summary = import_files(&store, &args.files, &opts, report).await;
        if let Err(e) = &summary {
            eprintln!("import: stopped; batches stored before the error stay stored: {e}");
        }
        let summary = summary?;
        eprintln!("import: sealing {} samples", summary.samples);
        let sealing = store.clone();
        tokio::task::spawn_blocking(move || sealing.seal_all())
            .await
            .context("sealing the store")??;
        anyhow::Ok(summary)
    })?;
    drop(store);
    // sled keeps the space the write-ahead records took; a rewrite gives
    // the directory back its live size (see `store::compact_dir`).
    let compacted = crate::store::compact_dir(&args.data_dir)
        .with_context(|| format!("compacting the store in {}", args.data_dir.display()))?;
    eprintln!(
        "import: compacted the data directory from {} to {} bytes",
        compacted.bytes_before, compacted.bytes_after
    );
    if summary.non_finite > 0 {
        eprintln!(
            "import: left out {} samples whose value is NaN or ±Inf (not stored by the collector)",
            summary.non_finite
        );
    }
    if summary.refused_by_store > 0 {
        eprintln!("import: the store refused {} samples", summary.refused_by_store);
    }
    let elapsed = started.elapsed();
    println!(
        "imported {} samples ({} series) in {:.1} s, {:.0} samples/s",
        summary.samples,
        summary.series,
        elapsed.as_secs_f64(),
        rate(summary.samples, elapsed)
    );
    Ok(())
}

fn rate(samples: u64, elapsed: Duration) -> f64 {
    samples as f64 / elapsed.as_secs_f64().max(1e-9)
}
