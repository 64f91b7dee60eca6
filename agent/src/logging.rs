//! The agent's own logs: structured JSON lines on stderr, level from `agent.log_level` or the
//! `SIDELIGHT_LOG` environment variable (which wins), changeable on reload.
//!
//! A level setting is a comma-separated list of directives: a bare level (`info`, the default
//! for every target), `target=level` (`sidelight::logs=debug`: that module and those below it),
//! or a bare target (every level of it). The most specific target wins. Levels: `off`, `error`,
//! `warn`, `info`, `debug`, `trace` (any case). These are `EnvFilter`'s target directives; its
//! span and field filters (`[span{field=value}]`) are not supported and are rejected, which keeps
//! a regex engine for log filtering out of the agent.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Registry, reload};

/// The environment variable that overrides the configured level.
pub const LOG_ENV: &str = "SIDELIGHT_LOG";

/// Why a level setting was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LevelError {
    /// A directive names no target before its `=`.
    #[error("`{0}`: no target before `=`")]
    EmptyTarget(String),
    /// Not one of `off`, `error`, `warn`, `info`, `debug`, `trace`.
    #[error("`{directive}`: `{level}` is not a level (off, error, warn, info, debug, trace)")]
    Level {
        /// The directive.
        directive: String,
        /// Its level part.
        level: String,
    },
    /// A span or field filter, or characters no module path has.
    #[error(
        "`{0}`: expected `level`, `target` or `target=level` (span and field filters are not supported)"
    )]
    Syntax(String),
}

/// Parses a level setting (module doc); an empty one turns the agent's logs off.
pub fn parse_filter(setting: &str) -> Result<Targets, LevelError> {
    let mut targets = Targets::new();
    for directive in setting.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if directive.contains(['[', ']', '{', '}']) {
            return Err(LevelError::Syntax(directive.into()));
        }
        let (target, level) = match directive.split_once('=') {
            Some((target, level)) => {
                let target = target.trim();
                if target.is_empty() {
                    return Err(LevelError::EmptyTarget(directive.into()));
                }
                let level = level.trim();
                let parsed = level
                    .parse::<LevelFilter>()
                    .map_err(|_| LevelError::Level {
                        directive: directive.into(),
                        level: level.into(),
                    })?;
                (Some(target), parsed)
            }
            None => match directive.parse::<LevelFilter>() {
                Ok(level) => (None, level),
                Err(_) => (Some(directive), LevelFilter::TRACE),
            },
        };
        match target {
            Some(t) => {
                if !t.chars().all(|c| c.is_alphanumeric() || "_-:.".contains(c)) {
                    return Err(LevelError::Syntax(directive.into()));
                }
                targets = targets.with_target(t, level);
            }
            None => targets = targets.with_default(level),
        }
    }
    Ok(targets)
}

/// Changes the level after start.
#[derive(Clone)]
pub struct LogHandle(reload::Handle<Targets, Registry>);

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogHandle")
    }
}

/// The filter in force: `SIDELIGHT_LOG` when set and valid, else the configured setting, else
/// `info` (a configured setting is validated with the config; an invalid variable is reported
/// once the logger runs).
fn filter(configured: &str) -> (Targets, Option<LevelError>) {
    let from_env = std::env::var(LOG_ENV).ok().filter(|v| !v.trim().is_empty());
    let mut rejected = None;
    if let Some(v) = from_env {
        match parse_filter(&v) {
            Ok(t) => return (t, None),
            Err(e) => rejected = Some(e),
        }
    }
    let targets =
        parse_filter(configured).unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO));
    (targets, rejected)
}

fn warn_rejected(rejected: Option<LevelError>) {
    if let Some(e) = rejected {
        tracing::warn!(error = %e, variable = LOG_ENV, "ignoring an invalid log level setting");
    }
}

/// Installs the JSON logger. Call once, before anything logs.
pub fn init(configured_level: &str) -> LogHandle {
    let (targets, rejected) = filter(configured_level);
    let (layer, handle) = reload::Layer::new(targets);
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(true)
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(layer)
        .with(fmt)
        .try_init();
    warn_rejected(rejected);
    LogHandle(handle)
}

impl LogHandle {
    /// Applies a new configured level (the environment variable still wins).
    pub fn set_level(&self, configured_level: &str) {
        let (targets, rejected) = filter(configured_level);
        if let Err(e) = self.0.reload(targets) {
            tracing::warn!(error = %e, "could not change the log level");
        }
        warn_rejected(rejected);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn enabled(setting: &str, target: &str, level: Level) -> bool {
        parse_filter(setting)
            .unwrap_or_else(|e| panic!("{setting}: {e}"))
            .would_enable(target, &level)
    }

    #[test]
    fn bare_levels_apply_to_every_target() {
        assert!(enabled("info", "sidelight::runtime", Level::INFO));
        assert!(!enabled("info", "sidelight::runtime", Level::DEBUG));
        assert!(enabled("DEBUG", "hyper", Level::DEBUG));
        assert!(!enabled("warn", "sidelight", Level::INFO));
        assert!(!enabled("off", "sidelight", Level::ERROR));
        assert!(enabled("trace", "x", Level::TRACE));
    }

    #[test]
    fn the_most_specific_target_wins() {
        let s = "sidelight=debug,warn";
        assert!(enabled(s, "sidelight::logs", Level::DEBUG));
        assert!(enabled(s, "sidelight", Level::DEBUG));
        assert!(!enabled(s, "sidelight", Level::TRACE));
        assert!(!enabled(s, "hyper::proto", Level::INFO));
        assert!(enabled(s, "hyper::proto", Level::WARN));
        let s = "info, sidelight::logs = trace ,sidelight=error";
        assert!(enabled(s, "sidelight::logs::tail", Level::TRACE));
        assert!(!enabled(s, "sidelight::runtime", Level::WARN));
        assert!(enabled(s, "tokio", Level::INFO));
    }

    #[test]
    fn a_bare_target_enables_all_its_levels_and_nothing_else() {
        assert!(enabled("sidelight", "sidelight::http", Level::TRACE));
        assert!(!enabled("sidelight", "hyper", Level::ERROR));
    }

    #[test]
    fn empty_settings_log_nothing_and_empty_directives_are_skipped() {
        assert!(!enabled("", "sidelight", Level::ERROR));
        assert!(enabled("info,", "sidelight", Level::INFO));
        assert!(enabled(",,warn", "sidelight", Level::WARN));
    }

    #[test]
    fn bad_settings_are_rejected_with_the_directive() {
        assert_eq!(
            parse_filter("sidelight=loud"),
            Err(LevelError::Level {
                directive: "sidelight=loud".into(),
                level: "loud".into()
            })
        );
        assert_eq!(
            parse_filter("=debug"),
            Err(LevelError::EmptyTarget("=debug".into()))
        );
        assert!(matches!(
            parse_filter("sidelight[request]=debug"),
            Err(LevelError::Syntax(_))
        ));
        assert!(matches!(
            parse_filter("sidelight[{path=/}]=debug"),
            Err(LevelError::Syntax(_))
        ));
        assert!(matches!(
            parse_filter("a=b=c"),
            Err(LevelError::Level { .. })
        ));
        let msg = parse_filter("info,x=verbose").err().map(|e| e.to_string());
        assert_eq!(
            msg.as_deref(),
            Some("`x=verbose`: `verbose` is not a level (off, error, warn, info, debug, trace)")
        );
    }
}
