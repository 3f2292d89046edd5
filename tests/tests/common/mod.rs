//! The end-to-end harness: find (and build) the binaries, make scratch
//! directories whose path marks every process started for a test, find
//! leftover processes by that mark, and drive the volume protocol by hand
//! where a test must play a hostile or broken peer.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sidecar_core::record::read_flag;
use sidecar_core::{atomic, Outcome, TaskDir, TaskId, Volume};

pub use sidecar_test_support::{entrypoint, processes_mentioning};

/// The `executor-shim` command line.
pub fn shim_bin() -> PathBuf {
    sidecar_test_support::shim()
}

/// The process provider running `command` with this workspace's entrypoint.
pub fn process_provider(command: Vec<String>) -> executor_shim::provider::Provider {
    executor_shim::ProviderSpec {
        kind: Some(executor_shim::ProviderKind::Process),
        entrypoint: Some(entrypoint()),
        command,
        ..Default::default()
    }
    .build()
    .unwrap()
}

/// A scratch directory whose path is unique to one test: every process a
/// test starts carries it in its command line or environment (the volume
/// path is in `SHARED_DIR` of every logic), which is how leftovers are
/// found.
#[derive(Debug)]
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sidecar-e2e-{tag}-"))
            .tempdir()
            .expect("tempdir");
        // Readable and searchable by the unprivileged uids some tests use.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh, empty, world-writable volume directory `vol-<name>`.
    pub fn volume(&self, name: &str) -> PathBuf {
        let v = self.path().join(format!("vol-{name}"));
        std::fs::create_dir_all(&v).unwrap();
        std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o777)).unwrap();
        v
    }

    /// Writes an executable shell script and returns its path.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// The marker processes of this test carry.
    pub fn marker(&self) -> String {
        self.path().display().to_string()
    }

    /// Processes (other than this one) whose command line or environment
    /// mentions this scratch directory.
    pub fn leftovers(&self) -> Vec<(i32, String)> {
        processes_mentioning(&self.marker())
    }

    /// Waits up to `limit` for every process of this test to be gone;
    /// returns the ones still there.
    pub fn wait_no_leftovers(&self, limit: Duration) -> Vec<(i32, String)> {
        let until = Instant::now() + limit;
        loop {
            let left = self.leftovers();
            if left.is_empty() || Instant::now() >= until {
                return left;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills every process of this test (cleanup after a failure).
    pub fn kill_all(&self) {
        for (pid, _) in self.leftovers() {
            // SAFETY: kill(2) with a pid read from /proc; at worst ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Options of a sidecar started by a test.
#[derive(Clone, Debug)]
pub struct SidecarArgs {
    pub parallel: u32,
    pub heartbeat: Duration,
    pub lease_timeout: Duration,
    pub grace: Duration,
    pub exit_on_orphan: bool,
    pub extra: Vec<String>,
}

impl Default for SidecarArgs {
    fn default() -> Self {
        Self {
            parallel: 2,
            heartbeat: Duration::from_millis(100),
            lease_timeout: Duration::from_secs(1),
            grace: Duration::from_millis(200),
            exit_on_orphan: false,
            extra: Vec::new(),
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The `sidecar-entrypoint --mode serve` command line for `volume`.
pub fn serve_command(volume: &Path, args: &SidecarArgs, logic: &[&str]) -> Command {
    let mut cmd = Command::new(entrypoint());
    cmd.arg("--mode")
        .arg("serve")
        .arg("--volume")
        .arg(volume)
        .arg("--parallel")
        .arg(args.parallel.to_string())
        .arg("--heartbeat")
        .arg(ms(args.heartbeat))
        .arg("--lease-timeout")
        .arg(ms(args.lease_timeout))
        .arg("--grace")
        .arg(ms(args.grace));
    if args.exit_on_orphan {
        cmd.arg("--exit-on-orphan");
    }
    cmd.args(&args.extra).arg("--").args(logic);
    cmd.env_remove("SIDECAR_VOLUME").env_remove("SHARED_DIR");
    cmd
}

/// A sidecar process a test started directly, with its stderr captured to
/// a file (read with [`RawSidecar::log`]). Killed on drop.
#[derive(Debug)]
pub struct RawSidecar {
    pub child: Child,
    pub volume: Volume,
    log: PathBuf,
}

impl RawSidecar {
    pub fn spawn(mut cmd: Command, volume: &Path, log: PathBuf) -> Self {
        let err = std::fs::File::create(&log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err));
        let child = cmd.spawn().expect("spawn sidecar-entrypoint");
        Self {
            child,
            volume: Volume::new(volume),
            log,
        }
    }

    /// Starts a serving sidecar and waits for `sidecar/ready`.
    pub fn serve(scratch: &Scratch, name: &str, args: &SidecarArgs, logic: &[&str]) -> Self {
        let vol = scratch.volume(name);
        let cmd = serve_command(&vol, args, logic);
        let s = Self::spawn(cmd, &vol, scratch.path().join(format!("{name}.log")));
        s.wait_ready(Duration::from_secs(30));
        s
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn wait_ready(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while !self.volume.ready().exists() {
            assert!(
                Instant::now() < until,
                "sidecar not ready within {limit:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for `t`'s done flag; on a timeout the panic shows this
    /// sidecar's log.
    pub fn done(&self, t: &RawTask, limit: Duration) -> Outcome {
        t.try_wait_done(limit).unwrap_or_else(|| {
            panic!(
                "no done_flag for {} within {limit:?}; sidecar log:\n{}",
                t.dir.id(),
                self.log()
            )
        })
    }

    /// Raises the root `close_flag` and waits for a clean exit.
    pub fn close(mut self, limit: Duration) -> std::process::ExitStatus {
        atomic::touch_atomic(&self.volume.close_flag()).unwrap();
        let log = self.log();
        self.wait_exit(limit)
            .unwrap_or_else(|| panic!("sidecar did not exit on close_flag; log:\n{log}"))
    }
}

impl Drop for RawSidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A task driven by hand through the raw protocol (no shim): for tests where
/// the executor side must be hostile or where the sidecar's own answer to
/// bad input is what is checked.
#[derive(Debug)]
pub struct RawTask {
    pub dir: TaskDir,
}

impl RawTask {
    /// Creates `tasks/<id>/{input,output}/`, stages `input` as
    /// `input/part.csv`, and writes `start_flag` with exactly `spec` bytes.
    pub fn submit(volume: &Volume, id: &str, spec: &[u8], input: &[u8]) -> Self {
        let id = TaskId::new(id).unwrap();
        let dir = volume.task(&id);
        for d in [dir.input(), dir.output()] {
            std::fs::create_dir_all(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        std::fs::set_permissions(dir.root(), std::fs::Permissions::from_mode(0o777)).unwrap();
        atomic::write_atomic(
            &dir.input().join("part.csv"),
            input,
            atomic::Durability::Visible,
        )
        .unwrap();
        atomic::write_atomic(&dir.start_flag(), spec, atomic::Durability::Visible).unwrap();
        Self { dir }
    }

    /// Waits for the done flag and parses it.
    pub fn wait_done(&self, limit: Duration) -> Outcome {
        self.try_wait_done(limit)
            .unwrap_or_else(|| panic!("no done_flag for {} within {limit:?}", self.dir.id()))
    }

    /// Waits for the done flag; `None` if it does not come within `limit`.
    pub fn try_wait_done(&self, limit: Duration) -> Option<Outcome> {
        let until = Instant::now() + limit;
        let path = self.dir.done_flag();
        loop {
            if path.exists() {
                let bytes = read_flag(&path, "outcome").unwrap();
                return Some(Outcome::parse(&bytes, &path).unwrap());
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn close(&self) {
        atomic::touch_atomic(&self.dir.close_flag()).unwrap();
    }

    /// Reads an output file as the sidecar's manifest lists it.
    pub fn read_output(&self, rel: &str) -> Vec<u8> {
        let mut f = sidecar_core::safepath::open_beneath(&self.dir.output(), rel).unwrap();
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    }
}

/// Runs `f` on a thread and fails the test (naming `what`) if it does not
/// return within `limit`: the "never hangs" assertion. A hung thread is
/// left behind (the test fails anyway).
pub fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => (v, start.elapsed()),
        Err(_) => panic!("{what}: did not return within {limit:?} (hang)"),
    }
}

/// An env var parsed as a number, or `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Whether the test runs as root (some tests need another uid, mounts).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Test data: `n` rows of `(n: Int64, s: Utf8)`, the row number and a
/// string derived from `salt` and it.
pub fn batch(n: usize, salt: u64) -> arrow::array::RecordBatch {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("s", DataType::Utf8, false),
    ]));
    let ns: Vec<i64> = (0..n as i64).collect();
    let ss: Vec<String> = (0..n).map(|i| format!("row-{salt}-{i}")).collect();
    arrow::array::RecordBatch::try_new(
        schema,
        vec![
            std::sync::Arc::new(Int64Array::from(ns)),
            std::sync::Arc::new(StringArray::from(ss)),
        ],
    )
    .unwrap()
}

/// The batches as one, for comparison.
/// Runs `input` as one task and returns all the rows it gave back, as one
/// batch of `input`'s schema (the expected output schema too).
pub fn run_batch(
    sidecar: &executor_shim::provider::Sidecar,
    req: &executor_shim::TaskRequest,
    input: arrow::array::RecordBatch,
) -> Result<arrow::array::RecordBatch, executor_shim::ShimError> {
    let schema = input.schema();
    let mut got = Vec::new();
    sidecar.run_task(
        req,
        schema.clone(),
        std::iter::once(Ok(input)),
        Some(schema.clone()),
        &mut |b| {
            got.push(b);
            Ok(())
        },
    )?;
    Ok(concat(&got, &schema))
}

pub fn concat(
    batches: &[arrow::array::RecordBatch],
    schema: &arrow::datatypes::SchemaRef,
) -> arrow::array::RecordBatch {
    arrow::compute::concat_batches(schema, batches).unwrap()
}

/// A fake sidecar played by a thread, for tests where the sidecar is the
/// hostile or broken side: every 20 ms it calls `beat` (the volume, the
/// beat's sequence number) and answers each task whose start flag is there,
/// once, with `answer`. Stopped and joined on drop.
pub struct FakeSidecar {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeSidecar {
    /// Makes `sidecar/` and `tasks/`, beats once, then runs the thread.
    pub fn start(
        volume: &Volume,
        beat: impl Fn(&Volume, u64) + Send + 'static,
        answer: impl Fn(&TaskDir) + Send + 'static,
    ) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        std::fs::create_dir_all(volume.sidecar_dir()).unwrap();
        std::fs::create_dir_all(volume.tasks_dir()).unwrap();
        sidecar_core::liveness::beat(&volume.heartbeat(), 0).unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (s, v) = (std::sync::Arc::clone(&stop), volume.clone());
        let thread = std::thread::spawn(move || {
            let mut seen = std::collections::HashSet::new();
            let mut seq = 1;
            while !s.load(Ordering::SeqCst) {
                beat(&v, seq);
                seq += 1;
                let tasks = std::fs::read_dir(v.tasks_dir()).into_iter().flatten();
                for e in tasks.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let Ok(id) = TaskId::new(name.clone()) else {
                        continue;
                    };
                    let t = v.task(&id);
                    if t.start_flag().exists() && seen.insert(name) {
                        answer(&t);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeSidecar {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
