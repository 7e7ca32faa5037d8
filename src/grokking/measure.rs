//! The paper's measures of a trained decoder, taken at every evaluation:
//!
//! - in-domain and generalisation accuracy (Dyck closing-bracket accuracy, QF first-word
//!   accuracy on `quest` lines, TI main-verb accuracy of the greedy decode on every validation
//!   line as the official code, and on the `PRESENT` lines alone as `in_domain_transform_acc`);
//! - weight norm `||theta|| / L` and attention sparsity (minus the mean entropy over every layer,
//!   head and causal row of the captured attention, on `eval.train_examples` training lines);
//! - tree projections on the first `eval.tree_sentences` training sentences of two or more words
//!   (every length): the SCI chart of every span (cosine between the in-context and the
//!   context-free sum of the span's last-layer states, the latter under the context-free mask in
//!   every layer, one forward pass per start word by [`context_free_start_mask`]), the greedy
//!   projected tree, the paper's [`tscore`] (the official estimator computed exactly), the
//!   random-tree difference [`tscore_exact`](super::tree_projection::tscore_exact), and for QF / TI
//!   tparseval against the gold trees with the right-branching baseline.
//!
//! The pure parts (entropy, norms, charts, projections) live in [`super::internals`] and
//! [`super::tree_projection`]; this module runs the model and hands them its numbers.

use super::config::Task;
use super::dyck;
use super::internals::{weight_norm, AttentionSparsity};
use super::model::{greedy, logits_of, pad_batch, EVAL_BATCH};
use super::streams;
use super::task::{dyck_line, with_bos, RunData};
use super::tree::BinaryTree;
use super::tree_projection::{
    context_free_mask, context_free_start_mask, cosine_similarity, expected_random_tree_score,
    project_tree, project_tree_optimal, sci_chart, tparseval, tscore, tscore_one_split_estimate,
};
use super::vocab::{qf_first_word_correct, ti_main_verb_correct};
use crate::nn::{AttnMask, ForwardOpts, Transformer};
use crate::rng::stream;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use ndarray::Array2;
use serde::Serialize;

/// Names of the values [`evaluate`] returns, in order (the run's metrics columns after the
/// engine's `step, wall_s, lr, train_loss`).
pub const EVAL_COLUMNS: [&str; 9] = [
    "in_domain_acc",
    "in_domain_transform_acc",
    "gen_acc",
    "weight_norm",
    "sparsity",
    "tscore",
    "tscore_random_tree",
    "tparseval",
    "tparseval_right_branching",
];

/// Every measure of [`EVAL_COLUMNS`] on `model` (`vm` its parameters), tree projections on the
/// first `tree_sentences` training sentences; `in_domain_transform_acc`, tparseval and its
/// baseline are NaN for Dyck, which has no transformation lines and no gold trees.
pub fn evaluate(
    model: &Transformer,
    vm: &VarMap,
    data: &RunData,
    train_examples: usize,
    tree_sentences: usize,
    min_dist: usize,
    dev: &Device,
) -> Result<Vec<f64>> {
    let n = train_examples.min(data.train.len());
    let sparsity = attention_sparsity(model, &data.train[..n], data.pad, dev)?;
    let c = projection_check(model, data, tree_sentences, dev)?;
    let transform = match data.task {
        Task::Dyck => f64::NAN,
        _ => accuracy_on(model, data, min_dist, Lines::InDomainTransform, dev)?,
    };
    Ok(vec![
        accuracy_on(model, data, min_dist, Lines::InDomain, dev)?,
        transform,
        accuracy_on(model, data, min_dist, Lines::Gen, dev)?,
        model_weight_norm(vm, model.cfg.n_layers)?,
        sparsity,
        c.tscore,
        c.tscore_random_tree,
        c.tparseval_greedy,
        c.tparseval_right_branching,
    ])
}

/// Which held-out lines an accuracy is scored on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lines {
    /// The in-domain validation set: Dyck every string, QF the `quest` lines (the first word of a
    /// `decl` copy is the input's), TI every line (`PAST` copies and `PRESENT` re-inflections,
    /// as the official code's `main_right_tense` over the whole validation file).
    InDomain,
    /// The in-domain validation lines that transform (`quest` / `PRESENT`).
    InDomainTransform,
    /// The generalisation set (every line transforms).
    Gen,
}

/// In-domain (`gen = false`, [`Lines::InDomain`]) or generalisation accuracy of `model`.
pub fn accuracy(
    model: &Transformer,
    data: &RunData,
    min_dist: usize,
    gen: bool,
    dev: &Device,
) -> Result<f64> {
    let lines = if gen { Lines::Gen } else { Lines::InDomain };
    accuracy_on(model, data, min_dist, lines, dev)
}

/// Accuracy of `model` on `lines`; NaN when a grammar set has no line to score.
pub fn accuracy_on(
    model: &Transformer,
    data: &RunData,
    min_dist: usize,
    lines: Lines,
    dev: &Device,
) -> Result<f64> {
    let gen = lines == Lines::Gen;
    match data.task {
        Task::Dyck => {
            let split = data.dyck.as_ref().context("Dyck run without Dyck data")?;
            let set = if gen { &split.gen } else { &split.val };
            let lines: Vec<Vec<u32>> = set.iter().map(|s| dyck_line(data.bos, s)).collect();
            let logits = logits_of(model, &lines, data.pad, dev)?;
            let mut acc = dyck::ClosingAccuracy::default();
            for (s, l) in set.iter().zip(&logits) {
                // Row j of the logits (after BOS + s[..j]) predicts s[j].
                let rows = l.slice(ndarray::s![..s.len(), ..]);
                let rows = rows.as_standard_layout();
                acc.add(dyck::closing_bracket_accuracy_nd(
                    s,
                    rows.view(),
                    data.k,
                    min_dist,
                )?);
            }
            Ok(acc.accuracy())
        }
        Task::Qf | Task::Ti => {
            let (split, vocab) = data
                .grammar
                .as_ref()
                .context("grammar run without grammar data")?;
            let set = if gen { &split.gen } else { &split.val };
            let all_lines = data.task == Task::Ti && lines == Lines::InDomain;
            let exs: Vec<_> = set
                .iter()
                .filter(|e| all_lines || e.is_transform())
                .collect();
            if exs.is_empty() {
                return Ok(f64::NAN);
            }
            let prompts = exs
                .iter()
                .map(|e| {
                    let t = e.tokens();
                    Ok(with_bos(data.bos, vocab.encode(&t[..e.prompt_len()])?))
                })
                .collect::<Result<Vec<_>>>()?;
            let mut correct = 0usize;
            if data.task == Task::Qf {
                let logits = logits_of(model, &prompts, data.pad, dev)?;
                for (e, l) in exs.iter().zip(&logits) {
                    let row = l.row(l.nrows() - 1).to_vec();
                    correct += qf_first_word_correct(e, &row, vocab)? as usize;
                }
            } else {
                let steps = exs.iter().map(|e| e.output.len() + 1).max().unwrap_or(1);
                let outs = greedy(model, &prompts, steps, data.pad, dev)?;
                for (e, o) in exs.iter().zip(&outs) {
                    let words: Vec<&str> = o
                        .iter()
                        .map(|&i| vocab.word(i as usize).unwrap_or("<bos>"))
                        .collect();
                    correct += ti_main_verb_correct(e, &words, vocab) as usize;
                }
            }
            Ok(correct as f64 / exs.len() as f64)
        }
    }
}

/// `||theta|| / L` over every parameter of `vm`.
pub fn model_weight_norm(vm: &VarMap, n_layers: usize) -> Result<f64> {
    let data = vm.data().lock().expect("VarMap lock poisoned");
    let mut vars: Vec<_> = data.iter().collect();
    vars.sort_by(|a, b| a.0.cmp(b.0)); // fixed summation order: bit-identical across instances
    let mut vals: Vec<Vec<f32>> = Vec::with_capacity(vars.len());
    for (_, v) in vars {
        vals.push(
            v.as_tensor()
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?,
        );
    }
    Ok(weight_norm(
        vals.iter().map(|v| v.as_slice()),
        n_layers.max(1),
    ))
}

/// Attention sparsity (minus the mean row entropy over every layer, head and causal row) of
/// `model` on `lines`, from the attention captured in the forward pass.
pub fn attention_sparsity(
    model: &Transformer,
    lines: &[Vec<u32>],
    pad: u32,
    dev: &Device,
) -> Result<f64> {
    let mut s = AttentionSparsity::default();
    for chunk in lines.chunks(EVAL_BATCH) {
        let refs: Vec<&[u32]> = chunk.iter().map(|l| l.as_slice()).collect();
        let (x, t) = pad_batch(&refs, pad, dev)?;
        let out = model.forward_with(
            &x,
            ForwardOpts {
                capture_attention: true,
                ..Default::default()
            },
        )?;
        for att in &out.attention {
            let (b, h, _, _) = att.dims4()?;
            let flat = att.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let a = ndarray::Array4::from_shape_vec((b, h, t, t), flat)?;
            for (bi, l) in chunk.iter().enumerate() {
                let n = l.len();
                for hi in 0..h {
                    s.add_map(a.slice(ndarray::s![bi, hi, ..n, ..n]))?;
                }
            }
        }
    }
    Ok(s.value())
}

/// Sum over positions `first..=last` of `hidden[b]` (`hidden` flattened `(B, T, d)`).
fn span_sum(hidden: &[f32], b: usize, t: usize, d: usize, first: usize, last: usize) -> Vec<f32> {
    let mut v = vec![0f32; d];
    for p in first..=last {
        let row = &hidden[(b * t + p) * d..(b * t + p + 1) * d];
        for (a, x) in v.iter_mut().zip(row) {
            *a += x;
        }
    }
    v
}

/// Last-layer states `(T, d)` of `line` with every span's context-free encoding: returns the
/// in-context states and, per span `(first, last)` in token positions, the context-free states of
/// the whole line under [`context_free_mask`] (flattened `(T, d)`).
pub fn context_free_states(
    model: &Transformer,
    line: &[u32],
    spans: &[(usize, usize)],
    dev: &Device,
) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let t = line.len();
    let x = Tensor::from_vec(line.to_vec(), (1, t), dev)?;
    let ic = model
        .forward_with(&x, ForwardOpts::default())?
        .hidden
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut cf = Vec::with_capacity(spans.len());
    for chunk in spans.chunks(EVAL_BATCH) {
        let b = chunk.len();
        let mut m = Vec::with_capacity(b * t * t);
        for &(f, l) in chunk {
            m.extend(context_free_mask(t, f, l).iter().map(|&ok| ok as u8));
        }
        let mask = AttnMask::Allowed(Tensor::from_vec(m, (b, t, t), dev)?);
        let xs = x.broadcast_as((b, t))?.contiguous()?;
        let h = model
            .forward_with(
                &xs,
                ForwardOpts {
                    mask: Some(&mask),
                    ..Default::default()
                },
            )?
            .hidden
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let per = t * model.cfg.d_model;
        for bi in 0..b {
            cf.push(h[bi * per..(bi + 1) * per].to_vec());
        }
    }
    Ok((ic, cf))
}

/// The SCI chart of a sentence `words` (ids without BOS): `chart[i][j]` = cosine between the
/// in-context and context-free sums of the last-layer states of words `i..=j`, one forward pass
/// per span (the reference for [`sentence_charts`]).
pub fn sentence_chart(
    model: &Transformer,
    words: &[u32],
    bos: u32,
    dev: &Device,
) -> Result<Array2<f64>> {
    let n = words.len();
    let line: Vec<u32> = std::iter::once(bos).chain(words.iter().copied()).collect();
    let t = line.len();
    let d = model.cfg.d_model;
    let spans: Vec<(usize, usize)> = (0..n)
        .flat_map(|i| (i..n).map(move |j| (i + 1, j + 1)))
        .collect();
    let (ic, cf) = context_free_states(model, &line, &spans, dev)?;
    let mut sci = std::collections::HashMap::new();
    for (&(f, l), c) in spans.iter().zip(&cf) {
        let a = span_sum(&ic, 0, t, d, f, l);
        let b = span_sum(c, 0, t, d, f, l);
        sci.insert((f - 1, l - 1), cosine_similarity(&a, &b));
    }
    Ok(sci_chart(n, |i, j| sci[&(i, j)]))
}

/// The SCI charts of many sentences (`sentences[s]`: word ids without BOS, at least one word),
/// batched: for each sentence one forward pass per start word `i` under
/// [`context_free_start_mask`] gives the context-free states of every span `(i, j)`; the pass
/// for `i = 0` is the plain causal one, i.e. the in-context states. Equal to
/// [`sentence_chart`] sentence by sentence (test `batched_charts_equal_per_span_charts`).
pub fn sentence_charts(
    model: &Transformer,
    sentences: &[Vec<u32>],
    bos: u32,
    pad: u32,
    dev: &Device,
) -> Result<Vec<Array2<f64>>> {
    let d = model.cfg.d_model;
    let mut charts = Vec::with_capacity(sentences.len());
    // Sentence groups bound the states held at once (Dyck: up to 64 starts of 65 tokens each).
    for group in sentences.chunks(32) {
        // (sentence in group, start word), longest first so that batches pad little.
        let mut jobs: Vec<(usize, usize)> = group
            .iter()
            .enumerate()
            .flat_map(|(g, w)| (0..w.len()).map(move |i| (g, i)))
            .collect();
        jobs.sort_by_key(|&(g, i)| (std::cmp::Reverse(group[g].len()), g, i));
        let mut states: Vec<Vec<Vec<f32>>> = group.iter().map(|w| vec![vec![]; w.len()]).collect();
        for chunk in jobs.chunks(EVAL_BATCH) {
            let t = chunk
                .iter()
                .map(|&(g, _)| group[g].len() + 1)
                .max()
                .unwrap_or(1);
            let b = chunk.len();
            let mut toks = Vec::with_capacity(b * t);
            let mut mask = Vec::with_capacity(b * t * t);
            for &(g, i) in chunk {
                let w = &group[g];
                toks.push(bos);
                toks.extend_from_slice(w);
                toks.extend(std::iter::repeat_n(pad, t - 1 - w.len()));
                mask.extend(context_free_start_mask(t, i + 1).iter().map(|&ok| ok as u8));
            }
            let x = Tensor::from_vec(toks, (b, t), dev)?;
            let m = AttnMask::Allowed(Tensor::from_vec(mask, (b, t, t), dev)?);
            let h = model
                .forward_with(
                    &x,
                    ForwardOpts {
                        mask: Some(&m),
                        ..Default::default()
                    },
                )?
                .hidden
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for (bi, &(g, i)) in chunk.iter().enumerate() {
                let n = group[g].len();
                states[g][i] = h[bi * t * d..(bi * t + n + 1) * d].to_vec();
            }
        }
        for (w, st) in group.iter().zip(&states) {
            let n = w.len();
            let ic = &st[0];
            let mut chart = Array2::zeros((n, n));
            for (i, cf) in st.iter().enumerate() {
                // Running sums over token positions i+1..=j+1 (word j is token j + 1).
                let (mut a, mut b) = (vec![0f32; d], vec![0f32; d]);
                for j in i..n {
                    let p = j + 1;
                    for (acc, x) in a.iter_mut().zip(&ic[p * d..(p + 1) * d]) {
                        *acc += x;
                    }
                    for (acc, x) in b.iter_mut().zip(&cf[p * d..(p + 1) * d]) {
                        *acc += x;
                    }
                    chart[[i, j]] = cosine_similarity(&a, &b);
                }
            }
            charts.push(chart);
        }
    }
    Ok(charts)
}

/// Tree-projection sentences: the first `count` training sentences of two or more words (every
/// length; QF / TI: the input before `.` and the marker, as the official code), with gold trees
/// for QF / TI.
fn tree_sentences(data: &RunData, count: usize) -> Result<Vec<(Vec<u32>, Option<BinaryTree>)>> {
    Ok(match (&data.dyck, &data.grammar) {
        (Some(s), _) => s
            .train
            .iter()
            .filter(|s| s.len() >= 2)
            .take(count)
            .map(|s| (s.iter().map(|&t| t as u32).collect(), None))
            .collect(),
        (_, Some((s, v))) => {
            let mut out = Vec::new();
            for e in s.train.iter().filter(|e| e.input.len() >= 2).take(count) {
                let ids = v.encode(&e.input)?.into_iter().map(|i| i as u32).collect();
                out.push((ids, Some(e.tree.clone())));
            }
            out
        }
        _ => Vec::new(),
    })
}

/// Tree projections of one model on a set of sentences: the paper's tscore and tparseval of the
/// greedy projection, and the checks beside them (the random-tree difference, the optimal tree,
/// the one-split sample the official code draws).
#[derive(Clone, Debug, Serialize)]
pub struct ProjectionCheck {
    pub sentences: usize,
    /// The paper's tscore: mean over sentences of [`tscore`] (the official estimator, exactly).
    pub tscore: f64,
    /// Mean of `S(T_greedy) - E[S(T_random)]` (`tscore_exact`; negative in a causal LM).
    pub tscore_random_tree: f64,
    /// Mean of `S(T_optimal) - E[S(T_random)]` (never negative).
    pub tscore_optimal: f64,
    /// Fraction of sentences whose greedy tree scores below a random tree's expectation.
    pub greedy_below_random: f64,
    /// Fraction of sentences whose greedy tree is the optimal one.
    pub greedy_is_optimal: f64,
    /// The official code's one-split sample of [`tscore`] (`tree_projection(..., normalize=True)`).
    pub tscore_code_estimate: f64,
    /// Mean SCI of the spans that start at the first word: 1 in a causal LM, whose prefix spans
    /// see no more context in the sentence than under the context-free mask.
    pub left_anchored_sci: f64,
    /// NaN for Dyck (no gold trees).
    pub tparseval_greedy: f64,
    pub tparseval_optimal: f64,
    pub tparseval_right_branching: f64,
}

/// [`ProjectionCheck`] of `model` on the first `count` tree-projection sentences.
pub fn projection_check(
    model: &Transformer,
    data: &RunData,
    count: usize,
    dev: &Device,
) -> Result<ProjectionCheck> {
    let sents = tree_sentences(data, count)?;
    let words: Vec<Vec<u32>> = sents.iter().map(|(w, _)| w.clone()).collect();
    let charts = sentence_charts(model, &words, data.bos, data.pad, dev)?;
    let n = sents.len().max(1) as f64;
    let (mut tp, mut tg, mut to, mut below, mut same) = (0.0, 0.0, 0.0, 0usize, 0usize);
    let (mut code, mut left, mut left_n) = (0.0, 0.0, 0usize);
    let mut rng = stream(streams::TSCORE_ESTIMATE_SEED, streams::TSCORE_ESTIMATE);
    let (mut greedy, mut optimal, mut gold, mut rb) = (vec![], vec![], vec![], vec![]);
    for ((w, g), chart) in sents.iter().zip(&charts) {
        let (pg, po) = (project_tree(chart), project_tree_optimal(chart));
        // tscore_exact and tscore_optimal_tree, sharing the projections and the expectation.
        let e = expected_random_tree_score(chart);
        let t = pg.score - e;
        tp += tscore(chart);
        tg += t;
        to += po.score - e;
        code += tscore_one_split_estimate(chart, &mut rng);
        for j in 1..w.len() {
            left += chart[[0, j]];
            left_n += 1;
        }
        below += usize::from(t < 0.0);
        same += usize::from(pg.tree == po.tree);
        if let Some(g) = g {
            greedy.push(pg.tree);
            optimal.push(po.tree);
            gold.push(g.clone());
            rb.push(BinaryTree::right_branching(w.len()));
        }
    }
    let f1 = |pred: &[BinaryTree]| {
        if gold.is_empty() {
            f64::NAN
        } else {
            tparseval(pred, &gold).f1
        }
    };
    Ok(ProjectionCheck {
        sentences: sents.len(),
        tscore: tp / n,
        tscore_random_tree: tg / n,
        tscore_optimal: to / n,
        greedy_below_random: below as f64 / n,
        greedy_is_optimal: same as f64 / n,
        tscore_code_estimate: code / n,
        left_anchored_sci: left / left_n.max(1) as f64,
        tparseval_greedy: f1(&greedy),
        tparseval_optimal: f1(&optimal),
        tparseval_right_branching: f1(&rb),
    })
}
