//! Liveness: the sidecar's heartbeat and the executor's lease.
//!
//! Both are the same mechanism. A writer rewrites a small file at a fixed
//! interval with an increasing sequence number; a [`Monitor`] on the other
//! side remembers when the content last *changed* on its own clock. Comparing
//! content rather than timestamps means clocks never need to agree (a
//! container and its host, or two machines sharing a network volume), and the
//! staleness rule is a pure function of the monitor's own instants, which
//! makes it testable with paused time.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::atomic::{write_atomic, write_atomic_beneath, AtomicError, Durability};
use crate::beneath::Beneath;
use crate::record::Timestamp;

/// The default interval between heartbeats (and lease renewals).
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);

/// The default staleness bound: a peer that has not beaten for this long is
/// taken for gone.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(5);

/// The content of `sidecar/heartbeat` and `executor/lease`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pulse {
    pub seq: u64,
    pub pid: u32,
    pub at: Timestamp,
}

/// The largest pulse file read: a pulse is a few dozen bytes.
const MAX_PULSE_BYTES: u64 = 4096;

/// Reads a pulse file safely (no links followed, no FIFO blocking, bounded).
pub fn read_pulse(path: &Path) -> Option<Vec<u8>> {
    crate::record::read_regular_bounded(path, MAX_PULSE_BYTES).ok()
}

/// [`read_pulse`] of a pulse on the volume `root`, resolved from the root
/// without following a link in any component (`sidecar/` included).
pub fn read_pulse_beneath(root: &Beneath, path: &Path) -> Option<Vec<u8>> {
    let file = root.open_regular(path).ok()?;
    crate::record::read_bounded(file, MAX_PULSE_BYTES).ok()
}

/// Writes one pulse.
///
/// Atomically when it can; when the volume is full (no block for a new
/// temporary), the pulse is rewritten in place: liveness only needs the
/// content to change, and a reader that catches a half-written pulse still
/// sees a change.
pub fn beat(path: &Path, seq: u64) -> Result<(), AtomicError> {
    let bytes = pulse_bytes(seq);
    match write_atomic(path, &bytes, Durability::Visible) {
        Ok(()) => Ok(()),
        Err(e) => {
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(path);
            f.and_then(|f| rewrite_in_place(f, &bytes)).map_err(|_| e)
        }
    }
}

/// [`beat`] on the volume `root`: the pulse's directory is resolved from
/// the root without following a link, so a `sidecar/` or `executor/`
/// swapped for a link is refused, never written through.
pub fn beat_beneath(root: &Beneath, path: &Path, seq: u64) -> Result<(), AtomicError> {
    let bytes = pulse_bytes(seq);
    match write_atomic_beneath(root, path, &bytes, Durability::Visible) {
        Ok(()) => Ok(()),
        Err(e @ AtomicError::Refused { .. }) => Err(e),
        Err(e) => {
            let flags = libc::O_WRONLY | libc::O_NONBLOCK;
            let f = root
                .parent(path)
                .and_then(|(dir, name)| dir.open_file(name, flags, 0));
            match f {
                Ok(f) => rewrite_in_place(f, &bytes).map_err(|_| e),
                Err(_) => Err(e),
            }
        }
    }
}

fn pulse_bytes(seq: u64) -> Vec<u8> {
    let pulse = Pulse {
        seq,
        pid: std::process::id(),
        at: Timestamp::now(),
    };
    serde_json::to_vec(&pulse).unwrap_or_default()
}

fn rewrite_in_place(mut f: std::fs::File, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if !f.metadata()?.file_type().is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    f.write_all(bytes)?;
    f.set_len(bytes.len() as u64)
}

/// [`beat`], recreating the pulse's directory when someone removed it.
fn beat_again(path: &Path, seq: u64) -> Result<(), AtomicError> {
    match beat(path, seq) {
        Err(_) if path.parent().is_some_and(|d| !d.exists()) => {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            beat(path, seq)
        }
        other => other,
    }
}

/// [`beat_beneath`], recreating the pulse's directory (on the volume,
/// never through a link) when someone removed it.
fn beat_again_beneath(root: &Beneath, path: &Path, seq: u64) -> Result<(), AtomicError> {
    match beat_beneath(root, path, seq) {
        Err(_) if path.parent().is_some_and(|d| !root.is_dir(d)) => {
            if let Some(dir) = path.parent() {
                let _ = root
                    .parent(dir)
                    .and_then(|(parent, name)| parent.mkdir(name, 0o755));
            }
            beat_beneath(root, path, seq)
        }
        other => other,
    }
}

/// Logs a failed beat once, not at every interval, and its recovery;
/// whether beating is failing now.
fn report(result: Result<(), AtomicError>, failing: bool) -> bool {
    match result {
        Ok(()) if failing => {
            tracing::info!("heartbeat written again");
            false
        }
        Ok(()) => false,
        Err(e) if !failing => {
            tracing::warn!("{e} (retried at every beat; logged again once it recovers)");
            true
        }
        Err(_) => true,
    }
}

/// A thread that beats at `interval` until dropped.
#[derive(Debug)]
pub struct Beater {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Beater {
    /// Beats once now (so the file exists when this returns), then every
    /// `interval` in a background thread. Errors after the first are logged
    /// and retried: a momentarily full volume must not kill liveness.
    pub fn start(path: PathBuf, interval: Duration) -> Result<Self, AtomicError> {
        Self::start_with(move |seq| beat_again(&path, seq), interval)
    }

    /// [`Beater::start`] for a pulse on the volume `root`, written through
    /// [`beat_beneath`]: never through a link.
    pub fn start_beneath(
        root: Beneath,
        path: PathBuf,
        interval: Duration,
    ) -> Result<Self, AtomicError> {
        Self::start_with(move |seq| beat_again_beneath(&root, &path, seq), interval)
    }

    fn start_with(
        beat: impl Fn(u64) -> Result<(), AtomicError> + Send + 'static,
        interval: Duration,
    ) -> Result<Self, AtomicError> {
        beat(0)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("sidecar-beat".into())
            .spawn(move || {
                let mut seq = 1;
                let mut failing = false;
                while !s.load(Ordering::SeqCst) {
                    std::thread::park_timeout(interval);
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    failing = report(beat(seq), failing);
                    seq += 1;
                }
            })
            .map_err(|source| AtomicError::Write {
                path: PathBuf::from("<beat thread>"),
                source,
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops beating (the file stays; it goes stale on its own).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for Beater {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a monitor concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// Unchanged (or missing) for `age`, longer than the bound.
    Stale {
        age: Duration,
        missing: bool,
    },
}

/// Watches a pulse file for change.
#[derive(Debug)]
pub struct Monitor {
    path: PathBuf,
    /// When set, the pulse is read through it ([`read_pulse_beneath`]).
    volume: Option<Beneath>,
    stale_after: Duration,
    last: Option<Vec<u8>>,
    last_change: Instant,
}

impl Monitor {
    /// Starts monitoring at `now`; the peer has `stale_after` from now to
    /// show a first (or changed) pulse.
    pub fn new(path: PathBuf, stale_after: Duration, now: Instant) -> Self {
        let last = read_pulse(&path);
        Self {
            path,
            volume: None,
            stale_after,
            last,
            last_change: now,
        }
    }

    /// Reads the pulse from the volume `root` without following a link in
    /// any component: a `sidecar/` swapped for a link reads as no pulse.
    pub fn beneath(mut self, root: Beneath) -> Self {
        self.last = read_pulse_beneath(&root, &self.path);
        self.volume = Some(root);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stale_after(&self) -> Duration {
        self.stale_after
    }

    /// Reads the file and judges liveness at `now`.
    pub fn observe(&mut self, now: Instant) -> Liveness {
        let current = match &self.volume {
            Some(root) => read_pulse_beneath(root, &self.path),
            None => read_pulse(&self.path),
        };
        self.observe_content(current, now)
    }

    /// The pure rule behind [`Monitor::observe`].
    pub fn observe_content(&mut self, current: Option<Vec<u8>>, now: Instant) -> Liveness {
        if current.is_some() && current != self.last {
            self.last = current;
            self.last_change = now;
            return Liveness::Alive;
        }
        let age = now.saturating_duration_since(self.last_change);
        if age > self.stale_after {
            Liveness::Stale {
                age,
                missing: current.is_none(),
            }
        } else {
            Liveness::Alive
        }
    }

    /// How long since the content last changed.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With paused tokio time the detection bound is exact: alive up to the
    /// bound, stale just past it, alive again when the pulse changes.
    #[tokio::test(start_paused = true)]
    async fn stale_heartbeat_detected_within_bound() {
        let dir = tempfile::tempdir().unwrap();
        let hb = dir.path().join("heartbeat");
        beat(&hb, 0).unwrap();
        let now = || tokio::time::Instant::now().into_std();
        let bound = Duration::from_secs(5);
        let mut m = Monitor::new(hb.clone(), bound, now());
        let mut seq = 1;
        // Beating every second: alive for a minute of (paused) time.
        for _ in 0..60 {
            tokio::time::advance(Duration::from_secs(1)).await;
            beat(&hb, seq).unwrap();
            seq += 1;
            assert_eq!(m.observe(now()), Liveness::Alive);
        }
        // The peer stops: alive until the bound, stale right after it.
        let stopped = now();
        let mut detected = None;
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(100)).await;
            if let Liveness::Stale { age, missing } = m.observe(now()) {
                assert!(!missing);
                assert!(age > bound);
                detected = Some(now() - stopped);
                break;
            }
        }
        let d = detected.expect("never detected");
        assert!(
            d > bound && d <= bound + Duration::from_millis(100),
            "{d:?}"
        );
        // It comes back.
        beat(&hb, seq).unwrap();
        assert_eq!(m.observe(now()), Liveness::Alive);
    }

    #[tokio::test(start_paused = true)]
    async fn missing_pulse_is_stale_after_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let now = || tokio::time::Instant::now().into_std();
        let mut m = Monitor::new(dir.path().join("lease"), Duration::from_secs(2), now());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(m.observe(now()), Liveness::Alive);
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(matches!(
            m.observe(now()),
            Liveness::Stale { missing: true, .. }
        ));
    }

    #[test]
    fn beater_beats_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let hb = dir.path().join("heartbeat");
        let mut b = Beater::start(hb.clone(), Duration::from_millis(5)).unwrap();
        let first = std::fs::read(&hb).unwrap();
        let p: Pulse = serde_json::from_slice(&first).unwrap();
        assert_eq!(p.pid, std::process::id());
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read(&hb).unwrap() == first {
            assert!(Instant::now() < deadline, "no second beat");
            std::thread::sleep(Duration::from_millis(1));
        }
        b.stop();
        let last = std::fs::read(&hb).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(std::fs::read(&hb).unwrap(), last);
    }
}
