//! What the code writes validates against the published JSON Schemas.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use serde_json::Value;
use sidecar_core::liveness::Pulse;
use sidecar_core::record::{InputSpec, OutputSpec};
use sidecar_core::{Format, Outcome, OutputFile, Ready, Status, TaskSpec, Timestamp};

fn schema(name: &str) -> jsonschema::Validator {
    let path = format!("{}/schema/{name}.schema.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&value).unwrap()
}

fn assert_valid(v: &jsonschema::Validator, doc: &Value) {
    let errors: Vec<String> = v.iter_errors(doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{doc}: {errors:?}");
}

#[test]
fn records_validate() {
    let ready = Ready {
        protocol: 1,
        version: sidecar_core::VERSION.into(),
        pid: 42,
        parallelism: 2,
        started_at: Timestamp::now(),
    };
    assert_valid(&schema("ready"), &serde_json::to_value(&ready).unwrap());

    let spec_schema = schema("task-spec");
    assert_valid(
        &spec_schema,
        &serde_json::to_value(TaskSpec::default()).unwrap(),
    );
    let full = TaskSpec {
        protocol: Some(1),
        attempt: Some(2),
        env: BTreeMap::from([("A".into(), "b".into())]),
        timeout_ms: Some(1000),
        input: Some(InputSpec {
            format: Some(Format::Parquet),
            files: vec!["part.parquet".into()],
        }),
        output: Some(OutputSpec {
            format: Some(Format::Jsonl),
        }),
        stream: true,
    };
    assert_valid(&spec_schema, &serde_json::to_value(&full).unwrap());

    let outcome_schema = schema("outcome");
    for status in [
        Status::Succeeded,
        Status::Failed,
        Status::TimedOut,
        Status::Cancelled,
        Status::Lost,
    ] {
        let mut o = Outcome::new("p3-a1", status, Timestamp::now());
        o.exit_code = Some(1);
        o.signal = Some(15);
        o.reason = Some("why".into());
        o.cpu_ms = Some(3);
        o.max_rss_kib = Some(1024);
        o.outputs.push(OutputFile {
            path: "part.csv".into(),
            bytes: 9,
            checksum: sidecar_core::manifest::Checksum::default().finish(),
        });
        assert_valid(&outcome_schema, &serde_json::to_value(&o).unwrap());
    }
    let bare = Outcome::new("oneshot", Status::Succeeded, Timestamp::now());
    assert_valid(&outcome_schema, &serde_json::to_value(&bare).unwrap());

    let pulse = Pulse {
        seq: 7,
        pid: 1,
        at: Timestamp::now(),
    };
    assert_valid(&schema("pulse"), &serde_json::to_value(&pulse).unwrap());
}

#[test]
fn schemas_reject_what_the_parsers_reject() {
    let outcome_schema = schema("outcome");
    let mut o =
        serde_json::to_value(Outcome::new("p1-a0", Status::Failed, Timestamp::now())).unwrap();
    o["status"] = "exploded".into();
    assert!(!outcome_schema.is_valid(&o));
    let spec_schema = schema("task-spec");
    let bad: Value = serde_json::json!({"input": {"format": "xls"}});
    assert!(!spec_schema.is_valid(&bad));
    assert!(TaskSpec::parse(bad.to_string().as_bytes(), "start_flag".as_ref()).is_err());
}
