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
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sidecar_core::atomic::{write_atomic, Durability};
use sidecar_core::id::TaskId;
use sidecar_core::layout::{is_hidden, TaskDir, Volume};
use sidecar_core::liveness::{Beater, Liveness, Monitor};
use sidecar_core::protocol::{self, Exit, FlagWriter, ProtocolError, Runner, Start, Waiter};
use sidecar_core::record::{Outcome, OutputFile, Ready, Status, TaskSpec, Timestamp};
use sidecar_core::wait::{WaitError, Watch};
use tokio::sync::{watch, Semaphore};

use crate::cli::{RunArgs, UserCommand};
use crate::flags::write_outcome;
use crate::oneshot::exit_from;
use crate::supervisor::{Cancel, Spawn};
use crate::{lock, Ctx, End};

/// The longest the main loop sleeps without an event.
const MAX_TICK: Duration = Duration::from_millis(250);

/// How long in-flight tasks get, after a stop signal, to write their done
/// flags beyond the grace.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);

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
    watch: Watch,
    cmd: UserCommand,
    timeout: Option<Duration>,
    slots: Arc<Semaphore>,
    /// Lease aborts: (epoch, reason). A task is aborted by every epoch
    /// after the one current when it was discovered.
    abort: watch::Sender<(u64, String)>,
    /// Set on the root close_flag: drivers stop waiting for close flags.
    draining: watch::Sender<bool>,
    /// Tasks whose done flag is not written yet.
    pending: watch::Sender<usize>,
    /// Tasks being driven (by id).
    active: Mutex<HashSet<TaskId>>,
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
    match std::fs::remove_file(volume.ready()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot remove {}", volume.ready().display()))
        }
    }
    let env = vec![(OsString::from("SHARED_DIR"), root.clone().into_os_string())];
    if let Err(e) = crate::init::run_all(ctx, &args.init_scripts, &env).await {
        return Ok(End::InitFailed(e.into()));
    }
    let parallel = args.parallel.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1)
    });
    let watch = Watch::new(args.watch_config()).context("cannot watch the volume")?;
    watch
        .add(&root, false)
        .with_context(|| format!("cannot watch {}", root.display()))?;
    watch
        .add(&volume.tasks_dir(), true)
        .with_context(|| format!("cannot watch {}", volume.tasks_dir().display()))?;
    let beater =
        Beater::start(volume.heartbeat(), args.heartbeat).context("cannot start the heartbeat")?;
    let ready = Ready {
        protocol: sidecar_core::record::PROTOCOL_VERSION,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        parallelism: parallel,
        started_at: Timestamp::now(),
    };
    let bytes = serde_json::to_vec(&ready).context("cannot encode the ready record")?;
    write_atomic(&volume.ready(), &bytes, Durability::Visible)?;
    tracing::info!(volume = %root.display(), parallel, command = %cmd.shown, polling = watch.is_polling(), "serving");

    let server = Arc::new(Server {
        ctx: ctx.clone(),
        volume,
        watch,
        cmd,
        timeout: args.timeout,
        slots: Arc::new(Semaphore::new(parallel as usize)),
        abort: watch::Sender::new((0, String::new())),
        draining: watch::Sender::new(false),
        pending: watch::Sender::new(0),
        active: Mutex::new(HashSet::new()),
    });
    let end = serve_loop(&server, args).await;
    drop(beater);
    Ok(end)
}

async fn serve_loop(server: &Arc<Server>, args: &RunArgs) -> End {
    let tick = MAX_TICK
        .min(args.lease_timeout / 4)
        .max(Duration::from_millis(10));
    let mut warned: HashSet<OsString> = HashSet::new();
    let mut lease: Option<Monitor> = None;
    loop {
        if let Some(sig) = server.ctx.signalled() {
            tracing::info!("stopping: waiting for in-flight tasks to record their outcome");
            wait_pending(server, Some(server.ctx.grace + SHUTDOWN_SLACK)).await;
            return End::Signalled(sig);
        }
        if server.volume.close_flag().exists() {
            tracing::info!("close_flag: no new tasks; draining in-flight tasks");
            server.draining.send_replace(true);
            wait_pending(server, None).await;
            tracing::info!("drained; exiting");
            return End::Success;
        }
        // The lease: monitored once it has been seen to exist.
        let now = Instant::now();
        match lease.as_mut() {
            None if server.volume.lease().exists() => {
                lease = Some(Monitor::new(server.volume.lease(), args.lease_timeout, now));
            }
            None => {}
            Some(m) => {
                if let Liveness::Stale { age, .. } = m.observe(now) {
                    let age = Duration::from_millis(age.as_millis() as u64);
                    let reason = format!(
                        "executor lease stale for {}",
                        humantime::format_duration(age)
                    );
                    tracing::warn!("{reason}: cancelling every running task");
                    server.abort.send_modify(|(epoch, r)| {
                        *epoch += 1;
                        *r = reason.clone();
                    });
                    lease = None;
                    if args.exit_on_orphan {
                        server.draining.send_replace(true);
                        wait_pending(server, Some(server.ctx.grace + SHUTDOWN_SLACK)).await;
                        tracing::info!("orphaned (--exit-on-orphan): exiting");
                        return End::Success;
                    }
                }
            }
        }
        // A directory being staged may get its start flag before its
        // watch is in place (no event): look again soon.
        let staging = discover(server, &mut warned);
        let wait = if staging { tick.min(args.poll) } else { tick };
        tokio::select! {
            () = server.watch.changed(wait) => {}
            _ = server.ctx.shutdown_signal() => {}
        }
    }
}

/// Waits until every discovered task has written its done flag (or `limit`).
async fn wait_pending(server: &Server, limit: Option<Duration>) {
    let mut rx = server.pending.subscribe();
    let wait = rx.wait_for(|n| *n == 0);
    match limit {
        Some(l) => {
            if tokio::time::timeout(l, wait).await.is_err() {
                tracing::warn!(
                    "{} task(s) did not record an outcome within {l:?}",
                    *server.pending.borrow()
                );
            }
        }
        None => {
            let _ = wait.await;
        }
    }
}

/// Starts a driver for every task directory with a start flag not yet seen.
/// Returns whether some task directory has no start flag yet.
fn discover(server: &Arc<Server>, warned: &mut HashSet<OsString>) -> bool {
    let mut staging = false;
    let dir = server.volume.tasks_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => {
            if warned.insert(OsString::from("/")) {
                tracing::warn!("cannot read {}: {e}", dir.display());
            }
            return false;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if is_hidden(&name) {
            continue;
        }
        let Ok(ft) = entry.file_type() else { continue };
        if !ft.is_dir() {
            continue;
        }
        let id = match name.to_str().map(TaskId::new) {
            Some(Ok(id)) => id,
            Some(Err(e)) => {
                if warned.insert(name.clone()) {
                    tracing::warn!("skipping {}: {e}", entry.path().display());
                }
                continue;
            }
            None => {
                if warned.insert(name.clone()) {
                    tracing::warn!("skipping {}: not a UTF-8 task id", entry.path().display());
                }
                continue;
            }
        };
        let task = server.volume.task(&id);
        if !task.start_flag().exists() {
            staging = true;
            continue;
        }
        if !lock(&server.active).insert(id.clone()) {
            continue;
        }
        if task.done_flag().exists() {
            // Done before (a restarted sidecar): never run a task twice;
            // only wait for its close flag.
            tracing::info!(task = %id, "task already done; waiting for its close_flag");
            tokio::spawn(close_only(Arc::clone(server), task));
            continue;
        }
        server.pending.send_modify(|n| *n += 1);
        let parts = TaskParts {
            server: Arc::clone(server),
            task,
            epoch: server.abort.borrow().0,
            stream: AtomicBool::new(false),
            counted: AtomicBool::new(false),
        };
        tracing::info!(task = %id, "task discovered");
        tokio::spawn(async move {
            let id = parts.task.id().clone();
            let result = protocol::drive(&id, &parts, &parts, &parts).await;
            parts.mark_done();
            match result {
                Ok(outcome) => {
                    tracing::info!(task = %id, status = %outcome.status, "task closed");
                    lock(&parts.server.active).remove(&id);
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    // Forget a task whose directory is gone; keep one that
                    // is still there, so it is not run twice.
                    if !parts.task.root().exists() {
                        lock(&parts.server.active).remove(&id);
                    }
                }
            }
        });
    }
    staging
}

/// A task whose done flag exists already: wait for its close flag, clean up.
async fn close_only(server: Arc<Server>, task: TaskDir) {
    let id = task.id().clone();
    let parts = TaskParts {
        server,
        task,
        epoch: 0,
        stream: AtomicBool::new(false),
        counted: AtomicBool::new(true),
    };
    match parts
        .wait_close(&id)
        .await
        .and_then(|()| parts.cleanup(&id))
    {
        Ok(()) => {
            tracing::info!(task = %id, "task closed");
            lock(&parts.server.active).remove(&id);
        }
        Err(e) => tracing::warn!("{e}"),
    }
}

/// One task's waiter, runner and flag writer.
#[derive(Debug)]
struct TaskParts {
    server: Arc<Server>,
    task: TaskDir,
    /// The lease-abort epoch when the task was discovered.
    epoch: u64,
    stream: AtomicBool,
    counted: AtomicBool,
}

impl TaskParts {
    fn mark_done(&self) {
        if !self.counted.swap(true, Ordering::SeqCst) {
            self.server
                .pending
                .send_modify(|n| *n = n.saturating_sub(1));
        }
    }

    fn aborted(&self, task: &TaskId, message: impl Into<String>) -> ProtocolError {
        ProtocolError::Aborted {
            task: task.clone(),
            message: message.into(),
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
        let root = self.task.root().to_owned();
        let flag = self.server.watch.wait_until_async("cancel_flag", None, || {
            Ok::<_, WaitError>(if cancel_flag.exists() {
                Some("cancel_flag".to_owned())
            } else if !root.exists() {
                Some("the task directory was removed".to_owned())
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

    /// The environment of the logic.
    fn env(&self, spec: &TaskSpec) -> Result<Vec<(OsString, OsString)>, String> {
        let input_dir = self.task.input();
        let input = match spec.input.as_ref().and_then(|i| i.files.first()) {
            Some(f) => {
                let rel = sidecar_core::safepath::validate_relative(f)
                    .map_err(|e| format!("input file: {e}"))?;
                input_dir.join(rel)
            }
            None => input_dir.join(format!("part.{}", spec.input_format().extension())),
        };
        let output = self
            .task
            .output()
            .join(format!("part.{}", spec.output_format().extension()));
        let path = |p: &Path| p.as_os_str().to_owned();
        let mut env: Vec<(OsString, OsString)> = vec![
            ("SIDECAR_TASK_ID".into(), self.task.id().as_str().into()),
            ("SIDECAR_TASK_DIR".into(), path(self.task.root())),
            ("SIDECAR_INPUT_DIR".into(), path(&input_dir)),
            ("SIDECAR_OUTPUT_DIR".into(), path(&self.task.output())),
            ("SIDECAR_INPUT".into(), path(&input)),
            ("SIDECAR_OUTPUT".into(), path(&output)),
            ("SIDECAR_PROGRESS".into(), path(&self.task.progress())),
            ("SHARED_DIR".into(), path(self.server.volume.root())),
        ];
        for (k, v) in &spec.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(format!(
                    "invalid environment variable {k:?} in the task spec"
                ));
            }
            env.push((k.into(), v.into()));
        }
        Ok(env)
    }

    /// Creates `output/` and opens the capture files, never through links.
    fn prepare(&self) -> Result<(std::fs::File, std::fs::File), String> {
        let out = self.task.output();
        match std::fs::symlink_metadata(&out) {
            Ok(_) => sidecar_core::safepath::ensure_real_dir(&out).map_err(|e| e.to_string())?,
            Err(_) => std::fs::create_dir(&out)
                .map_err(|e| format!("cannot create {}: {e}", out.display()))?,
        }
        let open = |p: PathBuf| {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p)
                .map_err(|e| format!("cannot create {}: {e}", p.display()))
        };
        Ok((open(self.task.stdout())?, open(self.task.stderr())?))
    }

    fn cancelled_before_start(reason: String) -> Exit {
        Exit {
            status: Status::Cancelled,
            exit_code: None,
            signal: None,
            reason: Some(format!("cancelled before it started: {reason}")),
            cpu_ms: None,
            max_rss_kib: None,
            stderr_tail: String::new(),
        }
    }
}

impl Drop for TaskParts {
    fn drop(&mut self) {
        // Whatever happened to the driver, a drain must not wait for it.
        self.mark_done();
    }
}

impl Waiter for TaskParts {
    async fn wait_start(&self, task: &TaskId) -> Result<Start, ProtocolError> {
        let path = self.task.start_flag();
        Ok(match crate::flags::read_spec(&path) {
            Ok(spec) => {
                tracing::debug!(task = %task, ?spec, "start_flag");
                self.stream.store(spec.stream, Ordering::SeqCst);
                Start::Spec(spec)
            }
            Err(e) => Start::Invalid(e),
        })
    }

    async fn wait_close(&self, task: &TaskId) -> Result<(), ProtocolError> {
        let close = self.task.close_flag();
        let root = self.task.root().to_owned();
        let wait = self.server.watch.wait_until_async("close_flag", None, || {
            Ok::<_, WaitError>((close.exists() || !root.exists()).then_some(()))
        });
        let mut draining = self.server.draining.subscribe();
        let stopped = tokio::select! {
            r = wait => return r.map_err(|e| self.aborted(task, e.to_string())),
            _ = draining.wait_for(|d| *d) => "the sidecar is shutting down; task directory left in place".to_owned(),
            r = self.server.ctx.shutdown_reason() => r,
        };
        // A close_flag raised just before the shutdown, whose event the
        // watch has not delivered yet, still gets its directory removed.
        if close.exists() || !root.exists() {
            return Ok(());
        }
        Err(self.aborted(task, stopped))
    }
}

impl Runner for TaskParts {
    async fn run(&self, task: &TaskId, spec: &TaskSpec) -> Result<Exit, String> {
        let env = self.env(spec)?;
        let permit = tokio::select! {
            biased;
            c = self.cancelled() => return Ok(Self::cancelled_before_start(c.reason)),
            p = Arc::clone(&self.server.slots).acquire_owned() => p.map_err(|e| e.to_string())?,
        };
        let (stdout, stderr) = self.prepare()?;
        let cmd = &self.server.cmd;
        let mut s = Spawn::new(cmd.program.clone(), cmd.args.clone());
        s.cwd = Some(self.task.root().to_owned());
        s.env = env;
        s.stdout = stdout.into();
        s.stderr = stderr.into();
        let child = self
            .server
            .ctx
            .sup
            .spawn(s)
            .map_err(|e| format!("cannot run {:?}: {e}", cmd.program.to_string_lossy()))?;
        tracing::info!(task = %task, pid = child.pid(), "logic started");
        let limit = spec.timeout().or(self.server.timeout);
        let deadline = limit.map(|l| (tokio::time::Instant::now() + l, l));
        let ended = child
            .supervise(deadline, self.cancelled(), self.server.ctx.grace)
            .await;
        drop(permit);
        let tail = crate::output::file_tail(&self.task.stderr());
        Ok(exit_from(&ended, tail))
    }
}

impl FlagWriter for TaskParts {
    fn manifest(&self, _task: &TaskId) -> Result<Vec<OutputFile>, String> {
        // Checksumming can take a while: keep the runtime's other tasks going.
        tokio::task::block_in_place(|| {
            sidecar_core::manifest::scan_with(
                &self.task.output(),
                self.stream.load(Ordering::SeqCst),
            )
        })
        .map_err(|e| e.to_string())
    }

    fn write_done(&self, task: &TaskId, outcome: &Outcome) -> Result<(), ProtocolError> {
        if !self.task.root().is_dir() {
            return Err(self.aborted(task, "the task directory was removed; outcome not written"));
        }
        let mut r = write_outcome(&self.task.done_flag(), task, outcome);
        if let Err(first) = &r {
            // Most likely a full volume: free what this task's logic wrote
            // and say so in a smaller outcome, so the executor learns why
            // instead of waiting for a done flag that never comes.
            let _ = std::fs::remove_dir_all(self.task.output());
            let mut failed = outcome.clone();
            failed.status = sidecar_core::Status::Failed;
            failed.outputs.clear();
            failed.reason = Some(format!(
                "{}{}cannot write the outcome ({first}); the task's output was discarded to free space",
                outcome.reason.as_deref().unwrap_or(""),
                if outcome.reason.is_some() { "; " } else { "" },
            ));
            r = write_outcome(&self.task.done_flag(), task, &failed);
        }
        self.mark_done();
        r
    }

    fn cleanup(&self, task: &TaskId) -> Result<(), ProtocolError> {
        match std::fs::remove_dir_all(self.task.root()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.aborted(
                task,
                format!("cannot remove {}: {e}", self.task.root().display()),
            )),
        }
    }
}
