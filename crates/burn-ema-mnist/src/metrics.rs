//! Per-epoch validation metrics of the live and EMA weights: `metrics.csv` and a plot.

use std::path::Path;

use plotters::prelude::*;

use crate::error::MnistError;
use crate::eval::Evaluation;

/// One epoch's validation results.
#[derive(Clone, Debug)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// The live (trained) weights.
    pub live: Evaluation,
    /// The EMA weights, when training with `--ema`.
    pub ema: Option<Evaluation>,
}

impl EpochMetrics {
    /// A one-line summary for the console.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "epoch {:>2}: live  accuracy {:6.2}%  loss {:.4}",
            self.epoch,
            100.0 * self.live.accuracy,
            self.live.loss
        );
        if let Some(ema) = &self.ema {
            line += &format!(
                " | EMA accuracy {:6.2}%  loss {:.4}",
                100.0 * ema.accuracy,
                ema.loss
            );
        }
        line
    }
}

pub(crate) fn output_error(path: &Path, e: impl std::fmt::Display) -> MnistError {
    MnistError::Output {
        path: path.to_path_buf(),
        problem: e.to_string(),
    }
}

/// Writes `metrics.csv`: `epoch,live_accuracy,live_loss,ema_accuracy,ema_loss`.
pub fn write_csv(path: &Path, rows: &[EpochMetrics]) -> Result<(), MnistError> {
    let mut out = String::from("epoch,live_accuracy,live_loss,ema_accuracy,ema_loss\n");
    for r in rows {
        let (ea, el) = match &r.ema {
            Some(e) => (format!("{:.6}", e.accuracy), format!("{:.6}", e.loss)),
            None => (String::new(), String::new()),
        };
        out += &format!(
            "{},{:.6},{:.6},{ea},{el}\n",
            r.epoch, r.live.accuracy, r.live.loss
        );
    }
    std::fs::write(path, out).map_err(|e| output_error(path, e))
}

/// Draws validation accuracy and loss per epoch, live against EMA, as an SVG.
pub fn plot(path: &Path, rows: &[EpochMetrics]) -> Result<(), MnistError> {
    draw(path, rows).map_err(|e| output_error(path, e))
}

type Series = Vec<(f64, f64)>;

fn series(rows: &[EpochMetrics], pick: impl Fn(&Evaluation) -> f64) -> (Series, Series) {
    let live = rows
        .iter()
        .map(|r| (r.epoch as f64, pick(&r.live)))
        .collect();
    let ema = rows
        .iter()
        .filter_map(|r| r.ema.as_ref().map(|e| (r.epoch as f64, pick(e))))
        .collect();
    (live, ema)
}

fn draw(path: &Path, rows: &[EpochMetrics]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (960, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let last = rows.last().map_or(1.0, |r| r.epoch as f64).max(2.0);
    type Pick = fn(&Evaluation) -> f64;
    let charts: [(&str, Pick); 2] = [
        ("validation accuracy (%)", |e| 100.0 * e.accuracy),
        ("validation loss", |e| e.loss),
    ];
    for (panel, (title, pick)) in panels.iter().zip(charts) {
        let (live, ema) = series(rows, pick);
        let values = live.iter().chain(&ema).map(|p| p.1);
        let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let pad = ((hi - lo) * 0.1).max(1e-3);
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(1.0..last, (lo - pad)..(hi + pad))?;
        // Whole epochs only (plotters would also label 1.5, 2.5, ...).
        chart
            .configure_mesh()
            .x_desc("epoch")
            .x_labels(last as usize)
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-9 {
                    format!("{x:.0}")
                } else {
                    String::new()
                }
            })
            .draw()?;
        chart
            .draw_series(LineSeries::new(live, BLUE.stroke_width(2)))?
            .label("live")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        if !ema.is_empty() {
            chart
                .draw_series(LineSeries::new(ema, RED.stroke_width(2)))?
                .label("EMA")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
