//! Who holds a task, or the sidecar, on the executor side: `flock` locks on
//! the volume, which the kernel drops the moment their holder dies, however
//! it dies (a Python worker killed by Spark for a cancel, a speculative
//! loser, an executor killed). The sidecar sees that through the volume
//! alone, so it works from another container of the pod, where the
//! executor's processes are invisible.
//!
//! * **A task's owner**: the executor side holds an exclusive lock on
//!   `tasks/<id>/owner` from before its start flag until it closes the
//!   task ([`OwnerLock`]). When the lock is free while the task is
//!   unfinished, its owner is gone: the sidecar cancels the logic and
//!   reclaims the directory ([`OwnerProbe`]). A task without an `owner`
//!   file (an executor that does not take part) is judged by its flags and
//!   the lease only.
//! * **The sidecar's users**: every executor-side handle on a sidecar it
//!   launched holds a shared lock on `executor/sidecar.users`; starting,
//!   joining and stopping hold `executor/sidecar.lock`. A sidecar started
//!   with `--exit-on-orphan` exits as soon as it can take both exclusively
//!   ([`users_gone`]): nobody uses it, and nobody is about to.
//!
//! The executor side holds the owner file open for writing: when its
//! process dies, however it dies, the kernel closes the file, and that close
//! is an inotify event (`IN_CLOSE_WRITE`) in the task directory the sidecar
//! watches, so the sidecar looks at once rather than at its next tick.
//!
//! `flock` locks belong to open file descriptions: a process's locks go
//! with its last descriptor, and a `fork`ed child that keeps the descriptor
//! keeps the lock (the shim opens them close-on-exec, so an `exec`ed child
//! does not). They work across containers that share the volume's
//! filesystem (one kernel), not across machines (network filesystems).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::beneath::Beneath;
use crate::layout::{TaskDir, Volume};
use crate::safepath::PathError;

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OwnerError {
    #[error("cannot claim {}: {source}", .path.display())]
    Claim {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The way to the task's directory is refused (a link).
    #[error("cannot claim {}: {source}", .path.display())]
    Refused {
        path: PathBuf,
        #[source]
        source: PathError,
    },
}

/// One attempt at `op` on `f` (add `LOCK_NB` for a non-blocking one).
pub fn try_flock(f: &File, op: i32) -> bool {
    loop {
        // SAFETY: flock on a descriptor `f` owns.
        let r = unsafe { libc::flock(f.as_raw_fd(), op) };
        if r == 0 {
            return true;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

/// Whether nobody holds `f`'s lock: an exclusive lock can be had (and is
/// let go again at once).
fn free(f: &File) -> bool {
    if try_flock(f, libc::LOCK_EX | libc::LOCK_NB) {
        try_flock(f, libc::LOCK_UN);
        true
    } else {
        false
    }
}

/// Opens a lock file for reading without following a link or blocking on
/// a FIFO; `None` if it is not there or not a regular file.
fn open_existing(path: &Path) -> Option<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    f.metadata().ok()?.file_type().is_file().then_some(f)
}

/// The executor side's hold on a task: an exclusive lock on its `owner`
/// file, from before the start flag until dropped.
#[derive(Debug)]
pub struct OwnerLock {
    _file: File,
}

impl OwnerLock {
    /// Claims `task`. The lock is taken on a dot-temporary that is then
    /// renamed to `owner`, so the name never appears unlocked (a sidecar
    /// looking at that moment would take the task for abandoned).
    pub fn claim(task: &TaskDir) -> Result<Self, OwnerError> {
        let path = task.owner();
        let claim_err = |source| OwnerError::Claim {
            path: path.clone(),
            source,
        };
        let tmp = crate::atomic::temp_path(&path)
            .and_then(|t| t.file_name().map(ToOwned::to_owned))
            .ok_or_else(|| claim_err(io::ErrorKind::InvalidInput.into()))?;
        // In the task directory as resolved from the volume root: never
        // through a link.
        let (dir, name) = task
            .beneath()
            .parent(&path)
            .map_err(|e| OwnerError::Refused {
                path: path.clone(),
                source: e,
            })?;
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
        let file = dir
            .open_file(&tmp, flags, 0o644)
            .map_err(|e| OwnerError::Refused {
                path: path.clone(),
                source: e,
            })?;
        let locked =
            try_flock(&file, libc::LOCK_EX | libc::LOCK_NB) && dir.rename(&tmp, name).is_ok();
        if !locked {
            let _ = dir.unlink(&tmp);
            return Err(claim_err(io::Error::last_os_error()));
        }
        Ok(Self { _file: file })
    }
}

/// The sidecar's view of a task's owner.
#[derive(Debug)]
pub struct OwnerProbe {
    file: File,
}

impl OwnerProbe {
    /// The probe of `task`'s owner; `None` when the task has none (its
    /// executor does not take part).
    pub fn open(task: &TaskDir) -> Option<Self> {
        Self::open_beneath(&task.beneath(), &task.owner())
    }

    /// The probe of the owner lock at `path` on the volume `root`, reached
    /// without following a link, if there is one.
    pub fn open_beneath(root: &Beneath, path: &Path) -> Option<Self> {
        root.open_regular(path).ok().map(|file| Self { file })
    }

    /// The probe of the owner lock at `path`, if there is one.
    pub fn open_path(path: &Path) -> Option<Self> {
        open_existing(path).map(|file| Self { file })
    }

    /// Whether the owner is gone: nobody holds its lock any more.
    pub fn gone(&self) -> bool {
        free(&self.file)
    }
}

/// Whether every executor-side user of the sidecar on `volume` is gone and
/// none is starting one: both `executor/sidecar.lock` and
/// `executor/sidecar.users` can be locked exclusively. `false` when the
/// volume has no users file (its sidecar was not launched by a shim).
pub fn users_gone(volume: &Volume) -> bool {
    let (Some(start), Some(users)) = (
        open_existing(&volume.start_lock()),
        open_existing(&volume.users_lock()),
    ) else {
        return false;
    };
    if !try_flock(&start, libc::LOCK_EX | libc::LOCK_NB) {
        // Someone is starting, joining or stopping: not now.
        return false;
    }
    let gone = free(&users);
    try_flock(&start, libc::LOCK_UN);
    gone
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::TaskId;

    #[test]
    fn an_owner_is_gone_when_its_lock_is() {
        let dir = tempfile::tempdir().unwrap();
        let task = Volume::new(dir.path()).task(&TaskId::new("p0-a0").unwrap());
        std::fs::create_dir_all(task.root()).unwrap();
        assert!(OwnerProbe::open(&task).is_none(), "no owner file, no probe");
        let lock = OwnerLock::claim(&task).unwrap();
        let probe = OwnerProbe::open(&task).unwrap();
        assert!(!probe.gone());
        assert!(!probe.gone(), "looking does not take the lock");
        drop(lock);
        assert!(probe.gone());
        // Only `owner` is left: the temporary was renamed.
        let names: Vec<_> = std::fs::read_dir(task.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["owner"]);
    }

    #[test]
    fn an_owner_dies_with_its_process() {
        let dir = tempfile::tempdir().unwrap();
        let task = Volume::new(dir.path()).task(&TaskId::new("p1-a0").unwrap());
        std::fs::create_dir_all(task.root()).unwrap();
        drop(OwnerLock::claim(&task).unwrap());
        let probe = OwnerProbe::open(&task).unwrap();
        // Another process holds the owner lock (flock(1), util-linux, on a
        // descriptor of the shell that then becomes `sleep`) and is killed:
        // the lock goes with it.
        let mut holder = std::process::Command::new("sh")
            .args(["-c", r#"exec 9<"$0"; flock -x 9; exec sleep 60"#])
            .arg(task.owner())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while probe.gone() {
            assert!(
                std::time::Instant::now() < deadline,
                "flock never took the lock"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert!(probe.gone());
    }

    #[test]
    fn users_are_gone_when_nobody_holds_or_takes_the_locks() {
        let dir = tempfile::tempdir().unwrap();
        let vol = Volume::new(dir.path());
        assert!(!users_gone(&vol), "no users file: not ours to judge");
        std::fs::create_dir_all(vol.executor_dir()).unwrap();
        let open = |p: PathBuf| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
                .unwrap()
        };
        let start = open(vol.start_lock());
        let user = open(vol.users_lock());
        assert!(try_flock(&user, libc::LOCK_SH | libc::LOCK_NB));
        assert!(!users_gone(&vol), "a user holds it");
        drop(user);
        assert!(users_gone(&vol));
        assert!(try_flock(&start, libc::LOCK_EX | libc::LOCK_NB));
        assert!(!users_gone(&vol), "someone is starting a sidecar");
    }
}
