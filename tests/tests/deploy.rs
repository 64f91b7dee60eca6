//! Deploy files are checked by the tools that consume them.

mod common;

use std::process::Command;

use common::{Result, sidelight_bin, workspace};

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
