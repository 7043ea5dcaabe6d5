//! How rules get PromQL answers: the small [`Evaluator`] trait (an instant
//! query at a time), implemented over the store by [`StoreEvaluator`] with
//! the collector's own PromQL engine (`query::eval`). The rule loop only
//! knows the trait, so its lifecycle tests use a fake that answers from a
//! table.

use std::time::{Duration, Instant};

use crate::model::{Labels, METRIC_NAME};
use crate::query::eval::{self, Limits, Value};
use crate::store::Store;

/// Why an expression could not be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

/// Answers instant queries for rules.
pub trait Evaluator: Send + Sync {
    /// The samples `expr` yields at `at_ms` (a scalar is one sample with no
    /// labels).
    fn instant(&self, expr: &str, at_ms: i64) -> Result<Vec<(Labels, f64)>, EvalError>;
}

/// The longest one rule's query may run; a rule that needs more is broken,
/// and must not hold up the others.
pub const RULE_QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Rules evaluated over the store with the PromQL engine.
#[derive(Clone)]
pub struct StoreEvaluator {
    store: Store,
}

impl StoreEvaluator {
    /// Evaluates over `store`.
    pub fn new(store: Store) -> StoreEvaluator {
        StoreEvaluator { store }
    }
}

impl Evaluator for StoreEvaluator {
    fn instant(&self, expr: &str, at_ms: i64) -> Result<Vec<(Labels, f64)>, EvalError> {
        let parsed = eval::parse(expr).map_err(EvalError)?;
        let value = eval::eval_instant(
            &parsed,
            &self.store,
            at_ms,
            Limits::default(),
            Some(Instant::now() + RULE_QUERY_TIMEOUT),
        )
        .map_err(|e| EvalError(e.to_string()))?;
        match value {
            Value::Vector(samples) => Ok(samples.into_iter().map(|s| (s.labels, s.v)).collect()),
            Value::Scalar { v, .. } => Ok(vec![(Labels::default(), v)]),
            Value::Matrix(_) | Value::String { .. } => Err(EvalError(
                "rule expression must yield an instant vector or a scalar".into(),
            )),
        }
    }
}

/// A label set without its metric name (what `$labels` and alert labels
/// start from).
pub fn without_name(labels: &Labels) -> Labels {
    Labels::new(
        labels
            .pairs()
            .iter()
            .filter(|(k, _)| k != METRIC_NAME)
            .cloned()
            .collect(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::SeriesSamples;
    use crate::store::StoreOptions;

    #[tokio::test]
    async fn evaluates_promql_over_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let t0 = 1_700_000_000_000;
        let series = |name: &str, sensor: &str, v: f64| SeriesSamples {
            labels: Labels::from_pairs(&[("__name__", name), ("instance", "db1"), ("sensor", sensor)]),
            samples: vec![(t0, v)],
        };
        store
            .append(
                "db1",
                1,
                vec![
                    series("node_hwmon_temp_celsius", "temp1", 101.0),
                    series("node_hwmon_temp_celsius", "temp2", 50.0),
                    series("node_hwmon_temp_crit_celsius", "temp1", 100.0),
                    series("node_hwmon_temp_crit_celsius", "temp2", 100.0),
                ],
            )
            .await
            .unwrap();
        let ev = StoreEvaluator::new(store);
        let hot = ev
            .instant(
                "node_hwmon_temp_celsius >= on(instance, sensor) node_hwmon_temp_crit_celsius",
                t0 + 1000,
            )
            .unwrap();
        assert_eq!(hot.len(), 1);
        assert_eq!(hot[0].0.get("sensor"), "temp1");
        assert_eq!(hot[0].1, 101.0);
        assert_eq!(ev.instant("1 + 1", t0).unwrap(), vec![(Labels::default(), 2.0)]);
        assert!(ev.instant("rate(x[5m]", t0).is_err());
        assert!(ev.instant("node_hwmon_temp_celsius[5m]", t0).is_err());
    }
}
