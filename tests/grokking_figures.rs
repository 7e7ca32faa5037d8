//! The grokking figures of `attnlab figures` plot what the runs say: the early-stopping points
//! are the steps of highest in-domain accuracy in each run's `metrics.csv`, the grok fraction is
//! the share of runs whose generalisation accuracy reaches the threshold at some evaluation, and a finished
//! run is read, never retrained.

use attnlab::config::Preset;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn figures(out: &Path, runs: &Path, extra: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_attnlab"))
        .args(["figures", "--preset", "tiny", "--quiet", "--out"])
        .arg(out)
        .arg("--runs")
        .arg(runs)
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "panicked: {err}");
    o
}

fn only(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| ["--only".to_string(), format!("grokking/{n}")])
        .collect()
}

/// `panel,series,x,y` rows of a figure CSV.
fn csv_rows(path: &Path) -> Vec<(String, String, f64, f64)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("panel,series,x,y,y_lo,y_hi"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[0].to_string(),
                f[1].to_string(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            )
        })
        .collect()
}

/// A run's `metrics.csv` as columns by header name.
fn metrics(path: &Path) -> HashMap<String, Vec<f64>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    let mut cols: HashMap<String, Vec<f64>> = header.iter().map(|h| (h.clone(), vec![])).collect();
    for l in lines {
        for (h, v) in header.iter().zip(l.split(',')) {
            // The engine writes a missing value (NaN) as an empty field.
            let x = if v.is_empty() {
                f64::NAN
            } else {
                v.parse().unwrap()
            };
            cols.get_mut(h).unwrap().push(x);
        }
    }
    cols
}

fn run_dir(runs: &Path, task: &str, depth: usize, seed: u64) -> PathBuf {
    runs.join(format!("grokking/{task}/tiny/depth{depth}_seed{seed}"))
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn tiny_figures_plot_the_runs_early_stop_and_do_not_retrain() {
    let dir = tempfile::tempdir().unwrap();
    let (out, runs) = (dir.path().join("out"), dir.path().join("runs"));
    let names = [
        "dyck_accuracy",
        "dyck_grok_fraction",
        "dyck_internals",
        "qf_accuracy",
        "qf_grok_fraction",
        "qf_internals",
        "qf_tparseval",
        "ti_accuracy",
        "ti_grok_fraction",
        "ti_internals",
        "ti_tparseval",
    ];
    let args = only(&names);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = figures(&out, &runs, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for n in names {
        let png = std::fs::read(out.join(format!("grokking/{n}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{n}.png is not a PNG");
    }

    // Every early-stopping point plotted is the run's first step of highest in-domain accuracy,
    // at the generalisation accuracy of that step.
    for task in ["dyck", "qf", "ti"] {
        let rows = csv_rows(&out.join(format!("grokking/{task}_accuracy.csv")));
        for depth in [1, 2] {
            let m = metrics(&run_dir(&runs, task, depth, 0).join("metrics.csv"));
            let acc = &m["in_domain_acc"];
            let mut best = 0;
            for i in 1..acc.len() {
                if acc[i] > acc[best] {
                    best = i;
                }
            }
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| {
                    r.0.contains(&format!("depth {depth}")) && r.1.starts_with("early stop")
                })
                .map(|r| (r.2, r.3))
                .collect();
            assert_eq!(
                points,
                vec![(m["step"][best] + 1.0, m["gen_acc"][best])],
                "{task} depth {depth}"
            );
        }
    }

    // A second computation reads the finished runs: their files are not rewritten.
    let files: Vec<PathBuf> = ["dyck", "qf", "ti"]
        .iter()
        .flat_map(|t| [1, 2].map(|d| run_dir(&runs, t, d, 0)))
        .flat_map(|d| [d.join("metrics.csv"), d.join("summary.json")])
        .collect();
    let before: Vec<_> = files.iter().map(|f| mtime(f)).collect();
    let mut forced = vec!["--force"];
    forced.extend(&args);
    let again = figures(&out, &runs, &forced);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(before, files.iter().map(|f| mtime(f)).collect::<Vec<_>>());
}

/// Writes a finished run by hand: `gen[i]` and `ind[i]` at steps 0, 10, 20, 30. Odd seeds use
/// the run engine's schema (`wall_s`, `lr`, missing values empty), even seeds the older one
/// (`NaN`), so both are read by column name.
fn fake_run(dir: &Path, depth: usize, seed: u64, ind: [f64; 4], gen: [f64; 4]) {
    std::fs::create_dir_all(dir).unwrap();
    let engine = seed % 2 == 1;
    let mut csv = String::from(if engine {
        "step,wall_s,lr,train_loss,in_domain_acc,gen_acc,weight_norm,sparsity,tscore,tparseval,tparseval_right_branching\n"
    } else {
        "step,train_loss,in_domain_acc,gen_acc,weight_norm,sparsity,tscore,tparseval,tparseval_right_branching\n"
    });
    let mut curve = Vec::new();
    for i in 0..4 {
        let step = 10 * i;
        let (ind, gen, wn) = (ind[i], gen[i], 1.0 + i as f64);
        csv.push_str(&if engine {
            format!("{step},0.5,0.001,1.0,{ind},{gen},{wn},-1.0,0.1,,\n")
        } else {
            format!("{step},1.0,{ind},{gen},{wn},-1.0,0.1,NaN,NaN\n")
        });
        curve.push(serde_json::json!({"step": step}));
    }
    std::fs::write(dir.join("metrics.csv"), csv).unwrap();
    let summary =
        serde_json::json!({"depth": depth, "seed": seed, "completed": true, "curve": curve});
    std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
}

#[test]
fn grok_fraction_counts_the_runs_that_reach_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let (out, runs, exp) = (
        dir.path().join("out"),
        dir.path().join("runs"),
        dir.path().join("exp"),
    );
    // The tiny Dyck preset with 3 seeds; the runs are written by hand, so nothing trains.
    let text = std::fs::read_to_string("experiments/grokking/dyck.toml").unwrap();
    let (head, tiny) = text.split_once("[tiny]").unwrap();
    let tiny = tiny.replacen("seeds = 1", "seeds = 3", 1);
    assert!(tiny.contains("steps = 30") && tiny.contains("grok_threshold = 0.8"));
    std::fs::create_dir_all(exp.join("grokking")).unwrap();
    std::fs::write(
        exp.join("grokking/dyck.toml"),
        format!("{head}[tiny]{tiny}"),
    )
    .unwrap();
    // A seed groks when its generalisation accuracy reaches the threshold at any evaluation
    // ("eventually exceeds"). Depth 1: final gen 0.8 (at the threshold), 0.95, and 0.3 after a
    // peak of 0.85 -> 3 of 3. Depth 2: 0.79, 0.1, 1.0 -> 1 of 3. Early stop: first maximum of
    // in-domain accuracy.
    let finals = [[0.8, 0.95, 0.3], [0.79, 0.1, 1.0]];
    let peaks = [[0.6, 0.6, 0.85], [0.6, 0.6, 0.6]];
    for (di, depth) in [1usize, 2].into_iter().enumerate() {
        for seed in 0..3u64 {
            let g = finals[di][seed as usize];
            fake_run(
                &run_dir(&runs, "dyck", depth, seed),
                depth,
                seed,
                [0.5, 0.9, 0.9, 0.7],
                [0.1, 0.2 + 0.1 * seed as f64, peaks[di][seed as usize], g],
            );
        }
    }
    let before = mtime(&run_dir(&runs, "dyck", 1, 0).join("metrics.csv"));
    let o = figures(
        &out,
        &runs,
        &[
            "--experiments",
            exp.to_str().unwrap(),
            "--only",
            "grokking/dyck_grok_fraction",
            "--only",
            "grokking/dyck_accuracy",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        before,
        mtime(&run_dir(&runs, "dyck", 1, 0).join("metrics.csv"))
    );

    let rows = csv_rows(&out.join("grokking/dyck_grok_fraction.csv"));
    let frac: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.1.starts_with("generalisation reaches"))
        .map(|r| (r.2, r.3))
        .collect();
    assert_eq!(frac, vec![(1.0, 1.0), (2.0, 1.0 / 3.0)]);
    // The final value: depth 1 has 0.8 and 0.95 of 3, depth 2 has 1.0.
    let fin: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.1.starts_with("final generalisation >="))
        .map(|r| (r.2, r.3))
        .collect();
    assert_eq!(fin, vec![(1.0, 2.0 / 3.0), (2.0, 1.0 / 3.0)]);
    // Generalisation at the early stop (step 10, the first 0.9): mean over seeds of 0.2 + 0.1 s.
    let es: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.1 == "at the early-stopping point")
        .map(|r| (r.2, r.3))
        .collect();
    assert_eq!(es.len(), 2);
    for (_, y) in es {
        assert!((y - 0.3).abs() < 1e-12, "{y}");
    }
    let acc = csv_rows(&out.join("grokking/dyck_accuracy.csv"));
    let points: Vec<f64> = acc
        .iter()
        .filter(|r| r.1.starts_with("early stop"))
        .map(|r| r.2)
        .collect();
    assert_eq!(points, vec![11.0; 6]);

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("grokking/dyck_grok_fraction.json")).unwrap(),
    )
    .unwrap();
    let s = &json["summary"];
    assert_eq!(s["best_depth"], 1);
    assert_eq!(s["per_depth"][0]["grokked_fraction"], 1.0);
    assert_eq!(s["per_depth"][0]["final_grokked_fraction"], 2.0 / 3.0);
    assert_eq!(
        s["per_depth"][1]["early_stop_steps"],
        serde_json::json!([10, 10, 10])
    );
}

#[test]
fn a_config_without_the_requested_preset_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let exp = dir.path().join("exp");
    let text = std::fs::read_to_string("experiments/grokking/question_formation.toml").unwrap();
    let (head, _) = text.split_once("[tiny]").unwrap();
    std::fs::create_dir_all(exp.join("grokking")).unwrap();
    std::fs::write(exp.join("grokking/question_formation.toml"), head).unwrap();
    let o = figures(
        &dir.path().join("out"),
        &dir.path().join("runs"),
        &[
            "--experiments",
            exp.to_str().unwrap(),
            "--only",
            "grokking/qf_accuracy",
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("[tiny]") && err.contains("question_formation.toml"),
        "{err}"
    );
    // The file without [tiny] still parses for the other presets.
    let e = attnlab::grokking::config::GrokkingExperiment::load(
        &exp.join("grokking/question_formation.toml"),
    )
    .unwrap();
    assert!(e.tiny.is_none() && e.preset(Preset::Cpu).is_ok() && e.preset(Preset::Tiny).is_err());
}

#[test]
fn grok_onset_is_the_first_saturation_and_the_first_crossing_after_it() {
    use attnlab::grokking::experiments::{EvalRow, GrokOnset};
    let row = |step: usize, ind: f64, gen: f64| EvalRow {
        step,
        train_loss: 1.0,
        in_domain_acc: ind,
        in_domain_transform_acc: ind,
        gen_acc: gen,
        weight_norm: 1.0,
        sparsity: -1.0,
        tscore: 0.0,
        tscore_random_tree: 0.0,
        tparseval: f64::NAN,
        tparseval_right_branching: f64::NAN,
    };
    // Generalisation touches 0.85 before saturation (does not count), saturates at 0.95 on step
    // 200 with 0.5, dips, and crosses 0.8 again at step 500.
    let curve = [
        row(0, 0.3, 0.85),
        row(100, 0.94, 0.6),
        row(200, 0.95, 0.5),
        row(300, 1.0, 0.2),
        row(400, 0.9, 0.79),
        row(500, 1.0, 0.8),
        row(600, 1.0, 0.9),
    ];
    let o = GrokOnset::of(&curve, 0.8).unwrap();
    assert_eq!((o.saturated_at, o.gen_at_saturation), (200, 0.5));
    assert_eq!((o.grokked_at, o.delay()), (Some(500), Some(300)));
    assert!(o.is_structural(), "500 >= 2 x 200");
    let late_sat = GrokOnset::of(&curve[3..], 0.8).unwrap();
    assert_eq!(late_sat.saturated_at, 300);
    assert!(!late_sat.is_structural(), "500 < 2 x 300");
    assert_eq!(
        GrokOnset::of(&curve[..5], 0.8).unwrap().grokked_at,
        None,
        "never crosses after saturation"
    );
    assert!(GrokOnset::of(&curve[..2], 0.8).is_none(), "never saturates");
}

#[test]
fn metrics_of_the_older_schema_read_with_their_tscore_renamed() {
    use attnlab::grokking::experiments::{has_current_columns, parse_metrics, run_is_complete};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Before the paper's tscore was recorded, `tscore` held the random-tree difference.
    std::fs::write(
        d.join("metrics.csv"),
        "step,train_loss,in_domain_acc,gen_acc,weight_norm,sparsity,tscore,tparseval,tparseval_right_branching\n\
         0,NaN,0.5,0.25,10,-2,-0.125,0.4,0.46\n",
    )
    .unwrap();
    std::fs::write(
        d.join("summary.json"),
        r#"{"depth": 2, "seed": 0, "completed": true, "curve": [{"step": 0}]}"#,
    )
    .unwrap();
    let rows = parse_metrics(&d.join("metrics.csv")).unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].tscore.is_nan(), "{:?}", rows[0]);
    assert_eq!(rows[0].tscore_random_tree, -0.125);
    assert!(rows[0].in_domain_transform_acc.is_nan());
    assert_eq!((rows[0].in_domain_acc, rows[0].gen_acc), (0.5, 0.25));
    // A finished older run stays complete (its accuracies stand); it just has no paper tscore.
    assert!(run_is_complete(d, 2, 0, 0));
    assert!(!has_current_columns(&d.join("metrics.csv")));
    // The current schema, same summary: complete.
    std::fs::write(
        d.join("metrics.csv"),
        "step,wall_s,lr,train_loss,in_domain_acc,in_domain_transform_acc,gen_acc,weight_norm,sparsity,tscore,tscore_random_tree,tparseval,tparseval_right_branching\n\
         0,0.1,0,,0.5,0.75,0.25,10,-2,0.375,-0.125,0.4,0.46\n",
    )
    .unwrap();
    let rows = parse_metrics(&d.join("metrics.csv")).unwrap();
    assert_eq!(
        (
            rows[0].tscore,
            rows[0].tscore_random_tree,
            rows[0].in_domain_transform_acc
        ),
        (0.375, -0.125, 0.75)
    );
    assert!(rows[0].train_loss.is_nan());
    assert!(run_is_complete(d, 2, 0, 0) && has_current_columns(&d.join("metrics.csv")));
    assert!(!run_is_complete(d, 2, 1, 0) && !run_is_complete(d, 2, 0, 250));
}
