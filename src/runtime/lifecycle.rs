//! The lifecycle of one sandbox, as a state machine without I/O.
//!
//! ```text
//!   Starting --agent hello--> Ready --delete--> Deleting --runsc delete exited--> Deleted
//!      |  ^                     |                  ^
//!      |  |                     +--checkpoint--> Checkpointing --exited--> Stopped --delete--+
//!      |  +------------------------------------------restore------------------------+
//!      +--run failed/timeout----+--agent lost------^
//! ```
//! A sandbox admitted while every slot is taken starts in `Waiting` (no container yet): when a
//! slot is granted it goes to `Starting` (`runsc run`, or `runsc restore` if it has an image); a
//! delete or the start timeout while waiting forgets it at once.
//! `Stopped` is what `runsc checkpoint` leaves, whether it succeeded or not: the container no
//! longer runs; it is either deleted or restored from an image.
//! The runtime feeds it events and carries out the actions it returns; a wrong-state event is
//! ignored (the returned action list is empty) rather than trusted.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Admitted, waiting for a sandbox slot to be freed (see `runtime::pool`): nothing runs yet.
    Waiting,
    /// `runsc run` is starting the container; the agent has not said hello yet.
    Starting,
    /// The agent is ready to spawn executions.
    Ready,
    /// `runsc checkpoint` is running.
    Checkpointing,
    /// Checkpointed (or a failed checkpoint): not running, container not yet deleted.
    Stopped,
    /// Deletion was asked for while `runsc run` still runs: wait for it, then delete.
    Aborting,
    /// `runsc delete` is running.
    Deleting,
    /// Gone: no container, no bundle.
    Deleted,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Waiting => "waiting for a free sandbox slot",
            State::Starting => "starting",
            State::Ready => "ready",
            State::Checkpointing => "checkpointing",
            State::Stopped => "stopped",
            State::Aborting => "being deleted",
            State::Deleting => "deleting",
            State::Deleted => "deleted",
        }
    }

    pub fn can_exec(self) -> bool {
        self == State::Ready
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `runsc run --detach` exited; `Err` carries the reason (runsc's own message).
    RunExited(Result<(), String>),
    AgentReady,
    /// The agent's pipe closed or spoke garbage: the sandbox is dead.
    AgentLost(String),
    StartTimedOut,
    DeleteRequested,
    DeleteExited,
    CheckpointRequested,
    /// `runsc checkpoint` exited; `Err` carries its message.
    CheckpointExited(Result<(), String>),
    RestoreRequested,
    /// A waiting sandbox got its slot.
    SlotGranted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Tell the owner it can use the sandbox.
    NotifyReady,
    /// Tell the owner the sandbox could not start.
    NotifyStartFailed(String),
    /// Tell the owner the running sandbox died.
    NotifyLost(String),
    /// Close the agent's pipes and spawn `runsc delete --force`.
    StartDelete,
    /// Remove the bundle and forget the sandbox.
    Forget,
    /// Spawn `runsc checkpoint`.
    StartCheckpoint,
    /// Tell the owner how the checkpoint went.
    NotifyCheckpointed(Result<(), String>),
    /// Spawn `runsc restore` with fresh agent pipes.
    StartRestore,
    /// A slot was granted: spawn `runsc run`, or `runsc restore` if the sandbox has an image.
    StartContainer,
    /// Tell the owner no slot became free in time (the sandbox never started).
    NotifyNoSlot,
}

#[derive(Debug)]
pub struct Lifecycle {
    state: State,
    /// `runsc run` (or `restore`) has exited. Until then a delete must wait: `runsc delete`
    /// racing a `runsc run` deletes nothing and the container appears afterwards.
    run_exited: bool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    pub fn new() -> Self {
        Lifecycle {
            state: State::Starting,
            run_exited: false,
        }
    }

    /// A sandbox that waits for a slot before anything starts.
    pub fn waiting() -> Self {
        Lifecycle {
            state: State::Waiting,
            run_exited: true,
        }
    }

    /// A sandbox that exists only as a saved image, about to be restored.
    pub fn stopped() -> Self {
        Lifecycle {
            state: State::Stopped,
            run_exited: true,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Delete now, or once `runsc run` has exited (`Aborting`).
    fn delete_when_run_exits(&mut self, mut actions: Vec<Action>) -> Vec<Action> {
        if self.run_exited {
            self.state = State::Deleting;
            actions.push(Action::StartDelete);
        } else {
            self.state = State::Aborting;
        }
        actions
    }

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        use Action::*;
        use State::*;
        if matches!(event, Event::RunExited(_)) {
            self.run_exited = true;
        }
        match (self.state, event) {
            (Waiting, Event::SlotGranted) => {
                self.state = Starting;
                self.run_exited = false;
                vec![StartContainer]
            }
            (Waiting, Event::DeleteRequested) => {
                self.state = Deleted;
                vec![Forget]
            }
            (Waiting, Event::StartTimedOut) => {
                self.state = Deleted;
                vec![NotifyNoSlot, Forget]
            }
            (Starting, Event::RunExited(Ok(()))) => vec![],
            (Starting, Event::RunExited(Err(reason))) | (Starting, Event::AgentLost(reason)) => {
                self.delete_when_run_exits(vec![NotifyStartFailed(reason)])
            }
            (Starting, Event::StartTimedOut) => {
                // runsc itself may hang: delete without waiting for it any longer.
                self.state = Deleting;
                vec![
                    NotifyStartFailed("the sandbox did not become ready in time".into()),
                    StartDelete,
                ]
            }
            (Starting, Event::AgentReady) => {
                self.state = Ready;
                vec![NotifyReady]
            }
            (Aborting, Event::RunExited(_)) | (Aborting, Event::StartTimedOut) => {
                self.state = Deleting;
                vec![StartDelete]
            }
            (Ready, Event::AgentLost(reason)) => {
                self.delete_when_run_exits(vec![NotifyLost(reason)])
            }
            (Ready, Event::CheckpointRequested) => {
                self.state = Checkpointing;
                vec![StartCheckpoint]
            }
            (Checkpointing, Event::CheckpointExited(result)) => {
                self.state = Stopped;
                vec![NotifyCheckpointed(result)]
            }
            (Stopped, Event::RestoreRequested) => {
                self.state = Starting;
                self.run_exited = false;
                vec![StartRestore]
            }
            (Starting | Ready | Checkpointing | Stopped, Event::DeleteRequested) => {
                self.delete_when_run_exits(vec![])
            }
            (Deleting, Event::DeleteExited) => {
                self.state = Deleted;
                vec![Forget]
            }
            // Late or duplicate events (a run that exits after the hello, a timeout that fires
            // after deletion started, a pipe closing during deletion) change nothing.
            _ => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_life() {
        let mut sandbox = Lifecycle::new();
        assert_eq!(sandbox.handle(Event::RunExited(Ok(()))), vec![]);
        assert_eq!(sandbox.state(), State::Starting);
        assert_eq!(sandbox.handle(Event::AgentReady), vec![Action::NotifyReady]);
        assert!(sandbox.state().can_exec());
        assert_eq!(
            sandbox.handle(Event::DeleteRequested),
            vec![Action::StartDelete]
        );
        assert_eq!(sandbox.handle(Event::AgentLost("eof".into())), vec![]);
        assert_eq!(sandbox.handle(Event::DeleteExited), vec![Action::Forget]);
        assert_eq!(sandbox.state(), State::Deleted);
    }

    #[test]
    fn hello_may_arrive_before_run_exits() {
        let mut sandbox = Lifecycle::new();
        assert_eq!(sandbox.handle(Event::AgentReady), vec![Action::NotifyReady]);
        assert_eq!(sandbox.handle(Event::RunExited(Ok(()))), vec![]);
        assert_eq!(sandbox.state(), State::Ready);
    }

    #[test]
    fn start_failures_delete_and_report() {
        let mut sandbox = Lifecycle::new();
        let actions = sandbox.handle(Event::RunExited(Err("bad bundle".into())));
        assert_eq!(
            actions,
            vec![
                Action::NotifyStartFailed("bad bundle".into()),
                Action::StartDelete
            ]
        );
        assert_eq!(sandbox.handle(Event::StartTimedOut), vec![]);

        let mut sandbox = Lifecycle::new();
        let actions = sandbox.handle(Event::StartTimedOut);
        assert!(matches!(actions[0], Action::NotifyStartFailed(_)));
        assert_eq!(sandbox.state(), State::Deleting);
    }

    #[test]
    fn checkpoint_then_restore_or_delete() {
        let mut sandbox = Lifecycle::new();
        sandbox.handle(Event::AgentReady);
        assert_eq!(
            sandbox.handle(Event::CheckpointRequested),
            vec![Action::StartCheckpoint]
        );
        assert_eq!(
            sandbox.handle(Event::AgentLost("stopped by checkpoint".into())),
            vec![],
            "expected"
        );
        assert_eq!(sandbox.handle(Event::CheckpointRequested), vec![]);
        assert_eq!(
            sandbox.handle(Event::CheckpointExited(Ok(()))),
            vec![Action::NotifyCheckpointed(Ok(()))]
        );
        assert_eq!(sandbox.state(), State::Stopped);
        assert!(!sandbox.state().can_exec());
        assert_eq!(
            sandbox.handle(Event::RestoreRequested),
            vec![Action::StartRestore]
        );
        assert_eq!(sandbox.handle(Event::AgentReady), vec![Action::NotifyReady]);

        let mut failed = Lifecycle::new();
        failed.handle(Event::RunExited(Ok(())));
        failed.handle(Event::AgentReady);
        failed.handle(Event::CheckpointRequested);
        let actions = failed.handle(Event::CheckpointExited(Err("tcp".into())));
        assert_eq!(actions, vec![Action::NotifyCheckpointed(Err("tcp".into()))]);
        assert_eq!(
            failed.handle(Event::DeleteRequested),
            vec![Action::StartDelete]
        );
    }

    #[test]
    fn a_delete_during_runsc_run_waits_for_it() {
        let mut sandbox = Lifecycle::new();
        assert_eq!(sandbox.handle(Event::DeleteRequested), vec![]);
        assert_eq!(sandbox.state(), State::Aborting);
        assert_eq!(sandbox.handle(Event::AgentReady), vec![]);
        assert_eq!(
            sandbox.handle(Event::RunExited(Ok(()))),
            vec![Action::StartDelete]
        );
        assert_eq!(sandbox.state(), State::Deleting);

        let mut hung = Lifecycle::new();
        hung.handle(Event::DeleteRequested);
        assert_eq!(hung.handle(Event::StartTimedOut), vec![Action::StartDelete]);
    }

    #[test]
    fn a_waiting_sandbox_starts_when_granted_a_slot_or_is_forgotten() {
        let mut sandbox = Lifecycle::waiting();
        assert!(!sandbox.state().can_exec());
        assert_eq!(sandbox.handle(Event::AgentReady), vec![]);
        assert_eq!(sandbox.handle(Event::RestoreRequested), vec![]);
        assert_eq!(
            sandbox.handle(Event::SlotGranted),
            vec![Action::StartContainer]
        );
        assert_eq!(sandbox.state(), State::Starting);
        assert_eq!(sandbox.handle(Event::SlotGranted), vec![]);
        // Granted, it is a starting sandbox like any other: a delete waits for runsc.
        assert_eq!(sandbox.handle(Event::DeleteRequested), vec![]);
        assert_eq!(sandbox.state(), State::Aborting);

        let mut abandoned = Lifecycle::waiting();
        assert_eq!(
            abandoned.handle(Event::DeleteRequested),
            vec![Action::Forget]
        );
        assert_eq!(abandoned.state(), State::Deleted);
        assert_eq!(abandoned.handle(Event::SlotGranted), vec![]);

        let mut timed_out = Lifecycle::waiting();
        assert_eq!(
            timed_out.handle(Event::StartTimedOut),
            vec![Action::NotifyNoSlot, Action::Forget]
        );
        assert_eq!(timed_out.state(), State::Deleted);
    }

    #[test]
    fn a_dead_agent_is_reported_once() {
        let mut sandbox = Lifecycle::new();
        sandbox.handle(Event::RunExited(Ok(())));
        sandbox.handle(Event::AgentReady);
        let actions = sandbox.handle(Event::AgentLost("pipe closed".into()));
        assert_eq!(
            actions,
            vec![
                Action::NotifyLost("pipe closed".into()),
                Action::StartDelete
            ]
        );
        assert_eq!(sandbox.handle(Event::AgentLost("again".into())), vec![]);
        assert_eq!(sandbox.handle(Event::DeleteRequested), vec![]);
    }
}
