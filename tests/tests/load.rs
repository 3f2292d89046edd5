//! Load: many tasks through one sidecar at `--parallel 8`. None is lost
//! (every task returns its own rows), none runs twice (the logic logs every
//! run; each id appears exactly once). Throughput and task latency
//! percentiles are printed.
//!
//! `SIDECAR_LOAD_TASKS` sets the task count (default 2,000 in CI; the full
//! load is 10,000: `SIDECAR_LOAD_TASKS=10000`), `SIDECAR_LOAD_CLIENTS` the
//! executor threads submitting them (default 16).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use executor_shim::provider::{Sidecar, SidecarOptions};
use executor_shim::TaskRequest;
use sidecar_core::Format;

#[test]
fn ten_thousand_tasks_none_lost_none_twice() {
    let tasks = common::env_count("SIDECAR_LOAD_TASKS", 2_000);
    let clients = common::env_count("SIDECAR_LOAD_CLIENTS", 16).max(1);
    let s = common::Scratch::new("load");
    let vol = s.volume("v");
    let runs = vol.join("runs.log");
    let sidecar = Sidecar::start(
        &vol,
        common::process_provider(vec![
                "/bin/sh".into(),
                "-c".into(),
                r#"echo "$SIDECAR_TASK_ID" >> "$SHARED_DIR/runs.log" && cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#.into(),
            ]),
        SidecarOptions {
            parallel: Some(8),
            heartbeat: Duration::from_millis(100),
            stale_after: Duration::from_secs(10),
            lease_interval: Duration::from_millis(200),
            lease_timeout: Duration::from_secs(10),
            grace: Some(Duration::from_millis(200)),
            log_filter: Some("warn".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let next = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::with_capacity(tasks));
    let failures = Mutex::new(Vec::new());
    let ids = Mutex::new(BTreeMap::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..clients {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= tasks {
                    break;
                }
                let input = common::batch(2, i as u64);
                let mut req = TaskRequest::new(i as u64, 0);
                req.input_format = Format::Csv;
                req.timeout = Some(Duration::from_secs(120));
                let t0 = Instant::now();
                let r = common::run_batch(&sidecar, &req, input.clone());
                let took = t0.elapsed();
                match r {
                    Ok(got) if got == input => {
                        latencies.lock().unwrap().push(took);
                        ids.lock().unwrap().insert(req.task_id().to_string(), i);
                    }
                    Ok(_) => failures
                        .lock()
                        .unwrap()
                        .push(format!("task {i}: wrong output")),
                    Err(e) => failures.lock().unwrap().push(format!("task {i}: {e}")),
                }
            });
        }
    });
    let wall = started.elapsed();
    sidecar.shutdown().unwrap();

    let failures = failures.into_inner().unwrap();
    let ids = ids.into_inner().unwrap();
    let mut lat = latencies.into_inner().unwrap();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    // Every run the logic logged, by task id.
    let mut run_counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in std::fs::read_to_string(&runs).unwrap().lines() {
        *run_counts.entry(line.to_owned()).or_default() += 1;
    }
    let twice: Vec<_> = run_counts.iter().filter(|(_, &n)| n > 1).collect();
    let unknown: Vec<_> = run_counts
        .keys()
        .filter(|k| !ids.contains_key(*k))
        .collect();
    eprintln!("---- load summary ----");
    eprintln!("tasks:       {tasks} through one sidecar at --parallel 8, {clients} client threads");
    eprintln!("wall time:   {wall:.2?}");
    eprintln!(
        "throughput:  {:.1} tasks/s",
        tasks as f64 / wall.as_secs_f64()
    );
    if !lat.is_empty() {
        eprintln!(
            "latency:     p50 {:.1?}  p90 {:.1?}  p99 {:.1?}  max {:.1?}",
            pct(0.50),
            pct(0.90),
            pct(0.99),
            lat[lat.len() - 1]
        );
    }
    eprintln!(
        "lost: {}  run twice: {}  runs logged: {}",
        failures.len(),
        twice.len(),
        run_counts.values().sum::<usize>()
    );
    assert!(
        failures.is_empty(),
        "{} tasks failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert_eq!(ids.len(), tasks, "every task returned its own rows");
    assert!(twice.is_empty(), "tasks run twice: {twice:?}");
    assert!(unknown.is_empty(), "runs of unknown tasks: {unknown:?}");
    assert_eq!(run_counts.len(), tasks, "every task ran exactly once");
    // Every task directory was removed after its close flag.
    let left: Vec<_> = std::fs::read_dir(vol.join("tasks"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "task directories left: {}", left.len());
    assert!(s.wait_no_leftovers(Duration::from_secs(10)).is_empty());
}

/// A retry must not race the sidecar's cleanup of the same id, and the
/// same volume reused by a new sidecar must not re-run tasks that already
/// have an outcome.
#[test]
fn a_new_sidecar_does_not_rerun_finished_tasks() {
    let s = common::Scratch::new("rerun");
    let logic = s.script(
        "count.sh",
        r#"echo "$SIDECAR_TASK_ID" >> "$SHARED_DIR/../runs.log"; cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#,
    );
    let args = common::SidecarArgs::default();
    let sc = common::RawSidecar::serve(&s, "v", &args, &[logic.to_str().unwrap()]);
    let t = common::RawTask::submit(
        &sc.volume,
        "p0-a0-x",
        br#"{"input":{"format":"csv"}}"#,
        b"a\n1\n",
    );
    let o = sc.done(&t, Duration::from_secs(30));
    assert!(o.succeeded(), "{o:?}");
    // The sidecar goes away before the executor closed the task.
    drop(sc);
    let sc = common::RawSidecar::serve(&s, "v", &args, &[logic.to_str().unwrap()]);
    std::thread::sleep(Duration::from_secs(1));
    let runs = std::fs::read_to_string(s.path().join("runs.log")).unwrap();
    assert_eq!(
        runs.lines().filter(|l| *l == "p0-a0-x").count(),
        1,
        "a task with a done_flag was run again by the next sidecar:\n{}",
        sc.log()
    );
}
