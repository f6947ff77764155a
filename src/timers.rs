//! Deadlines for the event loop: arm, cancel, and collect the expired ones.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

/// Handle to cancel an armed timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(u64);

#[derive(Debug)]
pub struct Timers<K> {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    armed: HashMap<u64, K>,
    next: u64,
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            armed: HashMap::new(),
            next: 0,
        }
    }
}

impl<K> Timers<K> {
    pub fn arm(&mut self, deadline: Instant, key: K) -> TimerId {
        self.next += 1;
        self.heap.push(Reverse((deadline, self.next)));
        self.armed.insert(self.next, key);
        TimerId(self.next)
    }

    /// Cancelled timers stay in the heap until they come due; they are skipped then.
    pub fn cancel(&mut self, id: TimerId) {
        self.armed.remove(&id.0);
    }

    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, id))) = self.heap.peek().copied() {
            if self.armed.contains_key(&id) {
                return Some(deadline);
            }
            self.heap.pop();
        }
        None
    }

    pub fn pop_expired(&mut self, now: Instant) -> Vec<K> {
        let mut expired = Vec::new();
        while let Some(Reverse((deadline, id))) = self.heap.peek().copied() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            if let Some(key) = self.armed.remove(&id) {
                expired.push(key);
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expired_in_order_and_cancelled_never() {
        let start = Instant::now();
        let mut timers = Timers::default();
        timers.arm(start + Duration::from_secs(2), "b");
        let cancelled = timers.arm(start + Duration::from_secs(1), "cancelled");
        timers.arm(start + Duration::from_millis(500), "a");
        timers.cancel(cancelled);
        assert_eq!(
            timers.next_deadline(),
            Some(start + Duration::from_millis(500))
        );
        assert_eq!(
            timers.pop_expired(start + Duration::from_secs(1)),
            vec!["a"]
        );
        assert_eq!(timers.next_deadline(), Some(start + Duration::from_secs(2)));
        assert_eq!(
            timers.pop_expired(start + Duration::from_secs(3)),
            vec!["b"]
        );
        assert_eq!(timers.next_deadline(), None);
    }
}
