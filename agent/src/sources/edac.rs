//! The `edac` source: memory error counters of every EDAC memory controller
//! under `/sys/devices/system/edac/mc`, in both sysfs layouts the kernel has.
//!
//! - The legacy `mcN/csrowM/chK_{ce,ue}_count` layout becomes node_exporter's
//!   `node_edac_{,un}correctable_errors_total{controller}`,
//!   `node_edac_csrow_*{controller,csrow}` (with `csrow="unknown"` for the
//!   controller's `*_noinfo_count`) and
//!   `node_edac_channel_*{controller,csrow,channel,dimm_label}`, labels
//!   rewritten exactly as node_exporter does.
//! - The per-DIMM `mcN/dimmM/dimm_{ce,ue}_count` layout (named `rankM` on
//!   chip-select based controllers), the only one recent Intel server drivers
//!   (`skx_edac`, `i10nm_edac`) fill in, becomes
//!   `hostpulse_edac_dimm_{,un}correctable_errors_total{controller,dimm,label}`,
//!   `label` being the BIOS slot name from `dimm_label` — what the data-centre
//!   technician needs to pull the right module.
//!
//! The counters are the kernel's; the agent never writes `reset_counters`.
//! [`clean_channel_label`] and [`emit_controller`] are pure; the reader only
//! lists directories and reads each counter once per cycle.

use std::path::Path;

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};
use crate::sources::files::Files;

/// One `csrowM` directory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Csrow {
    /// `M`.
    pub number: String,
    /// `ce_count`.
    pub ce: Option<u64>,
    /// `ue_count`.
    pub ue: Option<u64>,
    /// Channels: (`K`, raw `chK_dimm_label`, `chK_ce_count`, `chK_ue_count`).
    pub channels: Vec<Channel>,
}

/// One channel of a csrow.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Channel {
    /// `K` of `chK_*`.
    pub number: String,
    /// Raw content of `chK_dimm_label`, if any.
    pub label: Option<String>,
    /// `chK_ce_count`.
    pub ce: Option<u64>,
    /// `chK_ue_count` (many drivers have none).
    pub ue: Option<u64>,
}

/// One `dimmM`/`rankM` directory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dimm {
    /// `M`.
    pub number: String,
    /// `dimm_label`, trimmed.
    pub label: Option<String>,
    /// `dimm_ce_count`.
    pub ce: Option<u64>,
    /// `dimm_ue_count`.
    pub ue: Option<u64>,
}

/// Everything read from one `mcN` directory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Controller {
    /// `N`.
    pub number: String,
    /// `ce_count`.
    pub ce: Option<u64>,
    /// `ue_count`.
    pub ue: Option<u64>,
    /// `ce_noinfo_count`: corrected errors not attributable to a row.
    pub ce_noinfo: Option<u64>,
    /// `ue_noinfo_count`.
    pub ue_noinfo: Option<u64>,
    /// Legacy layout.
    pub csrows: Vec<Csrow>,
    /// Per-DIMM layout.
    pub dimms: Vec<Dimm>,
}

/// node_exporter's rewrite of a channel's `dimm_label`: trimmed, `#`
/// removed, `csrow` and `channel` prefixed with `_`; `unknown` when absent
/// or empty.
pub fn clean_channel_label(raw: Option<&str>) -> String {
    let trimmed = raw.map(str::trim).unwrap_or_default();
    if trimmed.is_empty() {
        return "unknown".to_string();
    }
    trimmed
        .replace('#', "")
        .replace("csrow", "_csrow")
        .replace("channel", "_channel")
}

/// Parses a counter file.
pub fn parse_count(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Records one controller.
pub fn emit_controller(mc: &Controller, out: &mut Emitter) {
    let c = mc.number.as_str();
    if let Some(v) = mc.ce {
        out.counter(
            "node_edac_correctable_errors_total",
            "Total correctable memory errors.",
            &[("controller", c)],
            v as f64,
        );
    }
    if let Some(v) = mc.ue {
        out.counter(
            "node_edac_uncorrectable_errors_total",
            "Total uncorrectable memory errors.",
            &[("controller", c)],
            v as f64,
        );
    }
    const CSROW_CE: (&str, &str) = (
        "node_edac_csrow_correctable_errors_total",
        "Total correctable memory errors for this csrow.",
    );
    const CSROW_UE: (&str, &str) = (
        "node_edac_csrow_uncorrectable_errors_total",
        "Total uncorrectable memory errors for this csrow.",
    );
    let csrow_counter = |(name, help): (&str, &str), csrow: &str, value: Option<u64>, out: &mut Emitter| {
        if let Some(v) = value {
            out.counter(name, help, &[("controller", c), ("csrow", csrow)], v as f64);
        }
    };
    csrow_counter(CSROW_CE, "unknown", mc.ce_noinfo, out);
    csrow_counter(CSROW_UE, "unknown", mc.ue_noinfo, out);
    for row in &mc.csrows {
        csrow_counter(CSROW_CE, &row.number, row.ce, out);
        csrow_counter(CSROW_UE, &row.number, row.ue, out);
        for ch in &row.channels {
            let label = clean_channel_label(ch.label.as_deref());
            let labels = [
                ("controller", c),
                ("csrow", row.number.as_str()),
                ("channel", ch.number.as_str()),
                ("dimm_label", label.as_str()),
            ];
            if let Some(v) = ch.ce {
                out.counter(
                    "node_edac_channel_correctable_errors_total",
                    "Total correctable memory errors for this channel.",
                    &labels,
                    v as f64,
                );
            }
            if let Some(v) = ch.ue {
                out.counter(
                    "node_edac_channel_uncorrectable_errors_total",
                    "Total uncorrectable memory errors for this channel.",
                    &labels,
                    v as f64,
                );
            }
        }
    }
    for dimm in &mc.dimms {
        let label = dimm.label.as_deref().filter(|l| !l.is_empty()).unwrap_or("unknown");
        let labels = [("controller", c), ("dimm", dimm.number.as_str()), ("label", label)];
        if let Some(v) = dimm.ce {
            out.counter(
                "hostpulse_edac_dimm_correctable_errors_total",
                "Correctable memory errors of this DIMM (or rank) since boot, from dimm_ce_count.",
                &labels,
                v as f64,
            );
        }
        if let Some(v) = dimm.ue {
            out.counter(
                "hostpulse_edac_dimm_uncorrectable_errors_total",
                "Uncorrectable memory errors of this DIMM (or rank) since boot, from dimm_ue_count.",
                &labels,
                v as f64,
            );
        }
    }
}

/// Entries of `dir` named `<prefix><number>`, as (number, name), sorted
/// numerically.
fn numbered(files: &mut Files, dir: &Path, prefix: &str) -> Result<Option<Vec<(u32, String)>>, SourceError> {
    let entries = match files.list(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SourceError::io(dir, e)),
    };
    let mut out: Vec<(u32, String)> = entries
        .iter()
        .filter_map(|name| {
            let n = name.strip_prefix(prefix)?.parse::<u32>().ok()?;
            Some((n, name.clone()))
        })
        .collect();
    out.sort();
    Ok(Some(out))
}

fn count(files: &mut Files, dir: &Path, name: &str) -> Option<u64> {
    files.attr_in(dir, name).and_then(|t| parse_count(&t))
}

/// Reads one `mcN` directory: listings and DIMM labels from the refreshed
/// cache, counters through kept descriptors.
fn read_controller(files: &mut Files, dir: &Path, number: u32) -> Result<Controller, SourceError> {
    let mut mc = Controller {
        number: number.to_string(),
        ce: count(files, dir, "ce_count"),
        ue: count(files, dir, "ue_count"),
        ce_noinfo: count(files, dir, "ce_noinfo_count"),
        ue_noinfo: count(files, dir, "ue_noinfo_count"),
        ..Controller::default()
    };
    for (n, name) in numbered(files, dir, "csrow")?.unwrap_or_default() {
        let row_dir = dir.join(name);
        let mut row = Csrow {
            number: n.to_string(),
            ce: count(files, &row_dir, "ce_count"),
            ue: count(files, &row_dir, "ue_count"),
            channels: Vec::new(),
        };
        let mut channels: Vec<u32> = files
            .list(&row_dir)
            .map_err(|e| SourceError::io(&row_dir, e))?
            .iter()
            .filter_map(|name| name.strip_prefix("ch")?.strip_suffix("_ce_count")?.parse::<u32>().ok())
            .collect();
        channels.sort_unstable();
        for k in channels {
            row.channels.push(Channel {
                number: k.to_string(),
                label: files.static_in(&row_dir, &format!("ch{k}_dimm_label")),
                ce: count(files, &row_dir, &format!("ch{k}_ce_count")),
                ue: count(files, &row_dir, &format!("ch{k}_ue_count")),
            });
        }
        mc.csrows.push(row);
    }
    for prefix in ["dimm", "rank"] {
        for (n, name) in numbered(files, dir, prefix)?.unwrap_or_default() {
            let d = dir.join(name);
            mc.dimms.push(Dimm {
                number: n.to_string(),
                label: files.static_in(&d, "dimm_label").map(|l| l.trim().to_string()),
                ce: count(files, &d, "dimm_ce_count"),
                ue: count(files, &d, "dimm_ue_count"),
            });
        }
    }
    Ok(mc)
}

/// Reads `/sys/devices/system/edac/mc`.
#[derive(Debug, Default)]
pub struct EdacSource {
    files: Files,
}

impl Source for EdacSource {
    fn name(&self) -> &'static str {
        "edac"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        let files = &mut self.files;
        files.begin_cycle();
        let dir = paths.sys("devices/system/edac/mc");
        let Some(controllers) = numbered(files, &dir, "mc")? else {
            return Ok(());
        };
        for (n, name) in controllers {
            let mc = read_controller(files, &dir.join(name), n)?;
            emit_controller(&mc, out);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn channel_labels_are_rewritten_like_node_exporter() {
        assert_eq!(clean_channel_label(Some("mc0csrow0channel0\n")), "mc0_csrow0_channel0");
        assert_eq!(
            clean_channel_label(Some("  CPU#1_csrow0_channel2  ")),
            "CPU1__csrow0__channel2"
        );
        assert_eq!(clean_channel_label(Some("  ")), "unknown");
        assert_eq!(clean_channel_label(None), "unknown");
    }

    #[test]
    fn counts_parse() {
        assert_eq!(parse_count("7\n"), Some(7));
        assert_eq!(parse_count("x"), None);
    }

    #[test]
    fn dimm_layout_is_labelled_by_slot() {
        let mc = Controller {
            number: "1".into(),
            ce: Some(3),
            ue: Some(0),
            dimms: vec![Dimm {
                number: "2".into(),
                label: Some("CPU_SrcID#0_MC#1_Chan#0_DIMM#0".into()),
                ce: Some(3),
                ue: Some(0),
            }],
            ..Controller::default()
        };
        let mut out = Emitter::new();
        emit_controller(&mc, &mut out);
        let s = out
            .samples()
            .iter()
            .find(|s| s.name == "hostpulse_edac_dimm_correctable_errors_total")
            .unwrap();
        assert_eq!(s.value, 3.0);
        assert_eq!(
            s.labels,
            crate::emit::labels_from(vec![
                ("controller".to_string(), "1".to_string()),
                ("dimm".to_string(), "2".to_string()),
                ("label".to_string(), "CPU_SrcID#0_MC#1_Chan#0_DIMM#0".to_string()),
            ])
        );
        // No csrow series without csrow data or noinfo counters.
        assert!(!out.samples().iter().any(|s| s.name.contains("csrow")));
    }
}
