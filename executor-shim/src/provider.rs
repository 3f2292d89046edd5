//! Sidecar providers: where the sidecar comes from, and making sure exactly
//! one serves each executor volume and none outlives its executor.
//!
//! * [`Provider::Attach`]: a sidecar already serves the volume (a
//!   Kubernetes pod's sidecar container). The shim waits for `sidecar/ready`
//!   and never stops it; its lease tells the sidecar when the executor is
//!   gone.
//! * [`Provider::Process`]: the shim starts `sidecar-entrypoint --mode serve`
//!   as a child process. No Docker needed; the embedded default.
//! * [`Provider::Docker`]: the shim runs the image with the volume
//!   bind-mounted, locked down (numeric user, read-only root, no network, no
//!   capabilities, no new privileges).
//!
//! ## One sidecar per volume
//!
//! [`Sidecar::start`] takes an exclusive `flock` on
//! `executor/sidecar.lock` while it decides. If a live sidecar already
//! serves the volume (a parseable `sidecar/ready` and a heartbeat that is
//! seen to change), the new handle attaches to it; otherwise it starts one.
//! Every handle holds a shared `flock` on `executor/sidecar.users` for as
//! long as it lives. When a handle that started or shared a sidecar goes
//! away it checks (under the start lock) whether it is the last user: only
//! the last one stops the sidecar. Threads of one process and separate
//! processes (PySpark's Python workers) are treated alike.
//!
//! ## No sidecar outlives its executor
//!
//! * Normal end: the last handle raises the root `close_flag` (drain, exit
//!   0), waits, then escalates to `SIGTERM` and `SIGKILL` (process) or
//!   `docker rm -f` (Docker).
//! * The executor dies without running destructors (`SIGKILL`, OOM kill):
//!   every handle renews `executor/lease` (a [`Beater`]) and the sidecar is
//!   started with `--lease-timeout` and `--exit-on-orphan`, so it cancels
//!   its tasks and exits once the lease is stale. Bound: `lease_timeout`
//!   plus the sidecar's TERM-to-KILL grace.
//!
//! `PR_SET_PDEATHSIG` is deliberately not used: it fires when the *thread*
//! that spawned the child exits, not the process, so a sidecar started from
//! a short-lived worker thread would be killed under the feet of the other
//! threads sharing it, and it would defeat the hand-over to another process
//! described above. The lease covers the case it was meant for.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use serde::{Deserialize, Serialize};
use sidecar_core::atomic::{self, Durability};
use sidecar_core::liveness::Beater;
use sidecar_core::record::read_flag;
use sidecar_core::wait::{Watch, WatchConfig, WatchMode, DEFAULT_POLL};
use sidecar_core::{Ready, Volume};

use crate::client::{self, SidecarProbe, TaskContext, TaskReport, TaskRequest};
use crate::error::ShimError;

/// The volume's mount path inside a Docker sidecar.
pub const CONTAINER_VOLUME: &str = "/opt/sidecar/shared-volumes/shared";

/// The entrypoint's path inside a sidecar image.
pub const DEFAULT_ENTRYPOINT_PATH: &str = "/usr/bin/sidecar-entrypoint";

/// The numeric user a Docker sidecar runs as (Foundry's bring-your-own-container uid).
pub const DEFAULT_USER: &str = "5001";

/// The logic used when no command is given: copy input to output (the
/// Foundry `dd` example).
pub const DEFAULT_COMMAND: [&str; 3] = [
    "sh",
    "-c",
    r#"dd if="$SIDECAR_INPUT" of="$SIDECAR_OUTPUT" 2>/dev/null"#,
];

const START_LOCK: &str = "sidecar.lock";
const USERS_LOCK: &str = "sidecar.users";
const OWNER_RECORD: &str = "sidecar.json";

/// Where the sidecar comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Provider {
    /// A sidecar already serves the volume.
    Attach,
    /// `sidecar-entrypoint` as a child process.
    Process {
        /// The binary; empty means [`locate_entrypoint`].
        entrypoint: PathBuf,
        /// The logic; empty means [`DEFAULT_COMMAND`].
        command: Vec<String>,
        /// More `sidecar-entrypoint` options, before `--`.
        extra_args: Vec<String>,
    },
    /// A locked-down container of `image`.
    Docker {
        /// The Docker CLI (`docker`).
        cli: String,
        image: String,
        /// The logic; empty means [`DEFAULT_COMMAND`].
        command: Vec<String>,
        /// Numeric user (`5001`).
        user: String,
        /// The entrypoint inside the image ([`DEFAULT_ENTRYPOINT_PATH`]).
        entrypoint_path: String,
    },
}

impl Provider {
    /// The process provider with a located entrypoint.
    pub fn process(command: Vec<String>) -> Self {
        Provider::Process {
            entrypoint: PathBuf::new(),
            command,
            extra_args: Vec::new(),
        }
    }

    /// The Docker provider with the defaults.
    pub fn docker(image: impl Into<String>, command: Vec<String>) -> Self {
        Provider::Docker {
            cli: "docker".into(),
            image: image.into(),
            command,
            user: DEFAULT_USER.into(),
            entrypoint_path: DEFAULT_ENTRYPOINT_PATH.into(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Provider::Attach => "attach",
            Provider::Process { .. } => "process",
            Provider::Docker { .. } => "docker",
        }
    }
}

/// How the sidecar is run and watched: plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarOptions {
    /// Concurrent tasks (`--parallel`; default: the sidecar's CPUs).
    pub parallel: Option<u32>,
    /// How long to wait for `sidecar/ready`.
    pub ready_timeout: Duration,
    /// The sidecar's heartbeat interval (`--heartbeat`).
    pub heartbeat: Duration,
    /// A heartbeat unchanged this long means the sidecar is gone.
    pub stale_after: Duration,
    /// How often this side renews `executor/lease`.
    pub lease_interval: Duration,
    /// The sidecar's lease staleness bound (`--lease-timeout`).
    pub lease_timeout: Duration,
    /// Per-task limit (`--timeout`, and the shim's deadline for requests
    /// without their own).
    pub task_timeout: Option<Duration>,
    /// TERM-to-KILL grace (`--grace`; the sidecar's default is 10s).
    pub grace: Option<Duration>,
    /// Polling interval (`--poll`, and this side's fallback).
    pub poll: Option<Duration>,
    /// How both sides wait for flags (`--watch`).
    pub watch: WatchMode,
    /// The sidecar's log filter (`$SIDECAR_LOG`, e.g. `warn`); `None`
    /// leaves its environment (and so its default, `info`) alone.
    pub log_filter: Option<String>,
}

impl Default for SidecarOptions {
    fn default() -> Self {
        Self {
            parallel: None,
            ready_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_millis(500),
            stale_after: Duration::from_secs(5),
            lease_interval: Duration::from_millis(500),
            lease_timeout: Duration::from_secs(10),
            task_timeout: None,
            grace: None,
            poll: None,
            watch: WatchMode::Auto,
            log_filter: None,
        }
    }
}

impl SidecarOptions {
    fn grace(&self) -> Duration {
        self.grace.unwrap_or(Duration::from_secs(10))
    }

    /// The `sidecar-entrypoint` options for serving `volume`.
    fn serve_args(&self, volume: &str) -> Vec<String> {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let mut args: Vec<String> = vec![
            "--mode".into(),
            "serve".into(),
            "--volume".into(),
            volume.into(),
            "--heartbeat".into(),
            d(self.heartbeat),
            "--lease-timeout".into(),
            d(self.lease_timeout),
            "--exit-on-orphan".into(),
        ];
        if let Some(n) = self.parallel {
            args.extend(["--parallel".into(), n.to_string()]);
        }
        if let Some(t) = self.task_timeout {
            args.extend(["--timeout".into(), d(t)]);
        }
        if let Some(g) = self.grace {
            args.extend(["--grace".into(), d(g)]);
        }
        if let Some(p) = self.poll {
            args.extend(["--poll".into(), d(p)]);
        }
        let watch = match self.watch {
            WatchMode::Auto => "auto",
            WatchMode::Native => "inotify",
            WatchMode::Poll => "poll",
        };
        args.extend(["--watch".into(), watch.into()]);
        args
    }
}

/// What this handle is to the sidecar.
#[derive(Debug)]
enum Role {
    /// Attached to a sidecar someone else runs (never stopped by us).
    Attached,
    /// Started by another handle of this executor; the last user stops it.
    Shared(OwnerRecord),
    /// Started a child process.
    OwnerProcess(OwnerRecord),
    /// Started a container.
    OwnerDocker(OwnerRecord),
}

/// `executor/sidecar.json`: how to stop the sidecar, for whichever handle
/// turns out to be its last user.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct OwnerRecord {
    provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cli: Option<String>,
}

/// The child process of the process provider.
#[derive(Debug)]
struct ChildProbe {
    child: Mutex<Option<Child>>,
    status: Mutex<Option<String>>,
    /// The volume the sidecar serves, to find the logic it left behind.
    volume: PathBuf,
}

impl ChildProbe {
    fn new(child: Child, volume: PathBuf) -> Self {
        Self {
            child: Mutex::new(Some(child)),
            status: Mutex::new(None),
            volume,
        }
    }

    /// Waits up to `timeout` for the child to exit.
    fn wait_exit(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        if self.exited().is_some() {
            return;
        }
        // Holding the lock: the child cannot be reaped (and its pid reused)
        // between the check and the kill.
        let guard = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(child) = guard.as_ref() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
        }
    }

    /// Gives the child to a thread that reaps it whenever it exits.
    fn detach(&self) {
        let child = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut child) = child {
            let _ = std::thread::Builder::new()
                .name("sidecar-reaper".into())
                .spawn(move || {
                    let _ = child.wait();
                });
        }
    }
}

impl SidecarProbe for ChildProbe {
    fn exited(&self) -> Option<String> {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = status.as_ref() {
            return Some(s.clone());
        }
        let mut guard = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        let child = guard.as_mut()?;
        match child.try_wait() {
            Ok(Some(exit)) => {
                let s = exit.to_string();
                *status = Some(s.clone());
                // A sidecar that died (SIGKILL, OOM) could not kill the
                // logic it ran: that is ours to do now, or it runs forever
                // (a stream-mode logic blocked on a FIFO would).
                let killed = kill_orphaned_logic(&self.volume);
                if killed > 0 {
                    tracing::warn!(
                        "the sidecar on {} exited ({s}); killed {killed} process(es) of its task logic",
                        self.volume.display()
                    );
                }
                Some(s)
            }
            Ok(None) => None,
            Err(e) => {
                let s = format!("cannot wait for it: {e}");
                *status = Some(s.clone());
                Some(s)
            }
        }
    }
}

/// A Docker container, looked at no more than every couple of seconds.
#[derive(Debug)]
struct DockerProbe {
    cli: String,
    name: String,
    last: Mutex<(Option<Instant>, Option<String>)>,
}

impl DockerProbe {
    const EVERY: Duration = Duration::from_secs(2);

    fn inspect(&self) -> Option<String> {
        let out = Command::new(&self.cli)
            .args([
                "inspect",
                "-f",
                "{{.State.Running}} {{.State.ExitCode}}",
                &self.name,
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                let mut words = text.split_whitespace();
                match (words.next(), words.next()) {
                    (Some("true"), _) => None,
                    (_, code) => Some(format!(
                        "container {} is not running, exit code {}",
                        self.name,
                        code.unwrap_or("unknown")
                    )),
                }
            }
            Ok(_) => Some(format!("container {} is gone", self.name)),
            // The CLI itself failed: no verdict, the heartbeat decides.
            Err(_) => None,
        }
    }
}

impl SidecarProbe for DockerProbe {
    fn exited(&self) -> Option<String> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.1.is_some() {
            return last.1.clone();
        }
        if last.0.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return None;
        }
        let verdict = self.inspect();
        *last = (Some(Instant::now()), verdict.clone());
        verdict
    }
}

#[derive(Debug)]
enum Probe {
    Child(ChildProbe),
    Docker(DockerProbe),
}

impl Probe {
    fn as_dyn(&self) -> &dyn SidecarProbe {
        match self {
            Probe::Child(p) => p,
            Probe::Docker(p) => p,
        }
    }
}

/// A handle on the one sidecar serving an executor volume. `Sync`: share it
/// (or start more handles on the same volume) across threads.
#[derive(Debug)]
pub struct Sidecar {
    volume: Volume,
    opts: SidecarOptions,
    watch: Watch,
    ready: Ready,
    role: Role,
    probe: Option<Probe>,
    users: Option<File>,
    lease: Mutex<Option<Beater>>,
    stopped: AtomicBool,
}

impl Sidecar {
    /// Starts (or attaches to) the sidecar serving `volume`, and returns
    /// once it is ready.
    pub fn start(
        volume: &Path,
        provider: Provider,
        opts: SidecarOptions,
    ) -> Result<Self, ShimError> {
        let vol = Volume::new(volume);
        std::fs::create_dir_all(volume).map_err(ShimError::io(volume))?;
        let watch = Watch::new(WatchConfig {
            mode: opts.watch,
            poll: opts.poll.unwrap_or(DEFAULT_POLL),
        })?;
        std::fs::create_dir_all(vol.executor_dir()).map_err(ShimError::io(vol.executor_dir()))?;
        if provider == Provider::Attach {
            let lease = Beater::start(vol.lease(), opts.lease_interval)?;
            let ready = wait_ready(&vol, &watch, opts.ready_timeout, opts.stale_after, None)?;
            return Ok(Self {
                volume: vol,
                opts,
                watch,
                ready,
                role: Role::Attached,
                probe: None,
                users: None,
                lease: Mutex::new(Some(lease)),
                stopped: AtomicBool::new(false),
            });
        }

        let executor_dir = vol.executor_dir();
        std::fs::create_dir_all(&executor_dir).map_err(ShimError::io(&executor_dir))?;
        let lock_wait = opts.ready_timeout + Duration::from_secs(10);
        let start_lock = lock_file(&executor_dir.join(START_LOCK), libc::LOCK_EX, lock_wait)?;
        let users = open_lock_file(&executor_dir.join(USERS_LOCK))?;

        if let Some(ready) = live_sidecar(&vol, &opts) {
            flock(
                &users,
                libc::LOCK_SH,
                lock_wait,
                &executor_dir.join(USERS_LOCK),
            )?;
            let lease = Beater::start(vol.lease(), opts.lease_interval)?;
            let record = read_owner_record(&vol).unwrap_or_default();
            tracing::info!(
                "attaching to the sidecar (pid {}) already serving {}",
                ready.pid,
                volume.display()
            );
            return Ok(Self {
                volume: vol,
                opts,
                watch,
                ready,
                role: Role::Shared(record),
                probe: None,
                users: Some(users),
                lease: Mutex::new(Some(lease)),
                stopped: AtomicBool::new(false),
            });
        }

        // Nothing live: clear what a dead one left, so that its ready record
        // is not mistaken for the new one's and its close flag does not stop
        // the new one at once.
        for stale in [vol.ready(), vol.heartbeat(), vol.close_flag()] {
            let _ = std::fs::remove_file(stale);
        }
        // The lease is fresh before the sidecar starts watching it.
        let lease = Beater::start(vol.lease(), opts.lease_interval)?;
        let (probe, role) = match &provider {
            Provider::Process {
                entrypoint,
                command,
                extra_args,
            } => {
                std::fs::create_dir_all(vol.sidecar_dir())
                    .map_err(ShimError::io(vol.sidecar_dir()))?;
                let child = spawn_process(&vol, &opts, entrypoint, command, extra_args)?;
                let record = OwnerRecord {
                    provider: provider.name().into(),
                    pid: Some(child.id()),
                    ..Default::default()
                };
                (
                    Probe::Child(ChildProbe::new(child, vol.root().to_owned())),
                    Role::OwnerProcess(record),
                )
            }
            Provider::Docker {
                cli,
                image,
                command,
                user,
                entrypoint_path,
            } => {
                // The container's user (5001) must be able to write its
                // heartbeat and the tasks' outputs: open up what we own.
                for dir in [vol.root().to_owned(), vol.sidecar_dir(), vol.tasks_dir()] {
                    std::fs::create_dir_all(&dir).map_err(ShimError::io(&dir))?;
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                        .map_err(ShimError::io(&dir))?;
                }
                let name = format!("sidecar-{}", client::random_nonce().to_ascii_lowercase());
                run_container(
                    &vol,
                    &opts,
                    cli,
                    image,
                    command,
                    user,
                    entrypoint_path,
                    &name,
                )?;
                let record = OwnerRecord {
                    provider: provider.name().into(),
                    container: Some(name.clone()),
                    cli: Some(cli.clone()),
                    ..Default::default()
                };
                let probe = DockerProbe {
                    cli: cli.clone(),
                    name,
                    last: Mutex::new((None, None)),
                };
                (Probe::Docker(probe), Role::OwnerDocker(record))
            }
            Provider::Attach => unreachable_attach(),
        };
        let mut sidecar = Self {
            volume: vol,
            opts,
            watch,
            ready: placeholder_ready(),
            role,
            probe: Some(probe),
            users: None,
            lease: Mutex::new(Some(lease)),
            stopped: AtomicBool::new(false),
        };
        // From here on, Drop stops what was started if anything fails.
        let started = (|| {
            let probe = sidecar.probe.as_ref().map(Probe::as_dyn);
            sidecar.ready = wait_ready(
                &sidecar.volume,
                &sidecar.watch,
                sidecar.opts.ready_timeout,
                sidecar.opts.stale_after,
                probe,
            )?;
            flock(
                &users,
                libc::LOCK_SH,
                lock_wait,
                &executor_dir.join(USERS_LOCK),
            )?;
            if let Role::OwnerProcess(r) | Role::OwnerDocker(r) = &sidecar.role {
                write_owner_record(&sidecar.volume, r)?;
            }
            Ok::<_, ShimError>(())
        })();
        // Unlock before a failed handle's Drop stops the sidecar (which
        // takes the start lock itself).
        drop(start_lock);
        started?;
        sidecar.users = Some(users);
        Ok(sidecar)
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
        matches!(self.role, Role::OwnerProcess(_) | Role::OwnerDocker(_))
    }

    /// The task context for [`client::run_task`].
    pub fn context(&self) -> TaskContext<'_> {
        TaskContext {
            volume: &self.volume,
            watch: &self.watch,
            stale_after: self.opts.stale_after,
            probe: self.probe.as_ref().map(Probe::as_dyn),
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
        let result = self.stop_inner();
        if let Some(mut lease) = self
            .lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            lease.stop();
        }
        result
    }

    fn stop_inner(&self) -> Result<(), ShimError> {
        let record = match &self.role {
            Role::Attached => return Ok(()),
            Role::Shared(r) | Role::OwnerProcess(r) | Role::OwnerDocker(r) => r,
        };
        let executor_dir = self.volume.executor_dir();
        // Serialised with starts: nobody attaches while we decide.
        let _start_lock = lock_file(
            &executor_dir.join(START_LOCK),
            libc::LOCK_EX,
            Duration::from_secs(10),
        )
        .map_err(|e| tracing::warn!("{e}; deciding without it"))
        .ok();
        let last = match &self.users {
            // Upgrading our shared lock succeeds only if no one else holds one.
            Some(users) => try_flock(users, libc::LOCK_EX | libc::LOCK_NB),
            None => true,
        };
        if !last {
            tracing::info!(
                "the sidecar on {} has other users; leaving it running",
                self.volume.root().display()
            );
            if let Some(Probe::Child(child)) = &self.probe {
                child.detach();
            }
            return Ok(());
        }
        let grace = self.opts.grace();
        let closed = atomic::touch_atomic(&self.volume.close_flag());
        let result = match (&self.role, &self.probe) {
            (Role::OwnerProcess(_), Some(Probe::Child(child))) => {
                let mut exit = child.wait_exit(Duration::from_secs(10));
                if exit.is_none() {
                    tracing::warn!(
                        "the sidecar did not exit after the close flag; sending SIGTERM"
                    );
                    child.signal(nix::sys::signal::Signal::SIGTERM);
                    exit = child.wait_exit(grace + Duration::from_secs(5));
                }
                if exit.is_none() {
                    tracing::warn!("the sidecar ignored SIGTERM; sending SIGKILL");
                    child.signal(nix::sys::signal::Signal::SIGKILL);
                    exit = child.wait_exit(Duration::from_secs(5));
                }
                match exit {
                    Some(s) if s.contains("exit status: 0") => Ok(()),
                    Some(status) => Err(ShimError::SidecarExited {
                        volume: self.volume.root().to_owned(),
                        status,
                    }),
                    None => Err(ShimError::SidecarExited {
                        volume: self.volume.root().to_owned(),
                        status: "still running after SIGKILL".into(),
                    }),
                }
            }
            _ => self.stop_by_record(record, grace),
        };
        if let Some(container) = &record.container {
            docker_rm(record.cli.as_deref().unwrap_or("docker"), container);
        }
        for file in [self.volume.ready(), executor_dir.join(OWNER_RECORD)] {
            let _ = std::fs::remove_file(file);
        }
        closed?;
        result
    }

    /// Stops a sidecar this handle did not spawn (or a container).
    fn stop_by_record(&self, record: &OwnerRecord, grace: Duration) -> Result<(), ShimError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        if let Some(container) = &record.container {
            let cli = record.cli.as_deref().unwrap_or("docker");
            while Instant::now() < deadline && container_running(cli, container) {
                std::thread::sleep(Duration::from_millis(100));
            }
            return Ok(());
        }
        if let Some(pid) = record.pid {
            // Only ever signal the sidecar itself, never a process that
            // has since been given its pid.
            let alive = || pid_alive(pid) && is_entrypoint(pid);
            while Instant::now() < deadline && alive() {
                std::thread::sleep(Duration::from_millis(20));
            }
            for (sig, wait) in [
                (
                    nix::sys::signal::Signal::SIGTERM,
                    grace + Duration::from_secs(5),
                ),
                (nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5)),
            ] {
                if !alive() {
                    break;
                }
                if let Ok(p) = i32::try_from(pid) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
                }
                let until = Instant::now() + wait;
                while Instant::now() < until && alive() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Ok(())
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

fn unreachable_attach() -> ! {
    // Attach returns before the providers that start something.
    unreachable!("attach handled above")
}

fn placeholder_ready() -> Ready {
    Ready {
        protocol: sidecar_core::PROTOCOL_VERSION,
        version: String::new(),
        pid: 0,
        parallelism: 0,
        started_at: sidecar_core::Timestamp::now(),
    }
}

/// Waits for `sidecar/ready`, bounded by `timeout` and, if given, the probe.
fn wait_ready(
    vol: &Volume,
    watch: &Watch,
    timeout: Duration,
    stale_after: Duration,
    probe: Option<&dyn SidecarProbe>,
) -> Result<Ready, ShimError> {
    let start = Instant::now();
    let deadline = start + timeout;
    // Watch the sidecar directory if it exists, else the volume root (the
    // sidecar creates its directory).
    let sidecar_dir = vol.sidecar_dir();
    let watched = if sidecar_dir.is_dir() {
        sidecar_dir
    } else {
        vol.root().to_owned()
    };
    watch.add(&watched, false)?;
    let path = vol.ready();
    let not_ready = |detail: String| ShimError::NotReady {
        volume: vol.root().to_owned(),
        waited: start.elapsed(),
        detail,
    };
    let mut stale_ready = false;
    let result = watch.wait_until(&path.display().to_string(), Some(deadline), || {
        match read_flag(&path, "ready record") {
            Ok(bytes) => {
                let ready = Ready::parse(&bytes, &path)?;
                // A ready record beside a long-stale heartbeat is a dead
                // sidecar's leftover: wait for a live one.
                if heartbeat_age(vol).is_none_or(|age| age <= stale_after) {
                    return Ok(Some(ready));
                }
                stale_ready = true;
            }
            Err(sidecar_core::record::RecordError::Io { source, .. })
                if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(status) = probe.and_then(|p| p.exited()) {
            return Err(ShimError::SidecarExited {
                volume: vol.root().to_owned(),
                status,
            });
        }
        // The sidecar directory may have just appeared: watch it too.
        if vol.sidecar_dir().is_dir() {
            let _ = watch.add(&vol.sidecar_dir(), false);
        }
        Ok::<_, ShimError>(None)
    });
    watch.remove(&watched);
    watch.remove(&vol.sidecar_dir());
    result.map_err(|e| match e {
        ShimError::Wait(_) if stale_ready => not_ready(format!(
            "{} is there but {} has not been refreshed for over {:.1}s: a dead sidecar's leftovers?",
            path.display(),
            vol.heartbeat().display(),
            stale_after.as_secs_f64()
        )),
        ShimError::Wait(_) => not_ready(format!("waited for {}", path.display())),
        e => e,
    })
}

/// The ready record of a sidecar that is alive on `vol`: ready parses and
/// the heartbeat is seen to change.
fn live_sidecar(vol: &Volume, opts: &SidecarOptions) -> Option<Ready> {
    let path = vol.ready();
    let ready = Ready::parse(&read_flag(&path, "ready record").ok()?, &path).ok()?;
    let hb = vol.heartbeat();
    // A heartbeat not rewritten for the staleness bound is dead without
    // waiting (the writer is on this machine: the clocks agree).
    if heartbeat_age(vol)? > opts.stale_after {
        return None;
    }
    let first = sidecar_core::liveness::read_pulse(&hb)?;
    // Judging a slow sidecar dead would start a second one on the volume:
    // give it the whole staleness bound (a live one beats much sooner).
    let deadline = Instant::now() + opts.stale_after;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
        if sidecar_core::liveness::read_pulse(&hb).is_some_and(|now| now != first) {
            return Some(ready);
        }
    }
    None
}

/// How long ago `sidecar/heartbeat` was last rewritten (by its mtime);
/// `None` if there is none.
fn heartbeat_age(vol: &Volume) -> Option<Duration> {
    let modified = std::fs::metadata(vol.heartbeat()).ok()?.modified().ok()?;
    Some(
        SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default(),
    )
}

fn read_owner_record(vol: &Volume) -> Option<OwnerRecord> {
    let path = vol.executor_dir().join(OWNER_RECORD);
    serde_json::from_slice(&read_flag(&path, "owner record").ok()?).ok()
}

fn write_owner_record(vol: &Volume, record: &OwnerRecord) -> Result<(), ShimError> {
    let path = vol.executor_dir().join(OWNER_RECORD);
    let bytes = serde_json::to_vec(record).map_err(|e| ShimError::Protocol {
        path: path.clone(),
        message: e.to_string(),
    })?;
    atomic::write_atomic(&path, &bytes, Durability::Visible)?;
    Ok(())
}

fn spawn_process(
    vol: &Volume,
    opts: &SidecarOptions,
    entrypoint: &Path,
    command: &[String],
    extra_args: &[String],
) -> Result<Child, ShimError> {
    let bin = locate_entrypoint(entrypoint)?;
    let root = vol.root().to_string_lossy().into_owned();
    let mut cmd = Command::new(&bin);
    cmd.args(opts.serve_args(&root))
        .args(extra_args)
        .arg("--")
        .args(command_or_default(command))
        .stdin(Stdio::null());
    if let Some(filter) = &opts.log_filter {
        cmd.env("SIDECAR_LOG", filter);
    }
    // The sidecar's logs go to our stderr, never our stdout (which may be
    // the data, as with `executor-shim run`).
    {
        use std::os::fd::AsFd;
        if let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() {
            cmd.stdout(Stdio::from(fd));
        }
    }
    tracing::debug!("starting {cmd:?}");
    cmd.spawn().map_err(|source| ShimError::Spawn {
        what: bin.display().to_string(),
        source,
    })
}

fn command_or_default(command: &[String]) -> Vec<String> {
    if command.is_empty() {
        DEFAULT_COMMAND.iter().map(|s| (*s).to_owned()).collect()
    } else {
        command.to_vec()
    }
}

#[allow(clippy::too_many_arguments)]
fn run_container(
    vol: &Volume,
    opts: &SidecarOptions,
    cli: &str,
    image: &str,
    command: &[String],
    user: &str,
    entrypoint_path: &str,
    name: &str,
) -> Result<(), ShimError> {
    let host = std::fs::canonicalize(vol.root()).map_err(ShimError::io(vol.root()))?;
    let mut args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--rm".into(),
        "--name".into(),
        name.into(),
        "--user".into(),
        user.into(),
        "--read-only".into(),
        "--tmpfs".into(),
        "/tmp:rw,nosuid,nodev,size=256m".into(),
        "--network".into(),
        "none".into(),
        "--cap-drop".into(),
        "ALL".into(),
        "--security-opt".into(),
        "no-new-privileges".into(),
        "-v".into(),
        format!("{}:{CONTAINER_VOLUME}", host.display()),
        "--entrypoint".into(),
        entrypoint_path.into(),
    ];
    if let Some(filter) = &opts.log_filter {
        args.extend(["-e".into(), format!("SIDECAR_LOG={filter}")]);
    }
    args.push(image.into());
    args.extend(opts.serve_args(CONTAINER_VOLUME));
    args.push("--".into());
    args.extend(command_or_default(command));
    let shown = format!("{cli} {}", args.join(" "));
    tracing::debug!("starting {shown}");
    let out = Command::new(cli)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ShimError::Spawn {
            what: format!("{cli} run"),
            source,
        })?;
    if !out.status.success() {
        return Err(ShimError::Docker {
            command: shown,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

fn container_running(cli: &str, name: &str) -> bool {
    Command::new(cli)
        .args(["inspect", "-f", "{{.State.Running}}", name])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "true")
        .unwrap_or(false)
}

fn docker_rm(cli: &str, name: &str) {
    let _ = Command::new(cli)
        .args(["rm", "-f", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// SIGKILLs every process that runs task logic of the sidecar on `volume`:
/// those whose environment has `SHARED_DIR=<volume>` and a
/// `SIDECAR_TASK_ID` (the entrypoint sets both; descendants inherit them).
/// Only processes whose environment we may read (our own user's) are
/// considered, and never this process. Returns how many were signalled.
///
/// The environment is used rather than process group ids written on the
/// volume: the volume is the sidecar's to write, and a hostile one could
/// otherwise make the executor signal any process group.
///
/// One pass over `/proc` is not enough: a logic process the dead sidecar
/// was spawning (`posix_spawn`'s child before its `execve`) still shows
/// the sidecar's environment, and a process forking during the pass may
/// add a child behind it. So passes repeat, 50 ms apart, until one finds
/// nothing (at least two passes, at most ten: about half a second).
pub(crate) fn kill_orphaned_logic(volume: &Path) -> usize {
    let mut killed = 0;
    for pass in 0..10 {
        let found = kill_orphaned_logic_once(volume);
        killed += found;
        if found == 0 && pass > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    killed
}

/// One pass of [`kill_orphaned_logic`]. A process killed by an earlier pass
/// that is not reaped yet has no readable environment and is not counted.
fn kill_orphaned_logic_once(volume: &Path) -> usize {
    let mut want = b"SHARED_DIR=".to_vec();
    want.extend_from_slice(volume.as_os_str().as_encoded_bytes());
    let me = std::process::id();
    let mut killed = 0;
    for pid in sidecar_core::procfs::pids() {
        if u32::try_from(pid) == Ok(me) {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let (mut shared, mut task) = (false, false);
        for var in environ.split(|b| *b == 0) {
            shared |= var == want.as_slice();
            task |= var.starts_with(b"SIDECAR_TASK_ID=");
        }
        if shared && task {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            killed += 1;
        }
    }
    killed
}

/// Whether `pid` runs (a zombie does not count).
fn pid_alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(sidecar_core::procfs::is_running)
}

/// Whether `pid` runs the `sidecar-entrypoint` binary.
fn is_entrypoint(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .next()
                .is_some_and(|argv0| argv0.ends_with(b"sidecar-entrypoint"))
        })
        .unwrap_or(false)
}

/// Finds `sidecar-entrypoint`: `explicit` if not empty, else
/// `$SIDECAR_ENTRYPOINT`, else next to the running executable (and in its
/// parent directory, for cargo's `target/<profile>/deps/` test binaries),
/// else on `PATH`.
pub fn locate_entrypoint(explicit: &Path) -> Result<PathBuf, ShimError> {
    const NAME: &str = "sidecar-entrypoint";
    let mut looked = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if !explicit.as_os_str().is_empty() {
        if explicit.components().count() == 1 && !explicit.is_file() {
            return which(explicit).ok_or_else(|| ShimError::EntrypointNotFound {
                looked: format!("{} on PATH", explicit.display()),
            });
        }
        candidates.push(explicit.to_owned());
    } else {
        if let Some(p) = std::env::var_os("SIDECAR_ENTRYPOINT").filter(|p| !p.is_empty()) {
            candidates.push(PathBuf::from(p));
        }
        if let Ok(exe) = std::env::current_exe() {
            if let Some(dir) = exe.parent() {
                candidates.push(dir.join(NAME));
                if let Some(up) = dir.parent() {
                    candidates.push(up.join(NAME));
                }
            }
        }
    }
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
        looked.push(c.display().to_string());
    }
    if explicit.as_os_str().is_empty() {
        if let Some(p) = which(Path::new(NAME)) {
            return Ok(p);
        }
        looked.push("PATH".into());
    }
    Err(ShimError::EntrypointNotFound {
        looked: looked.join(", "),
    })
}

fn which(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn open_lock_file(path: &Path) -> Result<File, ShimError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(ShimError::io(path))
}

/// Opens `path` and locks it (`LOCK_EX` or `LOCK_SH`), waiting up to `wait`.
fn lock_file(path: &Path, op: i32, wait: Duration) -> Result<File, ShimError> {
    let f = open_lock_file(path)?;
    flock(&f, op, wait, path)?;
    Ok(f)
}

fn flock(f: &File, op: i32, wait: Duration, path: &Path) -> Result<(), ShimError> {
    let deadline = Instant::now() + wait;
    loop {
        if try_flock(f, op | libc::LOCK_NB) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ShimError::Io {
                path: path.to_owned(),
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "could not lock it within {:.1}s (another sidecar start is stuck?)",
                        wait.as_secs_f64()
                    ),
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn try_flock(f: &File, op: i32) -> bool {
    loop {
        // SAFETY: flock on a descriptor `f` owns.
        let r = unsafe { libc::flock(f.as_raw_fd(), op) };
        if r == 0 {
            return true;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn serve_args_carry_the_options() {
        let opts = SidecarOptions {
            parallel: Some(3),
            task_timeout: Some(Duration::from_secs(90)),
            watch: WatchMode::Native,
            ..Default::default()
        };
        let args = opts.serve_args("/v").join(" ");
        assert!(
            args.starts_with(
                "--mode serve --volume /v --heartbeat 500ms --lease-timeout 10s --exit-on-orphan"
            ),
            "{args}"
        );
        assert!(args.contains("--parallel 3"), "{args}");
        assert!(args.contains("--timeout 1m 30s"), "{args}");
        assert!(args.ends_with("--watch inotify"), "{args}");
    }

    #[test]
    fn entrypoint_lookup_names_where_it_looked() {
        let err = locate_entrypoint(Path::new("/nonexistent/sidecar-entrypoint"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/sidecar-entrypoint"), "{err}");
        assert!(err.contains("SIDECAR_ENTRYPOINT"), "{err}");
    }

    #[test]
    fn pid_liveness() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX - 1));
    }
}
