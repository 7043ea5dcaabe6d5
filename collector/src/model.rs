//! The collector's own data model, shared by ingest, store, query and
//! detect: label sets, label matchers and sample runs. Generated proto types
//! and HTTP/JSON types never reach past their modules; this is what they
//! convert to.

use std::fmt;

/// The label holding the metric name.
pub const METRIC_NAME: &str = "__name__";

/// A series identity: label pairs sorted by name, `__name__` included.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    /// Builds a label set, sorting by name and dropping empty values (an
    /// empty value means "label absent" in Prometheus). On duplicate names
    /// the last value wins.
    pub fn new(mut pairs: Vec<(String, String)>) -> Self {
        pairs.retain(|(_, v)| !v.is_empty());
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(String, String)> = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        Labels(out)
    }

    /// Builds a label set from borrowed pairs (see [`Labels::new`]).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Labels::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        )
    }

    /// Value of label `name`, or "" when absent (Prometheus semantics).
    pub fn get(&self, name: &str) -> &str {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .map(|i| self.0[i].1.as_str())
            .unwrap_or("")
    }

    /// The metric name.
    pub fn metric_name(&self) -> &str {
        self.get(METRIC_NAME)
    }

    /// Label pairs in name order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// Whether every matcher accepts this label set.
    pub fn matches(&self, matchers: &[Matcher]) -> bool {
        matchers.iter().all(|m| m.matches(self.get(&m.name)))
    }
}

impl fmt::Display for Labels {
    /// Prometheus notation: `name{a="1",b="2"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{{", self.metric_name())?;
        let mut first = true;
        for (k, v) in &self.0 {
            if k == METRIC_NAME {
                continue;
            }
            if !first {
                write!(f, ",")?;
            }
            first = false;
            write!(f, "{k}={v:?}")?;
        }
        write!(f, "}}")
    }
}

/// How a matcher compares a label value.
#[derive(Clone, Debug)]
pub enum MatchOp {
    /// `=`
    Equal(String),
    /// `!=`
    NotEqual(String),
    /// `=~`, the regex anchored at both ends as in Prometheus.
    Regex(regex::Regex),
    /// `!~`, anchored likewise.
    NotRegex(regex::Regex),
}

/// One label matcher. A missing label matches as the empty string.
#[derive(Clone, Debug)]
pub struct Matcher {
    /// Label name.
    pub name: String,
    /// Comparison.
    pub op: MatchOp,
}

impl Matcher {
    /// `name="value"`.
    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Matcher {
            name: name.into(),
            op: MatchOp::Equal(value.into()),
        }
    }

    /// `name!="value"`.
    pub fn not_equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Matcher {
            name: name.into(),
            op: MatchOp::NotEqual(value.into()),
        }
    }

    /// `name=~"re"`; the pattern is anchored (`^(?:re)$`).
    pub fn regex(name: impl Into<String>, pattern: &str) -> Result<Self, regex::Error> {
        Ok(Matcher {
            name: name.into(),
            op: MatchOp::Regex(anchored(pattern)?),
        })
    }

    /// `name!~"re"`; the pattern is anchored (`^(?:re)$`).
    pub fn not_regex(name: impl Into<String>, pattern: &str) -> Result<Self, regex::Error> {
        Ok(Matcher {
            name: name.into(),
            op: MatchOp::NotRegex(anchored(pattern)?),
        })
    }

    /// Whether a label value (or "" for an absent label) is accepted.
    pub fn matches(&self, value: &str) -> bool {
        match &self.op {
            MatchOp::Equal(v) => value == v,
            MatchOp::NotEqual(v) => value != v,
            MatchOp::Regex(re) => re.is_match(value),
            MatchOp::NotRegex(re) => !re.is_match(value),
        }
    }

    /// Whether this matcher accepts the empty string (and so series that lack
    /// the label entirely).
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }
}

fn anchored(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

/// A series and some of its samples, oldest first.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesSamples {
    /// The series identity.
    pub labels: Labels,
    /// `(timestamp ms since epoch, value)`, ascending by timestamp.
    pub samples: Vec<(i64, f64)>,
}

/// The Prometheus stale marker: a NaN with this exact bit pattern marks the
/// end of a series.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether `v` is the stale marker (not just any NaN).
pub fn is_stale_marker(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs)
    }

    #[test]
    fn labels_sort_and_drop_empty() {
        let l = labels(&[("z", "1"), ("__name__", "m"), ("a", "")]);
        assert_eq!(l.to_string(), "m{z=\"1\"}");
        assert_eq!(l.get("a"), "");
    }

    #[test]
    fn matchers_follow_prometheus() {
        let l = labels(&[("__name__", "m"), ("chip", "coretemp_0")]);
        assert!(l.matches(&[Matcher::regex("chip", "core.*").unwrap()]));
        assert!(
            !l.matches(&[Matcher::regex("chip", "core").unwrap()]),
            "regex is anchored"
        );
        assert!(l.matches(&[Matcher::equal("missing", "")]));
        assert!(l.matches(&[Matcher::not_regex("chip", "nct.*").unwrap()]));
        assert!(!l.matches(&[Matcher::not_equal("chip", "coretemp_0")]));
    }
}
