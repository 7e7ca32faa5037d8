//! Shared plotting helpers on plotters: line charts with a band (over seeds) around each line,
//! optional log axes, theory curves dashed beside measurements, heatmaps ([`heatmap`]) and
//! grouped bars with error bars ([`bars`]), several panels side by side in one PNG, and the
//! long-format CSV of every plotted number.
//!
//! Text is drawn with the DejaVu Sans font embedded in the binary (`assets/fonts/`), so a figure
//! looks the same on every machine whatever fonts it has installed.

pub mod bars;
pub mod figure;
pub mod heatmap;

pub use bars::bar_chart;
pub use heatmap::heatmap_chart;

use anyhow::{anyhow, bail, Result};
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::prelude::*;
use plotters::style::FontStyle;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Once;

/// The font family name figures use (registered from the embedded TTF).
pub const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Registers the embedded font for every style plotters may ask for; idempotent.
pub fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [
            FontStyle::Normal,
            FontStyle::Bold,
            FontStyle::Italic,
            FontStyle::Oblique,
        ] {
            // The bytes are a valid TTF compiled into the binary; failing here is a build error.
            plotters::style::register_font(FONT, style, FONT_BYTES)
                .unwrap_or_else(|_| panic!("embedded font assets/fonts/DejaVuSans.ttf is invalid"));
        }
    });
}

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mark {
    /// Solid line (measurements).
    Line,
    /// Dashed line (theory and bounds).
    Dashed,
    /// Points only (individual runs, certificates).
    Points,
    /// Solid line with a point at every value.
    LinePoints,
    /// One row of a heatmap: `y[j]` is the cell in column `x[j]` (see [`heatmap`]).
    Cell,
    /// One bar per group `x` (1-based), the band as its error bar (see [`bars`]).
    Bar,
}

/// One plotted series: a line (or points) with an optional band `lo..hi` around it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Series {
    pub label: String,
    pub mark: Mark,
    #[serde(with = "rgb")]
    pub color: RGBColor,
    #[serde(deserialize_with = "nan::vec")]
    pub x: Vec<f64>,
    #[serde(deserialize_with = "nan::vec")]
    pub y: Vec<f64>,
    /// Band edges, one per x (e.g. min and max over seeds).
    #[serde(deserialize_with = "nan::band")]
    pub band: Option<(Vec<f64>, Vec<f64>)>,
}

impl Series {
    pub fn new(
        label: impl Into<String>,
        mark: Mark,
        color: RGBColor,
        x: Vec<f64>,
        y: Vec<f64>,
    ) -> Self {
        Self {
            label: label.into(),
            mark,
            color,
            x,
            y,
            band: None,
        }
    }

    /// The mean over runs as the line and the min..max over runs as the band; `runs[r][i]` is run
    /// r's value at `x[i]`.
    pub fn over_runs(
        label: impl Into<String>,
        mark: Mark,
        color: RGBColor,
        x: Vec<f64>,
        runs: &[Vec<f64>],
    ) -> Self {
        let n = x.len();
        let at = |i: usize| runs.iter().map(move |r| r[i]);
        let mean = (0..n)
            .map(|i| at(i).sum::<f64>() / runs.len() as f64)
            .collect();
        let lo = (0..n)
            .map(|i| at(i).fold(f64::INFINITY, f64::min))
            .collect();
        let hi = (0..n)
            .map(|i| at(i).fold(f64::NEG_INFINITY, f64::max))
            .collect();
        Self {
            band: Some((lo, hi)),
            ..Self::new(label, mark, color, x, mean)
        }
    }

    /// A horizontal reference line at `y` across `x0..x1`.
    pub fn hline(label: impl Into<String>, color: RGBColor, y: f64, x0: f64, x1: f64) -> Self {
        Self::new(label, Mark::Dashed, color, vec![x0, x1], vec![y, y])
    }
}

/// One panel: axes, labels and series.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_log: bool,
    pub y_log: bool,
    pub series: Vec<Series>,
    /// Where the legend goes (a corner the data leave empty).
    pub legend: Corner,
}

/// A corner of the plotting area.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Corner {
    UpperLeft,
    UpperRight,
    #[default]
    LowerLeft,
    LowerRight,
}

/// Colours that stay distinct for the usual few series (Okabe-Ito, colour-blind safe).
pub const COLORS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// Pixel size of one panel.
pub const PANEL: (u32, u32) = (820, 600);

fn finite_on(v: f64, log: bool) -> bool {
    v.is_finite() && (!log || v > 0.0)
}

/// Data range of one axis over every series (band included), padded; log axes pad by a factor.
fn axis_range(c: &Chart, x_axis: bool) -> Result<(f64, f64)> {
    let log = if x_axis { c.x_log } else { c.y_log };
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for s in &c.series {
        let mut vals: Vec<f64> = if x_axis { s.x.clone() } else { s.y.clone() };
        if let (false, Some((a, b))) = (x_axis, &s.band) {
            vals.extend(a);
            vals.extend(b);
        }
        for v in vals.into_iter().filter(|&v| finite_on(v, log)) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    if !lo.is_finite() {
        bail!(
            "chart `{}` has no finite data to plot on its {} axis",
            c.title,
            if x_axis { "x" } else { "y" }
        );
    }
    Ok(if log {
        let (l, h) = (lo.ln(), hi.ln().max(lo.ln() + 1e-9));
        let pad = 0.04 * (h - l).max(0.2);
        ((l - pad).exp(), (h + pad).exp())
    } else {
        let span = (hi - lo).max(1e-9 * hi.abs().max(1.0));
        let pad = 0.04 * span;
        // Keep a zero baseline when the data start at zero.
        (
            if lo >= 0.0 && lo - pad < 0.0 {
                0.0
            } else {
                lo - pad
            },
            hi + pad,
        )
    })
}

/// Short tick labels: 3 significant digits, scientific only when far from 1.
pub fn tick(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    }
}

/// Draws `charts` side by side into one PNG at `path` (atomically: temp file, then rename).
pub fn draw_png(path: &Path, charts: &[Chart]) -> Result<()> {
    register_fonts();
    if charts.is_empty() {
        bail!("no panels to draw for `{}`", path.display());
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}.png",
        std::process::id(),
        path.file_stem().and_then(|s| s.to_str()).unwrap_or("fig")
    ));
    let size = (PANEL.0 * charts.len() as u32, PANEL.1);
    {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let panels = root.split_evenly((1, charts.len()));
        for (area, chart) in panels.iter().zip(charts) {
            draw_panel(area, chart)?;
        }
        root.present().map_err(plot_err)?;
    }
    std::fs::rename(&tmp, path).map_err(|e| anyhow!("renaming into `{}`: {e}", path.display()))?;
    Ok(())
}

pub(crate) fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

pub(crate) type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw_panel(area: &Area<'_>, c: &Chart) -> Result<()> {
    if c.series.iter().any(|s| s.mark == Mark::Cell) {
        return heatmap::draw(area, c);
    }
    if c.series.iter().any(|s| s.mark == Mark::Bar) {
        return bars::draw(area, c);
    }
    let (x0, x1) = axis_range(c, true)?;
    let (y0, y1) = axis_range(c, false)?;
    // Ticks at powers of 2 when the axis spans less than ~1.5 decades (powers of 10 would leave
    // one label or none), else at powers of 10.
    let base = |lo: f64, hi: f64| if hi / lo < 40.0 { 2.0 } else { 10.0 };
    let (bx, by) = (base(x0, x1), base(y0, y1));
    match (c.x_log, c.y_log) {
        (false, false) => draw_in(area, c, x0..x1, y0..y1),
        (true, false) => draw_in(area, c, (x0..x1).log_scale().base(bx), y0..y1),
        (false, true) => draw_in(area, c, x0..x1, (y0..y1).log_scale().base(by)),
        (true, true) => draw_in(
            area,
            c,
            (x0..x1).log_scale().base(bx),
            (y0..y1).log_scale().base(by),
        ),
    }
}

fn draw_in<X, Y>(area: &Area<'_>, c: &Chart, xr: X, yr: Y) -> Result<()>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(&c.title, (FONT, 24))
        .margin(14)
        .x_label_area_size(58)
        .y_label_area_size(78)
        .build_cartesian_2d(xr, yr)
        .map_err(plot_err)?;
    let fmt = |v: &f64| tick(*v);
    chart
        .configure_mesh()
        .x_desc(&c.x_label)
        .y_desc(&c.y_label)
        .label_style((FONT, 17))
        .axis_desc_style((FONT, 20))
        .x_labels(8)
        .y_labels(8)
        .x_label_formatter(&fmt)
        .y_label_formatter(&fmt)
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(plot_err)?;
    let (xlog, ylog) = (c.x_log, c.y_log);
    let ok = |x: f64, y: f64| finite_on(x, xlog) && finite_on(y, ylog);
    // Bands first, so lines are drawn over them.
    for s in &c.series {
        if let Some((lo, hi)) = &s.band {
            let mut poly: Vec<(f64, f64)> = Vec::new();
            let idx: Vec<usize> = (0..s.x.len())
                .filter(|&i| ok(s.x[i], lo[i]) && ok(s.x[i], hi[i]))
                .collect();
            poly.extend(idx.iter().map(|&i| (s.x[i], hi[i])));
            poly.extend(idx.iter().rev().map(|&i| (s.x[i], lo[i])));
            if poly.len() >= 3 {
                chart
                    .draw_series(std::iter::once(Polygon::new(
                        poly,
                        s.color.mix(0.22).filled(),
                    )))
                    .map_err(plot_err)?;
            }
        }
    }
    for s in &c.series {
        let pts: Vec<(f64, f64)> =
            s.x.iter()
                .zip(&s.y)
                .map(|(&x, &y)| (x, y))
                .filter(|&(x, y)| ok(x, y))
                .collect();
        let color = s.color;
        let line = ShapeStyle::from(&color).stroke_width(3);
        let anno = match s.mark {
            Mark::Line => chart
                .draw_series(LineSeries::new(pts, line))
                .map_err(plot_err)?,
            Mark::Dashed => chart
                .draw_series(DashedLineSeries::new(pts, 10, 6, line))
                .map_err(plot_err)?,
            Mark::Points => chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 5, color.filled())))
                .map_err(plot_err)?,
            Mark::Cell | Mark::Bar => {
                bail!("chart `{}` mixes heatmap or bar series with lines", c.title)
            }
            Mark::LinePoints => {
                chart
                    .draw_series(LineSeries::new(pts.clone(), line))
                    .map_err(plot_err)?;
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(plot_err)?
            }
        };
        let mark = s.mark;
        let has_band = s.band.is_some();
        anno.label(s.label.clone()).legend(move |(x, y)| {
            let band_fill = if has_band {
                color.mix(0.22).filled()
            } else {
                WHITE.mix(0.0).filled()
            };
            // Line: one stroke; dashed: two short strokes; points: a dot only.
            let (seg1, seg2) = match mark {
                Mark::Dashed => (vec![(0, 0), (8, 0)], vec![(13, 0), (22, 0)]),
                Mark::Points => (vec![(11, 0), (11, 0)], vec![(11, 0), (11, 0)]),
                _ => (vec![(0, 0), (22, 0)], vec![(0, 0), (22, 0)]),
            };
            let dot = if matches!(mark, Mark::Points | Mark::LinePoints) {
                5
            } else {
                0
            };
            EmptyElement::at((x, y))
                + Rectangle::new([(0, -7), (22, 7)], band_fill)
                + PathElement::new(seg1, line)
                + PathElement::new(seg2, line)
                + Circle::new((11, 0), dot, color.filled())
        });
    }
    chart
        .configure_series_labels()
        .position(match c.legend {
            Corner::UpperLeft => SeriesLabelPosition::UpperLeft,
            Corner::UpperRight => SeriesLabelPosition::UpperRight,
            Corner::LowerLeft => SeriesLabelPosition::LowerLeft,
            Corner::LowerRight => SeriesLabelPosition::LowerRight,
        })
        .label_font((FONT, 17))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

/// The long-format CSV of every plotted number: `panel,series,x,y,y_lo,y_hi` (band edges empty
/// when the series has none). Commas in names are written as semicolons. A heatmap's rows are
/// its cells (series = row label, x = 1-based column); grouped bars' rows are the bars (series =
/// bar label, x = 1-based group, the error bar as `y_lo, y_hi`).
pub fn charts_csv(charts: &[Chart]) -> String {
    let clean = |s: &str| s.replace([',', '\n'], ";");
    let mut out = String::from("panel,series,x,y,y_lo,y_hi\n");
    for c in charts {
        for s in &c.series {
            for i in 0..s.x.len() {
                let (lo, hi) = match &s.band {
                    Some((a, b)) => (format!("{}", a[i]), format!("{}", b[i])),
                    None => (String::new(), String::new()),
                };
                out.push_str(&format!(
                    "{},{},{},{},{lo},{hi}\n",
                    clean(&c.title),
                    clean(&s.label),
                    s.x[i],
                    s.y[i]
                ));
            }
        }
    }
    out
}

/// Colours as `[r, g, b]` in JSON (plotters' colour type has no serde support).
pub(crate) mod rgb {
    use plotters::style::RGBColor;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(c: &RGBColor, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq([c.0, c.1, c.2])
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RGBColor, D::Error> {
        let [r, g, b] = <[u8; 3]>::deserialize(d)?;
        Ok(RGBColor(r, g, b))
    }
}

/// JSON has no NaN (serde_json writes it as null): read null back as NaN (a point not drawn).
pub(crate) mod nan {
    use serde::{Deserialize, Deserializer};

    fn fill(v: Vec<Option<f64>>) -> Vec<f64> {
        v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect()
    }

    pub fn vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Ok(fill(Vec::<Option<f64>>::deserialize(d)?))
    }

    type Edges = (Vec<Option<f64>>, Vec<Option<f64>>);
    type Band = Option<(Vec<f64>, Vec<f64>)>;

    pub fn band<'de, D: Deserializer<'de>>(d: D) -> Result<Band, D::Error> {
        Ok(Option::<Edges>::deserialize(d)?.map(|(a, b)| (fill(a), fill(b))))
    }
}
