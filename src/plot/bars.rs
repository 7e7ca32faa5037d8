//! A grouped-bar panel: one group per condition along x, one bar per series inside each group,
//! an error bar for the spread (e.g. min..max over seeds) where there is one, and dashed
//! reference lines (e.g. chance).

use super::{plot_err, tick, Area, Chart, Corner, Mark, Series, FONT};
use anyhow::{bail, Result};
use plotters::prelude::*;

/// One bar series: label, colour, a value per group, and optional error-bar ends per group.
pub type BarSeries = (String, RGBColor, Vec<f64>, Option<(Vec<f64>, Vec<f64>)>);

/// A grouped-bar panel: `bars` are `(label, colour, values per group, optional (lo, hi) per
/// group)`; each becomes a [`Series`] of [`Mark::Bar`] at x = 1..=groups, its spread as the
/// band; `references` become dashed series. The group names travel in the x label as
/// `"<description>: <name> | <name> | ..."` (numbers 1.. are shown when there are none).
pub fn bar_chart(
    title: impl Into<String>,
    x_label: &str,
    y_label: &str,
    groups: &[String],
    bars: Vec<BarSeries>,
    references: Vec<(String, f64)>,
) -> Chart {
    let n = groups.len();
    let x: Vec<f64> = (1..=n).map(|g| g as f64).collect();
    let mut series: Vec<Series> = bars
        .into_iter()
        .map(|(l, color, y, spread)| Series {
            band: spread,
            ..Series::new(l, Mark::Bar, color, x.clone(), y)
        })
        .collect();
    series.extend(
        references
            .into_iter()
            .map(|(l, y)| Series::hline(l, RGBColor(120, 120, 120), y, 1.0, n.max(1) as f64)),
    );
    Chart {
        title: title.into(),
        x_label: format!("{x_label}: {}", groups.join(" | ")),
        y_label: y_label.into(),
        legend: Corner::UpperRight,
        series,
        ..Default::default()
    }
}

/// The description and group names of a bar chart's x label.
fn groups_of(x_label: &str, n: usize) -> (String, Vec<String>) {
    match x_label.rsplit_once(": ") {
        Some((d, names)) if names.split(" | ").count() == n => (
            d.to_string(),
            names.split(" | ").map(str::to_string).collect(),
        ),
        _ => (
            x_label.to_string(),
            (1..=n).map(|g| g.to_string()).collect(),
        ),
    }
}

/// Draws the bars with `c`'s title, axis labels and legend corner.
pub fn draw(area: &Area<'_>, c: &Chart) -> Result<()> {
    let bars: Vec<&Series> = c.series.iter().filter(|s| s.mark == Mark::Bar).collect();
    let n = bars
        .iter()
        .flat_map(|s| s.x.iter())
        .fold(0.0_f64, |m, &x| m.max(x))
        .round() as usize;
    if n == 0 {
        bail!("bar chart `{}` has no bars", c.title);
    }
    let (desc, groups) = groups_of(&c.x_label, n);
    let references: Vec<(String, f64)> = c
        .series
        .iter()
        .filter(|s| s.mark == Mark::Dashed)
        .filter_map(|s| s.y.first().map(|&y| (s.label.clone(), y)))
        .collect();
    // one value (and error bar) per group, NaN where a series has none
    let at = |s: &Series, v: &[f64]| -> Vec<f64> {
        (1..=n)
            .map(|g| {
                s.x.iter()
                    .position(|&x| (x - g as f64).abs() < 1e-9)
                    .map_or(f64::NAN, |i| v[i])
            })
            .collect()
    };
    let mut hi: f64 = 0.0;
    let mut lo: f64 = 0.0;
    for s in &bars {
        let mut all: Vec<f64> = s.y.clone();
        if let Some((l, h)) = &s.band {
            all.extend(l);
            all.extend(h);
        }
        for v in all.into_iter().filter(|v| v.is_finite()) {
            hi = hi.max(v);
            lo = lo.min(v);
        }
    }
    for (_, y) in &references {
        hi = hi.max(*y);
    }
    // room above the tallest bar for the legend
    let top = if hi <= 1.0 && lo >= 0.0 {
        1.22
    } else {
        hi + 0.25 * (hi - lo).max(1e-9)
    };
    let names = groups.clone();
    let fmt_x = move |v: &f64| {
        let i = v.round();
        if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
            names[i as usize].clone()
        } else {
            String::new()
        }
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&c.title, (FONT, 24))
        .margin(14)
        .x_label_area_size(58)
        .y_label_area_size(78)
        .build_cartesian_2d(-0.5..n as f64 - 0.5, lo..top)
        .map_err(plot_err)?;
    let fmt_y = |v: &f64| {
        if *v > hi.max(1.0) + 1e-9 {
            String::new()
        } else {
            tick(*v)
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc(&desc)
        .y_desc(&c.y_label)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 20))
        .x_labels(n + 1)
        .y_labels(8)
        .x_label_formatter(&fmt_x)
        .y_label_formatter(&fmt_y)
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(plot_err)?;
    let k = bars.len() as f64;
    let width = 0.8 / k;
    for (j, s) in bars.iter().enumerate() {
        let color = s.color;
        let values = at(s, &s.y);
        let left = |g: usize| g as f64 - 0.4 + j as f64 * width;
        let rects: Vec<_> = (0..n)
            .filter(|&g| values[g].is_finite())
            .map(|g| {
                Rectangle::new(
                    [(left(g) + 0.01, 0.0), (left(g) + width - 0.01, values[g])],
                    color.filled(),
                )
            })
            .collect();
        chart
            .draw_series(rects)
            .map_err(plot_err)?
            .label(s.label.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 7), (x + 22, y + 7)], color.filled()));
        if let Some((l, h)) = &s.band {
            let (l, h) = (at(s, l), at(s, h));
            let ink = ShapeStyle::from(&BLACK).stroke_width(2);
            for g in (0..n).filter(|&g| l[g].is_finite() && h[g].is_finite() && h[g] > l[g]) {
                let mid = left(g) + width / 2.0;
                let cap = width * 0.25;
                chart
                    .draw_series([
                        PathElement::new(vec![(mid, l[g]), (mid, h[g])], ink),
                        PathElement::new(vec![(mid - cap, l[g]), (mid + cap, l[g])], ink),
                        PathElement::new(vec![(mid - cap, h[g]), (mid + cap, h[g])], ink),
                    ])
                    .map_err(plot_err)?;
            }
        }
    }
    let grey = RGBColor(120, 120, 120);
    for (label, y) in &references {
        let line = ShapeStyle::from(&grey).stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(-0.5, *y), (n as f64 - 0.5, *y)],
                10,
                6,
                line,
            ))
            .map_err(plot_err)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], line));
    }
    chart
        .configure_series_labels()
        .position(match c.legend {
            Corner::UpperLeft => SeriesLabelPosition::UpperLeft,
            Corner::UpperRight => SeriesLabelPosition::UpperRight,
            Corner::LowerLeft => SeriesLabelPosition::LowerLeft,
            Corner::LowerRight => SeriesLabelPosition::LowerRight,
        })
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}
