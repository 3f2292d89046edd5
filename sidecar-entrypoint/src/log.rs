//! The entrypoint's own log: never a panic, never a block.
//!
//! The log goes to stderr, which may be anything: a pipe whose reader is
//! gone (`2>&1 | head -1`), a closed descriptor, a pipe nobody drains.
//! `eprintln!` panics on a failed write, and tracing's writer reports its
//! write errors with `eprintln!`: a log line could kill the signal handler's
//! task (and with it SIGTERM) or the whole entrypoint (exit 101, the logic
//! orphaned). So log lines are handed to one writer thread through a
//! bounded queue: a full queue drops the line (counted, reported once the
//! queue drains), EPIPE or EBADF ends writing for good (nobody will read
//! it), any other write error drops that line, and nothing that logs ever
//! waits for stderr.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

/// Lines waiting for stderr before new ones are dropped.
const QUEUE: usize = 4096;

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

static QUEUE_TX: OnceLock<SyncSender<Msg>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Makes sure descriptors 0, 1 and 2 are open (on `/dev/null` if they were
/// closed): otherwise the first file or watch the entrypoint opens would
/// take the number 2, and log lines would be written into it.
pub fn ensure_std_fds() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD on a small integer only queries it.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: a constant C string; the lowest free number is `fd`.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

/// Starts the writer thread (once); lines logged before it are written
/// directly.
pub fn start() {
    let (tx, rx) = sync_channel(QUEUE);
    if std::thread::Builder::new()
        .name("log".into())
        .spawn(move || writer_loop(rx))
        .is_ok()
    {
        let _ = QUEUE_TX.set(tx);
    }
}

fn writer_loop(rx: Receiver<Msg>) {
    let mut open = true;
    for msg in rx {
        match msg {
            Msg::Line(line) if open => {
                let dropped = DROPPED.swap(0, Ordering::Relaxed);
                let mut err = std::io::stderr().lock();
                let mut written = Ok(());
                if dropped > 0 {
                    let note = format!("sidecar-entrypoint: {dropped} log line(s) dropped: stderr was not read fast enough\n");
                    written = err.write_all(note.as_bytes());
                }
                open = still_open(written.and_then(|()| err.write_all(&line)));
            }
            Msg::Line(_) => {}
            Msg::Flush(ack) => {
                let _ = ack.send(());
            }
        }
    }
}

/// Whether stderr can take more after this write: not once nobody can
/// read it (EPIPE, EBADF); a full disk under a log file may clear up.
fn still_open(written: std::io::Result<()>) -> bool {
    match written {
        Err(e) => !matches!(e.raw_os_error(), Some(libc::EPIPE | libc::EBADF)),
        Ok(()) => true,
    }
}

/// Queues `line` for stderr; never blocks, never fails.
pub fn line(line: Vec<u8>) {
    match QUEUE_TX.get() {
        Some(tx) => match tx.try_send(Msg::Line(line)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        },
        None => {
            let _ = std::io::stderr().write_all(&line);
        }
    }
}

/// `sidecar-entrypoint: <msg>` on stderr, without tracing's formatting.
pub fn plain(msg: &str) {
    line(format!("sidecar-entrypoint: {msg}\n").into_bytes());
}

/// Waits up to `limit` for the queued lines to be written (at exit).
pub fn flush(limit: Duration) {
    let Some(tx) = QUEUE_TX.get() else { return };
    let (ack_tx, ack) = sync_channel(1);
    let queued = match tx.try_send(Msg::Flush(ack_tx)) {
        Ok(()) => true,
        // Full: wait for room on another thread, so the limit holds.
        Err(TrySendError::Full(msg)) => {
            let tx = tx.clone();
            std::thread::spawn(move || tx.send(msg).is_ok());
            true
        }
        Err(TrySendError::Disconnected(_)) => false,
    };
    if queued {
        let _ = ack.recv_timeout(limit);
    }
}

/// tracing's writer: each formatted event is one queued line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Writer;

/// One event being formatted.
#[derive(Debug, Default)]
pub struct Event(Vec<u8>);

impl Write for Event {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            line(std::mem::take(&mut self.0));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Writer {
    type Writer = Event;
    fn make_writer(&'a self) -> Event {
        Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::MakeWriter as _;

    #[test]
    fn only_a_reader_gone_for_good_ends_the_log() {
        let os = std::io::Error::from_raw_os_error;
        assert!(!still_open(Err(os(libc::EPIPE))));
        assert!(!still_open(Err(os(libc::EBADF))));
        assert!(still_open(Err(os(libc::ENOSPC))));
        assert!(still_open(Ok(())));
    }

    #[test]
    fn an_event_is_one_queued_line_and_logging_never_fails() {
        let mut e = Writer.make_writer();
        assert_eq!(e.write(b"one ").unwrap(), 4);
        assert_eq!(e.write(b"line\n").unwrap(), 5);
        assert_eq!(e.0, b"one line\n");
        e.flush().unwrap();
    }
}
