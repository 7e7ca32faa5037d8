//! Structural grokking on a real trained model (Murty et al. 2023): in-domain accuracy saturates
//! while generalisation is still below the grokking threshold, and generalisation crosses it
//! only long afterwards: at twice the saturation step or later (`GrokOnset::is_structural`).
//! They train CPU presets for 6,000 steps (both together: 9 minutes on 2 cores), so they are ignored
//! by default:
//!
//! ```sh
//! cargo test --release --test grokking_experiments -- --ignored
//! ```

use attnlab::config::Preset;
use attnlab::grokking::config::{GrokkingExperiment, Task};
use attnlab::grokking::experiments::{train_run, GrokOnset};
use attnlab::grokking::task::RunData;
use attnlab::grokking::train::{RunOpts, RunSpec};
use std::path::Path;

fn assert_structural_grokking(config: &str, task: Task, depth: usize) {
    let exp = GrokkingExperiment::load(Path::new(config)).unwrap();
    let settings = exp.cpu;
    let data = RunData::new(task, &settings).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let never = || false;
    let device = attnlab::nn::device().unwrap();
    let spec = RunSpec {
        task,
        preset: Preset::Cpu,
        settings: &settings,
        depth,
        seed: 0,
    };
    let opts = RunOpts {
        dir: dir.path().to_path_buf(),
        stop: &never,
        progress: None,
        device: &device,
    };
    let r = train_run(&spec, &data, &opts).unwrap();
    let thr = settings.eval.grok_threshold;
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
    assert!(
        onset.is_structural(),
        "generalisation did not reach {thr} at least one doubling of steps after in-domain \
         saturation ({onset:?}): {curve:?}"
    );
}

#[test]
#[ignore = "trains the Dyck CPU preset for 6,000 steps (about 9 minutes)"]
fn dyck_depth4_generalises_long_after_in_domain_saturates() {
    assert_structural_grokking("experiments/grokking/dyck.toml", Task::Dyck, 4);
}

#[test]
#[ignore = "trains the question-formation CPU preset for 6,000 steps (about 3 minutes)"]
fn question_formation_depth4_generalises_long_after_in_domain_saturates() {
    assert_structural_grokking("experiments/grokking/question_formation.toml", Task::Qf, 4);
}
