//! `HostPaths`: the roots every source reads under. Built from configuration
//! and passed into each source, never a global, so every source can run
//! against a fixture tree (`--sysfs`, `--procfs`, ...).

use std::path::{Path, PathBuf};

/// Filesystem roots of the host being sampled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPaths {
    /// Where sysfs is mounted (`/sys`).
    pub sysfs: PathBuf,
    /// Where procfs is mounted (`/proc`).
    pub procfs: PathBuf,
    /// The host's root filesystem (`/`); mount points are resolved under it.
    pub rootfs: PathBuf,
    /// The udev database (`/run/udev/data`).
    pub udev_data: PathBuf,
    /// The device directory (`/dev`).
    pub dev: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            sysfs: PathBuf::from("/sys"),
            procfs: PathBuf::from("/proc"),
            rootfs: PathBuf::from("/"),
            udev_data: PathBuf::from("/run/udev/data"),
            dev: PathBuf::from("/dev"),
        }
    }
}

impl HostPaths {
    /// A path under sysfs, e.g. `sys("class/hwmon")`.
    pub fn sys(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.sysfs.join(rel)
    }

    /// A path under procfs, e.g. `proc("meminfo")`.
    pub fn proc(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.procfs.join(rel)
    }

    /// A host path (as seen in /proc/mounts) resolved under `rootfs`.
    pub fn root(&self, host_path: impl AsRef<Path>) -> PathBuf {
        let host_path = host_path.as_ref();
        let rel = host_path.strip_prefix("/").unwrap_or(host_path);
        self.rootfs.join(rel)
    }

    /// Checks that every configured root exists and is a directory, naming
    /// the first that is not. `udev_data` and `dev` may be absent (containers
    /// and minimal hosts have neither).
    pub fn validate(&self) -> Result<(), String> {
        for (flag, path) in [
            ("--sysfs", &self.sysfs),
            ("--procfs", &self.procfs),
            ("--rootfs", &self.rootfs),
        ] {
            match std::fs::metadata(path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(format!("{flag} {}: not a directory", path.display())),
                Err(e) => return Err(format!("{flag} {}: {e}", path.display())),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_mount_points_under_rootfs() {
        let paths = HostPaths {
            rootfs: PathBuf::from("/host"),
            ..HostPaths::default()
        };
        assert_eq!(paths.root("/var/lib"), PathBuf::from("/host/var/lib"));
        assert_eq!(paths.root("/"), PathBuf::from("/host/"));
    }

    #[test]
    fn missing_root_is_named() {
        let paths = HostPaths {
            sysfs: PathBuf::from("/nonexistent/sys"),
            ..HostPaths::default()
        };
        let err = paths.validate().unwrap_err();
        assert!(err.starts_with("--sysfs /nonexistent/sys: "), "{err}");
    }
}
