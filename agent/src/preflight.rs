//! What `check-config` can tell about a valid file before `run` fails on it: whether the running
//! user can create and write `store.path`, and read and list the directories `logs[].include`
//! globs start in. Warnings only — the file may be meant for another user (the container's, the
//! systemd unit's) — printed by `check-config`, which still exits 0.

use std::path::{Component, Path, PathBuf};

use rustix::fs::{Access, access};

use crate::config::Config;

/// One line per problem found, naming the key, the path and the running uid.
pub fn warnings(config: &Config) -> Vec<String> {
    let uid = rustix::process::getuid().as_raw();
    let mut out = Vec::new();
    let store = &config.store.path;
    // The directory is created at start: it, or the nearest existing parent, must be writable.
    let (at, exists) = nearest_existing(store);
    let writable = access(&at, Access::WRITE_OK | Access::EXEC_OK).is_ok();
    if !writable {
        out.push(if exists {
            format!(
                "store.path {}: not writable by uid {uid}; `run` as this user would fail \
                 (choose a directory you own, e.g. ./sidelight-data)",
                store.display()
            )
        } else {
            format!(
                "store.path {}: cannot be created by uid {uid} ({} is not writable); `run` as \
                 this user would fail (choose a directory you own, e.g. ./sidelight-data)",
                store.display(),
                at.display()
            )
        });
    }
    for source in &config.logs {
        for glob in &source.include {
            let dir = glob_root(glob);
            if dir.as_os_str().is_empty() || !dir.is_dir() {
                // Not there yet: the tailer waits for it (not an error).
                continue;
            }
            if access(&dir, Access::READ_OK | Access::EXEC_OK).is_err() {
                out.push(format!(
                    "logs ({}): {} is not readable by uid {uid}; its files would not be tailed",
                    source.source,
                    dir.display()
                ));
            }
        }
    }
    out
}

/// `path` itself when it exists, else its nearest existing ancestor; and whether it existed.
fn nearest_existing(path: &Path) -> (PathBuf, bool) {
    if path.exists() {
        return (path.to_path_buf(), true);
    }
    let mut p = path;
    while let Some(parent) = p.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if parent.exists() {
            return (parent.to_path_buf(), false);
        }
        p = parent;
    }
    (PathBuf::from("."), false)
}

/// The directory a glob starts in: its components before the first one with a wildcard.
fn glob_root(glob: &str) -> PathBuf {
    let mut root = PathBuf::new();
    for c in Path::new(glob).components() {
        let is_pattern =
            matches!(c, Component::Normal(s) if s.to_string_lossy().contains(['*', '?', '[', '{']));
        if is_pattern {
            return root;
        }
        root.push(c);
    }
    // No wildcard: the glob names a file; its directory is what must be readable.
    root.parent().map(Path::to_path_buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_roots() {
        assert_eq!(
            glob_root("/var/log/app/*.log"),
            PathBuf::from("/var/log/app")
        );
        assert_eq!(glob_root("/var/log/**/x.log"), PathBuf::from("/var/log"));
        assert_eq!(glob_root("./logs/app.log"), PathBuf::from("./logs"));
        assert_eq!(glob_root("*.log"), PathBuf::new());
    }

    #[test]
    fn nearest_existing_parent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("a/b/c");
        assert_eq!(nearest_existing(&deep), (dir.path().to_path_buf(), false));
        assert_eq!(
            nearest_existing(dir.path()),
            (dir.path().to_path_buf(), true)
        );
    }
}
