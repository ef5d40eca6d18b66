//! SVG plots of a [`FilterReport`]: the confidence histogram of every intent
//! (`confidence_histogram.svg`) and the funnel of the stages (`filter_funnel.svg`). The run
//! report embeds both.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::confidence::{BUCKETS, IntentConfidence};
use crate::report::FilterReport;

/// File names of the plots, written beside `filter_report.json`.
pub const HISTOGRAM_FILE: &str = "confidence_histogram.svg";
pub const FUNNEL_FILE: &str = "filter_funnel.svg";

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("drawing failed: {0}")]
    Draw(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn draw<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> PlotError {
    PlotError::Draw(e.to_string())
}

const KEPT: RGBColor = RGBColor(31, 119, 180);
const REMOVED: RGBColor = RGBColor(214, 39, 40);
const PANEL_WIDTH: u32 = 300;
const PANEL_HEIGHT: u32 = 200;
const COLUMNS: usize = 4;

/// Writes both plots into `dir` and returns their paths.
pub fn write_plots(report: &FilterReport, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let mut written = Vec::new();
    if let Some(svg) = confidence_histogram_svg(report)? {
        let path = dir.join(HISTOGRAM_FILE);
        fs_err::write(&path, svg)?;
        written.push(path);
    }
    let path = dir.join(FUNNEL_FILE);
    fs_err::write(&path, funnel_svg(report)?)?;
    written.push(path);
    Ok(written)
}

/// One panel per intent: scored samples per confidence bucket, the kept part in blue and the
/// part the cut removed in red on top. `None` when the confidence stage saw no samples.
pub fn confidence_histogram_svg(report: &FilterReport) -> Result<Option<String>, PlotError> {
    let Some(confidence) = &report.confidence else {
        return Ok(None);
    };
    let order: Vec<&str> = report.intents.iter().map(|i| i.intent.as_str()).collect();
    let mut panels: Vec<&IntentConfidence> = confidence.intents.iter().collect();
    panels.sort_by_key(|p| {
        order
            .iter()
            .position(|&o| o == p.intent)
            .unwrap_or(usize::MAX)
    });
    if panels.is_empty() {
        return Ok(None);
    }
    let columns = COLUMNS.min(panels.len());
    let rows = panels.len().div_ceil(columns);
    let size = (
        PANEL_WIDTH * columns as u32,
        PANEL_HEIGHT * rows as u32 + 30,
    );
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw)?;
        let rule = match (confidence.min_confidence, confidence.keep_fraction) {
            (Some(t), _) => format!("threshold {t:.2}"),
            (_, Some(f)) => format!("top {:.0}% of each intent kept", 100.0 * f),
            _ => String::new(),
        };
        let title = format!("Combined confidence per intent ({rule}; blue kept, red removed)");
        let root = root.titled(&title, ("sans-serif", 16)).map_err(draw)?;
        let areas = root.split_evenly((rows, columns));
        for (area, panel) in areas.iter().zip(&panels) {
            histogram_panel(area, panel)?;
        }
        root.present().map_err(draw)?;
    }
    Ok(Some(svg))
}

fn histogram_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &IntentConfidence,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let top = panel.histogram.iter().copied().max().unwrap_or(0).max(1);
    let cut = panel.cut.map_or("-".to_string(), |c| format!("{c:.2}"));
    let caption = format!("{} (n={}, cut {cut})", panel.intent, panel.scored);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 13))
        .margin(6)
        .x_label_area_size(20)
        .y_label_area_size(34)
        .build_cartesian_2d(0.0..1.0f64, 0..top + top / 10 + 1)
        .map_err(draw)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(6)
        .y_labels(4)
        .label_style(("sans-serif", 10))
        .draw()
        .map_err(draw)?;
    let width = 1.0 / BUCKETS as f64;
    let bars = (0..BUCKETS).flat_map(|b| {
        let x0 = b as f64 * width + width * 0.05;
        let x1 = (b + 1) as f64 * width - width * 0.05;
        let kept = panel.kept_histogram[b];
        let all = panel.histogram[b];
        [
            Rectangle::new([(x0, 0), (x1, kept)], KEPT.filled()),
            Rectangle::new([(x0, kept), (x1, all)], REMOVED.filled()),
        ]
    });
    chart.draw_series(bars).map_err(draw)?;
    Ok(())
}

/// Samples left after each stage, as horizontal bars, with the number each stage removed.
pub fn funnel_svg(report: &FilterReport) -> Result<String, PlotError> {
    let stages = &report.funnel;
    let height = 60 + 34 * stages.len() as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw)?;
        let top = report.input.max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "Filter funnel: {} of {} samples kept",
                    report.kept, report.input
                ),
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(24)
            .y_label_area_size(140)
            .build_cartesian_2d(0..top + top / 5, (0..stages.len()).into_segmented())
            .map_err(draw)?;
        let names: Vec<String> = stages.iter().map(|s| s.stage.replace('_', " ")).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(stages.len())
            .y_label_formatter(&|y| match y {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(draw)?;
        let bar = |i: usize, from: usize, to: usize, color: RGBColor| {
            Rectangle::new(
                [
                    (from, SegmentValue::Exact(i)),
                    (to, SegmentValue::Exact(i + 1)),
                ],
                color.filled(),
            )
        };
        chart
            .draw_series(
                stages.iter().enumerate().flat_map(|(i, s)| {
                    [bar(i, 0, s.after, KEPT), bar(i, s.after, s.before, REMOVED)]
                }),
            )
            .map_err(draw)?;
        chart
            .draw_series(stages.iter().enumerate().map(|(i, s)| {
                let label = format!("{} (-{})", s.after, s.removed);
                Text::new(
                    label,
                    (s.before + top / 100, SegmentValue::CenterOf(i)),
                    ("sans-serif", 12),
                )
            }))
            .map_err(draw)?;
        root.present().map_err(draw)?;
    }
    Ok(svg)
}
