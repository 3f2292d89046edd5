//! The protocol's effects on the volume, written once for every user:
//! the sidecar side ([`FileFlags`], the file-backed [`Waiter`] and
//! [`FlagWriter`] of both modes) and the executor side ([`ExecutorFlags`]).
//!
//! The entrypoint's `oneshot` and `serve` modes, the benchmark and the
//! tests all use these, so what is measured and tested is what runs.
//!
//! * Waits are [`Watch`] waits: armed before the check, woken by inotify,
//!   rechecked on a tick, and ended early by the [`Stop`] the caller holds
//!   (a shutdown, a drain).
//! * Flags are written atomically ([`crate::atomic`]) and read bounded,
//!   without following links ([`crate::record::read_flag`]).
//! * The outcome always gets written: when the volume is full, the task's
//!   output is discarded to make room and a smaller outcome says so.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::atomic::{write_atomic, write_atomic_beneath, AtomicError, Durability};
use crate::beneath::{Beneath, Kind};
use crate::id::TaskId;
use crate::layout::{TaskDir, Volume, CANCEL_FLAG, CLOSE_FLAG, DONE_FLAG, OWNER, START_FLAG};
use crate::manifest::{self, ManifestError};
use crate::owner::OwnerProbe;
use crate::protocol::{Event, FlagWriter, ProtocolError, Reject, Waiter};
use crate::record::{read_flag_beneath, Outcome, OutputFile, RecordError, Status, TaskSpec};
use crate::safepath::PathError;
use crate::state::{transition, StateError, TaskEvent, TaskState};
use crate::wait::{WaitError, Watch};

/// Where one task's files are: the volume root in `oneshot` mode, its
/// `tasks/<id>/` directory in `serve` mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFiles {
    /// Every path below is resolved from the volume root through this,
    /// never through a link.
    volume: Beneath,
    dir: PathBuf,
    /// Listed in the manifest (serve mode); `None`: the outputs are named by
    /// the executor (the Foundry layout), nothing is listed.
    output: Option<PathBuf>,
    /// Whether closing the task removes `dir` (serve mode).
    owns_dir: bool,
    /// The lock file of the task's executor-side owner (serve mode).
    owner: Option<PathBuf>,
}

impl TaskFiles {
    /// The Foundry layout: flags at the volume root, which is never removed.
    pub fn oneshot(volume: &Volume) -> Self {
        Self {
            volume: volume.beneath(),
            dir: volume.root().to_owned(),
            output: None,
            owns_dir: false,
            owner: None,
        }
    }

    /// A serve-mode task directory, removed when the task is closed.
    pub fn serve(task: &TaskDir) -> Self {
        Self {
            volume: task.beneath(),
            dir: task.root().to_owned(),
            output: Some(task.output()),
            owns_dir: true,
            owner: Some(task.owner()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The resolver the task's paths are opened through.
    pub fn beneath(&self) -> &Beneath {
        &self.volume
    }
    /// Whether something is at `path`, reached without following a link.
    pub fn exists(&self, path: &Path) -> bool {
        self.volume.exists(path)
    }
    /// Whether the task's directory is gone (serve mode): removed, or
    /// replaced by something that is not a real directory (a link).
    pub fn gone(&self) -> bool {
        self.owns_dir && !self.volume.is_dir(&self.dir)
    }
    /// Why the task's directory is unusable: replaced by a link (named),
    /// or gone.
    fn gone_error(&self, task: &TaskId) -> ProtocolError {
        match self.volume.kind(&self.dir) {
            Ok(Some(Kind::Symlink)) => ProtocolError::Refused {
                task: task.clone(),
                source: PathError::Symlink {
                    path: self.dir.clone(),
                },
            },
            _ => ProtocolError::Gone { task: task.clone() },
        }
    }
    pub fn start_flag(&self) -> PathBuf {
        self.dir.join(START_FLAG)
    }
    pub fn done_flag(&self) -> PathBuf {
        self.dir.join(DONE_FLAG)
    }
    pub fn close_flag(&self) -> PathBuf {
        self.dir.join(CLOSE_FLAG)
    }
    pub fn cancel_flag(&self) -> PathBuf {
        self.dir.join(CANCEL_FLAG)
    }
    pub fn output(&self) -> Option<&Path> {
        self.output.as_deref()
    }
}

/// Ends the waits of the [`FileFlags`] holding it, with a reason: the
/// sidecar's shutdown or drain. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Stop(tokio::sync::watch::Receiver<Option<String>>);

/// The sending half of [`Stop`].
#[derive(Debug)]
pub struct StopSender(tokio::sync::watch::Sender<Option<String>>);

impl Stop {
    /// A stop and the sender that raises it.
    pub fn new() -> (StopSender, Stop) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        (StopSender(tx), Stop(rx))
    }

    /// A stop that is never raised.
    pub fn never() -> Stop {
        Self::new().1
    }

    /// The reason, once raised.
    pub fn reason(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Resolves with the reason when raised (never, if the sender is gone
    /// without raising it).
    pub async fn raised(&self) -> String {
        let mut rx = self.0.clone();
        let raised = match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        match raised {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }
}

impl StopSender {
    /// Raises the stop (the first reason stays).
    pub fn raise(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.0.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// A [`Stop`] that this sender raises.
    pub fn subscribe(&self) -> Stop {
        Stop(self.0.subscribe())
    }
}

/// The sidecar side of one task's flags: its file-backed [`Waiter`] and
/// [`FlagWriter`].
#[derive(Debug)]
pub struct FileFlags {
    files: TaskFiles,
    watch: Arc<Watch>,
    stop: Stop,
    /// The task's executor-side owner, when it has one ([`crate::owner`]).
    owner: Option<OwnerProbe>,
    /// The status the written done flag says (after a full-disk fallback,
    /// not the one the protocol asked for).
    written: Mutex<Option<Status>>,
}

impl FileFlags {
    /// The flags of `files`, waited for through `watch` (which must watch
    /// their directory), until `stop` is raised.
    pub fn new(files: TaskFiles, watch: Arc<Watch>, stop: Stop) -> Self {
        let owner = files
            .owner
            .as_deref()
            .and_then(|o| OwnerProbe::open_beneath(&files.volume, o));
        Self {
            files,
            watch,
            stop,
            owner,
            written: Mutex::new(None),
        }
    }

    /// The status of the outcome this task's done flag holds, once written:
    /// what to log, rather than the status the protocol meant to write.
    pub fn written_status(&self) -> Option<Status> {
        *self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, task: &TaskId, outcome: &Outcome) -> Result<(), ProtocolError> {
        *self.written.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome.status);
        logged(task, outcome)
    }

    pub fn files(&self) -> &TaskFiles {
        &self.files
    }

    /// Whether the task had an executor-side owner and it is gone (its
    /// process died): nobody will collect the task or close it.
    pub fn owner_gone(&self) -> bool {
        self.owner.as_ref().is_some_and(OwnerProbe::gone)
    }

    /// Waits until `found` returns an event, or the stop is raised.
    async fn wait_for<C>(
        &self,
        task: &TaskId,
        what: &str,
        mut found: impl FnMut() -> Option<Event<C>>,
    ) -> Result<Event<C>, ProtocolError> {
        let wait = self
            .watch
            .wait_until_async(what, None, || Ok::<_, WaitError>(found()));
        tokio::select! {
            r = wait => r.map_err(|source| ProtocolError::Wait { task: task.clone(), source }),
            reason = self.stop.raised() => {
                // A flag raised just before the stop, whose event the watch
                // has not delivered yet, still counts.
                found().ok_or_else(|| ProtocolError::Stopped { task: task.clone(), reason })
            }
        }
    }

    /// The start flag's spec, or why it is unusable.
    fn read_start<C>(&self) -> Event<C> {
        let path = self.files.start_flag();
        match read_flag_beneath(&self.files.volume, &path, "task spec")
            .and_then(|bytes| TaskSpec::parse(&bytes, &path))
        {
            Ok(spec) => Event::Start(spec),
            Err(e) => Event::Invalid(Reject::Spec(e)),
        }
    }
}

impl Waiter for FileFlags {
    async fn wait_start<C: Send>(&self, task: &TaskId) -> Result<Event<C>, ProtocolError> {
        let (start, close) = (self.files.start_flag(), self.files.close_flag());
        let what = start.display().to_string();
        let files = &self.files;
        self.wait_for(task, &what, || {
            if files.exists(&start) {
                Some(self.read_start())
            } else if files.exists(&close) || files.gone() || self.owner_gone() {
                // Abandoned before it started.
                Some(Event::Close)
            } else {
                None
            }
        })
        .await
    }

    async fn wait_close<C: Send>(&self, task: &TaskId) -> Result<Event<C>, ProtocolError> {
        let close = self.files.close_flag();
        let what = close.display().to_string();
        let files = &self.files;
        // An owner that died will never close the task: reclaim it. A task
        // directory replaced by a link is gone too: cleanup removes the link.
        self.wait_for(task, &what, || {
            (files.exists(&close) || files.gone() || self.owner_gone()).then_some(Event::Close)
        })
        .await
    }
}

impl FlagWriter for FileFlags {
    fn manifest(&self, _task: &TaskId, spec: &TaskSpec) -> Result<Vec<OutputFile>, ManifestError> {
        match self.files.output() {
            // In stream mode the executor's FIFOs carry the output: they
            // are not files to list.
            Some(dir) => manifest::scan_beneath(&self.files.volume, dir, spec.stream),
            None => Ok(Vec::new()),
        }
    }

    fn write_done(&self, task: &TaskId, outcome: &Outcome) -> Result<(), ProtocolError> {
        if self.files.gone() {
            return Err(self.files.gone_error(task));
        }
        let path = self.files.done_flag();
        let volume = &self.files.volume;
        let first = match write_outcome_beneath(volume, &path, outcome) {
            Ok(()) => return self.record(task, outcome),
            Err(e) => e,
        };
        // Most likely a full volume: free what this task's logic wrote
        // (`output/` included) and say so in a smaller outcome, so the
        // executor learns why instead of waiting for a done flag that never
        // comes. Only a task directory of its own has anything to free.
        if self.files.owns_dir {
            free_scratch(volume, self.files.dir());
        }
        let failed = compact(outcome, &first);
        write_outcome_beneath(volume, &path, &failed).map_err(|source| ProtocolError::Write {
            task: task.clone(),
            source,
        })?;
        self.record(task, &failed)
    }

    fn cleanup(&self, task: &TaskId) -> Result<(), ProtocolError> {
        if !self.files.owns_dir {
            return Ok(());
        }
        self.watch.remove(self.files.dir());
        // Through descriptors from the volume root: a link (the task
        // directory itself, or anything in it) is removed, never followed.
        self.files
            .volume
            .remove_all(self.files.dir())
            .map_err(|source| ProtocolError::Refused {
                task: task.clone(),
                source,
            })
    }
}

/// What a failed task's directory keeps when the volume is full: the
/// executor's flags and its owner lock. Everything else (the logic's
/// scratch files anywhere in the directory, its captured streams, the
/// staged input) is removed to make room for the outcome.
const KEPT: &[&str] = &[START_FLAG, CANCEL_FLAG, CLOSE_FLAG, DONE_FLAG, OWNER];

fn free_scratch(volume: &Beneath, dir: &Path) {
    // Listed and removed through descriptors from the volume root: a link
    // (the task directory itself, or an entry) is removed, never followed.
    let Ok(entries) = volume.dir(dir).and_then(|d| d.entries()) else {
        return;
    };
    for (name, _kind) in entries {
        if KEPT.iter().any(|k| name == *k) {
            continue;
        }
        let path = dir.join(&name);
        if let Err(e) = volume.remove_all(&path) {
            tracing::warn!("cannot remove {} to free space: {e}", path.display());
        }
    }
}

fn logged(task: &TaskId, outcome: &Outcome) -> Result<(), ProtocolError> {
    tracing::info!(
        task = %task,
        status = %outcome.status,
        reason = outcome.reason.as_deref().unwrap_or(""),
        "done_flag written"
    );
    Ok(())
}

/// Writes an outcome atomically, as pretty JSON.
pub fn write_outcome(path: &Path, outcome: &Outcome) -> Result<(), AtomicError> {
    write_atomic(path, &outcome_bytes(outcome), Durability::Visible)
}

/// [`write_outcome`] on the volume `root`, never through a link.
pub fn write_outcome_beneath(
    root: &Beneath,
    path: &Path,
    outcome: &Outcome,
) -> Result<(), AtomicError> {
    write_atomic_beneath(root, path, &outcome_bytes(outcome), Durability::Visible)
}

fn outcome_bytes(outcome: &Outcome) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(outcome).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The failed outcome written when `outcome` itself could not be.
fn compact(outcome: &Outcome, why: &AtomicError) -> Outcome {
    let mut failed = outcome.clone();
    failed.status = Status::Failed;
    failed.outputs.clear();
    failed.stderr_tail.clear();
    failed.reason = Some(format!(
        "{}{}cannot write the outcome ({why}); the task's output and scratch files were discarded to free space",
        outcome.reason.as_deref().unwrap_or(""),
        if outcome.reason.is_some() { "; " } else { "" },
    ));
    failed
}

/// Why the executor side could not do its part of a task's protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlagError {
    #[error(transparent)]
    Write(#[from] AtomicError),
    #[error(transparent)]
    Wait(#[from] WaitError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("{}: the outcome is for task {found:?}, not {task} (a stale or foreign done flag)", .path.display())]
    Foreign {
        path: PathBuf,
        task: TaskId,
        found: String,
    },
    #[error("task {task}: {source}")]
    State {
        task: TaskId,
        #[source]
        source: StateError,
    },
}

/// The executor side of one task's flags: it writes the start, cancel and
/// close flags and reads the done flag, walking the task's state machine
/// from its end (see [`crate::state`]). `Sync`: a stream-mode task reads
/// its outcome on one thread while another writes its input.
#[derive(Debug)]
pub struct ExecutorFlags {
    dir: TaskDir,
    /// The task's volume: every flag is resolved from its root.
    volume: Beneath,
    state: Mutex<TaskState>,
}

impl ExecutorFlags {
    /// The flags of a staged task.
    pub fn new(dir: TaskDir) -> Self {
        Self {
            volume: dir.beneath(),
            dir,
            state: Mutex::new(TaskState::Staged),
        }
    }

    pub fn dir(&self) -> &TaskDir {
        &self.dir
    }

    pub fn id(&self) -> &TaskId {
        self.dir.id()
    }

    /// Where the task stands, as this side knows it.
    pub fn state(&self) -> TaskState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn step(&self, event: TaskEvent) -> Result<TaskState, FlagError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *state = transition(*state, event).map_err(|source| FlagError::State {
            task: self.id().clone(),
            source,
        })?;
        Ok(*state)
    }

    /// Writes the start flag with `spec`: the sidecar may run the task.
    pub fn start(&self, spec: &TaskSpec) -> Result<(), FlagError> {
        transition(self.state(), TaskEvent::StartFlag).map_err(|source| FlagError::State {
            task: self.id().clone(),
            source,
        })?;
        let bytes = serde_json::to_vec(spec).unwrap_or_default();
        write_atomic_beneath(
            &self.volume,
            &self.dir.start_flag(),
            &bytes,
            Durability::Visible,
        )?;
        self.step(TaskEvent::StartFlag)?;
        Ok(())
    }

    /// The outcome, once the done flag is there. A done flag for another
    /// task, or one that is there before this side started the task, is
    /// an error, never an outcome.
    pub fn outcome(&self) -> Result<Option<Outcome>, FlagError> {
        let path = self.dir.done_flag();
        let bytes = match read_flag_beneath(&self.volume, &path, "outcome") {
            Ok(b) => b,
            Err(RecordError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        };
        let outcome = Outcome::parse(&bytes, &path)?;
        if outcome.task_id != self.id().as_str() {
            return Err(FlagError::Foreign {
                path,
                task: self.id().clone(),
                found: outcome.task_id,
            });
        }
        match self.state() {
            // Seen before: the same outcome again.
            TaskState::Done(status) if status == outcome.status => {}
            _ => {
                self.step(TaskEvent::DoneFlag(outcome.status))?;
            }
        }
        Ok(Some(outcome))
    }

    /// Asks the sidecar to stop the task (if it has not finished): its
    /// logic is stopped, its outcome says `cancelled`.
    pub fn cancel(&self) -> Result<(), FlagError> {
        if matches!(self.state(), TaskState::Started | TaskState::Running) {
            write_atomic_beneath(
                &self.volume,
                &self.dir.cancel_flag(),
                b"",
                Durability::Visible,
            )?;
        }
        Ok(())
    }

    /// Writes the close flag: this side is done with the task (its outputs
    /// collected, or given up on) and the sidecar removes its directory.
    pub fn close(&self) -> Result<(), FlagError> {
        if matches!(self.state(), TaskState::Started | TaskState::Running) {
            // Given up on before its outcome.
            self.step(TaskEvent::Cancelled)?;
        }
        if self.state() == TaskState::Closed {
            return Ok(());
        }
        write_atomic_beneath(
            &self.volume,
            &self.dir.close_flag(),
            b"",
            Durability::Visible,
        )?;
        self.step(TaskEvent::CloseFlag)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(dir: &Path) -> ExecutorFlags {
        let volume = Volume::new(dir);
        let t = volume.task(&TaskId::new("p1-a0").unwrap());
        std::fs::create_dir_all(t.root()).unwrap();
        ExecutorFlags::new(t)
    }

    #[test]
    fn the_executor_walks_the_machine() {
        let dir = tempfile::tempdir().unwrap();
        let t = task(dir.path());
        assert_eq!(t.outcome().unwrap(), None);
        t.start(&TaskSpec::default()).unwrap();
        assert_eq!(t.state(), TaskState::Started);
        let err = t.start(&TaskSpec::default()).unwrap_err().to_string();
        assert!(err.contains("start flag in state started"), "{err}");
        let outcome = Outcome::new("p1-a0", Status::Succeeded, crate::Timestamp::now());
        write_outcome(&t.dir().done_flag(), &outcome).unwrap();
        assert_eq!(
            t.outcome().unwrap().map(|o| o.status),
            Some(Status::Succeeded)
        );
        assert_eq!(
            t.outcome().unwrap().map(|o| o.status),
            Some(Status::Succeeded)
        );
        assert_eq!(t.state(), TaskState::Done(Status::Succeeded));
        t.cancel().unwrap();
        assert!(
            !t.dir().cancel_flag().exists(),
            "nothing to cancel once done"
        );
        t.close().unwrap();
        t.close().unwrap();
        assert_eq!(t.state(), TaskState::Closed);
        assert!(t.dir().close_flag().exists());
    }

    #[test]
    fn a_done_flag_before_the_start_flag_or_for_another_task_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = task(dir.path());
        let stale = Outcome::new("p1-a0", Status::Succeeded, crate::Timestamp::now());
        write_outcome(&t.dir().done_flag(), &stale).unwrap();
        let err = t.outcome().unwrap_err().to_string();
        assert!(
            err.contains("done flag (succeeded) in state staged"),
            "{err}"
        );
        t.start(&TaskSpec::default()).unwrap();
        let foreign = Outcome::new("p9-a0", Status::Succeeded, crate::Timestamp::now());
        write_outcome(&t.dir().done_flag(), &foreign).unwrap();
        let err = t.outcome().unwrap_err().to_string();
        assert!(err.contains("\"p9-a0\", not p1-a0"), "{err}");
        // Given up on: cancel and close without an outcome.
        t.cancel().unwrap();
        assert!(t.dir().cancel_flag().exists());
        t.close().unwrap();
        assert_eq!(t.state(), TaskState::Closed);
    }

    /// A task directory swapped for a link to a directory that holds a
    /// perfectly good done flag: refused, naming the link, never read; the
    /// flags this side writes are refused too, never written through it.
    #[test]
    fn flags_are_never_read_or_written_through_a_linked_task_dir() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        let t = task(&vol);
        t.start(&TaskSpec::default()).unwrap();
        let canary = dir.path().join("canary");
        std::fs::create_dir(&canary).unwrap();
        let outcome = Outcome::new("p1-a0", Status::Succeeded, crate::Timestamp::now());
        write_outcome(&canary.join(DONE_FLAG), &outcome).unwrap();
        std::fs::remove_dir_all(t.dir().root()).unwrap();
        std::os::unix::fs::symlink(&canary, t.dir().root()).unwrap();
        let err = t.outcome().unwrap_err().to_string();
        let link = t.dir().root().display().to_string();
        assert!(
            err.contains(&link) && err.contains("symbolic link"),
            "{err}"
        );
        let err = t.close().unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        let names: Vec<_> = std::fs::read_dir(&canary)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [DONE_FLAG], "nothing written through the link");
    }

    #[test]
    fn staging_given_up_closes_without_starting() {
        let dir = tempfile::tempdir().unwrap();
        let t = task(dir.path());
        t.close().unwrap();
        assert_eq!(t.state(), TaskState::Closed);
        assert!(!t.dir().start_flag().exists());
    }
}
