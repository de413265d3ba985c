//! `<run.dir>/tb/events.out.tfevents.*`: every metrics row as TensorBoard scalars, written by
//! rank 0 beside metrics.jsonl ([`crate::metrics::MetricsWriter`]).
//!
//! An event file is TFRecord framing (`u64` length, masked CRC32C of the length, the data,
//! masked CRC32C of the data) around `tensorboard.Event` protobufs: first
//! `file_version = "brain.Event:2"`, then one event per scalar, as `SummaryWriter.add_scalar`
//! writes them. Tags are the Hugging Face Trainer's (`TensorBoardCallback`): a step row's keys
//! become `train/<key>` (`lr` as `train/learning_rate`), an evaluation row's (one with
//! `val_loss`) `eval/<key without val_>`; values that are not numbers (samples) are skipped.
//!
//! Resume: [`EventWriter::open`] cuts every existing event file back to its events with step
//! `<= keep_upto` (each file replaced atomically, so a crash leaves it old or new, never torn)
//! and the new file starts with `SessionLog(START)` at `keep_upto + 1`, which makes a
//! TensorBoard that is already showing the run purge the superseded steps too.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;
use serde_json::Value;

use crate::error::{IoContext, Result};

/// `tensorflow.Event` (tensorboard/compat/proto/event.proto), the fields rankforge writes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "What", tags = "3, 5, 7")]
    pub what: Option<What>,
    #[prost(message, optional, tag = "10")]
    pub source_metadata: Option<SourceMetadata>,
}

/// `Event.what`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `tensorflow.Summary` (summary.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `Summary.Value` with its `simple_value` (a member of the `value` oneof: written even when 0).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// `tensorflow.SessionLog`; `status` 1 is `START`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `tensorflow.SourceMetadata`: which program wrote the file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SourceMetadata {
    #[prost(string, tag = "1")]
    pub writer: String,
}

const SESSION_START: i32 = 1;
const TB_DIR: &str = "tb";

/// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of TFRecord framing.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

pub fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

/// TFRecord's masked CRC: `((crc >> 15) | (crc << 17)) + 0xa282ead8`.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, `data`, its masked CRC.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// The records of `bytes` as (start, end, data), up to the first torn or damaged one.
pub fn records(bytes: &[u8]) -> Vec<(usize, usize, &[u8])> {
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 16 {
        let len_bytes = &bytes[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        if word(at + 8) != masked_crc32c(len_bytes) || len > (bytes.len() - at - 16) as u64 {
            break;
        }
        let end = at + 16 + len as usize;
        let data = &bytes[at + 12..end - 4];
        if word(end - 4) != masked_crc32c(data) {
            break;
        }
        out.push((at, end, data));
        at = end;
    }
    out
}

/// The TensorBoard tag of metrics key `key` (HF Trainer's names).
pub fn tag(key: &str, eval_row: bool) -> String {
    match (eval_row, key) {
        (true, k) => format!("eval/{}", k.strip_prefix("val_").unwrap_or(k)),
        (false, "lr") => "train/learning_rate".to_string(),
        (false, k) => format!("train/{k}"),
    }
}

/// The scalar events of one metrics row, at `wall_time`: one per numeric key but `step`.
pub fn row_events(row: &Value, wall_time: f64) -> Vec<Event> {
    let (Some(obj), Some(step)) = (row.as_object(), row["step"].as_u64()) else { return Vec::new() };
    let eval_row = obj.contains_key("val_loss");
    obj.iter()
        .filter(|(k, _)| k.as_str() != "step")
        .filter_map(|(k, v)| Some((tag(k, eval_row), v.as_f64()?)))
        .map(|(tag, v)| Event {
            wall_time,
            step: step as i64,
            what: Some(What::Summary(Summary { value: vec![SummaryValue { tag, simple_value: Some(v as f32) }] })),
            source_metadata: None,
        })
        .collect()
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok && end > 0 {
        String::from_utf8_lossy(&buf[..end]).replace('/', "_")
    } else {
        "localhost".to_string()
    }
}

/// The event files of `dir`, sorted by name (the order TensorBoard reads them in).
fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with(".tmp-") {
            std::fs::remove_file(&path).at(&path)?; // a rewrite interrupted by a crash
        } else if name.starts_with("events.out.tfevents.") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Cuts `file` back to its events with step `<= keep_upto` (and drops a torn last record),
/// replacing it atomically when anything goes.
fn truncate_file(file: &Path, keep_upto: u64) -> Result<()> {
    let bytes = std::fs::read(file).at(file)?;
    let mut kept = Vec::with_capacity(bytes.len());
    for (start, end, data) in records(&bytes) {
        if Event::decode(data).is_ok_and(|e| e.step <= keep_upto as i64) {
            kept.extend_from_slice(&bytes[start..end]);
        }
    }
    if kept.len() != bytes.len() {
        crate::fsutil::write_atomic(file, &kept)?;
    }
    Ok(())
}

/// The steps of `<run_dir>/tb`'s event files beyond `keep_upto` dropped (see the module doc);
/// whether there were any files. For a run that no longer writes TensorBoard but has `tb/`.
pub fn truncate(run_dir: &Path, keep_upto: u64) -> Result<bool> {
    let dir = run_dir.join(TB_DIR);
    if !dir.is_dir() {
        return Ok(false);
    }
    let files = event_files(&dir)?;
    for f in &files {
        truncate_file(f, keep_upto)?;
    }
    Ok(!files.is_empty())
}

static WRITERS: AtomicU64 = AtomicU64::new(0);

/// Appends metrics rows to a new event file in `<run.dir>/tb/`, created with the first row.
pub struct EventWriter {
    dir: PathBuf,
    keep_upto: u64,
    /// Earlier event files exist: the new one starts with a purge of the steps after keep_upto.
    resumed: bool,
    file: Option<(File, PathBuf)>,
}

impl EventWriter {
    /// Opens `<run_dir>/tb`, keeping only events with `step <= keep_upto` in existing files.
    pub fn open(run_dir: &Path, keep_upto: u64) -> Result<EventWriter> {
        let resumed = truncate(run_dir, keep_upto)?;
        Ok(EventWriter { dir: run_dir.join(TB_DIR), keep_upto, resumed, file: None })
    }

    /// The event file being written (none before the first row).
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|(_, p)| p.as_path())
    }

    /// Writes `row`'s scalars and flushes.
    pub fn write(&mut self, row: &Value) -> Result<()> {
        let events = row_events(row, now());
        if events.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::new();
        for e in &events {
            bytes.extend(record(&e.encode_to_vec()));
        }
        let (file, path) = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(self.create()?),
        };
        file.write_all(&bytes).at(&*path)?;
        file.flush().at(&*path)
    }

    /// A new file named as TensorBoard's `EventFileWriter` names them
    /// (`events.out.tfevents.<secs>.<host>.<pid>.<n>`), sorting after every existing one, with
    /// its `file_version` event and, after a resume, the `START` that supersedes later steps.
    fn create(&self) -> Result<(File, PathBuf)> {
        std::fs::create_dir_all(&self.dir).at(&self.dir)?;
        let last = event_files(&self.dir)?.pop();
        let (host, pid, n) = (hostname(), std::process::id(), WRITERS.fetch_add(1, Ordering::Relaxed));
        let mut secs = now() as u64;
        let mut path = self.dir.join(format!("events.out.tfevents.{secs:010}.{host}.{pid}.{n}"));
        while last.as_ref().is_some_and(|l| *l >= path) {
            secs += 1; // a resume within the same second as the last file: read after it
            path = self.dir.join(format!("events.out.tfevents.{secs:010}.{host}.{pid}.{n}"));
        }
        let mut file = OpenOptions::new().create_new(true).append(true).open(&path).at(&path)?;
        let wall_time = now();
        let mut head = vec![Event {
            wall_time,
            step: 0,
            what: Some(What::FileVersion("brain.Event:2".into())),
            source_metadata: Some(SourceMetadata { writer: "rankforge".into() }),
        }];
        if self.resumed {
            let start = Some(What::SessionLog(SessionLog { status: SESSION_START }));
            head.push(Event { wall_time, step: self.keep_upto as i64 + 1, what: start, source_metadata: None });
        }
        let bytes: Vec<u8> = head.iter().flat_map(|e| record(&e.encode_to_vec())).collect();
        file.write_all(&bytes).at(&path)?;
        Ok((file, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_its_mask_equal_tensorflows() {
        // The CRC-32C check value (RFC 3720 B.4) and TensorFlow's masking of it
        // (tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c gives 0xc78ab0e5).
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        let crc = 0xe306_9283u32;
        assert_eq!(masked_crc32c(b"123456789"), ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8));
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn records_round_trip_and_stop_at_a_torn_or_damaged_one() {
        let mut bytes = record(b"first");
        bytes.extend(record(b""));
        let two = bytes.len();
        bytes.extend(record(b"third"));
        let got: Vec<&[u8]> = records(&bytes).into_iter().map(|r| r.2).collect();
        assert_eq!(got, vec![&b"first"[..], b"", b"third"]);
        assert_eq!(records(&bytes[..bytes.len() - 1]).len(), 2, "a torn last record is dropped");
        let mut bad = bytes.clone();
        bad[two + 13] ^= 1;
        assert_eq!(records(&bad).last().map(|r| r.1), Some(two), "a damaged record ends the file");
    }

    #[test]
    fn tags_are_the_hf_trainers() {
        assert_eq!(tag("lr", false), "train/learning_rate");
        assert_eq!(tag("grad_norm", false), "train/grad_norm");
        assert_eq!(tag("rewards/chosen", false), "train/rewards/chosen");
        assert_eq!(tag("val_loss", true), "eval/loss");
        assert_eq!(tag("val_rewards/accuracies", true), "eval/rewards/accuracies");
        assert_eq!(tag("accuracy", true), "eval/accuracy");
        let row = serde_json::json!({"step": 3, "val_loss": 0.0, "val_ppl": 1.0, "samples": [{"prompt": "x"}], "f1": null});
        let events = row_events(&row, 5.0);
        let tags: Vec<(String, Option<f32>, i64)> = events
            .iter()
            .map(|e| match &e.what {
                Some(What::Summary(s)) => (s.value[0].tag.clone(), s.value[0].simple_value, e.step),
                other => panic!("not a summary: {other:?}"),
            })
            .collect();
        assert_eq!(tags, vec![("eval/loss".into(), Some(0.0), 3), ("eval/ppl".into(), Some(1.0), 3)]);
        // A zero is still written (oneof presence), or TensorBoard would not see the value.
        assert!(events[0].encode_to_vec().len() > 20);
    }
}
