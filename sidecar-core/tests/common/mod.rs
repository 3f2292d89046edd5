//! An in-process sidecar over the real protocol code: the serve layout,
//! `protocol::drive` with the file-backed `FileFlags`, and a no-op runner
//! that counts how often each task ran.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sidecar_core::files::{FileFlags, Stop, TaskFiles};
use sidecar_core::protocol::{drive, Event, Exit, Runner};
use sidecar_core::wait::{Watch, WatchConfig};
use sidecar_core::{TaskId, TaskSpec, Volume};

/// Runs nothing, successfully, and counts the runs.
#[derive(Default)]
pub struct CountingRunner {
    pub runs: Mutex<HashMap<TaskId, u32>>,
}

impl Runner for CountingRunner {
    type Child = ();
    async fn spawn(&self, task: &TaskId, _spec: &TaskSpec) -> Event<()> {
        *self.runs.lock().unwrap().entry(task.clone()).or_default() += 1;
        Event::Spawned(())
    }
    async fn wait(&self, _task: &TaskId, _spec: &TaskSpec, _child: ()) -> Event<()> {
        Event::Exited(Exit::code(0))
    }
}

/// A running in-process sidecar. Stops (and joins) on drop.
pub struct NoopSidecar {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub runner: Arc<CountingRunner>,
}

impl NoopSidecar {
    pub fn start(root: PathBuf, config: WatchConfig) -> Self {
        let volume = Volume::new(root);
        std::fs::create_dir_all(volume.tasks_dir()).unwrap();
        let watch = Arc::new(Watch::new(config).unwrap());
        watch.add(&volume.tasks_dir()).unwrap();
        let runner = Arc::new(CountingRunner::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (Arc::clone(&runner), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut claimed: HashSet<TaskId> = HashSet::new();
                let mut watched: HashSet<TaskId> = HashSet::new();
                while !s.load(Ordering::SeqCst) {
                    let seen = watch.generation();
                    for entry in std::fs::read_dir(volume.tasks_dir()).unwrap().flatten() {
                        let Ok(id) = TaskId::new(entry.file_name().to_string_lossy()) else {
                            continue;
                        };
                        let task = volume.task(&id);
                        // Watched before it is looked at: nothing lands unseen.
                        if watched.insert(id.clone()) && watch.add(task.root()).is_err() {
                            continue;
                        }
                        if claimed.contains(&id) || !task.start_flag().exists() {
                            continue;
                        }
                        claimed.insert(id.clone());
                        let flags = FileFlags::new(
                            TaskFiles::serve(&task),
                            Arc::clone(&watch),
                            Stop::never(),
                        );
                        let r = Arc::clone(&r);
                        tokio::spawn(async move {
                            drive(&id, &flags, &*r, &flags).await.unwrap();
                        });
                    }
                    watch
                        .wait_changed_async(seen, Duration::from_millis(50))
                        .await;
                }
            });
        });
        Self {
            stop,
            thread: Some(thread),
            runner,
        }
    }
}

impl Drop for NoopSidecar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
