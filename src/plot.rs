//! `rankforge plot`: metrics against step for one or several runs, overlaid with a legend, as an
//! SVG or a PNG (docs/plot.md). A RUN is a run directory (its `metrics.jsonl`) or a sweep's
//! `run.dir`, which stands for every trial in it that has metrics. Each (run, metric) pair with
//! at least one row is one line, named `<run> <metric>`; colours cycle through matplotlib's
//! tab10. Drawing is [`crate::curves`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::curves::{self, Chart, Series};
use crate::error::{Error, IoContext, Result};

/// The command's flags (`rankforge plot --help`).
#[derive(Debug, Clone, clap::Args)]
pub struct PlotArgs {
    /// Run directories (each with a metrics.jsonl) or sweep directories (every trial run in them).
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// The metrics to draw, comma-separated keys of metrics.jsonl rows (loss, val_loss, lr,
    /// grad_norm, val_ppl, accuracy, ...). Default: loss, and val_loss when a run evaluated.
    #[arg(long, value_delimiter = ',', value_name = "KEY,...")]
    pub metric: Vec<String>,
    /// The picture: FILE.svg or FILE.png. Default with one RUN: <RUN>/plot.svg; needed with
    /// several.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Width in pixels (64 to 10000).
    #[arg(long, default_value_t = 800)]
    pub width: u32,
    /// Height in pixels (64 to 10000).
    #[arg(long, default_value_t = 480)]
    pub height: u32,
    /// A logarithmic y axis (values ≤ 0 are left out).
    #[arg(long)]
    pub log_y: bool,
}

/// `rankforge plot`: draws the picture and prints its path.
pub fn run(args: &PlotArgs) -> Result<()> {
    let out = plot(args)?;
    println!("{}", out.display());
    Ok(())
}

/// One run to draw: its directory and its metrics.jsonl rows.
struct Run {
    dir: PathBuf,
    rows: Vec<serde_json::Value>,
}

/// Checks the flags, reads the runs, draws; returns the path written. Bad input (an unsupported
/// `--out`, a RUN without metrics.jsonl, a metric no row has) fails before anything is written.
pub fn plot(args: &PlotArgs) -> Result<PathBuf> {
    let out = match (&args.out, args.runs.as_slice()) {
        (Some(out), _) => out.clone(),
        (None, [one]) => one.join("plot.svg"),
        (None, _) => return Err(Error::Input(format!("--out FILE.svg|FILE.png is needed to plot {} runs in one picture", args.runs.len()))),
    };
    curves::Format::of(&out)?;
    if out.is_dir() {
        return Err(Error::Input(format!("--out {}: is a directory, expected a .svg or .png file", out.display())));
    }
    for (flag, v) in [("--width", args.width), ("--height", args.height)] {
        if !(64..=10_000).contains(&v) {
            return Err(Error::Input(format!("{flag} {v}: expected 64 to 10000 pixels")));
        }
    }
    let runs = run_dirs(&args.runs)?.into_iter().map(|dir| Ok(Run { rows: curves::read_rows(&dir.join("metrics.jsonl"))?, dir })).collect::<Result<Vec<_>>>()?;
    let metrics = metrics(&runs, &args.metric)?;
    let names = run_names(&runs.iter().map(|r| r.dir.clone()).collect::<Vec<_>>());
    let mut series = Vec::new();
    for (run, name) in runs.iter().zip(&names) {
        for m in &metrics {
            let points = curves::points(&run.rows, m);
            if !points.is_empty() {
                series.push(Series { name: format!("{name} {m}"), points });
            }
        }
    }
    let y_desc = match metrics.as_slice() {
        [one] => one.clone(),
        all if all.iter().all(|m| m.ends_with("loss")) => "loss".into(),
        _ => "value".into(),
    };
    let chart = Chart { caption: metrics.join(", "), y_desc, size: (args.width, args.height), log_y: args.log_y };
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    curves::render(&series, &chart, &out)?;
    Ok(out)
}

/// The run directories the RUN arguments name, each once, in order: a directory with a
/// metrics.jsonl is a run; one without it whose subdirectories have one (a sweep) stands for
/// those, sorted by name; anything else is bad input naming the missing metrics.jsonl.
fn run_dirs(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for arg in args {
        let found = if arg.join("metrics.jsonl").is_file() { vec![arg.clone()] } else { trials(arg) };
        if found.is_empty() {
            let what = if arg.is_dir() {
                "is not a run directory, nor a sweep's with trial runs"
            } else if arg.exists() {
                "is not a directory"
            } else {
                "no such directory"
            };
            return Err(Error::data(arg.join("metrics.jsonl"), format!("not found: {} {what}", arg.display())));
        }
        for dir in found {
            let abs = std::path::absolute(&dir).unwrap_or_else(|_| dir.clone());
            if !out.iter().any(|d| std::path::absolute(d).map(|d| d == abs).unwrap_or(false)) {
                out.push(dir);
            }
        }
    }
    Ok(out)
}

/// The subdirectories of `dir` that hold a metrics.jsonl, sorted (empty when `dir` is not a
/// readable directory).
fn trials(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).filter(|p| p.join("metrics.jsonl").is_file()).collect();
    out.sort();
    out
}

/// The metrics to draw: the requested ones, each of which some row of some run must have, or
/// `loss` (and `val_loss` when a run has it).
fn metrics(runs: &[Run], requested: &[String]) -> Result<Vec<String>> {
    let has = |key: &str| runs.iter().any(|r| !curves::points(&r.rows, key).is_empty());
    let mut wanted: Vec<String> = requested.iter().map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect();
    if wanted.is_empty() {
        wanted.push("loss".into());
        if has("val_loss") {
            wanted.push("val_loss".into());
        }
    }
    let mut seen = BTreeSet::new();
    wanted.retain(|m| seen.insert(m.clone()));
    if let Some(missing) = wanted.iter().find(|m| !has(m)) {
        let keys: BTreeSet<&str> = runs
            .iter()
            .flat_map(|r| r.rows.iter())
            .filter_map(|row| row.as_object())
            .flat_map(|o| o.iter().filter(|(k, v)| v.is_number() && *k != "step").map(|(k, _)| k.as_str()))
            .collect();
        let files = match runs {
            [one] => one.dir.join("metrics.jsonl").display().to_string(),
            _ => format!("the {} runs' metrics.jsonl", runs.len()),
        };
        let keys = if keys.is_empty() { "none".to_string() } else { keys.into_iter().collect::<Vec<_>>().join(", ") };
        return Err(Error::Input(format!("--metric {missing}: no row of {files} has it (step rows with a number under that key); the metrics there: {keys}")));
    }
    Ok(wanted)
}

/// Legend names of the runs: each directory's name, or, when two runs share a name, every
/// run's path relative to their common parent.
fn run_names(dirs: &[PathBuf]) -> Vec<String> {
    let name = |d: &PathBuf| {
        let abs = std::path::absolute(d).unwrap_or_else(|_| d.clone());
        abs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| abs.display().to_string())
    };
    let names: Vec<String> = dirs.iter().map(name).collect();
    if names.iter().collect::<BTreeSet<_>>().len() == names.len() {
        return names;
    }
    let abs: Vec<PathBuf> = dirs.iter().map(|d| std::path::absolute(d).unwrap_or_else(|_| d.clone())).collect();
    let mut common = abs[0].clone();
    while !abs.iter().all(|p| p.starts_with(&common)) {
        if !common.pop() {
            break;
        }
    }
    // Two runs that are the same directory cannot reach here (run_dirs keeps each once), so no
    // relative path is empty.
    abs.iter().map(|p| p.strip_prefix(&common).unwrap_or(p).display().to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_directories_or_their_paths_below_the_common_parent() {
        let names = |ds: &[&str]| run_names(&ds.iter().map(PathBuf::from).collect::<Vec<_>>());
        assert_eq!(names(&["runs/a", "other/b"]), ["a", "b"]);
        assert_eq!(names(&["/r/s1/lr0.1", "/r/s2/lr0.1", "/r/s2/lr0.2"]), ["s1/lr0.1", "s2/lr0.1", "s2/lr0.2"]);
        assert_eq!(names(&["/r/x/run", "/r/x/deep/run"]), ["run", "deep/run"]);
    }

    #[test]
    fn default_metrics_are_loss_and_val_loss_when_present_and_an_unknown_one_lists_the_keys() {
        let run = |rows: &[&str]| Run { dir: PathBuf::from("r"), rows: rows.iter().map(|r| serde_json::from_str(r).unwrap()).collect() };
        let trained = run(&[r#"{"step":1,"loss":2.0,"lr":0.1}"#]);
        assert_eq!(metrics(std::slice::from_ref(&trained), &[]).unwrap(), ["loss"]);
        let evaluated = run(&[r#"{"step":2,"val_loss":2.5,"val_ppl":12.2}"#]);
        assert_eq!(metrics(&[trained, evaluated], &[]).unwrap(), ["loss", "val_loss"]);
        let err = metrics(&[run(&[r#"{"step":1,"loss":2.0,"lr":0.1,"note":"x"}"#])], &["loss".into(), "acc".into()]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert_eq!(err.to_string(), "--metric acc: no row of r/metrics.jsonl has it (step rows with a number under that key); the metrics there: loss, lr");
    }
}
