#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `executor-shim bench`, small: every figure of the JSON line is there and
//! positive, the table is printed, and nothing is left behind. No timing
//! assertions: this machine may be loaded.

use std::path::PathBuf;
use std::process::Command;

fn entrypoint() -> Option<PathBuf> {
    Some(sidecar_test_support::entrypoint())
}

const KEYS: &[&str] = &[
    "handshake_p50_us",
    "handshake_p99_us",
    "inotify_raw_p50_us",
    "poll_p50_us",
    "task_overhead_p50_us",
    "spawn_raw_p50_us",
    "file_mode_mb_s",
    "stream_mode_mb_s",
    "raw_copy_mb_s",
    "file_mode_ratio",
    "stream_mode_ratio",
    "shim_peak_rss_mib",
    // Added with the interleaved rounds, load and growth figures.
    "handshake_ratio_min",
    "handshake_ratio_max",
    "task_overhead_ratio_min",
    "task_overhead_p99_ratio",
    "load_p1_tasks_s",
    "load_p1_raw_tasks_s",
    "load_p2_ratio",
    "load_p8_tasks_s",
    "load_p8_ratio",
    "growth_10_p50_us",
    "growth_1000_ratio",
    "growth_10000_p50_us",
    "growth_10000_ratio",
    "file_mode_ratio_min",
    "stream_mode_ratio_min",
];

/// The smallest run that still takes every figure in two rounds.
const SMALL: &[&str] = &["--rounds", "2", "--load-tasks", "10", "--growth-tasks", "4"];

#[test]
fn a_small_bench_prints_every_figure() {
    let ep = entrypoint().expect(
        "sidecar-entrypoint is not built beside executor-shim: run `cargo build -p sidecar-entrypoint` first",
    );
    let volume = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_executor-shim"))
        .args(["bench", "--tasks", "50", "--size", "16MiB", "--json"])
        .args(SMALL)
        .arg("--volume")
        .arg(volume.path())
        .arg("--entrypoint")
        .arg(&ep)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stderr}",
        out.status
    );
    // --json: stdout is exactly one JSON line; the table is on stderr.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout: {stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    for key in KEYS {
        let x = v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"));
        assert!(x > 0.0 && x.is_finite(), "{key} = {x} in {v}");
    }
    assert!(v["bytes"].as_u64().unwrap() >= 16 << 20, "{v}");
    assert_eq!(v["rounds"], 2, "{v}");
    // A spread is a spread: its median lies between its ends.
    for figure in ["handshake_ratio", "file_mode_ratio", "load_p8_ratio"] {
        let (lo, mid, hi) = (
            v[format!("{figure}_min")].as_f64().unwrap(),
            v[figure].as_f64().unwrap(),
            v[format!("{figure}_max")].as_f64().unwrap(),
        );
        assert!(lo <= mid && mid <= hi, "{figure}: {lo} {mid} {hi}");
    }
    for figure in [
        "handshake p50",
        "per-task overhead",
        "tasks/s at --parallel 8",
        "10000 task dirs present",
        "file mode",
        "stream mode",
        "2 interleaved rounds",
    ] {
        assert!(stderr.contains(figure), "table lacks {figure:?}:\n{stderr}");
    }
    // The bench's scratch directory is gone, and so are its peers.
    assert_eq!(
        std::fs::read_dir(volume.path()).unwrap().count(),
        0,
        "left behind in {}",
        volume.path().display()
    );
}

#[test]
fn without_json_the_table_comes_first_and_the_json_line_last() {
    let ep = entrypoint().expect("sidecar-entrypoint is not built beside executor-shim");
    let volume = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_executor-shim"))
        .args(["bench", "--tasks", "10", "--size", "4MiB"])
        .args(SMALL)
        .arg("--volume")
        .arg(volume.path())
        .arg("--entrypoint")
        .arg(&ep)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| ratio (spread)"), "{stdout}");
    let last = stdout.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert!(v["handshake_p50_us"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_bad_size_is_a_usage_error_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_executor-shim"))
        .args(["bench", "--size", "12 parsecs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("parsecs"), "{stderr}");
}
