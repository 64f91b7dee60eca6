//! Retry discipline shared by the OTLP and remote-write exporters: exponential backoff with
//! jitter, `Retry-After` parsing, and the classification of answers into delivered, retryable
//! and permanent (the OTLP spec's lists for gRPC codes and HTTP statuses).

use std::time::{Duration, Instant, SystemTime};

/// How long and how often to retry one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay between two attempts (a `Retry-After` may ask for more; see
    /// [`MAX_RETRY_AFTER`]).
    pub max: Duration,
    /// Give up on a request after this long; `None`: retry until shutdown.
    pub max_elapsed: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            max_elapsed: Some(Duration::from_secs(300)),
        }
    }
}

/// The longest `Retry-After` / RetryInfo delay honoured as given; longer hints are cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The backoff state of one request.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    attempt: u32,
    started: Instant,
}

impl Backoff {
    /// A fresh backoff that starts counting now.
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            attempt: 0,
            started: Instant::now(),
        }
    }

    /// The un-jittered delay before retry number `attempt` (0-based): `initial * 2^attempt`,
    /// capped at `max`.
    pub fn base_delay(policy: &RetryPolicy, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        policy
            .initial
            .checked_mul(factor)
            .unwrap_or(policy.max)
            .min(policy.max)
    }

    /// The delay before the next attempt, or `None` when `max_elapsed` would be exceeded.
    /// A server's hint (`Retry-After`, gRPC RetryInfo) replaces the computed delay; otherwise the
    /// delay is drawn uniformly from [d/2, d] ("equal jitter"), so a fleet does not retry in step.
    pub fn next_delay(&mut self, hint: Option<Duration>) -> Option<Duration> {
        let base = Self::base_delay(&self.policy, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let delay = match hint {
            Some(h) => h.min(MAX_RETRY_AFTER),
            None => jitter(base),
        };
        match self.policy.max_elapsed {
            Some(limit) if self.started.elapsed() + delay > limit => None,
            _ => Some(delay),
        }
    }

    /// Retries so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let span = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(if span == 0 {
        0
    } else {
        fastrand::u64(0..=span)
    })
}

/// Parses an HTTP `Retry-After` value: delay seconds or an HTTP date (RFC 9110 §10.2.3).
/// A date in the past means "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// What one attempt to send came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Accepted; `rejected` items were refused inside a partial success.
    Delivered {
        /// Items the server rejected (partial success).
        rejected: u64,
        /// The server's message, if any.
        message: Option<String>,
    },
    /// Worth trying again (after `after`, when the server said so).
    Retry {
        /// Why (`unavailable`, `http_503`, `connection`, ...): for the log.
        reason: &'static str,
        /// The server's delay hint.
        after: Option<Duration>,
        /// Details for the log.
        message: String,
    },
    /// Will never succeed: counted and dropped.
    Permanent {
        /// The `reason` label (a bounded set).
        reason: &'static str,
        /// Details for the log.
        message: String,
    },
}

impl Outcome {
    /// The same answer for data that someone keeps until it is delivered (a batch holding tailed
    /// log records, whose checkpoint waits for it; a spill record): only a refusal that says the
    /// data itself is bad (`INVALID_ARGUMENT`, HTTP 400, HTTP 413) is final. Every other
    /// permanent answer — `RESOURCE_EXHAUSTED` without `RetryInfo`, an authentication or
    /// routing error — is retried with backoff, so a busy or misconfigured endpoint delays the
    /// data instead of dropping it (the files or the spill are the buffer).
    pub fn for_kept_data(self) -> Self {
        match self {
            Outcome::Permanent { reason, message } if !data_rejected(reason) => Outcome::Retry {
                reason,
                after: None,
                message,
            },
            other => other,
        }
    }
}

/// Whether a permanent refusal's `reason` says the data itself is unacceptable.
pub fn data_rejected(reason: &str) -> bool {
    matches!(reason, "invalid_argument" | "http_400" | "http_413")
}

/// Classifies a gRPC status per the OTLP spec: UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED,
/// OUT_OF_RANGE, DATA_LOSS and CANCELLED are retryable; RESOURCE_EXHAUSTED only when the server
/// sent a RetryInfo (`retry_info`); everything else is permanent.
pub fn classify_grpc(code: tonic::Code, retry_info: Option<Duration>, message: String) -> Outcome {
    use tonic::Code as C;
    let retry = |reason| Outcome::Retry {
        reason,
        after: retry_info,
        message: message.clone(),
    };
    match code {
        C::Ok => Outcome::Delivered {
            rejected: 0,
            message: None,
        },
        C::Unavailable => retry("unavailable"),
        C::DeadlineExceeded => retry("deadline_exceeded"),
        C::Aborted => retry("aborted"),
        C::OutOfRange => retry("out_of_range"),
        C::DataLoss => retry("data_loss"),
        C::Cancelled => retry("cancelled"),
        C::ResourceExhausted if retry_info.is_some() => retry("resource_exhausted"),
        other => Outcome::Permanent {
            reason: grpc_reason(other),
            message,
        },
    }
}

fn grpc_reason(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::InvalidArgument => "invalid_argument",
        C::NotFound => "not_found",
        C::AlreadyExists => "already_exists",
        C::PermissionDenied => "permission_denied",
        C::ResourceExhausted => "resource_exhausted",
        C::FailedPrecondition => "failed_precondition",
        C::Unimplemented => "unimplemented",
        C::Internal => "internal",
        C::Unauthenticated => "unauthenticated",
        _ => "grpc_other",
    }
}

/// A request that got no answer (refused, reset, timed out, TLS failed): retried, with reason
/// `tls` when the TLS settings (`tls_key`, e.g. `export.otlp.tls`) are the thing to check.
pub fn classify_no_answer(
    e: &crate::http_client::RequestError,
    endpoint: &str,
    tls_key: &str,
) -> Outcome {
    if e.is_tls() {
        Outcome::Retry {
            reason: "tls",
            after: None,
            message: format!("TLS with {endpoint} failed: {e} (check {tls_key})"),
        }
    } else {
        Outcome::Retry {
            reason: "connection",
            after: None,
            message: format!("{endpoint}: {e}"),
        }
    }
}

/// Classifies an HTTP status: 2xx delivered; 429, 502, 503 and 504 retryable (honouring
/// `Retry-After`); every other status permanent.
pub fn classify_http(status: u16, retry_after: Option<Duration>, message: String) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered {
            rejected: 0,
            message: None,
        },
        429 | 502 | 503 | 504 => Outcome::Retry {
            reason: match status {
                429 => "http_429",
                502 => "http_502",
                503 => "http_503",
                _ => "http_504",
            },
            after: retry_after,
            message,
        },
        s => Outcome::Permanent {
            #[allow(clippy::match_overlapping_arm)]
            reason: match s {
                400 => "http_400",
                401 => "http_401",
                403 => "http_403",
                404 => "http_404",
                413 => "http_413",
                400..=499 => "http_4xx",
                _ => "http_5xx",
            },
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_data_is_dropped_only_when_the_data_is_bad() {
        use tonic::Code as C;
        for code in [
            C::ResourceExhausted,
            C::PermissionDenied,
            C::Unauthenticated,
            C::Unimplemented,
            C::NotFound,
        ] {
            let o = classify_grpc(code, None, String::new());
            assert!(matches!(o, Outcome::Permanent { .. }), "{code:?}");
            assert!(
                matches!(o.for_kept_data(), Outcome::Retry { after: None, .. }),
                "{code:?} is retried for kept data"
            );
        }
        let o = classify_grpc(C::InvalidArgument, None, String::new()).for_kept_data();
        assert!(matches!(
            o,
            Outcome::Permanent {
                reason: "invalid_argument",
                ..
            }
        ));
        for (status, retried) in [
            (400, false),
            (413, false),
            (401, true),
            (404, true),
            (500, true),
        ] {
            let o = classify_http(status, None, String::new()).for_kept_data();
            assert_eq!(matches!(o, Outcome::Retry { .. }), retried, "HTTP {status}");
        }
        // Delivered and already-retryable answers are unchanged.
        let d = classify_http(200, None, String::new());
        assert_eq!(d.clone().for_kept_data(), d);
        let r = classify_http(503, Some(Duration::from_secs(2)), String::new());
        assert_eq!(r.clone().for_kept_data(), r);
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_in_range() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_elapsed: None,
        };
        let bases: Vec<u128> = (0..6)
            .map(|a| Backoff::base_delay(&p, a).as_millis())
            .collect();
        assert_eq!(bases, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(Backoff::base_delay(&p, 200), Duration::from_secs(1));
        let mut b = Backoff::new(p);
        for attempt in 0..10 {
            let d = b.next_delay(None).expect("unlimited");
            let base = Backoff::base_delay(&p, attempt);
            assert!(
                d >= base / 2 && d <= base,
                "{d:?} outside [{:?}, {base:?}]",
                base / 2
            );
        }
        assert_eq!(b.attempts(), 10);
    }

    #[test]
    fn a_hint_replaces_the_delay_and_max_elapsed_ends_retries() {
        let p = RetryPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(20),
            max_elapsed: Some(Duration::from_secs(5)),
        };
        let mut b = Backoff::new(p);
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(2))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(b.next_delay(Some(Duration::from_secs(6))), None);
        assert!(b.next_delay(None).is_some());
        let mut b = Backoff::new(RetryPolicy {
            max_elapsed: None,
            ..p
        });
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(3600))),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn retry_after_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").expect("date");
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a past date means now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn grpc_codes_per_the_otlp_spec() {
        use tonic::Code as C;
        for c in [
            C::Unavailable,
            C::DeadlineExceeded,
            C::Aborted,
            C::OutOfRange,
            C::DataLoss,
            C::Cancelled,
        ] {
            assert!(
                matches!(classify_grpc(c, None, String::new()), Outcome::Retry { .. }),
                "{c:?}"
            );
        }
        assert!(matches!(
            classify_grpc(C::ResourceExhausted, None, String::new()),
            Outcome::Permanent {
                reason: "resource_exhausted",
                ..
            }
        ));
        assert!(matches!(
            classify_grpc(C::ResourceExhausted, Some(Duration::from_secs(1)), String::new()),
            Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(1)
        ));
        for (c, reason) in [
            (C::InvalidArgument, "invalid_argument"),
            (C::Unauthenticated, "unauthenticated"),
            (C::PermissionDenied, "permission_denied"),
            (C::Unimplemented, "unimplemented"),
            (C::Unknown, "grpc_other"),
        ] {
            assert_eq!(
                classify_grpc(c, None, "m".into()),
                Outcome::Permanent {
                    reason,
                    message: "m".into()
                }
            );
        }
    }

    #[test]
    fn http_statuses_per_the_otlp_spec() {
        for s in [429, 502, 503, 504] {
            assert!(matches!(
                classify_http(s, Some(Duration::from_secs(3)), String::new()),
                Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(3)
            ));
        }
        for (s, reason) in [
            (400, "http_400"),
            (401, "http_401"),
            (413, "http_413"),
            (422, "http_4xx"),
            (500, "http_5xx"),
            (501, "http_5xx"),
        ] {
            assert!(
                matches!(classify_http(s, None, String::new()), Outcome::Permanent { reason: r, .. } if r == reason),
                "{s}"
            );
        }
        assert!(matches!(
            classify_http(204, None, String::new()),
            Outcome::Delivered { rejected: 0, .. }
        ));
    }
}
