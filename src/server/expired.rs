//! Sandboxes their idle timeout deleted recently, so that a client attaching to one learns why
//! it is gone (`SANDBOX_NOT_FOUND` "... was deleted after 300 s without a client
//! (idle_timeout)") instead of a bare "does not exist".
//!
//! Bounded: the last [`MAX_REMEMBERED`] sandboxes, each for [`REMEMBERED_FOR`]. Only a client
//! that presents the sandbox's token hears about it; anyone else gets the answer for an id
//! that never existed, so the memory tells nothing about ids one does not hold the token of.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::session::token;

pub const MAX_REMEMBERED: usize = 1024;
pub const REMEMBERED_FOR: Duration = Duration::from_secs(3600);

struct Expired {
    sandbox_id: String,
    token_sha256: String,
    idle_timeout: Duration,
    when: Instant,
}

#[derive(Default)]
pub struct ExpiredSandboxes {
    /// Oldest first.
    entries: VecDeque<Expired>,
}

impl ExpiredSandboxes {
    /// The idle timeout (`idle_timeout`) deleted `sandbox_id` at `now`.
    pub fn remember(
        &mut self,
        sandbox_id: &str,
        token_sha256: &str,
        idle_timeout: Duration,
        now: Instant,
    ) {
        if self.entries.len() == MAX_REMEMBERED {
            self.entries.pop_front();
        }
        self.entries.push_back(Expired {
            sandbox_id: sandbox_id.to_string(),
            token_sha256: token_sha256.to_string(),
            idle_timeout,
            when: now,
        });
    }

    /// Why an attach to `sandbox_id` with `given_token` finds nothing, if the idle timeout
    /// deleted it within the last hour.
    pub fn why_gone(
        &mut self,
        sandbox_id: &str,
        given_token: &str,
        now: Instant,
    ) -> Option<String> {
        while self
            .entries
            .front()
            .is_some_and(|oldest| now.saturating_duration_since(oldest.when) > REMEMBERED_FOR)
        {
            self.entries.pop_front();
        }
        let expired = self
            .entries
            .iter()
            .rev()
            .find(|entry| entry.sandbox_id == sandbox_id)?;
        token::matches(&expired.token_sha256, given_token).then(|| {
            format!(
                "sandbox {sandbox_id} was deleted after {} s without a client (idle_timeout)",
                expired.idle_timeout.as_secs_f64()
            )
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn told_to_the_token_holder_for_an_hour_and_for_the_last_1024() {
        let now = Instant::now();
        let mut expired = ExpiredSandboxes::default();
        expired.remember("abc", &token::hash("t"), Duration::from_secs(300), now);
        assert_eq!(
            expired.why_gone("abc", "t", now).as_deref(),
            Some("sandbox abc was deleted after 300 s without a client (idle_timeout)")
        );
        assert_eq!(
            expired.why_gone("abc", "wrong", now),
            None,
            "no hint without the token"
        );
        assert_eq!(expired.why_gone("other", "t", now), None);
        let later = now + REMEMBERED_FOR + Duration::from_secs(1);
        assert_eq!(
            expired.why_gone("abc", "t", later),
            None,
            "forgotten after an hour"
        );
        assert_eq!(expired.len(), 0);

        for index in 0..=MAX_REMEMBERED {
            let id = format!("id{index}");
            expired.remember(&id, &token::hash("t"), Duration::from_millis(1500), now);
        }
        assert_eq!(expired.len(), MAX_REMEMBERED);
        assert_eq!(expired.why_gone("id0", "t", now), None, "the oldest went");
        assert_eq!(
            expired.why_gone("id1024", "t", now).as_deref(),
            Some("sandbox id1024 was deleted after 1.5 s without a client (idle_timeout)")
        );
    }
}
