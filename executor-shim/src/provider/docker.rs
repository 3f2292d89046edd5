//! The Docker provider: the image run as a locked-down container with the
//! volume bind-mounted. Every `docker` command of the shim is here.

use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sidecar_core::Volume;

use super::{DockerProvider, SidecarOptions, CONTAINER_VOLUME};
use crate::client::SidecarProbe;
use crate::error::ShimError;

/// The `docker run` arguments for the sidecar serving `host` (the volume's
/// real path) in a container named `name`: numeric user, read-only root,
/// no network, no capabilities, no new privileges.
pub(super) fn run_args(
    docker: &DockerProvider,
    opts: &SidecarOptions,
    host: &str,
    name: &str,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "-d",
        "--rm",
        "--name",
        name,
        "--user",
        &docker.user,
        "--read-only",
        "--tmpfs",
        "/tmp:rw,nosuid,nodev,size=256m",
        "--network",
        "none",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "-v",
        &format!("{host}:{CONTAINER_VOLUME}"),
        "--entrypoint",
        &docker.entrypoint_path,
    ]
    .map(str::to_owned)
    .into();
    if let Some(filter) = &opts.log_filter {
        args.extend(["-e".into(), format!("SIDECAR_LOG={filter}")]);
    }
    args.push(docker.image.clone());
    args.extend(opts.serve_args(CONTAINER_VOLUME));
    args.push("--".into());
    args.extend(super::command_or_default(&docker.command));
    args
}

/// Starts the container serving `vol`, named `name`.
pub(super) fn run(
    vol: &Volume,
    opts: &SidecarOptions,
    docker: &DockerProvider,
    name: &str,
) -> Result<(), ShimError> {
    let host = std::fs::canonicalize(vol.root()).map_err(ShimError::io(vol.root()))?;
    let args = run_args(docker, opts, &host.to_string_lossy(), name);
    let shown = format!("{} {}", docker.cli, args.join(" "));
    tracing::debug!("starting {shown}");
    let out = Command::new(&docker.cli)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ShimError::Spawn {
            what: format!("{} run", docker.cli),
            source,
        })?;
    if !out.status.success() {
        return Err(ShimError::Docker {
            command: shown,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// `Some(why)` once the container is not running; `None` while it runs or
/// when the CLI itself fails (no verdict: the heartbeat decides).
fn not_running(cli: &str, name: &str) -> Option<String> {
    let out = Command::new(cli)
        .args([
            "inspect",
            "-f",
            "{{.State.Running}} {{.State.ExitCode}}",
            name,
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return Some(format!("container {name} is gone"));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    match (words.next(), words.next()) {
        (Some("true"), _) => None,
        (_, code) => Some(format!(
            "container {name} is not running, exit code {}",
            code.unwrap_or("unknown")
        )),
    }
}

/// Waits (up to ten seconds) for the container to stop on its close flag,
/// then removes it whatever its state.
pub(super) fn stop(cli: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && not_running(cli, name).is_none() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new(cli)
        .args(["rm", "-f", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A container, looked at no more than every couple of seconds.
#[derive(Debug)]
pub(super) struct DockerProbe {
    cli: String,
    name: String,
    last: Mutex<(Option<Instant>, Option<String>)>,
}

impl DockerProbe {
    const EVERY: Duration = Duration::from_secs(2);

    pub fn new(cli: &str, name: &str) -> Self {
        Self {
            cli: cli.to_owned(),
            name: name.to_owned(),
            last: Mutex::new((None, None)),
        }
    }
}

impl SidecarProbe for DockerProbe {
    fn exited(&self) -> Option<String> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.1.is_some() {
            return last.1.clone();
        }
        if last.0.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return None;
        }
        let verdict = not_running(&self.cli, &self.name);
        *last = (Some(Instant::now()), verdict.clone());
        verdict
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_container_is_locked_down() {
        let docker = DockerProvider {
            image: "img:1".into(),
            ..Default::default()
        };
        let args = run_args(&docker, &SidecarOptions::default(), "/host/v", "sidecar-x").join(" ");
        for want in [
            "--user 5001",
            "--read-only",
            "--network none",
            "--cap-drop ALL",
            "--security-opt no-new-privileges",
            "-v /host/v:/opt/sidecar/shared-volumes/shared",
            "--entrypoint /usr/bin/sidecar-entrypoint img:1 --mode serve",
        ] {
            assert!(args.contains(want), "{want:?} in {args}");
        }
        assert!(
            args.ends_with(r#"-- sh -c exec cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#),
            "{args}"
        );
    }
}
