//! # sidecar-core
//!
//! The shared-volume protocol between a Spark executor and the user's
//! container beside it. The two sides share nothing but a directory; this
//! crate is the contract on that directory and the mechanics both sides need
//! to use it without hangs, races or lost data.
//!
//! ## The protocol
//!
//! ```text
//!  executor side                         volume                          sidecar side
//!  ─────────────                         ──────                          ────────────
//!                                        sidecar/ready      ◀── written once, then
//!                                        sidecar/heartbeat  ◀── refreshed every interval
//!  lease refreshed ──▶                   executor/lease
//!  mkdir tasks/<id>/, stage input/ ──▶   tasks/<id>/input/
//!  write start_flag (task spec) ──▶      tasks/<id>/start_flag  ──▶ seen (inotify)
//!                                        tasks/<id>/{stdout,stderr,progress,output/} ◀── logic runs
//!  seen (inotify) ◀──                    tasks/<id>/done_flag   ◀── outcome + manifest
//!  read listed outputs, verified
//!  write close_flag ──▶                  tasks/<id>/close_flag  ──▶ task dir removed
//!  (at the end) write close_flag ──▶     close_flag             ──▶ drain, exit 0
//! ```
//!
//! `oneshot` mode is the same task with the volume root as its directory:
//! `start_flag`, `done_flag`, `close_flag` and `logfile` at the root, as the
//! Foundry example expects.
//!
//! ## Theory of operation
//!
//! * **Atomic flags** ([`atomic`]): every flag and staged file is written to a
//!   dot-prefixed temporary in the same directory and renamed into place;
//!   readers skip dot-files. A reader sees all of a flag or none of it.
//! * **Event-driven waits** ([`wait`]): one inotify instance per [`wait::Watch`],
//!   waits armed before they check, so a flag that appears in between is not
//!   missed; a polling fallback when inotify cannot be used; every wait
//!   bounded by a deadline.
//! * **Liveness** ([`liveness`]): heartbeat and lease files carry a sequence
//!   number; a monitor judges staleness by when the content last changed on
//!   its own clock, so no two clocks need to agree.
//! * **State machine** ([`state`], [`protocol`]): a pure transition function
//!   that drives: [`protocol::drive`] asks the part owning the current state
//!   for the next event and the machine for where it leads, so an event out
//!   of order is an error, not a silently reordered run. Waiter, runner and
//!   flag writer are injected.
//! * **One implementation of the effects** ([`files`]): the file-backed
//!   waiter and flag writer of both modes, and the executor's side of the
//!   flags, used by the entrypoint, the shim, the benchmark and the tests.
//! * **Fencing** ([`id`]): task ids carry partition and attempt.
//! * **Safety** ([`beneath`], [`safepath`], [`manifest`]): every path on the
//!   volume is resolved from the volume root one component at a time,
//!   never through a link (a link anywhere is an error naming it); paths
//!   from the other side are validated first; outputs are read only if
//!   listed, and verified by size and checksum as they are read.
//!
//! ## Where things live
//!
//! | module | what |
//! |---|---|
//! | [`layout`] | every path of both modes |
//! | [`record`] | the JSON records (`ready`, task spec, outcome), bounded reads |
//! | [`id`] | task ids (fencing) |
//! | [`state`] | the pure state machine |
//! | [`protocol`] | the driver and its traits (`Waiter`, `Runner`, `FlagWriter`) |
//! | [`files`] | the file-backed effects: sidecar side and executor side |
//! | [`atomic`] | dot-temporary + rename writes |
//! | [`wait`] | inotify waits with a polling fallback |
//! | [`liveness`] | heartbeat and lease: beating, and judging by content |
//! | [`owner`] | who holds a task or the sidecar on the executor side (`flock`) |
//! | [`beneath`] | the one resolver: paths opened, listed and removed from the volume root, never through a link |
//! | [`safepath`], [`manifest`] | path safety, output manifests and verified reads |
//! | [`procfs`] | the few `/proc` facts both sides read |
//! | [`time`] | duration flags and deadlines that never overflow |
//!
//! ## Known problems
//!
//! * Network and FUSE filesystems (NFS, many CSI drivers) deliver no inotify
//!   events for changes made by another machine or container runtime layer.
//!   Waits still complete, at the recheck tick; select [`wait::WatchMode::Poll`]
//!   with a short interval there. [`wait::probe_events`] tells whether events
//!   arrive on a given directory.
//! * inotify has per-user limits (`fs.inotify.max_user_instances`,
//!   `fs.inotify.max_user_watches`). When they are exhausted a
//!   [`wait::WatchMode::Auto`] watch logs a warning and polls; a
//!   [`wait::WatchMode::Native`] one returns [`wait::WaitError::WatchLimit`]
//!   or [`wait::WaitError::TooManyInstances`].
//! * Renames are atomic only within one filesystem: the volume must be one
//!   mount, which an `emptyDir` or a bind mount is.
//!
//! ## Example
//!
//! ```
//! use sidecar_core::{atomic, layout::Volume, record::TaskSpec, id::TaskId, wait};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let volume = Volume::new(dir.path());
//! let task = volume.task(&TaskId::for_attempt(3, 0, ""));
//! std::fs::create_dir_all(task.input())?;
//! let watch = wait::Watch::new(wait::WatchConfig::default())?;
//! watch.add(task.root())?;
//! let spec = TaskSpec { timeout_ms: Some(60_000), ..Default::default() };
//! atomic::write_atomic(&task.start_flag(), &serde_json::to_vec(&spec)?, atomic::Durability::Visible)?;
//! // ... a sidecar would now run the logic and write the done flag ...
//! # atomic::touch_atomic(&task.done_flag())?;
//! wait::wait_for_file(&watch, &task.done_flag(), Some(std::time::Instant::now() + std::time::Duration::from_secs(5)))?;
//! # Ok(()) }
//! ```

pub mod atomic;
pub mod beneath;
pub mod files;
pub mod id;
pub mod layout;
pub mod liveness;
pub mod manifest;
pub mod owner;
pub mod procfs;
pub mod protocol;
pub mod record;
pub mod safepath;
pub mod state;
pub mod time;
pub mod wait;

pub use id::TaskId;
pub use layout::{TaskDir, Volume};
pub use record::{
    Format, Outcome, OutputFile, Ready, Status, TaskSpec, Timestamp, PROTOCOL_VERSION,
};

/// This library's version, written into `sidecar/ready`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
