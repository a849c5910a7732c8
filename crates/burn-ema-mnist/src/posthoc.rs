//! Post-hoc EMA after an MNIST run: synthesize the EMA of each relative width from the run's
//! snapshots, evaluate it on the validation split, and plot accuracy against width.

use std::path::Path;

use burn::prelude::*;
use burn_ema::{PostHocSnapshots, Width};
use plotters::prelude::*;

use crate::data::MnistItem;
use crate::error::MnistError;
use crate::eval::{Evaluation, evaluate};
use crate::metrics::output_error;
use crate::model::Cnn;

/// One synthesized width and how it does.
#[derive(Clone, Debug)]
pub struct SweepRow {
    /// The relative width.
    pub sigma_rel: f64,
    /// Whether this width was tracked during training (its EMA is a snapshot, not a mix).
    pub tracked: bool,
    /// Validation metrics of the synthesized model.
    pub evaluation: Evaluation,
}

/// Synthesizes the EMA of each width in `sigma_rels` as of `step` (the last snapshot when
/// `None`) and evaluates it on `valid`.
pub fn sweep(
    snapshots: &PostHocSnapshots,
    sigma_rels: &[f64],
    step: Option<u64>,
    valid: &[MnistItem],
    device: &Device,
) -> Result<Vec<SweepRow>, MnistError> {
    let template = Cnn::new(device);
    let tracked = snapshots.tracked_sigma_rels();
    sigma_rels
        .iter()
        .map(|&sigma_rel| {
            let model = snapshots.synthesize(&template, Width::SigmaRel(sigma_rel), step)?;
            Ok(SweepRow {
                sigma_rel,
                tracked: tracked.iter().any(|t| (t - sigma_rel).abs() < 1e-12),
                evaluation: evaluate(&model, valid, device),
            })
        })
        .collect()
}

/// The sweep as a table.
pub fn table(rows: &[SweepRow]) -> String {
    let mut out = String::from("sigma_rel   accuracy   loss\n");
    for r in rows {
        out += &format!(
            "{:>9.3}   {:>7.2}%   {:.4}{}\n",
            r.sigma_rel,
            100.0 * r.evaluation.accuracy,
            r.evaluation.loss,
            if r.tracked { "   (tracked)" } else { "" }
        );
    }
    out
}

/// Draws validation accuracy and loss against `sigma_rel` as an SVG, the tracked widths
/// marked.
pub fn plot_sweep(path: &Path, rows: &[SweepRow], title: &str) -> Result<(), MnistError> {
    draw(path, rows, title).map_err(|e| output_error(path, e))
}

fn draw(path: &Path, rows: &[SweepRow], title: &str) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1080, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    let (x_lo, x_hi) = rows.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| {
        (lo.min(r.sigma_rel), hi.max(r.sigma_rel))
    });
    type Pick = fn(&Evaluation) -> f64;
    let charts: [(&str, Pick); 2] = [
        ("validation accuracy (%)", |e| 100.0 * e.accuracy),
        ("validation loss", |e| e.loss),
    ];
    for (panel, (label, pick)) in root.split_evenly((1, 2)).iter().zip(charts) {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (r.sigma_rel, pick(&r.evaluation)))
            .collect();
        let (y_lo, y_hi) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
        let pad = ((y_hi - y_lo) * 0.15).max(1e-3);
        let mut chart = ChartBuilder::on(panel)
            .margin(14)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((x_lo - 0.005)..(x_hi + 0.005), (y_lo - pad)..(y_hi + pad))?;
        chart
            .configure_mesh()
            .x_desc("EMA relative width sigma_rel")
            .y_desc(label)
            .draw()?;
        chart
            .draw_series(LineSeries::new(points.clone(), BLUE.stroke_width(2)))?
            .label("synthesized after training")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))?;
        chart
            .draw_series(
                rows.iter().filter(|r| r.tracked).map(|r| {
                    Circle::new((r.sigma_rel, pick(&r.evaluation)), 7, RED.stroke_width(2))
                }),
            )?
            .label("tracked during training")
            .legend(|(x, y)| Circle::new((x + 8, y), 5, RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
