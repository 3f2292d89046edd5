//! serve mode through the real binary: many tasks, their flags, and every
//! way a task or the sidecar ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sidecar_core::liveness::Beater;
use util::{processes_with, wait_until, Dir, Sidecar, LONG};

/// Writes `body` as a shell script outside the volume and returns its path.
fn script(dir: &Dir, name: &str, body: &str) -> PathBuf {
    let p = dir.logs().join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn serve(dir: &Dir, extra: &[&str], logic: &Path) -> Sidecar {
    let mut args = vec!["--mode", "serve"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", logic.to_str().unwrap()]);
    let s = Sidecar::start(dir, &args);
    dir.wait_for("sidecar/ready");
    s
}

fn stage(dir: &Dir, id: &str, input: &str, spec: &str) {
    dir.write(&format!("tasks/{id}/input/part.csv"), input);
    dir.write(&format!("tasks/{id}/start_flag"), spec);
}

fn done(dir: &Dir, id: &str) -> Value {
    dir.wait_json(&format!("tasks/{id}/done_flag"))
}

fn reason(v: &Value) -> &str {
    v["reason"].as_str().unwrap_or("")
}

#[test]
fn tasks_run_concurrently_with_their_environment() {
    let dir = Dir::new();
    let logic = script(
        &dir,
        "logic.sh",
        r#"set -e
mkdir -p "$SHARED_DIR/running"; touch "$SHARED_DIR/running/$SIDECAR_TASK_ID"
i=0; while [ "$(ls "$SHARED_DIR/running" | wc -l)" -lt 2 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
ls "$SHARED_DIR/running" | wc -l >> "$SHARED_DIR/concurrency"
sleep 0.3
rm "$SHARED_DIR/running/$SIDECAR_TASK_ID"
env | grep -E '^(SIDECAR_(TASK_ID|TASK_DIR|INPUT|INPUT_DIR|OUTPUT|OUTPUT_DIR|PROGRESS)|SHARED_DIR|CUSTOM)=' | sort
echo "pwd=$(pwd)"
tr a-z A-Z < "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"
echo "progress 1/1" >> "$SIDECAR_PROGRESS"
echo "stderr of $SIDECAR_TASK_ID" >&2
"#,
    );
    let sidecar = serve(&dir, &["--parallel", "2"], &logic);
    let ready: Value = serde_json::from_str(&dir.read("sidecar/ready")).unwrap();
    assert_eq!(ready["parallelism"], 2, "{ready}");
    assert_eq!(ready["protocol"], 1);
    assert_eq!(ready["pid"], sidecar.pid());
    let ids = ["p0-a0", "p1-a0", "p2-a0", "p3-a0"];
    for id in ids {
        stage(
            &dir,
            id,
            &format!("row of {id}\n"),
            r#"{"input":{"format":"csv"},"env":{"CUSTOM":"yes"}}"#,
        );
    }
    for id in ids {
        let d = done(&dir, id);
        assert_eq!(d["status"], "succeeded", "{d:#}");
        assert_eq!(d["task_id"], id);
        let outputs = d["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), 1, "{d:#}");
        assert_eq!(outputs[0]["path"], "part.csv");
        let want = format!("ROW OF {}\n", id.to_uppercase());
        assert_eq!(outputs[0]["bytes"], want.len());
        assert_eq!(dir.read(&format!("tasks/{id}/output/part.csv")), want);
        assert_eq!(d["stderr_tail"], format!("stderr of {id}\n"));
        assert_eq!(
            dir.read(&format!("tasks/{id}/stderr")),
            format!("stderr of {id}\n")
        );
        let task = dir.join(&format!("tasks/{id}"));
        let t = task.display();
        let want_env = format!(
            "CUSTOM=yes\nSHARED_DIR={v}\nSIDECAR_INPUT={t}/input/part.csv\nSIDECAR_INPUT_DIR={t}/input\n\
             SIDECAR_OUTPUT={t}/output/part.csv\nSIDECAR_OUTPUT_DIR={t}/output\nSIDECAR_PROGRESS={t}/progress\n\
             SIDECAR_TASK_DIR={t}\nSIDECAR_TASK_ID={id}\npwd={t}\n",
            v = dir.path().display()
        );
        assert_eq!(dir.read(&format!("tasks/{id}/stdout")), want_env);
        assert_eq!(dir.read(&format!("tasks/{id}/progress")), "progress 1/1\n");
    }
    let counts: Vec<u32> = dir
        .read("concurrency")
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 4);
    assert!(
        counts.iter().all(|&c| c <= 2),
        "more than --parallel at once: {counts:?}"
    );
    assert!(counts.contains(&2), "never two at once: {counts:?}");
    for id in ids {
        dir.touch(&format!("tasks/{id}/close_flag"));
    }
    for id in ids {
        let task = dir.join(&format!("tasks/{id}"));
        wait_until(&format!("{} to be removed", task.display()), LONG, || {
            !task.exists()
        });
    }
    dir.touch("close_flag");
    let ended = sidecar.wait(LONG);
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
}

#[test]
fn cancel_flag_stops_the_task() {
    let dir = Dir::new();
    let logic = script(&dir, "logic.sh", "echo started\nexec sleep 60\n");
    let sidecar = serve(&dir, &["--grace", "1s"], &logic);
    stage(&dir, "p0-a0", "x\n", "");
    wait_until("the logic to start", LONG, || {
        std::fs::read_to_string(dir.join("tasks/p0-a0/stdout")).is_ok_and(|s| s.contains("started"))
    });
    dir.touch("tasks/p0-a0/cancel_flag");
    let d = done(&dir, "p0-a0");
    assert_eq!(d["status"], "cancelled", "{d:#}");
    assert_eq!(d["signal"], 15, "{d:#}");
    assert!(reason(&d).contains("cancel_flag"), "{d:#}");
    let marker = sidecar.marker.clone();
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(0));
    assert!(processes_with(&marker).is_empty());
}

#[test]
fn timeout_kills_after_the_grace() {
    let dir = Dir::new();
    // Ignores TERM: only KILL ends it.
    let logic = script(
        &dir,
        "logic.sh",
        "trap '' TERM\necho started\nwhile :; do sleep 0.1; done\n",
    );
    let sidecar = serve(&dir, &["--timeout", "500ms", "--grace", "1s"], &logic);
    stage(&dir, "p0-a0", "x\n", "");
    let d = done(&dir, "p0-a0");
    assert_eq!(d["status"], "timed_out", "{d:#}");
    assert_eq!(d["signal"], 9, "{d:#}");
    assert!(reason(&d).contains("timed out after 500ms"), "{d:#}");
    assert!(
        d["duration_ms"].as_u64().unwrap() >= 1400,
        "KILL came before the grace: {d:#}"
    );
    // A spec's timeout_ms takes precedence over --timeout.
    let logic_ok = "p1-a0";
    dir.write(&format!("tasks/{logic_ok}/input/part.csv"), "x\n");
    dir.write(
        &format!("tasks/{logic_ok}/start_flag"),
        r#"{"timeout_ms": 200}"#,
    );
    let d = done(&dir, logic_ok);
    assert!(reason(&d).contains("timed out after 200ms"), "{d:#}");
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(0));
}

#[test]
fn bad_start_flags_fail_the_task_without_running_it() {
    let dir = Dir::new();
    let logic = script(&dir, "logic.sh", "touch \"$SIDECAR_TASK_DIR/ran\"\n");
    let sidecar = serve(&dir, &[], &logic);
    stage(&dir, "malformed", "x\n", "{\"timeout_ms\": ");
    let mut big = String::from("{\"env\":{\"A\":\"");
    big.push_str(&"x".repeat(2 << 20));
    big.push_str("\"}}");
    stage(&dir, "oversized", "x\n", &big);
    stage(
        &dir,
        "escape",
        "x\n",
        r#"{"input":{"files":["../../../etc/passwd"]}}"#,
    );
    stage(&dir, "future", "x\n", r#"{"protocol": 99}"#);
    for (id, want) in [
        ("malformed", "malformed task spec JSON"),
        ("oversized", "over the 1048576-byte limit"),
        ("escape", "refused path"),
        ("future", "protocol version 99 is not supported"),
    ] {
        let d = done(&dir, id);
        assert_eq!(d["status"], "failed", "{id}: {d:#}");
        assert!(reason(&d).contains(want), "{id}: {d:#}");
        assert!(
            !dir.exists(&format!("tasks/{id}/ran")),
            "{id}: the logic ran"
        );
    }
    // An invalid task directory name is skipped; the sidecar goes on.
    dir.write("tasks/bad name/start_flag", "");
    stage(&dir, "good", "x\n", "");
    assert_eq!(done(&dir, "good")["status"], "succeeded");
    assert!(!dir.exists("tasks/bad name/done_flag"));
    dir.touch("close_flag");
    let ended = sidecar.wait(LONG);
    assert_eq!(ended.code(), Some(0));
    assert!(
        ended.stderr.contains("invalid task id \"bad name\""),
        "{}",
        ended.stderr
    );
}

#[test]
fn outputs_must_be_regular_files() {
    let dir = Dir::new();
    let logic = script(
        &dir,
        "logic.sh",
        "case $SIDECAR_TASK_ID in\n\
         link*) ln -s /etc/passwd \"$SIDECAR_OUTPUT\";;\n\
         *) echo data > \"$SIDECAR_OUTPUT_DIR/extra.txt\";;\n\
         esac\n",
    );
    let sidecar = serve(&dir, &[], &logic);
    stage(&dir, "link", "x\n", r#"{"input":{"format":"csv"}}"#);
    let d = done(&dir, "link");
    assert_eq!(d["status"], "failed", "{d:#}");
    assert!(
        reason(&d).contains("part.csv") && reason(&d).contains("symbolic link"),
        "{d:#}"
    );
    assert_eq!(d["outputs"], serde_json::json!([]));

    // Stream tasks: the executor's FIFO at output/part.<ext> is not listed;
    // anywhere else a FIFO is refused.
    for (id, spec) in [("fifo-stream", r#"{"stream": true}"#), ("fifo-plain", "{}")] {
        dir.write(&format!("tasks/{id}/input/part.arrows"), "");
        std::fs::create_dir_all(dir.join(&format!("tasks/{id}/output"))).unwrap();
        let fifo = dir.join(&format!("tasks/{id}/output/part.arrows"));
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        dir.write(&format!("tasks/{id}/start_flag"), spec);
    }
    let d = done(&dir, "fifo-stream");
    assert_eq!(d["status"], "succeeded", "{d:#}");
    let paths: Vec<&str> = d["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["extra.txt"]);
    let d = done(&dir, "fifo-plain");
    assert_eq!(d["status"], "failed", "{d:#}");
    assert!(reason(&d).contains("special file"), "{d:#}");
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(0));
}

#[test]
fn stale_lease_cancels_tasks_and_exits_when_orphaned() {
    let dir = Dir::new();
    let logic = script(&dir, "logic.sh", "echo started\nexec sleep 60\n");
    // Written once, never refreshed: the executor is gone.
    dir.write(
        "executor/lease",
        r#"{"seq":0,"pid":1,"at":"2026-01-01T00:00:00Z"}"#,
    );
    let sidecar = serve(
        &dir,
        &[
            "--lease-timeout",
            "1s",
            "--exit-on-orphan",
            "--grace",
            "1s",
            "--parallel",
            "2",
        ],
        &logic,
    );
    let marker = sidecar.marker.clone();
    stage(&dir, "p0-a0", "x\n", "");
    stage(&dir, "p1-a0", "x\n", "");
    for id in ["p0-a0", "p1-a0"] {
        let d = done(&dir, id);
        assert_eq!(d["status"], "cancelled", "{d:#}");
        assert!(reason(&d).contains("executor lease stale for"), "{d:#}");
    }
    let ended = sidecar.wait(LONG);
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
    assert!(processes_with(&marker).is_empty());
}

#[test]
fn a_lease_kept_fresh_keeps_tasks_alive() {
    let dir = Dir::new();
    let logic = script(&dir, "logic.sh", "sleep 2\necho finished\n");
    dir.write("executor/lease", r#"{"seq":0}"#);
    let sidecar = serve(&dir, &["--lease-timeout", "1s", "--exit-on-orphan"], &logic);
    stage(&dir, "p0-a0", "x\n", "");
    let beater = Beater::start(dir.join("executor/lease"), Duration::from_millis(100)).unwrap();
    let d = done(&dir, "p0-a0");
    assert_eq!(d["status"], "succeeded", "{d:#}");
    dir.touch("close_flag");
    let ended = sidecar.wait(LONG);
    drop(beater);
    assert_eq!(ended.code(), Some(0));
}

#[test]
fn root_close_flag_drains_in_flight_tasks() {
    let dir = Dir::new();
    let logic = script(
        &dir,
        "logic.sh",
        "echo started\nsleep 1\necho done > \"$SIDECAR_OUTPUT\"\n",
    );
    let sidecar = serve(&dir, &[], &logic);
    stage(&dir, "p0-a0", "x\n", "");
    wait_until("the logic to start", LONG, || {
        std::fs::read_to_string(dir.join("tasks/p0-a0/stdout")).is_ok_and(|s| s.contains("started"))
    });
    dir.touch("close_flag");
    let ended = sidecar.wait(LONG);
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
    // The in-flight task finished and recorded its outcome; its directory
    // stays for the executor to collect (no close_flag was awaited).
    let d = done(&dir, "p0-a0");
    assert_eq!(d["status"], "succeeded", "{d:#}");
    // An empty spec: the output follows the staged input's format.
    assert_eq!(d["outputs"][0]["path"], "part.csv");
}

#[test]
fn sigterm_cancels_in_flight_tasks_and_exits_143() {
    let dir = Dir::new();
    let logic = script(&dir, "logic.sh", "echo started\nexec sleep 60\n");
    let sidecar = serve(&dir, &["--grace", "1s", "--parallel", "1"], &logic);
    let marker = sidecar.marker.clone();
    stage(&dir, "p0-a0", "x\n", "");
    wait_until("the logic to start", LONG, || {
        std::fs::read_to_string(dir.join("tasks/p0-a0/stdout")).is_ok_and(|s| s.contains("started"))
    });
    // Queued behind the first (one slot).
    stage(&dir, "p1-a0", "x\n", "");
    wait_until("the second task to be discovered", LONG, || {
        sidecar
            .stderr_so_far()
            .contains("task discovered task=p1-a0")
    });
    sidecar.signal(libc::SIGTERM);
    let ended = sidecar.wait(LONG);
    assert_eq!(ended.code(), Some(143), "{}", ended.stderr);
    let d = done(&dir, "p0-a0");
    assert_eq!(d["status"], "cancelled", "{d:#}");
    assert_eq!(d["signal"], 15, "{d:#}");
    assert!(reason(&d).contains("SIGTERM"), "{d:#}");
    let d = done(&dir, "p1-a0");
    assert_eq!(d["status"], "cancelled", "{d:#}");
    assert!(
        reason(&d).contains("before it started") && reason(&d).contains("SIGTERM"),
        "{d:#}"
    );
    assert!(!dir.exists("tasks/p1-a0/stdout"), "the queued task ran");
    assert!(processes_with(&marker).is_empty());
}

/// The kubelet stops a sidecar with SIGTERM. With --exit-zero-on-sigterm a
/// stop in which every task recorded its outcome exits 0 (a pod's container
/// that exits non-zero fails the executor under Spark's checkAllContainers),
/// and the tasks still say they were cancelled: a logic that ignores TERM
/// is killed after the grace and recorded too.
#[test]
fn exit_zero_on_sigterm_after_a_clean_stop() {
    let dir = Dir::new();
    let logic = script(&dir, "logic.sh", "trap '' TERM\necho started\nsleep 60\n");
    let flags = ["--grace", "1s", "--parallel", "2", "--exit-zero-on-sigterm"];
    let sidecar = serve(&dir, &flags, &logic);
    let marker = sidecar.marker.clone();
    for id in ["p0-a0", "p1-a0"] {
        stage(&dir, id, "x\n", "");
        wait_until("the logic to start", LONG, || {
            std::fs::read_to_string(dir.join(&format!("tasks/{id}/stdout")))
                .is_ok_and(|s| s.contains("started"))
        });
    }
    sidecar.signal(libc::SIGTERM);
    let ended = sidecar.wait(LONG);
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
    for id in ["p0-a0", "p1-a0"] {
        let d = done(&dir, id);
        assert_eq!(d["status"], "cancelled", "{d:#}");
        assert!(reason(&d).contains("SIGTERM"), "{d:#}");
    }
    assert!(processes_with(&marker).is_empty());

    // oneshot exits with its command's status: the flag is refused there.
    let oneshot = Sidecar::start(&dir, &["--exit-zero-on-sigterm", "--", "true"]);
    let ended = oneshot.wait(LONG);
    assert_eq!(ended.code(), Some(2), "{}", ended.stderr);
    assert!(
        ended.stderr.contains("applies to --mode serve"),
        "{}",
        ended.stderr
    );
}

#[test]
fn a_removed_task_directory_is_forgotten() {
    let dir = Dir::new();
    let logic = script(&dir, "logic.sh", "echo started\nexec sleep 60\n");
    let sidecar = serve(&dir, &["--grace", "1s", "--parallel", "1"], &logic);
    stage(&dir, "gone", "x\n", "");
    wait_until("the logic to start", LONG, || {
        std::fs::read_to_string(dir.join("tasks/gone/stdout")).is_ok_and(|s| s.contains("started"))
    });
    std::fs::remove_dir_all(dir.join("tasks/gone")).unwrap();
    // The slot is free again: the next task runs.
    let logic_ok = dir.join("tasks/next");
    stage(&dir, "next", "x\n", r#"{"timeout_ms": 300}"#);
    let d = done(&dir, "next");
    assert_eq!(d["status"], "timed_out", "{d:#}");
    assert!(!dir.exists("tasks/gone"), "{}", logic_ok.display());
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(0));
}

#[test]
fn heartbeat_is_refreshed() {
    let dir = Dir::new();
    let logic = script(&dir, "logic.sh", "true\n");
    let sidecar = serve(&dir, &["--heartbeat", "50ms"], &logic);
    let first = dir.read("sidecar/heartbeat");
    wait_until("the heartbeat to change", LONG, || {
        std::fs::read_to_string(dir.join("sidecar/heartbeat")).is_ok_and(|s| s != first)
    });
    let pulse: Value = serde_json::from_str(&dir.read("sidecar/heartbeat")).unwrap();
    assert_eq!(pulse["pid"], sidecar.pid());
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(0));
}

#[test]
fn failing_init_script_means_no_ready_and_no_task() {
    let dir = Dir::new();
    let init = script(&dir, "init.sh", "exit 3\n");
    let logic = script(&dir, "logic.sh", "touch \"$SIDECAR_TASK_DIR/ran\"\n");
    stage(&dir, "p0-a0", "x\n", "");
    let sidecar = Sidecar::start(
        &dir,
        &[
            "--mode",
            "serve",
            "--init-script",
            init.to_str().unwrap(),
            "--",
            "sh",
            logic.to_str().unwrap(),
        ],
    );
    let ended = sidecar.wait(LONG);
    assert_eq!(ended.code(), Some(71), "{}", ended.stderr);
    assert!(
        ended.stderr.contains(&format!(
            "init script {} failed with exit status 3",
            init.display()
        )),
        "{}",
        ended.stderr
    );
    assert!(!dir.exists("sidecar/ready"));
    assert!(!dir.exists("tasks/p0-a0/done_flag"));
    assert!(!dir.exists("tasks/p0-a0/ran"));
}

#[test]
fn a_missing_program_fails_each_task_with_the_reason() {
    let dir = Dir::new();
    let sidecar = Sidecar::start(&dir, &["--mode", "serve", "--", "/nonexistent/logic"]);
    dir.wait_for("sidecar/ready");
    stage(&dir, "p0-a0", "x\n", "");
    let d = done(&dir, "p0-a0");
    assert_eq!(d["status"], "failed", "{d:#}");
    assert!(
        reason(&d).contains("cannot run \"/nonexistent/logic\": No such file or directory"),
        "{d:#}"
    );
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(0));
}

#[test]
fn a_fifo_start_flag_fails_the_task_instead_of_blocking() {
    let dir = Dir::new();
    let logic = script(&dir, "logic.sh", "touch \"$SIDECAR_TASK_DIR/ran\"\n");
    let sidecar = serve(&dir, &[], &logic);
    std::fs::create_dir_all(dir.join("tasks/fifo/input")).unwrap();
    let c = std::ffi::CString::new(dir.join("tasks/fifo/start_flag").to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let d = done(&dir, "fifo");
    assert_eq!(d["status"], "failed", "{d:#}");
    assert!(reason(&d).contains("not a regular file"), "{d:#}");
    // The sidecar is not stuck: the next task runs.
    stage(&dir, "next", "x\n", "");
    assert_eq!(done(&dir, "next")["status"], "succeeded");
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(0));
}

/// A task that is done already (a restarted sidecar finds it) is never run
/// again; its close flag still removes it.
#[test]
fn a_done_task_is_not_run_twice() {
    let dir = Dir::new();
    let logic = script(&dir, "logic.sh", "touch \"$SIDECAR_TASK_DIR/ran\"\n");
    stage(&dir, "old", "x\n", "");
    dir.write("tasks/old/done_flag", "{}");
    let sidecar = serve(&dir, &[], &logic);
    stage(&dir, "new", "x\n", "");
    assert_eq!(done(&dir, "new")["status"], "succeeded");
    assert!(dir.exists("tasks/new/ran"));
    assert!(!dir.exists("tasks/old/ran"), "a done task ran again");
    dir.touch("tasks/old/close_flag");
    let old = dir.join("tasks/old");
    wait_until("the old task to be removed", LONG, || !old.exists());
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(0));
}

#[test]
fn polling_mode_works_without_inotify() {
    let dir = Dir::new();
    let logic = script(
        &dir,
        "logic.sh",
        "cat \"$SIDECAR_INPUT\" > \"$SIDECAR_OUTPUT\"\n",
    );
    let sidecar = serve(&dir, &["--watch", "poll", "--poll", "10ms"], &logic);
    stage(&dir, "p0-a0", "polled\n", r#"{"input":{"format":"csv"}}"#);
    let d = done(&dir, "p0-a0");
    assert_eq!(d["status"], "succeeded", "{d:#}");
    assert_eq!(dir.read("tasks/p0-a0/output/part.csv"), "polled\n");
    dir.touch("tasks/p0-a0/close_flag");
    let task = dir.join("tasks/p0-a0");
    wait_until("the task to be removed", LONG, || !task.exists());
    dir.touch("close_flag");
    let ended = sidecar.wait(LONG);
    assert_eq!(ended.code(), Some(0));
    assert!(ended.stderr.contains("polling=true"), "{}", ended.stderr);
}

/// Without --exit-on-orphan a stale lease cancels what runs, and the
/// sidecar goes on serving.
#[test]
fn stale_lease_without_exit_on_orphan_keeps_serving() {
    let dir = Dir::new();
    let logic = script(
        &dir,
        "logic.sh",
        "[ \"$SIDECAR_TASK_ID\" = quick ] && exit 0\nexec sleep 60\n",
    );
    dir.write("executor/lease", r#"{"seq":0}"#);
    let sidecar = serve(&dir, &["--lease-timeout", "1s", "--grace", "1s"], &logic);
    stage(&dir, "slow", "x\n", "");
    let d = done(&dir, "slow");
    assert_eq!(d["status"], "cancelled", "{d:#}");
    assert!(reason(&d).contains("executor lease stale for"), "{d:#}");
    // The executor comes back: the lease moves again, and keeps moving.
    let beater = Beater::start(dir.join("executor/lease"), Duration::from_millis(100)).unwrap();
    stage(&dir, "quick", "x\n", "");
    let d = done(&dir, "quick");
    drop(beater);
    assert_eq!(d["status"], "succeeded", "{d:#}");
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(0));
}

/// An executor that knows only the volume layout stages one CSV file and
/// writes an empty start flag: the logic gets that file, and the output
/// follows its format. A spec that names a file that is not staged fails
/// the task without running the logic, naming the file; several staged
/// files and no spec leave `SIDECAR_INPUT` unset.
#[test]
fn an_empty_start_flag_gets_what_was_staged() {
    let dir = Dir::new();
    let logic = script(
        &dir,
        "logic.sh",
        r#"touch "$SIDECAR_TASK_DIR/ran"
if [ -z "${SIDECAR_INPUT+set}" ]; then ls "$SIDECAR_INPUT_DIR" > "$SIDECAR_OUTPUT"; exit 0; fi
tr a-z A-Z < "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"
"#,
    );
    let sidecar = serve(&dir, &[], &logic);
    dir.write("tasks/one/input/trips.csv", "a,b\n1,2\n");
    dir.touch("tasks/one/start_flag");
    let d = done(&dir, "one");
    assert_eq!(d["status"], "succeeded", "{d:#}");
    assert_eq!(d["outputs"][0]["path"], "part.csv", "{d:#}");
    assert_eq!(dir.read("tasks/one/output/part.csv"), "A,B\n1,2\n");

    dir.write("tasks/missing/input/part.csv", "x\n");
    dir.write(
        "tasks/missing/start_flag",
        r#"{"input":{"format":"csv","files":["part.csv","extra.csv"]}}"#,
    );
    let d = done(&dir, "missing");
    assert_eq!(d["status"], "failed", "{d:#}");
    assert!(
        reason(&d).contains("\"extra.csv\"") && reason(&d).contains("not staged"),
        "{d:#}"
    );
    assert!(!dir.exists("tasks/missing/ran"), "the logic ran");

    dir.write("tasks/two/input/a.jsonl", "{}\n");
    dir.write("tasks/two/input/b.jsonl", "{}\n");
    dir.touch("tasks/two/start_flag");
    let d = done(&dir, "two");
    assert_eq!(d["status"], "succeeded", "{d:#}");
    assert_eq!(d["outputs"][0]["path"], "part.jsonl", "{d:#}");
    assert_eq!(
        dir.read("tasks/two/output/part.jsonl"),
        "a.jsonl\nb.jsonl\n"
    );
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(0));
}

/// A relative `--volume` is made absolute at start: the logic runs in its
/// task directory, and the paths it is given still name the volume.
#[test]
fn a_relative_volume_hands_the_logic_absolute_paths() {
    let dir = Dir::new();
    let logic = script(
        &dir,
        "logic.sh",
        "cat \"$SIDECAR_INPUT\" > \"$SIDECAR_OUTPUT\"\necho \"$SHARED_DIR\" >&2\n",
    );
    let (mut cmd, files) = Sidecar::command(&dir);
    cmd.current_dir(dir.path().parent().unwrap())
        .arg("--volume")
        .arg(dir.path().file_name().unwrap())
        .args(["--mode", "serve", "--", "sh", logic.to_str().unwrap()]);
    let sidecar = Sidecar::spawn(cmd, files);
    dir.wait_for("sidecar/ready");
    stage(&dir, "rel", "x\n", "");
    let d = done(&dir, "rel");
    assert_eq!(d["status"], "succeeded", "{d:#}");
    assert_eq!(d["stderr_tail"], format!("{}\n", dir.path().display()));
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(0));
}

/// A process holding the exclusive lock on `path` (as an executor-side
/// owner or user does), until killed.
fn lock_holder(path: &Path, mode: &str) -> std::process::Child {
    let child = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(r#"exec 9<"$0"; flock {mode} 9; exec sleep 120"#),
        ])
        .arg(path)
        .spawn()
        .unwrap();
    // Held once a non-blocking exclusive attempt fails.
    wait_until(&format!("{} to be locked", path.display()), LONG, || {
        !std::process::Command::new("flock")
            .args(["-x", "-n"])
            .arg(path)
            .arg("true")
            .status()
            .unwrap()
            .success()
    });
    child
}

/// A task whose executor-side owner dies (a Spark worker killed for a
/// cancel) is stopped and its directory reclaimed promptly, through the
/// volume alone; the other tasks go on.
#[test]
fn a_task_whose_owner_dies_is_stopped_and_reclaimed() {
    let dir = Dir::new();
    let logic = script(
        &dir,
        "logic.sh",
        "echo $$ > \"$SIDECAR_TASK_DIR/pid\"\nexec sleep 60\n",
    );
    let sidecar = serve(&dir, &["--parallel", "2"], &logic);
    let mut holders = Vec::new();
    for id in ["doomed", "other"] {
        // As the shim claims a task: the owner file appears already locked.
        dir.touch(&format!("tasks/{id}/.owner.tmp"));
        let tmp = dir.join(&format!("tasks/{id}/.owner.tmp"));
        holders.push(lock_holder(&tmp, "-x"));
        std::fs::rename(&tmp, dir.join(&format!("tasks/{id}/owner"))).unwrap();
        dir.write(&format!("tasks/{id}/input/part.csv"), "x\n");
        dir.touch(&format!("tasks/{id}/start_flag"));
    }
    let pid: i32 = dir.wait_for("tasks/doomed/pid").trim().parse().unwrap();
    dir.wait_for("tasks/other/pid");
    holders[0].kill().unwrap();
    holders[0].wait().unwrap();
    let died = std::time::Instant::now();
    let task = dir.join("tasks/doomed");
    if !sidecar_test_support::wait_for(LONG, || !task.exists()) {
        panic!(
            "the task was not reclaimed; sidecar log:\n{}",
            sidecar.stderr_so_far()
        );
    }
    let took = died.elapsed();
    assert!(
        !sidecar_core::procfs::is_running(pid),
        "the logic outlived its owner"
    );
    assert!(
        took < Duration::from_secs(2),
        "reclaimed {took:?} after its owner died"
    );
    // The other task still runs.
    assert!(dir.exists("tasks/other/pid") && !dir.exists("tasks/other/done_flag"));
    let log = sidecar.stderr_so_far();
    assert!(
        log.contains("owner on the executor side went away"),
        "{log}"
    );
    holders[1].kill().unwrap();
    holders[1].wait().unwrap();
    let other = dir.join("tasks/other");
    wait_until("the other task to be reclaimed", LONG, || !other.exists());
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(0));
}

/// With `--exit-on-orphan`, a sidecar exits as soon as no executor-side
/// user holds it, not a lease timeout later.
#[test]
fn exit_on_orphan_exits_when_the_last_user_goes() {
    let dir = Dir::new();
    let logic = script(&dir, "logic.sh", "exec sleep 60\n");
    dir.touch("executor/sidecar.lock");
    dir.touch("executor/sidecar.users");
    let mut users = [
        lock_holder(&dir.join("executor/sidecar.users"), "-s"),
        lock_holder(&dir.join("executor/sidecar.users"), "-s"),
    ];
    let sidecar = serve(
        &dir,
        &["--exit-on-orphan", "--lease-timeout", "60s"],
        &logic,
    );
    stage(&dir, "t", "x\n", "");
    dir.wait_for("tasks/t/stdout");
    users[0].kill().unwrap();
    users[0].wait().unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let mut sidecar = sidecar;
    assert!(sidecar.running(), "exited while a user was left");
    users[1].kill().unwrap();
    users[1].wait().unwrap();
    let gone = std::time::Instant::now();
    let ended = sidecar.wait(LONG);
    let took = gone.elapsed();
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
    assert!(
        took < Duration::from_secs(2),
        "exited {took:?} after its last user"
    );
    let d = done(&dir, "t");
    assert_eq!(d["status"], "cancelled", "{d:#}");
    assert!(reason(&d).contains("every executor-side user"), "{d:#}");
}

/// A task directory being staged whose owner dies is removed: nobody will
/// start it.
#[test]
fn a_staged_task_whose_owner_dies_is_removed() {
    let dir = Dir::new();
    let logic = script(&dir, "logic.sh", "exit 0\n");
    let sidecar = serve(&dir, &[], &logic);
    dir.touch("tasks/half/.owner.tmp");
    let tmp = dir.join("tasks/half/.owner.tmp");
    let mut holder = lock_holder(&tmp, "-x");
    std::fs::rename(&tmp, dir.join("tasks/half/owner")).unwrap();
    dir.write("tasks/half/input/part.csv", "x\n");
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        dir.exists("tasks/half/input/part.csv"),
        "removed while its owner lived"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    let half = dir.join("tasks/half");
    wait_until("the abandoned task to be removed", LONG, || !half.exists());
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(0));
}
