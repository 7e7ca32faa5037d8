//! The run engine: one driver owns every training run of every paper.
//!
//! A paper's trainer implements [`Trainer`] (one update, one evaluation, save and load its
//! state); [`drive`] does the rest the same way for all of them: the run directory and its lock
//! ([`RunDir`]), the identity check, resume from the last checkpoint ([`State`], one safetensors
//! format with a checksum), the evaluation and checkpoint schedule, the progress bar, the metrics
//! log (`metrics.csv`: `step, wall_s, lr, train_loss`, then the trainer's columns), divergence
//! detection, and Ctrl-C (save, then [`Interrupted`], exit 130).

pub mod dir;
pub mod error;
pub mod state;

pub use dir::{Identity, Lock, RunDir};
pub use error::{exit_code, failed, Interrupted, RunFailed};
pub use state::State;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What one update reports.
#[derive(Clone, Copy, Debug)]
pub struct StepOutcome {
    /// Training loss of the update's batch.
    pub loss: f64,
    /// Global gradient norm, where the trainer computes one.
    pub grad_norm: Option<f64>,
}

impl StepOutcome {
    pub fn loss(loss: f64) -> Self {
        Self {
            loss,
            grad_norm: None,
        }
    }
}

/// One paper's training loop, as the engine sees it. Steps count optimiser updates: `step(s)`
/// makes update `s + 1`; `evaluate(s)` measures the model after `s` updates.
pub trait Trainer {
    /// Updates the run makes in total.
    fn total_steps(&self) -> u64;
    /// Names of the values [`Trainer::evaluate`] returns, in order.
    fn eval_columns(&self) -> Vec<String>;
    /// Whether to evaluate after `step` updates (`0`: before the first). The engine always
    /// evaluates after the last update.
    fn eval_due(&self, step: u64) -> bool;
    /// Whether to checkpoint after `step` updates, besides every evaluation, the end and a stop.
    fn checkpoint_due(&self, _step: u64) -> bool {
        false
    }
    /// Learning rate of the next update (logged at every evaluation).
    fn lr(&self) -> f64;
    /// Makes update `step + 1`.
    fn step(&mut self, step: u64) -> Result<StepOutcome>;
    /// Measures the model after `step` updates.
    fn evaluate(&mut self, step: u64) -> Result<Vec<f64>>;
    /// Writes everything needed to continue into `state`.
    fn save(&self, state: &mut State) -> Result<()>;
    /// Restores what [`Trainer::save`] wrote.
    fn load(&mut self, state: &State) -> Result<()>;
    /// A divergence rule beyond non-finite numbers (e.g. a loss far above its start): `Some`
    /// names what went wrong and stops the run.
    fn diverged(&self, _step: u64, _outcome: &StepOutcome) -> Option<String> {
        None
    }
}

/// How [`drive`] runs a trainer.
pub struct DriveOpts<'a> {
    /// The run directory (locked, identity checked); `None` keeps nothing on disk.
    pub dir: Option<&'a RunDir>,
    /// Name of the stage within the run: `"train"` writes `checkpoint.safetensors` and
    /// `metrics.csv`, another name `<name>.checkpoint.safetensors` and `<name>.metrics.csv`.
    pub phase: &'a str,
    /// Progress-bar label; `None` hides the bar.
    pub progress: Option<String>,
    /// Polled before every update: true saves and stops with [`Interrupted`].
    pub stop: &'a (dyn Fn() -> bool + Sync),
}

impl<'a> DriveOpts<'a> {
    /// A run in `dir` (or none), phase `train`, stopped by Ctrl-C, bar hidden.
    pub fn new(dir: Option<&'a RunDir>) -> Self {
        Self {
            dir,
            phase: "train",
            progress: None,
            stop: &crate::interrupt::requested,
        }
    }
}

/// One row of the metrics log: `step, wall_s, lr, train_loss`, then the trainer's values.
/// `train_loss` is the mean over the updates since the previous evaluation (NaN at step 0).
pub type Row = Vec<f64>;

/// The columns every metrics log starts with.
pub const BASE_COLUMNS: [&str; 4] = ["step", "wall_s", "lr", "train_loss"];

/// What a finished [`drive`] hands back.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Column names of `rows`.
    pub columns: Vec<String>,
    /// Every evaluation of the run, resumed ones included.
    pub rows: Vec<Row>,
    /// The step a checkpoint resumed from (`Some(total)` when the run was already finished).
    pub resumed_from: Option<u64>,
    /// Wall seconds spent training over all sessions of the run.
    pub wall_seconds: f64,
}

impl Outcome {
    /// The values of column `name`, one per evaluation.
    pub fn column(&self, name: &str) -> Option<Vec<f64>> {
        let i = self.columns.iter().position(|c| c == name)?;
        Some(self.rows.iter().map(|r| r[i]).collect())
    }
}

/// The engine's own part of a checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Progress {
    step: u64,
    loss_sum: f64,
    loss_n: u64,
    wall: f64,
    /// Rows with NaN as `null` (JSON has no NaN).
    rows: Vec<Vec<Option<f64>>>,
}

fn to_json_row(r: &[f64]) -> Vec<Option<f64>> {
    r.iter().map(|x| x.is_finite().then_some(*x)).collect()
}

fn from_json_row(r: &[Option<f64>]) -> Row {
    r.iter().map(|x| x.unwrap_or(f64::NAN)).collect()
}

/// File names of a phase's checkpoint and metrics log.
pub fn phase_files(phase: &str) -> (String, String) {
    if phase == "train" {
        ("checkpoint.safetensors".into(), "metrics.csv".into())
    } else {
        (
            format!("{phase}.checkpoint.safetensors"),
            format!("{phase}.metrics.csv"),
        )
    }
}

/// The checkpoint file of `phase` in run directory `dir`.
pub fn checkpoint_path(dir: &Path, phase: &str) -> PathBuf {
    dir.join(phase_files(phase).0)
}

/// Reads the checkpoint of `phase` in `dir`, restores `trainer` from it and returns the step it
/// was written at, after checking it belongs to `identity` (for tools that inspect a finished or
/// interrupted run without training it).
pub fn load_checkpoint<T: Trainer + ?Sized>(
    dir: &Path,
    phase: &str,
    identity: &Identity,
    trainer: &mut T,
) -> Result<u64> {
    let path = checkpoint_path(dir, phase);
    if !path.exists() {
        anyhow::bail!(
            "no checkpoint `{}`: train the run first (the same command with the same config, preset and seed)",
            path.display()
        );
    }
    let st = State::read(&path)?;
    check_identity(&st, &path, identity)?;
    trainer.load(&st).map_err(|e| {
        failed(format!(
            "checkpoint `{}` does not fit the model ({e:#}): delete it to start the run over",
            path.display()
        ))
    })?;
    Ok(st.json::<Progress>("engine")?.step)
}

fn check_identity(st: &State, path: &Path, identity: &Identity) -> Result<()> {
    let held: String = st.json("identity")?;
    if held != identity.hash {
        anyhow::bail!(
            "checkpoint `{}` was written by another run (a different config, preset or seed): pass another output directory, or delete it to start over",
            path.display()
        );
    }
    Ok(())
}

fn csv_field(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        String::new()
    }
}

fn write_metrics(path: &Path, columns: &[String], rows: &[Row]) -> Result<()> {
    let mut s = columns.join(",");
    s.push('\n');
    for r in rows {
        let line: Vec<String> = r.iter().map(|&x| csv_field(x)).collect();
        s.push_str(&line.join(","));
        s.push('\n');
    }
    crate::io::write_atomic(path, s.as_bytes())
}

/// Runs `trainer` to its last step as `opts` says: resumes from the phase's checkpoint when
/// there is one, evaluates on the trainer's schedule, checkpoints at every evaluation (and where
/// the trainer asks), stops on divergence without saving, and on `opts.stop` saves and returns
/// [`Interrupted`].
pub fn drive<T: Trainer + ?Sized>(trainer: &mut T, opts: &DriveOpts) -> Result<Outcome> {
    let total = trainer.total_steps();
    let mut columns: Vec<String> = BASE_COLUMNS.iter().map(|s| s.to_string()).collect();
    columns.extend(trainer.eval_columns());
    let (ck_name, csv_name) = phase_files(opts.phase);
    let paths = opts
        .dir
        .map(|d| (d.path().join(ck_name), d.path().join(csv_name)));
    let mut p = Progress::default();
    let mut resumed_from = None;
    if let (Some(d), Some((ck, _))) = (opts.dir, paths.as_ref()) {
        if ck.exists() {
            let st = State::read(ck)?;
            check_identity(&st, ck, d.identity())?;
            trainer.load(&st).map_err(|e| {
                failed(format!(
                    "checkpoint `{}` does not fit the model ({e:#}): delete it to start the run over",
                    ck.display()
                ))
            })?;
            p = st.json("engine")?;
            resumed_from = Some(p.step);
        }
    }
    let save = |trainer: &T, p: &Progress| -> Result<()> {
        if let (Some(d), Some((ck, _))) = (opts.dir, paths.as_ref()) {
            let mut st = State::new();
            trainer.save(&mut st)?;
            st.put_json("engine", p)?;
            st.put_json("identity", &d.identity().hash)?;
            st.write(ck)?;
        }
        Ok(())
    };
    let bar = crate::progress::bar(
        total,
        opts.progress.as_deref().unwrap_or(""),
        opts.progress.is_none(),
    );
    bar.set_position(p.step.min(total));
    let started = std::time::Instant::now();
    let wall0 = p.wall;
    let evaluate = |trainer: &mut T, p: &mut Progress| -> Result<()> {
        let step = p.step;
        let values = trainer
            .evaluate(step)
            .map_err(|e| e.context(RunFailed(format!("evaluation at step {step} failed"))))?;
        if values.len() + BASE_COLUMNS.len() != columns.len() {
            return Err(failed(format!(
                "evaluation at step {step} returned {} values for {} columns",
                values.len(),
                columns.len() - BASE_COLUMNS.len()
            )));
        }
        let train_loss = if p.loss_n > 0 {
            p.loss_sum / p.loss_n as f64
        } else {
            f64::NAN
        };
        p.loss_sum = 0.0;
        p.loss_n = 0;
        p.wall = wall0 + started.elapsed().as_secs_f64();
        let mut row = vec![step as f64, p.wall, trainer.lr(), train_loss];
        row.extend(values);
        p.rows.push(to_json_row(&row));
        if let Some((_, csv)) = paths.as_ref() {
            let rows: Vec<Row> = p.rows.iter().map(|r| from_json_row(r)).collect();
            write_metrics(csv, &columns, &rows)?;
        }
        Ok(())
    };
    if p.step == 0 && p.rows.is_empty() && trainer.eval_due(0) {
        evaluate(trainer, &mut p)?;
        if trainer.checkpoint_due(0) {
            save(trainer, &p)?;
        }
    }
    while p.step < total {
        if (opts.stop)() {
            p.wall = wall0 + started.elapsed().as_secs_f64();
            save(trainer, &p)?;
            bar.abandon();
            return Err(Interrupted {
                step: p.step,
                checkpoint: paths.as_ref().map(|(ck, _)| ck.clone()),
            }
            .into());
        }
        let step = p.step;
        let o = trainer
            .step(step)
            .map_err(|e| e.context(RunFailed(format!("training step {} failed", step + 1))))?;
        let bad = if !o.loss.is_finite() {
            Some(format!("the training loss is {}", o.loss))
        } else if let Some(g) = o.grad_norm.filter(|g| !g.is_finite()) {
            Some(format!("the gradient norm is {g}"))
        } else {
            trainer.diverged(step + 1, &o)
        };
        if let Some(why) = bad {
            bar.abandon();
            let kept = match paths.as_ref() {
                Some((ck, _)) if ck.exists() => {
                    format!("; the last good checkpoint `{}` is kept", ck.display())
                }
                _ => String::new(),
            };
            return Err(failed(format!(
                "the run diverged at step {}: {why}{kept}; lower the learning rate",
                step + 1
            )));
        }
        p.step += 1;
        p.loss_sum += o.loss;
        p.loss_n += 1;
        bar.inc(1);
        let eval = trainer.eval_due(p.step) || p.step == total;
        if eval {
            evaluate(trainer, &mut p)?;
        }
        if eval || trainer.checkpoint_due(p.step) || p.step == total {
            p.wall = wall0 + started.elapsed().as_secs_f64();
            save(trainer, &p)?;
        }
    }
    bar.finish_and_clear();
    if resumed_from.is_none() && total == 0 && paths.is_some() {
        save(trainer, &p)?;
    }
    Ok(Outcome {
        columns,
        rows: p.rows.iter().map(|r| from_json_row(r)).collect(),
        resumed_from,
        wall_seconds: p.wall.max(wall0 + started.elapsed().as_secs_f64()),
    })
}
