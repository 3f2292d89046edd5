//! The command line, as plain data.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sidecar_core::wait::{WatchConfig, WatchMode};

#[derive(Debug, Parser)]
#[command(
    name = "sidecar-entrypoint",
    version,
    about = "The sidecar container's ENTRYPOINT: waits for flags on the shared volume, runs the user logic, reports the truth.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub sub: Option<Sub>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Validate the image and runtime: non-root numeric uid, volume writable,
    /// command resolvable, inotify usable.
    Check(CheckArgs),
    /// Exit 0 only when the volume's sidecar is ready and its heartbeat
    /// fresh; otherwise print why and exit 1. For Kubernetes exec
    /// startupProbe and livenessProbe (no shell needed).
    Probe(ProbeArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One task, the volume root is its directory (the Foundry layout).
    Oneshot,
    /// Many tasks under tasks/, concurrently, until the root close_flag.
    Serve,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WatchKind {
    /// inotify, polling if it cannot be set up.
    Auto,
    /// inotify or fail.
    Inotify,
    /// Polling only (network filesystems).
    Poll,
}

/// The user command: `-c LINE` or `-- COMMAND ARGS...`.
#[derive(Debug, Clone, Args)]
pub struct CommandArgs {
    /// The command line, run by `/bin/sh -c` when a shell exists, else split
    /// with shell quoting rules and executed directly.
    #[arg(
        short = 'c',
        long = "command",
        value_name = "COMMAND LINE",
        conflicts_with = "argv"
    )]
    pub line: Option<String>,
    /// The command and its arguments (best after `--`; everything from the
    /// first word that is not an option on is the command's).
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    pub argv: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[arg(long, value_enum, default_value = "oneshot")]
    pub mode: Mode,
    /// The shared volume (default: $SIDECAR_VOLUME, $SHARED_DIR, /opt/sidecar/shared-volumes/shared).
    #[arg(long, value_name = "DIR")]
    pub volume: Option<PathBuf>,
    /// serve: tasks run at once (default: CPUs available).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub parallel: Option<u32>,
    /// Run before any task, in order; a failure stops start-up.
    #[arg(long = "init-script", value_name = "PATH")]
    pub init_scripts: Vec<PathBuf>,
    /// Per-task time limit (a task spec's timeout_ms takes precedence).
    #[arg(long, value_parser = sidecar_core::time::parse_duration)]
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL.
    #[arg(long, value_parser = sidecar_core::time::parse_duration, default_value = "10s")]
    pub grace: Duration,
    /// Polling interval of the fallback (and of --watch poll).
    #[arg(long, value_parser = sidecar_core::time::parse_duration, default_value = "20ms")]
    pub poll: Duration,
    #[arg(long, value_enum, default_value = "auto")]
    pub watch: WatchKind,
    #[arg(long = "log-format", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// serve: interval of sidecar/heartbeat refreshes.
    #[arg(long, value_parser = sidecar_core::time::parse_duration, default_value = "500ms")]
    pub heartbeat: Duration,
    /// serve: executor/lease staleness bound (monitored once the lease exists).
    #[arg(long = "lease-timeout", value_parser = sidecar_core::time::parse_duration, default_value = "10s")]
    pub lease_timeout: Duration,
    /// serve: exit 0, after cancelling the running tasks, once the executor
    /// side is gone: its lease is stale, or no executor-side user holds
    /// executor/sidecar.users any more.
    #[arg(long = "exit-on-orphan")]
    pub exit_on_orphan: bool,
    /// serve: exit 0, not 143, when SIGTERM stops the sidecar and every
    /// in-flight task recorded its outcome in time (a clean stop, as the
    /// kubelet asks for one). Kubernetes and Spark read a non-zero exit as
    /// a failed container.
    #[arg(long = "exit-zero-on-sigterm", env = "SIDECAR_EXIT_ZERO_ON_SIGTERM")]
    pub exit_zero_on_sigterm: bool,
    #[command(flatten)]
    pub command: CommandArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[arg(long, value_name = "DIR")]
    pub volume: Option<PathBuf>,
    #[command(flatten)]
    pub command: CommandArgs,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The shared volume (default: $SIDECAR_VOLUME, $SHARED_DIR, /opt/sidecar/shared-volumes/shared).
    #[arg(long, value_name = "DIR")]
    pub volume: Option<PathBuf>,
    /// The oldest heartbeat that counts as fresh (the sidecar beats every
    /// --heartbeat, 500ms by default).
    #[arg(long = "max-age", value_name = "DURATION", value_parser = sidecar_core::time::parse_duration, default_value = "5s")]
    pub max_age: Duration,
}

impl RunArgs {
    /// The volume (`--volume`, `$SIDECAR_VOLUME`, `$SHARED_DIR`, the
    /// default), which must already exist: both modes serve one that the
    /// platform mounted, never one they made up.
    pub fn existing_volume(&self) -> anyhow::Result<sidecar_core::Volume> {
        // Absolute (Volume::new): the logic runs in another directory.
        let volume =
            sidecar_core::Volume::new(sidecar_core::layout::resolve_volume(self.volume.as_deref()));
        anyhow::ensure!(
            volume.root().is_dir(),
            "the volume {} does not exist or is not a directory (use --volume, $SIDECAR_VOLUME or $SHARED_DIR)",
            volume.root().display()
        );
        Ok(volume)
    }

    pub fn watch_config(&self) -> WatchConfig {
        WatchConfig {
            mode: match self.watch {
                WatchKind::Auto => WatchMode::Auto,
                WatchKind::Inotify => WatchMode::Native,
                WatchKind::Poll => WatchMode::Poll,
            },
            poll: self.poll,
        }
    }
}

/// A resolved user command: the program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCommand {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// The words as the user gave them, for messages.
    pub shown: String,
}

pub const SHELL: &str = "/bin/sh";

impl CommandArgs {
    pub fn is_empty(&self) -> bool {
        self.line.is_none() && self.argv.is_empty()
    }

    /// The program to run: `/bin/sh -c LINE`, the shell-split LINE where
    /// there is no shell, or the argv.
    pub fn resolve(&self) -> Result<UserCommand, String> {
        self.resolve_with_shell(Path::new(SHELL).exists())
    }

    pub fn resolve_with_shell(&self, have_shell: bool) -> Result<UserCommand, String> {
        if let Some(line) = &self.line {
            if have_shell {
                return Ok(UserCommand {
                    program: SHELL.into(),
                    args: vec!["-c".into(), line.into()],
                    shown: line.clone(),
                });
            }
            let words = shell_words::split(line)
                .map_err(|e| format!("cannot split the command line {line:?}: {e}"))?;
            let mut words = words.into_iter().map(OsString::from);
            let program = words
                .next()
                .ok_or_else(|| "the command line given with -c is empty".to_owned())?;
            return Ok(UserCommand {
                program,
                args: words.collect(),
                shown: line.clone(),
            });
        }
        let mut argv = self.argv.iter().cloned();
        let program = argv.next().ok_or_else(|| {
            "no command given: pass -c \"COMMAND LINE\" or -- COMMAND [ARGS...]".to_owned()
        })?;
        let args: Vec<OsString> = argv.collect();
        let shown = std::iter::once(&program)
            .chain(&args)
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(UserCommand {
            program,
            args,
            shown,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sidecar-entrypoint").chain(args.iter().copied()))
    }

    #[test]
    fn forms() {
        let cli = parse(&["-c", "dd if=a of=b"]).unwrap();
        assert_eq!(cli.run.mode, Mode::Oneshot);
        let cmd = cli.run.command.resolve_with_shell(true).unwrap();
        assert_eq!(cmd.program, "/bin/sh");
        assert_eq!(cmd.args, vec![OsString::from("-c"), "dd if=a of=b".into()]);
        let cmd = cli.run.command.resolve_with_shell(false).unwrap();
        assert_eq!(cmd.program, "dd");

        let cli = parse(&[
            "--mode",
            "serve",
            "--parallel",
            "2",
            "--grace",
            "1s",
            "--",
            "cat",
            "-n",
        ])
        .unwrap();
        assert_eq!(cli.run.mode, Mode::Serve);
        assert_eq!(cli.run.parallel, Some(2));
        assert_eq!(cli.run.grace, Duration::from_secs(1));
        let cmd = cli.run.command.resolve().unwrap();
        assert_eq!(cmd.program, "cat");
        assert_eq!(cmd.shown, "cat -n");

        // Docker's ENTRYPOINT ["sidecar-entrypoint"] + CMD ["cat", "-n"]: no `--`.
        let cli = parse(&["--grace", "1s", "cat", "-n", "--grace"]).unwrap();
        let cmd = cli.run.command.resolve().unwrap();
        assert_eq!(cmd.program, "cat");
        assert_eq!(cmd.args, vec![OsString::from("-n"), "--grace".into()]);

        let cli = parse(&["check", "--volume", "/v", "--", "x"]).unwrap();
        assert!(
            matches!(cli.sub, Some(Sub::Check(ref c)) if c.volume.as_deref() == Some(Path::new("/v")))
        );

        let cli = parse(&["probe", "--volume", "/v", "--max-age", "2s"]).unwrap();
        assert!(matches!(cli.sub, Some(Sub::Probe(ref p)) if p.max_age == Duration::from_secs(2)));
        let cli = parse(&["probe"]).unwrap();
        assert!(
            matches!(cli.sub, Some(Sub::Probe(ref p)) if p.volume.is_none() && p.max_age == Duration::from_secs(5))
        );
    }

    #[test]
    fn shell_quoting_without_a_shell() {
        let c = CommandArgs {
            line: Some("printf '%s\\n' 'a b' c".into()),
            argv: vec![],
        };
        let cmd = c.resolve_with_shell(false).unwrap();
        assert_eq!(cmd.program, "printf");
        assert_eq!(
            cmd.args,
            vec![OsString::from("%s\\n"), "a b".into(), "c".into()]
        );
        let bad = CommandArgs {
            line: Some("echo 'unterminated".into()),
            argv: vec![],
        };
        assert!(bad
            .resolve_with_shell(false)
            .unwrap_err()
            .contains("cannot split"));
    }

    #[test]
    fn refusals() {
        assert!(parse(&["--parallel", "0", "--", "x"]).is_err());
        assert!(parse(&["--grace", "soon", "--", "x"]).is_err());
        assert!(parse(&["-c", "x", "--", "y"]).is_err());
        // A mistyped option is an error, not a command to wait for.
        assert!(parse(&["--volume", "/v", "--bogus-flag"]).is_err());
        let none = CommandArgs {
            line: None,
            argv: vec![],
        };
        assert!(none.resolve().unwrap_err().contains("no command given"));
    }
}
