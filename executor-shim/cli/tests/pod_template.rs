#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `executor-shim pod-template`: the binary prints the library's rendering,
//! and refuses bad settings with the reason.

use executor_shim::pod_template::{render, PodTemplate};
use serde_json::Value;

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no entry named {name} in {list}"))
}

#[test]
fn executor_shim_pod_template_prints_the_template() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_executor-shim"))
        .args([
            "pod-template",
            "--image",
            "geo:1",
            "--memory-medium",
            "--native-sidecar",
            "--",
            "/app/run",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let yaml = String::from_utf8(out.stdout).unwrap();
    let pod: Value = serde_norway::from_str(&yaml).unwrap();
    let spec = &pod["spec"];
    assert_eq!(
        named(&spec["volumes"], "shared")["emptyDir"]["medium"],
        "Memory"
    );
    let sidecar = named(&spec["initContainers"], "sidecar");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["image"], "geo:1");
    assert_eq!(
        sidecar["args"].as_array().and_then(|a| a.last()),
        Some(&Value::from("/app/run"))
    );
    assert_eq!(
        yaml,
        render(&PodTemplate {
            image: "geo:1".into(),
            memory_medium: true,
            native_sidecar: true,
            command: vec!["/app/run".into()],
            ..Default::default()
        })
    );

    // A refused setting: nothing on stdout, the reason on stderr.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_executor-shim"))
        .args(["pod-template", "--image", "geo:1", "--user", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--user 0 is root"), "{stderr}");
}
