//! Request parameters of the Prometheus HTTP API: URL-encoded forms, times
//! and durations, parsed the way Prometheus parses them so that Grafana,
//! promtool and scripts written for Prometheus send nothing we reject and
//! get the same error text back.
//!
//! Everything here is a pure function over strings; `api` reads the request
//! and hands the text over. Times are milliseconds since the epoch (the
//! store's unit); durations are nanoseconds because Prometheus validates
//! `step` in nanoseconds before it rounds to milliseconds.

/// Earliest time Prometheus represents (`MinTime` in its API package), in ms.
pub const MIN_TIME_MS: i64 = -9_223_309_901_257_974_000;
/// Latest time Prometheus represents (`MaxTime` in its API package), in ms.
pub const MAX_TIME_MS: i64 = 9_223_309_901_257_974_999;

/// `MinTime` as Prometheus formats it; clients echo it back as `start`.
const MIN_TIME_TEXT: &str = "-292273086-05-16T16:47:06Z";
/// `MaxTime` as Prometheus formats it; clients echo it back as `end`.
const MAX_TIME_TEXT: &str = "292277025-08-18T07:12:54.999999999Z";

/// Decoded form values of one request, in the order Go's `r.Form` holds
/// them: body values before URL query values, so the first value of a name
/// is what Prometheus's `r.FormValue` would return.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Combines a URL query string and (for form POSTs) the body.
    pub fn parse(query: Option<&str>, form_body: Option<&[u8]>) -> Result<Params, String> {
        let mut pairs = Vec::new();
        if let Some(body) = form_body {
            pairs.extend(parse_urlencoded(body)?);
        }
        if let Some(q) = query {
            pairs.extend(parse_urlencoded(q.as_bytes())?);
        }
        Ok(Params(pairs))
    }

    /// First value of `name`, treating an empty value as absent (as
    /// Prometheus does for every optional parameter).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Every value of a repeated parameter such as `match[]`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Decodes `application/x-www-form-urlencoded` text. Invalid percent escapes
/// are an error, as in Go's `url.ParseQuery`; invalid UTF-8 is replaced
/// rather than rejected because label values are shown, not interpreted.
pub fn parse_urlencoded(input: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for part in input.split(|b| *b == b'&') {
        if part.is_empty() {
            continue;
        }
        let (key, value) = match part.iter().position(|b| *b == b'=') {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, &part[part.len()..]),
        };
        out.push((percent_decode(key)?, percent_decode(value)?));
    }
    Ok(out)
}

fn percent_decode(input: &[u8]) -> Result<String, String> {
    let mut bytes = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = input.get(i + 1..i + 3).ok_or_else(|| invalid_escape(&input[i..]))?;
                let hi = hex_digit(hex[0]).ok_or_else(|| invalid_escape(hex))?;
                let lo = hex_digit(hex[1]).ok_or_else(|| invalid_escape(hex))?;
                bytes.push(hi << 4 | lo);
                i += 2;
            }
            b => bytes.push(b),
        }
        i += 1;
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn invalid_escape(rest: &[u8]) -> String {
    let shown: String = String::from_utf8_lossy(rest).chars().take(3).collect();
    format!("invalid URL escape \"%{}\"", shown.trim_start_matches('%'))
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parses a time as Prometheus's API does: unix seconds with an optional
/// fraction (rounded to milliseconds), or RFC 3339 with optional fractional
/// seconds. Returns milliseconds since the epoch, clamped to Prometheus's
/// representable range so later arithmetic cannot overflow.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let fail = || format!("cannot parse {s:?} to a valid timestamp");
    if let Ok(secs) = s.parse::<f64>() {
        if !secs.is_finite() {
            return Err(fail());
        }
        // Prometheus splits whole seconds from the fraction and rounds the
        // fraction to milliseconds; doing the same keeps e.g. 1.0005 equal.
        let whole = secs.trunc();
        let frac_ms = ((secs - whole) * 1000.0).round();
        let ms = whole * 1000.0 + frac_ms;
        // `as` saturates at the i64 range; the clamp is exact in integers.
        return Ok((ms as i64).clamp(MIN_TIME_MS, MAX_TIME_MS));
    }
    match s {
        MIN_TIME_TEXT => return Ok(MIN_TIME_MS),
        MAX_TIME_TEXT => return Ok(MAX_TIME_MS),
        _ => {}
    }
    parse_rfc3339(s).ok_or_else(fail)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` to ms since the epoch.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0;
    if rest.first() == Some(&b'.') {
        let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        // Truncate to milliseconds, as Prometheus's `timestamp.FromTime` does.
        for (i, c) in rest[1..1 + n].iter().enumerate().take(3) {
            millis += i64::from(c - b'0') * 10_i64.pow(2 - i as u32);
        }
        rest = &rest[1 + n..];
    }
    let offset_secs = match rest {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = digits(&[*h1, *h2])?;
            let m = digits(&[*m1, *m2])?;
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1000 + millis)
}

fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0_i64, |acc, c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`), exact for every year a 4-digit field can hold.
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

const NANOS_PER_MS: i64 = 1_000_000;

/// Parses a duration as Prometheus's API does: float seconds (`15`, `0.5`)
/// or a Prometheus duration (`1h30m`, `15s`, `100ms`, units `y w d h m s ms`
/// from largest to smallest). Returns nanoseconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    if let Ok(secs) = s.parse::<f64>() {
        let ns = secs * 1e9;
        if ns.is_nan() {
            return Err(format!("cannot parse {s:?} to a valid duration"));
        }
        if ns >= i64::MAX as f64 || ns <= i64::MIN as f64 {
            return Err(format!("cannot parse {s:?} to a valid duration. It overflows int64"));
        }
        return Ok(ns as i64);
    }
    parse_prometheus_duration(s)
        .map(|ms| ms.saturating_mul(NANOS_PER_MS))
        .ok_or_else(|| format!("cannot parse {s:?} to a valid duration"))
}

/// The unit-suffixed form (`model.ParseDuration`), in milliseconds.
fn parse_prometheus_duration(s: &str) -> Option<i64> {
    const UNITS: [(&str, i64); 7] = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    if s == "0" {
        return Some(0);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total: i64 = 0;
    // Units must appear from largest to smallest, each at most once.
    let mut next_unit = 0;
    while !rest.is_empty() {
        let n = rest.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        let value: i64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest.bytes().take_while(|c| !c.is_ascii_digit()).count();
        let unit = &rest[..u];
        rest = &rest[u..];
        let pos = UNITS.iter().position(|(name, _)| *name == unit)?;
        if pos < next_unit {
            return None;
        }
        next_unit = pos + 1;
        // Prometheus limits durations to what fits in int64 nanoseconds.
        let add = value.checked_mul(UNITS[pos].1)?;
        total = total.checked_add(add)?;
        if total > i64::MAX / NANOS_PER_MS {
            return None;
        }
    }
    Some(total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_like_go() {
        let p = Params::parse(
            Some("query=up&time=1"),
            Some(b"query=node_load1%7Binstance%3D%22a%22%7D&match%5B%5D=x+y"),
        )
        .unwrap();
        assert_eq!(p.get("query"), Some("node_load1{instance=\"a\"}"), "body wins");
        assert_eq!(p.all("query").len(), 2);
        assert_eq!(p.all("match[]"), vec!["x y"]);
        assert_eq!(p.get("time"), Some("1"));
        assert_eq!(p.get("missing"), None);
        assert!(parse_urlencoded(b"a=%zz").is_err());
        assert!(parse_urlencoded(b"a=%4").is_err());
        assert_eq!(parse_urlencoded(b"&&a&b=").unwrap().len(), 2);
    }

    #[test]
    fn times_parse_like_prometheus() {
        let cases: &[(&str, Option<i64>)] = &[
            ("1435781451.781", Some(1_435_781_451_781)),
            ("1435781451", Some(1_435_781_451_000)),
            ("0.0005", Some(1)),
            ("-1.5", Some(-1_500)),
            ("1e3", Some(1_000_000)),
            ("2015-07-01T20:10:51.781Z", Some(1_435_781_451_781)),
            ("2015-07-01T20:10:51Z", Some(1_435_781_451_000)),
            ("2015-07-01T22:10:51.7819+02:00", Some(1_435_781_451_781)),
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2024-02-29T00:00:00Z", Some(1_709_164_800_000)),
            ("2023-02-29T00:00:00Z", None),
            ("2015-07-01 20:10:51Z", None),
            ("2015-07-01T20:10:51", None),
            ("NaN", None),
            ("inf", None),
            ("", None),
            ("yesterday", None),
            (MAX_TIME_TEXT, Some(MAX_TIME_MS)),
            (MIN_TIME_TEXT, Some(MIN_TIME_MS)),
            ("1e300", Some(MAX_TIME_MS)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_time(input).ok(), *want, "{input}");
        }
        assert_eq!(parse_time("x").unwrap_err(), "cannot parse \"x\" to a valid timestamp");
    }

    #[test]
    fn durations_parse_like_prometheus() {
        let cases: &[(&str, Option<i64>)] = &[
            ("15s", Some(15_000_000_000)),
            ("1m", Some(60_000_000_000)),
            ("1h30m", Some(5_400_000_000_000)),
            ("100ms", Some(100_000_000)),
            ("1d", Some(86_400_000_000_000)),
            ("15", Some(15_000_000_000)),
            ("0.5", Some(500_000_000)),
            ("0", Some(0)),
            ("-1", Some(-1_000_000_000)),
            ("30m1h", None),
            ("1x", None),
            ("s", None),
            ("", None),
            ("1e300", None),
            ("300y", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input).ok(), *want, "{input}");
        }
    }
}
