//! Invariants of the structural-grokking data, metrics and tree projections (Murty et al. 2023):
//! Dyck strings are balanced and the sampler has its stated probabilities; held-out structures
//! never occur in training; QF/TI generalisation examples defeat the linear rule while training
//! examples do not; gold trees are binary and span their sentence; tree projection, tscore and
//! tparseval behave as defined; every experiment config parses.

use attnlab::grokking::config::GrokkingExperiment;
use attnlab::grokking::dyck::{
    self, closing_bracket_accuracy, closing_bracket_accuracy_nd, closing_pairs, is_balanced,
    max_nesting, sample_dyck, sample_dyck_unconditioned, structure, structure_split, DyckConfig,
    ShortStrings, SplitCriterion,
};
use attnlab::grokking::grammar::{self, grammar_split, GrammarExample, GrammarTask, Modifier, Pos};
use attnlab::grokking::tree::BinaryTree;
use attnlab::grokking::tree_projection::{
    context_free_additive_mask, context_free_key_mask, context_free_mask, cosine_similarity,
    expected_random_tree_score, mean_tscore, project_tree, project_tree_optimal, sci_chart,
    tparseval, tree_score, tscore, tscore_exact, tscore_one_split_estimate, tscore_optimal_tree,
};
use attnlab::grokking::vocab::{qf_first_word_correct, ti_main_verb_correct, GrammarVocab};
use attnlab::grokking::SplitSizes;
use attnlab::rng::seeded;
use ndarray::Array2;
use proptest::prelude::*;
use rand::Rng;
use std::collections::HashSet;

/// `|observed - p| <= 4 standard errors` of a proportion from `n` draws.
fn assert_proportion(hits: usize, n: usize, p: f64, what: &str) {
    let obs = hits as f64 / n as f64;
    let se = (p * (1.0 - p) / n as f64).sqrt();
    assert!(
        (obs - p).abs() <= 4.0 * se,
        "{what}: observed {obs:.4} from {n} draws, expected {p:.4} (4 SE = {:.4})",
        4.0 * se
    );
}

// ---------------------------------------------------------------- Dyck

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn dyck_strings_are_balanced_within_depth(
        seed in 0u64..1_000_000, k in 1usize..6, m in 1usize..7, reject_end in any::<bool>(),
        max_len in proptest::option::of(4usize..40)
    ) {
        let cfg = DyckConfig {
            bracket_types: k,
            max_depth: m,
            min_len: 4,
            short_strings: if reject_end { ShortStrings::RejectEnd } else { ShortStrings::Resample },
            max_len,
        };
        let mut rng = seeded(seed);
        for _ in 0..20 {
            let s = sample_dyck(&cfg, &mut rng);
            prop_assert!(is_balanced(&s, k, m), "unbalanced or too deep: {s:?}");
            prop_assert!(max_nesting(&s, k) <= m);
            prop_assert!(s.len() >= 4);
            prop_assert!(max_len.is_none_or(|l| s.len() <= l));
            prop_assert_eq!(closing_pairs(&s, k).len(), s.len() / 2);
        }
    }
}

#[test]
fn dyck_sampler_matches_its_probabilities() {
    let cfg = DyckConfig {
        bracket_types: 5,
        max_depth: 3,
        ..DyckConfig::default()
    };
    let k = cfg.bracket_types;
    let mut rng = seeded(11);
    let n = 40_000;
    let (mut empty, mut len2) = (0, 0);
    // Free steps: stack neither empty nor full, where close has probability 1/2.
    let (mut free_steps, mut free_closes) = (0, 0);
    let mut full_steps = 0;
    let mut opens_by_type = vec![0usize; k];
    for _ in 0..n {
        let s = sample_dyck_unconditioned(&cfg, &mut rng);
        empty += s.is_empty() as usize;
        len2 += (s.len() == 2) as usize;
        let mut depth = 0usize;
        for &t in &s {
            let open = dyck::is_open(t, k);
            if depth == cfg.max_depth {
                full_steps += 1;
                assert!(!open, "opened a bracket at the maximum depth");
            } else if depth > 0 {
                free_steps += 1;
                free_closes += !open as usize;
            }
            if open {
                opens_by_type[t as usize] += 1;
                depth += 1;
            } else {
                depth -= 1;
            }
        }
    }
    assert_proportion(empty, n, 0.5, "END on the first step");
    // open (1/2) * close at depth 1 (1/2) * END (1/2)
    assert_proportion(len2, n, 0.125, "strings of length 2");
    assert_proportion(
        free_closes,
        free_steps,
        0.5,
        "close below the maximum depth",
    );
    assert!(full_steps > 0, "the test never reached the maximum depth");
    let total_opens: usize = opens_by_type.iter().sum();
    for (t, &c) in opens_by_type.iter().enumerate() {
        assert_proportion(c, total_opens, 1.0 / k as f64, &format!("open type {t}"));
    }
}

#[test]
fn dyck_resampling_keeps_only_long_strings_in_proportion() {
    // Resampling conditions on length >= 4, so length-4 strings keep their relative probability.
    // Unconditioned, P(len 4) = 1/32 (two length-2 segments: 5 steps of probability 1/2) + 1/32
    // (one nested segment) = 1/16, and P(len >= 4) = 1 - 1/2 - 1/8 = 3/8: 1/6 after resampling.
    let cfg = DyckConfig {
        bracket_types: 3,
        max_depth: 10,
        ..DyckConfig::default()
    };
    let mut rng = seeded(5);
    let n = 30_000;
    let len4 = (0..n)
        .filter(|_| sample_dyck(&cfg, &mut rng).len() == 4)
        .count();
    assert_proportion(len4, n, 1.0 / 6.0, "length-4 strings after resampling");
}

#[test]
fn dyck_split_holds_out_structures_at_paper_size() {
    let cfg = DyckConfig::default();
    let k = cfg.bracket_types;
    let sizes = SplitSizes::DYCK_PAPER;
    let split = structure_split(&cfg, sizes, SplitCriterion::WholeString, 3).unwrap();
    assert_eq!(
        (split.train.len(), split.val.len(), split.gen.len()),
        (200_000, 20_000, 20_000)
    );
    let train_structures: HashSet<Vec<bool>> =
        split.train.iter().map(|s| structure(s, k)).collect();
    let train_strings: HashSet<&Vec<u16>> = split.train.iter().collect();
    for s in &split.gen {
        assert!(!train_structures.contains(&structure(s, k)));
    }
    for s in &split.val {
        assert!(train_structures.contains(&structure(s, k)));
        assert!(!train_strings.contains(s));
    }
    for s in split.train.iter().chain(&split.val).chain(&split.gen) {
        assert!(is_balanced(s, k, cfg.max_depth));
    }
}

#[test]
fn dyck_split_is_deterministic_in_the_seed() {
    let cfg = DyckConfig::default();
    let sizes = SplitSizes {
        train: 2_000,
        val: 200,
        gen: 200,
    };
    let a = structure_split(&cfg, sizes, SplitCriterion::WholeString, 9).unwrap();
    let b = structure_split(&cfg, sizes, SplitCriterion::WholeString, 9).unwrap();
    let c = structure_split(&cfg, sizes, SplitCriterion::WholeString, 10).unwrap();
    assert_eq!(a.train, b.train);
    assert_eq!(a.val, b.val);
    assert_eq!(a.gen, b.gen);
    assert_ne!(a.train, c.train);
}

#[test]
fn dyck_segment_split_holds_out_a_segment() {
    let cfg = DyckConfig::default();
    let k = cfg.bracket_types;
    let sizes = SplitSizes {
        train: 20_000,
        val: 1_000,
        gen: 1_000,
    };
    let split = structure_split(&cfg, sizes, SplitCriterion::Segments, 4).unwrap();
    let mut seen = HashSet::new();
    for s in &split.train {
        for seg in dyck::segments(&structure(s, k)) {
            seen.insert(seg.to_vec());
        }
    }
    for s in &split.gen {
        let p = structure(s, k);
        assert!(dyck::segments(&p).iter().any(|g| !seen.contains(*g)));
    }
    for s in &split.val {
        let p = structure(s, k);
        assert!(dyck::segments(&p).iter().all(|g| seen.contains(*g)));
    }
}

#[test]
fn closing_bracket_metric_by_hand() {
    // k = 2: (a = 0, (b = 1, a) = 2, b) = 3.   (a (b (a a) b) a)   closings at 3, 4, 5.
    let k = 2;
    let tokens: Vec<u16> = vec![0, 1, 0, 2, 3, 2];
    // Per-position scores over 4 tokens (+1 extra special column); rows 0-2 unused.
    let mut scores = vec![vec![0.0f32; 5]; 6];
    scores[3] = vec![9.0, 9.0, 1.0, 0.0, 9.0]; // a) on top among closings: right
    scores[4] = vec![0.0, 0.0, 2.0, 1.0, 0.0]; // a) on top, b) needed: wrong
    scores[5] = vec![0.0, 0.0, 3.0, 1.0, 0.0]; // a) on top: right
    let all = closing_bracket_accuracy(&tokens, &scores, k, 0).unwrap();
    assert_eq!((all.correct, all.total), (2, 3));
    // Distances: 3-2 = 1, 4-1 = 3, 5-0 = 5.
    let far = closing_bracket_accuracy(&tokens, &scores, k, 3).unwrap();
    assert_eq!((far.correct, far.total), (1, 2));
    let farthest = closing_bracket_accuracy(&tokens, &scores, k, 5).unwrap();
    assert_eq!((farthest.correct, farthest.total), (1, 1));
    let nd = Array2::from_shape_fn((6, 5), |(t, v)| scores[t][v]);
    assert_eq!(
        closing_bracket_accuracy_nd(&tokens, nd.view(), k, 3).unwrap(),
        far
    );
    assert!(closing_bracket_accuracy(&tokens, &scores[..5], k, 0).is_err());
}

#[test]
fn closing_bracket_metric_oracle_and_constant_scorer() {
    let cfg = DyckConfig::default();
    let k = cfg.bracket_types;
    let mut rng = seeded(2);
    let (mut oracle, mut constant) = (
        dyck::ClosingAccuracy::default(),
        dyck::ClosingAccuracy::default(),
    );
    let mut type0_far = 0;
    for _ in 0..300 {
        let s = sample_dyck(&cfg, &mut rng);
        // The oracle puts the right closing bracket on top; the constant scorer always type 0.
        let mut right = vec![vec![0.0f32; 2 * k]; s.len()];
        for &(c, _) in &closing_pairs(&s, k) {
            right[c][s[c] as usize] = 1.0;
        }
        let mut zero = vec![vec![0.0f32; 2 * k]; s.len()];
        for row in &mut zero {
            row[k] = 1.0;
        }
        oracle.add(closing_bracket_accuracy(&s, &right, k, dyck::PAPER_MIN_DIST).unwrap());
        constant.add(closing_bracket_accuracy(&s, &zero, k, dyck::PAPER_MIN_DIST).unwrap());
        type0_far += closing_pairs(&s, k)
            .iter()
            .filter(|&&(c, o)| c - o >= dyck::PAPER_MIN_DIST && s[c] as usize == k)
            .count();
    }
    assert!(
        oracle.total > 100,
        "too few far closings scored: {}",
        oracle.total
    );
    assert_eq!(oracle.correct, oracle.total);
    assert_eq!(constant.total, oracle.total);
    assert_eq!(constant.correct, type0_far);
}

// ---------------------------------------------------------------- QF / TI

fn small_split(task: GrammarTask, seed: u64) -> grammar::GrammarSplit {
    let sizes = SplitSizes {
        train: 3_000,
        val: 300,
        gen: 1_000,
    };
    grammar_split(task, sizes, seed).unwrap()
}

fn check_tree(e: &GrammarExample) {
    let n = e.input.len();
    assert!(e.tree.spans_sentence(n), "tree {:?} over {n} words", e.tree);
    let brackets = e.tree.brackets();
    assert_eq!(
        brackets.len(),
        n - 1,
        "a binary tree over n words has n - 1 brackets"
    );
    assert_eq!(brackets.last(), Some(&(0, n - 1)));
}

fn head_noun_plural(e: &GrammarExample) -> bool {
    assert_eq!(e.pos[1], Pos::Noun);
    e.input[1].ends_with('s') && !["walrus", "tyrannosaurus"].contains(&e.input[1])
}

#[test]
fn qf_generalisation_needs_the_hierarchical_rule() {
    let split = small_split(GrammarTask::Qf, 1);
    for e in &split.gen {
        assert!(e.is_transform());
        assert_eq!(e.subject_modifier, Modifier::Rc);
        assert_ne!(e.output[0], e.linear_output[0], "{:?}", e.tokens());
        assert_eq!(e.pos[e.main_index], Pos::Aux);
        check_tree(e);
    }
    let mut questions = 0;
    for e in split.train.iter().chain(&split.val) {
        assert!(
            e.is_ambiguous(),
            "in-domain example not ambiguous: {:?}",
            e.tokens()
        );
        if e.is_transform() {
            questions += 1;
            assert_ne!(e.subject_modifier, Modifier::Rc);
        }
        check_tree(e);
    }
    let n = split.train.len() + split.val.len();
    assert_proportion(questions, n, 0.5, "questions in training");
    // Identity examples include relative clauses on the subject (the model must see them).
    assert!(split
        .train
        .iter()
        .any(|e| !e.is_transform() && e.subject_modifier == Modifier::Rc));
}

#[test]
fn qf_questions_move_the_agreeing_main_auxiliary() {
    let split = small_split(GrammarTask::Qf, 2);
    for e in split.train.iter().chain(&split.gen) {
        let aux = e.input[e.main_index];
        let plural_aux = aux == "do" || aux == "don't";
        assert_eq!(
            plural_aux,
            head_noun_plural(e),
            "agreement in {:?}",
            e.input
        );
        if e.is_transform() {
            let mut rest = e.input.clone();
            rest.remove(e.main_index);
            assert_eq!(e.output[0], aux);
            assert_eq!(&e.output[1..], &rest[..]);
            assert_eq!(e.tokens().last(), Some(&"?"));
        } else {
            assert_eq!(e.output, e.input);
        }
    }
}

#[test]
fn ti_generalisation_needs_the_hierarchical_rule() {
    let split = small_split(GrammarTask::Ti, 3);
    for e in &split.gen {
        assert!(e.is_transform());
        let m = e.main_index;
        assert_ne!(e.output[m], e.linear_output[m], "{:?}", e.tokens());
        check_tree(e);
    }
    for e in split.train.iter().chain(&split.val) {
        assert!(
            e.is_ambiguous(),
            "in-domain example not ambiguous: {:?}",
            e.tokens()
        );
        check_tree(e);
    }
    // Training PRESENT examples still contain modified subjects (with same-number nouns).
    assert!(split
        .train
        .iter()
        .any(|e| e.is_transform() && e.subject_modifier != Modifier::None));
}

#[test]
fn ti_main_verb_agrees_with_the_subject() {
    let split = small_split(GrammarTask::Ti, 4);
    for e in split.train.iter().chain(&split.gen) {
        assert_eq!(e.pos[e.main_index], Pos::Verb);
        if e.is_transform() {
            let verb = e.output[e.main_index];
            let singular = verb.ends_with('s');
            assert_eq!(!singular, head_noun_plural(e), "{:?}", e.tokens());
        } else {
            assert_eq!(e.output, e.input);
        }
    }
}

#[test]
fn validation_lines_are_not_training_lines() {
    for task in [GrammarTask::Qf, GrammarTask::Ti] {
        let split = small_split(task, 5);
        let train: HashSet<Vec<&str>> = split.train.iter().map(|e| e.tokens()).collect();
        assert!(split.val.iter().all(|e| !train.contains(&e.tokens())));
    }
}

#[test]
fn grammar_metrics_score_hierarchical_and_linear_answers() {
    let split = small_split(GrammarTask::Qf, 6);
    let vocab = GrammarVocab::new(GrammarTask::Qf);
    for e in split.gen.iter().take(100) {
        let mut scores = vec![0.0f32; vocab.len()];
        scores[vocab.id(e.output[0]).unwrap()] = 1.0;
        scores[vocab.id(".").unwrap()] = 5.0; // non-auxiliaries do not compete
        assert!(qf_first_word_correct(e, &scores, &vocab).unwrap());
        let mut linear = vec![0.0f32; vocab.len()];
        linear[vocab.id(e.linear_output[0]).unwrap()] = 1.0;
        assert!(!qf_first_word_correct(e, &linear, &vocab).unwrap());
        assert!(vocab.encode(&e.tokens()).is_ok());
    }
    let split = small_split(GrammarTask::Ti, 6);
    let vocab = GrammarVocab::new(GrammarTask::Ti);
    for e in split.gen.iter().take(100) {
        let mut decoded = e.output.clone();
        decoded.push(".");
        assert!(ti_main_verb_correct(e, &decoded, &vocab));
        assert!(!ti_main_verb_correct(e, &e.linear_output, &vocab));
        assert!(!ti_main_verb_correct(e, &e.output[1..], &vocab));
        assert!(vocab.encode(&e.tokens()).is_ok());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn gold_trees_are_binary_and_span_the_sentence(seed in 0u64..1_000_000, ti in any::<bool>()) {
        let task = if ti { GrammarTask::Ti } else { GrammarTask::Qf };
        let mut rng = seeded(seed);
        for _ in 0..20 {
            let e = grammar::sample_in_domain(task, &mut rng);
            check_tree(&e);
            let g = grammar::sample_generalisation(task, &mut rng);
            check_tree(&g);
        }
    }
}

// ---------------------------------------------------------------- tree projections

/// A chart scoring 1 on the spans of `tree` (words and root included) and 0 elsewhere.
fn indicator_chart(tree: &BinaryTree, n: usize) -> Array2<f64> {
    let mut c = Array2::zeros((n, n));
    for (i, j) in tree.all_spans() {
        c[[i, j]] = 1.0;
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn projection_recovers_the_tree_a_chart_favours(seed in 0u64..1_000_000, n in 2usize..14) {
        let mut rng = seeded(seed);
        let tree = BinaryTree::random_splits(0, n - 1, &mut rng);
        let chart = indicator_chart(&tree, n);
        let proj = project_tree(&chart);
        prop_assert_eq!(&proj.tree, &tree);
        prop_assert!((proj.score - tree_score(&chart, &tree)).abs() < 1e-12);
        // All 2n - 2 non-root nodes score 1.
        prop_assert!((proj.score - (2 * n - 2) as f64).abs() < 1e-12);
        let f = tparseval(std::slice::from_ref(&tree), std::slice::from_ref(&tree));
        prop_assert!((f.f1 - 1.0).abs() < 1e-12);
    }
}

/// Every binary tree over the words `i..=j`.
fn all_trees(i: usize, j: usize) -> Vec<BinaryTree> {
    if i == j {
        return vec![BinaryTree::Leaf(i)];
    }
    let mut out = Vec::new();
    for k in i..j {
        for l in all_trees(i, k) {
            for r in all_trees(k + 1, j) {
                out.push(BinaryTree::node(l.clone(), r));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn optimal_projection_is_the_best_of_all_trees(seed in 0u64..1_000_000, n in 1usize..8) {
        let mut rng = seeded(seed);
        let chart = Array2::from_shape_fn((n, n), |_| rng.gen_range(-1.0..1.0));
        let best = all_trees(0, n - 1)
            .iter()
            .map(|t| tree_score(&chart, t))
            .fold(f64::NEG_INFINITY, f64::max);
        let opt = project_tree_optimal(&chart);
        prop_assert!((opt.score - best).abs() < 1e-12, "{} vs {best}", opt.score);
        prop_assert!((tree_score(&chart, &opt.tree) - opt.score).abs() < 1e-12);
        prop_assert!(project_tree(&chart).score <= opt.score + 1e-12);
        prop_assert!(tscore_optimal_tree(&chart) >= -1e-12);
        prop_assert!(tscore_optimal_tree(&chart) >= tscore_exact(&chart) - 1e-12);
    }
}

#[test]
fn greedy_projection_can_miss_the_best_tree() {
    // Words score 0. The root split after word 0 looks best on its own (chart(1,3) = 1 > 0.9)
    // but leaves only bad inner spans; ((0 1) 2) 3 collects 0.9 + 0.9.
    let mut chart = Array2::zeros((4, 4));
    chart[[1, 3]] = 1.0;
    chart[[1, 2]] = -1.0;
    chart[[2, 3]] = -1.0;
    chart[[0, 2]] = 0.9;
    chart[[0, 1]] = 0.9;
    let greedy = project_tree(&chart);
    let opt = project_tree_optimal(&chart);
    assert!((greedy.score - 0.0).abs() < 1e-12, "{}", greedy.score);
    assert!((opt.score - 1.8).abs() < 1e-12, "{}", opt.score);
    assert_eq!(opt.tree.brackets(), vec![(0, 1), (0, 2), (0, 3)]);
}

#[test]
fn projection_of_a_hand_built_chart() {
    // 4 words, favour ((0 1) (2 3)): spans (0,1) and (2,3) high.
    let mut chart = Array2::from_elem((4, 4), 0.1);
    chart[[0, 1]] = 0.9;
    chart[[2, 3]] = 0.8;
    let proj = project_tree(&chart);
    let expected = BinaryTree::node(
        BinaryTree::node(BinaryTree::Leaf(0), BinaryTree::Leaf(1)),
        BinaryTree::node(BinaryTree::Leaf(2), BinaryTree::Leaf(3)),
    );
    assert_eq!(proj.tree, expected);
    // Non-root nodes: (0,1), (2,3) and four words.
    assert!((proj.score - (0.9 + 0.8 + 4.0 * 0.1)).abs() < 1e-12);
}

#[test]
fn sci_chart_from_span_vectors() {
    // Spans inside the constituent (0 1) or (2 3) keep their direction without context; spans
    // crossing the boundary turn by 90 degrees: the projection splits at the boundary.
    let chart = sci_chart(4, |i, j| {
        let inside = j < 2 || i >= 2;
        let free = if inside { [1.0f32, 0.0] } else { [0.0, 1.0] };
        cosine_similarity(&[1.0, 0.0], &free)
    });
    assert_eq!(chart[[1, 2]], 0.0);
    assert_eq!(chart[[2, 3]], 1.0);
    assert_eq!(
        project_tree(&chart).tree.brackets(),
        vec![(0, 1), (2, 3), (0, 3)]
    );
    assert!((cosine_similarity(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
    assert!((cosine_similarity(&[1.0, 0.0], &[-3.0, 0.0]) + 1.0).abs() < 1e-12);
    assert!(mean_tscore(&[chart.clone(), chart]) > 0.0);
}

#[test]
fn tscore_vanishes_for_a_constant_chart() {
    let mut rng = seeded(8);
    for n in 1..12 {
        let chart = Array2::from_elem((n, n), 0.37);
        assert!(tscore_exact(&chart).abs() < 1e-12, "n = {n}");
        assert!(tscore_one_split_estimate(&chart, &mut rng).abs() < 1e-12);
    }
}

#[test]
fn exact_expectation_matches_random_trees() {
    // E_T[S(T)] by the DP against the mean over uniformly-random-split trees.
    let n = 9;
    let mut rng = seeded(21);
    let chart = Array2::from_shape_fn((n, n), |(i, j)| ((i * 7 + j * 3) % 5) as f64 / 4.0);
    let exact = expected_random_tree_score(&chart);
    let draws = 20_000;
    let scores: Vec<f64> = (0..draws)
        .map(|_| tree_score(&chart, &BinaryTree::random_splits(0, n - 1, &mut rng)))
        .collect();
    let mean = scores.iter().sum::<f64>() / draws as f64;
    let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (draws - 1) as f64;
    let se = (var / draws as f64).sqrt();
    assert!(
        (mean - exact).abs() <= 4.0 * se,
        "Monte Carlo {mean:.4} vs exact {exact:.4} (SE {se:.4})"
    );
    // The projected tree scores above a random tree on this chart.
    assert!(tscore_exact(&chart) > 0.0);
}

#[test]
fn tparseval_against_right_branching_by_hand() {
    // Gold ((0 1) (2 3)): {(0,1), (2,3), (0,3)}. Right-branching (0 (1 (2 3))): {(2,3), (1,3), (0,3)}.
    let gold4 = BinaryTree::node(
        BinaryTree::node(BinaryTree::Leaf(0), BinaryTree::Leaf(1)),
        BinaryTree::node(BinaryTree::Leaf(2), BinaryTree::Leaf(3)),
    );
    let rb4 = BinaryTree::right_branching(4);
    let f = tparseval(std::slice::from_ref(&rb4), std::slice::from_ref(&gold4));
    assert!((f.f1 - 2.0 / 3.0).abs() < 1e-12);
    // Add gold (((0 1) 2) 3) vs right-branching: only the root matches. Pooled: 3 of 6.
    let gold_left = BinaryTree::node(
        BinaryTree::node(
            BinaryTree::node(BinaryTree::Leaf(0), BinaryTree::Leaf(1)),
            BinaryTree::Leaf(2),
        ),
        BinaryTree::Leaf(3),
    );
    let f = tparseval(&[rb4.clone(), rb4], &[gold4, gold_left]);
    assert!((f.precision - 0.5).abs() < 1e-12);
    assert!((f.recall - 0.5).abs() < 1e-12);
    assert!((f.f1 - 0.5).abs() < 1e-12);
}

#[test]
fn gold_trees_beat_right_branching_on_the_grammar() {
    // A QF subject is (Det N ...), never right-branching at the start: the baseline is imperfect.
    let split = small_split(GrammarTask::Qf, 7);
    let gold: Vec<BinaryTree> = split.gen.iter().map(|e| e.tree.clone()).collect();
    let rb: Vec<BinaryTree> = split
        .gen
        .iter()
        .map(|e| BinaryTree::right_branching(e.input.len()))
        .collect();
    let f = tparseval(&rb, &gold).f1;
    assert!(f > 0.0 && f < 0.8, "right-branching F1 {f}");
}

#[test]
fn context_free_mask_restricts_only_span_rows() {
    let (t, first, last) = (7, 2, 4);
    let m = context_free_mask(t, first, last);
    let key = context_free_key_mask(t, first, last);
    let add = context_free_additive_mask(t, first, last);
    for q in 0..t {
        for k in 0..t {
            let causal = k <= q;
            let expected = if (first..=last).contains(&q) {
                causal && (k == 0 || (first..=last).contains(&k))
            } else {
                causal
            };
            assert_eq!(m[[q, k]], expected, "row {q} col {k}");
            assert_eq!(add[[q, k]] == 0.0, expected);
            assert!(add[[q, k]] == 0.0 || add[[q, k]] == f32::NEG_INFINITY);
            // On span rows the code's key mask gives the same pattern.
            if (first..=last).contains(&q) {
                assert_eq!(m[[q, k]], causal && !key[k]);
            }
        }
    }
    assert!(!m[[3, 1]], "span row attends to a token before the span");
    assert!(m[[5, 1]], "a row after the span is plain causal");
}

// ---------------------------------------------------------------- model internals

#[test]
fn attention_sparsity_of_uniform_and_one_hot_maps() {
    use attnlab::grokking::internals::{weight_norm, AttentionSparsity};
    let t = 6;
    // Uniform causal rows: row q has entropy ln(q + 1).
    let uniform = Array2::from_shape_fn(
        (t, t),
        |(q, k)| {
            if k <= q {
                1.0 / (q + 1) as f32
            } else {
                0.0
            }
        },
    );
    let mut s = AttentionSparsity::default();
    s.add_map(uniform.view()).unwrap();
    let expected = -(0..t).map(|q| ((q + 1) as f64).ln()).sum::<f64>() / t as f64;
    assert!(
        (s.value() - expected).abs() < 1e-6,
        "{} vs {expected}",
        s.value()
    );
    // Attending to the start token only: entropy 0, sparser than uniform.
    let start_only = Array2::from_shape_fn((t, t), |(_, k)| if k == 0 { 1.0f32 } else { 0.0 });
    let mut sparse = AttentionSparsity::default();
    sparse.add_map(start_only.view()).unwrap();
    assert_eq!(sparse.value(), 0.0);
    assert!(sparse.value() > s.value());
    assert!(s.add_map(Array2::<f32>::zeros((2, 3)).view()).is_err());
    // ||(3, 4, 12)|| = 13 over 2 layers.
    assert!((weight_norm([&[3.0f32, 4.0][..], &[12.0][..]], 2) - 6.5).abs() < 1e-12);
}

// ---------------------------------------------------------------- configs and CLI

#[test]
fn every_experiment_config_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/grokking");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let e =
                GrokkingExperiment::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            // Both presets have been run or follow the paper; a guess must say so.
            assert!(
                !e.cpu.provisional && !e.paper.provisional,
                "{}: a preset is marked provisional",
                p.display()
            );
            n += 1;
        }
    }
    assert!(n >= 3, "expected a config per task, found {n}");
    let text = std::fs::read_to_string(dir.join("question_formation.toml")).unwrap();
    let typo = text.replace("[paper.train]\nbatch", "[paper.train]\nbatch_size");
    assert_ne!(typo, text);
    let err = attnlab::config::parse_toml::<GrokkingExperiment>(&typo).unwrap_err();
    assert!(format!("{err:#}").contains("batch_size"), "{err:#}");
}

#[test]
fn cli_prints_json_lines_and_names_bad_flags() {
    let bin = env!("CARGO_BIN_EXE_attnlab");
    let out = std::process::Command::new(bin)
        .args([
            "grokking", "sample", "--task", "ti", "--split", "gen", "--count", "3",
        ])
        .args([
            "--seed",
            "4",
            "--json",
            "--train-size",
            "500",
            "--gen-size",
            "50",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l["marker"], "PRESENT");
        assert!(l["tokens"].as_array().unwrap().len() > 5);
        assert!(l["tree"].is_array());
    }
    let bad = std::process::Command::new(bin)
        .args([
            "grokking", "sample", "--task", "qf", "--split", "val", "--count", "5000",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("--count") && !err.contains("panicked"),
        "{err}"
    );
    let bad = std::process::Command::new(bin)
        .args(["grokking", "sample", "--task", "lego"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--task"));
}

#[test]
fn tscore_by_hand_is_best_minus_mean_split_summed_over_the_greedy_tree() {
    // Words 0..4, every single word 1; the root's own entry is never read.
    let mut chart = Array2::from_elem((4, 4), 1.0);
    chart[[0, 1]] = 0.1;
    chart[[0, 2]] = 0.3;
    chart[[1, 2]] = 0.5;
    chart[[1, 3]] = 0.8;
    chart[[2, 3]] = 0.6;
    chart[[0, 3]] = 99.0;
    // Root (0, 3): splits 1 + 0.8 = 1.8, 0.1 + 0.6 = 0.7, 0.3 + 1 = 1.3 -> best 1.8 at k = 0,
    // mean 3.8 / 3. Node (1, 3): 1 + 0.6 = 1.6, 0.5 + 1 = 1.5 -> best 1.6 at k = 1, mean 1.55.
    // Node (2, 3): one split, adds 0. tscore = 1.8 - 3.8 / 3 + 0.05 = 7 / 12.
    let p = project_tree(&chart);
    assert_eq!(p.tree.brackets().len(), 3);
    assert!(p.tree.bracket_set().contains(&(1, 3)) && p.tree.bracket_set().contains(&(2, 3)));
    let t = tscore(&chart);
    assert!((t - 7.0 / 12.0).abs() < 1e-12, "tscore {t}, by hand 7/12");
    // The random-tree difference of the same chart is another number.
    assert!((tscore_exact(&chart) - t).abs() > 1e-3);
    // Two words: a single split, nothing to gain.
    assert_eq!(
        tscore(&Array2::from_shape_fn((2, 2), |(i, j)| (i + j) as f64)),
        0.0
    );
}

#[test]
fn tscore_is_the_expectation_of_the_official_one_split_estimate() {
    let n = 9;
    let chart = Array2::from_shape_fn((n, n), |(i, j)| ((i * 5 + j * 11) % 7) as f64 / 6.0);
    let exact = tscore(&chart);
    let mut rng = seeded(5);
    let draws = 20_000;
    let xs: Vec<f64> = (0..draws)
        .map(|_| tscore_one_split_estimate(&chart, &mut rng))
        .collect();
    let mean = xs.iter().sum::<f64>() / draws as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (draws - 1) as f64;
    let se = (var / draws as f64).sqrt();
    assert!(exact > 0.0 && se > 0.0);
    assert!(
        (mean - exact).abs() <= 4.0 * se,
        "one-split mean {mean:.4} vs exact {exact:.4} (SE {se:.4})"
    );
}

proptest! {
    #[test]
    fn tscore_is_never_negative(n in 1usize..12, seed in 0u64..1000) {
        let mut rng = seeded(seed);
        let chart = Array2::from_shape_fn((n, n), |_| rng.gen_range(-1.0..1.0));
        prop_assert!(tscore(&chart) >= -1e-12);
    }
}
