//! `--init-script`: run in order at start-up, before any task.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Stdio;

use crate::cli::SHELL;
use crate::supervisor::{Spawn, Stop};
use crate::Ctx;

/// Why start-up stopped in an init script.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    #[error("init script {script} failed with {status}")]
    Failed { script: String, status: String },
    #[error("init script {script} cannot be run: {source}")]
    Spawn {
        script: String,
        #[source]
        source: std::io::Error,
    },
    #[error("init script {script} was interrupted: {reason}")]
    Interrupted { script: String, reason: String },
}

fn stderr_stdio() -> Stdio {
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => Stdio::from(fd),
        Err(_) => Stdio::null(),
    }
}

/// Runs every script in order (through `/bin/sh` when there is one, else
/// executed directly), its output on our stderr. Stops at the first failure.
pub async fn run_all(
    ctx: &Ctx,
    scripts: &[std::path::PathBuf],
    env: &[(OsString, OsString)],
) -> Result<(), InitError> {
    for script in scripts {
        run_one(ctx, script, env).await?;
    }
    Ok(())
}

async fn run_one(ctx: &Ctx, script: &Path, env: &[(OsString, OsString)]) -> Result<(), InitError> {
    let shown = script.display().to_string();
    let mut spec = if Path::new(SHELL).exists() {
        Spawn::new(SHELL, vec![script.as_os_str().to_owned()])
    } else {
        Spawn::new(script.as_os_str(), Vec::new())
    };
    spec.stdout = stderr_stdio();
    spec.stderr = stderr_stdio();
    spec.env = env.to_vec();
    tracing::info!(script = %shown, "running init script");
    let child = ctx.sup.spawn(spec).map_err(|source| InitError::Spawn {
        script: shown.clone(),
        source,
    })?;
    let ended = child
        .supervise(None, ctx.shutdown_cancel(), ctx.grace)
        .await;
    if let Some(Stop::Cancelled(reason)) = ended.stopped {
        return Err(InitError::Interrupted {
            script: shown,
            reason,
        });
    }
    if !ended.exit.success() {
        return Err(InitError::Failed {
            script: shown,
            status: ended.exit.describe(),
        });
    }
    Ok(())
}
