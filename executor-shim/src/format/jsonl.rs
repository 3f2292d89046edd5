//! JSON values for what arrow's JSON writer would otherwise lose.
//!
//! * Floats: arrow writes NaN and ±infinity as `null`. Here they are the
//!   strings `"NaN"`, `"Infinity"` and `"-Infinity"` (as Spark's and
//!   Jackson's JSON write them), which arrow's reader parses back into a
//!   float column. Finite floats are written in their shortest exact form.
//! * Durations: arrow writes ISO 8601 text (`"PT1.5S"`) that its reader
//!   cannot parse. Here they are integers in the column's unit.
//!
//! Binary is left to arrow: lowercase hex, which its reader decodes when
//! the expected schema says the column is binary.

use std::fmt::Debug;
use std::io::Write as _;

use arrow::array::{Array, AsArray, PrimitiveArray};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, DurationMicrosecondType, DurationMillisecondType,
    DurationNanosecondType, DurationSecondType, FieldRef, Float16Type, Float32Type, Float64Type,
    TimeUnit,
};
use arrow::error::ArrowError;
use arrow::json::writer::{Encoder, EncoderFactory, EncoderOptions, NullableEncoder};

/// The [`EncoderFactory`] of our JSON Lines writer.
#[derive(Debug)]
pub(super) struct Faithful;

impl EncoderFactory for Faithful {
    fn make_default_encoder<'a>(
        &self,
        _field: &'a FieldRef,
        array: &'a dyn Array,
        _options: &'a EncoderOptions,
    ) -> Result<Option<NullableEncoder<'a>>, ArrowError> {
        let encoder: Box<dyn Encoder + 'a> = match array.data_type() {
            DataType::Float16 => Box::new(Floats(array.as_primitive::<Float16Type>())),
            DataType::Float32 => Box::new(Floats(array.as_primitive::<Float32Type>())),
            DataType::Float64 => Box::new(Floats(array.as_primitive::<Float64Type>())),
            DataType::Duration(TimeUnit::Second) => {
                Box::new(Integers(array.as_primitive::<DurationSecondType>()))
            }
            DataType::Duration(TimeUnit::Millisecond) => {
                Box::new(Integers(array.as_primitive::<DurationMillisecondType>()))
            }
            DataType::Duration(TimeUnit::Microsecond) => {
                Box::new(Integers(array.as_primitive::<DurationMicrosecondType>()))
            }
            DataType::Duration(TimeUnit::Nanosecond) => {
                Box::new(Integers(array.as_primitive::<DurationNanosecondType>()))
            }
            _ => return Ok(None),
        };
        Ok(Some(NullableEncoder::new(encoder, array.nulls().cloned())))
    }
}

/// NaN and the infinities, as JSON strings.
fn special(v: f64) -> Option<&'static [u8]> {
    if v.is_nan() {
        Some(b"\"NaN\"")
    } else if v == f64::INFINITY {
        Some(b"\"Infinity\"")
    } else if v == f64::NEG_INFINITY {
        Some(b"\"-Infinity\"")
    } else {
        None
    }
}

struct Floats<'a, T: ArrowPrimitiveType>(&'a PrimitiveArray<T>);

impl<T: ArrowPrimitiveType> Encoder for Floats<'_, T>
where
    T::Native: Into<f64> + Debug,
{
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        let v = self.0.value(idx);
        match special(v.into()) {
            Some(text) => out.extend_from_slice(text),
            // Debug is the shortest text that parses back to the same
            // value (Display would spell out 1e300 in 301 digits). Writing
            // to a Vec cannot fail.
            None => {
                let _ = write!(out, "{v:?}");
            }
        }
    }
}

struct Integers<'a, T: ArrowPrimitiveType>(&'a PrimitiveArray<T>);

impl<T: ArrowPrimitiveType> Encoder for Integers<'_, T>
where
    T::Native: std::fmt::Display,
{
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        let _ = write!(out, "{}", self.0.value(idx));
    }
}
