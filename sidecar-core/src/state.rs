//! The task state machine, as a pure type: no I/O, no clocks.
//!
//! ```text
//!            StartFlag          Spawned            Exited(status)
//!   Staged ───────────▶ Started ────────▶ Running ───────────────▶ Done(status)
//!     │                   │ Rejected  ──────────────────────────▶ Done(failed)
//!     │                   │ Cancelled ──────────────────────────▶ Done(cancelled)
//!     │                   │ DoneFlag(status) (executor's view) ─▶ Done(status)
//!     │ CloseFlag (abandoned before it started)                      │ CloseFlag
//!     └─────────────────────────────────────────────────────▶ Closed ◀┘
//! ```
//!
//! Both sides walk the same machine. The sidecar sees every event; the
//! executor sees its own (it writes the start and close flags, it may give
//! up and cancel) and the done flag, which for it is the one way out of
//! `Started` or `Running` ([`TaskEvent::DoneFlag`]): it cannot see the logic
//! start. Any other event is an [`StateError::Illegal`] naming both.

use std::fmt;

use crate::record::Status;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Inputs are being staged; no start flag yet.
    Staged,
    /// The start flag is there; the logic is not running yet.
    Started,
    /// The logic runs.
    Running,
    /// The done flag is written with this status.
    Done(Status),
    /// Outputs collected; the task directory goes away.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskEvent {
    /// The start flag appeared (sidecar) or was written (executor).
    StartFlag,
    /// The logic was started.
    Spawned,
    /// The spec was unusable or the logic could not be started.
    Rejected,
    /// Stopped before the logic ran (sidecar), or given up on (executor).
    Cancelled,
    /// The logic ended with this status.
    Exited(Status),
    /// The done flag was read with this status (the executor's view).
    DoneFlag(Status),
    /// The close flag.
    CloseFlag,
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskState::Staged => f.write_str("staged"),
            TaskState::Started => f.write_str("started"),
            TaskState::Running => f.write_str("running"),
            TaskState::Done(s) => write!(f, "done({s})"),
            TaskState::Closed => f.write_str("closed"),
        }
    }
}

impl fmt::Display for TaskEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskEvent::StartFlag => f.write_str("start flag"),
            TaskEvent::Spawned => f.write_str("logic started"),
            TaskEvent::Rejected => f.write_str("rejected"),
            TaskEvent::Cancelled => f.write_str("cancelled"),
            TaskEvent::Exited(s) => write!(f, "logic exited ({s})"),
            TaskEvent::DoneFlag(s) => write!(f, "done flag ({s})"),
            TaskEvent::CloseFlag => f.write_str("close flag"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateError {
    #[error("illegal transition: {event} in state {from}")]
    Illegal { from: TaskState, event: TaskEvent },
}

/// The transition function.
pub fn transition(from: TaskState, event: TaskEvent) -> Result<TaskState, StateError> {
    use TaskEvent as E;
    use TaskState as S;
    let to = match (from, event) {
        (S::Staged, E::StartFlag) => S::Started,
        (S::Staged, E::CloseFlag) => S::Closed,
        (S::Started, E::Spawned) => S::Running,
        (S::Started, E::Rejected) => S::Done(Status::Failed),
        (S::Started, E::Cancelled) => S::Done(Status::Cancelled),
        (S::Running, E::Exited(s)) => S::Done(s),
        (S::Started | S::Running, E::DoneFlag(s)) => S::Done(s),
        (S::Done(_), E::CloseFlag) => S::Closed,
        (from, event) => return Err(StateError::Illegal { from, event }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::*;
    use TaskEvent as E;
    use TaskState as S;

    #[test]
    fn transition_table() {
        let ok: &[(TaskState, TaskEvent, TaskState)] = &[
            (S::Staged, E::StartFlag, S::Started),
            (S::Staged, E::CloseFlag, S::Closed),
            (S::Started, E::Spawned, S::Running),
            (S::Started, E::Rejected, S::Done(Failed)),
            (S::Started, E::Cancelled, S::Done(Cancelled)),
            (S::Started, E::DoneFlag(Succeeded), S::Done(Succeeded)),
            (S::Running, E::Exited(Succeeded), S::Done(Succeeded)),
            (S::Running, E::Exited(TimedOut), S::Done(TimedOut)),
            (S::Running, E::Exited(Lost), S::Done(Lost)),
            (S::Running, E::DoneFlag(Failed), S::Done(Failed)),
            (S::Done(Failed), E::CloseFlag, S::Closed),
        ];
        for (from, ev, to) in ok {
            assert_eq!(transition(*from, *ev), Ok(*to), "{from} --{ev}-->");
        }
        let bad: &[(TaskState, TaskEvent)] = &[
            (S::Staged, E::Spawned),
            (S::Staged, E::Exited(Succeeded)),
            (S::Staged, E::DoneFlag(Succeeded)),
            (S::Staged, E::Cancelled),
            (S::Started, E::StartFlag),
            (S::Started, E::CloseFlag),
            (S::Started, E::Exited(Succeeded)),
            (S::Running, E::StartFlag),
            (S::Running, E::CloseFlag),
            (S::Running, E::Spawned),
            (S::Running, E::Cancelled),
            (S::Done(Succeeded), E::StartFlag),
            (S::Done(Succeeded), E::Exited(Failed)),
            (S::Done(Succeeded), E::DoneFlag(Failed)),
            (S::Closed, E::CloseFlag),
            (S::Closed, E::StartFlag),
        ];
        for (from, ev) in bad {
            let err = transition(*from, *ev).unwrap_err();
            assert_eq!(
                err,
                StateError::Illegal {
                    from: *from,
                    event: *ev
                }
            );
            let text = err.to_string();
            assert!(text.contains(&from.to_string()), "{text}");
            assert!(text.contains(&ev.to_string()), "{text}");
        }
    }
}
