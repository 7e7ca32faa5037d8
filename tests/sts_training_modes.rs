//! Full-batch GD on a fixed dataset and f32 arithmetic: the other ways to train the exact model.

use attnlab::sts::config::{EvalConfig, Precision, RunConfig, TransformerConfig};
use attnlab::sts::model::ExactTransformer;
use attnlab::sts::task::{sample_batch, TaskConfig};
use attnlab::sts::train::{train_transformer, TransformerResult};

#[test]
fn full_batch_gd_decreases_the_training_loss_every_step() {
    // With a step below 2 / (largest curvature) GD on a fixed smooth objective cannot go up; a sign
    // or scale error in the gradient would break this at once.
    let task = TaskConfig::new(8, 4, 2, 16);
    let data = sample_batch(&task, 512, None, &mut attnlab::rng::seeded(3)).unwrap();
    let mut m = ExactTransformer::<f64>::zeros(4, 16);
    let mut last = f64::INFINITY;
    for step in 0..60 {
        let l = m.gd_step(&data, 0.5);
        assert!(
            l <= last + 1e-12,
            "step {step}: loss rose from {last} to {l}"
        );
        last = l;
    }
    assert!(
        last < 0.7 * attnlab::sts::theory::loss_at_zero(8, 4, 2),
        "full-batch GD barely moved: {last}"
    );
}

fn run(precision: Precision, dataset: Option<usize>) -> TransformerResult {
    let cfg = RunConfig {
        seed: 5,
        task: TaskConfig::new(8, 4, 2, 16),
        transformer: Some(TransformerConfig {
            steps: 60,
            lr: 1.0,
            batch: 512,
            dataset,
            precision,
            init_c: 0.0,
        }),
        fcn: None,
        eval: EvalConfig {
            samples: 1024,
            points: 6,
            theory_samples: 1024,
        },
    };
    train_transformer(&cfg).unwrap()
}

#[test]
fn f32_training_tracks_f64_training() {
    let (a, b) = (run(Precision::F64, None), run(Precision::F32, None));
    let (ca, cb) = (a.model.as_ref().unwrap().c(), b.model.as_ref().unwrap().c());
    assert!(
        (ca - cb).abs() < 1e-4 * ca.abs().max(1.0),
        "c: f64 {ca} vs f32 {cb}"
    );
    assert!((a.last().loss - b.last().loss).abs() < 1e-4 * a.last().loss);
}

#[test]
fn full_batch_run_follows_the_recursion_in_c() {
    // A large fixed dataset is close to the population: c still tracks the scalar recursion.
    let r = run(Precision::F64, Some(8192));
    let p = r.last();
    assert!(
        (p.c - p.pred_c).abs() < 0.03 * p.pred_c,
        "c {} vs recursion {}",
        p.c,
        p.pred_c
    );
}
