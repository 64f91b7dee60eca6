//! Deploy files are checked by the tools that consume them, where they run here: the systemd
//! unit by `systemd-analyze verify`, the Kubernetes overlays rendered by `kubectl kustomize` and
//! validated against the Kubernetes schemas (`kubernetes-validate`), every agent config by the
//! real `sidelight check-config`. What has no tool here (no Docker engine, no OpenTelemetry
//! Collector binary) is parsed and checked for what we promise: the Dockerfile's stages, user,
//! healthcheck and context; the gateway's pipeline wiring.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Agent, Result, eventually, free_port, python, sidelight_bin, workspace};
use serde::Deserialize;
use serde_yaml_ng::Value as Yaml;

#[test]
fn systemd_unit_verifies_and_is_hardened() -> Result {
    let unit = std::fs::read_to_string(workspace().join("deploy/systemd/sidelight.service"))?;
    for directive in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "StateDirectory=sidelight",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RestartPreventExitStatus=64",
    ] {
        assert!(unit.contains(directive), "missing {directive:?}");
    }
    // systemd-analyze checks that ExecStart exists: point it at the binary we built.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("sidelight.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/sidelight",
            &sidelight_bin().to_string_lossy(),
        ),
    )?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("sidelight.service"),
        "systemd-analyze: {stderr}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Shared helpers.

fn read(path: &str) -> Result<String> {
    let p = workspace().join(path);
    std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()).into())
}

/// Every YAML document of a multi-document text.
fn yaml_docs(text: &str) -> Result<Vec<Yaml>> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v = Yaml::deserialize(doc)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Runs `sidelight check-config` on a config text written to `dir/name`; the check's output on
/// failure.
fn check_config(dir: &Path, name: &str, text: &str) -> Result {
    check_config_env(dir, name, text, None)
}

/// `check-config` with only `env` in the environment when given (a manifest's `env:`).
fn check_config_env(
    dir: &Path,
    name: &str,
    text: &str,
    env: Option<&[(String, String)]>,
) -> Result {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    let mut cmd = Command::new(sidelight_bin());
    cmd.arg("check-config").arg(&path);
    if let Some(env) = env {
        cmd.env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "check-config {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into())
    }
}

fn s(v: &Yaml) -> &str {
    v.as_str().unwrap_or_default()
}

fn seq(v: &Yaml) -> &[Yaml] {
    v.as_sequence().map_or(&[], Vec::as_slice)
}

// ---------------------------------------------------------------------------------------------
// `sidelight probe`: the container's HEALTHCHECK.

#[test]
fn probe_reports_the_agents_health_by_exit_code() -> Result {
    let agent = Agent::start("http: { listen: 127.0.0.1:0 }\nhost: { interval: 1s }\n")?;
    let probe = |url: &str| -> Result<(Option<i32>, String)> {
        let out = Command::new(sidelight_bin())
            .args(["probe", "--timeout", "2s", "--url", url])
            .output()?;
        Ok((
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    };
    let ready = agent.url("/readyz");
    eventually(Duration::from_secs(15), "probe of /readyz to pass", || {
        probe(&ready).ok().filter(|(c, _)| *c == Some(0))
    })?;
    let (code, out) = probe(&agent.url("/healthz"))?;
    assert_eq!(code, Some(0), "{out}");
    // A 404 and a port nobody listens on both fail (exit 1); a non-http URL is bad usage (64).
    let (code, out) = probe(&agent.url("/no-such-route"))?;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("404"), "{out}");
    let (code, out) = probe(&format!("http://127.0.0.1:{}/readyz", free_port()))?;
    assert_eq!(code, Some(1), "{out}");
    let (code, out) = probe("https://127.0.0.1:9464/readyz")?;
    assert_eq!(code, Some(64), "{out}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// deploy/Dockerfile (no Docker engine runs here: checked by parsing it).

/// A Dockerfile's instructions: (INSTRUCTION, arguments), continuation lines joined, comments and
/// parser directives dropped.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let full = std::mem::take(&mut current);
        let (inst, args) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
        out.push((inst.to_ascii_uppercase(), args.trim().to_owned()));
    }
    out
}

/// A JSON-array (exec form) argument list.
fn exec_form(args: &str) -> Option<Vec<String>> {
    serde_json::from_str(args).ok()
}

/// `.dockerignore` as Docker applies it: patterns in order, `!` re-includes, the last match
/// wins, and a pattern matching a parent directory matches everything under it.
struct DockerIgnore(Vec<(bool, globset::GlobMatcher)>);

impl DockerIgnore {
    fn parse(text: &str) -> Result<DockerIgnore> {
        let mut pats = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (include, pat) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let pat = pat.trim_start_matches('/').trim_end_matches('/');
            let glob = globset::GlobBuilder::new(pat)
                .literal_separator(true)
                .build()?
                .compile_matcher();
            pats.push((include, glob));
        }
        Ok(DockerIgnore(pats))
    }

    fn excluded(&self, path: &str) -> bool {
        let mut prefixes = Vec::new();
        let mut acc = String::new();
        for part in path.split('/') {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            prefixes.push(acc.clone());
        }
        let mut excluded = false;
        for (include, glob) in &self.0 {
            if prefixes.iter().any(|p| glob.is_match(p)) {
                excluded = !include;
            }
        }
        excluded
    }
}

fn git_files(under: &str) -> Result<Vec<String>> {
    let out = Command::new("git")
        .args([
            "ls-files",
            "--cached",
            "--others",
            "--exclude-standard",
            "--",
            under,
        ])
        .current_dir(workspace())
        .output()?;
    assert!(out.status.success(), "git ls-files failed");
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .map(str::to_owned)
        .collect())
}

#[test]
fn dockerfile_is_multi_stage_non_root_read_only_friendly_with_healthcheck() -> Result {
    let text = read("deploy/Dockerfile")?;
    let inst = dockerfile_instructions(&text);
    let of = |name: &str| -> Vec<&str> {
        inst.iter()
            .filter(|(i, _)| i == name)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    // Stages: a named Rust build stage, then a distroless (or scratch) runtime.
    let froms = of("FROM");
    assert!(froms.len() >= 2, "not multi-stage: {froms:?}");
    assert!(
        froms[0].contains("rust:") && froms[0].ends_with(" AS build"),
        "{froms:?}"
    );
    let runtime = froms.last().copied().unwrap_or_default();
    assert!(
        runtime == "gcr.io/distroless/cc-debian12:nonroot" || runtime == "scratch",
        "runtime stage is {runtime:?}"
    );
    let final_stage: Vec<&(String, String)> = {
        let last_from = inst.iter().rposition(|(i, _)| i == "FROM").unwrap_or(0);
        inst[last_from..].iter().collect()
    };
    let in_final = |name: &str| -> Vec<&str> {
        final_stage
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, a)| a.as_str())
            .collect()
    };

    // Non-root, numerically (Kubernetes' runAsNonRoot can only verify a numeric user).
    let user = in_final("USER");
    assert_eq!(user, ["65532:65532"], "USER in the runtime stage");

    // No ADD (it fetches URLs and unpacks archives); nothing secret copied in.
    assert!(of("ADD").is_empty(), "ADD used: {:?}", of("ADD"));
    const SECRETISH: &[&str] = &[
        "secret",
        "token",
        ".pem",
        ".key",
        ".env",
        "id_rsa",
        "credential",
    ];
    for c in of("COPY") {
        let lower = c.to_ascii_lowercase();
        assert!(
            !SECRETISH.iter().any(|w| lower.contains(w)),
            "COPY of something secret: {c}"
        );
    }

    // Every COPY from the context names files that exist and that .dockerignore lets through;
    // build output, the venv and local state stay out of the context.
    let ignore = DockerIgnore::parse(&read(".dockerignore")?)?;
    let mut sources = Vec::new();
    for c in of("COPY") {
        if c.contains("--from=") {
            continue;
        }
        let words: Vec<&str> = c
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let (_dest, srcs) = words.split_last().ok_or("empty COPY")?;
        sources.extend(srcs.iter().map(|s| s.trim_end_matches('/').to_owned()));
    }
    for src in &sources {
        let files = git_files(src)?;
        assert!(
            !files.is_empty(),
            "COPY {src}: no such file in the repository"
        );
        for f in files {
            assert!(
                !ignore.excluded(&f),
                "{f} is needed (COPY {src}) but .dockerignore drops it"
            );
        }
    }
    for member in ["agent", "collector", "tests"] {
        assert!(
            sources.iter().any(|s| s == member),
            "workspace member {member} not copied"
        );
    }
    for junk in [
        "target/debug/sidelight",
        "agent/target/x",
        ".venv/bin/python",
        "sidelight-data/sidelight.db",
        "logs/app.log",
        "tests/python/__pycache__/x.pyc",
        "README.md",
    ] {
        assert!(
            ignore.excluded(junk),
            "{junk} would be sent to the build context"
        );
    }
    assert!(!ignore.excluded("collector/src/logs/mod.rs"));

    // State in a volume, config at /etc/sidelight/sidelight.yaml, the ports, OCI labels.
    assert_eq!(in_final("VOLUME"), [r#"["/var/lib/sidelight"]"#]);
    let exposed: Vec<&str> = in_final("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .collect();
    for port in ["9464", "4317", "4318"] {
        assert!(exposed.contains(&port), "EXPOSE lacks {port}: {exposed:?}");
    }
    let labels = in_final("LABEL").join(" ");
    for key in ["title", "description", "version", "licenses", "source"] {
        assert!(
            labels.contains(&format!("org.opencontainers.image.{key}=")),
            "no OCI label {key}"
        );
    }
    let entry = exec_form(in_final("ENTRYPOINT").first().copied().unwrap_or_default())
        .ok_or("ENTRYPOINT is not in exec form")?;
    assert_eq!(entry, ["/usr/local/bin/sidelight"]);
    let cmd = exec_form(in_final("CMD").first().copied().unwrap_or_default())
        .ok_or("CMD is not in exec form")?;
    assert_eq!(cmd, ["run", "--config", "/etc/sidelight/sidelight.yaml"]);
    assert!(
        of("COPY")
            .iter()
            .any(|c| c.ends_with("deploy/container/sidelight.yaml /etc/sidelight/sidelight.yaml")),
        "the default config is not installed at /etc/sidelight/sidelight.yaml"
    );

    // HEALTHCHECK runs the binary's own probe against the baked config's listener.
    let hc = in_final("HEALTHCHECK");
    assert_eq!(hc.len(), 1, "one HEALTHCHECK");
    let hc_cmd = hc[0]
        .split_once("CMD ")
        .map(|x| x.1)
        .ok_or("HEALTHCHECK without CMD")?;
    let hc_cmd = exec_form(hc_cmd).ok_or("HEALTHCHECK CMD is not in exec form")?;
    assert_eq!(
        hc_cmd[..3],
        ["/usr/local/bin/sidelight", "probe", "--url"],
        "{hc_cmd:?}"
    );
    let baked = read("deploy/container/sidelight.yaml")?;
    let baked_yaml: Yaml = serde_yaml_ng::from_str(&baked)?;
    let port = s(&baked_yaml["http"]["listen"])
        .rsplit_once(':')
        .map(|x| x.1)
        .ok_or("no http.listen")?;
    assert_eq!(hc_cmd[3], format!("http://127.0.0.1:{port}/readyz"));
    assert_eq!(s(&baked_yaml["store"]["path"]), "/var/lib/sidelight");
    let dir = tempfile::tempdir()?;
    check_config(dir.path(), "container.yaml", &baked)?;

    // The build stage's command is the one we run here (without --release, to reuse the
    // test build): the package and binary exist and Cargo.lock is up to date (--locked).
    let build = of("RUN")
        .into_iter()
        .find_map(|r| {
            let start = r.find("cargo build")?;
            let rest = &r[start..];
            Some(rest.split("&&").next().unwrap_or(rest).trim().to_owned())
        })
        .ok_or("no cargo build in a RUN")?;
    assert!(
        build.contains("--locked") && build.contains("--release"),
        "{build}"
    );
    let args: Vec<&str> = build
        .split_whitespace()
        .skip(1)
        .filter(|a| *a != "--release")
        .collect();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(&args)
        .arg("--quiet")
        .current_dir(workspace())
        .status()?;
    assert!(status.success(), "the Dockerfile's `{build}` failed here");
    assert!(build.contains("--bin sidelight"), "{build}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// deploy/kubernetes: kustomize base + overlays.

const OVERLAYS: &[&str] = &["sidecar", "hub"];
const PLACEHOLDER: &str = "replace-me";

/// `kubectl kustomize` of one directory, as objects.
fn kustomize(dir: &Path) -> Result<Vec<Yaml>> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run kubectl (apt-get install kubectl): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    yaml_docs(&String::from_utf8(out.stdout)?)
}

fn kind<'a>(objs: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    objs.iter().filter(|o| s(&o["kind"]) == kind).collect()
}

fn named<'a>(objs: &'a [Yaml], kind_: &str, name: &str) -> Option<&'a Yaml> {
    kind(objs, kind_)
        .into_iter()
        .find(|o| s(&o["metadata"]["name"]) == name)
}

/// Whether every label of `selector` is among `labels`.
fn selects(selector: &Yaml, labels: &Yaml) -> bool {
    let Some(sel) = selector.as_mapping() else {
        return false;
    };
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn kustomizations_list_only_files_that_exist() -> Result {
    let root = workspace().join("deploy/kubernetes");
    let mut kustomizations = Vec::new();
    let mut yaml_files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                if p.file_name().is_some_and(|n| n == "kustomization.yaml") {
                    kustomizations.push(p.clone());
                }
                yaml_files.push(p);
            }
        }
    }
    // Every YAML file parses.
    for f in &yaml_files {
        let docs =
            yaml_docs(&std::fs::read_to_string(f)?).map_err(|e| format!("{}: {e}", f.display()))?;
        assert!(!docs.is_empty(), "{} is empty", f.display());
    }
    assert!(kustomizations.len() >= 3, "{kustomizations:?}");
    for k in &kustomizations {
        let dir = k.parent().ok_or("no parent")?;
        let y: Yaml = serde_yaml_ng::from_str(&std::fs::read_to_string(k)?)?;
        let mut listed: Vec<String> = seq(&y["resources"])
            .iter()
            .map(|r| s(r).to_owned())
            .collect();
        for g in seq(&y["configMapGenerator"])
            .iter()
            .chain(seq(&y["secretGenerator"]))
        {
            listed.extend(seq(&g["files"]).iter().map(|f| {
                let f = s(f);
                f.split_once('=').map_or(f, |x| x.1).to_owned()
            }));
        }
        for p in seq(&y["patches"]) {
            if let Some(path) = p["path"].as_str() {
                listed.push(path.to_owned());
            }
        }
        assert!(!listed.is_empty(), "{} lists nothing", k.display());
        for r in listed {
            let p = dir.join(&r);
            assert!(
                p.is_file() || p.join("kustomization.yaml").is_file(),
                "{}: {r} does not exist (or is a directory without kustomization.yaml)",
                k.display()
            );
        }
        // Every file in a kustomization's directory is used by it (nothing silently left out).
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if p.is_file() && name != "kustomization.yaml" && name.ends_with(".yaml") {
                let text = std::fs::read_to_string(k)?;
                assert!(
                    text.contains(&name),
                    "{}: {name} is not listed",
                    k.display()
                );
            }
        }
    }
    for o in OVERLAYS {
        let k: Yaml = serde_yaml_ng::from_str(&read(&format!(
            "deploy/kubernetes/overlays/{o}/kustomization.yaml"
        ))?)?;
        assert!(
            seq(&k["resources"]).iter().any(|r| s(r) == "../../base"),
            "overlay {o} does not build on ../../base"
        );
    }
    Ok(())
}

/// The "restricted" Pod Security Standard, for one pod spec (every container).
fn restricted_problems(what: &str, pod: &Yaml) -> Vec<String> {
    let mut bad = Vec::new();
    let psc = &pod["securityContext"];
    for f in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod[f].as_bool() == Some(true) {
            bad.push(format!("{what}: {f}"));
        }
    }
    for v in seq(&pod["volumes"]) {
        if !v["hostPath"].is_null() {
            bad.push(format!("{what}: hostPath volume {}", s(&v["name"])));
        }
    }
    if s(&psc["seccompProfile"]["type"]) != "RuntimeDefault" {
        bad.push(format!("{what}: pod seccompProfile is not RuntimeDefault"));
    }
    let containers = seq(&pod["containers"])
        .iter()
        .chain(seq(&pod["initContainers"]));
    for c in containers {
        let name = format!("{what}/{}", s(&c["name"]));
        let sc = &c["securityContext"];
        let either = |f: &str| if sc[f].is_null() { &psc[f] } else { &sc[f] };
        if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
            bad.push(format!("{name}: allowPrivilegeEscalation is not false"));
        }
        if sc["privileged"].as_bool() == Some(true) {
            bad.push(format!("{name}: privileged"));
        }
        if !seq(&sc["capabilities"]["drop"])
            .iter()
            .any(|d| s(d) == "ALL")
        {
            bad.push(format!("{name}: capabilities do not drop ALL"));
        }
        if seq(&sc["capabilities"]["add"])
            .iter()
            .any(|a| s(a) != "NET_BIND_SERVICE")
        {
            bad.push(format!("{name}: adds capabilities"));
        }
        if either("runAsNonRoot").as_bool() != Some(true) {
            bad.push(format!("{name}: runAsNonRoot is not true"));
        }
        if either("runAsUser").as_u64() == Some(0) {
            bad.push(format!("{name}: runAsUser 0"));
        }
        let seccomp = s(&either("seccompProfile")["type"]);
        if seccomp != "RuntimeDefault" && seccomp != "Localhost" {
            bad.push(format!("{name}: seccompProfile {seccomp:?}"));
        }
        // Beyond "restricted": what we promise for every container we ship.
        if sc["readOnlyRootFilesystem"].as_bool() != Some(true) {
            bad.push(format!("{name}: readOnlyRootFilesystem is not true"));
        }
        for probe in ["livenessProbe", "readinessProbe"] {
            if c[probe]["httpGet"]["path"].as_str().is_none() {
                bad.push(format!("{name}: no HTTP {probe}"));
            }
        }
        let res = &c["resources"];
        for (k, r) in [
            ("requests", "cpu"),
            ("requests", "memory"),
            ("limits", "memory"),
        ] {
            if res[k][r].is_null() {
                bad.push(format!("{name}: no resources.{k}.{r}"));
            }
        }
        // Every mount names a volume of the pod.
        for m in seq(&c["volumeMounts"]) {
            if !seq(&pod["volumes"]).iter().any(|v| v["name"] == m["name"]) {
                bad.push(format!("{name}: mounts undefined volume {}", s(&m["name"])));
            }
        }
    }
    bad
}

/// The sidelight container of a pod (the one running the agent's image): a native sidecar in
/// `initContainers`, or a plain container.
fn sidelight_container(pod: &Yaml) -> Option<&Yaml> {
    seq(&pod["initContainers"])
        .iter()
        .chain(seq(&pod["containers"]))
        .find(|c| s(&c["name"]) == "sidelight")
}

/// A container's `env:` as the kubelet would set it, downward-API fields given stand-in values
/// (`fieldref:metadata.name`).
fn container_env(c: &Yaml) -> Vec<(String, String)> {
    seq(&c["env"])
        .iter()
        .map(|e| {
            let value = match e["value"].as_str() {
                Some(v) => v.to_owned(),
                None => format!("fieldref:{}", s(&e["valueFrom"]["fieldRef"]["fieldPath"])),
            };
            (s(&e["name"]).to_owned(), value)
        })
        .collect()
}

#[test]
fn overlays_render_validate_and_meet_pod_security_restricted() -> Result {
    let tmp = tempfile::tempdir()?;
    for overlay in OVERLAYS {
        let dir = workspace().join(format!("deploy/kubernetes/overlays/{overlay}"));
        let objs = kustomize(&dir)?;
        let mut problems = Vec::new();

        // The Kubernetes schemas (kubernetes-validate ships them), unknown fields refused.
        let rendered = tmp.path().join(format!("{overlay}.yaml"));
        let text = objs
            .iter()
            .map(serde_yaml_ng::to_string)
            .collect::<std::result::Result<Vec<_>, _>>()?
            .join("---\n");
        std::fs::write(&rendered, &text)?;
        let out = Command::new(python())
            .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
            .arg(&rendered)
            .output()?;
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{overlay}: kubernetes-validate: {report}"
        );
        // Only the Prometheus Operator's CRDs have no schema there: say so, skip nothing else.
        for line in report
            .lines()
            .filter(|l| l.contains("Couldn't find schema"))
        {
            assert!(
                line.contains("monitoring.coreos.com/v1"),
                "{overlay}: unvalidated: {line}"
            );
        }

        let deployments = kind(&objs, "Deployment");
        assert_eq!(deployments.len(), 1, "{overlay}: one Deployment");
        let d = deployments[0];
        let pod = &d["spec"]["template"]["spec"];
        let pod_labels = &d["spec"]["template"]["metadata"]["labels"];
        assert!(selects(&d["spec"]["selector"]["matchLabels"], pod_labels));
        problems.extend(restricted_problems(
            &format!("{overlay}: {}", s(&d["metadata"]["name"])),
            pod,
        ));
        let agent = sidelight_container(pod).ok_or("no sidelight container")?;
        assert_eq!(s(&agent["livenessProbe"]["httpGet"]["path"]), "/healthz");
        assert_eq!(s(&agent["readinessProbe"]["httpGet"]["path"]), "/readyz");
        let ports: Vec<&str> = seq(&agent["ports"]).iter().map(|p| s(&p["name"])).collect();
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            let port = s(&agent[probe]["httpGet"]["port"]);
            if !agent[probe].is_null() && !ports.contains(&port) {
                problems.push(format!("{overlay}: {probe} on unknown port {port}"));
            }
        }

        // Volumes refer to objects the overlay renders.
        for v in seq(&pod["volumes"]) {
            let refs = [
                ("ConfigMap", &v["configMap"]["name"]),
                ("Secret", &v["secret"]["secretName"]),
                (
                    "PersistentVolumeClaim",
                    &v["persistentVolumeClaim"]["claimName"],
                ),
            ];
            for (k, name) in refs {
                if let Some(name) = name.as_str()
                    && named(&objs, k, name).is_none()
                {
                    problems.push(format!("{overlay}: volume refers to missing {k} {name}"));
                }
            }
        }

        // Secrets hold placeholders only, never a real token.
        for secret in kind(&objs, "Secret") {
            let name = s(&secret["metadata"]["name"]);
            let mut values = Vec::new();
            if let Some(m) = secret["stringData"].as_mapping() {
                values.extend(m.iter().map(|(k, v)| (s(k).to_owned(), s(v).to_owned())));
            }
            if !secret["data"].is_null() {
                problems.push(format!(
                    "{overlay}: Secret {name} has base64 data: ship placeholders in stringData"
                ));
            }
            assert!(!values.is_empty(), "{overlay}: Secret {name} is empty");
            for (k, v) in values {
                if v != PLACEHOLDER {
                    problems.push(format!(
                        "{overlay}: Secret {name} key {k} holds something other than the placeholder {PLACEHOLDER:?}"
                    ));
                }
            }
        }

        // The agent's config (from the ConfigMap it mounts) passes the real check-config, with
        // the pod's secret mounts laid out under a temp root as the kubelet would.
        let root = tmp.path().join(format!("{overlay}-root"));
        let mut config_text = None;
        let mut mounts: Vec<(String, String)> = Vec::new();
        for m in seq(&agent["volumeMounts"]) {
            let vol = seq(&pod["volumes"])
                .iter()
                .find(|v| v["name"] == m["name"])
                .ok_or("mount of an undefined volume")?;
            let mount = s(&m["mountPath"]).to_owned();
            if let Some(cm) = vol["configMap"]["name"].as_str() {
                let cm = named(&objs, "ConfigMap", cm).ok_or("missing ConfigMap")?;
                if mount == "/etc/sidelight" {
                    config_text = cm["data"]["sidelight.yaml"].as_str().map(str::to_owned);
                }
            }
            if let Some(secret) = vol["secret"]["secretName"].as_str() {
                let secret = named(&objs, "Secret", secret).ok_or("missing Secret")?;
                let at = root.join(mount.trim_start_matches('/'));
                std::fs::create_dir_all(&at)?;
                for (k, v) in secret["stringData"].as_mapping().into_iter().flatten() {
                    std::fs::write(at.join(s(k)), s(v))?;
                }
                mounts.push((mount.clone(), at.to_string_lossy().into_owned()));
            }
        }
        let args: Vec<&str> = seq(&agent["args"]).iter().map(s).collect();
        assert_eq!(args, ["run", "--config", "/etc/sidelight/sidelight.yaml"]);
        let mut config_text = config_text.ok_or("no sidelight.yaml mounted at /etc/sidelight")?;
        for (mount, at) in &mounts {
            config_text = config_text.replace(mount.as_str(), at);
        }
        // Only the container's own env: every ${VAR} the config uses must be set by the manifest.
        let env = container_env(agent);
        check_config_env(
            tmp.path(),
            &format!("{overlay}-sidelight.yaml"),
            &config_text,
            Some(&env),
        )?;
        let config: Yaml = serde_yaml_ng::from_str(&config_text)?;
        assert!(
            s(&config["http"]["listen"]).starts_with("0.0.0.0:"),
            "{overlay}: the HTTP surface must listen on the pod IP"
        );
        let http_port = s(&config["http"]["listen"])
            .rsplit(':')
            .next()
            .unwrap_or_default();
        let probe_port = s(&agent["readinessProbe"]["httpGet"]["port"]);
        let container_port = seq(&agent["ports"])
            .iter()
            .find(|p| s(&p["name"]) == probe_port)
            .map(|p| p["containerPort"].as_u64().unwrap_or(0).to_string());
        assert_eq!(
            container_port.as_deref(),
            Some(http_port),
            "{overlay}: probe port"
        );
        let store = s(&config["store"]["path"]);
        assert!(
            seq(&agent["volumeMounts"])
                .iter()
                .any(|m| s(&m["mountPath"]) == store),
            "{overlay}: store.path {store} is not on a volume (read-only root filesystem)"
        );

        match *overlay {
            "sidecar" => {
                assert_eq!(pod["shareProcessNamespace"].as_bool(), Some(true));
                // A native sidecar: an init container that keeps running, started (ready on
                // /readyz) before the app and stopped after it.
                assert!(
                    seq(&pod["initContainers"])
                        .iter()
                        .any(|c| s(&c["name"]) == "sidelight"),
                    "the agent is not in initContainers"
                );
                assert_eq!(s(&agent["restartPolicy"]), "Always", "native sidecar");
                assert_eq!(s(&agent["startupProbe"]["httpGet"]["path"]), "/readyz");
                let app = seq(&pod["containers"])
                    .iter()
                    .find(|c| s(&c["name"]) != "sidelight")
                    .ok_or("no app container")?;
                // Pod metadata from the downward API, used by the config's resource: section.
                let field_of = |name: &str| {
                    seq(&agent["env"])
                        .iter()
                        .find(|e| s(&e["name"]) == name)
                        .map(|e| s(&e["valueFrom"]["fieldRef"]["fieldPath"]).to_owned())
                };
                for (attr, var, field) in [
                    ("k8s.pod.name", "K8S_POD_NAME", "metadata.name"),
                    (
                        "k8s.namespace.name",
                        "K8S_NAMESPACE_NAME",
                        "metadata.namespace",
                    ),
                    ("k8s.node.name", "K8S_NODE_NAME", "spec.nodeName"),
                    ("k8s.pod.uid", "K8S_POD_UID", "metadata.uid"),
                ] {
                    assert_eq!(field_of(var).as_deref(), Some(field), "{var}");
                    assert_eq!(
                        s(&config["resource"][attr]),
                        format!("${{{var}}}"),
                        "resource.{attr}"
                    );
                }
                assert_eq!(
                    s(&config["resource"]["k8s.container.name"]),
                    "${K8S_CONTAINER_NAME}"
                );
                assert!(
                    container_env(agent)
                        .iter()
                        .any(|(k, v)| k == "K8S_CONTAINER_NAME" && v == s(&app["name"])),
                    "k8s.container.name names the app container"
                );
                // What the OpenTelemetry Operator injects for Python: OTLP http/protobuf, all
                // three signals, to the agent's OTLP/HTTP port.
                let app_env: std::collections::HashMap<String, String> =
                    container_env(app).into_iter().collect();
                let http_port = s(&config["otlp"]["http"])
                    .rsplit(':')
                    .next()
                    .unwrap_or_default();
                for (k, v) in [
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
                    (
                        "OTEL_EXPORTER_OTLP_ENDPOINT",
                        format!("http://localhost:{http_port}"),
                    ),
                    ("OTEL_TRACES_EXPORTER", "otlp".to_owned()),
                    ("OTEL_METRICS_EXPORTER", "otlp".to_owned()),
                    ("OTEL_LOGS_EXPORTER", "otlp".to_owned()),
                ] {
                    assert_eq!(app_env.get(k), Some(&v), "app env {k}");
                }
                // The log volume is an emptyDir both containers mount; the app logs into it and
                // the agent's logs.include globs read from it.
                let logs = seq(&pod["volumes"])
                    .iter()
                    .find(|v| !v["emptyDir"].is_null() && s(&v["name"]).contains("log"))
                    .ok_or("no emptyDir for logs")?;
                let mount_of = |c: &Yaml| {
                    seq(&c["volumeMounts"])
                        .iter()
                        .find(|m| m["name"] == logs["name"])
                        .map(|m| s(&m["mountPath"]).to_owned())
                };
                let app_mount = mount_of(app).ok_or("the app does not mount the log volume")?;
                let agent_mount =
                    mount_of(agent).ok_or("the agent does not mount the log volume")?;
                let log_file = seq(&app["env"])
                    .iter()
                    .find(|e| s(&e["name"]) == "LOG_FILE")
                    .map(|e| s(&e["value"]).to_owned())
                    .ok_or("the app has no LOG_FILE")?;
                assert!(log_file.starts_with(&format!("{app_mount}/")), "{log_file}");
                let include = seq(&config["logs"][0]["include"]);
                assert!(
                    include
                        .iter()
                        .all(|g| s(g).starts_with(&format!("{agent_mount}/"))),
                    "logs.include {include:?} outside the log volume {agent_mount}"
                );
                // Same uid for both: the agent can read the app's /proc/<pid>/fd.
                assert!(pod["securityContext"]["runAsUser"].as_u64().is_some());
                for c in seq(&pod["containers"])
                    .iter()
                    .chain(seq(&pod["initContainers"]))
                {
                    assert!(
                        c["securityContext"]["runAsUser"].is_null(),
                        "per-container uid"
                    );
                }
                let pm = kind(&objs, "PodMonitor");
                assert_eq!(pm.len(), 1, "one PodMonitor");
                assert!(
                    selects(&pm[0]["spec"]["selector"]["matchLabels"], pod_labels),
                    "the PodMonitor does not select the pod"
                );
                for ep in seq(&pm[0]["spec"]["podMetricsEndpoints"]) {
                    assert!(
                        ports.contains(&s(&ep["port"])),
                        "PodMonitor port {:?}",
                        ep["port"]
                    );
                }
            }
            "hub" => {
                assert_eq!(config["dora"]["enabled"].as_bool(), Some(true));
                assert_eq!(d["spec"]["replicas"].as_u64(), Some(1));
                assert_eq!(s(&d["spec"]["strategy"]["type"]), "Recreate");
                let claim = seq(&pod["volumes"])
                    .iter()
                    .find_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
                    .ok_or("no PVC volume")?;
                let data_mount = seq(&agent["volumeMounts"])
                    .iter()
                    .find(|m| {
                        seq(&pod["volumes"]).iter().any(|v| {
                            v["name"] == m["name"]
                                && v["persistentVolumeClaim"]["claimName"].as_str() == Some(claim)
                        })
                    })
                    .map(|m| s(&m["mountPath"]))
                    .ok_or("the PVC is not mounted")?;
                assert_eq!(data_mount, store, "the store is not on the PVC");
                let svc = kind(&objs, "Service");
                assert_eq!(svc.len(), 1);
                assert!(selects(&svc[0]["spec"]["selector"], pod_labels));
                for p in seq(&svc[0]["spec"]["ports"]) {
                    assert!(ports.contains(&s(&p["targetPort"])), "Service targetPort");
                }
                let sm = kind(&objs, "ServiceMonitor");
                assert_eq!(sm.len(), 1, "one ServiceMonitor");
                assert!(selects(
                    &sm[0]["spec"]["selector"]["matchLabels"],
                    &svc[0]["metadata"]["labels"]
                ));
                let svc_ports: Vec<&str> = seq(&svc[0]["spec"]["ports"])
                    .iter()
                    .map(|p| s(&p["name"]))
                    .collect();
                for ep in seq(&sm[0]["spec"]["endpoints"]) {
                    assert!(svc_ports.contains(&s(&ep["port"])));
                    // The hub's /metrics needs its token: Prometheus gets it from the Secret.
                    let cred = &ep["authorization"]["credentials"];
                    let secret = named(&objs, "Secret", s(&cred["name"]))
                        .ok_or("ServiceMonitor credentials: no such Secret")?;
                    assert!(!secret["stringData"][s(&cred["key"])].is_null());
                }
            }
            _ => {}
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
    Ok(())
}

const RESTRICTED_POD: &str = r#"
securityContext: { runAsNonRoot: true, seccompProfile: { type: RuntimeDefault } }
volumes: [ { name: v, emptyDir: {} } ]
containers:
  - name: a
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: { drop: [ALL] }
    livenessProbe: { httpGet: { path: /healthz, port: 1 } }
    readinessProbe: { httpGet: { path: /readyz, port: 1 } }
    resources: { requests: { cpu: 1m, memory: 1Mi }, limits: { memory: 2Mi } }
    volumeMounts: [ { name: v, mountPath: /v } ]
"#;

/// The restricted checks catch what they claim (a check that passes everything proves nothing).
#[test]
fn restricted_check_catches_violations() -> Result {
    let ok: Yaml = serde_yaml_ng::from_str(RESTRICTED_POD)?;
    assert_eq!(restricted_problems("ok", &ok), Vec::<String>::new());
    for (from, to, expect) in [
        (
            "allowPrivilegeEscalation: false",
            "allowPrivilegeEscalation: true",
            "allowPrivilegeEscalation",
        ),
        ("drop: [ALL]", "drop: [NET_RAW]", "drop ALL"),
        ("runAsNonRoot: true", "runAsNonRoot: false", "runAsNonRoot"),
        ("type: RuntimeDefault", "type: Unconfined", "seccompProfile"),
        (
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: false",
            "readOnlyRootFilesystem",
        ),
        ("livenessProbe", "startupProbe", "livenessProbe"),
        ("limits:", "limitz:", "limits.memory"),
        ("emptyDir: {}", "hostPath: { path: / }", "hostPath"),
        (
            "name: v, mountPath",
            "name: w, mountPath",
            "undefined volume",
        ),
        (
            "capabilities: { drop: [ALL] }",
            "capabilities: { drop: [ALL], add: [SYS_ADMIN] }",
            "adds capabilities",
        ),
    ] {
        let bad: Yaml = serde_yaml_ng::from_str(&RESTRICTED_POD.replace(from, to))?;
        let found = restricted_problems("bad", &bad);
        assert!(
            found.iter().any(|p| p.contains(expect)),
            "{from} -> {to}: expected a problem about {expect}, got {found:?}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// deploy/otel-collector: the gateway and the agent config that points at it.

#[test]
fn otel_gateway_pipelines_are_wired_and_the_agent_config_points_at_it() -> Result {
    let gw: Yaml = serde_yaml_ng::from_str(&read("deploy/otel-collector/gateway.yaml")?)?;
    let pipelines = gw["service"]["pipelines"]
        .as_mapping()
        .ok_or("no service.pipelines")?;
    let mut used: Vec<(String, String)> = Vec::new();
    for (name, p) in pipelines {
        let name = s(name);
        for section in ["receivers", "processors", "exporters"] {
            let list = seq(&p[section]);
            if section != "processors" {
                assert!(!list.is_empty(), "pipeline {name} has no {section}");
            }
            for c in list {
                assert!(
                    !gw[section][s(c)].is_null() || gw[section].get(s(c)).is_some(),
                    "pipeline {name}: {section} {} is not defined",
                    s(c)
                );
                used.push((section.to_owned(), s(c).to_owned()));
            }
        }
        let procs: Vec<&str> = seq(&p["processors"]).iter().map(s).collect();
        assert_eq!(
            procs.first(),
            Some(&"memory_limiter"),
            "pipeline {name}: memory_limiter first"
        );
        assert_eq!(procs.last(), Some(&"batch"), "pipeline {name}: batch last");
    }
    for signal in ["traces", "metrics", "logs"] {
        assert!(pipelines.contains_key(signal), "no {signal} pipeline");
    }
    for section in ["receivers", "processors", "exporters"] {
        for (c, _) in gw[section].as_mapping().into_iter().flatten() {
            assert!(
                used.iter().any(|(sec, n)| sec == section && n == s(c)),
                "{section} {} is defined but unused",
                s(c)
            );
        }
    }
    for e in seq(&gw["service"]["extensions"]) {
        assert!(
            gw["extensions"].get(s(e)).is_some(),
            "extension {} undefined",
            s(e)
        );
    }
    let exporters: Vec<String> = gw["exporters"]
        .as_mapping()
        .into_iter()
        .flatten()
        .map(|(k, _)| s(k).split('/').next().unwrap_or_default().to_owned())
        .collect();
    for want in ["otlp", "otlphttp", "prometheusremotewrite"] {
        assert!(exporters.iter().any(|e| e == want), "no {want} exporter");
    }
    let grpc = s(&gw["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]);
    let grpc_port = grpc.rsplit(':').next().ok_or("no grpc endpoint")?;

    let agent_text = read("deploy/otel-collector/agent.yaml")?;
    let dir = tempfile::tempdir()?;
    check_config(dir.path(), "agent.yaml", &agent_text)?;
    let agent: Yaml = serde_yaml_ng::from_str(&agent_text)?;
    let otlp = &agent["export"]["otlp"];
    assert_eq!(s(&otlp["protocol"]), "grpc");
    let endpoint = s(&otlp["endpoint"]);
    assert!(
        endpoint.starts_with("http://") && endpoint.ends_with(&format!(":{grpc_port}")),
        "the agent's endpoint {endpoint} is not the gateway's OTLP/gRPC port {grpc_port}"
    );
    Ok(())
}
