//! `sidecar-entrypoint check` through the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use util::{bin, Dir};

fn line<'a>(out: &'a str, what: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(&format!("{what}:")))
        .unwrap_or_else(|| panic!("no {what} line in:\n{out}"))
}

#[test]
fn passes_on_a_good_setup_as_a_non_root_user() {
    let dir = Dir::new();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("check")
        .arg("--volume")
        .arg(dir.path())
        .args(["--", "dd"]);
    if nix::unistd::getuid().is_root() {
        // The binary must be reachable by uid 5001 (it is, under target/).
        cmd.uid(5001).gid(5001);
    }
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("SKIPPED: cannot run the check as uid 5001: {e}");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stdout.is_empty() && !out.status.success() {
        eprintln!("SKIPPED: the binary cannot run as uid 5001 here: {stderr}");
        return;
    }
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(line(&stdout, "user").starts_with("ok"), "{stdout}");
    assert!(line(&stdout, "volume").starts_with("ok"), "{stdout}");
    assert!(
        line(&stdout, "command").contains("dd resolves to /"),
        "{stdout}"
    );
    assert!(line(&stdout, "inotify").starts_with("ok"), "{stdout}");
    assert!(stdout.contains("check: 0 FAIL"), "{stdout}");
    // The probe leaves nothing behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn fails_on_a_missing_volume_and_program() {
    let dir = Dir::new();
    let missing = dir.join("no-such-volume");
    let out = Command::new(bin())
        .arg("check")
        .arg("--volume")
        .arg(&missing)
        .args(["--", "no-such-program-xyz"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let volume = line(&stdout, "volume");
    assert!(
        volume.starts_with("FAIL") && volume.contains(missing.to_str().unwrap()),
        "{stdout}"
    );
    let command = line(&stdout, "command");
    assert!(
        command.starts_with("FAIL") && command.contains("no-such-program-xyz"),
        "{stdout}"
    );
}

#[test]
fn root_is_a_failure() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("SKIPPED: not running as root");
        return;
    }
    let dir = Dir::new();
    let out = Command::new(bin())
        .arg("check")
        .arg("--volume")
        .arg(dir.path())
        .args(["-c", "true"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let user = line(&stdout, "user");
    assert!(
        user.starts_with("FAIL") && user.contains("non-root"),
        "{stdout}"
    );
    assert!(
        line(&stdout, "command").contains("/bin/sh present"),
        "{stdout}"
    );
}
