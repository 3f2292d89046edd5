//! Finding the tasks to run: which task directories have a start flag (or
//! a close flag: abandoned before they started).
//!
//! The watch keeps a journal of where events happened; discovery looks only
//! at the task directories named in it, so an event costs the same with ten
//! task directories present as with ten thousand. A directory is watched
//! from the moment it is first seen, *before* it is looked at, so a start
//! flag renamed into it afterwards is an event, and one renamed in before is
//! found by the look: no timed recheck is needed. The whole of `tasks/` is
//! looked at once at start, and again only when the journal says events
//! were lost, or when the watch polls (network filesystems).
//!
//! A directory still being staged whose owner is gone (its executor-side
//! process died: [`sidecar_core::owner`]) is removed: nobody will start it.
//! A lock released by a dying process makes no inotify event, so staged
//! directories that have an owner are looked at again every
//! [`SWEEP_EVERY`] ([`Discovery::sweep`]); directories without one (an
//! executor that does not lock) cost nothing there.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::time::{Duration, Instant};

use sidecar_core::layout::{is_hidden, TaskDir, Volume};
use sidecar_core::owner::OwnerProbe;
use sidecar_core::wait::{Changes, Watch};
use sidecar_core::TaskId;

/// How often staged task directories with a live owner are looked at
/// again, to see whether the owner died.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How much of a task directory a look covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Look {
    /// The flags, and the owner of a staged directory.
    Full,
    /// A rescan of all of `tasks/`: the flags; the owner only of a
    /// directory not yet known to be staged.
    Rescan,
}

/// What discovery knows of the task directories.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Staged (not started) task directories whose owner held its lock at
    /// the last look.
    staged: HashSet<TaskId>,
    /// When [`Discovery::sweep`] last looked at them.
    swept: Option<Instant>,
    /// Names already warned about (invalid ids), so each is said once.
    warned: HashSet<OsString>,
}

impl Discovery {
    /// Looks at every task directory (at start, and when events were lost).
    pub fn scan(&mut self, volume: &Volume, watch: &Watch, ready: &mut impl FnMut(TaskDir)) {
        // Listed from the volume root: a `tasks/` replaced by a link is
        // refused (and said once), never listed.
        let entries = match volume.beneath().dir(&volume.tasks_dir()) {
            Ok(dir) => dir.entries(),
            Err(e) => Err(e),
        };
        let entries = match entries {
            Ok(e) => e,
            Err(e) => {
                if self.warned.insert(OsString::from("/")) {
                    tracing::warn!("cannot read the task directories: {e}");
                }
                return;
            }
        };
        for (name, _) in entries {
            self.consider(volume, watch, &name, Look::Rescan, ready);
        }
    }

    /// Looks at the task directories `changes` names.
    pub fn update(
        &mut self,
        volume: &Volume,
        watch: &Watch,
        changes: Changes,
        ready: &mut impl FnMut(TaskDir),
    ) {
        if changes.rescan {
            return self.scan(volume, watch, ready);
        }
        let tasks = volume.tasks_dir();
        let mut looked: HashSet<OsString> = HashSet::new();
        for (dir, name) in changes.entries {
            let task = if dir == tasks {
                name
            } else if dir.parent() == Some(tasks.as_path()) {
                dir.file_name().map(OsStr::to_owned).unwrap_or_default()
            } else {
                continue;
            };
            if looked.insert(task.clone()) {
                self.consider(volume, watch, &task, Look::Full, ready);
            }
        }
    }

    /// Looks again at the staged task directories with an owner, at most
    /// every [`SWEEP_EVERY`]: their owner may have died since.
    pub fn sweep(&mut self, volume: &Volume, watch: &Watch, ready: &mut impl FnMut(TaskDir)) {
        if self.swept.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
            return;
        }
        self.swept = Some(Instant::now());
        let staged: Vec<TaskId> = self.staged.drain().collect();
        for id in staged {
            self.consider(volume, watch, OsStr::new(id.as_str()), Look::Full, ready);
        }
    }

    /// One look at `tasks/<name>`: watched from now on, handed to `ready`
    /// once it has a start (or close) flag, removed if its owner died
    /// while it was staged, forgotten once gone.
    fn consider(
        &mut self,
        volume: &Volume,
        watch: &Watch,
        name: &OsStr,
        look: Look,
        ready: &mut impl FnMut(TaskDir),
    ) {
        let Some(id) = self.task_id(volume, name) else {
            return;
        };
        let task = volume.task(&id);
        let beneath = volume.beneath();
        let known_staged = self.staged.remove(&id);
        if !beneath.is_dir(task.root()) {
            return;
        }
        // Armed before the look below: nothing lands unseen. Every look
        // arms it (the kernel keeps one watch per directory): a directory
        // removed and made again under the same name between two looks is
        // a new directory that needs its own watch.
        if let Err(e) = watch.add(task.root()) {
            tracing::debug!("{e}");
            return;
        }
        if beneath.exists(&task.start_flag()) || beneath.exists(&task.close_flag()) {
            return ready(task);
        }
        if look == Look::Rescan && known_staged {
            // Its owner is the sweep's to look at: a polling watch rescans
            // every tick, which must not cost a lock probe per directory.
            self.staged.insert(id);
            return;
        }
        match OwnerProbe::open(&task).map(|o| o.gone()) {
            Some(true) => {
                tracing::info!(task = %id, "the task's owner went away before it started; removing it");
                // Through descriptors: a link is removed, never followed.
                let _ = beneath.remove_all(task.root());
            }
            Some(false) => {
                self.staged.insert(id);
            }
            None => {}
        }
    }

    /// The task id `name` is, or `None` (a temporary, or not an id: warned
    /// about once).
    fn task_id(&mut self, volume: &Volume, name: &OsStr) -> Option<TaskId> {
        if name.is_empty() || is_hidden(name) {
            return None;
        }
        let why = match name.to_str().map(TaskId::new) {
            Some(Ok(id)) => return Some(id),
            Some(Err(e)) => e.to_string(),
            None => "not a UTF-8 task id".to_owned(),
        };
        let path = volume.tasks_dir().join(name);
        if self.warned.insert(name.to_owned()) && volume.beneath().is_dir(&path) {
            // Debug-quoted: a name is the other side's to choose, newlines too.
            tracing::warn!("skipping {path:?}: {why}");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidecar_core::owner::OwnerLock;
    use sidecar_core::wait::WatchConfig;

    /// A task directory removed and made again under the same name (an
    /// executor clearing a leftover of its own id) is a new directory: its
    /// start flag must still be an event.
    #[test]
    fn a_directory_made_again_under_the_same_name_is_watched_again() {
        let dir = tempfile::tempdir().unwrap();
        let volume = Volume::new(dir.path());
        let task = volume.task(&TaskId::new("again").unwrap());
        std::fs::create_dir_all(task.root()).unwrap();
        let watch = Watch::new(WatchConfig::default()).unwrap();
        watch.add(&volume.tasks_dir()).unwrap();
        watch.keep_journal();
        let mut d = Discovery::default();
        let mut ready = |_t: TaskDir| {};
        d.scan(&volume, &watch, &mut ready);
        std::fs::remove_dir_all(task.root()).unwrap();
        std::fs::create_dir_all(task.root()).unwrap();
        let changes = watch.take_changes();
        d.update(&volume, &watch, changes, &mut ready);
        std::fs::write(task.start_flag(), b"{}").unwrap();
        let seen = watch.take_changes();
        assert!(
            seen.entries.iter().any(|(d, _)| d == task.root()),
            "no event from the new directory: {seen:?}"
        );
    }

    /// A staged task whose owner dies is removed by the sweep (a released
    /// lock makes no event); rescans, which a polling watch makes every
    /// tick, leave a known-staged directory's owner to the sweep.
    #[test]
    fn the_sweep_removes_a_staged_task_whose_owner_died() {
        let dir = tempfile::tempdir().unwrap();
        let volume = Volume::new(dir.path());
        let task = volume.task(&TaskId::new("half").unwrap());
        std::fs::create_dir_all(task.input()).unwrap();
        let lock = OwnerLock::claim(&task).unwrap();
        let watch = Watch::new(WatchConfig::default()).unwrap();
        let mut d = Discovery::default();
        let mut started = Vec::new();
        let mut ready = |t: TaskDir| started.push(t);
        d.scan(&volume, &watch, &mut ready);
        d.sweep(&volume, &watch, &mut ready);
        assert!(task.root().is_dir(), "removed while its owner lived");
        drop(lock);
        d.scan(&volume, &watch, &mut ready);
        assert!(task.root().is_dir(), "a rescan probed a known owner");
        d.swept = None;
        d.sweep(&volume, &watch, &mut ready);
        assert!(!task.root().exists(), "the sweep missed the dead owner");
        assert!(started.is_empty());
    }
}
