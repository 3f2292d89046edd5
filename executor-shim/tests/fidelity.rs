//! The fidelity matrix: every type Spark produces, and the common Arrow
//! ones, through every format and back, through a real sidecar running the
//! identity logic (`cat`). Each cell is either an exact round trip (read
//! back with the input's schema, the batch is equal: values, nulls, NaN,
//! empty strings, time zones, decimal precision, nesting, column names) or
//! a refusal before the logic runs that names the column and what the
//! format cannot carry.
//!
//! `cargo test -p executor-shim --test fidelity -- --nocapture` prints the
//! matrix as a Markdown table (the README's copy is made from it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryViewArray, BooleanArray, Date32Array, Date64Array,
    Decimal128Array, Decimal256Array, DictionaryArray, DurationMicrosecondArray, Float16Array,
    Float32Array, Float64Array, Int16Array, Int32Array, Int64Array, Int8Array,
    IntervalYearMonthArray, LargeBinaryArray, LargeStringArray, ListArray, ListBuilder, MapBuilder,
    NullArray, RecordBatch, StringArray, StringBuilder, StringViewArray, StructArray,
    Time32MillisecondArray, Time64MicrosecondArray, Time64NanosecondArray,
    TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
    TimestampSecondArray, UInt16Array, UInt32Array, UInt64Array, UInt8Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{i256, DataType, Field, Fields, Int32Type, Int64Type, Schema, SchemaRef};
use executor_shim::format::Format;
use executor_shim::TaskRequest;
use util::*;

/// One row of the matrix: a batch, and what each text format refuses of
/// it (`None`: an exact round trip). The binary formats carry every cell.
struct Cell {
    name: &'static str,
    batch: RecordBatch,
    /// The column the refusal names, and what the message says is lacking.
    csv: Option<(&'static str, &'static str)>,
    jsonl: Option<(&'static str, &'static str)>,
    /// Refused for a value rather than a type: in stream mode the logic
    /// has started by the time the value is seen.
    by_value: bool,
}

impl Cell {
    fn refusal(&self, format: Format) -> Option<(&'static str, &'static str)> {
        match format {
            Format::Csv => self.csv,
            Format::Jsonl => self.jsonl,
            _ => None,
        }
    }
}

fn batch(columns: Vec<(&str, ArrayRef, bool)>) -> RecordBatch {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array, nullable)| Field::new(*name, array.data_type().clone(), *nullable))
        .collect();
    let arrays = columns.into_iter().map(|(_, a, _)| a).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
}

/// A cell of one nullable column named after the cell.
fn one(name: &'static str, array: impl Array + 'static) -> Cell {
    Cell {
        name,
        batch: batch(vec![(name, Arc::new(array), true)]),
        csv: None,
        jsonl: None,
        by_value: false,
    }
}

impl Cell {
    fn csv(mut self, what: &'static str) -> Self {
        self.csv = Some((self.name, what));
        self
    }
    fn jsonl(mut self, what: &'static str) -> Self {
        self.jsonl = Some((self.name, what));
        self
    }
    fn by_value(mut self) -> Self {
        self.by_value = true;
        self
    }
}

const US_PER_DAY: i64 = 86_400_000_000;
/// 0001-01-01T00:00:00 and 9999-12-31T23:59:59.999999: Spark's range.
const TS_MIN_US: i64 = -62_135_596_800_000_000;
const TS_MAX_US: i64 = 253_402_300_799_999_999;

fn timestamps_us() -> Vec<Option<i64>> {
    vec![
        Some(0),
        Some(-1),
        Some(1_700_000_000_123_456),
        // 2024-10-27T00:30Z and 01:30Z: 02:30 in Paris, twice (DST ends).
        Some(1_729_989_000_000_000),
        Some(1_729_992_600_000_000),
        // 1811: before time zones, Paris was 9 min 21 s ahead of UTC.
        Some(-5_000_000_000_000_000),
        Some(TS_MIN_US),
        Some(TS_MAX_US),
        None,
    ]
}

fn struct_cell() -> Cell {
    let inner = StructArray::from(vec![(
        Arc::new(Field::new("d", DataType::Float64, true)),
        Arc::new(Float64Array::from(vec![Some(f64::NAN), None, Some(2.5)])) as ArrayRef,
    )]);
    let fields = Fields::from(vec![
        Field::new("a", DataType::Int64, true),
        Field::new("b", DataType::Utf8, true),
        Field::new("c", inner.data_type().clone(), true),
    ]);
    let array = StructArray::try_new(
        fields,
        vec![
            Arc::new(Int64Array::from(vec![Some(1), Some(2), None])),
            Arc::new(StringArray::from(vec![Some(""), Some("x"), None])),
            Arc::new(inner),
        ],
        Some(NullBuffer::from(vec![true, false, true])),
    )
    .unwrap();
    one("struct<a int64, b utf8, c struct<d float64>>", array).csv("nested values")
}

fn map_cell() -> Cell {
    let mut b = MapBuilder::new(None, StringBuilder::new(), Int64Array::builder(4));
    b.keys().append_value("a");
    b.values().append_value(1);
    b.keys().append_value("");
    b.values().append_null();
    b.append(true).unwrap();
    b.append(true).unwrap(); // {}
    b.append(false).unwrap(); // null
    one("map<utf8, int64>", b.finish()).csv("nested values")
}

fn int_key_map_cell() -> Cell {
    let mut b = MapBuilder::new(None, Int32Array::builder(2), StringBuilder::new());
    b.keys().append_value(7);
    b.values().append_value("seven");
    b.append(true).unwrap();
    b.append(false).unwrap();
    one("map<int32, utf8>", b.finish())
        .csv("nested values")
        .jsonl("map keys that are not strings")
}

/// list<struct<ts timestamp(us, Europe/Paris), dec decimal(38,9), bin binary>>:
/// the values JSON needs care for, nested.
fn nested_specials_cell() -> Cell {
    let ts = TimestampMicrosecondArray::from(vec![Some(1_729_989_000_000_000), None, Some(-1)])
        .with_timezone("Europe/Paris");
    let dec = Decimal128Array::from(vec![
        Some(i128::MAX / 10 / 1_000_000_000 * 1_000_000_000 + 1),
        None,
        Some(-5),
    ])
    .with_precision_and_scale(38, 9)
    .unwrap();
    let bin = BinaryArray::from(vec![Some(&b"\x00\xff"[..]), Some(&b""[..]), None]);
    let items = StructArray::from(vec![
        (
            Arc::new(Field::new("ts", ts.data_type().clone(), true)),
            Arc::new(ts) as ArrayRef,
        ),
        (
            Arc::new(Field::new("dec", dec.data_type().clone(), true)),
            Arc::new(dec) as ArrayRef,
        ),
        (
            Arc::new(Field::new("bin", DataType::Binary, true)),
            Arc::new(bin) as ArrayRef,
        ),
    ]);
    let field = Arc::new(Field::new("item", items.data_type().clone(), true));
    let list = ListArray::try_new(
        field,
        OffsetBuffer::from_lengths([2, 0, 1]),
        Arc::new(items),
        Some(NullBuffer::from(vec![true, true, true])),
    )
    .unwrap();
    one("list<struct<ts, dec, bin>>", list).csv("nested values")
}

fn cells() -> Vec<Cell> {
    let f64s = vec![
        Some(0.1),
        Some(1e300),
        Some(5e-324),
        Some(-0.0),
        Some(f64::NAN),
        Some(f64::INFINITY),
        Some(f64::NEG_INFINITY),
        None,
    ];
    let f32s = vec![
        Some(1.1f32),
        Some(f32::MAX),
        Some(f32::MIN_POSITIVE),
        Some(f32::NAN),
        Some(f32::NEG_INFINITY),
        None,
    ];
    let max38 = 10i128.pow(38) - 1;
    let strings = vec![
        Some(""),
        None,
        Some("plain"),
        Some(" padded "),
        Some("comma, inside"),
        Some("say \"hi\""),
        Some("line\nbreak"),
        Some("crlf\r\n"),
        Some("\\N"),
        Some("null"),
    ];
    let mut list_of_strings = ListBuilder::new(StringBuilder::new());
    list_of_strings.append_value([Some(""), None]);
    list_of_strings.append_null();
    list_of_strings.append_value([Some("x")]);

    vec![
        one(
            "boolean",
            BooleanArray::from(vec![Some(true), Some(false), None]),
        ),
        one(
            "int8",
            Int8Array::from(vec![Some(i8::MIN), Some(i8::MAX), None]),
        ),
        one(
            "int16",
            Int16Array::from(vec![Some(i16::MIN), Some(i16::MAX), None]),
        ),
        one(
            "int32",
            Int32Array::from(vec![Some(i32::MIN), Some(i32::MAX), None]),
        ),
        one(
            "int64",
            Int64Array::from(vec![Some(i64::MIN), Some(i64::MAX), None]),
        ),
        one(
            "uint8",
            UInt8Array::from(vec![Some(0), Some(u8::MAX), None]),
        ),
        one(
            "uint16",
            UInt16Array::from(vec![Some(0), Some(u16::MAX), None]),
        ),
        one(
            "uint32",
            UInt32Array::from(vec![Some(0), Some(u32::MAX), None]),
        ),
        one(
            "uint64",
            UInt64Array::from(vec![Some(0), Some(u64::MAX), Some((1 << 53) + 1), None]),
        ),
        one(
            "float16",
            Float16Array::from(vec![
                Some(half_of(0.1)),
                Some(half_of(-65504.0)),
                Some(half_of(f32::INFINITY)),
                None,
            ]),
        ),
        one("float32 (NaN, -inf)", Float32Array::from(f32s)),
        one("float64 (NaN, ±inf, -0.0)", Float64Array::from(f64s)),
        one(
            "decimal(38,9)",
            Decimal128Array::from(vec![Some(max38), Some(-max38), Some(1), Some(0), None])
                .with_precision_and_scale(38, 9)
                .unwrap(),
        ),
        one(
            "decimal256(76,20)",
            Decimal256Array::from(vec![
                Some(i256::from_string(&"9".repeat(76)).unwrap()),
                Some(i256::from_i128(-1)),
                None,
            ])
            .with_precision_and_scale(76, 20)
            .unwrap(),
        ),
        one("utf8 (\"\" and null)", StringArray::from(strings.clone())),
        one(
            "utf8 (unicode)",
            StringArray::from(vec![
                "ünïcödé",
                "日本語",
                "emoji 🎉",
                "nul \0 byte",
                "tab\there",
                "\u{feff}bom",
            ]),
        ),
        one("large_utf8", LargeStringArray::from(strings.clone())),
        one("utf8_view", StringViewArray::from(strings.clone())),
        one(
            "dictionary<int32, utf8>",
            vec![Some("a"), Some(""), None, Some("a")]
                .into_iter()
                .collect::<DictionaryArray<Int32Type>>(),
        )
        .jsonl("dictionary-encoded values"),
        one(
            "binary",
            BinaryArray::from(vec![
                Some(&b""[..]),
                None,
                Some(&b"\x00\xff\n\r,\"\x7f"[..]),
            ]),
        )
        .csv("binary values"),
        one(
            "large_binary",
            LargeBinaryArray::from(vec![Some(&b""[..]), None, Some(&b"\x00\xff"[..])]),
        )
        .csv("binary values"),
        one(
            "binary_view",
            BinaryViewArray::from(vec![Some(&b""[..]), None, Some(&b"\x00\xff"[..])]),
        )
        .csv("binary values"),
        one(
            "date32",
            Date32Array::from(vec![
                Some(0),
                Some(-1),
                Some(-719_162),
                Some(2_932_896),
                None,
            ]),
        ),
        one(
            "date64",
            Date64Array::from(vec![
                Some(0),
                Some(-86_400_000),
                Some(19_000 * 86_400_000),
                None,
            ]),
        ),
        one(
            "time32(ms)",
            Time32MillisecondArray::from(vec![Some(0), Some(86_399_999), None]),
        ),
        one(
            "time64(us)",
            Time64MicrosecondArray::from(vec![Some(0), Some(US_PER_DAY - 1), None]),
        ),
        one(
            "time64(ns)",
            Time64NanosecondArray::from(vec![Some(1), Some(US_PER_DAY * 1000 - 1), None]),
        ),
        one(
            "timestamp(us) naive",
            TimestampMicrosecondArray::from(timestamps_us()),
        ),
        one(
            "timestamp(us, UTC)",
            TimestampMicrosecondArray::from(timestamps_us()).with_timezone("UTC"),
        ),
        one(
            "timestamp(us, Europe/Paris)",
            TimestampMicrosecondArray::from(timestamps_us()).with_timezone("Europe/Paris"),
        ),
        one(
            "timestamp(us, +05:30)",
            TimestampMicrosecondArray::from(timestamps_us()).with_timezone("+05:30"),
        ),
        one(
            "timestamp(ns, America/New_York)",
            TimestampNanosecondArray::from(vec![Some(1), Some(-1_000_000_001), None])
                .with_timezone("America/New_York"),
        ),
        one(
            "timestamp(ms) naive",
            TimestampMillisecondArray::from(vec![Some(1), Some(-1), None]),
        ),
        one(
            "timestamp(s, Etc/UTC)",
            TimestampSecondArray::from(vec![Some(1), Some(-1), None]).with_timezone("Etc/UTC"),
        ),
        one(
            "duration(us)",
            DurationMicrosecondArray::from(vec![Some(0), Some(-1), Some(3 * US_PER_DAY + 5), None]),
        )
        .csv("durations"),
        one(
            "interval(year_month)",
            IntervalYearMonthArray::from(vec![Some(14), None]),
        )
        .csv("intervals")
        .jsonl("intervals"),
        one(
            "timestamp(us) after 9999",
            TimestampMicrosecondArray::from(vec![Some(0), Some(TS_MAX_US + 1)]),
        )
        .csv("dates or timestamps outside the years 1 to 9999")
        .jsonl("dates or timestamps outside the years 1 to 9999")
        .by_value(),
        one(
            "date32 before year 1",
            Date32Array::from(vec![Some(-719_163)]),
        )
        .csv("dates or timestamps outside the years 1 to 9999")
        .jsonl("dates or timestamps outside the years 1 to 9999")
        .by_value(),
        one(
            "utf8 holding U+FDD0",
            StringArray::from(vec![Some("ok"), Some("\u{fdd0}"), None]),
        )
        .csv("the value U+FDD0")
        .by_value(),
        one("null", NullArray::new(3)),
        one(
            "list<int64>",
            ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
                Some(vec![Some(1), None, Some(3)]),
                Some(vec![]),
                None,
            ]),
        )
        .csv("nested values"),
        one("list<utf8>", list_of_strings.finish()).csv("nested values"),
        struct_cell(),
        map_cell(),
        int_key_map_cell(),
        nested_specials_cell(),
        Cell {
            name: "not-nullable columns",
            batch: batch(vec![
                ("id", Arc::new(Int64Array::from(vec![1, 2])), false),
                ("s", Arc::new(StringArray::from(vec!["", "x"])), false),
            ]),
            csv: None,
            jsonl: None,
            by_value: false,
        },
        Cell {
            name: "odd column names",
            batch: batch(vec![
                ("with,comma", Arc::new(Int64Array::from(vec![1])), true),
                ("with \"quote\"", Arc::new(Int64Array::from(vec![2])), true),
                ("line\nbreak", Arc::new(StringArray::from(vec!["v"])), true),
                ("", Arc::new(Int64Array::from(vec![3])), true),
                ("ünï 名前", Arc::new(Int64Array::from(vec![4])), true),
                (
                    " lead and trail ",
                    Arc::new(Int64Array::from(vec![5])),
                    true,
                ),
                ("dots.in.name", Arc::new(Int64Array::from(vec![6])), true),
                ("cr\rname", Arc::new(Int64Array::from(vec![7])), true),
            ]),
            csv: None,
            jsonl: None,
            by_value: false,
        },
        Cell {
            name: "duplicate column names",
            batch: batch(vec![
                ("a", Arc::new(Int64Array::from(vec![1, 2])), true),
                ("a", Arc::new(StringArray::from(vec!["x", ""])), true),
            ]),
            csv: None,
            jsonl: Some(("a", "two columns of one name")),
            by_value: false,
        },
    ]
}

fn half_of(
    v: f32,
) -> <arrow::datatypes::Float16Type as arrow::datatypes::ArrowPrimitiveType>::Native {
    <arrow::datatypes::Float16Type as arrow::datatypes::ArrowPrimitiveType>::Native::from_f32(v)
}

/// What one cell did in one format, for the table.
fn outcome(
    sidecar: &executor_shim::Sidecar,
    ran: &std::path::Path,
    partition: u64,
    cell: &Cell,
    format: Format,
    stream: bool,
) -> Result<String, String> {
    let schema: SchemaRef = cell.batch.schema();
    let mut req = TaskRequest::new(partition, 0);
    req.input_format = format;
    req.stream = stream;
    req.timeout = Some(Duration::from_secs(120));
    let id = req.task_id().to_string();
    let result = run(
        sidecar,
        &req,
        &schema,
        std::slice::from_ref(&cell.batch),
        Some(schema.clone()),
    );
    let logic_ran = std::fs::read_to_string(ran)
        .unwrap_or_default()
        .lines()
        .any(|l| l == id);
    match (cell.refusal(format), result) {
        (None, Ok((_, out))) => {
            if !logic_ran {
                return Err("succeeded without running the logic".into());
            }
            let fields: Vec<_> = out.iter().map(|b| b.schema().fields().clone()).collect();
            if fields.iter().any(|f| f != schema.fields()) {
                return Err(format!("schema came back as {fields:?}"));
            }
            let got = concat(&schema, &out);
            if got != cell.batch {
                return Err(format!(
                    "values differ:\n  sent {:?}\n  got  {:?}",
                    cell.batch, got
                ));
            }
            Ok("exact".into())
        }
        (None, Err(e)) => Err(format!("failed: {e}")),
        (Some(_), Ok(_)) => Err("round-tripped, but the matrix says it is refused".into()),
        (Some((column, what)), Err(e)) => {
            let text = e.to_string();
            let names_column = text.contains(&format!("column \"{column}\""));
            let says_what = text.contains(&format!("{format} cannot carry {what}"));
            let suggests = text.contains("use arrows or parquet");
            if !(names_column && says_what && suggests) {
                return Err(format!("refused, but not clearly: {text}"));
            }
            if logic_ran && !(stream && cell.by_value) {
                return Err(format!("refused only after the logic ran: {text}"));
            }
            Ok(format!("refused: {what}"))
        }
    }
}

/// Runs every cell through every format of `formats`; returns the matrix
/// as a Markdown table, and the cells that are neither exact nor refused
/// as the matrix says.
fn matrix(formats: &[Format], stream: bool) -> (String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    // The identity logic, which also notes that it ran.
    let ran = dir.path().join("ran");
    let logic = format!(
        r#"echo "$SIDECAR_TASK_ID" >> '{}' && cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT""#,
        ran.display()
    );
    let sidecar = start(&volume, &logic);
    let header: Vec<String> = formats.iter().map(|f| f.to_string()).collect();
    let mut table = vec![
        format!("| type | {} |", header.join(" | ")),
        format!("|---|{}", "---|".repeat(formats.len())),
    ];
    let mut failures = Vec::new();
    let mut partition = 0;
    for cell in &cells() {
        let mut row = Vec::new();
        for &format in formats {
            partition += 1;
            match outcome(&sidecar, &ran, partition, cell, format, stream) {
                Ok(text) => row.push(text),
                Err(why) => {
                    failures.push(format!("{format} / {}: {why}", cell.name));
                    row.push("FAILED".into());
                }
            }
        }
        let name = cell.name.replace('|', "\\|");
        table.push(format!("| {name} | {} |", row.join(" | ")));
    }
    sidecar.shutdown().unwrap();
    (table.join("\n"), failures)
}

#[test]
fn every_type_through_every_format_is_exact_or_refused_before_the_logic_runs() {
    let (table, failures) = matrix(&Format::ALL, false);
    println!("{table}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn stream_mode_is_as_faithful_and_refuses_types_before_the_logic_starts() {
    let (table, failures) = matrix(&[Format::Arrows, Format::Csv, Format::Jsonl], true);
    println!("{table}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
