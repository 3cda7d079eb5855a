//! Training reports: per-epoch CSV logs and line plots written as SVG (a plain writer: the
//! plotting crates are not among the offline dependencies).

use std::fmt::Write as _;

/// One curve: name, colour and `(x, y)` points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub colour: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// An SVG line chart of `series` with a log10 y axis (non-positive values are skipped), axis
/// labels and a legend, `width x height` pixels.
pub fn line_chart_svg(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h) = (720.0f64, 440.0f64);
    let (left, right, top, bottom) = (80.0, 170.0, 40.0, 50.0);
    let pts = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.1 > 0.0 && p.0.is_finite() && p.1.is_finite())
    };
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y.log10());
        y1 = y1.max(y.log10());
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let (y0, y1) = (y0.floor(), y1.ceil().max(y0.floor() + 1.0));
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    let px = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| top + (y1 - y.log10()) / (y1 - y0) * (h - top - bottom);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{title}</text>"#,
        (left + w - right) / 2.0
    );
    // y grid at every decade
    let mut d = y0 as i32;
    while d as f64 <= y1 {
        let y = py(10f64.powi(d));
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">1e{d}</text>"##,
            w - right,
            left - 6.0,
            y + 4.0
        );
        d += 1;
    }
    for i in 0..=5 {
        let x = x0 + (x1 - x0) * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{x:.0}</text>"#,
            px(x),
            h - bottom + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{left}" y="{top}" width="{:.1}" height="{:.1}" fill="none" stroke="black"/>"#,
        w - left - right,
        h - top - bottom
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{x_label}</text>"#,
        (left + w - right) / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{y_label}</text>"#,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0
    );
    for (k, ser) in series.iter().enumerate() {
        let path: Vec<String> = ser
            .points
            .iter()
            .filter(|p| p.1 > 0.0 && p.0.is_finite() && p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            ser.colour,
            path.join(" ")
        );
        let ly = top + 10.0 + 20.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            w - right + 10.0,
            w - right + 34.0,
            ser.colour,
            w - right + 40.0,
            ly + 4.0,
            ser.name
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_one_polyline_per_series_with_its_points() {
        let series = vec![
            Series {
                name: "a".into(),
                colour: "red",
                points: vec![(0.0, 1.0), (1.0, 0.1), (2.0, 0.01)],
            },
            Series {
                name: "b".into(),
                colour: "blue",
                points: vec![(0.0, 2.0), (1.0, -1.0)],
            },
        ];
        let svg = line_chart_svg("t", "epoch", "mse", &series);
        assert_eq!(svg.matches("<polyline").count(), 2);
        // the non-positive point of `b` is skipped: 3 + 1 points
        let points: usize = svg
            .lines()
            .filter(|l| l.starts_with("<polyline"))
            .map(|l| {
                l.split("points=\"")
                    .nth(1)
                    .map_or(0, |p| p.split(' ').count())
            })
            .sum();
        assert_eq!(points, 4);
        assert!(svg.contains(">1e-2<") && svg.contains(">1e0<"));
    }
}
