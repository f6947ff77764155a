//! A checkpoint or a filesystem snapshot of a session's sandbox, as a machine without I/O:
//!
//! ```text
//! Preparing  (worker thread: a fresh image directory in the store)
//!   --ready--> Checkpointing  (runtime: the agent is asked whether a checkpoint can work
//!                              (inspect), then `runsc checkpoint` writes the image)
//!     --refused--> done, image discarded; the sandbox runs on
//!     --failed---> done, image discarded; the container is stopped
//!     --written--> Publishing  (worker thread: hash the files, publish the manifest)
//!       checkpoint --> done: the sandbox is deleted, the lease given up
//!       snapshot   --> Restarting  (runtime: restore in place from the image just written)
//!         --ready--> done: the snapshot is reported
//! ```
//! Every way out reports to the session exactly once ([`Report`]); an image that will not be
//! published is discarded.

use std::path::PathBuf;

use crate::session::SaveRequest;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Preparing,
    Checkpointing,
    Publishing,
    /// A snapshot was published (or not: the result to report) and its sandbox is restarting.
    Restarting(Result<(), String>),
    Done,
}

#[derive(Debug)]
pub struct Save {
    request: SaveRequest,
    /// The sandbox's (checkpoint) or the snapshot's directory in the store.
    base: PathBuf,
    image: Option<PathBuf>,
    phase: Phase,
}

/// What the server must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make a fresh image directory under the base (worker thread); answer `prepared`.
    Prepare(PathBuf),
    /// Ask the runtime to checkpoint the sandbox into `image`; a refusal to start is answered
    /// with `checkpoint_not_started`, the runtime's notices with `checkpointed` / `refused`.
    Checkpoint { image: PathBuf, with_running: bool },
    /// Hash and publish the image (worker thread); `token`: record the session's token hash
    /// (checkpoints, so that attach can check it). Answer `published`.
    Publish {
        base: PathBuf,
        image: PathBuf,
        token: bool,
    },
    /// Remove an image that will not be published (worker thread); with `base_if_empty`, its
    /// directory too if nothing else is in it.
    Discard {
        image: PathBuf,
        base_if_empty: Option<PathBuf>,
    },
    /// Restart the stopped sandbox from `image`; a refusal is answered with
    /// `restart_not_started`, readiness with `restarted`.
    RestoreInPlace(PathBuf),
    /// The checkpoint is published (or failed to be): this instance no longer runs the sandbox.
    ReleaseLease,
    /// Tell the session; the save is over.
    Report(Report),
}

/// How a save ended, for the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Checkpoint(Result<(), String>),
    /// `alive`: whether the sandbox runs again.
    Snapshot {
        result: Result<(), String>,
        alive: bool,
    },
}

impl Save {
    /// Begin `request` into `base` (`None`: the server has no store for it).
    pub fn start(request: SaveRequest, base: Option<PathBuf>) -> (Save, Vec<Action>) {
        let mut save = Save {
            request,
            base: base.clone().unwrap_or_default(),
            image: None,
            phase: Phase::Preparing,
        };
        let actions = match base {
            Some(base) => vec![Action::Prepare(base)],
            None => save.fail("saving is not enabled on this server".into(), true),
        };
        (save, actions)
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    fn with_running(&self) -> bool {
        matches!(self.request, SaveRequest::Checkpoint { with_running: true })
    }

    /// The worker thread made the image directory (or could not).
    pub fn prepared(&mut self, image: Result<PathBuf, String>) -> Vec<Action> {
        if self.phase != Phase::Preparing {
            // Nobody waits for it: do not leave it behind.
            return image
                .map(|image| {
                    vec![Action::Discard {
                        image,
                        base_if_empty: None,
                    }]
                })
                .unwrap_or_default();
        }
        match image {
            Ok(image) => {
                self.phase = Phase::Checkpointing;
                self.image = Some(image.clone());
                vec![Action::Checkpoint {
                    image,
                    with_running: self.with_running(),
                }]
            }
            Err(message) => self.fail(message, true),
        }
    }

    /// The runtime would not start the checkpoint (the sandbox is not ready, or busy).
    pub fn checkpoint_not_started(&mut self, message: String) -> Vec<Action> {
        if self.phase != Phase::Checkpointing {
            return Vec::new();
        }
        let mut actions = self.discard(false);
        actions.extend(self.fail(format!("cannot checkpoint: {message}"), true));
        actions
    }

    /// The agent said a checkpoint cannot work now; nothing was touched and the session hears
    /// it from the runtime's notice itself.
    pub fn refused(&mut self) -> Vec<Action> {
        if self.phase != Phase::Checkpointing {
            return Vec::new();
        }
        self.phase = Phase::Done;
        self.discard(true)
    }

    /// `runsc checkpoint` finished; the container is stopped either way.
    pub fn checkpointed(&mut self, result: Result<(), String>) -> Vec<Action> {
        if self.phase != Phase::Checkpointing {
            return Vec::new();
        }
        let Some(image) = self.image.clone() else {
            return Vec::new();
        };
        match result {
            Ok(()) => {
                self.phase = Phase::Publishing;
                vec![Action::Publish {
                    base: self.base.clone(),
                    image,
                    token: matches!(self.request, SaveRequest::Checkpoint { .. }),
                }]
            }
            Err(message) => {
                let mut actions = self.discard(false);
                actions.extend(self.fail(message, false));
                actions
            }
        }
    }

    /// The worker thread published the image (or could not).
    pub fn published(&mut self, result: Result<(), String>) -> Vec<Action> {
        if self.phase != Phase::Publishing {
            return Vec::new();
        }
        match self.request.clone() {
            SaveRequest::Checkpoint { .. } => {
                let mut actions = if result.is_err() {
                    self.discard(false)
                } else {
                    Vec::new()
                };
                self.phase = Phase::Done;
                actions.push(Action::ReleaseLease);
                actions.push(Action::Report(Report::Checkpoint(result)));
                actions
            }
            SaveRequest::Snapshot(name) => {
                let result =
                    result.map_err(|error| format!("cannot save snapshot {name:?}: {error}"));
                self.phase = Phase::Restarting(result);
                self.image
                    .clone()
                    .map(Action::RestoreInPlace)
                    .into_iter()
                    .collect()
            }
        }
    }

    /// The runtime would not restart the snapshotted sandbox.
    pub fn restart_not_started(&mut self) -> Vec<Action> {
        if !matches!(self.phase, Phase::Restarting(_)) {
            return Vec::new();
        }
        self.fail(
            "the sandbox could not be restarted after the snapshot".into(),
            false,
        )
    }

    /// The snapshotted sandbox runs again (`runtime` Ready): report the snapshot. `None` if this
    /// save was not waiting for it (the notice is then the session's).
    pub fn restarted(&mut self) -> Option<Vec<Action>> {
        let Phase::Restarting(result) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return None;
        };
        Some(vec![Action::Report(Report::Snapshot {
            result,
            alive: true,
        })])
    }

    fn discard(&mut self, with_base: bool) -> Vec<Action> {
        self.image
            .take()
            .map(|image| Action::Discard {
                image,
                base_if_empty: with_base.then(|| self.base.clone()),
            })
            .into_iter()
            .collect()
    }

    /// The save failed with `message`; `alive`: whether the sandbox still runs.
    fn fail(&mut self, message: String, alive: bool) -> Vec<Action> {
        self.phase = Phase::Done;
        let report = match self.request {
            SaveRequest::Checkpoint { .. } => Report::Checkpoint(Err(message)),
            SaveRequest::Snapshot(_) => Report::Snapshot {
                result: Err(message),
                alive,
            },
        };
        vec![Action::Report(report)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> SaveRequest {
        SaveRequest::Checkpoint {
            with_running: false,
        }
    }

    fn snapshot() -> SaveRequest {
        SaveRequest::Snapshot("snap".into())
    }

    fn base() -> PathBuf {
        PathBuf::from("/store/base")
    }

    fn image() -> PathBuf {
        PathBuf::from("/store/base/image-1")
    }

    /// A save past `Preparing`.
    fn checkpointing(request: SaveRequest) -> Save {
        let (mut save, actions) = Save::start(request.clone(), Some(base()));
        assert_eq!(actions, [Action::Prepare(base())]);
        assert_eq!(
            save.prepared(Ok(image())),
            [Action::Checkpoint {
                image: image(),
                with_running: request == SaveRequest::Checkpoint { with_running: true }
            }]
        );
        save
    }

    #[test]
    fn a_checkpoint_is_published_then_the_lease_goes() {
        let mut save = checkpointing(checkpoint());
        assert_eq!(
            save.checkpointed(Ok(())),
            [Action::Publish {
                base: base(),
                image: image(),
                token: true
            }]
        );
        assert_eq!(
            save.published(Ok(())),
            [
                Action::ReleaseLease,
                Action::Report(Report::Checkpoint(Ok(())))
            ]
        );
        assert!(save.is_done());
    }

    #[test]
    fn a_snapshot_is_reported_once_its_sandbox_runs_again() {
        let mut save = checkpointing(snapshot());
        assert_eq!(
            save.checkpointed(Ok(())),
            [Action::Publish {
                base: base(),
                image: image(),
                token: false
            }]
        );
        assert_eq!(
            save.published(Err("disk full".into())),
            [Action::RestoreInPlace(image())]
        );
        assert_eq!(
            save.restarted(),
            Some(vec![Action::Report(Report::Snapshot {
                result: Err("cannot save snapshot \"snap\": disk full".into()),
                alive: true
            })])
        );
        assert_eq!(save.restarted(), None, "reported once");
    }

    #[test]
    fn images_that_will_not_be_published_are_discarded() {
        // Refused by the agent: the sandbox runs on; a snapshot's empty directory goes too.
        let mut save = checkpointing(snapshot());
        assert_eq!(
            save.refused(),
            [Action::Discard {
                image: image(),
                base_if_empty: Some(base())
            }]
        );
        assert!(save.is_done());
        // runsc checkpoint failed: the container is stopped.
        let mut save = checkpointing(checkpoint());
        assert_eq!(
            save.checkpointed(Err("open TCP connection".into())),
            [
                Action::Discard {
                    image: image(),
                    base_if_empty: None
                },
                Action::Report(Report::Checkpoint(Err("open TCP connection".into())))
            ]
        );
        // Publishing failed: the previous checkpoint stays; the lease goes anyway.
        let mut save = checkpointing(checkpoint());
        save.checkpointed(Ok(()));
        assert_eq!(
            save.published(Err("io".into())),
            [
                Action::Discard {
                    image: image(),
                    base_if_empty: None
                },
                Action::ReleaseLease,
                Action::Report(Report::Checkpoint(Err("io".into())))
            ]
        );
        // The runtime would not start it.
        let mut save = checkpointing(snapshot());
        assert_eq!(
            save.checkpoint_not_started("the sandbox is starting".into()),
            [
                Action::Discard {
                    image: image(),
                    base_if_empty: None
                },
                Action::Report(Report::Snapshot {
                    result: Err("cannot checkpoint: the sandbox is starting".into()),
                    alive: true
                })
            ]
        );
        // An image prepared for a save that ended meanwhile.
        let (mut save, _) = Save::start(checkpoint(), Some(base()));
        save.phase = Phase::Done;
        assert_eq!(
            save.prepared(Ok(image())),
            [Action::Discard {
                image: image(),
                base_if_empty: None
            }]
        );
    }

    #[test]
    fn failures_before_the_checkpoint_leave_the_sandbox_running() {
        let (save, actions) = Save::start(snapshot(), None);
        assert!(save.is_done());
        assert_eq!(
            actions,
            [Action::Report(Report::Snapshot {
                result: Err("saving is not enabled on this server".into()),
                alive: true
            })]
        );
        let (mut save, _) = Save::start(checkpoint(), Some(base()));
        assert_eq!(
            save.prepared(Err("cannot write to /store/base: read-only".into())),
            [Action::Report(Report::Checkpoint(Err(
                "cannot write to /store/base: read-only".into()
            )))]
        );
        // The snapshotted sandbox could not be restarted.
        let mut save = checkpointing(snapshot());
        save.checkpointed(Ok(()));
        save.published(Ok(()));
        assert_eq!(
            save.restart_not_started(),
            [Action::Report(Report::Snapshot {
                result: Err("the sandbox could not be restarted after the snapshot".into()),
                alive: false
            })]
        );
    }
}
