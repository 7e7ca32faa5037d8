//! Head-analysis invariants: scores of hand-built attention maps are exact, the mimicking
//! targets match a hand computation of the official recipe, the KL helpers agree with
//! closed forms, and FLOP counts of fixed heads match their closed forms.

use approx::assert_abs_diff_eq;
use attnlab::lego::flops::{encoder_flops, flop_saving, layer_flops, EncoderShape};
use attnlab::lego::measure::{
    association_score, association_target, clause_locality_score, kl_target_attention,
    local_target, mimic_targets, mimicking_loss, row_kl, score_heads, smooth_rows,
    uniform_attention, variable_association_score, window_locality_score,
};
use attnlab::lego::task::{sample_sentences, LegoSentence, TaskSpec};
use ndarray::{array, Array2, Array4};
use proptest::prelude::*;

/// A map that puts mass `w` on every other occurrence of the query's token (shared equally)
/// and the rest on the query itself; rows of tokens occurring once are one-hot on the diagonal.
fn association_map(tokens: &[u32], w: f32) -> Array2<f32> {
    let t = tokens.len();
    let mut a = Array2::zeros((t, t));
    for i in 0..t {
        let others: Vec<usize> = (0..t)
            .filter(|&j| j != i && tokens[j] == tokens[i])
            .collect();
        if others.is_empty() {
            a[[i, i]] = 1.0;
        } else {
            for &j in &others {
                a[[i, j]] = w / others.len() as f32;
            }
            a[[i, i]] = 1.0 - w;
        }
    }
    a
}

#[test]
fn association_score_of_a_hand_built_map_is_exact() {
    // tokens 5 7 5 9 7 5: queries with a copy elsewhere are 0, 1, 2, 4, 5 (9 occurs once)
    let tokens = [5, 7, 5, 9, 7, 5];
    let a = association_map(&tokens, 0.75);
    let score = association_score(a.view(), &tokens).unwrap().unwrap();
    assert_abs_diff_eq!(score, 0.75, epsilon = 1e-6);
    // now row 1 (a 7) puts everything on itself: mean over 5 queries = (4 * 0.75 + 0) / 5
    let mut b = a.clone();
    b.row_mut(1).fill(0.0);
    b[[1, 1]] = 1.0;
    let score = association_score(b.view(), &tokens).unwrap().unwrap();
    assert_abs_diff_eq!(score, 0.6, epsilon = 1e-6);
    // no repeated token: undefined
    assert_eq!(
        association_score(uniform_attention(3).view(), &[1, 2, 3]).unwrap(),
        None
    );
    // a shape mismatch names both shapes
    let err = association_score(uniform_attention(3).view(), &[1, 2]).unwrap_err();
    assert!(err.to_string().contains("(3, 3)"), "{err}");
}

#[test]
fn variable_association_on_a_lego_sentence() {
    // [CLS] c = val b , a = val 1 , b = not a , [SEP]: names a and b occur twice, c once
    let s = LegoSentence::from_parts(vec![0, 1, 2], vec![1, -1, -1], vec![2, 0, 1]);
    let a = association_map(&s.tokens, 1.0);
    // 4 name queries (a, a, b, b), each with all its mass on the other occurrence
    assert_abs_diff_eq!(
        variable_association_score(a.view(), &s.tokens)
            .unwrap()
            .unwrap(),
        1.0,
        epsilon = 1e-6
    );
    // uniform attention: each of the 4 queries has 1/17 on its single other occurrence
    let u = uniform_attention(17);
    assert_abs_diff_eq!(
        variable_association_score(u.view(), &s.tokens)
            .unwrap()
            .unwrap(),
        1.0 / 17.0,
        epsilon = 1e-6
    );
    // over all tokens, `=` and `,` (3 copies each) put 2/17 on their copies, `val` (2) 1/17:
    // queries: 4 names (1/17) + 3 `=` (2/17) + 3 `,` (2/17) + 2 `val` (1/17) = 18/17 over 12
    assert_abs_diff_eq!(
        association_score(u.view(), &s.tokens).unwrap().unwrap(),
        18.0 / 17.0 / 12.0,
        epsilon = 1e-6
    );
}

#[test]
fn locality_scores_of_hand_built_maps() {
    let s = LegoSentence::from_parts(vec![0, 1], vec![1, 1], vec![0, 1]);
    let t = s.tokens.len(); // 12
                            // identity attention: all mass within the clause and within any window
    let id = Array2::from_diag_elem(t, 1.0f32);
    assert_abs_diff_eq!(
        clause_locality_score(id.view(), &s.tokens)
            .unwrap()
            .unwrap(),
        1.0,
        epsilon = 1e-6
    );
    assert_abs_diff_eq!(
        window_locality_score(id.view(), 2).unwrap().unwrap(),
        1.0,
        epsilon = 1e-6
    );
    // uniform: 5/12 inside the clause; the +-2 window holds 3,4,5,5,...,5,4,3 keys
    let u = uniform_attention(t);
    assert_abs_diff_eq!(
        clause_locality_score(u.view(), &s.tokens).unwrap().unwrap(),
        5.0 / 12.0,
        epsilon = 1e-6
    );
    let window_keys = (3 + 4 + 5 * 8 + 4 + 3) as f64;
    assert_abs_diff_eq!(
        window_locality_score(u.view(), 2).unwrap().unwrap(),
        window_keys / 144.0,
        epsilon = 1e-6
    );
    // each query attends to the first token of the other clause: 0 in-clause mass
    let mut cross = Array2::zeros((t, t));
    for i in 0..t {
        let target = if (1..=5).contains(&i) { 6 } else { 1 };
        cross[[i, target]] = 1.0;
    }
    assert_abs_diff_eq!(
        clause_locality_score(cross.view(), &s.tokens)
            .unwrap()
            .unwrap(),
        0.0,
        epsilon = 1e-6
    );
    // not a LEGO layout
    assert!(clause_locality_score(uniform_attention(4).view(), &[0, 1, 2, 3]).is_err());
}

#[test]
fn local_target_matches_the_official_recipe() {
    let t = 6;
    let m = local_target(t);
    // row 0: raw weights 4,2,1 at columns 0,1,2 (offsets 0,1,2), +1e-3 everywhere
    let z = 7.0 + 6.0 * 1e-3;
    let row0 = [
        4.001 / z,
        2.001 / z,
        1.001 / z,
        0.001 / z,
        0.001 / z,
        0.001 / z,
    ];
    for (j, &v) in row0.iter().enumerate() {
        assert_abs_diff_eq!(m[[0, j]] as f64, v, epsilon = 1e-6);
    }
    // row 2 (interior): 1,2,4,2,1 at columns 0..=4
    let z = 10.0 + 6.0 * 1e-3;
    let row2 = [
        1.001 / z,
        2.001 / z,
        4.001 / z,
        2.001 / z,
        1.001 / z,
        0.001 / z,
    ];
    for (j, &v) in row2.iter().enumerate() {
        assert_abs_diff_eq!(m[[2, j]] as f64, v, epsilon = 1e-6);
    }
    // symmetric about the anti-diagonal: the last row mirrors the first
    for j in 0..t {
        assert_abs_diff_eq!(m[[t - 1, t - 1 - j]], m[[0, j]], epsilon = 1e-7);
    }
}

#[test]
fn association_target_matches_a_hand_computation() {
    let tokens = [3, 8, 3, 3, 9];
    let m = association_target(&tokens);
    // row 0: 1 at columns 2 and 3, +1e-3 on all 5
    let z = 2.0 + 5.0 * 1e-3;
    let row0 = [0.001 / z, 0.001 / z, 1.001 / z, 1.001 / z, 0.001 / z];
    for (j, &v) in row0.iter().enumerate() {
        assert_abs_diff_eq!(m[[0, j]] as f64, v, epsilon = 1e-6);
    }
    // token 8 occurs once: uniform row
    for j in 0..5 {
        assert_abs_diff_eq!(m[[1, j]], 0.2, epsilon = 1e-6);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn mimicking_targets_are_row_stochastic(n in 1usize..=26, seed in any::<u64>()) {
        let s = &sample_sentences(&TaskSpec::shuffled(n), 1, seed).unwrap()[0];
        let t = s.tokens.len();
        for m in [local_target(t), association_target(&s.tokens)] {
            prop_assert_eq!(m.dim(), (t, t));
            for row in m.rows() {
                prop_assert!((row.sum() - 1.0).abs() < 1e-5);
                prop_assert!(row.iter().all(|&x| x > 0.0));
            }
        }
        // the association target scores near 1 on names: each name row holds
        // (1 + 1e-3) / (1 + T 1e-3) on its other occurrence
        if n >= 2 {
            let a = association_target(&s.tokens);
            let expected = 1.001 / (1.0 + t as f64 * 1e-3);
            let score = variable_association_score(a.view(), &s.tokens).unwrap().unwrap();
            prop_assert!((score - expected).abs() < 1e-5, "{} vs {}", score, expected);
        }
    }
}

#[test]
fn kl_helpers_agree_with_closed_forms() {
    let p = array![[0.5f32, 0.5], [1.0, 0.0]];
    let q = array![[0.25f32, 0.75], [0.5, 0.5]];
    // row 0: .5 ln 2 + .5 ln(2/3); row 1: ln 2; mean of the two
    let expected = (0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln() + 2f64.ln()) / 2.0;
    assert_abs_diff_eq!(
        row_kl(p.view(), q.view()).unwrap(),
        expected,
        epsilon = 1e-6
    );
    assert_abs_diff_eq!(row_kl(q.view(), q.view()).unwrap(), 0.0, epsilon = 1e-9);
    assert!(row_kl(q.view(), p.view()).unwrap().is_infinite());
    assert!(row_kl(p.view(), uniform_attention(3).view()).is_err());
    // the official loss smooths the attention before comparing, so a head equal to the
    // (already smoothed) target is near but not at the minimum; the bare kernel is closer
    let target = local_target(12);
    let copy = mimicking_loss(target.view(), target.view()).unwrap();
    let mut kernel = Array2::<f32>::zeros((12, 12));
    for i in 0..12usize {
        for (o, w) in [1.0f32, 2.0, 4.0, 2.0, 1.0].into_iter().enumerate() {
            if let Some(j) = (i + o).checked_sub(2).filter(|&j| j < 12) {
                kernel[[i, j]] = w;
            }
        }
    }
    let kernel = smooth_rows(kernel.view(), 0.0);
    let bare = mimicking_loss(kernel.view(), target.view()).unwrap();
    let uniform = mimicking_loss(uniform_attention(12).view(), target.view()).unwrap();
    // floor: smoothing leaves eps / (1 + T eps) off the band, where the target has ~10x less
    assert!(bare > 1e-3 && bare < 0.02, "{bare}");
    assert!(bare < copy && copy < 0.05, "{bare} {copy}");
    assert!(uniform > 0.5, "{uniform}");
    // smoothing: rows sum to 1 and zeros become positive
    let sm = smooth_rows(p.view(), 1e-3);
    assert_abs_diff_eq!(sm[[1, 1]] as f64, 0.001 / 1.002, epsilon = 1e-7);
    assert_abs_diff_eq!(
        kl_target_attention(target.view(), target.view()).unwrap(),
        0.0,
        epsilon = 1e-9
    );
    assert!(kl_target_attention(target.view(), uniform_attention(12).view()).unwrap() > 0.5);
}

#[test]
fn score_heads_walks_every_layer_and_head() {
    let s = &sample_sentences(&TaskSpec::shuffled(4), 1, 2).unwrap()[0];
    let t = s.tokens.len();
    let mut maps = Array4::<f32>::zeros((2, 2, t, t));
    maps.slice_mut(ndarray::s![0, 0, .., ..])
        .assign(&association_map(&s.tokens, 1.0));
    maps.slice_mut(ndarray::s![1, 1, .., ..])
        .assign(&Array2::from_diag_elem(t, 1.0));
    maps.slice_mut(ndarray::s![0, 1, .., ..])
        .assign(&uniform_attention(t));
    maps.slice_mut(ndarray::s![1, 0, .., ..])
        .assign(&uniform_attention(t));
    let scores = score_heads(maps.view(), &s.tokens).unwrap();
    assert_eq!(scores.len(), 2);
    assert_abs_diff_eq!(scores[0][0].association.unwrap(), 1.0, epsilon = 1e-6);
    assert_abs_diff_eq!(scores[1][1].clause_locality.unwrap(), 1.0, epsilon = 1e-6);
    assert_abs_diff_eq!(scores[1][1].association.unwrap(), 0.0, epsilon = 1e-6);
    assert_abs_diff_eq!(
        scores[0][1].clause_locality.unwrap(),
        5.0 / t as f64,
        epsilon = 1e-6
    );
}

#[test]
fn flop_counts_match_closed_forms() {
    let (d, t) = (768u64, 62u64);
    let bert = EncoderShape {
        layers: 12,
        hidden: d,
        heads: 12,
        ffn: 4 * d,
    };
    let vanilla = 24 * t * d * d + 4 * t * t * d;
    assert_eq!(layer_flops(&bert, t, 0).unwrap().total(), vanilla);
    assert_eq!(encoder_flops(&bert, t, 0).unwrap(), 12 * vanilla);
    // every head fixed: the query/key projections (4 T d^2) and the scores (2 T^2 d) vanish
    let all_fixed = layer_flops(&bert, t, 12).unwrap();
    assert_eq!(all_fixed.query_key_projection + all_fixed.scores, 0);
    assert_eq!(all_fixed.total(), vanilla - 4 * t * d * d - 2 * t * t * d);
    let saving = flop_saving(&bert, t, 12).unwrap();
    let expected = (4 * t * d * d + 2 * t * t * d) as f64 / vanilla as f64;
    assert_abs_diff_eq!(saving, expected, epsilon = 1e-12);
    // each fixed head saves the same amount
    let s1 = flop_saving(&bert, t, 1).unwrap();
    assert_abs_diff_eq!(flop_saving(&bert, t, 6).unwrap(), 6.0 * s1, epsilon = 1e-12);
    assert!(layer_flops(&bert, t, 13).is_err());
    let odd = EncoderShape { heads: 5, ..bert };
    assert!(layer_flops(&odd, t, 0).is_err());
}

#[test]
fn mimic_targets_cover_a_batch() {
    let sentences = sample_sentences(&TaskSpec::shuffled(5), 3, 8).unwrap();
    let batch = attnlab::lego::task::LegoBatch::new(&sentences, 5).unwrap();
    let (local, assoc) = mimic_targets(batch.tokens.view());
    assert_eq!(local, local_target(27));
    assert_eq!(assoc.dim(), (3, 27, 27));
    for (i, s) in sentences.iter().enumerate() {
        assert_eq!(
            assoc.slice(ndarray::s![i, .., ..]),
            association_target(&s.tokens)
        );
    }
}
