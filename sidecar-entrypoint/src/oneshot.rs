//! oneshot mode: one task, the volume root is its directory (the Foundry
//! layout: `start_flag`, `done_flag`, `close_flag`, `logfile`).
//!
//! The task is [`sidecar_core::protocol::drive`] over the core's file-backed
//! flags ([`FileFlags`] with [`TaskFiles::oneshot`]) and this module's
//! [`OneshotRunner`], which runs the command with its combined output
//! stamped into `logfile`.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sidecar_core::files::{FileFlags, TaskFiles};
use sidecar_core::id::TaskId;
use sidecar_core::protocol::{self, Cause, Event, Exit, Finish, Reject, Runner};
use sidecar_core::record::{Status, TaskSpec};
use sidecar_core::wait::Watch;

use crate::cli::{RunArgs, UserCommand};
use crate::output::{pump_lines, Tail};
use crate::supervisor::{Child, Ended, Spawn, Stop as Stopped};
use crate::{Ctx, End};

/// The task id oneshot outcomes carry.
pub const ONESHOT_TASK_ID: &str = "oneshot";

/// How long output is still collected after the command's process group
/// is gone (a descendant that left the group may hold the pipe open).
const DRAIN: Duration = Duration::from_secs(2);

pub async fn run(ctx: &Ctx, args: &RunArgs, cmd: UserCommand) -> End {
    match run_inner(ctx, args, cmd).await {
        Ok(end) => end,
        Err(e) => End::Internal(e),
    }
}

async fn run_inner(ctx: &Ctx, args: &RunArgs, cmd: UserCommand) -> anyhow::Result<End> {
    let volume = args.existing_volume()?;
    let root = volume.root().to_owned();
    clear_stale_flags(&volume)?;
    let env = vec![(OsString::from("SHARED_DIR"), root.clone().into_os_string())];
    if let Err(e) = crate::init::run_all(ctx, &args.init_scripts, &env).await {
        return Ok(End::InitFailed(e.into()));
    }
    let watch = Arc::new(Watch::new(args.watch_config()).context("cannot watch the volume")?);
    watch
        .add(&root)
        .with_context(|| format!("cannot watch {}", root.display()))?;
    let task = TaskId::new(ONESHOT_TASK_ID).context("task id")?;
    let flags = FileFlags::new(TaskFiles::oneshot(&volume), watch, ctx.stop());
    let runner = OneshotRunner {
        ctx,
        root,
        cmd,
        timeout: args.timeout,
    };
    tracing::info!(volume = %volume.root().display(), command = %runner.cmd.shown, "oneshot: waiting for start_flag");
    let finish = protocol::drive(&task, &flags, &runner, &flags).await;
    if let Some(sig) = ctx.signalled() {
        return Ok(End::Signalled(sig));
    }
    Ok(match finish? {
        Finish::Abandoned | Finish::Resumed => {
            tracing::info!("oneshot: closed before it started");
            End::Success
        }
        Finish::Done { outcome, cause } => {
            let status = flags.written_status().unwrap_or(outcome.status);
            tracing::info!(%status, "oneshot: closed");
            end_of(cause)
        }
    })
}

/// Removes a `done_flag` and `close_flag` an earlier run left: while this
/// run waits for its start flag, an executor must not read the last run's
/// outcome as this one's, nor this run take the old close flag as its own.
/// (A waiting `start_flag` stays: the executor may have raised it first.)
fn clear_stale_flags(volume: &sidecar_core::Volume) -> anyhow::Result<()> {
    for path in [volume.done_flag(), volume.close_flag()] {
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!("removed {} left by an earlier run", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot remove {} left by an earlier run", path.display())
                })
            }
        }
    }
    Ok(())
}

/// How the entrypoint ends after its one task.
fn end_of(cause: Cause) -> End {
    match cause {
        Cause::Exited(exit) if exit.status == Status::Succeeded => End::Success,
        Cause::Exited(exit) => End::Child {
            code: exit.exit_code,
            signal: exit.signal,
        },
        Cause::Rejected(Reject::Spawn { source, .. }) => End::SpawnFailed(source.kind()),
        Cause::Rejected(other) => End::Internal(other.into()),
        Cause::Cancelled(why) => End::Internal(anyhow::anyhow!("cancelled: {why}")),
    }
}

/// Runs the command in the volume, its output stamped into `logfile`.
#[derive(Debug)]
struct OneshotRunner<'a> {
    ctx: &'a Ctx,
    root: PathBuf,
    cmd: UserCommand,
    timeout: Option<Duration>,
}

/// The running command and the thread copying its output.
#[derive(Debug)]
struct Running {
    child: Child,
    tail: Tail,
    output_done: tokio::sync::oneshot::Receiver<()>,
}

impl OneshotRunner<'_> {
    fn setup_error(path: PathBuf) -> impl FnOnce(std::io::Error) -> Reject {
        move |source| Reject::Setup { path, source }
    }

    fn start(&self, spec: &TaskSpec) -> Result<Running, Reject> {
        let spec_env = crate::task_env::spec_env(spec).map_err(|why| Reject::Refused {
            path: self.root.join(sidecar_core::layout::START_FLAG),
            why,
        })?;
        let logfile = self.root.join(sidecar_core::layout::LOGFILE);
        let (reader, writer) = std::io::pipe().map_err(Self::setup_error(logfile.clone()))?;
        let writer2 = writer
            .try_clone()
            .map_err(Self::setup_error(logfile.clone()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&logfile)
            .map_err(Self::setup_error(logfile.clone()))?;
        let mut s = Spawn::new(self.cmd.program.clone(), self.cmd.args.clone());
        s.cwd = Some(self.root.clone());
        s.env
            .push(("SHARED_DIR".into(), self.root.as_os_str().to_owned()));
        s.env.extend(spec_env);
        s.stdout = writer.into();
        s.stderr = writer2.into();
        // Spawn consumes the Spawn (and with it our write ends of the pipe).
        let child = self.ctx.sup.spawn(s).map_err(|source| Reject::Spawn {
            program: self.cmd.program.to_string_lossy().into_owned(),
            source,
        })?;
        tracing::info!(pid = child.pid(), command = %self.cmd.shown, "oneshot: command started");
        let tail = Tail::default();
        let (done_tx, output_done) = tokio::sync::oneshot::channel();
        let pump_tail = tail.clone();
        let pump = std::thread::Builder::new()
            .name("output".into())
            .spawn(move || {
                let sinks: Vec<(String, Box<dyn Write + Send>)> = vec![
                    (logfile.display().to_string(), Box::new(log)),
                    ("stdout".into(), Box::new(std::io::stdout())),
                ];
                pump_lines(reader, sinks, &pump_tail);
                let _ = done_tx.send(());
            });
        if let Err(e) = pump {
            tracing::warn!("cannot start the output thread: {e}");
        }
        Ok(Running {
            child,
            tail,
            output_done,
        })
    }
}

impl Runner for OneshotRunner<'_> {
    type Child = Running;

    async fn spawn(&self, _task: &TaskId, spec: &TaskSpec) -> Event<Running> {
        match self.start(spec) {
            Ok(running) => Event::Spawned(running),
            Err(reject) => Event::Rejected(reject),
        }
    }

    async fn wait(&self, _task: &TaskId, spec: &TaskSpec, running: Running) -> Event<Running> {
        let limit = spec.timeout().or(self.timeout);
        let deadline = limit.map(|l| {
            let now = tokio::time::Instant::now();
            (sidecar_core::time::tokio_deadline_after(now, l), l)
        });
        let ended = running
            .child
            .supervise(deadline, self.ctx.shutdown_cancel(), self.ctx.grace)
            .await;
        if tokio::time::timeout(DRAIN, running.output_done)
            .await
            .is_err()
        {
            tracing::warn!(
                "the command's output is still open {DRAIN:?} after it ended; not waiting further"
            );
        }
        Event::Exited(exit_from(&ended, running.tail.text()))
    }
}

/// The protocol's view of how a supervised child ended.
pub fn exit_from(ended: &Ended, stderr_tail: String) -> Exit {
    let e = ended.exit;
    let mut exit = match e.code {
        Some(code) => Exit::code(code),
        None => Exit {
            status: Status::Failed,
            exit_code: None,
            signal: e.signal,
            reason: Some(format!("command was killed by {}", e.describe())),
            cpu_ms: None,
            max_rss_kib: None,
            stderr_tail: String::new(),
        },
    };
    exit.signal = e.signal;
    exit.cpu_ms = Some(e.cpu_ms);
    exit.max_rss_kib = Some(e.max_rss_kib);
    exit.stderr_tail = stderr_tail;
    match &ended.stopped {
        Some(Stopped::TimedOut(limit)) => {
            exit.status = Status::TimedOut;
            exit.reason = Some(format!(
                "timed out after {} (the command ended with {})",
                humantime::format_duration(*limit),
                e.describe()
            ));
        }
        Some(Stopped::Cancelled(why)) => {
            exit.status = Status::Cancelled;
            exit.reason = Some(format!(
                "cancelled: {why} (the command ended with {})",
                e.describe()
            ));
        }
        None => {}
    }
    exit
}
