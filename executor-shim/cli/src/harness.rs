//! # The local test harness: `executor-shim harness`
//!
//! Runs a dataset through M sidecars the way M Spark executors would, on one
//! machine, so a sidecar image (or a plain command) can be tried before a
//! cluster ever sees it.
//!
//! ```text
//!  --input trips.csv ──▶ N partitions (contiguous row ranges, as even as possible)
//!                              │  one shared queue
//!            ┌─────────────────┼─────────────────┐
//!      executor 0         executor 1   ...  executor M-1     one volume + one sidecar each,
//!      (P threads)        (P threads)                        P = the sidecar's parallelism
//!            └─────────────────┼─────────────────┘
//!                              ▼
//!      --output DIR/part-<partition:05>.parquet   (succeeded partitions only, written atomically)
//! ```
//!
//! ## Theory of operation
//!
//! * The input is read once ([`executor_shim::format::read_path`]) and sliced
//!   zero-copy into partitions ([`partition_ranges`]).
//! * Each executor is a directory under the volume root and one
//!   [`executor_shim::provider::Sidecar`]: a local `sidecar-entrypoint` process by
//!   default, a locked-down Docker container with `--image`. Its worker
//!   threads pull `(partition, attempt)` jobs from one queue, so a fast
//!   executor takes more partitions, as Spark's scheduler would give them.
//! * A failed attempt is re-queued as `attempt + 1` (up to `--retries`). The
//!   task id carries the attempt ([`sidecar_core::TaskId::for_attempt`]), so a
//!   retry never sees a flag or an output of the attempt before it: fencing.
//! * An output is written only for a succeeded attempt, to a dot-temporary
//!   renamed into place: a reader of `--output` never sees half a file, and a
//!   failed partition leaves no file at all. Stale `part-*.parquet` files of
//!   an earlier run are removed first, so the directory always describes
//!   this run.
//! * Progress: a bar of tasks done, with the `N/M` lines the logic appends to
//!   its `progress` file shown for the running tasks. Without a terminal (or
//!   with `--no-progress`) one line per finished task is printed instead.
//! * A task whose sidecar is gone (`lost`) takes its executor out of the
//!   run: that executor's workers stop, and the retry goes to another one.
//!   Partitions nobody could run are reported `not_run`.
//! * `SIGINT`/`SIGTERM`: no new task starts, running ones are cancelled
//!   through their `cancel_flag`, the summary is printed, exit status 130.
//!   The handler resets itself: a second signal ends the process at once.
//! * Every sidecar is shut down before the harness returns, on success, on
//!   failure and on error: no sidecar process outlives the run.
//!
//! ## Known problems
//!
//! * A partition whose output has no batch at all (an empty CSV, say) has
//!   no schema of its own; its Parquet file is written with the input's.
//! * The whole input is held in memory: this is a test harness, not an
//!   engine. Spark is the engine (see the PySpark example).
//!
//! ## Example
//!
//! ```text
//! executor-shim harness --input examples/sample/trips.csv --partitions 8 --executors 2 \
//!     --output target/harness-out --input-format csv \
//!     -- sh -c 'awk -F, -v OFS=, "NR == 1 { print \$0, \"fare_per_km\"; next } { print \$0, sprintf(\"%.2f\", \$6 / \$5) }" "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"'
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sidecar_core::{Format, Status, TaskId};

use crate::Done;

/// Errors of the harness that are about one path or one argument.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    #[error("--{flag} must be at least 1")]
    Zero { flag: &'static str },
    #[error(
        "{path}: cannot tell the input's format from its extension; \
         expected .parquet, .csv, .arrow, .arrows or .jsonl"
    )]
    UnknownInputFormat { path: PathBuf },
    #[error(
        "--stream needs a format that can be read front to back (arrows, csv, jsonl), \
         not {format}: pass --input-format and --output-format"
    )]
    NotStreamable { format: Format },
    #[error("cannot write the output {path}: {message}")]
    Output { path: PathBuf, message: String },
    #[error("cannot prepare the output directory {path}: {source}")]
    OutputDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `executor-shim harness`: run a dataset through M local sidecars.
#[derive(clap::Args, Debug, Clone)]
pub struct HarnessArgs {
    /// The dataset: .parquet, .csv (with a header), .arrow, .arrows or .jsonl.
    #[arg(long, value_name = "PATH")]
    pub input: PathBuf,

    /// How many partitions to split the input into (contiguous row ranges).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub partitions: usize,

    /// How many executors (one volume and one sidecar each).
    #[arg(long, value_name = "M", default_value_t = 2)]
    pub executors: usize,

    /// Where the outputs go: `part-<partition:05>.parquet` per succeeded partition.
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,

    /// Run each sidecar as a Docker container of IMAGE instead of a local process.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,

    /// The format partitions are staged in for the logic ($SIDECAR_INPUT).
    /// Default: the input file's format (with --stream, arrows for a
    /// Parquet or Arrow file input).
    #[arg(long, value_name = "F")]
    pub input_format: Option<Format>,

    /// The format the logic writes ($SIDECAR_OUTPUT). Default: the input format.
    #[arg(long, value_name = "F")]
    pub output_format: Option<Format>,

    /// Stream partitions through FIFOs instead of staging files.
    #[arg(long)]
    pub stream: bool,

    /// Per-task time limit, e.g. `30s`, `5m`.
    #[arg(long, value_name = "DURATION", value_parser = sidecar_core::time::parse_duration)]
    pub timeout: Option<Duration>,

    /// Tasks each executor runs at once. Default: the sidecar's own default
    /// (the CPUs available to it).
    #[arg(long, value_name = "N")]
    pub parallel: Option<u32>,

    /// How many times a failed task is retried (as attempt + 1, a new task id).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub retries: u32,

    /// Where the executors' volumes are made (`executor-<i>/`). Default: a
    /// temporary directory, removed at the end.
    #[arg(long, value_name = "DIR")]
    pub volume_root: Option<PathBuf>,

    /// Read at most this many rows per batch from the input.
    #[arg(long, value_name = "ROWS", default_value_t = 8192, hide = true)]
    pub batch_size: usize,

    /// Do not draw a progress bar (one line per finished task instead).
    #[arg(long)]
    pub no_progress: bool,

    /// The user logic, run once per task. Default: identity
    /// (`sh -c 'cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"'`); with --image, the image's own.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Splits `rows` into `n` contiguous ranges whose lengths differ by at most
/// one, the longer ones first. Ranges may be empty when `rows < n`.
pub fn partition_ranges(rows: usize, n: usize) -> Vec<Range<usize>> {
    if n == 0 {
        return Vec::new();
    }
    let (base, extra) = (rows / n, rows % n);
    let mut start = 0;
    (0..n)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

/// The rows `range` of the concatenation of `batches`, as zero-copy slices.
pub fn slice_batches(batches: &[RecordBatch], range: Range<usize>) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut offset = 0;
    for batch in batches {
        let (b_start, b_end) = (offset, offset + batch.num_rows());
        offset = b_end;
        let (s, e) = (range.start.max(b_start), range.end.min(b_end));
        if s < e {
            out.push(batch.slice(s - b_start, e - s));
        }
    }
    out
}

/// The output file of one partition.
pub fn output_file(dir: &Path, partition: usize) -> PathBuf {
    dir.join(format!("part-{partition:05}.parquet"))
}

/// One attempt of one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Job {
    partition: usize,
    attempt: u32,
    /// Makes the task id unique to this run too (see [`TaskId::for_attempt`]).
    nonce: String,
}

impl Job {
    fn new(partition: usize, attempt: u32) -> Self {
        Self {
            partition,
            attempt,
            nonce: executor_shim::client::random_nonce(),
        }
    }

    fn task_id(&self) -> TaskId {
        TaskId::for_attempt(self.partition as u64, self.attempt, &self.nonce)
    }
}

/// The shared queue the executors' workers pull jobs from. A worker that
/// finds it empty waits while other jobs are in flight, because a failure
/// among them may re-queue a retry.
#[derive(Debug)]
struct Queue {
    state: Mutex<QueueState>,
    changed: Condvar,
}

#[derive(Debug)]
struct QueueState {
    pending: VecDeque<Job>,
    in_flight: usize,
    closed: bool,
}

impl Queue {
    fn new(partitions: usize) -> Self {
        let pending = (0..partitions).map(|p| Job::new(p, 0)).collect();
        Self {
            state: Mutex::new(QueueState {
                pending,
                in_flight: 0,
                closed: false,
            }),
            changed: Condvar::new(),
        }
    }

    /// The next job, or `None` when every job is done (or the queue closed).
    fn next(&self) -> Option<Job> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if st.closed {
                return None;
            }
            if let Some(job) = st.pending.pop_front() {
                st.in_flight += 1;
                return Some(job);
            }
            if st.in_flight == 0 {
                return None;
            }
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Marks a job finished, queueing `retry` if there is one.
    fn finish(&self, retry: Option<Job>) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.in_flight -= 1;
        if let Some(job) = retry {
            st.pending.push_back(job);
        }
        self.changed.notify_all();
    }

    /// Returns a job taken with [`Queue::next`] that was not run.
    fn give_back(&self, job: Job) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.in_flight -= 1;
        st.pending.push_front(job);
        self.changed.notify_all();
    }

    /// The jobs nobody took.
    fn drain(&self) -> Vec<Job> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.pending.drain(..).collect()
    }

    fn is_closed(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed
    }

    /// Stops handing out jobs.
    fn close(&self) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.closed = true;
        self.changed.notify_all();
    }
}

/// What running one task on an executor gave.
#[derive(Debug)]
pub(crate) struct TaskRun {
    /// `Ok(output batches)` when the task succeeded.
    result: Result<Vec<RecordBatch>, TaskFailure>,
}

/// Why a task did not succeed.
#[derive(Debug, Clone)]
pub(crate) struct TaskFailure {
    status: String,
    /// One line: what went wrong.
    reason: String,
    /// The logic's stderr (tail), possibly empty.
    stderr: String,
    /// The executor's sidecar is gone: it takes no more tasks.
    executor_lost: bool,
}

/// An executor the harness can run tasks on: one sidecar, shared by up to
/// `parallelism()` concurrent tasks. A trait so the scheduling can be tested
/// against fakes in milliseconds.
pub(crate) trait Executor: Sync {
    fn parallelism(&self) -> usize;
    /// The volume's task directory of `id`, for reading its progress file.
    fn task_dir(&self, id: &TaskId) -> Option<PathBuf>;
    fn run(&self, job: &Job, schema: &SchemaRef, input: &[RecordBatch]) -> TaskRun;
}

/// One row of the summary.
#[derive(Debug, Clone)]
struct Record {
    job: Job,
    /// `None` for a partition no executor was left to run.
    executor: Option<usize>,
    task_id: TaskId,
    status: String,
    rows_in: u64,
    rows_out: Option<u64>,
    elapsed: Duration,
    failure: Option<TaskFailure>,
    retried: bool,
}

impl Record {
    fn succeeded(&self) -> bool {
        self.failure.is_none()
    }

    fn executor_name(&self) -> String {
        self.executor.map_or_else(|| "-".into(), |i| i.to_string())
    }
}

/// Everything the workers share.
struct Run<'a> {
    schema: SchemaRef,
    partitions: Vec<Vec<RecordBatch>>,
    output: &'a Path,
    retries: u32,
    queue: Queue,
    records: Mutex<Vec<Record>>,
    display: Display,
    /// Per executor: its sidecar is gone.
    lost: Vec<AtomicBool>,
    /// Set by the signal handler.
    interrupted: &'a AtomicBool,
}

impl Run<'_> {
    /// The run is being stopped: no job starts and no retry is queued from
    /// now on. Checked by the workers themselves, not only by the ticker,
    /// so that a `SIGINT` sent to the whole process group (which also
    /// reaches local-process sidecars, and fails their running tasks at
    /// once) never lets a worker start or retry a task in the ticker's
    /// next 100 ms.
    fn stopping(&self) -> bool {
        if self.interrupted.load(Ordering::SeqCst) {
            self.queue.close();
        }
        self.queue.is_closed()
    }
}

impl std::fmt::Debug for Run<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("partitions", &self.partitions.len())
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

/// What [`run_all`] did.
#[derive(Debug)]
struct Ran {
    /// The summary records, in the order the attempts finished.
    records: Vec<Record>,
    /// Per executor: its sidecar was found gone.
    lost: Vec<bool>,
}

/// Runs every partition on `executors`.
fn run_all<E: Executor>(
    executors: &[E],
    schema: SchemaRef,
    partitions: Vec<Vec<RecordBatch>>,
    output: &Path,
    retries: u32,
    display: Display,
    interrupted: &AtomicBool,
) -> Ran {
    let run = Run {
        queue: Queue::new(partitions.len()),
        schema,
        partitions,
        output,
        retries,
        records: Mutex::new(Vec::new()),
        display,
        lost: executors.iter().map(|_| AtomicBool::new(false)).collect(),
        interrupted,
    };
    let stop_ticker = AtomicBool::new(false);
    if interrupted.load(Ordering::SeqCst) {
        // Interrupted while the sidecars started: run nothing.
        run.queue.close();
    }
    std::thread::scope(|s| {
        let mut workers = Vec::new();
        for (index, executor) in executors.iter().enumerate() {
            for _ in 0..executor.parallelism().max(1) {
                let run = &run;
                workers.push(s.spawn(move || worker(run, index, executor)));
            }
        }
        let ticker = s.spawn(|| tick(&run, executors, &stop_ticker));
        for w in workers {
            // A panicked worker has closed the queue (see `CloseOnPanic`).
            let _ = w.join();
        }
        stop_ticker.store(true, Ordering::Relaxed);
        let _ = ticker.join();
    });
    run.display.finish();
    let mut records = run
        .records
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    records.extend(not_run(&run.queue, &run.partitions, interrupted));
    Ran {
        records,
        lost: run.lost.iter().map(|l| l.load(Ordering::SeqCst)).collect(),
    }
}

/// The display's ticker: progress every 100 ms, and the cancellation of
/// running tasks once interrupted, until `stop`.
fn tick<E: Executor>(run: &Run<'_>, executors: &[E], stop: &AtomicBool) {
    let task_dir = |index: usize, id: &TaskId| executors.get(index)?.task_dir(id);
    let mut cancelled = false;
    while !stop.load(Ordering::Relaxed) {
        if !cancelled && run.interrupted.load(Ordering::SeqCst) {
            cancelled = true;
            cancel_running(run, &task_dir);
        }
        run.display.tick(task_dir);
        std::thread::sleep(Duration::from_millis(100));
    }
    if !cancelled && run.interrupted.load(Ordering::SeqCst) {
        // The workers saw the interruption first and all stopped
        // within the last tick: say so all the same.
        cancel_running(run, &task_dir);
    }
}

/// The records of jobs left in the queue: every executor was lost, or the
/// harness was interrupted.
fn not_run(
    queue: &Queue,
    partitions: &[Vec<RecordBatch>],
    interrupted: &AtomicBool,
) -> Vec<Record> {
    let reason = if interrupted.load(Ordering::SeqCst) {
        "not run: the harness was interrupted"
    } else {
        "not run: no executor was left to run it"
    };
    queue
        .drain()
        .into_iter()
        .map(|job| Record {
            task_id: job.task_id(),
            rows_in: partitions[job.partition]
                .iter()
                .map(|b| b.num_rows() as u64)
                .sum(),
            job,
            executor: None,
            status: "not_run".into(),
            rows_out: None,
            elapsed: Duration::ZERO,
            failure: Some(TaskFailure {
                status: "not_run".into(),
                reason: reason.into(),
                stderr: String::new(),
                executor_lost: false,
            }),
            retried: false,
        })
        .collect()
}

/// After an interruption: no new tasks, and every running one cancelled
/// through its `cancel_flag` (the sidecar stops its logic: TERM, grace, KILL).
fn cancel_running(run: &Run<'_>, task_dir: &dyn Fn(usize, &TaskId) -> Option<PathBuf>) {
    run.queue.close();
    let running = run.display.running();
    run.display.note(&if running.is_empty() {
        "interrupted: no task is running; stopping the sidecars".to_owned()
    } else {
        format!(
            "interrupted: cancelling {} running task(s); interrupt again to quit at once",
            running.len()
        )
    });
    for (id, executor) in running {
        if let Some(dir) = task_dir(executor, &id) {
            let flag = dir.join(sidecar_core::layout::CANCEL_FLAG);
            if let Err(e) = sidecar_core::atomic::touch_atomic(&flag) {
                run.display.note(&format!("cannot cancel {id}: {e}"));
            }
        }
    }
}

/// Closes the queue if its worker panics, so the other workers do not wait
/// forever for the job that worker had in flight.
struct CloseOnPanic<'a>(&'a Queue);

impl Drop for CloseOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.close();
        }
    }
}

fn worker<E: Executor>(run: &Run<'_>, index: usize, executor: &E) {
    let _guard = CloseOnPanic(&run.queue);
    while let Some(job) = run.queue.next() {
        if run.stopping() {
            run.queue.give_back(job);
            return;
        }
        if run.lost[index].load(Ordering::SeqCst) {
            // Another task found this executor's sidecar gone: hand the job
            // back for a live executor, unchanged (it never ran here).
            run.queue.give_back(job);
            return;
        }
        let id = job.task_id();
        let input = &run.partitions[job.partition];
        let rows_in: u64 = input.iter().map(|b| b.num_rows() as u64).sum();
        run.display.started(&id, index);
        let started = Instant::now();
        let outcome = executor.run(&job, &run.schema, input);
        let outcome = outcome.result.and_then(|batches| {
            let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
            // An output without a single batch has no schema of its own:
            // it is written with the input's.
            let schema = batches
                .first()
                .map_or_else(|| run.schema.clone(), RecordBatch::schema);
            write_output(run.output, job.partition, schema, &batches)
                .map(|()| rows)
                .map_err(|e| TaskFailure {
                    status: "failed".into(),
                    reason: e.to_string(),
                    stderr: String::new(),
                    executor_lost: false,
                })
        });
        let elapsed = started.elapsed();
        if matches!(&outcome, Err(f) if f.executor_lost) {
            run.lost[index].store(true, Ordering::SeqCst);
        }
        // No retry once the run is being stopped.
        let retry = outcome.is_err() && job.attempt < run.retries && !run.stopping();
        let next = retry.then(|| Job::new(job.partition, job.attempt + 1));
        let record = match outcome {
            Ok(rows_out) => Record {
                job,
                executor: Some(index),
                task_id: id.clone(),
                status: Status::Succeeded.to_string(),
                rows_in,
                rows_out: Some(rows_out),
                elapsed,
                failure: None,
                retried: false,
            },
            Err(failure) => Record {
                job,
                executor: Some(index),
                task_id: id.clone(),
                status: failure.status.clone(),
                rows_in,
                rows_out: None,
                elapsed,
                failure: Some(failure),
                retried: retry,
            },
        };
        run.display.finished(&id, &record);
        run.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
        run.queue.finish(next);
    }
}

/// Writes one partition's output as Parquet, atomically.
fn write_output(
    dir: &Path,
    partition: usize,
    schema: SchemaRef,
    batches: &[RecordBatch],
) -> Result<(), HarnessError> {
    let path = output_file(dir, partition);
    let tmp = sidecar_core::atomic::temp_path(&path).ok_or_else(|| HarnessError::Output {
        path: path.clone(),
        message: "no file name".into(),
    })?;
    let result = executor_shim::format::write_parquet_file(&tmp, schema, batches)
        .map_err(|e| e.to_string())
        .and_then(|_| std::fs::rename(&tmp, &path).map_err(|e| e.to_string()));
    if let Err(message) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(HarnessError::Output { path, message });
    }
    Ok(())
}

/// Removes the outputs (and temporaries) of an earlier run from `dir`.
fn clear_outputs(dir: &Path) -> Result<usize, HarnessError> {
    let err = |source| HarnessError::OutputDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = (name.starts_with("part-") && name.ends_with(".parquet"))
            || (name.starts_with(".part-") && name.ends_with(".tmp"));
        if ours && entry.file_type().map_err(err)?.is_file() {
            std::fs::remove_file(entry.path()).map_err(err)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The progress display: a bar on a terminal, a line per task otherwise.
#[derive(Debug)]
struct Display {
    bar: Option<ProgressBar>,
    total: usize,
    state: Mutex<DisplayState>,
}

#[derive(Debug, Default)]
struct DisplayState {
    /// Running tasks and their executor.
    running: BTreeMap<TaskId, usize>,
    done: usize,
}

impl Display {
    fn new(total: usize, bar: bool) -> Self {
        let bar = bar.then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} {elapsed:>4} {bar:20} {pos}/{len} tasks  {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            bar,
            total,
            state: Mutex::new(DisplayState::default()),
        }
    }

    fn running(&self) -> Vec<(TaskId, usize)> {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.running.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// A line above the bar (or on stderr).
    fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn started(&self, id: &TaskId, executor: usize) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.running.insert(id.clone(), executor);
    }

    fn finished(&self, id: &TaskId, record: &Record) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.running.remove(id);
        if !record.retried {
            st.done += 1;
        }
        let mut line = format!(
            "[{}/{}] {} on executor {}: {}, {} rows in",
            st.done,
            self.total,
            id,
            record.executor_name(),
            record.status,
            record.rows_in
        );
        if let Some(rows) = record.rows_out {
            let _ = write!(line, ", {rows} rows out");
        }
        let _ = write!(line, ", {:.2} s", record.elapsed.as_secs_f64());
        if let Some(f) = &record.failure {
            let _ = write!(line, ": {}", f.reason);
            if record.retried {
                line.push_str(" (retrying)");
            }
        }
        if let Some(bar) = &self.bar {
            bar.set_position(st.done as u64);
        }
        drop(st);
        self.note(&line);
    }

    /// Refreshes the bar's message with the running tasks' own progress.
    fn tick(&self, task_dir: impl Fn(usize, &TaskId) -> Option<PathBuf>) {
        let Some(bar) = &self.bar else { return };
        let running = self.running();
        let mut msg = String::new();
        for (id, executor) in running {
            if !msg.is_empty() {
                msg.push_str("  ");
            }
            // The nonce only makes the line longer.
            match id.partition_attempt() {
                Some((p, a)) => {
                    let _ = write!(msg, "p{p}-a{a}");
                }
                None => msg.push_str(id.as_str()),
            }
            let progress = task_dir(executor, &id)
                .and_then(|dir| last_progress(&dir.join(sidecar_core::layout::PROGRESS)));
            if let Some((n, m)) = progress {
                let _ = write!(msg, " {n}/{m}");
            }
        }
        bar.set_message(msg);
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The last `N/M` line of a progress file, if any.
pub fn last_progress(path: &Path) -> Option<(u64, u64)> {
    const TAIL: u64 = 4096;
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    let mut tail = Vec::new();
    file.take(TAIL).read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    text.lines().rev().find_map(parse_progress)
}

/// Parses `N/M` (surrounding blanks allowed).
pub fn parse_progress(line: &str) -> Option<(u64, u64)> {
    let (n, m) = line.trim().split_once('/')?;
    Some((n.trim().parse().ok()?, m.trim().parse().ok()?))
}

/// Formats the summary table, the failures' details and the summary line.
fn summary(records: &[Record], partitions: usize, elapsed: Duration) -> (String, bool) {
    let mut rows: Vec<&Record> = records.iter().collect();
    rows.sort_by_key(|r| (r.job.partition, r.job.attempt));
    let mut out = table(&rows);

    // The final attempt of each partition decides it.
    let mut last: BTreeMap<usize, &Record> = BTreeMap::new();
    for r in &rows {
        last.insert(r.job.partition, r);
    }
    let succeeded = last.values().filter(|r| r.succeeded()).count();
    let failed = partitions - succeeded;
    let rows_in: u64 = last.values().map(|r| r.rows_in).sum();
    let rows_out: u64 = last.values().filter_map(|r| r.rows_out).sum();
    let retries = records.iter().filter(|r| r.retried).count();

    out.push_str(&failures(&rows));
    let mut tail = String::new();
    if retries > 0 {
        let _ = write!(tail, ", {retries} retried");
    }
    let _ = writeln!(
        out,
        "\nsummary: {partitions} tasks, {succeeded} succeeded, {failed} failed{tail}, \
         {rows_in} rows in, {rows_out} rows out, {:.2} s",
        elapsed.as_secs_f64()
    );
    (out, failed == 0)
}

/// One line per attempt, in columns.
fn table(rows: &[&Record]) -> String {
    let header = [
        "partition",
        "attempt",
        "executor",
        "task",
        "status",
        "rows in",
        "rows out",
        "time",
        "error",
    ];
    let cells: Vec<[String; 9]> = rows.iter().map(|r| cells(r)).collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let numeric = [true, true, true, false, false, true, true, true, false];
    let mut out = String::new();
    let mut line = |cols: &[String]| {
        let mut l = String::new();
        for (i, c) in cols.iter().enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            if numeric[i] {
                let _ = write!(l, "{c:>w$}", w = widths[i]);
            } else {
                let _ = write!(l, "{c:<w$}", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header.map(String::from));
    for row in &cells {
        line(row);
    }
    out
}

/// The table's cells of one attempt.
fn cells(r: &Record) -> [String; 9] {
    let error = r.failure.as_ref().map_or(String::new(), |f| {
        let mut e = one_line(&f.reason, 100);
        if r.retried {
            e.push_str(" (retried)");
        }
        e
    });
    [
        r.job.partition.to_string(),
        r.job.attempt.to_string(),
        r.executor_name(),
        r.task_id.to_string(),
        r.status.clone(),
        r.rows_in.to_string(),
        r.rows_out.map_or("-".into(), |n| n.to_string()),
        format!("{:.2} s", r.elapsed.as_secs_f64()),
        error,
    ]
}

/// The attempts that ran and failed, with their stderr (the table says
/// which never ran).
fn failures(rows: &[&Record]) -> String {
    let mut out = String::new();
    let failed: Vec<&&Record> = rows
        .iter()
        .filter(|r| r.failure.is_some() && r.executor.is_some())
        .collect();
    if failed.is_empty() {
        return out;
    }
    out.push_str("\nfailures:\n");
    for r in failed {
        let Some(f) = &r.failure else { continue };
        let what = if f.reason.starts_with(&f.status) {
            f.reason.clone()
        } else {
            format!("{}: {}", f.status, f.reason)
        };
        let _ = writeln!(
            out,
            "  {} (partition {}, attempt {}, executor {}): {what}",
            r.task_id,
            r.job.partition,
            r.job.attempt,
            r.executor_name(),
        );
        let stderr = f.stderr.trim_end();
        if !stderr.is_empty() {
            out.push_str("    stderr:\n");
            for l in stderr.lines() {
                let _ = writeln!(out, "      {l}");
            }
        }
    }
    out
}

/// The first line of `s`, at most `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let first = s.lines().next().unwrap_or("");
    if first.chars().count() > max {
        let mut t: String = first.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    } else {
        first.to_owned()
    }
}

/// `executor-shim harness`.
pub fn run(args: HarnessArgs) -> anyhow::Result<Done> {
    let started = Instant::now();
    // The local sidecars inherit our stderr; their per-task info lines would
    // bury the progress and the per-task lines. `SIDECAR_LOG=info` shows them.
    // Set before any thread of ours exists (set_var is not thread-safe).
    if std::env::var_os("SIDECAR_LOG").is_none() {
        std::env::set_var("SIDECAR_LOG", "warn");
    }
    // From here on an interruption stops the run cleanly: sidecars that are
    // starting are stopped again, no task starts, the summary is printed.
    interrupt::install();
    let (input_format, output_format) = formats(&args)?;
    let (schema, partitions, rows) = load(&args)?;
    let removed = clear_outputs(&args.output)?;
    if removed > 0 {
        eprintln!(
            "removed {removed} output file(s) of an earlier run from {}",
            args.output.display()
        );
    }
    let (_temp, volume_root) = volume_root(args.volume_root.as_deref())?;
    let settings = backend::Settings {
        image: args.image.clone(),
        // Empty: the provider's default, the identity.
        command: args.command.clone(),
        input_format,
        output_format,
        stream: args.stream,
        timeout: args.timeout,
        parallel: args.parallel,
    };
    eprintln!(
        "harness: {rows} rows of {} in {} partitions, {} executors ({}), volumes under {}",
        args.input.display(),
        args.partitions,
        args.executors,
        match &args.image {
            Some(image) => format!("docker image {image}"),
            None => "local processes".into(),
        },
        volume_root.display(),
    );
    let executors = backend::start_all(&volume_root, args.executors, &settings)?;

    let show_bar = !args.no_progress && std::io::stderr().is_terminal();
    let ran = run_all(
        &executors,
        schema,
        partitions,
        &args.output,
        args.retries,
        Display::new(args.partitions, show_bar),
        &interrupt::INTERRUPTED,
    );
    // A lost executor's sidecar is known to be gone: its exit is no news.
    let shutdown = backend::shutdown_all(executors, &ran.lost);

    let (text, ok) = summary(&ran.records, args.partitions, started.elapsed());
    print!("{text}");
    let interrupted = interrupt::INTERRUPTED.load(Ordering::SeqCst);
    match shutdown {
        // A Ctrl-C on a terminal reaches the local sidecars too (one process
        // group): that they exited on it is no news.
        Err(e) if interrupted => tracing::info!("{e:#}"),
        other => other?,
    }
    Ok(if interrupted {
        Done::Interrupted
    } else if ok {
        Done::Success
    } else {
        Done::TasksFailed
    })
}

/// The input and output formats, checked against the counts and stream
/// mode.
fn formats(args: &HarnessArgs) -> anyhow::Result<(Format, Format)> {
    if args.partitions == 0 {
        return Err(HarnessError::Zero { flag: "partitions" }.into());
    }
    if args.executors == 0 {
        return Err(HarnessError::Zero { flag: "executors" }.into());
    }
    if args.parallel == Some(0) {
        return Err(HarnessError::Zero { flag: "parallel" }.into());
    }
    let input_format = match args.input_format {
        Some(f) => f,
        None => {
            let own = executor_shim::format::format_from_path(&args.input).ok_or_else(|| {
                HarnessError::UnknownInputFormat {
                    path: args.input.clone(),
                }
            })?;
            // A Parquet or Arrow file input streams as an Arrow IPC stream.
            if args.stream && !own.is_streamable() {
                Format::Arrows
            } else {
                own
            }
        }
    };
    let output_format = args.output_format.unwrap_or(input_format);
    if args.stream {
        for format in [input_format, output_format] {
            if !format.is_streamable() {
                return Err(HarnessError::NotStreamable { format }.into());
            }
        }
    }
    Ok((input_format, output_format))
}

/// The input, read once and sliced zero-copy into partitions; its schema
/// and row count.
fn load(args: &HarnessArgs) -> anyhow::Result<(SchemaRef, Vec<Vec<RecordBatch>>, usize)> {
    let (schema, batches) =
        executor_shim::format::read_path(&args.input, args.batch_size.max(1))
            .with_context(|| format!("cannot read the input {}", args.input.display()))?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let partitions = partition_ranges(rows, args.partitions)
        .into_iter()
        .map(|r| slice_batches(&batches, r))
        .collect();
    Ok((schema, partitions, rows))
}

/// Where the executors' volumes go: `--volume-root`, or a temporary
/// directory removed when the returned guard is dropped.
fn volume_root(given: Option<&Path>) -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf)> {
    match given {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the volume root {}", dir.display()))?;
            Ok((None, dir.to_owned()))
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("executor-shim-harness.")
                .tempdir()
                .context("cannot create a temporary volume root")?;
            let p = t.path().to_owned();
            Ok((Some(t), p))
        }
    }
}

/// SIGINT / SIGTERM: the first one stops the run cleanly (running tasks
/// cancelled, sidecars stopped, the summary printed); the handler resets
/// itself, so a second one ends the process at once.
mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

    pub(super) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_: libc::c_int) {
        // Only an atomic store: async-signal-safe.
        INTERRUPTED.store(true, Ordering::SeqCst);
    }

    pub(super) fn install() {
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESETHAND | SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for sig in [Signal::SIGINT, Signal::SIGTERM] {
            // SAFETY: the handler only stores to an atomic, which is
            // async-signal-safe; no other code of this process relies on
            // these signals' previous dispositions.
            if let Err(e) = unsafe { sigaction(sig, &action) } {
                tracing::warn!("cannot handle {sig}: {e}; it will end the harness at once");
            }
        }
    }
}

/// The real executors: one volume and one [`executor_shim::provider::Sidecar`] each.
mod backend {
    use super::*;
    use executor_shim::client::TaskRequest;
    use executor_shim::error::ShimError;
    use executor_shim::provider::{Provider, ProviderKind, ProviderSpec, Sidecar, SidecarOptions};

    /// How every executor is set up.
    #[derive(Debug, Clone)]
    pub(super) struct Settings {
        pub image: Option<String>,
        pub command: Vec<String>,
        pub input_format: Format,
        pub output_format: Format,
        pub stream: bool,
        pub timeout: Option<Duration>,
        pub parallel: Option<u32>,
    }

    #[derive(Debug)]
    pub(super) struct RealExecutor {
        sidecar: Sidecar,
        settings: Settings,
    }

    impl Executor for RealExecutor {
        fn parallelism(&self) -> usize {
            self.sidecar.ready().parallelism.max(1) as usize
        }

        fn task_dir(&self, id: &TaskId) -> Option<PathBuf> {
            Some(self.sidecar.volume().task(id).root().to_owned())
        }

        fn run(&self, job: &Job, schema: &SchemaRef, input: &[RecordBatch]) -> TaskRun {
            let s = &self.settings;
            let mut request = TaskRequest::new(job.partition as u64, job.attempt);
            request.nonce = job.nonce.clone();
            request.input_format = s.input_format;
            request.output_format = Some(s.output_format);
            request.stream = s.stream;
            request.timeout = s.timeout;
            let mut batches = Vec::new();
            let result = self.sidecar.run_task(
                &request,
                schema.clone(),
                input.iter().cloned().map(Ok),
                None,
                &mut |b| {
                    batches.push(b);
                    Ok(())
                },
            );
            TaskRun {
                result: match result {
                    Ok(_) => Ok(batches),
                    // In stream mode the sink may have seen rows of a task
                    // that then failed: they are dropped with `batches`.
                    Err(e) => Err(failure(&e)),
                },
            }
        }
    }

    /// The summary's view of a shim error: a status, one line, the stderr.
    pub(super) fn failure(e: &ShimError) -> TaskFailure {
        match e {
            ShimError::TaskFailed {
                status,
                exit_code,
                signal,
                reason,
                stderr_tail,
                ..
            } => {
                let how = match (exit_code, signal) {
                    (_, Some(sig)) => Some((format!("killed by signal {sig}"), sig)),
                    (Some(code), None) => Some((format!("exit code {code}"), code)),
                    (None, None) => None,
                };
                let reason = reason.as_deref().filter(|r| !r.is_empty());
                // The sidecar's reason usually names the code already.
                let line = match (how, reason) {
                    (Some((how, n)), Some(r)) if !r.contains(&n.to_string()) => {
                        format!("{how}: {r}")
                    }
                    (_, Some(r)) => r.to_owned(),
                    (Some((how, _)), None) => how,
                    (None, None) => status.to_string(),
                };
                TaskFailure {
                    status: status.to_string(),
                    reason: line,
                    stderr: stderr_tail.clone(),
                    executor_lost: false,
                }
            }
            ShimError::Deadline { .. } => TaskFailure {
                status: Status::TimedOut.to_string(),
                reason: e.to_string(),
                stderr: String::new(),
                executor_lost: false,
            },
            e if e.is_sidecar_failure() => TaskFailure {
                status: Status::Lost.to_string(),
                reason: e.to_string(),
                stderr: String::new(),
                executor_lost: true,
            },
            e => TaskFailure {
                status: Status::Failed.to_string(),
                reason: e.to_string(),
                stderr: String::new(),
                executor_lost: false,
            },
        }
    }

    fn provider(settings: &Settings) -> Result<Provider, ShimError> {
        ProviderSpec {
            kind: Some(match settings.image {
                Some(_) => ProviderKind::Docker,
                None => ProviderKind::Process,
            }),
            // Empty: the provider's default, the identity.
            command: settings.command.clone(),
            image: settings.image.clone(),
            ..Default::default()
        }
        .build()
    }

    /// Starts `n` sidecars at once, on `root/executor-<i>`. If any cannot
    /// start, the others are stopped before the error is returned.
    pub(super) fn start_all(
        root: &Path,
        n: usize,
        settings: &Settings,
    ) -> anyhow::Result<Vec<RealExecutor>> {
        let opts = SidecarOptions {
            parallel: settings.parallel,
            task_timeout: settings.timeout,
            ..SidecarOptions::default()
        };
        let started: Vec<Result<Sidecar, ShimError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let volume = root.join(format!("executor-{i}"));
                    let (provider, opts) = (provider(settings), opts.clone());
                    s.spawn(move || Sidecar::start(&volume, provider?, opts))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(ShimError::Invalid("a sidecar start thread panicked".into()))
                    })
                })
                .collect()
        });
        let mut executors = Vec::with_capacity(n);
        let mut first_error = None;
        for (i, r) in started.into_iter().enumerate() {
            match r {
                Ok(sidecar) => executors.push(RealExecutor {
                    sidecar,
                    settings: settings.clone(),
                }),
                Err(e) if first_error.is_none() => {
                    first_error = Some(anyhow::Error::new(e).context(format!(
                        "executor {i}: cannot start its sidecar on {}",
                        root.join(format!("executor-{i}")).display()
                    )));
                }
                Err(_) => {}
            }
        }
        match first_error {
            Some(e) => {
                // Stop the ones that did start; their errors matter less.
                let _ = shutdown_all(executors, &[]);
                Err(e)
            }
            None => Ok(executors),
        }
    }

    /// Stops every sidecar (at once); the first failure is returned, except
    /// for the executors already known `lost`, whose sidecar is gone.
    pub(super) fn shutdown_all(executors: Vec<RealExecutor>, lost: &[bool]) -> anyhow::Result<()> {
        let results: Vec<(usize, PathBuf, Result<(), ShimError>)> = std::thread::scope(|s| {
            let handles: Vec<_> = executors
                .into_iter()
                .enumerate()
                .map(|(i, e)| {
                    s.spawn(move || {
                        let volume = e.sidecar.volume().root().to_owned();
                        (i, volume, e.sidecar.shutdown())
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for (i, volume, r) in results {
            match r {
                Err(e) if lost.get(i).copied().unwrap_or(false) => {
                    tracing::info!("executor {i} was lost: {e}");
                }
                r => r.with_context(|| format!("stopping the sidecar on {}", volume.display()))?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batches(sizes: &[usize]) -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let mut next = 0i64;
        let batches = sizes
            .iter()
            .map(|&n| {
                let ids: Int64Array = (next..next + n as i64).collect();
                next += n as i64;
                RecordBatch::try_new(schema.clone(), vec![Arc::new(ids)]).unwrap()
            })
            .collect();
        (schema, batches)
    }

    fn ids(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                (0..a.len()).map(|i| a.value(i)).collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn ranges_are_contiguous_and_even() {
        assert_eq!(partition_ranges(10, 3), vec![0..4, 4..7, 7..10]);
        assert_eq!(partition_ranges(2, 4), vec![0..1, 1..2, 2..2, 2..2]);
        assert_eq!(partition_ranges(0, 2), vec![0..0, 0..0]);
        for rows in [0, 1, 7, 2000] {
            for n in 1..10 {
                let r = partition_ranges(rows, n);
                assert_eq!(r.len(), n);
                assert_eq!(r[0].start, 0);
                assert_eq!(r[n - 1].end, rows);
                assert!(r.windows(2).all(|w| w[0].end == w[1].start));
                let lens: Vec<usize> = r.iter().map(|r| r.len()).collect();
                let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
                assert!(hi - lo <= 1, "{rows} over {n}: {lens:?}");
            }
        }
    }

    #[test]
    fn slices_cross_batch_boundaries() {
        let (_, b) = batches(&[3, 0, 4, 5]);
        assert_eq!(ids(&slice_batches(&b, 2..9)), (2..9).collect::<Vec<_>>());
        assert_eq!(ids(&slice_batches(&b, 0..12)), (0..12).collect::<Vec<_>>());
        assert!(slice_batches(&b, 5..5).is_empty());
        let all: Vec<i64> = partition_ranges(12, 5)
            .into_iter()
            .flat_map(|r| ids(&slice_batches(&b, r)))
            .collect();
        assert_eq!(all, (0..12).collect::<Vec<_>>());
    }

    #[test]
    fn progress_lines() {
        assert_eq!(parse_progress("3/10"), Some((3, 10)));
        assert_eq!(parse_progress(" 3 / 10 \r"), Some((3, 10)));
        assert_eq!(parse_progress("half"), None);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("progress");
        assert_eq!(last_progress(&p), None);
        std::fs::write(&p, "1/4\n2/4\nnoise\n").unwrap();
        assert_eq!(last_progress(&p), Some((2, 4)));
        let long: String = (0..5000).map(|i| format!("{i}/5000\n")).collect();
        std::fs::write(&p, long).unwrap();
        assert_eq!(last_progress(&p), Some((4999, 5000)));
    }

    /// Runs tasks in memory: identity, failing where told, counting concurrency.
    struct Fake {
        parallel: usize,
        fail: fn(usize, u32) -> bool,
        /// Failing also loses the executor.
        lose: bool,
        task_time: Duration,
        running: AtomicUsize,
        max_running: AtomicUsize,
        ran: Mutex<Vec<TaskId>>,
    }

    impl Fake {
        fn new(parallel: usize, fail: fn(usize, u32) -> bool) -> Self {
            Self {
                parallel,
                fail,
                lose: false,
                task_time: Duration::from_millis(20),
                running: AtomicUsize::new(0),
                max_running: AtomicUsize::new(0),
                ran: Mutex::new(Vec::new()),
            }
        }
    }

    impl Executor for Fake {
        fn parallelism(&self) -> usize {
            self.parallel
        }
        fn task_dir(&self, _id: &TaskId) -> Option<PathBuf> {
            None
        }
        fn run(&self, job: &Job, _: &SchemaRef, input: &[RecordBatch]) -> TaskRun {
            let (id, attempt) = (job.task_id(), job.attempt);
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(self.task_time);
            self.ran.lock().unwrap().push(id.clone());
            self.running.fetch_sub(1, Ordering::SeqCst);
            let (p, a) = id.partition_attempt().unwrap();
            assert_eq!(a, attempt);
            if (self.fail)(p as usize, attempt) {
                return TaskRun {
                    result: Err(TaskFailure {
                        status: "failed".into(),
                        reason: format!("exit code 3 on {id}"),
                        stderr: "boom\nsecond line".into(),
                        executor_lost: self.lose,
                    }),
                };
            }
            TaskRun {
                result: Ok(input.to_vec()),
            }
        }
    }

    fn read_outputs(dir: &Path) -> BTreeMap<usize, Vec<i64>> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            assert!(name.starts_with("part-"), "stray file {name}");
            let p: usize = name["part-".len()..name.len() - ".parquet".len()]
                .parse()
                .unwrap();
            let r = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
                std::fs::File::open(e.path()).unwrap(),
                1024,
            )
            .unwrap();
            let b: Vec<RecordBatch> = r.collect::<Result<_, _>>().unwrap();
            out.insert(p, ids(&b));
        }
        out
    }

    /// Records, outputs by partition, summary text, success, lost executors.
    type Went = (
        Vec<Record>,
        BTreeMap<usize, Vec<i64>>,
        String,
        bool,
        Vec<bool>,
    );

    fn go(
        executors: &[Fake],
        partitions: usize,
        retries: u32,
    ) -> (Vec<Record>, BTreeMap<usize, Vec<i64>>, String, bool) {
        let (records, outputs, text, ok, lost) = go_with(executors, partitions, retries, false);
        assert!(lost.iter().all(|l| !l), "{text}");
        (records, outputs, text, ok)
    }

    fn go_with(executors: &[Fake], partitions: usize, retries: u32, interrupted: bool) -> Went {
        let (schema, b) = batches(&[100, 50, 73]);
        let parts = partition_ranges(223, partitions)
            .into_iter()
            .map(|r| slice_batches(&b, r))
            .collect();
        let out = tempfile::tempdir().unwrap();
        let ran = run_all(
            executors,
            schema,
            parts,
            out.path(),
            retries,
            Display::new(partitions, false),
            &AtomicBool::new(interrupted),
        );
        let (text, ok) = summary(&ran.records, partitions, Duration::from_secs(1));
        (ran.records, read_outputs(out.path()), text, ok, ran.lost)
    }

    #[test]
    fn every_partition_runs_once_and_executors_share_the_queue() {
        let ex = [Fake::new(2, |_, _| false), Fake::new(1, |_, _| false)];
        let (records, outputs, text, ok) = go(&ex, 9, 1);
        assert!(ok, "{text}");
        assert_eq!(records.len(), 9);
        let all: Vec<i64> = outputs.values().flatten().copied().collect();
        assert_eq!(all, (0..223).collect::<Vec<_>>());
        assert_eq!(outputs.len(), 9);
        // Never more at once than an executor's parallelism. (Which executor
        // ran what is up to the thread scheduler.)
        for e in &ex {
            assert!(e.max_running.load(Ordering::SeqCst) <= e.parallel);
        }
        let ran: usize = ex.iter().map(|e| e.ran.lock().unwrap().len()).sum();
        assert_eq!(ran, 9, "each partition ran once");
        assert!(
            text.contains("summary: 9 tasks, 9 succeeded, 0 failed, 223 rows in, 223 rows out"),
            "{text}"
        );
    }

    #[test]
    fn a_failed_attempt_is_retried_under_a_new_id() {
        let ex = [Fake::new(1, |p, a| p == 2 && a == 0)];
        let (records, outputs, text, ok) = go(&ex, 4, 1);
        assert!(ok, "{text}");
        let ran = ex[0].ran.lock().unwrap().clone();
        let ran: Vec<&str> = ran.iter().map(|id| &id.as_str()[..5]).collect();
        assert!(ran.contains(&"p2-a0"), "{ran:?}");
        assert!(ran.contains(&"p2-a1"), "{ran:?}");
        assert_eq!(records.len(), 5);
        assert_eq!(outputs.len(), 4);
        assert!(text.contains("4 succeeded, 0 failed, 1 retried"), "{text}");
        assert!(
            text.contains("(partition 2, attempt 0, executor 0)"),
            "{text}"
        );
    }

    #[test]
    fn a_partition_that_keeps_failing_has_no_output_and_fails_the_run() {
        let ex = [Fake::new(2, |p, _| p == 1), Fake::new(2, |p, _| p == 1)];
        let (records, outputs, text, ok) = go(&ex, 3, 2);
        assert!(!ok);
        assert_eq!(
            records.iter().filter(|r| r.job.partition == 1).count(),
            3,
            "three attempts of partition 1"
        );
        assert_eq!(outputs.keys().copied().collect::<Vec<_>>(), vec![0, 2]);
        assert!(
            text.contains("3 tasks, 2 succeeded, 1 failed, 2 retried"),
            "{text}"
        );
        assert!(text.contains("p1-a2-"), "{text}");
        assert!(text.contains("      boom\n      second line"), "{text}");
    }

    #[test]
    fn a_lost_executor_takes_no_more_tasks_and_its_task_moves() {
        // Executor 0 loses its sidecar on whatever it runs first (which
        // partitions reach it is up to the thread scheduler).
        let mut lost = Fake::new(2, |_, _| true);
        lost.lose = true;
        let ex = [lost, Fake::new(1, |_, _| false)];
        let (records, outputs, text, ok, lost) = go_with(&ex, 6, 1, false);
        assert_eq!(lost, vec![true, false], "{text}");
        assert!(ok, "{text}");
        assert_eq!(outputs.len(), 6);
        let ran0: Vec<String> = ex[0]
            .ran
            .lock()
            .unwrap()
            .iter()
            .map(|i| i.to_string())
            .collect();
        // Executor 0 ran one task per worker at most, and never a retry: the
        // retry is queued only after the executor is marked lost, and a
        // worker of a lost executor hands every job back.
        assert!(!ran0.is_empty() && ran0.len() <= 2, "{ran0:?}");
        assert!(ran0.iter().all(|i| i.contains("-a0-")), "{ran0:?}");
        let retries: Vec<&Record> = records.iter().filter(|r| r.job.attempt == 1).collect();
        assert_eq!(retries.len(), ran0.len(), "{text}");
        assert!(
            retries
                .iter()
                .all(|r| r.executor == Some(1) && r.succeeded()),
            "{text}"
        );
    }

    #[test]
    fn when_every_executor_is_lost_the_rest_is_reported_not_run() {
        let mut lost = Fake::new(1, |p, _| p == 0);
        lost.lose = true;
        let (records, outputs, text, ok, lost) = go_with(&[lost], 4, 1, false);
        assert_eq!(lost, vec![true]);
        assert!(!ok);
        assert!(outputs.is_empty(), "{outputs:?}");
        assert_eq!(records.len(), 5, "{text}");
        assert_eq!(
            records.iter().filter(|r| r.status == "not_run").count(),
            4,
            "p0-a1 and p1..p3 never ran: {text}"
        );
        assert!(text.contains("4 tasks, 0 succeeded, 4 failed"), "{text}");
        assert!(text.contains("no executor was left to run it"), "{text}");
    }

    #[test]
    fn an_interruption_stops_handing_out_tasks() {
        let mut slow = Fake::new(1, |_, _| false);
        slow.task_time = Duration::from_millis(300);
        let (records, outputs, text, ok, _) = go_with(&[slow], 10, 1, true);
        assert!(!ok, "{text}");
        assert_eq!(records.len(), 10, "{text}");
        let not_run = records.iter().filter(|r| r.status == "not_run").count();
        assert!(not_run >= 1, "{text}");
        assert_eq!(outputs.len(), 10 - not_run, "{text}");
        assert!(
            text.contains("not run: the harness was interrupted"),
            "{text}"
        );
    }

    #[test]
    fn stale_outputs_are_cleared_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "part-00007.parquet",
            ".part-00001.parquet.9.0.tmp",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        assert_eq!(clear_outputs(dir.path()).unwrap(), 2);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("notes.txt")]);
    }
}
