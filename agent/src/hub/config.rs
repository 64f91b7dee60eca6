//! The `dora:` section: its shape and validation into the [`DoraConfig`] the hub, its API and
//! webhooks run on (`dora.regression` is the detector's, in `hub::detector`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::detector::{RawRegression, RegressionSettings};
use crate::config::common::{ConfigError, Env, Secret, duration, read_secret};
use crate::dora::Window;

/// `dora:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RawDora {
    enabled: bool,
    environment: String,
    tiers: String,
    #[serde(with = "duration")]
    retention: Duration,
    windows: Vec<String>,
    webhooks: RawWebhooks,
    alertmanager: RawAlertmanager,
    regression: RawRegression,
}

impl Default for RawDora {
    fn default() -> Self {
        Self {
            enabled: false,
            environment: "production".into(),
            tiers: "dora-2023".into(),
            retention: Duration::from_secs(400 * 86_400),
            windows: Window::DEFAULTS.iter().map(ToString::to_string).collect(),
            webhooks: RawWebhooks::default(),
            alertmanager: RawAlertmanager::default(),
            regression: RawRegression::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawWebhooks {
    github: Option<RawGithubHook>,
    gitlab: Option<RawGitlabHook>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawGithubHook {
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
    /// Record a deployment for a successful `workflow_run` on the default branch.
    deploy_on_workflow_run: bool,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawGitlabHook {
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    /// Record a deployment for a successful pipeline on the default branch.
    deploy_on_pipeline: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawAlertmanager {
    severities: Vec<String>,
}

impl Default for RawAlertmanager {
    fn default() -> Self {
        Self {
            severities: vec!["critical".into()],
        }
    }
}

/// `dora:` section, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DoraConfig {
    /// Whether this agent is the DORA hub (store, API, webhooks, metrics).
    pub enabled: bool,
    /// The environment DORA metrics are computed for.
    pub environment: String,
    /// The tier set name (`dora-2023`).
    pub tiers: String,
    /// The report year of `tiers`.
    pub tier_year: u16,
    /// Events older than this are deleted.
    pub retention: Duration,
    /// The windows of the windowed gauges.
    pub windows: Vec<Window>,
    /// GitHub webhook settings, when configured.
    pub github: Option<GithubHookConfig>,
    /// GitLab webhook settings, when configured.
    pub gitlab: Option<GitlabHookConfig>,
    /// Alertmanager alerts of these severities open and resolve incidents.
    pub alertmanager_severities: Vec<String>,
    /// Change failures detected from span metrics (`dora.regression`).
    pub regression: RegressionSettings,
}

/// `dora.webhooks.github`.
#[derive(Debug, Clone, PartialEq)]
pub struct GithubHookConfig {
    /// The webhook secret (HMAC-SHA256 key).
    pub secret: Secret,
    /// Whether a successful `workflow_run` on the default branch records a deployment.
    pub deploy_on_workflow_run: bool,
}

/// `dora.webhooks.gitlab`.
#[derive(Debug, Clone, PartialEq)]
pub struct GitlabHookConfig {
    /// The expected `X-Gitlab-Token`.
    pub token: Secret,
    /// Whether a successful pipeline on the default branch records a deployment.
    pub deploy_on_pipeline: bool,
}

/// Validates `dora:` (secret files relative to `base`), adding every problem to `errors`.
pub fn validate(
    raw: RawDora,
    base: &Path,
    env: &dyn Env,
    errors: &mut Vec<ConfigError>,
) -> DoraConfig {
    let regression = super::detector::validate(raw.regression, errors);
    let mut err = |path: &str, message: String| errors.push(ConfigError::new(path, message));
    if raw.environment.trim().is_empty() {
        err("dora.environment", "must not be empty".into());
    }
    let tier_year = match crate::dora::tiers::parse_tier_set(&raw.tiers) {
        Ok(year) => match crate::dora::TierTable::builtin().and_then(|t| t.for_year(year)) {
            Ok(_) => year,
            Err(e) => {
                err("dora.tiers", e.to_string());
                0
            }
        },
        Err(e) => {
            err("dora.tiers", e.to_string());
            0
        }
    };
    if raw.retention < Duration::from_secs(86_400) {
        err("dora.retention", "must be at least 1d".into());
    }
    let mut windows = Vec::new();
    if raw.windows.is_empty() {
        err("dora.windows", "needs at least one window".into());
    }
    for (i, w) in raw.windows.iter().enumerate() {
        match Window::parse(w.trim()) {
            Ok(w) if windows.contains(&w) => err(
                &format!("dora.windows[{i}]"),
                format!("duplicate window {w}"),
            ),
            Ok(w) if w.seconds() as u128 > raw.retention.as_secs() as u128 => err(
                &format!("dora.windows[{i}]"),
                format!("window {w} is longer than dora.retention"),
            ),
            Ok(w) => windows.push(w),
            Err(e) => err(&format!("dora.windows[{i}]"), e.to_string()),
        }
    }
    let mut severities = Vec::new();
    for (i, s) in raw.alertmanager.severities.iter().enumerate() {
        if s.trim().is_empty() {
            err(
                &format!("dora.alertmanager.severities[{i}]"),
                "must not be empty".into(),
            );
        } else {
            severities.push(s.trim().to_owned());
        }
    }
    let github = raw.webhooks.github.and_then(|g| {
        read_secret(
            g.secret_file.as_ref(),
            g.secret_env.as_ref(),
            "dora.webhooks.github",
            ("secret_file", "secret_env"),
            base,
            env,
            errors,
        )
        .map(|secret| GithubHookConfig {
            secret,
            deploy_on_workflow_run: g.deploy_on_workflow_run,
        })
    });
    let gitlab = raw.webhooks.gitlab.and_then(|g| {
        read_secret(
            g.token_file.as_ref(),
            g.token_env.as_ref(),
            "dora.webhooks.gitlab",
            ("token_file", "token_env"),
            base,
            env,
            errors,
        )
        .map(|token| GitlabHookConfig {
            token,
            deploy_on_pipeline: g.deploy_on_pipeline,
        })
    });
    DoraConfig {
        enabled: raw.enabled,
        environment: raw.environment,
        tiers: raw.tiers,
        tier_year,
        retention: raw.retention,
        windows,
        github,
        gitlab,
        alertmanager_severities: severities,
        regression,
    }
}
