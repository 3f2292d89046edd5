//! `executor-shim run`: one task through the sidecar serving `--volume`,
//! an Arrow IPC stream on stdin in, an Arrow IPC stream on stdout out.

use std::io::{self, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use clap::Args;
use executor_shim::provider::{ProviderKind, ProviderSpec, Sidecar, SidecarOptions};
use executor_shim::{ShimError, TaskRequest};
use sidecar_core::Format;

use crate::Done;

/// `executor-shim run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The shared volume the sidecar serves.
    #[arg(long, value_name = "DIR", env = "SIDECAR_VOLUME")]
    volume: PathBuf,
    /// How the input is staged for the logic.
    #[arg(long, value_name = "F", default_value = "arrows", value_parser = parse_format)]
    input_format: Format,
    /// What the logic writes [default: the input format].
    #[arg(long, value_name = "F", value_parser = parse_format)]
    output_format: Option<Format>,
    /// Stream through FIFOs instead of staging files (arrows, csv, jsonl).
    /// Output reaches stdout while the logic runs: on a non-zero exit,
    /// discard it.
    #[arg(long)]
    stream: bool,
    /// The task's deadline.
    #[arg(long, value_name = "DURATION", value_parser = sidecar_core::time::parse_duration)]
    timeout: Option<Duration>,
    /// The Spark partition (part of the task id).
    #[arg(long, value_name = "N", default_value_t = 0)]
    partition: u64,
    /// The attempt (part of the task id).
    #[arg(long, value_name = "N", default_value_t = 0)]
    attempt: u32,
    /// Where the sidecar comes from [default: docker with --image, process
    /// when a COMMAND is given, else attach].
    #[arg(long, value_name = "KIND", value_parser = parse_provider)]
    provider: Option<ProviderKind>,
    /// The sidecar-entrypoint binary (process provider) [default:
    /// $SIDECAR_ENTRYPOINT, next to this binary, or on PATH].
    #[arg(long, value_name = "PATH")]
    entrypoint: Option<PathBuf>,
    /// The sidecar image (docker provider); its entrypoint must be at
    /// /usr/bin/sidecar-entrypoint.
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    /// How long to wait for the sidecar to be ready.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = sidecar_core::time::parse_duration)]
    ready_timeout: Duration,
    /// Require the output to have the input's columns and types (a
    /// mismatch names the column); otherwise the output's own schema is
    /// used (inferred for csv and jsonl).
    #[arg(long)]
    expect_input_schema: bool,
    /// Print the task's report as a JSON line on stderr.
    #[arg(long)]
    report: bool,
    /// The logic, for the process provider.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse()
}

fn parse_provider(s: &str) -> Result<ProviderKind, String> {
    s.parse().map_err(|e: ShimError| e.to_string())
}

/// `executor-shim run`.
pub fn run(args: RunArgs) -> anyhow::Result<Done> {
    let provider = ProviderSpec {
        kind: args.provider,
        command: args.command.clone(),
        image: args.image.clone(),
        entrypoint: args.entrypoint.clone(),
        ..Default::default()
    }
    .build()?;

    let input = StreamReader::try_new(BufReader::with_capacity(1 << 20, io::stdin()), None)
        .context("reading the Arrow IPC stream on stdin")?;
    let schema = input.schema();

    // A sidecar started for one task logs only what matters, unless told
    // otherwise.
    let quiet = ["SIDECAR_LOG", "RUST_LOG"]
        .iter()
        .all(|v| std::env::var_os(v).is_none());
    let opts = SidecarOptions {
        ready_timeout: args.ready_timeout,
        log_filter: quiet.then(|| "warn".to_owned()),
        ..Default::default()
    };
    let sidecar = Sidecar::start(&args.volume, provider, opts)?;

    let mut request = TaskRequest::new(args.partition, args.attempt);
    interrupt::cancel_on_signals(&request.cancel);
    request.input_format = args.input_format;
    request.output_format = args.output_format;
    request.stream = args.stream;
    request.timeout = args.timeout;
    let expected = args.expect_input_schema.then(|| schema.clone());

    let stdout = io::stdout().lock();
    let mut out = Output {
        writer: None,
        stdout: Some(BufWriter::with_capacity(1 << 20, stdout)),
    };
    let result = sidecar.run_task(&request, schema, input, expected.clone(), &mut |b| {
        out.write(b)
    });
    let shutdown = sidecar.shutdown();
    if let Err(ShimError::Cancelled { .. }) = &result {
        // Stopped by SIGINT or SIGTERM: the logic was stopped and the task
        // closed in the sidecar.
        eprintln!(
            "executor-shim: {}",
            result.err().map(|e| e.to_string()).unwrap_or_default()
        );
        return Ok(Done::Interrupted);
    }
    let report = result?;
    out.finish(expected.unwrap_or_else(|| Arc::new(Schema::empty())))
        .context("writing the Arrow IPC stream to stdout")?;
    if args.report {
        let line = serde_json::json!({
            "task_id": report.task.as_str(),
            "status": report.outcome.status,
            "rows_in": report.rows_in,
            "rows_out": report.rows_out,
            "bytes_in": report.bytes_in,
            "bytes_out": report.bytes_out,
            "elapsed_ms": report.elapsed.as_millis() as u64,
            "duration_ms": report.outcome.duration_ms,
            "max_rss_kib": report.outcome.max_rss_kib,
            "peak_rss_kib": sidecar_core::procfs::peak_rss_kib(),
        });
        eprintln!("{line}");
    }
    if let Err(e) = shutdown {
        tracing::warn!("{e}");
    }
    Ok(Done::Success)
}

/// The Arrow IPC stream on stdout, started at the first batch (whose schema
/// it takes).
struct Output<W: Write> {
    writer: Option<(StreamWriter<W>, arrow::datatypes::SchemaRef)>,
    stdout: Option<W>,
}

impl<W: Write> Output<W> {
    fn write(&mut self, batch: RecordBatch) -> Result<(), ShimError> {
        let sink = |e: arrow::error::ArrowError| ShimError::Sink(format!("stdout: {e}"));
        if self.writer.is_none() {
            let Some(stdout) = self.stdout.take() else {
                return Err(ShimError::Sink("stdout: already finished".into()));
            };
            let schema = batch.schema();
            self.writer = Some((
                StreamWriter::try_new(stdout, &schema).map_err(sink)?,
                schema,
            ));
        }
        if let Some((w, schema)) = self.writer.as_mut() {
            if schema.as_ref() != batch.schema().as_ref() {
                return Err(ShimError::Sink(format!(
                    "stdout: the task's outputs have different schemas ({:?} after {:?}); pass --expect-input-schema or make them agree",
                    batch.schema(),
                    schema
                )));
            }
            w.write(&batch).map_err(sink)?;
        }
        Ok(())
    }

    /// Ends the stream; with no output at all, an empty stream of `schema`.
    fn finish(mut self, schema: arrow::datatypes::SchemaRef) -> anyhow::Result<()> {
        if self.writer.is_none() {
            if let Some(stdout) = self.stdout.take() {
                self.writer = Some((StreamWriter::try_new(stdout, &schema)?, schema));
            }
        }
        if let Some((mut w, _)) = self.writer.take() {
            w.finish()?;
            w.into_inner()?.flush()?;
        }
        Ok(())
    }
}

/// SIGINT and SIGTERM during a task cancel it (the sidecar stops its logic
/// and the task is closed) rather than kill this process and leave the
/// logic running; a second signal ends the process at once.
mod interrupt {
    use std::sync::OnceLock;

    use executor_shim::client::CancelToken;
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

    static TOKEN: OnceLock<CancelToken> = OnceLock::new();

    extern "C" fn on_signal(_: libc::c_int) {
        // An atomic load and an atomic store: async-signal-safe.
        if let Some(token) = TOKEN.get() {
            token.cancel();
        }
    }

    pub(super) fn cancel_on_signals(token: &CancelToken) {
        if TOKEN.set(token.clone()).is_err() {
            return;
        }
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESETHAND | SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for sig in [Signal::SIGINT, Signal::SIGTERM] {
            // SAFETY: the handler only touches atomics (see `on_signal`).
            if let Err(e) = unsafe { sigaction(sig, &action) } {
                tracing::warn!("cannot handle {sig}: {e}; it will end the task at once");
            }
        }
    }
}
