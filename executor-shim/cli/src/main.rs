//! # executor-shim (the command line)
//!
//! The executor side of the sidecar runtime on the command line. The
//! library, [`executor_shim`], is the protocol's executor side (formats,
//! client, providers, the pod-template model); this binary is the thin front
//! over it, one module per subcommand:
//!
//! * `run` ([`run`]): one task through a sidecar, Arrow IPC on stdin and stdout.
//! * `harness` ([`harness`]): the local test harness.
//! * `bench` ([`bench`]): the benchmark against raw baselines.
//! * `pod-template` ([`pod_template`]): the Kubernetes executor pod template.
//!
//! ## Where things live
//!
//! The CLI is its own package (`executor-shim-cli`, binary `executor-shim`)
//! rather than binary-private modules of the library's package, because a
//! package's dependencies are compiled for all of its targets: keeping clap,
//! indicatif and anyhow here is what keeps them out of the library and out
//! of the Python module built on it. Process-wide effects (logging set-up,
//! signal handlers, environment) are made here, never in the library.
//!
//! Exit statuses are decided in one place, [`exit_code`], and listed in
//! `--help` ([`EXIT_CODES`]).

mod bench;
mod harness;
mod pod_template;
mod run;

use std::io;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use executor_shim::ShimError;
use sidecar_core::files::FlagError;

/// The exit-status table, shown in `--help`.
pub const EXIT_CODES: &str = "\
Exit status:
  0    success
  1    an error not listed below (I/O, unreadable input, ...)
  2    usage: bad flags or arguments
  3    a task failed: the logic exited non-zero, was cancelled or lost
       (harness: a partition failed all its attempts)
  4    a task's deadline passed
  5    the sidecar: unresponsive, exited, never ready, cannot start
  6    the output: schema mismatch, unreadable, not as the manifest says, refused path
  130  interrupted by SIGINT or SIGTERM";

#[derive(Debug, Parser)]
#[command(
    name = "executor-shim",
    version,
    about = "The executor side of the sidecar runtime: run tasks through a sidecar, test images locally, measure.",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One task through the sidecar serving --volume: an Arrow IPC stream on
    /// stdin in, an Arrow IPC stream on stdout out.
    #[command(after_help = EXIT_CODES)]
    Run(run::RunArgs),
    /// The local test harness: M sidecars, N partitions, outputs as Parquet.
    #[command(after_help = EXIT_CODES)]
    Harness(harness::HarnessArgs),
    /// Measures handshake latency, per-task overhead and throughput.
    #[command(after_help = EXIT_CODES)]
    Bench(bench::BenchArgs),
    /// Prints a Spark-on-Kubernetes executor pod template with the sidecar.
    #[command(after_help = EXIT_CODES)]
    PodTemplate(pod_template::PodTemplateArgs),
}

/// How a subcommand ended when it did not fail outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    Success,
    /// It ran, and some task failed (the details are printed).
    TasksFailed,
    /// SIGINT or SIGTERM stopped it cleanly.
    Interrupted,
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
        Command::Run(args) => run::run(args),
        Command::Harness(args) => harness::run(args),
        Command::Bench(args) => bench::run(args),
        Command::PodTemplate(args) => pod_template::run(args).map(|()| Done::Success),
    };
    if let Err(err) = &result {
        eprintln!("executor-shim: {}", describe(err));
    }
    ExitCode::from(exit_code(&result))
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

/// The exit-status table ([`EXIT_CODES`]), in one place. (Usage errors exit
/// 2 from the argument parser before a subcommand runs.)
fn exit_code(result: &anyhow::Result<Done>) -> u8 {
    let err = match result {
        Ok(Done::Success) => return 0,
        Ok(Done::TasksFailed) => return 3,
        Ok(Done::Interrupted) => return 130,
        Err(err) => err,
    };
    let Some(e) = err.chain().find_map(|e| e.downcast_ref::<ShimError>()) else {
        return 1;
    };
    match e {
        ShimError::TaskFailed { .. } => 3,
        ShimError::Cancelled { .. } => 130,
        ShimError::Deadline { .. } => 4,
        e if e.is_sidecar_failure() => 5,
        ShimError::Format(_)
        | ShimError::Manifest(_)
        | ShimError::Path(_)
        | ShimError::Record(_)
        | ShimError::Flag(FlagError::Foreign { .. } | FlagError::Record(_))
        | ShimError::Protocol { .. } => 6,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidecar_core::{Status, TaskId};
    use std::time::Duration;

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
            let shown = err.to_string();
            assert_eq!(exit_code(&Err(err)), code, "{shown}");
        }
        // Wrapped in context, the cause still decides.
        let wrapped = anyhow::Error::from(ShimError::Invalid("x".into())).context("running");
        assert_eq!(exit_code(&Err(wrapped)), 1);
        // Runs that end without an error have their own rows.
        assert_eq!(exit_code(&Ok(Done::Success)), 0);
        assert_eq!(exit_code(&Ok(Done::TasksFailed)), 3);
        assert_eq!(exit_code(&Ok(Done::Interrupted)), 130);
        // And the table in --help says the same.
        for row in ["0    success", "3    a task failed", "130  interrupted"] {
            assert!(EXIT_CODES.contains(row), "{row}");
        }
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
