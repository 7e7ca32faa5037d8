//! The LEGO figures of `attnlab figures` on the tiny preset: every one is written with its CSV
//! and JSON, and the numbers that are exact by construction are the ones plotted (FLOPs from
//! the toolkit's counter, the uniform-attention reference scores, the program model's
//! parameter count).

use attnlab::lego::config;
use attnlab::lego::figures::restyle;
use attnlab::lego::model::{transformer_config, LegoRun};
use attnlab::nn::FlopCount;
use attnlab::plot::Chart;
use std::path::Path;
use std::process::Command;

const LEGO: [&str; 8] = [
    "per_position",
    "text_pretraining",
    "training_curves",
    "mimicking",
    "head_scores",
    "shortcuts",
    "attention_flops",
    "convolution",
];

/// `(panel, series, x, y)` rows of a figure CSV.
fn rows(path: &Path) -> Vec<(String, String, f64, f64)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("panel,series,x,y,y_lo,y_hi"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 6, "{}: {l}", path.display());
            (
                f[0].into(),
                f[1].into(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap_or(f64::NAN),
            )
        })
        .collect()
}

#[test]
fn tiny_lego_figures_plot_the_exact_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("figs");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_attnlab"));
    cmd.args(["figures", "--preset", "tiny", "--quiet", "--out"])
        .arg(&out)
        .arg("--runs")
        .arg(dir.path().join("runs"));
    for f in LEGO {
        cmd.args(["--only", &format!("lego/{f}")]);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in LEGO {
        let png = std::fs::read(out.join(format!("lego/{f}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{f}.png");
        assert!(
            rows(&out.join(format!("lego/{f}.csv"))).len() >= 3,
            "{f}.csv"
        );
        let rec: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("lego/{f}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(rec["preset"], "tiny");
    }

    // accuracy vs FLOPs: x is the toolkit's forward count of each configuration
    let exp = config::load(Path::new("experiments/lego/lego_attention.toml")).unwrap();
    let t = attnlab::lego::task::seq_len(exp.tiny.task.as_ref().unwrap().n_var);
    let la = exp.tiny.lego_attention.as_ref().unwrap();
    let fl = rows(&out.join("lego/attention_flops.csv"));
    for c in &la.configs {
        let mut run = LegoRun::new(&c.label, config::Arch::Bert, config::Init::Random, 0);
        run.fixed_local = c.local_heads;
        run.fixed_association = c.association_heads;
        let want = FlopCount::new(&transformer_config(&exp.tiny.model, &run), t).forward_per_token
            * t as u64;
        let x = fl
            .iter()
            .find(|r| r.0 == "accuracy vs forward FLOPs" && r.1.starts_with(c.label.as_str()))
            .unwrap_or_else(|| panic!("no point for {}", c.label))
            .2;
        assert_eq!(x, want as f64 / 1e6, "{}", c.label);
    }

    // head scores: uniform attention over T tokens puts 1/T on the other occurrence of a name
    // and (5 T - 6) / T^2 within +-2 (rows at the borders see 3 and 4 tokens)
    let hs = rows(&out.join("lego/head_scores.csv"));
    let uni = |panel: &str| {
        hs.iter()
            .find(|r| r.0.starts_with(panel) && r.1 == "uniform attention")
            .unwrap()
            .3
    };
    let tf = t as f64;
    assert!((uni("association score") - 1.0 / tf).abs() < 1e-6);
    assert!((uni("window locality score") - (5.0 * tf - 6.0) / (tf * tf)).abs() < 1e-6);

    let hexp = config::load(Path::new("experiments/lego/head_analysis.toml")).unwrap();
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("lego/head_scores.json")).unwrap())
            .unwrap();
    let stages = rec["summary"].as_object().unwrap().len() - 1; // less "uniform"
    check_heatmaps(&hs, stages, hexp.tiny.model.layers, hexp.tiny.model.heads);
    let sexp = config::load(Path::new("experiments/lego/shortcuts.toml")).unwrap();
    check_bars(
        &rows(&out.join("lego/shortcuts.csv")),
        sexp.shortcuts.as_ref().unwrap().test_variants.len(),
    );

    // text pretraining: the loss panel is the mean of each 50 pretraining steps of the run, the
    // heatmaps hold random init, after pretraining and after LEGO for the text-pretrained model
    let tr: attnlab::lego::train::RunResult = serde_json::from_str(
        &std::fs::read_to_string(
            dir.path()
                .join("runs/lego/extrapolation/tiny/bert-text-seed0/result.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let lexp = config::load(Path::new("experiments/lego/length_extrapolation.toml")).unwrap();
    let steps = lexp.tiny.pretrain.as_ref().unwrap().steps;
    assert_eq!(tr.pretrain_losses.len(), steps);
    let tp = rows(&out.join("lego/text_pretraining.csv"));
    let loss: Vec<_> = tp.iter().filter(|r| r.1 == "bert-text").collect();
    let first: Vec<f64> = tr.pretrain_losses.iter().take(50).copied().collect();
    assert!((loss[0].2 - 25.0).abs() < 1e-9, "{:?}", loss[0]);
    assert!((loss[0].3 - first.iter().sum::<f64>() / first.len() as f64).abs() < 1e-9);
    let pre = tr.pretrain.as_ref().unwrap();
    assert!((0.0..=1.0).contains(&pre.held_out_accuracy));
    assert_eq!(pre.text_association.len(), lexp.tiny.model.layers);
    // the text heatmap: one row per layer, its uniform mark the run's own
    let text_rows: Vec<_> = tp
        .iter()
        .filter(|r| r.0.starts_with("association score on held-out text"))
        .collect();
    let (uni, cells): (Vec<&&(String, String, f64, f64)>, Vec<_>) =
        text_rows.iter().partition(|r| r.1 == "uniform attention");
    assert!(!uni.is_empty());
    for u in uni {
        assert!((u.3 - pre.text_association_uniform).abs() < 1e-9);
    }
    let flat: Vec<f64> = pre.text_association.iter().flatten().copied().collect();
    assert_eq!(cells.iter().map(|r| r.3).collect::<Vec<_>>(), flat);
    let heat: Vec<_> = tp
        .iter()
        .filter(|r| {
            (r.0.starts_with("association score") && !r.0.contains("text"))
                || r.0.starts_with("window locality")
        })
        .cloned()
        .collect();
    check_heatmaps(&heat, 3, lexp.tiny.model.layers, lexp.tiny.model.heads);

    // the convolution study's program models: the conv adds layers x 3d x k parameters
    let conv: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("lego/convolution.json")).unwrap())
            .unwrap();
    let s = &conv["summary"];
    let cexp = config::load(Path::new("experiments/lego/convolution.toml")).unwrap();
    let m = &cexp.tiny.model;
    let extra = s["program conv3 q/k/v"]["params"].as_u64().unwrap()
        - s["program linear q/k/v"]["params"].as_u64().unwrap();
    assert_eq!(extra as usize, m.layers * 3 * m.hidden * 3);
    let maj = s["program majority baseline"].as_f64().unwrap();
    assert!(maj > 0.0 && maj < 1.0);
}

/// Both head-score panels are heatmaps of `stages x layers` rows by `heads` columns, every cell
/// a score in [0, 1], and the rows of a stage are its layers in order.
fn check_heatmaps(csv: &[(String, String, f64, f64)], stages: usize, layers: usize, heads: usize) {
    for panel in ["association score", "window locality score"] {
        let cells: Vec<_> = csv
            .iter()
            .filter(|r| r.0.starts_with(panel) && r.1 != "uniform attention")
            .collect();
        assert_eq!(cells.len(), stages * layers * heads, "{panel}");
        for (i, c) in cells.iter().enumerate() {
            assert_eq!(c.2, (i % heads + 1) as f64, "{panel}: column of {c:?}");
            let layer = i / heads % layers + 1;
            assert!(
                c.1.ends_with(&format!(" L{layer}")),
                "{panel}: row of {c:?}"
            );
            assert!((0.0..=1.0).contains(&c.3), "{panel}: {c:?}");
        }
    }
}

/// The accuracy-per-variant panel has one bar per (regime, variant), each an accuracy with its
/// error bar around it; the per-position panel one bar per (regime, position).
fn check_bars(csv: &[(String, String, f64, f64)], variants: usize) {
    let text: Vec<_> = csv
        .iter()
        .filter(|r| r.0.starts_with("accuracy per test variant") && r.1 != "chance")
        .collect();
    assert!(!text.is_empty());
    assert_eq!(text.len() % variants, 0);
    for r in &text {
        assert!((1.0..=variants as f64).contains(&r.2), "{r:?}");
        assert!((0.0..=1.0).contains(&r.3), "{r:?}");
    }
    let regimes = text.len() / variants;
    let pos: Vec<_> = csv
        .iter()
        .filter(|r| r.0.starts_with("per position on shuffled") && r.1 != "chance")
        .collect();
    assert_eq!(pos.len() % regimes, 0);
}

/// The bars' error bars: `y_lo <= y <= y_hi` where present.
fn spreads(path: &Path) -> Vec<(f64, f64, f64)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((f[4].parse().ok()?, f[3].parse().ok()?, f[5].parse().ok()?))
        })
        .collect()
}

/// Redraws the committed head-score and shortcut figures (stored as line panels) as heatmaps
/// and grouped bars under `out`, from their stored JSON: nothing is trained.
fn redraw_committed(out: &Path) {
    let hexp = config::load(Path::new("experiments/lego/head_analysis.toml")).unwrap();
    let sexp = config::load(Path::new("experiments/lego/shortcuts.toml")).unwrap();
    let variants: Vec<String> = sexp
        .shortcuts
        .as_ref()
        .unwrap()
        .test_variants
        .iter()
        .map(|v| v.name().to_string())
        .collect();
    for (name, exp) in [("head_scores", &hexp), ("shortcuts", &sexp)] {
        let src = Path::new("figures/lego").join(format!("{name}.json"));
        let mut rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&src).unwrap()).unwrap();
        let charts: Vec<Chart> = serde_json::from_value(rec["charts"].clone()).unwrap();
        let m = &exp.cpu.model;
        let charts = restyle(
            &format!("lego/{name}"),
            &charts,
            m.layers,
            m.heads,
            &variants,
            exp.cpu.seeds.len(),
        )
        .unwrap()
        .unwrap_or(charts);
        std::fs::create_dir_all(out).unwrap();
        attnlab::plot::draw_png(&out.join(format!("{name}.png")), &charts).unwrap();
        std::fs::write(
            out.join(format!("{name}.csv")),
            attnlab::plot::charts_csv(&charts),
        )
        .unwrap();
        rec["charts"] = serde_json::to_value(&charts).unwrap();
        std::fs::write(
            out.join(format!("{name}.json")),
            serde_json::to_string_pretty(&rec).unwrap() + "\n",
        )
        .unwrap();
    }
}

#[test]
fn committed_head_scores_and_shortcuts_read_as_heatmaps_and_bars() {
    let dir = tempfile::tempdir().unwrap();
    redraw_committed(dir.path());
    let hexp = config::load(Path::new("experiments/lego/head_analysis.toml")).unwrap();
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("figures/lego/head_scores.json").unwrap())
            .unwrap();
    let stages = rec["summary"].as_object().unwrap().len() - 1;
    let m = &hexp.cpu.model;
    check_heatmaps(
        &rows(&dir.path().join("head_scores.csv")),
        stages,
        m.layers,
        m.heads,
    );
    let sexp = config::load(Path::new("experiments/lego/shortcuts.toml")).unwrap();
    let n = sexp.shortcuts.as_ref().unwrap().test_variants.len();
    check_bars(&rows(&dir.path().join("shortcuts.csv")), n);
    for (lo, y, hi) in spreads(&dir.path().join("shortcuts.csv")) {
        assert!(lo <= y + 1e-12 && y <= hi + 1e-12, "{lo} {y} {hi}");
    }
    // the bars carry the numbers the claims ledger reads from the summary
    let srec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("figures/lego/shortcuts.json").unwrap())
            .unwrap();
    let csv = rows(&dir.path().join("shortcuts.csv"));
    for (regime, accs) in srec["summary"].as_object().unwrap() {
        let shuffled = accs["shuffled"].as_f64().unwrap();
        let bar = csv
            .iter()
            .find(|r| r.0.starts_with("accuracy per test variant") && &r.1 == regime && r.2 == 1.0)
            .unwrap_or_else(|| panic!("no bar for {regime}"));
        assert!(
            (bar.3 - shuffled).abs() < 6e-4,
            "{regime}: {} vs {shuffled}",
            bar.3
        );
    }
    for f in ["head_scores.png", "shortcuts.png"] {
        let png = std::fs::read(dir.path().join(f)).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{f}");
    }
}

/// Rewrites the committed figures in the new form: `cargo test --release --test lego_figures
/// -- --ignored redraw`.
#[test]
#[ignore]
fn redraw_committed_figures_in_place() {
    redraw_committed(Path::new("figures/lego"));
}

/// A run's result is copied to the committed directory, and a checkout with only the committed
/// copy reuses it instead of training.
#[test]
fn committed_results_are_written_and_reused_without_training() {
    use attnlab::lego::experiments::{run_experiment, ExperimentOpts};
    let exp = config::load(Path::new("experiments/lego/length_extrapolation.toml")).unwrap();
    let d = tempfile::tempdir().unwrap();
    let committed = d.path().join("committed");
    let dev = attnlab::nn::device().unwrap();
    let only = ["bert-random".to_string()];
    let run = |dir: &Path, log: &mut Vec<String>| {
        run_experiment(
            &exp,
            attnlab::config::Preset::Tiny,
            ExperimentOpts {
                seeds: None,
                only: Some(&only),
                dir,
                committed: Some(&committed),
                stop: &|| false,
                log: &mut |m| log.push(m.to_string()),
                verbose: false,
                dev: &dev,
            },
        )
        .unwrap()
    };
    let mut first = Vec::new();
    let a = run(&d.path().join("a"), &mut first);
    assert!(first.iter().any(|m| m.ends_with("training")), "{first:?}");
    let copy = committed.join("tiny/bert-random-seed0/result.json");
    assert!(copy.exists());
    let mut second = Vec::new();
    let b = run(&d.path().join("b"), &mut second);
    assert!(
        second.iter().all(|m| !m.ends_with("training"))
            && second.iter().any(|m| m.contains(copy.to_str().unwrap())),
        "{second:?}"
    );
    assert_eq!(a.results, b.results);
    assert!(!d.path().join("b/tiny/bert-random-seed0").exists());
    // a committed result of another config is stale: the next training replaces it
    let text = std::fs::read_to_string(&copy).unwrap();
    let key = serde_json::to_string(&a.results[0].key).unwrap();
    let stale = text.replacen(&key, "\"an older config\"", 1);
    assert_ne!(stale, text);
    std::fs::write(&copy, stale).unwrap();
    let mut third = Vec::new();
    let c = run(&d.path().join("c"), &mut third);
    assert!(third.iter().any(|m| m.ends_with("training")), "{third:?}");
    let now = std::fs::read_to_string(&copy).unwrap();
    assert!(
        now.contains(&key) && !now.contains("an older config"),
        "{now}"
    );
    assert_eq!(c.results[0].per_position, a.results[0].per_position);
}
