#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Writing and reading every data format: round trips, schema conformance,
//! error text, truncation, and bounded memory for streams.

use std::io::{self, Cursor, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use executor_shim::format::{
    check_streamable, conform, format_from_path, read_batches, read_path, write_parquet_file,
    BatchWriter, Format, FormatError,
};

const LABEL: &str = "tasks/p0-a0/output/part";

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("value", DataType::Float64, true),
        Field::new("name", DataType::Utf8, true),
    ]))
}

/// Three batches, with nulls in `value` and `name` and strings that need
/// CSV quoting. (tests/fidelity.rs covers every type and odd value.)
fn batches() -> Vec<RecordBatch> {
    let s = schema();
    let make = |ids: Vec<i64>, values: Vec<Option<f64>>, names: Vec<Option<&str>>| {
        RecordBatch::try_new(
            s.clone(),
            vec![
                Arc::new(Int64Array::from(ids)) as ArrayRef,
                Arc::new(Float64Array::from(values)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    };
    vec![
        make(
            vec![1, 2, 3],
            vec![Some(1.5), None, Some(-2.25)],
            vec![Some("alpha"), Some("with, comma"), None],
        ),
        make(
            vec![4],
            vec![Some(1e300)],
            vec![Some("quote \" and\nnewline")],
        ),
        make(
            vec![5, -6, i64::MAX],
            vec![None, Some(0.1), Some(7.0)],
            vec![None, Some("ünïcode"), Some("last")],
        ),
    ]
}

fn label(format: Format) -> String {
    format!("{LABEL}.{}", format.extension())
}

fn write_all(format: Format, schema: SchemaRef, batches: &[RecordBatch]) -> Vec<u8> {
    let mut writer = BatchWriter::new(format, schema, Vec::new(), &label(format)).unwrap();
    for b in batches {
        writer.write(b).unwrap();
    }
    let (stats, bytes) = writer.finish_into().unwrap();
    assert_eq!(
        stats.rows,
        batches.iter().map(|b| b.num_rows() as u64).sum::<u64>()
    );
    assert_eq!(stats.batches, batches.len() as u64);
    assert_eq!(stats.bytes, bytes.len() as u64);
    bytes
}

fn read_all(
    format: Format,
    bytes: Vec<u8>,
    expected: Option<SchemaRef>,
    batch_size: usize,
) -> Result<(SchemaRef, Vec<RecordBatch>), FormatError> {
    let iter = read_batches(
        format,
        Cursor::new(bytes),
        &label(format),
        expected,
        batch_size,
    )?;
    let schema = iter.schema();
    let batches = iter.collect::<Result<Vec<_>, _>>()?;
    Ok((schema, batches))
}

fn read_err(format: Format, bytes: Vec<u8>, expected: Option<SchemaRef>) -> FormatError {
    match read_all(format, bytes, expected, 1024) {
        Ok((_, batches)) => panic!("{format}: expected an error, read {batches:?}"),
        Err(e) => e,
    }
}

fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> RecordBatch {
    concat_batches(schema, batches).unwrap()
}

#[test]
fn every_format_round_trips_with_expected_schema() {
    let expected = schema();
    let original = concat(&expected, &batches());
    for format in Format::ALL {
        let bytes = write_all(format, expected.clone(), &batches());
        // A batch size of 2 re-batches the 3+1+3 rows where the format allows.
        let (schema, got) = read_all(format, bytes, Some(expected.clone()), 2).unwrap();
        assert_eq!(schema, expected, "{format}");
        for b in &got {
            assert!(b.num_rows() <= 3, "{format}: batch of {}", b.num_rows());
            assert_eq!(b.schema(), expected, "{format}");
        }
        assert_eq!(concat(&expected, &got), original, "{format}");
    }
}

#[test]
fn every_format_round_trips_without_expected_schema() {
    let original = concat(&schema(), &batches());
    for format in Format::ALL {
        let bytes = write_all(format, schema(), &batches());
        let (schema, got) = read_all(format, bytes, None, 1024).unwrap();
        let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "value", "name"], "{format}");
        let types: Vec<_> = schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        assert_eq!(
            types,
            [DataType::Int64, DataType::Float64, DataType::Utf8],
            "{format}"
        );
        // Text formats cannot say a column is not nullable; the values match.
        let got = concat(&schema, &got);
        assert_eq!(got.columns(), original.columns(), "{format}");
    }
}

fn rich_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("small", DataType::Int32, true),
        Field::new("flag", DataType::Boolean, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        Field::new(
            "ts_utc",
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            true,
        ),
        Field::new("day", DataType::Date32, true),
    ]))
}

fn rich_batch() -> RecordBatch {
    let micros = vec![Some(1_700_000_000_123_456), None, Some(-1_000_000)];
    RecordBatch::try_new(
        rich_schema(),
        vec![
            Arc::new(Int32Array::from(vec![Some(i32::MIN), None, Some(7)])) as ArrayRef,
            Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
            Arc::new(TimestampMicrosecondArray::from(micros.clone())),
            Arc::new(TimestampMicrosecondArray::from(micros).with_timezone("+00:00")),
            Arc::new(Date32Array::from(vec![None, Some(19_000), Some(-1)])),
        ],
    )
    .unwrap()
}

#[test]
fn timestamps_booleans_dates_and_nulls_round_trip_in_every_format() {
    let expected = rich_schema();
    for format in Format::ALL {
        let bytes = write_all(format, expected.clone(), &[rich_batch()]);
        let (_, got) = read_all(format, bytes, Some(expected.clone()), 1024).unwrap();
        assert_eq!(concat(&expected, &got), rich_batch(), "{format}");
    }
}

#[test]
fn zero_batches_write_a_readable_empty_file() {
    for format in Format::ALL {
        let bytes = write_all(format, schema(), &[]);
        // JSON Lines has no header: no rows is no bytes.
        assert_eq!(bytes.is_empty(), format == Format::Jsonl, "{format}");
        let (got_schema, got) = read_all(format, bytes, Some(schema()), 1024).unwrap();
        assert_eq!(got_schema, schema(), "{format}");
        assert_eq!(
            got.iter().map(RecordBatch::num_rows).sum::<usize>(),
            0,
            "{format}"
        );
    }
    // A 0-byte text file is zero rows too (a logic that wrote nothing).
    for format in [Format::Csv, Format::Jsonl] {
        let (_, got) = read_all(format, Vec::new(), Some(schema()), 1024).unwrap();
        assert!(got.is_empty(), "{format}");
    }
}

/// Writes `id`, `name` only: the expected `value` column is missing.
fn without_value() -> (SchemaRef, RecordBatch) {
    let s = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]));
    let b = RecordBatch::try_new(
        s.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
            Arc::new(StringArray::from(vec![Some("a"), None])),
        ],
    )
    .unwrap();
    (s, b)
}

#[test]
fn a_missing_column_names_the_column_and_the_file() {
    let (s, b) = without_value();
    for format in Format::ALL {
        let bytes = write_all(format, s.clone(), std::slice::from_ref(&b));
        let err = read_err(format, bytes, Some(schema()));
        match &err {
            FormatError::MissingColumn { file, column, has } => {
                assert_eq!(file, &label(format));
                assert_eq!(column, "value");
                assert_eq!(has, &["id", "name"]);
            }
            other => panic!("{format}: {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            format!(
                "file {}: column \"value\" is missing (has: id, name)",
                label(format)
            )
        );
    }
}

#[test]
fn a_string_that_is_not_a_number_names_the_column() {
    let s = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
    let b = RecordBatch::try_new(
        s.clone(),
        vec![Arc::new(StringArray::from(vec!["1", "abc"])) as ArrayRef],
    )
    .unwrap();
    let expected = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    for format in Format::ALL {
        let bytes = write_all(format, s.clone(), std::slice::from_ref(&b));
        let err = read_err(format, bytes, Some(expected.clone()));
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("file {}: ", label(format))),
            "{format}: {text}"
        );
        assert!(text.contains("column \"id\""), "{format}: {text}");
        assert!(text.contains("abc"), "{format}: {text}");
        assert!(
            matches!(err, FormatError::Parse { .. } | FormatError::Cast { .. }),
            "{format}: {err:?}"
        );
    }
}

#[test]
fn csv_unparsable_value_names_file_column_and_line() {
    let csv = "id,value,name\n1,1.5,a\n2,oops,b\n";
    let err = read_err(Format::Csv, csv.into(), Some(schema()));
    match &err {
        FormatError::Parse {
            file, column, line, ..
        } => {
            assert_eq!(file, &label(Format::Csv));
            assert_eq!(column.as_deref(), Some("value"));
            assert_eq!(*line, Some(3));
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.starts_with("file tasks/p0-a0/output/part.csv: line 3, column \"value\": "),
        "{text}"
    );
    assert!(text.contains("oops"), "{text}");
}

#[test]
fn csv_with_columns_in_another_order_and_extra_columns_is_conformed() {
    let csv = "name,extra,id,value\nx,ignored,1,2.5\n,zz,2,\n";
    let (_, got) = read_all(Format::Csv, csv.into(), Some(schema()), 1024).unwrap();
    let got = concat(&schema(), &got);
    let want = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
            Arc::new(Float64Array::from(vec![Some(2.5), None])),
            Arc::new(StringArray::from(vec![Some("x"), None])),
        ],
    )
    .unwrap();
    assert_eq!(got, want);
}

#[test]
fn jsonl_bad_value_and_reordered_keys() {
    let good = "{\"name\":\"x\",\"id\":1,\"value\":2.5,\"extra\":[1]}\n{\"id\":2}\n";
    let (_, got) = read_all(Format::Jsonl, good.into(), Some(schema()), 1024).unwrap();
    let got = concat(&schema(), &got);
    assert_eq!(
        got.column(0).as_ref(),
        &Int64Array::from(vec![1, 2]) as &dyn Array
    );
    assert_eq!(got.column(2).null_count(), 1);

    let bad =
        "{\"id\":1,\"value\":1.0,\"name\":\"a\"}\n{\"id\":\"abc\",\"value\":1.0,\"name\":\"a\"}\n";
    let err = read_err(Format::Jsonl, bad.into(), Some(schema()));
    let text = err.to_string();
    assert!(
        text.starts_with("file tasks/p0-a0/output/part.jsonl: column \"id\": "),
        "{text}"
    );
}

#[test]
fn conform_reorders_and_drops_extra_columns() {
    let wide = Arc::new(Schema::new(vec![
        Field::new("extra", DataType::Boolean, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("value", DataType::Float64, true),
        Field::new("id", DataType::Int32, false),
    ]));
    let b = RecordBatch::try_new(
        wide,
        vec![
            Arc::new(BooleanArray::from(vec![true, false])) as ArrayRef,
            Arc::new(StringArray::from(vec![Some("a"), None])),
            Arc::new(Float64Array::from(vec![None, Some(3.5)])),
            Arc::new(Int32Array::from(vec![10, 20])),
        ],
    )
    .unwrap();
    let got = conform(&b, &schema(), "f.arrow").unwrap();
    assert_eq!(got.schema(), schema());
    assert_eq!(
        got.column(0).as_ref(),
        &Int64Array::from(vec![10, 20]) as &dyn Array
    );
    assert_eq!(
        got.column(1).as_ref(),
        &Float64Array::from(vec![None, Some(3.5)]) as &dyn Array
    );
    assert_eq!(
        got.column(2).as_ref(),
        &StringArray::from(vec![Some("a"), None]) as &dyn Array
    );
}

#[test]
fn conform_refuses_lossy_casts_and_values_that_do_not_fit() {
    let one = |field: Field, array: ArrayRef| {
        RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![array]).unwrap()
    };
    // Float to integer would truncate: refused by type.
    let floats = one(
        Field::new("x", DataType::Float64, true),
        Arc::new(Float64Array::from(vec![1.5])),
    );
    let to_int = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
    let err = conform(&floats, &to_int, "f.parquet").unwrap_err();
    assert!(
        matches!(&err, FormatError::ColumnType { column, .. } if column == "x"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "file f.parquet: column \"x\" is Float64, which cannot be read safely as Int64"
    );

    // Int64 to Int32 is allowed, but a value out of range is an error, not a null.
    let big = one(
        Field::new("x", DataType::Int64, true),
        Arc::new(Int64Array::from(vec![1, i64::MAX])),
    );
    let to_i32 = Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, true)]));
    let err = conform(&big, &to_i32, "f.parquet").unwrap_err();
    assert!(
        matches!(&err, FormatError::Cast { column, .. } if column == "x"),
        "{err:?}"
    );
    let small = one(
        Field::new("x", DataType::Int64, true),
        Arc::new(Int64Array::from(vec![1, -2])),
    );
    let got = conform(&small, &to_i32, "f.parquet").unwrap();
    assert_eq!(
        got.column(0).as_ref(),
        &Int32Array::from(vec![1, -2]) as &dyn Array
    );

    // A null where the expected schema says not nullable.
    let nulls = one(
        Field::new("x", DataType::Int64, true),
        Arc::new(Int64Array::from(vec![Some(1), None])),
    );
    let not_null = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
    let err = conform(&nulls, &not_null, "f.parquet").unwrap_err();
    assert!(
        matches!(&err, FormatError::UnexpectedNull { column, nulls: 1, .. } if column == "x"),
        "{err:?}"
    );
}

#[test]
fn a_self_describing_file_with_an_incompatible_type_is_refused_before_reading() {
    let floats_schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Float64, true)]));
    let b = RecordBatch::try_new(
        floats_schema.clone(),
        vec![Arc::new(Float64Array::from(vec![1.5])) as ArrayRef],
    )
    .unwrap();
    let expected = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
    for format in [Format::Arrow, Format::Arrows, Format::Parquet] {
        let bytes = write_all(format, floats_schema.clone(), std::slice::from_ref(&b));
        let err = read_batches(
            format,
            Cursor::new(bytes),
            &label(format),
            Some(expected.clone()),
            1024,
        )
        .unwrap_err();
        assert!(
            matches!(&err, FormatError::ColumnType { column, file, .. } if column == "id" && file == &label(format)),
            "{format}: {err:?}"
        );
    }
}

#[test]
fn truncated_binary_inputs_are_errors_not_short_results() {
    for format in [Format::Arrows, Format::Arrow, Format::Parquet] {
        let bytes = write_all(format, schema(), &batches());
        // Cut at several places: inside the last message / footer, and (for
        // the stream) exactly before the 8-byte end-of-stream marker.
        for cut in [1, 8, bytes.len() / 2, bytes.len() - 9] {
            let truncated = bytes[..bytes.len() - cut].to_vec();
            let result = read_all(format, truncated, Some(schema()), 1024);
            let err = match result {
                Ok((_, got)) => panic!(
                    "{format} cut by {cut}: read {} rows",
                    got.iter().map(RecordBatch::num_rows).sum::<usize>()
                ),
                Err(e) => e,
            };
            assert!(
                err.to_string()
                    .starts_with(&format!("file {}: ", label(format))),
                "{format} cut by {cut}: {err}"
            );
        }
    }
    // The stream without its end-of-stream marker says so.
    let bytes = write_all(Format::Arrows, schema(), &batches());
    let err = read_err(Format::Arrows, bytes[..bytes.len() - 8].to_vec(), None);
    assert!(matches!(err, FormatError::Truncated { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "file tasks/p0-a0/output/part.arrows: truncated: the Arrow IPC stream ends without its end-of-stream marker"
    );
}

#[test]
fn truncated_text_records_are_errors() {
    let err = read_err(
        Format::Jsonl,
        "{\"id\":1}\n{\"id\":".into(),
        Some(schema_id()),
    );
    assert!(
        err.to_string()
            .starts_with("file tasks/p0-a0/output/part.jsonl: "),
        "{err}"
    );
    let err = read_err(Format::Csv, "id,value,name\n1,2.5".into(), Some(schema()));
    assert!(
        err.to_string()
            .starts_with("file tasks/p0-a0/output/part.csv: "),
        "{err}"
    );
}

fn schema_id() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]))
}

#[test]
fn only_stream_formats_are_streamable() {
    for format in [Format::Arrows, Format::Csv, Format::Jsonl] {
        check_streamable(format).unwrap();
    }
    for format in [Format::Arrow, Format::Parquet] {
        let err = check_streamable(format).unwrap_err();
        assert!(
            matches!(err, FormatError::NotStreamable { format: f } if f == format),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .starts_with(&format!("{format} cannot be streamed")));
    }
}

#[test]
fn csv_refuses_nested_types_by_name() {
    let s = Arc::new(Schema::new(vec![Field::new(
        "tags",
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        true,
    )]));
    let err = BatchWriter::new(Format::Csv, s, Vec::new(), "in.csv").unwrap_err();
    assert!(
        matches!(&err, FormatError::Unsupported { column, .. } if column == "tags"),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with(
            "file in.csv: column \"tags\" (List(Utf8)): csv cannot carry nested values"
        ),
        "{err}"
    );
}

#[test]
fn read_path_picks_the_format_from_the_extension() {
    let dir = tempfile::tempdir().unwrap();
    let original = concat(&schema(), &batches());
    for (ext, format) in [
        ("parquet", Format::Parquet),
        ("csv", Format::Csv),
        ("arrow", Format::Arrow),
        ("feather", Format::Arrow),
        ("ipc", Format::Arrow),
        ("arrows", Format::Arrows),
        ("jsonl", Format::Jsonl),
        ("json", Format::Jsonl),
        ("CSV", Format::Csv),
    ] {
        let path = dir.path().join(format!("input.{ext}"));
        assert_eq!(format_from_path(&path), Some(format));
        std::fs::write(&path, write_all(format, schema(), &batches())).unwrap();
        let (got_schema, got) = read_path(&path, 1024).unwrap();
        let got = concat(&got_schema, &got);
        assert_eq!(got.columns(), original.columns(), "{ext}");
    }
    let unknown = dir.path().join("input.txt");
    std::fs::write(&unknown, "x").unwrap();
    assert_eq!(format_from_path(&unknown), None);
    let err = read_path(&unknown, 1024).unwrap_err();
    assert!(
        matches!(err, FormatError::UnknownExtension { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("input.txt"), "{err}");

    let missing = dir.path().join("absent.csv");
    let err = read_path(&missing, 1024).unwrap_err();
    assert!(matches!(err, FormatError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("absent.csv"), "{err}");
}

#[test]
fn write_parquet_file_writes_a_readable_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.parquet");
    let rows = write_parquet_file(&path, schema(), &batches()).unwrap();
    assert_eq!(rows, 7);
    let (s, got) = read_path(&path, 1024).unwrap();
    assert_eq!(s, schema());
    assert_eq!(concat(&s, &got), concat(&schema(), &batches()));
}

/// Counts the bytes read through it; shared so the test can watch.
struct Counted<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

#[test]
fn finish_reads_everything_and_returns_the_reader() {
    for format in Format::ALL {
        let bytes = write_all(format, schema(), &batches());
        let len = bytes.len() as u64;
        let read = Arc::new(AtomicU64::new(0));
        let input = Counted {
            inner: Cursor::new(bytes),
            read: read.clone(),
        };
        let mut iter = read_batches(format, input, &label(format), Some(schema()), 2).unwrap();
        // Read one batch only; finish reads and checks the rest.
        iter.next().unwrap().unwrap();
        let input = iter.finish().unwrap();
        assert_eq!(read.load(Ordering::SeqCst), len, "{format}");
        assert_eq!(input.inner.position(), len, "{format}");
    }
}

#[test]
fn finish_reports_an_error_in_the_unread_rest() {
    let csv = "id,value,name\n1,1.5,a\n2,2.5,b\n3,bad,c\n";
    let mut iter = read_batches(Format::Csv, Cursor::new(csv), "o.csv", Some(schema()), 1).unwrap();
    iter.next().unwrap().unwrap();
    let err = iter.finish().unwrap_err();
    assert!(
        matches!(&err, FormatError::Parse { line: Some(4), column: Some(c), .. } if c == "value"),
        "{err:?}"
    );
}

/// An endless-looking input generated on the fly: `rows` records of the
/// format, never held whole in memory.
struct Generated {
    format: Format,
    header: Option<Vec<u8>>,
    next_row: u64,
    rows: u64,
    pending: Vec<u8>,
    served: Arc<AtomicU64>,
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending.is_empty() {
            if let Some(h) = self.header.take() {
                self.pending = h;
            } else if self.next_row < self.rows {
                let i = self.next_row;
                self.next_row += 1;
                self.pending = match self.format {
                    Format::Csv => format!("{i},{}.5,name-{i}\n", i % 1000),
                    _ => format!(
                        "{{\"id\":{i},\"value\":{}.5,\"name\":\"name-{i}\"}}\n",
                        i % 1000
                    ),
                }
                .into_bytes();
            } else {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        self.served.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

#[test]
fn text_streams_are_read_with_bounded_memory() {
    // 400,000 rows (~10 MB): the first batch must arrive after reading a
    // few MiB at most (read buffer + inference prefix), not the whole input.
    for format in [Format::Csv, Format::Jsonl] {
        for expected in [Some(schema()), None] {
            let served = Arc::new(AtomicU64::new(0));
            let input = Generated {
                format,
                header: (format == Format::Csv).then(|| b"id,value,name\n".to_vec()),
                next_row: 0,
                rows: 400_000,
                pending: Vec::new(),
                served: served.clone(),
            };
            let with = expected.is_some();
            let mut iter = read_batches(format, input, "gen", expected, 4096).unwrap();
            let first = iter.next().unwrap().unwrap();
            assert_eq!(first.num_rows(), 4096, "{format}");
            let after_first = served.load(Ordering::SeqCst);
            assert!(
                after_first < 4 << 20,
                "{format} (expected schema: {with}): {after_first} bytes read for the first batch"
            );
            let rest: usize = iter.map(|b| b.unwrap().num_rows()).sum();
            assert_eq!(rest + 4096, 400_000, "{format}");
        }
    }
}

#[test]
fn ipc_streams_are_read_with_bounded_memory() {
    // Many batches written to a buffer, read through a counting reader: the
    // first batch arrives long before the end of the input.
    let s = schema();
    let one = batches()[0].clone();
    let mut writer = BatchWriter::new(Format::Arrows, s.clone(), Vec::new(), "x").unwrap();
    for _ in 0..50_000 {
        writer.write(&one).unwrap();
    }
    let (_, bytes) = writer.finish_into().unwrap();
    let total = bytes.len() as u64;
    assert!(total > 8 << 20, "{total}");
    let read = Arc::new(AtomicU64::new(0));
    let input = Counted {
        inner: Cursor::new(bytes),
        read: read.clone(),
    };
    let mut iter = read_batches(Format::Arrows, input, "x", Some(s), 1024).unwrap();
    iter.next().unwrap().unwrap();
    assert!(read.load(Ordering::SeqCst) <= 2 << 20);
    assert_eq!(iter.count(), 49_999);
}

#[test]
fn writer_conforms_batches_with_a_different_schema() {
    // Columns in another order (and an Int32 id) are conformed on write.
    let other = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, true),
        Field::new("id", DataType::Int32, false),
        Field::new("value", DataType::Float64, true),
    ]));
    let b = RecordBatch::try_new(
        other,
        vec![
            Arc::new(StringArray::from(vec!["a"])) as ArrayRef,
            Arc::new(Int32Array::from(vec![9])),
            Arc::new(Float64Array::from(vec![0.5])),
        ],
    )
    .unwrap();
    let bytes = write_all(Format::Csv, schema(), &[b]);
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        "id,value,name\n9,0.5,a\n"
    );
}

#[test]
fn a_null_in_a_non_nullable_column_names_the_column_in_every_format() {
    let nullable = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("x", DataType::Int64, true),
    ]));
    let b = RecordBatch::try_new(
        nullable.clone(),
        vec![
            Arc::new(Int64Array::from(vec![Some(1), None])) as ArrayRef,
            Arc::new(Int64Array::from(vec![Some(1), Some(2)])),
        ],
    )
    .unwrap();
    let strict = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Int64, true),
        Field::new("id", DataType::Int64, false),
    ]));
    for format in Format::ALL {
        let bytes = write_all(format, nullable.clone(), std::slice::from_ref(&b));
        let err = read_err(format, bytes, Some(strict.clone()));
        assert!(
            matches!(&err, FormatError::UnexpectedNull { column, nulls: 1, .. } if column == "id"),
            "{format}: {err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "file {}: column \"id\" has 1 null(s) but the expected schema says it is not nullable",
                label(format)
            )
        );
    }
}

#[test]
fn readers_and_writers_can_move_between_threads() {
    fn send<T: Send>() {}
    send::<executor_shim::format::BatchIter<std::fs::File>>();
    send::<BatchWriter<std::fs::File>>();
    send::<FormatError>();
}

#[test]
fn csv_rows_with_the_wrong_number_of_fields_name_the_line() {
    for expected in [Some(schema()), None] {
        for (csv, got) in [
            ("id,value,name\n1,2.5,a\n1,2\n", "got 2"),
            ("id,value,name\n1,2.5,a\n1,2,3,4\n", "got 4"),
        ] {
            let err = read_err(Format::Csv, csv.into(), expected.clone());
            assert!(
                matches!(err, FormatError::Parse { line: Some(3), .. }),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(
                text.starts_with("file tasks/p0-a0/output/part.csv: line 3: "),
                "{text}"
            );
            assert!(
                text.contains(got) || text.contains(&got.replace("got", "found")),
                "{text}"
            );
        }
    }
}

#[test]
fn jsonl_syntax_errors_name_the_line() {
    let jsonl = "{\"id\":1}\n\n{\"id\":2}\nnot json\n";
    for expected in [Some(schema_id()), None] {
        let err = read_err(Format::Jsonl, jsonl.into(), expected);
        assert!(
            matches!(err, FormatError::Parse { line: Some(4), .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("file tasks/p0-a0/output/part.jsonl: line 4: "),
            "{err}"
        );
    }
}
