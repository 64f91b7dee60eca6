//! Alerting state in the agent's SQLite file (`<store.path>/sidelight.db`, WAL,
//! `synchronous=FULL`), in tables of its own with their own schema version: current alerts,
//! notification groups (what was last delivered, the Slack message to update, who acked),
//! silences made through the API or chat, first sightings of exception types, and small
//! markers (last deploy notice, last digest). Every change is one transaction. Calls are
//! blocking: the caller runs them in `spawn_blocking`.

use std::path::Path;

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};

use super::eval::Alert;
use super::notify::{Group, Silence};
use super::rules::Millis;
use crate::store::{DB_FILE, StoreError};

const MIGRATIONS: &[&str] = &[
    // 1
    "CREATE TABLE alerting_alerts (fingerprint TEXT PRIMARY KEY, body TEXT NOT NULL);
     CREATE TABLE alerting_groups (key TEXT PRIMARY KEY, body TEXT NOT NULL);
     CREATE TABLE alerting_silences (id TEXT PRIMARY KEY, ends_at INTEGER NOT NULL, body TEXT NOT NULL);
     CREATE TABLE alerting_exceptions (
        source TEXT NOT NULL, exception TEXT NOT NULL, first_seen INTEGER NOT NULL,
        PRIMARY KEY (source, exception));
     CREATE TABLE alerting_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
];

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

/// The alerting tables.
#[derive(Debug)]
pub struct AlertStore {
    conn: Mutex<Connection>,
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

impl AlertStore {
    /// Opens (creating if needed) the tables in `<dir>/sidelight.db`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let mut conn = Connection::open(dir.join(DB_FILE))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let tx = conn.transaction()?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS alerting_schema_version (version INTEGER NOT NULL)",
        )?;
        let current: i64 = tx
            .query_row(
                "SELECT max(version) FROM alerting_schema_version",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )?
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
                "INSERT INTO alerting_schema_version (version) VALUES (?1)",
                [i as i64 + 1],
            )?;
        }
        tx.commit()?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// Loads everything; silences that ended before `now` are deleted.
    pub fn load(&self, now: Millis) -> Result<Persisted, StoreError> {
        let conn = self.conn.lock();
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
        let mut stmt =
            conn.prepare("SELECT source, exception, first_seen FROM alerting_exceptions")?;
        for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))? {
            p.exceptions.push(row?);
        }
        Ok(p)
    }

    /// Writes one evaluation's changes in one transaction.
    pub fn save_alerts(
        &self,
        changed: &[Alert],
        removed: &[String],
        exceptions: &[(String, String, Millis)],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        for a in changed {
            tx.execute(
                "INSERT INTO alerting_alerts (fingerprint, body) VALUES (?1, ?2)
                 ON CONFLICT (fingerprint) DO UPDATE SET body = excluded.body",
                params![a.fingerprint, json("alerting_alerts", a)?],
            )?;
        }
        for fp in removed {
            tx.execute("DELETE FROM alerting_alerts WHERE fingerprint = ?1", [fp])?;
        }
        for (s, e, t) in exceptions {
            tx.execute(
                "INSERT INTO alerting_exceptions (source, exception, first_seen) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
                params![s, e, t],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Writes (or, with `None`, deletes) one group.
    pub fn save_group(&self, key: &str, group: Option<&Group>) -> Result<(), StoreError> {
        let conn = self.conn.lock();
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

    /// Writes a silence.
    pub fn save_silence(&self, s: &Silence) -> Result<(), StoreError> {
        self.conn.lock().execute(
            "INSERT INTO alerting_silences (id, ends_at, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET ends_at = excluded.ends_at, body = excluded.body",
            params![s.id, s.ends_at, json("alerting_silences", s)?],
        )?;
        Ok(())
    }

    /// Deletes a silence; whether it existed.
    pub fn delete_silence(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .lock()
            .execute("DELETE FROM alerting_silences WHERE id = ?1", [id])?
            > 0)
    }

    /// A marker value.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .lock()
            .query_row(
                "SELECT value FROM alerting_meta WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Sets a marker value.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.lock().execute(
            "INSERT INTO alerting_meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerting::eval::State;
    use std::collections::BTreeMap;

    #[test]
    fn round_trip_next_to_the_dora_store() {
        let dir = tempfile::tempdir().expect("dir");
        // The DORA store and the alerting tables share the file.
        let _dora = crate::store::Store::open(dir.path()).expect("dora");
        let s = AlertStore::open(dir.path()).expect("open");
        let a = Alert {
            fingerprint: "alertname=X".into(),
            labels: BTreeMap::from([("alertname".into(), "X".into())]),
            summary: "x".into(),
            runbook: None,
            dashboard: None,
            value: 2.0,
            values: BTreeMap::new(),
            state: State::Firing,
            active_at: 1,
            fired_at: Some(2),
            resolved_at: None,
            last_active: 3,
        };
        s.save_alerts(
            std::slice::from_ref(&a),
            &[],
            &[("app".into(), "KeyError".into(), 5)],
        )
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
        s.save_silence(&live).expect("silence");
        s.save_silence(&old).expect("silence");
        s.set_meta("deploy_notice", "42").expect("meta");
        drop(s);
        let s = AlertStore::open(dir.path()).expect("reopen");
        let p = s.load(50).expect("load");
        assert_eq!(p.alerts, vec![a]);
        assert_eq!(p.silences.len(), 1);
        assert_eq!(p.silences[0].id, "s1");
        assert!(p.silences[0].mutes(&BTreeMap::from([("a".into(), "b".into())]), 50));
        assert_eq!(p.exceptions, vec![("app".into(), "KeyError".into(), 5)]);
        assert_eq!(
            s.meta("deploy_notice").expect("meta").as_deref(),
            Some("42")
        );
        s.save_alerts(&[], &["alertname=X".into()], &[])
            .expect("remove");
        assert!(s.load(50).expect("load").alerts.is_empty());
        assert!(s.delete_silence("s1").expect("delete"));
        assert!(!s.delete_silence("s1").expect("delete"));
    }
}
