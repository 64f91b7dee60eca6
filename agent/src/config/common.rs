//! What every configuration section is built from: errors with their YAML paths, [`Secret`],
//! durations written like `15s`, the [`Env`] trait, secrets and bearer tokens read from
//! `*_file` / `*_env` keys, and regexes compiled with their path.
//!
//! A leaf: it imports no module of the agent, so every component can own its section (raw shape
//! and a pure `validate`) by importing this and nothing of the assembler (`config`).

use std::fmt;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;

/// One problem in a configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path to the key (`http.listen`, `processes[0].match`), or `line N` for text errors.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// Where the configuration came from.
    pub source_name: String,
    /// The problems, in document order where known.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{} has {n} error{}:",
            self.source_name,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Where `${VAR}` values come from; tests pass a map instead of mutating the process environment.
pub trait Env {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// A secret value: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A secret read by a section's validation.
    pub(crate) fn new(s: String) -> Self {
        Self(s)
    }

    /// A secret from a literal, for tests.
    #[cfg(test)]
    pub(crate) fn for_tests(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Durations written like `15s`, `1m30s`, `250ms` (`#[serde(with = "duration")]`).
pub mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    /// Parses a humantime duration, naming the text it could not read.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map_err(|e| {
            serde::de::Error::custom(format!("{s:?} is not a duration like 15s or 1m30s ({e})"))
        })
    }
}

/// Reads a secret from exactly one of a file (relative to `base`) or an environment variable;
/// `keys` names the two keys under `at` (`("secret_file", "secret_env")`).
pub fn read_secret(
    file: Option<&PathBuf>,
    var: Option<&String>,
    at: &str,
    keys: (&str, &str),
    base: &Path,
    env: &dyn Env,
    errors: &mut Vec<ConfigError>,
) -> Option<Secret> {
    let mut err = |path: String, message: String| errors.push(ConfigError { path, message });
    match (file, var) {
        (Some(_), Some(_)) => {
            err(
                at.into(),
                format!("give {} or {}, not both", keys.0, keys.1),
            );
            None
        }
        (None, None) => {
            err(at.into(), format!("needs {} or {}", keys.0, keys.1));
            None
        }
        (Some(file), None) => {
            let path = base.join(file);
            match std::fs::read_to_string(&path) {
                Ok(text) if !text.trim().is_empty() => Some(Secret(text.trim().to_owned())),
                Ok(_) => {
                    err(
                        format!("{at}.{}", keys.0),
                        format!("{} is empty", path.display()),
                    );
                    None
                }
                Err(e) => {
                    err(
                        format!("{at}.{}", keys.0),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, Some(var)) => match env.var(var) {
            Some(v) if !v.trim().is_empty() => Some(Secret(v.trim().to_owned())),
            _ => {
                err(
                    format!("{at}.{}", keys.1),
                    format!("environment variable {var} is not set or empty"),
                );
                None
            }
        },
    }
}

/// Like [`read_secret`] with `bearer_token_file` / `bearer_token_env`, but absent when neither
/// key is given.
pub fn optional_bearer_token(
    file: Option<&PathBuf>,
    var: Option<&String>,
    at: &str,
    base: &Path,
    env: &dyn Env,
    errors: &mut Vec<ConfigError>,
) -> Option<Secret> {
    if file.is_none() && var.is_none() {
        return None;
    }
    read_secret(
        file,
        var,
        at,
        ("bearer_token_file", "bearer_token_env"),
        base,
        env,
        errors,
    )
}

/// `auth:` of a listener: accepted bearer tokens from a file (one per line, so a new token can
/// be added before the old one is removed) or a comma-separated environment variable.
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(default)]
pub struct RawBearerAuth {
    /// A file of tokens, one per line, relative to the configuration file.
    pub bearer_token_file: Option<PathBuf>,
    /// An environment variable holding tokens separated by commas.
    pub bearer_token_env: Option<String>,
}

impl RawBearerAuth {
    /// The tokens; an empty list when neither key is given (`required`: an error then, at `at`).
    pub fn tokens(
        &self,
        at: &str,
        required: bool,
        base: &Path,
        env: &dyn Env,
        errors: &mut Vec<ConfigError>,
    ) -> Vec<Secret> {
        let mut err = |path: String, message: String| errors.push(ConfigError { path, message });
        match (&self.bearer_token_file, &self.bearer_token_env) {
            (Some(_), Some(_)) => {
                err(
                    at.into(),
                    "give bearer_token_file or bearer_token_env, not both".into(),
                );
                Vec::new()
            }
            (None, None) => {
                if required {
                    err(
                        at.into(),
                        "needs bearer_token_file or bearer_token_env".into(),
                    );
                }
                Vec::new()
            }
            (Some(file), None) => {
                let path = base.join(file);
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        let tokens: Vec<Secret> = text
                            .lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(|l| Secret(l.into()))
                            .collect();
                        if tokens.is_empty() {
                            err(
                                format!("{at}.bearer_token_file"),
                                format!("{} holds no token", path.display()),
                            );
                        }
                        tokens
                    }
                    Err(e) => {
                        err(
                            format!("{at}.bearer_token_file"),
                            format!("cannot read {}: {e}", path.display()),
                        );
                        Vec::new()
                    }
                }
            }
            (None, Some(var)) => match env.var(var) {
                Some(v) if !v.trim().is_empty() => v
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| Secret(t.into()))
                    .collect(),
                _ => {
                    err(
                        format!("{at}.bearer_token_env"),
                        format!("environment variable {var} is not set or empty"),
                    );
                    Vec::new()
                }
            },
        }
    }
}

/// Compiles `pattern`, or records `invalid regex: ...` at `path`.
pub fn compile_regex(pattern: &str, path: &str, errors: &mut Vec<ConfigError>) -> Option<Regex> {
    match Regex::new(pattern) {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push(ConfigError {
                path: path.into(),
                message: format!("invalid regex: {e}"),
            });
            None
        }
    }
}

/// A regex that matches nothing: the stand-in for a pattern that failed to compile (the
/// configuration is rejected then, so it never runs).
pub fn never_matches() -> Regex {
    Regex::new("$^").expect("a static regex compiles")
}
