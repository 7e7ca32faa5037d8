//! The CPU scale of this paper's claims: read from the committed figures (`figures/sts/*.json`)
//! of the CPU preset, no training.

use super::claims::values;
use super::theory::{
    fcn_lower_bound_closed_form, fcn_lower_bound_eigh, fitted_exponent, loss_at_zero,
};
use crate::verify::{Claim, Measured};
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// The CPU scale: the committed figures.

fn figure(dir: &Path, name: &str) -> Result<serde_json::Value> {
    let path = dir.join("sts").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading `{}`: make it with `attnlab figures --only sts/{name}`",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("parsing `{}`", path.display()))
}

fn num(v: &serde_json::Value, path: &str) -> Result<f64> {
    let mut x = v;
    for k in path.split('.') {
        x = &x[k];
    }
    x.as_f64()
        .ok_or_else(|| anyhow!("the figure has no number at `{path}`: regenerate it"))
}

fn nums(v: &serde_json::Value, path: &str) -> Result<Vec<f64>> {
    let mut x = v;
    for k in path.split('.') {
        x = &x[k];
    }
    x.as_array()
        .ok_or_else(|| anyhow!("the figure has no list at `{path}`: regenerate it"))?
        .iter()
        .map(|e| {
            e.as_f64()
                .ok_or_else(|| anyhow!("`{path}` holds a non-number"))
        })
        .collect()
}

/// The series of `chart` labelled `label`: `(x, y)`.
fn series(v: &serde_json::Value, chart: usize, label: &str) -> Result<(Vec<f64>, Vec<f64>)> {
    let s = v["charts"][chart]["series"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["label"] == label))
        .ok_or_else(|| anyhow!("the figure has no series `{label}`: regenerate it"))?;
    Ok((nums(s, "x")?, nums(s, "y")?))
}

/// The CPU preset's figures behind one claim.
pub(super) fn from_figures(c: &Claim, dir: &Path) -> Result<Measured> {
    let name = c.id.strip_prefix("sts/").unwrap_or(&c.id);
    let (t, d, q) = (16usize, 8usize, 3usize);
    let l0 = loss_at_zero(t, d, q);
    let sizes = "T 16, d 8, q 3, d_e 64, batch 4096, 3 seeds (figure means)";
    match name {
        "loss-at-init" => {
            let f = figure(dir, "loss_curve")?;
            let (_, y) = series(&f, 0, "measured, batch 4096")?;
            values(
                vec![(y[0] / l0 - 1.0).abs()],
                format!("{sizes}; step 0 loss {:.4} vs {l0:.4}", y[0]),
            )
        }
        "follows-scalar-recursion" => {
            let f = figure(dir, "loss_curve")?;
            let x = num(
                &f,
                "summary.batch_4096.excess_over_prediction_same_test_set",
            )?;
            values(vec![x.abs()], format!("{sizes}; figure sts/loss_curve"))
        }
        "stays-on-identity" => {
            let f = figure(dir, "loss_curve")?;
            values(
                vec![num(&f, "summary.batch_4096.final_off_identity_mean")?],
                sizes,
            )
        }
        "reaches-floor" => {
            let f = figure(dir, "loss_curve")?;
            let floor = num(&f, "summary.floor")?;
            let v = ["min", "mean", "max"]
                .iter()
                .map(|k| Ok(num(&f, &format!("summary.batch_4096.final_loss_{k}"))? / floor))
                .collect::<Result<Vec<f64>>>()?;
            values(
                vec![v[2]],
                format!("{sizes}; worst seed; mean {:.3}, floor {floor:.4}", v[1]),
            )
        }
        "attention-concentrates" => {
            let f = figure(dir, "attention_mass")?;
            values(
                vec![num(&f, "summary.final_mass_mean")?],
                format!("{sizes}; uniform q/T = 0.1875"),
            )
        }
        "floor-vs-de" => {
            let f = figure(dir, "floor_vs_de")?;
            values(
                vec![num(&f, "summary.fitted_exponent_measured")?],
                format!(
                    "d_e 8..64, 2 seeds; theory exponent {:.3}",
                    num(&f, "summary.fitted_exponent_theory")?
                ),
            )
        }
        "length-generalisation" => {
            let f = figure(dir, "length_generalisation")?;
            let lens = nums(&f, "summary.test_lengths")?;
            let i = lens
                .iter()
                .position(|&x| x == 4.0 * t as f64)
                .ok_or_else(|| anyhow!("no T' = 4T"))?;
            let got = nums(&f, "summary.stochastic_mean")?[i];
            let pred = nums(&f, "summary.prediction_mean")?[i];
            values(
                vec![(got - pred).abs() / pred],
                format!("T 16 -> T' 64, 2 seeds (mean); {got:.4} vs {pred:.4}"),
            )
        }
        "fixed-table-worse" => {
            let f = figure(dir, "length_generalisation")?;
            let lens = nums(&f, "summary.test_lengths")?;
            let i = lens
                .iter()
                .position(|&x| x == 2.0 * t as f64)
                .ok_or_else(|| anyhow!("no T' = 2T"))?;
            let a = nums(&f, "summary.stochastic_mean")?[i];
            let b = nums(&f, "summary.fixed_mean")?[i];
            values(
                vec![b / a],
                format!("T 16 -> T' 32, 2 seeds (mean); fixed {b:.3}, stochastic {a:.3}"),
            )
        }
        "fcn-bound-closed-form" => {
            let mut worst: f64 = 0.0;
            for m in (d..=t * d).step_by(d) {
                let a = fcn_lower_bound_eigh(t, d, q, m)?;
                let b = fcn_lower_bound_closed_form(t, d, q, m)?;
                worst = worst.max((a - b).abs() / (d as f64 / q as f64));
            }
            values(vec![worst], "T 16, d 8, q 3, m = d .. Td")
        }
        "fcn-above-certificate" => {
            let f = figure(dir, "fcn_width")?;
            let (mse, cert, bound) = fcn_per_net(&f)?;
            let mut v: Vec<f64> = mse.iter().zip(&cert).map(|(a, b)| (a - b) / l0).collect();
            v.extend(cert.iter().zip(&bound).map(|(a, b)| (a - b) / l0));
            values(v, "T 16, d 8, q 3; widths 8..256, 3 seeds")
        }
        "fcn-far-above-transformer" | "fcn-at-td-above-transformer" => {
            let f = figure(dir, "fcn_width")?;
            let w = if name == "fcn-far-above-transformer" {
                t * d / 2
            } else {
                t * d
            };
            let widths = nums(&f, "summary.widths")?;
            let i = widths
                .iter()
                .position(|&x| x == w as f64)
                .ok_or_else(|| anyhow!("no width {w}"))?;
            let lt = num(&f, "summary.transformer_loss")?;
            let bound = fcn_lower_bound_closed_form(t, d, q, w)?;
            let per_seed = match f["summary"]["fcn_test_mse_by_seed"].as_array() {
                Some(rows) => rows[i]
                    .as_array()
                    .ok_or_else(|| anyhow!("`fcn_test_mse_by_seed` rows are lists"))?
                    .iter()
                    .filter_map(|x| x.as_f64())
                    .collect(),
                None => vec![nums(&f, "summary.fcn_test_mse_mean")?[i]],
            };
            let v = per_seed
                .iter()
                .map(|m| if w < t * d { (m - bound) / lt } else { m / lt })
                .collect();
            values(v, format!("T 16, d 8, q 3; FCN m = {w}: MSE {per_seed:.3?}, bound {bound:.3}; transformer (d_e 64) {lt:.3}"))
        }
        "width-separation" | "width-d-plus-q-log-t" => {
            let f = figure(dir, "separation")?;
            separation_from(&f, name == "width-separation")
        }
        _ => bail!(
            "`{}` has no measurement at the cpu scale: add it to `src/sts/claims.rs`",
            c.id
        ),
    }
}

/// Per trained net of the `fcn_width` figure (per seed where it records them, else the means):
/// test MSE, certificate, bound.
fn fcn_per_net(f: &serde_json::Value) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let bound = nums(f, "summary.lower_bound")?;
    let flat = |key: &str| -> Option<Vec<f64>> {
        Some(
            f["summary"][key]
                .as_array()?
                .iter()
                .filter_map(|r| r.as_array())
                .flatten()
                .filter_map(|x| x.as_f64())
                .collect(),
        )
    };
    match (flat("fcn_test_mse_by_seed"), flat("certificate_by_seed")) {
        (Some(m), Some(c)) if m.len() == c.len() && !m.is_empty() => {
            let per = m.len() / bound.len();
            let b = bound
                .iter()
                .flat_map(|&b| std::iter::repeat_n(b, per))
                .collect();
            Ok((m, c, b))
        }
        _ => Ok((
            nums(f, "summary.fcn_test_mse_mean")?,
            nums(f, "summary.certificate_mean")?,
            bound,
        )),
    }
}

/// Width-separation slope difference, or the largest needed d_e / (d + q ln T), per seed of the
/// `separation` figure (`rows_by_seed` where it records seeds, else its one seed's `rows`).
fn separation_from(f: &serde_json::Value, slope: bool) -> Result<Measured> {
    let d = num(f, "summary.d").unwrap_or(4.0);
    let q = num(f, "summary.q").unwrap_or(2.0);
    let sets: Vec<&serde_json::Value> = match f["summary"]["rows_by_seed"].as_array() {
        Some(s) => s.iter().collect(),
        None => vec![&f["summary"]["rows"]],
    };
    let mut v = Vec::new();
    let mut notes = Vec::new();
    for rows in sets {
        let rows = rows
            .as_array()
            .ok_or_else(|| anyhow!("the separation figure has no rows: regenerate it"))?;
        let (mut ts, mut fw, mut tw) = (vec![], vec![], vec![]);
        for r in rows {
            let t = num(r, "t")?;
            let widest = nums(r, "fcn_widths")?.last().copied().unwrap_or(f64::NAN);
            ts.push(t);
            fw.push(r["fcn_width_measured"].as_f64().unwrap_or(widest));
            tw.push(num(r, "transformer_de_measured")?);
        }
        if slope {
            v.push(fitted_exponent(&ts, &fw) - fitted_exponent(&ts, &tw));
            notes.push(format!("FCN {fw:.0?} vs d_e {tw:.1?}"));
        } else {
            let worst = ts
                .iter()
                .zip(&tw)
                .map(|(t, w)| w / (d + q * t.ln()))
                .fold(f64::NEG_INFINITY, f64::max);
            v.push(worst);
            notes.push(format!("d_e {tw:.1?}"));
        }
    }
    values(
        v,
        format!("d 4, q 2, T 8/16/32, target 0.3 L(0); {}", notes.join("; ")),
    )
}
