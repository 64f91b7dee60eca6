//! The `sidelight dora report`, `sidelight deploy` and `sidelight probe` commands: the first
//! reads the store directly (no running agent needed), the second posts a deploy attempt to a
//! running hub with the commits since the service's previous deployment (read with `git`), the
//! third is a health check for images without a shell or curl (Docker's `HEALTHCHECK`).
//! `sidelight slo generate` writes the rule file for an SLO spec (see [`sidelight::slo`]).

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use clap::{Args, ValueEnum};
use sidelight::config::{Config, ProcessEnv};
use sidelight::dora::{DeployStatus, Report, Scope, Window, report as dora_report};
use sidelight::hub::unix_now;
use sidelight::store::Store;
use sidelight_collector::http_client::tls::ClientTls;
use sidelight_collector::http_client::{ClientOptions, HttpClient, RequestError, Response};

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
    /// The agent's YAML configuration file: the report reads its `store.path` and
    /// `dora.environment` (default: the embedded defaults, `./sidelight-data`).
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
        let hint = match &args.config {
            Some(p) => format!("the store.path of {}", p.display()),
            None => "the default store.path; pass the agent's configuration with --config FILE to read its store".into(),
        };
        return Err(failure(anyhow!(
            "no DORA store at {} ({hint}); a running hub also answers GET /api/v1/dora",
            db.display()
        )));
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
    /// Head commit deployed (a sha, or any revision of the checkout).
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
    #[arg(long, conflicts_with = "token_env")]
    token_file: Option<PathBuf>,
    /// An environment variable holding the agent's bearer token (e.g. a CI secret).
    #[arg(long, value_name = "VAR")]
    token_env: Option<String>,
    /// This deploy attempt's delivery id: the same id posted twice counts once. Default:
    /// `gha-$GITHUB_RUN_ID-$GITHUB_RUN_ATTEMPT`, `gitlab-job-$CI_JOB_ID`, or a generated one,
    /// followed by `/<service>/<environment>`.
    #[arg(long)]
    delivery_id: Option<String>,
    /// The git checkout to read commits from.
    #[arg(long, default_value = ".", value_name = "DIR")]
    checkout: PathBuf,
    /// Send the commits after this revision instead of those after the service's last
    /// recorded deployment (asked of the agent).
    #[arg(long, value_name = "REF", conflicts_with = "no_git")]
    commits_from: Option<String>,
    /// Do not read git: send no commits (e.g. when webhooks report pushes; see --repository).
    #[arg(long)]
    no_git: bool,
    /// Also take the commits pushed to this repository, as reported by webhooks
    /// (`github:<owner>/<repo>` or `gitlab:<group>/<project>`).
    #[arg(long, value_name = "KEY")]
    repository: Option<String>,
    /// For a squash-merged pull request: the time of its first commit (RFC 3339 or Unix
    /// seconds), used as the change time of the deployed commit.
    #[arg(long, value_name = "TIME")]
    pr_first_commit_at: Option<String>,
}

/// `--status`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusArg {
    /// Live.
    Success,
    /// Failed.
    Failure,
}

/// Most commits one deploy sends (the newest are kept).
const MAX_COMMITS: usize = 10_000;

/// One change read from git.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GitCommit {
    sha: String,
    author_time: i64,
}

/// Runs `git -C dir args…` and returns its standard output.
fn git(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .with_context(|| format!("running git in {}", dir.display()))?;
    if !out.status.success() {
        return Err(anyhow!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The full sha of a revision, if the checkout has it.
fn resolve(dir: &std::path::Path, rev: &str) -> Option<String> {
    git(
        dir,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{rev}^{{commit}}"),
        ],
    )
    .ok()
    .map(|s| s.trim().to_owned())
    .filter(|s| !s.is_empty())
}

/// Non-merge commits in `base..head` (all of `head`'s when `base` is `None`, limited to
/// the head commit itself), newest first, with their author times.
fn commits_between(
    dir: &std::path::Path,
    base: Option<&str>,
    head: &str,
) -> anyhow::Result<Vec<GitCommit>> {
    let range = match base {
        Some(b) => format!("{b}..{head}"),
        None => head.to_owned(),
    };
    let max = (MAX_COMMITS + 1).to_string();
    let mut args = vec!["log", "--no-merges", "--format=%H %at", "-n", &max];
    if base.is_none() {
        args = vec!["log", "--format=%H %at", "-n", "1"];
    }
    args.push(&range);
    args.push("--");
    let text = git(dir, &args)?;
    text.lines()
        .map(|line| {
            let (sha, at) = line
                .split_once(' ')
                .ok_or_else(|| anyhow!("unexpected git log line {line:?}"))?;
            Ok(GitCommit {
                sha: sha.to_owned(),
                author_time: at
                    .trim()
                    .parse()
                    .with_context(|| format!("author time of {sha}"))?,
            })
        })
        .collect()
}

/// The delivery id when none is given: the CI run's, else a generated one.
fn default_delivery_id(
    env: &dyn Fn(&str) -> Option<String>,
    service: &str,
    environment: &str,
) -> String {
    let run = match (
        env("GITHUB_RUN_ID"),
        env("GITHUB_RUN_ATTEMPT"),
        env("CI_JOB_ID"),
    ) {
        (Some(run), attempt, _) => format!("gha-{run}-{}", attempt.as_deref().unwrap_or("1")),
        (None, _, Some(job)) => format!("gitlab-job-{job}"),
        (None, _, None) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            format!("cli-{nanos}-{}", std::process::id())
        }
    };
    format!("{run}/{service}/{environment}")
}

fn read_token(args: &DeployArgs) -> Result<Option<String>, CliError> {
    if let Some(var) = &args.token_env {
        let value = std::env::var(var)
            .map_err(|_| usage(anyhow!("--token-env {var}: the variable is not set")))?;
        let token = value.trim().to_owned();
        if token.is_empty() {
            return Err(usage(anyhow!("--token-env {var}: the variable is empty")));
        }
        return Ok(Some(token));
    }
    match &args.token_file {
        Some(f) => Ok(Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))
                .map_err(usage)?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
        )),
        None => Ok(None),
    }
}

/// The agent's HTTP client on a one-thread runtime, for a command that sends a request or two.
struct Http {
    client: HttpClient,
    runtime: tokio::runtime::Runtime,
}

impl Http {
    /// A client for `url`'s scheme: the system's roots for `https://`.
    fn new(url: &str, timeout: std::time::Duration) -> anyhow::Result<Self> {
        let tls = if url.starts_with("https://") {
            Some(std::sync::Arc::new(
                ClientTls::load(&Default::default()).context("TLS for the agent's URL")?,
            ))
        } else {
            None
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let client = HttpClient::new(&ClientOptions {
            tls,
            timeout,
            max_response_bytes: 16 << 20,
        })
        .context("the HTTP client")?;
        Ok(Self { client, runtime })
    }

    fn send(&self, request: http::Request<bytes::Bytes>) -> Result<Response, RequestError> {
        self.runtime.block_on(self.client.send(request))
    }
}

/// Talks to the agent's DORA API.
struct AgentApi {
    base: String,
    token: Option<String>,
    http: Http,
}

impl AgentApi {
    fn explain(&self, method: &str, path: &str, code: u16, text: &str) -> anyhow::Error {
        match code {
            404 => anyhow!(
                "DORA is not enabled on {} ({method} {path} answered 404; the agent needs `dora.enabled: true`)",
                self.base
            ),
            401 => anyhow!(
                "{} refused the bearer token (HTTP 401): pass it with --token-env VAR or --token-file FILE",
                self.base
            ),
            _ => anyhow!("{method} {}{path}: HTTP {code}: {}", self.base, text.trim()),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<String>) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let mut req = http::Request::builder().method(method).uri(&url);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(body.map(bytes::Bytes::from).unwrap_or_default())
            .with_context(|| format!("{method} {url}"))?;
        let resp = self
            .http
            .send(req)
            .with_context(|| format!("{method} {url}"))?;
        let code = resp.status.as_u16();
        let text = String::from_utf8_lossy(&resp.body).into_owned();
        if (200..300).contains(&code) {
            Ok(text)
        } else {
            Err(self.explain(method, path, code, &text))
        }
    }

    /// The head commit of the service's last successful deployment, if any.
    fn last_deployed_commit(&self, service: &str, environment: &str) -> anyhow::Result<String> {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("service", service)
            .append_pair("environment", environment)
            .append_pair("limit", "1")
            .finish();
        let text = self.call("GET", &format!("/api/v1/deployments?{query}"), None)?;
        let v: serde_json::Value =
            serde_json::from_str(&text).context("the agent's deployment list")?;
        Ok(v["deployments"][0]["commit"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }
}

/// Posts one deploy attempt, with the commits since the service's previous deployment.
pub fn deploy(args: &DeployArgs) -> Result<(), CliError> {
    let token = read_token(args)?;
    let status = match args.status {
        StatusArg::Success => DeployStatus::Success,
        StatusArg::Failure => DeployStatus::Failure,
    };
    let pr_first = match &args.pr_first_commit_at {
        None => None,
        Some(t) => Some(match t.parse::<i64>() {
            Ok(n) => n,
            Err(_) => sidelight::webhooks::parse_time(t).ok_or_else(|| {
                usage(anyhow!(
                    "--pr-first-commit-at {t:?}: not RFC 3339 or Unix seconds"
                ))
            })?,
        }),
    };
    let api = AgentApi {
        base: args.url.trim_end_matches('/').to_owned(),
        token,
        http: Http::new(&args.url, std::time::Duration::from_secs(30)).map_err(failure)?,
    };
    let mut commit = args.commit.clone();
    let mut commits: Vec<GitCommit> = Vec::new();
    let mut since = String::from("no git");
    if !args.no_git {
        match resolve(&args.checkout, &args.commit) {
            None => eprintln!(
                "warning: {} is not a git checkout holding {:?}: recording without commits (pass --no-git to silence)",
                args.checkout.display(),
                args.commit
            ),
            Some(head) => {
                commit = head.clone();
                let base = match &args.commits_from {
                    Some(r) => Some(r.clone()),
                    None => Some(
                        api.last_deployed_commit(&args.service, &args.environment)
                            .map_err(failure)?,
                    )
                    .filter(|c| !c.is_empty()),
                };
                let base_sha = match &base {
                    None => None,
                    Some(b) => match resolve(&args.checkout, b) {
                        Some(sha) => Some(sha),
                        None => {
                            eprintln!(
                                "warning: {b} (the previous deployment) is not in this checkout (a shallow clone? fetch the history, e.g. `fetch-depth: 0`): sending only {head}"
                            );
                            None
                        }
                    },
                };
                commits =
                    commits_between(&args.checkout, base_sha.as_deref(), &head).map_err(failure)?;
                if commits.len() > MAX_COMMITS {
                    eprintln!(
                        "warning: more than {MAX_COMMITS} commits since {}: sending the newest {MAX_COMMITS}",
                        base.as_deref().unwrap_or("?")
                    );
                    commits.truncate(MAX_COMMITS);
                }
                since = match (&base, &base_sha) {
                    (Some(b), Some(_)) => format!("since {b}"),
                    (None, _) => "first deployment: the deployed commit only".into(),
                    (Some(_), None) => "the deployed commit only".into(),
                };
            }
        }
    }
    let delivery_id = args.delivery_id.clone().unwrap_or_else(|| {
        default_delivery_id(
            &|k| std::env::var(k).ok().filter(|v| !v.is_empty()),
            &args.service,
            &args.environment,
        )
    });
    let mut body = serde_json::json!({
        "id": delivery_id,
        "service": args.service,
        "version": args.version,
        "commit": commit,
        "environment": args.environment,
        "status": status,
        "finished_at": unix_now(),
        "commits": commits.iter().map(|c| {
            let mut v = serde_json::json!({"sha": c.sha, "timestamp": c.author_time});
            if let Some(first) = pr_first.filter(|_| c.sha == commit) {
                v["pr_first_commit_at"] = first.into();
            }
            v
        }).collect::<Vec<_>>(),
    });
    if let Some(r) = &args.repository {
        body["repository"] = r.clone().into();
    }
    let text = api
        .call("POST", "/api/v1/deployments", Some(body.to_string()))
        .map_err(failure)?;
    println!("{}", text.trim());
    eprintln!(
        "{} {} {} to {}: {} commit(s) ({since}), delivery id {delivery_id}",
        if status == DeployStatus::Success {
            "deployed"
        } else {
            "failed deploying"
        },
        args.service,
        args.version,
        args.environment,
        commits.len(),
    );
    Ok(())
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
    let http = Http::new(&args.url, args.timeout).map_err(failure)?;
    let req = http::Request::get(args.url.as_str())
        .body(bytes::Bytes::new())
        .with_context(|| format!("GET {}", args.url))
        .map_err(usage)?;
    let resp = http
        .send(req)
        .with_context(|| format!("GET {}", args.url))
        .map_err(failure)?;
    let code = resp.status.as_u16();
    if (200..300).contains(&code) {
        println!("{}: {code}", args.url);
        Ok(())
    } else {
        Err(failure(anyhow!("GET {}: HTTP {code}", args.url)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_follow_the_ci_run() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let gha = env(&[("GITHUB_RUN_ID", "1658821493"), ("GITHUB_RUN_ATTEMPT", "2")]);
        assert_eq!(
            default_delivery_id(&gha, "api", "production"),
            "gha-1658821493-2/api/production"
        );
        let gl = env(&[("CI_JOB_ID", "8675309")]);
        assert_eq!(
            default_delivery_id(&gl, "api", "staging"),
            "gitlab-job-8675309/api/staging"
        );
        let none = env(&[]);
        let a = default_delivery_id(&none, "api", "production");
        assert!(
            a.starts_with("cli-") && a.ends_with("/api/production"),
            "{a}"
        );
    }
}

/// `sidelight slo generate`.
#[derive(Debug, Args)]
pub struct SloGenerateArgs {
    /// The SLO spec (YAML; see README, "SLO rules from a spec").
    spec: PathBuf,
    /// Write the rule file here instead of to standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// Validates a spec (every problem, with its YAML path: exit 64) and writes its rule file.
pub fn slo_generate(args: &SloGenerateArgs) -> Result<(), CliError> {
    let name = args.spec.display().to_string();
    let text = std::fs::read_to_string(&args.spec)
        .with_context(|| format!("reading {name}"))
        .map_err(usage)?;
    let invalid = |errors: Vec<sidelight::slo::SpecError>| {
        let lines: Vec<String> = errors.iter().map(|e| format!("{name}: {e}")).collect();
        usage(anyhow!("invalid SLO spec\n{}", lines.join("\n")))
    };
    let (spec, warnings) = sidelight::slo::parse(&text).map_err(invalid)?;
    for w in warnings {
        eprintln!("warning: {name}: {w}");
    }
    let rules = sidelight::slo::generate(&spec, &name).map_err(invalid)?;
    match &args.output {
        Some(out) => {
            std::fs::write(out, &rules)
                .with_context(|| format!("writing {}", out.display()))
                .map_err(failure)?;
            eprintln!(
                "{}: rules for {} SLO(s) of {}",
                out.display(),
                spec.slos.len(),
                spec.service
            );
        }
        None => print!("{rules}"),
    }
    Ok(())
}
