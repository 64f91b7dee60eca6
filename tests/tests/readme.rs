//! The README as a user reads it: every YAML block passes the real `check-config` (with the
//! files and variables it names provided), and the quick start, extracted by its
//! `<!-- quickstart:NAME -->` markers, runs as written — the agent on its embedded defaults, the
//! README's venv and pip lines run by bash in a fresh directory (pip fetches from PyPI), a
//! FastAPI app under `opentelemetry-instrument` from that venv — and ends with the promised
//! series on /metrics.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Proc, Result, eventually, sidelight_bin, workspace};

fn readme() -> Result<String> {
    Ok(std::fs::read_to_string(workspace().join("README.md"))?)
}

/// The fenced blocks of a language, in order.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let fence = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&fence) {
        let body = &rest[i + fence.len()..];
        let Some(end) = body.find("```") else { break };
        out.push(body[..end].to_owned());
        rest = &body[end..];
    }
    out
}

/// The block after `<!-- quickstart:NAME -->`.
fn quickstart(text: &str, name: &str) -> Result<String> {
    let marker = format!("<!-- quickstart:{name} -->\n");
    let at = text
        .find(&marker)
        .ok_or_else(|| format!("no {marker:?} in README.md"))?;
    let after = &text[at + marker.len()..];
    let start = after.find('\n').ok_or("no fence")? + 1;
    let end = after[start..].find("```").ok_or("unclosed fence")?;
    Ok(after[start..start + end].to_owned())
}

/// What a `*_file` key of the README may name, written so that check-config accepts it.
fn placeholder(dir: &Path, name: &str) -> Result {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let text = if name.ends_with("url") || name.contains("webhook") {
        "https://example.invalid/hook\n".to_owned()
    } else if name == "slack-token" {
        "xoxb-placeholder\n".to_owned()
    } else {
        "placeholder-secret\n".to_owned()
    };
    std::fs::write(path, text)?;
    Ok(())
}

#[test]
fn every_yaml_block_of_the_readme_passes_check_config() -> Result {
    let text = readme()?;
    let yaml = blocks(&text, "yaml");
    assert!(yaml.len() >= 5, "{} YAML blocks", yaml.len());
    // TLS files the reference names: a real CA, server and client pair.
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let mut checked = 0;
    for (i, block) in yaml.iter().enumerate() {
        // Prometheus's own file (scrape config), not the agent's.
        if block.starts_with("# prometheus.yml") {
            continue;
        }
        // An SLO spec: it must generate rules.
        if block.starts_with("# An SLO spec") {
            let dir = tempfile::tempdir()?;
            let spec = dir.path().join("readme.slo.yaml");
            std::fs::write(&spec, block)?;
            let out = Command::new(sidelight_bin())
                .args(["slo", "generate"])
                .arg(&spec)
                .output()?;
            assert!(
                out.status.success(),
                "README SLO spec block {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            continue;
        }
        let dir = tempfile::tempdir()?;
        let block = block.replace("/etc/sidelight/", &format!("{}/", dir.path().display()));
        let mut env: HashMap<String, String> = HashMap::new();
        for line in block.lines() {
            let code = line.split(" #").next().unwrap_or_default();
            for (key, value) in code
                .split([',', '{', '}'])
                .filter_map(|kv| kv.split_once(':'))
            {
                let (key, value) = (key.trim().trim_start_matches("- "), value.trim());
                let value = value.trim_matches('"');
                if value.is_empty() || value.contains(' ') {
                    continue;
                }
                if key.ends_with("_env") {
                    env.insert(value.to_owned(), "xapp-placeholder".to_owned());
                } else if key == "cert_file" || key == "ca_file" {
                    std::fs::write(dir.path().join(value), ca.cert.pem())?;
                } else if key == "key_file" {
                    std::fs::write(dir.path().join(value), ca.signing_key.serialize_pem())?;
                } else if key.ends_with("_file") {
                    placeholder(dir.path(), value)?;
                }
            }
            let mut rest = code;
            while let Some(i) = rest.find("${") {
                let name: String = rest[i + 2..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                env.insert(name, "placeholder".into());
                rest = &rest[i + 2..];
            }
        }
        let path = dir.path().join(format!("readme-{i}.yaml"));
        std::fs::write(&path, &block)?;
        let out = Command::new(sidelight_bin())
            .arg("check-config")
            .arg(&path)
            .envs(&env)
            .current_dir(dir.path())
            .output()?;
        assert!(
            out.status.success(),
            "README YAML block {i} ({:?}...): {}{}",
            block.lines().next(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 5, "{checked} blocks checked");
    Ok(())
}

/// The README's pip line names exactly the pinned versions of tests/python/requirements.txt,
/// so the other tests' venv (built from that file) holds what the README's line installs.
fn pip_line_is_pinned(pip: &str) -> Result {
    let reqs = std::fs::read_to_string(workspace().join("tests/python/requirements.txt"))?;
    let packages = pip
        .lines()
        .find_map(|l| l.trim().strip_prefix("pip install "))
        .ok_or_else(|| format!("no pip install line in {pip:?}"))?;
    for p in packages.split_whitespace() {
        assert!(p.contains("=="), "{p} is not pinned in the README");
        assert!(
            reqs.lines().any(|l| l.trim() == p),
            "{p} (README) is not pinned so in tests/python/requirements.txt"
        );
    }
    for needed in [
        "opentelemetry-distro==",
        "opentelemetry-exporter-otlp-proto-grpc==",
        "opentelemetry-instrumentation-fastapi==",
    ] {
        assert!(packages.contains(needed), "the pip line lacks {needed}");
    }
    Ok(())
}

/// The quick start as a user types it: the agent block, then in a second shell the venv and
/// pip block (a fresh venv, packages from PyPI: 30–60 s) and the run block, in the same
/// directory. Nothing of the test suite's own venv is on PATH.
#[test]
fn quick_start_runs_as_written() -> Result {
    let text = readme()?;
    let pip = quickstart(&text, "pip")?;
    pip_line_is_pinned(&pip)?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("app.py"), quickstart(&text, "app")?)?;
    // PATH as the user has it: the installed agent and the system's tools (python3 among them).
    let agent_bin = sidelight_bin()
        .parent()
        .ok_or("no binary directory")?
        .to_path_buf();
    let system_path = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.contains("venv"))
        .collect::<Vec<_>>()
        .join(":");
    let path = format!("{}:{system_path}", agent_bin.display());
    // In its own process group (stopped as a whole below: the block's shell and the agent).
    let agent = Proc(
        Command::new("setsid")
            .args(["bash", "-c", &quickstart(&text, "agent")?])
            .env("PATH", &path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    eventually(Duration::from_secs(30), "the agent on :9464", || {
        common::get("http://127.0.0.1:9464/readyz", &[])
            .ok()
            .filter(|(s, _, _)| *s == 200)
    })?;
    // The pip and run blocks in one shell (the second terminal), in its own process group, so
    // that the app it starts in the background is stopped with it.
    let run = quickstart(&text, "run")?;
    let script = format!(
        "{{\n{pip}\necho QUICKSTART-INSTALLED\n{run}\n}} > quickstart.out 2>&1\nkill -- -$$\n"
    );
    let mut shell = Command::new("setsid")
        .args(["bash", "-c", &script])
        .env("PATH", &path)
        .env_remove("VIRTUAL_ENV")
        .env_remove("PYTHONPATH")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .spawn()?;
    let _ = common::wait_exit(&mut shell, Duration::from_secs(300));
    let out = std::fs::read_to_string(dir.path().join("quickstart.out"))?;
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{}", agent.0.id())])
        .status();
    drop(agent);
    assert!(
        out.contains("QUICKSTART-INSTALLED") && out.contains("Successfully installed"),
        "the README's venv and pip lines failed:\n{out}"
    );
    // The app ran from the fresh venv, with the distro the pip line installed.
    let venv = dir.path().join(".venv");
    assert!(
        venv.join("bin/opentelemetry-instrument").exists(),
        "no .venv/bin/opentelemetry-instrument:\n{out}"
    );
    let freeze = Command::new(venv.join("bin/pip")).arg("freeze").output()?;
    let frozen = String::from_utf8_lossy(&freeze.stdout);
    assert!(
        frozen
            .lines()
            .any(|l| l.starts_with("opentelemetry-distro==")),
        "{frozen}"
    );
    for series in [
        "traces_span_metrics_calls_total{service_name=\"checkout\",span_name=\"GET /items/{item_id}\"",
        "sidelight_log_records_total{source=\"app\",level=\"info\"} 1",
    ] {
        assert!(out.contains(series), "{series} not in the output:\n{out}");
    }
    Ok(())
}

/// `check-config` of a valid file warns (exit 0) when the user running it could not write
/// `store.path` or read a log directory, and `run` then fails saying "Permission denied" once.
/// Run as uid 65534 through `setpriv` when the suite runs as root (root may write anywhere).
#[test]
fn check_config_warns_about_permissions_and_run_says_it_once() -> Result {
    let dir = tempfile::tempdir()?;
    let locked = dir.path().join("locked");
    std::fs::create_dir_all(locked.join("logs"))?;
    let config = dir.path().join("sidelight.yaml");
    std::fs::write(
        &config,
        format!(
            "http: {{ listen: 127.0.0.1:0 }}\nstore: {{ path: {0}/state }}\nlogs:\n  - source: app\n    include: [\"{0}/logs/*.log\"]\n",
            locked.display()
        ),
    )?;
    let as_root = Command::new("id").arg("-u").output()?.stdout == b"0\n";
    let perms = |p: &Path, mode: u32| -> Result {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    // Others may pass through the temp dir and read the config, not write `locked` or list logs.
    perms(dir.path(), 0o755)?;
    perms(&config, 0o644)?;
    perms(&locked, 0o555)?;
    perms(&locked.join("logs"), 0o700)?;
    let command = |args: &[&str]| {
        let mut c = if as_root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(sidelight_bin());
            c
        } else {
            Command::new(sidelight_bin())
        };
        c.args(args).current_dir(dir.path());
        c
    };
    let config_arg = config.to_string_lossy().into_owned();
    let out = command(&["check-config", &config_arg]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: store.path") && stderr.contains("cannot be created by uid"),
        "{stderr}"
    );
    assert!(
        stderr.contains("logs (app):") && stderr.contains("is not readable"),
        "{stderr}"
    );
    let out = command(&["run", "--config", &config_arg]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.matches("Permission denied").count(),
        1,
        "printed once: {stderr}"
    );
    perms(&locked, 0o755)?;
    Ok(())
}
