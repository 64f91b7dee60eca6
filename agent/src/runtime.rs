//! Lifecycle of a running agent: `start` binds and spawns every component on one
//! `TaskTracker`; `reload` hands a validated new config to the components, which apply it in
//! place (counters and snapshots survive); `stop` cancels sources, lets the HTTP surface finish
//! in-flight requests, and waits for everything within the shutdown deadline.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::response::IntoResponse;
use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sidelight_collector::filesink::{FileSink, FileSinkStats};
use sidelight_collector::host::HostCollector;
use sidelight_collector::logs::LogStats;
use sidelight_collector::metrics::{LabelCaps, SnapshotCell, SnapshotCollector};
use sidelight_collector::otlp::serve::{self, ConnectionStats};
use sidelight_collector::pipeline::{Queue, QueueLimits};
use sidelight_collector::process::{ProcessCollector, TargetSpec};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::{Config, ProcessEnv, SELF_TARGET};
use crate::http::{self, HttpState, Readiness};
use crate::hub::Hub;
use crate::logging::LogHandle;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state directory cannot be created. (The cause is part of the message, not a
    /// `source`: printing the chain would say it twice.)
    #[error("store.path {path}: {error}")]
    Store {
        /// The directory.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// The DORA store could not be opened or read.
    #[error("dora store in {path}: {error}")]
    Dora {
        /// The state directory.
        path: PathBuf,
        /// The cause.
        error: crate::store::StoreError,
    },
    /// The file exporter's file cannot be opened.
    #[error("export.file: {0}")]
    FileExport(#[from] sidelight_collector::filesink::FileSinkError),
    /// The exporters could not be built (a spill directory, an endpoint).
    #[error("{0}")]
    Export(#[from] crate::export::ExportError),
    /// The OTLP receivers could not start.
    #[error("otlp: {0}")]
    Otlp(#[from] sidelight_collector::otlp::OtlpError),
    /// Alerting could not start.
    #[error("{0}")]
    Alerting(#[from] crate::alerting::AlertingError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        error: std::io::Error,
    },
}

type OneLabel = [(&'static str, &'static str); 1];

/// The agent's metrics about itself.
#[derive(Debug, Clone)]
pub struct SelfMetrics {
    /// Duration of one collection cycle, by collector.
    pub collection_duration: Family<OneLabel, Histogram, fn() -> Histogram>,
    /// Failed reads during collection, by collector.
    pub collection_errors: Family<OneLabel, Counter>,
    /// Processes listed in the last process cycle.
    pub processes_scanned: Gauge,
    /// Time spent encoding `/metrics`.
    pub scrape_duration: Histogram,
    /// Configuration reloads by result.
    pub reloads: Family<OneLabel, Counter>,
    /// 1 if the last reload succeeded.
    pub last_reload_success: Gauge,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl SelfMetrics {
    fn new() -> Self {
        Self {
            collection_duration: Family::new_with_constructor(duration_histogram),
            collection_errors: Family::default(),
            processes_scanned: Gauge::default(),
            scrape_duration: duration_histogram(),
            reloads: Family::default(),
            last_reload_success: Gauge::default(),
        }
    }

    fn register(&self, registry: &mut Registry) {
        let info: Family<[(&'static str, &'static str); 1], Gauge> = Family::default();
        info.get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register(
            "sidelight_build_info",
            "Build information of the running agent",
            info,
        );
        registry.register(
            "sidelight_collection_duration_seconds",
            "Wall time of one collection cycle, by collector",
            self.collection_duration.clone(),
        );
        registry.register(
            "sidelight_collection_errors",
            "Reads that failed during collection (vanished processes excluded), by collector",
            self.collection_errors.clone(),
        );
        registry.register(
            "sidelight_processes_scanned",
            "Processes listed in the last process collection cycle",
            self.processes_scanned.clone(),
        );
        registry.register(
            "sidelight_scrape_duration_seconds",
            "Time spent encoding the /metrics response",
            self.scrape_duration.clone(),
        );
        registry.register(
            "sidelight_config_reloads",
            "Configuration reloads, by result",
            self.reloads.clone(),
        );
        registry.register(
            "sidelight_config_last_reload_successful",
            "Whether the last configuration reload succeeded (1) or was rejected (0)",
            self.last_reload_success.clone(),
        );
    }
}

struct Shared {
    readiness: Arc<Readiness>,
    caps: Arc<LabelCaps>,
    metrics: SelfMetrics,
    host: Arc<SnapshotCell>,
    processes: Arc<SnapshotCell>,
}

/// A started agent.
pub struct Running {
    config: watch::Sender<Arc<Config>>,
    sources: CancellationToken,
    http: CancellationToken,
    tracker: TaskTracker,
    log: Option<LogHandle>,
    local_addr: watch::Receiver<SocketAddr>,
    tokens: Arc<RwLock<Vec<crate::config::common::Secret>>>,
    metrics: SelfMetrics,
    dora: Option<Arc<Hub>>,
    alerting: Option<Arc<crate::alerting::Alerting>>,
    logs: Option<tokio::task::JoinHandle<()>>,
    sink_queues: Vec<Arc<Queue>>,
    exports: crate::export::Exports,
    otlp: Option<crate::otlp::Otlp>,
    reload_requests: Option<crate::reload::Requests>,
    kubernetes: crate::resource::KubernetesInfo,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("local_addr", &*self.local_addr.borrow())
            .finish_non_exhaustive()
    }
}

/// The process targets a config implies: the agent itself first, then the configured ones.
fn targets(config: &Config) -> Vec<TargetSpec> {
    let mut t = vec![TargetSpec::own_process(SELF_TARGET)];
    t.extend(config.processes.iter().cloned());
    t
}

/// Binds and spawns everything. Nothing is left running if this fails.
pub async fn start(config: Config, log: Option<LogHandle>) -> Result<Running, StartError> {
    std::fs::create_dir_all(&config.store.path).map_err(|error| StartError::Store {
        path: config.store.path.clone(),
        error,
    })?;
    let listener = TcpListener::bind(config.http.listen)
        .await
        .map_err(|error| StartError::Bind {
            addr: config.http.listen,
            error,
        })?;
    let local = listener.local_addr().map_err(|error| StartError::Bind {
        addr: config.http.listen,
        error,
    })?;

    let shared = Arc::new(Shared {
        readiness: Arc::new(Readiness::default()),
        caps: Arc::new(LabelCaps::new(config.agent.max_label_sets)),
        metrics: SelfMetrics::new(),
        host: Arc::new(SnapshotCell::default()),
        processes: Arc::new(SnapshotCell::default()),
    });
    let mut registry = Registry::default();
    shared.metrics.register(&mut registry);
    let kubernetes = crate::resource::KubernetesInfo::default();
    kubernetes.register(&mut registry);
    kubernetes.set(&config.resource);
    shared.caps.register(&mut registry);
    registry.register_collector(Box::new(SnapshotCollector(shared.host.clone())));
    registry.register_collector(Box::new(SnapshotCollector(shared.processes.clone())));
    shared.metrics.last_reload_success.set(1);

    shared.readiness.expect("http");
    shared.readiness.expect("metrics");

    // The one owner of sidelight.db, opened only when a component keeps state in it.
    let db = if config.dora.enabled || config.alerting.is_some() {
        Some(
            crate::store::StoreHandle::open(&config.store.path)
                .await
                .map_err(|error| StartError::Dora {
                    path: config.store.path.clone(),
                    error,
                })?,
        )
    } else {
        None
    };
    let dora = if let (true, Some(db)) = (config.dora.enabled, &db) {
        shared.readiness.expect("dora");
        let hub = Hub::open(config.dora.clone(), db.clone(), shared.caps.clone())
            .await
            .map_err(|error| StartError::Dora {
                path: config.store.path.clone(),
                error,
            })?;
        hub.register(&mut registry);
        match hub.retain().await {
            Ok(n) => tracing::info!(deleted = n, "dora retention applied"),
            Err(e) => tracing::error!(error = %e, "dora retention failed"),
        }
        hub.refresh().await.map_err(|error| StartError::Dora {
            path: config.store.path.clone(),
            error,
        })?;
        Some(hub)
    } else {
        None
    };

    let alerting = match (&config.alerting, &db) {
        (Some(a), Some(db)) => {
            let alerting =
                crate::alerting::Alerting::open(a.clone(), db.clone(), dora.clone()).await?;
            alerting.register(&mut registry);
            Some(alerting)
        }
        _ => None,
    };

    // Sinks first, so that sources have somewhere to hand their data.
    let exports = crate::export::Exports::build(&config.export, &config.store.path, &mut registry)?;
    let queue_stats = exports.queue_stats();
    let mut intake = exports.intake();
    let mut sink_queues = Vec::new();
    let mut file_sink = None;
    if let Some(f) = &config.export.file {
        let stats = FileSinkStats::default();
        stats.register(&mut registry);
        let sink = FileSink::open(f.sink.clone(), stats)?;
        let queue = Arc::new(Queue::new(
            "file",
            QueueLimits {
                max_items: f.queue_max_items,
                ..QueueLimits::default()
            },
            queue_stats.clone(),
        ));
        for signal in &f.signals {
            intake = intake.with(*signal, queue.clone());
        }
        sink_queues.push(queue.clone());
        file_sink = Some((sink, queue));
    }
    let log_stats = LogStats::new(&shared.caps);
    log_stats.register(&mut registry);
    shared.readiness.expect("logs");
    let tracker = TaskTracker::new();
    let sources = CancellationToken::new();
    if config.otlp.enabled {
        shared.readiness.expect("otlp");
    }
    let connections = ConnectionStats::default();
    connections.register(&mut registry);
    let otlp = crate::otlp::Otlp::start(
        &config.otlp,
        intake.clone(),
        &shared.caps,
        &log_stats,
        &mut registry,
        connections.clone(),
        &tracker,
        sources.clone(),
    )
    .await?;
    if otlp.is_some() {
        shared.readiness.ready("otlp");
    }
    let registry = Arc::new(registry);

    let tokens = Arc::new(RwLock::new(config.http.bearer_tokens.clone()));
    let (reloader, reload_requests) = crate::reload::channel();
    if let Some(a) = &alerting {
        a.set_registry(registry.clone());
    }
    let state = HttpState {
        registry: registry.clone(),
        readiness: shared.readiness.clone(),
        scrape_duration: shared.metrics.scrape_duration.clone(),
        tokens: tokens.clone(),
        dora: dora.clone(),
        alerting: alerting.clone(),
        reload: Some(reloader),
    };

    let config = Arc::new(config);
    let (config_tx, _) = watch::channel(config.clone());
    let (addr_tx, local_addr) = watch::channel(local);
    let http_token = CancellationToken::new();

    tracker.spawn(collect_loop(
        config_tx.subscribe(),
        shared.clone(),
        sources.clone(),
    ));
    exports.spawn(&tracker, registry, config.host.interval);
    if let Some((sink, queue)) = file_sink {
        // Not cancelled with the sources: it drains its queue once they stopped (`stop`).
        tracker.spawn(sink.run(queue, CancellationToken::new()));
    }
    let logs = tracker.spawn(crate::logs::supervise(
        config_tx.subscribe(),
        crate::logs::LogContext {
            intake: intake.clone(),
            stats: log_stats,
            store: config.store.path.clone(),
            host: crate::logs::host_name(),
            readiness: shared.readiness.clone(),
        },
        sources.clone(),
    ));
    if let Some(hub) = &dora {
        tracker.spawn(hub.clone().run(sources.clone()));
        shared.readiness.ready("dora");
    }
    if let Some(hub) = &dora {
        // Change failures from telemetry: samples the span metrics, when there are any.
        let spanmetrics = otlp.as_ref().and_then(|o| o.spanmetrics());
        crate::hub::detector::start(hub, spanmetrics, &tracker, sources.clone());
    }
    if let Some(a) = &alerting {
        a.start(&tracker, sources.clone());
    }
    tracker.spawn(serve_http(
        listener,
        state,
        config_tx.subscribe(),
        addr_tx,
        http_token.clone(),
        tracker.clone(),
        connections,
    ));
    shared.readiness.ready("http");

    tracing::info!(
        config = %config.source_name,
        listen = %local,
        host_interval = %humantime::format_duration(config.host.interval),
        targets = ?targets(&config).iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        "sidelight started: {}",
        config.summary().replacen(&config.http.listen.to_string(), &local.to_string(), 1),
    );
    Ok(Running {
        config: config_tx,
        sources,
        http: http_token,
        tracker,
        log,
        local_addr,
        tokens,
        metrics: shared.metrics.clone(),
        dora,
        alerting,
        logs: Some(logs),
        sink_queues,
        exports,
        otlp,
        reload_requests: Some(reload_requests),
        kubernetes,
    })
}

impl Running {
    /// The address the HTTP surface listens on now.
    pub fn local_addr(&self) -> SocketAddr {
        *self.local_addr.borrow()
    }

    /// Where OTLP payloads enter the export pipeline (receivers `offer`, the log tailer
    /// `deliver`); forwards nothing when `export.otlp` is absent.
    pub fn intake(&self) -> sidelight_collector::pipeline::Intake {
        self.exports.intake()
    }

    /// The requests of `POST /-/reload`, to be answered with `reload_from` by the task that owns
    /// this agent (taken once; later calls return `None`).
    pub fn take_reload_requests(&mut self) -> Option<crate::reload::Requests> {
        self.reload_requests.take()
    }

    /// What SIGHUP and `POST /-/reload` do: reads `path` again with the same loader as at start
    /// and applies it in place, or rejects it (every error logged and returned, the running
    /// configuration untouched). `None`: the agent runs on its embedded defaults.
    pub fn reload_from(&self, path: Option<&Path>) -> crate::reload::Outcome {
        use crate::reload::Outcome;
        let Some(path) = path else {
            tracing::info!("running on the embedded defaults, nothing to reload");
            return Outcome::NoFile;
        };
        match Config::load(path, &ProcessEnv) {
            Ok(new) => {
                let summary = new.summary();
                self.reload(new);
                Outcome::Applied(summary)
            }
            Err(errors) => {
                self.reload_failed(&errors);
                Outcome::Rejected(errors)
            }
        }
    }

    /// Applies a validated configuration in place.
    pub fn reload(&self, new: Config) {
        let old = self.config.borrow().clone();
        if new.agent.max_label_sets != old.agent.max_label_sets {
            tracing::warn!("agent.max_label_sets changes take effect at the next restart");
        }
        if new.store.path != old.store.path {
            tracing::warn!("store.path changes take effect at the next restart");
        }
        if new.dora.enabled != old.dora.enabled {
            tracing::warn!("dora.enabled changes take effect at the next restart");
        }
        if let Some(hub) = &self.dora {
            hub.reconfigure(new.dora.clone());
        }
        match &self.otlp {
            Some(otlp) => otlp.reload(&old.otlp, &new.otlp),
            None if new.otlp.enabled => {
                tracing::warn!("otlp.enabled changes take effect at the next restart")
            }
            None => {}
        }
        match (&self.alerting, &new.alerting) {
            (Some(a), Some(cfg)) => a.reconfigure(cfg.clone()),
            (None, None) => {}
            _ => tracing::warn!(
                "adding or removing alerts/notifiers takes effect at the next restart"
            ),
        }
        if let Some(log) = &self.log {
            log.set_level(&new.agent.log_level);
        }
        *self.tokens.write() = new.http.bearer_tokens.clone();
        self.kubernetes.set(&new.resource);
        tracing::info!(config = %new.source_name, "configuration reloaded: {}", new.summary());
        self.config.send_replace(Arc::new(new));
        self.metrics
            .reloads
            .get_or_create(&[("result", "success")])
            .inc();
        self.metrics.last_reload_success.set(1);
    }

    /// Records a rejected reload (the old configuration keeps running).
    pub fn reload_failed(&self, reason: &dyn std::fmt::Display) {
        tracing::error!(reason = %reason, "configuration reload rejected; the previous configuration keeps running");
        self.metrics
            .reloads
            .get_or_create(&[("result", "failure")])
            .inc();
        self.metrics.last_reload_success.set(0);
    }

    /// Stops sources, then the HTTP surface, and waits for every task up to `deadline`.
    /// Returns false if the deadline cut the shutdown short.
    pub async fn stop(mut self, deadline: Duration) -> bool {
        let started = Instant::now();
        self.sources.cancel();
        self.http.cancel();
        self.tracker.close();
        // Sources first: the log tailers collect the acknowledgements of what they already
        // handed on (the exporters still run) and write their final checkpoints. Then the
        // exporters drain their queues; what is still in flight at 80 % of the time left is
        // spilled or left un-acknowledged (read again after the restart).
        let sinks = self.sink_queues.clone();
        let logs = self.logs.take();
        let exports = self.exports;
        let tracker = self.tracker.clone();
        let ordered = async move {
            if let Some(logs) = logs {
                let _ = logs.await;
            }
            let left = deadline.saturating_sub(started.elapsed());
            exports.stop(left.mul_f64(0.8));
            for q in &sinks {
                q.close();
            }
            tracker.wait().await;
        };
        let clean = tokio::time::timeout(deadline, ordered).await.is_ok();
        if clean {
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "sidelight stopped"
            );
        } else {
            tracing::warn!(deadline = %humantime::format_duration(deadline), "shutdown deadline reached; abandoning remaining tasks");
        }
        clean
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }
}

/// Serves the router, rebinding when `http.listen` changes and swapping limits in place.
async fn serve_http(
    listener: TcpListener,
    state: HttpState,
    mut config: watch::Receiver<Arc<Config>>,
    addr_tx: watch::Sender<SocketAddr>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    connections: ConnectionStats,
) {
    let cfg = config.borrow_and_update().clone();
    let current = Arc::new(RwLock::new(http::router(
        state.clone(),
        cfg.http.max_body_bytes,
        cfg.http.request_timeout,
    )));
    let app = {
        let current = current.clone();
        Router::new().fallback(move |req: Request| {
            let router = current.read().clone();
            async move { router.oneshot(req).await.into_response() }
        })
    };
    let mut listen = cfg.http.listen;
    // The connection cap is read when a listener starts (a new `http.listen` applies a new one).
    let server = |l: TcpListener, cfg: &Config| {
        spawn_server(
            &tracker,
            l,
            app.clone(),
            cfg.http.max_connections,
            connections.clone(),
            cancel.child_token(),
        )
    };
    let mut server_token = server(listener, &cfg);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = config.changed() => {
                if changed.is_err() {
                    break;
                }
                let cfg = config.borrow_and_update().clone();
                *current.write() = http::router(state.clone(), cfg.http.max_body_bytes, cfg.http.request_timeout);
                if cfg.http.listen != listen {
                    match TcpListener::bind(cfg.http.listen).await {
                        Ok(l) => {
                            let local = l.local_addr().unwrap_or(cfg.http.listen);
                            server_token.cancel();
                            server_token = server(l, &cfg);
                            listen = cfg.http.listen;
                            addr_tx.send_replace(local);
                            tracing::info!(listen = %local, "HTTP surface moved");
                        }
                        Err(e) => tracing::error!(listen = %cfg.http.listen, error = %e, "cannot bind the new http.listen; still serving on the old address"),
                    }
                }
            }
        }
    }
    server_token.cancel();
}

/// Serves `app` on `listener` through the accept loop the OTLP receivers use (connection cap,
/// header and request timeouts, HTTP/2 limits) until `token` fires.
fn spawn_server(
    tracker: &TaskTracker,
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    connections: ConnectionStats,
    token: CancellationToken,
) -> CancellationToken {
    tracker.spawn(serve::serve(
        listener,
        Arc::new(RwLock::new(app)),
        Arc::new(RwLock::new(None)),
        token.clone(),
        max_connections,
        serve::Accounting {
            name: "http",
            connections,
            handshakes: None,
        },
    ));
    token
}

/// Runs host and process collection on the configured interval, off the async runtime.
async fn collect_loop(
    mut config: watch::Receiver<Arc<Config>>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let cfg = config.borrow_and_update().clone();
    let mut host = Some(HostCollector::new(cfg.host.settings.clone()));
    let mut procs = Some(ProcessCollector::new(
        cfg.host.settings.procfs.clone(),
        targets(&cfg),
    ));
    let mut host_enabled = cfg.host.enabled;
    let mut period = cfg.host.interval;
    let mut ticker = new_ticker(period);
    let mut logged: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            changed = config.changed() => {
                if changed.is_err() {
                    break;
                }
                let cfg = config.borrow_and_update().clone();
                if let Some(h) = host.as_mut() {
                    h.reconfigure(cfg.host.settings.clone());
                }
                if let Some(p) = procs.as_mut() {
                    p.reconfigure(cfg.host.settings.procfs.clone(), targets(&cfg));
                }
                host_enabled = cfg.host.enabled;
                if !host_enabled {
                    shared.host.publish(Default::default());
                }
                if cfg.host.interval != period {
                    period = cfg.host.interval;
                    ticker = new_ticker(period);
                } else {
                    // Targets changed: collect now rather than a whole interval later.
                    ticker.reset_immediately();
                }
                continue;
            }
            _ = ticker.tick() => {}
        }
        let (Some(h), Some(p)) = (host.take(), procs.take()) else {
            break;
        };
        let cycle = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let hs = host_enabled.then(|| h.collect());
            let host_time = t.elapsed();
            let mut p = p;
            let t = Instant::now();
            let ps = p.collect();
            (h, p, hs, host_time, ps, t.elapsed())
        })
        .await;
        let Ok((h, p, hs, host_time, ps, proc_time)) = cycle else {
            tracing::error!("a collection cycle panicked; restarting the collectors");
            let cfg = config.borrow().clone();
            host = Some(HostCollector::new(cfg.host.settings.clone()));
            procs = Some(ProcessCollector::new(
                cfg.host.settings.procfs.clone(),
                targets(&cfg),
            ));
            continue;
        };
        host = Some(h);
        procs = Some(p);
        let m = &shared.metrics;
        if let Some(mut hs) = hs {
            m.collection_duration
                .get_or_create(&[("collector", "host")])
                .observe(host_time.as_secs_f64());
            note_errors(
                &mut logged,
                "host",
                hs.errors.iter().map(ToString::to_string),
                m,
            );
            hs.snapshot.enforce_caps(&shared.caps);
            shared.host.publish(hs.snapshot);
        }
        let mut ps = ps;
        m.collection_duration
            .get_or_create(&[("collector", "process")])
            .observe(proc_time.as_secs_f64());
        m.processes_scanned
            .set(i64::try_from(ps.scanned).unwrap_or(i64::MAX));
        note_errors(
            &mut logged,
            "process",
            ps.errors.iter().map(ToString::to_string),
            m,
        );
        ps.snapshot.enforce_caps(&shared.caps);
        shared.processes.publish(ps.snapshot);
        shared.readiness.ready("metrics");
    }
}

fn new_ticker(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// Counts collection errors; logs each distinct one once (a bounded set) so a persistent
/// permission problem does not flood the agent's log.
fn note_errors(
    logged: &mut HashSet<String>,
    collector: &'static str,
    errors: impl Iterator<Item = String>,
    m: &SelfMetrics,
) {
    for e in errors {
        m.collection_errors
            .get_or_create(&[("collector", collector)])
            .inc();
        if logged.len() < 256 && logged.insert(e.clone()) {
            tracing::warn!(collector, error = %e, "collection error (further occurrences are only counted)");
        }
    }
}
