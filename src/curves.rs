//! Training curves: loss against step, drawn as an SVG (the export step: `<run.dir>/curves.svg`,
//! copied beside the model card in `final/`). [`from_metrics`] reads the curves of a run's
//! metrics.jsonl, [`render_svg`] draws any set of series. Drawn with `plotters`' SVG backend
//! alone (no font or image library: text is left to the viewer's sans-serif font).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, IoContext, Result};

/// One line of a plot: `(x, y)` points in order of x; non-finite points are skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// The loss curves of a run: `train loss` (each step row's `loss`) and, when the run evaluated,
/// `eval loss` (each evaluation row's `val_loss`), against `step`.
pub fn from_metrics(metrics: &Path) -> Result<Vec<Series>> {
    let text = std::fs::read_to_string(metrics).at(metrics)?;
    let rows: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let curve = |name: &str, key: &str| Series {
        name: name.to_string(),
        points: rows.iter().filter_map(|r| Some((r["step"].as_u64()? as f64, r.get(key)?.as_f64()?))).collect(),
    };
    let mut out = vec![curve("train loss", "loss")];
    let eval = curve("eval loss", "val_loss");
    if !eval.points.is_empty() {
        out.push(eval);
    }
    Ok(out)
}

/// Line colours, in series order (matplotlib's first four).
const COLORS: [RGBColor; 4] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40)];

/// Draws `series` (x = step, y = loss) into the SVG file `out`, written atomically. Series of
/// few points also get a marker at each point, so that a curve of one evaluation still shows.
pub fn render_svg(series: &[Series], out: &Path) -> Result<()> {
    let svg = svg_string(series).map_err(|e| Error::io(out, std::io::Error::other(format!("drawing the curve: {e}"))))?;
    crate::fsutil::write_atomic(out, svg.as_bytes())
}

fn finite(s: &Series) -> impl Iterator<Item = (f64, f64)> + '_ {
    s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite())
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

fn svg_string(series: &[Series]) -> std::result::Result<String, Box<dyn std::error::Error>> {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in series.iter().flat_map(finite) {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    let xs = if x0.is_finite() && x1 > x0 { x0..x1 } else { padded(x0, x1) };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("training curve", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(xs, padded(y0, y1))?;
        chart.configure_mesh().x_desc("step").y_desc("loss").light_line_style(WHITE.mix(0.0)).draw()?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points: Vec<(f64, f64)> = finite(s).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            if points.len() <= 50 {
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            }
        }
        chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).background_style(WHITE.mix(0.9)).border_style(BLACK).draw()?;
        root.present()?;
    }
    Ok(svg)
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
}
