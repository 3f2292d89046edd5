//! Real-filesystem tests of the serve layout: many tasks through an
//! in-process no-op sidecar built from the real protocol code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sidecar_core::files::ExecutorFlags;
use sidecar_core::record::{read_flag, InputSpec, Outcome, TaskSpec};
use sidecar_core::state::TaskState;
use sidecar_core::wait::{Watch, WatchConfig, WatchMode};
use sidecar_core::{atomic, Format, Status, TaskId, Volume};

use common::NoopSidecar;

/// The executor side of one task: stage, start, wait, collect, close,
/// through the executor's side of the flags.
fn one_task(volume: &Volume, watch: &Watch, id: &TaskId) -> Outcome {
    let task = volume.task(id);
    std::fs::create_dir(task.root()).unwrap();
    std::fs::create_dir(task.input()).unwrap();
    std::fs::create_dir(task.output()).unwrap();
    watch.add(task.root()).unwrap();
    atomic::write_atomic(
        &task.input().join("part.csv"),
        b"id\n1\n",
        Default::default(),
    )
    .unwrap();
    let spec = TaskSpec {
        input: Some(InputSpec {
            format: Some(Format::Csv),
            files: vec!["part.csv".into()],
        }),
        ..Default::default()
    };
    let flags = ExecutorFlags::new(task.clone());
    flags.start(&spec).unwrap();
    let outcome = watch
        .wait_until(
            "done_flag",
            Some(Instant::now() + Duration::from_secs(60)),
            || flags.outcome(),
        )
        .unwrap();
    watch.remove(task.root());
    flags.close().unwrap();
    assert_eq!(flags.state(), TaskState::Closed);
    outcome
}

fn many_tasks(mode: WatchMode, tasks: u64, concurrent: u64) {
    let dir = tempfile::tempdir().unwrap();
    let config = WatchConfig {
        mode,
        poll: Duration::from_millis(2),
    };
    let sidecar = NoopSidecar::start(dir.path().to_owned(), config);
    let volume = Volume::new(dir.path());
    let seen = Mutex::new(HashSet::new());
    std::thread::scope(|s| {
        for worker in 0..concurrent {
            let (volume, seen) = (&volume, &seen);
            s.spawn(move || {
                let watch = Watch::new(config).unwrap();
                for p in (worker..tasks).step_by(concurrent as usize) {
                    let id = TaskId::for_attempt(p, 0, "");
                    let outcome = one_task(volume, &watch, &id);
                    assert_eq!(outcome.task_id, id.as_str());
                    assert_eq!(outcome.status, Status::Succeeded);
                    assert!(seen.lock().unwrap().insert(id), "outcome seen twice");
                }
            });
        }
    });
    // Every task's directory is removed once its close flag is seen.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(volume.tasks_dir()).unwrap().count() > 0 {
        assert!(Instant::now() < deadline, "task directories left behind");
        std::thread::sleep(Duration::from_millis(10));
    }
    let runs = sidecar.runner.runs.lock().unwrap().clone();
    assert_eq!(seen.lock().unwrap().len() as u64, tasks, "tasks lost");
    assert_eq!(runs.len() as u64, tasks, "tasks never run");
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "tasks run more than once: {twice:?}");
}

#[test]
fn thousand_tasks_eight_at_a_time_with_inotify() {
    many_tasks(WatchMode::Native, 1000, 8);
}

#[test]
fn thousand_tasks_eight_at_a_time_polling() {
    many_tasks(WatchMode::Poll, 1000, 8);
}

/// A reader never sees a partial flag: a writer rewrites a large flag in a
/// loop while a reader parses it.
#[test]
fn reader_never_observes_a_partial_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("start_flag");
    let spec = |fill: char| TaskSpec {
        env: (0..2000)
            .map(|i| (format!("K{i}"), fill.to_string().repeat(200)))
            .collect(),
        ..Default::default()
    };
    let a = serde_json::to_vec(&spec('a')).unwrap();
    let b = serde_json::to_vec(&spec('b')).unwrap();
    assert!(a.len() > 400_000, "a large flag: {}", a.len());
    atomic::write_atomic(&path, &a, Default::default()).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut flip = false;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let bytes = if flip { &a } else { &b };
                atomic::write_atomic(&path, bytes, Default::default()).unwrap();
                flip = !flip;
            }
        });
        let (mut saw_a, mut saw_b) = (0, 0);
        for _ in 0..500 {
            let bytes = read_flag(&path, "task spec").unwrap();
            let parsed = TaskSpec::parse(&bytes, &path).expect("a partial flag was read");
            match parsed.env.get("K0").map(|v| v.as_bytes()[0]) {
                Some(b'a') => saw_a += 1,
                Some(b'b') => saw_b += 1,
                other => panic!("unexpected content {other:?}"),
            }
            assert!(parsed.env.values().all(|v| v.len() == 200));
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(saw_a + saw_b == 500);
    });
    // No temporaries are left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("start_flag")]);
}

/// Invalid task ids and escaping paths are refused with errors naming them.
#[test]
fn invalid_ids_and_escaping_paths_are_refused() {
    for bad in ["../etc", "a/b", "", ".hidden", "x y"] {
        let err = TaskId::new(bad).unwrap_err().to_string();
        assert!(err.contains(&format!("{bad:?}")), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("output");
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::symlink("/etc", out.join("etc")).unwrap();
    for bad in ["../../etc/passwd", "/etc/passwd", "etc/passwd"] {
        let err = sidecar_core::safepath::open_beneath(&out, bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("refused") && (err.contains(bad) || err.contains("etc")),
            "{err}"
        );
    }
}
