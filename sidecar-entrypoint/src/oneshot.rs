//! oneshot mode: one task, the volume root is its directory (the Foundry
//! layout: `start_flag`, `done_flag`, `close_flag`, `logfile`).

use std::ffi::OsString;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use sidecar_core::id::TaskId;
use sidecar_core::layout::Volume;
use sidecar_core::protocol::{self, Exit, FlagWriter, ProtocolError, Runner, Start, Waiter};
use sidecar_core::record::{Outcome, OutputFile, Status, TaskSpec};
use sidecar_core::wait::{WaitError, Watch};

use crate::cli::{RunArgs, UserCommand};
use crate::output::{pump_lines, Tail};
use crate::supervisor::{Spawn, Stop};
use crate::{lock, Ctx, End};

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
    let env = vec![(OsString::from("SHARED_DIR"), root.clone().into_os_string())];
    if let Err(e) = crate::init::run_all(ctx, &args.init_scripts, &env).await {
        return Ok(End::InitFailed(e.into()));
    }
    let watch = Watch::new(args.watch_config()).context("cannot watch the volume")?;
    watch
        .add(&root, false)
        .with_context(|| format!("cannot watch {}", root.display()))?;
    let task = TaskId::new(ONESHOT_TASK_ID).context("task id")?;
    let parts = Parts {
        ctx,
        volume,
        watch,
        cmd,
        timeout: args.timeout,
        spawn_error: Mutex::new(None),
        invalid: Mutex::new(false),
    };
    tracing::info!(volume = %root.display(), command = %parts.cmd.shown, "oneshot: waiting for start_flag");
    let outcome = protocol::drive(&task, &parts, &parts, &parts).await;
    if let Some(sig) = ctx.signalled() {
        return Ok(End::Signalled(sig));
    }
    let outcome = outcome?;
    tracing::info!(status = %outcome.status, "oneshot: closed");
    if let Some(kind) = *lock(&parts.spawn_error) {
        return Ok(End::SpawnFailed(kind));
    }
    if *lock(&parts.invalid) {
        anyhow::bail!(
            "{}",
            outcome
                .reason
                .unwrap_or_else(|| "invalid start_flag".into())
        );
    }
    Ok(match outcome.status {
        Status::Succeeded => End::Success,
        _ => End::Child(crate::supervisor::ExitInfo {
            code: outcome.exit_code,
            signal: outcome.signal,
            cpu_ms: 0,
            max_rss_kib: 0,
        }),
    })
}

/// The real waiter, runner and flag writer of oneshot mode.
#[derive(Debug)]
struct Parts<'a> {
    ctx: &'a Ctx,
    volume: Volume,
    watch: Watch,
    cmd: UserCommand,
    timeout: Option<Duration>,
    spawn_error: Mutex<Option<std::io::ErrorKind>>,
    invalid: Mutex<bool>,
}

impl Parts<'_> {
    async fn wait_file(&self, task: &TaskId, path: &std::path::Path) -> Result<(), ProtocolError> {
        let what = path.display().to_string();
        let wait = self.watch.wait_until_async(&what, None, || {
            Ok::<_, WaitError>(path.exists().then_some(()))
        });
        tokio::select! {
            r = wait => r.map_err(|e| ProtocolError::Aborted { task: task.clone(), message: e.to_string() }),
            reason = self.ctx.shutdown_reason() => Err(ProtocolError::Aborted { task: task.clone(), message: reason }),
        }
    }
}

impl Waiter for Parts<'_> {
    async fn wait_start(&self, task: &TaskId) -> Result<Start, ProtocolError> {
        let path = self.volume.start_flag();
        self.wait_file(task, &path).await?;
        Ok(match crate::flags::read_spec(&path) {
            Ok(spec) => Start::Spec(spec),
            Err(e) => {
                *lock(&self.invalid) = true;
                Start::Invalid(e.to_string())
            }
        })
    }

    async fn wait_close(&self, task: &TaskId) -> Result<(), ProtocolError> {
        tracing::info!("oneshot: done_flag written, waiting for close_flag");
        self.wait_file(task, &self.volume.close_flag()).await
    }
}

impl Runner for Parts<'_> {
    async fn run(&self, _task: &TaskId, spec: &TaskSpec) -> Result<Exit, String> {
        let root = self.volume.root();
        let (reader, writer) = std::io::pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
        let writer2 = writer
            .try_clone()
            .map_err(|e| format!("cannot make a pipe: {e}"))?;
        let mut s = Spawn::new(self.cmd.program.clone(), self.cmd.args.clone());
        s.cwd = Some(root.to_owned());
        s.env
            .push(("SHARED_DIR".into(), root.as_os_str().to_owned()));
        for (k, v) in &spec.env {
            s.env.push((k.into(), v.into()));
        }
        s.stdout = writer.into();
        s.stderr = writer2.into();
        let logfile = self.volume.logfile();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&logfile)
            .map_err(|e| format!("cannot open {}: {e}", logfile.display()))?;
        // Spawn consumes the Spawn (and with it our write ends of the pipe).
        let child = self.ctx.sup.spawn(s).map_err(|e| {
            *lock(&self.spawn_error) = Some(e.kind());
            format!("cannot run {:?}: {e}", self.cmd.program.to_string_lossy())
        })?;
        tracing::info!(pid = child.pid(), command = %self.cmd.shown, "oneshot: command started");
        let tail = Tail::default();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
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
        let limit = spec.timeout().or(self.timeout);
        let deadline = limit.map(|l| (tokio::time::Instant::now() + l, l));
        let ended = child
            .supervise(deadline, self.ctx.shutdown_cancel(), self.ctx.grace)
            .await;
        if tokio::time::timeout(DRAIN, done_rx).await.is_err() {
            tracing::warn!(
                "the command's output is still open {DRAIN:?} after it ended; not waiting further"
            );
        }
        Ok(exit_from(&ended, tail.text()))
    }
}

/// The protocol's view of how a supervised child ended.
pub fn exit_from(ended: &crate::supervisor::Ended, stderr_tail: String) -> Exit {
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
        Some(Stop::TimedOut(limit)) => {
            exit.status = Status::TimedOut;
            exit.reason = Some(format!(
                "timed out after {} (the command ended with {})",
                humantime::format_duration(*limit),
                e.describe()
            ));
        }
        Some(Stop::Cancelled(why)) => {
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

impl FlagWriter for Parts<'_> {
    fn manifest(&self, _task: &TaskId) -> Result<Vec<OutputFile>, String> {
        // oneshot outputs are named by the executor (the Foundry layout has
        // no output directory): nothing to list.
        Ok(Vec::new())
    }

    fn write_done(&self, task: &TaskId, outcome: &Outcome) -> Result<(), ProtocolError> {
        crate::flags::write_outcome(&self.volume.done_flag(), task, outcome)
    }

    fn cleanup(&self, _task: &TaskId) -> Result<(), ProtocolError> {
        Ok(())
    }
}
