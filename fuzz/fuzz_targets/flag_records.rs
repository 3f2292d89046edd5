//! Flag payload parsing: `TaskSpec::parse`, `Outcome::parse` and
//! `Ready::parse` never panic, every error names the flag's path, and
//! whatever parses re-serialises to something that parses to the same value.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sidecar_core::{Outcome, Ready, TaskSpec, PROTOCOL_VERSION};

const FLAG: &str = "/vol/tasks/p0-a0/start_flag";

fuzz_target!(|data: &[u8]| {
    let path = Path::new(FLAG);
    match TaskSpec::parse(data, path) {
        Ok(spec) => {
            if let Some(p) = spec.protocol {
                assert!((1..=PROTOCOL_VERSION).contains(&p));
            }
            let again = serde_json::to_vec(&spec).expect("serialise a parsed spec");
            assert_eq!(TaskSpec::parse(&again, path).expect("reparse"), spec);
        }
        Err(e) => assert!(e.to_string().contains(FLAG), "{e}"),
    }
    match Outcome::parse(data, path) {
        Ok(o) => {
            assert!((1..=PROTOCOL_VERSION).contains(&o.protocol));
            let again = serde_json::to_vec(&o).expect("serialise a parsed outcome");
            // Timestamps are written with microseconds; a parsed value with
            // finer precision need not round-trip bit for bit, but must parse.
            Outcome::parse(&again, path).expect("reparse");
        }
        Err(e) => assert!(e.to_string().contains(FLAG), "{e}"),
    }
    match Ready::parse(data, path) {
        Ok(r) => assert!((1..=PROTOCOL_VERSION).contains(&r.protocol)),
        Err(e) => assert!(e.to_string().contains(FLAG), "{e}"),
    }
});
