//! Links swapped in at every level of a task, from both sides of the
//! volume: the task directory, `output/`, a nested output directory, the
//! output file, each flag (start, done, cancel, close), `stderr`, and the
//! sidecar's directory with its heartbeat; before and after the done flag
//! is written.
//!
//! Every case keeps a canary outside the volume: a directory holding the
//! same names as a task (`part.csv` with rows no logic writes, a done flag
//! that lists it with the right size and checksum). What a user checks:
//! the task fails with an error naming the link, the canary's rows never
//! come back, and nothing in the canary is removed or written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{RawSidecar, RawTask, Scratch, SidecarArgs};
use executor_shim::client::{run_task, Health, TaskContext};
use executor_shim::{ShimError, TaskRequest};
use sidecar_core::atomic::{write_atomic, Durability};
use sidecar_core::manifest::checksum_file;
use sidecar_core::record::OutputFile;
use sidecar_core::wait::{Watch, WatchConfig};
use sidecar_core::{Format, Outcome, Status, TaskDir, TaskId, Timestamp, Volume};

const CANARY_ROW: &str = "CANARY-ROW";
const CANARY_CSV: &str = "n,s\n0,CANARY-ROW\n";
const BOUND: Duration = Duration::from_secs(20);
const DONE: Duration = Duration::from_secs(30);

/// A directory outside the volume with the names a task has, so that a
/// link into it looks like a perfectly good task.
struct Canary {
    dir: PathBuf,
}

impl Canary {
    fn new(s: &Scratch) -> Self {
        let dir = s.path().join("canary");
        for d in ["output/sub", "sidecar"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        for f in ["part.csv", "output/part.csv", "output/sub/part.csv"] {
            std::fs::write(dir.join(f), CANARY_CSV).unwrap();
        }
        std::fs::write(dir.join("start_flag"), br#"{"input":{"format":"csv"}}"#).unwrap();
        for f in ["stderr", "cancel_flag", "close_flag"] {
            std::fs::write(dir.join(f), CANARY_CSV).unwrap();
        }
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// A done flag in the canary, for `task`, listing `output/part.csv`.
    fn done_flag_for(&self, task: &TaskDir) {
        let entry = listed("part.csv", &self.path("part.csv"));
        write_atomic(
            &self.path("done_flag"),
            &success(task, vec![entry]),
            Durability::Visible,
        )
        .unwrap();
    }

    /// Every file in the canary and its bytes, to compare before and
    /// after; what a hostile side itself writes there (a done flag, the
    /// heartbeat it keeps beating) is left out.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if e.file_name() == "done_flag" || e.file_name() == "sidecar" {
                    continue;
                }
                if e.file_type().unwrap().is_dir() {
                    walk(&p, out);
                } else {
                    out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.dir, &mut out);
        out
    }
}

fn listed(path: &str, file: &Path) -> OutputFile {
    let (bytes, checksum) = checksum_file(file).unwrap();
    OutputFile {
        path: path.into(),
        bytes,
        checksum,
    }
}

/// A done flag claiming success with `outputs`.
fn success(t: &TaskDir, outputs: Vec<OutputFile>) -> Vec<u8> {
    let mut o = Outcome::new(t.id().as_str(), Status::Succeeded, Timestamp::now());
    o.exit_code = Some(0);
    o.outputs = outputs;
    serde_json::to_vec(&o).unwrap()
}

fn done(t: &TaskDir, bytes: &[u8]) {
    write_atomic(&t.done_flag(), bytes, Durability::Visible).unwrap();
}

/// Replaces `at` (a file or a whole directory) with a link to `target`.
fn swap(at: &Path, target: &Path) {
    match std::fs::symlink_metadata(at) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(at).unwrap(),
        Ok(_) => std::fs::remove_file(at).unwrap(),
        Err(_) => {}
    }
    symlink(target, at).unwrap();
}

// --- the executor side, against a hostile sidecar ----------------------------

/// What the hostile sidecar does with a task once its start flag is there.
type Behaviour = dyn Fn(&TaskDir, &Canary) + Send + Sync;

/// A hostile sidecar played by a thread: it beats (through whatever
/// `sidecar/` is by then) and answers each task with a behaviour.
fn fake(volume: &Volume, canary: Canary, behaviour: Arc<Behaviour>) -> common::FakeSidecar {
    let beat = |v: &Volume, seq| {
        let _ = sidecar_core::liveness::beat(&v.heartbeat(), seq);
    };
    common::FakeSidecar::start(volume, beat, move |t: &TaskDir| behaviour(t, &canary))
}

/// What one task against the fake ended with.
struct Ran {
    result: Result<(), ShimError>,
    /// Everything the sink received, rendered.
    seen: String,
    before: BTreeMap<PathBuf, Vec<u8>>,
    after: BTreeMap<PathBuf, Vec<u8>>,
    volume: Volume,
    _scratch: Scratch,
}

fn run_against(name: &str, behaviour: Arc<Behaviour>) -> Ran {
    let s = Scratch::new(name);
    let volume = Volume::new(s.volume("v"));
    let canary = Canary::new(&s);
    let probe = Canary {
        dir: canary.dir.clone(),
    };
    let fake = fake(&volume, canary, behaviour);
    std::thread::sleep(Duration::from_millis(50));
    let before = probe.snapshot();
    let v = volume.clone();
    let ((result, seen), _) = common::within(name, BOUND, move || {
        let watch = Watch::new(WatchConfig::default()).unwrap();
        let health = Health::new(&v, Duration::from_secs(1), None);
        let ctx = TaskContext {
            volume: &v,
            watch: &watch,
            health: &health,
        };
        let input = common::batch(3, 1);
        let mut req = TaskRequest::new(0, 0);
        req.input_format = Format::Csv;
        req.timeout = Some(Duration::from_secs(10));
        let mut seen = String::new();
        let r = run_task(
            &ctx,
            &req,
            input.schema(),
            std::iter::once(Ok(input)),
            None,
            &mut |b| {
                seen.push_str(&format!("{b:?}"));
                Ok(())
            },
        );
        (r.map(|_| ()), seen)
    });
    drop(fake);
    let after = probe.snapshot();
    Ran {
        result,
        seen,
        before,
        after,
        volume,
        _scratch: s,
    }
}

impl Ran {
    /// The canary was neither read into the sink nor changed.
    fn assert_canary_untouched(&self, name: &str) {
        assert!(
            !self.seen.contains(CANARY_ROW),
            "{name}: the canary's rows reached the caller"
        );
        let err = self.result.as_ref().err().map(ToString::to_string);
        assert!(
            !err.unwrap_or_default().contains(CANARY_ROW),
            "{name}: the canary's bytes are in the error"
        );
        assert_eq!(self.before, self.after, "{name}: the canary changed");
    }

    /// The task failed, its error naming `link` (relative to the volume)
    /// as a symbolic link.
    fn assert_names_link(&self, name: &str, link: &str) -> String {
        let e = self
            .result
            .as_ref()
            .expect_err(&format!("{name}: a task behind a link succeeded"));
        let text = e.to_string();
        assert!(
            text.contains("symbolic link") && text.contains(link),
            "{name}: error {text:?} does not name the link {link:?}"
        );
        text
    }
}

/// The task's directory, relative to the volume, once it exists.
fn task_rel(v: &Volume) -> String {
    let name = std::fs::read_dir(v.tasks_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| !n.starts_with('.'))
        .unwrap_or_default();
    format!("tasks/{name}")
}

/// Links swapped in before the done flag is written (deterministic: the
/// link is there when the executor looks). The manifest always lists the
/// canary's file with its true size and checksum: the most tempting lie.
#[test]
fn links_at_every_level_before_the_done_flag_are_refused_by_name() {
    let canary_listed = |c: &Canary| listed("part.csv", &c.path("part.csv"));
    let cases: Vec<(&str, &str, Arc<Behaviour>)> = vec![
        (
            "task-dir",
            "",
            Arc::new(|t: &TaskDir, c: &Canary| {
                c.done_flag_for(t);
                swap(t.root(), &c.dir);
            }),
        ),
        (
            "output-dir",
            "/output",
            Arc::new(move |t: &TaskDir, c: &Canary| {
                swap(&t.output(), &c.path("output"));
                done(t, &success(t, vec![canary_listed(c)]));
            }),
        ),
        (
            "nested-dir",
            "/output/sub",
            Arc::new(|t: &TaskDir, c: &Canary| {
                symlink(c.path("output/sub"), t.output().join("sub")).unwrap();
                let e = listed("sub/part.csv", &c.path("output/sub/part.csv"));
                done(t, &success(t, vec![e]));
            }),
        ),
        (
            "output-file",
            "/output/part.csv",
            Arc::new(move |t: &TaskDir, c: &Canary| {
                symlink(c.path("part.csv"), t.output().join("part.csv")).unwrap();
                done(t, &success(t, vec![canary_listed(c)]));
            }),
        ),
        (
            "done-flag",
            "/done_flag",
            Arc::new(|t: &TaskDir, c: &Canary| {
                c.done_flag_for(t);
                symlink(c.path("done_flag"), t.done_flag()).unwrap();
            }),
        ),
    ];
    for (name, under_task, behaviour) in cases {
        let ran = run_against(&format!("lx-{name}"), behaviour);
        let link = format!("{}{under_task}", task_rel(&ran.volume));
        ran.assert_names_link(name, &link);
        ran.assert_canary_untouched(name);
    }
}

/// Links swapped in right after the done flag is written: whether the
/// executor looked before or after the swap, the task fails and the
/// canary's rows never come back.
#[test]
fn links_swapped_in_after_the_done_flag_never_leak() {
    let cases: Vec<(&str, Arc<Behaviour>)> = vec![
        (
            "task-dir",
            Arc::new(|t: &TaskDir, c: &Canary| {
                c.done_flag_for(t);
                done(t, &std::fs::read(c.path("done_flag")).unwrap());
                swap(t.root(), &c.dir);
            }),
        ),
        (
            "output-dir",
            Arc::new(|t: &TaskDir, c: &Canary| {
                let e = listed("part.csv", &c.path("part.csv"));
                done(t, &success(t, vec![e]));
                swap(&t.output(), &c.path("output"));
            }),
        ),
        (
            "output-file",
            Arc::new(|t: &TaskDir, c: &Canary| {
                let e = listed("part.csv", &c.path("part.csv"));
                done(t, &success(t, vec![e]));
                symlink(c.path("part.csv"), t.output().join("part.csv")).unwrap();
            }),
        ),
    ];
    for (name, behaviour) in cases {
        let ran = run_against(&format!("la-{name}"), behaviour);
        assert!(
            ran.result.is_err(),
            "{name}: a task behind a link succeeded"
        );
        ran.assert_canary_untouched(name);
    }
}

/// A failed task whose `stderr` is a link: the error quotes no byte of
/// the file behind it.
#[test]
fn a_linked_stderr_is_never_quoted() {
    let ran = run_against(
        "lx-stderr",
        Arc::new(|t: &TaskDir, c: &Canary| {
            symlink(c.path("stderr"), t.stderr()).unwrap();
            let mut o = Outcome::new(t.id().as_str(), Status::Failed, Timestamp::now());
            o.exit_code = Some(1);
            done(t, &serde_json::to_vec(&o).unwrap());
        }),
    );
    let e = ran.result.as_ref().expect_err("a failed task succeeded");
    assert!(matches!(e, ShimError::TaskFailed { .. }), "{e}");
    ran.assert_canary_untouched("stderr");
}

/// `sidecar/` swapped for a link to a directory whose heartbeat keeps
/// changing: that heartbeat is not the sidecar's, so the sidecar is judged
/// unresponsive (within its bound), never alive through the link.
#[test]
fn a_heartbeat_behind_a_link_is_no_heartbeat() {
    let ran = run_against(
        "lx-heartbeat",
        Arc::new(|t: &TaskDir, c: &Canary| {
            let sidecar = t.root().join("../../sidecar");
            swap(&sidecar, &c.path("sidecar"));
        }),
    );
    let e = ran
        .result
        .as_ref()
        .expect_err("a task without a sidecar succeeded");
    assert!(matches!(e, ShimError::SidecarUnresponsive { .. }), "{e}");
    assert!(!ran.seen.contains(CANARY_ROW));
}

// --- the sidecar side, against a hostile logic or executor --------------------

/// A logic that does, per task id, what a hostile logic could; any other
/// task copies its input.
fn hostile_logic(s: &Scratch, canary: &Canary) -> String {
    let body = format!(
        r#"C="{canary}"
case "$SIDECAR_TASK_ID" in
  out-dir) rmdir "$SIDECAR_OUTPUT_DIR"; ln -s "$C/output" "$SIDECAR_OUTPUT_DIR" ;;
  nested) mkdir -p "$SIDECAR_OUTPUT_DIR/a"; ln -s "$C/output" "$SIDECAR_OUTPUT_DIR/a/b" ;;
  out-file) ln -s "$C/part.csv" "$SIDECAR_OUTPUT" ;;
  task-dir) trap "" TERM; cd /; rm -rf "$SIDECAR_TASK_DIR"; ln -s "$C" "$SIDECAR_TASK_DIR" ;;
  done-flag) ln -s "$C/done_flag" "$SIDECAR_TASK_DIR/done_flag"; cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT" ;;
  cancel-flag) sleep 30 ;;
  *) cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT" ;;
esac"#,
        canary = canary.dir.display()
    );
    s.script("hostile.sh", &body).display().to_string()
}

const SPEC: &[u8] = br#"{"input":{"format":"csv"}}"#;

/// Waits until `path` is gone (not even a link); whether it went.
fn wait_gone(path: &Path, limit: Duration) -> bool {
    let until = std::time::Instant::now() + limit;
    while std::fs::symlink_metadata(path).is_ok() {
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// The logic swaps a link in for its output (the directory, a directory
/// in it, the file) before it exits: the outcome is failed, its reason
/// names the link, nothing is listed, and cleanup removes the link and
/// leaves the canary whole.
#[test]
fn the_sidecar_fails_a_task_whose_output_is_a_link_and_removes_only_the_link() {
    let s = Scratch::new("ls-output");
    let canary = Canary::new(&s);
    let logic = hostile_logic(&s, &canary);
    let sc = RawSidecar::serve(&s, "v", &SidecarArgs::default(), &[&logic]);
    let before = canary.snapshot();
    for (id, link) in [
        ("out-dir", "tasks/out-dir/output"),
        ("nested", "tasks/nested/output/a/b"),
        ("out-file", "tasks/out-file/output/part.csv"),
    ] {
        let t = RawTask::submit(&sc.volume, id, SPEC, b"a\n1\n");
        let o = sc.done(&t, DONE);
        assert_eq!(o.status, Status::Failed, "{id}: {o:?}");
        let reason = o.reason.clone().unwrap_or_default();
        let named = sc.volume.root().join(link).display().to_string();
        assert!(
            reason.contains(&named) && reason.contains("symbolic link"),
            "{id}: reason {reason:?} does not name {named}"
        );
        assert!(o.outputs.is_empty(), "{id}: {o:?}");
        t.close();
        assert!(wait_gone(t.dir.root(), DONE), "{id}: not cleaned up");
        assert_eq!(canary.snapshot(), before, "{id}: the canary changed");
    }
    sc.close(DONE);
}

/// The logic replaces its whole task directory with a link (ignoring the
/// TERM that the directory's removal brings): no done flag is written
/// through it (the canary gets none), the sidecar says why and removes the
/// link, not the canary.
#[test]
fn the_sidecar_never_writes_or_removes_through_a_linked_task_dir() {
    let s = Scratch::new("ls-taskdir");
    let canary = Canary::new(&s);
    let logic = hostile_logic(&s, &canary);
    let sc = RawSidecar::serve(&s, "v", &SidecarArgs::default(), &[&logic]);
    let before = canary.snapshot();
    let t = RawTask::submit(&sc.volume, "task-dir", SPEC, b"a\n1\n");
    // The reason is logged (there is no task directory to hold an outcome).
    let named = t.dir.root().display().to_string();
    let said = || {
        sc.log()
            .lines()
            .any(|l| l.contains(&named) && l.contains("symbolic link"))
    };
    let until = std::time::Instant::now() + DONE;
    while !said() {
        assert!(
            std::time::Instant::now() < until,
            "the log does not name the link {named}:\n{}",
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        wait_gone(t.dir.root(), DONE),
        "the link was left in place; log:\n{}",
        sc.log()
    );
    assert_eq!(canary.snapshot(), before, "the canary changed");
    assert!(
        !canary.path("done_flag").exists(),
        "a done flag went through the link"
    );
    sc.close(DONE);
}

/// Flags the executor side writes, planted as links: a linked start flag
/// is refused by name (the logic never runs); a linked cancel or close
/// flag is a flag by its presence alone, and removing the task removes the
/// link, never what it points to. A done flag the logic planted as a link
/// is replaced, not written through.
#[test]
fn flags_planted_as_links_are_never_followed_by_the_sidecar() {
    let s = Scratch::new("ls-flags");
    let canary = Canary::new(&s);
    let logic = hostile_logic(&s, &canary);
    let sc = RawSidecar::serve(&s, "v", &SidecarArgs::default(), &[&logic]);
    let before = canary.snapshot();

    let id = TaskId::new("start-flag").unwrap();
    let dir = sc.volume.task(&id);
    std::fs::create_dir_all(dir.input()).unwrap();
    std::fs::write(dir.input().join("part.csv"), "a\n1\n").unwrap();
    symlink(canary.path("start_flag"), dir.start_flag()).unwrap();
    let t = RawTask { dir };
    let o = sc.done(&t, DONE);
    assert_eq!(o.status, Status::Failed, "{o:?}");
    let reason = o.reason.clone().unwrap_or_default();
    let named = t.dir.start_flag().display().to_string();
    assert!(
        reason.contains(&named) && reason.contains("symbolic link"),
        "{reason}"
    );
    t.close();
    assert!(wait_gone(t.dir.root(), DONE));

    let t = RawTask::submit(&sc.volume, "done-flag", SPEC, b"a\n1\n");
    let o = sc.done(&t, DONE);
    assert_eq!(o.status, Status::Succeeded, "{o:?}");
    assert_eq!(t.read_output("part.csv"), b"a\n1\n");
    symlink(canary.path("close_flag"), t.dir.close_flag()).unwrap();
    assert!(
        wait_gone(t.dir.root(), DONE),
        "a linked close flag is a close flag"
    );

    let t = RawTask::submit(&sc.volume, "cancel-flag", SPEC, b"a\n1\n");
    std::thread::sleep(Duration::from_millis(300));
    symlink(canary.path("cancel_flag"), t.dir.cancel_flag()).unwrap();
    let o = sc.done(&t, DONE);
    assert_eq!(o.status, Status::Cancelled, "{o:?}");
    t.close();
    assert!(wait_gone(t.dir.root(), DONE));

    assert_eq!(canary.snapshot(), before, "the canary changed");
    sc.close(DONE);
}

/// After the done flag, something else on the volume (the entrypoint
/// kills the logic's stragglers, so the test plays it) swaps `output/` for
/// a link: the listed output is refused when read, naming the link, and
/// closing the task removes the link, not the canary.
#[test]
fn an_output_swapped_after_the_done_flag_is_refused_and_only_the_link_removed() {
    let s = Scratch::new("ls-after");
    let canary = Canary::new(&s);
    let logic = hostile_logic(&s, &canary);
    let sc = RawSidecar::serve(&s, "v", &SidecarArgs::default(), &[&logic]);
    let before = canary.snapshot();
    let t = RawTask::submit(&sc.volume, "after-done", SPEC, b"a\n1\n");
    let o = sc.done(&t, DONE);
    assert_eq!(o.status, Status::Succeeded, "{o:?}");
    swap(&t.dir.output(), &canary.path("output"));
    let root = sc.volume.beneath();
    let e =
        sidecar_core::manifest::VerifiedReader::open_beneath(&root, &t.dir.output(), &o.outputs[0])
            .unwrap_err()
            .to_string();
    let named = t.dir.output().display().to_string();
    assert!(e.contains(&named) && e.contains("symbolic link"), "{e}");
    t.close();
    assert!(wait_gone(t.dir.root(), DONE));
    assert_eq!(canary.snapshot(), before, "the canary changed");
    sc.close(DONE);
}

/// The reported reproduction, through the command line: the logic
/// replaces `$SIDECAR_OUTPUT_DIR` with a link to a directory holding a
/// `part.csv`; `executor-shim run` exits non-zero, says which path is a
/// link, and prints none of its rows.
#[test]
fn executor_shim_run_never_returns_rows_from_behind_a_linked_output_dir() {
    let s = Scratch::new("ls-cli");
    let canary = Canary::new(&s);
    let logic = s.script(
        "swap.sh",
        &format!(
            r#"rmdir "$SIDECAR_OUTPUT_DIR"; ln -s "{}" "$SIDECAR_OUTPUT_DIR""#,
            canary.path("output").display()
        ),
    );
    let sc = RawSidecar::serve(&s, "v", &SidecarArgs::default(), &[logic.to_str().unwrap()]);
    let before = canary.snapshot();
    let input = common::batch(3, 1);
    let mut ipc = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &input.schema()).unwrap();
        w.write(&input).unwrap();
        w.finish().unwrap();
    }
    let mut child = Command::new(common::shim_bin())
        .args(["run", "--volume"])
        .arg(sc.volume.root())
        .args(["--input-format", "csv", "--timeout", "20s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&ipc).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "exit {}; stderr: {stderr}",
        out.status
    );
    assert!(
        stderr.contains("symbolic link") && stderr.contains("/output"),
        "stderr does not name the link: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(CANARY_ROW) && !stderr.contains(CANARY_ROW));
    assert_eq!(canary.snapshot(), before, "the canary changed");
    sc.close(DONE);
}

/// `sidecar/` swapped for a link while the sidecar serves: its heartbeat
/// is never written through the link (the canary gets no pulse), and the
/// sidecar says why.
#[test]
fn the_sidecar_never_beats_through_a_linked_sidecar_dir() {
    let s = Scratch::new("ls-beat");
    let canary = Canary::new(&s);
    let logic = hostile_logic(&s, &canary);
    let sc = RawSidecar::serve(&s, "v", &SidecarArgs::default(), &[&logic]);
    swap(&sc.volume.sidecar_dir(), &canary.path("sidecar"));
    // Ten heartbeat intervals.
    std::thread::sleep(Duration::from_millis(1000));
    let pulses: Vec<_> = std::fs::read_dir(canary.path("sidecar"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(pulses.is_empty(), "written through the link: {pulses:?}");
    let log = sc.log();
    let named = sc.volume.sidecar_dir().display().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains(&named) && l.contains("symbolic link")),
        "the log does not name the link {named}:\n{log}"
    );
}
