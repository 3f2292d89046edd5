//! `executor-shim pod-template`: a Spark-on-Kubernetes executor pod template
//! that puts the sidecar beside every executor.
//!
//! On Kubernetes nothing needs to start the sidecar: the pod does. Spark
//! builds each executor pod from a template file; this module writes one in
//! which the executor container and the sidecar container share an
//! `emptyDir` volume mounted at `/opt/sidecar/shared-volumes/<name>`, and the
//! sidecar runs `sidecar-entrypoint --mode serve` locked down (numeric
//! non-root user, read-only root filesystem, no privilege escalation, no
//! capabilities, the runtime's default seccomp profile), with exec probes
//! and, when asked, resource requests and limits.
//!
//! ## Use
//!
//! ```text
//! executor-shim pod-template --image registry.example/geocoder:1 --native-sidecar \
//!     --cpu 1 --memory 1Gi -- /app/geocode > executor-pod.yaml
//!
//! spark-submit \
//!   --master k8s://https://<api-server> --deploy-mode cluster \
//!   --conf spark.kubernetes.executor.podTemplateFile=executor-pod.yaml \
//!   --conf spark.kubernetes.executor.podTemplateContainerName=spark-kubernetes-executor \
//!   --conf spark.executorEnv.SIDECAR_VOLUME=/opt/sidecar/shared-volumes/shared \
//!   job.py
//! ```
//!
//! The `spark-submit` line for the settings given is in the template's
//! header and printed on stderr ([`spark_submit`]): every setting the
//! template relies on. `SIDECAR_VOLUME` is in the template's executor
//! container already; the `spark.executorEnv` line makes it explicit and
//! survives a hand-edited template. In the job, the executor side attaches
//! to the sidecar that is already running in its pod (the `attach`
//! provider):
//!
//! ```text
//! import sidecar_shim
//! out = df.mapInArrow(
//!     sidecar_shim.map_in_arrow(volume="/opt/sidecar/shared-volumes/shared", ...),
//!     schema)
//! ```
//!
//! ## Theory of operation
//!
//! * **Which container is the executor.** Spark takes the container named by
//!   `spark.kubernetes.executor.podTemplateContainerName` (else the first
//!   entry of `containers`) and fills in the image, command, resources and
//!   its own environment; everything else in the template (volumes, other
//!   containers, init containers, env, mounts) is kept. The executor
//!   container is emitted first and named `spark-kubernetes-executor`
//!   (Spark's own default name), with only the mount and `SIDECAR_VOLUME`;
//!   the printed `spark-submit` line names it as well.
//! * **Two sidecar forms.** By default the sidecar is a second entry of
//!   `containers`; it runs with `--exit-on-orphan`, so when the executor is
//!   gone (its lease goes stale) the sidecar exits 0 and the pod can complete.
//!   With `--native-sidecar` it is an init container with
//!   `restartPolicy: Always` (Kubernetes' native sidecars): the kubelet
//!   starts it before the executor, starts the executor only once the
//!   sidecar's `startupProbe` passed, restarts it if it exits or its
//!   `livenessProbe` fails, and stops it after the executor exited.
//! * **Which Kubernetes.** The native form needs 1.29 or later (the
//!   `SidecarContainers` feature, on by default from 1.29). The other form
//!   uses only fields that are GA since 1.20 (`startupProbe`; `seccompProfile`
//!   since 1.19) and is checked against the API schemas from 1.25 (the oldest
//!   the test suite's validator bundles) to the newest.
//! * **Probes without a shell.** Both probes exec
//!   `<entrypoint> probe --volume <mount>` in the sidecar container: exit 0
//!   only when `sidecar/ready` is there and the heartbeat is at most 5 s old
//!   (`sidecar-entrypoint probe`; no shell, so `FROM scratch` images work).
//!   The startup probe looks every second for up to two minutes (image
//!   start, init scripts); the liveness probe every 5 s, and three failures
//!   in a row (a heartbeat stale for about 20 s) restart a hung sidecar. No
//!   readiness probe: no Service routes to an executor pod.
//! * **A clean stop never fails the executor.** With
//!   `spark.kubernetes.executor.checkAllContainers` (default true since
//!   Spark 4.0) Spark fails an executor as soon as any regular container of
//!   its pod has terminated with a non-zero status. The sidecar therefore
//!   runs with `--exit-zero-on-sigterm`: the kubelet's SIGTERM ends it with
//!   0 once every in-flight task recorded its outcome (and orphaned or
//!   drained exits are 0 already); only a crash, a kill, or a stop that lost
//!   an outcome is non-zero and fails the executor, which Spark replaces.
//!   Init containers (the native form) are not among the statuses Spark
//!   checks, and Kubernetes ignores a native sidecar's exit status for the
//!   pod's phase.
//! * **Resources.** `--cpu` and `--memory` (Kubernetes quantities) set the
//!   sidecar's requests and limits to the same values, so it is scheduled
//!   with the executor instead of running best-effort beside a container
//!   that has a memory limit. A `Memory` medium volume is a tmpfs: its files
//!   are charged to the memory of the container that writes them (the
//!   executor for staged inputs, the sidecar for outputs), so they count
//!   against that container's limit, and the volume can hold at most the
//!   smaller of its `sizeLimit` and the sum of the pod's memory limits.
//! * **Two users, one volume.** The executor (Spark images run as uid 185)
//!   and the sidecar (`--user`, default 5001) are different users. An
//!   `emptyDir` is world-writable at its root, and each side creates the
//!   directories the other writes in world-writable (mode 0777 whatever the
//!   umask), so neither needs the other's identity and the template leaves
//!   the pod's own `securityContext` (Spark's volumes, Spark's user) alone.
//! * **Pure rendering.** [`render`] turns a [`PodTemplate`] (plain data with
//!   [`Default`]) into YAML, one small function per part of the pod;
//!   `executor-shim pod-template` is the thin CLI around it. Scalars are
//!   emitted as JSON strings, which are valid YAML and need no escaping
//!   rules of our own.
//!
//! ## Known problems
//!
//! * `--native-sidecar` on a cluster older than 1.29 (or with the
//!   `SidecarContainers` feature off): the API server drops `restartPolicy`
//!   from the init container, which then blocks the executor from ever
//!   starting.
//! * Without `--cpu` and `--memory` the sidecar has no requests: the
//!   scheduler does not count it, and under memory pressure it is the first
//!   to be killed.

/// Where the shared volumes are mounted in both containers.
pub const MOUNT_ROOT: &str = "/opt/sidecar/shared-volumes";
/// The entrypoint's path in images built the way `examples/foundry-dd` is.
pub const DEFAULT_ENTRYPOINT: &str = "/usr/bin/sidecar-entrypoint";
/// Spark's default name for the executor container.
pub const DEFAULT_EXECUTOR_CONTAINER: &str = "spark-kubernetes-executor";
/// The sidecar container's name.
pub const DEFAULT_SIDECAR_CONTAINER: &str = "sidecar";
/// The default volume name (mounted at `/opt/sidecar/shared-volumes/shared`).
pub const DEFAULT_VOLUME: &str = "shared";
/// The default numeric user of the sidecar (Foundry's bring-your-own-container uid).
pub const DEFAULT_USER: u32 = 5001;
/// The file name the `spark-submit` line refers to.
pub const TEMPLATE_FILE: &str = "executor-pod.yaml";

/// What is wrong with a pod template's settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PodTemplateError {
    #[error(
        "volume name {name:?} is not a Kubernetes volume name: use 1 to 63 lowercase letters, \
         digits and '-', starting and ending with a letter or digit"
    )]
    VolumeName { name: String },
    #[error(
        "container name {name:?} is not a Kubernetes container name: use 1 to 63 lowercase \
         letters, digits and '-', starting and ending with a letter or digit"
    )]
    ContainerName { name: String },
    #[error(
        "the sidecar and executor containers are both named {name:?}: give them different names"
    )]
    SameContainerName { name: String },
    #[error("image {image:?} is not an image reference: it must be non-empty, without spaces or control characters")]
    Image { image: String },
    #[error("--user {uid} is root: the sidecar must run as a numeric non-root user (e.g. 5001)")]
    RootUser { uid: u32 },
    #[error("--group {gid} is root: pick a non-zero group id (the default is the sidecar's uid)")]
    RootGroup { gid: u32 },
    #[error(
        "size limit {value:?} is not a Kubernetes quantity: use a number with an optional \
         suffix such as 512Mi, 2Gi or 1G"
    )]
    SizeLimit { value: String },
    #[error(
        "entrypoint {path:?} must be an absolute path inside the image, e.g. {DEFAULT_ENTRYPOINT}"
    )]
    Entrypoint { path: String },
    #[error(
        "--cpu {value:?} is not a Kubernetes CPU quantity above zero: use cores (1, 0.5) \
         or millicores (500m)"
    )]
    Cpu { value: String },
    #[error(
        "--memory {value:?} is not a Kubernetes memory quantity above zero: use a number \
         with a suffix such as 512Mi or 2Gi"
    )]
    Memory { value: String },
}

/// A pod template's settings, as plain data.
///
/// ```
/// use executor_shim::pod_template::{render, PodTemplate};
/// let yaml = render(&PodTemplate {
///     image: "geocoder:1".into(),
///     memory_medium: true,
///     ..Default::default()
/// });
/// assert!(yaml.contains("medium: \"Memory\""));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodTemplate {
    /// The sidecar image.
    pub image: String,
    /// The volume's name; it is mounted at `/opt/sidecar/shared-volumes/<volume>`.
    pub volume: String,
    /// `emptyDir.medium: Memory` (a tmpfs) instead of the node's disk.
    pub memory_medium: bool,
    /// `emptyDir.sizeLimit`, a Kubernetes quantity such as `2Gi`.
    pub size_limit: Option<String>,
    /// The sidecar as a native sidecar (an init container with `restartPolicy: Always`).
    pub native_sidecar: bool,
    /// The sidecar's numeric user.
    pub user: u32,
    /// The sidecar's group (`runAsGroup`; default: `user`).
    pub group: Option<u32>,
    /// `--parallel` for the sidecar (default: the CPUs available to it).
    pub parallel: Option<u32>,
    /// The entrypoint's path inside the image.
    pub entrypoint: String,
    /// The user logic, passed after `--`. Empty: the image's own ENTRYPOINT
    /// and CMD run unchanged.
    pub command: Vec<String>,
    /// The executor container's name.
    pub executor_container: String,
    /// The sidecar container's name.
    pub sidecar_container: String,
    /// The sidecar's CPU request and limit, a Kubernetes quantity (`500m`, `2`).
    pub cpu: Option<String>,
    /// The sidecar's memory request and limit, a Kubernetes quantity (`1Gi`).
    pub memory: Option<String>,
}

impl Default for PodTemplate {
    fn default() -> Self {
        Self {
            image: String::new(),
            volume: DEFAULT_VOLUME.to_owned(),
            memory_medium: false,
            size_limit: None,
            native_sidecar: false,
            user: DEFAULT_USER,
            group: None,
            parallel: None,
            entrypoint: DEFAULT_ENTRYPOINT.to_owned(),
            command: Vec::new(),
            executor_container: DEFAULT_EXECUTOR_CONTAINER.to_owned(),
            sidecar_container: DEFAULT_SIDECAR_CONTAINER.to_owned(),
            cpu: None,
            memory: None,
        }
    }
}

impl PodTemplate {
    /// Where the volume is mounted in both containers.
    pub fn mount_path(&self) -> String {
        format!("{MOUNT_ROOT}/{}", self.volume)
    }

    /// The sidecar's group id.
    pub fn group_id(&self) -> u32 {
        self.group.unwrap_or(self.user)
    }

    /// The sidecar container's `args`, or `None` when there is no command
    /// (then the image's ENTRYPOINT and CMD run unchanged).
    pub fn sidecar_args(&self) -> Option<Vec<String>> {
        if self.command.is_empty() {
            return None;
        }
        let mut args: Vec<String> = vec![
            "--mode".into(),
            "serve".into(),
            "--volume".into(),
            self.mount_path(),
        ];
        if !self.native_sidecar {
            args.push("--exit-on-orphan".into());
        }
        args.push("--exit-zero-on-sigterm".into());
        if let Some(n) = self.parallel {
            args.push("--parallel".into());
            args.push(n.to_string());
        }
        args.push("--".into());
        args.extend(self.command.iter().cloned());
        Some(args)
    }

    /// The probes' command: `<entrypoint> probe --volume <mount>`.
    pub fn probe_command(&self) -> Vec<String> {
        vec![
            self.entrypoint.clone(),
            "probe".into(),
            "--volume".into(),
            self.mount_path(),
        ]
    }

    /// Checks every setting Kubernetes would reject, or that would make the
    /// sidecar fail at start, before anything is written.
    pub fn validate(&self) -> Result<(), PodTemplateError> {
        self.validate_names()?;
        self.validate_identity()?;
        self.validate_quantities()
    }

    fn validate_names(&self) -> Result<(), PodTemplateError> {
        if !is_dns_label(&self.volume) {
            return Err(PodTemplateError::VolumeName {
                name: self.volume.clone(),
            });
        }
        for name in [&self.executor_container, &self.sidecar_container] {
            if !is_dns_label(name) {
                return Err(PodTemplateError::ContainerName { name: name.clone() });
            }
        }
        if self.executor_container == self.sidecar_container {
            return Err(PodTemplateError::SameContainerName {
                name: self.sidecar_container.clone(),
            });
        }
        if self.image.is_empty()
            || self
                .image
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(PodTemplateError::Image {
                image: self.image.clone(),
            });
        }
        if !self.entrypoint.starts_with('/') || self.entrypoint.chars().any(char::is_control) {
            return Err(PodTemplateError::Entrypoint {
                path: self.entrypoint.clone(),
            });
        }
        Ok(())
    }

    fn validate_identity(&self) -> Result<(), PodTemplateError> {
        if self.user == 0 {
            return Err(PodTemplateError::RootUser { uid: self.user });
        }
        if self.group_id() == 0 {
            return Err(PodTemplateError::RootGroup {
                gid: self.group_id(),
            });
        }
        Ok(())
    }

    fn validate_quantities(&self) -> Result<(), PodTemplateError> {
        if let Some(q) = &self.size_limit {
            if !is_quantity(q) {
                return Err(PodTemplateError::SizeLimit { value: q.clone() });
            }
        }
        if let Some(q) = &self.cpu {
            if !is_cpu(q) {
                return Err(PodTemplateError::Cpu { value: q.clone() });
            }
        }
        if let Some(q) = &self.memory {
            if !is_quantity(q) || !has_nonzero_digit(q) {
                return Err(PodTemplateError::Memory { value: q.clone() });
            }
        }
        Ok(())
    }
}

/// A DNS-1123 label: what Kubernetes accepts as a volume or container name.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(inner)
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
}

/// A Kubernetes resource quantity as a size: digits, an optional fraction,
/// an optional binary or decimal suffix (`Ki Mi Gi Ti Pi Ei k M G T P E`).
fn is_quantity(s: &str) -> bool {
    const SUFFIXES: [&str; 12] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E",
    ];
    let number = SUFFIXES
        .iter()
        .find_map(|suffix| s.strip_suffix(suffix))
        .unwrap_or(s);
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (number, None),
    };
    !whole.is_empty()
        && whole.bytes().all(|c| c.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|c| c.is_ascii_digit()))
}

/// A CPU quantity: cores with an optional fraction (`2`, `0.5`) or
/// millicores (`500m`), above zero.
fn is_cpu(s: &str) -> bool {
    let number = s.strip_suffix('m').unwrap_or(s);
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (number, None),
    };
    let millis = number.len() != s.len();
    !whole.is_empty()
        && whole.bytes().all(|c| c.is_ascii_digit())
        && frac.is_none_or(|f| !millis && !f.is_empty() && f.bytes().all(|c| c.is_ascii_digit()))
        && has_nonzero_digit(number)
}

fn has_nonzero_digit(s: &str) -> bool {
    s.bytes().any(|c| (b'1'..=b'9').contains(&c))
}

/// The YAML being written, line by line.
#[derive(Debug, Default)]
struct Out(String);

impl Out {
    fn line(&mut self, indent: usize, text: &str) {
        self.0.extend(std::iter::repeat_n(' ', indent));
        self.0.push_str(text);
        self.0.push('\n');
    }

    /// A comment block: each of `lines` as a `# ` line at `indent`.
    fn comment(&mut self, indent: usize, lines: &[&str]) {
        for l in lines {
            self.line(indent, &format!("# {l}"));
        }
    }
}

/// A YAML scalar: a JSON string, which YAML reads as a double-quoted scalar.
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// The `spark-submit` line for this template: every setting it relies on,
/// one `--conf` per line (the first and last lines are the command and the
/// application). Printed in the template's header and by the CLI.
pub fn spark_submit(t: &PodTemplate) -> Vec<String> {
    let mut lines = vec![
        "spark-submit \\".to_owned(),
        "  --master k8s://https://<api-server> --deploy-mode cluster \\".to_owned(),
        format!("  --conf spark.kubernetes.executor.podTemplateFile={TEMPLATE_FILE} \\"),
        format!(
            "  --conf spark.kubernetes.executor.podTemplateContainerName={} \\",
            t.executor_container
        ),
        format!(
            "  --conf spark.executorEnv.SIDECAR_VOLUME={} \\",
            t.mount_path()
        ),
    ];
    if !t.native_sidecar {
        // The default only since Spark 4.0: a crashed sidecar must fail its
        // executor on Spark 3.x too.
        lines.push("  --conf spark.kubernetes.executor.checkAllContainers=true \\".to_owned());
    }
    lines.push("  job.py".to_owned());
    lines
}

/// Renders the pod template as YAML, with comments explaining each part.
/// Pure: call [`PodTemplate::validate`] first to refuse settings Kubernetes
/// would reject.
pub fn render(t: &PodTemplate) -> String {
    let mut y = Out::default();
    header(&mut y, t);
    y.line(0, "apiVersion: v1");
    y.line(0, "kind: Pod");
    y.line(0, "spec:");
    volume(&mut y, t);
    if t.native_sidecar {
        y.comment(
            2,
            &[
                "Native sidecar (Kubernetes 1.29+): an init container with restartPolicy",
                "Always starts before the executor; the kubelet starts the executor only",
                "once the sidecar's startupProbe passed (sidecar/ready written, heartbeat",
                "fresh), restarts the sidecar if it exits or its livenessProbe fails, and",
                "stops it after the executor exited, so the pod completes. Init containers",
                "are not among the statuses checkAllContainers looks at, and Kubernetes",
                "ignores a native sidecar's exit status for the pod's phase.",
            ],
        );
        y.line(2, "initContainers:");
        sidecar(&mut y, t);
    }
    y.line(2, "containers:");
    executor(&mut y, t);
    if !t.native_sidecar {
        sidecar(&mut y, t);
    }
    y.0
}

fn header(y: &mut Out, t: &PodTemplate) {
    let mount = t.mount_path();
    y.comment(
        0,
        &[
            "Spark-on-Kubernetes executor pod template: the sidecar beside every executor.",
            "Generated by `executor-shim pod-template`. Save it as executor-pod.yaml and",
            "submit with every setting it relies on:",
        ],
    );
    let submit = spark_submit(t);
    let submit: Vec<String> = submit.iter().map(|l| format!("  {l}")).collect();
    let submit: Vec<&str> = submit.iter().map(String::as_str).collect();
    y.comment(0, &submit);
    y.comment(
        0,
        &[
            "and, in the job, the shim's attach provider on the same volume:",
            &format!("  sidecar_shim.map_in_arrow(volume=\"{mount}\", ...)"),
        ],
    );
}

fn volume(y: &mut Out, t: &PodTemplate) {
    y.line(2, "volumes:");
    y.comment(
        4,
        &[
            "The shared volume: the only channel between the executor and the sidecar.",
            "Flags are renamed into place, so both sides must see one filesystem: an",
            "emptyDir of this pod (world-writable, so the executor's uid 185 and the",
            "sidecar's uid can both use it).",
        ],
    );
    y.line(4, &format!("- name: {}", q(&t.volume)));
    if !t.memory_medium && t.size_limit.is_none() {
        // `emptyDir:` with nothing under it reads as null; `{}` is the empty map.
        y.line(6, "emptyDir: {}");
        return;
    }
    y.line(6, "emptyDir:");
    if t.memory_medium {
        y.comment(
            8,
            &[
                "A tmpfs: fastest, but its files are memory. They are charged to the",
                "container that writes them (the executor for staged inputs, the sidecar",
                "for outputs) and count against that container's memory limit: raise",
                "spark.executor.memoryOverhead by what a task stages, and the sidecar's",
                "--memory by what its logic writes. The volume holds at most the smaller",
                "of its sizeLimit and the sum of the pod's memory limits.",
            ],
        );
        y.line(8, &format!("medium: {}", q("Memory")));
    }
    if let Some(limit) = &t.size_limit {
        y.comment(
            8,
            &["The kubelet evicts the pod if the volume grows past this."],
        );
        y.line(8, &format!("sizeLimit: {}", q(limit)));
    }
}

fn executor(y: &mut Out, t: &PodTemplate) {
    y.comment(
        4,
        &[
            "The executor. Spark uses the container named by",
            "spark.kubernetes.executor.podTemplateContainerName (else the first one) and",
            "fills in image, command, resources and its own env; the mount and",
            "SIDECAR_VOLUME are kept.",
        ],
    );
    y.line(4, &format!("- name: {}", q(&t.executor_container)));
    y.line(6, "env:");
    y.comment(
        8,
        &["Where the executor-side shim finds the sidecar (attach provider)."],
    );
    env_and_mount(y, t, &[("SIDECAR_VOLUME", &t.mount_path())]);
}

/// `env` entries (already opened) and the volume mount of a container.
fn env_and_mount(y: &mut Out, t: &PodTemplate, env: &[(&str, &str)]) {
    for (name, value) in env {
        y.line(8, &format!("- name: {}", q(name)));
        y.line(10, &format!("value: {}", q(value)));
    }
    y.line(6, "volumeMounts:");
    y.line(8, &format!("- name: {}", q(&t.volume)));
    y.line(10, &format!("mountPath: {}", q(&t.mount_path())));
}

/// A flow sequence of YAML scalars: `["a", "b"]`.
fn list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", items.join(", "))
}

/// The sidecar container, as an entry of `containers` or `initContainers`.
fn sidecar(y: &mut Out, t: &PodTemplate) {
    y.comment(
        4,
        &["The sidecar: sidecar-entrypoint serving tasks from the shared volume."],
    );
    y.line(4, &format!("- name: {}", q(&t.sidecar_container)));
    y.line(6, &format!("image: {}", q(&t.image)));
    if t.native_sidecar {
        y.line(6, "restartPolicy: \"Always\"");
    }
    sidecar_command(y, t);
    y.line(6, "env:");
    let mount = t.mount_path();
    let mut env = vec![("SIDECAR_VOLUME", mount.as_str())];
    if t.command.is_empty() {
        // The image's own ENTRYPOINT runs: the flag cannot be passed.
        env.push(("SIDECAR_EXIT_ZERO_ON_SIGTERM", "1"));
    }
    env_and_mount(y, t, &env);
    resources(y, t);
    probes(y, t);
    security_context(y, t);
    y.comment(
        6,
        &["If the sidecar fails, the end of its output becomes the pod's message."],
    );
    y.line(6, "terminationMessagePolicy: \"FallbackToLogsOnError\"");
}

fn sidecar_command(y: &mut Out, t: &PodTemplate) {
    let Some(args) = t.sidecar_args() else {
        y.comment(
            6,
            &[
                "No command given: the image's ENTRYPOINT and CMD run unchanged; they",
                "must start `sidecar-entrypoint --mode serve`. SIDECAR_VOLUME below tells",
                "it where the volume is, SIDECAR_EXIT_ZERO_ON_SIGTERM how to stop.",
            ],
        );
        return;
    };
    y.comment(
        6,
        &["serve mode: many tasks, concurrently, each in tasks/<id>/ on the volume."],
    );
    if !t.native_sidecar {
        y.comment(
            6,
            &[
                "--exit-on-orphan: when the executor's lease goes stale the sidecar",
                "exits 0, so the pod can complete.",
            ],
        );
    }
    y.comment(
        6,
        &[
            "--exit-zero-on-sigterm: the kubelet stops a sidecar with SIGTERM (then",
            "SIGKILL after the pod's terminationGracePeriodSeconds, 30 s by default).",
            "The entrypoint cancels in-flight tasks (TERM, --grace 10s, KILL), records",
            "their outcomes and exits 0; 143 only if an outcome could not be recorded.",
        ],
    );
    if !t.native_sidecar {
        y.comment(
            6,
            &[
                "With spark.kubernetes.executor.checkAllContainers (default true since",
                "Spark 4.0) a container of this list that exits non-zero fails the",
                "executor at once, so a clean stop must exit 0. A crash still fails it:",
                "Spark replaces the executor, which cannot run tasks without its sidecar.",
            ],
        );
    }
    y.line(
        6,
        &format!("command: {}", list(std::slice::from_ref(&t.entrypoint))),
    );
    y.line(6, "args:");
    for a in &args {
        y.line(8, &format!("- {}", q(a)));
    }
}

fn resources(y: &mut Out, t: &PodTemplate) {
    let set: Vec<(&str, &String)> = [("cpu", &t.cpu), ("memory", &t.memory)]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
        .collect();
    if set.is_empty() {
        y.comment(
            6,
            &[
                "No --cpu/--memory: no requests, so the scheduler does not count the",
                "sidecar and it runs best-effort beside an executor that has a limit.",
            ],
        );
        return;
    }
    y.comment(
        6,
        &[
            "Requests and limits alike (--cpu, --memory): added to the executor's when",
            "the pod is scheduled. The logic's memory and the tmpfs files the sidecar",
            "writes (medium: Memory) count against this limit.",
        ],
    );
    y.line(6, "resources:");
    for section in ["requests", "limits"] {
        y.line(8, &format!("{section}:"));
        for (k, v) in &set {
            y.line(10, &format!("{k}: {}", q(v)));
        }
    }
}

fn probes(y: &mut Out, t: &PodTemplate) {
    let command = list(&t.probe_command());
    y.comment(
        6,
        &[
            "`sidecar-entrypoint probe` exits 0 only when sidecar/ready is written and",
            "the heartbeat is at most 5 s old; no shell needed (FROM scratch images).",
            "Startup: every second for up to 2 minutes (image start, init scripts);",
            "the liveness probe waits for it.",
        ],
    );
    y.line(6, "startupProbe:");
    y.line(8, "exec:");
    y.line(10, &format!("command: {command}"));
    y.line(8, "periodSeconds: 1");
    y.line(8, "timeoutSeconds: 1");
    y.line(8, "failureThreshold: 120");
    y.comment(
        6,
        &[
            "Liveness: a sidecar whose heartbeat is stale for three probes in a row",
            "(about 20 s) is hung, and the kubelet kills it.",
        ],
    );
    y.comment(
        6,
        &[if t.native_sidecar {
            "A native sidecar is then restarted (restartPolicy: Always)."
        } else {
            "Spark pods never restart: checkAllContainers fails the executor and Spark replaces it."
        }],
    );
    y.line(6, "livenessProbe:");
    y.line(8, "exec:");
    y.line(10, &format!("command: {command}"));
    y.line(8, "periodSeconds: 5");
    y.line(8, "timeoutSeconds: 2");
    y.line(8, "failureThreshold: 3");
}

fn security_context(y: &mut Out, t: &PodTemplate) {
    y.comment(
        6,
        &[
            "Locked down: numeric non-root user, read-only root filesystem (the",
            "volume is the only writable place), no privilege escalation, no",
            "capabilities, the container runtime's default seccomp profile.",
        ],
    );
    y.line(6, "securityContext:");
    y.line(8, "runAsNonRoot: true");
    y.line(8, &format!("runAsUser: {}", t.user));
    y.line(8, &format!("runAsGroup: {}", t.group_id()));
    y.line(8, "readOnlyRootFilesystem: true");
    y.line(8, "allowPrivilegeEscalation: false");
    y.line(8, "privileged: false");
    y.line(8, "capabilities:");
    y.line(10, "drop: [\"ALL\"]");
    y.line(8, "seccompProfile:");
    y.line(10, "type: \"RuntimeDefault\"");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_quantities() {
        for ok in ["shared", "a", "vol-1", "0x"] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "Shared", "a_b", "a.b", &"x".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        for ok in ["1", "512Mi", "2Gi", "1.5G", "100k"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for ok in ["1", "0.5", "500m", "2", "1.25", "10m"] {
            assert!(is_cpu(ok), "{ok}");
        }
        for bad in [
            "", "0", "0m", "0.0", "m", "1.5m", "-1", "1 core", "1Gi", ".5",
        ] {
            assert!(!is_cpu(bad), "{bad}");
        }
        for bad in ["", "Gi", "1.Gi", "1 Gi", "-1Gi", "1gb", "1e3x"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
