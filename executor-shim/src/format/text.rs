//! What the text formats (CSV, JSON Lines) carry, and what they need done
//! to a batch first.
//!
//! * **Types**: [`cannot_carry`] lets through only what the fidelity tests
//!   (tests/fidelity.rs) show to round-trip exactly; the writer refuses the
//!   rest by name before anything is written.
//! * **Time-zoned timestamps are written as UTC instants** (`...Z`). A
//!   local time with its offset would be exact too, were it not that chrono
//!   writes offsets in whole minutes (Paris was 9 min 21 s ahead of UTC
//!   before 1911) and that 9999-12-31T23:59Z, the end of Spark's range, is
//!   year 10000 east of Greenwich, which no parser here reads. The zone
//!   name comes back from the schema the output is read with.
//! * **Dates and timestamps must lie in the years 1 to 9999**: ISO 8601
//!   text has four-digit years, and arrow writes others (`+10000-01-01`) in
//!   a form its own parser refuses.

use std::sync::Arc;

use arrow::array::{make_array, Array, ArrayData, ArrayRef, AsArray, RecordBatch};
use arrow::compute::{cast_with_options, max, min, CastOptions};
use arrow::datatypes::{DataType, Field, Fields, Int64Type, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

use super::Format;

/// The second field of a name already taken, if any.
pub(super) fn first_duplicate(fields: &Fields) -> Option<&Field> {
    fields
        .iter()
        .enumerate()
        .find(|(i, f)| fields[..*i].iter().any(|g| g.name() == f.name()))
        .map(|(_, f)| f.as_ref())
}

/// What of `data_type` `format` cannot carry, if anything. The text
/// formats let through only what the fidelity tests (tests/fidelity.rs)
/// show to round-trip exactly.
pub(super) fn cannot_carry(format: Format, data_type: &DataType) -> Option<&'static str> {
    match format {
        Format::Arrow | Format::Arrows | Format::Parquet => None,
        Format::Csv => csv_cannot_carry(data_type),
        Format::Jsonl => jsonl_cannot_carry(data_type),
    }
}

/// The scalar types both text formats carry.
fn text_scalar(data_type: &DataType) -> bool {
    use arrow::datatypes::TimeUnit::*;
    use DataType::*;
    matches!(
        data_type,
        Null | Boolean
            | Int8
            | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Float16
            | Float32
            | Float64
            | Decimal32(..)
            | Decimal64(..)
            | Decimal128(..)
            | Decimal256(..)
            | Utf8
            | LargeUtf8
            | Utf8View
            | Date32
            | Date64
            | Timestamp(..)
            | Time32(Second | Millisecond)
            | Time64(Microsecond | Nanosecond)
    )
}

fn csv_cannot_carry(data_type: &DataType) -> Option<&'static str> {
    use DataType::*;
    match data_type {
        t if text_scalar(t) => None,
        Dictionary(_, value) if value.as_ref() == &Utf8 => None,
        Binary | LargeBinary | FixedSizeBinary(_) | BinaryView => Some("binary values"),
        Duration(_) => Some("durations"),
        Interval(_) => Some("intervals"),
        t if t.is_nested() => Some("nested values (lists, structs, maps)"),
        _ => Some("this type"),
    }
}

fn jsonl_cannot_carry(data_type: &DataType) -> Option<&'static str> {
    use DataType::*;
    match data_type {
        t if text_scalar(t) => None,
        // Binary as hex, durations as integers (see format/jsonl.rs).
        Binary | LargeBinary | FixedSizeBinary(_) | BinaryView | Duration(_) => None,
        List(item) | LargeList(item) | FixedSizeList(item, _) => {
            jsonl_cannot_carry(item.data_type())
        }
        Struct(fields) if first_duplicate(fields).is_some() => {
            Some("a struct with two fields of one name (a JSON object holds one value per key)")
        }
        Struct(fields) => fields
            .iter()
            .find_map(|f| jsonl_cannot_carry(f.data_type())),
        Map(_, true) => Some("maps with sorted keys"),
        Map(entries, false) => match entries.data_type() {
            Struct(kv) if kv.len() == 2 => match kv[0].data_type() {
                Utf8 | LargeUtf8 => jsonl_cannot_carry(kv[1].data_type()),
                _ => Some("map keys that are not strings (JSON object keys are strings)"),
            },
            _ => Some("this map layout"),
        },
        Dictionary(..) => Some("dictionary-encoded values"),
        Interval(_) => Some("intervals"),
        _ => Some("this type"),
    }
}

const UTC: &str = "+00:00";

/// `schema` with every time-zoned timestamp, at any depth, in UTC; `None`
/// when nothing changes.
pub(super) fn text_schema(schema: &Schema) -> Option<SchemaRef> {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(utc(f.data_type())))
        .collect();
    let changed = fields
        .iter()
        .zip(schema.fields())
        .any(|(a, b)| a.data_type() != b.data_type());
    changed.then(|| Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())))
}

fn utc(data_type: &DataType) -> DataType {
    use DataType::*;
    let field = |f: &Arc<Field>| Arc::new(f.as_ref().clone().with_data_type(utc(f.data_type())));
    match data_type {
        Timestamp(unit, Some(_)) => Timestamp(*unit, Some(UTC.into())),
        List(f) => List(field(f)),
        LargeList(f) => LargeList(field(f)),
        FixedSizeList(f, n) => FixedSizeList(field(f), *n),
        Struct(fields) => Struct(fields.iter().map(field).collect()),
        Map(f, sorted) => Map(field(f), *sorted),
        t => t.clone(),
    }
}

/// Casts `batch` to `text` (a zone change only: the values stay).
pub(super) fn to_text(batch: &RecordBatch, text: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let columns = batch
        .columns()
        .iter()
        .zip(text.fields())
        .map(
            |(column, field)| match column.data_type() == field.data_type() {
                true => Ok(column.clone()),
                false => cast_with_options(column, field.data_type(), &options),
            },
        )
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    RecordBatch::try_new(text.clone(), columns)
}

/// The index of the first column with a date or timestamp (at any depth)
/// outside the years 1 to 9999.
pub(super) fn out_of_years(batch: &RecordBatch) -> Option<usize> {
    batch
        .columns()
        .iter()
        .position(|c| !within_years(&c.to_data()))
}

/// 0001-01-01T00:00:00 and 9999-12-31T23:59:59, in seconds from the epoch.
const FIRST_SECOND: i64 = -62_135_596_800;
const LAST_SECOND: i64 = 253_402_300_799;
const SECONDS_PER_DAY: i64 = 86_400;

fn within_years(data: &ArrayData) -> bool {
    let per_second = match data.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => 1,
        DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Date64 => 1_000,
        DataType::Timestamp(TimeUnit::Microsecond, _) => 1_000_000,
        DataType::Timestamp(TimeUnit::Nanosecond, _) => 1_000_000_000,
        DataType::Date32 => {
            let (lo, hi) = (
                FIRST_SECOND / SECONDS_PER_DAY,
                LAST_SECOND / SECONDS_PER_DAY,
            );
            return range(data).is_none_or(|(a, b)| a >= lo && b <= hi);
        }
        _ => return data.child_data().iter().all(within_years),
    };
    // Nanoseconds from the epoch cover only 1677-2262: the bounds saturate.
    let lo = FIRST_SECOND.saturating_mul(per_second);
    let hi = (LAST_SECOND + 1)
        .saturating_mul(per_second)
        .saturating_sub(1);
    range(data).is_none_or(|(a, b)| a >= lo && b <= hi)
}

/// The smallest and largest value of a date or timestamp array, as i64.
fn range(data: &ArrayData) -> Option<(i64, i64)> {
    let array = make_array(data.clone());
    let values = arrow::compute::cast(&array, &DataType::Int64).ok()?;
    let values = values.as_primitive::<Int64Type>();
    Some((min(values)?, max(values)?))
}
