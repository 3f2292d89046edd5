//! Output manifests: the sidecar lists what the logic wrote (path, size,
//! checksum); the executor reads only what is listed, and verifies size and
//! checksum as it reads, so a truncated or swapped file is an error, never a
//! result.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

use crate::beneath::{Beneath, Dir, Kind};
use crate::record::OutputFile;
use crate::safepath::{self, PathError};

/// The checksum algorithm's prefix in [`OutputFile::checksum`].
pub const CHECKSUM_PREFIX: &str = "xxh3-64:";

/// Bytes per read when checksumming: few enough that a chunk is still in
/// the CPU's cache when it is hashed (a 1 MiB chunk is hashed from memory,
/// a second pass over it), enough that the system calls are few.
const CHUNK: usize = 128 << 10;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("output {path} is a {kind}; outputs must be regular files")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(
        "output {path}: {got} bytes read, the manifest says {want} (incomplete or changed output)"
    )]
    SizeMismatch { path: String, got: u64, want: u64 },
    #[error("output {path}: checksum {got} does not match the manifest's {want}")]
    ChecksumMismatch {
        path: String,
        got: String,
        want: String,
    },
}

/// A streaming checksum in the manifest's format.
#[derive(Default)]
pub struct Checksum(Xxh3);

impl std::fmt::Debug for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Checksum")
    }
}

impl Checksum {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(&self) -> String {
        format!("{CHECKSUM_PREFIX}{:016x}", self.0.digest())
    }
}

/// The checksum of a whole file.
pub fn checksum_file(path: &Path) -> Result<(u64, String), io::Error> {
    checksum_of(File::open(path)?)
}

/// The size and checksum of what `f` reads.
fn checksum_of(mut f: File) -> Result<(u64, String), io::Error> {
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        sum.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, sum.finish()))
}

/// Lists every file under `output_dir` (recursively, sorted, dot-files
/// skipped) with size and checksum. Symlinks and special files are refused:
/// the executor would refuse to read them anyway, and saying so here puts
/// the reason in the task's outcome. `output_dir` itself is trusted; see
/// [`scan_beneath`] for one on the volume.
pub fn scan(output_dir: &Path) -> Result<Vec<OutputFile>, ManifestError> {
    scan_with(output_dir, false)
}

/// [`scan`], optionally leaving FIFOs out instead of refusing them: in
/// stream mode the executor makes `output/part.<ext>` a FIFO, which carries
/// the output and is not a file to list.
pub fn scan_with(output_dir: &Path, skip_fifos: bool) -> Result<Vec<OutputFile>, ManifestError> {
    scan_beneath(&Beneath::new(output_dir), output_dir, skip_fifos)
}

/// [`scan_with`] of an output directory on the volume `root`, resolved from
/// the root without following a link in any component: an `output/` (or a
/// task directory) swapped for a link is refused, naming it, and nothing
/// behind it is listed. Every directory below is walked through
/// descriptors, so a link anywhere is refused, never entered.
pub fn scan_beneath(
    root: &Beneath,
    output_dir: &Path,
    skip_fifos: bool,
) -> Result<Vec<OutputFile>, ManifestError> {
    let dir = match root.dir(output_dir) {
        Ok(d) => d,
        Err(PathError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    scan_into(&dir, "", skip_fifos, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn scan_into(
    dir: &Dir,
    prefix: &str,
    skip_fifos: bool,
    out: &mut Vec<OutputFile>,
) -> Result<(), ManifestError> {
    for (name, kind) in dir.entries()? {
        if crate::layout::is_hidden(&name) {
            continue;
        }
        let path = dir.path().join(&name);
        let Some(text) = name.to_str() else {
            return Err(ManifestError::NotRegular {
                path,
                kind: "file with a non-UTF-8 name",
            });
        };
        let rel = if prefix.is_empty() {
            text.to_owned()
        } else {
            format!("{prefix}/{text}")
        };
        match kind {
            Kind::Dir => scan_into(&dir.open_dir(&name)?, &rel, skip_fifos, out)?,
            Kind::Fifo if skip_fifos => {}
            Kind::File => {
                let file = dir.open_regular(&name)?;
                let (bytes, checksum) = checksum_of(file).map_err(|source| ManifestError::Io {
                    path: path.clone(),
                    source,
                })?;
                out.push(OutputFile {
                    path: rel,
                    bytes,
                    checksum,
                });
            }
            Kind::Symlink => {
                let kind = "symbolic link";
                return Err(ManifestError::NotRegular { path, kind });
            }
            Kind::Fifo | Kind::Special => {
                let kind = "special file (FIFO, socket or device)";
                return Err(ManifestError::NotRegular { path, kind });
            }
        }
    }
    Ok(())
}

/// A reader over one listed output that checks size and checksum. Call
/// [`VerifiedReader::finish`] after consuming: it reads any rest and fails
/// if the bytes are not exactly the ones the manifest lists.
#[derive(Debug)]
pub struct VerifiedReader {
    file: File,
    entry: OutputFile,
    sum: Checksum,
    read: u64,
}

impl VerifiedReader {
    /// Opens `output_dir/entry.path` safely ([`safepath::open_beneath`]).
    pub fn open(output_dir: &Path, entry: &OutputFile) -> Result<Self, ManifestError> {
        Self::open_beneath(&Beneath::new(output_dir), output_dir, entry)
    }

    /// Opens `output_dir/entry.path` on the volume `root`, resolved from
    /// the root without following a link anywhere ([`safepath::open_output`]).
    pub fn open_beneath(
        root: &Beneath,
        output_dir: &Path,
        entry: &OutputFile,
    ) -> Result<Self, ManifestError> {
        let file = safepath::open_output(root, output_dir, &entry.path)?;
        Ok(Self {
            file,
            entry: entry.clone(),
            sum: Checksum::default(),
            read: 0,
        })
    }

    pub fn entry(&self) -> &OutputFile {
        &self.entry
    }

    /// Opens the output and verifies all of it, then rewinds: the reader
    /// returned reads it again from the start, verifying again (the file
    /// is the sidecar's to change), so a truncated or swapped output fails
    /// before any of its bytes are used. One open serves both passes.
    pub fn open_verified(output_dir: &Path, entry: &OutputFile) -> Result<Self, ManifestError> {
        Self::open(output_dir, entry)?.verified()
    }

    /// Verifies all of the output, then rewinds (see [`Self::open_verified`]).
    pub fn verified(mut self) -> Result<Self, ManifestError> {
        self.verify_rest()?;
        self.file.rewind().map_err(|source| self.io_error(source))?;
        self.sum = Checksum::default();
        self.read = 0;
        Ok(self)
    }

    /// Reads the whole output once, verifying its size and checksum as it
    /// goes: the bytes are returned only if they are exactly the listed
    /// ones. One read serves both the check and the decoding that follows.
    pub fn read_verified(mut self) -> Result<Vec<u8>, ManifestError> {
        let limit = self.entry.bytes.saturating_add(1);
        let mut data = Vec::with_capacity(usize::try_from(limit).unwrap_or(usize::MAX));
        loop {
            let step = limit.saturating_sub(self.read).min(CHUNK as u64);
            let start = data.len();
            // Straight into `data`'s spare capacity (no zeroing first), then
            // hashed while the chunk is still in cache.
            let n = (&self.file)
                .take(step)
                .read_to_end(&mut data)
                .map_err(|source| self.io_error(source))?;
            if n == 0 {
                break;
            }
            self.sum.update(&data[start..]);
            self.read += n as u64;
        }
        self.verify_rest()?;
        Ok(data)
    }

    fn io_error(&self, source: io::Error) -> ManifestError {
        ManifestError::Io {
            path: PathBuf::from(&self.entry.path),
            source,
        }
    }

    /// Drains the rest and verifies size and checksum.
    pub fn finish(mut self) -> Result<(), ManifestError> {
        self.verify_rest()
    }

    fn verify_rest(&mut self) -> Result<(), ManifestError> {
        let mut buf = vec![0u8; CHUNK];
        while self
            .read(&mut buf)
            .map_err(|source| self.io_error(source))?
            > 0
        {}
        if self.read != self.entry.bytes {
            return Err(ManifestError::SizeMismatch {
                path: self.entry.path.clone(),
                got: self.read,
                want: self.entry.bytes,
            });
        }
        let got = self.sum.finish();
        if got != self.entry.checksum {
            return Err(ManifestError::ChecksumMismatch {
                path: self.entry.path.clone(),
                got,
                want: self.entry.checksum.clone(),
            });
        }
        Ok(())
    }
}

impl Read for VerifiedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Never read past the listed size: a file still growing is caught
        // by the size check, not by reading unbounded data.
        let left = (self.entry.bytes + 1).saturating_sub(self.read);
        let cap = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..cap])?;
        self.sum.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_lists_and_verify_catches_changes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        std::fs::write(out.join("b.csv"), b"x,y\n1,2\n").unwrap();
        std::fs::create_dir(out.join("sub")).unwrap();
        std::fs::write(out.join("sub/a.csv"), b"z\n").unwrap();
        std::fs::write(out.join(".tmp"), b"ignored").unwrap();
        let m = scan(out).unwrap();
        let paths: Vec<_> = m.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["b.csv", "sub/a.csv"]);
        assert_eq!(m[0].bytes, 8);
        assert!(m[0].checksum.starts_with(CHECKSUM_PREFIX));

        let mut r = VerifiedReader::open(out, &m[0]).unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        r.finish().unwrap();

        std::fs::write(out.join("b.csv"), b"x,y\n1,3\n").unwrap();
        let e = VerifiedReader::open(out, &m[0])
            .unwrap()
            .finish()
            .unwrap_err();
        assert!(matches!(e, ManifestError::ChecksumMismatch { .. }), "{e}");
        std::fs::write(out.join("b.csv"), b"x,y\n").unwrap();
        let e = VerifiedReader::open(out, &m[0])
            .unwrap()
            .finish()
            .unwrap_err();
        assert!(e.to_string().contains("incomplete"), "{e}");
    }

    #[test]
    fn open_verified_checks_before_the_first_byte_and_again_while_read() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        std::fs::write(out.join("b.csv"), b"x,y\n1,2\n").unwrap();
        let m = scan(out).unwrap();
        let mut r = VerifiedReader::open_verified(out, &m[0]).unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "x,y\n1,2\n", "the rewound reader reads it all");
        r.finish().unwrap();

        // Changed before the open: refused before any byte is handed out.
        std::fs::write(out.join("b.csv"), b"x,y\n1,3\n").unwrap();
        let e = VerifiedReader::open_verified(out, &m[0]).unwrap_err();
        assert!(matches!(e, ManifestError::ChecksumMismatch { .. }), "{e}");

        // Changed in place between the two passes: the second one sees it.
        std::fs::write(out.join("b.csv"), b"x,y\n1,2\n").unwrap();
        let r = VerifiedReader::open_verified(out, &m[0]).unwrap();
        std::fs::write(out.join("b.csv"), b"x,y\n9,9\n").unwrap();
        let e = r.finish().unwrap_err();
        assert!(matches!(e, ManifestError::ChecksumMismatch { .. }), "{e}");
    }

    #[test]
    fn read_verified_returns_only_the_listed_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        std::fs::write(out.join("b.csv"), b"x,y\n1,2\n").unwrap();
        let m = scan(out).unwrap();
        let data = VerifiedReader::open(out, &m[0])
            .unwrap()
            .read_verified()
            .unwrap();
        assert_eq!(data, b"x,y\n1,2\n");
        // Longer, shorter or changed: refused, whatever was read.
        for changed in [&b"x,y\n1,2\n3,4\n"[..], b"x,y\n", b"x,y\n1,3\n"] {
            std::fs::write(out.join("b.csv"), changed).unwrap();
            let e = VerifiedReader::open(out, &m[0])
                .unwrap()
                .read_verified()
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    ManifestError::SizeMismatch { .. } | ManifestError::ChecksumMismatch { .. }
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn scan_with_skips_fifos_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("extra.txt"), b"x").unwrap();
        let fifo = std::ffi::CString::new(
            dir.path()
                .join("part.csv")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let e = scan(dir.path()).unwrap_err().to_string();
        assert!(e.contains("part.csv") && e.contains("special file"), "{e}");
        let m = scan_with(dir.path(), true).unwrap();
        let paths: Vec<_> = m.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["extra.txt"]);
    }

    #[test]
    fn scan_beneath_never_lists_through_a_linked_output_dir() {
        let dir = tempfile::tempdir().unwrap();
        let canary = dir.path().join("canary");
        std::fs::create_dir(&canary).unwrap();
        std::fs::write(canary.join("part.csv"), b"CANARY").unwrap();
        let root = Beneath::new(dir.path().join("vol"));
        let task = root.root().join("tasks/t");
        std::fs::create_dir_all(&task).unwrap();
        std::os::unix::fs::symlink(&canary, task.join("output")).unwrap();
        let e = scan_beneath(&root, &task.join("output"), false).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("tasks/t/output") && text.contains("symbolic link"),
            "{text}"
        );
        // The same through a linked task directory.
        std::fs::remove_file(task.join("output")).unwrap();
        std::fs::create_dir(canary.join("output")).unwrap();
        std::fs::write(canary.join("output/part.csv"), b"CANARY").unwrap();
        std::fs::remove_dir(&task).unwrap();
        std::os::unix::fs::symlink(&canary, &task).unwrap();
        let e = scan_beneath(&root, &task.join("output"), false).unwrap_err();
        assert!(
            e.to_string().contains("tasks/t: it is a symbolic link"),
            "{e}"
        );
    }

    #[test]
    fn scan_refuses_links() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("part.csv")).unwrap();
        let e = scan(dir.path()).unwrap_err().to_string();
        assert!(e.contains("part.csv") && e.contains("symbolic link"), "{e}");
    }
}
