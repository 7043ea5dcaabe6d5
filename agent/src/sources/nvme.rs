//! The `nvme` source: NVMe controllers and namespaces from `/sys/class/nvme`
//! as node_exporter's `node_nvme_info{device,serial,model,state,
//! firmware_revision,cntlid}` and `node_nvme_namespace_*{device,nsid}`.
//!
//! A controller whose `state` is not `live` (`resetting`, `dead`) is the
//! sysfs view of a drive dropping off the bus. Sizes are computed exactly as
//! node_exporter does — `size` and `nuse` multiplied by the logical block
//! size — so the values match its output on the same tree. Health (wear,
//! media errors) comes from SMART, not from here. [`namespace_id`] is the
//! pure part.

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// The namespace id of a namespace directory name (`nvme0n1` → `1`,
/// `nvme0c0n2` → `2`); `None` for other entries.
pub fn namespace_id(controller: &str, entry: &str) -> Option<String> {
    let rest = entry.strip_prefix("nvme")?;
    let (head, nsid) = rest.rsplit_once('n')?;
    let head_ok = {
        let mut parts = head.splitn(2, 'c');
        let ctrl = parts.next().unwrap_or_default();
        let path = parts.next();
        !ctrl.is_empty()
            && ctrl.bytes().all(|b| b.is_ascii_digit())
            && path.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    let controller_ok = controller.strip_prefix("nvme").is_some_and(|c| head.starts_with(c));
    (head_ok && controller_ok && !nsid.is_empty() && nsid.bytes().all(|b| b.is_ascii_digit())).then(|| nsid.to_string())
}

fn number(text: Option<String>) -> Option<f64> {
    text.and_then(|t| t.trim().parse::<u64>().ok()).map(|v| v as f64)
}

/// Reads `/sys/class/nvme`. Identity (model, serial, firmware, controller
/// id, block size) and listings come from the refreshed cache; controller
/// state, ANA state, namespace size and use through kept descriptors.
#[derive(Debug, Default)]
pub struct NvmeSource {
    files: Files,
}

/// Controller attributes fixed while the controller exists (a firmware
/// update shows at the next refresh).
const STATIC_FILES: &[&str] = &["firmware_rev", "model", "serial", "cntlid"];

impl Source for NvmeSource {
    fn name(&self) -> &'static str {
        "nvme"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        let files = &mut self.files;
        files.begin_cycle();
        let dir = paths.sys("class/nvme");
        let entries = match files.list(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(&dir, e)),
        };
        for device in entries.iter().filter(|n| n.starts_with("nvme")) {
            let ctrl = dir.join(device);
            let mut attr = |name: &str| {
                if STATIC_FILES.contains(&name) {
                    files.static_in(&ctrl, name).unwrap_or_default()
                } else {
                    files.attr_in(&ctrl, name).unwrap_or_default()
                }
            };
            out.gauge(
                "node_nvme_info",
                "Non-numeric data from /sys/class/nvme/<device>, value is always 1.",
                &[
                    ("device", device),
                    ("firmware_revision", &attr("firmware_rev")),
                    ("model", &attr("model")),
                    ("serial", &attr("serial")),
                    ("state", &attr("state")),
                    ("cntlid", &attr("cntlid")),
                ],
                1.0,
            );
            let Ok(entries) = files.list(&ctrl) else {
                continue;
            };
            let namespaces: Vec<(&String, String)> = entries
                .iter()
                .filter_map(|name| Some((name, namespace_id(device, name)?)))
                .collect();
            for (name, nsid) in namespaces {
                let ns = ctrl.join(name);
                let labels = [("device", device.as_str()), ("nsid", nsid.as_str())];
                let ana = files.attr_in(&ns, "ana_state").unwrap_or_else(|| "unknown".to_string());
                out.gauge(
                    "node_nvme_namespace_info",
                    "Information about NVMe namespaces. Value is always 1",
                    &[("device", device), ("nsid", &nsid), ("ana_state", &ana)],
                    1.0,
                );
                let Some(block) = number(files.static_in(&ns.join("queue"), "logical_block_size")) else {
                    continue;
                };
                out.gauge(
                    "node_nvme_namespace_logical_block_size_bytes",
                    "Logical block size of the NVMe namespace in bytes. Usually 4Kb. Available in /sys/class/nvme/<device>/<namespace>/queue/logical_block_size",
                    &labels,
                    block,
                );
                if let Some(size) = number(files.attr_in(&ns, "size")) {
                    out.gauge(
                        "node_nvme_namespace_size_bytes",
                        "Size of the NVMe namespace in bytes. Available in /sys/class/nvme/<device>/<namespace>/size",
                        &labels,
                        size * block,
                    );
                    out.gauge(
                        "node_nvme_namespace_capacity_bytes",
                        "Capacity of the NVMe namespace in bytes. Computed as namespace_size * namespace_logical_block_size",
                        &labels,
                        size * block,
                    );
                }
                if let Some(used) = number(files.attr_in(&ns, "nuse")) {
                    out.gauge(
                        "node_nvme_namespace_used_bytes",
                        "Used space of the NVMe namespace in bytes. Available in /sys/class/nvme/<device>/<namespace>/nuse",
                        &labels,
                        used * block,
                    );
                }
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
    fn namespace_ids() {
        assert_eq!(namespace_id("nvme0", "nvme0n1").as_deref(), Some("1"));
        assert_eq!(namespace_id("nvme0", "nvme0c0n12").as_deref(), Some("12"));
        assert_eq!(namespace_id("nvme1", "nvme1n2").as_deref(), Some("2"));
        assert_eq!(namespace_id("nvme0", "nvme0"), None);
        assert_eq!(namespace_id("nvme0", "model"), None);
        assert_eq!(namespace_id("nvme0", "nvme0n"), None);
        assert_eq!(namespace_id("nvme0", "nvme0cxn1"), None);
    }
}
