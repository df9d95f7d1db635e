//! `loss.png` in the run directory: mean training loss and validation score per epoch,
//! redrawn from `metrics.jsonl` after every epoch.
use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::train::error::{Result, TrainError};
use crate::train::run::METRICS_FILE;
use lookalike::eval::chart::{ensure_font, FONT};

const SIZE: (u32, u32) = (900, 420);

fn draw_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Data(format!("chart: {e}"))
}

/// (epoch, value) points of one curve.
type Curve = Vec<(f64, f64)>;

/// (mean loss per epoch, validation score per epoch) from the metrics log.
fn per_epoch(text: &str) -> (Curve, Curve) {
    let mut loss: BTreeMap<u64, (f64, usize)> = BTreeMap::new();
    let mut score = Vec::new();
    for v in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let Some(epoch) = v["epoch"].as_u64() else {
            continue;
        };
        match v["kind"].as_str() {
            Some("step") => {
                let e = loss.entry(epoch).or_default();
                e.0 += v["loss"].as_f64().unwrap_or(0.0);
                e.1 += 1;
            }
            Some("val") => score.push((epoch as f64 + 1.0, v["score"].as_f64().unwrap_or(0.0))),
            _ => {}
        }
    }
    let loss = loss
        .into_iter()
        .map(|(e, (s, n))| (e as f64 + 1.0, s / n.max(1) as f64))
        .collect();
    (loss, score)
}

pub fn draw_run(run: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(run.join(METRICS_FILE)).map_err(|e| TrainError::io(run, e))?;
    let (loss, score) = per_epoch(&text);
    if loss.is_empty() {
        return Ok(());
    }
    ensure_font().map_err(draw_err)?;
    let (w, h) = SIZE;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (left, right) = root.split_horizontally(w / 2);
        let epochs = loss.len().max(score.len()) as f64 + 0.5;
        for (area, title, pts, color) in [
            (&left, "training loss (epoch mean)", &loss, RED),
            (&right, "validation score", &score, BLUE),
        ] {
            let hi = pts.iter().map(|p| p.1).fold(f64::MIN, f64::max).max(1e-6);
            let lo = pts
                .iter()
                .map(|p| p.1)
                .fold(f64::MAX, f64::min)
                .min(hi - 1e-6);
            let pad = (hi - lo) * 0.1 + 1e-3;
            let mut chart = ChartBuilder::on(area)
                .caption(title, (FONT, 18))
                .margin(12)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d(0.5..epochs, (lo - pad)..(hi + pad))
                .map_err(draw_err)?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .draw()
                .map_err(draw_err)?;
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(draw_err)?;
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    let path = run.join("loss.png");
    image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| draw_err("pixel buffer has the wrong size"))?
        .save_with_format(&path, image::ImageFormat::Png)
        .map_err(draw_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_means_and_scores_from_the_log() {
        let log = r#"{"kind":"step","epoch":0,"step":1,"loss":4.0}
{"kind":"step","epoch":0,"step":2,"loss":2.0}
{"kind":"val","epoch":0,"step":2,"score":0.5}
{"kind":"step","epoch":1,"step":3,"loss":1.0}"#;
        let (loss, score) = per_epoch(log);
        assert_eq!(loss, vec![(1.0, 3.0), (2.0, 1.0)]);
        assert_eq!(score, vec![(1.0, 0.5)]);
    }
}
