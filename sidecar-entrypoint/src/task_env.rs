//! What a serve-mode task's logic is given: its environment, and which
//! staged file is its input.
//!
//! An executor in any language may write an empty `start_flag` ("all
//! defaults") after staging one file: the logic then gets that file as
//! `SIDECAR_INPUT`, in the format its extension names, and the output
//! format follows it. The logic is never handed a path to an input that is
//! not there:
//!
//! | spec's `input`          | staged in `input/`            | `SIDECAR_INPUT`                      |
//! |-------------------------|-------------------------------|--------------------------------------|
//! | `files` named           | all of them                   | the first named file                 |
//! | `files` named           | one missing                   | (the task fails, naming the file)    |
//! | no `files`, a `format`  | `part.<ext>` of that format   | `input/part.<ext>`                   |
//! | no `files`              | exactly one file              | that file                            |
//! | no `files`              | none, or several              | unset (`SIDECAR_INPUT_DIR` is the way in) |
//!
//! The input format is the spec's, else the input file's extension, else
//! (several files of one extension) that extension, else `arrows`; the
//! output format is the spec's, else the input format. In stream mode the
//! staged input is a FIFO, which counts as staged.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use sidecar_core::beneath::{Dir, Kind};
use sidecar_core::layout::{is_hidden, TaskDir};
use sidecar_core::protocol::Reject;
use sidecar_core::{Format, TaskSpec};

/// Variables the logic's contract defines: a spec may not set them.
const RESERVED_PREFIX: &str = "SIDECAR_";
const RESERVED: &[&str] = &["SHARED_DIR"];

/// The logic's input file (if any) and the formats of the task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub input: Option<PathBuf>,
    pub input_format: Format,
    pub output_format: Format,
}

/// Which staged file is the input, and the formats, per the module table.
pub fn resolve(task: &TaskDir, spec: &TaskSpec) -> Result<Resolved, Reject> {
    let dir = task.input();
    let named: &[String] = spec.input.as_ref().map_or(&[], |i| &i.files);
    let spec_format = spec.input.as_ref().and_then(|i| i.format);
    let staged = staged_files(task, &dir, spec.stream);
    let input = if let Some(first) = named.first() {
        for f in named {
            let rel = sidecar_core::safepath::validate_relative(f)
                .map_err(|e| refused(task, e.to_string()))?;
            if !staged.iter().any(|s| s == rel) {
                return Err(refused(
                    task,
                    format!(
                        "the input file {f:?} it names is not staged in {}",
                        dir.display()
                    ),
                ));
            }
        }
        Some(dir.join(first))
    } else {
        let part = spec_format.map(|f| PathBuf::from(format!("part.{}", f.extension())));
        match (part, staged.as_slice()) {
            (Some(part), _) if staged.contains(&part) => Some(dir.join(part)),
            (_, [only]) => Some(dir.join(only)),
            _ => None,
        }
    };
    let input_format = spec_format
        .or_else(|| input.as_deref().and_then(Format::from_path))
        .or_else(|| common_format(&staged))
        .unwrap_or_default();
    let output_format = spec
        .output
        .as_ref()
        .and_then(|o| o.format)
        .unwrap_or(input_format);
    Ok(Resolved {
        input,
        input_format,
        output_format,
    })
}

/// The logic's environment: the contract's variables, then the spec's own
/// (which may not redefine the contract's).
pub fn env(
    task: &TaskDir,
    volume: &Path,
    spec: &TaskSpec,
) -> Result<Vec<(OsString, OsString)>, Reject> {
    let resolved = resolve(task, spec)?;
    let output = task
        .output()
        .join(format!("part.{}", resolved.output_format.extension()));
    let path = |p: &Path| p.as_os_str().to_owned();
    let mut env: Vec<(OsString, OsString)> = vec![
        ("SIDECAR_TASK_ID".into(), task.id().as_str().into()),
        ("SIDECAR_TASK_DIR".into(), path(task.root())),
        ("SIDECAR_INPUT_DIR".into(), path(&task.input())),
        ("SIDECAR_OUTPUT_DIR".into(), path(&task.output())),
        ("SIDECAR_OUTPUT".into(), path(&output)),
        ("SIDECAR_PROGRESS".into(), path(&task.progress())),
        ("SHARED_DIR".into(), path(volume)),
    ];
    if let Some(input) = &resolved.input {
        env.push(("SIDECAR_INPUT".into(), path(input)));
    }
    env.extend(spec_env(spec).map_err(|why| refused(task, why))?);
    Ok(env)
}

/// The spec's own `env`, checked: a name that is empty, holds `=` or NUL,
/// or is one the sidecar defines for the logic (`SIDECAR_*`,
/// `SHARED_DIR`) is refused, named. Both modes use it.
pub fn spec_env(spec: &TaskSpec) -> Result<Vec<(OsString, OsString)>, String> {
    let mut env = Vec::with_capacity(spec.env.len());
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(format!("invalid environment variable {k:?}"));
        }
        if k.starts_with(RESERVED_PREFIX) || RESERVED.contains(&k.as_str()) {
            return Err(format!(
                "its env may not set {k}: the sidecar defines it for the logic"
            ));
        }
        env.push((k.into(), v.into()));
    }
    Ok(env)
}

/// Why a task spec is refused: the outcome's reason names the start flag.
fn refused(task: &TaskDir, why: String) -> Reject {
    Reject::Refused {
        path: task.start_flag(),
        why,
    }
}

/// The names of the staged inputs (regular files; FIFOs too in stream
/// mode), sorted, dot-files and links skipped. Nested names are
/// `dir/name`. Listed from the volume root without following a link, so a
/// linked `input/` lists nothing.
fn staged_files(task: &TaskDir, dir: &Path, stream: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(dir) = task.beneath().dir(dir) {
        collect(&dir, Path::new(""), stream, &mut out);
    }
    out.sort();
    out
}

fn collect(dir: &Dir, prefix: &Path, stream: bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = dir.entries() else {
        return;
    };
    for (name, kind) in entries {
        if is_hidden(&name) {
            continue;
        }
        let rel = prefix.join(&name);
        match kind {
            Kind::Dir => {
                if let Ok(sub) = dir.open_dir(&name) {
                    collect(&sub, &rel, stream, out);
                }
            }
            Kind::File => out.push(rel),
            Kind::Fifo if stream => out.push(rel),
            _ => {}
        }
    }
}

/// The format all of `files` share by extension, if they share one.
fn common_format(files: &[PathBuf]) -> Option<Format> {
    let mut formats = files.iter().map(|f| Format::from_path(f));
    let first = formats.next()??;
    formats.all(|f| f == Some(first)).then_some(first)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sidecar_core::record::{InputSpec, OutputSpec};
    use sidecar_core::{TaskId, Volume};

    fn task(files: &[&str]) -> (tempfile::TempDir, TaskDir) {
        let dir = tempfile::tempdir().unwrap();
        let t = Volume::new(dir.path()).task(&TaskId::new("p0-a0").unwrap());
        std::fs::create_dir_all(t.input()).unwrap();
        for f in files {
            std::fs::write(t.input().join(f), b"x").unwrap();
        }
        (dir, t)
    }

    fn spec(format: Option<Format>, files: &[&str], out: Option<Format>) -> TaskSpec {
        TaskSpec {
            input: Some(InputSpec {
                format,
                files: files.iter().map(|s| s.to_string()).collect(),
            }),
            output: out.map(|f| OutputSpec { format: Some(f) }),
            ..Default::default()
        }
    }

    #[test]
    fn the_table_of_the_module_docs() {
        use Format::*;
        let name = |r: &Resolved| {
            r.input
                .as_ref()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        };
        // An empty start flag gets what was staged.
        let (_d, t) = task(&["part.csv"]);
        let r = resolve(&t, &TaskSpec::default()).unwrap();
        assert_eq!(
            (name(&r).as_deref(), r.input_format, r.output_format),
            (Some("part.csv"), Csv, Csv)
        );
        let (_d, t) = task(&["trips.jsonl"]);
        let r = resolve(&t, &TaskSpec::default()).unwrap();
        assert_eq!(
            (name(&r).as_deref(), r.output_format),
            (Some("trips.jsonl"), Jsonl)
        );
        // Several files, no spec: no SIDECAR_INPUT; their shared format.
        let (_d, t) = task(&["a.csv", "b.csv"]);
        let r = resolve(&t, &TaskSpec::default()).unwrap();
        assert_eq!((name(&r), r.output_format), (None, Csv));
        // Nothing staged: no SIDECAR_INPUT, the default format.
        let (_d, t) = task(&[]);
        let r = resolve(&t, &TaskSpec::default()).unwrap();
        assert_eq!((name(&r), r.output_format), (None, Arrows));
        // A format without files: part.<ext> if staged.
        let (_d, t) = task(&["part.parquet", "other.parquet"]);
        let r = resolve(&t, &spec(Some(Parquet), &[], Some(Csv))).unwrap();
        assert_eq!(
            (name(&r).as_deref(), r.input_format, r.output_format),
            (Some("part.parquet"), Parquet, Csv)
        );
        // Named files: the first; every one must be staged.
        let (_d, t) = task(&["a.csv", "b.csv"]);
        let r = resolve(&t, &spec(None, &["b.csv", "a.csv"], None)).unwrap();
        assert_eq!((name(&r).as_deref(), r.output_format), (Some("b.csv"), Csv));
        let err = resolve(&t, &spec(None, &["a.csv", "c.csv"], None))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"c.csv\"") && err.contains("not staged") && err.contains("start_flag"),
            "{err}"
        );
        let err = resolve(&t, &spec(None, &["../x"], None))
            .unwrap_err()
            .to_string();
        assert!(err.contains("'..'"), "{err}");
    }

    #[test]
    fn a_spec_may_not_redefine_the_contract() {
        let (_d, t) = task(&["part.csv"]);
        for name in [
            "SIDECAR_OUTPUT",
            "SIDECAR_TASK_ID",
            "SHARED_DIR",
            "SIDECAR_ANYTHING",
        ] {
            let s = TaskSpec {
                env: [(name.to_owned(), "/etc".to_owned())].into(),
                ..Default::default()
            };
            let err = env(&t, Path::new("/v"), &s).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains("may not set"), "{err}");
        }
        let s = TaskSpec {
            env: [("MY_VAR".to_owned(), "1".to_owned())].into(),
            ..Default::default()
        };
        let vars = env(&t, Path::new("/v"), &s).unwrap();
        assert!(vars.iter().any(|(k, v)| k == "MY_VAR" && v == "1"));
        assert!(vars.iter().any(
            |(k, v)| k == "SIDECAR_OUTPUT" && v.to_string_lossy().ends_with("output/part.csv")
        ));
    }
}
