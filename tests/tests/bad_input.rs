//! Bad input, from both sides of the volume: each case gets a clear error
//! that names what is wrong, nothing is lost, and the sidecar keeps serving.
//!
//! The sidecar's side is driven through the raw protocol (the test writes
//! the flags), so a test can hand it exactly the broken bytes; the
//! executor's side runs the shim's `run_task` against a test thread that
//! plays a hostile sidecar.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::{RawSidecar, RawTask, Scratch, SidecarArgs};
use sidecar_core::record::MAX_FLAG_BYTES;
use sidecar_core::Status;

const DONE: Duration = Duration::from_secs(30);

/// A logic that records that it ran and copies its input to its output.
fn copy_logic(s: &Scratch) -> String {
    s.script(
        "copy.sh",
        r#"touch "$SIDECAR_TASK_DIR/ran"; cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#,
    )
    .display()
    .to_string()
}

/// A valid task after the bad ones: the sidecar still serves.
fn assert_still_serves(sc: &RawSidecar, id: &str) {
    let t = RawTask::submit(&sc.volume, id, br#"{"input":{"format":"csv"}}"#, b"a\n1\n");
    let o = sc.done(&t, DONE);
    assert_eq!(o.status, Status::Succeeded, "{o:?}\nlog:\n{}", sc.log());
    assert_eq!(t.read_output("part.csv"), b"a\n1\n");
    t.close();
}

#[test]
fn start_flags_malformed_truncated_oversized_or_from_the_future_fail_clearly() {
    let s = Scratch::new("badspec");
    let logic = copy_logic(&s);
    let sc = RawSidecar::serve(&s, "v", &SidecarArgs::default(), &[&logic]);

    let valid = br#"{"protocol":1,"timeout_ms":60000,"input":{"format":"csv"}}"#;
    let mut oversized = br#"{"env":{"A":""#.to_vec();
    oversized.resize(MAX_FLAG_BYTES as usize + 100, b'x');
    oversized.extend_from_slice(br#""}}"#);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "malformed",
            b"{not json".to_vec(),
            "malformed task spec JSON",
        ),
        (
            "truncated",
            valid[..valid.len() / 2].to_vec(),
            "malformed task spec JSON",
        ),
        (
            "wrongtype",
            br#"{"timeout_ms":"soon"}"#.to_vec(),
            "malformed task spec JSON",
        ),
        (
            "badformat",
            br#"{"input":{"format":"xls"}}"#.to_vec(),
            "malformed task spec JSON",
        ),
        (
            "binary",
            vec![0xff, 0xfe, 0x00, 0x7b],
            "malformed task spec JSON",
        ),
        ("oversized", oversized, "over the 1048576-byte limit"),
        (
            "future",
            br#"{"protocol":99}"#.to_vec(),
            "protocol version 99 is not supported",
        ),
        (
            "zero",
            br#"{"protocol":0}"#.to_vec(),
            "protocol version 0 is not supported",
        ),
    ];
    let tasks: Vec<_> = cases
        .iter()
        .map(|(id, bytes, _)| RawTask::submit(&sc.volume, id, bytes, b"a\n1\n"))
        .collect();
    for ((id, _, want), t) in cases.iter().zip(&tasks) {
        let o = sc.done(t, DONE);
        assert_eq!(o.status, Status::Failed, "{id}: {o:?}");
        let reason = o.reason.clone().unwrap_or_default();
        assert!(
            reason.contains(want),
            "{id}: reason {reason:?} lacks {want:?}"
        );
        let flag = t.dir.start_flag().display().to_string();
        assert!(
            reason.contains(&flag),
            "{id}: reason {reason:?} does not name {flag}"
        );
        assert!(o.outputs.is_empty(), "{id}: {o:?}");
        assert!(
            !t.dir.root().join("ran").exists(),
            "{id}: the logic ran on a bad start flag"
        );
        assert_eq!(o.task_id, *id);
        t.close();
    }
    assert_still_serves(&sc, "after-bad-specs");
    let st = sc.close(DONE);
    assert!(st.success(), "{st}");
    assert!(s.wait_no_leftovers(Duration::from_secs(10)).is_empty());
}

#[test]
fn invalid_task_directories_are_skipped_and_logged_never_served() {
    let s = Scratch::new("badid");
    let logic = copy_logic(&s);
    let sc = RawSidecar::serve(&s, "v", &SidecarArgs::default(), &[&logic]);
    let tasks = sc.volume.tasks_dir();
    // Names TaskId refuses, each with a start flag that would run.
    let long = "x".repeat(sidecar_core::id::MAX_TASK_ID_LEN + 1);
    let bad = ["bad name", "tab\there", "é", "semi;colon", long.as_str()];
    for name in bad {
        let d = tasks.join(name);
        std::fs::create_dir_all(d.join("input")).unwrap();
        std::fs::write(d.join("start_flag"), b"").unwrap();
    }
    // A dot-directory is a temporary: ignored silently.
    std::fs::create_dir_all(tasks.join(".staging")).unwrap();
    std::fs::write(tasks.join(".staging/start_flag"), b"").unwrap();
    // A valid name that is a symlink to a directory outside the volume: the
    // sidecar must not serve it (it would write a done flag outside).
    let outside = s.path().join("outside-task");
    std::fs::create_dir_all(outside.join("input")).unwrap();
    std::fs::write(outside.join("start_flag"), b"").unwrap();
    std::os::unix::fs::symlink(&outside, tasks.join("linked")).unwrap();
    // A valid name that is a plain file, not a directory.
    std::fs::write(tasks.join("plainfile"), b"").unwrap();

    // A good task proves the loop went past all of them.
    assert_still_serves(&sc, "good-after-bad-ids");
    // Give the scanner a few more ticks, then check nothing was served.
    std::thread::sleep(Duration::from_millis(500));
    for name in bad.iter().copied().chain([".staging"]) {
        let d = tasks.join(name);
        assert!(!d.join("done_flag").exists(), "{name:?} was served");
        assert!(!d.join("ran").exists(), "{name:?} ran");
    }
    assert!(
        !outside.join("done_flag").exists(),
        "a symlinked task dir was served"
    );
    assert!(!outside.join("ran").exists(), "a symlinked task dir ran");
    let log = sc.log();
    for name in ["bad name", "é", "semi;colon"] {
        let line = log
            .lines()
            .find(|l| l.contains("skipping") && l.contains(name))
            .unwrap_or_else(|| panic!("no log line about {name:?}:\n{log}"));
        assert!(line.contains("invalid task id"), "{line}");
    }
    assert!(
        !log.contains(".staging"),
        "dot-dirs are skipped silently:\n{log}"
    );
    sc.close(DONE);
}

#[test]
fn hostile_logic_outputs_are_refused_by_the_sidecar() {
    let s = Scratch::new("badout");
    let secret = s.path().join("secret.txt");
    std::fs::write(&secret, b"TOP SECRET\n").unwrap();
    let logic = s.script(
        "hostile.sh",
        r#"case "$SIDECAR_TASK_ID" in
  symlink) ln -s /etc/passwd "$SIDECAR_OUTPUT" ;;
  dirlink) ln -s /etc "$SIDECAR_OUTPUT_DIR/etc" ;;
  fifo) mkfifo "$SIDECAR_OUTPUT" ;;
  nested) mkdir -p "$SIDECAR_OUTPUT_DIR/a/b"; ln -s /etc/passwd "$SIDECAR_OUTPUT_DIR/a/b/c" ;;
  *) cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT" ;;
esac"#,
    );
    let sc = RawSidecar::serve(&s, "v", &SidecarArgs::default(), &[logic.to_str().unwrap()]);
    for (id, want) in [
        ("symlink", "symbolic link"),
        ("dirlink", "symbolic link"),
        ("fifo", "special file"),
        ("nested", "symbolic link"),
    ] {
        let t = RawTask::submit(&sc.volume, id, br#"{"input":{"format":"csv"}}"#, b"a\n");
        let o = sc.done(&t, DONE);
        // The logic exited 0, but what it left is not an output.
        assert_eq!(o.status, Status::Failed, "{id}: {o:?}");
        let reason = o.reason.clone().unwrap_or_default();
        assert!(reason.contains(want), "{id}: {reason}");
        assert!(
            reason.contains("output"),
            "{id}: names the output: {reason}"
        );
        assert!(o.outputs.is_empty(), "{id}: {o:?}");
        t.close();
    }
    assert_still_serves(&sc, "after-hostile");
    sc.close(DONE);
}

/// `chmod 0555` volume, sidecar as uid 5001: a clear error naming the
/// volume, quickly, not a hang.
#[test]
fn unwritable_volume_is_a_clear_error() {
    if !common::is_root() {
        eprintln!("SKIPPED: bad_input: needs root to run the sidecar as uid 5001");
        return;
    }
    let s = Scratch::new("rovol");
    let vol = s.volume("v");
    std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o555)).unwrap();
    let mut cmd = common::serve_command(&vol, &SidecarArgs::default(), &["/bin/true"]);
    cmd.uid(5001).gid(5001);
    let mut sc = RawSidecar::spawn(cmd, &vol, s.path().join("ro.log"));
    let st = sc.wait_exit(Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "the sidecar hung on an unwritable volume; log:\n{}",
            sc.log()
        )
    });
    assert!(!st.success(), "{st}");
    let log = sc.log();
    assert!(
        log.contains(vol.to_str().unwrap()),
        "names the volume:\n{log}"
    );
    assert!(
        log.contains("Permission denied") || log.contains("not writable"),
        "says why:\n{log}"
    );
    assert!(!sc.volume.ready().exists());
}

/// A read-only bind mount of the volume (as root, where chmod would not
/// stop us): the same clear error.
#[test]
fn read_only_mount_is_a_clear_error() {
    if !common::is_root() {
        eprintln!("SKIPPED: bad_input: needs root to bind-mount");
        return;
    }
    let s = Scratch::new("romount");
    let vol = s.volume("v");
    let mount = std::process::Command::new("mount")
        .args(["--bind", "-o", "ro"])
        .arg(&vol)
        .arg(&vol)
        .status();
    if !matches!(mount, Ok(st) if st.success()) {
        eprintln!("SKIPPED: bad_input: cannot bind-mount read-only here ({mount:?})");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(vol.clone());
    let cmd = common::serve_command(&vol, &SidecarArgs::default(), &["/bin/true"]);
    let mut sc = RawSidecar::spawn(cmd, &vol, s.path().join("ro.log"));
    let st = sc
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the sidecar hung on a read-only volume; log:\n{}", sc.log()));
    assert!(!st.success(), "{st}");
    let log = sc.log();
    assert!(
        log.contains(vol.to_str().unwrap()),
        "names the volume:\n{log}"
    );
    assert!(log.contains("Read-only file system"), "says why:\n{log}");
    // The executor side: a clear error at start, not a wait for a ready
    // record that cannot come.
    let logic = s.script("copy.sh", r#"cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#);
    let (r, took) = common::within(
        "shim start on a read-only volume",
        Duration::from_secs(60),
        {
            let vol = vol.clone();
            move || {
                executor_shim::provider::Sidecar::start(
                    &vol,
                    common::process_provider(vec!["/bin/sh".into(), logic.display().to_string()]),
                    Default::default(),
                )
                .map(|_| ())
            }
        },
    );
    let e = r.expect_err("a sidecar started on a read-only volume");
    let text = e.to_string();
    assert!(
        text.contains(vol.to_str().unwrap()),
        "names the volume: {text}"
    );
    assert!(text.contains("Read-only file system"), "says why: {text}");
    assert!(took < Duration::from_secs(30), "{took:?}");
}

/// The logic fills a small tmpfs volume: its write fails with ENOSPC, the
/// task fails saying so, and once the task is closed (its files removed)
/// the sidecar serves the next one.
///
/// When even the outcome cannot be written, the entrypoint discards the
/// task's output to free space and writes a failed outcome saying so.
#[test]
fn full_disk_while_the_logic_writes() {
    if !common::is_root() {
        eprintln!("SKIPPED: bad_input: needs root to mount a tmpfs");
        return;
    }
    let s = Scratch::new("fulldisk");
    let vol = s.volume("v");
    let Some(_m) = Tmpfs::mount(&vol, "1m") else {
        return;
    };
    let logic = s.script(
        "fill.sh",
        r#"if [ "$SIDECAR_TASK_ID" = big ]; then head -c 4194304 /dev/zero > "$SIDECAR_OUTPUT"; else cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"; fi"#,
    );
    let sc = RawSidecar::serve(&s, "v", &SidecarArgs::default(), &[logic.to_str().unwrap()]);
    let t = RawTask::submit(&sc.volume, "big", br#"{"input":{"format":"csv"}}"#, b"a\n");
    let o = sc.done(&t, DONE);
    assert_eq!(o.status, Status::Failed, "{o:?}");
    assert!(o.exit_code.is_some_and(|c| c != 0), "{o:?}");
    // The logic's stderr lives on the same full volume, so the reason may
    // be all there is to say why.
    assert!(
        o.stderr_tail.contains("No space left on device")
            || o.reason
                .as_deref()
                .is_some_and(|r| r.contains("No space left on device")),
        "the outcome says why: {o:?}"
    );
    assert!(o.outputs.is_empty(), "no partial output listed: {o:?}");
    t.close();
    // The sidecar removes the task dir on close, which frees the space.
    let until = std::time::Instant::now() + DONE;
    while t.dir.root().exists() {
        assert!(std::time::Instant::now() < until, "task dir not removed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_still_serves(&sc, "after-full");
    sc.close(DONE);
}

/// `RLIMIT_FSIZE` on the sidecar (inherited by the logic): a logic that
/// writes past it is killed by SIGXFSZ, or, ignoring that signal, gets
/// EFBIG; either way the task fails and names the cause.
#[test]
fn file_size_limit_while_the_logic_writes() {
    let s = Scratch::new("fsize");
    let logic = s.script(
        "big.sh",
        r#"case "$SIDECAR_TASK_ID" in
  ignoring) trap '' XFSZ; head -c 1048576 /dev/zero > "$SIDECAR_OUTPUT" ;;
  killed) head -c 1048576 /dev/zero > "$SIDECAR_OUTPUT" ;;
  *) cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT" ;;
esac"#,
    );
    let vol = s.volume("v");
    let mut cmd = common::serve_command(&vol, &SidecarArgs::default(), &[logic.to_str().unwrap()]);
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 256 * 1024,
                rlim_max: 256 * 1024,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let sc = RawSidecar::spawn(cmd, &vol, s.path().join("fsize.log"));
    sc.wait_ready(DONE);
    let t = RawTask::submit(
        &sc.volume,
        "killed",
        br#"{"input":{"format":"csv"}}"#,
        b"a\n",
    );
    let o = sc.done(&t, DONE);
    assert_eq!(o.status, Status::Failed, "{o:?}");
    // sh reports the signal of its child as 128+25, or is killed itself.
    let xfsz = o.signal == Some(libc::SIGXFSZ) || o.exit_code == Some(128 + libc::SIGXFSZ);
    assert!(xfsz, "killed by SIGXFSZ: {o:?}");
    assert!(o.outputs.is_empty(), "{o:?}");
    t.close();
    let t = RawTask::submit(
        &sc.volume,
        "ignoring",
        br#"{"input":{"format":"csv"}}"#,
        b"a\n",
    );
    let o = sc.done(&t, DONE);
    assert_eq!(o.status, Status::Failed, "{o:?}");
    assert!(
        o.stderr_tail.contains("File too large"),
        "EFBIG in the tail: {o:?}"
    );
    t.close();
    assert_still_serves(&sc, "after-fsize");
    sc.close(DONE);
}

/// Every inotify instance of the sidecar's user is taken: the sidecar says
/// it falls back to polling, and serves.
#[test]
fn inotify_exhausted_falls_back_to_polling() {
    if !common::is_root() {
        eprintln!("SKIPPED: bad_input: needs root to run as a dedicated uid");
        return;
    }
    // A uid no other test uses: the instance limit is per user.
    const UID: u32 = 5077;
    let s = Scratch::new("inotify");
    let vol = s.volume("v");
    let holder = s.script("hold.py", "");
    std::fs::write(
        &holder,
        "import ctypes, sys, time\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         fds = []\n\
         while True:\n\
         \x20   fd = libc.inotify_init()\n\
         \x20   if fd < 0:\n\
         \x20       break\n\
         \x20   fds.append(fd)\n\
         print(len(fds), ctypes.get_errno(), flush=True)\n\
         time.sleep(600)\n",
    )
    .unwrap();
    let mut hold = std::process::Command::new("python3");
    hold.arg(&holder)
        .uid(UID)
        .gid(UID)
        .stdout(std::process::Stdio::piped());
    let mut hold = hold.spawn().expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hold.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let held: Vec<i32> = line
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(held.get(1), Some(&libc::EMFILE), "holder: {line}");

    let logic = copy_logic(&s);
    let mut cmd = common::serve_command(&vol, &SidecarArgs::default(), &[&logic]);
    cmd.uid(UID).gid(UID);
    let sc = RawSidecar::spawn(cmd, &vol, s.path().join("inotify.log"));
    sc.wait_ready(DONE);
    assert_still_serves(&sc, "polled");
    let log = sc.log();
    assert!(
        log.contains("falling back to polling"),
        "the log says it polls:\n{log}"
    );
    let _ = hold.kill();
    let _ = hold.wait();
    sc.close(DONE);
}

/// A tmpfs mounted over a directory for one test.
#[derive(Debug)]
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub fn mount(dir: &std::path::Path, size: &str) -> Option<Self> {
        let st = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0777"),
                "tmpfs",
            ])
            .arg(dir)
            .status();
        match st {
            Ok(st) if st.success() => Some(Self(dir.to_owned())),
            other => {
                eprintln!("SKIPPED: bad_input: cannot mount a tmpfs here ({other:?})");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn shim_sidecar(
    vol: &std::path::Path,
    logic: &std::path::Path,
) -> executor_shim::provider::Sidecar {
    use executor_shim::provider::{Sidecar, SidecarOptions};
    Sidecar::start(
        vol,
        common::process_provider(vec!["/bin/sh".into(), logic.display().to_string()]),
        SidecarOptions {
            parallel: Some(2),
            heartbeat: Duration::from_millis(100),
            stale_after: Duration::from_secs(1),
            lease_interval: Duration::from_millis(100),
            lease_timeout: Duration::from_secs(1),
            grace: Some(Duration::from_millis(200)),
            log_filter: Some("warn".into()),
            ..Default::default()
        },
    )
    .unwrap()
}

fn shim_task(
    sc: &executor_shim::provider::Sidecar,
    rows: usize,
) -> Result<arrow::array::RecordBatch, executor_shim::ShimError> {
    let mut req = executor_shim::TaskRequest::new(rows as u64, 0);
    req.input_format = sidecar_core::Format::Csv;
    req.timeout = Some(Duration::from_secs(30));
    common::run_batch(sc, &req, common::batch(rows, 7))
}

/// The executor stages an input larger than the (tmpfs) volume: a clear
/// error naming the input file and ENOSPC, no start flag, no partial input
/// left; the next task succeeds.
#[test]
fn full_disk_while_staging() {
    if !common::is_root() {
        eprintln!("SKIPPED: bad_input: needs root to mount a tmpfs");
        return;
    }
    let s = Scratch::new("fullstage");
    let vol = s.volume("v");
    let Some(_m) = Tmpfs::mount(&vol, "1m") else {
        return;
    };
    let logic = s.script("copy.sh", r#"cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#);
    let sc = shim_sidecar(&vol, &logic);
    // ~3 MiB of CSV.
    let e = shim_task(&sc, 100_000).expect_err("staging 3 MiB on a 1 MiB volume succeeded");
    let text = e.to_string();
    assert!(text.contains("No space left on device"), "{text}");
    assert!(
        text.contains("input/part.csv"),
        "names the input file: {text}"
    );
    // Nothing half-staged is left for a sidecar to pick up.
    for t in std::fs::read_dir(vol.join("tasks")).unwrap().flatten() {
        assert!(
            !t.path().join("start_flag").exists(),
            "a start flag after a failed staging"
        );
        let staged: Vec<_> = std::fs::read_dir(t.path().join("input"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(staged.is_empty(), "partial input left: {staged:?}");
    }
    // Nor a task directory without a start flag, which a sidecar would
    // look at again and again.
    let left: Vec<_> = std::fs::read_dir(vol.join("tasks"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "half-staged task directories left: {left:?}"
    );
    let got = shim_task(&sc, 3).expect("a small task after the failed staging");
    assert_eq!(got, common::batch(3, 7));
    sc.shutdown().unwrap();
}

/// What holds today when the logic fills the volume: the executor never
/// hangs; it returns an error within stale_after + 5 s.
#[test]
fn full_disk_while_the_logic_writes_never_hangs_the_executor() {
    if !common::is_root() {
        eprintln!("SKIPPED: bad_input: needs root to mount a tmpfs");
        return;
    }
    let s = Scratch::new("fullshim");
    let vol = s.volume("v");
    let Some(_m) = Tmpfs::mount(&vol, "1m") else {
        return;
    };
    let logic = s.script(
        "fill.sh",
        r#"head -c 4194304 /dev/zero > "$SIDECAR_OUTPUT""#,
    );
    let sc = shim_sidecar(&vol, &logic);
    let (r, took) = common::within("full disk", Duration::from_secs(30), move || {
        let r = shim_task(&sc, 3).map(|_| ());
        drop(sc);
        r
    });
    let e = r.expect_err("a task that filled the disk succeeded");
    assert!(
        matches!(e, executor_shim::ShimError::TaskFailed { .. }) || e.is_sidecar_failure(),
        "{e}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
}

/// End to end, through the shim: a logic that does
/// `ln -s /etc/passwd $SIDECAR_OUTPUT` (or hard-links a file from outside
/// the volume) gets an error, and the executor never reads the file.
#[test]
fn linking_secrets_into_the_output_gets_an_error_not_the_secret() {
    let s = Scratch::new("lnsecret");
    let secret = s.path().join("secret.csv");
    std::fs::write(&secret, "n,s\n0,TOP SECRET\n").unwrap();
    let logic = s.script(
        "ln.sh",
        &format!(
            r#"case "$SIDECAR_TASK_ID" in
  p1-*) ln -s /etc/passwd "$SIDECAR_OUTPUT" ;;
  p2-*) ln "{}" "$SIDECAR_OUTPUT" ;;
  *) cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT" ;;
esac"#,
            secret.display()
        ),
    );
    let vol = s.volume("v");
    let sc = shim_sidecar(&vol, &logic);
    for (rows, want) in [(1, "symbolic link"), (2, "hard links")] {
        let e = shim_task(&sc, rows).expect_err("a linked output was accepted");
        let text = e.to_string();
        assert!(text.contains(want), "{text}");
        assert!(text.contains("part.csv"), "names the output: {text}");
        assert!(
            !text.contains("root:") && !text.contains("TOP SECRET"),
            "{text}"
        );
    }
    assert_eq!(shim_task(&sc, 3).unwrap(), common::batch(3, 7));
    sc.shutdown().unwrap();
}

/// The logic fills the volume outside `output/` (a scratch file in its task
/// directory) and exits 0: the outcome cannot be written until that
/// scratch is freed. The sidecar frees it and writes a failed outcome
/// naming the full disk, so an executor without a deadline still gets its
/// answer; the sidecar goes on serving.
#[test]
fn full_disk_from_scratch_files_outside_output_still_ends_the_task() {
    if !common::is_root() {
        eprintln!("SKIPPED: bad_input: needs root to mount a tmpfs");
        return;
    }
    let s = Scratch::new("fullscratch");
    let vol = s.volume("v");
    let Some(_m) = Tmpfs::mount(&vol, "1m") else {
        return;
    };
    let logic = s.script(
        "scratch.sh",
        r#"if [ "$(wc -l < "$SIDECAR_INPUT")" -gt 5 ]; then head -c 4194304 /dev/zero > "$SIDECAR_TASK_DIR/scratch.tmp"; exit 0; fi
cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#,
    );
    let sc = shim_sidecar(&vol, &logic);
    let (r, took) = common::within("full disk from scratch", DONE, move || {
        let mut req = executor_shim::TaskRequest::new(1, 0);
        req.input_format = sidecar_core::Format::Csv;
        let r = common::run_batch(&sc, &req, common::batch(10, 7)).map(|_| ());
        (r, sc)
    });
    let (r, sc) = r;
    let e = r.expect_err("a task whose outcome could not be written succeeded");
    let text = e.to_string();
    assert!(
        matches!(e, executor_shim::ShimError::TaskFailed { .. }),
        "{text}"
    );
    assert!(text.contains("No space left on device"), "{text}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let got = shim_task(&sc, 3).expect("a small task after the full disk");
    assert_eq!(got, common::batch(3, 7));
    sc.shutdown().unwrap();
}

/// The outcome cannot be written at all, even after the task's files were
/// freed (here the logic made its task directory read-only to the
/// sidecar's user). The sidecar then stops, exit 70 with the reason
/// logged, rather than beat on for an executor that would wait forever:
/// the executor's liveness check ends its wait with a named error.
#[test]
fn an_outcome_that_cannot_be_written_stops_the_sidecar() {
    use std::os::unix::process::CommandExt;
    if !common::is_root() {
        eprintln!("SKIPPED: bad_input: needs root to run the sidecar as another user");
        return;
    }
    let s = Scratch::new("lostoutcome");
    let vol = s.volume("v");
    let logic = s.script("lock.sh", r#"chmod 0555 "$SIDECAR_TASK_DIR""#);
    let mut cmd = common::serve_command(&vol, &SidecarArgs::default(), &[logic.to_str().unwrap()]);
    cmd.uid(5001).gid(5001);
    let mut sc = RawSidecar::spawn(cmd, &vol, s.path().join("v.log"));
    sc.wait_ready(DONE);
    let id = sidecar_core::TaskId::new("locked").unwrap();
    let dir = sc.volume.task(&id);
    std::fs::create_dir_all(dir.input()).unwrap();
    for d in [dir.root(), &dir.input()] {
        std::os::unix::fs::chown(d, Some(5001), Some(5001)).unwrap();
    }
    sidecar_core::atomic::touch_atomic(&dir.start_flag()).unwrap();
    let status = sc.wait_exit(DONE);
    assert_eq!(status.and_then(|s| s.code()), Some(70), "{}", sc.log());
    assert!(
        sc.log().contains("cannot record an outcome"),
        "{}",
        sc.log()
    );
    assert!(!dir.done_flag().exists());
}

/// After a full disk turned a succeeded outcome into a failed one, the
/// sidecar's log says what the done flag says (`status=failed`), never the
/// `succeeded` it meant to write.
#[test]
fn the_log_says_the_status_the_done_flag_holds_after_a_full_disk() {
    if !common::is_root() {
        eprintln!("SKIPPED: bad_input: needs root to mount a tmpfs");
        return;
    }
    let s = Scratch::new("fulllog");
    let vol = s.volume("v");
    let Some(_m) = Tmpfs::mount(&vol, "1m") else {
        return;
    };
    let logic = s.script(
        "scratch.sh",
        r#"head -c 4194304 /dev/zero > "$SIDECAR_TASK_DIR/scratch.tmp"; echo x > "$SIDECAR_OUTPUT"; exit 0"#,
    );
    let sc = RawSidecar::serve(&s, "v", &SidecarArgs::default(), &[logic.to_str().unwrap()]);
    let t = RawTask::submit(
        &sc.volume,
        "scratchy",
        br#"{"input":{"format":"csv"}}"#,
        b"a\n",
    );
    let o = sc.done(&t, DONE);
    assert_eq!(o.status, Status::Failed, "{o:?}");
    t.close();
    let closed = |log: &str| {
        log.lines()
            .find(|l| l.contains("task closed") && l.contains("scratchy"))
            .map(str::to_owned)
    };
    assert!(
        sidecar_test_support::wait_for(DONE, || closed(&sc.log()).is_some()),
        "{}",
        sc.log()
    );
    let log = sc.log();
    let line = closed(&log).unwrap();
    assert!(line.contains("status=\"failed\""), "{line}");
    assert!(!log.contains("succeeded"), "{log}");
}
