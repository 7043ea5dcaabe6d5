//! The `uname` source: node_exporter's
//! `node_uname_info{domainname,machine,nodename,release,sysname,version}`,
//! read from the same kernel values `uname(2)` returns but through procfs
//! (`/proc/sys/kernel/{ostype,osrelease,version,hostname,domainname,arch}`),
//! so it works against a fixture tree and needs no system call. Kernels
//! before 6.1 have no `arch` file; the machine is then the architecture the
//! agent was built for, which is the kernel's on every supported platform
//! (a 32-bit agent on a 64-bit kernel would say `x86` instead of `x86_64`).
//!
//! The values change only on a host rename (and a reboot), so they are read
//! at start and again every ten minutes, not every cycle.

use std::time::{Duration, Instant};

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError, read_attr};

/// How often the (nearly static) values are read again.
const REFRESH: Duration = Duration::from_secs(600);

/// The six `uname` fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uname {
    /// `ostype` (`Linux`).
    pub sysname: String,
    /// `osrelease` (`6.1.0-13-amd64`).
    pub release: String,
    /// `version` (`#1 SMP PREEMPT_DYNAMIC Debian 6.1.55-1 ...`).
    pub version: String,
    /// `arch`, else the agent's build architecture.
    pub machine: String,
    /// `hostname`.
    pub nodename: String,
    /// `domainname` (`(none)` when unset).
    pub domainname: String,
}

impl Uname {
    /// Reads the values under `paths`; `None` when procfs has none of them
    /// (not Linux, or an empty fixture).
    pub fn read(paths: &HostPaths) -> Option<Uname> {
        let read = |file: &str| read_attr(&paths.proc(format!("sys/kernel/{file}")));
        let sysname = read("ostype")?;
        Some(Uname {
            sysname,
            release: read("osrelease").unwrap_or_default(),
            version: read("version").unwrap_or_default(),
            machine: read("arch").unwrap_or_else(|| std::env::consts::ARCH.to_string()),
            nodename: read("hostname").unwrap_or_default(),
            domainname: read("domainname").unwrap_or_default(),
        })
    }
}

/// Emits `node_uname_info` from values read at most every [`REFRESH`].
#[derive(Debug, Default)]
pub struct UnameSource {
    cached: Option<(Instant, Option<Uname>)>,
}

impl Source for UnameSource {
    fn name(&self) -> &'static str {
        "uname"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        let stale = self.cached.as_ref().is_none_or(|(at, _)| at.elapsed() >= REFRESH);
        if stale {
            self.cached = Some((Instant::now(), Uname::read(paths)));
        }
        if let Some((_, Some(u))) = &self.cached {
            out.gauge(
                "node_uname_info",
                "Labeled system information as provided by the uname system call.",
                &[
                    ("domainname", &u.domainname),
                    ("machine", &u.machine),
                    ("nodename", &u.nodename),
                    ("release", &u.release),
                    ("sysname", &u.sysname),
                    ("version", &u.version),
                ],
                1.0,
            );
        }
        Ok(())
    }
}
