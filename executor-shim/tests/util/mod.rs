//! Shared helpers for the executor-shim integration tests.
//!
//! The tests drive the real `sidecar-entrypoint` in serve mode. Cargo builds
//! a crate's own binaries for its integration tests, not other crates'
//! binaries, so [`entrypoint`] finds `target/<profile>/sidecar-entrypoint`
//! next to the test executable's directory and, if it is missing, runs
//! `cargo build -p sidecar-entrypoint` once. `$SIDECAR_ENTRYPOINT`
//! overrides both.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use executor_shim::provider::{Provider, Sidecar, SidecarOptions};
use executor_shim::{ShimError, TaskReport, TaskRequest};

/// `cat` the input to the output: the identity logic.
pub const CAT: &str = r#"cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#;

/// The `sidecar-entrypoint` binary, built if need be.
pub fn entrypoint() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("SIDECAR_ENTRYPOINT").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        // target/<profile>/deps/<test>-<hash>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_owned();
        let bin = profile_dir.join("sidecar-entrypoint");
        if !bin.is_file() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = std::process::Command::new(cargo);
            cmd.args(["build", "-p", "sidecar-entrypoint"]);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd
                .status()
                .expect("running cargo build -p sidecar-entrypoint");
            assert!(status.success(), "cargo build -p sidecar-entrypoint failed");
        }
        assert!(bin.is_file(), "{} is missing", bin.display());
        bin
    })
    .clone()
}

/// The `executor-shim` binary of this crate.
pub fn shim_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_executor-shim"))
}

/// Options for a loaded 2-core machine: generous waits.
pub fn opts() -> SidecarOptions {
    SidecarOptions {
        ready_timeout: Duration::from_secs(60),
        parallel: Some(2),
        grace: Some(Duration::from_secs(2)),
        log_filter: Some("warn".into()),
        ..Default::default()
    }
}

pub fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

pub fn process(script: &str) -> Provider {
    Provider::Process {
        entrypoint: entrypoint(),
        command: sh(script),
        extra_args: Vec::new(),
    }
}

/// A sidecar process serving `volume` with `script` as its logic.
pub fn start(volume: &Path, script: &str) -> Sidecar {
    Sidecar::start(volume, process(script), opts()).unwrap()
}

/// `rows` rows of every kind of column the five formats can all carry,
/// in batches of at most `per_batch`, nulls included.
pub fn sample(rows: usize, per_batch: usize) -> (SchemaRef, Vec<RecordBatch>) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
        Field::new("ok", DataType::Boolean, true),
    ]));
    let mut batches = Vec::new();
    let mut start = 0;
    while start < rows {
        let end = (start + per_batch).min(rows);
        let ids: Vec<i64> = (start as i64..end as i64).collect();
        let names: Vec<Option<String>> = ids
            .iter()
            .map(|i| (i % 7 != 3).then(|| format!("name \"{i}\", with comma")))
            .collect();
        let scores: Vec<Option<f64>> = ids
            .iter()
            .map(|i| (i % 5 != 0).then_some(*i as f64 * 0.25 - 3.5))
            .collect();
        let oks: Vec<Option<bool>> = ids
            .iter()
            .map(|i| (i % 11 != 0).then_some(i % 2 == 0))
            .collect();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(names)),
            Arc::new(Float64Array::from(scores)),
            Arc::new(BooleanArray::from(oks)),
        ];
        batches.push(RecordBatch::try_new(schema.clone(), cols).unwrap());
        start = end;
    }
    (schema, batches)
}

/// Runs one task and collects its output batches.
pub fn run(
    sidecar: &Sidecar,
    request: &TaskRequest,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    expected: Option<SchemaRef>,
) -> Result<(TaskReport, Vec<RecordBatch>), ShimError> {
    let mut out = Vec::new();
    let input = batches.iter().cloned().map(Ok);
    let report = sidecar.run_task(request, schema.clone(), input, expected, &mut |b| {
        out.push(b);
        Ok(())
    })?;
    Ok((report, out))
}

/// All rows of `batches` as one batch (for row-for-row comparison).
pub fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> RecordBatch {
    arrow::compute::concat_batches(schema, batches).unwrap()
}

/// Whether `pid` is running (zombies count as gone: their parent reaps them).
pub fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(sidecar_core::procfs::is_running)
}

/// Waits up to `within` for `pid` to be gone; returns how long it took.
pub fn wait_gone(pid: u32, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if !alive(pid) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Waits up to `within` for `cond`.
pub fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The pid in `<volume>/sidecar/ready`.
pub fn ready_pid(volume: &Path) -> u32 {
    let bytes = std::fs::read(volume.join("sidecar/ready")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["pid"].as_u64().unwrap() as u32
}

/// An Arrow IPC stream of `batches`.
pub fn ipc_stream(schema: &SchemaRef, batches: &[RecordBatch]) -> Vec<u8> {
    let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
    w.into_inner().unwrap()
}

/// The batches of an Arrow IPC stream.
pub fn read_ipc_stream(bytes: &[u8]) -> (SchemaRef, Vec<RecordBatch>) {
    let r = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let schema = r.schema();
    (schema, r.collect::<Result<Vec<_>, _>>().unwrap())
}
