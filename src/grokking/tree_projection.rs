//! Tree projections (Murty, Sharma, Andreas, Manning, ICLR 2023): from a chart of span scores to
//! the projected tree, its tscore, and tparseval against gold trees; plus the context-free
//! attention mask under which a span's representation is computed.
//!
//! **Chart.** `chart[[i, j]]` (shape `(n, n)`, only `i <= j` read) is the SCI score of the inclusive
//! word span `(i, j)`: the cosine similarity between the span's representation in context and its
//! context-free representation (computed by the model code with [`context_free_mask`]).
//!
//! **Tree score.** `S(T) = sum of chart[[i, j]] over every node (i, j) of T except the root`,
//! single words included. This is the quantity the official `tree_projection` accumulates (each
//! internal node adds its two children's scores) and what `approximation_error` computes. The
//! root and the single words are in every tree, so they shift every `S(T)` by the same constant
//! and never change which tree wins or the tscore.
//!
//! **Projection.** Top-down: the span `(i, j)` splits at the `k` in `i..j` maximising
//! `chart[[i, k]] + chart[[k + 1, j]]` (first maximum on ties, as the code's strict `>`), then
//! each half recursively. This greedy tree need not maximise `S(T)`; [`project_tree_optimal`]
//! finds the tree that does, as a check.
//!
//! **tscore (the paper's, [`tscore`]).** The official code's estimator (`tree_projection(...,
//! normalize=True)`) computed exactly: at every internal node `(i, j)` of the greedy projected tree,
//! the best split value minus the *mean* split value over `k` in `i..j`, summed over the nodes.
//! Every term is `>= 0`, so the tscore is, and it is 0 exactly when every node's splits tie. The
//! code draws one random split per node ([`tscore_one_split_estimate`]); [`tscore`] is that draw's
//! expectation, so the curves carry no sampling noise.
//!
//! **tscore against a random tree ([`tscore_exact`]).** `S(T_proj) - E_T[S(T)]` for `T` drawn by
//! uniformly random split points, the expectation computed exactly by dynamic programming in
//! `O(n^3)` ([`expected_random_tree_score`]). Kept as a check, not the paper's quantity: in a
//! causal LM every span that starts at the first word has SCI 1, so the random tree collects free
//! 1s along its left spine and this difference is mostly negative.
//!
//! ```
//! use attnlab::grokking::tree_projection::{project_tree, tscore, tscore_exact};
//! use ndarray::Array2;
//! let chart = Array2::from_elem((5, 5), 0.7);
//! assert!(tscore(&chart).abs() < 1e-12); // a constant chart has no preferred structure
//! assert!(tscore_exact(&chart).abs() < 1e-12);
//! assert_eq!(project_tree(&chart).tree.len(), 5);
//! ```

use super::tree::BinaryTree;
use ndarray::Array2;
use rand::Rng;

/// A projected tree and its score `S(T_proj)`.
#[derive(Clone, Debug)]
pub struct ProjectedTree {
    pub tree: BinaryTree,
    pub score: f64,
}

fn split_value(chart: &Array2<f64>, i: usize, k: usize, j: usize) -> f64 {
    chart[[i, k]] + chart[[k + 1, j]]
}

fn check_chart(chart: &Array2<f64>) -> usize {
    let (n, m) = chart.dim();
    assert!(
        n == m && n > 0,
        "the chart must be square (n, n) with n > 0, got ({n}, {m})"
    );
    n
}

/// The greedy top-down tree projection of `chart` (shape `(n, n)`).
pub fn project_tree(chart: &Array2<f64>) -> ProjectedTree {
    let n = check_chart(chart);
    project_span(chart, 0, n - 1)
}

fn best_split(chart: &Array2<f64>, i: usize, j: usize) -> (usize, f64) {
    let mut best = (i, f64::NEG_INFINITY);
    for k in i..j {
        let v = split_value(chart, i, k, j);
        if v > best.1 {
            best = (k, v);
        }
    }
    best
}

fn project_span(chart: &Array2<f64>, i: usize, j: usize) -> ProjectedTree {
    if i == j {
        return ProjectedTree {
            tree: BinaryTree::Leaf(i),
            score: 0.0,
        };
    }
    let (k, v) = best_split(chart, i, j);
    let l = project_span(chart, i, k);
    let r = project_span(chart, k + 1, j);
    ProjectedTree {
        tree: BinaryTree::node(l.tree, r.tree),
        score: v + l.score + r.score,
    }
}

/// The tree maximising `S(T)` over every binary tree (CKY over split points, `O(n^3)`; first
/// maximum on ties). Not the paper's projection: the check on the greedy one, since
/// `S(T_opt) >= E_T[S(T)]` always while the greedy tree can score below a random one.
pub fn project_tree_optimal(chart: &Array2<f64>) -> ProjectedTree {
    let n = check_chart(chart);
    // best[[i, j]]: max over trees of span (i, j) of the chart summed over its non-root nodes.
    let mut best = Array2::<f64>::zeros((n, n));
    let mut split = Array2::<usize>::zeros((n, n));
    for len in 2..=n {
        for i in 0..=n - len {
            let j = i + len - 1;
            let mut b = (i, f64::NEG_INFINITY);
            for k in i..j {
                let v = split_value(chart, i, k, j) + best[[i, k]] + best[[k + 1, j]];
                if v > b.1 {
                    b = (k, v);
                }
            }
            split[[i, j]] = b.0;
            best[[i, j]] = b.1;
        }
    }
    fn build(split: &Array2<usize>, i: usize, j: usize) -> BinaryTree {
        if i == j {
            return BinaryTree::Leaf(i);
        }
        let k = split[[i, j]];
        BinaryTree::node(build(split, i, k), build(split, k + 1, j))
    }
    ProjectedTree {
        tree: build(&split, 0, n - 1),
        score: best[[0, n - 1]],
    }
}

/// [`tscore_exact`] with the optimal tree in place of the greedy projection; never negative.
pub fn tscore_optimal_tree(chart: &Array2<f64>) -> f64 {
    project_tree_optimal(chart).score - expected_random_tree_score(chart)
}

/// `S(T)`: the chart summed over every node of `tree` except the root (words included).
pub fn tree_score(chart: &Array2<f64>, tree: &BinaryTree) -> f64 {
    check_chart(chart);
    let root = tree.span();
    tree.all_spans()
        .into_iter()
        .filter(|s| *s != root)
        .map(|(i, j)| chart[[i, j]])
        .sum()
}

/// `E_T[S(T)]` over trees with uniformly random split points, exactly:
/// `E(i, j) = mean over k of [chart(i, k) + chart(k+1, j) + E(i, k) + E(k+1, j)]`, `E(i, i) = 0`.
pub fn expected_random_tree_score(chart: &Array2<f64>) -> f64 {
    let n = check_chart(chart);
    let mut e = Array2::<f64>::zeros((n, n));
    for len in 2..=n {
        for i in 0..=n - len {
            let j = i + len - 1;
            let total: f64 = (i..j)
                .map(|k| split_value(chart, i, k, j) + e[[i, k]] + e[[k + 1, j]])
                .sum();
            e[[i, j]] = total / (len - 1) as f64;
        }
    }
    e[[0, n - 1]]
}

/// tscore of one sentence: `S(T_proj) - E_T[S(T)]`, with the expectation computed exactly.
pub fn tscore_exact(chart: &Array2<f64>) -> f64 {
    project_tree(chart).score - expected_random_tree_score(chart)
}

/// tscore of one sentence as the official code estimates it (`tree_projection(..., normalize=True)`):
/// the sum over internal nodes `(i, j)` of the projected tree of
/// `best split value - value of one split k ~ Uniform(i..j)`.
pub fn tscore_one_split_estimate<R: Rng>(chart: &Array2<f64>, rng: &mut R) -> f64 {
    let proj = project_tree(chart);
    let mut total = 0.0;
    for (i, j) in proj.tree.brackets() {
        let (_, best) = best_split(chart, i, j);
        let k = rng.gen_range(i..j);
        total += best - split_value(chart, i, k, j);
    }
    total
}

/// Mean of `chart[[i, k]] + chart[[k + 1, j]]` over the split points `k` in `i..j` (`i < j`): the
/// expected value of one uniformly random split of the span.
pub fn mean_split_value(chart: &Array2<f64>, i: usize, j: usize) -> f64 {
    assert!(i < j, "a span ({i}, {j}) of one word has no split");
    (i..j).map(|k| split_value(chart, i, k, j)).sum::<f64>() / (j - i) as f64
}

/// The paper's tscore of one sentence: the official one-split estimator
/// ([`tscore_one_split_estimate`]) in expectation, i.e. the sum over the internal nodes `(i, j)`
/// of the greedy projected tree of `best split value - mean split value` ([`mean_split_value`]).
/// Never negative; nodes of two words (one split) add 0.
pub fn tscore(chart: &Array2<f64>) -> f64 {
    let proj = project_tree(chart);
    proj.tree
        .brackets()
        .into_iter()
        .map(|(i, j)| best_split(chart, i, j).1 - mean_split_value(chart, i, j))
        .sum()
}

/// The corpus tscore: the mean of [`tscore`] over sentences (0 for no sentences).
pub fn mean_tscore(charts: &[Array2<f64>]) -> f64 {
    if charts.is_empty() {
        return 0.0;
    }
    charts.iter().map(tscore).sum::<f64>() / charts.len() as f64
}

/// Builds the `(n, n)` SCI chart by calling `sci(i, j)` for every span `i <= j`; entries below
/// the diagonal are 0 and never read.
pub fn sci_chart<F: FnMut(usize, usize) -> f64>(n: usize, mut sci: F) -> Array2<f64> {
    let mut chart = Array2::zeros((n, n));
    for i in 0..n {
        for j in i..n {
            chart[[i, j]] = sci(i, j);
        }
    }
    chart
}

/// Cosine similarity of two vectors (the SCI of a span: its in-context representation, the sum
/// of its tokens' last-layer states, against the same sum under [`context_free_mask`]).
/// 0 when either vector is zero. Panics if the lengths differ.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(
        a.len(),
        b.len(),
        "cosine of vectors of lengths {} and {}",
        a.len(),
        b.len()
    );
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// Unlabelled bracketing precision, recall and F1.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Bracketing {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// tparseval: bracketing F1 of `predicted` against `gold` trees, pooled over the corpus (matched
/// brackets over all sentences divided by all predicted, resp. gold, brackets), as the official
/// `get_parsing_accuracy`. Brackets are internal-node spans, root included, single words
/// excluded ([`BinaryTree::brackets`]); binary trees over the same `n` words both have `n - 1`,
/// so precision = recall = F1. Panics if the two lists differ in length.
pub fn tparseval(predicted: &[BinaryTree], gold: &[BinaryTree]) -> Bracketing {
    assert_eq!(
        predicted.len(),
        gold.len(),
        "tparseval needs one gold tree per predicted tree"
    );
    let (mut matched, mut n_pred, mut n_gold) = (0usize, 0usize, 0usize);
    for (p, g) in predicted.iter().zip(gold) {
        let (pb, gb) = (p.bracket_set(), g.bracket_set());
        matched += pb.intersection(&gb).count();
        n_pred += pb.len();
        n_gold += gb.len();
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let (precision, recall) = (ratio(matched, n_pred), ratio(matched, n_gold));
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    Bracketing {
        precision,
        recall,
        f1,
    }
}

/// The context-free attention mask for a span, shape `(seq_len, seq_len)`, `true` = query row may
/// attend to key column. Position 0 is the start token; the span is the inclusive token range
/// `first..=last` (for word span `(i, j)` of a sentence after one start token: `(i + 1, j + 1)`).
///
/// Every row is causal (`key <= query`); a row inside the span may further attend only to the
/// start token and to span tokens. Rows outside the span are plain causal. The official code
/// (`mask_all_possible` with `start_relax_layer = 0`) instead applies the key mask
/// [`context_free_key_mask`] to every row in every layer and discards the other rows' states; in a
/// causal model the span rows, and so the span's representation, are identical either way.
/// Panics unless `1 <= first <= last < seq_len`.
pub fn context_free_mask(seq_len: usize, first: usize, last: usize) -> Array2<bool> {
    assert!(
        1 <= first && first <= last && last < seq_len,
        "span {first}..={last} must lie inside 1..{seq_len} (position 0 is the start token)"
    );
    Array2::from_shape_fn((seq_len, seq_len), |(q, k)| {
        k <= q && (!(first..=last).contains(&q) || k == 0 || (first..=last).contains(&k))
    })
}

/// The masks of every span that starts at token `first`, in one forward pass: shape
/// `(seq_len, seq_len)`, `true` = query row may attend to key column. Rows `q >= first` attend to
/// the start token and to keys `first..=q`; rows before `first` are plain causal.
///
/// In a causal model the states of tokens `first..=last` under this mask equal their states under
/// [`context_free_mask`]`(seq_len, first, last)` for every `last`: a span row only ever reads keys at
/// or before itself, and those are the start token and span tokens under both masks. So one pass
/// per start word gives the context-free representation of all `n - i` spans `(i, j)`, instead of
/// one pass per span. Panics unless `1 <= first < seq_len`.
pub fn context_free_start_mask(seq_len: usize, first: usize) -> Array2<bool> {
    assert!(
        1 <= first && first < seq_len,
        "start {first} must lie inside 1..{seq_len} (position 0 is the start token)"
    );
    Array2::from_shape_fn((seq_len, seq_len), |(q, k)| {
        k <= q && (q < first || k == 0 || k >= first)
    })
}

/// [`context_free_mask`] as an additive mask: `0.0` where allowed, `-inf` where masked.
pub fn context_free_additive_mask(seq_len: usize, first: usize, last: usize) -> Array2<f32> {
    context_free_mask(seq_len, first, last).mapv(|ok| if ok { 0.0 } else { f32::NEG_INFINITY })
}

/// The official code's per-key form, length `seq_len`: `true` = key masked out (tokens strictly
/// between the start token and the span, and after the span), to be combined with the causal
/// mask for every query row.
pub fn context_free_key_mask(seq_len: usize, first: usize, last: usize) -> Vec<bool> {
    assert!(
        1 <= first && first <= last && last < seq_len,
        "span {first}..={last} must lie inside 1..{seq_len} (position 0 is the start token)"
    );
    (0..seq_len)
        .map(|k| k != 0 && !(first..=last).contains(&k))
        .collect()
}
