//! The process provider: `sidecar-entrypoint --mode serve` as a child
//! process of the executor. Every child-process effect of the shim is here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sidecar_core::Volume;

use super::{ProcessProvider, SidecarOptions};
use crate::client::SidecarProbe;
use crate::error::ShimError;

/// The binary's file name.
const NAME: &str = "sidecar-entrypoint";

/// Starts the sidecar serving `vol` as a child process.
pub(super) fn spawn(
    vol: &Volume,
    opts: &SidecarOptions,
    provider: &ProcessProvider,
) -> Result<Child, ShimError> {
    let bin = locate_entrypoint(provider.entrypoint.as_deref().unwrap_or(Path::new("")))?;
    let root = vol.root().to_string_lossy().into_owned();
    let mut cmd = Command::new(&bin);
    cmd.args(opts.serve_args(&root))
        .args(&provider.extra_args)
        .arg("--")
        .args(super::command_or_default(&provider.command))
        .stdin(Stdio::null());
    if let Some(filter) = &opts.log_filter {
        cmd.env("SIDECAR_LOG", filter);
    }
    // The sidecar's logs go to our stderr, never our stdout (which may be
    // the data, as with `executor-shim run`).
    {
        use std::os::fd::AsFd;
        if let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() {
            cmd.stdout(Stdio::from(fd));
        }
    }
    tracing::debug!("starting {cmd:?}");
    cmd.spawn().map_err(|source| ShimError::Spawn {
        what: bin.display().to_string(),
        source,
    })
}

/// The child process of the process provider.
#[derive(Debug)]
pub(super) struct ChildProbe {
    child: Mutex<Option<Child>>,
    status: Mutex<Option<String>>,
    /// The volume the sidecar serves, to find the logic it left behind.
    volume: PathBuf,
}

impl ChildProbe {
    pub fn new(child: Child, volume: PathBuf) -> Self {
        Self {
            child: Mutex::new(Some(child)),
            status: Mutex::new(None),
            volume,
        }
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Option<String> {
        let deadline = sidecar_core::time::deadline_after(Instant::now(), timeout);
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: Signal) {
        if self.exited().is_some() {
            return;
        }
        // Holding the lock: the child cannot be reaped (and its pid reused)
        // between the check and the kill.
        let guard = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(child) = guard.as_ref() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
        }
    }

    /// Once the close flag is up: waits for the exit, escalating to
    /// `SIGTERM` and then `SIGKILL`. `Ok` only for a clean exit.
    pub fn stop(&self, grace: Duration, volume: &Path) -> Result<(), ShimError> {
        let mut exit = self.wait_exit(Duration::from_secs(10));
        if exit.is_none() {
            tracing::warn!("the sidecar did not exit after the close flag; sending SIGTERM");
            self.signal(Signal::SIGTERM);
            exit = self.wait_exit(grace.saturating_add(Duration::from_secs(5)));
        }
        if exit.is_none() {
            tracing::warn!("the sidecar ignored SIGTERM; sending SIGKILL");
            self.signal(Signal::SIGKILL);
            exit = self.wait_exit(Duration::from_secs(5));
        }
        let status = match exit {
            Some(s) if s.contains("exit status: 0") => return Ok(()),
            Some(status) => status,
            None => "still running after SIGKILL".into(),
        };
        Err(ShimError::SidecarExited {
            volume: volume.to_owned(),
            status,
        })
    }

    /// Gives the child to a thread that reaps it whenever it exits.
    pub fn detach(&self) {
        let child = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut child) = child {
            let _ = std::thread::Builder::new()
                .name("sidecar-reaper".into())
                .spawn(move || {
                    let _ = child.wait();
                });
        }
    }
}

impl SidecarProbe for ChildProbe {
    fn exited(&self) -> Option<String> {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = status.as_ref() {
            return Some(s.clone());
        }
        let mut guard = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        let child = guard.as_mut()?;
        let verdict = match child.try_wait() {
            Ok(Some(exit)) => exit.to_string(),
            Ok(None) => return None,
            Err(e) => format!("cannot wait for it: {e}"),
        };
        *status = Some(verdict.clone());
        // A sidecar that died (SIGKILL, OOM) could not kill the logic it
        // ran: that is ours to do now, or it runs forever (a stream-mode
        // logic blocked on a FIFO would).
        let killed = kill_orphaned_logic(&self.volume);
        if killed > 0 {
            tracing::warn!(
                "the sidecar on {} exited ({verdict}); killed {killed} process(es) of its task logic",
                self.volume.display()
            );
        }
        Some(verdict)
    }
}

/// Stops a sidecar this handle did not spawn, by its pid: waits for it to
/// exit on its close flag, then `SIGTERM`, the grace, `SIGKILL`. Only ever
/// signals the sidecar itself, never a process since given its pid.
pub(super) fn stop_pid(pid: u32, grace: Duration) {
    let alive = || pid_alive(pid) && is_entrypoint(pid);
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until && alive() {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (sig, wait) in [
        (
            Signal::SIGTERM,
            grace.saturating_add(Duration::from_secs(5)),
        ),
        (Signal::SIGKILL, Duration::from_secs(5)),
    ] {
        if !alive() {
            return;
        }
        if let Ok(p) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
        }
        let until = sidecar_core::time::deadline_after(Instant::now(), wait);
        while Instant::now() < until && alive() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// SIGKILLs every process that runs task logic of the sidecar on `volume`:
/// those whose environment has `SHARED_DIR=<volume>` and a
/// `SIDECAR_TASK_ID` (the entrypoint sets both; descendants inherit them).
/// Only processes whose environment we may read (our own user's) are
/// considered, and never this process. Returns how many were signalled.
///
/// The environment is used rather than process group ids written on the
/// volume: the volume is the sidecar's to write, and a hostile one could
/// otherwise make the executor signal any process group.
///
/// One pass over `/proc` is not enough: a logic process the dead sidecar
/// was spawning (`posix_spawn`'s child before its `execve`) still shows
/// the sidecar's environment, and a process forking during the pass may
/// add a child behind it. So passes repeat, 50 ms apart, until one finds
/// nothing (at least two passes, at most ten: about half a second).
pub(super) fn kill_orphaned_logic(volume: &Path) -> usize {
    let mut killed = 0;
    for pass in 0..10 {
        let found = kill_orphaned_logic_once(volume);
        killed += found;
        if found == 0 && pass > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    killed
}

/// One pass of [`kill_orphaned_logic`]. A process killed by an earlier pass
/// that is not reaped yet has no readable environment and is not counted.
fn kill_orphaned_logic_once(volume: &Path) -> usize {
    let mut want = b"SHARED_DIR=".to_vec();
    want.extend_from_slice(volume.as_os_str().as_encoded_bytes());
    let me = std::process::id();
    let mut killed = 0;
    for pid in sidecar_core::procfs::pids() {
        if u32::try_from(pid) == Ok(me) {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let (mut shared, mut task) = (false, false);
        for var in environ.split(|b| *b == 0) {
            shared |= var == want.as_slice();
            task |= var.starts_with(b"SIDECAR_TASK_ID=");
        }
        if shared && task {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            killed += 1;
        }
    }
    killed
}

/// Whether `pid` runs (a zombie does not count).
pub(super) fn pid_alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(sidecar_core::procfs::is_running)
}

/// Whether `pid` runs the `sidecar-entrypoint` binary.
pub(super) fn is_entrypoint(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .next()
                .is_some_and(|argv0| argv0.ends_with(NAME.as_bytes()))
        })
        .unwrap_or(false)
}

/// Finds `sidecar-entrypoint`: `explicit` if not empty, else
/// `$SIDECAR_ENTRYPOINT`, else next to the running executable (and in its
/// parent directory, for cargo's `target/<profile>/deps/` test binaries),
/// else on `PATH`.
pub fn locate_entrypoint(explicit: &Path) -> Result<PathBuf, ShimError> {
    let mut looked = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if !explicit.as_os_str().is_empty() {
        if explicit.components().count() == 1 && !explicit.is_file() {
            return which(explicit).ok_or_else(|| ShimError::EntrypointNotFound {
                looked: format!("{} on PATH", explicit.display()),
            });
        }
        candidates.push(explicit.to_owned());
    } else {
        if let Some(p) = std::env::var_os("SIDECAR_ENTRYPOINT").filter(|p| !p.is_empty()) {
            candidates.push(PathBuf::from(p));
        }
        if let Ok(exe) = std::env::current_exe() {
            if let Some(dir) = exe.parent() {
                candidates.push(dir.join(NAME));
                if let Some(up) = dir.parent() {
                    candidates.push(up.join(NAME));
                }
            }
        }
    }
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
        looked.push(c.display().to_string());
    }
    if explicit.as_os_str().is_empty() {
        if let Some(p) = which(Path::new(NAME)) {
            return Ok(p);
        }
        looked.push("PATH".into());
    }
    Err(ShimError::EntrypointNotFound {
        looked: looked.join(", "),
    })
}

fn which(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn entrypoint_lookup_names_where_it_looked() {
        let err = locate_entrypoint(Path::new("/nonexistent/sidecar-entrypoint"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/sidecar-entrypoint"), "{err}");
        assert!(err.contains("SIDECAR_ENTRYPOINT"), "{err}");
    }

    #[test]
    fn pid_liveness() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX - 1));
    }
}
