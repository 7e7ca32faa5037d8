//! The convolution study's program trainer: a small model beats the majority-value baseline,
//! fixed local and association heads bind variable names where learned attention does not, the
//! convolutional model's extra parameters and FLOPs are the hand count, a run stopped in the
//! middle of an epoch resumes exactly, and a `maps` list or a fixed-head count the toolkit
//! cannot build is a clear config error.

use attnlab::lego::config::{self, LegoTaskConfig, Loss, Preset, ProgramTaskConfig, TrainConfig};
use attnlab::lego::program_train::{
    max_program_len, program_transformer_config, train_program_run, ProgramResult, ProgramRun,
};
use attnlab::lego::train::RunOpts;
use attnlab::nn::{num_params, FlopCount, Transformer};
use attnlab::run::{exit_code, Identity, RunDir};
mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

fn preset(n_train: usize, epochs: usize) -> Preset {
    Preset {
        provisional: true,
        note: "test".into(),
        seeds: vec![0],
        task: None::<LegoTaskConfig>,
        program: Some(ProgramTaskConfig {
            n_vars: 2,
            n_statements: 2,
            n_prints: 2,
            modulus: 5,
            n_train,
            n_test: 400,
        }),
        model: common::small_lego_model(32),
        train: TrainConfig {
            epochs,
            batch_size: 50,
            optim: common::adam_cosine(3e-3),
            loss: Loss::CrossEntropy,
            eval_every: 1,
        },
        mimic: None,
        pretrain: None,
        lego_attention: None,
        convolution: None,
    }
}

/// Trains `run` in `dir` (or nowhere), stopped at the `stop_at`-th poll.
fn train(
    p: &Preset,
    run: &ProgramRun,
    dir: Option<&RunDir>,
    stop_at: usize,
) -> anyhow::Result<ProgramResult> {
    let dev = attnlab::nn::device().unwrap();
    let calls = AtomicUsize::new(0);
    let stop = || calls.fetch_add(1, Ordering::SeqCst) + 1 == stop_at;
    let opts = RunOpts {
        dir,
        stop: &stop,
        progress: None,
        dev: &dev,
    };
    train_program_run(p, run, &opts)
}

fn run(label: &str, qkv_conv: usize) -> ProgramRun {
    ProgramRun {
        label: label.into(),
        qkv_conv,
        qkv_conv_maps: Default::default(),
        fixed_local: 0,
        fixed_association: 0,
        seed: 0,
    }
}

/// Two variables, two assignments, mod 5: the majority value scores about 1/4, while reading
/// the last assignment of the printed variable (a literal, a copy, or one addition) gets most
/// prints right, so 600 steps must clear the baseline by a wide margin.
#[test]
fn small_program_model_beats_the_majority_baseline() {
    let p = preset(3000, 10);
    let r = train(&p, &run("plain", 0), None, 0).unwrap();
    assert!(r.majority > 0.15 && r.majority < 0.45, "{}", r.majority);
    assert!(
        r.accuracy > r.majority + 0.2,
        "accuracy {} vs majority {} (curve {:?})",
        r.accuracy,
        r.majority,
        r.curve
    );
    assert_eq!(r.per_print.len(), 2);
}

/// Structured attention lifts the binding plateau (paper_notes 2.14): when a program only sets
/// three variables and prints them, each print needs its variable's assignment, found by name.
/// Plain attention stays at guessing among the program's digits (about 0.40 of prints), while
/// the same model with one fixed local and one fixed association head per layer reads them.
#[test]
fn fixed_structured_heads_bind_names_where_plain_attention_guesses_among_digits() {
    let mut p = preset(10000, 3);
    p.program = Some(ProgramTaskConfig {
        n_vars: 3,
        n_statements: 0,
        n_prints: 3,
        modulus: 10,
        n_train: 10000,
        n_test: 400,
    });
    // the encoder and optimiser of the CPU preset (experiments/lego/convolution.toml)
    (p.model.layers, p.model.heads, p.model.hidden, p.model.ffn) = (3, 4, 64, 128);
    p.train.optim = common::adam_cosine(1e-3);
    p.train.batch_size = 64;
    let plain = train(&p, &run("plain", 0), None, 0).unwrap();
    let mut fixed = run("fixed", 0);
    (fixed.fixed_local, fixed.fixed_association) = (1, 1);
    let fixed = train(&p, &fixed, None, 0).unwrap();
    assert!(fixed.accuracy >= 0.95, "fixed heads: {:?}", fixed.curve);
    assert!(
        plain.accuracy < 0.6,
        "plain attention bound names too: {:?}",
        plain.curve
    );
}

#[test]
fn convolution_parameters_and_flops_equal_the_hand_count() {
    let p = preset(10, 1);
    let (l, d, k) = (2usize, 32usize, 3usize);
    let t = max_program_len(p.program.as_ref().unwrap());
    assert_eq!(t, 2 + 4 * 2 + 6 * 2 + 3 * 2);
    let plain = program_transformer_config(&p, &run("a", 0)).unwrap();
    let conv = program_transformer_config(&p, &run("b", k)).unwrap();
    let dev = attnlab::nn::device().unwrap();
    let (_, vm0) = Transformer::build(&plain, 0, candle_core::DType::F32, &dev).unwrap();
    let (_, vm1) = Transformer::build(&conv, 0, candle_core::DType::F32, &dev).unwrap();
    // one depthwise kernel of width k per channel of the fused [q | k | v] projection (3d
    // channels), no bias, in every layer
    assert_eq!(num_params(&vm1) - num_params(&vm0), l * 3 * d * k);
    // each kernel tap is one multiply-add per channel and token: 2 k (3d) FLOPs a token a layer
    let f0 = FlopCount::new(&plain, t).forward_per_token;
    let f1 = FlopCount::new(&conv, t).forward_per_token;
    assert_eq!((f1 - f0) as usize * t, l * 2 * k * 3 * d * t);
}

#[test]
fn stopped_program_run_resumes_identically() {
    let d = tempfile::tempdir().unwrap();
    let p = preset(200, 3);
    let r3 = run("conv", 3);
    let full = train(&p, &r3, None, 0).unwrap();
    let identity = || Identity::of(&"conv", "tiny", 0).unwrap();
    // 4 steps an epoch: stop before step 7 (mid-epoch 2), then finish
    let e = train(
        &p,
        &r3,
        Some(&RunDir::open(d.path(), identity()).unwrap()),
        7,
    )
    .unwrap_err();
    assert_eq!(exit_code(&e), 130, "{e:#}");
    assert!(d.path().join("checkpoint.safetensors").exists());
    let resumed = train(
        &p,
        &r3,
        Some(&RunDir::open(d.path(), identity()).unwrap()),
        0,
    )
    .unwrap();
    assert_eq!(resumed.curve, full.curve);
    assert_eq!(resumed.accuracy, full.accuracy);
    assert_eq!(resumed.per_print, full.per_print);
    assert_eq!(resumed.curve.len(), 3);
}

/// `experiments/lego/convolution.toml` with its first `from` replaced by `to`, parsed.
fn convolution_config_with(from: &str, to: &str) -> config::LegoExperiment {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/lego/convolution.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let edited = text.replacen(from, to, 1);
    assert_ne!(edited, text, "`{from}` is not in the config");
    attnlab::config::parse_toml(&edited).unwrap()
}

/// The error `validate` gives `exp`, with its context chain.
fn config_error(exp: &config::LegoExperiment) -> String {
    format!("{:#}", exp.validate().unwrap_err())
}

#[test]
fn a_repeated_qkv_map_is_a_config_error_and_a_subset_is_not() {
    let all = "maps = [\"query\", \"key\", \"value\"]";
    convolution_config_with(all, "maps = [\"query\", \"key\"]")
        .validate()
        .unwrap();
    let err = config_error(&convolution_config_with(
        all,
        "maps = [\"value\", \"value\"]",
    ));
    assert!(
        err.contains("convolution.configs.maps") && err.contains("once each"),
        "{err}"
    );
}

#[test]
fn more_fixed_heads_than_heads_is_a_config_error() {
    let err = config_error(&convolution_config_with(
        "maps = []",
        "maps = []\nfixed_local = 3\nfixed_association = 2",
    ));
    assert!(
        err.contains("convolution.configs.fixed_local") && err.contains("model.heads = 4"),
        "{err}"
    );
}
