//! Stream mode: the task's input and output are FIFOs, and the shim writes
//! and reads them while the logic runs, so a partition never sits whole on
//! the volume or in memory.
//!
//! ## Why this needs care
//!
//! A FIFO makes both ends wait for each other: a blocking `open` for writing
//! waits for a reader, a blocking `read` waits for a writer. A logic that
//! never opens its input, dies half way, or leaves a child holding the pipe
//! would hang a naive executor forever. Here nothing blocks without a bound:
//!
//! * the input FIFO is opened `O_WRONLY|O_NONBLOCK`, retried while `open`
//!   says `ENXIO` (no reader yet);
//! * writes and reads are non-blocking and wait in `poll(2)` for at most
//!   [`POLL_SLICE`] at a time;
//! * between slices every loop looks at the task's [`Signals`]: `stop`
//!   (the task failed, the sidecar is gone, the deadline passed: give up
//!   with [`StreamError::Stopped`]) and `done` (the logic has finished: a
//!   writer stops quietly, a reader with nothing more to read sees EOF).
//!
//! The signals are raised by the task's monitor (see [`crate::client`]),
//! which watches the done flag, the sidecar's heartbeat and the deadline.
//!
//! `EPIPE` on the input (the logic stopped reading) is not an error here:
//! the rest of the input is discarded and the task's outcome decides whether
//! that was fine. `SIGPIPE` is blocked on the writing thread
//! ([`block_sigpipe_on_this_thread`]) so that the write fails with `EPIPE`
//! instead of killing a process that did not ignore the signal.
//!
//! The output FIFO is opened `O_RDONLY|O_NONBLOCK` *before* the start flag,
//! so the logic's (blocking) open for writing never waits, and end of stream
//! is `POLLHUP` after the writer closed. Linux reports `POLLHUP` on a FIFO
//! only after a writer has come and gone since the reader opened it, so a
//! FIFO that nobody has opened yet does not look finished.
//!
//! Memory stays bounded: the writer takes batches as the caller produces
//! them and the pipe's capacity is the only buffer between the two sides
//! (raised to [`PIPE_CAPACITY`] where the kernel allows), so a slow logic
//! slows the producer down instead of filling memory.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sidecar_core::beneath::Beneath;
use sidecar_core::safepath::PathError;

/// The longest a stream operation waits before it looks at the signals again.
pub const POLL_SLICE: Duration = Duration::from_millis(100);

/// The pipe capacity asked for (`F_SETPIPE_SZ`; best effort, the default is
/// 64 KiB and `/proc/sys/fs/pipe-max-size` is usually 1 MiB).
pub const PIPE_CAPACITY: i32 = 1 << 20;

/// The largest single `write(2)`.
const MAX_WRITE: usize = 1 << 20;

/// Why a FIFO could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    #[error("cannot create FIFO {}: {source}", .path.display())]
    Mkfifo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open FIFO {}: {source}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a FIFO (was it replaced while the task ran?)", .path.display())]
    NotFifo { path: PathBuf },
    #[error("streaming {} stopped: the task ended or the sidecar is gone", .path.display())]
    Stopped { path: PathBuf },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The way to the FIFO is refused (a link, or not a directory).
    #[error(transparent)]
    Refused(#[from] PathError),
}

impl StreamError {
    /// Whether an I/O error out of a [`FifoReader`] or [`FifoWriter`] is
    /// (or wraps) [`StreamError::Stopped`].
    pub fn is_stopped(err: &io::Error) -> bool {
        err.get_ref()
            .and_then(|e| e.downcast_ref::<StreamError>())
            .is_some_and(|e| matches!(e, StreamError::Stopped { .. }))
    }
}

/// What a task's monitor tells its stream threads.
#[derive(Debug, Default)]
pub struct Signals {
    stop: AtomicBool,
    done: AtomicBool,
    input_closed: AtomicBool,
}

impl Signals {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    /// Give up: every stream operation fails with [`StreamError::Stopped`].
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
    pub fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
    /// The logic has finished (its done flag is there).
    pub fn set_done(&self) {
        self.done.store(true, Ordering::SeqCst);
    }
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }
    /// Whether the logic closed its input before the end (`EPIPE`): the
    /// producer may stop producing.
    pub fn is_input_closed(&self) -> bool {
        self.input_closed.load(Ordering::SeqCst)
    }
}

/// Creates a FIFO at `path` on the volume `root` with exactly `mode` (not
/// reduced by the umask), so a container user other than the executor's can
/// open it. Its directory is resolved from the root without following a
/// link, so the FIFO is never made outside the volume.
pub fn make_fifo(root: &Beneath, path: &Path, mode: u32) -> Result<(), StreamError> {
    let failed = |source| StreamError::Mkfifo {
        path: path.to_owned(),
        source,
    };
    let (dir, name) = root.parent(path)?;
    let m = nix::sys::stat::Mode::from_bits_truncate(mode);
    nix::unistd::mkfifoat(&dir, name, m).map_err(|e| failed(e.into()))?;
    // A FIFO opens for reading without blocking; the mode is set on what
    // was opened, not on whatever the name points to by then.
    let fifo = dir.open_file(name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
    check_fifo(&fifo, path)?;
    nix::sys::stat::fchmod(&fifo, m).map_err(|e| failed(e.into()))
}

/// Opens the FIFO at `path` on the volume `root` without blocking and
/// without following a link in any component.
fn open_fifo(root: &Beneath, path: &Path, flags: i32) -> Result<File, PathError> {
    let (dir, name) = root.parent(path)?;
    dir.open_file(name, flags | libc::O_NONBLOCK, 0)
}

/// Blocks `SIGPIPE` for the calling thread, so writing to a FIFO whose reader
/// has gone returns `EPIPE`. A `SIGPIPE` raised by such a write is directed
/// at the writing thread and stays pending until the thread exits, when it
/// is discarded; other threads are not affected.
pub fn block_sigpipe_on_this_thread() {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGPIPE);
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&set),
        None,
    );
}

/// Waits up to `timeout` for `events` on `file`; returns the `revents`
/// (0 on timeout). `EINTR` counts as a timeout.
fn poll_one(file: &File, events: libc::c_short, timeout: Duration) -> io::Result<libc::c_short> {
    let mut pfd = libc::pollfd {
        fd: file.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call; the descriptor
    // belongs to `file`, which outlives the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(if n == 0 { 0 } else { pfd.revents })
}

fn set_pipe_capacity(file: &File) {
    // SAFETY: fcntl on a descriptor `file` owns; failure is harmless.
    unsafe {
        libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_CAPACITY);
    }
}

fn check_fifo(file: &File, path: &Path) -> Result<(), StreamError> {
    let meta = file.metadata().map_err(|source| StreamError::Io {
        path: path.to_owned(),
        source,
    })?;
    if meta.file_type().is_fifo() {
        Ok(())
    } else {
        Err(StreamError::NotFifo {
            path: path.to_owned(),
        })
    }
}

fn stopped(path: &Path) -> io::Error {
    io::Error::other(StreamError::Stopped {
        path: path.to_owned(),
    })
}

/// The executor's end of the input FIFO.
#[derive(Debug)]
pub struct FifoWriter {
    file: File,
    path: PathBuf,
    signals: Arc<Signals>,
    broken: bool,
    bytes: u64,
}

impl FifoWriter {
    /// Opens `path` on the volume `root` for writing once the logic has
    /// opened it for reading. `Ok(None)` means the logic finished without
    /// ever opening it.
    pub fn open(
        root: &Beneath,
        path: &Path,
        signals: Arc<Signals>,
    ) -> Result<Option<Self>, StreamError> {
        let mut backoff = Duration::from_millis(1);
        loop {
            match open_fifo(root, path, libc::O_WRONLY) {
                Ok(file) => {
                    check_fifo(&file, path)?;
                    set_pipe_capacity(&file);
                    return Ok(Some(Self {
                        file,
                        path: path.to_owned(),
                        signals,
                        broken: false,
                        bytes: 0,
                    }));
                }
                Err(PathError::Io { source, .. }) => match source.raw_os_error() {
                    Some(libc::ENXIO) => {}
                    Some(libc::EINTR) => continue,
                    _ => {
                        return Err(StreamError::Open {
                            path: path.to_owned(),
                            source,
                        })
                    }
                },
                Err(refused) => return Err(refused.into()),
            }
            if signals.is_stopped() {
                return Err(StreamError::Stopped {
                    path: path.to_owned(),
                });
            }
            if signals.is_done() {
                return Ok(None);
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(20));
        }
    }

    /// Whether the reader has gone (`EPIPE`) or the logic finished; further
    /// writes are discarded.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Bytes the logic's end accepted.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Write for FifoWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.broken {
            return Ok(buf.len());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let chunk = &buf[..buf.len().min(MAX_WRITE)];
        loop {
            match (&self.file).write(chunk) {
                Ok(n) => {
                    self.bytes += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    self.broken = true;
                    self.signals.input_closed.store(true, Ordering::SeqCst);
                    return Ok(buf.len());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let revents = poll_one(&self.file, libc::POLLOUT, POLL_SLICE)?;
                    if revents == 0 {
                        if self.signals.is_stopped() {
                            return Err(stopped(&self.path));
                        }
                        if self.signals.is_done() {
                            // The logic has exited; whoever still holds the
                            // pipe is not going to read it.
                            self.broken = true;
                            return Ok(buf.len());
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The executor's end of the output FIFO.
#[derive(Debug)]
pub struct FifoReader {
    file: File,
    path: PathBuf,
    signals: Arc<Signals>,
    bytes: u64,
    eof: bool,
}

impl FifoReader {
    /// Opens `path` for reading without waiting for a writer.
    pub fn open(root: &Beneath, path: &Path, signals: Arc<Signals>) -> Result<Self, StreamError> {
        let file = open_fifo(root, path, libc::O_RDONLY).map_err(|e| match e {
            PathError::Io { source, .. } => StreamError::Open {
                path: path.to_owned(),
                source,
            },
            refused => refused.into(),
        })?;
        check_fifo(&file, path)?;
        set_pipe_capacity(&file);
        Ok(Self {
            file,
            path: path.to_owned(),
            signals,
            bytes: 0,
            eof: false,
        })
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Read for FifoReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.eof || buf.is_empty() {
            return Ok(0);
        }
        loop {
            let revents = poll_one(&self.file, libc::POLLIN, POLL_SLICE)?;
            if revents == 0 {
                if self.signals.is_stopped() {
                    return Err(stopped(&self.path));
                }
                if self.signals.is_done() {
                    // The logic has finished and nothing arrived for a whole
                    // slice: it never opened the FIFO, or a straggler holds
                    // it open without writing.
                    self.eof = true;
                    return Ok(0);
                }
                continue;
            }
            match (&self.file).read(buf) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(0);
                }
                Ok(n) => {
                    self.bytes += n as u64;
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::fs::OpenOptions;
    use std::time::Instant;

    fn fifo() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("part.arrows");
        make_fifo(&Beneath::new(dir.path()), &p, 0o666).unwrap();
        (dir, p)
    }

    #[test]
    fn writer_without_reader_ends_when_done_or_stopped() {
        let (dir, p) = fifo();
        let s = Signals::new();
        let s2 = Arc::clone(&s);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            s2.set_done();
        });
        assert!(
            FifoWriter::open(&Beneath::new(dir.path()), &p, Arc::clone(&s))
                .unwrap()
                .is_none()
        );
        t.join().unwrap();
        let s = Signals::new();
        s.stop();
        let e = FifoWriter::open(&Beneath::new(dir.path()), &p, s).unwrap_err();
        assert!(matches!(e, StreamError::Stopped { .. }), "{e}");
    }

    #[test]
    fn reader_without_writer_waits_then_honours_signals() {
        let (dir, p) = fifo();
        let s = Signals::new();
        let mut r = FifoReader::open(&Beneath::new(dir.path()), &p, Arc::clone(&s)).unwrap();
        let s2 = Arc::clone(&s);
        let start = Instant::now();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            s2.stop();
        });
        let mut buf = [0u8; 16];
        let e = r.read(&mut buf).unwrap_err();
        assert!(StreamError::is_stopped(&e), "{e}");
        // It waited for the signal: no writer is not end of stream.
        assert!(start.elapsed() >= Duration::from_millis(250));
        t.join().unwrap();
    }

    #[test]
    fn bytes_flow_and_hangup_is_eof() {
        let (dir, p) = fifo();
        let s = Signals::new();
        let mut r = FifoReader::open(&Beneath::new(dir.path()), &p, Arc::clone(&s)).unwrap();
        let p2 = p.clone();
        let t = std::thread::spawn(move || {
            let mut f = OpenOptions::new().write(true).open(&p2).unwrap();
            f.write_all(&vec![7u8; 3 << 20]).unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        t.join().unwrap();
        assert_eq!(got.len(), 3 << 20);
        assert!(got.iter().all(|b| *b == 7));
        assert_eq!(r.bytes_read(), 3 << 20);
    }

    #[test]
    fn reader_leaving_is_not_an_error_for_the_writer() {
        let (dir, p) = fifo();
        let p2 = p.clone();
        let t = std::thread::spawn(move || {
            let mut f = File::open(&p2).unwrap();
            let mut buf = [0u8; 10];
            f.read_exact(&mut buf).unwrap();
            // and goes away
        });
        block_sigpipe_on_this_thread();
        let s = Signals::new();
        let mut w = FifoWriter::open(&Beneath::new(dir.path()), &p, s)
            .unwrap()
            .unwrap();
        for _ in 0..64 {
            w.write_all(&[1u8; 1 << 16]).unwrap();
        }
        t.join().unwrap();
        w.write_all(&[1u8; 1 << 16]).unwrap();
        assert!(w.is_broken());
        assert!(w.signals.is_input_closed());
    }
}
