//! Never a hang, never a panic: inputs and events at the edges (durations
//! that overflow a clock, a log pipe that is gone, every terminating
//! signal, a task directory removed under the logic) each end in a named
//! error or a recorded outcome, promptly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{RawSidecar, RawTask, Scratch, SidecarArgs};
use sidecar_core::Status;

const DONE: Duration = Duration::from_secs(30);

/// A logic that copies its input to its output.
fn copy_logic(s: &Scratch) -> String {
    s.script("copy.sh", r#"cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#)
        .display()
        .to_string()
}

/// `--timeout 18446744073709551615s` is refused by name on both command
/// lines (exit 2, not a panic's 101), and a spec's `timeout_ms` of
/// `u64::MAX` or a library request of `Duration::MAX` runs the task
/// instead of panicking a worker.
#[test]
fn durations_too_long_for_the_clock_are_refused_or_saturate() {
    let s = Scratch::new("hugetimeout");
    let vol = s.volume("cli");
    let huge = "18446744073709551615s";
    let shim = Command::new(common::shim_bin())
        .args(["run", "--volume"])
        .arg(&vol)
        .args(["--timeout", huge])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&shim.stderr);
    assert_eq!(shim.status.code(), Some(2), "{err}");
    assert!(err.contains("too long"), "{err}");
    let ep = Command::new(common::entrypoint())
        .arg("--volume")
        .arg(&vol)
        .args(["--timeout", huge, "--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&ep.stderr);
    assert_eq!(ep.status.code(), Some(2), "{err}");
    assert!(err.contains("too long"), "{err}");

    let logic = copy_logic(&s);
    let sc = RawSidecar::serve(&s, "v", &SidecarArgs::default(), &[&logic]);
    let spec = br#"{"timeout_ms":18446744073709551615,"input":{"format":"csv"}}"#;
    let t = RawTask::submit(&sc.volume, "huge-spec", spec, b"a\n1\n");
    let o = sc.done(&t, DONE);
    assert_eq!(o.status, Status::Succeeded, "{o:?}\nlog:\n{}", sc.log());
    t.close();
    assert!(!sc.log().contains("panicked"), "{}", sc.log());

    let vol = s.volume("lib");
    let sidecar = executor_shim::provider::Sidecar::start(
        &vol,
        common::process_provider(vec!["/bin/sh".into(), logic]),
        executor_shim::provider::SidecarOptions {
            log_filter: Some("warn".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let mut req = executor_shim::TaskRequest::new(1, 0);
    req.input_format = sidecar_core::Format::Csv;
    req.timeout = Some(Duration::MAX);
    let (got, _) = common::within("a Duration::MAX timeout", DONE, move || {
        let got = common::run_batch(&sidecar, &req, common::batch(3, 1));
        drop(sidecar);
        got
    });
    assert_eq!(got.unwrap().num_rows(), 3);
}

/// Waits up to `limit` for `child` to exit.
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let until = std::time::Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if std::time::Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits up to `limit` for `path` to exist.
fn wait_file(path: &std::path::Path, limit: Duration) -> bool {
    let until = std::time::Instant::now() + limit;
    while !path.exists() {
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// `sidecar-entrypoint ... 2>&1 | head -1`: once the reader is gone every
/// log line fails with EPIPE. The entrypoint neither dies of it (exit 101,
/// its logic orphaned) nor loses its SIGTERM handling: SIGTERM still stops
/// the logic, records the outcome and exits 143.
#[test]
fn a_log_pipe_with_no_reader_neither_kills_nor_deafens_the_entrypoint() {
    use std::io::BufRead;
    let s = Scratch::new("logpipe");
    let vol = s.volume("v");
    let (reader, writer) = std::io::pipe().unwrap();
    let mut child = Command::new(common::entrypoint())
        .arg("--volume")
        .arg(&vol)
        .args(["--grace", "1s", "--", "sh", "-c"])
        .arg("for i in 1 2 3 4 5; do echo line$i; done; exec sleep 100")
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .spawn()
        .unwrap();
    // `head -1`: one line, then the reader is gone.
    let mut first = String::new();
    std::io::BufReader::new(reader)
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("waiting for start_flag"), "{first}");
    sidecar_core::atomic::touch_atomic(&vol.join("start_flag")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        child.try_wait().unwrap(),
        None,
        "the entrypoint died of its log pipe"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    if status.is_none() {
        let _ = child.kill();
    }
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(143),
        "SIGTERM was not obeyed"
    );
    let done = std::fs::read_to_string(vol.join("done_flag")).unwrap();
    assert!(done.contains("\"cancelled\""), "{done}");
    assert!(done.contains("SIGTERM"), "{done}");
    assert_eq!(s.wait_no_leftovers(Duration::from_secs(5)), vec![]);
}

/// With stderr (and stdout) closed, the entrypoint runs its task to the end
/// and its log lands nowhere else: not in a flag, not in `logfile`.
#[test]
fn closed_std_descriptors_do_not_redirect_the_log_into_the_volume() {
    use std::os::unix::process::CommandExt;
    let s = Scratch::new("closedfds");
    let vol = s.volume("v");
    let mut cmd = Command::new(common::entrypoint());
    cmd.arg("--volume")
        .arg(&vol)
        .args(["--", "sh", "-c", "echo from-the-logic"]);
    // SAFETY: close(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(1);
            libc::close(2);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    sidecar_core::atomic::touch_atomic(&vol.join("start_flag")).unwrap();
    assert!(wait_file(&vol.join("done_flag"), Duration::from_secs(10)));
    sidecar_core::atomic::touch_atomic(&vol.join("close_flag")).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    if status.is_none() {
        let _ = child.kill();
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let log = std::fs::read_to_string(vol.join("logfile")).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.ends_with(" from-the-logic\n"), "{log}");
    let done = std::fs::read_to_string(vol.join("done_flag")).unwrap();
    assert!(done.contains("\"succeeded\""), "{done}");
    assert!(!done.contains("INFO"), "{done}");
}

/// Outside PID 1 a signal with no handler ends a process at once: the
/// logic orphaned, no outcome. Every catchable signal whose default is to
/// end the process stops the entrypoint as SIGTERM does: its logic
/// stopped, a `cancelled` outcome naming the signal, exit 128+signal.
#[test]
fn every_terminating_signal_stops_the_entrypoint_like_sigterm() {
    let s = Scratch::new("signals");
    let signals = [
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGRTMIN() + 3, "SIGRTMIN+3"),
    ];
    for (sig, name) in signals {
        let vol = s.volume(name);
        let mut child = Command::new(common::entrypoint())
            .arg("--volume")
            .arg(&vol)
            .args(["--grace", "2s", "--", "sh", "-c", "exec sleep 100"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        sidecar_core::atomic::touch_atomic(&vol.join("start_flag")).unwrap();
        // The logic is running once its process group exists.
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = wait_exit(&mut child, Duration::from_secs(10));
        if status.is_none() {
            let _ = child.kill();
        }
        assert_eq!(status.and_then(|s| s.code()), Some(128 + sig), "{name}");
        let done = std::fs::read_to_string(vol.join("done_flag")).unwrap_or_default();
        assert!(done.contains("\"cancelled\""), "{name}: {done}");
        assert!(done.contains(&format!("received {name}")), "{name}: {done}");
        assert_eq!(
            s.wait_no_leftovers(Duration::from_secs(5)),
            vec![],
            "{name}"
        );
    }
}

/// A relative `--volume v1` (or `SHARED_DIR=o2`) is made absolute once at
/// start: the logic runs in its task directory, where a relative
/// `SIDECAR_*` path would name nothing. Checked for the entrypoint both
/// ways and for `executor-shim run --volume <relative>`.
#[test]
fn relative_volumes_hand_the_logic_absolute_paths() {
    let s = Scratch::new("relvol");
    let logic = s.script(
        "env.sh",
        r#"env | grep -E '^(SIDECAR_(TASK_DIR|INPUT_DIR|OUTPUT_DIR|INPUT|OUTPUT|PROGRESS)|SHARED_DIR)=' | sort > "$SIDECAR_OUTPUT_DIR/env.txt""#,
    );
    let logic = logic.display().to_string();
    for (name, by_env) in [("v1", false), ("o2", true)] {
        let vol = s.volume(name);
        let rel = vol.file_name().unwrap().to_owned();
        let mut cmd = Command::new(common::entrypoint());
        cmd.current_dir(s.path())
            .args(["--mode", "serve", "--heartbeat", "100ms"]);
        cmd.env_remove("SIDECAR_VOLUME").env_remove("SHARED_DIR");
        if by_env {
            cmd.env("SHARED_DIR", &rel);
        } else {
            cmd.arg("--volume").arg(&rel);
        }
        cmd.args(["--", &logic]);
        let sc = RawSidecar::spawn(cmd, &vol, s.path().join(format!("{name}.log")));
        sc.wait_ready(DONE);
        let t = RawTask::submit(&sc.volume, "rel", br#"{"input":{"format":"csv"}}"#, b"a\n");
        let o = sc.done(&t, DONE);
        assert_eq!(o.status, Status::Succeeded, "{o:?}\n{}", sc.log());
        let env = String::from_utf8(t.read_output("env.txt")).unwrap();
        assert_eq!(env.lines().count(), 7, "{env}");
        for line in env.lines() {
            let (k, v) = line.split_once('=').unwrap();
            assert!(
                v.starts_with(&s.marker()),
                "{name}: {k}={v} is not absolute"
            );
        }
        t.close();
    }

    let vol = s.volume("shim");
    let rel = vol.file_name().unwrap().to_owned();
    let input = common::batch(2, 0);
    let mut stdin = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut stdin, &input.schema()).unwrap();
        w.write(&input).unwrap();
        w.finish().unwrap();
    }
    let copy = s.script(
        "copy.sh",
        r#"case "$SIDECAR_INPUT$SIDECAR_OUTPUT" in /*) cp "$SIDECAR_INPUT" "$SIDECAR_OUTPUT";; *) echo "relative: $SIDECAR_INPUT" >&2; exit 3;; esac"#,
    );
    let mut child = Command::new(common::shim_bin())
        .current_dir(s.path())
        .env("SIDECAR_ENTRYPOINT", common::entrypoint())
        .env_remove("SIDECAR_VOLUME")
        .arg("run")
        .arg("--volume")
        .arg(&rel)
        .args(["--timeout", "30s", "--"])
        .arg(&copy)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: usize = arrow::ipc::reader::StreamReader::try_new(&out.stdout[..], None)
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum();
    assert_eq!(rows, 2);
}

/// Runs one oneshot task with `spec` as its start flag; returns the exit
/// code and the done flag.
fn oneshot_with_spec(s: &Scratch, name: &str, spec: &[u8]) -> (Option<i32>, String) {
    let vol = s.volume(name);
    let mut child = Command::new(common::entrypoint())
        .arg("--volume")
        .arg(&vol)
        .args(["--", "sh", "-c", "echo ran > ran"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    sidecar_core::atomic::write_atomic(
        &vol.join("start_flag"),
        spec,
        sidecar_core::atomic::Durability::Visible,
    )
    .unwrap();
    assert!(
        wait_file(&vol.join("done_flag"), DONE),
        "{name}: no done_flag"
    );
    sidecar_core::atomic::touch_atomic(&vol.join("close_flag")).unwrap();
    let status = wait_exit(&mut child, DONE);
    if status.is_none() {
        let _ = child.kill();
    }
    assert!(!vol.join("ran").exists(), "{name}: the logic ran");
    let done = std::fs::read_to_string(vol.join("done_flag")).unwrap();
    (status.and_then(|s| s.code()), done)
}

/// A spec that would redefine what the sidecar tells the logic
/// (`SIDECAR_OUTPUT`, `SHARED_DIR`, ...) or that is not a JSON object
/// (`[]`, which serde would read as "all defaults") fails the task, named,
/// in both modes; the logic never runs.
#[test]
fn specs_that_redefine_the_contract_or_are_not_objects_are_refused() {
    let s = Scratch::new("badspecs");
    let cases: [(&str, &[u8], &str); 3] = [
        (
            "shared",
            br#"{"env":{"SHARED_DIR":"/etc"}}"#,
            "may not set SHARED_DIR",
        ),
        (
            "output",
            br#"{"env":{"SIDECAR_OUTPUT":"/etc/x"}}"#,
            "may not set SIDECAR_OUTPUT",
        ),
        ("array", b"[]", "must be a JSON object {...}, not an array"),
    ];
    for (name, spec, want) in cases {
        let (code, done) = oneshot_with_spec(&s, name, spec);
        assert!(done.contains("\"failed\""), "{name}: {done}");
        assert!(done.contains(want), "{name}: {done}");
        assert_eq!(code, Some(70), "{name}");
    }
    let logic = s.script("ran.sh", "echo ran > \"$SIDECAR_TASK_DIR/ran\"");
    let sc = RawSidecar::serve(
        &s,
        "serve",
        &SidecarArgs::default(),
        &[logic.to_str().unwrap()],
    );
    for (name, spec, want) in cases {
        let t = RawTask::submit(&sc.volume, name, spec, b"a\n");
        let o = sc.done(&t, DONE);
        assert_eq!(o.status, Status::Failed, "{name}: {o:?}");
        let reason = o.reason.unwrap_or_default();
        assert!(reason.contains(want), "{name}: {reason}");
        assert!(!t.dir.root().join("ran").exists(), "{name}: the logic ran");
        t.close();
    }
}

/// The volume's `sidecar/` removed under a serving sidecar: the heartbeat
/// puts it back (the executor sees a live sidecar), and the log says so
/// at most once instead of at every beat.
#[test]
fn a_removed_sidecar_dir_is_recreated_not_warned_about_forever() {
    let s = Scratch::new("rmsidecar");
    let logic = copy_logic(&s);
    let sc = RawSidecar::serve(&s, "v", &SidecarArgs::default(), &[&logic]);
    let dir = sc.volume.root().join("sidecar");
    std::fs::remove_dir_all(&dir).unwrap();
    // Ten beats.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(sc.volume.heartbeat().exists(), "{}", sc.log());
    let warnings = sc.log().lines().filter(|l| l.contains(" WARN ")).count();
    assert!(warnings <= 1, "{}", sc.log());
}

/// A task directory whose name holds a newline is skipped, and logged with
/// the newline escaped: one log line, which no one can forge.
#[test]
fn a_task_id_with_a_newline_is_logged_escaped() {
    let s = Scratch::new("nlid");
    let logic = copy_logic(&s);
    let sc = RawSidecar::serve(&s, "v", &SidecarArgs::default(), &[&logic]);
    let bad = sc
        .volume
        .tasks_dir()
        .join("evil\n2099-01-01T00:00:00Z INFO forged");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("start_flag"), b"").unwrap();
    let t = RawTask::submit(
        &sc.volume,
        "after",
        br#"{"input":{"format":"csv"}}"#,
        b"a\n",
    );
    assert_eq!(sc.done(&t, DONE).status, Status::Succeeded);
    let log = sc.log();
    assert!(log.contains(r"evil\n2099"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("2099")), "{log}");
}

/// A oneshot volume reused by a second run: the first run's `done_flag`
/// and `close_flag` are removed (and the removal logged) before the second
/// waits for its start flag, so an executor polling for `done_flag` never
/// reads the last run's outcome as this one's.
#[test]
fn oneshot_clears_an_earlier_runs_flags_before_waiting() {
    let s = Scratch::new("staleflags");
    let (_, first) = oneshot_with_spec(&s, "v", br#"{"env":{"SHARED_DIR":"/x"}}"#);
    assert!(first.contains("\"failed\""), "{first}");
    let vol = s.path().join("vol-v");
    assert!(vol.join("done_flag").exists() && vol.join("close_flag").exists());
    std::fs::remove_file(vol.join("start_flag")).unwrap();
    let log = s.path().join("second.log");
    let mut child = Command::new(common::entrypoint())
        .arg("--volume")
        .arg(&vol)
        .args(["--", "true"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let cleared = || !vol.join("done_flag").exists() && !vol.join("close_flag").exists();
    let until = std::time::Instant::now() + DONE;
    while !cleared() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(cleared(), "stale flags still there");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        child.try_wait().unwrap(),
        None,
        "it took the old close_flag"
    );
    sidecar_core::atomic::touch_atomic(&vol.join("start_flag")).unwrap();
    assert!(wait_file(&vol.join("done_flag"), DONE));
    let done = std::fs::read_to_string(vol.join("done_flag")).unwrap();
    assert!(done.contains("\"succeeded\""), "{done}");
    sidecar_core::atomic::touch_atomic(&vol.join("close_flag")).unwrap();
    assert_eq!(wait_exit(&mut child, DONE).and_then(|s| s.code()), Some(0));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("done_flag left by an earlier run"), "{log}");
}

/// A logic that exits 0 and writes nothing fails the task by name ("no
/// output at ..."), rather than "succeeding" with zero rows; an empty
/// partition still comes back, with its schema, through a logic that
/// copies it.
#[test]
fn no_output_is_a_named_failure_and_an_empty_partition_keeps_its_schema() {
    let s = Scratch::new("nooutput");
    let start = |name: &str, logic: &str| {
        executor_shim::provider::Sidecar::start(
            &s.volume(name),
            common::process_provider(vec!["/bin/sh".into(), "-c".into(), logic.into()]),
            executor_shim::provider::SidecarOptions {
                log_filter: Some("warn".into()),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let req = |p: u64| {
        let mut r = executor_shim::TaskRequest::new(p, 0);
        r.timeout = Some(DONE);
        r
    };
    let silent = start("silent", "exit 0");
    let err = common::run_batch(&silent, &req(1), common::batch(3, 0)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("no output at "), "{msg}");
    assert!(msg.contains("/output"), "{msg}");
    drop(silent);

    let copy = start("copy", r#"cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#);
    for format in [sidecar_core::Format::Arrows, sidecar_core::Format::Parquet] {
        let mut r = req(2);
        r.input_format = format;
        let empty = common::batch(0, 0);
        let got = common::run_batch(&copy, &r, empty.clone())
            .unwrap_or_else(|e| panic!("{format:?}: an empty partition failed: {e}"));
        assert_eq!(got.num_rows(), 0);
        assert_eq!(got.schema(), empty.schema(), "{format:?}");
    }
}

/// A logic that deletes its own task directory (and exits, or goes on
/// running): no done flag can come, and the executor, with no deadline,
/// ends at once with an error that says so, instead of waiting forever.
/// The sidecar stops that logic and serves the next task.
#[test]
fn a_logic_that_deletes_its_task_dir_ends_the_task_promptly() {
    let s = Scratch::new("rmtaskdir");
    let vol = s.volume("v");
    let logic = r#"if [ -e "$SIDECAR_INPUT_DIR/keep" ]; then cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"; exit; fi
rm -rf "$SIDECAR_TASK_DIR"; [ -n "$LINGER" ] && exec sleep 60; exit 0"#;
    let sidecar = executor_shim::provider::Sidecar::start(
        &vol,
        common::process_provider(vec!["/bin/sh".into(), "-c".into(), logic.into()]),
        executor_shim::provider::SidecarOptions {
            grace: Some(Duration::from_millis(200)),
            log_filter: Some("warn".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let sidecar = std::sync::Arc::new(sidecar);
    for linger in [false, true] {
        let mut req = executor_shim::TaskRequest::new(u64::from(linger), 0);
        if linger {
            req.env.insert("LINGER".into(), "1".into());
        }
        let sc = std::sync::Arc::clone(&sidecar);
        let (r, took) = common::within("a deleted task dir", DONE, move || {
            common::run_batch(&sc, &req, common::batch(2, 0))
        });
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("was removed before its outcome"), "{msg}");
        assert!(took < Duration::from_secs(5), "linger={linger}: {took:?}");
    }
    // The lingering logic was stopped by the sidecar (which still runs).
    let logic_left = || {
        s.leftovers()
            .into_iter()
            .any(|(_, cmd)| cmd.starts_with("sleep 60"))
    };
    assert!(
        sidecar_test_support::wait_for(Duration::from_secs(5), || !logic_left()),
        "the logic outlived its deleted task"
    );
}

/// An Arrow IPC stream of `batch` (stdin of `executor-shim run`).
fn ipc_stream(batch: &arrow::array::RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &batch.schema()).unwrap();
    w.write(batch).unwrap();
    w.finish().unwrap();
    drop(w);
    out
}

/// `executor-shim run` attached to a sidecar it did not start, stopped by
/// SIGTERM mid-task: it raises the task's `cancel_flag`, so the sidecar
/// stops the logic (its outcome says `cancelled: cancel_flag`) instead of
/// running it to the end for nobody.
#[test]
fn a_stopped_attached_run_cancels_its_task() {
    let s = Scratch::new("attachterm");
    let sc = RawSidecar::serve(
        &s,
        "v",
        &SidecarArgs::default(),
        &["sh", "-c", "exec sleep 60"],
    );
    let mut shim = Command::new(common::shim_bin())
        .args(["run", "--provider", "attach", "--volume"])
        .arg(sc.volume.root())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut shim.stdin.take().unwrap(),
        &ipc_stream(&common::batch(2, 0)),
    )
    .unwrap();
    let running = || {
        s.leftovers()
            .into_iter()
            .any(|(_, cmd)| cmd.starts_with("sleep 60"))
    };
    assert!(
        sidecar_test_support::wait_for(DONE, running),
        "{}",
        sc.log()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_exit(&mut shim, Duration::from_secs(10));
    if status.is_none() {
        let _ = shim.kill();
    }
    assert!(status.is_some(), "executor-shim run ignored SIGTERM");
    assert!(
        sidecar_test_support::wait_for(Duration::from_secs(5), || !running()),
        "the logic still runs; sidecar log:\n{}",
        sc.log()
    );
    assert!(sc.log().contains("cancel_flag"), "{}", sc.log());
}
