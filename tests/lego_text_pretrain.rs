//! Masked-LM pretraining on text and its transfer into the LEGO model: the tokeniser and
//! vocabulary, BERT's masking rates, a small encoder learning a text whose masked words are
//! predictable from their neighbours (far above the unigram guess), and the transfer copying the
//! encoder exactly.

use attnlab::lego::config::{Arch, Init, ModelConfig, TextPretrainConfig};
use attnlab::lego::model::{LegoModel, LegoRun};
use attnlab::lego::task::{token_str, VOCAB_SIZE};
use attnlab::lego::text_pretrain::{transfer, words, Corpus, TextTrainer};
use attnlab::run::{drive, DriveOpts};

mod common;

fn model() -> ModelConfig {
    common::small_lego_model(64)
}

fn pretrain(steps: usize) -> TextPretrainConfig {
    TextPretrainConfig {
        corpus: "unused".into(),
        vocab_words: 50,
        steps,
        batch_size: 32,
        mask_prob: 0.15,
        optim: common::adam_cosine(3e-3),
    }
}

/// A "text" in which every word is fixed by its neighbours: a cycle of eight number words.
fn cyclic_text(repeats: usize) -> String {
    "one two three four five six seven eight ".repeat(repeats)
}

#[test]
fn words_are_lower_cased_and_punctuation_stands_alone() {
    assert_eq!(
        words("Don't PANIC, it's 42.\n%\n=x"),
        ["don't", "panic", ",", "it's", "42", ".", "%", "=", "x"]
    );
}

#[test]
fn the_vocabulary_starts_with_the_specials_and_holds_every_lego_token() {
    let c = Corpus::from_text("the cat , the dog . the end", 2).unwrap();
    assert_eq!(
        &c.vocab[..5],
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    );
    for i in 0..VOCAB_SIZE as u32 {
        assert!(c.id(token_str(i)).is_some(), "LEGO token {}", token_str(i));
    }
    // `the` is the most frequent other word; `,` is a LEGO token already
    assert!(c.id("the").is_some());
    assert_eq!(c.vocab.len(), 5 + VOCAB_SIZE - 3 + 2);
    // unknown words of the text become [UNK]
    assert!(c.unk_rate > 0.0);
}

#[test]
fn masked_lm_learns_words_fixed_by_their_context_far_above_the_unigram_guess() {
    let corpus = Corpus::from_text(&cyclic_text(400), 50).unwrap();
    let cfg = pretrain(300);
    let run = LegoRun::new("t", Arch::Bert, Init::Text, 0);
    let dev = attnlab::nn::device().unwrap();
    let mut tt = TextTrainer::new(&model(), &run, 3, &corpus, &cfg, &dev).unwrap();
    drive(&mut tt, &DriveOpts::new(None)).unwrap();
    // the most frequent word is 1/8 of the text: a model that ignores the context scores 0.125
    assert!(
        tt.held_out_accuracy > 0.9,
        "held-out masked-word accuracy {}",
        tt.held_out_accuracy
    );
    let first: f64 = tt.losses[..10].iter().sum::<f64>() / 10.0;
    let last: f64 = tt.losses[290..].iter().sum::<f64>() / 10.0;
    assert!(last < 0.2 * first, "masked-LM loss {first} -> {last}");
}

#[test]
fn transfer_copies_the_encoder_and_each_lego_tokens_text_embedding() {
    let corpus = Corpus::from_text(&cyclic_text(50), 50).unwrap();
    let cfg = pretrain(3);
    let run = LegoRun::new("t", Arch::Bert, Init::Text, 1);
    let dev = attnlab::nn::device().unwrap();
    let mut tt = TextTrainer::new(&model(), &run, 3, &corpus, &cfg, &dev).unwrap();
    drive(&mut tt, &DriveOpts::new(None)).unwrap();
    // another seed, so that nothing matches before the transfer
    let lm = LegoModel::build(
        &model(),
        &LegoRun::new("t", Arch::Bert, Init::Text, 2),
        &dev,
    )
    .unwrap();
    let copied = transfer(&tt.varmap, &corpus, &lm).unwrap();
    let src = tt.varmap.data().lock().unwrap();
    let dst = lm.varmap.data().lock().unwrap();
    // every parameter but the token embedding and the output layer
    assert_eq!(copied, dst.len() - 2);
    for (name, v) in dst.iter() {
        let s = &src[name];
        if s.shape() == v.shape() && name != "tok_emb" {
            let d = (s.as_tensor() - v.as_tensor()).unwrap().abs().unwrap();
            let d = d
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(d, 0.0, "{name}");
        }
    }
    let (te, le) = (src["tok_emb"].as_tensor(), dst["tok_emb"].as_tensor());
    for i in 0..VOCAB_SIZE as u32 {
        let t = corpus.id(token_str(i)).unwrap() as usize;
        let a = te.get(t).unwrap().to_vec1::<f32>().unwrap();
        let b = le.get(i as usize).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b, "embedding of `{}`", token_str(i));
    }
    assert_ne!(
        src["out_w"].shape(),
        dst["out_w"].shape(),
        "the output layer is the LEGO model's own"
    );
}

#[test]
fn a_run_stopped_in_text_pretraining_resumes_to_the_same_result() {
    use attnlab::lego::config::{LegoTaskConfig, Loss, Preset, TrainConfig};
    use attnlab::lego::train::{train_run, RunOpts};
    use attnlab::run::{exit_code, Identity, RunDir};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let d = tempfile::tempdir().unwrap();
    let text = d.path().join("corpus.txt");
    std::fs::write(&text, cyclic_text(100)).unwrap();
    let mut pc = pretrain(12);
    pc.corpus = text;
    let p = Preset {
        provisional: true,
        note: "test".into(),
        seeds: vec![0],
        task: Some(LegoTaskConfig {
            n_var: 3,
            train_vars: 3,
            n_train: 100,
            n_test: 50,
        }),
        program: None,
        model: model(),
        train: TrainConfig {
            epochs: 2,
            batch_size: 50,
            optim: common::adam_cosine(3e-3),
            loss: Loss::Bce,
            eval_every: 1,
        },
        mimic: None,
        pretrain: Some(pc),
        lego_attention: None,
        convolution: None,
    };
    let run = LegoRun::new("t", Arch::Bert, Init::Text, 4);
    let dev = attnlab::nn::device().unwrap();
    let opts = common::unsaved_run(&dev);
    let full = train_run(&p, &run, 10, &opts).unwrap();
    assert_eq!(full.pretrain_losses.len(), 12);
    let stages: Vec<&str> = full.head_scores.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(stages, ["init", "pretrained", "trained"]);
    let run_dir = d.path().join("run");
    let identity = || Identity::of(&("t", 4), "tiny", 4).unwrap();
    // stopped before pretraining step 6, then before LEGO step 2
    let calls = AtomicUsize::new(0);
    for n in [6, 7 + 2] {
        calls.store(0, Ordering::SeqCst);
        let calls = &calls;
        let stop = move || calls.fetch_add(1, Ordering::SeqCst) + 1 == n;
        let dir = RunDir::open(&run_dir, identity()).unwrap();
        let stopped = RunOpts {
            dir: Some(&dir),
            stop: &stop,
            progress: None,
            dev: &dev,
        };
        let e = train_run(&p, &run, 10, &stopped).unwrap_err();
        assert_eq!(exit_code(&e), 130, "{e:#}");
    }
    assert!(run_dir.join("pretrain.checkpoint.safetensors").exists());
    assert!(run_dir.join("checkpoint.safetensors").exists());
    let dir = RunDir::open(&run_dir, identity()).unwrap();
    let resumed = train_run(
        &p,
        &run,
        10,
        &RunOpts {
            dir: Some(&dir),
            ..opts
        },
    )
    .unwrap();
    assert_eq!(resumed.pretrain_losses, full.pretrain_losses);
    assert_eq!(resumed.pretrain, full.pretrain);
    assert_eq!(resumed.losses, full.losses);
    assert_eq!(resumed.head_scores, full.head_scores);
}
