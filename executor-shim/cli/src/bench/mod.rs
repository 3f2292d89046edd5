//! `executor-shim bench`: this machine's handshake latency, per-task
//! overhead, throughput under load, cost as task directories pile up, and
//! data throughput, each beside a raw baseline measured the same way in the
//! same run, on the user's own volume.
//!
//! ## What is measured
//!
//! | figure | how | baseline |
//! |---|---|---|
//! | handshake | start flag written -> a sidecar-side peer process sees it, a no-op handler runs, the done flag is written -> this process sees and parses it; the product's own protocol code on both sides: the entrypoint's driver and file-backed flags ([`sidecar_core::protocol::drive`], [`sidecar_core::files::FileFlags`]) on a tokio runtime, and the shim's [`sidecar_core::files::ExecutorFlags`] and [`sidecar_core::wait::Watch`] | the same round trip through bare inotify (create a file, the peer sees it and creates a reply, we see the reply); and the same protocol with the polling fallback at 1 ms |
//! | per-task overhead | one empty task through a serving `sidecar-entrypoint` running `true` (staging, spawn, flags and clean-up included) | `true` spawned and waited for by this process |
//! | load | tasks per second through one sidecar at `--parallel 1, 2, 8`, as many threads submitting | bare spawns of `true` at the same concurrency |
//! | growth | the per-task overhead with 10, 1,000 and 10,000 staged, never-started task directories on the volume | the same with 10 |
//! | throughput | `--size` bytes of Arrow data through an identity `cat`, in file mode and in stream mode (FIFOs) | the same bytes written to a file on the volume, copied with `cp`, read back |
//! | peak RSS | `VmHWM` of the shim process during the throughput phase | — |
//!
//! ## Theory of operation
//!
//! A figure is taken in `--rounds` interleaved rounds: ours, baseline, then
//! baseline, ours, and so on, so a noisy moment of a shared machine lands
//! on both sides, and is reported as the median of the per-round ratios
//! with their spread. Every latency needs two processes, so the bench runs
//! itself again ([`std::env::current_exe`]) with a hidden `--peer` flag as
//! the other side ([`peers`]); the phases through a sidecar run the shim in
//! a child too, so the sidecar's log goes to the phase's log file, and the
//! throughput child's `VmHWM` is exactly the shim's peak. Every child asks
//! the kernel to kill it when the bench dies, and the bench kills what it
//! started on every error path, so no peer outlives a run.

mod handshake;
mod peers;
mod report;
mod stats;
mod tasks;
mod throughput;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context};
use sidecar_core::wait::{WatchConfig, WatchMode};

use crate::Done;
use report::{human_bytes, us, Paired, Report};
use stats::Samples;

/// How long any single wait of the bench may take before it is an error.
const STEP_DEADLINE: Duration = Duration::from_secs(60);
/// The poll interval of the polling baseline.
const POLL_INTERVAL: Duration = Duration::from_millis(1);
/// The file a peer writes once it is armed.
const PEER_READY: &str = "peer-ready";
/// The `--parallel` settings of the load figure.
const LOAD_PARALLEL: [u32; 3] = [1, 2, 8];
/// The idle task directories present in the growth figure; the first is
/// the baseline.
const GROWTH_DIRS: [usize; 3] = [10, 1_000, 10_000];

/// `executor-shim bench`: measures this machine's handshake latency,
/// per-task overhead, load, growth and throughput against raw baselines in
/// one run.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// The volume to measure on; a unique subdirectory is made in it and
    /// removed at the end [default: a fresh directory under /dev/shm, else
    /// the system temporary directory]
    #[arg(long, value_name = "DIR")]
    pub volume: Option<PathBuf>,
    /// Bytes of Arrow data for the throughput phase, per round (suffixes K,
    /// M, G, KiB, MiB, GiB, KB, MB, GB)
    #[arg(long, value_name = "BYTES", default_value = "1GiB", value_parser = parse_size)]
    pub size: u64,
    /// Handshake round trips, over all rounds
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub tasks: usize,
    /// Interleaved rounds of every figure
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Tasks through the serving sidecar for the per-task overhead, over all
    /// rounds [default: 3/20 of --tasks, at least 10]
    #[arg(long, value_name = "N")]
    pub overhead_tasks: Option<usize>,
    /// Round trips of the polling baseline [default: 1/4 of --tasks, at least 10]
    #[arg(long, value_name = "N")]
    pub poll_tasks: Option<usize>,
    /// Tasks per round at each --parallel of the load figure
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub load_tasks: usize,
    /// Tasks per round at each directory count of the growth figure
    #[arg(long, value_name = "N", default_value_t = 40)]
    pub growth_tasks: usize,
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
    /// Internal: the load peer's concurrency.
    #[arg(long, hide = true, default_value_t = 1)]
    pub peer_parallel: u32,
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
    /// The shim, running empty tasks from many threads.
    Load,
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
        run_peer(peer, &args)?;
        return Ok(Done::Success);
    }
    let report = measure(&args)?;
    let table = report.table() + "\n" + &report::times_line(&report);
    if args.json {
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    println!("{}", report.json());
    Ok(Done::Success)
}

fn run_peer(peer: Peer, args: &BenchArgs) -> anyhow::Result<()> {
    peers::die_with_parent();
    let dir = args
        .volume
        .clone()
        .context("--peer needs --volume (it is an internal flag of `bench`)")?;
    match peer {
        Peer::Noop => handshake::peer_noop(&dir, args.tasks, watch_config(args.peer_poll)),
        Peer::RawInotify => handshake::peer_raw(&dir, args.tasks),
        Peer::Overhead => tasks::peer_overhead(&dir, args.tasks, args),
        Peer::Load => tasks::peer_load(&dir, args.tasks, args.peer_parallel, args),
        Peer::ThroughputFile => throughput::peer_throughput(&dir, args, false),
        Peer::ThroughputStream => throughput::peer_throughput(&dir, args, true),
    }
}

/// How much of each figure one round takes.
#[derive(Debug, Clone, Copy)]
struct Plan {
    rounds: usize,
    handshake: usize,
    overhead: usize,
    poll: usize,
    load: usize,
    growth: usize,
}

impl Plan {
    fn of(args: &BenchArgs) -> anyhow::Result<Self> {
        ensure!(args.tasks > 0, "--tasks must be at least 1");
        ensure!(args.load_tasks > 0, "--load-tasks must be at least 1");
        ensure!(args.growth_tasks > 0, "--growth-tasks must be at least 1");
        let rounds = args.rounds as usize;
        let total_overhead = args.overhead_tasks.unwrap_or((args.tasks * 3 / 20).max(10));
        Ok(Self {
            rounds,
            handshake: args.tasks.div_ceil(rounds),
            overhead: total_overhead.div_ceil(rounds),
            poll: args.poll_tasks.unwrap_or((args.tasks / 4).max(10)),
            load: args.load_tasks,
            growth: args.growth_tasks,
        })
    }
}

/// Runs `ours` and `base` in the order the round calls for: even rounds
/// ours first, odd rounds the baseline first.
fn pair<A, B>(
    round: usize,
    ours: impl FnOnce() -> anyhow::Result<A>,
    base: impl FnOnce() -> anyhow::Result<B>,
) -> anyhow::Result<(A, B)> {
    if round.is_multiple_of(2) {
        let o = ours()?;
        Ok((o, base()?))
    } else {
        let b = base()?;
        Ok((ours()?, b))
    }
}

fn push<T>(p: &mut Paired<T>, (ours, base): (T, T)) {
    p.ours.push(ours);
    p.base.push(base);
}

fn measure(args: &BenchArgs) -> anyhow::Result<Report> {
    let plan = Plan::of(args)?;
    let scratch = Scratch::new(args.volume.as_deref())?;
    let mut r = Report {
        fs: fs_type(&scratch.root),
        volume: scratch.root.clone(),
        rounds: plan.rounds,
        load: LOAD_PARALLEL.map(|c| (c, Paired::default())).to_vec(),
        growth: GROWTH_DIRS.map(|d| (d, Vec::new())).to_vec(),
        ..Default::default()
    };
    say(&format!("volume {} ({})", r.volume.display(), r.fs));
    let growth = growth_volumes(&scratch)?;
    for round in 0..plan.rounds {
        say(&format!("round {} of {}", round + 1, plan.rounds));
        let dir = scratch.sub(&format!("round-{round}"))?;
        latency_round(&mut r, &scratch, &dir, &plan, args, round)?;
        load_round(&mut r, &scratch, &dir, &plan, args, round)?;
        growth_round(&mut r, &scratch, &growth, &plan, args)?;
        throughput_round(&mut r, &scratch, &dir, args, round)?;
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    say(&format!("polling baseline: {} round trips", plan.poll));
    let poll = scratch.sub("poll")?;
    r.poll = handshake::handshake(&poll, &scratch.log("poll"), plan.poll, watch_config(true))?;
    say(&latency("polling 1 ms", &r.poll));
    for (vol, dirs) in growth.iter().zip(GROWTH_DIRS) {
        let left = tasks::idle_dirs_left(vol, dirs);
        ensure!(
            left == dirs,
            "{} of the {dirs} staged task directories in {} were removed: the growth figure is void",
            dirs - left,
            vol.display()
        );
    }
    Ok(r)
}

/// The handshake and the per-task overhead, each beside its baseline.
fn latency_round(
    r: &mut Report,
    scratch: &Scratch,
    dir: &Path,
    plan: &Plan,
    args: &BenchArgs,
    round: usize,
) -> anyhow::Result<()> {
    let n = plan.handshake;
    let hs = pair(
        round,
        || {
            let d = sub(dir, "handshake")?;
            handshake::handshake(&d, &scratch.log("handshake"), n, watch_config(false))
        },
        || handshake::raw_round_trips(&sub(dir, "raw")?, &scratch.log("raw"), n),
    )?;
    say(&format!(
        "{n} handshakes: {}; bare inotify {}",
        latency_of(&hs.0),
        latency_of(&hs.1)
    ));
    push(&mut r.handshake, hs);
    let n = plan.overhead;
    let over = pair(
        round,
        || tasks::task_overhead(&sub(dir, "serve")?, &scratch.log("serve"), n, args),
        || tasks::spawn_true(n),
    )?;
    say(&format!(
        "{n} empty tasks: {}; bare spawn {}",
        latency_of(&over.0),
        latency_of(&over.1)
    ));
    push(&mut r.overhead, over);
    Ok(())
}

/// Tasks per second at each `--parallel`, beside bare spawns.
fn load_round(
    r: &mut Report,
    scratch: &Scratch,
    dir: &Path,
    plan: &Plan,
    args: &BenchArgs,
    round: usize,
) -> anyhow::Result<()> {
    let n = plan.load;
    for (c, paired) in &mut r.load {
        let c = *c;
        let log = scratch.log(&format!("load-{c}"));
        let rates = pair(
            round,
            || tasks::load(&sub(dir, &format!("load-{c}"))?, &log, n, c, args),
            || tasks::spawn_load(n, c),
        )?;
        say(&format!(
            "{n} tasks at --parallel {c}: {:.0}/s; bare spawn {:.0}/s",
            rates.0, rates.1
        ));
        push(paired, rates);
    }
    Ok(())
}

/// One volume per growth figure, with its idle task directories; made once
/// and used by every round.
fn growth_volumes(scratch: &Scratch) -> anyhow::Result<Vec<PathBuf>> {
    GROWTH_DIRS
        .iter()
        .map(|dirs| {
            say(&format!("staging {dirs} idle task directories"));
            let vol = scratch.sub(&format!("growth-{dirs}"))?;
            tasks::idle_dirs(&vol, *dirs)?;
            Ok(vol)
        })
        .collect()
}

/// The per-task overhead with each number of idle task directories present.
fn growth_round(
    r: &mut Report,
    scratch: &Scratch,
    volumes: &[PathBuf],
    plan: &Plan,
    args: &BenchArgs,
) -> anyhow::Result<()> {
    let n = plan.growth;
    for ((dirs, rounds), vol) in r.growth.iter_mut().zip(volumes) {
        let log = scratch.log(&format!("growth-{dirs}"));
        let s = tasks::task_overhead(vol, &log, n, args)?;
        say(&format!(
            "{n} empty tasks beside {dirs} task directories: {}",
            latency_of(&s)
        ));
        rounds.push(s);
    }
    Ok(())
}

/// `--size` bytes through file mode and stream mode, beside the raw copy.
fn throughput_round(
    r: &mut Report,
    scratch: &Scratch,
    dir: &Path,
    args: &BenchArgs,
    round: usize,
) -> anyhow::Result<()> {
    let size = human_bytes(args.size);
    let mode = |peer: Peer, name: &str| {
        throughput::throughput_child(&sub(dir, name)?, &scratch.log(name), args, peer)
    };
    let ((file, stream), raw) = pair(
        round,
        || {
            Ok((
                mode(Peer::ThroughputFile, "file")?,
                mode(Peer::ThroughputStream, "stream")?,
            ))
        },
        || throughput::raw_copy(&sub(dir, "copy")?, args.size),
    )?;
    say(&format!(
        "{size}: file mode {:.0} MB/s, stream mode {:.0} MB/s; raw copy {:.0} MB/s",
        file.mb_s(),
        stream.mb_s(),
        raw.mb_s()
    ));
    r.bytes = raw.bytes;
    r.file.push(file);
    r.stream.push(stream);
    r.raw.push(raw);
    Ok(())
}

fn latency_of(s: &Samples) -> String {
    format!("p50 {}, p99 {}", us(s.p50()), us(s.p99()))
}

fn latency(what: &str, s: &Samples) -> String {
    format!("{what}: {}", latency_of(s))
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

/// Progress goes to stderr, so stdout carries only the results.
fn say(msg: &str) {
    eprintln!("bench: {msg}");
}

/// `dir/name`, created.
fn sub(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
    Ok(p)
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
            None => default_base(),
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
        sub(&self.root, name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// /dev/shm when it is writable (the memory-backed volume a pod shares),
/// else the system temporary directory.
fn default_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// The filesystem type of `p`, by name when it is a common one.
fn fs_type(p: &Path) -> String {
    let Ok(s) = nix::sys::statfs::statfs(p) else {
        return "unknown".into();
    };
    match s.filesystem_type().0 as u64 {
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
    fn rounds_alternate_which_side_goes_first() {
        let mut order = Vec::new();
        for round in 0..4 {
            let log = std::cell::RefCell::new(Vec::new());
            pair(
                round,
                || {
                    log.borrow_mut().push("ours");
                    Ok(())
                },
                || {
                    log.borrow_mut().push("base");
                    Ok(())
                },
            )
            .unwrap();
            order.push(log.into_inner().join(","));
        }
        assert_eq!(order, ["ours,base", "base,ours", "ours,base", "base,ours"]);
    }

    #[test]
    fn the_plan_splits_the_round_trips_over_the_rounds() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let args = Cli::parse_from(["bench", "--tasks", "2001", "--rounds", "4"]).bench;
        let plan = Plan::of(&args).unwrap();
        assert_eq!((plan.rounds, plan.handshake), (4, 501));
        assert_eq!(plan.overhead, 75); // 300 over 4 rounds
        assert_eq!(plan.poll, 500);
        assert!(Cli::try_parse_from(["bench", "--rounds", "0"]).is_err());
    }
}
