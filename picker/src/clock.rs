//! The picker's monotonic clock: every `now` the table and the scheduler are given.

use std::time::{Duration, Instant};

/// The picker's monotonic clock: time since the process (or state) started.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    pub fn start() -> Self {
        Clock(Instant::now())
    }

    /// Time since start: the `now` passed to the table and the scheduler.
    pub fn now(&self) -> Duration {
        self.0.elapsed()
    }
}
