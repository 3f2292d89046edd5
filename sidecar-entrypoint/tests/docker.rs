#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Foundry `dd` example image (`examples/foundry-dd`) under a real
//! Docker engine, locked down the way the platforms run it: numeric user,
//! read-only root filesystem, no network, no capabilities, no new
//! privileges.
//!
//! The executor side here is what a Foundry executor does by hand: write
//! `infile.csv`, raise `start_flag`, wait for `done_flag`, read the outputs,
//! raise `close_flag`. Nothing of this crate or `sidecar-core` is used for it,
//! so the test shows that an executor written for Foundry's example works
//! unchanged.
//!
//! Without a Docker engine (or when the image cannot be built) every test
//! prints `SKIPPED: docker: <reason>` to stderr and returns; set
//! `SIDECAR_REQUIRE_DOCKER=1` to make that a failure instead. The image is
//! built once per test run by `examples/foundry-dd/build.sh` (offline:
//! `FROM scratch`). The tests take turns: they share one engine on a small
//! machine, and one of them measures start-up time.
//!
//! Measurements are printed as `FIGURE name=value` lines
//! on the real stdout, shown even without `--nocapture`.

use std::fs;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sidecar_core::record::{Outcome, Status};

/// Foundry's mount point, `$SHARED_DIR` in the image.
const SHARED: &str = "/opt/palantir/sidecars/shared-volumes/shared";
/// The entrypoint's log line once it is ready for `start_flag`.
const WAITING_LINE: &str = "waiting for start_flag";
/// Generous: a loaded 2-core machine, a FUSE overlay filesystem.
const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- harness

use sidecar_test_support::{require_docker, IMAGE};

/// The tests take turns (see the module docs).
fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A measured figure, as `FIGURE name=value` on the real stdout (past the
/// harness's capture, like a `SKIPPED` line).
fn figure(name: &str, value: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "FIGURE {name}={value}");
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker {args:?}: {e}"))
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The locked-down `docker run -d` flags, with `dir` as the shared volume.
fn locked_down(dir: &Path) -> Vec<String> {
    [
        "run",
        "-d",
        "--user",
        "5001",
        "--read-only",
        "--network",
        "none",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "-v",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("{}:{SHARED}", dir.display())])
    .collect()
}

/// A running container, removed (`docker rm -f`) when dropped, whatever
/// the test's outcome.
#[derive(Debug)]
struct Container {
    id: String,
}

impl Container {
    fn start(args: &[String]) -> Self {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = docker_ok(&args);
        assert!(!id.is_empty(), "docker {args:?} printed no container id");
        Self { id }
    }

    fn logs(&self) -> String {
        let out = docker(&["logs", &self.id]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn exit_code(&self) -> i64 {
        docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", &self.id])
            .parse()
            .unwrap()
    }

    fn running(&self) -> bool {
        docker_ok(&["inspect", "--format", "{{.State.Running}}", &self.id]) == "true"
    }

    /// `docker wait`, bounded by `limit`: the exit code, or a panic that
    /// shows the container's logs.
    fn wait(&self, limit: Duration) -> i64 {
        let mut child: Child = Command::new("docker")
            .args(["wait", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut out = String::new();
                child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                assert!(status.success(), "docker wait {} failed", self.id);
                return out.trim().parse().unwrap();
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "container still running {limit:?} after it should have exited; logs:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The container's processes: (pid, command name, state letter), read
    /// from its own /proc with busybox.
    fn processes(&self) -> Vec<(u32, String, char)> {
        let out = docker_ok(&[
            "exec",
            &self.id,
            "/bin/sh",
            "-c",
            "cat /proc/[0-9]*/stat 2>/dev/null; true",
        ]);
        out.lines()
            .filter_map(|line| {
                // "pid (comm) S ppid ...": comm may contain spaces and ')'.
                let (pid, rest) = line.split_once(" (")?;
                let (comm, rest) = rest.rsplit_once(") ")?;
                Some((pid.parse().ok()?, comm.to_owned(), rest.chars().next()?))
            })
            .collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A host directory for the shared volume, writable by the container's
/// user 5001.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("sidecar-docker-")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Raises a flag the way a careful executor does: a dot-temporary in the
/// same directory, renamed into place.
fn raise(dir: &Path, flag: &str) {
    let tmp = dir.join(format!(".{flag}.tmp"));
    fs::write(&tmp, b"").unwrap();
    fs::rename(&tmp, dir.join(flag)).unwrap();
}

/// Polls `f` until it returns `Some`, for at most `limit`.
fn wait_for<T>(limit: Duration, what: &str, c: &Container, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!(
                "timed out after {limit:?} waiting for {what}; container logs:\n{}",
                c.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn outcome(dir: &Path) -> Outcome {
    let path = dir.join("done_flag");
    let bytes = fs::read(&path).unwrap();
    Outcome::parse(&bytes, &path).unwrap_or_else(|e| {
        panic!(
            "done_flag is not an outcome: {e}\n{}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

fn is_rfc3339_utc(word: &str) -> bool {
    word.ends_with('Z') && humantime::parse_rfc3339(word).is_ok()
}

// ------------------------------------------------------------------ tests

#[test]
fn foundry_dd_flow_locked_down() {
    require_docker!();
    let _turn = turn();
    let dir = shared_dir();
    let size: u64 = docker_ok(&["image", "inspect", "--format", "{{.Size}}", IMAGE])
        .parse()
        .unwrap();
    figure("image_size_bytes", size);

    // The image's own ENTRYPOINT, exactly Foundry's shell form.
    let mut args = locked_down(dir.path());
    args.push(IMAGE.into());
    let spawned = Instant::now();
    let c = Container::start(&args);
    wait_for(
        DEADLINE,
        "the entrypoint to wait for start_flag",
        &c,
        || c.logs().contains(WAITING_LINE).then_some(()),
    );
    let to_waiting = spawned.elapsed();
    figure("run_to_waiting_ms", to_waiting.as_millis());
    // Of which the entrypoint's own share: from the container's start (as
    // docker records it) to the log line's timestamp, both on this host's clock.
    let started = docker_ok(&["inspect", "--format", "{{.State.StartedAt}}", &c.id]);
    let logs = c.logs();
    let line = logs.lines().find(|l| l.contains(WAITING_LINE)).unwrap();
    let stamp = line.split_whitespace().next().unwrap();
    if let (Ok(a), Ok(b)) = (
        humantime::parse_rfc3339(&started),
        humantime::parse_rfc3339(stamp),
    ) {
        let ms = b.duration_since(a).map_or(0, |d| d.as_millis());
        figure("container_start_to_waiting_ms", ms);
    }
    // The shell of the shell-form ENTRYPOINT exec'd the entrypoint: it is
    // PID 1, so `docker stop`'s SIGTERM reaches it (a shell as PID 1 would
    // ignore it) and it reaps orphans.
    let procs = c.processes();
    assert!(
        procs
            .iter()
            .any(|(pid, comm, _)| *pid == 1 && comm == "entrypoint"),
        "PID 1 is not the entrypoint: {procs:?}"
    );
    // Nothing may run before the start flag.
    assert!(!dir.path().join("done_flag").exists());
    assert!(!dir.path().join("outfile.csv").exists());

    // A Foundry executor: stage the input, raise start_flag, wait for done_flag.
    let mut input = b"id,name,score\n".to_vec();
    for i in 0..2000u32 {
        input.extend_from_slice(format!("{i},name-{i},{}\n", i * 7 % 101).as_bytes());
    }
    input.extend_from_slice(b"\0\xff not utf-8, no final newline");
    fs::write(dir.path().join("infile.csv"), &input).unwrap();
    raise(dir.path(), "start_flag");
    wait_for(DEADLINE, "done_flag", &c, || {
        dir.path().join("done_flag").exists().then_some(())
    });

    let out = fs::read(dir.path().join("outfile.csv")).unwrap();
    assert!(
        out == input,
        "outfile.csv differs from infile.csv ({} vs {} bytes)",
        out.len(),
        input.len()
    );

    let o = outcome(dir.path());
    assert_eq!(o.status, Status::Succeeded, "{o:?}");
    assert_eq!(o.exit_code, Some(0), "{o:?}");
    assert_eq!(o.signal, None, "{o:?}");

    // dd's report on stderr, one timestamped line per line.
    let log = fs::read_to_string(dir.path().join("logfile")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 2, "logfile:\n{log}");
    for line in &lines {
        let (stamp, _) = line.split_once(' ').unwrap_or((line, ""));
        assert!(
            is_rfc3339_utc(stamp),
            "line without an RFC 3339 UTC timestamp: {line:?}"
        );
    }
    assert!(
        log.contains("records in") && log.contains("records out"),
        "logfile:\n{log}"
    );

    // close_flag: the container exits with the command's status, promptly.
    assert!(c.running(), "exited before close_flag; logs:\n{}", c.logs());
    raise(dir.path(), "close_flag");
    assert_eq!(c.wait(DEADLINE), 0, "logs:\n{}", c.logs());
}

#[test]
fn foundry_dd_failure_is_reported_in_done_flag() {
    require_docker!();
    let _turn = turn();
    let dir = shared_dir();
    // No infile.csv: dd fails. The example image wrote an empty done_flag
    // and exited 0; this one says what happened and exits with dd's status.
    let mut args = locked_down(dir.path());
    args.push(IMAGE.into());
    let c = Container::start(&args);
    raise(dir.path(), "start_flag");
    wait_for(DEADLINE, "done_flag", &c, || {
        dir.path().join("done_flag").exists().then_some(())
    });
    let o = outcome(dir.path());
    assert_eq!(o.status, Status::Failed, "{o:?}");
    assert_eq!(o.exit_code, Some(1), "{o:?}");
    assert!(o.stderr_tail.contains("infile.csv"), "{o:?}");
    raise(dir.path(), "close_flag");
    assert_eq!(c.wait(DEADLINE), 1, "logs:\n{}", c.logs());
}

/// `docker stop` during a long task: TERM to the logic, done_flag says
/// cancelled, the container exits 143 by itself (not 137 from docker's KILL).
fn stop_during(logic: &str, grace: &str, stop_after: u64) -> (Outcome, i64, Duration, String) {
    let dir = shared_dir();
    let mut args = locked_down(dir.path());
    args.extend(
        [
            "--entrypoint",
            "/usr/bin/sidecar-entrypoint",
            IMAGE,
            "--grace",
            grace,
            "-c",
            logic,
        ]
        .map(String::from),
    );
    let c = Container::start(&args);
    raise(dir.path(), "start_flag");
    wait_for(DEADLINE, "the logic to run", &c, || {
        c.processes()
            .iter()
            .any(|(_, comm, state)| comm == "sleep" && *state != 'Z')
            .then_some(())
    });
    let stop = Instant::now();
    docker_ok(&["stop", "-t", &stop_after.to_string(), &c.id]);
    let took = stop.elapsed();
    let code = c.exit_code();
    assert!(
        dir.path().join("done_flag").exists(),
        "no done_flag; logs:\n{}",
        c.logs()
    );
    (outcome(dir.path()), code, took, c.logs())
}

#[test]
fn docker_stop_cancels_the_task_and_exits_143() {
    require_docker!();
    let _turn = turn();
    // A logic that dies of TERM.
    let (o, code, took, logs) = stop_during("sleep 300", "2s", 20);
    figure("docker_stop_ms", took.as_millis());
    assert_eq!(o.status, Status::Cancelled, "{o:?}\n{logs}");
    assert_eq!(code, 143, "{logs}");
    // Far below docker's own 20 s KILL: the entrypoint ended the task.
    assert!(
        took < Duration::from_secs(15),
        "docker stop took {took:?}\n{logs}"
    );
}

#[test]
fn docker_stop_escalates_to_kill_after_the_grace() {
    require_docker!();
    let _turn = turn();
    // A logic that ignores TERM (the ignored disposition survives exec).
    let (o, code, took, logs) = stop_during("trap '' TERM; sleep 300", "2s", 20);
    figure("docker_stop_with_grace_ms", took.as_millis());
    assert_eq!(o.status, Status::Cancelled, "{o:?}\n{logs}");
    assert_eq!(code, 143, "{logs}");
    // The grace was honoured (no KILL before it), and the entrypoint, not
    // docker's 20 s KILL, ended the container.
    assert!(
        took >= Duration::from_millis(1900),
        "stopped after {took:?}, before the 2s grace\n{logs}"
    );
    assert!(
        took < Duration::from_secs(15),
        "docker stop took {took:?}\n{logs}"
    );
}

#[test]
fn orphans_are_reaped_by_pid_1() {
    require_docker!();
    let _turn = turn();
    let dir = shared_dir();
    let mut args = locked_down(dir.path());
    args.extend(
        [
            "--entrypoint",
            "/usr/bin/sidecar-entrypoint",
            IMAGE,
            "-c",
            // Each subshell exits at once, leaving its `sleep` to PID 1.
            "(sleep 0.2 &) ; (sleep 0.2 &) ; (sleep 0.3 &) ; sleep 300",
        ]
        .map(String::from),
    );
    let c = Container::start(&args);
    raise(dir.path(), "start_flag");

    // Once the orphans have exited (0.3 s), nothing may stay a zombie: only
    // the entrypoint, the shell and `sleep 300` remain (plus our probe).
    let procs = wait_for(DEADLINE, "the orphans to exit and be reaped", &c, || {
        let procs = c.processes();
        let sleeps = procs.iter().filter(|(_, comm, _)| comm == "sleep").count();
        let zombies = procs.iter().filter(|(_, _, s)| *s == 'Z').count();
        (sleeps == 1 && zombies == 0).then_some(procs)
    });
    // PID 1 is the entrypoint itself, not a shell.
    let pid1 = procs.iter().find(|(pid, _, _)| *pid == 1).expect("a PID 1");
    assert_eq!(pid1.1, "sidecar-entrypo", "PID 1: {procs:?}");
    // And they stay reaped.
    std::thread::sleep(Duration::from_millis(500));
    let zombies: Vec<_> = c
        .processes()
        .into_iter()
        .filter(|(_, _, s)| *s == 'Z')
        .collect();
    assert!(zombies.is_empty(), "zombies: {zombies:?}");
}

/// The image in serve mode with the arguments `executor-shim pod-template`
/// gives the sidecar container, the host playing the executor.
#[test]
fn serve_mode_with_the_pod_template_arguments() {
    require_docker!();
    let _turn = turn();
    let dir = shared_dir();
    let volume = "/opt/sidecar/shared-volumes/shared";
    let mut args = locked_down(dir.path());
    // Mounted at the design's default path, not Foundry's.
    let last = args.len() - 1;
    args[last] = format!("{}:{volume}", dir.path().display());
    args.extend(
        [
            "--entrypoint",
            "/usr/bin/sidecar-entrypoint",
            IMAGE,
            "--mode",
            "serve",
            "--volume",
            volume,
            "--exit-on-orphan",
            "--parallel",
            "2",
            "--",
            "/bin/sh",
            "-c",
            "dd if=\"$SIDECAR_INPUT\" of=\"$SIDECAR_OUTPUT\"",
        ]
        .map(String::from),
    );
    let c = Container::start(&args);

    let ready_path = dir.path().join("sidecar/ready");
    let ready: serde_json::Value = wait_for(DEADLINE, "sidecar/ready", &c, || {
        serde_json::from_slice(&fs::read(&ready_path).ok()?).ok()
    });
    assert_eq!(ready["protocol"], 1, "{ready}");
    assert_eq!(ready["pid"], 1, "the entrypoint is PID 1: {ready}");
    assert_eq!(ready["parallelism"], 2, "{ready}");

    // The executor (here root; see serve_mode_executor_as_another_user for
    // another uid) makes the task's directories writable by the sidecar's
    // user, as the shim does.
    let task = dir.path().join("tasks/p3-a0");
    let input = b"a,b\n1,2\n3,4\n";
    for d in [task.clone(), task.join("input")] {
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
    }
    fs::write(task.join("input/part.csv"), input).unwrap();
    let spec = br#"{"input":{"format":"csv","files":["part.csv"]}}"#;
    fs::write(task.join(".start_flag.tmp"), spec).unwrap();
    fs::rename(task.join(".start_flag.tmp"), task.join("start_flag")).unwrap();

    wait_for(DEADLINE, "the task's done_flag", &c, || {
        task.join("done_flag").exists().then_some(())
    });
    let o = outcome(&task);
    assert_eq!(o.status, Status::Succeeded, "{o:?}");
    assert_eq!(o.task_id, "p3-a0");
    assert_eq!(o.outputs.len(), 1, "{o:?}");
    assert_eq!(o.outputs[0].path, "part.csv");
    assert_eq!(o.outputs[0].bytes, input.len() as u64);
    assert_eq!(fs::read(task.join("output/part.csv")).unwrap(), input);

    // Task close_flag: the sidecar removes the task directory.
    raise(&task, "close_flag");
    wait_for(DEADLINE, "the task directory to be removed", &c, || {
        (!task.exists()).then_some(())
    });
    // Root close_flag: drain and exit 0.
    raise(dir.path(), "close_flag");
    assert_eq!(c.wait(DEADLINE), 0, "logs:\n{}", c.logs());
}

/// As in a Kubernetes pod: the executor is another container with another
/// numeric user (Spark images run as 185) on the same volume. It must be
/// able to create its task under `tasks/`, read the sidecar's output, and
/// the sidecar must be able to remove the task afterwards.
#[test]
fn serve_mode_executor_as_another_user() {
    require_docker!();
    let _turn = turn();
    let dir = shared_dir();
    let volume = "/opt/sidecar/shared-volumes/shared";
    let mount = format!("{}:{volume}", dir.path().display());
    let mut args = locked_down(dir.path());
    let last = args.len() - 1;
    args[last] = mount.clone();
    args.extend(
        [
            "--entrypoint",
            "/usr/bin/sidecar-entrypoint",
            IMAGE,
            "--mode",
            "serve",
            "--volume",
            volume,
            "--exit-on-orphan",
            "--",
            "/bin/sh",
            "-c",
            "dd if=\"$SIDECAR_INPUT\" of=\"$SIDECAR_OUTPUT\"",
        ]
        .map(String::from),
    );
    let c = Container::start(&args);
    let ready = dir.path().join("sidecar/ready");
    wait_for(DEADLINE, "sidecar/ready", &c, || {
        ready.exists().then_some(())
    });

    // The executor: uid 185, locked down too, busybox for its file work.
    let executor = |script: &str| -> Output {
        docker(&[
            "run",
            "--rm",
            "--user",
            "185",
            "--read-only",
            "--network",
            "none",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "-v",
            &mount,
            "-w",
            volume,
            "--entrypoint",
            "/bin/sh",
            IMAGE,
            "-c",
            script,
        ])
    };
    // What the shim does: world-writable task directories (mkdir, then
    // chmod: independent of the umask), staged input, an atomic start_flag.
    let stage = executor(
        "set -e
         mkdir tasks/p1-a0
         chmod 777 tasks/p1-a0
         mkdir tasks/p1-a0/input
         chmod 777 tasks/p1-a0/input
         printf 'k,v\\n1,one\\n2,two\\n' > tasks/p1-a0/input/part.csv
         printf '{\"input\":{\"format\":\"csv\",\"files\":[\"part.csv\"]}}' > tasks/p1-a0/.start_flag
         mv tasks/p1-a0/.start_flag tasks/p1-a0/start_flag",
    );
    assert!(
        stage.status.success(),
        "the executor (uid 185) cannot stage its task beside the sidecar (uid 5001): {}\nls -la of the volume:\n{}",
        String::from_utf8_lossy(&stage.stderr),
        String::from_utf8_lossy(&docker(&["exec", &c.id, "/bin/ls", "-la", volume, &format!("{volume}/tasks")]).stdout),
    );

    let task = dir.path().join("tasks/p1-a0");
    wait_for(DEADLINE, "the task's done_flag", &c, || {
        task.join("done_flag").exists().then_some(())
    });
    let o = outcome(&task);
    assert_eq!(o.status, Status::Succeeded, "{o:?}");

    // The executor reads the output and closes the task.
    let read = executor("cat tasks/p1-a0/output/part.csv && touch tasks/p1-a0/.c && mv tasks/p1-a0/.c tasks/p1-a0/close_flag");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&read.stdout), "k,v\n1,one\n2,two\n");
    // The sidecar removes what the executor created.
    wait_for(DEADLINE, "the task directory to be removed", &c, || {
        (!task.exists()).then_some(())
    });
    raise(dir.path(), "close_flag");
    assert_eq!(c.wait(DEADLINE), 0, "logs:\n{}", c.logs());
}

/// `sidecar-entrypoint check` finds nothing wrong with the image, locked
/// down, with the Foundry volume mounted and `dd` as the command.
#[test]
fn check_passes_in_the_locked_down_image() {
    require_docker!();
    let _turn = turn();
    let dir = shared_dir();
    let mut args = locked_down(dir.path());
    // Run in the foreground and remove: not `-d`.
    args.retain(|a| a != "-d");
    args.insert(1, "--rm".into());
    args.extend(
        [
            "--entrypoint",
            "/usr/bin/sidecar-entrypoint",
            IMAGE,
            "check",
            "--volume",
            SHARED,
            "--",
            "dd",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = docker(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "check failed ({}):\n{text}",
        out.status
    );
    assert!(
        text.contains(SHARED),
        "check did not look at the volume:\n{text}"
    );
}
