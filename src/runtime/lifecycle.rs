//! The lifecycle of one sandbox, as a state machine without I/O.
//!
//! ```text
//!   Starting --agent hello--> Ready --delete--> Deleting --runsc delete exited--> Deleted
//!      |                        |                  ^
//!      +--run failed/timeout----+--agent lost------+
//! ```
//! The runtime feeds it events and carries out the actions it returns; a wrong-state event is
//! ignored (the returned action list is empty) rather than trusted.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// `runsc run` is starting the container; the agent has not said hello yet.
    Starting,
    /// The agent is ready to spawn executions.
    Ready,
    /// `runsc delete` is running.
    Deleting,
    /// Gone: no container, no bundle.
    Deleted,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
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
}

#[derive(Debug)]
pub struct Lifecycle {
    state: State,
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
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        use Action::*;
        use State::*;
        match (self.state, event) {
            (Starting, Event::RunExited(Ok(()))) => vec![],
            (Starting, Event::RunExited(Err(reason))) | (Starting, Event::AgentLost(reason)) => {
                self.state = Deleting;
                vec![NotifyStartFailed(reason), StartDelete]
            }
            (Starting, Event::StartTimedOut) => {
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
            (Ready, Event::AgentLost(reason)) => {
                self.state = Deleting;
                vec![NotifyLost(reason), StartDelete]
            }
            (Starting | Ready, Event::DeleteRequested) => {
                self.state = Deleting;
                vec![StartDelete]
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
    fn a_dead_agent_is_reported_once() {
        let mut sandbox = Lifecycle::new();
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
