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
