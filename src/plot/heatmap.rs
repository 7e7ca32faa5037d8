//! A heatmap panel: a grid of cells coloured on a fixed scale (viridis, colour-blind safe), the
//! value printed in each cell when the cell is large enough to read it, row and column labels,
//! horizontal rules between row groups, and a colour bar with its ticks and marked reference
//! values (e.g. what uniform attention would score).

use super::{plot_err, Area, Chart, Mark, Series, FONT};
use anyhow::{bail, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// A heatmap panel. Each row is a [`Series`] of [`Mark::Cell`] (label = row label, `x` = 1-based
/// columns, `y` = the values, NaN = no value, drawn grey), top to bottom; dashed series are
/// reference values marked on the colour bar. Columns are named `"<x_label> <j>"`; the colour
/// bar is labelled with `y_label` and spans [min(0, data), max(1, data)]; a rule separates rows
/// whose labels differ before their last word (e.g. `"trained L1"` from `"mimicked L3"`).
pub fn heatmap_chart(
    title: impl Into<String>,
    column: &str,
    scale: &str,
    rows: Vec<(String, Vec<f64>)>,
    marks: Vec<(String, f64)>,
) -> Chart {
    let n = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let x: Vec<f64> = (1..=n).map(|j| j as f64).collect();
    let mut series: Vec<Series> = rows
        .into_iter()
        .map(|(l, y)| Series::new(l, Mark::Cell, BLACK, x.clone(), y))
        .collect();
    series.extend(
        marks
            .into_iter()
            .map(|(l, v)| Series::hline(l, RGBColor(200, 0, 0), v, 1.0, n.max(1) as f64)),
    );
    Chart {
        title: title.into(),
        x_label: column.into(),
        y_label: scale.into(),
        series,
        ..Default::default()
    }
}

/// What [`draw`] draws, read back from a chart.
struct Grid {
    rows: Vec<String>,
    cols: Vec<String>,
    values: Vec<Vec<f64>>,
    range: (f64, f64),
    rules_after: Vec<usize>,
    marks: Vec<(String, f64)>,
}

fn grid(c: &Chart) -> Result<Grid> {
    let cells: Vec<&Series> = c.series.iter().filter(|s| s.mark == Mark::Cell).collect();
    let n = cells.iter().map(|s| s.x.len()).max().unwrap_or(0);
    if n == 0 {
        bail!("heatmap `{}` has no cells", c.title);
    }
    let mut values = Vec::new();
    for s in &cells {
        let mut row = vec![f64::NAN; n];
        for (&x, &y) in s.x.iter().zip(&s.y) {
            let j = x.round() as usize;
            if !(1..=n).contains(&j) || (x - j as f64).abs() > 1e-9 {
                bail!(
                    "heatmap `{}`: row `{}` has a cell at x = {x}, not a column 1..={n}",
                    c.title,
                    s.label
                );
            }
            row[j - 1] = y;
        }
        values.push(row);
    }
    let finite = values.iter().flatten().copied().filter(|v| v.is_finite());
    let range = finite.fold((0.0_f64, 1.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let group = |l: &str| {
        l.rsplit_once(' ')
            .map_or(l.to_string(), |p| p.0.to_string())
    };
    let rules_after = (1..cells.len())
        .filter(|&i| group(&cells[i].label) != group(&cells[i - 1].label))
        .collect();
    Ok(Grid {
        rows: cells.iter().map(|s| s.label.clone()).collect(),
        cols: (1..=n).map(|j| format!("{} {j}", c.x_label)).collect(),
        values,
        range,
        rules_after,
        marks: c
            .series
            .iter()
            .filter(|s| s.mark == Mark::Dashed)
            .filter_map(|s| s.y.first().map(|&v| (s.label.clone(), v)))
            .collect(),
    })
}

/// Viridis at `t` in [0, 1] (piecewise linear through nine of its colours).
pub fn viridis(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + f * (b as f64 - a as f64)).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Draws the heatmap chart `c` into `area`, in pixel coordinates.
pub fn draw(area: &Area<'_>, c: &Chart) -> Result<()> {
    let h = grid(c)?;
    let title = &c.title;
    let (w, ht) = area.dim_in_pixel();
    let (w, ht) = (w as i32, ht as i32);
    let (nr, nc) = (h.rows.len() as i32, h.cols.len() as i32);
    let center = Pos::new(HPos::Center, VPos::Center);
    area.draw(&Text::new(
        title.to_string(),
        (w / 2, 22),
        (FONT, 24).into_font().color(&BLACK).pos(center),
    ))
    .map_err(plot_err)?;
    let label_w = h
        .rows
        .iter()
        .map(|r| r.chars().count() as i32 * 9 + 16)
        .max()
        .unwrap_or(60)
        .clamp(60, 260);
    let (x0, x1) = (label_w, w - 175);
    let (y0, y1) = (78, ht - 16);
    let cw = (x1 - x0) / nc;
    let ch = (y1 - y0) / nr;
    let (lo, hi) = h.range;
    let norm = |v: f64| (v - lo) / (hi - lo);
    let value_font = (ch.min(cw / 3) * 11 / 20).clamp(0, 18);
    for (j, c) in h.cols.iter().enumerate() {
        let cx = x0 + j as i32 * cw + cw / 2;
        area.draw(&Text::new(
            c.clone(),
            (cx, 62),
            (FONT, 17).into_font().color(&BLACK).pos(center),
        ))
        .map_err(plot_err)?;
    }
    for (i, (r, vs)) in h.rows.iter().zip(&h.values).enumerate() {
        let top = y0 + i as i32 * ch;
        area.draw(&Text::new(
            r.clone(),
            (x0 - 8, top + ch / 2),
            (FONT, 15)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(plot_err)?;
        for (j, &v) in vs.iter().enumerate() {
            let left = x0 + j as i32 * cw;
            let fill = if v.is_finite() {
                viridis(norm(v))
            } else {
                RGBColor(200, 200, 200)
            };
            area.draw(&Rectangle::new(
                [(left, top), (left + cw - 1, top + ch - 1)],
                fill.filled(),
            ))
            .map_err(plot_err)?;
            // values print when a cell is tall and wide enough for three digits
            if v.is_finite() && value_font >= 10 {
                let ink = if norm(v) < 0.6 { WHITE } else { BLACK };
                area.draw(&Text::new(
                    format!("{v:.2}"),
                    (left + cw / 2, top + ch / 2),
                    (FONT, value_font).into_font().color(&ink).pos(center),
                ))
                .map_err(plot_err)?;
            }
        }
    }
    for &after in &h.rules_after {
        let y = y0 + after as i32 * ch - 1;
        area.draw(&PathElement::new(
            vec![(x0 - label_w + 6, y), (x0 + nc * cw, y)],
            ShapeStyle::from(&BLACK).stroke_width(3),
        ))
        .map_err(plot_err)?;
    }
    // colour bar: bottom = lo, top = hi
    let (bx0, bx1) = (w - 165, w - 141);
    let (by0, by1) = (y0, y1);
    let steps = (by1 - by0).max(1);
    for k in 0..steps {
        let t = 1.0 - k as f64 / steps as f64;
        area.draw(&Rectangle::new(
            [(bx0, by0 + k), (bx1, by0 + k + 1)],
            viridis(t).filled(),
        ))
        .map_err(plot_err)?;
    }
    area.draw(&Rectangle::new(
        [(bx0, by0), (bx1, by1)],
        ShapeStyle::from(&BLACK).stroke_width(1),
    ))
    .map_err(plot_err)?;
    let y_of = |v: f64| by1 - ((norm(v).clamp(0.0, 1.0)) * (by1 - by0) as f64).round() as i32;
    let left = Pos::new(HPos::Left, VPos::Center);
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f64 / 4.0;
        let y = y_of(v);
        area.draw(&PathElement::new(vec![(bx1, y), (bx1 + 5, y)], BLACK))
            .map_err(plot_err)?;
        area.draw(&Text::new(
            super::tick(v),
            (bx1 + 8, y),
            (FONT, 15).into_font().color(&BLACK).pos(left),
        ))
        .map_err(plot_err)?;
    }
    for (label, v) in &h.marks {
        let y = y_of(*v);
        area.draw(&PathElement::new(
            vec![(bx0 - 6, y), (bx1, y)],
            ShapeStyle::from(&RGBColor(220, 0, 0)).stroke_width(3),
        ))
        .map_err(plot_err)?;
        area.draw(&Text::new(
            label.clone(),
            (bx1 + 8, y + 16),
            (FONT, 12).into_font().color(&RGBColor(200, 0, 0)).pos(left),
        ))
        .map_err(plot_err)?;
    }
    area.draw(&Text::new(
        c.y_label.clone(),
        (w - 8, 46),
        (FONT, 14)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Right, VPos::Center)),
    ))
    .map_err(plot_err)?;
    Ok(())
}
