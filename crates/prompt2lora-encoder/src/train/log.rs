//! The training log (`train_log.jsonl`, one record per step and per epoch) and the loss-curve
//! plot (`loss_curve.svg`).

use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One optimiser update.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub learning_rate: f64,
    pub grad_norm: f64,
    pub examples_per_second: f64,
}

/// The end of an epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub step: usize,
    pub train_loss: f64,
    pub validation_loss: Option<f64>,
    pub validation_accuracy: Option<f64>,
    pub validation_macro_f1: Option<f64>,
}

/// Everything logged so far; saved in checkpoints so that a resumed run writes the same log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    pub steps: Vec<StepRecord>,
    pub epochs: Vec<EpochRecord>,
}

impl History {
    /// Writes the log as JSONL: step records, each epoch record after the last step of its epoch.
    pub fn write_jsonl(&self, path: &Path) -> Result<()> {
        let mut out = String::new();
        let mut epochs = self.epochs.iter().peekable();
        let line = |kind: &str, value: serde_json::Value| -> String {
            let mut object = serde_json::Map::new();
            object.insert("kind".into(), kind.into());
            if let serde_json::Value::Object(fields) = value {
                object.extend(fields);
            }
            serde_json::Value::Object(object).to_string() + "\n"
        };
        for step in &self.steps {
            while let Some(e) = epochs.next_if(|e| e.step < step.step) {
                out.push_str(&line("epoch", serde_json::to_value(e).unwrap_or_default()));
            }
            out.push_str(&line(
                "step",
                serde_json::to_value(step).unwrap_or_default(),
            ));
        }
        for e in epochs {
            out.push_str(&line("epoch", serde_json::to_value(e).unwrap_or_default()));
        }
        fs_err::write(path, out)?;
        Ok(())
    }

    /// Training loss per step (and its moving average) with validation macro-F1 per epoch on a
    /// second axis.
    pub fn plot(&self, path: &Path, title: &str) -> Result<()> {
        let err = |e: &dyn std::fmt::Display| Error::Model(format!("{}: {e}", path.display()));
        let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let last_step = self.steps.last().map_or(1, |s| s.step).max(1) as f64;
        let max_loss = self.steps.iter().map(|s| s.loss).fold(0.1, f64::max) * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .right_y_label_area_size(55)
            .build_cartesian_2d(0f64..last_step, 0f64..max_loss)
            .map_err(|e| err(&e))?
            .set_secondary_coord(0f64..last_step, 0f64..1.0);
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("training loss")
            .draw()
            .map_err(|e| err(&e))?;
        chart
            .configure_secondary_axes()
            .y_desc("validation macro-F1")
            .draw()
            .map_err(|e| err(&e))?;
        let raw = self.steps.iter().map(|s| (s.step as f64, s.loss));
        chart
            .draw_series(LineSeries::new(raw, RGBColor(160, 190, 230)))
            .map_err(|e| err(&e))?
            .label("loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RGBColor(160, 190, 230)));
        let smooth = moving_average(&self.steps.iter().map(|s| s.loss).collect::<Vec<_>>(), 20);
        let smooth = self
            .steps
            .iter()
            .zip(smooth)
            .map(|(s, l)| (s.step as f64, l));
        chart
            .draw_series(LineSeries::new(smooth, BLUE.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("loss, moving average")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE.stroke_width(2)));
        let f1: Vec<(f64, f64)> = self
            .epochs
            .iter()
            .filter_map(|e| e.validation_macro_f1.map(|f| (e.step as f64, f)))
            .collect();
        if !f1.is_empty() {
            chart
                .draw_secondary_series(LineSeries::new(f1.clone(), RED.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label("validation macro-F1")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
            chart
                .draw_secondary_series(f1.into_iter().map(|p| Circle::new(p, 4, RED.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
        Ok(())
    }
}

fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(values.len());
    let mut sum = 0.0;
    for (i, v) in values.iter().enumerate() {
        sum += v;
        if i >= window {
            sum -= values[i - window];
        }
        out.push(sum / (i + 1).min(window) as f64);
    }
    out
}
