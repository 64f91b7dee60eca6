//! The `host:` and `processes:` sections: their shapes and validation into the settings the
//! collector's host and process sources run on ([`HostSettings`], [`TargetSpec`]). The
//! runtime's host loop collects both every `host.interval`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sidelight_collector::host::{
    DEFAULT_EXCLUDE_FSTYPES, DEFAULT_EXCLUDE_MOUNTPOINTS, HostSettings,
};
use sidelight_collector::process::{MAX_TARGETS, TargetSpec};

use crate::config::common::{ConfigError, compile_regex, duration, never_matches};

/// The target label of the agent's own process.
pub const SELF_TARGET: &str = "sidelight";

/// `host:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RawHost {
    enabled: bool,
    #[serde(with = "duration")]
    interval: Duration,
    procfs: PathBuf,
    filesystem: RawFilesystem,
}

impl Default for RawHost {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(15),
            procfs: PathBuf::from("/proc"),
            filesystem: RawFilesystem::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawFilesystem {
    exclude_fstypes: String,
    exclude_mountpoints: String,
}

impl Default for RawFilesystem {
    fn default() -> Self {
        Self {
            exclude_fstypes: DEFAULT_EXCLUDE_FSTYPES.into(),
            exclude_mountpoints: DEFAULT_EXCLUDE_MOUNTPOINTS.into(),
        }
    }
}

/// One entry of `processes:` as written.
#[derive(Debug, Clone, Deserialize)]
pub struct RawProcess {
    target: String,
    #[serde(rename = "match")]
    matcher: RawMatch,
    #[serde(default = "yes")]
    include_children: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct RawMatch {
    name: Option<String>,
    cmdline: Option<String>,
    pidfile: Option<PathBuf>,
    cgroup: Option<String>,
}

/// `host:` section, validated.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Whether host metrics are collected.
    pub enabled: bool,
    /// Collection interval of host and process metrics.
    pub interval: Duration,
    /// procfs root and filesystem filters.
    pub settings: HostSettings,
}

/// [`compile_regex`] for the filesystem filters, without the lazy DFA: they are matched against a
/// few dozen short strings (filesystem types, mount points) once a cycle, where its transition
/// cache would be most of the regex's memory and saves nothing noticeable. Same matches: only the
/// engine that runs them differs (`filters_match_as_plain_regexes`).
fn compile_filter(
    pattern: &str,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<regex::Regex> {
    match regex::RegexBuilder::new(pattern).dfa_size_limit(0).build() {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push(ConfigError::new(path, format!("invalid regex: {e}")));
            None
        }
    }
}

/// Validates `host:`, adding every problem to `errors`.
pub fn validate(raw: RawHost, errors: &mut Vec<ConfigError>) -> HostConfig {
    if raw.interval < Duration::from_secs(1) {
        errors.push(ConfigError::new("host.interval", "must be at least 1s"));
    }
    let exclude_fstypes = compile_filter(
        &raw.filesystem.exclude_fstypes,
        "host.filesystem.exclude_fstypes",
        errors,
    );
    let exclude_mountpoints = compile_filter(
        &raw.filesystem.exclude_mountpoints,
        "host.filesystem.exclude_mountpoints",
        errors,
    );
    HostConfig {
        enabled: raw.enabled,
        interval: raw.interval,
        settings: HostSettings {
            procfs: raw.procfs,
            exclude_fstypes: exclude_fstypes.unwrap_or_else(never_matches),
            exclude_mountpoints: exclude_mountpoints.unwrap_or_else(never_matches),
        },
    }
}

/// Validates `processes:` (pidfiles relative to `base`), adding every problem to `errors`.
pub fn validate_processes(
    raw: Vec<RawProcess>,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> Vec<TargetSpec> {
    let mut processes = Vec::new();
    let mut names = std::collections::HashSet::new();
    if raw.len() + 1 > MAX_TARGETS {
        errors.push(ConfigError::new(
            "processes",
            format!(
                "at most {} targets (one is the agent itself)",
                MAX_TARGETS - 1
            ),
        ));
    }
    for (i, p) in raw.into_iter().enumerate() {
        let at = |k: &str| format!("processes[{i}].{k}");
        if p.target.trim().is_empty() {
            errors.push(ConfigError::new(at("target"), "must not be empty"));
        } else if p.target == SELF_TARGET {
            errors.push(ConfigError::new(
                at("target"),
                format!("{SELF_TARGET:?} is reserved for the agent's own process"),
            ));
        } else if !names.insert(p.target.clone()) {
            errors.push(ConfigError::new(
                at("target"),
                format!("duplicate target {:?}", p.target),
            ));
        }
        let m = p.matcher;
        if m.name.is_none() && m.cmdline.is_none() && m.pidfile.is_none() && m.cgroup.is_none() {
            errors.push(ConfigError::new(
                at("match"),
                "needs at least one of name, cmdline, pidfile, cgroup",
            ));
        }
        let cmdline = m
            .cmdline
            .as_deref()
            .and_then(|r| compile_regex(r, &at("match.cmdline"), errors));
        let cgroup = m
            .cgroup
            .as_deref()
            .and_then(|r| compile_regex(r, &at("match.cgroup"), errors));
        processes.push(TargetSpec {
            name: p.target,
            process_name: m.name,
            cmdline,
            pidfile: m.pidfile.map(|f| base.join(f)),
            cgroup,
            pid: None,
            include_children: p.include_children,
        });
    }
    processes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_plain_regexes() {
        let mut errors = Vec::new();
        let cases: [(&str, &[&str]); 2] = [
            (
                DEFAULT_EXCLUDE_FSTYPES,
                &[
                    "autofs",
                    "cgroup",
                    "cgroup2",
                    "cgroup3",
                    "overlay",
                    "overlayfs",
                    "proc",
                    "procfs",
                    "sysfs",
                    "tracefs",
                    "nfsd",
                    "nfs",
                    "ext4",
                    "xfs",
                    "btrfs",
                    "tmpfs",
                    "efivarfs",
                    "",
                    "PROC",
                    "xproc",
                    "fuse.sshfs",
                ],
            ),
            (
                DEFAULT_EXCLUDE_MOUNTPOINTS,
                &[
                    "/",
                    "/dev",
                    "/dev/shm",
                    "/devices",
                    "/proc",
                    "/proc/sys",
                    "/run",
                    "/run/credentials",
                    "/run/credentials/x.service",
                    "/sys/fs/cgroup",
                    "/var/lib/docker/overlay2/abc/merged",
                    "/var/lib/docker",
                    "/home",
                    "/var/lib/containers/storage/overlay",
                    "/mnt/d\u{e9}j\u{e0}",
                    "/sysroot",
                ],
            ),
        ];
        for (pattern, inputs) in cases {
            let filter = compile_filter(pattern, "p", &mut errors).expect("compiles");
            let plain = regex::Regex::new(pattern).expect("compiles");
            for input in inputs {
                assert_eq!(
                    filter.is_match(input),
                    plain.is_match(input),
                    "{pattern} on {input:?}"
                );
            }
        }
        assert!(errors.is_empty());
        assert!(compile_filter("(", "host.filesystem.exclude_fstypes", &mut errors).is_none());
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].to_string().contains("invalid regex"),
            "{}",
            errors[0]
        );
    }
}
