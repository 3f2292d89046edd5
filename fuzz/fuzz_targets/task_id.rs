//! `TaskId::new` accepts exactly `[A-Za-z0-9._-]{1,128}` not starting with
//! a dot, and its errors name the id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidecar_core::id::{TaskId, MAX_TASK_ID_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let valid = (1..=MAX_TASK_ID_LEN).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    match TaskId::new(s) {
        Ok(id) => {
            assert!(valid, "accepted {s:?}");
            assert_eq!(id.as_str(), s);
        }
        Err(e) => {
            assert!(!valid, "refused {s:?}: {e}");
            assert!(e.to_string().contains(&format!("{s:?}")), "{e}");
        }
    }
});
