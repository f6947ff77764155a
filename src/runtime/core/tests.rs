//! The runtime's flows against the core alone: synthetic events in (requests, agent frames,
//! exits of runsc, the time), the queue of actions out. No runsc, no pipes, no clock.

use super::*;
use crate::agent_protocol::{
    AgentHello, ExitStatus, Inspection, Language, Stream, CREDIT_BATCH_BYTES, OUTPUT_WINDOW_BYTES,
};
use crate::runtime::exec::ExecOutcome;
use crate::runtime::refill::GROWTH_PER_MISS;
use crate::runtime::MAX_STDIN_IN_FLIGHT;

const OWNER: Owner = Owner::Session(1);
const OTHER: Owner = Owner::Http(2);

fn settings(max_sandboxes: usize) -> Settings {
    Settings {
        max_sandboxes,
        create_timeout: Duration::from_secs(30),
        max_output_bytes: 100,
        process_limits: ProcessLimits {
            processes: Some(64),
            ..ProcessLimits::default()
        },
        snapshot_pools_max: 2,
        pool_size: 2,
        pool_max: 4,
    }
}

fn spec(timeout_secs: u64) -> ExecSpec {
    ExecSpec {
        language: Language::Bash,
        code: "echo hi".into(),
        env: vec![("A".into(), "b".into())],
        cwd: "/root".into(),
        timeout: Duration::from_secs(timeout_secs),
        stdin_bound: MAX_STDIN_IN_FLIGHT,
        file: None,
        pty: None,
        cell: None,
    }
}

fn hello(next_exec_id: u32) -> FromAgent {
    FromAgent::Ready(AgentHello {
        version: "test".into(),
        python_standby: true,
        next_exec_id,
    })
}

/// The core and a clock the test moves.
struct Harness {
    core: Core,
    now: Instant,
}

impl Harness {
    fn new(max_sandboxes: usize) -> Self {
        Harness {
            core: Core::new(settings(max_sandboxes)),
            now: Instant::now(),
        }
    }

    /// Everything queued so far, in order.
    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.core.poll_action()).collect()
    }

    /// A fresh sandbox whose `runsc run` the driver spawned: admitted, added, and (unless
    /// `owner` waits for a slot) starting.
    fn add_fresh(&mut self, owner: Option<Owner>) -> SandboxKey {
        let admission = self.core.admit(owner.is_some()).expect("admitted");
        let key = self.core.reserve_key();
        let id = SandboxId::random().unwrap();
        self.core
            .add(key, id, owner, admission, Origin::Fresh, self.now);
        key
    }

    /// A fresh sandbox that is ready (`runsc run` returned, the agent said hello).
    fn ready_sandbox(&mut self, owner: Option<Owner>) -> SandboxKey {
        let key = self.add_fresh(owner);
        self.core.run_exited(key, Ok(()), self.now);
        self.core.on_frame(key, hello(1), self.now);
        self.actions();
        key
    }

    fn frame(&mut self, key: SandboxKey, frame: FromAgent) -> Vec<Action> {
        self.core.on_frame(key, frame, self.now);
        self.actions()
    }

    fn advance(&mut self, by: Duration) -> Vec<Action> {
        self.now += by;
        self.core.handle_timeout(self.now);
        self.actions()
    }
}

fn notice(key: SandboxKey, owner: Owner, event: RuntimeEvent) -> Action {
    Action::Notify(Notice {
        owner,
        sandbox: key,
        event,
    })
}

/// The outcome inside an `ExecFinished` notice.
fn finished(action: &Action) -> (ExecId, ExecOutcome) {
    match action {
        Action::Notify(Notice {
            event: RuntimeEvent::ExecFinished(exec, outcome),
            ..
        }) => (*exec, *outcome),
        other => panic!("not an ExecFinished notice: {other:?}"),
    }
}

#[test]
fn an_execution_runs_from_spawn_to_exit_then_the_sandbox_is_deleted() {
    let mut h = Harness::new(2);
    let key = h.add_fresh(Some(OWNER));
    assert_eq!(h.actions(), [], "the driver spawned runsc run itself");
    assert_eq!(h.core.state(key), Some(State::Starting));
    h.core.run_exited(key, Ok(()), h.now);
    assert_eq!(
        h.frame(key, hello(1)),
        [notice(key, OWNER, RuntimeEvent::Ready)]
    );
    assert_eq!(h.core.stats().start_seconds.len(), 1);

    let exec = h.core.start_exec(key, spec(10), h.now).unwrap();
    assert_eq!(exec, ExecId(1));
    let Action::Send(to, ToAgent::Spawn(spawned, request)) = &h.actions()[0] else {
        panic!("no spawn frame");
    };
    assert_eq!((*to, *spawned), (key, exec));
    assert_eq!(request.language, Language::Bash);
    assert_eq!(request.limits.processes, Some(64), "the server's limits");

    assert_eq!(
        h.frame(key, FromAgent::Started(exec)),
        [notice(key, OWNER, RuntimeEvent::ExecStarted(exec))]
    );
    assert_eq!(
        h.frame(
            key,
            FromAgent::Output(exec, Stream::Stdout, b"hi\n".to_vec())
        ),
        [notice(
            key,
            OWNER,
            RuntimeEvent::Output(exec, Stream::Stdout, b"hi\n".to_vec())
        )]
    );
    let end = h.frame(key, FromAgent::Exited(exec, ExitStatus::Code(3)));
    let (ended, outcome) = finished(&end[0]);
    assert_eq!(
        (ended, outcome.exit_code(), outcome.reason),
        (exec, 3, Reason::Exited)
    );
    assert_eq!(h.core.next_deadline(), None, "its timeout is cancelled");

    h.core.delete(key, h.now);
    assert_eq!(h.actions(), [Action::Delete(key)]);
    assert_eq!(h.core.state(key), Some(State::Deleting));
    h.core.delete(key, h.now);
    assert_eq!(h.actions(), [], "deleting twice does nothing more");
    h.core.delete_exited(key, h.now);
    assert_eq!(
        h.actions(),
        [
            Action::Release(key),
            notice(key, OWNER, RuntimeEvent::Deleted)
        ]
    );
    assert!(h.core.is_empty());
}

#[test]
fn a_timeout_kills_and_an_execution_that_does_not_end_loses_its_sandbox() {
    let mut h = Harness::new(2);
    let key = h.ready_sandbox(Some(OWNER));
    let exec = h.core.start_exec(key, spec(10), h.now).unwrap();
    h.actions();
    assert_eq!(h.advance(Duration::from_secs(9)), []);
    assert_eq!(
        h.advance(Duration::from_secs(1)),
        [Action::Send(key, ToAgent::Signal(exec, libc::SIGKILL))]
    );
    // The agent never reports the exit: after the grace period the sandbox is given up, and
    // the execution ends first, so its owner is never left waiting.
    let actions = h.advance(KILL_GRACE);
    assert_eq!(actions.len(), 3, "{actions:?}");
    let (ended, outcome) = finished(&actions[0]);
    assert_eq!((ended, outcome.reason), (exec, Reason::Timeout));
    assert_eq!(outcome.signal(), Some(libc::SIGKILL));
    assert_eq!(
        actions[1..],
        [
            notice(
                key,
                OWNER,
                RuntimeEvent::Lost("the sandbox did not stop execution 1".into())
            ),
            Action::Delete(key)
        ]
    );
    assert_eq!(h.core.stats().lost, 1);
}

#[test]
fn a_killed_execution_that_ends_in_time_keeps_its_sandbox() {
    let mut h = Harness::new(2);
    let key = h.ready_sandbox(Some(OWNER));
    let exec = h.core.start_exec(key, spec(10), h.now).unwrap();
    h.actions();
    h.core.kill_exec(key, exec, Reason::Killed, h.now).unwrap();
    assert_eq!(
        h.actions(),
        [Action::Send(key, ToAgent::Signal(exec, libc::SIGKILL))]
    );
    // The timeout fires meanwhile: the first reason stays.
    h.advance(Duration::from_secs(3));
    let end = h.frame(key, FromAgent::Exited(exec, ExitStatus::Signal(9)));
    assert_eq!(finished(&end[0]).1.reason, Reason::Killed);
    assert_eq!(
        h.advance(KILL_GRACE * 2),
        [],
        "the grace timer is cancelled"
    );
    assert_eq!(h.core.state(key), Some(State::Ready));
    assert!(matches!(
        h.core.kill_exec(key, exec, Reason::Killed, h.now),
        Err(RuntimeError::NoSuchExecution)
    ));
}

#[test]
fn output_past_the_limit_is_cut_and_the_execution_killed_once() {
    let mut h = Harness::new(2);
    let key = h.ready_sandbox(Some(OWNER));
    let exec = h.core.start_exec(key, spec(10), h.now).unwrap();
    h.actions();
    let chunk = |byte: u8| FromAgent::Output(exec, Stream::Stdout, vec![byte; 60]);
    assert_eq!(h.frame(key, chunk(b'a')).len(), 1);
    let actions = h.frame(key, chunk(b'b'));
    assert_eq!(
        actions,
        [
            notice(
                key,
                OWNER,
                RuntimeEvent::Output(exec, Stream::Stdout, vec![b'b'; 40])
            ),
            // The 20 bytes cut go nowhere: their window is given back at once.
            Action::Send(key, ToAgent::Credit(exec, 20)),
            Action::Send(key, ToAgent::Signal(exec, libc::SIGKILL))
        ]
    );
    assert_eq!(
        h.frame(key, chunk(b'c')),
        [Action::Send(key, ToAgent::Credit(exec, 60))],
        "nothing past the limit reaches the owner, and the agent can drain its pipes"
    );
    let end = h.frame(key, FromAgent::Exited(exec, ExitStatus::Signal(9)));
    let (_, outcome) = finished(&end[0]);
    assert_eq!(outcome.reason, Reason::OutputLimit);
    assert!(outcome.truncated);
}

#[test]
fn output_windows_are_given_back_as_the_owner_takes_output_and_held_while_it_cannot() {
    let mut h = Harness::new(2);
    h.core.settings.max_output_bytes = u64::MAX;
    let key = h.ready_sandbox(Some(OWNER));
    let exec = h.core.start_exec(key, spec(10), h.now).unwrap();
    h.actions();
    // What each action is, with output as its length (windows are large).
    let summary = |actions: Vec<Action>| -> Vec<String> {
        actions
            .into_iter()
            .map(|action| match action {
                Action::Notify(Notice {
                    event: RuntimeEvent::Output(_, _, data),
                    ..
                }) => format!("output {}", data.len()),
                Action::Send(_, ToAgent::Credit(_, bytes)) => format!("credit {bytes}"),
                other => format!("{other:?}"),
            })
            .collect()
    };
    let chunk = |len: usize| FromAgent::Output(exec, Stream::Stdout, vec![b'x'; len]);
    let half = CREDIT_BATCH_BYTES as usize;
    // Credit goes back in batches.
    assert_eq!(
        summary(h.frame(key, chunk(half - 1))),
        [format!("output {}", half - 1)]
    );
    assert_eq!(
        summary(h.frame(key, chunk(1))),
        ["output 1".to_string(), format!("credit {half}")]
    );
    // The owner's buffer is full: nothing is given back, so the agent stops after a window.
    h.core.set_output_paused(key, true);
    assert_eq!(h.actions(), []);
    let window = OUTPUT_WINDOW_BYTES as usize;
    assert_eq!(
        summary(h.frame(key, chunk(window))),
        [format!("output {window}")]
    );
    // The owner caught up: the window reopens.
    h.core.set_output_paused(key, false);
    assert_eq!(
        h.actions(),
        [Action::Send(
            key,
            ToAgent::Credit(exec, OUTPUT_WINDOW_BYTES)
        )]
    );
    h.core.set_output_paused(SandboxKey(99), true);
    assert_eq!(h.actions(), [], "an unknown sandbox has nothing to pause");
}

#[test]
fn one_execution_nobody_reads_is_paused_alone() {
    let mut h = Harness::new(2);
    h.core.settings.max_output_bytes = u64::MAX;
    let key = h.ready_sandbox(Some(OWNER));
    let held = h.core.start_exec(key, spec(10), h.now).unwrap();
    let followed = h.core.start_exec(key, spec(10), h.now).unwrap();
    h.actions();
    let window = OUTPUT_WINDOW_BYTES as usize;
    let credits = |actions: Vec<Action>| -> Vec<(ExecId, u32)> {
        actions
            .into_iter()
            .filter_map(|action| match action {
                Action::Send(_, ToAgent::Credit(exec, bytes)) => Some((exec, bytes)),
                _ => None,
            })
            .collect()
    };
    h.core.set_exec_output_paused(key, held, true);
    assert_eq!(h.actions(), []);
    let chunk = |exec| FromAgent::Output(exec, Stream::Stdout, vec![b'x'; window]);
    assert_eq!(credits(h.frame(key, chunk(held))), [], "held back");
    assert_eq!(
        credits(h.frame(key, chunk(followed))),
        [(followed, OUTPUT_WINDOW_BYTES)],
        "the other execution goes on"
    );
    h.core.set_exec_output_paused(key, held, false);
    assert_eq!(credits(h.actions()), [(held, OUTPUT_WINDOW_BYTES)]);
}

#[test]
fn stdin_goes_in_chunks_and_is_bounded_until_the_agent_writes_it() {
    let mut h = Harness::new(2);
    let key = h.ready_sandbox(Some(OWNER));
    let exec = h.core.start_exec(key, spec(10), h.now).unwrap();
    h.actions();
    let data = vec![b'x'; 2 * MAX_CHUNK_BYTES + 10];
    h.core.write_stdin(key, exec, &data).unwrap();
    let sizes: Vec<usize> = h
        .actions()
        .iter()
        .map(|action| match action {
            Action::Send(_, ToAgent::Stdin(to, chunk)) if *to == exec => chunk.len(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sizes, [MAX_CHUNK_BYTES, MAX_CHUNK_BYTES, 10]);
    let rest = vec![b'y'; MAX_STDIN_IN_FLIGHT as usize - data.len()];
    h.core.write_stdin(key, exec, &rest).unwrap();
    h.actions();
    assert!(matches!(
        h.core.write_stdin(key, exec, b"z"),
        Err(RuntimeError::StdinFull(MAX_STDIN_IN_FLIGHT))
    ));
    assert_eq!(h.actions(), [], "nothing is sent past the bound");
    assert_eq!(
        h.frame(key, FromAgent::StdinWritten(exec, 1)),
        [Action::Notify(Notice {
            owner: OWNER,
            sandbox: key,
            event: RuntimeEvent::StdinWritten(exec, 1)
        })],
        "the owner learns what was written (protocol 2 acknowledges it to the client)"
    );
    h.core.write_stdin(key, exec, b"z").unwrap();
    h.core.close_stdin(key, exec).unwrap();
    assert_eq!(
        h.actions(),
        [
            Action::Send(key, ToAgent::Stdin(exec, b"z".to_vec())),
            Action::Send(key, ToAgent::CloseStdin(exec))
        ]
    );
    assert!(matches!(
        h.core.close_stdin(key, ExecId(9)),
        Err(RuntimeError::NoSuchExecution)
    ));
    assert!(matches!(
        h.core.write_stdin(SandboxKey(99), exec, b"z"),
        Err(RuntimeError::NoSuchSandbox)
    ));
}

#[test]
fn a_checkpoint_asks_the_agent_first_then_runs_runsc_and_the_sandbox_restores_in_place() {
    let mut h = Harness::new(2);
    let key = h.ready_sandbox(Some(OWNER));
    let image = PathBuf::from("/store/image-1");
    h.core.checkpoint(key, image.clone(), false).unwrap();
    assert_eq!(h.actions(), [Action::Send(key, ToAgent::Inspect)]);
    assert!(matches!(
        h.core.checkpoint(key, image.clone(), false),
        Err(RuntimeError::WrongState("already being checkpointed"))
    ));
    let clean = FromAgent::Inspection(Inspection {
        open_tcp_connections: 0,
    });
    assert_eq!(
        h.frame(key, clean),
        [Action::Checkpoint {
            key,
            image: image.clone()
        }]
    );
    assert_eq!(h.core.state(key), Some(State::Checkpointing));
    assert!(matches!(
        h.core.start_exec(key, spec(1), h.now),
        Err(RuntimeError::WrongState("checkpointing"))
    ));
    h.core.checkpoint_exited(key, Ok(()), h.now);
    assert_eq!(
        h.actions(),
        [
            Action::Disconnect(key),
            notice(key, OWNER, RuntimeEvent::Checkpointed(Ok(())))
        ]
    );
    assert_eq!(h.core.state(key), Some(State::Stopped));

    // A snapshot goes on in place: restore from the image it just wrote.
    h.core
        .restore_in_place(key, image.clone(), false, h.now)
        .unwrap();
    assert_eq!(
        h.actions(),
        [
            Action::Start {
                key,
                image: Some(image)
            },
            Action::Send(key, ToAgent::Resume { reset: false })
        ]
    );
    assert_eq!(h.core.state(key), Some(State::Starting));
    // The restored agent still runs execution 4: new ones get later ids.
    assert_eq!(
        h.frame(key, hello(5)),
        [notice(key, OWNER, RuntimeEvent::Ready)]
    );
    assert_eq!(h.core.start_exec(key, spec(1), h.now).unwrap(), ExecId(5));
}

#[test]
fn a_checkpoint_is_refused_while_an_execution_runs_or_tcp_connections_are_open() {
    let mut h = Harness::new(2);
    let key = h.ready_sandbox(Some(OWNER));
    let exec = h.core.start_exec(key, spec(10), h.now).unwrap();
    h.actions();
    assert!(matches!(
        h.core.checkpoint(key, PathBuf::from("/i"), false),
        Err(RuntimeError::WrongState("running an execution"))
    ));
    h.frame(key, FromAgent::Exited(exec, ExitStatus::Code(0)));

    h.core.checkpoint(key, PathBuf::from("/i"), false).unwrap();
    h.actions();
    let busy = FromAgent::Inspection(Inspection {
        open_tcp_connections: 2,
    });
    let actions = h.frame(key, busy);
    let [Action::Notify(Notice {
        event: RuntimeEvent::CheckpointRefused(message),
        ..
    })] = actions.as_slice()
    else {
        panic!("{actions:?}");
    };
    assert!(message.contains("2 open TCP connection(s)"), "{message}");
    assert_eq!(h.core.state(key), Some(State::Ready), "the sandbox runs on");
    h.core.checkpoint(key, PathBuf::from("/i"), false).unwrap();
}

#[test]
fn a_shutdown_checkpoint_takes_running_executions_along_and_a_restore_adopts_them() {
    let mut h = Harness::new(2);
    let key = h.ready_sandbox(Some(OWNER));
    let exec = h.core.start_exec(key, spec(10), h.now).unwrap();
    h.actions();
    h.core.checkpoint(key, PathBuf::from("/i"), true).unwrap();
    assert_eq!(h.actions(), [Action::Send(key, ToAgent::Inspect)]);
    assert_eq!(
        h.advance(Duration::from_secs(60)),
        [],
        "the execution is no longer followed: no timeout"
    );
    assert_eq!(
        h.frame(
            key,
            FromAgent::Output(exec, Stream::Stdout, b"late".to_vec())
        ),
        [Action::Send(key, ToAgent::Credit(exec, 4))],
        "output nobody follows is dropped, and given back so it does not stall"
    );

    // Another instance restores it and follows the execution again.
    let mut other = Harness::new(2);
    let admission = other.core.admit(true).unwrap();
    let restored = other.core.reserve_key();
    let id = SandboxId::random().unwrap();
    let image = PathBuf::from("/store/image-2");
    let origin = Origin::Image {
        image: image.clone(),
        reset: false,
    };
    other
        .core
        .add(restored, id, Some(OWNER), admission, origin, other.now);
    assert_eq!(
        other.actions(),
        [
            Action::Start {
                key: restored,
                image: Some(image)
            },
            Action::Send(restored, ToAgent::Resume { reset: false })
        ]
    );
    assert_eq!(other.core.find(&id), Some(restored));
    other
        .core
        .adopt_exec(
            restored,
            exec,
            Duration::from_secs(60),
            MAX_STDIN_IN_FLIGHT,
            other.now,
        )
        .unwrap();
    other.frame(restored, hello(exec.0 + 1));
    let end = other.frame(restored, FromAgent::Exited(exec, ExitStatus::Code(0)));
    assert_eq!(finished(&end[0]).0, exec);
    assert_eq!(
        other.core.start_exec(restored, spec(1), other.now).unwrap(),
        ExecId(exec.0 + 1)
    );
}

#[test]
fn a_lost_agent_ends_every_execution_before_its_owner_hears_of_it() {
    let mut h = Harness::new(2);
    let key = h.ready_sandbox(Some(OWNER));
    let first = h.core.start_exec(key, spec(10), h.now).unwrap();
    let second = h.core.start_exec(key, spec(10), h.now).unwrap();
    h.actions();
    h.core
        .agent_lost(key, "the sandbox stopped unexpectedly".into(), h.now);
    let actions = h.actions();
    assert_eq!(actions.len(), 4, "{actions:?}");
    assert_eq!(finished(&actions[0]).0, first);
    assert_eq!(finished(&actions[1]).0, second);
    assert_eq!(finished(&actions[1]).1.reason, Reason::SandboxLost);
    assert_eq!(
        actions[2..],
        [
            notice(
                key,
                OWNER,
                RuntimeEvent::Lost("the sandbox stopped unexpectedly".into())
            ),
            Action::Delete(key)
        ]
    );
    h.core.agent_lost(key, "again".into(), h.now);
    assert_eq!(h.actions(), [], "a dead agent is reported once");
}

#[test]
fn a_start_that_times_out_is_reported_and_deleted_without_waiting_for_runsc() {
    let mut h = Harness::new(2);
    let key = h.add_fresh(Some(OWNER));
    assert_eq!(h.advance(Duration::from_secs(29)), []);
    assert_eq!(
        h.advance(Duration::from_secs(1)),
        [
            notice(
                key,
                OWNER,
                RuntimeEvent::StartFailed("the sandbox did not become ready in time".into())
            ),
            Action::Delete(key)
        ]
    );
    assert_eq!(h.core.stats().start_failures, 1);
}

#[test]
fn a_delete_while_runsc_run_runs_waits_for_it() {
    let mut h = Harness::new(2);
    let key = h.add_fresh(Some(OWNER));
    h.core.delete(key, h.now);
    assert_eq!(
        h.actions(),
        [],
        "runsc delete racing runsc run deletes nothing"
    );
    assert_eq!(h.core.state(key), Some(State::Aborting));
    h.core.run_exited(key, Ok(()), h.now);
    assert_eq!(h.actions(), [Action::Delete(key)]);
}

#[test]
fn fresh_starts_that_fail_make_the_server_unready_but_failed_restores_do_not() {
    let mut h = Harness::new(4);
    for _ in 0..2 {
        let key = h.add_fresh(Some(OWNER));
        h.core.run_exited(
            key,
            Err("runsc failed to start the sandbox: boom".into()),
            h.now,
        );
        let actions = h.actions();
        assert_eq!(
            actions,
            [
                notice(
                    key,
                    OWNER,
                    RuntimeEvent::StartFailed("runsc failed to start the sandbox: boom".into())
                ),
                Action::Delete(key)
            ]
        );
        h.core.delete_exited(key, h.now);
        h.actions();
    }
    assert_eq!(h.core.start_problem(3), None);
    h.core
        .count_failed_start("cannot start a sandbox: no runsc", h.now);
    let problem = h.core.start_problem(3).expect("three in a row");
    assert!(problem.contains("no runsc"), "{problem}");

    // A restore whose image does not start says nothing about runsc; a ready sandbox resets.
    let mut h = Harness::new(4);
    let admission = h.core.admit(true).unwrap();
    let key = h.core.reserve_key();
    let origin = Origin::Image {
        image: PathBuf::from("/bad"),
        reset: true,
    };
    h.core.add(
        key,
        SandboxId::random().unwrap(),
        Some(OWNER),
        admission,
        origin,
        h.now,
    );
    h.actions();
    h.core
        .start_failed(key, "cannot run runsc restore: gone".into(), h.now);
    assert_eq!(
        h.actions()[0],
        notice(
            key,
            OWNER,
            RuntimeEvent::StartFailed("cannot run runsc restore: gone".into())
        )
    );
    assert_eq!(h.core.start_problem(1), None);
}

#[test]
fn real_work_takes_the_slot_of_a_pooled_sandbox_and_starts_once_it_is_deleted() {
    let mut h = Harness::new(1);
    let pooled = h.ready_sandbox(None);
    h.core.add_to_fresh_pool(pooled);
    assert_eq!(h.core.pool_ready(), 1);
    assert_eq!(h.core.free_slots(), 0);

    let key = h.add_fresh(Some(OWNER));
    assert_eq!(h.actions(), [Action::Delete(pooled)], "the pooled one goes");
    assert_eq!(h.core.state(key), Some(State::Waiting));
    assert_eq!(h.core.waiting_for_slot(), 1);
    assert_eq!(h.core.stats().pool_evictions, 1);
    h.core.grant_slots(h.now);
    assert_eq!(
        h.actions(),
        [],
        "the slot is still held while runsc delete runs"
    );

    h.core.delete_exited(pooled, h.now);
    assert_eq!(h.actions(), [Action::Release(pooled)], "nobody owned it");
    h.core.grant_slots(h.now);
    assert_eq!(h.actions(), [Action::Start { key, image: None }]);
    assert_eq!(h.core.state(key), Some(State::Starting));
    assert_eq!(
        h.frame(key, hello(1)),
        [notice(key, OWNER, RuntimeEvent::Ready)]
    );
    assert_eq!(h.core.live_sandboxes(), 1);
}

#[test]
fn a_wait_for_a_slot_is_bounded_and_real_work_is_refused_when_it_holds_every_slot() {
    let mut h = Harness::new(1);
    let busy = h.ready_sandbox(Some(OTHER));
    assert!(matches!(
        h.core.admit(true),
        Err(RuntimeError::AtCapacity(1))
    ));
    h.core.delete(busy, h.now);
    h.actions();
    let key = h.add_fresh(Some(OWNER));
    assert_eq!(
        h.core.state(key),
        Some(State::Waiting),
        "it waits for that slot"
    );
    let actions = h.advance(Duration::from_secs(30));
    let [Action::Notify(Notice {
        event: RuntimeEvent::StartFailed(message),
        ..
    }), Action::Release(released), deleted] = actions.as_slice()
    else {
        panic!("{actions:?}");
    };
    assert!(
        message.contains("no slot became free within 30 s"),
        "{message}"
    );
    assert_eq!(*released, key);
    assert_eq!(*deleted, notice(key, OWNER, RuntimeEvent::Deleted));
    assert_eq!(h.core.waiting_for_slot(), 0);
}

#[test]
fn a_slot_granted_to_a_start_that_cannot_spawn_ends_in_a_delete() {
    let mut h = Harness::new(1);
    let busy = h.ready_sandbox(Some(OTHER));
    h.core.delete(busy, h.now);
    let key = h.add_fresh(Some(OWNER));
    h.core.delete_exited(busy, h.now);
    h.core.grant_slots(h.now);
    h.actions();
    h.core
        .start_failed(key, "cannot start a sandbox: no pipes".into(), h.now);
    assert_eq!(
        h.actions(),
        [
            notice(
                key,
                OWNER,
                RuntimeEvent::StartFailed("cannot start a sandbox: no pipes".into())
            ),
            Action::Delete(key)
        ]
    );
}

#[test]
fn pooled_sandboxes_are_handed_over_ready_and_snapshot_pools_are_capped() {
    let mut h = Harness::new(4);
    let pooled = h.ready_sandbox(None);
    h.core.add_to_fresh_pool(pooled);
    assert_eq!(h.core.take_fresh(h.now), Some(pooled));
    assert!(h.core.hand_over(pooled, OWNER));
    assert_eq!(h.actions(), [notice(pooled, OWNER, RuntimeEvent::Ready)]);

    // Three snapshots used with room for two pools: the least recently used pool goes.
    let (a, b, c) = (Path::new("/s/a"), Path::new("/s/b"), Path::new("/s/c"));
    assert_eq!(h.core.take_snapshot(a, h.now), None);
    let in_a = h.ready_sandbox(None);
    h.core.add_to_snapshot_pool(a, in_a, h.now);
    assert_eq!(h.core.take_snapshot(b, h.now), None);
    assert_eq!(h.core.snapshot_pools(), 2);
    assert_eq!(h.core.take_snapshot(c, h.now), None);
    assert_eq!(h.actions(), [Action::Delete(in_a)]);
    assert_eq!(h.core.pool_images(), [c.to_path_buf(), b.to_path_buf()]);
    // A refill that finishes for a dropped pool is deleted at once.
    let late = h.ready_sandbox(None);
    h.core.add_to_snapshot_pool(a, late, h.now);
    assert_eq!(h.actions(), [Action::Delete(late)]);
    h.core.drop_snapshot_pools(|image| image == b, h.now);
    assert_eq!(h.core.pool_images(), [c.to_path_buf()]);
}

#[test]
fn frames_forged_inside_the_sandbox_are_handled_not_trusted() {
    let mut h = Harness::new(2);
    let key = h.ready_sandbox(Some(OWNER));
    // A hello that raises the execution counter to its last id.
    h.frame(key, hello(u32::MAX));
    assert!(matches!(
        h.core.start_exec(key, spec(1), h.now),
        Err(RuntimeError::NoExecIdsLeft)
    ));
    assert_eq!(h.actions(), [], "nothing is sent for a refused execution");
    assert_eq!(
        h.frame(
            key,
            FromAgent::Output(ExecId(3), Stream::Stderr, vec![0; 10])
        ),
        [Action::Send(key, ToAgent::Credit(ExecId(3), 10))],
        "dropped, and given back"
    );
    for frame in [
        FromAgent::Exited(ExecId(3), ExitStatus::Signal(i32::MAX)),
        FromAgent::StdinWritten(ExecId(3), u32::MAX),
        FromAgent::Inspection(Inspection {
            open_tcp_connections: 0,
        }),
    ] {
        assert_eq!(h.frame(key, frame), [], "nobody asked for it");
    }
    assert_eq!(h.core.state(key), Some(State::Ready));
    // Unknown sandboxes are ignored too.
    assert_eq!(h.frame(SandboxKey(77), hello(1)), []);
}

#[test]
fn shutdown_deletes_everything_but_what_is_being_saved() {
    let mut h = Harness::new(4);
    let saved = h.ready_sandbox(Some(OWNER));
    let other = h.ready_sandbox(Some(OTHER));
    let pooled = h.ready_sandbox(None);
    h.core.add_to_fresh_pool(pooled);
    h.core.delete_all_except(&HashSet::from([saved]), h.now);
    assert_eq!(h.actions(), [Action::Delete(other), Action::Delete(pooled)]);
    assert_eq!(h.core.fresh_pool_len(), 0);
    assert_eq!(h.core.state(saved), Some(State::Ready));
}

#[test]
fn deadlines_do_not_overflow() {
    let now = Instant::now();
    assert_eq!(
        deadline(now, Duration::from_secs(5)),
        now + Duration::from_secs(5)
    );
    assert!(deadline(now, Duration::MAX) > now + Duration::from_secs(3600 * 24 * 365));
}

/// A port relay (issue 20) is an execution without a process: `Connect` instead of `Spawn`,
/// no output limit (a download is as large as the application makes it), no timeout; its
/// window works as for any execution.
#[test]
fn a_relay_connects_has_no_output_limit_and_no_timeout() {
    let mut h = Harness::new(2);
    let key = h.ready_sandbox(Some(OWNER));
    let exec = h
        .core
        .start_relay(key, 8000, MAX_STDIN_IN_FLIGHT, h.now)
        .unwrap();
    assert_eq!(
        h.actions(),
        [Action::Send(key, ToAgent::Connect(exec, 8000))]
    );
    assert_eq!(
        h.frame(key, FromAgent::Started(exec)),
        [notice(key, OWNER, RuntimeEvent::ExecStarted(exec))]
    );
    // Far past the output limit (100 bytes here), nothing is cut or killed.
    let mut delivered = 0;
    for _ in 0..10 {
        for action in h.frame(key, FromAgent::Output(exec, Stream::Stdout, vec![1; 60])) {
            match action {
                Action::Notify(Notice {
                    event: RuntimeEvent::Output(_, _, data),
                    ..
                }) => delivered += data.len(),
                Action::Send(_, ToAgent::Credit(..)) => {}
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(delivered, 600);
    assert!(
        h.advance(Duration::from_secs(24 * 3600)).is_empty(),
        "no timeout"
    );
    let end = h.frame(key, FromAgent::Exited(exec, ExitStatus::Code(0)));
    let (ended, outcome) = finished(&end[0]);
    assert_eq!((ended, outcome.reason), (exec, Reason::Exited));
    assert!(!outcome.truncated);
}

/// A pooled sandbox that failed to start makes refills wait, longer at each failure in a row
/// (the tight loop of failing `runsc run`s this replaces); one that starts ends the wait.
#[test]
fn refills_wait_after_failed_starts_and_go_on_after_a_start_succeeds() {
    let mut h = Harness::new(8);
    assert!(h.core.refill_allowed(h.now));
    let mut waits = Vec::new();
    for _ in 0..3 {
        let key = h.add_fresh(None);
        h.core.add_to_fresh_pool(key);
        h.core
            .run_exited(key, Err("runsc: no such file".into()), h.now);
        h.actions();
        h.core.delete_exited(key, h.now);
        h.actions();
        let not_before = h.core.refill_not_before().expect("refills wait");
        assert!(!h.core.refill_allowed(h.now));
        waits.push(not_before - h.now);
        h.now = not_before;
        assert!(h.core.refill_allowed(h.now));
    }
    assert_eq!(
        waits,
        [
            Duration::from_millis(100),
            Duration::from_millis(200),
            Duration::from_millis(400)
        ]
    );
    // A spawn that fails at once counts too.
    h.core.count_failed_start("cannot run runsc: gone", h.now);
    assert!(!h.core.refill_allowed(h.now));
    // Real work's start that succeeds proves runsc works again.
    h.ready_sandbox(Some(OWNER));
    assert!(h.core.refill_allowed(h.now));
    assert_eq!(h.core.refill_not_before(), None);
}

/// Requests that find no ready sandbox deepen the fresh pool (up to `SANDBOX_POOL_MAX`); quiet
/// brings it back to `SANDBOX_POOL_SIZE`, the surplus being deleted.
#[test]
fn requests_that_find_the_pool_empty_deepen_it_and_quiet_shallows_it() {
    let mut h = Harness::new(8);
    assert_eq!(h.core.fresh_pool_target(h.now), 2);
    let pooled = h.ready_sandbox(None);
    h.core.add_to_fresh_pool(pooled);
    // A ready sandbox is a hit.
    assert_eq!(h.core.take_fresh(h.now), Some(pooled));
    assert_eq!(h.core.fresh_pool_target(h.now), 2);
    // One still starting, or none at all: misses.
    let starting = h.add_fresh(None);
    h.core.add_to_fresh_pool(starting);
    assert_eq!(h.core.take_fresh(h.now), Some(starting));
    assert_eq!(h.core.take_fresh(h.now), None);
    assert_eq!(h.core.take_fresh(h.now), None);
    assert_eq!(h.core.fresh_pool_target(h.now), 4, "capped by pool_max");
    let keys: Vec<SandboxKey> = (0..4)
        .map(|_| {
            let key = h.ready_sandbox(None);
            h.core.add_to_fresh_pool(key);
            key
        })
        .collect();
    assert!(h.core.surplus_fresh(h.now).is_empty());
    h.now += crate::runtime::refill::SHRINK_AFTER * 2;
    assert_eq!(h.core.fresh_pool_target(h.now), 2);
    assert_eq!(
        h.core.surplus_fresh(h.now),
        keys[..2],
        "the oldest go first"
    );
    assert_eq!(h.core.fresh_pool_len(), 2);
}

/// The pool's floor is refilled at once. Its deep part (grown with demand) is refilled at once
/// after a request found no ready sandbox (requests wait for starts), but while requests find
/// ready ones only once they pause; at most `POOL_STARTS_AT_ONCE` start at a time, and nothing
/// starts while starts keep failing.
#[test]
fn the_deep_pool_is_refilled_after_a_miss_or_once_requests_pause() {
    let mut settings = settings(16);
    settings.pool_max = 10;
    let mut h = Harness {
        core: Core::new(settings),
        now: Instant::now(),
    };
    let pool_one = |h: &mut Harness, ready: bool| {
        let key = if ready {
            h.ready_sandbox(None)
        } else {
            h.add_fresh(None)
        };
        h.core.add_to_fresh_pool(key);
        key
    };
    assert_eq!(h.core.fresh_refill_wanted(h.now), 2, "the floor");
    for _ in 0..2 {
        pool_one(&mut h, true);
    }
    assert_eq!(h.core.fresh_refill_wanted(h.now), 0);
    // A burst: two requests find ready sandboxes; only the floor comes back.
    for _ in 0..2 {
        assert!(h.core.take_fresh(h.now).is_some());
    }
    assert_eq!(h.core.fresh_pool_target(h.now), 2);
    assert_eq!(h.core.fresh_refill_wanted(h.now), 2);
    let first = pool_one(&mut h, false);
    // The third finds it still starting: a miss deepens the pool by GROWTH_PER_MISS, and the
    // deep part starts at once, POOL_STARTS_AT_ONCE at a time.
    assert_eq!(h.core.take_fresh(h.now), Some(first));
    assert_eq!(h.core.fresh_pool_target(h.now), 2 + GROWTH_PER_MISS);
    assert_eq!(h.core.fresh_refill_wanted(h.now), POOL_STARTS_AT_ONCE);
    let starting: Vec<SandboxKey> = (0..POOL_STARTS_AT_ONCE)
        .map(|_| pool_one(&mut h, false))
        .collect();
    assert_eq!(
        h.core.fresh_refill_wanted(h.now),
        0,
        "as many start already"
    );
    for key in starting {
        h.core.run_exited(key, Ok(()), h.now);
        h.core.on_frame(key, hello(1), h.now);
    }
    h.actions();
    assert_eq!(
        h.core.fresh_refill_wanted(h.now),
        2,
        "after a miss, the rest of the target as starts end"
    );
    // A request finds a ready sandbox: the deep part waits until requests pause.
    assert!(h.core.take_fresh(h.now).is_some());
    assert_eq!(h.core.fresh_pool_len(), POOL_STARTS_AT_ONCE - 1);
    assert_eq!(h.core.fresh_refill_wanted(h.now), 0, "the floor is full");
    assert_eq!(
        h.core.refill_deadline(h.now),
        Some(h.now + DEEP_REFILL_QUIET),
        "the loop wakes for the deep part"
    );
    h.now += DEEP_REFILL_QUIET;
    assert_eq!(
        h.core.fresh_refill_wanted(h.now),
        2 + GROWTH_PER_MISS - (POOL_STARTS_AT_ONCE - 1),
        "then the deep part"
    );
    assert_eq!(h.core.refill_deadline(h.now), None);
    h.core.count_failed_start("runsc: gone", h.now);
    assert_eq!(
        h.core.fresh_refill_wanted(h.now),
        0,
        "not while starts fail"
    );
}

/// While sandboxes start, a used sandbox is disconnected at once (its agent and processes end)
/// but its `runsc delete`, whose CPU would slow the starts, waits: until no sandbox starts any
/// more, `DELETE_DEFER_MAX` at most, never while a request waits for a slot, and for at most
/// `DEFERRED_DELETES_MAX` sandboxes at once. Its slot stays held meanwhile.
#[test]
fn deletes_wait_while_sandboxes_start_within_bounds() {
    let mut h = Harness::new(16);
    let used = h.ready_sandbox(Some(OWNER));
    h.core.delete(used, h.now);
    assert_eq!(
        h.actions(),
        [Action::Delete(used)],
        "nothing starts: at once"
    );
    h.core.delete_exited(used, h.now);
    h.actions();

    let used = h.ready_sandbox(Some(OWNER));
    let starting = h.add_fresh(None);
    h.actions();
    h.core.delete(used, h.now);
    assert_eq!(h.actions(), [Action::Disconnect(used)]);
    assert_eq!(h.core.state(used), Some(State::Deleting));
    assert_eq!(h.core.live_sandboxes(), 2, "its slot is still held");
    h.core.run_exited(starting, Ok(()), h.now);
    h.core.on_frame(starting, hello(1), h.now);
    assert_eq!(
        h.actions(),
        [Action::Delete(used)],
        "the start ended: the delete goes"
    );
    h.core.delete_exited(used, h.now);
    h.actions();

    // A start that goes on: the delete waits DELETE_DEFER_MAX at most.
    let used = h.ready_sandbox(Some(OWNER));
    let _starting = h.add_fresh(None);
    h.actions();
    h.core.delete(used, h.now);
    assert_eq!(h.actions(), [Action::Disconnect(used)]);
    assert_eq!(h.advance(DELETE_DEFER_MAX - Duration::from_millis(1)), []);
    assert_eq!(h.advance(Duration::from_millis(1)), [Action::Delete(used)]);
    h.core.delete_exited(used, h.now);
    h.actions();

    // At most DEFERRED_DELETES_MAX wait; the next goes at once.
    let used: Vec<SandboxKey> = (0..=DEFERRED_DELETES_MAX)
        .map(|_| h.ready_sandbox(Some(OWNER)))
        .collect();
    for key in &used {
        h.core.delete(*key, h.now);
    }
    let actions = h.actions();
    assert_eq!(
        actions
            .iter()
            .filter(|action| matches!(action, Action::Disconnect(_)))
            .count(),
        DEFERRED_DELETES_MAX
    );
    assert_eq!(
        actions.last(),
        Some(&Action::Delete(used[DEFERRED_DELETES_MAX]))
    );
}

/// A request that must wait for a slot ends every deferred delete at once: the slot it waits
/// for may be one of theirs.
#[test]
fn a_request_waiting_for_a_slot_ends_the_deferred_deletes() {
    let mut h = Harness::new(3);
    let used = h.ready_sandbox(Some(OWNER));
    let _busy = h.ready_sandbox(Some(OTHER));
    let _starting = h.add_fresh(None);
    h.actions();
    h.core.delete(used, h.now);
    assert_eq!(h.actions(), [Action::Disconnect(used)]);
    let waiting = h.add_fresh(Some(OTHER));
    assert_eq!(h.core.waiting_for_slot(), 1);
    assert_eq!(h.actions(), [Action::Delete(used)]);
    h.core.delete_exited(used, h.now);
    h.core.grant_slots(h.now);
    assert_eq!(h.core.state(waiting), Some(State::Starting));
}

// ---- Requests in line for a fresh sandbox (issue 15) ----------------------------------------

/// `/execute` requests, each its own connection.
fn http(n: u64) -> Owner {
    Owner::Http(100 + n)
}

impl Harness {
    /// A fresh sandbox started for the pool (still starting).
    fn pooled_start(&mut self) -> SandboxKey {
        let key = self.add_fresh(None);
        self.core.add_to_fresh_pool(key);
        key
    }

    /// `owner` asks for a fresh sandbox as the driver's `claim_fresh` does, the start it may
    /// need admitted as real work and added to the pool.
    fn claim(&mut self, owner: Owner) -> Claimed {
        if let Some(key) = self.core.take_ready_fresh(owner, self.now) {
            return Claimed::Sandbox(key);
        }
        if let Some(admission) = self.core.admit_claim().expect("admitted") {
            let key = self.core.reserve_key();
            let id = SandboxId::random().unwrap();
            self.core
                .add(key, id, None, admission, Origin::Fresh, self.now);
            self.core.add_to_fresh_pool(key);
        }
        Claimed::Queued(self.core.queue_claim(owner, self.now))
    }

    /// The agent of a starting sandbox says hello.
    fn becomes_ready(&mut self, key: SandboxKey) -> Vec<Action> {
        self.core.run_exited(key, Ok(()), self.now);
        self.frame(key, hello(1))
    }
}

fn queued(claimed: Claimed) -> SandboxKey {
    match claimed {
        Claimed::Queued(key) => key,
        Claimed::Sandbox(key) => panic!("given sandbox {key} at once"),
    }
}

/// The sandbox is being deleted: at once, or (while other starts run) disconnected with its
/// `runsc delete` deferred.
fn goes(actions: &[Action], key: SandboxKey) -> bool {
    actions.contains(&Action::Delete(key)) || actions.contains(&Action::Disconnect(key))
}

/// The notices among `actions`.
fn notices(actions: Vec<Action>) -> Vec<Action> {
    actions
        .into_iter()
        .filter(|action| matches!(action, Action::Notify(_)))
        .collect()
}

fn start_failed(claim: SandboxKey, owner: Owner, message: &str) -> Action {
    notice(claim, owner, RuntimeEvent::StartFailed(message.into()))
}

#[test]
fn a_ready_sandbox_goes_to_the_request_that_waited_longest_whichever_start_it_is() {
    let mut h = Harness::new(8);
    let (a, b) = (h.pooled_start(), h.pooled_start());
    // Two starts under way: the first two requests wait in line without a start of their own.
    queued(h.claim(http(1)));
    queued(h.claim(http(2)));
    assert_eq!(h.core.fresh_pool_len(), 2);
    // The third needs one more start, admitted as real work.
    queued(h.claim(http(3)));
    assert_eq!(h.core.fresh_pool_len(), 3);
    let c = h.core.pools.fresh().last().unwrap();
    assert_eq!(h.core.waiting_for_sandbox(), 3);
    // A session (which keeps the sandbox it is given) takes none of the starts in line.
    assert_eq!(h.core.take_fresh(h.now), None);
    // The starts promised to the line are not pool: the pool is refilled beside them, up to
    // its target grown by the misses (4 at most here), as many starting at once.
    assert_eq!(h.core.fresh_pool_target(h.now), 4);
    assert_eq!(h.core.fresh_refill_wanted(h.now), 4);
    // Readiness out of order: the last start first, then the second, then the first.
    assert_eq!(
        h.becomes_ready(c),
        [notice(c, http(1), RuntimeEvent::Ready)]
    );
    assert_eq!(
        h.becomes_ready(b),
        [notice(b, http(2), RuntimeEvent::Ready)]
    );
    assert_eq!(
        h.becomes_ready(a),
        [notice(a, http(3), RuntimeEvent::Ready)]
    );
    assert_eq!(h.core.waiting_for_sandbox(), 0);
    assert_eq!(h.core.fresh_pool_len(), 0, "each went to its request");
    // Nothing is left to time out.
    assert_eq!(h.advance(Duration::from_secs(31)), []);
    // With nobody in line, a ready pooled sandbox is taken at once.
    let d = h.ready_sandbox(None);
    h.core.add_to_fresh_pool(d);
    assert_eq!(h.claim(http(4)), Claimed::Sandbox(d));
    assert_eq!(h.actions(), [notice(d, http(4), RuntimeEvent::Ready)]);
}

#[test]
fn a_request_gone_from_the_line_leaves_its_sandbox_to_the_next_or_the_pool() {
    let mut h = Harness::new(8);
    let (a, b) = (h.pooled_start(), h.pooled_start());
    queued(h.claim(http(1)));
    queued(h.claim(http(2)));
    h.core.withdraw_claims(http(1));
    assert_eq!(h.core.waiting_for_sandbox(), 1);
    assert_eq!(
        h.becomes_ready(b),
        [notice(b, http(2), RuntimeEvent::Ready)]
    );
    // Nobody waits any more: the other start stays in the pool, ready for the next request.
    assert_eq!(h.becomes_ready(a), []);
    assert_eq!(h.core.pool_ready(), 1);
    assert_eq!(
        h.advance(Duration::from_secs(31)),
        [],
        "no timeout for a request gone"
    );
    assert_eq!(h.claim(http(3)), Claimed::Sandbox(a));
    assert_eq!(h.actions(), [notice(a, http(3), RuntimeEvent::Ready)]);

    // A sandbox whose `Ready` found its request gone serves the next one, unused...
    let c = h.pooled_start();
    queued(h.claim(http(4)));
    assert_eq!(
        h.becomes_ready(c),
        [notice(c, http(4), RuntimeEvent::Ready)]
    );
    let d = h.pooled_start();
    queued(h.claim(http(5)));
    h.core.give_back(c, h.now);
    assert_eq!(h.actions(), [notice(c, http(5), RuntimeEvent::Ready)]);
    // ...or goes back to the pool; once used, it is deleted.
    h.core.give_back(c, h.now);
    assert_eq!(h.actions(), []);
    assert!(h.core.pools.is_fresh(c));
    assert_eq!(h.claim(http(6)), Claimed::Sandbox(c));
    h.actions();
    h.core.start_exec(c, spec(10), h.now).unwrap();
    h.actions();
    h.core.give_back(c, h.now);
    assert!(goes(&h.actions(), c));
    assert!(h.core.pools.is_fresh(d));
}

#[test]
fn a_failed_start_fails_the_newest_request_it_leaves_without_a_start() {
    let mut h = Harness::new(8);
    let (a, b) = (h.pooled_start(), h.pooled_start());
    queued(h.claim(http(1)));
    let second = queued(h.claim(http(2)));
    h.core.run_exited(a, Err("runsc: boom".into()), h.now);
    let actions = h.actions();
    assert!(
        actions.contains(&start_failed(second, http(2), "runsc: boom")),
        "{actions:?}"
    );
    assert!(goes(&actions, a));
    assert_eq!(h.core.waiting_for_sandbox(), 1);
    // The oldest is served by the start left.
    assert_eq!(
        notices(h.becomes_ready(b)),
        [notice(b, http(1), RuntimeEvent::Ready)]
    );

    // More starts under way than requests in line: a failure fails nobody.
    let (c, d) = (h.pooled_start(), h.pooled_start());
    queued(h.claim(http(3)));
    h.core.run_exited(c, Err("runsc: boom".into()), h.now);
    let actions = h.actions();
    assert!(goes(&actions, c));
    assert!(!actions
        .iter()
        .any(|action| matches!(action, Action::Notify(_))));
    assert_eq!(
        notices(h.becomes_ready(d)),
        [notice(d, http(3), RuntimeEvent::Ready)]
    );
}

#[test]
fn a_wait_in_line_is_bounded_and_requests_are_refused_only_at_capacity() {
    let mut h = Harness::new(2);
    // Both slots hold real work: nothing to wait for.
    h.ready_sandbox(Some(OWNER));
    h.ready_sandbox(Some(OWNER));
    assert!(
        matches!(h.core.admit_claim(), Err(RuntimeError::AtCapacity(2))),
        "refused like a create"
    );
    // One slot holds real work, the other a start promised to the request in line: a second
    // request is refused too (it would wait for a sandbox the first one gets).
    let mut h = Harness::new(2);
    h.ready_sandbox(Some(OWNER));
    queued(h.claim(http(1)));
    assert!(matches!(
        h.core.admit_claim(),
        Err(RuntimeError::AtCapacity(2))
    ));
    // A pooled start nobody waits for yet serves the next request without a start of its own.
    let mut h = Harness::new(3);
    h.ready_sandbox(Some(OWNER));
    h.pooled_start();
    h.pooled_start();
    queued(h.claim(http(1)));
    assert!(matches!(h.core.admit_claim(), Ok(None)));

    let mut h = Harness::new(2);
    let claim = queued(h.claim(http(1)));
    let start = h
        .core
        .pools
        .fresh()
        .next()
        .expect("a start for the request");
    assert_eq!(h.core.state(start), Some(State::Starting));
    let actions = h.advance(Duration::from_secs(30));
    // Its start timed out at the same time: the request fails once, with the start's reason.
    let failures: Vec<&Action> = actions
        .iter()
        .filter(
            |action| matches!(action, Action::Notify(Notice { owner, .. }) if *owner == http(1)),
        )
        .collect();
    assert_eq!(
        failures,
        [&start_failed(
            claim,
            http(1),
            "the sandbox did not become ready in time"
        )]
    );
    assert_eq!(h.core.waiting_for_sandbox(), 0);

    // A request in line waits its create timeout at most, whatever its starts do.
    let mut h = Harness::new(4);
    let a = h.pooled_start();
    h.now += Duration::from_secs(10);
    let claim = queued(h.claim(http(2)));
    h.now += Duration::from_secs(15);
    let b = h.pooled_start();
    // The first start times out; the second is still under way for the request.
    let actions = h.advance(Duration::from_secs(5));
    assert!(goes(&actions, a));
    assert!(!actions
        .iter()
        .any(|action| matches!(action, Action::Notify(Notice { owner, .. }) if *owner == http(2))));
    let actions = h.advance(Duration::from_secs(10));
    assert_eq!(
        notices(actions),
        [start_failed(
            claim,
            http(2),
            "no sandbox became ready within 30 s; retry shortly"
        )]
    );
    // The start it waited for ends up in the pool.
    assert_eq!(h.becomes_ready(b), []);
    assert_eq!(h.core.pool_ready(), 1);
}

#[test]
fn without_a_pool_a_request_in_line_keeps_the_start_made_for_it() {
    let mut h = Harness {
        core: Core::new(Settings {
            pool_size: 0,
            pool_max: 0,
            ..settings(4)
        }),
        now: Instant::now(),
    };
    queued(h.claim(http(1)));
    let start = h
        .core
        .pools
        .fresh()
        .next()
        .expect("a start for the request");
    assert_eq!(h.core.fresh_pool_target(h.now), 0);
    assert_eq!(
        h.core.surplus_fresh(h.now),
        [],
        "not surplus: the request waits for it"
    );
    assert_eq!(
        h.becomes_ready(start),
        [notice(start, http(1), RuntimeEvent::Ready)]
    );
    assert_eq!(h.core.fresh_pool_len(), 0);
}
