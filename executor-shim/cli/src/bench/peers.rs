//! The bench's other processes: every latency needs two, and the
//! throughput and load phases run the shim in a child of their own, so
//! that its peak memory is the phase's alone.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use super::STEP_DEADLINE;

/// A child of the bench, killed and reaped on drop. Its stderr (and that
/// of any sidecar it starts) goes to a log file, quoted when it fails.
#[derive(Debug)]
pub struct PeerProc {
    child: Child,
    what: String,
    log: PathBuf,
}

impl PeerProc {
    pub fn spawn(what: &str, args: &[OsString], stdout: Stdio, log: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this executable to run the peer")?;
        let log_file =
            File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(&exe)
            .arg("bench")
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start the {what} peer ({})", exe.display()))?;
        Ok(Self {
            child,
            what: what.to_owned(),
            log: log.to_owned(),
        })
    }

    /// The end of the peer's log, for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        if tail.trim().is_empty() {
            String::new()
        } else {
            format!("; its log ({}) ends:\n{tail}", self.log.display())
        }
    }

    /// Fails if the peer has exited (it never should before it is told to).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the {} peer exited early ({status}){}",
                self.what,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Waits for `ready` to appear (polling: this is not a measured wait).
    pub fn wait_ready(&mut self, ready: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + STEP_DEADLINE;
        while !ready.exists() {
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "the {} peer did not get ready within {STEP_DEADLINE:?}{}",
                    self.what,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Waits for the peer to exit successfully; returns its stdout.
    pub fn finish(mut self) -> anyhow::Result<std::process::Output> {
        let mut stdout = Vec::new();
        // The peers print one short line: reading to the end cannot block
        // past their exit.
        if let Some(mut out) = self.child.stdout.take() {
            out.read_to_end(&mut stdout)?;
        }
        let deadline = Instant::now() + STEP_DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                bail!(
                    "the {} peer did not exit within {STEP_DEADLINE:?}{}",
                    self.what,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        ensure!(
            status.success(),
            "the {} peer failed ({status}){}",
            self.what,
            self.log_tail()
        );
        Ok(std::process::Output {
            status,
            stdout,
            stderr: Vec::new(),
        })
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Asks the kernel to kill this process when its parent dies, so a peer
/// never outlives the bench.
pub fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no memory.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
}

pub fn os(s: impl Into<OsString>) -> OsString {
    s.into()
}

/// The last line a peer printed: its result.
pub fn last_line(stdout: &[u8], what: &str) -> anyhow::Result<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .last()
        .map(str::to_owned)
        .with_context(|| format!("the {what} peer printed no result"))
}
