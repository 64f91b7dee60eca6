//! The durable DORA event store: embedded SQLite (`<store.path>/sidelight.db`, WAL,
//! `synchronous=FULL`, so a write acknowledged is a write on disk).
//!
//! Every event is written with everything it implies (its commits, the webhook delivery that
//! carried it, the pushed commits it links) in one transaction: nothing is half-written.
//! Writes are idempotent — the same webhook delivery id or deployment id is stored once
//! (`INSERT ... ON CONFLICT DO NOTHING`) and the caller learns whether the event was new.
//! Every deploy attempt is its own row: a failure and its successful retry of one version, or
//! a rollback to an earlier version, are separate events (schema 2; schema 1 kept one row per
//! (service, version, environment)). What they mean for DORA is decided by `dora::compute`.
//!
//! [`Store`] is synchronous. [`StoreHandle`] owns it on a dedicated thread fed by a bounded
//! channel, so no database call runs on the async runtime; the thread commits whatever requests
//! are queued together (group commit, one fsync) while each event keeps its own savepoint, so
//! one bad event never takes the others with it.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

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

/// Schema migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    // 1: deployments, their commits, incidents, webhook deliveries, pushed commits awaiting a deploy.
    "CREATE TABLE deployments (
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
     );",
    // 2: every deploy attempt is an event of its own (a retried version, a rollback): the
    // (service, version, environment) uniqueness goes; deployments are looked up by service.
    "DROP INDEX deployments_version;
     CREATE INDEX deployments_service ON deployments(service, environment, finished_at);",
];

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The delivery id was seen before: nothing was written.
    pub duplicate_delivery: bool,
    /// The deployment was new (false: an earlier one had its id or version).
    pub deployment_new: bool,
    /// Incident changes that took effect.
    pub incidents_changed: usize,
    /// Pushed commits newly remembered.
    pub pending_new: usize,
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
    /// Opens (creating if needed) `<dir>/sidelight.db` and migrates it.
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
        let tx = self.conn.transaction()?;
        tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
        let current: i64 = tx
            .query_row("SELECT max(version) FROM schema_version", [], |r| {
                r.get::<_, Option<i64>>(0)
            })?
            .unwrap_or(0);
        let supported = MIGRATIONS.len() as i64;
        if current > supported {
            return Err(StoreError::TooNew {
                found: current,
                supported,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [i as i64 + 1],
            )?;
        }
        tx.commit()?;
        Ok(())
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
        let mut commits = self.conn.prepare_cached(
            "SELECT sha, timestamp, pr_first_commit_at FROM deployment_commits
             WHERE deployment_id = ?1 ORDER BY timestamp, sha",
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
            d.commits = commits
                .query_map([&id], |r| {
                    Ok(Change {
                        sha: r.get(0)?,
                        timestamp: r.get(1)?,
                        pr_first_commit_at: r.get(2)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
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
        }
    }
    for change in &batch.incidents {
        out.incidents_changed += match change {
            IncidentChange::Open(i) => {
                let json = serde_json::to_string(i).map_err(|e| StoreError::Corrupt {
                    table: "incidents",
                    reason: e.to_string(),
                })?;
                tx.execute(
                    "INSERT INTO incidents (id, started_at, resolved_at, body) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT DO NOTHING",
                    params![i.id, i.started_at, i.resolved_at, json],
                )?
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
                        tx.execute(
                            "UPDATE incidents SET resolved_at = ?2, body = ?3 WHERE id = ?1",
                            params![id, i.resolved_at, json],
                        )?
                    }
                }
            }
        };
    }
    Ok(out)
}

type Reply<T> = tokio::sync::oneshot::Sender<Result<T, StoreError>>;

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
    Apply(Box<Batch>, UnixSeconds, Reply<Outcome>),
    Load(UnixSeconds, Reply<Events>),
    Retain(UnixSeconds, Reply<usize>),
    Recent(RecentQuery, Reply<Vec<Deployment>>),
}

/// The store on its own thread, reached through a bounded channel.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    tx: tokio::sync::mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Request")
    }
}

impl StoreHandle {
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

    /// Loads events since `since`.
    pub async fn load(&self, since: UnixSeconds) -> Result<Events, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Request::Load(since, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The latest deploy events of one service (see [`Store::recent_deployments`]).
    pub async fn recent_deployments(
        &self,
        query: RecentQuery,
    ) -> Result<Vec<Deployment>, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Request::Recent(query, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Deletes events older than `cutoff`.
    pub async fn retain(&self, cutoff: UnixSeconds) -> Result<usize, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Request::Retain(cutoff, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
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
                Request::Load(since, reply) => {
                    flush(&mut store, &mut writes);
                    let _ = reply.send(store.load(since));
                }
                Request::Retain(cutoff, reply) => {
                    flush(&mut store, &mut writes);
                    let _ = reply.send(store.retain(cutoff));
                }
                Request::Recent(q, reply) => {
                    flush(&mut store, &mut writes);
                    let _ = reply.send(store.recent_deployments(
                        &q.service,
                        &q.environment,
                        q.success_only,
                        q.limit,
                    ));
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

    /// A database written by schema 1 (one row per service, version and environment) opens,
    /// keeps its rows, and then takes a second attempt of a stored version.
    #[test]
    fn schema_1_database_migrates() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).expect("create");
            conn.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) VALUES (1);",
            )
            .expect("version table");
            conn.execute_batch(MIGRATIONS[0]).expect("schema 1");
            let mut old = dep("api/production/1.2.5", "1.2.5", 1000);
            old.status = DeployStatus::Failure;
            let commits = std::mem::take(&mut old.commits);
            conn.execute(
                "INSERT INTO deployments (id, service, environment, version, finished_at, body)
                 VALUES (?1, 'api', 'production', '1.2.5', 1000, ?2)",
                params![old.id, serde_json::to_string(&old).expect("json")],
            )
            .expect("row");
            conn.execute(
                "INSERT INTO deployment_commits (deployment_id, sha, timestamp) VALUES (?1, ?2, ?3)",
                params![old.id, commits[0].sha, commits[0].timestamp],
            )
            .expect("commit");
            // Schema 1 refuses the retry.
            assert!(
                conn.execute(
                    "INSERT INTO deployments (id, service, environment, version, finished_at, body)
                     VALUES ('retry', 'api', 'production', '1.2.5', 1100, '{}')",
                    [],
                )
                .is_err()
            );
        }
        let mut s = Store::open(dir.path()).expect("migrates");
        let version: i64 = s
            .conn
            .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, 2);
        let retry = dep("ci-42-2", "1.2.5", 1100);
        assert!(s.apply(&deploy(retry), 1100).expect("apply").deployment_new);
        let e = s.load(i64::MIN).expect("load");
        let got: Vec<(&str, DeployStatus, usize)> = e
            .deployments
            .iter()
            .map(|d| (d.id.as_str(), d.status, d.commits.len()))
            .collect();
        assert_eq!(
            got,
            [
                ("api/production/1.2.5", DeployStatus::Failure, 1),
                ("ci-42-2", DeployStatus::Success, 1)
            ]
        );
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
        s.apply(&b, 1000).expect("apply");
        let e = s.load(0).expect("load");
        assert_eq!(e.deployments[0].commits[0].sha, "p1");
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
        assert_eq!(
            s.apply(&b(resolve.clone()), 400)
                .expect("a")
                .incidents_changed,
            1
        );
        assert_eq!(s.apply(&b(resolve), 500).expect("a").incidents_changed, 0);
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
    }
}
