#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The generated executor pod template, read back with a real YAML parser
//! and checked the way a reviewer of the manifest would check it.

use executor_shim::pod_template::{render, spark_submit, PodTemplate, PodTemplateError};
use serde_json::Value;

const MOUNT: &str = "/opt/sidecar/shared-volumes/shared";

fn parse(t: &PodTemplate) -> Value {
    t.validate().unwrap();
    let yaml = render(t);
    serde_norway::from_str::<Value>(&yaml)
        .unwrap_or_else(|e| panic!("the template is not valid YAML: {e}\n{yaml}"))
}

fn base() -> PodTemplate {
    PodTemplate {
        image: "registry.example/geocoder:1.2".into(),
        command: vec!["/app/geocode".into(), "--fast".into()],
        ..Default::default()
    }
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no entry named {name} in {list}"))
}

fn assert_mounted(container: &Value, volume: &str, path: &str) {
    let m = named(&container["volumeMounts"], volume);
    assert_eq!(
        m["mountPath"], path,
        "mount of {volume} in {}",
        container["name"]
    );
    let env = named(&container["env"], "SIDECAR_VOLUME");
    assert_eq!(
        env["value"], path,
        "SIDECAR_VOLUME in {}",
        container["name"]
    );
}

/// Both probes exec `<entrypoint> probe --volume <mount>`: no shell.
fn assert_probed(sidecar: &Value, mount: &str) {
    for probe in ["startupProbe", "livenessProbe"] {
        let p = &sidecar[probe];
        assert_eq!(
            strings(&p["exec"]["command"]),
            ["/usr/bin/sidecar-entrypoint", "probe", "--volume", mount],
            "{probe}: {p}"
        );
        assert!(p["periodSeconds"].as_u64().is_some(), "{probe}: {p}");
    }
    // The startup probe gives start-up time; liveness tolerates a slow probe
    // or two before a restart.
    let startup = &sidecar["startupProbe"];
    let budget =
        startup["periodSeconds"].as_u64().unwrap() * startup["failureThreshold"].as_u64().unwrap();
    assert!(budget >= 60, "{startup}");
    assert!(
        sidecar["livenessProbe"]["failureThreshold"]
            .as_u64()
            .unwrap()
            >= 3
    );
    assert!(sidecar.get("readinessProbe").is_none(), "{sidecar}");
}

fn assert_locked_down(sidecar: &Value, uid: u64) {
    let sc = &sidecar["securityContext"];
    assert_eq!(sc["runAsNonRoot"], Value::Bool(true), "{sc}");
    // Numeric, not a string: Kubernetes rejects "5001".
    assert_eq!(sc["runAsUser"].as_u64(), Some(uid), "{sc}");
    assert!(sc["runAsGroup"].as_u64().is_some_and(|g| g != 0), "{sc}");
    assert_eq!(sc["readOnlyRootFilesystem"], Value::Bool(true), "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false), "{sc}");
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{sc}");
    assert!(sc["capabilities"].get("add").is_none(), "{sc}");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{sc}");
}

#[test]
fn default_template_puts_a_locked_down_sidecar_beside_the_executor() {
    let pod = parse(&base());
    assert_eq!(pod["apiVersion"], "v1");
    assert_eq!(pod["kind"], "Pod");
    let spec = &pod["spec"];

    // The shared volume: an emptyDir on the node's disk by default.
    let vol = named(&spec["volumes"], "shared");
    assert!(vol["emptyDir"].is_object(), "emptyDir must be a map: {vol}");
    assert!(vol["emptyDir"].get("medium").is_none(), "{vol}");

    // Spark takes the first container as the executor.
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2, "{spec}");
    assert_eq!(containers[0]["name"], "spark-kubernetes-executor");
    assert!(
        containers[0].get("image").is_none(),
        "Spark sets the executor image"
    );
    assert_mounted(&containers[0], "shared", MOUNT);

    let sidecar = &containers[1];
    assert_eq!(sidecar["name"], "sidecar");
    assert_eq!(sidecar["image"], "registry.example/geocoder:1.2");
    assert_eq!(
        strings(&sidecar["command"]),
        ["/usr/bin/sidecar-entrypoint"]
    );
    assert_eq!(
        strings(&sidecar["args"]),
        [
            "--mode",
            "serve",
            "--volume",
            MOUNT,
            "--exit-on-orphan",
            "--exit-zero-on-sigterm",
            "--",
            "/app/geocode",
            "--fast"
        ]
    );
    assert_probed(sidecar, MOUNT);
    // No --cpu/--memory: no resources (and a comment saying what that means).
    assert!(sidecar.get("resources").is_none(), "{sidecar}");
    assert_mounted(sidecar, "shared", MOUNT);
    assert_locked_down(sidecar, 5001);
    assert!(sidecar.get("restartPolicy").is_none());
    assert!(spec.get("initContainers").is_none(), "{spec}");

    // The pod's own security context (Spark's user, Spark's volumes) is
    // left to Spark.
    assert!(spec.get("securityContext").is_none(), "{spec}");
}

#[test]
fn memory_medium_and_size_limit() {
    let pod = parse(&PodTemplate {
        memory_medium: true,
        size_limit: Some("2Gi".into()),
        ..base()
    });
    let vol = named(&pod["spec"]["volumes"], "shared");
    assert_eq!(vol["emptyDir"]["medium"], "Memory");
    assert_eq!(vol["emptyDir"]["sizeLimit"], "2Gi");

    let pod = parse(&PodTemplate {
        size_limit: Some("512Mi".into()),
        ..base()
    });
    let vol = named(&pod["spec"]["volumes"], "shared");
    assert!(vol["emptyDir"].get("medium").is_none(), "{vol}");
    assert_eq!(vol["emptyDir"]["sizeLimit"], "512Mi");
}

#[test]
fn native_sidecar_is_an_init_container_that_restarts_always() {
    let pod = parse(&PodTemplate {
        native_sidecar: true,
        ..base()
    });
    let spec = &pod["spec"];
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(
        containers.len(),
        1,
        "only the executor in containers: {spec}"
    );
    assert_eq!(containers[0]["name"], "spark-kubernetes-executor");
    assert_mounted(&containers[0], "shared", MOUNT);

    let inits = spec["initContainers"].as_array().unwrap();
    assert_eq!(inits.len(), 1, "{spec}");
    let sidecar = &inits[0];
    assert_eq!(sidecar["name"], "sidecar");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_mounted(sidecar, "shared", MOUNT);
    assert_locked_down(sidecar, 5001);
    // The kubelet stops a native sidecar; it needs no orphan detection.
    let args = strings(&sidecar["args"]);
    assert!(!args.contains(&"--exit-on-orphan"), "{args:?}");
    assert!(args.contains(&"--exit-zero-on-sigterm"), "{args:?}");
    assert_eq!(&args[..4], ["--mode", "serve", "--volume", MOUNT]);
    // The kubelet starts the executor only once this startupProbe passed.
    assert_probed(sidecar, MOUNT);
}

#[test]
fn volume_name_user_group_and_parallelism_are_honoured() {
    let pod = parse(&PodTemplate {
        volume: "data".into(),
        user: 1234,
        group: Some(4321),
        parallel: Some(3),
        ..base()
    });
    let spec = &pod["spec"];
    let mount = "/opt/sidecar/shared-volumes/data";
    assert!(named(&spec["volumes"], "data")["emptyDir"].is_object());
    let executor = named(&spec["containers"], "spark-kubernetes-executor");
    assert_mounted(executor, "data", mount);
    let sidecar = named(&spec["containers"], "sidecar");
    assert_mounted(sidecar, "data", mount);
    assert_locked_down(sidecar, 1234);
    assert_eq!(
        sidecar["securityContext"]["runAsGroup"].as_u64(),
        Some(4321)
    );
    let args = strings(&sidecar["args"]);
    let at = args.iter().position(|a| *a == "--parallel").unwrap();
    assert_eq!(args[at + 1], "3");
    assert_eq!(args[3], mount);
}

#[test]
fn without_a_command_the_image_entrypoint_runs_unchanged() {
    let pod = parse(&PodTemplate {
        command: vec![],
        ..base()
    });
    let sidecar = named(&pod["spec"]["containers"], "sidecar");
    assert!(sidecar.get("command").is_none(), "{sidecar}");
    assert!(sidecar.get("args").is_none(), "{sidecar}");
    // It still learns where the volume is and how to stop, is still
    // probed, and is still locked down.
    assert_mounted(sidecar, "shared", MOUNT);
    let env = named(&sidecar["env"], "SIDECAR_EXIT_ZERO_ON_SIGTERM");
    assert_eq!(env["value"], "1");
    assert_probed(sidecar, MOUNT);
    assert_locked_down(sidecar, 5001);
}

#[test]
fn cpu_and_memory_are_the_sidecars_requests_and_limits() {
    for native_sidecar in [false, true] {
        let pod = parse(&PodTemplate {
            cpu: Some("500m".into()),
            memory: Some("1Gi".into()),
            native_sidecar,
            ..base()
        });
        let list = if native_sidecar {
            "initContainers"
        } else {
            "containers"
        };
        let sidecar = named(&pod["spec"][list], "sidecar");
        let r = &sidecar["resources"];
        for section in ["requests", "limits"] {
            assert_eq!(r[section]["cpu"], "500m", "{r}");
            assert_eq!(r[section]["memory"], "1Gi", "{r}");
        }
        // Spark sets the executor's own resources.
        let executor = named(&pod["spec"]["containers"], "spark-kubernetes-executor");
        assert!(executor.get("resources").is_none(), "{executor}");
    }
    // One without the other.
    let pod = parse(&PodTemplate {
        memory: Some("256Mi".into()),
        ..base()
    });
    let r = &named(&pod["spec"]["containers"], "sidecar")["resources"];
    assert_eq!(r["limits"]["memory"], "256Mi", "{r}");
    assert!(r["limits"].get("cpu").is_none(), "{r}");
}

#[test]
fn the_spark_submit_line_names_every_setting_the_template_relies_on() {
    let t = PodTemplate {
        volume: "data".into(),
        executor_container: "exec".into(),
        ..base()
    };
    let line = spark_submit(&t).join("\n");
    for setting in [
        "--conf spark.kubernetes.executor.podTemplateFile=executor-pod.yaml",
        "--conf spark.kubernetes.executor.podTemplateContainerName=exec",
        "--conf spark.executorEnv.SIDECAR_VOLUME=/opt/sidecar/shared-volumes/data",
        // The sidecar is a regular container: its crash must fail the
        // executor on Spark 3.x too, where this is off by default.
        "--conf spark.kubernetes.executor.checkAllContainers=true",
    ] {
        assert!(line.contains(setting), "{setting} missing from:\n{line}");
    }
    // The template's header carries the same line.
    let yaml = render(&t);
    for l in spark_submit(&t) {
        assert!(yaml.contains(&format!("#   {l}\n")), "{l} not in:\n{yaml}");
    }
    // Native sidecars are init containers, which checkAllContainers ignores.
    let native = spark_submit(&PodTemplate {
        native_sidecar: true,
        ..t
    })
    .join("\n");
    assert!(!native.contains("checkAllContainers"), "{native}");
    assert!(native.contains("podTemplateContainerName=exec"), "{native}");
}

#[test]
fn awkward_arguments_survive_the_yaml_exactly() {
    let awkward = [
        "sh",
        "-c",
        "echo \"a: b\" # not a comment\n'x' \\ y",
        "yes",
        "null",
        "0x1F",
        "- dash",
        "{not: a map}",
        "ünïcode",
        "",
    ];
    let pod = parse(&PodTemplate {
        image: "img@sha256:0123abcd".into(),
        command: awkward.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    });
    let sidecar = named(&pod["spec"]["containers"], "sidecar");
    assert_eq!(sidecar["image"], "img@sha256:0123abcd");
    let args = strings(&sidecar["args"]);
    let at = args.iter().position(|a| *a == "--").unwrap();
    assert_eq!(&args[at + 1..], awkward);
}

#[test]
fn the_template_explains_itself() {
    let yaml = render(&base());
    let comments: Vec<&str> = yaml
        .lines()
        .filter(|l| l.trim_start().starts_with('#'))
        .collect();
    assert!(comments.len() >= 10, "too few comments:\n{yaml}");
    assert!(
        yaml.contains("spark.kubernetes.executor.podTemplateFile="),
        "{yaml}"
    );
    assert!(
        yaml.contains(&format!("spark.executorEnv.SIDECAR_VOLUME={MOUNT}")),
        "{yaml}"
    );
    // The comments say what a tmpfs volume costs and how a stop ends.
    let yaml = render(&PodTemplate {
        memory_medium: true,
        ..base()
    });
    for needle in [
        "count against that container's memory limit",
        "checkAllContainers",
        "--exit-zero-on-sigterm",
        "No --cpu/--memory",
    ] {
        assert!(yaml.contains(needle), "{needle} not explained:\n{yaml}");
    }
}

#[test]
fn settings_kubernetes_would_reject_are_refused_with_the_reason() {
    let cases: Vec<(PodTemplate, &str)> = vec![
        (PodTemplate { user: 0, ..base() }, "is root"),
        (
            PodTemplate {
                group: Some(0),
                ..base()
            },
            "is root",
        ),
        (
            PodTemplate {
                volume: "Shared_Vol".into(),
                ..base()
            },
            "\"Shared_Vol\" is not a Kubernetes volume name",
        ),
        (
            PodTemplate {
                size_limit: Some("two gigs".into()),
                ..base()
            },
            "\"two gigs\" is not a Kubernetes quantity",
        ),
        (
            PodTemplate {
                image: String::new(),
                ..base()
            },
            "is not an image reference",
        ),
        (
            PodTemplate {
                image: "a b".into(),
                ..base()
            },
            "is not an image reference",
        ),
        (
            PodTemplate {
                entrypoint: "sidecar-entrypoint".into(),
                ..base()
            },
            "must be an absolute path",
        ),
        (
            PodTemplate {
                executor_container: "sidecar".into(),
                ..base()
            },
            "both named \"sidecar\"",
        ),
        (
            PodTemplate {
                cpu: Some("half".into()),
                ..base()
            },
            "--cpu \"half\" is not a Kubernetes CPU quantity",
        ),
        (
            PodTemplate {
                cpu: Some("0m".into()),
                ..base()
            },
            "above zero",
        ),
        (
            PodTemplate {
                memory: Some("1 GB".into()),
                ..base()
            },
            "--memory \"1 GB\" is not a Kubernetes memory quantity",
        ),
        (
            PodTemplate {
                memory: Some("0Mi".into()),
                ..base()
            },
            "above zero",
        ),
    ];
    for (t, want) in cases {
        let err: PodTemplateError = t.validate().expect_err(want);
        let msg = err.to_string();
        assert!(msg.contains(want), "{msg:?} should contain {want:?}");
    }
}
