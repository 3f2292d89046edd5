//! One task through a serving sidecar: stage, start, wait, collect, close.
//!
//! ```text
//!  run_task
//!   ├─ fence: remove a leftover tasks/<id>/, create tasks/<id>/{input,output}/ (0777)
//!   ├─ arm the watch on tasks/<id>/               (before the start flag: no missed done flag)
//!   ├─ file mode:   input/part.<ext> through BatchWriter into a dot-temporary, renamed
//!   │  stream mode: mkfifo input/part.<ext> and output/part.<ext>, open output/ for reading
//!   ├─ start_flag  (TaskSpec JSON, atomically)
//!   ├─ stream mode: write the input FIFO on one thread, read the output FIFO on this one,
//!   │               a monitor thread raises the stream signals (done, stop)
//!   ├─ wait for done_flag, checking: sidecar exited? heartbeat stale? deadline?
//!   ├─ outcome: not succeeded -> TaskFailed (stderr tail included)
//!   ├─ outputs: exactly the manifest's files, opened without following links,
//!   │           verified by size and checksum
//!   └─ close_flag  (the sidecar removes the task directory)
//! ```
//!
//! On every error after the task directory exists, the shim raises the
//! task's `cancel_flag` (if the task has not finished) and its `close_flag`,
//! so a live sidecar stops the logic and cleans up.
//!
//! Fencing: the task id carries partition, attempt and a nonce
//! ([`TaskId::for_attempt`]); this side only ever reads the directory of its
//! own id, and a leftover directory of the same id is removed before staging.
//!
//! In stream mode, output batches reach the sink while the logic runs,
//! before its outcome is known. When [`run_task`] returns `Err`, the caller
//! must discard everything the sink received for this task (Spark does: a
//! failed task's output is never committed).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use sidecar_core::atomic::{self, Durability};
use sidecar_core::beneath::Beneath;
use sidecar_core::files::ExecutorFlags;
use sidecar_core::layout;
use sidecar_core::liveness::{Liveness, Monitor};
use sidecar_core::manifest::VerifiedReader;
use sidecar_core::owner::OwnerLock;
use sidecar_core::record::{InputSpec, OutputSpec};
use sidecar_core::safepath::{self, PathError};
use sidecar_core::state::TaskState;
use sidecar_core::wait::Watch;
use sidecar_core::{Format, Outcome, Status, TaskDir, TaskId, TaskSpec, Volume, PROTOCOL_VERSION};

pub use crate::error::ShimError;
use crate::format::{self, BatchWriter};
use crate::stream::{self, FifoReader, FifoWriter, Signals};

/// The default number of rows per output batch.
pub const DEFAULT_BATCH_SIZE: usize = 8192;

/// How long an unreadable output stream waits for the task's outcome, to
/// tell a logic that died from one that wrote garbage.
const READ_ERROR_GRACE: Duration = Duration::from_secs(2);

/// The least time between two reads of the heartbeat file by one task.
const HEARTBEAT_CHECK: Duration = Duration::from_millis(100);

/// Outputs up to this size are read once, verified as they are read, and
/// decoded from memory (zero-copy for Arrow IPC streams); larger ones are
/// verified, then decoded from a second read, so the memory a task takes
/// stays bounded.
pub const IN_MEMORY_MAX: u64 = 512 << 20;

/// How much of the task's `stderr` file is quoted when the outcome has no
/// tail of its own.
const STDERR_TAIL_BYTES: u64 = 4096;

/// One task to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRequest {
    /// The Spark partition.
    pub partition: u64,
    /// The Spark attempt number of this partition.
    pub attempt: u32,
    /// Distinguishes two runs of the same attempt. [`Default`] and
    /// [`TaskRequest::new`] pick a random one, so two requests never share a
    /// task directory by accident.
    pub nonce: String,
    pub input_format: Format,
    /// Defaults to the input format.
    pub output_format: Option<Format>,
    /// Stream through FIFOs instead of staging files.
    pub stream: bool,
    /// The task's deadline, from the start flag on. Passed to the sidecar
    /// too (`timeout_ms`).
    pub timeout: Option<Duration>,
    /// Extra environment for the logic.
    pub env: BTreeMap<String, String>,
    /// Rows per output batch handed to the sink (at most).
    pub batch_size: usize,
    /// Cancels the task from another thread (see [`CancelToken`]).
    pub cancel: CancelToken,
    /// A success without any output file is an error
    /// ([`ShimError::NoOutput`]), not zero rows (the default). Off for a
    /// logic run for its effects only.
    pub expect_output: bool,
}

/// Stops a task from another thread: the task's logic is stopped in the
/// sidecar (its cancel flag) and [`run_task`] returns
/// [`ShimError::Cancelled`]. A waiting task notices at its next wake-up;
/// [`crate::provider::Sidecar::wake`] makes that now. Clones share the
/// token; two tokens are equal only if they are clones.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl PartialEq for CancelToken {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for CancelToken {}

impl Default for TaskRequest {
    fn default() -> Self {
        Self::new(0, 0)
    }
}

impl TaskRequest {
    /// A request for `partition`/`attempt` with a random nonce and defaults.
    pub fn new(partition: u64, attempt: u32) -> Self {
        Self {
            partition,
            attempt,
            nonce: random_nonce(),
            input_format: Format::Arrows,
            output_format: None,
            stream: false,
            timeout: None,
            env: BTreeMap::new(),
            batch_size: DEFAULT_BATCH_SIZE,
            cancel: CancelToken::default(),
            expect_output: true,
        }
    }

    /// `p<partition>-a<attempt>-<nonce>`.
    pub fn task_id(&self) -> TaskId {
        TaskId::for_attempt(self.partition, self.attempt, &self.nonce)
    }

    pub fn output_format(&self) -> Format {
        self.output_format.unwrap_or(self.input_format)
    }
}

/// Eight random letters and digits: a task id's nonce.
pub fn random_nonce() -> String {
    use rand::Rng as _;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(8)
        .map(char::from)
        .collect()
}

/// What a finished task did.
#[derive(Clone, Debug)]
pub struct TaskReport {
    pub task: TaskId,
    pub outcome: Outcome,
    /// Rows and bytes handed to the logic.
    pub rows_in: u64,
    pub bytes_in: u64,
    /// Rows delivered to the sink and bytes read for them.
    pub rows_out: u64,
    pub bytes_out: u64,
    /// From staging to the close flag.
    pub elapsed: Duration,
}

/// Tells whether the sidecar behind a volume has exited (for providers that
/// can know: a child process, a container). The heartbeat covers the rest.
pub trait SidecarProbe: Send + Sync + std::fmt::Debug {
    /// `Some(description of the exit status)` once the sidecar has exited.
    fn exited(&self) -> Option<String>;
}

/// How the executor side judges its sidecar: the one liveness rule of the
/// protocol (the heartbeat's *content* must keep changing, judged on this
/// side's clock: [`Monitor`]), plus, where the provider can know, whether
/// the sidecar has exited. One per sidecar handle, shared by its tasks.
#[derive(Debug)]
pub struct Health {
    volume: Volume,
    /// The heartbeat monitor and when it last read the file.
    monitor: Mutex<(Monitor, Option<Instant>)>,
    probe: Option<Arc<dyn SidecarProbe>>,
}

impl Health {
    /// Judges the sidecar of `volume`: gone once its heartbeat has not
    /// changed for `stale_after`, or once `probe` says it exited.
    pub fn new(
        volume: &Volume,
        stale_after: Duration,
        probe: Option<Arc<dyn SidecarProbe>>,
    ) -> Self {
        Self {
            monitor: Mutex::new((
                Monitor::new(volume.heartbeat(), stale_after, Instant::now())
                    .beneath(volume.beneath()),
                None,
            )),
            volume: volume.clone(),
            probe,
        }
    }

    /// How the sidecar exited, if the provider knows it has.
    pub fn exited(&self) -> Option<String> {
        self.probe.as_ref().and_then(|p| p.exited())
    }

    /// `Ok` while the sidecar may be alive; the error says how it is gone.
    pub fn check(&self) -> Result<(), ShimError> {
        self.check_since(None)
    }

    /// [`Health::check`] for a task begun at `since`: a sidecar seen stale
    /// before the task began (stopped, then resumed) gets the whole bound
    /// from the task's start to show a new heartbeat.
    pub fn check_since(&self, since: Option<Instant>) -> Result<(), ShimError> {
        if let Some(status) = self.exited() {
            return Err(ShimError::SidecarExited {
                volume: self.volume.root().to_owned(),
                status,
            });
        }
        let now = Instant::now();
        let mut guard = self.monitor.lock().unwrap_or_else(PoisonError::into_inner);
        let (monitor, last) = &mut *guard;
        // Events from a chatty logic (its stderr is in a watched directory)
        // wake the checks often; the heartbeat file need not be read more
        // than every HEARTBEAT_CHECK.
        if last.is_some_and(|t| now.saturating_duration_since(t) < HEARTBEAT_CHECK) {
            return Ok(());
        }
        *last = Some(now);
        match monitor.observe(now) {
            Liveness::Alive => Ok(()),
            Liveness::Stale { .. }
                if since
                    .is_some_and(|t| now.saturating_duration_since(t) <= monitor.stale_after()) =>
            {
                Ok(())
            }
            Liveness::Stale { age, .. } => Err(ShimError::SidecarUnresponsive {
                volume: self.volume.root().to_owned(),
                heartbeat: self.volume.heartbeat(),
                heartbeat_age: age,
            }),
        }
    }
}

/// What a task needs from its sidecar handle.
#[derive(Clone, Copy, Debug)]
pub struct TaskContext<'a> {
    pub volume: &'a Volume,
    /// The handle's watch: each task waits on a private watch made from it
    /// ([`Watch::private`]), so a poke of this one wakes every task.
    pub watch: &'a Watch,
    pub health: &'a Health,
}

/// The sink type [`run_task`] delivers output batches to.
pub type Sink<'s> = dyn FnMut(RecordBatch) -> Result<(), ShimError> + 's;

/// Runs one task against the sidecar serving `ctx.volume`.
///
/// `schema` is the input's schema; `input` yields its batches (consumed
/// before the start flag in file mode, while the logic runs in stream mode).
/// Output batches are conformed to `expected_output` when given (a mismatch
/// names the file and column) and handed to `sink` in order.
///
/// Blocking; safe to call from many threads at once with the same context.
pub fn run_task<I>(
    ctx: &TaskContext<'_>,
    request: &TaskRequest,
    schema: SchemaRef,
    input: I,
    expected_output: Option<SchemaRef>,
    sink: &mut Sink<'_>,
) -> Result<TaskReport, ShimError>
where
    I: Iterator<Item = Result<RecordBatch, ArrowError>> + Send,
{
    let in_fmt = request.input_format;
    let out_fmt = request.output_format();
    if request.stream {
        format::check_streamable(in_fmt)?;
        format::check_streamable(out_fmt)?;
    }
    if request.timeout == Some(Duration::ZERO) {
        return Err(ShimError::Invalid(
            "a task timeout must be more than zero".into(),
        ));
    }
    let started = Instant::now();
    let id = request.task_id();
    let task = ctx.volume.task(&id);
    prepare_task_dir(ctx.volume, &task)?;
    // Held until the task is closed: if this process dies, the sidecar
    // sees the lock go and stops the task (sidecar_core::owner).
    let _owner = OwnerLock::claim(&task)?;
    // A watch of the task's own, so that the events of the other tasks in
    // flight do not wake this one's waits (the shared one if none is left).
    let own = ctx.watch.private();
    let ctx = &TaskContext {
        watch: own.as_deref().unwrap_or(ctx.watch),
        ..*ctx
    };
    let _unwatch = Unwatch::arm(ctx.watch, task.root())?;
    let run = Run::new(ctx, task, request);
    let result = if request.stream {
        run.stream(schema, input, expected_output, sink)
    } else {
        run.file(schema, input, expected_output, sink)
    };
    match result {
        Ok(mut report) => {
            run.close();
            report.elapsed = started.elapsed();
            Ok(report)
        }
        Err(e) => {
            run.abort(&e);
            Err(e)
        }
    }
}

/// Creates `tasks/<id>/{input,output}/`, removing a leftover of the same id
/// first, all world-writable so a container user can write its output.
/// Everything is made through directory descriptors from the volume root:
/// a `tasks/` swapped for a link is refused, and a leftover that is a link
/// is removed, never followed.
fn prepare_task_dir(volume: &Volume, task: &TaskDir) -> Result<(), ShimError> {
    let root = volume.beneath().dir(volume.root())?;
    let tasks = OsStr::new(layout::TASKS_DIR);
    let tasks = match root.mkdir(tasks, 0o777) {
        Ok(dir) => dir,
        // Made by a concurrent task or by the sidecar: left as it is.
        Err(PathError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
            root.open_dir(tasks)?
        }
        Err(e) => return Err(e.into()),
    };
    let id = OsStr::new(task.id().as_str());
    if tasks.kind(id)?.is_some() {
        tracing::info!("task {}: removing a leftover directory", task.id());
        tasks.remove_all(id)?;
    }
    let dir = tasks.mkdir(id, 0o777)?;
    dir.mkdir(OsStr::new(layout::INPUT_DIR), 0o777)?;
    dir.mkdir(OsStr::new(layout::OUTPUT_DIR), 0o777)?;
    Ok(())
}

/// Removes the task directory from the watch when the task ends.
struct Unwatch<'a> {
    watch: &'a Watch,
    dir: PathBuf,
}

impl<'a> Unwatch<'a> {
    fn arm(watch: &'a Watch, dir: &Path) -> Result<Self, ShimError> {
        watch.add(dir)?;
        Ok(Self {
            watch,
            dir: dir.to_owned(),
        })
    }
}

impl Drop for Unwatch<'_> {
    fn drop(&mut self) {
        self.watch.remove(&self.dir);
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        // A panic (in the caller's sink, say) skips `abort`: still stop the
        // logic and let the sidecar clean up.
        if std::thread::panicking() {
            let _ = self.flags.cancel();
            self.close();
        }
    }
}

/// Stops the stream threads when dropped.
struct Release<'a> {
    signals: &'a Signals,
    io_done: &'a AtomicBool,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.signals.stop();
            self.io_done.store(true, Ordering::SeqCst);
        }
    }
}

/// Rows and bytes moved by one side of a stream.
type Moved = Result<(u64, u64), ShimError>;

/// How the stream phase ended: the output read, the input written, and
/// what the monitor saw.
type Pumped = (Moved, Moved, Watched);

/// What the stream monitor saw.
struct Watched {
    outcome: Option<Box<Outcome>>,
    failure: Option<ShimError>,
}

/// One task in flight.
struct Run<'c> {
    ctx: TaskContext<'c>,
    task: TaskDir,
    /// Every path of the task is opened through this, from the volume
    /// root, never through a link.
    volume: Beneath,
    /// This side's flags, walking the task's state machine.
    flags: ExecutorFlags,
    request: TaskRequest,
    /// Set when the start flag is written.
    deadline: Mutex<Option<Instant>>,
    /// When the task began: the sidecar's heartbeat is judged from here.
    started: Instant,
}

impl<'c> Run<'c> {
    fn new(ctx: &TaskContext<'c>, task: TaskDir, request: &TaskRequest) -> Self {
        Self {
            started: Instant::now(),
            ctx: *ctx,
            volume: task.beneath(),
            flags: ExecutorFlags::new(task.clone()),
            task,
            request: request.clone(),
            deadline: Mutex::new(None),
        }
    }

    fn id(&self) -> &TaskId {
        self.task.id()
    }

    fn label(&self, path: &Path) -> String {
        path.display().to_string()
    }

    fn spec(&self) -> TaskSpec {
        let r = &self.request;
        TaskSpec {
            protocol: Some(PROTOCOL_VERSION),
            attempt: Some(r.attempt),
            env: r.env.clone(),
            timeout_ms: r
                .timeout
                .map(|t| t.as_millis().try_into().unwrap_or(u64::MAX)),
            input: Some(InputSpec {
                format: Some(r.input_format),
                files: vec![part_name(r.input_format)],
            }),
            output: Some(OutputSpec {
                format: Some(r.output_format()),
            }),
            stream: r.stream,
        }
    }

    fn write_start(&self) -> Result<(), ShimError> {
        self.flags.start(&self.spec())?;
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) = self
            .request
            .timeout
            .map(|t| sidecar_core::time::deadline_after(Instant::now(), t));
        Ok(())
    }

    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One look at the task: its outcome if the done flag is there, an
    /// error if the sidecar is gone or the deadline has passed.
    fn check(&self) -> Result<Option<Outcome>, ShimError> {
        if let Some(outcome) = self.read_outcome()? {
            return Ok(Some(outcome));
        }
        self.check_cancelled()?;
        if std::fs::symlink_metadata(self.task.root()).is_err() {
            return Err(ShimError::TaskDirGone {
                task: self.id().clone(),
                path: self.task.root().to_owned(),
            });
        }
        if let Err(gone) = self.ctx.health.check_since(Some(self.started)) {
            // It may have written the flag just before it went.
            if let Some(outcome) = self.read_outcome()? {
                return Ok(Some(outcome));
            }
            return Err(gone);
        }
        self.check_deadline()?;
        Ok(None)
    }

    fn check_cancelled(&self) -> Result<(), ShimError> {
        if self.request.cancel.is_cancelled() {
            return Err(ShimError::Cancelled {
                task: self.id().clone(),
            });
        }
        Ok(())
    }

    fn check_deadline(&self) -> Result<(), ShimError> {
        if let (Some(deadline), Some(timeout)) = (self.deadline(), self.request.timeout) {
            if Instant::now() >= deadline {
                return Err(ShimError::Deadline {
                    task: self.id().clone(),
                    timeout,
                    detail: String::new(),
                });
            }
        }
        Ok(())
    }

    fn read_outcome(&self) -> Result<Option<Outcome>, ShimError> {
        Ok(self.flags.outcome()?)
    }

    /// Waits for the done flag, bounded by liveness and the deadline.
    fn wait_done(&self) -> Result<Outcome, ShimError> {
        let what = self.task.done_flag().display().to_string();
        // The deadline is enforced by `check`, which names the task; the
        // wait's own deadline only makes it wake up in time.
        let wake = self.deadline().map(|d| d + Duration::from_millis(1));
        self.ctx
            .watch
            .wait_until(&what, wake, || self.check())
            .map_err(|e| match e {
                ShimError::Wait(sidecar_core::wait::WaitError::Deadline { .. }) => {
                    ShimError::Deadline {
                        task: self.id().clone(),
                        timeout: self.request.timeout.unwrap_or_default(),
                        detail: String::new(),
                    }
                }
                e => e,
            })
    }

    /// Turns a non-success outcome into its error.
    fn judge(&self, outcome: Outcome) -> Result<Outcome, ShimError> {
        if outcome.succeeded() {
            return Ok(outcome);
        }
        let stderr_tail = if outcome.stderr_tail.trim().is_empty() {
            self.stderr_tail()
        } else {
            outcome.stderr_tail.clone()
        };
        if outcome.status == Status::TimedOut {
            let timeout = self
                .request
                .timeout
                .unwrap_or(Duration::from_millis(outcome.duration_ms));
            let mut detail = outcome
                .reason
                .clone()
                .unwrap_or_else(|| "timed out by the sidecar".into());
            if !stderr_tail.trim().is_empty() {
                detail.push_str(&format!("; stderr tail: {}", stderr_tail.trim_end()));
            }
            return Err(ShimError::Deadline {
                task: self.id().clone(),
                timeout,
                detail,
            });
        }
        Err(ShimError::TaskFailed {
            task: self.id().clone(),
            status: outcome.status,
            exit_code: outcome.exit_code,
            signal: outcome.signal,
            reason: outcome.reason,
            stderr_tail,
        })
    }

    /// The end of the task's `stderr` file, read without following links.
    fn stderr_tail(&self) -> String {
        let Ok(mut f) = self.volume.open_regular(&self.task.stderr()) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(STDERR_TAIL_BYTES)));
        let mut buf = Vec::new();
        let _ = f.take(STDERR_TAIL_BYTES).read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    fn close(&self) {
        if let Err(e) = self.flags.close() {
            tracing::warn!("task {}: cannot close: {e}", self.id());
        }
    }

    /// After an error: stop the logic if it may still run, let the sidecar
    /// clean up; if the sidecar is gone, clean up here.
    fn abort(&self, err: &ShimError) {
        // Never started (staging failed or was cancelled): the sidecar never
        // took it up, so the directory is ours to remove.
        let staged = self.flags.state() == TaskState::Staged;
        if staged || matches!(err, ShimError::SidecarExited { .. }) {
            // A link left in its place is removed, never followed.
            let _ = self.volume.remove_all(self.task.root());
            return;
        }
        if let Err(e) = self.flags.cancel() {
            tracing::warn!("task {}: cannot write the cancel flag: {e}", self.id());
        }
        self.close();
    }

    // --- file mode ---------------------------------------------------------

    fn file<I>(
        &self,
        schema: SchemaRef,
        input: I,
        expected: Option<SchemaRef>,
        sink: &mut Sink<'_>,
    ) -> Result<TaskReport, ShimError>
    where
        I: Iterator<Item = Result<RecordBatch, ArrowError>>,
    {
        let path = self.task.input().join(part_name(self.request.input_format));
        let staged = self.stage(&path, schema, input)?;
        self.write_start()?;
        let outcome = self.judge(self.wait_done()?)?;
        let read = self.read_outputs(&outcome, expected, sink)?;
        Ok(self.report(outcome, staged, read))
    }

    /// The report of a finished task; `run_task` fills in `elapsed`.
    fn report(
        &self,
        outcome: Outcome,
        (rows_in, bytes_in): (u64, u64),
        (rows_out, bytes_out): (u64, u64),
    ) -> TaskReport {
        TaskReport {
            task: self.id().clone(),
            outcome,
            rows_in,
            bytes_in,
            rows_out,
            bytes_out,
            elapsed: Duration::ZERO,
        }
    }

    /// Writes the input file through a dot-temporary renamed into place.
    fn stage<I>(&self, path: &Path, schema: SchemaRef, input: I) -> Result<(u64, u64), ShimError>
    where
        I: Iterator<Item = Result<RecordBatch, ArrowError>>,
    {
        let label = self.label(path);
        let mut failure = None;
        let mut stats = None;
        let written =
            atomic::write_atomic_beneath_with(&self.volume, path, Durability::Visible, |file| {
                let result = (|| {
                    let mut w =
                        BatchWriter::new(self.request.input_format, schema, &mut *file, &label)?;
                    for batch in input {
                        w.write(&batch.map_err(ShimError::Input)?)?;
                        self.check_cancelled()?;
                    }
                    Ok::<_, ShimError>(w.finish()?)
                })();
                match result {
                    Ok(s) => {
                        stats = Some(s);
                        Ok(())
                    }
                    Err(e) => {
                        failure = Some(e);
                        Err(io::Error::other("staging failed"))
                    }
                }
            });
        if let Some(e) = failure {
            return Err(e);
        }
        written?;
        let stats = stats.unwrap_or_default();
        Ok((stats.rows, stats.bytes))
    }

    /// Reads every output the manifest lists, verified, into the sink.
    fn read_outputs(
        &self,
        outcome: &Outcome,
        expected: Option<SchemaRef>,
        sink: &mut Sink<'_>,
    ) -> Result<(u64, u64), ShimError> {
        let dir = self.task.output();
        if outcome.outputs.is_empty() && self.request.expect_output && !self.request.stream {
            return Err(ShimError::NoOutput {
                task: self.task.id().clone(),
                path: dir,
            });
        }
        let (mut rows, mut bytes) = (0u64, 0u64);
        for entry in &outcome.outputs {
            let rel = safepath::validate_relative(&entry.path)?;
            if entry.bytes == 0 {
                // Still opened: a link or a special file is refused.
                VerifiedReader::open_beneath(&self.volume, &dir, entry)?.finish()?;
                continue;
            }
            let fmt = format::format_from_path(rel).unwrap_or(self.request.output_format());
            let label = self.label(&dir.join(rel));
            let batch_size = self.request.batch_size;
            rows += if entry.bytes <= IN_MEMORY_MAX {
                // One read, which verifies: a truncated or swapped file fails
                // before any of its rows reach the sink; decoded from memory.
                let data =
                    VerifiedReader::open_beneath(&self.volume, &dir, entry)?.read_verified()?;
                let batches = format::read_memory(fmt, data, &label, expected.clone(), batch_size)?;
                deliver(batches, sink)?
            } else {
                // Too large to hold: verified first, then decoded from a
                // second read, which verifies again (the file is the
                // sidecar's to change).
                let reader = VerifiedReader::open_beneath(&self.volume, &dir, entry)?.verified()?;
                let mut batches =
                    format::read_batches(fmt, reader, &label, expected.clone(), batch_size)?;
                let n = deliver(&mut batches, sink)?;
                batches.finish()?.finish()?;
                n
            };
            bytes += entry.bytes;
        }
        Ok((rows, bytes))
    }

    // --- stream mode -------------------------------------------------------

    fn stream<I>(
        &self,
        schema: SchemaRef,
        input: I,
        expected: Option<SchemaRef>,
        sink: &mut Sink<'_>,
    ) -> Result<TaskReport, ShimError>
    where
        I: Iterator<Item = Result<RecordBatch, ArrowError>> + Send,
    {
        let in_path = self.task.input().join(part_name(self.request.input_format));
        let out_path = self
            .task
            .output()
            .join(part_name(self.request.output_format()));
        // A column the format cannot carry is refused before the logic starts.
        format::check_writable(self.request.input_format, &schema, &self.label(&in_path))?;
        stream::make_fifo(&self.volume, &in_path, 0o666)?;
        stream::make_fifo(&self.volume, &out_path, 0o666)?;
        let signals = Signals::new();
        let reader = FifoReader::open(&self.volume, &out_path, Arc::clone(&signals))?;
        self.write_start()?;
        let (read, written, watched) =
            self.pump(&signals, &in_path, schema, input, |sink_signals| {
                let read = self.read_fifo(reader, &out_path, expected.clone(), sink);
                if read.is_err() {
                    sink_signals.stop();
                }
                read
            });

        // The first cause wins: the sidecar or the deadline, then the input,
        // then the output, then the task's own outcome. Errors that are only
        // the consequence of a stop signal are not causes.
        if let Some(e) = watched.failure {
            return Err(e);
        }
        let (rows_in, bytes_in) = match written {
            Err(e) if !is_stop(&e) => return Err(e),
            Err(_) => (0, 0),
            Ok(v) => v,
        };
        let read = match read {
            Err(e) if !is_stop(&e) => return Err(self.explain_read_error(e, watched.outcome)),
            Err(_) => None,
            Ok(v) => Some(v),
        };
        let outcome = match watched.outcome {
            Some(o) => *o,
            None => self.wait_done()?,
        };
        let outcome = self.judge(outcome)?;
        let Some((mut rows_out, mut bytes_out)) = read else {
            return Err(ShimError::Protocol {
                path: out_path,
                message: "the output stream was stopped although the task succeeded".into(),
            });
        };
        let (r, b) = self.read_outputs(&outcome, expected, sink)?;
        rows_out += r;
        bytes_out += b;
        Ok(self.report(outcome, (rows_in, bytes_in), (rows_out, bytes_out)))
    }

    /// Runs the stream phase: the input written on one thread, the task
    /// watched on another, and `read` (the output) on this one; returns
    /// what each of the three ended with.
    fn pump<I>(
        &self,
        signals: &Arc<Signals>,
        in_path: &Path,
        schema: SchemaRef,
        input: I,
        read: impl FnOnce(&Signals) -> Result<(u64, u64), ShimError>,
    ) -> Pumped
    where
        I: Iterator<Item = Result<RecordBatch, ArrowError>> + Send,
    {
        // Set once both the writer and the reader are finished: the monitor
        // watches over them until then.
        let io_done = AtomicBool::new(false);
        std::thread::scope(|s| {
            // If this thread unwinds (a panicking sink), the scope waits for
            // the other two: release them, or it would wait forever.
            let _release = Release {
                signals,
                io_done: &io_done,
            };
            let writer = s.spawn(|| {
                stream::block_sigpipe_on_this_thread();
                let r = self.write_fifo(in_path, schema, input, signals);
                if r.is_err() {
                    // A failed input must not let the logic finish on a
                    // truncated one: stop everything.
                    signals.stop();
                }
                r
            });
            let monitor = s.spawn(|| self.monitor(signals, &io_done));
            let read = read(signals);
            let written = writer.join().unwrap_or_else(|_| {
                Err(ShimError::Invalid(
                    "the input writer thread panicked".into(),
                ))
            });
            io_done.store(true, Ordering::SeqCst);
            self.ctx.watch.poke();
            let watched = monitor.join().unwrap_or_else(|_| Watched {
                outcome: None,
                failure: Some(ShimError::Invalid(
                    "the task monitor thread panicked".into(),
                )),
            });
            (read, written, watched)
        })
    }

    /// An unreadable output stream is often the trace of a logic that died
    /// half way: if the task failed on its own (not of the `SIGPIPE` that
    /// stopping the read gave it), say that, with its stderr, and mention
    /// the output; otherwise the read error is the cause.
    fn explain_read_error(&self, read: ShimError, known: Option<Box<Outcome>>) -> ShimError {
        let outcome = known.map(|o| *o).or_else(|| {
            let deadline = Instant::now() + READ_ERROR_GRACE;
            let what = self.task.done_flag().display().to_string();
            self.ctx
                .watch
                .wait_until(&what, Some(deadline), || self.read_outcome())
                .ok()
        });
        let Some(outcome) = outcome else {
            return read;
        };
        if outcome.succeeded() || outcome.signal == Some(libc::SIGPIPE) {
            return read;
        }
        match self.judge(outcome) {
            Err(ShimError::TaskFailed {
                task,
                status,
                exit_code,
                signal,
                reason,
                stderr_tail,
            }) => {
                let reason = match reason {
                    Some(r) => format!("{r}; its output stream was unreadable: {read}"),
                    None => format!("its output stream was unreadable: {read}"),
                };
                ShimError::TaskFailed {
                    task,
                    status,
                    exit_code,
                    signal,
                    reason: Some(reason),
                    stderr_tail,
                }
            }
            Err(other) => other,
            Ok(_) => read,
        }
    }

    /// Watches the task while its streams run: raises `done` when the done
    /// flag appears (and `stop` too if the task failed), `stop` when the
    /// sidecar is gone or the deadline passes (the deadline is watched even
    /// after the outcome, in case a straggler keeps the output open).
    fn monitor(&self, signals: &Signals, io_done: &AtomicBool) -> Watched {
        let mut outcome: Option<Box<Outcome>> = None;
        loop {
            if io_done.load(Ordering::SeqCst) {
                return Watched {
                    outcome,
                    failure: None,
                };
            }
            let seen = self.ctx.watch.generation();
            let result = match &outcome {
                None => self.check(),
                Some(_) => self.check_deadline().map(|()| None),
            };
            match result {
                Ok(Some(o)) => {
                    signals.set_done();
                    if !o.succeeded() {
                        signals.stop();
                    }
                    outcome = Some(Box::new(o));
                }
                Ok(None) => {}
                Err(e) => {
                    signals.stop();
                    return Watched {
                        outcome,
                        failure: Some(e),
                    };
                }
            }
            self.ctx.watch.wait_changed(seen, stream::POLL_SLICE);
        }
    }

    /// Writes the input batches into the input FIFO as they come.
    fn write_fifo<I>(
        &self,
        path: &Path,
        schema: SchemaRef,
        input: I,
        signals: &Arc<Signals>,
    ) -> Result<(u64, u64), ShimError>
    where
        I: Iterator<Item = Result<RecordBatch, ArrowError>>,
    {
        let Some(fifo) = FifoWriter::open(&self.volume, path, Arc::clone(signals))? else {
            // The logic finished without opening its input.
            return Ok((0, 0));
        };
        let label = self.label(path);
        let mut w = BatchWriter::new(self.request.input_format, schema, fifo, &label)?;
        let mut rows = 0u64;
        for batch in input {
            let batch = batch.map_err(ShimError::Input)?;
            w.write(&batch)?;
            rows += batch.num_rows() as u64;
            if signals.is_done() || signals.is_input_closed() {
                // Nobody reads the rest: do not produce it.
                break;
            }
        }
        let (_, fifo) = w.finish_into()?;
        // Dropping the writer closes the FIFO: the logic sees end of input.
        Ok((rows, fifo.bytes_written()))
    }

    /// Reads the output FIFO into the sink until end of stream.
    fn read_fifo(
        &self,
        mut reader: FifoReader,
        path: &Path,
        expected: Option<SchemaRef>,
        sink: &mut Sink<'_>,
    ) -> Result<(u64, u64), ShimError> {
        // An output FIFO the logic never wrote is no output (an empty IPC
        // stream would not even parse), so look at the first bytes first.
        let mut first = vec![0u8; 64 * 1024];
        let n = read_some(&mut reader, &mut first).map_err(|e| stream_io(path, e))?;
        if n == 0 {
            return Ok((0, 0));
        }
        first.truncate(n);
        let label = self.label(path);
        let input = io::Cursor::new(first).chain(reader);
        let mut batches = format::read_batches(
            self.request.output_format(),
            input,
            &label,
            expected,
            self.request.batch_size,
        )?;
        let mut rows = 0u64;
        for batch in &mut batches {
            let batch = batch?;
            rows += batch.num_rows() as u64;
            sink(batch)?;
        }
        let reader = batches.finish()?.into_inner().1;
        Ok((rows, reader.bytes_read()))
    }
}

/// Hands every batch to the sink; how many rows they held.
fn deliver<I>(batches: I, sink: &mut Sink<'_>) -> Result<u64, ShimError>
where
    I: IntoIterator<Item = Result<RecordBatch, format::FormatError>>,
{
    let mut rows = 0u64;
    for batch in batches {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        sink(batch)?;
    }
    Ok(rows)
}

fn read_some(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn stream_io(path: &Path, e: io::Error) -> ShimError {
    match e.into_inner() {
        Some(inner) => match inner.downcast::<stream::StreamError>() {
            Ok(se) => ShimError::Stream(*se),
            Err(other) => ShimError::Io {
                path: path.to_owned(),
                source: io::Error::other(other),
            },
        },
        None => ShimError::Io {
            path: path.to_owned(),
            source: io::Error::other("FIFO read failed"),
        },
    }
}

/// Whether an error is the consequence of a stop signal, not a cause.
fn is_stop(e: &ShimError) -> bool {
    match e {
        ShimError::Stream(stream::StreamError::Stopped { .. }) => true,
        ShimError::Format(format::FormatError::Io { source, .. }) => {
            stream::StreamError::is_stopped(source)
        }
        ShimError::Format(format::FormatError::Arrow { source, .. }) => {
            matches!(source, ArrowError::IoError(_, s) if stream::StreamError::is_stopped(s))
                || source.to_string().contains("stopped")
        }
        _ => false,
    }
}

/// `part.<ext>`.
pub fn part_name(format: Format) -> String {
    format!("part.{}", format.extension())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_fenced_by_default() {
        let a = TaskRequest::new(3, 0);
        let b = TaskRequest::new(3, 0);
        assert_ne!(a.task_id(), b.task_id(), "two runs never share a directory");
        assert_eq!(a.task_id().partition_attempt(), Some((3, 0)));
        assert_eq!(
            TaskRequest::new(3, 1).task_id().partition_attempt(),
            Some((3, 1))
        );
    }

    #[test]
    fn the_spec_says_what_is_staged() {
        let dir = std::env::temp_dir();
        let volume = Volume::new(&dir);
        let watch = Watch::new(Default::default()).unwrap_or_else(|e| panic!("{e}"));
        let health = Health::new(&volume, Duration::from_secs(5), None);
        let ctx = TaskContext {
            volume: &volume,
            watch: &watch,
            health: &health,
        };
        let mut req = TaskRequest::new(0, 2);
        req.input_format = Format::Csv;
        req.output_format = Some(Format::Parquet);
        req.timeout = Some(Duration::from_millis(1500));
        req.env.insert("K".into(), "V".into());
        let run = Run::new(&ctx, volume.task(&req.task_id()), &req);
        let json = serde_json::to_value(run.spec()).unwrap_or_default();
        assert_eq!(json["attempt"], 2);
        assert_eq!(json["timeout_ms"], 1500);
        assert_eq!(json["input"]["format"], "csv");
        assert_eq!(json["input"]["files"][0], "part.csv");
        assert_eq!(json["output"]["format"], "parquet");
        assert_eq!(json["env"]["K"], "V");
        assert!(json.get("stream").is_none());
    }
}
