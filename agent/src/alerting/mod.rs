//! Alerting in the agent: Prometheus rule groups evaluated over the agent's own
//! metrics, grouped notifications to Slack, Teams and generic webhooks, and commands back from
//! chat.
//!
//! The pure core: [`prom`] (the rule groups over a bounded history of the metrics snapshot,
//! their alerts in the pipeline's form), [`alert`] (that form, matchers), [`notify`] (routing,
//! grouping, inhibition, silences), [`render`] (message content), [`chatops`] (signatures,
//! commands). The edge: [`Alerting`] (this file: the evaluation loop over the registry,
//! persistence in [`store`], DORA incidents through the hub, deploy notices and digests),
//! [`deliver`] (queues and transports) and [`api`] (HTTP handlers).

pub mod alert;
pub mod api;
pub mod chatops;
pub mod config;
pub mod deliver;
pub mod notify;

#[cfg(test)]
mod peers_tests;
pub mod prom;
pub mod render;
pub mod socket;
#[cfg(test)]
mod socket_tests;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sidelight_collector::model;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::clock::now_ms;
use crate::dora::{DeployStatus, Incident};
use crate::hub::Hub;
use crate::store::{IncidentChange, StoreError, StoreHandle};
use alert::{Alert, DeployInfo, Millis, State, Transition};
use config::AlertingConfig;
use deliver::{DeliveryMetrics, Item, Queue, Report, Sender, Transport};
use notify::{Dispatcher, Group, Silence};
use render::{Message, Tone};
use store::AlertStore;

/// How often deployments are re-read from the DORA hub when none was recorded meanwhile (a
/// recorded deployment is picked up at the next evaluation).
const DEPLOYS_EVERY: Millis = 30_000;

/// How late the store may be with the value and summary of an alert that changed in nothing
/// else (see [`must_save`]).
const SAVE_VALUES_EVERY: Millis = 60_000;

/// Whether the stored copy of an alert (`saved`, written at `saved_at`) must be rewritten at
/// `now`. A restart reads the state, the labels and the times, so any change of those is written
/// at the cycle it happens; the value and summary (what messages and the API show) are written
/// at most [`SAVE_VALUES_EVERY`] late.
fn must_save(saved: Option<&(Alert, Millis)>, a: &Alert, now: Millis) -> bool {
    let Some((s, saved_at)) = saved else {
        return true;
    };
    let same_state = s.fingerprint == a.fingerprint
        && s.labels == a.labels
        && s.external == a.external
        && s.state == a.state
        && s.active_at == a.active_at
        && s.fired_at == a.fired_at
        && s.resolved_at == a.resolved_at
        && s.runbook == a.runbook
        && s.dashboard == a.dashboard;
    let same_values = s.value.to_bits() == a.value.to_bits() && s.summary == a.summary;
    !same_state || (!same_values && now - saved_at >= SAVE_VALUES_EVERY)
}

/// The digest schedule, pure: given when the schedule last ticked (`None`: never), whether a
/// digest is due at `now` and the new mark to store. The first evaluation starts the schedule
/// (nothing is sent); a digest is due every `every` after it, on the same cadence however late
/// the evaluation that notices it (marks advance by whole periods), and one digest covers any
/// number of periods missed while the agent was down.
pub fn digest_step(last: Option<Millis>, every: Millis, now: Millis) -> (bool, Option<Millis>) {
    let every = every.max(1);
    match last {
        None => (false, Some(now)),
        Some(t) if now < t => (false, Some(now)), // the clock went back: restart the schedule
        Some(t) if now - t >= every => (true, Some(t + (now - t) / every * every)),
        Some(_) => (false, None),
    }
}

struct Core {
    dispatcher: Dispatcher,
    silences: Vec<Silence>,
    /// What the store holds of each alert, and when it was written (see [`must_save`]).
    saved: HashMap<String, (Alert, Millis)>,
    /// The Prometheus rule groups (`alerts.rule_files`, `alerts.groups`), their history and
    /// their alerts.
    prom: prom::PromRules,
    /// When each log exception type was first counted (kept across restarts).
    first_seen: prom::FirstSeen,
    deploys_at: Millis,
    deploys_gen: u64,
    last_deploy_notice: Option<Millis>,
}

/// Self-metrics of the evaluator.
#[derive(Debug, Clone, Default)]
struct EvalMetrics {
    evaluations: Counter,
    failures: Counter,
    firing: Gauge,
    rule_series: Gauge,
    rule_rejected: Counter,
    rule_failures: Counter,
}

/// The running alerting edge.
pub struct Alerting {
    config: RwLock<Arc<AlertingConfig>>,
    core: Mutex<Core>,
    store: AlertStore,
    hub: Option<Arc<Hub>>,
    severities: Vec<String>,
    registry: OnceLock<Arc<Registry>>,
    queues: HashMap<String, Arc<Queue>>,
    senders: Mutex<Vec<Sender>>,
    deploys: Arc<RwLock<HashMap<String, DeployInfo>>>,
    delivery: DeliveryMetrics,
    metrics: EvalMetrics,
    /// The recording rules' series, served on `/metrics`.
    recorded: prom::RecordedCollector,
    /// Exception first-seen times and last deployments, served on `/metrics`.
    feedback: prom::FeedbackCollector,
}

impl std::fmt::Debug for Alerting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerting").finish_non_exhaustive()
    }
}

/// Why alerting could not start.
#[derive(Debug, thiserror::Error)]
pub enum AlertingError {
    /// The state tables.
    #[error("alerting store: {0}")]
    Store(#[from] StoreError),
    /// A notifier could not be built.
    #[error("notifier {name}: {reason}")]
    Notifier {
        /// Its name.
        name: String,
        /// Why.
        reason: String,
    },
}

impl Alerting {
    /// Loads the state from the store and builds the notifiers (nothing spawned yet).
    pub async fn open(
        cfg: AlertingConfig,
        db: StoreHandle,
        hub: Option<Arc<Hub>>,
    ) -> Result<Arc<Self>, AlertingError> {
        let store = AlertStore::new(db);
        let now = now_ms();
        let persisted = store.load(now).await?;
        let delivery = DeliveryMetrics::default();
        let mut queues = HashMap::new();
        let mut senders = Vec::new();
        if !cfg.notifiers.is_empty() {
            let http = deliver::http_client().map_err(|e| AlertingError::Notifier {
                name: "(all)".into(),
                reason: e.to_string(),
            })?;
            for (name, n) in &cfg.notifiers {
                let channel = n.kind.channel_label();
                let queue = Arc::new(Queue::new(n.queue_capacity, channel, name, &delivery));
                let transport =
                    Transport::new(n, &http).map_err(|reason| AlertingError::Notifier {
                        name: name.clone(),
                        reason,
                    })?;
                queues.insert(name.clone(), queue.clone());
                senders.push(Sender {
                    name: name.clone(),
                    channel,
                    transport,
                    queue,
                    rate_limit: n.rate_limit,
                    max_retries: n.max_retries,
                });
            }
        }
        let severities = hub
            .as_ref()
            .map(|h| h.config().alertmanager_severities)
            .unwrap_or_default();
        let recorded = prom::RecordedCollector::default();
        let mut prom_rules = prom::PromRules::new(cfg.max_series, recorded.clone());
        prom_rules.set_groups(cfg.rule_groups.clone());
        // The rules' alerts carry on where they were (those of rules no longer loaded resolve).
        prom_rules.restore(persisted.alerts, now, alert::ms(cfg.evaluation_interval));
        let first_seen: prom::FirstSeen = persisted
            .exceptions
            .iter()
            .map(|(s, e, t)| ((s.clone(), e.clone()), *t))
            .collect();
        let deploys = Arc::new(RwLock::new(HashMap::new()));
        let last_deploy_notice = store
            .meta("deploy_notice_at".into())
            .await
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok());
        let saved = prom_rules
            .alerts
            .iter()
            .map(|(fp, a)| (fp.clone(), (a.clone(), now)))
            .collect();
        Ok(Arc::new(Self {
            core: Mutex::new(Core {
                saved,
                dispatcher: Dispatcher::with_groups(persisted.groups),
                silences: persisted.silences,
                prom: prom_rules,
                first_seen: first_seen.clone(),
                deploys_at: Millis::MIN,
                deploys_gen: 0,
                last_deploy_notice,
            }),
            config: RwLock::new(Arc::new(cfg)),
            store,
            hub,
            severities,
            registry: OnceLock::new(),
            queues,
            senders: Mutex::new(senders),
            deploys: deploys.clone(),
            delivery,
            metrics: EvalMetrics::default(),
            recorded,
            feedback: prom::FeedbackCollector {
                first_seen: Arc::new(RwLock::new(first_seen)),
                deploys,
            },
        }))
    }

    /// Registers the alerting self-metrics.
    pub fn register(&self, r: &mut Registry) {
        self.delivery.register(r);
        let m = &self.metrics;
        r.register(
            "sidelight_alert_evaluations",
            "Rule evaluation cycles",
            m.evaluations.clone(),
        );
        r.register(
            "sidelight_alert_evaluation_failures",
            "Evaluation cycles that could not read the registry",
            m.failures.clone(),
        );
        r.register(
            "sidelight_alerts_firing",
            "Alerts firing now",
            m.firing.clone(),
        );
        r.register(
            "sidelight_rule_history_series",
            "Series kept for the Prometheus rule groups (alerts.rule_files, alerts.groups)",
            m.rule_series.clone(),
        );
        r.register(
            "sidelight_rule_history_rejected_samples",
            "Samples of series not kept because alerts.max_series was reached",
            m.rule_rejected.clone(),
        );
        r.register(
            "sidelight_rule_evaluation_failures",
            "Rule evaluations that failed (the rule's error is on /api/v1/rules)",
            m.rule_failures.clone(),
        );
        r.register_collector(Box::new(self.recorded.clone()));
        r.register_collector(Box::new(self.feedback.clone()));
    }

    /// Hands over the registry the rules read (the one `/metrics` serves).
    pub fn set_registry(&self, registry: Arc<Registry>) {
        let _ = self.registry.set(registry);
    }

    /// Applies a reloaded configuration (rules, routes, silences; notifiers at restart).
    pub fn reconfigure(&self, cfg: AlertingConfig) {
        if cfg.notifiers != self.config.read().notifiers {
            tracing::warn!("notifiers changes take effect at the next restart");
        }
        *self.config.write() = Arc::new(cfg);
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<AlertingConfig> {
        self.config.read().clone()
    }

    /// Spawns the evaluation loop, the report loop and one sender per receiver.
    pub fn start(self: &Arc<Self>, tracker: &TaskTracker, cancel: CancellationToken) {
        let (tx, rx) = mpsc::channel(1024);
        for s in self.senders.lock().drain(..) {
            tracker.spawn(s.run(
                tx.clone(),
                self.delivery.clone(),
                self.deploys.clone(),
                cancel.clone(),
            ));
        }
        for n in self.config().notifiers.values() {
            let Some(token) = n.socket_mode.clone() else {
                continue;
            };
            let api_url = match &n.kind {
                config::NotifierKind::SlackBot { api_url, .. } => api_url.clone(),
                _ => "https://slack.com/api".to_owned(),
            };
            tracker.spawn(socket::run(
                self.clone(),
                n.name.clone(),
                token,
                api_url,
                cancel.clone(),
            ));
        }
        tracker.spawn(self.clone().reports(rx, cancel.clone()));
        tracker.spawn(self.clone().run(cancel));
    }

    async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut period = self.config().evaluation_interval;
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = ticker.tick() => {}
            }
            self.cycle(now_ms()).await;
            let p = self.config().evaluation_interval;
            if p != period {
                period = p;
                ticker = tokio::time::interval(period);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker.reset();
            }
        }
    }

    /// Re-reads the deployments when one was recorded or `DEPLOYS_EVERY` passed; `None` when
    /// nothing was read.
    async fn refresh_deploys(&self, now: Millis) -> Option<Vec<crate::dora::Deployment>> {
        let hub = self.hub.as_ref()?;
        let generation = hub.deployments_generation();
        {
            let core = self.core.lock();
            if now.saturating_sub(core.deploys_at) < DEPLOYS_EVERY && core.deploys_gen == generation
            {
                return None;
            }
        }
        let list = match hub.successful_deployments().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read deployments for alerting");
                return None;
            }
        };
        let mut map: HashMap<String, DeployInfo> = HashMap::new();
        for d in &list {
            let info = DeployInfo {
                at: d.finished_at.saturating_mul(1000),
                commit: d.commit.clone(),
                version: d.version.clone(),
            };
            match map.get(&d.service) {
                Some(old) if old.at >= info.at => {}
                _ => {
                    map.insert(d.service.clone(), info);
                }
            }
        }
        *self.deploys.write() = map;
        let mut core = self.core.lock();
        core.deploys_at = now;
        core.deploys_gen = generation;
        Some(list)
    }

    /// One evaluation at `now`: read the registry, evaluate, persist, open/resolve incidents,
    /// queue what is due.
    pub async fn cycle(&self, now: Millis) {
        let cfg = self.config();
        let deployments = self.refresh_deploys(now).await;
        self.deploy_notices(&cfg, deployments.as_deref(), now).await;
        let (changed, removed, transitions, notifications, removed_groups, newly) = {
            // What a scrape would store, walked once in the structured metrics model (the
            // stores that hold many series read in place): the rule groups' history takes it,
            // and the exception types it counts get their first-seen time.
            let mut core = self.core.lock();
            let core = &mut *core;
            core.prom.set_groups(cfg.rule_groups.clone());
            let before = core.prom.stats().rejected_samples;
            let mut newly = Vec::new();
            if let Some(registry) = self.registry.get() {
                let mut seen = prom::ExceptionsSeen::new(now, &mut core.first_seen);
                let walked = core.prom.ingest(now, |ingest| {
                    model::walk(registry, &mut Tee(ingest, &mut seen))
                });
                newly = seen.newly;
                if let Err(e) = walked {
                    self.metrics.failures.inc();
                    tracing::error!(error = %e, "alert evaluation cannot read the metrics");
                }
                if !newly.is_empty() {
                    let mut shown = self.feedback.first_seen.write();
                    for (s, e, t) in &newly {
                        shown.insert((s.clone(), e.clone()), *t);
                    }
                }
            }
            let prom_out =
                core.prom
                    .evaluate(now, alert::ms(cfg.evaluation_interval), &cfg.external);
            let stats = core.prom.stats();
            self.metrics
                .rule_rejected
                .inc_by(stats.rejected_samples.saturating_sub(before));
            self.metrics
                .rule_series
                .set(i64::try_from(stats.series).unwrap_or(i64::MAX));
            if let Some(series) = core.prom.take_cap_report() {
                tracing::warn!(
                    series = %sidelight_rules::format_labels(&series),
                    max_series = cfg.max_series,
                    "alerts.max_series reached: series beyond it are not kept for the rules \
                     (counted in sidelight_rule_history_rejected_samples_total; logged once)"
                );
            }
            self.metrics.rule_failures.inc_by(prom_out.failed as u64);
            for (group, rule, error) in &prom_out.errors {
                tracing::warn!(group = %group, rule = %rule, error = %error, "rule evaluation failed");
            }
            // The alerts are kept in the store, so that a restart neither resends nor forgets.
            let changed: Vec<Alert> = core
                .prom
                .alerts
                .values()
                .filter(|a| must_save(core.saved.get(&a.fingerprint), a, now))
                .cloned()
                .collect();
            let removed: Vec<String> = core
                .saved
                .keys()
                .filter(|fp| !core.prom.alerts.contains_key(*fp))
                .cloned()
                .collect();
            let transitions: Vec<(Transition, Alert)> = prom_out
                .transitions
                .iter()
                .filter_map(|t| {
                    let fp = match t {
                        Transition::Fired(f) | Transition::Resolved(f) => f,
                    };
                    core.prom.alerts.get(fp).map(|a| (t.clone(), a.clone()))
                })
                .collect();
            core.silences.retain(|s| s.ends_at > now);
            let mut silences = cfg.silences.clone();
            silences.extend(core.silences.iter().cloned());
            let mut removed_groups = Vec::new();
            let notifications = core.dispatcher.tick(
                now,
                &core.prom.alerts,
                &cfg.routing,
                &silences,
                &mut removed_groups,
            );
            self.metrics.firing.set(
                core.prom
                    .alerts
                    .values()
                    .filter(|a| a.state == State::Firing)
                    .count() as i64,
            );
            (
                changed,
                removed,
                transitions,
                notifications,
                removed_groups,
                newly,
            )
        };
        self.metrics.evaluations.inc();
        if !(changed.is_empty()
            && removed.is_empty()
            && newly.is_empty()
            && removed_groups.is_empty())
        {
            let persisted = self
                .store
                .save_alerts(changed, removed, newly, removed_groups)
                .await;
            match persisted {
                Ok((changed, removed)) => {
                    let mut core = self.core.lock();
                    for fp in &removed {
                        core.saved.remove(fp);
                    }
                    for a in changed {
                        core.saved.insert(a.fingerprint.clone(), (a, now));
                    }
                }
                // What was not written is written at the next cycle that changes it.
                _ => tracing::error!("persisting alert state failed"),
            }
        }
        for (t, a) in transitions {
            match &t {
                Transition::Fired(_) => {
                    tracing::info!(alert = %a.name(), labels = ?a.labels, value = a.value, "alert firing")
                }
                Transition::Resolved(_) => {
                    tracing::info!(alert = %a.name(), labels = ?a.labels, "alert resolved")
                }
            }
            self.incident(&t, &a, now).await;
        }
        for n in notifications {
            match self.queues.get(&n.receiver) {
                Some(q) => q.push(Item::Group(Box::new(n))),
                None => {
                    self.core.lock().dispatcher.failed(&n.key, n.seq, now);
                }
            }
        }
        self.digests(&cfg, now).await;
    }

    /// Opens or resolves the DORA incident of an alert of a configured severity.
    async fn incident(&self, t: &Transition, a: &Alert, now: Millis) {
        let Some(hub) = &self.hub else { return };
        if !self.severities.iter().any(|s| s == a.severity()) {
            return;
        }
        let id = format!("sidelight:{}:{}", a.fingerprint, a.active_at / 1000);
        let change = match t {
            Transition::Fired(_) => IncidentChange::Open(Incident {
                id,
                service: a.service().unwrap_or("unknown").to_owned(),
                environment: a
                    .labels
                    .get("environment")
                    .cloned()
                    .unwrap_or_else(|| hub.config().environment),
                started_at: a.active_at / 1000,
                resolved_at: None,
                deployment_id: a.labels.get("deployment_id").cloned(),
                commit: a.labels.get("commit").cloned(),
                resolved_by_deployment: None,
            }),
            Transition::Resolved(_) => IncidentChange::Resolve {
                id,
                at: now / 1000,
                by_deployment: None,
            },
        };
        if let Err(e) = hub.record_incident(change).await {
            tracing::error!(error = %e, "recording the alert's incident failed");
        }
    }

    async fn reports(self: Arc<Self>, mut rx: mpsc::Receiver<Report>, cancel: CancellationToken) {
        loop {
            let report = tokio::select! {
                _ = cancel.cancelled() => break,
                r = rx.recv() => match r { Some(r) => r, None => break },
            };
            let save: Option<(String, Option<Group>)> = {
                let mut core = self.core.lock();
                match report {
                    Report::Delivered { key, seq, message } => core
                        .dispatcher
                        .confirm(&key, seq, message)
                        .map(|g| (key, g)),
                    Report::Failed { key, seq } => {
                        core.dispatcher.failed(&key, seq, now_ms());
                        None
                    }
                }
            };
            if let Some((key, group)) = save
                && self.store.save_group(key, group).await.is_err()
            {
                tracing::error!("persisting a notification group failed");
            }
        }
    }

    async fn deploy_notices(
        &self,
        cfg: &AlertingConfig,
        deployments: Option<&[crate::dora::Deployment]>,
        now: Millis,
    ) {
        let Some(deployments) = deployments else {
            return;
        };
        let newest = deployments
            .iter()
            .map(|d| d.finished_at.saturating_mul(1000))
            .max()
            .unwrap_or(0);
        let last = self.core.lock().last_deploy_notice;
        let Some(last) = last else {
            // First run: remember where we are rather than announcing history (with no
            // history, every deployment from now on is announced).
            self.core.lock().last_deploy_notice = Some(newest);
            let _ = self
                .store
                .set_meta("deploy_notice_at".into(), newest.to_string())
                .await;
            return;
        };
        let receivers: Vec<&config::NotifierConfig> = cfg
            .notifiers
            .values()
            .filter(|n| n.deploy_notices)
            .collect();
        for d in deployments.iter().filter(|d| {
            d.finished_at.saturating_mul(1000) > last && d.status == DeployStatus::Success
        }) {
            for n in &receivers {
                let sha: String = d.commit.chars().take(7).collect();
                let m = Message {
                    key: String::new(),
                    title: format!("Deployed {} {}", d.service, d.version),
                    tone: Tone::Info,
                    lines: vec![format!(
                        "*{}* `{}` is live in {} (sha {sha}, {} commit(s), {})",
                        d.service,
                        d.version,
                        d.environment,
                        d.commits.len(),
                        render::ago(now, d.finished_at.saturating_mul(1000))
                    )],
                    more: 0,
                    context: Vec::new(),
                    links: n
                        .dashboard
                        .iter()
                        .map(|u| ("Dashboard".to_owned(), u.clone()))
                        .collect(),
                    buttons: false,
                    text: format!("Deployed {} {}", d.service, d.version),
                    follow_up: None,
                };
                if let Some(q) = self.queues.get(&n.name) {
                    q.push(Item::Notice(Box::new(m)));
                }
            }
        }
        if newest > last {
            self.core.lock().last_deploy_notice = Some(newest);
            let _ = self
                .store
                .set_meta("deploy_notice_at".into(), newest.to_string())
                .await;
        }
    }

    async fn digests(&self, cfg: &AlertingConfig, now: Millis) {
        let Some(hub) = &self.hub else { return };
        for n in cfg.notifiers.values() {
            let Some(every) = n.digest else { continue };
            let key = format!("digest:{}", n.name);
            let last: Option<Millis> = self
                .store
                .meta(key.clone())
                .await
                .ok()
                .flatten()
                .and_then(|v| v.parse().ok());
            let (due, marker) = digest_step(last, alert::ms(every), now);
            if let Some(m) = marker {
                let _ = self.store.set_meta(key, m.to_string()).await;
            }
            if !due {
                continue;
            }
            let window = crate::dora::Window::days(
                u16::try_from(every.as_secs() / 86_400)
                    .unwrap_or(7)
                    .clamp(1, 365),
            );
            let scope = crate::dora::Scope::environment(&hub.config().environment);
            let report = match hub.report(now / 1000, window, &scope).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "DORA digest skipped");
                    continue;
                }
            };
            let m = Message {
                key: String::new(),
                title: format!("DORA digest ({window})"),
                tone: Tone::Info,
                lines: api::dora_lines(&report),
                more: 0,
                context: Vec::new(),
                links: n
                    .dashboard
                    .iter()
                    .map(|u| ("Dashboard".to_owned(), u.clone()))
                    .collect(),
                buttons: false,
                text: format!("DORA digest ({window})"),
                follow_up: None,
            };
            if let Some(q) = self.queues.get(&n.name) {
                q.push(Item::Notice(Box::new(m)));
            }
        }
    }

    /// Every alert (firing first).
    pub fn alerts(&self) -> Vec<Alert> {
        let core = self.core.lock();
        let mut v: Vec<Alert> = core.prom.alerts.values().cloned().collect();
        drop(core);
        v.sort_by_key(|a| (a.state != State::Firing, a.fingerprint.clone()));
        v
    }

    /// Pending and firing alerts in Prometheus's `GET /api/v1/alerts` form (the rules' labels
    /// and annotations, without the external labels, as Prometheus shows them).
    pub fn api_alerts(&self) -> Vec<serde_json::Value> {
        self.core.lock().prom.api_alerts()
    }

    /// The rule groups in Prometheus's `GET /api/v1/rules` form (`data`).
    pub fn api_rules(&self) -> serde_json::Value {
        self.core.lock().prom.api_rules()
    }

    /// Silences in force or to come (config, API, chat).
    pub fn silences(&self) -> Vec<Silence> {
        let now = now_ms();
        let mut v = self.config().silences.clone();
        v.extend(self.core.lock().silences.iter().cloned());
        v.retain(|s| s.ends_at > now);
        v
    }

    /// Adds a silence (persisted).
    pub async fn add_silence(&self, s: Silence) -> Result<(), StoreError> {
        self.store.save_silence(s.clone()).await?;
        self.core.lock().silences.push(s);
        Ok(())
    }

    /// Removes an API or chat silence; whether it existed.
    pub async fn delete_silence(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.store.delete_silence(id.to_owned()).await?;
        let mut core = self.core.lock();
        let before = core.silences.len();
        core.silences.retain(|s| s.id != id);
        Ok(existed || core.silences.len() != before)
    }

    /// Acks groups (persisted); returns how many.
    pub async fn ack(&self, what: &str, by: &str) -> Result<usize, StoreError> {
        let groups = self.core.lock().dispatcher.ack(what, by);
        let n = groups.len();
        self.store.save_groups(groups).await?;
        Ok(n)
    }

    /// The matchers that silence one group (its labels, else its alerts' names).
    pub fn group_matchers(&self, key: &str) -> Option<Vec<String>> {
        let core = self.core.lock();
        let g = core.dispatcher.groups.get(key)?;
        let mut m: Vec<String> = g
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        if m.is_empty() {
            let names: Vec<String> = g.alerts.values().map(|a| regex::escape(a.name())).collect();
            m.push(format!("alertname=~\"{}\"", names.join("|")));
        }
        Some(m)
    }

    /// The DORA hub, when enabled.
    pub fn hub(&self) -> Option<&Arc<Hub>> {
        self.hub.as_ref()
    }
}

/// Lends one walk of the metrics model to two visitors.
struct Tee<'a>(&'a mut dyn model::Visit, &'a mut dyn model::Visit);

impl model::Visit for Tee<'_> {
    fn family(&mut self, family: &model::FamilyRef<'_>) {
        self.0.family(family);
        self.1.family(family);
    }

    fn series(&mut self, labels: model::LabelsRef<'_>, value: model::ValueRef<'_>) {
        self.0.series(labels, value);
        self.1.series(labels, value);
    }

    /// A family's series are lent when either visitor reads them (each passes by those of the
    /// families it does not read).
    fn wants_series(&self) -> bool {
        self.0.wants_series() || self.1.wants_series()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use std::path::Path;

    const H: Millis = 3_600_000;
    const D: Millis = 24 * H;

    #[test]
    fn digest_schedule() {
        let week = 7 * D;
        let t0 = 1_700_000_000_000;
        // (last mark, now) -> (due, new mark)
        let cases: &[(Option<Millis>, Millis, bool, Option<Millis>)] = &[
            // The first evaluation starts the schedule and sends nothing.
            (None, t0, false, Some(t0)),
            // Not yet: nothing to store.
            (Some(t0), t0 + week - 1, false, None),
            // Due exactly one period later.
            (Some(t0), t0 + week, true, Some(t0 + week)),
            // Noticed 40 s late (the evaluation interval): the cadence does not drift.
            (Some(t0), t0 + week + 40_000, true, Some(t0 + week)),
            // Three periods missed while the agent was down: one digest, mark on the cadence.
            (Some(t0), t0 + 3 * week + H, true, Some(t0 + 3 * week)),
            // The clock went back: restart the schedule rather than wait for weeks.
            (Some(t0), t0 - D, false, Some(t0 - D)),
        ];
        for &(last, now, due, mark) in cases {
            assert_eq!(
                digest_step(last, week, now),
                (due, mark),
                "last {last:?} now {now}"
            );
        }
    }

    fn config(dir: &Path, extra: &str) -> crate::config::Config {
        std::fs::write(dir.join("slack-token"), "xoxb-1-test\n").expect("token");
        crate::config::load_str(
            &format!(
                r##"
dora: {{ enabled: true }}
alerts: {{ evaluation_interval: 1s }}
notifiers:
  slack:
    token_file: slack-token
    channel: "#alerts"
    api_url: "http://127.0.0.1:9/api"
    deploy_notices: true
{extra}
"##
            ),
            "t",
            dir,
            &HashMap::<String, String>::new(),
        )
        .expect("config")
    }

    fn deployment(version: &str, finished_at: i64) -> crate::store::Batch {
        let d: crate::dora::Deployment = serde_json::from_value(serde_json::json!({
            "id": format!("d-{version}"),
            "service": "checkout",
            "environment": "production",
            "version": version,
            "commit": "abc1234def",
            "status": "success",
            "started_at": finished_at - 60,
            "finished_at": finished_at,
            "commits": [{"sha": "abc1234def", "timestamp": finished_at - 3600}],
        }))
        .expect("deployment");
        crate::store::Batch {
            deployment: Some((d, None)),
            ..crate::store::Batch::default()
        }
    }

    fn titles(a: &Alerting) -> Vec<String> {
        a.queues["slack"]
            .drain()
            .into_iter()
            .map(|i| match i {
                Item::Notice(m) => m.title,
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// The digest and deploy notices through `Alerting::cycle(now)` with explicit times (the
    /// edge's clock never consulted), over a real store and DORA hub.
    #[tokio::test]
    async fn weekly_digest_and_deploy_notices_driven_by_now() {
        let dir = tempfile::tempdir().expect("dir");
        let cfg = config(dir.path(), "    digest: 7d\n");
        let db = StoreHandle::open(dir.path()).await.expect("store");
        let hub = Hub::open(
            cfg.dora.clone(),
            db.clone(),
            Arc::new(sidelight_collector::metrics::LabelCaps::new(100)),
        )
        .await
        .expect("hub");
        let a = Alerting::open(
            cfg.alerting.clone().expect("alerting"),
            db.clone(),
            Some(hub.clone()),
        )
        .await
        .expect("open");
        let t0 = now_ms();
        a.cycle(t0).await;
        assert!(titles(&a).is_empty(), "the first evaluation sends nothing");

        // A deployment recorded after the start is announced at the next evaluation.
        hub.record(deployment("1.4.2", t0 / 1000 - 30))
            .await
            .expect("record");
        a.cycle(t0 + 1000).await;
        assert_eq!(titles(&a), vec!["Deployed checkout 1.4.2".to_owned()]);
        a.cycle(t0 + 2000).await;
        assert!(titles(&a).is_empty(), "announced once");

        a.cycle(t0 + 7 * D - 1000).await;
        assert!(titles(&a).is_empty(), "not due before a week");
        // A deployment inside the digest's window.
        hub.record(deployment("1.5.0", (t0 + 3 * D) / 1000))
            .await
            .expect("record");
        a.cycle(t0 + 7 * D + 500).await;
        let got = a.queues["slack"].drain();
        assert_eq!(got.len(), 2, "{got:?}");
        let Item::Notice(m) = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(m.title, "Deployed checkout 1.5.0");
        let Item::Notice(m) = &got[1] else {
            panic!("{got:?}")
        };
        assert_eq!(m.title, "DORA digest (7d)");
        assert!(
            m.lines.iter().any(|l| l.contains("*checkout*")),
            "{:?}",
            m.lines
        );
        a.cycle(t0 + 7 * D + 1500).await;
        assert!(titles(&a).is_empty(), "one digest per period");
        a.cycle(t0 + 14 * D).await;
        assert_eq!(titles(&a), vec!["DORA digest (7d)".to_owned()]);
        drop(a);

        // A restart keeps the marks: nothing is announced or digested again.
        let a = Alerting::open(
            cfg.alerting.clone().expect("alerting"),
            db.clone(),
            Some(hub.clone()),
        )
        .await
        .expect("reopen");
        a.cycle(t0 + 14 * D + 1000).await;
        assert!(titles(&a).is_empty());
    }
}
