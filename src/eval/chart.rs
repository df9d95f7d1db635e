//! PNG chart of the metrics after each post-processing stage (`lookalike
//! eval --out`): score, Top-1 and mAP@10 as three line series over the
//! stages in order.
//!
//! Text is drawn with an embedded font, so the chart renders the same on a
//! machine without system fonts: DejaVu Sans from the `dejavu` crate (the
//! font under the Bitstream Vera licence, DejaVu changes public domain:
//! free to use and redistribute with its notice; the crate's own code is
//! MIT/Apache-2.0).

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::metrics::Metrics;

/// Family name the embedded font is registered under.
pub const FONT: &str = "sans-serif";
const HEIGHT: u32 = 540;
/// Rough advance of one label character at the axis font size, to make
/// room for the longest stage name.
const PX_PER_CHAR: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("no stages to draw")]
    Empty,
    #[error("the embedded font could not be loaded")]
    Font,
    #[error("drawing the chart: {0}")]
    Draw(String),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: image::ImageError,
    },
}

fn draw_err<E: std::fmt::Display>(e: E) -> ChartError {
    ChartError::Draw(e.to_string())
}

/// plotters' font table is global: register once per process (also the trainer's charts).
pub fn ensure_font() -> Result<(), ChartError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && register_font(FONT, FontStyle::Bold, dejavu::sans::bold()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ChartError::Font)
    }
}

/// Pixel size of the chart for these stage names: each stage gets a slot
/// wide enough for its label.
pub fn chart_size<S: AsRef<str>>(names: &[S]) -> (u32, u32) {
    let longest = names
        .iter()
        .map(|s| s.as_ref().chars().count())
        .max()
        .unwrap_or(0) as u32;
    let slot = (longest * PX_PER_CHAR + 16).max(110);
    let n = names.len().max(1) as u32;
    ((n * slot + 140).max(640), HEIGHT)
}

/// Draws `stages` (name and metrics, in pipeline order) to a PNG at `path`.
pub fn draw_scores(path: &Path, stages: &[(String, Metrics)]) -> Result<(), ChartError> {
    if stages.is_empty() {
        return Err(ChartError::Empty);
    }
    ensure_font()?;
    let names: Vec<&str> = stages.iter().map(|s| s.0.as_str()).collect();
    let (w, h) = chart_size(&names);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        plot(&root, stages)?;
        root.present().map_err(draw_err)?;
    }
    // Encode with the project's `image` crate (plotters' own encoder would
    // pull in a second, older `image`).
    let img = image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| ChartError::Draw("pixel buffer has the wrong size".into()))?;
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|source| ChartError::Write {
            path: path.display().to_string(),
            source,
        })
}

type Pick = fn(&Metrics) -> f64;

/// (legend label, value, colour, line width); score first and widest.
const SERIES: [(&str, Pick, RGBColor, u32); 3] = [
    ("score", |m| m.score, RGBColor(200, 40, 40), 3),
    ("Top-1", |m| m.top1, RGBColor(40, 90, 200), 2),
    ("mAP@10", |m| m.map10, RGBColor(30, 150, 70), 2),
];

fn plot<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    stages: &[(String, Metrics)],
) -> Result<(), ChartError>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(draw_err)?;
    // Title and legend above the plot, so neither can hide a point.
    let (head, body) = root.split_vertically(76);
    head.draw(&Text::new(
        "Retrieval metrics after each stage",
        (16, 12),
        (FONT, 22).into_font(),
    ))
    .map_err(draw_err)?;
    for (i, (label, _, color, width)) in SERIES.iter().enumerate() {
        let x = 24 + 130 * i as i32;
        head.draw(&PathElement::new(
            vec![(x, 56), (x + 28, 56)],
            color.stroke_width(*width),
        ))
        .map_err(draw_err)?;
        head.draw(&Text::new(*label, (x + 36, 48), (FONT, 15).into_font()))
            .map_err(draw_err)?;
    }

    let n = stages.len();
    let values = stages
        .iter()
        .flat_map(|(_, m)| SERIES.map(|(_, pick, _, _)| pick(m)));
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    // Zoom on the data (stages differ by a few hundredths), with room for
    // the value labels; the axis shows the range.
    let (y0, y1) = ((lo - 0.03).max(0.0), (hi + 0.04).min(1.0));
    let (y0, y1) = if y1 > y0 { (y0, y1) } else { (0.0, 1.0) };

    // Integer ranges are inclusive in plotters: 0..n - 1 is n segments.
    let mut chart = ChartBuilder::on(&body)
        .margin(16)
        .margin_top(4)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((0..n - 1).into_segmented(), y0..y1)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => stages.get(*i).map_or(String::new(), |s| s.0.clone()),
            _ => String::new(),
        })
        .y_desc("metric value")
        .light_line_style(WHITE)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(draw_err)?;

    for (_, pick, color, width) in SERIES {
        let pts: Vec<(SegmentValue<usize>, f64)> = stages
            .iter()
            .enumerate()
            .map(|(i, (_, m))| (SegmentValue::CenterOf(i), pick(m)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))
            .map_err(draw_err)?;
        // Marker and value at each point, so the chart reads without the
        // table.
        chart
            .draw_series(pts.into_iter().map(|(x, y)| {
                EmptyElement::at((x, y))
                    + Circle::new((0, 0), 4, color.filled())
                    + Text::new(
                        format!("{y:.4}"),
                        (8, -18),
                        (FONT, 13).into_font().color(&color),
                    )
            }))
            .map_err(draw_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(top1: f64, map10: f64) -> Metrics {
        Metrics {
            top1,
            map10,
            p10: map10,
            score: 0.5 * top1 + 0.5 * map10,
            n_queries: 296,
        }
    }

    #[test]
    fn draws_a_readable_png() {
        let stages = vec![
            ("raw".to_string(), m(0.625, 0.415)),
            ("kr:k1=20,k2=6,lambda=0.3".to_string(), m(0.6047, 0.5202)),
            ("aqe:k=1".to_string(), m(0.6149, 0.5029)),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.png");
        draw_scores(&path, &stages).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let names: Vec<&str> = stages.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(img.dimensions(), chart_size(&names));
        let first = *img.get_pixel(0, 0);
        let colours: std::collections::HashSet<_> = img.pixels().map(|p| p.0).collect();
        assert!(img.pixels().any(|p| *p != first), "single colour");
        // Anti-aliased text and three coloured series: many colours.
        assert!(colours.len() > 20, "{} colours", colours.len());
        // Series colours are present.
        assert!(colours.contains(&[200, 40, 40]));
        assert!(colours.contains(&[40, 90, 200]));
    }

    #[test]
    fn one_stage_and_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.png");
        draw_scores(&path, &[("raw".to_string(), m(0.6, 0.4))]).unwrap();
        assert_eq!(
            image::open(&path).unwrap().to_rgb8().dimensions(),
            chart_size(&["raw"])
        );
        assert!(matches!(
            draw_scores(&dir.path().join("x.png"), &[]),
            Err(ChartError::Empty)
        ));
    }
}
