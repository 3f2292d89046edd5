//! Property tests: the stable-Rust equivalent of the `cargo fuzz` targets in
//! `fuzz/` (which need nightly). They run in CI with proptest's default case
//! count (256 per property); set `PROPTEST_CASES=100000` for a long run.
//!
//! * Flag payload parsing (`TaskSpec::parse`, `Outcome::parse`,
//!   `Ready::parse`) never panics on arbitrary bytes, and every error names
//!   the flag's path.
//! * Generated valid records round-trip.
//! * `TaskId::new` accepts exactly `[A-Za-z0-9._-]{1,128}` not starting
//!   with `.`.
//! * `validate_relative` never accepts a `..` component, a leading `/`, or
//!   NUL.
//! * `open_beneath` on generated trees full of symlinks and hard links never
//!   returns a file outside the base.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use sidecar_core::id::{TaskId, MAX_TASK_ID_LEN};
use sidecar_core::record::{InputSpec, OutputSpec, RecordError, MAX_FLAG_BYTES, PROTOCOL_VERSION};
use sidecar_core::safepath::{open_beneath, validate_relative, PathError};
use sidecar_core::{Format, Outcome, OutputFile, Ready, Status, TaskSpec, Timestamp};

const FLAG: &str = "/vol/tasks/p0-a0/start_flag";

fn flag() -> &'static Path {
    Path::new(FLAG)
}

fn assert_names_path(err: &RecordError) {
    let text = err.to_string();
    assert!(text.contains(FLAG), "error does not name the flag: {text}");
}

/// Bytes that are sometimes JSON-ish: arbitrary bytes, mutated valid
/// records, and prefixes (truncations) of valid records.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop_oneof![
        spec().prop_map(|s| serde_json::to_vec(&s).unwrap()),
        outcome().prop_map(|o| serde_json::to_vec(&o).unwrap()),
        ready().prop_map(|r| serde_json::to_vec(&r).unwrap()),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        // Truncated at any point.
        (valid.clone(), any::<prop::sample::Index>()).prop_map(|(v, i)| {
            let cut = i.index(v.len() + 1);
            v[..cut].to_vec()
        }),
        // One byte flipped.
        (valid.clone(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut v, i, b)| {
            if !v.is_empty() {
                let at = i.index(v.len());
                v[at] = b;
            }
            v
        }),
        // Wrong protocol numbers.
        (valid, any::<u32>()).prop_map(|(v, p)| {
            let mut j: serde_json::Value = serde_json::from_slice(&v).unwrap();
            j["protocol"] = serde_json::json!(p);
            serde_json::to_vec(&j).unwrap()
        }),
        // Deep nesting (serde_json's recursion limit must turn it into an error).
        (1usize..4000).prop_map(|n| {
            let mut v = vec![b'['; n];
            v.extend(std::iter::repeat_n(b']', n / 2));
            v
        }),
    ]
}

fn format() -> impl Strategy<Value = Format> {
    prop::sample::select(Format::ALL.to_vec())
}

fn text() -> impl Strategy<Value = String> {
    // Any unicode, including quotes, backslashes and control characters.
    ".{0,24}"
}

fn spec() -> impl Strategy<Value = TaskSpec> {
    (
        prop::option::of(1..=PROTOCOL_VERSION),
        prop::option::of(any::<u32>()),
        proptest::collection::btree_map(text(), text(), 0..4),
        prop::option::of(any::<u64>()),
        prop::option::of((
            prop::option::of(format()),
            proptest::collection::vec(text(), 0..3),
        )),
        prop::option::of(prop::option::of(format())),
        any::<bool>(),
    )
        .prop_map(
            |(protocol, attempt, env, timeout_ms, input, output, stream)| TaskSpec {
                protocol,
                attempt,
                env: env.into_iter().collect::<BTreeMap<_, _>>(),
                timeout_ms,
                input: input.map(|(format, files)| InputSpec { format, files }),
                output: output.map(|format| OutputSpec { format }),
                stream,
            },
        )
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    // Whole microseconds from 1970 to ~2100: what RFC 3339 with micros keeps.
    (0u64..4_102_444_800_000_000)
        .prop_map(|us| Timestamp(SystemTime::UNIX_EPOCH + Duration::from_micros(us)))
}

fn status() -> impl Strategy<Value = Status> {
    prop::sample::select(vec![
        Status::Succeeded,
        Status::Failed,
        Status::TimedOut,
        Status::Cancelled,
        Status::Lost,
    ])
}

fn outcome() -> impl Strategy<Value = Outcome> {
    (
        (
            "[A-Za-z0-9_-][A-Za-z0-9._-]{0,40}",
            status(),
            prop::option::of(any::<i32>()),
            prop::option::of(1i32..65),
            prop::option::of(text()),
            timestamp(),
            timestamp(),
        ),
        (
            any::<u64>(),
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u64>()),
            proptest::collection::vec(
                (
                    "[a-z0-9_]{1,8}(/[a-z0-9_.]{1,8}){0,2}",
                    any::<u64>(),
                    any::<u64>(),
                )
                    .prop_map(|(path, bytes, sum)| OutputFile {
                        path,
                        bytes,
                        checksum: format!("xxh3-64:{sum:016x}"),
                    }),
                0..4,
            ),
            text(),
        ),
    )
        .prop_map(
            |(
                (task_id, status, exit_code, signal, reason, started_at, finished_at),
                (duration_ms, cpu_ms, max_rss_kib, outputs, stderr_tail),
            )| Outcome {
                protocol: PROTOCOL_VERSION,
                task_id,
                status,
                exit_code,
                signal,
                reason,
                started_at,
                finished_at,
                duration_ms,
                cpu_ms,
                max_rss_kib,
                outputs,
                stderr_tail,
            },
        )
}

fn ready() -> impl Strategy<Value = Ready> {
    (text(), any::<u32>(), 1u32..1024, timestamp()).prop_map(
        |(version, pid, parallelism, started_at)| Ready {
            protocol: PROTOCOL_VERSION,
            version,
            pid,
            parallelism,
            started_at,
        },
    )
}

proptest! {
    #[test]
    fn flag_parsers_never_panic_and_name_the_path(bytes in payload()) {
        match TaskSpec::parse(&bytes, flag()) {
            Ok(spec) => {
                // A spec that parses speaks a protocol we know.
                if let Some(p) = spec.protocol {
                    prop_assert!(p >= 1 && p <= PROTOCOL_VERSION);
                }
            }
            Err(e) => assert_names_path(&e),
        }
        match Outcome::parse(&bytes, flag()) {
            Ok(o) => prop_assert!(o.protocol >= 1 && o.protocol <= PROTOCOL_VERSION),
            Err(e) => assert_names_path(&e),
        }
        match Ready::parse(&bytes, flag()) {
            Ok(r) => prop_assert!(r.protocol >= 1 && r.protocol <= PROTOCOL_VERSION),
            Err(e) => assert_names_path(&e),
        }
    }

    #[test]
    fn unsupported_protocols_are_refused_by_number(p in prop_oneof![Just(0u32), (PROTOCOL_VERSION + 1)..=u32::MAX]) {
        let spec = format!("{{\"protocol\":{p}}}");
        let err = TaskSpec::parse(spec.as_bytes(), flag()).unwrap_err();
        prop_assert!(matches!(err, RecordError::UnsupportedProtocol { found, .. } if found == p), "{}", err);
        prop_assert!(err.to_string().contains(&format!("protocol version {p} is not supported")), "{}", err);
    }

    #[test]
    fn oversized_flags_are_refused_before_parsing(extra in 1usize..4096, fill in prop::sample::select(vec![b'{', b'"', b'x', b'['])) {
        let bytes = vec![fill; MAX_FLAG_BYTES as usize + extra];
        for err in [
            TaskSpec::parse(&bytes, flag()).unwrap_err(),
            Outcome::parse(&bytes, flag()).unwrap_err(),
            Ready::parse(&bytes, flag()).unwrap_err(),
        ] {
            prop_assert!(matches!(err, RecordError::Oversized { .. }), "{}", err);
            assert_names_path(&err);
        }
    }

    #[test]
    fn oversized_flag_files_are_refused_unread(extra in 1u64..4096, fill in prop::sample::select(vec![b' ', b'{', b'x'])) {
        // read_flag is what both sides use on a real flag: it refuses
        // anything over the limit, whitespace included, reading at most
        // MAX_FLAG_BYTES + 1 bytes.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("start_flag");
        std::fs::write(&path, vec![fill; (MAX_FLAG_BYTES + extra) as usize]).unwrap();
        let err = sidecar_core::record::read_flag(&path, "task spec").unwrap_err();
        prop_assert!(matches!(err, RecordError::Oversized { bytes, .. } if bytes == MAX_FLAG_BYTES + extra), "{}", err);
        prop_assert!(err.to_string().contains(path.to_str().unwrap()), "{}", err);
    }

    #[test]
    fn valid_specs_round_trip(s in spec()) {
        let bytes = serde_json::to_vec(&s).unwrap();
        let back = TaskSpec::parse(&bytes, flag()).unwrap();
        prop_assert_eq!(back, s);
    }

    #[test]
    fn valid_outcomes_round_trip(o in outcome()) {
        let bytes = serde_json::to_vec(&o).unwrap();
        let back = Outcome::parse(&bytes, flag()).unwrap();
        prop_assert_eq!(back, o);
    }

    #[test]
    fn valid_ready_records_round_trip(r in ready()) {
        let bytes = serde_json::to_vec(&r).unwrap();
        let back = Ready::parse(&bytes, flag()).unwrap();
        prop_assert_eq!(back, r);
    }
}

/// The reference definition of a valid task id.
fn is_valid_id(s: &str) -> bool {
    (1..=MAX_TASK_ID_LEN).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn id_candidate() -> impl Strategy<Value = String> {
    prop_oneof![
        // Mostly valid alphabet, any length around the limit.
        "[A-Za-z0-9._-]{0,140}",
        // Valid alphabet with one intruder.
        (
            "[A-Za-z0-9._-]{0,20}",
            any::<char>(),
            "[A-Za-z0-9._-]{0,20}"
        )
            .prop_map(|(a, c, b)| format!("{a}{c}{b}")),
        // Anything.
        ".{0,40}",
        prop::sample::select(vec![
            String::new(),
            ".".into(),
            "..".into(),
            "../x".into(),
            "a/b".into(),
            "/etc".into(),
            "a\0b".into(),
            "x".repeat(MAX_TASK_ID_LEN),
            "x".repeat(MAX_TASK_ID_LEN + 1),
        ]),
    ]
}

proptest! {
    #[test]
    fn task_ids_are_exactly_the_safe_names(s in id_candidate()) {
        let got = TaskId::new(s.clone());
        prop_assert_eq!(got.is_ok(), is_valid_id(&s), "{:?} -> {:?}", s, got);
        match got {
            Ok(id) => {
                prop_assert_eq!(id.as_str(), s.as_str());
                // Usable as one path component that stays where it is put.
                let p = Path::new("/vol/tasks").join(id.as_str());
                prop_assert_eq!(p.parent(), Some(Path::new("/vol/tasks")));
                // serde goes through the same validation.
                let json = serde_json::to_string(&s).unwrap();
                prop_assert!(serde_json::from_str::<TaskId>(&json).is_ok());
            }
            Err(e) => {
                prop_assert!(e.to_string().contains(&format!("{s:?}")), "error names the id: {}", e);
                let json = serde_json::to_string(&s).unwrap();
                prop_assert!(serde_json::from_str::<TaskId>(&json).is_err());
            }
        }
    }

    #[test]
    fn attempt_ids_are_always_valid(p in any::<u64>(), a in any::<u32>(), nonce in ".{0,64}") {
        let id = TaskId::for_attempt(p, a, &nonce);
        prop_assert!(TaskId::new(id.as_str()).is_ok(), "{:?}", id);
        prop_assert_eq!(id.partition_attempt(), Some((p, a)));
    }
}

fn rel_candidate() -> impl Strategy<Value = String> {
    let comp = prop_oneof![
        4 => "[a-z0-9_]{1,6}(\\.[a-z]{1,3})?",
        1 => Just("..".to_owned()),
        1 => Just(".".to_owned()),
        1 => Just(String::new()),
        1 => Just(".hidden".to_owned()),
        1 => Just("a\0b".to_owned()),
        1 => ".{1,4}",
    ];
    (
        prop::bool::weighted(0.15),
        proptest::collection::vec(comp, 1..6),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(abs, comps, trailing)| {
            let mut s = comps.join("/");
            if abs {
                s.insert(0, '/');
            }
            if trailing {
                s.push('/');
            }
            s
        })
}

proptest! {
    #[test]
    fn validate_relative_refuses_escapes(rel in rel_candidate()) {
        let has_dotdot = rel.split('/').any(|c| c == "..");
        let bad = has_dotdot || rel.starts_with('/') || rel.contains('\0') || rel.is_empty();
        match validate_relative(&rel) {
            Ok(p) => {
                prop_assert!(!bad, "accepted {:?}", rel);
                prop_assert!(p.is_relative());
                prop_assert!(p.components().all(|c| matches!(c, std::path::Component::Normal(_))), "{:?}", rel);
                // Joined under a base, it stays under the base, lexically.
                let joined = Path::new("/base").join(p);
                prop_assert!(joined.starts_with("/base"));
                prop_assert_eq!(joined.components().count(), p.components().count() + 2);
            }
            Err(e) => {
                prop_assert!(matches!(e, PathError::Invalid { .. }), "{}", e);
                prop_assert!(e.to_string().contains(&format!("{rel:?}")), "error names the path: {}", e);
            }
        }
    }
}

/// One entry of a generated tree under `base/`.
#[derive(Clone, Debug)]
enum Node {
    Dir,
    File,
    /// Symlink to a target (absolute outside, relative escaping, or inside).
    Link(LinkTarget),
    /// A hard link to a file outside the base.
    HardOutside,
    Fifo,
}

#[derive(Clone, Debug)]
enum LinkTarget {
    OutsideFileAbs,
    OutsideDirAbs,
    OutsideRel,
    EtcPasswd,
    Inside(String),
    Dangling,
}

fn tree() -> impl Strategy<Value = Vec<(String, Node)>> {
    let name = prop::sample::select(vec!["a", "b", "c", "out", "part.csv", "x"]);
    let node = prop_oneof![
        3 => Just(Node::Dir),
        3 => Just(Node::File),
        1 => Just(Node::Link(LinkTarget::OutsideFileAbs)),
        1 => Just(Node::Link(LinkTarget::OutsideDirAbs)),
        1 => Just(Node::Link(LinkTarget::OutsideRel)),
        1 => Just(Node::Link(LinkTarget::EtcPasswd)),
        1 => Just(Node::Link(LinkTarget::Dangling)),
        2 => "[abcx](/[abcx]){0,2}".prop_map(|t| Node::Link(LinkTarget::Inside(t))),
        1 => Just(Node::HardOutside),
        1 => Just(Node::Fifo),
    ];
    proptest::collection::vec(
        (
            proptest::collection::vec(name, 1..4).prop_map(|v| v.join("/")),
            node,
        ),
        1..16,
    )
}

/// Builds the tree; entries whose parent is not a directory are skipped.
fn build(root: &Path, entries: &[(String, Node)]) -> PathBuf {
    let base = root.join("base");
    let outside = root.join("outside");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"OUTSIDE secret").unwrap();
    std::fs::create_dir_all(outside.join("a")).unwrap();
    std::fs::write(outside.join("a/part.csv"), b"OUTSIDE a/part.csv").unwrap();
    std::fs::write(outside.join("part.csv"), b"OUTSIDE part.csv").unwrap();
    for (i, (rel, node)) in entries.iter().enumerate() {
        let path = base.join(rel);
        let Some(parent) = path.parent() else {
            continue;
        };
        let parent_ok = std::fs::symlink_metadata(parent)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if !parent_ok || std::fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        match node {
            Node::Dir => std::fs::create_dir(&path).unwrap(),
            Node::File => std::fs::write(&path, format!("inside {rel}")).unwrap(),
            Node::Link(t) => {
                let target: PathBuf = match t {
                    LinkTarget::OutsideFileAbs => outside.join("secret"),
                    LinkTarget::OutsideDirAbs => outside.clone(),
                    LinkTarget::OutsideRel => {
                        let depth = rel.matches('/').count() + 1;
                        let mut p = PathBuf::new();
                        for _ in 0..depth {
                            p.push("..");
                        }
                        p.join("outside")
                    }
                    LinkTarget::EtcPasswd => PathBuf::from("/etc/passwd"),
                    LinkTarget::Inside(t) => base.join(t),
                    LinkTarget::Dangling => PathBuf::from(format!("/nonexistent-{i}")),
                };
                std::os::unix::fs::symlink(target, &path).unwrap();
            }
            Node::HardOutside => {
                let src = outside.join(format!("hard-{i}"));
                std::fs::write(&src, b"OUTSIDE hard").unwrap();
                std::fs::hard_link(&src, &path).unwrap();
            }
            Node::Fifo => {
                nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap()
            }
        }
    }
    base
}

/// Resolves `base/rel` without following any symlink; `Some` only when
/// every component is a real directory and the last a regular file.
fn resolve_no_links(base: &Path, rel: &str) -> Option<std::fs::Metadata> {
    let mut p = base.to_path_buf();
    let comps: Vec<&str> = rel.split('/').collect();
    for (i, c) in comps.iter().enumerate() {
        p.push(c);
        let m = std::fs::symlink_metadata(&p).ok()?;
        if i + 1 < comps.len() {
            if !m.file_type().is_dir() {
                return None;
            }
        } else {
            return m.file_type().is_file().then_some(m);
        }
    }
    None
}

fn probe_path() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop::sample::select(vec!["a", "b", "c", "out", "part.csv", "x", "secret"]),
        1..5,
    )
    .prop_map(|v| v.join("/"))
}

proptest! {
    #[test]
    fn open_beneath_never_leaves_the_base(
        entries in tree(),
        probes in proptest::collection::vec(probe_path(), 1..12),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let base = build(dir.path(), &entries);
        // Probe every path in the tree too, not only random ones.
        let mut all: Vec<String> = entries.iter().map(|(p, _)| p.clone()).collect();
        all.extend(probes);
        for rel in &all {
            use std::io::Read;
            let want = resolve_no_links(&base, rel);
            match open_beneath(&base, rel) {
                Ok(mut f) => {
                    let got = f.metadata().unwrap();
                    let want = want.as_ref();
                    prop_assert!(want.is_some(), "{:?} opened, but it is not a plain file inside the base", rel);
                    let want = want.unwrap();
                    prop_assert_eq!((got.dev(), got.ino()), (want.dev(), want.ino()), "{:?}", rel);
                    prop_assert_eq!(got.nlink(), 1);
                    let mut s = String::new();
                    f.read_to_string(&mut s).unwrap();
                    prop_assert_eq!(s, format!("inside {rel}"));
                }
                Err(e) => {
                    // Refused: fine, as long as a plain single-link file was not refused.
                    if let Some(m) = want {
                        prop_assert!(m.nlink() != 1, "refused a plain file {:?}: {}", rel, e);
                    }
                    let text = e.to_string();
                    prop_assert!(text.contains(base.to_str().unwrap()) || text.contains(rel.as_str()), "error names the path: {}", text);
                }
            }
        }
    }
}
