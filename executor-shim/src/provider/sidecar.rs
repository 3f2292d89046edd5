//! The handle on the one sidecar serving an executor volume.
//!
//! [`Sidecar::start`] takes one of three roles:
//!
//! * **attach** ([`Provider::Attach`]): the sidecar runs elsewhere (the
//!   pod's sidecar container); wait for it, renew the lease, never stop it.
//! * **join**: a sidecar another handle of this executor started is live
//!   (it has users, its process or container runs, its heartbeat changes):
//!   share it; the last user stops it.
//! * **launch**: nothing live serves the volume: stop what an orphan may
//!   have left, start a child process or a container, wait until it is
//!   ready. A launch that fails stops what it started.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use sidecar_core::atomic;
use sidecar_core::liveness::{read_pulse_beneath, Beater};
use sidecar_core::record::{read_flag_beneath, RecordError};
use sidecar_core::wait::{Watch, WatchConfig, DEFAULT_POLL};
use sidecar_core::{Ready, Volume};

use super::locks::{self, OwnerRecord};
use super::{docker, process, Provider, ProviderKind, SidecarOptions};
use crate::client::{self, Health, SidecarProbe, TaskContext, TaskReport, TaskRequest};
use crate::error::ShimError;

/// How a sidecar this handle may have to stop is stopped.
#[derive(Debug)]
enum Stopper {
    /// Our own child process.
    Child(Arc<process::ChildProbe>),
    /// A process another handle started.
    Pid(u32),
    /// A container.
    Container { cli: String, name: String },
    /// Nothing known (an owner record that was unreadable).
    Unknown,
}

impl Stopper {
    fn from_record(record: &OwnerRecord) -> Self {
        match (&record.container, record.pid) {
            (Some(name), _) => Stopper::Container {
                cli: record.cli.clone().unwrap_or_else(|| "docker".into()),
                name: name.clone(),
            },
            (None, Some(pid)) => Stopper::Pid(pid),
            (None, None) => Stopper::Unknown,
        }
    }

    /// Once the root close flag is up: waits for the sidecar to exit,
    /// escalating as its kind allows.
    fn stop(&self, volume: &Volume, grace: Duration) -> Result<(), ShimError> {
        match self {
            Stopper::Child(child) => child.stop(grace, volume.root()),
            Stopper::Pid(pid) => {
                process::stop_pid(*pid, grace);
                Ok(())
            }
            Stopper::Container { cli, name } => {
                docker::stop(cli, name);
                Ok(())
            }
            Stopper::Unknown => Ok(()),
        }
    }

    /// Whether the sidecar it stops is still there (unknown: assume so).
    fn running(&self) -> bool {
        match self {
            Stopper::Child(child) => child.exited().is_none(),
            Stopper::Pid(pid) => process::pid_alive(*pid) && process::is_entrypoint(*pid),
            Stopper::Container { cli, name } => {
                docker::DockerProbe::new(cli, name).exited().is_none()
            }
            Stopper::Unknown => true,
        }
    }
}

/// What this handle is to the sidecar.
#[derive(Debug)]
enum Role {
    /// Attached to a sidecar someone else runs (never stopped by us).
    Attached,
    /// Started by another handle of this executor; the last user stops it.
    Joined(Stopper),
    /// Started by this handle.
    Launched(Stopper),
}

/// A handle on the one sidecar serving an executor volume. `Sync`: share
/// it (or start more handles on the same volume) across threads.
#[derive(Debug)]
pub struct Sidecar {
    volume: Volume,
    opts: SidecarOptions,
    watch: Watch,
    ready: Ready,
    role: Role,
    health: Health,
    /// The shared lock every user holds (none when attached).
    users: Option<File>,
    lease: Mutex<Option<Beater>>,
    stopped: AtomicBool,
}

impl Sidecar {
    /// Starts (or attaches to, or joins) the sidecar serving `volume`, and
    /// returns once it is ready.
    pub fn start(
        volume: &Path,
        provider: Provider,
        opts: SidecarOptions,
    ) -> Result<Self, ShimError> {
        let vol = Volume::new(volume);
        std::fs::create_dir_all(vol.executor_dir()).map_err(ShimError::io(vol.executor_dir()))?;
        let watch = Watch::new(WatchConfig {
            mode: opts.watch,
            poll: opts.poll.unwrap_or(DEFAULT_POLL),
        })?;
        if provider == Provider::Attach {
            return Self::attach(vol, watch, opts);
        }
        let wait = opts.ready_timeout.saturating_add(Duration::from_secs(10));
        let start_lock = locks::lock_file(&vol.start_lock(), libc::LOCK_EX, wait)?;
        let users = locks::open_unlocked(&vol.users_lock())?;
        if let Some(ready) = live_sidecar(&vol, &opts, &users) {
            locks::flock(&users, libc::LOCK_SH, wait, &vol.users_lock())?;
            let lease = Beater::start_beneath(vol.beneath(), vol.lease(), opts.lease_interval)?;
            let record = OwnerRecord::read(&vol).unwrap_or_default();
            tracing::info!(
                "joining the sidecar (pid {}) already serving {}",
                ready.pid,
                volume.display()
            );
            let health = Health::new(&vol, opts.stale_after, None);
            let role = Role::Joined(Stopper::from_record(&record));
            return Ok(Self::assemble(
                vol,
                opts,
                watch,
                ready,
                role,
                health,
                Some(users),
                lease,
            ));
        }
        Self::launch(vol, watch, opts, &provider, start_lock, users)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        volume: Volume,
        opts: SidecarOptions,
        watch: Watch,
        ready: Ready,
        role: Role,
        health: Health,
        users: Option<File>,
        lease: Beater,
    ) -> Self {
        Self {
            volume,
            opts,
            watch,
            ready,
            role,
            health,
            users,
            lease: Mutex::new(Some(lease)),
            stopped: AtomicBool::new(false),
        }
    }

    fn attach(vol: Volume, watch: Watch, opts: SidecarOptions) -> Result<Self, ShimError> {
        let lease = Beater::start_beneath(vol.beneath(), vol.lease(), opts.lease_interval)?;
        let health = Health::new(&vol, opts.stale_after, None);
        let ready = wait_ready(&vol, &watch, &opts, None, false)?;
        Ok(Self::assemble(
            vol,
            opts,
            watch,
            ready,
            Role::Attached,
            health,
            None,
            lease,
        ))
    }

    /// Starts a sidecar on a volume nothing live serves (the start lock
    /// held); stops it again if it never becomes ready.
    fn launch(
        vol: Volume,
        watch: Watch,
        opts: SidecarOptions,
        provider: &Provider,
        start_lock: File,
        users: File,
    ) -> Result<Self, ShimError> {
        clear_leftovers(&vol, &opts);
        // The lease is fresh before the sidecar starts watching it.
        let lease = Beater::start_beneath(vol.beneath(), vol.lease(), opts.lease_interval)?;
        let launched = Launched::spawn(&vol, &opts, provider)?;
        let health = Health::new(&vol, opts.stale_after, Some(launched.probe()));
        let ready = wait_ready(&vol, &watch, &opts, Some(launched.probe()), true)?;
        locks::flock(&users, libc::LOCK_SH, opts.ready_timeout, &vol.users_lock())?;
        launched.record.write(&vol)?;
        drop(start_lock);
        let role = Role::Launched(launched.keep());
        Ok(Self::assemble(
            vol,
            opts,
            watch,
            ready,
            role,
            health,
            Some(users),
            lease,
        ))
    }

    pub fn volume(&self) -> &Volume {
        &self.volume
    }

    /// The sidecar's ready record.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    pub fn options(&self) -> &SidecarOptions {
        &self.opts
    }

    /// Whether this handle started the sidecar.
    pub fn is_owner(&self) -> bool {
        matches!(self.role, Role::Launched(_))
    }

    /// Whether the handle is open and its sidecar may be alive (it has not
    /// exited, its heartbeat is not stale): checked before a task, so a
    /// sidecar that died between tasks can be replaced first.
    pub fn is_alive(&self) -> bool {
        !self.stopped.load(Ordering::SeqCst) && self.health.check().is_ok()
    }

    /// Wakes every task of this handle that waits, so that it looks at its
    /// state now (a [`client::CancelToken`] just cancelled, say).
    pub fn wake(&self) {
        self.watch.poke();
    }

    /// The task context for [`client::run_task`].
    pub fn context(&self) -> TaskContext<'_> {
        TaskContext {
            volume: &self.volume,
            watch: &self.watch,
            health: &self.health,
        }
    }

    /// Runs one task (see [`client::run_task`]); many threads may run tasks
    /// on one handle at once. A request without a timeout gets the options'
    /// `task_timeout`.
    pub fn run_task<I>(
        &self,
        request: &TaskRequest,
        schema: SchemaRef,
        input: I,
        expected_output: Option<SchemaRef>,
        sink: &mut dyn FnMut(RecordBatch) -> Result<(), ShimError>,
    ) -> Result<TaskReport, ShimError>
    where
        I: Iterator<Item = Result<RecordBatch, ArrowError>> + Send,
    {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(ShimError::Invalid(
                "the sidecar handle has been shut down".into(),
            ));
        }
        let mut request = request.clone();
        if request.timeout.is_none() {
            request.timeout = self.opts.task_timeout;
        }
        client::run_task(
            &self.context(),
            &request,
            schema,
            input,
            expected_output,
            sink,
        )
    }

    /// Stops the sidecar if this is its last user: the root close flag
    /// (drain, exit 0), then `SIGTERM`/`SIGKILL` or `docker rm -f` if it
    /// does not exit in time. Attached handles only stop renewing the lease.
    pub fn shutdown(self) -> Result<(), ShimError> {
        self.stop()
    }

    fn stop(&self) -> Result<(), ShimError> {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let result = match &self.role {
            Role::Attached => Ok(()),
            Role::Joined(stopper) | Role::Launched(stopper) => self.stop_if_last(stopper),
        };
        let lease = self
            .lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut lease) = lease {
            lease.stop();
        }
        result
    }

    fn stop_if_last(&self, stopper: &Stopper) -> Result<(), ShimError> {
        // Serialised with starts: nobody joins while we decide.
        let _start_lock = locks::lock_file(
            &self.volume.start_lock(),
            libc::LOCK_EX,
            Duration::from_secs(10),
        )
        .map_err(|e| tracing::warn!("{e}; deciding without it"))
        .ok();
        // Upgrading our shared lock succeeds only if no one else holds one.
        let last = self
            .users
            .as_ref()
            .is_none_or(|u| locks::try_flock(u, libc::LOCK_EX | libc::LOCK_NB));
        if !last {
            tracing::info!(
                "the sidecar on {} has other users; leaving it running",
                self.volume.root().display()
            );
            if let Stopper::Child(child) = stopper {
                child.detach();
            }
            return Ok(());
        }
        stop_sidecar(&self.volume, stopper, self.opts.grace())
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(
                "stopping the sidecar on {}: {e}",
                self.volume.root().display()
            );
        }
    }
}

/// The root close flag (drain, exit 0), then whatever `stopper` escalates
/// to; the ready record and the owner record go with the sidecar.
fn stop_sidecar(vol: &Volume, stopper: &Stopper, grace: Duration) -> Result<(), ShimError> {
    let closed = atomic::touch_atomic(&vol.close_flag());
    let result = stopper.stop(vol, grace);
    let _ = std::fs::remove_file(vol.ready());
    OwnerRecord::remove(vol);
    closed?;
    result
}

/// Removes the volume at `dir` if what it served is gone for good: no
/// executor-side user holds or is taking its sidecar, and the sidecar its
/// owner record names no longer runs. This is how the volume of a dead
/// executor is reclaimed (its sidecar exits on its own as soon as its users
/// are gone: `--exit-on-orphan`). Returns whether it was removed; a volume
/// in use, or with nothing that says it was a launched sidecar's, is left
/// alone.
pub fn reclaim(dir: &Path) -> Result<bool, ShimError> {
    let vol = Volume::new(dir);
    if !vol.users_lock().is_file() || !sidecar_core::owner::users_gone(&vol) {
        return Ok(false);
    }
    if OwnerRecord::read(&vol).is_some_and(|r| Stopper::from_record(&r).running()) {
        return Ok(false);
    }
    std::fs::remove_dir_all(dir).map_err(ShimError::io(dir))?;
    Ok(true)
}

/// Stops what an orphaned sidecar of an earlier handle may still run, and
/// clears what a dead one left, so that its ready record is not mistaken
/// for the new one's and its close flag does not stop the new one at once.
fn clear_leftovers(vol: &Volume, opts: &SidecarOptions) {
    if let Some(record) = OwnerRecord::read(vol) {
        let orphan = Stopper::from_record(&record);
        if !matches!(orphan, Stopper::Unknown) && orphan.running() {
            tracing::info!("stopping the orphaned sidecar on {}", vol.root().display());
            let _ = stop_sidecar(vol, &orphan, opts.grace());
        }
    }
    // From the volume root: a `sidecar/` swapped for a link is refused,
    // and nothing behind it is removed.
    let beneath = vol.beneath();
    for stale in [vol.ready(), vol.heartbeat(), vol.close_flag()] {
        let _ = beneath.remove_all(&stale);
    }
}

/// A sidecar this handle started, stopped again when dropped unless kept.
#[derive(Debug)]
struct Launched {
    record: OwnerRecord,
    stopper: Option<Stopper>,
    probe: Arc<dyn SidecarProbe>,
    volume: Volume,
    grace: Duration,
}

impl Launched {
    fn spawn(vol: &Volume, opts: &SidecarOptions, provider: &Provider) -> Result<Self, ShimError> {
        let (record, stopper, probe): (_, _, Arc<dyn SidecarProbe>) = match provider {
            Provider::Attach => {
                return Err(ShimError::Invalid(
                    "an attached sidecar is not launched".into(),
                ))
            }
            Provider::Process(p) => {
                std::fs::create_dir_all(vol.sidecar_dir())
                    .map_err(ShimError::io(vol.sidecar_dir()))?;
                let child = process::spawn(vol, opts, p)?;
                let record = OwnerRecord {
                    provider: ProviderKind::Process.name().into(),
                    pid: Some(child.id()),
                    ..Default::default()
                };
                let probe = Arc::new(process::ChildProbe::new(child, vol.root().to_owned()));
                (record, Stopper::Child(Arc::clone(&probe)), probe)
            }
            Provider::Docker(d) => {
                open_up(vol)?;
                let name = format!("sidecar-{}", client::random_nonce().to_ascii_lowercase());
                docker::run(vol, opts, d, &name)?;
                let record = OwnerRecord {
                    provider: ProviderKind::Docker.name().into(),
                    container: Some(name.clone()),
                    cli: Some(d.cli.clone()),
                    ..Default::default()
                };
                let probe = Arc::new(docker::DockerProbe::new(&d.cli, &name));
                let stopper = Stopper::from_record(&record);
                (record, stopper, probe)
            }
        };
        Ok(Self {
            record,
            stopper: Some(stopper),
            probe,
            volume: vol.clone(),
            grace: opts.grace(),
        })
    }

    fn probe(&self) -> Arc<dyn SidecarProbe> {
        Arc::clone(&self.probe)
    }

    /// Keeps the sidecar running: its stopper, for the last user.
    fn keep(mut self) -> Stopper {
        self.stopper.take().unwrap_or(Stopper::Unknown)
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if let Some(stopper) = self.stopper.take() {
            if let Err(e) = stop_sidecar(&self.volume, &stopper, self.grace) {
                tracing::warn!("stopping the sidecar that never became ready: {e}");
            }
        }
    }
}

/// The container's user must be able to write its heartbeat and the
/// tasks' outputs: open up what we own.
fn open_up(vol: &Volume) -> Result<(), ShimError> {
    use std::os::unix::fs::PermissionsExt;
    for dir in [vol.root().to_owned(), vol.sidecar_dir(), vol.tasks_dir()] {
        std::fs::create_dir_all(&dir).map_err(ShimError::io(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .map_err(ShimError::io(&dir))?;
    }
    Ok(())
}

/// Waits for `sidecar/ready`, bounded by the ready timeout and, if given,
/// the probe. A `fresh` start (this handle cleared the old record) takes
/// the first record that parses; otherwise the heartbeat must also be seen
/// to change, or the record is a dead sidecar's leftover.
fn wait_ready(
    vol: &Volume,
    watch: &Watch,
    opts: &SidecarOptions,
    probe: Option<Arc<dyn SidecarProbe>>,
    fresh: bool,
) -> Result<Ready, ShimError> {
    let start = Instant::now();
    // The sidecar directory if it exists, else the volume root (the
    // sidecar creates its directory).
    let sidecar_dir = vol.sidecar_dir();
    let watched = if sidecar_dir.is_dir() {
        sidecar_dir.clone()
    } else {
        vol.root().to_owned()
    };
    watch.add(&watched)?;
    let path = vol.ready();
    let beneath = vol.beneath();
    let first = read_pulse_beneath(&beneath, &vol.heartbeat());
    let not_ready = |detail: String| ShimError::NotReady {
        volume: vol.root().to_owned(),
        waited: start.elapsed(),
        detail,
    };
    let result = watch.wait_until(
        &path.display().to_string(),
        Some(start + opts.ready_timeout),
        || {
            if let Some(ready) = read_ready(vol, &path)? {
                let changed = read_pulse_beneath(&beneath, &vol.heartbeat())
                    .is_some_and(|p| Some(&p) != first.as_ref());
                if fresh || changed {
                    return Ok(Some(ready));
                }
                // The protocol's liveness rule: unchanged content for the
                // staleness bound, on this side's clock.
                if start.elapsed() > opts.stale_after {
                    return Err(not_ready(format!(
                        "{} is there but {} has not changed for {:.1}s: a dead sidecar's leftovers?",
                        path.display(),
                        vol.heartbeat().display(),
                        opts.stale_after.as_secs_f64()
                    )));
                }
            }
            if let Some(status) = probe.as_ref().and_then(|p| p.exited()) {
                return Err(ShimError::SidecarExited {
                    volume: vol.root().to_owned(),
                    status,
                });
            }
            // The sidecar directory may have just appeared: watch it too.
            if sidecar_dir.is_dir() {
                let _ = watch.add(&sidecar_dir);
            }
            Ok::<_, ShimError>(None)
        },
    );
    watch.remove(&watched);
    watch.remove(&sidecar_dir);
    result.map_err(|e| match e {
        ShimError::Wait(_) => not_ready(format!("waited for {}", path.display())),
        e => e,
    })
}

/// The ready record, if there is one yet; read from the volume root,
/// never through a link.
fn read_ready(vol: &Volume, path: &Path) -> Result<Option<Ready>, ShimError> {
    match read_flag_beneath(&vol.beneath(), path, "ready record") {
        Ok(bytes) => Ok(Some(Ready::parse(&bytes, path)?)),
        Err(RecordError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The ready record of a sidecar that is live on `vol` for this executor:
/// it has users (a sidecar without any is orphaned and on its way out),
/// its process or container runs, its ready record parses, and its
/// heartbeat is seen to change within the staleness bound.
fn live_sidecar(vol: &Volume, opts: &SidecarOptions, users: &File) -> Option<Ready> {
    if locks::try_flock(users, libc::LOCK_EX | libc::LOCK_NB) {
        locks::try_flock(users, libc::LOCK_UN);
        return None;
    }
    if let Some(record) = OwnerRecord::read(vol) {
        if !Stopper::from_record(&record).running() {
            return None;
        }
    }
    let ready = read_ready(vol, &vol.ready()).ok()??;
    let (hb, beneath) = (vol.heartbeat(), vol.beneath());
    let first = read_pulse_beneath(&beneath, &hb)?;
    // Judging a slow sidecar dead would start a second one on the volume:
    // give it the whole staleness bound (a live one beats much sooner).
    let deadline = sidecar_core::time::deadline_after(Instant::now(), opts.stale_after);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
        if read_pulse_beneath(&beneath, &hb).is_some_and(|now| now != first) {
            return Some(ready);
        }
    }
    None
}
