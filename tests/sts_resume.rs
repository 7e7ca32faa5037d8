//! STS runs on the run engine: a run stopped part-way (as Ctrl-C does) saves and resumes to
//! bit-identical results (transformer and FCN), and a diverging run stops as a failure that names
//! the step and keeps its last good checkpoint.

use attnlab::run::{exit_code, DriveOpts, Identity, RunDir, State};
use attnlab::sts::config::{EvalConfig, FcnConfig, FcnOptimizer, RunConfig, TransformerConfig};
use attnlab::sts::fcn::{drive_fcn, train_fcn};
use attnlab::sts::task::TaskConfig;
use attnlab::sts::train::{drive_transformer, train_transformer};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

fn small() -> RunConfig {
    RunConfig {
        seed: 11,
        task: TaskConfig::new(8, 3, 2, 16),
        transformer: Some(TransformerConfig {
            steps: 40,
            lr: 1.0,
            batch: 256,
            dataset: None,
            precision: Default::default(),
            init_c: 0.0,
        }),
        fcn: None,
        eval: EvalConfig {
            samples: 256,
            points: 8,
            theory_samples: 256,
        },
    }
}

fn fcn() -> FcnConfig {
    FcnConfig {
        width: 8,
        depth: 2,
        optimizer: FcnOptimizer::Adam,
        lr: 3e-3,
        steps: 60,
        batch: 64,
    }
}

fn identity(cfg: &RunConfig) -> Identity {
    Identity::of(cfg, "tiny", cfg.seed).unwrap()
}

/// Opens `dir` and calls `run` with options that stop before update `after + 1`; asserts the
/// run ended as interrupted (exit 130) with its state saved.
fn interrupt(
    dir: &Path,
    cfg: &RunConfig,
    phase: &str,
    after: u64,
    run: impl Fn(&DriveOpts) -> anyhow::Error,
) {
    let rd = RunDir::open(dir, identity(cfg)).unwrap();
    let calls = AtomicU64::new(0);
    let stop = || calls.fetch_add(1, Ordering::SeqCst) >= after;
    let mut opts = DriveOpts::new(Some(&rd));
    opts.phase = phase;
    opts.stop = &stop;
    let e = run(&opts);
    assert_eq!(exit_code(&e), 130, "{e:#}");
    assert!(format!("{e:#}").contains("rerun the same command"), "{e:#}");
}

fn saved_step(path: &Path) -> u64 {
    let st = State::read(path).unwrap();
    st.json::<serde_json::Value>("engine").unwrap()["step"]
        .as_u64()
        .unwrap()
}

#[test]
fn interrupted_transformer_run_resumes_to_identical_results() {
    let cfg = small();
    let whole = train_transformer(&cfg).unwrap();
    let d = tempfile::tempdir().unwrap();
    for after in [17, 5, 1] {
        interrupt(d.path(), &cfg, "train", after, |o| {
            drive_transformer(&cfg, o, None).unwrap_err()
        });
    }
    // Three stops after 17, 5 and 1 more updates: the saved state is at step 23.
    assert_eq!(saved_step(&d.path().join("checkpoint.safetensors")), 23);
    let rd = RunDir::open(d.path(), identity(&cfg)).unwrap();
    let resumed = drive_transformer(&cfg, &DriveOpts::new(Some(&rd)), None).unwrap();
    assert_eq!(
        whole.model.as_ref().unwrap().w,
        resumed.model.as_ref().unwrap().w
    );
    assert_eq!(
        serde_json::to_string(&whole.curve).unwrap(),
        serde_json::to_string(&resumed.curve).unwrap()
    );
    let csv = std::fs::read_to_string(d.path().join("metrics.csv")).unwrap();
    assert!(
        csv.starts_with("step,wall_s,lr,train_loss,test_loss,test_loss_stderr,c,"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 1 + whole.curve.len());
}

#[test]
fn interrupted_fcn_run_resumes_to_identical_results() {
    let cfg = small();
    let whole = train_fcn(&cfg.task, &fcn(), 512, cfg.seed).unwrap();
    let d = tempfile::tempdir().unwrap();
    for after in [13, 20] {
        interrupt(d.path(), &cfg, "fcn", after, |o| {
            drive_fcn(&cfg.task, &fcn(), 512, cfg.seed, o, None).unwrap_err()
        });
    }
    assert_eq!(saved_step(&d.path().join("fcn.checkpoint.safetensors")), 33);
    let rd = RunDir::open(d.path(), identity(&cfg)).unwrap();
    let mut opts = DriveOpts::new(Some(&rd));
    opts.phase = "fcn";
    let resumed = drive_fcn(&cfg.task, &fcn(), 512, cfg.seed, &opts, None).unwrap();
    assert_eq!(whole.test_mse.to_bits(), resumed.test_mse.to_bits());
    assert_eq!(whole.certificate.to_bits(), resumed.certificate.to_bits());
    assert_eq!(whole.curve, resumed.curve);
    // The net learned something: below the energy of predicting zero (d / q).
    assert!(whole.test_mse < 1.5, "{}", whole.test_mse);
}

#[test]
fn a_diverging_transformer_run_fails_naming_the_step_and_keeps_its_checkpoint() {
    let mut cfg = small();
    cfg.transformer.as_mut().unwrap().lr = 1e6;
    let d = tempfile::tempdir().unwrap();
    let rd = RunDir::open(d.path(), identity(&cfg)).unwrap();
    let e = drive_transformer(&cfg, &DriveOpts::new(Some(&rd)), None).unwrap_err();
    let msg = format!("{e:#}");
    assert_eq!(exit_code(&e), 1, "{msg}");
    assert!(
        msg.contains("diverged at step 1")
            && msg.contains("`transformer.lr` = 1000000")
            && msg.contains("checkpoint.safetensors` is kept"),
        "{msg}"
    );
    let csv = std::fs::read_to_string(d.path().join("metrics.csv")).unwrap();
    assert!(
        !csv.to_lowercase().contains("nan") && !csv.contains("inf"),
        "{csv}"
    );
    let st = State::read(&d.path().join("checkpoint.safetensors")).unwrap();
    assert!(st.get_f64("w").unwrap().1.iter().all(|w| w.is_finite()));
}

#[test]
fn a_diverging_fcn_run_fails() {
    let cfg = small();
    let mut f = fcn();
    f.lr = 1e6;
    let e = train_fcn(&cfg.task, &f, 512, cfg.seed).unwrap_err();
    let msg = format!("{e:#}");
    assert_eq!(exit_code(&e), 1, "{msg}");
    assert!(
        msg.contains("diverged at step") || msg.contains("gradient norm"),
        "{msg}"
    );
}
