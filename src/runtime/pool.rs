//! Warm pools and the sandbox slots they share with real work, without I/O.
//!
//! The runtime keeps spare sandboxes started ahead of demand: the fresh pool, and one small pool
//! per filesystem snapshot used recently. They hold slots of `SANDBOX_MAX_SANDBOXES` like every
//! other sandbox, so they must never keep real work (an `/execute`, a WebSocket create, a create
//! from a snapshot, a restore on attach) out. The rules:
//!
//! - Real work starts at once in a free slot. Without one, it waits for a slot that is being
//!   freed (a sandbox being deleted that no other waiting request has claimed); without that, a
//!   pooled sandbox is given up for it (snapshot pools first, least recently used first, then the
//!   fresh pool, oldest first) and it waits for that slot. It is refused only when every slot is
//!   held by real work that is not ending.
//! - Why wait rather than start beside the sandbox being deleted: `runsc delete` takes ~50 ms,
//!   during which the old sandbox still exists. Waiting keeps `SANDBOX_MAX_SANDBOXES` a hard limit
//!   on live runsc sandboxes, at the price of that delay for requests made at full capacity.
//! - Pools refill only into free slots: a slot claimed by a waiting request is not free, so a
//!   refill never takes the slot that real work was promised.
//! - At most `SANDBOX_SNAPSHOT_POOLS_MAX` snapshot pools exist; using the snapshot of one more
//!   drops the least recently used pool and its sandboxes.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use super::SandboxKey;

/// How the slots are used at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slots {
    /// `SANDBOX_MAX_SANDBOXES`.
    pub max: usize,
    /// Sandboxes that exist as runsc sandboxes (starting, ready, saved or being deleted).
    pub live: usize,
    /// Live sandboxes being deleted: each frees its slot soon.
    pub releasing: usize,
    /// Requests admitted to wait for a slot; each has claimed one that is being freed.
    pub waiting: usize,
}

impl Slots {
    /// Slots nobody holds or has claimed: what a pool refill may use.
    pub fn free(&self) -> usize {
        self.max.saturating_sub(self.live + self.waiting)
    }

    /// Whether the first waiting request can start now.
    pub fn can_grant(&self) -> bool {
        self.live < self.max
    }
}

/// What to do with a request for a new sandbox by real work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A slot is free: start now.
    Start,
    /// Wait for the slot of a sandbox that is already being deleted.
    Wait,
    /// Delete this pooled sandbox and wait for its slot.
    Evict(SandboxKey),
    /// Every slot is held by real work.
    Refuse,
}

/// Whether a pooled sandbox can be handed out, and how soon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Still starting (or restoring): usable once its agent says hello.
    Starting,
    /// Dying or gone: never hand it out.
    Unusable,
}

struct SnapshotPool {
    image: PathBuf,
    /// Oldest first.
    sandboxes: VecDeque<SandboxKey>,
}

/// The unowned sandboxes kept for the next requests.
pub struct Pools {
    /// Oldest first.
    fresh: VecDeque<SandboxKey>,
    /// Least recently used first.
    snapshots: Vec<SnapshotPool>,
    max_snapshot_pools: usize,
}

impl Pools {
    /// Pools with room for `max_snapshot_pools` snapshot pools (0: none is ever made).
    pub fn new(max_snapshot_pools: usize) -> Self {
        Pools {
            fresh: VecDeque::new(),
            snapshots: Vec::new(),
            max_snapshot_pools,
        }
    }

    /// Decide how real work gets a slot (see the module documentation).
    pub fn admit(&self, slots: Slots) -> Admission {
        if slots.free() > 0 {
            return Admission::Start;
        }
        if slots.releasing > slots.waiting {
            return Admission::Wait;
        }
        match self.eviction_candidate() {
            Some(key) => Admission::Evict(key),
            None => Admission::Refuse,
        }
    }

    /// The pooled sandbox to give up for real work: the oldest of the least recently used
    /// snapshot pool that has one, else the oldest of the fresh pool.
    pub fn eviction_candidate(&self) -> Option<SandboxKey> {
        self.snapshots
            .iter()
            .find_map(|pool| pool.sandboxes.front().copied())
            .or_else(|| self.fresh.front().copied())
    }

    pub fn add_fresh(&mut self, key: SandboxKey) {
        self.fresh.push_back(key);
    }

    pub fn is_fresh(&self, key: SandboxKey) -> bool {
        self.fresh.contains(&key)
    }

    pub fn fresh_len(&self) -> usize {
        self.fresh.len()
    }

    pub fn fresh(&self) -> impl Iterator<Item = SandboxKey> + '_ {
        self.fresh.iter().copied()
    }

    /// Take a fresh pooled sandbox: a ready one first, else the oldest still starting.
    pub fn take_fresh(
        &mut self,
        readiness: impl Fn(SandboxKey) -> Readiness,
    ) -> Option<SandboxKey> {
        take(&mut self.fresh, readiness)
    }

    /// A create from the snapshot `image` is asked for: its pool becomes the most recently used,
    /// made if need be. Making one beyond the cap drops the least recently used pool: the
    /// sandboxes returned must be deleted.
    pub fn use_snapshot(&mut self, image: &Path) -> Vec<SandboxKey> {
        if let Some(position) = self.position(image) {
            let pool = self.snapshots.remove(position);
            self.snapshots.push(pool);
            return Vec::new();
        }
        if self.max_snapshot_pools == 0 {
            return Vec::new();
        }
        let mut dropped = Vec::new();
        while self.snapshots.len() >= self.max_snapshot_pools {
            dropped.extend(self.snapshots.remove(0).sandboxes);
        }
        self.snapshots.push(SnapshotPool {
            image: image.to_path_buf(),
            sandboxes: VecDeque::new(),
        });
        dropped
    }

    /// Take a sandbox pooled for `image`: a ready one first, else the oldest still starting.
    pub fn take_snapshot(
        &mut self,
        image: &Path,
        readiness: impl Fn(SandboxKey) -> Readiness,
    ) -> Option<SandboxKey> {
        let position = self.position(image)?;
        take(&mut self.snapshots[position].sandboxes, readiness)
    }

    /// Pool `key` for `image`. False if `image` has no pool (any more): the caller deletes it.
    pub fn add_snapshot(&mut self, image: &Path, key: SandboxKey) -> bool {
        match self.position(image) {
            Some(position) => {
                self.snapshots[position].sandboxes.push_back(key);
                true
            }
            None => false,
        }
    }

    pub fn snapshot_len(&self, image: &Path) -> usize {
        self.position(image)
            .map_or(0, |position| self.snapshots[position].sandboxes.len())
    }

    /// The images that have a pool, most recently used first (the order refills follow).
    pub fn images(&self) -> Vec<PathBuf> {
        self.snapshots
            .iter()
            .rev()
            .map(|pool| pool.image.clone())
            .collect()
    }

    pub fn snapshot_pools(&self) -> usize {
        self.snapshots.len()
    }

    pub fn snapshot_sandboxes(&self) -> impl Iterator<Item = SandboxKey> + '_ {
        self.snapshots
            .iter()
            .flat_map(|pool| pool.sandboxes.iter().copied())
    }

    /// Drop the pools of the images `gone` names (the snapshot was replaced or deleted); returns
    /// their sandboxes, to be deleted.
    pub fn drop_pools(&mut self, gone: impl Fn(&Path) -> bool) -> Vec<SandboxKey> {
        let mut dropped = Vec::new();
        self.snapshots.retain_mut(|pool| {
            if gone(&pool.image) {
                dropped.extend(pool.sandboxes.drain(..));
                false
            } else {
                true
            }
        });
        dropped
    }

    /// Forget `key` wherever it is pooled (it is being handed out or deleted).
    pub fn remove(&mut self, key: SandboxKey) -> bool {
        let mut found = remove_key(&mut self.fresh, key);
        for pool in &mut self.snapshots {
            found |= remove_key(&mut pool.sandboxes, key);
        }
        found
    }

    /// Forget everything (shutdown: every sandbox is being deleted).
    pub fn clear(&mut self) {
        self.fresh.clear();
        self.snapshots.clear();
    }

    fn position(&self, image: &Path) -> Option<usize> {
        self.snapshots.iter().position(|pool| pool.image == image)
    }
}

fn take(
    pool: &mut VecDeque<SandboxKey>,
    readiness: impl Fn(SandboxKey) -> Readiness,
) -> Option<SandboxKey> {
    let ready = pool
        .iter()
        .position(|key| readiness(*key) == Readiness::Ready);
    let starting = || {
        pool.iter()
            .position(|key| readiness(*key) == Readiness::Starting)
    };
    let position = ready.or_else(starting)?;
    pool.remove(position)
}

fn remove_key(pool: &mut VecDeque<SandboxKey>, key: SandboxKey) -> bool {
    let before = pool.len();
    pool.retain(|pooled| *pooled != key);
    pool.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max: usize, live: usize, releasing: usize, waiting: usize) -> Slots {
        Slots {
            max,
            live,
            releasing,
            waiting,
        }
    }

    /// Keys as the tests write them.
    fn k(key: u64) -> SandboxKey {
        SandboxKey(key)
    }

    fn keys(list: &[u64]) -> Vec<SandboxKey> {
        list.iter().copied().map(SandboxKey).collect()
    }

    fn all_ready(_: SandboxKey) -> Readiness {
        Readiness::Ready
    }

    /// Six snapshot pools of one sandbox each fill six slots (the case of issue 10).
    fn six_snapshot_pools() -> Pools {
        let mut pools = Pools::new(6);
        for n in 1..=6 {
            let image = PathBuf::from(format!("/s/{n}"));
            assert!(pools.use_snapshot(&image).is_empty());
            assert!(pools.add_snapshot(&image, k(n)));
        }
        pools
    }

    #[test]
    fn a_free_slot_starts_real_work_at_once() {
        let pools = six_snapshot_pools();
        assert_eq!(pools.admit(slots(8, 6, 0, 0)), Admission::Start);
    }

    #[test]
    fn full_of_pooled_sandboxes_real_work_evicts_the_least_recently_used_snapshot_pool_first() {
        let mut pools = six_snapshot_pools();
        pools.add_fresh(k(7));
        // Snapshot 3 used again: it is now the most recently used.
        pools.use_snapshot(Path::new("/s/3"));
        let mut evicted = Vec::new();
        for waiting in 0..7 {
            // Every earlier eviction is still being deleted and claimed by its request.
            let admission = pools.admit(slots(7, 7, waiting, waiting));
            let Admission::Evict(key) = admission else {
                panic!("request {waiting}: {admission:?}");
            };
            assert!(pools.remove(key));
            evicted.push(key);
        }
        assert_eq!(evicted, keys(&[1, 2, 4, 5, 6, 3, 7]));
        assert_eq!(pools.admit(slots(7, 7, 7, 7)), Admission::Refuse);
    }

    #[test]
    fn a_sandbox_already_being_deleted_is_waited_for_before_evicting() {
        let pools = six_snapshot_pools();
        // One real sandbox is being deleted and nobody waits for its slot.
        assert_eq!(pools.admit(slots(6, 6, 1, 0)), Admission::Wait);
        // Its slot is claimed: the next request needs a pooled sandbox.
        assert_eq!(pools.admit(slots(6, 6, 1, 1)), Admission::Evict(k(1)));
    }

    #[test]
    fn real_work_is_refused_only_when_every_slot_holds_real_work() {
        let pools = Pools::new(4);
        assert_eq!(pools.admit(slots(2, 2, 0, 0)), Admission::Refuse);
        assert_eq!(pools.admit(slots(0, 0, 0, 0)), Admission::Refuse);
    }

    #[test]
    fn refills_never_use_a_slot_claimed_by_a_waiting_request() {
        // An evicted sandbox was deleted (live dropped) but its waiter has not started yet.
        let state = slots(6, 5, 0, 1);
        assert_eq!(state.free(), 0);
        assert!(state.can_grant());
        // Once the waiter runs, the slots are full again.
        assert!(!slots(6, 6, 0, 0).can_grant());
        assert_eq!(slots(6, 4, 0, 1).free(), 1);
        // More live than the limit (never expected) does not underflow.
        assert_eq!(slots(2, 3, 0, 0).free(), 0);
    }

    #[test]
    fn the_fresh_pool_is_given_up_last_and_oldest_first() {
        let mut pools = Pools::new(2);
        pools.add_fresh(k(10));
        pools.add_fresh(k(11));
        pools.use_snapshot(Path::new("/s/a"));
        assert_eq!(pools.eviction_candidate(), Some(k(10)));
        pools.add_snapshot(Path::new("/s/a"), k(12));
        assert_eq!(pools.eviction_candidate(), Some(k(12)));
        pools.remove(k(12));
        pools.remove(k(10));
        assert_eq!(pools.eviction_candidate(), Some(k(11)));
    }

    #[test]
    fn the_number_of_snapshot_pools_is_capped_least_recently_used_first() {
        let mut pools = Pools::new(2);
        for (key, name) in [(1, "/s/a"), (2, "/s/b")] {
            assert!(pools.use_snapshot(Path::new(name)).is_empty());
            pools.add_snapshot(Path::new(name), k(key));
        }
        // a is used again, so b is now the least recently used.
        assert!(pools.use_snapshot(Path::new("/s/a")).is_empty());
        assert_eq!(pools.use_snapshot(Path::new("/s/c")), keys(&[2]));
        assert_eq!(pools.snapshot_pools(), 2);
        assert_eq!(
            pools.images(),
            vec![PathBuf::from("/s/c"), PathBuf::from("/s/a")]
        );
        // A refill for the dropped image finds no pool: its sandbox must be deleted.
        assert!(!pools.add_snapshot(Path::new("/s/b"), k(3)));
        assert_eq!(pools.use_snapshot(Path::new("/s/d")), keys(&[1]));
        assert_eq!(pools.snapshot_pools(), 2);
    }

    #[test]
    fn no_snapshot_pool_with_a_cap_of_zero() {
        let mut pools = Pools::new(0);
        assert!(pools.use_snapshot(Path::new("/s/a")).is_empty());
        assert_eq!(pools.snapshot_pools(), 0);
        assert!(!pools.add_snapshot(Path::new("/s/a"), k(1)));
        assert_eq!(pools.take_snapshot(Path::new("/s/a"), all_ready), None);
    }

    #[test]
    fn taking_prefers_ready_sandboxes_and_never_hands_out_dying_ones() {
        let mut pools = Pools::new(1);
        for key in [1, 2, 3] {
            pools.add_fresh(k(key));
        }
        let readiness = |key: SandboxKey| match key.0 {
            1 => Readiness::Unusable,
            2 => Readiness::Starting,
            _ => Readiness::Ready,
        };
        assert_eq!(pools.take_fresh(readiness), Some(k(3)));
        assert_eq!(pools.take_fresh(readiness), Some(k(2)));
        assert_eq!(pools.take_fresh(readiness), None);
        assert_eq!(pools.fresh_len(), 1);

        let image = Path::new("/s/a");
        pools.use_snapshot(image);
        pools.add_snapshot(image, k(4));
        assert_eq!(pools.take_snapshot(Path::new("/s/other"), all_ready), None);
        assert_eq!(pools.take_snapshot(image, all_ready), Some(k(4)));
        assert_eq!(pools.snapshot_len(image), 0);
    }

    #[test]
    fn pools_of_gone_images_are_dropped_with_their_sandboxes() {
        let mut pools = Pools::new(3);
        for (key, name) in [(1, "/s/a"), (2, "/s/b")] {
            pools.use_snapshot(Path::new(name));
            pools.add_snapshot(Path::new(name), k(key));
        }
        assert_eq!(
            pools.drop_pools(|image| image == Path::new("/s/a")),
            keys(&[1])
        );
        assert_eq!(pools.images(), vec![PathBuf::from("/s/b")]);
        assert_eq!(pools.snapshot_sandboxes().collect::<Vec<_>>(), keys(&[2]));
        pools.clear();
        assert_eq!(pools.snapshot_pools(), 0);
        assert_eq!(pools.fresh_len(), 0);
    }
}
