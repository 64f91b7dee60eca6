//! `POST /-/reload` on the real binary: behind the bearer token, a valid file is applied (200)
//! as SIGHUP would apply it, an invalid one is answered 400 with every error and leaves the
//! running configuration untouched.

mod common;

use std::time::Duration;

use common::{Agent, Result, client, eventually, get, sample};

/// POSTs `/-/reload` with an optional bearer token; the status and body.
fn post_reload(agent: &Agent, token: Option<&str>) -> Result<(u16, String)> {
    let mut req = client().post(&agent.url("/-/reload"));
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req.send_empty()?;
    Ok((resp.status().as_u16(), resp.body_mut().read_to_string()?))
}

fn metrics(agent: &Agent, token: &str) -> Result<String> {
    let (status, _, body) = get(
        &agent.url("/metrics"),
        &[("Authorization", &format!("Bearer {token}"))],
    )?;
    if status != 200 {
        return Err(format!("/metrics answered {status}: {body}").into());
    }
    Ok(body)
}

#[test]
fn post_reload_applies_a_valid_file_and_rejects_an_invalid_one() -> Result {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("token"), "first\n")?;
    let base = "http: { listen: 127.0.0.1:0, auth: { bearer_token_file: token } }\n\
                host: { interval: 1s }\nstore: { path: {dir}/data }\n";
    let agent = Agent::start_in(dir, base)?;

    // Guarded like /metrics; POST only.
    assert_eq!(post_reload(&agent, None)?.0, 401);
    assert_eq!(post_reload(&agent, Some("wrong"))?.0, 401);
    let (status, _, _) = get(
        &agent.url("/-/reload"),
        &[("Authorization", "Bearer first")],
    )?;
    assert_eq!(status, 405, "GET /-/reload");

    // A valid file: a new process target (this agent alone, by its unique directory in its
    // command line) and a new token.
    std::fs::write(agent.dir.path().join("token"), "second\n")?;
    let unique = agent
        .dir
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().replace('.', ""))
        .ok_or("temp dir name")?;
    let valid = format!(
        "{base}processes:\n  - target: late\n    match: {{ name: sidelight, cmdline: \"{unique}/sidelight\" }}\n"
    )
    .replace("{dir}", &agent.dir.path().to_string_lossy());
    std::fs::write(&agent.config_path, &valid)?;
    let (status, body) = post_reload(&agent, Some("first"))?;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("configuration reloaded: "), "{body}");
    assert!(body.contains("process targets [late]"), "{body}");
    // Applied before the answer: the old token is gone, the new one works, and the reload is
    // counted as SIGHUP's are.
    assert_eq!(
        get(&agent.url("/metrics"), &[("Authorization", "Bearer first")])?.0,
        401
    );
    let body = metrics(&agent, "second")?;
    assert_eq!(
        sample(
            &body,
            "sidelight_config_reloads_total",
            "result=\"success\""
        ),
        Some(1.0)
    );
    eventually(Duration::from_secs(15), "the new target", || {
        let body = metrics(&agent, "second").ok()?;
        (sample(&body, "sidelight_target_processes", "target=\"late\"") == Some(1.0)).then_some(())
    })?;

    // An invalid file (three errors): 400 naming every one, nothing applied.
    let invalid = "http: { listen: 127.0.0.1:0, auth: { bearer_token_file: missing-token } }\n\
                   host: { interval: sometimes }\nbogus: 1\n";
    std::fs::write(&agent.config_path, invalid)?;
    let (status, body) = post_reload(&agent, Some("second"))?;
    assert_eq!(status, 400, "{body}");
    for needle in [
        "3 errors",
        "host.interval",
        "bogus",
        "http.auth.bearer_token_file",
    ] {
        assert!(body.contains(needle), "{needle} missing from {body}");
    }
    assert!(
        body.contains("previous configuration keeps running"),
        "{body}"
    );
    let body = metrics(&agent, "second")?;
    assert_eq!(
        sample(
            &body,
            "sidelight_config_reloads_total",
            "result=\"failure\""
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, "sidelight_config_last_reload_successful", ""),
        Some(0.0)
    );
    assert_eq!(
        sample(&body, "sidelight_target_processes", "target=\"late\""),
        Some(1.0)
    );
    let logs = agent.log_lines().join("\n");
    assert!(
        logs.contains("reload rejected") && logs.contains("POST /-/reload"),
        "{logs}"
    );

    // SIGHUP still runs the same reload: the valid file again.
    std::fs::write(&agent.config_path, &valid)?;
    common::signal(&agent.proc.0, 1);
    eventually(Duration::from_secs(10), "the SIGHUP reload", || {
        let body = metrics(&agent, "second").ok()?;
        (sample(
            &body,
            "sidelight_config_reloads_total",
            "result=\"success\"",
        ) == Some(2.0))
        .then_some(())
    })?;
    assert_eq!(
        sample(
            &metrics(&agent, "second")?,
            "sidelight_config_last_reload_successful",
            ""
        ),
        Some(1.0)
    );
    agent.stop()?;
    Ok(())
}
