//! Every child process the entrypoint starts, waits for, signals or kills.
//!
//! All child-process code lives here (as in ripgrep's `process.rs`), because
//! as PID 1 or a child subreaper the entrypoint has one rule the rest of the
//! program must never break: **exactly one place calls `wait`**.
//!
//! * [`Supervisor::spawn`] starts a command with `std::process::Command` in
//!   its own process group (`process_group(0)`, i.e. `setpgid`; never `setsid`,
//!   which some seccomp profiles kill) and registers the pid.
//! * The reaper ([`Supervisor::reap`], driven by `SIGCHLD` and a slow tick)
//!   loops `wait4(-1, WNOHANG)`: it reaps every zombie, including orphans
//!   reparented to us, and hands the exit status and resource usage of
//!   registered pids to their waiters.
//! * `tokio::process` is not used: its own reaping would race ours.
//!
//! `std`'s `spawn` waits for a child whose `exec` failed, and panics if that
//! child was already reaped; the reaper therefore holds the same lock as
//! `spawn` while it calls `wait4`, so a half-spawned child is never reaped
//! behind `std`'s back.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How a process ended, with what it used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code, when it exited.
    pub code: Option<i32>,
    /// The signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// User plus system CPU time, in milliseconds.
    pub cpu_ms: u64,
    /// Peak resident set size, in KiB.
    pub max_rss_kib: u64,
}

impl ExitInfo {
    fn from_wait(status: libc::c_int, usage: &libc::rusage) -> Self {
        let ms = |t: libc::timeval| (t.tv_sec as u64) * 1000 + (t.tv_usec as u64) / 1000;
        let (code, signal) = if libc::WIFEXITED(status) {
            (Some(libc::WEXITSTATUS(status)), None)
        } else if libc::WIFSIGNALED(status) {
            (None, Some(libc::WTERMSIG(status)))
        } else {
            (None, None)
        };
        Self {
            code,
            signal,
            cpu_ms: ms(usage.ru_utime) + ms(usage.ru_stime),
            max_rss_kib: usage.ru_maxrss.max(0) as u64,
        }
    }

    /// Whether it exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// "exit status 3" or "signal 15 (SIGTERM)".
    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(s)) => format!("signal {s} ({})", signal_name(s)),
            (None, None) => "an unknown status".to_owned(),
        }
    }
}

/// `SIGTERM` for 15, `SIGRTMIN+2` for a real-time signal, and so on.
pub fn signal_name(sig: i32) -> String {
    if let Ok(s) = Signal::try_from(sig) {
        return s.as_str().to_owned();
    }
    if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&sig) {
        return format!("SIGRTMIN+{}", sig - libc::SIGRTMIN());
    }
    "unknown signal".to_owned()
}

/// Every signal whose default action ends the process and that a process
/// may catch, less the ones it cannot mean as a stop: SIGPIPE (a write to a
/// closed pipe, an error to handle where it happens), SIGXFSZ (a file size
/// limit, ignored so that the write fails with EFBIG instead) and the
/// faults (SIGSEGV, SIGBUS, ...), which are synchronous. Each one stops the
/// entrypoint as SIGTERM does: the outcome recorded, the logic stopped.
pub fn stop_signals() -> Vec<i32> {
    let mut sigs = vec![
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGIO,
        libc::SIGPWR,
        libc::SIGSTKFLT,
        libc::SIGXCPU,
    ];
    sigs.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    sigs
}

/// What the logic is sent when we are stopped by `sig`: the conventional
/// stop signals are forwarded as they are; any other (SIGUSR1 asks `dd` for
/// statistics, not to stop) becomes SIGTERM.
pub fn forwarded(sig: i32) -> Signal {
    match Signal::try_from(sig) {
        Ok(s @ (Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP | Signal::SIGQUIT)) => s,
        _ => Signal::SIGTERM,
    }
}

/// What to run.
#[derive(Debug)]
pub struct Spawn {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub cwd: Option<PathBuf>,
    /// Added to (or replacing in) the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl Spawn {
    pub fn new(program: impl Into<OsString>, args: Vec<OsString>) -> Self {
        Self {
            program: program.into(),
            args,
            cwd: None,
            env: Vec::new(),
            stdin: Stdio::null(),
            stdout: Stdio::inherit(),
            stderr: Stdio::inherit(),
        }
    }

    /// The program as the user wrote it, for messages.
    pub fn display_program(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }
}

#[derive(Debug, Default)]
struct Table {
    /// Registered pids and who wants their exit.
    waiters: HashMap<i32, oneshot::Sender<ExitInfo>>,
    /// Process groups of running children (leader pid = pgid).
    groups: HashSet<i32>,
}

/// The one owner of `wait` in this process. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Supervisor {
    table: Arc<Mutex<Table>>,
}

/// A started child: its pid (also its process group id) and its exit.
#[derive(Debug)]
pub struct Child {
    pid: i32,
    exit: oneshot::Receiver<ExitInfo>,
    supervisor: Supervisor,
}

/// A request to stop a child: why, and the first signal to send its
/// group (SIGTERM, or the signal we received, forwarded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cancel {
    pub reason: String,
    pub signal: Signal,
}

impl From<String> for Cancel {
    fn from(reason: String) -> Self {
        Self {
            reason,
            signal: Signal::SIGTERM,
        }
    }
}

/// Why a supervised child was stopped before it ended on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The deadline passed (the limit it had).
    TimedOut(Duration),
    /// Cancelled, for this reason.
    Cancelled(String),
}

/// How a supervised child ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub exit: ExitInfo,
    /// Set when we stopped it.
    pub stopped: Option<Stop>,
}

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        crate::lock(&self.table)
    }

    /// Starts `spec` in a new process group.
    pub fn spawn(&self, spec: Spawn) -> std::io::Result<Child> {
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .stdin(spec.stdin)
            .stdout(spec.stdout)
            .stderr(spec.stderr);
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        // Its own process group (never a new session). `process_group`
        // rather than a `pre_exec` setpgid: it lets std use posix_spawn
        // (POSIX_SPAWN_SETPGROUP) instead of fork, which is markedly cheaper
        // per task and does not grow with our RSS.
        cmd.process_group(0);
        let (tx, rx) = oneshot::channel();
        // Held across spawn: the reaper cannot call wait4 meanwhile (see the
        // module docs), and cannot miss the registration.
        let mut table = self.lock();
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        // The std handle is dropped without waiting: the reaper owns wait.
        drop(child);
        table.waiters.insert(pid, tx);
        table.groups.insert(pid);
        drop(table);
        Ok(Child {
            pid,
            exit: rx,
            supervisor: self.clone(),
        })
    }

    /// Reaps every zombie child; delivers registered exits. Returns how
    /// many were reaped.
    pub fn reap(&self) -> usize {
        let mut table = self.lock();
        let mut n = 0;
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: an all-zero rusage is a valid value of the plain C struct.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: both pointers are to live locals.
            let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut usage) };
            if pid <= 0 {
                break;
            }
            n += 1;
            if let Some(tx) = table.waiters.remove(&pid) {
                let _ = tx.send(ExitInfo::from_wait(status, &usage));
            } else {
                tracing::debug!(pid, "reaped an orphan");
            }
        }
        n
    }

    /// Runs the reaper until the returned future is dropped: on every
    /// `SIGCHLD`, and every second in case one was coalesced or missed.
    pub async fn run_reaper(self) {
        let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot watch SIGCHLD ({e}); reaping every 50ms");
                None
            }
        };
        let tick = if sigchld.is_some() {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(50)
        };
        loop {
            self.reap();
            match sigchld.as_mut() {
                Some(s) => {
                    let _ = tokio::time::timeout(tick, s.recv()).await;
                }
                None => tokio::time::sleep(tick).await,
            }
        }
    }

    /// Process groups of children still running.
    pub fn groups(&self) -> Vec<i32> {
        self.lock().groups.iter().copied().collect()
    }

    /// Kills every process descended from us (found through `/proc`; as a
    /// subreaper or PID 1 every orphan of ours is our child), reaping as it
    /// goes, until none is left or `limit` passes. Returns how many it killed.
    pub async fn kill_descendants(&self, limit: Duration) -> usize {
        let me = std::process::id() as i32;
        let deadline = sidecar_core::time::tokio_deadline_after(Instant::now(), limit);
        let mut killed = 0;
        loop {
            for g in self.groups() {
                let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
            }
            let found = descendants(me);
            if found.is_empty() {
                break;
            }
            for pid in &found {
                // SAFETY: kill with a pid from /proc; at worst ESRCH.
                if unsafe { libc::kill(*pid, libc::SIGKILL) } == 0 {
                    killed += 1;
                }
            }
            self.reap();
            if Instant::now() >= deadline {
                tracing::warn!(left = found.len(), "descendants still present at exit");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.reap();
        }
        self.reap();
        killed
    }
}

/// Every pid whose parent chain leads to `root` (not `root` itself), from
/// `/proc`. Zombies are included: they are gone once reaped.
pub fn descendants(root: i32) -> Vec<i32> {
    let parent: HashMap<i32, i32> = sidecar_core::procfs::pids()
        .filter_map(|pid| Some((pid, sidecar_core::procfs::stat(pid)?.ppid)))
        .collect();
    let mut out = Vec::new();
    for &pid in parent.keys() {
        let mut p = pid;
        // Bounded walk: a pid table changes under us, never loop forever.
        for _ in 0..4096 {
            match parent.get(&p) {
                Some(&pp) if pp == root => {
                    out.push(pid);
                    break;
                }
                Some(&pp) if pp > 1 && pp != p => p = pp,
                _ => break,
            }
        }
    }
    out.sort_unstable();
    out
}

impl Child {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn signal_group(&self, sig: Signal) {
        match killpg(Pid::from_raw(self.pid), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => tracing::warn!(pgid = self.pid, "cannot send {sig} to the group: {e}"),
        }
    }

    /// Whether any process (zombies included) is left in the group.
    fn group_alive(&self) -> bool {
        // SAFETY: signal 0 only checks for existence.
        unsafe { libc::kill(-self.pid, 0) == 0 }
    }

    /// Waits for the child, stopping it (TERM to the group, `grace`, KILL)
    /// when `deadline` passes or `cancel` resolves. When the leader ends,
    /// whatever it left in its group is killed: a task is over when its
    /// logic exits.
    pub async fn supervise(
        mut self,
        deadline: Option<(Instant, Duration)>,
        cancel: impl Future<Output = Cancel>,
        grace: Duration,
    ) -> Ended {
        let sleep = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let (stopped, first) = tokio::select! {
            exit = &mut self.exit => {
                let exit = exit.unwrap_or(ExitInfo { code: None, signal: None, cpu_ms: 0, max_rss_kib: 0 });
                self.finish_group();
                return Ended { exit, stopped: None };
            }
            () = sleep => (Stop::TimedOut(deadline.map(|d| d.1).unwrap_or_default()), Signal::SIGTERM),
            c = cancel => (Stop::Cancelled(c.reason), c.signal),
        };
        tracing::info!(
            pgid = self.pid,
            ?stopped,
            "stopping: {first} to the process group"
        );
        self.signal_group(first);
        let until = sidecar_core::time::tokio_deadline_after(Instant::now(), grace);
        while self.group_alive() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.supervisor.reap();
        }
        if self.group_alive() {
            tracing::info!(
                pgid = self.pid,
                "grace of {grace:?} over: SIGKILL to the process group"
            );
            self.signal_group(Signal::SIGKILL);
        }
        let exit = self.wait_exit().await;
        self.finish_group();
        Ended {
            exit,
            stopped: Some(stopped),
        }
    }

    async fn wait_exit(&mut self) -> ExitInfo {
        loop {
            match tokio::time::timeout(Duration::from_millis(200), &mut self.exit).await {
                Ok(Ok(exit)) => return exit,
                Ok(Err(_)) => {
                    return ExitInfo {
                        code: None,
                        signal: None,
                        cpu_ms: 0,
                        max_rss_kib: 0,
                    }
                }
                Err(_) => {
                    // Not yet: make sure, then look again.
                    self.signal_group(Signal::SIGKILL);
                    self.supervisor.reap();
                }
            }
        }
    }

    fn finish_group(&self) {
        if self.group_alive() {
            self.signal_group(Signal::SIGKILL);
        }
        self.supervisor.lock().groups.remove(&self.pid);
        self.supervisor.reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_descriptions() {
        let e = ExitInfo {
            code: Some(3),
            signal: None,
            cpu_ms: 0,
            max_rss_kib: 0,
        };
        assert_eq!(e.describe(), "exit status 3");
        let s = ExitInfo {
            code: None,
            signal: Some(15),
            ..e
        };
        assert_eq!(s.describe(), "signal 15 (SIGTERM)");
        assert!(!s.success());
    }
}
