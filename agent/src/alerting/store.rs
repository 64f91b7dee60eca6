//! Alerting state in the agent's one database (see [`crate::store`], which owns the
//! connection and the schema): current alerts, notification groups (what was last delivered,
//! the Slack message to update, who acked), silences made through the API or chat, first
//! sightings of exception types, and small markers (last deploy notice, last digest). Every
//! change is one transaction, run on the store thread.

use rusqlite::{Connection, OptionalExtension, params};

use super::alert::Alert;
use super::alert::Millis;
use super::notify::{Group, Silence};
use crate::store::{StoreError, StoreHandle};

/// Everything loaded at start.
#[derive(Debug, Default)]
pub struct Persisted {
    /// Current alerts.
    pub alerts: Vec<Alert>,
    /// Notification groups.
    pub groups: Vec<Group>,
    /// Silences not yet expired.
    pub silences: Vec<Silence>,
    /// First sightings of exception types.
    pub exceptions: Vec<(String, String, Millis)>,
}

/// The alerting tables, reached through the store thread.
#[derive(Debug, Clone)]
pub struct AlertStore {
    db: StoreHandle,
}

fn corrupt(table: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        table,
        reason: e.to_string(),
    }
}

fn json<T: serde::Serialize>(table: &'static str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| corrupt(table, e))
}

fn upsert_group(conn: &Connection, key: &str, group: Option<&Group>) -> Result<(), StoreError> {
    match group {
        Some(g) => conn.execute(
            "INSERT INTO alerting_groups (key, body) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET body = excluded.body",
            params![key, json("alerting_groups", g)?],
        )?,
        None => conn.execute("DELETE FROM alerting_groups WHERE key = ?1", [key])?,
    };
    Ok(())
}

fn load(conn: &Connection, now: Millis) -> Result<Persisted, StoreError> {
    conn.execute("DELETE FROM alerting_silences WHERE ends_at <= ?1", [now])?;
    let mut p = Persisted::default();
    let mut stmt = conn.prepare("SELECT body FROM alerting_alerts")?;
    for row in stmt.query_map([], |r| r.get::<_, String>(0))? {
        p.alerts
            .push(serde_json::from_str(&row?).map_err(|e| corrupt("alerting_alerts", e))?);
    }
    let mut stmt = conn.prepare("SELECT body FROM alerting_groups")?;
    for row in stmt.query_map([], |r| r.get::<_, String>(0))? {
        p.groups
            .push(serde_json::from_str(&row?).map_err(|e| corrupt("alerting_groups", e))?);
    }
    let mut stmt = conn.prepare("SELECT body FROM alerting_silences")?;
    for row in stmt.query_map([], |r| r.get::<_, String>(0))? {
        let mut s: Silence =
            serde_json::from_str(&row?).map_err(|e| corrupt("alerting_silences", e))?;
        s.compile().map_err(|e| corrupt("alerting_silences", e))?;
        p.silences.push(s);
    }
    let mut stmt = conn.prepare("SELECT source, exception, first_seen FROM alerting_exceptions")?;
    for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))? {
        p.exceptions.push(row?);
    }
    Ok(p)
}

impl AlertStore {
    /// The alerting tables of the store behind `db`.
    pub fn new(db: StoreHandle) -> Self {
        Self { db }
    }

    /// Loads everything; silences that ended before `now` are deleted.
    pub async fn load(&self, now: Millis) -> Result<Persisted, StoreError> {
        self.db.call(move |s| load(s.connection(), now)).await
    }

    /// Writes one evaluation's changes (and drops the groups that emptied) in one transaction.
    pub async fn save_alerts(
        &self,
        changed: Vec<Alert>,
        removed: Vec<String>,
        exceptions: Vec<(String, String, Millis)>,
        removed_groups: Vec<String>,
    ) -> Result<(Vec<Alert>, Vec<String>), StoreError> {
        self.db
            .call(move |s| {
                let tx = s.connection().transaction()?;
                for a in &changed {
                    tx.execute(
                        "INSERT INTO alerting_alerts (fingerprint, body) VALUES (?1, ?2)
                         ON CONFLICT (fingerprint) DO UPDATE SET body = excluded.body",
                        params![a.fingerprint, json("alerting_alerts", a)?],
                    )?;
                }
                for fp in &removed {
                    tx.execute("DELETE FROM alerting_alerts WHERE fingerprint = ?1", [fp])?;
                }
                for (s, e, t) in &exceptions {
                    tx.execute(
                        "INSERT INTO alerting_exceptions (source, exception, first_seen)
                         VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                        params![s, e, t],
                    )?;
                }
                for k in &removed_groups {
                    upsert_group(&tx, k, None)?;
                }
                tx.commit()?;
                Ok((changed, removed))
            })
            .await
    }

    /// Writes (or, with `None`, deletes) one group.
    pub async fn save_group(&self, key: String, group: Option<Group>) -> Result<(), StoreError> {
        self.db
            .call(move |s| upsert_group(s.connection(), &key, group.as_ref()))
            .await
    }

    /// Writes several groups in one transaction.
    pub async fn save_groups(&self, groups: Vec<Group>) -> Result<(), StoreError> {
        self.db
            .call(move |s| {
                let tx = s.connection().transaction()?;
                for g in &groups {
                    upsert_group(&tx, &g.key, Some(g))?;
                }
                tx.commit()?;
                Ok(())
            })
            .await
    }

    /// Writes a silence.
    pub async fn save_silence(&self, silence: Silence) -> Result<(), StoreError> {
        self.db
            .call(move |s| {
                s.connection().execute(
                    "INSERT INTO alerting_silences (id, ends_at, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (id) DO UPDATE SET ends_at = excluded.ends_at, body = excluded.body",
                    params![silence.id, silence.ends_at, json("alerting_silences", &silence)?],
                )?;
                Ok(())
            })
            .await
    }

    /// Deletes a silence; whether it existed.
    pub async fn delete_silence(&self, id: String) -> Result<bool, StoreError> {
        self.db
            .call(move |s| {
                Ok(s.connection()
                    .execute("DELETE FROM alerting_silences WHERE id = ?1", [id])?
                    > 0)
            })
            .await
    }

    /// A marker value.
    pub async fn meta(&self, key: String) -> Result<Option<String>, StoreError> {
        self.db
            .call(move |s| {
                Ok(s.connection()
                    .query_row(
                        "SELECT value FROM alerting_meta WHERE key = ?1",
                        [key],
                        |r| r.get(0),
                    )
                    .optional()?)
            })
            .await
    }

    /// Sets a marker value.
    pub async fn set_meta(&self, key: String, value: String) -> Result<(), StoreError> {
        self.db
            .call(move |s| {
                s.connection().execute(
                    "INSERT INTO alerting_meta (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![key, value],
                )?;
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerting::alert::State;
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn round_trip_through_the_store_thread() {
        let dir = tempfile::tempdir().expect("dir");
        let s = AlertStore::new(StoreHandle::open(dir.path()).await.expect("open"));
        let a = Alert {
            fingerprint: "alertname=X".into(),
            labels: BTreeMap::from([("alertname".into(), "X".into())]),
            summary: "x".into(),
            runbook: None,
            dashboard: None,
            value: 2.0,
            external: Vec::new(),
            state: State::Firing,
            active_at: 1,
            fired_at: Some(2),
            resolved_at: None,
            last_active: 3,
        };
        s.save_alerts(
            vec![a.clone()],
            vec![],
            vec![("app".into(), "KeyError".into(), 5)],
            vec![],
        )
        .await
        .expect("save");
        let live = Silence::new(
            "s1".into(),
            vec!["a=\"b\"".into()],
            0,
            100,
            "t".into(),
            String::new(),
        )
        .expect("silence");
        let old = Silence::new(
            "s2".into(),
            vec!["a=\"b\"".into()],
            0,
            10,
            "t".into(),
            String::new(),
        )
        .expect("silence");
        s.save_silence(live).await.expect("silence");
        s.save_silence(old).await.expect("silence");
        s.set_meta("deploy_notice".into(), "42".into())
            .await
            .expect("meta");
        drop(s);
        let s = AlertStore::new(StoreHandle::open(dir.path()).await.expect("reopen"));
        let p = s.load(50).await.expect("load");
        assert_eq!(p.alerts, vec![a]);
        assert_eq!(p.silences.len(), 1);
        assert_eq!(p.silences[0].id, "s1");
        assert!(p.silences[0].mutes(&BTreeMap::from([("a".into(), "b".into())]), 50));
        assert_eq!(p.exceptions, vec![("app".into(), "KeyError".into(), 5)]);
        assert_eq!(
            s.meta("deploy_notice".into())
                .await
                .expect("meta")
                .as_deref(),
            Some("42")
        );
        s.save_alerts(vec![], vec!["alertname=X".into()], vec![], vec![])
            .await
            .expect("remove");
        assert!(s.load(50).await.expect("load").alerts.is_empty());
        assert!(s.delete_silence("s1".into()).await.expect("delete"));
        assert!(!s.delete_silence("s1".into()).await.expect("delete"));
    }
}
