//! The executor side's locks on the volume, and the owner record.
//!
//! * `executor/sidecar.lock` (exclusive while held): serialises starting,
//!   joining and stopping the sidecar, across threads and processes.
//! * `executor/sidecar.users` (shared by every handle for its life): the
//!   last handle to go is the one whose exclusive upgrade succeeds; and a
//!   sidecar started with `--exit-on-orphan` exits as soon as nobody holds
//!   it ([`sidecar_core::owner::users_gone`]), which is how a dead
//!   executor's sidecar goes within a moment, not a lease timeout later.
//! * `executor/sidecar.json`: how to stop the sidecar (its pid, or its
//!   container), for whichever handle turns out to be its last user.
//!
//! `flock` locks belong to open file descriptions, so two handles of one
//! process are two users, exactly like two processes; and the kernel drops
//! them when a process dies, however it dies.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sidecar_core::atomic::{self, Durability};
use sidecar_core::record::read_flag_beneath;
use sidecar_core::Volume;

use crate::error::ShimError;

const OWNER_RECORD: &str = "sidecar.json";

/// `executor/sidecar.json`: how to stop the sidecar.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct OwnerRecord {
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cli: Option<String>,
}

impl OwnerRecord {
    pub fn read(vol: &Volume) -> Option<Self> {
        let path = vol.executor_dir().join(OWNER_RECORD);
        // From the volume root, never through a link: the record names the
        // processes this side may stop.
        let bytes = read_flag_beneath(&vol.beneath(), &path, "owner record").ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn write(&self, vol: &Volume) -> Result<(), ShimError> {
        let path = vol.executor_dir().join(OWNER_RECORD);
        let bytes = serde_json::to_vec(self).map_err(|e| ShimError::Protocol {
            path: path.clone(),
            message: e.to_string(),
        })?;
        atomic::write_atomic_beneath(&vol.beneath(), &path, &bytes, Durability::Visible)?;
        Ok(())
    }

    pub fn remove(vol: &Volume) {
        let _ = std::fs::remove_file(vol.executor_dir().join(OWNER_RECORD));
    }
}

fn open_lock_file(path: &Path) -> Result<File, ShimError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(ShimError::io(path))
}

/// Opens `path` and locks it (`LOCK_EX` or `LOCK_SH`), waiting up to `wait`.
pub(super) fn lock_file(path: &Path, op: i32, wait: Duration) -> Result<File, ShimError> {
    let f = open_lock_file(path)?;
    flock(&f, op, wait, path)?;
    Ok(f)
}

/// Opens `path` without locking it.
pub(super) fn open_unlocked(path: &Path) -> Result<File, ShimError> {
    open_lock_file(path)
}

/// Takes `op` on `f`, retrying for up to `wait`.
pub(super) fn flock(f: &File, op: i32, wait: Duration, path: &Path) -> Result<(), ShimError> {
    let deadline = sidecar_core::time::deadline_after(Instant::now(), wait);
    loop {
        if try_flock(f, op | libc::LOCK_NB) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ShimError::Io {
                path: path.to_owned(),
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "could not lock it within {:.1}s (another sidecar start is stuck?)",
                        wait.as_secs_f64()
                    ),
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(super) use sidecar_core::owner::try_flock;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_last_user_is_the_one_whose_upgrade_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(sidecar_core::layout::USERS_LOCK);
        let a = lock_file(&path, libc::LOCK_SH, Duration::from_secs(1)).unwrap();
        let b = lock_file(&path, libc::LOCK_SH, Duration::from_secs(1)).unwrap();
        assert!(
            !try_flock(&a, libc::LOCK_EX | libc::LOCK_NB),
            "b still uses it"
        );
        drop(b);
        assert!(try_flock(&a, libc::LOCK_EX | libc::LOCK_NB));
    }

    #[test]
    fn the_owner_record_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let vol = Volume::new(dir.path());
        std::fs::create_dir_all(vol.executor_dir()).unwrap();
        assert_eq!(OwnerRecord::read(&vol), None);
        let r = OwnerRecord {
            provider: "process".into(),
            pid: Some(7),
            ..Default::default()
        };
        r.write(&vol).unwrap();
        assert_eq!(OwnerRecord::read(&vol), Some(r));
        OwnerRecord::remove(&vol);
        assert_eq!(OwnerRecord::read(&vol), None);
    }
}
