//! The few facts both sides read from `/proc`: which processes exist, their
//! state and parent, and this process's peak resident set.
//!
//! The entrypoint walks it to kill every descendant at exit; the shim to
//! find the logic a dead sidecar left behind and to tell whether a pid still
//! runs. Everything here is a snapshot: the process table changes under the
//! reader, so a pid listed may be gone by the time it is looked at.

/// Every pid in `/proc` (none when it is not mounted).
pub fn pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// What `/proc/<pid>/stat` says of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    pub ppid: i32,
}

impl Stat {
    /// Running, or able to run: not a zombie waiting to be reaped, not dead.
    pub fn is_running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

/// The state and parent of `pid`, or `None` once it is gone (reaped).
pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether `pid` exists and is not a zombie.
pub fn is_running(pid: i32) -> bool {
    stat(pid).is_some_and(|s| s.is_running())
}

/// The fields after the command name, which is in parentheses and may
/// itself hold spaces and parentheses: everything up to the last `)`.
fn parse_stat(stat: &str) -> Option<Stat> {
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(Stat { state, ppid })
}

/// This process's peak resident set size (`VmHWM`), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_parentheses_and_spaces() {
        let s = parse_stat("42 (a) b (c)) S 7 42 42 0 -1").unwrap();
        assert_eq!(
            s,
            Stat {
                state: 'S',
                ppid: 7
            }
        );
        assert!(parse_stat("42 (x").is_none());
        assert!(!parse_stat("9 (z) Z 1 9").unwrap().is_running());
    }

    #[test]
    fn this_process_is_seen() {
        let me = std::process::id() as i32;
        assert!(pids().any(|p| p == me));
        assert!(is_running(me));
        assert_eq!(stat(me).unwrap().ppid, nix_getppid());
        assert!(peak_rss_kib().unwrap() > 0);
    }

    fn nix_getppid() -> i32 {
        // SAFETY: getppid has no preconditions.
        unsafe { libc::getppid() }
    }
}
