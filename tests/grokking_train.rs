//! Training-side checks of the structural-grokking replication: the sparsity metric, the
//! context-free span encoding, resumption after a stop on the run engine, and that a tiny decoder
//! learns Dyck.

use attnlab::config::Preset;
use attnlab::grokking::config::{GrokkingExperiment, Settings, Task};
use attnlab::grokking::experiments::{train_run, RunResult};
use attnlab::grokking::measure::{
    attention_sparsity, context_free_states, projection_check, sentence_chart, sentence_charts,
};
use attnlab::grokking::model::model_config;
use attnlab::grokking::task::RunData;
use attnlab::grokking::train::{load_run_model, RunOpts, RunSpec};
use attnlab::grokking::tree_projection::{context_free_mask, context_free_start_mask};
use attnlab::nn::{ForwardOpts, Transformer};
use attnlab::run::exit_code;
use candle_core::{DType, Device, Tensor};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

mod common;

fn tiny_dyck() -> Settings {
    let e = GrokkingExperiment::load(Path::new("experiments/grokking/dyck.toml")).unwrap();
    let mut p = e.cpu;
    p.data.train = 2000;
    p.data.val = 50;
    p.data.gen = 50;
    let d = p.data.dyck.as_mut().unwrap();
    d.bracket_types = 2;
    d.max_depth = 3;
    d.max_len = Some(16);
    p.model.d_model = 32;
    p.model.heads = 2;
    p.model.ffn = 64;
    p.optim.lr = 3e-3;
    p.optim.schedule.warmup_steps = 20;
    p.train.batch = 32;
    p.eval.every = 10;
    p.eval.train_examples = 8;
    p.eval.min_dist = Some(0);
    p
}

fn spec(p: &Settings, seed: u64) -> RunSpec<'_> {
    RunSpec {
        task: Task::Dyck,
        preset: Preset::Tiny,
        settings: p,
        depth: 2,
        seed,
    }
}

/// Trains `p` at depth 2 on Dyck for `steps` steps into `dir`.
fn train_tiny(
    p: &Settings,
    data: &RunData,
    seed: u64,
    dir: std::path::PathBuf,
    stop: &(dyn Fn() -> bool + Sync),
    steps: usize,
) -> anyhow::Result<RunResult> {
    let mut p = p.clone();
    p.train.steps = steps;
    let opts = RunOpts {
        dir,
        stop,
        progress: None,
        device: &Device::Cpu,
    };
    train_run(&spec(&p, seed), data, &opts)
}

/// A metrics CSV without its wall-clock column (the only one that differs between runs).
fn without_wall(csv: &str) -> Vec<String> {
    csv.lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(',').collect();
            f.remove(1);
            f.join(",")
        })
        .collect()
}

#[test]
fn sparsity_equals_direct_recomputation_per_layer() {
    let p = tiny_dyck();
    let data = RunData::new(Task::Dyck, &p).unwrap();
    let cfg = model_config(&p, 3, &data);
    let (model, _) = Transformer::build(&cfg, 1, DType::F32, &Device::Cpu).unwrap();
    let lines: Vec<Vec<u32>> = data.train[..6].to_vec();
    let got = attention_sparsity(&model, &lines, data.pad, &Device::Cpu).unwrap();
    // Direct: one unpadded line at a time, entropy of every causal row of every head and layer.
    let (mut h_sum, mut rows) = (0.0f64, 0usize);
    let mut per_layer = [0.0f64; 3];
    for l in &lines {
        let x = Tensor::from_vec(l.clone(), (1, l.len()), &Device::Cpu).unwrap();
        let out = model
            .forward_with(
                &x,
                ForwardOpts {
                    capture_attention: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(out.attention.len(), 3);
        for (li, a) in out.attention.iter().enumerate() {
            let v: Vec<Vec<Vec<f32>>> = a.squeeze(0).unwrap().to_vec3().unwrap();
            for head in &v {
                for (q, row) in head.iter().enumerate() {
                    let s: f32 = row[..=q].iter().sum();
                    assert!((s - 1.0).abs() < 1e-4, "causal row sums to {s}");
                    let h: f64 = row[..=q]
                        .iter()
                        .filter(|&&p| p > 0.0)
                        .map(|&p| -(p as f64) * (p as f64).ln())
                        .sum();
                    h_sum += h;
                    per_layer[li] += h;
                    rows += 1;
                }
            }
        }
    }
    let direct = -h_sum / rows as f64;
    assert!(
        (got - direct).abs() < 1e-5,
        "sparsity {got} vs direct {direct}"
    );
    // Every layer contributes (a random init is not degenerate).
    assert!(per_layer.iter().all(|&h| h > 0.0));
}

#[test]
fn context_free_span_ignores_outside_tokens() {
    let p = tiny_dyck();
    let data = RunData::new(Task::Dyck, &p).unwrap();
    let cfg = model_config(&p, 2, &data);
    let (model, _) = Transformer::build(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
    let bos = data.bos;
    let a = vec![bos, 0, 1, 3, 2, 1, 3];
    let mut b = a.clone();
    b[1] = 1; // outside the span (3, 4), before it
    b[6] = 2; // after it
    let spans = [(3usize, 4usize)];
    let (ic_a, cf_a) = context_free_states(&model, &a, &spans, &Device::Cpu).unwrap();
    let (ic_b, cf_b) = context_free_states(&model, &b, &spans, &Device::Cpu).unwrap();
    let d = cfg.d_model;
    let span = |v: &[f32]| v[3 * d..5 * d].to_vec();
    let diff = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    };
    assert!(
        diff(&span(&cf_a[0]), &span(&cf_b[0])) < 1e-5,
        "context-free states changed"
    );
    let changed = diff(&span(&ic_a), &span(&ic_b));
    assert!(
        changed > 1e-4,
        "in-context states did not change ({changed})"
    );
}

#[test]
fn stopped_run_resumes_to_identical_metrics() {
    let p = tiny_dyck();
    let data = RunData::new(Task::Dyck, &p).unwrap();
    let root = tempfile::tempdir().unwrap();
    let never = || false;
    let full = train_tiny(&p, &data, 7, root.path().join("full"), &never, 30).unwrap();
    // The stop is polled before every update: the 13th poll stops after 12 updates, two past
    // the last evaluation (step 10).
    let calls = AtomicUsize::new(0);
    let stop_at_13 = || calls.fetch_add(1, Ordering::SeqCst) + 1 == 13;
    let dir = root.path().join("stopped");
    let e = train_tiny(&p, &data, 7, dir.clone(), &stop_at_13, 30).unwrap_err();
    assert_eq!(exit_code(&e), 130, "{e:#}");
    assert!(format!("{e:#}").contains("rerun the same command"), "{e:#}");
    // What `grokking project` loads is the checkpoint's own step, not the last evaluation's.
    let mut p30 = p.clone();
    p30.train.steps = 30;
    let (_, step) = load_run_model(&spec(&p30, 7), &data, &dir, &Device::Cpu).unwrap();
    assert_eq!(step, 12);
    // The directory belongs to this learning rate: another one is refused, not mixed in, and
    // so is loading its checkpoint for another config.
    let mut other_lr = p.clone();
    other_lr.optim.lr *= 0.5;
    let err = train_tiny(&other_lr, &data, 7, dir.clone(), &never, 30)
        .expect_err("resuming under another learning rate must fail");
    assert!(format!("{err:#}").contains("holds another run"), "{err:#}");
    assert_eq!(exit_code(&err), 2);
    other_lr.train.steps = 30;
    let Err(err) = load_run_model(&spec(&other_lr, 7), &data, &dir, &Device::Cpu) else {
        panic!("another config's checkpoint must be refused");
    };
    assert!(
        format!("{err:#}").contains("written by another run"),
        "{err:#}"
    );
    let resumed = train_tiny(&p, &data, 7, dir.clone(), &never, 30).unwrap();
    assert!(resumed.completed);
    assert_eq!(resumed.curve.len(), 4);
    for (a, b) in full.curve.iter().zip(&resumed.curve) {
        let (va, vb) = (a.values(), b.values());
        for (x, y) in va.iter().zip(&vb) {
            assert!(
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                "{va:?} vs {vb:?}"
            );
        }
    }
    let read = |d: &Path| std::fs::read_to_string(d.join("metrics.csv")).unwrap();
    let (whole, stopped) = (read(&root.path().join("full")), read(&dir));
    assert_eq!(without_wall(&whole), without_wall(&stopped));
    // The engine's schema; Dyck has no gold trees, so its tparseval fields are empty, not NaN.
    let (header, rows) = common::read_csv(&dir.join("metrics.csv"));
    assert_eq!(
        header.join(","),
        "step,wall_s,lr,train_loss,in_domain_acc,in_domain_transform_acc,gen_acc,weight_norm,sparsity,tscore,tscore_random_tree,tparseval,tparseval_right_branching"
    );
    assert_eq!(rows.len(), 4);
    assert!(!stopped.to_lowercase().contains("nan"), "{stopped}");
    // Dyck has no transformation lines and no gold trees; the paper's tscore is never negative.
    assert!(rows
        .iter()
        .all(|r| r[5].is_nan() && r[11].is_nan() && r[2] > 0.0 && r[9] >= 0.0));
}

#[test]
fn tiny_decoder_learns_tiny_dyck() {
    let mut p = tiny_dyck();
    p.eval.every = 150;
    p.model.dropout = 0.0;
    let data = RunData::new(Task::Dyck, &p).unwrap();
    let root = tempfile::tempdir().unwrap();
    let never = || false;
    let r = train_tiny(&p, &data, 0, root.path().to_path_buf(), &never, 300).unwrap();
    let first = r.curve.first().unwrap().in_domain_acc;
    let last = r.curve.last().unwrap().in_domain_acc;
    // Chance among k = 2 closing brackets is 0.5.
    assert!(last > 0.8, "in-domain closing accuracy {first} -> {last}");
    assert!(
        first < 0.7,
        "untrained accuracy {first} should be near chance"
    );
}

#[test]
fn causal_prefix_spans_have_sci_one_and_the_optimal_tree_outscores_the_greedy_one() {
    // In a causal LM a span starting at the first word sees nothing outside itself but the start
    // token, with or without the context-free mask: its SCI is 1, so the whole-tree optimum
    // collects a 1 at every left-spine node; the greedy top-down projection does not.
    let p = tiny_dyck();
    let data = RunData::new(Task::Dyck, &p).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let never = || false;
    train_tiny(&p, &data, 3, dir.path().to_path_buf(), &never, 20).unwrap();
    let mut p20 = p.clone();
    p20.train.steps = 20;
    let (model, step) = load_run_model(&spec(&p20, 3), &data, dir.path(), &Device::Cpu).unwrap();
    assert_eq!(step, 20);
    let c = projection_check(&model, &data, 30, &Device::Cpu).unwrap();
    assert_eq!(c.sentences, 30);
    assert!((c.left_anchored_sci - 1.0).abs() < 1e-5, "{c:?}");
    assert!(
        c.tscore_optimal > 0.0 && c.tscore_code_estimate >= 0.0 && c.tscore >= 0.0,
        "{c:?}"
    );
    assert!(c.tscore_optimal >= c.tscore_random_tree - 1e-9, "{c:?}");
    assert!(c.tparseval_greedy.is_nan(), "Dyck has no gold trees");
    let empty = tempfile::tempdir().unwrap();
    let err = load_run_model(&spec(&p20, 3), &data, empty.path(), &Device::Cpu)
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("train the run first"),
        "{err:#}"
    );
}

#[test]
fn project_without_a_trained_run_names_the_missing_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let o = common::attnlab(&[
        "grokking",
        "project",
        "--config",
        "experiments/grokking/dyck.toml",
        "--preset",
        "tiny",
        "--depth",
        "2",
        "--seed",
        "0",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    common::assert_clean_error(
        &o,
        2,
        &["checkpoint.safetensors", "train the run first"],
        "project before train",
    );
}

#[test]
fn start_mask_restricts_rows_from_the_start_on() {
    // Tokens: BOS w0 w1 w2 w3; start word 2 = token 3.
    let m = context_free_start_mask(5, 3);
    let allowed = |q: usize| (0..5).filter(|&k| m[[q, k]]).collect::<Vec<_>>();
    assert_eq!(allowed(0), vec![0]);
    assert_eq!(allowed(2), vec![0, 1, 2]); // before the start: causal
    assert_eq!(allowed(3), vec![0, 3]);
    assert_eq!(allowed(4), vec![0, 3, 4]);
    // On the span rows it is the per-span mask, for every span end.
    for last in 3..5 {
        let s = context_free_mask(5, 3, last);
        for q in 3..=last {
            assert_eq!(m.row(q), s.row(q), "row {q}, span 3..={last}");
        }
    }
}

#[test]
fn batched_charts_equal_per_span_charts() {
    // One pass per start word, many sentences of different lengths padded into shared batches,
    // against one pass per span and sentence.
    let mut p = tiny_dyck();
    // Small token vectors, so that a random model's states depend on the context.
    p.model.embedding_init_std = None;
    p.model.embedding_scale_sqrt_d = false;
    let data = RunData::new(Task::Dyck, &p).unwrap();
    let cfg = model_config(&p, 2, &data);
    let (model, _) = Transformer::build(&cfg, 5, DType::F32, &Device::Cpu).unwrap();
    let sents: Vec<Vec<u32>> = data
        .dyck
        .as_ref()
        .unwrap()
        .train
        .iter()
        .take(40)
        .map(|s| s.iter().map(|&t| t as u32).collect())
        .collect();
    let lens: std::collections::BTreeSet<usize> = sents.iter().map(|s| s.len()).collect();
    assert!(lens.len() >= 3, "lengths {lens:?}");
    let batched = sentence_charts(&model, &sents, data.bos, data.pad, &Device::Cpu).unwrap();
    assert_eq!(batched.len(), sents.len());
    let mut lowest = f64::INFINITY;
    for (w, b) in sents.iter().zip(&batched) {
        let one = sentence_chart(&model, w, data.bos, &Device::Cpu).unwrap();
        assert_eq!(one.dim(), b.dim());
        for i in 0..w.len() {
            for j in i..w.len() {
                assert!(
                    (one[[i, j]] - b[[i, j]]).abs() < 1e-6,
                    "span ({i}, {j}) of {w:?}: per span {} vs batched {}",
                    one[[i, j]],
                    b[[i, j]]
                );
                if i > 0 {
                    lowest = lowest.min(one[[i, j]]);
                }
            }
        }
    }
    // The tolerance above must be well below how far SCI moves from 1 on this model.
    assert!(
        lowest < 1.0 - 2e-5,
        "a random model should give spans with SCI below 1 (lowest {lowest})"
    );
}
