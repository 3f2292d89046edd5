//! The handshake: start flag written to done flag seen, through the
//! product's own code on both sides, beside the same round trip through
//! bare inotify.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use sidecar_core::atomic;
use sidecar_core::files::{ExecutorFlags, FileFlags, Stop, TaskFiles};
use sidecar_core::protocol::{self, Finish, NoopRunner};
use sidecar_core::wait::{WaitError, Watch, WatchConfig, WatchMode};
use sidecar_core::{TaskId, TaskSpec, Volume};

use super::peers::{os, PeerProc};
use super::stats::Samples;
use super::{PEER_READY, STEP_DEADLINE};

fn task_id(i: usize) -> anyhow::Result<TaskId> {
    Ok(TaskId::new(format!("bench-{i}"))?)
}

/// The executor side: `n` round trips against a `noop` peer; the samples are
/// start-flag-written -> done-flag-seen-and-parsed, through the product's
/// own executor-side flags ([`ExecutorFlags`]) and [`Watch`].
pub fn handshake(dir: &Path, log: &Path, n: usize, cfg: WatchConfig) -> anyhow::Result<Samples> {
    let volume = Volume::new(dir);
    std::fs::create_dir_all(volume.tasks_dir())?;
    let mut args = vec![
        os("--peer"),
        os("noop"),
        os("--volume"),
        os(dir),
        os("--tasks"),
        os(n.to_string()),
    ];
    if cfg.mode == WatchMode::Poll {
        args.push(os("--peer-poll"));
    }
    let mut peer = PeerProc::spawn("noop", &args, Stdio::null(), log)?;
    peer.wait_ready(&dir.join(PEER_READY))?;

    let watch = Watch::new(cfg)?;
    watch.add(&volume.tasks_dir())?;
    let spec = TaskSpec::default();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let task = volume.task(&task_id(i)?);
        std::fs::create_dir(task.root())?;
        watch.add(task.root())?;
        let flags = ExecutorFlags::new(task.clone());
        let t0 = Instant::now();
        flags.start(&spec)?;
        let outcome = watch
            .wait_until("done_flag", Some(t0 + STEP_DEADLINE), || flags.outcome())
            .with_context(|| format!("round trip {i}"))?;
        samples.push(t0.elapsed());
        ensure!(
            outcome.succeeded(),
            "round trip {i}: the no-op task did not succeed: {outcome:?}"
        );
        watch.remove(task.root());
        flags.close()?;
        let root = task.root().to_owned();
        watch
            .wait_until(
                "task directory removal",
                Some(Instant::now() + STEP_DEADLINE),
                || Ok::<_, WaitError>((!root.exists()).then_some(())),
            )
            .with_context(|| format!("round trip {i}: the peer did not remove the task"))?;
        if i % 256 == 0 {
            peer.check_alive()?;
        }
    }
    peer.finish()?;
    Ok(Samples::new(samples))
}

/// The sidecar side of [`handshake`]: the product's own driver and
/// file-backed flags ([`protocol::drive`] over [`FileFlags`]) on a tokio
/// runtime, as the entrypoint runs them, with a no-op runner.
pub fn peer_noop(dir: &Path, n: usize, cfg: WatchConfig) -> anyhow::Result<()> {
    let volume = Volume::new(dir);
    let watch = Arc::new(Watch::new(cfg)?);
    watch.add(&volume.tasks_dir())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    atomic::touch_atomic(&dir.join(PEER_READY))?;
    rt.block_on(async {
        for i in 0..n {
            let id = task_id(i)?;
            let task = volume.task(&id);
            let root = task.root().to_owned();
            let deadline = tokio::time::Instant::now() + STEP_DEADLINE;
            watch
                .wait_until_async("the next task directory", Some(deadline), || {
                    Ok::<_, WaitError>(root.is_dir().then_some(()))
                })
                .await?;
            // Armed before the flags are looked at: nothing is missed.
            watch.add(&root)?;
            let flags = FileFlags::new(TaskFiles::serve(&task), Arc::clone(&watch), Stop::never());
            match protocol::drive(&id, &flags, &NoopRunner, &flags).await? {
                Finish::Done { outcome, .. } if outcome.succeeded() => {}
                other => bail!("{id}: {other:?}"),
            }
        }
        Ok(())
    })
}

/// A raw inotify instance on one directory, reporting created names.
struct RawInotify {
    fd: OwnedFd,
    buf: Vec<u8>,
    pending: std::collections::VecDeque<Vec<u8>>,
}

impl std::fmt::Debug for RawInotify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawInotify")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

impl RawInotify {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        // SAFETY: inotify_init1 takes flags only; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("inotify_init1");
        }
        // SAFETY: fd is a fresh descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
        // SAFETY: c is a valid NUL-terminated path for the call's duration.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                c.as_ptr(),
                libc::IN_CREATE | libc::IN_MOVED_TO,
            )
        };
        if wd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("inotify_add_watch {}", dir.display()));
        }
        Ok(Self {
            fd,
            buf: vec![0u8; 64 * 1024],
            pending: Default::default(),
        })
    }

    /// The next created name (blocking).
    fn next(&mut self) -> anyhow::Result<Vec<u8>> {
        loop {
            if let Some(n) = self.pending.pop_front() {
                return Ok(n);
            }
            // SAFETY: buf is valid for buf.len() bytes of writes.
            let k = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                )
            };
            if k < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("reading inotify events");
            }
            let k = k as usize;
            let head = std::mem::size_of::<libc::inotify_event>();
            let mut off = 0;
            while off + head <= k {
                // SAFETY: the kernel wrote a whole event header at off.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(self.buf.as_ptr().add(off).cast()) };
                let name = &self.buf[off + head..(off + head + ev.len as usize).min(k)];
                let name = name.split(|b| *b == 0).next().unwrap_or_default();
                if !name.is_empty() {
                    self.pending.push_back(name.to_vec());
                }
                off += head + ev.len as usize;
            }
        }
    }

    fn wait_for(&mut self, want: &[u8]) -> anyhow::Result<()> {
        loop {
            if self.next()? == want {
                return Ok(());
            }
        }
    }
}

pub fn raw_round_trips(dir: &Path, log: &Path, n: usize) -> anyhow::Result<Samples> {
    let ping = dir.join("ping");
    let pong = dir.join("pong");
    std::fs::create_dir_all(&ping)?;
    std::fs::create_dir_all(&pong)?;
    let mut ino = RawInotify::new(&pong)?;
    let args = [
        os("--peer"),
        os("raw-inotify"),
        os("--volume"),
        os(dir),
        os("--tasks"),
        os(n.to_string()),
    ];
    let mut peer = PeerProc::spawn("raw-inotify", &args, Stdio::null(), log)?;
    peer.wait_ready(&dir.join(PEER_READY))?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("f{i}");
        let t0 = Instant::now();
        File::create(ping.join(&name))?;
        ino.wait_for(name.as_bytes())?;
        samples.push(t0.elapsed());
    }
    peer.finish()?;
    Ok(Samples::new(samples))
}

pub fn peer_raw(dir: &Path, n: usize) -> anyhow::Result<()> {
    let ping = dir.join("ping");
    let pong = dir.join("pong");
    let mut ino = RawInotify::new(&ping)?;
    atomic::touch_atomic(&dir.join(PEER_READY))?;
    for _ in 0..n {
        let name = ino.next()?;
        File::create(pong.join(OsStr::from_bytes(&name)))?;
    }
    Ok(())
}
