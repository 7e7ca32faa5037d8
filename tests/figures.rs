//! `attnlab figures` end to end on the `tiny` preset: every registered STS figure is written (PNG,
//! CSV, JSON, index), the CSVs parse, the plotted theory curves equal the theory module's numbers,
//! and a second run is a cache hit while `--force` recomputes.

use attnlab::figures::FigureFile;
use attnlab::sts::figures::{FcnWidthConfig, LossCurveConfig, THEORY_SEED};
use attnlab::sts::theory::{fcn_lower_bound_closed_form, scalar_recursion, EncodingSample};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

const STS: [&str; 6] = [
    "loss_curve",
    "attention_mass",
    "floor_vs_de",
    "length_generalisation",
    "fcn_width",
    "separation",
];

fn figures(out: &Path, extra: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_attnlab"))
        .args(["figures", "--preset", "tiny", "--quiet", "--out"])
        .arg(out)
        .arg("--runs")
        .arg(out.join("runs"))
        .args(extra)
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("panicked"),
        "panicked: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// One CSV row: (panel, series, x, y).
type Row = (String, String, f64, f64);

fn parse_csv(path: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("panel,series,x,y,y_lo,y_hi"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 6, "{}: bad row {l}", path.display());
            let num = |s: &str| -> f64 { s.parse().unwrap_or_else(|_| panic!("bad number {s}")) };
            for s in &f[4..] {
                assert!(
                    s.is_empty() || s.parse::<f64>().is_ok(),
                    "bad band value {s}"
                );
            }
            (f[0].to_string(), f[1].to_string(), num(f[2]), num(f[3]))
        })
        .collect()
}

fn series(rows: &[Row], name_starts: &str) -> Vec<(f64, f64)> {
    let v: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.1.starts_with(name_starts))
        .map(|r| (r.2, r.3))
        .collect();
    assert!(!v.is_empty(), "no series `{name_starts}`");
    v
}

fn mtimes(out: &Path) -> HashMap<String, std::time::SystemTime> {
    STS.iter()
        .flat_map(|n| ["png", "csv", "json"].map(|e| format!("sts/{n}.{e}")))
        .map(|f| {
            let m = std::fs::metadata(out.join(&f)).unwrap().modified().unwrap();
            (f, m)
        })
        .collect()
}

#[test]
fn figures_command_end_to_end_on_the_tiny_preset() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("figs");
    let o = figures(&out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    for n in STS {
        let png = std::fs::read(out.join(format!("sts/{n}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{n}.png is not a PNG");
        let rows = parse_csv(&out.join(format!("sts/{n}.csv")));
        assert!(rows.len() >= 3, "{n}.csv has {} rows", rows.len());
        let rec: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("sts/{n}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(rec["cache_key"].as_str().unwrap().len(), 64);
        assert_eq!(rec["preset"], "tiny");
    }
    let index = std::fs::read_to_string(out.join("README.md")).unwrap();
    for n in STS {
        assert!(index.contains(&format!("sts/{n}.png")), "index misses {n}");
        assert!(index.contains(&format!("experiments/sts/figures/{n}.toml")));
    }

    // The plotted theory curve is the theory module's: the scalar recursion's L(c_t) ...
    let cfg =
        FigureFile::<LossCurveConfig>::load(Path::new("experiments/sts/figures/loss_curve.toml"))
            .unwrap()
            .tiny;
    let tc = cfg.run.transformer.as_ref().unwrap();
    let sample = EncodingSample::draw(
        &cfg.run.task,
        cfg.run.eval.theory_samples,
        None,
        THEORY_SEED,
    )
    .unwrap();
    let cs = scalar_recursion(&sample, cfg.run.task.de, tc.lr, tc.init_c, tc.steps);
    let rows = parse_csv(&out.join("sts/loss_curve.csv"));
    let theory = series(&rows, "theory L(c_t)");
    assert!(theory.len() >= 3);
    for (x, y) in theory {
        let want = sample.at(cs[x as usize - 1]).loss.mean;
        assert!(
            (y - want).abs() <= 1e-12 * want,
            "step {}: plotted {y}, theory {want}",
            x - 1.0
        );
    }
    // ... and the FCN lower bound in closed form.
    let fcn =
        FigureFile::<FcnWidthConfig>::load(Path::new("experiments/sts/figures/fcn_width.toml"))
            .unwrap()
            .tiny;
    let t = &fcn.run.task;
    for (m, y) in series(&parse_csv(&out.join("sts/fcn_width.csv")), "lower bound") {
        let want = fcn_lower_bound_closed_form(t.t, t.d, t.q, m as usize).unwrap();
        assert!(
            (y - want).abs() <= 1e-12,
            "m = {m}: plotted {y}, bound {want}"
        );
    }

    // A second run recomputes nothing ...
    let before = mtimes(&out);
    let again = figures(&out, &[]);
    assert!(again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    let registered = attnlab::figures::registry().len();
    assert_eq!(err.matches("up to date").count(), registered, "{err}");
    assert_eq!(err.matches("computing").count(), 0, "{err}");
    assert_eq!(before, mtimes(&out));
    // ... while --force --only recomputes just that figure.
    let forced = figures(&out, &["--force", "--only", "sts/attention_mass"]);
    assert!(forced.status.success());
    let after = mtimes(&out);
    assert_ne!(
        before["sts/attention_mass.json"],
        after["sts/attention_mass.json"]
    );
    assert_eq!(before["sts/loss_curve.json"], after["sts/loss_curve.json"]);
}

#[test]
fn bad_figure_arguments_get_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = figures(dir.path(), &["--only", "sts/no_such_figure"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--only") && err.contains("sts/loss_curve"),
        "{err}"
    );

    let o = figures(dir.path(), &["--experiments", "no/such/dir"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no/such/dir") && err.contains("--experiments"),
        "{err}"
    );

    // A typo in a figure config names the key and the file.
    let exp = dir.path().join("exp");
    std::fs::create_dir_all(exp.join("sts/figures")).unwrap();
    let good = std::fs::read_to_string("experiments/sts/figures/attention_mass.toml").unwrap();
    std::fs::write(
        exp.join("sts/figures/attention_mass.toml"),
        good.replacen("seeds", "sedes", 1),
    )
    .unwrap();
    let o = figures(
        &dir.path().join("out"),
        &[
            "--experiments",
            exp.to_str().unwrap(),
            "--only",
            "sts/attention_mass",
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("sedes") && err.contains("attention_mass.toml"),
        "{err}"
    );
}
