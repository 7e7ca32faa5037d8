//! Figure data of the LEGO studies: one [`Table`] (header + numeric rows) per figure, computed
//! from finished runs, plus a plain plotters rendering of the main ones.
//!
//! Runs are numbered in the order of `<experiment>_runs.csv` (`run` column); labels are in the
//! same order in `run_index`'s `label_order` and in the experiment's config.
//!
//! | table | rows |
//! |---|---|
//! | `per_position` | chain position x (mean, min, max over seeds) per model label |
//! | `curves` | run, seed, epoch, step, loss, supervised and extrapolated accuracy |
//! | `runs` | run, label index, seed, arch, fixed heads, forward FLOPs, seconds |
//! | `heads` | label, seed, stage (0 init, 1 mimicked, 2 trained), layer, head, scores |
//! | `mimic` | label, seed, step, mimicking loss |
//! | `accuracy_vs_flops` | label, fixed heads, forward FLOPs/sentence, saving, accuracies |
//! | `shortcuts` | regime, test variant, accuracy (mean, min over seeds) |

use crate::lego::experiments::{arch_code, ExperimentResults};
use crate::lego::variants::Variant;
use anyhow::Result;

/// One figure's data.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    pub name: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<f64>>,
}

/// Distinct labels in first-seen order.
pub fn labels(r: &ExperimentResults) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for x in &r.results {
        if !v.contains(&x.run.label) {
            v.push(x.run.label.clone());
        }
    }
    v
}

fn label_idx(r: &ExperimentResults, label: &str) -> f64 {
    labels(r).iter().position(|l| l == label).unwrap_or(0) as f64
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (mean, min, max)
}

/// Test accuracy per chain position (1-based) for each model: mean, min, max over seeds.
pub fn per_position(r: &ExperimentResults) -> Result<Table> {
    let labs = labels(r);
    let n = r
        .results
        .iter()
        .map(|x| x.per_position.len())
        .max()
        .unwrap_or(0);
    let mut header = vec!["position".to_string()];
    for l in &labs {
        for s in ["mean", "min", "max"] {
            header.push(format!("{l}_{s}"));
        }
    }
    let rows = (0..n)
        .map(|k| {
            let mut row = vec![(k + 1) as f64];
            for l in &labs {
                let v: Vec<f64> = r
                    .results
                    .iter()
                    .filter(|x| &x.run.label == l)
                    .filter_map(|x| x.per_position.get(k).copied())
                    .collect();
                let (a, b, c) = stats(&v);
                row.extend([a, b, c]);
            }
            row
        })
        .collect();
    Ok(Table {
        name: "per_position".into(),
        header,
        rows,
    })
}

/// Accuracy over training, supervised vs extrapolated positions, every run.
pub fn curves(r: &ExperimentResults) -> Result<Table> {
    let mut rows = Vec::new();
    for x in &r.results {
        for p in &x.curve {
            rows.push(vec![
                label_idx(r, &x.run.label),
                x.run.seed as f64,
                p.epoch as f64,
                p.step as f64,
                p.train_loss,
                p.acc_supervised,
                p.acc_extrapolated,
            ]);
        }
    }
    Ok(Table {
        name: "curves".into(),
        header: [
            "label",
            "seed",
            "epoch",
            "step",
            "train_loss",
            "acc_supervised",
            "acc_extrapolated",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    })
}

/// One row per run: label index (order of [`labels`]), seed, architecture (0 BERT, 1 ALBERT),
/// fixed heads, forward FLOPs per sentence, wall seconds.
pub fn run_index(r: &ExperimentResults) -> Result<Table> {
    let rows = r
        .results
        .iter()
        .map(|x| {
            vec![
                label_idx(r, &x.run.label),
                x.run.seed as f64,
                arch_code(x.run.arch),
                x.run.fixed_local as f64,
                x.run.fixed_association as f64,
                x.forward_flops as f64,
                x.seconds,
            ]
        })
        .collect();
    let mut header: Vec<String> = [
        "label",
        "seed",
        "albert",
        "fixed_local",
        "fixed_association",
        "forward_flops_per_sentence",
        "seconds",
    ]
    .map(String::from)
    .to_vec();
    // the label names ride along in the header so the CSV is self-describing
    header[0] = format!("label({})", labels(r).join("|"));
    Ok(Table {
        name: "runs".into(),
        header,
        rows,
    })
}

fn stage_code(s: &str) -> f64 {
    match s {
        "init" => 0.0,
        "mimicked" => 1.0,
        _ => 2.0,
    }
}

/// Association and locality score of every layer/head at every stage of every run.
pub fn head_scores(r: &ExperimentResults) -> Result<Table> {
    let mut rows = Vec::new();
    for x in &r.results {
        for st in &x.head_scores {
            for (l, layer) in st.scores.iter().enumerate() {
                for (h, sc) in layer.iter().enumerate() {
                    rows.push(vec![
                        label_idx(r, &x.run.label),
                        x.run.seed as f64,
                        stage_code(&st.stage),
                        l as f64,
                        h as f64,
                        sc.association.unwrap_or(f64::NAN),
                        sc.clause_locality.unwrap_or(f64::NAN),
                        sc.window_locality.unwrap_or(f64::NAN),
                    ]);
                }
            }
        }
    }
    Ok(Table {
        name: "heads".into(),
        header: [
            "label",
            "seed",
            "stage",
            "layer",
            "head",
            "association",
            "clause_locality",
            "window_locality",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    })
}

/// Mimicking loss per step.
pub fn mimic_curve(r: &ExperimentResults) -> Result<Table> {
    let mut rows = Vec::new();
    for x in &r.results {
        for (i, l) in x.mimic_losses.iter().enumerate() {
            rows.push(vec![
                label_idx(r, &x.run.label),
                x.run.seed as f64,
                i as f64,
                *l,
            ]);
        }
    }
    Ok(Table {
        name: "mimic".into(),
        header: ["label", "seed", "step", "mimic_loss"]
            .map(String::from)
            .to_vec(),
        rows,
    })
}

/// Accuracy beside exact forward FLOPs per configuration (mean over seeds), with the saving
/// relative to the first configuration (the vanilla model).
pub fn accuracy_vs_flops(r: &ExperimentResults) -> Result<Table> {
    let labs = labels(r);
    let base = r
        .results
        .first()
        .map(|x| x.forward_flops as f64)
        .unwrap_or(1.0);
    let tv = r.train_vars;
    let rows = labs
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let xs: Vec<_> = r.results.iter().filter(|x| &x.run.label == l).collect();
            let f = xs[0].forward_flops as f64;
            let sup: Vec<f64> = xs
                .iter()
                .map(|x| mean(&x.per_position[..tv.min(x.per_position.len())]))
                .collect();
            let all: Vec<f64> = xs.iter().map(|x| mean(&x.per_position)).collect();
            let ext: Vec<f64> = xs
                .iter()
                .map(|x| mean(&x.per_position[tv.min(x.per_position.len())..]))
                .collect();
            vec![
                i as f64,
                xs[0].run.fixed_local as f64,
                xs[0].run.fixed_association as f64,
                f,
                1.0 - f / base,
                stats(&sup).0,
                stats(&ext).0,
                stats(&all).0,
            ]
        })
        .collect();
    Ok(Table {
        name: "accuracy_vs_flops".into(),
        header: [
            "label",
            "fixed_local",
            "fixed_association",
            "forward_flops_per_sentence",
            "flop_saving",
            "acc_supervised",
            "acc_extrapolated",
            "acc_all",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    })
}

/// Mean accuracy over all chain positions of each regime on each test variant
/// (variant index = position in [`Variant::ALL`]).
pub fn shortcut_robustness(r: &ExperimentResults) -> Result<Table> {
    let labs = labels(r);
    let mut rows = Vec::new();
    for (i, l) in labs.iter().enumerate() {
        let xs: Vec<_> = r.results.iter().filter(|x| &x.run.label == l).collect();
        let variants: Vec<Variant> = xs[0].variant_accuracy.iter().map(|v| v.0).collect();
        for v in variants {
            let accs: Vec<f64> = xs
                .iter()
                .filter_map(|x| x.variant_accuracy.iter().find(|a| a.0 == v))
                .map(|a| mean(&a.1))
                .collect();
            let (m, lo, _) = stats(&accs);
            let vi = Variant::ALL.iter().position(|&w| w == v).unwrap_or(0);
            rows.push(vec![i as f64, vi as f64, m, lo]);
        }
    }
    Ok(Table {
        name: "shortcuts".into(),
        header: ["regime", "variant", "acc_mean", "acc_min"]
            .map(String::from)
            .to_vec(),
        rows,
    })
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

// ---------------------------------------------------------------- rendering (plotters)

use plotters::prelude::*;
use std::path::{Path, PathBuf};

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // the bundled DejaVu Sans parses; a failure would only lose the text
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e:?}")
}

/// One line of a line chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line chart with markers, written as PNG; `vline` draws a dashed marker at that x.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    y_range: (f64, f64),
    vline: Option<f64>,
) -> Result<()> {
    register();
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let (x0, x1) = if x0.is_finite() && x1 > x0 {
        (x0, x1)
    } else {
        (0.0, 1.0)
    };
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(x0..x1, y_range.0..y_range.1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    if let Some(v) = vline {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(v, y_range.0), (v, y_range.1)],
                6,
                4,
                BLACK.mix(0.5).stroke_width(1),
            ))
            .map_err(err)?;
    }
    for (i, s) in series.iter().enumerate() {
        let c = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.1.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Dark blue (0) through teal to yellow (1).
fn heat(v: f64) -> RGBColor {
    let stops = [
        (68.0, 1.0, 84.0),
        (33.0, 145.0, 140.0),
        (253.0, 231.0, 37.0),
    ];
    let x = v.clamp(0.0, 1.0) * 2.0;
    let i = (x.floor() as usize).min(1);
    let f = x - i as f64;
    let (a, b) = (stops[i], stops[i + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Heatmaps of `values[panel][row][col]` in [0, 1] side by side, one per panel title.
pub fn heatmaps(
    path: &Path,
    title: &str,
    panels: &[(String, Vec<Vec<f64>>)],
    row_name: &str,
    col_name: &str,
) -> Result<()> {
    register();
    let w = 260 * panels.len().max(1) as u32;
    let root = BitMapBackend::new(path, (w, 330)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(err)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for ((name, grid), area) in panels.iter().zip(areas.iter()) {
        let rows = grid.len();
        let cols = grid.first().map(|r| r.len()).unwrap_or(0);
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 13))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(30)
            .build_cartesian_2d(0..cols, 0..rows)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(col_name)
            .y_desc(row_name)
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(err)?;
        for (r, row) in grid.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let v = if v.is_finite() {
                    v.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let color = heat(v);
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(c, r), (c + 1, r + 1)],
                        color.filled(),
                    )))
                    .map_err(err)?;
                chart
                    .draw_series(std::iter::once(Text::new(
                        format!("{v:.2}"),
                        (c, r + 1),
                        ("sans-serif", 11)
                            .into_font()
                            .color(if v > 0.5 { &BLACK } else { &WHITE }),
                    )))
                    .map_err(err)?;
            }
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Renders the figures of an experiment as PNGs in `dir`; returns the paths.
pub fn render(r: &ExperimentResults, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let labs = labels(r);
    let pp = per_position(r)?;
    let series: Vec<Series> = labs
        .iter()
        .enumerate()
        .map(|(i, l)| Series {
            name: format!("{l} (mean of seeds)"),
            points: pp.rows.iter().map(|row| (row[0], row[1 + 3 * i])).collect(),
        })
        .collect();
    let p = dir.join(format!("{}_per_position.png", r.name));
    let vline = (r.train_vars < pp.rows.len()).then_some(r.train_vars as f64 + 0.5);
    line_chart(
        &p,
        &format!("{}: test accuracy per chain position", r.name),
        "chain position",
        "accuracy",
        &series,
        (0.4, 1.02),
        vline,
    )?;
    out.push(p);

    let mut cs = Vec::new();
    for l in &labs {
        let xs: Vec<_> = r.results.iter().filter(|x| &x.run.label == l).collect();
        let Some(x) = xs.first() else { continue };
        cs.push(Series {
            name: format!("{l} supervised (seed {})", x.run.seed),
            points: x
                .curve
                .iter()
                .map(|p| (p.epoch as f64, p.acc_supervised))
                .collect(),
        });
        if vline.is_some() {
            cs.push(Series {
                name: format!("{l} extrapolated (seed {})", x.run.seed),
                points: x
                    .curve
                    .iter()
                    .map(|p| (p.epoch as f64, p.acc_extrapolated))
                    .collect(),
            });
        }
    }
    let p = dir.join(format!("{}_curves.png", r.name));
    line_chart(
        &p,
        &format!("{}: test accuracy during training", r.name),
        "epoch",
        "accuracy",
        &cs,
        (0.4, 1.02),
        None,
    )?;
    out.push(p);

    if r.results.iter().any(|x| !x.head_scores.is_empty()) {
        for (what, pick) in [("association", 0usize), ("window_locality", 2usize)] {
            let mut panels = Vec::new();
            for l in &labs {
                let Some(x) = r.results.iter().find(|x| &x.run.label == l) else {
                    continue;
                };
                for st in &x.head_scores {
                    let grid = st
                        .scores
                        .iter()
                        .map(|layer| {
                            layer
                                .iter()
                                .map(|s| {
                                    [s.association, s.clause_locality, s.window_locality][pick]
                                        .unwrap_or(f64::NAN)
                                })
                                .collect()
                        })
                        .collect();
                    panels.push((format!("{l}: {}", st.stage), grid));
                }
            }
            let p = dir.join(format!("{}_heads_{what}.png", r.name));
            heatmaps(
                &p,
                &format!(
                    "{}: {what} score per layer (rows) and head (columns)",
                    r.name
                ),
                &panels,
                "layer",
                "head",
            )?;
            out.push(p);
        }
    }
    if r.kind == crate::lego::config::ExperimentKind::Shortcuts {
        let t = shortcut_robustness(r)?;
        let series: Vec<Series> = labs
            .iter()
            .enumerate()
            .map(|(i, l)| Series {
                name: l.clone(),
                points: t
                    .rows
                    .iter()
                    .filter(|row| row[0] == i as f64)
                    .map(|row| (row[1], row[2]))
                    .collect(),
            })
            .collect();
        let names: Vec<&str> = Variant::ALL.iter().map(|v| v.name()).collect();
        let p = dir.join(format!("{}_robustness.png", r.name));
        line_chart(
            &p,
            &format!("accuracy per test variant (x: {})", names.join(", ")),
            "test variant index",
            "mean accuracy",
            &series,
            (0.4, 1.02),
            None,
        )?;
        out.push(p);
    }
    if r.kind == crate::lego::config::ExperimentKind::LegoAttention {
        let t = accuracy_vs_flops(r)?;
        let series = vec![
            Series {
                name: "supervised positions".into(),
                points: t.rows.iter().map(|row| (row[3] / 1e6, row[5])).collect(),
            },
            Series {
                name: "extrapolated positions".into(),
                points: t.rows.iter().map(|row| (row[3] / 1e6, row[6])).collect(),
            },
        ];
        let p = dir.join(format!("{}_accuracy_vs_flops.png", r.name));
        line_chart(
            &p,
            "LEGO attention module: accuracy vs forward MFLOPs / sentence",
            "forward MFLOPs per sentence",
            "accuracy",
            &series,
            (0.4, 1.02),
            None,
        )?;
        out.push(p);
    }
    Ok(out)
}

/// The LEGO figures of `attnlab figures` (see [`crate::figures::registry`]).
pub fn registered() -> Vec<crate::figures::Figure> {
    Vec::new()
}
