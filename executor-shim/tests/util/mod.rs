//! Shared helpers for the executor-shim integration tests.
//!
//! The tests drive the real `sidecar-entrypoint` in serve mode, found (and
//! built) by the workspace's test support (`$SIDECAR_ENTRYPOINT` overrides).

#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use executor_shim::provider::{Provider, ProviderKind, ProviderSpec, Sidecar, SidecarOptions};
use executor_shim::{ShimError, TaskReport, TaskRequest};

/// `cat` the input to the output: the identity logic.
pub const CAT: &str = r#"cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#;

pub use sidecar_test_support::{alive, entrypoint, wait_for, wait_gone};

/// The `executor-shim` command line.
pub fn shim_bin() -> PathBuf {
    sidecar_test_support::shim()
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
    ProviderSpec {
        kind: Some(ProviderKind::Process),
        entrypoint: Some(entrypoint()),
        command: sh(script),
        ..Default::default()
    }
    .build()
    .unwrap()
}

pub fn docker(image: &str, command: Vec<String>) -> Provider {
    ProviderSpec {
        image: Some(image.to_owned()),
        command,
        ..Default::default()
    }
    .build()
    .unwrap()
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
