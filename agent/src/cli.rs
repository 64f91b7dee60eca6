//! The `sidelight dora report`, `sidelight deploy` and `sidelight probe` commands: the first
//! reads the store directly (no running agent needed), the second posts a deployment to a running
//! agent, the third is a health check for images without a shell or curl (Docker's
//! `HEALTHCHECK`).

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use clap::{Args, ValueEnum};
use sidelight::config::{Config, ProcessEnv};
use sidelight::dora::{DeployStatus, Report, Scope, Window, report as dora_report};
use sidelight::hub::unix_now;
use sidelight::store::Store;

/// A failed command, and whether it was the user's input (exit 64) or not (exit 1).
#[derive(Debug)]
pub struct CliError {
    /// The error chain.
    pub error: anyhow::Error,
    /// Bad usage or configuration.
    pub usage: bool,
}

fn usage(error: impl Into<anyhow::Error>) -> CliError {
    CliError {
        error: error.into(),
        usage: true,
    }
}

fn failure(error: impl Into<anyhow::Error>) -> CliError {
    CliError {
        error: error.into(),
        usage: false,
    }
}

/// Output format of `dora report`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// The same JSON as `GET /api/v1/dora`.
    Json,
}

/// `sidelight dora report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The YAML configuration file (for store.path and dora.environment).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The trailing window, e.g. 7d, 30d, 12h.
    #[arg(long, default_value = "30d")]
    window: String,
    /// Only this service.
    #[arg(long)]
    service: Option<String>,
    /// The environment (default: dora.environment).
    #[arg(long)]
    environment: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

/// Prints a report from the store.
pub fn report(args: &ReportArgs) -> Result<(), CliError> {
    let config = match &args.config {
        Some(p) => Config::load(p, &ProcessEnv),
        None => Config::embedded(),
    }
    .map_err(usage)?;
    let window = Window::parse(&args.window).map_err(usage)?;
    let db = config.store.path.join(sidelight::store::DB_FILE);
    if !db.exists() {
        return Err(failure(anyhow!("no DORA store at {}", db.display())));
    }
    let store = Store::open_existing(&config.store.path)
        .with_context(|| format!("opening {}", db.display()))
        .map_err(failure)?;
    let events = store.load(i64::MIN).map_err(failure)?;
    let env = args
        .environment
        .clone()
        .unwrap_or_else(|| config.dora.environment.clone());
    let mut scope = Scope::environment(&env);
    if let Some(s) = &args.service {
        scope = scope.with_service(s);
    }
    let r = dora_report(unix_now(), &events, window, &scope);
    match args.format {
        Format::Json => {
            let text = serde_json::to_string_pretty(&r).map_err(failure)?;
            println!("{text}");
        }
        Format::Table => print!("{}", table(&r)),
    }
    Ok(())
}

fn duration(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) => {
            let s = s.round().max(0.0) as u64;
            humantime::format_duration(std::time::Duration::from_secs(s)).to_string()
        }
    }
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0))
}

/// Renders a report as aligned columns.
fn table(r: &Report) -> String {
    let mut rows = vec![[
        "SERVICE".to_owned(),
        "ENVIRONMENT".to_owned(),
        "DEPLOYS".to_owned(),
        "PER DAY".to_owned(),
        "LEAD TIME (MEDIAN)".to_owned(),
        "CHANGE FAIL".to_owned(),
        "RECOVERY (MEDIAN)".to_owned(),
        "REWORK".to_owned(),
    ]];
    for s in &r.services {
        rows.push([
            s.service.clone(),
            s.environment.clone(),
            s.deployments.to_string(),
            format!("{:.2}", s.deployment_frequency_per_day),
            duration(s.lead_time_median_seconds),
            ratio(s.change_fail_rate),
            duration(s.recovery_time_median_seconds),
            ratio(s.rework_rate),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = format!("DORA report, window {}\n", r.window);
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if r.services.is_empty() {
        out.push_str("(no deployments or incidents)\n");
    }
    out
}

/// `sidelight deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Service name.
    #[arg(long)]
    service: String,
    /// Version deployed.
    #[arg(long)]
    version: String,
    /// Head commit deployed.
    #[arg(long)]
    commit: String,
    /// Target environment.
    #[arg(long, default_value = "production")]
    environment: String,
    /// Whether the deploy succeeded.
    #[arg(long, value_enum, default_value = "success")]
    status: StatusArg,
    /// The agent's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:9464")]
    url: String,
    /// A file holding the agent's bearer token.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// `--status`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusArg {
    /// Live.
    Success,
    /// Failed.
    Failure,
}

/// Posts one deployment.
pub fn deploy(args: &DeployArgs) -> Result<(), CliError> {
    let token = match &args.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))
                .map_err(usage)?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let status = match args.status {
        StatusArg::Success => DeployStatus::Success,
        StatusArg::Failure => DeployStatus::Failure,
    };
    let body = serde_json::json!({
        "service": args.service,
        "version": args.version,
        "commit": args.commit,
        "environment": args.environment,
        "status": status,
        "finished_at": unix_now(),
    });
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let url = format!("{}/api/v1/deployments", args.url.trim_end_matches('/'));
    let mut req = agent.post(&url).header("content-type", "application/json");
    if let Some(t) = &token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    let mut resp = req
        .send(body.to_string())
        .with_context(|| format!("POST {url}"))
        .map_err(failure)?;
    let code = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    if (200..300).contains(&code) {
        println!("{}", text.trim());
        Ok(())
    } else {
        Err(failure(anyhow!("POST {url}: HTTP {code}: {}", text.trim())))
    }
}

/// `sidelight probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The URL to GET: the agent's `/readyz` or `/healthz` (plain `http://` only).
    #[arg(long, default_value = "http://127.0.0.1:9464/readyz")]
    url: String,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

/// GETs the URL once: `Ok` on a 2xx answer, a failure (exit 1) on any other answer or none,
/// a usage error (exit 64) for a URL that is not `http://`.
pub fn probe(args: &ProbeArgs) -> Result<(), CliError> {
    if !args.url.starts_with("http://") {
        return Err(usage(anyhow!(
            "--url {:?}: only http:// URLs can be probed",
            args.url
        )));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(args.timeout))
        .build()
        .into();
    let resp = agent
        .get(&args.url)
        .call()
        .with_context(|| format!("GET {}", args.url))
        .map_err(failure)?;
    let code = resp.status().as_u16();
    if (200..300).contains(&code) {
        println!("{}: {code}", args.url);
        Ok(())
    } else {
        Err(failure(anyhow!("GET {}: HTTP {code}", args.url)))
    }
}
