//! A tiny harness for the real-process tests (after ripgrep's `tests/util.rs`):
//! a volume directory, the entrypoint binary as a child, waits with generous
//! deadlines, and `/proc` scans for leftover processes.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Deadlines are generous: the machine may be a loaded 2-core box.
pub const LONG: Duration = Duration::from_secs(30);

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sidecar-entrypoint"))
}

/// A temporary volume.
pub struct Dir {
    tmp: tempfile::TempDir,
    /// Where the sidecar's own stdout/stderr go (outside the volume).
    logs: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Self {
        Self {
            tmp: tempfile::tempdir().unwrap(),
            logs: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }

    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) {
        let p = self.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        // Atomic, as the protocol demands of the executor side.
        let tmp = p.with_file_name(format!(".{}.tmp", p.file_name().unwrap().to_str().unwrap()));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
    }

    pub fn touch(&self, rel: &str) {
        self.write(rel, b"");
    }

    pub fn read(&self, rel: &str) -> String {
        let p = self.join(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.join(rel).exists()
    }

    /// Waits for `rel` to exist and returns its content.
    pub fn wait_for(&self, rel: &str) -> String {
        let p = self.join(rel);
        wait_until(&format!("{} to appear", p.display()), LONG, || p.exists());
        self.read(rel)
    }

    /// Reads `rel` as JSON once it exists.
    pub fn wait_json(&self, rel: &str) -> serde_json::Value {
        let text = self.wait_for(rel);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not JSON ({e}):\n{text}"))
    }

    pub fn logs(&self) -> &Path {
        self.logs.path()
    }
}

pub use sidecar_test_support::wait_until;

static MARKERS: AtomicU64 = AtomicU64::new(0);

/// A unique value for `SIDECAR_TEST_MARKER`, inherited by every descendant
/// of the sidecar, so leftovers can be found in `/proc`.
pub fn marker() -> String {
    format!(
        "sidecar-test-{}-{}",
        std::process::id(),
        MARKERS.fetch_add(1, Ordering::SeqCst)
    )
}

/// Live (non-zombie) processes whose environment or command line holds `marker`.
pub fn processes_with(marker: &str) -> Vec<(i32, String)> {
    sidecar_test_support::processes_mentioning(marker)
}

/// The entrypoint as a child process.
pub struct Sidecar {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    pub marker: String,
}

/// How a sidecar run ended.
#[derive(Debug)]
pub struct Ended {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ended {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl Sidecar {
    /// A command for the binary with a marker in its environment; the
    /// caller adds arguments.
    pub fn command(dir: &Dir) -> (Command, SidecarFiles) {
        let mut cmd = Command::new(bin());
        let marker = marker();
        cmd.env("SIDECAR_TEST_MARKER", &marker)
            .env("SIDECAR_LOG", "debug")
            .env_remove("SIDECAR_VOLUME")
            .env_remove("SHARED_DIR")
            .stdin(Stdio::null());
        let n = MARKERS.fetch_add(1, Ordering::SeqCst);
        let files = SidecarFiles {
            stdout: dir.logs().join(format!("stdout.{n}")),
            stderr: dir.logs().join(format!("stderr.{n}")),
            marker,
        };
        (cmd, files)
    }

    pub fn spawn(mut cmd: Command, files: SidecarFiles) -> Self {
        cmd.stdout(std::fs::File::create(&files.stdout).unwrap())
            .stderr(std::fs::File::create(&files.stderr).unwrap());
        let child = cmd.spawn().unwrap();
        Self {
            child,
            stdout: files.stdout,
            stderr: files.stderr,
            marker: files.marker,
        }
    }

    /// `sidecar-entrypoint ARGS...` with the volume given by `--volume`.
    pub fn start(dir: &Dir, args: &[&str]) -> Self {
        let (mut cmd, files) = Self::command(dir);
        cmd.arg("--volume").arg(dir.path()).args(args);
        Self::spawn(cmd, files)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr_so_far(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: a signal to our own child.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the exit, at most `limit`.
    pub fn wait(mut self, limit: Duration) -> Ended {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the sidecar did not exit within {limit:?}; its stderr:\n{}",
                    self.stderr_so_far()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ended {
            status,
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Where a sidecar's own output goes, and its marker.
pub struct SidecarFiles {
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub marker: String,
}
