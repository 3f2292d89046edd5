//! Path safety: the executor treats everything on the volume as hostile.
//!
//! Relative paths named by the other side (output manifests, input file
//! lists) are validated lexically ([`validate_relative`]) and then opened one
//! component at a time with `O_NOFOLLOW` ([`open_beneath`]), so neither `..`,
//! an absolute path, a symlink (anywhere in the path) nor a hard link to a
//! file outside the volume can make this side read outside it.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// Why a path was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("refused path {path:?}: {why}")]
    Invalid { path: String, why: &'static str },
    #[error("refused {path}: it is a symbolic link (links are never followed)")]
    Symlink { path: PathBuf },
    #[error("refused {path}: it is a {kind}, not a regular file")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("refused {path}: it has {links} hard links (a link to a file outside the volume?)")]
    HardLinked { path: PathBuf, links: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Checks that `rel` is a plain relative path: not empty, not absolute, no
/// `..`, no `.` components, no NUL, no empty components, no dot-file names.
pub fn validate_relative(rel: &str) -> Result<&Path, PathError> {
    let invalid = |why| PathError::Invalid {
        path: rel.to_owned(),
        why,
    };
    if rel.is_empty() {
        return Err(invalid("empty"));
    }
    if rel.len() > 4096 {
        return Err(invalid("longer than 4096 bytes"));
    }
    if rel.contains('\0') {
        return Err(invalid("contains NUL"));
    }
    if rel.starts_with('/') {
        return Err(invalid("absolute paths are not allowed"));
    }
    if rel.split('/').any(str::is_empty) {
        return Err(invalid("empty path component"));
    }
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(n) if n.as_bytes().first() == Some(&b'.') => {
                return Err(invalid("names starting with '.' are reserved"))
            }
            Component::Normal(_) => {}
            Component::ParentDir => return Err(invalid("'..' is not allowed")),
            Component::CurDir => return Err(invalid("'.' components are not allowed")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid("absolute paths are not allowed"))
            }
        }
    }
    Ok(Path::new(rel))
}

fn kind_of(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => "directory",
        libc::S_IFIFO => "FIFO",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFLNK => "symbolic link",
        _ => "special file",
    }
}

fn openat(dir: Option<&OwnedFd>, name: &Path, flags: i32) -> std::io::Result<OwnedFd> {
    let c = std::ffi::CString::new(name.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `c` is a valid NUL-terminated string and `dirfd` is either
    // AT_FDCWD or an open descriptor we own for the duration of the call.
    let fd = unsafe { libc::openat(dirfd, c.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        // SAFETY: openat returned a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// Opens `base/rel` for reading without following any symlink below `base`,
/// and only if it is a regular file with a single link. `base` itself is
/// trusted (it is the executor's own path to the volume).
pub fn open_beneath(base: &Path, rel: &str) -> Result<File, PathError> {
    let rel_path = validate_relative(rel)?;
    let full = base.join(rel_path);
    let io = |source: std::io::Error, path: &Path| {
        if source.raw_os_error() == Some(libc::ELOOP) {
            PathError::Symlink {
                path: path.to_owned(),
            }
        } else {
            PathError::Io {
                path: path.to_owned(),
                source,
            }
        }
    };
    let mut dir =
        openat(None, base, libc::O_RDONLY | libc::O_DIRECTORY).map_err(|e| io(e, base))?;
    let comps: Vec<_> = rel_path.components().collect();
    let mut so_far = base.to_path_buf();
    for (i, c) in comps.iter().enumerate() {
        let name = Path::new(c.as_os_str());
        so_far.push(name);
        let last = i + 1 == comps.len();
        let flags = if last {
            // O_NONBLOCK so that a FIFO planted here cannot block the open.
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK
        } else {
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_DIRECTORY
        };
        let fd = openat(Some(&dir), name, flags).map_err(|e| {
            let is_link = std::fs::symlink_metadata(&so_far)
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false);
            match e.raw_os_error() {
                _ if is_link => PathError::Symlink {
                    path: so_far.clone(),
                },
                Some(libc::ENOTDIR) => PathError::NotRegular {
                    path: so_far.clone(),
                    kind: "file where a directory was expected",
                },
                _ => io(e, &so_far),
            }
        })?;
        if last {
            let file = File::from(fd);
            let meta = file.metadata().map_err(|e| io(e, &full))?;
            if !meta.file_type().is_file() {
                return Err(PathError::NotRegular {
                    path: full,
                    kind: kind_of(meta.mode()),
                });
            }
            if meta.nlink() != 1 {
                return Err(PathError::HardLinked {
                    path: full,
                    links: meta.nlink(),
                });
            }
            // Back to blocking reads.
            // SAFETY: fcntl on a descriptor we own.
            unsafe {
                let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
            }
            return Ok(file);
        }
        dir = fd;
    }
    Err(PathError::Invalid {
        path: rel.to_owned(),
        why: "empty",
    })
}

/// Checks that `path` is a real directory, not a symlink to one.
pub fn ensure_real_dir(path: &Path) -> Result<(), PathError> {
    let meta = std::fs::symlink_metadata(path).map_err(|source| PathError::Io {
        path: path.to_owned(),
        source,
    })?;
    if meta.file_type().is_symlink() {
        return Err(PathError::Symlink {
            path: path.to_owned(),
        });
    }
    if !meta.is_dir() {
        return Err(PathError::NotRegular {
            path: path.to_owned(),
            kind: "file where a directory was expected",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn lexical_refusals_name_the_path() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            ".hidden",
            "a/.tmp",
            "a\0b",
        ] {
            let err = validate_relative(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
        }
        assert!(validate_relative("part.csv").is_ok());
        assert!(validate_relative("a/b/part.csv").is_ok());
    }

    #[test]
    fn never_follows_links_or_reads_specials() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("output");
        std::fs::create_dir(&base).unwrap();
        std::fs::write(base.join("ok"), b"data").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", base.join("link")).unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret"), b"s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), base.join("dirlink")).unwrap();
        std::fs::hard_link(dir.path().join("outside/secret"), base.join("hard")).unwrap();
        std::fs::create_dir(base.join("sub")).unwrap();
        nix::unistd::mkfifo(
            &base.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();

        let mut s = String::new();
        open_beneath(&base, "ok")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "data");

        let e = open_beneath(&base, "link").unwrap_err();
        assert!(matches!(e, PathError::Symlink { .. }), "{e}");
        let e = open_beneath(&base, "dirlink/secret").unwrap_err();
        assert!(matches!(e, PathError::Symlink { .. }), "{e}");
        let e = open_beneath(&base, "hard").unwrap_err();
        assert!(matches!(e, PathError::HardLinked { links: 2, .. }), "{e}");
        let e = open_beneath(&base, "sub").unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        let e = open_beneath(&base, "fifo").unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        let e = open_beneath(&base, "ok/x").unwrap_err();
        assert!(e.to_string().contains("ok"), "{e}");
        let e = open_beneath(&base, "missing").unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
