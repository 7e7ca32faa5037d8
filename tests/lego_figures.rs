//! The LEGO figures of `attnlab figures` on the tiny preset: every one is written with its CSV
//! and JSON, and the numbers that are exact by construction are the ones plotted (FLOPs from
//! the toolkit's counter, the uniform-attention reference scores, the program model's
//! parameter count).

use attnlab::lego::config;
use attnlab::lego::model::{transformer_config, LegoRun};
use attnlab::nn::FlopCount;
use std::path::Path;
use std::process::Command;

const LEGO: [&str; 7] = [
    "per_position",
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
            .find(|r| r.0 == panel && r.1 == "uniform attention")
            .unwrap()
            .3
    };
    let tf = t as f64;
    assert!((uni("association score") - 1.0 / tf).abs() < 1e-6);
    assert!((uni("window locality score") - (5.0 * tf - 6.0) / (tf * tf)).abs() < 1e-6);

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
