//! # executor-shim
//!
//! The executor side of the sidecar protocol: embedded in a Spark executor
//! (through the Python module, for `mapInArrow`) or run as the
//! `executor-shim` CLI. It stages a partition on the shared volume, has the
//! sidecar run the user's logic on it, and reads the output back as Arrow,
//! verified and checked against the expected schema.
//!
//! ## Where things live
//!
//! The library is the executor side of the protocol and nothing else: no
//! argument parsing, no progress bars, no process-wide state (logging,
//! signal handlers, environment). The `executor-shim` command line is its
//! own package (`executor-shim/cli`, binary `executor-shim`), and the
//! Python module another (`executor-shim/python`); both build on this.
//!
//! | module | what |
//! |---|---|
//! | [`format`] | Arrow batches to and from `arrow`, `arrows`, `parquet`, `csv`, `jsonl` |
//! | [`stream`] | FIFOs written and read without hangs (stream mode) |
//! | [`client`] | one task against a serving sidecar ([`client::run_task`]), and the sidecar's [`client::Health`] |
//! | [`provider`] | where the sidecar comes from ([`ProviderSpec`] names it), one per volume, none outliving its executor ([`provider::Sidecar`]) |
//! | [`pod_template`] | the Kubernetes executor pod template: model, checks and renderer |
//! | [`error`] | the one error type, [`ShimError`] |
//!
//! The flags themselves (start, cancel, close written; done read) are the
//! core library's executor side, [`sidecar_core::files::ExecutorFlags`],
//! which walks the same state machine as the sidecar.

//! ## One task
//!
//! ```text
//!  executor (this crate)                      volume                       sidecar
//!  ─────────────────────                      ──────                       ───────
//!  Sidecar::start ── flock executor/sidecar.lock, spawn or attach
//!                                             sidecar/ready      ◀──────── serving
//!  lease Beater ───────────────────────────▶  executor/lease               (orphan check)
//!  run_task:
//!   rm -r leftover, mkdir (0777) ──────────▶  tasks/<id>/{input,output}/
//!   watch tasks/<id>/ (armed first)
//!   file: input/part.<ext> (temp + rename) ▶  tasks/<id>/input/part.<ext>
//!   stream: mkfifo input/ and output/ parts
//!   start_flag (TaskSpec JSON) ────────────▶  tasks/<id>/start_flag ─────▶ runs the logic
//!   stream: write input FIFO ║ read output FIFO, as the logic runs
//!   wait: done_flag? sidecar exited? heartbeat stale? deadline (-> cancel_flag)?
//!                                             tasks/<id>/done_flag  ◀───── outcome + manifest
//!   TaskFailed unless succeeded (exit code, signal, reason, stderr tail)
//!   read exactly the manifest's files, no links followed, size + checksum verified
//!   close_flag ────────────────────────────▶  tasks/<id>/close_flag ─────▶ removes tasks/<id>/
//!  Sidecar::shutdown (last user) ──────────▶  close_flag            ─────▶ drains, exits 0
//! ```
//!
//! ## Theory of operation
//!
//! * **Never a hang.** Every wait is bounded three ways: the sidecar's
//!   heartbeat must keep changing ([`sidecar_core::liveness::Monitor`]), a
//!   child sidecar must not have exited, and the task's deadline must not
//!   have passed. Stream mode polls its FIFOs in short slices and checks the
//!   same conditions between them ([`stream`]).
//! * **Never a wrong result.** Outputs are read only from the done flag's
//!   manifest, opened beneath `output/` without following links, refused if
//!   they are FIFOs, directories or hard links, and verified by size and
//!   checksum before any row reaches the caller (and again while read). A
//!   schema mismatch names the file and the column.
//! * **Fencing.** Task ids carry partition, attempt and a random nonce; a
//!   task only ever reads its own directory.
//! * **One sidecar per executor, none left behind.** See [`provider`]: a
//!   start lock, shared user locks (the last user stops the sidecar), and a
//!   lease the sidecar watches with `--exit-on-orphan`, so even a `SIGKILL`ed
//!   executor leaves no sidecar after `lease_timeout` plus the grace.
//! * **Blocking API.** No async runtime: the callers (the CLI, the Python
//!   module) are synchronous. A [`provider::Sidecar`] is `Send + Sync`; run
//!   tasks on it from as many threads as the sidecar has parallelism.
//!
//! ## Stream mode caveat
//!
//! In stream mode output batches reach the sink while the logic runs, before
//! its outcome is known. If `run_task` returns `Err`, discard everything the
//! sink received for that task (Spark does this for a failed task).
//!
//! ## Known problems
//!
//! * After the outcome, stream mode takes a quiet [`stream::POLL_SLICE`] on
//!   the output FIFO as its end; a descendant of the logic that keeps the
//!   FIFO open and writes later than that is cut off.
//! * Sidecar exit is noticed at the wait's recheck tick (500 ms with
//!   inotify); a hung sidecar at the heartbeat bound (5 s by default).
//! * The entrypoint's `SIGKILL` (the last resort of shutdown) cannot reach
//!   the logic's process groups; the close flag and `SIGTERM` come first.
//!
//! ## Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use arrow::array::{Int64Array, RecordBatch};
//! use arrow::datatypes::{DataType, Field, Schema};
//! use executor_shim::provider::{ProviderSpec, Sidecar, SidecarOptions};
//! use executor_shim::TaskRequest;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
//! let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2, 3]))])?;
//! let logic = vec!["sh".into(), "-c".into(), r#"cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#.into()];
//! let provider = ProviderSpec { command: logic, ..Default::default() }.build()?;
//! let sidecar = Sidecar::start("/tmp/volume".as_ref(), provider, SidecarOptions::default())?;
//! let mut rows = 0;
//! let report = sidecar.run_task(
//!     &TaskRequest::new(0, 0),
//!     schema.clone(),
//!     std::iter::once(Ok(batch)),
//!     Some(schema),
//!     &mut |b| {
//!         rows += b.num_rows();
//!         Ok(())
//!     },
//! )?;
//! assert_eq!(report.rows_out, 3);
//! sidecar.shutdown()?;
//! # Ok(()) }
//! ```

pub mod client;
pub mod error;
pub mod format;
pub mod pod_template;
pub mod provider;
pub mod stream;

pub use client::{run_task, TaskReport, TaskRequest};
pub use error::ShimError;
pub use provider::{Provider, ProviderKind, ProviderSpec, Sidecar, SidecarOptions};
