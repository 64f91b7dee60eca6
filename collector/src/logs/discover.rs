//! Finds the files a log source should tail: `include` / `exclude` globs (with `**`), walked
//! from each pattern's literal root directory. Compressed names (rotated `.gz` and friends) are
//! excluded by default. Pure filesystem reads, no state: the tailer calls [`Discovery::scan`] on
//! every wake-up and on its fallback interval.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// Patterns excluded when `exclude_compressed` is on.
pub const COMPRESSED: &[&str] = &[
    "**/*.gz", "**/*.bz2", "**/*.xz", "**/*.zst", "**/*.zip", "**/*.lz4", "**/*.z",
];

/// Most directory levels walked below a root for `**` patterns.
const MAX_DEPTH: usize = 16;

/// Errors in glob patterns.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("invalid glob {pattern:?}: {source}")]
    Glob {
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("include pattern {0:?} is not an absolute or relative path")]
    EmptyInclude(String),
}

/// One candidate: a matched path and what `stat` said about it.
#[derive(Debug, Clone)]
pub struct Found {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// The path is a directory (or another non-regular file) that a pattern matched.
    pub not_a_file: bool,
    /// The path is a symlink (followed): the file's own directory may not be watched.
    pub symlink: bool,
}

/// Compiled include / exclude patterns and the directories to walk.
#[derive(Debug, Clone)]
pub struct Discovery {
    include: GlobSet,
    exclude: GlobSet,
    /// Root directory and how deep below it a match can be (`None`: unbounded, `**`).
    roots: Vec<(PathBuf, Option<usize>)>,
}

fn glob(pattern: &str) -> Result<Glob, DiscoverError> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|source| DiscoverError::Glob {
            pattern: pattern.to_owned(),
            source,
        })
}

fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

/// Splits a pattern into its literal root directory and the depth below it a match may have.
fn root_of(pattern: &str) -> (PathBuf, Option<usize>) {
    let mut root = PathBuf::new();
    let mut rest = 0usize;
    let mut unbounded = false;
    let mut in_rest = false;
    for c in Path::new(pattern).components() {
        let s = c.as_os_str().to_string_lossy();
        if !in_rest && (matches!(c, Component::RootDir | Component::Prefix(_)) || !has_meta(&s)) {
            root.push(c.as_os_str());
            continue;
        }
        in_rest = true;
        rest += 1;
        if s.contains("**") {
            unbounded = true;
        }
    }
    if !in_rest {
        // A literal file path: walk its parent, one level.
        let parent = root.parent().map(Path::to_path_buf).unwrap_or_default();
        return (dir_or_dot(parent), Some(1));
    }
    (dir_or_dot(root), if unbounded { None } else { Some(rest) })
}

fn dir_or_dot(p: PathBuf) -> PathBuf {
    if p.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        p
    }
}

impl Discovery {
    pub fn new(
        include: &[String],
        exclude: &[String],
        exclude_compressed: bool,
    ) -> Result<Self, DiscoverError> {
        let mut inc = GlobSetBuilder::new();
        let mut roots: Vec<(PathBuf, Option<usize>)> = Vec::new();
        for p in include {
            if p.trim().is_empty() {
                return Err(DiscoverError::EmptyInclude(p.clone()));
            }
            inc.add(glob(p)?);
            let (root, depth) = root_of(p);
            match roots.iter_mut().find(|(r, _)| *r == root) {
                Some((_, d)) => {
                    *d = match (*d, depth) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    }
                }
                None => roots.push((root, depth)),
            }
        }
        let mut exc = GlobSetBuilder::new();
        for p in exclude {
            exc.add(glob(p)?);
        }
        if exclude_compressed {
            for p in COMPRESSED {
                exc.add(glob(p)?);
            }
        }
        let build = |b: GlobSetBuilder, what: &str| {
            b.build().map_err(|source| DiscoverError::Glob {
                pattern: what.to_owned(),
                source,
            })
        };
        Ok(Self {
            include: build(inc, "include")?,
            exclude: build(exc, "exclude")?,
            roots,
        })
    }

    /// The directories to watch for wake-ups, each with whether to watch recursively.
    pub fn watch_roots(&self) -> impl Iterator<Item = (&Path, bool)> {
        self.roots
            .iter()
            .map(|(r, d)| (r.as_path(), d.is_none_or(|d| d > 1)))
    }

    /// Whether `path` is selected by the patterns.
    pub fn selects(&self, path: &Path) -> bool {
        self.include.is_match(path) && !self.exclude.is_match(path)
    }

    /// Walks the roots; unreadable directories are skipped (reported through `on_error`).
    pub fn scan(&self, on_error: &mut dyn FnMut(&Path, std::io::Error)) -> Vec<Found> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for (root, depth) in &self.roots {
            let limit = depth.unwrap_or(MAX_DEPTH).min(MAX_DEPTH);
            self.walk(root, 1, limit, &mut out, &mut seen, on_error);
        }
        out
    }

    fn walk(
        &self,
        dir: &Path,
        level: usize,
        limit: usize,
        out: &mut Vec<Found>,
        seen: &mut BTreeSet<PathBuf>,
        on_error: &mut dyn FnMut(&Path, std::io::Error),
    ) {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                on_error(dir, e);
                return;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            let selected = self.selects(&path);
            if file_type.is_dir() && !selected {
                if level < limit {
                    self.walk(&path, level + 1, limit, out, seen, on_error);
                }
                continue;
            }
            if !selected || !seen.insert(path.clone()) {
                continue;
            }
            // Follows symlinks to files (a common way to point at the current log).
            match fs::metadata(&path) {
                Ok(meta) => out.push(Found {
                    dev: meta.dev(),
                    ino: meta.ino(),
                    size: meta.len(),
                    not_a_file: !meta.is_file(),
                    symlink: file_type.is_symlink(),
                    path,
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => on_error(&path, e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_and_depths() {
        assert_eq!(root_of("/var/log/*.log"), ("/var/log".into(), Some(1)));
        assert_eq!(root_of("/var/log/**/*.log"), ("/var/log".into(), None));
        assert_eq!(root_of("/var/*/app/*.log"), ("/var".into(), Some(3)));
        assert_eq!(root_of("/var/log/app.log"), ("/var/log".into(), Some(1)));
        assert_eq!(root_of("*.log"), (".".into(), Some(1)));
    }

    #[test]
    fn scan_with_excludes_and_recursion() {
        let dir = tempfile::tempdir().expect("test setup");
        let d = dir.path();
        fs::create_dir_all(d.join("a/b")).expect("test setup");
        for f in [
            "x.log",
            "x.log.1.gz",
            "skip.log",
            "a/y.log",
            "a/b/z.log",
            "a/b/z.txt",
        ] {
            fs::write(d.join(f), b"").expect("test setup");
        }
        let inc = vec![format!("{}/**/*.log*", d.display())];
        let exc = vec![format!("{}/skip.log", d.display())];
        let disc = Discovery::new(&inc, &exc, true).expect("test setup");
        let mut names: Vec<_> = disc
            .scan(&mut |_, _| {})
            .into_iter()
            .map(|f| f.path.strip_prefix(d).expect("test setup").to_path_buf())
            .collect();
        names.sort();
        let want: Vec<PathBuf> = ["a/b/z.log", "a/y.log", "x.log"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(names, want);
    }

    #[test]
    fn single_star_does_not_cross_directories() {
        let dir = tempfile::tempdir().expect("test setup");
        let d = dir.path();
        fs::create_dir_all(d.join("sub")).expect("test setup");
        fs::write(d.join("sub/a.log"), b"").expect("test setup");
        fs::write(d.join("b.log"), b"").expect("test setup");
        let disc =
            Discovery::new(&[format!("{}/*.log", d.display())], &[], true).expect("test setup");
        let found = disc.scan(&mut |_, _| {});
        assert_eq!(found.len(), 1);
        assert!(found[0].path.ends_with("b.log"));
    }

    #[test]
    fn bad_glob_is_an_error() {
        assert!(matches!(
            Discovery::new(&["/x/[".into()], &[], true),
            Err(DiscoverError::Glob { .. })
        ));
    }
}
