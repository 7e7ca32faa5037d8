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
