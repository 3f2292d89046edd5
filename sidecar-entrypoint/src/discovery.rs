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

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::time::{Duration, Instant};

use sidecar_core::layout::{is_hidden, TaskDir, Volume};
use sidecar_core::owner::OwnerProbe;
use sidecar_core::wait::{Changes, Watch};
use sidecar_core::TaskId;

/// What discovery knows of the task directories.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Task directories with a watch of their own.
    watched: HashSet<TaskId>,
    /// Names already warned about (invalid ids), so each is said once.
    warned: HashSet<OsString>,
    /// When each directory still being staged has its owner probed next.
    probes: HashMap<TaskId, Backoff>,
}

/// How often a staged directory's owner is probed: at first at every
/// look, then less and less often, up to once a [`Backoff::MAX`]. A
/// directory that never gets its start flag (an executor that died between
/// `mkdir` and its lock, or a polling watch) then costs a stat or two per
/// look, not an open and a lock test at every tick forever. Its start flag
/// is still looked for at every look: only the removal of an abandoned
/// directory waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    next: Instant,
    interval: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(20);
    pub const MAX: Duration = Duration::from_secs(1);

    pub fn new(now: Instant) -> Self {
        Self {
            next: now,
            interval: Self::FIRST,
        }
    }

    /// Whether a probe is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// A probe found nothing: the next one waits twice as long.
    pub fn missed(&mut self, now: Instant) {
        self.next = sidecar_core::time::deadline_after(now, self.interval);
        self.interval = (self.interval * 2).min(Self::MAX);
    }
}

impl Discovery {
    /// Looks at every task directory (at start, and when events were lost).
    pub fn scan(&mut self, volume: &Volume, watch: &Watch, ready: &mut impl FnMut(TaskDir)) {
        let dir = volume.tasks_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                if self.warned.insert(OsString::from("/")) {
                    tracing::warn!("cannot read {}: {e}", dir.display());
                }
                return;
            }
        };
        for entry in entries.flatten() {
            self.consider(volume, watch, &entry.file_name(), true, ready);
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
                self.consider(volume, watch, &task, false, ready);
            }
        }
    }

    /// One look at `tasks/<name>`: watched from now on, handed to `ready`
    /// once it has a start (or close) flag, removed if its owner died
    /// while it was staged, forgotten once gone. A look of a whole-`tasks/`
    /// scan (`scan`) probes the owner only when its [`Backoff`] is due; a
    /// look at an event always does.
    fn consider(
        &mut self,
        volume: &Volume,
        watch: &Watch,
        name: &OsStr,
        scan: bool,
        ready: &mut impl FnMut(TaskDir),
    ) {
        let Some(id) = self.task_id(volume, name) else {
            return;
        };
        let task = volume.task(&id);
        if !is_real_dir(task.root()) {
            self.watched.remove(&id);
            self.probes.remove(&id);
            return;
        }
        if !self.watched.contains(&id) {
            // Armed before the look below: nothing lands unseen.
            if let Err(e) = watch.add(task.root()) {
                tracing::debug!("{e}");
                return;
            }
            self.watched.insert(id.clone());
        }
        if exists(&task.start_flag()) || exists(&task.close_flag()) {
            self.probes.remove(&id);
            ready(task);
            return;
        }
        let now = Instant::now();
        let probe = self.probes.entry(id.clone()).or_insert(Backoff::new(now));
        if scan && !probe.due(now) {
            return;
        }
        if OwnerProbe::open(&task).is_some_and(|o| o.gone()) {
            tracing::info!(task = %id, "the task's owner went away before it started; removing it");
            let _ = std::fs::remove_dir_all(task.root());
            self.watched.remove(&id);
            self.probes.remove(&id);
        } else {
            probe.missed(now);
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
        if self.warned.insert(name.to_owned()) && is_real_dir(&volume.tasks_dir().join(name)) {
            // Debug-quoted: a name is the other side's to choose, newlines too.
            tracing::warn!("skipping {:?}: {why}", volume.tasks_dir().join(name));
        }
        None
    }
}

/// A directory, not a link to one.
fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_probes_of_a_staged_directory_back_off_to_once_a_second() {
        let t0 = Instant::now();
        let mut b = Backoff::new(t0);
        assert!(b.due(t0));
        let mut now = t0;
        let mut gaps = Vec::new();
        for _ in 0..10 {
            b.missed(now);
            let next = b.next;
            assert!(!b.due(next - Duration::from_millis(1)));
            assert!(b.due(next));
            gaps.push(next - now);
            now = next;
        }
        assert_eq!(gaps[0], Backoff::FIRST);
        assert_eq!(gaps[1], Backoff::FIRST * 2);
        assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
        assert_eq!(*gaps.last().unwrap(), Backoff::MAX);
    }
}
