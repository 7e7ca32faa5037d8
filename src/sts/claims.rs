//! This paper's claims of the ledger (`experiments/claims/sts.toml`), measured for
//! `attnlab verify`.
//!
//! - **quick**: small runs trained here through the run engine (`<runs>/sts/<name>-seed<S>/`, so
//!   a second `verify` reuses them): T 8, d 4, q 2, reference d_e 8, two seeds, d_e 4 and 16 for
//!   the floor's exponent, a fixed-table run, and FCNs of width Td/2 and Td over three seeds.
//! - **cpu**: read from the committed figures (`figures/sts/*.json`), no training.
//! - **paper**: the `[paper]` preset of `experiments/sts/train.toml` (T 64, d_e 256), trained here
//!   like the quick runs; claims that need more runs say why they are not shown.

use super::config::TransformerConfig;
use super::config::{with_de, with_fixed_table, EvalConfig, FcnConfig, FcnOptimizer, RunConfig};
use super::experiments::measure_at_length;
use super::fcn::{drive_fcn, FcnResult};
use super::model::ExactTransformer;
use super::task::TaskConfig;
use super::theory::{
    fcn_lower_bound_closed_form, fcn_lower_bound_eigh, fitted_exponent, loss_at_zero,
    EncodingSample, THEORY_SEED,
};
use super::train::{drive_transformer, TransformerResult};
use crate::config::Preset;
use crate::run::{DriveOpts, Identity, Interrupted, RunDir};
use crate::verify::{Claim, Ctx, Measured, Scale};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;

/// Measures `claims` at `ctx.scale`, one result per claim.
pub fn measure(claims: &[&Claim], ctx: &Ctx) -> Result<Vec<Result<Measured>>> {
    match ctx.scale {
        Scale::Cpu => Ok(claims
            .iter()
            .map(|c| super::claims_figures::from_figures(c, ctx.figures))
            .collect()),
        Scale::Quick | Scale::Paper => {
            let plan = Plan::new(ctx)?;
            let mut runs = Runs {
                plan,
                ctx,
                cache: HashMap::new(),
                fcns: HashMap::new(),
            };
            let mut out = Vec::new();
            for c in claims {
                let r = runs.claim(c);
                if let Err(e) = &r {
                    if e.downcast_ref::<Interrupted>().is_some() {
                        return Err(r.err().unwrap_or_else(|| anyhow!("interrupted")));
                    }
                }
                out.push(r);
            }
            Ok(out)
        }
    }
}

/// What a trained scale runs: the reference run, its seeds, the d_e of the floor's exponent and
/// the FCNs.
struct Plan {
    base: RunConfig,
    seeds: Vec<u64>,
    des: Vec<usize>,
    fcn: Option<FcnPlan>,
    /// Extra factor on the fixed-table run's lr (beyond `with_fixed_table`'s).
    fixed_lr: f64,
}

struct FcnPlan {
    /// The transformer the FCNs are compared with; the FCNs learn its task.
    run: RunConfig,
    seeds: Vec<u64>,
    /// Adam on fresh batches of `batch`, for as many examples as the reference transformer saw.
    cfg: FcnConfig,
    eval_samples: usize,
}

/// The quick scale's reference run: seconds on one core, and the same symmetry and floor as the
/// CPU preset (lr scaled with d_e like `with_de`: 4.0 at d_e 64 there, 2.0 at d_e 8 here reaches
/// the floor in 300 steps).
pub fn quick_run() -> RunConfig {
    RunConfig {
        seed: 0,
        task: TaskConfig::new(8, 4, 2, 8),
        transformer: Some(TransformerConfig {
            steps: 300,
            lr: 2.0,
            batch: 2048,
            dataset: None,
            precision: Default::default(),
            init_c: 0.0,
        }),
        fcn: None,
        eval: EvalConfig {
            samples: 4096,
            points: 10,
            theory_samples: 4096,
        },
    }
}

impl Plan {
    fn new(ctx: &Ctx) -> Result<Self> {
        match ctx.scale {
            Scale::Quick => {
                // The FCN claims need a task where T d is large enough that width matters: at
                // T 8, d 4 an FCN of width Td learns the task to 0.08 (measured), so they use the
                // CPU preset's task (T 16, d 8, q 3) with a transformer at batch 1024 (9 s) and
                // FCNs given as many examples as that transformer saw.
                let mut run = quick_run();
                run.task = TaskConfig::new(16, 8, 3, 64);
                run.transformer = Some(TransformerConfig {
                    steps: 300,
                    lr: 4.0,
                    batch: 1024,
                    dataset: None,
                    precision: Default::default(),
                    init_c: 0.0,
                });
                run.eval.points = 5;
                let batch = 256;
                let fcn = FcnConfig {
                    width: run.task.t * run.task.d,
                    depth: 2,
                    optimizer: FcnOptimizer::Adam,
                    lr: 3e-3,
                    steps: 300 * 1024 / batch,
                    batch,
                };
                Ok(Self {
                    base: quick_run(),
                    seeds: vec![0, 1],
                    des: vec![4, 8, 16],
                    fcn: Some(FcnPlan {
                        run,
                        seeds: vec![0, 1, 2],
                        cfg: fcn,
                        eval_samples: 8192,
                    }),
                    // At d_e = T the table's rows are far from orthogonal: `with_fixed_table`'s
                    // lr 2 diverges at step 3 and lr 1 at step 5 for seed 1 (measured); lr 0.5
                    // trains to 0.29-0.38 in distribution for seeds 0-2.
                    fixed_lr: 0.25,
                })
            }
            _ => {
                let path = ctx.experiments.join("sts/train.toml");
                let base = super::config::RunFile::load_preset(&path, Preset::Paper, &[])
                    .with_context(|| format!("the paper preset of `{}`", path.display()))?;
                Ok(Self {
                    seeds: vec![base.seed],
                    des: vec![],
                    fcn: None,
                    fixed_lr: 1.0,
                    base,
                })
            }
        }
    }
}

struct Runs<'a> {
    plan: Plan,
    ctx: &'a Ctx<'a>,
    cache: HashMap<String, std::sync::Arc<TransformerResult>>,
    fcns: HashMap<(usize, u64), FcnResult>,
}

pub(super) fn values(values: Vec<f64>, note: impl Into<String>) -> Result<Measured> {
    Ok(Measured::Values {
        values,
        note: note.into(),
    })
}

impl Runs<'_> {
    /// Trains (or reloads from its run directory) one transformer run named `name`.
    fn transformer(
        &mut self,
        name: &str,
        cfg: &RunConfig,
    ) -> Result<std::sync::Arc<TransformerResult>> {
        let key = format!("{name}-seed{}", cfg.seed);
        if let Some(r) = self.cache.get(&key) {
            return Ok(r.clone());
        }
        let path = self.ctx.runs.join("sts").join(&key);
        let dir = RunDir::open(&path, Identity::of(cfg, self.ctx.scale.name(), cfg.seed)?)?;
        let mut opts = DriveOpts::new(Some(&dir));
        opts.progress = (!self.ctx.quiet).then(|| format!("sts {key}"));
        let r = std::sync::Arc::new(drive_transformer(cfg, &opts, None)?);
        self.cache.insert(key, r.clone());
        Ok(r)
    }

    fn reference(&mut self) -> Result<Vec<std::sync::Arc<TransformerResult>>> {
        let seeds = self.plan.seeds.clone();
        seeds
            .iter()
            .map(|&s| {
                let mut c = self.plan.base.clone();
                c.seed = s;
                self.transformer("reference", &c)
            })
            .collect()
    }

    fn fixed(&mut self) -> Result<Vec<std::sync::Arc<TransformerResult>>> {
        let seeds = self.plan.seeds.clone();
        seeds
            .iter()
            .map(|&s| {
                let mut c = self.fixed_config();
                c.seed = s;
                self.transformer("fixed-table", &c)
            })
            .collect()
    }

    fn fixed_config(&self) -> RunConfig {
        let mut c = with_fixed_table(&self.plan.base);
        if let Some(tc) = c.transformer.as_mut() {
            tc.lr *= self.plan.fixed_lr;
        }
        c
    }

    fn fcn(&mut self, width: usize, seed: u64) -> Result<FcnResult> {
        if let Some(r) = self.fcns.get(&(width, seed)) {
            return Ok(r.clone());
        }
        let p = self
            .plan
            .fcn
            .as_ref()
            .ok_or_else(|| anyhow!("no FCN runs at this scale"))?;
        let cfg = FcnConfig {
            width,
            ..p.cfg.clone()
        };
        let task = p.run.task.clone();
        let run = RunConfig {
            seed,
            task: task.clone(),
            transformer: None,
            fcn: Some(cfg.clone()),
            eval: EvalConfig {
                samples: p.eval_samples,
                ..p.run.eval.clone()
            },
        };
        let key = format!("fcn-m{width}-seed{seed}");
        let path = self.ctx.runs.join("sts").join(&key);
        let dir = RunDir::open(&path, Identity::of(&run, self.ctx.scale.name(), seed)?)?;
        let mut opts = DriveOpts::new(Some(&dir));
        opts.phase = "fcn";
        opts.progress = (!self.ctx.quiet).then(|| format!("sts {key}"));
        let r = drive_fcn(&task, &cfg, p.eval_samples, seed, &opts, None)?;
        self.fcns.insert((width, seed), r.clone());
        Ok(r)
    }

    /// The FCN claims, on the FCN plan's task against its transformer.
    fn fcn_claim(&mut self, name: &str) -> Result<Measured> {
        let Some(p) = self.plan.fcn.as_ref() else {
            return Ok(Measured::NotShown("no FCN runs at this scale".into()));
        };
        let run = p.run.clone();
        let seeds = p.seeds.clone();
        let (t, d, q) = (run.task.t, run.task.d, run.task.q);
        let l0 = loss_at_zero(t, d, q);
        let sizes = format!("T {t}, d {d}, q {q}");
        if name == "fcn-above-certificate" {
            let mut v = Vec::new();
            for w in [t * d / 2, t * d] {
                for &s in &seeds {
                    let f = self.fcn(w, s)?;
                    v.push((f.test_mse - f.certificate) / l0);
                    v.push((f.certificate - f.lower_bound) / l0);
                }
            }
            return values(
                v,
                format!("{sizes}; widths Td/2 and Td, {} seeds", seeds.len()),
            );
        }
        let half = name == "fcn-far-above-transformer";
        let w = if half { t * d / 2 } else { t * d };
        let lt = self.transformer("fcn-reference", &run)?.last().loss;
        let (mut v, mut mses) = (Vec::new(), Vec::new());
        for &s in &seeds {
            let f = self.fcn(w, s)?;
            mses.push(f.test_mse);
            v.push(if half {
                (f.test_mse - f.lower_bound) / lt
            } else {
                f.test_mse / lt
            });
        }
        let bound = fcn_lower_bound_closed_form(t, d, q, w)?;
        values(
            v,
            format!(
                "{sizes}; FCN m = {w}: MSE {mses:.3?}, bound {bound:.3}; transformer (d_e {}) {lt:.3}",
                run.task.de
            ),
        )
    }

    fn claim(&mut self, c: &Claim) -> Result<Measured> {
        let task = self.plan.base.task.clone();
        let (t, d, q) = (task.t, task.d, task.q);
        let l0 = loss_at_zero(t, d, q);
        let sizes = format!("T {t}, d {d}, q {q}, d_e {}", task.de);
        let name = c.id.strip_prefix("sts/").unwrap_or(&c.id);
        match name {
            "loss-at-init" => {
                // The exact model at W = 0 on fresh test sets: no training needed.
                let zero = ExactTransformer::<f64>::scaled_identity(d, task.de, 0.0);
                let samples = self.plan.base.eval.samples;
                let v = self
                    .plan
                    .seeds
                    .iter()
                    .map(|&s| {
                        Ok(
                            (measure_at_length(&zero, &task, t, samples, s)?.loss.mean / l0 - 1.0)
                                .abs(),
                        )
                    })
                    .collect::<Result<_>>()?;
                values(
                    v,
                    format!("{sizes}; {samples} test examples per seed; L(0) = {l0:.4}"),
                )
            }
            "follows-scalar-recursion" => {
                let runs = self.reference()?;
                let v = runs
                    .iter()
                    .map(|r| (r.last().loss - r.last().pred_loss).abs() / r.last().pred_loss)
                    .collect();
                let m = &runs[0];
                values(
                    v,
                    format!(
                        "{sizes}; seed {}: loss {:.4} vs L(c_T) {:.4}",
                        self.plan.seeds[0],
                        m.last().loss,
                        m.last().pred_loss
                    ),
                )
            }
            "stays-on-identity" => {
                let runs = self.reference()?;
                values(runs.iter().map(|r| r.last().off_identity).collect(), sizes)
            }
            "reaches-floor" => {
                let runs = self.reference()?;
                let v = runs.iter().map(|r| r.last().loss / r.floor).collect();
                values(
                    v,
                    format!("{sizes}; floor L(c*) {:.4}, L(0) {l0:.4}", runs[0].floor),
                )
            }
            "attention-concentrates" => {
                let runs = self.reference()?;
                values(
                    runs.iter().map(|r| r.last().mass_mean).collect(),
                    format!(
                        "{sizes}; uniform attention gives q/T = {:.3}",
                        q as f64 / t as f64
                    ),
                )
            }
            "floor-vs-de" => {
                if self.plan.des.len() < 2 {
                    return Ok(Measured::NotShown(
                        "needs runs at two or more d_e; this scale trains one".into(),
                    ));
                }
                let des = self.plan.des.clone();
                let mut losses = Vec::new();
                for &de in &des {
                    let cfg = with_de(&self.plan.base, de);
                    let name = if de == task.de {
                        "reference".to_string()
                    } else {
                        format!("de{de}")
                    };
                    losses.push(self.transformer(&name, &cfg)?.last().loss);
                }
                let xs: Vec<f64> = des.iter().map(|&x| x as f64).collect();
                values(
                    vec![fitted_exponent(&xs, &losses)],
                    format!("T {t}, d {d}, q {q}; final loss at d_e {des:?}: {losses:.3?}"),
                )
            }
            "length-generalisation" => {
                let runs = self.reference()?;
                let tp = 4 * t;
                let samples = self.plan.base.eval.samples;
                let mut v = Vec::new();
                for (r, &s) in runs.iter().zip(&self.plan.seeds) {
                    let model = r
                        .model
                        .as_ref()
                        .ok_or_else(|| anyhow!("run kept no model"))?;
                    let got = measure_at_length(model, &task, tp, samples, s)?.loss.mean;
                    let pred = EncodingSample::draw(
                        &task.with_len(tp),
                        self.plan.base.eval.theory_samples,
                        None,
                        THEORY_SEED,
                    )?
                    .at(r.last().c)
                    .loss
                    .mean;
                    v.push((got - pred).abs() / pred);
                }
                values(v, format!("{sizes}; tested at T' = {tp}"))
            }
            "fixed-table-worse" => {
                let spe = self.reference()?;
                let fixed = self.fixed()?;
                let tp = 2 * t;
                let samples = self.plan.base.eval.samples;
                let mut v = Vec::new();
                for ((a, b), &s) in spe.iter().zip(&fixed).zip(&self.plan.seeds) {
                    let ma = a
                        .model
                        .as_ref()
                        .ok_or_else(|| anyhow!("run kept no model"))?;
                    let mb = b
                        .model
                        .as_ref()
                        .ok_or_else(|| anyhow!("run kept no model"))?;
                    let la = measure_at_length(ma, &task, tp, samples, s)?.loss.mean;
                    let ft = with_fixed_table(&self.plan.base).task;
                    let lb = measure_at_length(mb, &ft, tp, samples, s)?.loss.mean;
                    v.push(lb / la);
                }
                values(v, format!("{sizes}; tested at T' = {tp}"))
            }
            "fcn-bound-closed-form" => {
                let mut worst: f64 = 0.0;
                for m in (d..=t * d).step_by(d) {
                    let a = fcn_lower_bound_eigh(t, d, q, m)?;
                    let b = fcn_lower_bound_closed_form(t, d, q, m)?;
                    worst = worst.max((a - b).abs() / (d as f64 / q as f64));
                }
                values(vec![worst], format!("T {t}, d {d}, q {q}, m = d .. Td"))
            }
            "fcn-above-certificate"
            | "fcn-far-above-transformer"
            | "fcn-at-td-above-transformer" => self.fcn_claim(name),
            _ => bail!(
                "`{}` has no measurement at the {} scale: add it to `src/sts/claims.rs`",
                c.id,
                self.ctx.scale.name()
            ),
        }
    }
}
