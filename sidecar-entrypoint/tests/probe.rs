//! `sidecar-entrypoint probe` against a real serving sidecar, run the way
//! the kubelet runs an exec probe: a fresh process each time, judged by its
//! exit status, its one line of output kept as the probe's message.
//!
//! Measurements are printed as `FIGURE name=value` lines on the real
//! stdout, shown even without `--nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use util::{bin, wait_until, Dir, Sidecar, LONG};

fn figure(name: &str, value: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "FIGURE {name}={value}");
}

/// One probe, as the kubelet runs it: `--volume` given, nothing inherited
/// that could point elsewhere.
fn probe(volume: &Path, extra: &[&str]) -> Output {
    Command::new(bin())
        .arg("probe")
        .arg("--volume")
        .arg(volume)
        .args(extra)
        .env_remove("SIDECAR_VOLUME")
        .env_remove("SHARED_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Asserts a failed probe: exit 1 and one line on stderr containing `why`.
fn assert_fails(o: &Output, why: &str) {
    let (out, err) = text(o);
    assert_eq!(o.status.code(), Some(1), "stdout {out:?} stderr {err:?}");
    assert_eq!(err.lines().count(), 1, "one line, not: {err:?}");
    assert!(err.contains(why), "{err:?} should say {why:?}");
}

fn script(dir: &Dir, name: &str, body: &str) -> PathBuf {
    let p = dir.logs().join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn serve(dir: &Dir, extra: &[&str]) -> Sidecar {
    let logic = script(
        dir,
        "logic.sh",
        "cat \"$SIDECAR_INPUT\" > \"$SIDECAR_OUTPUT\"\n",
    );
    let mut args = vec!["--mode", "serve"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", logic.to_str().unwrap()]);
    Sidecar::start(dir, &args)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn a_serving_sidecar_passes_and_the_probe_is_fast() {
    let dir = Dir::new();
    let sidecar = serve(&dir, &["--parallel", "3"]);
    dir.wait_for("sidecar/ready");

    let o = probe(dir.path(), &[]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout {out:?} stderr {err:?}");
    assert!(
        out.starts_with(&format!("ready: pid {}, parallelism 3,", sidecar.pid())),
        "{out:?}"
    );
    assert!(err.is_empty(), "{err:?}");

    // The kubelet's default probe timeout is one second: measure a run of
    // probes end to end (fork, exec, read two files, exit).
    let mut took = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        let o = probe(dir.path(), &[]);
        took.push(start.elapsed());
        assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    }
    let max = *took.iter().max().unwrap();
    let med = median(took);
    figure("probe_median_us", med.as_micros());
    figure("probe_max_us", max.as_micros());
    assert!(max < Duration::from_millis(500), "a probe took {max:?}");

    // $SIDECAR_VOLUME is honoured like everywhere else.
    let o = Command::new(bin())
        .arg("probe")
        .env("SIDECAR_VOLUME", dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));

    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(0));
}

#[test]
fn no_volume_or_no_ready_record_fails_with_the_reason() {
    let dir = Dir::new();
    let missing = dir.path().join("not-mounted");
    assert_fails(&probe(&missing, &[]), "the volume does not exist");
    // A volume with no sidecar (or a oneshot one) has no ready record.
    assert_fails(
        &probe(dir.path(), &[]),
        &format!(
            "not ready: {} does not exist yet",
            dir.join("sidecar/ready").display()
        ),
    );
    // A planted FIFO does not hang the probe; a malformed record is named.
    std::fs::create_dir_all(dir.join("sidecar")).unwrap();
    nix::unistd::mkfifo(&dir.join("sidecar/ready"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    assert_fails(&probe(dir.path(), &[]), "not a regular file");
    std::fs::remove_file(dir.join("sidecar/ready")).unwrap();
    dir.write("sidecar/ready", "{not json");
    assert_fails(&probe(dir.path(), &[]), "malformed ready record JSON");
}

/// A startupProbe's view: failing while init scripts run, passing from the
/// moment `sidecar/ready` is written.
#[test]
fn fails_until_ready_then_passes() {
    let dir = Dir::new();
    let init = script(&dir, "init.sh", "sleep 1\n");
    let start = Instant::now();
    let sidecar = serve(&dir, &["--init-script", init.to_str().unwrap()]);
    let mut failed = 0;
    wait_until("the probe to pass", LONG, || {
        let o = probe(dir.path(), &[]);
        if o.status.success() {
            return true;
        }
        assert_fails(&o, "not ready");
        failed += 1;
        false
    });
    figure("start_to_probe_pass_ms", start.elapsed().as_millis());
    assert!(failed > 0, "the probe passed before the init script ended");
    assert!(dir.exists("sidecar/ready"));
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(0));
}

/// A livenessProbe's view: a hung sidecar (SIGSTOP: alive, but no longer
/// beating) fails once its last beat is older than --max-age, and passes
/// again when it resumes.
#[test]
fn a_stopped_sidecar_fails_once_its_heartbeat_is_stale() {
    let dir = Dir::new();
    let sidecar = serve(&dir, &["--heartbeat", "100ms"]);
    dir.wait_for("sidecar/ready");
    let max_age = ["--max-age", "1s"];
    assert!(probe(dir.path(), &max_age).status.success());

    sidecar.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    wait_until("the probe to fail", LONG, || {
        !probe(dir.path(), &max_age).status.success()
    });
    let detected = stopped.elapsed();
    figure("sigstop_to_probe_fail_ms", detected.as_millis());
    assert_fails(
        &probe(dir.path(), &max_age),
        "heartbeat stale: the last beat is",
    );
    // Not before the bound (the last beat was at most 100 ms before the
    // stop), and not long after it.
    assert!(
        detected >= Duration::from_millis(850) && detected < Duration::from_secs(5),
        "{detected:?}"
    );

    sidecar.signal(libc::SIGCONT);
    wait_until("the probe to pass again", LONG, || {
        probe(dir.path(), &max_age).status.success()
    });
    dir.touch("close_flag");
    assert_eq!(sidecar.wait(LONG).code(), Some(0));
}

/// A ready record from one process beside the heartbeat of another is not
/// this sidecar (a restarted sidecar's leftovers).
#[test]
fn ready_and_heartbeat_of_different_processes_fail() {
    let dir = Dir::new();
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
    dir.write(
        "sidecar/ready",
        format!(
            r#"{{"protocol":1,"version":"0.1.0","pid":7,"parallelism":1,"started_at":"{now}"}}"#
        ),
    );
    assert_fails(&probe(dir.path(), &[]), "no heartbeat");
    dir.write(
        "sidecar/heartbeat",
        format!(r#"{{"seq":3,"pid":8,"at":"{now}"}}"#),
    );
    assert_fails(&probe(dir.path(), &[]), "not this sidecar");
    dir.write(
        "sidecar/heartbeat",
        format!(r#"{{"seq":3,"pid":7,"at":"{now}"}}"#),
    );
    assert!(probe(dir.path(), &[]).status.success());
}
