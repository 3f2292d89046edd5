//! The Docker image the Docker-provider tests run: `examples/foundry-dd`,
//! built offline on first use.

use std::path::Path;
use std::process::Command;

/// The example image: the static entrypoint at `/usr/bin/sidecar-entrypoint`,
/// busybox for `/bin/sh` and `dd`.
pub const IMAGE: &str = "sidecar-foundry-dd:latest";

/// Whether a Docker engine answers, and `image` exists (built if not).
/// `Err` carries the reason to print in a `SKIPPED: docker: …` line.
pub fn docker_image(image: &str) -> Result<(), String> {
    let info = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if !info.status.success() {
        return Err(format!(
            "no engine answers: {}",
            String::from_utf8_lossy(&info.stderr).trim()
        ));
    }
    let inspect = Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .map_err(|e| e.to_string())?;
    if inspect.status.success() {
        return Ok(());
    }
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/foundry-dd/build.sh");
    let built = Command::new(&build)
        .env("IMAGE", image)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", build.display()))?;
    if !built.status.success() {
        return Err(format!(
            "cannot build {image}: {}",
            String::from_utf8_lossy(&built.stderr).trim()
        ));
    }
    Ok(())
}
