//! Durations from users and deadlines computed from them.
//!
//! `Instant + Duration` panics when the sum does not fit, and a duration
//! can come from anywhere: a command-line flag (`--timeout
//! 18446744073709551615s` parses), a task spec's `timeout_ms`. Every
//! deadline in the workspace is computed with [`deadline_after`], which
//! saturates, and every duration flag is parsed with [`parse_duration`],
//! which refuses what no deadline could mean.

use std::time::{Duration, Instant};

/// The longest duration a flag accepts, and the furthest a deadline is
/// put: a hundred years means "never" to any task.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + limit`, or as far as the clock goes when that does not fit (never
/// a panic): a limit beyond [`MAX_DURATION`] is [`MAX_DURATION`].
pub fn deadline_after(now: Instant, limit: Duration) -> Instant {
    let limit = limit.min(MAX_DURATION);
    now.checked_add(limit)
        .or_else(|| now.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(now)
}

/// [`deadline_after`] on tokio's clock.
pub fn tokio_deadline_after(now: tokio::time::Instant, limit: Duration) -> tokio::time::Instant {
    tokio::time::Instant::from_std(deadline_after(now.into_std(), limit))
}

/// A duration as humans write it (`500ms`, `10s`, `2h 5m`), at most
/// [`MAX_DURATION`]; the error says which value and why. For clap's
/// `value_parser`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    if d > MAX_DURATION {
        return Err(format!(
            "the duration {s:?} is too long: at most {} (100 years)",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_saturate() {
        let now = Instant::now();
        assert_eq!(
            deadline_after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(deadline_after(now, Duration::MAX), now + MAX_DURATION);
        assert_eq!(
            deadline_after(now, Duration::from_millis(u64::MAX)),
            now + MAX_DURATION
        );
        let t = tokio::time::Instant::from_std(now);
        assert_eq!(
            tokio_deadline_after(t, Duration::MAX).into_std(),
            now + MAX_DURATION
        );
    }

    #[test]
    fn durations_beyond_the_bound_are_refused_by_name() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        let err = parse_duration("18446744073709551615s").unwrap_err();
        assert!(
            err.contains("\"18446744073709551615s\" is too long"),
            "{err}"
        );
        let err = parse_duration("soon").unwrap_err();
        assert!(err.contains("invalid duration \"soon\""), "{err}");
    }
}
