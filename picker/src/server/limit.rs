//! The cap on the connections one listener holds at once. At the cap the listener stops accepting
//! until a connection closes: new clients wait in the kernel's listen backlog (and get in, or time
//! out there) instead of each costing the picker a file descriptor, a task and buffers. Accepting
//! and closing them at once, as the agent does, would turn a busy moment into errors for clients
//! that would have been served a moment later.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Room for one connection under the cap, given back when dropped (when the connection closes).
pub(crate) type Slot = OwnedSemaphorePermit;

/// A listener's connection cap.
pub(crate) struct ConnectionLimit {
    /// `HTTP` or `gRPC`, for the log.
    listener: &'static str,
    cap: usize,
    slots: Arc<Semaphore>,
    /// Whether this listener is at its cap: set by the first wait, cleared when room is there
    /// without waiting, so each episode is logged once however long it lasts.
    at_cap: bool,
}

impl ConnectionLimit {
    /// A cap of `cap` connections (at least one) on `listener`.
    pub(crate) fn new(listener: &'static str, cap: usize) -> Self {
        let cap = cap.clamp(1, Semaphore::MAX_PERMITS);
        ConnectionLimit {
            listener,
            cap,
            slots: Arc::new(Semaphore::new(cap)),
            at_cap: false,
        }
    }

    /// Waits for room for one more connection. Cancel-safe: a slot granted to a dropped wait
    /// goes back to the cap.
    pub(crate) async fn admit(&mut self) -> Slot {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            if std::mem::take(&mut self.at_cap) {
                tracing::info!(
                    listener = self.listener,
                    cap = self.cap,
                    "below the connection cap again: accepting"
                );
            }
            return slot;
        }
        if !self.at_cap {
            self.at_cap = true;
            tracing::warn!(
                listener = self.listener,
                cap = self.cap,
                "at the connection cap (--max-connections): not accepting until a connection \
                 closes; new clients wait in the listen backlog"
            );
        }
        // The semaphore lives as long as `self` and is never closed.
        match self.slots.clone().acquire_owned().await {
            Ok(slot) => slot,
            Err(_) => unreachable!("the connection cap's semaphore is never closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[test]
    fn at_the_cap_admit_waits_until_a_slot_is_given_back() {
        let mut limit = ConnectionLimit::new("HTTP", 2);
        let first = limit.admit().now_or_never().expect("room for the first");
        let second = limit.admit().now_or_never().expect("room for the second");
        assert!(!limit.at_cap);
        assert!(limit.admit().now_or_never().is_none(), "a third got in");
        assert!(limit.at_cap, "the episode began");
        drop(first);
        let third = limit.admit().now_or_never().expect("the closed one's room");
        assert!(!limit.at_cap, "room without waiting ends the episode");
        assert!(limit.admit().now_or_never().is_none());
        drop((second, third));
    }

    #[test]
    fn a_cap_of_zero_still_admits_one() {
        let mut limit = ConnectionLimit::new("gRPC", 0);
        let slot = limit.admit().now_or_never();
        assert!(slot.is_some());
        assert!(limit.admit().now_or_never().is_none());
    }
}
