//! SVG plots of the paper's figures through `plotters` (SVG backend): Fig. 4 (CS1 and CS2 averaged
//! over neurons in LC bins), Fig. 5 (histograms of r1 and r2), Fig. 6 (ROC curves). Each takes
//! one or more series so that `reproduce` can overlay models; the numbers behind every plot are in
//! the experiment's JSON.

use std::path::Path;

use plotters::prelude::*;

use crate::analysis::ratios::Histogram;
use crate::analysis::roc::RocPoint;
use crate::analysis::semantics::LcBin;
use crate::error::{Error, Result};

const SIZE: (u32, u32) = (720, 480);
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(
        path,
        std::io::Error::other(format!("drawing the plot: {e}")),
    )
}

/// Draw into an SVG string with `draw`, then write it atomically to `path`.
fn write_svg(
    path: &Path,
    draw: impl FnOnce(DrawingArea<SVGBackend, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        draw(root.clone())?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    crate::io::write_atomic(path, |w| std::io::Write::write_all(w, s.as_bytes()))
}

/// One model's Fig. 4 curve.
pub struct LcSeries<'a> {
    pub label: &'a str,
    pub bins: &'a [LcBin],
}

/// Fig. 4: CS1 (solid, circles) and CS2 (dashed look via triangles) against the LC bin centre,
/// one colour per series; empty bins are skipped.
pub fn lc_curve_svg(path: &Path, title: &str, series: &[LcSeries]) -> Result<()> {
    let (lo, hi) = series
        .iter()
        .flat_map(|s| s.bins.iter())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), bin| {
            (a.min(bin.lo), b.max(bin.hi))
        });
    let (lo, hi) = if lo < hi { (lo, hi) } else { (0.0, 1.0) };
    write_svg(path, |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(lo..hi, 0.0f64..1.05f64)
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc("LC (level and consistency of the neuron's features)")
            .y_desc("cosine similarity")
            .draw()
            .map_err(|e| plot_err(path, e))?;
        for (i, s) in series.iter().enumerate() {
            let col = colour(i);
            let centre = |b: &LcBin| (b.lo + b.hi) / 2.0;
            let cs1: Vec<(f64, f64)> = s
                .bins
                .iter()
                .filter_map(|b| b.cs1_mean.map(|v| (centre(b), v)))
                .collect();
            let cs2: Vec<(f64, f64)> = s
                .bins
                .iter()
                .filter_map(|b| b.cs2_mean.map(|v| (centre(b), v)))
                .collect();
            chart
                .draw_series(LineSeries::new(cs1.clone(), col.stroke_width(2)))
                .map_err(|e| plot_err(path, e))?
                .label(format!("{} CS1", s.label))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2))
                });
            chart
                .draw_series(cs1.iter().map(|&p| Circle::new(p, 4, col.filled())))
                .map_err(|e| plot_err(path, e))?;
            let light = col.mix(0.55);
            chart
                .draw_series(LineSeries::new(cs2.clone(), light.stroke_width(2)))
                .map_err(|e| plot_err(path, e))?
                .label(format!("{} CS2", s.label))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], light.stroke_width(2))
                });
            chart
                .draw_series(
                    cs2.iter()
                        .map(|&p| TriangleMarker::new(p, 5, col.mix(0.55).filled())),
                )
                .map_err(|e| plot_err(path, e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| plot_err(path, e))?;
        Ok(())
    })
}

/// One histogram series of Fig. 5.
pub struct HistSeries<'a> {
    pub label: &'a str,
    pub hist: &'a Histogram,
}

/// Fig. 5: histograms (count of adversarial images per ratio bin) as translucent bars, with a
/// vertical line at each series' mean and a grey line at ratio 1.
pub fn histograms_svg(path: &Path, title: &str, series: &[HistSeries]) -> Result<()> {
    let lo = series
        .iter()
        .filter_map(|s| s.hist.edges.first().copied())
        .fold(f64::INFINITY, f64::min);
    let hi = series
        .iter()
        .filter_map(|s| s.hist.edges.last().copied())
        .fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo < hi { (lo, hi) } else { (0.0, 1.0) };
    let top = series
        .iter()
        .flat_map(|s| s.hist.counts.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.1;
    write_svg(path, |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(lo..hi, 0.0f64..top)
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc("ratio of distances")
            .y_desc("adversarial images")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|e| plot_err(path, e))?;
        chart
            .draw_series(LineSeries::new(
                vec![(1.0, 0.0), (1.0, top)],
                RGBColor(150, 150, 150).stroke_width(1),
            ))
            .map_err(|e| plot_err(path, e))?;
        for (i, s) in series.iter().enumerate() {
            let col = colour(i);
            let e = &s.hist.edges;
            chart
                .draw_series(s.hist.counts.iter().enumerate().map(|(b, &n)| {
                    Rectangle::new([(e[b], 0.0), (e[b + 1], n as f64)], col.mix(0.45).filled())
                }))
                .map_err(|e| plot_err(path, e))?
                .label(match s.hist.mean {
                    Some(m) => format!("{} (mean {m:.3})", s.label),
                    None => s.label.to_string(),
                })
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], col.filled()));
            if let Some(m) = s.hist.mean.filter(|m| (lo..=hi).contains(m)) {
                chart
                    .draw_series(LineSeries::new(
                        vec![(m, 0.0), (m, top)],
                        col.stroke_width(2),
                    ))
                    .map_err(|e| plot_err(path, e))?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(path, e))?;
        Ok(())
    })
}

/// One ROC curve of Fig. 6.
pub struct RocSeries<'a> {
    pub label: &'a str,
    pub points: &'a [RocPoint],
    pub auc: Option<f64>,
}

/// Fig. 6: ROC curves (true positive rate against false positive rate) with the chance diagonal.
pub fn roc_svg(path: &Path, title: &str, series: &[RocSeries]) -> Result<()> {
    write_svg(path, |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0f64..1.0f64, 0.0f64..1.0f64)
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc("false positive rate")
            .y_desc("true positive rate")
            .draw()
            .map_err(|e| plot_err(path, e))?;
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, 0.0), (1.0, 1.0)],
                RGBColor(160, 160, 160).stroke_width(1),
            ))
            .map_err(|e| plot_err(path, e))?;
        for (i, s) in series.iter().enumerate() {
            let col = colour(i);
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().map(|p| (p.fpr, p.tpr)),
                    col.stroke_width(2),
                ))
                .map_err(|e| plot_err(path, e))?
                .label(match s.auc {
                    Some(a) => format!("{} (AUC {a:.3})", s.label),
                    None => s.label.to_string(),
                })
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| plot_err(path, e))?;
        Ok(())
    })
}
