//! oneshot mode through the real binary: the Foundry executor flow and
//! everything that can go wrong with the command.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::time::{Duration, Instant};

use util::{processes_with, wait_until, Dir, Sidecar, LONG};

/// What an executor written for the Foundry example does, byte for byte:
/// stage infile.csv, touch start_flag, wait for done_flag, copy outfile.csv,
/// read logfile, touch close_flag.
#[test]
fn foundry_executor_flow() {
    let dir = Dir::new();
    let input: Vec<u8> = (0..5000)
        .map(|i| format!("{i},row {i}\n"))
        .collect::<String>()
        .into_bytes();
    std::fs::write(dir.join("infile.csv"), &input).unwrap();
    let (mut cmd, files) = Sidecar::command(&dir);
    // The Foundry image's ENTRYPOINT: `entrypoint -c "dd if=$SHARED_DIR/... of=..."`,
    // with SHARED_DIR from the image's ENV.
    cmd.env("SHARED_DIR", dir.path()).args([
        "-c",
        "dd if=$SHARED_DIR/infile.csv of=$SHARED_DIR/outfile.csv",
    ]);
    let sidecar = Sidecar::spawn(cmd, files);

    dir.touch("start_flag");
    let done = dir.wait_json("done_flag");
    assert_eq!(
        std::fs::read(dir.join("outfile.csv")).unwrap(),
        input,
        "outfile.csv differs from infile.csv"
    );
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["task_id"], "oneshot");
    assert_eq!(done["exit_code"], 0);
    assert!(
        done["stderr_tail"].as_str().unwrap().contains("records in"),
        "{done:#}"
    );
    assert!(
        done["cpu_ms"].is_u64() && done["max_rss_kib"].as_u64().unwrap() > 0,
        "{done:#}"
    );

    let log = dir.read("logfile");
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.len() >= 3,
        "dd prints three lines of statistics:\n{log}"
    );
    for line in &lines {
        let (ts, text) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("no timestamp: {line:?}"));
        assert!(ts.ends_with('Z'), "not UTC: {line:?}");
        humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(!text.is_empty());
    }
    assert!(lines.iter().any(|l| l.ends_with("records in")), "{log}");
    assert!(lines.iter().any(|l| l.ends_with("records out")), "{log}");

    let closed = Instant::now();
    dir.touch("close_flag");
    let ended = sidecar.wait(LONG);
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
    assert!(
        closed.elapsed() < Duration::from_secs(10),
        "slow to exit after close_flag"
    );
    // The lines are echoed to the container log too.
    assert!(ended.stdout.contains("records out"), "{}", ended.stdout);
}

#[test]
fn failing_command_reports_its_status_and_stderr() {
    let dir = Dir::new();
    let sidecar = Sidecar::start(&dir, &["-c", "echo starting; echo 'it broke' >&2; exit 3"]);
    dir.touch("start_flag");
    let done = dir.wait_json("done_flag");
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["exit_code"], 3, "{done:#}");
    assert!(
        done["reason"].as_str().unwrap().contains("status 3"),
        "{done:#}"
    );
    assert!(
        done["stderr_tail"].as_str().unwrap().contains("it broke"),
        "{done:#}"
    );
    assert!(dir.read("logfile").contains(" it broke\n"));
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(3));
}

#[test]
fn missing_program_gets_a_done_flag_with_the_reason() {
    let dir = Dir::new();
    let sidecar = Sidecar::start(&dir, &["--", "nope-no-such-program"]);
    dir.touch("start_flag");
    let done = dir.wait_json("done_flag");
    assert_eq!(done["status"], "failed", "{done:#}");
    let reason = done["reason"].as_str().unwrap();
    assert!(
        reason.contains("cannot run \"nope-no-such-program\"")
            && reason.contains("No such file or directory"),
        "{reason}"
    );
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(127));
}

#[test]
fn task_spec_timeout_and_env_apply() {
    let dir = Dir::new();
    let sidecar = Sidecar::start(
        &dir,
        &[
            "--grace",
            "1s",
            "-c",
            "echo \"greeting=$GREETING\"; exec sleep 60",
        ],
    );
    dir.write(
        "start_flag",
        r#"{"timeout_ms": 500, "env": {"GREETING": "hello"}}"#,
    );
    let done = dir.wait_json("done_flag");
    assert_eq!(done["status"], "timed_out", "{done:#}");
    assert_eq!(done["signal"], 15, "{done:#}");
    assert!(
        done["reason"]
            .as_str()
            .unwrap()
            .contains("timed out after 500ms"),
        "{done:#}"
    );
    assert!(dir.read("logfile").contains(" greeting=hello\n"));
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(128 + 15));
}

#[test]
fn malformed_start_flag_is_a_failed_outcome() {
    let dir = Dir::new();
    let sidecar = Sidecar::start(&dir, &["--", "true"]);
    dir.write("start_flag", "{not json");
    let done = dir.wait_json("done_flag");
    assert_eq!(done["status"], "failed");
    assert!(
        done["reason"]
            .as_str()
            .unwrap()
            .contains("malformed task spec JSON"),
        "{done:#}"
    );
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(70));
}

/// SIGTERM to the entrypoint while the logic runs: the logic's group gets
/// TERM, a grandchild that ignores it gets KILL after the grace, the outcome
/// says cancelled, the exit status is 143 and nothing is left behind.
#[test]
fn sigterm_is_forwarded_escalated_and_leaves_nothing() {
    let dir = Dir::new();
    let script = "sh -c 'trap \"\" TERM; echo grandchild-up; while :; do sleep 0.1; done' & \
                  echo child-up; wait";
    let sidecar = Sidecar::start(&dir, &["--grace", "1s", "-c", script]);
    let marker = sidecar.marker.clone();
    dir.touch("start_flag");
    wait_until("both processes to start", LONG, || {
        std::fs::read_to_string(dir.join("logfile"))
            .map(|l| l.contains("child-up") && l.contains("grandchild-up"))
            .unwrap_or(false)
    });
    let before = processes_with(&marker);
    assert!(
        before.len() >= 3,
        "entrypoint, sh and the grandchild: {before:?}"
    );
    let sent = Instant::now();
    sidecar.signal(libc::SIGTERM);
    let ended = sidecar.wait(LONG);
    assert_eq!(ended.code(), Some(143), "{}", ended.stderr);
    assert!(
        sent.elapsed() >= Duration::from_millis(900),
        "exited before the grace: KILL was not needed?"
    );
    assert!(ended.stderr.contains("SIGKILL"), "{}", ended.stderr);
    let done = dir.wait_json("done_flag");
    assert_eq!(done["status"], "cancelled", "{done:#}");
    assert!(
        done["reason"].as_str().unwrap().contains("SIGTERM"),
        "{done:#}"
    );
    let left = processes_with(&marker);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn sigterm_while_waiting_for_start() {
    let dir = Dir::new();
    let sidecar = Sidecar::start(&dir, &["--", "true"]);
    wait_until("the sidecar to wait", LONG, || {
        sidecar.stderr_so_far().contains("waiting for start_flag")
    });
    sidecar.signal(libc::SIGINT);
    let ended = sidecar.wait(LONG);
    assert_eq!(ended.code(), Some(130), "{}", ended.stderr);
    assert!(!dir.exists("done_flag"));
}

#[test]
fn descendants_left_by_a_successful_command_are_killed() {
    let dir = Dir::new();
    // setsid-free escape: a background process in another process group.
    let sidecar = Sidecar::start(
        &dir,
        &[
            "-c",
            "perl -e 'setpgrp(0,0); exec \"sleep\", \"300\"' >/dev/null 2>&1 & echo started",
        ],
    );
    let marker = sidecar.marker.clone();
    dir.touch("start_flag");
    let done = dir.wait_json("done_flag");
    assert_eq!(done["status"], "succeeded", "{done:#}");
    dir.touch("close_flag");
    let ended = sidecar.wait(LONG);
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
    let left = processes_with(&marker);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn failing_init_script_stops_start_up() {
    let dir = Dir::new();
    let script = dir.logs().join("init.sh");
    std::fs::write(&script, "echo init-ran >&2\nexit 3\n").unwrap();
    let sidecar = Sidecar::start(
        &dir,
        &["--init-script", script.to_str().unwrap(), "-c", "touch ran"],
    );
    let ended = sidecar.wait(LONG);
    assert_eq!(ended.code(), Some(71), "{}", ended.stderr);
    let want = format!("init script {} failed with exit status 3", script.display());
    assert!(ended.stderr.contains(&want), "{}", ended.stderr);
    assert!(ended.stderr.contains("init-ran"));
    assert!(!dir.exists("ran"));
}

#[test]
fn init_scripts_run_in_order_before_the_task() {
    let dir = Dir::new();
    let a = dir.logs().join("a.sh");
    let b = dir.logs().join("b.sh");
    std::fs::write(&a, "echo a >> \"$SHARED_DIR/order\"\n").unwrap();
    std::fs::write(&b, "echo b >> \"$SHARED_DIR/order\"\n").unwrap();
    let sidecar = Sidecar::start(
        &dir,
        &[
            "--init-script",
            a.to_str().unwrap(),
            "--init-script",
            b.to_str().unwrap(),
            "-c",
            "echo task >> order",
        ],
    );
    dir.touch("start_flag");
    let done = dir.wait_json("done_flag");
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(dir.read("order"), "a\nb\ntask\n");
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(0));
}

/// As PID 1 of a fresh PID namespace, orphans that exit are reaped.
#[test]
fn zombies_are_reaped_as_pid_1() {
    let probe = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "SKIPPED: unshare --pid is not permitted here: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIPPED: unshare is not available: {e}");
            return;
        }
    }
    let dir = Dir::new();
    // Orphans: each background subshell forks a child and exits at once,
    // so its child is re-parented to PID 1 (us) and exits later. Then the
    // logic reports what it sees: zombies in the namespace (state Z).
    let logic = "for i in 1 2 3 4 5; do (sleep 0.2 &) ; done; sleep 1.5; \
                 echo pid1=$(cat /proc/1/comm); \
                 z=0; for s in /proc/[0-9]*/stat; do \
                   read -r l < \"$s\" 2>/dev/null || continue; \
                   case \"${l##*) }\" in Z*) z=$((z+1));; esac; \
                 done; echo zombies=$z";
    let (_, files) = Sidecar::command(&dir);
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(util::bin())
        .arg("--volume")
        .arg(dir.path())
        .args(["-c", logic])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("SIDECAR_TEST_MARKER", &files.marker)
        .stdin(std::process::Stdio::null());
    let sidecar = Sidecar::spawn(cmd, files);
    dir.touch("start_flag");
    let done = dir.wait_json("done_flag");
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let log = dir.read("logfile");
    assert!(
        log.contains("pid1=sidecar-entrypo"),
        "the entrypoint is not PID 1:\n{log}"
    );
    assert!(
        log.contains(" zombies=0\n"),
        "zombies remain in the namespace:\n{log}"
    );
    dir.touch("close_flag");
    let ended = sidecar.wait(LONG);
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
}

/// The signal we receive is the one the logic gets.
#[test]
fn sigint_is_forwarded_as_sigint() {
    let dir = Dir::new();
    let script = "trap 'echo got-INT; exit 5' INT; trap 'echo got-TERM; exit 6' TERM; \
                  echo up; while :; do sleep 0.1; done";
    let sidecar = Sidecar::start(&dir, &["--grace", "5s", "-c", script]);
    dir.touch("start_flag");
    wait_until("the logic to start", LONG, || {
        std::fs::read_to_string(dir.join("logfile")).is_ok_and(|l| l.contains(" up\n"))
    });
    sidecar.signal(libc::SIGINT);
    let ended = sidecar.wait(LONG);
    assert_eq!(ended.code(), Some(130), "{}", ended.stderr);
    assert!(
        dir.read("logfile").contains(" got-INT\n"),
        "{}",
        dir.read("logfile")
    );
    let done = dir.wait_json("done_flag");
    assert_eq!(done["status"], "cancelled", "{done:#}");
    assert_eq!(done["exit_code"], 5, "{done:#}");
    assert!(
        done["reason"].as_str().unwrap().contains("SIGINT"),
        "{done:#}"
    );
}

#[test]
fn usage_errors_exit_2_at_once() {
    let dir = Dir::new();
    for args in [
        &["--mode", "oneshot"][..],
        &["--bogus-flag"][..],
        &["--grace", "soon", "--", "true"][..],
    ] {
        let ended = Sidecar::start(&dir, args).wait(LONG);
        assert_eq!(ended.code(), Some(2), "{args:?}: {}", ended.stderr);
        assert!(!ended.stderr.is_empty(), "{args:?}: no message");
    }
}
