//! Prints one sampling [`Cycle`] in the Prometheus text exposition format
//! (version 0.0.4), the way node_exporter's client library prints it: one
//! `# HELP`/`# TYPE` pair per metric name, names in sorted order, series of a
//! name sorted by their labels, values formatted like Go's
//! `strconv.FormatFloat(v, 'g', -1, 64)`, and no timestamps. The output of
//! `hostpulse-agent sample` and the agent's optional local `/metrics` come
//! from here, so it can be diffed line by line against node_exporter.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::emit::{MetricType, Sample};
use crate::sampler::Cycle;

/// Renders every sample of `cycle` as Prometheus text format 0.0.4.
///
/// A series that appears twice in one cycle (same name and labels) is printed
/// once, keeping the first value, because Prometheus rejects duplicates.
pub fn render(cycle: &Cycle) -> String {
    let mut by_name: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    for sample in &cycle.samples {
        by_name.entry(sample.name.as_str()).or_default().push(sample);
    }
    let mut out = String::new();
    for (name, mut series) in by_name {
        // Stable sort: among duplicates the first emitted stays first.
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        series.dedup_by(|later, earlier| later.labels == earlier.labels);
        let (kind, help) = match cycle.meta.get(name) {
            Some(meta) => (meta.kind, Some(meta.help.as_str())),
            None => (MetricType::Untyped, None),
        };
        if let Some(help) = help {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        }
        let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
        for sample in series {
            out.push_str(name);
            if !sample.labels.is_empty() {
                out.push('{');
                for (i, (label, value)) in sample.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{label}=\"{}\"", escape_label_value(value));
                }
                out.push('}');
            }
            out.push(' ');
            out.push_str(&format_float(sample.value));
            out.push('\n');
        }
    }
    out
}

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes help text: backslash and line feed (quotes stay as they are).
pub fn escape_help(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Formats a value as client_golang does: Go's shortest `'g'` formatting,
/// which switches to exponent notation when the decimal exponent is below -4
/// or at least 6 (exponents have at least two digits: `1e+06`), plus the
/// special spellings `+Inf`, `-Inf` and `NaN`.
pub fn format_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    if value == 0.0 {
        // Go prints -0 as "0" here too (client_golang special-cases zero).
        return "0".to_string();
    }
    // Rust's `{:e}` gives the shortest round-tripping digits, the same digit
    // string Go's shortest formatting uses; only the layout differs.
    let sci = format!("{:e}", value.abs());
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let mut out = String::new();
    if value < 0.0 {
        out.push('-');
    }
    if !(-4..6).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let abs = exp.unsigned_abs();
        if abs < 10 {
            out.push('0');
        }
        let _ = write!(out, "{abs}");
    } else if exp < 0 {
        out.push_str("0.");
        for _ in 0..(-exp - 1) {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            out.push_str(&digits);
            for _ in digits.len()..int_len {
                out.push('0');
            }
        } else {
            out.push_str(&digits[..int_len]);
            out.push('.');
            out.push_str(&digits[int_len..]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emit::Emitter;

    fn check_float(value: f64, expected: &str) {
        assert_eq!(format_float(value), expected, "formatting {value:?}");
    }

    #[test]
    fn floats_are_formatted_like_go() {
        check_float(0.0, "0");
        check_float(-0.0, "0");
        check_float(1.0, "1");
        check_float(-1.0, "-1");
        check_float(0.001, "0.001");
        check_float(0.0001, "0.0001");
        check_float(0.00001, "1e-05");
        check_float(1.5e-7, "1.5e-07");
        check_float(10870.69, "10870.69");
        check_float(26442.0, "26442");
        check_float(100000.0, "100000");
        check_float(999999.0, "999999");
        check_float(1_000_000.0, "1e+06");
        check_float(8885917.0, "8.885917e+06");
        check_float(38014093.0, "3.8014093e+07");
        check_float(1.6042172416e10, "1.6042172416e+10");
        check_float(35184372087808.0, "3.5184372087808e+13");
        check_float(240422.366267, "240422.366267");
        check_float(1e100, "1e+100");
        check_float(-2.5e-300, "-2.5e-300");
        check_float(0.1 + 0.2, "0.30000000000000004");
        check_float(f64::INFINITY, "+Inf");
        check_float(f64::NEG_INFINITY, "-Inf");
        check_float(f64::NAN, "NaN");
    }

    #[test]
    fn escapes_label_values_and_help() {
        assert_eq!(escape_label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_help("say \"hi\"\\\n"), "say \"hi\"\\\\\\n");
    }

    #[test]
    fn groups_sorts_and_prints_once_per_name() {
        let mut out = Emitter::new();
        out.gauge("node_b", "B help.", &[("sensor", "temp2")], 2.0);
        out.counter("node_a_total", "A\nhelp.", &[], 1e7);
        out.gauge("node_b", "ignored", &[("sensor", "temp1")], 1.5);
        out.gauge("node_b", "ignored", &[("sensor", "temp1")], 9.0);
        out.gauge("node_c", "C.", &[("z", "q\""), ("a", "x")], f64::NAN);
        let (samples, meta) = out.take();
        let cycle = Cycle {
            timestamp_ms: 0,
            samples,
            meta,
            events: Vec::new(),
        };
        let expected = "\
# HELP node_a_total A\\nhelp.
# TYPE node_a_total counter
node_a_total 1e+07
# HELP node_b B help.
# TYPE node_b gauge
node_b{sensor=\"temp1\"} 1.5
node_b{sensor=\"temp2\"} 2
# HELP node_c C.
# TYPE node_c gauge
node_c{a=\"x\",z=\"q\\\"\"} NaN
";
        assert_eq!(render(&cycle), expected);
    }
}
