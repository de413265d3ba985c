//! Training curves: metrics against step, drawn with `plotters` (the export step writes
//! `<run.dir>/curves.svg`, copied beside the model card in `final/`; `rankforge plot` draws any
//! runs' metrics, [`crate::plot`]). [`from_metrics`] reads the loss curves of a run's
//! metrics.jsonl, [`render_svg`] draws the card's picture and [`render`] any set of series as an
//! SVG or a PNG. Text is measured (and, in a PNG, drawn) with the bundled DejaVu Sans through
//! `ab_glyph`; the SVG names the viewer's sans-serif font. No system font or image library.

use std::path::Path;

use plotters::coord::combinators::LogCoord;
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, IoContext, Result};

/// One line of a plot: `(x, y)` points in order of x; non-finite points are skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// The rows of a metrics.jsonl; a line that is not JSON (a torn last line, Python's `NaN`) is
/// skipped.
pub fn read_rows(metrics: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(metrics).at(metrics)?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// The `(step, value)` points of the rows that have a number under `key`.
pub fn points(rows: &[serde_json::Value], key: &str) -> Vec<(f64, f64)> {
    rows.iter().filter_map(|r| Some((r["step"].as_u64()? as f64, r.get(key)?.as_f64()?))).collect()
}

/// The loss curves of a run: `train loss` (each step row's `loss`) and, when the run evaluated,
/// `eval loss` (each evaluation row's `val_loss`), against `step`.
pub fn from_metrics(metrics: &Path) -> Result<Vec<Series>> {
    let rows = read_rows(metrics)?;
    let mut out = vec![Series { name: "train loss".into(), points: points(&rows, "loss") }];
    let eval = points(&rows, "val_loss");
    if !eval.is_empty() {
        out.push(Series { name: "eval loss".into(), points: eval });
    }
    Ok(out)
}

/// Line colours, in series order, cycling: matplotlib's `tab10`.
pub const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// What a picture shows besides its series.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub caption: String,
    pub y_desc: String,
    /// Width and height in pixels.
    pub size: (u32, u32),
    /// A logarithmic y axis (points with y ≤ 0 are left out, as matplotlib masks them).
    pub log_y: bool,
}

impl Chart {
    /// The model card's training curve.
    pub fn card() -> Self {
        Chart { caption: "training curve".into(), y_desc: "loss".into(), size: (800, 480), log_y: false }
    }
}

/// The picture formats [`render`] writes, by the output's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    /// `.svg` or `.png` (any case); anything else is bad input naming the path.
    pub fn of(out: &Path) -> Result<Self> {
        let ext = out.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("svg") => Ok(Format::Svg),
            Some("png") => Ok(Format::Png),
            other => Err(Error::Input(format!(
                "--out {}: unsupported picture format {}, expected a .svg or .png file",
                out.display(),
                other.map(|e| format!("`.{e}`")).unwrap_or_else(|| "(no extension)".into())
            ))),
        }
    }
}

/// Draws `series` (x = step) into the SVG file `out` as the model card shows it, written
/// atomically. Series of few points also get a marker at each point, so that a curve of one
/// evaluation still shows.
pub fn render_svg(series: &[Series], out: &Path) -> Result<()> {
    render(series, &Chart::card(), out)
}

/// Draws `series` into `out`, an SVG or a PNG by its extension ([`Format::of`]), written
/// atomically.
pub fn render(series: &[Series], chart: &Chart, out: &Path) -> Result<()> {
    let failed = |e: Box<dyn std::error::Error>| Error::io(out, std::io::Error::other(format!("drawing the curve: {e}")));
    register_font();
    match Format::of(out)? {
        Format::Svg => {
            let mut svg = String::new();
            draw(SVGBackend::with_string(&mut svg, chart.size).into_drawing_area(), series, chart).map_err(failed)?;
            crate::fsutil::write_atomic(out, svg.as_bytes())
        }
        Format::Png => {
            // The bitmap backend encodes (pure-Rust `image`) into a file named like `out`, so
            // that a failure never leaves a torn picture at `out`.
            let tmp = crate::fsutil::temp_path(out);
            let drawn = draw(BitMapBackend::new(&tmp, chart.size).into_drawing_area(), series, chart).map_err(failed);
            let result = drawn.and_then(|()| std::fs::rename(&tmp, out).at(out));
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        }
    }
}

/// DejaVu Sans, bundled (assets/fonts/, its license beside it): every text plotters lays out is
/// measured with it, and PNGs draw it.
static FONT: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/fonts/DejaVuSans.ttf"));

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bundled file is a valid font: a failure here cannot come from input.
        if plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            tracing::warn!("the bundled DejaVu Sans could not be loaded: pictures will lack text");
        }
    });
}

fn finite(s: &Series, log_y: bool) -> impl Iterator<Item = (f64, f64)> + '_ {
    s.points.iter().copied().filter(move |(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0))
}

/// `lo..hi` padded by 5 %, or a unit range around a single value.
fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    if !(lo.is_finite() && hi.is_finite()) {
        return 0.0..1.0;
    }
    if hi - lo < 1e-12 {
        return lo - 0.5..hi + 0.5;
    }
    let pad = 0.05 * (hi - lo);
    lo - pad..hi + pad
}

/// `lo..hi` (both > 0) padded by 5 % of its decades, or a decade around a single value.
fn padded_log(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let (l, h) = (lo.log10(), hi.log10());
    let r = if h - l < 1e-12 { l - 0.5..h + 0.5 } else { padded(l, h) };
    10f64.powf(r.start)..10f64.powf(r.end)
}

/// Steps are whole numbers: `20`, not `20.0` (a fractional tick of a short run keeps its digits).
fn step_label(x: &f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", *x as i64)
    } else {
        format!("{x:.1}")
    }
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, series: &[Series], chart: &Chart) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in series.iter().flat_map(|s| finite(s, chart.log_y)) {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    let xs: RangedCoordf64 = (if x0.is_finite() && x1 > x0 { x0..x1 } else { padded(x0, x1) }).into();
    if chart.log_y && y0.is_finite() {
        draw_on(root, series, chart, xs, LogCoord::<f64>::from(padded_log(y0, y1).log_scale()))
    } else {
        draw_on(root, series, chart, xs, RangedCoordf64::from(padded(y0, y1)))
    }
}

fn draw_on<DB, Y>(root: DrawingArea<DB, Shift>, series: &[Series], chart: &Chart, xs: RangedCoordf64, ys: Y) -> DrawResult
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    root.fill(&WHITE)?;
    let mut ctx = ChartBuilder::on(&root)
        .caption(chart.caption.as_str(), ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(xs, ys)?;
    ctx.configure_mesh()
        .x_desc("step")
        .x_label_formatter(&step_label)
        .y_desc(chart.y_desc.as_str())
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = finite(s, chart.log_y).collect();
        ctx.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        if points.len() <= 50 {
            ctx.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }
    ctx.configure_series_labels().position(SeriesLabelPosition::UpperRight).background_style(WHITE.mix(0.9)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_come_from_the_step_and_eval_rows_and_draw_as_polylines() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics.jsonl");
        let rows = [
            r#"{"step":1,"loss":3.0,"lr":0.1}"#,
            r#"{"step":2,"loss":2.5}"#,
            r#"{"step":2,"val_loss":2.7,"val_ppl":14.9}"#,
            r#"{"step":3,"loss":NaN}"#,
            r#"{"step":4,"loss":1.5}"#,
            r#"{"step":4,"val_loss":2.0}"#,
        ];
        std::fs::write(&metrics, rows.join("\n")).unwrap();
        let series = from_metrics(&metrics).unwrap();
        assert_eq!(series.len(), 2);
        assert_eq!(series[0], Series { name: "train loss".into(), points: vec![(1.0, 3.0), (2.0, 2.5), (4.0, 1.5)] }, "an unreadable row is skipped");
        assert_eq!(series[1].points, vec![(2.0, 2.7), (4.0, 2.0)]);
        let out = dir.path().join("curves.svg");
        render_svg(&series, &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
        assert!(svg.matches("<polyline").count() >= 2, "one line per series: {svg}");
        assert!(svg.contains("train loss") && svg.contains("eval loss") && svg.contains("\nstep\n"), "{svg}");
    }

    #[test]
    fn a_run_without_evaluation_or_rows_still_draws() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics.jsonl");
        std::fs::write(&metrics, "{\"step\":1,\"loss\":2.0}\n").unwrap();
        let series = from_metrics(&metrics).unwrap();
        assert_eq!(series.len(), 1, "no eval series without eval rows");
        for s in [series, vec![], vec![Series { name: "x".into(), points: vec![(1.0, f64::INFINITY)] }]] {
            let out = dir.path().join("c.svg");
            render_svg(&s, &out).unwrap();
            assert!(std::fs::read_to_string(&out).unwrap().contains("</svg>"));
        }
        assert!(from_metrics(&dir.path().join("missing.jsonl")).unwrap_err().to_string().contains("missing.jsonl"));
    }

    #[test]
    fn a_log_axis_leaves_out_values_that_are_not_positive_and_formats_come_from_the_extension() {
        let dir = tempfile::tempdir().unwrap();
        let series = [Series { name: "lr".into(), points: vec![(1.0, 10.0), (2.0, 0.0), (3.0, -1.0), (4.0, 0.01)] }];
        let out = dir.path().join("log.svg");
        let chart = Chart { caption: "lr".into(), y_desc: "lr".into(), size: (640, 400), log_y: true };
        let line_points = |svg: &str| -> usize {
            let line = svg.split("<polyline").find(|t| t.contains("stroke=\"#1F77B4\" stroke-width=\"2\"")).unwrap();
            line.split("points=\"").nth(1).unwrap().split('"').next().unwrap().split_whitespace().count()
        };
        render(&series, &chart, &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert_eq!(line_points(&svg), 2, "(2, 0) and (3, -1) left out on a log axis");
        assert!(svg.contains("width=\"640\"") && svg.contains("height=\"400\""), "the size asked");
        render(&series, &Chart { log_y: false, ..chart.clone() }, &out).unwrap();
        assert_eq!(line_points(&std::fs::read_to_string(&out).unwrap()), 4, "a linear axis keeps them");
        assert_eq!(Format::of(Path::new("a/b.PNG")).unwrap(), Format::Png);
        assert_eq!(Format::of(Path::new("b.svg")).unwrap(), Format::Svg);
        for bad in ["b.jpg", "b"] {
            let err = Format::of(Path::new(bad)).unwrap_err();
            assert!(err.exit_code() == 2 && err.to_string().contains(bad), "{err}");
        }
    }
}
