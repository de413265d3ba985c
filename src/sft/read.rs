//! Reading fine-tuning rows: JSON (an array of objects, or JSON Lines in a `.json` file as
//! `datasets` writes them), JSONL, CSV (header row), Parquet and the Arrow files of a
//! `save_to_disk` directory ([`super::disk`]), from files, folders (sorted, recursive, data
//! files only; a `save_to_disk` folder as `load_from_disk` reads it) and globs. Every row keeps its file and line (or Parquet row) so
//! that a problem names where it is. Field access helpers turn a missing field or a wrong type
//! into a [`RowError::Malformed`] message.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};

/// Where a row is: a line of a text file, or a row of a Parquet file (both 1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    Line(usize),
    Row(usize),
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Line(n) => write!(f, "line {n}"),
            Loc::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// One row: its fields, or why it could not be read (bad JSON, not an object, a CSV row of the
/// wrong width).
#[derive(Debug, Clone)]
pub struct Row {
    pub path: Arc<PathBuf>,
    pub loc: Loc,
    pub fields: std::result::Result<Map<String, Value>, String>,
}

impl Row {
    /// `path: line N: msg` as a data error.
    pub fn error(&self, msg: impl fmt::Display) -> Error {
        Error::data(self.path.as_path(), format!("{}: {msg}", self.loc))
    }
}

const EXTENSIONS: [&str; 6] = ["json", "jsonl", "ndjson", "csv", "parquet", "arrow"];

/// Files named by `paths`: files as given, folders walked (sorted, recursively, hidden entries
/// and non-data files skipped), globs expanded (sorted). `key` names the recipe key.
pub fn expand(paths: &[PathBuf], key: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let text = path.to_string_lossy();
        if !path.exists() && text.contains(['*', '?', '[']) {
            let entries = glob::glob(&text).map_err(|e| Error::data(path, format!("{key}: bad glob pattern: {e}")))?;
            let mut found: Vec<PathBuf> = entries.filter_map(|e| e.ok()).filter(|p| p.is_file()).collect();
            found.sort();
            if found.is_empty() {
                return Err(Error::data(path, format!("{key}: the pattern matches no file")));
            }
            files.extend(found);
        } else if let Some(arrow) = path.is_dir().then(|| super::disk::dataset_files(path, key)).transpose()?.flatten() {
            files.extend(arrow);
        } else if path.is_dir() {
            let before = files.len();
            crate::data::walk_files(path, &mut files, &|p| extension(p).is_some_and(|e| EXTENSIONS.contains(&e.as_str())))?;
            if files.len() == before {
                return Err(Error::data(path, format!("{key}: folder contains no .json, .jsonl, .csv, .parquet or .arrow file, and is no save_to_disk directory")));
            }
        } else {
            std::fs::metadata(path).map_err(|e| Error::data(path, format!("{key}: cannot read: {e}")))?;
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn extension(p: &Path) -> Option<String> {
    p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase())
}

/// All rows of `path`, chosen by its extension.
pub fn read_file(path: &Path) -> Result<Vec<Row>> {
    let shared = Arc::new(path.to_path_buf());
    match extension(path).as_deref() {
        Some("json") => {
            let bytes = std::fs::read(path).at(path)?;
            if bytes.trim_ascii_start().starts_with(b"[") {
                json_array(&utf8_text(&bytes, path)?, &shared)
            } else {
                Ok(json_lines(&bytes, &shared))
            }
        }
        Some("jsonl" | "ndjson") => Ok(json_lines(&std::fs::read(path).at(path)?, &shared)),
        Some("csv") => csv_rows(&shared),
        Some("parquet") => parquet_rows(&shared),
        Some("arrow") => super::disk::arrow_rows(&shared),
        _ => Err(Error::data(path, "unsupported file type: expected .json, .jsonl, .csv, .parquet or .arrow")),
    }
}

fn object(v: Value) -> std::result::Result<Map<String, Value>, String> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(format!("expected a JSON object, found {}", kind(&other))),
    }
}

/// The JSON type of `v`, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Where UTF-8 decoding of a line fails, for messages: "not UTF-8 text (invalid byte 0xff at
/// column 7)".
fn not_utf8(line: &[u8], e: std::str::Utf8Error) -> String {
    let at = e.valid_up_to();
    format!("not UTF-8 text (invalid byte {:#04x} at column {})", line[at], at + 1)
}

/// The whole file as text; a non-UTF-8 byte is an error naming its line and column.
fn utf8_text(bytes: &[u8], path: &Path) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let start = bytes[..at].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        let msg = not_utf8(&bytes[start..], std::str::from_utf8(&bytes[start..]).expect_err("the invalid byte is in this line"));
        Error::data(path, format!("line {line}: {msg}"))
    })
}

/// JSON Lines: one row per non-blank line; a line that is not UTF-8 or not a JSON object is a
/// malformed row at its line.
fn json_lines(bytes: &[u8], path: &Arc<PathBuf>) -> Vec<Row> {
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
        .into_iter()
        .enumerate()
        .map(|(i, line)| (i, line.strip_suffix(b"\r").unwrap_or(line)))
        .filter(|(_, l)| !l.trim_ascii().is_empty())
        .map(|(i, line)| Row {
            path: path.clone(),
            loc: Loc::Line(i + 1),
            fields: std::str::from_utf8(line)
                .map_err(|e| not_utf8(line, e))
                .and_then(|l| serde_json::from_str::<Value>(l).map_err(|e| format!("bad JSON: {e}")))
                .and_then(object),
        })
        .collect()
}

/// A JSON array file: a syntax error is fatal (the file cannot be split into rows); each
/// element is a row located at the line where it starts.
fn json_array(text: &str, path: &Arc<PathBuf>) -> Result<Vec<Row>> {
    let items: Vec<Value> = serde_json::from_str(text).map_err(|e| {
        Error::data(path.as_path(), format!("line {}: bad JSON: {e}", e.line()))
    })?;
    let lines = item_lines(text);
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, v)| Row {
            path: path.clone(),
            loc: Loc::Line(lines.get(i).copied().unwrap_or(1)),
            fields: object(v),
        })
        .collect())
}

/// The line on which each element of the top-level JSON array starts.
fn item_lines(text: &str) -> Vec<usize> {
    let (mut line, mut depth, mut in_str, mut escaped, mut expect) = (1usize, 0usize, false, false, false);
    let mut out = Vec::new();
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        }
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        if depth == 1 && expect && !c.is_whitespace() && c != ']' {
            out.push(line);
            expect = false;
        }
        match c {
            '"' => in_str = true,
            '[' | '{' => {
                depth += 1;
                expect = depth == 1;
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 1 => expect = true,
            _ => {}
        }
    }
    out
}

fn csv_rows(path: &Arc<PathBuf>) -> Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path.as_path())
        .map_err(|e| Error::data(path.as_path(), format!("cannot read CSV: {e}")))?;
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| Error::data(path.as_path(), format!("line 1: bad CSV header: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut rows = Vec::new();
    for record in reader.records() {
        let row = match record {
            Ok(r) => {
                let line = r.position().map_or(0, |p| p.line() as usize);
                let fields = headers.iter().cloned().zip(r.iter().map(|v| Value::String(v.to_string()))).collect();
                Row { path: path.clone(), loc: Loc::Line(line), fields: Ok(fields) }
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                Row { path: path.clone(), loc: Loc::Line(line), fields: Err(format!("bad CSV row: {e}")) }
            }
        };
        rows.push(row);
    }
    Ok(rows)
}

fn parquet_rows(path: &Arc<PathBuf>) -> Result<Vec<Row>> {
    use parquet::file::reader::SerializedFileReader;
    let file = std::fs::File::open(path.as_path()).at(path.as_path())?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| Error::data(path.as_path(), format!("cannot read Parquet: {e}")))?;
    let mut rows = Vec::new();
    for (i, row) in reader.into_iter().enumerate() {
        let row = row.map_err(|e| Error::data(path.as_path(), format!("row {}: cannot read Parquet: {e}", i + 1)))?;
        rows.push(Row { path: path.clone(), loc: Loc::Row(i + 1), fields: object(row.to_json_value()) });
    }
    Ok(rows)
}

/// Why a row gives no example: bad data (skippable) or a fatal error.
pub enum RowError {
    Malformed(String),
    Fatal(Error),
}

impl From<Error> for RowError {
    fn from(e: Error) -> Self {
        RowError::Fatal(e)
    }
}

pub fn field<'a>(row: &'a Map<String, Value>, name: &str) -> std::result::Result<&'a Value, RowError> {
    match row.get(name) {
        None | Some(Value::Null) => Err(RowError::Malformed(format!("missing field \"{name}\""))),
        Some(v) => Ok(v),
    }
}

pub fn req_str<'a>(row: &'a Map<String, Value>, name: &str) -> std::result::Result<&'a str, RowError> {
    let v = field(row, name)?;
    v.as_str().ok_or_else(|| RowError::Malformed(format!("field \"{name}\": expected a string, found {}", kind(v))))
}

pub fn opt_str<'a>(row: &'a Map<String, Value>, name: &str) -> std::result::Result<Option<&'a str>, RowError> {
    match row.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(RowError::Malformed(format!("field \"{name}\": expected a string, found {}", kind(v)))),
    }
}

/// A list of messages: an array (or, from CSV, a string holding one in JSON).
pub fn messages(v: &Value, name: &str) -> std::result::Result<Vec<Value>, RowError> {
    match v {
        Value::Array(items) => messages_slice(items, name),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Array(items)) => messages_slice(&items, name),
            _ => Err(RowError::Malformed(format!("field \"{name}\": expected a list of messages, found a string"))),
        },
        other => Err(RowError::Malformed(format!("field \"{name}\": expected a list of messages, found {}", kind(other)))),
    }
}

pub fn messages_slice(items: &[Value], name: &str) -> std::result::Result<Vec<Value>, RowError> {
    if items.is_empty() {
        return Err(RowError::Malformed(format!("field \"{name}\": the conversation is empty")));
    }
    for (i, m) in items.iter().enumerate() {
        let bad = |what: &str| RowError::Malformed(format!("field \"{name}\": message {i}: {what}"));
        let obj = m.as_object().ok_or_else(|| bad(&format!("expected an object, found {}", kind(m))))?;
        if !obj.get("role").is_some_and(Value::is_string) {
            return Err(bad("missing string \"role\""));
        }
        if !obj.contains_key("content") {
            return Err(bad("missing \"content\""));
        }
    }
    Ok(items.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_items_are_located() {
        let text = "[\n  {\"a\": \"x,[y\\\"\"},\n  {\"a\": [1,\n 2]}, {\"b\": 3}\n]";
        assert_eq!(item_lines(text), vec![2, 3, 4]);
        assert_eq!(item_lines("[]"), Vec::<usize>::new());
    }

    #[test]
    fn json_lines_report_bad_rows() {
        let path = Arc::new(PathBuf::from("d.jsonl"));
        let rows = json_lines(b"{\"a\": 1}\n\n[1]\n{oops\n{\"a\": \"caf\xe9\"}\r\n", &path);
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[3].loc, Loc::Line(5));
        assert_eq!(rows[3].fields.as_ref().unwrap_err(), "not UTF-8 text (invalid byte 0xe9 at column 11)");
        assert!(rows[0].fields.is_ok());
        assert_eq!(rows[1].loc, Loc::Line(3));
        assert_eq!(rows[1].fields.as_ref().unwrap_err(), "expected a JSON object, found an array");
        assert!(rows[2].error(rows[2].fields.as_ref().unwrap_err()).to_string().starts_with("d.jsonl: line 4: bad JSON"));
    }

    #[test]
    fn non_utf8_array_files_name_the_line() {
        let e = utf8_text(b"[\n  {\"a\": 1},\n  {\"a\": \"\xff\"}\n]", Path::new("d.json")).unwrap_err().to_string();
        assert_eq!(e, "d.json: line 3: not UTF-8 text (invalid byte 0xff at column 10)");
    }
}
