//! The JSON records that cross the volume: the ready record, the task spec
//! (in `start_flag`) and the outcome (in `done_flag`).
//!
//! Field names are public: executors written in other languages read them.
//! The JSON Schemas in `sidecar-core/schema/` describe exactly these types
//! and the tests check that what this module writes validates against them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::beneath::Beneath;
use crate::id::TaskId;
use crate::safepath::PathError;

/// The protocol version this library speaks. A record that names a newer one
/// is refused rather than half understood.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest flag file read, in bytes. Flags are small; a larger one is a
/// bug or an attack, and is refused before it is parsed.
pub const MAX_FLAG_BYTES: u64 = 1 << 20;

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: malformed {what} JSON: {source}")]
    Malformed {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {what} is {bytes} bytes, over the {MAX_FLAG_BYTES}-byte limit")]
    Oversized {
        path: PathBuf,
        what: &'static str,
        bytes: u64,
    },
    #[error(
        "{path}: protocol version {found} is not supported (this side speaks {PROTOCOL_VERSION})"
    )]
    UnsupportedProtocol { path: PathBuf, found: u32 },
    #[error("{path}: {what} is empty")]
    Empty { path: PathBuf, what: &'static str },
    /// Refused on the way there: a link, or not a regular file.
    #[error(transparent)]
    Path(#[from] PathError),
    /// Valid JSON, but not an object (`[]`, `3`, `"x"`): serde would read
    /// an array as a struct's fields in order.
    #[error("{path}: {what} must be a JSON object {{...}}, not {found}")]
    NotAnObject {
        path: PathBuf,
        what: &'static str,
        found: &'static str,
    },
}

/// A point in time, written as RFC 3339 UTC with microseconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    pub fn now() -> Self {
        Self(SystemTime::now())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_micros(self.0))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339(&s)
            .map(Timestamp)
            .map_err(serde::de::Error::custom)
    }
}

/// A data format for staged inputs and collected outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Arrow IPC file (random access; has a footer).
    Arrow,
    /// Arrow IPC stream (sequential; the default).
    #[default]
    Arrows,
    Parquet,
    /// CSV with a header line.
    Csv,
    /// JSON Lines: one object per line.
    Jsonl,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Arrow,
        Format::Arrows,
        Format::Parquet,
        Format::Csv,
        Format::Jsonl,
    ];

    /// The file extension (`part.<ext>`).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Arrow => "arrow",
            Format::Arrows => "arrows",
            Format::Parquet => "parquet",
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }

    /// Whether the format can be written and read strictly front to back,
    /// as a FIFO requires (stream mode).
    pub fn is_streamable(self) -> bool {
        matches!(self, Format::Arrows | Format::Csv | Format::Jsonl)
    }

    pub fn name(self) -> &'static str {
        self.extension()
    }

    /// The format a file's extension names (`part.csv` is csv), if any.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "parquet" | "pq" => Some(Format::Parquet),
            "csv" => Some(Format::Csv),
            "arrow" | "feather" | "ipc" => Some(Format::Arrow),
            "arrows" => Some(Format::Arrows),
            "jsonl" | "json" | "ndjson" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "arrow" | "ipc" | "feather" => Ok(Format::Arrow),
            "arrows" | "arrow-stream" => Ok(Format::Arrows),
            "parquet" => Ok(Format::Parquet),
            "csv" => Ok(Format::Csv),
            "jsonl" | "json" | "ndjson" => Ok(Format::Jsonl),
            other => Err(format!(
                "unknown format {other:?}: expected one of arrow, arrows, parquet, csv, jsonl"
            )),
        }
    }
}

/// `sidecar/ready`: written once by a serving sidecar when it accepts tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    pub protocol: u32,
    pub version: String,
    pub pid: u32,
    pub parallelism: u32,
    pub started_at: Timestamp,
}

/// The input section of a task spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// Staged files, relative to the task's `input/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

/// The output section of a task spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OutputSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
}

/// `start_flag`: the task spec. Every field is optional; an empty file means
/// all defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputSpec>,
    /// Stream mode: the staged input and the suggested output are FIFOs made
    /// by the executor (`input/part.<ext>`, `output/part.<ext>`); they are
    /// left out of the output manifest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

impl TaskSpec {
    /// Parses a start flag's content; empty (or all-whitespace) means defaults.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, RecordError> {
        // Blank means defaults, within the size limit; anything larger is
        // refused as oversized by `parse_json`.
        if bytes.len() as u64 <= MAX_FLAG_BYTES && bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let spec: Self = parse_json(bytes, path, "task spec")?;
        check_protocol(spec.protocol, path)?;
        Ok(spec)
    }

    pub fn input_format(&self) -> Format {
        self.input
            .as_ref()
            .and_then(|i| i.format)
            .unwrap_or_default()
    }

    /// The output format; defaults to the input's.
    pub fn output_format(&self) -> Format {
        self.output
            .as_ref()
            .and_then(|o| o.format)
            .unwrap_or_else(|| self.input_format())
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }
}

/// How a task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    /// The sidecar vanished (executor side) or the executor did (sidecar side).
    Lost,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::TimedOut => "timed_out",
            Status::Cancelled => "cancelled",
            Status::Lost => "lost",
        })
    }
}

/// One file of a task's output, as listed in the outcome's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Relative to the task's `output/`, `/`-separated.
    pub path: String,
    pub bytes: u64,
    /// `xxh3-64:<16 hex digits>`.
    pub checksum: String,
}

/// `done_flag`: how a task ended, written by the sidecar.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub protocol: u32,
    pub task_id: String,
    pub status: Status,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub duration_ms: u64,
    pub cpu_ms: Option<u64>,
    pub max_rss_kib: Option<u64>,
    #[serde(default)]
    pub outputs: Vec<OutputFile>,
    #[serde(default)]
    pub stderr_tail: String,
}

impl Outcome {
    /// A fresh outcome for `task_id` with `status`, timed from `started_at`
    /// to now; the caller fills in what it knows.
    pub fn new(task_id: &str, status: Status, started_at: Timestamp) -> Self {
        let finished_at = Timestamp::now();
        let duration_ms = finished_at
            .0
            .duration_since(started_at.0)
            .unwrap_or_default()
            .as_millis() as u64;
        Self {
            protocol: PROTOCOL_VERSION,
            task_id: task_id.to_owned(),
            status,
            exit_code: None,
            signal: None,
            reason: None,
            started_at,
            finished_at,
            duration_ms,
            cpu_ms: None,
            max_rss_kib: None,
            outputs: Vec::new(),
            stderr_tail: String::new(),
        }
    }

    /// Sets `finished_at` to now, and `duration_ms` to match.
    pub fn finish_now(&mut self) {
        self.finished_at = Timestamp::now();
        self.duration_ms = self
            .finished_at
            .0
            .duration_since(self.started_at.0)
            .unwrap_or_default()
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX);
    }

    /// Parses a done flag's content.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, RecordError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(RecordError::Empty {
                path: path.to_owned(),
                what: "outcome",
            });
        }
        let outcome: Self = parse_json(bytes, path, "outcome")?;
        check_protocol(Some(outcome.protocol), path)?;
        Ok(outcome)
    }

    pub fn succeeded(&self) -> bool {
        self.status == Status::Succeeded
    }

    /// The task id, validated.
    pub fn task_id(&self) -> Option<TaskId> {
        TaskId::new(self.task_id.clone()).ok()
    }
}

impl Ready {
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, RecordError> {
        let ready: Self = parse_json(bytes, path, "ready record")?;
        check_protocol(Some(ready.protocol), path)?;
        Ok(ready)
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    path: &Path,
    what: &'static str,
) -> Result<T, RecordError> {
    if bytes.len() as u64 > MAX_FLAG_BYTES {
        return Err(RecordError::Oversized {
            path: path.to_owned(),
            what,
            bytes: bytes.len() as u64,
        });
    }
    let malformed = |source| RecordError::Malformed {
        path: path.to_owned(),
        what,
        source,
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(malformed)?;
    let found = match &value {
        serde_json::Value::Object(_) => {
            return <T as serde::Deserialize>::deserialize(value).map_err(malformed)
        }
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Null => "null",
    };
    Err(RecordError::NotAnObject {
        path: path.to_owned(),
        what,
        found,
    })
}

fn check_protocol(found: Option<u32>, path: &Path) -> Result<(), RecordError> {
    match found {
        Some(found) if found == 0 || found > PROTOCOL_VERSION => {
            Err(RecordError::UnsupportedProtocol {
                path: path.to_owned(),
                found,
            })
        }
        _ => Ok(()),
    }
}

/// Reads a flag file of at most [`MAX_FLAG_BYTES`], refusing larger ones
/// without reading them whole.
///
/// The other side may be hostile: the flag is opened without following a
/// symlink and without blocking (a FIFO planted under a flag's name must not
/// hang the reader), and anything but a regular file is refused.
pub fn read_flag(path: &Path, what: &'static str) -> Result<Vec<u8>, RecordError> {
    read_regular_bounded(path, MAX_FLAG_BYTES).map_err(|e| flag_error(path, what, e))
}

/// A failed bounded read of the flag at `path`, as the record error a
/// user reads.
fn flag_error(path: &Path, what: &'static str, e: BoundedReadError) -> RecordError {
    match e {
        BoundedReadError::Io(source) => RecordError::Io {
            path: path.to_owned(),
            source,
        },
        BoundedReadError::TooLarge(bytes) => RecordError::Oversized {
            path: path.to_owned(),
            what,
            bytes,
        },
    }
}

/// Why [`read_regular_bounded`] failed.
#[derive(Debug)]
pub enum BoundedReadError {
    Io(std::io::Error),
    /// Larger than the limit (the size seen).
    TooLarge(u64),
}

/// Reads a regular file of at most `limit` bytes: `O_NOFOLLOW|O_NONBLOCK`
/// on open, then a check that it is a regular file, then a bounded read.
pub fn read_regular_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, BoundedReadError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                BoundedReadError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "it is a symbolic link (links are never followed)",
                ))
            } else {
                BoundedReadError::Io(e)
            }
        })?;
    let meta = file.metadata().map_err(BoundedReadError::Io)?;
    if !meta.file_type().is_file() {
        return Err(BoundedReadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file (a FIFO, directory or device where a flag was expected)",
        )));
    }
    read_bounded(file, limit)
}

/// Reads at most `limit` bytes of `file`; more is [`BoundedReadError::TooLarge`].
pub(crate) fn read_bounded(file: std::fs::File, limit: u64) -> Result<Vec<u8>, BoundedReadError> {
    use std::io::Read;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(BoundedReadError::Io)?;
    if buf.len() as u64 > limit {
        return Err(BoundedReadError::TooLarge(size.max(buf.len() as u64)));
    }
    Ok(buf)
}

/// [`read_flag`] for a flag on the volume `root`, resolved from the root
/// without following a link in any component ([`crate::beneath`]): a task
/// directory swapped for a link is refused, naming it. A flag that is not
/// there is a [`RecordError::Io`] with `NotFound`, as with [`read_flag`].
pub fn read_flag_beneath(
    root: &Beneath,
    path: &Path,
    what: &'static str,
) -> Result<Vec<u8>, RecordError> {
    let file = root.open_regular(path).map_err(|e| match e {
        PathError::Io { source, .. } => RecordError::Io {
            path: path.to_owned(),
            source,
        },
        other => RecordError::Path(other),
    })?;
    read_bounded(file, MAX_FLAG_BYTES).map_err(|e| flag_error(path, what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/v/tasks/t/start_flag")
    }

    #[test]
    fn empty_spec_is_defaults() {
        assert_eq!(TaskSpec::parse(b"", p()).unwrap(), TaskSpec::default());
        assert_eq!(TaskSpec::parse(b" \n", p()).unwrap(), TaskSpec::default());
        let spec = TaskSpec::parse(b"{}", p()).unwrap();
        assert_eq!(spec.input_format(), Format::Arrows);
        assert_eq!(spec.output_format(), Format::Arrows);
    }

    #[test]
    fn output_format_defaults_to_input() {
        let spec = TaskSpec::parse(br#"{"input":{"format":"csv"}}"#, p()).unwrap();
        assert_eq!(spec.output_format(), Format::Csv);
        let spec = TaskSpec::parse(
            br#"{"input":{"format":"csv"},"output":{"format":"parquet"}}"#,
            p(),
        )
        .unwrap();
        assert_eq!(spec.output_format(), Format::Parquet);
    }

    #[test]
    fn bad_specs_name_the_file() {
        let cases: &[(&[u8], &str)] = &[
            (b"{", "malformed task spec JSON"),
            (b"{\"timeout_ms\": \"soon\"}", "malformed task spec JSON"),
            (
                b"{\"protocol\": 99}",
                "protocol version 99 is not supported",
            ),
            (b"{\"protocol\": 0}", "protocol version 0 is not supported"),
            (
                b"{\"input\":{\"format\":\"xls\"}}",
                "malformed task spec JSON",
            ),
        ];
        for (bytes, want) in cases {
            let err = TaskSpec::parse(bytes, p()).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
            assert!(err.contains("/v/tasks/t/start_flag"), "{err}");
        }
        let big = vec![b' '; MAX_FLAG_BYTES as usize + 2];
        let mut big = big;
        big[0] = b'{';
        assert!(matches!(
            TaskSpec::parse(&big, p()),
            Err(RecordError::Oversized { .. })
        ));
    }

    #[test]
    fn outcome_round_trips() {
        let mut o = Outcome::new("p1-a0", Status::Failed, Timestamp::now());
        o.exit_code = Some(3);
        o.outputs.push(OutputFile {
            path: "part.csv".into(),
            bytes: 10,
            checksum: "xxh3-64:0000000000000000".into(),
        });
        let json = serde_json::to_vec(&o).unwrap();
        let back = Outcome::parse(&json, p()).unwrap();
        assert_eq!(back.exit_code, Some(3));
        assert_eq!(back.status, Status::Failed);
        assert_eq!(back.outputs, o.outputs);
        let text = String::from_utf8(json).unwrap();
        assert!(text.contains("\"status\":\"failed\""), "{text}");
        assert!(text.contains('Z'), "times are UTC: {text}");
        assert!(Outcome::parse(b"", p()).is_err());
    }

    #[test]
    fn format_names() {
        for f in Format::ALL {
            assert_eq!(f.extension().parse::<Format>().unwrap(), f);
        }
        assert!("xls".parse::<Format>().unwrap_err().contains("xls"));
    }
}
