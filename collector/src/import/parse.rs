//! Pure, line-at-a-time parsers of the two text formats `import` reads: the
//! Prometheus text exposition format (0.0.4, timestamps in integer
//! milliseconds) and OpenMetrics 1.0 text (timestamps in seconds, possibly
//! fractional, and a closing `# EOF`). Nothing here does I/O; the reader in
//! `import.rs` feeds lines in and turns errors into `file:line` messages.
//!
//! A sample line is split in two steps so the expensive one runs rarely:
//! [`parse_line`] only finds where the series text `name{labels}` ends and
//! parses the value and timestamp, and [`parse_series`] turns the series
//! text into [`Labels`]. Dumps list many samples of one series in a row, so
//! the reader parses the labels once per distinct series text.

use crate::ingest::validate::{check_label_name, check_metric_name};
use crate::model::{Labels, METRIC_NAME};

/// Which of the two text formats a file is in; decides the timestamp unit,
/// the accepted `# TYPE`s and whether `# EOF` ends the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// OpenMetrics 1.0 text: timestamps in seconds, `# EOF` required.
    OpenMetrics,
    /// Prometheus text format 0.0.4: timestamps in milliseconds.
    Prometheus,
}

/// Why a line could not be parsed; the reader adds the file and line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

/// One classified line.
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    /// A sample.
    Sample(RawSample<'a>),
    /// `# TYPE`, `# HELP` or `# UNIT`: checked, carries nothing `import` stores.
    Metadata,
    /// A blank line or another comment.
    Comment,
    /// OpenMetrics' `# EOF`.
    Eof,
}

/// A sample line with its labels not yet parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct RawSample<'a> {
    /// `name{labels}` exactly as written; give it to [`parse_series`].
    pub series: &'a str,
    /// The value (NaN and ±Inf included).
    pub value: f64,
    /// Timestamp in ms since the epoch, when the line has one.
    pub timestamp_ms: Option<i64>,
}

const PROMETHEUS_TYPES: &[&str] = &["counter", "gauge", "histogram", "summary", "untyped"];
const OPENMETRICS_TYPES: &[&str] = &[
    "counter",
    "gauge",
    "histogram",
    "gaugehistogram",
    "stateset",
    "info",
    "summary",
    "unknown",
];

/// Classifies and parses one line (without its `\n`; a trailing `\r` is
/// ignored).
pub fn parse_line(line: &str, dialect: Dialect) -> Result<Line<'_>, ParseError> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.trim().is_empty() {
        return Ok(Line::Comment);
    }
    if let Some(comment) = line.strip_prefix('#') {
        return parse_comment(comment, dialect);
    }
    let (series, rest) = split_series(line)?;
    if !rest.starts_with([' ', '\t']) {
        return err(format!("expected a space and a value after {series:?}"));
    }
    let mut tokens = rest.split_ascii_whitespace();
    let Some(value) = tokens.next() else {
        return err(format!("missing value after {series:?}"));
    };
    let value = parse_value(value)?;
    let timestamp_ms = match tokens.next() {
        None => None,
        // An OpenMetrics exemplar (`# {trace_id="..."} 1.0`) may follow
        // the value; it refers to data outside the series and is not stored.
        Some("#") if dialect == Dialect::OpenMetrics => return sample(series, value, None),
        Some(ts) => Some(parse_timestamp(ts, dialect)?),
    };
    match tokens.next() {
        None => {}
        Some("#") if dialect == Dialect::OpenMetrics => {}
        Some(extra) => return err(format!("unexpected {extra:?} after the timestamp")),
    }
    sample(series, value, timestamp_ms)
}

fn sample(series: &str, value: f64, timestamp_ms: Option<i64>) -> Result<Line<'_>, ParseError> {
    Ok(Line::Sample(RawSample {
        series,
        value,
        timestamp_ms,
    }))
}

/// `# TYPE`, `# HELP`, `# UNIT`, `# EOF` or a free comment (the text after `#`).
fn parse_comment(comment: &str, dialect: Dialect) -> Result<Line<'_>, ParseError> {
    let mut tokens = comment.split_ascii_whitespace();
    let keyword = tokens.next().unwrap_or("");
    let om = dialect == Dialect::OpenMetrics;
    match keyword {
        "EOF" if om => match tokens.next() {
            None => Ok(Line::Eof),
            Some(extra) => err(format!("unexpected {extra:?} after # EOF")),
        },
        "TYPE" => {
            let Some(name) = tokens.next() else {
                return err("# TYPE without a metric name");
            };
            check_metric_name(name).map_err(ParseError)?;
            let Some(kind) = tokens.next() else {
                return err(format!("# TYPE {name} without a type"));
            };
            let known = if om { OPENMETRICS_TYPES } else { PROMETHEUS_TYPES };
            if !known.contains(&kind) {
                return err(format!(
                    "# TYPE {name}: unknown type {kind:?} (expected one of {known:?})"
                ));
            }
            match tokens.next() {
                None => Ok(Line::Metadata),
                Some(extra) => err(format!("unexpected {extra:?} after # TYPE {name} {kind}")),
            }
        }
        "HELP" | "UNIT" if keyword == "HELP" || om => {
            let Some(name) = tokens.next() else {
                return err(format!("# {keyword} without a metric name"));
            };
            check_metric_name(name).map_err(ParseError)?;
            Ok(Line::Metadata)
        }
        _ => Ok(Line::Comment),
    }
}

/// Splits a sample line into its series text (`name` or `name{...}`) and
/// the rest, honouring quotes and escapes inside the label set.
fn split_series(line: &str) -> Result<(&str, &str), ParseError> {
    let bytes = line.as_bytes();
    let name_end = bytes
        .iter()
        .position(|&b| b == b'{' || b == b' ' || b == b'\t')
        .unwrap_or(bytes.len());
    if name_end == 0 {
        return err("expected a metric name at the start of the line");
    }
    if bytes.get(name_end) != Some(&b'{') {
        return Ok(line.split_at(name_end));
    }
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate().skip(name_end + 1) {
        if escaped {
            escaped = false;
        } else if in_quotes {
            match b {
                b'\\' => escaped = true,
                b'"' => in_quotes = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_quotes = true,
                // Every delimiter is ASCII, so `i + 1` is a char boundary.
                b'}' => return Ok(line.split_at(i + 1)),
                _ => {}
            }
        }
    }
    if in_quotes {
        err("unterminated label value (missing closing quote)")
    } else {
        err("unterminated label set (missing '}')")
    }
}

/// Parses series text (`name` or `name{a="1",b="2"}`) into labels, with the
/// metric name under `__name__`. Label values are unescaped (`\\`, `\"`,
/// `\n`); OpenMetrics allows no other escape, while the Prometheus format
/// keeps other backslashes as written, like Prometheus does.
pub fn parse_series(series: &str, dialect: Dialect) -> Result<Labels, ParseError> {
    let (name, label_text) = match series.find('{') {
        Some(open) => (&series[..open], Some(&series[open + 1..])),
        None => (series, None),
    };
    check_metric_name(name).map_err(ParseError)?;
    let mut pairs = vec![(METRIC_NAME.to_string(), name.to_string())];
    if let Some(text) = label_text {
        parse_label_set(text, dialect, &mut pairs)?;
    }
    let mut names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return err(format!("label {:?} appears twice in {series}", w[0]));
    }
    Ok(Labels::new(pairs))
}

/// Parses `a="1", b="2"}` (the text after `{`) into `out`.
fn parse_label_set(text: &str, dialect: Dialect, out: &mut Vec<(String, String)>) -> Result<(), ParseError> {
    let mut rest = text.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            if !after.trim().is_empty() {
                return err(format!("unexpected {after:?} after the label set"));
            }
            return Ok(());
        }
        let name_end = rest
            .find(|c: char| c == '=' || c.is_ascii_whitespace())
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        check_label_name(name).map_err(ParseError)?;
        rest = rest[name_end..].trim_start();
        let Some(after_eq) = rest.strip_prefix('=') else {
            return err(format!("expected '=' after label name {name:?}"));
        };
        let Some(quoted) = after_eq.trim_start().strip_prefix('"') else {
            return err(format!("expected '\"' to open the value of label {name:?}"));
        };
        let (value, after_value) =
            unescape_value(quoted, dialect).map_err(|e| ParseError(format!("label {name:?}: {e}")))?;
        out.push((name.to_string(), value));
        rest = after_value.trim_start();
        if let Some(after_comma) = rest.strip_prefix(',') {
            rest = after_comma.trim_start();
        } else if !rest.starts_with('}') {
            return err(format!("expected ',' or '}}' after the value of label {name:?}"));
        }
    }
}

/// Reads a quoted label value up to its closing quote (the opening one is
/// already consumed); returns the unescaped value and the text after the quote.
fn unescape_value(text: &str, dialect: Dialect) -> Result<(String, &str), ParseError> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                Some((_, other)) if dialect == Dialect::Prometheus => {
                    value.push('\\');
                    value.push(other);
                }
                Some((_, other)) => return err(format!("invalid escape \\{other} (only \\\\, \\\" and \\n)")),
                None => return err("value ends in a backslash"),
            },
            '\n' => return err("raw newline in the value (write \\n)"),
            c => value.push(c),
        }
    }
    err("unterminated value (missing closing quote)")
}

/// A sample value: a decimal or exponent number, `NaN`, `+Inf`, `-Inf`.
pub fn parse_value(text: &str) -> Result<f64, ParseError> {
    text.parse::<f64>()
        .or_else(|_| err(format!("value {text:?} is not a number")))
}

/// A timestamp in the dialect's unit, as ms since the epoch.
pub fn parse_timestamp(text: &str, dialect: Dialect) -> Result<i64, ParseError> {
    match dialect {
        Dialect::Prometheus => text
            .parse::<i64>()
            .or_else(|_| err(format!("timestamp {text:?} is not an integer number of milliseconds"))),
        Dialect::OpenMetrics => seconds_to_ms(text)
            .ok_or_else(|| ParseError(format!("timestamp {text:?} is not a number of seconds in range"))),
    }
}

/// Seconds (`1767225600`, `1767225600.125`, `1.7e9`) to ms, rounded to the
/// nearest ms. Plain decimals are converted exactly, digit by digit, so
/// ms-precision timestamps survive the trip through seconds.
fn seconds_to_ms(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let plain = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !plain(whole) || !plain(frac) {
        // Exponent notation (or garbage, which the float parser refuses).
        let secs: f64 = text.parse().ok()?;
        let ms = (secs * 1000.0).round();
        return (ms.is_finite() && ms.abs() < i64::MAX as f64).then_some(ms as i64);
    }
    let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut ms = whole.checked_mul(1000)?;
    let frac = frac.as_bytes();
    for (i, scale) in [100, 10, 1].into_iter().enumerate() {
        if let Some(d) = frac.get(i) {
            ms = ms.checked_add(i64::from(d - b'0') * scale)?;
        }
    }
    if frac.get(3).is_some_and(|d| *d >= b'5') {
        ms = ms.checked_add(1)?;
    }
    Some(if negative { -ms } else { ms })
}

/// Timestamps below this are taken for seconds when sniffing: as ms they
/// would fall in 1973, as seconds in the year 5138.
const SECONDS_BELOW: i64 = 100_000_000_000;

/// Guesses the dialect of a file from its first lines (a few KiB are
/// plenty): OpenMetrics if it has `# UNIT` or `# EOF`, an OpenMetrics-only
/// type, or a first timestamp that is fractional or reads as seconds;
/// otherwise the Prometheus format.
pub fn sniff_dialect(head: &str) -> Dialect {
    for line in head.lines() {
        if let Some(comment) = line.strip_prefix('#') {
            let mut tokens = comment.split_ascii_whitespace();
            match tokens.next() {
                Some("EOF" | "UNIT") => return Dialect::OpenMetrics,
                Some("TYPE") => {
                    let kind = tokens.nth(1).unwrap_or("");
                    if OPENMETRICS_TYPES.contains(&kind) && !PROMETHEUS_TYPES.contains(&kind) {
                        return Dialect::OpenMetrics;
                    }
                }
                _ => {}
            }
            continue;
        }
        let Ok((_, rest)) = split_series(line) else {
            continue;
        };
        let Some(ts) = rest.split_ascii_whitespace().nth(1) else {
            continue;
        };
        return match ts.parse::<i64>() {
            Ok(ms) if ms.abs() >= SECONDS_BELOW => Dialect::Prometheus,
            Ok(_) => Dialect::OpenMetrics,
            Err(_) if ts == "#" => continue,
            Err(_) => Dialect::OpenMetrics,
        };
    }
    Dialect::Prometheus
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::STALE_NAN_BITS;

    const OM: Dialect = Dialect::OpenMetrics;
    const PROM: Dialect = Dialect::Prometheus;

    /// Parses a sample line fully: labels in Prometheus notation, value, timestamp.
    fn sample(line: &str, dialect: Dialect) -> Result<(String, f64, Option<i64>), String> {
        match parse_line(line, dialect).map_err(|e| e.0)? {
            Line::Sample(s) => {
                let labels = parse_series(s.series, dialect).map_err(|e| e.0)?;
                Ok((labels.to_string(), s.value, s.timestamp_ms))
            }
            other => Err(format!("not a sample: {other:?}")),
        }
    }

    fn check(line: &str, dialect: Dialect, labels: &str, value: f64, ts: Option<i64>) {
        let (l, v, t) = sample(line, dialect).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(l, labels, "{line:?}");
        assert!(v == value || (v.is_nan() && value.is_nan()), "{line:?}: value {v}");
        assert_eq!(t, ts, "{line:?}");
    }

    fn rejected(line: &str, dialect: Dialect, needle: &str) {
        let got = sample(line, dialect);
        match got {
            Err(e) => assert!(e.contains(needle), "{line:?}: error {e:?} lacks {needle:?}"),
            Ok(ok) => panic!("{line:?} was accepted as {ok:?}"),
        }
    }

    #[test]
    fn samples_with_and_without_timestamps() {
        check("up 1", PROM, "up{}", 1.0, None);
        check("up 1", OM, "up{}", 1.0, None);
        check(
            "up{job=\"a\"} 0.5 1767225600000",
            PROM,
            "up{job=\"a\"}",
            0.5,
            Some(1_767_225_600_000),
        );
        check(
            "up{job=\"a\"} 0.5 1767225600",
            OM,
            "up{job=\"a\"}",
            0.5,
            Some(1_767_225_600_000),
        );
        check("up 2 1767225600.125", OM, "up{}", 2.0, Some(1_767_225_600_125));
        check("up 2 1767225600.1", OM, "up{}", 2.0, Some(1_767_225_600_100));
        check("up 2 1767225600.0006", OM, "up{}", 2.0, Some(1_767_225_600_001));
        check("up 2 1.7672256e9", OM, "up{}", 2.0, Some(1_767_225_600_000));
        check("up 2 -1", PROM, "up{}", 2.0, Some(-1));
        check("up 2 -1.5", OM, "up{}", 2.0, Some(-1500));
        check("up 2 1767225600000\r", PROM, "up{}", 2.0, Some(1_767_225_600_000));
    }

    #[test]
    fn labels_are_sorted_unescaped_and_trailing_commas_allowed() {
        check(
            r#"m{z="1",a="x\"y\\z\nw"} 3"#,
            OM,
            "m{a=\"x\\\"y\\\\z\\nw\",z=\"1\"}",
            3.0,
            None,
        );
        check("m{ a = \"1\" , } 3", PROM, "m{a=\"1\"}", 3.0, None);
        check("m{} 3", PROM, "m{}", 3.0, None);
        check("m{a=\"}{ ,\"} 3", PROM, "m{a=\"}{ ,\"}", 3.0, None);
        check("m{a=\"ü\"} 3", PROM, "m{a=\"ü\"}", 3.0, None);
        // Prometheus keeps unknown escapes as written; OpenMetrics refuses them.
        check(r#"m{a="C:\dir"} 3"#, PROM, r#"m{a="C:\\dir"}"#, 3.0, None);
        rejected(r#"m{a="C:\dir"} 3"#, OM, "invalid escape \\d");
        // An empty value means the label is absent.
        check("m{a=\"\"} 3", PROM, "m{}", 3.0, None);
    }

    #[test]
    fn special_values() {
        check("m NaN", OM, "m{}", f64::NAN, None);
        check("m +Inf 1", OM, "m{}", f64::INFINITY, Some(1000));
        check("m -Inf", PROM, "m{}", f64::NEG_INFINITY, None);
        check("m 1e-3", PROM, "m{}", 0.001, None);
        check("m -0", PROM, "m{}", -0.0, None);
        let (_, nan, _) = sample("m NaN", OM).unwrap();
        assert_ne!(nan.to_bits(), STALE_NAN_BITS, "a written NaN is not the stale marker");
    }

    #[test]
    fn exemplars_are_skipped_in_openmetrics() {
        check(
            "req_bucket{le=\"0.5\"} 7 1767225600 # {trace_id=\"abc\"} 0.3 1767225599",
            OM,
            "req_bucket{le=\"0.5\"}",
            7.0,
            Some(1_767_225_600_000),
        );
        check(
            "req_bucket{le=\"+Inf\"} 9 # {trace_id=\"abc\"} 0.3",
            OM,
            "req_bucket{le=\"+Inf\"}",
            9.0,
            None,
        );
        rejected("m 1 2 # {a=\"b\"} 1", PROM, "unexpected \"#\"");
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        rejected("m", PROM, "expected a space and a value");
        rejected("m ", PROM, "missing value");
        rejected("m abc", PROM, "value \"abc\" is not a number");
        rejected("m 1 1.5", PROM, "not an integer number of milliseconds");
        rejected("m 1 x", OM, "not a number of seconds");
        rejected("m 1 2 3", PROM, "unexpected \"3\" after the timestamp");
        rejected("m{a=\"1} 1", PROM, "unterminated label value");
        rejected("m{a=\"1\" 1", PROM, "unterminated label set");
        rejected("m{a=1} 1", PROM, "expected '\"' to open the value of label \"a\"");
        rejected("m{a=\"1\"", PROM, "unterminated label set");
        rejected("m{a=\"1\" b=\"2\"} 1", PROM, "expected ',' or '}'");
        rejected("m{a=\"1\",a=\"2\"} 1", PROM, "label \"a\" appears twice");
        rejected("m{1a=\"1\"} 1", PROM, "invalid label name \"1a\"");
        rejected("m{__name__=\"x\"} 1", PROM, "invalid label name \"__name__\"");
        rejected("9m 1", PROM, "invalid metric name \"9m\"");
        rejected("{a=\"1\"} 1", PROM, "expected a metric name");
        rejected("m 1 99999999999999999999", OM, "not a number of seconds in range");
    }

    #[test]
    fn metadata_lines() {
        let ok = [
            ("# TYPE m counter", PROM, Line::Metadata),
            ("# TYPE m untyped", PROM, Line::Metadata),
            ("# TYPE m info", OM, Line::Metadata),
            ("# HELP m Some \\n help", PROM, Line::Metadata),
            ("# UNIT m_seconds seconds", OM, Line::Metadata),
            ("# UNIT is only a comment in the Prometheus format", PROM, Line::Comment),
            ("# any comment", PROM, Line::Comment),
            ("", PROM, Line::Comment),
            ("# EOF", OM, Line::Eof),
            ("# EOF", PROM, Line::Comment),
        ];
        for (line, dialect, want) in ok {
            assert_eq!(parse_line(line, dialect), Ok(want), "{line:?}");
        }
        let bad = [
            ("# TYPE m info", PROM, "unknown type \"info\""),
            ("# TYPE m", OM, "without a type"),
            ("# TYPE", OM, "without a metric name"),
            ("# TYPE 1m gauge", OM, "invalid metric name"),
            ("# EOF now", OM, "after # EOF"),
        ];
        for (line, dialect, needle) in bad {
            let e = parse_line(line, dialect).unwrap_err();
            assert!(e.0.contains(needle), "{line:?}: {e}");
        }
    }

    #[test]
    fn dialect_is_sniffed_from_the_head() {
        let cases = [
            ("# TYPE m gauge\nm 1 1767225600\n", OM),
            ("# TYPE m gauge\nm 1 1767225600000\n", PROM),
            ("m{a=\"x y\"} 1 1767225600.5\n", OM),
            ("# UNIT m seconds\n", OM),
            ("# TYPE m stateset\n", OM),
            ("m 1\nm 2\n", PROM),
            ("m 1 # {a=\"b\"} 1\nm 1 17\n", OM),
            ("", PROM),
        ];
        for (head, want) in cases {
            assert_eq!(sniff_dialect(head), want, "{head:?}");
        }
    }
}
