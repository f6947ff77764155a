//! When and how much the fresh pool is refilled, without I/O.
//!
//! - [`FreshTarget`]: how many fresh sandboxes to keep started. `SANDBOX_POOL_SIZE` is the
//!   floor; each request that finds no ready sandbox in the pool raises the target by
//!   [`GROWTH_PER_MISS`], up to `SANDBOX_POOL_MAX`, and every [`SHRINK_AFTER`] without such a
//!   miss lowers it by one again. Bursts of requests thus find the pool as deep as the last
//!   burst needed, and an idle server goes back to its floor (each pooled sandbox holds 20-50
//!   MB).
//! - [`RefillBackoff`]: after a sandbox start failed (runsc broken, the image gone), refills
//!   wait, 100 ms at first, doubling up to 30 s, instead of starting the next sandbox at once
//!   (which made a tight loop of failing `runsc run`s); a start that succeeds ends the wait.

use std::time::{Duration, Instant};

/// How much one miss raises the target. More than one: a request that misses shows a burst
/// under way, and the requests after it in that burst wait for starts too; sandboxes started
/// together are ready together (several starts at once take about as long as one, see
/// `POOL_STARTS_AT_ONCE`), while one more per miss makes each of them wait a whole start.
pub const GROWTH_PER_MISS: usize = 4;

/// A target raised by a miss goes down by one after this long without another.
pub const SHRINK_AFTER: Duration = Duration::from_secs(60);

/// The first wait after a failed start; it doubles with each failure in a row.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);

/// The longest wait between two refill attempts while starts keep failing.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct FreshTarget {
    floor: usize,
    max: usize,
    /// Above the floor, for the recent misses.
    extra: usize,
    /// Since when `extra` has been what it is (raised, or lowered by the last step down).
    since: Option<Instant>,
}

impl FreshTarget {
    /// `floor` sandboxes at least, `max` at most (a floor of 0 means no pool: it never grows).
    pub fn new(floor: usize, max: usize) -> Self {
        let max = if floor == 0 { 0 } else { max.max(floor) };
        FreshTarget {
            floor,
            max,
            extra: 0,
            since: None,
        }
    }

    /// A request found no ready sandbox in the pool.
    pub fn missed(&mut self, now: Instant) {
        self.decay(now);
        self.extra = (self.extra + GROWTH_PER_MISS).min(self.max - self.floor);
        self.since = Some(now);
    }

    /// How many fresh sandboxes to keep now.
    pub fn target(&mut self, now: Instant) -> usize {
        self.decay(now);
        self.floor + self.extra
    }

    fn decay(&mut self, now: Instant) {
        let Some(since) = self.since else {
            return;
        };
        let periods = now.saturating_duration_since(since).as_secs() / SHRINK_AFTER.as_secs();
        let steps = usize::try_from(periods)
            .unwrap_or(usize::MAX)
            .min(self.extra);
        if steps > 0 {
            self.extra -= steps;
            // Whole periods only: what is left of the current one still counts.
            self.since = Some(since + SHRINK_AFTER * steps as u32);
        }
        if self.extra == 0 {
            self.since = None;
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RefillBackoff {
    failures: u32,
    not_before: Option<Instant>,
}

impl RefillBackoff {
    /// A start failed at `now`: the next refill waits.
    pub fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let doublings = self.failures.saturating_sub(1).min(16);
        let wait = BACKOFF_FIRST
            .saturating_mul(1 << doublings)
            .min(BACKOFF_MAX);
        self.not_before = now.checked_add(wait);
    }

    /// A sandbox started: refills go on at once.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.not_before = None;
    }

    pub fn allows(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|not_before| now >= not_before)
    }

    /// When refills may start again, while they wait.
    pub fn not_before(&self) -> Option<Instant> {
        self.not_before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_deepen_the_pool_up_to_the_max_and_quiet_brings_it_back() {
        let start = Instant::now();
        let mut target = FreshTarget::new(2, 5);
        assert_eq!(target.target(start), 2);
        for _ in 0..10 {
            target.missed(start);
        }
        assert_eq!(target.target(start), 5, "capped at the max");
        // One step down per quiet period, never below the floor.
        assert_eq!(
            target.target(start + SHRINK_AFTER - Duration::from_secs(1)),
            5
        );
        assert_eq!(target.target(start + SHRINK_AFTER), 4);
        assert_eq!(
            target.target(start + SHRINK_AFTER * 2 + Duration::from_secs(30)),
            3
        );
        // A miss restarts the quiet period from there.
        let later = start + SHRINK_AFTER * 2 + Duration::from_secs(40);
        target.missed(later);
        assert_eq!(
            target.target(later + SHRINK_AFTER - Duration::from_secs(1)),
            5
        );
        assert_eq!(target.target(later + SHRINK_AFTER * 10), 2);
    }

    #[test]
    fn each_miss_deepens_the_pool_by_several() {
        let now = Instant::now();
        let mut target = FreshTarget::new(2, 100);
        target.missed(now);
        assert_eq!(target.target(now), 2 + GROWTH_PER_MISS);
        target.missed(now);
        assert_eq!(target.target(now), 2 + 2 * GROWTH_PER_MISS);
    }

    #[test]
    fn no_pool_never_grows_and_a_max_below_the_floor_is_the_floor() {
        let now = Instant::now();
        let mut none = FreshTarget::new(0, 8);
        none.missed(now);
        assert_eq!(none.target(now), 0);
        let mut fixed = FreshTarget::new(3, 1);
        fixed.missed(now);
        assert_eq!(fixed.target(now), 3);
    }

    #[test]
    fn failures_in_a_row_double_the_wait_and_a_success_ends_it() {
        let start = Instant::now();
        let mut backoff = RefillBackoff::default();
        assert!(backoff.allows(start));
        let mut waits = Vec::new();
        for _ in 0..12 {
            backoff.failed(start);
            let wait = backoff.not_before().unwrap() - start;
            assert!(!backoff.allows(start));
            assert!(backoff.allows(start + wait));
            waits.push(wait.as_millis());
        }
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]
        );
        backoff.succeeded();
        assert!(backoff.allows(start));
        assert_eq!(backoff.not_before(), None);
        backoff.failed(start);
        assert_eq!(
            backoff.not_before(),
            Some(start + BACKOFF_FIRST),
            "starts over"
        );
    }
}
