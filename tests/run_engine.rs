//! The run engine on a toy trainer (scalar least squares by SGD): resume is bit-identical, a
//! damaged checkpoint, another run's directory, a held lock and a diverging run each end with
//! the right error class, and `--set` overrides reach the config.

mod common;

use attnlab::config::{apply_overrides, Preset};
use attnlab::rng::{stream, Rng};
use attnlab::run::{drive, exit_code, DriveOpts, Identity, RunDir, State, StepOutcome, Trainer};
use common::bits_without_wall;
use rand::Rng as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Fits y = 3 x + noise with w <- w - lr * grad on fresh batches.
struct Toy {
    w: f64,
    lr: f64,
    steps: u64,
    rng: Rng,
}

impl Toy {
    fn new(lr: f64, steps: u64) -> Self {
        Self {
            w: 0.0,
            lr,
            steps,
            rng: stream(7, 1),
        }
    }
}

impl Trainer for Toy {
    fn total_steps(&self) -> u64 {
        self.steps
    }
    fn eval_columns(&self) -> Vec<String> {
        vec!["w".into(), "test_loss".into()]
    }
    fn eval_due(&self, step: u64) -> bool {
        step.is_multiple_of(10)
    }
    fn checkpoint_due(&self, step: u64) -> bool {
        step.is_multiple_of(3)
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn step(&mut self, _step: u64) -> anyhow::Result<StepOutcome> {
        let (mut g, mut l) = (0.0, 0.0);
        for _ in 0..8 {
            let x: f64 = self.rng.gen_range(-1.0..1.0);
            let y = 3.0 * x + 0.1 * self.rng.gen_range(-1.0..1.0);
            let r = self.w * x - y;
            g += r * x / 4.0;
            l += r * r / 8.0;
        }
        self.w -= self.lr * g;
        Ok(StepOutcome {
            loss: l,
            grad_norm: Some(g.abs()),
        })
    }
    fn evaluate(&mut self, _step: u64) -> anyhow::Result<Vec<f64>> {
        Ok(vec![self.w, (self.w - 3.0).powi(2) / 3.0])
    }
    fn save(&self, st: &mut State) -> anyhow::Result<()> {
        st.put_f64("w", &[1], &[self.w]);
        st.put_rng("data", &self.rng);
        Ok(())
    }
    fn load(&mut self, st: &State) -> anyhow::Result<()> {
        self.w = st.get_f64("w")?.1[0];
        self.rng = st.rng("data")?;
        Ok(())
    }
}

fn identity(lr: f64) -> Identity {
    Identity::of(&("toy", lr), "tiny", 7).unwrap()
}

#[test]
fn interrupted_and_resumed_run_matches_the_uninterrupted_one_bit_for_bit() {
    let whole = {
        let d = tempfile::tempdir().unwrap();
        let dir = RunDir::open(d.path(), identity(0.1)).unwrap();
        let mut t = Toy::new(0.1, 50);
        let out = drive(&mut t, &DriveOpts::new(Some(&dir))).unwrap();
        (out, t.w)
    };
    let d = tempfile::tempdir().unwrap();
    for stop_after in [7u64, 16, 1] {
        let dir = RunDir::open(d.path(), identity(0.1)).unwrap();
        let mut t = Toy::new(0.1, 50);
        let calls = AtomicU64::new(0);
        let stop = || calls.fetch_add(1, Ordering::SeqCst) >= stop_after;
        let mut opts = DriveOpts::new(Some(&dir));
        opts.stop = &stop;
        let e = drive(&mut t, &opts).unwrap_err();
        assert_eq!(exit_code(&e), 130, "{e:#}");
        assert!(format!("{e:#}").contains("rerun the same command"), "{e:#}");
    }
    let dir = RunDir::open(d.path(), identity(0.1)).unwrap();
    let mut t = Toy::new(0.1, 50);
    let out = drive(&mut t, &DriveOpts::new(Some(&dir))).unwrap();
    assert_eq!(out.resumed_from, Some(24));
    assert_eq!(
        bits_without_wall(&out.rows),
        bits_without_wall(&whole.0.rows)
    );
    assert_eq!(t.w.to_bits(), whole.1.to_bits());
    // metrics.csv: the common schema, one row per evaluation, no NaN text
    let csv = std::fs::read_to_string(d.path().join("metrics.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "step,wall_s,lr,train_loss,w,test_loss"
    );
    assert_eq!(lines.count(), 6);
    assert!(!csv.to_lowercase().contains("nan"));
    // the fit is real: w ends near 3
    assert!((t.w - 3.0).abs() < 0.1, "w = {}", t.w);
}

#[test]
fn a_damaged_checkpoint_is_a_failure_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    {
        let dir = RunDir::open(d.path(), identity(0.1)).unwrap();
        let calls = AtomicU64::new(0);
        let stop = || calls.fetch_add(1, Ordering::SeqCst) >= 5;
        let mut opts = DriveOpts::new(Some(&dir));
        opts.stop = &stop;
        drive(&mut Toy::new(0.1, 50), &opts).unwrap_err();
    }
    let ck = d.path().join("checkpoint.safetensors");
    let mut bytes = std::fs::read(&ck).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40; // inside the tensor data
    std::fs::write(&ck, &bytes).unwrap();
    let dir = RunDir::open(d.path(), identity(0.1)).unwrap();
    let e = drive(&mut Toy::new(0.1, 50), &DriveOpts::new(Some(&dir))).unwrap_err();
    let msg = format!("{e:#}");
    assert_eq!(exit_code(&e), 1, "{msg}");
    assert!(
        msg.contains("checkpoint.safetensors") && msg.contains("damaged"),
        "{msg}"
    );
    // a truncated file too
    std::fs::write(&ck, &bytes[..n / 2]).unwrap();
    let e = drive(&mut Toy::new(0.1, 50), &DriveOpts::new(Some(&dir))).unwrap_err();
    assert_eq!(exit_code(&e), 1, "{e:#}");
}

#[test]
fn another_runs_directory_is_refused() {
    let d = tempfile::tempdir().unwrap();
    drop(RunDir::open(d.path(), identity(0.1)).unwrap());
    let e = RunDir::open(d.path(), identity(0.2)).err().unwrap();
    let msg = format!("{e:#}");
    assert_eq!(exit_code(&e), 2);
    assert!(msg.contains("holds another run"), "{msg}");
}

#[test]
fn a_held_directory_is_refused_naming_the_holder() {
    let d = tempfile::tempdir().unwrap();
    let _held = RunDir::open(d.path(), identity(0.1)).unwrap();
    let e = RunDir::open(d.path(), identity(0.1)).err().unwrap();
    let msg = format!("{e:#}");
    assert!(
        msg.contains(&std::process::id().to_string()) && msg.contains("in use"),
        "{msg}"
    );
}

#[test]
fn divergence_stops_the_run_keeps_the_last_checkpoint_and_writes_no_nan() {
    let d = tempfile::tempdir().unwrap();
    let dir = RunDir::open(d.path(), identity(1e6)).unwrap();
    let mut t = Toy::new(1e6, 500);
    let e = drive(&mut t, &DriveOpts::new(Some(&dir))).unwrap_err();
    let msg = format!("{e:#}");
    assert_eq!(exit_code(&e), 1, "{msg}");
    assert!(
        msg.contains("diverged at step") && msg.contains("lower the learning rate"),
        "{msg}"
    );
    let csv = std::fs::read_to_string(d.path().join("metrics.csv")).unwrap();
    assert!(
        !csv.to_lowercase().contains("nan") && !csv.contains("inf"),
        "{csv}"
    );
    // the last good checkpoint is still readable
    let st = State::read(&d.path().join("checkpoint.safetensors")).unwrap();
    assert!(st.get_f64("w").unwrap().1[0].is_finite());
}

#[test]
fn set_overrides_reach_the_preset_table() {
    let mut doc: toml::Table =
        toml::from_str("task = \"dyck\"\n[cpu.optim]\nlr = 1e-3\n[paper.optim]\nlr = 1e-4\n")
            .unwrap();
    apply_overrides(
        &mut doc,
        Preset::Cpu,
        &[
            "optim.lr=3e-4".into(),
            "optim.eps=1e-8".into(),
            "task=qf".into(),
        ],
    )
    .unwrap();
    assert_eq!(doc["cpu"]["optim"]["lr"].as_float(), Some(3e-4));
    assert_eq!(doc["cpu"]["optim"]["eps"].as_float(), Some(1e-8));
    assert_eq!(doc["paper"]["optim"]["lr"].as_float(), Some(1e-4));
    assert_eq!(doc["task"].as_str(), Some("qf"));
    for bad in [
        "optim.lr",
        "optim.lr=nan",
        "optim.lr=inf",
        "optim..lr=1",
        "optim.lr.x=1",
    ] {
        let e = apply_overrides(&mut doc.clone(), Preset::Cpu, &[bad.into()]).unwrap_err();
        assert!(format!("{e:#}").contains("--set"), "{bad}: {e:#}");
    }
}
