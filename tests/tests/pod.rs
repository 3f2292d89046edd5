//! A pod rehearsed with Docker: the sidecar container of a generated pod
//! template, run the way a kubelet would run it, beside an executor that is
//! Spark's user.
//!
//! 1. Render the native-sidecar template with the library
//!    ([`executor_shim::pod_template`]) and read it back with a YAML parser.
//! 2. Turn the sidecar container's `securityContext`, `command`, `args`,
//!    `env`, `volumeMounts` and `resources` into the equivalent `docker run`
//!    flags (numeric user, read-only root, all capabilities dropped, no
//!    privilege escalation, the default seccomp profile, no network, memory
//!    and CPU limits). A field the mapping does not know fails the test, so
//!    the rehearsal cannot silently skip a new setting.
//! 3. Run the offline-built image (`sidecar-foundry-dd:latest`) that way,
//!    with a world-writable scratch directory as the `emptyDir`, and check
//!    in `/proc/1/status` that the kernel applied the settings.
//! 4. Run the template's `startupProbe` as the kubelet does (`docker exec`)
//!    until it passes, time it, and time the `livenessProbe`. Freeze the
//!    sidecar (SIGSTOP): the liveness probe fails once the heartbeat is
//!    stale; thaw it: it passes again.
//! 5. Drive tasks through the attach provider (`executor-shim run
//!    --provider attach`) from processes running as uid 185, Spark's
//!    executor user, on the same directory, concurrently.
//! 6. Start one more task whose logic does not end, kill its executor
//!    process (the executor container has exited), and stop the sidecar as
//!    the kubelet stops a native sidecar: SIGTERM, then SIGKILL after the
//!    pod's grace (`docker stop --time 30`). The container must exit 0 by
//!    itself, well within the grace, and no task may be left half-done:
//!    every task directory left has an outcome, no process is left.
//!
//! Without a Docker engine the test prints `SKIPPED: docker: <reason>`;
//! `SIDECAR_REQUIRE_DOCKER=1` makes that a failure. Timings are printed as
//! `FIGURE name=value` lines on the real stdout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use executor_shim::pod_template::{render, PodTemplate};
use serde_json::Value;
use sidecar_core::record::{read_flag, Outcome, Status};
use sidecar_test_support::{require_docker, wait_until, IMAGE};

use common::Scratch;

/// Spark's executor user in its images.
const SPARK_UID: u32 = 185;
/// The pod's default terminationGracePeriodSeconds: the kubelet's SIGKILL
/// comes this long after its SIGTERM.
const POD_GRACE_SECONDS: u64 = 30;
/// Generous: a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);
/// The logic: a copy, or a task that never ends when its input says SLOW.
const LOGIC: &str = r#"if grep -q SLOW "$SIDECAR_INPUT"; then echo slow >&2; sleep 300; fi; cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#;

fn figure(name: &str, value: impl std::fmt::Display) {
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

/// The sidecar container of a template, as `docker run` would run it.
#[derive(Debug, Default)]
struct Rehearsal {
    /// `docker run` flags before the image.
    flags: Vec<String>,
    image: String,
    /// After the image: the container's `args`.
    args: Vec<String>,
    startup_probe: Vec<String>,
    liveness_probe: Vec<String>,
    /// The template's settings behind the flags, for the report.
    uid: u64,
    memory_limit: u64,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Every key of `v` must be one of `known`.
fn only(what: &str, v: &Value, known: &[&str]) {
    for key in v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: {v}"))
        .keys()
    {
        assert!(
            known.contains(&key.as_str()),
            "{what}.{key}: the rehearsal does not know how to run this setting"
        );
    }
}

/// A Kubernetes memory quantity in bytes (the suffixes the template uses).
fn bytes(q: &str) -> u64 {
    let units = [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)];
    for (suffix, unit) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap() * unit;
        }
    }
    q.parse().unwrap()
}

/// A Kubernetes CPU quantity in millicores.
fn millicores(q: &str) -> u64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => (q.parse::<f64>().unwrap() * 1000.0).round() as u64,
    }
}

/// `securityContext` to flags, each setting checked to be the locked-down one.
fn security_flags(sc: &Value, r: &mut Rehearsal) {
    only(
        "securityContext",
        sc,
        &[
            "runAsNonRoot",
            "runAsUser",
            "runAsGroup",
            "readOnlyRootFilesystem",
            "allowPrivilegeEscalation",
            "privileged",
            "capabilities",
            "seccompProfile",
        ],
    );
    let uid = sc["runAsUser"].as_u64().expect("a numeric runAsUser");
    let gid = sc["runAsGroup"].as_u64().expect("a numeric runAsGroup");
    // runAsNonRoot: the kubelet refuses to start a container as uid 0.
    assert_eq!(sc["runAsNonRoot"], true);
    assert_ne!(uid, 0);
    r.uid = uid;
    r.flags.extend(["--user".into(), format!("{uid}:{gid}")]);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    r.flags.push("--read-only".into());
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    r.flags
        .extend(["--security-opt".into(), "no-new-privileges".into()]);
    // privileged: false is docker's default; so is its seccomp profile,
    // which is what RuntimeDefault names.
    assert_eq!(sc["privileged"], false);
    assert_eq!(
        sc["seccompProfile"],
        serde_json::json!({"type": "RuntimeDefault"})
    );
    only("capabilities", &sc["capabilities"], &["drop"]);
    for cap in strings(&sc["capabilities"]["drop"]) {
        r.flags.extend(["--cap-drop".into(), cap]);
    }
}

/// `resources` to flags, as the kubelet sets the container's cgroup:
/// limits to hard limits, requests to the memory reservation and CPU shares.
fn resource_flags(res: &Value, r: &mut Rehearsal) {
    only("resources", res, &["requests", "limits"]);
    let get = |section: &str, key: &str| res[section][key].as_str().map(str::to_owned);
    if let Some(m) = get("limits", "memory") {
        r.memory_limit = bytes(&m);
        r.flags
            .extend(["--memory".into(), r.memory_limit.to_string()]);
    }
    if let Some(m) = get("requests", "memory") {
        r.flags
            .extend(["--memory-reservation".into(), bytes(&m).to_string()]);
    }
    if let Some(c) = get("limits", "cpu") {
        let cpus = millicores(&c) as f64 / 1000.0;
        r.flags.extend(["--cpus".into(), format!("{cpus}")]);
    }
    if let Some(c) = get("requests", "cpu") {
        let shares = (millicores(&c) * 1024 / 1000).max(2);
        r.flags.extend(["--cpu-shares".into(), shares.to_string()]);
    }
}

/// The sidecar container of `pod` as `docker run` flags, with `volume` (a
/// host directory) as the pod's emptyDir.
fn rehearsal(pod: &Value, volume: &Path) -> Rehearsal {
    let spec = &pod["spec"];
    let sidecar = &spec["initContainers"][0];
    only(
        "sidecar",
        sidecar,
        &[
            "name",
            "image",
            // The kubelet's business: starting order and restarts.
            "restartPolicy",
            "command",
            "args",
            "env",
            "volumeMounts",
            "resources",
            "startupProbe",
            "livenessProbe",
            "securityContext",
            // Where the kubelet looks for the pod's message.
            "terminationMessagePolicy",
        ],
    );
    let mut r = Rehearsal {
        image: sidecar["image"].as_str().unwrap().to_owned(),
        args: strings(&sidecar["args"]),
        startup_probe: strings(&sidecar["startupProbe"]["exec"]["command"]),
        liveness_probe: strings(&sidecar["livenessProbe"]["exec"]["command"]),
        ..Default::default()
    };
    // The pod has a network; the sidecar needs none: rehearse stricter.
    r.flags.extend(["--network".into(), "none".into()]);
    security_flags(&sidecar["securityContext"], &mut r);
    resource_flags(&sidecar["resources"], &mut r);
    let command = strings(&sidecar["command"]);
    assert_eq!(command.len(), 1, "{command:?}");
    r.flags.extend(["--entrypoint".into(), command[0].clone()]);
    for e in sidecar["env"].as_array().unwrap() {
        only("env", e, &["name", "value"]);
        let (k, v) = (e["name"].as_str().unwrap(), e["value"].as_str().unwrap());
        r.flags.extend(["-e".into(), format!("{k}={v}")]);
    }
    for m in sidecar["volumeMounts"].as_array().unwrap() {
        only("volumeMount", m, &["name", "mountPath"]);
        let name = m["name"].as_str().unwrap();
        let vol = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap();
        assert!(vol["emptyDir"].is_object(), "{vol}");
        let path = m["mountPath"].as_str().unwrap();
        r.flags
            .extend(["-v".into(), format!("{}:{path}", volume.display())]);
    }
    r
}

/// A running container, removed when dropped.
struct Container {
    id: String,
}

impl Container {
    fn state(&self, field: &str) -> String {
        docker_ok(&[
            "inspect",
            "--format",
            &format!("{{{{.State.{field}}}}}"),
            &self.id,
        ])
    }

    fn logs(&self) -> String {
        let out = docker(&["logs", &self.id]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `docker exec` as the kubelet runs an exec probe: the container's
    /// user, the probe's argv, judged by the exit status.
    fn exec(&self, argv: &[String]) -> (Output, Duration) {
        let mut args = vec!["exec", self.id.as_str()];
        args.extend(argv.iter().map(String::as_str));
        let start = Instant::now();
        let out = docker(&args);
        (out, start.elapsed())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.id]);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A field of `/proc/1/status` inside the container.
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/1/status:\n{status}"))
        .trim()
        .to_owned()
}

/// The kernel's view of the sidecar: the template's settings applied.
fn assert_kernel_applied(c: &Container, r: &Rehearsal) {
    let (o, _) = c.exec(&["cat".into(), "/proc/1/status".into()]);
    assert!(o.status.success(), "{}", text(&o));
    let status = String::from_utf8_lossy(&o.stdout).into_owned();
    let uid = status_field(&status, "Uid");
    assert!(
        uid.split_whitespace().all(|u| u == r.uid.to_string()),
        "Uid: {uid}"
    );
    assert_eq!(status_field(&status, "CapEff"), "0000000000000000");
    assert_eq!(status_field(&status, "CapBnd"), "0000000000000000");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    // 2: a seccomp filter is in force (docker's default profile).
    assert_eq!(status_field(&status, "Seccomp"), "2");
    let name = status_field(&status, "Name");
    assert!(name.starts_with("sidecar-entry"), "PID 1 is {name}");
    // A directory of the image that the sidecar's user owns: only the
    // read-only root stops the write.
    let (o, _) = c.exec(&["touch".into(), "/opt/palantir/sidecars/probe-write".into()]);
    assert!(!o.status.success(), "the root filesystem is writable");
    assert!(text(&o).contains("Read-only file system"), "{}", text(&o));
    let mem = docker_ok(&["inspect", "--format", "{{.HostConfig.Memory}}", &c.id]);
    assert_eq!(mem, r.memory_limit.to_string());
}

fn batch(rows: usize, tag: &str) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("s", DataType::Utf8, false),
    ]));
    let ns: Vec<i64> = (0..rows as i64).collect();
    let ss: Vec<String> = (0..rows).map(|i| format!("{tag}-{i}")).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ns)),
            Arc::new(StringArray::from(ss)),
        ],
    )
    .unwrap()
}

fn ipc(b: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &b.schema()).unwrap();
    w.write(b).unwrap();
    w.finish().unwrap();
    drop(w);
    out
}

/// `executor-shim run --provider attach` on `volume`, as Spark's user.
fn executor_task(volume: &Path, partition: u32, input: &RecordBatch) -> Child {
    let mut cmd = Command::new(common::shim_bin());
    cmd.args(["run", "--provider", "attach", "--input-format", "csv"])
        .arg("--volume")
        .arg(volume)
        .args([
            "--partition",
            &partition.to_string(),
            "--expect-input-schema",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if common::is_root() {
        cmd.uid(SPARK_UID).gid(SPARK_UID);
    }
    let mut child = cmd.spawn().unwrap();
    let bytes = ipc(input);
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let _ = stdin.write_all(&bytes);
    });
    child
}

fn read_ipc(bytes: &[u8]) -> Vec<RecordBatch> {
    let reader = arrow::ipc::reader::StreamReader::try_new(bytes, None).unwrap();
    reader.map(|b| b.unwrap()).collect()
}

/// Starts the sidecar and measures `docker run` to ready and to the first
/// passing startup probe.
fn start(r: &Rehearsal, volume: &Path) -> Container {
    let mut args: Vec<String> = vec!["run".into(), "-d".into()];
    args.extend(r.flags.iter().cloned());
    args.push(r.image.clone());
    args.extend(r.args.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let spawned = Instant::now();
    let c = Container {
        id: docker_ok(&args),
    };
    let ready = volume.join("sidecar/ready");
    wait_until("sidecar/ready", DEADLINE, || {
        let up = ready.exists();
        if !up && c.state("Running") != "true" {
            panic!(
                "the sidecar exited ({}):\n{}",
                c.state("ExitCode"),
                c.logs()
            );
        }
        up
    });
    figure("docker_run_to_ready_ms", spawned.elapsed().as_millis());
    // The startup probe, as often as docker allows (the template's period
    // is 1 s): the kubelet would start the executor after this passes.
    let mut failures = Vec::new();
    wait_until("the startup probe to pass", DEADLINE, || {
        let (o, _) = c.exec(&r.startup_probe);
        if !o.status.success() {
            failures.push(text(&o));
        }
        o.status.success()
    });
    figure(
        "docker_run_to_startup_probe_ms",
        spawned.elapsed().as_millis(),
    );
    for f in &failures {
        assert!(f.contains("not ready"), "{f}");
    }
    c
}

/// The liveness probe's latency through `docker exec`, and its verdict on
/// a frozen sidecar.
fn liveness(c: &Container, r: &Rehearsal) {
    let mut took = Vec::new();
    for _ in 0..10 {
        let (o, d) = c.exec(&r.liveness_probe);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).starts_with("ready: pid 1,"), "{}", text(&o));
        took.push(d);
    }
    let max = *took.iter().max().unwrap();
    figure("probe_docker_exec_median_ms", median(took).as_millis());
    figure("probe_docker_exec_max_ms", max.as_millis());
    assert!(max < Duration::from_secs(1), "a probe took {max:?}");

    // A hung sidecar: alive, not beating.
    docker_ok(&["kill", "--signal", "STOP", &c.id]);
    let frozen = Instant::now();
    let mut last = String::new();
    wait_until("the liveness probe to fail", DEADLINE, || {
        let (o, _) = c.exec(&r.liveness_probe);
        last = text(&o);
        !o.status.success()
    });
    figure("sigstop_to_liveness_fail_ms", frozen.elapsed().as_millis());
    assert!(last.contains("heartbeat stale"), "{last}");
    docker_ok(&["kill", "--signal", "CONT", &c.id]);
    wait_until("the liveness probe to pass again", DEADLINE, || {
        c.exec(&r.liveness_probe).0.status.success()
    });
}

/// The task directories on the volume (dot-files are temporaries).
fn task_dirs(volume: &Path) -> Vec<String> {
    std::fs::read_dir(volume.join("tasks"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// Every task directory left has a readable, final outcome.
fn outcomes_left(volume: &Path) -> BTreeMap<String, Outcome> {
    let mut left = BTreeMap::new();
    for name in task_dirs(volume) {
        let done = volume.join("tasks").join(&name).join("done_flag");
        let bytes =
            read_flag(&done, "outcome").unwrap_or_else(|e| panic!("task {name} is half-done: {e}"));
        left.insert(name, Outcome::parse(&bytes, &done).unwrap());
    }
    left
}

/// Four tasks from Spark's user, concurrently, through the attach provider.
fn drive_tasks(c: &Container, r: &Rehearsal, volume: &Path) {
    if !common::is_root() {
        println!("NOTE: not root: the executor side runs as this uid, not {SPARK_UID}");
    }
    let started = Instant::now();
    let inputs: Vec<RecordBatch> = (0..4).map(|p| batch(500, &format!("p{p}"))).collect();
    let runs: Vec<Child> = (0..4u32)
        .map(|p| executor_task(volume, p, &inputs[p as usize]))
        .collect();
    for (run, input) in runs.into_iter().zip(&inputs) {
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "{}\n{}", text(&out), c.logs());
        let got = read_ipc(&out.stdout);
        let got = arrow::compute::concat_batches(&input.schema(), &got).unwrap();
        assert_eq!(&got, input);
    }
    figure("four_tasks_as_uid_185_ms", started.elapsed().as_millis());
    if common::is_root() {
        use std::os::unix::fs::MetadataExt as _;
        // The executor side's files are Spark's user's; the sidecar's, its own.
        let owner = |rel: &str| std::fs::metadata(volume.join(rel)).unwrap().uid();
        assert_eq!(owner("executor/lease"), SPARK_UID);
        assert_eq!(u64::from(owner("sidecar/ready")), r.uid);
    }
    // Collected and closed: the sidecar removed their directories.
    wait_until("closed tasks to be removed", DEADLINE, || {
        task_dirs(volume).is_empty()
    });
}

/// One task in flight when its executor goes away; then the kubelet's
/// stop: SIGTERM, SIGKILL after the pod's grace. Returns how long it took.
fn stop_with_a_task_in_flight(c: &Container, volume: &Path) -> Duration {
    let mut slow = executor_task(volume, 9, &batch(3, "SLOW"));
    let logic_runs = || {
        std::fs::read_dir(volume.join("tasks"))
            .unwrap()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path().join("stderr")).is_ok_and(|s| s.contains("slow"))
            })
    };
    wait_until("the slow task's logic to run", DEADLINE, logic_runs);
    slow.kill().unwrap();
    slow.wait().unwrap();
    let stop = Instant::now();
    docker_ok(&["stop", "--time", &POD_GRACE_SECONDS.to_string(), &c.id]);
    let took = stop.elapsed();
    figure("sigterm_to_exit_ms", took.as_millis());
    took
}

#[test]
fn the_native_sidecar_of_a_generated_template_runs_locked_down_beside_spark() {
    require_docker!();
    let scratch = Scratch::new("pod");
    let volume = scratch.volume("empty-dir");
    let template = PodTemplate {
        image: IMAGE.into(),
        native_sidecar: true,
        parallel: Some(2),
        cpu: Some("1".into()),
        memory: Some("256Mi".into()),
        command: vec!["sh".into(), "-c".into(), LOGIC.into()],
        ..Default::default()
    };
    template.validate().unwrap();
    let pod: Value = serde_norway::from_str(&render(&template)).unwrap();
    let r = rehearsal(&pod, &volume);
    println!(
        "docker run {} {} {}",
        r.flags.join(" "),
        r.image,
        r.args.join(" ")
    );

    let c = start(&r, &volume);
    assert_kernel_applied(&c, &r);
    liveness(&c, &r);
    drive_tasks(&c, &r, &volume);

    let took = stop_with_a_task_in_flight(&c, &volume);
    let logs = c.logs();
    assert_eq!(c.state("ExitCode"), "0", "{logs}");
    assert_eq!(c.state("OOMKilled"), "false", "{logs}");
    // The entrypoint ended by itself: TERM to the logic, no KILL needed.
    assert!(
        took < Duration::from_secs(POD_GRACE_SECONDS / 2),
        "{took:?}\n{logs}"
    );

    // Nothing half-done (outcomes_left refuses a task directory without
    // its outcome). The slow task's executor died just before the stop:
    // either the sidecar saw its owner lock go first, cancelled the logic
    // and reclaimed the directory, or the SIGTERM came first and the task
    // says so.
    let left = outcomes_left(&volume);
    assert!(left.len() <= 1, "{left:?}");
    if let Some((id, o)) = left.iter().next() {
        assert!(id.starts_with("p9-"), "{id}");
        assert_eq!(o.status, Status::Cancelled, "{o:?}");
        let reason = o.reason.as_deref().unwrap_or("");
        assert!(
            reason.contains("SIGTERM") || reason.contains("owner"),
            "{o:?}"
        );
    }
    let leftovers = scratch.wait_no_leftovers(Duration::from_secs(5));
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
