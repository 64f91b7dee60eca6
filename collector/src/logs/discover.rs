//! Finds the files a log source should tail: `include` / `exclude` globs (with `**`), walked
//! from each pattern's literal root directory. Compressed names (rotated `.gz` and friends) are
//! excluded by default. Pure filesystem reads, no state: the tailer calls [`Discovery::scan`] on
//! every wake-up and on its fallback interval.
//!
//! A scan also reports *rotated siblings*: files whose names are not selected but that carry a
//! rotation suffix (`name.N`, `name.YYYY-MM-DD[_HH[-MM[-SS]]]`, `name-YYYYMMDD[HH]`, each
//! optionally compressed) on a selected name. The tailer reads those only when it has reason to
//! (a checkpointed identity, or written after its last look), so `include: *.log` still follows
//! files a service rotated while the agent was down or waiting.

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
    /// Not selected itself: a rotated name of a selected one (see the module docs).
    pub rotated: bool,
    /// A rotated sibling with a compressed extension (never read).
    pub compressed: bool,
    /// Last modification, Unix nanoseconds.
    pub mtime_ns: u64,
}

/// Compiled include / exclude patterns and the directories to walk.
#[derive(Debug, Clone)]
pub struct Discovery {
    include: GlobSet,
    exclude: GlobSet,
    /// The user's `exclude` alone (without the compressed patterns).
    user_exclude: GlobSet,
    compressed: GlobSet,
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

/// Unix nanoseconds of a file's last modification (0 when unknown).
pub fn mtime_ns(meta: &fs::Metadata) -> u64 {
    let secs = u64::try_from(meta.mtime()).unwrap_or(0);
    let nanos = u64::try_from(meta.mtime_nsec()).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Extensions of compressed rotations.
const COMPRESSED_EXT: &[&str] = &[".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4", ".z"];

/// The name a rotated file had before rotation: `app.log.3` → `app.log`,
/// `app.log.2026-12-06` and `app.log.2026-12-06_13-00-00` (Python's `TimedRotatingFileHandler`)
/// → `app.log`, `app.log-20261206` and `app.log-2026120613` (logrotate `dateext`) → `app.log`;
/// each also with a compressed extension. `None` for names without a rotation suffix.
pub fn rotated_base(name: &str) -> Option<&str> {
    let stem = COMPRESSED_EXT
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .unwrap_or(name);
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let base = if let Some((base, suffix)) = stem.rsplit_once('.')
        && (all_digits(suffix) && suffix.len() <= 6 || is_date_suffix(suffix))
    {
        base
    } else if let Some((base, suffix)) = stem.rsplit_once('-')
        && all_digits(suffix)
        && (suffix.len() == 8 || suffix.len() == 10)
    {
        base
    } else {
        return None;
    };
    (!base.is_empty()).then_some(base)
}

/// `YYYY-MM-DD`, optionally followed by `_HH`, `_HH-MM` or `_HH-MM-SS`.
fn is_date_suffix(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() < 10 || !digits(0..4) || b[4] != b'-' || !digits(5..7) || b[7] != b'-' {
        return false;
    }
    if !digits(8..10) {
        return false;
    }
    match b.len() {
        10 => true,
        13 => b[10] == b'_' && digits(11..13),
        16 => b[10] == b'_' && digits(11..13) && b[13] == b'-' && digits(14..16),
        19 => {
            b[10] == b'_'
                && digits(11..13)
                && b[13] == b'-'
                && digits(14..16)
                && b[16] == b'-'
                && digits(17..19)
        }
        _ => false,
    }
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
        let mut user_exc = GlobSetBuilder::new();
        for p in exclude {
            exc.add(glob(p)?);
            user_exc.add(glob(p)?);
        }
        let mut comp = GlobSetBuilder::new();
        for p in COMPRESSED {
            comp.add(glob(p)?);
            if exclude_compressed {
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
            user_exclude: build(user_exc, "exclude")?,
            compressed: build(comp, "compressed")?,
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

    /// Whether the user's `exclude` patterns name `path` (a copy found beside a truncated file
    /// is read only when they do not).
    pub fn excluded_by_user(&self, path: &Path) -> bool {
        self.user_exclude.is_match(path)
    }

    /// For a path not selected: whether it is a rotated name of a selected one, and whether it
    /// is compressed.
    pub fn rotated_sibling(&self, path: &Path) -> Option<bool> {
        let name = path.file_name()?.to_str()?;
        let base = rotated_base(name)?;
        let base_path = path.with_file_name(base);
        (self.include.is_match(&base_path)
            && !self.user_exclude.is_match(&base_path)
            && !self.user_exclude.is_match(path))
        .then(|| self.compressed.is_match(path))
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
            let (rotated, compressed) = if selected {
                (false, false)
            } else {
                match self.rotated_sibling(&path) {
                    Some(compressed) => (true, compressed),
                    None => continue,
                }
            };
            if !seen.insert(path.clone()) {
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
                    rotated,
                    compressed,
                    mtime_ns: mtime_ns(&meta),
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
            .filter(|f| !f.rotated)
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
    fn rotated_names() {
        for (name, base) in [
            ("app.log.1", Some("app.log")),
            ("app.log.12", Some("app.log")),
            ("app.log.3.gz", Some("app.log")),
            ("app.log.2026-12-06", Some("app.log")),
            ("app.log.2026-12-06_13", Some("app.log")),
            ("app.log.2026-12-06_13-05", Some("app.log")),
            ("app.log.2026-12-06_13-05-09", Some("app.log")),
            ("app.log-20261206", Some("app.log")),
            ("app.log-2026120613.xz", Some("app.log")),
            ("app.log", None),
            ("app.log.old", None),
            ("app.log-1", None),
            ("app.log.2026-12-6", None),
            (".1", None),
        ] {
            assert_eq!(rotated_base(name), base, "{name}");
        }
    }

    #[test]
    fn rotated_siblings_of_selected_names_are_reported() {
        let dir = tempfile::tempdir().expect("test setup");
        let d = dir.path();
        for f in [
            "app.log",
            "app.log.1",
            "app.log.2.gz",
            "app.log.2026-12-06_13-00-00",
            "other.txt.1",
            "skip.log.1",
        ] {
            fs::write(d.join(f), b"x").expect("test setup");
        }
        let disc = Discovery::new(
            &[format!("{}/*.log", d.display())],
            &[format!("{}/skip.log*", d.display())],
            true,
        )
        .expect("test setup");
        let mut found: Vec<(String, bool, bool)> = disc
            .scan(&mut |_, _| {})
            .into_iter()
            .map(|f| {
                let name = f.path.file_name().expect("name").to_string_lossy().into();
                (name, f.rotated, f.compressed)
            })
            .collect();
        found.sort();
        assert_eq!(
            found,
            vec![
                ("app.log".into(), false, false),
                ("app.log.1".into(), true, false),
                ("app.log.2.gz".into(), true, true),
                ("app.log.2026-12-06_13-00-00".into(), true, false),
            ]
        );
    }

    #[test]
    fn bad_glob_is_an_error() {
        assert!(matches!(
            Discovery::new(&["/x/[".into()], &[], true),
            Err(DiscoverError::Glob { .. })
        ));
    }
}
