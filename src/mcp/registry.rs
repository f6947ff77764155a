//! What the endpoint remembers between requests: the MCP sessions of the handshake revision
//! (by their `Mcp-Session-Id`) and the sandboxes MCP calls created (by their session machine).
//!
//! Both are bounded: sessions by a count, and everything by the idle timeout. A sandbox belongs
//! to the API key that created it (its SHA-256; `None` without keys): a call with another key
//! does not find it. A handshake session owns at most one sandbox, deleted with the session.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::session::token;
use crate::session::SessionId;

/// One handshake-revision session.
#[derive(Debug, Clone)]
pub struct McpSession {
    pub version: &'static str,
    pub owner: Option<String>,
    /// Its sandbox, once the first tool call created it.
    pub sandbox: Option<SessionId>,
    pub last_active: Instant,
}

/// A sandbox an MCP call created.
#[derive(Debug, Clone)]
pub struct McpSandbox {
    pub sandbox_id: String,
    pub owner: Option<String>,
    /// The handshake session it belongs to (`None`: created by a single-exchange call).
    pub mcp_session: Option<String>,
    /// Tool calls running on it (it is not idle while one runs).
    pub calls: usize,
    pub last_used: Instant,
    /// Being deleted: no new call finds it.
    pub closing: bool,
}

/// Whether two owners (API key digests) are the same, in constant time.
fn same_owner(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => token::same(a, b),
        _ => false,
    }
}

#[derive(Debug)]
pub struct Registry {
    sessions: HashMap<String, McpSession>,
    sandboxes: HashMap<SessionId, McpSandbox>,
    max_sessions: usize,
    idle_timeout: Duration,
}

/// What the idle timeout ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expired {
    pub sessions: Vec<String>,
    /// Sandboxes to delete.
    pub sandboxes: Vec<SessionId>,
}

impl Registry {
    pub fn new(max_sessions: usize, idle_timeout: Duration) -> Self {
        Registry {
            sessions: HashMap::new(),
            sandboxes: HashMap::new(),
            max_sessions,
            idle_timeout,
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// A new session, unless the limit is reached (the message says so).
    pub fn open_session(
        &mut self,
        id: String,
        version: &'static str,
        owner: Option<String>,
        now: Instant,
    ) -> Result<(), String> {
        if self.sessions.len() >= self.max_sessions {
            return Err(format!(
                "the server is at its limit of {} MCP sessions; retry shortly",
                self.max_sessions
            ));
        }
        self.sessions.insert(
            id,
            McpSession {
                version,
                owner,
                sandbox: None,
                last_active: now,
            },
        );
        Ok(())
    }

    /// The session `id` as the holder of `owner` sees it (another key's session is not found).
    pub fn session(
        &mut self,
        id: &str,
        owner: Option<&str>,
        now: Instant,
    ) -> Option<&mut McpSession> {
        let session = self.sessions.get_mut(id)?;
        if !same_owner(session.owner.as_deref(), owner) {
            return None;
        }
        session.last_active = now;
        Some(session)
    }

    /// End a session: its sandbox (if any) is to be deleted.
    pub fn close_session(&mut self, id: &str) -> Option<SessionId> {
        let session = self.sessions.remove(id)?;
        session.sandbox
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn sandbox_count(&self) -> usize {
        self.sandboxes.len()
    }

    /// Record a sandbox being created for `mcp_session` (or for nobody).
    pub fn add_sandbox(
        &mut self,
        sandbox: SessionId,
        sandbox_id: String,
        owner: Option<String>,
        mcp_session: Option<String>,
        now: Instant,
    ) {
        if let Some(session) = mcp_session
            .as_ref()
            .and_then(|id| self.sessions.get_mut(id))
        {
            session.sandbox = Some(sandbox);
        }
        self.sandboxes.insert(
            sandbox,
            McpSandbox {
                sandbox_id,
                owner,
                mcp_session,
                calls: 0,
                last_used: now,
                closing: false,
            },
        );
    }

    /// The sandbox is being deleted: calls no longer find it, and its session (if any) gets a
    /// new one at its next call.
    pub fn close_sandbox(&mut self, sandbox: SessionId) {
        let Some(entry) = self.sandboxes.get_mut(&sandbox) else {
            return;
        };
        entry.closing = true;
        if let Some(session) = entry
            .mcp_session
            .as_ref()
            .and_then(|id| self.sessions.get_mut(id))
        {
            if session.sandbox == Some(sandbox) {
                session.sandbox = None;
            }
        }
    }

    /// The sandbox with public id `sandbox_id`, if `owner` created it.
    pub fn find_sandbox(&self, sandbox_id: &str, owner: Option<&str>) -> Option<SessionId> {
        self.sandboxes
            .iter()
            .find(|(_, sandbox)| {
                !sandbox.closing
                    && token::same(&sandbox.sandbox_id, sandbox_id)
                    && same_owner(sandbox.owner.as_deref(), owner)
            })
            .map(|(key, _)| *key)
    }

    pub fn sandbox(&self, sandbox: SessionId) -> Option<&McpSandbox> {
        self.sandboxes.get(&sandbox)
    }

    pub fn is_mcp_sandbox(&self, sandbox: SessionId) -> bool {
        self.sandboxes.contains_key(&sandbox)
    }

    /// A call starts (`+1`) or ends (`-1`) on the sandbox.
    pub fn call_started(&mut self, sandbox: SessionId, now: Instant) {
        if let Some(entry) = self.sandboxes.get_mut(&sandbox) {
            entry.calls += 1;
            entry.last_used = now;
        }
    }

    pub fn call_ended(&mut self, sandbox: SessionId, now: Instant) {
        if let Some(entry) = self.sandboxes.get_mut(&sandbox) {
            entry.calls = entry.calls.saturating_sub(1);
            entry.last_used = now;
        }
    }

    /// The sandbox is gone (deleted, lost): forget it, and its session no longer has one.
    pub fn forget_sandbox(&mut self, sandbox: SessionId) -> Option<McpSandbox> {
        let entry = self.sandboxes.remove(&sandbox)?;
        if let Some(session) = entry
            .mcp_session
            .as_ref()
            .and_then(|id| self.sessions.get_mut(id))
        {
            if session.sandbox == Some(sandbox) {
                session.sandbox = None;
            }
        }
        Some(entry)
    }

    /// End what has been idle longer than the idle timeout: sessions without a running call
    /// (with their sandboxes), and sandboxes without a session or a running call.
    pub fn expire(&mut self, now: Instant) -> Expired {
        let limit = self.idle_timeout;
        let idle = |since: Instant| now.saturating_duration_since(since) >= limit;
        let busy = |sandbox: Option<SessionId>, sandboxes: &HashMap<SessionId, McpSandbox>| {
            sandbox
                .and_then(|key| sandboxes.get(&key))
                .is_some_and(|entry| entry.calls > 0)
        };
        let mut expired = Expired::default();
        for (id, session) in &mut self.sessions {
            if busy(session.sandbox, &self.sandboxes) {
                session.last_active = now;
            } else if idle(session.last_active) {
                expired.sessions.push(id.clone());
            }
        }
        for id in &expired.sessions {
            if let Some(sandbox) = self.close_session(id) {
                expired.sandboxes.push(sandbox);
            }
        }
        for (key, sandbox) in &self.sandboxes {
            let unused = sandbox.mcp_session.is_none() && sandbox.calls == 0 && !sandbox.closing;
            if unused && idle(sandbox.last_used) {
                expired.sandboxes.push(*key);
            }
        }
        expired.sessions.sort();
        expired.sandboxes.sort();
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn sandboxes_answer_only_the_key_that_created_them() {
        let now = Instant::now();
        let mut registry = Registry::new(4, Duration::from_secs(60));
        registry.add_sandbox(SessionId(1), ID.into(), Some("k1".into()), None, now);
        assert_eq!(registry.find_sandbox(ID, Some("k1")), Some(SessionId(1)));
        assert_eq!(registry.find_sandbox(ID, Some("k2")), None);
        assert_eq!(registry.find_sandbox(ID, None), None);
        assert_eq!(registry.find_sandbox("ffff", Some("k1")), None);
        registry.add_sandbox(SessionId(2), "a".repeat(32), None, None, now);
        assert_eq!(
            registry.find_sandbox(&"a".repeat(32), None),
            Some(SessionId(2))
        );
        assert_eq!(registry.find_sandbox(&"a".repeat(32), Some("k1")), None);
    }

    #[test]
    fn sessions_are_bounded_and_private_to_their_key() {
        let now = Instant::now();
        let mut registry = Registry::new(1, Duration::from_secs(60));
        registry
            .open_session("s1".into(), "2025-11-25", Some("k".into()), now)
            .unwrap();
        assert_eq!(
            registry.open_session("s2".into(), "2025-11-25", None, now),
            Err("the server is at its limit of 1 MCP sessions; retry shortly".into())
        );
        assert!(registry.session("s1", Some("other"), now).is_none());
        assert!(registry.session("s1", Some("k"), now).is_some());
        assert!(registry.session("nope", Some("k"), now).is_none());
        registry.add_sandbox(
            SessionId(5),
            ID.into(),
            Some("k".into()),
            Some("s1".into()),
            now,
        );
        assert_eq!(
            registry.session("s1", Some("k"), now).unwrap().sandbox,
            Some(SessionId(5))
        );
        assert_eq!(registry.close_session("s1"), Some(SessionId(5)));
        assert_eq!(
            registry.close_session("s1"),
            None,
            "ended: unknown from now on"
        );
        assert_eq!(registry.session_count(), 0);
    }

    #[test]
    fn idle_sessions_and_sandboxes_expire_but_not_while_a_call_runs() {
        let start = Instant::now();
        let later = start + Duration::from_secs(61);
        let mut registry = Registry::new(8, Duration::from_secs(60));
        registry
            .open_session("s1".into(), "2025-11-25", None, start)
            .unwrap();
        registry
            .open_session("s2".into(), "2025-11-25", None, start)
            .unwrap();
        registry.add_sandbox(SessionId(1), "1".repeat(32), None, Some("s1".into()), start);
        registry.add_sandbox(SessionId(2), "2".repeat(32), None, Some("s2".into()), start);
        registry.add_sandbox(SessionId(3), "3".repeat(32), None, None, start);
        registry.add_sandbox(SessionId(4), "4".repeat(32), None, None, start);
        registry.call_started(SessionId(2), start);
        registry.call_started(SessionId(4), start);
        assert_eq!(
            registry.expire(start + Duration::from_secs(59)),
            Expired::default()
        );
        assert_eq!(
            registry.expire(later),
            Expired {
                sessions: vec!["s1".into()],
                sandboxes: vec![SessionId(1), SessionId(3)],
            }
        );
        registry.forget_sandbox(SessionId(1));
        registry.forget_sandbox(SessionId(3));
        registry.call_ended(SessionId(2), later);
        registry.call_ended(SessionId(4), later);
        let much_later = later + Duration::from_secs(61);
        assert_eq!(
            registry.expire(much_later),
            Expired {
                sessions: vec!["s2".into()],
                sandboxes: vec![SessionId(2), SessionId(4)],
            }
        );
        registry.add_sandbox(SessionId(6), "6".repeat(32), None, None, much_later);
        registry.close_sandbox(SessionId(6));
        assert_eq!(
            registry.find_sandbox(&"6".repeat(32), None),
            None,
            "being deleted"
        );
        assert!(
            registry
                .expire(much_later + Duration::from_secs(61))
                .sandboxes
                .iter()
                .all(|key| *key != SessionId(6)),
            "deleted once"
        );
        let forgotten = registry.forget_sandbox(SessionId(4)).unwrap();
        assert_eq!(forgotten.sandbox_id, "4".repeat(32));
        assert!(!registry.is_mcp_sandbox(SessionId(4)));
    }
}
