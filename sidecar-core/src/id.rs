//! Task identifiers: validated names that carry the Spark partition and
//! attempt, so a retry or a speculative attempt never shares a directory,
//! a flag or an output with another attempt.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest task id accepted, in bytes. Ids become directory names, and a
/// bound keeps every path under the volume far below `PATH_MAX`.
pub const MAX_TASK_ID_LEN: usize = 128;

/// Why a string is not a valid task id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskIdError {
    #[error("invalid task id {id:?}: empty")]
    Empty { id: String },
    #[error("invalid task id {id:?}: longer than {MAX_TASK_ID_LEN} bytes")]
    TooLong { id: String },
    #[error("invalid task id {id:?}: character {ch:?} is not one of [A-Za-z0-9._-]")]
    BadChar { id: String, ch: char },
    #[error("invalid task id {id:?}: '.' and '..' and names starting with '.' are reserved")]
    Reserved { id: String },
}

/// A validated task id: `[A-Za-z0-9._-]{1,128}`, not starting with a dot
/// (dot-files are temporaries that readers ignore), never `.` or `..`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(String);

impl TaskId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, TaskIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(TaskIdError::Empty { id });
        }
        if id.len() > MAX_TASK_ID_LEN {
            return Err(TaskIdError::TooLong { id });
        }
        if let Some(ch) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(TaskIdError::BadChar { id, ch });
        }
        if id.starts_with('.') {
            return Err(TaskIdError::Reserved { id });
        }
        Ok(Self(id))
    }

    /// The id of one attempt of one partition: `p<partition>-a<attempt>-<nonce>`.
    ///
    /// `nonce` distinguishes two runs of the same attempt (a task re-submitted
    /// by a driver that lost track of it); pass an empty string to leave it out.
    /// Only `[A-Za-z0-9]` of the nonce is kept.
    pub fn for_attempt(partition: u64, attempt: u32, nonce: &str) -> Self {
        let nonce: String = nonce
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(32)
            .collect();
        let id = if nonce.is_empty() {
            format!("p{partition}-a{attempt}")
        } else {
            format!("p{partition}-a{attempt}-{nonce}")
        };
        Self(id)
    }

    /// The partition and attempt, when the id was made by [`TaskId::for_attempt`].
    pub fn partition_attempt(&self) -> Option<(u64, u32)> {
        let mut parts = self.0.split('-');
        let p = parts.next()?.strip_prefix('p')?.parse().ok()?;
        let a = parts.next()?.strip_prefix('a')?.parse().ok()?;
        Some((p, a))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", self.0)
    }
}

impl FromStr for TaskId {
    type Err = TaskIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for TaskId {
    type Error = TaskIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> String {
        id.0
    }
}

impl AsRef<str> for TaskId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        for ok in ["a", "p0-a0", "task_1.x", &"x".repeat(MAX_TASK_ID_LEN)] {
            assert!(TaskId::new(ok).is_ok(), "{ok}");
        }
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("..", "reserved"),
            (".", "reserved"),
            (".hidden", "reserved"),
            ("a/b", "'/'"),
            ("../etc", "'/'"),
            ("a b", "' '"),
            ("é", "'é'"),
            ("a\0b", "'\\0'"),
        ];
        for (bad, why) in cases {
            let err = TaskId::new(*bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(
                err.contains(&format!("{bad:?}")),
                "error names the id: {err}"
            );
        }
        assert!(matches!(
            TaskId::new("x".repeat(MAX_TASK_ID_LEN + 1)),
            Err(TaskIdError::TooLong { .. })
        ));
    }

    #[test]
    fn attempts_are_fenced() {
        let a0 = TaskId::for_attempt(7, 0, "");
        let a1 = TaskId::for_attempt(7, 1, "");
        assert_ne!(a0, a1);
        assert_eq!(a1.partition_attempt(), Some((7, 1)));
        let n = TaskId::for_attempt(7, 1, "a/b.c9");
        assert_eq!(n.as_str(), "p7-a1-abc9");
        assert_eq!(n.partition_attempt(), Some((7, 1)));
        assert!(TaskId::new(n.as_str()).is_ok());
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<TaskId>("\"../x\"").is_err());
        let id: TaskId = serde_json::from_str("\"p1-a2\"").unwrap();
        assert_eq!(id.as_str(), "p1-a2");
    }
}
