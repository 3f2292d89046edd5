//! Sidecar lifecycles against the real `sidecar-entrypoint`: sharing one
//! sidecar per volume, failure detection (killed, hung, too slow), and no
//! sidecar left behind however the executor ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use executor_shim::format::Format;
use executor_shim::provider::{ProcessProvider, Provider, Sidecar, SidecarOptions};
use executor_shim::{ShimError, TaskRequest};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use util::*;

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap();
}

fn req(stream: bool, timeout: Option<Duration>) -> TaskRequest {
    let mut r = TaskRequest::new(4, 1);
    r.stream = stream;
    r.timeout = timeout;
    r
}

/// The logic writes its pid to `<volume>/logic.pid` and sleeps.
const SLEEPER: &str = r#"echo $$ > "$SHARED_DIR/logic.pid"; exec sleep 60"#;

fn logic_pid(volume: &std::path::Path) -> u32 {
    let p = volume.join("logic.pid");
    assert!(
        wait_for(Duration::from_secs(60), || std::fs::read_to_string(&p)
            .is_ok_and(|s| s.ends_with('\n'))),
        "logic never started"
    );
    std::fs::read_to_string(&p).unwrap().trim().parse().unwrap()
}

#[test]
fn sidecar_killed_mid_task_is_an_error_not_a_hang() {
    let (schema, batches) = sample(100, 100);
    for stream in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let sidecar = start(dir.path(), SLEEPER);
        let pid = sidecar.ready().pid;
        let vol = dir.path().to_owned();
        let killer = std::thread::spawn(move || {
            let logic = logic_pid(&vol);
            signal(pid, Signal::SIGKILL);
            logic
        });
        let started = Instant::now();
        let err = run(&sidecar, &req(stream, None), &schema, &batches, None).unwrap_err();
        let took = started.elapsed();
        let logic = killer.join().unwrap();
        assert!(
            matches!(
                err,
                ShimError::SidecarExited { .. } | ShimError::SidecarUnresponsive { .. }
            ),
            "stream={stream}: {err}"
        );
        assert!(
            err.to_string().contains("signal: 9"),
            "says how it ended: {err}"
        );
        // Bound: the heartbeat staleness (5s) plus slack; the exit is seen sooner.
        assert!(took < Duration::from_secs(30), "took {took:?}");
        let _ = kill(Pid::from_raw(logic as i32), Signal::SIGKILL);
        // The task directory of a dead sidecar is cleaned up by the shim.
        assert_eq!(
            std::fs::read_dir(dir.path().join("tasks")).unwrap().count(),
            0
        );
    }
}

/// A `sidecar-entrypoint --mode serve` running `cat` on `volume`, started by
/// the test itself (not by a provider), its output discarded.
fn serve_cat(volume: &std::path::Path) -> std::process::Child {
    Command::new(entrypoint())
        .args(["--mode", "serve", "--volume", volume.to_str().unwrap()])
        .args(["--", "sh", "-c", CAT])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn hung_sidecar_is_reported_unresponsive() {
    let dir = tempfile::tempdir().unwrap();
    // A sidecar this test runs itself; the shim attaches to it.
    let mut child = serve_cat(dir.path());
    let opts = SidecarOptions {
        stale_after: Duration::from_secs(2),
        ..opts()
    };
    let sidecar = Sidecar::start(dir.path(), Provider::Attach, opts).unwrap();
    assert_eq!(sidecar.ready().pid, child.id());
    let (schema, batches) = sample(100, 100);
    // Alive: a task works.
    run(&sidecar, &req(false, None), &schema, &batches, None).unwrap();
    // Hung: stopped, it neither beats nor serves.
    signal(child.id(), Signal::SIGSTOP);
    let started = Instant::now();
    let err = run(&sidecar, &req(false, None), &schema, &batches, None).unwrap_err();
    let took = started.elapsed();
    signal(child.id(), Signal::SIGCONT);
    let text = err.to_string();
    assert!(
        matches!(err, ShimError::SidecarUnresponsive { .. }),
        "{text}"
    );
    assert!(
        text.starts_with("sidecar unresponsive: heartbeat "),
        "{text}"
    );
    assert!(text.contains("sidecar/heartbeat unchanged for"), "{text}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(30),
        "{took:?}"
    );
    // An attached handle never stops the sidecar it did not start.
    sidecar.shutdown().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "attach stopped someone else's sidecar"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn deadline_cancels_the_task() {
    let (schema, batches) = sample(10, 10);
    for stream in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let sidecar = start(dir.path(), SLEEPER);
        let started = Instant::now();
        let err = run(
            &sidecar,
            &req(stream, Some(Duration::from_secs(1))),
            &schema,
            &batches,
            None,
        )
        .unwrap_err();
        let took = started.elapsed();
        let text = err.to_string();
        assert!(matches!(err, ShimError::Deadline { .. }), "{text}");
        assert!(
            text.contains("p4-a1-") && text.contains("deadline of 1s"),
            "{text}"
        );
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(30),
            "{took:?}"
        );
        // The cancel flag stops the logic.
        let logic = logic_pid(dir.path());
        assert!(
            wait_gone(logic, Duration::from_secs(30)).is_some(),
            "logic still runs after the deadline"
        );
        sidecar.shutdown().unwrap();
    }
}

#[test]
fn stream_logic_that_never_opens_its_fifos_cannot_hang_the_shim() {
    let dir = tempfile::tempdir().unwrap();
    let (schema, batches) = sample(50_000, 5000);
    for (script, ok) in [
        ("exit 1", false),
        ("true", true),
        ("head -c 10 \"$SIDECAR_INPUT\" >/dev/null", true),
    ] {
        let vol = dir.path().join(format!("v{}", script.len()));
        let sidecar = start(&vol, script);
        let started = Instant::now();
        let result = run(
            &sidecar,
            &req(true, Some(Duration::from_secs(120))),
            &schema,
            &batches,
            None,
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{script}: {:?}",
            started.elapsed()
        );
        match result {
            Ok((report, out)) => {
                assert!(ok, "{script}: succeeded");
                assert!(out.is_empty(), "{script}: output out of nowhere");
                assert_eq!(report.rows_out, 0);
            }
            Err(e) => {
                assert!(!ok, "{script}: {e}");
                assert!(
                    matches!(
                        e,
                        ShimError::TaskFailed {
                            exit_code: Some(1),
                            ..
                        }
                    ),
                    "{script}: {e}"
                );
            }
        }
        sidecar.shutdown().unwrap();
    }
}

#[test]
fn concurrent_starts_share_one_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let (schema, batches) = sample(300, 100);
    let want = concat(&schema, &batches);
    let handles: Vec<Sidecar> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..3).map(|_| s.spawn(|| start(dir.path(), CAT))).collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let pids: Vec<u32> = handles.iter().map(|h| h.ready().pid).collect();
    assert!(pids.iter().all(|p| *p == pids[0]), "{pids:?}");
    assert_eq!(handles.iter().filter(|h| h.is_owner()).count(), 1);
    // Tasks from every handle, concurrently.
    std::thread::scope(|s| {
        for h in &handles {
            let (schema, batches, want) = (&schema, &batches, &want);
            s.spawn(move || {
                for i in 0..3 {
                    let mut r = req(i % 2 == 1, None);
                    r.input_format = Format::Csv;
                    let (_, out) = run(h, &r, schema, batches, Some(schema.clone())).unwrap();
                    assert_eq!(&concat(schema, &out), want);
                }
            });
        }
    });
    let pid = pids[0];
    // The owner going first hands the sidecar over; the last user stops it.
    let mut handles = handles;
    let owner = handles.iter().position(Sidecar::is_owner).unwrap();
    drop(handles.remove(owner));
    assert!(alive(pid), "stopped while others still use it");
    let (_, out) = run(&handles[0], &req(false, None), &schema, &batches, None).unwrap();
    assert_eq!(concat(&schema, &out), want);
    drop(handles);
    assert!(
        wait_gone(pid, Duration::from_secs(30)).is_some(),
        "sidecar {pid} left running"
    );
}

#[test]
fn another_process_attaches_instead_of_starting_a_second_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(dir.path(), CAT);
    let pid = sidecar.ready().pid;
    let (schema, batches) = sample(100, 10);
    let input = dir.path().join("in.arrows");
    std::fs::write(&input, ipc_stream(&schema, &batches)).unwrap();
    let out = Command::new(shim_bin())
        .args([
            "run",
            "--volume",
            dir.path().to_str().unwrap(),
            "--provider",
            "process",
        ])
        .args([
            "--entrypoint",
            entrypoint().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "exit 9",
        ])
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // It used the running sidecar (whose logic is `cat`), not its own `exit 9`.
    assert!(out.status.success(), "{stderr}");
    let (_, got) = read_ipc_stream(&out.stdout);
    assert_eq!(concat(&schema, &got), concat(&schema, &batches));
    assert_eq!(ready_pid(dir.path()), pid);
    assert!(
        alive(pid),
        "the other process stopped a sidecar it only shared"
    );
    sidecar.shutdown().unwrap();
    assert!(wait_gone(pid, Duration::from_secs(30)).is_some());
}

#[test]
fn no_sidecar_left_after_shutdown_or_drop() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(dir.path(), CAT);
    let pid = sidecar.ready().pid;
    assert!(alive(pid));
    sidecar.shutdown().unwrap();
    assert!(!alive(pid), "shutdown returned with the sidecar alive");
    assert!(!dir.path().join("sidecar/ready").exists());

    let sidecar = start(dir.path(), CAT);
    let pid2 = sidecar.ready().pid;
    assert_ne!(pid, pid2, "a new sidecar, not the stale record");
    drop(sidecar);
    assert!(!alive(pid2), "drop returned with the sidecar alive");
}

#[test]
fn sigkilled_shim_leaves_no_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let (schema, batches) = sample(100, 10);
    let input = dir.path().join("in.arrows");
    std::fs::write(&input, ipc_stream(&schema, &batches)).unwrap();
    let vol = dir.path().join("vol");
    let mut shim = Command::new(shim_bin())
        .args(["run", "--volume", vol.to_str().unwrap()])
        .args([
            "--entrypoint",
            entrypoint().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            SLEEPER,
        ])
        .stdin(std::fs::File::open(&input).unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let logic = logic_pid(&vol);
    let sidecar = ready_pid(&vol);
    assert!(alive(sidecar) && alive(logic));
    shim.kill().unwrap(); // SIGKILL: no destructor runs
    shim.wait().unwrap();
    // Its last user gone, the sidecar stops its task and exits at once,
    // not a lease timeout later.
    let gone = wait_gone(sidecar, Duration::from_secs(30));
    println!("sidecar gone {:?} after the shim was SIGKILLed", gone);
    assert!(
        gone.is_some_and(|d| d < Duration::from_secs(2)),
        "sidecar {sidecar} still ran {gone:?} after the shim died"
    );
    assert!(
        wait_gone(logic, Duration::from_secs(5)).is_some(),
        "logic {logic} outlived its sidecar"
    );
}

/// A task whose process dies (a Spark worker killed for a cancel or as a
/// speculative loser) is stopped in the sidecar and reclaimed within two
/// seconds, while the sidecar goes on serving its other users.
#[test]
fn a_dead_task_owner_is_stopped_while_the_sidecar_serves_others() {
    let dir = tempfile::tempdir().unwrap();
    let (schema, batches) = sample(100, 10);
    let input = dir.path().join("in.arrows");
    std::fs::write(&input, ipc_stream(&schema, &batches)).unwrap();
    let vol = dir.path().join("vol");
    let sidecar = start(
        &vol,
        &format!("case \"$SIDECAR_TASK_ID\" in p7-*) {SLEEPER};; *) {CAT};; esac"),
    );
    // Another process joins the sidecar and runs a slow task on it.
    let mut shim = Command::new(shim_bin())
        .args(["run", "--volume", vol.to_str().unwrap(), "--partition", "7"])
        .args([
            "--provider",
            "process",
            "--entrypoint",
            entrypoint().to_str().unwrap(),
        ])
        .args(["--", "sh", "-c", "exit 1"])
        .stdin(std::fs::File::open(&input).unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let logic = logic_pid(&vol);
    shim.kill().unwrap(); // SIGKILL: no destructor runs
    shim.wait().unwrap();
    let gone = wait_gone(logic, Duration::from_secs(30));
    println!("logic gone {gone:?} after its owner was SIGKILLed");
    assert!(
        gone.is_some_and(|d| d < Duration::from_secs(2)),
        "logic ran {gone:?} after its owner died"
    );
    let tasks = vol.join("tasks");
    assert!(
        wait_for(Duration::from_secs(2), || std::fs::read_dir(&tasks)
            .unwrap()
            .count()
            == 0),
        "the dead owner's task directory was not reclaimed"
    );
    // The sidecar still serves the handle that started it.
    assert!(alive(sidecar.ready().pid));
    let (_, out) = run(&sidecar, &req(false, None), &schema, &batches, None).unwrap();
    assert_eq!(concat(&schema, &out), concat(&schema, &batches));
    sidecar.shutdown().unwrap();
}

/// Streams 1 GiB through `cat` with `executor-shim run --stream` and checks
/// the shim's peak RSS (VmHWM, printed in its report) stays under 128 MiB.
/// Slow on a small machine; run with `cargo test -p executor-shim --test
/// providers -- --ignored --nocapture`.
#[test]
#[ignore]
fn one_gib_streams_in_bounded_memory() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir_in(if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    })
    .unwrap();
    let (schema, batches) = sample(100_000, 100_000);
    let batch = &batches[0];
    let batch_bytes: usize = batch.get_array_memory_size();
    let total: u64 = 1 << 30;
    let n = (total as usize).div_ceil(batch_bytes);
    let mut shim = Command::new(shim_bin())
        .args([
            "run",
            "--volume",
            dir.path().to_str().unwrap(),
            "--stream",
            "--report",
        ])
        .args([
            "--entrypoint",
            entrypoint().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            CAT,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = shim.stdin.take().unwrap();
    let (s2, b2) = (schema.clone(), batch.clone());
    let feeder = std::thread::spawn(move || {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut stdin, &s2).unwrap();
        for _ in 0..n {
            w.write(&b2).unwrap();
        }
        w.finish().unwrap();
    });
    let mut stdout = shim.stdout.take().unwrap();
    let counter = std::thread::spawn(move || {
        let r =
            arrow::ipc::reader::StreamReader::try_new(std::io::BufReader::new(&mut stdout), None)
                .unwrap();
        let mut rows = 0usize;
        for b in r {
            rows += b.unwrap().num_rows();
        }
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).unwrap();
        rows
    });
    let mut stderr = shim.stderr.take().unwrap();
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    let status = shim.wait().unwrap();
    feeder.join().unwrap();
    let rows = counter.join().unwrap();
    std::io::stdout().flush().unwrap();
    assert!(status.success(), "{log}");
    assert_eq!(rows, n * batch.num_rows());
    let report: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v.get("peak_rss_kib").is_some())
        .unwrap_or_else(|| panic!("no report in {log}"));
    let peak = report["peak_rss_kib"].as_u64().unwrap();
    println!(
        "streamed {} bytes in {} rows; executor-shim peak RSS (VmHWM) {} KiB",
        report["bytes_in"], rows, peak
    );
    assert!(peak < 128 * 1024, "peak RSS {peak} KiB");
}

/// The Docker provider, against the example image (`examples/foundry-dd`,
/// built offline if missing; `$SIDECAR_TEST_IMAGE` names another with the
/// entrypoint at `/usr/bin/sidecar-entrypoint` and a shell). Skipped, with
/// the reason, where no Docker engine answers.
#[test]
fn docker_provider_round_trip_and_cleanup() {
    let image = match std::env::var("SIDECAR_TEST_IMAGE") {
        Ok(image) => image,
        Err(_) => {
            sidecar_test_support::require_docker!();
            sidecar_test_support::IMAGE.to_owned()
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path(), docker(&image, sh(CAT)), opts()).unwrap();
    let (schema, batches) = sample(1000, 100);
    for stream in [false, true] {
        let mut r = req(stream, Some(Duration::from_secs(60)));
        r.input_format = Format::Csv;
        let (_, out) = run(&sidecar, &r, &schema, &batches, Some(schema.clone())).unwrap();
        assert_eq!(
            concat(&schema, &out),
            concat(&schema, &batches),
            "stream={stream}"
        );
    }
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("executor/sidecar.json")).unwrap())
            .unwrap();
    let name = record["container"].as_str().unwrap().to_owned();
    let running = || {
        Command::new("docker")
            .args(["ps", "-q", "--filter", &format!("name=^{name}$")])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap()
    };
    assert!(running(), "container {name} is not running");
    sidecar.shutdown().unwrap();
    assert!(!running(), "container {name} left running");
}

#[test]
fn a_sidecar_that_cannot_start_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad_args = Provider::Process(ProcessProvider {
        entrypoint: Some(entrypoint()),
        command: sh(CAT),
        extra_args: vec!["--log-format".into(), "xml".into()],
    });
    let started = Instant::now();
    let err = Sidecar::start(dir.path(), bad_args, opts()).unwrap_err();
    assert!(matches!(err, ShimError::SidecarExited { .. }), "{err}");
    assert!(err.to_string().contains("exit status"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));

    let missing = Provider::Process(ProcessProvider {
        entrypoint: Some("/nonexistent/sidecar-entrypoint".into()),
        command: sh(CAT),
        extra_args: Vec::new(),
    });
    let err = Sidecar::start(dir.path(), missing, opts()).unwrap_err();
    assert!(matches!(err, ShimError::EntrypointNotFound { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/sidecar-entrypoint"),
        "{err}"
    );
}

#[test]
fn a_dead_sidecars_leftovers_are_not_mistaken_for_a_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = serve_cat(dir.path());
    assert!(wait_for(Duration::from_secs(60), || dir
        .path()
        .join("sidecar/ready")
        .exists()));
    child.kill().unwrap();
    child.wait().unwrap();
    let quick = SidecarOptions {
        stale_after: Duration::from_secs(1),
        ready_timeout: Duration::from_secs(3),
        ..opts()
    };
    std::thread::sleep(Duration::from_millis(1500));
    let err = Sidecar::start(dir.path(), Provider::Attach, quick.clone()).unwrap_err();
    assert!(matches!(err, ShimError::NotReady { .. }), "{err}");
    assert!(
        err.to_string().contains("dead sidecar's leftovers"),
        "{err}"
    );
    // A starting provider starts a new one rather than attach to the corpse.
    let sidecar = Sidecar::start(dir.path(), process(CAT), opts()).unwrap();
    assert!(sidecar.is_owner());
    assert_ne!(sidecar.ready().pid, child.id());
    let (schema, batches) = sample(10, 10);
    run(&sidecar, &req(false, None), &schema, &batches, None).unwrap();
}

/// Per-task overhead: 100 one-batch tasks, file and stream mode, sequential
/// and 2-way concurrent, each checked row for row; prints the mean latency.
/// Run with `cargo test -p executor-shim --test providers -- --ignored overhead --nocapture`.
#[test]
#[ignore]
fn per_task_overhead() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(dir.path(), CAT);
    let (schema, batches) = sample(100, 100);
    let want = concat(&schema, &batches);
    for stream in [false, true] {
        for threads in [1usize, 2] {
            let n = 100;
            let started = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| {
                        for _ in 0..n / threads {
                            let (_, out) =
                                run(&sidecar, &req(stream, None), &schema, &batches, None).unwrap();
                            assert_eq!(concat(&schema, &out), want);
                        }
                    });
                }
            });
            let per = started.elapsed() / n as u32;
            println!("stream={stream} threads={threads}: {n} tasks, {per:?} per task");
        }
    }
}
