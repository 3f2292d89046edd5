//! # sidecar-shim-python: the executor shim as a Python module
//!
//! `sidecar_shim._native` is the Rust half of the `sidecar_shim` Python
//! package. The Python half (`python/sidecar_shim/__init__.py`) is the
//! public API, `sidecar_shim.map_in_arrow(...)` for PySpark's
//! `DataFrame.mapInArrow`; this half wraps
//! [`executor_shim::provider::Sidecar`] and moves batches:
//!
//! ```text
//!  Python worker thread (holds the GIL)          task thread (Rust)
//!  ───────────────────────────────────────       ──────────────────────────────────────
//!  Sidecar.run(p, a, nonce, reader, ...) ─spawn─▶ Sidecar::run_task(request, schema,
//!                                                    input = C stream of `reader`,
//!                                                    sink  = bounded channel)
//!  for batch in TaskRun:                           │ pulls input: pyarrow takes the GIL
//!      __next__: GIL released, recv ◀──channel─────┘ to call the Python iterator;
//!                GIL taken, batch -> pyarrow         output batches sent as they are read
//! ```
//!
//! ## Theory of operation
//!
//! * **Zero copy.** Input arrives as a `pyarrow.RecordBatchReader` exported
//!   through the Arrow C stream interface ([`RecordBatchStreamReader`]);
//!   output batches go back through the C data interface ([`ToPyArrow`]).
//!   Buffers are shared across the boundary, not copied.
//! * **The GIL** is held only while an input batch is pulled out of the
//!   Python iterator (pyarrow's C stream takes it) and while an output batch
//!   is handed over. Starting a sidecar, staging, waiting for the logic and
//!   reading its output run with the GIL released.
//! * **Memory.** Output batches reach Python as the shim reads them, through
//!   a channel of [`OUTPUT_DEPTH`] batches, in file mode and stream mode
//!   alike; in stream mode they flow while the logic still runs. If Python
//!   stops reading (a `limit()`, a failing downstream operator), the
//!   receiver is dropped, the sink refuses the next batch and the shim
//!   cancels the task.
//! * **Errors** raise `SidecarError` (a `RuntimeError`) carrying the shim's
//!   message: task id, status, exit code, stderr tail. A sidecar failure
//!   (gone, hung, never ready) also marks the handle dead, so the Python
//!   side starts a fresh sidecar for the next task instead of failing every
//!   retry on the same corpse.
//!
//! Tested by `tests/python/` (pytest, real `local[2]` Spark). There is no
//! Rust test target: an extension module is linked against the
//! interpreter that loads it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ffi_stream::RecordBatchStreamReader;
use arrow::pyarrow::{FromPyArrow, PyArrowType, ToPyArrow};
use arrow::record_batch::RecordBatchReader;
use executor_shim::client::{CancelToken, TaskReport, TaskRequest};
use executor_shim::error::ShimError;
use executor_shim::provider::{
    Provider, ProviderKind, ProviderSpec, Sidecar as ShimSidecar, SidecarOptions,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use sidecar_core::{Format, TaskId};

create_exception!(
    _native,
    SidecarError,
    PyRuntimeError,
    "A task or its sidecar failed. The message names the task, its status, the exit code and the tail of the logic's stderr."
);

/// Output batches buffered between a task thread and Python.
pub const OUTPUT_DEPTH: usize = 4;

fn sidecar_err(e: impl std::fmt::Display) -> PyErr {
    SidecarError::new_err(e.to_string())
}

fn parse_format(name: &str, what: &str) -> PyResult<Format> {
    Format::ALL
        .into_iter()
        .find(|f| f.extension() == name)
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "{what}={name:?} is not one of arrow, arrows, parquet, csv, jsonl"
            ))
        })
}

fn seconds(name: &str, value: Option<f64>) -> PyResult<Option<Duration>> {
    value
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "{name}= must be a positive number of seconds, not {s}"
                    ))
                })
        })
        .transpose()
}

/// The shim's provider for the Python arguments.
fn provider(
    kind: &str,
    command: Option<Vec<String>>,
    image: Option<String>,
    entrypoint: Option<PathBuf>,
    docker: Option<String>,
    user: Option<String>,
) -> PyResult<Provider> {
    let kind: ProviderKind = kind
        .parse()
        .map_err(|e: ShimError| PyValueError::new_err(e.to_string()))?;
    ProviderSpec {
        kind: Some(kind),
        command: command.unwrap_or_default(),
        image,
        entrypoint,
        docker_cli: docker,
        user,
    }
    .build()
    .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// One handle on the sidecar serving a volume (started here or attached to).
#[pyclass(name = "Sidecar", module = "sidecar_shim._native", frozen)]
#[derive(Debug)]
struct PySidecar {
    volume: PathBuf,
    owner: bool,
    /// Set when a task failed because of the sidecar itself.
    dead: Arc<AtomicBool>,
    inner: Mutex<Option<Arc<ShimSidecar>>>,
}

impl PySidecar {
    fn handle(&self) -> PyResult<Arc<ShimSidecar>> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| {
                SidecarError::new_err(format!(
                    "the sidecar handle for {} is closed",
                    self.volume.display()
                ))
            })
    }
}

#[pymethods]
impl PySidecar {
    /// Starts the sidecar serving `volume`, or attaches to the one already
    /// serving it. `provider` is "process", "docker" or "attach".
    #[new]
    #[pyo3(signature = (volume, provider, *, command=None, image=None, entrypoint=None,
                        parallel=None, lease_timeout=None, ready_timeout=None,
                        docker=None, user=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        volume: PathBuf,
        provider: &str,
        command: Option<Vec<String>>,
        image: Option<String>,
        entrypoint: Option<PathBuf>,
        parallel: Option<u32>,
        lease_timeout: Option<f64>,
        ready_timeout: Option<f64>,
        docker: Option<String>,
        user: Option<String>,
    ) -> PyResult<Self> {
        let provider = self::provider(provider, command, image, entrypoint, docker, user)?;
        let mut opts = SidecarOptions {
            parallel,
            ..SidecarOptions::default()
        };
        if let Some(t) = seconds("lease_timeout", lease_timeout)? {
            opts.lease_timeout = t;
            // Renew well within the bound, however short it is.
            opts.lease_interval = opts.lease_interval.min(t / 4);
        }
        if let Some(t) = seconds("ready_timeout", ready_timeout)? {
            opts.ready_timeout = t;
        }
        let vol = volume.clone();
        let sidecar = py
            .detach(move || ShimSidecar::start(&vol, provider, opts))
            .map_err(sidecar_err)?;
        Ok(Self {
            volume,
            owner: sidecar.is_owner(),
            dead: Arc::new(AtomicBool::new(false)),
            inner: Mutex::new(Some(Arc::new(sidecar))),
        })
    }

    /// The volume this handle serves.
    #[getter]
    fn volume(&self) -> PathBuf {
        self.volume.clone()
    }

    /// Whether this handle started the sidecar (rather than attached to it).
    #[getter]
    fn owner(&self) -> bool {
        self.owner
    }

    /// The sidecar's pid, from its ready record (inside its container for
    /// the docker provider).
    #[getter]
    fn pid(&self) -> PyResult<u32> {
        Ok(self.handle()?.ready().pid)
    }

    /// Whether the handle is open, no task has found its sidecar gone, and
    /// its heartbeat is fresh. Checked before each task, so a sidecar that
    /// died between tasks is replaced before the task's input is consumed.
    fn alive(&self) -> bool {
        if self.dead.load(Ordering::SeqCst) {
            return false;
        }
        self.handle().is_ok_and(|h| h.is_alive())
    }

    /// Runs one task of `partition`/`attempt` (`nonce` tells runs of one
    /// attempt apart). `reader` is the input, a `pyarrow.RecordBatchReader`
    /// (or anything with `__arrow_c_stream__`); the returned `TaskRun`
    /// iterates the output batches. `schema` (a `pyarrow.Schema`) is the
    /// expected output: batches are conformed to it and a mismatch names
    /// the column.
    #[pyo3(signature = (partition, attempt, nonce, reader, *, input_format="arrows",
                        output_format=None, stream=false, timeout=None, schema=None))]
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        partition: u64,
        attempt: u32,
        nonce: String,
        reader: &Bound<'_, PyAny>,
        input_format: &str,
        output_format: Option<&str>,
        stream: bool,
        timeout: Option<f64>,
        schema: Option<PyArrowType<Schema>>,
    ) -> PyResult<TaskRun> {
        let request = TaskRequest {
            nonce,
            input_format: parse_format(input_format, "input_format")?,
            output_format: output_format
                .map(|f| parse_format(f, "output_format"))
                .transpose()?,
            stream,
            timeout: seconds("timeout", timeout)?,
            ..TaskRequest::new(partition, attempt)
        };
        let id = request.task_id();
        let expected: Option<SchemaRef> = schema.map(|s| Arc::new(s.0));
        let input = RecordBatchStreamReader::from_pyarrow_bound(reader)?;
        let sidecar = self.handle()?;
        let dead = Arc::clone(&self.dead);
        let cancel = request.cancel.clone();

        let (tx, rx) = sync_channel::<Msg>(OUTPUT_DEPTH);
        let handle = Arc::clone(&sidecar);
        std::thread::Builder::new()
            .name(format!("sidecar-{id}"))
            .spawn(move || task_thread(&handle, &request, input, expected, &dead, &tx))
            .map_err(|e| sidecar_err(format!("task {id}: cannot start its thread: {e}")))?;
        Ok(TaskRun {
            task_id: id,
            rx: Mutex::new(Some(rx)),
            report: Mutex::new(None),
            cancel,
            sidecar,
        })
    }

    /// Releases this handle. The sidecar is stopped if this was its last
    /// user on the executor (whichever handle started it); otherwise it
    /// lives on for the others, its lease bounding its life.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let handle = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(handle) = handle else {
            return Ok(());
        };
        py.detach(move || match Arc::try_unwrap(handle) {
            Ok(sidecar) => sidecar.shutdown(),
            // A task thread still holds it: the last one to finish drops
            // it, and dropping stops it the same way.
            Err(_shared) => Ok(()),
        })
        .map_err(sidecar_err)
    }

    fn __repr__(&self) -> String {
        format!(
            "Sidecar(volume={:?}, owner={}, alive={})",
            self.volume.display().to_string(),
            self.owner,
            self.alive()
        )
    }
}

/// What a task thread sends to Python.
#[derive(Debug)]
enum Msg {
    Batch(RecordBatch),
    Done(Box<Result<TaskReport, ShimError>>),
}

fn task_thread(
    sidecar: &ShimSidecar,
    request: &TaskRequest,
    input: RecordBatchStreamReader,
    expected: Option<SchemaRef>,
    dead: &AtomicBool,
    tx: &SyncSender<Msg>,
) {
    let schema = input.schema();
    let mut sink = |batch: RecordBatch| {
        tx.send(Msg::Batch(batch)).map_err(|_| {
            ShimError::Sink("the Python side stopped reading the task's output".to_owned())
        })
    };
    let result = sidecar.run_task(request, schema, input, expected, &mut sink);
    if let Err(e) = &result {
        if e.is_sidecar_failure() {
            dead.store(true, Ordering::SeqCst);
        }
    }
    // The receiver is gone when Python stopped early: nobody to tell.
    let _ = tx.send(Msg::Done(Box::new(result)));
}

/// The output of one task: an iterator of `pyarrow.RecordBatch`. Raises
/// `SidecarError` when the task failed (in stream mode, after the batches
/// that arrived before the failure was known: Spark discards a failed
/// task's output).
#[pyclass(module = "sidecar_shim._native", frozen)]
#[derive(Debug)]
struct TaskRun {
    task_id: TaskId,
    rx: Mutex<Option<Receiver<Msg>>>,
    report: Mutex<Option<TaskReport>>,
    /// Cancels the task when Python lets go of it early.
    cancel: CancelToken,
    sidecar: Arc<ShimSidecar>,
}

impl TaskRun {
    /// Stops the task if it still runs: its logic is stopped in the sidecar
    /// at once, not when it would next hand over a batch.
    fn stop(&self) {
        let running = self
            .rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .is_some();
        if running {
            self.cancel.cancel();
            self.sidecar.wake();
        }
    }
}

impl Drop for TaskRun {
    fn drop(&mut self) {
        // A generator Spark closed (a cancelled job, a `limit`) drops it.
        self.stop();
    }
}

#[pymethods]
impl TaskRun {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let mut guard = self.rx.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(rx) = guard.as_mut() else {
            return Ok(None);
        };
        let msg = py.detach(move || rx.recv());
        match msg {
            Ok(Msg::Batch(batch)) => Ok(Some(batch.to_pyarrow(py)?.unbind())),
            Ok(Msg::Done(result)) => {
                *guard = None;
                let report = (*result).map_err(sidecar_err)?;
                *self.report.lock().unwrap_or_else(PoisonError::into_inner) = Some(report);
                Ok(None)
            }
            Err(_) => {
                *guard = None;
                Err(sidecar_err(format!(
                    "task {}: the task thread ended without a result (it panicked; see stderr)",
                    self.task_id
                )))
            }
        }
    }

    /// Stops reading: the task is cancelled if it still runs.
    fn close(&self) {
        self.stop();
    }

    /// The task id.
    #[getter]
    fn task_id(&self) -> String {
        self.task_id.to_string()
    }

    /// What the finished task did, as a dict (None until the output is exhausted).
    #[getter]
    fn report<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let guard = self.report.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(r) = guard.as_ref() else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("task_id", r.task.as_str())?;
        d.set_item("status", r.outcome.status.to_string())?;
        d.set_item("exit_code", r.outcome.exit_code)?;
        d.set_item("duration_ms", r.outcome.duration_ms)?;
        d.set_item("cpu_ms", r.outcome.cpu_ms)?;
        d.set_item("max_rss_kib", r.outcome.max_rss_kib)?;
        d.set_item("rows_in", r.rows_in)?;
        d.set_item("bytes_in", r.bytes_in)?;
        d.set_item("rows_out", r.rows_out)?;
        d.set_item("bytes_out", r.bytes_out)?;
        d.set_item("elapsed_s", r.elapsed.as_secs_f64())?;
        Ok(Some(d))
    }

    fn __repr__(&self) -> String {
        format!("TaskRun({})", self.task_id)
    }
}

/// Removes the volume at `path` if what it served is gone for good: nobody
/// holds its sidecar and the sidecar no longer runs. Returns whether it was
/// removed.
#[pyfunction]
fn reclaim_volume(py: Python<'_>, path: PathBuf) -> PyResult<bool> {
    py.detach(move || executor_shim::provider::reclaim(&path))
        .map_err(sidecar_err)
}

/// The id of one attempt of one partition: `p<partition>-a<attempt>-<nonce>`
/// (only `[A-Za-z0-9]` of the nonce is kept, up to 32 characters).
#[pyfunction]
fn task_id(partition: u64, attempt: u32, nonce: &str) -> String {
    TaskId::for_attempt(partition, attempt, nonce).to_string()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("SidecarError", m.py().get_type::<SidecarError>())?;
    m.add_class::<PySidecar>()?;
    m.add_class::<TaskRun>()?;
    m.add_function(wrap_pyfunction!(task_id, m)?)?;
    m.add_function(wrap_pyfunction!(reclaim_volume, m)?)?;
    Ok(())
}
