//! Whole tasks through a serving sidecar running `true`: the per-task
//! overhead (also with many idle task directories present), and the tasks
//! per second under load, each beside bare spawns of `true`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use arrow::record_batch::RecordBatch;
use executor_shim::client::TaskRequest;
use executor_shim::provider::{ProviderKind, ProviderSpec, Sidecar, SidecarOptions};

use super::peers::{last_line, os, PeerProc};
use super::stats::Samples;
use super::throughput::bench_schema;
use super::BenchArgs;

/// The entrypoint the phases through a serving sidecar use.
pub fn entrypoint(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    let explicit = args.entrypoint.clone().unwrap_or_default();
    Ok(executor_shim::provider::locate_entrypoint(&explicit)?)
}

/// A serving `sidecar-entrypoint` started by the shim's process provider.
pub fn start_sidecar(
    dir: &Path,
    entrypoint: &Path,
    command: &[&str],
    parallel: Option<u32>,
) -> anyhow::Result<Sidecar> {
    let provider = ProviderSpec {
        kind: Some(ProviderKind::Process),
        entrypoint: Some(entrypoint.to_owned()),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
    .build()?;
    let opts = SidecarOptions {
        parallel,
        ..SidecarOptions::default()
    };
    Sidecar::start(dir, provider, opts)
        .with_context(|| format!("cannot start a sidecar on {}", dir.display()))
}

/// A bare spawn-and-wait of `true`, `n` times.
pub fn spawn_true(n: usize) -> anyhow::Result<Samples> {
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

/// The per-task overhead on the volume `dir` (with whatever idle task
/// directories it holds), measured in a child (`--peer overhead`) so the
/// sidecar it starts logs to the phase's log, not the terminal.
pub fn task_overhead(
    dir: &Path,
    log: &Path,
    n: usize,
    args: &BenchArgs,
) -> anyhow::Result<Samples> {
    let child_args = peer_args("overhead", dir, n, args)?;
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

fn peer_args(peer: &str, dir: &Path, n: usize, args: &BenchArgs) -> anyhow::Result<Vec<OsString>> {
    Ok(vec![
        os("--peer"),
        os(peer),
        os("--volume"),
        os(dir),
        os("--tasks"),
        os(n.to_string()),
        os("--entrypoint"),
        os(entrypoint(args)?),
    ])
}

/// `dirs` task directories on the volume `dir` that are staged and never
/// started, as an executor with many tasks in flight leaves them.
pub fn idle_dirs(dir: &Path, dirs: usize) -> anyhow::Result<()> {
    for i in 0..dirs {
        let p = dir.join("tasks").join(format!("idle-{i}")).join("input");
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
    }
    Ok(())
}

/// How many of the [`idle_dirs`] are still there: discovery must leave a
/// staged task alone.
pub fn idle_dirs_left(dir: &Path, dirs: usize) -> usize {
    (0..dirs)
        .filter(|i| dir.join("tasks").join(format!("idle-{i}")).is_dir())
        .count()
}

/// One empty task through `sidecar`; its outcome must be a success.
#[allow(clippy::result_large_err)] // the sink's error type is the client's
fn one_task(sidecar: &Sidecar, partition: u64) -> anyhow::Result<()> {
    // `true` writes nothing: the overhead is what is measured.
    let request = TaskRequest {
        expect_output: false,
        ..TaskRequest::new(partition, 0)
    };
    let mut sink = |_b: RecordBatch| Ok(());
    let report = sidecar
        .run_task(
            &request,
            bench_schema(),
            std::iter::empty(),
            None,
            &mut sink,
        )
        .with_context(|| format!("task {partition}"))?;
    ensure!(
        report.outcome.succeeded(),
        "task {partition}: `true` did not succeed: {:?}",
        report.outcome
    );
    Ok(())
}

/// `n` empty tasks through [`Sidecar::run_task`] against a serving sidecar
/// running `true`: staging, start flag, spawn, done flag, close flag, all
/// included. Prints the samples (µs) as one JSON array.
pub fn peer_overhead(dir: &Path, n: usize, args: &BenchArgs) -> anyhow::Result<()> {
    let sidecar = start_sidecar(dir, &entrypoint(args)?, &["true"], None)?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        one_task(&sidecar, i as u64)?;
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    sidecar.shutdown()?;
    println!("{}", serde_json::to_string(&samples)?);
    Ok(())
}

/// Tasks per second through one sidecar at `--parallel c`, with `c`
/// threads submitting, measured in a child (`--peer load`).
pub fn load(dir: &Path, log: &Path, n: usize, c: u32, args: &BenchArgs) -> anyhow::Result<f64> {
    let child_args = peer_args("load", dir, n, args)?
        .into_iter()
        .chain([os("--peer-parallel"), os(c.to_string())])
        .collect::<Vec<_>>();
    let out = PeerProc::spawn("load", &child_args, Stdio::piped(), log)?.finish()?;
    let line = last_line(&out.stdout, "load")?;
    line.trim()
        .parse()
        .with_context(|| format!("the load peer printed {line:?}"))
}

/// The load peer: `n` tasks over `c` threads; prints tasks per second.
pub fn peer_load(dir: &Path, n: usize, c: u32, args: &BenchArgs) -> anyhow::Result<()> {
    let sidecar = start_sidecar(dir, &entrypoint(args)?, &["true"], Some(c))?;
    let threads = c.max(1) as usize;
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let sidecar = &sidecar;
                s.spawn(move || {
                    (t..n)
                        .step_by(threads)
                        .try_for_each(|i| one_task(sidecar, i as u64))
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| anyhow::bail!("a load thread panicked"))
        })
    })?;
    let secs = t0.elapsed().as_secs_f64();
    sidecar.shutdown()?;
    println!("{}", n as f64 / secs.max(1e-9));
    Ok(())
}

/// Bare spawns of `true` per second, `n` over `c` threads.
pub fn spawn_load(n: usize, c: u32) -> anyhow::Result<f64> {
    let threads = c.max(1) as usize;
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| s.spawn(move || spawn_true((t..n).step_by(threads).count()).map(|_| ())))
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| anyhow::bail!("a spawn thread panicked"))
        })
    })?;
    Ok(n as f64 / t0.elapsed().as_secs_f64().max(1e-9))
}
