//! `check`: validates the image and the runtime, one line per check.

use std::ffi::OsStr;
use std::fmt;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{CheckArgs, SHELL};
use crate::{Ctx, End};

/// How long the inotify probe waits for its event.
const PROBE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    pub what: &'static str,
    pub detail: String,
}

fn finding(level: Level, what: &'static str, detail: impl Into<String>) -> Finding {
    Finding {
        level,
        what,
        detail: detail.into(),
    }
}

pub async fn run(_ctx: &Ctx, args: &CheckArgs) -> End {
    let volume = sidecar_core::layout::resolve_volume(args.volume.as_deref());
    let mut report = vec![check_uid(), check_subreaper(), check_proc()];
    let volume_ok = check_volume(&volume, &mut report);
    report.push(check_command(args));
    if volume_ok {
        let v = volume.clone();
        let probe =
            tokio::task::spawn_blocking(move || sidecar_core::wait::probe_events(&v, PROBE)).await;
        report.push(match probe {
            Ok(Ok(true)) => finding(Level::Ok, "inotify", format!("events arrive on {}", volume.display())),
            Ok(Ok(false)) => finding(
                Level::Warn,
                "inotify",
                format!(
                    "no inotify event arrived on {} within {PROBE:?} (network or FUSE filesystem?): polling fallback in use",
                    volume.display()
                ),
            ),
            Ok(Err(e)) => finding(Level::Warn, "inotify", format!("{e}: polling fallback in use")),
            Err(e) => finding(Level::Warn, "inotify", format!("probe failed ({e}): polling fallback in use")),
        });
    }
    let fails = report.iter().filter(|f| f.level == Level::Fail).count();
    let warns = report.iter().filter(|f| f.level == Level::Warn).count();
    // A closed or broken stdout must not turn the verdict into a panic.
    let mut out = std::io::stdout().lock();
    for f in &report {
        let _ = writeln!(out, "{:<4} {}: {}", f.level, f.what, f.detail);
    }
    let _ = writeln!(out, "check: {fails} FAIL, {warns} warn");
    if fails > 0 {
        End::CheckFailed
    } else {
        End::Success
    }
}

fn check_uid() -> Finding {
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    if uid == 0 {
        finding(
            Level::Fail,
            "user",
            "running as root (uid 0): run the image as a numeric non-root user (e.g. `USER 5001` or `--user 5001`)",
        )
    } else {
        finding(
            Level::Ok,
            "user",
            format!("uid {uid}, gid {gid} (non-root)"),
        )
    }
}

fn check_subreaper() -> Finding {
    if std::process::id() == 1 {
        return finding(Level::Ok, "reaper", "PID 1: orphans are reaped");
    }
    let mut flag: libc::c_int = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER writes one int through the pointer.
    let r = unsafe {
        libc::prctl(
            libc::PR_GET_CHILD_SUBREAPER,
            &mut flag as *mut libc::c_int,
            0,
            0,
            0,
        )
    };
    if r == 0 && flag != 0 {
        finding(Level::Ok, "reaper", "child subreaper: orphans are reaped")
    } else {
        finding(
            Level::Warn,
            "reaper",
            "not PID 1 and not a child subreaper: orphans of the logic go elsewhere",
        )
    }
}

fn check_proc() -> Finding {
    if Path::new("/proc/self/stat").exists() {
        finding(
            Level::Ok,
            "proc",
            "/proc is mounted (descendants can be found and killed at exit)",
        )
    } else {
        finding(
            Level::Warn,
            "proc",
            "/proc is not mounted: descendants outside the logic's process group cannot be found at exit",
        )
    }
}

/// Returns whether the volume is usable (for the checks that need it).
fn check_volume(volume: &Path, report: &mut Vec<Finding>) -> bool {
    match std::fs::metadata(volume) {
        Err(e) => {
            report.push(finding(
                Level::Fail,
                "volume",
                format!(
                    "{} cannot be used: {e} (mount the shared volume there, or pass --volume / set $SIDECAR_VOLUME or $SHARED_DIR)",
                    volume.display()
                ),
            ));
            return false;
        }
        Ok(m) if !m.is_dir() => {
            report.push(finding(
                Level::Fail,
                "volume",
                format!("{} is not a directory", volume.display()),
            ));
            return false;
        }
        Ok(_) => {}
    }
    let probe = volume.join(format!(".sidecar-check.{}", std::process::id()));
    match std::fs::write(&probe, b"check").and_then(|()| std::fs::remove_file(&probe)) {
        Ok(()) => {
            report.push(finding(
                Level::Ok,
                "volume",
                format!("{} exists and is writable", volume.display()),
            ));
            true
        }
        Err(e) => {
            let _ = std::fs::remove_file(&probe);
            let uid = nix::unistd::getuid().as_raw();
            report.push(finding(
                Level::Fail,
                "volume",
                format!(
                    "{} is not writable by uid {uid}: {e} (chown or chmod it for this user)",
                    volume.display()
                ),
            ));
            false
        }
    }
}

fn check_command(args: &CheckArgs) -> Finding {
    if args.command.is_empty() {
        return finding(
            Level::Warn,
            "command",
            "no command given (pass -c LINE or -- COMMAND to check it)",
        );
    }
    if args.command.line.is_some() && Path::new(SHELL).exists() {
        return match executable(Path::new(SHELL)) {
            Ok(()) => finding(
                Level::Ok,
                "command",
                format!("{SHELL} present for the -c form"),
            ),
            Err(e) => finding(Level::Fail, "command", format!("{SHELL}: {e}")),
        };
    }
    let cmd = match args.command.resolve_with_shell(false) {
        Ok(c) => c,
        Err(e) => return finding(Level::Fail, "command", e),
    };
    let mut detail = String::new();
    if args.command.line.is_some() {
        detail.push_str(&format!(
            "no {SHELL}: the -c line is split and executed directly; "
        ));
    }
    match resolve_program(&cmd.program) {
        Ok(path) => {
            detail.push_str(&format!(
                "{} resolves to {}",
                cmd.program.to_string_lossy(),
                path.display()
            ));
            finding(Level::Ok, "command", detail)
        }
        Err(e) => {
            detail.push_str(&e);
            finding(Level::Fail, "command", detail)
        }
    }
}

fn executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK)
        .map_err(|e| format!("not executable by this user: {e}"))
}

/// Where `program` would be found: an absolute or relative path as is,
/// else the first executable match in `$PATH`.
pub fn resolve_program(program: &OsStr) -> Result<PathBuf, String> {
    let shown = program.to_string_lossy();
    if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        return executable(&p)
            .map(|()| p)
            .map_err(|e| format!("{shown}: {e}"));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if executable(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "{shown:?} is not found in PATH ({})",
        path.to_string_lossy()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_programs() {
        assert!(resolve_program(OsStr::new("sh")).is_ok());
        let e = resolve_program(OsStr::new("no-such-program-xyz")).unwrap_err();
        assert!(e.contains("not found in PATH"), "{e}");
        let e = resolve_program(OsStr::new("/nonexistent/x")).unwrap_err();
        assert!(e.contains("/nonexistent/x"), "{e}");
    }
}
