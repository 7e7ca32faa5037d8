//! The six sparse-token-selection figures, each measured beside what the theory predicts:
//! the loss curve against the scalar recursion, the attention mass on the selected tokens, the
//! loss floor against d_e, length generalisation, FCN test error against width with its lower
//! bound, and the width each model needs against T (the separation).
//!
//! Configs: `experiments/sts/figures/<name>.toml`, one table per preset (`cpu`, `paper`, `tiny`).
//! Transformer runs are memoised within one process, so figures that share a run train it once.

use super::config::{with_de, with_fixed_table};
use super::experiments::{
    check_file, losses_at_lengths, predicted_at_lengths, separation_rows, steps_of, train_fcn_grid,
    train_memo, train_seeds, widest_unreached, AttentionMassConfig, FigureConfig, FloorVsDeConfig,
    LengthGeneralisationConfig,
};
pub use super::experiments::{FcnWidthConfig, LossCurveConfig, SeparationConfig};
use super::seeds;
use super::task::TaskConfig;
pub use super::theory::THEORY_SEED;
use super::theory::{
    fcn_bound_curve, fcn_lower_bound_closed_form, fitted_exponent, loss_at_zero, predicted_curve,
    theory_floor, EncodingSample, C_MAX,
};
use super::train::{CurvePoint, TransformerResult};
use crate::plot::figure::{Figure, FigureContext, FigureOutput};
use crate::plot::{Chart, Corner, Mark, Series, COLORS};
use anyhow::Result;
use indicatif::ProgressBar;
use rayon::prelude::*;
use serde_json::json;
use std::sync::Arc;

fn check<P: FigureConfig>(path: &std::path::Path) -> Result<()> {
    check_file::<P>(path).map(|_| ())
}

pub fn figures() -> Vec<Figure> {
    let figure = |name, what, compute, check| Figure {
        name,
        what,
        config: None,
        compute,
        check,
    };
    vec![
        figure("sts/loss_curve", "population loss vs GD step (log-log) at two batch sizes beside the scalar recursion's L(c_t), and W's off-identity fraction.", loss_curve, check::<LossCurveConfig>),
        figure("sts/attention_mass", "attention mass on the selected tokens vs step (mean and worst case over the test set) beside the prediction.", attention_mass, check::<AttentionMassConfig>),
        figure("sts/floor_vs_de", "loss floor vs d_e (log-log): theory floor L(c*) and measured final loss, with fitted exponents.", floor_vs_de, check::<FloorVsDeConfig>),
        figure("sts/length_generalisation", "test loss vs test length T' (up to 8T) for stochastic and fixed encodings, beside the prediction L_T'(c).", length_generalisation, check::<LengthGeneralisationConfig>),
        figure("sts/fcn_width", "FCN test MSE vs first-layer width m over seeds, its lower bound, each net's certificate, and the transformer's loss.", fcn_width, check::<FcnWidthConfig>),
        figure("sts/separation", "width needed to reach a target error vs T: FCN width m against transformer d_e, measured and from the bounds.", separation, check::<SeparationConfig>),
    ]
}

// ---------------------------------------------------------------------------------------------
// Shared machinery

fn load<P: FigureConfig>(ctx: &FigureContext) -> Result<P> {
    Ok(check_file::<P>(ctx.config)?.preset(ctx.preset))
}

fn bar(ctx: &FigureContext, total: u64, what: &str) -> ProgressBar {
    crate::progress::bar(total, what, ctx.quiet)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Evaluation steps of a run, shifted by one so that step 0 fits on a log axis.
fn step_axis(r: &TransformerResult) -> Vec<f64> {
    r.curve.iter().map(|p| p.step as f64 + 1.0).collect()
}

fn per_run<F: Fn(&CurvePoint) -> f64>(runs: &[Arc<TransformerResult>], f: F) -> Vec<Vec<f64>> {
    runs.iter()
        .map(|r| r.curve.iter().map(&f).collect())
        .collect()
}

const STEP_LABEL: &str = "GD step t + 1 (steps)";

// ---------------------------------------------------------------------------------------------
// 1. loss_curve

fn loss_curve(ctx: &FigureContext) -> Result<FigureOutput> {
    let p: LossCurveConfig = load(ctx)?;
    let total = steps_of(&p.run) * (p.seeds.len() * p.batches.len()) as u64;
    let pb = bar(ctx, total, "sts/loss_curve: training");
    let mut loss = Chart {
        title: "Population loss: measured vs scalar recursion".into(),
        x_label: STEP_LABEL.into(),
        y_label: "population loss (squared error)".into(),
        x_log: true,
        y_log: true,
        ..Default::default()
    };
    let mut off = Chart {
        title: "W off the identity direction".into(),
        x_label: STEP_LABEL.into(),
        y_label: "||W - c I||_F / ||W||_F".into(),
        x_log: true,
        legend: Corner::UpperRight,
        ..Default::default()
    };
    let mut summary = serde_json::Map::new();
    let mut x_axis = Vec::new();
    for (i, &b) in p.batches.iter().enumerate() {
        let mut cfg = p.run.clone();
        if let Some(tc) = cfg.transformer.as_mut() {
            tc.batch = b;
        }
        let runs = train_seeds(&cfg, &p.seeds, &pb)?;
        x_axis = step_axis(&runs[0]);
        let color = COLORS[i % COLORS.len()];
        loss.series.push(Series::over_runs(
            format!("measured, batch {b}"),
            Mark::Line,
            color,
            x_axis.clone(),
            &per_run(&runs, |p| p.loss),
        ));
        // At step 0 W = 0 and the fraction is undefined: start at the first step.
        let off_runs: Vec<Vec<f64>> = per_run(&runs, |p| p.off_identity)
            .into_iter()
            .map(|r| r[1..].to_vec())
            .collect();
        off.series.push(Series::over_runs(
            format!("measured, batch {b}"),
            Mark::Line,
            color,
            x_axis[1..].to_vec(),
            &off_runs,
        ));
        let finals: Vec<f64> = runs.iter().map(|r| r.last().loss).collect();
        let pred_same: Vec<f64> = runs.iter().map(|r| r.last().pred_loss).collect();
        summary.insert(
            format!("batch_{b}"),
            json!({
                "final_loss_mean": mean(&finals),
                "final_loss_min": finals.iter().cloned().fold(f64::INFINITY, f64::min),
                "final_loss_max": finals.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                "excess_over_prediction_same_test_set": mean(&finals) / mean(&pred_same) - 1.0,
                "final_off_identity_mean": mean(&runs.iter().map(|r| r.last().off_identity).collect::<Vec<_>>()),
            }),
        );
    }
    pb.finish_and_clear();
    let steps: Vec<usize> = x_axis.iter().map(|&x| x as usize - 1).collect();
    let (sample, cs) = predicted_curve(&p.run, &steps)?;
    let pred: Vec<f64> = cs.iter().map(|&c| sample.at(c).loss.mean).collect();
    let floor = sample.minimise(C_MAX);
    loss.series.push(Series::new(
        "theory L(c_t), scalar recursion",
        Mark::Dashed,
        COLORS[6],
        x_axis.clone(),
        pred.clone(),
    ));
    let (x0, x1) = (x_axis[0], *x_axis.last().unwrap_or(&1.0));
    loss.series.push(Series::hline(
        format!("floor L(c*) = {:.3}", floor.loss.mean),
        COLORS[3],
        floor.loss.mean,
        x0,
        x1,
    ));
    summary.insert(
        "predicted_final_loss".into(),
        json!(pred.last().copied().unwrap_or(f64::NAN)),
    );
    summary.insert("floor".into(), json!(floor.loss.mean));
    summary.insert("c_star".into(), json!(floor.c));
    summary.insert(
        "loss_at_zero".into(),
        json!(loss_at_zero(p.run.task.t, p.run.task.d, p.run.task.q)),
    );
    Ok(FigureOutput {
        charts: vec![loss, off],
        summary: serde_json::Value::Object(summary),
    })
}

// ---------------------------------------------------------------------------------------------
// 2. attention_mass

fn attention_mass(ctx: &FigureContext) -> Result<FigureOutput> {
    let p: AttentionMassConfig = load(ctx)?;
    let pb = bar(
        ctx,
        steps_of(&p.run) * p.seeds.len() as u64,
        "sts/attention_mass: training",
    );
    let runs = train_seeds(&p.run, &p.seeds, &pb)?;
    pb.finish_and_clear();
    let x = step_axis(&runs[0]);
    let steps: Vec<usize> = runs[0].curve.iter().map(|p| p.step).collect();
    let (sample, cs) = predicted_curve(&p.run, &steps)?;
    // The worst case depends on how many examples it is taken over: take it over a sample as
    // large as the test set.
    let same_size = EncodingSample::draw(
        &p.run.task,
        p.run.eval.samples,
        None,
        seeds::THEORY_TEST_SIZED,
    )?;
    let pred_mean: Vec<f64> = cs.iter().map(|&c| sample.at(c).mass.mean).collect();
    let pred_min: Vec<f64> = cs.iter().map(|&c| same_size.at(c).mass_min).collect();
    let chart = Chart {
        title: "Attention mass on the q selected tokens".into(),
        x_label: STEP_LABEL.into(),
        y_label: "attention mass on selected tokens (fraction)".into(),
        x_log: true,
        legend: Corner::UpperLeft,
        series: vec![
            Series::over_runs(
                "measured mean over test set",
                Mark::Line,
                COLORS[0],
                x.clone(),
                &per_run(&runs, |p| p.mass_mean),
            ),
            Series::over_runs(
                "measured worst case over test set",
                Mark::Line,
                COLORS[1],
                x.clone(),
                &per_run(&runs, |p| p.mass_min),
            ),
            Series::new(
                "theory mean at c_t",
                Mark::Dashed,
                COLORS[6],
                x.clone(),
                pred_mean.clone(),
            ),
            Series::new(
                "theory worst case at c_t",
                Mark::Dashed,
                COLORS[3],
                x.clone(),
                pred_min.clone(),
            ),
        ],
        ..Default::default()
    };
    let fin =
        |f: fn(&CurvePoint) -> f64| mean(&runs.iter().map(|r| f(r.last())).collect::<Vec<_>>());
    Ok(FigureOutput {
        charts: vec![chart],
        summary: json!({
            "final_mass_mean": fin(|p| p.mass_mean),
            "final_mass_min": fin(|p| p.mass_min),
            "predicted_final_mass_mean": pred_mean.last(),
            "predicted_final_mass_min": pred_min.last(),
            "uniform_attention_mass": p.run.task.q as f64 / p.run.task.t as f64,
        }),
    })
}

// ---------------------------------------------------------------------------------------------
// 3. floor_vs_de

fn floor_vs_de(ctx: &FigureContext) -> Result<FigureOutput> {
    let p: FloorVsDeConfig = load(ctx)?;
    let total: u64 = steps_of(&p.run) * (p.seeds.len() * p.des.len()) as u64;
    let pb = bar(ctx, total, "sts/floor_vs_de: training");
    let mut measured_runs: Vec<Vec<f64>> = vec![Vec::new(); p.seeds.len()];
    for &de in &p.des {
        let runs = train_seeds(&with_de(&p.run, de), &p.seeds, &pb)?;
        for (s, r) in runs.iter().enumerate() {
            measured_runs[s].push(r.last().loss);
        }
    }
    pb.finish_and_clear();
    let mut all_des: Vec<usize> = p.des.iter().chain(&p.theory_des).copied().collect();
    all_des.sort_unstable();
    all_des.dedup();
    let floors: Vec<f64> = all_des
        .par_iter()
        .map(|&de| {
            theory_floor(
                &TaskConfig {
                    de,
                    ..p.run.task.clone()
                },
                p.run.eval.theory_samples,
            )
        })
        .collect::<Result<_>>()?;
    let xs: Vec<f64> = p.des.iter().map(|&d| d as f64).collect();
    let floors_at_des: Vec<f64> = p
        .des
        .iter()
        .map(|de| floors[all_des.iter().position(|x| x == de).unwrap_or(0)])
        .collect();
    let measured_mean: Vec<f64> = (0..p.des.len())
        .map(|i| mean(&measured_runs.iter().map(|r| r[i]).collect::<Vec<_>>()))
        .collect();
    let (a_theory, a_measured) = (
        fitted_exponent(&xs, &floors_at_des),
        fitted_exponent(&xs, &measured_mean),
    );
    let chart = Chart {
        title: format!(
            "Loss floor vs d_e (T={}, d={}, q={})",
            p.run.task.t, p.run.task.d, p.run.task.q
        ),
        x_label: "positional-encoding dimension d_e".into(),
        y_label: "final loss or floor L(c*) (squared error)".into(),
        x_log: true,
        y_log: true,
        legend: Corner::UpperRight,
        series: vec![
            Series::over_runs(
                format!("measured final loss, slope {a_measured:.2}"),
                Mark::LinePoints,
                COLORS[0],
                xs.clone(),
                &measured_runs,
            ),
            Series::new(
                format!("theory floor L(c*), slope {a_theory:.2}"),
                Mark::Dashed,
                COLORS[6],
                all_des.iter().map(|&d| d as f64).collect(),
                floors.clone(),
            ),
        ],
    };
    Ok(FigureOutput {
        charts: vec![chart],
        summary: json!({
            "des": p.des,
            "measured_final_loss_mean": measured_mean,
            "theory_floor": floors_at_des,
            "fitted_exponent_measured": a_measured,
            "fitted_exponent_theory": a_theory,
            "theory_des": all_des,
            "theory_floor_all": floors,
        }),
    })
}

// ---------------------------------------------------------------------------------------------
// 4. length_generalisation

fn length_generalisation(ctx: &FigureContext) -> Result<FigureOutput> {
    let p: LengthGeneralisationConfig = load(ctx)?;
    let fixed_cfg = with_fixed_table(&p.run);
    let pb = bar(
        ctx,
        2 * steps_of(&p.run) * p.seeds.len() as u64,
        "sts/length_generalisation: training",
    );
    let spe = train_seeds(&p.run, &p.seeds, &pb)?;
    let fixed = train_seeds(&fixed_cfg, &p.seeds, &pb)?;
    pb.finish_and_clear();
    let spe_loss = losses_at_lengths(&spe, &p.run.task, &p.test_lengths, p.test_samples, &p.seeds)?;
    let fixed_loss = losses_at_lengths(
        &fixed,
        &fixed_cfg.task,
        &p.test_lengths,
        p.test_samples,
        &p.seeds,
    )?;
    // The prediction made before testing: L_T'(c) with each seed's learned c.
    let pred = predicted_at_lengths(
        &spe,
        &p.run.task,
        &p.test_lengths,
        p.run.eval.theory_samples,
    )?;
    let xs: Vec<f64> = p.test_lengths.iter().map(|&t| t as f64).collect();
    let task = &p.run.task;
    let chart = Chart {
        title: format!("Length generalisation (trained at T = {})", task.t),
        x_label: "test sequence length T' (tokens)".into(),
        y_label: "test loss (squared error)".into(),
        x_log: true,
        y_log: true,
        legend: Corner::LowerRight,
        series: vec![
            Series::over_runs(
                "stochastic encodings, measured",
                Mark::LinePoints,
                COLORS[0],
                xs.clone(),
                &spe_loss,
            ),
            Series::over_runs(
                "prediction L_T'(c), learned c",
                Mark::Dashed,
                COLORS[6],
                xs.clone(),
                &pred,
            ),
            Series::over_runs(
                "fixed table, measured",
                Mark::LinePoints,
                COLORS[1],
                xs.clone(),
                &fixed_loss,
            ),
            Series::new(
                "W = 0 (uniform attention)",
                Mark::Dashed,
                COLORS[3],
                xs.clone(),
                p.test_lengths
                    .iter()
                    .map(|&t| loss_at_zero(t, task.d, task.q))
                    .collect(),
            ),
        ],
    };
    let col = |m: &[Vec<f64>]| -> Vec<f64> {
        (0..xs.len())
            .map(|i| mean(&m.iter().map(|r| r[i]).collect::<Vec<_>>()))
            .collect()
    };
    Ok(FigureOutput {
        charts: vec![chart],
        summary: json!({
            "test_lengths": p.test_lengths,
            "stochastic_mean": col(&spe_loss),
            "prediction_mean": col(&pred),
            "fixed_mean": col(&fixed_loss),
            "learned_c": spe.iter().map(|r| r.last().c).collect::<Vec<_>>(),
        }),
    })
}

// ---------------------------------------------------------------------------------------------
// 5. fcn_width

fn fcn_width(ctx: &FigureContext) -> Result<FigureOutput> {
    let p: FcnWidthConfig = load(ctx)?;
    let task = &p.run.task;
    let total = p.fcn.steps as u64 * (p.widths.len() * p.seeds.len()) as u64 + steps_of(&p.run);
    let pb = bar(ctx, total, "sts/fcn_width: training");
    let nets = train_fcn_grid(&p.fcn, task, &p.widths, &p.seeds, &pb)?;
    let transformer = train_memo(&p.run, &pb)?;
    pb.finish_and_clear();
    let xs: Vec<f64> = p.widths.iter().map(|&w| w as f64).collect();
    let mse: Vec<Vec<f64>> = (0..p.seeds.len())
        .map(|s| nets.iter().map(|n| n[s].test_mse).collect())
        .collect();
    let (cx, cy): (Vec<f64>, Vec<f64>) = nets
        .iter()
        .flatten()
        .map(|n| (n.width as f64, n.certificate))
        .unzip();
    let td = task.t * task.d;
    let m_max = (*p.widths.iter().max().unwrap_or(&1)).max(td);
    let (bound_m, bound) = fcn_bound_curve(task.t, task.d, task.q, m_max, &p.widths)?;
    let t_loss = transformer.last().loss;
    let (x0, x1) = (bound_m[0] as f64, m_max as f64);
    let chart = Chart {
        title: format!(
            "FCN vs width (T={}, d={}, q={}, T d = {td})",
            task.t, task.d, task.q
        ),
        x_label: "FCN first-layer width m (units)".into(),
        y_label: "test MSE".into(),
        x_log: true,
        y_log: false,
        legend: Corner::UpperRight,
        series: vec![
            Series::over_runs(
                "FCN test MSE",
                Mark::LinePoints,
                COLORS[0],
                xs.clone(),
                &mse,
            ),
            Series::new("each net's certificate", Mark::Points, COLORS[1], cx, cy),
            Series::new(
                "lower bound, any FCN of width m",
                Mark::Dashed,
                COLORS[6],
                bound_m.iter().map(|&m| m as f64).collect(),
                bound.clone(),
            ),
            Series::hline(
                format!("transformer, d_e = {} (measured)", task.de),
                COLORS[2],
                t_loss,
                x0,
                x1,
            ),
        ],
    };
    Ok(FigureOutput {
        charts: vec![chart],
        summary: json!({
            "widths": p.widths,
            "fcn_test_mse_mean": (0..xs.len()).map(|i| mean(&mse.iter().map(|r| r[i]).collect::<Vec<_>>())).collect::<Vec<_>>(),
            "fcn_test_mse_by_seed": nets.iter().map(|n| n.iter().map(|r| r.test_mse).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "certificate_by_seed": nets.iter().map(|n| n.iter().map(|r| r.certificate).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "certificate_mean": nets.iter().map(|n| mean(&n.iter().map(|r| r.certificate).collect::<Vec<_>>())).collect::<Vec<_>>(),
            "lower_bound": p.widths.iter().map(|&m| fcn_lower_bound_closed_form(task.t, task.d, task.q, m)).collect::<Result<Vec<_>>>()?,
            "transformer_loss": t_loss,
            "transformer_floor": transformer.floor,
        }),
    })
}

// ---------------------------------------------------------------------------------------------
// 6. separation

fn separation(ctx: &FigureContext) -> Result<FigureOutput> {
    let p: SeparationConfig = load(ctx)?;
    let seeds = p.all_seeds();
    let total = (p.transformer.steps * p.des.len() + p.fcn.steps * p.width_factors.len()) as u64
        * (p.ts.len() * seeds.len()) as u64;
    let pb = bar(ctx, total, "sts/separation: training");
    let rows_by_seed = seeds
        .iter()
        .map(|&s| {
            let mut one = p.clone();
            one.seed = s;
            separation_rows(&one, &pb)
        })
        .collect::<Result<Vec<_>>>()?;
    let rows = rows_by_seed[0].clone();
    pb.finish_and_clear();
    let xs: Vec<f64> = p.ts.iter().map(|&t| t as f64).collect();
    let get = |k: &str| -> Vec<f64> {
        rows.iter()
            .map(|r| r[k].as_f64().unwrap_or(f64::NAN))
            .collect()
    };
    let chart = Chart {
        title: format!(
            "Width needed for error <= {} L(0) (d={}, q={})",
            p.target_fraction, p.d, p.q
        ),
        x_label: "sequence length T (tokens)".into(),
        y_label: "width needed (FCN: m, transformer: d_e)".into(),
        x_log: true,
        y_log: true,
        legend: Corner::UpperLeft,
        series: vec![
            Series::new(
                "FCN, measured",
                Mark::LinePoints,
                COLORS[1],
                xs.clone(),
                get("fcn_width_measured"),
            ),
            Series::new(
                "FCN, target not reached at the widest net tried",
                Mark::Points,
                COLORS[3],
                xs.clone(),
                widest_unreached(&rows),
            ),
            Series::new(
                "FCN, lower bound solved for m",
                Mark::Dashed,
                COLORS[1],
                xs.clone(),
                get("fcn_width_bound"),
            ),
            Series::new(
                "transformer, measured d_e",
                Mark::LinePoints,
                COLORS[0],
                xs.clone(),
                get("transformer_de_measured"),
            ),
            Series::new(
                "transformer, theory floor solved for d_e",
                Mark::Dashed,
                COLORS[0],
                xs.clone(),
                get("transformer_de_theory"),
            ),
        ],
    };
    Ok(FigureOutput {
        charts: vec![chart],
        summary: json!({
            "target_fraction": p.target_fraction,
            "d": p.d,
            "q": p.q,
            "seeds": seeds,
            "rows": rows,
            "rows_by_seed": rows_by_seed,
        }),
    })
}
