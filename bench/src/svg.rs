//! Line plots of the benchmark's time series as SVG text, written by hand: a plot is a few lines,
//! axes and labels, so no plotting, font or rendering crate is needed to draw it.
use std::fmt::Write as _;

/// One line of the plot: a name for the legend and its (x, y) points in drawing order.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 500.0;
/// Plot area margins: room for tick labels on the left and below, the legend on the right.
const LEFT: f64 = 80.0;
const RIGHT: f64 = 260.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
/// Distinguishable colours, one per series, in order.
const COLOURS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// Tick positions from 0 at a round step (1, 2 or 5 × 10^k) whose last tick reaches `max`,
/// with about `count` intervals.
pub fn ticks(max: f64, count: usize) -> Vec<f64> {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / count.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude);
    let n = (max / step - 1e-9).ceil() as usize;
    (0..=n).map(|i| i as f64 * step).collect()
}

fn label(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        let digits = (-step.log10()).ceil() as usize;
        format!("{v:.digits$}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An SVG document with one line per series over shared axes that start at zero.
pub fn line_plot(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let xt = ticks(all().map(|p| p.0).fold(0.0, f64::max), 10);
    let yt = ticks(all().map(|p| p.1).fold(0.0, f64::max), 6);
    let (x_max, y_max) = (xt[xt.len() - 1], yt[yt.len() - 1]);
    let (w, h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let px = |x: f64| LEFT + x / x_max * w;
    let py = |y: f64| TOP + h - y / y_max * h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" font-size="16" text-anchor="middle">{}</text>"#,
        LEFT + w / 2.0,
        escape(title)
    );
    // Grid and tick labels first, so the lines draw over them.
    let x_step = xt.get(1).copied().unwrap_or(1.0);
    for x in &xt {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#e0e0e0"/><text x="{0:.1}" y="{3:.1}" text-anchor="middle">{4}</text>"##,
            px(*x),
            TOP,
            TOP + h + 5.0,
            TOP + h + 20.0,
            label(*x, x_step)
        );
    }
    let y_step = yt.get(1).copied().unwrap_or(1.0);
    for y in &yt {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="#e0e0e0"/><text x="{3:.1}" y="{4:.1}" text-anchor="end">{5}</text>"##,
            LEFT - 5.0,
            py(*y),
            LEFT + w,
            LEFT - 8.0,
            py(*y) + 4.0,
            label(*y, y_step)
        );
    }
    let _ = writeln!(
        s,
        r#"<polyline points="{LEFT},{TOP} {LEFT},{0} {1},{0}" fill="none" stroke="black"/>"#,
        TOP + h,
        LEFT + w
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        LEFT + w / 2.0,
        HEIGHT - 15.0,
        escape(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(20,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + h / 2.0,
        escape(y_label)
    );
    for (i, ser) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        if !ser.points.is_empty() {
            let pts: Vec<String> = ser
                .points
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                pts.join(" ")
            );
            for (x, y) in &ser.points {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                    px(*x),
                    py(*y)
                );
            }
        }
        let ly = TOP + 10.0 + 22.0 * i as f64;
        let lx = LEFT + w + 20.0;
        let name = if ser.points.is_empty() {
            format!("{} (not measured)", ser.name)
        } else {
            ser.name.clone()
        };
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(&name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_reach_the_maximum() {
        assert_eq!(
            ticks(23_456.0, 6),
            vec![0.0, 5_000.0, 10_000.0, 15_000.0, 20_000.0, 25_000.0]
        );
        assert_eq!(
            ticks(60.0, 10),
            (0..=6).map(|i| i as f64 * 10.0).collect::<Vec<_>>()
        );
        let unit = ticks(0.0, 5);
        assert_eq!((unit.len(), unit[1], unit[5]), (6, 0.2, 1.0));
        assert_eq!(ticks(3.0, 6), vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]);
    }

    #[test]
    fn plot_has_a_line_and_a_legend_entry_per_series() {
        let svg = line_plot(
            "a <b> & c",
            "time, s",
            "req/s",
            &[
                Series {
                    name: "one".into(),
                    points: vec![(5.0, 100.0), (10.0, 200.0)],
                },
                Series {
                    name: "two".into(),
                    points: vec![],
                },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches(r#"stroke-width="2""#).count(), 1);
        assert!(svg.contains(">one<") && svg.contains(">two (not measured)<"));
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
    }
}
