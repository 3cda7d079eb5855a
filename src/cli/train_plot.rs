//! The curves of a training run as SVG (plotters): the train and validation loss per epoch,
//! and the equivariance error per epoch, each on a log scale.

use std::path::Path;

use plotters::prelude::*;
use se3_models::training::EpochRecord;

/// One named curve: (epoch, value) points, positive values only (log scale).
type Curve<'a> = (&'a str, Vec<(f64, f64)>, RGBColor);

fn draw(
    path: &Path,
    title: &str,
    y_label: &str,
    curves: &[Curve<'_>],
) -> Result<(), super::CliError> {
    let points: Vec<&(f64, f64)> = curves.iter().flat_map(|c| c.1.iter()).collect();
    if points.is_empty() {
        return Ok(());
    }
    let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let (lo, hi) = (y_min / 1.5, (y_max * 1.5).max(y_min * 2.0));
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..x_max, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_label)
        .y_label_formatter(&|v| format!("{v:.1e}"))
        .draw()?;
    for (name, pts, color) in curves {
        if pts.is_empty() {
            continue;
        }
        let c = *color;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes `loss.svg` and `equivariance.svg` into `dir` from the epoch records.
pub fn write_curves(dir: &Path, history: &[EpochRecord]) -> Result<(), super::CliError> {
    let positive = |f: &dyn Fn(&EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|r| {
                f(r).filter(|v| *v > 0.0 && v.is_finite())
                    .map(|v| (r.epoch as f64, v))
            })
            .collect()
    };
    draw(
        &dir.join("loss.svg"),
        "loss per epoch",
        "MSE loss",
        &[
            ("train", positive(&|r| Some(r.train_loss)), BLUE),
            ("validation", positive(&|r| r.val_loss), RED),
        ],
    )?;
    draw(
        &dir.join("equivariance.svg"),
        "equivariance error per epoch",
        "max |f(Rx+t) - R f(x)| / max |R f(x)|",
        &[(
            "equivariance error",
            positive(&|r| Some(r.equivariance_error)),
            GREEN,
        )],
    )
}
