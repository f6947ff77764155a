//! Whether this server can create sandboxes, for the readiness endpoint (`GET /readyz`).
//!
//! Two kinds of evidence: what must exist on disk (the state directory with the agent's copy,
//! the sandbox image), checked when asked; and how the last sandbox starts went, counted here.
//! Only fresh starts (`runsc run`) count as failures: a restore can fail because of its image
//! (corrupted, taken on another CPU), which says nothing about this server. Any sandbox that
//! becomes ready, fresh or restored, proves runsc works and resets the count.

use std::path::Path;

/// Consecutive failed sandbox starts.
#[derive(Debug, Default, Clone)]
pub struct StartHealth {
    failed_in_a_row: u32,
    last_failure: String,
}

impl StartHealth {
    /// A sandbox became ready.
    pub fn started(&mut self) {
        self.failed_in_a_row = 0;
        self.last_failure.clear();
    }

    /// A fresh sandbox failed to start.
    pub fn failed(&mut self, reason: &str) {
        self.failed_in_a_row = self.failed_in_a_row.saturating_add(1);
        self.last_failure = reason.to_string();
    }

    pub fn failed_in_a_row(&self) -> u32 {
        self.failed_in_a_row
    }

    /// Why sandboxes cannot be started, once `threshold` starts failed in a row (0: never).
    pub fn problem(&self, threshold: u32) -> Option<String> {
        (threshold > 0 && self.failed_in_a_row >= threshold).then(|| {
            format!(
                "the last {} sandbox starts failed; the last one: {}",
                self.failed_in_a_row, self.last_failure
            )
        })
    }
}

/// What a sandbox start needs on disk, if something is missing.
pub fn missing_files(state_dir: &Path, agent_copy: &Path, rootfs: &Path) -> Option<String> {
    if !state_dir.is_dir() {
        return Some(format!(
            "the state directory {} is gone",
            state_dir.display()
        ));
    }
    if !agent_copy.is_file() {
        return Some(format!(
            "the agent's copy {} is gone from the state directory",
            agent_copy.display()
        ));
    }
    let python = rootfs.join("usr/bin/python3");
    if !python.exists() {
        return Some(format!(
            "the sandbox image {} is missing or incomplete ({} not found)",
            rootfs.display(),
            python.display()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_make_a_problem_until_a_start_succeeds() {
        let mut health = StartHealth::default();
        assert_eq!(health.problem(3), None);
        health.failed("runsc: boom 1");
        health.failed("runsc: boom 2");
        assert_eq!(health.problem(3), None, "two are not three");
        health.failed("runsc: boom 3");
        let problem = health.problem(3).expect("three in a row");
        assert!(
            problem.contains("last 3 sandbox starts failed") && problem.contains("boom 3"),
            "{problem}"
        );
        assert_eq!(health.problem(0), None, "0 disables the check");
        health.started();
        assert_eq!(health.problem(3), None);
        assert_eq!(health.failed_in_a_row(), 0);
        health.failed("again");
        assert_eq!(health.problem(3), None, "the count starts over");
        assert_eq!(health.problem(1).map(|p| p.contains("again")), Some(true));
    }

    #[test]
    fn missing_files_are_named() {
        let dir = std::env::temp_dir().join(format!("crs-health-{}", std::process::id()));
        let state = dir.join("state");
        let agent = state.join("agent").join("sandbox-agent");
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(agent.parent().unwrap()).unwrap();
        std::fs::create_dir_all(rootfs.join("usr/bin")).unwrap();
        std::fs::write(&agent, b"").unwrap();
        std::fs::write(rootfs.join("usr/bin/python3"), b"").unwrap();
        assert_eq!(missing_files(&state, &agent, &rootfs), None);

        std::fs::remove_file(rootfs.join("usr/bin/python3")).unwrap();
        let problem = missing_files(&state, &agent, &rootfs).unwrap();
        assert!(problem.contains("sandbox image"), "{problem}");

        std::fs::remove_file(&agent).unwrap();
        let problem = missing_files(&state, &agent, &rootfs).unwrap();
        assert!(problem.contains("agent's copy"), "{problem}");

        std::fs::remove_dir_all(&state).unwrap();
        let problem = missing_files(&state, &agent, &rootfs).unwrap();
        assert!(
            problem.contains("state directory") && problem.contains("gone"),
            "{problem}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
