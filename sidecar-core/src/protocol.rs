//! One task's protocol, from the sidecar's side, over injected parts.
//!
//! [`drive`] walks a task through the state machine. It does no I/O itself:
//! waiting for flags ([`Waiter`]), running the logic ([`Runner`]) and
//! writing results ([`FlagWriter`]) are traits. The entrypoint supplies the
//! real file and process versions; the tests below supply recording fakes,
//! which is how every path through the protocol is tested in milliseconds.

use std::future::Future;

use crate::id::TaskId;
use crate::record::{Outcome, OutputFile, Status, TaskSpec, Timestamp};
use crate::state::{transition, StateError, TaskEvent, TaskState};

/// What a [`Waiter`] found in the start flag.
#[derive(Clone, Debug, PartialEq)]
pub enum Start {
    Spec(TaskSpec),
    /// The start flag is there but unusable; the reason goes in the outcome.
    Invalid(String),
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

/// Errors that end the protocol without a done flag: the volume is gone, the
/// sidecar shuts down, a wait hit its deadline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error("task {task}: {message}")]
    Aborted { task: TaskId, message: String },
    #[error("task {task}: {source}")]
    State {
        task: TaskId,
        #[source]
        source: StateError,
    },
}

pub trait Waiter: Send + Sync {
    fn wait_start(
        &self,
        task: &TaskId,
    ) -> impl Future<Output = Result<Start, ProtocolError>> + Send;
    fn wait_close(&self, task: &TaskId) -> impl Future<Output = Result<(), ProtocolError>> + Send;
}

pub trait Runner: Send + Sync {
    /// Runs the logic to completion. `Err` means it could not be started;
    /// the message is the outcome's reason.
    fn run(
        &self,
        task: &TaskId,
        spec: &TaskSpec,
    ) -> impl Future<Output = Result<Exit, String>> + Send;
}

pub trait FlagWriter: Send + Sync {
    /// The manifest of the task's outputs (after a successful run).
    fn manifest(&self, task: &TaskId) -> Result<Vec<OutputFile>, String>;
    fn write_done(&self, task: &TaskId, outcome: &Outcome) -> Result<(), ProtocolError>;
    /// Removes the task's directory after the close flag.
    fn cleanup(&self, task: &TaskId) -> Result<(), ProtocolError>;
}

fn step(task: &TaskId, state: &mut TaskState, ev: TaskEvent) -> Result<(), ProtocolError> {
    *state = transition(*state, ev).map_err(|source| ProtocolError::State {
        task: task.clone(),
        source,
    })?;
    tracing::debug!(task = %task, state = %state, "transition");
    Ok(())
}

/// Runs one task through `staged -> started -> running -> done -> closed`.
/// Returns the outcome that was written to the done flag.
pub async fn drive<W: Waiter, R: Runner, F: FlagWriter>(
    task: &TaskId,
    waiter: &W,
    runner: &R,
    writer: &F,
) -> Result<Outcome, ProtocolError> {
    let mut state = TaskState::Staged;
    let start = waiter.wait_start(task).await?;
    step(task, &mut state, TaskEvent::StartFlag)?;
    let started_at = Timestamp::now();
    let mut outcome = match start {
        Start::Invalid(reason) => {
            step(task, &mut state, TaskEvent::Rejected)?;
            let mut o = Outcome::new(task.as_str(), Status::Failed, started_at);
            o.reason = Some(reason);
            o
        }
        Start::Spec(spec) => match runner.run(task, &spec).await {
            Err(reason) => {
                step(task, &mut state, TaskEvent::Rejected)?;
                let mut o = Outcome::new(task.as_str(), Status::Failed, started_at);
                o.reason = Some(reason);
                o
            }
            Ok(exit) => {
                step(task, &mut state, TaskEvent::Spawned)?;
                let mut o = Outcome::new(task.as_str(), exit.status, started_at);
                o.exit_code = exit.exit_code;
                o.signal = exit.signal;
                o.reason = exit.reason;
                o.cpu_ms = exit.cpu_ms;
                o.max_rss_kib = exit.max_rss_kib;
                o.stderr_tail = exit.stderr_tail;
                if o.status == Status::Succeeded {
                    match writer.manifest(task) {
                        Ok(outputs) => o.outputs = outputs,
                        Err(reason) => {
                            o.status = Status::Failed;
                            o.reason = Some(reason);
                        }
                    }
                }
                step(task, &mut state, TaskEvent::Finished(o.status))?;
                o
            }
        },
    };
    outcome.finished_at = Timestamp::now();
    writer.write_done(task, &outcome)?;
    waiter.wait_close(task).await?;
    step(task, &mut state, TaskEvent::CloseFlag)?;
    writer.cleanup(task)?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);
    impl Log {
        fn push(&self, s: impl Into<String>) {
            self.0.lock().unwrap().push(s.into());
        }
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    struct FakeWaiter<'a> {
        log: &'a Log,
        start: Result<Start, String>,
        close: Result<(), String>,
    }
    impl Waiter for FakeWaiter<'_> {
        async fn wait_start(&self, task: &TaskId) -> Result<Start, ProtocolError> {
            self.log.push("wait_start");
            self.start
                .clone()
                .map_err(|message| ProtocolError::Aborted {
                    task: task.clone(),
                    message,
                })
        }
        async fn wait_close(&self, task: &TaskId) -> Result<(), ProtocolError> {
            self.log.push("wait_close");
            self.close
                .clone()
                .map_err(|message| ProtocolError::Aborted {
                    task: task.clone(),
                    message,
                })
        }
    }

    struct FakeRunner<'a> {
        log: &'a Log,
        result: Result<Exit, String>,
    }
    impl Runner for FakeRunner<'_> {
        async fn run(&self, _task: &TaskId, spec: &TaskSpec) -> Result<Exit, String> {
            self.log.push(format!("run timeout={:?}", spec.timeout_ms));
            self.result.clone()
        }
    }

    struct FakeWriter<'a> {
        log: &'a Log,
        manifest: Result<Vec<OutputFile>, String>,
        done: Mutex<Option<Outcome>>,
    }
    impl FlagWriter for FakeWriter<'_> {
        fn manifest(&self, _task: &TaskId) -> Result<Vec<OutputFile>, String> {
            self.log.push("manifest");
            self.manifest.clone()
        }
        fn write_done(&self, _task: &TaskId, o: &Outcome) -> Result<(), ProtocolError> {
            self.log.push(format!("write_done {}", o.status));
            *self.done.lock().unwrap() = Some(o.clone());
            Ok(())
        }
        fn cleanup(&self, _task: &TaskId) -> Result<(), ProtocolError> {
            self.log.push("cleanup");
            Ok(())
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
        start: Result<Start, String>,
        run: Result<Exit, String>,
        manifest: Result<Vec<OutputFile>, String>,
        close: Result<(), String>,
        want_calls: &'static [&'static str],
        /// status, exit code, reason contains, outputs
        want: Option<(Status, Option<i32>, &'static str, usize)>,
    }

    #[tokio::test]
    async fn protocol_table() {
        let spec = Start::Spec(TaskSpec {
            timeout_ms: Some(5),
            ..Default::default()
        });
        let killed = Exit {
            status: Status::Cancelled,
            exit_code: None,
            signal: Some(9),
            reason: Some("cancelled: killed by SIGKILL".into()),
            cpu_ms: None,
            max_rss_kib: None,
            stderr_tail: "bye".into(),
        };
        let cases = vec![
            Case {
                name: "success lists outputs",
                start: Ok(spec.clone()),
                run: Ok(Exit::code(0)),
                manifest: Ok(vec![file()]),
                close: Ok(()),
                want_calls: &[
                    "wait_start",
                    "run timeout=Some(5)",
                    "manifest",
                    "write_done succeeded",
                    "wait_close",
                    "cleanup",
                ],
                want: Some((Status::Succeeded, Some(0), "", 1)),
            },
            Case {
                name: "failure writes the done flag without a manifest",
                start: Ok(spec.clone()),
                run: Ok(Exit::code(3)),
                manifest: Ok(vec![file()]),
                close: Ok(()),
                want_calls: &[
                    "wait_start",
                    "run timeout=Some(5)",
                    "write_done failed",
                    "wait_close",
                    "cleanup",
                ],
                want: Some((Status::Failed, Some(3), "status 3", 0)),
            },
            Case {
                name: "spawn failure is a failed outcome with the reason",
                start: Ok(spec.clone()),
                run: Err("cannot run \"nope\": No such file or directory".into()),
                manifest: Ok(vec![]),
                close: Ok(()),
                want_calls: &[
                    "wait_start",
                    "run timeout=Some(5)",
                    "write_done failed",
                    "wait_close",
                    "cleanup",
                ],
                want: Some((Status::Failed, None, "No such file", 0)),
            },
            Case {
                name: "invalid spec never runs the logic",
                start: Ok(Start::Invalid(
                    "start_flag: malformed task spec JSON".into(),
                )),
                run: Ok(Exit::code(0)),
                manifest: Ok(vec![]),
                close: Ok(()),
                want_calls: &["wait_start", "write_done failed", "wait_close", "cleanup"],
                want: Some((Status::Failed, None, "malformed", 0)),
            },
            Case {
                name: "bad output fails a successful run",
                start: Ok(spec.clone()),
                run: Ok(Exit::code(0)),
                manifest: Err("output part.csv is a symbolic link".into()),
                close: Ok(()),
                want_calls: &[
                    "wait_start",
                    "run timeout=Some(5)",
                    "manifest",
                    "write_done failed",
                    "wait_close",
                    "cleanup",
                ],
                want: Some((Status::Failed, Some(0), "symbolic link", 0)),
            },
            Case {
                name: "cancelled keeps the signal and stderr",
                start: Ok(spec.clone()),
                run: Ok(killed),
                manifest: Ok(vec![]),
                close: Ok(()),
                want_calls: &[
                    "wait_start",
                    "run timeout=Some(5)",
                    "write_done cancelled",
                    "wait_close",
                    "cleanup",
                ],
                want: Some((Status::Cancelled, None, "SIGKILL", 0)),
            },
            Case {
                name: "abort while waiting for start writes nothing",
                start: Err("shutting down".into()),
                run: Ok(Exit::code(0)),
                manifest: Ok(vec![]),
                close: Ok(()),
                want_calls: &["wait_start"],
                want: None,
            },
            Case {
                name: "abort while waiting for close keeps the directory",
                start: Ok(spec.clone()),
                run: Ok(Exit::code(0)),
                manifest: Ok(vec![]),
                close: Err("executor lease stale".into()),
                want_calls: &[
                    "wait_start",
                    "run timeout=Some(5)",
                    "manifest",
                    "write_done succeeded",
                    "wait_close",
                ],
                want: None,
            },
        ];
        let task = TaskId::new("p0-a0").unwrap();
        for case in cases {
            let log = Log::default();
            let w = FakeWaiter {
                log: &log,
                start: case.start,
                close: case.close,
            };
            let r = FakeRunner {
                log: &log,
                result: case.run,
            };
            let f = FakeWriter {
                log: &log,
                manifest: case.manifest,
                done: Mutex::new(None),
            };
            let got = drive(&task, &w, &r, &f).await;
            assert_eq!(log.take(), case.want_calls, "{}", case.name);
            match case.want {
                Some((status, code, reason, outputs)) => {
                    let o = got.unwrap_or_else(|e| panic!("{}: {e}", case.name));
                    assert_eq!(o.status, status, "{}", case.name);
                    assert_eq!(o.exit_code, code, "{}", case.name);
                    assert!(
                        o.reason.clone().unwrap_or_default().contains(reason),
                        "{}: {:?}",
                        case.name,
                        o.reason
                    );
                    assert_eq!(o.outputs.len(), outputs, "{}", case.name);
                    assert_eq!(o.task_id, "p0-a0");
                    assert_eq!(f.done.lock().unwrap().as_ref(), Some(&o), "{}", case.name);
                }
                None => {
                    let e = got.unwrap_err().to_string();
                    assert!(e.contains("p0-a0"), "{}: {e}", case.name);
                }
            }
        }
    }
}
