//! Restarts that mean trouble, end to end with a real gunicorn: a graceful reload (SIGHUP to the
//! master) and a deploy (master and workers replaced) against a worker crash loop. The agent
//! watches the pool; the counter sequences it produced are then replayed, one collection cycle
//! per 15 s (the default `host.interval`), through `promtool test rules` with the shipped
//! `alerts/` rules: `SidelightTargetRestarting` never fires for the reload and the deploy, and
//! fires for the crash loop.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, Proc, Result, eventually, free_port, python, signal, wait_exit, workspace};

const SIGHUP: i32 = 1;
const SIGTERM: i32 = 15;

/// Starts `gunicorn -c gunicorn_conf.py crashy_wsgi:app` on `port`; waits until it answers.
fn gunicorn(port: u16, crash_after: Option<f64>) -> Result<Proc> {
    let dir = workspace().join("tests/python");
    let mut cmd = Command::new(python());
    cmd.args(["-m", "gunicorn", "-c"])
        .arg(dir.join("gunicorn_conf.py"))
        .args(["--chdir"])
        .arg(&dir)
        .args(["-b", &format!("127.0.0.1:{port}"), "crashy_wsgi:app"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(s) = crash_after {
        cmd.env("SIDELIGHT_CRASH_AFTER", s.to_string());
    }
    let child: Child = cmd.spawn()?;
    let proc = Proc(child);
    eventually(Duration::from_secs(20), "gunicorn to answer", || {
        common::get(&format!("http://127.0.0.1:{port}/"), &[])
            .ok()
            .filter(|(s, _, _)| *s == 200)
    })?;
    Ok(proc)
}

/// The pool's counters as the agent shows them: (processes, worker restarts, group restarts).
fn counters(agent: &Agent) -> (f64, f64, f64) {
    let Ok((_, _, body)) = common::get(&agent.url("/metrics"), &[]) else {
        return (f64::NAN, f64::NAN, f64::NAN);
    };
    let v = |name: &str, frag: &str| common::sample(&body, name, frag).unwrap_or(f64::NAN);
    (
        v("sidelight_target_processes", "target=\"web\""),
        v(
            "sidelight_target_restarts_total",
            "target=\"web\",kind=\"worker\"",
        ),
        v(
            "sidelight_target_restarts_total",
            "target=\"web\",kind=\"group\"",
        ),
    )
}

/// Records the counters once a second (one collection cycle) until `done` says so.
fn record(
    agent: &Agent,
    samples: &mut Vec<(f64, f64, f64)>,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&[(f64, f64, f64)]) -> bool,
) -> Result {
    let deadline = Instant::now() + timeout;
    loop {
        samples.push(counters(agent));
        if done(samples) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: timed out; last {:?}", samples.last()).into());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A promtool unit test that replays `samples` at 15 s per sample (padded with the last value to
/// `minutes`) and checks whether `SidelightTargetRestarting` fired at any time.
fn promtool_case(name: &str, samples: &[(f64, f64, f64)], minutes: usize, fires: bool) -> String {
    let mut s = samples.to_vec();
    let last = *s.last().expect("samples");
    while s.len() < minutes * 4 {
        s.push(last);
    }
    let series = |f: fn(&(f64, f64, f64)) -> f64| {
        s.iter()
            .map(|x| format!("{}", f(x)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        r#"  # {name}
  - interval: 15s
    input_series:
      - series: 'sidelight_target_processes{{instance="a:9464",job="sidelight",target="web"}}'
        values: '{procs}'
      - series: 'sidelight_target_restarts_total{{instance="a:9464",job="sidelight",target="web",kind="worker"}}'
        values: '{worker}'
      - series: 'sidelight_target_restarts_total{{instance="a:9464",job="sidelight",target="web",kind="group"}}'
        values: '{group}'
    promql_expr_test:
      - expr: count(max_over_time(ALERTS{{alertname="SidelightTargetRestarting",alertstate="firing"}}[{range}m])) or vector(0)
        eval_time: {end}m
        exp_samples:
          - labels: '{{}}'
            value: {fired}
"#,
        procs = series(|x| x.0),
        worker = series(|x| x.1),
        group = series(|x| x.2),
        range = minutes + 1,
        end = minutes,
        fired = u8::from(fires),
    )
}

#[test]
fn a_graceful_reload_and_a_deploy_do_not_alert_and_a_crash_loop_does() -> Result {
    let port = free_port();
    let dir = tempfile::tempdir()?;
    let agent = Agent::start_in(
        dir,
        &format!(
            "http: {{ listen: \"127.0.0.1:0\" }}\nhost: {{ interval: 1s }}\nlogs: []\nprocesses:\n  - target: web\n    match: {{ cmdline: 'gunicorn.*127\\.0\\.0\\.1:{port}' }}\nstore: {{ path: \"{{dir}}/data\" }}\n"
        ),
    )?;

    // A pool of a master and two workers.
    let mut pool = gunicorn(port, None)?;
    let mut calm: Vec<(f64, f64, f64)> = Vec::new();
    record(
        &agent,
        &mut calm,
        Duration::from_secs(20),
        "3 processes",
        |s| s.len() >= 5 && s.iter().rev().take(3).all(|x| x.0 == 3.0),
    )?;
    let base = *calm.last().ok_or("no sample")?;
    assert_eq!(
        (base.1, base.2),
        (0.0, 0.0),
        "restarts before any: {base:?}"
    );

    // Graceful reload: the master stays, both workers are replaced once.
    signal(&pool.0, SIGHUP);
    record(
        &agent,
        &mut calm,
        Duration::from_secs(30),
        "the reload",
        |s| s.last().is_some_and(|x| x.1 >= 2.0 && x.0 == 3.0),
    )?;
    for _ in 0..5 {
        calm.push(counters(&agent));
        std::thread::sleep(Duration::from_secs(1));
    }
    let after_reload = *calm.last().ok_or("no sample")?;
    assert_eq!(after_reload, (3.0, 2.0, 0.0), "after SIGHUP: {calm:?}");

    // A deploy: the master stops (its workers with it) and a new pool starts.
    signal(&pool.0, SIGTERM);
    wait_exit(&mut pool.0, Duration::from_secs(15)).ok_or("gunicorn did not stop")?;
    drop(pool);
    let pool = gunicorn(port, None)?;
    record(
        &agent,
        &mut calm,
        Duration::from_secs(30),
        "the deploy",
        |s| s.last().is_some_and(|x| x.2 >= 1.0 && x.0 == 3.0),
    )?;
    for _ in 0..5 {
        calm.push(counters(&agent));
        std::thread::sleep(Duration::from_secs(1));
    }
    let after_deploy = *calm.last().ok_or("no sample")?;
    assert_eq!(after_deploy, (3.0, 2.0, 1.0), "after the deploy: {calm:?}");
    let mut pool = pool;
    signal(&pool.0, SIGTERM);
    wait_exit(&mut pool.0, Duration::from_secs(15)).ok_or("gunicorn did not stop")?;
    drop(pool);
    eventually(Duration::from_secs(20), "the pool to be gone", || {
        (counters(&agent).0 == 0.0).then_some(())
    })?;

    // A crash loop: every worker exits a second after it boots; the master respawns them.
    let crashing = gunicorn(port, Some(1.0))?;
    let mut looping: Vec<(f64, f64, f64)> = Vec::new();
    record(
        &agent,
        &mut looping,
        Duration::from_secs(180),
        "70 cycles of the loop",
        |s| s.len() >= 70,
    )?;
    drop(crashing);
    assert!(
        looping.iter().any(|x| x.0 >= 2.0),
        "no worker ever ran: {looping:?}"
    );
    let first = looping.first().copied().ok_or("no sample")?;
    let last = looping.last().copied().ok_or("no sample")?;
    // Counted as worker restarts (the master kept running), many of them.
    assert!(last.1 - first.1 >= 20.0, "{looping:?}");
    assert!(
        last.2 - first.2 <= 1.0,
        "the group restarts only with the new master: {looping:?}"
    );

    // Replay both through promtool with the shipped rules.
    let alerts = workspace().join("alerts");
    let file = format!(
        "rule_files:\n  - {}\n  - {}\nevaluation_interval: 15s\ntests:\n{}{}",
        alerts.join("sidelight-recording.yaml").display(),
        alerts.join("sidelight-alerts.yaml").display(),
        promtool_case(
            "a SIGHUP reload and a deploy of a real gunicorn",
            &calm,
            40,
            false
        ),
        promtool_case("a real gunicorn worker crash loop", &looping, 20, true),
    );
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("replay.yaml");
    std::fs::write(&path, &file)?;
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&path)
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{file}");
    println!(
        "reload+deploy: {} samples, final {after_deploy:?}; crash loop: {} samples, {} worker restarts",
        calm.len(),
        looping.len(),
        last.1 - first.1
    );
    Ok(())
}
