//! The rule loop: every interval it evaluates the loaded Prometheus rule
//! groups (the built-in hardware pack plus `--rule-file`s) through an
//! [`Evaluator`], runs the code detectors, hands what holds to the alert
//! board, and sends what changed to webhooks and Alertmanagers.
//!
//! - `detect/rulefile.rs` parses and validates rule files; `detect/template.rs`
//!   expands `{{ $labels.x }}`/`{{ $value }}` in labels and annotations.
//! - `detect/evaluator.rs` is the [`Evaluator`] trait and its adapter over
//!   the store and the PromQL engine.
//! - Detectors that PromQL cannot express are code, one file each behind
//!   the [`Detector`] trait, listed by [`default_detectors`]:
//!   `detect/host_silent.rs`, `detect/peer_outlier.rs` (a host hotter than
//!   its twins), `detect/trend.rs` (time to failure: disk full, SSD wear),
//!   `detect/smart_verdict.rs`, `detect/baseline.rs` (a series far from its
//!   own history at the same hour of the day); `detect/robust.rs` holds
//!   their statistics and `detect/knobs.rs` their `[detectors.*]` settings.
//!
//! The loop also deletes alert history older than its retention, hourly.
//!
//! Rules are loaded at start and again on [`Rules::reload`] (SIGHUP,
//! `POST /-/reload`); a reload that fails keeps the rules that run.

pub mod baseline;
mod evaluator;
pub mod host_silent;
pub mod knobs;
pub mod peer_outlier;
pub mod robust;
pub mod rulefile;
pub mod smart_verdict;
pub mod template;
pub mod trend;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::alert::{ALERT_NAME, ActiveAlert, AlertBoard, Alertmanager, Notifier, Timing, Transitions};
use crate::model::{Labels, METRIC_NAME, Matcher, SeriesSamples};
use crate::query::eval::LOOKBACK_MS;
use crate::store::{HostRecord, Store, StoreError};
use crate::telemetry::{Counter, Gauge, Telemetry};

pub use evaluator::{EvalError, Evaluator, StoreEvaluator, without_name};
pub use host_silent::HostSilent;
use rulefile::{LoadError, RuleDef, RuleGroup, RuleKind};
use template::Data;

/// The built-in hardware rule pack (`deploy/rules/hardware.yml`).
pub const BUILTIN_RULES: &str = include_str!("../../deploy/rules/hardware.yml");
/// The name the built-in pack goes by in errors and `/api/v1/rules`.
pub const BUILTIN_FILE: &str = "<built-in>/hardware.yml";
/// The `file` of the detectors' pseudo-group in `/api/v1/rules`.
pub const DETECTORS_FILE: &str = "<built-in>/detectors";

/// A code detector.
pub trait Detector: Send + Sync {
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
    /// How far back its inputs are selected (default: the 5-minute lookback).
    fn window_ms(&self) -> i64 {
        LOOKBACK_MS
    }
    /// Least time between two evaluations (0: every round). Detectors over
    /// long windows run less often; between runs their alerts stay as they are.
    fn every_ms(&self) -> i64 {
        0
    }
    /// Reads its inputs as rollup means at this resolution instead of raw
    /// samples (one sample per bucket, at the bucket's start), so detectors
    /// that learn from days of history stay cheap.
    fn rollup(&self) -> Option<crate::store::Resolution> {
        None
    }
}

/// The detectors the collector runs, in evaluation order. Host silence
/// comes first: the others are inhibited for hosts it finds silent.
/// `host_silent_after` is the floor under its graces (`None`: none).
pub fn default_detectors(host_silent_after: Option<Duration>) -> Vec<Arc<dyn Detector>> {
    vec![
        Arc::new(HostSilent {
            min_grace_ms: host_silent_after.map_or(0, |a| i64::try_from(a.as_millis()).unwrap_or(i64::MAX)),
            ..HostSilent::default()
        }),
        Arc::new(peer_outlier::PeerOutlier::default()),
        Arc::new(trend::TimeToFailure::default()),
        Arc::new(smart_verdict::SmartVerdict::default()),
        Arc::new(baseline::Baseline::default()),
    ]
}

/// Default time alert history (the incident timeline) is kept: 90 days.
pub const DEFAULT_HISTORY_RETENTION: Duration = Duration::from_secs(90 * 86_400);
/// How often history older than the retention is deleted.
const HISTORY_PRUNE_EVERY_MS: i64 = 3_600_000;

/// The selected input series of one detector evaluation.
#[derive(Debug, Default)]
pub struct Inputs {
    by_metric: HashMap<&'static str, Vec<SeriesSamples>>,
    hosts: Vec<HostRecord>,
}

impl Inputs {
    /// Inputs from literal series and host records (tests, and the loop).
    pub fn new(by_metric: HashMap<&'static str, Vec<SeriesSamples>>, hosts: Vec<HostRecord>) -> Inputs {
        Inputs { by_metric, hosts }
    }

    /// The series of `metric`, empty if none were selected.
    pub fn series(&self, metric: &str) -> &[SeriesSamples] {
        self.by_metric.get(metric).map_or(&[], Vec::as_slice)
    }

    /// Every host the store knows.
    pub fn hosts(&self) -> &[HostRecord] {
        &self.hosts
    }
}

/// Where rules come from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleSources {
    /// Rule files, read at start and on every reload.
    pub files: Vec<PathBuf>,
    /// Whether the built-in hardware pack runs.
    pub builtin: bool,
}

impl RuleSources {
    /// Reads and validates every source.
    pub fn load(&self) -> Result<Vec<RuleGroup>, LoadError> {
        let mut groups = Vec::new();
        if self.builtin {
            groups = rulefile::parse_rule_file(BUILTIN_FILE, BUILTIN_RULES).map_err(LoadError::Invalid)?;
        }
        groups.extend(rulefile::load_rule_files(&self.files)?);
        Ok(groups)
    }
}

/// The last evaluation of a rule, for `/api/v1/rules`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleHealth {
    /// Why the last evaluation failed, if it did.
    pub last_error: Option<String>,
    /// When it ran, ms since epoch (0: not yet).
    pub last_evaluation_ms: i64,
    /// How long it took.
    pub duration: Duration,
}

/// The loaded rules and their health, shared by the loop and the API.
pub struct Rules {
    sources: RuleSources,
    groups: RwLock<Arc<Vec<RuleGroup>>>,
    health: Mutex<HashMap<String, RuleHealth>>,
    telemetry: Arc<Telemetry>,
}

impl Rules {
    /// Loads `sources`; fails (the collector does not start) if any is
    /// invalid.
    pub fn load(sources: RuleSources, telemetry: Arc<Telemetry>) -> Result<Rules, LoadError> {
        let groups = sources.load()?;
        Ok(Rules::from_groups(sources, groups, telemetry))
    }

    /// Rules from already parsed groups (tests).
    pub fn from_groups(sources: RuleSources, groups: Vec<RuleGroup>, telemetry: Arc<Telemetry>) -> Rules {
        Rules {
            sources,
            groups: RwLock::new(Arc::new(groups)),
            health: Mutex::new(HashMap::new()),
            telemetry,
        }
    }

    /// Re-reads every source. On success the new rules replace the old at
    /// the next evaluation and the number of rules is returned; on failure
    /// the running rules stay and the errors are returned.
    pub fn reload(&self) -> Result<usize, LoadError> {
        match self.sources.load() {
            Ok(groups) => {
                let n = groups.iter().map(|g| g.rules.len()).sum();
                *self.groups.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(groups);
                self.telemetry.inc(Counter::RuleReloads);
                tracing::info!(rules = n, "rules reloaded");
                Ok(n)
            }
            Err(e) => {
                self.telemetry.inc(Counter::RuleReloadFailures);
                tracing::error!(error = %e, "rule reload failed; keeping the running rules");
                Err(e)
            }
        }
    }

    /// The rules now loaded.
    pub fn groups(&self) -> Arc<Vec<RuleGroup>> {
        self.groups.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The health of the rule with key `key` (see [`rule_key`]).
    pub fn health(&self, key: &str) -> RuleHealth {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    fn set_health(&self, key: String, health: RuleHealth) {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, health);
    }
}

/// The board key of rule `index` of `group`: file, group and name, so two
/// rules of the same name in different groups keep their own alerts.
pub fn rule_key(group: &RuleGroup, index: usize) -> String {
    let name = group.rules.get(index).map_or("", RuleDef::name);
    let dup = group.rules[..index.min(group.rules.len())]
        .iter()
        .filter(|r| r.name() == name)
        .count();
    if dup == 0 {
        format!("{}/{}/{name}", group.file, group.name)
    } else {
        format!("{}/{}/{name}#{dup}", group.file, group.name)
    }
}

/// The board key of a detector.
pub fn detector_key(name: &str) -> String {
    format!("{DETECTORS_FILE}/{name}")
}

/// What the rule loop needs.
#[derive(Clone)]
pub struct RuleContext {
    /// Where detector inputs come from and recording rules write.
    pub store: Store,
    /// Answers the rules' PromQL.
    pub evaluator: Arc<dyn Evaluator>,
    /// The loaded rules.
    pub rules: Arc<Rules>,
    /// The code detectors, host silence first.
    pub detectors: Vec<Arc<dyn Detector>>,
    /// Where alert state lives.
    pub board: Arc<AlertBoard>,
    /// Webhooks.
    pub notifier: Arc<Notifier>,
    /// Alertmanagers.
    pub alertmanager: Arc<Alertmanager>,
    /// Self-telemetry.
    pub telemetry: Arc<Telemetry>,
    /// Time between evaluations of groups without their own interval.
    pub interval: Duration,
    /// How long alert history is kept.
    pub history_retention: Duration,
}

/// Why alerting could not be set up at start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The rules do not load.
    #[error("rules: {0}")]
    Rules(#[from] LoadError),
    /// The alert state database does not open.
    #[error("{0}")]
    State(#[from] crate::alert::AlertStoreError),
    /// A detector knob has a bad value.
    #[error("detector settings: {0}")]
    Detectors(#[from] knobs::KnobError),
    /// The webhook secret file cannot be read.
    #[error("webhook secret file {}: {source}", path.display())]
    Secret {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl RuleContext {
    /// Everything alerting needs, from settings: rules (built-in pack and
    /// files), the board persisted under `<data_dir>/alerts`, webhooks
    /// (signed when a secret is set), Alertmanagers, detectors.
    /// `external_url` is the collector's own URL for links in alerts.
    pub fn from_settings(
        settings: &crate::config::Settings,
        store: Store,
        telemetry: Arc<Telemetry>,
        external_url: &str,
    ) -> Result<RuleContext, SetupError> {
        let sources = RuleSources {
            files: settings.rule_files.clone(),
            builtin: settings.builtin_rules,
        };
        let rules = Arc::new(Rules::load(sources, telemetry.clone())?);
        let board = Arc::new(AlertBoard::open(&settings.data_dir.join("alerts"))?);
        let secret = match &settings.webhook_secret_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SetupError::Secret {
                    path: path.clone(),
                    source,
                })?;
                Some(text.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
            }
        };
        let notifier = Notifier::new(settings.webhook_urls.clone(), telemetry.clone())
            .with_external_url(external_url)
            .with_secret(secret);
        Ok(RuleContext {
            evaluator: Arc::new(StoreEvaluator::new(store.clone())),
            store,
            rules,
            detectors: settings
                .detectors
                .build(settings.host_silent_after, hostpulse_agent::sampler::now_ms())?,
            board,
            notifier: Arc::new(notifier),
            alertmanager: Arc::new(Alertmanager::new(
                settings.alertmanager_urls.clone(),
                telemetry.clone(),
                external_url,
            )),
            telemetry,
            interval: settings.rule_interval,
            history_retention: settings.alert_history_retention,
        })
    }

    /// The read-only alerting routes (`/api/v1/alerts`, `/api/v1/rules`,
    /// `/api/v1/alerts/history`).
    pub fn api_router(&self) -> axum::Router {
        crate::alert::api::router(crate::alert::api::AlertApi {
            board: self.board.clone(),
            rules: self.rules.clone(),
            detectors: self.detectors.iter().map(|d| d.name()).collect(),
        })
    }

    /// `POST /-/reload`; the caller puts the admin guard on it.
    pub fn reload_router(&self) -> axum::Router {
        crate::alert::api::reload_router(self.rules.clone())
    }
}

/// Shortest interval the loop accepts, so a zero in config cannot spin.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Evaluates rules and detectors until `shutdown` turns true (or its
/// sender is dropped, which can only mean the collector is going away).
/// Groups with their own `interval` run when it has passed, checked at
/// every tick of the default interval.
pub async fn run(ctx: RuleContext, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let tick = ctx
        .rules
        .groups()
        .iter()
        .filter_map(|g| g.interval)
        .fold(ctx.interval, Duration::min)
        .max(MIN_INTERVAL);
    let mut ticker = tokio::time::interval(tick);
    // A slow evaluation (webhook retries) delays the next one instead of
    // causing a burst of catch-up evaluations.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_run: HashMap<String, i64> = HashMap::new();
    let mut last_prune = i64::MIN;
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        tokio::select! {
            _ = ticker.tick() => {
                let now = now_ms();
                evaluate(&ctx, now, Some(&mut last_run)).await;
                if now.saturating_sub(last_prune) >= HISTORY_PRUNE_EVERY_MS {
                    last_prune = now;
                    prune_history(&ctx, now).await;
                }
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

/// Evaluates every detector and rule group once at `now_ms`, updates the
/// board, persists it, sends notifications for what changed (waiting for
/// delivery) and returns the changes. A rule that fails to evaluate is
/// counted and leaves its alerts as they were: a storage hiccup must not
/// resolve them.
pub async fn evaluate_once(ctx: &RuleContext, now_ms: i64) -> Transitions {
    evaluate(ctx, now_ms, None).await
}

async fn evaluate(ctx: &RuleContext, now_ms: i64, mut schedule: Option<&mut HashMap<String, i64>>) -> Transitions {
    let mut all = Transitions::default();
    let mut keys: HashSet<String> = HashSet::new();
    let mut silent: HashSet<String> = HashSet::new();
    let hosts = hosts(&ctx.store).await;
    for (i, d) in ctx.detectors.iter().enumerate() {
        let key = detector_key(d.name());
        keys.insert(key.clone());
        if let Some(last_run) = schedule.as_deref_mut() {
            let last = last_run.get(&key).copied().unwrap_or(i64::MIN);
            if now_ms.saturating_sub(last) < d.every_ms() {
                continue;
            }
            last_run.insert(key.clone(), now_ms);
        }
        ctx.telemetry.inc(Counter::RuleEvaluations);
        let started = Instant::now();
        let inputs = match select_inputs(&ctx.store, d.as_ref(), hosts.clone(), now_ms).await {
            Ok(inputs) => inputs,
            Err(e) => {
                ctx.telemetry.inc(Counter::RuleEvaluationFailures);
                tracing::warn!(detector = d.name(), error = %e, "detector evaluation failed");
                ctx.rules.set_health(key, failed(e.to_string(), now_ms, started));
                continue;
            }
        };
        let active = d.evaluate(&inputs, now_ms);
        let timing = Timing {
            hold_ms: d.hold_ms(),
            keep_firing_ms: 0,
        };
        let t = ctx.board.apply(&key, timing, active, now_ms, &silent);
        merge(&mut all, t);
        ctx.rules.set_health(key.clone(), ok(now_ms, started));
        // The first detector is host silence: what it finds inhibits the rest.
        if i == 0 {
            silent = ctx.board.firing_instances(&key);
        }
    }

    let groups = ctx.rules.groups();
    let default_ms = millis(ctx.interval);
    for (gi, group) in groups.iter().enumerate() {
        for ri in 0..group.rules.len() {
            keys.insert(rule_key(group, ri));
        }
        let group_key = format!("{}/{}", group.file, group.name);
        if let Some(last_run) = schedule.as_deref_mut() {
            let every = group.interval.map_or(default_ms, millis);
            let last = last_run.get(&group_key).copied().unwrap_or(i64::MIN);
            // Half a tick of slack, so timer jitter does not skip a round.
            if now_ms.saturating_sub(last) < every - default_ms.min(every) / 2 {
                continue;
            }
            last_run.insert(group_key, now_ms);
        }
        let at = now_ms - millis(group.query_offset);
        let evaluator = ctx.evaluator.clone();
        let groups_for_task = groups.clone();
        let results = tokio::task::spawn_blocking(move || {
            groups_for_task[gi]
                .rules
                .iter()
                .map(|r| {
                    let started = Instant::now();
                    (evaluator.instant(&r.expr, at), started.elapsed())
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(results) = results else {
            ctx.telemetry.inc(Counter::RuleEvaluationFailures);
            tracing::error!(group = %group.name, "rule group evaluation task failed");
            continue;
        };
        let mut recorded = Vec::new();
        for (ri, (rule, (result, took))) in group.rules.iter().zip(results).enumerate() {
            let key = rule_key(group, ri);
            ctx.telemetry.inc(Counter::RuleEvaluations);
            let outcome = result
                .map_err(|e| e.to_string())
                .and_then(|samples| apply_limit(samples, group.limit))
                .and_then(|samples| match &rule.kind {
                    RuleKind::Alerting {
                        name,
                        hold,
                        keep_firing_for,
                        annotations,
                    } => {
                        let active = alerts_for(name, &rule.labels, annotations, samples)?;
                        let timing = Timing {
                            hold_ms: millis(*hold),
                            keep_firing_ms: millis(*keep_firing_for),
                        };
                        merge(&mut all, ctx.board.apply(&key, timing, active, now_ms, &silent));
                        Ok(())
                    }
                    RuleKind::Recording { record } => {
                        recorded.extend(recorded_series(record, &rule.labels, samples, at));
                        Ok(())
                    }
                });
            let health = RuleHealth {
                last_error: outcome.err(),
                last_evaluation_ms: now_ms,
                duration: took,
            };
            if let Some(e) = &health.last_error {
                ctx.telemetry.inc(Counter::RuleEvaluationFailures);
                tracing::warn!(rule = rule.name(), group = %group.name, error = %e, "rule evaluation failed");
            }
            ctx.rules.set_health(key, health);
        }
        if !recorded.is_empty() {
            let n: usize = recorded.iter().map(|s| s.samples.len()).sum();
            match ctx.store.append_unsequenced(recorded).await {
                Ok(_) => ctx.telemetry.add(Counter::RecordedSamples, n as u64),
                Err(e) => tracing::warn!(group = %group.name, error = %e, "cannot store recording rule results"),
            }
        }
    }
    // Alerts of rules a reload removed resolve instead of firing forever.
    merge(&mut all, ctx.board.retire_rules(&keys, now_ms));

    let changed = !all.fired.is_empty() || !all.resolved.is_empty();
    for a in &all.fired {
        tracing::info!(alert = %a.labels, value = a.value, "alert firing");
    }
    for a in &all.resolved {
        tracing::info!(alert = %a.labels, "alert resolved");
    }
    // Durable before anyone is told, so a crash right after a page cannot
    // make the restarted collector page again.
    if let Err(e) = ctx.board.persist().await {
        tracing::error!(error = %e, "cannot flush alert state");
    }
    ctx.notifier.notify(&all.fired).await;
    ctx.notifier.notify(&all.resolved).await;
    ctx.alertmanager
        .sync(&ctx.board.alerts(), changed, now_ms, default_ms)
        .await;
    let firing = ctx.board.firing().len();
    ctx.telemetry
        .set(Gauge::AlertsFiring, i64::try_from(firing).unwrap_or(i64::MAX));
    all
}

/// Deletes alert history older than the retention, on the blocking pool
/// (sled deletes are synchronous). Failures are logged and retried at the
/// next pruning round; they never stop evaluation.
pub async fn prune_history(ctx: &RuleContext, now_ms: i64) {
    let before = now_ms.saturating_sub(millis(ctx.history_retention));
    let board = ctx.board.clone();
    match tokio::task::spawn_blocking(move || board.prune_history(before)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(events = n, "pruned alert history past its retention"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune alert history"),
        Err(e) => tracing::warn!(error = %e, "alert history pruning task failed"),
    }
}

fn merge(all: &mut Transitions, t: Transitions) {
    all.fired.extend(t.fired);
    all.resolved.extend(t.resolved);
}

fn ok(now_ms: i64, started: Instant) -> RuleHealth {
    RuleHealth {
        last_error: None,
        last_evaluation_ms: now_ms,
        duration: started.elapsed(),
    }
}

fn failed(error: String, now_ms: i64, started: Instant) -> RuleHealth {
    RuleHealth {
        last_error: Some(error),
        last_evaluation_ms: now_ms,
        duration: started.elapsed(),
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Prometheus's group `limit`: more outputs than that fail the rule.
fn apply_limit(samples: Vec<(Labels, f64)>, limit: usize) -> Result<Vec<(Labels, f64)>, String> {
    if limit > 0 && samples.len() > limit {
        return Err(format!("exceeded limit of {limit} with {} results", samples.len()));
    }
    Ok(samples)
}

/// The alerts an alerting rule's samples raise: the sample's labels
/// without `__name__`, then the rule's labels (templates expanded), then
/// `alertname`; annotations expanded with the same `$labels`/`$value`.
pub fn alerts_for(
    name: &str,
    labels: &[(String, String, template::Template)],
    annotations: &[(String, String, template::Template)],
    samples: Vec<(Labels, f64)>,
) -> Result<Vec<ActiveAlert>, String> {
    let mut out = Vec::with_capacity(samples.len());
    let mut seen = HashSet::new();
    for (sample_labels, value) in samples {
        let base = without_name(&sample_labels);
        let data = Data { labels: &base, value };
        let mut pairs = base.pairs().to_vec();
        pairs.extend(labels.iter().map(|(k, _, t)| (k.clone(), t.expand(data))));
        pairs.push((ALERT_NAME.to_string(), name.to_string()));
        let alert_labels = Labels::new(pairs);
        if !seen.insert(alert_labels.clone()) {
            return Err("vector contains metrics with the same labelset after applying alert labels".into());
        }
        out.push(ActiveAlert {
            labels: alert_labels,
            annotations: annotations
                .iter()
                .map(|(k, _, t)| (k.clone(), t.expand(data)))
                .collect(),
            value,
        });
    }
    Ok(out)
}

/// The series a recording rule writes: each sample renamed to `record`,
/// with the rule's labels set, at the evaluation time.
fn recorded_series(
    record: &str,
    labels: &[(String, String, template::Template)],
    samples: Vec<(Labels, f64)>,
    at_ms: i64,
) -> Vec<SeriesSamples> {
    samples
        .into_iter()
        .map(|(l, v)| {
            let mut pairs = l.pairs().to_vec();
            pairs.extend(labels.iter().map(|(k, raw, _)| (k.clone(), raw.clone())));
            pairs.push((METRIC_NAME.to_string(), record.to_string()));
            SeriesSamples {
                labels: Labels::new(pairs),
                samples: vec![(at_ms, v)],
            }
        })
        .collect()
}

async fn hosts(store: &Store) -> Vec<HostRecord> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || store.hosts()).await {
        Ok(Ok(hosts)) => hosts,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot list hosts");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "host list task failed");
            Vec::new()
        }
    }
}

/// Why a detector's inputs could not be read.
#[derive(Debug, thiserror::Error)]
enum SelectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store read task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Reads each input metric over the window ending at `now_ms`, on
/// the blocking pool because the store reads sled synchronously.
async fn select_inputs(
    store: &Store,
    detector: &dyn Detector,
    hosts: Vec<HostRecord>,
    now_ms: i64,
) -> Result<Inputs, SelectError> {
    let metrics = detector.inputs();
    if metrics.is_empty() {
        return Ok(Inputs::new(HashMap::new(), hosts));
    }
    let (window_ms, rollup) = (detector.window_ms(), detector.rollup());
    let store = store.clone();
    let by_metric = tokio::task::spawn_blocking(move || {
        let from = now_ms.saturating_sub(window_ms).saturating_add(1);
        metrics
            .iter()
            .map(|m| {
                let matchers = [Matcher::equal(METRIC_NAME, *m)];
                let series = match rollup {
                    None => store.select(&matchers, from, now_ms)?,
                    Some(res) => store
                        .select_rollup(&matchers, from, now_ms, res)?
                        .into_iter()
                        .map(rollup_means)
                        .collect(),
                };
                Ok((*m, series))
            })
            .collect::<Result<HashMap<_, _>, StoreError>>()
    })
    .await??;
    Ok(Inputs::new(by_metric, hosts))
}

/// A rollup series as samples: each bucket's mean at its start. Empty
/// buckets and non-finite means (a NaN sample poisons `sum`) are left out.
pub fn rollup_means(r: crate::store::RollupSeries) -> SeriesSamples {
    SeriesSamples {
        labels: r.labels,
        samples: r
            .buckets
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| (b.start_ms, b.sum / b.count as f64))
            .filter(|(_, v)| v.is_finite())
            .collect(),
    }
}

/// Reloads `rules` on every SIGHUP until `shutdown` turns true.
pub async fn reload_on_sighup(rules: Arc<Rules>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /-/reload");
                return;
            }
        };
        loop {
            tokio::select! {
                got = hup.recv() => {
                    if got.is_none() {
                        break;
                    }
                    let rules = rules.clone();
                    // Reading files is blocking I/O.
                    let _ = tokio::task::spawn_blocking(move || rules.reload()).await;
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        drop(rules);
        while shutdown.changed().await.is_ok() && !*shutdown.borrow() {}
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
