//! What the logic prints: timestamped log lines and the tail kept for the
//! outcome.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// How much of the logic's output the outcome keeps (`stderr_tail`).
pub const TAIL_BYTES: usize = 4096;

/// Lines longer than this are split, so one endless line cannot exhaust memory.
const MAX_LINE: usize = 64 * 1024;

/// The last [`TAIL_BYTES`] of a stream.
#[derive(Clone, Debug, Default)]
pub struct Tail(Arc<Mutex<Vec<u8>>>);

impl Tail {
    pub fn push(&self, bytes: &[u8]) {
        let mut t = crate::lock(&self.0);
        t.extend_from_slice(bytes);
        if t.len() > 2 * TAIL_BYTES {
            let cut = t.len() - TAIL_BYTES;
            t.drain(..cut);
        }
    }

    /// The tail as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        let t = crate::lock(&self.0);
        tail_text(&t)
    }
}

/// The last [`TAIL_BYTES`] of `bytes` as text, starting at a character
/// boundary where possible.
pub fn tail_text(bytes: &[u8]) -> String {
    let mut start = bytes.len().saturating_sub(TAIL_BYTES);
    // Skip UTF-8 continuation bytes so the tail does not start mid-character.
    while start < bytes.len() && start > 0 && (bytes[start] & 0xC0) == 0x80 {
        start += 1;
    }
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// The last [`TAIL_BYTES`] of an open file, as text ("" if it cannot be read).
pub fn tail_of(mut f: std::fs::File) -> String {
    use std::io::{Seek, SeekFrom};
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(TAIL_BYTES as u64 + 4);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    tail_text(&buf)
}

/// Formats one log line: `<RFC 3339 UTC, microseconds> <line>\n`.
pub fn stamp(line: &[u8], at: SystemTime) -> Vec<u8> {
    let mut out = humantime::format_rfc3339_micros(at)
        .to_string()
        .into_bytes();
    out.push(b' ');
    out.extend_from_slice(line);
    out.push(b'\n');
    out
}

/// Copies `input` line by line, each line stamped, to every sink, until end
/// of input; keeps the raw tail in `tail`. Write errors to a sink are
/// logged once and that sink is dropped: a full log volume must not block
/// the logic on a full pipe.
pub fn pump_lines(
    mut input: impl Read,
    mut sinks: Vec<(String, Box<dyn Write + Send>)>,
    tail: &Tail,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let emit = |line: &[u8], sinks: &mut Vec<(String, Box<dyn Write + Send>)>| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let stamped = stamp(line, SystemTime::now());
        sinks.retain_mut(
            |(name, w)| match w.write_all(&stamped).and_then(|()| w.flush()) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("cannot write the command's output to {name}: {e}");
                    false
                }
            },
        );
    };
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("cannot read the command's output: {e}");
                break;
            }
        };
        let chunk = &buf[..n];
        tail.push(chunk);
        pending.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
            emit(&pending[start..start + pos], &mut sinks);
            start += pos + 1;
        }
        pending.drain(..start);
        while pending.len() > MAX_LINE {
            let rest = pending.split_off(MAX_LINE);
            emit(&pending, &mut sinks);
            pending = rest;
        }
    }
    if !pending.is_empty() {
        emit(&pending, &mut sinks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_stamped_and_split() {
        let out = Buf::default();
        let tail = Tail::default();
        let input: &[u8] = b"one\ntwo\r\nlast without newline";
        pump_lines(input, vec![("buf".into(), Box::new(out.clone()))], &tail);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        for (line, want) in lines.iter().zip(["one", "two", "last without newline"]) {
            let (ts, rest) = line.split_once(' ').unwrap();
            assert_eq!(rest, want);
            assert!(ts.ends_with('Z') && ts.len() == 27, "{ts}");
            humantime::parse_rfc3339(ts).unwrap();
        }
        assert_eq!(tail.text(), "one\ntwo\r\nlast without newline");
    }

    #[test]
    fn tail_keeps_the_end() {
        let tail = Tail::default();
        for i in 0..10_000 {
            tail.push(format!("line {i}\n").as_bytes());
        }
        let t = tail.text();
        assert!(t.len() <= TAIL_BYTES);
        assert!(t.ends_with("line 9999\n"), "{t}");
        assert_eq!(tail_text("ééé".as_bytes()), "ééé");
    }
}
