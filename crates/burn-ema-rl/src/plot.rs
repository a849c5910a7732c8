//! The reward curves of DQN runs as an SVG: per target update, the return of the last 20
//! episodes ended by each environment step, averaged over the runs (seeds) given for it.

use std::path::Path;

use plotters::prelude::*;

use crate::dqn::{DqnReport, TargetUpdate};

/// Episodes a curve point averages over.
pub const WINDOW: usize = 20;

/// The mean return of the last [`WINDOW`] episodes that ended by `step` (0 before the first).
pub fn recent_return(run: &DqnReport, step: u64) -> f32 {
    let ended = run.episodes.partition_point(|e| e.step <= step);
    let window = &run.episodes[ended.saturating_sub(WINDOW)..ended];
    window.iter().map(|e| e.reward).sum::<f32>() / window.len().max(1) as f32
}

/// Draws one curve per target update into `path`, each the mean over its runs.
pub fn plot(
    path: &Path,
    groups: &[(TargetUpdate, Vec<DqnReport>)],
    steps: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (800, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let seeds = groups.first().map_or(0, |(_, runs)| runs.len());
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "DQN on CartPole: return of the last {WINDOW} episodes, mean of {seeds} seed(s)"
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..steps as f64, 0.0..520.0)?;
    chart
        .configure_mesh()
        .x_desc("environment step")
        .y_desc("return")
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA];
    for ((target, runs), color) in groups.iter().zip(colors.iter().cycle()) {
        let points: Vec<(f64, f64)> = (0..=100)
            .map(|i| {
                let step = steps * i / 100;
                let mean = runs.iter().map(|r| recent_return(r, step)).sum::<f32>()
                    / runs.len().max(1) as f32;
                (step as f64, mean as f64)
            })
            .collect();
        let color = *color;
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(target.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
