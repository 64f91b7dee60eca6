//! The pure notification pipeline: silences, inhibition, routing to receivers, grouping with
//! `group_wait` / `group_interval` / `repeat_interval`, and resolved messages. `now` is a
//! parameter; the edge delivers what [`Dispatcher::tick`] returns and reports back with
//! [`Dispatcher::confirm`] or [`Dispatcher::failed`], so a notification counts as sent only once
//! it was delivered.
//!
//! A group is keyed by receiver and the values of its `group_by` labels. Its first notification
//! waits `group_wait` after the group appeared (to gather what fires together); a change (an
//! alert added or resolved) is sent no sooner than `group_interval` after the previous
//! notification; an unchanged firing group is re-sent every `repeat_interval` unless acked. When
//! every alert of a group is resolved, one resolved notification is sent and the group is gone.
//! Silenced and inhibited alerts are left out of groups (a notified alert that becomes silenced
//! is shown as such in the next update).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::alert::{Alert, State};
use super::alert::{Matcher, Millis};

/// One route: alerts matching every matcher go to `receiver`.
#[derive(Debug, Clone)]
pub struct Route {
    /// All must match (empty: everything).
    pub matchers: Vec<Matcher>,
    /// Receiver name (a key of `notifiers`).
    pub receiver: String,
    /// Labels that split groups.
    pub group_by: Vec<String>,
    /// Wait before the first notification of a group.
    pub group_wait: Millis,
    /// Wait between notifications of a changed group.
    pub group_interval: Millis,
    /// Wait before re-sending an unchanged firing group.
    pub repeat_interval: Millis,
    /// Keep matching later routes after this one.
    pub continue_: bool,
}

/// An inhibition rule: a firing `source` alert mutes `target` alerts with the same `equal`
/// labels.
#[derive(Debug, Clone)]
pub struct Inhibit {
    /// Matchers of the muting alert.
    pub source: Vec<Matcher>,
    /// Matchers of the muted alerts.
    pub target: Vec<Matcher>,
    /// Labels that must be equal on both.
    pub equal: Vec<String>,
}

/// A silence: matching alerts are not notified between `starts_at` and `ends_at`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Silence {
    /// Id.
    pub id: String,
    /// Matchers as written (`alertname="X"`, `service=~"a|b"`).
    pub matchers: Vec<String>,
    /// Start (ms).
    pub starts_at: Millis,
    /// End (ms).
    pub ends_at: Millis,
    /// Who made it.
    pub created_by: String,
    /// Why.
    #[serde(default)]
    pub comment: String,
    #[serde(skip)]
    compiled: Vec<Matcher>,
}

impl Silence {
    /// A silence; fails on a matcher that does not parse or an empty list.
    pub fn new(
        id: String,
        matchers: Vec<String>,
        starts_at: Millis,
        ends_at: Millis,
        created_by: String,
        comment: String,
    ) -> Result<Self, String> {
        let mut s = Self {
            id,
            matchers,
            starts_at,
            ends_at,
            created_by,
            comment,
            compiled: Vec::new(),
        };
        s.compile()?;
        Ok(s)
    }

    /// Compiles the matchers (after deserializing).
    pub fn compile(&mut self) -> Result<(), String> {
        if self.matchers.is_empty() {
            return Err("a silence needs at least one matcher".into());
        }
        if self.ends_at <= self.starts_at {
            return Err("a silence must end after it starts".into());
        }
        self.compiled = self
            .matchers
            .iter()
            .map(|m| Matcher::parse(m))
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    /// Whether it is in force at `now`.
    pub fn active(&self, now: Millis) -> bool {
        self.starts_at <= now && now < self.ends_at
    }

    /// Whether it mutes these labels at `now`.
    pub fn mutes(&self, labels: &BTreeMap<String, String>, now: Millis) -> bool {
        self.active(now)
            && !self.compiled.is_empty()
            && self.compiled.iter().all(|m| m.matches_map(labels))
    }
}

/// Where a receiver's message for a group lives (Slack `channel` + `ts`), to update it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRef {
    /// Channel id.
    pub channel: String,
    /// Message timestamp.
    pub ts: String,
}

/// What one notification said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// When.
    pub at: Millis,
    /// Firing fingerprints.
    pub firing: BTreeSet<String>,
    /// Resolved fingerprints.
    pub resolved: BTreeSet<String>,
    /// Sequence number within the group.
    pub seq: u64,
}

/// A notification group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// `receiver` + group labels.
    pub key: String,
    /// Receiver name.
    pub receiver: String,
    /// The `group_by` labels' values.
    pub labels: BTreeMap<String, String>,
    /// When it appeared.
    pub created_at: Millis,
    /// Latest snapshot of every member.
    pub alerts: BTreeMap<String, Alert>,
    /// The last delivered notification.
    pub sent: Option<Sent>,
    /// A notification handed to the edge, not confirmed yet (not persisted).
    #[serde(skip)]
    pub inflight: Option<Sent>,
    /// No new attempt before this (after a failed delivery).
    #[serde(default)]
    pub retry_at: Option<Millis>,
    /// Who acked it (no repeats while acked).
    #[serde(default)]
    pub acked_by: Option<String>,
    /// The receiver's message, to update.
    #[serde(default)]
    pub message: Option<MessageRef>,
    /// Timings of its route.
    pub group_wait: Millis,
    /// See [`Route::group_interval`].
    pub group_interval: Millis,
    /// See [`Route::repeat_interval`].
    pub repeat_interval: Millis,
}

/// Why a notification is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The group's first.
    New,
    /// Alerts were added or resolved.
    Update,
    /// Unchanged, re-sent after `repeat_interval`.
    Repeat,
    /// Everything resolved.
    Resolved,
}

/// How a member appears in a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Firing.
    Firing,
    /// Resolved.
    Resolved,
    /// Silenced or inhibited since it was notified.
    Silenced,
}

/// One notification to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Group key.
    pub key: String,
    /// Receiver name.
    pub receiver: String,
    /// The group's labels.
    pub group_labels: BTreeMap<String, String>,
    /// Why.
    pub kind: Kind,
    /// Members (firing first).
    pub alerts: Vec<(Alert, Status)>,
    /// Sequence number to confirm.
    pub seq: u64,
    /// Who acked the group.
    pub acked_by: Option<String>,
    /// The message to update, if the receiver made one before.
    pub message: Option<MessageRef>,
}

impl Notification {
    /// Members with this status.
    pub fn count(&self, status: Status) -> usize {
        self.alerts.iter().filter(|(_, s)| *s == status).count()
    }
}

/// Routing and grouping settings.
#[derive(Debug, Clone)]
pub struct Routing {
    /// Routes, in order; the first match wins unless it says `continue`.
    pub routes: Vec<Route>,
    /// Where alerts no route takes go (`None`: nowhere).
    pub default: Option<Route>,
    /// Inhibition rules.
    pub inhibit: Vec<Inhibit>,
}

impl Routing {
    /// The routes an alert takes.
    pub fn routes_for<'a>(&'a self, labels: &BTreeMap<String, String>) -> Vec<&'a Route> {
        let mut out = Vec::new();
        for r in &self.routes {
            if r.matchers.iter().all(|m| m.matches_map(labels)) {
                out.push(r);
                if !r.continue_ {
                    return out;
                }
            }
        }
        if out.is_empty() {
            out.extend(self.default.as_ref());
        }
        out
    }
}

/// Whether `alert` is muted by a firing alert through an inhibition rule.
pub fn inhibited(alert: &Alert, firing: &[&Alert], rules: &[Inhibit]) -> bool {
    rules.iter().any(|r| {
        r.target.iter().all(|m| m.matches_map(&alert.labels))
            && firing.iter().any(|src| {
                src.fingerprint != alert.fingerprint
                    && r.source.iter().all(|m| m.matches_map(&src.labels))
                    && r.equal
                        .iter()
                        .all(|l| src.labels.get(l) == alert.labels.get(l))
            })
    })
}

/// Why an alert is not notified now.
pub fn muted(
    alert: &Alert,
    firing: &[&Alert],
    routing: &Routing,
    silences: &[Silence],
    now: Millis,
) -> bool {
    silences.iter().any(|s| s.mutes(&alert.labels, now))
        || inhibited(alert, firing, &routing.inhibit)
}

/// The groups, between ticks.
#[derive(Debug, Default)]
pub struct Dispatcher {
    /// Groups by key.
    pub groups: BTreeMap<String, Group>,
}

fn group_key(receiver: &str, labels: &BTreeMap<String, String>) -> String {
    let mut k = receiver.to_owned();
    k.push(':');
    let parts: Vec<String> = labels.iter().map(|(a, b)| format!("{a}={b}")).collect();
    k.push_str(&parts.join(","));
    k
}

impl Dispatcher {
    /// Starts from persisted groups.
    pub fn with_groups(groups: Vec<Group>) -> Self {
        Self {
            groups: groups.into_iter().map(|g| (g.key.clone(), g)).collect(),
        }
    }

    /// Folds the current alerts into groups and returns what is due at `now`. Groups whose
    /// story is over (resolved and notified, or gone before their first notification) are
    /// removed and their keys returned in `removed`.
    pub fn tick(
        &mut self,
        now: Millis,
        alerts: &BTreeMap<String, Alert>,
        routing: &Routing,
        silences: &[Silence],
        removed: &mut Vec<String>,
    ) -> Vec<Notification> {
        let firing: Vec<&Alert> = alerts
            .values()
            .filter(|a| a.state == State::Firing)
            .collect();
        let mut muted_set = BTreeSet::new();
        for a in &firing {
            if muted(a, &firing, routing, silences, now) {
                muted_set.insert(a.fingerprint.clone());
            }
        }
        for a in &firing {
            if muted_set.contains(&a.fingerprint) {
                continue;
            }
            for route in routing.routes_for(&a.labels) {
                let labels: BTreeMap<String, String> = route
                    .group_by
                    .iter()
                    .filter_map(|l| a.labels.get(l).map(|v| (l.clone(), v.clone())))
                    .collect();
                let key = group_key(&route.receiver, &labels);
                let g = self.groups.entry(key.clone()).or_insert_with(|| Group {
                    key,
                    receiver: route.receiver.clone(),
                    labels,
                    created_at: now,
                    alerts: BTreeMap::new(),
                    sent: None,
                    inflight: None,
                    retry_at: None,
                    acked_by: None,
                    message: None,
                    group_wait: route.group_wait,
                    group_interval: route.group_interval,
                    repeat_interval: route.repeat_interval,
                });
                g.group_wait = route.group_wait;
                g.group_interval = route.group_interval;
                g.repeat_interval = route.repeat_interval;
                g.alerts.insert(a.fingerprint.clone(), (*a).clone());
            }
        }
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (key, g) in &mut self.groups {
            let base = g.inflight.as_ref().or(g.sent.as_ref()).cloned();
            let was_firing = |fp: &str| base.as_ref().is_some_and(|b| b.firing.contains(fp));
            let mut firing = BTreeSet::new();
            let mut resolved = BTreeSet::new();
            let mut silenced = BTreeSet::new();
            let mut drop = Vec::new();
            for (fp, snap) in g.alerts.iter_mut() {
                match alerts.get(fp) {
                    Some(a) if a.state == State::Firing && !muted_set.contains(fp) => {
                        *snap = a.clone();
                        firing.insert(fp.clone());
                    }
                    Some(a) if a.state == State::Firing => {
                        if was_firing(fp) {
                            silenced.insert(fp.clone());
                        } else {
                            drop.push(fp.clone());
                        }
                    }
                    other => {
                        if let Some(a) = other {
                            *snap = a.clone();
                        }
                        if snap.state != State::Resolved {
                            snap.state = State::Resolved;
                            snap.resolved_at = Some(now);
                        }
                        if was_firing(fp) {
                            resolved.insert(fp.clone());
                        } else {
                            drop.push(fp.clone());
                        }
                    }
                }
            }
            for fp in drop {
                g.alerts.remove(&fp);
            }
            if g.retry_at.is_some_and(|t| now < t) || g.inflight.is_some() {
                continue;
            }
            let kind = match &base {
                None if firing.is_empty() => {
                    gone.push(key.clone());
                    continue;
                }
                None if now - g.created_at >= g.group_wait => Kind::New,
                None => continue,
                Some(b) => {
                    // Silenced members count as gone from the firing set.
                    let changed = firing != b.firing
                        || resolved.iter().any(|fp| !b.resolved.contains(fp))
                        || silenced.iter().any(|fp| b.firing.contains(fp));
                    if changed && now - b.at >= g.group_interval {
                        if firing.is_empty() {
                            Kind::Resolved
                        } else {
                            Kind::Update
                        }
                    } else if changed {
                        continue;
                    } else if firing.is_empty() {
                        gone.push(key.clone());
                        continue;
                    } else if g.acked_by.is_none() && now - b.at >= g.repeat_interval {
                        Kind::Repeat
                    } else {
                        continue;
                    }
                }
            };
            let seq = base.as_ref().map_or(1, |b| b.seq + 1);
            let mut members: Vec<(Alert, Status)> = Vec::new();
            for (fp, a) in &g.alerts {
                let st = if firing.contains(fp) {
                    Status::Firing
                } else if silenced.contains(fp) {
                    Status::Silenced
                } else {
                    Status::Resolved
                };
                members.push((a.clone(), st));
            }
            members.sort_by_key(|(a, s)| (*s as u8, a.fingerprint.clone()));
            g.inflight = Some(Sent {
                at: now,
                firing: firing.clone(),
                resolved: resolved.clone(),
                seq,
            });
            out.push(Notification {
                key: key.clone(),
                receiver: g.receiver.clone(),
                group_labels: g.labels.clone(),
                kind,
                alerts: members,
                seq,
                acked_by: g.acked_by.clone(),
                message: g.message.clone(),
            });
        }
        for k in gone {
            self.groups.remove(&k);
            removed.push(k);
        }
        out
    }

    /// Records a delivered notification. Returns the group to persist, or `None` when the
    /// group is over (the caller deletes it) or unknown.
    pub fn confirm(
        &mut self,
        key: &str,
        seq: u64,
        message: Option<MessageRef>,
    ) -> Option<Option<Group>> {
        let g = self.groups.get_mut(key)?;
        let inflight = g.inflight.take().filter(|s| s.seq == seq)?;
        if message.is_some() {
            g.message = message;
        }
        g.retry_at = None;
        // Resolved members were told; silenced ones leave with this update.
        let keep: BTreeSet<String> = inflight.firing.clone();
        let was_resolved_or_silenced: Vec<String> = g
            .alerts
            .keys()
            .filter(|fp| !keep.contains(*fp))
            .cloned()
            .collect();
        for fp in was_resolved_or_silenced {
            g.alerts.remove(&fp);
        }
        let done = inflight.firing.is_empty();
        g.sent = Some(Sent {
            resolved: BTreeSet::new(),
            ..inflight
        });
        if done {
            self.groups.remove(key);
            return Some(None);
        }
        Some(self.groups.get(key).cloned())
    }

    /// Records a failed delivery: the group is tried again after `group_interval`.
    pub fn failed(&mut self, key: &str, seq: u64, now: Millis) {
        if let Some(g) = self.groups.get_mut(key)
            && g.inflight.as_ref().is_some_and(|s| s.seq == seq)
        {
            g.inflight = None;
            g.retry_at = Some(now + g.group_interval.max(1000));
        }
    }

    /// Acks the groups holding an alert whose fingerprint, `alertname` or group key is `what`;
    /// returns the changed groups.
    pub fn ack(&mut self, what: &str, by: &str) -> Vec<Group> {
        let mut out = Vec::new();
        for g in self.groups.values_mut() {
            if g.key == what
                || g.alerts
                    .values()
                    .any(|a| a.fingerprint == what || a.name() == what)
            {
                g.acked_by = Some(by.to_owned());
                out.push(g.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Millis = 1000;

    fn alert(name: &str, service: &str, severity: &str, state: State) -> Alert {
        let labels = BTreeMap::from([
            ("alertname".to_string(), name.to_string()),
            ("service".to_string(), service.to_string()),
            ("severity".to_string(), severity.to_string()),
        ]);
        Alert {
            fingerprint: format!("{name}/{service}/{severity}"),
            labels,
            summary: format!("{name} on {service}"),
            runbook: None,
            dashboard: None,
            value: 1.0,
            external: Vec::new(),
            state,
            active_at: 0,
            fired_at: Some(0),
            resolved_at: None,
            last_active: 0,
        }
    }

    fn routing() -> Routing {
        Routing {
            routes: vec![Route {
                matchers: vec![Matcher::eq("severity", "critical")],
                receiver: "pager".into(),
                group_by: vec!["service".into()],
                group_wait: 10 * S,
                group_interval: 60 * S,
                repeat_interval: 3600 * S,
                continue_: true,
            }],
            default: Some(Route {
                matchers: vec![],
                receiver: "slack".into(),
                group_by: vec!["service".into()],
                group_wait: 30 * S,
                group_interval: 300 * S,
                repeat_interval: 4 * 3600 * S,
                continue_: false,
            }),
            inhibit: vec![Inhibit {
                source: vec![Matcher::eq("severity", "critical")],
                target: vec![Matcher::eq("severity", "warning")],
                equal: vec!["service".into()],
            }],
        }
    }

    fn map(alerts: &[Alert]) -> BTreeMap<String, Alert> {
        alerts
            .iter()
            .map(|a| (a.fingerprint.clone(), a.clone()))
            .collect()
    }

    /// Ticks and confirms everything at once; returns (kind, receiver, firing, resolved).
    fn step(
        d: &mut Dispatcher,
        now: Millis,
        alerts: &[Alert],
        silences: &[Silence],
    ) -> Vec<(Kind, String, usize, usize)> {
        let mut removed = Vec::new();
        let out = d.tick(now, &map(alerts), &routing(), silences, &mut removed);
        out.iter()
            .map(|n| {
                d.confirm(&n.key, n.seq, None);
                (
                    n.kind,
                    n.receiver.clone(),
                    n.count(Status::Firing),
                    n.count(Status::Resolved),
                )
            })
            .collect()
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn group_wait_interval_repeat_and_resolve() {
        let mut d = Dispatcher::default();
        let a = alert("HighLatency", "api", "warning", State::Firing);
        let b = alert("ErrorLogs", "api", "warning", State::Firing);
        // (time, alerts, expected notifications)
        let resolved_a = Alert {
            state: State::Resolved,
            ..a.clone()
        };
        let table: Vec<(Millis, Vec<Alert>, Vec<(Kind, &str, usize, usize)>)> = vec![
            (0, vec![a.clone()], vec![]),                 // group_wait 30 s
            (20 * S, vec![a.clone(), b.clone()], vec![]), // still waiting, b joins
            (
                30 * S,
                vec![a.clone(), b.clone()],
                vec![(Kind::New, "slack", 2, 0)],
            ),
            (60 * S, vec![a.clone(), b.clone()], vec![]), // unchanged
            (100 * S, vec![resolved_a.clone(), b.clone()], vec![]), // group_interval 300 s
            (
                330 * S,
                vec![resolved_a.clone(), b.clone()],
                vec![(Kind::Update, "slack", 1, 1)],
            ),
            // Repeat 4 h after the last notification.
            (330 * S + 4 * 3600 * S - S, vec![b.clone()], vec![]),
            (
                330 * S + 4 * 3600 * S,
                vec![b.clone()],
                vec![(Kind::Repeat, "slack", 1, 0)],
            ),
            // b resolves -> one resolved message, then the group is gone.
            (
                330 * S + 4 * 3600 * S + 300 * S,
                vec![],
                vec![(Kind::Resolved, "slack", 0, 1)],
            ),
            (330 * S + 5 * 3600 * S, vec![], vec![]),
        ];
        for (i, (now, alerts, want)) in table.into_iter().enumerate() {
            let got = step(&mut d, now, &alerts, &[]);
            let want: Vec<_> = want
                .into_iter()
                .map(|(k, r, f, x)| (k, r.to_string(), f, x))
                .collect();
            assert_eq!(got, want, "row {i} at {now}");
        }
        assert!(d.groups.is_empty());
    }

    #[test]
    fn inhibition_routing_continue_and_pending_are_not_sent() {
        let mut d = Dispatcher::default();
        let crit = alert("ErrorBudgetBurn", "api", "critical", State::Firing);
        let warn = alert("HighLatency", "api", "warning", State::Firing);
        let other = alert("HighLatency", "web", "warning", State::Firing);
        let pending = alert("Slow", "db", "warning", State::Pending);
        let all = [crit.clone(), warn.clone(), other.clone(), pending];
        assert!(step(&mut d, 0, &all, &[]).is_empty());
        let mut got = step(&mut d, 60 * S, &all, &[]);
        // crit goes to the pager route only (`continue` finds no other route; the default takes
        // only what no route took); warn(api) is inhibited by crit(api); warn(web) is not.
        got.sort();
        assert_eq!(
            got,
            vec![
                (Kind::New, "pager".to_string(), 1, 0),
                (Kind::New, "slack".to_string(), 1, 0),
            ]
        );
        let slack: Vec<&Group> = d
            .groups
            .values()
            .filter(|g| g.receiver == "slack")
            .collect();
        assert_eq!(slack.len(), 1);
        assert_eq!(slack[0].labels["service"], "web");
        assert_eq!(
            slack[0].alerts.keys().collect::<Vec<_>>(),
            vec![&other.fingerprint]
        );
        // Once crit resolves, warn(api) is no longer inhibited and gets its own group.
        let resolved = Alert {
            state: State::Resolved,
            ..crit
        };
        let later = [resolved, warn.clone(), other];
        step(&mut d, 120 * S, &later, &[]);
        let got = step(&mut d, 150 * S, &later, &[]);
        assert!(
            got.contains(&(Kind::New, "slack".to_string(), 1, 0)),
            "{got:?}"
        );
        assert!(
            d.groups
                .values()
                .any(|g| g.alerts.contains_key(&warn.fingerprint))
        );
    }

    #[test]
    fn silences_with_expiry() {
        let mut d = Dispatcher::default();
        let a = alert("HighLatency", "api", "warning", State::Firing);
        let s = Silence::new(
            "s1".into(),
            vec![
                "alertname=\"HighLatency\"".into(),
                "service=~\"api|web\"".into(),
            ],
            0,
            3600 * S,
            "test".into(),
            String::new(),
        )
        .expect("silence");
        assert!(
            step(
                &mut d,
                0,
                std::slice::from_ref(&a),
                std::slice::from_ref(&s)
            )
            .is_empty()
        );
        assert!(
            step(
                &mut d,
                3599 * S,
                std::slice::from_ref(&a),
                std::slice::from_ref(&s)
            )
            .is_empty()
        );
        // Expired: the group forms at 3600 s and is sent after group_wait.
        assert!(
            step(
                &mut d,
                3600 * S,
                std::slice::from_ref(&a),
                std::slice::from_ref(&s)
            )
            .is_empty()
        );
        assert_eq!(
            step(
                &mut d,
                3630 * S,
                std::slice::from_ref(&a),
                std::slice::from_ref(&s)
            ),
            vec![(Kind::New, "slack".to_string(), 1, 0)]
        );
        // A new silence on a notified alert: the next update shows it silenced, then nothing.
        let s2 = Silence::new(
            "s2".into(),
            vec!["service=\"api\"".into()],
            3700 * S,
            9000 * S,
            "test".into(),
            String::new(),
        )
        .expect("silence");
        let mut removed = Vec::new();
        let out = d.tick(
            3930 * S,
            &map(std::slice::from_ref(&a)),
            &routing(),
            std::slice::from_ref(&s2),
            &mut removed,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].kind, Kind::Resolved);
        assert_eq!(out[0].count(Status::Silenced), 1);
        assert_eq!(d.confirm(&out[0].key, out[0].seq, None), Some(None));
        assert!(d.groups.is_empty());
        assert!(
            Silence::new("x".into(), vec![], 0, 1, String::new(), String::new()).is_err()
                && Silence::new(
                    "x".into(),
                    vec!["a=\"b\"".into()],
                    5,
                    5,
                    String::new(),
                    String::new()
                )
                .is_err()
        );
    }

    #[test]
    fn failed_deliveries_retry_and_ack_stops_repeats() {
        let mut d = Dispatcher::default();
        let a = alert("HighLatency", "api", "warning", State::Firing);
        let mut removed = Vec::new();
        assert!(
            d.tick(
                0,
                &map(std::slice::from_ref(&a)),
                &routing(),
                &[],
                &mut removed
            )
            .is_empty()
        );
        let out = d.tick(
            30 * S,
            &map(std::slice::from_ref(&a)),
            &routing(),
            &[],
            &mut removed,
        );
        assert_eq!(out.len(), 1);
        // In flight: not produced twice.
        assert!(
            d.tick(
                31 * S,
                &map(std::slice::from_ref(&a)),
                &routing(),
                &[],
                &mut removed
            )
            .is_empty()
        );
        d.failed(&out[0].key, out[0].seq, 31 * S);
        assert!(
            d.tick(
                32 * S,
                &map(std::slice::from_ref(&a)),
                &routing(),
                &[],
                &mut removed
            )
            .is_empty()
        );
        let again = d.tick(
            331 * S,
            &map(std::slice::from_ref(&a)),
            &routing(),
            &[],
            &mut removed,
        );
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].kind, Kind::New);
        let msg = MessageRef {
            channel: "C1".into(),
            ts: "1.2".into(),
        };
        let g = d.confirm(&again[0].key, again[0].seq, Some(msg.clone()));
        assert_eq!(g.flatten().and_then(|g| g.message), Some(msg.clone()));
        assert_eq!(d.ack("HighLatency", "ana").len(), 1);
        assert!(
            d.tick(
                331 * S + 5 * 3600 * S,
                &map(std::slice::from_ref(&a)),
                &routing(),
                &[],
                &mut removed
            )
            .is_empty()
        );
        // A persisted group restored after a restart is not re-sent.
        let groups: Vec<Group> = d.groups.values().cloned().collect();
        let json = serde_json::to_string(&groups).expect("json");
        let mut d2 = Dispatcher::with_groups(serde_json::from_str(&json).expect("groups"));
        assert!(
            d2.tick(
                400 * S,
                &map(std::slice::from_ref(&a)),
                &routing(),
                &[],
                &mut removed
            )
            .is_empty()
        );
        let resolved = Alert {
            state: State::Resolved,
            ..a
        };
        let out = d2.tick(700 * S, &map(&[resolved]), &routing(), &[], &mut removed);
        assert_eq!(out[0].kind, Kind::Resolved);
        assert_eq!(out[0].message, Some(msg));
    }
}
