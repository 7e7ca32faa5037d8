//! LEGO training invariants: mimicking installs the target heads, a small model learns n = 4,
//! the attention module's FLOP saving is the hand count, a run stopped in mimicking and in the
//! middle of an epoch resumes exactly, and a diverging run stops with the run-failed class.

mod common;

use attnlab::lego::config::{Arch, Init, LegoTaskConfig, Loss, MimicConfig, Preset, TrainConfig};
use attnlab::lego::flops::{encoder_flops, EncoderShape};
use attnlab::lego::model::{transformer_config, LegoModel, LegoRun};
use attnlab::lego::task::seq_len;
use attnlab::lego::train::{mimic_pretrain, train_run, RunOpts, RunResult};
use attnlab::lego::variants::Variant;
use attnlab::nn::FlopCount;
use attnlab::run::{exit_code, Identity, RunDir};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::adam_cosine as adam;

fn preset(n_var: usize, train_vars: usize, n_train: usize, epochs: usize, batch: usize) -> Preset {
    Preset {
        provisional: true,
        note: "test".into(),
        seeds: vec![0],
        task: Some(LegoTaskConfig {
            n_var,
            train_vars,
            n_train,
            n_test: 200,
        }),
        program: None,
        model: common::small_lego_model(64),
        train: TrainConfig {
            epochs,
            batch_size: batch,
            optim: adam(3e-3),
            loss: Loss::Bce,
            eval_every: 1,
        },
        mimic: Some(MimicConfig {
            epochs_bert: 3,
            epochs_albert: 3,
            steps_per_epoch: 100,
            batch_size: 16,
            optim: adam(3e-3),
            local_head: 0,
            association_head: 1,
        }),
        pretrain: None,
        lego_attention: None,
        convolution: None,
    }
}

fn dev() -> candle_core::Device {
    attnlab::nn::device().unwrap()
}

/// Trains `run` without a run directory.
fn train(p: &Preset, run: &LegoRun, head_sentences: usize) -> RunResult {
    let dev = dev();
    let opts = RunOpts {
        dir: None,
        stop: &|| false,
        progress: None,
        dev: &dev,
    };
    train_run(p, run, head_sentences, &opts).unwrap()
}

#[test]
fn mimicking_loss_falls_and_mimicked_heads_scores_rise() {
    let mut p = preset(4, 4, 100, 1, 50);
    p.mimic.as_mut().unwrap().optim.lr = 1e-2;
    let run = LegoRun::new("t", Arch::Bert, Init::Mimic, 3);
    let lm = LegoModel::build(&p.model, &run, &dev()).unwrap();
    let sents = Variant::Shuffled.sample(4, 50, 99).unwrap();
    let before = lm.head_scores(&sents).unwrap();
    let losses = mimic_pretrain(&lm, p.mimic.as_ref().unwrap(), 4, &run).unwrap();
    assert_eq!(losses.len(), 300);
    let first: f64 = losses[..10].iter().sum::<f64>() / 10.0;
    let last: f64 = losses[290..].iter().sum::<f64>() / 10.0;
    assert!(last < 0.5 * first, "mimicking loss {first} -> {last}");
    let after = lm.head_scores(&sents).unwrap();
    for l in 0..2 {
        let a0 = before[l][1].association.unwrap();
        let a1 = after[l][1].association.unwrap();
        assert!(a1 > a0 + 0.3, "layer {l} head 1 association {a0} -> {a1}");
        let w0 = before[l][0].window_locality.unwrap();
        let w1 = after[l][0].window_locality.unwrap();
        assert!(w1 > w0 + 0.3, "layer {l} head 0 locality {w0} -> {w1}");
    }
}

/// n = 4 with the first 2 chain positions supervised, clauses in chain order: a two-layer model
/// reaches 100% on them within 800 steps. (Shuffled clauses and all four positions need far
/// more steps than a fast test allows at this size; see paper_notes section 2.)
#[test]
fn small_model_learns_n4_on_supervised_positions() {
    let p = preset(4, 2, 2000, 20, 50);
    let mut run = LegoRun::new("t", Arch::Bert, Init::Random, 0);
    run.train_mix = vec![(Variant::ChainOrder, 1.0)];
    let r = train(&p, &run, 0);
    assert_eq!(r.per_position.len(), 4);
    for (k, a) in r.per_position[..2].iter().enumerate() {
        assert_eq!(
            *a,
            1.0,
            "chain position {} accuracy {a}: {:?}",
            k + 1,
            r.per_position
        );
    }
    // the unsupervised positions are not learnt for free: the test can tell
    assert!(r.per_position[3] < 0.9, "{:?}", r.per_position);
}

#[test]
fn attention_module_flop_saving_equals_hand_count() {
    let p = preset(12, 6, 100, 1, 50);
    let t = seq_len(12);
    let mut run = LegoRun::new("t", Arch::Bert, Init::Random, 0);
    let vanilla = FlopCount::new(&transformer_config(&p.model, &run), t);
    run.fixed_local = 1;
    run.fixed_association = 1;
    let fixed = FlopCount::new(&transformer_config(&p.model, &run), t);
    let (d, h, l, k) = (32u64, 2u64, 2u64, 2u64);
    let dh = d / h;
    let t64 = t as u64;
    // per sequence: each fixed head skips its query and key projections (2 x 2 d dh FLOPs a
    // token) and its score row (2 T dh FLOPs a token), in every layer
    let hand = l * k * t64 * (2 * 2 * d * dh + 2 * t64 * dh);
    let saved = (vanilla.forward_per_token - fixed.forward_per_token) * t64;
    assert_eq!(saved, hand);
    assert_eq!(fixed.qk_forward_per_token, 0);
    // the same saving from the LEGO-side counter (d_ff = 2 d here: compare differences only)
    let shape = EncoderShape {
        layers: l,
        hidden: d,
        heads: h,
        ffn: 64,
    };
    let lego_saved =
        encoder_flops(&shape, t64, 0).unwrap() - encoder_flops(&shape, t64, k).unwrap();
    assert_eq!(lego_saved, hand);
}

/// Stops the run at the `n`-th poll of `calls` (the engine polls before every update).
fn stop_at(calls: &AtomicUsize, n: usize) -> impl Fn() -> bool + Sync + '_ {
    move || calls.fetch_add(1, Ordering::SeqCst) + 1 == n
}

#[test]
fn stopped_run_resumes_to_identical_losses() {
    let d = tempfile::tempdir().unwrap();
    let mut p = preset(4, 2, 200, 3, 50);
    p.mimic.as_mut().unwrap().epochs_bert = 1;
    p.mimic.as_mut().unwrap().steps_per_epoch = 6;
    let run = LegoRun::new("t", Arch::Bert, Init::Mimic, 5);
    let full = train(&p, &run, 20);
    assert_eq!(full.losses.len(), 12);
    assert_eq!(full.mimic_losses.len(), 6);
    let stages: Vec<&str> = full.head_scores.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(stages, ["init", "mimicked", "trained"]);
    let dev = dev();
    let identity = || Identity::of(&("t", 5), "tiny", 5).unwrap();
    // stop before mimicking step 3, then (4 more mimicking polls) before training step 7,
    // in the middle of epoch 2, then finish
    let calls = AtomicUsize::new(0);
    for n in [3, 4 + 7] {
        calls.store(0, Ordering::SeqCst);
        let stop = stop_at(&calls, n);
        let dir = RunDir::open(d.path(), identity()).unwrap();
        let opts = RunOpts {
            dir: Some(&dir),
            stop: &stop,
            progress: None,
            dev: &dev,
        };
        let e = train_run(&p, &run, 20, &opts).unwrap_err();
        assert_eq!(exit_code(&e), 130, "{e:#}");
    }
    assert!(d.path().join("mimic.checkpoint.safetensors").exists());
    assert!(d.path().join("checkpoint.safetensors").exists());
    let dir = RunDir::open(d.path(), identity()).unwrap();
    let opts = RunOpts {
        dir: Some(&dir),
        stop: &|| false,
        progress: None,
        dev: &dev,
    };
    let resumed = train_run(&p, &run, 20, &opts).unwrap();
    assert_eq!(resumed.mimic_losses, full.mimic_losses);
    assert_eq!(resumed.losses, full.losses);
    assert_eq!(resumed.curve, full.curve);
    assert_eq!(resumed.head_scores, full.head_scores);
    // one metrics log per phase, the engine's schema then the trainer's columns
    let (head, rows) = common::read_csv(&d.path().join("metrics.csv"));
    assert_eq!(
        head[..9],
        [
            "step",
            "wall_s",
            "lr",
            "train_loss",
            "epoch",
            "epoch_loss",
            "acc_supervised",
            "acc_extrapolated",
            "acc_pos1"
        ]
    );
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2][0], 12.0);
    let (head, rows) = common::read_csv(&d.path().join("mimic.metrics.csv"));
    assert_eq!(head, ["step", "wall_s", "lr", "train_loss"]);
    assert_eq!(rows.len(), 1);
}

#[test]
fn a_huge_learning_rate_stops_the_run_keeping_the_last_good_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let mut p = preset(4, 2, 200, 3, 50);
    p.train.optim.lr = 1e6;
    let run = LegoRun::new("t", Arch::Bert, Init::Random, 0);
    let dev = dev();
    let dir = RunDir::open(d.path(), Identity::of(&"t", "tiny", 0).unwrap()).unwrap();
    let opts = RunOpts {
        dir: Some(&dir),
        stop: &|| false,
        progress: None,
        dev: &dev,
    };
    let e = train_run(&p, &run, 0, &opts).unwrap_err();
    let msg = format!("{e:#}");
    assert_eq!(exit_code(&e), 1, "{msg}");
    assert!(
        msg.contains("diverged at step") && msg.contains("lower the learning rate"),
        "{msg}"
    );
    if let Ok(csv) = std::fs::read_to_string(d.path().join("metrics.csv")) {
        assert!(
            !csv.to_lowercase().contains("nan") && !csv.contains("inf"),
            "{csv}"
        );
    }
}
