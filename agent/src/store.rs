//! The agent's one SQLite database (`<store.path>/sidelight.db`, WAL, `synchronous=FULL`, so a
//! write acknowledged is a write on disk): DORA events and alerting state, in one schema
//! history migrated by `rusqlite_migration` (the schema version is SQLite's `user_version`).
//!
//! Every DORA event is written with everything it implies (its commits, the webhook delivery
//! that carried it, the pushed commits it links) in one transaction: nothing is half-written.
//! Writes are idempotent — the same webhook delivery id or deployment id is stored once
//! (`INSERT ... ON CONFLICT DO NOTHING`) and the caller learns whether the event was new and
//! what was written. Every deploy attempt is its own row: a failure and its successful retry of
//! one version, or a rollback to an earlier version, are separate events. What they mean for
//! DORA is decided by `dora::compute`.
//!
//! [`Store`] is synchronous. In the agent, [`StoreHandle`] owns it on the one store thread
//! (`sidelight-store`), fed by a bounded channel: no database call runs on the async runtime or
//! the blocking pool, and nothing else opens the file (the `dora report` command, a process of
//! its own, opens it directly). The thread commits the DORA events queued together in one
//! transaction (group commit, one fsync) while each keeps its own savepoint, so one bad event
//! never takes the others with it; other work (alerting state, reads, retention) reaches the
//! connection through [`StoreHandle::call`].

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};

use crate::dora::{Change, Deployment, Events, Incident, UnixSeconds};

/// The database file name inside `store.path`.
pub const DB_FILE: &str = "sidelight.db";

/// How many requests may wait for the store thread.
const QUEUE: usize = 1024;

/// Most events committed together.
const GROUP: usize = 256;

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A schema migration failed.
    #[error("migrating the schema: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// The store directory cannot be created.
    #[error("cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A stored row does not decode.
    #[error("corrupt row in {table}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// Why.
        reason: String,
    },
    /// The database was written by a newer agent.
    #[error("database schema version {found} is newer than this agent's {supported}")]
    TooNew {
        /// Version in the file.
        found: i64,
        /// Version this build knows.
        supported: i64,
    },
    /// The store thread has stopped.
    #[error("the store is closed")]
    Closed,
}

/// DORA schema 1: deployments, their commits, incidents, webhook deliveries, pushed commits
/// awaiting a deploy.
const DORA_TABLES: &str = "CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        service TEXT NOT NULL,
        environment TEXT NOT NULL,
        version TEXT NOT NULL,
        finished_at INTEGER NOT NULL,
        body TEXT NOT NULL
     );
     CREATE UNIQUE INDEX deployments_version ON deployments(service, version, environment)
        WHERE version <> '';
     CREATE INDEX deployments_finished ON deployments(finished_at);
     CREATE TABLE deployment_commits (
        deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
        sha TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        pr_first_commit_at INTEGER,
        PRIMARY KEY (deployment_id, sha)
     );
     CREATE TABLE incidents (
        id TEXT PRIMARY KEY,
        started_at INTEGER NOT NULL,
        resolved_at INTEGER,
        body TEXT NOT NULL
     );
     CREATE INDEX incidents_started ON incidents(started_at);
     CREATE TABLE webhook_deliveries (
        source TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        PRIMARY KEY (source, delivery_id)
     );
     CREATE TABLE pending_changes (
        repo TEXT NOT NULL,
        sha TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        pr_first_commit_at INTEGER,
        PRIMARY KEY (repo, sha)
     );";

/// DORA schema 2: every deploy attempt is an event of its own (a retried version, a
/// rollback): the (service, version, environment) uniqueness goes; deployments are looked up
/// by service.
const DORA_ATTEMPTS: &str = "DROP INDEX deployments_version;
     CREATE INDEX deployments_service ON deployments(service, environment, finished_at);";

/// The alerting state: current alerts, notification groups, silences, first sightings of
/// exception types, markers. `IF NOT EXISTS`: a database from before the one schema history
/// may already hold them (see [`adopt_legacy`]).
const ALERT_TABLES: &str =
    "CREATE TABLE IF NOT EXISTS alerting_alerts (fingerprint TEXT PRIMARY KEY, body TEXT NOT NULL);
     CREATE TABLE IF NOT EXISTS alerting_groups (key TEXT PRIMARY KEY, body TEXT NOT NULL);
     CREATE TABLE IF NOT EXISTS alerting_silences (
        id TEXT PRIMARY KEY, ends_at INTEGER NOT NULL, body TEXT NOT NULL);
     CREATE TABLE IF NOT EXISTS alerting_exceptions (
        source TEXT NOT NULL, exception TEXT NOT NULL, first_seen INTEGER NOT NULL,
        PRIMARY KEY (source, exception));
     CREATE TABLE IF NOT EXISTS alerting_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);";

/// The two version tables of the time before one schema history, once adopted.
const DROP_LEGACY_VERSIONS: &str = "DROP TABLE IF EXISTS schema_version;
     DROP TABLE IF EXISTS alerting_schema_version;";

/// The one schema history, applied in order; `user_version` is how many have run.
const MIGRATIONS: &[M<'static>] = &[
    M::up(DORA_TABLES),
    M::up(DORA_ATTEMPTS),
    M::up(ALERT_TABLES),
    M::up(DROP_LEGACY_VERSIONS),
];

/// How many migrations this build knows.
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Maps a database from before the one schema history onto it. Such a database kept its DORA
/// schema version in `schema_version` (1 or 2) and the alerting tables' in
/// `alerting_schema_version` (1), with `user_version` 0. The DORA version is the number of
/// migrations already applied; when the alerting tables also exist and DORA is at 2, the
/// alerting migration has run too. (Alerting tables beside an older DORA schema are kept by the
/// `IF NOT EXISTS` of their migration.)
fn adopt_legacy(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    let user_version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let has = |table: &str| -> Result<bool, rusqlite::Error> {
        tx.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    };
    if user_version != 0 || !(has("schema_version")? || has("alerting_schema_version")?) {
        return Ok(());
    }
    let version = |table: &str| -> Result<i64, rusqlite::Error> {
        if !has(table)? {
            return Ok(0);
        }
        tx.query_row(&format!("SELECT max(version) FROM {table}"), [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .map(Option::unwrap_or_default)
    };
    let dora = version("schema_version")?;
    let alerting = version("alerting_schema_version")?;
    if dora > 2 || alerting > 1 {
        return Err(StoreError::TooNew {
            found: dora.max(alerting),
            supported: SCHEMA_VERSION,
        });
    }
    let adopted = if dora == 2 && alerting == 1 { 3 } else { dora };
    tx.pragma_update(None, "user_version", adopted)?;
    tx.commit()?;
    Ok(())
}

/// One change to an incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncidentChange {
    /// Opens an incident (or records one already resolved); ignored if the id exists.
    Open(Incident),
    /// Resolves an open incident at this time; ignored if unknown or already resolved.
    Resolve {
        /// Incident id.
        id: String,
        /// When it was resolved.
        at: UnixSeconds,
        /// The deployment that resolved it, if known.
        by_deployment: Option<String>,
    },
}

/// Everything one incoming event implies, written in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// `(source, delivery id)` of the webhook delivery; a redelivery writes nothing.
    pub delivery: Option<(String, String)>,
    /// A deployment, and the repository whose pushed commits it takes (see `pending`).
    pub deployment: Option<(Deployment, Option<String>)>,
    /// Incident changes.
    pub incidents: Vec<IncidentChange>,
    /// Pushed commits remembered for the next deployment of that repository.
    pub pending: Vec<(String, Change)>,
}

/// What a [`Batch`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The delivery id was seen before: nothing was written.
    pub duplicate_delivery: bool,
    /// The deployment was new (false: an earlier one had its id or version).
    pub deployment_new: bool,
    /// Incident changes that took effect.
    pub incidents_changed: usize,
    /// Pushed commits newly remembered.
    pub pending_new: usize,
    /// The new deployment as stored (with the pushed commits it took), as `load` returns it.
    pub stored_deployment: Option<Deployment>,
    /// Every incident a change took effect on, as stored after the change.
    pub stored_incidents: Vec<Incident>,
}

impl Outcome {
    /// Whether anything was written.
    pub fn changed(&self) -> bool {
        self.deployment_new || self.incidents_changed > 0 || self.pending_new > 0
    }
}

/// The store, used from one thread.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) `<dir>/sidelight.db` and migrates it to the latest schema.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let conn = Connection::open(dir.join(DB_FILE))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut store = Self { conn };
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing store read-only-in-spirit (the CLI): same as `open`.
    pub fn open_existing(dir: &Path) -> Result<Self, StoreError> {
        Self::open(dir)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        adopt_legacy(&mut self.conn)?;
        let found: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Migrations::from_slice(MIGRATIONS).to_latest(&mut self.conn)?;
        Ok(())
    }

    /// The connection, for the tables other modules own (alerting state).
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Writes one event in one transaction.
    pub fn apply(&mut self, batch: &Batch, now: UnixSeconds) -> Result<Outcome, StoreError> {
        let tx = self.conn.transaction()?;
        let out = apply_in(&tx, batch, now)?;
        tx.commit()?;
        Ok(out)
    }

    /// Writes several events in one transaction (one fsync), each in its own savepoint.
    pub fn apply_group(
        &mut self,
        batches: &[&Batch],
        now: UnixSeconds,
    ) -> Result<Vec<Result<Outcome, StoreError>>, StoreError> {
        let mut tx = self.conn.transaction()?;
        let mut results = Vec::with_capacity(batches.len());
        for b in batches {
            let sp = tx.savepoint()?;
            match apply_in(&sp, b, now) {
                Ok(o) => {
                    sp.commit()?;
                    results.push(Ok(o));
                }
                Err(e) => {
                    drop(sp); // rolls back this event only
                    results.push(Err(e));
                }
            }
        }
        tx.commit()?;
        Ok(results)
    }

    /// Every event with a time at or after `since` (deployments by finish, incidents by start
    /// or still open).
    pub fn load(&self, since: UnixSeconds) -> Result<Events, StoreError> {
        let mut events = Events::default();
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, body FROM deployments WHERE finished_at >= ?1 ORDER BY finished_at, id",
        )?;
        let rows = stmt.query_map([since], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (id, body) = row?;
            let mut d: Deployment =
                serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
                    table: "deployments",
                    reason: e.to_string(),
                })?;
            d.commits = commits_of(&self.conn, &id)?;
            events.deployments.push(d);
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT body FROM incidents WHERE started_at >= ?1 OR resolved_at IS NULL
                OR resolved_at >= ?1 ORDER BY started_at, id",
        )?;
        let rows = stmt.query_map([since], |r| r.get::<_, String>(0))?;
        for row in rows {
            let i: Incident = serde_json::from_str(&row?).map_err(|e| StoreError::Corrupt {
                table: "incidents",
                reason: e.to_string(),
            })?;
            events.incidents.push(i);
        }
        Ok(events)
    }

    /// The latest deploy events of `service` in `environment`, newest first (by finish time,
    /// then id), only successful ones when `success_only`; at most `limit`.
    pub fn recent_deployments(
        &self,
        service: &str,
        environment: &str,
        success_only: bool,
        limit: usize,
    ) -> Result<Vec<Deployment>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT body FROM deployments WHERE service = ?1 AND environment = ?2
             ORDER BY finished_at DESC, id DESC",
        )?;
        let mut rows = stmt.query(params![service, environment])?;
        let mut out = Vec::new();
        while out.len() < limit
            && let Some(row) = rows.next()?
        {
            let body: String = row.get(0)?;
            let d: Deployment = serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
                table: "deployments",
                reason: e.to_string(),
            })?;
            if !success_only || d.status == crate::dora::DeployStatus::Success {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// The deployment with this id, if stored.
    pub fn deployment(&self, id: &str) -> Result<Option<Deployment>, StoreError> {
        let body: Option<String> = self
            .conn
            .query_row("SELECT body FROM deployments WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        body.map(|b| {
            serde_json::from_str(&b).map_err(|e| StoreError::Corrupt {
                table: "deployments",
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    /// Deletes everything older than `cutoff`; returns the rows deleted.
    pub fn retain(&mut self, cutoff: UnixSeconds) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let mut n = tx.execute("DELETE FROM deployments WHERE finished_at < ?1", [cutoff])?;
        n += tx.execute(
            "DELETE FROM incidents WHERE started_at < ?1 AND (resolved_at IS NULL OR resolved_at < ?1)",
            [cutoff],
        )?;
        n += tx.execute(
            "DELETE FROM webhook_deliveries WHERE received_at < ?1",
            [cutoff],
        )?;
        n += tx.execute("DELETE FROM pending_changes WHERE timestamp < ?1", [cutoff])?;
        tx.commit()?;
        Ok(n)
    }
}

/// A stored deployment's commits, in the order `load` returns them.
fn commits_of(conn: &Connection, deployment_id: &str) -> Result<Vec<Change>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT sha, timestamp, pr_first_commit_at FROM deployment_commits
         WHERE deployment_id = ?1 ORDER BY timestamp, sha",
    )?;
    let commits = stmt
        .query_map([deployment_id], |r| {
            Ok(Change {
                sha: r.get(0)?,
                timestamp: r.get(1)?,
                pr_first_commit_at: r.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(commits)
}

fn apply_in(tx: &Connection, batch: &Batch, now: UnixSeconds) -> Result<Outcome, StoreError> {
    let mut out = Outcome::default();
    if let Some((source, id)) = &batch.delivery {
        let n = tx.execute(
            "INSERT INTO webhook_deliveries (source, delivery_id, received_at) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
            params![source, id, now],
        )?;
        if n == 0 {
            out.duplicate_delivery = true;
            return Ok(out);
        }
    }
    for (repo, c) in &batch.pending {
        out.pending_new += tx.execute(
            "INSERT INTO pending_changes (repo, sha, timestamp, pr_first_commit_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (repo, sha) DO UPDATE SET pr_first_commit_at =
                coalesce(excluded.pr_first_commit_at, pr_first_commit_at)",
            params![repo, c.sha, c.timestamp, c.pr_first_commit_at],
        )?;
    }
    if let Some((d, repo)) = &batch.deployment {
        let mut body = d.clone();
        let mut commits = std::mem::take(&mut body.commits);
        let json = serde_json::to_string(&body).map_err(|e| StoreError::Corrupt {
            table: "deployments",
            reason: e.to_string(),
        })?;
        let n = tx.execute(
            "INSERT INTO deployments (id, service, environment, version, finished_at, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
            params![
                d.id,
                d.service,
                d.environment,
                d.version,
                d.finished_at,
                json
            ],
        )?;
        out.deployment_new = n == 1;
        if out.deployment_new {
            if let Some(repo) = repo {
                let mut stmt = tx.prepare_cached(
                    "DELETE FROM pending_changes WHERE repo = ?1 AND timestamp <= ?2
                     RETURNING sha, timestamp, pr_first_commit_at",
                )?;
                let linked = stmt
                    .query_map(params![repo, d.finished_at], |r| {
                        Ok(Change {
                            sha: r.get(0)?,
                            timestamp: r.get(1)?,
                            pr_first_commit_at: r.get(2)?,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                commits.extend(linked);
            }
            let mut stmt = tx.prepare_cached(
                "INSERT INTO deployment_commits (deployment_id, sha, timestamp, pr_first_commit_at)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )?;
            for c in &commits {
                stmt.execute(params![d.id, c.sha, c.timestamp, c.pr_first_commit_at])?;
            }
            body.commits = commits_of(tx, &d.id)?;
            out.stored_deployment = Some(body);
        }
    }
    for change in &batch.incidents {
        out.incidents_changed += match change {
            IncidentChange::Open(i) => {
                let json = serde_json::to_string(i).map_err(|e| StoreError::Corrupt {
                    table: "incidents",
                    reason: e.to_string(),
                })?;
                let n = tx.execute(
                    "INSERT INTO incidents (id, started_at, resolved_at, body) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT DO NOTHING",
                    params![i.id, i.started_at, i.resolved_at, json],
                )?;
                if n > 0 {
                    out.stored_incidents.push(i.clone());
                }
                n
            }
            IncidentChange::Resolve {
                id,
                at,
                by_deployment,
            } => {
                let body: Option<String> = tx
                    .query_row(
                        "SELECT body FROM incidents WHERE id = ?1 AND resolved_at IS NULL",
                        [id],
                        |r| r.get(0),
                    )
                    .optional()?;
                match body {
                    None => 0,
                    Some(body) => {
                        let mut i: Incident =
                            serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
                                table: "incidents",
                                reason: e.to_string(),
                            })?;
                        i.resolved_at = Some((*at).max(i.started_at));
                        if by_deployment.is_some() {
                            i.resolved_by_deployment.clone_from(by_deployment);
                        }
                        let json = serde_json::to_string(&i).map_err(|e| StoreError::Corrupt {
                            table: "incidents",
                            reason: e.to_string(),
                        })?;
                        let n = tx.execute(
                            "UPDATE incidents SET resolved_at = ?2, body = ?3 WHERE id = ?1",
                            params![id, i.resolved_at, json],
                        )?;
                        if n > 0 {
                            out.stored_incidents.push(i);
                        }
                        n
                    }
                }
            }
        };
    }
    Ok(out)
}

type Reply<T> = tokio::sync::oneshot::Sender<Result<T, StoreError>>;

/// Work run on the store thread with the connection.
type Job = Box<dyn FnOnce(&mut Store) + Send>;

/// What `StoreHandle::recent_deployments` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentQuery {
    /// Service.
    pub service: String,
    /// Environment.
    pub environment: String,
    /// Only successful deploy events.
    pub success_only: bool,
    /// At most this many.
    pub limit: usize,
}

enum Request {
    /// A DORA event, committed with the others queued beside it.
    Apply(Box<Batch>, UnixSeconds, Reply<Outcome>),
    /// Anything else, run in queue order after the events before it are committed.
    Call(Job),
}

/// The store on its own thread, reached through a bounded channel (capacity 1024: a caller
/// waits for room, nothing is dropped). Clones share the thread, which ends when every handle
/// is dropped.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    tx: tokio::sync::mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Apply(..) => "Apply",
            Self::Call(_) => "Call",
        })
    }
}

impl StoreHandle {
    /// Opens `<dir>/sidelight.db` (migrating it) off the async runtime and starts its thread.
    pub async fn open(dir: &Path) -> Result<Self, StoreError> {
        let dir = dir.to_owned();
        let store = tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .map_err(|_| StoreError::Closed)??;
        Self::spawn(store)
    }

    /// Moves `store` to a new thread; the thread ends when every handle is dropped.
    pub fn spawn(store: Store) -> Result<Self, StoreError> {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("sidelight-store".into())
            .spawn(move || serve(store, rx))
            .map_err(|source| StoreError::Dir {
                path: PathBuf::from("(store thread)"),
                source,
            })?;
        Ok(Self { tx })
    }

    /// Writes one event durably (returns after the fsync).
    pub async fn apply(&self, batch: Batch, now: UnixSeconds) -> Result<Outcome, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Request::Apply(Box::new(batch), now, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Blocking variant of [`StoreHandle::apply`], for threads outside the runtime.
    pub fn apply_blocking(&self, batch: Batch, now: UnixSeconds) -> Result<Outcome, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .blocking_send(Request::Apply(Box::new(batch), now, reply))
            .map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// Runs `work` on the store thread with the store, after every write queued before it.
    pub async fn call<R, F>(&self, work: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |store| {
            let _ = reply.send(work(store));
        });
        self.tx
            .send(Request::Call(job))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Loads events since `since`.
    pub async fn load(&self, since: UnixSeconds) -> Result<Events, StoreError> {
        self.call(move |s| s.load(since)).await
    }

    /// The latest deploy events of one service (see [`Store::recent_deployments`]).
    pub async fn recent_deployments(
        &self,
        query: RecentQuery,
    ) -> Result<Vec<Deployment>, StoreError> {
        self.call(move |s| {
            s.recent_deployments(
                &query.service,
                &query.environment,
                query.success_only,
                query.limit,
            )
        })
        .await
    }

    /// Deletes events older than `cutoff`.
    pub async fn retain(&self, cutoff: UnixSeconds) -> Result<usize, StoreError> {
        self.call(move |s| s.retain(cutoff)).await
    }
}

fn serve(mut store: Store, mut rx: tokio::sync::mpsc::Receiver<Request>) {
    while let Some(first) = rx.blocking_recv() {
        let mut queued = vec![first];
        while queued.len() < GROUP {
            match rx.try_recv() {
                Ok(r) => queued.push(r),
                Err(_) => break,
            }
        }
        let mut writes: Vec<(Box<Batch>, UnixSeconds, Reply<Outcome>)> = Vec::new();
        for r in queued {
            match r {
                Request::Apply(b, now, reply) => writes.push((b, now, reply)),
                Request::Call(job) => {
                    flush(&mut store, &mut writes);
                    job(&mut store);
                }
            }
        }
        flush(&mut store, &mut writes);
    }
}

fn flush(store: &mut Store, writes: &mut Vec<(Box<Batch>, UnixSeconds, Reply<Outcome>)>) {
    if writes.is_empty() {
        return;
    }
    let now = writes.iter().map(|w| w.1).max().unwrap_or_default();
    let batches: Vec<&Batch> = writes.iter().map(|w| w.0.as_ref()).collect();
    match store.apply_group(&batches, now) {
        Ok(results) => {
            for ((_, _, reply), r) in writes.drain(..).zip(results) {
                let _ = reply.send(r);
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for (_, _, reply) in writes.drain(..) {
                let _ = reply.send(Err(StoreError::Corrupt {
                    table: "(commit)",
                    reason: msg.clone(),
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dora::{DeployStatus, DeploymentKind};
    use std::collections::BTreeMap;

    fn dep(id: &str, version: &str, finished: i64) -> Deployment {
        Deployment {
            id: id.into(),
            service: "api".into(),
            environment: "production".into(),
            version: version.into(),
            commit: "abc".into(),
            status: DeployStatus::Success,
            started_at: finished - 60,
            finished_at: finished,
            commits: vec![Change {
                sha: format!("c-{id}"),
                timestamp: finished - 3600,
                pr_first_commit_at: None,
            }],
            kind: DeploymentKind::Normal,
            fixes_deployment: None,
            resolves_incidents: vec![],
        }
    }

    fn deploy(d: Deployment) -> Batch {
        Batch {
            deployment: Some((d, None)),
            ..Batch::default()
        }
    }

    #[test]
    fn same_id_counts_once_every_attempt_is_kept_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = Store::open(dir.path()).expect("open");
            assert!(
                s.apply(&deploy(dep("d1", "1.0", 1000)), 1000)
                    .expect("apply")
                    .deployment_new
            );
            // Same id, other version.
            assert!(
                !s.apply(&deploy(dep("d1", "2.0", 1000)), 1000)
                    .expect("apply")
                    .deployment_new
            );
            // Same (service, version, environment), other id: another attempt.
            assert!(
                s.apply(&deploy(dep("d2", "1.0", 1100)), 1100)
                    .expect("apply")
                    .deployment_new
            );
            // Empty versions never collide.
            assert!(
                s.apply(&deploy(dep("d3", "", 2000)), 2000)
                    .expect("apply")
                    .deployment_new
            );
            assert!(
                s.apply(&deploy(dep("d4", "", 2000)), 2000)
                    .expect("apply")
                    .deployment_new
            );
        }
        let s = Store::open(dir.path()).expect("reopen migrates nothing");
        let e = s.load(i64::MIN).expect("load");
        assert_eq!(e.deployments.len(), 4);
        assert_eq!(e.deployments[0].commits.len(), 1);
        assert_eq!(e.deployments[0].version, "1.0");
        let recent = s
            .recent_deployments("api", "production", true, 2)
            .expect("recent");
        let ids: Vec<&str> = recent.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["d4", "d3"]);
    }

    /// The SQL of the schema history before it was one, exactly as released: the DORA store's
    /// runner and migrations 1 and 2, and the alerting tables' runner and migration 1.
    mod legacy {
        pub const DORA_VERSION_TABLE: &str =
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)";
        pub const DORA_1: &str = "CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        service TEXT NOT NULL,
        environment TEXT NOT NULL,
        version TEXT NOT NULL,
        finished_at INTEGER NOT NULL,
        body TEXT NOT NULL
     );
     CREATE UNIQUE INDEX deployments_version ON deployments(service, version, environment)
        WHERE version <> '';
     CREATE INDEX deployments_finished ON deployments(finished_at);
     CREATE TABLE deployment_commits (
        deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
        sha TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        pr_first_commit_at INTEGER,
        PRIMARY KEY (deployment_id, sha)
     );
     CREATE TABLE incidents (
        id TEXT PRIMARY KEY,
        started_at INTEGER NOT NULL,
        resolved_at INTEGER,
        body TEXT NOT NULL
     );
     CREATE INDEX incidents_started ON incidents(started_at);
     CREATE TABLE webhook_deliveries (
        source TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        PRIMARY KEY (source, delivery_id)
     );
     CREATE TABLE pending_changes (
        repo TEXT NOT NULL,
        sha TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        pr_first_commit_at INTEGER,
        PRIMARY KEY (repo, sha)
     );";
        pub const DORA_2: &str = "DROP INDEX deployments_version;
     CREATE INDEX deployments_service ON deployments(service, environment, finished_at);";
        pub const ALERTING_VERSION_TABLE: &str =
            "CREATE TABLE IF NOT EXISTS alerting_schema_version (version INTEGER NOT NULL)";
        pub const ALERTING_1: &str =
            "CREATE TABLE alerting_alerts (fingerprint TEXT PRIMARY KEY, body TEXT NOT NULL);
     CREATE TABLE alerting_groups (key TEXT PRIMARY KEY, body TEXT NOT NULL);
     CREATE TABLE alerting_silences (id TEXT PRIMARY KEY, ends_at INTEGER NOT NULL, body TEXT NOT NULL);
     CREATE TABLE alerting_exceptions (
        source TEXT NOT NULL, exception TEXT NOT NULL, first_seen INTEGER NOT NULL,
        PRIMARY KEY (source, exception));
     CREATE TABLE alerting_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);";
    }

    /// Builds a database as the released agent left it: its DORA schema at `dora` (0: never
    /// opened by the hub) and the alerting tables at `alerting`, each runner in its own
    /// transaction as it ran, with rows in every table of each.
    fn legacy_database(dir: &Path, dora: usize, alerting: usize) {
        let mut conn = Connection::open(dir.join(DB_FILE)).expect("create");
        if dora > 0 {
            let tx = conn.transaction().expect("tx");
            tx.execute_batch(legacy::DORA_VERSION_TABLE)
                .expect("version");
            for (i, sql) in [legacy::DORA_1, legacy::DORA_2]
                .iter()
                .take(dora)
                .enumerate()
            {
                tx.execute_batch(sql).expect("migration");
                tx.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    [i as i64 + 1],
                )
                .expect("version row");
            }
            tx.commit().expect("commit");
            let mut failed = dep("api/production/1.2.5", "1.2.5", 1000);
            failed.status = DeployStatus::Failure;
            let mut fix = dep("ci-7", "1.2.6", 2000);
            fix.kind = DeploymentKind::Hotfix;
            fix.fixes_deployment = Some("api/production/1.2.5".into());
            for d in [failed, fix] {
                let mut body = d.clone();
                let commits = std::mem::take(&mut body.commits);
                conn.execute(
                    "INSERT INTO deployments (id, service, environment, version, finished_at, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        d.id,
                        d.service,
                        d.environment,
                        d.version,
                        d.finished_at,
                        serde_json::to_string(&body).expect("json")
                    ],
                )
                .expect("deployment");
                for c in commits {
                    conn.execute(
                        "INSERT INTO deployment_commits (deployment_id, sha, timestamp, pr_first_commit_at)
                         VALUES (?1, ?2, ?3, ?4)",
                        params![d.id, c.sha, c.timestamp, Some(c.timestamp - 60)],
                    )
                    .expect("commit");
                }
            }
            let incident = Incident {
                id: "i1".into(),
                service: "api".into(),
                environment: "production".into(),
                started_at: 1500,
                resolved_at: Some(2100),
                deployment_id: Some("api/production/1.2.5".into()),
                commit: None,
                resolved_by_deployment: Some("ci-7".into()),
            };
            conn.execute(
                "INSERT INTO incidents (id, started_at, resolved_at, body) VALUES ('i1', 1500, 2100, ?1)",
                [serde_json::to_string(&incident).expect("json")],
            )
            .expect("incident");
            conn.execute_batch(
                "INSERT INTO webhook_deliveries VALUES ('github', 'guid-1', 900);
                 INSERT INTO pending_changes VALUES ('org/api', 'p1', 950, NULL);",
            )
            .expect("rows");
        }
        if alerting > 0 {
            let tx = conn.transaction().expect("tx");
            tx.execute_batch(legacy::ALERTING_VERSION_TABLE)
                .expect("version");
            tx.execute_batch(legacy::ALERTING_1).expect("migration");
            tx.execute(
                "INSERT INTO alerting_schema_version (version) VALUES (1)",
                [],
            )
            .expect("version row");
            tx.commit().expect("commit");
            conn.execute_batch(
                r#"INSERT INTO alerting_alerts VALUES ('alertname=X', '{"fingerprint":"alertname=X"}');
                   INSERT INTO alerting_groups VALUES ('g1', '{"key":"g1"}');
                   INSERT INTO alerting_silences VALUES ('s1', 99999, '{"id":"s1"}');
                   INSERT INTO alerting_exceptions VALUES ('app', 'KeyError', 5);
                   INSERT INTO alerting_meta VALUES ('deploy_notice_at', '42');"#,
            )
            .expect("rows");
        }
    }

    /// Every row of every data table, as text, by table.
    fn dump(conn: &Connection) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        for table in [
            "deployments",
            "deployment_commits",
            "incidents",
            "webhook_deliveries",
            "pending_changes",
            "alerting_alerts",
            "alerting_groups",
            "alerting_silences",
            "alerting_exceptions",
            "alerting_meta",
        ] {
            let Ok(mut stmt) = conn.prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2")) else {
                continue;
            };
            let columns = stmt.column_count();
            let rows = stmt
                .query_map([], |r| {
                    let cells: Vec<String> = (0..columns)
                        .map(|c| {
                            r.get::<_, rusqlite::types::Value>(c)
                                .map(|v| format!("{v:?}"))
                        })
                        .collect::<Result<_, _>>()?;
                    Ok(cells.join("|"))
                })
                .expect("query")
                .collect::<Result<Vec<_>, _>>()
                .expect("rows");
            out.insert(table.to_owned(), rows);
        }
        out
    }

    fn user_version(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("user_version")
    }

    /// Databases written by the released agent — DORA schema 1 or 2, with or without the
    /// alerting tables, and alerting alone — migrate into the one history with every row kept,
    /// the old version tables gone, and then work as new ones do.
    #[test]
    fn released_databases_migrate_with_every_row() {
        for (dora, alerting) in [(2, 1), (2, 0), (1, 1), (1, 0), (0, 1)] {
            let case = format!("dora schema {dora}, alerting schema {alerting}");
            let dir = tempfile::tempdir().expect("tempdir");
            legacy_database(dir.path(), dora, alerting);
            let before = dump(&Connection::open(dir.path().join(DB_FILE)).expect("open"));
            let mut s = Store::open(dir.path()).expect(&case);
            assert_eq!(user_version(&s.conn), SCHEMA_VERSION, "{case}");
            let after = dump(&s.conn);
            for (table, rows) in &before {
                assert_eq!(after.get(table), Some(rows), "{case}: {table}");
            }
            assert_eq!(after.len(), 10, "{case}: every table exists: {after:?}");
            let legacy_tables: i64 = s
                .conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master
                     WHERE name IN ('schema_version', 'alerting_schema_version')",
                    [],
                    |r| r.get(0),
                )
                .expect("count");
            assert_eq!(legacy_tables, 0, "{case}");
            if dora > 0 {
                let e = s.load(i64::MIN).expect("load");
                assert_eq!(e.deployments.len(), 2, "{case}");
                assert_eq!(
                    e.deployments[1].fixes_deployment.as_deref(),
                    Some("api/production/1.2.5")
                );
                assert_eq!(
                    e.deployments[1].commits[0].pr_first_commit_at,
                    Some(2000 - 3600 - 60)
                );
                assert_eq!(e.incidents.len(), 1, "{case}");
                // A second attempt of a stored version: schema 1 refused it, schema 2 takes it.
                let retry = dep("ci-42-2", "1.2.5", 1100);
                assert!(
                    s.apply(&deploy(retry), 1100).expect("apply").deployment_new,
                    "{case}"
                );
                let b = Batch {
                    delivery: Some(("github".into(), "guid-1".into())),
                    ..deploy(dep("redelivered", "9", 3000))
                };
                assert!(
                    s.apply(&b, 3000).expect("apply").duplicate_delivery,
                    "{case}"
                );
            }
            drop(s);
            // Reopening migrates nothing and keeps everything.
            let s = Store::open(dir.path()).expect("reopen");
            assert_eq!(user_version(&s.conn), SCHEMA_VERSION);
            let again = dump(&s.conn);
            for (table, rows) in &before {
                if !table.starts_with("deployment") {
                    assert_eq!(again.get(table), Some(rows), "{case}: {table} after reopen");
                }
            }
        }
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::open(dir.path()).expect("open"));
        let conn = Connection::open(dir.path().join(DB_FILE)).expect("open");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("bump");
        drop(conn);
        match Store::open(dir.path()) {
            Err(StoreError::TooNew { found, supported }) => {
                assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            other => panic!("{other:?}"),
        }
        let dir = tempfile::tempdir().expect("tempdir");
        legacy_database(dir.path(), 0, 0);
        let conn = Connection::open(dir.path().join(DB_FILE)).expect("open");
        conn.execute_batch(
            "CREATE TABLE schema_version (version INTEGER NOT NULL);
             INSERT INTO schema_version VALUES (3);",
        )
        .expect("newer legacy");
        drop(conn);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::TooNew { found: 3, .. })
        ));
    }

    #[test]
    fn the_migrations_are_valid() {
        Migrations::from_slice(MIGRATIONS)
            .validate()
            .expect("valid");
    }

    #[test]
    fn redelivered_webhook_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Store::open(dir.path()).expect("open");
        let mut b = deploy(dep("d1", "1.0", 1000));
        b.delivery = Some(("github".into(), "guid-1".into()));
        let first = s.apply(&b, 1000).expect("apply");
        assert!(first.deployment_new && !first.duplicate_delivery);
        let again = s.apply(&b, 1001).expect("apply");
        assert!(again.duplicate_delivery && !again.changed());
        assert_eq!(s.load(0).expect("load").deployments.len(), 1);
    }

    #[test]
    fn pushed_commits_link_to_the_next_deployment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Store::open(dir.path()).expect("open");
        let push = Batch {
            pending: vec![(
                "org/api".into(),
                Change {
                    sha: "p1".into(),
                    timestamp: 500,
                    pr_first_commit_at: None,
                },
            )],
            ..Batch::default()
        };
        assert_eq!(s.apply(&push, 500).expect("apply").pending_new, 1);
        let mut d = dep("d1", "1.0", 1000);
        d.commits.clear();
        let b = Batch {
            deployment: Some((d, Some("org/api".into()))),
            ..Batch::default()
        };
        let out = s.apply(&b, 1000).expect("apply");
        let e = s.load(0).expect("load");
        assert_eq!(e.deployments[0].commits[0].sha, "p1");
        assert_eq!(
            out.stored_deployment.as_ref(),
            Some(&e.deployments[0]),
            "the outcome carries the deployment as stored"
        );
        // Consumed: the next deployment does not take it again.
        let b = Batch {
            deployment: Some((dep("d2", "2.0", 2000), Some("org/api".into()))),
            ..Batch::default()
        };
        s.apply(&b, 2000).expect("apply");
        let e = s.load(0).expect("load");
        assert_eq!(e.deployments[1].commits.len(), 1);
    }

    #[test]
    fn incidents_open_and_resolve_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Store::open(dir.path()).expect("open");
        let open = Incident {
            id: "i1".into(),
            service: "api".into(),
            environment: "production".into(),
            started_at: 100,
            resolved_at: None,
            deployment_id: Some("d1".into()),
            commit: None,
            resolved_by_deployment: None,
        };
        let b = |c| Batch {
            incidents: vec![c],
            ..Batch::default()
        };
        assert_eq!(
            s.apply(&b(IncidentChange::Open(open.clone())), 100)
                .expect("a")
                .incidents_changed,
            1
        );
        assert_eq!(
            s.apply(&b(IncidentChange::Open(open)), 100)
                .expect("a")
                .incidents_changed,
            0
        );
        let resolve = IncidentChange::Resolve {
            id: "i1".into(),
            at: 400,
            by_deployment: None,
        };
        let resolved = s.apply(&b(resolve.clone()), 400).expect("a");
        assert_eq!(resolved.incidents_changed, 1);
        assert_eq!(resolved.stored_incidents[0].resolved_at, Some(400));
        let again = s.apply(&b(resolve), 500).expect("a");
        assert_eq!(again.incidents_changed, 0);
        assert!(again.stored_incidents.is_empty());
        let e = s.load(0).expect("load");
        assert_eq!(e.incidents[0].resolved_at, Some(400));
    }

    #[test]
    fn retention_deletes_old_events_and_their_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Store::open(dir.path()).expect("open");
        s.apply(&deploy(dep("old", "1", 1_000)), 1_000)
            .expect("apply");
        s.apply(&deploy(dep("new", "2", 10_000)), 10_000)
            .expect("apply");
        let deleted = s.retain(5_000).expect("retain");
        assert!(deleted >= 1);
        let e = s.load(i64::MIN).expect("load");
        assert_eq!(e.deployments.len(), 1);
        assert_eq!(e.deployments[0].id, "new");
        let orphans: i64 = s
            .conn
            .query_row(
                "SELECT count(*) FROM deployment_commits WHERE deployment_id = 'old'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(orphans, 0);
    }

    #[test]
    fn a_bad_event_in_a_group_rolls_back_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Store::open(dir.path()).expect("open");
        s.conn
            .execute_batch("CREATE TRIGGER no_bad BEFORE INSERT ON deployment_commits WHEN NEW.sha = 'c-bad' BEGIN SELECT RAISE(ABORT, 'bad'); END;")
            .expect("trigger");
        let good = deploy(dep("good", "1", 1000));
        let bad = deploy(dep("bad", "2", 1000));
        let r = s.apply_group(&[&good, &bad], 1000).expect("group");
        assert!(r[0].is_ok() && r[1].is_err());
        let e = s.load(0).expect("load");
        assert_eq!(
            e.deployments.len(),
            1,
            "the bad deployment row is rolled back with its commits"
        );
    }

    #[tokio::test]
    async fn handle_runs_off_the_runtime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = StoreHandle::spawn(Store::open(dir.path()).expect("open")).expect("spawn");
        let o = h
            .apply(deploy(dep("d1", "1", 1000)), 1000)
            .await
            .expect("apply");
        assert!(o.deployment_new);
        assert_eq!(h.load(0).await.expect("load").deployments.len(), 1);
        assert_eq!(h.retain(5000).await.expect("retain"), 1);
        let tables: i64 = h
            .call(|s| {
                Ok(s.connection().query_row(
                    "SELECT count(*) FROM sqlite_master WHERE name LIKE 'alerting_%'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
            .expect("call");
        assert_eq!(tables, 5, "the alerting tables are in the same schema");
    }
}
