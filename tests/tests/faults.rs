//! The fault-injection suite.
//!
//! Every trial runs a victim task (and a bystander task beside it) through a
//! real sidecar and, at a random moment, injects one fault:
//!
//! | kind         | what                                                   |
//! |--------------|--------------------------------------------------------|
//! | `logic`      | SIGKILL the victim's user logic (the sidecar's child)  |
//! | `grandchild` | SIGKILL the worker process the logic started           |
//! | `entrypoint` | SIGKILL `sidecar-entrypoint`                           |
//! | `sigstop`    | SIGSTOP `sidecar-entrypoint`: hung, not dead           |
//! | `shim`       | SIGKILL the executor process embedding the shim        |
//!
//! Invariants, checked every trial:
//!
//! 1. the executor side returns within its bound (the logic's end plus
//!    slack; `stale_after` + 5 s for a dead or hung sidecar), never hangs;
//! 2. its error says what happened (task failed by a signal / exit code;
//!    sidecar exited; sidecar unresponsive);
//! 3. no incomplete output is accepted: a task that returns `Ok` delivered
//!    exactly its input's rows;
//! 4. the sidecar keeps serving other tasks when only a task died: the
//!    bystander succeeds and the sidecar is the same process;
//! 5. no process is left behind (none mentions the trial's scratch dir, a
//!    dead executor's sidecar exits within lease_timeout + grace + 5 s);
//! 6. a retried attempt succeeds.
//!
//! `SIDECAR_FAULT_TRIALS` (default 200) sets the trial count,
//! `SIDECAR_FAULT_WORKERS` (default 4) how many run at once (each with its
//! own volume and sidecar), `SIDECAR_FAULT_SEED` the random seed,
//! `SIDECAR_FAULT_STALE_MS` (default 3000) when a silent heartbeat means a
//! hung sidecar. The counts are printed at the end, with the longest stall
//! this process saw (a host that stalls for longer than the liveness bounds
//! makes a live peer look dead); the test fails on any violation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use executor_shim::provider::{Provider, Sidecar, SidecarOptions};
use executor_shim::{ShimError, TaskRequest};
use rand::{Rng, SeedableRng};
use sidecar_core::Format;

use common::Scratch;

const HEARTBEAT: Duration = Duration::from_millis(100);
/// The liveness bounds (the executor's lease here, the sidecar's heartbeat
/// in [`stale_after`]) are a few seconds, below the product's defaults
/// (10 s and 5 s) but far above a heartbeat interval: a shared CI host that
/// stalls a process for a second must not make a live peer look dead.
const LEASE_TIMEOUT: Duration = Duration::from_secs(3);
const GRACE: Duration = Duration::from_millis(200);
const ROWS: usize = 200;
/// How long after a fault the executor side may take, beyond the product's
/// own bound, on a loaded machine.
const SLACK: Duration = Duration::from_secs(5);
/// A task that has not returned after this long is hung.
const HANG: Duration = Duration::from_secs(60);
const CHILD_ENV: &str = "SIDECAR_E2E_EXECUTOR_CHILD";

/// When `sidecar-entrypoint` is SIGKILLed outside a PID namespace (the
/// process provider), its logic's process groups outlive it unless the
/// executor side kills them (it does, when it sees the sidecar exit). Left
/// behind, a stream-mode logic blocked opening a FIFO whose other end is
/// gone would live forever. Such trials are violations; set
/// `SIDECAR_FAULT_STRICT=0` to count them apart instead.
const KNOWN_ORPHANS: &str = "orphans of a SIGKILLed entrypoint";

fn strict() -> bool {
    std::env::var_os("SIDECAR_FAULT_STRICT").is_none_or(|v| v != "0")
}

fn stale_after() -> Duration {
    Duration::from_millis(common::env_count("SIDECAR_FAULT_STALE_MS", 3000) as u64)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Logic,
    Grandchild,
    Entrypoint,
    Sigstop,
    Shim,
}

const KINDS: [Kind; 5] = [
    Kind::Logic,
    Kind::Grandchild,
    Kind::Entrypoint,
    Kind::Sigstop,
    Kind::Shim,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Logic => "logic",
            Kind::Grandchild => "grandchild",
            Kind::Entrypoint => "entrypoint",
            Kind::Sigstop => "sigstop",
            Kind::Shim => "shim",
        }
    }
}

/// The user logic: records its pid, waits a little, then has a worker
/// (the grandchild) copy the input to the output in two halves with a pause
/// between them, so a kill can land mid-write and leave a partial file. It
/// exits with the worker's status.
const LOGIC: &str = r#"echo $$ > "$SIDECAR_TASK_DIR/.logic.pid"
sleep "$D1"
awk -v d="$D2" -v h=100 '{ print } NR == h { fflush(); system("sleep " d) }' "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT" &
echo $! > "$SIDECAR_TASK_DIR/.worker.pid"
wait $!
"#;

fn options() -> SidecarOptions {
    SidecarOptions {
        parallel: Some(4),
        ready_timeout: Duration::from_secs(30),
        heartbeat: HEARTBEAT,
        stale_after: stale_after(),
        lease_interval: HEARTBEAT,
        lease_timeout: LEASE_TIMEOUT,
        task_timeout: Some(Duration::from_secs(45)),
        grace: Some(GRACE),
        log_filter: Some("warn".into()),
        ..Default::default()
    }
}

fn provider(logic: &Path) -> Provider {
    common::process_provider(vec!["/bin/sh".into(), logic.display().to_string()])
}

fn request(partition: u64, attempt: u32, stream: bool, rng: &mut impl Rng) -> TaskRequest {
    let mut r = TaskRequest::new(partition, attempt);
    r.input_format = Format::Csv;
    r.stream = stream;
    r.timeout = Some(Duration::from_secs(45));
    let d = |rng: &mut dyn rand::RngCore| format!("0.{:03}", rng.random_range(0..150));
    r.env = BTreeMap::from([("D1".into(), d(rng)), ("D2".into(), d(rng))]);
    r
}

/// Runs one task; `Ok` only with exactly the input's rows (invariant 3 is
/// checked by the caller on the returned batches).
fn run(
    sidecar: &Sidecar,
    req: &TaskRequest,
    salt: u64,
) -> (Result<RecordBatch, ShimError>, Instant) {
    let r = common::run_batch(sidecar, req, common::batch(ROWS, salt));
    (r, Instant::now())
}

/// Whether `got` is exactly the rows staged with `salt`.
fn complete(got: &RecordBatch, salt: u64) -> bool {
    *got == common::batch(ROWS, salt)
}

#[derive(Debug, Default)]
struct Tally {
    trials: usize,
    by_kind: BTreeMap<&'static str, usize>,
    /// The fault landed while the victim ran.
    injected: BTreeMap<&'static str, usize>,
    /// The victim finished before the chosen moment: nothing injected.
    missed: BTreeMap<&'static str, usize>,
    /// Injected, yet the victim succeeded (complete output): the fault came
    /// after the outcome was recorded.
    survived: BTreeMap<&'static str, usize>,
    stream_trials: usize,
    retries_ok: usize,
    violations: Vec<String>,
    /// Trials that hit [`KNOWN_ORPHANS`] (violations when strict).
    known_orphans: usize,
    max_return: BTreeMap<&'static str, Duration>,
}

impl Tally {
    fn violation(&mut self, trial: usize, kind: Kind, what: String) {
        eprintln!("VIOLATION trial {trial} ({}): {what}", kind.name());
        self.violations
            .push(format!("trial {trial} ({}): {what}", kind.name()));
    }
}

/// Whether `pid` is a live process of task `id` (`SIDECAR_TASK_ID=<id>` in
/// its environment): pids are reused, so a pid file alone is not enough.
fn is_task_process(pid: i32, id: &str) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let needle = format!("SIDECAR_TASK_ID={id}");
    env.split(|b| *b == 0).any(|e| e == needle.as_bytes())
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid we read from our own process table; at worst ESRCH.
    unsafe { libc::kill(pid, sig) };
}

/// Measures the longest this process went unscheduled: a thread sleeps
/// 10 ms at a time and records the largest overshoot.
struct StallMeter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Duration>>,
}

impl StallMeter {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let tick = Duration::from_millis(10);
            let mut worst = Duration::ZERO;
            while !s.load(Ordering::SeqCst) {
                let t0 = Instant::now();
                std::thread::sleep(tick);
                worst = worst.max(t0.elapsed().saturating_sub(tick));
            }
            worst
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the meter; the longest stall seen.
    fn finish(mut self) -> Duration {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default()
    }
}

/// One worker: its own scratch dir, logic and long-lived sidecar.
struct Worker {
    id: usize,
    scratch: Scratch,
    logic: PathBuf,
    volume: PathBuf,
    sidecar: Option<Sidecar>,
    rng: rand::rngs::StdRng,
}

impl Worker {
    fn new(id: usize, seed: u64) -> Self {
        let scratch = Scratch::new(&format!("fault{id}"));
        let logic = scratch.script("logic.sh", LOGIC);
        let volume = scratch.volume("main");
        let mut w = Self {
            id,
            scratch,
            logic,
            volume,
            sidecar: None,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        };
        w.restart();
        w
    }

    fn restart(&mut self) {
        self.sidecar = None;
        self.sidecar = Some(
            Sidecar::start(&self.volume, provider(&self.logic), options())
                .unwrap_or_else(|e| panic!("worker {}: cannot start the sidecar: {e}", self.id)),
        );
    }

    fn sidecar(&self) -> &Sidecar {
        self.sidecar.as_ref().unwrap()
    }

    fn sidecar_pid(&self) -> i32 {
        self.sidecar().ready().pid as i32
    }

    /// Processes of this worker other than its current sidecar, after
    /// waiting up to `limit` for them to go.
    fn leftovers(&self, limit: Duration) -> Vec<(i32, String)> {
        let keep = self.sidecar.as_ref().map(|s| s.ready().pid as i32);
        let until = Instant::now() + limit;
        loop {
            let left: Vec<_> = self
                .scratch
                .leftovers()
                .into_iter()
                .filter(|(p, _)| Some(*p) != keep)
                .collect();
            if left.is_empty() || Instant::now() >= until {
                return left;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn trial(&mut self, n: usize, kind: Kind, tally: &Mutex<Tally>) {
        let stream = kind != Kind::Shim && self.rng.random_bool(0.25);
        let delay = Duration::from_millis(self.rng.random_range(0..300));
        {
            let mut t = tally.lock().unwrap();
            t.trials += 1;
            *t.by_kind.entry(kind.name()).or_default() += 1;
            t.stream_trials += usize::from(stream);
        }
        let partition = (self.id * 1_000_000 + n) as u64;
        let victim_salt = self.rng.random::<u64>();
        let by_salt = self.rng.random::<u64>();
        let victim_req = request(partition, 0, stream, &mut self.rng);
        let by_req = request(partition + 500_000, 0, stream, &mut self.rng);
        let retry_req = request(partition, 1, stream, &mut self.rng);
        let mut v = Vec::new();
        let viol = |v: &mut Vec<String>, s: String| v.push(s);

        if kind == Kind::Shim {
            self.shim_trial(n, partition, delay, &mut v, tally);
        } else {
            let before_pid = self.sidecar_pid();
            let victim_id = victim_req.task_id().to_string();
            let done = AtomicBool::new(false);
            let mut fault_at: Option<Instant> = None;
            let mut injected = false;
            let sidecar = self.sidecar.as_ref().unwrap();
            let task_dir = sidecar
                .volume()
                .task(&victim_req.task_id())
                .root()
                .to_owned();
            let ((victim, v_end), (by, _)) = std::thread::scope(|s| {
                let by = s.spawn(|| run(sidecar, &by_req, by_salt));
                let vt = s.spawn(|| {
                    let r = run(sidecar, &victim_req, victim_salt);
                    done.store(true, Ordering::SeqCst);
                    r
                });
                let start = Instant::now();
                while start.elapsed() < delay && !done.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(2));
                }
                // The chosen moment. Logic-level targets may not exist yet
                // (still staging): take the first moment they do.
                while !done.load(Ordering::SeqCst) {
                    let pid = match kind {
                        Kind::Logic => read_pid(&task_dir.join(".logic.pid")),
                        Kind::Grandchild => read_pid(&task_dir.join(".worker.pid")),
                        _ => Some(before_pid),
                    };
                    if let Some(pid) = pid {
                        let sig = if kind == Kind::Sigstop {
                            libc::SIGSTOP
                        } else {
                            libc::SIGKILL
                        };
                        // A task's process only (pids are reused): one
                        // that is gone means the task is finishing.
                        let ours = matches!(kind, Kind::Entrypoint | Kind::Sigstop)
                            || is_task_process(pid, &victim_id);
                        if !ours {
                            break;
                        }
                        signal(pid, sig);
                        injected = true;
                        fault_at = Some(Instant::now());
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                // Watchdog: a hang is a violation, reported with the state.
                let watch_from = Instant::now();
                while !(vt.is_finished() && by.is_finished()) {
                    if watch_from.elapsed() > HANG {
                        panic!(
                            "trial {n} ({}): the executor side hung for {HANG:?}",
                            kind.name()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                (vt.join().unwrap(), by.join().unwrap())
            });
            if kind == Kind::Sigstop && injected {
                signal(before_pid, libc::SIGCONT);
            }
            {
                let mut t = tally.lock().unwrap();
                let e = if injected {
                    &mut t.injected
                } else {
                    &mut t.missed
                };
                *e.entry(kind.name()).or_default() += 1;
            }
            // 1 + 2: bound and the error's meaning.
            let bound = match kind {
                Kind::Logic | Kind::Grandchild => GRACE + SLACK,
                _ => stale_after() + SLACK,
            };
            match (&victim, fault_at) {
                (Ok(got), _) => {
                    if !complete(got, victim_salt) {
                        viol(
                            &mut v,
                            format!("incomplete output accepted: {} rows", got.num_rows()),
                        );
                    }
                    if injected {
                        *tally
                            .lock()
                            .unwrap()
                            .survived
                            .entry(kind.name())
                            .or_default() += 1;
                    }
                }
                (Err(e), at) => {
                    if let Some(at) = at {
                        let took = v_end.saturating_duration_since(at);
                        let mut t = tally.lock().unwrap();
                        let m = t.max_return.entry(kind.name()).or_default();
                        *m = (*m).max(took);
                        drop(t);
                        if took > bound {
                            viol(
                                &mut v,
                                format!("returned {took:?} after the fault (bound {bound:?}): {e}"),
                            );
                        }
                    }
                    if !injected {
                        viol(&mut v, format!("failed without a fault: {e}"));
                    } else if let Some(why) = misexplained(kind, e) {
                        viol(&mut v, why);
                    }
                }
            }
            // 4: the bystander.
            match &by {
                Ok(got) if !complete(got, by_salt) => viol(
                    &mut v,
                    format!(
                        "bystander: incomplete output accepted: {} rows",
                        got.num_rows()
                    ),
                ),
                Ok(_) => {}
                Err(e) if matches!(kind, Kind::Logic | Kind::Grandchild) => viol(
                    &mut v,
                    format!("bystander failed when only a task died: {e}"),
                ),
                Err(e) if !e.is_sidecar_failure() => viol(
                    &mut v,
                    format!("bystander failed with a non-sidecar error: {e}"),
                ),
                Err(_) => {}
            }
            if matches!(kind, Kind::Logic | Kind::Grandchild) {
                let alive = common::processes_mentioning(&self.scratch.marker())
                    .iter()
                    .any(|(p, _)| *p == before_pid);
                if !alive {
                    viol(&mut v, "the sidecar died when only a task did".into());
                }
            }
            // 6: the retry. A dead sidecar is replaced (as an executor
            // would); a hung one was resumed above.
            if kind == Kind::Entrypoint {
                self.restart();
            }
            match run(self.sidecar(), &retry_req, victim_salt).0 {
                Ok(got) if complete(&got, victim_salt) => tally.lock().unwrap().retries_ok += 1,
                Ok(got) => viol(
                    &mut v,
                    format!("retry: incomplete output accepted: {} rows", got.num_rows()),
                ),
                Err(e) => viol(&mut v, format!("retry failed: {e}")),
            }
            if matches!(kind, Kind::Logic | Kind::Grandchild) && self.sidecar_pid() != before_pid {
                viol(&mut v, "the sidecar changed".into());
            }
            // 5: nothing left behind but the serving sidecar.
            let left = self.leftovers(SLACK);
            if !left.is_empty() {
                let what = format!("processes left behind (stream mode: {stream}): {left:?}");
                if kind == Kind::Entrypoint && !strict() {
                    // Counted apart only when not strict: see `KNOWN_ORPHANS`.
                    eprintln!("KNOWN ISSUE trial {n} (entrypoint): {what}");
                    tally.lock().unwrap().known_orphans += 1;
                } else {
                    viol(&mut v, what);
                }
                for (p, _) in left {
                    signal(p, libc::SIGKILL);
                }
            }
        }
        let mut t = tally.lock().unwrap();
        for what in v {
            t.violation(n, kind, what);
        }
    }

    /// SIGKILL the executor (a child process running the shim) at a random
    /// moment; its sidecar must notice the stale lease and exit, leaving
    /// nothing; a new executor on the same volume succeeds.
    fn shim_trial(
        &mut self,
        n: usize,
        partition: u64,
        delay: Duration,
        v: &mut Vec<String>,
        tally: &Mutex<Tally>,
    ) {
        let vol = self.scratch.volume(&format!("shim{n}"));
        let salt = self.rng.random::<u64>();
        let d1 = self.rng.random_range(0..150);
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "executor_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CHILD_ENV,
                format!(
                    "{}\t{}\t{partition}\t{salt}\t{d1}",
                    vol.display(),
                    self.logic.display()
                ),
            )
            .env("SIDECAR_TEST_NO_BUILD", "1")
            .env("SIDECAR_ENTRYPOINT", common::entrypoint())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let mut exited = None;
        while start.elapsed() < delay {
            if let Some(st) = child.try_wait().unwrap() {
                exited = Some(st);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let injected = exited.is_none();
        if injected {
            let _ = child.kill();
        }
        // Reaps it (a no-op when try_wait already did).
        let _ = child.wait();
        {
            let mut t = tally.lock().unwrap();
            let e = if injected {
                &mut t.injected
            } else {
                &mut t.missed
            };
            *e.entry(Kind::Shim.name()).or_default() += 1;
        }
        if let Some(st) = exited {
            if !st.success() {
                v.push(format!("the executor failed without a fault: {st}"));
            }
        }
        // 5: the orphaned sidecar and its logic go, within the lease bound.
        let bound = LEASE_TIMEOUT + GRACE + SLACK;
        let killed_at = Instant::now();
        let needle = vol.display().to_string();
        let left = loop {
            let left = common::processes_mentioning(&needle);
            if left.is_empty() || killed_at.elapsed() > bound {
                break left;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = killed_at.elapsed();
        {
            let mut t = tally.lock().unwrap();
            let m = t.max_return.entry(Kind::Shim.name()).or_default();
            *m = (*m).max(took);
        }
        if !left.is_empty() {
            v.push(format!(
                "the dead executor's processes outlived it by {bound:?}: {left:?}"
            ));
            for (p, _) in left {
                signal(p, libc::SIGKILL);
            }
        }
        // 6: a new executor on the same volume.
        let retry = (|| {
            let sc = Sidecar::start(&vol, provider(&self.logic), options())?;
            let req = request(partition, 1, false, &mut self.rng);
            let (r, _) = run(&sc, &req, salt);
            sc.shutdown()?;
            r
        })();
        match retry {
            Ok(got) if complete(&got, salt) => tally.lock().unwrap().retries_ok += 1,
            Ok(got) => v.push(format!(
                "retry: incomplete output accepted: {} rows",
                got.num_rows()
            )),
            Err(e) => v.push(format!("retry after the executor died failed: {e}")),
        }
        let left = common::processes_mentioning(&needle);
        if !left.is_empty() {
            v.push(format!("processes left after the retry: {left:?}"));
        }
        let _ = std::fs::remove_dir_all(&vol);
    }
}

/// `Some(why)` when the error does not say what happened.
fn misexplained(kind: Kind, e: &ShimError) -> Option<String> {
    let text = e.to_string();
    let ok = match kind {
        Kind::Logic => {
            matches!(
                e,
                ShimError::TaskFailed {
                    signal: Some(9),
                    ..
                }
            ) && text.contains("signal 9")
        }
        Kind::Grandchild => {
            matches!(
                e,
                ShimError::TaskFailed {
                    exit_code: Some(137),
                    ..
                }
            ) && text.contains("exit code 137")
        }
        Kind::Entrypoint => matches!(
            e,
            ShimError::SidecarExited { .. } | ShimError::SidecarUnresponsive { .. }
        ),
        Kind::Sigstop => {
            matches!(e, ShimError::SidecarUnresponsive { .. }) && text.contains("heartbeat")
        }
        Kind::Shim => true,
    };
    (!ok).then(|| {
        format!(
            "the error does not say what happened ({:?} fault): {text}",
            kind
        )
    })
}

/// The executor process of `shim` trials: not a test on its own (it returns
/// at once unless the suite starts it with its environment variable set).
#[test]
fn executor_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let f: Vec<&str> = spec.split('\t').collect();
    let (vol, logic) = (Path::new(f[0]), Path::new(f[1]));
    let partition: u64 = f[2].parse().unwrap();
    let salt: u64 = f[3].parse().unwrap();
    let d1: u64 = f[4].parse().unwrap();
    let sc = Sidecar::start(vol, provider(logic), options()).unwrap();
    let mut req = TaskRequest::new(partition, 0);
    req.input_format = Format::Csv;
    req.env = BTreeMap::from([
        ("D1".into(), format!("0.{d1:03}")),
        ("D2".into(), "0.050".into()),
    ]);
    let (r, _) = run(&sc, &req, salt);
    assert!(complete(&r.unwrap(), salt));
    sc.shutdown().unwrap();
}

#[test]
fn fault_injection_suite() {
    let trials = common::env_count("SIDECAR_FAULT_TRIALS", 200);
    let workers = common::env_count("SIDECAR_FAULT_WORKERS", 4).max(1);
    let seed = std::env::var("SIDECAR_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    eprintln!("fault suite: {trials} trials, {workers} workers, seed {seed}");
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let stalls = StallMeter::start();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let tally = Arc::clone(&tally);
            let next = Arc::clone(&next);
            std::thread::spawn(move || {
                let mut worker = Worker::new(w, seed.wrapping_add(w as u64));
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= trials {
                        break;
                    }
                    // Round-robin over the kinds keeps the counts even.
                    let kind = KINDS[n % KINDS.len()];
                    let t0 = Instant::now();
                    worker.trial(n, kind, &tally);
                    if std::env::var_os("SIDECAR_FAULT_VERBOSE").is_some() {
                        eprintln!("trial {n} ({}) took {:.2?}", kind.name(), t0.elapsed());
                    }
                }
                if let Some(sc) = worker.sidecar.take() {
                    if let Err(e) = sc.shutdown() {
                        tally.lock().unwrap().violations.push(format!(
                            "worker {w}: the sidecar did not shut down cleanly: {e}"
                        ));
                    }
                }
                let left = worker.scratch.wait_no_leftovers(SLACK);
                if !left.is_empty() {
                    tally
                        .lock()
                        .unwrap()
                        .violations
                        .push(format!("worker {w}: processes left at the end: {left:?}"));
                }
            })
        })
        .collect();
    let joined: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
    let stall = stalls.finish();
    eprintln!(
        "longest stall of this process: {stall:.2?} (liveness bounds: lease {LEASE_TIMEOUT:?}, heartbeat {:?})",
        stale_after()
    );
    for j in joined {
        j.expect("a worker panicked (a hang or a harness failure; see above)");
    }
    let t = tally.lock().unwrap();
    eprintln!("---- fault-injection summary ----");
    eprintln!(
        "trials:            {} ({} in stream mode) in {:.1?}",
        t.trials,
        t.stream_trials,
        started.elapsed()
    );
    for k in KINDS {
        let get = |m: &BTreeMap<&str, usize>| m.get(k.name()).copied().unwrap_or(0);
        eprintln!(
            "  {:<11} {:>5} trials: {:>5} injected while running ({} of them after the outcome was recorded), {:>4} missed (task done first); slowest return after the fault {:.2?}",
            k.name(),
            get(&t.by_kind),
            get(&t.injected),
            get(&t.survived),
            get(&t.missed),
            t.max_return.get(k.name()).copied().unwrap_or_default(),
        );
    }
    eprintln!("retries succeeded: {}", t.retries_ok);
    eprintln!(
        "{KNOWN_ORPHANS} (violations unless SIDECAR_FAULT_STRICT=0): {} trials",
        t.known_orphans
    );
    eprintln!("invariant violations: {}", t.violations.len());
    for v in &t.violations {
        eprintln!("  {v}");
    }
    assert!(
        t.violations.is_empty(),
        "{} invariant violations (longest stall of this process: {stall:.2?})",
        t.violations.len()
    );
    assert_eq!(t.trials, trials);
    assert_eq!(t.retries_ok, trials, "every trial's retry succeeded");
}

/// The deterministic form of [`KNOWN_ORPHANS`]: SIGKILL the entrypoint
/// while its logic (and the logic's child) would run for a minute; nothing
/// of the task may survive the executor noticing.
#[test]
fn a_killed_entrypoint_leaves_no_logic_behind() {
    let s = Scratch::new("epkill");
    let logic = s.script("long.sh", "sleep 60 & wait");
    let vol = s.volume("v");
    let sc = Sidecar::start(&vol, provider(&logic), options()).unwrap();
    let pid = sc.ready().pid as i32;
    let input = common::batch(1, 1);
    let schema = input.schema();
    let mut req = TaskRequest::new(0, 0);
    req.input_format = Format::Csv;
    let ((r, _), _) = common::within("killed entrypoint", HANG, move || {
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            signal(pid, libc::SIGKILL);
        });
        let r = sc.run_task(&req, schema, std::iter::once(Ok(input)), None, &mut |_| {
            Ok(())
        });
        killer.join().unwrap();
        drop(sc);
        (r.map(|_| ()), ())
    });
    let e = r.expect_err("the task survived its sidecar");
    assert!(e.is_sidecar_failure(), "{e}");
    let left = s.wait_no_leftovers(SLACK);
    assert!(left.is_empty(), "left behind: {left:?}");
}
