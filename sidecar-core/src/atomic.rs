//! Atomic writes: every flag and staged file is written to a dot-prefixed
//! temporary in the same directory and renamed into place, so no reader ever
//! sees half of it. Readers skip dot-files ([`crate::layout::is_hidden`]).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::beneath::Beneath;
use crate::safepath::PathError;

/// Whether a write is flushed to stable storage before the rename.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Rename only: atomic against concurrent readers, which is what the
    /// protocol needs on a volume that does not outlive the pod.
    #[default]
    Visible,
    /// `fsync` the file before and the directory after the rename: atomic
    /// across a machine crash too.
    Durable,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AtomicError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: it has no parent directory or file name")]
    NoParent { path: PathBuf },
    /// The way to the file is refused: a link, or not a directory.
    #[error("cannot write {path}: {source}")]
    Refused {
        path: PathBuf,
        #[source]
        source: PathError,
    },
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The temporary used for `path`: `.<name>.<pid>.<n>.tmp` beside it.
pub fn temp_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Some(path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id())))
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8], durability: Durability) -> Result<(), AtomicError> {
    write_atomic_with(path, durability, |f| f.write_all(bytes))
}

/// Writes to `path` atomically through `fill`, which gets the temporary.
/// On any error the temporary is removed and `path` is untouched.
pub fn write_atomic_with(
    path: &Path,
    durability: Durability,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<(), AtomicError> {
    let tmp = temp_path(path).ok_or_else(|| AtomicError::NoParent {
        path: path.to_owned(),
    })?;
    let err = |source| AtomicError::Write {
        path: path.to_owned(),
        source,
    };
    let result = (|| {
        // O_EXCL|O_NOFOLLOW: never write through a link planted at our name.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        fill(&mut f)?;
        if durability == Durability::Durable {
            f.sync_all()?;
        }
        drop(f);
        std::fs::rename(&tmp, path)?;
        if durability == Durability::Durable {
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// [`write_atomic`] on the volume `root`: the file's directory is resolved
/// from the root without following a link in any component
/// ([`crate::beneath`]), so a task directory swapped for a link is refused,
/// never written through.
pub fn write_atomic_beneath(
    root: &Beneath,
    path: &Path,
    bytes: &[u8],
    durability: Durability,
) -> Result<(), AtomicError> {
    write_atomic_beneath_with(root, path, durability, |f| f.write_all(bytes))
}

/// [`write_atomic_with`] on the volume `root`, as [`write_atomic_beneath`].
pub fn write_atomic_beneath_with(
    root: &Beneath,
    path: &Path,
    durability: Durability,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<(), AtomicError> {
    let refused = |source| AtomicError::Refused {
        path: path.to_owned(),
        source,
    };
    let (dir, name) = root.parent(path).map_err(refused)?;
    let tmp = temp_path(path)
        .and_then(|t| t.file_name().map(ToOwned::to_owned))
        .ok_or_else(|| AtomicError::NoParent {
            path: path.to_owned(),
        })?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    let mut f = dir.open_file(&tmp, flags, 0o644).map_err(refused)?;
    let result = (|| {
        fill(&mut f)?;
        if durability == Durability::Durable {
            f.sync_all()?;
        }
        drop(f);
        dir.rename(&tmp, name)?;
        if durability == Durability::Durable {
            dir.sync()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = dir.unlink(&tmp);
    }
    result.map_err(|source| AtomicError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Creates an empty flag atomically (the `touch` of the protocol).
pub fn touch_atomic(path: &Path) -> Result<(), AtomicError> {
    write_atomic(path, b"", Durability::Visible)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("done_flag");
        write_atomic(&p, b"one", Durability::Visible).unwrap();
        write_atomic(&p, b"two", Durability::Durable).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("done_flag")]);
    }

    #[test]
    fn failed_fill_leaves_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"keep", Durability::Visible).unwrap();
        let err = write_atomic_with(&p, Durability::Visible, |_| {
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk full"));
        assert!(err.to_string().contains(&p.display().to_string()));
        assert_eq!(std::fs::read(&p).unwrap(), b"keep");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn missing_dir_is_an_error_naming_the_path() {
        let err = write_atomic(Path::new("/nonexistent-dir/x"), b"", Durability::Visible)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent-dir/x"), "{err}");
    }
}
