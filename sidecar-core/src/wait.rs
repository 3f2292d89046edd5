//! Event-driven waiting for flags, with a polling fallback.
//!
//! A [`Watch`] owns one inotify instance (through `notify`) and any number
//! of watched directories. Every event bumps a generation counter and wakes
//! both blocking and async waiters. A wait reads the generation *before* it
//! checks its condition, so an event that lands between the check and the
//! sleep is never missed: this is what "the watch is armed before the
//! existence check" means in practice.
//!
//! When no watch can be set up (the inotify instance or watch limits are
//! exhausted, or the caller asks for it) the watch polls: waits then wake
//! every `poll` interval. Even with events, a wait rechecks its condition
//! every [`NATIVE_RECHECK`], so a lost event (queue overflow, a filesystem
//! that delivers none) costs latency, never a hang.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher as _};

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
        source: notify::Error,
    },
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

#[derive(Debug, Default)]
struct Shared {
    generation: Mutex<u64>,
    cond: Condvar,
    notify: tokio::sync::Notify,
}

impl Shared {
    fn bump(&self) {
        if let Ok(mut g) = self.generation.lock() {
            *g = g.wrapping_add(1);
        }
        self.cond.notify_all();
        self.notify.notify_waiters();
    }
    fn get(&self) -> u64 {
        self.generation.lock().map(|g| *g).unwrap_or(0)
    }
}

/// A set of watched directories and the waits on them.
pub struct Watch {
    shared: Arc<Shared>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    polling: AtomicBool,
    config: WatchConfig,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("polling", &self.is_polling())
            .field("config", &self.config)
            .finish()
    }
}

/// The name prefix of [`probe_events`]'s file: a dot-file whose events
/// must still count.
const PROBE_PREFIX: &str = ".sidecar-probe.";

/// Whether an event can change what a wait checks: an entry created,
/// removed or renamed, or a file closed after writing (for writers that do
/// not rename into place). Everything else only made every waiter on the
/// directory run its check again, several times per flag written:
///
/// * opens and read-only closes are every reader's own footprint (each
///   check that reads a flag opens it);
/// * data and metadata changes come in bursts (one per `write`); a file
///   written in place is complete at its close, which does count;
/// * events about dot-files only: those are the temporaries of atomic
///   writes, which readers ignore by design; their rename into place counts
///   (the event names the new path too).
fn can_change_a_wait(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    let kind_counts = !matches!(
        event.kind,
        EventKind::Access(AccessKind::Open(_))
            | EventKind::Access(AccessKind::Close(AccessMode::Read))
            | EventKind::Modify(ModifyKind::Metadata(_))
            | EventKind::Modify(ModifyKind::Data(_))
    );
    let hidden_only = !event.paths.is_empty()
        && event.paths.iter().all(|p| {
            p.file_name().is_some_and(|n| {
                crate::layout::is_hidden(n)
                    && !n.as_encoded_bytes().starts_with(PROBE_PREFIX.as_bytes())
            })
        });
    kind_counts && !hidden_only
}

fn classify(path: &Path, source: notify::Error) -> WaitError {
    match &source.kind {
        notify::ErrorKind::MaxFilesWatch => WaitError::WatchLimit {
            path: path.to_owned(),
        },
        notify::ErrorKind::Io(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
            WaitError::WatchLimit {
                path: path.to_owned(),
            }
        }
        notify::ErrorKind::Io(e)
            if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) =>
        {
            WaitError::TooManyInstances { source }
        }
        _ => WaitError::Watch {
            path: path.to_owned(),
            source,
        },
    }
}

impl Watch {
    /// Starts a watch with no directories yet.
    pub fn new(config: WatchConfig) -> Result<Self, WaitError> {
        let shared = Arc::new(Shared::default());
        let watcher = if config.mode == WatchMode::Poll {
            None
        } else {
            let s = Arc::clone(&shared);
            let handler = move |res: notify::Result<notify::Event>| {
                if res.as_ref().map_or(true, can_change_a_wait) {
                    s.bump();
                }
            };
            match notify::recommended_watcher(handler) {
                Ok(w) => Some(w),
                Err(e) => {
                    let err = classify(Path::new("."), e);
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
            polling: AtomicBool::new(watcher.is_none()),
            watcher: Mutex::new(watcher),
            shared,
            config,
        })
    }

    /// Watches `dir` (and, if `recursive`, its subdirectories as they appear).
    pub fn add(&self, dir: &Path, recursive: bool) -> Result<(), WaitError> {
        let Ok(mut guard) = self.watcher.lock() else {
            return Ok(());
        };
        let Some(w) = guard.as_mut() else {
            return Ok(());
        };
        let mode = if recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        match w.watch(dir, mode) {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = classify(dir, e);
                if self.config.mode == WatchMode::Native {
                    return Err(err);
                }
                tracing::warn!(
                    "{err}; falling back to polling every {:?}",
                    self.config.poll
                );
                *guard = None;
                self.polling.store(true, Ordering::SeqCst);
                Ok(())
            }
        }
    }

    /// Stops watching `dir` (best effort: a directory that is gone is fine).
    pub fn remove(&self, dir: &Path) {
        if let Ok(mut guard) = self.watcher.lock() {
            if let Some(w) = guard.as_mut() {
                let _ = w.unwatch(dir);
            }
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

    /// The current generation (bumped by every event).
    pub fn generation(&self) -> u64 {
        self.shared.get()
    }

    /// Blocks until the generation differs from `seen` or `timeout` passes.
    pub fn wait_changed(&self, seen: u64, timeout: Duration) {
        let Ok(g) = self.shared.generation.lock() else {
            std::thread::sleep(timeout);
            return;
        };
        let _ = self
            .shared
            .cond
            .wait_timeout_while(g, timeout, |g| *g == seen);
    }

    /// Wakes every waiter as if an event had arrived (used by callers that
    /// learn of a change another way, e.g. a child process exiting).
    pub fn poke(&self) {
        self.shared.bump();
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
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Resolves at the next event or after `timeout`, whichever comes first.
    pub async fn changed(&self, timeout: Duration) {
        let notified = self.shared.notify.notified();
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(timeout) => {}
        }
    }
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
    watch.add(dir, false)?;
    let seen = watch.generation();
    let probe = dir.join(format!("{PROBE_PREFIX}{}", std::process::id()));
    if std::fs::write(&probe, b"").is_err() {
        return Ok(false);
    }
    let deadline = Instant::now() + timeout;
    while watch.generation() == seen && Instant::now() < deadline {
        watch.wait_changed(seen, deadline.saturating_duration_since(Instant::now()));
    }
    let _ = std::fs::remove_file(&probe);
    Ok(watch.generation() != seen)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            w.add(dir.path(), false).unwrap();
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

    #[test]
    fn deadline_is_an_error_naming_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let w = Watch::new(WatchConfig::default()).unwrap();
        w.add(dir.path(), false).unwrap();
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
            w.add(dir.path(), false).unwrap();
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
        w.add(dir.path(), false).unwrap();
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
        w.add(dir.path(), false).unwrap();
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
}
