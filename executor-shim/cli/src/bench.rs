//! `executor-shim bench`: this machine's handshake latency, per-task
//! overhead, throughput and memory, each beside a raw baseline measured the
//! same way in the same run, on the user's own volume.
//!
//! ## What is measured
//!
//! | figure | how | baseline |
//! |---|---|---|
//! | handshake | start flag written -> a sidecar-side peer process sees it, a no-op handler runs, the done flag is written -> this process sees and parses it; the product's own protocol code on both sides: the entrypoint's driver and file-backed flags ([`sidecar_core::protocol::drive`], [`FileFlags`]) on a tokio runtime, and the shim's [`ExecutorFlags`] and [`Watch`] | the same round trip through bare inotify (create a file, the peer sees it and creates a reply, we see the reply); and the same protocol with the polling fallback at 1 ms |
//! | per-task overhead | one empty task through a serving `sidecar-entrypoint` running `true` (spawn included) | `true` spawned and waited for by this process |
//! | throughput | `--size` bytes of Arrow data through an identity `cat`, in file mode and in stream mode (FIFOs) | the same bytes written to a file on the volume, copied with `cp`, read back |
//! | peak RSS | `VmHWM` of the shim process during the throughput phase | — |
//!
//! ## Theory of operation
//!
//! Every latency needs two processes, so the bench runs itself again
//! ([`std::env::current_exe`]) with a hidden `--peer` flag as the other
//! side. The throughput phase also runs in a child (`--peer
//! throughput-file`, `--peer throughput-stream`): that child *is* the shim
//! for the phase, so its `VmHWM` is exactly the shim's peak, untouched by
//! the earlier phases. Every child asks the kernel to kill it when the bench
//! dies (`PR_SET_PDEATHSIG`), and the bench kills what it started on every
//! error path, so no peer outlives a run.
//!
//! The throughput data is a pool of a few distinct 64K-row batches (int64,
//! float64, 16-character strings) cycled until `--size` bytes of Arrow IPC
//! stream are produced: the generator holds a few MiB, not the partition,
//! and costs the same in the figure and in its baseline.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use executor_shim::client::TaskRequest;
use executor_shim::provider::{ProviderKind, ProviderSpec, Sidecar, SidecarOptions};
use sidecar_core::atomic;
use sidecar_core::files::{ExecutorFlags, FileFlags, Stop, TaskFiles};
use sidecar_core::protocol::{self, Event, Exit, Finish, Runner};
use sidecar_core::wait::{WaitError, Watch, WatchConfig, WatchMode};
use sidecar_core::{TaskId, TaskSpec, Volume};

use crate::Done;

/// Rows per generated batch.
const BATCH_ROWS: usize = 64 * 1024;
/// Distinct batches in the generator's pool.
const POOL: usize = 4;
/// How long any single wait of the bench may take before it is an error.
const STEP_DEADLINE: Duration = Duration::from_secs(60);
/// The poll interval of the polling baseline.
const POLL_INTERVAL: Duration = Duration::from_millis(1);
/// The file a peer writes once it is armed.
const PEER_READY: &str = "peer-ready";

/// `executor-shim bench`: measures this machine's handshake latency,
/// per-task overhead and throughput against raw baselines in one run.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// The volume to measure on; a unique subdirectory is made in it and
    /// removed at the end [default: a fresh directory under /dev/shm, else
    /// the system temporary directory]
    #[arg(long, value_name = "DIR")]
    pub volume: Option<PathBuf>,
    /// Bytes of Arrow data for the throughput phase (suffixes K, M, G, KiB,
    /// MiB, GiB, KB, MB, GB)
    #[arg(long, value_name = "BYTES", default_value = "1GiB", value_parser = parse_size)]
    pub size: u64,
    /// Handshake round trips
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub tasks: usize,
    /// Tasks through the serving sidecar for the per-task overhead
    /// [default: 3/20 of --tasks, at least 10]
    #[arg(long, value_name = "N")]
    pub overhead_tasks: Option<usize>,
    /// Round trips of the polling baseline [default: 1/4 of --tasks, at least 10]
    #[arg(long, value_name = "N")]
    pub poll_tasks: Option<usize>,
    /// The sidecar-entrypoint binary [default: beside this executable, else
    /// on PATH]
    #[arg(long, value_name = "PATH", env = "SIDECAR_ENTRYPOINT")]
    pub entrypoint: Option<PathBuf>,
    /// Print only the JSON line on stdout (the table goes to stderr)
    #[arg(long)]
    pub json: bool,
    /// Internal: run as the other side of a measurement.
    #[arg(long, hide = true, value_enum)]
    pub peer: Option<Peer>,
    /// Internal: the peer polls instead of using inotify.
    #[arg(long, hide = true)]
    pub peer_poll: bool,
}

/// The other side of a measurement (an internal flag).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// The sidecar side of the real protocol with a no-op handler.
    Noop,
    /// Bare inotify: see a file, create a reply.
    RawInotify,
    /// The shim, running empty tasks through a serving sidecar.
    Overhead,
    /// The shim, pushing the partition through in file mode.
    ThroughputFile,
    /// The shim, pushing the partition through in stream mode.
    ThroughputStream,
}

/// Parses `1GiB`, `16MiB`, `64K`, `1000`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size: expected a number like 1GiB or 16MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
            ))
        }
    };
    let bytes = num * mult as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{s:?}: the size must be at least one byte"));
    }
    Ok(bytes as u64)
}

/// Runs the bench (or, with the hidden `--peer`, one side of it).
pub fn run(args: BenchArgs) -> anyhow::Result<Done> {
    if let Some(peer) = args.peer {
        die_with_parent();
        let dir = args
            .volume
            .clone()
            .context("--peer needs --volume (it is an internal flag of `bench`)")?;
        match peer {
            Peer::Noop => peer_noop(&dir, args.tasks, watch_config(args.peer_poll))?,
            Peer::RawInotify => peer_raw(&dir, args.tasks)?,
            Peer::Overhead => peer_overhead(&dir, args.tasks, &args)?,
            Peer::ThroughputFile | Peer::ThroughputStream => {
                let stream = peer == Peer::ThroughputStream;
                peer_throughput(&dir, &args, stream)?;
            }
        }
        return Ok(Done::Success);
    }
    let report = measure(&args)?;
    let table = report.table();
    if args.json {
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    println!("{}", report.json());
    Ok(Done::Success)
}

// ---------------------------------------------------------------------------
// The run.

/// Latency samples, sorted.
#[derive(Debug, Clone, Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn new(mut v: Vec<Duration>) -> Self {
        v.sort();
        Self(v)
    }
    /// The nearest-rank percentile, in microseconds.
    fn pct_us(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.0.len()) - 1;
        self.0[i].as_secs_f64() * 1e6
    }
    fn p50(&self) -> f64 {
        self.pct_us(50.0)
    }
    fn p99(&self) -> f64 {
        self.pct_us(99.0)
    }
}

/// Everything one run measured.
#[derive(Debug, Default)]
struct Report {
    volume: PathBuf,
    fs: String,
    handshake: Samples,
    inotify_raw: Samples,
    poll: Samples,
    task_overhead: Samples,
    spawn_raw: Samples,
    bytes: u64,
    file: Throughput,
    stream: Throughput,
    raw: RawCopy,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Throughput {
    bytes: u64,
    rows: u64,
    secs: f64,
    peak_rss_kib: u64,
}

impl Throughput {
    fn mb_s(&self) -> f64 {
        mb_s(self.bytes, self.secs)
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct RawCopy {
    bytes: u64,
    write_secs: f64,
    cp_secs: f64,
    read_secs: f64,
}

impl RawCopy {
    fn secs(&self) -> f64 {
        self.write_secs + self.cp_secs + self.read_secs
    }
    fn mb_s(&self) -> f64 {
        mb_s(self.bytes, self.secs())
    }
}

fn mb_s(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 / 1e6 / secs
}

fn ratio(a: f64, b: f64) -> f64 {
    if b <= 0.0 {
        return 0.0;
    }
    a / b
}

/// The bench's scratch directory; removed on drop.
#[derive(Debug)]
struct Scratch {
    root: PathBuf,
}

impl Scratch {
    fn new(base: Option<&Path>) -> anyhow::Result<Self> {
        let base = match base {
            Some(b) => b.to_owned(),
            None => {
                let shm = Path::new("/dev/shm");
                if shm.is_dir() && is_writable_dir(shm) {
                    shm.to_owned()
                } else {
                    std::env::temp_dir()
                }
            }
        };
        std::fs::create_dir_all(&base)
            .with_context(|| format!("cannot create the volume {}", base.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("executor-shim-bench.")
            .tempdir_in(&base)
            .with_context(|| format!("cannot make a directory in {}", base.display()))?;
        Ok(Self { root: dir.keep() })
    }
    /// Where the peers of phase `name` (and the sidecars they start) log.
    fn log(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.log"))
    }
    fn sub(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.root.join(name);
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn is_writable_dir(p: &Path) -> bool {
    tempfile::tempdir_in(p).is_ok()
}

/// The filesystem type of `p`, by name when it is a common one.
fn fs_type(p: &Path) -> String {
    match nix::sys::statfs::statfs(p) {
        Ok(s) => {
            let t = s.filesystem_type().0 as u64;
            match t {
                0x0102_1994 => "tmpfs".into(),
                0xEF53 => "ext4".into(),
                0x5846_5342 => "xfs".into(),
                0x9123_683E => "btrfs".into(),
                0x794C_7630 => "overlayfs".into(),
                0x6969 => "nfs".into(),
                0x6573_5546 => "fuse".into(),
                other => format!("fs type {other:#x}"),
            }
        }
        Err(_) => "unknown".into(),
    }
}

/// Progress goes to stderr, so stdout carries only the results.
fn say(msg: &str) {
    eprintln!("bench: {msg}");
}

fn measure(args: &BenchArgs) -> anyhow::Result<Report> {
    ensure!(args.tasks > 0, "--tasks must be at least 1");
    let scratch = Scratch::new(args.volume.as_deref())?;
    let mut r = Report {
        fs: fs_type(&scratch.root),
        volume: scratch.root.clone(),
        ..Default::default()
    };
    let n = args.tasks;
    let n_poll = args.poll_tasks.unwrap_or((n / 4).max(10));
    let n_over = args.overhead_tasks.unwrap_or((n * 3 / 20).max(10));
    say(&format!("volume {} ({})", r.volume.display(), r.fs));

    say(&format!("handshake: {n} round trips through bare inotify"));
    r.inotify_raw = raw_round_trips(&scratch.sub("raw")?, &scratch.log("raw"), n)?;
    say(&latency("bare inotify", &r.inotify_raw));
    say(&format!("handshake: {n} round trips through the protocol"));
    r.handshake = handshake(
        &scratch.sub("handshake")?,
        &scratch.log("handshake"),
        n,
        watch_config(false),
    )?;
    say(&latency("protocol", &r.handshake));
    say(&format!(
        "handshake: {n_poll} round trips through the protocol polling every 1 ms"
    ));
    r.poll = handshake(
        &scratch.sub("poll")?,
        &scratch.log("poll"),
        n_poll,
        watch_config(true),
    )?;
    say(&latency("polling", &r.poll));

    say(&format!("per-task overhead: {n_over} spawns of `true`"));
    r.spawn_raw = spawn_true(n_over)?;
    say(&latency("bare spawn", &r.spawn_raw));
    say(&format!(
        "per-task overhead: {n_over} tasks through a serving sidecar"
    ));
    r.task_overhead = task_overhead(&scratch.sub("serve")?, &scratch.log("serve"), n_over, args)?;
    say(&latency("serve mode", &r.task_overhead));

    say(&format!(
        "throughput: {} of Arrow data, raw write + cp + read",
        human_bytes(args.size)
    ));
    r.raw = raw_copy(&scratch.sub("copy")?, args.size)?;
    r.bytes = r.raw.bytes;
    say(&format!("  raw copy: {:.0} MB/s", r.raw.mb_s()));
    say("throughput: file mode");
    r.file = throughput_child(
        &scratch.sub("file")?,
        &scratch.log("file"),
        args,
        Peer::ThroughputFile,
    )?;
    say(&format!("  file mode: {:.0} MB/s", r.file.mb_s()));
    say("throughput: stream mode");
    r.stream = throughput_child(
        &scratch.sub("stream")?,
        &scratch.log("stream"),
        args,
        Peer::ThroughputStream,
    )?;
    say(&format!("  stream mode: {:.0} MB/s", r.stream.mb_s()));
    Ok(r)
}

fn latency(what: &str, s: &Samples) -> String {
    format!("  {what}: p50 {}, p99 {}", us(s.p50()), us(s.p99()))
}

fn watch_config(poll: bool) -> WatchConfig {
    if poll {
        WatchConfig {
            mode: WatchMode::Poll,
            poll: POLL_INTERVAL,
        }
    } else {
        WatchConfig {
            mode: WatchMode::Native,
            ..WatchConfig::default()
        }
    }
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else {
        format!("{b} B")
    }
}

// ---------------------------------------------------------------------------
// Child processes.

/// A child of the bench, killed and reaped on drop. Its stderr (and that
/// of any sidecar it starts) goes to a log file, quoted when it fails.
#[derive(Debug)]
struct PeerProc {
    child: Child,
    what: String,
    log: PathBuf,
}

impl PeerProc {
    fn spawn(what: &str, args: &[OsString], stdout: Stdio, log: &Path) -> anyhow::Result<Self> {
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
    fn check_alive(&mut self) -> anyhow::Result<()> {
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
    fn wait_ready(&mut self, ready: &Path) -> anyhow::Result<()> {
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
    fn finish(mut self) -> anyhow::Result<std::process::Output> {
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
fn die_with_parent() {
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

fn os(s: impl Into<OsString>) -> OsString {
    s.into()
}

// ---------------------------------------------------------------------------
// Handshake through the real protocol.

fn task_id(i: usize) -> anyhow::Result<TaskId> {
    Ok(TaskId::new(format!("bench-{i}"))?)
}

/// The executor side: `n` round trips against a `noop` peer; the samples are
/// start-flag-written -> done-flag-seen-and-parsed, through the product's
/// own executor-side flags ([`ExecutorFlags`]) and [`Watch`].
fn handshake(dir: &Path, log: &Path, n: usize, cfg: WatchConfig) -> anyhow::Result<Samples> {
    let volume = Volume::new(dir);
    std::fs::create_dir_all(volume.tasks_dir())?;
    let mut args = vec![
        os("--peer"),
        os("noop"),
        os("--volume"),
        os(dir),
        os("--tasks"),
        os(n.to_string()),
    ];
    if cfg.mode == WatchMode::Poll {
        args.push(os("--peer-poll"));
    }
    let mut peer = PeerProc::spawn("noop", &args, Stdio::null(), log)?;
    peer.wait_ready(&dir.join(PEER_READY))?;

    let watch = Watch::new(cfg)?;
    watch.add(&volume.tasks_dir())?;
    let spec = TaskSpec::default();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let task = volume.task(&task_id(i)?);
        std::fs::create_dir(task.root())?;
        watch.add(task.root())?;
        let flags = ExecutorFlags::new(task.clone());
        let t0 = Instant::now();
        flags.start(&spec)?;
        let outcome = watch
            .wait_until("done_flag", Some(t0 + STEP_DEADLINE), || flags.outcome())
            .with_context(|| format!("round trip {i}"))?;
        samples.push(t0.elapsed());
        ensure!(
            outcome.succeeded(),
            "round trip {i}: the no-op task did not succeed: {outcome:?}"
        );
        watch.remove(task.root());
        flags.close()?;
        let root = task.root().to_owned();
        watch
            .wait_until(
                "task directory removal",
                Some(Instant::now() + STEP_DEADLINE),
                || Ok::<_, WaitError>((!root.exists()).then_some(())),
            )
            .with_context(|| format!("round trip {i}: the peer did not remove the task"))?;
        if i % 256 == 0 {
            peer.check_alive()?;
        }
    }
    peer.finish()?;
    Ok(Samples::new(samples))
}

/// The sidecar side of [`handshake`]: the product's own driver and
/// file-backed flags ([`protocol::drive`] over [`FileFlags`]) on a tokio
/// runtime, as the entrypoint runs them, with a no-op runner.
fn peer_noop(dir: &Path, n: usize, cfg: WatchConfig) -> anyhow::Result<()> {
    let volume = Volume::new(dir);
    let watch = Arc::new(Watch::new(cfg)?);
    watch.add(&volume.tasks_dir())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    atomic::touch_atomic(&dir.join(PEER_READY))?;
    rt.block_on(async {
        for i in 0..n {
            let id = task_id(i)?;
            let task = volume.task(&id);
            let root = task.root().to_owned();
            let deadline = tokio::time::Instant::now() + STEP_DEADLINE;
            watch
                .wait_until_async("the next task directory", Some(deadline), || {
                    Ok::<_, WaitError>(root.is_dir().then_some(()))
                })
                .await?;
            // Armed before the flags are looked at: nothing is missed.
            watch.add(&root)?;
            let flags = FileFlags::new(TaskFiles::serve(&task), Arc::clone(&watch), Stop::never());
            match protocol::drive(&id, &flags, &Noop, &flags).await? {
                Finish::Done { outcome, .. } if outcome.succeeded() => {}
                other => bail!("{id}: {other:?}"),
            }
        }
        Ok(())
    })
}

/// The no-op logic.
#[derive(Debug)]
struct Noop;

impl Runner for Noop {
    type Child = ();
    async fn spawn(&self, _task: &TaskId, _spec: &TaskSpec) -> Event<()> {
        Event::Spawned(())
    }
    async fn wait(&self, _task: &TaskId, _spec: &TaskSpec, _child: ()) -> Event<()> {
        Event::Exited(Exit::code(0))
    }
}

// ---------------------------------------------------------------------------
// Handshake through bare inotify.

/// A raw inotify instance on one directory, reporting created names.
struct RawInotify {
    fd: OwnedFd,
    buf: Vec<u8>,
    pending: std::collections::VecDeque<Vec<u8>>,
}

impl std::fmt::Debug for RawInotify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawInotify")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

impl RawInotify {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        // SAFETY: inotify_init1 takes flags only; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("inotify_init1");
        }
        // SAFETY: fd is a fresh descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
        // SAFETY: c is a valid NUL-terminated path for the call's duration.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                c.as_ptr(),
                libc::IN_CREATE | libc::IN_MOVED_TO,
            )
        };
        if wd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("inotify_add_watch {}", dir.display()));
        }
        Ok(Self {
            fd,
            buf: vec![0u8; 64 * 1024],
            pending: Default::default(),
        })
    }

    /// The next created name (blocking).
    fn next(&mut self) -> anyhow::Result<Vec<u8>> {
        loop {
            if let Some(n) = self.pending.pop_front() {
                return Ok(n);
            }
            // SAFETY: buf is valid for buf.len() bytes of writes.
            let k = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                )
            };
            if k < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("reading inotify events");
            }
            let k = k as usize;
            let head = std::mem::size_of::<libc::inotify_event>();
            let mut off = 0;
            while off + head <= k {
                // SAFETY: the kernel wrote a whole event header at off.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(self.buf.as_ptr().add(off).cast()) };
                let name = &self.buf[off + head..(off + head + ev.len as usize).min(k)];
                let name = name.split(|b| *b == 0).next().unwrap_or_default();
                if !name.is_empty() {
                    self.pending.push_back(name.to_vec());
                }
                off += head + ev.len as usize;
            }
        }
    }

    fn wait_for(&mut self, want: &[u8]) -> anyhow::Result<()> {
        loop {
            if self.next()? == want {
                return Ok(());
            }
        }
    }
}

fn raw_round_trips(dir: &Path, log: &Path, n: usize) -> anyhow::Result<Samples> {
    let ping = dir.join("ping");
    let pong = dir.join("pong");
    std::fs::create_dir_all(&ping)?;
    std::fs::create_dir_all(&pong)?;
    let mut ino = RawInotify::new(&pong)?;
    let args = [
        os("--peer"),
        os("raw-inotify"),
        os("--volume"),
        os(dir),
        os("--tasks"),
        os(n.to_string()),
    ];
    let mut peer = PeerProc::spawn("raw-inotify", &args, Stdio::null(), log)?;
    peer.wait_ready(&dir.join(PEER_READY))?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("f{i}");
        let t0 = Instant::now();
        File::create(ping.join(&name))?;
        ino.wait_for(name.as_bytes())?;
        samples.push(t0.elapsed());
    }
    peer.finish()?;
    Ok(Samples::new(samples))
}

fn peer_raw(dir: &Path, n: usize) -> anyhow::Result<()> {
    let ping = dir.join("ping");
    let pong = dir.join("pong");
    let mut ino = RawInotify::new(&ping)?;
    atomic::touch_atomic(&dir.join(PEER_READY))?;
    for _ in 0..n {
        let name = ino.next()?;
        File::create(pong.join(std::ffi::OsStr::from_bytes(&name)))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Per-task overhead.

/// A bare spawn-and-wait of `true`, `n` times.
fn spawn_true(n: usize) -> anyhow::Result<Samples> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let status = Command::new("true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot run `true`")?;
        samples.push(t0.elapsed());
        ensure!(status.success(), "`true` failed: {status}");
    }
    Ok(Samples::new(samples))
}

/// The entrypoint the phases through a serving sidecar use.
fn entrypoint(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    let explicit = args.entrypoint.clone().unwrap_or_default();
    Ok(executor_shim::provider::locate_entrypoint(&explicit)?)
}

/// A serving `sidecar-entrypoint` started by the shim's process provider.
fn start_sidecar(dir: &Path, entrypoint: &Path, command: &[&str]) -> anyhow::Result<Sidecar> {
    let provider = ProviderSpec {
        kind: Some(ProviderKind::Process),
        entrypoint: Some(entrypoint.to_owned()),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
    .build()?;
    Sidecar::start(dir, provider, SidecarOptions::default())
        .with_context(|| format!("cannot start a sidecar on {}", dir.display()))
}

/// The per-task overhead, measured in a child (`--peer overhead`) so the
/// sidecar it starts logs to the phase's log, not the terminal.
fn task_overhead(dir: &Path, log: &Path, n: usize, args: &BenchArgs) -> anyhow::Result<Samples> {
    let child_args = [
        os("--peer"),
        os("overhead"),
        os("--volume"),
        os(dir),
        os("--tasks"),
        os(n.to_string()),
        os("--entrypoint"),
        os(entrypoint(args)?),
    ];
    let out = PeerProc::spawn("overhead", &child_args, Stdio::piped(), log)?.finish()?;
    let line = last_line(&out.stdout, "overhead")?;
    let us: Vec<f64> = serde_json::from_str(&line)
        .with_context(|| format!("the overhead peer printed {line:?}"))?;
    Ok(Samples::new(
        us.into_iter()
            .map(|u| Duration::from_secs_f64(u / 1e6))
            .collect(),
    ))
}

/// `n` empty tasks through [`Sidecar::run_task`] against a serving sidecar
/// running `true`: staging, start flag, spawn, done flag, close flag, all
/// included. Prints the samples (µs) as one JSON array.
#[allow(clippy::result_large_err)] // the sink's error type is the client's
fn peer_overhead(dir: &Path, n: usize, args: &BenchArgs) -> anyhow::Result<()> {
    let sidecar = start_sidecar(dir, &entrypoint(args)?, &["true"])?;
    let schema = bench_schema();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        // `true` writes nothing: the overhead is what is measured.
        let request = TaskRequest {
            expect_output: false,
            ..TaskRequest::new(i as u64, 0)
        };
        let mut sink = |_b: RecordBatch| Ok(());
        let t0 = Instant::now();
        let report = sidecar
            .run_task(
                &request,
                schema.clone(),
                std::iter::empty(),
                None,
                &mut sink,
            )
            .with_context(|| format!("task {i}"))?;
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
        ensure!(
            report.outcome.succeeded(),
            "task {i}: `true` did not succeed: {:?}",
            report.outcome
        );
    }
    sidecar.shutdown()?;
    println!("{}", serde_json::to_string(&samples)?);
    Ok(())
}

fn last_line(stdout: &[u8], what: &str) -> anyhow::Result<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .last()
        .map(str::to_owned)
        .with_context(|| format!("the {what} peer printed no result"))
}

// ---------------------------------------------------------------------------
// Throughput data.

fn bench_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
        Field::new("name", DataType::Utf8, false),
    ]))
}

/// The generator: a few distinct batches cycled until about `size` bytes of
/// IPC stream are produced.
#[derive(Debug, Clone)]
struct Partition {
    schema: SchemaRef,
    pool: Vec<RecordBatch>,
    batches: usize,
}

impl Partition {
    fn new(size: u64) -> anyhow::Result<Self> {
        let schema = bench_schema();
        let mut pool = Vec::with_capacity(POOL);
        for k in 0..POOL {
            let base = (k * BATCH_ROWS) as i64;
            let ids: Vec<i64> = (0..BATCH_ROWS as i64).map(|i| base + i).collect();
            let values: Vec<f64> = ids.iter().map(|i| *i as f64 * 0.25).collect();
            let names: Vec<String> = ids
                .iter()
                .map(|i| format!("{:016x}", (*i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
                .collect();
            let cols: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(Float64Array::from(values)),
                Arc::new(StringArray::from(names)),
            ];
            pool.push(RecordBatch::try_new(schema.clone(), cols)?);
        }
        // The IPC size of one batch: a stream with it minus one without.
        let empty = ipc_len(&schema, &[])?;
        let one = ipc_len(&schema, &pool[..1])? - empty;
        let batches = (size.saturating_sub(empty)).div_ceil(one).max(1) as usize;
        Ok(Self {
            schema,
            pool,
            batches,
        })
    }

    fn rows(&self) -> u64 {
        (self.batches * BATCH_ROWS) as u64
    }

    fn iter(&self) -> impl Iterator<Item = RecordBatch> + Send + 'static {
        let pool = self.pool.clone();
        (0..self.batches).map(move |i| pool[i % pool.len()].clone())
    }
}

fn ipc_len(schema: &SchemaRef, batches: &[RecordBatch]) -> anyhow::Result<u64> {
    let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    Ok(w.into_inner()?.len() as u64)
}

/// The raw baseline: the IPC stream written to a file on the volume (1 MiB
/// buffered, as the shim writes), copied with `cp`, the copy read back and
/// decoded.
fn raw_copy(dir: &Path, size: u64) -> anyhow::Result<RawCopy> {
    let part = Partition::new(size)?;
    let src = dir.join("input.arrows");
    let dst = dir.join("copy.arrows");

    let t0 = Instant::now();
    let file = File::create(&src).with_context(|| format!("cannot create {}", src.display()))?;
    let mut w = arrow::ipc::writer::StreamWriter::try_new(
        BufWriter::with_capacity(1 << 20, file),
        &part.schema,
    )?;
    for b in part.iter() {
        w.write(&b)?;
    }
    w.finish()?;
    w.into_inner()?.flush()?;
    let write_secs = t0.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&src)?.len();

    let t1 = Instant::now();
    let status = Command::new("cp")
        .arg(&src)
        .arg(&dst)
        .status()
        .context("cannot run cp")?;
    ensure!(status.success(), "cp failed: {status}");
    let cp_secs = t1.elapsed().as_secs_f64();
    std::fs::remove_file(&src)?;

    let t2 = Instant::now();
    let file = File::open(&dst)?;
    let reader =
        arrow::ipc::reader::StreamReader::try_new(BufReader::with_capacity(1 << 20, file), None)?;
    let mut rows = 0u64;
    for b in reader {
        rows += b?.num_rows() as u64;
    }
    let read_secs = t2.elapsed().as_secs_f64();
    std::fs::remove_file(&dst)?;
    ensure!(
        rows == part.rows(),
        "the raw copy read back {rows} rows of {}",
        part.rows()
    );
    Ok(RawCopy {
        bytes,
        write_secs,
        cp_secs,
        read_secs,
    })
}

/// Runs one throughput mode in a child (whose peak RSS is the shim's).
fn throughput_child(
    dir: &Path,
    log: &Path,
    args: &BenchArgs,
    peer: Peer,
) -> anyhow::Result<Throughput> {
    let mode = match peer {
        Peer::ThroughputStream => "throughput-stream",
        _ => "throughput-file",
    };
    let child_args = [
        os("--peer"),
        os(mode),
        os("--volume"),
        os(dir),
        os("--size"),
        os(args.size.to_string()),
        os("--entrypoint"),
        os(entrypoint(args)?),
    ];
    let out = PeerProc::spawn(mode, &child_args, Stdio::piped(), log)?.finish()?;
    let line = last_line(&out.stdout, mode)?;
    serde_json::from_str(&line).with_context(|| format!("the {mode} peer printed {line:?}"))
}

/// The identity logic of the throughput phase.
const CAT: &str = r#"exec cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#;

/// The throughput child: one `--size` partition through a serving sidecar
/// running an identity `cat`; prints one JSON [`Throughput`] line.
#[allow(clippy::result_large_err)] // the sink's error type is the client's
fn peer_throughput(dir: &Path, args: &BenchArgs, stream: bool) -> anyhow::Result<()> {
    let part = Partition::new(args.size)?;
    let sidecar = start_sidecar(dir, &entrypoint(args)?, &["sh", "-c", CAT])?;
    let mut request = TaskRequest::new(0, 0);
    request.input_format = sidecar_core::Format::Arrows;
    request.stream = stream;
    request.batch_size = BATCH_ROWS;
    let mut rows = 0u64;
    let mut sink = |b: RecordBatch| {
        rows += b.num_rows() as u64;
        Ok(())
    };
    let t0 = Instant::now();
    let report = sidecar.run_task(
        &request,
        part.schema.clone(),
        part.iter().map(Ok),
        Some(part.schema.clone()),
        &mut sink,
    )?;
    let secs = t0.elapsed().as_secs_f64();
    ensure!(
        rows == part.rows() && report.rows_out == part.rows(),
        "the identity task returned {rows} rows of {}",
        part.rows()
    );
    sidecar.shutdown()?;
    let result = Throughput {
        bytes: report.bytes_in,
        rows,
        secs,
        peak_rss_kib: sidecar_core::procfs::peak_rss_kib()
            .context("/proc/self/status has no VmHWM line")?,
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

// ---------------------------------------------------------------------------
// Output.

/// One line of the table.
struct Row {
    figure: String,
    ours: String,
    baseline: String,
    ratio: String,
    target: String,
    met: Option<bool>,
}

fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

impl Report {
    fn rows(&self) -> Vec<Row> {
        let hs50 = self.handshake.p50();
        let hs99 = self.handshake.p99();
        let raw50 = self.inotify_raw.p50();
        let raw99 = self.inotify_raw.p99();
        let poll50 = self.poll.p50();
        let t50 = self.task_overhead.p50();
        let s50 = self.spawn_raw.p50();
        let raw_mb = self.raw.mb_s();
        let file_r = ratio(self.file.mb_s(), raw_mb);
        let stream_r = ratio(self.stream.mb_s(), raw_mb);
        let rss = self.peak_rss_mib();
        let gib = self.bytes >= (1 << 30);
        vec![
            Row {
                figure: format!("handshake p50 ({} round trips)", self.handshake.0.len()),
                ours: us(hs50),
                baseline: format!("{} bare inotify", us(raw50)),
                ratio: format!("{:.1}x", ratio(hs50, raw50)),
                target: "<= 5x".into(),
                met: Some(ratio(hs50, raw50) <= 5.0),
            },
            Row {
                figure: "handshake p99".into(),
                ours: us(hs99),
                baseline: format!("{} bare inotify", us(raw99)),
                ratio: format!("{:.1}x", ratio(hs99, raw99)),
                target: "< 2 ms".into(),
                met: Some(hs99 < 2000.0),
            },
            Row {
                figure: format!(
                    "handshake p50 vs polling ({} round trips)",
                    self.poll.0.len()
                ),
                ours: us(hs50),
                baseline: format!("{} polling 1 ms", us(poll50)),
                ratio: format!("{:.2}x", ratio(hs50, poll50)),
                target: "-".into(),
                met: None,
            },
            Row {
                figure: format!(
                    "per-task overhead p50 ({} tasks, `true`)",
                    self.task_overhead.0.len()
                ),
                ours: us(t50),
                baseline: format!("{} bare spawn", us(s50)),
                ratio: format!("{:.1}x", ratio(t50, s50)),
                target: "<= 3x".into(),
                met: Some(ratio(t50, s50) <= 3.0),
            },
            Row {
                figure: format!("file mode ({}, cat)", human_bytes(self.bytes)),
                ours: format!("{:.0} MB/s", self.file.mb_s()),
                baseline: format!("{raw_mb:.0} MB/s write+cp+read"),
                ratio: format!("{file_r:.2}x"),
                target: ">= 0.8x".into(),
                met: Some(file_r >= 0.8),
            },
            Row {
                figure: format!("stream mode ({}, cat)", human_bytes(self.bytes)),
                ours: format!("{:.0} MB/s", self.stream.mb_s()),
                baseline: format!("{raw_mb:.0} MB/s write+cp+read"),
                ratio: format!("{stream_r:.2}x"),
                target: ">= 1.0x".into(),
                met: Some(stream_r >= 1.0),
            },
            Row {
                figure: "shim peak RSS (throughput)".into(),
                ours: format!("{rss:.1} MiB"),
                baseline: "-".into(),
                ratio: "-".into(),
                target: if gib {
                    "< 128 MiB"
                } else {
                    "< 128 MiB at 1 GiB"
                }
                .into(),
                met: gib.then_some(rss < 128.0),
            },
        ]
    }

    fn peak_rss_mib(&self) -> f64 {
        self.file.peak_rss_kib.max(self.stream.peak_rss_kib) as f64 / 1024.0
    }

    fn table(&self) -> String {
        let header = ["figure", "ours", "baseline", "ratio", "target", "met?"];
        let rows: Vec<[String; 6]> = self
            .rows()
            .into_iter()
            .map(|r| {
                let met = match r.met {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "-",
                };
                [r.figure, r.ours, r.baseline, r.ratio, r.target, met.into()]
            })
            .collect();
        let mut width = header.map(|h| h.chars().count());
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(width).enumerate() {
                if i > 0 {
                    s.push_str(" | ");
                }
                s.push_str(c);
                s.push_str(&" ".repeat(w - c.chars().count()));
            }
            s.trim_end().to_owned() + "\n"
        };
        let mut out = format!(
            "executor-shim bench on {} ({})\n\n",
            self.volume.display(),
            self.fs
        );
        out.push_str(&line(&header.map(String::from)));
        let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&line(&rule).replace(" | ", "-|-"));
        for r in &rows {
            out.push_str(&line(r));
        }
        out.push_str(&format!(
            "\nraw copy: write {:.2} s, cp {:.2} s, read {:.2} s; file mode {:.2} s, stream mode {:.2} s\n",
            self.raw.write_secs, self.raw.cp_secs, self.raw.read_secs, self.file.secs, self.stream.secs
        ));
        out
    }

    fn json(&self) -> serde_json::Value {
        let raw_mb = self.raw.mb_s();
        let met: serde_json::Map<String, serde_json::Value> = self
            .rows()
            .iter()
            .zip([
                "handshake_p50",
                "handshake_p99",
                "poll",
                "task_overhead",
                "file_mode",
                "stream_mode",
                "shim_peak_rss",
            ])
            .filter_map(|(r, k)| r.met.map(|m| (k.to_owned(), m.into())))
            .collect();
        serde_json::json!({
            "handshake_p50_us": self.handshake.p50(),
            "handshake_p99_us": self.handshake.p99(),
            "inotify_raw_p50_us": self.inotify_raw.p50(),
            "inotify_raw_p99_us": self.inotify_raw.p99(),
            "poll_p50_us": self.poll.p50(),
            "poll_p99_us": self.poll.p99(),
            "handshake_ratio": ratio(self.handshake.p50(), self.inotify_raw.p50()),
            "task_overhead_p50_us": self.task_overhead.p50(),
            "task_overhead_p99_us": self.task_overhead.p99(),
            "spawn_raw_p50_us": self.spawn_raw.p50(),
            "spawn_raw_p99_us": self.spawn_raw.p99(),
            "task_overhead_ratio": ratio(self.task_overhead.p50(), self.spawn_raw.p50()),
            "file_mode_mb_s": self.file.mb_s(),
            "stream_mode_mb_s": self.stream.mb_s(),
            "raw_copy_mb_s": raw_mb,
            "file_mode_ratio": ratio(self.file.mb_s(), raw_mb),
            "stream_mode_ratio": ratio(self.stream.mb_s(), raw_mb),
            "shim_peak_rss_mib": self.peak_rss_mib(),
            "bytes": self.bytes,
            "handshake_tasks": self.handshake.0.len(),
            "poll_tasks": self.poll.0.len(),
            "overhead_tasks": self.task_overhead.0.len(),
            "volume": self.volume.display().to_string(),
            "fs": self.fs,
            "targets_met": met,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        let e = parse_size("12 parsecs").unwrap_err();
        assert!(e.contains("unknown unit"), "{e}");
        assert!(parse_size("0").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = Samples::new((1..=100).rev().map(Duration::from_micros).collect());
        assert_eq!(s.p50(), 50.0);
        assert_eq!(s.p99(), 99.0);
        assert_eq!(Samples::new(vec![Duration::from_micros(7)]).p99(), 7.0);
    }

    #[test]
    fn the_partition_is_about_the_size_asked() {
        let p = Partition::new(16 << 20).unwrap();
        let bytes = ipc_len(&p.schema, &p.iter().collect::<Vec<_>>()).unwrap();
        assert!(bytes >= 16 << 20, "{bytes}");
        assert!(bytes < (16 << 20) + (3 << 20), "{bytes}");
    }
}
