//! The one path resolver both sides use on the volume: every path is
//! resolved from the volume root, one component at a time, with
//! `O_NOFOLLOW|O_DIRECTORY`, through directory descriptors. A symbolic link
//! in any component (a task directory, `output/`, a nested directory, a
//! flag) is an error naming the path and saying it is a link; it is never
//! followed, so nothing outside the volume is read, listed, written or
//! removed through it.
//!
//! The volume root itself is trusted: it is the path this side was given
//! (`--volume`), not something the other side chose.
//!
//! Each operation resolves afresh from the root. A component swapped for a
//! link after it was opened changes nothing for the holder of the
//! descriptor: the walk continues in the directory it opened.
//!
//! Where the kernel has `openat2(2)` (Linux 5.6+), a directory is first
//! opened in one call with `RESOLVE_NO_SYMLINKS` on its whole path (the
//! kernel refuses a link in any component, the root's own included); on any
//! failure the walk runs, and says exactly which component is what.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::safepath::PathError;

/// What a directory entry is, seen without following it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    /// A socket or a device.
    Special,
}

impl Kind {
    fn of(mode: u32) -> Self {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            _ => Kind::Special,
        }
    }
}

/// The volume, as seen from its root: resolves paths under it without
/// following links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Beneath {
    root: PathBuf,
}

impl Beneath {
    /// Resolves paths under `root` (trusted: the volume this side was given).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The components of `path` below the root; `path` is absolute under
    /// the root, or relative to it.
    fn below<'a>(&self, path: &'a Path) -> Result<Vec<&'a OsStr>, PathError> {
        let rel = if path.is_absolute() {
            path.strip_prefix(&self.root)
                .map_err(|_| PathError::Invalid {
                    path: path.display().to_string(),
                    why: "not under the volume root",
                })?
        } else {
            path
        };
        rel.components()
            .map(|c| match c {
                Component::Normal(n) => Ok(n),
                _ => Err(PathError::Invalid {
                    path: path.display().to_string(),
                    why: "'..', '.' or a root inside a volume path",
                }),
            })
            .collect()
    }

    /// The directory at `path` (the root itself, or below it).
    pub fn dir(&self, path: &Path) -> Result<Dir, PathError> {
        self.walk(&self.below(path)?)
    }

    /// The directory holding `path`, and `path`'s name in it.
    pub fn parent<'a>(&self, path: &'a Path) -> Result<(Dir, &'a OsStr), PathError> {
        let mut names = self.below(path)?;
        let Some(name) = names.pop() else {
            return Err(PathError::Invalid {
                path: path.display().to_string(),
                why: "the volume root has no parent on the volume",
            });
        };
        Ok((self.walk(&names)?, name))
    }

    /// The directory `names` below the root: in one `openat2` call where
    /// the kernel can, else (and on any failure, to name the component
    /// that is wrong) one component at a time.
    fn walk(&self, names: &[&OsStr]) -> Result<Dir, PathError> {
        let path = names.iter().fold(self.root.clone(), |p, n| p.join(n));
        if !names.is_empty() {
            if let Some(fd) = open_no_symlinks(&path, libc::O_RDONLY | libc::O_DIRECTORY) {
                return Ok(Dir { fd, path });
            }
        }
        let mut dir = Dir::open_root(&self.root)?;
        for name in names {
            dir = dir.open_dir(name)?;
        }
        Ok(dir)
    }

    /// Opens the regular file at `path` for reading (in one `openat2`
    /// call where the kernel can, as [`Beneath::dir`]).
    pub fn open_regular(&self, path: &Path) -> Result<File, PathError> {
        let names = self.below(path)?;
        if !names.is_empty() {
            let full = names.iter().fold(self.root.clone(), |p, n| p.join(n));
            if let Some(fd) = open_no_symlinks(&full, libc::O_RDONLY | libc::O_NONBLOCK) {
                return regular(File::from(fd), full);
            }
        }
        let (dir, name) = self.parent(path)?;
        dir.open_regular(name)
    }

    /// Whether something (a dangling link too) is at `path`, reached
    /// without following a link; `false` if the way there has one.
    pub fn exists(&self, path: &Path) -> bool {
        self.kind(path).is_ok_and(|k| k.is_some())
    }

    /// Whether `path` is a real directory, reached without any link.
    pub fn is_dir(&self, path: &Path) -> bool {
        self.kind(path).is_ok_and(|k| k == Some(Kind::Dir))
    }

    /// What is at `path` (`None`: nothing), without following it.
    pub fn kind(&self, path: &Path) -> Result<Option<Kind>, PathError> {
        match self.parent(path) {
            Ok((dir, name)) => dir.kind(name),
            Err(PathError::Invalid { .. }) if self.below(path).is_ok_and(|v| v.is_empty()) => {
                Ok(Some(Kind::Dir))
            }
            Err(e) => Err(e),
        }
    }

    /// Removes `path` and everything below it; a link is removed, never
    /// followed. Nothing there is not an error.
    pub fn remove_all(&self, path: &Path) -> Result<(), PathError> {
        match self.parent(path) {
            Ok((dir, name)) => dir.remove_all(name),
            Err(PathError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// An open directory on the volume, and the path it was reached by.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `openat(2)`, always with `O_CLOEXEC`.
fn openat(dir: &impl AsFd, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    let dirfd = dir.as_fd().as_raw_fd();
    // SAFETY: `c` is NUL-terminated and `dirfd` is open for the call.
    let fd = unsafe { libc::openat(dirfd, c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// `file` (opened at `path` without blocking) if it is a regular file, back
/// in blocking mode; else what it is, named.
fn regular(file: File, path: PathBuf) -> Result<File, PathError> {
    let meta = file.metadata().map_err(|source| PathError::Io {
        path: path.clone(),
        source,
    })?;
    if !meta.file_type().is_file() {
        let kind = kind_name(Kind::of(meta.mode()), "file");
        return Err(PathError::NotRegular { path, kind });
    }
    // Back to blocking reads.
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
    Ok(file)
}

/// Whether `openat2(2)` is worth trying: not on kernels before 5.6, nor
/// where a seccomp profile refuses it (learnt once, then not asked again).
static OPENAT2: AtomicBool = AtomicBool::new(true);

/// `path` opened with `flags` in one call that refuses a symbolic link in
/// any component (`RESOLVE_NO_SYMLINKS`); `None` on any failure.
fn open_no_symlinks(path: &Path, flags: i32) -> Option<OwnedFd> {
    if !OPENAT2.load(Ordering::Relaxed) {
        return None;
    }
    let c = cstr(path.as_os_str()).ok()?;
    // SAFETY: an all-zero open_how is a valid value of the plain C struct.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: `c` is NUL-terminated and `how` lives for the call, whose
    // size is passed with it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let errno = io::Error::last_os_error().raw_os_error();
        if matches!(errno, Some(libc::ENOSYS | libc::EPERM | libc::E2BIG)) {
            OPENAT2.store(false, Ordering::Relaxed);
        }
        return None;
    }
    let fd = i32::try_from(fd).ok()?;
    // SAFETY: a fresh descriptor nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Dir {
    /// The trusted root, following whatever its own path has.
    fn open_root(root: &Path) -> Result<Self, PathError> {
        let fd = nix::fcntl::open(
            root,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| PathError::Io {
            path: root.to_owned(),
            source: e.into(),
        })?;
        Ok(Self {
            fd,
            path: root.to_owned(),
        })
    }

    /// The path this directory was reached by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Turns a failed open of `name` into the error a user reads: a link
    /// is named as one, whatever errno the kernel chose.
    fn refused(&self, name: &OsStr, e: io::Error, want: &'static str) -> PathError {
        let path = self.path.join(name);
        match self.kind(name) {
            Ok(Some(Kind::Symlink)) => PathError::Symlink { path },
            Ok(Some(k)) if e.raw_os_error() == Some(libc::ENOTDIR) => PathError::NotRegular {
                path,
                kind: kind_name(k, want),
            },
            _ => PathError::Io { path, source: e },
        }
    }

    /// The directory `name` in this one, never through a link.
    pub fn open_dir(&self, name: &OsStr) -> Result<Dir, PathError> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let fd = openat(&self.fd, name, flags, 0).map_err(|e| self.refused(name, e, "dir"))?;
        Ok(Dir {
            fd,
            path: self.path.join(name),
        })
    }

    /// Opens `name` with `flags` (`O_NOFOLLOW` always added) and `mode`.
    pub fn open_file(&self, name: &OsStr, flags: i32, mode: u32) -> Result<File, PathError> {
        let fd = openat(&self.fd, name, flags | libc::O_NOFOLLOW, mode)
            .map_err(|e| self.refused(name, e, "file"))?;
        Ok(File::from(fd))
    }

    /// Opens `name` for reading if it is a regular file: opened without
    /// blocking (a FIFO planted there cannot hang the open), then checked.
    pub fn open_regular(&self, name: &OsStr) -> Result<File, PathError> {
        let file = self.open_file(name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
        regular(file, self.path.join(name))
    }

    /// What `name` is, without following it (`None`: nothing there).
    pub fn kind(&self, name: &OsStr) -> Result<Option<Kind>, PathError> {
        let flags = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
        match nix::sys::stat::fstatat(&self.fd, name, flags) {
            Ok(st) => Ok(Some(Kind::of(st.st_mode))),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(PathError::Io {
                path: self.path.join(name),
                source: e.into(),
            }),
        }
    }

    /// The names in this directory (dot-files included), sorted, each with
    /// what it is, seen without following it.
    pub fn entries(&self) -> Result<Vec<(OsString, Kind)>, PathError> {
        let io_err = |e: nix::errno::Errno| PathError::Io {
            path: self.path.clone(),
            source: e.into(),
        };
        let flags = nix::fcntl::OFlag::O_RDONLY
            | nix::fcntl::OFlag::O_DIRECTORY
            | nix::fcntl::OFlag::O_CLOEXEC;
        let mut list = nix::dir::Dir::openat(&self.fd, ".", flags, nix::sys::stat::Mode::empty())
            .map_err(io_err)?;
        let mut names = Vec::new();
        for entry in list.iter() {
            let entry = entry.map_err(io_err)?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name != "." && name != ".." {
                names.push(name.to_owned());
            }
        }
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            // Gone since it was listed: not an entry any more.
            if let Some(kind) = self.kind(&name)? {
                out.push((name, kind));
            }
        }
        Ok(out)
    }

    /// Creates the directory `name` with exactly `mode` (whatever the
    /// umask); an existing directory is an `AlreadyExists` error.
    pub fn mkdir(&self, name: &OsStr, mode: u32) -> Result<Dir, PathError> {
        let path = self.path.join(name);
        let m = nix::sys::stat::Mode::from_bits_truncate(mode);
        nix::sys::stat::mkdirat(&self.fd, name, m).map_err(|e| PathError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        let dir = self.open_dir(name)?;
        nix::sys::stat::fchmod(&dir.fd, m).map_err(|e| PathError::Io {
            path,
            source: e.into(),
        })?;
        Ok(dir)
    }

    /// Renames `from` to `to`, both in this directory.
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        nix::fcntl::renameat(&self.fd, from, &self.fd, to).map_err(io::Error::from)
    }

    /// Removes the entry `name` (a file or a link: the link itself).
    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        let flag = nix::unistd::UnlinkatFlags::NoRemoveDir;
        nix::unistd::unlinkat(&self.fd, name, flag).map_err(io::Error::from)
    }

    /// Flushes the directory itself (after a rename into it).
    pub fn sync(&self) -> io::Result<()> {
        nix::unistd::fsync(&self.fd).map_err(io::Error::from)
    }

    /// Removes `name` and, if it is a real directory, everything in it,
    /// through descriptors: a link anywhere is removed, never followed.
    pub fn remove_all(&self, name: &OsStr) -> Result<(), PathError> {
        let path = self.path.join(name);
        let io_err = |source: io::Error| PathError::Io {
            path: path.clone(),
            source,
        };
        let result = match self.kind(name)? {
            None => return Ok(()),
            Some(Kind::Dir) => {
                let dir = self.open_dir(name)?;
                for (child, _) in dir.entries()? {
                    dir.remove_all(&child)?;
                }
                let flag = nix::unistd::UnlinkatFlags::RemoveDir;
                nix::unistd::unlinkat(&self.fd, name, flag).map_err(io::Error::from)
            }
            Some(_) => self.unlink(name),
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other.map_err(io_err),
        }
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What to call `kind` where a `want` ("file" or "dir") was expected.
fn kind_name(kind: Kind, want: &'static str) -> &'static str {
    match (kind, want) {
        (Kind::Dir, _) => "directory",
        (Kind::File, "dir") => "file where a directory was expected",
        (Kind::File, _) => "regular file",
        (Kind::Symlink, _) => "symbolic link",
        (Kind::Fifo, _) => "FIFO",
        (Kind::Special, _) => "socket or device",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    /// A volume with `tasks/t/output/sub/part.csv`, and a canary directory
    /// beside it (outside the volume) holding the same names.
    fn volume() -> (tempfile::TempDir, Beneath, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let canary = dir.path().join("canary");
        std::fs::create_dir_all(canary.join("sub")).unwrap();
        std::fs::write(canary.join("part.csv"), "CANARY").unwrap();
        std::fs::write(canary.join("sub/part.csv"), "CANARY").unwrap();
        std::fs::write(canary.join("done_flag"), "CANARY").unwrap();
        let root = dir.path().join("vol");
        std::fs::create_dir_all(root.join("tasks/t/output/sub")).unwrap();
        std::fs::write(root.join("tasks/t/output/sub/part.csv"), "ok").unwrap();
        std::fs::write(root.join("tasks/t/done_flag"), "{}").unwrap();
        (dir, Beneath::new(root), canary)
    }

    fn read(b: &Beneath, path: &Path) -> Result<String, PathError> {
        let mut s = String::new();
        b.open_regular(path)?.read_to_string(&mut s).unwrap();
        Ok(s)
    }

    /// Replaces the volume path `at` with a link to `target`.
    fn swap(b: &Beneath, at: &str, target: &Path) {
        let p = b.root().join(at);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
        symlink(target, &p).unwrap();
    }

    #[test]
    fn reads_real_paths_from_the_root() {
        let (_d, b, _c) = volume();
        let part = b.root().join("tasks/t/output/sub/part.csv");
        assert_eq!(read(&b, &part).unwrap(), "ok");
        assert_eq!(read(&b, Path::new("tasks/t/done_flag")).unwrap(), "{}");
        assert!(b.exists(&part) && !b.is_dir(&part));
        assert!(b.is_dir(b.root()) && b.is_dir(&b.root().join("tasks/t")));
        let e = read(&b, Path::new("/etc/passwd")).unwrap_err().to_string();
        assert!(e.contains("not under the volume root"), "{e}");
        let e = read(&b, Path::new("tasks/../x")).unwrap_err().to_string();
        assert!(e.contains("'..'"), "{e}");
    }

    #[test]
    fn a_link_at_any_level_is_named_never_followed() {
        for (at, target, read_at) in [
            ("tasks/t", "canary", "tasks/t/part.csv"),
            ("tasks/t/output", "canary", "tasks/t/output/part.csv"),
            (
                "tasks/t/output/sub",
                "canary",
                "tasks/t/output/sub/part.csv",
            ),
            (
                "tasks/t/output/sub/part.csv",
                "canary/part.csv",
                "tasks/t/output/sub/part.csv",
            ),
            ("tasks/t/done_flag", "canary/done_flag", "tasks/t/done_flag"),
        ] {
            let (d, b, _c) = volume();
            swap(&b, at, &d.path().join(target));
            let e = read(&b, Path::new(read_at)).unwrap_err();
            assert!(matches!(e, PathError::Symlink { .. }), "{at}: {e}");
            let text = e.to_string();
            assert!(
                text.contains(&b.root().join(at).display().to_string())
                    && text.contains("symbolic link"),
                "{at}: {text}"
            );
            assert!(!b.exists(&b.root().join(read_at)) || at == read_at, "{at}");
            assert!(!b.is_dir(&b.root().join(at)), "{at}");
        }
    }

    /// The root is trusted, links in its own path included: a one-call
    /// open refuses them, and the walk from the root serves instead.
    #[test]
    fn a_root_reached_through_a_link_still_resolves() {
        let (d, b, c) = volume();
        let linked = d.path().join("linked-vol");
        symlink(b.root(), &linked).unwrap();
        let via = Beneath::new(&linked);
        assert_eq!(read(&via, Path::new("tasks/t/done_flag")).unwrap(), "{}");
        assert!(via.is_dir(&linked.join("tasks/t/output/sub")));
        swap(&via, "tasks/t/output", &c);
        let e = read(&via, Path::new("tasks/t/output/part.csv")).unwrap_err();
        assert!(matches!(e, PathError::Symlink { .. }), "{e}");
    }

    #[test]
    fn listing_sees_links_as_links() {
        let (d, b, _c) = volume();
        symlink(d.path().join("canary"), b.root().join("tasks/t/output/l")).unwrap();
        let out = b.dir(Path::new("tasks/t/output")).unwrap();
        let got = out.entries().unwrap();
        assert_eq!(
            got,
            [("l".into(), Kind::Symlink), ("sub".into(), Kind::Dir)]
        );
        let e = out.open_dir(OsStr::new("l")).unwrap_err();
        assert!(matches!(e, PathError::Symlink { .. }), "{e}");
    }

    #[test]
    fn remove_all_removes_links_not_their_targets() {
        let (d, b, canary) = volume();
        let canary_files = || {
            let mut v: Vec<_> = std::fs::read_dir(&canary)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        let before = canary_files();
        // A link inside the task dir, and the output dir itself a link.
        symlink(&canary, b.root().join("tasks/t/inner")).unwrap();
        swap(&b, "tasks/t/output", &canary);
        b.remove_all(&b.root().join("tasks/t")).unwrap();
        assert!(!b.exists(&b.root().join("tasks/t")));
        assert_eq!(canary_files(), before);
        // The task dir itself a link: the link goes, the target stays.
        std::fs::create_dir_all(b.root().join("tasks")).unwrap();
        symlink(&canary, b.root().join("tasks/t")).unwrap();
        b.remove_all(&b.root().join("tasks/t")).unwrap();
        assert!(std::fs::symlink_metadata(b.root().join("tasks/t")).is_err());
        assert_eq!(canary_files(), before);
        // `tasks/` a link: refused, nothing removed through it.
        swap(&b, "tasks", d.path());
        let e = b.remove_all(&b.root().join("tasks/canary")).unwrap_err();
        assert!(matches!(e, PathError::Symlink { .. }), "{e}");
        assert_eq!(canary_files(), before);
        // Nothing there: fine.
        b.remove_all(&b.root().join("nothing/here")).unwrap();
    }
}
