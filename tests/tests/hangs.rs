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
