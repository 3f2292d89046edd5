//! serve mode: one long-lived sidecar, many tasks under `tasks/`, at most
//! `--parallel` running at once.
//!
//! The main loop discovers tasks (a recursive inotify watch on `tasks/`,
//! plus a rescan on every event and every tick: a file created in a new
//! directory before its watch is added makes no event), watches the root
//! `close_flag` and the executor's lease, and spawns one driver per task.
//! Each driver is [`sidecar_core::protocol::drive`] over this module's real
//! [`Waiter`], [`Runner`] and [`FlagWriter`], so the state machine is the
//! one the library tests.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sidecar_core::atomic::{write_atomic_beneath, Durability};
use sidecar_core::files::{FileFlags, StopSender, TaskFiles};
use sidecar_core::id::TaskId;
use sidecar_core::layout::{self, TaskDir, Volume};
use sidecar_core::liveness::{Beater, Liveness, Monitor};
use sidecar_core::manifest::ManifestError;
use sidecar_core::owner;
use sidecar_core::protocol::{self, Event, Finish, FlagWriter, ProtocolError, Reject, Runner};
use sidecar_core::record::{
    read_flag_beneath, Outcome, OutputFile, Ready, Status, TaskSpec, Timestamp,
};
use sidecar_core::safepath::PathError;
use sidecar_core::wait::{WaitError, Watch};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::cli::{RunArgs, UserCommand};
use crate::discovery::Discovery;
use crate::oneshot::exit_from;
use crate::supervisor::{Cancel, Child, Spawn};
use crate::{lock, Ctx, End};

/// The longest the main loop sleeps without an event.
const MAX_TICK: Duration = Duration::from_millis(250);

/// How long in-flight tasks get, after a stop signal, to write their done
/// flags beyond the grace.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);

/// Why a task whose owner died is stopped.
const OWNER_GONE: &str = "the task's owner on the executor side went away (its process exited)";

/// Why a done task's directory outlives the sidecar.
const DRAINING: &str = "the sidecar is shutting down; task directory left in place";

pub async fn run(ctx: &Ctx, args: &RunArgs, cmd: UserCommand) -> End {
    match run_inner(ctx, args, cmd).await {
        Ok(end) => end,
        Err(e) => End::Internal(e),
    }
}

/// State shared by the main loop and every task driver.
#[derive(Debug)]
struct Server {
    ctx: Ctx,
    volume: Volume,
    watch: Arc<Watch>,
    cmd: UserCommand,
    timeout: Option<Duration>,
    slots: Arc<Semaphore>,
    /// Lease aborts: (epoch, reason). A task is aborted by every epoch
    /// after the one current when it was discovered.
    abort: watch::Sender<(u64, String)>,
    /// Raised on the root close_flag or a stop signal: drivers stop waiting
    /// for close flags.
    stop: StopSender,
    /// Tasks whose done flag is not written yet.
    pending: watch::Sender<usize>,
    /// Tasks being driven (by id).
    active: Mutex<HashSet<TaskId>>,
    /// Set when a task's outcome could not be written even after its
    /// files were freed: its executor would wait for it forever, so the
    /// sidecar stops (and with it the heartbeat the executor watches).
    lost: Mutex<Option<String>>,
}

async fn run_inner(ctx: &Ctx, args: &RunArgs, cmd: UserCommand) -> anyhow::Result<End> {
    let volume = args.existing_volume()?;
    let root = volume.root().to_owned();
    for dir in [volume.sidecar_dir(), volume.tasks_dir()] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // The executor may run as another user (Spark's uid 185 beside a
    // sidecar of uid 5001, as in a pod): it must be able to create its task
    // directories, whatever our umask. Best effort: a `tasks/` made by
    // someone else keeps its owner's mode.
    {
        use std::os::unix::fs::PermissionsExt;
        let _ =
            std::fs::set_permissions(volume.tasks_dir(), std::fs::Permissions::from_mode(0o777));
    }
    // A ready record from an earlier sidecar must not announce this one
    // before its init scripts ran.
    // From the volume root: a `sidecar/` that is a link is refused, and
    // nothing behind it is removed.
    volume
        .beneath()
        .remove_all(&volume.ready())
        .with_context(|| format!("cannot remove {}", volume.ready().display()))?;
    let env = vec![(OsString::from("SHARED_DIR"), root.clone().into_os_string())];
    if let Err(e) = crate::init::run_all(ctx, &args.init_scripts, &env).await {
        return Ok(End::InitFailed(e.into()));
    }
    let parallel = args.parallel.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1)
    });
    let watch = Arc::new(Watch::new(args.watch_config()).context("cannot watch the volume")?);
    // The journal first: discovery looks where events happened.
    watch.keep_journal();
    for dir in [&root, &volume.tasks_dir()] {
        watch
            .add(dir)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
    }
    let beater = Beater::start_beneath(volume.beneath(), volume.heartbeat(), args.heartbeat)
        .context("cannot start the heartbeat")?;
    let ready = Ready {
        protocol: sidecar_core::record::PROTOCOL_VERSION,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        parallelism: parallel,
        started_at: Timestamp::now(),
    };
    let bytes = serde_json::to_vec(&ready).context("cannot encode the ready record")?;
    write_atomic_beneath(
        &volume.beneath(),
        &volume.ready(),
        &bytes,
        Durability::Visible,
    )?;
    tracing::info!(volume = %root.display(), parallel, command = %cmd.shown, polling = watch.is_polling(), "serving");

    let server = Arc::new(Server {
        ctx: ctx.clone(),
        volume,
        watch,
        cmd,
        timeout: args.timeout,
        slots: Arc::new(Semaphore::new(parallel as usize)),
        abort: watch::Sender::new((0, String::new())),
        stop: sidecar_core::files::Stop::new().0,
        pending: watch::Sender::new(0),
        active: Mutex::new(HashSet::new()),
        lost: Mutex::new(None),
    });
    let end = serve_loop(&server, args).await;
    drop(beater);
    Ok(end)
}

async fn serve_loop(server: &Arc<Server>, args: &RunArgs) -> End {
    let tick = MAX_TICK
        .min(args.lease_timeout / 4)
        .max(Duration::from_millis(10));
    let mut lease: Option<Monitor> = None;
    let mut discovery = Discovery::default();
    let mut start = |task: TaskDir| start_driver(server, task);
    discovery.scan(&server.volume, &server.watch, &mut start);
    loop {
        if let Some(sig) = server.ctx.signalled() {
            server
                .stop
                .raise(server.ctx.stop().reason().unwrap_or_default());
            tracing::info!("stopping: waiting for in-flight tasks to record their outcome");
            let clean = wait_pending(server, stop_bound(server)).await;
            return End::stopped(sig, clean, args.exit_zero_on_sigterm);
        }
        let lost = lock(&server.lost).clone();
        if let Some(why) = lost {
            return outcome_lost(server, why).await;
        }
        if server.volume.close_flag().exists() {
            tracing::info!("close_flag: no new tasks; draining in-flight tasks");
            server.stop.raise(DRAINING);
            wait_pending(server, None).await;
            tracing::info!("drained; exiting");
            return End::Success;
        }
        if let Some(reason) = orphaned(server, args, &mut lease) {
            tracing::warn!("{reason}: cancelling every running task");
            server.abort.send_modify(|(epoch, r)| {
                *epoch += 1;
                *r = reason.clone();
            });
            if args.exit_on_orphan {
                server.stop.raise(DRAINING);
                wait_pending(server, stop_bound(server)).await;
                tracing::info!("orphaned (--exit-on-orphan): exiting");
                return End::Success;
            }
        }
        let seen = server.watch.generation();
        let changes = server.watch.take_changes();
        discovery.update(&server.volume, &server.watch, changes, &mut start);
        discovery.sweep(&server.volume, &server.watch, &mut start);
        tokio::select! {
            () = server.watch.wait_changed_async(seen, tick) => {}
            _ = server.ctx.shutdown_signal() => {}
        }
    }
}

/// An outcome could not be written: no executor waiting on that task would
/// ever learn it ended. Stops every task and ends the sidecar with the
/// reason; its heartbeat stops with it, so every executor's liveness check
/// ends its wait with a named error (`sidecar exited`, `unresponsive`).
async fn outcome_lost(server: &Arc<Server>, why: String) -> End {
    tracing::error!(
        "{why}: stopping the sidecar, so that executors waiting on it fail instead of hanging"
    );
    server.abort.send_modify(|(epoch, r)| {
        *epoch += 1;
        *r = format!("the sidecar is stopping: {why}");
    });
    server.stop.raise(DRAINING);
    wait_pending(server, stop_bound(server)).await;
    End::Internal(anyhow::anyhow!(why))
}

/// Starts the driver of a task discovery found ready, unless it has one.
fn start_driver(server: &Arc<Server>, task: TaskDir) {
    if lock(&server.active).insert(task.id().clone()) {
        tokio::spawn(drive_task(Arc::clone(server), task));
    }
}

/// Why the executor side is gone, if it is: its lease went stale (a lease
/// is monitored once it has been seen to exist), or, with
/// `--exit-on-orphan`, no executor-side user holds the sidecar any more
/// ([`owner::users_gone`]).
fn orphaned(server: &Server, args: &RunArgs, lease: &mut Option<Monitor>) -> Option<String> {
    if args.exit_on_orphan && owner::users_gone(&server.volume) {
        return Some("every executor-side user of this sidecar went away".into());
    }
    let now = Instant::now();
    match lease.as_mut() {
        None if server.volume.lease().exists() => {
            let monitor = Monitor::new(server.volume.lease(), args.lease_timeout, now);
            *lease = Some(monitor.beneath(server.volume.beneath()));
            None
        }
        None => None,
        Some(m) => match m.observe(now) {
            Liveness::Stale { age, .. } => {
                *lease = None;
                let age = Duration::from_millis(age.as_millis() as u64);
                Some(format!(
                    "executor lease stale for {}",
                    humantime::format_duration(age)
                ))
            }
            Liveness::Alive => None,
        },
    }
}

/// How long stopped tasks get to record their outcome: the logic's grace
/// (TERM, then KILL), and slack for writing the done flag.
fn stop_bound(server: &Server) -> Option<Duration> {
    Some(server.ctx.grace.saturating_add(SHUTDOWN_SLACK))
}

/// Waits until every discovered task has written its done flag (or
/// `limit`); whether they all did.
async fn wait_pending(server: &Server, limit: Option<Duration>) -> bool {
    let mut rx = server.pending.subscribe();
    let wait = rx.wait_for(|n| *n == 0);
    match limit {
        Some(l) => {
            if tokio::time::timeout(l, wait).await.is_err() {
                tracing::warn!(
                    "{} task(s) did not record an outcome within {l:?}",
                    *server.pending.borrow()
                );
                return false;
            }
            true
        }
        None => wait.await.is_ok(),
    }
}

/// Drives one discovered task to its end. A task whose done flag exists
/// already (a restarted sidecar) is never run again, only closed.
async fn drive_task(server: Arc<Server>, task: TaskDir) {
    let id = task.id().clone();
    // Any done flag counts (an unreadable one too: the task may have run).
    let beneath = task.beneath();
    let done_before = beneath.exists(&task.done_flag()).then(|| {
        read_flag_beneath(&beneath, &task.done_flag(), "outcome")
            .ok()
            .and_then(|b| Outcome::parse(&b, &task.done_flag()).ok())
            .map_or(Status::Failed, |o| o.status)
    });
    if done_before.is_none() {
        server.pending.send_modify(|n| *n += 1);
    }
    let parts = TaskParts {
        flags: FileFlags::new(
            TaskFiles::serve(&task),
            Arc::clone(&server.watch),
            server.stop.subscribe(),
        ),
        epoch: server.abort.borrow().0,
        counted: AtomicBool::new(done_before.is_some()),
        server: Arc::clone(&server),
        task,
    };
    let result = match done_before {
        Some(status) => {
            tracing::info!(task = %id, "task already done; waiting for its close_flag");
            protocol::resume_done(&id, status, &parts.flags, &parts, &parts).await
        }
        None => {
            tracing::info!(task = %id, "task discovered");
            protocol::drive(&id, &parts.flags, &parts, &parts).await
        }
    };
    parts.mark_done();
    match result {
        Ok(finish) => {
            let status = match &finish {
                // What the done flag says (a full disk may have made it
                // `failed`), not what the protocol meant to write.
                Finish::Done { outcome, .. } => parts
                    .flags
                    .written_status()
                    .unwrap_or(outcome.status)
                    .to_string(),
                Finish::Abandoned => "abandoned".into(),
                Finish::Resumed => "resumed".into(),
            };
            tracing::info!(task = %id, status, "task closed");
            lock(&server.active).remove(&id);
        }
        Err(e) => {
            tracing::warn!("{e}");
            // Forget a task whose directory is gone (or was replaced by a
            // link, which is removed, never followed); keep one that is
            // still there, so it is not run twice.
            if parts.flags.files().gone() {
                if let Err(e) = parts.flags.cleanup(&id) {
                    tracing::warn!("{e}");
                }
                lock(&server.active).remove(&id);
            }
        }
    }
}

/// One task's runner and flag writer; its waiter is [`TaskParts::flags`].
#[derive(Debug)]
struct TaskParts {
    server: Arc<Server>,
    task: TaskDir,
    /// The file-backed flags: the waiter, and the writer this one wraps.
    flags: FileFlags,
    /// The lease-abort epoch when the task was discovered.
    epoch: u64,
    /// Whether the task no longer counts as pending (its outcome written).
    counted: AtomicBool,
}

/// A running logic and the slot it holds.
#[derive(Debug)]
struct Running {
    child: Child,
    _slot: OwnedSemaphorePermit,
}

impl TaskParts {
    fn mark_done(&self) {
        if !self.counted.swap(true, Ordering::SeqCst) {
            self.server
                .pending
                .send_modify(|n| *n = n.saturating_sub(1));
        }
    }

    /// Resolves with a reason when the task must stop: its cancel flag, its
    /// directory removed, a stale lease, or our own stop signal.
    async fn cancelled(&self) -> Cancel {
        let mut abort = self.server.abort.subscribe();
        let epoch = self.epoch;
        let lease = async move {
            let reason = abort
                .wait_for(|(e, _)| *e > epoch)
                .await
                .map(|v| v.1.clone());
            match reason {
                Ok(r) => r,
                Err(_) => std::future::pending().await,
            }
        };
        let cancel_flag = self.task.cancel_flag();
        let files = self.flags.files();
        let flag = self.server.watch.wait_until_async("cancel_flag", None, || {
            Ok::<_, WaitError>(if files.exists(&cancel_flag) {
                Some("cancel_flag".to_owned())
            } else if files.gone() {
                Some("the task directory was removed (or replaced by a link)".to_owned())
            } else if self.flags.owner_gone() {
                Some(OWNER_GONE.to_owned())
            } else {
                None
            })
        });
        tokio::select! {
            r = flag => r.unwrap_or_else(|e| e.to_string()).into(),
            r = lease => r.into(),
            c = self.server.ctx.shutdown_cancel() => c,
        }
    }

    /// Creates `output/` and opens the capture files, from the volume root
    /// and never through a link.
    fn prepare(&self) -> Result<(std::fs::File, std::fs::File), Reject> {
        let refused = |e: PathError| Reject::Refused {
            path: e.path().to_owned(),
            why: e.to_string(),
        };
        let dir = self.task.beneath().dir(self.task.root()).map_err(refused)?;
        let out = OsStr::new(layout::OUTPUT_DIR);
        match dir.kind(out).map_err(refused)? {
            Some(_) => drop(dir.open_dir(out).map_err(refused)?),
            None => drop(dir.mkdir(out, 0o755).map_err(refused)?),
        }
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
        let open = |name: &str| {
            dir.open_file(OsStr::new(name), flags, 0o644)
                .map_err(refused)
        };
        Ok((open(layout::STDOUT)?, open(layout::STDERR)?))
    }

    /// Starts the logic once a slot is free: `Err(None)` if the task was
    /// stopped while it waited.
    async fn start(&self, spec: &TaskSpec) -> Result<Running, Result<Reject, String>> {
        let env = crate::task_env::env(&self.task, self.server.volume.root(), spec).map_err(Ok)?;
        let slot = tokio::select! {
            biased;
            c = self.cancelled() => return Err(Err(c.reason)),
            p = Arc::clone(&self.server.slots).acquire_owned() => p.map_err(|e| Err(e.to_string()))?,
        };
        let (stdout, stderr) = self.prepare().map_err(Ok)?;
        let cmd = &self.server.cmd;
        let mut s = Spawn::new(cmd.program.clone(), cmd.args.clone());
        s.cwd = Some(self.task.root().to_owned());
        s.env = env;
        s.stdout = stdout.into();
        s.stderr = stderr.into();
        let child = self.server.ctx.sup.spawn(s).map_err(|source| {
            Ok(Reject::Spawn {
                program: cmd.program.to_string_lossy().into_owned(),
                source,
            })
        })?;
        tracing::info!(task = %self.task.id(), pid = child.pid(), "logic started");
        Ok(Running { child, _slot: slot })
    }
}

impl Drop for TaskParts {
    fn drop(&mut self) {
        // Whatever happened to the driver, a drain must not wait for it.
        self.mark_done();
    }
}

impl Runner for TaskParts {
    type Child = Running;

    async fn spawn(&self, _task: &TaskId, spec: &TaskSpec) -> Event<Running> {
        match self.start(spec).await {
            Ok(running) => Event::Spawned(running),
            Err(Ok(reject)) => Event::Rejected(reject),
            Err(Err(why)) => Event::Cancelled(why),
        }
    }

    async fn wait(&self, _task: &TaskId, spec: &TaskSpec, running: Running) -> Event<Running> {
        let limit = spec.timeout().or(self.server.timeout);
        let deadline = limit.map(|l| {
            let now = tokio::time::Instant::now();
            (sidecar_core::time::tokio_deadline_after(now, l), l)
        });
        let Running { child, _slot } = running;
        let ended = child
            .supervise(deadline, self.cancelled(), self.server.ctx.grace)
            .await;
        drop(_slot);
        let tail = self
            .task
            .beneath()
            .open_regular(&self.task.stderr())
            .map(crate::output::tail_of)
            .unwrap_or_default();
        Event::Exited(exit_from(&ended, tail))
    }
}

impl FlagWriter for TaskParts {
    fn manifest(&self, task: &TaskId, spec: &TaskSpec) -> Result<Vec<OutputFile>, ManifestError> {
        // Checksumming can take a while: keep the runtime's other tasks going.
        tokio::task::block_in_place(|| self.flags.manifest(task, spec))
    }

    fn write_done(&self, task: &TaskId, outcome: &Outcome) -> Result<(), ProtocolError> {
        let written = self.flags.write_done(task, outcome);
        if let Err(e @ ProtocolError::Write { .. }) = &written {
            // The main loop sees it within a tick.
            lock(&self.server.lost).get_or_insert_with(|| format!("cannot record an outcome: {e}"));
        }
        self.mark_done();
        written
    }

    fn cleanup(&self, task: &TaskId) -> Result<(), ProtocolError> {
        self.flags.cleanup(task)
    }
}
