//! Path safety: the executor treats everything on the volume as hostile.
//!
//! Relative paths named by the other side (output manifests, input file
//! lists) are validated lexically ([`validate_relative`]) and then opened one
//! component at a time with `O_NOFOLLOW` from the volume root
//! ([`open_output`], through [`crate::beneath`]), so neither `..`, an
//! absolute path, a symlink (anywhere in the path, the task directory and
//! `output/` included) nor a hard link to a file outside the volume can make
//! this side read outside it.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::beneath::Beneath;

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

impl PathError {
    /// The path refused.
    pub fn path(&self) -> &Path {
        match self {
            PathError::Invalid { path, .. } => Path::new(path),
            PathError::Symlink { path }
            | PathError::NotRegular { path, .. }
            | PathError::HardLinked { path, .. }
            | PathError::Io { path, .. } => path,
        }
    }
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

/// Opens `base/rel` for reading without following any symlink below `base`,
/// and only if it is a regular file with a single link. `base` itself is
/// trusted (it is the executor's own path to the volume).
pub fn open_beneath(base: &Path, rel: &str) -> Result<File, PathError> {
    open_output(&Beneath::new(base), base, rel)
}

/// Opens the output `rel` of the directory `base`, both resolved from the
/// volume `root` without following a link in any component (the task
/// directory and `output/` included), and only if it is a regular file
/// with a single link.
pub fn open_output(root: &Beneath, base: &Path, rel: &str) -> Result<File, PathError> {
    let rel_path = validate_relative(rel)?;
    let full = base.join(rel_path);
    let (dir, name) = root.parent(&full)?;
    let file = dir.open_regular(name)?;
    let links = file
        .metadata()
        .map_err(|source| PathError::Io {
            path: full.clone(),
            source,
        })?
        .nlink();
    if links != 1 {
        return Err(PathError::HardLinked { path: full, links });
    }
    Ok(file)
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
