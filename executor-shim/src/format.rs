//! Arrow staging and reading in the five data formats.
//!
//! A task's input is written with a [`BatchWriter`] (one format, any
//! [`Write`]); a task's output is read back with [`read_batches`], which
//! yields Arrow [`RecordBatch`]es conformed to the schema the caller expects.
//!
//! | format    | write                        | read                                  |
//! |-----------|------------------------------|---------------------------------------|
//! | `arrow`   | IPC file, uncompressed       | whole input into memory, then decode  |
//! | `arrows`  | IPC stream, uncompressed     | incremental, bounded memory           |
//! | `parquet` | Snappy-compressed row groups | whole input into memory, then decode  |
//! | `csv`     | header line, RFC 4180 quotes | incremental, bounded memory           |
//! | `jsonl`   | one object a line, nulls     | incremental, bounded memory           |
//! |           | written explicitly           |                                       |
//!
//! # Fidelity
//!
//! Written and read back with the schema it was written with, a batch comes
//! back equal (values, nulls, NaN, empty strings, time zones, decimal
//! precision, nesting, column names), or [`BatchWriter`] refuses it before
//! anything is written ([`FormatError::Unsupported`], naming the column and
//! what the format cannot carry). `arrow`, `arrows` and `parquet` carry
//! everything; the text formats carry what tests/fidelity.rs shows, as:
//!
//! * **CSV**: a null is an empty unquoted field and an empty string is `""`
//!   (PostgreSQL's and Spark's convention; in a one-column file a null row
//!   is an empty line). Column names are quoted like values, so any name
//!   round-trips, and duplicate names are matched by position. Binary,
//!   durations, intervals and nested types are refused, and so is a string
//!   that is exactly U+FDD0, which the reader uses internally to mark nulls
//!   (see `format/csv.rs`).
//! * **JSON Lines**: NaN and ±infinity are the strings `"NaN"`,
//!   `"Infinity"`, `"-Infinity"`; decimals are exact numbers; binary is hex;
//!   durations are integers in their unit; maps are objects. Refused: two
//!   columns (or struct fields) of one name, maps whose keys are not
//!   strings, dictionaries, intervals.
//! * **Both**: time-zoned timestamps are written as UTC instants (`...Z`)
//!   and get their zone back from the schema; dates and timestamps outside
//!   the years 1 to 9999 are refused (see `format/text.rs`).
//!
//! # Theory of operation
//!
//! * **Throughput.** Writers sit on a 1 MiB [`BufWriter`] and readers on a
//!   1 MiB [`BufReader`], so a partition moves in large system calls. IPC is
//!   written without compression (the bytes cross a local volume or a pipe,
//!   where compression costs more CPU than it saves I/O). Parquet uses Snappy:
//!   it is the Spark default, nearly as fast as no compression, and keeps
//!   collected outputs small.
//! * **Memory.** Streamable formats (`arrows`, `csv`, `jsonl`) are decoded
//!   batch by batch from the reader; at most one batch and the read buffer
//!   are held. Parquet and the IPC file format need random access (their
//!   metadata is in a footer), so they are read into memory first; they are
//!   refused in stream mode ([`check_streamable`]).
//! * **Schemas.** With an `expected` schema, CSV and JSON Lines are parsed
//!   with it directly (names and types), so a value that does not parse is an
//!   error naming the file, the column and, for CSV, the line. Self-describing
//!   formats are decoded as written and then [`conform`]ed: columns are
//!   selected and reordered by name (by position when the file has the
//!   expected names in order, so duplicate names survive), extra columns are
//!   dropped, and a type is cast only when the cast cannot silently lose data.
//!   Without `expected`, CSV and JSON Lines schemas are inferred from a
//!   bounded prefix (the first [`INFER_MAX_RECORDS`] records or
//!   [`INFER_MAX_BYTES`] bytes), which is then chained back in front of the
//!   rest of the stream.
//! * **Completeness.** A truncated input is an error, never a short result:
//!   an IPC stream must end with its end-of-stream marker, IPC files and
//!   Parquet files need their footers, and a CSV or JSON record cut short is
//!   a parse error.
//! * **The reader comes back.** [`BatchIter::finish`] reads whatever batches
//!   remain and returns the reader, so a caller reading through a
//!   `sidecar_core::manifest::VerifiedReader` can then drain and verify it.
//!
//! # Known limits
//!
//! * The fidelity above holds with an expected schema. Without one, types
//!   are inferred (next item): a JSON decimal becomes a float, binary hex a
//!   string, a map a struct, NaN a string.
//! * JSON Lines has no header: a column is reported missing when none of the
//!   records in the inference prefix has the key. Our writer always writes
//!   every key (nulls explicitly), so its own files are never misjudged.
//! * Without an expected schema, inferred types are what the prefix shows:
//!   CSV timestamps are inferred, JSON timestamps are read as strings, and a
//!   column whose type changes after the prefix is a parse error. Pass the
//!   expected schema where one is known.
//! * A 0-byte CSV or JSON Lines input is read as zero rows.
//! * JSON numbers are parsed by arrow-json, which truncates a fraction read
//!   into an integer column (`1.5` becomes `1`); CSV refuses it.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use arrow::array::{Int64Array, RecordBatch};
//! use arrow::datatypes::{DataType, Field, Schema};
//! use executor_shim::format::{read_batches, BatchWriter, Format};
//!
//! let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
//! let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2]))])?;
//! let mut writer = BatchWriter::new(Format::Csv, schema.clone(), Vec::new(), "part.csv")?;
//! writer.write(&batch)?;
//! let (stats, bytes) = writer.finish_into()?;
//! assert_eq!(stats.rows, 2);
//! assert_eq!(bytes, b"id\n1\n2\n");
//!
//! let iter = read_batches(Format::Csv, std::io::Cursor::new(bytes), "part.csv", Some(schema), 1024)?;
//! let batches = iter.collect::<Result<Vec<_>, _>>()?;
//! assert_eq!(batches, vec![batch]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Cursor, Read, Write};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, RecordBatchReader};
use arrow::buffer::Buffer;
use arrow::compute::{can_cast_types, cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::ipc::reader::{FileReader, StreamDecoder, StreamReader};
use arrow::ipc::writer::{FileWriter, StreamWriter};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::ChunkReader;

pub use sidecar_core::Format;

mod csv;
mod jsonl;
mod text;

/// Buffer size of every writer and stream reader.
pub const IO_BUFFER_BYTES: usize = 1 << 20;
/// Schema inference for CSV / JSON Lines reads at most this many records...
pub const INFER_MAX_RECORDS: usize = 1000;
/// ...and at most this many bytes (the prefix is held in memory).
pub const INFER_MAX_BYTES: usize = 1 << 20;
/// The longest CSV header line accepted.
pub const MAX_HEADER_BYTES: usize = 1 << 20;

/// Why data could not be written or read. Every variant names the file (the
/// label the caller gave) and, where there is one, the column.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("file {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("file {file}: {source}")]
    Arrow {
        file: String,
        #[source]
        source: ArrowError,
    },
    #[error("file {file}: {source}")]
    Parquet {
        file: String,
        #[source]
        source: ParquetError,
    },
    #[error("file {file}: column \"{column}\" is missing (has: {})", has.join(", "))]
    MissingColumn {
        file: String,
        column: String,
        /// The columns the file does have, in file order.
        has: Vec<String>,
    },
    #[error(
        "file {file}: column \"{column}\" is {found}, which cannot be read safely as {expected}"
    )]
    ColumnType {
        file: String,
        column: String,
        expected: DataType,
        found: DataType,
    },
    #[error("file {file}: column \"{column}\": a {found} value does not fit {expected}: {source}")]
    Cast {
        file: String,
        column: String,
        expected: DataType,
        found: DataType,
        /// Boxed to keep the error small (it travels in `Result`s).
        #[source]
        source: Box<ArrowError>,
    },
    #[error(
        "file {file}: column \"{column}\" has {nulls} null(s) but the expected schema says it is not nullable"
    )]
    UnexpectedNull {
        file: String,
        column: String,
        nulls: usize,
    },
    #[error("file {file}: {}{message}", location(column.as_deref(), *line))]
    Parse {
        file: String,
        column: Option<String>,
        /// 1-based line in the file, when known.
        line: Option<u64>,
        message: String,
    },
    #[error("file {file}: truncated: {detail}")]
    Truncated { file: String, detail: &'static str },
    #[error(
        "file {file}: column \"{column}\" ({data_type}): {format} cannot carry {what}; \
         use arrows or parquet, which carry every type"
    )]
    Unsupported {
        file: String,
        format: Format,
        column: String,
        data_type: DataType,
        /// What of the column the format cannot carry.
        what: &'static str,
    },
    #[error(
        "file {file}: column \"{column}\" appears more than once, so it cannot be matched by name \
         (list the file's columns in their order to read them all)"
    )]
    AmbiguousColumn { file: String, column: String },
    #[error(
        "{format} cannot be streamed through a FIFO (it needs random access to its footer); use arrows, csv or jsonl"
    )]
    NotStreamable { format: Format },
    #[error(
        "file {file}: unknown data format extension (expected .parquet, .csv, .arrow, .feather, .ipc, .arrows, .jsonl or .json)"
    )]
    UnknownExtension { file: String },
}

fn location(column: Option<&str>, line: Option<u64>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("line {l}, column \"{c}\": "),
        (Some(l), None) => format!("line {l}: "),
        (None, Some(c)) => format!("column \"{c}\": "),
        (None, None) => String::new(),
    }
}

fn io_err(file: &str) -> impl FnOnce(io::Error) -> FormatError + '_ {
    move |source| FormatError::Io {
        file: file.to_owned(),
        source,
    }
}

fn arrow_err(file: &str) -> impl FnOnce(ArrowError) -> FormatError + '_ {
    move |source| match source {
        ArrowError::IoError(_, source) => FormatError::Io {
            file: file.to_owned(),
            source,
        },
        source => FormatError::Arrow {
            file: file.to_owned(),
            source,
        },
    }
}

fn parquet_err(file: &str) -> impl FnOnce(ParquetError) -> FormatError + '_ {
    move |source| FormatError::Parquet {
        file: file.to_owned(),
        source,
    }
}

/// `Err(NotStreamable)` for formats that need random access.
pub fn check_streamable(format: Format) -> Result<(), FormatError> {
    if format.is_streamable() {
        Ok(())
    } else {
        Err(FormatError::NotStreamable { format })
    }
}

/// The format a file name's extension says (case-insensitive).
pub fn format_from_path(path: &Path) -> Option<Format> {
    Format::from_path(path)
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// Refuses a schema with a column `format` cannot carry through a round
/// trip (written, then read back with this schema), naming the column and
/// what the format lacks. [`BatchWriter::new`] calls it; call it yourself
/// to refuse before anything else happens (before a streamed task starts).
pub fn check_writable(format: Format, schema: &Schema, file: &str) -> Result<(), FormatError> {
    let refuse = |field: &Field, what| FormatError::Unsupported {
        file: file.to_owned(),
        format,
        column: field.name().clone(),
        data_type: field.data_type().clone(),
        what,
    };
    if format == Format::Jsonl {
        if let Some(field) = text::first_duplicate(schema.fields()) {
            return Err(refuse(
                field,
                "two columns of one name (a JSON object holds one value per key)",
            ));
        }
    }
    for field in schema.fields() {
        if let Some(what) = text::cannot_carry(format, field.data_type()) {
            return Err(refuse(field, what));
        }
    }
    Ok(())
}

fn csv_write_error(file: &str, schema: &Schema, err: csv::RowError) -> FormatError {
    // Columns are counted in the writer's schema: every batch is conformed to it.
    let field = |column: usize| schema.field(column);
    match err {
        csv::RowError::Io(source) => io_err(file)(source),
        csv::RowError::Marker { column } => FormatError::Unsupported {
            file: file.to_owned(),
            format: Format::Csv,
            column: field(column).name().clone(),
            data_type: field(column).data_type().clone(),
            what: "the value U+FDD0 (CSV reading reserves it to mark nulls)",
        },
        csv::RowError::Format { column, source } => FormatError::Parse {
            file: file.to_owned(),
            column: Some(field(column).name().clone()),
            line: None,
            message: source.to_string(),
        },
    }
}

/// What a [`BatchWriter`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub rows: u64,
    pub batches: u64,
    /// Bytes written to the underlying writer, footer included.
    pub bytes: u64,
}

/// Counts the bytes that reach the caller's writer.
#[derive(Debug)]
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Sink<W> = BufWriter<Counting<W>>;

enum Encoder<W: Write + Send> {
    Arrow(FileWriter<Sink<W>>),
    Arrows(StreamWriter<Sink<W>>),
    Parquet(Box<ArrowWriter<Sink<W>>>),
    Csv(csv::CsvRows<Sink<W>>),
    Jsonl(arrow::json::LineDelimitedWriter<Sink<W>>),
}

/// Incremental writer: one task's input in one format to any [`Write`].
///
/// Batches whose schema differs from the writer's are [`conform`]ed to it.
/// [`finish`](Self::finish) writes the footer or end-of-stream marker and
/// flushes; dropping the writer without finishing leaves an incomplete file.
pub struct BatchWriter<W: Write + Send> {
    format: Format,
    schema: SchemaRef,
    /// CSV and JSON Lines: the schema written, if it differs ([`text`]).
    text: Option<SchemaRef>,
    file: String,
    encoder: Encoder<W>,
    rows: u64,
    batches: u64,
}

impl<W: Write + Send> fmt::Debug for BatchWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchWriter")
            .field("format", &self.format)
            .field("file", &self.file)
            .field("rows", &self.rows)
            .field("batches", &self.batches)
            .finish_non_exhaustive()
    }
}

impl<W: Write + Send> BatchWriter<W> {
    /// Starts writing `format` to `out`. `file` labels errors.
    /// Refuses a column `format` cannot carry ([`check_writable`]) before
    /// writing anything.
    pub fn new(format: Format, schema: SchemaRef, out: W, file: &str) -> Result<Self, FormatError> {
        check_writable(format, &schema, file)?;
        let sink = BufWriter::with_capacity(
            IO_BUFFER_BYTES,
            Counting {
                inner: out,
                bytes: 0,
            },
        );
        let encoder = match format {
            Format::Arrow => {
                Encoder::Arrow(FileWriter::try_new(sink, &schema).map_err(arrow_err(file))?)
            }
            Format::Arrows => {
                Encoder::Arrows(StreamWriter::try_new(sink, &schema).map_err(arrow_err(file))?)
            }
            Format::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .build();
                Encoder::Parquet(Box::new(
                    ArrowWriter::try_new(sink, schema.clone(), Some(props))
                        .map_err(parquet_err(file))?,
                ))
            }
            Format::Csv => {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                Encoder::Csv(csv::CsvRows::new(sink, &names).map_err(io_err(file))?)
            }
            Format::Jsonl => Encoder::Jsonl(
                arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .with_encoder_factory(Arc::new(jsonl::Faithful))
                    .build::<_, arrow::json::writer::LineDelimited>(sink),
            ),
        };
        let text = match format {
            Format::Csv | Format::Jsonl => text::text_schema(&schema),
            _ => None,
        };
        Ok(Self {
            format,
            schema,
            text,
            file: file.to_owned(),
            encoder,
            rows: 0,
            batches: 0,
        })
    }

    /// The schema every written batch has.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Writes one batch (conformed to the writer's schema if it differs).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), FormatError> {
        let conformed;
        let batch = if batch.schema().fields() == self.schema.fields() {
            batch
        } else {
            conformed = conform(batch, &self.schema, &self.file)?;
            &conformed
        };
        let file = self.file.as_str();
        let text;
        let batch = match self.format {
            Format::Csv | Format::Jsonl => {
                text = self.to_text(batch)?;
                text.as_ref().unwrap_or(batch)
            }
            _ => batch,
        };
        match &mut self.encoder {
            Encoder::Arrow(w) => w.write(batch).map_err(arrow_err(file))?,
            Encoder::Arrows(w) => w.write(batch).map_err(arrow_err(file))?,
            Encoder::Parquet(w) => w.write(batch).map_err(parquet_err(file))?,
            Encoder::Csv(w) => w
                .write(batch)
                .map_err(|e| csv_write_error(file, &self.schema, e))?,
            Encoder::Jsonl(w) => w.write(batch).map_err(arrow_err(file))?,
        }
        self.rows += batch.num_rows() as u64;
        self.batches += 1;
        Ok(())
    }

    /// Refuses dates text cannot hold; returns the batch with time zones
    /// in UTC, if it has any ([`text`]).
    fn to_text(&self, batch: &RecordBatch) -> Result<Option<RecordBatch>, FormatError> {
        if let Some(i) = text::out_of_years(batch) {
            let field = self.schema.field(i);
            return Err(FormatError::Unsupported {
                file: self.file.clone(),
                format: self.format,
                column: field.name().clone(),
                data_type: field.data_type().clone(),
                what: "dates or timestamps outside the years 1 to 9999 \
                       (ISO 8601 text has four-digit years)",
            });
        }
        self.text
            .as_ref()
            .map(|text| text::to_text(batch, text))
            .transpose()
            .map_err(arrow_err(&self.file))
    }

    /// Writes the footer / end-of-stream marker and flushes.
    pub fn finish(self) -> Result<WriteStats, FormatError> {
        self.finish_into().map(|(stats, _)| stats)
    }

    /// Like [`finish`](Self::finish), and gives the writer back (to fsync a
    /// file, say).
    pub fn finish_into(self) -> Result<(WriteStats, W), FormatError> {
        let file = self.file.as_str();
        let sink = match self.encoder {
            Encoder::Arrow(w) => w.into_inner().map_err(arrow_err(file))?,
            Encoder::Arrows(w) => w.into_inner().map_err(arrow_err(file))?,
            // Writes the footer.
            Encoder::Parquet(w) => w.into_inner().map_err(parquet_err(file))?,
            // The header was written first, so an empty output has one too.
            Encoder::Csv(w) => w.out,
            Encoder::Jsonl(mut w) => {
                w.finish().map_err(arrow_err(file))?;
                w.into_inner()
            }
        };
        let counting = sink
            .into_inner()
            .map_err(|e| io_err(file)(e.into_error()))?;
        let Counting { mut inner, bytes } = counting;
        inner.flush().map_err(io_err(file))?;
        Ok((
            WriteStats {
                rows: self.rows,
                batches: self.batches,
                bytes,
            },
            inner,
        ))
    }
}

/// Writes batches to a Parquet file at `path` (created or truncated) and
/// syncs it, so the caller can rename it into place. Returns the row count.
pub fn write_parquet_file(
    path: &Path,
    schema: SchemaRef,
    batches: &[RecordBatch],
) -> Result<u64, FormatError> {
    let label = path.display().to_string();
    // Parquet has no second-resolution timestamp: written as is, such a
    // column becomes a bare INT64 that Spark and pyarrow read as a number.
    // Milliseconds keep the values and the logical type.
    let portable = portable_parquet_schema(&schema);
    let out = File::create(path).map_err(io_err(&label))?;
    let mut writer = BatchWriter::new(Format::Parquet, Arc::clone(&portable), out, &label)?;
    for batch in batches {
        if portable == schema {
            writer.write(batch)?;
        } else {
            writer.write(&conform(batch, &portable, &label)?)?;
        }
    }
    let (stats, out) = writer.finish_into()?;
    out.sync_all().map_err(io_err(&label))?;
    Ok(stats.rows)
}

/// `schema` as [`write_parquet_file`] stores it: second-resolution
/// timestamps become milliseconds (Parquet has no seconds unit).
pub fn portable_parquet_schema(schema: &SchemaRef) -> SchemaRef {
    use arrow::datatypes::TimeUnit;
    if !schema
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Timestamp(TimeUnit::Second, _)))
    {
        return Arc::clone(schema);
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Timestamp(TimeUnit::Second, tz) => f
                .as_ref()
                .clone()
                .with_data_type(DataType::Timestamp(TimeUnit::Millisecond, tz.clone())),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

// ---------------------------------------------------------------------------
// Conforming
// ---------------------------------------------------------------------------

/// Whether `from` may be cast to `to` without silently losing data. Casts
/// that can fail on a value (string parsing, integer narrowing) are allowed:
/// they run with `safe: false`, so such a value is an error, not a null.
fn cast_allowed(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    if from == to || from == &Null {
        return true;
    }
    let lossy = match (from, to) {
        // Truncates fractions.
        (
            Float16 | Float32 | Float64 | Decimal32(..) | Decimal64(..) | Decimal128(..)
            | Decimal256(..),
            t,
        ) if t.is_integer() => true,
        // Numbers to booleans collapse every non-zero value.
        (f, Boolean) if !matches!(f, Utf8 | LargeUtf8 | Utf8View) => true,
        // Drops the time of day.
        (Timestamp(..), Date32 | Date64 | Time32(_) | Time64(_)) => true,
        // Anything to a string "works"; a column that should be a string but
        // is not is a schema mistake worth reporting.
        (f, Utf8 | LargeUtf8 | Utf8View)
            if !matches!(f, Utf8 | LargeUtf8 | Utf8View | Dictionary(..)) =>
        {
            true
        }
        _ => false,
    };
    !lossy && can_cast_types(from, to)
}

/// Conforms one batch to `expected`: selects and reorders columns by name,
/// drops extra columns, and casts where [`cast_allowed`] says the cast is
/// safe (a value that does not fit is an error). Errors name the column and
/// `file`.
pub fn conform(
    batch: &RecordBatch,
    expected: &SchemaRef,
    file: &str,
) -> Result<RecordBatch, FormatError> {
    let schema = batch.schema();
    if schema.fields() == expected.fields() {
        return batch
            .clone()
            .with_schema(expected.clone())
            .map_err(arrow_err(file));
    }
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let indices = match_columns(file, &schema, expected)?;
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(expected.fields().len());
    for (field, index) in expected.fields().iter().zip(indices) {
        let found = schema.field(index);
        let column = batch.column(index);
        let column = if found.data_type() == field.data_type() {
            column.clone()
        } else if cast_allowed(found.data_type(), field.data_type()) {
            cast_with_options(column, field.data_type(), &options).map_err(|source| {
                FormatError::Cast {
                    file: file.to_owned(),
                    column: field.name().clone(),
                    expected: field.data_type().clone(),
                    found: found.data_type().clone(),
                    source: Box::new(source),
                }
            })?
        } else {
            return Err(FormatError::ColumnType {
                file: file.to_owned(),
                column: field.name().clone(),
                expected: field.data_type().clone(),
                found: found.data_type().clone(),
            });
        };
        check_nulls(file, field, &column)?;
        columns.push(column);
    }
    RecordBatch::try_new_with_options(
        expected.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(arrow_err(file))
}

fn check_nulls(file: &str, field: &Field, column: &ArrayRef) -> Result<(), FormatError> {
    if !field.is_nullable() && column.null_count() > 0 {
        return Err(FormatError::UnexpectedNull {
            file: file.to_owned(),
            column: field.name().clone(),
            nulls: column.null_count(),
        });
    }
    Ok(())
}

fn missing(file: &str, column: &str, has: &Schema) -> FormatError {
    FormatError::MissingColumn {
        file: file.to_owned(),
        column: column.to_owned(),
        has: has.fields().iter().map(|f| f.name().clone()).collect(),
    }
}

/// For each expected column, its index in `found`: by position when both
/// list the same names in the same order (so duplicate names round-trip),
/// else by name, where a name that appears twice is ambiguous.
fn match_columns(file: &str, found: &Schema, expected: &Schema) -> Result<Vec<usize>, FormatError> {
    let same_names = found
        .fields()
        .iter()
        .map(|f| f.name())
        .eq(expected.fields().iter().map(|f| f.name()));
    if same_names {
        return Ok((0..found.fields().len()).collect());
    }
    let count = |s: &Schema, name: &str| s.fields().iter().filter(|f| f.name() == name).count();
    expected
        .fields()
        .iter()
        .map(|field| match found.index_of(field.name()) {
            Err(_) => Err(missing(file, field.name(), found)),
            Ok(_) if count(found, field.name()) > 1 || count(expected, field.name()) > 1 => {
                Err(FormatError::AmbiguousColumn {
                    file: file.to_owned(),
                    column: field.name().clone(),
                })
            }
            Ok(index) => Ok(index),
        })
        .collect()
}

/// Checks before decoding that every expected column is present and has a
/// type that can be conformed, so the error comes before any row is read.
fn check_columns(file: &str, found: &Schema, expected: &Schema) -> Result<(), FormatError> {
    let indices = match_columns(file, found, expected)?;
    for (field, index) in expected.fields().iter().zip(indices) {
        let have = found.field(index);
        if !cast_allowed(have.data_type(), field.data_type()) {
            return Err(FormatError::ColumnType {
                file: file.to_owned(),
                column: field.name().clone(),
                expected: field.data_type().clone(),
                found: have.data_type().clone(),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// Wraps a stream reader to tell a proper end-of-stream marker from an
/// input that just stops: arrow's IPC `StreamReader` treats EOF at a message
/// boundary as the end, which would turn a truncated stream into a short
/// result. After the marker arrow reads nothing more, so a read that hit EOF
/// means the marker was missing.
struct EofProbe<R> {
    inner: Option<R>,
    hit_eof: bool,
}

impl<R: Read> Read for EofProbe<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(0);
        };
        let n = inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.hit_eof = true;
        }
        Ok(n)
    }
}

/// The prefix held for inference, chained in front of the rest of the input.
type Chained<R> = io::Chain<Cursor<Vec<u8>>, BufReader<R>>;

enum Source<R> {
    Arrows(StreamReader<EofProbe<BufReader<R>>>),
    /// An Arrow IPC stream already in memory, decoded zero-copy over it.
    ArrowsMemory {
        first: Option<RecordBatch>,
        decoder: StreamDecoder,
        buffer: Buffer,
    },
    Arrow {
        reader: FileReader<Cursor<Vec<u8>>>,
        input: R,
    },
    Parquet {
        reader: ParquetRecordBatchReader,
        input: R,
    },
    Csv {
        input: csv::NullMarking<Chained<R>>,
        decoder: Box<arrow::csv::reader::Decoder>,
        /// Column names in file order, to name a column from its index.
        names: Vec<String>,
    },
    Jsonl {
        input: Chained<R>,
        decoder: arrow::json::reader::Decoder,
        /// Records decoded so far, to place an error.
        records: u64,
    },
}

/// Batches read by [`read_batches`]. Stops after the first error.
pub struct BatchIter<R> {
    format: Format,
    file: String,
    schema: SchemaRef,
    /// Conform each batch to this (`None` when batches already match).
    conform_to: Option<SchemaRef>,
    source: Source<R>,
    done: bool,
}

impl<R> fmt::Debug for BatchIter<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchIter")
            .field("format", &self.format)
            .field("file", &self.file)
            .field("schema", &self.schema)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// Reads batches of `format` from `input`, conformed to `expected` when
/// given. `file` labels every error. Streamable formats are decoded
/// incrementally; `arrow` and `parquet` read `input` to its end first.
pub fn read_batches<R: Read + Send + 'static>(
    format: Format,
    input: R,
    file: &str,
    expected: Option<SchemaRef>,
    batch_size: usize,
) -> Result<BatchIter<R>, FormatError> {
    let batch_size = batch_size.max(1);
    match format {
        Format::Arrows => {
            let probe = EofProbe {
                inner: Some(BufReader::with_capacity(IO_BUFFER_BYTES, input)),
                hit_eof: false,
            };
            let reader = StreamReader::try_new(probe, None).map_err(arrow_err(file))?;
            let found = reader.schema();
            finish_setup(format, file, found, expected, Source::Arrows(reader))
        }
        Format::Arrow => {
            let (data, input) = read_all(input, file)?;
            let reader = FileReader::try_new(Cursor::new(data), None).map_err(arrow_err(file))?;
            let found = reader.schema();
            finish_setup(
                format,
                file,
                found,
                expected,
                Source::Arrow { reader, input },
            )
        }
        Format::Parquet => {
            let (data, input) = read_all(input, file)?;
            let reader = parquet_reader(bytes_from_vec(data), file, expected.as_ref(), batch_size)?;
            let found = reader.schema();
            finish_setup(
                format,
                file,
                found,
                expected,
                Source::Parquet { reader, input },
            )
        }
        Format::Csv => csv_source(input, file, expected, batch_size),
        Format::Jsonl => jsonl_source(input, file, expected, batch_size),
    }
}

/// Reads batches of `format` from `data`, the whole of a file already in
/// memory (read once, and verified, by the caller). An Arrow IPC stream is
/// decoded zero-copy over `data`: the batches share its buffers; the other
/// formats are read from it as from a file.
pub fn read_memory(
    format: Format,
    data: Vec<u8>,
    file: &str,
    expected: Option<SchemaRef>,
    batch_size: usize,
) -> Result<BatchIter<Cursor<Vec<u8>>>, FormatError> {
    if format != Format::Arrows {
        return read_batches(format, Cursor::new(data), file, expected, batch_size);
    }
    // The end-of-stream marker (continuation, zero length), or the legacy one.
    if !(data.ends_with(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]) || data.ends_with(&[0, 0, 0, 0])) {
        return Err(FormatError::Truncated {
            file: file.to_owned(),
            detail: "the Arrow IPC stream ends without its end-of-stream marker",
        });
    }
    let mut buffer = Buffer::from_vec(data);
    let mut decoder = StreamDecoder::new();
    // The schema message comes first (the decoder refuses a batch before
    // it); decoding it may yield the first batch too, kept for later.
    let first = decoder.decode(&mut buffer).map_err(arrow_err(file))?;
    let found = decoder.schema().ok_or_else(|| FormatError::Truncated {
        file: file.to_owned(),
        detail: "the Arrow IPC stream has no schema message",
    })?;
    let source = Source::ArrowsMemory {
        first,
        decoder,
        buffer,
    };
    finish_setup(format, file, found, expected, source)
}

/// Reads a whole input file for the harness, the format from its extension.
/// Parquet files are decoded straight from the file, not copied to memory.
pub fn read_path(
    path: &Path,
    batch_size: usize,
) -> Result<(SchemaRef, Vec<RecordBatch>), FormatError> {
    let label = path.display().to_string();
    let format = format_from_path(path).ok_or_else(|| FormatError::UnknownExtension {
        file: label.clone(),
    })?;
    let input = File::open(path).map_err(io_err(&label))?;
    if format == Format::Parquet {
        let reader = parquet_reader(input, &label, None, batch_size)?;
        let schema = reader.schema();
        let batches = reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(arrow_err(&label))?;
        return Ok((schema, batches));
    }
    let iter = read_batches(format, input, &label, None, batch_size)?;
    let schema = iter.schema();
    let batches = iter.collect::<Result<Vec<_>, _>>()?;
    Ok((schema, batches))
}

fn read_all<R: Read>(mut input: R, file: &str) -> Result<(Vec<u8>, R), FormatError> {
    let mut data = Vec::new();
    input.read_to_end(&mut data).map_err(io_err(file))?;
    Ok((data, input))
}

/// parquet reads from memory through `bytes::Bytes`, which this crate does
/// not depend on by name; the type is taken from `ChunkReader::get_bytes`.
fn bytes_from_vec(data: Vec<u8>) -> impl ChunkReader + 'static {
    fn convert<B: From<Vec<u8>>>(
        data: Vec<u8>,
        _witness: fn(&File, u64, usize) -> parquet::errors::Result<B>,
    ) -> B {
        B::from(data)
    }
    convert(data, <File as ChunkReader>::get_bytes)
}

fn parquet_reader<C: ChunkReader + 'static>(
    input: C,
    file: &str,
    expected: Option<&SchemaRef>,
    batch_size: usize,
) -> Result<ParquetRecordBatchReader, FormatError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(input).map_err(parquet_err(file))?;
    let mut builder = builder.with_batch_size(batch_size);
    if let Some(expected) = expected {
        // Decode only the expected columns.
        let found = builder.schema().clone();
        check_columns(file, &found, expected)?;
        let roots = match_columns(file, &found, expected)?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        builder = builder.with_projection(mask);
    }
    builder.build().map_err(parquet_err(file))
}

fn finish_setup<R>(
    format: Format,
    file: &str,
    found: SchemaRef,
    expected: Option<SchemaRef>,
    source: Source<R>,
) -> Result<BatchIter<R>, FormatError> {
    let (schema, conform_to) = match expected {
        Some(expected) => {
            check_columns(file, &found, &expected)?;
            let conform_to = (found.fields() != expected.fields()).then(|| expected.clone());
            (expected, conform_to)
        }
        None => (found, None),
    };
    Ok(BatchIter {
        format,
        file: file.to_owned(),
        schema,
        conform_to,
        source,
        done: false,
    })
}

/// Reads up to `max_records` lines or `max_bytes` bytes (whichever first)
/// into a buffer. Returns the buffer and the length of its complete lines.
fn read_prefix<R: BufRead>(input: &mut R, file: &str) -> Result<(Vec<u8>, usize), FormatError> {
    let mut prefix = Vec::new();
    let mut lines = 0;
    while lines < INFER_MAX_RECORDS && prefix.len() < INFER_MAX_BYTES {
        let limit = (INFER_MAX_BYTES - prefix.len()) as u64;
        let n = input
            .by_ref()
            .take(limit)
            .read_until(b'\n', &mut prefix)
            .map_err(io_err(file))?;
        if n == 0 {
            break;
        }
        lines += 1;
    }
    let complete = if prefix.last() == Some(&b'\n') {
        prefix.len()
    } else {
        // The last line is cut (or is the input's unterminated end): infer
        // from the complete lines, unless that is all there is.
        match prefix.iter().rposition(|&b| b == b'\n') {
            Some(i) if lines >= INFER_MAX_RECORDS || prefix.len() >= INFER_MAX_BYTES => i + 1,
            _ => prefix.len(),
        }
    };
    Ok((prefix, complete))
}

fn csv_source<R: Read + Send + 'static>(
    input: R,
    file: &str,
    expected: Option<SchemaRef>,
    batch_size: usize,
) -> Result<BatchIter<R>, FormatError> {
    let mut input = BufReader::with_capacity(IO_BUFFER_BYTES, input);
    let Some(header) = csv::read_header(&mut input, MAX_HEADER_BYTES).map_err(io_err(file))? else {
        return Err(FormatError::Parse {
            file: file.to_owned(),
            column: None,
            line: Some(1),
            message: format!("the header line is longer than {MAX_HEADER_BYTES} bytes"),
        });
    };
    if header.is_empty() {
        return empty_source(Format::Csv, file, expected, input);
    }
    let csv_format = arrow::csv::reader::Format::default().with_header(true);
    let (header_schema, _) = csv_format
        .infer_schema(Cursor::new(&header), Some(0))
        .map_err(arrow_err(file))?;
    let names: Vec<String> = header_schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let null_regex =
        csv::null_regex().map_err(|e| arrow_err(file)(ArrowError::ParseError(e.to_string())))?;

    let (plan, prefix) = match expected {
        Some(expected) => (csv_plan(file, &header_schema, expected)?, Vec::new()),
        None => {
            let (prefix, complete) = read_prefix(&mut input, file)?;
            let nulls_only = vec![false; names.len()];
            let marked = csv::mark_all(&prefix[..complete], nulls_only, names.clone())
                .map_err(io_err(file))?;
            let (inferred, _) = arrow::csv::reader::Format::default()
                .with_header(false)
                .with_null_regex(null_regex.clone())
                .infer_schema(Cursor::new(marked), None)
                .map_err(|e| csv_error(file, &names, e))?;
            (csv_inferred_plan(&names, &inferred), prefix)
        }
    };
    let holds_empty = plan
        .file_schema
        .fields()
        .iter()
        .map(|f| csv::holds_empty(f.data_type()))
        .collect();
    let mut builder = arrow::csv::ReaderBuilder::new(plan.file_schema)
        .with_header(false)
        .with_null_regex(null_regex)
        .with_batch_size(batch_size);
    if let Some(projection) = plan.projection {
        builder = builder.with_projection(projection);
    }
    let input = Cursor::new(prefix).chain(input);
    Ok(BatchIter {
        format: Format::Csv,
        file: file.to_owned(),
        schema: plan.out_schema,
        conform_to: plan.conform_to,
        source: Source::Csv {
            input: csv::NullMarking::new(input, holds_empty, names.clone()),
            decoder: Box::new(builder.build_decoder()),
            names,
        },
        done: false,
    })
}

/// How a CSV file is decoded: arrow's schema for every column of the file,
/// which of them to keep, the schema yielded, and what to conform to.
struct CsvPlan {
    file_schema: SchemaRef,
    projection: Option<Vec<usize>>,
    out_schema: SchemaRef,
    conform_to: Option<SchemaRef>,
}

/// Expected columns are parsed with their expected type (or one arrow's CSV
/// decoder has, then cast); the others are skipped (projected away).
fn csv_plan(file: &str, header: &Schema, expected: SchemaRef) -> Result<CsvPlan, FormatError> {
    let indices = match_columns(file, header, &expected)?;
    // Nullable while parsing: a null where `expected` forbids one is then
    // reported by `conform`, naming the column.
    let mut fields: Vec<Field> = header
        .fields()
        .iter()
        .map(|f| Field::new(f.name(), DataType::Utf8, true))
        .collect();
    let mut cast = false;
    for (field, &i) in expected.fields().iter().zip(&indices) {
        let parse_as = match field.data_type() {
            // Not in arrow's CSV decoder: parsed as Utf8 and cast.
            DataType::LargeUtf8 => DataType::Utf8,
            t => t.clone(),
        };
        cast |= &parse_as != field.data_type();
        fields[i] = field
            .as_ref()
            .clone()
            .with_data_type(parse_as)
            .with_nullable(true);
    }
    let mut projection = indices.clone();
    projection.sort_unstable();
    let in_order = projection == indices;
    let all_nullable = expected.fields().iter().all(|f| f.is_nullable());
    let conform_to = (!in_order || !all_nullable || cast).then(|| expected.clone());
    Ok(CsvPlan {
        file_schema: Arc::new(Schema::new(fields)),
        projection: Some(projection),
        out_schema: expected,
        conform_to,
    })
}

/// Inferred types; a column with nothing but nulls is read as Utf8.
fn csv_inferred_plan(names: &[String], inferred: &Schema) -> CsvPlan {
    let fields: Vec<Field> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let data_type = inferred
                .fields()
                .get(i)
                .map(|f| f.data_type().clone())
                .filter(|t| t != &DataType::Null)
                .unwrap_or(DataType::Utf8);
            Field::new(name, data_type, true)
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    CsvPlan {
        file_schema: schema.clone(),
        projection: None,
        out_schema: schema,
        conform_to: None,
    }
}

fn jsonl_source<R: Read + Send + 'static>(
    input: R,
    file: &str,
    expected: Option<SchemaRef>,
    batch_size: usize,
) -> Result<BatchIter<R>, FormatError> {
    let mut input = BufReader::with_capacity(IO_BUFFER_BYTES, input);
    let (prefix, complete) = read_prefix(&mut input, file)?;
    if prefix.iter().all(u8::is_ascii_whitespace)
        && input.fill_buf().map_err(io_err(file))?.is_empty()
    {
        return empty_source(Format::Jsonl, file, expected, input);
    }
    // An inferred column whose values mix numbers and strings (a float
    // column with "NaN") is a string column: numbers are read as text.
    let coerce = expected.is_none();
    let (inferred, _) =
        arrow::json::reader::infer_json_schema(Cursor::new(&prefix[..complete]), None)
            .map_err(|e| json_prefix_error(file, &prefix[..complete], e))?;
    let inferred = in_key_order(inferred, &prefix[..complete]);
    let schema = match expected {
        Some(expected) => {
            // Every key present (an object has no duplicate keys; the
            // expected schema may not ask for one twice either).
            match_columns(file, &inferred, &expected)?;
            expected
        }
        None => Arc::new(inferred),
    };
    // Nullable while parsing, as for CSV: `conform` names a forbidden null.
    let all_nullable = schema.fields().iter().all(|f| f.is_nullable());
    let conform_to = (!all_nullable).then(|| schema.clone());
    let parse_schema = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    let decoder = arrow::json::ReaderBuilder::new(parse_schema)
        .with_batch_size(batch_size)
        .with_coerce_primitive(coerce)
        .build_decoder()
        .map_err(arrow_err(file))?;
    Ok(BatchIter {
        format: Format::Jsonl,
        file: file.to_owned(),
        schema,
        conform_to,
        source: Source::Jsonl {
            input: Cursor::new(prefix).chain(input),
            decoder,
            records: 0,
        },
        done: false,
    })
}

/// Reorders inferred JSON fields to the order their keys first appear in
/// `prefix` (arrow infers through `serde_json::Value`, whose maps are sorted).
fn in_key_order(inferred: Schema, prefix: &[u8]) -> Schema {
    struct Keys<'a>(&'a mut Vec<String>);
    impl<'de> serde::de::Visitor<'de> for Keys<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                if !self.0.contains(&key) {
                    self.0.push(key);
                }
            }
            Ok(())
        }
    }
    struct Record<'a>(&'a mut Vec<String>);
    impl<'de> serde::de::DeserializeSeed<'de> for Record<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(Keys(self.0))
        }
    }

    let mut keys = Vec::new();
    let mut stream = serde_json::Deserializer::from_slice(prefix);
    while keys.len() < inferred.fields().len() {
        if serde::de::DeserializeSeed::deserialize(Record(&mut keys), &mut stream).is_err() {
            // Inference already accepted the prefix; on any surprise keep
            // its order rather than fail.
            return inferred;
        }
    }
    let mut fields: Vec<_> = inferred.fields().iter().cloned().collect();
    fields.sort_by_key(|f| {
        keys.iter()
            .position(|k| k == f.name())
            .unwrap_or(usize::MAX)
    });
    Schema::new_with_metadata(fields, inferred.metadata().clone())
}

/// A 0-byte CSV / JSON Lines input: no rows.
fn empty_source<R: Read>(
    format: Format,
    file: &str,
    expected: Option<SchemaRef>,
    input: BufReader<R>,
) -> Result<BatchIter<R>, FormatError> {
    let schema = expected.unwrap_or_else(|| Arc::new(Schema::empty()));
    let decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .build_decoder()
        .map_err(arrow_err(file))?;
    Ok(BatchIter {
        format,
        file: file.to_owned(),
        schema,
        conform_to: None,
        source: Source::Jsonl {
            input: Cursor::new(Vec::new()).chain(input),
            decoder,
            records: 0,
        },
        done: true,
    })
}

/// Finds `key` followed by a number in `message`; returns the number and
/// the message without that phrase.
fn take_number(message: &str, key: &str) -> Option<(u64, String)> {
    let start = message.find(key)?;
    let digits_at = start + key.len();
    let digits = message[digits_at..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    let n = message[digits_at..digits_at + digits].parse().ok()?;
    let rest = format!("{}{}", &message[..start], &message[digits_at + digits..]);
    Some((n, rest))
}

/// Turns arrow's CSV errors into ones naming the column and the 1-based line
/// of the file (the header is line 1). Arrow counts value errors from 0 and
/// record-shape errors from 1, both from the first data row.
fn csv_error(file: &str, names: &[String], err: ArrowError) -> FormatError {
    let mut message = match &err {
        ArrowError::ParseError(m) | ArrowError::CsvError(m) => m.clone(),
        _ => return arrow_err(file)(err),
    };
    let mut line = None;
    let mut column = None;
    if let Some((n, rest)) = take_number(&message, " for line ") {
        line = Some(n + 1);
        message = rest;
    } else if let Some((n, rest)) = take_number(&message, " records at line ") {
        line = Some(n + 1);
        message = format!("{rest} records");
    } else {
        if let Some((n, rest)) = take_number(&message, " for column ") {
            column = usize::try_from(n).ok().and_then(|i| names.get(i)).cloned();
            message = rest;
        } else if let Some((n, rest)) = take_number(&message, "Error parsing column ") {
            column = usize::try_from(n).ok().and_then(|i| names.get(i)).cloned();
            message = format!("Error parsing{rest}");
        }
        if let Some((n, rest)) = take_number(&message, " at line ") {
            line = Some(n + 2);
            message = rest;
        }
    }
    FormatError::Parse {
        file: file.to_owned(),
        column,
        line,
        message,
    }
}

/// An error inferring from the prefix: the prefix is the start of the
/// file, so the bad line can be found exactly.
fn json_prefix_error(file: &str, prefix: &[u8], err: ArrowError) -> FormatError {
    let bad_line = prefix.split(|&b| b == b'\n').position(|line| {
        !line.iter().all(u8::is_ascii_whitespace)
            && serde_json::from_slice::<serde::de::IgnoredAny>(line).is_err()
    });
    match (bad_line, err) {
        (Some(i), ArrowError::JsonError(message)) => FormatError::Parse {
            file: file.to_owned(),
            column: None,
            line: Some(i as u64 + 1),
            message,
        },
        (_, err) => json_error(file, (1, INFER_MAX_RECORDS as u64), err),
    }
}

/// Names the field in arrow's JSON error ("whilst decoding field 'id': ...")
/// and places it: `records` is the 1-based range of records it is in.
fn json_error(file: &str, records: (u64, u64), err: ArrowError) -> FormatError {
    let ArrowError::JsonError(message) = &err else {
        return arrow_err(file)(err);
    };
    let column = message
        .split_once("field '")
        .and_then(|(_, rest)| rest.split_once('\''))
        .map(|(name, _)| name.to_owned());
    let place = match records {
        (a, b) if a == b => format!("record {a}"),
        (a, b) => format!("records {a}-{b}"),
    };
    FormatError::Parse {
        file: file.to_owned(),
        column,
        line: None,
        message: format!("{message} (in {place})"),
    }
}

impl<R: Read> BatchIter<R> {
    /// The schema of the batches yielded: `expected` if given, else the
    /// file's (or the inferred) schema.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The format being read.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Reads and checks every remaining batch, then returns the reader, so
    /// the caller can verify it (e.g. `VerifiedReader::finish`). Returns the
    /// first error of the remaining batches instead, if any.
    pub fn finish(mut self) -> Result<R, FormatError> {
        for batch in self.by_ref() {
            batch?;
        }
        self.into_inner()
    }

    /// Returns the reader as it is, without reading further. For streamed
    /// formats, bytes already buffered but not decoded are lost.
    pub fn into_inner(self) -> Result<R, FormatError> {
        match self.source {
            Source::Arrows(mut reader) => match reader.get_mut().inner.take() {
                Some(buffered) => Ok(buffered.into_inner()),
                // `inner` is only taken here, which consumes self: this
                // cannot happen, but is an error rather than a panic.
                None => Err(FormatError::Io {
                    file: self.file,
                    source: io::Error::other("the input reader was already taken"),
                }),
            },
            Source::Arrow { input, .. } | Source::Parquet { input, .. } => Ok(input),
            // Read in full by the caller: nothing is left to hand back.
            Source::ArrowsMemory { .. } => Err(FormatError::Io {
                file: self.file,
                source: io::Error::other("an in-memory stream has no reader to hand back"),
            }),
            Source::Csv { input, .. } => Ok(input.into_inner().into_inner().1.into_inner()),
            Source::Jsonl { input, .. } => Ok(input.into_inner().1.into_inner()),
        }
    }

    fn next_raw(&mut self) -> Result<Option<RecordBatch>, FormatError> {
        let file = self.file.as_str();
        match &mut self.source {
            Source::Arrows(reader) => match reader.next() {
                Some(batch) => batch.map(Some).map_err(arrow_err(file)),
                None if reader.get_ref().hit_eof => Err(FormatError::Truncated {
                    file: file.to_owned(),
                    detail: "the Arrow IPC stream ends without its end-of-stream marker",
                }),
                None => Ok(None),
            },
            Source::ArrowsMemory {
                first,
                decoder,
                buffer,
            } => {
                if let Some(batch) = first.take() {
                    return Ok(Some(batch));
                }
                while !buffer.is_empty() {
                    if let Some(batch) = decoder.decode(buffer).map_err(arrow_err(file))? {
                        return Ok(Some(batch));
                    }
                }
                decoder.finish().map_err(arrow_err(file))?;
                Ok(None)
            }
            Source::Arrow { reader, .. } => reader.next().transpose().map_err(arrow_err(file)),
            Source::Parquet { reader, .. } => reader.next().transpose().map_err(arrow_err(file)),
            Source::Csv {
                input,
                decoder,
                names,
            } => {
                loop {
                    let buf = input.fill_buf().map_err(io_err(file))?;
                    let decoded = decoder.decode(buf).map_err(|e| csv_error(file, names, e))?;
                    input.consume(decoded);
                    if decoded == 0 || decoder.capacity() == 0 {
                        break;
                    }
                }
                decoder.flush().map_err(|e| csv_error(file, names, e))
            }
            Source::Jsonl {
                input,
                decoder,
                records,
            } => {
                loop {
                    let buf = input.fill_buf().map_err(io_err(file))?;
                    if buf.is_empty() {
                        break;
                    }
                    let read = buf.len();
                    // A syntax error is in the record after those buffered.
                    let at = *records + decoder.len() as u64 + 1;
                    let decoded = decoder
                        .decode(buf)
                        .map_err(|e| json_error(file, (at, at), e))?;
                    input.consume(decoded);
                    if decoded != read {
                        break;
                    }
                }
                let span = (*records + 1, *records + decoder.len().max(1) as u64);
                let batch = decoder.flush().map_err(|e| json_error(file, span, e))?;
                if let Some(batch) = &batch {
                    *records += batch.num_rows() as u64;
                }
                Ok(batch)
            }
        }
    }
}

impl<R: Read> Iterator for BatchIter<R> {
    type Item = Result<RecordBatch, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let result = self
            .next_raw()
            .and_then(|batch| match (batch, &self.conform_to) {
                (Some(batch), Some(expected)) => conform(&batch, expected, &self.file).map(Some),
                (batch, _) => Ok(batch),
            });
        match result {
            Ok(Some(batch)) => Some(Ok(batch)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_stay_small() {
        // Callers embed FormatError in their own error enums; keep clippy's
        // `result_large_err` (128 bytes) out of their way.
        assert!(
            size_of::<FormatError>() <= 104,
            "{}",
            size_of::<FormatError>()
        );
    }

    use arrow::array::{
        DurationMicrosecondArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };

    fn written(format: Format, batch: &RecordBatch) -> String {
        let mut w = BatchWriter::new(format, batch.schema(), Vec::new(), "t").unwrap();
        w.write(batch).unwrap();
        String::from_utf8(w.finish_into().unwrap().1).unwrap()
    }

    fn read_back(format: Format, text: String, schema: SchemaRef) -> RecordBatch {
        let iter = read_batches(format, Cursor::new(text), "t", Some(schema.clone()), 64).unwrap();
        let batches: Vec<_> = iter.collect::<Result<_, _>>().unwrap();
        arrow::compute::concat_batches(&schema, &batches).unwrap()
    }

    #[test]
    fn jsonl_writes_nan_infinities_durations_and_zoned_timestamps_readably() {
        let batch = RecordBatch::try_from_iter([
            (
                "f",
                Arc::new(Float64Array::from(vec![f64::NAN, f64::NEG_INFINITY, 1e300])) as ArrayRef,
            ),
            (
                "d",
                Arc::new(DurationMicrosecondArray::from(vec![1_500_000, -1, 0])),
            ),
            (
                "ts",
                Arc::new(
                    TimestampMicrosecondArray::from(vec![0, 1_729_989_000_000_000, -1])
                        .with_timezone("Europe/Paris"),
                ),
            ),
        ])
        .unwrap();
        let text = written(Format::Jsonl, &batch);
        let first = text.lines().next().unwrap();
        assert_eq!(
            first,
            r#"{"f":"NaN","d":1500000,"ts":"1970-01-01T00:00:00Z"}"#
        );
        assert!(text.contains(r#""f":"-Infinity""#), "{text}");
        assert!(text.contains(r#""f":1e300"#), "{text}");
        // Read back with the schema: the zone and every value return.
        assert_eq!(
            read_back(Format::Jsonl, text.clone(), batch.schema()),
            batch
        );
        // Without one, a float column with NaN in it is text, not an error.
        let iter = read_batches(Format::Jsonl, Cursor::new(text), "t", None, 64).unwrap();
        let got: Vec<_> = iter.collect::<Result<_, _>>().unwrap();
        let f = got[0]
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(
            f.iter().collect::<Vec<_>>(),
            [Some("NaN"), Some("-Infinity"), Some("1e300")]
        );
    }

    #[test]
    fn csv_tells_empty_strings_from_nulls() {
        let batch = RecordBatch::try_from_iter([
            (
                "s",
                Arc::new(StringArray::from(vec![Some(""), None, Some("x")])) as ArrayRef,
            ),
            ("n", Arc::new(Int64Array::from(vec![Some(1), None, None]))),
        ])
        .unwrap();
        let text = written(Format::Csv, &batch);
        assert_eq!(text, "s,n\n\"\",1\n,\nx,\n");
        assert_eq!(read_back(Format::Csv, text, batch.schema()), batch);
        // A quoted empty field in a number column is a null, too (as
        // Python's csv.QUOTE_ALL writes None).
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let got = read_back(Format::Csv, "n\n\"\"\n2\n".into(), schema.clone());
        let want = Int64Array::from(vec![None, Some(2)]);
        assert_eq!(got.column(0).as_ref(), &want as &dyn arrow::array::Array);
    }

    #[test]
    fn duplicate_names_match_by_position_or_not_at_all() {
        let schema = |names: &[&str]| {
            Schema::new(
                names
                    .iter()
                    .map(|n| Field::new(*n, DataType::Int64, true))
                    .collect::<Vec<_>>(),
            )
        };
        let found = schema(&["a", "b", "a"]);
        assert_eq!(match_columns("f", &found, &found).unwrap(), vec![0, 1, 2]);
        assert_eq!(
            match_columns("f", &found, &schema(&["b"])).unwrap(),
            vec![1]
        );
        let err = match_columns("f", &found, &schema(&["b", "a"])).unwrap_err();
        assert!(
            matches!(&err, FormatError::AmbiguousColumn { column, .. } if column == "a"),
            "{err}"
        );
        let err = match_columns("f", &schema(&["a", "b"]), &schema(&["a", "a"])).unwrap_err();
        assert!(
            err.to_string()
                .contains("column \"a\" appears more than once"),
            "{err}"
        );
    }

    #[test]
    fn text_formats_refuse_by_name_what_they_cannot_carry() {
        let map = DataType::Map(
            Arc::new(Field::new(
                "entries",
                DataType::Struct(arrow::datatypes::Fields::from(vec![
                    Field::new("key", DataType::Int32, false),
                    Field::new("value", DataType::Utf8, true),
                ])),
                false,
            )),
            false,
        );
        let list_of_maps = DataType::List(Arc::new(Field::new("item", map, true)));
        let cases = [
            (
                Format::Csv,
                DataType::Binary,
                "csv cannot carry binary values",
            ),
            (
                Format::Csv,
                DataType::Duration(arrow::datatypes::TimeUnit::Microsecond),
                "csv cannot carry durations",
            ),
            (
                Format::Jsonl,
                list_of_maps.clone(),
                "jsonl cannot carry map keys that are not strings",
            ),
        ];
        for (format, data_type, says) in cases {
            let schema = Schema::new(vec![Field::new("col", data_type.clone(), true)]);
            let err = check_writable(format, &schema, "t")
                .unwrap_err()
                .to_string();
            assert!(err.contains("column \"col\""), "{err}");
            assert!(err.contains(says), "{err}");
            assert!(
                err.ends_with("use arrows or parquet, which carry every type"),
                "{err}"
            );
            for carrier in [Format::Arrows, Format::Parquet] {
                check_writable(carrier, &schema, "t").unwrap();
            }
        }
        let twice = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("a", DataType::Utf8, true),
        ]);
        let err = check_writable(Format::Jsonl, &twice, "t")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("column \"a\" (Utf8): jsonl cannot carry two columns of one name"),
            "{err}"
        );
        check_writable(Format::Csv, &twice, "t").unwrap();
    }
}
