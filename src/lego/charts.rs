//! Chart builders and summaries shared by the LEGO figures ([`crate::lego::figures`]): lines
//! are means over seeds, bands min..max over seeds; runs are grouped by label in first-seen
//! order. Pure functions of finished runs.

use crate::lego::measure::{score_head, uniform_attention};
use crate::lego::train::RunResult;
use crate::lego::variants::Variant;
use crate::plot::{Chart, Corner, Mark, Series, COLORS};
use anyhow::Result;
use plotters::style::RGBColor;
use serde_json::json;

pub const GREY: RGBColor = RGBColor(120, 120, 120);

pub fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// Distinct labels in first-seen order.
pub fn labels(runs: &[RunResult]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for x in runs {
        if !v.contains(&x.run.label) {
            v.push(x.run.label.clone());
        }
    }
    v
}

pub fn of_label<'a>(runs: &'a [RunResult], label: &str) -> Vec<&'a RunResult> {
    runs.iter().filter(|x| x.run.label == label).collect()
}

pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Accuracy per chain position, one line per label (band over seeds), `names[label]` shown.
pub fn per_position_chart(
    title: &str,
    runs: &[RunResult],
    train_vars: usize,
    names: &dyn Fn(&str) -> String,
) -> Chart {
    let n = runs.iter().map(|r| r.per_position.len()).max().unwrap_or(0);
    let x: Vec<f64> = (1..=n).map(|k| k as f64).collect();
    let mut c = Chart {
        title: title.into(),
        x_label: format!("chain position (1-{train_vars} supervised)"),
        y_label: "test accuracy".into(),
        // deep positions sit at chance: the upper right is empty
        legend: Corner::UpperRight,
        ..Default::default()
    };
    for (i, l) in labels(runs).iter().enumerate() {
        let per: Vec<Vec<f64>> = of_label(runs, l)
            .iter()
            .map(|r| r.per_position.clone())
            .filter(|p| p.len() == n)
            .collect();
        if !per.is_empty() {
            c.series.push(Series::over_runs(
                names(l),
                Mark::LinePoints,
                color(i),
                x.clone(),
                &per,
            ));
        }
    }
    c.series
        .push(Series::hline("chance", GREY, 0.5, 1.0, n.max(1) as f64));
    if train_vars < n {
        let b = train_vars as f64 + 0.5;
        c.series.push(Series::new(
            "last supervised | extrapolated",
            Mark::Dashed,
            RGBColor(0, 0, 0),
            vec![b, b],
            vec![0.45, 1.0],
        ));
    }
    c
}

/// Per-position accuracy of every run, keyed by label, for the summary.
pub fn per_position_summary(runs: &[RunResult]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for l in labels(runs) {
        let xs = of_label(runs, &l);
        let n = xs[0].per_position.len();
        let at = |k: usize| xs.iter().map(|r| r.per_position[k]).collect::<Vec<_>>();
        let v: Vec<f64> = (0..n).map(|k| round3(mean(&at(k)))).collect();
        // the spread over seeds, as the bands of the figure
        let lo: Vec<f64> = (0..n)
            .map(|k| round3(at(k).into_iter().fold(f64::INFINITY, f64::min)))
            .collect();
        let hi: Vec<f64> = (0..n)
            .map(|k| round3(at(k).into_iter().fold(f64::NEG_INFINITY, f64::max)))
            .collect();
        m.insert(
            l,
            json!({ "seeds": xs.len(), "per_position_mean": v, "per_position_min": lo, "per_position_max": hi }),
        );
    }
    serde_json::Value::Object(m)
}

/// Supervised (solid) and extrapolated (dashed) accuracy over steps, one pair per label.
pub fn curves_chart(title: &str, runs: &[RunResult]) -> Chart {
    let mut c = Chart {
        title: title.into(),
        x_label: "training step".into(),
        y_label: "test accuracy (mean over positions)".into(),
        legend: Corner::UpperLeft,
        ..Default::default()
    };
    for (i, l) in labels(runs).iter().enumerate() {
        let xs = of_label(runs, l);
        let x: Vec<f64> = xs[0].curve.iter().map(|p| p.step as f64).collect();
        let same = |r: &&&RunResult| r.curve.len() == x.len();
        let sup: Vec<Vec<f64>> = xs
            .iter()
            .filter(same)
            .map(|r| r.curve.iter().map(|p| p.acc_supervised).collect())
            .collect();
        let ext: Vec<Vec<f64>> = xs
            .iter()
            .filter(same)
            .map(|r| r.curve.iter().map(|p| p.acc_extrapolated).collect())
            .collect();
        c.series.push(Series::over_runs(
            format!("{l} supervised"),
            Mark::Line,
            color(i),
            x.clone(),
            &sup,
        ));
        if ext.iter().flatten().any(|v| v.is_finite()) {
            c.series.push(Series::over_runs(
                format!("{l} extrapolated"),
                Mark::Dashed,
                color(i),
                x,
                &ext,
            ));
        }
    }
    c
}

/// Exact scores of uniform attention on `count` test sentences of length `n_var`: the level a
/// head that has not specialised shows.
pub fn uniform_scores(n_var: usize, count: usize) -> Result<(f64, f64)> {
    let sents = Variant::Shuffled.sample(n_var, count, crate::lego::seeds::UNIFORM_REFERENCE)?;
    let t = crate::lego::task::seq_len(n_var);
    let u = uniform_attention(t);
    let (mut a, mut w) = (Vec::new(), Vec::new());
    for s in &sents {
        let sc = score_head(u.view(), &s.tokens)?;
        a.extend(sc.association);
        w.extend(sc.window_locality);
    }
    Ok((mean(&a), mean(&w)))
}
