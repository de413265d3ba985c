//! `<run.dir>/metrics.jsonl`: one JSON object per optimizer step and per evaluation, written by
//! rank 0. On resume, rows past the checkpoint's step (written before a crash) are dropped, so
//! the file always reads as one uninterrupted run. Each row also goes to TensorBoard
//! (`<run.dir>/tb/`, [`crate::tensorboard`]) unless `[log] tensorboard = false`, with the same
//! rule on resume.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::tensorboard::EventWriter;

pub struct MetricsWriter {
    file: File,
    path: PathBuf,
    tensorboard: Option<EventWriter>,
}

impl MetricsWriter {
    /// Opens `run_dir/metrics.jsonl` for appending, keeping only rows with `step <= keep_upto`,
    /// and with `tensorboard` the event files of `run_dir/tb/` (an existing `tb/` is cut back
    /// to `keep_upto` either way).
    pub fn open(run_dir: &Path, keep_upto: u64, tensorboard: bool) -> Result<MetricsWriter> {
        let path = run_dir.join("metrics.jsonl");
        if path.exists() {
            let f = File::open(&path).at(&path)?;
            let mut kept = String::new();
            for line in BufReader::new(f).lines() {
                let line = line.at(&path)?;
                let step = serde_json::from_str::<serde_json::Value>(&line).ok().and_then(|v| v["step"].as_u64());
                if step.is_some_and(|s| s <= keep_upto) {
                    kept.push_str(&line);
                    kept.push('\n');
                }
            }
            crate::fsutil::write_atomic(&path, kept.as_bytes())?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).at(&path)?;
        let tensorboard = match tensorboard {
            true => Some(EventWriter::open(run_dir, keep_upto)?),
            false => {
                crate::tensorboard::truncate(run_dir, keep_upto)?;
                None
            }
        };
        Ok(MetricsWriter { file, path, tensorboard })
    }

    /// Appends `row` to metrics.jsonl and its scalars to the event file, flushing both.
    pub fn write(&mut self, row: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{row}").at(&self.path)?;
        self.file.flush().at(&self.path)?;
        match &mut self.tensorboard {
            Some(tb) => tb.write(row),
            None => Ok(()),
        }
    }
}

/// Reads the step rows (those with a `loss`) of a metrics file, for tests and tools.
pub fn read_losses(path: &Path) -> Result<Vec<(u64, f64)>> {
    let text = std::fs::read_to_string(path).at(path)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()?)))
        .collect())
}
