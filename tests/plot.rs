//! `rankforge plot` on the fixture's real run: a PNG decoded by Pillow, SVGs parsed for their
//! lines and legend, sweeps, and bad input (one error line, exit 2).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{fails, fixture, ok, python, scratch};

/// The tab10 colours of the first series: the lines' strokes in the SVG and pixels in a PNG.
const BLUE: &str = "#1F77B4";
const ORANGE: &str = "#FF7F0E";
const GREEN: &str = "#2CA02C";
const RED: &str = "#D62728";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Rows of the fixture run's metrics.jsonl that have `key`.
fn rows_with(key: &str) -> usize {
    let text = std::fs::read_to_string(fixture().run.join("metrics.jsonl")).unwrap();
    text.lines().filter(|l| serde_json::from_str::<serde_json::Value>(l).unwrap().get(key).is_some()).count()
}

/// A copy of the fixture run's metrics.jsonl in `dir` (a run directory as `plot` reads it).
fn copy_run(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(fixture().run.join("metrics.jsonl"), dir.join("metrics.jsonl")).unwrap();
    dir.to_path_buf()
}

/// The SVG's series lines: (stroke colour, number of points) of each 2-pixel polyline (the
/// series and their legend samples; axes and ticks are 1 pixel).
fn lines(svg: &str) -> Vec<(String, usize)> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(tag[at..at + tag[at..].find('"')?].to_string())
    };
    svg.split("<polyline").skip(1).map(|t| &t[..t.find("/>").unwrap()]).filter(|t| attr(t, "stroke-width").as_deref() == Some("2")).map(|t| (attr(t, "stroke").unwrap(), attr(t, "points").unwrap().split_whitespace().count())).collect()
}

/// The texts of the SVG (legend entries, labels).
fn texts(svg: &str) -> Vec<String> {
    svg.split("<text").skip(1).map(|t| t[t.find('>').unwrap() + 1..t.find("</text>").unwrap()].trim().to_string()).collect()
}

#[test]
fn a_png_of_the_fixture_run_is_a_valid_picture_of_the_size_asked_with_its_curves() {
    let dir = scratch("plot-png");
    let out = dir.join("x.png");
    let printed = ok(&["plot", s(&fixture().run), "--out", s(&out), "--width", "800", "--height", "500"]);
    assert_eq!(printed.trim(), s(&out), "prints the picture's path");
    let check = r#"
import json, sys
from PIL import Image
img = Image.open(sys.argv[1]); fmt = img.format; img.verify()
img = Image.open(sys.argv[1]); img.load()
px = list(img.convert("RGB").getdata())
print(json.dumps({"format": fmt, "mode": img.mode, "size": list(img.size),
    "not_white": sum(p != (255, 255, 255) for p in px) / len(px),
    "blue": sum(p == (31, 119, 180) for p in px), "orange": sum(p == (255, 127, 14) for p in px)}))
"#;
    let run = Command::new(python()).args(["-c", check, s(&out)]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["format"], "PNG", "{v}");
    assert_eq!(v["mode"], "RGB", "{v}");
    assert_eq!(v["size"], serde_json::json!([800, 500]), "{v}");
    let not_white = v["not_white"].as_f64().unwrap();
    assert!((0.01..0.5).contains(&not_white), "axes, text and lines on a white ground: {v}");
    assert!(v["blue"].as_u64().unwrap() >= 500, "the loss line (tab10 blue) across the plot: {v}");
    assert!(v["orange"].as_u64().unwrap() >= 50, "the val_loss line and its markers (tab10 orange): {v}");
}

#[test]
fn an_svg_of_two_runs_and_two_metrics_has_four_named_lines() {
    let dir = scratch("plot-svg");
    // Two runs named alike: the legend tells them apart by their paths below the common parent.
    let (a, b) = (copy_run(&dir.join("a/run")), copy_run(&dir.join("b/run")));
    let out = dir.join("both.svg");
    ok(&["plot", s(&a), s(&b), "--metric", "loss,val_loss", "--out", s(&out)]);
    let svg = std::fs::read_to_string(&out).unwrap();
    let texts = texts(&svg);
    for name in ["a/run loss", "a/run val_loss", "b/run loss", "b/run val_loss"] {
        assert_eq!(texts.iter().filter(|t| *t == name).count(), 1, "legend entry {name:?} in {texts:?}");
    }
    let (losses, evals) = (rows_with("loss"), rows_with("val_loss"));
    assert!(losses > 10 && evals >= 2, "the fixture trains and evaluates: {losses} {evals}");
    let lines = lines(&svg);
    assert_eq!(lines.len(), 8, "4 series and 4 legend samples: {lines:?}");
    for (color, points) in [(BLUE, losses), (ORANGE, evals), (GREEN, losses), (RED, evals)] {
        let mut of_color: Vec<usize> = lines.iter().filter(|(c, _)| c == color).map(|(_, n)| *n).collect();
        of_color.sort();
        let mut want = vec![2, points];
        want.sort();
        assert_eq!(of_color, want, "{color}: one line of every row's point and its legend sample: {lines:?}");
    }
}

#[test]
fn a_sweep_directory_plots_every_trial_into_its_own_plot_svg() {
    let dir = scratch("plot-sweep");
    let sweep = dir.join("sweep");
    copy_run(&sweep.join("lr0.003"));
    copy_run(&sweep.join("lr0.001"));
    std::fs::create_dir_all(sweep.join("logs")).unwrap();
    std::fs::write(sweep.join("sweep.jsonl"), "{}\n").unwrap();
    let printed = ok(&["plot", s(&sweep), "--metric", "loss"]);
    let out = sweep.join("plot.svg");
    assert_eq!(printed.trim(), s(&out), "one RUN: the picture goes into it");
    let svg = std::fs::read_to_string(&out).unwrap();
    let texts = texts(&svg);
    let legend: Vec<&String> = texts.iter().filter(|t| t.ends_with(" loss")).collect();
    assert_eq!(legend, ["lr0.001 loss", "lr0.003 loss"], "every trial, sorted; logs/ has no metrics: {texts:?}");
    assert_eq!(lines(&svg).len(), 4, "2 lines and 2 legend samples");
}

#[test]
fn bad_plot_input_is_one_error_line_naming_it_with_exit_2() {
    let dir = scratch("plot-bad");
    let run = s(&fixture().run);
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let line = fails(&["plot", s(&empty), "--out", s(&dir.join("e.svg"))]);
    assert!(line.contains(&format!("{}/metrics.jsonl", empty.display())) && line.contains("not a run directory"), "{line}");
    let line = fails(&["plot", s(&dir.join("missing")), "--out", s(&dir.join("m.svg"))]);
    assert!(line.contains("missing/metrics.jsonl") && line.contains("no such directory"), "{line}");
    let file = fixture().run.join("metrics.jsonl");
    let line = fails(&["plot", s(&file), "--out", s(&dir.join("f.svg"))]);
    assert!(line.contains("metrics.jsonl/metrics.jsonl") && line.contains("is not a directory"), "{line}");
    let line = fails(&["plot", run, "--metric", "loss,bogus", "--out", s(&dir.join("b.svg"))]);
    assert!(line.contains("--metric bogus") && line.contains("metrics.jsonl"), "{line}");
    assert!(line.contains("the metrics there: ") && line.contains("grad_norm") && line.contains("val_loss"), "lists the keys that exist: {line}");
    let line = fails(&["plot", run, "--out", s(&dir.join("x.jpg"))]);
    assert!(line.contains("x.jpg") && line.contains("`.jpg`") && line.contains(".svg or .png"), "{line}");
    let line = fails(&["plot", run, run, "--metric", "loss"]);
    assert!(line.contains("--out") && line.contains("2 runs"), "{line}");
    let line = fails(&["plot", run, "--width", "10", "--out", s(&dir.join("w.png"))]);
    assert!(line.contains("--width 10"), "{line}");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["empty"], "nothing written on bad input");
    assert!(!fixture().run.join("plot.svg").exists());
}
