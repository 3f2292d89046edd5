//! Throughput: `--size` bytes of Arrow data through an identity `cat`, in
//! file mode and in stream mode, beside the same bytes written to a file,
//! copied with `cp` and read back.
//!
//! The data is a pool of a few distinct 64K-row batches (int64, float64,
//! 16-character strings) cycled until `--size` bytes of Arrow IPC stream
//! are produced: the generator holds a few MiB, not the partition, and
//! costs the same in the figure and in its baseline.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context};
use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use executor_shim::client::TaskRequest;

use super::peers::{last_line, os, PeerProc};
use super::stats::mb_s;
use super::tasks::{entrypoint, start_sidecar};
use super::{BenchArgs, Peer};

/// Rows per generated batch.
pub const BATCH_ROWS: usize = 64 * 1024;
/// Distinct batches in the generator's pool.
const POOL: usize = 4;

#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Throughput {
    pub bytes: u64,
    pub rows: u64,
    pub secs: f64,
    pub peak_rss_kib: u64,
}

impl Throughput {
    pub fn mb_s(&self) -> f64 {
        mb_s(self.bytes, self.secs)
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct RawCopy {
    pub bytes: u64,
    pub write_secs: f64,
    pub cp_secs: f64,
    pub read_secs: f64,
}

impl RawCopy {
    pub fn secs(&self) -> f64 {
        self.write_secs + self.cp_secs + self.read_secs
    }
    pub fn mb_s(&self) -> f64 {
        mb_s(self.bytes, self.secs())
    }
}

pub fn bench_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
        Field::new("name", DataType::Utf8, false),
    ]))
}

/// The generator: a few distinct batches cycled until about `size` bytes of
/// IPC stream are produced.
#[derive(Debug, Clone)]
pub struct Partition {
    schema: SchemaRef,
    pool: Vec<RecordBatch>,
    batches: usize,
}

impl Partition {
    pub fn new(size: u64) -> anyhow::Result<Self> {
        let schema = bench_schema();
        let mut pool = Vec::with_capacity(POOL);
        for k in 0..POOL {
            let base = (k * BATCH_ROWS) as i64;
            let ids: Vec<i64> = (0..BATCH_ROWS as i64).map(|i| base + i).collect();
            let values: Vec<f64> = ids.iter().map(|i| *i as f64 * 0.25).collect();
            let names: Vec<String> = ids
                .iter()
                .map(|i| format!("{:016x}", (*i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
                .collect();
            let cols: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(Float64Array::from(values)),
                Arc::new(StringArray::from(names)),
            ];
            pool.push(RecordBatch::try_new(schema.clone(), cols)?);
        }
        // The IPC size of one batch: a stream with it minus one without.
        let empty = ipc_len(&schema, &[])?;
        let one = ipc_len(&schema, &pool[..1])? - empty;
        let batches = (size.saturating_sub(empty)).div_ceil(one).max(1) as usize;
        Ok(Self {
            schema,
            pool,
            batches,
        })
    }

    pub fn rows(&self) -> u64 {
        (self.batches * BATCH_ROWS) as u64
    }

    pub fn iter(&self) -> impl Iterator<Item = RecordBatch> + Send + 'static {
        let pool = self.pool.clone();
        (0..self.batches).map(move |i| pool[i % pool.len()].clone())
    }
}

pub fn ipc_len(schema: &SchemaRef, batches: &[RecordBatch]) -> anyhow::Result<u64> {
    let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    Ok(w.into_inner()?.len() as u64)
}

/// The raw baseline: the IPC stream written to a file on the volume (1 MiB
/// buffered, as the shim writes), copied with `cp`, the copy read back and
/// decoded.
pub fn raw_copy(dir: &Path, size: u64) -> anyhow::Result<RawCopy> {
    let part = Partition::new(size)?;
    let src = dir.join("input.arrows");
    let dst = dir.join("copy.arrows");

    let t0 = Instant::now();
    let file = File::create(&src).with_context(|| format!("cannot create {}", src.display()))?;
    let mut w = arrow::ipc::writer::StreamWriter::try_new(
        BufWriter::with_capacity(1 << 20, file),
        &part.schema,
    )?;
    for b in part.iter() {
        w.write(&b)?;
    }
    w.finish()?;
    w.into_inner()?.flush()?;
    let write_secs = t0.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&src)?.len();

    let t1 = Instant::now();
    let status = Command::new("cp")
        .arg(&src)
        .arg(&dst)
        .status()
        .context("cannot run cp")?;
    ensure!(status.success(), "cp failed: {status}");
    let cp_secs = t1.elapsed().as_secs_f64();
    std::fs::remove_file(&src)?;

    let t2 = Instant::now();
    let file = File::open(&dst)?;
    let reader =
        arrow::ipc::reader::StreamReader::try_new(BufReader::with_capacity(1 << 20, file), None)?;
    let mut rows = 0u64;
    for b in reader {
        rows += b?.num_rows() as u64;
    }
    let read_secs = t2.elapsed().as_secs_f64();
    std::fs::remove_file(&dst)?;
    ensure!(
        rows == part.rows(),
        "the raw copy read back {rows} rows of {}",
        part.rows()
    );
    Ok(RawCopy {
        bytes,
        write_secs,
        cp_secs,
        read_secs,
    })
}

/// Runs one throughput mode in a child (whose peak RSS is the shim's).
pub fn throughput_child(
    dir: &Path,
    log: &Path,
    args: &BenchArgs,
    peer: Peer,
) -> anyhow::Result<Throughput> {
    let mode = match peer {
        Peer::ThroughputStream => "throughput-stream",
        _ => "throughput-file",
    };
    let child_args = [
        os("--peer"),
        os(mode),
        os("--volume"),
        os(dir),
        os("--size"),
        os(args.size.to_string()),
        os("--entrypoint"),
        os(entrypoint(args)?),
    ];
    let out = PeerProc::spawn(mode, &child_args, Stdio::piped(), log)?.finish()?;
    let line = last_line(&out.stdout, mode)?;
    serde_json::from_str(&line).with_context(|| format!("the {mode} peer printed {line:?}"))
}

/// The identity logic of the throughput phase.
const CAT: &str = r#"exec cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#;

/// The throughput child: one `--size` partition through a serving sidecar
/// running an identity `cat`; prints one JSON [`Throughput`] line.
#[allow(clippy::result_large_err)] // the sink's error type is the client's
pub fn peer_throughput(dir: &Path, args: &BenchArgs, stream: bool) -> anyhow::Result<()> {
    let part = Partition::new(args.size)?;
    let sidecar = start_sidecar(dir, &entrypoint(args)?, &["sh", "-c", CAT], None)?;
    let mut request = TaskRequest::new(0, 0);
    request.input_format = sidecar_core::Format::Arrows;
    request.stream = stream;
    request.batch_size = BATCH_ROWS;
    let mut rows = 0u64;
    let mut sink = |b: RecordBatch| {
        rows += b.num_rows() as u64;
        Ok(())
    };
    let t0 = Instant::now();
    let report = sidecar.run_task(
        &request,
        part.schema.clone(),
        part.iter().map(Ok),
        Some(part.schema.clone()),
        &mut sink,
    )?;
    let secs = t0.elapsed().as_secs_f64();
    ensure!(
        rows == part.rows() && report.rows_out == part.rows(),
        "the identity task returned {rows} rows of {}",
        part.rows()
    );
    sidecar.shutdown()?;
    let result = Throughput {
        bytes: report.bytes_in,
        rows,
        secs,
        peak_rss_kib: sidecar_core::procfs::peak_rss_kib()
            .context("/proc/self/status has no VmHWM line")?,
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
