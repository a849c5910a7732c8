//! The run's pictures: a PNG grid of samples (one band per set of weights, from the same
//! noise) and an SVG plot of FID against post-hoc EMA's σ_rel.

use std::path::Path;

use burn_ema_mnist::data::{PIXELS, SIDE};
use plotters::prelude::*;

use crate::error::EdmError;
use crate::evaluate::Evaluation;

/// Digits per row of the grid.
const COLUMNS: usize = 10;
/// Pixels between digits and between bands.
const GAP: usize = 2;
const BAND_GAP: usize = 8;

/// Writes `bands` (each a run of images in `[-1, 1]`, `n × 784` values) as rows of
/// ten digits, one band under the other, white on black, to a grayscale PNG.
pub fn write_grid(path: &Path, bands: &[&[f32]]) -> Result<(), EdmError> {
    let rows: Vec<usize> = bands
        .iter()
        .map(|b| (b.len() / PIXELS).div_ceil(COLUMNS))
        .collect();
    let width = COLUMNS * (SIDE + GAP) + GAP;
    let height = rows.iter().map(|r| r * (SIDE + GAP)).sum::<usize>()
        + BAND_GAP * bands.len().saturating_sub(1)
        + 2 * GAP;
    let mut pixels = vec![40u8; width * height];
    let mut top = GAP;
    for (band, &band_rows) in bands.iter().zip(&rows) {
        for (k, image) in band.chunks_exact(PIXELS).enumerate() {
            let (row, col) = (k / COLUMNS, k % COLUMNS);
            let (y0, x0) = (top + row * (SIDE + GAP), GAP + col * (SIDE + GAP));
            for (i, &v) in image.iter().enumerate() {
                let (y, x) = (y0 + i / SIDE, x0 + i % SIDE);
                pixels[y * width + x] = (((v + 1.0) * 127.5).round().clamp(0.0, 255.0)) as u8;
            }
        }
        top += band_rows * (SIDE + GAP) + BAND_GAP;
    }
    let file = std::fs::File::create(path).map_err(|e| EdmError::io(path, e))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| EdmError::io(path, e))?;
    writer
        .write_image_data(&pixels)
        .map_err(|e| EdmError::io(path, e))?;
    writer.finish().map_err(|e| EdmError::io(path, e))
}

/// FID against σ_rel for post-hoc EMA's sweep, the live weights and the EMA as horizontal
/// lines.
pub fn plot_sweep(path: &Path, eval: &Evaluation) -> Result<(), EdmError> {
    let points: Vec<(f64, f64)> = eval
        .sweep
        .iter()
        .filter_map(|s| Some((s.sigma_rel?, s.fid)))
        .collect();
    let mut all: Vec<f64> = points.iter().map(|p| p.1).collect();
    all.push(eval.live.fid);
    if let Some(ema) = &eval.ema {
        all.push(ema.fid);
    }
    let top = all.iter().cloned().fold(0.0, f64::max) * 1.1 + 1e-9;
    let right = points.iter().map(|p| p.0).fold(0.25, f64::max) * 1.05;
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "FID of the EDM digits against post-hoc EMA's σ_rel",
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..right, 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc("σ_rel (synthesized after training)")
            .y_desc("FID (lower is better)")
            .draw()?;
        let line = |y: f64| vec![(0.0, y), (right, y)];
        chart
            .draw_series(LineSeries::new(line(eval.live.fid), RED.stroke_width(2)))?
            .label(format!("live weights: {:.2}", eval.live.fid))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        if let Some(ema) = &eval.ema {
            chart
                .draw_series(LineSeries::new(line(ema.fid), GREEN.stroke_width(2)))?
                .label(format!("EMA during training: {:.2}", ema.fid))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], GREEN));
        }
        if !points.is_empty() {
            chart
                .draw_series(LineSeries::new(points.clone(), BLUE.stroke_width(2)))?
                .label("post-hoc EMA")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| EdmError::io(path, e))
}
