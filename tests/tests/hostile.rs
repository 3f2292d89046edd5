//! The executor side against a hostile sidecar: a test thread plays the
//! sidecar (heartbeat, done flags, outputs) and does everything a malicious
//! image could. The shim's `run_task` must return an error that names the
//! problem, within its bound, and hand the caller nothing from outside the
//! volume.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use executor_shim::client::{run_task, Health, TaskContext};
use executor_shim::{ShimError, TaskRequest};
use sidecar_core::atomic::{write_atomic, Durability};
use sidecar_core::manifest::checksum_file;
use sidecar_core::record::{OutputFile, MAX_FLAG_BYTES};
use sidecar_core::wait::{Watch, WatchConfig};
use sidecar_core::{Format, Outcome, Status, TaskDir, Timestamp, Volume};

const STALE: Duration = Duration::from_secs(1);
const BOUND: Duration = Duration::from_secs(15);

/// What the fake sidecar does with a task once its start flag is there.
type Behaviour = dyn Fn(&TaskDir) + Send + Sync;

/// A fake sidecar: beats (unless told to stop) and answers every task with
/// `behaviour`.
struct Fake {
    _sidecar: common::FakeSidecar,
    beating: Arc<AtomicBool>,
}

impl Fake {
    fn start(volume: &Volume, behaviour: Arc<Behaviour>) -> Self {
        let beating = Arc::new(AtomicBool::new(true));
        let b = Arc::clone(&beating);
        let beat = move |v: &Volume, seq| {
            // A planted FIFO stays planted (the hostile case below).
            let fifo = std::fs::symlink_metadata(v.heartbeat())
                .map(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()))
                .unwrap_or(false);
            if b.load(Ordering::SeqCst) && !fifo {
                let _ = sidecar_core::liveness::beat(&v.heartbeat(), seq);
            }
        };
        let answer = move |t: &TaskDir| behaviour(t);
        Self {
            _sidecar: common::FakeSidecar::start(volume, beat, answer),
            beating,
        }
    }
}

/// A done flag claiming success with `outputs`.
fn success(t: &TaskDir, outputs: Vec<OutputFile>) -> Vec<u8> {
    let mut o = Outcome::new(t.id().as_str(), Status::Succeeded, Timestamp::now());
    o.exit_code = Some(0);
    o.outputs = outputs;
    serde_json::to_vec(&o).unwrap()
}

fn entry_for(path: &str, file: &Path) -> OutputFile {
    let (bytes, checksum) = checksum_file(file).unwrap();
    OutputFile {
        path: path.into(),
        bytes,
        checksum,
    }
}

fn done(t: &TaskDir, bytes: &[u8]) {
    write_atomic(&t.done_flag(), bytes, Durability::Visible).unwrap();
}

/// Runs one csv task against the fake; returns the result and every byte
/// the sink received, rendered as CSV-ish text for leak checks.
fn run_against(
    name: &str,
    behaviour: Arc<Behaviour>,
) -> (Result<(), ShimError>, String, common::Scratch) {
    let s = common::Scratch::new(name);
    let root = s.volume("v");
    let volume = Volume::new(&root);
    let fake = Fake::start(&volume, behaviour);
    let (r, _) = common::within(name, BOUND, move || {
        let watch = Watch::new(WatchConfig::default()).unwrap();
        let health = Health::new(&volume, STALE, None);
        let ctx = TaskContext {
            volume: &volume,
            watch: &watch,
            health: &health,
        };
        let input = common::batch(3, 1);
        let schema = input.schema();
        let mut req = TaskRequest::new(0, 0);
        req.input_format = Format::Csv;
        req.timeout = Some(Duration::from_secs(10));
        let mut seen = String::new();
        let r = run_task(
            &ctx,
            &req,
            schema,
            std::iter::once(Ok(input)),
            None,
            &mut |b| {
                seen.push_str(&format!("{b:?}"));
                Ok(())
            },
        );
        (r.map(|_| ()), seen)
    });
    drop(fake);
    let (r, seen) = r;
    (r, seen, s)
}

fn expect_err(name: &str, behaviour: Arc<Behaviour>, wants: &[&str]) -> ShimError {
    let (r, seen, _scratch) = run_against(name, behaviour);
    let e = r.expect_err(&format!("{name}: the executor accepted a hostile result"));
    let text = e.to_string();
    for w in wants {
        assert!(text.contains(w), "{name}: error {text:?} lacks {w:?}");
    }
    assert!(
        !seen.contains("root:"),
        "{name}: /etc/passwd reached the sink"
    );
    assert!(
        !seen.contains("SECRET"),
        "{name}: a secret reached the sink"
    );
    e
}

fn outside_secret(t: &TaskDir) -> PathBuf {
    // tasks/<id>/../../../secret = the scratch dir, outside the volume.
    let p = t.root().join("../../../secret.csv");
    std::fs::write(&p, "n,s\n0,SECRET\n").unwrap();
    p
}

#[test]
fn malformed_done_flags_are_errors_naming_the_flag() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("hd-malformed", b"{\"protocol\":1,".to_vec(), "malformed outcome JSON"),
        ("hd-garbage", vec![0xff, 0x00, 0x13], "malformed outcome JSON"),
        ("hd-empty", b"   ".to_vec(), "outcome is empty"),
        ("hd-oversized", vec![b' '; MAX_FLAG_BYTES as usize + 10], "over the 1048576-byte limit"),
        (
            "hd-future",
            br#"{"protocol":99,"task_id":"x","status":"succeeded","exit_code":0,"signal":null,"reason":null,"started_at":"2026-01-01T00:00:00Z","finished_at":"2026-01-01T00:00:00Z","duration_ms":0,"cpu_ms":null,"max_rss_kib":null}"#.to_vec(),
            "protocol version 99 is not supported",
        ),
        (
            "hd-badstatus",
            br#"{"protocol":1,"task_id":"x","status":"great","exit_code":0,"signal":null,"reason":null,"started_at":"2026-01-01T00:00:00Z","finished_at":"2026-01-01T00:00:00Z","duration_ms":0,"cpu_ms":null,"max_rss_kib":null}"#.to_vec(),
            "malformed outcome JSON",
        ),
    ];
    for (name, bytes, want) in cases {
        let b = bytes.clone();
        expect_err(
            name,
            Arc::new(move |t: &TaskDir| done(t, &b)),
            &[want, "done_flag"],
        );
    }
}

#[test]
fn a_done_flag_for_another_task_is_refused() {
    expect_err(
        "hd-foreign",
        Arc::new(|t: &TaskDir| {
            let mut o = Outcome::new("p0-a1-other", Status::Succeeded, Timestamp::now());
            o.exit_code = Some(0);
            done(t, &serde_json::to_vec(&o).unwrap());
        }),
        &["p0-a1-other", "stale or foreign done flag"],
    );
}

#[test]
fn manifest_paths_outside_the_output_dir_are_refused() {
    let rel_cases = [
        ("hm-dotdot", "../../../secret.csv", "'..' is not allowed"),
        (
            "hm-dotdot-deep",
            "a/../../secret.csv",
            "'..' is not allowed",
        ),
        (
            "hm-absolute",
            "/etc/passwd",
            "absolute paths are not allowed",
        ),
        ("hm-nul", "part\0.csv", "contains NUL"),
        ("hm-hidden", ".part.csv.tmp", "reserved"),
    ];
    for (name, rel, want) in rel_cases {
        expect_err(
            name,
            Arc::new(move |t: &TaskDir| {
                let secret = outside_secret(t);
                // Tempting: the size and checksum of the real target.
                let e = entry_for(rel, &secret);
                done(t, &success(t, vec![e]));
            }),
            &[want],
        );
    }
}

#[test]
fn links_out_of_the_volume_are_never_followed() {
    // `ln -s /etc/passwd $SIDECAR_OUTPUT`, with a manifest that lists it
    // with the right size and checksum.
    expect_err(
        "hl-symlink",
        Arc::new(|t: &TaskDir| {
            let out = t.output().join("part.csv");
            std::os::unix::fs::symlink("/etc/passwd", &out).unwrap();
            done(
                t,
                &success(t, vec![entry_for("part.csv", Path::new("/etc/passwd"))]),
            );
        }),
        &["symbolic link"],
    );
    // A symlinked directory on the way.
    expect_err(
        "hl-dirlink",
        Arc::new(|t: &TaskDir| {
            let secret = outside_secret(t);
            std::os::unix::fs::symlink(secret.parent().unwrap(), t.output().join("sub")).unwrap();
            done(t, &success(t, vec![entry_for("sub/secret.csv", &secret)]));
        }),
        &["symbolic link", "sub"],
    );
    // A hard link to a file outside the volume.
    expect_err(
        "hl-hardlink",
        Arc::new(|t: &TaskDir| {
            let secret = outside_secret(t);
            std::fs::hard_link(&secret, t.output().join("part.csv")).unwrap();
            done(t, &success(t, vec![entry_for("part.csv", &secret)]));
        }),
        &["hard links"],
    );
}

#[test]
fn fifos_and_directories_where_a_file_is_expected_are_refused() {
    expect_err(
        "hf-fifo",
        Arc::new(|t: &TaskDir| {
            let p = t.output().join("part.csv");
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
            let e = OutputFile {
                path: "part.csv".into(),
                bytes: 10,
                checksum: "xxh3-64:0000000000000000".into(),
            };
            done(t, &success(t, vec![e]));
        }),
        &["FIFO", "part.csv"],
    );
    expect_err(
        "hf-dir",
        Arc::new(|t: &TaskDir| {
            std::fs::create_dir(t.output().join("part.csv")).unwrap();
            let e = OutputFile {
                path: "part.csv".into(),
                bytes: 0,
                checksum: "xxh3-64:0000000000000000".into(),
            };
            done(t, &success(t, vec![e]));
        }),
        &["directory", "part.csv"],
    );
}

#[test]
fn truncated_grown_or_swapped_outputs_are_never_accepted() {
    let csv = "n,s\n0,row-1-0\n1,row-1-1\n2,row-1-2\n";
    // The manifest lists the whole file, the file is half of it.
    expect_err(
        "hs-truncated",
        Arc::new(move |t: &TaskDir| {
            let p = t.output().join("part.csv");
            std::fs::write(&p, csv).unwrap();
            let e = entry_for("part.csv", &p);
            std::fs::write(&p, &csv[..csv.len() / 2]).unwrap();
            done(t, &success(t, vec![e]));
        }),
        &["incomplete", "part.csv"],
    );
    // The file grew after the manifest was taken.
    expect_err(
        "hs-grown",
        Arc::new(move |t: &TaskDir| {
            let p = t.output().join("part.csv");
            std::fs::write(&p, csv).unwrap();
            let e = entry_for("part.csv", &p);
            std::fs::write(&p, format!("{csv}3,SECRET\n")).unwrap();
            done(t, &success(t, vec![e]));
        }),
        &["part.csv", "bytes read"],
    );
    // Same size, different bytes.
    expect_err(
        "hs-swapped",
        Arc::new(move |t: &TaskDir| {
            let p = t.output().join("part.csv");
            std::fs::write(&p, csv).unwrap();
            let e = entry_for("part.csv", &p);
            std::fs::write(&p, csv.replace("row-1-2", "SECRET!")).unwrap();
            done(t, &success(t, vec![e]));
        }),
        &["checksum", "part.csv"],
    );
    // Listed but absent.
    expect_err(
        "hs-missing",
        Arc::new(move |t: &TaskDir| {
            let e = OutputFile {
                path: "part.csv".into(),
                bytes: 3,
                checksum: "xxh3-64:0000000000000000".into(),
            };
            done(t, &success(t, vec![e]));
        }),
        &["part.csv", "No such file"],
    );
}

#[test]
fn a_sidecar_that_stops_beating_is_reported_within_the_bound() {
    let s = common::Scratch::new("hb-stop");
    let volume = Volume::new(s.volume("v"));
    // Never answers, and stops beating as the task starts.
    let fake = Fake::start(&volume, Arc::new(|_t: &TaskDir| {}));
    let beating = Arc::clone(&fake.beating);
    let ((r, took), _) = common::within("hb-stop", BOUND, move || {
        let watch = Watch::new(WatchConfig::default()).unwrap();
        let health = Health::new(&volume, STALE, None);
        let ctx = TaskContext {
            volume: &volume,
            watch: &watch,
            health: &health,
        };
        let input = common::batch(1, 1);
        let mut req = TaskRequest::new(0, 0);
        req.input_format = Format::Csv;
        beating.store(false, Ordering::SeqCst);
        let stopped = std::time::Instant::now();
        let r = run_task(
            &ctx,
            &req,
            input.schema(),
            std::iter::once(Ok(input)),
            None,
            &mut |_| Ok(()),
        );
        (r.map(|_| ()), stopped.elapsed())
    });
    drop(fake);
    assert!(
        took <= STALE + Duration::from_secs(5),
        "reported after {took:?}"
    );
    let e = r.expect_err("a silent sidecar was not reported");
    assert!(matches!(e, ShimError::SidecarUnresponsive { .. }), "{e}");
    assert!(e.to_string().contains("heartbeat"), "{e}");
}

/// `done_flag` and `sidecar/heartbeat` are opened without following links
/// and without blocking: a hostile container that turns either into a FIFO
/// must not hang the executor, nor a symlink make it read a file outside
/// the volume.
#[test]
fn flag_files_that_are_fifos_or_links_do_not_hang_or_leak() {
    expect_err(
        "hx-done-fifo",
        Arc::new(|t: &TaskDir| {
            nix::unistd::mkfifo(
                &t.done_flag(),
                nix::sys::stat::Mode::from_bits_truncate(0o644),
            )
            .unwrap();
        }),
        &["done_flag"],
    );
    expect_err(
        "hx-done-symlink",
        Arc::new(|t: &TaskDir| {
            std::os::unix::fs::symlink("/etc/passwd", t.done_flag()).unwrap();
        }),
        &["done_flag", "symbolic link"],
    );
    expect_err(
        "hx-heartbeat-fifo",
        Arc::new(|t: &TaskDir| {
            let hb = t.root().join("../../sidecar/heartbeat");
            let tmp = t.root().join("../../sidecar/.hb-fifo");
            nix::unistd::mkfifo(&tmp, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
            std::fs::rename(&tmp, &hb).unwrap();
        }),
        &["heartbeat"],
    );
}
