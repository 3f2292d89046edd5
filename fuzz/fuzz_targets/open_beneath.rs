//! `open_beneath` over a fixed hostile tree (symlinks out of the base,
//! relative escapes, a hard link to an outside file, a FIFO) with fuzzed
//! paths: it never returns a file whose content is not the base's own.
#![no_main]

use std::io::Read;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sidecar_core::safepath::open_beneath;

struct Tree {
    _dir: tempfile::TempDir,
    base: PathBuf,
}

fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("base");
        let out = dir.path().join("outside");
        std::fs::create_dir_all(base.join("a/b")).expect("mkdir");
        std::fs::create_dir_all(&out).expect("mkdir");
        std::fs::write(out.join("secret"), b"OUTSIDE").expect("write");
        std::fs::write(base.join("a/part.csv"), b"inside").expect("write");
        std::fs::write(base.join("a/b/c"), b"inside").expect("write");
        let links: [(PathBuf, &str); 4] = [
            ("/etc/passwd".into(), "passwd"),
            (out.clone(), "out"),
            ("../../outside".into(), "a/up"),
            (base.join("a"), "a/b/loop"),
        ];
        for (target, name) in links {
            std::os::unix::fs::symlink(target, base.join(name)).expect("symlink");
        }
        std::fs::hard_link(out.join("secret"), base.join("hard")).expect("link");
        let fifo = std::ffi::CString::new(base.join("fifo").into_os_string().into_encoded_bytes())
            .expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        Tree { _dir: dir, base }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(rel) = std::str::from_utf8(data) else {
        return;
    };
    let t = tree();
    if let Ok(mut f) = open_beneath(&t.base, rel) {
        let mut s = Vec::new();
        // A FIFO must never be returned (it would block here).
        f.read_to_end(&mut s).expect("read");
        assert_eq!(
            s, b"inside",
            "{rel:?} opened something that is not the base's own"
        );
    }
});
