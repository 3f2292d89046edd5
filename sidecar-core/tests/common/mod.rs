//! An in-process sidecar over the real protocol code: the serve layout,
//! `protocol::drive` with file-backed waiter and flag writer, and a no-op
//! runner that counts how often each task ran.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sidecar_core::protocol::{drive, Exit, FlagWriter, ProtocolError, Runner, Start, Waiter};
use sidecar_core::record::{read_flag, Outcome, OutputFile, TaskSpec};
use sidecar_core::wait::{Watch, WatchConfig};
use sidecar_core::{atomic, manifest, TaskId, Volume};

pub struct Files {
    pub volume: Volume,
    pub watch: Arc<Watch>,
}

impl Waiter for Files {
    async fn wait_start(&self, task: &TaskId) -> Result<Start, ProtocolError> {
        let path = self.volume.task(task).start_flag();
        let bytes = read_flag(&path, "task spec").map_err(|e| ProtocolError::Aborted {
            task: task.clone(),
            message: e.to_string(),
        })?;
        Ok(match TaskSpec::parse(&bytes, &path) {
            Ok(spec) => Start::Spec(spec),
            Err(e) => Start::Invalid(e.to_string()),
        })
    }
    async fn wait_close(&self, task: &TaskId) -> Result<(), ProtocolError> {
        let flag = self.volume.task(task).close_flag();
        self.watch
            .wait_until_async("close_flag", None, || {
                Ok::<_, sidecar_core::wait::WaitError>(flag.exists().then_some(()))
            })
            .await
            .map_err(|e| ProtocolError::Aborted {
                task: task.clone(),
                message: e.to_string(),
            })
    }
}

impl FlagWriter for Files {
    fn manifest(&self, task: &TaskId) -> Result<Vec<OutputFile>, String> {
        manifest::scan(&self.volume.task(task).output()).map_err(|e| e.to_string())
    }
    fn write_done(&self, task: &TaskId, outcome: &Outcome) -> Result<(), ProtocolError> {
        let bytes = serde_json::to_vec(outcome).unwrap();
        atomic::write_atomic(
            &self.volume.task(task).done_flag(),
            &bytes,
            atomic::Durability::Visible,
        )
        .map_err(|e| ProtocolError::Aborted {
            task: task.clone(),
            message: e.to_string(),
        })
    }
    fn cleanup(&self, task: &TaskId) -> Result<(), ProtocolError> {
        std::fs::remove_dir_all(self.volume.task(task).root()).map_err(|e| ProtocolError::Aborted {
            task: task.clone(),
            message: e.to_string(),
        })
    }
}

#[derive(Default)]
pub struct CountingRunner {
    pub runs: Mutex<HashMap<TaskId, u32>>,
}

impl Runner for CountingRunner {
    async fn run(&self, task: &TaskId, _spec: &TaskSpec) -> Result<Exit, String> {
        *self.runs.lock().unwrap().entry(task.clone()).or_default() += 1;
        Ok(Exit::code(0))
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
        watch.add(&volume.tasks_dir(), true).unwrap();
        let files = Arc::new(Files {
            volume: volume.clone(),
            watch: Arc::clone(&watch),
        });
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
                while !s.load(Ordering::SeqCst) {
                    let changed = watch.changed(Duration::from_millis(50));
                    for entry in std::fs::read_dir(volume.tasks_dir()).unwrap().flatten() {
                        let Ok(id) = TaskId::new(entry.file_name().to_string_lossy()) else {
                            continue;
                        };
                        if claimed.contains(&id) || !volume.task(&id).start_flag().exists() {
                            continue;
                        }
                        claimed.insert(id.clone());
                        let (f, r) = (Arc::clone(&files), Arc::clone(&r));
                        tokio::spawn(async move {
                            drive(&id, &*f, &*r, &*f).await.unwrap();
                        });
                    }
                    changed.await;
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
