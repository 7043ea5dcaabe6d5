//! The `os_release` source: node_exporter's `os` collector —
//! `node_os_info{build_id,id,id_like,image_id,image_version,name,
//! pretty_name,variant,variant_id,version,version_codename,version_id}`,
//! `node_os_version{id,id_like,name}` (the major.minor of `VERSION_ID` as a
//! number) and `node_os_support_end_timestamp_seconds` — from
//! `/etc/os-release`, else `/usr/lib/os-release`, under rootfs. The file
//! changes only on an upgrade, so it is read at start and every ten minutes.
//! [`parse_os_release`], [`major_minor`] and [`date_to_epoch_seconds`] are
//! pure.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::emit::Emitter;
use crate::paths::HostPaths;
use crate::source::{Source, SourceError};

/// How often the file is read again.
const REFRESH: Duration = Duration::from_secs(600);

/// The `node_os_info` labels and the os-release keys they come from.
const INFO_LABELS: [(&str, &str); 12] = [
    ("build_id", "BUILD_ID"),
    ("id", "ID"),
    ("id_like", "ID_LIKE"),
    ("image_id", "IMAGE_ID"),
    ("image_version", "IMAGE_VERSION"),
    ("name", "NAME"),
    ("pretty_name", "PRETTY_NAME"),
    ("variant", "VARIANT"),
    ("variant_id", "VARIANT_ID"),
    ("version", "VERSION"),
    ("version_codename", "VERSION_CODENAME"),
    ("version_id", "VERSION_ID"),
];

/// Parses os-release(5): `KEY=value` lines, values optionally in double
/// quotes (with `\"`, `\\`, `` \` `` and `\$` escapes) or single quotes;
/// `#` comments and blank lines are skipped. Lines that are not
/// assignments are ignored, as the shell-sourcing readers of the file do
/// not fail on them either.
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        out.insert(key.to_string(), unquote(raw.trim()));
    }
    out
}

/// Removes shell quoting from one value.
fn unquote(raw: &str) -> String {
    if let Some(inner) = raw.strip_prefix('\'') {
        return inner.strip_suffix('\'').unwrap_or(inner).to_string();
    }
    let Some(inner) = raw.strip_prefix('"') else {
        // Unquoted: a trailing comment is not part of the value.
        return raw.split(" #").next().unwrap_or(raw).trim_end().to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('"' | '\\' | '`' | '$')) => out.push(e),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            },
            '"' => break,
            c => out.push(c),
        }
    }
    out
}

/// The leading `major[.minor]` of `VERSION_ID` as a number (`20.04` of
/// `20.04`, `12` of `12`, `3.18` of `3.18.4`), like node_exporter's
/// `^[0-9]+\.?[0-9]*`; `None` when it does not start with a digit.
pub fn major_minor(version_id: &str) -> Option<f64> {
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let major = digits(version_id);
    if major == 0 {
        return None;
    }
    let mut end = major;
    if version_id[major..].starts_with('.') {
        end += 1 + digits(&version_id[major + 1..]);
    }
    version_id[..end].trim_end_matches('.').parse::<f64>().ok()
}

/// Seconds since the epoch of midnight UTC on a `YYYY-MM-DD` date.
pub fn date_to_epoch_seconds(date: &str) -> Option<f64> {
    let mut parts = date.split('-');
    let (Some(y), Some(m), Some(d), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400) as f64)
}

/// Emits the os-release series from a file read at most every [`REFRESH`].
#[derive(Debug, Default)]
pub struct OsReleaseSource {
    cached: Option<(Instant, Option<BTreeMap<String, String>>)>,
}

impl OsReleaseSource {
    /// Reads the first os-release file that exists.
    fn read(paths: &HostPaths) -> Result<Option<BTreeMap<String, String>>, SourceError> {
        for file in ["/etc/os-release", "/usr/lib/os-release"] {
            let path = paths.root(file);
            // Read as bytes: a stray invalid byte in one value should not
            // hide the whole file.
            match std::fs::read(&path) {
                Ok(bytes) => return Ok(Some(parse_os_release(&String::from_utf8_lossy(&bytes)))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SourceError::io(&path, e)),
            }
        }
        Ok(None)
    }
}

impl Source for OsReleaseSource {
    fn name(&self) -> &'static str {
        "os_release"
    }

    fn collect(&mut self, paths: &HostPaths, out: &mut Emitter) -> Result<(), SourceError> {
        if self.cached.as_ref().is_none_or(|(at, _)| at.elapsed() >= REFRESH) {
            self.cached = Some((Instant::now(), Self::read(paths)?));
        }
        let Some((_, Some(fields))) = &self.cached else {
            return Ok(());
        };
        let get = |key: &str| fields.get(key).map(String::as_str).unwrap_or_default();
        let labels: Vec<(&str, &str)> = INFO_LABELS.iter().map(|(label, key)| (*label, get(key))).collect();
        out.gauge(
            "node_os_info",
            "A metric with a constant '1' value labeled by build_id, id, id_like, image_id, image_version, \
             name, pretty_name, variant, variant_id, version, version_codename, version_id.",
            &labels,
            1.0,
        );
        if let Some(version) = major_minor(get("VERSION_ID")).filter(|v| *v > 0.0) {
            out.gauge(
                "node_os_version",
                "Metric containing the major.minor part of the OS version.",
                &[("id", get("ID")), ("id_like", get("ID_LIKE")), ("name", get("NAME"))],
                version,
            );
        }
        if let Some(end) = fields.get("SUPPORT_END").and_then(|d| date_to_epoch_seconds(d)) {
            out.gauge(
                "node_os_support_end_timestamp_seconds",
                "Metric containing the end-of-life date timestamp of the OS.",
                &[],
                end,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quoting_rules() {
        let fields = parse_os_release(
            "# comment\nNAME=\"Ubuntu\"\nID=ubuntu\nPRETTY_NAME='Debian GNU/Linux 12'\n\
             VERSION=\"20.04 \\\"Focal\\\" \\$x\"\nBAD LINE\n\nID_LIKE=debian # trailing\n",
        );
        assert_eq!(fields["NAME"], "Ubuntu");
        assert_eq!(fields["ID"], "ubuntu");
        assert_eq!(fields["PRETTY_NAME"], "Debian GNU/Linux 12");
        assert_eq!(fields["VERSION"], "20.04 \"Focal\" $x");
        assert_eq!(fields["ID_LIKE"], "debian");
        assert_eq!(fields.len(), 5);
    }

    #[test]
    fn version_number() {
        assert_eq!(major_minor("20.04"), Some(20.04));
        assert_eq!(major_minor("12"), Some(12.0));
        assert_eq!(major_minor("3.18.4"), Some(3.18));
        assert_eq!(major_minor("7."), Some(7.0));
        assert_eq!(major_minor("rolling"), None);
        assert_eq!(major_minor(""), None);
    }

    #[test]
    fn support_end_dates() {
        assert_eq!(date_to_epoch_seconds("1970-01-01"), Some(0.0));
        assert_eq!(date_to_epoch_seconds("2028-06-30"), Some(1_845_936_000.0));
        assert_eq!(date_to_epoch_seconds("2000-03-01"), Some(951_868_800.0));
        assert_eq!(date_to_epoch_seconds("2028-6-30"), None);
        assert_eq!(date_to_epoch_seconds("2028-13-01"), None);
        assert_eq!(date_to_epoch_seconds("soon"), None);
    }
}
