//! Sidecar providers: where the sidecar comes from, and making sure exactly
//! one serves each executor volume and none outlives its executor.
//!
//! * [`Provider::Attach`]: a sidecar already serves the volume (a
//!   Kubernetes pod's sidecar container). The shim waits for `sidecar/ready`
//!   and never stops it; its lease tells the sidecar when the executor is
//!   gone.
//! * [`Provider::Process`]: the shim starts `sidecar-entrypoint --mode serve`
//!   as a child process. No Docker needed; the embedded default.
//! * [`Provider::Docker`]: the shim runs the image with the volume
//!   bind-mounted, locked down (numeric user, read-only root, no network, no
//!   capabilities, no new privileges).
//!
//! ## One sidecar per volume
//!
//! [`Sidecar::start`] takes an exclusive `flock` on
//! `executor/sidecar.lock` while it decides. If a live sidecar already
//! serves the volume (a parseable `sidecar/ready` and a heartbeat that is
//! seen to change), the new handle attaches to it; otherwise it starts one.
//! Every handle holds a shared `flock` on `executor/sidecar.users` for as
//! long as it lives. When a handle that started or shared a sidecar goes
//! away it checks (under the start lock) whether it is the last user: only
//! the last one stops the sidecar. Threads of one process and separate
//! processes (PySpark's Python workers) are treated alike.
//!
//! ## No sidecar outlives its executor
//!
//! * Normal end: the last handle raises the root `close_flag` (drain, exit
//!   0), waits, then escalates to `SIGTERM` and `SIGKILL` (process) or
//!   `docker rm -f` (Docker).
//! * The executor dies without running destructors (`SIGKILL`, OOM kill):
//!   every handle renews `executor/lease` (a [`Beater`]) and the sidecar is
//!   started with `--lease-timeout` and `--exit-on-orphan`, so it cancels
//!   its tasks and exits once the lease is stale. Bound: `lease_timeout`
//!   plus the sidecar's TERM-to-KILL grace.
//!
//! `PR_SET_PDEATHSIG` is deliberately not used: it fires when the *thread*
//! that spawned the child exits, not the process, so a sidecar started from
//! a short-lived worker thread would be killed under the feet of the other
//! threads sharing it, and it would defeat the hand-over to another process
//! described above. The lease covers the case it was meant for.
//!
//! ## Where things live
//!
//! * this module: the provider names ([`ProviderKind`]), the one way to
//!   build a provider from what a user names ([`ProviderSpec::build`]: the
//!   CLI, the Python module, the harness and the bench all use it), and the
//!   options ([`SidecarOptions`]);
//! * [`Sidecar`] (`sidecar.rs`): the handle, started by role (attach, join,
//!   launch) and stopped by the last user;
//! * `process.rs`, `docker.rs`: every child-process and `docker` effect;
//! * `locks.rs`: the start and users locks, and the owner record.

mod docker;
mod locks;
mod process;
mod sidecar;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sidecar_core::wait::WatchMode;

use crate::error::ShimError;

pub use process::locate_entrypoint;
pub use sidecar::{reclaim, Sidecar};

/// The volume's mount path inside a Docker sidecar.
pub const CONTAINER_VOLUME: &str = "/opt/sidecar/shared-volumes/shared";

/// The entrypoint's path inside a sidecar image.
pub const DEFAULT_ENTRYPOINT_PATH: &str = "/usr/bin/sidecar-entrypoint";

/// The numeric user a Docker sidecar runs as (Foundry's bring-your-own-container uid).
pub const DEFAULT_USER: &str = "5001";

/// The logic used when no command is given: the identity, input copied to
/// output.
pub const DEFAULT_COMMAND: [&str; 3] = [
    "sh",
    "-c",
    r#"exec cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#,
];

/// A provider's name, as users write it (`attach`, `process`, `docker`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// A sidecar already serves the volume.
    Attach,
    /// `sidecar-entrypoint` as a child process.
    Process,
    /// A locked-down container.
    Docker,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 3] = [Self::Attach, Self::Process, Self::Docker];

    pub fn name(self) -> &'static str {
        match self {
            Self::Attach => "attach",
            Self::Process => "process",
            Self::Docker => "docker",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ProviderKind {
    type Err = ShimError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                ShimError::Invalid(format!(
                    "provider {s:?} is not one of attach, process, docker"
                ))
            })
    }
}

/// The process provider's settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessProvider {
    /// The binary; `None`: [`locate_entrypoint`].
    pub entrypoint: Option<PathBuf>,
    /// The logic; empty: [`DEFAULT_COMMAND`].
    pub command: Vec<String>,
    /// More `sidecar-entrypoint` options, before `--`.
    pub extra_args: Vec<String>,
}

/// The Docker provider's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerProvider {
    /// The Docker CLI (`docker`).
    pub cli: String,
    pub image: String,
    /// The logic; empty: [`DEFAULT_COMMAND`].
    pub command: Vec<String>,
    /// Numeric user ([`DEFAULT_USER`]).
    pub user: String,
    /// The entrypoint inside the image ([`DEFAULT_ENTRYPOINT_PATH`]).
    pub entrypoint_path: String,
}

impl Default for DockerProvider {
    fn default() -> Self {
        Self {
            cli: "docker".into(),
            image: String::new(),
            command: Vec::new(),
            user: DEFAULT_USER.into(),
            entrypoint_path: DEFAULT_ENTRYPOINT_PATH.into(),
        }
    }
}

/// Where the sidecar comes from. Build one with [`ProviderSpec::build`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provider {
    /// A sidecar already serves the volume.
    Attach,
    /// `sidecar-entrypoint` as a child process.
    Process(ProcessProvider),
    /// A locked-down container.
    Docker(DockerProvider),
}

impl Provider {
    pub fn kind(&self) -> ProviderKind {
        match self {
            Provider::Attach => ProviderKind::Attach,
            Provider::Process(_) => ProviderKind::Process,
            Provider::Docker(_) => ProviderKind::Docker,
        }
    }
}

/// What a user names to choose a sidecar: a kind (or none, to infer it)
/// and the settings the kinds use. The CLI, the Python module, the harness
/// and the bench all build their provider through [`ProviderSpec::build`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderSpec {
    /// `None`: docker with an image, process with a command, else attach.
    pub kind: Option<ProviderKind>,
    /// The logic (process and docker).
    pub command: Vec<String>,
    /// The image (docker).
    pub image: Option<String>,
    /// The `sidecar-entrypoint` binary (process), or its path inside the
    /// image (docker).
    pub entrypoint: Option<PathBuf>,
    /// The Docker CLI (docker).
    pub docker_cli: Option<String>,
    /// The numeric user (docker).
    pub user: Option<String>,
}

impl ProviderSpec {
    /// The kind these settings name.
    pub fn kind(&self) -> ProviderKind {
        self.kind.unwrap_or(if self.image.is_some() {
            ProviderKind::Docker
        } else if self.command.is_empty() {
            ProviderKind::Attach
        } else {
            ProviderKind::Process
        })
    }

    /// The provider, or why these settings do not make one.
    pub fn build(self) -> Result<Provider, ShimError> {
        let invalid = |why: &str| Err(ShimError::Invalid(why.to_owned()));
        match self.kind() {
            ProviderKind::Attach if !self.command.is_empty() => {
                invalid("a command is only used by the process and docker providers (an attached sidecar runs its own)")
            }
            ProviderKind::Attach if self.image.is_some() => {
                invalid("an image is only used by the docker provider")
            }
            ProviderKind::Attach => Ok(Provider::Attach),
            ProviderKind::Process if self.image.is_some() => {
                invalid("an image is only used by the docker provider")
            }
            ProviderKind::Process => Ok(Provider::Process(ProcessProvider {
                entrypoint: self.entrypoint,
                command: self.command,
                extra_args: Vec::new(),
            })),
            ProviderKind::Docker => {
                let Some(image) = self.image else {
                    return invalid("the docker provider needs an image");
                };
                let d = DockerProvider::default();
                Ok(Provider::Docker(DockerProvider {
                    cli: self.docker_cli.unwrap_or(d.cli),
                    image,
                    command: self.command,
                    user: self.user.unwrap_or(d.user),
                    entrypoint_path: self
                        .entrypoint
                        .map_or(d.entrypoint_path, |p| p.to_string_lossy().into_owned()),
                }))
            }
        }
    }
}

fn command_or_default(command: &[String]) -> Vec<String> {
    if command.is_empty() {
        DEFAULT_COMMAND.iter().map(|s| (*s).to_owned()).collect()
    } else {
        command.to_vec()
    }
}

/// How the sidecar is run and watched: plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarOptions {
    /// Concurrent tasks (`--parallel`; default: the sidecar's CPUs).
    pub parallel: Option<u32>,
    /// How long to wait for `sidecar/ready`.
    pub ready_timeout: Duration,
    /// The sidecar's heartbeat interval (`--heartbeat`).
    pub heartbeat: Duration,
    /// A heartbeat unchanged this long means the sidecar is gone.
    pub stale_after: Duration,
    /// How often this side renews `executor/lease`.
    pub lease_interval: Duration,
    /// The sidecar's lease staleness bound (`--lease-timeout`).
    pub lease_timeout: Duration,
    /// Per-task limit (`--timeout`, and the shim's deadline for requests
    /// without their own).
    pub task_timeout: Option<Duration>,
    /// TERM-to-KILL grace (`--grace`; the sidecar's default is 10s).
    pub grace: Option<Duration>,
    /// Polling interval (`--poll`, and this side's fallback).
    pub poll: Option<Duration>,
    /// How both sides wait for flags (`--watch`).
    pub watch: WatchMode,
    /// The sidecar's log filter (`$SIDECAR_LOG`, e.g. `warn`); `None`
    /// leaves its environment (and so its default, `info`) alone.
    pub log_filter: Option<String>,
}

impl Default for SidecarOptions {
    fn default() -> Self {
        Self {
            parallel: None,
            ready_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_millis(500),
            stale_after: Duration::from_secs(5),
            lease_interval: Duration::from_millis(500),
            lease_timeout: Duration::from_secs(10),
            task_timeout: None,
            grace: None,
            poll: None,
            watch: WatchMode::Auto,
            log_filter: None,
        }
    }
}

impl SidecarOptions {
    pub(crate) fn grace(&self) -> Duration {
        self.grace.unwrap_or(Duration::from_secs(10))
    }

    /// The `sidecar-entrypoint` options for serving `volume`.
    fn serve_args(&self, volume: &str) -> Vec<String> {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let mut args: Vec<String> = vec![
            "--mode".into(),
            "serve".into(),
            "--volume".into(),
            volume.into(),
            "--heartbeat".into(),
            d(self.heartbeat),
            "--lease-timeout".into(),
            d(self.lease_timeout),
            "--exit-on-orphan".into(),
        ];
        if let Some(n) = self.parallel {
            args.extend(["--parallel".into(), n.to_string()]);
        }
        if let Some(t) = self.task_timeout {
            args.extend(["--timeout".into(), d(t)]);
        }
        if let Some(g) = self.grace {
            args.extend(["--grace".into(), d(g)]);
        }
        if let Some(p) = self.poll {
            args.extend(["--poll".into(), d(p)]);
        }
        let watch = match self.watch {
            WatchMode::Auto => "auto",
            WatchMode::Native => "inotify",
            WatchMode::Poll => "poll",
        };
        args.extend(["--watch".into(), watch.into()]);
        args
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn serve_args_carry_the_options() {
        let opts = SidecarOptions {
            parallel: Some(3),
            task_timeout: Some(Duration::from_secs(90)),
            watch: WatchMode::Native,
            ..Default::default()
        };
        let args = opts.serve_args("/v").join(" ");
        assert!(
            args.starts_with(
                "--mode serve --volume /v --heartbeat 500ms --lease-timeout 10s --exit-on-orphan"
            ),
            "{args}"
        );
        assert!(args.contains("--parallel 3"), "{args}");
        assert!(args.contains("--timeout 1m 30s"), "{args}");
        assert!(args.ends_with("--watch inotify"), "{args}");
    }

    #[test]
    fn one_way_to_name_a_provider() {
        for k in ProviderKind::ALL {
            assert_eq!(k.name().parse::<ProviderKind>().unwrap(), k);
        }
        let err = "kubernetes"
            .parse::<ProviderKind>()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"kubernetes\" is not one of attach, process, docker"),
            "{err}"
        );
        let spec = |kind, command: &[&str], image: Option<&str>| ProviderSpec {
            kind,
            command: command.iter().map(|s| s.to_string()).collect(),
            image: image.map(str::to_owned),
            ..Default::default()
        };
        // Inferred: an image means docker, a command process, nothing attach.
        assert_eq!(spec(None, &[], None).build().unwrap(), Provider::Attach);
        assert_eq!(
            spec(None, &["x"], None).build().unwrap().kind(),
            ProviderKind::Process
        );
        let docker = spec(None, &["x"], Some("img")).build().unwrap();
        let Provider::Docker(d) = docker else {
            panic!("{docker:?}")
        };
        assert_eq!(
            (d.image.as_str(), d.user.as_str(), d.cli.as_str()),
            ("img", "5001", "docker")
        );
        assert_eq!(d.command, ["x"]);
        // Refused, with the reason.
        for (bad, why) in [
            (
                spec(Some(ProviderKind::Attach), &["x"], None),
                "command is only used",
            ),
            (
                spec(Some(ProviderKind::Docker), &[], None),
                "needs an image",
            ),
            (
                spec(Some(ProviderKind::Process), &["x"], Some("i")),
                "image is only used",
            ),
        ] {
            let err = bad.build().unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }
}
