//! SVG plots: latency CDF per stage, queries per second against batch size.

use std::path::Path;

use plotters::prelude::*;
use thiserror::Error;

use crate::report::ordered_stages;
use crate::result::{BatchFigure, BenchResult, TOTAL};
use crate::stats::cdf_points;

/// A plot could not be drawn or written.
#[derive(Debug, Error)]
#[error("drawing {file}: {message}")]
pub struct PlotError {
    pub file: String,
    pub message: String,
}

fn plot_error(file: &Path) -> impl Fn(&dyn std::fmt::Display) -> PlotError + '_ {
    move |e| PlotError {
        file: file.display().to_string(),
        message: e.to_string(),
    }
}

/// Colour of the n-th series (a palette that stays readable in print).
fn colour(n: usize) -> RGBColor {
    const PALETTE: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 23, 23),
    ];
    PALETTE[n % PALETTE.len()]
}

/// Cumulative distribution of single-query latency, one curve per stage and end to end,
/// on a logarithmic time axis (stages differ by orders of magnitude).
pub fn latency_cdf(result: &BenchResult, file: &Path) -> Result<(), PlotError> {
    let err = plot_error(file);
    let curves: Vec<(String, Vec<(f64, f64)>)> = ordered_stages(result.latency_samples_us.keys())
        .into_iter()
        .filter_map(|stage| {
            let samples = result.latency_samples_us.get(&stage)?;
            // A log axis cannot show zero; a stage that took under 0.01 us is drawn there.
            let points: Vec<(f64, f64)> = cdf_points(samples, 400)
                .into_iter()
                .map(|(x, y)| (x.max(0.01), y))
                .collect();
            (!points.is_empty()).then_some((stage, points))
        })
        .collect();
    let (lo, hi) = curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
    if curves.is_empty() || !lo.is_finite() {
        return Ok(());
    }
    let root = SVGBackend::new(file, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let title = format!(
        "Single-query latency CDF: {} on {} ({} queries)",
        result.settings.scenario,
        result.settings.device,
        curves
            .first()
            .map_or(0, |(s, _)| result.latency_samples_us[s].len())
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0.0..1.0f64)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("latency (us, log scale)")
        .y_desc("fraction of queries")
        .x_label_formatter(&|x| crate::compare::format_value(*x))
        .draw()
        .map_err(|e| err(&e))?;
    for (n, (stage, points)) in curves.into_iter().enumerate() {
        let style = if stage == TOTAL {
            colour(7).stroke_width(3)
        } else {
            colour(n).stroke_width(2)
        };
        let legend_colour = style.color;
        chart
            .draw_series(LineSeries::new(points, style))
            .map_err(|e| err(&e))?
            .label(stage)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], legend_colour.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// Queries per second against batch size (log-log), hyperrec and, when present, the peer.
pub fn qps_vs_batch(result: &BenchResult, file: &Path) -> Result<(), PlotError> {
    let err = plot_error(file);
    let mut series: Vec<(String, &[BatchFigure])> = vec![(
        format!("hyperrec ({})", result.settings.device),
        &result.batches,
    )];
    if let Some(peer) = &result.peer
        && !peer.batches.is_empty()
    {
        series.push((format!("PyTorch peer ({})", peer.device), &peer.batches));
    }
    let all = series.iter().flat_map(|(_, b)| b.iter());
    let (mut x_hi, mut y_lo, mut y_hi) = (1.0f64, f64::INFINITY, 0.0f64);
    for b in all {
        x_hi = x_hi.max(b.size as f64);
        y_lo = y_lo.min(b.queries_per_second);
        y_hi = y_hi.max(b.queries_per_second);
    }
    if !y_lo.is_finite() || y_hi <= 0.0 {
        return Ok(());
    }
    let root = SVGBackend::new(file, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Throughput against batch size: {} scenario",
                result.settings.scenario
            ),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(
            (0.8..x_hi * 1.25).log_scale(),
            (y_lo.max(1e-3) * 0.5..y_hi * 2.0).log_scale(),
        )
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("batch size (queries, log scale)")
        .y_desc("queries per second (log scale)")
        .x_label_formatter(&|x| crate::compare::format_value(*x))
        .y_label_formatter(&|y| crate::compare::format_value(*y))
        .draw()
        .map_err(|e| err(&e))?;
    for (n, (label, batches)) in series.into_iter().enumerate() {
        let style = colour(n).stroke_width(3);
        let points: Vec<(f64, f64)> = batches
            .iter()
            .map(|b| (b.size as f64, b.queries_per_second))
            .collect();
        let legend_colour = style.color;
        chart
            .draw_series(LineSeries::new(points.clone(), style))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], legend_colour.stroke_width(3))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 5, legend_colour.filled())),
            )
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}
