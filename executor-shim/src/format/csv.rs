//! CSV text that keeps a null apart from an empty string.
//!
//! The convention is PostgreSQL's `COPY ... CSV` and Spark's (since 2.4): a
//! null is an empty, unquoted field; an empty string is a quoted empty
//! field, `""`. In a one-column file a null row is an empty line.
//!
//! arrow's CSV writer cannot produce that (it quotes an empty field only
//! when it is a record's only field), and arrow's reader cannot see it (its
//! tokenizer drops the quotes before a value is looked at). So rows are
//! written here, and input is read through [`NullMarking`], which rewrites
//! every field that means null into [`NULL_MARKER`] before arrow's decoder
//! sees it; the decoder is told that exactly that value is null. The marker
//! is U+FDD0, a Unicode noncharacter, "reserved for internal use" by the
//! standard: a real field that holds exactly it is refused on both sides
//! rather than read as a null.

use std::io::{self, BufRead, Read, Write};

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::DataType;
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// What a null field becomes on its way into arrow's CSV decoder.
pub(super) const NULL_MARKER: &str = "\u{FDD0}";

/// The decoder's null pattern: exactly [`NULL_MARKER`].
pub(super) fn null_regex() -> Result<regex::Regex, regex::Error> {
    regex::Regex::new("^\u{FDD0}$")
}

/// Whether a field of this type reads `""` as an empty string (rather
/// than as a null, which is all an empty field can mean for other types).
pub(super) fn holds_empty(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) || matches!(data_type, DataType::Dictionary(_, v) if holds_empty(v))
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// Why a value could not be written: the column index and arrow's error,
/// or the marker found in a string.
#[derive(Debug)]
pub(super) enum RowError {
    Io(io::Error),
    Format { column: usize, source: ArrowError },
    Marker { column: usize },
}

/// Writes CSV rows: a header, then one line a row.
pub(super) struct CsvRows<W: Write> {
    pub(super) out: W,
    line: Vec<u8>,
    field: String,
}

impl<W: Write> CsvRows<W> {
    /// Writes the header line of `names` to `out`.
    pub(super) fn new(mut out: W, names: &[&str]) -> io::Result<Self> {
        let mut line = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            push_field(&mut line, name);
        }
        line.push(b'\n');
        out.write_all(&line)?;
        Ok(Self {
            out,
            line,
            field: String::new(),
        })
    }

    /// Writes every row of `batch`.
    pub(super) fn write(&mut self, batch: &RecordBatch) -> Result<(), RowError> {
        let options = FormatOptions::default().with_display_error(false);
        let columns: Vec<_> = batch
            .columns()
            .iter()
            .enumerate()
            .map(|(column, array)| {
                ArrayFormatter::try_new(array.as_ref(), &options)
                    .map(|f| (f, array.logical_nulls()))
                    .map_err(|source| RowError::Format { column, source })
            })
            .collect::<Result<_, _>>()?;
        for row in 0..batch.num_rows() {
            self.line.clear();
            for (column, (formatter, nulls)) in columns.iter().enumerate() {
                if column > 0 {
                    self.line.push(b',');
                }
                if nulls.as_ref().is_some_and(|n| n.is_null(row)) {
                    continue;
                }
                self.field.clear();
                formatter
                    .value(row)
                    .write(&mut self.field)
                    .map_err(|source| RowError::Format { column, source })?;
                if self.field == NULL_MARKER {
                    return Err(RowError::Marker { column });
                }
                push_field(&mut self.line, &self.field);
            }
            self.line.push(b'\n');
            self.out.write_all(&self.line).map_err(RowError::Io)?;
        }
        Ok(())
    }
}

/// Appends one field, quoted when it is empty or holds a delimiter, a
/// quote or a line break (RFC 4180: quotes inside are doubled).
fn push_field(line: &mut Vec<u8>, value: &str) {
    let needs_quotes = value.is_empty()
        || value
            .bytes()
            .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'));
    if !needs_quotes {
        line.extend_from_slice(value.as_bytes());
        return;
    }
    line.push(b'"');
    for part in value.split_inclusive('"') {
        line.extend_from_slice(part.as_bytes());
        if part.ends_with('"') {
            line.push(b'"');
        }
    }
    line.push(b'"');
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// Reads the header record: up to the first line break outside quotes (a
/// quoted column name may hold one). At most `max` bytes; `Ok(None)` if the
/// header is longer.
pub(super) fn read_header<R: BufRead>(input: &mut R, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut header = Vec::new();
    loop {
        let limit = (max + 1).saturating_sub(header.len()) as u64;
        let n = input.by_ref().take(limit).read_until(b'\n', &mut header)?;
        if header.len() > max {
            return Ok(None);
        }
        let open_quote = header.iter().filter(|&&b| b == b'"').count() % 2 == 1;
        if n == 0 || !open_quote {
            return Ok(Some(header));
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    /// Before a field's first byte.
    FieldStart,
    /// Inside a field that did not start with a quote.
    Unquoted,
    /// After a field's opening quote, nothing else yet.
    OpenQuote,
    /// After `""` at a field's start: an empty field, or an escaped quote.
    EmptyQuoted,
    /// Inside a quoted field.
    Quoted,
    /// After a quote inside a quoted field: its end, or an escaped quote.
    QuotedQuote,
}

/// The tokenizer state of [`NullMarking`]: where in a record it is.
#[derive(Debug)]
struct Lexer {
    /// Per file column: whether `""` is an empty string there.
    holds_empty: Vec<bool>,
    /// Column names, for the one error this can raise.
    names: Vec<String>,
    state: Lex,
    column: usize,
    after_cr: bool,
    /// Bytes of the current field's value so far, and whether they are a
    /// prefix of the marker.
    value_len: usize,
    marker_prefix: bool,
    /// 1-based data record, for the error.
    record: u64,
}

impl Lexer {
    fn value(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let marker = NULL_MARKER.as_bytes();
        self.marker_prefix &=
            marker.get(self.value_len..self.value_len + bytes.len()) == Some(bytes);
        self.value_len += bytes.len();
        out.extend_from_slice(bytes);
    }

    /// Ends a field that had a value (not a null); refuses the marker.
    fn end_value(&mut self) -> io::Result<()> {
        let is_marker = self.marker_prefix && self.value_len == NULL_MARKER.len();
        self.value_len = 0;
        self.marker_prefix = true;
        if !is_marker {
            return Ok(());
        }
        let column = self.names.get(self.column).map_or("?", String::as_str);
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "record {}, column \"{column}\": the value U+FDD0 is reserved \
                 (it marks a null while CSV is read)",
                self.record
            ),
        ))
    }

    /// A delimiter or line break after a field.
    fn separator(&mut self, b: u8, out: &mut Vec<u8>) {
        out.push(b);
        self.state = Lex::FieldStart;
        if b == b',' {
            self.column += 1;
        } else {
            self.column = 0;
            self.record += 1;
            self.after_cr = b == b'\r';
        }
    }

    /// `""` just ended: an empty string, or a null where none can be.
    fn empty_quoted(&self, out: &mut Vec<u8>) {
        if self.holds_empty.get(self.column).copied().unwrap_or(false) {
            out.extend_from_slice(b"\"\"");
        } else {
            out.extend_from_slice(NULL_MARKER.as_bytes());
        }
    }

    /// At a field's start, with `b` its first byte. Returns whether `b`
    /// was consumed (else it is the value's first byte).
    fn field_start(&mut self, b: u8, out: &mut Vec<u8>) -> bool {
        let crlf = self.after_cr && b == b'\n';
        self.after_cr = false;
        match b {
            b'\n' if crlf => out.push(b),
            b'\n' | b'\r' if self.column == 0 && self.holds_empty.len() != 1 => {
                // A blank line between records: arrow skips it.
                out.push(b);
                self.after_cr = b == b'\r';
            }
            b',' | b'\n' | b'\r' => {
                out.extend_from_slice(NULL_MARKER.as_bytes());
                self.separator(b, out);
            }
            b'"' => self.state = Lex::OpenQuote,
            _ => {
                self.state = Lex::Unquoted;
                return false;
            }
        }
        true
    }

    /// The byte after `""` at a field's start.
    fn after_empty_quotes(&mut self, b: u8, out: &mut Vec<u8>) -> bool {
        match b {
            b',' | b'\n' | b'\r' => {
                self.empty_quoted(out);
                self.separator(b, out);
                true
            }
            b'"' => {
                // `"""`: the value starts with an escaped quote.
                out.push(b'"');
                self.value(b"\"", out);
                out.push(b'"');
                self.state = Lex::Quoted;
                true
            }
            _ => {
                // `""x`: arrow's tokenizer reads x on; so do we.
                out.extend_from_slice(b"\"\"");
                self.state = Lex::Unquoted;
                false
            }
        }
    }

    /// The byte after a quote inside a quoted value: an escaped quote, the
    /// field's end, or more of the value.
    fn after_closing_quote(&mut self, b: u8, out: &mut Vec<u8>) -> io::Result<bool> {
        out.push(b'"');
        Ok(match b {
            b'"' => {
                self.value(b"\"", out);
                self.state = Lex::Quoted;
                true
            }
            b',' | b'\n' | b'\r' => {
                self.end_value()?;
                self.separator(b, out);
                true
            }
            _ => {
                self.state = Lex::Unquoted;
                false
            }
        })
    }

    /// Processes `input`, appending the marked bytes to `out`.
    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            let consumed = match self.state {
                Lex::FieldStart => self.field_start(b, out),
                Lex::Unquoted => {
                    let run = input[i..]
                        .iter()
                        .position(|&c| matches!(c, b',' | b'\n' | b'\r'))
                        .unwrap_or(input.len() - i);
                    self.value(&input[i..i + run], out);
                    i += run;
                    let Some(&sep) = input.get(i) else {
                        return Ok(());
                    };
                    self.end_value()?;
                    self.separator(sep, out);
                    true
                }
                Lex::OpenQuote if b == b'"' => {
                    self.state = Lex::EmptyQuoted;
                    true
                }
                Lex::OpenQuote => {
                    out.push(b'"');
                    self.state = Lex::Quoted;
                    false
                }
                Lex::EmptyQuoted => self.after_empty_quotes(b, out),
                Lex::Quoted => {
                    let run = input[i..]
                        .iter()
                        .position(|&c| c == b'"')
                        .unwrap_or(input.len() - i);
                    self.value(&input[i..i + run], out);
                    i += run;
                    if i == input.len() {
                        return Ok(());
                    }
                    self.state = Lex::QuotedQuote;
                    true
                }
                Lex::QuotedQuote => self.after_closing_quote(b, out)?,
            };
            if consumed {
                i += 1;
            }
        }
        Ok(())
    }

    /// The input ended: closes the last field.
    fn finish(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        match self.state {
            Lex::FieldStart if self.column > 0 => out.extend_from_slice(NULL_MARKER.as_bytes()),
            Lex::FieldStart | Lex::Quoted => {}
            Lex::Unquoted => self.end_value()?,
            Lex::OpenQuote => out.push(b'"'),
            Lex::EmptyQuoted => self.empty_quoted(out),
            Lex::QuotedQuote => {
                out.push(b'"');
                self.end_value()?;
            }
        }
        self.state = Lex::FieldStart;
        self.column = 0;
        Ok(())
    }
}

/// Rewrites the fields of a CSV body that mean null into [`NULL_MARKER`]
/// (see the module docs); everything else passes through unchanged.
///
/// A field means null when it is empty and unquoted, or `""` in a column
/// whose type cannot hold an empty string, or an empty line in a one-column
/// file. Line breaks are `\n`, `\r\n` or `\r`, as arrow's tokenizer reads.
#[derive(Debug)]
pub(super) struct NullMarking<R> {
    inner: R,
    lexer: Lexer,
    out: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl<R: BufRead> NullMarking<R> {
    /// `holds_empty` and `names` are per column of the file.
    pub(super) fn new(inner: R, holds_empty: Vec<bool>, names: Vec<String>) -> Self {
        Self {
            inner,
            lexer: Lexer {
                holds_empty,
                names,
                state: Lex::FieldStart,
                column: 0,
                after_cr: false,
                value_len: 0,
                marker_prefix: true,
                record: 1,
            },
            out: Vec::new(),
            pos: 0,
            eof: false,
        }
    }

    pub(super) fn into_inner(self) -> R {
        self.inner
    }
}

/// Marks a whole in-memory CSV body (for schema inference).
pub(super) fn mark_all(
    body: &[u8],
    holds_empty: Vec<bool>,
    names: Vec<String>,
) -> io::Result<Vec<u8>> {
    let mut marked = Vec::with_capacity(body.len());
    NullMarking::new(body, holds_empty, names).read_to_end(&mut marked)?;
    Ok(marked)
}

impl<R: BufRead> Read for NullMarking<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for NullMarking<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.out.len() && !self.eof {
            self.out.clear();
            self.pos = 0;
            let chunk = self.inner.fill_buf()?;
            let n = chunk.len();
            if n == 0 {
                self.eof = true;
                self.lexer.finish(&mut self.out)?;
            } else {
                self.lexer.process(chunk, &mut self.out)?;
                self.inner.consume(n);
            }
        }
        Ok(&self.out[self.pos..])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.out.len());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, StringArray};

    use super::*;

    fn mark(body: &str, holds_empty: &[bool]) -> io::Result<String> {
        let names = (0..holds_empty.len()).map(|i| format!("c{i}")).collect();
        let marked = mark_all(body.as_bytes(), holds_empty.to_vec(), names)?;
        Ok(String::from_utf8(marked).unwrap())
    }

    /// The marked text, with the marker shown as `<N>`.
    fn shown(body: &str, holds_empty: &[bool]) -> String {
        mark(body, holds_empty).unwrap().replace(NULL_MARKER, "<N>")
    }

    #[test]
    fn nulls_are_empty_unquoted_fields_and_empty_strings_are_quoted() {
        let batch = RecordBatch::try_from_iter([
            (
                "s",
                Arc::new(StringArray::from(vec![Some(""), None, Some("a,\"b\"")])) as ArrayRef,
            ),
            ("n", Arc::new(Int64Array::from(vec![None, Some(1), None]))),
        ])
        .unwrap();
        let mut rows = CsvRows::new(Vec::new(), &["s", "n"]).unwrap();
        rows.write(&batch).unwrap();
        assert_eq!(
            String::from_utf8(rows.out).unwrap(),
            "s,n\n\"\",\n,1\n\"a,\"\"b\"\"\",\n"
        );
    }

    #[test]
    fn one_column_nulls_are_empty_lines_and_names_are_quoted() {
        let batch = RecordBatch::try_from_iter([(
            "line\nbreak",
            Arc::new(StringArray::from(vec![None, Some("")])) as ArrayRef,
        )])
        .unwrap();
        let mut rows = CsvRows::new(Vec::new(), &["line\nbreak"]).unwrap();
        rows.write(&batch).unwrap();
        assert_eq!(
            String::from_utf8(rows.out).unwrap(),
            "\"line\nbreak\"\n\n\"\"\n"
        );
    }

    #[test]
    fn the_marker_itself_is_refused_when_written() {
        let batch = RecordBatch::try_from_iter([(
            "s",
            Arc::new(StringArray::from(vec!["ok", NULL_MARKER])) as ArrayRef,
        )])
        .unwrap();
        let mut rows = CsvRows::new(Vec::new(), &["s"]).unwrap();
        assert!(matches!(
            rows.write(&batch),
            Err(RowError::Marker { column: 0 })
        ));
    }

    #[test]
    fn empty_unquoted_fields_are_nulls_everywhere() {
        assert_eq!(shown(",\n", &[true, false]), "<N>,<N>\n");
        assert_eq!(shown("a,\r\n,b", &[true, true]), "a,<N>\r\n<N>,b");
        // The last field of the input, with no line break after it.
        assert_eq!(shown("a,", &[true, true]), "a,<N>");
    }

    #[test]
    fn quoted_empty_is_a_string_only_where_a_string_can_be() {
        assert_eq!(shown("\"\",\"\"\n", &[true, false]), "\"\",<N>\n");
        assert_eq!(shown("\"\"", &[true]), "\"\"");
        assert_eq!(shown("\"\"", &[false]), "<N>");
    }

    #[test]
    fn quoted_values_pass_through_unchanged() {
        let body = "\"\"\"q\"\"\",\"a,b\nc\"\n\"x\"\"\",\"\"\"\"\n";
        assert_eq!(shown(body, &[true, true]), body);
    }

    #[test]
    fn blank_lines_are_null_rows_only_in_one_column_files() {
        assert_eq!(shown("a\n\nb\n", &[true]), "a\n<N>\nb\n");
        assert_eq!(shown("a\r\n\r\nb\r\n", &[true]), "a\r\n<N>\r\nb\r\n");
        // With more columns arrow skips a blank line; it stays blank.
        assert_eq!(shown("a,b\n\nc,d\n", &[true, true]), "a,b\n\nc,d\n");
    }

    #[test]
    fn a_field_holding_the_marker_is_refused_when_read() {
        let body = format!("ok,x\n\"{NULL_MARKER}\",y\n");
        let err = mark(&body, &[true, true]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("record 2, column \"c0\""), "{err}");
        // A value that merely contains it is a value.
        let body = format!("a{NULL_MARKER},{NULL_MARKER}b\n");
        assert_eq!(mark(&body, &[true, true]).unwrap(), body);
    }

    #[test]
    fn marking_is_the_same_whatever_the_chunking() {
        let body = "\"\",,\"a\"\"b\",\r\n\"\"\"\",x,\"\",\n";
        let whole = shown(body, &[true, false, true, true]);
        // BufReader with a 1-byte buffer hands the lexer one byte at a time.
        let reader = io::BufReader::with_capacity(1, body.as_bytes());
        let names = (0..4).map(|i| format!("c{i}")).collect();
        let mut marked = String::new();
        NullMarking::new(reader, vec![true, false, true, true], names)
            .read_to_string(&mut marked)
            .unwrap();
        assert_eq!(marked.replace(NULL_MARKER, "<N>"), whole);
        assert_eq!(whole, "\"\",<N>,\"a\"\"b\",<N>\r\n\"\"\"\",x,\"\",<N>\n");
    }

    #[test]
    fn a_header_may_hold_a_quoted_line_break() {
        let mut input = io::Cursor::new(b"\"a\nb\",c\n1,2\n".to_vec());
        let header = read_header(&mut input, 100).unwrap().unwrap();
        assert_eq!(header, b"\"a\nb\",c\n");
        let mut rest = String::new();
        input.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "1,2\n");
        let mut long = io::Cursor::new(b"\"abcdefgh".to_vec());
        assert!(read_header(&mut long, 4).unwrap().is_none());
    }
}
