//! Readiness polling with a deadline. Tests wait for a condition, never for a fixed time.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// The first poll interval; it doubles after every failed probe up to [`MAX_INTERVAL`].
const FIRST_INTERVAL: Duration = Duration::from_millis(5);
/// The longest pause between two probes.
const MAX_INTERVAL: Duration = Duration::from_millis(100);

/// Why a wait ended without the condition becoming true.
#[derive(Debug)]
pub struct WaitTimeout {
    /// What was waited for, as the caller named it.
    pub what: String,
    /// How long it waited.
    pub waited: Duration,
    /// How many times the probe ran.
    pub attempts: u32,
    /// The probe's last error.
    pub last_error: String,
}

impl Display for WaitTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "timed out after {:?} ({} attempts) waiting for {}: last error: {}",
            self.waited, self.attempts, self.what, self.last_error
        )
    }
}

impl std::error::Error for WaitTimeout {}

/// Calls `probe` until it returns `Ok`, or until `timeout` has passed; the error then names `what`
/// and the probe's last error. The probe runs at least once.
pub fn wait_until<T, E: Display>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, E>,
) -> Result<T, WaitTimeout> {
    let start = Instant::now();
    let mut interval = FIRST_INTERVAL;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = match probe() {
            Ok(value) => return Ok(value),
            Err(error) => error.to_string(),
        };
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(WaitTimeout {
                what: what.to_owned(),
                waited,
                attempts,
                last_error: error,
            });
        }
        std::thread::sleep(interval.min(timeout - waited));
        interval = (interval * 2).min(MAX_INTERVAL);
    }
}

/// [`wait_until`] for async probes; pauses with `tokio::time::sleep` so the runtime keeps serving
/// the in-process servers the probe talks to.
pub async fn wait_until_async<T, E: Display, F: Future<Output = Result<T, E>>>(
    timeout: Duration,
    what: &str,
    probe: impl FnMut() -> F,
) -> Result<T, WaitTimeout> {
    poll_async(timeout, what, FIRST_INTERVAL, MAX_INTERVAL, probe).await
}

/// [`wait_until_async`] probing every `period`, without backing off: for tests that measure when
/// a condition became true, to within `period`.
pub async fn wait_until_async_every<T, E: Display, F: Future<Output = Result<T, E>>>(
    timeout: Duration,
    period: Duration,
    what: &str,
    probe: impl FnMut() -> F,
) -> Result<T, WaitTimeout> {
    poll_async(timeout, what, period, period, probe).await
}

async fn poll_async<T, E: Display, F: Future<Output = Result<T, E>>>(
    timeout: Duration,
    what: &str,
    first_interval: Duration,
    max_interval: Duration,
    mut probe: impl FnMut() -> F,
) -> Result<T, WaitTimeout> {
    let start = Instant::now();
    let mut interval = first_interval;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = match probe().await {
            Ok(value) => return Ok(value),
            Err(error) => error.to_string(),
        };
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(WaitTimeout {
                what: what.to_owned(),
                waited,
                attempts,
                last_error: error,
            });
        }
        tokio::time::sleep(interval.min(timeout - waited)).await;
        interval = (interval * 2).min(max_interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_once_the_probe_succeeds() {
        let mut calls = 0;
        let value = wait_until(Duration::from_secs(5), "the third call", || {
            calls += 1;
            if calls == 3 {
                Ok(calls)
            } else {
                Err(format!("call {calls}"))
            }
        })
        .unwrap();
        assert_eq!(value, 3);
    }

    #[test]
    fn times_out_naming_what_and_the_last_error() {
        let err = wait_until(Duration::from_millis(30), "a door to open", || {
            Err::<(), _>("still locked")
        })
        .unwrap_err();
        assert!(err.attempts >= 2, "{err}");
        let text = err.to_string();
        assert!(text.contains("a door to open"), "{text}");
        assert!(text.contains("still locked"), "{text}");
    }

    #[test]
    fn probes_once_even_with_a_zero_timeout() {
        let value = wait_until(Duration::ZERO, "immediate", || Ok::<_, String>(7)).unwrap();
        assert_eq!(value, 7);
    }

    #[tokio::test]
    async fn fixed_period_wait_probes_at_that_period() {
        let started = Instant::now();
        let mut calls = 0u32;
        let err = wait_until_async_every(
            Duration::from_millis(100),
            Duration::from_millis(10),
            "never",
            || {
                calls += 1;
                std::future::ready(Err::<(), _>("no"))
            },
        )
        .await
        .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(100));
        // Backing off from 5 ms would give about six probes in 100 ms; every 10 ms gives ten.
        assert!(calls >= 9, "{calls} probes: {err}");
    }

    #[tokio::test]
    async fn async_wait_polls_until_ready() {
        let ready_at = Instant::now() + Duration::from_millis(20);
        let waited = wait_until_async(Duration::from_secs(5), "a deadline", || async {
            if Instant::now() >= ready_at {
                Ok(())
            } else {
                Err("not yet")
            }
        })
        .await;
        assert!(waited.is_ok());
    }
}
