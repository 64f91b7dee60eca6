//! Incoming webhooks, as pure functions: signature checks (GitHub's HMAC-SHA256 over the raw
//! body, GitLab's shared token, both compared in constant time) and payload parsing into store
//! [`Batch`]es (GitHub, GitLab, Alertmanager). No IO here; `api.rs` wires them to HTTP.
//!
//! GitHub deliveries come as JSON (`application/json`) or, GitHub's default, form-encoded
//! (`application/x-www-form-urlencoded`, the JSON in the `payload` field); the signature is
//! checked over the raw body as sent, then [`github_payload`] takes the JSON out.
//!
//! The service of a deployment is the repository's name (`repository.name` on GitHub,
//! `project.name` on GitLab) unless the hook URL names one (`?service=checkout`, see
//! [`HookOptions::service`]).
//!
//! Mapping:
//! * GitHub `deployment_status` with state `success` → a deployment of service
//!   `repository.name` in `deployment.environment`, finished at the status' `created_at`;
//!   state `failure` or `error` → a failed deploy attempt (counted in
//!   `dora_deployments_total{status="failure"}`, never a deployment); other states ignored;
//!   `push` → its commits (author timestamps) remembered for the repository's next deployment;
//!   `pull_request` closed and merged → its merge commit at `merged_at`, with the PR's first
//!   commit time when the payload carries one (`pull_request.first_commit_at`, a field some CI
//!   actions add; GitHub's own payload has none); `workflow_run` completed with conclusion
//!   `success` on the default branch → a deployment when `deploy_on_workflow_run` is set.
//!   Everything else (including `ping`) is acknowledged and ignored.
//! * GitLab `Deployment Hook` with status `success` → a deployment (`failed` → a failed
//!   attempt); `Push Hook` → commits; `Merge Request Hook` with action `merge` → its merge
//!   commit at `merged_at` (else `updated_at`);
//!   `Pipeline Hook` with status `success` on the default branch → a deployment when
//!   `deploy_on_pipeline` is set.
//! * Alertmanager: each alert of a configured `severity` opens (`firing`) or resolves
//!   (`resolved`) the incident `alertmanager:<fingerprint>:<startsAt>`, for service
//!   `labels.service` (else `labels.job`, else `unknown`) and `labels.environment` (else the
//!   configured environment); `labels.deployment_id` / `labels.commit` blame a deployment.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::dora::{Change, DeployStatus, Deployment, DeploymentKind, Incident, UnixSeconds};
use crate::store::{Batch, IncidentChange};

/// Why a webhook was refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signature or token header is absent.
    #[error("missing {0} header")]
    Missing(&'static str),
    /// The header is present but does not match.
    #[error("{0} does not match")]
    Mismatch(&'static str),
}

/// Why a validly signed payload could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(pub String);

fn bad(msg: impl Into<String>) -> PayloadError {
    PayloadError(msg.into())
}

/// The GitHub signature header.
pub const GITHUB_SIGNATURE: &str = "x-hub-signature-256";
/// The GitLab token header.
pub const GITLAB_TOKEN: &str = "x-gitlab-token";

/// Checks `X-Hub-Signature-256: sha256=<hex>` against HMAC-SHA256(secret, raw body).
pub fn verify_github(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing(GITHUB_SIGNATURE))?;
    let mismatch = SignatureError::Mismatch(GITHUB_SIGNATURE);
    let hex_sig = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(mismatch.clone())?;
    let sig = hex::decode(hex_sig).map_err(|_| mismatch.clone())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| mismatch.clone())?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&sig).map_err(|_| mismatch)
}

/// Signs a body the way GitHub does (for tests and tools).
pub fn sign_github(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks `X-Gitlab-Token` against the configured token in constant time.
pub fn verify_gitlab(token: &str, header: Option<&str>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing(GITLAB_TOKEN))?;
    if bool::from(token.as_bytes().ct_eq(header.as_bytes())) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch(GITLAB_TOKEN))
    }
}

/// A parsed webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Something to record.
    Record(Box<Batch>),
    /// Acknowledged, nothing to record (the reason is returned to the sender).
    Ignored(String),
}

/// Settings the parsers need.
#[derive(Debug, Clone, Default)]
pub struct HookOptions {
    /// The configured DORA environment (used where the event names none).
    pub environment: String,
    /// Record `workflow_run` / pipeline successes on the default branch as deployments.
    pub deploy_on_ci_success: bool,
    /// Alertmanager severities that make incidents.
    pub severities: Vec<String>,
    /// The service name for deployments, instead of the repository's name (from the hook
    /// URL's `?service=` query parameter).
    pub service: Option<String>,
}

impl HookOptions {
    fn service<'a>(&'a self, repository_name: &'a str) -> &'a str {
        self.service
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or(repository_name)
    }
}

/// The content type of a form-encoded GitHub delivery.
pub const FORM_URLENCODED: &str = "application/x-www-form-urlencoded";

/// The JSON of a GitHub delivery: the body itself for `application/json` (or no content
/// type), the decoded `payload` field for `application/x-www-form-urlencoded`.
pub fn github_payload<'a>(
    content_type: Option<&str>,
    body: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, PayloadError> {
    let mime = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if mime == FORM_URLENCODED {
        return url::form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| std::borrow::Cow::Owned(v.into_owned().into_bytes()))
            .ok_or_else(|| bad("form-encoded delivery without a payload field"));
    }
    if mime.is_empty() || mime == "application/json" || mime.ends_with("+json") {
        return Ok(std::borrow::Cow::Borrowed(body));
    }
    Err(bad(format!(
        "content type {mime:?} is not application/json or {FORM_URLENCODED}"
    )))
}

/// Parses an RFC 3339 time (`2024-05-01T12:00:00Z`, `...+02:00`, fractions ignored), also in
/// GitLab's `2024-05-01 12:00:00 +0200` / `... UTC` shape, to Unix seconds.
pub fn parse_time(text: &str) -> Option<UnixSeconds> {
    let t = text.trim();
    let b = t.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b' ' || b[10] == b't')
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &t[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let rest = rest.trim_start();
    let offset = match rest {
        "Z" | "z" | "UTC" | "" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let digits: String = rest[1..].chars().filter(|c| *c != ':').collect();
            if digits.len() != 4 || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let oh: i64 = digits[..2].parse().ok()?;
            let om: i64 = digits[2..].parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    // A day past the month's end (`02-30`) rolls into the next month.
    let month = jiff::civil::Date::new(i16::try_from(y).ok()?, i8::try_from(mo).ok()?, 1).ok()?;
    let month_start = jiff::tz::Offset::UTC
        .to_timestamp(month.to_datetime(jiff::civil::Time::midnight()))
        .ok()?
        .as_second();
    Some(month_start + (d - 1) * 86_400 + h * 3600 + mi * 60 + s - offset)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn need<'a>(v: &'a Value, path: &[&str]) -> Result<&'a str, PayloadError> {
    str_at(v, path).ok_or_else(|| bad(format!("missing string field {}", path.join("."))))
}

fn need_time(v: &Value, path: &[&str]) -> Result<UnixSeconds, PayloadError> {
    let s = need(v, path)?;
    parse_time(s).ok_or_else(|| bad(format!("{} is not a time: {s:?}", path.join("."))))
}

fn id_at(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    match cur {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn parse_json(body: &[u8]) -> Result<Value, PayloadError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(bad("the payload must be a JSON object"))
    }
}

fn attempt(
    id: String,
    service: &str,
    environment: &str,
    sha: &str,
    status: DeployStatus,
    (started_at, finished_at): (UnixSeconds, UnixSeconds),
) -> Deployment {
    Deployment {
        id,
        service: service.to_owned(),
        environment: environment.to_owned(),
        version: sha.to_owned(),
        commit: sha.to_owned(),
        status,
        started_at: started_at.min(finished_at),
        finished_at,
        commits: Vec::new(),
        kind: DeploymentKind::Normal,
        fixes_deployment: None,
        resolves_incidents: Vec::new(),
    }
}

fn commits_of(v: &Value, list: &str) -> Result<Vec<Change>, PayloadError> {
    let Some(items) = v.get(list).and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let sha = id_at(c, &["id"]).ok_or_else(|| bad(format!("{list}[{i}].id missing")))?;
            let ts = str_at(c, &["timestamp"])
                .and_then(parse_time)
                .ok_or_else(|| bad(format!("{list}[{i}].timestamp missing or not a time")))?;
            Ok(Change {
                sha,
                timestamp: ts,
                pr_first_commit_at: None,
            })
        })
        .collect()
}

/// Parses a GitHub delivery (`X-GitHub-Event` = `event`).
pub fn parse_github(event: &str, body: &[u8], opts: &HookOptions) -> Result<Parsed, PayloadError> {
    let v = parse_json(body)?;
    match event {
        "deployment_status" => {
            let state = need(&v, &["deployment_status", "state"])?;
            let status = match state {
                "success" => DeployStatus::Success,
                "failure" | "error" => DeployStatus::Failure,
                _ => return Ok(Parsed::Ignored(format!("deployment_status {state}"))),
            };
            let repo = need(&v, &["repository", "full_name"])?;
            let service = opts.service(need(&v, &["repository", "name"])?);
            let env = str_at(&v, &["deployment", "environment"]).unwrap_or(&opts.environment);
            let sha = need(&v, &["deployment", "sha"])?;
            let dep_id =
                id_at(&v, &["deployment", "id"]).ok_or_else(|| bad("missing deployment.id"))?;
            let finished = need_time(&v, &["deployment_status", "created_at"])?;
            let started = str_at(&v, &["deployment", "created_at"])
                .and_then(parse_time)
                .unwrap_or(finished);
            // A GitHub deployment may get a failure status and later a success (a re-run):
            // each is its own attempt.
            let id = match status {
                DeployStatus::Success => format!("github:{repo}:deployment:{dep_id}"),
                DeployStatus::Failure => {
                    let status_id = id_at(&v, &["deployment_status", "id"]).unwrap_or_default();
                    format!("github:{repo}:deployment:{dep_id}:failure:{status_id}")
                }
            };
            let d = attempt(
                id,
                service,
                env,
                sha,
                status,
                (started.min(finished), finished),
            );
            Ok(Parsed::Record(Box::new(Batch {
                deployment: Some((d, Some(format!("github:{repo}")))),
                ..Batch::default()
            })))
        }
        "push" => {
            let repo = need(&v, &["repository", "full_name"])?;
            let commits = commits_of(&v, "commits")?;
            if commits.is_empty() {
                return Ok(Parsed::Ignored("push without commits".into()));
            }
            let key = format!("github:{repo}");
            Ok(Parsed::Record(Box::new(Batch {
                pending: commits.into_iter().map(|c| (key.clone(), c)).collect(),
                ..Batch::default()
            })))
        }
        "pull_request" => {
            let action = need(&v, &["action"])?;
            let merged = v
                .get("pull_request")
                .and_then(|p| p.get("merged"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if action != "closed" || !merged {
                return Ok(Parsed::Ignored(format!(
                    "pull_request {action} (not a merge)"
                )));
            }
            let repo = need(&v, &["repository", "full_name"])?;
            let sha = need(&v, &["pull_request", "merge_commit_sha"])?;
            let merged_at = need_time(&v, &["pull_request", "merged_at"])?;
            let first = str_at(&v, &["pull_request", "first_commit_at"]).and_then(parse_time);
            Ok(Parsed::Record(Box::new(Batch {
                pending: vec![(
                    format!("github:{repo}"),
                    Change {
                        sha: sha.to_owned(),
                        timestamp: merged_at,
                        pr_first_commit_at: first,
                    },
                )],
                ..Batch::default()
            })))
        }
        "workflow_run" => {
            let action = need(&v, &["action"])?;
            let conclusion = str_at(&v, &["workflow_run", "conclusion"]).unwrap_or("");
            let branch = str_at(&v, &["workflow_run", "head_branch"]).unwrap_or("");
            let default = str_at(&v, &["repository", "default_branch"]).unwrap_or("main");
            let status = match conclusion {
                "success" => Some(DeployStatus::Success),
                "failure" | "timed_out" => Some(DeployStatus::Failure),
                _ => None,
            };
            let (Some(status), "completed", true) = (status, action, branch == default) else {
                return Ok(Parsed::Ignored(format!(
                    "workflow_run {action}/{conclusion} on {branch:?}"
                )));
            };
            if !opts.deploy_on_ci_success {
                return Ok(Parsed::Ignored(
                    "workflow_run: deploy_on_workflow_run is off".into(),
                ));
            }
            let repo = need(&v, &["repository", "full_name"])?;
            let service = opts.service(need(&v, &["repository", "name"])?);
            let sha = need(&v, &["workflow_run", "head_sha"])?;
            let run =
                id_at(&v, &["workflow_run", "id"]).ok_or_else(|| bad("missing workflow_run.id"))?;
            // A re-run keeps the run id and bumps `run_attempt`: each attempt is its own event.
            let id = match id_at(&v, &["workflow_run", "run_attempt"]) {
                Some(n) if n != "1" => format!("github:{repo}:run:{run}:{n}"),
                _ => format!("github:{repo}:run:{run}"),
            };
            let finished = need_time(&v, &["workflow_run", "updated_at"])?;
            let started = str_at(&v, &["workflow_run", "run_started_at"])
                .or_else(|| str_at(&v, &["workflow_run", "created_at"]))
                .and_then(parse_time)
                .unwrap_or(finished);
            let d = attempt(
                id,
                service,
                &opts.environment,
                sha,
                status,
                (started.min(finished), finished),
            );
            Ok(Parsed::Record(Box::new(Batch {
                deployment: Some((d, Some(format!("github:{repo}")))),
                ..Batch::default()
            })))
        }
        other => Ok(Parsed::Ignored(format!("event {other:?} is not used"))),
    }
}

/// Parses a GitLab delivery (`X-Gitlab-Event` = `event`).
pub fn parse_gitlab(event: &str, body: &[u8], opts: &HookOptions) -> Result<Parsed, PayloadError> {
    let v = parse_json(body)?;
    match event {
        "Deployment Hook" => {
            let state = need(&v, &["status"])?;
            let status = match state {
                "success" => DeployStatus::Success,
                "failed" => DeployStatus::Failure,
                _ => return Ok(Parsed::Ignored(format!("deployment {state}"))),
            };
            let repo = need(&v, &["project", "path_with_namespace"])?;
            let service = opts.service(need(&v, &["project", "name"])?);
            let env = str_at(&v, &["environment"]).unwrap_or(&opts.environment);
            let sha = str_at(&v, &["sha"])
                .or_else(|| str_at(&v, &["short_sha"]))
                .ok_or_else(|| bad("missing string field sha"))?;
            let id = id_at(&v, &["deployment_id"]).ok_or_else(|| bad("missing deployment_id"))?;
            let finished = need_time(&v, &["status_changed_at"])?;
            let id = match status {
                DeployStatus::Success => format!("gitlab:{repo}:deployment:{id}"),
                DeployStatus::Failure => format!("gitlab:{repo}:deployment:{id}:failed"),
            };
            let d = attempt(id, service, env, sha, status, (finished, finished));
            Ok(Parsed::Record(Box::new(Batch {
                deployment: Some((d, Some(format!("gitlab:{repo}")))),
                ..Batch::default()
            })))
        }
        "Merge Request Hook" => {
            let action = str_at(&v, &["object_attributes", "action"]).unwrap_or("");
            if action != "merge" {
                return Ok(Parsed::Ignored(format!(
                    "merge request {action:?} (not a merge)"
                )));
            }
            let repo = need(&v, &["project", "path_with_namespace"])?;
            let sha = need(&v, &["object_attributes", "merge_commit_sha"])?;
            let merged_at = str_at(&v, &["object_attributes", "merged_at"])
                .and_then(parse_time)
                .map_or_else(|| need_time(&v, &["object_attributes", "updated_at"]), Ok)?;
            Ok(Parsed::Record(Box::new(Batch {
                pending: vec![(
                    format!("gitlab:{repo}"),
                    Change {
                        sha: sha.to_owned(),
                        timestamp: merged_at,
                        pr_first_commit_at: None,
                    },
                )],
                ..Batch::default()
            })))
        }
        "Push Hook" => {
            let repo = need(&v, &["project", "path_with_namespace"])?;
            let commits = commits_of(&v, "commits")?;
            if commits.is_empty() {
                return Ok(Parsed::Ignored("push without commits".into()));
            }
            let key = format!("gitlab:{repo}");
            Ok(Parsed::Record(Box::new(Batch {
                pending: commits.into_iter().map(|c| (key.clone(), c)).collect(),
                ..Batch::default()
            })))
        }
        "Pipeline Hook" => {
            let state = need(&v, &["object_attributes", "status"])?;
            let branch = str_at(&v, &["object_attributes", "ref"]).unwrap_or("");
            let default = str_at(&v, &["project", "default_branch"]).unwrap_or("main");
            let status = match state {
                "success" => Some(DeployStatus::Success),
                "failed" => Some(DeployStatus::Failure),
                _ => None,
            };
            let (Some(status), true) = (status, branch == default) else {
                return Ok(Parsed::Ignored(format!("pipeline {state} on {branch:?}")));
            };
            if !opts.deploy_on_ci_success {
                return Ok(Parsed::Ignored(
                    "pipeline: deploy_on_pipeline is off".into(),
                ));
            }
            let repo = need(&v, &["project", "path_with_namespace"])?;
            let service = opts.service(need(&v, &["project", "name"])?);
            let sha = need(&v, &["object_attributes", "sha"])?;
            let id = id_at(&v, &["object_attributes", "id"])
                .ok_or_else(|| bad("missing object_attributes.id"))?;
            let finished = need_time(&v, &["object_attributes", "finished_at"])?;
            let started = str_at(&v, &["object_attributes", "created_at"])
                .and_then(parse_time)
                .unwrap_or(finished);
            // Retrying a job re-runs the same pipeline (same id): a failure then a success of
            // one pipeline are two attempts.
            let id = match status {
                DeployStatus::Success => format!("gitlab:{repo}:pipeline:{id}"),
                DeployStatus::Failure => format!("gitlab:{repo}:pipeline:{id}:failed:{finished}"),
            };
            let d = attempt(
                id,
                service,
                &opts.environment,
                sha,
                status,
                (started.min(finished), finished),
            );
            Ok(Parsed::Record(Box::new(Batch {
                deployment: Some((d, Some(format!("gitlab:{repo}")))),
                ..Batch::default()
            })))
        }
        other => Ok(Parsed::Ignored(format!("event {other:?} is not used"))),
    }
}

#[derive(Debug, Deserialize)]
struct AmPayload {
    alerts: Vec<AmAlert>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AmAlert {
    status: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    starts_at: String,
    #[serde(default)]
    ends_at: Option<String>,
    fingerprint: String,
}

/// Parses an Alertmanager webhook (version 4).
pub fn parse_alertmanager(body: &[u8], opts: &HookOptions) -> Result<Parsed, PayloadError> {
    let p: AmPayload =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid payload: {e}")))?;
    let mut changes = Vec::new();
    for (i, a) in p.alerts.iter().enumerate() {
        let severity = a.labels.get("severity").map(String::as_str).unwrap_or("");
        if !opts.severities.iter().any(|s| s == severity) {
            continue;
        }
        let started = parse_time(&a.starts_at)
            .ok_or_else(|| bad(format!("alerts[{i}].startsAt is not a time")))?;
        let id = format!("alertmanager:{}:{started}", a.fingerprint);
        let label = |k: &str| a.labels.get(k).cloned();
        let incident = Incident {
            id: id.clone(),
            service: label("service")
                .or_else(|| label("job"))
                .unwrap_or_else(|| "unknown".into()),
            environment: label("environment").unwrap_or_else(|| opts.environment.clone()),
            started_at: started,
            resolved_at: None,
            deployment_id: label("deployment_id"),
            commit: label("commit"),
            resolved_by_deployment: None,
        };
        changes.push(IncidentChange::Open(incident));
        match a.status.as_str() {
            "firing" => {}
            "resolved" => {
                let at = a
                    .ends_at
                    .as_deref()
                    .and_then(parse_time)
                    .ok_or_else(|| bad(format!("alerts[{i}].endsAt is not a time")))?;
                changes.push(IncidentChange::Resolve {
                    id,
                    at,
                    by_deployment: None,
                });
            }
            other => {
                return Err(bad(format!(
                    "alerts[{i}].status {other:?} is not firing or resolved"
                )));
            }
        }
    }
    if changes.is_empty() {
        return Ok(Parsed::Ignored("no alert of a configured severity".into()));
    }
    Ok(Parsed::Record(Box::new(Batch {
        incidents: changes,
        ..Batch::default()
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(ci: bool) -> HookOptions {
        HookOptions {
            environment: "production".into(),
            deploy_on_ci_success: ci,
            severities: vec!["critical".into()],
            service: None,
        }
    }

    #[test]
    fn github_signature_cases() {
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let sig = sign_github(b"s3cret", body);
        assert!(verify_github(b"s3cret", Some(&sig), body).is_ok());
        // GitHub's documented example: secret "It's a Secret to Everybody", body "Hello, World!".
        assert!(
            verify_github(
                b"It's a Secret to Everybody",
                Some("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"),
                b"Hello, World!"
            )
            .is_ok()
        );
        let mut flipped = body.to_vec();
        flipped[3] ^= 1;
        assert_eq!(
            verify_github(b"s3cret", Some(&sig), &flipped),
            Err(SignatureError::Mismatch(GITHUB_SIGNATURE))
        );
        let mut bad_sig = sig.clone().into_bytes();
        let last = bad_sig.len() - 1;
        bad_sig[last] = if bad_sig[last] == b'0' { b'1' } else { b'0' };
        let bad_sig = String::from_utf8(bad_sig).expect("ascii");
        assert!(verify_github(b"s3cret", Some(&bad_sig), body).is_err());
        assert!(verify_github(b"wrong", Some(&sig), body).is_err());
        assert_eq!(
            verify_github(b"s3cret", None, body),
            Err(SignatureError::Missing(GITHUB_SIGNATURE))
        );
        assert!(verify_github(b"s3cret", Some("sha1=abc"), body).is_err());
        assert!(verify_github(b"s3cret", Some("sha256=zz"), body).is_err());
    }

    #[test]
    fn gitlab_token_cases() {
        assert!(verify_gitlab("tok", Some("tok")).is_ok());
        assert!(verify_gitlab("tok", Some("tok ")).is_err());
        assert!(verify_gitlab("tok", Some("to")).is_err());
        assert_eq!(
            verify_gitlab("tok", None),
            Err(SignatureError::Missing(GITLAB_TOKEN))
        );
    }

    #[test]
    fn times() {
        for (text, want) in [
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2024-05-01T12:00:00Z", Some(1_714_564_800)),
            ("2024-05-01T14:00:00+02:00", Some(1_714_564_800)),
            ("2024-05-01T12:00:00.123456Z", Some(1_714_564_800)),
            ("2024-05-01 14:00:00 +0200", Some(1_714_564_800)),
            ("2024-05-01 12:00:00 UTC", Some(1_714_564_800)),
            ("2015-05-05T19:40:15-04:00", Some(1_430_869_215)),
            ("1969-12-31T23:59:59Z", Some(-1)),
            ("2000-02-29T23:59:59Z", Some(951_868_799)),
            ("2100-03-01T00:00:00Z", Some(4_107_542_400)),
            // A day past the month's end rolls over.
            ("2023-02-29T00:00:00Z", Some(1_677_628_800)),
            ("2024-02-30", None),
            ("yesterday", None),
            ("2024-05-01T12:00:00+2", None),
        ] {
            assert_eq!(parse_time(text), want, "{text}");
        }
    }

    #[test]
    fn github_deployment_status_success() {
        let body = br#"{
          "action": "created",
          "deployment_status": {"id": 1, "state": "success", "environment": "production",
                                "created_at": "2024-05-01T12:10:00Z"},
          "deployment": {"id": 145988746, "sha": "a84d88e7554fc1fa21bcbc4efae3c782a70d2b9d",
                         "ref": "main", "environment": "production", "created_at": "2024-05-01T12:00:00Z"},
          "repository": {"name": "api", "full_name": "octo/api", "default_branch": "main"}
        }"#;
        let Parsed::Record(b) = parse_github("deployment_status", body, &opts(false)).expect("ok")
        else {
            panic!("not recorded")
        };
        let (d, repo) = b.deployment.expect("deployment");
        assert_eq!(d.service, "api");
        assert_eq!(d.environment, "production");
        assert_eq!(d.id, "github:octo/api:deployment:145988746");
        assert_eq!(d.finished_at - d.started_at, 600);
        assert_eq!(repo.as_deref(), Some("github:octo/api"));
        let pending = body_replace(body, "\"success\"", "\"pending\"");
        assert!(matches!(
            parse_github("deployment_status", &pending, &opts(false)),
            Ok(Parsed::Ignored(_))
        ));
    }

    fn body_replace(body: &[u8], from: &str, to: &str) -> Vec<u8> {
        String::from_utf8_lossy(body).replace(from, to).into_bytes()
    }

    #[test]
    fn github_push_pull_request_and_workflow_run() {
        let push = br#"{"ref": "refs/heads/main", "after": "c2",
          "repository": {"name": "api", "full_name": "octo/api"},
          "commits": [
            {"id": "c1", "timestamp": "2015-05-05T19:40:15-04:00", "message": "a"},
            {"id": "c2", "timestamp": "2015-05-05T20:00:00-04:00", "message": "b"}
          ]}"#;
        let Ok(Parsed::Record(b)) = parse_github("push", push, &opts(false)) else {
            panic!("push")
        };
        assert_eq!(b.pending.len(), 2);
        assert_eq!(b.pending[0].1.timestamp, 1_430_869_215);

        let pr = br#"{"action": "closed", "number": 5,
          "pull_request": {"merged": true, "merge_commit_sha": "m1",
             "merged_at": "2024-05-01T12:00:00Z", "first_commit_at": "2024-04-30T12:00:00Z"},
          "repository": {"name": "api", "full_name": "octo/api"}}"#;
        let Ok(Parsed::Record(b)) = parse_github("pull_request", pr, &opts(false)) else {
            panic!("pr")
        };
        assert_eq!(b.pending[0].1.effective_time(), 1_714_564_800 - 86_400);
        let unmerged = body_replace(pr, "\"merged\": true", "\"merged\": false");
        assert!(matches!(
            parse_github("pull_request", &unmerged, &opts(false)),
            Ok(Parsed::Ignored(_))
        ));

        let run = br#"{"action": "completed",
          "workflow_run": {"id": 30433642, "head_branch": "main", "head_sha": "acb5820",
             "conclusion": "success", "run_started_at": "2024-05-01T11:50:00Z",
             "updated_at": "2024-05-01T12:00:00Z"},
          "repository": {"name": "api", "full_name": "octo/api", "default_branch": "main"}}"#;
        assert!(matches!(
            parse_github("workflow_run", run, &opts(false)),
            Ok(Parsed::Ignored(_))
        ));
        let Ok(Parsed::Record(b)) = parse_github("workflow_run", run, &opts(true)) else {
            panic!("run")
        };
        assert_eq!(b.deployment.expect("dep").0.environment, "production");
        assert!(matches!(
            parse_github("ping", br#"{"zen":"x"}"#, &opts(true)),
            Ok(Parsed::Ignored(_))
        ));
        assert!(parse_github("push", b"{not json", &opts(true)).is_err());
        assert!(parse_github("deployment_status", b"{}", &opts(true)).is_err());
    }

    #[test]
    fn github_payload_from_json_or_form() {
        let json = br#"{"zen":"Design for failure.","hook_id":1}"#;
        assert_eq!(
            &*github_payload(Some("application/json"), json).expect("json"),
            json
        );
        assert_eq!(&*github_payload(None, json).expect("none"), json);
        // GitHub's default: `payload=<JSON, form-urlencoded>`, `+` for spaces.
        let form: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", std::str::from_utf8(json).expect("utf8"))
            .finish();
        assert!(form.contains("Design+for+failure."), "{form}");
        let got = github_payload(
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            form.as_bytes(),
        )
        .expect("form");
        assert_eq!(&*got, json);
        assert!(github_payload(Some(FORM_URLENCODED), b"other=1").is_err());
        assert!(github_payload(Some("text/plain"), json).is_err());
    }

    #[test]
    fn failed_attempts_and_service_override() {
        let body = br#"{"action": "created",
          "deployment_status": {"id": 7, "state": "failure", "created_at": "2024-05-01T12:10:00Z"},
          "deployment": {"id": 9, "sha": "a84d88e", "environment": "production",
                         "created_at": "2024-05-01T12:00:00Z"},
          "repository": {"name": "api", "full_name": "octo/api", "default_branch": "main"}}"#;
        let mut o = opts(false);
        o.service = Some("checkout".into());
        let Ok(Parsed::Record(b)) = parse_github("deployment_status", body, &o) else {
            panic!("failure recorded")
        };
        let (d, _) = b.deployment.expect("attempt");
        assert_eq!(d.status, DeployStatus::Failure);
        assert_eq!(d.service, "checkout");
        assert_eq!(d.id, "github:octo/api:deployment:9:failure:7");
        let inactive = body_replace(body, "\"failure\"", "\"inactive\"");
        assert!(matches!(
            parse_github("deployment_status", &inactive, &o),
            Ok(Parsed::Ignored(_))
        ));

        let run = br#"{"action": "completed",
          "workflow_run": {"id": 30433642, "run_attempt": 2, "head_branch": "main", "head_sha": "acb5820",
             "conclusion": "failure", "updated_at": "2024-05-01T12:00:00Z"},
          "repository": {"name": "api", "full_name": "octo/api", "default_branch": "main"}}"#;
        let Ok(Parsed::Record(b)) = parse_github("workflow_run", run, &opts(true)) else {
            panic!("run")
        };
        let (d, _) = b.deployment.expect("attempt");
        assert_eq!(
            (d.id.as_str(), d.status),
            ("github:octo/api:run:30433642:2", DeployStatus::Failure)
        );
        let cancelled = body_replace(run, "\"failure\"", "\"cancelled\"");
        assert!(matches!(
            parse_github("workflow_run", &cancelled, &opts(true)),
            Ok(Parsed::Ignored(_))
        ));

        let gl = br#"{"object_kind": "deployment", "status": "failed",
          "status_changed_at": "2021-04-28 21:50:00 +0200", "deployment_id": 15,
          "environment": "production", "sha": "279484c0",
          "project": {"name": "shop", "path_with_namespace": "team/shop"}}"#;
        let Ok(Parsed::Record(b)) = parse_gitlab("Deployment Hook", gl, &opts(false)) else {
            panic!("gitlab failed")
        };
        let (d, _) = b.deployment.expect("attempt");
        assert_eq!(
            (d.id.as_str(), d.status, d.service.as_str()),
            (
                "gitlab:team/shop:deployment:15:failed",
                DeployStatus::Failure,
                "shop"
            )
        );
    }

    #[test]
    fn gitlab_merge_request_merge() {
        let mr = br#"{"object_kind": "merge_request", "event_type": "merge_request",
          "project": {"id": 1, "name": "Gitlab Test", "path_with_namespace": "gitlabhq/gitlab-test",
                      "default_branch": "master"},
          "object_attributes": {"id": 99, "iid": 1, "action": "merge", "state": "merged",
             "merge_commit_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
             "created_at": "2013-12-03T17:23:34Z", "updated_at": "2013-12-03T17:40:00Z",
             "merged_at": "2013-12-03T17:30:00Z", "target_branch": "master"}}"#;
        let Ok(Parsed::Record(b)) = parse_gitlab("Merge Request Hook", mr, &opts(false)) else {
            panic!("mr")
        };
        let (repo, c) = &b.pending[0];
        assert_eq!(repo, "gitlab:gitlabhq/gitlab-test");
        assert_eq!(c.timestamp, parse_time("2013-12-03T17:30:00Z").expect("t"));
        let no_merged_at = body_replace(mr, "merged_at", "x_merged_at");
        let Ok(Parsed::Record(b)) = parse_gitlab("Merge Request Hook", &no_merged_at, &opts(false))
        else {
            panic!("mr")
        };
        assert_eq!(
            b.pending[0].1.timestamp,
            parse_time("2013-12-03T17:40:00Z").expect("t")
        );
        let opened = body_replace(mr, "\"merge\"", "\"open\"");
        assert!(matches!(
            parse_gitlab("Merge Request Hook", &opened, &opts(false)),
            Ok(Parsed::Ignored(_))
        ));
    }

    #[test]
    fn gitlab_deployment_push_pipeline() {
        let dep = br#"{"object_kind": "deployment", "status": "success",
          "status_changed_at": "2021-04-28 21:50:00 +0200", "deployment_id": 15,
          "deployable_id": 796, "environment": "staging", "short_sha": "279484c0",
          "sha": "279484c09fbe69ededfced8c1bb6e6d24616b468",
          "project": {"id": 30, "name": "test-deployment-webhooks",
                      "path_with_namespace": "user/test-deployment-webhooks", "default_branch": "master"}}"#;
        let Ok(Parsed::Record(b)) = parse_gitlab("Deployment Hook", dep, &opts(false)) else {
            panic!("dep")
        };
        let (d, _) = b.deployment.expect("dep");
        assert_eq!(d.environment, "staging");
        assert_eq!(
            d.finished_at,
            parse_time("2021-04-28T19:50:00Z").expect("t")
        );
        assert_eq!(d.commit, "279484c09fbe69ededfced8c1bb6e6d24616b468");

        let push = br#"{"object_kind": "push", "ref": "refs/heads/master",
          "project": {"name": "Diaspora", "path_with_namespace": "mike/diaspora"},
          "commits": [{"id": "b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327",
                       "timestamp": "2011-12-12T14:27:31+02:00", "message": "x"}]}"#;
        let Ok(Parsed::Record(b)) = parse_gitlab("Push Hook", push, &opts(false)) else {
            panic!("push")
        };
        assert_eq!(b.pending[0].0, "gitlab:mike/diaspora");

        let pipe = br#"{"object_kind": "pipeline",
          "object_attributes": {"id": 31, "ref": "master", "sha": "bcbb5ec3", "status": "success",
             "created_at": "2016-08-12 15:23:28 UTC", "finished_at": "2016-08-12 15:26:29 UTC"},
          "project": {"name": "Gitlab Test", "path_with_namespace": "gitlab-org/gitlab-test",
                      "default_branch": "master"}}"#;
        let Ok(Parsed::Record(b)) = parse_gitlab("Pipeline Hook", pipe, &opts(true)) else {
            panic!("pipe")
        };
        let (d, _) = b.deployment.expect("dep");
        assert_eq!(d.finished_at - d.started_at, 181);
        assert!(matches!(
            parse_gitlab("Pipeline Hook", pipe, &opts(false)),
            Ok(Parsed::Ignored(_))
        ));
        assert!(matches!(
            parse_gitlab("Issue Hook", b"{}", &opts(true)),
            Ok(Parsed::Ignored(_))
        ));
    }

    #[test]
    fn alertmanager_firing_and_resolved() {
        let body = br#"{"version": "4", "status": "firing", "receiver": "sidelight",
          "alerts": [
            {"status": "firing", "labels": {"alertname": "HighErrors", "severity": "critical", "service": "api"},
             "startsAt": "2024-05-01T12:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "abc"},
            {"status": "resolved", "labels": {"alertname": "Slow", "severity": "critical", "job": "web",
              "deployment_id": "d7"},
             "startsAt": "2024-05-01T10:00:00Z", "endsAt": "2024-05-01T11:00:00Z", "fingerprint": "def"},
            {"status": "firing", "labels": {"severity": "warning"},
             "startsAt": "2024-05-01T12:00:00Z", "fingerprint": "ghi"}
          ]}"#;
        let Ok(Parsed::Record(b)) = parse_alertmanager(body, &opts(false)) else {
            panic!("am")
        };
        assert_eq!(b.incidents.len(), 3);
        let IncidentChange::Open(i) = &b.incidents[1] else {
            panic!("open")
        };
        assert_eq!(i.service, "web");
        assert_eq!(i.deployment_id.as_deref(), Some("d7"));
        assert!(matches!(
            &b.incidents[2],
            IncidentChange::Resolve { at, .. } if *at == 1_714_561_200
        ));
        assert!(parse_alertmanager(b"{\"alerts\": 3}", &opts(false)).is_err());
    }
}
