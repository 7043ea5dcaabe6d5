//! Prints one sampling [`Cycle`] in the Prometheus text exposition format
//! (version 0.0.4), the way node_exporter's client library prints it: one
//! `# HELP`/`# TYPE` pair per metric name, names in sorted order, series of a
//! name sorted by their labels, values formatted like Go's
//! `strconv.FormatFloat(v, 'g', -1, 64)`, and no timestamps. The output of
//! `hostpulse-agent sample` and the agent's optional local `/metrics` come
//! from here, so it can be diffed line by line against node_exporter.

use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::BuildHasherDefault;

use crate::emit::{MetricType, Sample};
use crate::sampler::Cycle;
use crate::sources::files::Fnv;

thread_local! {
    /// Length of the last rendered text, so the next buffer is allocated
    /// once at about the right size instead of growing by doubling.
    static LAST_LEN: Cell<usize> = const { Cell::new(0) };
}

/// Renders every sample of `cycle` as Prometheus text format 0.0.4.
///
/// A series that appears twice in one cycle (same name and labels) is printed
/// once, keeping the first value, because Prometheus rejects duplicates.
pub fn render(cycle: &Cycle) -> String {
    let samples = &cycle.samples;
    // One index vector sorted by name then labels instead of a map of vectors:
    // the stable sort keeps the first of duplicates first, and it is cheap on
    // the long already-ordered runs sources emit. Names and label sets are
    // shared, so most comparisons end at a pointer check.
    let rank = name_ranks(samples);
    let mut order: Vec<(u32, u32)> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| (rank.get(&s.name.addr()).copied().unwrap_or(0), i as u32))
        .collect();
    order.sort_by(|&(ra, a), &(rb, b)| {
        ra.cmp(&rb)
            .then_with(|| compare_labels(&samples[a as usize], &samples[b as usize]))
    });
    let order: Vec<u32> = order.into_iter().map(|(_, i)| i).collect();
    let mut out = String::with_capacity(LAST_LEN.with(Cell::get) + 4096);
    let mut i = 0;
    while i < order.len() {
        let first = &samples[order[i] as usize];
        let name = first.name.as_str();
        match cycle.meta.get(name) {
            Some(meta) => {
                out.push_str("# HELP ");
                out.push_str(name);
                out.push(' ');
                push_escaped_help(&mut out, &meta.help);
                out.push('\n');
                push_type(&mut out, name, meta.kind);
            }
            None => push_type(&mut out, name, MetricType::Untyped),
        }
        let mut previous: Option<&Sample> = None;
        while i < order.len() {
            let sample = &samples[order[i] as usize];
            if !sample.name.same(&first.name) && sample.name != first.name {
                break;
            }
            i += 1;
            if previous.is_some_and(|p| same_labels(p, sample)) {
                continue;
            }
            previous = Some(sample);
            out.push_str(name);
            if !sample.labels.is_empty() {
                out.push('{');
                for (n, (label, value)) in sample.labels.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    out.push_str(label);
                    out.push_str("=\"");
                    push_escaped_label_value(&mut out, value);
                    out.push('"');
                }
                out.push('}');
            }
            out.push(' ');
            write_float(&mut out, sample.value);
            out.push('\n');
        }
    }
    LAST_LEN.with(|l| l.set(out.len()));
    out
}

fn push_type(out: &mut String, name: &str, kind: MetricType) {
    out.push_str("# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind.as_str());
    out.push('\n');
}

fn same_labels(a: &Sample, b: &Sample) -> bool {
    std::sync::Arc::ptr_eq(&a.labels, &b.labels) || a.labels == b.labels
}

/// The position of every distinct name in sorted order, keyed by the
/// address of its interned text. Names are sorted once (a few hundred)
/// instead of compared as strings in every step of the sample sort; equal
/// texts from different interners get the same rank.
fn name_ranks(samples: &[Sample]) -> HashMap<usize, u32, BuildHasherDefault<Fnv>> {
    let mut distinct: HashMap<usize, &str, BuildHasherDefault<Fnv>> = HashMap::default();
    for s in samples {
        distinct.entry(s.name.addr()).or_insert(s.name.as_str());
    }
    let mut names: Vec<(&str, usize)> = distinct.into_iter().map(|(addr, name)| (name, addr)).collect();
    names.sort_unstable();
    let mut rank = HashMap::with_capacity_and_hasher(names.len(), BuildHasherDefault::default());
    let mut current = 0u32;
    for (i, (name, addr)) in names.iter().enumerate() {
        if i > 0 && names[i - 1].0 != *name {
            current += 1;
        }
        rank.insert(*addr, current);
    }
    rank
}

/// Order of the series of one name: by labels.
fn compare_labels(a: &Sample, b: &Sample) -> Ordering {
    if same_labels(a, b) {
        return Ordering::Equal;
    }
    a.labels.cmp(&b.labels)
}

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    push_escaped_label_value(&mut out, value);
    out
}

pub(crate) fn push_escaped_label_value(out: &mut String, value: &str) {
    if !value.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Escapes help text: backslash and line feed (quotes stay as they are).
pub fn escape_help(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    push_escaped_help(&mut out, help);
    out
}

pub(crate) fn push_escaped_help(out: &mut String, help: &str) {
    if !help.bytes().any(|b| matches!(b, b'\\' | b'\n')) {
        out.push_str(help);
        return;
    }
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Formats a value as client_golang does: Go's shortest `'g'` formatting,
/// which switches to exponent notation when the decimal exponent is below -4
/// or at least 6 (exponents have at least two digits: `1e+06`), plus the
/// special spellings `+Inf`, `-Inf` and `NaN`.
pub fn format_float(value: f64) -> String {
    let mut out = String::new();
    write_float(&mut out, value);
    out
}

/// A fixed buffer for Rust's `{:e}` output of one `f64` (at most 17 digits,
/// a point, `e`, a sign and three exponent digits).
struct SciBuf {
    bytes: [u8; 40],
    len: usize,
}

impl std::fmt::Write for SciBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Appends `value` formatted as [`format_float`] describes, without
/// allocating.
pub fn write_float(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
        return;
    }
    if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
        return;
    }
    if value == 0.0 {
        // Go prints -0 as "0" here too (client_golang special-cases zero).
        out.push('0');
        return;
    }
    // Integers below 2^53 (counters, bytes, most gauges) are exact, so their
    // shortest round-tripping digits are their decimal digits without
    // trailing zeros; no float-to-decimal conversion is needed.
    let abs = value.abs();
    if abs < 9_007_199_254_740_992.0 && abs.fract() == 0.0 {
        if value < 0.0 {
            out.push('-');
        }
        write_integer(out, abs as u64);
        return;
    }
    write_float_shortest(out, value);
}

/// The general case of [`write_float`] for finite non-zero values.
fn write_float_shortest(out: &mut String, value: f64) {
    let abs = value.abs();
    // Rust's `{:e}` gives the shortest round-tripping digits, the same digit
    // string Go's shortest formatting uses; only the layout differs.
    let mut sci = SciBuf { bytes: [0; 40], len: 0 };
    if write!(sci, "{abs:e}").is_err() {
        let _ = write!(out, "{value}");
        return;
    }
    let sci = &sci.bytes[..sci.len];
    let e_at = sci.iter().position(|&b| b == b'e').unwrap_or(sci.len());
    let exp = std::str::from_utf8(&sci[e_at.saturating_add(1).min(sci.len())..])
        .ok()
        .and_then(|e| e.parse::<i32>().ok())
        .unwrap_or(0);
    let mut digit_buf = [0u8; 40];
    let mut n = 0;
    for &b in &sci[..e_at] {
        if b.is_ascii_digit() {
            digit_buf[n] = b;
            n += 1;
        }
    }
    // Only ASCII digits were copied, so this cannot fail.
    let digits = std::str::from_utf8(&digit_buf[..n]).unwrap_or("0");
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
        out.push_str(digits);
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            out.push_str(digits);
            for _ in digits.len()..int_len {
                out.push('0');
            }
        } else {
            out.push_str(&digits[..int_len]);
            out.push('.');
            out.push_str(&digits[int_len..]);
        }
    }
}

/// Appends a non-zero integer below 2^53 as Go's shortest `'g'` prints it:
/// plain digits below 1e6, otherwise `d.ddde+XX` with trailing zeros cut.
fn write_integer(out: &mut String, n: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    let mut rest = n;
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let digits = &buf[at..];
    if n < 1_000_000 {
        // ASCII digits only.
        out.push_str(std::str::from_utf8(digits).unwrap_or("0"));
        return;
    }
    let exp = digits.len() - 1;
    let mut end = digits.len();
    while end > 1 && digits[end - 1] == b'0' {
        end -= 1;
    }
    out.push(char::from(digits[0]));
    if end > 1 {
        out.push('.');
        out.push_str(std::str::from_utf8(&digits[1..end]).unwrap_or("0"));
    }
    out.push_str("e+");
    if exp < 10 {
        out.push('0');
    }
    let _ = write!(out, "{exp}");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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

    /// The integer path prints what the general shortest-digits path prints.
    #[test]
    fn integers_match_the_general_path() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let check = |n: u64| {
            for v in [n as f64, -(n as f64)] {
                let mut general = String::new();
                write_float_shortest(&mut general, v);
                assert_eq!(format_float(v), general, "{n}");
            }
        };
        for n in (1..2_000_000)
            .step_by(997)
            .chain([1_000_000, 1_200_000, 9_007_199_254_740_991, 4_000_787_030_016])
        {
            check(n);
        }
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Every magnitude below 2^53, and round numbers with many zeros.
            let n = (x >> (11 + x % 53)).max(1);
            check(n);
            check((n % 100_000).max(1) * 10u64.pow((x % 11) as u32));
        }
    }

    #[test]
    fn escapes_label_values_and_help() {
        assert_eq!(escape_label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_help("say \"hi\"\\\n"), "say \"hi\"\\\\\\n");
    }

    /// A worker thread interns its own copy of a name; its series must still
    /// be printed in the one group of that name, in label order.
    #[test]
    fn same_name_from_another_thread_is_one_group() {
        let mut out = Emitter::new();
        out.gauge("node_m", "M.", &[("dev", "b")], 2.0);
        out.gauge("node_a", "A.", &[], 0.5);
        let other = std::thread::spawn(|| {
            let mut out = Emitter::new();
            out.gauge("node_m", "M.", &[("dev", "a")], 1.0);
            out.gauge("node_m", "M.", &[("dev", "c")], 3.0);
            out
        })
        .join()
        .unwrap();
        out.extend(other);
        let (samples, meta) = out.take();
        let cycle = Cycle {
            timestamp_ms: 0,
            samples,
            meta,
            events: Vec::new(),
        };
        let expected = "\
# HELP node_a A.
# TYPE node_a gauge
node_a 0.5
# HELP node_m M.
# TYPE node_m gauge
node_m{dev=\"a\"} 1
node_m{dev=\"b\"} 2
node_m{dev=\"c\"} 3
";
        assert_eq!(render(&cycle), expected);
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
