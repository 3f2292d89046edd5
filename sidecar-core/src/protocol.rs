//! One task's protocol, from the sidecar's side, driven by the state machine.
//!
//! [`drive`] is a loop: it asks the part that owns the task's current state
//! for the next [`Event`] (the [`Waiter`] while the task is staged or done,
//! the [`Runner`] while it is started or running), asks
//! [`crate::state::transition`] where that event leads, and performs what
//! entering the new state means (the outcome and its manifest on `Done`, the
//! cleanup on `Closed`). It does no I/O itself. An event the machine does not
//! allow in the current state is a [`ProtocolError::State`], so a broken part
//! is an error a test can provoke, not a silently reordered run.
//!
//! The real parts are the file-backed [`crate::files::FileFlags`] (waiter
//! and flag writer, both modes) and the entrypoint's process runner; the
//! tests below use recording fakes, which is how every path through the
//! protocol is tested in milliseconds.

use std::future::Future;
use std::path::PathBuf;

use crate::atomic::AtomicError;
use crate::id::TaskId;
use crate::manifest::ManifestError;
use crate::record::{Outcome, OutputFile, RecordError, Status, TaskSpec, Timestamp};
use crate::safepath::PathError;
use crate::state::{transition, StateError, TaskEvent, TaskState};
use crate::wait::WaitError;

/// Something that happened to a task: the input of the state machine, with
/// what each event carries. `C` is the runner's handle on a running logic.
#[derive(Debug)]
pub enum Event<C> {
    /// The start flag, with its spec.
    Start(TaskSpec),
    /// The start flag is there but unusable (the logic never runs).
    Invalid(Reject),
    /// The logic was started.
    Spawned(C),
    /// The logic could not be started.
    Rejected(Reject),
    /// Stopped before the logic started, for this reason.
    Cancelled(String),
    /// The logic ended.
    Exited(Exit),
    /// The close flag.
    Close,
}

impl<C> Event<C> {
    /// The machine's view of the event.
    pub fn kind(&self) -> TaskEvent {
        match self {
            Event::Start(_) | Event::Invalid(_) => TaskEvent::StartFlag,
            Event::Spawned(_) => TaskEvent::Spawned,
            Event::Rejected(_) => TaskEvent::Rejected,
            Event::Cancelled(_) => TaskEvent::Cancelled,
            Event::Exited(exit) => TaskEvent::Exited(exit.status),
            Event::Close => TaskEvent::CloseFlag,
        }
    }
}

/// Why a started task did not run its logic. The outcome's reason is this
/// error's text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Reject {
    /// The start flag could not be read or parsed.
    #[error(transparent)]
    Spec(#[from] RecordError),
    /// The spec asks for something this sidecar will not do.
    #[error("{}: {why}", .path.display())]
    Refused { path: PathBuf, why: String },
    /// The program could not be started.
    #[error("cannot run {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The task's files could not be prepared.
    #[error("cannot prepare {}: {source}", .path.display())]
    Setup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How the logic ended, as far as the runner knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub status: Status,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    pub cpu_ms: Option<u64>,
    pub max_rss_kib: Option<u64>,
    pub stderr_tail: String,
}

impl Exit {
    /// The exit of a logic that returned `code`.
    pub fn code(code: i32) -> Self {
        Self {
            status: if code == 0 {
                Status::Succeeded
            } else {
                Status::Failed
            },
            exit_code: Some(code),
            signal: None,
            reason: (code != 0).then(|| format!("command exited with status {code}")),
            cpu_ms: None,
            max_rss_kib: None,
            stderr_tail: String::new(),
        }
    }
}

/// Errors that end the protocol without (or after) the done flag: the task
/// directory is gone, the sidecar shuts down, a flag cannot be written, or a
/// part produced an event the machine does not allow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error("task {task}: {reason}")]
    Stopped { task: TaskId, reason: String },
    #[error("task {task}: {source}")]
    Wait {
        task: TaskId,
        #[source]
        source: WaitError,
    },
    #[error("task {task}: {source}")]
    Write {
        task: TaskId,
        #[source]
        source: AtomicError,
    },
    #[error("task {task}: {}: {source}", .path.display())]
    Io {
        task: TaskId,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("task {task}: {source}")]
    Refused {
        task: TaskId,
        #[source]
        source: PathError,
    },
    #[error("task {task}: its directory is gone")]
    Gone { task: TaskId },
    #[error("task {task}: {source}")]
    State {
        task: TaskId,
        #[source]
        source: StateError,
    },
}

/// Waits for the flags the executor writes.
pub trait Waiter: Send + Sync {
    /// The event that ends `Staged`: the start flag ([`Event::Start`] or
    /// [`Event::Invalid`]) or the close flag (abandoned before it started).
    fn wait_start<C: Send>(
        &self,
        task: &TaskId,
    ) -> impl Future<Output = Result<Event<C>, ProtocolError>> + Send;
    /// The event that ends `Done`: the close flag.
    fn wait_close<C: Send>(
        &self,
        task: &TaskId,
    ) -> impl Future<Output = Result<Event<C>, ProtocolError>> + Send;
}

/// Runs the logic.
pub trait Runner: Send + Sync {
    /// The handle on a running logic.
    type Child: Send;
    /// The event that ends `Started`: [`Event::Spawned`], [`Event::Rejected`]
    /// or [`Event::Cancelled`] (stopped while waiting to start).
    fn spawn(
        &self,
        task: &TaskId,
        spec: &TaskSpec,
    ) -> impl Future<Output = Event<Self::Child>> + Send;
    /// The event that ends `Running`: [`Event::Exited`], once the logic has
    /// ended (stopped on cancellation or at its deadline).
    fn wait(
        &self,
        task: &TaskId,
        spec: &TaskSpec,
        child: Self::Child,
    ) -> impl Future<Output = Event<Self::Child>> + Send;
}

/// A [`Runner`] whose logic does nothing and succeeds at once: what is
/// left is the protocol's own cost (the bench, the handshake example).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopRunner;

impl Runner for NoopRunner {
    type Child = ();
    async fn spawn(&self, _task: &TaskId, _spec: &TaskSpec) -> Event<()> {
        Event::Spawned(())
    }
    async fn wait(&self, _task: &TaskId, _spec: &TaskSpec, _child: ()) -> Event<()> {
        Event::Exited(Exit::code(0))
    }
}

/// Writes what the sidecar reports, and cleans up.
pub trait FlagWriter: Send + Sync {
    /// The manifest of the task's outputs (after a successful run).
    fn manifest(&self, task: &TaskId, spec: &TaskSpec) -> Result<Vec<OutputFile>, ManifestError>;
    fn write_done(&self, task: &TaskId, outcome: &Outcome) -> Result<(), ProtocolError>;
    /// Removes what is left of the task after its close flag.
    fn cleanup(&self, task: &TaskId) -> Result<(), ProtocolError>;
    /// Called on every transition, after it: how a caller observes the
    /// machine (the `Running` state included).
    fn entered(&self, _task: &TaskId, _state: TaskState) {}
}

/// How a driven task ended.
// Returned once per task: boxing the outcome would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Finish {
    /// Closed before it started: no done flag was written.
    Abandoned,
    /// Taken up done (its done flag written by an earlier run) and closed.
    Resumed,
    /// The done flag was written with `outcome`, and the task was closed.
    Done { outcome: Outcome, cause: Cause },
}

/// Why a task is done.
#[derive(Debug)]
pub enum Cause {
    /// The logic ran and ended so.
    Exited(Exit),
    /// The logic never ran: the spec was unusable or it could not start.
    Rejected(Reject),
    /// The logic never ran: the task was stopped first.
    Cancelled(String),
}

/// The machine of one task, and who hears of its transitions.
struct Machine<'a, F> {
    task: &'a TaskId,
    state: TaskState,
    writer: &'a F,
}

impl<F: FlagWriter> Machine<'_, F> {
    fn step(&mut self, event: TaskEvent) -> Result<TaskState, ProtocolError> {
        self.state = transition(self.state, event).map_err(|source| ProtocolError::State {
            task: self.task.clone(),
            source,
        })?;
        tracing::debug!(task = %self.task, state = %self.state, "transition");
        self.writer.entered(self.task, self.state);
        Ok(self.state)
    }
}

/// Runs one task through `staged -> started -> running -> done -> closed`,
/// or whichever path its events take.
pub async fn drive<W: Waiter, R: Runner, F: FlagWriter>(
    task: &TaskId,
    waiter: &W,
    runner: &R,
    writer: &F,
) -> Result<Finish, ProtocolError> {
    run_from(TaskState::Staged, task, waiter, runner, writer).await
}

/// Takes up a task whose done flag was written before (by an earlier run
/// of the sidecar): it is never run again, only closed.
pub async fn resume_done<W: Waiter, R: Runner, F: FlagWriter>(
    task: &TaskId,
    status: Status,
    waiter: &W,
    runner: &R,
    writer: &F,
) -> Result<Finish, ProtocolError> {
    run_from(TaskState::Done(status), task, waiter, runner, writer).await
}

async fn run_from<W: Waiter, R: Runner, F: FlagWriter>(
    state: TaskState,
    task: &TaskId,
    waiter: &W,
    runner: &R,
    writer: &F,
) -> Result<Finish, ProtocolError> {
    let resumed = matches!(state, TaskState::Done(_));
    let mut machine = Machine {
        task,
        state,
        writer,
    };
    let mut spec = TaskSpec::default();
    let mut started_at = Timestamp::now();
    let mut pending: Option<Event<R::Child>> = None;
    let mut done: Option<(Outcome, Cause)> = None;
    loop {
        let event = match (machine.state, pending.take()) {
            (_, Some(event)) => event,
            (TaskState::Staged, None) => waiter.wait_start(task).await?,
            (TaskState::Started, None) => runner.spawn(task, &spec).await,
            (TaskState::Done(_), None) => waiter.wait_close(task).await?,
            // Entering Running always queues the child's exit, and Closed
            // returns below: neither is ever without an event.
            (state @ (TaskState::Running | TaskState::Closed), None) => {
                return Err(ProtocolError::Stopped {
                    task: task.clone(),
                    reason: format!("no event source in state {state}"),
                })
            }
        };
        let (event, outputs) = list_outputs(task, &spec, writer, event);
        let state = machine.step(event.kind())?;
        match event {
            Event::Start(s) => {
                spec = s;
                started_at = Timestamp::now();
            }
            Event::Invalid(reject) => pending = Some(Event::Rejected(reject)),
            Event::Spawned(child) => pending = Some(runner.wait(task, &spec, child).await),
            Event::Rejected(reject) => {
                done = Some(finish(task, started_at, Cause::Rejected(reject)))
            }
            Event::Cancelled(why) => done = Some(finish(task, started_at, Cause::Cancelled(why))),
            Event::Exited(exit) => done = Some(finish(task, started_at, Cause::Exited(exit))),
            Event::Close => {}
        }
        match state {
            TaskState::Done(_) => {
                if let Some((outcome, _)) = &mut done {
                    outcome.outputs = outputs;
                    outcome.finish_now();
                    writer.write_done(task, outcome)?;
                }
            }
            TaskState::Closed => {
                writer.cleanup(task)?;
                return Ok(match done {
                    Some((outcome, cause)) => Finish::Done { outcome, cause },
                    None if resumed => Finish::Resumed,
                    None => Finish::Abandoned,
                });
            }
            _ => {}
        }
    }
}

/// The manifest of a successful exit's outputs; an exit whose outputs
/// cannot be listed is a failure, decided before the machine hears of it,
/// so that it enters `Done(failed)`.
fn list_outputs<C, F: FlagWriter>(
    task: &TaskId,
    spec: &TaskSpec,
    writer: &F,
    event: Event<C>,
) -> (Event<C>, Vec<OutputFile>) {
    match event {
        Event::Exited(mut exit) if exit.status == Status::Succeeded => {
            match writer.manifest(task, spec) {
                Ok(outputs) => (Event::Exited(exit), outputs),
                Err(e) => {
                    exit.status = Status::Failed;
                    exit.reason = Some(e.to_string());
                    (Event::Exited(exit), Vec::new())
                }
            }
        }
        other => (other, Vec::new()),
    }
}

/// The outcome of a task that is done because of `cause`.
fn finish(task: &TaskId, started_at: Timestamp, cause: Cause) -> (Outcome, Cause) {
    let mut o = Outcome::new(task.as_str(), Status::Failed, started_at);
    match &cause {
        Cause::Exited(exit) => {
            o.status = exit.status;
            o.exit_code = exit.exit_code;
            o.signal = exit.signal;
            o.reason = exit.reason.clone();
            o.cpu_ms = exit.cpu_ms;
            o.max_rss_kib = exit.max_rss_kib;
            o.stderr_tail = exit.stderr_tail.clone();
        }
        Cause::Rejected(reject) => o.reason = Some(reject.to_string()),
        Cause::Cancelled(why) => {
            o.status = Status::Cancelled;
            o.reason = Some(format!("cancelled before it started: {why}"));
        }
    }
    (o, cause)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// What a fake part says when asked for its next event.
    #[derive(Debug, Clone)]
    enum Say {
        Start,
        Invalid,
        Spawned,
        SpawnFails,
        Cancelled,
        Exit(i32),
        Killed,
        Close,
        Abort,
    }

    fn event(say: &Say) -> Result<Event<u32>, String> {
        Ok(match say {
            Say::Start => Event::Start(TaskSpec {
                timeout_ms: Some(5),
                ..Default::default()
            }),
            Say::Invalid => Event::Invalid(Reject::Refused {
                path: "start_flag".into(),
                why: "malformed task spec JSON".into(),
            }),
            Say::Spawned => Event::Spawned(42),
            Say::SpawnFails => Event::Rejected(Reject::Spawn {
                program: "nope".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }),
            Say::Cancelled => Event::Cancelled("cancel_flag".into()),
            Say::Exit(code) => Event::Exited(Exit::code(*code)),
            Say::Killed => Event::Exited(Exit {
                status: Status::Cancelled,
                exit_code: None,
                signal: Some(9),
                reason: Some("cancelled: killed by SIGKILL".into()),
                cpu_ms: None,
                max_rss_kib: None,
                stderr_tail: "bye".into(),
            }),
            Say::Close => Event::Close,
            Say::Abort => return Err("shutting down".into()),
        })
    }

    /// One recording fake for all three parts: each call takes the next
    /// scripted answer and is logged, as is every transition.
    struct Fake {
        script: Mutex<VecDeque<Say>>,
        manifest: Result<Vec<OutputFile>, String>,
        log: Mutex<Vec<String>>,
        done: Mutex<Option<Outcome>>,
    }

    impl Fake {
        fn new(script: &[Say], manifest: Result<Vec<OutputFile>, String>) -> Self {
            Self {
                script: Mutex::new(script.iter().cloned().collect()),
                manifest,
                log: Mutex::default(),
                done: Mutex::default(),
            }
        }
        fn next(&self, call: &str) -> Result<Event<u32>, String> {
            self.log.lock().unwrap().push(call.to_owned());
            let say = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .expect("script ran out");
            event(&say)
        }
        fn push(&self, line: String) {
            self.log.lock().unwrap().push(line);
        }
    }

    fn stopped(task: &TaskId, reason: String) -> ProtocolError {
        ProtocolError::Stopped {
            task: task.clone(),
            reason,
        }
    }

    impl Waiter for Fake {
        async fn wait_start<C: Send>(&self, task: &TaskId) -> Result<Event<C>, ProtocolError> {
            match self.next("wait_start").map_err(|r| stopped(task, r))? {
                Event::Spawned(_) => panic!("a waiter cannot produce a child"),
                other => Ok(relabel(other)),
            }
        }
        async fn wait_close<C: Send>(&self, task: &TaskId) -> Result<Event<C>, ProtocolError> {
            match self.next("wait_close").map_err(|r| stopped(task, r))? {
                Event::Spawned(_) => panic!("a waiter cannot produce a child"),
                other => Ok(relabel(other)),
            }
        }
    }

    /// An event without a child, for another child type.
    fn relabel<C>(e: Event<u32>) -> Event<C> {
        match e {
            Event::Start(s) => Event::Start(s),
            Event::Invalid(r) => Event::Invalid(r),
            Event::Rejected(r) => Event::Rejected(r),
            Event::Cancelled(c) => Event::Cancelled(c),
            Event::Exited(x) => Event::Exited(x),
            Event::Close | Event::Spawned(_) => Event::Close,
        }
    }

    impl Runner for Fake {
        type Child = u32;
        async fn spawn(&self, _task: &TaskId, spec: &TaskSpec) -> Event<u32> {
            self.next(&format!("spawn timeout={:?}", spec.timeout_ms))
                .unwrap_or(Event::Cancelled("scripted abort".into()))
        }
        async fn wait(&self, _task: &TaskId, _spec: &TaskSpec, child: u32) -> Event<u32> {
            self.next(&format!("wait {child}"))
                .unwrap_or(Event::Cancelled("scripted abort".into()))
        }
    }

    impl FlagWriter for Fake {
        fn manifest(
            &self,
            _task: &TaskId,
            _spec: &TaskSpec,
        ) -> Result<Vec<OutputFile>, ManifestError> {
            self.push("manifest".into());
            self.manifest
                .clone()
                .map_err(|e| ManifestError::NotRegular {
                    path: e.into(),
                    kind: "symbolic link",
                })
        }
        fn write_done(&self, _task: &TaskId, o: &Outcome) -> Result<(), ProtocolError> {
            self.push(format!("write_done {}", o.status));
            *self.done.lock().unwrap() = Some(o.clone());
            Ok(())
        }
        fn cleanup(&self, _task: &TaskId) -> Result<(), ProtocolError> {
            self.push("cleanup".into());
            Ok(())
        }
        fn entered(&self, _task: &TaskId, state: TaskState) {
            self.push(format!("-> {state}"));
        }
    }

    fn file() -> OutputFile {
        OutputFile {
            path: "part.csv".into(),
            bytes: 3,
            checksum: "xxh3-64:0".into(),
        }
    }

    struct Case {
        name: &'static str,
        script: &'static [Say],
        manifest: Result<Vec<OutputFile>, String>,
        want_calls: &'static [&'static str],
        /// status, exit code, reason contains, outputs; None: no outcome
        want: Option<(Status, Option<i32>, &'static str, usize)>,
    }

    fn cases() -> Vec<Case> {
        use Say::*;
        vec![
            Case {
                name: "success lists outputs",
                script: &[Start, Spawned, Exit(0), Close],
                manifest: Ok(vec![file()]),
                want_calls: &[
                    "wait_start",
                    "-> started",
                    "spawn timeout=Some(5)",
                    "-> running",
                    "wait 42",
                    "manifest",
                    "-> done(succeeded)",
                    "write_done succeeded",
                    "wait_close",
                    "-> closed",
                    "cleanup",
                ],
                want: Some((Status::Succeeded, Some(0), "", 1)),
            },
            Case {
                name: "failure writes the done flag without a manifest",
                script: &[Start, Spawned, Exit(3), Close],
                manifest: Ok(vec![file()]),
                want_calls: &[
                    "wait_start",
                    "-> started",
                    "spawn timeout=Some(5)",
                    "-> running",
                    "wait 42",
                    "-> done(failed)",
                    "write_done failed",
                    "wait_close",
                    "-> closed",
                    "cleanup",
                ],
                want: Some((Status::Failed, Some(3), "status 3", 0)),
            },
            Case {
                name: "spawn failure is a failed outcome with the reason",
                script: &[Start, SpawnFails, Close],
                manifest: Ok(vec![]),
                want_calls: &[
                    "wait_start",
                    "-> started",
                    "spawn timeout=Some(5)",
                    "-> done(failed)",
                    "write_done failed",
                    "wait_close",
                    "-> closed",
                    "cleanup",
                ],
                want: Some((Status::Failed, None, "cannot run \"nope\"", 0)),
            },
            Case {
                name: "invalid spec never runs the logic",
                script: &[Invalid, Close],
                manifest: Ok(vec![]),
                want_calls: &[
                    "wait_start",
                    "-> started",
                    "-> done(failed)",
                    "write_done failed",
                    "wait_close",
                    "-> closed",
                    "cleanup",
                ],
                want: Some((Status::Failed, None, "malformed", 0)),
            },
            Case {
                name: "bad output fails a successful run",
                script: &[Start, Spawned, Exit(0), Close],
                manifest: Err("output/part.csv".into()),
                want_calls: &[
                    "wait_start",
                    "-> started",
                    "spawn timeout=Some(5)",
                    "-> running",
                    "wait 42",
                    "manifest",
                    "-> done(failed)",
                    "write_done failed",
                    "wait_close",
                    "-> closed",
                    "cleanup",
                ],
                want: Some((Status::Failed, Some(0), "symbolic link", 0)),
            },
            Case {
                name: "cancelled while running keeps the signal and stderr",
                script: &[Start, Spawned, Killed, Close],
                manifest: Ok(vec![]),
                want_calls: &[
                    "wait_start",
                    "-> started",
                    "spawn timeout=Some(5)",
                    "-> running",
                    "wait 42",
                    "-> done(cancelled)",
                    "write_done cancelled",
                    "wait_close",
                    "-> closed",
                    "cleanup",
                ],
                want: Some((Status::Cancelled, None, "SIGKILL", 0)),
            },
            Case {
                name: "cancelled before it started: no run is recorded",
                script: &[Start, Cancelled, Close],
                manifest: Ok(vec![]),
                want_calls: &[
                    "wait_start",
                    "-> started",
                    "spawn timeout=Some(5)",
                    "-> done(cancelled)",
                    "write_done cancelled",
                    "wait_close",
                    "-> closed",
                    "cleanup",
                ],
                want: Some((Status::Cancelled, None, "before it started: cancel_flag", 0)),
            },
            Case {
                name: "closed before it started: abandoned, cleaned up, no done flag",
                script: &[Close],
                manifest: Ok(vec![]),
                want_calls: &["wait_start", "-> closed", "cleanup"],
                want: None,
            },
            Case {
                name: "abort while waiting for start writes nothing",
                script: &[Abort],
                manifest: Ok(vec![]),
                want_calls: &["wait_start"],
                want: None,
            },
            Case {
                name: "abort while waiting for close keeps the directory",
                script: &[Start, Spawned, Exit(0), Abort],
                manifest: Ok(vec![]),
                want_calls: &[
                    "wait_start",
                    "-> started",
                    "spawn timeout=Some(5)",
                    "-> running",
                    "wait 42",
                    "manifest",
                    "-> done(succeeded)",
                    "write_done succeeded",
                    "wait_close",
                ],
                want: None,
            },
        ]
    }

    #[tokio::test]
    async fn protocol_table() {
        let task = TaskId::new("p0-a0").unwrap();
        for case in cases() {
            let fake = Fake::new(case.script, case.manifest);
            let got = drive(&task, &fake, &fake, &fake).await;
            assert_eq!(*fake.log.lock().unwrap(), case.want_calls, "{}", case.name);
            let aborted = case.script.iter().any(|s| matches!(s, Say::Abort));
            match (case.want, got) {
                (Some((status, code, reason, outputs)), Ok(Finish::Done { outcome: o, .. })) => {
                    assert_eq!(o.status, status, "{}", case.name);
                    assert_eq!(o.exit_code, code, "{}", case.name);
                    let why = o.reason.clone().unwrap_or_default();
                    assert!(why.contains(reason), "{}: {why:?}", case.name);
                    assert_eq!(o.outputs.len(), outputs, "{}", case.name);
                    assert_eq!(o.task_id, "p0-a0");
                    assert_eq!(
                        fake.done.lock().unwrap().as_ref(),
                        Some(&o),
                        "{}",
                        case.name
                    );
                }
                (None, Ok(Finish::Abandoned)) if !aborted => {
                    assert!(fake.done.lock().unwrap().is_none(), "{}", case.name);
                }
                (None, Err(e)) if aborted => {
                    assert!(e.to_string().contains("p0-a0"), "{}: {e}", case.name);
                }
                (want, got) => panic!("{}: wanted {want:?}, got {got:?}", case.name),
            }
        }
    }

    /// A part that produces an event its state does not allow is an error
    /// naming the task, the state and the event; nothing is written.
    #[tokio::test]
    async fn an_illegal_event_is_an_error() {
        use Say::*;
        let task = TaskId::new("p0-a0").unwrap();
        let cases: &[(&[Say], &str, &str)] = &[
            (&[Exit(0)], "staged", "logic exited (succeeded)"),
            (&[Start, Close], "started", "close flag"),
            (&[Start, Spawned, Start], "running", "start flag"),
            (
                &[Start, Spawned, Exit(0), Cancelled],
                "done(succeeded)",
                "cancelled",
            ),
        ];
        for (script, state, event) in cases {
            let fake = Fake::new(script, Ok(vec![]));
            let err = drive(&task, &fake, &fake, &fake).await.unwrap_err();
            assert!(matches!(err, ProtocolError::State { .. }), "{err}");
            let text = err.to_string();
            assert!(
                text.contains("p0-a0") && text.contains(state) && text.contains(event),
                "{text}"
            );
            let writes = fake
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.starts_with("cleanup"))
                .count();
            assert_eq!(writes, 0, "{text}");
        }
    }
}
