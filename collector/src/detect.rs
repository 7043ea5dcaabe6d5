//! The rule loop: every `interval`, each built-in rule reads its input
//! series from the store, decides which alerts hold, and the alert board
//! turns that into transitions that the notifier sends.
//!
//! Rules are one file each under `detect/`, behind the small [`Rule`] trait
//! and listed in [`RULES`]; their evaluation is a pure function over
//! selected series so tests feed literal data. Loading Prometheus rule files
//! and the code detectors of the design (peer outliers, trends, ...) will
//! join this list.

mod temperature;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::alert::{ActiveAlert, AlertBoard, Notifier, Transitions};
use crate::model::{METRIC_NAME, Matcher, SeriesSamples};
use crate::query::eval::LOOKBACK_MS;
use crate::store::{Store, StoreError};
use crate::telemetry::{Counter, Gauge, Telemetry};

pub use temperature::TemperatureCritical;

/// A built-in alert rule.
pub trait Rule: Send + Sync {
    /// The `alertname` of the alerts it raises.
    fn name(&self) -> &'static str;
    /// Metric names it reads; each is selected over the lookback window.
    fn inputs(&self) -> &'static [&'static str];
    /// The alerts holding at `now_ms`.
    fn evaluate(&self, inputs: &Inputs, now_ms: i64) -> Vec<ActiveAlert>;
    /// How long a condition must hold before it fires (`for`).
    fn hold_ms(&self) -> i64 {
        0
    }
}

/// Every built-in rule, in evaluation order.
pub const RULES: &[&dyn Rule] = &[&TemperatureCritical];

/// The selected input series of one rule evaluation, by metric name.
#[derive(Debug, Default)]
pub struct Inputs {
    by_metric: HashMap<&'static str, Vec<SeriesSamples>>,
}

impl Inputs {
    /// Inputs from literal series (tests, and the loop below).
    pub fn new(by_metric: HashMap<&'static str, Vec<SeriesSamples>>) -> Inputs {
        Inputs { by_metric }
    }

    /// The series of `metric`, empty if none were selected.
    pub fn series(&self, metric: &str) -> &[SeriesSamples] {
        self.by_metric.get(metric).map_or(&[], Vec::as_slice)
    }
}

/// What the rule loop needs.
#[derive(Clone)]
pub struct RuleContext {
    /// Where input series come from.
    pub store: Store,
    /// Where alert state lives.
    pub board: Arc<AlertBoard>,
    /// Who tells on-call.
    pub notifier: Arc<Notifier>,
    /// Self-telemetry.
    pub telemetry: Arc<Telemetry>,
    /// Time between evaluations.
    pub interval: Duration,
}

/// Shortest interval the loop accepts, so a zero in config cannot spin.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Evaluates every rule each `interval` until `shutdown` turns true (or its
/// sender is dropped, which can only mean the collector is going away).
pub async fn run(ctx: RuleContext, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(ctx.interval.max(MIN_INTERVAL));
    // A slow evaluation (webhook retries) delays the next one instead of
    // causing a burst of catch-up evaluations.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        tokio::select! {
            _ = ticker.tick() => {
                evaluate_once(&ctx, now_ms()).await;
            }
            changed = shutdown.changed() => {
                if changed.is_err() {
                    tracing::info!("shutdown sender dropped; stopping rule evaluation");
                    break;
                }
            }
        }
    }
    tracing::debug!("rule loop stopped");
}

/// Evaluates every rule once at `now_ms`, updates the board, sends
/// notifications for what changed (waiting for delivery) and returns the
/// changes. A rule whose inputs cannot be read is counted as a failure and
/// leaves its alerts as they were: a storage hiccup must not resolve them.
pub async fn evaluate_once(ctx: &RuleContext, now_ms: i64) -> Transitions {
    let mut all = Transitions::default();
    for rule in RULES {
        ctx.telemetry.inc(Counter::RuleEvaluations);
        let inputs = match select_inputs(&ctx.store, rule.inputs(), now_ms).await {
            Ok(inputs) => inputs,
            Err(e) => {
                ctx.telemetry.inc(Counter::RuleEvaluationFailures);
                tracing::warn!(rule = rule.name(), error = %e, "rule evaluation failed");
                continue;
            }
        };
        let active = rule.evaluate(&inputs, now_ms);
        let t = ctx.board.update(rule.name(), rule.hold_ms(), active, now_ms);
        for a in &t.fired {
            tracing::info!(alert = %a.labels, value = a.value, "alert firing");
        }
        for a in &t.resolved {
            tracing::info!(alert = %a.labels, "alert resolved");
        }
        ctx.notifier.notify(&t.fired).await;
        ctx.notifier.notify(&t.resolved).await;
        all.fired.extend(t.fired);
        all.resolved.extend(t.resolved);
    }
    let firing = ctx.board.firing().len();
    ctx.telemetry
        .set(Gauge::AlertsFiring, i64::try_from(firing).unwrap_or(i64::MAX));
    all
}

/// Why a rule's inputs could not be read.
#[derive(Debug, thiserror::Error)]
enum SelectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store read task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Reads each input metric over the lookback window ending at `now_ms`, on
/// the blocking pool because the store reads sled synchronously.
async fn select_inputs(store: &Store, metrics: &'static [&'static str], now_ms: i64) -> Result<Inputs, SelectError> {
    let store = store.clone();
    let by_metric = tokio::task::spawn_blocking(move || {
        let from = now_ms.saturating_sub(LOOKBACK_MS).saturating_add(1);
        metrics
            .iter()
            .map(|m| Ok((*m, store.select(&[Matcher::equal(METRIC_NAME, *m)], from, now_ms)?)))
            .collect::<Result<HashMap<_, _>, StoreError>>()
    })
    .await??;
    Ok(Inputs::new(by_metric))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::model::Labels;
    use crate::store::StoreOptions;

    const T0: i64 = 1_700_000_000_000;

    fn reading(metric: &str, samples: &[(i64, f64)]) -> SeriesSamples {
        SeriesSamples {
            labels: Labels::new(vec![
                ("__name__".into(), metric.into()),
                ("instance".into(), "db1".into()),
                ("job".into(), "hostpulse".into()),
                ("chip".into(), "nvme_nvme0".into()),
                ("sensor".into(), "temp1".into()),
            ]),
            samples: samples.to_vec(),
        }
    }

    /// A webhook receiver recording each message's status.
    async fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let log = log.clone();
                async move {
                    log.lock()
                        .unwrap()
                        .push(body["status"].as_str().unwrap_or("?").to_string());
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/hook"), seen)
    }

    #[tokio::test]
    async fn store_to_webhook_fire_and_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let hot = vec![
            reading("node_hwmon_temp_celsius", &[(T0, 85.0)]),
            reading("node_hwmon_temp_crit_celsius", &[(T0, 84.85)]),
        ];
        store.append("db1", 1, hot).await.unwrap();
        let (url, seen) = receiver().await;
        let telemetry = Arc::new(Telemetry::default());
        let ctx = RuleContext {
            store: store.clone(),
            board: Arc::new(AlertBoard::new()),
            notifier: Arc::new(Notifier::new(vec![url], telemetry.clone())),
            telemetry: telemetry.clone(),
            interval: Duration::from_secs(15),
        };

        let t = evaluate_once(&ctx, T0 + 1_000).await;
        assert_eq!(t.fired.len(), 1);
        assert_eq!(telemetry.gauge(Gauge::AlertsFiring), 1);
        let t = evaluate_once(&ctx, T0 + 16_000).await;
        assert_eq!(t, Transitions::default());

        store
            .append(
                "db1",
                2,
                vec![reading("node_hwmon_temp_celsius", &[(T0 + 20_000, 70.0)])],
            )
            .await
            .unwrap();
        let t = evaluate_once(&ctx, T0 + 31_000).await;
        assert_eq!(t.resolved.len(), 1);
        assert_eq!(telemetry.gauge(Gauge::AlertsFiring), 0);
        assert_eq!(*seen.lock().unwrap(), vec!["firing", "resolved"]);
        assert_eq!(telemetry.get(Counter::NotificationsSent), 2);
        assert_eq!(telemetry.get(Counter::RuleEvaluations), 3);
        assert_eq!(telemetry.get(Counter::RuleEvaluationFailures), 0);
    }

    #[tokio::test]
    async fn run_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let telemetry = Arc::new(Telemetry::default());
        let ctx = RuleContext {
            store,
            board: Arc::new(AlertBoard::new()),
            notifier: Arc::new(Notifier::new(vec![], telemetry.clone())),
            telemetry: telemetry.clone(),
            interval: Duration::ZERO,
        };
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run(ctx, rx));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while telemetry.get(Counter::RuleEvaluations) < 2 {
            assert!(tokio::time::Instant::now() < deadline, "loop did not tick");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
