//! Back-off from a failing IdP. After [`FAILURES_TO_OPEN`] requests in a row that found it
//! unavailable (timeouts, refused connections, 5xx, failed discovery), callers fail fast for an
//! interval that starts at [`FIRST_INTERVAL`] and doubles with each failed probe up to
//! [`MAX_INTERVAL`]; when it has passed, one caller's request goes through as a probe while the
//! others still fail fast, and a probe that the IdP answers ends the back-off. An IdP that
//! answers, even to refuse (`invalid_grant`, a scope), is available. So a failing IdP sees a
//! trickle of requests, not one per caller, and nothing reaches it that could consume a refresh
//! token meanwhile: stored tokens stay as they are.

use std::time::Duration;

use tokio::time::Instant;

/// Consecutive failed requests that start a back-off.
pub const FAILURES_TO_OPEN: u32 = 3;
/// The first interval callers fail fast for.
pub const FIRST_INTERVAL: Duration = Duration::from_secs(1);
/// The longest interval, reached after a few failed probes.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// Whether a request may go to the IdP now.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Go,
    /// The first request after an interval: its outcome decides.
    Probe,
    /// Fail fast; the back-off ends no sooner than `retry_in` from now.
    Refuse {
        retry_in: Duration,
        failures: u32,
    },
}

/// One IdP's back-off state.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
    /// The interval in force; zero while the IdP is not backed off from.
    interval: Duration,
    until: Option<Instant>,
    probing: bool,
}

impl Backoff {
    pub fn admit(&mut self, now: Instant) -> Admission {
        let Some(until) = self.until else {
            return Admission::Go;
        };
        if now >= until && !self.probing {
            self.probing = true;
            return Admission::Probe;
        }
        Admission::Refuse {
            retry_in: until.saturating_duration_since(now),
            failures: self.failures,
        }
    }

    /// The outcome of an admitted request: whether the IdP was available.
    pub fn record(&mut self, available: bool, now: Instant) {
        if available {
            *self = Self::default();
            return;
        }
        self.failures = self.failures.saturating_add(1);
        if self.probing || self.failures >= FAILURES_TO_OPEN {
            self.interval = if self.interval.is_zero() {
                FIRST_INTERVAL
            } else {
                (self.interval * 2).min(MAX_INTERVAL)
            };
            self.until = Some(now + self.interval);
            self.probing = false;
        }
    }

    /// An admitted request ended without an outcome (its caller went away): a probe's place is
    /// given to the next caller.
    pub fn abandon(&mut self) {
        self.probing = false;
    }

    /// The interval callers fail fast for now; zero when the IdP is not backed off from.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing(backoff: &mut Backoff, now: Instant, times: u32) {
        for _ in 0..times {
            assert_eq!(backoff.admit(now), Admission::Go);
            backoff.record(false, now);
        }
    }

    #[test]
    fn a_few_failures_in_a_row_start_a_back_off_and_an_answer_resets_the_count() {
        let now = Instant::now();
        let mut backoff = Backoff::default();
        failing(&mut backoff, now, FAILURES_TO_OPEN - 1);
        assert_eq!(backoff.admit(now), Admission::Go);
        backoff.record(true, now);
        failing(&mut backoff, now, FAILURES_TO_OPEN - 1);
        assert_eq!(backoff.admit(now), Admission::Go, "the count started again");
        backoff.record(false, now);
        assert_eq!(
            backoff.admit(now),
            Admission::Refuse {
                retry_in: FIRST_INTERVAL,
                failures: FAILURES_TO_OPEN
            }
        );
        assert_eq!(backoff.interval(), FIRST_INTERVAL);
    }

    #[test]
    fn one_probe_at_a_time_and_each_failed_probe_doubles_the_interval_up_to_the_maximum() {
        let mut now = Instant::now();
        let mut backoff = Backoff::default();
        failing(&mut backoff, now, FAILURES_TO_OPEN);
        let mut expected = FIRST_INTERVAL;
        for _ in 0..10 {
            now += expected;
            assert_eq!(backoff.admit(now), Admission::Probe);
            assert!(
                matches!(backoff.admit(now), Admission::Refuse { .. }),
                "a second caller while the probe runs"
            );
            backoff.record(false, now);
            expected = (expected * 2).min(MAX_INTERVAL);
            assert_eq!(backoff.interval(), expected);
        }
        assert_eq!(backoff.interval(), MAX_INTERVAL);
        now += MAX_INTERVAL;
        assert_eq!(backoff.admit(now), Admission::Probe);
        backoff.record(true, now);
        assert_eq!(backoff.admit(now), Admission::Go);
        assert_eq!(backoff.interval(), Duration::ZERO);
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_caller_probe() {
        let mut now = Instant::now();
        let mut backoff = Backoff::default();
        failing(&mut backoff, now, FAILURES_TO_OPEN);
        now += FIRST_INTERVAL;
        assert_eq!(backoff.admit(now), Admission::Probe);
        backoff.abandon();
        assert_eq!(backoff.admit(now), Admission::Probe);
    }
}
