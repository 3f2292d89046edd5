//! The one error type of the shim's task and provider APIs.
//!
//! Every variant says what it is about (the task, the volume, the file, the
//! column) and, where there is one, what to do next. Errors from the
//! protocol library and the format layer are wrapped, not flattened, so
//! `source()` chains keep the detail.

use std::path::PathBuf;
use std::time::Duration;

use sidecar_core::atomic::AtomicError;
use sidecar_core::files::FlagError;
use sidecar_core::manifest::ManifestError;
use sidecar_core::record::RecordError;
use sidecar_core::safepath::PathError;
use sidecar_core::wait::WaitError;
use sidecar_core::{Status, TaskId};

use crate::format::FormatError;
use crate::stream::StreamError;

/// Why a task (or a sidecar) did not deliver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShimError {
    /// The sidecar ran the task and reported a failure in its `done_flag`.
    #[error("task {task} {status}{}{}{}{}", fmt_exit(.exit_code, .signal), fmt_reason(.reason), fmt_tail(.stderr_tail), fmt_hint(.status))]
    TaskFailed {
        task: TaskId,
        status: Status,
        exit_code: Option<i32>,
        signal: Option<i32>,
        reason: Option<String>,
        stderr_tail: String,
    },
    /// The logic exited 0 but left no output file: a logic that forgot its
    /// output, not a partition of zero rows (an empty input is staged with
    /// its schema, and comes back with it).
    #[error("task {task}: no output at {}: the logic exited 0 but wrote no file there (expected $SIDECAR_OUTPUT)", .path.display())]
    NoOutput { task: TaskId, path: PathBuf },
    /// The task's directory disappeared before its outcome was written:
    /// no done flag can come (the logic, or something else, removed it).
    #[error("task {task}: its directory {} was removed before its outcome was written (did the logic delete $SIDECAR_TASK_DIR?)", .path.display())]
    TaskDirGone { task: TaskId, path: PathBuf },
    /// The caller cancelled the task ([`crate::client::CancelToken`]).
    #[error("task {task} was cancelled by the executor side; its logic was stopped")]
    Cancelled { task: TaskId },
    /// The sidecar's heartbeat stopped changing.
    #[error("sidecar unresponsive: heartbeat {} unchanged for {:.1}s (is the sidecar serving {}? check its logs; a hung or killed sidecar stops beating)", .heartbeat.display(), .heartbeat_age.as_secs_f64(), .volume.display())]
    SidecarUnresponsive {
        volume: PathBuf,
        heartbeat: PathBuf,
        heartbeat_age: Duration,
    },
    /// The sidecar process this shim started has exited.
    #[error("sidecar exited ({status}) while serving {}; see its log output above", .volume.display())]
    SidecarExited { volume: PathBuf, status: String },
    /// No `sidecar/ready` appeared in time.
    #[error("no sidecar became ready on {} within {:.1}s{}", .volume.display(), .waited.as_secs_f64(), fmt_detail(.detail))]
    NotReady {
        volume: PathBuf,
        waited: Duration,
        detail: String,
    },
    /// The task's deadline passed (or the sidecar timed it out).
    #[error("task {task} exceeded its deadline of {}{}; it was cancelled", fmt_dur(.timeout), fmt_detail(.detail))]
    Deadline {
        task: TaskId,
        timeout: Duration,
        detail: String,
    },
    /// The sidecar could not be started.
    #[error("cannot start the sidecar ({what}): {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The `docker` CLI failed.
    #[error("`{command}` failed: {message}")]
    Docker { command: String, message: String },
    /// `sidecar-entrypoint` could not be found.
    #[error("cannot find the sidecar-entrypoint binary (looked in: {looked}); pass its path or set $SIDECAR_ENTRYPOINT")]
    EntrypointNotFound { looked: String },
    /// The request is unusable as given.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The other side broke the protocol (a done flag for another task, ...).
    #[error("{}: {message}", .path.display())]
    Protocol { path: PathBuf, message: String },
    /// The caller's input batches failed.
    #[error("reading the task's input batches: {0}")]
    Input(#[source] arrow::error::ArrowError),
    /// The caller's sink refused a batch.
    #[error("delivering output: {0}")]
    Sink(String),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Atomic(#[from] AtomicError),
    #[error(transparent)]
    Wait(#[from] WaitError),
    #[error(transparent)]
    Flag(#[from] FlagError),
    #[error(transparent)]
    Owner(#[from] sidecar_core::owner::OwnerError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ShimError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ShimError::Io { path, source }
    }

    /// Whether the error is about the sidecar (gone, hung, never ready)
    /// rather than about this task's logic or data.
    pub fn is_sidecar_failure(&self) -> bool {
        matches!(
            self,
            ShimError::SidecarUnresponsive { .. }
                | ShimError::SidecarExited { .. }
                | ShimError::NotReady { .. }
                | ShimError::Spawn { .. }
                | ShimError::Docker { .. }
                | ShimError::EntrypointNotFound { .. }
        )
    }
}

fn fmt_exit(code: &Option<i32>, signal: &Option<i32>) -> String {
    match (*code, *signal) {
        (_, Some(sig)) => format!(" (killed by signal {sig})"),
        (Some(code), None) => format!(" (exit code {code})"),
        (None, None) => String::new(),
    }
}

fn fmt_reason(reason: &Option<String>) -> String {
    reason
        .as_deref()
        .filter(|r| !r.is_empty())
        .map(|r| format!(": {r}"))
        .unwrap_or_default()
}

fn fmt_tail(tail: &str) -> String {
    let tail = tail.trim_end();
    if tail.is_empty() {
        String::new()
    } else {
        format!("\n--- stderr (tail) ---\n{tail}")
    }
}

fn fmt_dur(d: &Duration) -> humantime::FormattedDuration {
    humantime::format_duration(*d)
}

fn fmt_hint(status: &Status) -> &'static str {
    match status {
        Status::Lost => "\n(the sidecar lost the task: was the executor lease stale?)",
        _ => "",
    }
}

fn fmt_detail(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_failures_say_what_happened() {
        let task = TaskId::for_attempt(2, 1, "n");
        let err = ShimError::TaskFailed {
            task: task.clone(),
            status: Status::Failed,
            exit_code: None,
            signal: Some(9),
            reason: Some("killed".into()),
            stderr_tail: "out of memory\n".into(),
        };
        assert_eq!(
            err.to_string(),
            "task p2-a1-n failed (killed by signal 9): killed\n--- stderr (tail) ---\nout of memory"
        );
        let err = ShimError::SidecarUnresponsive {
            volume: "/v".into(),
            heartbeat: "/v/sidecar/heartbeat".into(),
            heartbeat_age: Duration::from_millis(6200),
        };
        assert!(err.to_string().starts_with(
            "sidecar unresponsive: heartbeat /v/sidecar/heartbeat unchanged for 6.2s"
        ));
        assert!(err.is_sidecar_failure());
        let err = ShimError::Deadline {
            task,
            timeout: Duration::from_secs(90),
            detail: String::new(),
        };
        assert_eq!(
            err.to_string(),
            "task p2-a1-n exceeded its deadline of 1m 30s; it was cancelled"
        );
    }
}
