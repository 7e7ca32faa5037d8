//! Structural grokking on a real trained model (Murty et al. 2023): in-domain accuracy saturates
//! while generalisation is still below the grokking threshold, and generalisation crosses it
//! only long afterwards: at twice the saturation step or later (`GrokOnset::is_structural`); and
//! at the best depth, most seeds end with generalisation above the threshold.
//! They train CPU presets for 6,000 steps (the first two together: 9 minutes on 2 cores; the
//! seeds test: three QF depth-8 runs, about 36 minutes of one core), so they are ignored by
//! default:
//!
//! ```sh
//! cargo test --release --test grokking_experiments -- --ignored
//! cargo test --release --test grokking_experiments -- --ignored question_formation_best_depth
//! cargo test --release --test grokking_experiments -- --ignored question_formation_at_the_paper
//! ```
//!
//! The last one trains three QF depth-6 runs of the CPU preset at the paper's 100,000 training
//! sentences (`question_formation_100k.toml`), about 45 minutes of one core.

use attnlab::config::Preset;
use attnlab::grokking::config::{GrokkingExperiment, Task};
use attnlab::grokking::experiments::{train_run, GrokOnset, RunResult};
use attnlab::grokking::task::RunData;
use attnlab::grokking::train::{RunOpts, RunSpec};
use std::path::Path;

/// Trains one run of the CPU preset of `config` (in a temporary folder) and returns it with the
/// preset's grokking threshold.
fn train_cpu(config: &str, task: Task, depth: usize, seed: u64) -> (RunResult, f64) {
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
        seed,
    };
    let opts = RunOpts {
        dir: dir.path().to_path_buf(),
        stop: &never,
        progress: None,
        device: &device,
    };
    let r = train_run(&spec, &data, &opts).unwrap();
    (r, settings.eval.grok_threshold)
}

fn assert_structural_grokking(config: &str, task: Task, depth: usize) {
    let (r, thr) = train_cpu(config, task, depth, 0);
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

/// The QF runs of `config` at `depth` for seeds 0-2: how many end with generalisation at or
/// above the threshold and how many reach it at some evaluation (the paper's count).
fn seeds_grokking(config: &str, depth: usize) -> (usize, usize, Vec<f64>) {
    let (mut by_final, mut ever, mut finals) = (0, 0, Vec::new());
    for seed in 0..3 {
        let (r, thr) = train_cpu(config, Task::Qf, depth, seed);
        let fin = r.curve.last().expect("a run with no evaluation").gen_acc;
        by_final += usize::from(fin >= thr);
        ever += usize::from(r.curve.iter().any(|e| e.gen_acc >= thr));
        finals.push(fin);
    }
    (by_final, ever, finals)
}

/// At the paper's data size (100,000 training sentences, five times the CPU preset's) the
/// paper's best depth, 6 layers, ends above the threshold in most seeds (paper: 20 of 20), where
/// the 20,000-sentence preset ends there in none of 3 (paper_notes.md section 3).
#[test]
#[ignore = "trains three question-formation runs at depth 6 on 100,000 sentences (about 45 minutes of one core)"]
fn question_formation_at_the_paper_data_size_generalises_at_depth_6_in_most_seeds() {
    let (by_final, ever, finals) =
        seeds_grokking("experiments/grokking/question_formation_100k.toml", 6);
    assert!(
        by_final >= 2,
        "only {by_final} of 3 seeds at depth 6 end with generalisation >= the threshold (final \
         accuracies {finals:?}; {ever} of 3 reached it at some evaluation)"
    );
}

/// Grokking over seeds: at the best depth, most seeds end with generalisation above the threshold
/// (QF 6 layers: 20 of 20 reach it, 13 of 20 end above it in the official runs). At the CPU scale the best QF depth is 8 (3 of 3 seeds
/// reach 0.8, 2 of 3 end there; depth 6 ends there in 0 of 3: paper_notes.md section 3), so this
/// asserts at least 2 of 3 seeds at depth 8 by final accuracy, and reports both criteria.
#[test]
#[ignore = "trains three question-formation runs at depth 8 for 6,000 steps (about 36 minutes of one core)"]
fn question_formation_best_depth_groks_in_most_seeds() {
    let depth = 8;
    let (by_final, ever, finals) =
        seeds_grokking("experiments/grokking/question_formation.toml", depth);
    assert!(
        by_final >= 2,
        "only {by_final} of 3 seeds at depth {depth} end with generalisation >= the threshold \
         (final accuracies {finals:?}; {ever} of 3 reached it at some evaluation)"
    );
}
