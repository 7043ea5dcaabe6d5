//! The `Source` trait every sensor reader implements, and the errors a
//! source reports. A failing source is data (its success series goes to 0),
//! never a crash, and "no such hardware" is not a failure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::emit::Emitter;
use crate::paths::HostPaths;

/// One reader of one family of host facts (hwmon, meminfo, ...).
pub trait Source: Send {
    /// Short stable name, used by `--only` and in `hostpulse_source_*{source}`.
    fn name(&self) -> &'static str;

    /// Reads the current values and records them in `out`.
    ///
    /// Returns `Ok(())` when the hardware is simply absent (nothing emitted).
    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError>;

    /// Whether `collect` can block for long in a way nothing in the agent
    /// can interrupt: it runs an external command (smartctl, ipmitool) or
    /// calls into a filesystem that may hang (`statvfs` on a dead NFS
    /// mount). The sampler gives such a source its own worker thread and
    /// stops waiting for it at the cycle deadline. Every other source (reads
    /// of procfs and sysfs, non-blocking reads of `/dev/kmsg`) runs in turn
    /// on the sampler's thread, which costs no thread wake-up per cycle.
    fn may_block(&self) -> bool {
        false
    }
}

/// Settings some sources need beyond [`HostPaths`], built from config and
/// handed to each source's constructor.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceOptions {
    /// Kernel log device to follow (default `<dev>/kmsg`); a plain file works
    /// for tests.
    pub kmsg: Option<PathBuf>,
    /// Read `smartctl --json` outputs from this directory (written by the
    /// privileged helper) instead of running smartctl.
    pub smartctl_json_dir: Option<PathBuf>,
    /// The smartctl binary the agent runs when no JSON directory is set.
    pub smartctl: PathBuf,
    /// How often SMART data is refreshed (SMART is slow and wakes disks).
    pub smart_interval: Duration,
    /// The ipmitool binary for the optional IPMI source.
    pub ipmitool: PathBuf,
    /// Deadline for any external command (smartctl, ipmitool).
    pub command_timeout: Duration,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            kmsg: None,
            smartctl_json_dir: None,
            smartctl: PathBuf::from("smartctl"),
            smart_interval: Duration::from_secs(600),
            ipmitool: PathBuf::from("ipmitool"),
            command_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a source could not deliver.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading needs a privilege the agent lacks (for example RAPL energy
    /// files are root-only on recent kernels). Reported once, not every cycle.
    #[error("permission denied reading {}", path.display())]
    PermissionDenied {
        /// The file that could not be read.
        path: PathBuf,
    },
    /// An I/O error other than absence or permission.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file had content the parser does not understand.
    #[error("parsing {}: {message}", path.display())]
    Parse {
        /// The file with unexpected content.
        path: PathBuf,
        /// What was wrong, naming the line or field.
        message: String,
    },
}

impl SourceError {
    /// Classifies an I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            SourceError::PermissionDenied {
                path: path.to_path_buf(),
            }
        } else {
            SourceError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    /// A parse error on `path`.
    pub fn parse(path: &Path, message: impl Into<String>) -> Self {
        SourceError::Parse {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Reads a whole file as UTF-8 text, mapping errors to [`SourceError`].
pub fn read_to_string(path: &Path) -> Result<String, SourceError> {
    std::fs::read_to_string(path).map_err(|e| SourceError::io(path, e))
}

/// Reads a sysfs attribute: the file's content with trailing whitespace
/// removed; `None` when the file does not exist or cannot be read (many
/// attributes are optional and some drivers fail reads of absent sensors).
pub fn read_attr(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim_end().to_string())
}
