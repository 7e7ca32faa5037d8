//! LEGO task invariants: every sentence is consistent and well formed, orders are
//! permutations, generation is deterministic by seed, variants keep their promises, program
//! outputs match an independent interpreter, every experiment config parses, and the CLI
//! rejects bad input by naming the flag.

use attnlab::lego::config;
use attnlab::lego::program::{sample_programs, ProgramBatch, ProgramSpec};
use attnlab::lego::task::{
    sample_sentences, seq_len, token_id, token_str, train_test_split, LegoBatch, LegoSentence,
    TaskSpec, CLS, COMMA, EQ, NOT, ONE, PAD, SEP, VAL, ZERO,
};
use attnlab::lego::variants::{sample_mixture, Variant};
use proptest::prelude::*;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// Solves a sentence from its tokens alone, reading clauses in sentence order and sweeping
/// until every variable is known. Returns name -> value (+1/-1), or an error describing the
/// first malformed clause.
fn solve(tokens: &[u32]) -> Result<HashMap<u32, i8>, String> {
    let t = tokens.len();
    if t < 2 || tokens[0] != CLS || tokens[t - 1] != SEP || !(t - 2).is_multiple_of(5) {
        return Err(format!("bad frame: {tokens:?}"));
    }
    let clauses: Vec<&[u32]> = tokens[1..t - 1].chunks(5).collect();
    let mut known: HashMap<u32, i8> = HashMap::new();
    loop {
        let before = known.len();
        for c in &clauses {
            let (lhs, eq, op, rhs, comma) = (c[0], c[1], c[2], c[3], c[4]);
            if lhs >= 26 || eq != EQ || comma != COMMA {
                return Err(format!("bad clause {c:?}"));
            }
            if known.contains_key(&lhs) {
                continue;
            }
            let v = match (op, rhs) {
                (VAL, ONE) => Some(1),
                (VAL, ZERO) => Some(-1),
                (VAL, r) => known.get(&r).copied(),
                (NOT, r) if r != ONE && r != ZERO => known.get(&r).map(|v| -v),
                _ => return Err(format!("bad operator in {c:?}")),
            };
            if let Some(v) = v {
                known.insert(lhs, v);
            }
        }
        if known.len() == clauses.len() {
            return Ok(known);
        }
        if known.len() == before {
            return Err("some variables cannot be resolved".into());
        }
    }
}

/// Checks every structural promise of a sentence; returns a description of the first failure.
fn check_sentence(s: &LegoSentence) -> Result<(), String> {
    let n = s.n_var();
    if s.tokens.len() != seq_len(n) {
        return Err(format!("{} tokens for n = {n}", s.tokens.len()));
    }
    let solved = solve(&s.tokens)?;
    for k in 0..n {
        if solved.get(&s.names[k]) != Some(&s.values[k]) {
            return Err(format!(
                "chain position {k}: solved {:?}, label {}",
                solved.get(&s.names[k]),
                s.values[k]
            ));
        }
    }
    // order is a permutation and clause s is the clause of chain variable order[s]
    let mut sorted = s.order.clone();
    sorted.sort_unstable();
    if sorted != (0..n).collect::<Vec<_>>() {
        return Err(format!("order {:?} is not a permutation", s.order));
    }
    for (c, &k) in s.order.iter().enumerate() {
        if s.tokens[1 + 5 * c] != s.names[k] {
            return Err(format!("clause {c} does not define chain variable {k}"));
        }
        let rhs = s.tokens[1 + 5 * c + 3];
        let expected_rhs = if k == 0 { None } else { Some(s.names[k - 1]) };
        if let Some(r) = expected_rhs {
            if rhs != r {
                return Err(format!(
                    "clause of chain variable {k} does not refer to {}",
                    k - 1
                ));
            }
        }
    }
    // every name occurs twice (lhs + rhs of the next clause), except the chain's last: once
    let mut count: HashMap<u32, usize> = HashMap::new();
    for &t in &s.tokens {
        if t < 26 {
            *count.entry(t).or_default() += 1;
        }
    }
    if count.len() != n {
        return Err(format!("{} distinct names for n = {n}", count.len()));
    }
    for (k, name) in s.names.iter().enumerate() {
        let expect = if k + 1 == n { 1 } else { 2 };
        if count[name] != expect {
            return Err(format!(
                "name {} occurs {} times, expected {expect}",
                token_str(*name),
                count[name]
            ));
        }
    }
    // the value of chain variable k is read at its left-hand occurrence
    for (k, &p) in s.query_positions().iter().enumerate() {
        if s.tokens[p] != s.names[k] || s.tokens[p + 1] != EQ {
            return Err(format!(
                "query position {p} of chain variable {k} is not its lhs"
            ));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_sentence_is_consistent(n in 1usize..=26, seed in any::<u64>()) {
        for s in sample_sentences(&TaskSpec::shuffled(n), 8, seed).unwrap() {
            prop_assert_eq!(check_sentence(&s), Ok(()));
        }
    }

    #[test]
    fn same_seed_same_sentences(n in 1usize..=26, seed in any::<u64>()) {
        let a = sample_sentences(&TaskSpec::shuffled(n), 5, seed).unwrap();
        let b = sample_sentences(&TaskSpec::shuffled(n), 5, seed).unwrap();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn every_variant_is_consistent(n in 1usize..=26, seed in any::<u64>(), v in 0usize..8) {
        let variant = Variant::ALL[v];
        for s in variant.sample(n, 4, seed).unwrap() {
            prop_assert_eq!(check_sentence(&s), Ok(()), "variant {}", variant);
        }
    }
}

#[test]
fn different_seeds_give_different_sentences() {
    let a = sample_sentences(&TaskSpec::shuffled(12), 10, 1).unwrap();
    let b = sample_sentences(&TaskSpec::shuffled(12), 10, 2).unwrap();
    assert_ne!(a, b);
}

#[test]
fn a_hand_built_sentence_has_the_expected_tokens() {
    // chain a=+1 -> b=-1 -> c=-1, written in sentence order c, a, b
    let [a, b, c] = [0u32, 1, 2];
    let s = LegoSentence::from_parts(vec![a, b, c], vec![1, -1, -1], vec![2, 0, 1]);
    assert_eq!(s.text(), "[CLS] c = val b , a = val 1 , b = not a , [SEP]");
    assert_eq!(s.query_positions(), vec![6, 11, 1]);
    assert_eq!(s.labels01(), vec![1.0, 0.0, 0.0]);
    assert_eq!(token_id("not"), Some(NOT));
    assert_eq!(token_id("[PAD]"), Some(PAD));
}

#[test]
fn relations_and_orders_are_uniform() {
    // official generator: relations val/not each 1/2, root equally likely at every position
    let n = 6;
    let sentences = sample_sentences(&TaskSpec::shuffled(n), 6000, 11).unwrap();
    let nots = sentences
        .iter()
        .flat_map(|s| s.values.windows(2).map(|w| (w[0] != w[1]) as usize))
        .sum::<usize>() as f64
        / (sentences.len() * (n - 1)) as f64;
    assert!((nots - 0.5).abs() < 0.02, "fraction of `not` {nots}");
    let root_first = sentences.iter().filter(|s| s.order[0] == 0).count() as f64 / 6000.0;
    assert!(
        (root_first - 1.0 / 6.0).abs() < 0.02,
        "root first {root_first}"
    );
    let plus = sentences.iter().filter(|s| s.values[0] == 1).count() as f64 / 6000.0;
    assert!((plus - 0.5).abs() < 0.03, "root +1 fraction {plus}");
}

#[test]
fn variants_keep_their_promises() {
    let n = 7;
    for s in Variant::ChainOrder.sample(n, 20, 3).unwrap() {
        assert_eq!(s.order, (0..n).collect::<Vec<_>>());
    }
    for s in Variant::Reversed.sample(n, 20, 3).unwrap() {
        assert_eq!(s.order, (0..n).rev().collect::<Vec<_>>());
    }
    for s in Variant::AllVal.sample(n, 20, 3).unwrap() {
        assert!(s.values.iter().all(|&v| v == s.values[0]));
        assert!(!s.tokens.contains(&NOT));
    }
    for s in Variant::AllNot.sample(n, 20, 3).unwrap() {
        assert!(s.values.windows(2).all(|w| w[0] == -w[1]));
    }
    for s in Variant::Alphabetical.sample(n, 20, 3).unwrap() {
        assert_eq!(s.names, (0..n as u32).collect::<Vec<_>>());
    }
    let rotated = Variant::Rotated.sample(n, 200, 3).unwrap();
    let mut root_positions = std::collections::HashSet::new();
    for s in &rotated {
        let shift = s.order[0];
        assert_eq!(s.order, (0..n).map(|c| (c + shift) % n).collect::<Vec<_>>());
        root_positions.insert(s.order.iter().position(|&k| k == 0).unwrap());
    }
    assert_eq!(
        root_positions.len(),
        n,
        "rotation never puts the root at some position"
    );
    let biased = Variant::BiasedNot.sample(n, 3000, 3).unwrap();
    let nots = biased
        .iter()
        .flat_map(|s| s.values.windows(2).map(|w| (w[0] != w[1]) as usize))
        .sum::<usize>() as f64
        / (3000 * (n - 1)) as f64;
    assert!((nots - 0.2).abs() < 0.02, "biased_not fraction {nots}");
    for v in Variant::ALL {
        assert_eq!(Variant::parse(v.name()).unwrap(), v);
    }
    assert!(Variant::parse("chain-order").is_ok());
    assert!(Variant::parse("sorted").is_err());
}

#[test]
fn train_and_test_streams_are_independent_of_sizes() {
    let spec = TaskSpec::shuffled(5);
    let (train_a, test_a) = train_test_split(&spec, 10, 7, 9).unwrap();
    let (train_b, test_b) = train_test_split(&spec, 30, 7, 9).unwrap();
    assert_eq!(test_a, test_b, "test set moved when n_train changed");
    assert_eq!(&train_b[..10], &train_a[..]);
    assert_ne!(train_a[..7], test_a[..]);
}

#[test]
fn batches_pad_and_mask() {
    let mut sentences = sample_sentences(&TaskSpec::shuffled(4), 2, 5).unwrap();
    sentences.extend(sample_sentences(&TaskSpec::shuffled(6), 1, 5).unwrap());
    let b = LegoBatch::new(&sentences, 3).unwrap();
    assert_eq!(b.tokens.dim(), (3, seq_len(6)));
    assert_eq!(b.labels.dim(), (3, 6));
    // first sentence: 22 real tokens then padding
    assert_eq!(b.token_mask.row(0).sum(), 22.0);
    assert_eq!(b.tokens[[0, 22]], PAD);
    assert_eq!(
        b.supervised.row(0).to_vec(),
        vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    );
    assert_eq!(
        b.present.row(0).to_vec(),
        vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    );
    assert_eq!(b.present.row(2).sum(), 6.0);
    for (i, s) in sentences.iter().enumerate() {
        for k in 0..s.n_var() {
            let p = b.query_positions[[i, k]] as usize;
            assert_eq!(b.tokens[[i, p]], s.names[k]);
            assert_eq!(b.labels[[i, k]], if s.values[k] == 1 { 1.0 } else { 0.0 });
        }
    }
    assert!(LegoBatch::new(&[], 3).is_err());
}

#[test]
fn bad_specs_are_errors() {
    assert!(sample_sentences(&TaskSpec::shuffled(27), 1, 0).is_err());
    assert!(sample_sentences(&TaskSpec::shuffled(0), 1, 0).is_err());
    let err = sample_sentences(&TaskSpec::shuffled(27), 1, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("n_var"), "{err}");
}

/// Runs a C-like straight-line program given as source text (one statement a line) with
/// arithmetic mod `m`; returns the printed values.
fn interpret(source: &str, m: i64) -> Vec<i64> {
    let mut vars: HashMap<String, i64> = HashMap::new();
    let mut out = Vec::new();
    for line in source.lines() {
        let line = line.trim().trim_end_matches(';');
        if let Some(x) = line
            .strip_prefix("print(")
            .and_then(|r| r.strip_suffix(')'))
        {
            out.push(vars[x]);
            continue;
        }
        let (lhs, rhs) = line.split_once(" = ").expect("assignment");
        let val = |w: &str| -> i64 { w.parse().unwrap_or_else(|_| vars[w]) };
        let words: Vec<&str> = rhs.split(' ').collect();
        let v = match words.as_slice() {
            [a] => val(a),
            [a, "+", b] => val(a) + val(b),
            [a, "-", b] => val(a) - val(b),
            _ => panic!("unparsable line {line}"),
        };
        vars.insert(lhs.to_string(), v.rem_euclid(m));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn program_outputs_match_an_independent_interpreter(
        n_vars in 1usize..=6,
        n_statements in 0usize..=30,
        n_prints in 1usize..=5,
        modulus in 2u32..=10,
        seed in any::<u64>(),
    ) {
        let spec = ProgramSpec { n_vars, n_statements, n_prints, modulus };
        for p in sample_programs(&spec, 4, seed).unwrap() {
            let outputs: Vec<i64> = p.outputs().iter().map(|&v| v as i64).collect();
            prop_assert_eq!(&outputs, &interpret(&p.source(), modulus as i64));
            prop_assert_eq!(outputs.len(), n_prints);
            let toks = p.token_strings();
            prop_assert_eq!(toks[0], "[CLS]");
            prop_assert_eq!(*toks.last().unwrap(), "[SEP]");
            prop_assert_eq!(toks[toks.len() - 4], "print", "the program must end with a print");
            for &pos in &p.print_positions() {
                prop_assert_eq!(toks[pos - 1], "print");
                prop_assert_eq!(toks[pos + 1], ";");
            }
        }
    }
}

#[test]
fn programs_are_deterministic_and_batch() {
    let spec = ProgramSpec::default();
    let a = sample_programs(&spec, 6, 4).unwrap();
    assert_eq!(a, sample_programs(&spec, 6, 4).unwrap());
    assert_ne!(a, sample_programs(&spec, 6, 5).unwrap());
    let b = ProgramBatch::new(&a).unwrap();
    let longest = a.iter().map(|p| p.tokens().len()).max().unwrap();
    assert_eq!(b.tokens.dim(), (6, longest));
    for (i, p) in a.iter().enumerate() {
        assert_eq!(b.token_mask.row(i).sum() as usize, p.tokens().len());
        assert_eq!(b.outputs.row(i).to_vec(), p.outputs());
    }
    let bad = ProgramSpec {
        modulus: 11,
        ..spec
    };
    assert!(sample_programs(&bad, 1, 0)
        .unwrap_err()
        .to_string()
        .contains("modulus"));
    let bad = ProgramSpec {
        n_prints: 0,
        ..spec
    };
    assert!(sample_programs(&bad, 1, 0)
        .unwrap_err()
        .to_string()
        .contains("n_prints"));
}

#[test]
fn every_experiment_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/lego");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 6, "one config per LEGO study: {files:?}");
    let mut kinds = Vec::new();
    for f in &files {
        let exp = config::load(f).unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
        // every CPU preset is timed (final); tiny presets are smoke tests, never results
        assert!(
            !exp.cpu.provisional && exp.tiny.provisional,
            "{}: CPU presets are timed, tiny ones provisional",
            f.display()
        );
        kinds.push(format!("{:?}", exp.experiment.kind));
    }
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds.len(), 6, "six distinct studies: {kinds:?}");
    // the paper preset of the length-extrapolation study follows the official code
    let le = config::load(&dir.join("length_extrapolation.toml")).unwrap();
    let task = le.paper.task.as_ref().unwrap();
    assert_eq!(
        (task.n_var, task.train_vars, task.n_train, task.n_test),
        (12, 6, 120_000, 12_000)
    );
    assert_eq!(
        (
            le.paper.model.layers,
            le.paper.model.heads,
            le.paper.model.hidden
        ),
        (12, 12, 768)
    );
    assert_eq!(
        (le.paper.train.batch_size, le.paper.train.epochs),
        (1000, 200)
    );
    assert_eq!(le.paper.train.optim.lr, 5e-5);
    assert_eq!(le.paper.train.optim.kind, attnlab::train::OptimKind::Adam);
}

#[test]
fn config_typos_and_bad_ranges_are_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/lego");
    let text = std::fs::read_to_string(dir.join("length_extrapolation.toml")).unwrap();
    let typo = text.replacen("train_vars = 6", "train_var = 6", 1);
    let err = attnlab::config::parse_toml::<config::LegoExperiment>(&typo).unwrap_err();
    assert!(format!("{err:#}").contains("train_var"), "{err:#}");
    let bad: config::LegoExperiment =
        attnlab::config::parse_toml(&text.replacen("train_vars = 6", "train_vars = 13", 1))
            .unwrap();
    let err = bad.validate().unwrap_err();
    assert!(format!("{err:#}").contains("train_vars"), "{err:#}");
}

fn attnlab(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_attnlab"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run attnlab")
}

#[test]
fn cli_samples_are_deterministic_json() {
    let args = [
        "lego", "sample", "--n-var", "5", "--count", "3", "--seed", "7", "--json",
    ];
    let a = attnlab(&args);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(a.stdout, attnlab(&args).stdout);
    let lines: Vec<&str> = std::str::from_utf8(&a.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), 3);
    let expected = sample_sentences(&TaskSpec::shuffled(5), 3, 7).unwrap();
    for (line, s) in lines.iter().zip(&expected) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let tokens: Vec<String> = serde_json::from_value(v["tokens"].clone()).unwrap();
        assert_eq!(tokens, s.token_strings());
        let labels: Vec<i8> = serde_json::from_value(v["labels"].clone()).unwrap();
        assert_eq!(labels, s.values);
        let order: Vec<usize> = serde_json::from_value(v["order"].clone()).unwrap();
        assert_eq!(order, s.order);
    }
    let p = attnlab(&["program", "sample", "--count", "2", "--seed", "1", "--json"]);
    assert!(p.status.success());
    for line in std::str::from_utf8(&p.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let outputs: Vec<i64> = serde_json::from_value(v["outputs"].clone()).unwrap();
        assert_eq!(outputs, interpret(v["source"].as_str().unwrap(), 10));
    }
}

#[test]
fn cli_bad_input_names_the_flag() {
    for (args, flag) in [
        (vec!["lego", "sample", "--n-var", "27"], "--n-var"),
        (vec!["lego", "sample", "--n-var", "0"], "--n-var"),
        (vec!["lego", "sample", "--count", "0"], "--count"),
        (vec!["lego", "sample", "--variant", "sorted"], "--variant"),
        (vec!["program", "sample", "--count", "0"], "--count"),
        (vec!["program", "sample", "--vars", "30"], "--vars"),
        (vec!["program", "sample", "--modulus", "1"], "--modulus"),
        (vec!["program", "sample", "--prints", "0"], "--prints"),
    ] {
        let out = attnlab(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
}

#[test]
fn mixtures_follow_their_weights() {
    let mix = [(Variant::ChainOrder, 0.9), (Variant::Shuffled, 0.1)];
    let sentences = sample_mixture(&mix, 6, 4000, 21).unwrap();
    assert_eq!(sentences, sample_mixture(&mix, 6, 4000, 21).unwrap());
    let identity: Vec<usize> = (0..6).collect();
    // shuffled sentences are in chain order with probability 1/720, so this counts ~chain_order
    let ordered = sentences.iter().filter(|s| s.order == identity).count() as f64 / 4000.0;
    assert!((ordered - 0.9).abs() < 0.02, "ordered fraction {ordered}");
    for s in &sentences {
        assert_eq!(check_sentence(s), Ok(()));
    }
    assert!(sample_mixture(&[], 6, 1, 0).is_err());
    assert!(sample_mixture(&[(Variant::Shuffled, 0.0)], 6, 1, 0).is_err());
    assert!(sample_mixture(&[(Variant::Shuffled, -1.0)], 6, 1, 0).is_err());
}

#[test]
fn cli_flops_table_matches_the_library() {
    use attnlab::lego::flops::{encoder_flops, EncoderShape};
    let out = attnlab(&["lego", "flops", "--preset", "paper"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let bert = EncoderShape {
        layers: 12,
        hidden: 768,
        heads: 12,
        ffn: 3072,
    };
    let vanilla = encoder_flops(&bert, 62, 0).unwrap();
    assert!(
        text.contains(&format!("vanilla,0,{vanilla},0.0000")),
        "{text}"
    );
    let bad = attnlab(&[
        "lego",
        "flops",
        "--config",
        "experiments/lego/shortcuts.toml",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--config"));
}
