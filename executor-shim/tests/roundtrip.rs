//! Data through a real `sidecar-entrypoint` and back: every format in file
//! mode, the streamable ones in stream mode, and the ways a logic's output
//! can be wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::time::Duration;

use executor_shim::format::{Format, FormatError};
use executor_shim::{ShimError, TaskRequest};
use util::*;

fn request(format: Format, stream: bool) -> TaskRequest {
    let mut r = TaskRequest::new(1, 0);
    r.input_format = format;
    r.stream = stream;
    r.timeout = Some(Duration::from_secs(120));
    r
}

#[test]
fn file_mode_round_trips_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(dir.path(), CAT);
    let (schema, batches) = sample(2500, 700);
    let want = concat(&schema, &batches);
    for format in Format::ALL {
        let (report, out) = run(
            &sidecar,
            &request(format, false),
            &schema,
            &batches,
            Some(schema.clone()),
        )
        .unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(concat(&schema, &out), want, "{format}: rows differ");
        assert_eq!(report.rows_in, 2500, "{format}");
        assert_eq!(report.rows_out, 2500, "{format}");
        assert!(report.outcome.succeeded());
        assert!(
            report.bytes_in > 0 && report.bytes_out == report.bytes_in,
            "{format}: {report:?}"
        );
        // The sidecar removes the task directory after the close flag.
        let task_dir = dir.path().join("tasks").join(report.task.as_str());
        assert!(
            wait_for(Duration::from_secs(30), || !task_dir.exists()),
            "{format}: task dir left"
        );
    }
    sidecar.shutdown().unwrap();
}

#[test]
fn stream_mode_round_trips_streamable_formats() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(dir.path(), CAT);
    let (schema, batches) = sample(20_000, 3000);
    let want = concat(&schema, &batches);
    for format in [Format::Arrows, Format::Csv, Format::Jsonl] {
        let (report, out) = run(
            &sidecar,
            &request(format, true),
            &schema,
            &batches,
            Some(schema.clone()),
        )
        .unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(concat(&schema, &out), want, "{format}: rows differ");
        assert_eq!(
            (report.rows_in, report.rows_out),
            (20_000, 20_000),
            "{format}"
        );
        // The FIFOs are not outputs: only the streamed bytes were read.
        assert!(
            report.outcome.outputs.is_empty(),
            "{format}: {:?}",
            report.outcome.outputs
        );
        assert_eq!(report.bytes_out, report.bytes_in, "{format}");
    }
    sidecar.shutdown().unwrap();
}

#[test]
fn stream_mode_refuses_formats_that_need_a_footer() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(dir.path(), CAT);
    let (schema, batches) = sample(10, 10);
    for format in [Format::Parquet, Format::Arrow] {
        let err = run(&sidecar, &request(format, true), &schema, &batches, None).unwrap_err();
        assert!(
            matches!(err, ShimError::Format(FormatError::NotStreamable { .. })),
            "{err}"
        );
        assert!(
            err.to_string().contains("use arrows, csv or jsonl"),
            "{err}"
        );
    }
}

#[test]
fn output_format_differs_from_input() {
    let dir = tempfile::tempdir().unwrap();
    // The logic converts nothing; it writes a CSV of its own.
    let sidecar = start(
        dir.path(),
        r#"printf 'id,name,score,ok\n7,seven,1.5,true\n' > "$SIDECAR_OUTPUT""#,
    );
    let (schema, batches) = sample(10, 10);
    let mut req = request(Format::Parquet, false);
    req.output_format = Some(Format::Csv);
    let (_, out) = run(&sidecar, &req, &schema, &batches, Some(schema.clone())).unwrap();
    let got = concat(&schema, &out);
    assert_eq!(got.num_rows(), 1);
    let ids = got
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap();
    assert_eq!(ids.value(0), 7);
}

#[test]
fn schema_mismatch_names_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(
        dir.path(),
        r#"printf 'id,label\n1,x\n' > "$SIDECAR_OUTPUT""#,
    );
    let (schema, batches) = sample(10, 10);
    for stream in [false, true] {
        let mut delivered = 0;
        let input = batches.clone().into_iter().map(Ok);
        let err = sidecar
            .run_task(
                &request(Format::Csv, stream),
                schema.clone(),
                input,
                Some(schema.clone()),
                &mut |_| {
                    delivered += 1;
                    Ok(())
                },
            )
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, ShimError::Format(_)),
            "stream={stream}: {text}"
        );
        assert!(
            text.contains("\"name\""),
            "names the missing column: {text}"
        );
        assert!(text.contains("part.csv"), "names the file: {text}");
        assert_eq!(delivered, 0);
    }
}

#[test]
fn failing_logic_reports_exit_code_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(dir.path(), "echo boom >&2; exit 3");
    let (schema, batches) = sample(10, 10);
    for stream in [false, true] {
        let err = run(
            &sidecar,
            &request(Format::Arrows, stream),
            &schema,
            &batches,
            None,
        )
        .unwrap_err();
        match &err {
            ShimError::TaskFailed {
                exit_code,
                stderr_tail,
                status,
                ..
            } => {
                assert_eq!(*exit_code, Some(3), "{err}");
                assert!(stderr_tail.contains("boom"), "{err}");
                assert_eq!(status.to_string(), "failed");
            }
            other => panic!("stream={stream}: expected TaskFailed, got {other}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("exit code 3") && text.contains("boom"),
            "{text}"
        );
    }
}

#[test]
fn a_symlink_to_etc_passwd_is_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let (schema, batches) = sample(10, 10);
    for script in [
        r#"ln -s /etc/passwd "$SIDECAR_OUTPUT""#,
        r#"mkdir "$SIDECAR_OUTPUT_DIR/sub" && ln -s /etc/passwd "$SIDECAR_OUTPUT_DIR/sub/part.csv""#,
        r#"ln -s /etc "$SIDECAR_OUTPUT_DIR/etc""#,
    ] {
        let vol = dir.path().join(format!("v{}", script.len()));
        let sidecar = start(&vol, script);
        let mut delivered = Vec::new();
        let input = batches.clone().into_iter().map(Ok);
        let result = sidecar.run_task(
            &request(Format::Csv, false),
            schema.clone(),
            input,
            None,
            &mut |b| {
                delivered.push(b);
                Ok(())
            },
        );
        let err = result.expect_err(script);
        assert!(delivered.is_empty(), "{script}: rows delivered");
        let text = err.to_string();
        assert!(
            !text.contains("root:"),
            "{script}: leaked /etc/passwd: {text}"
        );
        assert!(text.contains("link"), "{script}: says why: {text}");
        sidecar.shutdown().unwrap();
    }
}

#[test]
fn logic_may_write_several_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(
        dir.path(),
        r#"cp "$SIDECAR_INPUT" "$SIDECAR_OUTPUT_DIR/a.arrows" && mkdir "$SIDECAR_OUTPUT_DIR/more" && cp "$SIDECAR_INPUT" "$SIDECAR_OUTPUT_DIR/more/b.arrows""#,
    );
    let (schema, batches) = sample(100, 30);
    let (report, out) = run(
        &sidecar,
        &request(Format::Arrows, false),
        &schema,
        &batches,
        Some(schema.clone()),
    )
    .unwrap();
    assert_eq!(report.rows_out, 200);
    let mut want = batches.clone();
    want.extend(batches.iter().cloned());
    assert_eq!(concat(&schema, &out), concat(&schema, &want));
}

#[test]
fn cli_run_round_trips_arrow_ipc() {
    let dir = tempfile::tempdir().unwrap();
    let (schema, batches) = sample(1000, 128);
    let input = ipc_stream(&schema, &batches);
    for extra in [
        &["--input-format", "csv"][..],
        &["--stream", "--input-format", "jsonl"][..],
    ] {
        let vol = dir.path().join(extra.len().to_string());
        let mut child = std::process::Command::new(shim_bin())
            .args([
                "run",
                "--volume",
                vol.to_str().unwrap(),
                "--expect-input-schema",
                "--report",
            ])
            .args(extra)
            .args([
                "--entrypoint",
                entrypoint().to_str().unwrap(),
                "--",
                "sh",
                "-c",
                CAT,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.clone();
        let feed = std::thread::spawn(move || {
            use std::io::Write;
            stdin.write_all(&input).unwrap();
        });
        let out = child.wait_with_output().unwrap();
        feed.join().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{extra:?}: {stderr}");
        let (got_schema, got) = read_ipc_stream(&out.stdout);
        assert_eq!(got_schema, schema);
        assert_eq!(
            concat(&schema, &got),
            concat(&schema, &batches),
            "{extra:?}"
        );
        assert!(stderr.contains("\"rows_out\":1000"), "{stderr}");
        // The sidecar the CLI started is gone.
        assert!(
            !vol.join("sidecar/ready").exists(),
            "{extra:?}: ready left behind"
        );
    }
}

#[test]
fn cli_failure_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (schema, batches) = sample(5, 5);
    let input = ipc_stream(&schema, &batches);
    let cases: &[(&[&str], &str, i32, &str)] = &[
        (&[], "echo boom >&2; exit 3", 3, "boom"),
        (&["--timeout", "1s"], "sleep 30", 4, "deadline"),
    ];
    for (extra, script, code, text) in cases {
        let vol = dir.path().join(code.to_string());
        let out = std::process::Command::new(shim_bin())
            .args(["run", "--volume", vol.to_str().unwrap()])
            .args(*extra)
            .args([
                "--entrypoint",
                entrypoint().to_str().unwrap(),
                "--",
                "sh",
                "-c",
                script,
            ])
            .stdin(
                std::fs::File::open({
                    let p = dir.path().join("in.arrows");
                    std::fs::write(&p, &input).unwrap();
                    p
                })
                .unwrap(),
            )
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{script}: {stderr}");
        assert!(stderr.contains(text), "{script}: {stderr}");
    }
    // Attaching where no sidecar serves: a clear error, not a hang.
    let out = std::process::Command::new(shim_bin())
        .args([
            "run",
            "--volume",
            dir.path().join("nobody").to_str().unwrap(),
            "--ready-timeout",
            "1s",
        ])
        .stdin(std::fs::File::open(dir.path().join("in.arrows")).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("no sidecar became ready"), "{stderr}");
}

#[test]
fn leftovers_of_the_same_id_are_fenced_off_and_other_attempts_untouched() {
    use sidecar_core::{manifest, Outcome, OutputFile, Status, Timestamp};
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(dir.path(), CAT);
    let (schema, batches) = sample(40, 40);
    let (_, stale_batches) = sample(5, 5);
    let mut req = request(Format::Arrows, false);
    req.nonce = "fixed".into();
    // A crashed earlier run of this id, and another attempt, each with a
    // forged successful outcome listing stale rows.
    let mut other = req.clone();
    other.attempt += 1;
    for id in [req.task_id(), other.task_id()] {
        let task = dir.path().join("tasks").join(id.as_str());
        std::fs::create_dir_all(task.join("output")).unwrap();
        let part = task.join("output/part.arrows");
        std::fs::write(&part, ipc_stream(&schema, &stale_batches)).unwrap();
        let (bytes, checksum) = manifest::checksum_file(&part).unwrap();
        let mut outcome = Outcome::new(id.as_str(), Status::Succeeded, Timestamp::now());
        outcome.outputs.push(OutputFile {
            path: "part.arrows".into(),
            bytes,
            checksum,
        });
        std::fs::write(
            task.join("done_flag"),
            serde_json::to_vec(&outcome).unwrap(),
        )
        .unwrap();
    }
    let (report, out) = run(&sidecar, &req, &schema, &batches, Some(schema.clone())).unwrap();
    assert_eq!(report.rows_out, 40);
    assert_eq!(concat(&schema, &out), concat(&schema, &batches));
    // The other attempt's directory is not this task's business.
    let other_dir = dir.path().join("tasks").join(other.task_id().as_str());
    assert!(other_dir.join("done_flag").exists());
}

#[test]
fn a_failing_input_fails_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(dir.path(), CAT);
    let (schema, batches) = sample(30_000, 3000);
    for stream in [false, true] {
        let input = batches
            .clone()
            .into_iter()
            .map(Ok)
            .take(5)
            .chain(std::iter::once(Err(
                arrow::error::ArrowError::ComputeError("upstream broke".into()),
            )));
        let started = std::time::Instant::now();
        let err = sidecar
            .run_task(
                &request(Format::Csv, stream),
                schema.clone(),
                input,
                None,
                &mut |_| Ok(()),
            )
            .unwrap_err();
        assert!(matches!(err, ShimError::Input(_)), "stream={stream}: {err}");
        assert!(err.to_string().contains("upstream broke"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(60));
    }
    sidecar.shutdown().unwrap();
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<executor_shim::provider::Sidecar>();
    check::<ShimError>();
}

#[test]
fn a_panicking_sink_does_not_hang_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(dir.path(), CAT);
    let (schema, batches) = sample(50_000, 1000);
    let started = std::time::Instant::now();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let input = batches.clone().into_iter().map(Ok);
        sidecar.run_task(
            &request(Format::Arrows, true),
            schema.clone(),
            input,
            None,
            &mut |_| panic!("sink broke"),
        )
    }));
    assert!(result.is_err(), "the panic propagates");
    assert!(started.elapsed() < Duration::from_secs(60));
    // The abandoned task is cancelled and closed: the sidecar removes it.
    let tasks = dir.path().join("tasks");
    assert!(
        wait_for(Duration::from_secs(30), || std::fs::read_dir(&tasks)
            .unwrap()
            .count()
            == 0),
        "task directory left behind"
    );
    // The sidecar still serves.
    run(
        &sidecar,
        &request(Format::Arrows, true),
        &schema,
        &batches,
        None,
    )
    .unwrap();
}

/// A hostile sidecar, played by the test: it answers every task with a
/// done flag whose manifest points outside `output/` one way or another
/// (or lists a file that is not what it says). The shim must refuse each,
/// deliver nothing, and never read the target.
#[test]
fn a_lying_manifest_cannot_make_the_shim_read_outside_the_volume() {
    use sidecar_core::liveness::Beater;
    use sidecar_core::{manifest, Outcome, OutputFile, Ready, Status, Timestamp};
    use std::os::unix::fs::symlink;

    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().to_owned();
    std::fs::create_dir_all(vol.join("sidecar")).unwrap();
    let secret = dir.path().join("secret.csv");
    std::fs::write(&secret, "id\n666\n").unwrap();
    let (bytes, checksum) = manifest::checksum_file(&secret).unwrap();
    let _beat = Beater::start(vol.join("sidecar/heartbeat"), Duration::from_millis(100)).unwrap();
    let ready = Ready {
        protocol: 1,
        version: "hostile".into(),
        pid: std::process::id(),
        parallelism: 1,
        started_at: Timestamp::now(),
    };
    std::fs::write(
        vol.join("sidecar/ready"),
        serde_json::to_vec(&ready).unwrap(),
    )
    .unwrap();

    // (what the "logic" plants in output/, the manifest path, what the shim must say)
    type Plant = fn(&std::path::Path, &std::path::Path);
    let cases: Vec<(Plant, &str, &str)> = vec![
        (
            |out, secret| symlink(secret, out.join("part.csv")).unwrap(),
            "part.csv",
            "symbolic link",
        ),
        (
            |out, secret| {
                std::fs::create_dir(out.join("d")).unwrap();
                symlink(secret.parent().unwrap(), out.join("d/up")).unwrap();
            },
            "d/up/secret.csv",
            "symbolic link",
        ),
        (
            |out, secret| std::fs::hard_link(secret, out.join("part.csv")).unwrap(),
            "part.csv",
            "hard links",
        ),
        (|_, _| {}, "../../../secret.csv", "'..' is not allowed"),
        (|_, _| {}, "/etc/passwd", "absolute paths are not allowed"),
        (
            |out, _| {
                nix::unistd::mkfifo(
                    &out.join("part.csv"),
                    nix::sys::stat::Mode::from_bits_truncate(0o644),
                )
                .unwrap()
            },
            "part.csv",
            "FIFO",
        ),
        // A regular file, but not the one the manifest describes: refused
        // before a single row reaches the sink.
        (
            |out, _| std::fs::write(out.join("part.csv"), "id\n1\n2\n3\n4\n5\n").unwrap(),
            "part.csv",
            "the manifest says",
        ),
    ];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stop2, vol2) = (stop.clone(), vol.clone());
    let secret2 = secret.clone();
    let manifest_paths: Vec<(Plant, String)> =
        cases.iter().map(|(p, m, _)| (*p, m.to_string())).collect();
    let hostile = std::thread::spawn(move || {
        let mut answered = 0;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            for entry in std::fs::read_dir(vol2.join("tasks"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let task = entry.path();
                if !task.join("start_flag").exists() || task.join("done_flag").exists() {
                    continue;
                }
                let (plant, path) = &manifest_paths[answered % manifest_paths.len()];
                plant(&task.join("output"), &secret2);
                let id = entry.file_name().into_string().unwrap();
                let mut outcome = Outcome::new(&id, Status::Succeeded, Timestamp::now());
                outcome.outputs.push(OutputFile {
                    path: path.clone(),
                    bytes,
                    checksum: checksum.clone(),
                });
                sidecar_core::atomic::write_atomic(
                    &task.join("done_flag"),
                    &serde_json::to_vec(&outcome).unwrap(),
                    sidecar_core::atomic::Durability::Visible,
                )
                .unwrap();
                answered += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });

    let sidecar = executor_shim::provider::Sidecar::start(
        &vol,
        executor_shim::provider::Provider::Attach,
        opts(),
    )
    .unwrap();
    let (schema, batches) = sample(3, 3);
    for (_, path, why) in &cases {
        let mut delivered = 0;
        let input = batches.clone().into_iter().map(Ok);
        let err = sidecar
            .run_task(
                &request(Format::Csv, false),
                schema.clone(),
                input,
                None,
                &mut |_| {
                    delivered += 1;
                    Ok(())
                },
            )
            .expect_err(path);
        let text = err.to_string();
        assert_eq!(delivered, 0, "{path}: the secret's rows were delivered");
        assert!(text.contains(why), "{path}: {text}");
        assert!(!text.contains("666"), "{path}: {text}");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    hostile.join().unwrap();
}

#[test]
fn a_logic_dying_mid_stream_is_reported_as_the_failure_it_is() {
    let dir = tempfile::tempdir().unwrap();
    // Half a stream out, then a crash.
    let sidecar = start(
        dir.path(),
        r#"head -c 3000 "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"; echo 'crashed half way' >&2; exit 4"#,
    );
    let (schema, batches) = sample(20_000, 1000);
    let err = run(
        &sidecar,
        &request(Format::Arrows, true),
        &schema,
        &batches,
        None,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            ShimError::TaskFailed {
                exit_code: Some(4),
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("crashed half way"), "{text}");
    assert!(text.contains("output stream was unreadable"), "{text}");
}
