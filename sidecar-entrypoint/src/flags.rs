//! Reading and writing the protocol's flags.

use std::path::Path;

use sidecar_core::atomic::{write_atomic, Durability};
use sidecar_core::id::TaskId;
use sidecar_core::protocol::ProtocolError;
use sidecar_core::record::{read_flag, Outcome, TaskSpec};

/// Reads and parses a start flag. Anything but a regular file is refused
/// before it is opened (opening a FIFO would block forever).
pub fn read_spec(path: &Path) -> Result<TaskSpec, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.file_type().is_file() {
        return Err(format!(
            "{}: the start flag is not a regular file",
            path.display()
        ));
    }
    let bytes =
        tokio::task::block_in_place(|| read_flag(path, "task spec")).map_err(|e| e.to_string())?;
    TaskSpec::parse(&bytes, path).map_err(|e| e.to_string())
}

/// Writes an outcome atomically.
pub fn write_outcome(
    path: &std::path::Path,
    task: &TaskId,
    outcome: &Outcome,
) -> Result<(), ProtocolError> {
    let abort = |message: String| ProtocolError::Aborted {
        task: task.clone(),
        message,
    };
    let mut bytes = serde_json::to_vec_pretty(outcome)
        .map_err(|e| abort(format!("cannot encode the outcome: {e}")))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes, Durability::Visible).map_err(|e| abort(e.to_string()))?;
    tracing::info!(task = %task, status = %outcome.status, reason = outcome.reason.as_deref().unwrap_or(""), "done_flag written");
    Ok(())
}
