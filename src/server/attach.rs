//! `/attach/{id}?sandbox_token=T`, from the token check to a running session or a refusal,
//! as a machine without I/O:
//!
//! ```text
//! start: token usable? --no--> refused (permission)
//!   live here:  token --wrong--> refused (permission); not running --> refused (not found);
//!               attached elsewhere --> refused (in use); else --> joined
//!   not here:   no store / not an id --> refused (not found); else --> AwaitingStore
//! AwaitingStore --store answer (on a worker thread: manifest, token, lease, image)-->
//!   not found / wrong token / in use / failed --> refused
//!   handoff asked (it runs elsewhere, with handoff) --> LOCK_ACQUIRING, AwaitingHandoff
//!   ready (lease taken) + session limit reached --> refused, lease released
//!   ready --> Restoring: the server restores the image, then
//!        started --> running (the new session keeps the lease)
//!        failed  --> refused, lease released
//! AwaitingHandoff --store answer (a worker waits for the owner, then reads the store again)-->
//!   handed off and ready --> Restoring as above, with LOCK_ACQUIRED first
//!   refused / timed out / taken by a faster instance --> refused (in use)
//! client gone before the answer --> abandoned, lease released, handoff request withdrawn
//! ```
//! The token is always checked before anything else happens: in memory for a live sandbox,
//! against the manifest (or the lease) in the store otherwise.

use std::path::PathBuf;

use super::store_work::{AttachOutcome, HandoffAsked};
use crate::ids::SandboxId;
use crate::session::{refusal, token, Out, SessionId, Status};
use crate::store::{lease::Lease, Manifest};

/// A sandbox with a session on this instance, as an attach sees it.
#[derive(Debug, Clone, Copy)]
pub struct LiveSandbox<'a> {
    pub session: SessionId,
    pub token_sha256: &'a str,
    pub running: bool,
    pub attached: bool,
    /// Being checkpointed for a handoff to another instance.
    pub moving: bool,
}

/// How an attach begins.
#[derive(Debug)]
pub enum Start {
    /// Tell the client why not (frames ending with a close).
    Refuse(Vec<Out>),
    /// The sandbox runs here: the client joins its session.
    Join(SessionId),
    /// Ask the store (on a worker thread) about this sandbox; the attach waits for the answer.
    AskStore(StoredAttach),
}

/// `store`: whether this server has a checkpoint store to look in.
pub fn start(
    sandbox_id: &str,
    given_token: &Result<String, String>,
    live: Option<LiveSandbox>,
    store: bool,
) -> Start {
    let given = match given_token {
        Ok(given) => given,
        Err(message) => {
            return Start::Refuse(refusal(Status::PermissionDenialError, message, 4000))
        }
    };
    let Some(live) = live else {
        // Not live here: it may be checkpointed in the shared store.
        return match SandboxId::parse(sandbox_id).filter(|_| store) {
            Some(id) => Start::AskStore(StoredAttach {
                sandbox_id: id,
                token: given.clone(),
                phase: Phase::AwaitingStore,
            }),
            None => Start::Refuse(refusal(
                Status::NotFound,
                &format!("sandbox {sandbox_id:?} does not exist on this server"),
                1011,
            )),
        };
    };
    if !token::matches(live.token_sha256, given) {
        return Start::Refuse(refusal(
            Status::PermissionDenialError,
            "wrong or missing sandbox_token",
            4000,
        ));
    }
    if live.moving {
        let message =
            format!("sandbox {sandbox_id} is being handed off to another server instance");
        return Start::Refuse(refusal(Status::InUse, &message, 1011));
    }
    if !live.running {
        let message = format!("sandbox {sandbox_id} is not running");
        return Start::Refuse(refusal(Status::NotFound, &message, 1011));
    }
    if live.attached {
        let message = format!("sandbox {sandbox_id} is in use by another connection");
        return Start::Refuse(refusal(Status::InUse, &message, 1011));
    }
    Start::Join(live.session)
}

#[derive(Debug)]
enum Phase {
    AwaitingStore,
    /// Another instance was asked to hand the sandbox over; a worker waits for it.
    AwaitingHandoff,
    /// The store gave us the sandbox (and its lease); the server restores it. `handed_off`:
    /// another instance handed it over.
    Restoring {
        lease: Lease,
        handed_off: bool,
    },
    Done,
}

/// An attach to a sandbox that is not live here.
#[derive(Debug)]
pub struct StoredAttach {
    sandbox_id: SandboxId,
    token: String,
    phase: Phase,
}

/// What the server must do next.
#[derive(Debug)]
pub enum Decision {
    /// Send these frames (a refusal, ending with a close); give the lease back, if one was
    /// taken.
    Refuse {
        out: Vec<Out>,
        release: Option<Lease>,
    },
    /// Restore `image` into a new sandbox under the attached id, then call
    /// [`StoredAttach::restored`].
    Restore {
        image: PathBuf,
        manifest: Box<Manifest>,
    },
    /// The sandbox is being restored: its new session keeps `lease`; send `out`.
    Restoring { out: Vec<Out>, lease: Lease },
    /// Send `out` (`LOCK_ACQUIRING`) and wait on a worker thread for the instance that runs
    /// the sandbox to hand it over (`store_work::await_handoff`); its answer comes back to
    /// [`StoredAttach::on_store_answer`].
    AwaitHandoff {
        out: Vec<Out>,
        asked: Box<HandoffAsked>,
    },
    /// Nobody waits any more: give the lease back, if one was taken, and take a handoff
    /// request back, if one was made.
    Abandon {
        release: Option<Lease>,
        withdraw: Option<Box<HandoffAsked>>,
    },
}

impl StoredAttach {
    pub fn sandbox_id(&self) -> SandboxId {
        self.sandbox_id
    }

    /// The token the client gave, for the store's check.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The store answered. `session_limit` is the refusal to send if the server is at its
    /// session limit (a restore makes a session).
    pub fn on_store_answer(
        &mut self,
        outcome: AttachOutcome,
        session_limit: Option<Vec<Out>>,
    ) -> Decision {
        let handed_off = match self.phase {
            Phase::AwaitingStore => false,
            Phase::AwaitingHandoff => true,
            _ => return self.abandon(outcome),
        };
        self.phase = Phase::Done;
        let sandbox_id = self.sandbox_id;
        let refuse = |status: Status, message: &str, code: u16| Decision::Refuse {
            out: refusal(status, message, code),
            release: None,
        };
        match outcome {
            AttachOutcome::NotFound => refuse(
                Status::NotFound,
                &format!("sandbox {sandbox_id} does not exist"),
                1011,
            ),
            AttachOutcome::PermissionDenied => refuse(
                Status::PermissionDenialError,
                "wrong or missing sandbox_token",
                4000,
            ),
            AttachOutcome::InUse(owner) => refuse(
                Status::InUse,
                &format!("sandbox {sandbox_id} is running on another server instance ({owner})"),
                1011,
            ),
            AttachOutcome::Failed(message) => refuse(Status::RestoreError, &message, 4000),
            AttachOutcome::HandoffFailed(message) => refuse(
                Status::InUse,
                &format!("sandbox {sandbox_id} is in use: {message}"),
                1011,
            ),
            // `await_handoff` never asks again; should it, do not wait twice.
            AttachOutcome::HandoffAsked(asked) if handed_off => refuse(
                Status::InUse,
                &format!(
                    "sandbox {sandbox_id} is running on another server instance ({})",
                    asked.holder
                ),
                1011,
            ),
            AttachOutcome::HandoffAsked(asked) => {
                self.phase = Phase::AwaitingHandoff;
                Decision::AwaitHandoff {
                    out: vec![Out::Send(
                        crate::session::ServerEvent::Status(Status::LockAcquiring).into(),
                    )],
                    asked,
                }
            }
            AttachOutcome::Ready { lease, .. } if session_limit.is_some() => Decision::Refuse {
                out: session_limit.unwrap_or_default(),
                release: Some(lease),
            },
            AttachOutcome::Ready {
                manifest,
                image,
                lease,
            } => {
                self.phase = Phase::Restoring { lease, handed_off };
                Decision::Restore { image, manifest }
            }
        }
    }

    /// The restore was started (`Ok`) or could not be (`Err`, worded for the client).
    pub fn restored(&mut self, result: Result<(), String>) -> Decision {
        let Phase::Restoring { lease, handed_off } =
            std::mem::replace(&mut self.phase, Phase::Done)
        else {
            return Decision::Abandon {
                release: None,
                withdraw: None,
            };
        };
        let status = |status| Out::Send(crate::session::ServerEvent::Status(status).into());
        match result {
            Ok(()) => Decision::Restoring {
                out: if handed_off {
                    vec![status(Status::LockAcquired), status(Status::Restoring)]
                } else {
                    vec![status(Status::Restoring)]
                },
                lease,
            },
            Err(message) => Decision::Refuse {
                out: refusal(
                    Status::RestoreError,
                    &format!("cannot restore: {message}"),
                    4000,
                ),
                release: Some(lease),
            },
        }
    }

    /// The store answered, but the client left (or was told the store took too long):
    /// restore nothing, so the checkpoint stays where its next attach (here or elsewhere)
    /// finds it.
    pub fn abandon(&mut self, outcome: AttachOutcome) -> Decision {
        self.phase = Phase::Done;
        match outcome {
            AttachOutcome::Ready { lease, .. } => Decision::Abandon {
                release: Some(lease),
                withdraw: None,
            },
            AttachOutcome::HandoffAsked(asked) => Decision::Abandon {
                release: None,
                withdraw: Some(asked),
            },
            _ => Decision::Abandon {
                release: None,
                withdraw: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SavedSettings;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn statuses(out: &[Out]) -> Vec<String> {
        out.iter()
            .map(|item| match item {
                Out::Send(event) => event
                    .status()
                    .map(|status| status.as_str().to_string())
                    .unwrap_or_else(|| "error".into()),
                Out::Close(code, _) => format!("close {code}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn refused(start: Start) -> Vec<String> {
        match start {
            Start::Refuse(out) => statuses(&out),
            other => panic!("not refused: {other:?}"),
        }
    }

    fn lease(nonce: &str) -> Lease {
        Lease {
            owner: "me".into(),
            nonce: nonce.into(),
            generation: 1,
            expires_unix_ms: 0,
            token_sha256: None,
            handoff: false,
        }
    }

    fn ready(nonce: &str) -> AttachOutcome {
        AttachOutcome::Ready {
            manifest: Box::new(Manifest {
                generation: 1,
                image_dir: "image-1-x".into(),
                files: Vec::new(),
                token_sha256: Some(token::hash("t")),
                settings: SavedSettings::default(),
                created_unix_ms: 0,
                rootfs_stamp: String::new(),
                agent_build: String::new(),
            }),
            image: "/store/image-1-x".into(),
            lease: lease(nonce),
        }
    }

    fn stored() -> StoredAttach {
        match start(ID, &Ok("t".into()), None, true) {
            Start::AskStore(attach) => attach,
            other => panic!("not asking the store: {other:?}"),
        }
    }

    #[test]
    fn live_sandboxes_check_the_token_first() {
        let hash = token::hash("t");
        let live = |running, attached| {
            Some(LiveSandbox {
                session: SessionId(3),
                token_sha256: &hash,
                running,
                attached,
                moving: false,
            })
        };
        // A wrong token says nothing about the sandbox's state.
        for (running, attached) in [(true, false), (false, false), (true, true)] {
            assert_eq!(
                refused(start(ID, &Ok("u".into()), live(running, attached), true)),
                ["SANDBOX_PERMISSION_DENIAL_ERROR", "error", "close 4000"]
            );
            assert_eq!(
                refused(start(ID, &Ok(String::new()), live(running, attached), true)),
                ["SANDBOX_PERMISSION_DENIAL_ERROR", "error", "close 4000"]
            );
        }
        assert_eq!(
            refused(start(
                ID,
                &Err("given twice".into()),
                live(true, false),
                true
            )),
            ["SANDBOX_PERMISSION_DENIAL_ERROR", "error", "close 4000"]
        );
        assert_eq!(
            refused(start(ID, &Ok("t".into()), live(false, false), true)),
            ["SANDBOX_NOT_FOUND", "error", "close 1011"]
        );
        assert_eq!(
            refused(start(ID, &Ok("t".into()), live(true, true), true)),
            ["SANDBOX_IN_USE", "error", "close 1011"]
        );
        assert!(matches!(
            start(ID, &Ok("t".into()), live(true, false), true),
            Start::Join(SessionId(3))
        ));
        // Being handed off to another instance: in use (it is neither gone nor joinable).
        let moving = LiveSandbox {
            session: SessionId(3),
            token_sha256: &hash,
            running: false,
            attached: false,
            moving: true,
        };
        assert_eq!(
            refused(start(ID, &Ok("t".into()), Some(moving), true)),
            ["SANDBOX_IN_USE", "error", "close 1011"]
        );
    }

    #[test]
    fn without_a_store_or_a_valid_id_there_is_nothing_to_find() {
        assert_eq!(
            refused(start(ID, &Ok("t".into()), None, false)),
            ["SANDBOX_NOT_FOUND", "error", "close 1011"]
        );
        assert_eq!(
            refused(start("../etc", &Ok("t".into()), None, true)),
            ["SANDBOX_NOT_FOUND", "error", "close 1011"]
        );
        let attach = stored();
        assert_eq!(attach.sandbox_id().to_string(), ID);
        assert_eq!(attach.token(), "t");
    }

    #[test]
    fn store_answers_become_refusals() {
        for (outcome, expected) in [
            (
                AttachOutcome::NotFound,
                ["SANDBOX_NOT_FOUND", "error", "close 1011"],
            ),
            (
                AttachOutcome::PermissionDenied,
                ["SANDBOX_PERMISSION_DENIAL_ERROR", "error", "close 4000"],
            ),
            (
                AttachOutcome::InUse("other-instance".into()),
                ["SANDBOX_IN_USE", "error", "close 1011"],
            ),
            (
                AttachOutcome::Failed("corrupted".into()),
                ["SANDBOX_RESTORE_ERROR", "error", "close 4000"],
            ),
        ] {
            match stored().on_store_answer(outcome, None) {
                Decision::Refuse { out, release } => {
                    assert_eq!(statuses(&out), expected);
                    assert!(release.is_none());
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_lease_taken_is_released_on_every_way_out_but_running() {
        // At the session limit.
        let limit = refusal(Status::CreationError, "full", 1013);
        match stored().on_store_answer(ready("a"), Some(limit.clone())) {
            Decision::Refuse { out, release } => {
                assert_eq!(out, limit);
                assert_eq!(release, Some(lease("a")));
            }
            other => panic!("{other:?}"),
        }
        // The restore cannot start.
        let mut attach = stored();
        assert!(matches!(
            attach.on_store_answer(ready("b"), None),
            Decision::Restore { image, .. } if image == std::path::Path::new("/store/image-1-x")
        ));
        match attach.restored(Err("no slot".into())) {
            Decision::Refuse { out, release } => {
                assert_eq!(
                    statuses(&out),
                    ["SANDBOX_RESTORE_ERROR", "error", "close 4000"]
                );
                assert_eq!(release, Some(lease("b")));
            }
            other => panic!("{other:?}"),
        }
        // The client left before the answer.
        assert!(matches!(
            stored().abandon(ready("c")),
            Decision::Abandon { release: Some(taken), withdraw: None } if taken == lease("c")
        ));
        assert!(matches!(
            stored().abandon(AttachOutcome::NotFound),
            Decision::Abandon {
                release: None,
                withdraw: None
            }
        ));
        // Restored: the session keeps it.
        let mut attach = stored();
        attach.on_store_answer(ready("d"), None);
        match attach.restored(Ok(())) {
            Decision::Restoring { out, lease: kept } => {
                assert_eq!(statuses(&out), ["SANDBOX_RESTORING"]);
                assert_eq!(kept, lease("d"));
            }
            other => panic!("{other:?}"),
        }
        // Answers after the end change nothing.
        assert!(matches!(
            attach.restored(Ok(())),
            Decision::Abandon { release: None, .. }
        ));
        assert!(matches!(
            attach.on_store_answer(ready("e"), None),
            Decision::Abandon {
                release: Some(_),
                ..
            }
        ));
    }

    fn asked() -> AttachOutcome {
        AttachOutcome::HandoffAsked(Box::new(HandoffAsked {
            generation: 4,
            request: crate::store::handoff::Request {
                requester: "me".into(),
                nonce: "n".into(),
                requested_unix_ms: 0,
                refused: None,
            },
            holder: "instance-a".into(),
        }))
    }

    #[test]
    fn a_handoff_says_lock_acquiring_then_lock_acquired_before_restoring() {
        let mut attach = stored();
        match attach.on_store_answer(asked(), None) {
            Decision::AwaitHandoff { out, asked } => {
                assert_eq!(statuses(&out), ["SANDBOX_LOCK_ACQUIRING"]);
                assert_eq!(asked.holder, "instance-a");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            attach.on_store_answer(ready("f"), None),
            Decision::Restore { .. }
        ));
        match attach.restored(Ok(())) {
            Decision::Restoring { out, .. } => assert_eq!(
                statuses(&out),
                ["SANDBOX_LOCK_ACQUIRED", "SANDBOX_RESTORING"]
            ),
            other => panic!("{other:?}"),
        }

        // Refused, timed out or taken by a faster instance: in use, with the reason.
        let mut attach = stored();
        attach.on_store_answer(asked(), None);
        match attach.on_store_answer(
            AttachOutcome::HandoffFailed("it did not hand it off within 40 s; retry".into()),
            None,
        ) {
            Decision::Refuse { out, release: None } => {
                assert_eq!(statuses(&out), ["SANDBOX_IN_USE", "error", "close 1011"]);
                let Out::Send(event) = &out[0] else { panic!() };
                assert!(
                    event.message().is_some_and(|m| m.contains("within 40 s")),
                    "{out:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The client left while the request was out: it is taken back.
        assert!(matches!(
            stored().abandon(asked()),
            Decision::Abandon {
                release: None,
                withdraw: Some(_)
            }
        ));
    }
}
