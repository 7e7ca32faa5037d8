//! Structural grokking on a real trained model (Murty et al. 2023): in-domain accuracy saturates
//! while generalisation is still below the grokking threshold, and generalisation crosses it
//! only long afterwards. These train the CPU presets for 4,000-6,000 steps (about 10-20 minutes
//! each on one core), so they are ignored by default:
//!
//! ```sh
//! cargo test --release --test grokking_experiments -- --ignored
//! ```

use attnlab::grokking::config::{GrokkingExperiment, Task};
use attnlab::grokking::train::{train_run, GrokOnset, RunData, RunOpts};
use std::path::Path;

/// "Long after": at least this many steps between in-domain saturation and generalisation
/// (four evaluations of the CPU presets; the paper's gaps are tens of thousands of steps).
const MIN_DELAY: usize = 1000;

fn assert_structural_grokking(config: &str, task: Task, depth: usize) {
    let exp = GrokkingExperiment::load(Path::new(config)).unwrap();
    let preset = exp.cpu;
    let data = RunData::new(task, &preset).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "attnlab_grok_exp_{task:?}_{depth}_{}",
        std::process::id()
    ));
    let never = || false;
    let r = train_run(
        task,
        &preset,
        &data,
        depth,
        0,
        &RunOpts {
            out_dir: dir.clone(),
            stop: &never,
            steps: None,
        },
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let thr = preset.eval.grok_threshold;
    let curve: Vec<(usize, f64, f64)> = r
        .curve
        .iter()
        .map(|e| (e.step, e.in_domain_acc, e.gen_acc))
        .collect();
    let onset = GrokOnset::of(&r.curve, thr)
        .unwrap_or_else(|| panic!("in-domain accuracy never saturated: {curve:?}"));
    assert!(
        onset.gen_at_saturation < thr,
        "generalisation {} already at the threshold {thr} when in-domain saturated: no delay to see ({curve:?})",
        onset.gen_at_saturation
    );
    let delay = onset
        .delay()
        .unwrap_or_else(|| panic!("generalisation never reached {thr}: {curve:?}"));
    assert!(
        delay >= MIN_DELAY,
        "generalisation reached {thr} only {delay} steps after saturation ({onset:?})"
    );
}

#[test]
#[ignore = "trains the Dyck CPU preset for 6,000 steps (about 20 minutes)"]
fn dyck_depth4_generalises_long_after_in_domain_saturates() {
    assert_structural_grokking("experiments/grokking/dyck.toml", Task::Dyck, 4);
}

#[test]
#[ignore = "trains the question-formation CPU preset for 4,000 steps (about 10 minutes)"]
fn question_formation_depth4_generalises_long_after_in_domain_saturates() {
    assert_structural_grokking("experiments/grokking/question_formation.toml", Task::Qf, 4);
}
