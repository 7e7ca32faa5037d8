//! A run stopped part-way (as Ctrl-C does) and resumed gives bit-identical results, and a
//! checkpoint refuses to resume a different config.

use attnlab::sts::task::TaskConfig;
use attnlab::sts::train::{
    train_transformer_resumable, Checkpointing, EvalConfig, RunConfig, TransformerConfig,
};
use std::sync::atomic::{AtomicUsize, Ordering};

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

#[test]
fn interrupted_run_resumes_to_identical_results() {
    let cfg = small();
    let dir = tempfile::tempdir().unwrap();
    let never = || false;
    let whole = Checkpointing {
        path: dir.path().join("whole.json"),
        every: 7,
        stop: &never,
    };
    let reference = train_transformer_resumable(&cfg, &mut |_| {}, Some(&whole)).unwrap();

    // Stop after step 17 (not a multiple of `every`), then resume.
    let steps_seen = AtomicUsize::new(0);
    let stop_at_17 = || steps_seen.fetch_add(1, Ordering::SeqCst) + 1 == 17;
    let part = Checkpointing {
        path: dir.path().join("part.json"),
        every: 7,
        stop: &stop_at_17,
    };
    let err = train_transformer_resumable(&cfg, &mut |_| {}, Some(&part)).unwrap_err();
    assert!(
        format!("{err:#}").contains("interrupted after step 17"),
        "{err:#}"
    );
    let resumed = train_transformer_resumable(&cfg, &mut |_| {}, Some(&part)).unwrap();

    assert_eq!(
        reference.model.as_ref().unwrap().w,
        resumed.model.as_ref().unwrap().w
    );
    assert_eq!(
        serde_json::to_string(&reference.curve).unwrap(),
        serde_json::to_string(&resumed.curve).unwrap()
    );
    // And the stop really happened mid-run: the checkpoint was written before the end.
    assert!(steps_seen.load(Ordering::SeqCst) < 17 + 40);
}

#[test]
fn checkpoint_of_another_config_is_refused() {
    let cfg = small();
    let dir = tempfile::tempdir().unwrap();
    let never = || false;
    let ck = Checkpointing {
        path: dir.path().join("ck.json"),
        every: 5,
        stop: &never,
    };
    train_transformer_resumable(&cfg, &mut |_| {}, Some(&ck)).unwrap();
    let mut other = cfg.clone();
    other.transformer.as_mut().unwrap().lr = 2.0;
    let err = train_transformer_resumable(&other, &mut |_| {}, Some(&ck)).unwrap_err();
    assert!(format!("{err:#}").contains("different config"), "{err:#}");
}
