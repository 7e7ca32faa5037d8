//! Training the grokking LM: a tiny decoder learns a tiny Dyck language, an interrupted run resumes
//! to identical metrics, and the attention-sparsity metric equals a direct recomputation.

use attnlab::grokking::config::GrokkingExperiment;
use attnlab::grokking::train::{attention_sparsity, model_config, train_dyck, RunControl};
use attnlab::nn::{ForwardOpts, Transformer};
use candle_core::{DType, Device, Tensor};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

fn tiny() -> GrokkingExperiment {
    GrokkingExperiment::load(Path::new("tests/data/grokking_dyck_tiny.toml")).unwrap()
}

#[test]
fn tiny_decoder_learns_tiny_dyck() {
    let exp = tiny();
    let never = || false;
    let h = train_dyck(
        &exp,
        &exp.cpu,
        2,
        0,
        &RunControl {
            checkpoint: None,
            stop: &never,
        },
        &mut |_| {},
    )
    .unwrap();
    let (first, last) = (h.first().unwrap(), h.last().unwrap());
    // Chance is 1/2 with two bracket types; the closing bracket is determined by the prefix.
    assert!(
        last.val_acc > 0.9,
        "in-domain closing accuracy {}",
        last.val_acc
    );
    assert!(
        last.val_acc > first.val_acc + 0.2,
        "no learning: {} -> {}",
        first.val_acc,
        last.val_acc
    );
    assert!(
        last.val_scored > 100 && last.gen_scored > 100,
        "too few closings scored"
    );
    let losses: Vec<f64> = h.iter().filter_map(|p| p.train_loss).collect();
    assert!(
        losses.last().unwrap() < losses.first().unwrap(),
        "training loss did not fall: {losses:?}"
    );
}

#[test]
fn interrupted_run_resumes_to_identical_metrics() {
    let mut exp = tiny();
    exp.cpu.train.steps = 160;
    exp.cpu.eval.every = 40;
    exp.cpu.model.dropout = 0.1; // the dropout RNG must be restored too
    let dir = tempfile::tempdir().unwrap();
    let never = || false;
    let whole = train_dyck(
        &exp,
        &exp.cpu,
        2,
        3,
        &RunControl {
            checkpoint: Some(dir.path().join("a.safetensors")),
            stop: &never,
        },
        &mut |_| {},
    )
    .unwrap();
    let calls = AtomicUsize::new(0);
    let stop_at_57 = || calls.fetch_add(1, Ordering::SeqCst) + 1 == 57;
    let ck = dir.path().join("b.safetensors");
    let err = train_dyck(
        &exp,
        &exp.cpu,
        2,
        3,
        &RunControl {
            checkpoint: Some(ck.clone()),
            stop: &stop_at_57,
        },
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("interrupted after step 57"),
        "{err:#}"
    );
    let resumed = train_dyck(
        &exp,
        &exp.cpu,
        2,
        3,
        &RunControl {
            checkpoint: Some(ck),
            stop: &never,
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(whole, resumed);
}

#[test]
fn sparsity_equals_a_direct_recomputation() {
    let exp = tiny();
    let dev = Device::Cpu;
    let cfg = model_config(&exp.cpu, 3, 6, 32);
    let (model, _) = Transformer::build(&cfg, 5, DType::F32, &dev).unwrap();
    // Strings of different lengths, so the batched metric must cut each map to its own length.
    let strings: Vec<Vec<u16>> = vec![vec![0, 2], vec![0, 1, 3, 2], vec![1, 0, 2, 3, 0, 2]];
    let batched = attention_sparsity(&model, &strings, 2, &dev).unwrap();
    let (mut h_sum, mut rows) = (0.0f64, 0usize);
    for s in &strings {
        let ids: Vec<u32> = std::iter::once(4u32)
            .chain(s.iter().map(|&v| v as u32))
            .collect();
        let n = ids.len();
        let x = Tensor::from_vec(ids, (1, n), &dev).unwrap();
        let out = model
            .forward_with(
                &x,
                ForwardOpts {
                    capture_attention: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(out.attention.len(), 3, "one map per layer");
        for layer in &out.attention {
            let a = layer.squeeze(0).unwrap().to_vec3::<f32>().unwrap(); // (heads, T, T)
            for head in &a {
                for (q, row) in head.iter().enumerate() {
                    let total: f32 = row.iter().sum();
                    assert!((total - 1.0).abs() < 1e-5, "attention row sums to {total}");
                    assert!(
                        row[q + 1..].iter().all(|&p| p == 0.0),
                        "causal row {q} attends to the future"
                    );
                    h_sum -= row[..=q]
                        .iter()
                        .filter(|&&p| p > 0.0)
                        .map(|&p| p as f64 * (p as f64).ln())
                        .sum::<f64>();
                    rows += 1;
                }
            }
        }
    }
    let direct = -h_sum / rows as f64;
    assert!(
        (batched - direct).abs() < 1e-6,
        "batched {batched} vs direct {direct}"
    );
    assert!(
        direct < 0.0,
        "entropy of a causal map with more than one key is positive"
    );
}
