//! The task state machine, as a pure type: no I/O, no clocks.
//!
//! ```text
//!            StartFlag          Spawned            Finished(status)
//!   Staged ───────────▶ Started ────────▶ Running ─────────────────▶ Done(status)
//!     │                   │ Rejected / Cancelled                        │
//!     │                   └──────────────────────────▶ Done(failed|cancelled)
//!     │ CloseFlag (abandoned before it started)                         │ CloseFlag
//!     └──────────────────────────────────────────────────────▶ Closed ◀─┘
//! ```

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
    StartFlag,
    Spawned,
    /// The spec was invalid or the logic could not be started.
    Rejected,
    /// Cancelled before the logic started.
    Cancelled,
    Finished(Status),
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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateError {
    #[error("illegal transition: {event:?} in state {from}")]
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
        (S::Running, E::Finished(s)) => S::Done(s),
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
            (S::Running, E::Finished(Succeeded), S::Done(Succeeded)),
            (S::Running, E::Finished(TimedOut), S::Done(TimedOut)),
            (S::Running, E::Finished(Lost), S::Done(Lost)),
            (S::Done(Failed), E::CloseFlag, S::Closed),
        ];
        for (from, ev, to) in ok {
            assert_eq!(transition(*from, *ev), Ok(*to), "{from} --{ev:?}-->");
        }
        let bad: &[(TaskState, TaskEvent)] = &[
            (S::Staged, E::Spawned),
            (S::Staged, E::Finished(Succeeded)),
            (S::Started, E::StartFlag),
            (S::Started, E::CloseFlag),
            (S::Running, E::StartFlag),
            (S::Running, E::CloseFlag),
            (S::Running, E::Spawned),
            (S::Done(Succeeded), E::StartFlag),
            (S::Done(Succeeded), E::Finished(Failed)),
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
            assert!(err.to_string().contains(&from.to_string()));
        }
    }
}
