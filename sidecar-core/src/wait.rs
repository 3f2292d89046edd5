//! Event-driven waiting for flags, with a polling fallback.
//!
//! A [`Watch`] owns one inotify instance and any number of watched
//! directories (not recursive: a directory is watched when someone adds
//! it). Every event that can change what a wait checks bumps a generation
//! counter and wakes both blocking and async waiters. A wait reads the
//! generation *before* it checks its condition, so an event that lands
//! between the check and the sleep is never missed: this is what "the
//! watch is armed before the existence check" means in practice.
//!
//! There is no helper thread. The inotify descriptor is read by the
//! waiters themselves: a blocking waiter sleeps in `poll(2)` on it (one at
//! a time; the others sleep on a condition variable the reader wakes), an
//! async waiter awaits its readiness on the tokio reactor. An event thus
//! wakes the thread that waits for it directly, with no hop through another
//! thread. Only the events a wait can care about are asked of the kernel
//! (entries created, renamed, removed, files closed after writing), and
//! events about dot-files (the temporaries of atomic writes) are dropped.
//!
//! A watch can also keep a journal of *where* things happened
//! ([`Watch::keep_journal`], [`Watch::take_changes`]): the serve loop
//! uses it to look only at the task directories that changed, so the cost
//! of an event does not grow with the number of task directories present.
//!
//! When no watch can be set up (the inotify instance or watch limits are
//! exhausted, or the caller asks for it) the watch polls: waits then wake
//! every `poll` interval and journals say "look everywhere". Even with
//! events, a wait rechecks its condition every [`NATIVE_RECHECK`], so a
//! lost event (queue overflow, a filesystem that delivers none) costs
//! latency, never a hang.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::io::unix::AsyncFd;

/// How often a wait rechecks its condition when inotify is in use.
pub const NATIVE_RECHECK: Duration = Duration::from_millis(500);

/// The default polling interval of the fallback.
pub const DEFAULT_POLL: Duration = Duration::from_millis(20);

/// Which mechanism a [`Watch`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WatchMode {
    /// inotify, falling back to polling (with a warning) if it cannot be set up.
    #[default]
    Auto,
    /// inotify or an error.
    Native,
    /// Polling only.
    Poll,
}

/// Watch configuration: plain data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    pub mode: WatchMode,
    /// The polling interval (fallback, or [`WatchMode::Poll`]).
    pub poll: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            mode: WatchMode::Auto,
            poll: DEFAULT_POLL,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    #[error("timed out after {after:?} waiting for {what}")]
    Deadline { what: String, after: Duration },
    #[error("cannot watch {path}: the inotify watch limit is exhausted (raise fs.inotify.max_user_watches, or use polling)")]
    WatchLimit { path: PathBuf },
    #[error("cannot start an inotify instance: too many open (raise fs.inotify.max_user_instances or the open-file limit, or use polling): {source}")]
    TooManyInstances {
        #[source]
        source: io::Error,
    },
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What the kernel is asked to report: what can change a flag wait.
/// Opens, reads and data or metadata changes are never reported: every
/// reader's own footprint, or bursts that end in a close, which counts.
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
        | AddWatchFlags::IN_DONT_FOLLOW
}

/// The name prefix of [`probe_events`]'s file: a dot-file whose events
/// must still count.
const PROBE_PREFIX: &str = ".sidecar-probe.";

/// The largest journal kept before it is replaced by "look everywhere".
const JOURNAL_MAX: usize = 1 << 16;

/// Where things happened since the journal was last taken.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Look everywhere: events were lost (queue overflow, a journal too
    /// long), or the watch polls.
    pub rescan: bool,
    /// `(watched directory, entry name)` of every event; the name is empty
    /// for an event about the directory itself.
    pub entries: Vec<(PathBuf, OsString)>,
}

/// The generation and the reader's hand-overs, under one lock so that a
/// sleeping waiter hears of either.
#[derive(Debug, Default)]
struct Clock {
    generation: u64,
    /// Bumped each time a blocking reader stops reading.
    handovers: u64,
}

#[derive(Debug, Default)]
struct Shared {
    clock: Mutex<Clock>,
    cond: Condvar,
    notify: tokio::sync::Notify,
}

impl Shared {
    fn clock(&self) -> MutexGuard<'_, Clock> {
        self.clock.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn bump(&self) {
        let mut c = self.clock();
        c.generation = c.generation.wrapping_add(1);
        drop(c);
        self.cond.notify_all();
        self.notify.notify_waiters();
    }
    fn handover(&self) {
        let mut c = self.clock();
        c.handovers = c.handovers.wrapping_add(1);
        drop(c);
        self.cond.notify_all();
    }
}

/// Watched directories by descriptor, and the journal.
#[derive(Debug, Default)]
struct Book {
    dirs: HashMap<WatchDescriptor, PathBuf>,
    wds: HashMap<PathBuf, WatchDescriptor>,
    journal: Option<Changes>,
}

#[derive(Debug)]
struct Native {
    /// A duplicate of `fd`, registered with a tokio reactor on first async
    /// use (none outside a runtime with its IO driver).
    reactor: OnceLock<Option<AsyncFd<OwnedFd>>>,
    fd: Inotify,
    /// A blocking waiter sleeps in `poll(2)` on `fd`.
    reading: AtomicBool,
}

/// A set of watched directories and the waits on them.
#[derive(Debug)]
pub struct Watch {
    shared: Shared,
    native: Option<Native>,
    book: Mutex<Book>,
    polling: AtomicBool,
    config: WatchConfig,
    /// The watches lent by [`Watch::private`]: a poke reaches them too.
    private: Mutex<Lent>,
}

/// The private watches of a [`Watch`]: every one made, and those idle.
/// They are kept and lent again, never closed while the parent lives:
/// closing an inotify instance waits for an RCU grace period, which would
/// cost each task milliseconds.
#[derive(Debug, Default)]
struct Lent {
    all: Vec<Arc<Watch>>,
    idle: Vec<Arc<Watch>>,
}

/// A watch lent to one waiter by [`Watch::private`]; returned on drop.
#[derive(Debug)]
pub struct PrivateWatch<'a> {
    parent: &'a Watch,
    watch: Arc<Watch>,
}

impl std::ops::Deref for PrivateWatch<'_> {
    type Target = Watch;
    fn deref(&self) -> &Watch {
        &self.watch
    }
}

impl Drop for PrivateWatch<'_> {
    fn drop(&mut self) {
        self.parent.lent().idle.push(Arc::clone(&self.watch));
    }
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Watch {
    /// Starts a watch with no directories yet.
    pub fn new(config: WatchConfig) -> Result<Self, WaitError> {
        let native = if config.mode == WatchMode::Poll {
            None
        } else {
            match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
                Ok(fd) => Some(Native {
                    reactor: OnceLock::new(),
                    fd,
                    reading: AtomicBool::new(false),
                }),
                Err(e) => {
                    let err = WaitError::TooManyInstances { source: io_err(e) };
                    if config.mode == WatchMode::Native {
                        return Err(err);
                    }
                    tracing::warn!(
                        "inotify unavailable ({err}); falling back to polling every {:?}",
                        config.poll
                    );
                    None
                }
            }
        };
        Ok(Self {
            polling: AtomicBool::new(native.is_none()),
            shared: Shared::default(),
            native,
            book: Mutex::new(Book::default()),
            config,
            private: Mutex::default(),
        })
    }

    /// A watch of its own for one waiter (one task of many), so that events
    /// in other waiters' directories do not wake it: with one shared watch,
    /// every event wakes every waiting thread. [`Watch::poke`] on `self`
    /// still reaches it. The waiter adds (and removes) its directories.
    /// `None` when this watch polls, or no inotify instance is left: then
    /// `self` serves, as before.
    pub fn private(&self) -> Option<PrivateWatch<'_>> {
        if self.is_polling() {
            return None;
        }
        let idle = self.lent().idle.pop();
        let watch = match idle {
            Some(w) => w,
            None => {
                // Native, so that running out of instances is a `None`
                // here, not a polling fallback; Auto once made, so that
                // running out of watches polls instead of failing a task.
                let native = WatchConfig {
                    mode: WatchMode::Native,
                    ..self.config
                };
                let mut own = Watch::new(native).ok()?;
                own.config.mode = WatchMode::Auto;
                let own = Arc::new(own);
                self.lent().all.push(Arc::clone(&own));
                own
            }
        };
        Some(PrivateWatch {
            parent: self,
            watch,
        })
    }

    fn lent(&self) -> MutexGuard<'_, Lent> {
        self.private.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The inotify instance, unless the watch polls.
    fn native(&self) -> Option<&Native> {
        self.native.as_ref().filter(|_| !self.is_polling())
    }

    /// Watches `dir` (not its subdirectories: add those as they matter).
    /// A directory that is not there is an error; running out of watches
    /// is one only in [`WatchMode::Native`] ([`WatchMode::Auto`] polls).
    pub fn add(&self, dir: &Path) -> Result<(), WaitError> {
        let Some(n) = self.native() else {
            return Ok(());
        };
        match n.fd.add_watch(dir, mask()) {
            Ok(wd) => {
                let mut book = self.book();
                book.dirs.insert(wd, dir.to_owned());
                book.wds.insert(dir.to_owned(), wd);
                Ok(())
            }
            Err(Errno::ENOSPC) if self.config.mode != WatchMode::Native => {
                let err = WaitError::WatchLimit {
                    path: dir.to_owned(),
                };
                tracing::warn!(
                    "{err}; falling back to polling every {:?}",
                    self.config.poll
                );
                self.polling.store(true, Ordering::SeqCst);
                self.shared.bump();
                Ok(())
            }
            Err(Errno::ENOSPC) => Err(WaitError::WatchLimit {
                path: dir.to_owned(),
            }),
            Err(e) => Err(WaitError::Watch {
                path: dir.to_owned(),
                source: io_err(e),
            }),
        }
    }

    /// Stops watching `dir` (best effort: a directory that is gone is fine).
    pub fn remove(&self, dir: &Path) {
        let wd = self.book().wds.remove(dir);
        if let (Some(wd), Some(n)) = (wd, self.native.as_ref()) {
            let _ = n.fd.rm_watch(wd);
        }
    }

    /// Whether this watch polls instead of receiving events.
    pub fn is_polling(&self) -> bool {
        self.polling.load(Ordering::SeqCst)
    }

    /// How long a wait sleeps before rechecking without an event.
    pub fn tick(&self) -> Duration {
        if self.is_polling() {
            self.config.poll
        } else {
            NATIVE_RECHECK.max(self.config.poll)
        }
    }

    /// Starts keeping a journal of where events happen ([`Watch::take_changes`]).
    pub fn keep_journal(&self) {
        self.book().journal.get_or_insert_with(Changes::default);
    }

    /// Where events happened since the last call (everything, when the
    /// watch polls). Keeps the journal going.
    pub fn take_changes(&self) -> Changes {
        self.drain();
        let polling = self.is_polling();
        let mut book = self.book();
        let mut changes = book.journal.replace(Changes::default()).unwrap_or_default();
        changes.rescan |= polling;
        changes
    }

    /// The current generation (bumped by every event that can change a
    /// wait). Reads what the kernel has for us first.
    pub fn generation(&self) -> u64 {
        self.drain();
        self.shared.clock().generation
    }

    /// Wakes every waiter as if an event had arrived (used by callers that
    /// learn of a change another way, e.g. a child process exiting).
    pub fn poke(&self) {
        self.shared.bump();
        let private = self.lent().all.clone();
        for w in private {
            w.poke();
        }
    }

    /// Reads every pending event without blocking; bumps the generation
    /// (and fills the journal) if one can change a wait.
    fn drain(&self) {
        let Some(n) = self.native() else { return };
        let mut relevant = false;
        loop {
            match n.fd.read_events() {
                Ok(events) => relevant |= self.absorb(events),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => break,
                Err(e) => {
                    tracing::warn!("cannot read inotify events: {e}");
                    break;
                }
            }
        }
        if relevant {
            self.shared.bump();
        }
    }

    /// Books `events`; whether any can change a wait.
    fn absorb(&self, events: Vec<InotifyEvent>) -> bool {
        let mut book = self.book();
        let mut relevant = false;
        for ev in events {
            if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                relevant = true;
                if let Some(j) = book.journal.as_mut() {
                    j.rescan = true;
                }
                continue;
            }
            let dir = if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                // The directory is gone, or no longer watched.
                let dir = book.dirs.remove(&ev.wd);
                if let Some(d) = &dir {
                    if book.wds.get(d) == Some(&ev.wd) {
                        book.wds.remove(d);
                    }
                }
                dir
            } else {
                book.dirs.get(&ev.wd).cloned()
            };
            let name = ev.name.unwrap_or_default();
            if hidden_only(&name) {
                continue;
            }
            relevant = true;
            if let (Some(j), Some(dir)) = (book.journal.as_mut(), dir) {
                if j.entries.len() >= JOURNAL_MAX {
                    j.entries.clear();
                    j.rescan = true;
                } else if !j.rescan {
                    j.entries.push((dir, name));
                }
            }
        }
        relevant
    }
}

/// Events about a dot-file only: the temporaries of atomic writes, which
/// readers ignore by design (their rename into place names the new path,
/// which counts). [`probe_events`]'s file counts.
fn hidden_only(name: &std::ffi::OsStr) -> bool {
    !name.is_empty()
        && crate::layout::is_hidden(name)
        && !name.as_encoded_bytes().starts_with(PROBE_PREFIX.as_bytes())
}

impl Watch {
    /// Blocks until the generation differs from `seen` or `timeout` passes.
    ///
    /// One blocking waiter at a time reads the inotify descriptor (it
    /// sleeps in `poll(2)`); the others sleep until the generation changes
    /// or the reader hands over.
    pub fn wait_changed(&self, seen: u64, timeout: Duration) {
        let deadline = crate::time::deadline_after(Instant::now(), timeout);
        loop {
            self.drain();
            let handovers = {
                let c = self.shared.clock();
                if c.generation != seen {
                    return;
                }
                c.handovers
            };
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let left = deadline - now;
            match self.native() {
                Some(n) if !n.reading.swap(true, Ordering::SeqCst) => {
                    poll_readable(&n.fd, left);
                    n.reading.store(false, Ordering::SeqCst);
                    self.drain();
                    self.shared.handover();
                }
                _ => {
                    let c = self.shared.clock();
                    let _ = self.shared.cond.wait_timeout_while(c, left, |c| {
                        c.generation == seen && c.handovers == handovers
                    });
                }
            }
        }
    }

    /// Blocks until `check` returns `Some`, an error, or `deadline` passes.
    /// `check` runs once at once, then after every event and every tick.
    pub fn wait_until<T, E: From<WaitError>>(
        &self,
        what: &str,
        deadline: Option<Instant>,
        mut check: impl FnMut() -> Result<Option<T>, E>,
    ) -> Result<T, E> {
        let start = Instant::now();
        loop {
            let seen = self.generation();
            if let Some(v) = check()? {
                return Ok(v);
            }
            let now = Instant::now();
            let mut timeout = self.tick();
            if let Some(d) = deadline {
                if now >= d {
                    return Err(WaitError::Deadline {
                        what: what.to_owned(),
                        after: now - start,
                    }
                    .into());
                }
                timeout = timeout.min(d - now);
            }
            self.wait_changed(seen, timeout);
        }
    }

    /// The async form of [`Watch::wait_until`] (deadline in tokio time).
    pub async fn wait_until_async<T, E: From<WaitError>>(
        &self,
        what: &str,
        deadline: Option<tokio::time::Instant>,
        mut check: impl FnMut() -> Result<Option<T>, E>,
    ) -> Result<T, E> {
        let start = tokio::time::Instant::now();
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.drain();
            if let Some(v) = check()? {
                return Ok(v);
            }
            let now = tokio::time::Instant::now();
            let mut until = now + self.tick();
            if let Some(d) = deadline {
                if now >= d {
                    return Err(WaitError::Deadline {
                        what: what.to_owned(),
                        after: now - start,
                    }
                    .into());
                }
                until = until.min(d);
            }
            tokio::select! {
                _ = &mut notified => {}
                () = self.readable() => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Resolves when the generation differs from `seen` (an event since it
    /// was read), or after `timeout`.
    pub async fn wait_changed_async(&self, seen: u64, timeout: Duration) {
        let until = crate::time::tokio_deadline_after(tokio::time::Instant::now(), timeout);
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.generation() != seen {
                return;
            }
            tokio::select! {
                _ = &mut notified => {}
                () = self.readable() => {}
                _ = tokio::time::sleep_until(until) => return,
            }
        }
    }

    /// Resolves once the inotify descriptor had something to read (which
    /// is then read); never when the watch polls or runs outside tokio.
    async fn readable(&self) {
        let Some(n) = self.native() else {
            return std::future::pending().await;
        };
        let reactor = n.reactor.get_or_init(|| register(&n.fd));
        let Some(reactor) = reactor else {
            return std::future::pending().await;
        };
        match reactor.readable().await {
            Ok(mut guard) => {
                self.drain();
                // Everything pending was read: wait for the next edge.
                guard.clear_ready();
            }
            Err(_) => std::future::pending().await,
        }
    }
}

/// A duplicate of `fd` registered with the current tokio runtime's reactor,
/// if there is one with its IO driver (a runtime without it panics in
/// `register`: then the waits tick instead).
fn register(fd: &Inotify) -> Option<AsyncFd<OwnedFd>> {
    tokio::runtime::Handle::try_current().ok()?;
    let owned = fd.as_fd().try_clone_to_owned().ok()?;
    std::panic::catch_unwind(move || {
        // SAFETY: the AsyncFd owns `owned`, a descriptor of its own: it
        // stays open, and the same, for the AsyncFd's whole life.
        unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }.ok()
    })
    .ok()
    .flatten()
}

/// Sleeps until `fd` is readable or `timeout` passes.
fn poll_readable(fd: &Inotify, timeout: Duration) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms = u16::try_from(timeout.as_millis().max(1)).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let _ = poll(&mut fds, PollTimeout::from(ms));
}

/// Waits until `path` exists (blocking).
pub fn wait_for_file(
    watch: &Watch,
    path: &Path,
    deadline: Option<Instant>,
) -> Result<(), WaitError> {
    watch.wait_until(&path.display().to_string(), deadline, || {
        Ok::<_, WaitError>(path.exists().then_some(()))
    })
}

/// Whether inotify events actually arrive for `dir` (network and FUSE
/// filesystems often deliver none): writes a dot-file and waits up to
/// `timeout` for its event.
pub fn probe_events(dir: &Path, timeout: Duration) -> Result<bool, WaitError> {
    let watch = Watch::new(WatchConfig {
        mode: WatchMode::Native,
        poll: DEFAULT_POLL,
    })?;
    watch.add(dir)?;
    let seen = watch.generation();
    let probe = dir.join(format!("{PROBE_PREFIX}{}", std::process::id()));
    if std::fs::write(&probe, b"").is_err() {
        return Ok(false);
    }
    let deadline = crate::time::deadline_after(Instant::now(), timeout);
    while watch.generation() == seen && Instant::now() < deadline {
        watch.wait_changed(seen, deadline.saturating_duration_since(Instant::now()));
    }
    let _ = std::fs::remove_file(&probe);
    Ok(watch.generation() != seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn modes() -> [WatchConfig; 2] {
        [
            WatchConfig {
                mode: WatchMode::Native,
                poll: Duration::from_millis(5),
            },
            WatchConfig {
                mode: WatchMode::Poll,
                poll: Duration::from_millis(5),
            },
        ]
    }

    #[test]
    fn sees_a_flag_created_later() {
        for cfg in modes() {
            let dir = tempfile::tempdir().unwrap();
            let w = Watch::new(cfg).unwrap();
            w.add(dir.path()).unwrap();
            let flag = dir.path().join("start_flag");
            let f2 = flag.clone();
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                std::fs::write(f2, b"").unwrap();
            });
            wait_for_file(&w, &flag, Some(Instant::now() + Duration::from_secs(10))).unwrap();
            t.join().unwrap();
        }
    }

    /// A private watch hears only its own directories, and a poke of the
    /// watch it came from: one task's events do not wake another's waiter.
    #[test]
    fn a_private_watch_hears_its_own_directory_and_its_parents_pokes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let shared = Watch::new(WatchConfig::default()).unwrap();
        let own = shared.private().expect("an inotify instance");
        own.add(a.path()).unwrap();
        shared.add(b.path()).unwrap();
        let seen = settled(&own);
        std::fs::write(b.path().join("done_flag"), b"").unwrap();
        own.wait_changed(seen, Duration::from_millis(100));
        assert_eq!(own.generation(), seen, "woken by another directory");
        std::fs::write(a.path().join("done_flag"), b"").unwrap();
        own.wait_changed(seen, Duration::from_secs(10));
        let after = own.generation();
        assert_ne!(after, seen, "its own directory's event was missed");
        shared.poke();
        assert_ne!(
            own.generation(),
            after,
            "the parent's poke did not reach it"
        );
        drop(own);
        let again = shared.private().expect("an inotify instance");
        assert_eq!(
            shared.lent().all.len(),
            1,
            "a returned private watch is lent again, not remade"
        );
        drop(again);
    }

    #[test]
    fn a_polling_watch_has_no_private_ones() {
        let shared = Watch::new(WatchConfig {
            mode: WatchMode::Poll,
            poll: Duration::from_millis(5),
        })
        .unwrap();
        assert!(shared.private().is_none());
    }

    #[test]
    fn deadline_is_an_error_naming_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let w = Watch::new(WatchConfig::default()).unwrap();
        w.add(dir.path()).unwrap();
        let flag = dir.path().join("done_flag");
        let err = wait_for_file(&w, &flag, Some(Instant::now() + Duration::from_millis(50)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("timed out") && err.contains("done_flag"),
            "{err}"
        );
    }

    /// A flag created between arming the watch and checking for the file
    /// is not missed: the check runs after the generation is read, so the
    /// creation either shows in the check or bumps the generation.
    #[test]
    fn flag_created_between_arming_and_checking_is_seen() {
        for _ in 0..50 {
            let dir = tempfile::tempdir().unwrap();
            // A long tick: a missed event would show as a multi-second wait.
            let w = Watch::new(WatchConfig {
                mode: WatchMode::Native,
                poll: Duration::from_secs(30),
            })
            .unwrap();
            w.add(dir.path()).unwrap();
            let flag = dir.path().join("start_flag");
            let mut first = true;
            let start = Instant::now();
            w.wait_until(
                "start_flag",
                Some(Instant::now() + Duration::from_secs(20)),
                || {
                    if first {
                        // The race: the flag lands after the watch is armed and
                        // after this check looked.
                        first = false;
                        std::fs::write(&flag, b"").unwrap();
                        return Ok::<_, WaitError>(None);
                    }
                    Ok(flag.exists().then_some(()))
                },
            )
            .unwrap();
            assert!(start.elapsed() < Duration::from_secs(5), "event was missed");
        }
    }

    #[tokio::test]
    async fn async_wait_sees_events() {
        let dir = tempfile::tempdir().unwrap();
        let w = Arc::new(
            Watch::new(WatchConfig {
                mode: WatchMode::Native,
                poll: Duration::from_secs(30),
            })
            .unwrap(),
        );
        w.add(dir.path()).unwrap();
        let flag = dir.path().join("x");
        let f2 = flag.clone();
        let h = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            std::fs::write(f2, b"").unwrap();
        });
        let start = Instant::now();
        w.wait_until_async("x", None, || {
            Ok::<_, WaitError>(flag.exists().then_some(()))
        })
        .await
        .unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
        h.await.unwrap();
    }

    /// Temporaries, reads and in-place writes do not wake waiters; the
    /// rename into place and the close after writing do.
    #[test]
    fn only_events_that_can_change_a_wait_bump_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let w = Watch::new(WatchConfig {
            mode: WatchMode::Native,
            poll: Duration::from_secs(30),
        })
        .unwrap();
        w.add(dir.path()).unwrap();
        let seen = w.generation();
        let tmp = dir.path().join(".done_flag.1.0.tmp");
        std::fs::write(&tmp, b"{}").unwrap();
        std::fs::read(&tmp).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(w.generation(), seen, "a temporary woke the waiters");
        std::fs::rename(&tmp, dir.path().join("done_flag")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.generation() == seen && Instant::now() < deadline {
            w.wait_changed(seen, Duration::from_millis(100));
        }
        assert_ne!(w.generation(), seen, "the rename into place was missed");
        // A rename arrives as several events (from, to, both); let them all
        // land before checking that a read adds none.
        let seen = settled(&w);
        std::fs::read(dir.path().join("done_flag")).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(w.generation(), seen, "a read woke the waiters");
        std::fs::write(dir.path().join("progress"), b"1/2\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.generation() == seen && Instant::now() < deadline {
            w.wait_changed(seen, Duration::from_millis(100));
        }
        assert_ne!(w.generation(), seen, "a file written in place was missed");
    }

    /// The generation once no event has arrived for 200 ms.
    fn settled(w: &Watch) -> u64 {
        let mut last = w.generation();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = w.generation();
            if now == last {
                return now;
            }
            last = now;
        }
    }

    #[test]
    fn probe_sees_events_on_a_local_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(probe_events(dir.path(), Duration::from_secs(5)).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// The journal says where events happened; an overflow or polling says
    /// "everywhere".
    #[test]
    fn the_journal_names_the_directories_and_entries() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("t1");
        std::fs::create_dir(&sub).unwrap();
        let w = Watch::new(WatchConfig {
            mode: WatchMode::Native,
            poll: Duration::from_secs(30),
        })
        .unwrap();
        w.keep_journal();
        w.add(dir.path()).unwrap();
        w.add(&sub).unwrap();
        std::fs::create_dir(dir.path().join("t2")).unwrap();
        crate::atomic::touch_atomic(&sub.join("start_flag")).unwrap();
        let want = vec![
            (dir.path().to_owned(), OsString::from("t2")),
            (sub.clone(), OsString::from("start_flag")),
        ];
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < want.len() && Instant::now() < deadline {
            let seen = w.generation();
            got.extend(w.take_changes().entries);
            w.wait_changed(seen, Duration::from_millis(50));
        }
        assert_eq!(got, want, "the temporary of the atomic write is not in it");
        let p = Watch::new(WatchConfig {
            mode: WatchMode::Poll,
            poll: Duration::from_millis(5),
        })
        .unwrap();
        p.keep_journal();
        assert!(p.take_changes().rescan);
    }

    /// Many blocking waiters on one watch, with deadlines shorter and
    /// longer than each other's: the one reading the descriptor may leave,
    /// and an event still wakes the others at once.
    #[test]
    fn blocking_waiters_hand_the_reading_over() {
        let dir = tempfile::tempdir().unwrap();
        let w = Arc::new(
            Watch::new(WatchConfig {
                mode: WatchMode::Native,
                poll: Duration::from_secs(30),
            })
            .unwrap(),
        );
        w.add(dir.path()).unwrap();
        let seen = w.generation();
        let waiters: Vec<_> = (0..4)
            .map(|i| {
                let w = Arc::clone(&w);
                std::thread::spawn(move || {
                    // Waiter 0 leaves after 50 ms; the rest wait up to 20 s.
                    let limit = if i == 0 { 50 } else { 20_000 };
                    let t = Instant::now();
                    w.wait_changed(seen, Duration::from_millis(limit));
                    t.elapsed()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(dir.path().join("flag"), b"").unwrap();
        for (i, h) in waiters.into_iter().enumerate() {
            let took = h.join().unwrap();
            assert!(
                took < Duration::from_secs(5),
                "waiter {i} woke after {took:?}"
            );
        }
    }

    /// An async waiter is woken by the event itself, on the runtime's
    /// reactor: no thread reads for it.
    #[tokio::test(flavor = "current_thread")]
    async fn async_waiters_need_no_reader_thread() {
        let dir = tempfile::tempdir().unwrap();
        let w = Watch::new(WatchConfig {
            mode: WatchMode::Native,
            poll: Duration::from_secs(30),
        })
        .unwrap();
        w.add(dir.path()).unwrap();
        let seen = w.generation();
        let flag = dir.path().join("x");
        let f2 = flag.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(f2, b"").unwrap();
        });
        let t = Instant::now();
        w.wait_changed_async(seen, Duration::from_secs(20)).await;
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "woken by the tick, not the event"
        );
        assert!(flag.exists());
        writer.join().unwrap();
    }
}
