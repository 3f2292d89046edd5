//! `executor-shim`: the executor side of the sidecar runtime on the command
//! line. See the crate docs (`executor_shim`) for the library.
//!
//! Exit codes are decided in one place, [`exit_code`].

use std::io::{self, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use clap::{Args, Parser, Subcommand, ValueEnum};
use executor_shim::provider::{Provider, Sidecar, SidecarOptions};
use executor_shim::{ShimError, TaskRequest};
use sidecar_core::Format;

#[derive(Debug, Parser)]
#[command(
    name = "executor-shim",
    version,
    about = "The executor side of the sidecar runtime: run tasks through a sidecar, test images locally, measure."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One task through the sidecar serving --volume: an Arrow IPC stream on
    /// stdin in, an Arrow IPC stream on stdout out.
    Run(RunArgs),
    /// The local test harness: M sidecars, N partitions, outputs as Parquet.
    Harness(executor_shim::harness::HarnessArgs),
    /// Measures handshake latency, per-task overhead and throughput.
    Bench(executor_shim::bench::BenchArgs),
    /// Prints a Spark-on-Kubernetes executor pod template with the sidecar.
    PodTemplate(executor_shim::pod_template::PodTemplateArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProviderKind {
    /// A sidecar already serves the volume.
    Attach,
    /// Start `sidecar-entrypoint` as a child process for this task.
    Process,
    /// Run --image as a locked-down container for this task.
    Docker,
}

#[derive(Debug, Args)]
struct RunArgs {
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
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// The Spark partition (part of the task id).
    #[arg(long, value_name = "N", default_value_t = 0)]
    partition: u64,
    /// The attempt (part of the task id).
    #[arg(long, value_name = "N", default_value_t = 0)]
    attempt: u32,
    /// Where the sidecar comes from [default: docker with --image, process
    /// when a COMMAND is given, else attach].
    #[arg(long, value_enum)]
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
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
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

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Harness(args) => executor_shim::harness::run(args),
        Command::Bench(args) => executor_shim::bench::run(args),
        Command::PodTemplate(args) => executor_shim::pod_template::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("executor-shim: {}", describe(&err));
            ExitCode::from(exit_code(&err))
        }
    }
}

/// The error and its causes, each cause only if its text is not already
/// part of the message (most of ours quote their source).
fn describe(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// The exit-code table, in one place.
///
/// | code | meaning                                                        |
/// |------|----------------------------------------------------------------|
/// | 0    | success                                                        |
/// | 1    | any other error (I/O, bad input on stdin, ...)                 |
/// | 2    | usage (from the argument parser)                               |
/// | 3    | the task failed: the logic exited non-zero, was cancelled, lost |
/// | 4    | the task's deadline passed                                     |
/// | 5    | the sidecar: unresponsive, exited, never ready, cannot start   |
/// | 6    | the output: schema mismatch, unreadable, not as the manifest says, refused path |
fn exit_code(err: &anyhow::Error) -> u8 {
    let Some(e) = err.chain().find_map(|e| e.downcast_ref::<ShimError>()) else {
        return 1;
    };
    match e {
        ShimError::TaskFailed { .. } => 3,
        ShimError::Deadline { .. } => 4,
        e if e.is_sidecar_failure() => 5,
        ShimError::Format(_)
        | ShimError::Manifest(_)
        | ShimError::Path(_)
        | ShimError::Record(_)
        | ShimError::Protocol { .. } => 6,
        _ => 1,
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let kind = args.provider.unwrap_or(if args.image.is_some() {
        ProviderKind::Docker
    } else if args.command.is_empty() {
        ProviderKind::Attach
    } else {
        ProviderKind::Process
    });
    let provider = match kind {
        ProviderKind::Attach => {
            anyhow::ensure!(
                args.command.is_empty(),
                "a COMMAND is only used by --provider process (an attached sidecar runs its own)"
            );
            Provider::Attach
        }
        ProviderKind::Process => Provider::Process {
            entrypoint: args.entrypoint.clone().unwrap_or_default(),
            command: args.command.clone(),
            extra_args: Vec::new(),
        },
        ProviderKind::Docker => {
            let image = args
                .image
                .clone()
                .context("--provider docker needs --image IMAGE")?;
            Provider::docker(image, args.command.clone())
        }
    };

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
    Ok(ExitCode::SUCCESS)
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

#[cfg(test)]
mod tests {
    use super::*;
    use sidecar_core::{Status, TaskId};

    #[test]
    fn exit_codes_follow_the_table() {
        let task = TaskId::for_attempt(1, 0, "");
        let failed = ShimError::TaskFailed {
            task: task.clone(),
            status: Status::Failed,
            exit_code: Some(3),
            signal: None,
            reason: None,
            stderr_tail: String::new(),
        };
        let cases: Vec<(anyhow::Error, u8)> = vec![
            (failed.into(), 3),
            (
                ShimError::Deadline {
                    task,
                    timeout: Duration::from_secs(1),
                    detail: String::new(),
                }
                .into(),
                4,
            ),
            (
                ShimError::SidecarExited {
                    volume: "/v".into(),
                    status: "signal: 9".into(),
                }
                .into(),
                5,
            ),
            (
                ShimError::Protocol {
                    path: "/v/x".into(),
                    message: "m".into(),
                }
                .into(),
                6,
            ),
            (anyhow::anyhow!("stdin is not Arrow"), 1),
        ];
        for (err, code) in cases {
            assert_eq!(exit_code(&err), code, "{err}");
        }
        // Wrapped in context, the cause still decides.
        let wrapped = anyhow::Error::from(ShimError::Invalid("x".into())).context("running");
        assert_eq!(exit_code(&wrapped), 1);
    }

    #[test]
    fn descriptions_do_not_repeat_causes() {
        let io = io::Error::other("disk full");
        let err = anyhow::Error::from(ShimError::Io {
            path: "/v/f".into(),
            source: io,
        })
        .context("staging");
        assert_eq!(describe(&err), "staging: /v/f: disk full");
    }
}
