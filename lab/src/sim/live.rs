//! The requests in flight, in a slab: a request's key is its slot, and the engine echoes the key
//! as the sequence id, so each of its events finds it with one index.
//!
//! A 1,000-pod run keeps over 100,000 requests in flight and looks each up when its first token
//! comes out and when it finishes; in a hash map keyed by request id those lookups were cache
//! misses twice over (control bytes, then the entry). Slots freed last are reused first, so a new
//! request usually lands in memory that was just touched.

/// Values by key, keys reused.
#[derive(Debug)]
pub(super) struct Live<T> {
    slots: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Default for Live<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Live<T> {
    /// Stores `value` and returns its key.
    pub(super) fn insert(&mut self, value: T) -> u64 {
        self.len += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(value);
                slot
            }
            None => {
                self.slots.push(Some(value));
                self.slots.len() - 1
            }
        };
        slot as u64
    }

    /// The value under `key`, if there is one.
    pub(super) fn get_mut(&mut self, key: u64) -> Option<&mut T> {
        self.slots.get_mut(usize::try_from(key).ok()?)?.as_mut()
    }

    /// Takes the value under `key` out; its key becomes free.
    pub(super) fn remove(&mut self, key: u64) -> Option<T> {
        let slot = usize::try_from(key).ok()?;
        let value = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        self.len -= 1;
        Some(value)
    }

    /// Whether nothing is in flight.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes every value out.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.len = 0;
        self.free.clear();
        self.slots.drain(..).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_find_their_values_and_are_reused_once_free() {
        let mut live = Live::default();
        let a = live.insert("a");
        let b = live.insert("b");
        assert_ne!(a, b);
        assert_eq!(live.get_mut(b).copied(), Some("b"));
        assert_eq!(live.remove(a), Some("a"));
        assert_eq!(live.remove(a), None, "removed once");
        assert_eq!(live.get_mut(a), None);
        assert_eq!(live.get_mut(99), None);
        let c = live.insert("c");
        assert_eq!(c, a, "the freed key is reused");
        assert!(!live.is_empty());
        let mut rest: Vec<_> = live.drain().collect();
        rest.sort_unstable();
        assert_eq!(rest, ["b", "c"]);
        assert!(live.is_empty());
    }
}
