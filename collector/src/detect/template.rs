//! The small subset of Prometheus's alert templates (Go `text/template`)
//! that rule labels and annotations use, compiled once when a rule file
//! loads so `check-rules` reports a bad template and evaluation never
//! fails on syntax.
//!
//! Supported inside `{{ ... }}` (with `{{-`/`-}}` trimming):
//! - operands `$labels.NAME`, `.Labels.NAME`, `$labels` (printed as a
//!   label set), `$value`, `.Value`, `$externalLabels.NAME` (always empty:
//!   the collector has no external labels), string and number literals;
//! - functions `humanize`, `humanize1024`, `humanizePercentage`,
//!   `humanizeDuration`, `printf FORMAT ARGS...` (`%s %v %d %f %.Nf %g %.Ng
//!   %e %%`), `toUpper`, `toLower`, `title`;
//! - pipelines `x | f | g`, where the piped value becomes the last argument.
//!
//! Anything else (`if`, `range`, `with`, `query`, ...) is a load-time error
//! naming the construct, rather than silently wrong text at 3 a.m.

use std::fmt::Write as _;

use crate::model::Labels;

/// Why a template cannot be compiled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("template {text:?}: {message}")]
pub struct TemplateError {
    /// The template text.
    pub text: String,
    /// What is wrong.
    pub message: String,
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Action(Vec<Command>),
}

#[derive(Debug, Clone, PartialEq)]
enum Command {
    Operand(Operand),
    Call(Func, Vec<Operand>),
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Label(String),
    AllLabels,
    Value,
    ExternalLabel,
    Str(String),
    Num(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Humanize,
    Humanize1024,
    HumanizePercentage,
    HumanizeDuration,
    Printf,
    ToUpper,
    ToLower,
    Title,
}

impl Func {
    fn by_name(name: &str) -> Option<Func> {
        Some(match name {
            "humanize" => Func::Humanize,
            "humanize1024" => Func::Humanize1024,
            "humanizePercentage" => Func::HumanizePercentage,
            "humanizeDuration" => Func::HumanizeDuration,
            "printf" => Func::Printf,
            "toUpper" => Func::ToUpper,
            "toLower" => Func::ToLower,
            "title" => Func::Title,
            _ => return None,
        })
    }
}

/// What a template sees: the alert's labels and value.
#[derive(Debug, Clone, Copy)]
pub struct Data<'a> {
    /// `$labels` (the series' labels without `__name__`).
    pub labels: &'a Labels,
    /// `$value`.
    pub value: f64,
}

#[derive(Debug, Clone)]
enum Val {
    Str(String),
    Num(f64),
}

impl Val {
    fn text(&self) -> String {
        match self {
            Val::Str(s) => s.clone(),
            Val::Num(v) => format_value(*v),
        }
    }
}

impl Template {
    /// Compiles `text`.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let err = |message: String| TemplateError {
            text: text.to_string(),
            message,
        };
        let mut parts = Vec::new();
        let mut rest = text;
        let mut trim_next = false;
        while let Some(open) = rest.find("{{") {
            let mut literal = &rest[..open];
            if trim_next {
                literal = literal.trim_start();
            }
            let after = &rest[open + 2..];
            let (trim_before, after) = match after.strip_prefix("- ") {
                Some(a) => (true, a),
                None => (false, after),
            };
            if trim_before {
                literal = literal.trim_end();
            }
            if !literal.is_empty() {
                parts.push(Part::Text(literal.to_string()));
            }
            let close = after
                .find("}}")
                .ok_or_else(|| err("unclosed action: missing }}".into()))?;
            let mut inner = &after[..close];
            trim_next = false;
            if let Some(i) = inner.strip_suffix(" -") {
                inner = i;
                trim_next = true;
            }
            parts.push(Part::Action(parse_pipeline(inner).map_err(err)?));
            rest = &after[close + 2..];
        }
        let literal = if trim_next { rest.trim_start() } else { rest };
        if literal.contains("}}") {
            return Err(err("stray }} outside an action".into()));
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal.to_string()));
        }
        Ok(Template { parts })
    }

    /// Expands the template. Function errors (a non-number to `humanize`)
    /// become part of the text, as Prometheus does, so an alert is never
    /// lost to its wording.
    pub fn expand(&self, data: Data<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Action(commands) => match run_pipeline(commands, data) {
                    Ok(v) => out.push_str(&v.text()),
                    Err(e) => {
                        let _ = write!(out, "<error expanding template: {e}>");
                    }
                },
            }
        }
        out
    }
}

fn parse_pipeline(inner: &str) -> Result<Vec<Command>, String> {
    let tokens = tokenize(inner)?;
    let mut commands = Vec::new();
    for (i, words) in tokens.split(|t| t == "|").enumerate() {
        let Some((first, args)) = words.split_first() else {
            return Err("empty command in pipeline".into());
        };
        if let Some(func) = Func::by_name(first) {
            let args = args.iter().map(|a| operand(a)).collect::<Result<Vec<_>, _>>()?;
            commands.push(Command::Call(func, args));
        } else if i == 0 && args.is_empty() {
            commands.push(Command::Operand(operand(first)?));
        } else if first.starts_with('$') || first.starts_with('.') || first.starts_with('"') {
            return Err(format!(
                "{first:?} is a value, not a function, so it cannot take arguments or be piped into"
            ));
        } else {
            return Err(format!("unsupported function or keyword {first:?}"));
        }
    }
    if commands.is_empty() {
        return Err("empty action {{ }}".into());
    }
    Ok(commands)
}

/// Splits an action into words, keeping quoted strings whole and `|` as
/// its own token.
fn tokenize(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '|' {
            chars.next();
            out.push("|".to_string());
        } else if c == '"' || c == '`' {
            let quote = c;
            let mut word = String::from('"');
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                if c == '\\' && quote == '"' {
                    match chars.next() {
                        Some('n') => word.push('\n'),
                        Some('t') => word.push('\t'),
                        Some(other) => word.push(other),
                        None => break,
                    }
                } else if c == quote {
                    closed = true;
                    break;
                } else {
                    word.push(c);
                }
            }
            if !closed {
                return Err("unterminated string".into());
            }
            out.push(word);
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '|' {
                    break;
                }
                word.push(c);
                chars.next();
            }
            out.push(word);
        }
    }
    Ok(out)
}

fn operand(word: &str) -> Result<Operand, String> {
    if let Some(s) = word.strip_prefix('"') {
        return Ok(Operand::Str(s.to_string()));
    }
    if let Some(name) = word.strip_prefix("$labels.").or_else(|| word.strip_prefix(".Labels.")) {
        return if is_label_name(name) {
            Ok(Operand::Label(name.to_string()))
        } else {
            Err(format!("{name:?} is not a label name"))
        };
    }
    if word.starts_with("$externalLabels.") || word.starts_with(".ExternalLabels.") {
        return Ok(Operand::ExternalLabel);
    }
    match word {
        "$labels" | ".Labels" => return Ok(Operand::AllLabels),
        "$value" | ".Value" => return Ok(Operand::Value),
        _ => {}
    }
    if let Ok(v) = word.parse::<f64>() {
        return Ok(Operand::Num(v));
    }
    Err(format!(
        "unsupported operand {word:?} (supported: $labels.NAME, $value, literals)"
    ))
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn resolve(op: &Operand, data: Data<'_>) -> Val {
    match op {
        Operand::Label(name) => Val::Str(data.labels.get(name).to_string()),
        Operand::AllLabels => {
            let pairs: Vec<String> = data
                .labels
                .pairs()
                .iter()
                .filter(|(k, _)| k != crate::model::METRIC_NAME)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            Val::Str(format!("map[{}]", pairs.join(" ")))
        }
        Operand::Value => Val::Num(data.value),
        Operand::ExternalLabel => Val::Str(String::new()),
        Operand::Str(s) => Val::Str(s.clone()),
        Operand::Num(v) => Val::Num(*v),
    }
}

fn run_pipeline(commands: &[Command], data: Data<'_>) -> Result<Val, String> {
    let mut piped: Option<Val> = None;
    for c in commands {
        let v = match c {
            Command::Operand(op) => resolve(op, data),
            Command::Call(func, args) => {
                let mut vals: Vec<Val> = args.iter().map(|a| resolve(a, data)).collect();
                vals.extend(piped.take());
                call(*func, &vals)?
            }
        };
        piped = Some(v);
    }
    piped.ok_or_else(|| "empty pipeline".to_string())
}

fn number(v: &Val) -> Result<f64, String> {
    match v {
        Val::Num(n) => Ok(*n),
        Val::Str(s) => s.trim().parse().map_err(|_| format!("{s:?} is not a number")),
    }
}

fn call(func: Func, args: &[Val]) -> Result<Val, String> {
    let one = || -> Result<&Val, String> {
        match args {
            [v] => Ok(v),
            _ => Err(format!("{func:?} takes one argument, got {}", args.len())),
        }
    };
    Ok(Val::Str(match func {
        Func::Humanize => humanize(number(one()?)?),
        Func::Humanize1024 => humanize1024(number(one()?)?),
        Func::HumanizePercentage => format!("{}%", format_g(number(one()?)? * 100.0, 4)),
        Func::HumanizeDuration => humanize_duration(number(one()?)?),
        Func::ToUpper => one()?.text().to_uppercase(),
        Func::ToLower => one()?.text().to_lowercase(),
        Func::Title => title(&one()?.text()),
        Func::Printf => {
            let Some((format, rest)) = args.split_first() else {
                return Err("printf needs a format".into());
            };
            printf(&format.text(), rest)?
        }
    }))
}

fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = !c.is_alphanumeric();
    }
    out
}

/// How `{{ $value }}` prints a number: like Go's `%v` for float64 for the
/// values alerts carry.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else if v != 0.0 && (v.abs() >= 1e21 || v.abs() < 1e-4) {
        // Shortest digits that round-trip, in Go's exponent spelling.
        let s = format!("{v:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i64 = exp.parse().unwrap_or(0);
        format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    } else {
        format!("{v}")
    }
}

/// Go's `%.{prec}g`: `prec` significant digits, trailing zeros dropped,
/// exponent form when the exponent is below -4 or at least `prec`.
pub fn format_g(v: f64, prec: usize) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if v == 0.0 {
        return "0".into();
    }
    let prec = prec.max(1);
    let sci = format!("{:.*e}", prec - 1, v);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if exp < -4 || exp >= i64::try_from(prec).unwrap_or(i64::MAX) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    } else {
        let decimals = usize::try_from(i64::try_from(prec).unwrap_or(0) - 1 - exp).unwrap_or(0);
        trim(&format!("{v:.decimals$}"))
    }
}

fn humanize(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format_g(v, 4);
    }
    if v.abs() >= 1.0 {
        let mut v = v;
        let mut prefix = "";
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
        format!("{}{prefix}", format_g(v, 4))
    } else {
        let mut v = v;
        let mut prefix = "";
        for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
            if v.abs() >= 1.0 {
                break;
            }
            prefix = p;
            v *= 1000.0;
        }
        format!("{}{prefix}", format_g(v, 4))
    }
}

fn humanize1024(v: f64) -> String {
    if v.abs() <= 1.0 || !v.is_finite() {
        return format_g(v, 4);
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", format_g(v, 4))
}

fn humanize_duration(v: f64) -> String {
    if !v.is_finite() {
        return format_g(v, 4);
    }
    if v == 0.0 {
        return "0s".into();
    }
    let sign = if v < 0.0 { "-" } else { "" };
    let a = v.abs();
    if a < 1.0 {
        let mut a = a;
        let mut prefix = "";
        for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
            if a >= 1.0 {
                break;
            }
            prefix = p;
            a *= 1000.0;
        }
        return format!("{sign}{}{prefix}s", format_g(a, 4));
    }
    // Truncation to whole units is what Prometheus prints.
    #[allow(clippy::cast_possible_truncation)]
    let whole = a as i64;
    let (days, hours, minutes, seconds) = (whole / 86_400, whole / 3600 % 24, whole / 60 % 60, whole % 60);
    if days != 0 {
        format!("{sign}{days}d {hours}h {minutes}m {seconds}s")
    } else if hours != 0 {
        format!("{sign}{hours}h {minutes}m {seconds}s")
    } else if minutes != 0 {
        format!("{sign}{minutes}m {seconds}s")
    } else {
        format!("{sign}{}s", format_g(a, 4))
    }
}

/// Go's `fmt.Sprintf` for the verbs alert texts use.
fn printf(format: &str, args: &[Val]) -> Result<String, String> {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut precision: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut digits = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(*d);
                chars.next();
            }
            precision = Some(digits.parse().unwrap_or(0));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.next() else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        match verb {
            's' | 'v' => out.push_str(&arg.text()),
            'd' => {
                let n = number(arg)?;
                // Go prints an integer; alert values that reach %d are counts.
                #[allow(clippy::cast_possible_truncation)]
                let _ = write!(out, "{}", n.trunc() as i64);
            }
            'f' => {
                let p = precision.unwrap_or(6);
                let _ = write!(out, "{:.*}", p, number(arg)?);
            }
            'e' => {
                let p = precision.unwrap_or(6);
                let s = format!("{:.*e}", p, number(arg)?);
                let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
                let e: i64 = e.parse().unwrap_or(0);
                let _ = write!(out, "{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
            }
            'g' => out.push_str(&format_g(number(arg)?, precision.unwrap_or(17))),
            other => {
                let _ = write!(out, "%!{other}(unsupported verb)");
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(template: &str, value: f64, expected: &str) {
        let labels = Labels::from_pairs(&[("instance", "db1"), ("device", "sda"), ("__name__", "m")]);
        let t = Template::parse(template).unwrap();
        assert_eq!(t.expand(Data { labels: &labels, value }), expected, "{template}");
    }

    #[test]
    fn expands_labels_values_and_functions() {
        let cases: &[(&str, f64, &str)] = &[
            ("plain text", 1.0, "plain text"),
            ("{{ $labels.instance }}: {{ $value }}", 85.5, "db1: 85.5"),
            ("{{ .Labels.device }} {{ .Value }}", 3.0, "sda 3"),
            ("{{ $labels.missing }}x", 0.0, "x"),
            ("{{ printf \"%.2f\" $value }}%", 12.3456, "12.35%"),
            ("{{ $value | printf \"%.1f\" }}", 2.25, "2.2"),
            ("{{ $value | humanizePercentage }}", 0.0512, "5.12%"),
            ("{{ $value | humanize }}", 1_234_567.0, "1.235M"),
            ("{{ humanize $value }}", 0.0012, "1.2m"),
            ("{{ $value | humanize1024 }}", 1_073_741_824.0, "1Gi"),
            ("{{ $value | humanizeDuration }}", 93_784.0, "1d 2h 3m 4s"),
            ("{{ $value | humanizeDuration }}", 42.5, "42.5s"),
            ("{{ $value | humanizeDuration }}", 0.25, "250ms"),
            (
                "{{ printf \"%d errors on %s\" $value $labels.device }}",
                7.0,
                "7 errors on sda",
            ),
            ("{{ $labels.device | toUpper }}", 0.0, "SDA"),
            ("a  {{- $labels.device -}}  b", 0.0, "asdab"),
            ("{{ $externalLabels.cluster }}", 0.0, ""),
            ("{{ $labels }}", 0.0, "map[device=sda instance=db1]"),
            (
                "{{ \"text\" | humanize }}",
                0.0,
                "<error expanding template: \"text\" is not a number>",
            ),
            ("{{ $value }}", f64::NAN, "NaN"),
        ];
        for (template, value, expected) in cases {
            check(template, *value, expected);
        }
    }

    #[test]
    fn unsupported_constructs_fail_at_load() {
        let cases = [
            ("{{ $labels.instance", "unclosed action: missing }}"),
            ("{{ if $value }}x{{ end }}", "unsupported function or keyword \"if\""),
            ("{{ query \"up\" }}", "unsupported function or keyword \"query\""),
            ("{{ $labels.1bad }}", "\"1bad\" is not a label name"),
            ("{{ }}", "empty command in pipeline"),
            ("{{ $value | }}", "empty command in pipeline"),
            ("x }}", "stray }} outside an action"),
            ("{{ \"open }}", "unterminated string"),
        ];
        for (template, message) in cases {
            let e = Template::parse(template).unwrap_err();
            assert_eq!(e.message, message, "{template}");
        }
    }

    #[test]
    fn go_number_formats() {
        assert_eq!(format_g(1234.4, 4), "1234");
        assert_eq!(format_g(12346.0, 4), "1.235e+04");
        assert_eq!(format_g(0.000012, 4), "1.2e-05");
        assert_eq!(format_g(-2.5, 4), "-2.5");
        assert_eq!(format_value(1e-7), "1e-07");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(2.5e22), "2.5e+22");
    }
}
