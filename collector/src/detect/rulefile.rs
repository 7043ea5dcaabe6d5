//! Prometheus rule files: `groups:` of alerting and recording rules, parsed
//! from YAML and validated into [`RuleGroup`]s. Parsing is a pure function
//! of the file's name and text ([`parse_rule_file`]); [`load_rule_files`]
//! is the thin reader. Every problem is reported with the file, group and
//! rule it is in, and all problems of a file are reported at once, so
//! `hostpulse-collector check-rules` is as useful as `promtool check rules`.
//!
//! The format is Prometheus's (`name`, `interval`, `limit`, `query_offset`,
//! `labels` per group; `alert`/`record`, `expr`, `for`, `keep_firing_for`,
//! `labels`, `annotations` per rule), so rule sets published for
//! node_exporter load unchanged. Unknown keys are errors, as in Prometheus.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use promql_parser::parser::value::ValueType;
use serde::Deserialize;

use super::template::Template;

/// One problem in a rule file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: {}{}{message}", group.as_ref().map(|g| format!("group {g:?}: ")).unwrap_or_default(), rule.as_ref().map(|r| format!("rule {r:?}: ")).unwrap_or_default())]
pub struct RuleFileError {
    /// The file (its path, or `<built-in>`).
    pub file: String,
    /// The group, when the problem is inside one.
    pub group: Option<String>,
    /// The rule (`alert` or `record` name, or `#N` when it has none).
    pub rule: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// A validated group of rules.
#[derive(Debug, Clone)]
pub struct RuleGroup {
    /// Group name, unique within its file.
    pub name: String,
    /// File it came from.
    pub file: String,
    /// Evaluation interval; `None` means the collector's `rule_interval`.
    pub interval: Option<Duration>,
    /// Most alerts (or series) one rule may produce; 0 means no limit.
    pub limit: usize,
    /// How far in the past the group evaluates (`query_offset`).
    pub query_offset: Duration,
    /// The rules, in file order (evaluation order).
    pub rules: Vec<RuleDef>,
}

/// One validated rule.
#[derive(Debug, Clone)]
pub struct RuleDef {
    /// PromQL text, already known to parse.
    pub expr: String,
    /// Labels added to every output (group labels merged in, rule wins);
    /// templates for alerting rules.
    pub labels: Vec<(String, String, Template)>,
    /// Alerting or recording.
    pub kind: RuleKind,
}

/// What a rule produces.
#[derive(Debug, Clone)]
pub enum RuleKind {
    /// An alerting rule.
    Alerting {
        /// `alertname`.
        name: String,
        /// `for`: how long the condition must hold before firing.
        hold: Duration,
        /// `keep_firing_for`: how long it keeps firing after it stops holding.
        keep_firing_for: Duration,
        /// Annotations (raw text and compiled template).
        annotations: Vec<(String, String, Template)>,
    },
    /// A recording rule.
    Recording {
        /// The metric name it writes.
        record: String,
    },
}

impl RuleDef {
    /// The alert or record name.
    pub fn name(&self) -> &str {
        match &self.kind {
            RuleKind::Alerting { name, .. } => name,
            RuleKind::Recording { record } => record,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileYaml {
    #[serde(default)]
    groups: Vec<GroupYaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupYaml {
    #[serde(default)]
    name: String,
    interval: Option<String>,
    #[serde(default)]
    limit: usize,
    query_offset: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    rules: Vec<RuleYaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleYaml {
    alert: Option<String>,
    record: Option<String>,
    expr: Option<serde_norway::Value>,
    #[serde(rename = "for")]
    hold: Option<String>,
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    annotations: Option<BTreeMap<String, String>>,
}

/// Parses and validates one rule file; `file` only names it in errors.
/// Returns every problem found, not just the first.
pub fn parse_rule_file(file: &str, text: &str) -> Result<Vec<RuleGroup>, Vec<RuleFileError>> {
    let err = |group: Option<&str>, rule: Option<&str>, message: String| RuleFileError {
        file: file.to_string(),
        group: group.map(str::to_string),
        rule: rule.map(str::to_string),
        message,
    };
    let parsed: FileYaml = if text.trim().is_empty() {
        FileYaml { groups: Vec::new() }
    } else {
        serde_norway::from_str(text).map_err(|e| vec![err(None, None, format!("not a rule file: {e}"))])?
    };
    let mut errors = Vec::new();
    let mut groups = Vec::new();
    let mut names = HashSet::new();
    for (gi, g) in parsed.groups.into_iter().enumerate() {
        let gname = if g.name.is_empty() {
            errors.push(err(
                None,
                None,
                format!("group #{}: group name must not be empty", gi + 1),
            ));
            format!("#{}", gi + 1)
        } else {
            g.name.clone()
        };
        if !names.insert(gname.clone()) {
            errors.push(err(Some(&gname), None, "group name repeated in the same file".into()));
        }
        let mut gerr = |m: String| errors.push(err(Some(&gname), None, m));
        let interval = match g.interval.as_deref().map(parse_duration) {
            None => None,
            Some(Ok(d)) if d.is_zero() => {
                gerr("interval must be more than 0".into());
                None
            }
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                gerr(format!("interval: {e}"));
                None
            }
        };
        let query_offset = match g.query_offset.as_deref().map(parse_duration) {
            None => Duration::ZERO,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                gerr(format!("query_offset: {e}"));
                Duration::ZERO
            }
        };
        for name in g.labels.keys() {
            if !is_label_name(name) {
                gerr(format!("label name {name:?} is invalid"));
            }
        }
        if g.rules.is_empty() {
            gerr("group has no rules".into());
        }
        let mut rules = Vec::new();
        for (ri, r) in g.rules.into_iter().enumerate() {
            let rname = r
                .alert
                .clone()
                .or_else(|| r.record.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| format!("#{}", ri + 1));
            let mut problems = Vec::new();
            if let Some(rule) = validate_rule(r, &g.labels, &mut problems) {
                rules.push(rule);
            }
            errors.extend(problems.into_iter().map(|m| err(Some(&gname), Some(&rname), m)));
        }
        groups.push(RuleGroup {
            name: gname,
            file: file.to_string(),
            interval,
            limit: g.limit,
            query_offset,
            rules,
        });
    }
    if errors.is_empty() { Ok(groups) } else { Err(errors) }
}

fn validate_rule(r: RuleYaml, group_labels: &BTreeMap<String, String>, problems: &mut Vec<String>) -> Option<RuleDef> {
    let expr = match &r.expr {
        None => {
            problems.push("expr is missing".into());
            None
        }
        Some(serde_norway::Value::String(s)) => Some(s.trim().to_string()),
        Some(serde_norway::Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            problems.push("expr must be a string".into());
            None
        }
    };
    if let Some(e) = &expr {
        if e.is_empty() {
            problems.push("expr must not be empty".into());
        } else if let Err(message) = check_expr(e) {
            problems.push(format!("expr: {message}"));
        }
    }
    let mut labels: BTreeMap<String, String> = group_labels.clone();
    labels.extend(r.labels);
    let mut compiled_labels = Vec::new();
    for (name, value) in labels {
        if !is_label_name(&name) {
            problems.push(format!("label name {name:?} is invalid"));
            continue;
        }
        match Template::parse(&value) {
            Ok(t) => compiled_labels.push((name, value, t)),
            Err(e) => problems.push(format!("label {name:?}: {e}")),
        }
    }
    let kind = match (r.alert, r.record) {
        (Some(_), Some(_)) => {
            problems.push("only one of alert and record may be set".into());
            None
        }
        (None, None) => {
            problems.push("one of alert or record must be set".into());
            None
        }
        (None, Some(record)) => {
            if !is_metric_name(&record) {
                problems.push(format!("record name {record:?} is not a valid metric name"));
            }
            for (key, set) in [
                ("for", r.hold.is_some()),
                ("keep_firing_for", r.keep_firing_for.is_some()),
                ("annotations", r.annotations.is_some()),
            ] {
                if set {
                    problems.push(format!("{key} is only valid for alerting rules"));
                }
            }
            Some(RuleKind::Recording { record })
        }
        (Some(name), None) => {
            if name.is_empty() {
                problems.push("alert name must not be empty".into());
            }
            let mut duration = |key: &str, v: Option<String>| match v.as_deref().map(parse_duration) {
                None => Duration::ZERO,
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    problems.push(format!("{key}: {e}"));
                    Duration::ZERO
                }
            };
            let hold = duration("for", r.hold);
            let keep_firing_for = duration("keep_firing_for", r.keep_firing_for);
            let mut annotations = Vec::new();
            for (key, value) in r.annotations.unwrap_or_default() {
                match Template::parse(&value) {
                    Ok(t) => annotations.push((key, value, t)),
                    Err(e) => problems.push(format!("annotation {key:?}: {e}")),
                }
            }
            Some(RuleKind::Alerting {
                name,
                hold,
                keep_firing_for,
                annotations,
            })
        }
    };
    if !problems.is_empty() {
        return None;
    }
    Some(RuleDef {
        expr: expr?,
        labels: compiled_labels,
        kind: kind?,
    })
}

/// Parses PromQL and checks that it yields something a rule can use,
/// turning a panic inside the third-party parser into an error.
pub fn check_expr(expr: &str) -> Result<(), String> {
    let parsed = std::panic::catch_unwind(|| promql_parser::parser::parse(expr))
        .unwrap_or_else(|_| Err("the expression could not be parsed".to_string()))?;
    match parsed.value_type() {
        ValueType::Vector | ValueType::Scalar => Ok(()),
        other => Err(format!("must evaluate to an instant vector or a scalar, not a {other}")),
    }
}

/// A Prometheus duration: `[0-9]+(ms|s|m|h|d|w|y)` units, largest first,
/// concatenated (`1h30m`), or a bare `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 30s, 5m or 1h30m");
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(bad());
    }
    let units: [(&str, u64); 7] = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ];
    let mut rest = t;
    let mut total: u64 = 0;
    let mut last_unit = 0usize;
    let mut first = true;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        // `ms` before `m`, so the longer unit wins.
        let (idx, len) = if rest.starts_with("ms") {
            (6, 2)
        } else {
            let c = rest.get(..1).ok_or_else(bad)?;
            let idx = units.iter().position(|(u, _)| *u == c).ok_or_else(bad)?;
            (idx, 1)
        };
        if !first && idx <= last_unit {
            return Err(bad());
        }
        first = false;
        last_unit = idx;
        total = n
            .checked_mul(units[idx].1)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        rest = &rest[len..];
    }
    Ok(Duration::from_millis(total))
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Why rule files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Files were read but are invalid.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<RuleFileError>),
}

/// Reads and validates rule files (the thin reader over
/// [`parse_rule_file`]); every invalid file's problems are collected.
pub fn load_rule_files(paths: &[std::path::PathBuf]) -> Result<Vec<RuleGroup>, LoadError> {
    let mut groups = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.clone(),
            source,
        })?;
        match parse_rule_file(&display(path), &text) {
            Ok(g) => groups.extend(g),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(groups)
    } else {
        Err(LoadError::Invalid(errors))
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Rules written by hand in the style of the published node-mixin
    /// alerts (`node_exporter/docs/node-mixin`), which must load unchanged.
    const NODE_MIXIN_STYLE: &str = r#"
groups:
  - name: node-exporter
    rules:
      - alert: NodeFilesystemSpaceFillingUp
        annotations:
          description: Filesystem on {{ $labels.device }}, mounted on {{ $labels.mountpoint }}, at {{ $labels.instance }} has only {{ printf "%.2f" $value }}% available space left and is filling up.
          summary: Filesystem is predicted to run out of space within the next 24 hours.
        expr: |
          (
            node_filesystem_avail_bytes{job="node",fstype!=""} / node_filesystem_size_bytes{job="node",fstype!=""} * 100 < 15
          and
            predict_linear(node_filesystem_avail_bytes{job="node",fstype!=""}[6h], 24*60*60) < 0
          and
            node_filesystem_readonly{job="node",fstype!=""} == 0
          )
        for: 1h
        labels:
          severity: warning
      - alert: NodeNetworkReceiveErrs
        annotations:
          description: '{{ $labels.instance }} interface {{ $labels.device }} has encountered {{ printf "%.0f" $value }} receive errors in the last two minutes.'
          summary: Network interface is reporting many receive errors.
        expr: |
          rate(node_network_receive_errs_total{job="node"}[2m]) / rate(node_network_receive_packets_total{job="node"}[2m]) > 0.01
        for: 1h
        labels:
          severity: warning
      - alert: NodeHighNumberConntrackEntriesUsed
        annotations:
          description: '{{ $value | humanizePercentage }} of conntrack entries are used.'
          summary: Number of conntrack are getting close to the limit.
        expr: |
          (node_nf_conntrack_entries{job="node"} / node_nf_conntrack_entries_limit) > 0.75
        labels:
          severity: warning
      - alert: NodeRAIDDegraded
        annotations:
          description: RAID array '{{ $labels.device }}' at {{ $labels.instance }} is in degraded state due to one or more disks failures.
          summary: RAID Array is degraded.
        expr: |
          node_md_disks_required{job="node",device=~"(/dev/)?(mmcblk.p.+|nvme.+|md.+|dasd.+|vd.+|xvd.+|sd.+|hd.+|dm-.+)"} - ignoring (state) (node_md_disks{state="active",job="node",device=~"(/dev/)?(mmcblk.p.+|nvme.+|md.+|dasd.+|vd.+|xvd.+|sd.+|hd.+|dm-.+)"}) > 0
        for: 15m
        keep_firing_for: 5m
        labels:
          severity: critical
  - name: node-exporter.rules
    interval: 30s
    rules:
      - expr: |
          count without (cpu, mode) (node_cpu_seconds_total{job="node",mode="idle"})
        record: instance:node_num_cpu:sum
      - record: instance:node_load1_per_cpu:ratio
        expr: node_load1{job="node"} / instance:node_num_cpu:sum{job="node"}
"#;

    #[test]
    fn node_mixin_style_rules_load_unchanged() {
        let groups = parse_rule_file("node.yml", NODE_MIXIN_STYLE).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].rules.len(), 4);
        assert_eq!(groups[0].interval, None);
        assert_eq!(groups[1].interval, Some(Duration::from_secs(30)));
        let RuleKind::Alerting {
            name,
            hold,
            keep_firing_for,
            annotations,
        } = &groups[0].rules[3].kind
        else {
            panic!("alerting rule expected");
        };
        assert_eq!(name, "NodeRAIDDegraded");
        assert_eq!(*hold, Duration::from_secs(900));
        assert_eq!(*keep_firing_for, Duration::from_secs(300));
        assert_eq!(annotations.len(), 2);
        assert_eq!(groups[0].rules[0].labels[0].0, "severity");
        assert_eq!(groups[1].rules[1].name(), "instance:node_load1_per_cpu:ratio");
    }

    fn errors(text: &str) -> Vec<String> {
        parse_rule_file("r.yml", text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn problems_name_file_group_and_rule() {
        let text = r#"
groups:
  - name: g
    interval: 5x
    rules:
      - alert: Bad
        expr: rate(x[5m]
      - alert: Both
        record: both
        expr: up
      - record: "not a name"
        expr: up
        for: 5m
      - alert: Tmpl
        expr: up == 0
        annotations:
          summary: "{{ if $value }}x{{ end }}"
        labels:
          "bad-label": x
      - expr: up
      - alert: Range
        expr: up[5m]
  - name: g
    rules:
      - alert: Ok
        expr: up
"#;
        let e = errors(text);
        let expected = [
            "r.yml: group \"g\": interval: \"5x\" is not a duration like 30s, 5m or 1h30m",
            "r.yml: group \"g\": rule \"Bad\": expr: ",
            "r.yml: group \"g\": rule \"Both\": only one of alert and record may be set",
            "r.yml: group \"g\": rule \"not a name\": record name \"not a name\" is not a valid metric name",
            "r.yml: group \"g\": rule \"not a name\": for is only valid for alerting rules",
            "r.yml: group \"g\": rule \"Tmpl\": label name \"bad-label\" is invalid",
            "r.yml: group \"g\": rule \"Tmpl\": annotation \"summary\": template \"{{ if $value }}x{{ end }}\": unsupported function or keyword \"if\"",
            "r.yml: group \"g\": rule \"#5\": one of alert or record must be set",
            "r.yml: group \"g\": rule \"Range\": expr: must evaluate to an instant vector or a scalar, not a matrix",
            "r.yml: group \"g\": group name repeated in the same file",
        ];
        assert_eq!(e.len(), expected.len(), "{e:#?}");
        for (got, want) in e.iter().zip(expected) {
            assert!(got.starts_with(want), "{got}\n  expected to start with\n{want}");
        }
    }

    #[test]
    fn yaml_and_structure_errors() {
        let e = errors("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n        severity: x\n");
        assert!(e[0].starts_with("r.yml: not a rule file: "), "{e:?}");
        assert!(e[0].contains("unknown field `severity`"), "{e:?}");
        let e = errors("groups: [\n");
        assert!(e[0].starts_with("r.yml: not a rule file: "), "{e:?}");
        assert!(parse_rule_file("empty.yml", "").unwrap().is_empty());
        let e = errors("groups:\n  - name: g\n    rules: []\n");
        assert_eq!(e, vec!["r.yml: group \"g\": group has no rules"]);
    }

    #[test]
    fn durations() {
        let ok = [
            ("0", 0),
            ("0s", 0),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("1d", 86_400_000),
            ("1w", 604_800_000),
            ("250ms", 250),
            ("1m30s500ms", 90_500),
        ];
        for (text, ms) in ok {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(ms)), "{text}");
        }
        for bad in ["", "5", "m", "1x", "30m1h", "5m5m", "-5m", "99999999999999999999y"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
