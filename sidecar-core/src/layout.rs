//! Where every file of the protocol lives on the volume, in both modes.
//!
//! ```text
//! oneshot:  <volume>/{start_flag, done_flag, close_flag, logfile}
//! serve:    <volume>/sidecar/{ready, heartbeat}
//!           <volume>/executor/{lease, sidecar.lock, sidecar.users}
//!           <volume>/tasks/<task-id>/{input/, start_flag, output/, stdout, stderr,
//!                                     progress, owner, cancel_flag, done_flag, close_flag}
//!           <volume>/close_flag
//! ```

use std::path::{Path, PathBuf};

use crate::beneath::Beneath;
use crate::id::TaskId;

pub const START_FLAG: &str = "start_flag";
pub const DONE_FLAG: &str = "done_flag";
pub const CLOSE_FLAG: &str = "close_flag";
pub const CANCEL_FLAG: &str = "cancel_flag";
pub const LOGFILE: &str = "logfile";
pub const SIDECAR_DIR: &str = "sidecar";
pub const EXECUTOR_DIR: &str = "executor";
pub const TASKS_DIR: &str = "tasks";
pub const READY: &str = "ready";
pub const HEARTBEAT: &str = "heartbeat";
pub const LEASE: &str = "lease";
pub const INPUT_DIR: &str = "input";
pub const OUTPUT_DIR: &str = "output";
pub const STDOUT: &str = "stdout";
pub const STDERR: &str = "stderr";
pub const PROGRESS: &str = "progress";
/// `tasks/<id>/owner`: locked by the task's executor-side owner.
pub const OWNER: &str = "owner";
/// `executor/sidecar.lock`: held while a sidecar is started, joined or stopped.
pub const START_LOCK: &str = "sidecar.lock";
/// `executor/sidecar.users`: shared by every executor-side user of the sidecar.
pub const USERS_LOCK: &str = "sidecar.users";

/// The mount path used when neither `--volume`, `$SIDECAR_VOLUME` nor
/// `$SHARED_DIR` says otherwise.
pub const DEFAULT_VOLUME: &str = "/opt/sidecar/shared-volumes/shared";

/// The volume: `--volume` first, then `$SIDECAR_VOLUME`, then `$SHARED_DIR`
/// (Foundry images), then [`DEFAULT_VOLUME`].
pub fn resolve_volume(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_owned();
    }
    for var in ["SIDECAR_VOLUME", "SHARED_DIR"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return PathBuf::from(v);
        }
    }
    PathBuf::from(DEFAULT_VOLUME)
}

/// Whether a directory entry is a temporary that readers must ignore.
pub fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

/// The shared volume and the paths of both modes' files in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    root: PathBuf,
}

impl Volume {
    /// The volume at `root`, made absolute (against the current directory)
    /// once, here: the logic runs in its task directory, and every path
    /// either side derives from the volume must still name it there.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Self {
            root: std::path::absolute(&root).unwrap_or(root),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    // oneshot mode: the volume root is the task directory.
    pub fn start_flag(&self) -> PathBuf {
        self.root.join(START_FLAG)
    }
    pub fn done_flag(&self) -> PathBuf {
        self.root.join(DONE_FLAG)
    }
    /// In oneshot mode the task's close flag; in serve mode the sidecar's
    /// "drain and exit" flag. Both are `<volume>/close_flag`.
    pub fn close_flag(&self) -> PathBuf {
        self.root.join(CLOSE_FLAG)
    }
    pub fn logfile(&self) -> PathBuf {
        self.root.join(LOGFILE)
    }

    // serve mode.
    pub fn sidecar_dir(&self) -> PathBuf {
        self.root.join(SIDECAR_DIR)
    }
    pub fn ready(&self) -> PathBuf {
        self.sidecar_dir().join(READY)
    }
    pub fn heartbeat(&self) -> PathBuf {
        self.sidecar_dir().join(HEARTBEAT)
    }
    pub fn executor_dir(&self) -> PathBuf {
        self.root.join(EXECUTOR_DIR)
    }
    pub fn lease(&self) -> PathBuf {
        self.executor_dir().join(LEASE)
    }
    pub fn start_lock(&self) -> PathBuf {
        self.executor_dir().join(START_LOCK)
    }
    pub fn users_lock(&self) -> PathBuf {
        self.executor_dir().join(USERS_LOCK)
    }
    pub fn tasks_dir(&self) -> PathBuf {
        self.root.join(TASKS_DIR)
    }
    pub fn task(&self, id: &TaskId) -> TaskDir {
        TaskDir {
            id: id.clone(),
            root: self.tasks_dir().join(id.as_str()),
            volume: self.root.clone(),
        }
    }

    /// The resolver every path on this volume is opened through.
    pub fn beneath(&self) -> Beneath {
        Beneath::new(&self.root)
    }
}

/// One task's directory in serve mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskDir {
    id: TaskId,
    root: PathBuf,
    /// The volume's root.
    volume: PathBuf,
}

impl TaskDir {
    pub fn id(&self) -> &TaskId {
        &self.id
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The resolver of the task's volume: every path of the task is opened
    /// through it, from the volume root, never through a link.
    pub fn beneath(&self) -> Beneath {
        Beneath::new(&self.volume)
    }
    pub fn input(&self) -> PathBuf {
        self.root.join(INPUT_DIR)
    }
    pub fn output(&self) -> PathBuf {
        self.root.join(OUTPUT_DIR)
    }
    pub fn start_flag(&self) -> PathBuf {
        self.root.join(START_FLAG)
    }
    pub fn cancel_flag(&self) -> PathBuf {
        self.root.join(CANCEL_FLAG)
    }
    pub fn done_flag(&self) -> PathBuf {
        self.root.join(DONE_FLAG)
    }
    pub fn close_flag(&self) -> PathBuf {
        self.root.join(CLOSE_FLAG)
    }
    pub fn stdout(&self) -> PathBuf {
        self.root.join(STDOUT)
    }
    pub fn stderr(&self) -> PathBuf {
        self.root.join(STDERR)
    }
    pub fn progress(&self) -> PathBuf {
        self.root.join(PROGRESS)
    }
    pub fn owner(&self) -> PathBuf {
        self.root.join(OWNER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_designs() {
        let v = Volume::new("/v");
        let t = v.task(&TaskId::new("p0-a0").unwrap());
        let got: Vec<PathBuf> = vec![
            v.start_flag(),
            v.done_flag(),
            v.close_flag(),
            v.logfile(),
            v.ready(),
            v.heartbeat(),
            v.lease(),
            t.input(),
            t.start_flag(),
            t.output(),
            t.stdout(),
            t.stderr(),
            t.progress(),
            t.cancel_flag(),
            t.done_flag(),
            t.close_flag(),
        ];
        let want = [
            "/v/start_flag",
            "/v/done_flag",
            "/v/close_flag",
            "/v/logfile",
            "/v/sidecar/ready",
            "/v/sidecar/heartbeat",
            "/v/executor/lease",
            "/v/tasks/p0-a0/input",
            "/v/tasks/p0-a0/start_flag",
            "/v/tasks/p0-a0/output",
            "/v/tasks/p0-a0/stdout",
            "/v/tasks/p0-a0/stderr",
            "/v/tasks/p0-a0/progress",
            "/v/tasks/p0-a0/cancel_flag",
            "/v/tasks/p0-a0/done_flag",
            "/v/tasks/p0-a0/close_flag",
        ];
        let want: Vec<PathBuf> = want.iter().map(PathBuf::from).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn hidden_names() {
        assert!(is_hidden(".start_flag.tmp".as_ref()));
        assert!(!is_hidden("start_flag".as_ref()));
    }
}
