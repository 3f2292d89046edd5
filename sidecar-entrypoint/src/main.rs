//! # sidecar-entrypoint
//!
//! The sidecar container's ENTRYPOINT (usually PID 1). It waits for flags on
//! the shared volume, runs the user logic, and reports how it really ended.
//!
//! ```text
//! sidecar-entrypoint [OPTIONS] -- COMMAND [ARGS...]
//! sidecar-entrypoint [OPTIONS] -c "COMMAND LINE"     (Foundry form; `entrypoint -c ...` works too)
//! sidecar-entrypoint check [--volume DIR] [-- COMMAND... | -c LINE]
//! sidecar-entrypoint probe [--volume DIR] [--max-age DURATION]
//! ```
//!
//! ## Modes
//!
//! * **oneshot** (default; a drop-in for the Foundry example's
//!   `entrypoint.py`). The volume root is the task directory. Waits for
//!   `start_flag` (inotify, armed before the existence check; no deadline),
//!   parses it as a task spec when it is not empty, runs the command in the
//!   volume with `$SHARED_DIR` set to it, writes the combined output to
//!   `logfile` as real lines each prefixed with an RFC 3339 UTC timestamp
//!   (and echoes them to stdout), writes `done_flag` (the outcome JSON, also
//!   when the command failed or could not start), waits for `close_flag`,
//!   and exits with the command's status.
//! * **serve**. Writes `sidecar/ready` once init scripts ran and the
//!   heartbeat (`sidecar/heartbeat`, every `--heartbeat`) started; runs every
//!   `tasks/<id>/start_flag` it sees, at most `--parallel` at once, each
//!   through [`sidecar_core::protocol::drive`]; stops a task on its
//!   `cancel_flag`, its deadline, a stale `executor/lease` or our own
//!   SIGTERM; removes a task directory after its `close_flag`; drains and
//!   exits 0 on the root `close_flag`. A task whose `done_flag` already
//!   exists (a restarted sidecar) is never run again, only closed
//!   ([`sidecar_core::protocol::resume_done`]).
//!
//! Discovery in serve mode watches `tasks/` and each task directory from the
//! moment it is first seen, before it is looked at, and looks only at the
//! directories the watch's journal names: no timed recheck, and a cost per
//! event that does not grow with the number of task directories.
//!
//! ## The user logic's contract (serve)
//!
//! Runs once per task in the task directory, in its own process group, with
//! `SIDECAR_TASK_ID`, `SIDECAR_TASK_DIR`, `SIDECAR_INPUT_DIR`,
//! `SIDECAR_OUTPUT_DIR`, `SIDECAR_INPUT`, `SIDECAR_OUTPUT`,
//! `SIDECAR_PROGRESS`, `SHARED_DIR` and the spec's `env`. stdout and stderr
//! go to the task's `stdout` and `stderr` files. Exit 0 is success. When the
//! logic exits, anything it left running in its process group is killed.
//!
//! ## Theory of operation: PID 1 duties
//!
//! `main` is synchronous. It first makes the process a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`, unless it is PID 1 already), so orphans of the
//! logic are re-parented to it wherever it runs; then it sets up logging and
//! builds the tokio runtime. One reaper ([`supervisor`]) owns `wait`: it
//! reaps every zombie and hands exits (with CPU time and peak RSS from
//! `wait4`'s rusage) to their waiters. Children are started in their own
//! process group with `setpgid` (never `setsid`: seccomp profiles such as
//! Foundry's kill it).
//!
//! On SIGTERM or SIGINT (or any other signal whose default would end it
//! and that it may catch: SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM, the
//! real-time signals, ...; see [`supervisor::stop_signals`]) it forwards the
//! signal (SIGTERM for the ones that do not mean "stop") to every running logic's
//! process group, sends SIGKILL after `--grace`, records the outcome
//! (`done_flag` with status `cancelled`, the reason naming the signal), kills
//! every remaining descendant (found through `/proc`), and exits 128+signal.
//! No descendant outlives it, whatever the exit path.
//!
//! In serve mode, `--exit-zero-on-sigterm` (or
//! `$SIDECAR_EXIT_ZERO_ON_SIGTERM=1`) turns a *clean* SIGTERM stop into
//! exit 0: every in-flight task recorded its outcome within the grace (and
//! the slack for writing it). That is how the kubelet stops a sidecar, and
//! with `spark.kubernetes.executor.checkAllContainers` (the default since
//! Spark 4.0) Spark fails an executor whose pod has a regular container
//! that exited non-zero: a sidecar stopped cleanly must not be that
//! container. A stop that lost an outcome still exits 143. The pod template
//! of `executor-shim pod-template` passes the flag.
//!
//! ## Where things live
//!
//! | module | what |
//! |---|---|
//! | `main` | PID-1 duties in order (subreaper, logging, runtime, signals), the exit-code table ([`exit_code`]) |
//! | `cli` | the command line, as plain data |
//! | `oneshot` | the Foundry layout: [`sidecar_core::protocol::drive`] over the core's file-backed flags and a runner that stamps the output into `logfile` |
//! | `serve` | slots, lease, drain; each task driven over the same flags and a runner per task |
//! | `discovery` | which task directories are ready, looking only where the watch's journal says events happened |
//! | `supervisor` | every child process: spawn in its own group, the one reaper, TERM/grace/KILL, killing descendants |
//! | `task_env` | what a serve task's logic is given: its environment, which staged file is its input |
//! | `output` | timestamped log lines, stderr tails |
//! | `log` | the entrypoint's own log: a queue to one writer thread, so logging never panics or blocks |
//! | `init` | `--init-script` |
//! | `check` | `check`: the image and runtime validated |
//! | `probe` | `probe`: ready and heartbeat fresh, for Kubernetes exec probes (see its docs for what "fresh" means) |
//!
//! The protocol's file effects (reading the spec, waiting for flags,
//! writing the outcome with the full-disk fallback, cleaning up) are not
//! here: both modes use [`sidecar_core::files::FileFlags`].
//!
//! ## Exit codes
//!
//! | code    | meaning |
//! |---------|---------|
//! | 0       | the command succeeded (oneshot); a clean drain or orphan exit (serve); a clean stop by SIGTERM with `--exit-zero-on-sigterm` (serve); `check` found no FAIL; `probe`: ready and the heartbeat fresh |
//! | 1–125   | the command's own exit status (oneshot); `check`: 1 when a check FAILed; `probe`: 1 when not ready or stale (the reason on stderr) |
//! | 2       | usage error (bad flags) |
//! | 70      | internal or protocol error: volume missing, a flag that cannot be written, an invalid `start_flag` (oneshot) |
//! | 71      | an init script failed |
//! | 126     | the command exists but cannot be executed (oneshot) |
//! | 127     | the command was not found (oneshot) |
//! | 128+N   | the command was killed by signal N (oneshot), or we were stopped by signal N (serve: unless `--exit-zero-on-sigterm` and the stop was clean) |
//!
//! [`exit_code`] is the one place that maps outcomes to these codes.
//!
//! ## Starting from an init script (Databricks)
//!
//! Databricks ignores an image's ENTRYPOINT and CMD. Start the sidecar from
//! a cluster init script instead; it becomes a subreaper of its own
//! process tree, so orphans of the logic are still reaped:
//!
//! ```sh
//! nohup sidecar-entrypoint --mode serve --volume /local_disk0/sidecar \
//!     --exit-on-orphan -- /opt/logic/run.sh >/tmp/sidecar.log 2>&1 &
//! ```
//!
//! See `README.md` for details.
//!
//! ## Known problems
//!
//! * Network and FUSE filesystems may deliver no inotify events; waits then
//!   complete at the recheck tick. Use `--watch poll --poll 50ms` there;
//!   `check` tells whether events arrive.
//! * Without `/bin/sh`, `-c` lines are split with shell quoting rules but
//!   `$VARIABLES` are not expanded.
//! * `docker stop` kills PID 1 ten seconds after its SIGTERM: with the
//!   default `--grace 10s` a logic that ignores SIGTERM may not get its
//!   outcome recorded. Use `docker stop -t 15` or a shorter `--grace`.
//! * A sidecar restarted mid-task runs that task again (at least once);
//!   a finished one is not re-run.
//!
//! ## Example
//!
//! ```sh
//! # Foundry image: ENTRYPOINT entrypoint -c "dd if=$SHARED_DIR/infile.csv of=$SHARED_DIR/outfile.csv"
//! sidecar-entrypoint --volume /tmp/v -c 'dd if=$SHARED_DIR/infile.csv of=$SHARED_DIR/outfile.csv' &
//! touch /tmp/v/start_flag; # ... wait for /tmp/v/done_flag, read outfile.csv ...
//! touch /tmp/v/close_flag  # the entrypoint exits with dd's status
//! ```

mod check;
mod cli;
mod discovery;
mod init;
mod log;
mod oneshot;
mod output;
mod probe;
mod serve;
mod supervisor;
mod task_env;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::sync::watch;

use crate::cli::{Cli, LogFormat, Mode, Sub};
use sidecar_core::files::{Stop, StopSender};

use crate::supervisor::Supervisor;

/// Locks `m`, poisoned or not. A poisoned lock only means a panic on
/// another thread; every state behind the entrypoint's locks stays
/// consistent (each update is one insert, remove or assignment).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How the entrypoint ends; [`exit_code`] turns it into the process status.
#[derive(Debug)]
pub enum End {
    /// Everything went as asked.
    Success,
    /// The command ended like this (oneshot): its exit code, or the signal
    /// that killed it.
    Child {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// We were stopped by this signal.
    Signalled(i32),
    /// The command could not be started.
    SpawnFailed(std::io::ErrorKind),
    /// Bad command line.
    Usage(String),
    /// An init script failed.
    InitFailed(anyhow::Error),
    /// `check` found a FAIL.
    CheckFailed,
    /// `probe`: not ready, or the heartbeat is stale.
    Unhealthy,
    /// Stopped by this signal, every in-flight task's outcome recorded,
    /// and asked to call that a success (`--exit-zero-on-sigterm`).
    CleanStop(i32),
    /// Anything else that stopped us.
    Internal(anyhow::Error),
}

impl End {
    /// How serve mode ends after a stop signal: 128+signal, or a success
    /// when the signal was SIGTERM, the stop was clean (every in-flight
    /// task recorded its outcome in time) and `--exit-zero-on-sigterm`
    /// asked for it. Kubernetes stops a sidecar with SIGTERM; with
    /// `spark.kubernetes.executor.checkAllContainers` Spark fails an
    /// executor whose pod has a container that exited non-zero.
    pub fn stopped(signal: i32, clean: bool, zero_on_sigterm: bool) -> End {
        if zero_on_sigterm && clean && signal == libc::SIGTERM {
            End::CleanStop(signal)
        } else {
            End::Signalled(signal)
        }
    }
}

/// The exit-code table (see the crate docs).
pub fn exit_code(end: &End) -> u8 {
    let clamp = |c: i32| u8::try_from(c.clamp(0, 255)).unwrap_or(255);
    match end {
        End::Success => 0,
        End::Child { code, signal } => match (code, signal) {
            (Some(c), _) => clamp(*c),
            (None, Some(s)) => clamp(128 + s),
            (None, None) => 70,
        },
        End::Signalled(s) => clamp(128 + s),
        End::SpawnFailed(kind) => match kind {
            std::io::ErrorKind::NotFound => 127,
            _ => 126,
        },
        End::Usage(_) => 2,
        End::InitFailed(_) => 71,
        End::CheckFailed | End::Unhealthy => 1,
        End::CleanStop(_) => 0,
        End::Internal(_) => 70,
    }
}

/// What every part of a run shares.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub sup: Supervisor,
    /// Set to the signal number when a stop signal arrives.
    pub shutdown: watch::Receiver<Option<i32>>,
    /// Raised at the same time, with the reason naming the signal: ends the
    /// protocol's waits.
    pub stop: Stop,
    pub grace: Duration,
}

impl Ctx {
    /// A stop raised when a stop signal arrives.
    pub fn stop(&self) -> Stop {
        self.stop.clone()
    }

    /// The signal that asked us to stop, if one did.
    pub fn signalled(&self) -> Option<i32> {
        *self.shutdown.borrow()
    }

    /// Resolves when a stop signal arrives.
    pub async fn shutdown_signal(&self) -> i32 {
        let mut rx = self.shutdown.clone();
        loop {
            if let Some(s) = *rx.borrow_and_update() {
                return s;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// [`Ctx::shutdown_signal`] as a cancellation: the reason names the
    /// signal, which is forwarded to the logic.
    pub async fn shutdown_cancel(&self) -> supervisor::Cancel {
        let s = self.shutdown_signal().await;
        supervisor::Cancel {
            reason: format!(
                "the sidecar entrypoint received {}",
                supervisor::signal_name(s)
            ),
            signal: supervisor::forwarded(s),
        }
    }

    /// [`Ctx::shutdown_cancel`]'s reason only.
    pub async fn shutdown_reason(&self) -> String {
        self.shutdown_cancel().await.reason
    }
}

fn become_subreaper() {
    if std::process::id() == 1 {
        return;
    }
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r != 0 {
        log::plain(&format!(
            "warning: cannot become a child subreaper ({}); orphans of the logic will not be reaped by us",
            std::io::Error::last_os_error()
        ));
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SIDECAR_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log::Writer)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn main() -> ExitCode {
    log::ensure_std_fds();
    log::start();
    become_subreaper();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit_code(&End::Usage(e.to_string()))
            } else {
                0
            });
        }
    };
    // `probe` is a one-shot read, run by the kubelet every few seconds and
    // bounded by its timeout: no runtime, no signal handling, nothing to reap.
    if let Some(Sub::Probe(args)) = &cli.sub {
        return ExitCode::from(exit_code(&probe::run(args)));
    }
    init_logging(cli.run.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::plain(&format!("cannot start the runtime: {e}"));
            log::flush(Duration::from_secs(1));
            return ExitCode::from(exit_code(&End::Internal(e.into())));
        }
    };
    let end = rt.block_on(run(cli));
    match &end {
        End::Usage(msg) => log::plain(msg),
        End::InitFailed(e) | End::Internal(e) => tracing::error!("{e:#}"),
        _ => {}
    }
    let code = exit_code(&end);
    tracing::debug!(?end, code, "exiting");
    // Do not wait for blocked threads (a stuck output pump, the watcher).
    rt.shutdown_timeout(Duration::from_millis(100));
    log::flush(Duration::from_secs(1));
    ExitCode::from(code)
}

async fn run(cli: Cli) -> End {
    let sup = Supervisor::new();
    let reaper = tokio::spawn(sup.clone().run_reaper());
    let (tx, rx) = watch::channel(None);
    let (stop_tx, stop) = Stop::new();
    let stop_tx = std::sync::Arc::new(stop_tx);
    // SIGXFSZ would kill us when a write passes a file size limit: caught
    // and dropped, the write fails with EFBIG instead, as SIGPIPE's with
    // EPIPE. (Caught, not ignored: the logic gets the default back at exec.)
    if let Err(e) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ))
    {
        tracing::warn!("cannot handle SIGXFSZ: {e}");
    }
    for raw in supervisor::stop_signals() {
        let kind = tokio::signal::unix::SignalKind::from_raw(raw);
        match tokio::signal::unix::signal(kind) {
            Ok(mut s) => {
                let (tx, stop_tx) = (tx.clone(), std::sync::Arc::clone(&stop_tx));
                tokio::spawn(async move {
                    if s.recv().await.is_some() {
                        raise(&tx, &stop_tx, kind.as_raw_value());
                    }
                });
            }
            Err(e) => tracing::warn!("cannot handle signal {}: {e}", kind.as_raw_value()),
        }
    }
    let ctx = Ctx {
        sup: sup.clone(),
        shutdown: rx,
        stop,
        grace: cli.run.grace,
    };
    let end = match cli.sub {
        Some(Sub::Check(args)) => check::run(&ctx, &args).await,
        Some(Sub::Probe(args)) => probe::run(&args),
        None => match cli.run.command.resolve() {
            Err(msg) => End::Usage(msg),
            Ok(cmd) => match cli.run.mode {
                Mode::Oneshot if cli.run.exit_zero_on_sigterm => End::Usage(
                    "--exit-zero-on-sigterm applies to --mode serve; oneshot exits with the command's status".into(),
                ),
                Mode::Oneshot => oneshot::run(&ctx, &cli.run, cmd).await,
                Mode::Serve => serve::run(&ctx, &cli.run, cmd).await,
            },
        },
    };
    let end = match (ctx.signalled(), end) {
        // A usage error or an init failure is still the truth; otherwise a
        // stop signal decides the exit status.
        (Some(s), End::Success | End::Child { .. } | End::Internal(_) | End::InitFailed(_)) => {
            End::Signalled(s)
        }
        (_, end) => end,
    };
    let killed = sup.kill_descendants(Duration::from_secs(5)).await;
    if killed > 0 {
        tracing::info!(killed, "killed remaining descendants");
    }
    reaper.abort();
    end
}

/// A stop signal arrived: tell every part of the run.
fn raise(tx: &watch::Sender<Option<i32>>, stop: &StopSender, sig: i32) {
    let name = supervisor::signal_name(sig);
    tracing::info!("received {name}");
    let _ = tx.send(Some(sig));
    stop.raise(format!("the sidecar entrypoint received {name}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_table() {
        let exit = |code, signal| End::Child { code, signal };
        let cases: Vec<(End, u8)> = vec![
            (End::Success, 0),
            (exit(Some(0), None), 0),
            (exit(Some(3), None), 3),
            (exit(None, Some(9)), 137),
            (End::Signalled(15), 143),
            (End::Signalled(2), 130),
            (End::SpawnFailed(std::io::ErrorKind::NotFound), 127),
            (End::SpawnFailed(std::io::ErrorKind::PermissionDenied), 126),
            (End::Usage("x".into()), 2),
            (End::InitFailed(anyhow::anyhow!("x")), 71),
            (End::CheckFailed, 1),
            (End::Unhealthy, 1),
            (End::CleanStop(15), 0),
            (End::stopped(15, true, true), 0),
            (End::stopped(15, false, true), 143),
            (End::stopped(15, true, false), 143),
            (End::stopped(2, true, true), 130),
            (End::Internal(anyhow::anyhow!("x")), 70),
        ];
        for (end, want) in cases {
            assert_eq!(exit_code(&end), want, "{end:?}");
        }
    }
}
