//! `executor-shim pod-template`: the command line of
//! [`executor_shim::pod_template`], which holds the model and the renderer.

use std::io::Write as _;

use executor_shim::pod_template::{
    render, spark_submit, PodTemplate, DEFAULT_ENTRYPOINT, DEFAULT_EXECUTOR_CONTAINER,
    DEFAULT_USER, DEFAULT_VOLUME,
};

/// `executor-shim pod-template`.
#[derive(clap::Args, Debug, Clone)]
pub struct PodTemplateArgs {
    /// The sidecar image; its entrypoint binary is expected at --entrypoint.
    #[arg(long, value_name = "IMAGE")]
    pub image: String,
    /// The shared volume's name; mounted at /opt/sidecar/shared-volumes/NAME in both containers.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_VOLUME)]
    pub volume: String,
    /// Back the volume with memory (emptyDir medium: Memory, a tmpfs).
    #[arg(long)]
    pub memory_medium: bool,
    /// The volume's size limit, a Kubernetes quantity (e.g. 2Gi).
    #[arg(long, value_name = "QUANTITY")]
    pub size_limit: Option<String>,
    /// Run the sidecar as a native sidecar: an init container with restartPolicy Always (Kubernetes 1.29+).
    #[arg(long)]
    pub native_sidecar: bool,
    /// The sidecar's numeric non-root user.
    #[arg(long, value_name = "UID", default_value_t = DEFAULT_USER)]
    pub user: u32,
    /// The sidecar's numeric group (default: the --user uid).
    #[arg(long, value_name = "GID")]
    pub group: Option<u32>,
    /// Tasks the sidecar runs at once (default: the CPUs available to it).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub parallel: Option<u32>,
    /// The sidecar-entrypoint binary's path inside the image.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_ENTRYPOINT)]
    pub entrypoint: String,
    /// The executor container's name (Spark's default; see spark.kubernetes.executor.podTemplateContainerName).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_EXECUTOR_CONTAINER)]
    pub executor_container: String,
    /// The sidecar's CPU request and limit, a Kubernetes quantity (e.g. 500m, 2).
    #[arg(long, value_name = "QUANTITY")]
    pub cpu: Option<String>,
    /// The sidecar's memory request and limit, a Kubernetes quantity (e.g. 512Mi, 2Gi).
    #[arg(long, value_name = "QUANTITY")]
    pub memory: Option<String>,
    /// The user logic the sidecar runs per task (after --). Without it, the image's ENTRYPOINT/CMD run.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl PodTemplateArgs {
    /// The settings these arguments describe.
    pub fn template(&self) -> PodTemplate {
        PodTemplate {
            image: self.image.clone(),
            volume: self.volume.clone(),
            memory_medium: self.memory_medium,
            size_limit: self.size_limit.clone(),
            native_sidecar: self.native_sidecar,
            user: self.user,
            group: self.group,
            parallel: self.parallel,
            entrypoint: self.entrypoint.clone(),
            command: self.command.clone(),
            executor_container: self.executor_container.clone(),
            cpu: self.cpu.clone(),
            memory: self.memory.clone(),
            ..Default::default()
        }
    }
}

/// Prints the pod template to stdout, and on stderr the `spark-submit`
/// line that uses it (stdout is usually redirected to the file).
pub fn run(args: PodTemplateArgs) -> anyhow::Result<()> {
    let template = args.template();
    template.validate()?;
    let yaml = render(&template);
    let mut out = std::io::stdout().lock();
    out.write_all(yaml.as_bytes())?;
    out.flush()?;
    let mut err = std::io::stderr().lock();
    writeln!(err, "Submit with every setting the template relies on:")?;
    for line in spark_submit(&template) {
        writeln!(err, "  {line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: PodTemplateArgs,
    }

    #[test]
    fn command_line_maps_onto_the_template() {
        let cli = Cli::try_parse_from([
            "pod-template",
            "--image",
            "geo:1",
            "--memory-medium",
            "--size-limit",
            "1Gi",
            "--native-sidecar",
            "--user",
            "7000",
            "--parallel",
            "4",
            "--volume",
            "work",
            "--cpu",
            "500m",
            "--memory",
            "1Gi",
            "--",
            "/app/run",
            "--flag",
        ])
        .unwrap();
        let t = cli.args.template();
        assert_eq!(
            t,
            PodTemplate {
                image: "geo:1".into(),
                volume: "work".into(),
                memory_medium: true,
                size_limit: Some("1Gi".into()),
                native_sidecar: true,
                user: 7000,
                parallel: Some(4),
                cpu: Some("500m".into()),
                memory: Some("1Gi".into()),
                command: vec!["/app/run".into(), "--flag".into()],
                ..Default::default()
            }
        );

        // Defaults: volume "shared", user 5001, disk medium, plain sidecar.
        let cli = Cli::try_parse_from(["pod-template", "--image", "geo:1"]).unwrap();
        assert_eq!(
            cli.args.template(),
            PodTemplate {
                image: "geo:1".into(),
                ..Default::default()
            }
        );

        // --image is required; --parallel 0 is refused.
        let err = Cli::try_parse_from(["pod-template"]).unwrap_err();
        assert!(err.to_string().contains("--image"), "{err}");
        assert!(Cli::try_parse_from(["pod-template", "--image", "x", "--parallel", "0"]).is_err());
    }
}
