//! The sweep's summary, rewritten by rank 0 after every trial: `<run.dir>/sweep.jsonl` (one
//! JSON object per trial), `sweep.csv` and `sweep.md` (the same as tables), the best trial by
//! `--metric` / `--mode` marked. A trial's figures are read from its own `metrics.jsonl`, so a
//! trial finished by an earlier run of the sweep reports what it reported then.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::template::python_str;
use crate::error::{Error, Result};

/// Where a trial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Finished (now, or by an earlier run of the sweep: its `final/` exists).
    Ok,
    /// Its run failed; the message is in `error`.
    Failed,
    /// The sweep was stopped (SIGTERM, the launcher's STOP) during this trial, after a
    /// checkpoint: rerunning the sweep resumes it.
    Stopped,
    /// Not run yet.
    Pending,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Stopped => "stopped",
            Status::Pending => "pending",
        }
    }
}

/// Whether the best trial has the smallest or the largest `--metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Min,
    Max,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode> {
        match s {
            "min" => Ok(Mode::Min),
            "max" => Ok(Mode::Max),
            other => Err(Error::Input(format!("--mode {other}: expected min or max"))),
        }
    }
}

/// One trial's row.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    /// The trial's grid values, as written.
    pub values: Vec<(String, toml::Value)>,
    pub status: Status,
    /// Optimizer steps trained (its last metrics row).
    pub steps: Option<u64>,
    /// Training time in seconds, over all its runs (`elapsed_s` of its last step).
    pub wall_s: Option<f64>,
    /// The train loss of its last step.
    pub loss: Option<f64>,
    /// Its last evaluation: val_loss, val_ppl, accuracy, … (every number of the row but `step`).
    pub metrics: BTreeMap<String, f64>,
    pub run_dir: PathBuf,
    pub error: Option<String>,
}

impl Row {
    /// A trial in `run_dir` with `status`, its figures read from its metrics.jsonl (none when it
    /// has none, or is pending).
    pub fn read(name: &str, values: &[(String, toml::Value)], run_dir: &Path, status: Status, error: Option<String>) -> Row {
        let mut row = Row { name: name.into(), values: values.to_vec(), status, steps: None, wall_s: None, loss: None, metrics: BTreeMap::new(), run_dir: run_dir.into(), error };
        if status == Status::Pending {
            return row;
        }
        let Ok(text) = std::fs::read_to_string(run_dir.join("metrics.jsonl")) else { return row };
        for v in text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
            if v.get("loss").is_some() {
                row.steps = v["step"].as_u64();
                row.loss = v["loss"].as_f64();
                row.wall_s = v["elapsed_s"].as_f64();
            } else if v.get("val_loss").is_some() {
                let numbers = v.as_object().into_iter().flatten().filter(|(k, _)| *k != "step");
                row.metrics = numbers.filter_map(|(k, x)| Some((k.clone(), x.as_f64()?))).collect();
            }
        }
        row
    }

    /// `metric` of this row: the final train loss for `loss`, else its last evaluation's.
    pub fn value(&self, metric: &str) -> Option<f64> {
        let v = if metric == "loss" { self.loss } else { self.metrics.get(metric).copied() };
        v.filter(|v| v.is_finite())
    }

    fn to_json(&self, best: bool) -> Value {
        let values: serde_json::Map<String, Value> =
            self.values.iter().map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or(Value::Null))).collect();
        json!({
            "name": self.name, "values": values, "status": self.status.as_str(), "steps": self.steps,
            "wall_s": self.wall_s, "loss": self.loss, "metrics": self.metrics, "best": best,
            "run_dir": self.run_dir.display().to_string(), "error": self.error,
        })
    }
}

/// The best finished trial by `metric` (the first of equals), if any has it.
pub fn best(rows: &[Row], metric: &str, mode: Mode) -> Option<usize> {
    let candidates = rows.iter().enumerate().filter(|(_, r)| r.status == Status::Ok).filter_map(|(i, r)| Some((i, r.value(metric)?)));
    candidates.fold(None, |acc: Option<(usize, f64)>, (i, v)| match acc {
        Some((_, b)) if (mode == Mode::Min && v >= b) || (mode == Mode::Max && v <= b) => acc,
        _ => Some((i, v)),
    })
    .map(|(i, _)| i)
}

/// Every metric name the rows have, sorted.
fn metric_names(rows: &[Row]) -> Vec<String> {
    rows.iter().flat_map(|r| r.metrics.keys().cloned()).collect::<BTreeSet<_>>().into_iter().collect()
}

/// Rewrites `<dir>/sweep.jsonl`, `sweep.csv` and `sweep.md` (each atomically); returns the
/// markdown table.
pub fn write(dir: &Path, rows: &[Row], metric: &str, mode: Mode) -> Result<String> {
    let best = best(rows, metric, mode);
    let jsonl: String = rows.iter().enumerate().map(|(i, r)| format!("{}\n", r.to_json(best == Some(i)))).collect();
    crate::fsutil::write_atomic(&dir.join("sweep.jsonl"), jsonl.as_bytes())?;
    crate::fsutil::write_atomic(&dir.join("sweep.csv"), &csv(rows, best)?)?;
    let md = markdown(rows, best, metric, mode);
    crate::fsutil::write_atomic(&dir.join("sweep.md"), md.as_bytes())?;
    Ok(md)
}

fn keys(rows: &[Row]) -> Vec<String> {
    rows.first().map(|r| r.values.iter().map(|(k, _)| k.clone()).collect()).unwrap_or_default()
}

fn csv(rows: &[Row], best: Option<usize>) -> Result<Vec<u8>> {
    let (keys, metrics) = (keys(rows), metric_names(rows));
    let mut w = csv::Writer::from_writer(Vec::new());
    let num = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let mut header: Vec<String> = vec!["name".into()];
    header.extend(keys.iter().cloned());
    header.extend(["status", "steps", "wall_s", "loss"].map(String::from));
    header.extend(metrics.iter().cloned());
    header.extend(["best", "run_dir", "error"].map(String::from));
    let csv_err = |e: csv::Error| Error::Input(format!("sweep.csv: {e}"));
    w.write_record(&header).map_err(csv_err)?;
    for (i, r) in rows.iter().enumerate() {
        let mut rec = vec![r.name.clone()];
        rec.extend(r.values.iter().map(|(_, v)| python_str(v)));
        rec.extend([r.status.as_str().to_string(), r.steps.map(|s| s.to_string()).unwrap_or_default(), num(r.wall_s), num(r.loss)]);
        rec.extend(metrics.iter().map(|m| num(r.metrics.get(m).copied())));
        rec.extend([(best == Some(i)).to_string(), r.run_dir.display().to_string(), r.error.clone().unwrap_or_default()]);
        w.write_record(&rec).map_err(csv_err)?;
    }
    w.into_inner().map_err(|e| Error::Input(format!("sweep.csv: {e}")))
}

/// The rows as a markdown table, the best one marked `*`.
pub fn markdown(rows: &[Row], best: Option<usize>, metric: &str, mode: Mode) -> String {
    let (keys, metrics) = (keys(rows), metric_names(rows));
    let with_errors = rows.iter().any(|r| r.error.is_some());
    let cell = |s: String| s.replace('|', "\\|").replace('\n', " ");
    let num = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
    let mut header: Vec<String> = vec!["best".into(), "name".into()];
    header.extend(keys.iter().cloned());
    header.extend(["status", "steps", "loss"].map(String::from));
    header.extend(metrics.iter().cloned());
    header.push("wall_s".into());
    if with_errors {
        header.push("error".into());
    }
    let mut out = format!("| {} |\n|{}\n", header.join(" | "), "---|".repeat(header.len()));
    for (i, r) in rows.iter().enumerate() {
        let mut c = vec![if best == Some(i) { "*".to_string() } else { String::new() }, r.name.clone()];
        c.extend(r.values.iter().map(|(_, v)| python_str(v)));
        c.extend([r.status.as_str().to_string(), r.steps.map(|s| s.to_string()).unwrap_or_default(), num(r.loss)]);
        c.extend(metrics.iter().map(|m| num(r.metrics.get(m).copied())));
        c.push(r.wall_s.map(|v| format!("{v:.1}")).unwrap_or_default());
        if with_errors {
            c.push(r.error.clone().unwrap_or_default());
        }
        out.push_str(&format!("| {} |\n", c.into_iter().map(cell).collect::<Vec<_>>().join(" | ")));
    }
    let mode = if mode == Mode::Min { "lowest" } else { "highest" };
    match best {
        Some(i) => out.push_str(&format!("\nbest ({mode} {metric}, marked *): {}\n", rows[i].name)),
        None => out.push_str(&format!("\nno finished trial has {metric}: no best\n")),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, status: Status, val: Option<f64>) -> Row {
        let mut r = Row::read(name, &[("train.lr".into(), toml::Value::Float(1e-4))], Path::new("/nonexistent"), status, None);
        if let Some(v) = val {
            r.metrics.insert("val_loss".into(), v);
        }
        r
    }

    #[test]
    fn the_best_is_the_finished_trial_with_the_extreme_metric() {
        let rows = [row("a", Status::Ok, Some(2.0)), row("b", Status::Ok, Some(1.5)), row("c", Status::Failed, Some(0.1)), row("d", Status::Ok, Some(1.5)), row("e", Status::Ok, None)];
        assert_eq!(best(&rows, "val_loss", Mode::Min), Some(1), "a failed trial never wins; ties go to the first");
        assert_eq!(best(&rows, "val_loss", Mode::Max), Some(0));
        assert_eq!(best(&rows, "accuracy", Mode::Max), None);
        assert_eq!(best(&[row("x", Status::Ok, Some(f64::NAN))], "val_loss", Mode::Min), None, "NaN is no value");
        assert!(Mode::parse("avg").unwrap_err().to_string().contains("--mode avg: expected min or max"));
    }

    #[test]
    fn the_markdown_table_marks_the_best_and_escapes_cells() {
        let mut rows = vec![row("a", Status::Ok, Some(2.0)), row("b", Status::Failed, None)];
        rows[1].error = Some("bad | thing".into());
        let md = markdown(&rows, Some(0), "val_loss", Mode::Min);
        assert!(md.starts_with("| best | name | train.lr | status | steps | loss | val_loss | wall_s | error |\n|---|"), "{md}");
        assert!(md.contains("| * | a | 0.0001 | ok |  |  | 2.0000 |  |  |"), "{md}");
        assert!(md.contains("| b | 0.0001 | failed |") && md.contains("bad \\| thing"), "{md}");
        assert!(md.ends_with("\nbest (lowest val_loss, marked *): a\n"), "{md}");
    }
}
