//! # sidecar-test-support
//!
//! The helpers every test tree of the workspace needs and would otherwise
//! copy: where the workspace's binaries are (built on first use, so one
//! crate's tests can run alone), which processes a test left behind, the
//! Docker image the Docker tests run, and bounded waits.
//!
//! Test-only: a dev-dependency of the crates whose tests use it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support lives in the workspace")
        .to_owned()
}

/// `target/<profile>` of the running test executable
/// (`target/<profile>/deps/<test>-<hash>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps")
        .to_owned()
}

/// A workspace binary (`sidecar-entrypoint`, `executor-shim`) of the
/// profile the tests were built with. Built once per test process (a no-op
/// when it is up to date), so `cargo test -p <one crate>` tests the current
/// sources; `SIDECAR_TEST_NO_BUILD=1` skips the build.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let dir = profile_dir();
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if std::env::var_os("SIDECAR_TEST_NO_BUILD").is_none() && !built.iter().any(|b| b == name) {
        let package = match name {
            "executor-shim" => "executor-shim-cli",
            other => other,
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", package, "--bin", name]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(workspace())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p {package} failed");
        built.push(name.to_owned());
    }
    let path = dir.join(name);
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// `sidecar-entrypoint` (`$SIDECAR_ENTRYPOINT` overrides).
pub fn entrypoint() -> PathBuf {
    match std::env::var_os("SIDECAR_ENTRYPOINT").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => bin("sidecar-entrypoint"),
    }
}

/// The `executor-shim` command line (`$SIDECAR_SHIM` overrides: a build
/// directory shared by several checkouts has one `target/debug/executor-shim`).
pub fn shim() -> PathBuf {
    match std::env::var_os("SIDECAR_SHIM").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => bin("executor-shim"),
    }
}

/// `(pid, command line)` of every live, non-zombie process other than this
/// one whose command line or environment contains `needle` (a scratch
/// directory, a marker variable): what a test left behind.
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let needle = needle.as_bytes();
    let mut out = Vec::new();
    for pid in sidecar_core::procfs::pids() {
        if pid == me {
            continue;
        }
        // Zombies are already dead; their parent reaps them.
        if sidecar_core::procfs::stat(pid).is_some_and(|s| s.state == 'Z') {
            continue;
        }
        let read = |name: &str| std::fs::read(format!("/proc/{pid}/{name}")).unwrap_or_default();
        let cmdline = read("cmdline");
        let environ = read("environ");
        let has = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        if has(&cmdline) || has(&environ) {
            let shown = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            out.push((pid, shown.trim().to_owned()));
        }
    }
    out
}

/// Whether `pid` is running (zombies count as gone: their parent reaps them).
pub fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(sidecar_core::procfs::is_running)
}

/// Waits up to `within` for `pid` to be gone; returns how long it took.
pub fn wait_gone(pid: u32, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if !alive(pid) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Waits up to `within` for `cond`; whether it held.
pub fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Waits up to `limit` for `cond`; panics naming `what` if it never holds.
pub fn wait_until(what: &str, limit: Duration, cond: impl FnMut() -> bool) {
    assert!(
        wait_for(limit, cond),
        "timed out after {limit:?} waiting for {what}"
    );
}

/// The Docker image the Docker tests run: `examples/foundry-dd` (the
/// static entrypoint at `/usr/bin/sidecar-entrypoint`, busybox for
/// `/bin/sh`, `dd`, `cat`).
pub const IMAGE: &str = "sidecar-foundry-dd:latest";

/// `Ok` when a Docker engine answers and [`IMAGE`] holds the entrypoint
/// of the sources under test (built offline by `examples/foundry-dd/build.sh`
/// when missing or built from other sources); otherwise why not, for a
/// `SKIPPED: docker: <why>` line. Decided once per test process.
///
/// The image is labelled `sidecar.source=<fingerprint of the entrypoint's
/// sources>`: a tag alone says nothing about what is in it, and an image
/// left by an older checkout (or by another working copy on the same
/// engine) would test another binary.
pub fn docker_image() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY.get_or_init(build_image).clone()
}

fn build_image() -> Result<(), String> {
    let run = |cmd: &mut Command| cmd.stdin(Stdio::null()).output();
    let info = run(Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]))
        .map_err(|e| format!("cannot run `docker`: {e}"))?;
    if !info.status.success() {
        return Err(format!(
            "no engine answers `docker info`: {}",
            tail(&info.stderr, 1)
        ));
    }
    let fingerprint = source_fingerprint();
    let label = format!("{{{{index .Config.Labels \"{SOURCE_LABEL}\"}}}}");
    let built = run(Command::new("docker").args(["image", "inspect", "--format", &label, IMAGE]));
    if built.is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == fingerprint
    }) {
        return Ok(());
    }
    let script = workspace().join("examples/foundry-dd/build.sh");
    let build = run(Command::new("bash")
        .arg(&script)
        .env("IMAGE", IMAGE)
        .env("SOURCE_LABEL", format!("{SOURCE_LABEL}={fingerprint}")))
    .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !build.status.success() {
        return Err(format!(
            "cannot build the image with {} ({}): {}",
            script.display(),
            build.status,
            tail(&build.stderr, 5)
        ));
    }
    Ok(())
}

/// The image label that names the sources its entrypoint was built from.
const SOURCE_LABEL: &str = "sidecar.source";

/// A fingerprint (64-bit FNV-1a, hex) of what goes into [`IMAGE`]: the
/// entrypoint's and the protocol library's sources and manifests, the lock
/// file, and the image's build files.
pub fn source_fingerprint() -> String {
    let root = workspace();
    let mut files = Vec::new();
    for dir in [
        "sidecar-entrypoint/src",
        "sidecar-core/src",
        "examples/foundry-dd",
    ] {
        collect_files(&root.join(dir), &mut files);
    }
    for file in [
        "Cargo.lock",
        "Cargo.toml",
        "sidecar-entrypoint/Cargo.toml",
        "sidecar-core/Cargo.toml",
        ".ci/build-static.sh",
    ] {
        files.push(root.join(file));
    }
    files.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for f in &files {
        eat(f
            .strip_prefix(&root)
            .unwrap_or(f)
            .to_string_lossy()
            .as_bytes());
        eat(&[0]);
        eat(&std::fs::read(f).unwrap_or_default());
        eat(&[0]);
    }
    format!("{hash:016x}")
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => collect_files(&p, out),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
}

/// Whether a test without Docker must fail rather than be skipped
/// (`SIDECAR_REQUIRE_DOCKER=1`).
pub fn docker_required() -> bool {
    std::env::var_os("SIDECAR_REQUIRE_DOCKER").is_some_and(|v| v == "1")
}

/// Says why a test did not run, on the real stderr (past the test
/// harness's capture, so it shows without `--nocapture`).
pub fn skipped(why: &str) {
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: docker: {why}");
}

/// Returns from the calling test (printing why) when Docker is missing,
/// or fails it under `SIDECAR_REQUIRE_DOCKER=1`.
#[macro_export]
macro_rules! require_docker {
    () => {
        if let Err(why) = $crate::docker_image() {
            if $crate::docker_required() {
                panic!("docker: {why} (SIDECAR_REQUIRE_DOCKER=1)");
            }
            $crate::skipped(&why);
            return;
        }
    };
}

/// The last `n` non-empty lines of `bytes`, joined.
pub fn tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
