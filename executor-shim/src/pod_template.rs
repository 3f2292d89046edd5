//! `executor-shim pod-template`: a Spark-on-Kubernetes executor pod template
//! that puts the sidecar beside every executor.
//!
//! On Kubernetes nothing needs to start the sidecar: the pod does. Spark
//! builds each executor pod from a template file; this module writes one in
//! which the executor container and the sidecar container share an
//! `emptyDir` volume mounted at `/opt/sidecar/shared-volumes/<name>`, and the
//! sidecar runs `sidecar-entrypoint --mode serve` locked down (numeric
//! non-root user, read-only root filesystem, no privilege escalation, no
//! capabilities, the runtime's default seccomp profile).
//!
//! ## Use
//!
//! ```text
//! executor-shim pod-template --image registry.example/geocoder:1 --memory-medium \
//!     -- /app/geocode > executor-pod.yaml
//!
//! spark-submit \
//!   --master k8s://https://<api-server> --deploy-mode cluster \
//!   --conf spark.kubernetes.executor.podTemplateFile=executor-pod.yaml \
//!   --conf spark.executorEnv.SIDECAR_VOLUME=/opt/sidecar/shared-volumes/shared \
//!   job.py
//! ```
//!
//! (`SIDECAR_VOLUME` is in the template's executor container already; the
//! `spark.executorEnv` line makes it explicit and survives a hand-edited
//! template.) In the job, the executor side attaches to the sidecar that is
//! already running in its pod (the `attach` provider):
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
//! * **Which container is the executor.** Spark takes the first entry of
//!   `containers` (or the one named by
//!   `spark.kubernetes.executor.podTemplateContainerName`) and fills in the
//!   image, command, resources and its own environment; everything else in the
//!   template (volumes, other containers, init containers, env, mounts) is
//!   kept. The executor container is therefore emitted first, named
//!   `spark-kubernetes-executor` (Spark's own default name), with only the
//!   mount and `SIDECAR_VOLUME`.
//! * **Two sidecar forms.** By default the sidecar is a second entry of
//!   `containers`; it runs with `--exit-on-orphan`, so when the executor is
//!   gone (its lease goes stale) the sidecar exits 0 and the pod can complete.
//!   With `--native-sidecar` it is an init container with
//!   `restartPolicy: Always` (Kubernetes' native sidecars, 1.29+): the kubelet
//!   starts it before the executor and stops it after the executor exits, so
//!   it needs no orphan detection.
//! * **Two users, one volume.** The executor (Spark images run as uid 185)
//!   and the sidecar (`--user`, default 5001) are different users. An
//!   `emptyDir` is world-writable at its root, and each side creates the
//!   directories the other writes in world-writable (mode 0777 whatever the
//!   umask), so neither needs the other's identity and the template leaves
//!   the pod's own `securityContext` (Spark's volumes, Spark's user) alone.
//! * **No probes.** The executor side already waits for `sidecar/ready` and
//!   watches `sidecar/heartbeat`, with deadlines, so a probe would add
//!   nothing but a second, less precise opinion; and an exec probe would need
//!   a shell in the image, which a `FROM scratch` image does not have.
//! * **Pure rendering.** [`render`] turns a [`PodTemplate`] (plain data with
//!   [`Default`]) into YAML; [`run`] is the thin CLI around it. Scalars are
//!   emitted as JSON strings, which are valid YAML and need no escaping rules
//!   of our own.
//!
//! ## Known problems
//!
//! * A `Memory` medium volume is a tmpfs: what is staged there counts against
//!   the pod's memory limit, so raise `spark.executor.memoryOverhead` by the
//!   `--size-limit`.
//! * `--native-sidecar` needs Kubernetes 1.29 or later (the `SidecarContainers`
//!   feature); an older API server drops `restartPolicy` from the init
//!   container, which then blocks the executor from ever starting.

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
        if let Some(n) = self.parallel {
            args.push("--parallel".into());
            args.push(n.to_string());
        }
        args.push("--".into());
        args.extend(self.command.iter().cloned());
        Some(args)
    }

    /// Checks every setting Kubernetes would reject, or that would make the
    /// sidecar fail at start, before anything is written.
    pub fn validate(&self) -> Result<(), PodTemplateError> {
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
        if self.user == 0 {
            return Err(PodTemplateError::RootUser { uid: self.user });
        }
        if self.group_id() == 0 {
            return Err(PodTemplateError::RootGroup {
                gid: self.group_id(),
            });
        }
        if let Some(q) = &self.size_limit {
            if !is_quantity(q) {
                return Err(PodTemplateError::SizeLimit { value: q.clone() });
            }
        }
        if !self.entrypoint.starts_with('/') || self.entrypoint.chars().any(char::is_control) {
            return Err(PodTemplateError::Entrypoint {
                path: self.entrypoint.clone(),
            });
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

/// Renders the pod template as YAML, with comments explaining each part.
/// Pure: call [`PodTemplate::validate`] first to refuse settings Kubernetes
/// would reject.
pub fn render(t: &PodTemplate) -> String {
    let mount = t.mount_path();
    let gid = t.group_id();
    let mut y = Out::default();

    y.comment(
        0,
        &[
            "Spark-on-Kubernetes executor pod template: the sidecar beside every executor.",
            "Generated by `executor-shim pod-template`. Use it with",
            "  spark-submit \\",
            "    --conf spark.kubernetes.executor.podTemplateFile=executor-pod.yaml \\",
            &format!("    --conf spark.executorEnv.SIDECAR_VOLUME={mount} ..."),
            "and, in the job, the shim's attach provider on the same volume:",
            &format!("  sidecar_shim.map_in_arrow(volume=\"{mount}\", ...)"),
        ],
    );
    y.line(0, "apiVersion: v1");
    y.line(0, "kind: Pod");
    y.line(0, "spec:");
    y.line(2, "volumes:");
    y.comment(
        4,
        &[
            "The shared volume: the only channel between the executor and the sidecar.",
            "Flags are renamed into place, so both sides must see one filesystem: an",
            "emptyDir of this pod.",
        ],
    );
    y.line(4, &format!("- name: {}", q(&t.volume)));
    y.line(6, "emptyDir:");
    let mut empty = true;
    if t.memory_medium {
        y.comment(
            8,
            &[
                "A tmpfs: fastest, but its contents count against the pod's memory limit",
                "(raise spark.executor.memoryOverhead accordingly).",
            ],
        );
        y.line(8, &format!("medium: {}", q("Memory")));
        empty = false;
    }
    if let Some(limit) = &t.size_limit {
        y.comment(
            8,
            &["The kubelet evicts the pod if the volume grows past this."],
        );
        y.line(8, &format!("sizeLimit: {}", q(limit)));
        empty = false;
    }
    if empty {
        // `emptyDir:` with nothing under it reads as null; `{}` is the empty map.
        y.0.truncate(y.0.len() - 1);
        y.0.push_str(" {}\n");
    }

    if t.native_sidecar {
        y.comment(
            2,
            &[
                "Native sidecar (Kubernetes 1.29+): an init container with restartPolicy",
                "Always starts before the executor, runs beside it, and is stopped by the",
                "kubelet once the executor has exited, so the pod completes.",
            ],
        );
        y.line(2, "initContainers:");
        sidecar(&mut y, t, &mount, gid);
    }
    y.line(2, "containers:");
    y.comment(
        4,
        &[
            "The executor. Spark uses the first container (or the one named by",
            "spark.kubernetes.executor.podTemplateContainerName) and fills in image,",
            "command, resources and its own env; the mount and SIDECAR_VOLUME are kept.",
        ],
    );
    y.line(4, &format!("- name: {}", q(&t.executor_container)));
    y.line(6, "env:");
    y.comment(
        8,
        &["Where the executor-side shim finds the sidecar (attach provider)."],
    );
    y.line(8, &format!("- name: {}", q("SIDECAR_VOLUME")));
    y.line(10, &format!("value: {}", q(&mount)));
    y.line(6, "volumeMounts:");
    y.line(8, &format!("- name: {}", q(&t.volume)));
    y.line(10, &format!("mountPath: {}", q(&mount)));
    if !t.native_sidecar {
        sidecar(&mut y, t, &mount, gid);
    }
    y.0
}

/// The sidecar container, as an entry of `containers` or `initContainers`.
fn sidecar(y: &mut Out, t: &PodTemplate, mount: &str, gid: u32) {
    let list = |items: &[String]| {
        let items: Vec<String> = items.iter().map(|s| q(s)).collect();
        format!("[{}]", items.join(", "))
    };
    y.comment(
        4,
        &["The sidecar: sidecar-entrypoint serving tasks from the shared volume."],
    );
    y.line(4, &format!("- name: {}", q(&t.sidecar_container)));
    y.line(6, &format!("image: {}", q(&t.image)));
    if t.native_sidecar {
        y.line(6, "restartPolicy: \"Always\"");
    }
    match t.sidecar_args() {
        Some(args) => {
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
            y.line(
                6,
                &format!("command: {}", list(std::slice::from_ref(&t.entrypoint))),
            );
            y.line(6, "args:");
            for a in &args {
                y.line(8, &format!("- {}", q(a)));
            }
        }
        None => {
            y.comment(
                6,
                &[
                    "No command given: the image's ENTRYPOINT and CMD run unchanged; they",
                    "must start `sidecar-entrypoint --mode serve`. SIDECAR_VOLUME below tells",
                    "it where the volume is.",
                ],
            );
        }
    }
    y.line(6, "env:");
    y.line(8, &format!("- name: {}", q("SIDECAR_VOLUME")));
    y.line(10, &format!("value: {}", q(mount)));
    y.line(6, "volumeMounts:");
    y.line(8, &format!("- name: {}", q(&t.volume)));
    y.line(10, &format!("mountPath: {}", q(mount)));
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
    y.line(8, &format!("runAsGroup: {gid}"));
    y.line(8, "readOnlyRootFilesystem: true");
    y.line(8, "allowPrivilegeEscalation: false");
    y.line(8, "privileged: false");
    y.line(8, "capabilities:");
    y.line(10, "drop: [\"ALL\"]");
    y.line(8, "seccompProfile:");
    y.line(10, "type: \"RuntimeDefault\"");
    y.comment(
        6,
        &["If the sidecar fails, the end of its output becomes the pod's message."],
    );
    y.line(6, "terminationMessagePolicy: \"FallbackToLogsOnError\"");
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
        for bad in ["", "Gi", "1.Gi", "1 Gi", "-1Gi", "1gb", "1e3x"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
