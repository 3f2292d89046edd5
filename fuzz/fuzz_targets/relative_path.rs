//! `validate_relative` never accepts a `..` component, a leading `/`, NUL,
//! or anything that does not stay below the base it is joined to.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use sidecar_core::safepath::validate_relative;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = validate_relative(s) {
        assert!(!s.starts_with('/'), "{s:?}");
        assert!(!s.contains('\0'), "{s:?}");
        assert!(!s.split('/').any(|c| c == ".."), "{s:?}");
        assert!(
            p.components().all(|c| matches!(c, Component::Normal(_))),
            "{s:?}"
        );
        assert!(Path::new("/base").join(p).starts_with("/base"));
    }
});
