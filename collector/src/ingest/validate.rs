//! Pure checks of what agents send: host names, metric names and label
//! names. They return a description of the first problem so the error sent
//! back to the agent names the offending input.

/// Longest host name accepted: the DNS limit for a full name.
pub const MAX_HOST_LEN: usize = 253;

/// A host name from a Hello: non-empty, at most [`MAX_HOST_LEN`] characters,
/// printable, no whitespace. It becomes the `instance` label and a store key,
/// so anything an operator could not type or see is refused.
pub fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host name is empty".into());
    }
    let chars = host.chars().count();
    if chars > MAX_HOST_LEN {
        return Err(format!("host name has {chars} characters, more than {MAX_HOST_LEN}"));
    }
    if let Some(c) = host.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "host name {host:?} contains {c:?}; whitespace and control characters are not allowed"
        ));
    }
    Ok(())
}

/// A metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`, and not starting with `__`,
/// which Prometheus reserves for internal use.
pub fn check_metric_name(name: &str) -> Result<(), String> {
    check_name(name, true).map_err(|why| format!("invalid metric name {name:?}: {why}"))
}

/// A label name: `[a-zA-Z_][a-zA-Z0-9_]*`, and not starting with `__`.
pub fn check_label_name(name: &str) -> Result<(), String> {
    check_name(name, false).map_err(|why| format!("invalid label name {name:?}: {why}"))
}

fn check_name(name: &str, colons: bool) -> Result<(), &'static str> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err("empty");
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':');
    if first.is_ascii_digit() || !allowed(first) || !chars.all(allowed) {
        return Err(if colons {
            "must match [a-zA-Z_:][a-zA-Z0-9_:]*"
        } else {
            "must match [a-zA-Z_][a-zA-Z0-9_]*"
        });
    }
    if name.starts_with("__") {
        return Err("names starting with __ are reserved");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        for ok in ["web-1", "db01.example.com", "ü-host", &"a".repeat(253)] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a b", "tab\there", "nl\n", "bell\u{7}", &"a".repeat(254)] {
            assert!(check_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn metric_and_label_names() {
        let cases: &[(&str, bool, bool)] = &[
            // (name, valid metric name, valid label name)
            ("node_hwmon_temp_celsius", true, true),
            ("_x", true, true),
            ("job:rate5m", true, false),
            (":x", true, false),
            ("9lives", false, false),
            ("", false, false),
            ("a-b", false, false),
            ("é", false, false),
            ("__name__", false, false),
            ("__x", false, false),
        ];
        for &(name, metric, label) in cases {
            assert_eq!(check_metric_name(name).is_ok(), metric, "metric {name:?}");
            assert_eq!(check_label_name(name).is_ok(), label, "label {name:?}");
        }
        assert_eq!(
            check_label_name("a-b").unwrap_err(),
            "invalid label name \"a-b\": must match [a-zA-Z_][a-zA-Z0-9_]*"
        );
    }
}
