//! `<run.dir>/metrics.jsonl`: one JSON object per optimizer step and per evaluation, written by
//! rank 0. On resume, rows past the checkpoint's step (written before a crash) are dropped, so
//! the file always reads as one uninterrupted run.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

pub struct MetricsWriter {
    file: File,
    path: PathBuf,
}

impl MetricsWriter {
    /// Opens `run_dir/metrics.jsonl` for appending, keeping only rows with `step <= keep_upto`.
    pub fn open(run_dir: &Path, keep_upto: u64) -> Result<MetricsWriter> {
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
        Ok(MetricsWriter { file, path })
    }

    pub fn write(&mut self, row: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{row}").at(&self.path)?;
        self.file.flush().at(&self.path)
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
