#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `executor-shim harness` end to end: the real binary, real
//! `sidecar-entrypoint` processes (and a real Docker container), the bundled
//! sample dataset, and the files a user would look at afterwards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sidecar_test_support::IMAGE;

use arrow::array::{Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::compute::{concat_batches, sort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};

const SHIM: &str = env!("CARGO_BIN_EXE_executor-shim");

fn workspace() -> PathBuf {
    sidecar_test_support::workspace()
}

fn sample() -> PathBuf {
    workspace().join("examples/sample/trips.csv")
}

/// The `sidecar-entrypoint` the harness's local sidecars run.
fn entrypoint() -> PathBuf {
    sidecar_test_support::entrypoint()
}

/// One harness run in a scratch directory.
struct Run {
    dir: tempfile::TempDir,
    output: Output,
}

impl Run {
    fn out_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }
    fn volumes(&self) -> PathBuf {
        self.dir.path().join("volumes")
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    fn code(&self) -> Option<i32> {
        self.output.status.code()
    }
    fn explain(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code(),
            self.stdout(),
            self.stderr()
        )
    }
}

/// Prepares a scratch directory (so a test can plant files in it first).
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("harness-test.")
        .tempdir()
        .unwrap();
    std::fs::create_dir(dir.path().join("out")).unwrap();
    dir
}

fn harness_in(dir: tempfile::TempDir, args: &[&str], command: &[&str]) -> Run {
    let out = dir.path().join("out");
    let volumes = dir.path().join("volumes");
    let mut cmd = Command::new(SHIM);
    cmd.arg("harness")
        .args(args)
        .arg("--output")
        .arg(&out)
        .arg("--volume-root")
        .arg(&volumes)
        .arg("--no-progress")
        .env("SIDECAR_ENTRYPOINT", entrypoint());
    if !command.is_empty() {
        cmd.arg("--").args(command);
    }
    let output = cmd.output().unwrap();
    Run { dir, output }
}

fn harness(args: &[&str], command: &[&str]) -> Run {
    harness_in(scratch(), args, command)
}

/// Processes whose command line or environment mentions `root`: sidecars
/// and any logic they started. Waits a little for stragglers being reaped,
/// then returns what is left.
fn processes_under(root: &Path) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = scan_processes(root);
        if found.is_empty() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One look at /proc for processes that mention `root` (the harness
/// itself, which names the root in its arguments, aside).
fn scan_processes(root: &Path) -> Vec<String> {
    sidecar_test_support::processes_mentioning(&root.to_string_lossy())
        .into_iter()
        .filter(|(_, cmd)| !cmd.starts_with(SHIM))
        .map(|(pid, cmd)| format!("{pid}: {cmd}"))
        .collect()
}

/// Whether a `scan_processes` entry is the logic's own `program` (not a
/// sidecar whose command line quotes it).
fn is_logic(entry: &str, program: &str) -> bool {
    entry
        .split_once(": ")
        .is_some_and(|(_, cmdline)| cmdline.starts_with(program))
}

fn assert_no_sidecars(run: &Run) {
    let left = processes_under(&run.volumes());
    assert!(
        left.is_empty(),
        "processes outlived the harness: {left:#?}\n{}",
        run.explain()
    );
}

/// The output files, by partition, read back.
fn outputs(dir: &Path) -> BTreeMap<usize, RecordBatch> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        assert!(
            name.starts_with("part-") && name.ends_with(".parquet"),
            "unexpected file in the output directory: {name}"
        );
        let partition: usize = name["part-".len()..name.len() - ".parquet".len()]
            .parse()
            .unwrap();
        assert_eq!(name, format!("part-{partition:05}.parquet"));
        let (schema, batches) = executor_shim::format::read_path(&entry.path(), 1024).unwrap();
        out.insert(partition, concat_batches(&schema, &batches).unwrap());
    }
    out
}

/// The input as the harness's Parquet outputs hold it (second-resolution
/// timestamps as milliseconds).
fn read_input(path: &Path) -> RecordBatch {
    use executor_shim::format::{conform, portable_parquet_schema, read_path};
    let (schema, batches) = read_path(path, 1024).unwrap();
    let portable = portable_parquet_schema(&schema);
    let batch = concat_batches(&schema, &batches).unwrap();
    conform(&batch, &portable, "input").unwrap()
}

fn sorted_by(batch: &RecordBatch, column: &str) -> RecordBatch {
    let indices = sort_to_indices(batch.column_by_name(column).unwrap(), None, None).unwrap();
    take_record_batch(batch, &indices).unwrap()
}

fn union(parts: &BTreeMap<usize, RecordBatch>) -> RecordBatch {
    let first = parts.values().next().expect("no output at all");
    concat_batches(&first.schema(), parts.values()).unwrap()
}

fn summary_line(run: &Run) -> String {
    run.stdout()
        .lines()
        .find(|l| l.starts_with("summary: "))
        .unwrap_or_else(|| panic!("no summary line\n{}", run.explain()))
        .to_owned()
}

#[test]
fn identity_over_eight_partitions_and_two_executors_gives_the_input_back() {
    let input = sample();
    let run = harness(
        &[
            "--input",
            input.to_str().unwrap(),
            "--partitions",
            "8",
            "--executors",
            "2",
        ],
        &[],
    );
    assert_eq!(run.code(), Some(0), "{}", run.explain());
    let summary = summary_line(&run);
    assert!(
        summary
            .starts_with("summary: 8 tasks, 8 succeeded, 0 failed, 2000 rows in, 2000 rows out, "),
        "{summary}"
    );
    let parts = outputs(&run.out_dir());
    assert_eq!(
        parts.keys().copied().collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
    for (p, batch) in &parts {
        assert_eq!(batch.num_rows(), 250, "partition {p}");
    }
    // Contiguous ranges: partition 3 holds trips 751..=1000.
    let ids = parts[&3]
        .column_by_name("trip_id")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!((ids.value(0), ids.value(249)), (751, 1000));

    let want = sorted_by(&read_input(&input), "trip_id");
    let got = sorted_by(&union(&parts), "trip_id");
    assert_eq!(got.schema(), want.schema());
    assert_eq!(got, want);
    // Every task is in the table, each on one of the two executors.
    for p in 0..8 {
        let row = run
            .stdout()
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{p}  ")) && l.contains("succeeded"))
            .map(str::to_owned);
        assert!(row.is_some(), "no row for partition {p}\n{}", run.explain());
    }
    // One line per finished task on stderr without a progress bar.
    assert_eq!(
        run.stderr()
            .lines()
            .filter(|l| l.contains(": succeeded, "))
            .count(),
        8,
        "{}",
        run.explain()
    );
    assert_no_sidecars(&run);
}

#[test]
fn an_awk_transform_over_csv_gives_the_transformed_rows() {
    let input = sample();
    let awk = r#"awk -F, -v OFS=, 'NR == 1 { print $0, "passengers_x2", "long_trip"; next }
        { print $0, $4 * 2, ($5 > 10 ? "yes" : "no") }' "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#;
    let run = harness(
        &[
            "--input",
            input.to_str().unwrap(),
            "--partitions",
            "8",
            "--executors",
            "2",
            "--input-format",
            "csv",
            "--output-format",
            "csv",
        ],
        &["sh", "-c", awk],
    );
    assert_eq!(run.code(), Some(0), "{}", run.explain());
    assert!(
        summary_line(&run)
            .starts_with("summary: 8 tasks, 8 succeeded, 0 failed, 2000 rows in, 2000 rows out"),
        "{}",
        run.explain()
    );
    let got = sorted_by(&union(&outputs(&run.out_dir())), "trip_id");
    let input = sorted_by(&read_input(&input), "trip_id");

    // The expected transformation, computed here.
    let passengers = input
        .column_by_name("passengers")
        .unwrap()
        .as_primitive::<Int64Type>();
    let distance = input
        .column_by_name("distance_km")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    let doubled: Int64Array = passengers.iter().map(|v| v.map(|v| v * 2)).collect();
    let long: StringArray = distance
        .iter()
        .map(|d| d.map(|d| if d > 10.0 { "yes" } else { "no" }))
        .collect();
    let mut fields: Vec<Field> = input
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("passengers_x2", DataType::Int64, true));
    fields.push(Field::new("long_trip", DataType::Utf8, true));
    let mut columns = input.columns().to_vec();
    columns.push(Arc::new(doubled));
    columns.push(Arc::new(long));
    let want = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();

    assert_eq!(got.num_rows(), 2000);
    let names = |b: &RecordBatch| -> Vec<String> {
        b.schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    };
    assert_eq!(names(&got), names(&want));
    for name in names(&want) {
        let (g, w) = (
            got.column_by_name(&name).unwrap(),
            want.column_by_name(&name).unwrap(),
        );
        assert_eq!(g.data_type(), w.data_type(), "column {name}");
        assert_eq!(g.to_data(), w.to_data(), "column {name}");
    }
    let yes = got
        .column_by_name("long_trip")
        .unwrap()
        .as_string::<i32>()
        .iter()
        .filter(|v| *v == Some("yes"))
        .count();
    assert!(
        yes > 0 && yes < 2000,
        "the sample has long and short trips: {yes}"
    );
    assert_no_sidecars(&run);
}

#[test]
fn a_failing_partition_fails_the_run_and_leaves_no_output() {
    let input = sample();
    let dir = scratch();
    // A stale output of an earlier run must not pass for this run's.
    std::fs::write(dir.path().join("out/part-00004.parquet"), b"stale").unwrap();
    // Trip 1234 is row 1233: partition 4 of 8 (rows 1000..1250).
    let logic = r#"if grep -q '^1234,' "$SIDECAR_INPUT"; then
            echo "trip 1234 is cursed" >&2; exit 3
        fi
        cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#;
    let run = harness_in(
        dir,
        &[
            "--input",
            input.to_str().unwrap(),
            "--partitions",
            "8",
            "--executors",
            "2",
        ],
        &["sh", "-c", logic],
    );
    // A partition that failed all its attempts: exit 3 (see `--help`).
    assert_eq!(run.code(), Some(3), "{}", run.explain());
    let stdout = run.stdout();
    let summary = summary_line(&run);
    assert!(
        summary.starts_with(
            "summary: 8 tasks, 7 succeeded, 1 failed, 1 retried, 2000 rows in, 1750 rows out"
        ),
        "{summary}\n{}",
        run.explain()
    );
    // Both attempts of partition 4 are named, with their stderr.
    for attempt in 0..2 {
        let header = format!("(partition 4, attempt {attempt}, executor ");
        let line = stdout
            .lines()
            .find(|l| l.contains(&header))
            .unwrap_or_else(|| panic!("no failure entry for attempt {attempt}\n{}", run.explain()));
        assert!(
            line.trim_start().starts_with(&format!("p4-a{attempt}-")),
            "{line}"
        );
        assert!(line.contains("failed"), "{line}");
    }
    assert_eq!(
        stdout.matches("trip 1234 is cursed").count(),
        2,
        "each attempt's stderr is shown\n{}",
        run.explain()
    );
    let parts = outputs(&run.out_dir());
    assert_eq!(
        parts.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 5, 6, 7],
        "{}",
        run.explain()
    );
    assert!(parts.values().all(|b| b.num_rows() == 250));
    assert_no_sidecars(&run);
}

#[test]
fn a_sidecar_killed_mid_run_loses_its_executor_and_the_retry_runs_elsewhere() {
    let input = sample();
    // The first attempt of partition 3 kills its own sidecar (the logic's
    // parent); every other task, the retry included, is the identity.
    let logic = r#"case "$SIDECAR_TASK_ID" in
            p3-a0-*) kill -KILL "$PPID"; exit 1 ;;
        esac
        cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#;
    let run = harness(
        &[
            "--input",
            input.to_str().unwrap(),
            "--partitions",
            "8",
            "--executors",
            "2",
        ],
        &["sh", "-c", logic],
    );
    assert_eq!(run.code(), Some(0), "{}", run.explain());
    let summary = summary_line(&run);
    assert!(
        summary.starts_with("summary: 8 tasks, 8 succeeded, 0 failed, "),
        "{}",
        run.explain()
    );
    assert!(summary.contains("2000 rows out"), "{}", run.explain());
    let stdout = run.stdout();
    let lost: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" lost ") && l.contains("sidecar exited"))
        .collect();
    assert!(
        lost.iter().any(|l| l.contains("p3-a0-")),
        "{}",
        run.explain()
    );
    // Every retry of a lost task ran on the executor that was left.
    let lost_executor = if lost[0].contains("executor-0") {
        "0"
    } else {
        "1"
    };
    for line in stdout.lines().filter(|l| l.contains("-a1-")) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_ne!(cols[2], lost_executor, "{line}\n{}", run.explain());
        assert_eq!(cols[4], "succeeded", "{line}");
    }
    let want = sorted_by(&read_input(&input), "trip_id");
    assert_eq!(sorted_by(&union(&outputs(&run.out_dir())), "trip_id"), want);
    assert!(
        !run.stderr().contains("executor-shim: "),
        "{}",
        run.explain()
    );
    assert_no_sidecars(&run);
}

#[test]
fn no_retries_means_one_attempt() {
    let input = sample();
    let run = harness(
        &[
            "--input",
            input.to_str().unwrap(),
            "--partitions",
            "3",
            "--executors",
            "1",
            "--retries",
            "0",
        ],
        &["sh", "-c", "echo nope >&2; exit 7"],
    );
    // A partition that failed all its attempts: exit 3 (see `--help`).
    assert_eq!(run.code(), Some(3), "{}", run.explain());
    assert!(
        summary_line(&run)
            .starts_with("summary: 3 tasks, 0 succeeded, 3 failed, 2000 rows in, 0 rows out"),
        "{}",
        run.explain()
    );
    assert!(run.stdout().contains("status 7"), "{}", run.explain());
    assert_eq!(
        run.stdout().matches("      nope\n").count(),
        3,
        "{}",
        run.explain()
    );
    assert!(outputs(&run.out_dir()).is_empty());
    assert_no_sidecars(&run);
}

#[test]
fn a_parquet_input_streams_through_fifos_and_comes_back() {
    let dir = scratch();
    let parquet = dir.path().join("trips.parquet");
    let (schema, batches) = executor_shim::format::read_path(&sample(), 300).unwrap();
    executor_shim::format::write_parquet_file(&parquet, schema, &batches).unwrap();
    let run = harness_in(
        dir,
        &[
            "--input",
            parquet.to_str().unwrap(),
            "--partitions",
            "5",
            "--executors",
            "2",
            "--stream",
        ],
        &[],
    );
    assert_eq!(run.code(), Some(0), "{}", run.explain());
    assert!(
        summary_line(&run)
            .starts_with("summary: 5 tasks, 5 succeeded, 0 failed, 2000 rows in, 2000 rows out"),
        "{}",
        run.explain()
    );
    let parts = outputs(&run.out_dir());
    assert_eq!(parts.len(), 5);
    assert!(parts.values().all(|b| b.num_rows() == 400));
    let want = sorted_by(&read_input(&parquet), "trip_id");
    assert_eq!(sorted_by(&union(&parts), "trip_id"), want);
    assert_no_sidecars(&run);
}

#[test]
fn bad_arguments_are_refused_before_any_sidecar_starts() {
    let input = sample();
    let run = harness(
        &[
            "--input",
            input.to_str().unwrap(),
            "--partitions",
            "0",
            "--executors",
            "2",
        ],
        &[],
    );
    assert_ne!(run.code(), Some(0));
    assert!(
        run.stderr().contains("--partitions must be at least 1"),
        "{}",
        run.explain()
    );

    let run = harness(
        &[
            "--input",
            "/nonexistent/trips.csv",
            "--partitions",
            "2",
            "--executors",
            "1",
        ],
        &[],
    );
    assert_ne!(run.code(), Some(0));
    let run2 = harness(
        &[
            "--input",
            sample().to_str().unwrap(),
            "--stream",
            "--input-format",
            "parquet",
        ],
        &[],
    );
    assert_ne!(run2.code(), Some(0));
    assert!(
        run2.stderr()
            .contains("--stream needs a format that can be read front to back"),
        "{}",
        run2.explain()
    );

    assert!(
        run.stderr().contains("/nonexistent/trips.csv"),
        "{}",
        run.explain()
    );
    assert!(!run.volumes().join("executor-0").exists());
}

#[test]
fn the_leftover_check_sees_sidecars_while_they_run() {
    // The check above would pass vacuously if it could not see a sidecar:
    // look while one runs, then after.
    let input = sample();
    let dir = scratch();
    let volumes = dir.path().join("volumes");
    let mut child = Command::new(SHIM)
        .arg("harness")
        .args([
            "--input",
            input.to_str().unwrap(),
            "--partitions",
            "2",
            "--executors",
            "1",
        ])
        .arg("--output")
        .arg(dir.path().join("out"))
        .arg("--volume-root")
        .arg(&volumes)
        .arg("--no-progress")
        .args([
            "--",
            "sh",
            "-c",
            r#"sleep 3; cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#,
        ])
        .env("SIDECAR_ENTRYPOINT", entrypoint())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen: Vec<String> = Vec::new();
    while Instant::now() < deadline && !seen.iter().any(|p| is_logic(p, "sleep 3")) {
        seen = scan_processes(&volumes);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        seen.iter().any(|p| p.contains("sidecar-entrypoint")),
        "no sidecar seen while the harness ran: {seen:#?}"
    );
    assert!(
        seen.iter().any(|p| is_logic(p, "sleep 3")),
        "no logic seen: {seen:#?}"
    );
    assert!(child.wait().unwrap().success());
    let left = processes_under(&volumes);
    assert!(left.is_empty(), "processes outlived the harness: {left:#?}");
}

/// Starts a run of slow tasks, waits until both executors run one, then
/// signals it: `SIGTERM` to the harness alone, or `SIGINT` to its whole
/// process group, as `Ctrl-C` on a terminal does.
fn interrupted_run(ctrl_c: bool) -> (Run, Duration) {
    use std::os::unix::process::CommandExt as _;
    let input = sample();
    let dir = scratch();
    let volumes = dir.path().join("volumes");
    let mut cmd = Command::new(SHIM);
    cmd.arg("harness")
        .args(["--input", input.to_str().unwrap()])
        .args(["--partitions", "4", "--executors", "2", "--parallel", "1"])
        .arg("--output")
        .arg(dir.path().join("out"))
        .arg("--volume-root")
        .arg(&volumes)
        .arg("--no-progress")
        .args([
            "--",
            "sh",
            "-c",
            r#"sleep 60; cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#,
        ])
        .env("SIDECAR_ENTRYPOINT", entrypoint())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if ctrl_c {
        cmd.process_group(0);
    }
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while scan_processes(&volumes)
        .iter()
        .filter(|p| is_logic(p, "sleep 60"))
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "the logic never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    if ctrl_c {
        nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    } else {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    (Run { dir, output }, started.elapsed())
}

fn assert_stopped_cleanly(run: &Run, took: Duration) {
    // Well before the logic's own 60 s: the tasks were cancelled.
    assert!(took < Duration::from_secs(45), "{}", run.explain());
    assert_eq!(run.code(), Some(130), "{}", run.explain());
    assert!(
        summary_line(run).starts_with("summary: 4 tasks, 0 succeeded, 4 failed"),
        "{}",
        run.explain()
    );
    let table = run.stdout();
    assert_eq!(table.matches(" cancelled ").count(), 2, "{}", run.explain());
    assert_eq!(
        table
            .matches("not run: the harness was interrupted")
            .count(),
        2,
        "{}",
        run.explain()
    );
    assert!(
        !run.stderr().contains("executor-shim: "),
        "no error\n{}",
        run.explain()
    );
    assert!(outputs(&run.out_dir()).is_empty());
    assert_no_sidecars(run);
}

#[test]
fn sigterm_cancels_running_tasks_stops_the_sidecars_and_reports() {
    let (run, took) = interrupted_run(false);
    assert!(
        run.stderr()
            .contains("interrupted: cancelling 2 running task(s)"),
        "{}",
        run.explain()
    );
    assert!(run.stdout().contains("cancel_flag"), "{}", run.explain());
    assert_stopped_cleanly(&run, took);
}

#[test]
fn ctrl_c_on_the_process_group_stops_the_run_cleanly() {
    let (run, took) = interrupted_run(true);
    assert!(run.stderr().contains("interrupted: "), "{}", run.explain());
    assert_stopped_cleanly(&run, took);
}

#[test]
fn a_task_over_its_timeout_is_reported_timed_out() {
    let input = sample();
    let started = Instant::now();
    let run = harness(
        &[
            "--input",
            input.to_str().unwrap(),
            "--partitions",
            "2",
            "--executors",
            "1",
            "--timeout",
            "2s",
            "--retries",
            "0",
        ],
        &[
            "sh",
            "-c",
            r#"sleep 60; cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#,
        ],
    );
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "{}",
        run.explain()
    );
    // A partition that failed all its attempts: exit 3 (see `--help`).
    assert_eq!(run.code(), Some(3), "{}", run.explain());
    assert!(
        summary_line(&run).starts_with("summary: 2 tasks, 0 succeeded, 2 failed"),
        "{}",
        run.explain()
    );
    let timed_out = run
        .stdout()
        .lines()
        .filter(|l| l.contains(" timed_out ") && l.contains("p"))
        .count();
    assert_eq!(timed_out, 2, "{}", run.explain());
    assert!(
        run.stdout().contains("2s"),
        "the limit is named\n{}",
        run.explain()
    );
    assert!(outputs(&run.out_dir()).is_empty());
    assert_no_sidecars(&run);
}

/// Containers that mount anything under `root`.
fn containers_under(root: &Path) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--no-trunc",
            "--format",
            "{{.ID}} {{.Image}} {{.Mounts}} {{.Command}}",
        ])
        .output()
        .unwrap();
    let ids = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut found = Vec::new();
    for line in ids.lines() {
        let id = line.split_whitespace().next().unwrap_or_default();
        let mounts = Command::new("docker")
            .args([
                "inspect",
                "--format",
                "{{range .Mounts}}{{.Source}} {{end}}",
                id,
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&mounts.stdout).contains(root.to_str().unwrap()) {
            found.push(line.to_owned());
        }
    }
    found
}

#[test]
fn docker_image_dd_identity_over_four_partitions_and_two_executors() {
    sidecar_test_support::require_docker!();
    let input = sample();
    let run = harness(
        &[
            "--input",
            input.to_str().unwrap(),
            "--partitions",
            "4",
            "--executors",
            "2",
            "--image",
            IMAGE,
            "--timeout",
            "120s",
        ],
        &[],
    );
    assert_eq!(run.code(), Some(0), "{}", run.explain());
    assert!(
        summary_line(&run)
            .starts_with("summary: 4 tasks, 4 succeeded, 0 failed, 2000 rows in, 2000 rows out"),
        "{}",
        run.explain()
    );
    let parts = outputs(&run.out_dir());
    assert_eq!(parts.len(), 4);
    let want = sorted_by(&read_input(&input), "trip_id");
    assert_eq!(sorted_by(&union(&parts), "trip_id"), want);
    assert_no_sidecars(&run);
    let left = containers_under(&run.volumes());
    assert!(
        left.is_empty(),
        "containers outlived the harness: {left:#?}"
    );
}

#[test]
fn the_sample_is_small_and_what_its_generator_makes() {
    let bytes = std::fs::metadata(sample()).unwrap().len();
    assert!(
        bytes <= 200 * 1024,
        "examples/sample/trips.csv is {bytes} bytes"
    );
    let batch = read_input(&sample());
    assert_eq!(batch.num_rows(), 2000);
    let ids = batch
        .column_by_name("trip_id")
        .unwrap()
        .as_primitive::<Int64Type>();
    let want: Vec<i64> = (1..=2000).collect();
    assert_eq!(ids.values().to_vec(), want, "unique ids in order");

    let generator = workspace().join("examples/sample/generate.py");
    match Command::new("python3")
        .arg(&generator)
        .arg("--check")
        .output()
    {
        Err(e) => println!("SKIPPED: python3: {e}"),
        Ok(out) => assert!(
            out.status.success(),
            "the committed sample differs from `python3 examples/sample/generate.py`: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}
