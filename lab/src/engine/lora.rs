//! LoRA adapter slots: at most `max_loras` adapters are resident; a slot frees when its adapter
//! has no running sequence, and loading an adapter into it costs time.

/// One resident adapter.
#[derive(Debug, Clone)]
struct Slot {
    adapter: u32,
    running: u32,
    last_used: u64,
    /// Latest step at which a decoding sequence of this adapter is known to finish.
    busy_until_step: u64,
}

/// The engine's adapter slots.
#[derive(Debug, Clone)]
pub struct LoraSlots {
    max: usize,
    slots: Vec<Slot>,
    clock: u64,
}

/// What admitting a sequence of some adapter requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The adapter is resident.
    Resident,
    /// It can be loaded now (a slot is free or idle); the step pays the load time.
    Load,
    /// Every slot holds an adapter with running sequences: the sequence waits.
    Blocked,
}

impl LoraSlots {
    /// `max` slots, all empty.
    pub fn new(max: u32) -> Self {
        Self {
            max: max as usize,
            slots: Vec::new(),
            clock: 0,
        }
    }

    /// How many adapters fit at once.
    pub fn max(&self) -> u32 {
        self.max as u32
    }

    /// Whether `adapter` is resident.
    pub fn is_resident(&self, adapter: u32) -> bool {
        self.slots.iter().any(|s| s.adapter == adapter)
    }

    /// Resident adapters that have running sequences.
    pub fn running(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .filter(|s| s.running > 0)
            .map(|s| s.adapter)
    }

    /// Whether a sequence of `adapter` could start now.
    pub fn check(&self, adapter: u32) -> Admit {
        if self.is_resident(adapter) {
            Admit::Resident
        } else if self.slots.len() < self.max || self.slots.iter().any(|s| s.running == 0) {
            Admit::Load
        } else {
            Admit::Blocked
        }
    }

    /// Starts a sequence of `adapter`; returns whether the adapter had to be loaded.
    /// The caller checked that it is not [`Admit::Blocked`].
    pub fn start(&mut self, adapter: u32) -> bool {
        self.clock += 1;
        let clock = self.clock;
        if let Some(s) = self.slots.iter_mut().find(|s| s.adapter == adapter) {
            s.running += 1;
            s.last_used = clock;
            return false;
        }
        let fresh = Slot {
            adapter,
            running: 1,
            last_used: clock,
            busy_until_step: 0,
        };
        if self.slots.len() < self.max {
            self.slots.push(fresh);
        } else if let Some(idle) = self
            .slots
            .iter_mut()
            .filter(|s| s.running == 0)
            .min_by_key(|s| s.last_used)
        {
            *idle = fresh;
        } else {
            debug_assert!(false, "start() on a blocked adapter");
        }
        true
    }

    /// Notes that a sequence of `adapter` will finish at `step`.
    pub fn note_finish_step(&mut self, adapter: u32, step: u64) {
        if let Some(s) = self.slots.iter_mut().find(|s| s.adapter == adapter) {
            s.busy_until_step = s.busy_until_step.max(step);
        }
    }

    /// A sequence of `adapter` stopped running (finished or preempted).
    pub fn stop(&mut self, adapter: u32) {
        if let Some(s) = self.slots.iter_mut().find(|s| s.adapter == adapter) {
            s.running = s.running.saturating_sub(1);
            if s.running == 0 {
                s.busy_until_step = 0;
            }
        }
    }

    /// The earliest step at which some slot is expected to drain, when all are busy.
    pub fn earliest_drain_step(&self) -> Option<u64> {
        if self.slots.len() < self.max || self.slots.iter().any(|s| s.running == 0) {
            return None;
        }
        self.slots.iter().map(|s| s.busy_until_step).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_slots_block_a_new_adapter_until_one_drains() {
        let mut slots = LoraSlots::new(2);
        assert_eq!(slots.check(1), Admit::Load);
        assert!(slots.start(1));
        assert!(slots.start(2));
        assert!(!slots.start(1), "resident adapters need no load");
        assert_eq!(slots.check(3), Admit::Blocked);
        slots.stop(2);
        assert_eq!(slots.check(3), Admit::Load);
        assert!(slots.start(3));
        assert!(!slots.is_resident(2), "the idle slot was reused");
        assert!(slots.is_resident(1));
    }
}
