//! The claims ledger and `attnlab verify`'s bookkeeping: rules decide as stated, a malformed
//! ledger is an error naming the claim and the field, results merge per scale, and RESULTS.md
//! shows every claim at every scale that has been run.

mod common;

use attnlab::verify::ledger::{self, Rule, Scale};
use attnlab::verify::{decide, report, Measured, Verdict};
use common::{assert_clean_error, attnlab};
use std::path::Path;

#[test]
fn rules_decide_as_stated() {
    let at_least = Rule::AtLeast { value: 0.9 };
    assert!(at_least.holds(&[0.95, 0.9]));
    assert!(!at_least.holds(&[0.95, 0.8]));
    assert!(!at_least.holds(&[]), "no values never hold");
    assert!(!at_least.holds(&[1.0, f64::NAN]), "a NaN never holds");
    assert!(Rule::AtMost { value: 0.1 }.holds(&[0.05]));
    assert!(!Rule::Between {
        low: 1.0,
        high: 2.0
    }
    .holds(&[2.5]));
    let two_of_three = Rule::SeedsAtLeast {
        value: 0.8,
        fraction: 2.0 / 3.0,
    };
    assert!(two_of_three.holds(&[0.9, 0.85, 0.1]));
    assert!(!two_of_three.holds(&[0.9, 0.1, 0.1]));
    assert!(Rule::SeedsAtMost {
        value: 0.5,
        fraction: 1.0
    }
    .holds(&[0.1, 0.5]));
}

const PAPER_HEAD: &str = "paper = \"A paper\"\n";

fn claim(id: &str, extra: &str) -> String {
    format!(
        "[[claim]]\nid = \"{id}\"\nstatement = \"s\"\nmeasured = \"m\"\nrule = {{ kind = \"at_least\", value = 1.0 }}\nkind = \"empirical\"\n{extra}\n"
    )
}

fn ledger_dir(sts: &str, lego: &str, grokking: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (p, body) in [("sts", sts), ("lego", lego), ("grokking", grokking)] {
        std::fs::write(
            d.path().join(format!("{p}.toml")),
            format!("{PAPER_HEAD}{body}"),
        )
        .unwrap();
    }
    d
}

fn ok_claims(paper: &str) -> String {
    claim(
        &format!("{paper}/a"),
        "scales = [\"quick\", \"cpu\", \"paper\"]",
    )
}

#[test]
fn malformed_ledgers_name_the_claim_and_the_field() {
    let cases: Vec<(String, &str)> = vec![
        (claim("sts/x", "scales = [\"quick\"]"), "reason"),
        (claim("lego/x", "scales = [\"quick\", \"cpu\", \"paper\"]"), "sts/"),
        (
            claim("sts/x", "scales = [\"quick\", \"cpu\", \"paper\"]\ncolour = 1"),
            "colour",
        ),
        (
            ok_claims("sts") + &ok_claims("sts"),
            "used twice",
        ),
        (
            "[[claim]]\nid = \"sts/y\"\nstatement = \"s\"\nmeasured = \"m\"\nrule = { kind = \"seeds_at_least\", value = 1.0, fraction = 1.5 }\nkind = \"empirical\"\nscales = [\"quick\", \"cpu\", \"paper\"]\n".into(),
            "rule.fraction",
        ),
        (
            "[[claim]]\nid = \"sts/y\"\nstatement = \"s\"\nmeasured = \"m\"\nrule = { kind = \"at_least\", value = nan }\nkind = \"empirical\"\nscales = [\"quick\", \"cpu\", \"paper\"]\n".into(),
            "rule.value",
        ),
    ];
    for (sts, needle) in cases {
        let d = ledger_dir(&sts, &ok_claims("lego"), &ok_claims("grokking"));
        let e = ledger::load(d.path()).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
    let d = ledger_dir(
        &ok_claims("sts"),
        &ok_claims("lego"),
        &ok_claims("grokking"),
    );
    assert_eq!(ledger::load(d.path()).unwrap().len(), 3);
}

#[test]
fn results_merge_per_scale_and_the_markdown_shows_every_scale() {
    let d = ledger_dir(
        &(ok_claims("sts") + &claim("sts/b", "scales = [\"cpu\"]\nreason = \"too slow\"")),
        &ok_claims("lego"),
        &ok_claims("grokking"),
    );
    let ledger = ledger::load(d.path()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let c = |id: &str| &ledger.iter().find(|(_, c)| c.id == id).unwrap().1;
    let values = |v: Vec<f64>| {
        Ok(Measured::Values {
            values: v,
            note: String::new(),
        })
    };
    let quick = vec![
        decide(c("sts/a"), Scale::Quick, values(vec![1.5, 1.2]), 1.0),
        decide(
            c("sts/b"),
            Scale::Quick,
            Ok(Measured::NotShown("too slow".into())),
            0.0,
        ),
    ];
    assert_eq!(quick[0].verdict, Verdict::Holds);
    assert_eq!(quick[1].verdict, Verdict::NotShownAtThisScale);
    report::store(out.path(), Scale::Quick, &quick).unwrap();
    let cpu = vec![decide(c("sts/a"), Scale::Cpu, values(vec![0.5]), 1.0)];
    assert_eq!(cpu[0].verdict, Verdict::Fails);
    report::store(out.path(), Scale::Cpu, &cpu).unwrap();
    // a later --only run at quick keeps the other quick results
    let again = vec![decide(c("sts/a"), Scale::Quick, values(vec![1.1]), 1.0)];
    report::store(out.path(), Scale::Quick, &again).unwrap();
    let stored = report::load(out.path(), Scale::Quick).unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored.iter().find(|r| r.id == "sts/a").unwrap().values,
        [1.1]
    );
    report::write_markdown(out.path(), &ledger).unwrap();
    let md = std::fs::read_to_string(out.path().join("RESULTS.md")).unwrap();
    let row = md.lines().find(|l| l.starts_with("| `sts/a`")).unwrap();
    assert!(
        row.contains("holds (1.10)") && row.contains("fails (0.500)"),
        "{row}"
    );
    assert!(row.ends_with("| not run |"), "{row}");
    assert!(md.contains("`sts/b` at quick: too slow"), "{md}");
    assert!(out.path().join("results.json").exists());
}

#[test]
fn verify_flags_and_a_missing_ledger_are_named() {
    let d = ledger_dir(
        &ok_claims("sts"),
        &ok_claims("lego"),
        &ok_claims("grokking"),
    );
    let dir = d.path().to_str().unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    assert_clean_error(
        &attnlab(&["verify", "--claims", dir, "--out", o, "--only", "zzz"]),
        2,
        &["--only zzz", "sts/a"],
        "--only zzz",
    );
    assert_clean_error(
        &attnlab(&["verify", "--claims", "/nonexistent/claims", "--out", o]),
        2,
        &["/nonexistent/claims"],
        "missing ledger",
    );
    assert_clean_error(
        &attnlab(&["verify", "--preset", "huge"]),
        2,
        &["--preset"],
        "--preset huge",
    );
}

#[test]
fn the_ledger_covers_every_paper() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/claims");
    let ledger = ledger::load(&dir).unwrap();
    for paper in ledger::PAPERS {
        let n = ledger.iter().filter(|(_, c)| c.paper() == paper).count();
        assert!(
            n >= 8,
            "{paper} has {n} claims; the papers' notes list at least 8"
        );
    }
}
